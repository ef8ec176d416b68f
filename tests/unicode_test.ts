import assert from "node:assert/strict";
import { BULK_LIMITS, client, signUp, startTestEnv, type TestEnv } from "./_helpers.ts";

/** Strings that are not well-formed UTF-16, each around otherwise valid text. */
const ILL_FORMED: [string, string][] = [
  ["a\uD800b", "lone high surrogate"],
  ["a\uDC00b", "lone low surrogate"],
  ["a\uDC00\uD800b", "reversed surrogate pair"],
  ["ab\uD83D", "high surrogate cut off at the end"],
];

const WELL_FORMED_MESSAGE = /well-formed Unicode/;

/** The raw answer to a tRPC mutation POSTed with a body built by JSON.stringify. */
async function postRaw(
  env: TestEnv,
  path: string,
  input: Record<string, unknown>,
  token?: string,
) {
  const body = JSON.stringify({ json: input });
  const res = await fetch(`${env.url}/trpc/${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body,
  });
  return { body, status: res.status, answer: await res.json() };
}

Deno.test("text that is not well-formed Unicode is refused on every field", async (t) => {
  // Rates off: dozens of refused writes in a row.
  await using env = await startTestEnv({ limits: BULK_LIMITS });
  const alice = await signUp(env);
  const bob = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Surrogates" });
  const counts = async () =>
    (await env.sql`
      select (select count(*) from users)::int as users, (select count(*) from rooms)::int as rooms,
        (select count(*) from messages)::int as messages,
        (select count(*) from users where username like '%\uFFFD%' or avatar_url like '%\uFFFD%')::int
          as replaced_users,
        (select count(*) from rooms where name like '%\uFFFD%' or thumbnail_url like '%\uFFFD%')::int
          as replaced_rooms,
        (select count(*) from messages where content like '%\uFFFD%')::int as replaced_messages
    `)[0];
  const start = await counts();

  /** Each procedure and field, with an input that is valid but for `bad` in that field. */
  const cases: [string, string, (bad: string) => Record<string, unknown>, string?][] = [
    ["users.create", "username", (bad) => ({ username: bad })],
    [
      "users.create",
      "avatarUrl",
      (bad) => ({ username: "fresh_name", avatarUrl: `https://cdn.example.com/${bad}.png` }),
    ],
    ["users.update", "username", (bad) => ({ username: bad }), bob.token],
    [
      "users.update",
      "avatarUrl",
      (bad) => ({ avatarUrl: `https://cdn.example.com/${bad}.png` }),
      bob.token,
    ],
    ["rooms.create", "name", (bad) => ({ name: bad }), alice.token],
    [
      "rooms.create",
      "thumbnailUrl",
      (bad) => ({ name: "ok", thumbnailUrl: `https://cdn.example.com/${bad}.png` }),
      alice.token,
    ],
    ["rooms.update", "name", (bad) => ({ roomId: room.id, name: bad }), alice.token],
    [
      "rooms.update",
      "thumbnailUrl",
      (bad) => ({ roomId: room.id, thumbnailUrl: `https://cdn.example.com/${bad}.png` }),
      alice.token,
    ],
    ["messages.send", "content", (bad) => ({ roomId: room.id, content: bad }), alice.token],
  ];

  for (const [path, field, input, token] of cases) {
    await t.step(`${path} refuses an ill-formed ${field} with BAD_REQUEST`, async () => {
      for (const [bad, label] of ILL_FORMED) {
        const { body, status, answer } = await postRaw(env, path, input(bad), token);
        // The request really carries a lone surrogate: JSON.stringify escapes it as \uXXXX.
        assert.match(body, /\\ud[89a-f][0-9a-f]{2}/, `${label}: the body escapes the surrogate`);
        assert.equal(status, 400, `${path} ${field}: ${label}`);
        const data = answer.error?.json?.data;
        assert.equal(data?.code, "BAD_REQUEST", `${path} ${field}: ${label}`);
        assert.ok(
          data.zodIssues.some((issue: { path: string[]; message: string }) =>
            issue.path.join(".") === field && WELL_FORMED_MESSAGE.test(issue.message)
          ),
          `${path} ${field}: ${label}: ${JSON.stringify(data.zodIssues)}`,
        );
      }
    });
  }

  await t.step("nothing was written, and no U+FFFD was stored", async () => {
    assert.deepEqual(await counts(), start);
    assert.deepEqual(
      [start.replacedUsers, start.replacedRooms, start.replacedMessages],
      [0, 0, 0],
    );
  });
});

Deno.test("well-formed text is stored exactly as sent (after the documented trims)", async (t) => {
  await using env = await startTestEnv();

  // Astral letters, emoji with skin tone and ZWJ sequences, a flag, combining marks left
  // decomposed (NFC would compose them), conjoining Hangul jamo, a compatibility ligature.
  const username = "Zoe\u0308 \u{10437}\u{2070E} \u1100\u1161 \uFB01n";
  const avatarUrl = "https://cdn.example.com/\u00F1/\u{1F600}\u200D\u{1F525}/e\u0301.png";
  const roomName = "Ca\u0301fe \u{1F468}\u200D\u{1F469}\u200D\u{1F467} \u{2070E} \uFF26ull";
  const thumbnailUrl = "https://cdn.example.com/\u{1F1EB}\u{1F1F7}/\u{1D49C}.png";
  const content = "Hi \u{1F469}\u{1F3FD}\u200D\u{1F4BB} and \u{1F468}\u200D\u{1F469}\u200D" +
    "\u{1F467}\u200D\u{1F466} \u{1F1EB}\u{1F1F7}\ncafe\u0301 \u{1D49C} \u{2070E} \u1100\u1161" +
    "\n\tZoe\u0308 \u0915\u094D\u200D\u0937";

  const { user, token } = await client(env).users.create.mutate({
    username: `  ${username}  `,
    avatarUrl,
  });
  const api = client(env, { token });

  await t.step("users.create and users.me return the username and avatar as sent", async () => {
    assert.equal(user.username, username);
    assert.equal(user.avatarUrl, avatarUrl);
    const me = await api.users.me.query();
    assert.ok(me.username === username, JSON.stringify(me.username));
    assert.ok(me.avatarUrl === avatarUrl, JSON.stringify(me.avatarUrl));
  });

  await t.step("rooms.create and rooms.get return the name and thumbnail as sent", async () => {
    const room = await api.rooms.create.mutate({ name: ` ${roomName} `, thumbnailUrl });
    const read = await client(env).rooms.get.query({ roomId: room.id });
    assert.ok(read.name === roomName, JSON.stringify(read.name));
    assert.ok(read.thumbnailUrl === thumbnailUrl, JSON.stringify(read.thumbnailUrl));
  });

  await t.step("messages.send and messages.list return the content as sent", async () => {
    const room = await api.rooms.create.mutate({ name: "Round trip" });
    const sent = await api.messages.send.mutate({ roomId: room.id, content: `\n ${content} \t` });
    assert.ok(sent.content === content, JSON.stringify(sent.content));
    const { items } = await api.messages.list.query({ roomId: room.id });
    assert.equal(items.length, 1);
    assert.ok(items[0].content === content, JSON.stringify(items[0].content));
    assert.ok(items[0].username === username, JSON.stringify(items[0].username));
    assert.ok(items[0].avatarUrl === avatarUrl, JSON.stringify(items[0].avatarUrl));
  });

  await t.step("users.update and rooms.update keep what they are sent too", async () => {
    const other = await signUp(env);
    const renamed = "\u{1D400}\u{1D401} Jose\u0301 \u13A0\uAB70";
    await other.api.users.update.mutate({ username: renamed, avatarUrl: thumbnailUrl });
    const me = await other.api.users.me.query();
    assert.ok(me.username === renamed, JSON.stringify(me.username));
    assert.ok(me.avatarUrl === thumbnailUrl, JSON.stringify(me.avatarUrl));
    const room = await other.api.rooms.create.mutate({ name: "before" });
    await other.api.rooms.update.mutate({
      roomId: room.id,
      name: roomName,
      thumbnailUrl: avatarUrl,
    });
    const read = await client(env).rooms.get.query({ roomId: room.id });
    assert.ok(read.name === roomName, JSON.stringify(read.name));
    assert.ok(read.thumbnailUrl === avatarUrl, JSON.stringify(read.thumbnailUrl));
  });

  await t.step("Postgres holds the same code points", async () => {
    const [row] = await env.sql`select username, avatar_url from users where id = ${user.id}`;
    assert.ok(row.username === username && row.avatarUrl === avatarUrl);
  });
});

Deno.test("server/schemas.ts builds every text field on its one well-formed base", async () => {
  const source = await Deno.readTextFile(new URL("../server/schemas.ts", import.meta.url));
  const calls = source.match(/\bz\.string\(/g) ?? [];
  assert.equal(calls.length, 1, "z.string() only in the base `text` schema");
  assert.match(source, /export const text = z\.string\(\)\.refine\(\(s\) => s\.isWellFormed\(\)/);
});
