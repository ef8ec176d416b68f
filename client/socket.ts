/**
 * The WebSocket side of the client: tRPC's wsClient (created on the first subscription,
 * lazy, token in connectionParams) over sockets that remember the token they announced.
 *
 * The server fixes a socket's identity when it connects and re-checks that token on every
 * call, so the client must never send a call over a socket opened with another token:
 *
 * - before each operation the link reads the token; a change closes every socket that
 *   announced another one, and tRPC treats that like a lost connection: it opens a new
 *   socket (connectionParams read again) and resubscribes there with each subscription's
 *   lastEventId, now as the new identity;
 * - as a last check, a socket refuses to send calls when the token read last differs from
 *   the one it announced, and closes instead (same recovery).
 *
 * tRPC sends every call queued in one tick in one frame (a JSON array), and every pending
 * subscription in one frame when it reconnects. Sockets here cut such frames to the
 * server's limits: at most `MAX_BATCH_SIZE` calls and `MAX_FRAME_BYTES` bytes per frame.
 */
import { createWSClient, TRPCClientError, type TRPCLink, wsLink } from "@trpc/client";
import { observable } from "@trpc/server/observable";
import superjson from "superjson";
import type { AppRouter } from "../server/router.ts";
import { MAX_BATCH_SIZE, MAX_FRAME_BYTES } from "../server/limits.ts";
import type { Identity } from "./identity.ts";
import { utf8Length } from "./_utf8.ts";

/** Close code of a socket closed because the token changed (4000-4999: application codes). */
export const TOKEN_CHANGED_CLOSE_CODE = 4000;

/** How long an idle socket stays open after its last subscription ends, in ms. */
const IDLE_CLOSE_MS = 5_000;

/** Options of `createSocketTransport`. */
export interface SocketTransportOptions {
  /** The server's WebSocket endpoint, e.g. `wss://parley.example.com/trpc`. */
  url: string;
  /** Whose token connects and is compared before every operation. */
  identity: Identity;
  /** A WebSocket implementation (default: the global one, looked up on first use). */
  WebSocket?: typeof WebSocket;
}

/** The subscription transport of a parley client. */
export interface SocketTransport {
  /** The terminating link for subscriptions. */
  link: TRPCLink<AppRouter>;
  /** Closes every socket that announced a token other than the identity's current one. */
  closeStale(): void;
  /** Closes the connection; open subscriptions complete. */
  close(): Promise<void>;
}

type Client = ReturnType<typeof createWSClient>;

/** A WebSocket that remembers the token it announced and sends frames within the limits. */
export interface GuardedSocket extends WebSocket {
  /** The token sent in connectionParams: null for none, undefined until sent. */
  announced: string | null | undefined;
}

/** Creates the subscription transport; nothing opens before the first subscription. */
export function createSocketTransport(options: SocketTransportOptions): SocketTransport {
  const { identity } = options;
  const sockets = new Set<GuardedSocket>();
  let client: Client | null = null;
  let operationLink: ReturnType<TRPCLink<AppRouter>> | null = null;

  function getClient(): Client {
    if (client) return client;
    const Base = options.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (!Base) {
      throw new Error(
        "Cannot open a WebSocket: this runtime has none; pass one as " +
          "createParleyClient({ url, WebSocket })",
      );
    }
    client = createWSClient({
      url: options.url,
      lazy: { enabled: true, closeMs: IDLE_CLOSE_MS },
      WebSocket: guardedWebSocket(Base, { identity, sockets }),
      connectionParams: async () => {
        const token = await identity.read();
        return token ? { token } : {};
      },
    });
    return client;
  }

  const link: TRPCLink<AppRouter> = (runtime) => ({ op, next }) =>
    observable((observer) => {
      let cancelled = false;
      let inner: { unsubscribe(): void } | null = null;
      // Read the token first: a change closes stale sockets before this op is queued.
      identity.read().then(() => {
        if (cancelled) return;
        operationLink ??= wsLink<AppRouter>({ client: getClient(), transformer: superjson })(
          runtime,
        );
        inner = operationLink({ op, next }).subscribe(observer);
      }).catch((error) => {
        if (!cancelled) observer.error(TRPCClientError.from(error));
      });
      return () => {
        cancelled = true;
        inner?.unsubscribe();
      };
    });

  return {
    link,
    closeStale() {
      for (const socket of sockets) {
        if (socket.announced !== undefined && socket.announced !== identity.token) {
          closeForTokenChange(socket);
        }
      }
    },
    async close() {
      await client?.close();
    },
  };
}

function closeForTokenChange(socket: WebSocket): void {
  if (socket.readyState >= 2) return; // CLOSING or CLOSED
  socket.close(TOKEN_CHANGED_CLOSE_CODE, "Token changed: reconnecting");
}

/**
 * A subclass of `Base` whose sockets are in `options.sockets` until they close, note the
 * token they announce in connectionParams, refuse to send calls (closing with
 * `TOKEN_CHANGED_CLOSE_CODE` instead) while `options.identity.token` differs from it, and
 * send tRPC's batched frames cut by `frames`.
 */
export function guardedWebSocket(
  Base: typeof WebSocket,
  options: { identity: Identity; sockets: Set<GuardedSocket> },
): typeof WebSocket {
  const { identity, sockets } = options;
  return class extends Base implements GuardedSocket {
    announced: string | null | undefined = undefined;

    constructor(...args: ConstructorParameters<typeof WebSocket>) {
      super(...args);
      sockets.add(this);
      this.addEventListener("close", () => sockets.delete(this));
    }

    override send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
      if (typeof data !== "string" || data === "PING" || data === "PONG") {
        super.send(data);
        return;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(data);
      } catch {
        super.send(data); // not tRPC's JSON encoding: nothing to check or cut
        return;
      }
      if (isObject(parsed) && parsed.method === "connectionParams") {
        const params = isObject(parsed.data) ? parsed.data : {};
        this.announced = typeof params.token === "string" && params.token ? params.token : null;
        super.send(data);
        return;
      }
      const messages: unknown[] = Array.isArray(parsed) ? parsed : [parsed];
      const calls = messages.some((m) => !isObject(m) || m.method !== "subscription.stop");
      if (calls && this.announced !== identity.token) {
        // Dropped, not sent: tRPC resends the subscriptions on the socket that replaces it.
        closeForTokenChange(this);
        return;
      }
      for (const frame of frames(messages)) super.send(frame);
    }
  };
}

/**
 * Encodes messages as frames of at most `MAX_BATCH_SIZE` messages and `MAX_FRAME_BYTES`
 * bytes (UTF-8), in order; a single larger message gets a frame of its own.
 */
export function frames(messages: unknown[]): string[] {
  const out: string[] = [];
  let group: string[] = [];
  let bytes = 2; // [ and ]
  const flush = () => {
    if (group.length === 1) out.push(group[0]);
    else if (group.length > 1) out.push(`[${group.join(",")}]`);
    group = [];
    bytes = 2;
  };
  for (const message of messages) {
    const text = JSON.stringify(message);
    const size = utf8Length(text) + (group.length > 0 ? 1 : 0);
    if (group.length >= MAX_BATCH_SIZE || (group.length > 0 && bytes + size > MAX_FRAME_BYTES)) {
      flush();
    }
    group.push(text);
    bytes += utf8Length(text) + (group.length > 1 ? 1 : 0);
  }
  flush();
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
