/**
 * The migration runner: numbered files `db/migrations/NNNNN_name.sql`, applied in
 * order inside one transaction under a Postgres advisory lock, so instances that
 * start together never race. Applied files are recorded in `schema_migrations`.
 */
import type { Sql } from "./mod.ts";

/** Advisory lock key shared by every parley instance ("parley" as bytes). */
const MIGRATION_LOCK = 0x7061726c6579;

const MIGRATIONS_DIR = new URL("./migrations/", import.meta.url);

/** A migration file as found on disk. */
export interface Migration {
  id: number;
  name: string;
  sql: string;
}

/** Reads the numbered migration files; throws on a bad name, a duplicate or a gap. */
export async function readMigrations(
  dir: URL = MIGRATIONS_DIR,
): Promise<Migration[]> {
  const migrations: Migration[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.isFile || !entry.name.endsWith(".sql")) continue;
    const match = /^(\d{5})_([a-z0-9_]+)\.sql$/.exec(entry.name);
    if (!match) {
      throw new Error(
        `Cannot read migrations: "${entry.name}" is not named NNNNN_name.sql`,
      );
    }
    const sql = await Deno.readTextFile(new URL(entry.name, dir));
    migrations.push({ id: Number(match[1]), name: match[2], sql });
  }
  migrations.sort((a, b) => a.id - b.id);
  migrations.forEach((migration, i) => {
    if (migration.id !== i + 1) {
      throw new Error(
        `Cannot read migrations: expected number ${
          i + 1
        }, found ${migration.id} (${migration.name})`,
      );
    }
  });
  return migrations;
}

/** Applies every pending migration; returns the names of those it applied. */
export async function migrate(
  sql: Sql,
  dir: URL = MIGRATIONS_DIR,
): Promise<string[]> {
  const migrations = await readMigrations(dir);
  return await sql.begin(async (sql) => {
    await sql`select pg_advisory_xact_lock(${MIGRATION_LOCK})`;
    await sql`
      create table if not exists schema_migrations (
        id integer primary key,
        name text not null,
        applied_at timestamptz not null default now()
      )
    `;
    const rows = await sql<{ id: number }[]>`select id from schema_migrations`;
    const applied = new Set(rows.map((row) => row.id));
    const done: string[] = [];
    for (const migration of migrations) {
      if (applied.has(migration.id)) continue;
      await sql.unsafe(migration.sql);
      await sql`insert into schema_migrations (id, name) values (${migration.id}, ${migration.name})`;
      done.push(`${String(migration.id).padStart(5, "0")}_${migration.name}`);
    }
    return done;
  });
}
