/** The connection server (server/realtime/connection.ts) under bad and hostile input. */
import assert from "node:assert/strict";
import { signUp, startTestEnv, upgradeStatus, waitFor, wsClient } from "./_helpers.ts";

/** A raw WebSocket that records frames and its close code. */
async function raw(url: string, query = "") {
  const socket = new WebSocket(`${url.replace(/^http/, "ws")}/trpc${query}`);
  const frames: string[] = [];
  let closeCode: number | null = null;
  socket.onmessage = (event) => void frames.push(String(event.data));
  const closed = new Promise<void>((resolve) => {
    socket.onclose = (event) => {
      closeCode = event.code;
      resolve();
    };
  });
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = reject;
  });
  return {
    socket,
    frames,
    closed,
    get closeCode() {
      return closeCode;
    },
  };
}

function subscribeFrame(id: number, roomId: string) {
  return JSON.stringify({
    id,
    method: "subscription",
    params: { path: "messages.onMessage", input: { json: { roomId } } },
  });
}

Deno.test("WebSocket bridge", async (t) => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Bridge" });
  const healthy = wsClient(env, { token: alice.token });
  const events: number[] = [];
  const sub = healthy.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
    onData: (event) => void events.push(event.data.seq),
  });

  try {
    await t.step("a query over a raw WebSocket (no connectionParams) gets its reply", async () => {
      const c = await raw(env.url);
      c.socket.send(
        JSON.stringify({
          id: 1,
          method: "query",
          params: { path: "health", input: { json: null } },
        }),
      );
      await waitFor(() => c.frames.length > 0, "a reply");
      assert.deepEqual(JSON.parse(c.frames[0]).result.data.json, { status: "ok", db: "ok" });
      c.socket.close();
      await c.closed;
    });

    await t.step("non-JSON text and id: null get an error reply, not a crash", async () => {
      const c = await raw(env.url);
      c.socket.send("this is not json");
      c.socket.send(
        JSON.stringify({
          id: null,
          method: "query",
          params: { path: "health", input: { json: null } },
        }),
      );
      c.socket.send(JSON.stringify([1, 2, 3]));
      c.socket.send(
        JSON.stringify({
          id: 5,
          method: "query",
          params: { path: "nope.nope", input: { json: null } },
        }),
      );
      await waitFor(() => c.frames.length >= 4, "four error replies");
      for (const frame of c.frames) assert.ok(JSON.parse(frame).error, frame);
      assert.equal(c.closeCode, null, "the socket stays open");
      c.socket.send(
        JSON.stringify({
          id: 6,
          method: "query",
          params: { path: "health", input: { json: null } },
        }),
      );
      await waitFor(() => c.frames.length >= 5, "a normal reply after the garbage");
      assert.equal(JSON.parse(c.frames[4]).result.data.json.status, "ok");
      c.socket.close();
      await c.closed;
    });

    await t.step("an upgrade request without a WebSocket key is a 400, not a 500", async () => {
      assert.match(await upgradeStatus(env.url, { key: false }), /^HTTP\/1.1 400/);
    });

    await t.step("a binary frame closes the socket with 1003", async () => {
      const c = await raw(env.url);
      c.socket.send(new Uint8Array([1, 2, 3]));
      await c.closed;
      assert.equal(c.closeCode, 1003);
    });

    await t.step("a frame over 64 KiB closes the socket with 1009", async () => {
      const c = await raw(env.url);
      c.socket.send(
        JSON.stringify({ id: 1, method: "query", params: { pad: "x".repeat(70_000) } }),
      );
      await c.closed;
      assert.equal(c.closeCode, 1009);
    });

    await t.step("connectionParams of the wrong shape get an error and a close", async () => {
      for (const bad of ['{"method":"connectionParams","data":{"token":42}}', "[]", "nonsense"]) {
        const c = await raw(env.url, "?connectionParams=1");
        c.socket.send(bad);
        await c.closed;
        assert.ok(c.frames.some((f) => JSON.parse(f).error), bad);
      }
    });

    await t.step(
      "a subscription with a wrong token in connectionParams is UNAUTHORIZED",
      async () => {
        const c = await raw(env.url, "?connectionParams=1");
        c.socket.send(JSON.stringify({ method: "connectionParams", data: { token: "nope" } }));
        c.socket.send(subscribeFrame(1, room.id));
        await waitFor(() => c.frames.length > 0, "a reply");
        assert.equal(JSON.parse(c.frames[0]).error.json.data.code, "UNAUTHORIZED");
        c.socket.close();
        await c.closed;
      },
    );

    await t.step("after all of that the server still serves its other clients", async () => {
      await alice.api.messages.send.mutate({ roomId: room.id, content: "still alive" });
      await waitFor(() => events.length > 0, "the healthy subscriber got the message");
      assert.deepEqual(events, [1]);
    });
  } finally {
    sub.unsubscribe();
    await healthy.close();
  }
});
