/**
 * tRPC context creation: the only code that reads headers, tokens or
 * connectionParams. It enforces the origin policy and resolves the caller's token.
 */
import { TRPCError } from "@trpc/server";
import type { Sql } from "../db/mod.ts";
import { findUserByTokenHash } from "../db/users.ts";
import { hashToken, parseBearer } from "./auth.ts";
import type { Hub } from "./hub.ts";
import type { Logger } from "./log.ts";
import type { OriginPolicy } from "./origin.ts";

/** What context creation needs from the running server. */
export interface ContextDeps {
  sql: Sql;
  origins: OriginPolicy;
  log: Logger;
  hub: Hub;
}

/** What tRPC hands to context creation: the request and, over WebSocket, connectionParams. */
export interface ContextInput {
  req: { headers: Headers };
  info?: { connectionParams?: Record<string, unknown> | null };
  /** `ws` for a WebSocket connection (one context for its lifetime), else `http`. */
  transport: "http" | "ws";
}

/** Builds the context of one HTTP request (or one WebSocket connection). */
export async function createContext(deps: ContextDeps, opts: ContextInput) {
  const origin = opts.req.headers.get("origin");
  const decision = deps.origins.check(origin);
  if (!decision.allowed) {
    deps.log.warn(`Refused origin ${decision.origin}: ${decision.reason}`, {
      origin: decision.origin,
      reason: decision.reason,
    });
    throw new TRPCError({
      code: "FORBIDDEN",
      message: `Origin not allowed: ${decision.origin}`,
    });
  }
  // Over WebSocket the token comes in connectionParams; over HTTP only in Authorization,
  // never in the URL (tRPC would also read connectionParams from a query string).
  const param = opts.transport === "ws" ? opts.info?.connectionParams?.token : undefined;
  const token = typeof param === "string"
    ? param
    : parseBearer(opts.req.headers.get("authorization"));
  const tokenHash = token ? await hashToken(token) : null;
  const user = tokenHash ? (await findUserByTokenHash(deps.sql, tokenHash)) ?? null : null;
  return {
    sql: deps.sql,
    log: deps.log,
    hub: deps.hub,
    transport: opts.transport,
    user,
    tokenHash,
  };
}

/** The context every procedure sees. */
export type Context = Awaited<ReturnType<typeof createContext>>;
