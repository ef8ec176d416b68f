/** The one `initTRPC` of parley and the procedures routers are built from. */
import { initTRPC, TRPCError } from "@trpc/server";
import superjson from "superjson";
import { z, ZodError } from "zod";
import { postgres } from "../db/mod.ts";
import { getMembership } from "../db/rooms.ts";
import { findUserByTokenHash } from "../db/users.ts";
import type { Context } from "./context.ts";
import { id } from "./schemas.ts";

const t = initTRPC.context<Context>().create({
  transformer: superjson,
  // Subscriptions go over WebSocket only, where connection limits and keep-alive apply.
  sse: { enabled: false },
  errorFormatter({ shape, error }) {
    const zodIssues = error.code === "BAD_REQUEST" && error.cause instanceof ZodError
      ? error.cause.issues.map(({ path, message, code }) => ({
        path,
        message,
        code,
      }))
      : null;
    const message = error.code === "INTERNAL_SERVER_ERROR"
      ? "Internal server error"
      : shape.message;
    // Stacks stay in the server's log, never in responses.
    const { stack: _stack, ...data } = shape.data;
    return { ...shape, message, data: { ...data, zodIssues } };
  },
});

/** Builds a router from procedures and sub-routers. */
export const router = t.router;

/** Makes server-side callers of a router (tests, scripts). */
export const createCallerFactory = t.createCallerFactory;

/** Any caller; database constraint errors become API errors here, in one place. */
export const publicProcedure = t.procedure.use(
  async function mapDatabaseErrors({ next }) {
    const result = await next();
    if (!result.ok) {
      const mapped = fromDatabaseError(result.error.cause);
      if (mapped) throw mapped;
    }
    return result;
  },
);

/** A caller with a valid token; `ctx.user` is the acting user, `ctx.tokenHash` their token. */
export const authedProcedure = publicProcedure.use(
  async function isAuthed({ ctx, next }) {
    // A WebSocket context lives as long as the connection: check its token on every call,
    // so a logout takes effect on open connections too.
    const user = ctx.transport === "ws" && ctx.tokenHash
      ? await findUserByTokenHash(ctx.sql, ctx.tokenHash)
      : ctx.user;
    if (!user || !ctx.tokenHash) {
      throw new TRPCError({
        code: "UNAUTHORIZED",
        message: "Authentication required: send a valid token (Authorization: Bearer <token>, " +
          "or connectionParams.token over WebSocket)",
      });
    }
    return next({ ctx: { user, tokenHash: ctx.tokenHash } });
  },
);

/** An authed caller who is a member of `input.roomId` (checked in Postgres). */
export const memberProcedure = authedProcedure
  .input(z.object({ roomId: id }))
  .use(async function isMember({ ctx, input, next }) {
    const membership = await getMembership(ctx.sql, input.roomId, ctx.user.id);
    if (!membership.roomExists) {
      throw new TRPCError({
        code: "NOT_FOUND",
        message: `Room not found: ${input.roomId}`,
      });
    }
    if (!membership.isMember) {
      throw new TRPCError({
        code: "FORBIDDEN",
        message: "Not a member of this room: join it first with rooms.join",
      });
    }
    return next();
  });

/** Maps a Postgres error to an API error, or returns undefined for errors that are ours (500). */
function fromDatabaseError(cause: unknown): TRPCError | undefined {
  if (!(cause instanceof postgres.PostgresError)) return undefined;
  if (cause.code === "23505") {
    const message = cause.constraint_name?.startsWith("users_username")
      ? "Username is already taken"
      : "Conflicts with an existing record";
    return new TRPCError({ code: "CONFLICT", message, cause });
  }
  if (cause.code === "23503") {
    return new TRPCError({
      code: "NOT_FOUND",
      message: "A referenced record does not exist",
      cause,
    });
  }
  return undefined;
}
