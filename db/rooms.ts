/** Queries on rooms and room membership. */
import { appendEvent, lockRoom, type NumberedEvent } from "./events.ts";
import type { Queryable, Sql } from "./mod.ts";

/** A room as the API returns it. */
export interface Room {
  id: string;
  name: string;
  thumbnailUrl: string | null;
  /** The creator, or null once their account was deleted. */
  createdBy: string | null;
  createdAt: Date;
}

/** A room member with the user's current name and avatar. */
export interface Member {
  roomId: string;
  userId: string;
  username: string;
  avatarUrl: string | null;
  joinedAt: Date;
}

/** Whether a room exists and whether a user belongs to it. */
export interface Membership {
  roomExists: boolean;
  isMember: boolean;
}

/** Creates a room and joins its creator (the room's first event), in one transaction. */
export async function createRoom(
  sql: Sql,
  input: { name: string; thumbnailUrl: string | null; createdBy: string },
): Promise<Room> {
  return await sql.begin(async (sql) => {
    const [room] = await sql<[Room]>`
      insert into rooms (name, thumbnail_url, created_by)
      values (${input.name}, ${input.thumbnailUrl}, ${input.createdBy})
      returning id, name, thumbnail_url, created_by, created_at
    `;
    await addMember(sql, { roomId: room.id, userId: input.createdBy });
    return room;
  });
}

/**
 * Adds a member and stores `member.joined`; null when they already were one, or the room does
 * not exist.
 */
async function addMember(
  sql: Queryable,
  { roomId, userId }: MemberKey,
): Promise<NumberedEvent | null> {
  const [joined] = await sql<[{ joinedAt: Date }?]>`
    insert into room_members (room_id, user_id)
    select id, ${userId} from rooms where id = ${roomId}
    on conflict do nothing
    returning joined_at
  `;
  if (!joined) return null;
  const member = await getMember(sql, { roomId, userId });
  const eventId = await appendEvent(sql, roomId, "member.joined", {
    userId,
    payload: { joinedAt: joined.joinedAt },
  });
  return { eventId, event: { type: "member.joined", ...member! } };
}

/** One room by id. */
export async function getRoom(sql: Sql, id: string): Promise<Room | undefined> {
  const [room] = await sql<[Room?]>`
    select id, name, thumbnail_url, created_by, created_at from rooms where id = ${id}
  `;
  return room;
}

/**
 * Rooms newest first. `cursor` is the id of the last room of the previous page;
 * returns up to `limit + 1` rows so the caller can tell whether more exist.
 */
export async function listRooms(
  sql: Sql,
  options: { limit: number; cursor?: string },
): Promise<Room[]> {
  const after = options.cursor === undefined
    ? sql``
    : sql`where (created_at, id) < (select created_at, id from rooms where id = ${options.cursor})`;
  return await sql<Room[]>`
    select id, name, thumbnail_url, created_by, created_at from rooms
    ${after}
    order by created_at desc, id desc
    limit ${options.limit + 1}
  `;
}

/** A user in a room: the key of a membership. */
export interface MemberKey {
  roomId: string;
  userId: string;
}

/** Updates a room if `userId` created it; undefined when no such room was created by that user. */
export async function updateRoom(
  sql: Sql,
  { roomId: id, userId }: MemberKey,
  patch: { name?: string; thumbnailUrl?: string | null },
): Promise<Room | undefined> {
  const [room] = await sql<[Room?]>`
    update rooms set
      name = coalesce(${patch.name ?? null}, name),
      thumbnail_url = ${patch.thumbnailUrl === undefined ? sql`thumbnail_url` : patch.thumbnailUrl}
    where id = ${id} and created_by = ${userId}
    returning id, name, thumbnail_url, created_by, created_at
  `;
  return room;
}

/** Whether the room exists and the user is a member, in one round trip. */
export async function getMembership(
  sql: Sql,
  { roomId, userId }: MemberKey,
): Promise<Membership> {
  const [row] = await sql<[Membership]>`
    select
      exists (select 1 from rooms where id = ${roomId}) as room_exists,
      exists (select 1 from room_members where room_id = ${roomId} and user_id = ${userId}) as is_member
  `;
  return row;
}

/**
 * Joins a user to a room (a no-op when already joined): the membership, and the
 * `member.joined` event stored (null when they were a member already); undefined when the room
 * does not exist.
 */
export async function joinRoom(
  sql: Sql,
  key: MemberKey,
): Promise<{ member: Member; event: NumberedEvent | null } | undefined> {
  return await sql.begin(async (sql) => {
    await lockRoom(sql, key.roomId);
    const event = await addMember(sql, key);
    const member = await getMember(sql, key);
    return member && { member, event };
  });
}

/** One membership with the user's current name and avatar. */
export async function getMember(
  sql: Queryable,
  { roomId, userId }: MemberKey,
): Promise<Member | undefined> {
  const [member] = await sql<[Member?]>`
    select m.room_id, m.user_id, u.username, u.avatar_url, m.joined_at
    from room_members m join users u on u.id = m.user_id
    where m.room_id = ${roomId} and m.user_id = ${userId}
  `;
  return member;
}

/** Removes a user from a room: the `member.left` event stored, or null when they were not a member. */
export async function leaveRoom(
  sql: Sql,
  { roomId, userId }: MemberKey,
): Promise<NumberedEvent | null> {
  return await sql.begin(async (sql) => {
    await lockRoom(sql, roomId);
    const member = await getMember(sql, { roomId, userId });
    const rows = await sql<{ joinedAt: Date }[]>`
      delete from room_members where room_id = ${roomId} and user_id = ${userId}
      returning joined_at
    `;
    if (!member || rows.length === 0) return null;
    const eventId = await appendEvent(sql, roomId, "member.left", {
      userId,
      payload: { joinedAt: rows[0].joinedAt },
    });
    return { eventId, event: { type: "member.left", ...member } };
  });
}

/** A room's members, earliest joined first. */
export async function listMembers(sql: Sql, roomId: string): Promise<Member[]> {
  return await sql<Member[]>`
    select m.room_id, m.user_id, u.username, u.avatar_url, m.joined_at
    from room_members m join users u on u.id = m.user_id
    where m.room_id = ${roomId}
    order by m.joined_at, m.user_id
  `;
}

/**
 * Each room's `last_seq` (its newest message's seq, 0 when empty) and `last_event_id` (see
 * db/events.ts), by room id; rooms that do not exist are left out. One round trip whatever the
 * number of rooms.
 */
export async function getRoomPositions(
  sql: Sql,
  roomIds: string[],
): Promise<Map<string, { lastSeq: number; lastEventId: number }>> {
  if (roomIds.length === 0) return new Map();
  // Ids travel as JSON: the pool does not fetch array types (db/mod.ts), so sql.array is out.
  const rows = await sql<{ id: string; lastSeq: number; lastEventId: number }[]>`
    select r.id, r.last_seq, r.last_event_id::float8 as last_event_id
    from jsonb_array_elements_text(${sql.json(roomIds)}) as j(id)
    cross join lateral (select id, last_seq, last_event_id from rooms where id = j.id::uuid offset 0) r
  `;
  return new Map(rows.map(({ id, lastSeq, lastEventId }) => [id, { lastSeq, lastEventId }]));
}
