/**
 * The API's errors, built in one place so that each kind of refusal has one code and one
 * wording wherever it is raised (HTTP, WebSocket, subscriptions).
 */
import { TRPCError } from "@trpc/server";
import { isTransientDatabaseError } from "../db/mod.ts";

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

/** `UNAUTHORIZED`: no token, or one whose session is unknown, expired or ended. */
export function unauthenticated(): TRPCError {
  return new TRPCError({
    code: "UNAUTHORIZED",
    message: "Authentication required: send the token of a live session " +
      "(Authorization: Bearer <token>, or connectionParams.token over WebSocket); " +
      "an expired or ended session needs a new sign-in (auth.signIn or auth.exchange)",
  });
}

/** `UNAUTHORIZED`: the session ended while in use (signed out, revoked, expired, account deleted). */
export function sessionEnded(): TRPCError {
  return new TRPCError({
    code: "UNAUTHORIZED",
    message: "Session ended (signed out, revoked, expired or account deleted): sign in again",
  });
}

/**
 * `UNAUTHORIZED` for a sign-in that failed: the same error, whether the username is unknown,
 * the account has no password or the password is wrong.
 */
export function signInFailed(): TRPCError {
  return new TRPCError({ code: "UNAUTHORIZED", message: "Wrong username or password" });
}

/** `UNAUTHORIZED` for an identity token that cannot be trusted; `why` says what was wrong. */
export function idTokenRefused(why: string): TRPCError {
  return new TRPCError({ code: "UNAUTHORIZED", message: `Identity token refused: ${why}` });
}

/** `BAD_REQUEST`: the username is reserved (the name shown for deleted accounts). */
export function usernameReserved(): TRPCError {
  return new TRPCError({
    code: "BAD_REQUEST",
    message: "Username is reserved: it is what deleted accounts are shown as",
  });
}

/** `TOO_MANY_REQUESTS`: too many failed sign-ins for this username lately. */
export function signInLocked(retryAfterMs: number): RetryableError {
  const minutes = Math.max(1, Math.ceil(retryAfterMs / 60_000));
  return new RetryableError(
    "TOO_MANY_REQUESTS",
    `Too many failed sign-ins for this username: try again in ${minutes} min`,
    retryAfterMs,
  );
}

/** `SERVICE_UNAVAILABLE`: too many password checks are waiting; retry shortly. */
export function passwordChecksBusy(): RetryableError {
  return new RetryableError(
    "SERVICE_UNAVAILABLE",
    "Too many sign-ins at once: retry shortly",
    1000,
  );
}

/**
 * Why a subscription ended when its holder lost access: `UNAUTHORIZED` (`sessionEnded`) after
 * the session ended, `FORBIDDEN` after leaving the room or when revalidation found access gone.
 */
export function accessEnded(reason: "left" | "logged_out" | "revoked"): TRPCError {
  if (reason === "logged_out") return sessionEnded();
  return new TRPCError({
    code: "FORBIDDEN",
    message: reason === "left" ? "You left this room" : "Access to this room ended",
  });
}

/** `CLIENT_CLOSED_REQUEST`: the client stopped a subscription before it started. */
export function subscriptionCancelled(): TRPCError {
  return new TRPCError({ code: "CLIENT_CLOSED_REQUEST", message: "Subscription cancelled" });
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

/** How long a client is asked to wait after the database failed a call, in milliseconds. */
export const DATABASE_RETRY_MS = 1000;

/**
 * `SERVICE_UNAVAILABLE` with a retry hint: the database (or the way to it) failed, timed out
 * or is busy; the call did nothing and may be retried as it is.
 */
export function databaseUnavailable(): RetryableError {
  return new RetryableError(
    "SERVICE_UNAVAILABLE",
    "Database unavailable: retry shortly",
    DATABASE_RETRY_MS,
  );
}

/**
 * The retryable form of `error`, or null: a `RetryableError` as it is, and an internal error
 * caused by a database or network outage (wherever it surfaced: context creation, a
 * procedure, a subscription's stream) as `databaseUnavailable()`. The error formatter,
 * the HTTP `Retry-After` header and the error log all go through here.
 */
export function retryable(error: TRPCError): RetryableError | null {
  if (error instanceof RetryableError) return error;
  if (error.code === "INTERNAL_SERVER_ERROR" && isTransientDatabaseError(error.cause)) {
    return databaseUnavailable();
  }
  return null;
}

/** `METHOD_NOT_SUPPORTED`: a subscription was called over HTTP. */
export function subscriptionNeedsWebSocket(): TRPCError {
  return new TRPCError({
    code: "METHOD_NOT_SUPPORTED",
    message: "Subscriptions need a WebSocket connection to /trpc (tRPC's wsLink)",
  });
}

/** `TOO_MANY_REQUESTS` with a retry hint: this connection has too many calls unanswered. */
export function tooManyCallsInFlight(): RetryableError {
  return new RetryableError(
    "TOO_MANY_REQUESTS",
    "Too many calls in flight on this connection: wait for answers before sending more",
    250,
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
