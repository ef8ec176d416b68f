/**
 * A room log: one gap-free order of items per watched room (messages by seq, events by event
 * id), fanned out to this instance's subscribers in order, each once, whichever instance
 * stored them.
 *
 * Each watched room has a cursor, the last id delivered to its subscribers. An item this
 * instance committed is delivered at once when it is the next id; anything else (another
 * instance's announcement, a gap, a resumed broadcast) makes the room catch up from Postgres
 * in batches. Every item is serialised once per room (`FanoutItem`), and the same frame text
 * goes to every subscriber. The last `RECENT_PER_ROOM` items of a watched room stay in memory,
 * so resuming subscribers replay from there instead of each reading Postgres.
 */
import type { Logger } from "../log.ts";

/** Items fetched per round trip when a room catches up. */
const CATCH_UP_BATCH = 500;

/** Items of a watched room kept in memory for resuming subscribers. */
export const RECENT_PER_ROOM = 256;

/**
 * An item as the log hands it out: its id in the room's order, its value, and its subscription
 * data frame built once (the part after the request id; see `direct_stream.ts`
 * `dataFrameSuffix`). A live item (presence, typing) is outside the order: it is never
 * replayed, and goes out under the id of the last item each subscriber has.
 */
export class FanoutItem<T> {
  /** The item's id in the room's order (for a live item, the cursor when it was published). */
  readonly id: number;
  /** The item. */
  readonly value: T;
  /** True for a live-only item. */
  readonly live: boolean;
  /**
   * When this instance committed the item (`performance.now()`), until its first frame is
   * written (then 0): the delivery latency's sample (see `FanoutCounts.firstFrame`). 0 for
   * items read from Postgres, and when nobody measures.
   */
  committedAt = 0;
  readonly #encode: (value: T, id: number) => string;
  #suffix = "";
  #suffixId = -1;
  #prefix: string | null = null;
  #frameId = -1;
  #frame = "";

  constructor(id: number, value: T, live: boolean, encode: (value: T, id: number) => string) {
    this.id = id;
    this.value = value;
    this.live = live;
    this.#encode = encode;
  }

  /**
   * The whole data frame, under `id`, for a subscription whose frames start with `prefix`.
   * Subscribers of a room mostly share a prefix (clients number their requests alike) and an
   * id, so the last frame built is kept and handed out again.
   */
  frame(prefix: string, id: number = this.id): string {
    if (prefix !== this.#prefix || id !== this.#frameId) {
      if (id !== this.#suffixId) {
        this.#suffix = this.#encode(this.value, id);
        this.#suffixId = id;
      }
      this.#prefix = prefix;
      this.#frameId = id;
      this.#frame = prefix + this.#suffix;
    }
    return this.#frame;
  }
}

/**
 * What a log's subscribers did, counted as plain numbers on the fan-out path and read by the
 * metrics when scraped (`server/metrics.ts`).
 */
export interface FanoutCounts {
  /** Frames written to subscribers (replayed, live and live-only items alike). */
  deliveries: number;
  /** Subscribers that resumed with missed items all in memory. */
  replaysFromMemory: number;
  /** Subscribers that resumed by reading Postgres. */
  replaysFromDatabase: number;
  /**
   * Told the seconds from an item's commit on this instance to its first frame, once per item;
   * null: not measured (items are not stamped).
   */
  firstFrame: ((seconds: number) => void) | null;
}

/** Receives a room's items in order, each once, and its live items. */
export interface LogSubscriber<T> {
  deliver(item: FanoutItem<T>): void;
}

/** A watched room. */
interface WatchedRoom<T> {
  /** The last id delivered to subscribers; -1 until known. */
  cursor: number;
  subscribers: Set<LogSubscriber<T>>;
  /** Something was announced while the cursor was unknown: catch up once it is known. */
  stale: boolean;
  fetching: Promise<void> | null;
  /** More to fetch after the running catch-up. */
  dirty: boolean;
  /** The last items delivered, oldest first: ids `recent[0].id` to `cursor`. */
  recent: FanoutItem<T>[];
}

/** Options of a `RoomLog`. */
export interface RoomLogOptions<T> {
  /** What the log holds, for error messages ("messages", "events"). */
  name: string;
  /** Reads a room's items after `afterId`, oldest first, at most `limit`, from Postgres. */
  read(roomId: string, afterId: number, limit: number): Promise<{ id: number; value: T }[]>;
  /** Serialises an item into a data frame suffix under `id` (see `FanoutItem`). */
  encode(value: T, id: number): string;
  log: Logger;
  /** Runs `fn` in `ms` unless the owner closed meanwhile (retries). */
  later(ms: number, fn: () => void): void;
}

/** The watched rooms of one kind of item. */
export class RoomLog<T> {
  /** What its subscribers did (see `FanoutCounts`). */
  readonly counts: FanoutCounts = {
    deliveries: 0,
    replaysFromMemory: 0,
    replaysFromDatabase: 0,
    firstFrame: null,
  };
  readonly #options: RoomLogOptions<T>;
  #rooms = new Map<string, WatchedRoom<T>>();

  constructor(options: RoomLogOptions<T>) {
    this.#options = options;
  }

  /**
   * Registers `subscriber` for a room, at once: from now on every item committed after the
   * room's cursor reaches it, in order, once. While the room is new its cursor is unknown
   * until someone calls `setCursor` with a last id read after this call. Returns a function
   * that unregisters it.
   */
  subscribe(roomId: string, subscriber: LogSubscriber<T>): () => void {
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
   * Sets a new room's cursor from a last id read after `subscribe` (any such read will do:
   * everything committed later is announced). Returns the room's cursor, the id up to which
   * subscribers must replay for themselves; -1 when the room is not watched.
   */
  setCursor(roomId: string, lastId: number): number {
    const room = this.#rooms.get(roomId);
    if (!room) return -1;
    if (room.cursor < 0) {
      room.cursor = lastId;
      if (room.stale) this.#catchUp(roomId, room);
    }
    return room.cursor;
  }

  /**
   * The room's items after `afterId` up to its cursor, from memory; null when memory does not
   * reach back that far (read Postgres instead).
   */
  recent(roomId: string, afterId: number): FanoutItem<T>[] | null {
    const room = this.#rooms.get(roomId);
    if (!room || room.cursor < 0) return null;
    if (afterId >= room.cursor) return [];
    const first = room.recent[0]?.id;
    if (first === undefined || afterId + 1 < first) return null;
    return room.recent.slice(afterId + 1 - first);
  }

  /** Reads a room's items after `afterId` from Postgres, wrapped (for replays). */
  async read(roomId: string, afterId: number, limit: number): Promise<FanoutItem<T>[]> {
    const rows = await this.#options.read(roomId, afterId, limit);
    return rows.map(({ id, value }) => this.wrap(id, value));
  }

  /** Wraps an item; `live` for one outside the order (see `FanoutItem`). */
  wrap(id: number, value: T, live = false): FanoutItem<T> {
    return new FanoutItem(id, value, live, this.#options.encode);
  }

  /** Whether a room is watched here (has subscribers). */
  watches(roomId: string): boolean {
    return this.#rooms.has(roomId);
  }

  /** An item this instance committed: delivered at once when it is the next one. */
  committed(roomId: string, id: number, value: T): void {
    const room = this.#rooms.get(roomId);
    if (!room) return;
    if (room.cursor < 0) room.stale = true;
    else if (id === room.cursor + 1) {
      const item = this.wrap(id, value);
      if (this.counts.firstFrame !== null) item.committedAt = performance.now();
      this.#dispatch(room, item);
    } else if (id > room.cursor) this.#catchUp(roomId, room);
  }

  /** Another instance committed items of `roomId` up to `id` (NaN: unknown, catch up). */
  announced(roomId: string, id: number): void {
    const room = this.#rooms.get(roomId);
    if (room && !(id <= room.cursor)) this.#catchUp(roomId, room);
  }

  /** Catches up every watched room (after a broadcast that may have lost announcements). */
  catchUpAll(): void {
    for (const [roomId, room] of this.#rooms) this.#catchUp(roomId, room);
  }

  /** The watched rooms whose cursor is known, with it. */
  cursors(): Map<string, number> {
    const cursors = new Map<string, number>();
    for (const [roomId, room] of this.#rooms) {
      if (room.cursor >= 0) cursors.set(roomId, room.cursor);
    }
    return cursors;
  }

  /**
   * Delivers a live-only item (presence, typing) to the room's subscribers now, under the
   * room's cursor; nothing when the room is not watched here.
   */
  publish(roomId: string, value: T): void {
    const room = this.#rooms.get(roomId);
    if (!room || room.subscribers.size === 0) return;
    const item = this.wrap(Math.max(room.cursor, 0), value, true);
    for (const subscriber of room.subscribers) subscriber.deliver(item);
  }

  /** Drops a room's items in memory: replays read Postgres, where they are current. */
  forgetRoom(roomId: string): void {
    const room = this.#rooms.get(roomId);
    if (room) room.recent = [];
  }

  /** Drops the items in memory of every room that holds one matching `test` (read again). */
  forget(test: (value: T) => boolean): void {
    for (const room of this.#rooms.values()) {
      if (room.recent.some((item) => test(item.value))) room.recent = [];
    }
  }

  /** Watched rooms and their subscribers. */
  stats(): { rooms: number; listeners: number } {
    let listeners = 0;
    for (const room of this.#rooms.values()) listeners += room.subscribers.size;
    return { rooms: this.#rooms.size, listeners };
  }

  #dispatch(room: WatchedRoom<T>, item: FanoutItem<T>): void {
    if (item.id !== room.cursor + 1) return;
    room.cursor = item.id;
    room.recent.push(item);
    if (room.recent.length > RECENT_PER_ROOM * 2) room.recent = room.recent.slice(-RECENT_PER_ROOM);
    for (const subscriber of room.subscribers) subscriber.deliver(item);
    // Measured at its first frame in this fan-out only, not at a later replay.
    item.committedAt = 0;
  }

  #catchUp(roomId: string, room: WatchedRoom<T>): void {
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
        const batch = await this.#options.read(roomId, room.cursor, CATCH_UP_BATCH);
        for (const { id, value } of batch) this.#dispatch(room, this.wrap(id, value));
        if (batch.length === CATCH_UP_BATCH) room.dirty = true;
      } while (room.dirty && this.#rooms.get(roomId) === room);
    })().catch((error) => {
      this.#options.log.error(
        `Cannot catch up the ${this.#options.name} of room ${roomId}: retrying in 1s`,
        error,
      );
      this.#options.later(
        1000,
        () => this.#rooms.get(roomId) === room && this.#catchUp(roomId, room),
      );
    }).finally(() => {
      room.fetching = null;
    });
  }
}
