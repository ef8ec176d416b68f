/**
 * Room life in the front-end client (client/watch_room.ts, issue #12) against a real server
 * over real sockets: two users each watch a room with `watchRoom`; edits, deletions and
 * reactions reach the other's list (`mine` right for each), presence and typing show the other,
 * `markRead` moves `rooms.mine`'s unread count, and a cut socket or a resync loses nothing.
 */
import assert from "node:assert/strict";
import {
  createParleyClient,
  type Member,
  type Message,
  type RoomState,
  watchRoom,
  type WatchRoomHandle,
} from "../client/mod.ts";
import { BULK_LIMITS, signUp, startTestEnv, waitFor } from "./_helpers.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A client as one user's device: the procedures it calls over HTTP, the sockets it opens and
 * the stored events (id and type) they carry, and a switch that takes its WebSocket network
 * down (new sockets then fail to connect, so tRPC keeps retrying until it is up again).
 */
function device(env: { url: string }, token: string) {
  const calls: string[] = [];
  const sockets: WebSocket[] = [];
  const stored: { id: string; type: string }[] = [];
  const d = {
    calls,
    sockets,
    stored,
    down: false,
    parley: createParleyClient({
      url: env.url,
      token,
      fetch: (input, init) => {
        calls.push(...new URL(String(input)).pathname.split("/").at(-1)!.split(","));
        return fetch(input, init);
      },
      WebSocket: class extends WebSocket {
        constructor(url: string | URL, protocols?: string | string[] | WebSocketOptions) {
          super(d.down ? "ws://127.0.0.1:1/trpc" : url, protocols);
          sockets.push(this);
          this.addEventListener("message", (event) => {
            if (typeof event.data !== "string" || event.data === "PING") return;
            const parsed = JSON.parse(event.data);
            for (const frame of Array.isArray(parsed) ? parsed : [parsed]) {
              const result = frame?.result;
              const type = result?.data?.json?.data?.type;
              if (result?.type === "data" && typeof type === "string" && !isLive(type)) {
                stored.push({ id: String(result.id), type });
              }
            }
          });
        }
      },
    }),
    /** How many calls of `path` (e.g. "rooms.typing") went over HTTP. */
    count: (path: string) => calls.filter((call) => call === path).length,
    /** Cuts every open socket, as a lost network would; with `down`, keeps it down. */
    cut(options: { down: boolean }) {
      d.down = options.down;
      for (const socket of sockets) socket.close();
    },
  };
  return d;
}

const isLive = (type: string) => type === "presence.changed" || type === "typing.changed";

/** Records what a watchRoom reports. */
function recorder() {
  const seen = {
    messages: [] as Message[],
    online: [] as Member[],
    typing: [] as Member[],
    states: [] as RoomState[],
  };
  return {
    seen,
    state: () => seen.states.at(-1),
    /** The held message with this id. */
    message: (id: string) => seen.messages.find((m) => m.id === id),
    /** The user ids online, sorted. */
    onlineIds: () => seen.online.map((m) => m.userId).sort(),
    onMessages: (list: Message[]) => void (seen.messages = list),
    onPresence: (online: Member[]) => void (seen.online = online),
    onTyping: (typing: Member[]) => void (seen.typing = typing),
    onStateChange: (state: RoomState) => void seen.states.push(state),
  };
}

/** A message's reactions as `[emoji, count, mine]`. */
function reactionsOf(message: Message | undefined) {
  return message?.reactions.map((r) => [r.emoji, r.count, r.mine]);
}

Deno.test("watchRoom keeps a room's life: edits, deletions, reactions, presence, typing, read marks", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const adaUser = await signUp(env);
  const bobUser = await signUp(env);
  const ada = device(env, adaUser.token);
  const bob = device(env, bobUser.token);
  const room = await ada.parley.trpc.rooms.create.mutate({ name: "Room life" });
  await bob.parley.trpc.rooms.join.mutate({ roomId: room.id });
  const ra = recorder();
  const rb = recorder();
  const handles: WatchRoomHandle[] = [];
  const ids = [adaUser.user.id, bobUser.user.id].sort();
  /** The latest page of the room as the server shows it to bob now. */
  const bobsPage = async () =>
    (await bob.parley.trpc.messages.list.query({ roomId: room.id, limit: 50 })).items;
  let ha: WatchRoomHandle;
  let hb: WatchRoomHandle;
  let m1: Message;
  let m2: Message;

  try {
    await t.step("both go live and each shows both members online", async () => {
      ha = watchRoom(ada.parley, room.id, ra);
      hb = watchRoom(bob.parley, room.id, rb);
      handles.push(ha, hb);
      await waitFor(() => ra.state() === "live" && rb.state() === "live", "both live");
      await waitFor(() => ra.onlineIds().length === 2, "bob online for ada");
      await waitFor(() => rb.onlineIds().length === 2, "ada online for bob");
      assert.deepEqual(ra.onlineIds(), ids);
      assert.deepEqual(rb.onlineIds(), ids);
      const bobForAda = ra.seen.online.find((m) => m.userId === bobUser.user.id);
      assert.equal(bobForAda?.username, bobUser.user.username);
    });

    await t.step("an edit and a deletion made on one side show on the other", async () => {
      m1 = await ha.send("first draft");
      m2 = await hb.send("bob's line");
      const edited = await ha.edit(m1.id, "final text");
      assert.equal(edited.content, "final text");
      assert.ok(edited.editedAt instanceof Date);
      await waitFor(() => rb.message(m1.id)?.content === "final text", "bob sees the edit");
      assert.deepEqual(rb.message(m1.id)?.editedAt, edited.editedAt);
      const deleted = await hb.delete(m2.id);
      assert.ok(deleted.deletedAt instanceof Date);
      await waitFor(() => ra.message(m2.id)?.deletedAt instanceof Date, "ada sees the deletion");
      assert.equal(ra.message(m2.id)?.content, "");
      assert.equal(ra.message(m2.id)?.seq, m2.seq, "a deleted message keeps its seq");
      await waitFor(() => rb.message(m2.id)?.deletedAt instanceof Date, "bob's own list too");
      assert.deepEqual(ra.seen.messages, rb.seen.messages);
    });

    await t.step(
      "reactions reach the other side with their counts; mine is true only for who reacted",
      async () => {
        await hb.react(m1.id, "👍"); // a toggle: bob has none, so it adds
        await waitFor(() => ra.message(m1.id)?.reactions.length === 1, "ada sees bob's 👍");
        assert.deepEqual(reactionsOf(ra.message(m1.id)), [["👍", 1, false]]);
        await waitFor(() => reactionsOf(rb.message(m1.id))?.length === 1, "bob's own");
        assert.deepEqual(reactionsOf(rb.message(m1.id)), [["👍", 1, true]]);

        await ha.react(m1.id, "👍", true);
        await waitFor(() => ra.message(m1.id)?.reactions[0]?.count === 2, "two 👍");
        assert.deepEqual(reactionsOf(ra.message(m1.id)), [["👍", 2, true]]);
        await waitFor(() => rb.message(m1.id)?.reactions[0]?.count === 2, "two 👍 for bob");
        assert.deepEqual(reactionsOf(rb.message(m1.id)), [["👍", 2, true]]);

        const removed = await hb.react(m1.id, "👍"); // a toggle again: bob's is mine, so it goes
        assert.deepEqual([removed.added, removed.count], [false, 1]);
        await ha.react(m1.id, "🎉", true);
        const expected = {
          ada: [["👍", 1, true], ["🎉", 1, true]],
          bob: [["👍", 1, false], [
            "🎉",
            1,
            false,
          ]],
        };
        await waitFor(() => reactionsOf(ra.message(m1.id))?.length === 2, "🎉 for ada");
        await waitFor(() => reactionsOf(rb.message(m1.id))?.length === 2, "🎉 for bob");
        assert.deepEqual(reactionsOf(ra.message(m1.id)), expected.ada);
        assert.deepEqual(reactionsOf(rb.message(m1.id)), expected.bob);

        // What the events built is what a fresh load (messages.list, `mine` for the caller)
        // shows.
        const fresh = recorder();
        const again = watchRoom(bob.parley, room.id, fresh);
        try {
          await waitFor(() => fresh.state() === "live", "a second watch live");
          assert.deepEqual(fresh.seen.messages, rb.seen.messages);
        } finally {
          again.stop();
        }
      },
    );

    await t.step(
      "changes made while the first page is on its way are applied to it, once",
      async () => {
        // A second tab of bob's whose first page is read by the server at once, but whose
        // answer is held until the changes below have been streamed to it.
        let release = () => {};
        const gate = new Promise<void>((resolve) => release = resolve);
        let held = 0;
        const tab = createParleyClient({
          url: env.url,
          token: bobUser.token,
          fetch: async (input, init) => {
            const response = await fetch(input, init);
            if (String(input).includes("messages.list")) {
              held++;
              await gate;
            }
            return response;
          },
        });
        const r = recorder();
        const h = watchRoom(tab, room.id, r);
        try {
          await waitFor(() => held === 1, "the page read, its answer held");
          const sent = await ha.send("sent while the page was on its way");
          await ha.edit(m1.id, "edited while the page was on its way");
          await ha.react(sent.id, "🔥", true);
          await bob.parley.trpc.messages.react.mutate({
            roomId: room.id,
            messageId: sent.id,
            emoji: "🔥",
            on: true,
          });
          await waitFor(() => rb.message(sent.id)?.reactions[0]?.count === 2, "all streamed");
          assert.equal(r.state(), "connecting", "not live before the page is in");
          assert.equal(r.seen.messages.length, 0);
          release();
          await waitFor(() => r.state() === "live", "live");
          assert.equal(r.seen.messages.filter((m) => m.id === sent.id).length, 1);
          assert.equal(r.message(m1.id)?.content, "edited while the page was on its way");
          assert.deepEqual(reactionsOf(r.message(sent.id)), [["🔥", 2, true]]);
          assert.deepEqual(r.seen.messages, await bobsPage());
          assert.deepEqual(r.seen.messages, rb.seen.messages);
        } finally {
          h.stop();
          await tab.close();
        }
      },
    );

    await t.step(
      "changes to older messages made while loadOlder's page is on its way are applied to it",
      async () => {
        let release = () => {};
        const gate = new Promise<void>((resolve) => release = resolve);
        let held = 0;
        const tab = createParleyClient({
          url: env.url,
          token: bobUser.token,
          fetch: async (input, init) => {
            const response = await fetch(input, init);
            if (String(input).includes("beforeSeq")) {
              held++;
              await gate;
            }
            return response;
          },
        });
        const r = recorder();
        const h = watchRoom(tab, room.id, { ...r, pageSize: 2 });
        try {
          await waitFor(() => r.state() === "live", "live");
          assert.ok(r.message(m1.id) === undefined, "m1 is older than the first page");
          const older = h.loadOlder();
          await waitFor(() => held === 1, "the older page read, its answer held");
          await ha.edit(m1.id, "edited while an older page was on its way");
          await ha.react(m1.id, "👍", false);
          await waitFor(() => rb.message(m1.id)?.reactions.length === 1, "all streamed");
          release();
          assert.equal(await older, true);
          assert.equal(r.message(m1.id)?.content, "edited while an older page was on its way");
          assert.deepEqual(reactionsOf(r.message(m1.id)), [["🎉", 1, false]]);
          assert.deepEqual(r.seen.messages, rb.seen.messages.slice(0, r.seen.messages.length));
        } finally {
          h.stop();
          await tab.close();
        }
      },
    );

    await t.step(
      "typing shows the other member, never oneself; renewals are throttled; false and send end it",
      async () => {
        for (let i = 0; i < 10; i++) {
          hb.setTyping(true); // a keystroke
          await sleep(50);
        }
        await waitFor(() => ra.seen.typing.length === 1, "ada sees bob typing");
        assert.equal(ra.seen.typing[0].userId, bobUser.user.id);
        assert.equal(ra.seen.typing[0].username, bobUser.user.username);
        assert.deepEqual(rb.seen.typing, [], "bob's own typing is not listed to him");
        assert.equal(bob.count("rooms.typing"), 1, "ten keystrokes in 0.5 s: one call");

        hb.setTyping(false);
        await waitFor(() => ra.seen.typing.length === 0, "bob stopped");
        hb.setTyping(false);
        await sleep(100);
        assert.equal(bob.count("rooms.typing"), 2, "a second false sends nothing");

        hb.setTyping(true);
        await waitFor(() => ra.seen.typing.length === 1, "bob typing again");
        await sleep(2_600);
        hb.setTyping(true); // a keystroke 2.6 s later renews the state
        await waitFor(() => bob.count("rooms.typing") === 4, "one renewal");
        const sent = await hb.send("done typing");
        await waitFor(() => ra.seen.typing.length === 0, "sending ended bob's typing");
        assert.equal(bob.count("rooms.typing"), 5);
        await waitFor(() => ra.message(sent.id) !== undefined, "the message shown");
      },
    );

    await t.step("markRead moves the read position; rooms.mine's unreadCount follows", async () => {
      const unread = async () =>
        (await bob.parley.trpc.rooms.mine.query()).find((r) => r.id === room.id)!.unreadCount;
      // ada's messages count, not bob's own nor deleted ones.
      const before = rb.seen.messages.filter((m) =>
        m.userId === adaUser.user.id && m.deletedAt === null
      ).length;
      assert.equal(await unread(), before);
      const a2 = await ha.send("are you there?");
      const a3 = await ha.send("hello?");
      await waitFor(() => rb.seen.messages.at(-1)?.seq === a3.seq, "bob holds both");
      assert.equal(await unread(), before + 2);

      assert.deepEqual(await hb.markRead(a2.seq), { lastReadSeq: a2.seq });
      assert.equal(await unread(), 1);
      assert.deepEqual(await hb.markRead(), { lastReadSeq: a3.seq }, "the newest held");
      assert.equal(await unread(), 0);

      const calls = bob.count("rooms.markRead");
      assert.deepEqual(await hb.markRead(a2.seq), { lastReadSeq: a3.seq }, "never backwards");
      assert.deepEqual(await hb.markRead(), { lastReadSeq: a3.seq });
      assert.equal(bob.count("rooms.markRead"), calls, "nothing new to mark: no call");
      const list = (await ada.parley.trpc.rooms.mine.query()).find((r) => r.id === room.id)!;
      assert.equal(list.unreadCount, 1, "ada's read position is her own (bob's 'done typing')");
    });

    await t.step(
      "a cut socket loses nothing: changes made while it is down show after the resume, once",
      async () => {
        const seenBefore = bob.stored.length;
        bob.cut({ down: true });
        await waitFor(() => rb.state() === "reconnecting", "bob reconnecting");
        // Meanwhile, over HTTP: a new message, an edit, a deletion and reactions, one of them
        // bob's own (made from another tab, say).
        const away = await ha.send("while you were away");
        await ha.edit(m1.id, "edited while you were away");
        await ha.react(away.id, "❤️", true);
        await ha.react(m1.id, "🎉", false);
        await bob.parley.trpc.messages.react.mutate({
          roomId: room.id,
          messageId: away.id,
          emoji: "👀",
          on: true,
        });
        await ha.delete(m1.id);
        const latest = await bobsPage();
        bob.down = false;
        await waitFor(() => rb.state() === "live", "bob live again", 15_000);
        await waitFor(() => rb.message(m1.id)?.deletedAt instanceof Date, "the last change");
        assert.deepEqual(rb.seen.messages, latest, "bob's list is the server's page");
        assert.deepEqual(reactionsOf(rb.message(away.id)), [["❤️", 1, false], ["👀", 1, true]]);
        assert.ok(!rb.seen.states.includes("resyncing"), "resumed, not reloaded");
        // Each stored event came once, in order.
        const after = bob.stored.slice(seenBefore);
        assert.deepEqual(after.map((e) => e.type), [
          "message.created",
          "message.updated",
          "reaction.changed",
          "reaction.changed",
          "reaction.changed",
          "message.deleted",
        ]);
        const numbers = after.map((e) => Number(e.id));
        numbers.forEach((n, i) => i === 0 || assert.equal(n, numbers[i - 1] + 1));
        assert.equal(new Set(rb.seen.messages.map((m) => m.seq)).size, rb.seen.messages.length);
        assert.deepEqual(rb.onlineIds(), ids, "presence is back too");
      },
    );

    await t.step(
      "after a resync (too much missed), the reload shows edits and reactions as they are, mine included",
      async () => {
        const mine = await ha.send("edit me later");
        await waitFor(() => rb.message(mine.id) !== undefined, "bob holds it");
        const statesBefore = rb.seen.states.length;
        bob.cut({ down: true });
        await waitFor(() => rb.state() === "reconnecting", "bob reconnecting");
        // 1,100 stored events (more than a replay may hold) while bob is away.
        await env.sql`
          with bump as (
            update rooms set last_event_id = last_event_id + 1100 where id = ${room.id}
            returning last_event_id
          )
          insert into room_events (room_id, event_id, type, message_id)
          select ${room.id}, bump.last_event_id - 1100 + s, 'message.updated', ${mine.id}
          from bump, generate_series(1, 1100) s
        `;
        await ha.edit(mine.id, "edited during the resync");
        await bob.parley.trpc.messages.react.mutate({
          roomId: room.id,
          messageId: mine.id,
          emoji: "🙏",
          on: true,
        });
        bob.down = false;
        await waitFor(() => rb.seen.states.slice(statesBefore).includes("resyncing"), "resync");
        await waitFor(() => rb.state() === "live", "live after the resync", 15_000);
        assert.deepEqual(rb.seen.messages, await bobsPage());
        assert.equal(rb.message(mine.id)?.content, "edited during the resync");
        assert.deepEqual(reactionsOf(rb.message(mine.id)), [["🙏", 1, true]]);

        // Live again from the new position.
        await ha.react(mine.id, "🙏", true);
        await waitFor(() => rb.message(mine.id)?.reactions[0]?.count === 2, "live after it");
        assert.deepEqual(reactionsOf(rb.message(mine.id)), [["🙏", 2, true]]);
      },
    );

    await t.step("a member who stops watching goes offline for the other", async () => {
      await waitFor(() => ra.onlineIds().length === 2, "bob online for ada after his resync");
      hb.stop();
      await waitFor(() => ra.onlineIds().length === 1, "bob offline");
      assert.deepEqual(ra.onlineIds(), [adaUser.user.id]);
    });
  } finally {
    for (const handle of handles) handle.stop();
    await Promise.all([ada.parley.close(), bob.parley.close()]);
  }
});
