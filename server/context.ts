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
}

/** Builds the context of one HTTP request (or one WebSocket connection). */
export async function createContext(deps: ContextDeps, opts: ContextInput) {
  const origin = opts.req.headers.get("origin");
  const decision = deps.origins.check(origin);
  if (!decision.allowed) {
    deps.log.warn(`Refused origin ${decision.origin}: ${decision.reason}`);
    throw new TRPCError({
      code: "FORBIDDEN",
      message: `Origin not allowed: ${decision.origin}`,
    });
  }
  const param = opts.info?.connectionParams?.token;
  const token = typeof param === "string"
    ? param
    : parseBearer(opts.req.headers.get("authorization"));
  const tokenHash = token ? await hashToken(token) : null;
  const user = tokenHash ? (await findUserByTokenHash(deps.sql, tokenHash)) ?? null : null;
  return { sql: deps.sql, log: deps.log, hub: deps.hub, user, tokenHash };
}

/** The context every procedure sees. */
export type Context = Awaited<ReturnType<typeof createContext>>;
