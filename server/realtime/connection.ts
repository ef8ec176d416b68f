/**
 * The connection server: tRPC's WebSocket protocol on `Deno.upgradeWebSocket`, with parley's
 * limits, keep-alive, drain and reconnect notice.
 *
 * It speaks exactly what `@trpc/client`'s `wsLink` speaks (the JSON-RPC-like messages of
 * `@trpc/server/adapters/ws`: `connectionParams`, batches, `subscription.stop`, `PING`/`PONG`,
 * `{ id: null, method: "reconnect" }`), and runs every call through tRPC's own `callProcedure`,
 * so inputs are validated and middlewares run as they would under tRPC's adapter. What it adds
 * is the fast path of fan-out: a subscription whose result is a `DirectStream` writes its
 * data frames itself (one serialisation per room and message, see `room_stream.ts`) instead
 * of going through an async generator, a race and a serialisation per subscriber.
 */
import { type AnyTRPCRouter, TRPCError } from "@trpc/server";
import {
  callProcedure,
  getErrorShape,
  getTRPCErrorFromUnknown,
  isAsyncIterable,
  isTrackedEnvelope,
  parseConnectionParamsFromUnknown,
  parseTRPCMessage,
  transformTRPCResponse,
} from "@trpc/server/unstable-core-do-not-import";
import { MAX_FRAME_BYTES } from "../limits.ts";
import { DIRECT_STREAM, type DirectStream } from "./direct_stream.ts";

/** Limits applied to every connection. */
export interface SocketLimits {
  /** Largest incoming frame, in bytes; a larger one closes the socket with 1009. */
  maxFrameBytes: number;
  /** Most bytes queued for a slow reader; past it the socket closes with 1013. */
  maxBufferedBytes: number;
}

/** Default limits: 64 KiB frames, 1 MiB of unsent data. */
export const DEFAULT_LIMITS: SocketLimits = {
  maxFrameBytes: MAX_FRAME_BYTES,
  maxBufferedBytes: 1024 * 1024,
};

/**
 * Idle time before the server pings a client (`PING`), and how long it then waits for any
 * frame before it closes the socket, in milliseconds (tRPC's `keepAlive` option).
 */
export interface KeepAlive {
  pingMs: number;
  pongWaitMs: number;
}

/** The production keep-alive: a ping after 30 s of quiet, 5 s to answer. */
export const KEEP_ALIVE: KeepAlive = { pingMs: 30_000, pongWaitMs: 5_000 };

/** How long a closing socket waits for the peer's close frame before its work is released. */
const CLOSE_WAIT_MS = 3000;

/** What the connection server hands to context creation, once per connection. */
export interface ConnectionInfo {
  /** The upgrade request's `Origin` header (the only header kept past the upgrade). */
  headers: Headers;
  /** `connectionParams` the client sent as its first message, or null. */
  connectionParams: Record<string, string | undefined> | null;
  /** The client's address (see `client_address.ts`). */
  address: string;
  /** Aborts when the connection closes (or is released while closing). */
  closed: AbortSignal;
}

/** Options of a `ConnectionServer`. */
export interface ConnectionServerOptions<TContext> {
  router: AnyTRPCRouter;
  /** Builds the context of a connection; a throw refuses the connection (sent, then closed). */
  createContext(info: ConnectionInfo): Promise<TContext>;
  /** Reports a failed call (for the log). */
  onError(error: TRPCError, path: string | undefined): void;
  /** Most calls in one frame (tRPC's `maxBatchSize`). */
  maxBatchSize: number;
  keepAlive?: KeepAlive;
  limits?: SocketLimits;
}

type RequestId = number | string;

/** One call of a batch, as `parseTRPCMessage` returns it. */
type ParsedMessage = ReturnType<typeof parseTRPCMessage>;

/** A connection's running subscription: how to stop it. */
interface ActiveSubscription {
  stop(): void;
}

/** Serves tRPC over upgraded WebSockets. */
export class ConnectionServer<TContext> {
  /** Open (and opening) connections, until each is really closed. */
  readonly connections: Set<Connection<TContext>> = new Set();
  readonly options: ConnectionServerOptions<TContext>;
  readonly keepAlive: KeepAlive;
  readonly limits: SocketLimits;
  readonly #serialize: (value: unknown) => unknown;
  #sweeper: ReturnType<typeof setInterval> | undefined;

  constructor(options: ConnectionServerOptions<TContext>) {
    this.options = options;
    this.keepAlive = options.keepAlive ?? KEEP_ALIVE;
    this.limits = options.limits ?? DEFAULT_LIMITS;
    const transformer = options.router._def._config.transformer;
    this.#serialize = (value) => transformer.output.serialize(value);
  }

  /** The router's output serialisation (superjson), for frames built outside a call. */
  get serialize(): (value: unknown) => unknown {
    return this.#serialize;
  }

  /**
   * Upgrades `req` (its handshake already checked) and serves tRPC on it. Returns the
   * connection at once, so caps count it before it opens, and the 101 response.
   */
  accept(
    req: Request,
    info: { address: string; onClosed?: (connection: Connection<TContext>) => void },
  ): { connection: Connection<TContext>; response: Response } {
    // Read what is needed from the request first: after the upgrade its headers are gone.
    // Context creation over WebSocket reads only the Origin (the token is in connectionParams).
    const origin = req.headers.get("origin");
    const headers = new Headers(origin === null ? undefined : { origin });
    const awaitsParams = req.url.includes("connectionParams=") &&
      new URL(req.url).searchParams.get("connectionParams") === "1";
    const { socket, response } = Deno.upgradeWebSocket(req);
    const connection = new Connection(this, socket, {
      headers,
      awaitsParams,
      address: info.address,
      onClosed: info.onClosed,
    });
    this.connections.add(connection);
    this.#startSweeper();
    return { connection, response };
  }

  /** Tells every client to reconnect (tRPC's reconnect notification). */
  reconnectAll(): void {
    const notice = JSON.stringify({ id: null, method: "reconnect" });
    for (const connection of this.connections) connection.write(notice);
  }

  /** Closes every connection with `code` and stops the keep-alive sweep. */
  closeAll(code: number, reason: string): void {
    for (const connection of this.connections) connection.close(code, reason);
  }

  /** Called by a connection once it is really closed. */
  forget(connection: Connection<TContext>): void {
    this.connections.delete(connection);
    if (this.connections.size === 0) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
    }
  }

  /**
   * One timer for all connections instead of two per connection: every quarter of the
   * shorter keep-alive interval, ping the quiet ones and close those that did not answer.
   */
  #startSweeper(): void {
    if (this.#sweeper !== undefined) return;
    const { pingMs, pongWaitMs } = this.keepAlive;
    const every = Math.max(10, Math.min(pingMs, pongWaitMs, 4000) / 4);
    this.#sweeper = setInterval(() => {
      const now = performance.now();
      for (const connection of this.connections) connection.checkAlive(now);
    }, every);
  }
}

/** One WebSocket connection speaking tRPC's protocol. */
export class Connection<TContext> {
  readonly #server: ConnectionServer<TContext>;
  readonly #socket: WebSocket;
  readonly #onClosed: ((connection: Connection<TContext>) => void) | undefined;
  #headers: Headers | null;
  #address: string;
  /** The context, once created; null while connectionParams are awaited. */
  #context: Promise<{ ok: true; ctx: TContext } | { ok: false; error: TRPCError }> | null = null;
  #ctx: TContext | undefined;
  #subscriptions: Map<RequestId, ActiveSubscription> | null = null;
  #abort: AbortController | null = null;
  /** When the last frame arrived (performance.now()), or when the ping was sent. */
  #lastSeen = performance.now();
  #pinged = false;
  /** Frames written, to sample the send buffer (see `write`). */
  #writes = 0;
  #released = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  /** True when the peer went away without a closing handshake. */
  abrupt = false;

  constructor(
    server: ConnectionServer<TContext>,
    socket: WebSocket,
    options: {
      headers: Headers;
      awaitsParams: boolean;
      address: string;
      onClosed?: (connection: Connection<TContext>) => void;
    },
  ) {
    this.#server = server;
    this.#socket = socket;
    this.#headers = options.headers;
    this.#address = options.address;
    this.#onClosed = options.onClosed;
    socket.onopen = () => {
      if (!options.awaitsParams) this.#context = this.#createContext(() => null);
    };
    socket.onmessage = (event) => this.#onMessage(event.data);
    // Deno reports a peer that vanished without a close frame ("Unexpected EOF", a reset) as
    // an error event: a routine disconnect, remembered for the close log only.
    socket.onerror = () => {
      this.abrupt = true;
    };
    socket.onclose = () => {
      this.#release();
      this.#server.forget(this);
      this.#onClosed?.(this);
    };
  }

  /** The socket's state (0 connecting, 1 open, 2 closing, 3 closed). */
  get readyState(): number {
    return this.#socket.readyState;
  }

  /**
   * Sends a text frame; false when the socket is not open. A reader that fell more than
   * `maxBufferedBytes` behind (checked every 8th frame) is closed with 1013 instead (it resumes
   * after reconnecting).
   */
  write(frame: string): boolean {
    const socket = this.#socket;
    if (socket.readyState !== WebSocket.OPEN) return false;
    // bufferedAmount asks the runtime (an op call): every 8th frame is often enough to catch a
    // slow reader a few frames past the limit, and fan-out writes many frames.
    if (
      (++this.#writes & 7) === 0 &&
      socket.bufferedAmount > this.#server.limits.maxBufferedBytes
    ) {
      this.close(1013, "Reader too slow: reconnect and resume");
      return false;
    }
    socket.send(frame);
    return true;
  }

  /**
   * Starts the closing handshake. A peer that never answers it would hold the connection's
   * subscriptions forever, so they are released after `CLOSE_WAIT_MS` anyway; the connection
   * still counts against the caps until it is really gone.
   */
  close(code?: number, reason?: string): void {
    if (this.#socket.readyState >= WebSocket.CLOSING) return;
    try {
      this.#socket.close(code, reason);
    } catch {
      this.#socket.close();
    }
    this.#closeTimer = setTimeout(() => this.#release(), CLOSE_WAIT_MS);
  }

  /** Keep-alive: pings after `pingMs` of quiet, closes after `pongWaitMs` more. */
  checkAlive(now: number): void {
    if (this.#socket.readyState !== WebSocket.OPEN) return;
    const { pingMs, pongWaitMs } = this.#server.keepAlive;
    if (!this.#pinged) {
      if (now - this.#lastSeen >= pingMs) {
        this.#pinged = true;
        this.#lastSeen = now;
        this.#socket.send("PING");
      }
    } else if (now - this.#lastSeen >= pongWaitMs) {
      this.close(1001, "Connection timed out");
    }
  }

  /** Stops every subscription and cancels running calls; idempotent. */
  #release(): void {
    clearTimeout(this.#closeTimer);
    if (this.#released) return;
    this.#released = true;
    this.#abort?.abort();
    if (this.#subscriptions) {
      for (const subscription of this.#subscriptions.values()) subscription.stop();
      this.#subscriptions.clear();
    }
  }

  /** Aborts when the connection's work is released (closed, or closing past the wait). */
  get #signal(): AbortSignal {
    this.#abort ??= new AbortController();
    if (this.#released) this.#abort.abort();
    return this.#abort.signal;
  }

  #createContext(
    readParams: () => Record<string, string | undefined> | null,
  ): Promise<{ ok: true; ctx: TContext } | { ok: false; error: TRPCError }> {
    const headers = this.#headers!;
    this.#headers = null; // not kept for the connection's lifetime
    // Inside the promise: malformed connectionParams refuse the connection like any failure.
    return Promise.resolve().then(() =>
      this.#server.options.createContext({
        headers,
        connectionParams: readParams(),
        address: this.#address,
        closed: this.#signal,
      })
    ).then((ctx) => {
      this.#ctx = ctx;
      return { ok: true as const, ctx };
    }, (cause) => {
      const error = getTRPCErrorFromUnknown(cause);
      this.#respondError(null, undefined, error, "unknown", undefined, undefined);
      setTimeout(() => this.close(), 0);
      return { ok: false as const, error };
    });
  }

  #onMessage(data: unknown): void {
    if (typeof data !== "string") {
      this.close(1003, "Binary frames are not supported");
      return;
    }
    const { maxFrameBytes } = this.#server.limits;
    if (data.length * 3 > maxFrameBytes && utf8Length(data) > maxFrameBytes) {
      this.close(1009, `Frame exceeds ${maxFrameBytes} bytes`);
      return;
    }
    this.#lastSeen = performance.now();
    this.#pinged = false;
    if (data === "PONG") return;
    if (data === "PING") {
      this.write("PONG");
      return;
    }
    if (this.#context === null) {
      this.#context = this.#createContext(() => this.#readConnectionParams(data));
      return;
    }
    let parsed: ParsedMessage[];
    try {
      const json: unknown = JSON.parse(data);
      const items = Array.isArray(json) ? json : [json];
      if (Array.isArray(json) && items.length > this.#server.options.maxBatchSize) {
        this.#refuseBatch(items);
        return;
      }
      const transformer = this.#server.options.router._def._config.transformer;
      parsed = items.map((raw) => parseTRPCMessage(raw, transformer));
    } catch (cause) {
      const error = new TRPCError({ code: "PARSE_ERROR", cause });
      this.#respondError(null, undefined, error, "unknown", undefined, undefined);
      return;
    }
    for (let index = 0; index < parsed.length; index++) {
      this.#handle(parsed[index], index).catch((cause) => {
        this.#server.options.onError(getTRPCErrorFromUnknown(cause), undefined);
      });
    }
  }

  /** The `data` of a `{ method: "connectionParams", data }` message, or null. */
  #readConnectionParams(data: string): Record<string, string | undefined> | null {
    try {
      const message: unknown = JSON.parse(data);
      if (typeof message !== "object" || message === null) throw new Error("not an object");
      return parseConnectionParamsFromUnknown((message as { data?: unknown }).data);
    } catch (cause) {
      // Context creation then refuses the connection with this error.
      throw new TRPCError({
        code: "PARSE_ERROR",
        message: "Malformed TRPCConnectionParamsMessage",
        cause,
      });
    }
  }

  #refuseBatch(items: unknown[]): void {
    const error = new TRPCError({
      code: "BAD_REQUEST",
      message: "Batch call exceeds maximum size",
    });
    let answered = false;
    for (const raw of items) {
      if (typeof raw !== "object" || raw === null) continue;
      const { id, jsonrpc, method } = raw as Record<string, unknown>;
      if (method === "subscription.stop") continue;
      if (typeof id !== "number" && typeof id !== "string") continue;
      this.#respondError(id, jsonrpc === "2.0" ? "2.0" : undefined, error, "unknown");
      answered = true;
    }
    if (!answered) this.#respondError(null, undefined, error, "unknown");
  }

  async #handle(message: ParsedMessage, batchIndex: number): Promise<void> {
    const { id, jsonrpc } = message;
    if (id === null) {
      const error = new TRPCError({ code: "PARSE_ERROR", message: "`id` is required" });
      this.#respondError(null, jsonrpc, error, "unknown");
      return;
    }
    if (message.method === "subscription.stop") {
      const subscription = this.#subscriptions?.get(id);
      if (subscription) {
        subscription.stop();
        this.#respond({ id, jsonrpc, result: { type: "stopped" } });
      }
      return;
    }
    const { path, lastEventId } = message.params;
    let input = message.params.input;
    const type = message.method;
    // As tRPC's adapter does: a resuming client's lastEventId becomes part of the input.
    if (lastEventId !== undefined) {
      if (typeof input === "object" && input !== null && !Array.isArray(input)) {
        input = { ...input, lastEventId };
      } else input ??= { lastEventId };
    }
    if (type === "subscription") {
      this.#subscriptions ??= new Map();
      if (this.#subscriptions.has(id)) {
        const error = new TRPCError({ code: "BAD_REQUEST", message: `Duplicate id ${id}` });
        this.#respondError(id, jsonrpc, error, type, path, input);
        return;
      }
      await this.#subscribe(id, jsonrpc, path, input, batchIndex);
      return;
    }
    const context = await this.#context!;
    // As tRPC's adapter does: every call of a refused connection gets the refusal.
    if (!context.ok) return this.#respondError(id, jsonrpc, context.error, type, path, input);
    try {
      const data = await callProcedure({
        router: this.#server.options.router,
        path,
        getRawInput: () => Promise.resolve(input),
        ctx: context.ctx,
        type,
        signal: this.#signal,
        batchIndex,
      });
      if (isAsyncIterable(data)) {
        throw new TRPCError({
          code: "UNSUPPORTED_MEDIA_TYPE",
          message: `Cannot return an async iterable from a ${type} procedure`,
        });
      }
      this.#respond({ id, jsonrpc, result: { type: "data", data } });
    } catch (cause) {
      this.#respondError(id, jsonrpc, getTRPCErrorFromUnknown(cause), type, path, input);
    }
  }

  async #subscribe(
    id: RequestId,
    jsonrpc: "2.0" | undefined,
    path: string,
    input: unknown,
    batchIndex: number,
  ): Promise<void> {
    const subscriptions = this.#subscriptions!;
    const abort = new AbortController();
    let stream: DirectStream | AsyncIterable<unknown> | null = null;
    let stopped = false;
    const stop = () => {
      if (stopped) return;
      stopped = true;
      subscriptions.delete(id);
      abort.abort();
      if (stream && DIRECT_STREAM in stream) stream.stop();
    };
    // Registered before setup, so a stop or a close during setup reaches it.
    subscriptions.set(id, { stop });
    const context = await this.#context!;
    if (!context.ok) {
      stop();
      return this.#respondError(id, jsonrpc, context.error, "subscription", path, input);
    }
    if (stopped) return stop();
    let result: unknown;
    try {
      result = await callProcedure({
        router: this.#server.options.router,
        path,
        getRawInput: () => Promise.resolve(input),
        ctx: context.ctx,
        type: "subscription",
        signal: abort.signal,
        batchIndex,
      });
    } catch (cause) {
      const wasStopped = stopped;
      stop();
      // A setup that gave up because the client went away is not an error to report.
      if (!wasStopped) {
        this.#respondError(
          id,
          jsonrpc,
          getTRPCErrorFromUnknown(cause),
          "subscription",
          path,
          input,
        );
      }
      return;
    }
    if (isDirect(result)) {
      stream = result;
      if (stopped || this.#socket.readyState !== WebSocket.OPEN) return void result.stop();
      this.#respond({ id, jsonrpc, result: { type: "started" } });
      const framePrefix = jsonrpc === undefined
        ? `{"id":${JSON.stringify(id)}`
        : `{"id":${JSON.stringify(id)},"jsonrpc":"2.0"`;
      result.attach({
        framePrefix,
        write: (frame) => !stopped && this.write(frame),
        fail: (cause) => {
          if (stopped) return;
          stop();
          const error = getTRPCErrorFromUnknown(cause);
          this.#respondError(id, jsonrpc, error, "subscription", path, input);
        },
      });
      return;
    }
    if (!isAsyncIterable(result)) {
      stop();
      const error = new TRPCError({
        code: "INTERNAL_SERVER_ERROR",
        message: `Subscription ${path} did not return an AsyncGenerator`,
      });
      this.#respondError(id, jsonrpc, error, "subscription", path, input);
      return;
    }
    // The general path, for subscriptions that are plain async generators: each step races
    // the stop, since return() on a generator waits for a pending next().
    stream = result;
    const iterator = result[Symbol.asyncIterator]();
    const stopping = new Promise<"stopped">((resolve) => {
      abort.signal.addEventListener("abort", () => {
        resolve("stopped");
        iterator.return?.().catch(() => {});
      }, { once: true });
    });
    if (stopped || this.#socket.readyState !== WebSocket.OPEN) {
      // Stopped during setup: the listener above came too late to end the iterable.
      stop();
      iterator.return?.().catch(() => {});
      return;
    }
    this.#respond({ id, jsonrpc, result: { type: "started" } });
    try {
      while (true) {
        const next = await Promise.race([iterator.next(), stopping]);
        if (next === "stopped") return;
        if (next.done) break;
        const value = next.value;
        this.#respond({
          id,
          jsonrpc,
          result: isTrackedEnvelope(value)
            ? { type: "data", id: value[0], data: { id: value[0], data: value[1] } }
            : { type: "data", data: value },
        });
      }
    } catch (cause) {
      if (stopped) return;
      stop();
      this.#respondError(id, jsonrpc, getTRPCErrorFromUnknown(cause), "subscription", path, input);
      return;
    }
    stop();
    this.#respond({ id, jsonrpc, result: { type: "stopped" } });
  }

  #respond(message: Record<string, unknown>): void {
    if (this.#socket.readyState !== WebSocket.OPEN) return;
    const config = this.#server.options.router._def._config;
    // deno-lint-ignore no-explicit-any -- tRPC's response union; the shape is built above
    this.write(JSON.stringify(transformTRPCResponse(config, message as any)));
  }

  #respondError(
    id: RequestId | null,
    jsonrpc: "2.0" | undefined,
    error: TRPCError,
    type: "query" | "mutation" | "subscription" | "unknown",
    path?: string,
    input?: unknown,
  ): void {
    this.#server.options.onError(error, path);
    let shape: unknown;
    try {
      shape = getErrorShape({
        config: this.#server.options.router._def._config,
        error,
        type,
        path,
        input,
        ctx: this.#ctx,
      });
    } catch {
      shape = {
        code: -32603,
        message: "Internal server error",
        data: { code: "INTERNAL_SERVER_ERROR", httpStatus: 500 },
      };
    }
    this.#respond({ id, jsonrpc, error: shape });
  }
}

function isDirect(value: unknown): value is DirectStream {
  return typeof value === "object" && value !== null && DIRECT_STREAM in value;
}

/** The UTF-8 length of `text` in bytes (lone surrogates count 3, as their U+FFFD would). */
function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}
