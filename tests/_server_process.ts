/**
 * parley's server as a subprocess, started exactly as `deno task start` starts it: for tests of
 * startup, signals, configuration and faults that only a whole process shows.
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

/** A server subprocess whose stdout and stderr are collected line by line. */
export interface ServerProcess extends AsyncDisposable {
  child: Deno.ChildProcess;
  stdout: string[];
  stderr: string[];
  /** Resolves with the first line of `stream` matching `pattern`; rejects on exit or timeout. */
  waitForLine(
    stream: "stdout" | "stderr",
    pattern: RegExp,
    timeoutMs?: number,
  ): Promise<RegExpMatchArray>;
  /** Waits for the process to exit and for both streams to be read to the end. */
  finished(): Promise<Deno.CommandStatus>;
}

/**
 * Spawns `deno task start`'s command line (with this Deno binary as `deno`) in the repo root,
 * with `baseEnv()` and `env` only. tests/startup_test.ts checks that the Dockerfile's CMD is
 * the same command line.
 */
export async function spawnServer(env: Record<string, string>): Promise<ServerProcess> {
  const [, ...args] = await startTask();
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    clearEnv: true,
    env: { ...baseEnv(), ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  const lines = { stdout: [] as string[], stderr: [] as string[] };
  const listeners = new Set<() => void>();
  const notify = () => listeners.forEach((listener) => listener());

  async function collect(stream: ReadableStream<Uint8Array>, into: string[]) {
    let pending = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (pending + chunk).split("\n");
      pending = parts.pop()!;
      into.push(...parts);
      notify();
    }
    if (pending) into.push(pending);
    notify();
  }
  const reading = Promise.all([
    collect(child.stdout, lines.stdout),
    collect(child.stderr, lines.stderr),
  ]);
  let exited = false;
  const status = child.status.then((status) => {
    exited = true;
    return status;
  });
  let ended = false;
  const end = Promise.all([reading, status]).then(([, status]) => {
    ended = true;
    return status;
  });
  const finished = () => end;
  const describe = () => `stdout:\n${lines.stdout.join("\n")}\nstderr:\n${lines.stderr.join("\n")}`;

  return {
    child,
    ...lines,
    finished,
    waitForLine(stream, pattern, timeoutMs = STARTUP_TIMEOUT_MS) {
      return new Promise((resolve, reject) => {
        const done = (settle: () => void) => {
          clearTimeout(timer);
          listeners.delete(check);
          settle();
        };
        const check = () => {
          for (const line of lines[stream]) {
            const match = line.match(pattern);
            if (match) return done(() => resolve(match));
          }
          if (ended) {
            done(() =>
              reject(new Error(`Server exited before printing ${pattern}\n${describe()}`))
            );
          }
        };
        const timer = setTimeout(
          () => done(() => reject(new Error(`No ${pattern} within timeout\n${describe()}`))),
          timeoutMs,
        );
        listeners.add(check);
        end.then(check);
        check();
      });
    },
    async [Symbol.asyncDispose]() {
      if (!exited) {
        try {
          child.kill("SIGKILL");
        } catch {
          // It exited between the check and the kill.
        }
      }
      await finished();
    },
  };
}

/**
 * Sends `signal` (SIGTERM by default); returns the exit status, or null if the process
 * outlived `SIGTERM_EXIT_MS`.
 */
export async function terminate(
  server: ServerProcess,
  signal: Deno.Signal = "SIGTERM",
): Promise<Deno.CommandStatus | null> {
  server.child.kill(signal);
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
