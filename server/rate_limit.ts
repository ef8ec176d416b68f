/**
 * Rate limits on writes, on rate-limiter-flexible's in-memory limiter (fixed windows per key,
 * expiry timers unref'd): a maintained library rather than our own counters.
 */
import { RateLimiterMemory, RateLimiterRes } from "rate-limiter-flexible";
import { rateLimited } from "./errors.ts";
import type { AbuseLimits, Rate } from "./limits.ts";

/** The kinds of write that have a rate of their own. */
export type WriteKind =
  | "sends"
  | "joins"
  | "creates"
  | "signups"
  | "signIns"
  | "reactions"
  | "signals";

/** Who a write is counted against: the acting user (absent for sign-ups) and the connection. */
export interface WriteKeys {
  /** The user's id; sign-ups and sign-ins, which have none, count against the client address. */
  userId: string | null;
  /**
   * The WebSocket connection (`ws:<uuid>`), or null over HTTP, where a "connection" would be
   * the client address that everyone behind one NAT shares: there the user's rate applies.
   */
  connection: string | null;
  /** The client address, for sign-ups. */
  address: string;
}

const WHAT: Record<WriteKind, string> = {
  sends: "too many messages",
  joins: "too many joins and leaves",
  creates: "too many creates and updates",
  signups: "too many sign-ups from this address",
  signIns: "too many sign-ins from this address",
  reactions: "too many reactions, read marks and typing updates",
  signals: "too many call signals",
};

/** The per-instance write limiter. */
export class WriteLimiter {
  /** Writes refused by a rate, by kind (for the metrics, `server/metrics.ts`). */
  readonly limited: Record<WriteKind, number> = {
    sends: 0,
    joins: 0,
    creates: 0,
    signups: 0,
    signIns: 0,
    reactions: 0,
    signals: 0,
  };
  #kinds = new Map<WriteKind, RateLimiterMemory>();
  #connection: RateLimiterMemory | null;

  constructor(limits: AbuseLimits) {
    for (const kind of Object.keys(WHAT) as WriteKind[]) {
      const rate = limits[kind];
      if (rate) this.#kinds.set(kind, limiter(rate));
    }
    this.#connection = limits.connectionWrites ? limiter(limits.connectionWrites) : null;
  }

  /**
   * Counts one write of `kind`. Throws `TOO_MANY_REQUESTS` (a `RetryableError` with
   * `retryAfterMs`) when the user, the address or the connection is over its rate.
   */
  async consume(kind: WriteKind, keys: WriteKeys): Promise<void> {
    const kindLimiter = this.#kinds.get(kind);
    const key = keys.userId === null ? `a:${keys.address}` : `u:${keys.userId}`;
    let what = WHAT[kind];
    try {
      await kindLimiter?.consume(key);
      what = "too many writes on this connection";
      // Signals have their own rate, sized for a call: a socket's write rate (sized for chat)
      // would cut a mesh's negotiation short.
      if (keys.connection !== null && kind !== "signals") {
        await this.#connection?.consume(keys.connection);
      }
    } catch (rejection) {
      if (!(rejection instanceof RateLimiterRes)) throw rejection;
      this.limited[kind]++;
      throw rateLimited(what, rejection.msBeforeNext);
    }
  }
}

function limiter(rate: Rate): RateLimiterMemory {
  return new RateLimiterMemory({ points: rate.points, duration: rate.seconds });
}
