/**
 * Room life, live part (issue #12): `rooms.onEvent` (stored events in one order, replayed on
 * resume once each), presence and typing, on one instance and across two.
 */
import assert from "node:assert/strict";
import type { RoomEvent } from "../db/events.ts";
import { LOCAL_SERVER_ENV, spawnServer } from "../scripts/server_process.ts";
import {
  BULK_LIMITS,
  BULK_LIMITS_ENV,
  client,
  createTestDatabase,
  errorCode,
  needsRealPostgres,
  signUp,
  startTestEnv,
  waitFor,
  wsClient,
} from "./_helpers.ts";

type Api = ReturnType<typeof wsClient>["trpc"];

/** An `onEvent` subscription whose events (with their ids) and errors are collected. */
function watchEvents(api: Api, roomId: string, lastEventId?: string) {
  const seen = {
    events: [] as { id: string; data: RoomEvent }[],
    errors: [] as string[],
    started: false,
    /** The stored events (no presence, no typing). */
    stored() {
      return seen.events.filter((e) => !/^(presence|typing)\./.test(e.data.type));
    },
    /** The events of one type, data only. */
    of<T extends RoomEvent["type"]>(type: T) {
      return seen.events.map((e) => e.data).filter((d): d is Extract<RoomEvent, { type: T }> =>
        d.type === type
      );
    },
  };
  const sub = api.rooms.onEvent.subscribe({ roomId, lastEventId }, {
    onStarted: () => void (seen.started = true),
    onData: (event) => void seen.events.push({ id: event.id, data: event.data }),
    onError: (error) => void seen.errors.push(String(error.data?.code)),
  });
  return { seen, stop: () => sub.unsubscribe() };
}

/** The user ids of a presence or typing list. */
function ids(members: { userId: string }[]): string[] {
  return members.map((m) => m.userId).sort();
}

Deno.test("rooms.onEvent: every stored event in one order, and a resume replays each once", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const carol = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Events" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const a = wsClient(env, { token: alice.token });
  const watcher = watchEvents(a.trpc, room.id);
  try {
    await waitFor(() => watcher.seen.started, "subscribed");
    await waitFor(() => watcher.seen.of("presence.changed").length === 1, "first presence");

    const m1 = await alice.api.messages.send.mutate({ roomId: room.id, content: "hello" });
    const m2 = await bob.api.messages.send.mutate({ roomId: room.id, content: "hi" });
    await alice.api.messages.edit.mutate({ roomId: room.id, messageId: m1.id, content: "hello!" });
    const react = (user: typeof alice, emoji: string, on: boolean) =>
      user.api.messages.react.mutate({ roomId: room.id, messageId: m1.id, emoji, on });
    await react(bob, "👍", true);
    await react(bob, "👍", true); // idempotent calls store nothing
    await react(alice, "👍", true);
    await react(bob, "👍", false);
    await bob.api.messages.delete.mutate({ roomId: room.id, messageId: m2.id });
    await bob.api.messages.delete.mutate({ roomId: room.id, messageId: m2.id });
    await carol.api.rooms.join.mutate({ roomId: room.id });
    await carol.api.rooms.leave.mutate({ roomId: room.id });
    const types = [
      "message.created",
      "message.created",
      "message.updated",
      "reaction.changed",
      "reaction.changed",
      "reaction.changed",
      "message.deleted",
      "member.joined",
      "member.left",
    ];
    await waitFor(() => watcher.seen.stored().length === types.length, "all stored events");

    await t.step("live: each stored event once, in order, ids one apart", () => {
      const stored = watcher.seen.stored();
      assert.deepEqual(stored.map((e) => e.data.type), types);
      const numbers = stored.map((e) => Number(e.id));
      for (let i = 1; i < numbers.length; i++) assert.equal(numbers[i], numbers[i - 1] + 1);
    });

    await t.step("the events carry what the contract says", () => {
      const [created, updated] = [
        watcher.seen.of("message.created")[0],
        watcher.seen.of("message.updated")[0],
      ];
      assert.equal(created.id, m1.id);
      assert.equal(created.content, "hello");
      assert.equal(updated.content, "hello!");
      assert.ok(updated.editedAt instanceof Date);
      const reactions = watcher.seen.of("reaction.changed");
      assert.deepEqual(
        reactions.map(({ userId, emoji, added, count }) => [userId, emoji, added, count]),
        [[bob.user.id, "👍", true, 1], [alice.user.id, "👍", true, 2], [
          bob.user.id,
          "👍",
          false,
          1,
        ]],
      );
      const [deleted] = watcher.seen.of("message.deleted");
      assert.deepEqual(
        { messageId: deleted.messageId, seq: deleted.seq },
        { messageId: m2.id, seq: m2.seq },
      );
      assert.ok(deleted.deletedAt instanceof Date);
      const [joined] = watcher.seen.of("member.joined");
      assert.equal(joined.userId, carol.user.id);
      assert.equal(joined.username, carol.user.username);
      assert.ok(joined.joinedAt instanceof Date);
      assert.equal(watcher.seen.of("member.left")[0].userId, carol.user.id);
    });

    await t.step("a resume from before the first event replays the same events", async () => {
      const first = Number(watcher.seen.stored()[0].id);
      const b = wsClient(env, { token: bob.token });
      try {
        const replay = watchEvents(b.trpc, room.id, String(first - 1));
        await waitFor(() => replay.seen.stored().length === types.length, "replayed");
        // The message as it is now: an edit replayed after a deletion shows no content.
        const live = watcher.seen.stored();
        const replayed = replay.seen.stored();
        assert.deepEqual(replayed.map((e) => e.id), live.map((e) => e.id));
        // From the reactions on, the same events; before, messages as they are now.
        assert.deepEqual(replayed.slice(3).map((e) => e.data), live.slice(3).map((e) => e.data));
        assert.equal(replayed[0].data.type, "message.created");
        // The deleted message's text is not replayed, although the hub had it in memory.
        const [, second] = replayed.map((e) => e.data);
        assert.ok(second.type === "message.created" && second.id === m2.id);
        assert.equal(second.content, "");
        assert.ok(second.deletedAt instanceof Date);
        // Presence comes once the replay is done, after the stored events.
        await waitFor(() => replay.seen.of("presence.changed").length > 0, "presence");
        const lastStored = replay.seen.events.findLastIndex((e) => !e.data.type.startsWith("p"));
        const presenceAt = replay.seen.events.findIndex((e) => e.data.type === "presence.changed");
        assert.ok(presenceAt > lastStored);
        replay.stop();
      } finally {
        await b.close();
      }
    });

    await t.step(
      "a cut socket resumes after the last event it had: nothing lost or doubled",
      async () => {
        const before = watcher.seen.stored().length;
        a.sockets.at(-1)!.close();
        await bob.api.messages.send.mutate({ roomId: room.id, content: "while you were away" });
        await react(bob, "🎉", true);
        await waitFor(() => watcher.seen.stored().length === before + 2, "caught up");
        await new Promise((r) => setTimeout(r, 200));
        const stored = watcher.seen.stored();
        assert.equal(stored.length, before + 2);
        assert.equal(new Set(stored.map((e) => e.id)).size, stored.length);
        assert.deepEqual(stored.slice(-2).map((e) => e.data.type), [
          "message.created",
          "reaction.changed",
        ]);
      },
    );

    await t.step("an impossible lastEventId is a resync (PRECONDITION_FAILED)", async () => {
      const bad = watchEvents(a.trpc, room.id, "99999");
      await waitFor(() => bad.seen.errors.length > 0, "error");
      assert.deepEqual(bad.seen.errors, ["PRECONDITION_FAILED"]);
    });

    await t.step("a non-member cannot subscribe; an unknown room is NOT_FOUND", async () => {
      const c = wsClient(env, { token: carol.token });
      try {
        const denied = watchEvents(c.trpc, room.id);
        const unknown = watchEvents(c.trpc, crypto.randomUUID());
        await waitFor(() => denied.seen.errors.length + unknown.seen.errors.length === 2, "errors");
        assert.deepEqual(denied.seen.errors, ["FORBIDDEN"]);
        assert.deepEqual(unknown.seen.errors, ["NOT_FOUND"]);
      } finally {
        await c.close();
      }
    });
  } finally {
    watcher.stop();
    await a.close();
  }
});

Deno.test("presence: online while subscribed, for everyone; rooms.presence agrees", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const carol = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Who is here" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const a = wsClient(env, { token: alice.token });
  const b = wsClient(env, { token: bob.token });
  const watcher = watchEvents(a.trpc, room.id);
  const latest = () => ids(watcher.seen.of("presence.changed").at(-1)?.online ?? []);
  try {
    await t.step("the first event after subscribing is presence, with oneself", async () => {
      await waitFor(() => watcher.seen.events.length > 0, "first event");
      assert.equal(watcher.seen.events[0].data.type, "presence.changed");
      assert.deepEqual(latest(), [alice.user.id]);
      // Once: the change of one's own coming online is not sent again after the snapshot.
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(watcher.seen.events.length, 1);
    });

    await t.step(
      "a member who subscribes (to messages too) comes online for the others",
      async () => {
        const sub = b.trpc.messages.onMessage.subscribe({ roomId: room.id }, { onData() {} });
        await waitFor(() => latest().length === 2, "bob online");
        assert.deepEqual(latest(), ids([alice.user, bob.user].map((u) => ({ userId: u.id }))));
        const { online } = await bob.api.rooms.presence.query({ roomId: room.id });
        assert.deepEqual(ids(online), latest());
        assert.equal(online.find((m) => m.userId === bob.user.id)?.username, bob.user.username);
        // A second subscription of the same member changes nothing.
        const count = watcher.seen.of("presence.changed").length;
        const again = b.trpc.rooms.onEvent.subscribe({ roomId: room.id }, { onData() {} });
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(watcher.seen.of("presence.changed").length, count);
        sub.unsubscribe();
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(latest().length, 2, "still online through the other subscription");
        again.unsubscribe();
        await waitFor(() => latest().length === 1, "bob offline");
      },
    );

    await t.step("a closed socket takes its member offline", async () => {
      b.trpc.rooms.onEvent.subscribe({ roomId: room.id }, { onData() {} });
      await waitFor(() => latest().length === 2, "bob online again");
      await b.close();
      await waitFor(() => latest().length === 1, "bob offline after close");
      assert.deepEqual(
        (await alice.api.rooms.presence.query({ roomId: room.id })).online.length,
        1,
      );
    });

    await t.step("presence is for members only", async () => {
      assert.equal(
        await errorCode(carol.api.rooms.presence.query({ roomId: room.id })),
        "FORBIDDEN",
      );
      assert.equal(
        await errorCode(carol.api.rooms.presence.query({ roomId: crypto.randomUUID() })),
        "NOT_FOUND",
      );
    });
  } finally {
    watcher.stop();
    await a.close();
    await b.close();
  }
});

Deno.test("typing: starts, absorbs fast renewals, stops, and expires after 6 s", async (t) => {
  await using env = await startTestEnv(); // default rates: renewals must not hit them
  const alice = await signUp(env);
  const bob = await signUp(env);
  const carol = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Typing" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const a = wsClient(env, { token: alice.token });
  const b = wsClient(env, { token: bob.token });
  const watcher = watchEvents(a.trpc, room.id);
  const typing = () => watcher.seen.of("typing.changed");
  try {
    await waitFor(() => watcher.seen.started, "subscribed");

    await t.step(
      "a member typing reaches the others; 50 renewals a second are absorbed",
      async () => {
        await b.trpc.rooms.typing.mutate({ roomId: room.id, typing: true });
        await waitFor(() => typing().length === 1, "typing");
        assert.deepEqual(ids(typing()[0].typing), [bob.user.id]);
        const started = Date.now();
        for (let i = 0; i < 50; i++) {
          assert.deepEqual(
            await b.trpc.rooms.typing.mutate({ roomId: room.id, typing: true }),
            { typing: true },
          );
          if (Date.now() - started > 900) break;
        }
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(typing().length, 1, "renewals change nothing anyone sees");
      },
    );

    await t.step("stopping reaches the others at once", async () => {
      await b.trpc.rooms.typing.mutate({ roomId: room.id, typing: false });
      await waitFor(() => typing().length === 2, "stopped");
      assert.deepEqual(typing()[1].typing, []);
    });

    await t.step("a typing state without renewal ends after 6 s", async () => {
      await bob.api.rooms.typing.mutate({ roomId: room.id, typing: true });
      await waitFor(() => typing().length === 3, "typing again");
      const at = Date.now();
      await waitFor(() => typing().length === 4, "expired", 8_000);
      const after = Date.now() - at;
      assert.deepEqual(typing()[3].typing, []);
      assert.ok(after > 5_500 && after < 7_000, `expired after ${after} ms`);
    });

    await t.step("typing is for members only", async () => {
      assert.equal(
        await errorCode(carol.api.rooms.typing.mutate({ roomId: room.id, typing: true })),
        "FORBIDDEN",
      );
      assert.equal(
        await errorCode(
          carol.api.rooms.typing.mutate({ roomId: crypto.randomUUID(), typing: true }),
        ),
        "NOT_FOUND",
      );
    });
  } finally {
    watcher.stop();
    await a.close();
    await b.close();
  }
});

const TWO = "presence, typing and events work across two instances";
Deno.test({ name: TWO, ignore: needsRealPostgres(TWO) }, async () => {
  await using db = await createTestDatabase();
  await using one = await startTestEnv({ db, limits: BULK_LIMITS });
  await using two = await startTestEnv({ db, limits: BULK_LIMITS });
  const alice = await signUp(one);
  const bob = await signUp(two);
  const room = await alice.api.rooms.create.mutate({ name: "Two instances" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const a = wsClient(one, { token: alice.token });
  const b = wsClient(two, { token: bob.token });
  const onOne = watchEvents(a.trpc, room.id);
  const latest = () => ids(onOne.seen.of("presence.changed").at(-1)?.online ?? []);
  try {
    await waitFor(() => latest().length === 1, "alice online");
    const onTwo = watchEvents(b.trpc, room.id);
    await waitFor(() => latest().length === 2, "bob, on the other instance, online");
    const { online } = await alice.api.rooms.presence.query({ roomId: room.id });
    assert.equal(online.length, 2);
    await b.trpc.rooms.typing.mutate({ roomId: room.id, typing: true });
    await waitFor(
      () => ids(onOne.seen.of("typing.changed").at(-1)?.typing ?? [])[0] === bob.user.id,
      "bob typing, seen on the other instance",
    );
    const sent = await bob.api.messages.send.mutate({ roomId: room.id, content: "from two" });
    await alice.api.messages.react.mutate({
      roomId: room.id,
      messageId: sent.id,
      emoji: "👋",
      on: true,
    });
    await waitFor(() => onTwo.seen.of("reaction.changed").length === 1, "reaction on two");
    await waitFor(() => onOne.seen.of("reaction.changed").length === 1, "reaction on one");
    assert.deepEqual(
      onOne.seen.stored().map((e) => [e.id, e.data.type]),
      onTwo.seen.stored().map((e) => [e.id, e.data.type]),
    );
    onTwo.stop();
    await waitFor(() => latest().length === 1, "bob offline");
    // Typing without a subscription, then leaving: the other instance sees the typing end
    // at once, not after 6 s.
    await b.trpc.rooms.typing.mutate({ roomId: room.id, typing: true });
    await waitFor(
      () => (onOne.seen.of("typing.changed").at(-1)?.typing.length ?? 0) === 1,
      "bob typing again",
    );
    await bob.api.rooms.leave.mutate({ roomId: room.id });
    await waitFor(
      () => onOne.seen.of("typing.changed").at(-1)?.typing.length === 0,
      "typing ended by the leave",
      2_000,
    );
  } finally {
    onOne.stop();
    await a.close();
    await b.close();
  }
});

const DEATH = "an instance that dies takes its members offline for everyone within 30 s";
Deno.test({ name: DEATH, ignore: needsRealPostgres(DEATH) }, async () => {
  await using db = await createTestDatabase();
  await using one = await startTestEnv({ db, limits: BULK_LIMITS });
  await using server = await spawnServer({
    DATABASE_URL: db.url,
    ...LOCAL_SERVER_ENV,
    ALLOWED_ORIGINS: "http://localhost",
    ...BULK_LIMITS_ENV,
  });
  const [, url] = await server.waitForLine("stdout", /^parley listening on (http:\S+)/);
  const alice = await signUp(one);
  const bob = await signUp(one);
  const room = await alice.api.rooms.create.mutate({ name: "Mortal" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const a = wsClient(one, { token: alice.token });
  const doomed = wsClient({ url }, { token: bob.token, origin: "http://localhost" });
  const watcher = watchEvents(a.trpc, room.id);
  const latest = () => ids(watcher.seen.of("presence.changed").at(-1)?.online ?? []);
  try {
    doomed.trpc.rooms.onEvent.subscribe({ roomId: room.id }, { onData() {} });
    await waitFor(() => latest().length === 2, "bob online through the other process");
    server.child.kill("SIGKILL");
    const killedAt = Date.now();
    await waitFor(() => latest().length === 1, "bob offline", 30_000);
    const took = Date.now() - killedAt;
    assert.ok(took < 30_000, `offline after ${took} ms`);
  } finally {
    watcher.stop();
    await a.close();
    await doomed.close().catch(() => {});
  }
});

Deno.test("messages stored before migration 00006 replay as events numbered by seq", async () => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Older than events" });
  // The room as migration 00006 leaves one of an older release: 30 messages without event ids,
  // no room_events, last_event_id = seq_events_until = last_seq.
  await env.sql`delete from room_events where room_id = ${room.id}`;
  await env.sql`
    with bump as (
      update rooms set last_seq = 30, last_event_id = 30, seq_events_until = 30
      where id = ${room.id}
    )
    insert into messages (room_id, seq, user_id, username, content)
    select ${room.id}, s, ${alice.user.id}, 'alice', 'old ' || s from generate_series(1, 30) s
  `;
  // A message an instance of the older release stores during a rolling deploy: no event id.
  await env.sql`
    with bump as (update rooms set last_seq = 31 where id = ${room.id})
    insert into messages (room_id, seq, user_id, username, content)
    values (${room.id}, 31, ${alice.user.id}, 'alice', 'from an old instance')
  `;
  const a = wsClient(env, { token: alice.token });
  const watcher = watchEvents(a.trpc, room.id, "20");
  try {
    await waitFor(() => watcher.seen.stored().length === 10, "the last ten old messages");
    const sent = await alice.api.messages.send.mutate({ roomId: room.id, content: "new" });
    await waitFor(() => watcher.seen.stored().length === 11, "the new one");
    const stored = watcher.seen.stored();
    assert.deepEqual(stored.map((e) => e.id), [
      ...Array.from({ length: 10 }, (_, i) => String(21 + i)),
      "31",
    ]);
    assert.deepEqual(
      watchedContents(stored),
      [...Array.from({ length: 10 }, (_, i) => `old ${21 + i}`), "new"],
    );
    assert.equal(sent.seq, 32);
  } finally {
    watcher.stop();
    await a.close();
  }
});

/** The contents of `message.created` events. */
function watchedContents(events: { data: RoomEvent }[]): string[] {
  return events.map((e) => e.data.type === "message.created" ? e.data.content : e.data.type);
}

Deno.test("deleting an account stores its reactions going and its memberships ending", async () => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Goodbye" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const sent = await alice.api.messages.send.mutate({ roomId: room.id, content: "react to me" });
  await bob.api.messages.react.mutate({
    roomId: room.id,
    messageId: sent.id,
    emoji: "👋",
    on: true,
  });
  const a = wsClient(env, { token: alice.token });
  const watcher = watchEvents(a.trpc, room.id);
  try {
    await waitFor(() => watcher.seen.started, "subscribed");
    await bob.api.users.delete.mutate({});
    await waitFor(() => watcher.seen.stored().length === 2, "two events");
    const [reaction, left] = watcher.seen.stored().map((e) => e.data);
    assert.ok(reaction.type === "reaction.changed");
    assert.deepEqual(
      [reaction.messageId, reaction.emoji, reaction.userId, reaction.added, reaction.count],
      [sent.id, "👋", bob.user.id, false, 0],
    );
    assert.ok(left.type === "member.left");
    assert.equal(left.userId, bob.user.id);
    // Replayed, the member is a deleted user's.
    const first = Number(watcher.seen.stored()[0].id) - 1;
    const replay = watchEvents(a.trpc, room.id, String(first));
    await waitFor(() => replay.seen.stored().length === 2, "replayed");
    const replayedLeft = replay.seen.stored()[1].data;
    assert.ok(replayedLeft.type === "member.left");
    assert.deepEqual([replayedLeft.userId, replayedLeft.username], [null, "Deleted user"]);
    replay.stop();
  } finally {
    watcher.stop();
    await a.close();
  }
});

Deno.test("typing with a signed-out session is refused, even while another is subscribed", async () => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const anonymous = client(env);
  const username = `typist_${crypto.randomUUID().slice(0, 8)}`;
  const password = "correct horse battery";
  const first = await anonymous.users.create.mutate({ username, password });
  const second = await anonymous.auth.signIn.mutate({ username, password });
  const room = await client(env, { token: first.token }).rooms.create.mutate({
    name: "Two devices",
  });
  const laptop = wsClient(env, { token: first.token });
  const phone = wsClient(env, { token: second.token });
  const watcher = watchEvents(laptop.trpc, room.id);
  try {
    await waitFor(() => watcher.seen.of("presence.changed").length > 0, "the laptop is online");
    // The phone's session subscribes too, types (no read needed), then signs out.
    const phoneWatch = watchEvents(phone.trpc, room.id);
    await waitFor(() => phoneWatch.seen.started, "the phone subscribed");
    await phone.trpc.rooms.typing.mutate({ roomId: room.id, typing: true });
    await phone.trpc.rooms.typing.mutate({ roomId: room.id, typing: false });
    await client(env, { token: second.token }).auth.signOut.mutate();
    await waitFor(() => phoneWatch.seen.errors.length > 0, "the phone's subscription ended");
    assert.equal(
      await errorCode(phone.trpc.rooms.typing.mutate({ roomId: room.id, typing: true })),
      "UNAUTHORIZED",
    );
  } finally {
    watcher.stop();
    await laptop.close();
    await phone.close();
  }
});
