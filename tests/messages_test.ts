import assert from "node:assert/strict";
import { BULK_LIMITS, callError, client, errorCode, signUp, startTestEnv } from "./_helpers.ts";

const UNKNOWN_ROOM = "00000000-0000-4000-8000-000000000000";

Deno.test("messages", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env, { avatarUrl: "https://cdn.example.com/alice.png" });
  const bob = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "General" });
  await bob.api.rooms.join.mutate({ roomId: room.id });

  await t.step("messages.send stores the message with seq and the sender's avatar", async () => {
    const message = await alice.api.messages.send.mutate({ roomId: room.id, content: " hello\n" });
    assert.equal(message.seq, 1);
    assert.equal(message.content, "hello");
    assert.equal(message.roomId, room.id);
    assert.equal(message.userId, alice.user.id);
    assert.equal(message.username, alice.user.username);
    assert.equal(message.avatarUrl, "https://cdn.example.com/alice.png");
    assert.equal(message.clientMessageId, null);
    assert.ok(message.createdAt instanceof Date);
    const { items } = await bob.api.messages.list.query({ roomId: room.id });
    assert.deepEqual(items, [message]);
  });

  await t.step(
    "a message keeps the avatar it was sent with after the sender changes it",
    async () => {
      const before = await alice.api.messages.send.mutate({ roomId: room.id, content: "old look" });
      await alice.api.users.update.mutate({ avatarUrl: "https://cdn.example.com/alice-2.png" });
      const after = await alice.api.messages.send.mutate({ roomId: room.id, content: "new look" });
      const { items } = await bob.api.messages.list.query({ roomId: room.id });
      const bySeq = new Map(items.map((m) => [m.seq, m]));
      assert.equal(bySeq.get(before.seq)?.avatarUrl, "https://cdn.example.com/alice.png");
      assert.equal(bySeq.get(after.seq)?.avatarUrl, "https://cdn.example.com/alice-2.png");
    },
  );

  await t.step(
    "a non-member can neither send nor list (FORBIDDEN), and nothing is stored",
    async () => {
      const carol = await signUp(env);
      const [{ n: before }] = await env.sql`select count(*)::int as n from messages`;
      assert.equal(
        await errorCode(carol.api.messages.send.mutate({ roomId: room.id, content: "let me in" })),
        "FORBIDDEN",
      );
      assert.equal(
        await errorCode(carol.api.messages.list.query({ roomId: room.id })),
        "FORBIDDEN",
      );
      const [{ n: after }] = await env.sql`select count(*)::int as n from messages`;
      assert.equal(after, before);
    },
  );

  await t.step(
    "sending to an unknown room is NOT_FOUND; without a token UNAUTHORIZED",
    async () => {
      assert.equal(
        await errorCode(alice.api.messages.send.mutate({ roomId: UNKNOWN_ROOM, content: "hi" })),
        "NOT_FOUND",
      );
      assert.equal(
        await errorCode(client(env).messages.send.mutate({ roomId: room.id, content: "hi" })),
        "UNAUTHORIZED",
      );
    },
  );

  await t.step("a member who left can no longer send", async () => {
    const dave = await signUp(env);
    await dave.api.rooms.join.mutate({ roomId: room.id });
    await dave.api.messages.send.mutate({ roomId: room.id, content: "bye" });
    await dave.api.rooms.leave.mutate({ roomId: room.id });
    assert.equal(
      await errorCode(dave.api.messages.send.mutate({ roomId: room.id, content: "still here?" })),
      "FORBIDDEN",
    );
  });

  await t.step("messages.list pages back with beforeSeq and catches up with afterSeq", async () => {
    const paged = await alice.api.rooms.create.mutate({ name: "Paging" });
    for (let i = 1; i <= 12; i++) {
      await alice.api.messages.send.mutate({ roomId: paged.id, content: `m${i}` });
    }
    const seqs = (page: { items: { seq: number }[] }) => page.items.map((m) => m.seq);
    const latest = await alice.api.messages.list.query({ roomId: paged.id, limit: 5 });
    assert.deepEqual(seqs(latest), [8, 9, 10, 11, 12]);
    assert.equal(latest.nextBeforeSeq, 8);
    const older = await alice.api.messages.list.query({ roomId: paged.id, limit: 5, beforeSeq: 8 });
    assert.deepEqual(seqs(older), [3, 4, 5, 6, 7]);
    assert.equal(older.nextBeforeSeq, 3);
    const oldest = await alice.api.messages.list.query({
      roomId: paged.id,
      limit: 5,
      beforeSeq: 3,
    });
    assert.deepEqual(seqs(oldest), [1, 2]);
    assert.equal(oldest.nextBeforeSeq, null);
    const after = await alice.api.messages.list.query({ roomId: paged.id, limit: 4, afterSeq: 6 });
    assert.deepEqual(seqs(after), [7, 8, 9, 10]);
    const tail = await alice.api.messages.list.query({ roomId: paged.id, afterSeq: 12 });
    assert.deepEqual(seqs(tail), []);
    const all = await alice.api.messages.list.query({ roomId: paged.id });
    assert.deepEqual(seqs(all), Array.from({ length: 12 }, (_, i) => i + 1));
    assert.equal(all.nextBeforeSeq, null);
    assert.deepEqual(all.items.map((m) => m.content).slice(0, 2), ["m1", "m2"]);
  });

  await t.step("messages.list with both beforeSeq and afterSeq is BAD_REQUEST", async () => {
    const error = await callError(
      alice.api.messages.list.query({ roomId: room.id, beforeSeq: 5, afterSeq: 1 }),
    );
    assert.equal(error.data?.code, "BAD_REQUEST");
    assert.match(error.message, /not both/);
  });

  await t.step(
    "messages.list pages back with tRPC's cursor exactly as with beforeSeq; nextCursor follows",
    async () => {
      const paged = await alice.api.rooms.create.mutate({ name: "Cursor paging" });
      for (let i = 1; i <= 12; i++) {
        await alice.api.messages.send.mutate({ roomId: paged.id, content: `c${i}` });
      }
      type Page = Awaited<ReturnType<typeof alice.api.messages.list.query>>;
      const byBeforeSeq: Page[] = [];
      for (let before: number | undefined = undefined;;) {
        const page = await alice.api.messages.list.query({
          roomId: paged.id,
          limit: 5,
          beforeSeq: before,
        });
        byBeforeSeq.push(page);
        if (page.nextBeforeSeq === null) break;
        before = page.nextBeforeSeq;
      }
      // As @trpc/tanstack-react-query's infiniteQueryOptions calls it: the input with `cursor`
      // (null for the first page, then getNextPageParam's answer) and `direction`.
      const byCursor: Page[] = [];
      for (let cursor: number | null = null;;) {
        const input = { roomId: paged.id, limit: 5, cursor, direction: "forward" as const };
        const page = await alice.api.messages.list.query(input);
        byCursor.push(page);
        if (page.nextCursor === null) break;
        cursor = page.nextCursor;
      }
      assert.deepEqual(byCursor, byBeforeSeq);
      assert.deepEqual(byCursor.map((page) => page.items.map((m) => m.seq)), [
        [8, 9, 10, 11, 12],
        [3, 4, 5, 6, 7],
        [1, 2],
      ]);
      for (const page of byCursor) assert.equal(page.nextCursor, page.nextBeforeSeq);
      assert.deepEqual(byCursor.map((page) => page.nextCursor), [8, 3, null]);
      const undefinedCursor = await alice.api.messages.list.query({
        roomId: paged.id,
        limit: 5,
        cursor: undefined,
      });
      assert.deepEqual(undefinedCursor, byBeforeSeq[0], "no cursor: the latest page");
      // Catching up forward keeps its own fields; nextCursor still names the page back.
      const forward = await alice.api.messages.list.query({
        roomId: paged.id,
        limit: 4,
        afterSeq: 6,
      });
      assert.deepEqual(forward.items.map((m) => m.seq), [7, 8, 9, 10]);
      assert.equal(forward.nextAfterSeq, 10);
      assert.equal(forward.nextCursor, 7);
      assert.equal(forward.nextCursor, forward.nextBeforeSeq);
    },
  );

  await t.step("messages.list with cursor and beforeSeq or afterSeq is BAD_REQUEST", async () => {
    const combos = [
      { cursor: 5, beforeSeq: 5 },
      { cursor: 5, afterSeq: 1 },
      { cursor: null, beforeSeq: 5 },
      { cursor: null, afterSeq: 1 },
      { cursor: 5, beforeSeq: 5, afterSeq: 1 },
    ];
    for (const combo of combos) {
      const error = await callError(alice.api.messages.list.query({ roomId: room.id, ...combo }));
      assert.equal(error.data?.code, "BAD_REQUEST", JSON.stringify(combo));
      assert.match(error.message, /cursor/, JSON.stringify(combo));
    }
    for (const cursor of [-1, 1.5, 2 ** 31]) {
      const error = await callError(alice.api.messages.list.query({ roomId: room.id, cursor }));
      assert.equal(error.data?.code, "BAD_REQUEST", `cursor ${cursor}`);
    }
  });

  await t.step("50 concurrent senders get seqs 1..50 with no gap and no repeat", async () => {
    const busy = await alice.api.rooms.create.mutate({ name: "Busy" });
    const senders = await Promise.all(Array.from({ length: 50 }, () => signUp(env)));
    await Promise.all(senders.map((s) => s.api.rooms.join.mutate({ roomId: busy.id })));
    const sent = await Promise.all(
      senders.map((s, i) =>
        client(env, { token: s.token, unbatched: true }).messages.send.mutate({
          roomId: busy.id,
          content: `from sender ${i}`,
        })
      ),
    );
    const seqs = sent.map((m) => m.seq).sort((a, b) => a - b);
    assert.deepEqual(seqs, Array.from({ length: 50 }, (_, i) => i + 1));
    const stored = await env.sql`
      select seq, user_id from messages where room_id = ${busy.id} order by seq
    `;
    assert.deepEqual(stored.map((row) => row.seq), seqs);
    const bySeq = new Map(sent.map((m) => [m.seq, m.userId]));
    for (const row of stored) assert.equal(row.userId, bySeq.get(row.seq));
    const [counter] = await env.sql`select last_seq from rooms where id = ${busy.id}`;
    assert.equal(counter.lastSeq, 50);
  });

  await t.step("20 racing retries with one clientMessageId store one message", async () => {
    const retries = await alice.api.rooms.create.mutate({ name: "Retries" });
    await alice.api.messages.send.mutate({ roomId: retries.id, content: "before" });
    const clientMessageId = crypto.randomUUID();
    const results = await Promise.all(
      Array.from(
        { length: 20 },
        () =>
          client(env, { token: alice.token, unbatched: true }).messages.send.mutate({
            roomId: retries.id,
            content: "exactly once",
            clientMessageId,
          }),
      ),
    );
    for (const result of results) assert.deepEqual(result, results[0]);
    assert.equal(results[0].seq, 2);
    assert.equal(results[0].clientMessageId, clientMessageId);
    const rows = await env.sql`select seq from messages where room_id = ${retries.id} order by seq`;
    assert.deepEqual(rows.map((row) => row.seq), [1, 2]);
    const next = await alice.api.messages.send.mutate({ roomId: retries.id, content: "after" });
    assert.equal(next.seq, 3, "failed duplicate inserts left no gap in seq");
  });

  await t.step(
    "a retry after success returns the first message; other content is CONFLICT",
    async () => {
      const clientMessageId = crypto.randomUUID();
      const first = await bob.api.messages.send.mutate({
        roomId: room.id,
        content: "once",
        clientMessageId,
      });
      const again = await bob.api.messages.send.mutate({
        roomId: room.id,
        content: "once",
        clientMessageId,
      });
      assert.deepEqual(again, first);
      const error = await callError(
        bob.api.messages.send.mutate({ roomId: room.id, content: "twice", clientMessageId }),
      );
      assert.equal(error.data?.code, "CONFLICT");
      assert.equal(error.data?.httpStatus, 409);
      const rows = await env
        .sql`select 1 from messages where client_message_id = ${clientMessageId}`;
      assert.equal(rows.length, 1);
    },
  );
});
