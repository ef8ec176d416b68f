/** Queries on messages, numbered 1, 2, 3, ... per room with no gaps. */
import { postgres, type Sql } from "./mod.ts";

/** A message as the API returns it; `username` and `avatarUrl` are the sender's at sending time. */
export interface Message {
  id: string;
  roomId: string;
  seq: number;
  userId: string;
  username: string;
  avatarUrl: string | null;
  content: string;
  clientMessageId: string | null;
  createdAt: Date;
}

/** What `sendMessage` did. */
export type SendResult =
  | { status: "created"; message: Message }
  | { status: "duplicate"; message: Message }
  | { status: "conflict"; message: Message }
  | { status: "not_member" };

/** Input of `sendMessage`. */
export interface SendInput {
  roomId: string;
  userId: string;
  content: string;
  clientMessageId: string | null;
}

/**
 * Stores a message with the next `seq` of its room and the sender's current name
 * and avatar, in one statement: the room's counter row is locked by the update, so
 * seqs commit in order and a failed insert rolls the counter back (no gaps).
 * A known `clientMessageId` returns the first message instead of a new one. When `signal`
 * aborts first, the statement is cancelled and the call rejects (SQLSTATE 57014).
 */
export async function sendMessage(
  sql: Sql,
  input: SendInput,
  signal?: AbortSignal,
): Promise<SendResult> {
  if (input.clientMessageId !== null) {
    const existing = await findByClientId(
      sql,
      input.userId,
      input.clientMessageId,
    );
    if (existing) return compareRetry(existing, input);
  }
  try {
    const statement = sql<[Message?]>`
      with room as (
        update rooms set last_seq = last_seq + 1
        where id = ${input.roomId}
          and exists (
            select 1 from room_members where room_id = ${input.roomId} and user_id = ${input.userId}
          )
        returning id, last_seq
      )
      insert into messages (room_id, seq, user_id, username, avatar_url, content, client_message_id)
      select room.id, room.last_seq, u.id, u.username, u.avatar_url, ${input.content},
        ${input.clientMessageId}
      from room, users u
      where u.id = ${input.userId}
      returning id, room_id, seq, user_id, username, avatar_url, content, client_message_id, created_at
    `;
    // Past the caller's deadline the statement is cancelled in Postgres (57014), so a send
    // the caller was told failed does not commit later.
    const cancel = () => void statement.cancel();
    signal?.addEventListener("abort", cancel, { once: true });
    const [message] = await statement.finally(() => signal?.removeEventListener("abort", cancel));
    return message ? { status: "created", message } : { status: "not_member" };
  } catch (error) {
    if (
      input.clientMessageId !== null &&
      error instanceof postgres.PostgresError &&
      error.code === "23505" &&
      error.constraint_name === "messages_user_client_id_key"
    ) {
      const existing = await findByClientId(
        sql,
        input.userId,
        input.clientMessageId,
      );
      if (existing) return compareRetry(existing, input);
    }
    throw error;
  }
}

function compareRetry(existing: Message, input: SendInput): SendResult {
  const same = existing.roomId === input.roomId &&
    existing.content === input.content;
  return { status: same ? "duplicate" : "conflict", message: existing };
}

/** The message a user sent with this `clientMessageId`, if any. */
export async function findByClientId(
  sql: Sql,
  userId: string,
  clientMessageId: string,
): Promise<Message | undefined> {
  const [message] = await sql<[Message?]>`
    select id, room_id, seq, user_id, username, avatar_url, content, client_message_id, created_at
    from messages
    where user_id = ${userId} and client_message_id = ${clientMessageId}
  `;
  return message;
}

/** Options of `listMessages`: exclusive bounds, at most one of them. */
export interface ListOptions {
  limit: number;
  beforeSeq?: number;
  afterSeq?: number;
}

/**
 * A page of a room's messages in ascending `seq`: the oldest `limit` above
 * `afterSeq`, or else the newest `limit` below `beforeSeq` (or overall).
 */
export async function listMessages(
  sql: Sql,
  roomId: string,
  options: ListOptions,
): Promise<Message[]> {
  if (options.afterSeq !== undefined) {
    return await sql<Message[]>`
      select id, room_id, seq, user_id, username, avatar_url, content, client_message_id, created_at
      from messages
      where room_id = ${roomId} and seq > ${options.afterSeq}
      order by seq
      limit ${options.limit}
    `;
  }
  const below = options.beforeSeq === undefined ? sql`` : sql`and seq < ${options.beforeSeq}`;
  const rows = await sql<Message[]>`
    select id, room_id, seq, user_id, username, avatar_url, content, client_message_id, created_at
    from messages
    where room_id = ${roomId} ${below}
    order by seq desc
    limit ${options.limit}
  `;
  return rows.reverse();
}
