/**
 * `deno task bench`: parley's realtime core against ceilings measured in the same run (issue
 * #10). Each run makes its own database and server processes and drops them at the end:
 *
 * - (a) fan-out 10 rooms × 50 subscribers against a bare `Deno.upgradeWebSocket` broadcast
 *   server: saturation, CPU per delivery, latency at half of each one's own saturation rate;
 * - (b) the same for 1 room × 2,000 and 1,000 rooms × 2;
 * - (c) persisted sends, 32 senders over HTTP and over WebSocket, against postgres.js loops;
 * - (d) memory and connect storms of idle subscribed sockets on fresh processes;
 * - (e) a reconnect storm of 2,000 subscribers resuming with lastEventId;
 * - (f) typing (issue #12): every member of a 50-member room subscribed to rooms.onEvent and
 *   typing; the server's CPU per typing delivery against its CPU per message delivery in (a).
 *
 * Servers are pinned to core 0 and this process (the load generator) to core 1 with taskset;
 * Postgres is not pinned, its backends' CPU is reported apart. With `--runs N` the report
 * gives the median of each figure and the spread of what is judged.
 *
 * Exit status: 0 when every target is met, 1 when one is missed, 2 when the bench broke.
 */
import postgres from "postgres";
import type { ServerProcess } from "../scripts/server_process.ts";
import { backgroundLoad, inspectMachine, type Machine, run } from "./process_metrics.ts";
import { Notes, printReport, type RunResult, type Section } from "./report.ts";
import {
  type RunContext,
  runScenario,
  type ScenarioName,
  type ScenarioOptions,
  SCENARIOS,
} from "./scenarios.ts";
import { BENCH_APP, openPool, stopTarget } from "./targets.ts";

/** Command-line options. */
interface Options extends ScenarioOptions {
  runs: number;
  only: ScenarioName[];
  pin: boolean;
}

const USAGE = `usage: deno task bench [options]
  --runs N                 runs, reported as medians with their spread (1)
  --only LIST              scenarios, comma-separated: ${SCENARIOS.join(",")} (all);
                           typing brings fanout along (it is judged against it)
  --seconds N              10 × 50 fan-out windows, s (8)
  --shape-seconds N        1 × 2,000 and 1,000 × 2 windows, s (5)
  --send-seconds N         persisted-send windows, s (6)
  --window W               messages per room in flight at saturation (32)
  --senders N              HTTP senders at saturation, over all rooms (W × rooms, at most 160)
  --connect-concurrency N  subscribers setting up at once in the memory storms (200)
  --mem-conns LIST         idle subscribed sockets of the memory storms (5000,10000)
  --storm-rate N           messages per second during the reconnect storm (20)
  --typing-seconds N       typing window, s (5)
  --no-pin                 do not pin processes to cores
BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) is where each run
creates and drops its database.`;

/** Parses the command line; throws with the usage on anything unknown or out of range. */
function parseOptions(args: string[]): Options {
  const options: Options = {
    runs: 1,
    only: [...SCENARIOS],
    pin: true,
    fanoutSeconds: 8,
    shapeSeconds: 5,
    sendSeconds: 6,
    window: 32,
    senders: null,
    connectConcurrency: 200,
    memoryConns: [5000, 10_000],
    stormRate: 20,
    typingSeconds: 5,
  };
  const numbers: Record<string, [keyof ScenarioOptions | "runs", number, number]> = {
    "--runs": ["runs", 1, 9],
    "--seconds": ["fanoutSeconds", 1, 60],
    "--shape-seconds": ["shapeSeconds", 1, 60],
    "--send-seconds": ["sendSeconds", 1, 60],
    "--window": ["window", 1, 10_000],
    "--senders": ["senders", 1, 1000],
    "--connect-concurrency": ["connectConcurrency", 1, 10_000],
    "--storm-rate": ["stormRate", 1, 1000],
    "--typing-seconds": ["typingSeconds", 1, 60],
  };
  const bad = (detail: string) => new Error(`${USAGE}\n\nBad argument: ${detail}`);
  for (let i = 0; i < args.length; i++) {
    const name = args[i];
    if (name === "--no-pin") {
      options.pin = false;
      continue;
    }
    const value = args[++i];
    if (value === undefined) throw bad(`${name} needs a value`);
    const spec = numbers[name];
    if (spec) {
      const n = Number(value);
      if (!Number.isInteger(n) || n < spec[1] || n > spec[2]) {
        throw bad(`${name} ${value}: a whole number from ${spec[1]} to ${spec[2]}`);
      }
      (options as unknown as Record<string, number>)[spec[0]] = n;
    } else if (name === "--only") {
      const names = value.split(",");
      const unknown = names.filter((n) => !(SCENARIOS as readonly string[]).includes(n));
      if (unknown.length) throw bad(`--only: no scenario ${unknown.join(", ")}`);
      // Typing's target is a ratio to the message fan-out's CPU per delivery in the same run.
      if (names.includes("typing")) names.push("fanout");
      options.only = SCENARIOS.filter((n) => names.includes(n));
    } else if (name === "--mem-conns") {
      const counts = value.split(",").map(Number);
      if (!counts.every((n) => Number.isInteger(n) && n >= 100 && n <= 15_000)) {
        throw bad(`--mem-conns ${value}: whole numbers from 100 to 15000`);
      }
      options.memoryConns = counts;
    } else {
      throw bad(name);
    }
  }
  return options;
}

/** What outlives a run only if the bench is interrupted: to clean up on the way out. */
interface Leftovers {
  children: Set<ServerProcess>;
  databases: Set<string>;
}

/** Kills every server still running and drops every bench database still there. */
async function cleanUp(admin: postgres.Sql, leftovers: Leftovers): Promise<void> {
  await Promise.all([...leftovers.children].map((child) => child[Symbol.asyncDispose]()));
  leftovers.children.clear();
  for (const database of leftovers.databases) {
    await admin`drop database if exists ${admin(database)} with (force)`.catch((error) =>
      console.error(`Could not drop database ${database}:`, error.message)
    );
  }
  leftovers.databases.clear();
}

/** One run: a database, servers, the chosen scenarios; always cleaned up. */
async function runOnce(
  options: Options,
  env: { machine: Machine; admin: postgres.Sql; adminUrl: string; leftovers: Leftovers },
  log: (line: string) => void,
): Promise<RunResult> {
  const started = performance.now();
  const notes = new Notes();
  const backgroundCores = await backgroundLoad(env.machine);
  log(`background load before the run: ${backgroundCores.toFixed(2)} cores`);
  if (backgroundCores > 0.2) log("warning: the machine is busy with other work: expect noise");
  const database = `parley_bench_${crypto.randomUUID().replaceAll("-", "")}`;
  await env.admin`create database ${env.admin(database)}`;
  env.leftovers.databases.add(database);
  const url = new URL(env.adminUrl);
  url.pathname = `/${database}`;
  const ctx: RunContext = {
    options,
    machine: env.machine,
    settings: {
      machine: env.machine,
      databaseUrl: url.href,
      root: new URL("..", import.meta.url),
      children: env.leftovers.children,
    },
    admin: env.admin,
    db: openPool(url.href, 2, BENCH_APP),
    database,
    notes,
    log,
    shared: {},
    users: [],
    rooms: new Map(),
    bareSeqs: new Map(),
    messageFanout: null,
  };
  const stopShared = async () => {
    for (const target of Object.values(ctx.shared)) {
      await stopTarget(target, ctx.settings, notes);
    }
    ctx.shared = {};
  };
  const sections: Section[] = [];
  try {
    for (const name of options.only) {
      if (name === "memory") await stopShared();
      log(`scenario ${name}`);
      try {
        sections.push(await runScenario(ctx, name));
      } catch (error) {
        // One scenario failing (a server that died, a wait that timed out) is reported and the
        // run goes on; its servers are replaced by fresh ones for the next scenario.
        notes.add(`scenario ${name} failed`, (error as Error).stack ?? String(error), 1);
        log(`scenario ${name} failed: ${(error as Error).message}`);
        sections.push({
          key: name,
          title: `(${name}) failed: see the notes`,
          figures: [{
            label: "scenario completed",
            parley: 0,
            ceiling: null,
            ratio: false,
            goal: { on: "parley", op: "=", value: 1 },
          }],
        });
        await stopShared();
      }
    }
  } finally {
    await stopShared();
    await ctx.db.end({ timeout: 2 });
    await env.admin`drop database if exists ${env.admin(database)} with (force)`;
    env.leftovers.databases.delete(database);
  }
  return { sections, notes, seconds: (performance.now() - started) / 1000, backgroundCores };
}

async function main(): Promise<number> {
  const options = parseOptions(Deno.args);
  const t0 = performance.now();
  const log = (line: string) =>
    console.error(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${line}`);
  const machine = await inspectMachine(options.pin);
  if (!machine.pinned) log("nothing is pinned (taskset missing or --no-pin)");
  const nofile = Number((await run("bash", ["-c", "ulimit -n"])).out);
  const needed = Math.max(2000, ...options.memoryConns) + 1000;
  if (nofile < needed) {
    throw new Error(`ulimit -n is ${nofile}, the storms need ${needed}: raise it and rerun`);
  }

  const adminUrl = Deno.env.get("BENCH_DATABASE_URL") ??
    "postgres://postgres@127.0.0.1:5432/postgres";
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const leftovers: Leftovers = { children: new Set(), databases: new Set() };
  const results: RunResult[] = [];
  const abort = (why: string, code: number) => {
    console.error(`bench: ${why}: cleaning up`);
    if (results.length) printReport(results, `parley bench: the ${results.length} run(s) done`);
    cleanUp(admin, leftovers).finally(() => Deno.exit(code));
  };
  const onSignal = () => abort("interrupted", 130);
  Deno.addSignalListener("SIGINT", onSignal);
  // A run takes under three minutes; one past eight has hung somewhere.
  const budgetMs = options.runs * 8 * 60_000;
  const watchdog = setTimeout(
    () => abort(`watchdog (${budgetMs / 60_000} min) fired`, 2),
    budgetMs,
  );
  try {
    for (let i = 0; i < options.runs; i++) {
      log(`run ${i + 1} of ${options.runs}`);
      results.push(await runOnce(options, { machine, admin, adminUrl, leftovers }, log));
      log(`run ${i + 1} took ${results[i].seconds.toFixed(0)} s`);
    }
    const header = [
      `parley bench (issues #10, #12): ${options.runs} run(s) of ${options.only.join(", ")}`,
      machine.pinned
        ? "servers pinned to core 0, the load generator to core 1, Postgres unpinned"
        : "nothing pinned",
      `run time ${results.map((r) => `${r.seconds.toFixed(0)} s`).join(", ")}; cores busy ` +
      `with other work before each run ${
        results.map((r) => r.backgroundCores.toFixed(2)).join(", ")
      }`,
    ].join("\n");
    const verdict = printReport(results, header);
    return verdict.failed > 0 ? 1 : 0;
  } finally {
    clearTimeout(watchdog);
    Deno.removeSignalListener("SIGINT", onSignal);
    await cleanUp(admin, leftovers);
    await admin.end({ timeout: 2 });
  }
}

if (import.meta.main) {
  try {
    Deno.exitCode = await main();
  } catch (error) {
    console.error("bench failed:", error instanceof Error ? error.message : error);
    Deno.exitCode = 2;
  }
}
