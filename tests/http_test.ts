import assert from "node:assert/strict";
import { connect } from "../db/mod.ts";
import { createOriginPolicy } from "../server/origin.ts";
import { createApp } from "../server/app.ts";
import { createHub } from "../server/serve.ts";
import { DEFAULT_SESSION_TTL_SECONDS, SessionKeeper } from "../server/sessions.ts";
import type { Sql } from "../db/mod.ts";
import { client, errorCode, memoryLogger, startTestEnv } from "./_helpers.ts";
import { DEFAULT_ABUSE_LIMITS } from "../server/limits.ts";
import { DEFAULT_CALL_SETTINGS } from "../server/ice_servers.ts";
import { WriteLimiter } from "../server/rate_limit.ts";

Deno.test("plain HTTP routes", async (t) => {
  await using env = await startTestEnv();

  await t.step("GET /health is 200 with the database up", async () => {
    const res = await fetch(`${env.url}/health`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/json");
    assert.deepEqual(await res.json(), { status: "ok", db: "ok" });
  });

  await t.step("the health query answers over tRPC", async () => {
    assert.deepEqual(await client(env).health.query(), { status: "ok", db: "ok" });
  });

  await t.step("an unknown path is a JSON 404", async () => {
    const res = await fetch(`${env.url}/rooms/123/join`, { method: "POST" });
    assert.equal(res.status, 404);
    assert.deepEqual(await res.json(), {
      error: { code: "NOT_FOUND", message: "No route for POST /rooms/123/join" },
    });
  });

  await t.step("an unknown procedure is a tRPC NOT_FOUND", async () => {
    const res = await fetch(`${env.url}/trpc/rooms.nope`);
    assert.equal(res.status, 404);
    await res.body?.cancel();
  });
});

Deno.test("health reports 503 degraded when Postgres does not answer", async () => {
  // Nothing listens on port 1: every query fails at once.
  const sql = connect("postgres://postgres@127.0.0.1:1/none", { max: 1 });
  const server = serveApp(sql);
  try {
    const res = await fetch(`${server.url}/health`, {
      headers: { origin: "http://localhost:3000" },
    });
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { status: "degraded", db: "down" });
    assert.equal(res.headers.get("access-control-allow-origin"), "http://localhost:3000");
    assert.equal(await errorCode(client(server).health.query()), "SERVICE_UNAVAILABLE");
  } finally {
    await server.shutdown();
    await sql.end();
  }
});

Deno.test("health reports 503 when Postgres accepts but does not answer within a second", async () => {
  // A TCP listener that never speaks: the ping must give up after one second.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) held.push(conn);
  })();
  const sql = connect(`postgres://postgres@127.0.0.1:${listener.addr.port}/none`, { max: 1 });
  const server = serveApp(sql);
  try {
    const res = await fetch(`${server.url}/health`);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { status: "degraded", db: "down" });
  } finally {
    await server.shutdown();
    await sql.end({ timeout: 0 });
    listener.close();
    await accepting.catch(() => {});
    for (const conn of held) conn.close();
  }
});

/** The HTTP app alone on port 0 (no fan-out hub listening), for a database that is down. */
function serveApp(sql: Sql) {
  const log = memoryLogger();
  const app = createApp({
    sql,
    log,
    hub: createHub({ sql, log, listenUrl: "postgres://unused" }),
    origins: createOriginPolicy("http://localhost:3000"),
    limits: DEFAULT_ABUSE_LIMITS,
    writes: new WriteLimiter(DEFAULT_ABUSE_LIMITS),
    clientAddressHeader: null,
    sessions: new SessionKeeper(sql, log, DEFAULT_SESSION_TTL_SECONDS),
    idTokens: null,
    calls: DEFAULT_CALL_SETTINGS,
  });
  app.ready();
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    app.handle,
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    async shutdown() {
      ac.abort();
      await server.finished;
    },
  };
}
