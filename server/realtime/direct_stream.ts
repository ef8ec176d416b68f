/**
 * The fast path of fan-out, as the connection server and room streams see it: a subscription
 * result that writes its own frames, and how such a frame is built. No Deno API here: these
 * types reach the client package through `AppRouter`.
 */
/**
 * A subscription result that writes its own data frames (the fast path of fan-out). The
 * connection server calls `attach` once "started" is sent, and `stop` when the client stops
 * the subscription or the connection closes.
 */
export interface DirectStream {
  readonly [DIRECT_STREAM]: true;
  /** Starts writing data frames to `sink`. */
  attach(sink: StreamSink): void;
  /** Ends the stream and releases what it holds; idempotent. */
  stop(): void;
}

/** The brand of a `DirectStream`. */
export const DIRECT_STREAM: unique symbol = Symbol("parley.directStream");

/** Where a `DirectStream` writes. */
export interface StreamSink {
  /**
   * How every frame of this subscription starts: `{"id":<request id>`, plus
   * `,"jsonrpc":"2.0"` when the request carried it. A data frame is this prefix followed by
   * `dataFrameSuffix(...)`.
   */
  readonly framePrefix: string;
  /** Writes one whole text frame; false once the connection is closing. */
  write(frame: string): boolean;
  /** Ends the subscription with `error`, which the client gets as the call's error. */
  fail(error: unknown): void;
}

/**
 * The part of a subscription's data frame after the request id, for a `tracked(id, data)`
 * item: `,"result":{"type":"data","id":<id>,"data":<serialized { id, data }>}}`, which is what
 * tRPC's adapter sends for it (`transformTRPCResponse`). `serialize` is the router's output
 * transformer. Built once per message, it is shared by every subscriber of a room.
 */
export function dataFrameSuffix(
  serialize: (value: unknown) => unknown,
  id: string,
  data: unknown,
): string {
  const idJson = JSON.stringify(id);
  return `,"result":{"type":"data","id":${idJson},"data":${
    JSON.stringify(serialize({ id, data }))
  }}}`;
}

/** A member in a presence or typing list, as `liveListSuffix` writes it. */
interface ListedMember {
  roomId: string;
  userId: string;
  username: string;
  avatarUrl: string | null;
  joinedAt: Date;
}

/**
 * `dataFrameSuffix` of a `presence.changed` or `typing.changed` event, written directly: the
 * same text superjson and `JSON.stringify` give (tests/live_frames_test.ts compares them), in
 * about a third of the time, for the events whose size grows with the room (every member,
 * each with a Date that superjson notes in its `meta`).
 */
export function liveListSuffix(
  id: string,
  type: "presence.changed" | "typing.changed",
  field: "online" | "typing",
  members: readonly ListedMember[],
): string {
  const idJson = JSON.stringify(id);
  let list = "";
  let dates = "";
  for (let i = 0; i < members.length; i++) {
    const { roomId, userId, username, avatarUrl, joinedAt } = members[i];
    if (i > 0) {
      list += ",";
      dates += ",";
    }
    // Ids are UUIDs (no character JSON escapes); names and URLs go through JSON.stringify.
    list += `{"roomId":"${roomId}","userId":"${userId}","username":${JSON.stringify(username)},` +
      `"avatarUrl":${avatarUrl === null ? "null" : JSON.stringify(avatarUrl)},` +
      `"joinedAt":"${joinedAt.toISOString()}"}`;
    dates += `"data.${field}.${i}.joinedAt":["Date"]`;
  }
  const meta = members.length > 0 ? `,"meta":{"values":{${dates}},"v":1}` : "";
  const serialized =
    `{"json":{"id":${idJson},"data":{"type":"${type}","${field}":[${list}]}}${meta}}`;
  return `,"result":{"type":"data","id":${idJson},"data":${serialized}}}`;
}
