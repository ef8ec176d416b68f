/**
 * `auth.exchange`: the front end's identity provider's JWTs, verified against a JWKS served by
 * the test (or an HS256 secret), trusted only when signed, current, and of the configured
 * issuer and audience; everything else is `UNAUTHORIZED` and creates nobody.
 */
import assert from "node:assert/strict";
import { exportJWK, generateKeyPair, type JWTPayload, SignJWT, UnsecuredJWT } from "jose";
import { ConfigError, loadConfig } from "../server/config.ts";
import type { IdTokenSettings } from "../server/id_token.ts";
import {
  BULK_LIMITS,
  callError,
  client,
  errorCode,
  startTestEnv,
  type TestEnv,
  wsClient,
} from "./_helpers.ts";

const ISSUER = "https://idp.example.com/";
const AUDIENCE = "parley-test";

type Key = Awaited<ReturnType<typeof generateKeyPair>>["privateKey"];

/** A JWKS endpoint on port 0 serving the public keys given; `status` can make it fail. */
async function startJwks(keys: { kid: string; alg: string; publicKey: Key }[]) {
  const jwks = {
    keys: await Promise.all(
      keys.map(async ({ kid, alg, publicKey }) => ({
        ...(await exportJWK(publicKey)),
        kid,
        alg,
        use: "sig",
      })),
    ),
  };
  const state = { status: 200, fetches: 0 };
  const ac = new AbortController();
  const { promise: listening, resolve } = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen: ({ port }) => resolve(port) },
    () => {
      state.fetches++;
      return state.status === 200
        ? Response.json(jwks)
        : new Response("down", { status: state.status });
    },
  );
  const port = await listening;
  return {
    url: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    state,
    async [Symbol.asyncDispose]() {
      ac.abort();
      await server.finished;
    },
  };
}

/** Signs `claims` (with defaults: iss, aud, sub, iat, exp in 5 min) with `key` under `alg`. */
function sign(
  key: Key | Uint8Array,
  alg: string,
  claims: JWTPayload = {},
  kid?: string,
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({
    iss: ISSUER,
    aud: AUDIENCE,
    sub: crypto.randomUUID(),
    iat: now,
    exp: now + 300,
    ...claims,
  }).setProtectedHeader({ alg, ...(kid ? { kid } : {}) }).sign(key);
}

async function userCount(env: TestEnv): Promise<number> {
  const [{ n }] = await env.sql<[{ n: number }]>`select count(*)::int as n from users`;
  return n;
}

function settings(overrides: Partial<IdTokenSettings>): IdTokenSettings {
  return { jwksUrl: null, secret: null, issuer: ISSUER, audiences: [AUDIENCE], ...overrides };
}

Deno.test("auth.exchange with a JWKS: verified tokens sign in, others never create a user", async (t) => {
  const rsa = await generateKeyPair("RS256");
  const ec = await generateKeyPair("ES256");
  await using jwks = await startJwks([
    { kid: "rsa-1", alg: "RS256", publicKey: rsa.publicKey },
    { kid: "ec-1", alg: "ES256", publicKey: ec.publicKey },
  ]);
  await using env = await startTestEnv({
    limits: BULK_LIMITS,
    accounts: { idTokens: settings({ jwksUrl: jwks.url }) },
  });
  const anon = client(env);

  await t.step("a first exchange creates the user from its claims; the next finds it", async () => {
    const sub = crypto.randomUUID();
    const idToken = await sign(rsa.privateKey, "RS256", {
      sub,
      preferred_username: "Maya",
      name: "Maya Angel",
      picture: "https://cdn.example.com/maya.png",
    }, "rsa-1");
    const first = await anon.auth.exchange.mutate({ idToken });
    assert.equal(first.user.username, "Maya");
    assert.equal(first.user.avatarUrl, "https://cdn.example.com/maya.png");
    assert.equal(first.user.hasPassword, false);
    assert.ok(first.expiresAt.getTime() > Date.now() + 29 * 86_400_000);
    const api = client(env, { token: first.token });
    assert.equal((await api.users.me.query()).id, first.user.id);
    // A second device, with a token signed by the other key of the set.
    const again = await anon.auth.exchange.mutate({
      idToken: await sign(ec.privateKey, "ES256", { sub, preferred_username: "Other" }, "ec-1"),
    });
    assert.equal(again.user.id, first.user.id);
    assert.equal(again.user.username, "Maya");
    assert.notEqual(again.token, first.token);
    assert.equal((await api.auth.sessions.query()).length, 2);
  });

  await t.step("the name comes from preferred_username or name, made unique", async () => {
    const names: string[] = [];
    for (const claims of [{ name: "Maya" }, { name: "maya" }, { preferred_username: "MAYA" }]) {
      const { user } = await anon.auth.exchange.mutate({
        idToken: await sign(rsa.privateKey, "RS256", claims, "rsa-1"),
      });
      names.push(user.username);
    }
    assert.deepEqual(names, ["Maya2", "maya3", "MAYA4"]);
    // Characters the username rules refuse are dropped; nothing usable gives "user".
    const odd = await anon.auth.exchange.mutate({
      idToken: await sign(rsa.privateKey, "RS256", { name: "  Zoë <script> O'Neil!  " }, "rsa-1"),
    });
    assert.equal(odd.user.username, "Zoë script ONeil");
    const none = await anon.auth.exchange.mutate({
      idToken: await sign(rsa.privateKey, "RS256", { name: "!!!" }, "rsa-1"),
    });
    assert.match(none.user.username, /^user\d*$/);
    const reserved = await anon.auth.exchange.mutate({
      idToken: await sign(rsa.privateKey, "RS256", { name: "Deleted user" }, "rsa-1"),
    });
    assert.match(reserved.user.username, /^user\d*$/);
  });

  await t.step("a picture that is not an allowed image URL gives no avatar", async () => {
    for (
      const picture of ["javascript:alert(1)", "http://evil.example.com/a.png", "x".repeat(50)]
    ) {
      const { user } = await anon.auth.exchange.mutate({
        idToken: await sign(rsa.privateKey, "RS256", { name: "Pic", picture }, "rsa-1"),
      });
      assert.equal(user.avatarUrl, null, picture);
    }
  });

  await t.step("expired, early, foreign, unsigned, forged or malformed: UNAUTHORIZED", async () => {
    const now = Math.floor(Date.now() / 1000);
    const stranger = await generateKeyPair("RS256");
    const hmac = new TextEncoder().encode("a".repeat(32));
    const unsigned = new UnsecuredJWT({
      iss: ISSUER,
      aud: AUDIENCE,
      sub: "none",
      exp: now + 300,
    }).encode();
    const valid = await sign(rsa.privateKey, "RS256", {}, "rsa-1");
    const [header, payload] = valid.split(".");
    const cases: [string, string][] = [
      ["expired", await sign(rsa.privateKey, "RS256", { exp: now - 60, iat: now - 400 }, "rsa-1")],
      ["not yet valid", await sign(rsa.privateKey, "RS256", { nbf: now + 120 }, "rsa-1")],
      [
        "another issuer",
        await sign(rsa.privateKey, "RS256", { iss: "https://evil.example/" }, "rsa-1"),
      ],
      ["another audience", await sign(rsa.privateKey, "RS256", { aud: "someone-else" }, "rsa-1")],
      ["alg none", unsigned],
      ["alg none with a signature part", `${unsigned}c2ln`],
      [
        "signed with another key under a known kid",
        await sign(stranger.privateKey, "RS256", {}, "rsa-1"),
      ],
      ["signed with an unknown kid", await sign(stranger.privateKey, "RS256", {}, "rsa-9")],
      ["HS256 where the provider signs with keys", await sign(hmac, "HS256", {}, "rsa-1")],
      [
        "a payload swapped under a valid signature",
        `${header}.${btoa('{"sub":"x"}')}.${valid.split(".")[2]}`,
      ],
      ["no sub", await sign(rsa.privateKey, "RS256", { sub: undefined }, "rsa-1")],
      ["no exp", await sign(rsa.privateKey, "RS256", { exp: undefined }, "rsa-1")],
      ["two parts", `${header}.${payload}`],
      ["not a JWT", "hello"],
      ["garbage segments", "a.b.c"],
      ["a JSON header that is not a JWS", `${btoa("{}")}.${payload}.sig`],
    ];
    const before = await userCount(env);
    for (const [what, idToken] of cases) {
      const error = await callError(anon.auth.exchange.mutate({ idToken }));
      assert.equal(error.data?.code, "UNAUTHORIZED", `${what}: ${error.message}`);
      assert.match(error.message, /^Identity token refused: /, what);
    }
    assert.equal(await userCount(env), before, "no user was created");
  });

  await t.step("exp and nbf are honoured within a few seconds of clock skew", async () => {
    const now = Math.floor(Date.now() / 1000);
    await anon.auth.exchange.mutate({
      idToken: await sign(rsa.privateKey, "RS256", { exp: now - 2, nbf: now + 2 }, "rsa-1"),
    });
  });

  await t.step("a password or a deletion needs a recent sign-in through the provider", async () => {
    const sub = crypto.randomUUID();
    const exchangeFor = async () =>
      await anon.auth.exchange.mutate({
        idToken: await sign(rsa.privateKey, "RS256", { sub, name: "Proof" }, "rsa-1"),
      });
    const old = await exchangeFor();
    // The session is 11 minutes old: a stolen one must not be able to set a first password.
    const age = (token: string) =>
      env.sql`
        update tokens set created_at = now() - interval '11 minutes'
        where hash = encode(sha256(${token}::bytea), 'hex')
      `;
    await age(old.token);
    const stale = client(env, { token: old.token });
    const refused = await callError(stale.users.setPassword.mutate({ password: "thief's choice" }));
    assert.equal(refused.data?.code, "FORBIDDEN");
    assert.match(refused.message, /sign in with it again \(auth\.exchange\)/);
    assert.equal(await errorCode(stale.users.delete.mutate({})), "FORBIDDEN");
    // A fresh exchange vouches for the owner: a password may be set, and later reset.
    const fresh = client(env, { token: (await exchangeFor()).token });
    assert.deepEqual(await fresh.users.setPassword.mutate({ password: "owner's first" }), {
      ok: true,
      sessionsEnded: 0,
    });
    const again = client(env, { token: (await exchangeFor()).token });
    assert.equal(
      (await again.users.setPassword.mutate({ password: "owner's second" })).ok,
      true,
    );
    // An old session needs the current password; a password change ended the others.
    assert.equal(await errorCode(stale.users.me.query()), "UNAUTHORIZED");
    const signedIn = await anon.auth.signIn.mutate({
      username: old.user.username,
      password: "owner's second",
    });
    await age(signedIn.token);
    const withPassword = client(env, { token: signedIn.token });
    assert.equal(
      await errorCode(withPassword.users.setPassword.mutate({ password: "third one here" })),
      "BAD_REQUEST",
    );
    assert.equal(
      (await withPassword.users.setPassword.mutate({
        password: "third one here",
        currentPassword: "owner's second",
      })).ok,
      true,
    );
  });

  await t.step("input limits: empty or over 16 KiB is BAD_REQUEST", async () => {
    assert.equal(await errorCode(anon.auth.exchange.mutate({ idToken: "" })), "BAD_REQUEST");
    assert.equal(
      await errorCode(anon.auth.exchange.mutate({ idToken: "a".repeat(16_385) })),
      "BAD_REQUEST",
    );
  });

  await t.step("the exchange works over WebSocket too", async () => {
    const ws = wsClient(env, { origin: "https://app.example.com" });
    try {
      const { user } = await ws.trpc.auth.exchange.mutate({
        idToken: await sign(rsa.privateKey, "RS256", { name: "Socket" }, "rsa-1"),
      });
      assert.match(user.username, /^Socket\d*$/);
    } finally {
      await ws.close();
    }
  });
});

Deno.test("auth.exchange when the JWKS cannot be fetched is SERVICE_UNAVAILABLE, not a refusal", async () => {
  const rsa = await generateKeyPair("RS256");
  await using jwks = await startJwks([{ kid: "k", alg: "RS256", publicKey: rsa.publicKey }]);
  jwks.state.status = 500;
  await using env = await startTestEnv({
    accounts: { idTokens: settings({ jwksUrl: jwks.url }) },
  });
  const idToken = await sign(rsa.privateKey, "RS256", {}, "k");
  const down = await callError(client(env).auth.exchange.mutate({ idToken }));
  assert.equal(down.data?.code, "SERVICE_UNAVAILABLE", down.message);
  jwks.state.status = 200;
  // jose waits a cooldown between fetches; the next attempt after it works.
  await new Promise((r) => setTimeout(r, 100));
  let code = "";
  for (let i = 0; i < 40 && code !== "OK"; i++) {
    code = await errorCode(client(env).auth.exchange.mutate({ idToken }));
    if (code !== "OK") await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(code, "OK");
});

Deno.test("auth.exchange with an HS256 secret accepts only tokens signed with it", async () => {
  const secret = "s3cret-shared-with-the-front-end-0123456789";
  await using env = await startTestEnv({ accounts: { idTokens: settings({ secret }) } });
  const anon = client(env);
  const key = new TextEncoder().encode(secret);
  const { user } = await anon.auth.exchange.mutate({
    idToken: await sign(key, "HS256", { preferred_username: "hs" }),
  });
  assert.match(user.username, /^hs\d*$/);
  const other = new TextEncoder().encode("another-secret-of-32-bytes-or-more-000");
  const rsa = await generateKeyPair("RS256");
  for (const idToken of [await sign(other, "HS256"), await sign(rsa.privateKey, "RS256")]) {
    assert.equal(await errorCode(anon.auth.exchange.mutate({ idToken })), "UNAUTHORIZED");
  }
});

Deno.test("auth.exchange is off unless configured: NOT_IMPLEMENTED, with what to set", async () => {
  await using env = await startTestEnv();
  const error = await callError(client(env).auth.exchange.mutate({ idToken: "a.b.c" }));
  assert.equal(error.data?.code, "NOT_IMPLEMENTED");
  assert.match(error.message, /AUTH_JWKS_URL or AUTH_JWT_SECRET/);
});

Deno.test("the AUTH_* and SESSION_TTL settings are checked at startup", () => {
  const base = { ALLOWED_ORIGINS: "https://app.example.com" };
  const problems = (env: Record<string, string>) => {
    try {
      loadConfig({ ...base, ...env });
      return [];
    } catch (error) {
      assert.ok(error instanceof ConfigError);
      return error.problems;
    }
  };
  const ok = loadConfig({
    ...base,
    AUTH_JWKS_URL: "https://idp.example.com/.well-known/jwks.json",
    AUTH_ISSUER: ISSUER,
    AUTH_AUDIENCE: "a, b",
    SESSION_TTL: "3600",
  });
  assert.deepEqual(ok.accounts, {
    sessionTtlSeconds: 3600,
    idTokens: {
      jwksUrl: "https://idp.example.com/.well-known/jwks.json",
      secret: null,
      issuer: ISSUER,
      audiences: ["a", "b"],
    },
  });
  assert.equal(loadConfig(base).accounts.sessionTtlSeconds, 2_592_000);
  // Outside production a short HS256 secret works, with a warning.
  const short = loadConfig({
    ...base,
    AUTH_JWT_SECRET: "dev-secret",
    AUTH_ISSUER: ISSUER,
    AUTH_AUDIENCE: "a",
  });
  assert.equal(short.accounts.idTokens?.secret, "dev-secret");
  assert.ok(short.warnings.some((w) => /32 bytes/.test(w)));
  assert.equal(loadConfig(base).accounts.idTokens, null);
  assert.equal(
    loadConfig({
      ...base,
      AUTH_JWKS_URL: "http://localhost:9999/jwks",
      AUTH_ISSUER: ISSUER,
      AUTH_AUDIENCE: "a",
    }).accounts.idTokens?.jwksUrl,
    "http://localhost:9999/jwks",
  );
  const cases: [Record<string, string>, RegExp][] = [
    [
      { AUTH_JWKS_URL: "http://idp.example.com/jwks", AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: "a" },
      /https/,
    ],
    [{ AUTH_JWKS_URL: "https://idp.example.com/jwks", AUTH_AUDIENCE: "a" }, /AUTH_ISSUER/],
    [{ AUTH_JWKS_URL: "https://idp.example.com/jwks", AUTH_ISSUER: ISSUER }, /AUTH_AUDIENCE/],
    [{
      AUTH_JWT_SECRET: "short",
      AUTH_ISSUER: ISSUER,
      AUTH_AUDIENCE: "a",
      DENO_ENV: "production",
      DATABASE_URL: "postgres://db.example.com/app",
    }, /32 bytes/],
    [{
      AUTH_JWT_SECRET: "x".repeat(32),
      AUTH_JWKS_URL: "https://idp.example.com/jwks",
      AUTH_ISSUER: ISSUER,
      AUTH_AUDIENCE: "a",
    }, /not both/],
    [{ AUTH_ISSUER: ISSUER }, /need AUTH_JWKS_URL or AUTH_JWT_SECRET/],
    [{ SESSION_TTL: "0" }, /SESSION_TTL/],
    [{ SESSION_TTL: "30d" }, /SESSION_TTL/],
    [{ RATE_LIMIT_SIGN_INS: "many" }, /RATE_LIMIT_SIGN_INS/],
  ];
  for (const [env, expected] of cases) {
    const found = problems(env);
    assert.ok(found.some((p) => expected.test(p)), `${JSON.stringify(env)}: ${found.join("; ")}`);
  }
});
