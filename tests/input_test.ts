import assert from "node:assert/strict";
import { BULK_LIMITS, callError, signUp, startTestEnv } from "./_helpers.ts";

const LONG_URL = `https://cdn.example.com/${"a".repeat(2030)}`;

/** Usernames that render as (almost) nothing: marks or punctuation alone. */
const NOTHING_TO_SEE: [string, string][] = [
  ["\u0301", "only a combining acute accent"],
  ["\u0301\u0301\u0301", "only combining marks"],
  ["\u20DD", "only a combining enclosing circle"],
  ["  \u0301  ", "a combining mark between spaces (trimmed)"],
  [".", "only a dot"],
  ["-", "only a hyphen"],
  ["_", "only an underscore"],
  ["...", "only dots"],
  [". -", "only punctuation and a space"],
];

/** Values each rule refuses, with a label that says why. */
const BAD_USERNAMES: [string, string][] = [
  ["", "empty"],
  ["   ", "blank"],
  ["a".repeat(33), "33 characters"],
  ["two  spaces", "double inner space"],
  ["tab\there", "tab"],
  ["zero\u200Bwidth", "zero-width space"],
  ["bidi\u202Eoverride", "bidi override"],
  ["nul\u0000", "NUL"],
  ["semi;colon", "punctuation outside _ . -"],
  ["<script>", "angle brackets"],
  ["emoji😀", "emoji"],
  ["filler\u3164name", "Hangul filler U+3164 (a letter that renders as nothing)"],
  ["\u3164", "only a Hangul filler"],
  ["joiner\u034Fname", "combining grapheme joiner"],
  ["select\uFE0Fed", "variation selector"],
  ["mongolian\u180Bfvs", "Mongolian free variation selector"],
  ...NOTHING_TO_SEE,
  ["_alice", "starts with _"],
  ["a \u0301b", "a combining mark after a space"],
  ["a.\u0301", "a combining mark on a dot"],
  ["a-\u20DD", "an enclosing mark on a hyphen"],
];

const GOOD_USERNAMES: [string, string][] = [
  ["  padded  ", "padded"],
  ["José", "José"],
  ["Rene\u0301e", "Rene\u0301e"],
  ["名前", "名前"],
  ["a.b_c-d 9", "a.b_c-d 9"],
  ["x".repeat(32), "x".repeat(32)],
  ["9lives", "9lives"],
  ["Zoe\u0308\u0301 x_ -y.", "Zoe\u0308\u0301 x_ -y."],
  ["\u0915\u094D\u0937", "\u0915\u094D\u0937"],
];

const BAD_URLS: [string, string][] = [
  ["javascript:alert(1)", "javascript:"],
  ["data:image/png;base64,AAAA", "data:"],
  ["//cdn.example.com/a.png", "protocol-relative"],
  ["http://cdn.example.com/a.png", "http to a public host"],
  ["https://", "no host"],
  ["https:cdn.example.com/a.png", "no slashes"],
  ["https://exa mple.com/a.png", "space"],
  ["https://user:pw@cdn.example.com/a.png", "credentials"],
  ["ftp://cdn.example.com/a.png", "ftp"],
  ["/relative/a.png", "relative"],
  [LONG_URL, "over 2048 characters"],
];

const GOOD_URLS = [
  "https://ui-avatars.com/api/?name=Test+User",
  "http://localhost:3000/avatar.png",
  "http://127.0.0.1:9000/a.png",
  `https://cdn.example.com/${"a".repeat(2048 - 24)}`,
];

const BAD_ROOM_NAMES: [string, string][] = [
  ["", "empty"],
  [" \n ", "blank"],
  ["r".repeat(81), "81 characters"],
  ["line\nbreak", "newline"],
  ["bell\u0007", "control"],
];

const BAD_CONTENT: [string, string][] = [
  ["", "empty"],
  [" \n\t ", "blank after trimming"],
  ["c".repeat(4001), "4001 characters"],
  ["nul\u0000byte", "NUL"],
  ["carriage\rreturn", "carriage return"],
  ["escape\u001B[31m", "escape"],
];

Deno.test("input rules", async (t) => {
  // Rates off: this test makes dozens of refused writes in a row as one user.
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Inputs" });
  const counts = async () =>
    (await env.sql`
      select (select count(*) from users)::int as users, (select count(*) from rooms)::int as rooms,
        (select count(*) from messages)::int as messages
    `)[0];
  const start = await counts();

  async function refused(call: Promise<unknown>, label: string) {
    const error = await callError(call);
    assert.equal(error.data?.code, "BAD_REQUEST", label);
    assert.equal(error.data?.httpStatus, 400, label);
    assert.ok(Array.isArray(error.data?.zodIssues) && error.data.zodIssues.length > 0, label);
  }

  await t.step("each refused username is BAD_REQUEST with zod issues", async () => {
    for (const [username, label] of BAD_USERNAMES) {
      await refused(alice.api.users.create.mutate({ username }), `create: ${label}`);
      await refused(alice.api.users.update.mutate({ username }), `update: ${label}`);
    }
  });

  await t.step(
    "a name of marks or punctuation alone says it must start with a letter",
    async () => {
      for (const [username, label] of NOTHING_TO_SEE) {
        const error = await callError(alice.api.users.create.mutate({ username }));
        assert.equal(error.data?.code, "BAD_REQUEST", label);
        assert.match(error.message, /Username must start with a letter or a digit/, label);
      }
      const error = await callError(alice.api.users.create.mutate({ username: "a.\u0301" }));
      assert.match(error.message, /combining marks \(accents\) only on a letter or a digit/);
      assert.doesNotMatch(error.message, /must start with/);
    },
  );

  await t.step("usernames are trimmed, else kept as sent; letters of any script pass", async () => {
    for (const [input, stored] of GOOD_USERNAMES) {
      const { api } = await signUp(env);
      assert.equal((await api.users.update.mutate({ username: input })).username, stored);
    }
    // "Jose" + combining acute is stored as sent, but it has the key of "José" above (NFKC).
    const { api } = await signUp(env);
    const error = await callError(api.users.update.mutate({ username: "Jose\u0301" }));
    assert.equal(error.data?.code, "CONFLICT");
  });

  await t.step("each refused avatar and thumbnail URL is BAD_REQUEST", async () => {
    for (const [url, label] of BAD_URLS) {
      await refused(alice.api.users.create.mutate({ username: "u_url", avatarUrl: url }), label);
      await refused(alice.api.users.update.mutate({ avatarUrl: url }), label);
      await refused(alice.api.rooms.create.mutate({ name: "r", thumbnailUrl: url }), label);
      await refused(alice.api.rooms.update.mutate({ roomId: room.id, thumbnailUrl: url }), label);
    }
  });

  await t.step("https URLs up to 2048 characters and local http URLs are accepted", async () => {
    for (const url of GOOD_URLS) {
      assert.equal((await alice.api.users.update.mutate({ avatarUrl: url })).avatarUrl, url);
    }
  });

  await t.step("each refused room name is BAD_REQUEST", async () => {
    for (const [name, label] of BAD_ROOM_NAMES) {
      await refused(alice.api.rooms.create.mutate({ name }), label);
      await refused(alice.api.rooms.update.mutate({ roomId: room.id, name }), label);
    }
  });

  await t.step(
    "each refused message content is BAD_REQUEST; newline and tab are kept",
    async () => {
      for (const [content, label] of BAD_CONTENT) {
        await refused(alice.api.messages.send.mutate({ roomId: room.id, content }), label);
      }
      const kept = await alice.api.messages.send.mutate({
        roomId: room.id,
        content: "line one\n\tindented",
      });
      assert.equal(kept.content, "line one\n\tindented");
      const max = await alice.api.messages.send.mutate({
        roomId: room.id,
        content: "é".repeat(4000),
      });
      assert.equal([...max.content].length, 4000);
    },
  );

  await t.step("ids that are not UUIDs are BAD_REQUEST before any query", async () => {
    for (const roomId of ["1", "not-a-uuid", "' or 1=1 --"]) {
      await refused(alice.api.rooms.get.query({ roomId }), roomId);
      await refused(alice.api.messages.send.mutate({ roomId, content: "x" }), roomId);
    }
    await refused(
      alice.api.messages.send.mutate({ roomId: room.id, content: "x", clientMessageId: "abc" }),
      "clientMessageId",
    );
    await refused(alice.api.rooms.list.query({ cursor: "abc" }), "cursor");
  });

  await t.step("limits outside 1..100 and negative seqs are BAD_REQUEST", async () => {
    for (const limit of [0, 101, 1.5]) {
      await refused(alice.api.messages.list.query({ roomId: room.id, limit }), `limit ${limit}`);
      await refused(alice.api.rooms.list.query({ limit }), `rooms limit ${limit}`);
    }
    await refused(alice.api.messages.list.query({ roomId: room.id, beforeSeq: -1 }), "beforeSeq");
    for (const huge of [3_000_000_000, Number.MAX_SAFE_INTEGER]) {
      await refused(alice.api.messages.list.query({ roomId: room.id, afterSeq: huge }), `${huge}`);
    }
  });

  await t.step("a request body over 64 KiB is 413 and runs nothing", async () => {
    const body = JSON.stringify({
      json: { roomId: room.id, content: "x", padding: "p".repeat(70 * 1024) },
    });
    const res = await fetch(`${env.url}/trpc/messages.send`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${alice.token}` },
      body,
    });
    assert.equal(res.status, 413);
    assert.equal((await res.json()).error.json.data.code, "PAYLOAD_TOO_LARGE");
    // The same without a content-length header (a streamed body) is refused too.
    const chunk = new TextEncoder().encode(body);
    const streamed = await fetch(`${env.url}/trpc/messages.send`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${alice.token}` },
      body: new ReadableStream({
        start(controller) {
          controller.enqueue(chunk);
          controller.close();
        },
      }),
    });
    assert.equal(streamed.status, 413);
    await streamed.body?.cancel();
  });

  await t.step("a batch of more than 20 calls is 400 before any procedure runs", async () => {
    const paths = Array.from({ length: 21 }, () => "users.create").join(",");
    const input = Object.fromEntries(
      Array.from({ length: 21 }, (_, i) => [i, { json: { username: `batch_${i}` } }]),
    );
    const res = await fetch(`${env.url}/trpc/${paths}?batch=1`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(input),
    });
    assert.equal(res.status, 400);
    await res.body?.cancel();
    const ok = await fetch(`${env.url}/trpc/${paths.split(",").slice(1).join(",")}?batch=1`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(input),
    });
    assert.equal(ok.status, 200, "a batch of 20 is accepted");
    await ok.body?.cancel();
    await env.sql`delete from tokens using users where tokens.user_id = users.id
      and users.username like 'batch\\_%'`;
    await env.sql`delete from users where username like 'batch\\_%'`;
  });

  await t.step("malformed JSON is 400, not 500", async () => {
    const res = await fetch(`${env.url}/trpc/users.create`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{not json",
    });
    assert.equal(res.status, 400);
    await res.body?.cancel();
  });

  await t.step("no refused input wrote anything", async () => {
    const end = await counts();
    // Only the steps that were meant to succeed added rows: the users they signed up, 2 messages.
    assert.deepEqual(end, {
      users: start.users + GOOD_USERNAMES.length + 1,
      rooms: start.rooms,
      messages: start.messages + 2,
    });
  });
});
