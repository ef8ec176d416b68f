/**
 * Queries on users and their API tokens (stored as SHA-256 hashes only). Usernames are unique by
 * three keys (see server/username_key.ts): `username_key`, `username_skeleton_key` and
 * `username_skeleton_i_key`, each under a unique index named `users_username_…`, which every
 * write of a username sets here.
 */
import { type UsernameKeys, usernameKeys } from "../server/username_key.ts";
import type { Sql } from "./mod.ts";

/** A user as the API returns it. */
export interface User {
  id: string;
  username: string;
  avatarUrl: string | null;
  createdAt: Date;
}

/**
 * Creates a user and its first token (given as a hash) in one transaction. A name one of whose
 * keys another user holds fails with a unique violation on that key's `users_username_…` index.
 */
export async function createUser(
  sql: Sql,
  input: { username: string; avatarUrl: string | null; tokenHash: string },
): Promise<User> {
  const keys = usernameKeys(input.username);
  return await sql.begin(async (sql) => {
    const [user] = await sql<[User]>`
      insert into users (
        username, username_key, username_skeleton_key, username_skeleton_i_key, avatar_url
      )
      values (
        ${input.username}, ${keys.key}, ${keys.skeleton}, ${keys.skeletonI}, ${input.avatarUrl}
      )
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
 * its keys: the user's own name in another case, form or look keeps or swaps their own keys and
 * passes, a name one of whose keys another user holds fails with a unique violation on that
 * key's `users_username_…` index.
 */
export async function updateUser(
  sql: Sql,
  id: string,
  patch: { username?: string; avatarUrl?: string | null },
): Promise<User | undefined> {
  const { username } = patch;
  const keys = username === undefined ? undefined : usernameKeys(username);
  const [user] = await sql<[User?]>`
    update users set
      username = ${username === undefined ? sql`username` : username},
      username_key = ${keys === undefined ? sql`username_key` : keys.key},
      username_skeleton_key = ${keys === undefined ? sql`username_skeleton_key` : keys.skeleton},
      username_skeleton_i_key = ${
    keys === undefined ? sql`username_skeleton_i_key` : keys.skeletonI
  },
      avatar_url = ${patch.avatarUrl === undefined ? sql`avatar_url` : patch.avatarUrl}
    where id = ${id}
    returning id, username, avatar_url, created_at
  `;
  return user;
}

/** What `fillUsernameKeys` did. */
export interface FilledUsernameKeys {
  /** How many users got all three keys. */
  filled: number;
  /**
   * Users left without one or more keys because an older user's name has the same key (possible
   * only for names given before migration 00003, or by an older release during a rolling
   * deploy). They keep their name and the keys nobody else holds; the name already counts as
   * taken through the older user's keys.
   */
  collisions: string[];
}

/** The keys of `usernameKeys`, in the order of their columns below. */
const KEY_FIELDS = ["key", "skeleton", "skeletonI"] as const;

/**
 * Gives every key anew to each user lacking one of the three: rows from before migration 00003
 * (which cleared `username_key`), or written by an instance of an older release during a
 * rolling deploy, whose `username_key` may follow the older rule. Keys are computed in
 * TypeScript, so this runs after the migrations, at startup. Oldest user first; a key that is
 * already held stays null and the user is listed. Idempotent and cheap when nothing is missing;
 * it locks `users` against writes (and against a second instance doing the same) while it runs.
 */
export async function fillUsernameKeys(sql: Sql): Promise<FilledUsernameKeys> {
  const lacking = sql`
    username_key is null or username_skeleton_key is null or username_skeleton_i_key is null
  `;
  const [{ missing }] = await sql<[{ missing: boolean }]>`
    select exists (select 1 from users where ${lacking}) as missing
  `;
  if (!missing) return { filled: 0, collisions: [] };
  return await sql.begin(async (sql) => {
    await sql`lock table users in share row exclusive mode`;
    const rows = await sql<{ id: string; username: string }[]>`
      select id, username from users where ${lacking} order by created_at, id
    `;
    await sql`
      update users
      set username_key = null, username_skeleton_key = null, username_skeleton_i_key = null
      where ${lacking}
    `;
    const keys = rows.map((row) => usernameKeys(row.username));
    // Lists travel as JSON: the pool does not fetch array types (db/mod.ts), so sql.array is out.
    const list = (field: keyof UsernameKeys) =>
      sql`select jsonb_array_elements_text(${sql.json(keys.map((k) => k[field]))})`;
    const held = await sql<{ field: keyof UsernameKeys; value: string }[]>`
      select 'key' as field, username_key as value from users
      where username_key in (${list("key")})
      union all
      select 'skeleton', username_skeleton_key from users
      where username_skeleton_key in (${list("skeleton")})
      union all
      select 'skeletonI', username_skeleton_i_key from users
      where username_skeleton_i_key in (${list("skeletonI")})
    `;
    const taken = new Set(held.map((row) => `${row.field}:${row.value}`));
    const given: (string | null)[][] = [];
    const collisions: string[] = [];
    let filled = 0;
    rows.forEach((row, i) => {
      const values = KEY_FIELDS.map((field) => {
        const entry = `${field}:${keys[i][field]}`;
        if (taken.has(entry)) return null;
        taken.add(entry);
        return keys[i][field];
      });
      if (values.includes(null)) collisions.push(row.id);
      else filled++;
      given.push([row.id, ...values]);
    });
    await sql`
      update users set
        username_key = v.entry ->> 1,
        username_skeleton_key = v.entry ->> 2,
        username_skeleton_i_key = v.entry ->> 3
      from jsonb_array_elements(${sql.json(given)}) as v(entry)
      where users.id = (v.entry ->> 0)::uuid
    `;
    return { filled, collisions };
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
