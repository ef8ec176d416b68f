/**
 * The log sink of the running server (see `log.ts`). Info lines (one or two per request or
 * connection) go to stdout in batches, once per turn of the event loop or at 64 KiB, instead of
 * one write each: a write per line cost about as much as a tenth of a WebSocket connection's
 * setup. They are flushed when the process exits (Deno dispatches "unload" on `Deno.exit`
 * too). Warnings and errors go to stderr at once.
 */
import type { LogSink } from "./log.ts";

/** A sink that batches info lines to stdout; see the module comment. */
export function bufferedStdoutSink(): LogSink {
  const encoder = new TextEncoder();
  let lines: string[] = [];
  let size = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  function flush() {
    clearTimeout(timer);
    timer = undefined;
    if (lines.length === 0) return;
    const bytes = encoder.encode(lines.join("\n") + "\n");
    lines = [];
    size = 0;
    for (let written = 0; written < bytes.length;) {
      written += Deno.stdout.writeSync(bytes.subarray(written));
    }
  }
  globalThis.addEventListener("unload", flush);
  return {
    info(line) {
      lines.push(line);
      size += line.length;
      if (size > 64 * 1024) flush();
      else timer ??= setTimeout(flush, 0);
    },
    problem(line) {
      flush(); // what came before a problem is read before it
      console.error(line);
    },
  };
}
