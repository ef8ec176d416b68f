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
  getPasswordHash,
  recordSignInAttempt,
} from "../db/accounts.ts";
import { postgres, type Sql } from "../db/mod.ts";
import { createSession } from "../db/sessions.ts";
import { createAccount, getUser, type User } from "../db/users.ts";
import { hashToken, newToken } from "./auth.ts";
import { signInFailed, signInLocked } from "./errors.ts";
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
 * Where a session is opened: the pool, its lifetime, the device's user agent, and the hub that
 * ends the subscriptions of sessions dropped to make room.
 */
export interface SessionPlace {
  sql: Sql;
  ttlSeconds: number;
  userAgent: string | null;
  hub: Hub;
}

/**
 * A new token and the session it opens for `user`. Sessions dropped past the per-user cap end
 * like a sign-out, on every instance.
 */
async function openSession(place: SessionPlace, user: User): Promise<OpenedSession> {
  const token = newToken();
  const { expiresAt, dropped } = await createSession(place.sql, {
    userId: user.id,
    tokenHash: hashToken(token),
    userAgent: place.userAgent,
    ttlSeconds: place.ttlSeconds,
  });
  for (const tokenHash of dropped) await place.hub.announceLogout(tokenHash);
  return { user, token, expiresAt };
}

/**
 * Creates an account and its first session; with a password hash, a full account, else a
 * guest one.
 * @throws `CONFLICT` (through the unique index) when the name is taken.
 */
export async function signUp(
  place: SessionPlace,
  input: { username: string; avatarUrl: string | null; passwordHash: string | null },
): Promise<OpenedSession> {
  const token = newToken();
  const { user, expiresAt } = await createAccount(place.sql, {
    ...input,
    session: {
      tokenHash: hashToken(token),
      userAgent: place.userAgent,
      ttlSeconds: place.ttlSeconds,
    },
  });
  return { user, token, expiresAt };
}

/**
 * Counts an attempt at a username's password and checks it: `SIGN_IN_LOCKOUT` applies to the
 * username on every instance, and a success clears its failures. An unknown user or a guest
 * account is checked against a dummy hash, so every failure takes about as long.
 * @throws `TOO_MANY_REQUESTS` (`signInLocked`) when the username had too many failures lately.
 */
async function checkPassword(
  sql: Sql,
  usernameKey: string,
  password: string,
  stored: string | null,
): Promise<boolean> {
  const { attempts, windowLeftMs } = await recordSignInAttempt(
    sql,
    usernameKey,
    SIGN_IN_LOCKOUT.windowSeconds,
  );
  if (attempts > SIGN_IN_LOCKOUT.maxFailures) throw signInLocked(windowLeftMs);
  const ok = await verifyPassword(password, stored);
  if (ok) await clearSignInFailures(sql, usernameKey);
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
  const ok = await checkPassword(place.sql, key, input.password, credentials?.passwordHash ?? null);
  const user = ok && credentials ? await getUser(place.sql, credentials.userId) : undefined;
  if (!user) throw signInFailed();
  return await openSession(place, user);
}

/**
 * Checks the password a signed-in user gives to change their account (a new password, a
 * deletion); counts toward the username's lockout like a sign-in.
 * @throws `BAD_REQUEST` when the account has a password and none was given, `FORBIDDEN` when it
 * is wrong (not `UNAUTHORIZED`: the session itself is fine), `TOO_MANY_REQUESTS` after too many
 * failures.
 */
export async function requireCurrentPassword(
  sql: Sql,
  user: User,
  given: string | undefined,
  field: string,
): Promise<void> {
  const stored = await getPasswordHash(sql, user.id);
  if (stored === null || stored === undefined) return;
  if (given === undefined) {
    throw new TRPCError({
      code: "BAD_REQUEST",
      message: `${field} is required: this account has a password`,
    });
  }
  if (!(await checkPassword(sql, usernameKeys(user.username).key, given, stored))) {
    throw new TRPCError({ code: "FORBIDDEN", message: `${field} is wrong` });
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
  if (known) return await openSession(place, known);
  const avatar = imageUrl.safeParse(claims.picture);
  const avatarUrl = avatar.success ? avatar.data : null;
  const base = derivedName(claims.name);
  for (let attempt = 0;; attempt++) {
    const username = attempt === 0
      ? base
      : attempt <= NUMBERED_TRIES
      ? `${base}${attempt + 1}`
      : `${base}-${crypto.randomUUID().slice(0, 6)}`;
    const token = newToken();
    try {
      const { user, expiresAt } = await createAccount(place.sql, {
        username,
        avatarUrl,
        passwordHash: null,
        identity,
        session: {
          tokenHash: hashToken(token),
          userAgent: place.userAgent,
          ttlSeconds: place.ttlSeconds,
        },
      });
      return { user, token, expiresAt };
    } catch (error) {
      if (!(error instanceof postgres.PostgresError) || error.code !== "23505") throw error;
      if (error.constraint_name === "identities_pkey") {
        // The same person signed in on another device at the same moment: theirs won.
        const user = await findUserByIdentity(place.sql, identity.issuer, identity.subject);
        if (user) return await openSession(place, user);
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
    .replace(/[^\p{L}\p{M}\p{N}_.\- ]/gu, "")
    .replace(/\s+/g, " ")
    .replace(/^[^\p{L}\p{N}]+/u, "")
    .trim();
  const cut = [...cleaned].slice(0, DERIVED_NAME_LENGTH).join("").trim();
  const parsed = usernameSchema.safeParse(cut);
  return parsed.success && !isReservedUsername(parsed.data) ? parsed.data : "user";
}
