/** Entry point: configuration from the environment, migrations, then the server. */
import { connect } from "./db/mod.ts";
import { migrate } from "./db/migrate.ts";
import { ConfigError, loadConfig } from "./server/config.ts";
import { consoleLogger as log } from "./server/log.ts";
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
  for (const warning of config.warnings) log.warn(`Warning: ${warning}`);

  const sql = connect(config.databaseUrl);
  try {
    const applied = await migrate(sql);
    log.info(
      applied.length ? `Applied migrations: ${applied.join(", ")}` : "Database is up to date",
    );
  } catch (error) {
    log.error("Cannot start: database migration failed", error);
    await sql.end({ timeout: 1 });
    Deno.exit(1);
  }

  const server = await serve({ ...config, sql, log });
  // Registered before the "listening" line, so a SIGTERM right after it still drains.
  Deno.addSignalListener("SIGTERM", async () => {
    log.info("SIGTERM: draining");
    await server.shutdown({ graceMs: 1000 });
    await sql.end({ timeout: 1 });
    log.info("Drained: exiting");
    Deno.exit(0);
  });
  log.info(
    `parley listening on http://${config.hostname}:${server.port} (origins: ${
      config.origins.rules.map((rule) => rule.source).join(", ") || "none"
    })`,
  );
}

if (import.meta.main) await main();
