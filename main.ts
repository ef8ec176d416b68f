/** Entry point: configuration from the environment, the database, migrations, the server. */
import { DataDirInUseError, type EmbeddedPostgres, startEmbedded } from "./db/embedded.ts";
import { connect, isTransientDatabaseError } from "./db/mod.ts";
import { migrate } from "./db/migrate.ts";
import { fillUsernameKeys } from "./db/users.ts";
import { ConfigError, loadConfig } from "./server/config.ts";
import { createLogger } from "./server/log.ts";
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
  const log = createLogger(config.logFormat);
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
  } else {
    const { host, pathname } = new URL(config.databaseUrl);
    log.info(`Database: Postgres at ${host}${pathname}`);
  }
  // pglite-socket interleaves concurrent connections' messages, so embedded gets one.
  const sql = connect(embedded?.url ?? config.databaseUrl!, { max: embedded ? 1 : 10 });
  const server = await serve({
    ...config,
    sql,
    log,
    crossInstance: embedded === null,
    // Retried with backoff while the database is unreachable; meanwhile /health says 503.
    async prepare() {
      const applied = await migrate(sql);
      log.info(
        applied.length ? `Applied migrations: ${applied.join(", ")}` : "Database is up to date",
      );
      const keys = await fillUsernameKeys(sql);
      if (keys.filled > 0) log.info(`Filled the username key of ${keys.filled} users`);
      if (keys.collisions.length > 0) {
        log.warn(
          `Warning: ${keys.collisions.length} users have a name whose key an older user's name ` +
            "holds; they keep their names without a key",
          { userIds: keys.collisions.slice(0, 20).join(",") },
        );
      }
    },
  });
  server.ready.catch(async (error) => {
    log.error("Cannot start: database migration failed", error);
    await server.shutdown({ graceMs: 0 });
    await sql.end({ timeout: 1 });
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
  log.info(
    `Accepting connections on port ${server.port}; the API opens once the database is ready`,
  );
  await server.ready;
  log.info(
    `parley listening on http://${config.hostname}:${server.port} (origins: ${
      config.origins.rules.map((rule) => rule.source).join(", ") || "none"
    })`,
  );
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
