/**
 * Faults between instances that NOTIFY alone does not survive: a LISTEN connection black-holed
 * by the network (no FIN, no RST, as a NAT or a proxy dropping idle flows does) and a committed
 * message whose NOTIFY never went out (the process died between commit and NOTIFY). The
 * heartbeat replaces the dead connection and the reconciliation catches up rooms that are
 * behind, so messages reach every instance's subscribers within seconds either way. Faults are
 * injected with the tests' TCP proxy, never on the shared server.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import type { Message } from "../db/messages.ts";
import { sendMessage } from "../db/messages.ts";
import { hashToken } from "../server/auth.ts";
import { createHub } from "../server/serve.ts";
import {
  BULK_LIMITS,
  createTestDatabase,
  memoryLogger,
  needsRealPostgres,
  signUp,
  startTestEnv,
  TEST_DATABASE_URL,
  type TestDatabase,
  waitFor,
  wsClient,
} from "./_helpers.ts";
import { startTcpProxy } from "./_tcp_proxy.ts";

/** How long delivery between instances may stay broken after a fault. */
const RESUME_MS = 10_000;

/** Where the shared Postgres listens, for the proxy to forward to. */
function postgresAddress(): { hostname: string; port: number } {
  const url = new URL(TEST_DATABASE_URL!);
  return { hostname: url.hostname, port: Number(url.port || 5432) };
}

/** The test database's URL, but reached through 127.0.0.1:`port`. */
function through(db: TestDatabase, port: number): string {
  const url = new URL(db.url);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return url.href;
}

type Trpc = ReturnType<typeof wsClient>["trpc"];

/** Subscribes to a room and records what arrives, and when. */
function watch(trpc: Trpc, roomId: string) {
  const seen = { messages: [] as Message[], errors: [] as string[], started: false };
  const sub = trpc.messages.onMessage.subscribe({ roomId }, {
    onStarted: () => void (seen.started = true),
    onData: (event) => void seen.messages.push(event.data),
    onError: (error) => void seen.errors.push(error.data?.code ?? error.message),
  });
  return { seen, stop: () => sub.unsubscribe() };
}

function seqs(messages: Message[]): number[] {
  return messages.map((m) => m.seq);
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** Milliseconds since `t0`, rounded, for the printed timings. */
function since(t0: number): number {
  return Math.round(performance.now() - t0);
}

const BLACKHOLE =
  "a black-holed LISTEN connection is replaced: delivery from another instance resumes within 10 s, in order, once, and access is re-checked";
Deno.test({ name: BLACKHOLE, ignore: needsRealPostgres(BLACKHOLE) }, async () => {
  await using db = await createTestDatabase();
  await using proxy = startTcpProxy(postgresAddress());
  await using a = await startTestEnv({ db, limits: BULK_LIMITS });
  // Instance B reaches Postgres only through the proxy: its pool and its LISTEN connection.
  // Its reconciliation is off, so that only the heartbeat can restore delivery here.
  await using b = await startTestEnv({
    db: { ...db, url: through(db, proxy.port) },
    limits: BULK_LIMITS,
    hubTimings: { reconcileMs: 3_600_000 },
  });
  const alice = await signUp(a);
  const bob = await signUp(a);
  const carol = await signUp(a);
  const dave = await signUp(a);
  const room = await alice.api.rooms.create.mutate({ name: "Across" });
  for (const user of [bob, carol, dave]) await user.api.rooms.join.mutate({ roomId: room.id });

  const clients = [bob, carol, dave].map((user) => wsClient(b, { token: user.token }));
  const [bobSees, carolSees, daveSees] = clients.map((c) => watch(c.trpc, room.id));
  const admin = postgres(TEST_DATABASE_URL!, { max: 1, onnotice: () => {} });
  try {
    await waitFor(() => [bobSees, carolSees, daveSees].every((w) => w.seen.started), "subscribed");
    await alice.api.messages.send.mutate({ roomId: room.id, content: "before" });
    await waitFor(
      () => [bobSees, carolSees, daveSees].every((w) => w.seen.messages.length === 1),
      "the first message reached B's subscribers",
    );

    // Black-hole B's idle LISTEN connection only: found by its port toward Postgres. B's pool
    // keeps working, and new connections through the proxy forward.
    const listening = await admin<{ pid: number; clientPort: number }[]>`
      select pid, client_port as "clientPort" from pg_stat_activity
      where datname = ${db.name} and query ilike 'listen%'
    `;
    assert.equal(listening.length, 2, "one LISTEN connection per instance");
    const blackholed = listening.filter((row) => proxy.blackhole({ localPort: row.clientPort }));
    assert.equal(blackholed.length, 1, "exactly B's LISTEN connection is black-holed");
    const t0 = performance.now();

    // Meanwhile on A: dave leaves (B misses the announcement) and alice sends ten messages.
    await dave.api.rooms.leave.mutate({ roomId: room.id });
    for (let n = 1; n <= 10; n++) {
      await alice.api.messages.send.mutate({ roomId: room.id, content: `during ${n}` });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    // Track when B notices, while the messages sent during the fault arrive.
    let noticedMs = -1;
    const noticed = () =>
      b.log.lines.some((line) => line.startsWith("LISTEN connection missed a heartbeat"));
    await waitFor(
      () => {
        if (noticedMs < 0 && noticed()) noticedMs = since(t0);
        return [bobSees, carolSees].every((w) => w.seen.messages.length >= 11);
      },
      "the messages sent during the fault reached B's subscribers",
      RESUME_MS,
    );
    const deliveredMs = since(t0);
    await waitFor(() => daveSees.seen.errors.length > 0, "dave's subscription ended", RESUME_MS);
    const revokedMs = since(t0);
    const replaced = b.log.events.find((e) => e.message === "LISTEN connection replaced");
    console.log(
      `black-holed LISTEN connection: noticed after ${noticedMs} ms, replaced in ` +
        `${replaced?.fields.ms} ms, all delivered after ${deliveredMs} ms, access re-checked ` +
        `after ${revokedMs} ms`,
    );

    // Everything arrived in order, once, on both subscribers alike.
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const w of [bobSees, carolSees]) {
      assert.deepEqual(seqs(w.seen.messages), range(1, 11));
      assert.deepEqual(
        w.seen.messages.map((m) => m.content),
        ["before", ...range(1, 10).map((n) => `during ${n}`)],
      );
      assert.deepEqual(w.seen.errors, []);
    }
    assert.deepEqual(daveSees.seen.errors, ["FORBIDDEN"]);
    assert.ok(noticedMs > 0 && noticedMs < 5_000, `noticed after ${noticedMs} ms`);
    assert.ok(replaced, "B logged the replacement");
    assert.ok(!a.log.lines.some((line) => line.startsWith("LISTEN connection")), "A untouched");

    // The dead connection's socket was destroyed (its backend is gone), and B listens again
    // on a new one through the proxy, which still forwards.
    const deadline = Date.now() + RESUME_MS;
    while (
      (await admin`select 1 from pg_stat_activity where pid = ${blackholed[0].pid}`).length > 0
    ) {
      assert.ok(Date.now() < deadline, "the black-holed connection's backend ended");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await alice.api.messages.send.mutate({ roomId: room.id, content: "after" });
    await waitFor(() => bobSees.seen.messages.length === 12, "a live message after the fault");
    assert.equal(bobSees.seen.messages[11].content, "after");
  } finally {
    proxy.heal();
    for (const w of [bobSees, carolSees, daveSees]) w.stop();
    await Promise.all(clients.map((c) => c.close()));
    await admin.end();
  }
});

const LOST = "a committed message whose NOTIFY was lost reaches every instance's subscribers";
Deno.test({ name: LOST, ignore: needsRealPostgres(LOST) }, async () => {
  await using db = await createTestDatabase();
  await using a = await startTestEnv({ db, limits: BULK_LIMITS });
  await using b = await startTestEnv({ db, limits: BULK_LIMITS });
  const alice = await signUp(a);
  const bob = await signUp(b);
  // Two rooms: one lost NOTIFY carries several rooms, and a quiet room gets no later one.
  const rooms = await Promise.all(
    ["Quiet one", "Quiet two"].map((name) => alice.api.rooms.create.mutate({ name })),
  );
  for (const room of rooms) await bob.api.rooms.join.mutate({ roomId: room.id });
  const clients = [wsClient(a, { token: alice.token }), wsClient(b, { token: bob.token })];
  const watchers = clients.flatMap((c) => rooms.map((room) => watch(c.trpc, room.id)));
  try {
    await waitFor(() => watchers.every((w) => w.seen.started), "subscribed");
    // Committed through A's pool with no announcement at all: neither A's hub nor a NOTIFY
    // hears of it, as when a process dies between commit and NOTIFY.
    const t0 = performance.now();
    for (const room of rooms) {
      const result = await sendMessage(a.sql, {
        roomId: room.id,
        tokenHash: hashToken(alice.token),
        content: `unannounced in ${room.name}`,
        clientMessageId: null,
      });
      assert.equal(result.status, "created");
    }
    await waitFor(
      () => watchers.every((w) => w.seen.messages.length === 1),
      "the unannounced messages reached every subscriber",
      5_000,
    );
    console.log(`unannounced messages reached every subscriber after ${since(t0)} ms`);
    // Later messages follow as usual, once each.
    for (const room of rooms) {
      await bob.api.messages.send.mutate({ roomId: room.id, content: "announced" });
    }
    await waitFor(() => watchers.every((w) => w.seen.messages.length === 2), "announced ones");
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const w of watchers) {
      assert.deepEqual(seqs(w.seen.messages), [1, 2]);
      assert.deepEqual(w.seen.errors, []);
    }
  } finally {
    for (const w of watchers) w.stop();
    await Promise.all(clients.map((c) => c.close()));
  }
});

const COST =
  "the hub's checks cost one heartbeat NOTIFY per interval, and one reconciliation query per interval only while rooms are watched";
Deno.test({ name: COST, ignore: needsRealPostgres(COST) }, async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const rooms = await Promise.all(
    [1, 2, 3].map((n) => alice.api.rooms.create.mutate({ name: `Watched ${n}` })),
  );
  // A hub of its own on a pool that records every statement it runs.
  const statements: string[] = [];
  /** The channels of the NOTIFYs it sends, in order. */
  const notified: string[] = [];
  const sql = postgres(env.db.url, {
    max: 2,
    transform: postgres.camel,
    onnotice: () => {},
    fetch_types: false,
    debug: (_connection, query, parameters) => {
      statements.push(query);
      if (/pg_notify/.test(query)) notified.push(String((parameters as unknown[])[0]));
    },
  });
  const hub = createHub({
    sql,
    log: memoryLogger(),
    listenUrl: env.db.url,
    hubTimings: { heartbeatMs: 200, reconcileMs: 200 },
  });
  const count = (pattern: RegExp) => statements.filter((s) => pattern.test(s)).length;
  try {
    await hub.start();
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    assert.equal(count(/from rooms/), 0, "no reconciliation while no room is watched");
    // The heartbeats of the LISTEN connection (presence's items, on their own channel, say
    // hello to the test's server and answer it: not the checks' cost).
    const beats = notified.filter((channel) => channel.startsWith("parley_heartbeat_")).length;
    assert.ok(beats >= 3 && beats <= 7, `${beats} heartbeats in 1.1 s at 200 ms`);

    const unsubscribe = rooms.map((room) => {
      const stop = hub.messages.subscribe(room.id, { deliver() {} });
      hub.messages.setCursor(room.id, 0);
      return stop;
    });
    const before = count(/from jsonb_array_elements_text/);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const reconciliations = count(/from jsonb_array_elements_text/) - before;
    // One query for all three rooms per interval, not one per room.
    assert.ok(reconciliations >= 3 && reconciliations <= 7, `${reconciliations} in 1.1 s`);
    for (const stop of unsubscribe) stop();
    await new Promise((resolve) => setTimeout(resolve, 300));
    const after = count(/from jsonb_array_elements_text/);
    await new Promise((resolve) => setTimeout(resolve, 600));
    assert.equal(count(/from jsonb_array_elements_text/), after, "none once nothing is watched");
  } finally {
    await hub.close();
    await sql.end();
  }
});
