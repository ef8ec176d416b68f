/** The one `initTRPC` of parley and the procedures routers are built from. */
import { initTRPC, TRPCError } from "@trpc/server";
import superjson from "superjson";
import { z, ZodError } from "zod";
import { postgres } from "../db/mod.ts";
import { knownUserId, memberOf, requireMember, userIdOf } from "./access.ts";
import type { Context } from "./context.ts";
import { clip } from "./clip.ts";
import {
  retryable,
  subscriptionNeedsWebSocket,
  tooManyCallsInFlight,
  unauthenticated,
} from "./errors.ts";
import { MAX_CALLS_IN_FLIGHT } from "./limits.ts";
import type { WriteKind } from "./rate_limit.ts";
import { CALL_DEADLINE_MS, withDeadline } from "./deadline.ts";
import { id } from "./schemas.ts";

const t = initTRPC.context<Context>().create({
  transformer: superjson,
  // Subscriptions go over WebSocket only, where connection limits and keep-alive apply.
  sse: { enabled: false },
  errorFormatter({ shape: original, error: thrown }) {
    // An outage reaches the client as what it is, wherever it surfaced.
    const retry = retryable(thrown);
    const error = retry ?? thrown;
    const shape = retry && retry !== thrown
      ? { ...original, data: { ...original.data, code: retry.code, httpStatus: 503 } }
      : original;
    const zodIssues = error.code === "BAD_REQUEST" && error.cause instanceof ZodError
      ? error.cause.issues.map(({ path, message, code }) => ({
        path,
        message,
        code,
      }))
      : null;
    // Stacks stay in the server's log, never in responses; a path comes from the request.
    const { stack: _stack, ...data } = shape.data;
    if (typeof data.path === "string") data.path = clip(data.path, 120);
    return {
      ...shape,
      message: publicMessage(error, zodIssues),
      data: {
        ...data,
        zodIssues,
        /** Set on TOO_MANY_REQUESTS and SERVICE_UNAVAILABLE: wait this long, then retry. */
        retryAfterMs: retry?.retryAfterMs ?? null,
      },
    };
  },
});

/**
 * The message a client sees: ours, or a description of the input. When tRPC wraps an
 * exception of the engine or of a library (JSON.parse, superjson, a stack overflow on deeply
 * nested input) its text would leak out as the message ("Maximum call stack size exceeded");
 * such messages are replaced by what was wrong with the request.
 */
function publicMessage(
  error: TRPCError,
  zodIssues: { path: PropertyKey[]; message: string }[] | null,
): string {
  if (error.code === "INTERNAL_SERVER_ERROR") return "Internal server error";
  if (zodIssues) {
    const listed = zodIssues.slice(0, 5).map((issue) =>
      `${issue.path.map(String).join(".") || "input"}: ${issue.message}`
    );
    const more = zodIssues.length > 5 ? ` (and ${zodIssues.length - 5} more)` : "";
    return clip(`Invalid input: ${listed.join("; ")}${more}`, 600);
  }
  const cause = error.cause;
  const wrapsForeignError = cause instanceof Error && !(cause instanceof TRPCError) &&
    error.message === cause.message;
  if (!wrapsForeignError) return clip(error.message, 300);
  if (cause instanceof RangeError && /call stack/i.test(cause.message)) {
    return "Invalid input: nested too deeply";
  }
  if (cause instanceof SyntaxError && /JSON/.test(cause.message)) {
    return "Invalid input: the request is not valid JSON";
  }
  return "Invalid input: the request could not be decoded (expected tRPC's superjson format)";
}

/** Builds a router from procedures and sub-routers. */
export const router = t.router;

/** Makes server-side callers of a router (tests, scripts). */
export const createCallerFactory = t.createCallerFactory;

/**
 * Any caller. One middleware (each step of tRPC's middleware chain costs an async call and a
 * copy of the context) does what every call needs:
 * - a subscription over HTTP is refused before it runs (tRPC runs a subscription's resolver
 *   even over HTTP, and then drops the stream it returns when SSE is off);
 * - at most `MAX_CALLS_IN_FLIGHT` calls of one connection run at once (one WebSocket may
 *   pipeline many; past the bound each waits its turn on the client);
 * - every call is bounded by `CALL_DEADLINE_MS` (`ctx.deadline` aborts when it passes);
 * - database constraint errors become API errors, in one place.
 */
export const publicProcedure = t.procedure.use(async function guard({ type, ctx, next }) {
  if (type === "subscription" && ctx.transport !== "ws") throw subscriptionNeedsWebSocket();
  const { connection } = ctx;
  if (connection.callsInFlight >= MAX_CALLS_IN_FLIGHT) throw tooManyCallsInFlight();
  connection.callsInFlight++;
  try {
    const result = await withDeadline(CALL_DEADLINE_MS, (deadline) => next({ ctx: { deadline } }));
    if (!result.ok) {
      const mapped = fromDatabaseError(result.error.cause);
      if (mapped) throw mapped;
    }
    return result;
  } finally {
    connection.callsInFlight--;
  }
});

/**
 * A caller with a token of the right shape, not yet checked: for procedures whose own query
 * checks it in the same round trip (`messages.send`, `messages.onMessage`; see `access.ts`).
 * `ctx.tokenHash` is the token's SHA-256.
 * @throws `UNAUTHORIZED` when no token came with the call.
 */
export const sessionProcedure = publicProcedure.use(function hasToken({ ctx, next }) {
  if (!ctx.tokenHash) throw unauthenticated();
  return next({ ctx: { tokenHash: ctx.tokenHash } });
});

/** A caller with a valid token; `ctx.user` is the acting user, `ctx.tokenHash` their token. */
export const authedProcedure = publicProcedure.use(
  async function isAuthed({ ctx, next }) {
    // Read on every call: a WebSocket context lives as long as the connection, and a logout
    // must take effect on open connections too. An HTTP request reads it once for its batch.
    const user = await ctx.caller.user();
    return next({ ctx: { user, tokenHash: ctx.tokenHash! } });
  },
);

/**
 * A write by an anonymous caller (sign-up), counted against the client address and the
 * connection; over the rate it is `TOO_MANY_REQUESTS` with `data.retryAfterMs`.
 */
export const signupProcedure = anonymousWriteProcedure("signups");

/**
 * A sign-in by an anonymous caller (`auth.signIn`, `auth.exchange`), counted like a sign-up
 * against its own rate.
 */
export const signInProcedure = anonymousWriteProcedure("signIns");

function anonymousWriteProcedure(kind: "signups" | "signIns") {
  return publicProcedure.use(async function limitAnonymousWrites({ ctx, next }) {
    await ctx.writes.consume(kind, {
      userId: null,
      connection: ctx.connection.key,
      address: ctx.address,
    });
    return next();
  });
}

/**
 * An authed write of `kind`, counted against the user's rate and the connection's before any
 * other work; over either it is `TOO_MANY_REQUESTS` with `data.retryAfterMs`.
 */
export function writeProcedure(kind: WriteKind) {
  return authedProcedure.use(async function limitWrites({ ctx, next }) {
    await ctx.writes.consume(kind, {
      userId: ctx.user.id,
      connection: ctx.connection.key,
      address: ctx.address,
    });
    return next();
  });
}

/**
 * A write of `kind` whose own statement checks the token (`messages.send`): counted against
 * the token's user (known without a round trip after its first sight, see `access.ts`) and
 * the connection before any other work; over either it is `TOO_MANY_REQUESTS`.
 */
export function sessionWriteProcedure(kind: WriteKind) {
  // One middleware for both checks: this is the hot path of sends.
  return publicProcedure.use(async function limitSessionWrites({ ctx, next }) {
    if (!ctx.tokenHash) throw unauthenticated();
    await ctx.writes.consume(kind, {
      userId: await userIdOf(ctx.sql, ctx.tokenHash),
      connection: ctx.connection.key,
      address: ctx.address,
    });
    return next({ ctx: { tokenHash: ctx.tokenHash } });
  });
}

const roomInput = z.object({ roomId: id });

/** An authed caller who is a member of `input.roomId` (checked in Postgres). */
export const memberProcedure = authedProcedure
  .input(roomInput)
  .use(async function isMember({ ctx, input, next }) {
    await requireMember(ctx.sql, { roomId: input.roomId, userId: ctx.user.id });
    return next();
  });

/**
 * A write of `kind` by a member of `input.roomId`: counted against the user's and the
 * connection's rates first, then membership is checked in Postgres.
 */
export function memberWriteProcedure(kind: WriteKind) {
  return writeProcedure(kind)
    .input(roomInput)
    .use(async function isMember({ ctx, input, next }) {
      await requireMember(ctx.sql, { roomId: input.roomId, userId: ctx.user.id });
      return next();
    });
}

/**
 * A typing update by a member of `input.roomId`. A renewal that the hub absorbs anyway (see
 * `Typing.absorbs`) is let through at once with `ctx.member` null: no read, not counted (a
 * client may renew on every keystroke, and that is never an error). Anything else is counted
 * like a reaction and checked like `memberWriteProcedure`; `ctx.member` is the caller as a
 * member.
 */
export const typingProcedure = sessionProcedure
  .input(z.object({ roomId: id, typing: z.boolean() }))
  .use(async function typingWrite({ ctx, input, next }) {
    const userId = knownUserId(ctx.tokenHash);
    if (input.typing && userId !== null && ctx.hub.typing.absorbs(input.roomId, userId)) {
      return next({ ctx: { member: null } });
    }
    // A session subscribed to the room here was checked when it subscribed, and loses the
    // subscription with its access: no read. Anyone else is read in Postgres.
    const online = userId !== null && ctx.hub.holds(ctx.tokenHash, input.roomId)
      ? ctx.hub.presence.localMember(input.roomId, userId)
      : null;
    const user = online === null ? await ctx.caller.user() : null;
    await ctx.writes.consume("reactions", {
      userId: userId ?? user!.id,
      connection: ctx.connection.key,
      address: ctx.address,
    });
    const member = online ??
      await memberOf(ctx.sql, { roomId: input.roomId, userId: user!.id });
    return next({ ctx: { member } });
  });

/**
 * Maps a constraint violation to an API error (`CONFLICT`, `NOT_FOUND`); returns undefined for
 * anything else (outages become `SERVICE_UNAVAILABLE` in the error formatter, see `retryable`).
 */
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
