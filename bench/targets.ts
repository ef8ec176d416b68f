/**
 * What the bench measures and against what: parley and the bare broadcast server as child
 * processes (pinned to core 0), parley's users and rooms set up through its HTTP API, and the
 * postgres.js ceilings for persisted sends, run against the same database.
 *
 * parley is spawned from the working tree as `deno run --allow-net --allow-env --allow-read=.
 * main.ts`, with the abuse limits lifted: one load generator on one address measures the core,
 * not the limits. Only the wire is used to talk to it; the ceilings alone know the schema
 * (`rooms`, `messages`, db/migrations/).
 */
import postgres from "postgres";
import { type ServerProcess, spawnProcess, terminate } from "../scripts/server_process.ts";
import {
  bareEndpoint,
  CALL_TIMEOUT_MS,
  type Endpoint,
  type Kind,
  parleyEndpoint,
  pool,
  type Room,
  sleep,
} from "./load.ts";
import { type Machine, serverPrefix } from "./process_metrics.ts";
import type { Notes } from "./report.ts";

/** A server under measurement. */
export interface Target {
  kind: Kind;
  endpoint: Endpoint;
  server: ServerProcess;
}

/** Where and how servers start, and the run's register of live processes (for cleanup). */
export interface ServerSettings {
  machine: Machine;
  /** The bench database (parley migrates it at startup). */
  databaseUrl: string;
  /** The repository whose main.ts is parley. */
  root: URL;
  /** Every server still running; startTarget adds, stopTarget removes. */
  children: Set<ServerProcess>;
}

/**
 * parley's environment: loopback, a port of its choosing, every abuse limit lifted (variables
 * server/config.ts reads; subscriptions per socket stay at their default, one is used).
 */
const PARLEY_ENV: Readonly<Record<string, string>> = {
  PORT: "0",
  HOST: "127.0.0.1",
  ALLOWED_ORIGINS: "http://localhost:3000",
  RATE_LIMIT_SENDS: "off",
  RATE_LIMIT_JOINS: "off",
  RATE_LIMIT_CREATES: "off",
  RATE_LIMIT_SIGNUPS: "off",
  RATE_LIMIT_SIGN_INS: "off",
  // rooms.typing and messages.react: the typing scenario calls as fast as it is answered.
  RATE_LIMIT_REACTIONS: "off",
  RATE_LIMIT_CONNECTION_WRITES: "off",
  MAX_CONNECTIONS_PER_ADDRESS: "100000",
  MAX_CONNECTIONS: "100000",
};

/** Output lines kept per stream: parley logs every WebSocket opened and closed. */
const KEEP_LINES = 1000;

/**
 * Starts `kind` on core 0 and waits until it serves (parley: its listening line, then
 * `GET /health` answering 200, as migrations may still be running). Throws with the server's
 * output when it exits or does not get there within a minute.
 */
export async function startTarget(kind: Kind, settings: ServerSettings): Promise<Target> {
  const server = spawnProcess({
    args: kind === "parley"
      ? ["run", "--allow-net", "--allow-env", "--allow-read=.", "main.ts"]
      : ["run", "--allow-net", "--allow-env", "bench/bare_server.ts"],
    env: kind === "parley"
      ? { ...PARLEY_ENV, DATABASE_URL: settings.databaseUrl }
      : { PORT: "0", HOST: "127.0.0.1" },
    prefix: serverPrefix(settings.machine),
    cwd: settings.root,
    keepLines: KEEP_LINES,
  });
  settings.children.add(server);
  try {
    const [, http] = await server.waitForLine(
      "stdout",
      /^(?:parley|bare) listening on (http:\/\/[^\s;]+)/,
      60_000,
    );
    if (kind === "parley") await waitForHealth(http, server);
    const endpoint = kind === "parley" ? parleyEndpoint(http) : bareEndpoint(http);
    return { kind, endpoint, server };
  } catch (error) {
    await server[Symbol.asyncDispose]();
    settings.children.delete(server);
    throw error;
  }
}

/** Polls `GET /health` until 200; throws after 30 s or when the process exits. */
async function waitForHealth(http: string, server: ServerProcess): Promise<void> {
  const deadline = performance.now() + 30_000;
  let last = "";
  while (performance.now() < deadline && !server.exit) {
    try {
      const response = await fetch(`${http}/health`, { signal: AbortSignal.timeout(2000) });
      last = `HTTP ${response.status} ${await response.text()}`;
      if (response.ok) return;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(100);
  }
  throw new Error(
    `parley did not become healthy (last answer: ${last})\n` +
      `stderr:\n${server.stderr.slice(-20).join("\n")}`,
  );
}

/**
 * Stops a server (SIGTERM, then SIGKILL after 3 s). Notes whether it had exited by itself, and
 * what it printed on stderr (parley's warnings and errors).
 */
export async function stopTarget(target: Target, settings: ServerSettings, notes: Notes) {
  const { server, kind } = target;
  if (server.exit) {
    notes.add(
      `${kind} server exited by itself`,
      `${JSON.stringify(server.exit.status)}; last stdout: ${server.stdout.slice(-5).join(" | ")}`,
    );
  } else if (!await terminate(server)) {
    notes.add(`${kind} server`, "still running 3 s after SIGTERM: killed");
  }
  await server[Symbol.asyncDispose]();
  settings.children.delete(server);
  for (const line of server.stderr) notes.add(`${kind} server stderr`, line, 10);
}

// ---------------------------------------------------------------------------------------------
// Setup through parley's HTTP API

/** A user the bench signed up. */
export interface Member {
  id: string;
  username: string;
  token: string;
}

/** A room the bench created, with its members (the ceilings insert as them). */
export interface BenchRoom extends Room {
  members: Member[];
}

/** Most calls in one HTTP batch (parley's MAX_BATCH_SIZE). */
const BATCH = 20;

/**
 * Calls `path` once per input in tRPC HTTP batches (`POST /trpc/p,p,...?batch=1`, superjson
 * `{"json": ...}` per input); returns the outputs in order, throwing on any error.
 */
async function callBatched<T>(
  http: string,
  path: string,
  inputs: unknown[],
  token?: string,
): Promise<T[]> {
  const outputs: T[] = [];
  for (let i = 0; i < inputs.length; i += BATCH) {
    const chunk = inputs.slice(i, i + BATCH);
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const body = Object.fromEntries(chunk.map((input, j) => [String(j), { json: input }]));
    const response = await fetch(
      `${http}/trpc/${chunk.map(() => path).join(",")}?batch=1`,
      {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(CALL_TIMEOUT_MS * 2),
      },
    );
    const text = await response.text();
    const answers = JSON.parse(text) as { result?: { data: { json: T } } }[];
    if (!response.ok || !Array.isArray(answers) || answers.some((answer) => !answer.result)) {
      throw new Error(`Setup call ${path} failed: HTTP ${response.status} ${text.slice(0, 500)}`);
    }
    outputs.push(...answers.map((answer) => answer.result!.data.json));
  }
  return outputs;
}

/** Signs up `count` users named `<prefix><i>`. */
export async function createUsers(http: string, count: number, prefix: string): Promise<Member[]> {
  const inputs = Array.from({ length: count }, (_, i) => ({ username: `${prefix}${i}` }));
  const created = await callBatched<{ user: { id: string; username: string }; token: string }>(
    http,
    "users.create",
    inputs,
  );
  return created.map(({ user, token }) => ({ id: user.id, username: user.username, token }));
}

/**
 * Creates `count` rooms named `<name> <i>` with `perRoom` members each, taken from `users` in
 * turn (room i: users i·perRoom, i·perRoom + 1, ... modulo their number); the first creates the
 * room, the others join it.
 */
export async function createRooms(
  http: string,
  users: Member[],
  spec: { count: number; perRoom: number; name: string },
): Promise<BenchRoom[]> {
  const membersOf = (r: number) =>
    Array.from({ length: spec.perRoom }, (_, k) => users[(r * spec.perRoom + k) % users.length]);
  // Calls are batched per user (a batch carries one token), many users' batches at once.
  const byCreator = Map.groupBy(
    Array.from({ length: spec.count }, (_, r) => r),
    (r) => membersOf(r)[0],
  );
  const ids = new Array<string>(spec.count);
  await pool([...byCreator], 8, async ([creator, rooms]) => {
    const created = await callBatched<{ id: string }>(
      http,
      "rooms.create",
      rooms.map((r) => ({ name: `${spec.name} ${r}` })),
      creator.token,
    );
    rooms.forEach((r, i) => ids[r] = created[i].id);
  });
  const joins = Array.from(
    { length: spec.count },
    (_, r) => membersOf(r).slice(1).map((member) => ({ member, roomId: ids[r] })),
  ).flat();
  await pool(
    [...Map.groupBy(joins, (join) => join.member)],
    8,
    ([member, list]) =>
      callBatched(http, "rooms.join", list.map(({ roomId }) => ({ roomId })), member.token),
  );
  return ids.map((id, r) => {
    const members = membersOf(r);
    return { id, members, tokens: members.map((member) => member.token) };
  });
}

// ---------------------------------------------------------------------------------------------
// Postgres: the bench's own connections, parley's backends, the ceilings

/** application_name of every connection the bench opens to the bench database. */
export const BENCH_APP = "parley_bench";

/** application_name of the ceilings' pool, so its backends are told apart from parley's. */
export const CEILING_APP = "parley_bench_ceiling";

/** Opens a pool of `max` connections to `url` named `app` in pg_stat_activity. */
export function openPool(url: string, max: number, app: string): postgres.Sql {
  return postgres(url, { max, onnotice: () => {}, connection: { application_name: app } });
}

/**
 * The pids of the Postgres backends serving `database`: parley's (every client backend the
 * bench did not open) or the ceilings'. Read through `admin`, a connection to another database.
 */
export function backendPids(
  admin: postgres.Sql,
  database: string,
  whose: "parley" | "ceiling",
): () => Promise<number[]> {
  return async () => {
    const rows = whose === "ceiling"
      ? await admin<{ pid: number }[]>`
          select pid from pg_stat_activity
          where datname = ${database} and application_name = ${CEILING_APP}`
      : await admin<{ pid: number }[]>`
          select pid from pg_stat_activity
          where datname = ${database} and backend_type = 'client backend'
            and application_name not like ${BENCH_APP + "%"}`;
    return rows.map((row) => row.pid);
  };
}

/** Rooms whose messages are not numbered 1..last_seq exactly once: the gap check. */
export async function roomsWithGaps(sql: postgres.Sql, roomIds: string[]): Promise<string[]> {
  const rows = await sql<{ id: string; lastSeq: number; count: number; maxSeq: number | null }[]>`
    select r.id, r.last_seq as "lastSeq", count(m.seq)::int as count, max(m.seq) as "maxSeq"
    from rooms r left join messages m on m.room_id = r.id
    where r.id = any(${roomIds}::uuid[])
    group by r.id, r.last_seq
  `;
  return rows
    .filter((row) => row.count !== row.lastSeq || (row.maxSeq ?? 0) !== row.lastSeq)
    .map((row) =>
      `${row.id}: ${row.count} messages, max seq ${row.maxSeq}, last_seq ${row.lastSeq}`
    );
}

/** A ceiling: one operation a worker repeats, and what to undo afterwards. */
export interface Ceiling {
  op(worker: number): Promise<void>;
  dispose(): Promise<void>;
}

/**
 * Where worker `worker` of a closed loop sends: room w mod rooms, as its ⌊w / rooms⌋-th member,
 * so that concurrent senders of one room are different users. parley's senders and the
 * ceilings' workers sit the same way.
 */
export function seatOf(rooms: BenchRoom[], worker: number): { room: BenchRoom; member: Member } {
  const room = rooms[worker % rooms.length];
  return { room, member: room.members[Math.floor(worker / rooms.length) % room.members.length] };
}

/** A `messages` row from `worker`'s seat, without its seq. */
function messageRow(rooms: BenchRoom[], worker: number, content: string) {
  const { room, member } = seatOf(rooms, worker);
  return {
    room_id: room.id,
    user_id: member.id,
    username: member.username,
    avatar_url: null,
    content,
    client_message_id: crypto.randomUUID(),
  };
}

/**
 * The seq-numbering transaction a send needs at the least, as postgres.js runs it:
 * `BEGIN; UPDATE rooms SET last_seq = last_seq + 1, last_event_id = last_event_id + 1 ...
 * RETURNING ...; INSERT INTO messages ...; COMMIT`. Workers sit as `seatOf` says.
 */
export function seqTransaction(sql: postgres.Sql, rooms: BenchRoom[], content: string): Ceiling {
  return {
    async op(worker) {
      const row = messageRow(rooms, worker, content);
      await sql.begin(async (tx) => {
        // The room's two counters, as parley's send statement moves them (migration 00006).
        const [{ last_seq: seq, last_event_id: event_id }] = await tx<
          { last_seq: number; last_event_id: string }[]
        >`
          update rooms set last_seq = last_seq + 1, last_event_id = last_event_id + 1
          where id = ${row.room_id} returning last_seq, last_event_id
        `;
        await tx`insert into messages ${tx({ ...row, seq, event_id })}`;
      });
    },
    dispose: () => Promise.resolve(),
  };
}

/**
 * A plain single-row insert into a scratch table shaped like `messages` (its columns, defaults
 * and unique indexes; no foreign keys), dropped by `dispose`: what one round trip per send costs
 * when nothing is numbered. Seqs come from a counter here, unique per room.
 */
export async function plainInsert(
  sql: postgres.Sql,
  rooms: BenchRoom[],
  content: string,
): Promise<Ceiling> {
  const table = `bench_plain_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  await sql`
    create table ${
    sql(table)
  } (like messages including defaults including constraints including indexes)
  `;
  const seqs = rooms.map(() => 0);
  return {
    async op(worker) {
      const row = { ...messageRow(rooms, worker, content), seq: ++seqs[worker % rooms.length] };
      await sql`insert into ${sql(table)} ${sql(row)}`;
    },
    async dispose() {
      await sql`drop table if exists ${sql(table)}`;
    },
  };
}
