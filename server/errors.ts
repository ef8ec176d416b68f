/**
 * The API's errors, built in one place so that each kind of refusal has one code and one
 * wording wherever it is raised (HTTP, WebSocket, subscriptions).
 */
import { TRPCError } from "@trpc/server";

/**
 * A refusal that may succeed later: the client should wait `retryAfterMs` and try again.
 * The error formatter puts `retryAfterMs` into the error's `data`, and HTTP responses carry
 * `Retry-After` (whole seconds, RFC 9110 §10.2.3).
 */
export class RetryableError extends TRPCError {
  /** How long to wait before retrying, in milliseconds. */
  readonly retryAfterMs: number;

  constructor(
    code: "TOO_MANY_REQUESTS" | "SERVICE_UNAVAILABLE",
    message: string,
    retryAfterMs: number,
  ) {
    super({ code, message });
    this.retryAfterMs = Math.max(1, Math.ceil(retryAfterMs));
  }
}

/** `NOT_FOUND`: no room has this id. */
export function roomNotFound(roomId: string): TRPCError {
  return new TRPCError({ code: "NOT_FOUND", message: `Room not found: ${roomId}` });
}

/** `FORBIDDEN`: the caller is not a member of the room. */
export function notMember(): TRPCError {
  return new TRPCError({
    code: "FORBIDDEN",
    message: "Not a member of this room: join it first with rooms.join",
  });
}

/** `UNAUTHORIZED`: no token, or one that is unknown or revoked. */
export function unauthenticated(): TRPCError {
  return new TRPCError({
    code: "UNAUTHORIZED",
    message: "Authentication required: send a valid token (Authorization: Bearer <token>, " +
      "or connectionParams.token over WebSocket)",
  });
}

/** `UNAUTHORIZED`: the token was revoked while in use. */
export function tokenRevoked(): TRPCError {
  return new TRPCError({ code: "UNAUTHORIZED", message: "Token was revoked: sign in again" });
}

/** `PRECONDITION_FAILED`: the subscriber must reload with `messages.list` and subscribe again. */
export function resyncRequired(reason: string): TRPCError {
  return new TRPCError({
    code: "PRECONDITION_FAILED",
    message: `Resync required: ${reason}; reload with messages.list and subscribe again`,
  });
}

/** `TOO_MANY_REQUESTS` with a retry hint: a rate limit was hit. */
export function rateLimited(what: string, retryAfterMs: number): RetryableError {
  const seconds = Math.max(1, Math.ceil(retryAfterMs / 1000));
  return new RetryableError(
    "TOO_MANY_REQUESTS",
    `Rate limit exceeded: ${what}; retry in ${seconds} s`,
    retryAfterMs,
  );
}

/** `TOO_MANY_REQUESTS`: this WebSocket already holds the most subscriptions it may. */
export function tooManySubscriptions(limit: number): TRPCError {
  return new TRPCError({
    code: "TOO_MANY_REQUESTS",
    message: `Too many subscriptions on this connection: at most ${limit}; ` +
      "stop one or open another connection",
  });
}
