/**
 * Abuse limits: write rates per user and per WebSocket connection, sign-ups per address,
 * subscriptions per socket, connections per address and per instance. Each refusal is a clear
 * error with a retry hint where waiting helps, and refused writes store nothing.
 */
import assert from "node:assert/strict";
import { TRPCClientError } from "@trpc/client";
import { createParleyClient, watchRoom } from "../client/mod.ts";
import { ConfigError, loadConfig } from "../server/config.ts";
import { DEFAULT_ABUSE_LIMITS } from "../server/limits.ts";
import {
  BULK_LIMITS,
  callError,
  client,
  errorCode,
  rawUpgrade,
  signUp,
  startTestEnv,
  upgradeStatus,
  waitFor,
  wsClient,
} from "./_helpers.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

Deno.test("1,000 sends in a second from one user over HTTP: the rate holds, 429 says when to retry", async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Flood" });
  const send = (i: number) =>
    fetch(`${env.url}/trpc/messages.send`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${alice.token}` },
      body: JSON.stringify({ json: { roomId: room.id, content: `flood ${i}` } }),
    });
  const responses = await Promise.all(Array.from({ length: 1000 }, (_, i) => send(i)));
  const statuses = responses.map((res) => res.status);
  const accepted = statuses.filter((s) => s === 200).length;
  assert.equal(accepted, DEFAULT_ABUSE_LIMITS.sends!.points);
  assert.equal(statuses.filter((s) => s === 429).length, 1000 - accepted);
  const refused = responses.find((res) => res.status === 429)!;
  const retryAfter = Number(refused.headers.get("retry-after"));
  assert.ok(retryAfter >= 1 && retryAfter <= DEFAULT_ABUSE_LIMITS.sends!.seconds, `${retryAfter}`);
  const body = await refused.json();
  assert.equal(body.error.json.data.code, "TOO_MANY_REQUESTS");
  assert.ok(body.error.json.data.retryAfterMs > 0);
  assert.match(body.error.json.message, /Rate limit exceeded: too many messages/);
  await Promise.all(responses.map((res) => res.bodyUsed ? null : res.body?.cancel()));
  // Only the accepted sends were stored, numbered without gaps.
  const { items } = await alice.api.messages.list.query({ roomId: room.id, limit: 100 });
  assert.deepEqual(items.map((m) => m.seq), Array.from({ length: accepted }, (_, i) => i + 1));
  // Another user is not affected by alice's rate.
  const bob = await signUp(env);
  await bob.api.rooms.join.mutate({ roomId: room.id });
  assert.equal((await bob.api.messages.send.mutate({ roomId: room.id, content: "hi" })).seq, 31);
});

Deno.test("sends over WebSocket count against the same per-user rate", async () => {
  await using env = await startTestEnv({ limits: { sends: { points: 5, seconds: 1 } } });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Socket flood" });
  const ws = wsClient(env, { token: alice.token });
  try {
    const results = await Promise.allSettled(
      Array.from(
        { length: 40 },
        (_, i) => ws.trpc.messages.send.mutate({ roomId: room.id, content: `ws ${i}` }),
      ),
    );
    const ok = results.filter((r) => r.status === "fulfilled").length;
    assert.equal(ok, 5);
    const rejection = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    assert.ok(rejection.reason instanceof TRPCClientError);
    assert.equal(rejection.reason.data?.code, "TOO_MANY_REQUESTS");
    assert.ok(rejection.reason.data?.retryAfterMs > 0);
    // HTTP shares the user's budget.
    assert.equal(
      await errorCode(alice.api.messages.send.mutate({ roomId: room.id, content: "http" })),
      "TOO_MANY_REQUESTS",
    );
    // After the window, sending works again.
    await sleep(rejection.reason.data!.retryAfterMs + 50);
    await ws.trpc.messages.send.mutate({ roomId: room.id, content: "later" });
  } finally {
    await ws.close();
  }
});

Deno.test("every write over one WebSocket counts against the connection's rate", async () => {
  await using env = await startTestEnv({
    limits: { sends: null, connectionWrites: { points: 10, seconds: 60 } },
  });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Per socket" });
  const first = wsClient(env, { token: alice.token });
  const second = wsClient(env, { token: alice.token });
  try {
    for (let i = 0; i < 10; i++) {
      await first.trpc.messages.send.mutate({ roomId: room.id, content: `${i}` });
    }
    const error = await callError(first.trpc.rooms.join.mutate({ roomId: room.id }));
    assert.equal(error.data?.code, "TOO_MANY_REQUESTS");
    assert.match(error.message, /too many writes on this connection/);
    // Another connection of the same user, and HTTP, have their own room.
    await second.trpc.messages.send.mutate({ roomId: room.id, content: "other socket" });
    await alice.api.messages.send.mutate({ roomId: room.id, content: "over http" });
    // Reads are not writes.
    await first.trpc.messages.list.query({ roomId: room.id });
  } finally {
    await first.close();
    await second.close();
  }
});

Deno.test("joins, creates and updates have rates per user", async () => {
  await using env = await startTestEnv({
    limits: { joins: { points: 3, seconds: 60 }, creates: { points: 2, seconds: 60 } },
  });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const rooms = [
    await alice.api.rooms.create.mutate({ name: "One" }),
    await alice.api.rooms.create.mutate({ name: "Two" }),
  ];
  assert.equal(
    await errorCode(alice.api.rooms.create.mutate({ name: "Three" })),
    "TOO_MANY_REQUESTS",
  );
  assert.equal(
    await errorCode(alice.api.users.update.mutate({ avatarUrl: null })),
    "TOO_MANY_REQUESTS",
  );
  await bob.api.rooms.join.mutate({ roomId: rooms[0].id });
  await bob.api.rooms.leave.mutate({ roomId: rooms[0].id });
  await bob.api.rooms.join.mutate({ roomId: rooms[1].id });
  assert.equal(
    await errorCode(bob.api.rooms.join.mutate({ roomId: rooms[0].id })),
    "TOO_MANY_REQUESTS",
  );
  // Bob's creates are his own.
  await bob.api.rooms.create.mutate({ name: "Bob's" });
});

Deno.test("sign-ups are counted per client address; the proxy header only when configured", async () => {
  const signupFrom = (env: { url: string }, forwardedFor: string) =>
    fetch(`${env.url}/trpc/users.create`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": forwardedFor },
      body: JSON.stringify({ json: { username: `u${crypto.randomUUID().slice(0, 12)}` } }),
    });
  {
    // Not configured: the header is the client's own word and is ignored.
    await using env = await startTestEnv({ limits: { signups: { points: 2, seconds: 60 } } });
    const statuses = [];
    for (const address of ["1.1.1.1", "2.2.2.2", "3.3.3.3"]) {
      const res = await signupFrom(env, address);
      statuses.push(res.status);
      await res.body?.cancel();
    }
    assert.deepEqual(statuses, [200, 200, 429]);
  }
  {
    await using env = await startTestEnv({
      limits: { signups: { points: 2, seconds: 60 } },
      clientAddressHeader: "x-forwarded-for",
    });
    const statuses = [];
    // The last entry is the one the trusted proxy appended; the first is the client's claim.
    for (const chain of ["9.9.9.9, 1.1.1.1", "8.8.8.8, 1.1.1.1", "7.7.7.7, 1.1.1.1", "2.2.2.2"]) {
      const res = await signupFrom(env, chain);
      statuses.push(res.status);
      await res.body?.cancel();
    }
    assert.deepEqual(statuses, [200, 200, 429, 200]);
  }
});

Deno.test("one socket holds at most MAX_SUBSCRIPTIONS_PER_SOCKET subscriptions", async () => {
  await using env = await startTestEnv({ limits: { subscriptionsPerSocket: 5 } });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Many" });
  const ws = wsClient(env, { token: alice.token });
  const started: number[] = [];
  const errors: string[] = [];
  const subscriptions = Array.from(
    { length: 7 },
    (_, i) =>
      ws.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
        onStarted: () => void started.push(i),
        onError: (error) => void errors.push(`${error.data?.code}: ${error.message}`),
      }),
  );
  try {
    await waitFor(() => started.length + errors.length === 7, "every subscription answered");
    assert.equal(started.length, 5);
    assert.equal(errors.length, 2);
    assert.match(
      errors[0],
      /^TOO_MANY_REQUESTS: Too many subscriptions on this connection: at most 5/,
    );
    // Stopping one frees its place.
    subscriptions[started[0]].unsubscribe();
    let again = false;
    const another = ws.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
      onStarted: () => void (again = true),
    });
    await waitFor(() => again, "a new subscription after one stopped");
    another.unsubscribe();
  } finally {
    for (const s of subscriptions) s.unsubscribe();
    await ws.close();
  }
});

Deno.test("WebSockets per address and per instance are capped with 429 and 503", async () => {
  {
    await using env = await startTestEnv({ limits: { connectionsPerAddress: 3 } });
    const open: WebSocket[] = [];
    for (let i = 0; i < 3; i++) {
      const socket = new WebSocket(`${env.url.replace(/^http/, "ws")}/trpc`);
      await new Promise((resolve) => socket.onopen = resolve);
      open.push(socket);
    }
    assert.equal(await upgradeStatus(env.url), "HTTP/1.1 429 Too Many Requests");
    const res = await fetch(`${env.url}/trpc`, {
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version": "13",
      },
    });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "5");
    assert.match((await res.json()).error.json.message, /Too many connections from your address/);
    // Closing one frees a place.
    const closed = new Promise((resolve) => open[0].onclose = resolve);
    open[0].close();
    await closed;
    await waitFor(() => env.server.connections === 2, "the server saw the close");
    assert.equal(await upgradeStatus(env.url), "HTTP/1.1 101 Switching Protocols");
    for (const socket of open.slice(1)) socket.close();
    await waitFor(() => env.server.connections <= 1, "closed");
  }
  {
    await using env = await startTestEnv({
      limits: { connections: 2 },
      clientAddressHeader: "x-real-ip",
    });
    const sockets: WebSocket[] = [];
    for (const address of ["10.0.0.1", "10.0.0.2"]) {
      const socket = new WebSocket(`${env.url.replace(/^http/, "ws")}/trpc`, {
        headers: { "x-real-ip": address },
      });
      await new Promise((resolve) => socket.onopen = resolve);
      sockets.push(socket);
    }
    assert.equal(await upgradeStatus(env.url), "HTTP/1.1 503 Service Unavailable");
    for (const socket of sockets) {
      const closed = new Promise((resolve) => socket.onclose = resolve);
      socket.close();
      await closed;
    }
    // HTTP calls are not connections: they still work at the cap.
    assert.deepEqual(await client(env).health.query(), { status: "ok", db: "ok" });
  }
});

Deno.test("the abuse limits are read from the environment, and bad values stop startup", () => {
  const config = loadConfig({
    RATE_LIMIT_SENDS: "5/2s",
    RATE_LIMIT_JOINS: "off",
    MAX_SUBSCRIPTIONS_PER_SOCKET: "7",
    CLIENT_ADDRESS_HEADER: "X-Forwarded-For",
  });
  assert.deepEqual(config.limits.sends, { points: 5, seconds: 2 });
  assert.equal(config.limits.joins, null);
  assert.equal(config.limits.subscriptionsPerSocket, 7);
  assert.equal(config.limits.creates, DEFAULT_ABUSE_LIMITS.creates);
  assert.equal(config.clientAddressHeader, "x-forwarded-for");
  try {
    loadConfig({
      RATE_LIMIT_SENDS: "lots",
      RATE_LIMIT_SIGNUPS: "0/10s",
      MAX_CONNECTIONS: "0",
      CLIENT_ADDRESS_HEADER: "bad header",
    });
    assert.fail("expected a ConfigError");
  } catch (error) {
    assert.ok(error instanceof ConfigError);
    assert.equal(error.problems.length, 4, error.problems.join("\n"));
    assert.ok(error.problems.some((p) => p.startsWith("RATE_LIMIT_SENDS must look like 30/10s")));
  }
});

Deno.test("a socket the server closed counts against the caps until its connection is gone", async () => {
  await using env = await startTestEnv({ limits: { connectionsPerAddress: 2 } });
  const held: Deno.TcpConn[] = [];
  for (let i = 0; i < 2; i++) {
    const conn = await rawUpgrade(env.url);
    await conn.read(new Uint8Array(4096)); // the 101
    // A binary frame makes the server close (1003); this client never answers the close.
    await conn.write(new Uint8Array([0x82, 0x81, 1, 2, 3, 4, 1]));
    held.push(conn);
  }
  await sleep(3_500); // past the server's wait for the closing handshake
  assert.equal(await upgradeStatus(env.url), "HTTP/1.1 429 Too Many Requests");
  for (const conn of held) conn.close();
  await waitFor(() => env.server.connections === 0, "the connections are gone");
  assert.equal(await upgradeStatus(env.url), "HTTP/1.1 101 Switching Protocols");
  await waitFor(() => env.server.connections === 0, "closed");
});

Deno.test("a page of messages.list stays within 256 KiB of content and pages on", async () => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Heavy" });
  const emoji = "😀".repeat(4000); // 16,000 bytes
  for (let i = 0; i < 40; i++) {
    await alice.api.messages.send.mutate({ roomId: room.id, content: emoji });
  }
  const page = await alice.api.messages.list.query({ roomId: room.id, limit: 100 });
  assert.equal(page.items.length, 16); // 16 × 16,000 ≤ 262,144 < 17 × 16,000
  assert.equal(page.items.at(-1)!.seq, 40);
  assert.equal(page.nextBeforeSeq, 25);
  const older = await alice.api.messages.list.query({
    roomId: room.id,
    limit: 100,
    beforeSeq: page.nextBeforeSeq!,
  });
  assert.deepEqual(older.items.map((m) => m.seq), Array.from({ length: 16 }, (_, i) => i + 9));
  const forward = await alice.api.messages.list.query({ roomId: room.id, limit: 100, afterSeq: 0 });
  assert.deepEqual(forward.items.map((m) => m.seq), Array.from({ length: 16 }, (_, i) => i + 1));
  assert.equal(forward.nextAfterSeq, 16);
});

Deno.test("watchRoom past the subscription cap fails cleanly instead of retrying forever", async () => {
  await using env = await startTestEnv({ limits: { subscriptionsPerSocket: 2 } });
  const alice = await signUp(env);
  const parley = createParleyClient({ url: env.url, token: alice.token });
  const states: Record<string, string[]> = {};
  const rooms: { id: string }[] = [];
  for (let i = 0; i < 3; i++) rooms.push(await alice.api.rooms.create.mutate({ name: `R${i}` }));
  const watches = rooms.map((room) =>
    watchRoom(parley, room.id, {
      onMessages: () => {},
      onStateChange: (state) => void (states[room.id] ??= []).push(state),
    })
  );
  try {
    await waitFor(
      () => rooms.every((r) => ["live", "error"].includes(states[r.id]?.at(-1) ?? "")),
      "every watch settled",
    );
    const last = rooms.map((r) => states[r.id].at(-1));
    assert.deepEqual(last.filter((s) => s === "live").length, 2);
    assert.deepEqual(last.filter((s) => s === "error").length, 1);
  } finally {
    for (const watch of watches) watch.stop();
    await parley.close();
  }
});
