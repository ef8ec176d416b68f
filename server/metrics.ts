/**
 * Prometheus metrics at `GET /metrics`, on prom-client (the Prometheus client library for
 * JavaScript): its metric types, registry and text format rather than our own.
 *
 * Each server has a registry of its own, so several servers in one process (tests) do not
 * collide. The send and fan-out paths count in plain numbers (`SendCounts`, `FanoutCounts`,
 * `WriteLimiter.limited`) that the metrics read when scraped (`collect`): no prom-client call
 * runs per frame. The one exception is the delivery latency histogram, observed once per
 * message this instance committed, at its first frame.
 *
 * prom-client's `collectDefaultMetrics` is not used: under Deno its event-loop lag reads
 * nonsense, its `/proc` readings are 0 under the server's `--allow-read=.`, and it installs
 * process-wide observers per registry that are never released. The few process metrics below
 * read Deno's own numbers instead.
 */
import type { Buffer } from "node:buffer";
import { createHash, timingSafeEqual } from "node:crypto";
import process from "node:process";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { ping, type Sql } from "../db/mod.ts";
import type { Hub } from "./realtime/hub.ts";
import type { WriteKind, WriteLimiter } from "./rate_limit.ts";
import type { SendQueue } from "./send_queue.ts";

/** Whether and how `/metrics` is served (`METRICS_TOKEN`). */
export interface MetricsSettings {
  /** When set, `/metrics` needs `Authorization: Bearer <token>` (else 401). */
  token: string | null;
  /** False: `/metrics` answers 404 (production without a token). */
  enabled: boolean;
}

/** Outside production: served, no token. */
export const DEFAULT_METRICS_SETTINGS: MetricsSettings = { token: null, enabled: true };

/** The server's parts the metrics read when scraped, handed over as they are made. */
export interface MetricsSources {
  /** Open WebSocket connections. */
  sockets: ReadonlySet<unknown>;
  hub: Hub;
  sendQueue: SendQueue;
  writes: WriteLimiter;
  /** The pool (it may be a pooler). */
  sql: Sql;
}

/** What the front door counts itself (see `app.ts`). */
export interface FrontDoorCounts {
  /** Subscriptions ended or refused with a resync (`PRECONDITION_FAILED`), by stream. */
  resyncs: { messages: number; events: number };
  /** WebSocket upgrades refused by a connection cap: the instance's, or one address's. */
  refused: { instance_limit: number; address_limit: number };
}

/** Delivery latency buckets, in seconds: 0.5 ms to 2.5 s. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** How long the scrape's `select 1` may take before Postgres counts as down, in milliseconds. */
const PING_MS = 1000;

const WRITE_KINDS: WriteKind[] = [
  "sends",
  "joins",
  "creates",
  "signups",
  "signIns",
  "reactions",
  "signals",
];

/** One server's metrics and its `/metrics` endpoint. */
export class ServerMetrics {
  /** This server's registry (never prom-client's global one). */
  readonly registry: Registry = new Registry();
  readonly settings: MetricsSettings;
  /** Counted by the front door. */
  readonly front: FrontDoorCounts = {
    resyncs: { messages: 0, events: 0 },
    refused: { instance_limit: 0, address_limit: 0 },
  };
  readonly #sources: Partial<MetricsSources> = {};
  readonly #latency: Histogram<"stream">;
  /** SHA-256 of the token: compared in constant time, whatever the length sent. */
  readonly #tokenDigest: Buffer | null;

  constructor(settings: Partial<MetricsSettings> = {}) {
    this.settings = { ...DEFAULT_METRICS_SETTINGS, ...settings };
    this.#tokenDigest = this.settings.token === null ? null : sha256(this.settings.token);
    const registers = [this.registry];
    const sources = this.#sources;
    const front = this.front;

    new Gauge({
      name: "parley_websocket_connections",
      help: "Open WebSocket connections (counted until each is really closed).",
      registers,
      collect() {
        this.set(sources.sockets?.size ?? 0);
      },
    });
    new Counter({
      name: "parley_websocket_refused_total",
      help: "WebSocket upgrades refused by a connection cap: the instance's (503) or one " +
        "address's (429).",
      labelNames: ["reason"],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(front.refused)) this.inc({ reason }, n);
      },
    });
    new Gauge({
      name: "parley_subscriptions",
      help: "Open subscriptions by stream: messages (messages.onMessage), events " +
        "(rooms.onEvent), calls (calls.onEvent).",
      labelNames: ["stream"],
      registers,
      collect() {
        const hub = sources.hub;
        if (!hub) return;
        this.set({ stream: "messages" }, hub.messages.stats().listeners);
        this.set({ stream: "events" }, hub.events.stats().listeners);
        this.set({ stream: "calls" }, hub.calls.counts().listeners);
      },
    });
    new Counter({
      name: "parley_sends_total",
      help: "messages.send calls by outcome: committed (a new message), duplicate (a retry " +
        "found its message), refused (token, room, membership, reused id), failed (database " +
        "unavailable, deadline).",
      labelNames: ["outcome"],
      registers,
      collect() {
        this.reset();
        const counts = sources.sendQueue?.counts;
        if (!counts) return;
        for (const [outcome, n] of Object.entries(counts)) this.inc({ outcome }, n);
      },
    });
    new Counter({
      name: "parley_deliveries_total",
      help: "Frames written to subscribers (live, replayed and presence/typing items), by " +
        "stream.",
      labelNames: ["stream"],
      registers,
      collect() {
        this.reset();
        const hub = sources.hub;
        if (!hub) return;
        this.inc({ stream: "messages" }, hub.messages.counts.deliveries);
        this.inc({ stream: "events" }, hub.events.counts.deliveries);
      },
    });
    this.#latency = new Histogram({
      name: "parley_delivery_latency_seconds",
      help: "From a message's commit on this instance to its first frame written to a " +
        "subscriber here, by stream (messages committed elsewhere are not measured).",
      labelNames: ["stream"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    new Counter({
      name: "parley_replays_total",
      help: "Resuming subscribers that replayed missed items, by stream and source: memory " +
        "(the room's recent items) or database (read from Postgres).",
      labelNames: ["stream", "source"],
      registers,
      collect() {
        this.reset();
        const hub = sources.hub;
        if (!hub) return;
        for (const stream of ["messages", "events"] as const) {
          const counts = hub[stream].counts;
          this.inc({ stream, source: "memory" }, counts.replaysFromMemory);
          this.inc({ stream, source: "database" }, counts.replaysFromDatabase);
        }
      },
    });
    new Counter({
      name: "parley_resyncs_total",
      help: "Subscriptions refused or ended with a resync (PRECONDITION_FAILED: reload, then " +
        "subscribe again), by stream.",
      labelNames: ["stream"],
      registers,
      collect() {
        this.reset();
        for (const [stream, n] of Object.entries(front.resyncs)) this.inc({ stream }, n);
      },
    });
    new Counter({
      name: "parley_rate_limited_total",
      help: "Writes refused by a rate limit (TOO_MANY_REQUESTS), by kind.",
      labelNames: ["kind"],
      registers,
      collect() {
        this.reset();
        const limited = sources.writes?.limited;
        for (const kind of WRITE_KINDS) this.inc({ kind }, limited?.[kind] ?? 0);
      },
    });
    new Gauge({
      name: "parley_presence_online",
      help: "Members online in a room through this instance's subscriptions (one per member " +
        "and room).",
      registers,
      collect() {
        this.set(sources.hub?.presence.localCount() ?? 0);
      },
    });
    new Gauge({
      name: "parley_typing",
      help: "Members typing, in every room, on any instance.",
      registers,
      collect() {
        this.set(sources.hub?.typing.count() ?? 0);
      },
    });
    new Gauge({
      name: "parley_call_participants",
      help: "Participants in calls through this instance.",
      registers,
      collect() {
        this.set(sources.hub?.calls.counts().participants ?? 0);
      },
    });
    new Gauge({
      name: "parley_postgres_up",
      help: `1 when the pool answered select 1 within ${PING_MS} ms at this scrape, else 0.`,
      registers,
      async collect() {
        this.set(sources.sql && await ping(sources.sql, PING_MS) ? 1 : 0);
      },
    });
    new Gauge({
      name: "parley_postgres_pool_max_connections",
      help: "Connections the Postgres pool may open.",
      registers,
      collect() {
        this.set(sources.sql?.options.max ?? 0);
      },
    });
    new Gauge({
      name: "parley_send_statements_in_flight",
      help: "Send statements running, each holding one pool connection (at most one per room).",
      registers,
      collect() {
        this.set(sources.sendQueue?.inFlight().statements ?? 0);
      },
    });
    new Gauge({
      name: "parley_sends_waiting",
      help: "Sends waiting for their room's running statement (they go together in the next).",
      registers,
      collect() {
        this.set(sources.sendQueue?.inFlight().waiting ?? 0);
      },
    });
    new Counter({
      name: "process_cpu_seconds_total",
      help: "User and system CPU time spent by the process, in seconds.",
      registers,
      collect() {
        const { user, system } = process.cpuUsage();
        this.reset();
        this.inc((user + system) / 1e6);
      },
    });
    new Gauge({
      name: "process_resident_memory_bytes",
      help: "Resident memory size of the process, in bytes.",
      registers,
      collect() {
        this.set(Deno.memoryUsage().rss);
      },
    });
    new Gauge({
      name: "process_start_time_seconds",
      help: "When the process started, in seconds since the Unix epoch.",
      registers,
    }).set(Math.round(performance.timeOrigin / 1000));
  }

  /**
   * Hands over parts of the server as they are made (serve.ts, app.ts). With the hub, the
   * delivery latency is measured, and with a LISTEN connection (several instances) its
   * metrics are registered.
   */
  watch(sources: Partial<MetricsSources>): void {
    Object.assign(this.#sources, sources);
    const hub = sources.hub;
    if (!hub) return;
    // Zeroed, so that each series is there (count 0) before its first message.
    this.#latency.zero({ stream: "messages" });
    this.#latency.zero({ stream: "events" });
    const messages = this.#latency.labels({ stream: "messages" });
    const events = this.#latency.labels({ stream: "events" });
    hub.messages.counts.firstFrame = (seconds) => messages.observe(seconds);
    hub.events.counts.firstFrame = (seconds) => events.observe(seconds);
    if (hub.listenState() === null) return;
    const registers = [this.registry];
    new Gauge({
      name: "parley_listen_up",
      help: "1 while the LISTEN connection is open and heard its last heartbeat, else 0.",
      registers,
      collect() {
        this.set(hub.listenState()?.up ? 1 : 0);
      },
    });
    new Counter({
      name: "parley_listen_replacements_total",
      help: "LISTEN connections opened to replace one that missed a heartbeat.",
      registers,
      collect() {
        this.reset();
        this.inc(hub.listenState()?.replacements ?? 0);
      },
    });
  }

  /**
   * Counts a call's error for the metrics (the front door's `onError`): a resync of
   * `messages.onMessage` or `rooms.onEvent`.
   */
  failed(code: string, path: string | undefined): void {
    if (code !== "PRECONDITION_FAILED") return;
    if (path === "messages.onMessage") this.front.resyncs.messages++;
    else if (path === "rooms.onEvent") this.front.resyncs.events++;
  }

  /**
   * Answers `GET`/`HEAD /metrics`: the registry in Prometheus's text format, or 401 when a
   * token is set and the request does not carry it.
   */
  async respond(req: Request): Promise<Response> {
    if (!this.#authorized(req.headers.get("authorization"))) {
      return new Response(
        JSON.stringify({
          error: { code: "UNAUTHORIZED", message: "/metrics needs Authorization: Bearer <token>" },
        }),
        {
          status: 401,
          headers: {
            "content-type": "application/json",
            "www-authenticate": 'Bearer realm="metrics"',
          },
        },
      );
    }
    const body = await this.registry.metrics();
    return new Response(req.method === "HEAD" ? null : body, {
      headers: { "content-type": this.registry.contentType, "cache-control": "no-store" },
    });
  }

  /** Whether the header carries the token (always, when none is set): constant time. */
  #authorized(header: string | null): boolean {
    if (this.#tokenDigest === null) return true;
    const match = /^Bearer[ ]+(\S+)[ ]*$/i.exec(header ?? "");
    // A missing header is compared too: its answer takes as long as a wrong token's.
    return timingSafeEqual(sha256(match?.[1] ?? ""), this.#tokenDigest) && match !== null;
  }
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}
