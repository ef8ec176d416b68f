/**
 * Room life, stored part (issue #12): edits, deletions, reactions and read state, as
 * `messages.list` and `rooms.mine` show them, over HTTP and WebSocket.
 */
import assert from "node:assert/strict";
import {
  BULK_LIMITS,
  callError,
  client,
  errorCode,
  signUp,
  startTestEnv,
  wsClient,
} from "./_helpers.ts";

Deno.test("edits, deletions and reactions: who may, and what messages.list shows", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const owner = await signUp(env);
  const alice = await signUp(env);
  const bob = await signUp(env);
  const room = await owner.api.rooms.create.mutate({ name: "Life" });
  const other = await owner.api.rooms.create.mutate({ name: "Elsewhere" });
  for (const u of [alice, bob]) await u.api.rooms.join.mutate({ roomId: room.id });
  const first = await alice.api.messages.send.mutate({ roomId: room.id, content: "helo" });
  const second = await bob.api.messages.send.mutate({ roomId: room.id, content: "hi" });

  await t.step("a new message has no edit, no deletion and no reactions", () => {
    assert.equal(first.editedAt, null);
    assert.equal(first.deletedAt, null);
    assert.deepEqual(first.reactions, []);
  });

  await t.step("the author edits; editedAt is set and messages.list shows it", async () => {
    const edited = await alice.api.messages.edit.mutate({
      roomId: room.id,
      messageId: first.id,
      content: "  hello  ",
    });
    assert.equal(edited.content, "hello");
    assert.equal(edited.seq, first.seq);
    assert.ok(edited.editedAt instanceof Date);
    const { items } = await bob.api.messages.list.query({ roomId: room.id });
    assert.deepEqual(items.map((m) => [m.content, m.editedAt !== null]), [
      ["hello", true],
      ["hi", false],
    ]);
  });

  await t.step("editing another's message is FORBIDDEN, even for the room's creator", async () => {
    for (const api of [bob.api, owner.api]) {
      const error = await callError(
        api.messages.edit.mutate({ roomId: room.id, messageId: first.id, content: "mine now" }),
      );
      assert.equal(error.data?.code, "FORBIDDEN");
    }
  });

  await t.step("a message of another room is NOT_FOUND; bad content is BAD_REQUEST", async () => {
    await owner.api.rooms.join.mutate({ roomId: other.id }).catch(() => {});
    assert.equal(
      await errorCode(
        owner.api.messages.edit.mutate({ roomId: other.id, messageId: first.id, content: "x" }),
      ),
      "NOT_FOUND",
    );
    assert.equal(
      await errorCode(
        alice.api.messages.edit.mutate({ roomId: room.id, messageId: first.id, content: "   " }),
      ),
      "BAD_REQUEST",
    );
    assert.equal(
      await errorCode(
        alice.api.messages.edit.mutate({
          roomId: room.id,
          messageId: first.id,
          content: "x".repeat(4001),
        }),
      ),
      "BAD_REQUEST",
    );
    // Not a member of the room: FORBIDDEN before anything else.
    const stranger = await signUp(env);
    assert.equal(
      await errorCode(
        stranger.api.messages.edit.mutate({ roomId: room.id, messageId: first.id, content: "x" }),
      ),
      "FORBIDDEN",
    );
  });

  await t.step("reactions: one emoji each, counted per emoji, mine per caller", async () => {
    const react = (api: typeof alice.api, emoji: string, on = true) =>
      api.messages.react.mutate({ roomId: room.id, messageId: second.id, emoji, on });
    assert.deepEqual(await react(alice.api, "👍"), {
      messageId: second.id,
      emoji: "👍",
      userId: alice.user.id,
      added: true,
      count: 1,
    });
    assert.equal((await react(bob.api, "👍")).count, 2);
    // Again: idempotent, not an error.
    assert.deepEqual([(await react(bob.api, "👍")).added, (await react(bob.api, "👍")).count], [
      false,
      2,
    ]);
    // "❤" without its variation selector is the same reaction as "❤️".
    assert.equal((await react(alice.api, "❤")).emoji, "❤️");
    assert.equal((await react(bob.api, "❤️")).count, 2);
    await react(alice.api, "👨‍👩‍👧");
    await react(alice.api, "🇫🇷");
    const seen = async (api: typeof alice.api) =>
      (await api.messages.list.query({ roomId: room.id })).items[1].reactions;
    assert.deepEqual(await seen(alice.api), [
      { emoji: "👍", count: 2, mine: true },
      { emoji: "❤️", count: 2, mine: true },
      { emoji: "👨‍👩‍👧", count: 1, mine: true },
      { emoji: "🇫🇷", count: 1, mine: true },
    ]);
    assert.deepEqual((await seen(bob.api)).map((r) => r.mine), [true, true, false, false]);
    const removed = await react(alice.api, "👍", false);
    assert.deepEqual([removed.added, removed.count], [false, 1]);
    assert.deepEqual((await seen(alice.api))[0], { emoji: "👍", count: 1, mine: false });
    for (const bad of ["a", "👍👍", "", "1", ":)", "👍 ", "x".repeat(100)]) {
      assert.equal(await errorCode(react(alice.api, bad)), "BAD_REQUEST", JSON.stringify(bad));
    }
  });

  await t.step("at most 20 distinct emoji per message", async () => {
    const target = await alice.api.messages.send.mutate({ roomId: room.id, content: "react!" });
    const emoji = [..."😀😁😂🤣😃😄😅😆😉😊😋😎😍😘🥰😗😙🥲😚🙂"];
    assert.equal(emoji.length, 20);
    await Promise.all(
      emoji.map((e) =>
        bob.api.messages.react.mutate({ roomId: room.id, messageId: target.id, emoji: e, on: true })
      ),
    );
    const error = await callError(
      bob.api.messages.react.mutate({
        roomId: room.id,
        messageId: target.id,
        emoji: "🤔",
        on: true,
      }),
    );
    assert.equal(error.data?.code, "BAD_REQUEST");
    assert.match(error.message, /at most 20 different emoji/);
    // A known emoji can still be added by someone else.
    assert.equal(
      (await alice.api.messages.react.mutate({
        roomId: room.id,
        messageId: target.id,
        emoji: "😀",
        on: true,
      })).count,
      2,
    );
  });

  await t.step("delete: the author or the room's creator; the message keeps its seq", async () => {
    assert.equal(
      await errorCode(bob.api.messages.delete.mutate({ roomId: room.id, messageId: first.id })),
      "FORBIDDEN",
    );
    const byOwner = await owner.api.messages.delete.mutate({
      roomId: room.id,
      messageId: second.id,
    });
    assert.deepEqual([byOwner.content, byOwner.seq, byOwner.reactions], ["", second.seq, []]);
    assert.ok(byOwner.deletedAt instanceof Date);
    const byAuthor = await alice.api.messages.delete.mutate({
      roomId: room.id,
      messageId: first.id,
    });
    assert.equal(byAuthor.content, "");
    // Again: nothing changes.
    const again = await alice.api.messages.delete.mutate({ roomId: room.id, messageId: first.id });
    assert.deepEqual(again.deletedAt, byAuthor.deletedAt);
    const { items } = await bob.api.messages.list.query({ roomId: room.id });
    assert.deepEqual(items.slice(0, 2).map((m) => [m.seq, m.content, m.deletedAt !== null]), [
      [first.seq, "", true],
      [second.seq, "", true],
    ]);
    // A deleted message can be neither edited nor reacted to.
    assert.equal(
      await errorCode(
        alice.api.messages.edit.mutate({ roomId: room.id, messageId: first.id, content: "back" }),
      ),
      "CONFLICT",
    );
    assert.equal(
      await errorCode(
        bob.api.messages.react.mutate({
          roomId: room.id,
          messageId: first.id,
          emoji: "👍",
          on: true,
        }),
      ),
      "CONFLICT",
    );
  });

  await t.step("the same works over WebSocket", async () => {
    const ws = wsClient(env, { origin: "https://app.example.com", token: alice.token });
    try {
      const message = await ws.trpc.messages.send.mutate({ roomId: room.id, content: "ws" });
      const edited = await ws.trpc.messages.edit.mutate({
        roomId: room.id,
        messageId: message.id,
        content: "ws edited",
      });
      assert.equal(edited.content, "ws edited");
      const reaction = await ws.trpc.messages.react.mutate({
        roomId: room.id,
        messageId: message.id,
        emoji: "🎉",
        on: true,
      });
      assert.equal(reaction.count, 1);
      assert.equal(
        (await ws.trpc.messages.delete.mutate({ roomId: room.id, messageId: message.id })).content,
        "",
      );
    } finally {
      await ws.close();
    }
  });
});

Deno.test("read state: markRead never moves back; rooms.mine lists unread counts", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const quiet = await alice.api.rooms.create.mutate({ name: "Quiet" });
  const busy = await alice.api.rooms.create.mutate({ name: "Busy" });
  await bob.api.rooms.join.mutate({ roomId: busy.id });
  await bob.api.rooms.join.mutate({ roomId: quiet.id });
  for (let i = 1; i <= 5; i++) {
    await bob.api.messages.send.mutate({ roomId: busy.id, content: `bob ${i}` });
  }
  await alice.api.messages.send.mutate({ roomId: busy.id, content: "alice 6" });

  await t.step("unread counts others' messages after the read position", async () => {
    const rooms = await alice.api.rooms.mine.query();
    assert.deepEqual(rooms.map((r) => [r.name, r.unreadCount, r.lastReadSeq]), [
      ["Busy", 5, 0],
      ["Quiet", 0, 0],
    ]);
    assert.equal(rooms[0].lastMessage?.content, "alice 6");
    assert.equal(rooms[0].lastMessage?.seq, 6);
    assert.equal(rooms[1].lastMessage, null);
  });

  await t.step("markRead moves forward only, and never past the last message", async () => {
    assert.deepEqual(await alice.api.rooms.markRead.mutate({ roomId: busy.id, seq: 3 }), {
      lastReadSeq: 3,
    });
    assert.deepEqual(await alice.api.rooms.markRead.mutate({ roomId: busy.id, seq: 1 }), {
      lastReadSeq: 3,
    });
    const [busyRoom] = await alice.api.rooms.mine.query();
    assert.deepEqual([busyRoom.unreadCount, busyRoom.lastReadSeq], [2, 3]);
    assert.deepEqual(await alice.api.rooms.markRead.mutate({ roomId: busy.id, seq: 999 }), {
      lastReadSeq: 6,
    });
    assert.equal((await alice.api.rooms.mine.query())[0].unreadCount, 0);
    // Bob's read state is his own.
    assert.equal((await bob.api.rooms.mine.query())[0].unreadCount, 1);
  });

  await t.step(
    "the most recently active room comes first; deleted messages are not unread",
    async () => {
      const m = await bob.api.messages.send.mutate({
        roomId: quiet.id,
        content: "now quiet talks",
      });
      let rooms = await alice.api.rooms.mine.query();
      assert.deepEqual(rooms.map((r) => [r.name, r.unreadCount]), [["Quiet", 1], ["Busy", 0]]);
      await bob.api.messages.delete.mutate({ roomId: quiet.id, messageId: m.id });
      rooms = await alice.api.rooms.mine.query();
      assert.equal(rooms[0].unreadCount, 0);
      assert.equal(rooms[0].lastMessage?.deletedAt instanceof Date, true);
    },
  );

  await t.step("markRead needs membership and a valid seq", async () => {
    const stranger = await signUp(env);
    assert.equal(
      await errorCode(stranger.api.rooms.markRead.mutate({ roomId: busy.id, seq: 1 })),
      "FORBIDDEN",
    );
    assert.equal(
      await errorCode(alice.api.rooms.markRead.mutate({ roomId: busy.id, seq: -1 })),
      "BAD_REQUEST",
    );
    assert.equal(await errorCode(client(env).rooms.mine.query()), "UNAUTHORIZED");
  });
});

Deno.test("reactions and read marks are rate-limited like sends", async () => {
  await using env = await startTestEnv({ limits: { reactions: { points: 3, seconds: 60 } } });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Limited" });
  const message = await alice.api.messages.send.mutate({ roomId: room.id, content: "hi" });
  const codes: string[] = [];
  for (const emoji of ["👍", "👎", "🎉"]) {
    codes.push(
      await errorCode(
        alice.api.messages.react.mutate({
          roomId: room.id,
          messageId: message.id,
          emoji,
          on: true,
        }),
      ),
    );
  }
  codes.push(await errorCode(alice.api.rooms.markRead.mutate({ roomId: room.id, seq: 1 })));
  assert.deepEqual(codes, ["OK", "OK", "OK", "TOO_MANY_REQUESTS"]);
});
