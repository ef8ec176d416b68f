/**
 * The client within the server's wire limits (server/limits.ts): whatever it may send alone
 * also goes through when many calls are made at once, over HTTP (client/http.ts) and over
 * the WebSocket (client/socket.ts).
 */
import assert from "node:assert/strict";
import { createParleyClient, type Message, type RoomState, watchRoom } from "../client/mod.ts";
import {
  MAX_BATCH_SIZE,
  MAX_BODY_BYTES,
  MAX_FRAME_BYTES,
  MAX_URL_BYTES,
} from "../server/limits.ts";
import { BULK_LIMITS, signUp, startTestEnv, waitFor } from "./_helpers.ts";

/** A fetch that records the size of every request it sends. */
function recordingFetch() {
  const requests: { method: string; calls: number; urlBytes: number; bodyBytes: number }[] = [];
  const wrapped: typeof fetch = async (input, init) => {
    const url = new URL(String(input));
    const body = typeof init?.body === "string" ? init.body : "";
    requests.push({
      method: init?.method ?? "GET",
      calls: url.pathname.split("/").at(-1)!.split(",").length,
      urlBytes: new TextEncoder().encode(url.pathname + url.search).byteLength,
      bodyBytes: new TextEncoder().encode(body).byteLength,
    });
    return await fetch(input, init);
  };
  return { requests, fetch: wrapped };
}

/** A WebSocket class that records every frame sent through it. */
function recordingSocket() {
  const frames: string[] = [];
  const sockets: WebSocket[] = [];
  class Recording extends WebSocket {
    constructor(...args: ConstructorParameters<typeof WebSocket>) {
      super(...args);
      sockets.push(this);
    }
    override send(data: string | ArrayBufferLike | Blob | ArrayBufferView) {
      if (typeof data === "string") frames.push(data);
      super.send(data);
    }
  }
  return { frames, sockets, WebSocket: Recording };
}

const times = <T>(n: number, make: (i: number) => T) =>
  Array.from({ length: n }, (_, i) => make(i));

Deno.test("the client batches within the server's limits", async (t) => {
  // Write rates off: this is about the size of what is sent at once, not how often.
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const ada = await signUp(env);
  const http = recordingFetch();
  const ws = recordingSocket();
  const parley = createParleyClient({
    url: env.url,
    token: ada.token,
    fetch: http.fetch,
    WebSocket: ws.WebSocket,
  });
  const room = await parley.trpc.rooms.create.mutate({ name: "Limits" });
  /** Rooms made one call at a time, for steps about something else. */
  async function createRooms(prefix: string, n: number) {
    const rooms = [];
    for (let i = 0; i < n; i++) {
      rooms.push(await ada.api.rooms.create.mutate({ name: `${prefix} ${i}` }));
    }
    return rooms;
  }

  /** Every request so far kept to the limits. */
  function assertWithinLimits() {
    for (const request of http.requests) {
      assert.ok(request.calls <= MAX_BATCH_SIZE, JSON.stringify(request));
      assert.ok(request.bodyBytes <= MAX_BODY_BYTES, JSON.stringify(request));
      assert.ok(request.urlBytes <= MAX_URL_BYTES, JSON.stringify(request));
    }
  }

  try {
    for (const n of [21, 60]) {
      await t.step(`${n} queries in one tick all succeed`, async () => {
        http.requests.length = 0;
        const rooms = await Promise.all(
          times(n, () => parley.trpc.rooms.get.query({ roomId: room.id })),
        );
        assert.ok(rooms.every((r) => r.id === room.id));
        assert.equal(http.requests.length, Math.ceil(n / MAX_BATCH_SIZE));
        assertWithinLimits();
      });
    }

    await t.step("25 small mutations in one tick all succeed", async () => {
      http.requests.length = 0;
      const rooms = await Promise.all(
        times(25, (i) => parley.trpc.rooms.create.mutate({ name: `Tick ${i}` })),
      );
      assert.equal(new Set(rooms.map((r) => r.id)).size, 25);
      assert.equal(http.requests.length, 2);
      assertWithinLimits();
    });

    for (const n of [5, 20]) {
      await t.step(`${n} messages of 4,000 emoji in one tick are all stored, once`, async () => {
        http.requests.length = 0;
        const content = "😀".repeat(4000); // 16,000 bytes of UTF-8
        const sent = await Promise.all(
          times(n, () =>
            parley.trpc.messages.send.mutate({
              roomId: room.id,
              content,
              clientMessageId: crypto.randomUUID(),
            })),
        );
        const ids = sent.map((m) => m.clientMessageId);
        const rows = await env.sql`
          select client_message_id from messages where client_message_id in ${env.sql(ids)}
        `;
        assert.equal(rows.length, n);
        assert.equal(new Set(sent.map((m) => m.seq)).size, n);
        assertWithinLimits();
        assert.ok(http.requests.length > 1, "split into several requests");
        const posts = http.requests.filter((r) => r.method === "POST");
        assert.equal(posts.reduce((sum, r) => sum + r.calls, 0), n, "each sent exactly once");
      });
    }

    await t.step(
      "5 emoji messages sent through one watchRoom in one tick are shown once each",
      async () => {
        const list: { messages: Message[] } = { messages: [] };
        let state: RoomState | null = null;
        const h = watchRoom(parley, room.id, {
          onMessages: (messages) => void (list.messages = messages),
          onStateChange: (s) => void (state = s),
        });
        try {
          await waitFor(() => state === "live", "live");
          const before = list.messages.at(-1)?.seq ?? 0;
          const sent = await Promise.all(times(5, () => h.send("😀".repeat(4000))));
          await waitFor(() => list.messages.at(-1)?.seq === before + 5, "all five shown");
          assert.deepEqual(
            sent.map((m) => m.seq).sort((a, b) => a - b),
            times(5, (i) => before + 1 + i),
          );
          assertWithinLimits();
        } finally {
          h.stop();
        }
      },
    );

    await t.step(
      "25 subscriptions in one tick all start, in frames within the limits",
      async () => {
        const rooms = await createRooms("Sub", 25);
        let started = 0;
        const errors: unknown[] = [];
        const subscriptions = rooms.map((r) =>
          parley.trpc.messages.onMessage.subscribe({ roomId: r.id }, {
            onStarted: () => void started++,
            onError: (error) => void errors.push(error),
          })
        );
        try {
          await waitFor(() => started === 25 || errors.length > 0, "all started");
          assert.deepEqual(errors, []);
          assertFrames(ws.frames);
        } finally {
          for (const subscription of subscriptions) subscription.unsubscribe();
        }
      },
    );

    await t.step(
      "watchRoom on 25 rooms: all go live, and all resume after a reconnect",
      async () => {
        const rooms = await createRooms("Watch", 25);
        const states = new Map<string, RoomState>();
        const lists = new Map<string, Message[]>();
        const handles = rooms.map((r) =>
          watchRoom(parley, r.id, {
            onMessages: (messages) => void lists.set(r.id, messages),
            onStateChange: (s) => void states.set(r.id, s),
          })
        );
        const allLive = () => rooms.every((r) => states.get(r.id) === "live");
        try {
          await waitFor(allLive, "25 rooms live");
          // The network drops; tRPC resubscribes all 25 at once on the next socket.
          ws.frames.length = 0;
          const socket = ws.sockets.at(-1)!;
          socket.close();
          await waitFor(
            () => rooms.some((r) => states.get(r.id) === "reconnecting"),
            "reconnecting",
          );
          await waitFor(allLive, "25 rooms live again");
          assertFrames(ws.frames);
          assert.ok(ws.frames.some((f) => f.startsWith("[")), "resubscribed in batched frames");
          await Promise.all(
            rooms.map((r) => parley.trpc.messages.send.mutate({ roomId: r.id, content: "after" })),
          );
          await waitFor(
            () => rooms.every((r) => lists.get(r.id)?.length === 1),
            "one message each",
          );
          assert.ok(![...states.values()].includes("error"));
          assertWithinLimits();
        } finally {
          for (const handle of handles) handle.stop();
        }
      },
    );
  } finally {
    await parley.close();
  }
});

/** Every frame of calls holds at most MAX_BATCH_SIZE calls and MAX_FRAME_BYTES bytes. */
function assertFrames(frames: string[]) {
  for (const frame of frames) {
    if (frame === "PING" || frame === "PONG") continue;
    const parsed = JSON.parse(frame);
    const calls = Array.isArray(parsed) ? parsed.length : 1;
    assert.ok(calls <= MAX_BATCH_SIZE, `${calls} calls in one frame`);
    assert.ok(new TextEncoder().encode(frame).byteLength <= MAX_FRAME_BYTES);
  }
}
