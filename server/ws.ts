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
  #closeTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(socket: WebSocket, limits: SocketLimits = DEFAULT_LIMITS) {
    this.#socket = socket;
    this.#limits = limits;
    socket.addEventListener("message", (event) => this.#onMessage(event));
    socket.addEventListener("error", (event) => {
      this.#emit("error", (event as ErrorEvent).error ?? new Error("WebSocket error"));
    });
    socket.addEventListener("close", () => this.#emitClose());
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
   * the close frame) would hold the socket's subscriptions forever, so after
   * `CLOSE_WAIT_MS` the socket counts as closed anyway.
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

/** True when a request asks to upgrade to a WebSocket. */
export function isUpgrade(req: Request): boolean {
  return req.headers.get("upgrade")?.toLowerCase() === "websocket";
}

/**
 * Upgrades `req` and calls `onConnection` with the wrapped socket once it is open.
 * Returns the 101 response for `Deno.serve`.
 */
export function upgrade(
  req: Request,
  onConnection: (socket: DenoSocket, req: NodeStyleRequest) => void,
  limits: SocketLimits = DEFAULT_LIMITS,
): Response {
  // Read everything from the request first: after the upgrade it is closed.
  const url = new URL(req.url);
  const nodeReq: NodeStyleRequest = {
    method: "GET",
    url: url.pathname + url.search,
    headers: Object.fromEntries(req.headers),
  };
  const { socket, response } = Deno.upgradeWebSocket(req);
  const wrapped = new DenoSocket(socket, limits);
  socket.addEventListener("open", () => onConnection(wrapped, nodeReq), { once: true });
  return response;
}
