/**
 * This instance's LISTEN connection, checked by a heartbeat. Every `heartbeatMs` the instance
 * NOTIFYs itself on a heartbeat channel of its own through the pool and expects to hear it on
 * the LISTEN connection within `heartbeatTimeoutMs`. A missed beat means the LISTEN
 * connection is dead, whether closed (postgres.js would reconnect it by itself) or silently
 * black-holed by a NAT or a proxy that drops idle flows (nothing would ever notice): its socket
 * is destroyed and a new LISTEN connection opened, whose channels' `onListen` then catch up.
 *
 * The first heartbeat is also the startup check: behind a pooler in transaction mode, LISTEN
 * runs on some server connection that is handed back to the pool, and a NOTIFY sent through
 * the pool is never heard. `start` then fails with `NotificationsNotHeardError`.
 */
import {
  heartbeatChannel,
  type ListeningClient,
  notifyAll,
  openListeningClient,
} from "../../db/notify.ts";
import type { Sql } from "../../db/mod.ts";
import type { Logger } from "../log.ts";

/** One channel to LISTEN on. */
export interface ListenChannel {
  channel: string;
  /** Receives each notification's payload. */
  onNotify: (payload: string) => void;
  /**
   * Runs once the channel is listened to, and again after every reconnect or replacement of
   * the LISTEN connection: anything sent meanwhile may have been missed.
   */
  onListen: () => void;
}

/** What a `ListeningConnection` needs. */
export interface ListeningOptions {
  /** Postgres itself (never a pooler in transaction mode): where the LISTEN connection goes. */
  url: string;
  /** The pool heartbeats are NOTIFYed through, as every other instance's announcements are. */
  pool: Sql;
  channels: ListenChannel[];
  log: Logger;
  /** Between the end of one heartbeat and the next, in milliseconds (default 2000). */
  heartbeatMs?: number;
  /**
   * How long a heartbeat may take to be heard after its NOTIFY committed before the LISTEN
   * connection counts as dead, in milliseconds (default 2000); also the startup check's bound.
   */
  heartbeatTimeoutMs?: number;
}

/** Default time between heartbeats, in milliseconds. */
export const HEARTBEAT_MS = 2_000;

/** Default time a heartbeat may take to be heard, in milliseconds. */
export const HEARTBEAT_TIMEOUT_MS = 2_000;

/**
 * How long opening a LISTEN connection and its LISTENs may take, in milliseconds: the connect
 * timeout (db/mod.ts, 5 s) and then some. A new connection that is black-holed as well is
 * given up after this and tried again at the next heartbeat.
 */
const OPEN_TIMEOUT_MS = 8_000;

/**
 * Raised by `start` when a NOTIFY sent through the pool is not heard on the LISTEN connection:
 * the pool is a pooler in transaction mode, or the two lead to different databases.
 */
export class NotificationsNotHeardError extends Error {
  /** How long the heartbeat was waited for, in milliseconds. */
  readonly waitedMs: number;

  constructor(waitedMs: number) {
    super(
      `A NOTIFY sent through the pool was not heard on the LISTEN connection within ${waitedMs} ms`,
    );
    this.name = "NotificationsNotHeardError";
    this.waitedMs = waitedMs;
  }
}

/** The LISTEN connection of this instance, kept alive by a heartbeat. */
export class ListeningConnection {
  #options: ListeningOptions;
  #heartbeatMs: number;
  #timeoutMs: number;
  #channel = heartbeatChannel();
  #client: ListeningClient | null = null;
  #sent = 0;
  #heard = 0;
  #onHeard: (() => void) | null = null;
  #beatFailing = false;
  #openFailing = false;
  #stopping = new AbortController();
  #watching: Promise<void> | null = null;
  #up = false;
  #replacements = 0;

  constructor(options: ListeningOptions) {
    this.#options = options;
    this.#heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
    this.#timeoutMs = options.heartbeatTimeoutMs ?? HEARTBEAT_TIMEOUT_MS;
  }

  /**
   * True while the LISTEN connection is open and its last heartbeat was heard (or it was just
   * opened): notifications from other instances arrive. False before `start`, after a missed
   * heartbeat until a replacement opens, and after `close`.
   */
  get up(): boolean {
    return this.#up;
  }

  /** LISTEN connections opened to replace one that missed a heartbeat (or failed to open). */
  get replacements(): number {
    return this.#replacements;
  }

  /**
   * Opens the LISTEN connection, checks that a heartbeat sent through the pool is heard on it,
   * then keeps checking every `heartbeatMs`. Rejects with the database's error when it cannot
   * be reached, or with `NotificationsNotHeardError`; nothing is left open then.
   */
  async start(): Promise<void> {
    this.#client = await this.#open();
    try {
      const beat = await this.#beat();
      if (beat.outcome === "unsent") throw beat.error;
      if (beat.outcome === "missed") throw new NotificationsNotHeardError(this.#timeoutMs);
    } catch (error) {
      this.#client.destroy();
      this.#client = null;
      throw error;
    }
    this.#up = true;
    this.#watching = this.#watch();
  }

  /** Stops the heartbeat and closes the LISTEN connection. */
  async close(): Promise<void> {
    this.#stopping.abort();
    this.#up = false;
    this.#onHeard?.();
    await this.#watching;
    this.#client?.destroy();
    this.#client = null;
  }

  /** Opens a LISTEN connection on every channel and the heartbeat channel, within a bound. */
  async #open(): Promise<ListeningClient> {
    const client = openListeningClient(this.#options.url);
    try {
      await within(
        OPEN_TIMEOUT_MS,
        Promise.all([
          client.listen(this.#channel, (payload) => this.#onBeat(payload)),
          ...this.#options.channels.map((c) => client.listen(c.channel, c.onNotify, c.onListen)),
        ]),
        "opening the LISTEN connection",
        this.#stopping.signal,
      );
      return client;
    } catch (error) {
      client.destroy();
      throw error;
    }
  }

  /**
   * NOTIFYs the next heartbeat through the pool and waits up to `heartbeatTimeoutMs` (after
   * the NOTIFY committed) to hear it. "unsent" when the pool could not send it: the database
   * is unreachable, which says nothing about the LISTEN connection.
   */
  async #beat(): Promise<
    { outcome: "heard" | "missed" } | { outcome: "unsent"; error: unknown }
  > {
    const n = ++this.#sent;
    try {
      // A pool that never answers must not stall the heartbeat: that counts as unsent.
      await within(
        OPEN_TIMEOUT_MS,
        notifyAll(this.#options.pool, this.#channel, [String(n)]),
        "the heartbeat's NOTIFY",
        this.#stopping.signal,
      );
    } catch (error) {
      return { outcome: "unsent", error };
    }
    return { outcome: await this.#hear(n) ? "heard" : "missed" };
  }

  /** Resolves true once heartbeat `n` was heard, false after `heartbeatTimeoutMs` or on close. */
  #hear(n: number): Promise<boolean> {
    if (this.#heard >= n) return Promise.resolve(true);
    return new Promise((resolve) => {
      const settle = () => {
        clearTimeout(timer);
        this.#onHeard = null;
        resolve(this.#heard >= n);
      };
      const timer = setTimeout(settle, this.#timeoutMs);
      this.#onHeard = () => {
        if (this.#heard >= n || this.#stopping.signal.aborted) settle();
      };
    });
  }

  #onBeat(payload: string): void {
    const n = Number(payload);
    if (n > this.#heard) this.#heard = n;
    this.#onHeard?.();
  }

  /** Beats until closed; replaces the LISTEN connection after a missed beat. */
  async #watch(): Promise<void> {
    const { log } = this.#options;
    while (await this.#sleep(this.#heartbeatMs)) {
      if (!this.#client) {
        await this.#replace(); // the last attempt to open one failed
        continue;
      }
      const beat = await this.#beat();
      if (this.#stopping.signal.aborted) return;
      if (beat.outcome === "unsent") {
        if (!this.#beatFailing) {
          log.warn(
            `Cannot send the heartbeat through the pool: retrying every ${this.#heartbeatMs} ms`,
            {
              error: (beat.error as Error)?.message ?? String(beat.error),
            },
          );
        }
        this.#beatFailing = true;
        continue;
      }
      this.#beatFailing = false;
      this.#up = beat.outcome === "heard";
      if (beat.outcome === "missed") {
        log.warn(
          `LISTEN connection missed a heartbeat (not heard within ${this.#timeoutMs} ms): ` +
            "replacing it",
        );
        await this.#replace();
      }
    }
  }

  /** Destroys the current LISTEN connection and opens a new one (its onListen catch up). */
  async #replace(): Promise<void> {
    const { log } = this.#options;
    this.#client?.destroy();
    this.#client = null;
    this.#up = false;
    const started = performance.now();
    try {
      const client = await this.#open();
      if (this.#stopping.signal.aborted) return client.destroy();
      this.#client = client;
      this.#openFailing = false;
      this.#up = true;
      this.#replacements++;
      log.info("LISTEN connection replaced", { ms: Math.round(performance.now() - started) });
    } catch (error) {
      // Logged once per outage; tried again at every heartbeat.
      if (!this.#openFailing) {
        log.warn(`Cannot open a new LISTEN connection: retrying every ${this.#heartbeatMs} ms`, {
          error: (error as Error)?.message ?? String(error),
        });
      }
      this.#openFailing = true;
    }
  }

  /** Waits `ms`; false when closed meanwhile. */
  #sleep(ms: number): Promise<boolean> {
    const signal = this.#stopping.signal;
    if (signal.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        signal.removeEventListener("abort", stop);
        resolve(true);
      }, ms);
      const stop = () => {
        clearTimeout(timer);
        resolve(false);
      };
      signal.addEventListener("abort", stop, { once: true });
    });
  }
}

/**
 * Resolves or rejects as `work` does, or rejects after `ms` with a `CONNECT_TIMEOUT` error (a
 * transient database error, db/mod.ts) naming `what`, or at once when `signal` aborts.
 */
async function within<T>(
  ms: number,
  work: Promise<T>,
  what: string,
  signal: AbortSignal,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort = () => {};
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new Error(`No answer from the database within ${ms} ms: ${what}`);
      reject(Object.assign(error, { code: "CONNECT_TIMEOUT" }));
    }, ms);
    onAbort = () => reject(new Error(`Stopped while waiting for the database: ${what}`));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  work.catch(() => {}); // after the bound nobody awaits it
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", onAbort);
  }
}
