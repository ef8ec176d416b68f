/**
 * The client under rate limits (client/retry.ts, watchRoom): a refusal for rate
 * (`TOO_MANY_REQUESTS`, HTTP 429, `data.retryAfterMs` and `Retry-After`) is waited out and
 * retried with the same clientMessageId. A fake fetch answers the first matching call with
 * such a 429 and passes the rest to a real server; the last test uses the server's own limit.
 */
import assert from "node:assert/strict";
import superjson from "superjson";
import { createParleyClient, type Message, type RoomState, watchRoom } from "../client/mod.ts";
import { signUp, startTestEnv, waitFor } from "./_helpers.ts";

/** How a fake 429 answers: `data.retryAfterMs`, a `Retry-After` header, batch or single form. */
interface Refusal {
  retryAfterMs: number | null;
  header?: string;
  /** One error for the whole request (as a front door would answer) instead of one per call. */
  single?: boolean;
}

/** A tRPC-shaped 429 for a request of `calls` calls, superjson-encoded like the server's. */
function tooManyRequests(calls: number, refusal: Refusal): Response {
  const error = {
    error: superjson.serialize({
      message: "Rate limit exceeded: too many messages; retry in 1 s",
      code: -32029,
      data: {
        code: "TOO_MANY_REQUESTS",
        httpStatus: 429,
        retryAfterMs: refusal.retryAfterMs,
      },
    }),
  };
  const body = refusal.single ? error : Array.from({ length: calls }, () => error);
  return new Response(JSON.stringify(body), {
    status: 429,
    headers: {
      "content-type": "application/json",
      ...(refusal.header ? { "retry-after": refusal.header } : {}),
    },
  });
}

/**
 * A fetch that refuses the first request whose URL contains `match` (and `also`, when
 * given), then passes everything to the real server; it logs every request it sees.
 */
function refusingFetch(match: string, refusal: Refusal, also?: string) {
  const log: { at: number; url: string; body: string; refused: boolean }[] = [];
  let refused = false;
  const wrapped: typeof fetch = async (input, init) => {
    const url = String(input);
    const body = typeof init?.body === "string" ? init.body : "";
    const hit = url.includes(match) && (also === undefined || url.includes(also));
    const refuse = hit && !refused;
    if (hit) log.push({ at: performance.now(), url, body, refused: refuse });
    if (refuse) {
      refused = true;
      const calls = new URL(url).pathname.split("/").at(-1)!.split(",").length;
      return tooManyRequests(calls, refusal);
    }
    return await fetch(input, init);
  };
  return { log, fetch: wrapped };
}

/** Records what watchRoom reports. */
function recorder() {
  const seen = { messages: [] as Message[], states: [] as [RoomState, unknown][] };
  return {
    seen,
    state: () => seen.states.at(-1)?.[0],
    onMessages: (list: Message[]) => void (seen.messages = list),
    onStateChange: (state: RoomState, error?: unknown) => void seen.states.push([state, error]),
  };
}

const clientMessageIdOf = (body: string) =>
  JSON.parse(body)["0"].json.clientMessageId as string | undefined;

Deno.test("watchRoom waits out refusals for rate", async (t) => {
  await using env = await startTestEnv();
  const ada = await signUp(env);
  const dan = await signUp(env);
  const room = await ada.api.rooms.create.mutate({ name: "Rate limited" });
  await dan.api.rooms.join.mutate({ roomId: room.id });
  for (let i = 1; i <= 3; i++) {
    await ada.api.messages.send.mutate({ roomId: room.id, content: `m${i}` });
  }
  const rowsOf = (clientMessageId: string) =>
    env.sql`select user_id from messages where client_message_id = ${clientMessageId}`;

  for (
    const [name, refusal, minWait] of [
      ["data.retryAfterMs", { retryAfterMs: 1200 }, 1200],
      ["only Retry-After, one error for the request", {
        retryAfterMs: null,
        header: "1",
        single: true,
      }, 1000],
    ] as const
  ) {
    await t.step(`send retries a 429 after the wait it asks for (${name})`, async () => {
      const fake = refusingFetch("messages.send", refusal);
      const parley = createParleyClient({ url: env.url, token: ada.token, fetch: fake.fetch });
      const r = recorder();
      const h = watchRoom(parley, room.id, r);
      try {
        await waitFor(() => r.state() === "live", "live");
        const message = await h.send("patience");
        assert.equal(fake.log.length, 2, "refused once, then sent");
        const [first, second] = fake.log;
        assert.ok(first.refused && !second.refused);
        assert.ok(second.at - first.at >= minWait - 20, `${second.at - first.at} ms`);
        assert.equal(clientMessageIdOf(first.body), message.clientMessageId);
        assert.equal(clientMessageIdOf(second.body), message.clientMessageId);
        assert.equal((await rowsOf(message.clientMessageId!)).length, 1);
        await waitFor(() => r.seen.messages.at(-1)?.seq === message.seq, "shown");
      } finally {
        h.stop();
        await parley.close();
      }
    });
  }

  await t.step("the first load waits out a 429, then goes live", async () => {
    const fake = refusingFetch("messages.list", { retryAfterMs: 300 });
    const parley = createParleyClient({ url: env.url, token: ada.token, fetch: fake.fetch });
    const r = recorder();
    const h = watchRoom(parley, room.id, r);
    try {
      await waitFor(() => r.state() === "live", "live");
      const [refused] = r.seen.states.find(([, error]) => error !== undefined) ?? [];
      assert.equal(refused, "connecting", "waiting, not failed");
      assert.ok(fake.log[1].at - fake.log[0].at >= 280, `${fake.log[1].at - fake.log[0].at} ms`);
      assert.ok(!r.seen.states.some(([state]) => state === "error"));
      assert.ok(r.seen.messages.length >= 3);
    } finally {
      h.stop();
      await parley.close();
    }
  });

  await t.step("loadOlder waits out a 429", async () => {
    const fake = refusingFetch("messages.list", { retryAfterMs: 200 }, "beforeSeq");
    const parley = createParleyClient({ url: env.url, token: ada.token, fetch: fake.fetch });
    const r = recorder();
    const h = watchRoom(parley, room.id, { ...r, pageSize: 1 });
    try {
      await waitFor(() => r.state() === "live", "live");
      const held = r.seen.messages.length;
      assert.equal(await h.loadOlder(), true);
      assert.equal(r.seen.messages.length, held + 1);
      assert.equal(fake.log.filter((entry) => entry.refused).length, 1);
    } finally {
      h.stop();
      await parley.close();
    }
  });

  await t.step(
    "a send is not retried as someone else when the token changes meanwhile",
    async () => {
      let stored = ada.token;
      const fake = refusingFetch("messages.send", { retryAfterMs: 300 });
      const parley = createParleyClient({ url: env.url, token: () => stored, fetch: fake.fetch });
      const r = recorder();
      const h = watchRoom(parley, room.id, r);
      try {
        await waitFor(() => r.state() === "live", "live");
        const sending = h.send("typed by ada");
        await waitFor(() => fake.log.length === 1, "refused once");
        stored = dan.token; // dan is a member too: a retry would be stored as his
        await assert.rejects(sending, /token changed/);
        const clientMessageId = clientMessageIdOf(fake.log[0].body)!;
        assert.equal((await rowsOf(clientMessageId)).length, 0);
        assert.equal(fake.log.length, 1, "never sent again");
      } finally {
        h.stop();
        await parley.close();
      }
    },
  );
});

Deno.test("watchRoom sends everything through the server's own rate limit, once each", async () => {
  await using env = await startTestEnv({ limits: { sends: { points: 3, seconds: 1 } } });
  const ada = await signUp(env);
  const room = await ada.api.rooms.create.mutate({ name: "Three a second" });
  let refusals = 0;
  const parley = createParleyClient({
    url: env.url,
    token: ada.token,
    fetch: async (input, init) => {
      const response = await fetch(input, init);
      const body = await response.clone().json();
      for (const item of Array.isArray(body) ? body : [body]) {
        if (item.error?.json?.data?.code === "TOO_MANY_REQUESTS") refusals++;
      }
      return response;
    },
  });
  const r = recorder();
  const h = watchRoom(parley, room.id, r);
  try {
    await waitFor(() => r.state() === "live", "live");
    const sent = await Promise.all(Array.from({ length: 7 }, (_, i) => h.send(`burst ${i}`)));
    const rows = await env.sql`select seq, content from messages where room_id = ${room.id}`;
    assert.equal(rows.length, 7);
    assert.deepEqual(sent.map((m) => m.seq).sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7]);
    await waitFor(() => r.seen.messages.length === 7, "all shown");
    // 3 of 7 fit the first second and 3 of the 4 retried the next: 4 + 1 refusals. A retry
    // made before the time the server gave would have been refused again.
    assert.ok(refusals <= 5, `${refusals} refused calls`);
  } finally {
    h.stop();
    await parley.close();
  }
});
