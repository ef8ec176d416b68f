/** Entry point: configuration from the environment, the database, migrations, the server. */
import { DataDirInUseError, type EmbeddedPostgres, startEmbedded } from "./db/embedded.ts";
import { connect, isTransientDatabaseError, postgres, refusedStartupParameter } from "./db/mod.ts";
import { migrate } from "./db/migrate.ts";
import { fillUsernameKeys } from "./db/users.ts";
import { ConfigError, loadConfig } from "./server/config.ts";
import { NotificationsNotHeardError } from "./server/realtime/listening.ts";
import { createLogger } from "./server/log.ts";
import { bufferedStdoutSink } from "./server/log_sink.ts";
import { serve } from "./server/serve.ts";

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(Deno.env.toObject());
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    Deno.exit(1);
  }
  const log = createLogger(config.logFormat, bufferedStdoutSink());
  for (const warning of config.warnings) log.warn(`Warning: ${warning}`);

  // Before anything is opened: a busy port must not cost a migration or an embedded database.
  const portProblem = checkPort(config.hostname, config.port);
  if (portProblem) {
    log.error(`Cannot start: ${portProblem}`);
    Deno.exit(1);
  }

  let embedded: EmbeddedPostgres | null = null;
  if (config.databaseUrl === null) {
    try {
      embedded = await startEmbedded(config.pgliteDir);
    } catch (error) {
      if (error instanceof DataDirInUseError) {
        log.error(`Cannot start: ${error.message}`);
      } else {
        log.error(`Cannot start: the embedded database in ${config.pgliteDir} failed`, error);
      }
      Deno.exit(1);
    }
    log.info(`Database: embedded PGlite in ${config.pgliteDir} (DATABASE_URL is not set)`);
    log.warn(
      "Warning: the embedded database serves one instance; " +
        "run several instances only against a real Postgres (DATABASE_URL)",
    );
  } else if (config.databaseDirectUrl === null) {
    log.info(`Database: Postgres at ${where(config.databaseUrl)}`);
  } else {
    log.info(
      `Database: Postgres through the pooler at ${where(config.databaseUrl)}; ` +
        `LISTEN and migrations at ${where(config.databaseDirectUrl)}`,
    );
  }
  // Postgres itself: the same server as the pool unless DATABASE_URL is a pooler.
  const directUrl = config.databaseDirectUrl ?? config.databaseUrl;
  // pglite-socket interleaves concurrent connections' messages, so embedded gets one.
  const sql = connect(embedded?.url ?? config.databaseUrl!, {
    max: embedded ? 1 : 10,
    pooler: config.databaseDirectUrl !== null,
  });
  // Migrations take the advisory lock, which needs a session of its own, and may run longer
  // than the pool's statement_timeout: a connection of their own, ended once they are done.
  const migrator = embedded || directUrl === null
    ? sql
    : connect(directUrl, { max: 1, statementTimeoutMs: null, lockTimeoutMs: null });
  // The database may be found unreachable before serve() has even returned the port.
  let waitingForDatabase = false;
  let announceWaiting = () => void (waitingForDatabase = true);
  const server = await serve({
    ...config,
    onWaiting: () => announceWaiting(),
    sql,
    log,
    crossInstance: embedded === null,
    listenUrl: directUrl ?? undefined,
    // Retried with backoff while the database is unreachable; meanwhile /health says 503.
    async prepare() {
      const applied = await migrate(migrator);
      log.info(
        applied.length ? `Applied migrations: ${applied.join(", ")}` : "Database is up to date",
      );
      const keys = await fillUsernameKeys(migrator);
      if (keys.filled > 0) log.info(`Filled the username key of ${keys.filled} users`);
      if (keys.collisions.length > 0) {
        log.warn(
          `Warning: ${keys.collisions.length} users have a name whose key an older user's name ` +
            "holds; they keep their names without a key",
          { userIds: keys.collisions.slice(0, 20).join(",") },
        );
      }
      if (migrator !== sql) await migrator.end({ timeout: 1 });
    },
  });
  server.ready.catch(async (error) => {
    const refusal = configurationRefusal(error, config.databaseDirectUrl !== null);
    if (refusal) log.error(`Cannot start: ${refusal}`);
    else log.error("Cannot start: database migration failed", error);
    await server.shutdown({ graceMs: 0 });
    await sql.end({ timeout: 1 });
    if (migrator !== sql) await migrator.end({ timeout: 0 });
    await embedded?.close();
    Deno.exit(1);
  });
  // A connection that dies outside any request (postgres.js reconnects by itself) must not
  // end the process: it is an outage, logged in one line, not a bug.
  globalThis.addEventListener("unhandledrejection", (event) => {
    if (!isTransientDatabaseError(event.reason)) return;
    event.preventDefault();
    log.warn("Database connection lost outside a request", {
      error: (event.reason as Error).message,
    });
  });
  // Registered before the "listening" line, so a signal right after it still drains.
  // SIGTERM (a deploy) and SIGINT (Ctrl-C) drain alike; a second SIGINT exits at once.
  let stopping = false;
  async function stop(signal: "SIGTERM" | "SIGINT"): Promise<void> {
    if (stopping) {
      if (signal === "SIGINT") {
        log.warn("Second SIGINT: exiting without finishing the drain");
        Deno.exit(130);
      }
      return;
    }
    stopping = true;
    log.info(`${signal}: draining`);
    await server.shutdown({ graceMs: 1000 });
    await sql.end({ timeout: 0.5 });
    await embedded?.close();
    log.info("Drained: exiting");
    Deno.exit(0);
  }
  Deno.addSignalListener("SIGTERM", () => void stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => void stop("SIGINT"));
  // The listening line comes once the API serves calls; when the database is unreachable at
  // first (or slow: over a second), it comes at once, saying the server answers 503 meanwhile.
  const listening = `parley listening on http://${config.hostname}:${server.port} (origins: ${
    config.origins.rules.map((rule) => rule.source).join(", ") || "none"
  })`;
  let announced = false;
  announceWaiting = () => {
    if (announced) return;
    announced = true;
    log.info(`${listening}; waiting for the database: /health and calls answer 503 until then`);
  };
  if (waitingForDatabase) announceWaiting();
  // A database that accepts connections and never answers fails only at the connect timeout.
  const slow = setTimeout(announceWaiting, 1000);
  // A failed start is reported above (one line, exit 1): only a success goes on here.
  const started = await server.ready.then(() => true, () => false);
  clearTimeout(slow);
  if (!started) return;
  log.info(announced ? "Database reachable: the API is open" : listening);
}

/** A database URL's host and database, for logs (never its user or password). */
function where(url: string): string {
  const { host, pathname } = new URL(url);
  return `${host}${pathname}`;
}

/**
 * One line saying which setting to change, when startup failed because the database
 * configuration cannot work (a pooler in transaction mode where Postgres itself is needed);
 * null for any other failure. `direct`: DATABASE_DIRECT_URL is set.
 */
function configurationRefusal(error: unknown, direct: boolean): string | null {
  const parameter = refusedStartupParameter(error);
  if (parameter !== null) {
    return `the server at DATABASE_URL refused the startup parameter ${parameter}, as a ` +
      "connection pooler such as PgBouncer does: set DATABASE_DIRECT_URL to Postgres itself " +
      "(DATABASE_URL stays the pooler)";
  }
  // 26000: a statement prepared on one server connection was run on another.
  if (error instanceof postgres.PostgresError && error.code === "26000" && !direct) {
    return `a prepared statement vanished between two statements (${error.message}), as ` +
      "behind a pooler in transaction mode such as PgBouncer: set DATABASE_DIRECT_URL to " +
      "Postgres itself (DATABASE_URL stays the pooler)";
  }
  if (error instanceof NotificationsNotHeardError) {
    return direct
      ? `a NOTIFY sent through DATABASE_URL was not heard on DATABASE_DIRECT_URL within ` +
        `${error.waitedMs} ms: DATABASE_DIRECT_URL must be Postgres itself (not a pooler), ` +
        "with the same database as DATABASE_URL"
      : `a NOTIFY sent through DATABASE_URL was not heard on its LISTEN connection within ` +
        `${error.waitedMs} ms, as behind a pooler in transaction mode such as PgBouncer: ` +
        "set DATABASE_DIRECT_URL to Postgres itself (DATABASE_URL stays the pooler)";
  }
  return null;
}

/**
 * Why the server cannot listen on `hostname:port`, in one line, or null when it can (port 0
 * always can). Checked by listening and closing at once; serve() binds it again right after.
 */
function checkPort(hostname: string, port: number): string | null {
  if (port === 0) return null;
  try {
    Deno.listen({ hostname, port }).close();
    return null;
  } catch (error) {
    if (error instanceof Deno.errors.AddrInUse) {
      return `port ${port} on ${hostname} is already in use (another parley?): stop it or set PORT`;
    }
    if (error instanceof Deno.errors.AddrNotAvailable) {
      return `HOST ${hostname} is not an address of this machine`;
    }
    return `cannot listen on ${hostname}:${port}: ${(error as Error).message}`;
  }
}

if (import.meta.main) await main();
