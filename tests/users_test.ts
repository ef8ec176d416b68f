import assert from "node:assert/strict";
import postgres from "postgres";
import { migrate } from "../db/migrate.ts";
import { connect } from "../db/mod.ts";
import { createUser, fillUsernameKeys, updateUser } from "../db/users.ts";
import { hashToken, newToken } from "../server/auth.ts";
import { usernameKey } from "../server/username_key.ts";
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
  TEST_DATABASE_URL,
  type TestDatabase,
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

/**
 * A database whose LC_COLLATE and LC_CTYPE are C, where lower() folds ASCII letters only:
 * next to `TEST_DATABASE_URL`; on embedded PGlite (collation C, ctype C.UTF-8) a fresh one.
 */
async function createCDatabase(): Promise<TestDatabase> {
  if (TEST_DATABASE_URL === null) return await createTestDatabase();
  const admin = postgres(TEST_DATABASE_URL, { max: 1, onnotice: () => {} });
  const name = `parley_test_c_${crypto.randomUUID().replaceAll("-", "")}`;
  await admin`
    create database ${admin(name)} template template0 encoding 'UTF8' lc_collate 'C' lc_ctype 'C'
  `;
  const url = new URL(TEST_DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    url: url.href,
    name,
    async [Symbol.asyncDispose]() {
      await admin`drop database if exists ${admin(name)} with (force)`;
      await admin.end();
    },
  };
}

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

Deno.test("usernameKey: one key for case, form and look-alikes; different names stay apart", () => {
  for (const [a, b, label] of SAME_NAME) assert.equal(usernameKey(a), usernameKey(b), label);
  for (const [a, b] of DIFFERENT_NAMES) assert.notEqual(usernameKey(a), usernameKey(b), a);
  for (const name of [...SAME_NAME.flat(), ...DIFFERENT_NAMES.flat()]) {
    const key = usernameKey(name);
    assert.ok(key.length > 0, name);
    assert.equal(usernameKey(key), key, `the key of ${name} is its own key`);
  }
  // Full case folding (CaseFolding.txt status F) after NFKC (UAX #15).
  assert.equal(usernameKey("STRASSE"), "strasse");
  assert.equal(usernameKey("\uFF33\uFF54\uFF52\uFF41\u00DF\uFF45"), "strasse");
  assert.equal(usernameKey("\uFB03"), "ffi");
});

Deno.test("usernames are unique by one key, also where the database's LC_CTYPE is C", async (t) => {
  await using db = await createCDatabase();
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

  await t.step("Postgres holds each user's key beside the name as sent", async () => {
    const rows = await env.sql<{ username: string; usernameKey: string | null }[]>`
      select username, username_key from users
    `;
    for (const row of rows) assert.equal(row.usernameKey, usernameKey(row.username), row.username);
  });
});

Deno.test("users from before migration 00002 get their key from fillUsernameKeys", async (t) => {
  await using db = await createCDatabase();
  const sql = connect(db.url, { max: POOL_MAX });
  try {
    const dir = await Deno.makeTempDir();
    await Deno.copyFile(
      new URL("../db/migrations/00001_init.sql", import.meta.url),
      `${dir}/00001_init.sql`,
    );
    await migrate(sql, new URL(`file://${dir}/`));
    await Deno.remove(dir, { recursive: true });
    // Names the old lower(username) index let through: twins in another width or form.
    const legacy = ["ada", "\uFF41\uFF44\uFF41", "Bob", "Jose\u0301", "josé"];
    const ids: string[] = [];
    for (const [i, username] of legacy.entries()) {
      const [row] = await sql<[{ id: string }]>`
        insert into users (username, created_at)
        values (${username}, ${`2020-01-0${i + 1}T00:00:00Z`}) returning id
      `;
      ids.push(row.id);
    }
    const [ada, fullWidth, bob, jose, joseComposed] = ids;

    await t.step("00002 adds the key's unique index and drops lower(username)'s", async () => {
      assert.deepEqual(await migrate(sql), ["00002_username_key"]);
      const [row] = await sql`
        select to_regclass('users_username_lower_key') as old,
          to_regclass('users_username_key_idx') as new
      `;
      assert.deepEqual([row.old, row.new], [null, "users_username_key_idx"]);
    });

    await t.step("the oldest of twins gets the key; the younger stays without one", async () => {
      assert.deepEqual(await fillUsernameKeys(sql), {
        filled: 3,
        collisions: [fullWidth, joseComposed],
      });
      const rows = await sql<{ id: string; usernameKey: string | null }[]>`
        select id, username_key from users order by created_at
      `;
      assert.deepEqual(rows.map((row) => [row.id, row.usernameKey]), [
        [ada, "ada"],
        [fullWidth, null],
        [bob, "bob"],
        [jose, usernameKey("José")],
        [joseComposed, null],
      ]);
      assert.deepEqual(await fillUsernameKeys(sql), {
        filled: 0,
        collisions: [fullWidth, joseComposed],
      }, "a second run changes nothing");
    });

    await t.step("keyed names are taken; a keyless user keeps working", async () => {
      await assert.rejects(
        createUser(sql, {
          username: "ADA",
          avatarUrl: null,
          tokenHash: await hashToken(newToken()),
        }),
        (error) =>
          error instanceof postgres.PostgresError &&
          error.constraint_name === "users_username_key_idx",
      );
      const moved = await updateUser(sql, fullWidth, {
        avatarUrl: "https://cdn.example.com/a.png",
      });
      assert.equal(moved?.avatarUrl, "https://cdn.example.com/a.png");
      await assert.rejects(updateUser(sql, fullWidth, { username: "Ada" }), postgres.PostgresError);
      await updateUser(sql, fullWidth, { username: "ada two" });
      const [row] = await sql`select username_key from users where id = ${fullWidth}`;
      assert.equal(row.usernameKey, "ada two");
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
          assert.equal(results[0].filled + results[1].filled, 4);
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
