/**
 * Fan-out of committed messages to this instance's subscribers, in `seq` order,
 * exactly once, whichever instance stored them.
 *
 * Each watched room has a cursor: the last seq delivered to its listeners. A
 * message sent through this instance is delivered at once when it is the next
 * seq; anything else (a NOTIFY from another instance, a gap, a reconnect or a
 * replacement of the LISTEN connection) makes the room catch up from Postgres in
 * batches. Sends are announced to other instances after commit, coalesced into few
 * NOTIFYs. Two checks hold whatever NOTIFY does: a heartbeat replaces a dead LISTEN
 * connection (server/listening.ts), and a reconciliation reads the watched rooms'
 * last seq every `reconcileMs` in one query and catches up the rooms that are behind
 * (a message committed by a process that died before its NOTIFY).
 */
import { listMessages, type Message } from "../db/messages.ts";
import type { Sql } from "../db/mod.ts";
import { ACCESS_CHANNEL, MESSAGES_CHANNEL, notifyAll } from "../db/notify.ts";
import { getLastSeq, getLastSeqs } from "../db/rooms.ts";
import { findRevoked } from "../db/users.ts";
import { withDeadline } from "./deadline.ts";
import { HEARTBEAT_MS, HEARTBEAT_TIMEOUT_MS, ListeningConnection } from "./listening.ts";
import type { Logger } from "./log.ts";

/** Messages fetched per round trip when a room catches up. */
const CATCH_UP_BATCH = 500;

/** How long one reconciliation query may take before the next one is scheduled anyway. */
const RECONCILE_DEADLINE_MS = 10_000;

/** Receives a room's messages in seq order. */
export type MessageListener = (message: Message) => void;

/** Who holds a subscription, to end it when their access goes away. */
export interface Holder {
  roomId: string;
  userId: string;
  tokenHash: string;
}

/** Why a holder lost access. */
export type Revocation = "left" | "logged_out" | "revoked";

interface RoomState {
  cursor: number;
  listeners: Set<MessageListener>;
  ready: Promise<void>;
  fetching: Promise<void> | null;
  dirty: boolean;
}

/** How often the hub checks its LISTEN connection and the watched rooms, in milliseconds. */
export interface HubTimings {
  /** Between heartbeats on the LISTEN connection. */
  heartbeatMs: number;
  /**
   * How long a heartbeat may take to be heard before the LISTEN connection is replaced; at
   * startup, before the instance refuses to start (`NotificationsNotHeardError`).
   */
  heartbeatTimeoutMs: number;
  /** Between reconciliations of the watched rooms (none while no room is watched). */
  reconcileMs: number;
}

/** The production timings: a dead LISTEN connection or a lost NOTIFY costs a few seconds. */
export const DEFAULT_HUB_TIMINGS: HubTimings = {
  heartbeatMs: HEARTBEAT_MS,
  heartbeatTimeoutMs: HEARTBEAT_TIMEOUT_MS,
  reconcileMs: 2_000,
};

/** Options of a `Hub`. */
export interface HubOptions {
  /**
   * False (the embedded database) keeps everything in this process: no LISTEN, no NOTIFY,
   * no reconciliation (default true).
   */
  crossInstance?: boolean;
  /**
   * Postgres itself, never a pooler in transaction mode: where the LISTEN connection goes.
   * Required by `start` when `crossInstance`.
   */
  listenUrl?: string;
  /** Overrides some of `DEFAULT_HUB_TIMINGS` (tests shorten them). */
  timings?: Partial<HubTimings>;
}

/** The per-process fan-out hub. */
export class Hub {
  #sql: Sql;
  #log: Logger;
  #rooms = new Map<string, RoomState>();
  #holders = new Map<Holder, (reason: Revocation) => void>();
  #pending = new Map<string, number>();
  #flushing: Promise<void> | null = null;
  #listening: ListeningConnection | null = null;
  #closed = false;
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #reconcileFailing = false;

  #crossInstance: boolean;
  #listenUrl: string | undefined;
  #timings: HubTimings;

  /** `sql` is the pool every query and NOTIFY goes through (it may be a pooler). */
  constructor(sql: Sql, log: Logger, options: HubOptions = {}) {
    this.#sql = sql;
    this.#log = log;
    this.#crossInstance = options.crossInstance ?? true;
    this.#listenUrl = options.listenUrl;
    this.#timings = { ...DEFAULT_HUB_TIMINGS, ...options.timings };
  }

  /**
   * Starts listening for other instances' messages and access changes, with the heartbeat,
   * and the reconciliation. Rejects with the database's error while it is unreachable
   * (nothing is left open: call again), or with `NotificationsNotHeardError` when a NOTIFY
   * sent through the pool is not heard on the LISTEN connection.
   */
  async start(): Promise<void> {
    if (!this.#crossInstance) return;
    if (this.#listenUrl === undefined) {
      throw new TypeError("Cannot listen for other instances: no listenUrl was given");
    }
    const listening = new ListeningConnection({
      url: this.#listenUrl,
      pool: this.#sql,
      log: this.#log,
      heartbeatMs: this.#timings.heartbeatMs,
      heartbeatTimeoutMs: this.#timings.heartbeatTimeoutMs,
      channels: [
        {
          channel: MESSAGES_CHANNEL,
          onNotify: (p) => this.#onMessagesNotify(p),
          // After a (re)connect or a replacement, anything may have been missed.
          onListen: () => {
            for (const [roomId, room] of this.#rooms) this.#catchUp(roomId, room);
          },
        },
        {
          channel: ACCESS_CHANNEL,
          onNotify: (p) => this.#onAccessNotify(p),
          // Leaves and logouts announced while the connection was down are lost: check again.
          onListen: () => this.#revalidate(),
        },
      ],
    });
    await listening.start();
    if (this.#closed) return await listening.close();
    this.#listening = listening;
    this.#later(this.#timings.reconcileMs, () => this.#reconcile());
  }

  /** Stops listening and flushes pending notifications. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const timer of this.#timers) clearTimeout(timer);
    await this.#flushing;
    await this.#listening?.close();
  }

  /**
   * Registers `listener` for a room. Resolves once the room's cursor is known, with
   * a function that unregisters it: every message committed after that point
   * reaches the listener, in order, once.
   */
  async subscribe(roomId: string, listener: MessageListener): Promise<() => void> {
    let room = this.#rooms.get(roomId);
    if (!room) {
      const state: RoomState = {
        cursor: -1,
        listeners: new Set(),
        ready: Promise.resolve(),
        fetching: null,
        dirty: false,
      };
      state.ready = getLastSeq(this.#sql, roomId).then((lastSeq) => {
        state.cursor = lastSeq ?? 0;
      });
      this.#rooms.set(roomId, room = state);
      room.ready.catch(() => {
        if (this.#rooms.get(roomId) === state) this.#rooms.delete(roomId);
      });
    }
    room.listeners.add(listener);
    const current = room;
    const unsubscribe = () => {
      current.listeners.delete(listener);
      if (current.listeners.size === 0 && this.#rooms.get(roomId) === current) {
        this.#rooms.delete(roomId);
      }
    };
    try {
      await current.ready;
    } catch (error) {
      unsubscribe();
      throw error;
    }
    return unsubscribe;
  }

  /** A message this instance committed: deliver locally and announce it to other instances. */
  published(message: Message): void {
    const room = this.#rooms.get(message.roomId);
    if (room && room.cursor >= 0) {
      if (message.seq === room.cursor + 1) this.#dispatch(room, message);
      else if (message.seq > room.cursor) this.#catchUp(message.roomId, room);
    }
    const known = this.#pending.get(message.roomId) ?? 0;
    this.#pending.set(message.roomId, Math.max(known, message.seq));
    if (this.#crossInstance) this.#flushing ??= this.#flush();
  }

  /** What the hub holds: watched rooms, message listeners, access watchers. */
  stats(): { rooms: number; listeners: number; holders: number } {
    let listeners = 0;
    for (const room of this.#rooms.values()) listeners += room.listeners.size;
    return { rooms: this.#rooms.size, listeners, holders: this.#holders.size };
  }

  /** Calls `onRevoke` when the holder leaves the room or their token is revoked, on any instance. */
  watchAccess(holder: Holder, onRevoke: (reason: Revocation) => void): () => void {
    this.#holders.set(holder, onRevoke);
    return () => void this.#holders.delete(holder);
  }

  /** Announces that a user left a room. */
  async announceLeave(roomId: string, userId: string): Promise<void> {
    await this.#announceAccess(`leave:${roomId}:${userId}`);
  }

  /** Announces that a token was revoked. */
  async announceLogout(tokenHash: string): Promise<void> {
    await this.#announceAccess(`logout:${tokenHash}`);
  }

  /** Ends this instance's affected subscriptions at once, then tells the other instances. */
  async #announceAccess(item: string): Promise<void> {
    this.#onAccessNotify(item);
    if (this.#crossInstance) await notifyAll(this.#sql, ACCESS_CHANNEL, [item]);
  }

  #dispatch(room: RoomState, message: Message): void {
    if (message.seq !== room.cursor + 1) return;
    room.cursor = message.seq;
    for (const listener of room.listeners) listener(message);
  }

  #catchUp(roomId: string, room: RoomState): void {
    if (room.cursor < 0) return; // still starting: its cursor will be read after this commit
    if (room.fetching) {
      room.dirty = true;
      return;
    }
    room.fetching = (async () => {
      do {
        room.dirty = false;
        const batch = await listMessages(this.#sql, roomId, {
          afterSeq: room.cursor,
          limit: CATCH_UP_BATCH,
        });
        for (const message of batch) this.#dispatch(room, message);
        if (batch.length === CATCH_UP_BATCH) room.dirty = true;
      } while (room.dirty && this.#rooms.get(roomId) === room);
    })().catch((error) => {
      this.#log.error(`Cannot catch up room ${roomId}: retrying in 1s`, error);
      this.#later(1000, () => this.#rooms.get(roomId) === room && this.#catchUp(roomId, room));
    }).finally(() => {
      room.fetching = null;
    });
  }

  #later(ms: number, fn: () => void): void {
    if (this.#closed) return;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      fn();
    }, ms);
    this.#timers.add(timer);
  }

  /**
   * Reads the last seq of every watched room in one query and catches up those that are
   * behind: a committed message whose NOTIFY was lost reaches subscribers within
   * `reconcileMs` and a catch-up. No query while no room is watched.
   */
  #reconcile(): void {
    const rooms = [...this.#rooms].filter(([, room]) => room.cursor >= 0);
    if (rooms.length === 0) {
      this.#later(this.#timings.reconcileMs, () => this.#reconcile());
      return;
    }
    // Bounded: a query stuck on a dead pool connection must not end the reconciliation.
    withDeadline(
      RECONCILE_DEADLINE_MS,
      () => getLastSeqs(this.#sql, rooms.map(([roomId]) => roomId)),
    ).then((lastSeqs) => {
      this.#reconcileFailing = false;
      for (const [roomId, room] of rooms) {
        const lastSeq = lastSeqs.get(roomId) ?? 0;
        if (lastSeq > room.cursor && this.#rooms.get(roomId) === room) this.#catchUp(roomId, room);
      }
    }).catch((error) => {
      // An outage: logged once, tried again at every interval.
      if (!this.#reconcileFailing && !this.#closed) {
        this.#log.error("Cannot reconcile watched rooms: retrying", error);
      }
      this.#reconcileFailing = true;
    }).finally(() => this.#later(this.#timings.reconcileMs, () => this.#reconcile()));
  }

  #revalidate(): void {
    const holders = [...this.#holders];
    findRevoked(this.#sql, holders.map(([holder]) => holder)).then((revoked) => {
      for (const i of revoked) holders[i][1]("revoked");
    }).catch((error) => {
      this.#log.error("Cannot re-check subscribers' access: retrying in 1s", error);
      this.#later(1000, () => this.#revalidate());
    });
  }

  #onMessagesNotify(payload: string): void {
    for (const item of payload.split(",")) {
      const [roomId, seqText] = item.split(":");
      const room = this.#rooms.get(roomId);
      if (room && Number(seqText) > room.cursor) this.#catchUp(roomId, room);
    }
  }

  #onAccessNotify(payload: string): void {
    for (const item of payload.split(",")) {
      const [kind, a, b] = item.split(":");
      for (const [holder, onRevoke] of this.#holders) {
        if (kind === "leave" && holder.roomId === a && holder.userId === b) onRevoke("left");
        if (kind === "logout" && holder.tokenHash === a) onRevoke("logged_out");
      }
    }
  }

  async #flush(): Promise<void> {
    try {
      while (this.#pending.size > 0) {
        const items = [...this.#pending].map(([roomId, seq]) => `${roomId}:${seq}`);
        this.#pending.clear();
        await notifyAll(this.#sql, MESSAGES_CHANNEL, items).catch((error) => {
          // Other instances still catch up on their next notification or reconnect.
          if (!this.#closed) this.#log.error("Cannot announce new messages", error);
        });
      }
    } finally {
      this.#flushing = null;
    }
  }
}
