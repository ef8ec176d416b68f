/**
 * parley's client for front ends: a typed tRPC client (subscriptions over one lazy
 * WebSocket, everything else over batched HTTP) and `watchRoom`, the whole room
 * protocol in one call. Web-standard APIs only; the server is imported as types only.
 */
import {
  createTRPCClient,
  createWSClient,
  httpBatchLink,
  splitLink,
  type TRPCClient,
  wsLink,
} from "@trpc/client";
import type { inferRouterInputs, inferRouterOutputs } from "@trpc/server";
import superjson from "superjson";
import type { AppRouter } from "../server/router.ts";

export type { AppRouter };
export { watchRoom } from "./watch_room.ts";
export type { RoomState, WatchRoomHandle, WatchRoomOptions } from "./watch_room.ts";

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

/** The current token, or a function that returns it (null when signed out). */
export type TokenSource =
  | string
  | null
  | undefined
  | (() => string | null | undefined | Promise<string | null | undefined>);

/** Options of `createParleyClient`. */
export interface ParleyClientOptions {
  /** The server's base URL, e.g. `https://parley.up.railway.app`. */
  url: string;
  /** The token from `users.create`, or a function returning the current one. */
  token?: TokenSource;
  /** A WebSocket implementation for runtimes without a global one. */
  WebSocket?: typeof WebSocket;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
}

/** A connected parley client. */
export interface ParleyClient {
  /** The typed tRPC client for `AppRouter`. */
  trpc: TRPCClient<AppRouter>;
  /** Closes the WebSocket connection, if one is open. */
  close(): Promise<void>;
}

/** Creates a typed client; the WebSocket opens on the first subscription. */
export function createParleyClient(options: ParleyClientOptions): ParleyClient {
  const base = options.url.replace(/\/+$/, "");
  const currentToken = async () =>
    (typeof options.token === "function" ? await options.token() : options.token) ?? null;
  // Lazy: opened by the first subscription, closed when idle, reopened on demand.
  const connection = createWSClient({
    url: `${base.replace(/^http/, "ws")}/trpc`,
    lazy: { enabled: true, closeMs: 5_000 },
    WebSocket: options.WebSocket,
    connectionParams: async () => {
      const token = await currentToken();
      return token ? { token } : {};
    },
  });
  const trpc = createTRPCClient<AppRouter>({
    links: [
      splitLink({
        condition: (op) => op.type === "subscription",
        true: wsLink({ client: connection, transformer: superjson }),
        false: httpBatchLink({
          url: `${base}/trpc`,
          transformer: superjson,
          fetch: options.fetch,
          headers: async (): Promise<Record<string, string>> => {
            const token = await currentToken();
            return token ? { authorization: `Bearer ${token}` } : {};
          },
        }),
      }),
    ],
  });
  return { trpc, close: () => connection.close() };
}
