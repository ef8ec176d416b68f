/**
 * The queries behind access checks (see `server/access.ts`): who holds a token, and what they
 * may do in a room, answered for many callers in one round trip.
 */
import type { Sql } from "./mod.ts";

/** A caller (by the SHA-256 of their token) and the room they ask for. */
export interface AccessRequest {
  tokenHash: string;
  roomId: string;
}

/** What a caller may do in a room. */
export interface RoomAccess {
  /** The user the token belongs to, or null when its session is unknown, expired or ended. */
  userId: string | null;
  /** When the session expires unless used, in ms since the epoch (0 without a session). */
  expiresAt: number;
  roomExists: boolean;
  isMember: boolean;
  /** The room's last seq (0 before its first message; 0 for an unknown room). */
  lastSeq: number;
  /** The room's last event id (see db/events.ts; 0 for an unknown room). */
  lastEventId: number;
  /** The user's name and avatar, when the session is live. */
  username: string | null;
  avatarUrl: string | null;
  /** When the user joined the room, when they are a member. */
  joinedAt: Date | null;
}

/**
 * Resolves each request's token and the user's place in the room, with the room's last seq,
 * in one statement; results come in the order of `requests`. Room ids must be UUIDs.
 */
export async function readRoomAccess(
  sql: Sql,
  requests: readonly AccessRequest[],
): Promise<RoomAccess[]> {
  // Requests travel as one JSON array (the pool does not fetch array types, see db/mod.ts).
  // Lookups go by key, one per request (`offset 0` keeps each subquery a lookup): the planner
  // assumes 100 rows from jsonb_to_recordset and would otherwise hash whole tables.
  const items = requests.map(({ tokenHash, roomId }, ord) => ({
    ord,
    token_hash: tokenHash,
    room_id: roomId,
  }));
  const rows = await sql<(RoomAccess & { expiresAt: number | null })[]>`
    select
      c.user_id,
      (extract(epoch from c.expires_at) * 1000)::float8 as expires_at,
      c.username,
      c.avatar_url,
      r.id is not null as room_exists,
      coalesce(r.last_seq, 0) as last_seq,
      coalesce(r.last_event_id, 0)::float8 as last_event_id,
      m.joined_at is not null as is_member,
      m.joined_at
    from jsonb_to_recordset(${sql.json(items)}) as i(ord int, token_hash text, room_id uuid)
    left join lateral (
      select t.user_id, t.expires_at, u.username, u.avatar_url
      from tokens t join users u on u.id = t.user_id
      where t.hash = i.token_hash and t.expires_at > now() and t.revoked_at is null
      offset 0
    ) c on true
    left join lateral (
      select id, last_seq, last_event_id from rooms where id = i.room_id offset 0
    ) r on true
    left join lateral (
      select joined_at from room_members m
      where m.room_id = i.room_id and m.user_id = c.user_id
      offset 0
    ) m on true
    order by i.ord
  `;
  for (const row of rows) row.expiresAt ??= 0;
  return rows as RoomAccess[];
}
