/**
 * The WebSocket side of the client: tRPC's wsClient (created on the first subscription,
 * lazy, token in connectionParams) over sockets that remember the token they announced.
 *
 * The server fixes a socket's identity when it connects and re-checks that token on every
 * call, so the client must never send a call over a socket opened with another token:
 *
 * - before each operation the link reads the token; a change closes every socket that
 *   announced another one, and tRPC treats that like a lost connection: it opens a new
 *   socket (connectionParams read again) and resubscribes there with each subscription's
 *   lastEventId, now as the new identity;
 * - as a last check, a socket refuses to send calls when the token read last differs from
 *   the one it announced, and closes instead (same recovery).
 *
 * tRPC sends every call queued in one tick in one frame (a JSON array), and every pending
 * subscription in one frame when it reconnects. Sockets here cut such frames to the
 * server's limits: at most `MAX_BATCH_SIZE` calls and `MAX_FRAME_BYTES` bytes per frame.
 *
 * Reconnecting: tRPC reconnects when a socket reports `close`, after `retryDelayMs(attempt)`.
 * The wait is made here (tRPC is told 0) so that `reconnect()` can end it, and a socket the
 * client closes reports `close` within `CLOSE_WAIT_MS` even when the peer is gone (at once
 * for `reconnect()`), instead of when the runtime gives up on the closing handshake.
 */
import { createWSClient, TRPCClientError, type TRPCLink, wsLink } from "@trpc/client";
import { observable } from "@trpc/server/observable";
import superjson from "superjson";
import type { AppRouter } from "../server/router.ts";
import { MAX_BATCH_SIZE, MAX_FRAME_BYTES } from "../server/limits.ts";
import type { Identity } from "./identity.ts";
import { utf8Length } from "./_utf8.ts";

/** Close code of a socket closed because the token changed (4000-4999: application codes). */
export const TOKEN_CHANGED_CLOSE_CODE = 4000;

/** Close code of a socket closed by `reconnect()`. */
export const RECONNECT_CLOSE_CODE = 4001;

/**
 * How long, in ms, a socket the client closes may take to report it (the server's close frame)
 * before it is reported closed anyway. A dead connection (a sleeping laptop, a changed
 * network, a NAT that dropped it) never answers, and runtimes then wait for TCP (Deno, Node)
 * or 20 to 60 s (browsers) before the `close` event, which is all tRPC reconnects on.
 */
export const CLOSE_WAIT_MS = 1_000;

/** How long an idle socket stays open after its last subscription ends, in ms (default). */
export const IDLE_CLOSE_MS = 5_000;

/** The longest wait between two attempts to open a socket with the default backoff, in ms. */
export const MAX_RETRY_DELAY_MS = 2_000;

/**
 * The default wait, in ms, before attempt `attempt` to open a new socket after one was lost:
 * 0 (at once) for the first, then about 0.5 s, 1 s, and about 2 s from then on (each wait is
 * 50 to 100 % of that, so clients cut off together do not all come back at the same moment).
 */
export function defaultRetryDelayMs(attempt: number): number {
  if (!(attempt > 0)) return 0;
  const ceiling = Math.min(MAX_RETRY_DELAY_MS, 250 * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling * (0.5 + Math.random() / 2));
}

/** tRPC's keep-alive: ping after `intervalMs` of quiet, close without a pong in `pongTimeoutMs`. */
export interface KeepAliveOptions {
  /** Whether the client pings at all. */
  enabled: boolean;
  /** Quiet time, in ms, before a ping (default 5000). */
  intervalMs?: number;
  /** How long, in ms, to wait for the pong before closing the socket (default 1000). */
  pongTimeoutMs?: number;
}

/** Options of `createSocketTransport`. */
export interface SocketTransportOptions {
  /** The server's WebSocket endpoint, e.g. `wss://parley.example.com/trpc`. */
  url: string;
  /** Whose token connects and is compared before every operation. */
  identity: Identity;
  /** A WebSocket implementation (default: the global one, looked up on first use). */
  WebSocket?: typeof WebSocket;
  /** The wait before each attempt to open a socket after one was lost (`defaultRetryDelayMs`). */
  retryDelayMs?: (attempt: number) => number;
  /** How long an idle socket stays open after its last subscription ends (`IDLE_CLOSE_MS`). */
  idleCloseMs?: number;
  /** tRPC's client-side keep-alive (default: off). */
  keepAlive?: KeepAliveOptions;
}

/** The subscription transport of a parley client. */
export interface SocketTransport {
  /** The terminating link for subscriptions. */
  link: TRPCLink<AppRouter>;
  /** Closes every socket that announced a token other than the identity's current one. */
  closeStale(): void;
  /**
   * Closes every open or opening socket and ends any wait between attempts: the next
   * attempt starts at once, and subscriptions resume on it.
   */
  reconnect(): void;
  /** Closes the connection; open subscriptions complete. */
  close(): Promise<void>;
}

type Client = ReturnType<typeof createWSClient>;

/** A WebSocket that remembers the token it announced and sends frames within the limits. */
export interface GuardedSocket extends WebSocket {
  /** The token sent in connectionParams: null for none, undefined until sent. */
  announced: string | null | undefined;
  /** Closes the socket and reports it closed at once, without waiting for the peer. */
  abandon(code: number, reason: string): void;
}

/** Creates the subscription transport; nothing opens before the first subscription. */
export function createSocketTransport(options: SocketTransportOptions): SocketTransport {
  const { identity } = options;
  const retryDelayMs = options.retryDelayMs ?? defaultRetryDelayMs;
  const idleCloseMs = options.idleCloseMs ?? IDLE_CLOSE_MS;
  if (!(idleCloseMs >= 0 && idleCloseMs <= 2 ** 31 - 1)) {
    throw new RangeError(`idleCloseMs must be 0..${2 ** 31 - 1}, not ${idleCloseMs}`);
  }
  const sockets = new Set<GuardedSocket>();
  let client: Client | null = null;
  let operationLink: ReturnType<TRPCLink<AppRouter>> | null = null;
  // tRPC waits `retryDelayMs(attempt)` with a sleep nothing can cut short. So it is told 0,
  // and the wait happens here, in the `url` callback tRPC awaits before each socket:
  // `reconnect()` can end it early.
  /** The wait the next `url` call makes: set by tRPC's call of `retryDelayMs`. */
  let nextWait = 0;
  /** Set by `reconnect()` when it closed sockets: the attempt that follows does not wait. */
  let skipWait = false;
  /** Ends the wait in progress, if any. */
  let wake: (() => void) | null = null;
  /**
   * True from `close()` to the next operation: tRPC's reconnect loop is ending, and a wait it
   * interrupted opens nothing.
   */
  let closed = false;

  /** `retryDelayMs(attempt)`; if it throws, the default (and the error is reported). */
  function delayOf(attempt: number): number {
    try {
      return retryDelayMs(attempt);
    } catch (error) {
      setTimeout(() => {
        throw error;
      });
      return defaultRetryDelayMs(attempt);
    }
  }

  function wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (wake === done) wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      wake = done;
    });
  }

  function getClient(): Client {
    if (client) return client;
    const Base = options.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (!Base) {
      throw new Error(
        "Cannot open a WebSocket: this runtime has none; pass one as " +
          "createParleyClient({ url, WebSocket })",
      );
    }
    const created: Client = createWSClient({
      url: async () => {
        const ms = skipWait ? 0 : nextWait;
        nextWait = 0;
        skipWait = false;
        if (ms > 0) {
          await wait(ms);
          // Closed meanwhile (by `close()`, or idle): this attempt is moot, tRPC drops it.
          if (closed || created.connectionState.get().state === "idle") {
            throw new Error("The WebSocket client was closed while waiting to reconnect");
          }
        }
        return options.url;
      },
      retryDelayMs: (attempt) => {
        // Called by tRPC's reconnect loop only; after a close it ends the loop without a
        // socket, so a wait noted then would be left for an unrelated open.
        const ending = closed || created.connectionState.get().state === "idle";
        const ms = ending ? 0 : delayOf(attempt);
        nextWait = Number.isFinite(ms) && ms > 0 ? Math.min(ms, 2 ** 31 - 1) : 0;
        return 0;
      },
      lazy: { enabled: true, closeMs: idleCloseMs },
      keepAlive: options.keepAlive,
      WebSocket: guardedWebSocket(Base, { identity, sockets }),
      connectionParams: async () => {
        const token = await identity.read();
        return token ? { token } : {};
      },
    });
    client = created;
    return created;
  }

  const link: TRPCLink<AppRouter> = (runtime) => ({ op, next }) =>
    observable((observer) => {
      let cancelled = false;
      let inner: { unsubscribe(): void } | null = null;
      // Read the token first: a change closes stale sockets before this op is queued.
      identity.read().then(() => {
        if (cancelled) return;
        closed = false;
        operationLink ??= wsLink<AppRouter>({ client: getClient(), transformer: superjson })(
          runtime,
        );
        inner = operationLink({ op, next }).subscribe(observer);
      }).catch((error) => {
        if (!cancelled) observer.error(TRPCClientError.from(error));
      });
      return () => {
        cancelled = true;
        inner?.unsubscribe();
      };
    });

  return {
    link,
    closeStale() {
      for (const socket of sockets) {
        if (socket.announced !== undefined && socket.announced !== identity.token) {
          closeForTokenChange(socket);
        }
      }
    },
    reconnect() {
      const dropped = sockets.size > 0;
      for (const socket of [...sockets]) {
        socket.abandon(RECONNECT_CLOSE_CODE, "Reconnect requested");
      }
      // Waiting between attempts: the next one starts now. Else the sockets just dropped make
      // tRPC reconnect, and that first attempt must not wait either.
      if (wake) wake();
      else if (dropped) skipWait = true;
    },
    async close() {
      closed = true;
      wake?.();
      await client?.close();
    },
  };
}

function closeForTokenChange(socket: WebSocket): void {
  if (socket.readyState >= 2) return; // CLOSING or CLOSED
  socket.close(TOKEN_CHANGED_CLOSE_CODE, "Token changed: reconnecting");
}

/**
 * A subclass of `Base` whose sockets are in `options.sockets` until they close, note the
 * token they announce in connectionParams, refuse to send calls (closing with
 * `TOKEN_CHANGED_CLOSE_CODE` instead) while `options.identity.token` differs from it, and
 * send tRPC's batched frames cut by `frames`.
 *
 * A socket the client closes reports `close` within `CLOSE_WAIT_MS` even when the peer never
 * answers (then with code 1006), at once when `abandon`ed (after `error` too if it was still
 * connecting, as a failed connection does); the events the runtime sends later are not passed on.
 */
export function guardedWebSocket(
  Base: typeof WebSocket,
  options: { identity: Identity; sockets: Set<GuardedSocket> },
): typeof WebSocket {
  const { identity, sockets } = options;
  return class extends Base implements GuardedSocket {
    announced: string | null | undefined = undefined;
    /** True once `close` was passed on: later `error` and `close` events are not. */
    #reported = false;
    /** True while this class dispatches its own events. */
    #dispatching = false;
    #closeTimer: ReturnType<typeof setTimeout> | undefined = undefined;

    constructor(...args: ConstructorParameters<typeof WebSocket>) {
      super(...args);
      // Registered before tRPC's listeners, so it can keep events from them.
      const gate = (event: Event) => {
        if (this.#dispatching) return;
        if (this.#reported) {
          event.stopImmediatePropagation();
        } else if (event.type === "close") {
          this.#reported = true;
          clearTimeout(this.#closeTimer);
        }
      };
      this.addEventListener("error", gate);
      this.addEventListener("close", gate);
      sockets.add(this);
      this.addEventListener("close", () => sockets.delete(this));
    }

    override close(code?: number, reason?: string): void {
      const connecting = this.readyState === 0; // CONNECTING
      super.close(code, reason);
      if (this.#reported || this.#closeTimer !== undefined) return;
      this.#closeTimer = setTimeout(() => this.#reportClosed(1006, "", connecting), CLOSE_WAIT_MS);
    }

    abandon(code: number, reason: string): void {
      const connecting = this.readyState === 0;
      if (this.readyState < 2) super.close(code, reason); // not CLOSING or CLOSED yet
      this.#reportClosed(code, reason, connecting);
    }

    #reportClosed(code: number, reason: string, connecting: boolean): void {
      clearTimeout(this.#closeTimer);
      if (this.#reported) return;
      this.#reported = true;
      this.#dispatching = true;
      try {
        if (connecting) this.dispatchEvent(new Event("error"));
        this.dispatchEvent(closeEvent(code, reason));
      } finally {
        this.#dispatching = false;
      }
    }

    override send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
      if (typeof data !== "string" || data === "PING" || data === "PONG") {
        super.send(data);
        return;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(data);
      } catch {
        super.send(data); // not tRPC's JSON encoding: nothing to check or cut
        return;
      }
      if (isObject(parsed) && parsed.method === "connectionParams") {
        const params = isObject(parsed.data) ? parsed.data : {};
        this.announced = typeof params.token === "string" && params.token ? params.token : null;
        super.send(data);
        return;
      }
      const messages: unknown[] = Array.isArray(parsed) ? parsed : [parsed];
      const calls = messages.some((m) => !isObject(m) || m.method !== "subscription.stop");
      if (calls && this.announced !== identity.token) {
        // Dropped, not sent: tRPC resends the subscriptions on the socket that replaces it.
        closeForTokenChange(this);
        return;
      }
      for (const frame of frames(messages)) super.send(frame);
    }
  };
}

/** A `close` event (a plain Event with its fields where the runtime has no CloseEvent). */
function closeEvent(code: number, reason: string): Event {
  const init = { code, reason, wasClean: false };
  if (typeof CloseEvent === "function") return new CloseEvent("close", init);
  return Object.assign(new Event("close"), init);
}

/**
 * Encodes messages as frames of at most `MAX_BATCH_SIZE` messages and `MAX_FRAME_BYTES`
 * bytes (UTF-8), in order; a single larger message gets a frame of its own.
 */
export function frames(messages: unknown[]): string[] {
  const out: string[] = [];
  let group: string[] = [];
  let bytes = 2; // [ and ]
  const flush = () => {
    if (group.length === 1) out.push(group[0]);
    else if (group.length > 1) out.push(`[${group.join(",")}]`);
    group = [];
    bytes = 2;
  };
  for (const message of messages) {
    const text = JSON.stringify(message);
    const size = utf8Length(text) + (group.length > 0 ? 1 : 0);
    if (group.length >= MAX_BATCH_SIZE || (group.length > 0 && bytes + size > MAX_FRAME_BYTES)) {
      flush();
    }
    group.push(text);
    bytes += utf8Length(text) + (group.length > 1 ? 1 : 0);
  }
  flush();
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
