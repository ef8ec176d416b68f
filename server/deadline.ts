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

/**
 * Runs `work` with a signal that aborts after `ms`; resolves or rejects as it does. Work that
 * has not settled `DEADLINE_GRACE_MS` after the abort is abandoned and the call rejects with
 * `databaseUnavailable()`. Work that honours the signal (a send cancels its statement) settles
 * within the grace with its real outcome, so the caller is not told "failed" about a send that
 * then commits; work that cannot be reached (a black-holed connection) may still complete after
 * that, which retries with the same clientMessageId absorb.
 */
export async function withDeadline<T>(
  ms: number,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      timer = setTimeout(() => reject(databaseUnavailable()), DEADLINE_GRACE_MS);
    }, ms);
  });
  const running = work(controller.signal);
  running.catch(() => {}); // after the deadline nobody awaits it
  try {
    return await Promise.race([running, expired]);
  } finally {
    clearTimeout(timer);
  }
}
