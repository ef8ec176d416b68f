/**
 * Sessions: every token is one (one per device), stored in `tokens` by the SHA-256 of the token
 * only. A session expires `expires_at`; use extends it (see server/sessions.ts), revocation
 * deletes it. Valid means: the row exists and `expires_at` is in the future.
 */
import type { Queryable, Sql } from "./mod.ts";

/** A session as `auth.sessions` lists it. */
export interface Session {
  /** The session's id (never the token nor its hash). */
  id: string;
  createdAt: Date;
  /** When it was last used, to within the touch interval of server/sessions.ts. */
  lastUsedAt: Date;
  expiresAt: Date;
  /** True for the session of the token that asked. */
  current: boolean;
  /** The `User-Agent` of the request that opened it (at most 256 characters), or null. */
  userAgent: string | null;
}

/** The default session lifetime, in seconds (`SESSION_TTL`): 30 days. */
export const DEFAULT_SESSION_TTL_SECONDS = 2_592_000;

/** Most sessions one user holds; opening one more ends the least recently used. */
export const MAX_SESSIONS_PER_USER = 100;

/** How a session was opened: the proof of identity it rests on. */
export type SessionOrigin = "sign-up" | "password" | "identity-provider";

/** What opens a session. */
export interface NewSession {
  userId: string;
  tokenHash: string;
  userAgent: string | null;
  openedBy: SessionOrigin;
  /** Lifetime in seconds (`SESSION_TTL`). */
  ttlSeconds: number;
}

/** A session just opened: its expiry, and the sessions dropped to make room. */
export interface CreatedSession {
  expiresAt: Date;
  /**
   * Token hashes of the user's live sessions dropped past `MAX_SESSIONS_PER_USER` (their
   * subscriptions must end: see `Hub.announceLogout`).
   */
  dropped: string[];
}

/**
 * Opens a session in `sql` (a pool, or a transaction whose user row is written); drops the
 * user's expired sessions and, past `MAX_SESSIONS_PER_USER`, the least recently used.
 */
export async function createSession(
  sql: Queryable,
  session: NewSession,
): Promise<CreatedSession> {
  const [row] = await sql<[{ expiresAt: Date; dropped: string[] }]>`
    with created as (
      insert into tokens (hash, user_id, user_agent, opened_by, expires_at)
      values (
        ${session.tokenHash}, ${session.userId}, ${session.userAgent}, ${session.openedBy},
        now() + make_interval(secs => ${session.ttlSeconds})
      )
      returning expires_at
    ),
    pruned as (
      delete from tokens where hash in (
        select hash from tokens
        where user_id = ${session.userId}
        order by expires_at > now() desc, last_used_at desc
        offset ${MAX_SESSIONS_PER_USER - 1}
      ) or (user_id = ${session.userId} and expires_at <= now())
      returning hash, expires_at > now() as live
    )
    select
      (select expires_at from created) as expires_at,
      coalesce((select json_agg(hash) from pruned where live), '[]'::json) as dropped
  `;
  return row;
}

/** The user's live sessions, most recently used first; `current` marks `currentHash`'s. */
export async function listSessions(
  sql: Sql,
  userId: string,
  currentHash: string,
): Promise<Session[]> {
  return await sql<Session[]>`
    select id, created_at, last_used_at, expires_at, hash = ${currentHash} as current, user_agent
    from tokens
    where user_id = ${userId} and expires_at > now() and revoked_at is null
    order by last_used_at desc, created_at desc
  `;
}

/** Ends one of the user's sessions; returns its token hash, or undefined when it is not theirs. */
export async function revokeSession(
  sql: Sql,
  userId: string,
  sessionId: string,
): Promise<string | undefined> {
  const [row] = await sql<[{ hash: string }?]>`
    delete from tokens where id = ${sessionId} and user_id = ${userId} returning hash
  `;
  return row?.hash;
}

/** Ends the session of a token; true when it was live. */
export async function revokeToken(sql: Sql, tokenHash: string): Promise<boolean> {
  const rows = await sql`
    delete from tokens where hash = ${tokenHash} returning expires_at > now() as live
  `;
  return rows.length > 0 && rows[0].live === true;
}

/** Ends every session of the user but the one of `keepHash`; returns the ended ones' hashes. */
export async function revokeOtherSessions(
  sql: Sql,
  userId: string,
  keepHash: string,
): Promise<string[]> {
  const rows = await sql<{ hash: string }[]>`
    delete from tokens where user_id = ${userId} and hash <> ${keepHash} returning hash
  `;
  return rows.map((row) => row.hash);
}

/** What proves the caller may change an account's credentials (see server/accounts.ts). */
export interface Proof {
  /** The account's password hash, null for none. */
  passwordHash: string | null;
  /** True when the account came through the identity provider. */
  hasIdentity: boolean;
  /** How the calling session was opened (null for sessions from before migration 00004). */
  openedBy: SessionOrigin | null;
  /** How long ago the calling session was opened, in seconds. */
  openedSecondsAgo: number;
}

/** The proof state of the user and the calling session, or undefined when either is gone. */
export async function readProof(
  sql: Sql,
  userId: string,
  tokenHash: string,
): Promise<Proof | undefined> {
  const [row] = await sql<[Proof?]>`
    select u.password_hash,
      exists (select 1 from identities i where i.user_id = u.id) as has_identity,
      t.opened_by,
      extract(epoch from now() - t.created_at)::float8 as opened_seconds_ago
    from users u join tokens t on t.user_id = u.id
    where u.id = ${userId} and t.hash = ${tokenHash}
  `;
  return row;
}

/** One use of a session: its token hash and when, in ms since the epoch. */
export interface SessionUse {
  tokenHash: string;
  at: number;
}

/**
 * Extends sessions that were live when used: `last_used_at` becomes the time of use and
 * `expires_at` that time plus `ttlSeconds`, never earlier than they were. One statement for
 * all uses.
 */
export async function touchSessions(
  sql: Sql,
  uses: readonly SessionUse[],
  ttlSeconds: number,
): Promise<void> {
  if (uses.length === 0) return;
  // Uses travel as JSON (the pool does not fetch array types, see db/mod.ts); one lookup by
  // key per use: the planner assumes 100 rows from jsonb_to_recordset.
  const items = uses.map((use) => ({ hash: use.tokenHash, at: use.at / 1000 }));
  await sql`
    update tokens t set
      last_used_at = greatest(t.last_used_at, to_timestamp(u.at)),
      expires_at = greatest(t.expires_at, to_timestamp(u.at) + make_interval(secs => ${ttlSeconds}))
    from jsonb_to_recordset(${sql.json(items)}) as u(hash text, at float8)
    where t.hash = u.hash and t.expires_at > to_timestamp(u.at)
  `;
}
