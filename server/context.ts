/**
 * tRPC context creation: the only code that reads headers, tokens or
 * connectionParams. It enforces the origin policy and resolves the caller's token.
 */
import { TRPCError } from "@trpc/server";
import type { Sql } from "../db/mod.ts";
import type { User } from "../db/users.ts";
import { authenticate } from "./access.ts";
import { hashToken, parseBearer, parseToken } from "./auth.ts";
import { clip } from "./clip.ts";
import type { IdTokenVerifier } from "./id_token.ts";
import type { Hub } from "./realtime/hub.ts";
import type { AbuseLimits } from "./limits.ts";
import type { Logger } from "./log.ts";
import type { OriginPolicy } from "./origin.ts";
import type { WriteLimiter } from "./rate_limit.ts";
import type { SendQueue } from "./send_queue.ts";
import type { SessionKeeper } from "./sessions.ts";
import type { CallSettings } from "./ice_servers.ts";

/** What context creation needs from the running server. */
export interface ContextDeps {
  sql: Sql;
  origins: OriginPolicy;
  log: Logger;
  hub: Hub;
  limits: AbuseLimits;
  writes: WriteLimiter;
  /** The per-room bulkhead of the send path. */
  sendQueue: SendQueue;
  /** Extends sessions on use; knows their lifetime. */
  sessions: SessionKeeper;
  /** Verifies the identity provider's tokens for `auth.exchange`, or null when it is off. */
  idTokens: IdTokenVerifier | null;
  /** ICE servers and the size of a call. */
  calls: CallSettings;
}

/** The connection a call came over: one WebSocket, or for HTTP the client address. */
export interface ConnectionState {
  /** The key per-connection rates count against: `ws:<n>` (n counts this process's connections), or null over HTTP. */
  key: string | null;
  /** Open subscriptions on this WebSocket (always 0 over HTTP). */
  subscriptions: number;
  /** Calls of this connection (a WebSocket, or one HTTP request) not answered yet. */
  callsInFlight: number;
  /** Aborts when the WebSocket closes; never over HTTP (a request has no lasting connection). */
  closed: AbortSignal;
}

/** What tRPC hands to context creation: the request and, over WebSocket, connectionParams. */
export interface ContextInput {
  req: { headers: Headers };
  info?: { connectionParams?: Record<string, unknown> | null };
  /** `ws` for a WebSocket connection (one context for its lifetime), else `http`. */
  transport: "http" | "ws";
  /** The client's address (see `client_address.ts`). */
  address: string;
  /** Over WebSocket: aborts when the connection closes. */
  closed?: AbortSignal;
}

/** The `closed` signal of an HTTP request's "connection": it never closes. */
const NEVER = new AbortController().signal;

/** Numbers this process's WebSocket connections, for their rate-limit keys. */
let connectionCount = 0;

/** Builds the context of one HTTP request (or one WebSocket connection). */
export function createContext(deps: ContextDeps, opts: ContextInput) {
  const origin = opts.req.headers.get("origin");
  const decision = deps.origins.check(origin);
  if (!decision.allowed) {
    deps.log.warn(`Refused origin ${clip(decision.origin)}: ${decision.reason}`, {
      origin: decision.origin,
      reason: decision.reason,
    });
    throw new TRPCError({
      code: "FORBIDDEN",
      message: `Origin not allowed: ${clip(decision.origin)}`,
    });
  }
  // Over WebSocket the token comes in connectionParams; over HTTP only in Authorization,
  // never in the URL (tRPC would also read connectionParams from a query string).
  const token = opts.transport === "ws"
    ? parseToken(opts.info?.connectionParams?.token)
    : parseBearer(opts.req.headers.get("authorization"));
  const tokenHash = token ? hashToken(token) : null;
  // Read lazily, by the procedures that need the user: a send or a subscription checks the
  // token in its own statement, and an HTTP request reads it at most once for its batch.
  let lookup: Promise<User> | null = null;
  const read = async () => {
    const user = await authenticate(deps.sql, tokenHash);
    deps.sessions.used(tokenHash!);
    return user;
  };
  const caller: Caller = {
    user() {
      if (opts.transport === "ws") return read();
      lookup ??= read();
      return lookup;
    },
  };
  // Shown in auth.sessions to tell devices apart; over WebSocket, the upgrade request's.
  const userAgent = opts.req.headers.get("user-agent")?.slice(0, 256) || null;
  return {
    sql: deps.sql,
    log: deps.log,
    hub: deps.hub,
    limits: deps.limits,
    writes: deps.writes,
    sendQueue: deps.sendQueue,
    sessions: deps.sessions,
    idTokens: deps.idTokens,
    calls: deps.calls,
    userAgent,
    transport: opts.transport,
    address: opts.address,
    connection: {
      key: opts.transport === "ws" ? `ws:${++connectionCount}` : null,
      subscriptions: 0,
      callsInFlight: 0,
      closed: opts.closed ?? NEVER,
    } satisfies ConnectionState as ConnectionState,
    caller,
    tokenHash,
  };
}

/** The caller behind a token, read when a procedure asks. */
export interface Caller {
  /**
   * The user holding the context's token, read from Postgres (once per HTTP request; on every
   * call over WebSocket, where the context lives as long as the connection).
   * A successful read counts as a use of the session (it is extended, see sessions.ts).
   * @throws `UNAUTHORIZED` when there is no token, or its session is unknown, expired or ended.
   */
  user(): Promise<User>;
}

/** The context every procedure sees. */
export type Context = Awaited<ReturnType<typeof createContext>>;
