/**
 * The client's error class and its WebSocket tuning (issue #14) against a real server over real
 * sockets: errors of `parley.trpc` are `instanceof` the exported `TRPCClientError` and pass
 * `isParleyError`; `retryDelayMs`, `idleCloseMs` and `keepAlive` are honoured; `reconnect()`
 * reconnects at once (also in the middle of a long backoff) and a watched room resumes with
 * nothing lost.
 */
import assert from "node:assert/strict";
import { TRPCClientError as UpstreamTRPCClientError } from "@trpc/client";
import {
  createParleyClient,
  defaultRetryDelayMs,
  isParleyError,
  isUnauthorized,
  type Message,
  type ParleyClientOptions,
  type RoomState,
  type RouterInputs,
  type RouterOutputs,
  TRPCClientError,
  watchRoom,
  type WatchRoomHandle,
} from "../client/mod.ts";
import { startTcpProxy } from "./_tcp_proxy.ts";
import { BULK_LIMITS, signUp, startTestEnv, waitFor } from "./_helpers.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A client as one user's device, recording its sockets (when each was made, how each closed,
 * the frames each sent) and the stored events they carried; `down` takes its WebSocket network
 * down (new sockets fail to connect), `via` sends new sockets through another port (a proxy).
 */
function device(env: { url: string }, token: string, options: Partial<ParleyClientOptions> = {}) {
  const sockets: { ws: WebSocket; at: number; sent: string[]; closed: number | null }[] = [];
  const stored: { id: number; type: string }[] = [];
  const d = {
    sockets,
    stored,
    down: false,
    via: null as number | null,
    parley: createParleyClient({
      url: env.url,
      token,
      ...options,
      WebSocket: class extends WebSocket {
        constructor(url: string | URL, protocols?: string | string[] | WebSocketOptions) {
          const target = new URL(String(url));
          if (d.down) target.port = "1";
          else if (d.via !== null) target.port = String(d.via);
          super(target, protocols);
          const record = {
            ws: this as WebSocket,
            at: performance.now(),
            sent: [] as string[],
            closed: null as number | null,
          };
          sockets.push(record);
          this.addEventListener("close", (event) => void (record.closed ??= event.code));
          this.addEventListener("message", (event) => {
            if (typeof event.data !== "string" || event.data.startsWith("P")) return;
            const parsed = JSON.parse(event.data);
            for (const frame of Array.isArray(parsed) ? parsed : [parsed]) {
              const result = frame?.result;
              const type = result?.data?.json?.data?.type;
              if (result?.type === "data" && typeof type === "string" && !isLive(type)) {
                stored.push({ id: Number(result.id), type });
              }
            }
          });
        }
        override send(data: string | ArrayBufferLike | Blob | ArrayBufferView) {
          if (typeof data === "string") sockets.find((s) => s.ws === this)?.sent.push(data);
          super.send(data);
        }
      },
    }),
    /** Sockets not closed yet. */
    open: () => sockets.filter((s) => s.closed === null),
  };
  return d;
}

const isLive = (type: string) => type === "presence.changed" || type === "typing.changed";

/** Records what a watchRoom reports. */
function recorder() {
  const seen = { messages: [] as Message[], states: [] as RoomState[] };
  return {
    seen,
    state: () => seen.states.at(-1),
    seqs: () => seen.messages.map((m) => m.seq),
    onMessages: (list: Message[]) => void (seen.messages = list),
    onStateChange: (state: RoomState) => void seen.states.push(state),
  };
}

/** Asserts that stored events came once each, in order, without a gap. */
function assertContiguous(events: { id: number }[]) {
  events.forEach((e, i) => i === 0 || assert.equal(e.id, events[i - 1].id + 1, "no gap"));
}

Deno.test("errors of parley.trpc are the exported TRPCClientError and pass isParleyError", async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Errors" });
  const anon = createParleyClient({ url: env.url });
  const bob = createParleyClient({ url: env.url, token: (await signUp(env)).token });
  try {
    // Over HTTP.
    const refused = await anon.trpc.users.me.query().then(() => null, (error) => error);
    assert.ok(refused instanceof TRPCClientError);
    assert.ok(isParleyError(refused));
    assert.equal(refused.data?.code, "UNAUTHORIZED");
    assert.equal(refused.data?.httpStatus, 401);
    assert.ok(isUnauthorized(refused), "the existing helpers still recognise it");
    // In the source, the class is @trpc/client's own (the bundle exports its bundled copy).
    assert.equal(TRPCClientError, UpstreamTRPCClientError);

    // A request that never reached the server.
    const offline = createParleyClient({
      url: env.url,
      fetch: () => Promise.reject(new TypeError("network down")),
    });
    const failed = await offline.trpc.rooms.get.query({ roomId: room.id }).catch((e) => e);
    assert.ok(failed instanceof TRPCClientError);
    assert.ok(isParleyError(failed));
    assert.equal(failed.data, undefined);
    await offline.close();

    // Over the WebSocket: a subscription refused (bob is not a member).
    const subscribed = await new Promise<unknown>((resolve) => {
      const sub = bob.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
        onData: () => {},
        onError: (error) => {
          sub.unsubscribe();
          resolve(error);
        },
      });
    });
    assert.ok(subscribed instanceof TRPCClientError);
    assert.ok(isParleyError(subscribed));
    assert.equal(subscribed.data?.code, "FORBIDDEN");

    for (const other of [new Error("x"), new TypeError("fetch failed"), null, undefined, "x", {}]) {
      assert.equal(isParleyError(other), false);
    }
  } finally {
    await Promise.all([anon.close(), bob.close()]);
  }
});

Deno.test("messages.list's input and output fit tRPC's infinite queries (types)", () => {
  // What @trpc/tanstack-react-query requires to offer `infiniteQueryOptions` for a query
  // (`OptionalCursorInput`), and the page param it derives (`ExtractCursorType`).
  type Input = RouterInputs["messages"]["list"];
  // deno-lint-ignore no-explicit-any
  type OptionalCursorInput = { cursor?: any } | void;
  type Cursor = Input extends { cursor?: unknown } ? Input["cursor"] : unknown;
  const offered: Input extends OptionalCursorInput ? true : false = true;
  const pageParam: NonNullable<Cursor> | null = 12;
  const next: RouterOutputs["messages"]["list"]["nextCursor"] = null;
  const sameAs: RouterOutputs["messages"]["list"]["nextBeforeSeq"] = next;
  assert.deepEqual([offered, pageParam, sameAs], [true, 12, null]);
});

Deno.test("defaultRetryDelayMs: at once, then growing to about 2 s at most", () => {
  assert.equal(defaultRetryDelayMs(0), 0);
  for (let i = 0; i < 200; i++) {
    for (const [attempt, ceiling] of [[1, 500], [2, 1000], [3, 2000], [4, 2000], [60, 2000]]) {
      const ms = defaultRetryDelayMs(attempt);
      assert.ok(ms >= ceiling / 2 && ms <= ceiling, `attempt ${attempt}: ${ms} ms`);
    }
  }
});

Deno.test("the client's WebSocket tuning is honoured", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const adaUser = await signUp(env);
  const room = await adaUser.api.rooms.create.mutate({ name: "Tuning" });
  const send = (content: string) => adaUser.api.messages.send.mutate({ roomId: room.id, content });
  const page = async () =>
    (await adaUser.api.messages.list.query({ roomId: room.id, limit: 100 })).items;

  await t.step("retryDelayMs is asked for each attempt, and its waits are kept", async () => {
    const attempts: number[] = [];
    const d = device(env, adaUser.token, {
      retryDelayMs: (attempt) => {
        attempts.push(attempt);
        return attempt === 0 ? 0 : 300;
      },
    });
    const r = recorder();
    const h = watchRoom(d.parley, room.id, r);
    try {
      await waitFor(() => r.state() === "live", "live");
      d.down = true;
      d.open()[0].ws.close();
      await waitFor(() => d.sockets.length >= 5, "four attempts while down");
      const sent = await send("sent while down");
      d.down = false;
      await waitFor(() => r.state() === "live", "live again");
      await waitFor(() => r.seen.messages.at(-1)?.id === sent.id, "the message caught up");
      assert.deepEqual(attempts.slice(0, 4), [0, 1, 2, 3]);
      // The first retry is at once; the failed ones are 300 ms apart.
      const gaps = d.sockets.slice(1, 5).map((s, i, all) => i === 0 ? 0 : s.at - all[i - 1].at);
      for (const gap of gaps.slice(1)) assert.ok(gap >= 280 && gap < 1500, `gap ${gap} ms`);
    } finally {
      h.stop();
      await d.parley.close();
    }
  });

  await t.step("with the default backoff, 7 s offline is caught up within 2.5 s", async () => {
    const d = device(env, adaUser.token);
    const r = recorder();
    const h = watchRoom(d.parley, room.id, r);
    try {
      await waitFor(() => r.state() === "live", "live");
      d.down = true;
      d.open()[0].ws.close();
      await sleep(7_000);
      const sent = await send("sent after 7 s offline");
      d.down = false;
      const back = performance.now();
      await waitFor(() => r.seen.messages.at(-1)?.id === sent.id, "caught up", 5_000);
      const took = performance.now() - back;
      assert.ok(took < 2_500, `caught up in ${Math.round(took)} ms`);
      assert.deepEqual(r.seen.messages, await page());
    } finally {
      h.stop();
      await d.parley.close();
    }
  });

  await t.step("idleCloseMs: the socket closes that long after the last subscription", async () => {
    for (const idleCloseMs of [300, 0]) {
      const d = device(env, adaUser.token, { idleCloseMs });
      const r = recorder();
      const h = watchRoom(d.parley, room.id, r);
      try {
        await waitFor(() => r.state() === "live", "live");
        await sleep(idleCloseMs + 300);
        assert.equal(d.open().length, 1, "kept open while subscribed");
        const stoppedAt = performance.now();
        h.stop();
        await waitFor(() => d.open().length === 0, "closed when idle", 3_000);
        const took = performance.now() - stoppedAt;
        assert.ok(took >= idleCloseMs - 20 && took < idleCloseMs + 1_000, `closed in ${took} ms`);
        assert.equal(d.sockets.length, 1);
      } finally {
        h.stop();
        await d.parley.close();
      }
    }
    assert.throws(() => createParleyClient({ url: env.url, idleCloseMs: -1 }), RangeError);
  });

  await t.step(
    "keepAlive pings a quiet socket; a dead one is closed and the room resumes, nothing lost",
    async () => {
      const { port } = new URL(env.url);
      await using proxy = startTcpProxy({ hostname: "127.0.0.1", port: Number(port) });
      const d = device(env, adaUser.token, {
        keepAlive: { enabled: true, intervalMs: 200, pongTimeoutMs: 300 },
      });
      d.via = proxy.port;
      const r = recorder();
      const h = watchRoom(d.parley, room.id, r);
      try {
        await waitFor(() => r.state() === "live", "live");
        await sleep(700);
        const first = d.sockets[0];
        const pings = first.sent.filter((frame) => frame === "PING").length;
        assert.ok(pings >= 2, `${pings} pings in 0.7 s of quiet`);
        assert.equal(first.closed, null, "answered pings keep it open");

        // The connection goes dead without closing (a sleeping laptop, a NAT that dropped it).
        const storedBefore = d.stored.length;
        assert.equal(proxy.blackhole(), 1);
        const lost = performance.now();
        const sent = await send("sent while the socket was dead");
        await waitFor(() => d.sockets.length === 2, "a new socket", 5_000);
        const took = performance.now() - lost;
        assert.ok(took < 3_000, `replaced after ${Math.round(took)} ms`);
        await waitFor(() => r.seen.messages.at(-1)?.id === sent.id, "resumed", 5_000);
        assert.deepEqual(r.seen.messages, await page());
        assert.ok(!r.seen.states.includes("resyncing"), "resumed, not reloaded");
        assertContiguous(d.stored);
        assert.ok(d.stored.length > storedBefore);
      } finally {
        h.stop();
        await d.parley.close();
        proxy.heal();
      }
    },
  );
});

Deno.test("reconnect() reconnects at once and a watched room resumes with nothing lost", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const adaUser = await signUp(env);
  const bobUser = await signUp(env);
  const room = await adaUser.api.rooms.create.mutate({ name: "Reconnect" });
  await bobUser.api.rooms.join.mutate({ roomId: room.id });
  const send = (content: string) => adaUser.api.messages.send.mutate({ roomId: room.id, content });
  const page = async () =>
    (await bobUser.api.messages.list.query({ roomId: room.id, limit: 100 })).items;
  const handles: WatchRoomHandle[] = [];
  const bob = device(env, bobUser.token, { retryDelayMs: (n) => (n === 0 ? 0 : 60_000) });

  try {
    await t.step("without a socket, it opens none", async () => {
      bob.parley.reconnect();
      await sleep(100);
      assert.equal(bob.sockets.length, 0);
    });

    const r = recorder();
    const h = watchRoom(bob.parley, room.id, r);
    handles.push(h);
    await waitFor(() => r.state() === "live", "live");

    await t.step("on a live socket: closed, replaced at once, every event once", async () => {
      for (let i = 1; i <= 3; i++) await send(`before ${i}`);
      await waitFor(() => r.seen.messages.length === 3, "three messages");
      const storedBefore = bob.stored.length;
      const before = performance.now();
      bob.parley.reconnect();
      const during = send("sent during the reconnect");
      await waitFor(() => bob.sockets.length === 2 && r.state() === "live", "live again");
      assert.ok(performance.now() - before < 1_000, "at once");
      assert.equal(bob.sockets[0].closed, 4001, "closed by reconnect()");
      const after = await send("sent after the reconnect");
      await during;
      await waitFor(() => r.seen.messages.at(-1)?.id === after.id, "all shown");
      assert.deepEqual(r.seen.messages, await page());
      assert.deepEqual(r.seqs(), [1, 2, 3, 4, 5]);
      assert.ok(!r.seen.states.includes("resyncing"), "resumed, not reloaded");
      assertContiguous(bob.stored);
      assert.equal(bob.stored.length - storedBefore, 2);
    });

    await t.step(
      "in a long backoff (the network is back): the wait ends, the room catches up",
      async () => {
        const storedBefore = bob.stored.length;
        const socketsBefore = bob.sockets.length;
        bob.down = true;
        bob.open()[0].ws.close();
        // Attempt 0 fails at once; attempt 1 then waits 60 s.
        await waitFor(() => bob.sockets.length === socketsBefore + 1, "the first attempt");
        await waitFor(() => bob.sockets.at(-1)!.closed !== null, "failed");
        await waitFor(() => r.state() === "reconnecting", "reconnecting");
        const missed = [await send("missed 1"), await send("missed 2")];
        await sleep(500);
        assert.equal(bob.sockets.length, socketsBefore + 1, "waiting, no new attempt");
        bob.down = false;
        const online = performance.now();
        bob.parley.reconnect();
        await waitFor(() => r.seen.messages.at(-1)?.id === missed[1].id, "caught up", 3_000);
        assert.ok(performance.now() - online < 1_000, "at once, not after 60 s");
        assert.equal(r.state(), "live");
        assert.deepEqual(r.seen.messages, await page());
        assert.ok(!r.seen.states.includes("resyncing"), "resumed, not reloaded");
        assertContiguous(bob.stored);
        assert.equal(bob.stored.length - storedBefore, 2);
      },
    );

    await t.step(
      "on a dead socket (the peer never answers): dropped at once, the room catches up",
      async () => {
        const { port } = new URL(env.url);
        await using proxy = startTcpProxy({ hostname: "127.0.0.1", port: Number(port) });
        const d = device(env, bobUser.token);
        d.via = proxy.port;
        const rd = recorder();
        const hd = watchRoom(d.parley, room.id, rd);
        try {
          await waitFor(() => rd.state() === "live", "live");
          const storedBefore = d.stored.length;
          assert.equal(proxy.blackhole(), 1);
          const missed = await send("sent while the socket was dead");
          await sleep(300);
          assert.notEqual(rd.seen.messages.at(-1)?.id, missed.id, "not through a dead socket");
          const online = performance.now();
          d.parley.reconnect();
          await waitFor(() => rd.seen.messages.at(-1)?.id === missed.id, "caught up", 3_000);
          assert.ok(performance.now() - online < 1_000, "at once, not when TCP gives up");
          assert.equal(d.sockets[0].closed, 4001);
          assert.equal(d.sockets.length, 2);
          assert.deepEqual(rd.seen.messages, await page());
          assert.ok(!rd.seen.states.includes("resyncing"), "resumed, not reloaded");
          assertContiguous(d.stored);
          assert.equal(d.stored.length - storedBefore, 1);
        } finally {
          hd.stop();
          await d.parley.close();
          proxy.heal();
        }
      },
    );

    await t.step("a watchRoom waiting to retry a failed load retries at once", async () => {
      let listDown = true;
      let lists = 0;
      const tab = createParleyClient({
        url: env.url,
        token: bobUser.token,
        fetch: (input, init) => {
          if (String(input).includes("messages.list")) {
            lists++;
            if (listDown) return Promise.reject(new TypeError("network down"));
          }
          return fetch(input, init);
        },
      });
      const rt = recorder();
      const ht = watchRoom(tab, room.id, rt);
      try {
        // Failed loads back off 0.25, 0.5, 1, 2 s: after the 4th failure the wait is 2 s.
        await waitFor(() => lists >= 4, "four failed loads", 5_000);
        await sleep(100);
        listDown = false;
        const online = performance.now();
        tab.reconnect();
        await waitFor(() => rt.state() === "live", "live", 3_000);
        assert.ok(performance.now() - online < 1_000, "retried at once");
        assert.deepEqual(rt.seen.messages, await page());
      } finally {
        ht.stop();
        await tab.close();
      }
    });
  } finally {
    for (const handle of handles) handle.stop();
    await bob.parley.close();
  }
});
