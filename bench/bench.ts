/**
 * Fan-out benchmark: parley (tRPC over WebSocket, Postgres) against a bare broadcast server
 * (`bare_server.ts`, the ceiling), driven by the same load generator in this process.
 *
 *   deno run --allow-net --allow-env --allow-read --allow-run --allow-write=/tmp \
 *     bench/bench.ts [--rooms R] [--subs S] [--seconds N]
 *
 * Servers run as child processes pinned to core 0 (`taskset -c 0`); this process (the load
 * generator) pins itself to core 1. Postgres is not pinned. Everything printed is measured in
 * this run: nothing is estimated or carried over from earlier runs.
 *
 * Phases, bare server first, then parley (each on its own server process):
 * - R rooms x S subscribers connect (parley: raw tRPC WebSocket frames, `lastEventId: "0"`, so
 *   a subscriber must receive every message of its room: seqs 1..N, once, in order).
 * - (a, b) saturation for N s: K senders per room POST as fast as they can, each room keeping
 *   at most W messages not yet delivered to all its subscribers; deliveries counted, server CPU
 *   from /proc/<pid>/stat (plus parley's Postgres backends, reported separately).
 * - (c) paced sending for N s at half the bare server's saturated delivery rate; each message
 *   carries its send time (performance.now() of this process), latency into a histogram.
 *   parley is also paced at half of its own saturation rate.
 * - (d) every subscriber's seqs are checked: delivered / expected, duplicates, gaps.
 * - (e) on a fresh process: RSS before and after C idle subscribed connections.
 * N is per window; with the defaults the whole run takes about 80 s.
 */
import postgres from "postgres";

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  rooms: number;
  subs: number;
  seconds: number;
  /** Concurrent HTTP senders per room in the saturation window. */
  senders: number;
  /** Most messages per room sent but not yet delivered to all its subscribers. */
  window: number;
  /** Idle subscribed connections for the memory measurement. */
  memConns: number;
  /** Most HTTP sends in flight during paced (latency) sending. */
  pacedInflight: number;
}

const USAGE = "usage: bench.ts [--rooms R] [--subs S] [--seconds N] [--senders K] [--window W] " +
  "[--mem-conns C]";

function parseOptions(args: string[]): Options {
  const options: Options = {
    rooms: 10,
    subs: 50,
    seconds: 10,
    senders: 4,
    window: 32,
    memConns: 5000,
    pacedInflight: 512,
  };
  const limits: Record<string, [keyof Options, number, number]> = {
    "--rooms": ["rooms", 1, 1000],
    "--subs": ["subs", 1, 2000],
    "--seconds": ["seconds", 1, 60],
    "--senders": ["senders", 1, 64],
    "--window": ["window", 1, 10_000],
    "--mem-conns": ["memConns", 1, 8000],
  };
  for (let i = 0; i < args.length; i += 2) {
    const spec = limits[args[i]];
    const value = Number(args[i + 1]);
    if (!spec || !Number.isInteger(value) || value < spec[1] || value > spec[2]) {
      throw new Error(`${USAGE}\nbad argument: ${args[i]} ${args[i + 1] ?? ""}`);
    }
    options[spec[0]] = value;
  }
  if (options.rooms * options.subs > 10_000) {
    throw new Error("rooms x subs must be at most 10000 (file descriptors)");
  }
  return options;
}

// ---------------------------------------------------------------------------------------------
// Small utilities

const RUN_START = performance.now();
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const now = () => performance.now();

/** Runs `fn` over `items` with at most `limit` calls in flight. */
async function pool<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** Rejects after `ms` with `what` in the message. */
async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function run(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  const result = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(result.stdout) + new TextDecoder().decode(result.stderr);
  return { ok: result.success, out: text.trim() };
}

/**
 * Reads `/proc` files through `cat`: Deno refuses to read `/proc/<pid>` without --allow-all.
 * Files of processes that are gone are left out of the answer.
 */
async function readProc(paths: string[]): Promise<Map<string, string>> {
  const result = await new Deno.Command("cat", {
    args: paths,
    stdout: "piped",
    stderr: "null",
  }).output();
  const text = new TextDecoder().decode(result.stdout);
  // /proc/<pid>/stat is one line; /proc/<pid>/status ends with a newline too. Split per file by
  // reading them one by one when more than one status file is asked for.
  const files = new Map<string, string>();
  if (paths.every((path) => path.endsWith("/stat"))) {
    for (const line of text.split("\n")) {
      const pid = line.slice(0, line.indexOf(" "));
      if (pid) files.set(`/proc/${pid}/stat`, line);
    }
  } else if (paths.length === 1) {
    files.set(paths[0], text);
  } else {
    throw new Error("readProc: pass stat files, or a single file");
  }
  return files;
}

/** utime + stime of whole processes (all threads), in clock ticks, by pid. */
async function cpuTicks(pids: number[]): Promise<Map<number, number>> {
  const files = await readProc(pids.map((pid) => `/proc/${pid}/stat`));
  const ticks = new Map<number, number>();
  for (const pid of pids) {
    const stat = files.get(`/proc/${pid}/stat`);
    if (!stat) continue;
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    ticks.set(pid, Number(fields[11]) + Number(fields[12]));
  }
  return ticks;
}

/**
 * Clock ticks of the whole machine from /proc/stat: `busy` (user, nice, system, irq, softirq)
 * and `steal` (time the hypervisor gave to someone else: invisible load on a shared host).
 */
async function machineTicks(): Promise<{ busy: number; steal: number }> {
  const result = await new Deno.Command("cat", {
    args: ["/proc/stat"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const first = new TextDecoder().decode(result.stdout).split("\n")[0];
  const [, ...fields] = first.trim().split(/\s+/);
  const [user, nice, system, , , irq, softirq, steal] = fields.map(Number);
  return { busy: user + nice + system + irq + softirq, steal: steal ?? 0 };
}

/** VmRSS of a process in KiB. */
async function rssKiB(pid: number): Promise<number> {
  const path = `/proc/${pid}/status`;
  const match = /^VmRSS:\s+(\d+) kB/m.exec((await readProc([path])).get(path) ?? "");
  if (!match) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]);
}

/** Log-linear histogram of non-negative integers (microseconds): exact below 64, ~3% above. */
class Histogram {
  #counts = new Float64Array(64 + 26 * 32);
  count = 0;
  max = 0;

  record(value: number): void {
    const v = Math.min(0x7fffffff, Math.max(0, Math.round(value)));
    let index: number;
    if (v < 64) index = v;
    else {
      const shift = 31 - Math.clz32(v) - 5;
      index = 64 + (shift - 1) * 32 + ((v >>> shift) - 32);
    }
    this.#counts[index]++;
    this.count++;
    if (v > this.max) this.max = v;
  }

  /** The value at quantile `q` (0..1): the middle of its bucket. */
  quantile(q: number): number {
    if (this.count === 0) return NaN;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      seen += this.#counts[i];
      if (seen >= rank) {
        if (i < 64) return i;
        const shift = Math.floor((i - 64) / 32) + 1;
        const sub = (i - 64) % 32 + 32;
        return Math.min(this.max, ((sub << shift) + ((sub + 1) << shift) - 1) / 2);
      }
    }
    return this.max;
  }
}

// ---------------------------------------------------------------------------------------------
// Child processes

class Child {
  readonly proc: Deno.ChildProcess;
  readonly pid: number;
  readonly name: string;
  /** Every stderr line (bounded) and the last stdout lines, for the report. */
  readonly stderr: string[] = [];
  readonly stdout: string[] = [];
  stderrLines = 0;
  /** When and how the process ended (performance.now()), once it has. */
  exitedAt = 0;
  exitStatus = "";
  stopping = false;
  #port: Promise<number>;
  #exited = false;

  constructor(name: string, cmd: string, args: string[], env: Record<string, string>, cwd: string) {
    this.name = name;
    this.proc = new Deno.Command(cmd, {
      args,
      env,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.pid = this.proc.pid;
    this.proc.status.then((status) => {
      this.#exited = true;
      this.exitedAt = now();
      this.exitStatus = `code ${status.code}${status.signal ? ` signal ${status.signal}` : ""}`;
    });
    const { promise, resolve, reject } = Promise.withResolvers<number>();
    this.#port = promise;
    this.#pump(this.proc.stdout, (line) => {
      this.stdout.push(line);
      if (this.stdout.length > 200) this.stdout.shift();
      const match = / listening on http:\/\/[^\s:]+:(\d+)/.exec(line);
      if (match) resolve(Number(match[1]));
    }).catch(() => {}).finally(() => reject(new Error(`${name} exited before listening`)));
    promise.catch(() => {});
    this.#pump(this.proc.stderr, (line) => {
      this.stderrLines++;
      if (this.stderr.length < 200) this.stderr.push(line);
    }).catch(() => {});
  }

  async #pump(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
    let buffer = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        onLine(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
      }
    }
    if (buffer) onLine(buffer);
  }

  /** The port from the `... listening on http://host:PORT` line. */
  async port(timeoutMs = 30_000): Promise<number> {
    try {
      return await withTimeout(this.#port, timeoutMs, `${this.name} to listen`);
    } catch (error) {
      throw new Error(
        `${(error as Error).message}\n--- ${this.name} stdout:\n${this.stdout.join("\n")}\n` +
          `--- stderr:\n${this.stderr.join("\n")}`,
      );
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.#exited) return;
    this.stopping = true;
    try {
      this.proc.kill("SIGTERM");
    } catch { /* already gone */ }
    const exited = await Promise.race([
      this.proc.status.then(() => true),
      sleep(graceMs).then(() => false),
    ]);
    if (!exited) {
      try {
        this.proc.kill("SIGKILL");
      } catch { /* already gone */ }
      await withTimeout(this.proc.status, 5000, `${this.name} to die`).catch(() => {});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Targets: how to subscribe, send and parse frames for parley and for the bare server

type Kind = "parley" | "bare";

/** A room as both servers know it. */
interface Room {
  index: number;
  /** parley's room id. */
  id: string;
  /** Tokens of the room's members; subscriber i of the room uses tokens[i % length]. */
  tokens: string[];
}

/** One room on one server during one test. */
interface RoomState {
  room: Room;
  /** Highest seq the server acknowledged for a send (seqs are gap-free from 1). */
  maxSeq: number;
  /** Sends the server acknowledged. */
  okSends: number;
  subs: Sub[];
  /** Window accounting (saturation): sends started and deliveries since the window began. */
  winSent: number;
  winDelivered: number;
  waiters: (() => void)[];
  /** Round-robin position among sender tokens. */
  turn: number;
}

interface Sub {
  ws: WebSocket;
  state: RoomState;
  /** Highest seq received. */
  last: number;
  /** Data frames received (duplicates included) and in-order new ones. */
  frames: number;
  unique: number;
  dups: number;
  /** Seqs skipped over (never received before a later one). */
  gaps: number;
  errors: number;
  closed: boolean;
  closeInfo: string;
}

interface Target {
  kind: Kind;
  http: string;
  ws: string;
  pid: number;
  wsUrl(room: Room): string;
  /** Frames to send once the socket is open. */
  hello(room: Room, sub: number, lastEventId: number): string[];
  /** Whether the socket is subscribed when it opens (bare) or on `started` (parley). */
  readyOnOpen: boolean;
  send(state: RoomState, content: string): Promise<number>;
  /** The seq of a data frame, or -1 for anything else. */
  frameSeq(frame: string): number;
}

/** Reads decimal digits at `at` up to the next `"`; -1 when there are none. */
function digitsAt(frame: string, at: number): number {
  let value = 0;
  let i = at;
  for (; i < frame.length; i++) {
    const c = frame.charCodeAt(i);
    if (c < 48 || c > 57) break;
    value = value * 10 + (c - 48);
  }
  return i > at && frame.charCodeAt(i) === 34 ? value : -1;
}

class SendError extends Error {}

const PARLEY_DATA = '"result":{"type":"data","data":{"json":{"id":"';

function parleyTarget(port: number, pid: number): Target {
  const http = `http://127.0.0.1:${port}`;
  return {
    kind: "parley",
    http,
    ws: `ws://127.0.0.1:${port}`,
    pid,
    readyOnOpen: false,
    wsUrl: () => `ws://127.0.0.1:${port}/trpc?connectionParams=1`,
    hello: (room, sub, lastEventId) => [
      JSON.stringify({ method: "connectionParams", data: { token: room.tokens[sub] } }),
      JSON.stringify({
        id: 1,
        method: "subscription",
        params: {
          path: "messages.onMessage",
          input: { json: { roomId: room.id, lastEventId: String(lastEventId) } },
        },
      }),
    ],
    async send(state, content) {
      const token = state.room.tokens[state.turn++ % state.room.tokens.length];
      const response = await fetch(`${http}/trpc/messages.send`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: `{"json":{"roomId":"${state.room.id}","content":${JSON.stringify(content)}}}`,
      });
      const text = await response.text();
      const at = text.indexOf('"seq":');
      if (!response.ok || at < 0) throw new SendError(`HTTP ${response.status}: ${text}`);
      return parseInt(text.slice(at + 6, at + 20), 10);
    },
    frameSeq(frame) {
      // {"id":1,"result":{"type":"data","data":{"json":{"id":"<seq>","data":{...}}, ...}}}
      const comma = frame.indexOf(",");
      if (comma < 0 || !frame.startsWith(PARLEY_DATA, comma + 1)) return -1;
      return digitsAt(frame, comma + 1 + PARLEY_DATA.length);
    },
  };
}

function bareTarget(port: number, pid: number): Target {
  const http = `http://127.0.0.1:${port}`;
  return {
    kind: "bare",
    http,
    ws: `ws://127.0.0.1:${port}`,
    pid,
    readyOnOpen: true,
    wsUrl: (room) => `ws://127.0.0.1:${port}/ws?room=${room.index}`,
    hello: () => [],
    async send(state, content) {
      const response = await fetch(`${http}/send?room=${state.room.index}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(content),
      });
      const text = await response.text();
      if (!response.ok) throw new SendError(`HTTP ${response.status}: ${text}`);
      return parseInt(text, 10);
    },
    frameSeq(frame) {
      // {"id":"<seq>","data":"..."}
      return frame.startsWith('{"id":"') ? digitsAt(frame, 7) : -1;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Load generator state

/** Counters of the window being measured. */
const win = { deliveries: 0, bytes: 0, latency: null as Histogram | null };
/** Anomalies seen by the load generator, by target. */
const anomalies: Record<Kind, string[]> = { parley: [], bare: [] };
const sendErrors: Record<Kind, { count: number; samples: string[] }> = {
  parley: { count: 0, samples: [] },
  bare: { count: 0, samples: [] },
};
let windowSize = 32;

function note(kind: Kind, text: string): void {
  if (anomalies[kind].length < 20) anomalies[kind].push(text);
}

function sendFailed(kind: Kind, error: unknown): void {
  const errors = sendErrors[kind];
  errors.count++;
  if (errors.samples.length < 5) errors.samples.push(String((error as Error).message ?? error));
}

function newState(room: Room, maxSeq = 0): RoomState {
  return {
    room,
    maxSeq,
    okSends: 0,
    subs: [],
    winSent: 0,
    winDelivered: 0,
    waiters: [],
    turn: 0,
  };
}

function wakeOne(state: RoomState): void {
  if (
    state.waiters.length > 0 &&
    state.winSent - state.winDelivered / state.subs.length < windowSize
  ) {
    state.waiters.shift()!();
  }
}

function onFrame(target: Target, sub: Sub, data: unknown): void {
  if (typeof data !== "string") {
    sub.errors++;
    note(target.kind, "binary frame received");
    return;
  }
  const seq = target.frameSeq(data);
  if (seq < 0) {
    onControl(target, sub, data);
    return;
  }
  sub.frames++;
  win.deliveries++;
  win.bytes += data.length;
  if (seq === sub.last + 1) {
    sub.unique++;
    sub.last = seq;
  } else if (seq <= sub.last) {
    sub.dups++;
  } else {
    sub.gaps += seq - sub.last - 1;
    sub.unique++;
    sub.last = seq;
  }
  const state = sub.state;
  state.winDelivered++;
  if (state.waiters.length > 0) wakeOne(state);
  if (win.latency) {
    const at = data.indexOf("~T");
    if (at >= 0) {
      const sentAt = parseFloat(data.slice(at + 2, data.indexOf("~", at + 2)));
      win.latency.record((now() - sentAt) * 1000);
    }
  }
}

const readyHooks = new WeakMap<Sub, () => void>();

function onControl(target: Target, sub: Sub, data: string): void {
  if (data === "PING") {
    sub.ws.send("PONG");
    return;
  }
  if (data === "PONG") return;
  if (data.includes('"type":"started"')) {
    readyHooks.get(sub)?.();
    return;
  }
  if (data.includes('"error"')) sub.errors++;
  note(target.kind, `unexpected frame: ${data.slice(0, 300)}`);
}

/** Opens one subscriber; resolves when it is subscribed. */
function connect(
  target: Target,
  state: RoomState,
  subIndex: number,
  lastEventId: number,
): Promise<Sub> {
  const ws = new WebSocket(target.wsUrl(state.room));
  const sub: Sub = {
    ws,
    state,
    last: lastEventId,
    frames: 0,
    unique: 0,
    dups: 0,
    gaps: 0,
    errors: 0,
    closed: false,
    closeInfo: "",
  };
  const { promise, resolve, reject } = Promise.withResolvers<Sub>();
  readyHooks.set(sub, () => resolve(sub));
  ws.onopen = () => {
    for (const frame of target.hello(state.room, subIndex, lastEventId)) ws.send(frame);
    if (target.readyOnOpen) resolve(sub);
  };
  ws.onmessage = (event) => onFrame(target, sub, event.data);
  ws.onerror = () => {};
  ws.onclose = (event) => {
    sub.closed = true;
    sub.closeInfo = `${event.code} ${event.reason} (at ${
      ((now() - RUN_START) / 1000).toFixed(1)
    }s)`;
    reject(new Error(`socket closed before subscribing: ${sub.closeInfo}`));
  };
  return withTimeout(promise, 15_000, `${target.kind} subscriber to subscribe`).catch((error) => {
    ws.close();
    throw error;
  });
}

/** Connects `count` subscribers per room state, in parallel batches. */
async function connectAll(
  target: Target,
  states: RoomState[],
  perRoom: (state: RoomState) => number,
  concurrency: number,
): Promise<void> {
  const jobs: { state: RoomState; i: number }[] = [];
  for (const state of states) {
    for (let i = 0; i < perRoom(state); i++) jobs.push({ state, i });
  }
  const subs = await pool(
    jobs,
    concurrency,
    ({ state, i }) => connect(target, state, i % state.room.tokens.length, state.maxSeq),
  );
  for (const sub of subs) sub.state.subs.push(sub);
}

function expectedUnclosed(sub: Sub): boolean {
  return !sub.closed;
}

/** Waits until every open subscriber has every acknowledged message; false on timeout. */
async function drain(states: RoomState[], timeoutMs: number): Promise<boolean> {
  const deadline = now() + timeoutMs;
  while (now() < deadline) {
    let done = true;
    for (const state of states) {
      for (const sub of state.subs) {
        if (expectedUnclosed(sub) && sub.last < state.maxSeq) {
          done = false;
          break;
        }
      }
      if (!done) break;
    }
    if (done) return true;
    await sleep(20);
  }
  return false;
}

/** Message content: the send time (performance.now(), ms) between markers, padded to 80 chars. */
function content(): string {
  const head = `~T${now().toFixed(3)}~ bench message `;
  return head + "x".repeat(Math.max(0, 80 - head.length));
}

function acknowledge(state: RoomState, seq: number): void {
  state.okSends++;
  if (seq > state.maxSeq) state.maxSeq = seq;
}

/** One message per room, then waits until every subscriber has it. */
async function probe(target: Target, states: RoomState[], timeoutMs: number): Promise<boolean> {
  await Promise.all(states.map(async (state) => {
    try {
      acknowledge(state, await target.send(state, content()));
    } catch (error) {
      sendFailed(target.kind, error);
    }
  }));
  return await drain(states, timeoutMs);
}

// ---------------------------------------------------------------------------------------------
// Measurements

interface PgCpu {
  read(): Promise<Map<number, number>>;
}

interface Saturation {
  seconds: number;
  deliveries: number;
  deliveriesPerSec: number;
  sendsPerSec: number;
  serverCpuUs: number;
  serverCoreUtil: number;
  pgCpuUs: number | null;
  loadgenCoreUtil: number;
  /** Cores used by everything else on the machine (other Postgres processes, other users). */
  otherCores: number;
  /** Cores' worth of time stolen by the hypervisor. */
  stealCores: number;
  bytesPerFrame: number;
  drained: boolean;
}

function ticksDelta(before: Map<number, number>, after: Map<number, number>): number {
  let total = 0;
  for (const [pid, ticks] of after) total += ticks - (before.get(pid) ?? 0);
  return total;
}

async function saturate(
  target: Target,
  states: RoomState[],
  options: Options,
  clkTck: number,
  pg: PgCpu | null,
): Promise<Saturation> {
  for (const state of states) {
    state.winSent = 0;
    state.winDelivered = 0;
  }
  const sendsBefore = states.reduce((sum, s) => sum + s.okSends, 0);
  const pg0 = pg ? await pg.read() : null;
  win.deliveries = 0;
  win.bytes = 0;
  const machine0 = await machineTicks();
  const cpu0 = await cpuTicks([target.pid, Deno.pid]);
  const t0 = now();
  const deadline = t0 + options.seconds * 1000;

  const sender = async (state: RoomState) => {
    for (let ops = 0; ops < 50_000_000 && now() < deadline; ops++) {
      if (state.winSent - state.winDelivered / state.subs.length >= windowSize) {
        await new Promise<void>((resolve) => state.waiters.push(resolve));
        continue;
      }
      state.winSent++;
      try {
        acknowledge(state, await target.send(state, content()));
      } catch (error) {
        state.winSent--;
        sendFailed(target.kind, error);
        await sleep(5);
      }
    }
  };
  const senders = states.flatMap((state) =>
    Array.from({ length: options.senders }, () => sender(state))
  );
  await sleep(options.seconds * 1000);
  const t1 = now();
  const deliveries = win.deliveries;
  const cpu1 = await cpuTicks([target.pid, Deno.pid]);
  const machine1 = await machineTicks();
  const bytes = win.bytes;
  const sends = states.reduce((sum, s) => sum + s.okSends, 0) - sendsBefore;
  const pg1 = pg ? await pg.read() : null;
  // Release senders waiting for window space; each then sees the deadline and stops.
  const release = setInterval(() => {
    for (const state of states) while (state.waiters.length) state.waiters.shift()!();
  }, 10);
  try {
    await withTimeout(Promise.all(senders), 30_000, `${target.kind} senders to stop`);
  } finally {
    clearInterval(release);
  }
  const drained = await drain(states, 10_000);
  const elapsed = (t1 - t0) / 1000;
  const tickUs = 1e6 / clkTck;
  const server = cpu1.get(target.pid)! - cpu0.get(target.pid)!;
  const self = cpu1.get(Deno.pid)! - cpu0.get(Deno.pid)!;
  const pgTicks = pg0 && pg1 ? ticksDelta(pg0, pg1) : 0;
  return {
    seconds: elapsed,
    deliveries,
    deliveriesPerSec: deliveries / elapsed,
    sendsPerSec: sends / elapsed,
    serverCpuUs: server * tickUs / deliveries,
    serverCoreUtil: server / clkTck / elapsed,
    pgCpuUs: pg0 && pg1 ? pgTicks * tickUs / deliveries : null,
    otherCores: (machine1.busy - machine0.busy - server - self - pgTicks) / clkTck / elapsed,
    stealCores: (machine1.steal - machine0.steal) / clkTck / elapsed,
    loadgenCoreUtil: self / clkTck / elapsed,
    bytesPerFrame: bytes / deliveries,
    drained,
  };
}

/** Measures how late a 5 ms timer fires in this process (event-loop lag), until stopped. */
function lagMonitor(): { stop(): Histogram } {
  const histogram = new Histogram();
  let expected = now() + 5;
  const timer = setInterval(() => {
    const t = now();
    histogram.record((t - expected) * 1000);
    expected = t + 5;
  }, 5);
  return {
    stop() {
      clearInterval(timer);
      return histogram;
    },
  };
}

interface Latency {
  /** Event-loop lag of the load generator while pacing, ms. */
  lagP99Ms: number;
  lagMaxMs: number;
  targetMsgRate: number;
  achievedMsgRate: number;
  deliveriesPerSec: number;
  samples: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  drained: boolean;
}

async function paced(
  target: Target,
  states: RoomState[],
  seconds: number,
  msgRate: number,
  maxInflight: number,
): Promise<Latency> {
  const histogram = new Histogram();
  win.latency = histogram;
  win.deliveries = 0;
  const inflight = new Set<Promise<void>>();
  let issued = 0;
  const t0 = now();
  const deadline = t0 + seconds * 1000;
  const maxMessages = Math.ceil(msgRate * seconds) + 1;
  const lag = lagMonitor();
  for (let ticks = 0; ticks < seconds * 2000 && now() < deadline; ticks++) {
    const due = Math.min(maxMessages, Math.floor((now() - t0) / 1000 * msgRate));
    while (issued < due && inflight.size < maxInflight) {
      const state = states[issued % states.length];
      issued++;
      const sending: Promise<void> = target.send(state, content())
        .then((seq) => acknowledge(state, seq), (error) => sendFailed(target.kind, error))
        .finally(() => inflight.delete(sending));
      inflight.add(sending);
    }
    await sleep(1);
  }
  const t1 = now();
  const deliveries = win.deliveries;
  const lagHistogram = lag.stop();
  await withTimeout(Promise.all(inflight), 30_000, `${target.kind} paced sends`).catch((e) =>
    note(target.kind, String(e))
  );
  const drained = await drain(states, 10_000);
  win.latency = null;
  const elapsed = (t1 - t0) / 1000;
  return {
    lagP99Ms: lagHistogram.quantile(0.99) / 1000,
    lagMaxMs: lagHistogram.max / 1000,
    targetMsgRate: msgRate,
    achievedMsgRate: issued / elapsed,
    deliveriesPerSec: deliveries / elapsed,
    samples: histogram.count,
    p50Ms: histogram.quantile(0.5) / 1000,
    p99Ms: histogram.quantile(0.99) / 1000,
    maxMs: histogram.max / 1000,
    drained,
  };
}

interface Delivery {
  expected: number;
  delivered: number;
  unique: number;
  dups: number;
  gaps: number;
  errors: number;
  closedSubs: number;
  closeSamples: string[];
  seqMismatch: string[];
}

function verify(states: RoomState[]): Delivery {
  const result: Delivery = {
    expected: 0,
    delivered: 0,
    unique: 0,
    dups: 0,
    gaps: 0,
    errors: 0,
    closedSubs: 0,
    closeSamples: [],
    seqMismatch: [],
  };
  for (const state of states) {
    if (state.okSends !== state.maxSeq) {
      result.seqMismatch.push(
        `room ${state.room.index}: ${state.okSends} sends acknowledged but highest seq ${state.maxSeq}`,
      );
    }
    for (const sub of state.subs) {
      // Every subscriber joined before the room's first message, so it must get 1..maxSeq.
      result.expected += state.maxSeq;
      result.delivered += sub.frames;
      result.unique += sub.unique;
      result.dups += sub.dups;
      result.gaps += sub.gaps + Math.max(0, state.maxSeq - sub.last);
      result.errors += sub.errors;
      if (sub.closed) {
        result.closedSubs++;
        if (result.closeSamples.length < 3) result.closeSamples.push(sub.closeInfo);
      }
    }
  }
  return result;
}

async function closeAll(states: RoomState[]): Promise<void> {
  const subs = states.flatMap((state) => state.subs);
  const closed = subs.map((sub) =>
    new Promise<void>((resolve) => {
      if (sub.ws.readyState === WebSocket.CLOSED) return resolve();
      sub.ws.onclose = () => resolve();
      sub.ws.close(1000);
    })
  );
  await withTimeout(Promise.all(closed), 10_000, "sockets to close").catch(() => {});
}

interface Memory {
  connections: number;
  beforeKiB: number;
  afterKiB: number;
  perConnKiB: number;
  allReceived: boolean;
}

/** RSS per idle subscribed connection on a fresh server process. */
async function memoryTest(
  target: Target,
  rooms: Room[],
  lastSeqs: number[],
  connections: number,
): Promise<Memory> {
  // Warm up code paths first (a few subscribers, one message per room), so the baseline holds
  // compiled code rather than the first connection's one-off costs.
  const warm = rooms.map((room, i) => newState(room, lastSeqs[i]));
  await connectAll(target, warm, () => 2, 20);
  await sleep(100);
  if (!await probe(target, warm, 10_000)) note(target.kind, "memory warm-up probe not delivered");
  await closeAll(warm);
  await sleep(1500);
  const beforeKiB = await rssKiB(target.pid);

  const states = rooms.map((room, i) => newState(room, warm[i].maxSeq));
  const perRoom = (state: RoomState) =>
    Math.floor(connections / rooms.length) +
    (state.room.index < connections % rooms.length ? 1 : 0);
  await connectAll(target, states, perRoom, 100);
  await sleep(200);
  const allReceived = await probe(target, states, 20_000);
  if (!allReceived) note(target.kind, "memory test: the probe did not reach every subscriber");
  await sleep(2000);
  const afterKiB = await rssKiB(target.pid);
  const connected = states.reduce((sum, s) => sum + s.subs.filter((sub) => !sub.closed).length, 0);
  let behind = 0, dups = 0, errors = 0, closed = 0;
  for (const state of states) {
    for (const sub of state.subs) {
      if (sub.last < state.maxSeq) behind++;
      dups += sub.dups;
      errors += sub.errors;
      if (sub.closed) closed++;
    }
  }
  if (behind || dups || errors || closed) {
    note(
      target.kind,
      `memory test: ${behind} subscribers missed the probe, ${dups} duplicates, ` +
        `${errors} error frames, ${closed} closed`,
    );
  }
  await closeAll(states);
  return {
    connections: connected,
    beforeKiB,
    afterKiB,
    perConnKiB: (afterKiB - beforeKiB) / connected,
    allReceived,
  };
}

// ---------------------------------------------------------------------------------------------
// Setup through parley's HTTP API

async function trpc<T>(base: string, path: string, input: unknown, token?: string): Promise<T> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${base}/trpc/${path}`, {
    method: "POST",
    headers,
    body: JSON.stringify({ json: input }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} ${JSON.stringify(body)}`);
  return body.result.data.json as T;
}

async function createRooms(base: string, options: Options): Promise<Room[]> {
  const users = await pool(
    Array.from({ length: options.rooms * options.subs }, (_, i) => i),
    16,
    (i) => trpc<{ token: string }>(base, "users.create", { username: `bench_${i}` }),
  );
  const rooms: Room[] = [];
  for (let r = 0; r < options.rooms; r++) {
    const tokens = users.slice(r * options.subs, (r + 1) * options.subs).map((u) => u.token);
    const room = await trpc<{ id: string }>(
      base,
      "rooms.create",
      { name: `bench ${r}` },
      tokens[0],
    );
    rooms.push({ index: r, id: room.id, tokens });
  }
  await pool(
    rooms.flatMap((room) => room.tokens.slice(1).map((token) => ({ room, token }))),
    16,
    ({ room, token }) => trpc(base, "rooms.join", { roomId: room.id }, token),
  );
  return rooms;
}

// ---------------------------------------------------------------------------------------------
// Orchestration

interface Results {
  sat: Record<Kind, Saturation>;
  lat: Record<Kind, Latency>;
  ownLat: Latency | null;
  delivery: Record<Kind, Delivery>;
  memory: Partial<Record<Kind, Memory>>;
}

const ROOT = new URL("..", import.meta.url).pathname;
const children = new Set<Child>();

function spawnServer(kind: Kind, databaseUrl: string, pinned: boolean): Child {
  const denoArgs = kind === "parley"
    ? ["run", "--allow-net", "--allow-env", "--allow-read=.", "main.ts"]
    : ["run", "--allow-net", "--allow-env", "bench/bare_server.ts"];
  const [cmd, args] = pinned
    ? ["taskset", ["-c", "0", Deno.execPath(), ...denoArgs]]
    : [Deno.execPath(), denoArgs];
  const child = new Child(kind, cmd as string, args as string[], {
    DATABASE_URL: databaseUrl,
    PORT: "0",
    HOST: "127.0.0.1",
    ALLOWED_ORIGINS: "http://localhost:3000",
    NO_COLOR: "1",
    // One load generator on one address measures the core, not the abuse limits: lift them.
    RATE_LIMIT_SENDS: "off",
    RATE_LIMIT_JOINS: "off",
    RATE_LIMIT_CREATES: "off",
    RATE_LIMIT_SIGNUPS: "off",
    RATE_LIMIT_CONNECTION_WRITES: "off",
    MAX_CONNECTIONS_PER_ADDRESS: "100000",
    MAX_CONNECTIONS: "100000",
  }, ROOT);
  children.add(child);
  return child;
}

/** Notes a server that exited before the bench stopped it, with its last output. */
function checkAlive(child: Child): void {
  if (!child.exitedAt || child.stopping) return;
  const kind = child.name as Kind;
  note(
    kind,
    `${kind} server exited by itself at ${((child.exitedAt - RUN_START) / 1000).toFixed(1)}s ` +
      `(${child.exitStatus}); last stdout: ${child.stdout.slice(-5).join(" | ")}`,
  );
}

async function stopChild(child: Child): Promise<void> {
  checkAlive(child);
  await child.stop();
  children.delete(child);
}

/** Sums CPU ticks of the Postgres backends serving `database`. */
function pgCpu(admin: postgres.Sql, database: string): PgCpu {
  return {
    async read() {
      const rows = await admin<{ pid: number }[]>`
        select pid from pg_stat_activity where datname = ${database}
      `;
      const ticks = await cpuTicks(rows.map((row) => row.pid));
      return ticks;
    },
  };
}

async function benchTarget(
  target: Target,
  rooms: Room[],
  options: Options,
  clkTck: number,
  pg: PgCpu | null,
  pacedRate: (sat: Saturation) => number,
  log: (line: string) => void,
): Promise<{ sat: Saturation; lat: Latency; states: RoomState[] }> {
  const states = rooms.map((room) => newState(room));
  const t = now();
  await connectAll(target, states, () => options.subs, 50);
  log(`${target.kind}: ${options.rooms * options.subs} subscribers in ${Math.round(now() - t)} ms`);
  await sleep(200);
  if (!await probe(target, states, 10_000)) note(target.kind, "warm-up probe not delivered to all");
  const sat = await saturate(target, states, options, clkTck, pg);
  log(
    `${target.kind}: saturation ${Math.round(sat.deliveriesPerSec)} deliveries/s, ` +
      `${Math.round(sat.sendsPerSec)} sends/s, server core ${pct(sat.serverCoreUtil)}, ` +
      `load generator core ${pct(sat.loadgenCoreUtil)}`,
  );
  if (!sat.drained) {
    note(target.kind, "not every subscriber caught up within 10 s after saturation");
  }
  const rate = pacedRate(sat);
  const lat = await paced(target, states, options.seconds, rate, options.pacedInflight);
  log(
    `${target.kind}: paced ${rate.toFixed(1)} msg/s (achieved ${
      lat.achievedMsgRate.toFixed(1)
    }): p50 ${lat.p50Ms.toFixed(2)} ms, p99 ${lat.p99Ms.toFixed(2)} ms`,
  );
  if (!lat.drained) note(target.kind, "not every subscriber caught up within 10 s after pacing");
  return { sat, lat, states };
}

function pct(x: number): string {
  return `${(x * 100).toFixed(0)}%`;
}

async function main(): Promise<number> {
  const options = parseOptions(Deno.args);
  windowSize = options.window;
  const started = RUN_START;
  const log = (line: string) =>
    console.error(`[${((now() - started) / 1000).toFixed(1).padStart(5)}s] ${line}`);

  const clk = await run("getconf", ["CLK_TCK"]);
  const clkTck = Number(clk.out) || 100;
  const pinned = (await run("which", ["taskset"])).ok;
  if (pinned) {
    const pin = await run("taskset", ["-a", "-p", "-c", "1", String(Deno.pid)]);
    if (!pin.ok) throw new Error(`cannot pin the load generator: ${pin.out}`);
  } else {
    log("taskset not found: nothing is pinned");
  }
  const nofile = (await run("bash", ["-c", "ulimit -n"])).out;
  if (Number(nofile) < options.memConns + options.rooms * options.subs + 500) {
    throw new Error(`ulimit -n is ${nofile}: too low, raise it (ulimit -n 65536) and rerun`);
  }

  // Load from other processes before starting (the numbers below are only as good as this).
  const busy0 = (await machineTicks()).busy;
  const selfBusy0 = (await cpuTicks([Deno.pid])).get(Deno.pid)!;
  await sleep(1000);
  const background = ((await machineTicks()).busy - busy0 -
    ((await cpuTicks([Deno.pid])).get(Deno.pid)! - selfBusy0)) / clkTck;
  log(`background load before start: ${background.toFixed(2)} cores`);
  if (background > 0.2) log("warning: the machine is busy with other work; results will be noisy");

  const adminUrl = Deno.env.get("BENCH_DATABASE_URL") ??
    "postgres://postgres@127.0.0.1:5432/postgres";
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const dbName = `parley_bench_${crypto.randomUUID().replaceAll("-", "")}`;
  const dbUrl = new URL(adminUrl);
  dbUrl.pathname = `/${dbName}`;
  let created = false;
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    await Promise.all([...children].map((child) => child.stop().catch(() => {})));
    if (created) {
      await admin`drop database if exists ${admin(dbName)} with (force)`.catch((error) =>
        console.error(`could not drop database ${dbName}:`, error)
      );
    }
    await admin.end({ timeout: 2 }).catch(() => {});
  };
  const onSignal = () => {
    console.error("interrupted: cleaning up");
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  const watchdog = setTimeout(() => {
    console.error("bench: watchdog (300 s) fired: cleaning up");
    cleanup().finally(() => Deno.exit(2));
  }, 300_000);

  try {
    await admin`create database ${admin(dbName)}`;
    created = true;
    log(`database ${dbName}`);

    const parleyChild = spawnServer("parley", dbUrl.href, pinned);
    const bareChild = spawnServer("bare", "", pinned);
    const parley = parleyTarget(await parleyChild.port(), parleyChild.pid);
    const bare = bareTarget(await bareChild.port(), bareChild.pid);
    log(`parley pid ${parley.pid} at ${parley.http}, bare pid ${bare.pid} at ${bare.http}`);

    const rooms = await createRooms(parley.http, options);
    log(`${rooms.length} rooms x ${options.subs} members created`);

    // The bare server first: its saturation sets the paced rate for both.
    const bareRun = await benchTarget(
      bare,
      rooms,
      options,
      clkTck,
      null,
      (sat) => sat.deliveriesPerSec / 2 / options.subs,
      log,
    );
    const bareDelivery = verify(bareRun.states);
    await closeAll(bareRun.states);
    await stopChild(bareChild);

    const pg = pgCpu(admin, dbName);
    const pacedRate = bareRun.sat.deliveriesPerSec / 2 / options.subs;
    const parleyRun = await benchTarget(parley, rooms, options, clkTck, pg, () => pacedRate, log);
    // And at half of parley's own saturation, where it is not overloaded.
    const ownRate = parleyRun.sat.deliveriesPerSec / 2 / options.subs;
    const ownLat = await paced(
      parley,
      parleyRun.states,
      options.seconds,
      ownRate,
      options.pacedInflight,
    );
    log(
      `parley: paced ${ownRate.toFixed(1)} msg/s: p50 ${ownLat.p50Ms.toFixed(2)} ms, ` +
        `p99 ${ownLat.p99Ms.toFixed(2)} ms`,
    );
    const parleyDelivery = verify(parleyRun.states);
    await closeAll(parleyRun.states);
    const lastSeqs = parleyRun.states.map((s) => s.maxSeq);
    await sleep(300);
    await stopChild(parleyChild);

    const results: Results = {
      sat: { parley: parleyRun.sat, bare: bareRun.sat },
      lat: { parley: parleyRun.lat, bare: bareRun.lat },
      ownLat,
      delivery: { parley: parleyDelivery, bare: bareDelivery },
      memory: {},
    };

    // Memory per idle subscribed connection, each on a fresh server process.
    for (const kind of ["parley", "bare"] as const) {
      const child = spawnServer(kind, dbUrl.href, pinned);
      const port = await child.port();
      const target = kind === "parley"
        ? parleyTarget(port, child.pid)
        : bareTarget(port, child.pid);
      const seqs = kind === "parley" ? lastSeqs : rooms.map(() => 0);
      try {
        results.memory[kind] = await withTimeout(
          memoryTest(target, rooms, seqs, options.memConns),
          120_000,
          `${kind} memory test`,
        );
        const m = results.memory[kind]!;
        log(
          `${kind}: RSS ${m.beforeKiB} -> ${m.afterKiB} KiB with ${m.connections} subscribed ` +
            `connections (${m.perConnKiB.toFixed(1)} KiB each)`,
        );
      } catch (error) {
        note(kind, `memory test failed: ${(error as Error).message}`);
      }
      await stopChild(child);
      for (const line of child.stderr) note(kind, `server stderr (memory run): ${line}`);
    }

    for (const line of parleyChild.stderr) note("parley", `server stderr: ${line}`);
    if (parleyChild.stderrLines > parleyChild.stderr.length) {
      note(
        "parley",
        `... ${parleyChild.stderrLines - parleyChild.stderr.length} more stderr lines`,
      );
    }
    for (const line of bareChild.stderr) note("bare", `server stderr: ${line}`);

    report(results, options, clkTck, pinned, (now() - started) / 1000, background);
    const ok = (["parley", "bare"] as const).every((kind) => {
      const d = results.delivery[kind];
      return d.delivered === d.expected && d.unique === d.expected && d.dups === 0 &&
        d.gaps === 0 && sendErrors[kind].count === 0;
    });
    return ok ? 0 : 1;
  } finally {
    clearTimeout(watchdog);
    Deno.removeSignalListener("SIGINT", onSignal);
    await cleanup();
  }
}

function report(
  r: Results,
  options: Options,
  clkTck: number,
  pinned: boolean,
  elapsed: number,
  background: number,
): void {
  const rows: [string, string, string, string][] = [];
  const ratio = (a: number, b: number) => (Number.isFinite(a / b) ? (a / b).toFixed(3) : "-");
  const num = (x: number, digits = 0) =>
    Number.isFinite(x)
      ? x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })
      : "-";
  const row = (name: string, p: number, b: number, digits = 0, withRatio = true) =>
    rows.push([name, num(p, digits), num(b, digits), withRatio ? ratio(p, b) : ""]);
  const { sat, lat, delivery: d, memory: m } = r;

  row("(a) deliveries/s at saturation", sat.parley.deliveriesPerSec, sat.bare.deliveriesPerSec);
  row("    messages sent/s", sat.parley.sendsPerSec, sat.bare.sendsPerSec);
  row("    bytes per delivered frame", sat.parley.bytesPerFrame, sat.bare.bytesPerFrame);
  row("(b) server CPU us per delivery", sat.parley.serverCpuUs, sat.bare.serverCpuUs, 2);
  rows.push([
    "    server core busy (window)",
    pct(sat.parley.serverCoreUtil),
    pct(sat.bare.serverCoreUtil),
    "",
  ]);
  rows.push([
    "    + postgres backends us/delivery",
    sat.parley.pgCpuUs === null ? "-" : num(sat.parley.pgCpuUs, 2),
    "n/a",
    "",
  ]);
  rows.push([
    "    load generator core busy",
    pct(sat.parley.loadgenCoreUtil),
    pct(sat.bare.loadgenCoreUtil),
    "",
  ]);
  rows.push([
    "    all other processes (cores)",
    num(sat.parley.otherCores, 2),
    num(sat.bare.otherCores, 2),
    "",
  ]);
  rows.push([
    "    hypervisor steal (cores)",
    num(sat.parley.stealCores, 2),
    num(sat.bare.stealCores, 2),
    "",
  ]);
  rows.push([
    `(c) paced at ${num(lat.bare.targetMsgRate, 1)} msg/s (target)`,
    `${num(lat.parley.achievedMsgRate, 1)} sent`,
    `${num(lat.bare.achievedMsgRate, 1)} sent`,
    "",
  ]);
  row("    deliveries/s while pacing", lat.parley.deliveriesPerSec, lat.bare.deliveriesPerSec);
  row("    latency p50 (ms)", lat.parley.p50Ms, lat.bare.p50Ms, 2);
  row("    latency p99 (ms)", lat.parley.p99Ms, lat.bare.p99Ms, 2);
  row("    latency max (ms)", lat.parley.maxMs, lat.bare.maxMs, 2);
  row("    load generator loop lag p99 (ms)", lat.parley.lagP99Ms, lat.bare.lagP99Ms, 2, false);
  row("    load generator loop lag max (ms)", lat.parley.lagMaxMs, lat.bare.lagMaxMs, 2, false);
  if (r.ownLat) {
    rows.push([
      `    parley at ${num(r.ownLat.achievedMsgRate, 1)} msg/s (50% own sat.)`,
      `p50 ${num(r.ownLat.p50Ms, 2)}`,
      `p50 ${num(lat.bare.p50Ms, 2)}`,
      ratio(r.ownLat.p50Ms, lat.bare.p50Ms),
    ]);
    rows.push([
      "      (each at 50% of own ceiling)",
      `p99 ${num(r.ownLat.p99Ms, 2)}`,
      `p99 ${num(lat.bare.p99Ms, 2)}`,
      ratio(r.ownLat.p99Ms, lat.bare.p99Ms),
    ]);
  }
  rows.push([
    "(d) delivered / expected",
    `${d.parley.delivered}/${d.parley.expected}`,
    `${d.bare.delivered}/${d.bare.expected}`,
    "",
  ]);
  rows.push([
    "    ratio",
    (d.parley.delivered / d.parley.expected).toFixed(6),
    (d.bare.delivered / d.bare.expected).toFixed(6),
    "",
  ]);
  rows.push([
    "    dups / gaps / errors / closed",
    `${d.parley.dups}/${d.parley.gaps}/${d.parley.errors}/${d.parley.closedSubs}`,
    `${d.bare.dups}/${d.bare.gaps}/${d.bare.errors}/${d.bare.closedSubs}`,
    "",
  ]);
  rows.push([
    "    failed sends",
    String(sendErrors.parley.count),
    String(sendErrors.bare.count),
    "",
  ]);
  if (m.parley && m.bare) {
    row(
      `(e) RSS KiB per idle sub @ ${num(m.parley.connections)}/${num(m.bare.connections)}`,
      m.parley.perConnKiB,
      m.bare.perConnKiB,
      2,
    );
    rows.push([
      "    RSS before -> after (MiB)",
      `${num(m.parley.beforeKiB / 1024, 1)} -> ${num(m.parley.afterKiB / 1024, 1)}`,
      `${num(m.bare.beforeKiB / 1024, 1)} -> ${num(m.bare.afterKiB / 1024, 1)}`,
      "",
    ]);
  } else {
    rows.push(["(e) RSS per idle subscribed connection", "failed", "failed", ""]);
  }

  const widths = [0, 1, 2, 3].map((i) =>
    Math.max(
      ...rows.map((cells) => cells[i].length),
      ["metric", "parley", "bare", "parley/bare"][i]
        .length,
    )
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  console.log(
    `\nparley bench: rooms=${options.rooms} subs/room=${options.subs} seconds=${options.seconds} ` +
      `senders/room=${options.senders} window=${options.window} CLK_TCK=${clkTck} ` +
      `pinning=${pinned ? "servers core 0, load generator core 1, postgres unpinned" : "none"} ` +
      `background-load-before=${background.toFixed(2)} cores run=${elapsed.toFixed(0)}s`,
  );
  console.log(line(["metric", "parley", "bare", "parley/bare"]));
  console.log(line(widths.map((w) => "-".repeat(w))));
  for (const cells of rows) console.log(line(cells));
  for (const kind of ["parley", "bare"] as const) {
    const extra = [
      ...sendErrors[kind].samples.map((s) => `send error: ${s}`),
      ...r.delivery[kind].seqMismatch,
      ...r.delivery[kind].closeSamples.map((s) => `subscriber closed: ${s}`),
      ...anomalies[kind],
    ];
    if (extra.length) {
      console.log(`\n${kind} anomalies:`);
      for (const e of extra) console.log(`  ${e.slice(0, 400)}`);
    }
  }
}

if (import.meta.main) {
  try {
    Deno.exitCode = await main();
  } catch (error) {
    console.error("bench failed:", error);
    Deno.exitCode = 2;
  }
}
