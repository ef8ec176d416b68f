/**
 * parley's client for front ends: a typed tRPC client (subscriptions over one lazy
 * WebSocket, everything else over batched HTTP) and `watchRoom`, the whole room
 * protocol in one call. Web-standard APIs only; of the server it imports only types and
 * `server/limits.ts` (plain numbers, no imports), so both sides batch by the same limits.
 */
import { createTRPCClient, splitLink, type TRPCClient, type TRPCLink } from "@trpc/client";
import type { inferRouterInputs, inferRouterOutputs } from "@trpc/server";
import { observable } from "@trpc/server/observable";
import type { AppRouter } from "../server/router.ts";
import { createHttpLink } from "./http.ts";
import { type AccessChange, createIdentity, type Identity, type TokenSource } from "./identity.ts";
import { createSocketTransport } from "./socket.ts";

export type { AccessChange, AppRouter, TokenSource };
export { watchRoom } from "./watch_room.ts";
export type { RoomState, WatchRoomHandle, WatchRoomOptions } from "./watch_room.ts";
export { isRateLimited, isRetryable, retryAfterMs } from "./retry.ts";

/** Every procedure's input type, e.g. `RouterInputs["messages"]["send"]`. */
export type RouterInputs = inferRouterInputs<AppRouter>;

/** Every procedure's output type, e.g. `RouterOutputs["rooms"]["get"]`. */
export type RouterOutputs = inferRouterOutputs<AppRouter>;

/** A user as the API returns it. */
export type User = RouterOutputs["users"]["me"];

/** A room as the API returns it. */
export type Room = RouterOutputs["rooms"]["get"];

/** A room member with the user's current name and avatar. */
export type Member = RouterOutputs["rooms"]["join"];

/** A message with the sender's name and avatar at sending time. */
export type Message = RouterOutputs["messages"]["send"];

/** Options of `createParleyClient`. */
export interface ParleyClientOptions {
  /** The server's base URL, e.g. `https://parley.up.railway.app`. */
  url: string;
  /**
   * The token from `users.create`, or a function returning the current one (read before
   * every request, WebSocket operation and WebSocket connect; null when signed out).
   */
  token?: TokenSource;
  /** A WebSocket implementation for runtimes without a global one. */
  WebSocket?: typeof WebSocket;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
  /**
   * How often, in ms, the token function is read while something waits for a change of
   * access (a `watchRoom` refused with UNAUTHORIZED or FORBIDDEN); 0 never (default 1000).
   */
  tokenPollMs?: number;
}

/** A connected parley client. */
export interface ParleyClient {
  /** The typed tRPC client for `AppRouter`. */
  trpc: TRPCClient<AppRouter>;
  /**
   * Reads the token now. If it differs from the one read last (sign-in, sign-out, another
   * user, a refresh), WebSockets opened with the old one are closed at once (their
   * subscriptions resume on a new socket as the new identity, or fail with
   * UNAUTHORIZED/FORBIDDEN) and access listeners are called. Every call does this too;
   * call it after changing the token to switch without waiting for the next call.
   * Resolves to the identity's version, a number that goes up with every token change.
   */
  checkToken(): Promise<number>;
  /**
   * Calls `listener` when access may have changed: the token changed, or a `rooms.join`
   * of this client succeeded. While a listener is registered the token is read every
   * `tokenPollMs`. Returns a function that removes the listener.
   */
  onAccessChange(listener: (change: AccessChange) => void): () => void;
  /** Closes the WebSocket connection, if one is open, and stops token polling. */
  close(): Promise<void>;
}

/**
 * Creates a typed client: subscriptions over one lazy WebSocket (opened on the first
 * subscription, closed 5 s after the last one ends), everything else over batched HTTP.
 */
export function createParleyClient(options: ParleyClientOptions): ParleyClient {
  const base = options.url.replace(/\/+$/, "");
  const identity = createIdentity(options.token, {
    pollMs: options.tokenPollMs,
    onTokenChange: () => sockets.closeStale(),
  });
  const sockets = createSocketTransport({
    url: `${base.replace(/^http/, "ws")}/trpc`,
    identity,
    WebSocket: options.WebSocket,
  });
  const trpc = createTRPCClient<AppRouter>({
    links: [
      joinNoticeLink(identity),
      splitLink({
        condition: (op) => op.type === "subscription",
        true: sockets.link,
        false: createHttpLink({
          url: `${base}/trpc`,
          fetch: options.fetch,
          headers: async (): Promise<Record<string, string>> => {
            const token = await identity.read();
            return token ? { authorization: `Bearer ${token}` } : {};
          },
        }),
      }),
    ],
  });
  return {
    trpc,
    async checkToken() {
      await identity.read();
      return identity.version;
    },
    onAccessChange: (listener) => identity.onChange(listener),
    async close() {
      identity.close();
      await sockets.close();
    },
  };
}

/** Passes calls on; announces each successful `rooms.join` to access listeners. */
function joinNoticeLink(identity: Identity): TRPCLink<AppRouter> {
  return () => ({ op, next }) => {
    if (op.path !== "rooms.join" || op.type !== "mutation") return next(op);
    return observable((observer) =>
      next(op).subscribe({
        next(result) {
          observer.next(result);
          const roomId = (op.input as { roomId?: unknown } | undefined)?.roomId;
          if (typeof roomId === "string") identity.joined(roomId);
        },
        error: (error) => observer.error(error),
        complete: () => observer.complete(),
      })
    );
  };
}
