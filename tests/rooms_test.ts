import assert from "node:assert/strict";
import { callError, client, errorCode, signUp, startTestEnv } from "./_helpers.ts";

const UNKNOWN_ROOM = "00000000-0000-4000-8000-000000000000";

Deno.test("rooms", async (t) => {
  await using env = await startTestEnv();
  const alice = await signUp(env, { avatarUrl: "https://cdn.example.com/alice.png" });
  const bob = await signUp(env);

  await t.step("rooms.create returns the room and joins its creator", async () => {
    const room = await alice.api.rooms.create.mutate({
      name: "  Standup  ",
      thumbnailUrl: "https://cdn.example.com/standup.jpg",
    });
    assert.equal(room.name, "Standup");
    assert.equal(room.thumbnailUrl, "https://cdn.example.com/standup.jpg");
    assert.equal(room.createdBy, alice.user.id);
    assert.ok(room.createdAt instanceof Date);
    const members = await alice.api.rooms.members.query({ roomId: room.id });
    assert.deepEqual(members.map((m) => [m.userId, m.username, m.avatarUrl]), [
      [alice.user.id, alice.user.username, "https://cdn.example.com/alice.png"],
    ]);
  });

  await t.step("rooms.create without a token is UNAUTHORIZED and writes nothing", async () => {
    const [{ n: before }] = await env.sql`select count(*)::int as n from rooms`;
    assert.equal(await errorCode(client(env).rooms.create.mutate({ name: "x" })), "UNAUTHORIZED");
    const [{ n: after }] = await env.sql`select count(*)::int as n from rooms`;
    assert.equal(after, before);
  });

  await t.step("rooms.get returns a room; an unknown one is NOT_FOUND", async () => {
    const room = await alice.api.rooms.create.mutate({ name: "Lookup" });
    assert.deepEqual(await client(env).rooms.get.query({ roomId: room.id }), room);
    assert.equal(
      await errorCode(client(env).rooms.get.query({ roomId: UNKNOWN_ROOM })),
      "NOT_FOUND",
    );
  });

  await t.step("rooms.list pages newest first with a cursor, without repeats", async () => {
    const created = [];
    for (let i = 0; i < 7; i++) {
      created.push(await bob.api.rooms.create.mutate({ name: `page ${i}` }));
    }
    const all = [];
    let cursor: string | undefined;
    do {
      const page = await client(env).rooms.list.query({ limit: 3, cursor });
      assert.ok(page.items.length <= 3);
      all.push(...page.items);
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    const ids = all.map((room) => room.id);
    assert.equal(new Set(ids).size, ids.length);
    assert.deepEqual(
      ids.slice(0, 7),
      created.map((room) => room.id).reverse(),
      "the seven newest rooms come first, newest first",
    );
    const [{ n }] = await env.sql`select count(*)::int as n from rooms`;
    assert.equal(all.length, n);
    const first = await client(env).rooms.list.query();
    assert.equal(first.items[0].id, created[6].id);
  });

  await t.step(
    "rooms.update by the creator changes name and thumbnail; null clears it",
    async () => {
      const room = await alice.api.rooms.create.mutate({
        name: "Old",
        thumbnailUrl: "https://cdn.example.com/old.jpg",
      });
      const renamed = await alice.api.rooms.update.mutate({ roomId: room.id, name: "New" });
      assert.deepEqual([renamed.name, renamed.thumbnailUrl], [
        "New",
        "https://cdn.example.com/old.jpg",
      ]);
      const cleared = await alice.api.rooms.update.mutate({ roomId: room.id, thumbnailUrl: null });
      assert.deepEqual([cleared.name, cleared.thumbnailUrl], ["New", null]);
      const fetched = await client(env).rooms.get.query({ roomId: room.id });
      assert.deepEqual(fetched, cleared, "the thumbnail change persisted");
    },
  );

  await t.step("rooms.update by anyone else is FORBIDDEN; an unknown room NOT_FOUND", async () => {
    const room = await alice.api.rooms.create.mutate({ name: "Mine" });
    await bob.api.rooms.join.mutate({ roomId: room.id });
    const error = await callError(bob.api.rooms.update.mutate({ roomId: room.id, name: "Hijack" }));
    assert.equal(error.data?.code, "FORBIDDEN");
    assert.equal((await client(env).rooms.get.query({ roomId: room.id })).name, "Mine");
    assert.equal(
      await errorCode(alice.api.rooms.update.mutate({ roomId: UNKNOWN_ROOM, name: "x" })),
      "NOT_FOUND",
    );
  });

  await t.step("rooms.join twice returns the same membership", async () => {
    const room = await alice.api.rooms.create.mutate({ name: "Join twice" });
    const first = await bob.api.rooms.join.mutate({ roomId: room.id });
    const second = await bob.api.rooms.join.mutate({ roomId: room.id });
    assert.deepEqual(second, first);
    assert.equal(first.userId, bob.user.id);
    assert.equal(first.username, bob.user.username);
    assert.ok(first.joinedAt instanceof Date);
    const members = await alice.api.rooms.members.query({ roomId: room.id });
    assert.equal(members.length, 2);
  });

  await t.step(
    "rooms.join of an unknown room is NOT_FOUND; without a token UNAUTHORIZED",
    async () => {
      assert.equal(
        await errorCode(bob.api.rooms.join.mutate({ roomId: UNKNOWN_ROOM })),
        "NOT_FOUND",
      );
      const room = await alice.api.rooms.create.mutate({ name: "Closed door" });
      assert.equal(
        await errorCode(client(env).rooms.join.mutate({ roomId: room.id })),
        "UNAUTHORIZED",
      );
    },
  );

  await t.step("rooms.members shows each member's current name and avatar", async () => {
    const carol = await signUp(env);
    const room = await alice.api.rooms.create.mutate({ name: "Profiles" });
    await carol.api.rooms.join.mutate({ roomId: room.id });
    await carol.api.users.update.mutate({
      username: `${carol.user.username}_x`,
      avatarUrl: "https://cdn.example.com/carol2.png",
    });
    const members = await alice.api.rooms.members.query({ roomId: room.id });
    const entry = members.find((m) => m.userId === carol.user.id);
    assert.equal(entry?.username, `${carol.user.username}_x`);
    assert.equal(entry?.avatarUrl, "https://cdn.example.com/carol2.png");
    assert.equal(entry?.roomId, room.id);
  });

  await t.step("rooms.members for a non-member is FORBIDDEN; unknown room NOT_FOUND", async () => {
    const room = await alice.api.rooms.create.mutate({ name: "Private" });
    assert.equal(await errorCode(bob.api.rooms.members.query({ roomId: room.id })), "FORBIDDEN");
    assert.equal(
      await errorCode(bob.api.rooms.members.query({ roomId: UNKNOWN_ROOM })),
      "NOT_FOUND",
    );
    assert.equal(
      await errorCode(client(env).rooms.members.query({ roomId: room.id })),
      "UNAUTHORIZED",
    );
  });

  await t.step("rooms.leave reports whether the caller was a member and removes them", async () => {
    const room = await alice.api.rooms.create.mutate({ name: "Revolving door" });
    await bob.api.rooms.join.mutate({ roomId: room.id });
    assert.deepEqual(await bob.api.rooms.leave.mutate({ roomId: room.id }), { left: true });
    assert.deepEqual(await bob.api.rooms.leave.mutate({ roomId: room.id }), { left: false });
    assert.equal(await errorCode(bob.api.rooms.members.query({ roomId: room.id })), "FORBIDDEN");
    assert.equal(
      await errorCode(bob.api.rooms.leave.mutate({ roomId: UNKNOWN_ROOM })),
      "NOT_FOUND",
    );
  });
});
