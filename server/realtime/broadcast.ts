/**
 * The broadcast between instances: how one instance learns that another committed a message
 * or ended someone's access. One interface, chosen at startup: Postgres `LISTEN/NOTIFY` when
 * several instances share a database, nothing on the embedded database (one process).
 *
 * A broadcast only says "room R has reached seq S" or "this access ended"; the hub reads the
 * messages themselves from Postgres, so a lost or late notification delays, never loses.
 */
import type { Sql } from "../../db/mod.ts";
import { ACCESS_CHANNEL, MESSAGES_CHANNEL, notifyAll } from "../../db/notify.ts";
import type { Logger } from "../log.ts";
import { HEARTBEAT_MS, HEARTBEAT_TIMEOUT_MS, ListeningConnection } from "./listening.ts";

/** What the hub does with what other instances announce. */
export interface BroadcastHandlers {
  /** Another instance committed messages of `roomId` up to `seq`. */
  onMessages(roomId: string, seq: number): void;
  /** An access change, as given to `announceAccess` on some instance. */
  onAccess(item: string): void;
  /** Listening (again) for messages: anything announced meanwhile may have been missed. */
  onMessagesResumed(): void;
  /** Listening (again) for access changes: anything announced meanwhile may have been missed. */
  onAccessResumed(): void;
}

/** Announces this instance's commits and access changes to the others, and hears theirs. */
export interface Broadcast {
  /**
   * True when notifications cross processes and can be lost (a dead connection, a process
   * that died between commit and NOTIFY): the hub then reconciles with Postgres now and then.
   */
  readonly lossy: boolean;
  /**
   * Starts hearing the other instances. Rejects with the database's error while it is
   * unreachable (nothing is left open: call again), or with `NotificationsNotHeardError`.
   */
  start(handlers: BroadcastHandlers): Promise<void>;
  /** Announces that `roomId` reached `seq`; coalesced, sent soon after. */
  announceMessage(roomId: string, seq: number): void;
  /** Announces an access change (`leave:<room>:<user>`, `logout:<token hash>`). */
  announceAccess(item: string): Promise<void>;
  /** Sends what is pending and stops hearing. */
  close(): Promise<void>;
}

/** The embedded database: one process, nobody to tell. */
export class LocalBroadcast implements Broadcast {
  readonly lossy = false;
  /** Nothing to start. */
  start(): Promise<void> {
    return Promise.resolve();
  }
  /** Nobody to tell. */
  announceMessage(): void {}
  /** Nobody to tell. */
  announceAccess(): Promise<void> {
    return Promise.resolve();
  }
  /** Nothing to close. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * Shortest time between two announcements of new messages, in milliseconds: what a busy
 * instance adds to delivery on the others, for a NOTIFY per interval instead of per send.
 */
export const NOTIFY_INTERVAL_MS = 5;

/** Timings of the LISTEN connection's heartbeat, in milliseconds. */
export interface HeartbeatTimings {
  /** Between heartbeats on the LISTEN connection. */
  heartbeatMs: number;
  /**
   * How long a heartbeat may take to be heard before the LISTEN connection is replaced; at
   * startup, before the instance refuses to start (`NotificationsNotHeardError`).
   */
  heartbeatTimeoutMs: number;
}

/** The production heartbeat: a dead LISTEN connection costs a few seconds. */
export const DEFAULT_HEARTBEAT: HeartbeatTimings = {
  heartbeatMs: HEARTBEAT_MS,
  heartbeatTimeoutMs: HEARTBEAT_TIMEOUT_MS,
};

/**
 * Postgres `LISTEN/NOTIFY`. NOTIFYs go through the pool (they may pass a pooler); LISTEN needs
 * a session of its own on Postgres itself (`listenUrl`), watched by a heartbeat
 * (`listening.ts`). Message announcements are coalesced: one NOTIFY carries the latest seq of
 * every room that moved since the last one, `<room>:<seq>,…`, at most one per
 * `NOTIFY_INTERVAL_MS` under load.
 */
export class PostgresBroadcast implements Broadcast {
  readonly lossy = true;
  #sql: Sql;
  #log: Logger;
  #listenUrl: string;
  #timings: HeartbeatTimings;
  #listening: ListeningConnection | null = null;
  #pending = new Map<string, number>();
  #flushing: Promise<void> | null = null;
  #closed = false;

  constructor(
    options: { sql: Sql; log: Logger; listenUrl: string; timings?: Partial<HeartbeatTimings> },
  ) {
    this.#sql = options.sql;
    this.#log = options.log;
    this.#listenUrl = options.listenUrl;
    this.#timings = { ...DEFAULT_HEARTBEAT, ...options.timings };
  }

  /** See `Broadcast.start`. */
  async start(handlers: BroadcastHandlers): Promise<void> {
    const listening = new ListeningConnection({
      url: this.#listenUrl,
      pool: this.#sql,
      log: this.#log,
      heartbeatMs: this.#timings.heartbeatMs,
      heartbeatTimeoutMs: this.#timings.heartbeatTimeoutMs,
      channels: [
        {
          channel: MESSAGES_CHANNEL,
          onNotify(payload) {
            for (const item of payload.split(",")) {
              const [roomId, seq] = item.split(":");
              handlers.onMessages(roomId, Number(seq));
            }
          },
          onListen: () => handlers.onMessagesResumed(),
        },
        {
          channel: ACCESS_CHANNEL,
          onNotify(payload) {
            for (const item of payload.split(",")) handlers.onAccess(item);
          },
          onListen: () => handlers.onAccessResumed(),
        },
      ],
    });
    await listening.start();
    if (this.#closed) return await listening.close();
    this.#listening = listening;
  }

  /** See `Broadcast.announceMessage`. */
  announceMessage(roomId: string, seq: number): void {
    const known = this.#pending.get(roomId) ?? 0;
    if (seq > known) this.#pending.set(roomId, seq);
    this.#flushing ??= this.#flush();
  }

  /** See `Broadcast.announceAccess`. */
  async announceAccess(item: string): Promise<void> {
    await notifyAll(this.#sql, ACCESS_CHANNEL, [item]);
  }

  /** See `Broadcast.close`. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#flushing;
    await this.#listening?.close();
  }

  async #flush(): Promise<void> {
    try {
      while (this.#pending.size > 0) {
        const started = performance.now();
        const items = [...this.#pending].map(([roomId, seq]) => `${roomId}:${seq}`);
        this.#pending.clear();
        await notifyAll(this.#sql, MESSAGES_CHANNEL, items).catch((error) => {
          // Other instances still catch up on their next notification or reconciliation.
          if (!this.#closed) this.#log.error("Cannot announce new messages", error);
        });
        // Under load, at most one NOTIFY per interval: each costs a statement here and in
        // Postgres, and other instances read the messages themselves anyway.
        const rest = NOTIFY_INTERVAL_MS - (performance.now() - started);
        if (this.#pending.size > 0 && rest > 0 && !this.#closed) {
          await new Promise((resolve) => setTimeout(resolve, rest));
        }
      }
    } finally {
      this.#flushing = null;
    }
  }
}
