/**
 * Embedded Postgres: PGlite (Postgres 18 compiled to WebAssembly) kept on disk, served on
 * a loopback port by pglite-socket, so the app reaches it through the same postgres.js
 * code as a real server. One process only: PGlite is a single session, and LISTEN/NOTIFY
 * across connections does not deliver.
 */
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import { dirname } from "node:path";

/** Raised when another process already owns the data folder (it holds its lock file). */
export class DataDirInUseError extends Error {
  constructor(dataDir: string) {
    super(
      `The embedded database in ${dataDir} is in use by another parley process: ` +
        "stop it first, or give this one another PGLITE_DIR",
    );
    this.name = "DataDirInUseError";
  }
}

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
 *
 * One process owns a data folder: PGlite keeps the database in memory and writes it back, so
 * two processes on one folder would each overwrite the other's writes. The owner holds an
 * exclusive lock (flock) on `<dataDir>.lock` until `close()` or its exit; a second start
 * throws `DataDirInUseError` before it opens anything.
 */
export async function startEmbedded(dataDir: string | null): Promise<EmbeddedPostgres> {
  let lock: Deno.FsFile | null = null;
  if (dataDir !== null) {
    const lockPath = `${dataDir.replace(/\/+$/, "")}.lock`;
    await Deno.mkdir(dirname(lockPath), { recursive: true });
    lock = await Deno.open(lockPath, { read: true, write: true, create: true });
    if (!(await lock.tryLock(true))) {
      lock.close();
      throw new DataDirInUseError(dataDir);
    }
    await Deno.mkdir(dataDir, { recursive: true });
  }
  let db: PGlite;
  try {
    db = await PGlite.create(dataDir ?? undefined);
  } catch (error) {
    lock?.close();
    throw error;
  }
  // One connection: the app's pool of one. Nothing else on this machine gets in meanwhile.
  const server = new PGLiteSocketServer({ db, host: "127.0.0.1", port: 0, maxConnections: 1 });
  await server.start();
  return {
    url: `postgres://postgres@${server.getServerConn()}/postgres`,
    dataDir,
    async close() {
      await server.stop();
      await db.close();
      lock?.close(); // closing the file releases its lock
    },
  };
}
