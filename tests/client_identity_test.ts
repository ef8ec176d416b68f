/**
 * The client when the token changes under it (client/identity.ts, client/socket.ts,
 * watchRoom): a WebSocket opened with one token never serves another's calls, and a room
 * refused for access recovers by itself once access may have changed.
 */
import assert from "node:assert/strict";
import type { TRPCClientError } from "@trpc/client";
import { createParleyClient, type Message, type RoomState, watchRoom } from "../client/mod.ts";
import type { AppRouter } from "../server/router.ts";
import { hashToken, newToken } from "../server/auth.ts";
import { client, signUp, startTestEnv, waitFor } from "./_helpers.ts";

/** Records what watchRoom reports, errors included. */
function recorder() {
  const seen = {
    messages: [] as Message[],
    states: [] as RoomState[],
    errors: [] as unknown[],
  };
  return {
    seen,
    /** The state reported last. */
    state: () => seen.states.at(-1),
    /** The tRPC code of the last error reported. */
    code: () => (seen.errors.at(-1) as TRPCClientError<AppRouter> | undefined)?.data?.code,
    onMessages: (list: Message[]) => void (seen.messages = list),
    onStateChange: (state: RoomState, error?: unknown) => {
      seen.states.push(state);
      if (error !== undefined) seen.errors.push(error);
    },
  };
}

/** A WebSocket class that records the sockets it opens and how they closed. */
function recordingSocket() {
  const sockets: { socket: WebSocket; closeCode: number | null }[] = [];
  class Recording extends WebSocket {
    constructor(...args: ConstructorParameters<typeof WebSocket>) {
      super(...args);
      const entry = { socket: this as WebSocket, closeCode: null as number | null };
      sockets.push(entry);
      this.addEventListener("close", (event) => entry.closeCode = event.code);
    }
  }
  return { sockets, WebSocket: Recording };
}

/** Subscribes to a room's stream from `lastEventId`; records what arrives. */
function probe(parley: ReturnType<typeof createParleyClient>, roomId: string, lastEventId: string) {
  const seen = { seqs: [] as number[], started: false, code: null as string | null };
  const subscription = parley.trpc.messages.onMessage.subscribe({ roomId, lastEventId }, {
    onStarted: () => void (seen.started = true),
    onData: (event) => void seen.seqs.push(event.data.seq),
    onError: (error) => void (seen.code = error.data?.code ?? "UNKNOWN"),
  });
  return { seen, unsubscribe: () => subscription.unsubscribe() };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const seqs = (list: Message[]) => list.map((m) => m.seq);
const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** A client whose token the test sets, watching `roomId`, and the sockets it opened. */
function session(env: { url: string }, roomId: string, token: string | null) {
  const ws = recordingSocket();
  const s = {
    token,
    ws,
    r: recorder(),
    parley: createParleyClient({
      url: env.url,
      token: (): string | null => s.token,
      WebSocket: ws.WebSocket,
      tokenPollMs: 100,
    }),
    watch: null as unknown as ReturnType<typeof watchRoom>,
    async [Symbol.asyncDispose]() {
      s.watch.stop();
      await s.parley.close();
    },
  };
  s.watch = watchRoom(s.parley, roomId, s.r);
  return s;
}

Deno.test("the client switches identity cleanly when the token changes", async (t) => {
  await using env = await startTestEnv();
  const carol = await signUp(env);
  const dave = await signUp(env);
  const bob = await signUp(env);
  const room = await carol.api.rooms.create.mutate({ name: "Carol and Bob only" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  for (let i = 1; i <= 3; i++) {
    await carol.api.messages.send.mutate({ roomId: room.id, content: `secret ${i}` });
  }
  const count = async () =>
    Number((await env.sql`select count(*) from messages where room_id = ${room.id}`)[0].count);

  await t.step(
    "C→D: D subscribing from lastEventId 0 at once gets FORBIDDEN, never C's history",
    async () => {
      await using s = session(env, room.id, carol.token);
      await waitFor(() => s.r.state() === "live", "carol's room live");
      assert.deepEqual(seqs(s.r.seen.messages), range(1, await count()));
      const held = s.r.seen.messages.length;
      const carolSocket = s.ws.sockets.at(-1)!;

      s.token = dave.token;
      const d = probe(s.parley, room.id, "0");
      await waitFor(() => d.seen.code !== null || d.seen.seqs.length > 0, "an answer for D");
      assert.deepEqual(d.seen.seqs, [], "D got none of the room's history");
      assert.equal(d.seen.code, "FORBIDDEN");
      d.unsubscribe();
      // The socket opened with carol's token was closed, not reused.
      await waitFor(() => carolSocket.closeCode !== null, "carol's socket closed");
      assert.equal(carolSocket.closeCode, 4000);

      // Carol's watch is resumed as dave and refused; it gets nothing more.
      await waitFor(() => s.r.state() === "error", "carol's watch refused as dave");
      assert.equal(s.r.code(), "FORBIDDEN");
      await bob.api.messages.send.mutate({ roomId: room.id, content: "while dave is in" });
      await sleep(300);
      assert.equal(s.r.seen.messages.length, held);
      // HTTP agrees: dave may not list the room either.
      await assert.rejects(s.parley.trpc.messages.list.query({ roomId: room.id }), /Not a member/);
    },
  );

  await t.step("D→C: carol's refused watch recovers by itself, complete and live", async () => {
    await using s = session(env, room.id, carol.token);
    await waitFor(() => s.r.state() === "live", "carol's room live");
    s.token = dave.token;
    const d = probe(s.parley, room.id, "0");
    await waitFor(() => s.r.state() === "error", "carol's watch refused as dave");
    d.unsubscribe();
    await bob.api.messages.send.mutate({ roomId: room.id, content: "while dave is in" });

    s.token = carol.token; // no call made: the waiting watch notices by itself
    await waitFor(() => s.r.state() === "live", "carol's room live again");
    assert.deepEqual(seqs(s.r.seen.messages), range(1, await count()));
    await bob.api.messages.send.mutate({ roomId: room.id, content: "welcome back" });
    const total = await count();
    await waitFor(() => s.r.seen.messages.length === total, "the next message");
    assert.deepEqual(seqs(s.r.seen.messages), range(1, total));
  });

  await t.step(
    "a token refresh of the same user: the socket moves to the new token, the watch stays live",
    async () => {
      const refreshed = newToken();
      await env.sql`
        insert into tokens (hash, user_id) values (${await hashToken(refreshed)}, ${carol.user.id})
      `;
      await using s = session(env, room.id, carol.token);
      await waitFor(() => s.r.state() === "live", "carol's room live");
      const before = s.ws.sockets.at(-1)!;
      const states = s.r.seen.states.length;
      s.token = refreshed;
      // Any call notices the new token; an HTTP call runs as the same user.
      assert.equal((await s.parley.trpc.users.me.query()).id, carol.user.id);
      await waitFor(() => before.closeCode !== null, "the old token's socket closed");
      await waitFor(() => s.ws.sockets.at(-1) !== before, "a socket for the new token");
      await waitFor(() => s.r.state() === "live", "live on the new socket");
      // Revoking the old token (what a refresh does) no longer concerns this client.
      await client(env, { token: carol.token }).users.logout.mutate();
      await bob.api.messages.send.mutate({ roomId: room.id, content: "after the refresh" });
      const total = await count();
      await waitFor(() => s.r.seen.messages.length === total, "the message after the refresh");
      assert.deepEqual(seqs(s.r.seen.messages), range(1, total));
      assert.ok(!s.r.seen.states.slice(states).includes("error"), s.r.seen.states.join());
    },
  );

  await t.step(
    "logout and a new sign-up: the watch goes live without waiting for the idle close",
    async () => {
      await using s = session(env, room.id, bob.token);
      await waitFor(() => s.r.state() === "live", "bob's room live");
      await s.parley.trpc.users.logout.mutate();
      await waitFor(() => s.r.state() === "signed-out", "refused after logout");
      assert.equal(s.r.code(), "UNAUTHORIZED");
      s.token = null;
      const erin = await s.parley.trpc.users.create.mutate({ username: `erin_${Date.now()}` });
      s.token = erin.token;
      const started = Date.now();
      await s.parley.trpc.rooms.join.mutate({ roomId: room.id });
      await waitFor(() => s.r.state() === "live", "live as erin", 4000);
      assert.ok(Date.now() - started < 4000, "well before the 5 s idle close");
      const sent = await s.watch.send("hi, I am new");
      assert.equal(sent.userId, erin.user.id);
      await waitFor(() => s.r.seen.messages.at(-1)?.seq === sent.seq, "erin's message shown");
      assert.deepEqual(seqs(s.r.seen.messages), range(1, await count()));
    },
  );
});

Deno.test("a refused watch also recovers when this client joins the room, or on checkToken", async (t) => {
  await using env = await startTestEnv();
  const carol = await signUp(env);
  const frank = await signUp(env);
  const room = await carol.api.rooms.create.mutate({ name: "Join to see" });
  const other = await carol.api.rooms.create.mutate({ name: "Another" });
  await carol.api.messages.send.mutate({ roomId: room.id, content: "hello" });
  let stored: string | null = frank.token;
  // No polling: only a join or an explicit check may wake a refused watch.
  const parley = createParleyClient({ url: env.url, token: () => stored, tokenPollMs: 0 });
  try {
    await t.step("joining the room (not another one) wakes it", async () => {
      const r = recorder();
      const watch = watchRoom(parley, room.id, r);
      try {
        await waitFor(() => r.state() === "error", "refused");
        assert.equal(r.code(), "FORBIDDEN");
        await parley.trpc.rooms.join.mutate({ roomId: other.id });
        await sleep(200);
        assert.equal(r.state(), "error");
        await parley.trpc.rooms.join.mutate({ roomId: room.id });
        await waitFor(() => r.state() === "live", "live after joining");
        assert.deepEqual(seqs(r.seen.messages), [1]);
      } finally {
        watch.stop();
      }
    });

    await t.step("checkToken after a sign-in wakes it without any other call", async () => {
      const gina = await signUp(env);
      stored = gina.token;
      const r = recorder();
      const watch = watchRoom(parley, other.id, r);
      try {
        await waitFor(() => r.state() === "error", "refused");
        stored = carol.token;
        await sleep(200);
        assert.equal(r.state(), "error", "nothing read the token yet");
        const version = await parley.checkToken();
        assert.equal(await parley.checkToken(), version, "unchanged token, same version");
        await waitFor(() => r.state() === "live", "live as carol");
      } finally {
        watch.stop();
      }
    });
  } finally {
    await parley.close();
  }
});

Deno.test("signed out, then signed in: the next subscription and a refused watch run as the user", async () => {
  await using env = await startTestEnv();
  const carol = await signUp(env);
  const room = await carol.api.rooms.create.mutate({ name: "Sign in first" });
  await carol.api.messages.send.mutate({ roomId: room.id, content: "hello" });

  let stored: string | null = null;
  const parley = createParleyClient({ url: env.url, token: () => stored, tokenPollMs: 100 });
  const r = recorder();
  const watch = watchRoom(parley, room.id, r);
  try {
    const anonymous = probe(parley, room.id, "0");
    await waitFor(() => anonymous.seen.code !== null, "anonymous refused");
    assert.equal(anonymous.seen.code, "UNAUTHORIZED");
    await waitFor(() => r.state() === "signed-out", "watch refused");
    assert.equal(r.code(), "UNAUTHORIZED");

    stored = carol.token; // signed in; the socket opened without a token is still open
    const signedIn = probe(parley, room.id, "0");
    await waitFor(() => signedIn.seen.code !== null || signedIn.seen.seqs.length > 0, "answer");
    assert.equal(signedIn.seen.code, null);
    assert.deepEqual(signedIn.seen.seqs, [1]);
    signedIn.unsubscribe();
    await waitFor(() => r.state() === "live", "the refused watch recovers");
    assert.deepEqual(seqs(r.seen.messages), [1]);
  } finally {
    watch.stop();
    await parley.close();
  }
});
