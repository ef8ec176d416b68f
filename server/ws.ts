/**
 * The only glue between `Deno.upgradeWebSocket` and tRPC's WebSocket connection
 * handler, which is written for Node's `ws`. `DenoSocket` looks enough like a `ws`
 * socket for it; `upgrade` reads the request before upgrading (afterwards its
 * headers are gone) and hands tRPC a Node-style request.
 */
import { Buffer } from "node:buffer";
import { MAX_FRAME_BYTES } from "./limits.ts";

/** The Node-style request tRPC reads: `headers` as a plain object and `url` as a path. */
export interface NodeStyleRequest {
  method: "GET";
  url: string;
  headers: Record<string, string>;
  /** The client's address (see `client_address.ts`), for per-connection limits. */
  address: string;
}

/** Limits applied to every connection. */
export interface SocketLimits {
  /** Largest incoming frame; a larger one closes the socket with 1009. */
  maxFrameBytes: number;
  /** Most bytes queued for a slow reader; past it the socket closes with 1013. */
  maxBufferedBytes: number;
}

/** Default limits: 64 KiB frames, 1 MiB of unsent data. */
export const DEFAULT_LIMITS: SocketLimits = {
  maxFrameBytes: MAX_FRAME_BYTES,
  maxBufferedBytes: 1024 * 1024,
};

// deno-lint-ignore no-explicit-any -- listeners of several shapes share one registry
type Listener = (...args: any[]) => void;

/** How long a closing socket waits for the peer's close frame before it counts as closed. */
const CLOSE_WAIT_MS = 3000;

/** Wraps a Deno `WebSocket` in the subset of the `ws` API tRPC uses. */
export class DenoSocket {
  #socket: WebSocket;
  #limits: SocketLimits;
  #listeners = new Map<string, Set<Listener>>();
  #closeEmitted = false;
  #abrupt = false;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(socket: WebSocket, limits: SocketLimits = DEFAULT_LIMITS) {
    this.#socket = socket;
    this.#limits = limits;
    socket.addEventListener("message", (event) => this.#onMessage(event));
    // Deno reports a peer that vanished without a close frame ("Unexpected EOF", a reset) as
    // an error event. That is a routine disconnect, not a fault of ours: it is not passed to
    // tRPC (which would report it as an internal error), only remembered for the close log.
    socket.addEventListener("error", () => {
      this.#abrupt = true;
    });
    socket.addEventListener("close", () => {
      this.#emitClose();
      this.#emit("closed");
    });
  }

  /** True when the peer went away without a closing handshake. */
  get abrupt(): boolean {
    return this.#abrupt;
  }

  /** The underlying socket's state (0 connecting, 1 open, 2 closing, 3 closed). */
  get readyState(): number {
    return this.#socket.readyState;
  }

  /** Sends a text frame; closes the socket instead when the reader has fallen too far behind. */
  send(data: string): void {
    if (this.#socket.readyState !== WebSocket.OPEN) return;
    if (this.#socket.bufferedAmount > this.#limits.maxBufferedBytes) {
      this.close(1013, "Reader too slow: reconnect and resume");
      return;
    }
    this.#socket.send(data);
  }

  /**
   * Starts the closing handshake. A peer that never answers it (dead, or too slow to read
   * the close frame) would hold the socket's subscriptions forever, so after `CLOSE_WAIT_MS`
   * "close" is emitted anyway (tRPC then releases them). "closed" is emitted only when the
   * connection is really gone: connection caps count a socket until then, so a peer cannot
   * slip past them by never answering a close.
   */
  close(code?: number, reason?: string): void {
    if (this.#socket.readyState >= WebSocket.CLOSING) return;
    try {
      this.#socket.close(code, reason);
    } catch {
      this.#socket.close();
    }
    this.#closeTimer = setTimeout(() => this.#emitClose(), CLOSE_WAIT_MS);
  }

  #emitClose(): void {
    clearTimeout(this.#closeTimer);
    if (this.#closeEmitted) return;
    this.#closeEmitted = true;
    this.#emit("close");
  }

  /** Closes without waiting for the peer (Deno has no hard close; this is the closest). */
  terminate(): void {
    this.close(1001, "Connection timed out");
  }

  /** Adds a listener. */
  on(event: string, listener: Listener): this {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, set = new Set());
    set.add(listener);
    return this;
  }

  /** Adds a listener that runs at most once. */
  once(event: string, listener: Listener): this {
    const wrapped: Listener = (...args) => {
      this.off(event, wrapped);
      listener(...args);
    };
    return this.on(event, wrapped);
  }

  /** Removes a listener. */
  off(event: string, listener: Listener): this {
    this.#listeners.get(event)?.delete(listener);
    return this;
  }

  #emit(event: string, ...args: unknown[]): void {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (error) {
        console.error(`WebSocket ${event} listener failed:`, error);
      }
    }
  }

  #onMessage(event: MessageEvent): void {
    if (typeof event.data !== "string") {
      this.close(1003, "Binary frames are not supported");
      return;
    }
    const data = Buffer.from(event.data, "utf8");
    if (data.byteLength > this.#limits.maxFrameBytes) {
      this.close(1009, `Frame exceeds ${this.#limits.maxFrameBytes} bytes`);
      return;
    }
    this.#emit("message", data, false);
  }
}

/** True when a request asks to upgrade to a WebSocket (`Upgrade: websocket`). */
export function isUpgrade(req: Request): boolean {
  return hasToken(req.headers.get("upgrade"), "websocket");
}

/** Why an upgrade request is refused: the HTTP status, a message, and headers to add. */
export interface HandshakeRefusal {
  status: 400 | 426;
  message: string;
  headers: Record<string, string>;
}

/**
 * Checks an upgrade request against the opening handshake of RFC 6455 §4.2.1 before anything
 * is upgraded: a GET, `Connection` listing `Upgrade`, `Upgrade` listing `websocket`, a
 * `Sec-WebSocket-Key` that is base64 of 16 bytes, and `Sec-WebSocket-Version: 13`. A wrong
 * version gets 426 with `Sec-WebSocket-Version: 13` (§4.4); anything else malformed, 400.
 * Returns null for a valid handshake.
 */
export function checkHandshake(req: Request): HandshakeRefusal | null {
  const refuse = (message: string): HandshakeRefusal => ({
    status: 400,
    message: `Malformed WebSocket upgrade request: ${message}`,
    headers: {},
  });
  if (req.method !== "GET") return refuse("the method must be GET");
  if (!req.headers.get("host")) return refuse("the Host header is missing");
  if (!hasToken(req.headers.get("connection"), "upgrade")) {
    return refuse("the Connection header must list Upgrade");
  }
  if (!isUpgrade(req)) return refuse("the Upgrade header must list websocket");
  const key = req.headers.get("sec-websocket-key")?.trim() ?? "";
  if (!isNonceKey(key)) {
    return refuse("Sec-WebSocket-Key must be 16 bytes in base64");
  }
  const version = req.headers.get("sec-websocket-version")?.trim();
  if (version === undefined || version === "") {
    return { ...refuse("Sec-WebSocket-Version is missing"), headers: VERSION_HEADER };
  }
  if (version !== "13") {
    return {
      status: 426,
      message: "Unsupported WebSocket version: this server speaks version 13 (RFC 6455)",
      headers: VERSION_HEADER,
    };
  }
  return null;
}

const VERSION_HEADER = { "sec-websocket-version": "13" };

/** True when a comma-separated header value lists `token` (case-insensitive, RFC 9110 §5.6.1). */
function hasToken(value: string | null, token: string): boolean {
  return value?.split(",").some((item) => item.trim().toLowerCase() === token) ?? false;
}

/** A Sec-WebSocket-Key: base64 of exactly 16 bytes, i.e. 22 characters and `==`. */
function isNonceKey(key: string): boolean {
  return /^[A-Za-z0-9+/]{21}[AQgw]==$/.test(key);
}

/**
 * Upgrades `req` (already checked by `checkHandshake`) and calls `onConnection` with the
 * wrapped socket once it is open. Returns the wrapped socket at once (to count it before it
 * opens) and the 101 response for `Deno.serve`.
 */
export function upgrade(
  req: Request,
  options: {
    /** The client's address, passed on to tRPC's context. */
    address: string;
    onConnection: (socket: DenoSocket, req: NodeStyleRequest) => void;
    limits?: SocketLimits;
  },
): { socket: DenoSocket; response: Response } {
  const { address, onConnection, limits = DEFAULT_LIMITS } = options;
  // Read everything from the request first: after the upgrade it is closed.
  const url = new URL(req.url);
  const nodeReq: NodeStyleRequest = {
    method: "GET",
    url: url.pathname + url.search,
    headers: Object.fromEntries(req.headers),
    address,
  };
  const { socket, response } = Deno.upgradeWebSocket(req);
  const wrapped = new DenoSocket(socket, limits);
  socket.addEventListener("open", () => onConnection(wrapped, nodeReq), { once: true });
  return { socket: wrapped, response };
}
