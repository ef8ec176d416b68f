/**
 * The wire limits of parley's API, in one place. The server enforces them and the client
 * derives its batching from them, so anything the client may send alone also goes through
 * when many calls are sent at once.
 *
 * This module has no imports: the client (`client/`) imports it as a value, the one module
 * of `server/` it does, so that both sides read the same numbers. These limits are fixed
 * (a deployed client must agree with every server it may talk to); the abuse limits that an
 * operator tunes (rates, connection caps) are in `config.ts`.
 */

/** Largest HTTP request body the server reads, in bytes (larger: 413 `PAYLOAD_TOO_LARGE`). */
export const MAX_BODY_BYTES = 64 * 1024;

/** Most calls in one tRPC HTTP batch (more: tRPC's "Batch call exceeds maximum size"). */
export const MAX_BATCH_SIZE = 20;

/**
 * Largest WebSocket frame a client may send, in bytes (larger: the socket closes with 1009).
 * Equal to the body limit, so a call that fits one HTTP request also fits one frame.
 */
export const MAX_FRAME_BYTES = MAX_BODY_BYTES;

/**
 * Longest request target (path and query) the server accepts, in bytes (longer: 414). The
 * client's batched GET queries stay under it.
 */
export const MAX_URL_BYTES = 16 * 1024;

/**
 * Most bytes of request headers (names, values and their separators, request line
 * included) the server accepts (more: 431 Request Header Fields Too Large, RFC 6585 §5).
 */
export const MAX_HEADER_BYTES = 32 * 1024;

/**
 * Most calls one connection may have unanswered at once (a WebSocket pipelines; an HTTP batch
 * holds at most `MAX_BATCH_SIZE`); past it a call is `TOO_MANY_REQUESTS` with a retry hint.
 */
export const MAX_CALLS_IN_FLIGHT = 64;

/**
 * Most bytes of message content one `messages.list` page returns; a page stops early at it
 * (and says where to go on), so that a batch of pages stays a few megabytes at most.
 */
export const MAX_PAGE_CONTENT_BYTES = 256 * 1024;

/**
 * Failed sign-ins for one username (counted on every instance, in Postgres) after which its
 * sign-ins are refused with `TOO_MANY_REQUESTS` until the window, which starts at the first
 * failure, has passed; other usernames are not affected. Wrong current passwords given to
 * `users.setPassword` and `users.delete` count too.
 */
export const SIGN_IN_LOCKOUT = { maxFailures: 10, windowSeconds: 15 * 60 } as const;

/** A rate: at most `points` calls in any window of `seconds` (fixed windows per key). */
export interface Rate {
  points: number;
  seconds: number;
}

/**
 * The abuse limits an operator may tune (each has an environment variable, see `config.ts`
 * and the README's limits table). Rates are counted per instance: behind a load balancer that
 * spreads one user's HTTP calls over N instances, that user may reach N times a rate.
 */
export interface AbuseLimits {
  /** `messages.send`, `messages.edit` and `messages.delete`, per user. */
  sends: Rate | null;
  /** `rooms.join` and `rooms.leave`, per user. */
  joins: Rate | null;
  /** `rooms.create`, `rooms.update`, `users.update`, `users.setPassword` and `users.delete`, per user (sign-out and revocation are never limited). */
  creates: Rate | null;
  /** `users.create` (sign-up), per client address. */
  signups: Rate | null;
  /** `auth.signIn` and `auth.exchange`, per client address (see also `SIGN_IN_LOCKOUT`). */
  signIns: Rate | null;
  /** `messages.react`, `rooms.markRead` and `rooms.typing`, per user (the same default as sends). */
  reactions: Rate | null;
  /** `calls.signal` (offers, answers, ICE candidates), per user. */
  signals: Rate | null;
  /** Every write over one WebSocket connection (over HTTP, the user's rates apply). */
  connectionWrites: Rate | null;
  /** Most open subscriptions on one WebSocket. */
  subscriptionsPerSocket: number;
  /** Most open WebSockets from one client address. */
  connectionsPerAddress: number;
  /** Most open WebSockets on this instance. */
  connections: number;
}

/** The defaults: generous for people, tight for scripts (`null` would turn a rate off). */
export const DEFAULT_ABUSE_LIMITS: Readonly<AbuseLimits> = {
  sends: { points: 30, seconds: 10 },
  joins: { points: 30, seconds: 60 },
  creates: { points: 30, seconds: 60 },
  signups: { points: 60, seconds: 60 },
  signIns: { points: 60, seconds: 60 },
  reactions: { points: 30, seconds: 10 },
  // A 6-person mesh: about 20 signals per peer connection when one joins (offer or answer and
  // trickled ICE candidates), 5 peer connections.
  signals: { points: 300, seconds: 10 },
  connectionWrites: { points: 150, seconds: 10 },
  subscriptionsPerSocket: 100,
  connectionsPerAddress: 100,
  connections: 10_000,
};
