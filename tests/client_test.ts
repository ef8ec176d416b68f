/** The front-end client (client/mod.ts) against a real server. */
import assert from "node:assert/strict";
import { createParleyClient, type Message, type RoomState, watchRoom } from "../client/mod.ts";
import { startTestEnv, waitFor } from "./_helpers.ts";

/** Records what watchRoom reports. */
function recorder() {
  const seen = { messages: [] as Message[], states: [] as RoomState[] };
  return {
    seen,
    onMessages: (list: Message[]) => void (seen.messages = list),
    onStateChange: (state: RoomState) => void seen.states.push(state),
  };
}

const seqs = (list: Message[]) => list.map((m) => m.seq);
const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

Deno.test("client", async (t) => {
  await using env = await startTestEnv();
  const anon = createParleyClient({ url: env.url });
  const { user: ada, token: adaToken } = await anon.trpc.users.create.mutate({
    username: "ada",
    avatarUrl: "https://cdn.example.com/ada.png",
  });
  const { token: bobToken } = await anon.trpc.users.create.mutate({ username: "bob" });
  let currentAdaToken: string | null = adaToken;
  const adaSockets: WebSocket[] = [];
  const adaClient = createParleyClient({
    url: env.url,
    token: () => currentAdaToken,
    WebSocket: class extends WebSocket {
      constructor(url: string | URL, protocols?: string | string[] | WebSocketOptions) {
        super(url, protocols);
        adaSockets.push(this);
      }
    },
  });
  const bobClient = createParleyClient({ url: env.url, token: bobToken });
  const room = await adaClient.trpc.rooms.create.mutate({ name: "Client room" });
  await bobClient.trpc.rooms.join.mutate({ roomId: room.id });

  try {
    await t.step(
      "createParleyClient sends the token over HTTP (a function is read per call)",
      async () => {
        assert.equal((await adaClient.trpc.users.me.query()).id, ada.id);
        currentAdaToken = null;
        await assert.rejects(adaClient.trpc.users.me.query(), /Authentication required/);
        currentAdaToken = adaToken;
      },
    );

    await t.step(
      "watchRoom loads history, goes live, and merges both users' messages",
      async () => {
        for (let i = 1; i <= 3; i++) {
          await adaClient.trpc.messages.send.mutate({ roomId: room.id, content: `old ${i}` });
        }
        const a = recorder();
        const b = recorder();
        const ha = watchRoom(adaClient, room.id, a);
        const hb = watchRoom(bobClient, room.id, b);
        await waitFor(
          () => a.seen.states.includes("live") && b.seen.states.includes("live"),
          "live",
        );
        assert.deepEqual(seqs(a.seen.messages), [1, 2, 3]);
        const sent = await hb.send("hi from bob");
        assert.equal(sent.seq, 4);
        await ha.send("hi from ada");
        await waitFor(() => a.seen.messages.length === 5 && b.seen.messages.length === 5, "5 each");
        assert.deepEqual(seqs(a.seen.messages), range(1, 5));
        assert.deepEqual(b.seen.messages, a.seen.messages);
        assert.equal(b.seen.messages[4].avatarUrl, "https://cdn.example.com/ada.png");
        assert.deepEqual(a.seen.states.slice(0, 2), ["connecting", "live"]);
        ha.stop();
        hb.stop();
      },
    );

    await t.step("loadOlder pages back until the first message", async () => {
      const r = recorder();
      const h = watchRoom(bobClient, room.id, { ...r, pageSize: 2 });
      await waitFor(() => r.seen.states.includes("live"), "live");
      assert.deepEqual(seqs(r.seen.messages), [4, 5]);
      assert.equal(await h.loadOlder(), true);
      assert.deepEqual(seqs(r.seen.messages), [2, 3, 4, 5]);
      assert.equal(await h.loadOlder(), true);
      assert.deepEqual(seqs(r.seen.messages), [1, 2, 3, 4, 5]);
      assert.equal(await h.loadOlder(), false);
      h.stop();
    });

    await t.step(
      "a resync-required answer makes watchRoom reload and resubscribe by itself",
      async () => {
        const big = await adaClient.trpc.rooms.create.mutate({ name: "Big gap" });
        const r = recorder();
        const h = watchRoom(adaClient, big.id, { ...r, pageSize: 10 });
        await waitFor(() => r.seen.states.includes("live"), "live");
        await adaClient.trpc.messages.send.mutate({ roomId: big.id, content: "first" });
        await waitFor(() => r.seen.messages.length === 1, "first message");
        // While the subscriber is cut off, 1,500 messages arrive: too many to replay.
        await env.sql`
          with bump as (
            update rooms set last_seq = 1501, last_event_id = 1501 + 1000 where id = ${big.id}
          )
          insert into messages (room_id, seq, event_id, user_id, username, content)
          select ${big.id}, s, s + 1000, ${ada.id}, 'ada', 'bulk ' || s
          from generate_series(2, 1501) s
        `;
        adaSockets.at(-1)!.close(); // the network drops; wsLink reconnects with lastEventId 1
        await waitFor(() => r.seen.states.includes("resyncing"), "resyncing");
        await waitFor(() => r.seen.messages.at(-1)?.seq === 1501, "reloaded the latest page");
        assert.deepEqual(seqs(r.seen.messages), range(1492, 1501));
        await adaClient.trpc.messages.send.mutate({ roomId: big.id, content: "after" });
        await waitFor(() => r.seen.messages.at(-1)?.seq === 1502, "live again after the resync");
        h.stop();
      },
    );

    await t.step(
      "send retries a lost response with the same clientMessageId: stored once",
      async () => {
        let dropNext = true;
        const flaky = createParleyClient({
          url: env.url,
          token: bobToken,
          // The server gets the request and stores the message, but the answer is lost.
          fetch: async (input, init) => {
            const response = await fetch(input, init);
            if (dropNext && init?.method === "POST") {
              dropNext = false;
              await response.body?.cancel();
              throw new TypeError("network connection lost");
            }
            return response;
          },
        });
        try {
          const r = recorder();
          const h = watchRoom(flaky, room.id, r);
          await waitFor(() => r.seen.states.includes("live"), "live");
          const message = await h.send("exactly once please");
          assert.equal(dropNext, false, "the first attempt's answer was dropped");
          const rows = await env.sql`
          select seq from messages where client_message_id = ${message.clientMessageId}
        `;
          assert.deepEqual(rows.map((row) => row.seq), [message.seq]);
          await waitFor(() => r.seen.messages.at(-1)?.seq === message.seq, "shown once");
          assert.equal(
            r.seen.messages.filter((m) => m.content === "exactly once please").length,
            1,
          );
          h.stop();
        } finally {
          await flaky.close();
        }
      },
    );
    await t.step(
      "a failed first load is retried, and a send that lands first keeps the history whole",
      async () => {
        const early = await bobClient.trpc.rooms.create.mutate({ name: "Early bird" });
        for (let i = 1; i <= 10; i++) {
          await bobClient.trpc.messages.send.mutate({ roomId: early.id, content: `m${i}` });
        }
        let lists = 0;
        const slow = createParleyClient({
          url: env.url,
          token: bobToken,
          // The first page request fails outright; the second is slow, so the send wins.
          fetch: async (input, init) => {
            if (String(input).includes("messages.list") && lists++ < 2) {
              if (lists === 1) throw new TypeError("network down");
              await new Promise((r) => setTimeout(r, 300));
            }
            return await fetch(input, init);
          },
        });
        try {
          const r = recorder();
          const h = watchRoom(slow, early.id, r);
          const sent = await h.send("early");
          assert.equal(sent.seq, 11);
          await waitFor(() => r.seen.states.includes("live"), "live after a retry");
          await waitFor(() => r.seen.messages.length === 11, "the whole history");
          assert.deepEqual(seqs(r.seen.messages), range(1, 11));
          assert.ok(lists >= 2, "the first load was retried");
          h.stop();
        } finally {
          await slow.close();
        }
      },
    );
  } finally {
    await Promise.all([anon.close(), adaClient.close(), bobClient.close()]);
  }
});
