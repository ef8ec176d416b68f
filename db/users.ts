/** Queries on users and their API tokens (stored as SHA-256 hashes only). */
import type { Sql } from "./mod.ts";

/** A user as the API returns it. */
export interface User {
  id: string;
  username: string;
  avatarUrl: string | null;
  createdAt: Date;
}

/** Creates a user and its first token (given as a hash) in one transaction. */
export async function createUser(
  sql: Sql,
  input: { username: string; avatarUrl: string | null; tokenHash: string },
): Promise<User> {
  return await sql.begin(async (sql) => {
    const [user] = await sql<[User]>`
      insert into users (username, avatar_url)
      values (${input.username}, ${input.avatarUrl})
      returning id, username, avatar_url, created_at
    `;
    await sql`insert into tokens (hash, user_id) values (${input.tokenHash}, ${user.id})`;
    return user;
  });
}

/** The user owning an unrevoked token with this hash. */
export async function findUserByTokenHash(
  sql: Sql,
  tokenHash: string,
): Promise<User | undefined> {
  const [user] = await sql<[User?]>`
    select u.id, u.username, u.avatar_url, u.created_at
    from tokens t join users u on u.id = t.user_id
    where t.hash = ${tokenHash} and t.revoked_at is null
  `;
  return user;
}

/** Changes a user's name and/or avatar; fields left undefined stay as they are. */
export async function updateUser(
  sql: Sql,
  id: string,
  patch: { username?: string; avatarUrl?: string | null },
): Promise<User | undefined> {
  const [user] = await sql<[User?]>`
    update users set
      username = coalesce(${patch.username ?? null}, username),
      avatar_url = ${patch.avatarUrl === undefined ? sql`avatar_url` : patch.avatarUrl}
    where id = ${id}
    returning id, username, avatar_url, created_at
  `;
  return user;
}

/** Revokes one token; true when it was active. */
export async function revokeToken(
  sql: Sql,
  tokenHash: string,
): Promise<boolean> {
  const rows = await sql`
    update tokens set revoked_at = now()
    where hash = ${tokenHash} and revoked_at is null
    returning hash
  `;
  return rows.length > 0;
}

/** One subscriber's claim to a room, as checked by `findRevoked`. */
export interface AccessClaim {
  roomId: string;
  userId: string;
  tokenHash: string;
}

/** The indexes of the claims whose token was revoked or whose membership is gone. */
export async function findRevoked(sql: Sql, claims: AccessClaim[]): Promise<number[]> {
  if (claims.length === 0) return [];
  const rows = await sql<{ i: string }[]>`
    select c.i - 1 as i
    from unnest(
      ${sql.array(claims.map((c) => c.roomId))}::uuid[],
      ${sql.array(claims.map((c) => c.userId))}::uuid[],
      ${sql.array(claims.map((c) => c.tokenHash))}::text[]
    ) with ordinality as c(room_id, user_id, hash, i)
    where not exists (
        select 1 from room_members m where m.room_id = c.room_id and m.user_id = c.user_id
      )
      or not exists (select 1 from tokens t where t.hash = c.hash and t.revoked_at is null)
  `;
  return rows.map((row) => Number(row.i));
}
