import assert from "node:assert/strict";
import { hashToken } from "../server/auth.ts";
import { callError, client, errorCode, signUp, startTestEnv } from "./_helpers.ts";

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
