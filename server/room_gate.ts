/**
 * A bulkhead per room on the send path. Sends to one room serialise on its counter row in
 * Postgres anyway (each locks it until commit), so more than a couple in flight per room only
 * park pool connections on that lock. With a lock held on a busy room (a long transaction, a
 * stuck client), unbounded sends to it would fill the whole pool and stall every other room;
 * here the extra sends wait in memory instead, and give up when their call's deadline passes.
 */
import { databaseUnavailable } from "./errors.ts";

/** Sends per room allowed to wait on Postgres at once (one committing, one queued behind it). */
export const SENDS_IN_FLIGHT_PER_ROOM = 2;

interface Lane {
  running: number;
  waiting: (() => void)[];
}

/** Limits the concurrent database work per room key. */
export class RoomGate {
  #lanes = new Map<string, Lane>();
  #perRoom: number;

  constructor(perRoom = SENDS_IN_FLIGHT_PER_ROOM) {
    this.#perRoom = perRoom;
  }

  /**
   * Runs `work` once fewer than `perRoom` works of `roomId` run. Throws `databaseUnavailable()`
   * without running it when `signal` aborts (the call's deadline passed) while it waits.
   */
  async run<T>(roomId: string, signal: AbortSignal, work: () => Promise<T>): Promise<T> {
    let lane = this.#lanes.get(roomId);
    if (!lane) this.#lanes.set(roomId, lane = { running: 0, waiting: [] });
    if (lane.running >= this.#perRoom) {
      const current = lane;
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => {
          current.waiting.splice(current.waiting.indexOf(go), 1);
          reject(databaseUnavailable());
        };
        const go = () => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        };
        if (signal.aborted) return reject(databaseUnavailable());
        signal.addEventListener("abort", onAbort, { once: true });
        current.waiting.push(go);
      });
      // The finishing work handed its slot over: `running` already counts this one.
    } else {
      lane.running++;
    }
    try {
      return await work();
    } finally {
      const next = lane.waiting.shift();
      if (next) next(); // the slot passes on
      else if (--lane.running === 0) this.#lanes.delete(roomId);
    }
  }

  /** Rooms with work running or waiting (for tests and metrics). */
  get size(): number {
    return this.#lanes.size;
  }
}
