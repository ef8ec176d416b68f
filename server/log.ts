/**
 * One line per event: readable text in development, one JSON object per line in
 * production (for Railway's log search).
 */

import { clip } from "./clip.ts";

/** Longest message a log line keeps, in code points. */
const MAX_MESSAGE = 500;

/** Longest field value a log line keeps (an origin, a path), in code points. */
const MAX_FIELD = 200;

/** Extra facts about an event (request method, status, origin, ...). */
export type LogFields = Record<string, string | number | boolean | null | undefined>;

/** A sink for log lines; tests pass their own to capture or silence them. */
export interface Logger {
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, error?: unknown, fields?: LogFields): void;
}

/** Where log lines go: info lines, and warnings and errors. */
export interface LogSink {
  info(line: string): void;
  problem(line: string): void;
}

/** Info lines to `console.log` (stdout), warnings and errors to `console.error` (stderr). */
export const CONSOLE_SINK: LogSink = {
  info: (line) => console.log(line),
  problem: (line) => console.error(line),
};

/**
 * Logs to `sink` (default: stdout and stderr) in the given format. Every message and string field is bounded
 * (request-supplied text such as an Origin can be tens of kilobytes); an error's stack gets
 * more room.
 */
export function createLogger(format: "json" | "text", sink: LogSink = CONSOLE_SINK): Logger {
  function write(level: "info" | "warn" | "error", text: string, raw: LogFields = {}) {
    const message = clip(text, MAX_MESSAGE);
    const fields: LogFields = {};
    for (const [key, value] of Object.entries(raw)) {
      // An error's stack gets more room than a request's facts, but is bounded too.
      const max = key === "error" ? 8 * MAX_MESSAGE : MAX_FIELD;
      fields[key] = typeof value === "string" ? clip(value, max) : value;
    }
    const line = format === "json"
      ? JSON.stringify({ time: new Date().toISOString(), level, msg: message, ...fields })
      : [
        message,
        ...Object.entries(fields)
          .filter(([, value]) => value !== undefined && value !== null)
          .map(([key, value]) => `${key}=${value}`),
      ].join(" ");
    if (level === "info") sink.info(line);
    else sink.problem(line);
  }
  return {
    info: (message, fields) => write("info", message, fields),
    warn: (message, fields) => write("warn", message, fields),
    error: (message, error, fields) =>
      write("error", message, error === undefined ? fields : { ...fields, error: describe(error) }),
  };
}

function describe(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}
