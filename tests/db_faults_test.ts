/**
 * Postgres faults while parley runs or starts: the database down or mute at boot, backends
 * killed mid-connection, an outage between calls, a row lock held on a busy room. No fault of
 * the database or the network ends the process; callers get SERVICE_UNAVAILABLE with a retry
 * hint within a bounded time; one stuck room does not stall the others. Faults are injected
 * with a TCP proxy of the test's own and pg_terminate_backend, never on the shared server.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { type Message } from "../client/mod.ts";
import {
  BULK_LIMITS,
  BULK_LIMITS_ENV,
  callError,
  client,
  createTestDatabase,
  freePort,
  needsRealPostgres,
  signUp,
  startTestEnv,
  TEST_DATABASE_URL,
  type TestDatabase,
} from "./_helpers.ts";
import { LOCAL_SERVER_ENV, spawnServer, terminate } from "../scripts/server_process.ts";
import { startTcpProxy } from "./_tcp_proxy.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A port nothing listens on (for now). */

/** The test database's URL, but reached through 127.0.0.1:`port`. */
function through(db: TestDatabase, port: number): string {
  const url = new URL(db.url);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return url.href;
}

const POSTGRES = () => {
  const url = new URL(TEST_DATABASE_URL!);
  return { hostname: url.hostname, port: Number(url.port || 5432) };
};

const BOOT = "with the database down at boot the server listens, answers 503, then serves";
Deno.test({ name: BOOT, ignore: needsRealPostgres(BOOT) }, async () => {
  await using db = await createTestDatabase();
  const port = freePort();
  await using server = await spawnServer({
    DATABASE_URL: through(db, port),
    ...LOCAL_SERVER_ENV,
  });
  const [, url] = await server.waitForLine(
    "stdout",
    /^parley listening on (http:\S+) .*waiting for the database/,
  );
  await server.waitForLine("stderr", /Database unreachable while preparing the database/, 5_000);
  const health = await fetch(`${url}/health`);
  assert.equal(health.status, 503);
  assert.deepEqual(await health.json(), { status: "starting", db: "down" });
  const call = await fetch(`${url}/trpc/users.create`, {
    method: "POST",
    headers: { "content-type": "application/json", origin: "https://app.example.com" },
    body: JSON.stringify({ json: { username: "too_early" } }),
  });
  assert.equal(call.status, 503);
  assert.equal(call.headers.get("retry-after"), "1");
  assert.equal(call.headers.get("access-control-allow-origin"), "https://app.example.com");
  assert.equal((await call.json()).error.json.data.code, "SERVICE_UNAVAILABLE");
  // Still alive a few seconds later (it used to exit after 0.1 s), then Postgres appears.
  await sleep(2_000);
  assert.equal(server.stdout.some((line) => line.startsWith("Database reachable")), false);
  await using _proxy = startTcpProxy(POSTGRES(), { port });
  await server.waitForLine("stdout", /^Database reachable: the API is open$/, 15_000);
  assert.equal((await fetch(`${url}/health`)).status, 200);
  const { user } = await client({ url }).users.create.mutate({ username: "on_time" });
  assert.equal(user.username, "on_time");
  assert.equal((await terminate(server))?.code, 0);
});

const MUTE = "a database that accepts TCP and never answers: 503 at once, served once it answers";
Deno.test({ name: MUTE, ignore: needsRealPostgres(MUTE) }, async () => {
  await using db = await createTestDatabase();
  await using proxy = startTcpProxy(POSTGRES());
  proxy.swallowNew(true);
  await using server = await spawnServer({
    DATABASE_URL: through(db, proxy.port),
    ...LOCAL_SERVER_ENV,
  });
  const [, url] = await server.waitForLine(
    "stdout",
    /^parley listening on (http:\S+) .*waiting for the database/,
    15_000,
  );
  const started = Date.now();
  const health = await fetch(`${url}/health`);
  assert.equal(health.status, 503);
  await health.body?.cancel();
  assert.ok(Date.now() - started < 1_500, "health answered without waiting on the database");
  proxy.swallowNew(false);
  await server.waitForLine("stdout", /^Database reachable: the API is open$/, 30_000);
  assert.equal((await fetch(`${url}/health`)).status, 200);
  assert.equal((await terminate(server))?.code, 0);
});

const KILLED =
  "backends killed again and again, even during their first statement, never end the process";
Deno.test({ name: KILLED, ignore: needsRealPostgres(KILLED) }, async () => {
  await using db = await createTestDatabase();
  await using server = await spawnServer({
    DATABASE_URL: db.url,
    ...LOCAL_SERVER_ENV,
    ...BULK_LIMITS_ENV,
  });
  const [, url] = await server.waitForLine("stdout", /^parley listening on (http:\S+) /);
  const alice = await signUp({ url });
  const room = await alice.api.rooms.create.mutate({ name: "Killing floor" });
  const admin = postgres(TEST_DATABASE_URL!, { max: 1, onnotice: () => {} });
  let killing = true;
  let kills = 0;
  const killer = (async () => {
    while (killing) {
      const rows = await admin`
        select pg_terminate_backend(pid) from pg_stat_activity
        where datname = ${db.name} and application_name = 'parley' and pid <> pg_backend_pid()
      `.catch(() => []);
      kills += rows.length;
      await sleep(50);
    }
  })();
  // Senders keep sending through the storm, each message retried with its clientMessageId.
  const acknowledged: Message[] = [];
  const deadline = Date.now() + 8_000;
  let i = 0;
  try {
    while (Date.now() < deadline) {
      const clientMessageId = crypto.randomUUID();
      const content = `storm ${i++}`;
      for (let attempt = 0; attempt < 50; attempt++) {
        try {
          acknowledged.push(
            await alice.api.messages.send.mutate({ roomId: room.id, content, clientMessageId }),
          );
          break;
        } catch {
          await sleep(20);
        }
      }
    }
  } finally {
    killing = false;
    await killer;
    await admin.end();
  }
  assert.ok(kills > 20, `only ${kills} backends were killed`);
  // The process is alive and healthy, and every acknowledged message is stored once, in order.
  assert.equal(
    server.child.pid > 0 && !(await Promise.race([server.finished(), sleep(500)])),
    true,
  );
  let healthy = false;
  for (let n = 0; n < 50 && !healthy; n++) {
    healthy = (await fetch(`${url}/health`).then((r) => (r.body?.cancel(), r.status))) === 200;
    if (!healthy) await sleep(100);
  }
  assert.ok(healthy, "healthy again after the storm");
  const stored: Message[] = [];
  for (let after = 0;;) {
    const { items } = await alice.api.messages.list.query({
      roomId: room.id,
      afterSeq: after,
      limit: 100,
    });
    stored.push(...items);
    if (items.length < 100) break;
    after = items.at(-1)!.seq;
  }
  assert.deepEqual(stored.map((m) => m.seq), stored.map((_, n) => n + 1));
  assert.deepEqual(
    new Set(stored.map((m) => m.clientMessageId)).size,
    stored.length,
    "no message stored twice",
  );
  for (const message of acknowledged) {
    assert.ok(stored.some((m) => m.id === message.id), `acknowledged ${message.seq} is stored`);
  }
  assert.equal((await terminate(server))?.code, 0, server.stderr.join("\n"));
  const uncaught = server.stderr.filter((line) => /Uncaught|PostgresError.*terminating/.test(line));
  assert.deepEqual(uncaught, []);
});

const OUTAGE = "calls during an outage are SERVICE_UNAVAILABLE with a retry hint, in bounded time";
Deno.test({ name: OUTAGE, ignore: needsRealPostgres(OUTAGE) }, async () => {
  await using db = await createTestDatabase();
  const port = freePort();
  let proxy = startTcpProxy(POSTGRES(), { port });
  try {
    await using env = await startTestEnv({
      db: { ...db, url: through(db, port) },
      limits: BULK_LIMITS,
    });
    const alice = await signUp(env);
    const room = await alice.api.rooms.create.mutate({ name: "Outage" });
    // The database goes away: connections are cut and new ones refused.
    await proxy.close();
    for (
      const call of [
        () => alice.api.messages.send.mutate({ roomId: room.id, content: "lost?" }),
        () => alice.api.messages.list.query({ roomId: room.id }),
        () => alice.api.users.me.query(),
      ]
    ) {
      const started = Date.now();
      const error = await callError(call());
      assert.equal(error.data?.code, "SERVICE_UNAVAILABLE", error.message);
      assert.ok((error.data?.retryAfterMs ?? 0) > 0);
      assert.equal(error.message, "Database unavailable: retry shortly");
      assert.ok(Date.now() - started < 11_000);
    }
    const health = await fetch(`${env.url}/health`);
    assert.equal(health.status, 503);
    await health.body?.cancel();
    // It comes back: so do the calls, and nothing was stored meanwhile.
    proxy = startTcpProxy(POSTGRES(), { port });
    let sent: Message | null = null;
    for (let n = 0; n < 50 && !sent; n++) {
      sent = await alice.api.messages.send.mutate({ roomId: room.id, content: "back" })
        .catch(() => null);
      if (!sent) await sleep(100);
    }
    assert.equal(sent?.seq, 1);
  } finally {
    await proxy.close();
  }
});

const LOCKED =
  "a row lock held on one room's counter does not stall other rooms or /health, and its sends end in bounded time";
Deno.test({ name: LOCKED, ignore: needsRealPostgres(LOCKED) }, async () => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const busy = await alice.api.rooms.create.mutate({ name: "Busy" });
  const other = await alice.api.rooms.create.mutate({ name: "Other" });
  const holder = postgres(env.db.url, { max: 1, onnotice: () => {} });
  const { promise: release, resolve: releaseLock } = Promise.withResolvers<void>();
  const { promise: locked, resolve: lockTaken } = Promise.withResolvers<void>();
  const holding = holder.begin(async (sql) => {
    await sql`select * from rooms where id = ${busy.id} for update`;
    lockTaken();
    await release;
  });
  await locked;
  try {
    const started = Date.now();
    const unbatched = client(env, { token: alice.token, unbatched: true });
    const stuck = Array.from(
      { length: 40 },
      (_, n) =>
        unbatched.messages.send.mutate({ roomId: busy.id, content: `stuck ${n}` })
          .then(() => "OK", (error) => error.data?.code as string),
    );
    // Meanwhile the other room and /health answer as usual.
    const latencies: number[] = [];
    for (let n = 0; n < 20; n++) {
      const t0 = performance.now();
      await alice.api.messages.send.mutate({ roomId: other.id, content: `fine ${n}` });
      latencies.push(performance.now() - t0);
    }
    latencies.sort((a, b) => a - b);
    assert.ok(latencies[10] < 500, `other room's p50 ${latencies[10]} ms`);
    const health = await fetch(`${env.url}/health`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
    // The stuck sends end within a bounded time, refused with a retry hint.
    const outcomes = await Promise.all(stuck);
    assert.ok(Date.now() - started < 14_000, `${Date.now() - started} ms`);
    assert.deepEqual(new Set(outcomes), new Set(["SERVICE_UNAVAILABLE"]));
  } finally {
    releaseLock();
    await holding;
    await holder.end();
  }
  // Released: the room works and its seqs have no gap.
  const after = await alice.api.messages.send.mutate({ roomId: busy.id, content: "free" });
  assert.equal(after.seq, 1);
});
