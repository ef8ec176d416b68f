/**
 * parley behind a connection pooler in transaction mode, as many hosts offer: a real PgBouncer
 * from Debian's package, started here with a config file of the test's own (never as a system
 * service, never as root), in front of the test database. With DATABASE_URL at the pooler and
 * DATABASE_DIRECT_URL at Postgres, two instances serve many concurrent calls and deliver live
 * messages to each other; with the pooler alone, startup is refused in one clear line.
 *
 * Skipped with a printed reason when /usr/sbin/pgbouncer is missing, unless
 * PARLEY_REQUIRE_PGBOUNCER=1 (CI), which makes it fail instead.
 */
import assert from "node:assert/strict";
import type { Message } from "../db/messages.ts";
import {
  BULK_LIMITS_ENV,
  client,
  createTestDatabase,
  freePort,
  needsRealPostgres,
  signUp,
  TEST_DATABASE_URL,
  waitFor,
  wsClient,
} from "./_helpers.ts";
import { type ServerProcess, spawnServer, terminate } from "../scripts/server_process.ts";

/** Where Debian's `pgbouncer` package installs the binary. */
const PGBOUNCER = "/usr/sbin/pgbouncer";

/** Set by CI, which installs PgBouncer: a missing binary fails the test instead of skipping it. */
const REQUIRED = Deno.env.get("PARLEY_REQUIRE_PGBOUNCER") === "1";

/** Concurrent calls (sends and lists) spread over two instances. */
const CALLS = 240;

/** For `ignore:`: true, after printing why, when the test cannot run here. */
function cannotRun(what: string): boolean {
  if (needsRealPostgres(what)) return true;
  if (REQUIRED || isFile(PGBOUNCER)) return false;
  console.log(
    `Skipping "${what}": ${PGBOUNCER} is missing (apt-get install -y pgbouncer; ` +
      "PARLEY_REQUIRE_PGBOUNCER=1 makes this a failure)",
  );
  return true;
}

/** True when `path` is a file (not readable: false). */
function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** A port nothing listens on (for now). */

/** A PgBouncer process of the test's own. */
interface PgBouncer extends AsyncDisposable {
  /** A URL for `database` through the pooler. */
  url(database: string): string;
}

/**
 * Starts PgBouncer in transaction mode on a free port of 127.0.0.1, in front of the Postgres
 * of `TEST_DATABASE_URL`, with a config file in a temp folder: `auth_type = any` (it logs in
 * to Postgres as the test URL's user), 5 server connections per database, and the startup
 * parameters in `ignore` accepted and dropped. As root it runs as `nobody`. Stopped (SIGTERM)
 * and its folder removed on dispose.
 */
async function startPgBouncer(ignore: string[]): Promise<PgBouncer> {
  if (!isFile(PGBOUNCER)) {
    throw new Error(
      `PgBouncer is required here (PARLEY_REQUIRE_PGBOUNCER=1) but ${PGBOUNCER} is missing: ` +
        "apt-get install -y pgbouncer",
    );
  }
  const target = new URL(TEST_DATABASE_URL!);
  const login = [
    `host=${target.hostname}`,
    `port=${target.port || 5432}`,
    `user=${decodeURIComponent(target.username) || "postgres"}`,
    ...(target.password ? [`password=${decodeURIComponent(target.password)}`] : []),
  ].join(" ");
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "parley_pgbouncer_" });
  const config = `${dir}/pgbouncer.ini`;
  await Deno.writeTextFile(
    config,
    [
      "[databases]",
      `* = ${login}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = any",
      "pool_mode = transaction",
      "default_pool_size = 5",
      "max_client_conn = 500",
      `ignore_startup_parameters = ${ignore.join(",")}`,
      "",
    ].join("\n"),
  );
  // PgBouncer refuses to run as root: drop to nobody, who must be able to read the config.
  const root = Deno.uid() === 0;
  if (root) {
    await Deno.chmod(dir, 0o755);
    await Deno.chmod(config, 0o644);
  }
  const child = new Deno.Command(PGBOUNCER, {
    args: [...(root ? ["-u", "nobody"] : []), config],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output: string[] = [];
  const reading = Promise.all([child.stdout, child.stderr].map(async (stream) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) output.push(chunk);
  }));
  let exited = false;
  const status = child.status.then((status) => (exited = true, status));
  async function stop() {
    if (!exited) child.kill("SIGTERM");
    await status;
    await reading;
    await Deno.remove(dir, { recursive: true });
  }
  // Ready once it accepts TCP.
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      if (exited || Date.now() > deadline) {
        await stop();
        throw new Error(`PgBouncer did not start:\n${output.join("")}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    url: (database) => `postgres://postgres@127.0.0.1:${port}/${database}`,
    [Symbol.asyncDispose]: stop,
  };
}

/** Environment of a parley subprocess on port 0 with rates off. */
function serverEnv(database: Record<string, string>): Record<string, string> {
  return {
    ...database,
    PORT: "0",
    HOST: "127.0.0.1",
    ALLOWED_ORIGINS: "https://app.example.com",
    ...BULK_LIMITS_ENV,
  };
}

/** Waits for the server's "listening" line; its base URL. */
async function listening(server: ServerProcess): Promise<string> {
  const [, url] = await server.waitForLine("stdout", /^parley listening on (http:\S+) /);
  return url;
}

const POOLED =
  "behind PgBouncer in transaction mode with DATABASE_DIRECT_URL, two instances serve 240 concurrent calls and deliver live messages to each other";
Deno.test({ name: POOLED, ignore: cannotRun(POOLED) }, async () => {
  await using db = await createTestDatabase();
  await using pgbouncer = await startPgBouncer(["extra_float_digits"]);
  const env = serverEnv({ DATABASE_URL: pgbouncer.url(db.name), DATABASE_DIRECT_URL: db.url });
  await using one = await spawnServer(env);
  await using two = await spawnServer(env);
  const instances = [{ url: await listening(one) }, { url: await listening(two) }];
  assert.ok(one.stdout.some((line) => /^Database: Postgres through the pooler at /.test(line)));

  // Eight users, four on each instance, all members of four rooms.
  const users = await Promise.all(Array.from({ length: 8 }, (_, i) => signUp(instances[i % 2])));
  const rooms = await Promise.all(
    [0, 1, 2, 3].map((r) => users[r].api.rooms.create.mutate({ name: `Pooled ${r}` })),
  );
  for (const user of users) {
    for (const room of rooms) {
      if (room.createdBy !== user.user.id) await user.api.rooms.join.mutate({ roomId: room.id });
    }
  }

  // Each room watched on both instances.
  const sockets = instances.map((instance, i) => wsClient(instance, { token: users[i].token }));
  const watchers = sockets.flatMap((socket) =>
    rooms.map((room) => {
      const seen = { messages: [] as Message[], errors: [] as string[], started: false };
      const sub = socket.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
        onStarted: () => void (seen.started = true),
        onData: (event) => void seen.messages.push(event.data),
        onError: (error) => void seen.errors.push(error.data?.code ?? error.message),
      });
      return { roomId: room.id, seen, stop: () => sub.unsubscribe() };
    })
  );
  try {
    await waitFor(() => watchers.every((w) => w.seen.started), "subscribed on both instances");

    // 240 calls at once, each its own HTTP request: half sends, half lists, over both
    // instances and four rooms.
    const started = performance.now();
    const outcomes = await Promise.all(Array.from({ length: CALLS }, async (_, i) => {
      const user = users[i % users.length];
      const api = client(instances[i % 2], { token: user.token, unbatched: true });
      const roomId = rooms[Math.floor(i / 2) % rooms.length].id;
      try {
        if (i % 2 === 0) await api.messages.send.mutate({ roomId, content: `call ${i}` });
        else await api.messages.list.query({ roomId, limit: 50 });
        return "OK";
      } catch (error) {
        return (error as { data?: { code?: string } }).data?.code ?? String(error);
      }
    }));
    const elapsed = Math.round(performance.now() - started);
    const failures = outcomes.filter((outcome) => outcome !== "OK");
    console.log(
      `${CALLS} concurrent calls through PgBouncer: ${failures.length} failed, ${elapsed} ms`,
    );
    assert.deepEqual(failures, [], `${failures.length} of ${CALLS} calls failed`);

    // Every send reached the subscribers of its room on both instances, in order, once.
    const perRoom = CALLS / 2 / rooms.length;
    await waitFor(
      () => watchers.every((w) => w.seen.messages.length >= perRoom),
      "live messages on both instances",
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const w of watchers) {
      assert.deepEqual(
        w.seen.messages.map((m) => m.seq),
        Array.from({ length: perRoom }, (_, i) => i + 1),
      );
      assert.deepEqual(w.seen.errors, []);
    }

    // And one more each way, sent through one instance and seen on the other.
    for (const [from, to] of [[0, 1], [1, 0]]) {
      await users[from].api.messages.send.mutate({ roomId: rooms[0].id, content: `${from}→${to}` });
      const seen = watchers[to * rooms.length].seen.messages;
      await waitFor(() => seen.at(-1)?.content === `${from}→${to}`, `${from} to ${to}`, 5_000);
    }
    for (const server of [one, two]) {
      assert.ok(
        !server.stderr.some((line) => /LISTEN connection missed|prepared statement/.test(line)),
        server.stderr.join("\n"),
      );
    }
  } finally {
    for (const w of watchers) w.stop();
    await Promise.all(sockets.map((socket) => socket.close()));
  }
  assert.equal((await terminate(one))?.code, 0);
  assert.equal((await terminate(two))?.code, 0);
});

const REFUSED =
  "with DATABASE_URL at PgBouncer in transaction mode and no DATABASE_DIRECT_URL, startup is refused in one clear line";
Deno.test({ name: REFUSED, ignore: cannotRun(REFUSED) }, async (t) => {
  await using db = await createTestDatabase();
  const cases = [
    {
      // As most poolers are set up: the direct connection's timeouts are refused.
      name: "a pooler that refuses unknown startup parameters",
      ignore: ["extra_float_digits"],
      line:
        /^Cannot start: the server at DATABASE_URL refused the startup parameter \w+.*set DATABASE_DIRECT_URL/,
    },
    {
      // Parameters dropped, so the pool connects: the heartbeat is never heard.
      name: "a pooler that drops them",
      ignore: ["extra_float_digits", "statement_timeout", "lock_timeout"],
      line:
        /^Cannot start: a NOTIFY sent through DATABASE_URL was not heard .*set DATABASE_DIRECT_URL/,
    },
  ];
  for (const { name, ignore, line } of cases) {
    await t.step(name, async () => {
      await using pgbouncer = await startPgBouncer(ignore);
      await using server = await spawnServer(serverEnv({ DATABASE_URL: pgbouncer.url(db.name) }));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const status = await Promise.race([
        server.finished(),
        new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), 30_000)),
      ]);
      clearTimeout(timer);
      const output = `stdout:\n${server.stdout.join("\n")}\nstderr:\n${server.stderr.join("\n")}`;
      assert.equal(status?.code, 1, output);
      const refusals = server.stderr.filter((text) => text.startsWith("Cannot start"));
      assert.equal(refusals.length, 1, output);
      assert.match(refusals[0], line);
      assert.ok(!server.stderr.some((text) => /^\s+at /.test(text)), `no stack trace\n${output}`);
      // It may have said it listens while waiting for the database, never that the API is open.
      assert.ok(
        !server.stdout.some((text) =>
          /^parley listening on \S+ \(origins: [^)]*\)$/.test(text) ||
          text.startsWith("Database reachable")
        ),
        output,
      );
    });
  }
});
