/**
 * Starts parley's HTTP and WebSocket server. It listens at once and serves the API once the
 * database is there: until then `/health` and every call answer 503 with a retry hint, and the
 * preparation (migrations) and the hub's LISTEN are retried with backoff. A LISTEN connection
 * that does not hear a NOTIFY sent through the pool (a pooler in transaction mode) fails
 * `ready` with `NotificationsNotHeardError`.
 */
import { isTransientDatabaseError, type Sql } from "../db/mod.ts";
import { createApp, type SocketOptions } from "./app.ts";
import { checkHolders } from "./access.ts";
import type { AccountSettings } from "./config.ts";
import { createIdTokenVerifier } from "./id_token.ts";
import { preparePasswordChecks } from "./password.ts";
import { type Broadcast, LocalBroadcast, PostgresBroadcast } from "./realtime/broadcast.ts";
import { dataFrameSuffix, liveListSuffix } from "./realtime/direct_stream.ts";
import type { RoomEvent } from "../db/events.ts";
import { Hub, type HubTimings } from "./realtime/hub.ts";
import { appRouter } from "./router.ts";
import { type AbuseLimits, DEFAULT_ABUSE_LIMITS } from "./limits.ts";
import { type CallSettings, DEFAULT_CALL_SETTINGS } from "./ice_servers.ts";
import type { Logger } from "./log.ts";
import { DEFAULT_METRICS_SETTINGS, type MetricsSettings, ServerMetrics } from "./metrics.ts";
import type { OriginPolicy } from "./origin.ts";
import { WriteLimiter } from "./rate_limit.ts";
import { DEFAULT_SESSION_TTL_SECONDS, SessionKeeper } from "./sessions.ts";

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
  /**
   * Postgres itself (never a pooler in transaction mode) for the LISTEN connection; required
   * unless `crossInstance` is false. `sql` may be a pooler.
   */
  listenUrl?: string;
  /** Heartbeat and reconciliation intervals (default: `DEFAULT_HUB_TIMINGS`). */
  hubTimings?: Partial<HubTimings>;
  /** Rates and connection caps (default: `DEFAULT_ABUSE_LIMITS`). */
  limits?: AbuseLimits;
  /** The header a trusted proxy puts the client address in (default: none, the TCP peer). */
  clientAddressHeader?: string | null;
  /** Session lifetime and the identity provider (defaults: 30 days, no provider). */
  accounts?: Partial<AccountSettings>;
  /** ICE servers and the size of a call (default: `DEFAULT_CALL_SETTINGS`). */
  calls?: Partial<CallSettings>;
  /** `/metrics`: its token, and whether it is served (default: served, no token). */
  metrics?: Partial<MetricsSettings>;
  /**
   * Work before the API serves calls (main.ts migrates here). A database or network outage
   * is retried with backoff; any other failure rejects `ready`.
   */
  prepare?: () => Promise<unknown>;
  /**
   * Called once, the first time preparation or LISTEN meets a database outage: the server is
   * listening and answers 503 until `ready` resolves (main.ts says so in its log).
   */
  onWaiting?: () => void;
}

/** Backoff between attempts to reach the database at startup: doubling from 250 ms to 10 s. */
const STARTUP_RETRY_MS = { first: 250, max: 10_000 };

/** How long a drain waits for in-flight HTTP requests after closing WebSockets. */
const DRAIN_REQUESTS_MS = 700;

/** A running server. */
export interface RunningServer {
  /** Base URL, e.g. `http://127.0.0.1:8000`. */
  url: string;
  port: number;
  /** Open WebSocket connections. */
  readonly connections: number;
  /** What the hub holds (watched rooms, message listeners, access watchers), for tests. */
  hubStats(): { rooms: number; listeners: number; holders: number };
  /**
   * Resolves once the database is prepared and the hub listens, i.e. the API serves calls;
   * rejects when preparation fails for a reason other than an outage, or when the LISTEN
   * connection does not hear the pool's NOTIFY (`NotificationsNotHeardError`).
   */
  ready: Promise<void>;
  /**
   * Drains: stops accepting connections, tells WebSocket clients to reconnect,
   * finishes in-flight requests, then closes what is left after `graceMs`.
   */
  shutdown(options?: { graceMs?: number }): Promise<void>;
}

/** Serves the API until `shutdown` is called. */
export async function serve(options: ServeOptions): Promise<RunningServer> {
  const sessions = new SessionKeeper(
    options.sql,
    options.log,
    options.accounts?.sessionTtlSeconds ?? DEFAULT_SESSION_TTL_SECONDS,
  );
  const hub = createHub({ ...options, sessions });
  const limits = options.limits ?? DEFAULT_ABUSE_LIMITS;
  const idTokenSettings = options.accounts?.idTokens ?? null;
  const writes = new WriteLimiter(limits);
  // A registry of this server's own; none at all when /metrics is off.
  const metricsSettings = { ...DEFAULT_METRICS_SETTINGS, ...options.metrics };
  const metrics = metricsSettings.enabled ? new ServerMetrics(metricsSettings) : null;
  metrics?.watch({ hub, writes, sql: options.sql });
  void preparePasswordChecks();
  const app = createApp({
    ...options,
    hub,
    sessions,
    idTokens: idTokenSettings ? createIdTokenVerifier(idTokenSettings) : null,
    limits,
    writes,
    metrics,
    calls: { ...DEFAULT_CALL_SETTINGS, ...options.calls },
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
        path: pathOf(req.url),
        status: response.status,
        ms: Math.round((performance.now() - started) * 10) / 10,
        origin: req.headers.get("origin"),
      });
    }
    return response;
  });
  const port = await listening;
  const stopping = new AbortController();
  let waiting = false;
  const retry = {
    log: options.log,
    stopping,
    onOutage() {
      if (!waiting) options.onWaiting?.();
      waiting = true;
    },
  };
  const ready = (async () => {
    if (options.prepare) {
      await retryWhileUnavailable(options.prepare, "preparing the database", retry);
    }
    await retryWhileUnavailable(() => hub.start(), "listening for other instances", retry);
    app.ready();
  })();
  ready.catch(() => {}); // the caller decides; an unobserved failure must not end the process
  const host = options.hostname === "0.0.0.0" || options.hostname === "::"
    ? "127.0.0.1"
    : options.hostname;
  return {
    url: `http://${host}:${port}`,
    port,
    get connections() {
      return app.sockets.size;
    },
    hubStats: () => hub.stats(),
    ready,
    async shutdown({ graceMs = 1000 } = {}) {
      stopping.abort();
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
      await sessions.close();
    },
  };
}

/**
 * Runs `attempt` until it succeeds, waiting with doubling backoff after each database or
 * network outage (logged in one line each, and told to `onOutage`); rethrows any other failure,
 * and stops when `stopping` aborts.
 */
async function retryWhileUnavailable(
  attempt: () => Promise<unknown>,
  what: string,
  options: { log: Logger; stopping: AbortController; onOutage: () => void },
): Promise<void> {
  const { log, stopping } = options;
  for (let delay = STARTUP_RETRY_MS.first;; delay = Math.min(delay * 2, STARTUP_RETRY_MS.max)) {
    try {
      await attempt();
      return;
    } catch (error) {
      if (!isTransientDatabaseError(error) || stopping.signal.aborted) throw error;
      const reason = (error as { code?: string }).code ?? (error as Error).message;
      log.warn(`Database unreachable while ${what} (${reason}): retrying in ${delay} ms`);
      options.onOutage();
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, delay);
      stopping.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
    if (stopping.signal.aborted) throw new Error("Stopped before the database was reached");
  }
}

/**
 * The hub with the broadcast chosen for this deployment: Postgres `LISTEN/NOTIFY` between
 * instances, or none on the embedded database (`crossInstance: false`).
 * @throws TypeError when `crossInstance` is on and no `listenUrl` is given.
 */
export function createHub(
  options:
    & Pick<ServeOptions, "sql" | "log" | "crossInstance" | "listenUrl" | "hubTimings">
    & { sessions?: SessionKeeper },
): Hub {
  const sessions = options.sessions ??
    new SessionKeeper(options.sql, options.log, DEFAULT_SESSION_TTL_SECONDS);
  const crossInstance = options.crossInstance ?? true;
  if (crossInstance && options.listenUrl === undefined) {
    throw new TypeError("Cannot listen for other instances: no listenUrl was given");
  }
  const broadcast: Broadcast = crossInstance
    ? new PostgresBroadcast({
      sql: options.sql,
      log: options.log,
      listenUrl: options.listenUrl!,
      timings: options.hubTimings,
    })
    : new LocalBroadcast();
  // Frames are built with the router's own output transformer (superjson).
  const { serialize } = appRouter._def._config.transformer.output;
  return new Hub(options.sql, options.log, {
    broadcast,
    encode(value, id) {
      const event = value as RoomEvent;
      if (event.type === "presence.changed") {
        return liveListSuffix(String(id), event.type, "online", event.online);
      }
      if (event.type === "typing.changed") {
        return liveListSuffix(String(id), event.type, "typing", event.typing);
      }
      return dataFrameSuffix(serialize, String(id), value);
    },
    checkHolders: (holders) => checkHolders(options.sql, sessions, holders),
    reconcileMs: options.hubTimings?.reconcileMs,
  });
}

/** The path of an absolute URL (`http://host:port/path?query`), without parsing all of it. */
function pathOf(url: string): string {
  const start = url.indexOf("/", url.indexOf("//") + 2);
  if (start < 0) return "/";
  const end = url.indexOf("?", start);
  return end < 0 ? url.slice(start) : url.slice(start, end);
}
