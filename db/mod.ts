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
}

/** Opens a pool to `url`, mapping snake_case columns to camelCase fields. */
export function connect(url: string, options: ConnectOptions = {}): Sql {
  return postgres(url, {
    max: options.max ?? 10,
    transform: postgres.camel,
    onnotice: () => {},
    connection: { application_name: "parley" },
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

export { postgres };
