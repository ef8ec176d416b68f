/**
 * CPU time and memory of processes, and the machine's busy and stolen time, from `/proc`.
 *
 * Files are read through `cat`: Deno refuses to read `/proc/<pid>` without --allow-all, and the
 * bench's task grants --allow-run instead. All times are in clock ticks (`CLK_TCK` per second)
 * until a `CpuUsage` turns them into microseconds and cores.
 */

/** Facts about this machine and the load generator, read once at startup. */
export interface Machine {
  /** Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`, usually 100). */
  clkTck: number;
  /** Whether servers run on core 0 and the load generator on core 1 (`taskset` exists). */
  pinned: boolean;
  /** This process (the load generator). */
  loadgenPid: number;
}

/** Whole-machine clock ticks since boot (`/proc/stat`'s first line). */
export interface MachineTicks {
  /** user + nice + system + irq + softirq. */
  busy: number;
  /** Time the hypervisor gave to someone else: load this machine cannot see. */
  steal: number;
}

/** What a CPU meter saw over its window; µs figures are totals, to divide by the work done. */
export interface CpuUsage {
  /** Length of the window, s. */
  seconds: number;
  /** CPU time of the server process, µs. */
  serverUs: number;
  /** CPU time of the Postgres backends given to the meter, µs (0 when none were given). */
  postgresUs: number;
  /** CPU time of the load generator (this process), µs. */
  loadgenUs: number;
  /** Cores' worth of CPU used by every other process on the machine. */
  otherCores: number;
  /** Cores' worth of time stolen by the hypervisor. */
  stealCores: number;
}

/** A started measurement; `stop` ends the window and reads the counters again. */
export interface CpuMeter {
  stop(): Promise<CpuUsage>;
}

/** Runs a command, returning whether it succeeded and its output (stdout, then stderr). */
export async function run(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  const result = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const decoder = new TextDecoder();
  return {
    ok: result.success,
    out: (decoder.decode(result.stdout) + decoder.decode(result.stderr)).trim(),
  };
}

/**
 * Reads `CLK_TCK` and, when `taskset` exists and `pin` is true, pins this process (every
 * thread) to core 1, where the load generator belongs; servers go to core 0 (`serverPrefix`).
 * Throws when taskset exists but refuses.
 */
export async function inspectMachine(pin: boolean): Promise<Machine> {
  const clkTck = Number((await run("getconf", ["CLK_TCK"])).out) || 100;
  const pinned = pin && (await run("which", ["taskset"])).ok;
  if (pinned) {
    const result = await run("taskset", ["-a", "-p", "-c", "1", String(Deno.pid)]);
    if (!result.ok) throw new Error(`Cannot pin the load generator to core 1: ${result.out}`);
  }
  return { clkTck, pinned, loadgenPid: Deno.pid };
}

/** The command prefix that runs a server on core 0, or none when nothing is pinned. */
export function serverPrefix(machine: Machine): string[] {
  return machine.pinned ? ["taskset", "-c", "0"] : [];
}

/** The files in `paths` one after the other; files of processes that are gone are left out. */
async function readProc(paths: string[]): Promise<string> {
  if (paths.length === 0) return "";
  // One `cat` for many files (a window reads dozens of Postgres backends); a missing file makes
  // cat complain on stderr and go on with the next.
  const result = await new Deno.Command("cat", { args: paths, stdout: "piped", stderr: "null" })
    .output();
  return new TextDecoder().decode(result.stdout);
}

/** utime + stime of whole processes (all threads), in clock ticks, by pid. */
export async function cpuTicks(pids: number[]): Promise<Map<number, number>> {
  const text = await readProc([...new Set(pids)].map((pid) => `/proc/${pid}/stat`));
  const ticks = new Map<number, number>();
  // /proc/<pid>/stat is one line starting with the pid; the command name in parentheses may
  // hold spaces, so fields are counted from the last ")".
  for (const line of text.split("\n")) {
    const close = line.lastIndexOf(")");
    if (close < 0) continue;
    const fields = line.slice(close + 2).split(" ");
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    ticks.set(Number(line.slice(0, line.indexOf(" "))), Number(fields[11]) + Number(fields[12]));
  }
  return ticks;
}

/** The machine's busy and stolen clock ticks since boot. */
export async function machineTicks(): Promise<MachineTicks> {
  const text = await readProc(["/proc/stat"]);
  const [, ...fields] = text.split("\n")[0].trim().split(/\s+/);
  const [user, nice, system, , , irq, softirq, steal] = fields.map(Number);
  return { busy: user + nice + system + irq + softirq, steal: steal ?? 0 };
}

/** VmRSS of a process, KiB; throws when the process is gone. */
export async function rssKiB(pid: number): Promise<number> {
  const text = await readProc([`/proc/${pid}/status`]);
  const match = /^VmRSS:\s+(\d+) kB/m.exec(text);
  if (!match) throw new Error(`No VmRSS for pid ${pid}: the process is gone`);
  return Number(match[1]);
}

/**
 * Starts measuring the CPU time of `serverPid` (null: no server, e.g. for a ceiling that runs
 * in this process), of the Postgres backends `postgresPids` lists
 * (asked at the start and at the end: a pool may open connections meanwhile, which count from
 * their first tick) and of this process, with the rest of the machine beside them.
 */
export async function startCpuMeter(
  machine: Machine,
  serverPid: number | null,
  postgresPids: () => Promise<number[]> = () => Promise.resolve([]),
): Promise<CpuMeter> {
  const backends0 = await postgresPids();
  const pg0 = await cpuTicks(backends0);
  const machine0 = await machineTicks();
  const pids = serverPid === null ? [machine.loadgenPid] : [serverPid, machine.loadgenPid];
  const own0 = await cpuTicks(pids);
  const t0 = performance.now();
  return {
    async stop() {
      const t1 = performance.now();
      const own1 = await cpuTicks(pids);
      const machine1 = await machineTicks();
      const pg1 = await cpuTicks([...backends0, ...await postgresPids()]);
      const seconds = (t1 - t0) / 1000;
      const delta = (pid: number | null) =>
        pid === null ? 0 : (own1.get(pid) ?? 0) - (own0.get(pid) ?? 0);
      const server = delta(serverPid);
      const loadgen = delta(machine.loadgenPid);
      let postgres = 0;
      for (const [pid, ticks] of pg1) postgres += ticks - (pg0.get(pid) ?? 0);
      const us = 1e6 / machine.clkTck;
      // Per-process and whole-machine ticks are sampled at slightly different moments: the
      // difference of the two can dip below zero by a tick or two, which means none.
      const cores = (ticks: number) => Math.max(0, ticks) / machine.clkTck / seconds;
      return {
        seconds,
        serverUs: server * us,
        postgresUs: postgres * us,
        loadgenUs: loadgen * us,
        otherCores: cores(machine1.busy - machine0.busy - server - loadgen - postgres),
        stealCores: cores(machine1.steal - machine0.steal),
      };
    },
  };
}

/** Cores' worth of CPU that other processes used over `ms`: how quiet the machine is. */
export async function backgroundLoad(machine: Machine, ms = 1000): Promise<number> {
  const busy0 = (await machineTicks()).busy;
  const self0 = (await cpuTicks([machine.loadgenPid])).get(machine.loadgenPid) ?? 0;
  await new Promise((resolve) => setTimeout(resolve, ms));
  const busy1 = (await machineTicks()).busy;
  const self1 = (await cpuTicks([machine.loadgenPid])).get(machine.loadgenPid) ?? 0;
  return (busy1 - busy0 - (self1 - self0)) / machine.clkTck / (ms / 1000);
}
