/** Dead and slow WebSocket clients cannot hold server resources forever. */
import assert from "node:assert/strict";
import { clientFrame, rawUpgrade, signUp, startTestEnv, waitFor } from "./_helpers.ts";

Deno.test("a client that never answers keep-alive pings is dropped", async () => {
  await using env = await startTestEnv({
    sockets: { keepAlive: { pingMs: 200, pongWaitMs: 200 } },
  });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Ping" });
  const socket = new WebSocket(`${env.url.replace(/^http/, "ws")}/trpc?connectionParams=1`);
  const frames: string[] = [];
  let closeCode = 0;
  socket.onmessage = (event) => void frames.push(String(event.data)); // never answers "PING"
  const closed = new Promise<void>((resolve) => {
    socket.onclose = (event) => {
      closeCode = event.code;
      resolve();
    };
  });
  await new Promise((resolve) => socket.onopen = resolve);
  socket.send(JSON.stringify({ method: "connectionParams", data: { token: alice.token } }));
  socket.send(JSON.stringify({
    id: 1,
    method: "subscription",
    params: { path: "messages.onMessage", input: { json: { roomId: room.id } } },
  }));
  await closed;
  assert.ok(frames.includes("PING"), "the server pinged");
  assert.ok(frames.some((f) => f.includes('"started"')), "the subscription had started");
  assert.equal(closeCode, 1001);
  await waitFor(() => env.server.connections === 0, "the server released the connection");
});

Deno.test("a subscriber that stops reading is disconnected instead of buffering without bound", async () => {
  await using env = await startTestEnv({
    sockets: { limits: { maxFrameBytes: 64 * 1024, maxBufferedBytes: 256 * 1024 } },
  });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Firehose" });
  const conn = await rawUpgrade(env.url, { path: "/trpc?connectionParams=1" });
  try {
    await conn.write(
      clientFrame(JSON.stringify({ method: "connectionParams", data: { token: alice.token } })),
    );
    await conn.write(clientFrame(JSON.stringify({
      id: 1,
      method: "subscription",
      params: { path: "messages.onMessage", input: { json: { roomId: room.id } } },
    })));
    // Read until the subscription has started, then never read again.
    let seen = "";
    const buffer = new Uint8Array(4096);
    while (!seen.includes('"started"')) {
      const n = await conn.read(buffer);
      assert.ok(n !== null, "the server closed before the subscription started");
      seen += new TextDecoder().decode(buffer.subarray(0, n));
    }
    assert.match(seen, /^HTTP\/1.1 101/);
    assert.equal(env.server.connections, 1);

    // About 12 MB of messages, far beyond what the kernel's socket buffers absorb.
    const count = 3000;
    await env.sql`
      with bump as (
        update rooms set last_seq = ${count}, last_event_id = ${count} where id = ${room.id}
      )
      insert into messages (room_id, seq, event_id, user_id, username, content)
      select ${room.id}, s, s, ${alice.user.id}, 'firehose', repeat('x', 4000)
      from generate_series(1, ${count}) s
    `;
    // One more message through the API: the server sees the gap and fans out all 3,001.
    await alice.api.messages.send.mutate({ roomId: room.id, content: "and one more" });

    // Its subscription ends (nothing more is queued for it) and it is sent a close (1013);
    // it still counts against the connection caps until its connection is really gone.
    await waitFor(
      () => env.server.hubStats().listeners === 0,
      "the slow reader was dropped",
      20_000,
    );
    assert.equal(env.server.connections, 1);
  } finally {
    conn.close();
  }
  await waitFor(() => env.server.connections === 0, "the connection is gone");
});
