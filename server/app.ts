/**
 * The HTTP front door: request size limits, the origin policy and CORS on every response,
 * `/health`, `/metrics` (see metrics.ts), tRPC at `/trpc` (HTTP through the fetch adapter,
 * WebSocket upgrades through `ws.ts` after the handshake and connection caps are checked) and
 * JSON 404s.
 */
import type { TRPCError } from "@trpc/server";
import superjson from "superjson";
import { ping } from "../db/mod.ts";
import { clip } from "./clip.ts";
import { clientAddress } from "./client_address.ts";
import { type ContextDeps, createContext } from "./context.ts";
import { retryable } from "./errors.ts";
import { SendQueue } from "./send_queue.ts";
import { MAX_BATCH_SIZE, MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_URL_BYTES } from "./limits.ts";
import { corsHeaders, type OriginDecision, PREFLIGHT_HEADERS } from "./origin.ts";
import {
  type Connection,
  ConnectionServer,
  type KeepAlive,
  type SocketLimits,
} from "./realtime/connection.ts";
import { checkHandshake, isUpgrade } from "./realtime/handshake.ts";
import { appRouter } from "./router.ts";
import { handleTrpcHttp } from "./trpc_http.ts";
import type { Context } from "./context.ts";
import type { ServerMetrics } from "./metrics.ts";

/** WebSocket tuning; the defaults (`KEEP_ALIVE`, `DEFAULT_LIMITS`) suit production, tests shorten them. */
export interface SocketOptions {
  keepAlive?: KeepAlive;
  limits?: SocketLimits;
}

/** What the front door needs: context creation's needs (but the parts it makes itself) and more. */
export interface AppDeps extends Omit<ContextDeps, "sendQueue"> {
  /** The header a trusted proxy puts the client address in, or null (see client_address.ts). */
  clientAddressHeader: string | null;
  /** Serves `/metrics` and counts there; null or absent: `/metrics` is off (404). */
  metrics?: ServerMetrics | null;
}

/** The request handler and the WebSocket connections it holds. */
export interface App {
  /** Handles one request for `Deno.serve`; `info` gives the TCP peer's address. */
  handle(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response>;
  /** Open WebSocket connections, each counted until it is really closed. */
  readonly sockets: ReadonlySet<Connection<Context>>;
  /** Tells every WebSocket client to reconnect (tRPC's reconnect notification). */
  reconnectAll(): void;
  /** From now on, answers new requests and upgrades with 503 so clients go elsewhere. */
  drain(): void;
  /** Ends the start-up state: until called, `/health` and the API answer 503 "starting". */
  ready(): void;
}

/** How long a request body may take to arrive, in milliseconds (then 408). */
const BODY_READ_MS = 10_000;

/** How long a client refused by a connection cap is asked to wait, in seconds. */
const CONNECTION_RETRY_SECONDS = 5;

/** Builds the request handler for `Deno.serve`. */
export function createApp(appDeps: AppDeps, options: SocketOptions = {}): App {
  const deps = { ...appDeps, sendQueue: new SendQueue(appDeps.sql) };
  /** Open (and opening) WebSockets per client address. */
  const perAddress = new Map<string, number>();
  let draining = false;
  let starting = true;
  const connections = new ConnectionServer<Context>({
    router: appRouter,
    keepAlive: options.keepAlive,
    limits: options.limits,
    // A frame is bounded by bytes (MAX_FRAME_BYTES) and the socket's subscriptions by
    // `subscriptionsPerSocket`; a frame may carry that many calls, as wsLink batches them.
    maxBatchSize: Math.max(MAX_BATCH_SIZE, deps.limits.subscriptionsPerSocket),
    // deno-lint-ignore require-await -- a refusal (thrown) must become a rejection
    createContext: async ({ headers, connectionParams, address, closed }) =>
      createContext(deps, {
        req: { headers },
        info: { connectionParams },
        transport: "ws",
        address,
        closed,
      }),
    onError: (error, path) => {
      deps.metrics?.failed(error.code, path);
      logFailure(deps, error, `tRPC (WebSocket) ${path ?? "(no path)"}`);
    },
  });
  const sockets = connections.connections;
  deps.metrics?.watch({ sockets, sendQueue: deps.sendQueue });

  function acceptSocket(req: Request, address: string, origin: string | null): Response {
    const opened = performance.now();
    const { response } = connections.accept(req, {
      address,
      // Counted until the connection is really gone, not when its work is released.
      onClosed(connection) {
        const left = (perAddress.get(address) ?? 1) - 1;
        if (left > 0) perAddress.set(address, left);
        else perAddress.delete(address);
        deps.log.info("WebSocket closed", {
          origin,
          address,
          seconds: Math.round((performance.now() - opened) / 100) / 10,
          abrupt: connection.abrupt,
          open: sockets.size,
        });
      },
    });
    perAddress.set(address, (perAddress.get(address) ?? 0) + 1);
    deps.log.info("WebSocket opened", { origin, address, open: sockets.size });
    return response;
  }

  /**
   * Every answer but a 101 carries CORS headers for an allowed origin, refusals and the
   * drain's 503 included: a browser that cannot read a response sees only a CORS error.
   */
  async function handle(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> {
    const decision = deps.origins.check(req.headers.get("origin"));
    const response = await route(req, info, decision);
    if (response.status === 101) return response;
    try {
      addCors(response.headers, decision);
      return response;
    } catch {
      // A response with immutable headers: copy it once.
      const headers = new Headers(response.headers);
      addCors(headers, decision);
      return new Response(response.body, { status: response.status, headers });
    }
  }

  async function route(
    req: Request,
    info: Deno.ServeHandlerInfo | undefined,
    decision: OriginDecision,
  ): Promise<Response> {
    const url = new URL(req.url);
    const isTrpc = url.pathname === "/trpc" || url.pathname.startsWith("/trpc/");
    // tRPC's client reads error bodies of calls; a preflight's body nobody reads.
    const trpcShaped = isTrpc && req.method !== "OPTIONS";
    const fail = (status: number, code: string, message: string, headers = {}) =>
      errorResponse({ status, code, message, trpc: trpcShaped, headers });
    // Metrics are served while starting and draining too: they tell what is going on.
    const metrics = url.pathname === "/metrics" && (req.method === "GET" || req.method === "HEAD")
      ? deps.metrics ?? null
      : null;
    if ((draining || starting) && !metrics) {
      if (req.method === "OPTIONS" && decision.allowed) {
        return new Response(null, { status: 204, headers: PREFLIGHT_HEADERS });
      }
      if (starting && !draining && url.pathname === "/health") {
        return json(503, { status: "starting", db: "down" });
      }
      const message = draining
        ? "Server is restarting: retry shortly"
        : "Server is starting: the database is not reachable yet, retry shortly";
      return fail(503, "SERVICE_UNAVAILABLE", message, { "retry-after": "1" });
    }
    const sizeProblem = checkRequestSize(req, url);
    if (sizeProblem) return fail(sizeProblem.status, sizeProblem.code, sizeProblem.message);
    const wantsSocket = isTrpc && isUpgrade(req);
    // tRPC calls over HTTP are refused by context creation (FORBIDDEN); everything else here,
    // WebSocket upgrades included: a refused origin never gets a 101.
    if (!decision.allowed && (req.method === "OPTIONS" || !isTrpc || wantsSocket)) {
      const origin = clip(decision.origin);
      deps.log.warn(`Refused origin ${origin}: ${decision.reason}`, {
        origin,
        reason: decision.reason,
        path: url.pathname,
      });
      return fail(403, "FORBIDDEN", `Origin not allowed: ${origin}`);
    }
    if (metrics) return await metrics.respond(req);
    const address = clientAddress(req.headers, info?.remoteAddr, deps.clientAddressHeader);
    if (wantsSocket) {
      if (url.pathname !== "/trpc") {
        return fail(400, "BAD_REQUEST", "WebSocket upgrades go to /trpc only");
      }
      const refusal = checkHandshake(req);
      if (refusal) return fail(refusal.status, "BAD_REQUEST", refusal.message, refusal.headers);
      const retry = { "retry-after": String(CONNECTION_RETRY_SECONDS) };
      if (sockets.size >= deps.limits.connections) {
        if (deps.metrics) deps.metrics.front.refused.instance_limit++;
        deps.log.warn("WebSocket refused: this instance is at its connection limit", { address });
        return fail(
          503,
          "SERVICE_UNAVAILABLE",
          `Server is at its connection limit (${deps.limits.connections}): retry shortly`,
          retry,
        );
      }
      if ((perAddress.get(address) ?? 0) >= deps.limits.connectionsPerAddress) {
        if (deps.metrics) deps.metrics.front.refused.address_limit++;
        deps.log.warn("WebSocket refused: too many connections from one address", { address });
        return fail(
          429,
          "TOO_MANY_REQUESTS",
          `Too many connections from your address: at most ${deps.limits.connectionsPerAddress}`,
          retry,
        );
      }
      return acceptSocket(req, address, decision.origin);
    }
    if (req.method === "OPTIONS") {
      return new Response(null, { status: 204, headers: PREFLIGHT_HEADERS });
    }
    if (isTrpc) return await handleTrpc(deps, req, address);
    if (url.pathname === "/health" && (req.method === "GET" || req.method === "HEAD")) {
      return (await ping(deps.sql, 1000))
        ? json(200, { status: "ok", db: "ok" })
        : json(503, { status: "degraded", db: "down" });
    }
    return fail(404, "NOT_FOUND", `No route for ${clip(req.method, 16)} ${clip(url.pathname)}`);
  }

  return {
    handle,
    sockets,
    drain() {
      draining = true;
    },
    ready() {
      starting = false;
    },
    reconnectAll() {
      connections.reconnectAll();
    },
  };
}

/** Adds the CORS headers of the origin policy's decision, and `Origin` to `Vary` (kept). */
function addCors(headers: Headers, decision: OriginDecision): void {
  for (
    const [name, value] of Object.entries(corsHeaders(decision.allowed ? decision.origin : null))
  ) {
    if (name !== "vary") headers.set(name, value);
  }
  const vary = headers.get("vary");
  if (!vary) headers.set("vary", "Origin");
  else if (!/(^|,)\s*origin\s*(,|$)/i.test(vary)) headers.set("vary", `${vary}, Origin`);
}

/**
 * Refuses a request whose target is longer than `MAX_URL_BYTES` (414, RFC 9110 §15.5.15), whose
 * header section is larger than `MAX_HEADER_BYTES` (431, RFC 6585 §5), or whose query string
 * is not well-formed percent-encoded UTF-8 (400). Returns null when the request is fine.
 */
function checkRequestSize(
  req: Request,
  url: URL,
): { status: number; code: string; message: string } | null {
  const target = url.pathname.length + url.search.length;
  if (target > MAX_URL_BYTES) {
    return {
      status: 414,
      code: "BAD_REQUEST",
      message: `Request URL exceeds ${MAX_URL_BYTES} bytes`,
    };
  }
  // Each header line is `name: value\r\n`; the request line counts as well.
  let size = req.method.length + target + 12;
  for (const [name, value] of req.headers) size += name.length + value.length + 4;
  if (size > MAX_HEADER_BYTES) {
    return {
      status: 431,
      code: "BAD_REQUEST",
      message: `Request headers exceed ${MAX_HEADER_BYTES} bytes`,
    };
  }
  try {
    decodeURIComponent(url.search);
  } catch {
    return {
      status: 400,
      code: "BAD_REQUEST",
      message: "Request URL is not well-formed: its query must be percent-encoded UTF-8",
    };
  }
  return null;
}

async function handleTrpc(
  deps: ContextDeps & AppDeps,
  req: Request,
  address: string,
): Promise<Response> {
  let body: string | null = null;
  if (req.body) {
    const read = await readBody(req, MAX_BODY_BYTES);
    if (read === "too_large") {
      return errorResponse({
        status: 413,
        code: "PAYLOAD_TOO_LARGE",
        message: `Request body exceeds ${MAX_BODY_BYTES} bytes`,
        trpc: true,
      });
    }
    if (read === "too_slow") {
      return errorResponse({
        status: 408,
        code: "TIMEOUT",
        message: `Request body not received within ${BODY_READ_MS / 1000} s`,
        trpc: true,
      });
    }
    if (read === "not_utf8" || read === "broken") {
      return errorResponse({
        status: 400,
        code: "BAD_REQUEST",
        message: read === "not_utf8"
          ? "Request body is not valid UTF-8"
          : "Request body could not be read: the client went away or sent a broken body",
        trpc: true,
      });
    }
    body = read;
  }
  return await handleTrpcHttp(req, body, {
    deps,
    address,
    onError: (error, path) => {
      deps.metrics?.failed(error.code, path);
      logFailure(deps, error, `tRPC ${path ?? "(unknown path)"}`);
    },
  });
}

/**
 * Logs a call that failed on our side: a bug with its stack, an outage of the database as one
 * warning line (the client was told to retry). Refusals of bad calls are not logged.
 */
function logFailure(deps: AppDeps, error: TRPCError, what: string): void {
  if (error.code !== "INTERNAL_SERVER_ERROR") return;
  if (retryable(error)) {
    deps.log.warn(`${what} failed: database unavailable`, {
      error: (error.cause as Error | undefined)?.message,
    });
  } else {
    deps.log.error(`${what} failed`, error.cause ?? error);
  }
}

/**
 * Reads a body of at most `max` bytes that must be UTF-8 text (tRPC's JSON): decoding it
 * leniently would turn invalid bytes into U+FFFD and store text the client never sent.
 */
async function readBody(
  req: Request,
  max: number,
): Promise<string | "too_large" | "too_slow" | "not_utf8" | "broken"> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > max) {
    await req.body?.cancel().catch(() => {});
    return "too_large";
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  // A client that trickles its body would hold a connection for as long as it likes.
  const reader = req.body!.getReader();
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    reader.cancel().catch(() => {});
  }, BODY_READ_MS);
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > max) return "too_large";
      chunks.push(value);
    }
  } catch {
    return late ? "too_slow" : "broken";
  } finally {
    clearTimeout(timer);
  }
  if (late) return "too_slow";
  const body = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(body);
  } catch {
    return "not_utf8";
  }
}

/**
 * An error response: for `/trpc` shaped like tRPC's own (so `@trpc/client` reads it as a
 * TRPCClientError with `data.code`), elsewhere `{ error: { code, message } }`.
 */
function errorResponse(
  options: {
    status: number;
    code: string;
    message: string;
    trpc: boolean;
    headers?: Record<string, string>;
  },
): Response {
  const { status, code, message, trpc, headers = {} } = options;
  const retryAfter = Number(headers["retry-after"]);
  const body = trpc
    ? {
      error: superjson.serialize({
        message,
        code: JSON_RPC_CODES[code] ?? -32600,
        data: {
          code,
          httpStatus: status,
          retryAfterMs: Number.isFinite(retryAfter) ? retryAfter * 1000 : null,
        },
      }),
    }
    : { error: { code, message } };
  const response = json(status, body);
  for (const [name, value] of Object.entries(headers)) response.headers.set(name, value);
  return response;
}

/** tRPC's JSON-RPC error numbers for the codes the front door answers with. */
const JSON_RPC_CODES: Record<string, number> = {
  BAD_REQUEST: -32600,
  FORBIDDEN: -32003,
  NOT_FOUND: -32004,
  PAYLOAD_TOO_LARGE: -32013,
  TIMEOUT: -32008,
  TOO_MANY_REQUESTS: -32029,
  SERVICE_UNAVAILABLE: -32603,
};

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}
