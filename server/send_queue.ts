/**
 * Group commit of sends, per room. Sends to one room serialise on its counter row in Postgres
 * anyway (each locks it until commit), and each commit waits for its WAL flush; so each room
 * has at most one send statement in flight, and the sends that arrive meanwhile go together in
 * the next one (`sendMessages`): one round trip, one lock and one flush for all of them.
 *
 * It is also the bulkhead of the send path: a room whose row is locked elsewhere (a long
 * transaction) holds one pool connection, never the whole pool; its sends wait here and give
 * up when their call's deadline passes.
 */
import {
  isClientIdConflict,
  isSenderGone,
  type SendInput,
  sendMessage,
  sendMessages,
  type SendResult,
} from "../db/messages.ts";
import type { Sql } from "../db/mod.ts";
import { databaseUnavailable } from "./errors.ts";

/** Most sends in one statement. */
export const MAX_SENDS_PER_STATEMENT = 64;

interface PendingSend {
  input: SendInput;
  /** Aborts when the call's deadline passes. */
  signal: AbortSignal;
  resolve(result: SendResult): void;
  reject(error: unknown): void;
  /** Removes the waiting send from its queue and rejects it (while it is queued). */
  onAbort(): void;
}

interface Lane {
  queue: PendingSend[];
  running: boolean;
  /** When its last statement ended (performance.now()). */
  idleSince: number;
}

/** How sends ended, counted for the metrics (`server/metrics.ts`). */
export interface SendCounts {
  /** Stored a new message. */
  committed: number;
  /** Found the message a previous send with its clientMessageId stored (a retry). */
  duplicate: number;
  /** Refused by the statement: a bad token, an unknown room, not a member, a reused id. */
  refused: number;
  /** Failed: the database was unavailable or the call's deadline passed. */
  failed: number;
}

/** How long after a statement a room counts as busy, in milliseconds (see `send`). */
const HOT_MS = 5;

/** Sends messages, batching concurrent sends to one room into one statement. */
export class SendQueue {
  /** How sends ended (see `SendCounts`). */
  readonly counts: SendCounts = { committed: 0, duplicate: 0, refused: 0, failed: 0 };
  #sql: Sql;
  #lanes = new Map<string, Lane>();

  constructor(sql: Sql) {
    this.#sql = sql;
  }

  /**
   * Stores a message (see `sendMessages` for what is checked). Rejects with
   * `databaseUnavailable()` when `signal` aborts while the send still waits here (nothing was
   * sent to Postgres); once its statement runs, an abort cancels it and the send answers with
   * its real outcome (cancelled, or committed just before).
   */
  send(input: SendInput, signal: AbortSignal): Promise<SendResult> {
    if (signal.aborted) {
      this.counts.failed++;
      return Promise.reject(databaseUnavailable());
    }
    let lane = this.#lanes.get(input.roomId);
    if (!lane) {
      this.#lanes.set(input.roomId, lane = { queue: [], running: false, idleSince: -Infinity });
    }
    const current = lane;
    const { promise, resolve, reject } = Promise.withResolvers<SendResult>();
    const counts = this.counts;
    const pending: PendingSend = {
      input,
      signal,
      resolve(result) {
        if (result.status === "created") counts.committed++;
        else if (result.status === "duplicate") counts.duplicate++;
        else counts.refused++;
        resolve(result);
      },
      reject(error) {
        counts.failed++;
        reject(error);
      },
      onAbort() {
        const at = current.queue.indexOf(pending);
        if (at >= 0) current.queue.splice(at, 1);
        pending.reject(databaseUnavailable());
      },
    };
    signal.addEventListener("abort", pending.onAbort, { once: true });
    lane.queue.push(pending);
    if (!lane.running) {
      lane.running = true;
      // A room that was busy a moment ago gets one turn of the event loop before its
      // statement starts: sends already received by the server join it (the commit_delay idea
      // of Postgres's own group commit). An idle room's send goes at once.
      if (performance.now() - lane.idleSince < HOT_MS) {
        setTimeout(() => this.#pump(input.roomId, current), 0);
      } else this.#pump(input.roomId, lane);
    }
    return promise;
  }

  /** Rooms with sends running or waiting (for tests and metrics). */
  get size(): number {
    return this.#lanes.size;
  }

  /**
   * Send statements running (each holds a pool connection) and sends waiting for their room's
   * turn, for the metrics: one pass over the rooms with sends.
   */
  inFlight(): { statements: number; waiting: number } {
    let statements = 0;
    let waiting = 0;
    for (const lane of this.#lanes.values()) {
      if (lane.running) statements++;
      waiting += lane.queue.length;
    }
    return { statements, waiting };
  }

  async #pump(roomId: string, lane: Lane): Promise<void> {
    try {
      while (lane.queue.length > 0) {
        const batch = lane.queue.splice(0, MAX_SENDS_PER_STATEMENT);
        for (const pending of batch) pending.signal.removeEventListener("abort", pending.onAbort);
        const retry = await this.#run(roomId, batch);
        lane.queue.unshift(...retry);
        for (const pending of retry) {
          pending.signal.addEventListener("abort", pending.onAbort, { once: true });
        }
      }
    } finally {
      lane.running = false;
      lane.idleSince = performance.now();
      // Kept while hot, so the next send knows; dropped by the next send after that.
      if (lane.queue.length === 0) this.#forgetLater(roomId, lane);
    }
  }

  /** Drops an idle lane once it is no longer hot (lanes of idle rooms are not kept). */
  #forgetLater(roomId: string, lane: Lane): void {
    setTimeout(() => {
      if (!lane.running && lane.queue.length === 0 && this.#lanes.get(roomId) === lane) {
        this.#lanes.delete(roomId);
      }
    }, HOT_MS);
  }

  /** Runs one batch; returns the sends to run again (cancelled for another's deadline). */
  async #run(roomId: string, batch: PendingSend[]): Promise<PendingSend[]> {
    if (batch.length === 1) {
      const [pending] = batch;
      await sendMessage(this.#sql, pending.input, pending.signal).then(
        pending.resolve,
        pending.reject,
      );
      return [];
    }
    // The statement is cancelled as soon as one of its sends' deadline passes.
    const signal = AbortSignal.any(batch.map((pending) => pending.signal));
    try {
      const results = await sendMessages(
        this.#sql,
        roomId,
        batch.map((pending) => pending.input),
        signal,
      );
      batch.forEach((pending, i) => pending.resolve(results[i]));
      return [];
    } catch (error) {
      if (signal.aborted && isCancelled(error)) {
        // Nothing was stored: the sends whose deadline passed learn it, the others go again.
        const expired = batch.filter((pending) => pending.signal.aborted);
        for (const pending of expired) pending.reject(error);
        return batch.filter((pending) => !pending.signal.aborted);
      }
      if (isClientIdConflict(error) || isSenderGone(error)) {
        // Two sends with one clientMessageId met, or a sender's account was deleted meanwhile:
        // nothing was stored; one by one, the second finds the first, the deleted sender's
        // send is refused alone.
        for (const pending of batch) {
          await sendMessage(this.#sql, pending.input, pending.signal).then(
            pending.resolve,
            pending.reject,
          );
        }
        return [];
      }
      for (const pending of batch) pending.reject(error);
      return [];
    }
  }
}

/** True for a statement cancelled on request (SQLSTATE 57014). */
function isCancelled(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === "57014";
}
