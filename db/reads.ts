/**
 * Read state: how far each member has read each room (`read_positions`), and the caller's room
 * list with unread counts, the front end's sidebar.
 */
import type { Message } from "./messages.ts";
import type { Sql } from "./mod.ts";
import type { MemberKey, Room } from "./rooms.ts";

/**
 * Moves the member's read position in a room to `seq` (at most the room's last seq), never
 * backwards. Returns the position now, or undefined when the room does not exist.
 */
export async function markRead(
  sql: Sql,
  { roomId, userId }: MemberKey,
  seq: number,
): Promise<number | undefined> {
  const [row] = await sql<[{ lastReadSeq: number }?]>`
    insert into read_positions (user_id, room_id, last_read_seq)
    select ${userId}, r.id, least(${seq}, r.last_seq) from rooms r where r.id = ${roomId}
    on conflict (user_id, room_id) do update
      set last_read_seq = greatest(read_positions.last_read_seq, excluded.last_read_seq)
    returning last_read_seq
  `;
  return row?.lastReadSeq;
}

/** A room in the caller's list: the room, its newest message and the caller's read state. */
export interface MyRoom extends Room {
  /** The highest seq the caller marked read (0 before any). */
  lastReadSeq: number;
  /** Others' messages after `lastReadSeq`, deleted ones left out. */
  unreadCount: number;
  /** The room's newest message (empty content when deleted), or null before the first. */
  lastMessage: Omit<Message, "reactions"> | null;
}

type MyRoomRow = Room & {
  lastReadSeq: number;
  unreadCount: number;
  lmId: string | null;
  lmSeq: number;
  lmUserId: string | null;
  lmUsername: string;
  lmAvatarUrl: string | null;
  lmContent: string;
  lmClientMessageId: string | null;
  lmCreatedAt: Date;
  lmEditedAt: Date | null;
  lmDeletedAt: Date | null;
};

/**
 * The rooms `userId` is a member of, most recently active first (by newest message, else by
 * when they joined), each with its read state and newest message. One statement.
 */
export async function listMyRooms(sql: Sql, userId: string): Promise<MyRoom[]> {
  const rows = await sql<MyRoomRow[]>`
    select r.id, r.name, r.thumbnail_url, r.created_by, r.created_at,
      coalesce(p.last_read_seq, 0) as last_read_seq,
      (
        select count(*)::int from messages x
        where x.room_id = r.id and x.seq > coalesce(p.last_read_seq, 0)
          and x.user_id is distinct from ${userId} and x.deleted_at is null
      ) as unread_count,
      lm.id as lm_id, lm.seq as lm_seq, lm.user_id as lm_user_id, lm.username as lm_username,
      lm.avatar_url as lm_avatar_url, lm.content as lm_content,
      lm.client_message_id as lm_client_message_id, lm.created_at as lm_created_at,
      lm.edited_at as lm_edited_at, lm.deleted_at as lm_deleted_at
    from room_members m
    join rooms r on r.id = m.room_id
    left join read_positions p on p.user_id = m.user_id and p.room_id = m.room_id
    left join lateral (
      select * from messages where room_id = r.id and seq = r.last_seq offset 0
    ) lm on true
    where m.user_id = ${userId}
    order by coalesce(lm.created_at, m.joined_at) desc, r.id
  `;
  return rows.map((row) => ({
    id: row.id,
    name: row.name,
    thumbnailUrl: row.thumbnailUrl,
    createdBy: row.createdBy,
    createdAt: row.createdAt,
    lastReadSeq: row.lastReadSeq,
    unreadCount: row.unreadCount,
    lastMessage: row.lmId === null ? null : {
      id: row.lmId,
      roomId: row.id,
      seq: row.lmSeq,
      userId: row.lmUserId,
      username: row.lmUsername,
      avatarUrl: row.lmAvatarUrl,
      content: row.lmContent,
      clientMessageId: row.lmClientMessageId,
      createdAt: row.lmCreatedAt,
      editedAt: row.lmEditedAt,
      deletedAt: row.lmDeletedAt,
    },
  }));
}
