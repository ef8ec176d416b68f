/**
 * The Postgres connection. Query modules (`users.ts`, `rooms.ts`, `messages.ts`)
 * take this `sql` as their first argument so they also work inside `sql.begin`.
 */
import postgres from "postgres";

/** A postgres.js client (or a transaction's scoped client). */
export type Sql = postgres.Sql;

/** Options for `connect`. */
export interface ConnectOptions {
  /** Connections in the pool (default 10). */
  max?: number;
  /**
   * Named prepared statements (default true). Off behind a transaction-mode pooler
   * (PgBouncer), where consecutive statements of one client may reach different server
   * connections and a statement prepared on one does not exist on the other.
   */
  prepare?: boolean;
  /** Seconds to wait for a connection to be established and answer (default 5). */
  connectTimeoutSeconds?: number;
}

/** Opens a pool to `url`, mapping snake_case columns to camelCase fields. */
export function connect(url: string, options: ConnectOptions = {}): Sql {
  return postgres(url, {
    max: options.max ?? 10,
    prepare: options.prepare ?? true,
    transform: postgres.camel,
    onnotice: () => {},
    connection: { application_name: "parley" },
    // postgres.js's own default is 30 s: a database that accepts TCP and never answers would
    // hold every call that long. Callers get SERVICE_UNAVAILABLE within this bound instead.
    connect_timeout: options.connectTimeoutSeconds ?? 5,
    // No array-type lookup on each new connection: parley reads no array columns, and that
    // lookup's promise is dropped when its connection dies mid-query, which ends the process
    // with an unhandled rejection (porsager/postgres #1192, #1205, #1223).
    fetch_types: false,
  });
}

/** True when Postgres answers a trivial query within `timeoutMs`. */
export async function ping(sql: Sql, timeoutMs: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([sql`select 1`.then(() => true), timeout]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * SQLSTATEs of failures that say nothing about the request and may pass by themselves:
 * connection exceptions (class 08), operator intervention (57P01 admin shutdown, 57P02 crash
 * shutdown, 57P03 cannot connect now, 57014 query canceled by a statement timeout),
 * 53300 too many connections, 55P03 lock not available (a lock timeout), and 40001/40P01
 * (serialization failure, deadlock). PostgreSQL's Appendix A lists them.
 */
const TRANSIENT_SQLSTATES = /^(08...|57P0[123]|57014|53300|55P03|40001|40P01)$/;

/** Codes postgres.js and Node's sockets give to a connection that failed or went away. */
const TRANSIENT_CONNECTION_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_DESTROYED",
  "CONNECTION_ENDED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * True when `error` comes from the database or the network being unavailable (not from the
 * query): worth a `SERVICE_UNAVAILABLE` with a retry hint, never a crash or a 500.
 */
export function isTransientDatabaseError(error: unknown): boolean {
  if (error instanceof postgres.PostgresError) return TRANSIENT_SQLSTATES.test(error.code);
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && TRANSIENT_CONNECTION_CODES.has(code);
}

export { postgres };
