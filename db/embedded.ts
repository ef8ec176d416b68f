/**
 * Embedded Postgres: PGlite (Postgres 18 compiled to WebAssembly) kept on disk, served on
 * a loopback port by pglite-socket, so the app reaches it through the same postgres.js
 * code as a real server. One process only: PGlite is a single session, and LISTEN/NOTIFY
 * across connections does not deliver.
 */
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

/** A running embedded database. */
export interface EmbeddedPostgres {
  /** A postgres:// URL for postgres.js. */
  url: string;
  /** Where the data lives, or null when it is in memory. */
  dataDir: string | null;
  close(): Promise<void>;
}

/**
 * Starts PGlite on `dataDir` (created if missing; in memory when null) and serves it on
 * 127.0.0.1 at a free port. Connect with a pool of one: pglite-socket interleaves the
 * messages of concurrent connections outside transactions.
 */
export async function startEmbedded(dataDir: string | null): Promise<EmbeddedPostgres> {
  if (dataDir !== null) await Deno.mkdir(dataDir, { recursive: true });
  const db = await PGlite.create(dataDir ?? undefined);
  // One connection: the app's pool of one. Nothing else on this machine gets in meanwhile.
  const server = new PGLiteSocketServer({ db, host: "127.0.0.1", port: 0, maxConnections: 1 });
  await server.start();
  return {
    url: `postgres://postgres@${server.getServerConn()}/postgres`,
    dataDir,
    async close() {
      await server.stop();
      await db.close();
    },
  };
}
