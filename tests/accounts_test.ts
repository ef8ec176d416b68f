/**
 * Accounts across devices: passwords, sign-in and its lockout, sessions that expire and can be
 * ended from another device, and account deletion, over HTTP and WebSocket, end to end.
 */
import assert from "node:assert/strict";
import type { AppRouter } from "../server/router.ts";
import { hashToken, newToken } from "../server/auth.ts";
import type { TRPCClientError } from "@trpc/client";
import {
  BULK_LIMITS,
  callError,
  client,
  errorCode,
  needsRealPostgres,
  startTestEnv,
  type TestEnv,
  waitFor,
  wsClient,
} from "./_helpers.ts";

/** An origin the test servers allow (see TEST_ORIGINS). */
const ALLOWED_ORIGIN = "https://app.example.com";

type Trpc = ReturnType<typeof client> | ReturnType<typeof wsClient>["trpc"];

let counter = 0;

/** A fresh username. */
function name(prefix = "acct"): string {
  return `${prefix}_${Date.now().toString(36)}_${++counter}`;
}

/** Watches a room's messages over `trpc`, collecting error codes and messages. */
function watch(trpc: Trpc, roomId: string) {
  const seen = { started: false, errors: [] as string[], messages: [] as string[] };
  const sub = trpc.messages.onMessage.subscribe({ roomId }, {
    onStarted: () => void (seen.started = true),
    onData: (event) => void seen.messages.push(event.data.content),
    onError: (error) => {
      seen.errors.push(error.data?.code ?? error.message);
      seen.messages.push(`error: ${error.message}`);
    },
  });
  return { seen, stop: () => sub.unsubscribe() };
}

/** The median of `runs` timings of `fn`, in ms. */
async function medianMs(runs: number, fn: () => Promise<unknown>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await fn().catch(() => {});
    times.push(performance.now() - started);
  }
  return times.sort((a, b) => a - b)[Math.floor(runs / 2)];
}

/** Opens a WebSocket client on `env` with `token`, closed when the test's `open` list is. */
function connector(env: TestEnv, open: { close(): Promise<void> }[]) {
  return (token: string | null) => {
    const c = wsClient(env, { origin: ALLOWED_ORIGIN, token });
    open.push(c);
    return c;
  };
}

Deno.test("accounts: passwords, sign-in on a second device, lockout per username", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const anon = client(env);

  await t.step(
    "users.create with a password returns the user, a token and its expiry",
    async () => {
      const username = name("pw");
      const before = Date.now();
      const created = await anon.users.create.mutate({ username, password: "correct horse" });
      assert.equal(created.user.username, username);
      assert.equal(created.user.hasPassword, true);
      assert.match(created.token, /^[A-Za-z0-9_-]{43}$/);
      const days = (created.expiresAt.getTime() - before) / 86_400_000;
      assert.ok(days > 29.9 && days < 30.1, `expires in ${days} days, not 30`);
    },
  );

  await t.step(
    "a guest account (no password) cannot be signed into, like an unknown name",
    async () => {
      const username = name("guest");
      const guest = await anon.users.create.mutate({ username });
      assert.equal(guest.user.hasPassword, false);
      const error = await callError(
        anon.auth.signIn.mutate({ username, password: "anything at all" }),
      );
      assert.equal(error.data?.code, "UNAUTHORIZED");
      assert.equal(error.message, "Wrong username or password");
    },
  );

  await t.step(
    "signing in on a second device reaches the same account with a new session",
    async () => {
      const username = name("Dev");
      const laptop = await anon.users.create.mutate({
        username,
        password: "laptop and phone",
        avatarUrl: "https://cdn.example.com/dev.png",
      });
      const room = await client(env, { token: laptop.token }).rooms.create.mutate({ name: "Mine" });
      await client(env, { token: laptop.token }).messages.send.mutate({
        roomId: room.id,
        content: "from the laptop",
      });
      // Any case or width of the name signs in.
      const phone = await anon.auth.signIn.mutate({
        username: username.toUpperCase(),
        password: "laptop and phone",
      });
      assert.equal(phone.user.id, laptop.user.id);
      assert.notEqual(phone.token, laptop.token);
      const api = client(env, { token: phone.token });
      assert.equal((await api.users.me.query()).avatarUrl, "https://cdn.example.com/dev.png");
      const history = await api.messages.list.query({ roomId: room.id });
      assert.deepEqual(history.items.map((m) => m.content), ["from the laptop"]);
      const sessions = await api.auth.sessions.query();
      assert.equal(sessions.length, 2);
      assert.deepEqual(sessions.map((s) => s.current), [true, false]);
      for (const session of sessions) {
        assert.match(session.id, /^[0-9a-f-]{36}$/);
        assert.ok(session.expiresAt > session.createdAt);
        assert.ok(session.lastUsedAt >= session.createdAt);
        assert.equal(session.userAgent, `Deno/${Deno.version.deno}`);
      }
      // The laptop's token still works.
      assert.equal(
        (await client(env, { token: laptop.token }).users.me.query()).id,
        laptop.user.id,
      );
    },
  );

  await t.step("sign-in works over WebSocket too", async () => {
    const username = name("ws");
    await anon.users.create.mutate({ username, password: "over the socket" });
    const ws = wsClient(env, { origin: ALLOWED_ORIGIN });
    try {
      const session = await ws.trpc.auth.signIn.mutate({ username, password: "over the socket" });
      assert.equal(session.user.username, username);
      assert.equal(
        (await client(env, { token: session.token }).users.me.query()).username,
        username,
      );
    } finally {
      await ws.close();
    }
  });

  await t.step(
    "a wrong password and an unknown username: same error, about the same time",
    async () => {
      const username = name("timing");
      await anon.users.create.mutate({ username, password: "the real password" });
      const wrong = await callError(anon.auth.signIn.mutate({ username, password: "not the one" }));
      const unknown = await callError(
        anon.auth.signIn.mutate({ username: name("nobody"), password: "not the one" }),
      );
      assert.deepEqual(
        [wrong.data?.code, wrong.message, wrong.data?.httpStatus],
        [unknown.data?.code, unknown.message, unknown.data?.httpStatus],
      );
      const wrongMs = await medianMs(
        3,
        () => anon.auth.signIn.mutate({ username, password: "still not it" }),
      );
      const unknownMs = await medianMs(
        3,
        () => anon.auth.signIn.mutate({ username: name("nobody"), password: "still not it" }),
      );
      const ratio = wrongMs / unknownMs;
      assert.ok(ratio > 0.6 && ratio < 1.6, `wrong ${wrongMs} ms vs unknown ${unknownMs} ms`);
      // Each check is a memory-hard hash, not a string compare.
      assert.ok(unknownMs > 50, `an unknown name answered in ${unknownMs} ms`);
    },
  );

  await t.step(
    "10 failures lock that username (even the right password) and no other",
    async () => {
      const username = name("locked");
      const other = name("free");
      await anon.users.create.mutate({ username, password: "right password" });
      await anon.users.create.mutate({ username: other, password: "right password" });
      for (let i = 0; i < 10; i++) {
        assert.equal(
          await errorCode(anon.auth.signIn.mutate({ username, password: `guess ${i} wrong` })),
          "UNAUTHORIZED",
        );
      }
      const locked = await callError(
        anon.auth.signIn.mutate({ username, password: "right password" }),
      );
      assert.equal(locked.data?.code, "TOO_MANY_REQUESTS");
      assert.equal(locked.data?.httpStatus, 429);
      const retryAfterMs = (locked.data as { retryAfterMs: number }).retryAfterMs;
      assert.ok(retryAfterMs > 14 * 60_000 && retryAfterMs <= 15 * 60_000, `${retryAfterMs} ms`);
      // The same name in another case is the same username.
      assert.equal(
        await errorCode(
          anon.auth.signIn.mutate({ username: username.toUpperCase(), password: "right password" }),
        ),
        "TOO_MANY_REQUESTS",
      );
      // Others sign in as usual, from the same address.
      const ok = await anon.auth.signIn.mutate({ username: other, password: "right password" });
      assert.equal(ok.user.username, other);
      // Once the window has passed (moved back in the database), the right password works again.
      await env.sql`
      update sign_in_failures set window_started_at = now() - interval '16 minutes'
    `;
      const back = await anon.auth.signIn.mutate({ username, password: "right password" });
      assert.equal(back.user.username, username);
    },
  );

  await t.step(
    "20 guesses at once are counted before they are checked: at most 10 are",
    async () => {
      const username = name("burst");
      await anon.users.create.mutate({ username, password: "right password" });
      const codes = await Promise.all(
        Array.from(
          { length: 20 },
          (_, i) =>
            errorCode(client(env).auth.signIn.mutate({ username, password: `burst ${i}!` })),
        ),
      );
      assert.equal(codes.filter((c) => c === "UNAUTHORIZED").length, 10, codes.join(","));
      assert.equal(codes.filter((c) => c === "TOO_MANY_REQUESTS").length, 10, codes.join(","));
      assert.equal(
        await errorCode(anon.auth.signIn.mutate({ username, password: "right password" })),
        "TOO_MANY_REQUESTS",
      );
    },
  );

  await t.step("a successful sign-in clears earlier failures", async () => {
    const username = name("clear");
    await anon.users.create.mutate({ username, password: "right password" });
    for (let i = 0; i < 9; i++) {
      await errorCode(anon.auth.signIn.mutate({ username, password: `nope ${i} nope` }));
    }
    await anon.auth.signIn.mutate({ username, password: "right password" });
    for (let i = 0; i < 9; i++) {
      await errorCode(anon.auth.signIn.mutate({ username, password: `nope ${i} nope` }));
    }
    assert.equal(
      (await anon.auth.signIn.mutate({ username, password: "right password" })).user.username,
      username,
    );
  });

  await t.step(
    "passwords: 8 to 256 characters, any Unicode, NFKC-normalised, never logged",
    async () => {
      const short = await callError(
        anon.users.create.mutate({ username: name(), password: "seven77" }),
      );
      assert.equal(short.data?.code, "BAD_REQUEST");
      assert.match(short.message, /Password must be 8 to 256 characters/);
      assert.equal(
        await errorCode(anon.users.create.mutate({ username: name(), password: "x".repeat(257) })),
        "BAD_REQUEST",
      );
      assert.equal(
        await errorCode(
          anon.users.create.mutate({ username: name(), password: "lone \uD800 surrogate" }),
        ),
        "BAD_REQUEST",
      );
      // 8 emoji (16 UTF-16 units each pair) are 8 characters; 256 characters pass.
      const emoji = name("emoji");
      await anon.users.create.mutate({ username: emoji, password: "🔑".repeat(8) });
      await anon.auth.signIn.mutate({ username: emoji, password: "🔑".repeat(8) });
      await anon.users.create.mutate({ username: name(), password: "é".repeat(256) });
      // No composition rules: all lower-case letters are fine.
      await anon.users.create.mutate({ username: name(), password: "abcdefgh" });
      // Set in full width, signed in with ASCII: the same password after NFKC.
      const wide = name("wide");
      await anon.users.create.mutate({ username: wide, password: "Ｐａｓｓｗｏｒｄ１２" });
      await anon.auth.signIn.mutate({ username: wide, password: "Password12" });
      // Composed and decomposed accents are one password.
      const accent = name("accent");
      await anon.users.create.mutate({ username: accent, password: "cr\u00e8me br\u00fbl\u00e9e" });
      await anon.auth.signIn.mutate({
        username: accent,
        password: "cre\u0300me bru\u0302le\u0301e",
      });
      // Nothing of a password reaches the log or the database in clear.
      const logged = JSON.stringify(env.log.events) + env.log.lines.join("\n");
      for (const secret of ["Password12", "right password", "correct horse", "crème"]) {
        assert.ok(!logged.includes(secret), `"${secret}" was logged`);
      }
      const [stored] = await env.sql<[{ passwordHash: string }]>`
      select password_hash from users where username = ${wide}
    `;
      assert.match(
        stored.passwordHash,
        /^\$scrypt\$ln=15,r=8,p=3\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/,
      );
    },
  );
});

Deno.test("accounts: setPassword, sessions ended from another device, deletion", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const anon = client(env);
  const open: { close(): Promise<void> }[] = [];
  const connect = connector(env, open);
  try {
    await t.step(
      "a guest sets a password without a current one, then signs in elsewhere",
      async () => {
        const username = name("guest");
        const guest = await anon.users.create.mutate({ username });
        const api = client(env, { token: guest.token });
        assert.deepEqual(
          await api.users.setPassword.mutate({ password: "now I have one" }),
          { ok: true, sessionsEnded: 0 },
        );
        assert.equal((await api.users.me.query()).hasPassword, true);
        const phone = await anon.auth.signIn.mutate({ username, password: "now I have one" });
        assert.equal(phone.user.id, guest.user.id);
      },
    );

    await t.step(
      "changing a password needs the current one and ends the other sessions",
      async () => {
        const username = name("change");
        const laptop = await anon.users.create.mutate({ username, password: "first password" });
        const phone = await anon.auth.signIn.mutate({ username, password: "first password" });
        const api = client(env, { token: laptop.token });
        const room = await api.rooms.create.mutate({ name: "Change" });
        const w = watch(connect(phone.token).trpc, room.id);
        await waitFor(() => w.seen.started, "the phone subscribed");
        const missing = await callError(
          api.users.setPassword.mutate({ password: "second password" }),
        );
        assert.equal(missing.data?.code, "BAD_REQUEST");
        assert.match(missing.message, /currentPassword is required/);
        const wrong = await callError(
          api.users.setPassword.mutate({
            password: "second password",
            currentPassword: "nope nope",
          }),
        );
        // FORBIDDEN, not UNAUTHORIZED: the session itself is fine.
        assert.equal(wrong.data?.code, "FORBIDDEN");
        assert.deepEqual(
          await api.users.setPassword.mutate({
            password: "second password",
            currentPassword: "first password",
          }),
          { ok: true, sessionsEnded: 1 },
        );
        await waitFor(() => w.seen.errors.length > 0, "the phone's subscription ended", 2000);
        assert.deepEqual(w.seen.errors, ["UNAUTHORIZED"]);
        assert.equal(
          await errorCode(client(env, { token: phone.token }).users.me.query()),
          "UNAUTHORIZED",
        );
        assert.equal((await api.users.me.query()).username, username);
        assert.equal(
          await errorCode(anon.auth.signIn.mutate({ username, password: "first password" })),
          "UNAUTHORIZED",
        );
        await anon.auth.signIn.mutate({ username, password: "second password" });
      },
    );

    await t.step(
      "auth.revoke ends one device's session and its subscriptions at once",
      async () => {
        const username = name("revoke");
        const laptop = await anon.users.create.mutate({ username, password: "revoke a device" });
        const phone = await anon.auth.signIn.mutate({ username, password: "revoke a device" });
        const api = client(env, { token: laptop.token });
        const room = await api.rooms.create.mutate({ name: "Revoke" });
        const phoneSocket = connect(phone.token);
        const w = watch(phoneSocket.trpc, room.id);
        await waitFor(() => w.seen.started, "the phone subscribed");
        const sessions = await api.auth.sessions.query();
        const phoneSession = sessions.find((s) => !s.current)!;
        assert.deepEqual(await api.auth.revoke.mutate({ sessionId: phoneSession.id }), {
          ok: true,
        });
        await waitFor(() => w.seen.errors.length > 0, "the phone's subscription ended", 1000);
        assert.deepEqual(w.seen.errors, ["UNAUTHORIZED"]);
        assert.match(w.seen.messages.at(-1)!, /Session ended/);
        // The open socket can no longer act as the user either.
        assert.equal(await errorCode(phoneSocket.trpc.users.me.query()), "UNAUTHORIZED");
        assert.deepEqual((await api.auth.sessions.query()).map((s) => s.current), [true]);
        // Someone else's session, or one already gone: NOT_FOUND.
        assert.equal(
          await errorCode(api.auth.revoke.mutate({ sessionId: phoneSession.id })),
          "NOT_FOUND",
        );
        const stranger = await anon.users.create.mutate({ username: name() });
        const [strangerSession] = await client(env, { token: stranger.token }).auth.sessions
          .query();
        assert.equal(
          await errorCode(api.auth.revoke.mutate({ sessionId: strangerSession.id })),
          "NOT_FOUND",
        );
        assert.equal(
          (await client(env, { token: stranger.token }).users.me.query()).id,
          stranger.user.id,
        );
        assert.equal(
          await errorCode(api.auth.revoke.mutate({ sessionId: "not-a-uuid" })),
          "BAD_REQUEST",
        );
      },
    );

    await t.step("auth.revokeOthers keeps the caller's session and ends every other", async () => {
      const username = name("others");
      const main = await anon.users.create.mutate({ username, password: "keep only me" });
      const a = await anon.auth.signIn.mutate({ username, password: "keep only me" });
      const b = await anon.auth.signIn.mutate({ username, password: "keep only me" });
      const room = await client(env, { token: main.token }).rooms.create.mutate({ name: "Others" });
      const wa = watch(connect(a.token).trpc, room.id);
      const wb = watch(connect(b.token).trpc, room.id);
      const mine = watch(connect(main.token).trpc, room.id);
      await waitFor(() => wa.seen.started && wb.seen.started && mine.seen.started, "subscribed");
      const ws = connect(main.token);
      assert.deepEqual(await ws.trpc.auth.revokeOthers.mutate(), { ended: 2 });
      await waitFor(() => wa.seen.errors.length > 0 && wb.seen.errors.length > 0, "ended", 1000);
      assert.deepEqual([wa.seen.errors, wb.seen.errors], [["UNAUTHORIZED"], ["UNAUTHORIZED"]]);
      await client(env, { token: main.token }).messages.send.mutate({
        roomId: room.id,
        content: "still here",
      });
      await waitFor(() => mine.seen.messages.includes("still here"), "mine still live");
      assert.deepEqual(mine.seen.errors, []);
    });

    await t.step("auth.signOut ends the session; signing in again works", async () => {
      const username = name("out");
      const first = await anon.users.create.mutate({ username, password: "sign me out" });
      const api = client(env, { token: first.token });
      assert.deepEqual(await api.auth.signOut.mutate(), { ok: true });
      assert.equal(await errorCode(api.users.me.query()), "UNAUTHORIZED");
      const again = await anon.auth.signIn.mutate({ username, password: "sign me out" });
      assert.equal(again.user.id, first.user.id);
    });

    await t.step(
      "users.delete: password required, sessions end, name freed, messages kept",
      async () => {
        const username = name("Gone");
        const doomed = await anon.users.create.mutate({
          username,
          password: "delete me please",
          avatarUrl: "https://cdn.example.com/gone.png",
        });
        const phone = await anon.auth.signIn.mutate({ username, password: "delete me please" });
        const api = client(env, { token: doomed.token });
        const friend = await anon.users.create.mutate({ username: name("friend") });
        const friendApi = client(env, { token: friend.token });
        const own = await api.rooms.create.mutate({ name: "Created by the deleted" });
        const shared = await friendApi.rooms.create.mutate({ name: "Shared" });
        await api.rooms.join.mutate({ roomId: shared.id });
        await api.messages.send.mutate({ roomId: shared.id, content: "I was here" });
        await friendApi.messages.send.mutate({ roomId: shared.id, content: "so was I" });
        const w = watch(connect(phone.token).trpc, shared.id);
        await waitFor(() => w.seen.started, "the phone subscribed");

        assert.equal(await errorCode(api.users.delete.mutate({})), "BAD_REQUEST");
        assert.equal(
          await errorCode(api.users.delete.mutate({ password: "not my password" })),
          "FORBIDDEN",
        );
        assert.deepEqual(await api.users.delete.mutate({ password: "delete me please" }), {
          ok: true,
        });
        await waitFor(() => w.seen.errors.length > 0, "the phone's subscription ended", 1000);
        assert.deepEqual(w.seen.errors, ["UNAUTHORIZED"]);
        for (const token of [doomed.token, phone.token]) {
          assert.equal(await errorCode(client(env, { token }).users.me.query()), "UNAUTHORIZED");
        }
        assert.equal(
          await errorCode(anon.auth.signIn.mutate({ username, password: "delete me please" })),
          "UNAUTHORIZED",
        );
        // History stays, without the person.
        const history = await friendApi.messages.list.query({ roomId: shared.id });
        assert.deepEqual(
          history.items.map((m) => [m.content, m.userId, m.username, m.avatarUrl]),
          [
            ["I was here", null, "Deleted user", null],
            ["so was I", friend.user.id, friend.user.username, null],
          ],
        );
        // Memberships are gone; the room they created stays, without a creator.
        const members = await friendApi.rooms.members.query({ roomId: shared.id });
        assert.deepEqual(members.map((m) => m.userId), [friend.user.id]);
        const kept = await friendApi.rooms.get.query({ roomId: own.id });
        assert.equal(kept.createdBy, null);
        // The name is free again.
        const reborn = await anon.users.create.mutate({ username });
        assert.notEqual(reborn.user.id, doomed.user.id);
      },
    );

    await t.step("a replay from memory after a deletion shows the deleted user too", async () => {
      const username = name("memo");
      const doomed = await anon.users.create.mutate({ username, password: "forget me now" });
      const friend = await anon.users.create.mutate({ username: name("keeper") });
      const friendApi = client(env, { token: friend.token });
      const room = await friendApi.rooms.create.mutate({ name: "Memory" });
      await client(env, { token: doomed.token }).rooms.join.mutate({ roomId: room.id });
      // A subscriber keeps the room watched, so its last messages stay in the hub's memory.
      const live = watch(connect(friend.token).trpc, room.id);
      await waitFor(() => live.seen.started, "watched");
      await friendApi.messages.send.mutate({ roomId: room.id, content: "first" });
      await client(env, { token: doomed.token }).messages.send.mutate({
        roomId: room.id,
        content: "mine",
      });
      await waitFor(() => live.seen.messages.includes("mine"), "delivered");
      await client(env, { token: doomed.token }).users.delete.mutate({ password: "forget me now" });
      const replayed: { username: string; userId: string | null }[] = [];
      const socket = connect(friend.token);
      const sub = socket.trpc.messages.onMessage.subscribe({ roomId: room.id, lastEventId: "1" }, {
        onData: (event) => void replayed.push(event.data),
      });
      await waitFor(() => replayed.length === 1, "replayed");
      sub.unsubscribe();
      assert.deepEqual(replayed.map((m) => [m.username, m.userId]), [["Deleted user", null]]);
    });

    await t.step("the name deleted accounts show is reserved, in any case or look", async () => {
      for (
        const username of [
          "Deleted user",
          "deleted USER",
          "DeIeted user",
          "Deleted_user",
          "Deleted-user",
          "Deleted user 2",
          "Deleted user.",
        ]
      ) {
        const error = await callError(anon.users.create.mutate({ username }));
        assert.equal(error.data?.code, "BAD_REQUEST");
        assert.match(error.message, /reserved/);
      }
      const someone = await anon.users.create.mutate({ username: name() });
      assert.equal(
        await errorCode(
          client(env, { token: someone.token }).users.update.mutate({ username: "Deleted User" }),
        ),
        "BAD_REQUEST",
      );
    });

    await t.step(
      "past 100 sessions the least recently used is dropped, its socket too",
      async () => {
        const username = name("many");
        const first = await anon.users.create.mutate({ username, password: "a hundred devices" });
        // 99 more sessions, written directly (a sign-in costs a password hash each), the oldest
        // used longest ago.
        const tokens = Array.from({ length: 99 }, () => newToken());
        for (const [i, token] of tokens.entries()) {
          await env.sql`
          insert into tokens (hash, user_id, expires_at, last_used_at)
          values (${hashToken(token)}, ${first.user.id}, now() + interval '1 day',
            now() - make_interval(mins => ${200 - i}))
        `;
        }
        const oldest = tokens[0];
        const room = await client(env, { token: first.token }).rooms.create.mutate({
          name: "Many",
        });
        const w = watch(connect(oldest).trpc, room.id);
        await waitFor(() => w.seen.started, "the oldest device subscribed");
        // Its subscription just counted as a use: make it the least recent again.
        await new Promise((r) => setTimeout(r, 1200));
        await env.sql`
        update tokens set last_used_at = now() - interval '1 year' where hash = ${hashToken(oldest)}
      `;
        await anon.auth.signIn.mutate({ username, password: "a hundred devices" });
        await waitFor(
          () => w.seen.errors.length > 0,
          "the dropped session's subscription ended",
          2000,
        );
        assert.deepEqual(w.seen.errors, ["UNAUTHORIZED"]);
        const sessions = await client(env, { token: first.token }).auth.sessions.query();
        assert.equal(sessions.length, 100);
        assert.equal(
          await errorCode(client(env, { token: oldest }).users.me.query()),
          "UNAUTHORIZED",
        );
      },
    );

    await t.step(
      "wrong current passwords lock the account, and renaming it does not help",
      async () => {
        const username = name("rename");
        const owner = await anon.users.create.mutate({ username, password: "the real one" });
        const thief = client(env, { token: owner.token });
        for (let i = 0; i < 10; i++) {
          assert.equal(
            await errorCode(
              thief.users.setPassword.mutate({
                password: "taken over",
                currentPassword: `guess ${i}`,
              }),
            ),
            "FORBIDDEN",
          );
        }
        await thief.users.update.mutate({ username: name("renamed") });
        assert.equal(
          await errorCode(
            thief.users.setPassword.mutate({
              password: "taken over",
              currentPassword: "the real one",
            }),
          ),
          "TOO_MANY_REQUESTS",
        );
      },
    );

    await t.step("sends racing the deletion never keep the person's name", async () => {
      const friend = await anon.users.create.mutate({ username: name("host") });
      const room = await client(env, { token: friend.token }).rooms.create.mutate({ name: "Race" });
      const doomed = await anon.users.create.mutate({
        username: name("racer"),
        avatarUrl: "https://cdn.example.com/racer.png",
      });
      const racer = client(env, { token: doomed.token });
      await racer.rooms.join.mutate({ roomId: room.id });
      let sending = true;
      const outcomes: string[] = [];
      const senders = Array.from({ length: 4 }, async (_, n) => {
        for (let i = 0; sending; i++) {
          outcomes.push(
            await errorCode(racer.messages.send.mutate({ roomId: room.id, content: `${n}:${i}` })),
          );
        }
      });
      await new Promise((r) => setTimeout(r, 150));
      await racer.users.delete.mutate({});
      await new Promise((r) => setTimeout(r, 100));
      sending = false;
      await Promise.all(senders);
      const rows = await env.sql<{ userId: string | null; username: string; avatarUrl: string }[]>`
        select user_id, username, avatar_url from messages where room_id = ${room.id}
      `;
      assert.ok(rows.length > 0, "some sends landed before the deletion");
      for (const row of rows) {
        assert.deepEqual([row.userId, row.username, row.avatarUrl], [null, "Deleted user", null]);
      }
      // After the deletion every send is refused as unauthenticated, never as a server error.
      assert.deepEqual(
        [...new Set(outcomes)].filter((code) => code !== "OK" && code !== "UNAUTHORIZED"),
        [],
      );
      assert.ok(!env.log.lines.some((line) => /deadlock/.test(line)), env.log.lines.join("\n"));
    });

    await t.step("a guest deletes their account without a password", async () => {
      const guest = await anon.users.create.mutate({ username: name("guestgone") });
      const api = client(env, { token: guest.token });
      assert.deepEqual(await api.users.delete.mutate({}), { ok: true });
      assert.equal(await errorCode(api.users.me.query()), "UNAUTHORIZED");
    });
  } finally {
    for (const c of open) await c.close();
  }
});

Deno.test("sessions expire after SESSION_TTL without use, use extends them, open sockets included", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS, accounts: { sessionTtlSeconds: 2 } });
  const anon = client(env);
  const open: { close(): Promise<void> }[] = [];
  const connect = connector(env, open);
  try {
    await t.step("an unused session expires: UNAUTHORIZED over HTTP and WebSocket", async () => {
      const created = await anon.users.create.mutate({ username: name("ttl") });
      const ttlMs = created.expiresAt.getTime() - Date.now();
      assert.ok(ttlMs > 1000 && ttlMs <= 2100, `expires in ${ttlMs} ms`);
      const room = await client(env, { token: created.token }).rooms.create.mutate({
        name: "Expiring",
      });
      const socket = connect(created.token);
      const w = watch(socket.trpc, room.id);
      await waitFor(() => w.seen.started, "subscribed");
      // The open subscription ends when the session expires, with no call in between.
      await waitFor(() => w.seen.errors.length > 0, "the subscription ended", 5000);
      assert.deepEqual(w.seen.errors, ["UNAUTHORIZED"]);
      assert.equal(
        await errorCode(client(env, { token: created.token }).users.me.query()),
        "UNAUTHORIZED",
      );
      assert.equal(await errorCode(socket.trpc.users.me.query()), "UNAUTHORIZED");
      const send = await callError(
        client(env, { token: created.token }).messages.send.mutate({
          roomId: room.id,
          content: "too late",
        }),
      );
      assert.equal((send as TRPCClientError<AppRouter>).data?.code, "UNAUTHORIZED");
    });

    await t.step("a session used within its lifetime lives on", async () => {
      const created = await anon.users.create.mutate({ username: name("used") });
      const api = client(env, { token: created.token });
      const room = await api.rooms.create.mutate({ name: "Kept alive" });
      const w = watch(connect(created.token).trpc, room.id);
      await waitFor(() => w.seen.started, "subscribed");
      // Use it every 700 ms for 5 s: more than twice its lifetime.
      const until = Date.now() + 5000;
      while (Date.now() < until) {
        await new Promise((r) => setTimeout(r, 700));
        await api.messages.send.mutate({ roomId: room.id, content: "tick" });
      }
      assert.equal((await api.users.me.query()).id, created.user.id);
      assert.deepEqual(w.seen.errors, []);
      const [session] = await api.auth.sessions.query();
      const extendedMs = session.expiresAt.getTime() - created.expiresAt.getTime();
      assert.ok(extendedMs > 3500, `extended by ${extendedMs} ms only`);
    });
  } finally {
    for (const c of open) await c.close();
  }
});

const ACROSS = "a session ended on one instance ends its subscriptions on another";
Deno.test({ name: ACROSS, ignore: needsRealPostgres(ACROSS) }, async () => {
  await using first = await startTestEnv({ limits: BULK_LIMITS });
  await using second = await startTestEnv({ limits: BULK_LIMITS, db: first.db });
  const open: { close(): Promise<void> }[] = [];
  try {
    const username = name("multi");
    const laptop = await client(first).users.create.mutate({ username, password: "two instances" });
    const phone = await client(second).auth.signIn.mutate({ username, password: "two instances" });
    const room = await client(first, { token: laptop.token }).rooms.create.mutate({ name: "Two" });
    const onSecond = connector(second, open);
    const w = watch(onSecond(phone.token).trpc, room.id);
    const laptopWatch = watch(onSecond(laptop.token).trpc, room.id);
    await waitFor(() => w.seen.started && laptopWatch.seen.started, "subscribed on the second");
    assert.deepEqual(await client(first, { token: laptop.token }).auth.revokeOthers.mutate(), {
      ended: 1,
    });
    await waitFor(() => w.seen.errors.length > 0, "ended on the second instance", 3000);
    assert.deepEqual(w.seen.errors, ["UNAUTHORIZED"]);
    await client(first, { token: laptop.token }).users.delete.mutate({ password: "two instances" });
    await waitFor(() => laptopWatch.seen.errors.length > 0, "deletion reached the second", 3000);
    assert.deepEqual(laptopWatch.seen.errors, ["UNAUTHORIZED"]);
  } finally {
    for (const c of open) await c.close();
  }
});

Deno.test("sign-ins and password checks share a rate per client address", async () => {
  await using env = await startTestEnv({
    limits: { ...BULK_LIMITS, signIns: { points: 3, seconds: 60 } },
  });
  const anon = client(env);
  const username = name("rated");
  const created = await anon.users.create.mutate({ username, password: "rate me please" });
  await anon.auth.signIn.mutate({ username, password: "rate me please" });
  assert.equal(
    await errorCode(anon.auth.signIn.mutate({ username: name("nobody"), password: "whatever!" })),
    "UNAUTHORIZED",
  );
  // The third password check from this address: a signed-in user's own, counted too.
  await client(env, { token: created.token }).users.setPassword.mutate({
    password: "a new password",
    currentPassword: "rate me please",
  });
  const refused = await callError(
    anon.auth.signIn.mutate({ username, password: "a new password" }),
  );
  assert.equal(refused.data?.code, "TOO_MANY_REQUESTS");
  assert.match(refused.message, /too many sign-ins from this address/);
  assert.ok((refused.data as { retryAfterMs: number }).retryAfterMs > 0);
});
