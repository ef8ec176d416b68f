/**
 * Queries on users and the sessions their tokens open (stored as SHA-256 hashes only, see
 * `sessions.ts`). Usernames are unique by
 * three keys (see server/username_key.ts): `username_key`, `username_skeleton_key` and
 * `username_skeleton_i_key`, each under a unique index named `users_username_…`, which every
 * write of a username sets here.
 */
import { type UsernameKeys, usernameKeys } from "../server/username_key.ts";
import { createSession, DEFAULT_SESSION_TTL_SECONDS, type NewSession } from "./sessions.ts";
import type { Sql } from "./mod.ts";

/** A user as the API returns it. */
export interface User {
  id: string;
  username: string;
  avatarUrl: string | null;
  /** False for a guest account, reachable only through its sessions until it sets a password. */
  hasPassword: boolean;
  createdAt: Date;
}

/** A new user and the session it starts with. */
export interface NewUser {
  username: string;
  avatarUrl: string | null;
  /** A PHC string from server/password.ts, or null for a guest account. */
  passwordHash: string | null;
  /** The first session (its `userId` is the new user's). */
  session: Omit<NewSession, "userId">;
  /** An identity provider's (issuer, subject) this user is found by, if any. */
  identity?: { issuer: string; subject: string };
}

/**
 * Creates a user, its identity if any, and its first session in one transaction. A name one of
 * whose keys another user holds fails with a unique violation on that key's `users_username_…`
 * index; an identity already taken fails with one on `identities_pkey`.
 */
export async function createAccount(
  sql: Sql,
  input: NewUser,
): Promise<{ user: User; expiresAt: Date }> {
  // A new user has no other session to drop.
  const keys = usernameKeys(input.username);
  return await sql.begin(async (sql) => {
    const [user] = await sql<[User]>`
      insert into users (
        username, username_key, username_skeleton_key, username_skeleton_i_key, avatar_url,
        password_hash
      )
      values (
        ${input.username}, ${keys.key}, ${keys.skeleton}, ${keys.skeletonI}, ${input.avatarUrl},
        ${input.passwordHash}
      )
      returning id, username, avatar_url, password_hash is not null as has_password, created_at
    `;
    if (input.identity) {
      await sql`
        insert into identities (issuer, subject, user_id)
        values (${input.identity.issuer}, ${input.identity.subject}, ${user.id})
      `;
    }
    const { expiresAt } = await createSession(sql, { ...input.session, userId: user.id });
    return { user, expiresAt };
  });
}

/** The user with this id. */
export async function getUser(sql: Sql, id: string): Promise<User | undefined> {
  const [user] = await sql<[User?]>`
    select id, username, avatar_url, password_hash is not null as has_password, created_at
    from users where id = ${id}
  `;
  return user;
}

/**
 * Creates a guest user and its first session (given by its token's hash) with the default
 * lifetime: `createAccount` in its simplest form.
 */
export async function createUser(
  sql: Sql,
  input: { username: string; avatarUrl: string | null; tokenHash: string },
): Promise<User> {
  const { user } = await createAccount(sql, {
    username: input.username,
    avatarUrl: input.avatarUrl,
    passwordHash: null,
    session: {
      tokenHash: input.tokenHash,
      userAgent: null,
      ttlSeconds: DEFAULT_SESSION_TTL_SECONDS,
      openedBy: "sign-up",
    },
  });
  return user;
}

/** The user owning a live session with this token hash. */
export async function findUserByTokenHash(
  sql: Sql,
  tokenHash: string,
): Promise<User | undefined> {
  const [user] = await sql<[User?]>`
    select u.id, u.username, u.avatar_url, u.password_hash is not null as has_password,
      u.created_at
    from tokens t join users u on u.id = t.user_id
    where t.hash = ${tokenHash} and t.expires_at > now() and t.revoked_at is null
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
    returning id, username, avatar_url, password_hash is not null as has_password, created_at
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

/** One subscriber's claim to a room, as checked by `checkClaims`. */
export interface AccessClaim {
  roomId: string;
  userId: string;
  tokenHash: string;
}

/** What `checkClaims` found for one claim. */
export interface ClaimState {
  /** False when the session ended (revoked, expired, or the account deleted). */
  session: boolean;
  /** False when the user is no longer a member of the room. */
  member: boolean;
  /** When the session expires, in ms since the epoch (0 when it ended). */
  expiresAt: number;
}

/** Reads each claim's session and membership in one query; results in the order of `claims`. */
export async function checkClaims(sql: Sql, claims: readonly AccessClaim[]): Promise<ClaimState[]> {
  if (claims.length === 0) return [];
  // Claims travel as JSON: the pool does not fetch array types (db/mod.ts), so sql.array is out.
  // Lookups by key per claim (`offset 0`): the planner assumes 100 rows from jsonb_to_recordset.
  const items = claims.map((c, ord) => ({
    ord,
    room_id: c.roomId,
    user_id: c.userId,
    token_hash: c.tokenHash,
  }));
  const rows = await sql<{ session: boolean; member: boolean; expiresAt: number | null }[]>`
    select
      s.expires_at is not null as session,
      exists (
        select 1 from room_members m where m.room_id = c.room_id and m.user_id = c.user_id
      ) as member,
      (extract(epoch from s.expires_at) * 1000)::float8 as expires_at
    from jsonb_to_recordset(${
    sql.json(items)
  }) as c(ord int, room_id uuid, user_id uuid, token_hash text)
    left join lateral (
      select t.expires_at from tokens t
      where t.hash = c.token_hash and t.expires_at > now() and t.revoked_at is null
      offset 0
    ) s on true
    order by c.ord
  `;
  return rows.map((row) => ({
    session: row.session,
    member: row.member,
    expiresAt: row.expiresAt ?? 0,
  }));
}
