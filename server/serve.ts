/** Starts parley's HTTP server on a database that is already migrated. */
import type { Sql } from "../db/mod.ts";
import { createHandler } from "./app.ts";
import type { Logger } from "./log.ts";
import type { OriginPolicy } from "./origin.ts";

/** What `serve` needs. */
export interface ServeOptions {
  sql: Sql;
  origins: OriginPolicy;
  log: Logger;
  hostname: string;
  /** 0 picks a free port. */
  port: number;
}

/** A running server. */
export interface RunningServer {
  /** Base URL, e.g. `http://127.0.0.1:8000`. */
  url: string;
  port: number;
  /** Stops accepting connections and waits for in-flight requests to finish. */
  shutdown(): Promise<void>;
}

/** Serves the API until `shutdown` is called. */
export function serve(options: ServeOptions): Promise<RunningServer> {
  const handler = createHandler(options);
  return new Promise((resolve) => {
    const server = Deno.serve({
      hostname: options.hostname,
      port: options.port,
      onListen({ hostname, port }) {
        const host = hostname === "0.0.0.0" || hostname === "::" ? "127.0.0.1" : hostname;
        resolve({
          url: `http://${host}:${port}`,
          port,
          shutdown: () => server.shutdown(),
        });
      },
    }, (req) => handler(req));
  });
}
