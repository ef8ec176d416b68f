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
