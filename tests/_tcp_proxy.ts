/**
 * A TCP proxy of the tests' own, put between parley and Postgres to inject network faults
 * without touching the shared Postgres server: refuse connections, black-hole open ones (stop
 * forwarding without closing, as a NAT or a proxy that drops idle flows does), or cut them.
 */

/** What a test can do to the traffic through the proxy. */
export interface TcpProxy extends AsyncDisposable {
  /** The proxy's port on 127.0.0.1. */
  port: number;
  /** Open client connections. */
  readonly connections: number;
  /**
   * Stops forwarding in both directions on every open connection, without closing any; new
   * connections still forward. `localPort` black-holes only the connection whose port on the
   * proxy's side toward the target is that (Postgres's `pg_stat_activity.client_port`), e.g.
   * an idle LISTEN connection. Returns how many connections it black-holed.
   */
  blackhole(options?: { localPort?: number }): number;
  /** Forwards again (new connections always forward unless `swallowNew`). */
  heal(): void;
  /** From now on, new connections are accepted and never answered (true), or proxied (false). */
  swallowNew(on: boolean): void;
  /** Closes every open connection at once. */
  cutAll(): void;
  close(): Promise<void>;
}

/**
 * Starts a proxy on 127.0.0.1 (on `port`, or a free one) that forwards to `target`. Bounded:
 * it only ever connects to `target`, which tests point at the local Postgres.
 */
export function startTcpProxy(
  target: { hostname: string; port: number },
  options: { port?: number } = {},
): TcpProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: options.port ?? 0 });
  interface Entry {
    client: Deno.Conn;
    server: Deno.Conn | null;
    blackholed: boolean;
    waiters: Set<() => void>;
  }
  const open = new Set<Entry>();
  let swallow = false;
  const flowing = (entry: Entry) =>
    entry.blackholed
      ? new Promise<void>((resolve) => entry.waiters.add(resolve))
      : Promise.resolve();

  async function pipe(entry: Entry, from: Deno.Conn, to: Deno.Conn): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) break;
        await flowing(entry); // a black hole holds what it read
        let written = 0;
        while (written < n) written += await to.write(buffer.subarray(written, n));
      }
    } catch {
      // A side went away.
    }
  }

  async function handle(client: Deno.Conn): Promise<void> {
    const entry: Entry = { client, server: null, blackholed: false, waiters: new Set() };
    open.add(entry);
    try {
      if (swallow) {
        // Accept, read and drop everything, never answer.
        const sink = new Uint8Array(4096);
        while ((await client.read(sink).catch(() => null)) !== null) { /* drop */ }
        return;
      }
      entry.server = await Deno.connect(target);
      await Promise.race([
        pipe(entry, client, entry.server),
        pipe(entry, entry.server, client),
      ]);
    } catch {
      // The target refused.
    } finally {
      open.delete(entry);
      try {
        client.close();
      } catch { /* closed */ }
      try {
        entry.server?.close();
      } catch { /* closed */ }
    }
  }

  const accepting = (async () => {
    try {
      for await (const conn of listener) void handle(conn);
    } catch {
      // Closed.
    }
  })();

  function cutAll() {
    for (const { client, server } of open) {
      try {
        client.close();
      } catch { /* closed */ }
      try {
        server?.close();
      } catch { /* closed */ }
    }
  }

  async function close() {
    listener.close();
    heal();
    cutAll();
    await accepting;
  }

  function heal() {
    for (const entry of open) {
      entry.blackholed = false;
      for (const wake of entry.waiters) wake();
      entry.waiters.clear();
    }
  }

  return {
    port: (listener.addr as Deno.NetAddr).port,
    get connections() {
      return open.size;
    },
    blackhole(options = {}) {
      let count = 0;
      for (const entry of open) {
        const port = (entry.server?.localAddr as Deno.NetAddr | undefined)?.port;
        if (options.localPort !== undefined && port !== options.localPort) continue;
        entry.blackholed = true;
        count++;
      }
      return count;
    },
    heal,
    swallowNew(on) {
      swallow = on;
    },
    cutAll,
    close,
    [Symbol.asyncDispose]: close,
  };
}
