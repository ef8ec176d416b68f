/**
 * A bound on how long one call may wait on the database. A black-holed connection, a pool
 * full of blocked statements or a lock held elsewhere would otherwise keep a caller waiting
 * until its own client gives up; past the deadline the caller gets `SERVICE_UNAVAILABLE` with
 * a retry hint instead, and work still queued in parley (not yet sent to Postgres) is dropped.
 */
import { databaseUnavailable } from "./errors.ts";

/** How long a call may take before it is answered `SERVICE_UNAVAILABLE`, in milliseconds. */
export const CALL_DEADLINE_MS = 10_000;

/**
 * How long work may still take after its deadline's signal aborted, in milliseconds: a send
 * cancelled in Postgres answers with its real outcome (cancelled, or committed just before).
 */
export const DEADLINE_GRACE_MS = 1_000;

/** How often the deadlines are checked, in milliseconds: their precision. */
const SWEEP_MS = 100;

/** A call under a deadline. */
interface Bounded {
  /** When its signal aborts (performance.now() milliseconds). */
  abortAt: number;
  controller: AbortController;
  reject(error: unknown): void;
}

/**
 * The calls under a deadline, checked by one timer for all of them (a timer per call cost
 * more than the rest of the deadline's work on the send path).
 */
const running = new Set<Bounded>();
let sweeper: ReturnType<typeof setInterval> | undefined;

function sweep(): void {
  const now = performance.now();
  for (const call of running) {
    if (now < call.abortAt) continue;
    if (!call.controller.signal.aborted) call.controller.abort();
    if (now >= call.abortAt + DEADLINE_GRACE_MS) {
      running.delete(call);
      call.reject(databaseUnavailable());
    }
  }
  if (running.size === 0) {
    clearInterval(sweeper);
    sweeper = undefined;
  }
}

/**
 * Runs `work` with a signal that aborts after `ms` (checked every `SWEEP_MS`); resolves or
 * rejects as it does. Work that has not settled `DEADLINE_GRACE_MS` after the abort is
 * abandoned and the call rejects with `databaseUnavailable()`. Work that honours the signal
 * (a send cancels its statement) settles within the grace with its real outcome, so the caller
 * is not told "failed" about a send that then commits; work that cannot be reached (a
 * black-holed connection) may still complete after that, which retries with the same
 * clientMessageId absorb.
 */
export function withDeadline<T>(
  ms: number,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  return new Promise<T>((resolve, reject) => {
    const call: Bounded = { abortAt: performance.now() + ms, controller, reject };
    running.add(call);
    // It stops once no call runs: it keeps the process alive no longer than the calls do.
    sweeper ??= setInterval(sweep, SWEEP_MS);
    work(controller.signal).then(resolve, reject).finally(() => running.delete(call));
  });
}
