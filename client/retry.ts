/**
 * Which failed calls are worth trying again, and when. A refusal for rate is a tRPC error
 * with `data.code === "TOO_MANY_REQUESTS"` (HTTP 429) that says how long to wait:
 * `data.retryAfterMs` (integer milliseconds), and over HTTP also the `Retry-After` header
 * (seconds).
 */
import { TRPCClientError } from "@trpc/client";

/** The longest wait, in ms, taken from a server's answer (longer ones are cut to it). */
export const MAX_RETRY_AFTER_MS = 60_000;

/** True when the server refused the call for rate (HTTP 429, `TOO_MANY_REQUESTS`). */
export function isRateLimited(error: unknown): boolean {
  if (!(error instanceof TRPCClientError)) return false;
  const data = error.data as { code?: unknown; httpStatus?: unknown } | null | undefined;
  return data?.code === "TOO_MANY_REQUESTS" || data?.httpStatus === 429;
}

/**
 * How long, in ms, the server asked to wait before trying again: `data.retryAfterMs`, else
 * the `Retry-After` header (seconds, or an HTTP date), at most `MAX_RETRY_AFTER_MS`; null
 * when the error says nothing.
 */
export function retryAfterMs(error: unknown): number | null {
  if (!(error instanceof TRPCClientError)) return null;
  const data = error.data as { retryAfterMs?: unknown } | null | undefined;
  let ms: number | null = null;
  if (typeof data?.retryAfterMs === "number" && Number.isFinite(data.retryAfterMs)) {
    ms = data.retryAfterMs;
  } else {
    const response = (error.meta as { response?: { headers?: Headers } } | undefined)?.response;
    const header = response?.headers?.get?.("retry-after")?.trim();
    if (header && /^\d+$/.test(header)) ms = Number(header) * 1000;
    else if (header && !Number.isNaN(Date.parse(header))) ms = Date.parse(header) - Date.now();
  }
  return ms === null ? null : Math.min(MAX_RETRY_AFTER_MS, Math.max(0, Math.round(ms)));
}

/**
 * True for failures worth retrying: no answer (network), server errors (5xx), timeouts
 * (408) and refusals for rate (429) that say when to retry. A refused request (other 4xx)
 * is not, nor a 429 without a retry hint: that is a cap waiting does not lift (too many
 * subscriptions on one connection).
 */
export function isRetryable(error: unknown): boolean {
  if (!(error instanceof TRPCClientError)) return true;
  if (isRateLimited(error)) return retryAfterMs(error) !== null;
  const status = error.data?.httpStatus;
  return status === undefined || status >= 500 || status === 408;
}

/**
 * The wait before retry number `attempt` (1, 2, ...) in ms: what a refusal for rate asks
 * for, else an exponential backoff from 250 ms up to `maxMs`.
 */
export function retryDelay(error: unknown, attempt: number, maxMs = 10_000): number {
  return retryAfterMs(error) ?? Math.min(maxMs, 250 * 2 ** Math.max(0, attempt - 1));
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Options of `withRetries`. */
export interface RetryOptions {
  /** Most tries when calls fail without an answer, with a 5xx or a 408 (1: no retry). */
  attempts: number;
  /** Most time, in ms, spent waiting on refusals for rate in all; past it the call fails. */
  rateLimitWaitMs: number;
  /** Runs before each retry; throw to stop retrying (that error is thrown). */
  beforeRetry?: (error: unknown) => Promise<void>;
}

/**
 * Runs `call` until it succeeds: a refusal for rate is retried as late as the server asks
 * (without counting as an attempt), other retryable failures with backoff (500 ms
 * doubling up to 4 s). Throws a non-retryable error at once, and the last error when
 * attempts or the rate-limit budget run out.
 */
export async function withRetries<T>(call: () => Promise<T>, options: RetryOptions): Promise<T> {
  let failures = 0;
  let limited = 0;
  let waited = 0;
  for (;;) {
    try {
      return await call();
    } catch (error) {
      if (!isRetryable(error)) throw error;
      let delay: number;
      if (isRateLimited(error)) {
        delay = retryDelay(error, ++limited);
        waited += delay;
        if (waited > options.rateLimitWaitMs) throw error;
      } else {
        if (++failures >= options.attempts) throw error;
        delay = retryDelay(error, failures + 1, 4000);
      }
      await sleep(delay);
      await options.beforeRetry?.(error);
    }
  }
}
