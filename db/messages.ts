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
  | { status: "unauthenticated" | "room_not_found" | "not_member" };

/** Input of `sendMessage`. */
export interface SendInput {
  /** The SHA-256 of the sender's token: the statement checks it is valid. */
  tokenHash: string;
  roomId: string;
  content: string;
  clientMessageId: string | null;
}

/** The row of the send statement: its outcome and, when there is one, the message. */
type SendRow = {
  status: "created" | "existing" | "unauthenticated" | "room_not_found" | "not_member";
} & Message;

/**
 * Stores a message with the next `seq` of its room and the sender's current name and avatar,
 * in one statement and one round trip: the token is resolved, membership checked, a known
 * `clientMessageId` looked up (its first message is returned instead of a new one), and the
 * message inserted. The room's counter row is locked by the update, so seqs commit in order,
 * and a failed insert rolls the counter back (no gaps). Two sends racing with the same
 * `clientMessageId` meet on the unique index (23505): the loser reads the winner's message.
 * When `signal` aborts first, the statement is cancelled and the call rejects (SQLSTATE 57014).
 */
export async function sendMessage(
  sql: Sql,
  input: SendInput,
  signal?: AbortSignal,
): Promise<SendResult> {
  const { tokenHash, roomId, content, clientMessageId } = input;
  let row: SendRow;
  try {
    const statement = sql<[SendRow]>`
      with caller as (
        select t.user_id from tokens t where t.hash = ${tokenHash} and t.revoked_at is null
      ),
      membership as (
        select m.user_id from room_members m, caller c
        where m.room_id = ${roomId} and m.user_id = c.user_id
      ),
      existing as (
        select messages.* from messages, membership
        where ${clientMessageId}::uuid is not null
          and messages.user_id = membership.user_id and client_message_id = ${clientMessageId}
      ),
      room as (
        update rooms set last_seq = last_seq + 1
        where id = ${roomId}
          and exists (select 1 from membership)
          and not exists (select 1 from existing)
        returning id, last_seq
      ),
      inserted as (
        insert into messages (room_id, seq, user_id, username, avatar_url, content, client_message_id)
        select room.id, room.last_seq, u.id, u.username, u.avatar_url, ${content}, ${clientMessageId}
        from room, membership, users u
        where u.id = membership.user_id
        returning messages.*
      ),
      outcome as (
        select 'created' as status, inserted.* from inserted
        union all
        select 'existing', existing.* from existing
      )
      select
        coalesce(o.status, case
          when not exists (select 1 from caller) then 'unauthenticated'
          when not exists (select 1 from rooms where id = ${roomId}) then 'room_not_found'
          else 'not_member'
        end) as status,
        o.id, o.room_id, o.seq, o.user_id, o.username, o.avatar_url, o.content,
        o.client_message_id, o.created_at
      from (select 1) as one left join outcome o on true
    `;
    // Past the caller's deadline the statement is cancelled in Postgres (57014), so a send
    // the caller was told failed does not commit later.
    const cancel = () => void statement.cancel();
    signal?.addEventListener("abort", cancel, { once: true });
    [row] = await statement.finally(() => signal?.removeEventListener("abort", cancel));
  } catch (error) {
    if (
      clientMessageId !== null &&
      error instanceof postgres.PostgresError &&
      error.code === "23505" &&
      error.constraint_name === "messages_user_client_id_key"
    ) {
      const existing = await findByClientId(sql, tokenHash, clientMessageId);
      if (existing) return compareRetry(existing, input);
    }
    throw error;
  }
  const { status, ...message } = row;
  if (status === "created") return { status, message };
  if (status === "existing") return compareRetry(message, input);
  return { status };
}

function compareRetry(existing: Message, input: SendInput): SendResult {
  const same = existing.roomId === input.roomId &&
    existing.content === input.content;
  return { status: same ? "duplicate" : "conflict", message: existing };
}

/** The message the holder of `tokenHash` sent with this `clientMessageId`, if any. */
export async function findByClientId(
  sql: Sql,
  tokenHash: string,
  clientMessageId: string,
): Promise<Message | undefined> {
  const [message] = await sql<[Message?]>`
    select m.id, m.room_id, m.seq, m.user_id, m.username, m.avatar_url, m.content,
      m.client_message_id, m.created_at
    from messages m join tokens t on t.user_id = m.user_id
    where t.hash = ${tokenHash} and m.client_message_id = ${clientMessageId}
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
