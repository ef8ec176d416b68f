/**
 * A server as a subprocess whose output is collected line by line: parley started exactly as
 * `deno task start` starts it (tests of startup, signals, configuration and faults that only a
 * whole process shows), or any Deno script run through an optional command prefix (the bench
 * runs parley and `bench/bare_server.ts` under `taskset`).
 *
 * It imports nothing, npm packages least of all: the tests type-check it with their own
 * lockfile (`deno check --lock=tests/deno.lock tests/`) and the bench with the main one.
 */

/** The repository root. */
export const ROOT = new URL("..", import.meta.url);

/**
 * The settings most spawned servers share: a free port on loopback and one allowed origin
 * (`https://app.example.com`). Spread it and add the database's.
 */
export const LOCAL_SERVER_ENV: Readonly<Record<string, string>> = {
  PORT: "0",
  HOST: "127.0.0.1",
  ALLOWED_ORIGINS: "https://app.example.com",
};

/** How long a started server may take to print its listening line. */
export const STARTUP_TIMEOUT_MS = 30_000;

/** How long the server may take to exit after SIGTERM. */
export const SIGTERM_EXIT_MS = 3_000;

/** Environment every spawned server gets: enough for deno to find its cache, nothing else. */
export function baseEnv(): Record<string, string> {
  const env: Record<string, string> = { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" };
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/** One of a process's two output streams. */
export type OutputStream = "stdout" | "stderr";

/** A server subprocess whose stdout and stderr are collected line by line. */
export interface ServerProcess extends AsyncDisposable {
  child: Deno.ChildProcess;
  /**
   * The process id of the server itself: a prefix such as `taskset -c 0` execs the command,
   * so its pid is the server's (the bench reads `/proc/<pid>` with it).
   */
  pid: number;
  /** The lines printed so far (the last `keepLines` of them when that option is set). */
  stdout: string[];
  stderr: string[];
  /** Lines dropped from the front of `stdout` and `stderr` to stay within `keepLines`. */
  dropped: Record<OutputStream, number>;
  /** The exit status and when it came (performance.now(), ms), or null while it runs. */
  exit: { status: Deno.CommandStatus; at: number } | null;
  /** Resolves with the first line of `stream` matching `pattern`; rejects on exit or timeout. */
  waitForLine(
    stream: OutputStream,
    pattern: RegExp,
    timeoutMs?: number,
  ): Promise<RegExpMatchArray>;
  /** Waits for the process to exit and for both streams to be read to the end. */
  finished(): Promise<Deno.CommandStatus>;
}

/** What `spawnProcess` runs, and how. */
export interface SpawnOptions {
  /** Arguments of this Deno binary, e.g. `["run", "--allow-net", "bench/bare_server.ts"]`. */
  args: string[];
  /** Added to `baseEnv()`; nothing else of this process's environment is passed on. */
  env: Record<string, string>;
  /**
   * A command that runs the Deno binary and execs it (so the pid stays the server's), e.g.
   * `["taskset", "-c", "0"]`. Default: none, Deno is run directly.
   */
  prefix?: string[];
  /** Working directory (default: the repository root). */
  cwd?: string | URL;
  /**
   * Most lines kept per stream, the oldest dropped first (counted in `dropped`). Default: all;
   * a server under a benchmark prints a line per connection and would fill memory otherwise.
   */
  keepLines?: number;
}

/**
 * Spawns `deno task start`'s command line (with this Deno binary as `deno`) in the repo root,
 * with `baseEnv()` and `env` only. tests/startup_test.ts checks that the Dockerfile's CMD is
 * the same command line.
 */
export async function spawnServer(env: Record<string, string>): Promise<ServerProcess> {
  const [, ...args] = await startTask();
  return spawnProcess({ args, env });
}

/**
 * Spawns this Deno binary with `options.args` (behind `options.prefix` when given), stdin
 * closed, stdout and stderr collected line by line. Throws only when the command cannot be
 * started at all (e.g. the prefix's program is missing).
 */
export function spawnProcess(options: SpawnOptions): ServerProcess {
  const [command, ...prefixArgs] = [...(options.prefix ?? []), Deno.execPath()];
  const child = new Deno.Command(command, {
    args: [...prefixArgs, ...options.args],
    cwd: options.cwd ?? ROOT,
    clearEnv: true,
    env: { ...baseEnv(), ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const keepLines = options.keepLines ?? Infinity;

  const lines: Record<OutputStream, string[]> = { stdout: [], stderr: [] };
  const dropped: Record<OutputStream, number> = { stdout: 0, stderr: 0 };
  // Each waiter sees every line once, as it arrives: with `keepLines` a line may be dropped
  // before anyone scans the array again.
  const watchers = new Set<(stream: OutputStream, line: string) => void>();

  function push(stream: OutputStream, line: string) {
    lines[stream].push(line);
    if (lines[stream].length > keepLines) {
      lines[stream].shift();
      dropped[stream]++;
    }
    for (const watcher of watchers) watcher(stream, line);
  }

  async function collect(stream: ReadableStream<Uint8Array>, name: OutputStream) {
    let pending = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (pending + chunk).split("\n");
      pending = parts.pop()!;
      for (const part of parts) push(name, part);
    }
    if (pending) push(name, pending);
  }
  const reading = Promise.all([collect(child.stdout, "stdout"), collect(child.stderr, "stderr")]);
  const server: ServerProcess = {
    child,
    pid: child.pid,
    ...lines,
    dropped,
    exit: null,
    finished: () => end,
    waitForLine,
    async [Symbol.asyncDispose]() {
      if (!server.exit) {
        try {
          child.kill("SIGKILL");
        } catch {
          // It exited between the check and the kill.
        }
      }
      await end;
    },
  };
  const status = child.status.then((status) => {
    server.exit = { status, at: performance.now() };
    return status;
  });
  const end = Promise.all([reading, status]).then(([, status]) => status);
  const describe = () => `stdout:\n${lines.stdout.join("\n")}\nstderr:\n${lines.stderr.join("\n")}`;

  function waitForLine(
    stream: OutputStream,
    pattern: RegExp,
    timeoutMs = STARTUP_TIMEOUT_MS,
  ): Promise<RegExpMatchArray> {
    for (const line of lines[stream]) {
      const match = line.match(pattern);
      if (match) return Promise.resolve(match);
    }
    return new Promise((resolve, reject) => {
      const done = (settle: () => void) => {
        clearTimeout(timer);
        watchers.delete(watch);
        settle();
      };
      const watch = (from: OutputStream, line: string) => {
        const match = from === stream ? line.match(pattern) : null;
        if (match) done(() => resolve(match));
      };
      const timer = setTimeout(
        () => done(() => reject(new Error(`No ${pattern} within timeout\n${describe()}`))),
        timeoutMs,
      );
      watchers.add(watch);
      end.then(() =>
        done(() => reject(new Error(`Server exited before printing ${pattern}\n${describe()}`)))
      );
    });
  }

  return server;
}

/**
 * Sends `signal` (SIGTERM by default); returns the exit status, or null if the process
 * outlived `SIGTERM_EXIT_MS`.
 */
export async function terminate(
  server: ServerProcess,
  signal: Deno.Signal = "SIGTERM",
): Promise<Deno.CommandStatus | null> {
  try {
    server.child.kill(signal);
  } catch (error) {
    // Already gone: its status is the answer. Anything else is the caller's to see.
    if (!server.exit) throw error;
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), SIGTERM_EXIT_MS);
  });
  try {
    return await Promise.race([server.finished(), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** deno.json's `tasks.start`, split into arguments. */
export async function startTask(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  return (config.tasks.start as string).split(" ");
}
