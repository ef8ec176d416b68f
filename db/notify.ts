/**
 * Postgres LISTEN/NOTIFY for fan-out between instances. Payloads stay small
 * (ids and numbers, never message bodies): NOTIFY caps them at 8000 bytes.
 */
import type { Sql } from "./mod.ts";

/** Channel announcing committed messages: payload `roomId:seq[,roomId:seq...]`. */
export const MESSAGES_CHANNEL = "parley_messages";

/** Channel announcing lost access: `leave:roomId:userId` or `logout:tokenHash`. */
export const ACCESS_CHANNEL = "parley_access";

/** Largest payload we send; Postgres refuses 8000 bytes and more. */
const MAX_PAYLOAD = 7900;

/** Sends one notification per payload chunk, joining `items` with commas. */
export async function notifyAll(sql: Sql, channel: string, items: string[]): Promise<void> {
  let chunk = "";
  for (const item of items) {
    if (chunk && chunk.length + item.length + 1 > MAX_PAYLOAD) {
      await sql.notify(channel, chunk);
      chunk = "";
    }
    chunk = chunk ? `${chunk},${item}` : item;
  }
  if (chunk) await sql.notify(channel, chunk);
}

/**
 * Listens on `channel` on a dedicated connection that postgres.js reconnects by
 * itself; `onListen` runs after every (re)connect. Resolves with an unlisten function.
 */
export async function listen(
  sql: Sql,
  channel: string,
  onNotify: (payload: string) => void,
  onListen: () => void,
): Promise<() => Promise<void>> {
  const { unlisten } = await sql.listen(channel, onNotify, onListen);
  return unlisten;
}
