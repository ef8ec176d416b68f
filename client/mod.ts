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
import { clientInternals } from "./_internals.ts";
import { createHttpLink } from "./http.ts";
import { type AccessChange, createIdentity, type Identity, type TokenSource } from "./identity.ts";
import { createSessionTracker, type SessionListener, type SessionState } from "./session.ts";
import { createSocketTransport, type KeepAliveOptions } from "./socket.ts";

export type {
  AccessChange,
  AppRouter,
  KeepAliveOptions,
  SessionListener,
  SessionState,
  TokenSource,
};
export { isParleyError, TRPCClientError } from "./errors.ts";
export { defaultRetryDelayMs } from "./socket.ts";
export { TYPING_RENEW_MS, watchRoom } from "./watch_room.ts";
export type { RoomState, WatchRoomHandle, WatchRoomOptions } from "./watch_room.ts";
export { exchangeIdToken, signIn, signOut, signUp } from "./auth.ts";
export { joinCall } from "./call.ts";
export type { CallHandle, CallParticipant, JoinCallOptions } from "./call.ts";
export type { OpenedSession } from "./auth.ts";
export { isUnauthorized } from "./session.ts";
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

/**
 * One emoji's reactions to a message: `{ emoji, count, mine }`, `mine` true when the caller
 * reacted with it (always false in `rooms.onEvent` events; `watchRoom` sets it right).
 */
export type Reaction = Message["reactions"][number];

/** What `messages.react` answers: `{ messageId, emoji, userId, added, count }`. */
export type ReactionChange = RouterOutputs["messages"]["react"];

/**
 * An event of `rooms.onEvent`, a union on `type`: `message.created`, `message.updated`,
 * `message.deleted`, `reaction.changed`, `member.joined`, `member.left` (stored, replayed on
 * resume) and `presence.changed`, `typing.changed` (live only).
 */
export type { RoomEvent } from "../db/events.ts";

/** Options of `createParleyClient`. */
export interface ParleyClientOptions {
  /** The server's base URL, e.g. `https://parley.up.railway.app`. */
  url: string;
  /**
   * The token from `users.create`, or a function returning the current one (read before
   * every request, WebSocket operation and WebSocket connect; null when signed out).
   */
  token?: TokenSource;
  /**
   * Where the sign-in helpers (`signUp`, `signIn`, `exchangeIdToken`, `signOut`) store a new
   * session's token, or null after a sign-out, e.g. `(t) => t ? localStorage.setItem(key, t)
   * : localStorage.removeItem(key)`. The `token` function must then return it; the helpers
   * switch the client to it at once. Without it, the helpers only return the token.
   */
  saveToken?: (token: string | null) => void | Promise<void>;
  /** A WebSocket implementation for runtimes without a global one. */
  WebSocket?: typeof WebSocket;
  /**
   * The wait, in ms, before each attempt to open a new WebSocket after the last one was lost
   * (subscriptions resume on it, from their last event): `attempt` is 0 for the first attempt,
   * 1 after that one failed, and so on (tRPC's `retryDelayMs`). Default `defaultRetryDelayMs`:
   * at once, then about 0.5 s, 1 s, and about 2 s from then on. `reconnect()` cuts a wait short.
   */
  retryDelayMs?: (attempt: number) => number;
  /**
   * How long, in ms, the WebSocket stays open after its last subscription ends, so that a
   * new one (another room, a remount) reuses it; 0 closes it at once (default 5000).
   */
  idleCloseMs?: number;
  /**
   * tRPC's client-side keep-alive: after `intervalMs` (default 5000) without a frame from the
   * server the client sends a ping, and closes the socket (then reconnects, subscriptions
   * resuming) when no pong comes within `pongTimeoutMs` (default 1000). Finds a dead
   * connection (a sleeping laptop, a changed network) sooner than TCP does. Off by default:
   * the server pings quiet clients itself (after 30 s).
   */
  keepAlive?: KeepAliveOptions;
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
  /**
   * The session as of the token read last: `signed-out` (no token, or `signOut` here),
   * `signed-in` (not refused so far) or `ended` (the server refused the current token:
   * expired, revoked, signed out on another device, account deleted). `ended` lasts until
   * the token changes; `watchRoom`s stop in `signed-out` meanwhile, and nothing retries.
   */
  readonly session: SessionState;
  /**
   * Calls `listener` at every change of `session`, once per change: a session that ends is
   * reported once however many calls and subscriptions are refused (`error` is the first
   * refusal). Returns a function that removes the listener.
   */
  onSessionChange(listener: SessionListener): () => void;
  /**
   * Reconnects the WebSocket now: closes the current one (if open or opening) and ends any
   * wait between attempts, so the next attempt starts at once; subscriptions (and `watchRoom`s)
   * resume on the new socket from their last event, losing nothing. `watchRoom`s waiting to
   * retry a failed load retry at once too. Call it when the app knows the network is back,
   * e.g. on the browser's `online` event. Calls over the socket in flight (`calls.*`) fail
   * and may be retried. Opens no socket when none is open or wanted.
   */
  reconnect(): void;
  /** Closes the WebSocket connection, if one is open, and stops token polling. */
  close(): Promise<void>;
}

/**
 * Creates a typed client: subscriptions over one lazy WebSocket (opened on the first
 * subscription, closed `idleCloseMs` (5 s) after the last one ends), everything else over
 * batched HTTP.
 */
export function createParleyClient(options: ParleyClientOptions): ParleyClient {
  const base = options.url.replace(/\/+$/, "");
  const identity = createIdentity(options.token, {
    pollMs: options.tokenPollMs,
    onTokenChange: () => sockets.closeStale(),
    onTokenSet: () => session.update(),
  });
  const session = createSessionTracker(identity);
  const sockets = createSocketTransport({
    url: `${base.replace(/^http/, "ws")}/trpc`,
    identity,
    WebSocket: options.WebSocket,
    retryDelayMs: options.retryDelayMs,
    idleCloseMs: options.idleCloseMs,
    keepAlive: options.keepAlive,
  });
  const reconnectListeners = new Set<() => void>();
  const trpc = createTRPCClient<AppRouter>({
    links: [
      joinNoticeLink(identity),
      session.link,
      splitLink({
        // A call's participant is its socket: calls.join, signal and leave go there too.
        condition: (op) => op.type === "subscription" || SOCKET_CALLS.has(op.path),
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
  const parley: ParleyClient = {
    trpc,
    async checkToken() {
      await identity.read();
      return identity.version;
    },
    onAccessChange: (listener) => identity.onChange(listener),
    get session() {
      return session.state;
    },
    onSessionChange: (listener) => session.onChange(listener),
    reconnect() {
      sockets.reconnect();
      for (const listener of [...reconnectListeners]) listener();
    },
    async close() {
      identity.close();
      session.close();
      await sockets.close();
    },
  };
  clientInternals.set(parley, {
    saveToken: options.saveToken ?? null,
    session,
    onReconnect(listener) {
      reconnectListeners.add(listener);
      return () => void reconnectListeners.delete(listener);
    },
  });
  return parley;
}

/** The procedures that must go over the WebSocket although they are not subscriptions. */
const SOCKET_CALLS = new Set(["calls.join", "calls.signal", "calls.leave"]);

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
