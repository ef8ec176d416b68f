/** Several parley instances on one Postgres behave as one, through LISTEN/NOTIFY. */
import assert from "node:assert/strict";
import postgres from "postgres";
import type { Message } from "../db/messages.ts";
import {
  BULK_LIMITS,
  createTestDatabase,
  needsRealPostgres,
  signUp,
  startTestEnv,
  TEST_DATABASE_URL,
  waitFor,
  wsClient,
} from "./_helpers.ts";

const NAME = "two instances on one database deliver identical sequences";
Deno.test({ name: NAME, ignore: needsRealPostgres(NAME) }, async (t) => {
  await using db = await createTestDatabase();
  await using one = await startTestEnv({ db, limits: BULK_LIMITS });
  await using two = await startTestEnv({ db, limits: BULK_LIMITS });
  const instances = [one, two];
  const users = await Promise.all(
    instances.flatMap((env) => [signUp(env), signUp(env)]),
  );
  const room = await users[0].api.rooms.create.mutate({ name: "Everywhere" });
  await Promise.all(users.slice(1).map((u) => u.api.rooms.join.mutate({ roomId: room.id })));

  // Two subscribers on each instance.
  const clients = users.map((u, i) => wsClient(instances[Math.floor(i / 2)], { token: u.token }));
  const received = clients.map(() => [] as Message[]);
  const started = clients.map(() => false);
  const subs = clients.map((c, i) =>
    c.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
      onStarted: () => void (started[i] = true),
      onData: (event) => void received[i].push(event.data),
    })
  );

  /** Sends `count` messages from every user at once (senders on both instances). */
  async function burst(count: number) {
    await Promise.all(users.map(async (u, i) => {
      for (let k = 0; k < count; k++) {
        await u.api.messages.send.mutate({ roomId: room.id, content: `u${i} #${k}` });
      }
    }));
  }

  const expectAll = async (total: number) => {
    await waitFor(() => received.every((r) => r.length >= total), `${total} messages everywhere`);
    await new Promise((r) => setTimeout(r, 200));
    const expected = Array.from({ length: total }, (_, i) => i + 1);
    for (const r of received) assert.deepEqual(r.map((m) => m.seq), expected);
    for (const r of received.slice(1)) assert.deepEqual(r, received[0]);
  };

  try {
    await waitFor(() => started.every(Boolean), "all subscribed");

    await t.step(
      "senders on both instances reach subscribers on both, 1..N exactly once",
      async () => {
        await burst(25);
        await expectAll(100);
      },
    );

    await t.step("after the listening backends are killed mid-run nothing is lost", async () => {
      const admin = postgres(TEST_DATABASE_URL!, { max: 1, onnotice: () => {} });
      try {
        const sending = burst(25);
        await waitFor(() => received.every((r) => r.length >= 110), "some progress");
        const killed = await admin`
          select pg_terminate_backend(pid) as ok from pg_stat_activity
          where datname = ${db.name} and query ilike 'listen%'
        `;
        assert.ok(killed.length >= 2, `terminated ${killed.length} listening backends`);
        await sending;
        await expectAll(200);
      } finally {
        await admin.end();
      }
    });
  } finally {
    for (const sub of subs) sub.unsubscribe();
    await Promise.all(clients.map((c) => c.close()));
  }
});
