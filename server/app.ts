/**
 * The HTTP front door: origin policy and CORS on every response, `/health`,
 * tRPC at `/trpc` (HTTP through the fetch adapter, WebSocket upgrades through
 * `ws.ts`), request size limits and JSON 404s.
 */
import { fetchRequestHandler } from "@trpc/server/adapters/fetch";
import { getWSConnectionHandler, type WSSHandlerOptions } from "@trpc/server/adapters/ws";
import superjson from "superjson";
import { ping } from "../db/mod.ts";
import { type ContextDeps, createContext } from "./context.ts";
import { MAX_BATCH_SIZE, MAX_BODY_BYTES } from "./limits.ts";
import { corsHeaders, PREFLIGHT_HEADERS } from "./origin.ts";
import { type AppRouter, appRouter } from "./router.ts";
import { type DenoSocket, isUpgrade, type SocketLimits, upgrade } from "./ws.ts";

/** Idle time before the server pings a WebSocket client, and how long it waits for an answer. */
export const KEEP_ALIVE = { pingMs: 30_000, pongWaitMs: 5_000 };

/** WebSocket tuning; the defaults suit production, tests shorten them. */
export interface SocketOptions {
  keepAlive?: { pingMs: number; pongWaitMs: number };
  limits?: SocketLimits;
}

/** The request handler and the WebSocket connections it holds. */
export interface App {
  /** Handles one request for `Deno.serve`. */
  handle(req: Request): Promise<Response>;
  /** Open WebSocket connections. */
  readonly sockets: ReadonlySet<DenoSocket>;
  /** Tells every WebSocket client to reconnect (tRPC's reconnect notification). */
  reconnectAll(): void;
  /** From now on, answers new requests and upgrades with 503 so clients go elsewhere. */
  drain(): void;
}

/** Builds the request handler for `Deno.serve`. */
export function createApp(deps: ContextDeps, options: SocketOptions = {}): App {
  const sockets = new Set<DenoSocket>();
  let draining = false;
  const onConnection = getWSConnectionHandler({
    router: appRouter,
    // Only applyWSSHandler reads `wss`; we hand connections over ourselves.
    wss: undefined as unknown as WSSHandlerOptions<AppRouter>["wss"],
    keepAlive: { enabled: true, ...(options.keepAlive ?? KEEP_ALIVE) },
    maxBatchSize: MAX_BATCH_SIZE,
    createContext: ({ req, info }) =>
      createContext(deps, {
        req: { headers: new Headers(req.headers as Record<string, string>) },
        info,
        transport: "ws",
      }),
    onError({ error, path }) {
      if (error.code === "INTERNAL_SERVER_ERROR") {
        deps.log.error(`tRPC (WebSocket) ${path ?? "(no path)"} failed`, error.cause ?? error);
      }
    },
  });

  async function handle(req: Request): Promise<Response> {
    if (draining) {
      const response = json(503, {
        error: { code: "SERVICE_UNAVAILABLE", message: "Server is restarting: retry shortly" },
      });
      response.headers.set("retry-after", "1");
      return response;
    }
    const url = new URL(req.url);
    const isTrpc = url.pathname === "/trpc" || url.pathname.startsWith("/trpc/");
    const decision = deps.origins.check(req.headers.get("origin"));
    const wantsSocket = isTrpc && isUpgrade(req);
    // tRPC calls over HTTP are refused by context creation (FORBIDDEN); everything else here,
    // WebSocket upgrades included: a refused origin never gets a 101.
    if (!decision.allowed && (req.method === "OPTIONS" || !isTrpc || wantsSocket)) {
      deps.log.warn(`Refused origin ${decision.origin}: ${decision.reason}`, {
        origin: decision.origin,
        reason: decision.reason,
        path: url.pathname,
      });
      return json(403, {
        error: { code: "FORBIDDEN", message: `Origin not allowed: ${decision.origin}` },
      });
    }
    if (wantsSocket) {
      if (req.headers.get("sec-websocket-key") === null || req.method !== "GET") {
        return json(400, {
          error: { code: "BAD_REQUEST", message: "Malformed WebSocket upgrade request" },
        });
      }
      const origin = decision.origin;
      return upgrade(req, (socket, nodeReq) => {
        const opened = performance.now();
        sockets.add(socket);
        deps.log.info("WebSocket opened", { origin, open: sockets.size });
        socket.once("close", () => {
          sockets.delete(socket);
          deps.log.info("WebSocket closed", {
            origin,
            seconds: Math.round((performance.now() - opened) / 100) / 10,
            open: sockets.size,
          });
        });
        // deno-lint-ignore no-explicit-any -- tRPC types these as Node's ws and http objects
        onConnection(socket as any, nodeReq as any);
      }, options.limits);
    }
    let response: Response;
    if (req.method === "OPTIONS") {
      response = new Response(null, {
        status: 204,
        headers: PREFLIGHT_HEADERS,
      });
    } else if (isTrpc) {
      response = await handleTrpc(deps, req);
    } else if (
      url.pathname === "/health" &&
      (req.method === "GET" || req.method === "HEAD")
    ) {
      response = (await ping(deps.sql, 1000))
        ? json(200, { status: "ok", db: "ok" })
        : json(503, { status: "degraded", db: "down" });
    } else {
      response = json(404, {
        error: {
          code: "NOT_FOUND",
          message: `No route for ${req.method} ${url.pathname}`,
        },
      });
    }
    const headers = new Headers(response.headers);
    for (
      const [name, value] of Object.entries(
        corsHeaders(decision.allowed ? decision.origin : null),
      )
    ) {
      headers.set(name, value);
    }
    if (!headers.get("vary")?.toLowerCase().includes("origin")) {
      headers.append("vary", "Origin");
    }
    return new Response(response.body, { status: response.status, headers });
  }

  return {
    handle,
    sockets,
    drain() {
      draining = true;
    },
    reconnectAll() {
      const notice = JSON.stringify({ id: null, method: "reconnect" });
      for (const socket of sockets) socket.send(notice);
    },
  };
}

async function handleTrpc(deps: ContextDeps, req: Request): Promise<Response> {
  let request = req;
  if (req.body) {
    const body = await readLimited(req, MAX_BODY_BYTES);
    if (body === null) {
      return trpcError(
        413,
        "PAYLOAD_TOO_LARGE",
        -32013,
        `Request body exceeds ${MAX_BODY_BYTES} bytes`,
      );
    }
    request = new Request(req.url, {
      method: req.method,
      headers: req.headers,
      body,
    });
  }
  return await fetchRequestHandler({
    endpoint: "/trpc",
    req: request,
    router: appRouter,
    maxBatchSize: MAX_BATCH_SIZE,
    createContext: (opts) => createContext(deps, { ...opts, transport: "http" }),
    onError({ error, path }) {
      if (error.code === "INTERNAL_SERVER_ERROR") {
        deps.log.error(
          `tRPC ${path ?? "(unknown path)"} failed`,
          error.cause ?? error,
        );
      }
    },
  });
}

/** Reads a body of at most `max` bytes; null when it is larger. */
async function readLimited(
  req: Request,
  max: number,
): Promise<Uint8Array<ArrayBuffer> | null> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > max) {
    await req.body?.cancel();
    return null;
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body!) {
    size += chunk.byteLength;
    if (size > max) return null;
    chunks.push(chunk);
  }
  const body = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

/** An error response shaped like tRPC's own, so `@trpc/client` reads it as a TRPCClientError. */
function trpcError(
  status: number,
  code: string,
  jsonRpcCode: number,
  message: string,
): Response {
  const shape = {
    message,
    code: jsonRpcCode,
    data: { code, httpStatus: status },
  };
  return json(status, { error: superjson.serialize(shape) });
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}
