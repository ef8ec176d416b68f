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
  /** Stops forwarding in both directions on every open connection, without closing any. */
  blackhole(): void;
  /** Forwards again (new connections always forward unless `refuseNew`). */
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
  const open = new Set<{ client: Deno.Conn; server: Deno.Conn | null }>();
  let blackholed = false;
  let swallow = false;
  const waiters = new Set<() => void>();
  const flowing = () =>
    blackholed ? new Promise<void>((resolve) => waiters.add(resolve)) : Promise.resolve();

  async function pipe(from: Deno.Conn, to: Deno.Conn): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) break;
        await flowing(); // a black hole holds what it read
        let written = 0;
        while (written < n) written += await to.write(buffer.subarray(written, n));
      }
    } catch {
      // A side went away.
    }
  }

  async function handle(client: Deno.Conn): Promise<void> {
    const entry = { client, server: null as Deno.Conn | null };
    open.add(entry);
    try {
      if (swallow) {
        // Accept, read and drop everything, never answer.
        const sink = new Uint8Array(4096);
        while ((await client.read(sink).catch(() => null)) !== null) { /* drop */ }
        return;
      }
      entry.server = await Deno.connect(target);
      await Promise.race([pipe(client, entry.server), pipe(entry.server, client)]);
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
    blackholed = false;
    for (const wake of waiters) wake();
    waiters.clear();
  }

  return {
    port: (listener.addr as Deno.NetAddr).port,
    get connections() {
      return open.size;
    },
    blackhole() {
      blackholed = true;
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
