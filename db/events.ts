/**
 * A room's stored events, numbered 1, 2, 3, ... per room with no gaps (migration 00006): new
 * messages (their `event_id`), and the rows of `room_events` (edits, deletions, reactions,
 * members joining and leaving). Read back in one order for `rooms.onEvent` replays.
 */
import type { Message, Reaction } from "./messages.ts";
import type { Queryable, Sql } from "./mod.ts";

/** A member as a membership event carries it; `userId` is null once their account is deleted. */
export interface EventMember {
  roomId: string;
  userId: string | null;
  username: string;
  avatarUrl: string | null;
  joinedAt: Date;
}

/** A member who is online or typing (they hold a live session, so their account exists). */
export interface LiveMember {
  roomId: string;
  userId: string;
  username: string;
  avatarUrl: string | null;
  joinedAt: Date;
}

/**
 * An event of a room, as `rooms.onEvent` delivers it, a union on `type`. Stored events are
 * replayed on resume; `presence.changed` and `typing.changed` are live only. Messages in events
 * carry reaction counts with `mine` false (one frame serves every subscriber): a client knows
 * its own reactions from `reaction.changed`'s `userId`.
 */
export type RoomEvent = StoredEvent | LiveEvent;

/** The events stored in Postgres and replayed on resume. */
export type StoredEvent =
  | ({ type: "message.created" } & Message)
  | ({ type: "message.updated" } & Message)
  | { type: "message.deleted"; messageId: string; seq: number; deletedAt: Date }
  | {
    type: "reaction.changed";
    messageId: string;
    emoji: string;
    /** Null once the reacting account is deleted. */
    userId: string | null;
    added: boolean;
    /** How many users react with this emoji now. */
    count: number;
  }
  | ({ type: "member.joined" } & EventMember)
  | ({ type: "member.left" } & EventMember);

/** The live-only events: never stored, never replayed. */
export type LiveEvent =
  | { type: "presence.changed"; online: LiveMember[] }
  | { type: "typing.changed"; typing: LiveMember[] };

/** The stored event types that are rows of `room_events`. */
type RowEventType = Exclude<StoredEvent["type"], "message.created">;

/** A stored event with its id in the room's order. */
export interface NumberedEvent {
  eventId: number;
  event: StoredEvent;
}

/** What is needed of a new `room_events` row beside its type. */
export interface EventRow {
  messageId?: string;
  userId?: string;
  payload?: Record<string, unknown>;
}

/**
 * Locks a room's row before a change that stores an event. Every writer locks in one order:
 * room rows (in id order when several), then users, then messages and the rest; sends and
 * account deletions do the same, so none deadlocks with another.
 */
export async function lockRoom(sql: Queryable, roomId: string): Promise<void> {
  await sql`select 1 from rooms where id = ${roomId} for no key update`;
}

/**
 * Appends one event of `type` to `roomId`'s order; returns its id. Run it inside the
 * transaction of the change it records: the room's row stays locked until commit, so event
 * ids commit in order with no gaps (a rollback takes the id back).
 */
export async function appendEvent(
  sql: Queryable,
  roomId: string,
  type: RowEventType,
  row: EventRow,
): Promise<number> {
  const [{ eventId }] = await sql<[{ eventId: number }]>`
    with room as (
      update rooms set last_event_id = last_event_id + 1 where id = ${roomId}
      returning last_event_id
    )
    insert into room_events (room_id, event_id, type, message_id, user_id, payload)
    select ${roomId}, room.last_event_id, ${type}, ${row.messageId ?? null}, ${row.userId ?? null},
      ${sql.json((row.payload ?? {}) as Parameters<typeof sql.json>[0])}
    from room
    returning event_id::float8 as event_id
  `;
  return eventId;
}

/** A row of the replay query: the event's columns, and its message's or member's. */
interface EventRowRead {
  eventId: number;
  type: StoredEvent["type"];
  payload: Record<string, unknown> | null;
  eventUserId: string | null;
  memberUsername: string | null;
  memberAvatarUrl: string | null;
  id: string | null;
  roomId: string | null;
  seq: number | null;
  userId: string | null;
  username: string | null;
  avatarUrl: string | null;
  content: string | null;
  clientMessageId: string | null;
  createdAt: Date | null;
  editedAt: Date | null;
  deletedAt: Date | null;
  reactions: Reaction[];
}

/**
 * The stored events of `roomId` after `afterEventId`, oldest first, at most `limit`. Messages
 * show their current state (an edit replayed after a deletion shows the deletion: deleted
 * content is never replayed); members their current name and avatar ("Deleted user" once the
 * account is deleted).
 */
export async function listEvents(
  sql: Sql,
  roomId: string,
  afterEventId: number,
  limit: number,
): Promise<NumberedEvent[]> {
  const rows = await sql<EventRowRead[]>`
    select x.event_id::float8 as event_id, x.type, x.payload, x.event_user_id,
      u.username as member_username, u.avatar_url as member_avatar_url,
      m.id, m.room_id, m.seq, m.user_id, m.username, m.avatar_url, m.content,
      m.client_message_id, m.created_at, m.edited_at, m.deleted_at,
      case when x.type = 'message.updated' then ${reactionCounts(sql)} else '[]'::json end
        as reactions
    from (
      (
        select event_id, 'message.created' as type, id as message_id, null::uuid as event_user_id,
          null::jsonb as payload
        from messages where room_id = ${roomId} and event_id > ${afterEventId}
        order by event_id limit ${limit}
      )
      union all
      (
        -- Messages stored before migration 00006: event id = seq.
        select seq, 'message.created', id, null, null
        from messages
        where room_id = ${roomId} and event_id is null and seq > ${afterEventId}
          and seq <= (select seq_events_until from rooms where id = ${roomId})
        order by seq limit ${limit}
      )
      union all
      (
        select event_id, type, message_id, user_id, payload
        from room_events where room_id = ${roomId} and event_id > ${afterEventId}
        order by event_id limit ${limit}
      )
    ) x
    left join messages m on m.id = x.message_id
    left join users u on u.id = x.event_user_id
    order by x.event_id
    limit ${limit}
  `;
  return rows.map((row) => ({ eventId: row.eventId, event: toEvent(row, roomId) }));
}

/**
 * The `reactions` of the message aliased `m` as events carry them: one `{ emoji, count, mine }`
 * per emoji in the order first used, `mine` false.
 */
function reactionCounts(sql: Queryable) {
  return sql`(
    select coalesce(json_agg(json_build_object('emoji', r.emoji, 'count', r.n, 'mine', false)
      order by r.first, r.emoji), '[]'::json)
    from (
      select emoji, count(*)::int as n, min(created_at) as first
      from message_reactions where message_id = m.id
      group by emoji
    ) r
  )`;
}

function toEvent(row: EventRowRead, roomId: string): StoredEvent {
  const payload = row.payload ?? {};
  switch (row.type) {
    case "message.created":
    case "message.updated":
      return { type: row.type, ...messageOf(row) };
    case "message.deleted":
      return {
        type: row.type,
        messageId: row.id!,
        seq: row.seq!,
        deletedAt: new Date(payload.deletedAt as string),
      };
    case "reaction.changed":
      return {
        type: row.type,
        messageId: row.id!,
        emoji: payload.emoji as string,
        userId: row.eventUserId,
        added: payload.added as boolean,
        count: payload.count as number,
      };
    case "member.joined":
    case "member.left":
      return {
        type: row.type,
        roomId,
        userId: row.eventUserId,
        username: row.memberUsername ?? "Deleted user",
        avatarUrl: row.memberAvatarUrl,
        joinedAt: new Date(payload.joinedAt as string),
      };
  }
}

function messageOf(row: EventRowRead): Message {
  return {
    id: row.id!,
    roomId: row.roomId!,
    seq: row.seq!,
    userId: row.userId,
    username: row.username!,
    avatarUrl: row.avatarUrl,
    content: row.content!,
    clientMessageId: row.clientMessageId,
    createdAt: row.createdAt!,
    editedAt: row.editedAt,
    deletedAt: row.deletedAt,
    reactions: row.reactions,
  };
}

/** A message as a `message.created` or `message.updated` event carries it (`mine` false). */
export function messageEvent(
  type: "message.created" | "message.updated",
  message: Message,
): StoredEvent {
  const reactions = message.reactions.map(({ emoji, count }) => ({ emoji, count, mine: false }));
  return { type, ...message, reactions };
}
