/** Starts parley's HTTP and WebSocket server on a database that is already migrated. */
import type { Sql } from "../db/mod.ts";
import { createApp, type SocketOptions } from "./app.ts";
import { Hub } from "./hub.ts";
import { type AbuseLimits, DEFAULT_ABUSE_LIMITS } from "./limits.ts";
import type { Logger } from "./log.ts";
import type { OriginPolicy } from "./origin.ts";
import { WriteLimiter } from "./rate_limit.ts";

/** What `serve` needs. */
export interface ServeOptions {
  sql: Sql;
  origins: OriginPolicy;
  log: Logger;
  hostname: string;
  /** 0 picks a free port. */
  port: number;
  /** WebSocket keep-alive and limits (defaults: production values). */
  sockets?: SocketOptions;
  /** False for the embedded database: fan-out stays in this process (default true). */
  crossInstance?: boolean;
  /** Rates and connection caps (default: `DEFAULT_ABUSE_LIMITS`). */
  limits?: AbuseLimits;
  /** The header a trusted proxy puts the client address in (default: none, the TCP peer). */
  clientAddressHeader?: string | null;
}

/** How long a drain waits for in-flight HTTP requests after closing WebSockets. */
const DRAIN_REQUESTS_MS = 700;

/** A running server. */
export interface RunningServer {
  /** Base URL, e.g. `http://127.0.0.1:8000`. */
  url: string;
  port: number;
  /** Open WebSocket connections. */
  readonly connections: number;
  /**
   * Drains: stops accepting connections, tells WebSocket clients to reconnect,
   * finishes in-flight requests, then closes what is left after `graceMs`.
   */
  shutdown(options?: { graceMs?: number }): Promise<void>;
}

/** Serves the API until `shutdown` is called. */
export async function serve(options: ServeOptions): Promise<RunningServer> {
  const hub = new Hub(options.sql, options.log, { crossInstance: options.crossInstance });
  await hub.start();
  const limits = options.limits ?? DEFAULT_ABUSE_LIMITS;
  const app = createApp({
    ...options,
    hub,
    limits,
    writes: new WriteLimiter(limits),
    clientAddressHeader: options.clientAddressHeader ?? null,
  }, options.sockets);
  const { promise: listening, resolve } = Promise.withResolvers<number>();
  const server = Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen: ({ port }) => resolve(port),
    // A handler that throws is a bug of ours: log it with its stack, answer a bare 500.
    onError(error) {
      options.log.error("Request handler failed", error);
      return new Response(JSON.stringify({ error: { code: "INTERNAL_SERVER_ERROR" } }), {
        status: 500,
        headers: { "content-type": "application/json" },
      });
    },
  }, async (req, info) => {
    const started = performance.now();
    const response = await app.handle(req, info);
    if (response.status !== 101) {
      options.log.info("request", {
        method: req.method,
        path: new URL(req.url).pathname,
        status: response.status,
        ms: Math.round((performance.now() - started) * 10) / 10,
        origin: req.headers.get("origin"),
      });
    }
    return response;
  });
  const port = await listening;
  const host = options.hostname === "0.0.0.0" || options.hostname === "::"
    ? "127.0.0.1"
    : options.hostname;
  return {
    url: `http://${host}:${port}`,
    port,
    get connections() {
      return app.sockets.size;
    },
    async shutdown({ graceMs = 1000 } = {}) {
      // Refuse new work first, and tell WebSocket clients to move while their sockets are
      // still open: Deno's own shutdown closes upgraded sockets at once (1001).
      app.drain();
      app.reconnectAll();
      const deadline = Date.now() + graceMs;
      while (app.sockets.size > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      for (const socket of app.sockets) socket.close(1012, "Server restarting: reconnect");
      const finished = server.shutdown();
      // In-flight requests get what is left of the drain window, then we go regardless.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        finished,
        new Promise((resolve) => timer = setTimeout(resolve, DRAIN_REQUESTS_MS)),
      ]);
      clearTimeout(timer);
      await hub.close();
    },
  };
}
