/**
 * Access checks, in one place for procedures, subscriptions and revalidation: whose live
 * session a token opens, whether a room exists, whether they are a member. Every check reads
 * Postgres (a sign-out, an expiry or a leave on another instance counts at once); the only
 * thing remembered is which user a token belongs to, which never changes (whether its session
 * is still live is always read).
 */
import { type AccessRequest, readRoomAccess, type RoomAccess } from "../db/access.ts";
import type { LiveMember } from "../db/events.ts";
import type { Sql } from "../db/mod.ts";
import { getMember, getMembership, type MemberKey } from "../db/rooms.ts";
import { checkClaims, findUserByTokenHash, type User } from "../db/users.ts";
import { Batcher } from "./batcher.ts";
import { databaseUnavailable, notMember, roomNotFound, unauthenticated } from "./errors.ts";
import type { Holder, HolderState } from "./realtime/hub.ts";
import type { SessionKeeper } from "./sessions.ts";

/** Most token-to-user pairs remembered (about 150 bytes each). */
const KNOWN_TOKENS_MAX = 100_000;

/** Token hash → user id, for the tokens seen lately: immutable facts, oldest dropped first. */
const knownTokens = new Map<string, string>();

function remember(tokenHash: string, userId: string): void {
  if (knownTokens.size >= KNOWN_TOKENS_MAX) {
    knownTokens.delete(knownTokens.keys().next().value!);
  }
  knownTokens.set(tokenHash, userId);
}

/**
 * The user whose live session the token whose SHA-256 is `tokenHash` opens, read now.
 * @throws `UNAUTHORIZED` (`unauthenticated`) when there is no token, or its session is
 * unknown, expired or ended.
 */
export async function authenticate(sql: Sql, tokenHash: string | null): Promise<User> {
  const user = tokenHash ? await findUserByTokenHash(sql, tokenHash) : undefined;
  if (!user || !tokenHash) throw unauthenticated();
  remember(tokenHash, user.id);
  return user;
}

/** The id of the user a token belongs to when it was seen before (valid or not now), else null. */
export function knownUserId(tokenHash: string): string | null {
  return knownTokens.get(tokenHash) ?? null;
}

/**
 * The id of the user a token belongs to, without a round trip when the token was seen
 * before: for counting a write against its user before the write itself checks the token.
 * @throws `UNAUTHORIZED` when the token is unknown or revoked (checked only on a first sight).
 */
export async function userIdOf(sql: Sql, tokenHash: string | null): Promise<string> {
  const known = tokenHash ? knownTokens.get(tokenHash) : undefined;
  return known ?? (await authenticate(sql, tokenHash)).id;
}

/**
 * Checks that `key.userId` is a member of `key.roomId`, in Postgres.
 * @throws `NOT_FOUND` (`roomNotFound`) for an unknown room, `FORBIDDEN` (`notMember`) for a
 * non-member.
 */
export async function requireMember(sql: Sql, key: MemberKey): Promise<void> {
  const membership = await getMembership(sql, key);
  if (!membership.roomExists) throw roomNotFound(key.roomId);
  if (!membership.isMember) throw notMember();
}

/**
 * `key.userId` as a member of `key.roomId`, with their current name and avatar, read now.
 * @throws `NOT_FOUND` (`roomNotFound`) for an unknown room, `FORBIDDEN` (`notMember`) for a
 * non-member.
 */
export async function memberOf(sql: Sql, key: MemberKey): Promise<LiveMember> {
  const member = await getMember(sql, key);
  if (member) return member;
  await requireMember(sql, key);
  throw notMember(); // they left between the two reads
}

/** Most access checks read in one statement. */
const MAX_ACCESS_BATCH = 500;

/** Most access checks waiting for the database; past it they fail at once (503, retry). */
const MAX_ACCESS_WAITING = 20_000;

/** One batcher of access checks per pool: a storm of subscribers costs a few round trips. */
const accessBatchers = new WeakMap<Sql, Batcher<AccessRequest, RoomAccess>>();

/**
 * Opens a room to a subscriber in one round trip (shared with the subscribers opening at the
 * same time): the token's session is live, the room exists and the token's user is a member.
 * Returns the user's id, when the session expires unless used (ms since the epoch), the room's
 * last seq and last event id, and the user as a member of the room (for presence).
 * @throws `UNAUTHORIZED`, `NOT_FOUND` or `FORBIDDEN` as `authenticate` and `requireMember`.
 */
export async function openRoom(
  sql: Sql,
  tokenHash: string | null,
  roomId: string,
): Promise<RoomOpening> {
  if (!tokenHash) throw unauthenticated();
  let batcher = accessBatchers.get(sql);
  if (!batcher) {
    batcher = new Batcher((requests) => readRoomAccess(sql, requests), {
      maxBatch: MAX_ACCESS_BATCH,
      maxWaiting: MAX_ACCESS_WAITING,
      whenFull: databaseUnavailable,
    });
    accessBatchers.set(sql, batcher);
  }
  const access = await batcher.load({ tokenHash, roomId });
  if (access.userId === null) throw unauthenticated();
  remember(tokenHash, access.userId);
  if (!access.roomExists) throw roomNotFound(roomId);
  if (!access.isMember) throw notMember();
  const member = {
    roomId,
    userId: access.userId,
    username: access.username!,
    avatarUrl: access.avatarUrl,
    joinedAt: access.joinedAt!,
  };
  const { userId, expiresAt, lastSeq, lastEventId } = access;
  return { userId, expiresAt, lastSeq, lastEventId, member };
}

/** What `openRoom` found: the subscriber's access and the room's positions. */
export interface RoomOpening {
  userId: string;
  /** When the session expires unless used, in ms since the epoch. */
  expiresAt: number;
  lastSeq: number;
  lastEventId: number;
  member: LiveMember;
}

/**
 * Revalidation: each holder's session and membership, read in one query after the uses
 * recorded so far are written (a session used lately is not found expired).
 */
export async function checkHolders(
  sql: Sql,
  sessions: SessionKeeper,
  holders: Holder[],
): Promise<HolderState[]> {
  await sessions.flush();
  return await checkClaims(sql, holders);
}
