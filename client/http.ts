/**
 * The HTTP side of the client: calls made in one tick are batched, and every batch stays
 * within the server's limits (`server/limits.ts`), so anything the client may send alone
 * also goes through when many calls are made at once.
 *
 * - Queries (GET, inputs in the URL): tRPC's `httpBatchLink` bounds a batch by count
 *   (`maxItems`) and by URL length (`maxURLLength`) itself; it gets the server's numbers.
 * - Mutations (POST, inputs in the body): `httpBatchLink` has no bound on the body. The
 *   mutations of one tick are put into groups of at most `MAX_BATCH_SIZE` calls and
 *   `MAX_BODY_BYTES` of body, counted from the same serialization tRPC sends, and each
 *   group is sent by an `httpBatchLink` of its own. A group's link only ever sees that
 *   group's calls, so however its batching timer falls, a request never holds more than
 *   the group does. A call too large on its own is sent alone and refused alone (413).
 */
import { httpBatchLink, splitLink, type TRPCLink } from "@trpc/client";
import superjson from "superjson";
import { MAX_BATCH_SIZE, MAX_BODY_BYTES, MAX_URL_BYTES } from "../server/limits.ts";
import type { AppRouter } from "../server/router.ts";
import { utf8Length } from "./_utf8.ts";

type BatchOptions = Parameters<typeof httpBatchLink<AppRouter>>[0];

/** Options of `createHttpLink`. */
export interface HttpLinkOptions {
  /** The tRPC endpoint, e.g. `https://parley.example.com/trpc`. */
  url: string;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
  /** Headers of each request (read once per request, e.g. `Authorization`). */
  headers: () => Promise<Record<string, string>>;
}

/** The terminating link for queries and mutations; see the module comment. */
export function createHttpLink(options: HttpLinkOptions): TRPCLink<AppRouter> {
  const batchOptions: BatchOptions = {
    url: options.url,
    transformer: superjson,
    fetch: options.fetch,
    headers: options.headers,
    maxItems: MAX_BATCH_SIZE,
    // The whole URL: longer than the request target the server counts, so on the safe side.
    maxURLLength: MAX_URL_BYTES,
  };
  return splitLink({
    condition: (op) => op.type === "query",
    true: httpBatchLink<AppRouter>(batchOptions),
    false: bodyLimitedBatchLink(batchOptions),
  });
}

/** Mutations batched by count and body size; see the module comment. */
function bodyLimitedBatchLink(batchOptions: BatchOptions): TRPCLink<AppRouter> {
  return (runtime) => {
    let open: { link: ReturnType<TRPCLink<AppRouter>>; count: number; bytes: number } | null = null;
    return ({ op, next }) => {
      const size = utf8Length(JSON.stringify(superjson.serialize(op.input)));
      if (
        open &&
        (open.count >= MAX_BATCH_SIZE || open.bytes + entryBytes(open.count, size) > MAX_BODY_BYTES)
      ) {
        open = null;
      }
      if (!open) {
        const group = { link: httpBatchLink<AppRouter>(batchOptions)(runtime), count: 0, bytes: 2 };
        open = group;
        // Calls of later ticks start a new group (and a new request).
        setTimeout(() => {
          if (open === group) open = null;
        });
      }
      open.bytes += entryBytes(open.count, size);
      open.count++;
      return open.link({ op, next });
    };
  };
}

/**
 * What the call at `index` adds to a batch body `{"0":input0,"1":input1,...}` (tRPC's
 * HTTP batch encoding): a comma after the first, the quoted index and a colon, the input.
 */
function entryBytes(index: number, inputBytes: number): number {
  return (index > 0 ? 1 : 0) + String(index).length + 3 + inputBytes;
}
