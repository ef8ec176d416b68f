/**
 * The broadcast between instances: how one instance learns that another committed a message
 * or ended someone's access. One interface, chosen at startup: Postgres `LISTEN/NOTIFY` when
 * several instances share a database, nothing on the embedded database (one process).
 *
 * A broadcast only says "room R has reached seq S (event E)" or "this access ended"; the hub
 * reads the messages and events themselves from Postgres, so a lost or late notification
 * delays, never loses. Presence and typing travel whole (`LiveItem`): they are never stored,
 * and presence heals after a loss by asking every instance again (`hello`).
 */
import type { LiveMember } from "../../db/events.ts";
import type { Participant, Signal } from "./calls.ts";
import type { Sql } from "../../db/mod.ts";
import {
  ACCESS_CHANNEL,
  EVENTS_CHANNEL,
  LIVE_CHANNEL,
  MESSAGES_CHANNEL,
  notifyAll,
} from "../../db/notify.ts";
import type { Logger } from "../log.ts";
import { HEARTBEAT_MS, HEARTBEAT_TIMEOUT_MS, ListeningConnection } from "./listening.ts";

/**
 * A presence or typing change, or an instance's presence bookkeeping, as instances tell each
 * other (`i` is the instance that sends it; see `presence.ts` and `typing.ts`). Sent as JSON:
 * `joinedAt` arrives as a string.
 */
export type LiveItem =
  | { k: "presence" | "typing"; i: string; r: string; m: LiveMember; on: boolean }
  | { k: "alive" | "hello" | "reset" | "synced" | "bye"; i: string }
  | { k: "call.join" | "call.leave"; i: string; r: string; p: Participant }
  | { k: "call.sync"; i: string; all: [string, Participant][] }
  | { k: "call.signal"; i: string; r: string; to: string; s: Signal };

/**
 * A piece of a live item too long for one NOTIFY (an SDP offer): `n` numbers the item among
 * the sender's, `x` the piece, `of` counts them; `d` is that piece of the item's JSON.
 */
interface LivePiece {
  k: "piece";
  i: string;
  n: number;
  x: number;
  of: number;
  d: string;
}

/**
 * Longest live item sent whole, in UTF-16 code units of its JSON: at most 3 bytes each, under
 * NOTIFY's 8000-byte payload.
 */
const WHOLE_ITEM_CHARS = 2_600;

/** Code units of an item's JSON per piece: at most 6 bytes each once escaped again. */
const PIECE_CHARS = 1_200;

/** Most items being reassembled at once; past it the oldest is dropped. */
const MAX_ASSEMBLING = 1_000;

/** What the hub does with what other instances announce. */
export interface BroadcastHandlers {
  /**
   * Another instance committed messages of `roomId` up to `seq` and events up to `eventId`
   * (NaN from an instance of the previous release, which does not say).
   */
  onMessages(roomId: string, seq: number, eventId: number): void;
  /** Another instance committed events (not messages) of `roomId` up to `eventId`. */
  onEvents(roomId: string, eventId: number): void;
  /** An access change, as given to `announceAccess` on some instance. */
  onAccess(item: string): void;
  /** A presence or typing item from another instance (never this one's own). */
  onLive(item: LiveItem): void;
  /** Listening (again) for messages: anything announced meanwhile may have been missed. */
  onMessagesResumed(): void;
  /** Listening (again) for access changes: anything announced meanwhile may have been missed. */
  onAccessResumed(): void;
  /** Listening (again) for live items: presence may have been missed. */
  onLiveResumed(): void;
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
  /** Announces that `roomId` reached `seq` and event `eventId`; coalesced, sent soon after. */
  announceMessage(roomId: string, seq: number, eventId: number): void;
  /** Announces that `roomId` reached event `eventId`; coalesced, sent soon after. */
  announceEvent(roomId: string, eventId: number): void;
  /** Sends a presence or typing item to the other instances, in order, soon after. */
  announceLive(item: LiveItem): void;
  /** Announces an access change (`leave:<room>:<user>`, `logout:<token hash>`). */
  announceAccess(item: string): Promise<void>;
  /** Sends what is pending and stops hearing. */
  close(): Promise<void>;
  /**
   * The LISTEN connection's state, for the metrics: whether it is up (see
   * `ListeningConnection.up`) and how often it was replaced; null without one (embedded).
   */
  listenState(): { up: boolean; replacements: number } | null;
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
  announceEvent(): void {}
  /** Nobody to tell. */
  announceLive(): void {}
  /** Nobody to tell. */
  announceAccess(): Promise<void> {
    return Promise.resolve();
  }
  /** Nothing to close. */
  close(): Promise<void> {
    return Promise.resolve();
  }
  /** No LISTEN connection. */
  listenState(): null {
    return null;
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
 * (`listening.ts`). Announcements are coalesced: one NOTIFY carries the latest seq and event id
 * of every room that moved since the last one, `<room>:<seq>:<event id>,…` (an instance of the
 * previous release reads the first two), one more the rooms whose other events moved, and one
 * the live items in order, one JSON per line; at most one of each per `NOTIFY_INTERVAL_MS` under
 * load.
 */
export class PostgresBroadcast implements Broadcast {
  readonly lossy = true;
  #sql: Sql;
  #log: Logger;
  #listenUrl: string;
  #timings: HeartbeatTimings;
  #listening: ListeningConnection | null = null;
  #instanceId = "";
  #pending = new Map<string, { seq: number; eventId: number }>();
  #pendingEvents = new Map<string, number>();
  #pendingLive: string[] = [];
  /** Numbers this instance's live items sent in pieces. */
  #pieces = 0;
  /** Items being reassembled: `<instance>:<n>` → their pieces so far. */
  #assembling = new Map<string, string[]>();
  #handlers: BroadcastHandlers | null = null;
  /** Channels whose last NOTIFY failed (logged once until one succeeds). */
  #failing = new Set<string>();
  /** Live items were lost since the last successful NOTIFY of them. */
  #liveLost = false;
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
    this.#handlers = handlers;
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
              const [roomId, seq, eventId] = item.split(":");
              handlers.onMessages(roomId, Number(seq), Number(eventId ?? NaN));
            }
          },
          onListen: () => handlers.onMessagesResumed(),
        },
        {
          channel: EVENTS_CHANNEL,
          onNotify(payload) {
            for (const item of payload.split(",")) {
              const [roomId, eventId] = item.split(":");
              handlers.onEvents(roomId, Number(eventId));
            }
          },
          onListen: () => handlers.onMessagesResumed(),
        },
        {
          channel: LIVE_CHANNEL,
          onNotify: (payload) => {
            for (const line of payload.split("\n")) {
              let item: LiveItem | LivePiece | null;
              try {
                item = JSON.parse(line);
              } catch {
                continue; // not ours
              }
              if (item?.i === this.#instanceId) continue;
              if (item?.k === "piece") item = this.#assemble(item);
              if (item) handlers.onLive(item);
            }
          },
          onListen: () => handlers.onLiveResumed(),
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
  announceMessage(roomId: string, seq: number, eventId: number): void {
    const known = this.#pending.get(roomId);
    if (!known || seq > known.seq) this.#pending.set(roomId, { seq, eventId });
    this.#flushing ??= this.#flush();
  }

  /** See `Broadcast.announceEvent`. */
  announceEvent(roomId: string, eventId: number): void {
    const known = this.#pendingEvents.get(roomId) ?? 0;
    if (eventId > known) this.#pendingEvents.set(roomId, eventId);
    this.#flushing ??= this.#flush();
  }

  /** See `Broadcast.announceLive`. */
  announceLive(item: LiveItem): void {
    // Every item of this instance carries its id; its own are not handed back.
    this.#instanceId = item.i;
    const json = JSON.stringify(item);
    if (json.length <= WHOLE_ITEM_CHARS) {
      this.#pendingLive.push(json);
    } else {
      const n = ++this.#pieces;
      const of = Math.ceil(json.length / PIECE_CHARS);
      for (let x = 0; x < of; x++) {
        const d = json.slice(x * PIECE_CHARS, (x + 1) * PIECE_CHARS);
        this.#pendingLive.push(JSON.stringify({ k: "piece", i: item.i, n, x, of, d }));
      }
    }
    this.#flushing ??= this.#flush();
  }

  /** Adds a piece to its item; the item once whole (pieces of one sender arrive in order). */
  #assemble(piece: LivePiece): LiveItem | null {
    const key = `${piece.i}:${piece.n}`;
    const parts = piece.x === 0 ? [] : this.#assembling.get(key);
    if (!parts || parts.length !== piece.x) {
      this.#assembling.delete(key); // a piece went missing: the item is lost
      return null;
    }
    parts.push(piece.d);
    this.#assembling.delete(key); // re-inserted last: the map stays oldest first
    if (parts.length < piece.of) {
      this.#assembling.set(key, parts);
      if (this.#assembling.size > MAX_ASSEMBLING) {
        this.#assembling.delete(this.#assembling.keys().next().value!);
      }
      return null;
    }
    try {
      return JSON.parse(parts.join(""));
    } catch {
      return null;
    }
  }

  /** See `Broadcast.announceAccess`. */
  async announceAccess(item: string): Promise<void> {
    await notifyAll(this.#sql, ACCESS_CHANNEL, [item]);
  }

  /** See `Broadcast.listenState`: down until `start` succeeded. */
  listenState(): { up: boolean; replacements: number } {
    return {
      up: this.#listening?.up ?? false,
      replacements: this.#listening?.replacements ?? 0,
    };
  }

  /** See `Broadcast.close`. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#flushing;
    await this.#listening?.close();
  }

  /**
   * One channel's NOTIFYs; false when they failed. Other instances still catch up on their
   * next notification or reconciliation, and presence is sent again after the next success
   * (`onLiveResumed`). A failure is logged once per outage and channel, by its code.
   */
  async #notify(channel: string, items: string[], separator: string): Promise<boolean> {
    try {
      await notifyAll(this.#sql, channel, items, separator);
      this.#failing.delete(channel);
      return true;
    } catch (error) {
      if (channel === LIVE_CHANNEL) this.#liveLost = true;
      if (!this.#closed && !this.#failing.has(channel)) {
        const code = (error as { code?: string }).code ?? (error as Error).message;
        this.#log.warn(`Cannot announce on ${channel} (${code}): retrying with the next`);
      }
      this.#failing.add(channel);
      return false;
    }
  }

  #morePending(): boolean {
    return this.#pending.size > 0 || this.#pendingEvents.size > 0 || this.#pendingLive.length > 0;
  }

  async #flush(): Promise<void> {
    try {
      while (this.#morePending()) {
        const started = performance.now();
        const messages = [...this.#pending].map(([roomId, { seq, eventId }]) =>
          `${roomId}:${seq}:${eventId}`
        );
        const events = [...this.#pendingEvents].map(([roomId, eventId]) => `${roomId}:${eventId}`);
        const live = this.#pendingLive;
        this.#pending.clear();
        this.#pendingEvents.clear();
        this.#pendingLive = [];
        if (messages.length > 0) await this.#notify(MESSAGES_CHANNEL, messages, ",");
        if (events.length > 0) await this.#notify(EVENTS_CHANNEL, events, ",");
        if (live.length > 0 && await this.#notify(LIVE_CHANNEL, live, "\n") && this.#liveLost) {
          // Presence items were lost: every instance sends its members again.
          this.#liveLost = false;
          this.#handlers?.onLiveResumed();
        }
        // Under load, at most one NOTIFY per interval: each costs a statement here and in
        // Postgres, and other instances read the messages themselves anyway.
        const rest = NOTIFY_INTERVAL_MS - (performance.now() - started);
        if (this.#morePending() && rest > 0 && !this.#closed) {
          await new Promise((resolve) => setTimeout(resolve, rest));
        }
      }
    } finally {
      this.#flushing = null;
    }
  }
}
