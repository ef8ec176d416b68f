/**
 * Startup as deployed: the Dockerfile's start command, run as a real subprocess
 * (configuration from the environment, migrations, listening, SIGTERM).
 */
import assert from "node:assert/strict";
import type { Message } from "../db/messages.ts";
import {
  BULK_LIMITS,
  BULK_LIMITS_ENV,
  callError,
  client,
  createTestDatabase,
  EMBEDDED,
  needsRealPostgres,
  signUp,
  startTestEnv,
  waitFor,
  wsClient,
} from "./_helpers.ts";
import {
  baseEnv,
  LOCAL_SERVER_ENV,
  ROOT,
  SIGTERM_EXIT_MS,
  spawnServer,
  startTask,
  terminate,
} from "../scripts/server_process.ts";

/** The Dockerfile's instructions, one string each: comments dropped, continuations joined. */
async function dockerInstructions(): Promise<string[]> {
  const text = await Deno.readTextFile(new URL("Dockerfile", ROOT));
  const instructions: string[] = [];
  let current = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("#")) continue;
    if (line.endsWith("\\")) {
      current += line.slice(0, -1) + " ";
      continue;
    }
    current += line;
    if (current.trim()) instructions.push(current.trim());
    current = "";
  }
  if (current.trim()) instructions.push(current.trim());
  return instructions;
}

/**
 * The image's command line: the base image's entrypoint runs `deno` with CMD as its
 * arguments (denoland/deno's docker-entrypoint.sh prefixes `deno` to known subcommands
 * such as `run`), so the Dockerfile must not set its own ENTRYPOINT.
 */
async function dockerCommandLine(): Promise<string[]> {
  const instructions = await dockerInstructions();
  const named = (name: string) =>
    instructions.filter((line) => line.split(/\s/, 1)[0].toUpperCase() === name);
  assert.deepEqual(named("ENTRYPOINT"), [], "the Dockerfile must keep the base image's entrypoint");
  const cmds = named("CMD");
  assert.equal(cmds.length, 1, "the Dockerfile must have exactly one CMD instruction");
  const args: unknown = JSON.parse(cmds[0].slice("CMD".length));
  assert.ok(
    Array.isArray(args) && args.every((arg) => typeof arg === "string"),
    "CMD must be in exec form (a JSON array of strings)",
  );
  assert.equal(args[0], "run", "the entrypoint prefixes `deno` only to deno subcommands");
  return ["deno", ...args];
}

/**
 * The database for a spawned server: a fresh real one, or on embedded runs an embedded
 * PGlite of its own under ./data (the only place the server may write).
 */
async function serverDatabase(): Promise<{ env: Record<string, string> } & AsyncDisposable> {
  if (!EMBEDDED) {
    const db = await createTestDatabase();
    return {
      env: { DATABASE_URL: db.url },
      [Symbol.asyncDispose]: () => db[Symbol.asyncDispose](),
    };
  }
  const dir = `data/test_${crypto.randomUUID().slice(0, 8)}`;
  return {
    env: { PGLITE_DIR: `./${dir}` },
    [Symbol.asyncDispose]: () => Deno.remove(new URL(dir, ROOT), { recursive: true }),
  };
}

Deno.test("the Dockerfile's CMD, run by the image's deno entrypoint, is exactly `deno task start`", async () => {
  assert.deepEqual(await dockerCommandLine(), await startTask());
});

Deno.test(
  "the Dockerfile's start command migrates, serves /health and a tRPC call, and exits 0 within 3s of SIGTERM",
  async () => {
    await using db = await serverDatabase();
    await using server = await spawnServer({
      ...db.env,
      ...LOCAL_SERVER_ENV,
    });

    const [, url, origins] = await server.waitForLine(
      "stdout",
      /^parley listening on (http:\/\/127\.0\.0\.1:\d+) \(origins: (.*)\)$/,
    );
    assert.equal(origins, "https://app.example.com");
    assert.ok(
      server.stdout.some((line) => line.startsWith("Applied migrations: 00001_init")),
      server.stdout.join("\n"),
    );

    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: "ok", db: "ok" });

    const { user, token } = await client({ url }, { origin: "https://app.example.com" })
      .users.create.mutate({ username: "docker_check" });
    assert.equal(user.username, "docker_check");
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);

    const status = await terminate(server);
    assert.ok(status, `server still running ${SIGTERM_EXIT_MS} ms after SIGTERM`);
    assert.equal(status.code, 0, server.stderr.join("\n"));
    assert.ok(server.stdout.includes("SIGTERM: draining"));
  },
);

Deno.test("with LOG_FORMAT=json every log line is one JSON object with the request's facts", async () => {
  await using db = await serverDatabase();
  await using server = await spawnServer({
    ...db.env,
    ...LOCAL_SERVER_ENV,
    LOG_FORMAT: "json",
  });
  const [line] = await server.waitForLine("stdout", /^\{.*"msg":"parley listening on .*\}$/);
  const url = JSON.parse(line).msg.match(/http:\/\/127\.0\.0\.1:\d+/)[0];
  (await fetch(`${url}/health`, { headers: { origin: "https://app.example.com" } })).body
    ?.cancel();
  (await fetch(`${url}/health`, { headers: { origin: "https://evil.example.com" } })).body
    ?.cancel();
  const socket = new WebSocket(`${url.replace("http", "ws")}/trpc`);
  await new Promise((resolve) => socket.onopen = resolve);
  socket.close();
  await server.waitForLine("stdout", /"msg":"WebSocket closed"/, 5_000);
  const status = await terminate(server);
  assert.equal(status?.code, 0);

  const events = [...server.stdout, ...server.stderr].filter((l) => l.trim()).map((l) => {
    let event;
    try {
      event = JSON.parse(l);
    } catch {
      throw new Error(`Not a JSON log line: ${l}`);
    }
    assert.equal(typeof event.time, "string");
    assert.ok(["info", "warn", "error"].includes(event.level), l);
    return event;
  });
  const find = (msg: string, extra: Record<string, unknown> = {}) =>
    events.find((e) => e.msg === msg && Object.entries(extra).every(([k, v]) => e[k] === v));
  const request = find("request", { path: "/health", status: 200 });
  assert.equal(request?.method, "GET");
  assert.equal(request?.origin, "https://app.example.com");
  assert.equal(typeof request?.ms, "number");
  const refused = events.find((e) => e.msg.startsWith("Refused origin"));
  assert.equal(refused?.origin, "https://evil.example.com");
  assert.equal(refused?.reason, "not in ALLOWED_ORIGINS");
  assert.ok(find("WebSocket opened"));
  assert.equal(typeof find("WebSocket closed")?.seconds, "number");
});

Deno.test("the start command's permissions are enough for the server and no wider", async () => {
  // The server itself starts and works with them (the tests above); here the same flags
  // run a probe that tries what the server must not do.
  const [, ...args] = await startTask();
  assert.equal(args.at(-1), "main.ts");
  const probe = await new Deno.Command(Deno.execPath(), {
    args: [...args.slice(0, -1), "tests/_permission_probe.ts"],
    cwd: ROOT,
    clearEnv: true,
    env: baseEnv(),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(probe.stdout);
  assert.equal(probe.code, 0, new TextDecoder().decode(probe.stderr));
  assert.deepEqual(JSON.parse(stdout), {
    readOwnFolder: "allowed",
    readMigrations: "allowed",
    writeData: "allowed",
    readEtc: "denied",
    readParent: "denied",
    readHome: "denied",
    writeOwnFolder: "denied",
    writeTmp: "denied",
    runProcess: "denied",
    systemInfo: "denied",
  });
});

Deno.test(
  "startup in production with a bad PORT, no DATABASE_URL and a bad ALLOWED_ORIGINS exits 1 naming all three, without a stack trace",
  async () => {
    await using server = await spawnServer({
      DENO_ENV: "production",
      PORT: "abc",
      ALLOWED_ORIGINS: "https://x.com/path",
    });
    const status = await server.finished();
    const stderr = server.stderr.join("\n");
    assert.equal(status.code, 1, stderr);
    assert.equal(server.stderr[0], "Invalid configuration:", stderr);
    assert.ok(server.stderr.some((line) => /^ {2}- PORT\b.*"abc"/.test(line)), stderr);
    assert.ok(server.stderr.some((line) => /^ {2}- DATABASE_URL is required/.test(line)), stderr);
    assert.ok(
      server.stderr.some((line) => /^ {2}- ALLOWED_ORIGINS\b.*https:\/\/x\.com\/path/.test(line)),
      stderr,
    );
    assert.doesNotMatch(stderr, /Uncaught|^\s+at /m);
    assert.ok(!server.stdout.some((line) => line.includes("listening")));
  },
);

Deno.test(
  "startup without ALLOWED_ORIGINS warns on stderr that only the local dev origins are allowed",
  async () => {
    await using db = await serverDatabase();
    await using server = await spawnServer({
      ...db.env,
      PORT: "0",
      HOST: "127.0.0.1",
    });

    const [, url, origins] = await server.waitForLine(
      "stdout",
      /^parley listening on (http:\/\/127\.0\.0\.1:\d+) \(origins: (.*)\)$/,
    );
    assert.equal(origins, "http://localhost:3000, http://127.0.0.1:3000");
    // Printed before the listening line, so it is due on stderr already.
    const [warning] = await server.waitForLine(
      "stderr",
      /^Warning: ALLOWED_ORIGINS is not set\b.*$/,
      2_000,
    );
    assert.match(warning, /allowing only http:\/\/localhost:3000,http:\/\/127\.0\.0\.1:3000$/);
    const res = await fetch(`${url}/health`, { headers: { origin: "http://localhost:3000" } });
    assert.equal(res.headers.get("access-control-allow-origin"), "http://localhost:3000");
    await res.body?.cancel();

    // SIGTERM right after the listening line: main.ts registers its handler before printing it.
    const status = await terminate(server);
    assert.ok(status, `server still running ${SIGTERM_EXIT_MS} ms after SIGTERM`);
    assert.equal(status.code, 0, server.stderr.join("\n"));
  },
);

const DRAIN =
  "on SIGTERM a server sends WebSocket clients to reconnect; they resume elsewhere with nothing lost";
Deno.test({ name: DRAIN, ignore: needsRealPostgres(DRAIN) }, async () => {
  await using db = await createTestDatabase();
  await using doomed = await spawnServer({
    DATABASE_URL: db.url,
    ...LOCAL_SERVER_ENV,
    ...BULK_LIMITS_ENV,
  });
  const [, doomedUrl] = await doomed.waitForLine(
    "stdout",
    /^parley listening on (http:\/\/127\.0\.0\.1:\d+) /,
  );
  // The instance that takes over, on the same database.
  await using next = await startTestEnv({ db, limits: BULK_LIMITS });
  const alice = await signUp(next);
  const room = await alice.api.rooms.create.mutate({ name: "Deploy" });

  let target = doomedUrl;
  const subscriber = wsClient({ url: doomedUrl }, { token: alice.token, url: () => target });
  const received: Message[] = [];
  const errors: string[] = [];
  let started = false;
  const sub = subscriber.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
    onStarted: () => void (started = true),
    onData: (event) => void received.push(event.data),
    onError: (error) => void errors.push(error.message),
  });
  try {
    await waitFor(() => started, "subscribed on the first instance");
    for (let i = 1; i <= 10; i++) {
      await alice.api.messages.send.mutate({ roomId: room.id, content: `before ${i}` });
    }
    await waitFor(() => received.length >= 10, "10 messages through the first instance");

    const sending = (async () => {
      for (let i = 1; i <= 30; i++) {
        await alice.api.messages.send.mutate({ roomId: room.id, content: `during ${i}` });
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    target = next.url;
    const status = await terminate(doomed);
    assert.ok(status, `server still running ${SIGTERM_EXIT_MS} ms after SIGTERM`);
    assert.equal(status.code, 0, doomed.stderr.join("\n"));
    assert.ok(doomed.stdout.includes("Drained: exiting"), doomed.stdout.join("\n"));
    await sending;

    await waitFor(() => received.length >= 40, "all 40 messages");
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(received.map((m) => m.seq), Array.from({ length: 40 }, (_, i) => i + 1));
    assert.deepEqual(errors, []);
    const hosts = subscriber.sockets.map((socket) => new URL(socket.url).port);
    assert.equal(hosts[0], new URL(doomedUrl).port);
    assert.equal(hosts.at(-1), new URL(next.url).port, "resumed on the second instance");
    // The client moved on the server's reconnect notice and closed the old socket itself
    // (no status: 1005), rather than being cut off by the server (1001, 1006 or 1012).
    assert.equal(subscriber.closeCodes[0], 1005, `close codes ${subscriber.closeCodes}`);
  } finally {
    sub.unsubscribe();
    await subscriber.close();
  }
});

/** A raw WebSocket that records its frames and does not obey the reconnect notice. */
async function stubbornSocket(url: string) {
  const socket = new WebSocket(`${url.replace("http", "ws")}/trpc`, {
    headers: { origin: "https://app.example.com" },
  });
  const frames: string[] = [];
  socket.onmessage = (event) => void frames.push(String(event.data));
  await new Promise((resolve) => socket.onopen = resolve);
  return { socket, frames };
}

Deno.test("Ctrl-C (SIGINT) drains like SIGTERM; a second Ctrl-C exits at once", async () => {
  await using db = await serverDatabase();
  {
    await using server = await spawnServer({
      ...db.env,
      ...LOCAL_SERVER_ENV,
    });
    const [, url] = await server.waitForLine("stdout", /^parley listening on (http:\S+) /);
    const { frames } = await stubbornSocket(url);
    const status = await terminate(server, "SIGINT");
    assert.equal(status?.code, 0, server.stderr.join("\n"));
    assert.ok(server.stdout.includes("SIGINT: draining"));
    assert.ok(frames.includes(JSON.stringify({ id: null, method: "reconnect" })), frames.join());
  }
  {
    await using server = await spawnServer({
      ...db.env,
      ...LOCAL_SERVER_ENV,
    });
    const [, url] = await server.waitForLine("stdout", /^parley listening on (http:\S+) /);
    await stubbornSocket(url); // holds the drain open for its whole grace period
    server.child.kill("SIGINT");
    await server.waitForLine("stdout", /^SIGINT: draining$/, 2_000);
    const started = Date.now();
    server.child.kill("SIGINT");
    const status = await server.finished();
    assert.equal(status.code, 130);
    assert.ok(Date.now() - started < 900, `${Date.now() - started} ms after the second SIGINT`);
  }
});

Deno.test("during the drain every answer is a tRPC error with CORS headers and Retry-After", async () => {
  await using env = await startTestEnv({ origins: "https://app.example.com" });
  const alice = await signUp(env);
  const { socket } = await stubbornSocket(env.url); // keeps the drain open
  const closed = new Promise((resolve) => socket.onclose = resolve);
  const draining = env.server.shutdown({ graceMs: 1500 });
  await new Promise((resolve) => setTimeout(resolve, 100));
  const origin = "https://app.example.com";
  const res = await fetch(`${env.url}/trpc/users.me`, {
    headers: { origin, authorization: `Bearer ${alice.token}` },
  });
  assert.equal(res.status, 503);
  assert.equal(res.headers.get("access-control-allow-origin"), origin);
  assert.equal(res.headers.get("retry-after"), "1");
  const body = await res.json();
  assert.equal(body.error.json.data.code, "SERVICE_UNAVAILABLE");
  assert.equal(body.error.json.data.retryAfterMs, 1000);
  // The tRPC client reads it as a TRPCClientError, not "Unable to transform response".
  const error = await callError(client(env, { origin, token: alice.token }).users.me.query());
  assert.equal(error.data?.code, "SERVICE_UNAVAILABLE");
  // A preflight still passes, so the browser can read the 503 itself.
  const preflight = await fetch(`${env.url}/trpc/users.me`, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": "GET" },
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get("access-control-allow-origin"), origin);
  await draining;
  await closed;
});

Deno.test("a second instance on the same embedded data folder is refused and touches nothing", async () => {
  const dir = `data/test_lock_${crypto.randomUUID().slice(0, 8)}`;
  const env = {
    PGLITE_DIR: `./${dir}`,
    ...LOCAL_SERVER_ENV,
  };
  try {
    let url: string;
    {
      await using first = await spawnServer(env);
      [, url] = await first.waitForLine("stdout", /^parley listening on (http:\S+) /);
      await using second = await spawnServer(env);
      const status = await second.finished();
      assert.equal(status.code, 1);
      assert.deepEqual(second.stderr.filter((line) => line.trim()), [
        `Cannot start: The embedded database in ./${dir} is in use by another parley process: ` +
        "stop it first, or give this one another PGLITE_DIR",
      ]);
      // The first instance still serves, and what it writes survives its restart.
      await client({ url }).users.create.mutate({ username: "kept_after_restart" });
      assert.equal((await terminate(first))?.code, 0);
    }
    await using again = await spawnServer(env);
    [, url] = await again.waitForLine("stdout", /^parley listening on (http:\S+) /);
    const error = await callError(
      client({ url }).users.create.mutate({ username: "kept_after_restart" }),
    );
    assert.equal(error.data?.code, "CONFLICT");
    assert.equal((await terminate(again))?.code, 0);
  } finally {
    await Deno.remove(new URL(dir, ROOT), { recursive: true }).catch(() => {});
    await Deno.remove(new URL(`${dir}.lock`, ROOT)).catch(() => {});
  }
});

Deno.test("a busy port is reported in one line before any database is opened", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dir = `data/test_port_${crypto.randomUUID().slice(0, 8)}`;
  try {
    await using server = await spawnServer({
      PGLITE_DIR: `./${dir}`,
      PORT: String(taken.addr.port),
      HOST: "127.0.0.1",
      ALLOWED_ORIGINS: "https://app.example.com",
    });
    const status = await server.finished();
    assert.equal(status.code, 1);
    assert.deepEqual(server.stderr.filter((line) => line.trim()), [
      `Cannot start: port ${taken.addr.port} on 127.0.0.1 is already in use (another parley?): ` +
      "stop it or set PORT",
    ]);
    assert.ok(!server.stdout.some((line) => line.startsWith("Database:")), server.stdout.join());
    // Nothing was opened or created.
    assert.equal(await Deno.stat(new URL(dir, ROOT)).catch(() => null), null);
  } finally {
    taken.close();
    await Deno.remove(new URL(dir, ROOT), { recursive: true }).catch(() => {});
  }
});

Deno.test("starting the server installs only what the app uses: no test-only package in deno.json or deno.lock", async () => {
  // With nodeModulesDir "auto", `deno task start` installs every package of deno.json's import
  // map and of deno.lock. Test-only packages (Playwright) are imported by URL in tests/ and
  // locked in tests/deno.lock, which only the test task reads.
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const lock = JSON.parse(await Deno.readTextFile(new URL("deno.lock", ROOT)));
  const used = new Set<string>();
  for (
    const dir of [
      ".",
      "server",
      "server/routers",
      "server/realtime",
      "db",
      "client",
      "scripts",
      "bench",
    ]
  ) {
    for await (const entry of Deno.readDir(new URL(`${dir}/`, ROOT))) {
      if (!entry.isFile || !entry.name.endsWith(".ts")) continue;
      const source = await Deno.readTextFile(new URL(`${dir}/${entry.name}`, ROOT));
      for (const [, specifier] of source.matchAll(/from "([^".][^"]*)"/g)) used.add(specifier);
    }
  }
  for (const name of Object.keys(config.imports)) {
    assert.ok(
      [...used].some((specifier) => specifier === name || specifier.startsWith(`${name}/`)),
      `deno.json imports ${name}, which no file outside tests/ uses`,
    );
  }
  const mapped = new Set(Object.values(config.imports) as string[]);
  for (const specifier of Object.keys(lock.specifiers)) {
    assert.ok(
      [...mapped].some((target) => target === specifier || target.startsWith(`${specifier}/`)),
      `deno.lock locks ${specifier}, which deno.json's import map does not name`,
    );
  }
  assert.ok(!JSON.stringify(lock).includes("playwright"));
});
