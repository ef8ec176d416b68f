/**
 * The scenarios of issue #10, each measuring parley beside its ceiling in the same run and
 * returning its rows of the report:
 *
 * - fan-out (10 rooms × 50 subscribers; 1 × 2,000; 1,000 × 2) against the bare server;
 * - persisted sends, 32 senders over HTTP and over WebSocket, against postgres.js loops;
 * - memory and connect storms (5,000 then 10,000 idle subscribed sockets) on fresh processes;
 * - a reconnect storm of 2,000 subscribers resuming with lastEventId under live sends;
 * - typing (issue #12): every member of a 50-member room typing, its CPU per delivery against
 *   the message fan-out's of the same run.
 *
 * A scenario gets everything through its `RunContext`; what it creates (rooms, processes,
 * sockets, scratch tables) it closes or hands back to the context for cleanup.
 */
import type postgres from "postgres";
import {
  allSubs,
  caughtUp,
  closeAll,
  closedLoop,
  collectOwnGarbage,
  connectAll,
  type Connecting,
  type Delivery,
  drain,
  forgetSubs,
  type Kind,
  type Latency,
  messageContent,
  newFleet,
  openCaller,
  paced,
  probe,
  reconnectAll,
  saturate,
  type Saturation,
  sendInput,
  sendOver,
  sleep,
  startSending,
  verify,
} from "./load.ts";
import {
  type CpuMeter,
  type CpuUsage,
  type Machine,
  rssKiB,
  startCpuMeter,
} from "./process_metrics.ts";
import type { Figure, Goal, Notes, Section } from "./report.ts";
import {
  closeTyping,
  connectTyping,
  newTypingRoom,
  saturateTyping,
  verifyTyping,
  warmUp,
} from "./typing.ts";
import {
  backendPids,
  type BenchRoom,
  type Ceiling,
  CEILING_APP,
  createRooms,
  createUsers,
  type Member,
  openPool,
  plainInsert,
  roomsWithGaps,
  seatOf,
  seqTransaction,
  type ServerSettings,
  startTarget,
  stopTarget,
  type Target,
} from "./targets.ts";

/** Knobs of the scenarios (main.ts reads them from the command line). */
export interface ScenarioOptions {
  /** HTTP senders of a saturation window, over all rooms; null: `sendersFor`'s default. */
  senders: number | null;
  /** Saturation and paced windows of the 10 × 50 fan-out, s. */
  fanoutSeconds: number;
  /** Saturation windows of 1 × 2,000 and 1,000 × 2, s. */
  shapeSeconds: number;
  /** Each persisted-send window (parley HTTP, parley WebSocket, two ceilings), s. */
  sendSeconds: number;
  /** Most messages per room in flight during saturation. */
  window: number;
  /** Subscribers setting up at once in the memory scenario's connect storms. */
  connectConcurrency: number;
  /** Idle subscribed sockets of the memory scenario's storms, in order. */
  memoryConns: number[];
  /** Messages per second sent during the reconnect storm. */
  stormRate: number;
  /** The typing window, s. */
  typingSeconds: number;
}

/** What a run shares between scenarios; one per run, nothing of it outlives the run. */
export interface RunContext {
  options: ScenarioOptions;
  machine: Machine;
  settings: ServerSettings;
  /** A connection to the cluster's `postgres` database (pg_stat_activity). */
  admin: postgres.Sql;
  /** A connection to the bench database. */
  db: postgres.Sql;
  database: string;
  notes: Notes;
  log(line: string): void;
  /** The parley and bare processes the scenarios before the memory one share. */
  shared: Partial<Record<Kind, Target>>;
  /** Users signed up so far (made on first need). */
  users: Member[];
  /** Room sets by name, made on first need. */
  rooms: Map<string, BenchRoom[]>;
  /** The last seq of each room on the shared bare server, which numbers in memory. */
  bareSeqs: Map<string, number>;
  /** parley's saturation window of the 10 × 50 fan-out in this run, once it ran (for typing). */
  messageFanout: Saturation | null;
}

/** Members every room set draws from. */
const USERS = 50;

/** Concurrent senders and ceiling workers of the persisted-send scenario (issue #10). */
const SEND_WORKERS = 32;

/** Subscribers setting up at once outside the storms. */
const CONNECT_CONCURRENCY = 50;

/**
 * HTTP senders of a saturation window over `rooms` rooms: enough to fill every room's window
 * (a sender waits for its answer, and parley answers after a commit that carries the sends of
 * one room together: 4 a room measured parley's answer time, not its fan-out), 160 at most
 * (1,000 rooms share them). `--senders` overrides it.
 */
function sendersFor(ctx: RunContext, rooms: number): number {
  return ctx.options.senders ?? Math.min(ctx.options.window * rooms, 160);
}

/** The shared process of `kind`, started on first need. */
async function sharedTarget(ctx: RunContext, kind: Kind): Promise<Target> {
  let target = ctx.shared[kind];
  if (!target) {
    target = ctx.shared[kind] = await startTarget(kind, ctx.settings);
    ctx.log(`${kind} pid ${target.server.pid} at ${target.endpoint.http}`);
  }
  return target;
}

/** The room set `name` (`count` rooms of `perRoom` members), created through parley once. */
async function roomSet(
  ctx: RunContext,
  parley: Target,
  spec: { name: string; count: number; perRoom: number },
): Promise<BenchRoom[]> {
  let rooms = ctx.rooms.get(spec.name);
  if (!rooms) {
    if (ctx.users.length === 0) {
      ctx.users = await createUsers(parley.endpoint.http, USERS, "bench_");
    }
    rooms = await createRooms(parley.endpoint.http, ctx.users, spec);
    ctx.rooms.set(spec.name, rooms);
    ctx.log(`${spec.count} rooms × ${spec.perRoom} members (${spec.name})`);
  }
  return rooms;
}

/** The 10 rooms of the 10 × 50 fan-out, where the persisted sends go too. */
const FANOUT_ROOMS = { name: "fanout", count: 10, perRoom: 50 };

/** The one room of the typing scenario: every one of its 50 members subscribes and types. */
const TYPING_ROOM = { name: "typing", count: 1, perRoom: 50 };

/**
 * The scenarios, in the order a run takes them (typing right after the fan-out it is compared
 * with; memory last: it wants the shared servers gone).
 */
export const SCENARIOS = ["fanout", "typing", "big", "small", "sends", "storm", "memory"] as const;

/** A scenario's name, also its section's key in the report. */
export type ScenarioName = typeof SCENARIOS[number];

/** Runs scenario `name` of one run. */
export function runScenario(ctx: RunContext, name: ScenarioName): Promise<Section> {
  const { fanoutSeconds: a, shapeSeconds: b } = ctx.options;
  switch (name) {
    case "fanout":
      return fanout(ctx, {
        key: name,
        title: `(a) fan-out 10 rooms × 50 subscribers, ${a} s windows; ceiling: bare server`,
        rooms: FANOUT_ROOMS,
        subs: 50,
        paced: true,
      });
    case "big":
      return fanout(ctx, {
        key: name,
        title: `(b) fan-out 1 room × 2,000 subscribers, ${b} s; ceiling: bare server`,
        rooms: { name, count: 1, perRoom: 50 },
        subs: 2000,
        paced: false,
      });
    case "small":
      return fanout(ctx, {
        key: name,
        title: `(b) fan-out 1,000 rooms × 2 subscribers, ${b} s; ceiling: bare server`,
        rooms: { name, count: 1000, perRoom: 2 },
        subs: 2,
        paced: false,
      });
    case "typing":
      return typing(ctx);
    case "sends":
      return sends(ctx);
    case "storm":
      return storm(ctx);
    case "memory":
      return memory(ctx);
  }
}

/** Cores other processes may use in a window before its figures are called unreliable. */
const NOISE_CORES = 0.25;

/**
 * Starts CPU meters for `label`'s windows (the server's, and parley's Postgres backends), each
 * noting a window in which other processes or the hypervisor took more than NOISE_CORES.
 */
function meterFor(
  ctx: RunContext,
  label: string,
  serverPid: number | null,
  postgresPids?: () => Promise<number[]>,
): () => Promise<CpuMeter> {
  return async () => {
    const meter = await startCpuMeter(ctx.machine, serverPid, postgresPids);
    return {
      async stop() {
        const usage = await meter.stop();
        const noise = usage.otherCores + usage.stealCores;
        if (noise > NOISE_CORES) {
          ctx.notes.add(
            "noisy window",
            `${label}: other processes took ${noise.toFixed(2)} cores: its figures are unreliable`,
          );
        }
        return usage;
      },
    };
  };
}

/** The meter of a target's windows: its server process, and for parley its Postgres backends. */
function targetMeter(ctx: RunContext, target: Target, label: string) {
  const backends = target.kind === "parley"
    ? backendPids(ctx.admin, ctx.database, "parley")
    : undefined;
  return meterFor(ctx, label, target.server.pid, backends);
}

const pct = (usage: CpuUsage, us: number) => us / 1e6 / usage.seconds * 100;

/** A row judged on parley's own figure (no ratio): a count, a time, a before/after ratio. */
function check(
  label: string,
  values: { parley: number; ceiling: number | null },
  goal: Omit<Goal, "on">,
  digits = 0,
): Figure {
  return { label, ...values, digits, ratio: false, goal: { on: "parley", ...goal } };
}

// ---------------------------------------------------------------------------------------------
// (a, b) Fan-out

/** A fan-out shape: rooms × subscribers, and whether latency is measured too. */
interface FanoutShape {
  key: string;
  title: string;
  rooms: { name: string; count: number; perRoom: number };
  subs: number;
  /** Measure latency at half of each server's own saturation rate (10 × 50 only). */
  paced: boolean;
}

/** What one server did in a fan-out scenario. */
interface FanoutRun {
  connect: Connecting;
  sat: Saturation;
  lat: Latency | null;
  delivery: Delivery;
}

/**
 * Fan-out on the shared processes, bare server first: subscribers connect, a probe warms up,
 * then a saturation window and (optionally) a paced window at half the server's own rate;
 * every subscriber's seqs are verified at the end.
 */
async function fanout(ctx: RunContext, shape: FanoutShape): Promise<Section> {
  const parley = await sharedTarget(ctx, "parley");
  const rooms = await roomSet(ctx, parley, shape.rooms);
  const seconds = shape.paced ? ctx.options.fanoutSeconds : ctx.options.shapeSeconds;
  const senders = sendersFor(ctx, rooms.length);
  const runs = {} as Record<Kind, FanoutRun>;
  for (const kind of ["bare", "parley"] as const) {
    const target = await sharedTarget(ctx, kind);
    const fleet = newFleet(target.endpoint, rooms, {
      label: `${kind} ${shape.key}`,
      notes: ctx.notes,
      window: ctx.options.window,
      lastSeqs: await lastSeqs(ctx, kind, rooms),
    });
    try {
      const connect = await connectAll(fleet, () => shape.subs, CONNECT_CONCURRENCY);
      ctx.log(`${fleet.label}: ${connect.connected} subscribers in ${Math.round(connect.ms)} ms`);
      await sleep(200);
      await probe(fleet, 10_000);
      const sat = await saturate(
        fleet,
        { seconds, senders },
        targetMeter(ctx, target, fleet.label),
      );
      ctx.log(
        `${fleet.label}: ${Math.round(sat.deliveriesPerSec)} deliveries/s, ` +
          `${Math.round(sat.sendsPerSec)} sends/s, server core ${
            pct(sat.cpu, sat.cpu.serverUs).toFixed(0)
          }%, load generator core ${pct(sat.cpu, sat.cpu.loadgenUs).toFixed(0)}%`,
      );
      let lat: Latency | null = null;
      if (shape.paced) {
        const rate = sat.deliveriesPerSec / 2 / shape.subs;
        const watch = await targetMeter(ctx, target, `${fleet.label} paced`)();
        lat = await paced(fleet, { seconds, rate, maxInflight: 512 });
        await watch.stop();
        ctx.log(
          `${fleet.label}: paced ${rate.toFixed(1)} msg/s: p50 ${lat.p50Ms.toFixed(2)} ms, ` +
            `p99 ${lat.p99Ms.toFixed(2)} ms`,
        );
      }
      runs[kind] = { connect, sat, lat, delivery: verify(fleet) };
    } finally {
      await closeAll(fleet);
      if (kind === "bare") {
        for (const room of fleet.rooms) ctx.bareSeqs.set(room.room.id, room.maxSeq);
      }
    }
  }
  if (shape.key === "fanout") ctx.messageFanout = runs.parley.sat;
  return { key: shape.key, title: shape.title, figures: fanoutFigures(runs, shape.paced) };
}

/**
 * Where each room's seq stands on `kind`'s shared process: parley numbers in the database
 * (read through the bench's connection), the bare server in memory.
 */
async function lastSeqs(ctx: RunContext, kind: Kind, rooms: BenchRoom[]): Promise<number[]> {
  if (kind === "bare") return rooms.map((room) => ctx.bareSeqs.get(room.id) ?? 0);
  const rows = await ctx.db<{ id: string; lastSeq: number }[]>`
    select id, last_seq as "lastSeq" from rooms where id = any(${rooms.map((r) => r.id)}::uuid[])
  `;
  const byId = new Map(rows.map((row) => [row.id, row.lastSeq]));
  return rooms.map((room) => byId.get(room.id) ?? 0);
}

/**
 * The fan-out rows; `judged` (10 × 50) carries the targets, the other shapes are
 * reported only, as the issue asks.
 */
function fanoutFigures(runs: Record<Kind, FanoutRun>, judged: boolean): Figure[] {
  const { parley: p, bare: b } = runs;
  const perDelivery = (run: FanoutRun, us: number) => us / run.sat.deliveries;
  const figures: Figure[] = [
    {
      label: "deliveries/s at saturation",
      parley: p.sat.deliveriesPerSec,
      ceiling: b.sat.deliveriesPerSec,
      goal: judged ? { on: "ratio", op: ">=", value: 0.6 } : undefined,
    },
    { label: "messages sent/s", parley: p.sat.sendsPerSec, ceiling: b.sat.sendsPerSec },
    {
      label: "server CPU µs per delivery",
      parley: perDelivery(p, p.sat.cpu.serverUs),
      ceiling: perDelivery(b, b.sat.cpu.serverUs),
      digits: 2,
      goal: judged ? { on: "ratio", op: "<=", value: 1.7 } : undefined,
    },
    {
      label: "Postgres CPU µs per delivery",
      parley: perDelivery(p, p.sat.cpu.postgresUs),
      ceiling: null,
      digits: 2,
    },
    ...usageFigures(p.sat.cpu, b.sat.cpu),
    {
      label: "bytes per delivered frame",
      parley: p.sat.bytesPerFrame,
      ceiling: b.sat.bytesPerFrame,
    },
    {
      label: "subscribers connected and subscribed in, ms",
      parley: p.connect.ms,
      ceiling: b.connect.ms,
    },
  ];
  if (p.lat && b.lat) {
    figures.push(
      {
        label: "paced at 50% of own saturation, msg/s",
        parley: p.lat.achievedRate,
        ceiling: b.lat.achievedRate,
        digits: 1,
      },
      { label: "  latency p50, ms", parley: p.lat.p50Ms, ceiling: b.lat.p50Ms, digits: 2 },
      {
        label: "  latency p99, ms",
        parley: p.lat.p99Ms,
        ceiling: b.lat.p99Ms,
        digits: 2,
        goal: { on: "parley", op: "<=", value: 25 },
      },
      { label: "  latency max, ms", parley: p.lat.maxMs, ceiling: b.lat.maxMs, digits: 2 },
      {
        label: "  load generator timer lag p99, ms",
        parley: p.lat.lagP99Ms,
        ceiling: b.lat.lagP99Ms,
        digits: 2,
        ratio: false,
      },
    );
  }
  figures.push(...deliveryFigures(p.delivery, b.delivery, p.connect.failed + p.sat.failedSends));
  return figures;
}

/** Rows of where the CPU went: the server's core, the load generator's, the rest. */
function usageFigures(p: CpuUsage, b: CpuUsage | null): Figure[] {
  const row = (label: string, get: (usage: CpuUsage) => number, digits = 0): Figure => ({
    label,
    parley: get(p),
    ceiling: b ? get(b) : null,
    digits,
    ratio: false,
  });
  return [
    row("server core busy, %", (u) => pct(u, u.serverUs)),
    row("Postgres busy, % of a core", (u) => pct(u, u.postgresUs)),
    row("load generator core busy, %", (u) => pct(u, u.loadgenUs)),
    row("other processes, cores", (u) => u.otherCores, 2),
    row("hypervisor steal, cores", (u) => u.stealCores, 2),
  ];
}

/** The verification rows; `failures` are parley's failed sends and subscriptions. */
function deliveryFigures(p: Delivery, b: Delivery | null, failures: number): Figure[] {
  const row = (label: string, get: (d: Delivery) => number, value: number, digits = 0) =>
    check(label, { parley: get(p), ceiling: b ? get(b) : null }, { op: "=", value }, digits);
  return [
    row("delivered ÷ expected", (d) => d.expected ? d.delivered / d.expected : NaN, 1, 4),
    row("duplicates", (d) => d.dups, 0),
    row("gaps (seqs never received)", (d) => d.gaps, 0),
    row(
      "error frames + closed subscribers + failed calls",
      (d) => d.errors + d.closed + (d === p ? failures : 0),
      0,
    ),
  ];
}

// ---------------------------------------------------------------------------------------------
// (c) Persisted sends

/**
 * 32 senders (4 a room, different users) send `messages.send` with a clientMessageId as fast as
 * each gets answers, over HTTP and then over WebSocket, to the fan-out rooms (no subscribers);
 * then the postgres.js ceilings run with the same concurrency over 10 rooms of their own, so
 * their seqs never meet parley's. Every room is checked gap-free afterwards.
 */
async function sends(ctx: RunContext): Promise<Section> {
  const parley = await sharedTarget(ctx, "parley");
  const rooms = await roomSet(ctx, parley, FANOUT_ROOMS);
  const ceilingRooms = await roomSet(ctx, parley, { name: "ceiling", count: 10, perRoom: 4 });
  const seconds = ctx.options.sendSeconds;
  const { endpoint } = parley;
  const notes = ctx.notes;

  async function measure(
    label: string,
    op: (worker: number) => Promise<void>,
    whose: "parley" | "ceiling",
  ) {
    const onError = (error: unknown) => notes.add(`${label}: send failed`, String(error));
    await closedLoop(SEND_WORKERS, 1, op, onError); // warm-up: code paths, plans, connections
    const backends = backendPids(ctx.admin, ctx.database, whose);
    const startMeter = meterFor(
      ctx,
      label,
      whose === "parley" ? parley.server.pid : null,
      backends,
    );
    const cpuMeter = await startMeter();
    const loop = await closedLoop(SEND_WORKERS, seconds, op, onError);
    const cpu = await cpuMeter.stop();
    const perSend = (us: number) => us / loop.ops;
    ctx.log(`${label}: ${Math.round(loop.ops / seconds)}/s (${loop.failed} failed)`);
    return { perSec: loop.ops / seconds, failed: loop.failed, cpu, perSend };
  }

  const http = await measure("parley HTTP", async (worker) => {
    const { room, member } = seatOf(rooms, worker);
    await endpoint.send(room, member.token, messageContent(), true);
  }, "parley");

  const callers = await Promise.all(
    Array.from(
      { length: SEND_WORKERS },
      (_, worker) => openCaller(endpoint.http, seatOf(rooms, worker).member.token),
    ),
  );
  let ws;
  try {
    ws = await measure("parley WebSocket", async (worker) => {
      const { room } = seatOf(rooms, worker);
      await sendOver(callers[worker], sendInput(room.id, messageContent(), true));
    }, "parley");
  } finally {
    for (const caller of callers) caller.close();
  }
  const parleyGaps = await roomsWithGaps(ctx.db, rooms.map((room) => room.id));

  const pool = openPool(ctx.settings.databaseUrl, SEND_WORKERS, CEILING_APP);
  const ceilings: Ceiling[] = [];
  let tx, plain, ceilingGaps;
  try {
    const content = messageContent();
    ceilings.push(seqTransaction(pool, ceilingRooms, content));
    tx = await measure("ceiling: seq transaction", ceilings[0].op, "ceiling");
    ceilings.push(await plainInsert(pool, ceilingRooms, content));
    plain = await measure("ceiling: plain insert", ceilings[1].op, "ceiling");
    ceilingGaps = await roomsWithGaps(ctx.db, ceilingRooms.map((room) => room.id));
  } finally {
    for (const ceiling of ceilings) await ceiling.dispose();
    await pool.end({ timeout: 2 });
  }
  for (const gap of [...parleyGaps, ...ceilingGaps]) notes.add("rooms with gaps", gap);

  const cores = (cpu: CpuUsage, us: number) => us / 1e6 / cpu.seconds;
  return {
    key: "sends",
    title: `(c) persisted sends: ${SEND_WORKERS} concurrent senders over 10 rooms, no ` +
      `subscribers; ceiling: postgres.js, pool of ${SEND_WORKERS}, same Postgres`,
    figures: [
      {
        label: "HTTP sends/s ÷ seq-transaction loop",
        parley: http.perSec,
        ceiling: tx.perSec,
        goal: { on: "ratio", op: ">=", value: 1.5 },
      },
      {
        label: "WebSocket sends/s ÷ seq-transaction loop",
        parley: ws.perSec,
        ceiling: tx.perSec,
        goal: { on: "ratio", op: ">=", value: 1.5 },
      },
      {
        label: "HTTP sends/s ÷ plain single-row insert",
        parley: http.perSec,
        ceiling: plain.perSec,
      },
      {
        label: "server CPU µs per send, HTTP",
        parley: http.perSend(http.cpu.serverUs),
        ceiling: null,
      },
      {
        label: "server CPU µs per send, WebSocket",
        parley: ws.perSend(ws.cpu.serverUs),
        ceiling: null,
      },
      {
        label: "Postgres CPU µs per send, HTTP ÷ transaction",
        parley: http.perSend(http.cpu.postgresUs),
        ceiling: tx.perSend(tx.cpu.postgresUs),
      },
      {
        label: "Postgres CPU µs per send, WebSocket ÷ transaction",
        parley: ws.perSend(ws.cpu.postgresUs),
        ceiling: tx.perSend(tx.cpu.postgresUs),
      },
      {
        label: "Postgres CPU µs per plain insert",
        parley: null,
        ceiling: plain.perSend(plain.cpu.postgresUs),
      },
      {
        label: "load generator CPU µs per send, HTTP ÷ transaction",
        parley: http.perSend(http.cpu.loadgenUs),
        ceiling: tx.perSend(tx.cpu.loadgenUs),
      },
      {
        label: "server core busy, HTTP / WebSocket, %",
        parley: cores(http.cpu, http.cpu.serverUs) * 100,
        ceiling: cores(ws.cpu, ws.cpu.serverUs) * 100,
        ratio: false,
      },
      {
        label: "Postgres busy, cores, HTTP ÷ transaction",
        parley: cores(http.cpu, http.cpu.postgresUs),
        ceiling: cores(tx.cpu, tx.cpu.postgresUs),
        digits: 2,
        ratio: false,
      },
      check("failed sends", {
        parley: http.failed + ws.failed,
        ceiling: tx.failed + plain.failed,
      }, { op: "=", value: 0 }),
      check("rooms whose messages are not exactly 1..last_seq", {
        parley: parleyGaps.length,
        ceiling: ceilingGaps.length,
      }, { op: "=", value: 0 }),
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// (d) Memory and connect storms

/** What the memory scenario saw on one fresh process. */
interface MemoryRun {
  beforeKiB: number;
  probeBefore: number;
  storms: { conns: number; connect: Connecting; rssKiB: number; missed: number }[];
  afterKiB: number;
  probeAfter: number;
  afterProbeKiB: number;
}

/**
 * On a fresh parley and then a fresh bare server: warm up, a 3 s fan-out probe (10 × 50), RSS
 * before; for each storm size, that many idle subscribed sockets over 100 rooms set up at once
 * (timed until the last is subscribed), a check message to each room, RSS, all closed; RSS
 * after a wait; the probe again.
 */
async function memory(ctx: RunContext): Promise<Section> {
  // Rooms are made through a shared parley: the fresh one then starts on a warm database.
  const setup = await sharedTarget(ctx, "parley");
  const idleRooms = await roomSet(ctx, setup, { name: "idle", count: 100, perRoom: 10 });
  const probeRooms = await roomSet(ctx, setup, { name: "memory probe", count: 10, perRoom: 50 });
  await stopTarget(setup, ctx.settings, ctx.notes);
  delete ctx.shared.parley;

  const runs = {} as Record<Kind, MemoryRun>;
  for (const kind of ["parley", "bare"] as const) {
    const target = await startTarget(kind, ctx.settings);
    ctx.log(`${kind}: fresh process pid ${target.server.pid}`);
    try {
      runs[kind] = await memoryRun(ctx, target, idleRooms, probeRooms);
    } finally {
      await stopTarget(target, ctx.settings, ctx.notes);
    }
  }
  const { parley: p, bare: b } = runs;
  const mib = (kib: number) => kib / 1024;
  const figures: Figure[] = [
    { label: "RSS before, MiB", parley: mib(p.beforeKiB), ceiling: mib(b.beforeKiB), digits: 1 },
  ];
  p.storms.forEach((storm, i) => {
    const bare = b.storms[i];
    const n = storm.conns.toLocaleString("en-US");
    figures.push(
      {
        label: `RSS per idle subscribed socket at ${n}, KiB`,
        parley: (storm.rssKiB - p.beforeKiB) / storm.connect.connected,
        ceiling: (bare.rssKiB - b.beforeKiB) / bare.connect.connected,
        digits: 1,
        goal: { on: "ratio", op: "<=", value: 1.2 },
      },
      {
        label: `${n} connected and subscribed, s`,
        parley: storm.connect.ms / 1000,
        ceiling: bare.connect.ms / 1000,
        digits: 2,
        goal: storm.conns >= 10_000 ? { on: "parley", op: "<", value: 3 } : undefined,
      },
      check(`${n}: failed or missed the check message`, {
        parley: storm.connect.failed + storm.missed,
        ceiling: bare.connect.failed + bare.missed,
      }, { op: "=", value: 0 }),
    );
  });
  figures.push(
    check(
      "RSS after closing all and waiting ÷ before",
      {
        parley: p.afterKiB / p.beforeKiB,
        ceiling: b.afterKiB / b.beforeKiB,
      },
      { op: "<=", value: 1.3 },
      2,
    ),
    { label: "  RSS then, MiB", parley: mib(p.afterKiB), ceiling: mib(b.afterKiB), digits: 1 },
    {
      label: "  RSS after the second probe, MiB",
      parley: mib(p.afterProbeKiB),
      ceiling: mib(b.afterProbeKiB),
      digits: 1,
    },
    {
      label: "fan-out probe before the storms, deliveries/s",
      parley: p.probeBefore,
      ceiling: b.probeBefore,
    },
    check(
      "fan-out probe after ÷ before",
      {
        parley: p.probeAfter / p.probeBefore,
        ceiling: b.probeAfter / b.probeBefore,
      },
      { op: ">=", value: 0.9 },
      3,
    ),
  );
  const conns = ctx.options.memoryConns.map((n) => n.toLocaleString("en-US")).join(" then ");
  return {
    key: "memory",
    title: `(d) memory and connect: ${conns} idle subscribed sockets over 100 rooms, ` +
      `${ctx.options.connectConcurrency} setting up at once, fresh processes; ceiling: bare server`,
    figures,
  };
}

async function memoryRun(
  ctx: RunContext,
  target: Target,
  idleRooms: BenchRoom[],
  probeRooms: BenchRoom[],
): Promise<MemoryRun> {
  const { kind, server } = target;
  const seqs = (rooms: BenchRoom[]) =>
    kind === "parley" ? lastSeqs(ctx, "parley", rooms) : Promise.resolve(rooms.map(() => 0));
  const probeFleet = newFleet(target.endpoint, probeRooms, {
    label: `${kind} memory probe`,
    notes: ctx.notes,
    window: ctx.options.window,
    lastSeqs: await seqs(probeRooms),
  });
  const idle = newFleet(target.endpoint, idleRooms, {
    label: `${kind} idle`,
    notes: ctx.notes,
    lastSeqs: await seqs(idleRooms),
  });
  async function fanoutProbe(): Promise<number> {
    collectOwnGarbage();
    await connectAll(probeFleet, () => 50, CONNECT_CONCURRENCY);
    await probe(probeFleet, 10_000);
    const meter = targetMeter(ctx, target, probeFleet.label);
    const senders = sendersFor(ctx, probeRooms.length);
    const sat = await saturate(probeFleet, { seconds: 3, senders }, meter);
    await closeAll(probeFleet);
    forgetSubs(probeFleet);
    return sat.deliveriesPerSec;
  }
  // Warm-up: the first subscriptions and sends compile code paths the baseline should hold.
  await connectAll(probeFleet, () => 2, CONNECT_CONCURRENCY);
  await probe(probeFleet, 10_000);
  await closeAll(probeFleet);
  forgetSubs(probeFleet);
  const probeBefore = await fanoutProbe();
  await sleep(2000);
  const beforeKiB = await rssKiB(server.pid);

  const storms: MemoryRun["storms"] = [];
  for (const conns of ctx.options.memoryConns) {
    const perRoom = (i: number) =>
      Math.floor(conns / idleRooms.length) + (i < conns % idleRooms.length ? 1 : 0);
    const watch = await targetMeter(ctx, target, `${kind} ${conns} connecting`)();
    const connect = await connectAll(idle, perRoom, ctx.options.connectConcurrency);
    await watch.stop();
    ctx.log(
      `${kind}: ${connect.connected} subscribed in ${Math.round(connect.ms)} ms` +
        (connect.failed ? ` (${connect.failed} failed)` : ""),
    );
    await probe(idle, 20_000);
    const missed = allSubs(idle).filter((sub) => sub.last < sub.room.maxSeq || sub.closed).length;
    await sleep(2000);
    const rss = await rssKiB(server.pid);
    ctx.log(`${kind}: RSS ${(rss / 1024).toFixed(1)} MiB with ${connect.connected} sockets`);
    storms.push({ conns, connect, rssKiB: rss, missed });
    await closeAll(idle);
    forgetSubs(idle);
    await sleep(1000);
  }

  // The server cannot be made to collect garbage: give it time, watching RSS settle.
  let afterKiB = await rssKiB(server.pid);
  for (let waited = 0; waited < 10; waited++) {
    await sleep(1000);
    const now = await rssKiB(server.pid);
    const settled = Math.abs(now - afterKiB) < afterKiB * 0.005 && now <= beforeKiB * 1.3;
    afterKiB = now;
    if (settled) break;
  }
  ctx.log(`${kind}: RSS ${(afterKiB / 1024).toFixed(1)} MiB after the storms closed`);
  const probeAfter = await fanoutProbe();
  return {
    beforeKiB,
    probeBefore,
    storms,
    afterKiB,
    probeAfter,
    afterProbeKiB: await rssKiB(server.pid),
  };
}

// ---------------------------------------------------------------------------------------------
// (e) Reconnect storm

/**
 * 2,000 subscribers (10 rooms × 200) receive live sends; all sockets are dropped at once and
 * all reconnect at once with lastEventId = the last seq each saw, sends going on. Measures
 * until every one is subscribed again and has every message sent before the drop, then checks
 * that each received its room's seqs once, in order, across the break.
 */
async function storm(ctx: RunContext): Promise<Section> {
  const parley = await sharedTarget(ctx, "parley");
  const rooms = await roomSet(ctx, parley, { name: "storm", count: 10, perRoom: 50 });
  const fleet = newFleet(parley.endpoint, rooms, {
    label: "parley storm",
    notes: ctx.notes,
    lastSeqs: await lastSeqs(ctx, "parley", rooms),
  });
  try {
    const connect = await connectAll(fleet, () => 200, CONNECT_CONCURRENCY);
    ctx.log(`storm: ${connect.connected} subscribed in ${Math.round(connect.ms)} ms`);
    const sender = startSending(fleet, { rate: ctx.options.stormRate, maxInflight: 64 });
    let resumed: Connecting, caughtUpMs = NaN, sentDuring = 0;
    try {
      await sleep(2000);
      const watch = await targetMeter(ctx, parley, "parley storm reconnecting")();
      const atDrop = new Map(fleet.rooms.map((room) => [room, room.maxSeq]));
      const t0 = performance.now();
      const subs = allSubs(fleet).length;
      resumed = await reconnectAll(fleet, subs);
      await watch.stop();
      const deadline = t0 + 30_000;
      while (performance.now() < deadline) {
        if (caughtUp(fleet, (room) => atDrop.get(room)!)) {
          caughtUpMs = performance.now() - t0;
          break;
        }
        await sleep(5);
      }
      sentDuring = fleet.rooms.reduce((sum, room) => sum + room.maxSeq - atDrop.get(room)!, 0);
      ctx.log(
        `storm: ${resumed.connected} resubscribed in ${Math.round(resumed.ms)} ms, ` +
          `caught up in ${Math.round(caughtUpMs)} ms`,
      );
      await sleep(2000);
    } finally {
      await sender.stop();
    }
    await drain(fleet, 10_000, "after the storm");
    const delivery = verify(fleet);
    return {
      key: "storm",
      title: `(e) reconnect storm: ${connect.connected} subscribers (10 rooms × 200) drop and ` +
        `resume with lastEventId at once, ${ctx.options.stormRate} msg/s going on; no ceiling`,
      figures: [
        { label: "all resubscribed, s", parley: resumed.ms / 1000, ceiling: null, digits: 2 },
        {
          label: "all resubscribed and caught up, s",
          parley: caughtUpMs / 1000,
          ceiling: null,
          digits: 2,
          goal: { on: "parley", op: "<", value: 5 },
        },
        { label: "messages sent until caught up", parley: sentDuring, ceiling: null },
        ...deliveryFigures(delivery, null, connect.failed + resumed.failed),
      ],
    };
  } finally {
    await closeAll(fleet);
  }
}

// ---------------------------------------------------------------------------------------------
// (f) Typing

/**
 * Issue #12: every member of a 50-member room subscribed to `rooms.onEvent` and typing. Each
 * member toggles `rooms.typing` over HTTP (as the fan-out's senders send, see `typing.ts`)
 * as fast as its answers come, the room keeping at most `--window` changes undelivered, as the
 * fan-out's saturation window does; every call changes the set of typists, so every call is
 * one `typing.changed` to each of the 50 subscribers.
 *
 * Judged: the server's CPU per typing delivery ≤ its CPU per message delivery in the 10 × 50
 * fan-out (a) of the same run, on the same process. Both are the server process's CPU time
 * over a saturation window (from /proc) divided by the frames subscribers received in it, and
 * both include the calls that caused them: here the `rooms.typing` calls (HTTP, the token's
 * session read, the rate check, the membership read, the NOTIFY to other instances) as there
 * the `messages.send` calls (HTTP, the commit, the NOTIFY). Subscribers per room are the same
 * (50); (a) has 10 such rooms, typing the one the issue names.
 */
async function typing(ctx: RunContext): Promise<Section> {
  const parley = await sharedTarget(ctx, "parley");
  const [room] = await roomSet(ctx, parley, TYPING_ROOM);
  const seconds = ctx.options.typingSeconds;
  const load = newTypingRoom(parley.endpoint.http, room.id, room.tokens, {
    label: "parley typing",
    notes: ctx.notes,
    window: ctx.options.window,
  });
  try {
    const connect = await connectTyping(load, CONNECT_CONCURRENCY);
    ctx.log(`${load.label}: ${connect.connected} subscribers in ${Math.round(connect.ms)} ms`);
    await warmUp(load, 10_000);
    const sat = await saturateTyping(load, { seconds }, targetMeter(ctx, parley, load.label));
    ctx.log(
      `${load.label}: ${Math.round(sat.deliveriesPerSec)} typing deliveries/s, ` +
        `${Math.round(sat.callsPerSec)} changes/s, ${sat.typistsPerFrame.toFixed(1)} typists ` +
        `a frame, server core ${pct(sat.cpu, sat.cpu.serverUs).toFixed(0)}%, ` +
        `load generator core ${pct(sat.cpu, sat.cpu.loadgenUs).toFixed(0)}%`,
    );
    const delivery = verifyTyping(load);
    const m = ctx.messageFanout;
    if (!m) {
      ctx.notes.add("typing", "no message fan-out (a) in this run to compare with: run fanout");
    }
    const perMessage = (us: (cpu: CpuUsage) => number) => m ? us(m.cpu) / m.deliveries : null;
    const perTyping = (us: number) => us / sat.deliveries;
    const calls = sat.callsPerSec * sat.cpu.seconds;
    const figures: Figure[] = [
      {
        label: "deliveries/s at saturation, typing ÷ message (a)",
        parley: sat.deliveriesPerSec,
        ceiling: m?.deliveriesPerSec ?? null,
      },
      {
        label: "typing changes/s ÷ messages sent/s (a)",
        parley: sat.callsPerSec,
        ceiling: m?.sendsPerSec ?? null,
      },
      {
        label: "server CPU µs per delivery, typing ÷ message (a)",
        parley: perTyping(sat.cpu.serverUs),
        ceiling: perMessage((cpu) => cpu.serverUs),
        digits: 2,
        goal: { on: "ratio", op: "<=", value: 1.0 },
      },
      {
        label: "Postgres CPU µs per delivery, typing ÷ message (a)",
        parley: perTyping(sat.cpu.postgresUs),
        ceiling: perMessage((cpu) => cpu.postgresUs),
        digits: 2,
      },
      {
        label: "server CPU µs per typing call ÷ per message sent (a)",
        parley: sat.cpu.serverUs / calls,
        ceiling: m ? m.cpu.serverUs / (m.sendsPerSec * m.cpu.seconds) : null,
      },
      ...usageFigures(sat.cpu, m?.cpu ?? null),
      {
        label: "bytes per delivered frame, typing ÷ message (a)",
        parley: sat.bytesPerFrame,
        ceiling: m?.bytesPerFrame ?? null,
      },
      {
        label: "typists listed per typing.changed, mean",
        parley: sat.typistsPerFrame,
        ceiling: null,
        digits: 1,
      },
      {
        label: "subscribers connected and subscribed in, ms",
        parley: connect.ms,
        ceiling: null,
      },
      check(
        "typing.changed delivered ÷ expected",
        {
          parley: delivery.expected ? delivery.delivered / delivery.expected : NaN,
          ceiling: null,
        },
        { op: "=", value: 1 },
        4,
      ),
      check("subscribers whose last typing.changed lists someone", {
        parley: delivery.staleLast,
        ceiling: null,
      }, { op: "=", value: 0 }),
      check("error frames + closed subscribers + failed calls", {
        parley: delivery.errors + delivery.closed + connect.failed + load.failedCalls,
        ceiling: null,
      }, { op: "=", value: 0 }),
      {
        label: "presence.changed frames in the window (charged to typing)",
        parley: sat.presenceFrames,
        ceiling: null,
      },
    ];
    return {
      key: "typing",
      title: `(f) typing: 1 room × ${connect.connected} members on rooms.onEvent, every one ` +
        `toggling rooms.typing over HTTP, ${seconds} s; beside: message fan-out (a) of this run`,
      figures,
    };
  } finally {
    await closeTyping(load);
  }
}
