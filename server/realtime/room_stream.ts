/**
 * A room stream: one subscriber's view of a room, from a resume point on. It replays what the
 * subscriber missed (from the hub's memory, else from Postgres), then hands over to live
 * delivery, each message once and in order, under a replay cap and the resync rule.
 *
 * Over parley's connection server it is a `DirectStream`: live messages are written to the
 * socket by the hub's delivery itself, as frames built once per room (`FanoutMessage.frame`).
 * Anywhere else (tRPC's own adapters, `createCaller`) it is an async iterable of
 * `tracked(seq, message)`, with the same guarantees.
 */
import { tracked, type TrackedEnvelope } from "@trpc/server";
import { listMessages, type Message } from "../../db/messages.ts";
import type { Sql } from "../../db/mod.ts";
import { resyncRequired } from "../errors.ts";
import { DIRECT_STREAM, type DirectStream, type StreamSink } from "./direct_stream.ts";
import type { FanoutMessage, Hub, RoomSubscriber } from "./hub.ts";
import { Inbox } from "./inbox.ts";

/** Most messages a reconnecting subscriber may replay; beyond it the client must reload. */
export const MAX_REPLAY = 1000;

/** Most live messages queued for one subscriber while it replays, before it must resync. */
const MAX_QUEUED = 10_000;

/** Messages read from Postgres per round trip of a replay. */
const REPLAY_BATCH = 200;

/**
 * The resume point of a subscriber: the last seq it has, checked against the room's last
 * seq. Without `lastEventId` it starts after the last message.
 * @throws `CONFLICT` (`resyncRequired`) when `lastEventId` is not a seq of this room, or more
 * than `MAX_REPLAY` messages were missed.
 */
export function resumePoint(lastEventId: string | null | undefined, lastSeq: number): number {
  if (lastEventId === undefined || lastEventId === null) return lastSeq;
  const from = /^\d{1,15}$/.test(lastEventId) ? Number(lastEventId) : NaN;
  if (!(from <= lastSeq)) {
    throw resyncRequired(`lastEventId "${lastEventId.slice(0, 40)}" is not a seq of this room`);
  }
  if (lastSeq - from > MAX_REPLAY) {
    throw resyncRequired(`${lastSeq - from} messages were missed (replay limit ${MAX_REPLAY})`);
  }
  return from;
}

/** How a stream is being consumed. */
type Consumer =
  | { kind: "none" }
  | { kind: "direct"; sink: StreamSink }
  | { kind: "iterator"; inbox: Inbox<FanoutMessage>; stopped: AbortController };

/** One subscriber's stream of a room's messages. */
export class RoomStream
  implements DirectStream, RoomSubscriber, AsyncIterable<TrackedEnvelope<Message>> {
  readonly [DIRECT_STREAM] = true as const;
  readonly #hub: Hub;
  readonly #sql: Sql;
  readonly #roomId: string;
  readonly #onStop: () => void;
  #unsubscribe: () => void;
  /** The last seq this subscriber has (or skips). */
  #last = 0;
  /** Live messages that arrived while replaying, in order. */
  #queued: FanoutMessage[] | null = [];
  #consumer: Consumer = { kind: "none" };
  #failure: unknown = null;
  #stopped = false;

  /**
   * Registers with the hub at once, so nothing committed from now on is missed; the caller
   * then checks access, reads the room's last seq and calls `resumeAfter`. `onStop` runs once
   * when the stream ends, however it ends.
   */
  constructor(options: { hub: Hub; sql: Sql; roomId: string; onStop: () => void }) {
    this.#hub = options.hub;
    this.#sql = options.sql;
    this.#roomId = options.roomId;
    this.#onStop = options.onStop;
    this.#unsubscribe = options.hub.subscribe(options.roomId, this);
  }

  /**
   * Sets where the subscriber resumes: it gets every message after `from`. `lastSeq` is the
   * room's last seq read after the stream registered (it starts the hub's cursor for a room
   * nobody watched yet).
   */
  resumeAfter(from: number, lastSeq: number): void {
    this.#hub.setCursor(this.#roomId, lastSeq);
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

  /** See `RoomSubscriber.deliver`: a live message of the room. */
  deliver(item: FanoutMessage): void {
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
   * The stream as `tracked(seq, message)` items, for consumers other than the connection
   * server. `return()` stops the stream even when it was never read.
   */
  [Symbol.asyncIterator](): AsyncIterator<TrackedEnvelope<Message>> {
    const items = this.#items();
    return {
      next: () => items.next(),
      return: (value?: unknown) => {
        this.stop();
        return items.return(value as undefined);
      },
    };
  }

  async *#items(): AsyncGenerator<TrackedEnvelope<Message>> {
    const inbox = new Inbox<FanoutMessage>(
      MAX_QUEUED,
      () => resyncRequired("this subscriber fell too far behind"),
    );
    if (this.#failure !== null) throw this.#failure;
    const stopped = new AbortController();
    this.#consumer = { kind: "iterator", inbox, stopped };
    this.#replay();
    try {
      for await (const item of inbox.take(stopped.signal)) {
        yield tracked(String(item.seq), item.message);
      }
    } finally {
      stopped.abort();
      this.stop();
    }
  }

  /** Writes one message to the consumer, unless the subscriber already has it. */
  #emit(item: FanoutMessage): void {
    if (item.seq <= this.#last) return;
    this.#last = item.seq;
    const consumer = this.#consumer;
    if (consumer.kind === "direct") consumer.sink.write(item.frame(consumer.sink.framePrefix));
    else if (consumer.kind === "iterator") consumer.inbox.push(item);
  }

  /** Replays up to the hub's cursor, then the queued live messages, then goes live. */
  #replay(): void {
    const recent = this.#hub.recent(this.#roomId, this.#last);
    if (recent !== null) {
      // The usual case (a new subscriber, a short absence): all in memory, no await.
      for (const item of recent) this.#emit(item);
      this.#goLive();
      return;
    }
    this.#replayFromDatabase().then(() => this.#goLive(), (error) => this.fail(error));
  }

  async #replayFromDatabase(): Promise<void> {
    while (!this.#stopped) {
      const recent = this.#hub.recent(this.#roomId, this.#last);
      if (recent !== null) {
        for (const item of recent) this.#emit(item);
        return;
      }
      const batch = await listMessages(this.#sql, this.#roomId, {
        afterSeq: this.#last,
        limit: REPLAY_BATCH,
      });
      if (this.#stopped) return;
      for (const message of batch) this.#emit(this.#hub.wrap(message));
      // The hub's memory holds at least what it delivered since it started watching; short of
      // that (the room is not watched any more, or stopped), the queue covers the rest.
      if (batch.length < REPLAY_BATCH) return;
    }
  }

  #goLive(): void {
    const queued = this.#queued;
    if (queued === null) return;
    this.#queued = null;
    for (const item of queued) this.#emit(item);
  }
}
