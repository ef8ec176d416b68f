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
 * Runs `work` with a signal that aborts after `ms`; resolves or rejects as it does, or rejects
 * with `databaseUnavailable()` at the deadline. Work that already reached Postgres may still
 * complete after that (a send then commits once: retries carry the same clientMessageId).
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
      reject(databaseUnavailable());
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
