/**
 * The Postgres connection. Query modules (`users.ts`, `rooms.ts`, `messages.ts`)
 * take this `sql` as their first argument so they also work inside `sql.begin`.
 */
import type { Socket } from "node:net";
import postgres from "postgres";

/** A postgres.js client (or a transaction's scoped client). */
export type Sql = postgres.Sql;

/** A pool or a transaction of it (`sql.begin`): what a query that may run in either takes. */
export type Queryable = postgres.Sql | postgres.TransactionSql;

/** Options for `connect`. */
export interface ConnectOptions {
  /** Connections in the pool (default 10). */
  max?: number;
  /** Called with the text of every statement sent (postgres.js's `debug`), for tests. */
  onStatement?: (query: string) => void;
  /**
   * True when `url` is a connection pooler in transaction mode (PgBouncer, or what hosts offer
   * under that name), false for Postgres itself (default). Behind such a pooler consecutive
   * statements of one client may reach different server connections: named prepared
   * statements are off (a statement prepared on one does not exist on the other), and the
   * server-side timeouts below are not sent, because PgBouncer refuses startup parameters it
   * does not know ("unsupported startup parameter"). Pooled connections then run under the
   * database role's own `statement_timeout` and `lock_timeout` (none unless set with
   * `alter role ... set`).
   */
  pooler?: boolean;
  /**
   * Server-side `statement_timeout` of each direct connection, in milliseconds (default
   * 10 000): a statement running longer is cancelled by Postgres (SQLSTATE 57014), so one
   * stuck room cannot hold a connection for long. Null: the server's own setting (for
   * migrations, which may take longer). Not sent through a pooler.
   */
  statementTimeoutMs?: number | null;
  /**
   * Server-side `lock_timeout` of each direct connection, in milliseconds (default 2 000): a
   * statement waiting longer for a lock fails (SQLSTATE 55P03). Null: the server's own
   * setting. Not sent through a pooler.
   */
  lockTimeoutMs?: number | null;
  /** Seconds to wait for a connection to be established and answer (default 5). */
  connectTimeoutSeconds?: number;
  /**
   * Opens each connection's socket, already connecting (postgres.js's `socket` option, called
   * with where it would connect): the LISTEN connection (db/notify.ts) keeps hold of its socket
   * to destroy it. Default: postgres.js opens TCP to the URL's host and port itself.
   */
  socket?: (options: SocketTarget) => Socket;
}

/** Where postgres.js would connect: its parsed `host`, `port` and unix socket `path`. */
export interface SocketTarget {
  host: string[];
  port: number[];
  /** A unix socket path, or false for TCP. */
  path: string | false;
}

/** Default server-side `statement_timeout` of direct connections, in milliseconds. */
const STATEMENT_TIMEOUT_MS = 10_000;

/** Default server-side `lock_timeout` of direct connections, in milliseconds. */
const LOCK_TIMEOUT_MS = 2_000;

/**
 * Opens a pool to `url`, mapping snake_case columns to camelCase fields. On a direct connection
 * Postgres enforces `statement_timeout` and `lock_timeout` (sent as startup parameters); through
 * a pooler (`pooler: true`) statements are unnamed and no such parameters are sent.
 */
export function connect(url: string, options: ConnectOptions = {}): Sql {
  const pooler = options.pooler ?? false;
  const connection: Record<string, string | number> = { application_name: "parley" };
  if (!pooler) {
    const statementTimeout = options.statementTimeoutMs === undefined
      ? STATEMENT_TIMEOUT_MS
      : options.statementTimeoutMs;
    const lockTimeout = options.lockTimeoutMs === undefined
      ? LOCK_TIMEOUT_MS
      : options.lockTimeoutMs;
    if (statementTimeout !== null) connection.statement_timeout = statementTimeout;
    if (lockTimeout !== null) connection.lock_timeout = lockTimeout;
  }
  return postgres(url, {
    max: options.max ?? 10,
    prepare: !pooler,
    transform: postgres.camel,
    onnotice: () => {},
    connection,
    // postgres.js's own default is 30 s: a database that accepts TCP and never answers would
    // hold every call that long. Callers get SERVICE_UNAVAILABLE within this bound instead.
    connect_timeout: options.connectTimeoutSeconds ?? 5,
    // No array-type lookup on each new connection: parley reads no array columns, and that
    // lookup's promise is dropped when its connection dies mid-query, which ends the process
    // with an unhandled rejection (porsager/postgres #1192, #1205, #1223).
    fetch_types: false,
    ...(options.onStatement
      ? { debug: (_connection: number, query: string) => options.onStatement!(query) }
      : {}),
    // Documented in postgres.js's README ("fn returning custom socket to use"), not in its types.
    ...(options.socket ? { socket: options.socket } as Record<string, unknown> : {}),
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
  if (refusedStartupParameter(error) !== null) return false; // configuration: never passes
  if (error instanceof postgres.PostgresError) return TRANSIENT_SQLSTATES.test(error.code);
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && TRANSIENT_CONNECTION_CODES.has(code);
}

/**
 * The startup parameter a connection pooler refused, when `error` is that refusal (PgBouncer
 * answers "unsupported startup parameter: <name>" with SQLSTATE 08P01 to a parameter it does
 * not know, such as `statement_timeout`); null for any other error. A direct connection's
 * timeouts were then sent to a pooler: it is a configuration problem, not an outage.
 */
export function refusedStartupParameter(error: unknown): string | null {
  if (!(error instanceof postgres.PostgresError) || error.code !== "08P01") return null;
  return /^unsupported startup parameter: (\S+)/.exec(error.message)?.[1] ?? null;
}

export { postgres };
