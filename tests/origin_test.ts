import assert from "node:assert/strict";
import { ConfigError, loadConfig } from "../server/config.ts";
import { createOriginPolicy } from "../server/origin.ts";
import { client, errorCode, startTestEnv, TEST_ORIGINS } from "./_helpers.ts";

const PREVIEW = "https://video-chat-frontend-*-dalkirks-projects.vercel.app";

/** Origins a browser might send, and whether the test allowlist admits them. */
const CASES: [origin: string, allowed: boolean][] = [
  ["http://localhost:3000", true],
  ["https://app.example.com", true],
  ["HTTPS://APP.EXAMPLE.COM", true],
  ["https://app.example.com:443", true],
  ["https://video-chat-frontend-iio886s1j-dalkirks-projects.vercel.app", true],
  ["https://video-chat-frontend-git-main-dalkirks-projects.vercel.app", true],
  // Near misses.
  ["https://evil-app.example.com", false],
  ["https://app.example.com.evil.com", false],
  ["https://app.example.com.", false],
  ["https://app.example.com:8443", false],
  ["http://app.example.com", false],
  ["http://localhost:3001", false],
  ["https://localhost:3000", false],
  ["https://video-chat-frontend-a.b-dalkirks-projects.vercel.app", false],
  ["https://video-chat-frontend--dalkirks-projects.vercel.app", false],
  ["https://x.video-chat-frontend-abc-dalkirks-projects.vercel.app", false],
  ["https://video-chat-frontend-abc-dalkirks-projects.vercel.app.evil.com", false],
  ["null", false],
  ["not an origin", false],
  ["https://app.example.com/path", false],
];

Deno.test("origin policy decides each allowed origin and near miss", () => {
  const policy = createOriginPolicy(TEST_ORIGINS);
  for (const [origin, allowed] of CASES) {
    assert.equal(policy.check(origin).allowed, allowed, origin);
  }
  assert.deepEqual(policy.check(null), { allowed: true, origin: null });
});

Deno.test("origin policy refuses invalid allowlist entries, naming each", () => {
  for (
    const entry of [
      "https://example.com/",
      "https://example.com/path",
      "https://example.com?q=1",
      "https://example.com#x",
      "ftp://example.com",
      "example.com",
      "https://*.example.com.evil/*",
      "https://app.*.example.com",
      "https://*-a-*.example.com",
      "https://example.com:99999",
      "https://*.com",
      "https://exa mple.com",
    ]
  ) {
    assert.throws(() => createOriginPolicy(`http://localhost:3000,${entry}`), (error: Error) => {
      assert.match(error.message, /Invalid allowed origin/, entry);
      return true;
    });
  }
  const policy = createOriginPolicy(` ${PREVIEW} , https://Example.COM:443 ,`);
  assert.equal(policy.rules.length, 2);
  assert.equal(policy.check("https://example.com").allowed, true);
});

Deno.test("config applies defaults with a warning and stops on every bad value", () => {
  const config = loadConfig({});
  assert.equal(config.databaseUrl, null, "no DATABASE_URL: the embedded database");
  assert.equal(config.pgliteDir, "./data/pglite");
  assert.equal(config.production, false);
  assert.equal(config.logFormat, "text");
  assert.equal(config.port, 8000);
  assert.equal(config.hostname, "0.0.0.0");
  assert.equal(config.origins.check("http://localhost:3000").allowed, true);
  assert.equal(config.origins.check("http://127.0.0.1:3000").allowed, true);
  assert.match(config.warnings.join("\n"), /ALLOWED_ORIGINS is not set/);

  const set = loadConfig({
    DATABASE_URL: "postgresql://u@db:5432/p",
    PORT: "9000",
    HOST: "127.0.0.1",
    ALLOWED_ORIGINS: PREVIEW,
  });
  assert.deepEqual([set.port, set.hostname, set.warnings], [9000, "127.0.0.1", []]);

  assert.throws(
    () =>
      loadConfig({ PORT: "eighty", ALLOWED_ORIGINS: "https://x.com/app", DENO_ENV: "production" }),
    (error: ConfigError) => {
      assert.equal(error.problems.length, 3);
      assert.match(error.message, /PORT must be an integer/);
      assert.match(error.message, /DATABASE_URL is required/);
      assert.match(error.message, /Invalid allowed origin "https:\/\/x.com\/app"/);
      return true;
    },
  );
  assert.throws(() => loadConfig({ DATABASE_URL: "mysql://x" }), /postgres:\/\//);
  assert.throws(() => loadConfig({ LOG_FORMAT: "xml" }), /LOG_FORMAT must be json or text/);
});

Deno.test("in production an unset or empty ALLOWED_ORIGINS refuses to start, and logs are JSON", () => {
  const db = { DATABASE_URL: "postgres://u@db.railway.internal:5432/railway" };
  for (const production of [{ RAILWAY_ENVIRONMENT: "production" }, { DENO_ENV: "production" }]) {
    for (const origins of [{}, { ALLOWED_ORIGINS: "" }, { ALLOWED_ORIGINS: " , " }]) {
      assert.throws(
        () => loadConfig({ ...db, ...production, ...origins }),
        /ALLOWED_ORIGINS must list your front end's origins in production/,
        JSON.stringify(origins),
      );
    }
    const config = loadConfig({ ...db, ...production, ALLOWED_ORIGINS: PREVIEW });
    assert.deepEqual([config.production, config.logFormat, config.warnings], [true, "json", []]);
    assert.throws(
      () => loadConfig({ ...production, ALLOWED_ORIGINS: PREVIEW }),
      /DATABASE_URL is required in production/,
    );
  }
  // Outside production an empty list is allowed (every browser refused), with a warning.
  assert.match(loadConfig({ ALLOWED_ORIGINS: "" }).warnings.join(), /every browser origin/);
});

Deno.test("origin policy over real HTTP", async (t) => {
  await using env = await startTestEnv();
  const usersCount = async () => (await env.sql`select count(*)::int as n from users`)[0].n;

  await t.step(
    "an allowed origin gets CORS headers on tRPC, /health and 404 responses",
    async () => {
      for (const path of ["/trpc/health", "/health", "/nowhere"]) {
        const res = await fetch(`${env.url}${path}`, {
          headers: { origin: "https://app.example.com" },
        });
        await res.body?.cancel();
        assert.equal(
          res.headers.get("access-control-allow-origin"),
          "https://app.example.com",
          path,
        );
        assert.equal(res.headers.get("access-control-allow-credentials"), "true", path);
        assert.match(res.headers.get("vary") ?? "", /Origin/, path);
      }
    },
  );

  await t.step(
    "a Vercel preview origin matching the pattern is allowed for mutations",
    async () => {
      const origin = "https://video-chat-frontend-iio886s1j-dalkirks-projects.vercel.app";
      const { user } = await client(env, { origin }).users.create.mutate({ username: "preview" });
      assert.equal(user.username, "preview");
    },
  );

  await t.step(
    "no Origin header (curl, server-to-server) is allowed without CORS headers",
    async () => {
      const res = await fetch(`${env.url}/health`);
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { status: "ok", db: "ok" });
      assert.equal(res.headers.get("access-control-allow-origin"), null);
    },
  );

  await t.step(
    "a preflight from an allowed origin answers 204 with methods, headers, max-age",
    async () => {
      const res = await fetch(`${env.url}/trpc/users.create`, {
        method: "OPTIONS",
        headers: {
          origin: "http://localhost:3000",
          "access-control-request-method": "POST",
          "access-control-request-headers": "content-type, authorization",
        },
      });
      await res.body?.cancel();
      assert.equal(res.status, 204);
      assert.equal(res.headers.get("access-control-allow-origin"), "http://localhost:3000");
      assert.equal(res.headers.get("access-control-allow-credentials"), "true");
      assert.equal(res.headers.get("access-control-allow-methods"), "GET, POST, OPTIONS");
      const allowed = res.headers.get("access-control-allow-headers") ?? "";
      for (const header of ["content-type", "authorization", "trpc-accept", "x-trpc-source"]) {
        assert.ok(allowed.includes(header), header);
      }
      assert.equal(res.headers.get("access-control-max-age"), "600");
    },
  );

  await t.step(
    "every refused origin gets 403, JSON, no CORS headers, no write, one log line",
    async () => {
      const refused = CASES.filter(([, allowed]) => !allowed).map(([origin]) => origin)
        .filter((origin) => !/\s/.test(origin));
      const before = await usersCount();
      for (const origin of refused) {
        env.log.lines.length = 0;
        const tag = `refused origin ${origin}`;
        // A tRPC mutation: refused by context creation, so the procedure never runs.
        const res = await fetch(`${env.url}/trpc/users.create`, {
          method: "POST",
          headers: { origin, "content-type": "application/json" },
          body: JSON.stringify({ json: { username: `u${crypto.randomUUID().slice(0, 8)}` } }),
        });
        assert.equal(res.status, 403, tag);
        assert.equal(res.headers.get("content-type"), "application/json", tag);
        const body = await res.json();
        assert.equal(body.error.json.data.code, "FORBIDDEN", tag);
        assert.match(body.error.json.message, /Origin not allowed/, tag);
        for (const [name] of res.headers) assert.ok(!name.startsWith("access-control-"), tag);
        // A preflight and a plain route: refused before routing.
        for (const [method, path] of [["OPTIONS", "/trpc/users.create"], ["GET", "/health"]]) {
          const other = await fetch(`${env.url}${path}`, { method, headers: { origin } });
          assert.equal(other.status, 403, `${tag} ${method} ${path}`);
          assert.equal((await other.json()).error.code, "FORBIDDEN");
          for (const [name] of other.headers) assert.ok(!name.startsWith("access-control-"), tag);
        }
        assert.equal(env.log.lines.length, 3, tag);
        for (const line of env.log.lines) {
          assert.ok(
            line.includes(`Refused origin ${origin}`),
            line,
          );
        }
      }
      assert.equal(await usersCount(), before);
    },
  );

  await t.step("a typed client from a refused origin sees FORBIDDEN", async () => {
    const api = client(env, { origin: "https://evil.example.com" });
    assert.equal(await errorCode(api.health.query()), "FORBIDDEN");
    assert.equal(await errorCode(api.users.create.mutate({ username: "sneaky" })), "FORBIDDEN");
  });
});
