/**
 * Postgres LISTEN/NOTIFY for fan-out between instances. Payloads stay small
 * (ids and numbers, never message bodies): NOTIFY caps them at 8000 bytes.
 */
import { connect as connectSocket, type Socket } from "node:net";
import { connect, type Sql } from "./mod.ts";

/** Channel announcing committed messages: payload `roomId:seq[,roomId:seq...]`. */
export const MESSAGES_CHANNEL = "parley_messages";

/** Channel announcing lost access: `leave:roomId:userId` or `logout:tokenHash`. */
export const ACCESS_CHANNEL = "parley_access";

/** Channel announcing stored events other than messages: `roomId:eventId[,...]`. */
export const EVENTS_CHANNEL = "parley_events";

/** Channel of presence and typing: one JSON item per line (see server/realtime/broadcast.ts). */
export const LIVE_CHANNEL = "parley_live";

/** Largest payload we send; Postgres refuses 8000 bytes and more. */
const MAX_PAYLOAD = 7900;

/**
 * Sends one notification per payload chunk, joining `items` with `separator`. Items are ASCII
 * or JSON; an item is never split, so none may be longer than the payload limit.
 */
export async function notifyAll(
  sql: Sql,
  channel: string,
  items: string[],
  separator = ",",
): Promise<void> {
  let chunk = "";
  let bytes = 0;
  for (const item of items) {
    // The limit is in bytes; names in presence items may be any Unicode.
    const size = utf8Length(item) + 1;
    if (chunk && bytes + size > MAX_PAYLOAD) {
      await sql.notify(channel, chunk);
      chunk = "";
      bytes = 0;
    }
    chunk = chunk ? `${chunk}${separator}${item}` : item;
    bytes += size;
  }
  if (chunk) await sql.notify(channel, chunk);
}

/** The UTF-8 length of `text`, in bytes, without encoding it. */
function utf8Length(text: string): number {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    // Two bytes below U+0800, three above; a surrogate pair (two units) makes four.
    if (code >= 0x80) bytes += code >= 0x800 && (code < 0xd800 || code > 0xdfff) ? 2 : 1;
  }
  return bytes;
}

/**
 * A new heartbeat channel, `parley_heartbeat_` and 12 random hex digits: one instance NOTIFYs
 * it and LISTENs on it, so no other instance hears its heartbeats.
 */
export function heartbeatChannel(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `parley_heartbeat_${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/**
 * One LISTEN connection on a client of its own. postgres.js reconnects it by itself when its
 * socket closes or errors, and LISTENs again; a socket that is black-holed (no FIN, no RST)
 * never does either, so its owner must be able to destroy it.
 */
export interface ListeningClient {
  /**
   * LISTENs on `channel`: `onNotify` gets each payload; `onListen` runs after the LISTEN and
   * after every reconnect of this client. Rejects when the connection cannot be opened
   * (postgres.js's connection errors: `ECONNREFUSED`, `CONNECT_TIMEOUT`, ...).
   */
  listen(
    channel: string,
    onNotify: (payload: string) => void,
    onListen?: () => void,
  ): Promise<void>;
  /**
   * Destroys the socket at once (no goodbye message, which a black hole would swallow) and
   * ends the client: its callbacks never run again. Safe to call twice.
   */
  destroy(): void;
}

/**
 * Opens a client for one LISTEN connection to `url`, which must be Postgres itself: through a
 * pooler in transaction mode the LISTEN stays on whichever server connection ran it and
 * notifications never arrive. The connection opens on the first `listen`.
 */
export function openListeningClient(url: string): ListeningClient {
  const sockets = new Set<Socket>();
  let destroyed = false;
  const client = connect(url, {
    max: 1,
    // Nothing runs long on this connection: the server's own timeouts are enough.
    statementTimeoutMs: null,
    lockTimeoutMs: null,
    // postgres.js calls this with its parsed options for each connection it opens.
    socket(target) {
      if (destroyed) throw new Error("Cannot open a LISTEN connection: its client was destroyed");
      // One host: a LISTEN connection has no use for postgres.js's multi-host failover.
      const socket = target.path
        ? connectSocket(target.path)
        : connectSocket(target.port[0], target.host[0]);
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
      return socket;
    },
  });
  return {
    async listen(channel, onNotify, onListen) {
      await client.listen(channel, onNotify, onListen);
    },
    destroy() {
      if (destroyed) return;
      destroyed = true;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      client.end({ timeout: 0 }).catch(() => {});
    },
  };
}
