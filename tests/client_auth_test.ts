/**
 * The client's sign-in helpers and session state (client/auth.ts, client/session.ts) against
 * a real server: a session opened on one device is usable on another, and a session that
 * ends (signed out, revoked elsewhere, expired) shows as one state, once, with nothing left
 * calling the server until the token changes.
 */
import assert from "node:assert/strict";
import { TRPCClientError } from "@trpc/client";
import { SignJWT } from "jose";
import {
  createParleyClient,
  exchangeIdToken,
  type Message,
  type RoomState,
  type SessionState,
  signIn,
  signOut,
  signUp,
  watchRoom,
} from "../client/mod.ts";
import type { AppRouter } from "../server/router.ts";
import { client, errorCode, signUp as signUpRaw, startTestEnv, waitFor } from "./_helpers.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const seqs = (list: Message[]) => list.map((m) => m.seq);
const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

let deviceCount = 0;

/**
 * A client as an app would make it: the token in a store its `token` function reads and
 * `saveToken` writes, and counters of everything it sends to the server.
 */
function device(env: { url: string }) {
  const calls = { http: 0, frames: 0, sockets: 0 };
  const d = {
    id: ++deviceCount,
    token: null as string | null,
    calls,
    sessions: [] as { state: SessionState; error?: unknown }[],
    parley: createParleyClient({
      url: env.url,
      token: (): string | null => d.token,
      saveToken: (token: string | null) => void (d.token = token),
      tokenPollMs: 100,
      fetch: (input, init) => {
        calls.http++;
        return fetch(input, init);
      },
      WebSocket: class extends WebSocket {
        constructor(...args: ConstructorParameters<typeof WebSocket>) {
          super(...args);
          calls.sockets++;
        }
        override send(data: string | ArrayBufferLike | Blob | ArrayBufferView) {
          if (data !== "PONG" && data !== "PING") calls.frames++;
          super.send(data);
        }
      },
    }),
    /** Every call this device has sent so far (HTTP requests, WebSocket frames and connects). */
    sent: () => calls.http + calls.frames + calls.sockets,
    async [Symbol.asyncDispose]() {
      await d.parley.close();
    },
  };
  d.parley.onSessionChange((state, error) => void d.sessions.push({ state, error }));
  return d;
}

/** Records what a watchRoom reports. */
function recorder() {
  const seen = { messages: [] as Message[], states: [] as RoomState[], errors: [] as unknown[] };
  return {
    seen,
    state: () => seen.states.at(-1),
    /** The last error reported, as a tRPC error. */
    error: () => seen.errors.at(-1) as TRPCClientError<AppRouter> | undefined,
    onMessages: (list: Message[]) => void (seen.messages = list),
    onStateChange: (state: RoomState, error?: unknown) => {
      seen.states.push(state);
      if (error !== undefined) seen.errors.push(error);
    },
  };
}

const count = (states: RoomState[], state: RoomState) => states.filter((s) => s === state).length;
const PASSWORD = "correct horse battery";

Deno.test("signIn on a second device opens a session of the same user, beside the first", async () => {
  await using env = await startTestEnv();
  await using phone = device(env);
  await using laptop = device(env);

  const created = await signUp(phone.parley, { username: "Dana", password: PASSWORD });
  assert.equal(phone.token, created.token, "saveToken got the new token");
  assert.equal(phone.parley.session, "signed-in");
  assert.equal(created.user.hasPassword, true);
  assert.ok(created.expiresAt instanceof Date && created.expiresAt > new Date());

  // Another letter case of the name signs in too.
  const opened = await signIn(laptop.parley, { username: "dana", password: PASSWORD });
  assert.equal(opened.user.id, created.user.id);
  assert.notEqual(opened.token, created.token, "a session of its own");
  assert.equal(laptop.token, opened.token);
  assert.equal(laptop.parley.session, "signed-in");
  assert.equal((await laptop.parley.trpc.users.me.query()).id, created.user.id);
  assert.equal((await phone.parley.trpc.users.me.query()).id, created.user.id);
  const sessions = await laptop.parley.trpc.auth.sessions.query();
  assert.equal(sessions.length, 2);
  assert.equal(sessions.filter((s) => s.current).length, 1);

  // A failed sign-in refuses the credentials, not the session the device already has.
  const wrong = await signIn(laptop.parley, { username: "dana", password: "not it" }).then(
    () => null,
    (error) => error as TRPCClientError<AppRouter>,
  );
  assert.equal(wrong?.data?.code, "UNAUTHORIZED");
  assert.equal(wrong?.message, "Wrong username or password");
  assert.equal(laptop.token, opened.token, "the stored token is kept");
  await sleep(50);
  assert.equal(laptop.parley.session, "signed-in");
  assert.deepEqual(laptop.sessions.map((s) => s.state), ["signed-in"]);
});

Deno.test("signOut ends the session: its token is refused, the state changes once and nothing calls again", async () => {
  await using env = await startTestEnv();
  await using d = device(env);
  await signUp(d.parley, { username: "erin", password: PASSWORD });
  const token = d.token!;
  const room = await d.parley.trpc.rooms.create.mutate({ name: "Erin's" });
  await d.parley.trpc.messages.send.mutate({ roomId: room.id, content: "hello" });
  const r = recorder();
  const watch = watchRoom(d.parley, room.id, r);
  try {
    await waitFor(() => r.state() === "live", "room live");
    const statesBefore = r.seen.states.length;

    await signOut(d.parley);
    assert.equal(d.token, null, "saveToken(null) cleared the token");
    assert.equal(d.parley.session, "signed-out");
    assert.deepEqual(d.sessions.map((s) => s.state), ["signed-in", "signed-out"]);
    assert.deepEqual(r.seen.states.slice(statesBefore), ["signed-out"]);
    assert.equal(await errorCode(client(env, { token }).users.me.query()), "UNAUTHORIZED");

    // The room waits without calling: no request, no frame, no new socket.
    const sent = d.sent();
    await sleep(1500);
    assert.equal(d.sent(), sent, `calls after sign-out: ${JSON.stringify(d.calls)}`);
    assert.deepEqual(r.seen.states.slice(statesBefore), ["signed-out"]);

    // A call the app makes signed out is refused, and changes nothing.
    assert.equal(await errorCode(d.parley.trpc.users.me.query()), "UNAUTHORIZED");
    await sleep(50);
    assert.deepEqual(d.sessions.map((s) => s.state), ["signed-in", "signed-out"]);

    // Signing in again brings the room back by itself.
    await signIn(d.parley, { username: "erin", password: PASSWORD });
    await waitFor(() => r.state() === "live", "room live after signing in again");
    assert.deepEqual(seqs(r.seen.messages), [1]);
    assert.deepEqual(d.sessions.map((s) => s.state), ["signed-in", "signed-out", "signed-in"]);
  } finally {
    watch.stop();
  }
});

Deno.test("a session revoked on another device ends once, however many calls are refused", async () => {
  await using env = await startTestEnv();
  await using phone = device(env);
  await using laptop = device(env);
  await signUp(phone.parley, { username: "fay", password: PASSWORD });
  await signIn(laptop.parley, { username: "fay", password: PASSWORD });
  const room = await phone.parley.trpc.rooms.create.mutate({ name: "Fay's" });
  const r = recorder();
  const watch = watchRoom(phone.parley, room.id, r);
  try {
    await waitFor(() => r.state() === "live", "room live");
    assert.deepEqual(await laptop.parley.trpc.auth.revokeOthers.mutate(), { ended: 1 });

    await waitFor(() => phone.parley.session === "ended", "the phone's session ended");
    await waitFor(() => r.state() === "signed-out", "the room signed out");
    const ended = phone.sessions.at(-1)!;
    assert.equal((ended.error as TRPCClientError<AppRouter>).data?.code, "UNAUTHORIZED");

    // Five more refusals of the same token: still one change.
    const codes = await Promise.all(
      Array.from({ length: 5 }, () => errorCode(phone.parley.trpc.users.me.query())),
    );
    assert.deepEqual(codes, Array(5).fill("UNAUTHORIZED"));
    const sent = phone.sent();
    await sleep(1500);
    assert.equal(phone.sent(), sent, `calls while ended: ${JSON.stringify(phone.calls)}`);
    assert.deepEqual(phone.sessions.map((s) => s.state), ["signed-in", "ended"]);
    assert.equal(count(r.seen.states, "signed-out"), 1, r.seen.states.join());
    assert.equal(laptop.parley.session, "signed-in", "the other device is untouched");

    // signOut of an ended session only clears the token (nothing to end on the server).
    const before = phone.calls.http;
    await signOut(phone.parley);
    assert.equal(phone.calls.http, before);
    assert.equal(phone.token, null);
    assert.deepEqual(phone.sessions.map((s) => s.state), ["signed-in", "ended", "signed-out"]);
  } finally {
    watch.stop();
  }
});

Deno.test("an expired session shows as signed-out once in watchRoom; signing in again makes it live with what it missed", async () => {
  await using env = await startTestEnv({ accounts: { sessionTtlSeconds: 2 } });
  await using d = device(env);
  await signUp(d.parley, { username: "gus", password: PASSWORD });
  const room = await d.parley.trpc.rooms.create.mutate({ name: "Gus's" });
  await d.parley.trpc.messages.send.mutate({ roomId: room.id, content: "before" });
  const r = recorder();
  const watch = watchRoom(d.parley, room.id, r);
  try {
    await waitFor(() => r.state() === "live", "room live");
    const statesBefore = r.seen.states.length;

    // Nothing uses the session: it expires 2 s after its last use, and the server ends the
    // subscription.
    await waitFor(() => r.state() === "signed-out", "the room signed out on expiry", 10_000);
    assert.deepEqual(r.seen.states.slice(statesBefore), ["signed-out"]);
    assert.equal(r.error()?.data?.code, "UNAUTHORIZED");
    assert.match(r.error()?.message ?? "", /^Session ended/);
    await waitFor(() => d.parley.session === "ended", "the client's session ended");
    assert.deepEqual(d.sessions.map((s) => s.state), ["signed-in", "ended"]);

    // It stays so, making no calls; meanwhile someone else writes.
    const sent = d.sent();
    const other = await signUpRaw(env);
    await other.api.rooms.join.mutate({ roomId: room.id });
    for (const content of ["while away 1", "while away 2"]) {
      await other.api.messages.send.mutate({ roomId: room.id, content });
    }
    await sleep(1500);
    assert.equal(d.sent(), sent, `calls while expired: ${JSON.stringify(d.calls)}`);
    assert.deepEqual(r.seen.states.slice(statesBefore), ["signed-out"]);
    assert.equal(d.sessions.length, 2);

    // The token function now returns the new session's token: live again, nothing missing.
    await signIn(d.parley, { username: "gus", password: PASSWORD });
    await waitFor(() => r.state() === "live", "room live again");
    assert.deepEqual(seqs(r.seen.messages), range(1, 3));
    assert.equal(r.seen.messages.at(-1)?.content, "while away 2");
    assert.deepEqual(d.sessions.map((s) => s.state), ["signed-in", "ended", "signed-in"]);
    const sentMessage = await watch.send("back");
    assert.equal(sentMessage.seq, 4);
  } finally {
    watch.stop();
  }
});

Deno.test("exchangeIdToken trades the identity provider's token for a session; a refused one changes nothing", async () => {
  const secret = "a shared secret of at least thirty-two bytes";
  const issuer = "https://auth.example.com";
  await using env = await startTestEnv({
    accounts: { idTokens: { jwksUrl: null, secret, issuer, audiences: ["parley"] } },
  });
  await using d = device(env);
  const sign = (key: string) =>
    new SignJWT({ preferred_username: "Hana" })
      .setProtectedHeader({ alg: "HS256" })
      .setIssuer(issuer)
      .setAudience("parley")
      .setSubject("provider-user-1")
      .setExpirationTime("5m")
      .sign(new TextEncoder().encode(key));

  const opened = await exchangeIdToken(d.parley, await sign(secret));
  assert.equal(opened.user.username, "Hana");
  assert.equal(opened.user.hasPassword, false);
  assert.equal(d.token, opened.token);
  assert.equal((await d.parley.trpc.users.me.query()).id, opened.user.id);
  // The same person on a second device is the same user.
  await using other = device(env);
  assert.equal((await exchangeIdToken(other.parley, await sign(secret))).user.id, opened.user.id);

  const forged = await exchangeIdToken(d.parley, await sign(`${secret}, forged`)).then(
    () => null,
    (error) => error as TRPCClientError<AppRouter>,
  );
  assert.equal(forged?.data?.code, "UNAUTHORIZED");
  assert.match(forged?.message ?? "", /^Identity token refused/);
  await sleep(50);
  assert.equal(d.token, opened.token);
  assert.deepEqual(d.sessions.map((s) => s.state), ["signed-in"]);

  await using plain = await startTestEnv();
  await using p = device(plain);
  assert.equal(await errorCode(exchangeIdToken(p.parley, await sign(secret))), "NOT_IMPLEMENTED");
});
