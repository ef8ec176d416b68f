/**
 * Test helpers: each test gets its own Postgres database (created and dropped here)
 * and a real server on port 0, plus typed tRPC clients that talk to it over HTTP.
 */
import {
  createTRPCClient,
  createWSClient,
  httpBatchLink,
  httpLink,
  TRPCClientError,
  wsLink,
} from "@trpc/client";
import postgres from "postgres";
import superjson from "superjson";
import { startEmbedded } from "../db/embedded.ts";
import { connect, type Sql } from "../db/mod.ts";
import { migrate } from "../db/migrate.ts";
import { fillUsernameKeys } from "../db/users.ts";
import type { SocketOptions } from "../server/app.ts";
import type { HubTimings } from "../server/realtime/hub.ts";
import type { AccountSettings } from "../server/config.ts";
import type { CallSettings } from "../server/ice_servers.ts";
import { type AbuseLimits, DEFAULT_ABUSE_LIMITS } from "../server/limits.ts";
import type { LogFields, Logger } from "../server/log.ts";
import type { MetricsSettings } from "../server/metrics.ts";
import { createOriginPolicy } from "../server/origin.ts";
import type { AppRouter } from "../server/router.ts";
import { type RunningServer, serve } from "../server/serve.ts";

/**
 * Where tests create their databases: a real Postgres server when `TEST_DATABASE_URL` is
 * set, else a fresh embedded PGlite per test database.
 */
export const TEST_DATABASE_URL = Deno.env.get("TEST_DATABASE_URL") || null;

/** True when the suite runs on embedded PGlite. */
export const EMBEDDED = TEST_DATABASE_URL === null;

/** Pool size for a test database: one connection on PGlite (see db/embedded.ts). */
export const POOL_MAX = EMBEDDED ? 1 : 10;

/**
 * For `ignore:` on tests that need a real server (several instances, LISTEN/NOTIFY,
 * killing backends): true on embedded, after printing why the test is skipped.
 */
export function needsRealPostgres(what: string): boolean {
  if (EMBEDDED) {
    console.log(`Skipping "${what}": it needs a real Postgres server (set TEST_DATABASE_URL)`);
  }
  return EMBEDDED;
}

/** The allowlist test servers use unless a test passes its own. */
export const TEST_ORIGINS =
  "http://localhost:3000,https://app.example.com,https://video-chat-frontend-*-dalkirks-projects.vercel.app";

/** A fresh database that drops itself when disposed. */
export interface TestDatabase extends AsyncDisposable {
  url: string;
  name: string;
}

/**
 * Creates an empty database: next to `TEST_DATABASE_URL`, or an in-memory PGlite. With
 * `collationC`, a real server's database is created with `LC_COLLATE` and `LC_CTYPE` C (to show
 * that a rule does not depend on the database's locale).
 */
export async function createTestDatabase(
  options: { collationC?: boolean } = {},
): Promise<TestDatabase> {
  if (TEST_DATABASE_URL === null) {
    const embedded = await startEmbedded(null);
    return { url: embedded.url, name: "postgres", [Symbol.asyncDispose]: () => embedded.close() };
  }
  const admin = postgres(TEST_DATABASE_URL, { max: 1, onnotice: () => {} });
  const name = `parley_test_${crypto.randomUUID().replaceAll("-", "")}`;
  if (options.collationC) {
    await admin`
      create database ${admin(name)} template template0 encoding 'UTF8' lc_collate 'C' lc_ctype 'C'
    `;
  } else {
    await admin`create database ${admin(name)}`;
  }
  const url = new URL(TEST_DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    url: url.href,
    name,
    async [Symbol.asyncDispose]() {
      await admin`drop database if exists ${admin(name)} with (force)`;
      await admin.end();
    },
  };
}

/** A logger that keeps every line, for tests that check what was logged. */
export interface MemoryLogger extends Logger {
  /** Warnings and errors. */
  lines: string[];
  /** Every event, info included, with its fields. */
  events: { level: string; message: string; fields: LogFields }[];
}

/** Makes a logger that records lines instead of printing them. */
export function memoryLogger(): MemoryLogger {
  const lines: string[] = [];
  const events: MemoryLogger["events"] = [];
  return {
    lines,
    events,
    info: (message, fields = {}) => void events.push({ level: "info", message, fields }),
    warn: (message, fields = {}) => {
      events.push({ level: "warn", message, fields });
      lines.push(message);
    },
    error: (message, error, fields = {}) => {
      events.push({ level: "error", message, fields });
      lines.push(`${message}: ${error}`);
    },
  };
}

/** A migrated database and a server on port 0, torn down on dispose. */
export interface TestEnv extends AsyncDisposable {
  url: string;
  server: RunningServer;
  sql: Sql;
  db: TestDatabase;
  log: MemoryLogger;
}

/**
 * Write rates off, for tests that send in bulk to prove something else (ordering, fan-out);
 * caps stay. Tests of the limits themselves use the defaults.
 */
export const BULK_LIMITS: Partial<AbuseLimits> = {
  sends: null,
  joins: null,
  creates: null,
  signups: null,
  signIns: null,
  reactions: null,
  signals: null,
  connectionWrites: null,
};

/** The same as environment variables, for tests that start `main.ts` in a subprocess. */
export const BULK_LIMITS_ENV: Record<string, string> = {
  RATE_LIMIT_SENDS: "off",
  RATE_LIMIT_JOINS: "off",
  RATE_LIMIT_CREATES: "off",
  RATE_LIMIT_SIGNUPS: "off",
  RATE_LIMIT_SIGN_INS: "off",
  RATE_LIMIT_REACTIONS: "off",
  RATE_LIMIT_SIGNALS: "off",
  RATE_LIMIT_CONNECTION_WRITES: "off",
};

/**
 * Starts a server on a fresh, migrated database (or, with `db`, a second one on the same).
 * `limits` and `hubTimings` override some of the production defaults.
 */
export async function startTestEnv(
  options: {
    origins?: string;
    db?: TestDatabase;
    sockets?: SocketOptions;
    limits?: Partial<AbuseLimits>;
    clientAddressHeader?: string;
    hubTimings?: Partial<HubTimings>;
    /** Session lifetime and identity provider (defaults: 30 days, none). */
    accounts?: Partial<AccountSettings>;
    /** ICE servers and call size (defaults: none, 6). */
    calls?: Partial<CallSettings>;
    /** Called with every statement the server's pool sends. */
    onStatement?: (query: string) => void;
    /** `/metrics`'s token and whether it is served (defaults: served, no token). */
    metrics?: Partial<MetricsSettings>;
  } = {},
): Promise<TestEnv> {
  const db = options.db ?? await createTestDatabase();
  const sql = connect(db.url, { max: POOL_MAX, onStatement: options.onStatement });
  await migrate(sql);
  await fillUsernameKeys(sql);
  const log = memoryLogger();
  const server = await serve({
    sql,
    log,
    origins: createOriginPolicy(options.origins ?? TEST_ORIGINS),
    hostname: "127.0.0.1",
    port: 0,
    sockets: options.sockets,
    crossInstance: !EMBEDDED,
    listenUrl: db.url,
    hubTimings: options.hubTimings,
    limits: { ...DEFAULT_ABUSE_LIMITS, ...options.limits },
    clientAddressHeader: options.clientAddressHeader ?? null,
    accounts: options.accounts,
    calls: options.calls,
    metrics: options.metrics,
  });
  await server.ready;
  return {
    url: server.url,
    server,
    sql,
    db,
    log,
    async [Symbol.asyncDispose]() {
      await server.shutdown({ graceMs: 0 });
      await sql.end();
      if (!options.db) await db[Symbol.asyncDispose]();
    },
  };
}

/** Options for a test client: the token to send and the Origin header to claim. */
export interface ClientOptions {
  token?: string | null;
  origin?: string | null;
  /** Send every call alone instead of batching. */
  unbatched?: boolean;
}

/** A typed tRPC client for a test server. */
export function client(env: { url: string }, options: ClientOptions = {}) {
  const headers = () => {
    const h: Record<string, string> = {};
    if (options.token) h.authorization = `Bearer ${options.token}`;
    if (options.origin) h.origin = options.origin;
    return h;
  };
  const link = (options.unbatched ? httpLink : httpBatchLink)({
    url: `${env.url}/trpc`,
    transformer: superjson,
    headers,
  });
  return createTRPCClient<AppRouter>({ links: [link] });
}

let userCounter = 0;

/** Creates a user with a unique name; returns the user, its token and a client acting as it. */
export async function signUp(env: { url: string }, options: { avatarUrl?: string | null } = {}) {
  const username = `user_${Date.now().toString(36)}_${++userCounter}`;
  const { user, token } = await client(env).users.create.mutate({
    username,
    avatarUrl: options.avatarUrl,
  });
  return { user, token, api: client(env, { token }) };
}

/** The tRPC error code (`"FORBIDDEN"`, ...) a call failed with, or "OK" when it did not fail. */
export async function errorCode(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "OK";
  } catch (error) {
    if (error instanceof TRPCClientError) return error.data?.code ?? "UNKNOWN";
    throw error;
  }
}

/** The error a call failed with; fails the test when the call succeeds. */
export async function callError(call: Promise<unknown>): Promise<TRPCClientError<AppRouter>> {
  try {
    await call;
  } catch (error) {
    if (error instanceof TRPCClientError) return error;
    throw error;
  }
  throw new Error("Expected the call to fail, but it succeeded");
}

/** Options for a WebSocket test client. */
export interface WsClientOptions {
  token?: string | null;
  /** connectionParams to send as they are (overrides `token`). */
  connectionParams?: Record<string, unknown>;
  origin?: string | null;
  /** The server to (re)connect to; a function lets a test move clients between servers. */
  url?: () => string;
}

/** A typed tRPC client over one WebSocket, and the raw sockets it opened (to cut them in tests). */
export function wsClient(env: { url: string }, options: WsClientOptions = {}) {
  const sockets: WebSocket[] = [];
  const closeCodes: number[] = [];
  const origin = options.origin ?? null;
  class TestSocket extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[] | WebSocketOptions) {
      // Deno's WebSocket takes headers, which lets a test claim an Origin.
      const list = typeof protocols === "string" || Array.isArray(protocols)
        ? protocols
        : undefined;
      super(url, { protocols: list, headers: origin ? { origin } : {} });
      sockets.push(this);
      this.addEventListener("close", (event) => closeCodes.push(event.code));
    }
  }
  const connection = createWSClient({
    url: () => `${(options.url?.() ?? env.url).replace(/^http/, "ws")}/trpc`,
    WebSocket: TestSocket,
    retryDelayMs: () => 50,
    connectionParams: () =>
      (options.connectionParams ?? (options.token ? { token: options.token } : {})) as Record<
        string,
        string
      >,
  });
  const trpc = createTRPCClient<AppRouter>({
    links: [wsLink({ client: connection, transformer: superjson })],
  });
  return {
    trpc,
    sockets,
    /** Close codes of the sockets that closed, in order. */
    closeCodes,
    connection,
    async close() {
      await connection.close();
    },
  };
}

/** A TCP port free on 127.0.0.1 right now (for servers that cannot bind port 0 themselves). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Resolves once `predicate` holds, polling; rejects with `message` after `timeoutMs`. */
export async function waitFor(
  predicate: () => boolean,
  message: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting: ${message}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Opens a TCP connection to a test server and writes a raw WebSocket upgrade request for
 * `path` (default `/trpc`); `key: false` leaves out Sec-WebSocket-Key. The caller reads the
 * answer and closes the connection.
 */
export async function rawUpgrade(
  url: string,
  options: { path?: string; origin?: string | null; key?: boolean } = {},
): Promise<Deno.TcpConn> {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  const lines = [
    `GET ${options.path ?? "/trpc"} HTTP/1.1`,
    `Host: ${hostname}:${port}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    ...(options.key === false ? [] : ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]),
    "Sec-WebSocket-Version: 13",
    ...(options.origin ? [`Origin: ${options.origin}`] : []),
  ];
  await conn.write(new TextEncoder().encode(`${lines.join("\r\n")}\r\n\r\n`));
  return conn;
}

/** Sends a raw upgrade request and returns the status line of the answer. */
export async function upgradeStatus(
  url: string,
  options: { origin?: string | null; key?: boolean } = {},
): Promise<string> {
  const conn = await rawUpgrade(url, options);
  const buffer = new Uint8Array(4096);
  const n = await conn.read(buffer);
  conn.close();
  return new TextDecoder().decode(buffer.subarray(0, n ?? 0)).split("\r\n")[0];
}

/** A masked client text frame (RFC 6455 §5.2) of less than 64 KiB, for a hand-driven WebSocket. */
export function clientFrame(payload: string | Uint8Array): Uint8Array {
  const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  if (bytes.length >= 65536) throw new Error("clientFrame: payload too large");
  const header = bytes.length < 126
    ? [0x81, 0x80 | bytes.length]
    : [0x81, 0x80 | 126, bytes.length >> 8, bytes.length & 255];
  const mask = crypto.getRandomValues(new Uint8Array(4));
  const out = new Uint8Array(header.length + 4 + bytes.length);
  out.set(header);
  out.set(mask, header.length);
  bytes.forEach((byte, i) => out[header.length + 4 + i] = byte ^ mask[i % 4]);
  return out;
}
