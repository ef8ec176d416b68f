/**
 * The queries behind access checks (see `server/access.ts`): who holds a token, and what they
 * may do in a room, each answered in one round trip.
 */
import type { Sql } from "./mod.ts";

/** What a caller may do in a room, read in one statement. */
export interface RoomAccess {
  /** The user the token belongs to, or null when it is unknown or revoked. */
  userId: string | null;
  roomExists: boolean;
  isMember: boolean;
  /** The room's last seq (0 before its first message; 0 for an unknown room). */
  lastSeq: number;
}

/**
 * Resolves a token (by its SHA-256, `tokenHash`) and the user's place in `roomId` in one
 * statement, with the room's last seq.
 */
export async function readRoomAccess(
  sql: Sql,
  tokenHash: string,
  roomId: string,
): Promise<RoomAccess> {
  const [row] = await sql<[RoomAccess]>`
    with caller as (
      select user_id from tokens where hash = ${tokenHash} and revoked_at is null
    )
    select
      c.user_id,
      r.id is not null as room_exists,
      coalesce(r.last_seq, 0) as last_seq,
      exists (
        select 1 from room_members m where m.room_id = ${roomId} and m.user_id = c.user_id
      ) as is_member
    from (select 1) as one
    left join caller c on true
    left join rooms r on r.id = ${roomId}
  `;
  return row;
}
