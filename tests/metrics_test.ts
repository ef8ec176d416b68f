/**
 * `/metrics`: Prometheus text from prom-client, one registry per server; the counters and
 * gauges follow what the server does; the token rule and off-in-production.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { connect } from "../db/mod.ts";
import { ConfigError, loadConfig } from "../server/config.ts";
import { createOriginPolicy } from "../server/origin.ts";
import { serve } from "../server/serve.ts";
import {
  BULK_LIMITS,
  createTestDatabase,
  EMBEDDED,
  errorCode,
  memoryLogger,
  needsRealPostgres,
  POOL_MAX,
  signUp,
  startTestEnv,
  TEST_DATABASE_URL,
  type TestEnv,
  waitFor,
  wsClient,
} from "./_helpers.ts";
import { startTcpProxy } from "./_tcp_proxy.ts";

const ORIGIN = "https://app.example.com";

/** One sample: its metric name, labels and value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A scrape: its samples, and each metric family's type from its `# TYPE` line. */
interface Scrape {
  samples: Sample[];
  types: Map<string, string>;
}

const SAMPLE_LINE =
  /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"/g;

/**
 * Parses Prometheus's text format (0.0.4) strictly enough for a test: every line is a comment
 * (`# HELP name text`, `# TYPE name type`), blank, or `name{labels} value`, and every sample
 * belongs to a family that has both HELP and TYPE before it.
 */
function parse(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const helps = new Set<string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const comment = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (comment) {
      if (comment[1] === "HELP") helps.add(comment[2]);
      else {
        assert.match(comment[3], /^(counter|gauge|histogram|summary|untyped)$/, line);
        types.set(comment[2], comment[3]);
      }
      continue;
    }
    const match = SAMPLE_LINE.exec(line);
    assert.ok(match, `not a Prometheus sample line: ${JSON.stringify(line)}`);
    const [, name, labelText = "", valueText] = match;
    const value = Number(
      valueText === "+Inf" ? Infinity : valueText === "-Inf" ? -Infinity : valueText,
    );
    assert.ok(!Number.isNaN(value) || valueText === "NaN", `bad value in ${line}`);
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, "");
    assert.ok(types.has(family) && helps.has(family), `no HELP or TYPE before ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, raw] of labelText.matchAll(LABEL)) labels[key] = raw;
    samples.push({ name, labels, value });
  }
  return { samples, types };
}

/** The value of a sample (labels matched exactly), or undefined when there is none. */
function value(
  scrape: Scrape,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const keys = Object.keys(labels);
  return scrape.samples.find((s) =>
    s.name === name && Object.keys(s.labels).length === keys.length &&
    keys.every((k) => s.labels[k] === labels[k])
  )?.value;
}

async function scrape(env: { url: string }, token?: string): Promise<Scrape> {
  const res = await fetch(`${env.url}/metrics`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  return parse(text);
}

/** Scrapes until `predicate` holds for a scrape. */
async function scrapeUntil(
  env: TestEnv,
  predicate: (scrape: Scrape) => boolean,
  message: string,
): Promise<Scrape> {
  const deadline = Date.now() + 20_000;
  while (true) {
    const result = await scrape(env);
    if (predicate(result)) return result;
    if (Date.now() > deadline) throw new Error(`Timed out waiting: ${message}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

Deno.test("metrics follow connections, subscriptions, sends, deliveries and replays", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Metrics" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const bobWs = wsClient(env, { token: bob.token, origin: ORIGIN });
  const subscriptions: { unsubscribe(): void }[] = [];
  try {
    await t.step("the output is Prometheus text with parley's families", async () => {
      const first = await scrape(env);
      for (const [name, type] of first.types) {
        assert.match(name, /^(parley|process)_/, name);
        assert.equal(name.endsWith("_total"), type === "counter", `${name} is a ${type}`);
      }
      for (
        const name of [
          "parley_websocket_connections",
          "parley_subscriptions",
          "parley_sends_total",
          "parley_deliveries_total",
          "parley_delivery_latency_seconds",
          "parley_replays_total",
          "parley_resyncs_total",
          "parley_rate_limited_total",
          "parley_postgres_up",
          "parley_postgres_pool_max_connections",
          "process_cpu_seconds_total",
        ]
      ) assert.ok(first.types.has(name), name);
      assert.equal(value(first, "parley_websocket_connections"), 0);
      assert.equal(value(first, "parley_subscriptions", { stream: "messages" }), 0);
      assert.equal(value(first, "parley_sends_total", { outcome: "committed" }), 0);
      assert.equal(
        value(first, "parley_delivery_latency_seconds_count", { stream: "messages" }),
        0,
      );
      assert.equal(value(first, "parley_postgres_up"), 1);
      assert.equal(value(first, "parley_postgres_pool_max_connections"), POOL_MAX);
      // The LISTEN connection exists only between instances on a real Postgres.
      assert.equal(value(first, "parley_listen_up"), EMBEDDED ? undefined : 1);
      const head = await fetch(`${env.url}/metrics`, { method: "HEAD" });
      assert.equal(head.status, 200);
      assert.equal(await head.text(), "");
    });

    const received: number[] = [];
    await t.step("a subscription and its connection show in the gauges", async () => {
      let started = false;
      subscriptions.push(bobWs.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
        onStarted: () => void (started = true),
        onData: (event) => void received.push(event.data.seq),
      }));
      await waitFor(() => started, "bob's subscription started");
      const after = await scrape(env);
      assert.equal(value(after, "parley_websocket_connections"), 1);
      assert.equal(value(after, "parley_subscriptions", { stream: "messages" }), 1);
      assert.equal(value(after, "parley_presence_online"), 1);
    });

    await t.step("a send is counted, and its delivery with its latency", async () => {
      const clientMessageId = crypto.randomUUID();
      await alice.api.messages.send.mutate({
        roomId: room.id,
        content: "hi",
        clientMessageId,
      });
      await waitFor(() => received.length === 1, "bob received the message");
      const after = await scrape(env);
      assert.equal(value(after, "parley_sends_total", { outcome: "committed" }), 1);
      assert.equal(value(after, "parley_deliveries_total", { stream: "messages" }), 1);
      assert.equal(
        value(after, "parley_delivery_latency_seconds_count", { stream: "messages" }),
        1,
      );
      const sum = value(after, "parley_delivery_latency_seconds_sum", { stream: "messages" })!;
      assert.ok(sum > 0 && sum < 5, `latency ${sum} s`);
      // A retry with the same clientMessageId finds its message: not a new one.
      await alice.api.messages.send.mutate({
        roomId: room.id,
        content: "hi",
        clientMessageId,
      });
      const retried = await scrape(env);
      assert.equal(value(retried, "parley_sends_total", { outcome: "committed" }), 1);
      assert.equal(value(retried, "parley_sends_total", { outcome: "duplicate" }), 1);
    });

    await t.step("a replay from memory and a resync are counted", async () => {
      let replayed = 0;
      subscriptions.push(
        bobWs.trpc.messages.onMessage.subscribe({ roomId: room.id, lastEventId: "0" }, {
          onData: () => void replayed++,
        }),
      );
      await waitFor(() => replayed === 1, "the replay");
      let code = "";
      subscriptions.push(
        bobWs.trpc.messages.onMessage.subscribe({ roomId: room.id, lastEventId: "99" }, {
          onError: (error) => void (code = error.data?.code ?? error.message),
        }),
      );
      await waitFor(() => code !== "", "the resync");
      assert.equal(code, "PRECONDITION_FAILED");
      const after = await scrape(env);
      assert.equal(
        value(after, "parley_replays_total", { stream: "messages", source: "memory" }),
        1,
      );
      assert.equal(value(after, "parley_resyncs_total", { stream: "messages" }), 1);
      assert.equal(value(after, "parley_deliveries_total", { stream: "messages" }), 2);
      assert.equal(value(after, "parley_subscriptions", { stream: "messages" }), 2);
    });

    await t.step("the gauges follow subscriptions and connections as they close", async () => {
      for (const subscription of subscriptions) subscription.unsubscribe();
      await scrapeUntil(
        env,
        (s) => value(s, "parley_subscriptions", { stream: "messages" }) === 0,
        "subscriptions back to 0",
      );
      await bobWs.close();
      const after = await scrapeUntil(
        env,
        (s) => value(s, "parley_websocket_connections") === 0,
        "connections back to 0",
      );
      assert.equal(value(after, "parley_presence_online"), 0);
    });

    await t.step("each server has a registry of its own", async () => {
      await using other = await startTestEnv();
      const fresh = await scrape(other);
      assert.equal(value(fresh, "parley_sends_total", { outcome: "committed" }), 0);
      assert.equal(value(await scrape(env), "parley_sends_total", { outcome: "committed" }), 1);
    });
  } finally {
    for (const subscription of subscriptions) subscription.unsubscribe();
    await bobWs.close();
  }
});

Deno.test("rate-limited calls are counted by kind", async () => {
  await using env = await startTestEnv({ limits: { sends: { points: 1, seconds: 60 } } });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Limited" });
  await alice.api.messages.send.mutate({ roomId: room.id, content: "one" });
  assert.equal(
    await errorCode(alice.api.messages.send.mutate({ roomId: room.id, content: "two" })),
    "TOO_MANY_REQUESTS",
  );
  const after = await scrape(env);
  assert.equal(value(after, "parley_rate_limited_total", { kind: "sends" }), 1);
  assert.equal(value(after, "parley_rate_limited_total", { kind: "joins" }), 0);
  assert.equal(value(after, "parley_sends_total", { outcome: "committed" }), 1);
});

Deno.test("with METRICS_TOKEN, /metrics needs it as a bearer token", async () => {
  const token = "metrics-token-0123456789";
  await using env = await startTestEnv({ metrics: { token } });
  for (
    const authorization of [
      null,
      "",
      "Bearer",
      "Bearer wrong-token-0123456789",
      `Bearer ${token}x`,
      `Bearer ${token.slice(0, -1)}`,
      `Basic ${btoa(`user:${token}`)}`,
      token,
    ]
  ) {
    const res = await fetch(`${env.url}/metrics`, {
      headers: authorization === null ? {} : { authorization },
    });
    assert.equal(res.status, 401, String(authorization));
    assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="metrics"');
    assert.equal((await res.json()).error.code, "UNAUTHORIZED");
  }
  const scraped = await scrape(env, token);
  assert.equal(value(scraped, "parley_websocket_connections"), 0);
});

Deno.test("METRICS_TOKEN in the configuration: off in production without it", async (t) => {
  const production = {
    DENO_ENV: "production",
    DATABASE_URL: "postgres://parley@db.internal:5432/parley",
    ALLOWED_ORIGINS: "https://app.example.com",
  };

  await t.step("loadConfig: unset is off in production, open elsewhere", () => {
    assert.deepEqual(loadConfig(production).metrics, { token: null, enabled: false });
    assert.deepEqual(loadConfig({}).metrics, { token: null, enabled: true });
    const token = "a-long-enough-metrics-token";
    assert.deepEqual(loadConfig({ ...production, METRICS_TOKEN: ` ${token} ` }).metrics, {
      token,
      enabled: true,
    });
    assert.deepEqual(loadConfig({ METRICS_TOKEN: token }).metrics, { token, enabled: true });
  });

  await t.step("loadConfig: a token with spaces, or short in production, is refused", () => {
    const problems = (env: Record<string, string>) => {
      try {
        loadConfig(env);
        return [];
      } catch (error) {
        if (!(error instanceof ConfigError)) throw error;
        return error.problems;
      }
    };
    assert.match(
      problems({ METRICS_TOKEN: "two words-0123456789" }).join("\n"),
      /METRICS_TOKEN must be printable ASCII/,
    );
    assert.match(
      problems({ ...production, METRICS_TOKEN: "short" }).join("\n"),
      /METRICS_TOKEN must be at least 16 characters/,
    );
    const dev = loadConfig({ METRICS_TOKEN: "short" });
    assert.deepEqual(dev.metrics, { token: "short", enabled: true });
    assert.ok(dev.warnings.some((w) => w.includes("METRICS_TOKEN")), dev.warnings.join("\n"));
  });

  await t.step("a production server without a token answers 404", async () => {
    await using env = await startTestEnv({ metrics: loadConfig(production).metrics });
    const res = await fetch(`${env.url}/metrics`);
    assert.equal(res.status, 404);
    assert.equal((await res.json()).error.code, "NOT_FOUND");
    // The rest of the server is unaffected.
    assert.equal((await fetch(`${env.url}/health`).then((r) => r.json())).status, "ok");
  });

  await t.step("a production server with a token serves it to its holder only", async () => {
    const token = "production-metrics-token-0123";
    const settings = loadConfig({ ...production, METRICS_TOKEN: token }).metrics;
    await using env = await startTestEnv({ metrics: settings });
    const refused = await fetch(`${env.url}/metrics`);
    assert.equal(refused.status, 401);
    await refused.body?.cancel();
    assert.equal(value(await scrape(env, token), "parley_postgres_up"), 1);
  });
});

const LISTEN_DOWN = "parley_listen_up is 0 while the LISTEN connection is dead, 1 once replaced";
Deno.test({ name: LISTEN_DOWN, ignore: needsRealPostgres(LISTEN_DOWN) }, async () => {
  const target = new URL(TEST_DATABASE_URL!);
  await using db = await createTestDatabase();
  await using proxy = startTcpProxy({
    hostname: target.hostname,
    port: Number(target.port || 5432),
  });
  const url = new URL(db.url);
  url.hostname = "127.0.0.1";
  url.port = String(proxy.port);
  // The server reaches Postgres through the proxy only; its heartbeat is quick.
  await using env = await startTestEnv({
    db: { ...db, url: url.href },
    hubTimings: { heartbeatMs: 200, heartbeatTimeoutMs: 300 },
  });
  const admin = postgres(TEST_DATABASE_URL!, { max: 1, onnotice: () => {} });
  try {
    const before = await scrape(env);
    assert.equal(value(before, "parley_listen_up"), 1);
    assert.equal(value(before, "parley_listen_replacements_total"), 0);
    // Black-hole the LISTEN connection, and let no new connection through meanwhile.
    const listening = await admin<{ clientPort: number }[]>`
      select client_port as "clientPort" from pg_stat_activity
      where datname = ${db.name} and query ilike 'listen%'
    `;
    assert.equal(listening.length, 1);
    proxy.swallowNew(true);
    assert.equal(proxy.blackhole({ localPort: listening[0].clientPort }), 1);
    await scrapeUntil(env, (s) => value(s, "parley_listen_up") === 0, "LISTEN down");
    proxy.swallowNew(false);
    proxy.heal();
    const after = await scrapeUntil(env, (s) => value(s, "parley_listen_up") === 1, "LISTEN up");
    assert.ok(value(after, "parley_listen_replacements_total")! >= 1);
  } finally {
    proxy.swallowNew(false);
    proxy.heal();
    await admin.end();
  }
});

Deno.test("/metrics answers while the server waits for the database, and says so", async () => {
  // Nothing listens on port 1: the pool and the LISTEN connection fail at once, again and again.
  const down = "postgres://postgres@127.0.0.1:1/none";
  const sql = connect(down, { max: 1 });
  let waiting = false;
  const server = await serve({
    sql,
    log: memoryLogger(),
    origins: createOriginPolicy("http://localhost:3000"),
    hostname: "127.0.0.1",
    port: 0,
    listenUrl: down,
    onWaiting: () => void (waiting = true),
  });
  server.ready.catch(() => {});
  try {
    await waitFor(() => waiting, "the server waits for the database");
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 503);
    await health.body?.cancel();
    const scraped = await scrape(server);
    assert.equal(value(scraped, "parley_postgres_up"), 0);
    assert.equal(value(scraped, "parley_listen_up"), 0);
  } finally {
    await server.shutdown({ graceMs: 0 });
    await sql.end({ timeout: 0 });
  }
});
