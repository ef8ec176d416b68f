/**
 * The hub: local fan-out of committed messages to this instance's subscribers, in `seq` order,
 * exactly once, whichever instance stored them.
 *
 * Each watched room has a cursor, the last seq delivered to its subscribers. A message this
 * instance committed is delivered at once when it is the next seq; anything else (another
 * instance's announcement, a gap, a resumed broadcast) makes the room catch up from Postgres
 * in batches. Every message is serialised once per room (`FanoutMessage`), and the same frame
 * text goes to every subscriber. The last `RECENT_PER_ROOM` messages of a watched room stay in
 * memory, so resuming subscribers replay from there instead of each reading Postgres.
 *
 * When the broadcast can lose notifications (`Broadcast.lossy`), the hub reads the watched
 * rooms' last seqs every `reconcileMs` in one query and catches up the rooms that are behind
 * (a message committed by a process that died before announcing it).
 */
import { listMessages, type Message } from "../../db/messages.ts";
import type { Sql } from "../../db/mod.ts";
import { getLastSeqs, type MemberKey } from "../../db/rooms.ts";
import { withDeadline } from "../deadline.ts";
import type { Logger } from "../log.ts";
import type { Broadcast, HeartbeatTimings } from "./broadcast.ts";

/** Messages fetched per round trip when a room catches up. */
const CATCH_UP_BATCH = 500;

/** Messages of a watched room kept in memory for resuming subscribers. */
export const RECENT_PER_ROOM = 256;

/** How long one reconciliation query may take before the next one is scheduled anyway. */
const RECONCILE_DEADLINE_MS = 10_000;

/** Between reconciliations of the watched rooms, in milliseconds (none while none is watched). */
export const DEFAULT_RECONCILE_MS = 2_000;

/**
 * A committed message as the hub hands it out: the message, and its subscription data frame
 * built once (the part after the request id; see `connection.ts` `dataFrameSuffix`).
 */
export class FanoutMessage {
  /** The message. */
  readonly message: Message;
  readonly #encode: (message: Message) => string;
  #suffix: string | null = null;
  #prefix: string | null = null;
  #frame = "";

  constructor(message: Message, encode: (message: Message) => string) {
    this.message = message;
    this.#encode = encode;
  }

  /** The message's seq. */
  get seq(): number {
    return this.message.seq;
  }

  /**
   * The whole data frame for a subscription whose frames start with `prefix`. Subscribers of
   * a room mostly share a prefix (clients number their requests alike), so the last frame
   * built is kept and handed out again.
   */
  frame(prefix: string): string {
    if (prefix !== this.#prefix) {
      this.#suffix ??= this.#encode(this.message);
      this.#prefix = prefix;
      this.#frame = prefix + this.#suffix;
    }
    return this.#frame;
  }
}

/** Receives a room's messages in seq order, each once. */
export interface RoomSubscriber {
  deliver(item: FanoutMessage): void;
}

/** A watched room. */
interface WatchedRoom {
  /** The last seq delivered to subscribers; -1 until known. */
  cursor: number;
  subscribers: Set<RoomSubscriber>;
  /** Something was announced while the cursor was unknown: catch up once it is known. */
  stale: boolean;
  fetching: Promise<void> | null;
  /** More to fetch after the running catch-up. */
  dirty: boolean;
  /** The last messages delivered, oldest first: seqs `recent[0].seq` to `cursor`. */
  recent: FanoutMessage[];
}

/**
 * Who holds a subscription, to end it when their access goes away. `userId` is "" while the
 * holder is being set up and its user is not known yet.
 */
export interface Holder {
  roomId: string;
  userId: string;
  tokenHash: string;
  /**
   * When the holder's session expires unless used meanwhile, in ms since the epoch; 0 while
   * unknown. The hub checks the session again at that time (see `HubOptions.checkHolders`).
   */
  expiresAt: number;
}

/** What a check found of one holder's access (see `HubOptions.checkHolders`). */
export interface HolderState {
  /** False when the session ended (signed out, revoked, expired, account deleted). */
  session: boolean;
  /** False when the user is no longer a member of the room. */
  member: boolean;
  /** When the session expires now, in ms since the epoch. */
  expiresAt: number;
}

/** Why a holder lost access: it left the room, its session ended, or a check found it gone. */
export type Revocation = "left" | "logged_out" | "revoked";

/** How often holders whose session may have expired are looked for, in milliseconds. */
const EXPIRY_SWEEP_MS = 1000;

/** How often the hub and its broadcast check on things, in milliseconds (tests shorten them). */
export interface HubTimings extends HeartbeatTimings {
  /** Between reconciliations of the watched rooms (none while no room is watched). */
  reconcileMs: number;
}

/** Options of a `Hub`. */
export interface HubOptions {
  /** How other instances hear of this one's messages and access changes, and it of theirs. */
  broadcast: Broadcast;
  /** Serialises a message into a data frame suffix (see `FanoutMessage`). */
  encode: (message: Message) => string;
  /** Reads the holders' sessions and memberships, in their order (see `access.ts`). */
  checkHolders: (holders: Holder[]) => Promise<HolderState[]>;
  /** Between reconciliations, in milliseconds (default `DEFAULT_RECONCILE_MS`). */
  reconcileMs?: number;
}

/** The per-process fan-out hub. */
export class Hub {
  #sql: Sql;
  #log: Logger;
  #broadcast: Broadcast;
  #encode: (message: Message) => string;
  #checkHolders: (holders: Holder[]) => Promise<HolderState[]>;
  #expiryCheck: Promise<void> | null = null;
  #reconcileMs: number;
  #rooms = new Map<string, WatchedRoom>();
  #holders = new Map<Holder, (reason: Revocation) => void>();
  #closed = false;
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #reconcileFailing = false;

  /** `sql` is the pool catch-up reads go through (it may be a pooler). */
  constructor(sql: Sql, log: Logger, options: HubOptions) {
    this.#sql = sql;
    this.#log = log;
    this.#broadcast = options.broadcast;
    this.#encode = options.encode;
    this.#checkHolders = options.checkHolders;
    this.#reconcileMs = options.reconcileMs ?? DEFAULT_RECONCILE_MS;
  }

  /**
   * Starts hearing other instances (see `Broadcast.start`, whose errors it passes on) and,
   * when the broadcast is lossy, the reconciliation.
   */
  async start(): Promise<void> {
    await this.#broadcast.start({
      onMessages: (roomId, seq) => {
        const room = this.#rooms.get(roomId);
        if (room && seq > room.cursor) this.#catchUp(roomId, room);
      },
      onAccess: (item) => this.#onAccess(item),
      // After a (re)connect or a replacement, anything may have been missed.
      onMessagesResumed: () => {
        for (const [roomId, room] of this.#rooms) this.#catchUp(roomId, room);
      },
      onAccessResumed: () => this.#revalidate(),
    });
    if (this.#broadcast.lossy) this.#later(this.#reconcileMs, () => this.#reconcile());
    this.#later(EXPIRY_SWEEP_MS, () => this.#sweepExpired());
  }

  /** Stops the timers and the broadcast (pending announcements are sent first). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const timer of this.#timers) clearTimeout(timer);
    await this.#broadcast.close();
  }

  /**
   * Registers `subscriber` for a room, at once: from now on every message committed after
   * the room's cursor reaches it, in order, once. While the room is new its cursor is unknown
   * until someone calls `setCursor` with a last seq read after this call. Returns a function
   * that unregisters it.
   */
  subscribe(roomId: string, subscriber: RoomSubscriber): () => void {
    let room = this.#rooms.get(roomId);
    if (!room) {
      room = {
        cursor: -1,
        subscribers: new Set(),
        stale: false,
        fetching: null,
        dirty: false,
        recent: [],
      };
      this.#rooms.set(roomId, room);
    }
    room.subscribers.add(subscriber);
    const current = room;
    return () => {
      current.subscribers.delete(subscriber);
      if (current.subscribers.size === 0 && this.#rooms.get(roomId) === current) {
        this.#rooms.delete(roomId);
      }
    };
  }

  /**
   * Sets a new room's cursor from a last seq read after `subscribe` (any such read will do:
   * everything committed later is announced). Returns the room's cursor, the seq up to which
   * subscribers must replay for themselves; -1 when the room is not watched.
   */
  setCursor(roomId: string, lastSeq: number): number {
    const room = this.#rooms.get(roomId);
    if (!room) return -1;
    if (room.cursor < 0) {
      room.cursor = lastSeq;
      if (room.stale) this.#catchUp(roomId, room);
    }
    return room.cursor;
  }

  /**
   * The room's messages after `afterSeq` up to its cursor, from memory; null when memory
   * does not reach back that far (read Postgres instead).
   */
  recent(roomId: string, afterSeq: number): FanoutMessage[] | null {
    const room = this.#rooms.get(roomId);
    if (!room || room.cursor < 0) return null;
    if (afterSeq >= room.cursor) return [];
    const first = room.recent[0]?.seq;
    if (first === undefined || afterSeq + 1 < first) return null;
    return room.recent.slice(afterSeq + 1 - first);
  }

  /** Wraps a message read from Postgres like the hub's own (for replays). */
  wrap(message: Message): FanoutMessage {
    return new FanoutMessage(message, this.#encode);
  }

  /** A message this instance committed: delivered here, and announced to other instances. */
  committed(message: Message): void {
    const room = this.#rooms.get(message.roomId);
    if (room) {
      if (room.cursor < 0) room.stale = true;
      else if (message.seq === room.cursor + 1) this.#dispatch(room, this.wrap(message));
      else if (message.seq > room.cursor) this.#catchUp(message.roomId, room);
    }
    this.#broadcast.announceMessage(message.roomId, message.seq);
  }

  /** What the hub holds: watched rooms, subscribers, access watchers. */
  stats(): { rooms: number; listeners: number; holders: number } {
    let listeners = 0;
    for (const room of this.#rooms.values()) listeners += room.subscribers.size;
    return { rooms: this.#rooms.size, listeners, holders: this.#holders.size };
  }

  /**
   * Calls `onRevoke` when the holder leaves the room, or their session ends (sign-out,
   * revocation, account deletion: on any instance; expiry: found by this hub at `expiresAt`).
   */
  watchAccess(holder: Holder, onRevoke: (reason: Revocation) => void): () => void {
    this.#holders.set(holder, onRevoke);
    return () => void this.#holders.delete(holder);
  }

  /** Announces that a user left a room: their subscriptions to it end on every instance. */
  async announceLeave({ roomId, userId }: MemberKey): Promise<void> {
    await this.#announceAccess(`leave:${roomId}:${userId}`);
  }

  /** Announces that a token's session ended: its subscriptions end on every instance. */
  async announceLogout(tokenHash: string): Promise<void> {
    await this.#announceAccess(`logout:${tokenHash}`);
  }

  /** Announces that these sessions ended (`announceLogout` for each). */
  async announceLogouts(tokenHashes: readonly string[]): Promise<void> {
    for (const tokenHash of tokenHashes) await this.announceLogout(tokenHash);
  }

  /**
   * Announces that an account was deleted: its subscriptions end on every instance, and the
   * rooms' recent messages in memory are dropped where they hold its messages, so that replays
   * read them from Postgres as a deleted user's (see db/accounts.ts).
   */
  async announceAccountDeleted(userId: string, tokenHashes: readonly string[]): Promise<void> {
    await this.#announceAccess(`deleted:${userId}`);
    // Also as sign-outs, which instances of the previous release understand (rolling deploys).
    await this.announceLogouts(tokenHashes);
  }

  /** Ends this instance's affected subscriptions at once, then tells the other instances. */
  async #announceAccess(item: string): Promise<void> {
    this.#onAccess(item);
    await this.#broadcast.announceAccess(item);
  }

  #dispatch(room: WatchedRoom, item: FanoutMessage): void {
    if (item.seq !== room.cursor + 1) return;
    room.cursor = item.seq;
    room.recent.push(item);
    if (room.recent.length > RECENT_PER_ROOM * 2) room.recent = room.recent.slice(-RECENT_PER_ROOM);
    for (const subscriber of room.subscribers) subscriber.deliver(item);
  }

  #catchUp(roomId: string, room: WatchedRoom): void {
    if (room.cursor < 0) {
      room.stale = true; // its cursor will be read after this commit
      return;
    }
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
        for (const message of batch) this.#dispatch(room, this.wrap(message));
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
   * behind: a committed message whose announcement was lost reaches subscribers within
   * `reconcileMs` and a catch-up. No query while no room is watched.
   */
  #reconcile(): void {
    const rooms = [...this.#rooms].filter(([, room]) => room.cursor >= 0);
    if (rooms.length === 0) {
      this.#later(this.#reconcileMs, () => this.#reconcile());
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
    }).finally(() => this.#later(this.#reconcileMs, () => this.#reconcile()));
  }

  #revalidate(): void {
    // Holders still being set up read their access again (their callback asks for it).
    const all = [...this.#holders];
    for (const [holder, onRevoke] of all) if (holder.userId === "") onRevoke("revoked");
    const holders = all.filter(([holder]) => holder.userId !== "");
    this.#check(holders).catch((error) => {
      this.#log.error("Cannot re-check subscribers' access: retrying in 1s", error);
      this.#later(1000, () => this.#revalidate());
    });
  }

  /** Checks the holders' access and ends the subscriptions of those who lost it. */
  async #check(holders: [Holder, (reason: Revocation) => void][]): Promise<void> {
    if (holders.length === 0) return;
    const states = await this.#checkHolders(holders.map(([holder]) => holder));
    states.forEach((state, i) => {
      const [holder, onRevoke] = holders[i];
      if (!state.session) onRevoke("logged_out");
      else if (!state.member) onRevoke("revoked");
      else holder.expiresAt = state.expiresAt;
    });
  }

  /**
   * Every `EXPIRY_SWEEP_MS`: the holders whose session expiry has come are checked again (a
   * use elsewhere may have extended it); those whose session did expire end with
   * `UNAUTHORIZED`. One check at a time.
   */
  #sweepExpired(): void {
    this.#later(EXPIRY_SWEEP_MS, () => this.#sweepExpired());
    if (this.#expiryCheck) return;
    const now = Date.now();
    const due = [...this.#holders].filter(([holder]) =>
      holder.expiresAt > 0 && holder.expiresAt <= now
    );
    if (due.length === 0) return;
    this.#expiryCheck = this.#check(due).catch((error) => {
      const code = (error as { code?: string }).code ?? (error as Error).message;
      this.#log.warn(`Cannot check expiring sessions (${code}): retrying`);
    }).finally(() => {
      this.#expiryCheck = null;
    });
  }

  #onAccess(item: string): void {
    const [kind, a, b] = item.split(":");
    if (kind === "deleted") {
      for (const room of this.#rooms.values()) {
        if (room.recent.some((m) => m.message.userId === a)) room.recent = [];
      }
    }
    for (const [holder, onRevoke] of this.#holders) {
      // A holder still being set up may not know its user yet: it checks again itself.
      const unknown = holder.userId === "";
      if (kind === "leave" && holder.roomId === a && (unknown || holder.userId === b)) {
        onRevoke("left");
      }
      if (kind === "logout" && holder.tokenHash === a) onRevoke("logged_out");
      if (kind === "deleted" && (unknown || holder.userId === a)) onRevoke("logged_out");
    }
  }
}
