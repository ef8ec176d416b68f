/**
 * tRPC over HTTP, with a fast path for the call a chat sends most: one mutation in a POST
 * (`messages.send`), alone or as a batch of one (`?batch=1`, what `httpBatchLink` sends).
 *
 * The fast path runs the call through tRPC's own `callProcedure`, error formatter and
 * response transformer, and answers exactly what tRPC's fetch adapter answers (body, status,
 * `Content-Type`, `Vary`), for about a third of the adapter's work (measured in-process: ~16
 * µs against ~42 µs a call). Everything else (queries, batches of several calls, streaming
 * `trpc-accept`, anything unusual) goes to tRPC's fetch adapter.
 */
import { TRPCError } from "@trpc/server";
import { fetchRequestHandler } from "@trpc/server/adapters/fetch";
import {
  callProcedure,
  getErrorShape,
  getHTTPStatusCode,
  getTRPCErrorFromUnknown,
  transformTRPCResponse,
} from "@trpc/server/unstable-core-do-not-import";
import { type Context, type ContextDeps, createContext } from "./context.ts";
import { retryable } from "./errors.ts";
import { MAX_BATCH_SIZE } from "./limits.ts";
import { appRouter } from "./router.ts";

/** What a tRPC call over HTTP needs besides the request. */
export interface HttpCallOptions {
  deps: ContextDeps;
  /** The client's address (see `client_address.ts`). */
  address: string;
  /** Reports a failed call (for the log). */
  onError(error: TRPCError, path: string | undefined): void;
}

const config = appRouter._def._config;

/** The mutations of the router, by path. */
const MUTATIONS = new Set(
  Object.entries(appRouter._def.procedures)
    .filter(([, procedure]) => (procedure as { _def: { type: string } })._def.type === "mutation")
    .map(([path]) => path),
);

/**
 * Answers a tRPC call over HTTP. `body` is the request's body, already read and checked as
 * UTF-8 (null without one); `req` must not be read again.
 */
export async function handleTrpcHttp(
  req: Request,
  body: string | null,
  options: HttpCallOptions,
): Promise<Response> {
  const single = body === null ? null : singleMutation(req, body);
  if (single) return await runSingle(req, single, options);
  const request = body === null
    ? req
    : new Request(req.url, { method: req.method, headers: req.headers, body });
  return await fetchRequestHandler({
    endpoint: "/trpc",
    req: request,
    router: appRouter,
    maxBatchSize: MAX_BATCH_SIZE,
    createContext: (opts) =>
      createContext(options.deps, { ...opts, transport: "http", address: options.address }),
    responseMeta({ errors }) {
      const retryAfter = retryAfterHeader(errors);
      return retryAfter ? { headers: new Headers({ "retry-after": retryAfter }) } : {};
    },
    onError: ({ error, path }) => options.onError(error, path),
  });
}

/** A single mutation call: its path, raw input, and whether it came as a batch of one. */
interface SingleCall {
  path: string;
  input: unknown;
  batch: boolean;
}

/** The call when the request is one mutation by POST with a JSON body, else null. */
function singleMutation(req: Request, body: string): SingleCall | null {
  if (req.method !== "POST") return null;
  // Exactly what tRPC's adapter accepts as JSON; anything else gets its own answer (415).
  const contentType = req.headers.get("content-type")?.split(";")[0].trim().toLowerCase();
  if (contentType !== "application/json") return null;
  if (req.headers.has("trpc-accept")) return null; // streaming responses: tRPC's own
  const url = req.url;
  const start = url.indexOf("/trpc/", url.indexOf("//") + 2);
  if (start < 0) return null;
  const queryAt = url.indexOf("?", start);
  const path = url.slice(start + 6, queryAt < 0 ? undefined : queryAt);
  if (!MUTATIONS.has(path)) return null;
  const query = queryAt < 0 ? "" : url.slice(queryAt + 1);
  if (query !== "" && query !== "batch=1") return null;
  const batch = query === "batch=1";
  try {
    const json: unknown = JSON.parse(body);
    if (!batch) return { path, input: json, batch };
    if (typeof json !== "object" || json === null || Array.isArray(json)) return null;
    const keys = Object.keys(json);
    if (keys.length !== 1 || keys[0] !== "0") return null;
    return { path, input: (json as Record<string, unknown>)["0"], batch };
  } catch {
    return null; // tRPC answers malformed JSON in its own words
  }
}

async function runSingle(
  req: Request,
  call: SingleCall,
  options: HttpCallOptions,
): Promise<Response> {
  let ctx: Context | undefined;
  let input: unknown;
  let message: Record<string, unknown>;
  let error: TRPCError | null = null;
  try {
    ctx = createContext(options.deps, {
      req,
      transport: "http",
      address: options.address,
    });
    const data = await callProcedure({
      router: appRouter,
      path: call.path,
      // Decoded inside the call, and a malformed input is BAD_REQUEST, as in tRPC's adapter.
      getRawInput: () => {
        try {
          input = config.transformer.input.deserialize(call.input);
        } catch (cause) {
          return Promise.reject(
            cause instanceof TRPCError ? cause : new TRPCError({ code: "BAD_REQUEST", cause }),
          );
        }
        return Promise.resolve(input);
      },
      ctx,
      type: "mutation",
      signal: req.signal,
      batchIndex: 0,
    });
    message = { result: { data } };
  } catch (cause) {
    error = getTRPCErrorFromUnknown(cause);
    options.onError(error, call.path);
    const shape = getErrorShape({ config, error, type: "mutation", path: call.path, input, ctx });
    message = { error: shape };
  }
  // deno-lint-ignore no-explicit-any -- tRPC's response union; the shape is built above
  const transformed = transformTRPCResponse(config, message as any);
  const json = call.batch ? [transformed] : transformed;
  const headers = new Headers({ "content-type": "application/json", vary: "trpc-accept, accept" });
  const retryAfter = error ? retryAfterHeader([error]) : null;
  if (retryAfter) headers.set("retry-after", retryAfter);
  // From the untransformed response, as tRPC's adapter does: the error's data (httpStatus, which
  // the error formatter sets to 503 for an outage) is not under superjson's envelope there.
  const untransformed = (call.batch ? [message] : message) as unknown as Parameters<
    typeof getHTTPStatusCode
  >[0];
  const status = getHTTPStatusCode(untransformed, error ? [error] : undefined);
  return new Response(JSON.stringify(json), { status, headers });
}

/**
 * `Retry-After` in whole seconds (RFC 9110 §10.2.3), the longest any failed call needs, or
 * null when none asks to wait.
 */
function retryAfterHeader(errors: TRPCError[]): string | null {
  const waits = errors.flatMap((error) => retryable(error)?.retryAfterMs ?? []);
  return waits.length === 0 ? null : String(Math.ceil(Math.max(...waits) / 1000));
}
