/**
 * A room stream: one subscriber's view of a room log (messages, or events: `room_log.ts`),
 * from a resume point on. It replays what the subscriber missed (from the log's memory, else
 * from Postgres), then hands over to live delivery, each item once and in order, under a
 * replay cap and the resync rule. Live-only items (presence, typing) pass through as they come,
 * under the id of the last item the subscriber has, so a resume after them misses nothing.
 *
 * Over parley's connection server it is a `DirectStream`: live items are written to the
 * socket by the hub's delivery itself, as frames built once per room (`FanoutItem.frame`).
 * Anywhere else (tRPC's own adapters, `createCaller`) it is an async iterable of
 * `tracked(id, item)`, with the same guarantees.
 */
import { tracked, type TrackedEnvelope } from "@trpc/server";
import { resyncRequired } from "../errors.ts";
import { DIRECT_STREAM, type DirectStream, type StreamSink } from "./direct_stream.ts";
import { Inbox } from "./inbox.ts";
import type { FanoutItem, LogSubscriber, RoomLog } from "./room_log.ts";

/** Most items a reconnecting subscriber may replay; beyond it the client must reload. */
export const MAX_REPLAY = 1000;

/** Most live messages queued for one subscriber while it replays, before it must resync. */
const MAX_QUEUED = 10_000;

/** Items read from Postgres per round trip of a replay. */
const REPLAY_BATCH = 200;

/**
 * The resume point of a subscriber: the last id it has (a seq, or an event id), checked
 * against the room's last one. Without `lastEventId` it starts after the last item.
 * @throws `PRECONDITION_FAILED` (`resyncRequired`) when `lastEventId` is not an id of this room, or more
 * than `MAX_REPLAY` items were missed.
 */
export function resumePoint(
  lastEventId: string | null | undefined,
  lastId: number,
  what: "messages" | "events" = "messages",
): number {
  if (lastEventId === undefined || lastEventId === null) return lastId;
  const from = /^\d{1,15}$/.test(lastEventId) ? Number(lastEventId) : NaN;
  if (!(from <= lastId)) {
    const name = what === "messages" ? "a seq" : "an event id";
    throw resyncRequired(`lastEventId "${lastEventId.slice(0, 40)}" is not ${name} of this room`);
  }
  if (lastId - from > MAX_REPLAY) {
    throw resyncRequired(`${lastId - from} ${what} were missed (replay limit ${MAX_REPLAY})`);
  }
  return from;
}

/** How a stream is being consumed. */
type Consumer<T> =
  | { kind: "none" }
  | { kind: "direct"; sink: StreamSink }
  | { kind: "iterator"; inbox: Inbox<[number, T]>; stopped: AbortController };

/** Options of a `RoomStream`. */
export interface RoomStreamOptions<T> {
  log: RoomLog<T>;
  roomId: string;
  /** Runs once when the stream ends, however it ends. */
  onStop: () => void;
  /**
   * The live items that describe the room now (presence, typing): sent once the replay is
   * done, in place of any live item that came during it.
   */
  snapshot?: () => T[];
  /**
   * Whether a live item goes out to this subscriber; one that repeats what it already has
   * (a coalesced presence change its snapshot already showed) is dropped. Default: all.
   */
  admit?: (value: T) => boolean;
}

/** One subscriber's stream of a room's messages or events. */
export class RoomStream<T>
  implements DirectStream, LogSubscriber<T>, AsyncIterable<TrackedEnvelope<T>> {
  readonly [DIRECT_STREAM] = true as const;
  readonly #log: RoomLog<T>;
  readonly #roomId: string;
  readonly #onStop: () => void;
  readonly #snapshot: (() => T[]) | undefined;
  readonly #admit: ((value: T) => boolean) | undefined;
  #unsubscribe: () => void;
  /** The last id this subscriber has (or skips). */
  #last = 0;
  /** Live items that arrived while replaying, in order. */
  #queued: FanoutItem<T>[] | null = [];
  #consumer: Consumer<T> = { kind: "none" };
  #failure: unknown = null;
  #stopped = false;

  /**
   * Registers with the log at once, so nothing committed from now on is missed; the caller
   * then checks access, reads the room's last id and calls `resumeAfter`.
   */
  constructor(options: RoomStreamOptions<T>) {
    this.#log = options.log;
    this.#roomId = options.roomId;
    this.#onStop = options.onStop;
    this.#snapshot = options.snapshot;
    this.#admit = options.admit;
    this.#unsubscribe = options.log.subscribe(options.roomId, this);
  }

  /**
   * Sets where the subscriber resumes: it gets every item after `from`. `lastId` is the
   * room's last id read after the stream registered (it starts the log's cursor for a room
   * nobody watched yet).
   */
  resumeAfter(from: number, lastId: number): void {
    this.#log.setCursor(this.#roomId, lastId);
    this.#last = from;
  }

  /** Ends the stream with `error` (access revoked, fell behind): the client gets it. */
  fail(error: unknown): void {
    if (this.#stopped || this.#failure !== null) return;
    this.#failure = error;
    const consumer = this.#consumer;
    if (consumer.kind === "direct") consumer.sink.fail(error);
    else if (consumer.kind === "iterator") consumer.inbox.fail(error);
    this.stop();
  }

  /** See `DirectStream.stop`. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#queued = null;
    if (this.#consumer.kind === "iterator") this.#consumer.stopped.abort();
    this.#unsubscribe();
    this.#onStop();
  }

  /** See `LogSubscriber.deliver`: a live item of the room. */
  deliver(item: FanoutItem<T>): void {
    if (this.#stopped) return;
    if (this.#queued !== null) {
      if (this.#queued.length >= MAX_QUEUED) {
        this.fail(resyncRequired("this subscriber fell too far behind"));
        return;
      }
      this.#queued.push(item);
      return;
    }
    this.#emit(item);
  }

  /** See `DirectStream.attach`: replays, then writes live frames straight to `sink`. */
  attach(sink: StreamSink): void {
    if (this.#failure !== null) return sink.fail(this.#failure);
    this.#consumer = { kind: "direct", sink };
    this.#replay();
  }

  /**
   * The stream as `tracked(id, item)` items, for consumers other than the connection server.
   * `return()` stops the stream even when it was never read.
   */
  [Symbol.asyncIterator](): AsyncIterator<TrackedEnvelope<T>> {
    const items = this.#items();
    return {
      next: () => items.next(),
      return: (value?: unknown) => {
        this.stop();
        return items.return(value as undefined);
      },
    };
  }

  async *#items(): AsyncGenerator<TrackedEnvelope<T>> {
    const inbox = new Inbox<[number, T]>(
      MAX_QUEUED,
      () => resyncRequired("this subscriber fell too far behind"),
    );
    if (this.#failure !== null) throw this.#failure;
    const stopped = new AbortController();
    this.#consumer = { kind: "iterator", inbox, stopped };
    this.#replay();
    try {
      for await (const [id, value] of inbox.take(stopped.signal)) {
        yield tracked(String(id), value);
      }
    } finally {
      stopped.abort();
      this.stop();
    }
  }

  /**
   * Writes one item to the consumer, unless the subscriber already has it. A live item goes
   * out under the last id the subscriber has.
   */
  #emit(item: FanoutItem<T>): void {
    if (!item.live) {
      if (item.id <= this.#last) return;
      this.#last = item.id;
    } else if (this.#admit && !this.#admit(item.value)) return;
    const consumer = this.#consumer;
    if (consumer.kind === "direct") {
      if (!consumer.sink.write(item.frame(consumer.sink.framePrefix, this.#last))) return;
    } else if (consumer.kind === "iterator") consumer.inbox.push([this.#last, item.value]);
    else return;
    // Plain numbers: the metrics read them when scraped.
    const counts = this.#log.counts;
    counts.deliveries++;
    if (item.committedAt !== 0) {
      counts.firstFrame?.((performance.now() - item.committedAt) / 1000);
      item.committedAt = 0;
    }
  }

  /** Replays up to the log's cursor, then the queued live items, then goes live. */
  #replay(): void {
    const recent = this.#log.recent(this.#roomId, this.#last);
    if (recent !== null) {
      // The usual case (a new subscriber, a short absence): all in memory, no await.
      if (recent.length > 0) this.#log.counts.replaysFromMemory++;
      for (const item of recent) this.#emit(item);
      this.#goLive();
      return;
    }
    this.#log.counts.replaysFromDatabase++;
    this.#replayFromDatabase().then(() => this.#goLive(), (error) => this.fail(error));
  }

  async #replayFromDatabase(): Promise<void> {
    while (!this.#stopped) {
      const recent = this.#log.recent(this.#roomId, this.#last);
      if (recent !== null) {
        for (const item of recent) this.#emit(item);
        return;
      }
      const batch = await this.#log.read(this.#roomId, this.#last, REPLAY_BATCH);
      if (this.#stopped) return;
      for (const item of batch) this.#emit(item);
      // The log's memory holds at least what it delivered since it started watching; short of
      // that (the room is not watched any more, or stopped), the queue covers the rest.
      if (batch.length < REPLAY_BATCH) return;
    }
  }

  #goLive(): void {
    const queued = this.#queued;
    if (queued === null) return;
    this.#queued = null;
    const snapshot = this.#snapshot;
    for (const item of queued) if (!(snapshot && item.live)) this.#emit(item);
    for (const value of snapshot?.() ?? []) this.#emit(this.#log.wrap(this.#last, value, true));
  }
}
