/** Queries on messages, numbered 1, 2, 3, ... per room with no gaps. */
import { appendEvent, lockRoom, messageEvent, type NumberedEvent } from "./events.ts";
import { postgres, type Queryable, type Sql } from "./mod.ts";

/**
 * A message as the API returns it; `username` and `avatarUrl` are the sender's at sending
 * time. A deleted account's messages stay with `userId` null, `username` "Deleted user" and no
 * avatar (see db/accounts.ts).
 */
export interface Message {
  id: string;
  roomId: string;
  seq: number;
  userId: string | null;
  username: string;
  avatarUrl: string | null;
  /** Empty once the message is deleted. */
  content: string;
  clientMessageId: string | null;
  createdAt: Date;
  /** When its content was last edited, or null. */
  editedAt: Date | null;
  /** When it was deleted, or null; a deleted message keeps its seq, with empty content. */
  deletedAt: Date | null;
  /**
   * Its reactions, one entry per emoji in the order first used: how many users reacted with it
   * and whether the caller is one of them. Empty on a message as it is created (fan-out).
   */
  reactions: Reaction[];
}

/** One emoji's reactions to a message, as seen by one caller. */
export interface Reaction {
  emoji: string;
  count: number;
  /** True when the caller reacted with this emoji. */
  mine: boolean;
}

/** What `sendMessage` did. */
export type SendResult =
  | { status: "created" | "duplicate"; message: Message; eventId: number }
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

/**
 * A row of the send statement: the outcome of the `ord`-th send and, if any, its message and
 * the message's id in the room's event order (see db/events.ts).
 */
type SendRow = {
  ord: number;
  status: "created" | "existing" | "unauthenticated" | "room_not_found" | "not_member";
  eventId: number;
} & Omit<Message, "reactions">;

/**
 * Stores one message with the next `seq` of its room. See `sendMessages`, of which it is the
 * one-message case; a race on the same `clientMessageId` (23505) reads the winner's message.
 */
export async function sendMessage(
  sql: Sql,
  input: SendInput,
  signal?: AbortSignal,
): Promise<SendResult> {
  try {
    const [result] = await sendMessages(sql, input.roomId, [input], signal);
    return result;
  } catch (error) {
    if (isSenderGone(error)) return { status: "unauthenticated" };
    if (input.clientMessageId !== null && isClientIdConflict(error)) {
      const existing = await findByClientId(sql, input.tokenHash, input.clientMessageId);
      if (existing) return compareRetry(existing.message, existing.eventId, input);
    }
    throw error;
  }
}

/**
 * True for the foreign key violation of a send whose sender's account was deleted while the
 * statement ran (see `deleteUser` in accounts.ts): nothing was stored.
 */
export function isSenderGone(error: unknown): boolean {
  return error instanceof postgres.PostgresError && error.code === "23503" &&
    error.constraint_name === "messages_user_id_fkey";
}

/** True for the unique violation of two sends with the same user and `clientMessageId`. */
export function isClientIdConflict(error: unknown): boolean {
  return error instanceof postgres.PostgresError && error.code === "23505" &&
    error.constraint_name === "messages_user_client_id_key";
}

/**
 * Stores messages of one room in one statement and one round trip (group commit): each
 * sender's token is resolved and their membership checked, a known `clientMessageId` returns
 * its first message instead of a new one, and the new messages take the room's next seqs in
 * the order given. The room's counter row is locked by the update, so seqs commit in order,
 * and a failed statement rolls the counter back (no gaps). Results come in the order of
 * `inputs`.
 *
 * Rejects with 23505 (`isClientIdConflict`) when two sends with one user's `clientMessageId`
 * meet (in this batch, or racing another): nothing is stored, send them one by one. When
 * `signal` aborts first, the statement is cancelled and the call rejects (SQLSTATE 57014).
 */
export async function sendMessages(
  sql: Sql,
  roomId: string,
  inputs: readonly SendInput[],
  signal?: AbortSignal,
): Promise<SendResult[]> {
  // Sends travel as one JSON array: the pool does not fetch array types (see db/mod.ts).
  const items = inputs.map((input, ord) => ({
    ord,
    token_hash: input.tokenHash,
    content: input.content,
    client_message_id: input.clientMessageId,
  }));
  const statement = sql<SendRow[]>`
    with input as (
      select * from jsonb_to_recordset(${sql.json(items)})
        as i(ord int, token_hash text, content text, client_message_id uuid)
    ),
    -- Lookups by key, one per send (scalar subqueries, and laterals kept apart by "offset 0"):
    -- the planner assumes 100 rows from jsonb_to_recordset and would otherwise hash or scan
    -- whole tables (messages included), which grows with history.
    caller as (
      select i.*, (
        select t.user_id from tokens t
        where t.hash = i.token_hash and t.expires_at > now() and t.revoked_at is null
      ) as user_id
      from input i
    ),
    resolved as (
      select c.ord, c.content, c.client_message_id, c.user_id,
        exists (
          select 1 from room_members m where m.room_id = ${roomId} and m.user_id = c.user_id
        ) as is_member
      from caller c
    ),
    existing as (
      select r.ord, m.* from resolved r
      cross join lateral (
        select * from messages
        where messages.user_id = r.user_id and messages.client_message_id = r.client_message_id
        offset 0
      ) m
      where r.is_member and r.client_message_id is not null
    ),
    fresh as (
      select r.ord, r.user_id, r.content, r.client_message_id,
        row_number() over (order by r.ord) as n,
        count(*) over () as total
      from resolved r
      where r.is_member and not exists (select 1 from existing e where e.ord = r.ord)
    ),
    room as (
      update rooms set
        last_seq = last_seq + (select count(*) from fresh),
        last_event_id = last_event_id + (select count(*) from fresh)
      where id = ${roomId} and exists (select 1 from fresh)
      returning id, last_seq, last_event_id
    ),
    inserted as (
      insert into messages
        (room_id, seq, event_id, user_id, username, avatar_url, content, client_message_id)
      select room.id, room.last_seq - f.total + f.n, room.last_event_id - f.total + f.n, u.id,
        u.username, u.avatar_url, f.content, f.client_message_id
      from fresh f cross join room
      cross join lateral (
        select id, username, avatar_url from users where id = f.user_id offset 0
      ) u
      returning messages.*
    )
    select
      r.ord,
      case
        when i.id is not null then 'created'
        when e.id is not null then 'existing'
        when r.user_id is null then 'unauthenticated'
        when not exists (select 1 from rooms where id = ${roomId}) then 'room_not_found'
        else 'not_member'
      end as status,
      coalesce(i.id, e.id) as id,
      coalesce(i.room_id, e.room_id) as room_id,
      coalesce(i.seq, e.seq) as seq,
      coalesce(i.user_id, e.user_id) as user_id,
      coalesce(i.username, e.username) as username,
      coalesce(i.avatar_url, e.avatar_url) as avatar_url,
      coalesce(i.content, e.content) as content,
      coalesce(i.client_message_id, e.client_message_id) as client_message_id,
      coalesce(i.created_at, e.created_at) as created_at,
      coalesce(i.edited_at, e.edited_at) as edited_at,
      coalesce(i.deleted_at, e.deleted_at) as deleted_at,
      coalesce(i.event_id, e.event_id, e.seq)::float8 as event_id
    from resolved r
    left join fresh f on f.ord = r.ord
    left join room on true
    left join inserted i on i.seq = room.last_seq - f.total + f.n
    left join existing e on e.ord = r.ord
    order by r.ord
  `;
  // Past the caller's deadline the statement is cancelled in Postgres (57014), so a send
  // the caller was told failed does not commit later.
  // postgres.js's cancel() returns nothing (it drops its own promise): a failed cancel request
  // surfaces as an unhandled rejection, which main.ts logs when it is a database fault.
  const cancel = () => void statement.cancel();
  if (signal?.aborted) cancel();
  signal?.addEventListener("abort", cancel, { once: true });
  const rows = await statement.finally(() => signal?.removeEventListener("abort", cancel));
  return rows.map(({ ord: _ord, status, eventId, ...row }, i): SendResult => {
    const message = { ...row, reactions: [] };
    if (status === "created") return { status, message, eventId };
    if (status === "existing") return compareRetry(message, eventId, inputs[i]);
    return { status };
  });
}

function compareRetry(existing: Message, eventId: number, input: SendInput): SendResult {
  const same = existing.roomId === input.roomId &&
    existing.content === input.content;
  return same
    ? { status: "duplicate", message: existing, eventId }
    : { status: "conflict", message: existing };
}

/**
 * The message the holder of `tokenHash` sent with this `clientMessageId`, if any, with its id
 * in the room's event order.
 */
export async function findByClientId(
  sql: Sql,
  tokenHash: string,
  clientMessageId: string,
): Promise<{ message: Message; eventId: number } | undefined> {
  const [row] = await sql<[(Omit<Message, "reactions"> & { eventId: number })?]>`
    select m.id, m.room_id, m.seq, m.user_id, m.username, m.avatar_url, m.content,
      m.client_message_id, m.created_at, m.edited_at, m.deleted_at,
      coalesce(m.event_id, m.seq)::float8 as event_id
    from messages m join tokens t on t.user_id = m.user_id
    where t.hash = ${tokenHash} and m.client_message_id = ${clientMessageId}
  `;
  if (!row) return undefined;
  const { eventId, ...message } = row;
  return { message: { ...message, reactions: [] }, eventId };
}

/** Options of `listMessages`: exclusive bounds, at most one of them. */
export interface ListOptions {
  limit: number;
  beforeSeq?: number;
  afterSeq?: number;
}

/**
 * A page of a room's messages in ascending `seq`, in their current state (edits, deletions,
 * reactions): the oldest `limit` above `afterSeq`, or else the newest `limit` below `beforeSeq`
 * (or overall). `viewerId` marks the caller's own reactions (`mine`); without it, reactions are
 * left out (`[]`), as in fan-out.
 */
export async function listMessages(
  sql: Sql,
  roomId: string,
  options: ListOptions,
  viewerId?: string,
): Promise<Message[]> {
  const forward = options.afterSeq !== undefined;
  const bound = forward
    ? sql`and seq > ${options.afterSeq!}`
    : options.beforeSeq === undefined
    ? sql``
    : sql`and seq < ${options.beforeSeq}`;
  const order = forward ? sql`order by seq` : sql`order by seq desc`;
  const reactions = viewerId === undefined ? sql`'[]'::json` : reactionsOf(sql, viewerId);
  const rows = await sql<Message[]>`
    select m.id, m.room_id, m.seq, m.user_id, m.username, m.avatar_url, m.content,
      m.client_message_id, m.created_at, m.edited_at, m.deleted_at, ${reactions} as reactions
    from (
      select * from messages where room_id = ${roomId} ${bound} ${order} limit ${options.limit}
    ) m
    ${order}
  `;
  return forward ? rows : rows.reverse();
}

/**
 * What an edit, a deletion or a reaction found: its value, and the event it stored in the
 * room's order (null when it changed nothing).
 */
export type ChangeResult<T> =
  | { status: "ok"; value: T; event: NumberedEvent | null }
  | { status: "not_found" | "forbidden" | "deleted" | "too_many_emoji" };

/**
 * Replaces the content of a message of `roomId` by its author and stamps `editedAt`.
 * `not_found` when the room holds no such message, `forbidden` when `userId` did not write it,
 * `deleted` when it was deleted.
 */
export async function editMessage(
  sql: Sql,
  key: { roomId: string; messageId: string; userId: string },
  content: string,
): Promise<ChangeResult<Message>> {
  return await sql.begin(async (sql) => {
    await lockRoom(sql, key.roomId);
    const [found] = await sql<[{ userId: string | null; deletedAt: Date | null }?]>`
      select user_id, deleted_at from messages
      where id = ${key.messageId} and room_id = ${key.roomId}
      for update
    `;
    if (!found) return { status: "not_found" };
    if (found.userId !== key.userId) return { status: "forbidden" };
    if (found.deletedAt !== null) return { status: "deleted" };
    await sql`
      update messages set content = ${content}, edited_at = now() where id = ${key.messageId}
    `;
    const eventId = await appendEvent(sql, key.roomId, "message.updated", {
      messageId: key.messageId,
    });
    const value = await currentMessage(sql, key.messageId, key.userId);
    return {
      status: "ok",
      value,
      event: { eventId, event: messageEvent("message.updated", value) },
    };
  });
}

/**
 * Deletes a message of `roomId`: its content is emptied, `deletedAt` stamped and its reactions
 * dropped; it keeps its seq. Allowed to its author and to the room's creator; deleting a
 * deleted message changes nothing. `not_found` / `forbidden` as `editMessage`.
 */
export async function deleteMessage(
  sql: Sql,
  key: { roomId: string; messageId: string; userId: string },
): Promise<ChangeResult<Message>> {
  return await sql.begin(async (sql) => {
    await lockRoom(sql, key.roomId);
    const [found] = await sql<
      [{ userId: string | null; seq: number; deletedAt: Date | null; roomCreator: string | null }?]
    >`
      select m.user_id, m.seq, m.deleted_at, r.created_by as room_creator
      from messages m join rooms r on r.id = m.room_id
      where m.id = ${key.messageId} and m.room_id = ${key.roomId}
      for update of m
    `;
    if (!found) return { status: "not_found" };
    if (found.userId !== key.userId && found.roomCreator !== key.userId) {
      return { status: "forbidden" };
    }
    let event: NumberedEvent | null = null;
    if (found.deletedAt === null) {
      const [{ deletedAt }] = await sql<[{ deletedAt: Date }]>`
        update messages set content = '', deleted_at = now() where id = ${key.messageId}
        returning deleted_at
      `;
      await sql`delete from message_reactions where message_id = ${key.messageId}`;
      const eventId = await appendEvent(sql, key.roomId, "message.deleted", {
        messageId: key.messageId,
        payload: { deletedAt },
      });
      const { messageId } = key;
      event = { eventId, event: { type: "message.deleted", messageId, seq: found.seq, deletedAt } };
    }
    return { status: "ok", value: await currentMessage(sql, key.messageId, key.userId), event };
  });
}

/** Most distinct emoji on one message. */
export const MAX_EMOJI_PER_MESSAGE = 20;

/** A reaction as it changed: who, which emoji, whether it was added, and its count now. */
export interface ReactionChange {
  messageId: string;
  emoji: string;
  userId: string;
  added: boolean;
  count: number;
}

/**
 * Adds (`on`) or removes the user's reaction `emoji` to a message of `roomId`; adding one
 * already there, or removing one that is not, changes nothing. `not_found` as `editMessage`,
 * `deleted` for a deleted message, `too_many_emoji` when it would be the message's
 * `MAX_EMOJI_PER_MESSAGE + 1`-th distinct emoji. The message row is locked, so concurrent
 * reactions count right.
 */
export async function reactToMessage(
  sql: Sql,
  key: { roomId: string; messageId: string; userId: string },
  emoji: string,
  on: boolean,
): Promise<ChangeResult<ReactionChange>> {
  return await sql.begin(async (sql) => {
    await lockRoom(sql, key.roomId);
    const [found] = await sql<[{ deletedAt: Date | null }?]>`
      select deleted_at from messages
      where id = ${key.messageId} and room_id = ${key.roomId}
      for update
    `;
    if (!found) return { status: "not_found" };
    if (found.deletedAt !== null) return { status: "deleted" };
    let added = false;
    let changed = false;
    if (on) {
      const [{ known, distinct }] = await sql<[{ known: boolean; distinct: number }]>`
        select bool_or(emoji = ${emoji}) is true as known, count(distinct emoji)::int as distinct
        from message_reactions where message_id = ${key.messageId}
      `;
      if (!known && distinct >= MAX_EMOJI_PER_MESSAGE) return { status: "too_many_emoji" };
      const inserted = await sql`
        insert into message_reactions (message_id, emoji, user_id)
        values (${key.messageId}, ${emoji}, ${key.userId})
        on conflict do nothing
        returning 1
      `;
      added = inserted.length > 0;
    } else {
      const removed = await sql`
        delete from message_reactions
        where message_id = ${key.messageId} and emoji = ${emoji} and user_id = ${key.userId}
        returning 1
      `;
      changed = removed.length > 0;
    }
    const [{ count }] = await sql<[{ count: number }]>`
      select count(*)::int as count from message_reactions
      where message_id = ${key.messageId} and emoji = ${emoji}
    `;
    const value = { messageId: key.messageId, emoji, userId: key.userId, added, count };
    if (!(added || changed)) return { status: "ok", value, event: null };
    const eventId = await appendEvent(sql, key.roomId, "reaction.changed", {
      messageId: key.messageId,
      userId: key.userId,
      payload: { emoji, added, count },
    });
    return {
      status: "ok",
      value,
      event: { eventId, event: { type: "reaction.changed", ...value } },
    };
  });
}

/** A message in its current state, reactions marked for `viewerId`. */
async function currentMessage(
  sql: Queryable,
  messageId: string,
  viewerId: string,
): Promise<Message> {
  const [message] = await sql<[Message]>`
    select m.id, m.room_id, m.seq, m.user_id, m.username, m.avatar_url, m.content,
      m.client_message_id, m.created_at, m.edited_at, m.deleted_at,
      ${reactionsOf(sql, viewerId)} as reactions
    from messages m where m.id = ${messageId}
  `;
  return message;
}

/**
 * The `reactions` column of the message aliased `m`, for `viewerId`: a JSON array of
 * `{ emoji, count, mine }`, one per emoji in the order first used.
 */
function reactionsOf(sql: Queryable, viewerId: string) {
  return sql`(
    select coalesce(json_agg(json_build_object('emoji', x.emoji, 'count', x.n, 'mine', x.mine)
      order by x.first, x.emoji), '[]'::json)
    from (
      select emoji, count(*)::int as n, bool_or(user_id = ${viewerId}) as mine,
        min(created_at) as first
      from message_reactions where message_id = m.id
      group by emoji
    ) x
  )`;
}
