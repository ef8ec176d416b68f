/**
 * Queries on what makes an account reachable from another device: its password, its identity
 * at the front end's identity provider, failed sign-ins, and its deletion.
 */
import { appendEvent, type NumberedEvent } from "./events.ts";
import type { Sql } from "./mod.ts";
import type { Member } from "./rooms.ts";
import type { User } from "./users.ts";

/** A user found by a sign-in name: their id and password hash (null for a guest account). */
export interface Credentials {
  userId: string;
  passwordHash: string | null;
}

/** The user whose name has this `username_key` (server/username_key.ts), with their password. */
export async function findCredentials(
  sql: Sql,
  usernameKey: string,
): Promise<Credentials | undefined> {
  const [row] = await sql<[Credentials?]>`
    select id as user_id, password_hash from users where username_key = ${usernameKey}
  `;
  return row;
}

/** Sets the user's password hash; false when there is no such user. */
export async function setPasswordHash(sql: Sql, userId: string, hash: string): Promise<boolean> {
  const rows = await sql`update users set password_hash = ${hash} where id = ${userId} returning 1`;
  return rows.length > 0;
}

/** What `recordSignInAttempt` found. */
export interface SignInAttempts {
  /** Attempts in the current window, this one included. */
  attempts: number;
  /** Until the window passes, in ms. */
  windowLeftMs: number;
}

/**
 * Counts a sign-in attempt for a username before its password is checked, in one statement,
 * so that attempts running at once on any instance are all counted: a window starts at the
 * first attempt after the last one passed. A successful attempt then clears the count
 * (`clearSignInFailures`), so what remains counts failures. Windows that have passed, for any
 * username, are dropped now and then, so the table holds only usernames tried lately.
 */
export async function recordSignInAttempt(
  sql: Sql,
  usernameKey: string,
  windowSeconds: number,
): Promise<SignInAttempts> {
  const window = sql`make_interval(secs => ${windowSeconds})`;
  const [row] = await sql<[{ failures: number; windowLeftMs: number }]>`
    insert into sign_in_failures as f (username_key, failures, window_started_at)
    values (${usernameKey}, 1, now())
    on conflict (username_key) do update set
      failures = case when f.window_started_at + ${window} > now() then f.failures + 1 else 1 end,
      window_started_at = case
        when f.window_started_at + ${window} > now() then f.window_started_at else now() end
    returning failures,
      ceil(extract(epoch from window_started_at + ${window} - now()) * 1000)::float8
        as window_left_ms
  `;
  if (Math.random() < 0.01) {
    await sql`delete from sign_in_failures where window_started_at + ${window} <= now()`;
  }
  return { attempts: row.failures, windowLeftMs: Math.max(1, row.windowLeftMs) };
}

/** Takes back one counted attempt whose password was never checked (busy, cancelled). */
export async function forgetSignInAttempt(sql: Sql, usernameKey: string): Promise<void> {
  await sql`
    update sign_in_failures set failures = greatest(failures - 1, 0)
    where username_key = ${usernameKey}
  `;
}

/** Forgets a username's failed sign-ins (after a successful one). */
export async function clearSignInFailures(sql: Sql, usernameKey: string): Promise<void> {
  await sql`delete from sign_in_failures where username_key = ${usernameKey}`;
}

/** The user an identity provider's (issuer, subject) belongs to. */
export async function findUserByIdentity(
  sql: Sql,
  issuer: string,
  subject: string,
): Promise<User | undefined> {
  const [user] = await sql<[User?]>`
    select u.id, u.username, u.avatar_url, u.password_hash is not null as has_password,
      u.created_at
    from identities i join users u on u.id = i.user_id
    where i.issuer = ${issuer} and i.subject = ${subject}
  `;
  return user;
}

/** The name a deleted account's messages show in place of the person's. */
export const DELETED_USERNAME = "Deleted user";

/**
 * Deletes an account in one transaction: its messages stay in their rooms' history with
 * `userId` null, the name `DELETED_USERNAME` and no avatar; its sessions, memberships and
 * identities go; rooms it created stay without a creator; its username is free again.
 * Each room stores what its members see go: a `reaction.changed` for each of the account's
 * reactions and a `member.left` for each membership (db/events.ts). Returns the token hashes of
 * the sessions that ended and those events by room (to hand to the hub after commit), or
 * undefined when there was no such user.
 *
 * Locks in a send's order (room rows in id order, then the user row its foreign key shares;
 * joins, leaves and reactions lock their room first too), so none of them deadlocks with it;
 * with the user row locked no send can commit a message between the rewrite of the messages
 * and the deletion (it fails on the foreign key instead, as unauthenticated).
 */
export async function deleteUser(
  sql: Sql,
  userId: string,
): Promise<{ sessions: string[]; events: [string, NumberedEvent][] } | undefined> {
  return await sql.begin(async (sql) => {
    await sql`
      select id from rooms
      where created_by = ${userId}
        or id in (select room_id from room_members where user_id = ${userId})
        or id in (
          select m.room_id from message_reactions r join messages m on m.id = r.message_id
          where r.user_id = ${userId}
        )
      order by id
      for no key update
    `;
    const found = await sql`select id from users where id = ${userId} for update`;
    if (found.length === 0) return undefined;
    const events: [string, NumberedEvent][] = [];
    // Reactions first (a reaction of a member who left stays until now), then memberships.
    const reactions = await sql<
      { roomId: string; messageId: string; emoji: string; count: number }[]
    >`
      delete from message_reactions r using messages m
      where r.user_id = ${userId} and m.id = r.message_id
      returning m.room_id, r.message_id, r.emoji, (
        select count(*)::int - 1 from message_reactions o
        where o.message_id = r.message_id and o.emoji = r.emoji
      ) as count
    `;
    for (const { roomId, messageId, emoji, count } of reactions.toSorted(byRoom)) {
      const value = { messageId, emoji, userId, added: false, count };
      const eventId = await appendEvent(sql, roomId, "reaction.changed", {
        messageId,
        userId,
        payload: { emoji, added: false, count },
      });
      events.push([roomId, { eventId, event: { type: "reaction.changed", ...value } }]);
    }
    const memberships = await sql<Member[]>`
      select m.room_id, m.user_id, u.username, u.avatar_url, m.joined_at
      from room_members m join users u on u.id = m.user_id
      where m.user_id = ${userId}
      order by m.room_id
    `;
    await sql`delete from room_members where user_id = ${userId}`;
    for (const member of memberships) {
      const eventId = await appendEvent(sql, member.roomId, "member.left", {
        userId,
        payload: { joinedAt: member.joinedAt },
      });
      events.push([member.roomId, { eventId, event: { type: "member.left", ...member } }]);
    }
    await sql`
      update messages set user_id = null, username = ${DELETED_USERNAME}, avatar_url = null
      where user_id = ${userId}
    `;
    const sessions = await sql<{ hash: string }[]>`
      delete from tokens where user_id = ${userId} returning hash
    `;
    await sql`delete from users where id = ${userId}`;
    return { sessions: sessions.map((session) => session.hash), events };
  });
}

/** Orders rows by room id (the order rooms are locked in). */
function byRoom(a: { roomId: string }, b: { roomId: string }): number {
  return a.roomId < b.roomId ? -1 : a.roomId > b.roomId ? 1 : 0;
}
