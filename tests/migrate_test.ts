import assert from "node:assert/strict";
import { connect } from "../db/mod.ts";
import { migrate, readMigrations } from "../db/migrate.ts";
import { createTestDatabase, needsRealPostgres } from "./_helpers.ts";

const CONCURRENT = "two instances migrating one database at once apply each migration once";
Deno.test({ name: CONCURRENT, ignore: needsRealPostgres(CONCURRENT) }, async () => {
  await using db = await createTestDatabase();
  const a = connect(db.url, { max: 1 });
  const b = connect(db.url, { max: 1 });
  try {
    const [first, second] = await Promise.all([migrate(a), migrate(b)]);
    const all = await readMigrations();
    assert.equal(first.length + second.length, all.length);
    assert.ok(first.length === 0 || second.length === 0, "one instance did all the work");
    const rows = await a`select id from schema_migrations order by id`;
    assert.deepEqual(rows.map((row) => row.id), all.map((m) => m.id));
    assert.deepEqual(await migrate(a), [], "a restart applies nothing");
  } finally {
    await a.end();
    await b.end();
  }
});

Deno.test("migration files with a gap or a bad name are refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/00001_init.sql`, "select 1;");
    await Deno.writeTextFile(`${dir}/00003_later.sql`, "select 1;");
    await assert.rejects(readMigrations(new URL(`file://${dir}/`)), /expected number 2, found 3/);
    await Deno.remove(`${dir}/00003_later.sql`);
    await Deno.writeTextFile(`${dir}/2_bad.sql`, "select 1;");
    await assert.rejects(readMigrations(new URL(`file://${dir}/`)), /not named NNNNN_name.sql/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a failing migration rolls back entirely and is not recorded", async () => {
  await using db = await createTestDatabase();
  const sql = connect(db.url, { max: 1 });
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/00001_ok.sql`, "create table kept (id int);");
    await Deno.writeTextFile(`${dir}/00002_broken.sql`, "create table half (id int); select nope;");
    await assert.rejects(migrate(sql, new URL(`file://${dir}/`)), /nope/);
    const [row] = await sql`select to_regclass('kept') as kept, to_regclass('half') as half`;
    assert.deepEqual([row.kept, row.half], [null, null]);
  } finally {
    await sql.end();
    await Deno.remove(dir, { recursive: true });
  }
});
