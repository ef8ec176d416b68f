import assert from "node:assert/strict";
import postgres from "postgres";
import { migrate } from "../db/migrate.ts";
import { connect, type Sql } from "../db/mod.ts";
import { createUser, fillUsernameKeys, updateUser } from "../db/users.ts";
import { hashToken, newToken } from "../server/auth.ts";
import { usernameKeys } from "../server/username_key.ts";
import unhomoglyph from "unhomoglyph";
import {
  BULK_LIMITS,
  callError,
  client,
  createTestDatabase,
  EMBEDDED,
  errorCode,
  needsRealPostgres,
  POOL_MAX,
  signUp,
  startTestEnv,
} from "./_helpers.ts";

/** Pairs of names that are one name: the second is refused once the first is taken. */
const SAME_NAME: [string, string, string][] = [
  ["Ada", "ADA", "ASCII case"],
  ["Élodie", "élodie", "Latin-1 case (É/é)"],
  ["José", "Jose\u0301", "composed and decomposed (NFC and NFD)"],
  ["Σίσυφος", "ΣΊΣΥΦΟΣ", "Greek case"],
  ["σοφος", "ΣΟΦΟΣ", "Greek final sigma ς, medial σ and capital Σ"],
  ["Дмитрий", "ДМИТРИЙ", "Cyrillic case"],
  ["\u13E3\u13B3\u13A9", "\uABB3\uAB83\uAB79", "Cherokee upper and lower case"],
  ["Straße", "STRASSE", "German ß and SS (full case folding)"],
  ["Groß", "GRO\u1E9E", "ß and capital ẞ"],
  ["kenji", "\uFF2B\uFF25\uFF2E\uFF2A\uFF29", "full-width and ASCII"],
  ["fiona", "\uFB01ona", "ligature ﬁ and fi"],
  ["max", "\u{1D426}\u{1D41A}\u{1D431}", "mathematical bold and plain"],
  ["eva", "\u0435v\u0430", "Cyrillic е and а for Latin e and a"],
  ["paypal", "\u0440\u0430\u0443\u0440\u0430l", "Cyrillic р, а, у in paypal"],
  ["ace", "\u0410\u0421\u0415", "Cyrillic capitals АСЕ for ace"],
  ["popo", "\u03C1\u03BF\u03C1\u03BF", "Greek ρ and ο for Latin p and o"],
  ["ivan", "\u0131van", "dotless ı for i"],
  ["modern", "rnodern", "rn for m (UTS #39 data)"],
  ["neo1", "NEOl", "digit 1 and letter l"],
];

/**
 * Capitals that look like Latin ones, which the old key (case folding before the skeleton)
 * judged by their lower case and let through: the second is refused once the first is taken.
 */
const CAPITAL_LOOK_ALIKES: [string, string, string][] = [
  ["Alice", "AIice", "capital I for l"],
  ["Bill", "BiII", "capitals I for l"],
  ["Nick", "\u039Dick", "Greek capital Nu for N"],
  ["Harry", "\u041Darry", "Cyrillic capital En for H"],
  ["Tom", "\u0422om", "Cyrillic capital Te for T"],
  ["Mark", "\u041Cark", "Cyrillic capital Em for M"],
  ["HOME", "\u041D\u041E\u041C\u0415", "Cyrillic capitals for HOME"],
  ["maya", "\u039C\u0391Y\u0391", "Greek capitals for MAYA, the twin of maya (M → m → rn)"],
  ["igor", "\u0406GOR", "Cyrillic capital I for IGOR, the twin of igor (I read as i)"],
  ["nina", "\u039D\u0399\u039D\u0391", "Greek capitals for NINA (I read as i)"],
  ["Ian", "lan", "capital I and small l"],
];

/** Pairs the old key joined though they do not look alike: both are accepted now. */
const NO_LONGER_JOINED: [string, string, string][] = [
  ["\u039Dick", "vick", "Greek capital Nu is N; only its lower case ν looks like v"],
  ["\u0393es", "yes", "Greek capital Gamma; only its lower case γ looks like y"],
  ["\u03A3scar", "Oscar", "Greek capital Sigma; only its lower case σ looks like o"],
  ["\u0391\u039D\u039D\u0391", "avva", "Greek ΑΝΝΑ is ANNA, not αννα"],
];

/** Pairs the old key joined that stay joined, on purpose (see server/username_key.ts). */
const STILL_JOINED: [string, string, string][] = [
  ["Bass", "Ba\u03B2", "β looks like ß, which folds to ss"],
  ["MARK", "rnark", "rnark looks like mark, the twin of MARK"],
  ["\u039Dico", "\u03BDico", "Greek capital and small Nu: the same name in another case"],
  ["\u0391\u039D\u039D\u0391", "anna", "Greek ΑΝΝΑ looks like ANNA, the twin of anna"],
];

/** Pairs of names that differ: both are accepted. */
const DIFFERENT_NAMES: [string, string][] = [
  ["anna", "anne"],
  ["maria", "mario"],
  ["bob", "rob"],
  ["sofia", "sophia"],
  ["rene", "rené"],
  ["oleg", "Олег"],
  ["tom", "tomas"],
];

Deno.test("users", async (t) => {
  await using env = await startTestEnv();

  await t.step("users.create returns the user and a 32-byte base64url token", async () => {
    const { user, token } = await client(env).users.create.mutate({
      username: "  Alice  ",
      avatarUrl: "https://ui-avatars.com/api/?name=Alice",
    });
    assert.equal(user.username, "Alice");
    assert.equal(user.avatarUrl, "https://ui-avatars.com/api/?name=Alice");
    assert.match(user.id, /^[0-9a-f-]{36}$/);
    assert.ok(user.createdAt instanceof Date);
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
  });

  await t.step("Postgres stores only the SHA-256 hash of a token", async () => {
    const { user, token } = await signUp(env);
    const rows = await env.sql`select hash from tokens where user_id = ${user.id}`;
    assert.equal(rows.length, 1);
    assert.equal(rows[0].hash, await hashToken(token));
    assert.notEqual(rows[0].hash, token);
    const leaked = await env.sql`select 1 from tokens where hash = ${token}`;
    assert.equal(leaked.length, 0);
  });

  await t.step("users.create without an avatar stores null", async () => {
    const { user } = await client(env).users.create.mutate({ username: "no_avatar" });
    assert.equal(user.avatarUrl, null);
  });

  await t.step("users.create refuses a username taken in another case (CONFLICT)", async () => {
    await client(env).users.create.mutate({ username: "Bob.Smith" });
    const error = await callError(client(env).users.create.mutate({ username: "bob.smith" }));
    assert.equal(error.data?.code, "CONFLICT");
    assert.equal(error.data?.httpStatus, 409);
    assert.match(error.message, /Username is already taken/);
  });

  await t.step("users.me returns the token's user", async () => {
    const { user, api } = await signUp(env, { avatarUrl: "https://cdn.example.com/a.png" });
    assert.deepEqual(await api.users.me.query(), user);
  });

  await t.step(
    "users.me without, with an unknown or a malformed token is UNAUTHORIZED",
    async () => {
      assert.equal(await errorCode(client(env).users.me.query()), "UNAUTHORIZED");
      const unknown = "A".repeat(43);
      assert.equal(
        await errorCode(client(env, { token: unknown }).users.me.query()),
        "UNAUTHORIZED",
      );
      const res = await fetch(`${env.url}/trpc/users.me`, {
        headers: { authorization: "Basic dXNlcjpwYXNz" },
      });
      assert.equal(res.status, 401);
      await res.body?.cancel();
    },
  );

  await t.step("a token in the URL (connectionParams over HTTP) is ignored", async () => {
    const { token } = await signUp(env);
    const params = encodeURIComponent(JSON.stringify({ token }));
    const res = await fetch(`${env.url}/trpc/users.me?connectionParams=${params}`);
    assert.equal(res.status, 401);
    await res.body?.cancel();
  });

  await t.step("users.update changes name and avatar, and null clears the avatar", async () => {
    const { api } = await signUp(env, { avatarUrl: "https://cdn.example.com/old.png" });
    const renamed = await api.users.update.mutate({ username: "Renamed User" });
    assert.equal(renamed.username, "Renamed User");
    assert.equal(renamed.avatarUrl, "https://cdn.example.com/old.png");
    const moved = await api.users.update.mutate({ avatarUrl: "https://cdn.example.com/new.png" });
    assert.equal(moved.username, "Renamed User");
    assert.equal(moved.avatarUrl, "https://cdn.example.com/new.png");
    const cleared = await api.users.update.mutate({ avatarUrl: null });
    assert.equal(cleared.avatarUrl, null);
    assert.deepEqual(await api.users.me.query(), cleared);
  });

  await t.step(
    "users.update to a name another user holds is CONFLICT and changes nothing",
    async () => {
      const { user: other } = await signUp(env);
      const { user, api } = await signUp(env);
      const error = await callError(
        api.users.update.mutate({ username: other.username.toUpperCase() }),
      );
      assert.equal(error.data?.code, "CONFLICT");
      assert.deepEqual(await api.users.me.query(), user);
    },
  );

  await t.step("users.logout revokes the calling token only", async () => {
    const { user } = await signUp(env);
    // A second token for the same user, inserted directly: logout must not touch it.
    const second = "S".repeat(43);
    await env.sql`insert into tokens (hash, user_id) values (${await hashToken(
      second,
    )}, ${user.id})`;
    const { token } = await client(env).users.create.mutate({ username: "leaver" });
    const api = client(env, { token });
    assert.deepEqual(await api.users.logout.mutate(), { ok: true });
    assert.equal(await errorCode(api.users.me.query()), "UNAUTHORIZED");
    assert.equal(await errorCode(api.users.logout.mutate()), "UNAUTHORIZED");
    assert.equal((await client(env, { token: second }).users.me.query()).id, user.id);
  });

  await t.step("the acting user comes from the token, never from input", async () => {
    const { user: victim } = await signUp(env);
    const { user: me, api } = await signUp(env);
    // Extra keys such as userId are stripped by validation and cannot select another user.
    const updated = await api.users.update.mutate(
      { avatarUrl: "https://cdn.example.com/me.png", userId: victim.id } as never,
    );
    assert.equal(updated.id, me.id);
    const [row] = await env.sql`select avatar_url from users where id = ${victim.id}`;
    assert.equal(row.avatarUrl, null);
  });
});

/** The names of the keys of `usernameKeys` that two names share. */
function sharedKeys(a: string, b: string): string[] {
  const [x, y] = [usernameKeys(a), usernameKeys(b)];
  return (["key", "skeleton", "skeletonI"] as const).filter((k) => x[k] === y[k]);
}

Deno.test("usernameKeys: twins share a key, different names share none", () => {
  const twins = [...SAME_NAME, ...CAPITAL_LOOK_ALIKES, ...STILL_JOINED];
  for (const [a, b, label] of twins) assert.notDeepEqual(sharedKeys(a, b), [], label);
  for (const [a, b] of DIFFERENT_NAMES) assert.deepEqual(sharedKeys(a, b), [], a);
  for (const [a, b, label] of NO_LONGER_JOINED) assert.deepEqual(sharedKeys(a, b), [], label);
  for (const name of [...twins.flat(), ...DIFFERENT_NAMES.flat()]) {
    const keys = usernameKeys(name);
    assert.ok(Object.values(keys).every((key) => key.length > 0), name);
    assert.equal(usernameKeys(keys.key).key, keys.key, `the key of ${name} is its own key`);
  }
  // Full case folding (CaseFolding.txt status F) after NFKC (UAX #15).
  assert.equal(usernameKeys("STRASSE").key, "strasse");
  assert.equal(usernameKeys("\uFF33\uFF54\uFF52\uFF41\u00DF\uFF45").key, "strasse");
  assert.equal(usernameKeys("\uFB03").key, "ffi");
  // The skeleton of the name as written, then folded: capital I is l, Greek Ν is N.
  assert.deepEqual(usernameKeys("AIice"), { key: "aiice", skeleton: "alice", skeletonI: "aiice" });
  assert.deepEqual(usernameKeys("\u039Dick"), {
    key: "\u03BDick",
    skeleton: "nick",
    skeletonI: "nick",
  });
  assert.deepEqual(usernameKeys("vick"), { key: "vick", skeleton: "vick", skeletonI: "vick" });
});

Deno.test("usernameKeys reads as i exactly the capitals whose prototype is l", () => {
  // Derived from the data: cased letters, their own NFKC and NFD, whose prototype is "l".
  const capitals: string[] = [];
  for (let codePoint = 0; codePoint <= 0x10FFFF; codePoint++) {
    if (codePoint >= 0xD800 && codePoint <= 0xDFFF) continue;
    const char = String.fromCodePoint(codePoint);
    if (!/\p{Changes_When_Casefolded}/u.test(char)) continue;
    if (char.normalize("NFKC") !== char || char.normalize("NFD") !== char) continue;
    if (unhomoglyph(char) === "l") capitals.push(char);
  }
  assert.deepEqual(capitals, ["I", "\u0196", "\u0399", "\u0406", "\u04C0", "\u2C92"]);
  for (const capital of capitals) {
    const keys = usernameKeys(capital);
    assert.deepEqual([keys.skeleton, keys.skeletonI], ["l", "i"], capital);
  }
});

Deno.test("usernames are unique by their keys, also where the database's LC_CTYPE is C", async (t) => {
  await using db = await createTestDatabase({ collationC: true });
  await using env = await startTestEnv({ db, limits: BULK_LIMITS });

  await t.step("on real Postgres the database is C: lower() leaves É and Σ alone", async () => {
    const [row] = await env.sql`
      select datcollate, datctype, lower('ÉΣ') as lowered
      from pg_database where datname = current_database()
    `;
    if (EMBEDDED) {
      console.log(`PGlite: collate ${row.datcollate}, ctype ${row.datctype}`);
      return;
    }
    assert.deepEqual([row.datcollate, row.datctype, row.lowered], ["C", "C", "ÉΣ"]);
  });

  await t.step("users.create refuses a name that differs only in case, form or look", async () => {
    for (const [taken, twin, label] of SAME_NAME) {
      await client(env).users.create.mutate({ username: taken });
      const error = await callError(client(env).users.create.mutate({ username: twin }));
      assert.equal(error.data?.code, "CONFLICT", `${label}: ${taken} / ${twin}`);
      assert.match(error.message, /Username is already taken/);
    }
  });

  await t.step("users.update refuses a twin of another user's name too", async () => {
    const { user, api } = await signUp(env);
    for (const [, twin, label] of SAME_NAME.slice(0, 8)) {
      const error = await callError(api.users.update.mutate({ username: twin }));
      assert.equal(error.data?.code, "CONFLICT", label);
    }
    assert.deepEqual(await api.users.me.query(), user);
  });

  await t.step("names that really differ are all accepted", async () => {
    for (const [a, b] of DIFFERENT_NAMES) {
      for (const username of [a, b]) {
        const { user } = await client(env).users.create.mutate({ username });
        assert.equal(user.username, username);
      }
    }
  });

  await t.step("a user may rename to their own name in another case or form", async () => {
    const { api } = await signUp(env);
    await api.users.update.mutate({ username: "Renée" });
    assert.equal((await api.users.update.mutate({ username: "RENÉE" })).username, "RENÉE");
    const decomposed = "Rene\u0301e";
    assert.equal((await api.users.update.mutate({ username: decomposed })).username, decomposed);
    const other = await signUp(env);
    const twin = "\uFF32\uFF25\uFF2E\u00C9\uFF25";
    assert.equal(await errorCode(other.api.users.update.mutate({ username: twin })), "CONFLICT");
    // Once the first user moves on, the name (and every twin of it) is free again.
    await api.users.update.mutate({ username: "Someone Else" });
    assert.equal((await other.api.users.update.mutate({ username: twin })).username, twin);
  });

  await t.step("Postgres holds each user's keys beside the name as sent", async () => {
    const rows = await env.sql<
      { username: string; key: string; skeleton: string; skeletonI: string }[]
    >`
      select username, username_key as key, username_skeleton_key as skeleton,
        username_skeleton_i_key as skeleton_i
      from users
    `;
    assert.ok(rows.length > SAME_NAME.length);
    for (const { username, ...keys } of rows) {
      assert.deepEqual(keys, usernameKeys(username), username);
    }
  });
});

Deno.test("users.create judges look-alikes on the name as written (LC_CTYPE C)", async (t) => {
  await using db = await createTestDatabase({ collationC: true });
  await using env = await startTestEnv({ db, limits: BULK_LIMITS });
  /** Creates `first`, then `then`: the second call's error code, or "OK"; then removes both. */
  async function second(first: string, then: string): Promise<string> {
    await client(env).users.create.mutate({ username: first });
    const call = client(env).users.create.mutate({ username: then });
    const code = await errorCode(call);
    if (code !== "OK") {
      assert.match((await callError(call)).message, /Username is already taken/, then);
    }
    await env.sql`delete from users`;
    return code;
  }

  await t.step("a capital look-alike of a taken name is CONFLICT, in either order", async () => {
    for (const [taken, twin, label] of CAPITAL_LOOK_ALIKES) {
      assert.equal(await second(taken, twin), "CONFLICT", `${label}: ${taken} / ${twin}`);
      assert.equal(await second(twin, taken), "CONFLICT", `${label}: ${twin} / ${taken}`);
    }
  });

  await t.step("names only the old key joined are both accepted, in either order", async () => {
    for (const [a, b, label] of NO_LONGER_JOINED) {
      assert.equal(await second(a, b), "OK", `${label}: ${a} / ${b}`);
      assert.equal(await second(b, a), "OK", `${label}: ${b} / ${a}`);
    }
  });

  await t.step("pairs joined on purpose stay CONFLICT", async () => {
    for (const [a, b, label] of STILL_JOINED) {
      assert.equal(await second(a, b), "CONFLICT", `${label}: ${a} / ${b}`);
    }
  });

  await t.step("users.update refuses a capital look-alike of another user's name", async () => {
    await client(env).users.create.mutate({ username: "Alice" });
    const { user, api } = await signUp(env);
    assert.equal(await errorCode(api.users.update.mutate({ username: "AIice" })), "CONFLICT");
    assert.equal(await errorCode(api.users.update.mutate({ username: "\u0391lice" })), "CONFLICT");
    assert.deepEqual(await api.users.me.query(), user);
    await env.sql`delete from users`;
  });

  await t.step("a user may rename to a look-alike of their own name", async () => {
    const { token } = await client(env).users.create.mutate({ username: "Nick" });
    const api = client(env, { token });
    assert.equal((await api.users.update.mutate({ username: "\u039Dick" })).username, "\u039Dick");
    // Beside Greek Νick, "vick" is free (the old key made them one name).
    assert.equal(
      (await client(env).users.create.mutate({ username: "vick" })).user.username,
      "vick",
    );
    assert.equal((await api.users.update.mutate({ username: "NICK" })).username, "NICK");
    assert.equal(
      await errorCode(client(env).users.create.mutate({ username: "Nick" })),
      "CONFLICT",
    );
    await env.sql`delete from users`;
  });
});

/** The keys of every user, oldest first, as [id, key, skeleton key, skeleton-i key]. */
async function storedKeys(sql: Sql): Promise<(string | null)[][]> {
  const rows = await sql<{ id: string; key: string; skeleton: string; skeletonI: string }[]>`
    select id, username_key as key, username_skeleton_key as skeleton,
      username_skeleton_i_key as skeleton_i
    from users order by created_at, id
  `;
  return rows.map((row) => [row.id, row.key, row.skeleton, row.skeletonI]);
}

/** [id, ...the three keys of `username`], as `storedKeys` lists a user holding them all. */
function keyed(id: string, username: string): string[] {
  const keys = usernameKeys(username);
  return [id, keys.key, keys.skeleton, keys.skeletonI];
}

/** Applies the first `count` migrations only, as an older release would have. */
async function migrateUpTo(sql: Sql, count: number): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const all = [...Deno.readDirSync(new URL("../db/migrations/", import.meta.url))]
      .map((entry) => entry.name).sort().slice(0, count);
    for (const name of all) {
      await Deno.copyFile(new URL(`../db/migrations/${name}`, import.meta.url), `${dir}/${name}`);
    }
    await migrate(sql, new URL(`file://${dir}/`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A user row inserted directly, as an older release wrote it, with a given creation day. */
async function insertUser(
  sql: Sql,
  username: string,
  day: number,
  usernameKey?: string,
): Promise<string> {
  const createdAt = new Date(Date.UTC(2020, 0, day)).toISOString();
  const [row] = await sql<[{ id: string }]>`
    insert into users ${
    sql(usernameKey === undefined ? { username, createdAt } : { username, usernameKey, createdAt })
  }
    returning id
  `;
  return row.id;
}

Deno.test("users from before migration 00002 get their keys from fillUsernameKeys", async (t) => {
  await using db = await createTestDatabase({ collationC: true });
  const sql = connect(db.url, { max: POOL_MAX });
  try {
    await migrateUpTo(sql, 1);
    // Names the old lower(username) index let through: twins in another width or form, and a
    // capital look-alike.
    const legacy = ["ada", "\uFF41\uFF44\uFF41", "Bob", "Jose\u0301", "josé", "Alice", "AIice"];
    const ids: string[] = [];
    for (const [i, username] of legacy.entries()) ids.push(await insertUser(sql, username, i + 1));
    const [ada, fullWidth, bob, jose, joseComposed, alice, aIice] = ids;

    await t.step(
      "00002 and 00003 add the keys' unique indexes, drop lower(username)'s",
      async () => {
        // 00002 and 00003, then every later migration.
        assert.deepEqual((await migrate(sql)).slice(0, 2), [
          "00002_username_key",
          "00003_username_skeleton_keys",
        ]);
        const [row] = await sql`
        select to_regclass('users_username_lower_key') as old,
          to_regclass('users_username_key_idx') as key,
          to_regclass('users_username_skeleton_key_idx') as skeleton,
          to_regclass('users_username_skeleton_i_key_idx') as skeleton_i
      `;
        assert.deepEqual(Object.values(row), [
          null,
          "users_username_key_idx",
          "users_username_skeleton_key_idx",
          "users_username_skeleton_i_key_idx",
        ]);
      },
    );

    await t.step(
      "the oldest of twins gets the keys; the younger lacks those it shares",
      async () => {
        assert.deepEqual(await fillUsernameKeys(sql), {
          filled: 4,
          collisions: [fullWidth, joseComposed, aIice],
        });
        const expected = [
          keyed(ada, "ada"),
          [fullWidth, null, null, null],
          keyed(bob, "Bob"),
          keyed(jose, "José"),
          [joseComposed, null, null, null],
          keyed(alice, "Alice"),
          // AIice's own case key and I-as-i key; its skeleton key is Alice's.
          [aIice, "aiice", null, "aiice"],
        ];
        assert.deepEqual(await storedKeys(sql), expected);
        assert.deepEqual(await fillUsernameKeys(sql), {
          filled: 0,
          collisions: [fullWidth, joseComposed, aIice],
        }, "a second run changes nothing");
        assert.deepEqual(await storedKeys(sql), expected);
      },
    );

    await t.step("keyed names are taken; a user lacking keys keeps working", async () => {
      for (const username of ["ADA", "\u0391lice", "aiice"]) {
        await assert.rejects(
          createUser(sql, { username, avatarUrl: null, tokenHash: await hashToken(newToken()) }),
          (error) =>
            error instanceof postgres.PostgresError &&
            error.constraint_name?.startsWith("users_username") === true,
          username,
        );
      }
      const moved = await updateUser(sql, fullWidth, {
        avatarUrl: "https://cdn.example.com/a.png",
      });
      assert.equal(moved?.avatarUrl, "https://cdn.example.com/a.png");
      await assert.rejects(updateUser(sql, fullWidth, { username: "Ada" }), postgres.PostgresError);
      await updateUser(sql, fullWidth, { username: "ada two" });
      assert.deepEqual((await storedKeys(sql))[1], keyed(fullWidth, "ada two"));
    });

    const concurrent = "two instances filling at once fill each key once";
    await t.step({
      name: concurrent,
      ignore: needsRealPostgres(concurrent),
      fn: async () => {
        await sql`update users set username_key = null`;
        const other = connect(db.url, { max: 1 });
        try {
          const results = await Promise.all([fillUsernameKeys(sql), fillUsernameKeys(other)]);
          assert.equal(results[0].filled + results[1].filled, 5);
          const [{ n }] =
            await sql`select count(*)::int as n from users where username_key is null`;
          assert.equal(n, 1);
        } finally {
          await other.end();
        }
      },
    });
  } finally {
    await sql.end();
  }
});

Deno.test("users keyed under migration 00002 get all three keys anew after 00003", async (t) => {
  await using db = await createTestDatabase({ collationC: true });
  const sql = connect(db.url, { max: POOL_MAX });
  try {
    await migrateUpTo(sql, 2);
    // What 00002's single key let through (Greek Νick beside Nick), with stand-in old keys.
    const nick = await insertUser(sql, "Nick", 1, "nick");
    const greekNick = await insertUser(sql, "\u039Dick", 2, "vick");

    await t.step("00003 clears the old keys; the fill gives the new ones", async () => {
      // 00003, then every later migration.
      assert.deepEqual((await migrate(sql)).slice(0, 1), ["00003_username_skeleton_keys"]);
      const [{ n }] = await sql`select count(*)::int as n from users where username_key is null`;
      assert.equal(n, 2);
      assert.deepEqual(await fillUsernameKeys(sql), { filled: 1, collisions: [greekNick] });
      assert.deepEqual(await storedKeys(sql), [
        keyed(nick, "Nick"),
        // Νick keeps its case key (νick stays taken) but not Nick's skeleton keys.
        [greekNick, "\u03BDick", null, null],
      ]);
    });

    await t.step("vick, which the old key gave to Νick, is free; νick is not", async () => {
      const tokenHash = await hashToken(newToken());
      const vick = await createUser(sql, { username: "vick", avatarUrl: null, tokenHash });
      assert.equal(vick.username, "vick");
      await assert.rejects(
        createUser(sql, {
          username: "\u03BDick",
          avatarUrl: null,
          tokenHash: await hashToken(newToken()),
        }),
        (error) =>
          error instanceof postgres.PostgresError &&
          error.constraint_name === "users_username_key_idx",
      );
    });

    await t.step("a row an older release writes during a deploy is keyed anew", async () => {
      const olga = await insertUser(sql, "Olga", 3, "olga-by-the-old-rule");
      assert.deepEqual(await fillUsernameKeys(sql), { filled: 1, collisions: [greekNick] });
      const rows = await storedKeys(sql);
      assert.deepEqual(rows.find((row) => row[0] === olga), keyed(olga, "Olga"));
    });
  } finally {
    await sql.end();
  }
});
