/**
 * The realtime core's fast paths, end to end: sends and subscriptions in one round trip to
 * Postgres, one frame text per message for every subscriber, and resumes that cross from
 * Postgres to the hub's memory to live delivery without losing or repeating a message.
 */
import assert from "node:assert/strict";
import superjson from "superjson";
import type { Message } from "../db/messages.ts";
import {
  BULK_LIMITS,
  client,
  signUp,
  startTestEnv,
  TEST_ORIGINS,
  waitFor,
  wsClient,
} from "./_helpers.ts";

const ORIGIN = TEST_ORIGINS.split(",")[0].trim();

/** Statements of the API's own work: not the broadcast's NOTIFYs or the hub's reconciliation. */
function isCallStatement(query: string): boolean {
  return !/pg_notify|jsonb_array_elements_text|^\s*listen/i.test(query);
}

/** A WebSocket speaking tRPC's protocol by hand: the frames exactly as the server sends them. */
async function rawSubscriber(url: string, token: string, roomId: string, lastEventId?: string) {
  const socket = new WebSocket(`${url.replace(/^http/, "ws")}/trpc?connectionParams=1`, {
    headers: { origin: ORIGIN },
  });
  const frames: string[] = [];
  socket.onmessage = (event) => frames.push(String(event.data));
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = reject;
  });
  socket.send(JSON.stringify({ method: "connectionParams", data: { token } }));
  socket.send(JSON.stringify({
    id: 1,
    method: "subscription",
    params: { path: "messages.onMessage", input: { json: { roomId } }, lastEventId },
  }));
  await waitFor(() => frames.some((f) => f.includes('"started"')), "subscription started");
  const data = () => frames.filter((f) => f.includes('"type":"data"'));
  return {
    frames,
    data,
    /** Seqs received, in order. */
    seqs: () =>
      data().map((f) =>
        (superjson.deserialize(JSON.parse(f).result.data) as { data: Message }).data.seq
      ),
    close: () => socket.close(),
  };
}

Deno.test("a send is one statement over HTTP and over WebSocket, and a subscription opens with one query", async () => {
  const statements: string[] = [];
  await using env = await startTestEnv({
    limits: BULK_LIMITS,
    hubTimings: { reconcileMs: 60_000 },
    onStatement: (query) => statements.push(query),
  });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Round trips" });
  await alice.api.messages.send.mutate({ roomId: room.id, content: "first sight of the token" });
  const counted = async (what: () => Promise<unknown>) => {
    const before = statements.length;
    await what();
    return statements.slice(before).filter(isCallStatement);
  };

  const overHttp = await counted(() =>
    alice.api.messages.send.mutate({ roomId: room.id, content: "over HTTP" })
  );
  assert.equal(overHttp.length, 1, `one statement, got:\n${overHttp.join("\n---\n")}`);
  assert.match(overHttp[0], /insert into messages/);

  const ws = wsClient(env, { token: alice.token, origin: ORIGIN });
  try {
    await ws.trpc.messages.send.mutate({ roomId: room.id, content: "warm the socket" });
    const overWs = await counted(() =>
      ws.trpc.messages.send.mutate({ roomId: room.id, content: "over WebSocket" })
    );
    assert.equal(overWs.length, 1, `one statement, got:\n${overWs.join("\n---\n")}`);

    const subscribing = await counted(async () => {
      const started = Promise.withResolvers<void>();
      ws.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
        onStarted: () => started.resolve(),
        onError: (error) => started.reject(error),
      });
      await started.promise;
    });
    assert.equal(subscribing.length, 1, `one query, got:\n${subscribing.join("\n---\n")}`);
  } finally {
    await ws.close();
  }
});

Deno.test("every subscriber of a room gets the same frame text for a message, a superjson Message", async () => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "One encoding" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const subscribers = [
    await rawSubscriber(env.url, alice.token, room.id),
    await rawSubscriber(env.url, bob.token, room.id),
    await rawSubscriber(env.url, bob.token, room.id),
  ];
  try {
    const sent = await alice.api.messages.send.mutate({ roomId: room.id, content: "héllo 👋" });
    await waitFor(() => subscribers.every((s) => s.data().length === 1), "delivered to all");
    const [frame] = subscribers[0].data();
    for (const s of subscribers) assert.equal(s.data()[0], frame);
    const parsed = JSON.parse(frame);
    assert.equal(parsed.id, 1);
    assert.equal(parsed.result.id, "1");
    const item = superjson.deserialize(parsed.result.data) as { id: string; data: Message };
    assert.equal(item.id, "1");
    assert.deepEqual(item.data, sent);
    assert.ok(item.data.createdAt instanceof Date);
  } finally {
    for (const s of subscribers) s.close();
  }
});

Deno.test("a resume reaching past the hub's memory replays from Postgres, then memory, then live: each message once, in order", async () => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Long absence" });
  // 700 messages committed before anyone watched the room: only Postgres has them.
  await env.sql`
    with bump as (update rooms set last_seq = 700, last_event_id = 700 where id = ${room.id})
    insert into messages (room_id, seq, event_id, user_id, username, content)
    select ${room.id}, s, s, ${alice.user.id}, 'bulk', 'm' || s from generate_series(1, 700) s
  `;
  const watcher = await rawSubscriber(env.url, alice.token, room.id);
  for (let i = 1; i <= 5; i++) {
    await alice.api.messages.send.mutate({ roomId: room.id, content: `live ${i}` });
  }
  await waitFor(() => watcher.data().length === 5, "the watcher has 701..705");
  // Messages keep coming while the resuming subscriber replays.
  const sending = (async () => {
    for (let i = 6; i <= 30; i++) {
      await alice.api.messages.send.mutate({ roomId: room.id, content: `live ${i}` });
    }
  })();
  const resumed = await rawSubscriber(env.url, alice.token, room.id, "10");
  try {
    await sending;
    await waitFor(() => resumed.seqs().length >= 720, "replayed and live", 10_000);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const expected = Array.from({ length: 720 }, (_, i) => 11 + i);
    assert.deepEqual(resumed.seqs(), expected);
    assert.deepEqual(watcher.seqs(), Array.from({ length: 30 }, (_, i) => 701 + i));
  } finally {
    watcher.close();
    resumed.close();
  }
});

Deno.test("concurrent sends to a room are committed together: gap-free, each once, errors per send", async () => {
  let inserts = 0;
  await using env = await startTestEnv({
    limits: BULK_LIMITS,
    onStatement: (query) => void (/insert into messages/.test(query) && inserts++),
  });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const carol = await signUp(env); // not a member
  const room = await alice.api.rooms.create.mutate({ name: "Group commit" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  // One HTTP request per send, all at once, while the room's row is locked elsewhere: the first
  // send waits on the lock, the others queue behind it and then go together.
  const [a, b] = [alice, bob].map(({ token }) => client(env, { token, unbatched: true }));
  let sends: Promise<Message>[] = [];
  await env.sql.begin(async (tx) => {
    await tx`select 1 from rooms where id = ${room.id} for update`;
    sends = Array.from(
      { length: 60 },
      (_, i) => (i % 2 ? a : b).messages.send.mutate({ roomId: room.id, content: `m${i}` }),
    );
    // Long enough for the requests to arrive, well within the 2 s lock_timeout.
    await new Promise((resolve) => setTimeout(resolve, 1000));
  });
  const sent = await Promise.all(sends);
  assert.ok(inserts <= 5, `60 sends in ${inserts} insert statements: they were committed together`);
  // The same clientMessageId twice at once, and a non-member's send, among other sends.
  const clientMessageId = crypto.randomUUID();
  const twice = [1, 2].map(() =>
    a.messages.send.mutate({ roomId: room.id, content: "once", clientMessageId })
  );
  const refused = carol.api.messages.send.mutate({ roomId: room.id, content: "no" }).then(
    () => "OK",
    (error) => error.data?.code,
  );
  const [first, second] = await Promise.all(twice);
  assert.equal(await refused, "FORBIDDEN");
  assert.equal(first.id, second.id);
  const seqs = [...sent.map((m) => m.seq), first.seq].sort((a, b) => a - b);
  assert.deepEqual(seqs, Array.from({ length: 61 }, (_, i) => i + 1), "gap-free, each once");
  for (const [i, message] of sent.entries()) assert.equal(message.content, `m${i}`);
  const [{ count, lastSeq }] = await env.sql<[{ count: number; lastSeq: number }]>`
    select count(*)::int as count, (select last_seq from rooms where id = ${room.id}) as last_seq
    from messages where room_id = ${room.id}
  `;
  assert.deepEqual({ count, lastSeq }, { count: 61, lastSeq: 61 });
});
