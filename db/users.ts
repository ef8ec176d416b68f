/**
 * Queries on users and their API tokens (stored as SHA-256 hashes only). Usernames are unique by
 * `username_key` (see server/username_key.ts), which every write of a username sets here.
 */
import { usernameKey } from "../server/username_key.ts";
import type { Sql } from "./mod.ts";

/** A user as the API returns it. */
export interface User {
  id: string;
  username: string;
  avatarUrl: string | null;
  createdAt: Date;
}

/**
 * Creates a user and its first token (given as a hash) in one transaction. A name whose key
 * another user holds fails with a unique violation on `users_username_key_idx`.
 */
export async function createUser(
  sql: Sql,
  input: { username: string; avatarUrl: string | null; tokenHash: string },
): Promise<User> {
  return await sql.begin(async (sql) => {
    const [user] = await sql<[User]>`
      insert into users (username, username_key, avatar_url)
      values (${input.username}, ${usernameKey(input.username)}, ${input.avatarUrl})
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

/**
 * Changes a user's name and/or avatar; fields left undefined stay as they are. A new name gets
 * its key: the user's own name in another case or form keeps their key and passes, a name whose
 * key another user holds fails with a unique violation on `users_username_key_idx`.
 */
export async function updateUser(
  sql: Sql,
  id: string,
  patch: { username?: string; avatarUrl?: string | null },
): Promise<User | undefined> {
  const { username } = patch;
  const [user] = await sql<[User?]>`
    update users set
      username = ${username === undefined ? sql`username` : username},
      username_key = ${username === undefined ? sql`username_key` : usernameKey(username)},
      avatar_url = ${patch.avatarUrl === undefined ? sql`avatar_url` : patch.avatarUrl}
    where id = ${id}
    returning id, username, avatar_url, created_at
  `;
  return user;
}

/** What `fillUsernameKeys` did. */
export interface FilledUsernameKeys {
  /** How many users got their key. */
  filled: number;
  /**
   * Users left without a key because an older user's name has the same key (possible only for
   * names given before migration 00002). Their name stays; it already counts as taken.
   */
  collisions: string[];
}

/**
 * Gives each user whose `username_key` is null its key: rows from before migration 00002, or
 * written by an instance of an older release during a rolling deploy. Keys are computed in
 * TypeScript, so this runs after the migrations, at startup. Oldest user first; a user whose key
 * is already held stays without one and is listed. Idempotent and cheap when nothing is missing;
 * it locks `users` against writes (and against a second instance doing the same) while it runs.
 */
export async function fillUsernameKeys(sql: Sql): Promise<FilledUsernameKeys> {
  const [{ missing }] = await sql<[{ missing: boolean }]>`
    select exists (select 1 from users where username_key is null) as missing
  `;
  if (!missing) return { filled: 0, collisions: [] };
  return await sql.begin(async (sql) => {
    await sql`lock table users in share row exclusive mode`;
    const rows = await sql<{ id: string; username: string }[]>`
      select id, username from users where username_key is null order by created_at, id
    `;
    const keys = rows.map((row) => usernameKey(row.username));
    // Lists travel as JSON: the pool does not fetch array types (db/mod.ts), so sql.array is out.
    const held = await sql<{ usernameKey: string }[]>`
      select username_key from users
      where username_key in (select jsonb_array_elements_text(${sql.json(keys)}))
    `;
    const taken = new Set(held.map((row) => row.usernameKey));
    const filled: [string, string][] = [];
    const collisions: string[] = [];
    rows.forEach((row, i) => {
      if (taken.has(keys[i])) {
        collisions.push(row.id);
        return;
      }
      taken.add(keys[i]);
      filled.push([row.id, keys[i]]);
    });
    if (filled.length > 0) {
      await sql`
        update users set username_key = v.pair ->> 1
        from jsonb_array_elements(${sql.json(filled)}) as v(pair)
        where users.id = (v.pair ->> 0)::uuid
      `;
    }
    return { filled: filled.length, collisions };
  });
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
  // Claims travel as JSON: the pool does not fetch array types (db/mod.ts), so sql.array is out.
  const rows = await sql<{ i: string }[]>`
    select c.i - 1 as i
    from jsonb_array_elements(
      ${sql.json(claims.map((c) => [c.roomId, c.userId, c.tokenHash]))}
    ) with ordinality as c(claim, i)
    where not exists (
        select 1 from room_members m
        where m.room_id = (c.claim ->> 0)::uuid and m.user_id = (c.claim ->> 1)::uuid
      )
      or not exists (
        select 1 from tokens t where t.hash = c.claim ->> 2 and t.revoked_at is null
      )
  `;
  return rows.map((row) => Number(row.i));
}
