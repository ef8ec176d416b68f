import assert from "node:assert/strict";
import postgres from "postgres";
import type { Message } from "../db/messages.ts";
import { hashToken } from "../server/auth.ts";
import { createHub } from "../server/serve.ts";
import { DEFAULT_SESSION_TTL_SECONDS, SessionKeeper } from "../server/sessions.ts";
import { appRouter } from "../server/router.ts";
import { createCallerFactory } from "../server/trpc.ts";
import {
  BULK_LIMITS,
  client,
  memoryLogger,
  needsRealPostgres,
  signUp,
  startTestEnv,
  TEST_DATABASE_URL,
  TEST_ORIGINS,
  upgradeStatus,
  waitFor,
  wsClient,
  type WsClientOptions,
} from "./_helpers.ts";
import { DEFAULT_ABUSE_LIMITS } from "../server/limits.ts";
import { DEFAULT_CALL_SETTINGS } from "../server/ice_servers.ts";
import { WriteLimiter } from "../server/rate_limit.ts";
import { SendQueue } from "../server/send_queue.ts";

const ALLOWED_ORIGIN = "https://app.example.com";

type Trpc = ReturnType<typeof wsClient>["trpc"];

/** Subscribes to a room and records what arrives. */
function watch(trpc: Trpc, roomId: string, lastEventId?: string) {
  const seen = { messages: [] as Message[], errors: [] as string[], started: false };
  const sub = trpc.messages.onMessage.subscribe({ roomId, lastEventId }, {
    onStarted: () => void (seen.started = true),
    onData: (event) => void seen.messages.push(event.data),
    onError: (error) => void seen.errors.push(error.data?.code ?? error.message),
  });
  return { ...seen, seen, stop: () => sub.unsubscribe() };
}

function seqs(messages: Message[]): number[] {
  return messages.map((m) => m.seq);
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

Deno.test("realtime", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env, { avatarUrl: "https://cdn.example.com/alice.png" });
  const bob = await signUp(env, { avatarUrl: "https://cdn.example.com/bob.png" });
  const room = await alice.api.rooms.create.mutate({ name: "Live" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const open: { close(): Promise<void> }[] = [];
  const connect = (options: WsClientOptions) => {
    const c = wsClient(env, { origin: ALLOWED_ORIGIN, ...options });
    open.push(c);
    return c;
  };

  try {
    await t.step("the upgrade refuses each refused origin with 403, never 101", async () => {
      for (
        const origin of [
          "null",
          "https://evil-app.example.com",
          "https://app.example.com.evil.com",
          "https://app.example.com.",
          "https://app.example.com:8443",
          "http://app.example.com",
          "https://video-chat-frontend-a.b-dalkirks-projects.vercel.app",
        ]
      ) {
        env.log.lines.length = 0;
        assert.match(await upgradeStatus(env.url, { origin }), /^HTTP\/1.1 403/, origin);
        assert.ok(env.log.lines.some((line) => line.includes(`Refused origin ${origin}`)), origin);
      }
      for (const origin of [ALLOWED_ORIGIN, "http://localhost:3000", null]) {
        assert.match(await upgradeStatus(env.url, { origin }), /^HTTP\/1.1 101/, String(origin));
      }
      assert.ok(TEST_ORIGINS.includes(ALLOWED_ORIGIN));
    });

    await t.step("subscribing without a token or with a bad token is UNAUTHORIZED", async () => {
      for (const options of [{}, { token: "B".repeat(43) }]) {
        const c = connect(options);
        const w = watch(c.trpc, room.id);
        await waitFor(() => w.errors.length > 0, "an error");
        assert.deepEqual(w.errors, ["UNAUTHORIZED"]);
        assert.deepEqual(w.messages, []);
        // Public procedures still work on that connection.
        assert.deepEqual(await c.trpc.health.query(), { status: "ok", db: "ok" });
      }
    });

    await t.step(
      "a non-member is FORBIDDEN and an unknown room NOT_FOUND, with no events",
      async () => {
        const carol = await signUp(env);
        const c = connect({ token: carol.token });
        const w = watch(c.trpc, room.id);
        const unknown = watch(c.trpc, "00000000-0000-4000-8000-000000000000");
        await waitFor(() => w.errors.length > 0 && unknown.errors.length > 0, "two errors");
        await alice.api.messages.send.mutate({ roomId: room.id, content: "members only" });
        await new Promise((r) => setTimeout(r, 100));
        assert.deepEqual([w.errors, unknown.errors], [["FORBIDDEN"], ["NOT_FOUND"]]);
        assert.deepEqual([w.messages, unknown.messages], [[], []]);
      },
    );

    await t.step("two members see each other's messages live, in order, with avatars", async () => {
      const live = await alice.api.rooms.create.mutate({ name: "Duet" });
      await bob.api.rooms.join.mutate({ roomId: live.id });
      const a = watch(connect({ token: alice.token }).trpc, live.id);
      const b = watch(connect({ token: bob.token }).trpc, live.id);
      await waitFor(() => a.seen.started && b.seen.started, "both subscribed");
      for (let i = 0; i < 10; i++) {
        const sender = i % 2 === 0 ? alice : bob;
        await sender.api.messages.send.mutate({ roomId: live.id, content: `turn ${i}` });
      }
      await waitFor(() => a.messages.length >= 10 && b.messages.length >= 10, "10 each");
      assert.deepEqual(seqs(a.messages), range(1, 10));
      assert.deepEqual(b.messages, a.messages);
      assert.equal(a.messages[1].avatarUrl, "https://cdn.example.com/bob.png");
      assert.equal(a.messages[0].avatarUrl, "https://cdn.example.com/alice.png");
      assert.equal(b.messages[9].content, "turn 9");
    });

    await t.step("a subscriber whose socket is cut gets every message once, in order", async () => {
      const flaky = await alice.api.rooms.create.mutate({ name: "Flaky" });
      await bob.api.rooms.join.mutate({ roomId: flaky.id });
      const c = connect({ token: bob.token });
      const w = watch(c.trpc, flaky.id);
      await waitFor(() => w.seen.started, "subscribed");
      const sending = (async () => {
        for (let i = 1; i <= 60; i++) {
          await alice.api.messages.send.mutate({ roomId: flaky.id, content: `n${i}` });
          if (i % 10 === 0) await new Promise((r) => setTimeout(r, 20));
        }
      })();
      for (let cut = 0; cut < 3; cut++) {
        await waitFor(() => w.messages.length > cut * 15 + 5, "progress before the cut");
        c.sockets[c.sockets.length - 1].close();
      }
      await sending;
      await waitFor(() => w.messages.length >= 60, "all 60 messages");
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(seqs(w.messages), range(1, 60));
      assert.ok(c.sockets.length >= 4, `reconnected ${c.sockets.length - 1} times`);
      assert.deepEqual(w.errors, []);
    });

    await t.step("lastEventId replays exactly what was missed, then live messages", async () => {
      const replay = await alice.api.rooms.create.mutate({ name: "Replay" });
      for (let i = 1; i <= 5; i++) {
        await alice.api.messages.send.mutate({ roomId: replay.id, content: `r${i}` });
      }
      const w = watch(connect({ token: alice.token }).trpc, replay.id, "2");
      await waitFor(() => w.messages.length >= 3, "replayed");
      await alice.api.messages.send.mutate({ roomId: replay.id, content: "r6" });
      await waitFor(() => w.messages.length >= 4, "live");
      assert.deepEqual(seqs(w.messages), [3, 4, 5, 6]);
      const fresh = watch(connect({ token: alice.token }).trpc, replay.id);
      await waitFor(() => fresh.seen.started, "fresh started");
      await alice.api.messages.send.mutate({ roomId: replay.id, content: "r7" });
      await waitFor(() => fresh.messages.length >= 1, "fresh live");
      assert.deepEqual(seqs(fresh.messages), [7], "without lastEventId: only new messages");
    });

    await t.step(
      "an impossible lastEventId or a replay over 1000 is PRECONDITION_FAILED",
      async () => {
        const big = await alice.api.rooms.create.mutate({ name: "Backlog" });
        await env.sql`
        with bump as (update rooms set last_seq = 1002, last_event_id = 1002 where id = ${big.id})
        insert into messages (room_id, seq, event_id, user_id, username, content)
        select ${big.id}, s, s, ${alice.user.id}, 'bulk', 'm' || s from generate_series(1, 1002) s
      `;
        const c = connect({ token: alice.token });
        for (const lastEventId of ["1", "5000", "-1", "abc", "1.5"]) {
          const w = watch(c.trpc, big.id, lastEventId);
          await waitFor(() => w.errors.length > 0, `error for ${lastEventId}`);
          assert.deepEqual(w.errors, ["PRECONDITION_FAILED"], lastEventId);
          assert.deepEqual(w.messages, [], lastEventId);
        }
        const ok = watch(c.trpc, big.id, "2");
        await waitFor(() => ok.messages.length >= 1000, "a replay of exactly 1000");
        assert.deepEqual(seqs(ok.messages), range(3, 1002));
      },
    );

    await t.step("leaving the room and logging out end open subscriptions", async () => {
      const exit = await alice.api.rooms.create.mutate({ name: "Exit" });
      const dave = await signUp(env);
      await dave.api.rooms.join.mutate({ roomId: exit.id });
      const leaver = watch(connect({ token: dave.token }).trpc, exit.id);
      const { token } = await client(env).users.create.mutate({ username: `erin_${Date.now()}` });
      const erin = client(env, { token });
      await erin.rooms.join.mutate({ roomId: exit.id });
      const loggedOut = watch(connect({ token }).trpc, exit.id);
      await waitFor(() => leaver.seen.started && loggedOut.seen.started, "both subscribed");
      await dave.api.rooms.leave.mutate({ roomId: exit.id });
      await erin.users.logout.mutate();
      await waitFor(
        () => leaver.errors.length > 0 && loggedOut.errors.length > 0,
        "both subscriptions ended",
        1000,
      );
      assert.deepEqual([leaver.errors, loggedOut.errors], [["FORBIDDEN"], ["UNAUTHORIZED"]]);
      await alice.api.messages.send.mutate({ roomId: exit.id, content: "after they went" });
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual([leaver.messages, loggedOut.messages], [[], []]);
    });

    const LOST = "access lost while the listening connection was down ends the subscription";
    await t.step({
      name: LOST,
      ignore: needsRealPostgres(LOST),
      fn: async () => {
        const quiet = await alice.api.rooms.create.mutate({ name: "Quiet exit" });
        const gina = await signUp(env);
        await gina.api.rooms.join.mutate({ roomId: quiet.id });
        const w = watch(connect({ token: gina.token }).trpc, quiet.id);
        await waitFor(() => w.seen.started, "subscribed");
        // Remove the membership behind the server's back (no announcement), then drop the
        // listening connection: on reconnect the hub must re-check who may still listen.
        await env
          .sql`delete from room_members where room_id = ${quiet.id} and user_id = ${gina.user.id}`;
        const admin = postgres(TEST_DATABASE_URL!, { max: 1, onnotice: () => {} });
        try {
          await admin`
          select pg_terminate_backend(pid) from pg_stat_activity
          where datname = ${env.db.name} and query ilike 'listen%'
        `;
        } finally {
          await admin.end();
        }
        await waitFor(() => w.errors.length > 0, "the subscription ended");
        assert.deepEqual(w.errors, ["FORBIDDEN"]);
      },
    });

    await t.step(
      "after a logout, the open WebSocket connection can no longer act as the user",
      async () => {
        const { token } = await client(env).users.create.mutate({
          username: `frank_${Date.now()}`,
        });
        const c = connect({ token });
        const mine = await c.trpc.rooms.create.mutate({ name: "Before logout" });
        await client(env, { token }).users.logout.mutate();
        let code = "OK";
        await c.trpc.messages.send.mutate({ roomId: mine.id, content: "ghost" }).catch((error) => {
          code = error.data?.code;
        });
        assert.equal(code, "UNAUTHORIZED");
        const [{ n }] = await env
          .sql`select count(*)::int as n from messages where room_id = ${mine.id}`;
        assert.equal(n, 0);
      },
    );
  } finally {
    await Promise.all(open.map((c) => c.close()));
  }
});

Deno.test("a subscription cancelled during setup or before it is read leaves nothing behind", async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Fleeting" });
  const log = memoryLogger();
  const hub = createHub({ sql: env.sql, log, crossInstance: false });
  const context = {
    sql: env.sql,
    log,
    hub,
    limits: DEFAULT_ABUSE_LIMITS,
    writes: new WriteLimiter(DEFAULT_ABUSE_LIMITS),
    sendQueue: new SendQueue(env.sql),
    sessions: new SessionKeeper(env.sql, log, DEFAULT_SESSION_TTL_SECONDS),
    idTokens: null,
    calls: DEFAULT_CALL_SETTINGS,
    userAgent: null,
    transport: "ws" as const,
    address: "127.0.0.1",
    connection: {
      key: "ws:test",
      subscriptions: 0,
      callsInFlight: 0,
      closed: new AbortController().signal,
    },
    caller: { user: () => Promise.resolve(alice.user) },
    tokenHash: hashToken(alice.token),
  };
  const callerFor = (signal: AbortSignal) => createCallerFactory(appRouter)(context, { signal });
  // Abort at different points of setup (before, during and after its queries), then do what
  // tRPC does with a stream nobody read: return() it.
  for (const ticks of [0, 1, 2, 3, 5, 8, 13, 21, 50, 100]) {
    const ac = new AbortController();
    const subscribing = callerFor(ac.signal).messages.onMessage({ roomId: room.id });
    for (let i = 0; i < ticks; i++) await new Promise((r) => setTimeout(r, 0));
    ac.abort();
    try {
      const stream = await subscribing;
      await stream[Symbol.asyncIterator]().return?.();
    } catch {
      // Cancelled during setup.
    }
  }
  // One that is read and then stopped normally.
  const ac = new AbortController();
  const stream = await callerFor(ac.signal).messages.onMessage({ roomId: room.id });
  const reading = stream[Symbol.asyncIterator]().next();
  const sent = await alice.api.messages.send.mutate({ roomId: room.id, content: "one" });
  hub.messages.committed(sent.roomId, sent.seq, sent); // not the server's hub: hand it over
  const first = await reading;
  assert.equal((first.value as unknown as [string, Message])[1].content, "one");
  ac.abort();
  await stream[Symbol.asyncIterator]().return?.();
  assert.deepEqual(hub.stats(), { rooms: 0, listeners: 0, holders: 0 });
  // Every subscription gave back its place under the per-socket cap.
  assert.equal(context.connection.subscriptions, 0);
});
