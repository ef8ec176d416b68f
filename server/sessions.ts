/**
 * Session lifetime: every session expires `SESSION_TTL` seconds after its last use. Uses are
 * recorded in memory and written in one statement per flush, at most once per token per touch
 * interval (a minute, or a tenth of the lifetime when that is shorter), so that calls, sends
 * and subscriptions cost no extra round trip.
 */
import { DEFAULT_SESSION_TTL_SECONDS, type SessionUse, touchSessions } from "../db/sessions.ts";
import { isTransientDatabaseError, type Sql } from "../db/mod.ts";
import type { Logger } from "./log.ts";

/** The default session lifetime, in seconds (`SESSION_TTL`): 30 days. */
export { DEFAULT_SESSION_TTL_SECONDS };

/** Longest time between two recorded uses of one token, in ms. */
const MAX_TOUCH_INTERVAL_MS = 60_000;

/** Longest time a recorded use waits before it is written, in ms. */
const MAX_FLUSH_DELAY_MS = 1000;

/** Extends sessions on use (see the module's doc); one per server. */
export class SessionKeeper {
  /** The lifetime of a session after its last use, in seconds. */
  readonly ttlSeconds: number;
  #sql: Sql;
  #log: Logger;
  #touchIntervalMs: number;
  #flushDelayMs: number;
  /** Uses not written yet: token hash → time of use (ms). */
  #pending = new Map<string, number>();
  /** Tokens recorded in this interval and the one before (two generations). */
  #recent = new Set<string>();
  #older = new Set<string>();
  #generationStarted = Date.now();
  #timer: ReturnType<typeof setTimeout> | null = null;
  #flushing: Promise<void> = Promise.resolve();
  #failing = false;

  constructor(sql: Sql, log: Logger, ttlSeconds: number) {
    this.#sql = sql;
    this.#log = log;
    this.ttlSeconds = ttlSeconds;
    this.#touchIntervalMs = Math.min(MAX_TOUCH_INTERVAL_MS, ttlSeconds * 100);
    this.#flushDelayMs = Math.min(MAX_FLUSH_DELAY_MS, this.#touchIntervalMs);
  }

  /** Records that a live session was used now (call only after its token was checked). */
  used(tokenHash: string): void {
    const now = Date.now();
    if (now - this.#generationStarted >= this.#touchIntervalMs) {
      this.#older = this.#recent;
      this.#recent = new Set();
      this.#generationStarted = now;
    }
    if (this.#recent.has(tokenHash) || this.#older.has(tokenHash)) return;
    this.#recent.add(tokenHash);
    this.#pending.set(tokenHash, now);
    this.#timer ??= setTimeout(() => {
      this.#timer = null;
      void this.flush();
    }, this.#flushDelayMs);
  }

  /** Writes the recorded uses now; resolves when they are written (failures are logged). */
  flush(): Promise<void> {
    if (this.#pending.size === 0) return this.#flushing;
    const uses: SessionUse[] = [...this.#pending].map(([tokenHash, at]) => ({ tokenHash, at }));
    this.#pending.clear();
    this.#flushing = this.#flushing.then(async () => {
      try {
        await touchSessions(this.#sql, uses, this.ttlSeconds);
        this.#failing = false;
      } catch (error) {
        // A lost extension is harmless but for a session near its end: the next use retries.
        for (const use of uses) {
          this.#recent.delete(use.tokenHash);
          this.#older.delete(use.tokenHash);
        }
        if (!this.#failing) {
          // An outage is expected now and then: its code is enough; anything else is a bug.
          if (isTransientDatabaseError(error)) {
            const code = (error as { code?: string }).code ?? (error as Error).message;
            this.#log.warn(`Cannot extend sessions (${code}): retrying on next use`);
          } else this.#log.error("Cannot extend sessions: retrying on next use", error);
        }
        this.#failing = true;
      }
    });
    return this.#flushing;
  }

  /** Writes what is pending and stops the timer. */
  async close(): Promise<void> {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    await this.flush();
  }
}
