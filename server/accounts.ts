/**
 * How an account is reached from a device: sessions opened by sign-up, sign-in with a password
 * or the identity provider's token, and the password checks that guard changes to an account.
 * The routers check input and rates, then hand over here.
 */
import { TRPCError } from "@trpc/server";
import {
  clearSignInFailures,
  findCredentials,
  findUserByIdentity,
  forgetSignInAttempt,
  recordSignInAttempt,
} from "../db/accounts.ts";
import { postgres, type Sql } from "../db/mod.ts";
import { createSession, readProof, type SessionOrigin } from "../db/sessions.ts";
import { createAccount, getUser, type User } from "../db/users.ts";
import { hashToken, newToken } from "./auth.ts";
import { sessionEnded, signInFailed, signInLocked } from "./errors.ts";
import type { IdClaims } from "./id_token.ts";
import type { Hub } from "./realtime/hub.ts";
import { SIGN_IN_LOCKOUT } from "./limits.ts";
import { verifyPassword } from "./password.ts";
import { imageUrl, username as usernameSchema } from "./schemas.ts";
import { isReservedUsername, usernameKeys } from "./username_key.ts";

/** A session just opened: the user, the bearer token (shown once) and when it expires. */
export interface OpenedSession {
  user: User;
  token: string;
  expiresAt: Date;
}

/**
 * Where a session is opened: the pool, its lifetime, the device's user agent, the hub that
 * ends the subscriptions of sessions dropped to make room, and the call's deadline (a password
 * check still waiting for a hash slot when it aborts is dropped).
 */
export interface SessionPlace {
  sql: Sql;
  ttlSeconds: number;
  userAgent: string | null;
  hub: Hub;
  signal?: AbortSignal;
}

/**
 * A new token and the session it opens for `user`. Sessions dropped past the per-user cap end
 * like a sign-out, on every instance.
 */
async function openSession(
  place: SessionPlace,
  user: User,
  openedBy: SessionOrigin,
): Promise<OpenedSession> {
  const token = newToken();
  const { expiresAt, dropped } = await createSession(place.sql, {
    userId: user.id,
    tokenHash: hashToken(token),
    userAgent: place.userAgent,
    ttlSeconds: place.ttlSeconds,
    openedBy,
  });
  for (const tokenHash of dropped) await place.hub.announceLogout(tokenHash);
  return { user, token, expiresAt };
}

/**
 * Creates an account and its first session; with a password hash, a full account, else a
 * guest one; with an identity, one the identity provider vouched for (`auth.exchange`).
 * @throws `CONFLICT` (through the unique index) when the name is taken; a unique violation on
 * `identities_pkey` when the identity already has an account.
 */
export async function signUp(
  place: SessionPlace,
  input: {
    username: string;
    avatarUrl: string | null;
    passwordHash: string | null;
    identity?: { issuer: string; subject: string };
  },
): Promise<OpenedSession> {
  const token = newToken();
  const { user, expiresAt } = await createAccount(place.sql, {
    ...input,
    session: {
      tokenHash: hashToken(token),
      userAgent: place.userAgent,
      ttlSeconds: place.ttlSeconds,
      openedBy: input.identity ? "identity-provider" : "sign-up",
    },
  });
  return { user, token, expiresAt };
}

/**
 * Counts an attempt at a password and checks it: `SIGN_IN_LOCKOUT` applies to `lockKey` (a
 * username's key, or `user:<id>` for a signed-in user's current password) on every instance,
 * and a success clears its failures. An attempt whose hash never ran (the queue was full, the
 * call's deadline passed) is taken back. An unknown user or a guest account is checked against
 * a dummy hash, so every failure takes about as long.
 * @throws `TOO_MANY_REQUESTS` (`signInLocked`) after too many failures lately;
 * `SERVICE_UNAVAILABLE` when too many password checks wait.
 */
async function checkPassword(
  sql: Sql,
  lockKey: string,
  password: string,
  stored: string | null,
  signal?: AbortSignal,
): Promise<boolean> {
  const { attempts, windowLeftMs } = await recordSignInAttempt(
    sql,
    lockKey,
    SIGN_IN_LOCKOUT.windowSeconds,
  );
  if (attempts > SIGN_IN_LOCKOUT.maxFailures) throw signInLocked(windowLeftMs);
  let ok: boolean;
  try {
    ok = await verifyPassword(password, stored, signal);
  } catch (error) {
    await forgetSignInAttempt(sql, lockKey);
    throw error;
  }
  if (ok) await clearSignInFailures(sql, lockKey);
  return ok;
}

/**
 * Signs in with a username (any case or form of it) and a password, opening a new session.
 * @throws `UNAUTHORIZED` (`signInFailed`) for an unknown username, a guest account or a wrong
 * password alike; `TOO_MANY_REQUESTS` after too many failures for the username.
 */
export async function signIn(
  place: SessionPlace,
  input: { username: string; password: string },
): Promise<OpenedSession> {
  const key = usernameKeys(input.username).key;
  const credentials = await findCredentials(place.sql, key);
  const ok = await checkPassword(
    place.sql,
    key,
    input.password,
    credentials?.passwordHash ?? null,
    place.signal,
  );
  const user = ok && credentials ? await getUser(place.sql, credentials.userId) : undefined;
  if (!user) throw signInFailed();
  return await openSession(place, user, "password");
}

/** How recent a sign-in through the identity provider must be to stand in for a password, in s. */
export const RECENT_PROOF_SECONDS = 600;

/**
 * Checks that the caller may change an account's credentials (set a password, delete it):
 * - an account with a password: the current password (`given`), counted toward a lockout on
 *   the user's id (renaming does not reset it);
 * - an account from the identity provider: also a session opened through it (`auth.exchange`)
 *   within `RECENT_PROOF_SECONDS`, which stands in for the password; without a password, that
 *   is the only proof, so a stolen older session cannot set one;
 * - a guest account: nothing more, its sessions are its only credential.
 * @throws `BAD_REQUEST` when a password is needed and none was given; `FORBIDDEN` when it is
 * wrong or a recent sign-in through the provider is needed (not `UNAUTHORIZED`: the session
 * itself is fine); `TOO_MANY_REQUESTS` after too many failures; `UNAUTHORIZED` when the session
 * ended meanwhile.
 */
export async function requireProof(
  sql: Sql,
  caller: { user: User; tokenHash: string; signal?: AbortSignal },
  given: string | undefined,
  field: string,
): Promise<void> {
  const proof = await readProof(sql, caller.user.id, caller.tokenHash);
  if (!proof) throw sessionEnded();
  const vouched = proof.hasIdentity && proof.openedBy === "identity-provider" &&
    proof.openedSecondsAgo <= RECENT_PROOF_SECONDS;
  if (vouched) return;
  if (proof.passwordHash !== null) {
    if (given === undefined) {
      throw new TRPCError({
        code: "BAD_REQUEST",
        message: `${field} is required: this account has a password`,
      });
    }
    const lockKey = `user:${caller.user.id}`;
    if (!(await checkPassword(sql, lockKey, given, proof.passwordHash, caller.signal))) {
      throw new TRPCError({ code: "FORBIDDEN", message: `${field} is wrong` });
    }
    return;
  }
  if (proof.hasIdentity) {
    throw new TRPCError({
      code: "FORBIDDEN",
      message: "This account signs in through your identity provider: sign in with it again " +
        `(auth.exchange), then retry within ${RECENT_PROOF_SECONDS / 60} minutes`,
    });
  }
}

/** Longest a name derived from the identity provider's claims is before a suffix, in characters. */
const DERIVED_NAME_LENGTH = 24;

/** Names tried with a number after them before a random suffix is used. */
const NUMBERED_TRIES = 8;

/**
 * The session of the user an identity provider's verified claims belong to, found by (issuer,
 * subject) and created on first sight: its name from `preferred_username` or `name`, made to
 * fit the username rules and unique (a number appended when taken), its avatar from `picture`
 * when that is an allowed image URL.
 */
export async function exchange(place: SessionPlace, claims: IdClaims): Promise<OpenedSession> {
  const identity = { issuer: claims.issuer, subject: claims.subject };
  const known = await findUserByIdentity(place.sql, identity.issuer, identity.subject);
  if (known) return await openSession(place, known, "identity-provider");
  const avatar = imageUrl.safeParse(claims.picture);
  const avatarUrl = avatar.success ? avatar.data : null;
  const base = derivedName(claims.name);
  for (let attempt = 0;; attempt++) {
    const username = attempt === 0
      ? base
      : attempt <= NUMBERED_TRIES
      ? `${base}${attempt + 1}`
      : `${base}-${crypto.randomUUID().slice(0, 6)}`;
    try {
      return await signUp(place, { username, avatarUrl, passwordHash: null, identity });
    } catch (error) {
      if (!(error instanceof postgres.PostgresError) || error.code !== "23505") throw error;
      if (error.constraint_name === "identities_pkey") {
        // The same person signed in on another device at the same moment: theirs won.
        const user = await findUserByIdentity(place.sql, identity.issuer, identity.subject);
        if (user) return await openSession(place, user, "identity-provider");
      }
      if (attempt > NUMBERED_TRIES + 4) throw error;
    }
  }
}

/**
 * A username from a claim: characters the rules refuse dropped, spaces collapsed, cut to
 * `DERIVED_NAME_LENGTH`; "user" when nothing usable is left.
 */
function derivedName(claim: string | null): string {
  const cleaned = (claim ?? "")
    .normalize("NFC")
    .replace(/\s+/gu, " ")
    .replace(/[^\p{L}\p{M}\p{N}_.\- ]/gu, "")
    .replace(/ +/g, " ")
    .replace(/^[^\p{L}\p{N}]+/u, "")
    .trim();
  const cut = [...cleaned].slice(0, DERIVED_NAME_LENGTH).join("").trim();
  const parsed = usernameSchema.safeParse(cut);
  return parsed.success && !isReservedUsername(parsed.data) ? parsed.data : "user";
}
