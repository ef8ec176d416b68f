/**
 * The HTTP front door: origin policy and CORS on every response, `/health`,
 * the tRPC fetch adapter at `/trpc`, request size limits and JSON 404s.
 */
import { fetchRequestHandler } from "@trpc/server/adapters/fetch";
import superjson from "superjson";
import { ping } from "../db/mod.ts";
import { type ContextDeps, createContext } from "./context.ts";
import { corsHeaders, PREFLIGHT_HEADERS } from "./origin.ts";
import { appRouter } from "./router.ts";

/** Largest request body accepted, in bytes. */
export const MAX_BODY_BYTES = 64 * 1024;

/** Most calls accepted in one tRPC batch. */
export const MAX_BATCH_SIZE = 20;

/** Builds the request handler for `Deno.serve`. */
export function createHandler(
  deps: ContextDeps,
): (req: Request) => Promise<Response> {
  return async function handle(req) {
    const url = new URL(req.url);
    const isTrpc = url.pathname === "/trpc" ||
      url.pathname.startsWith("/trpc/");
    const decision = deps.origins.check(req.headers.get("origin"));
    // tRPC calls are refused by context creation (FORBIDDEN); everything else here.
    if (!decision.allowed && (req.method === "OPTIONS" || !isTrpc)) {
      deps.log.warn(`Refused origin ${decision.origin}: ${decision.reason}`);
      return json(403, {
        error: {
          code: "FORBIDDEN",
          message: `Origin not allowed: ${decision.origin}`,
        },
      });
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
    createContext: (opts) => createContext(deps, opts),
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
