/**
 * Input rules shared by the routers: every value is checked here before any query runs. Text
 * is stored as sent (trimmed where a rule says so) or refused, never altered otherwise.
 */
import { z } from "zod";

/**
 * Characters never accepted in usernames: C0/C1 controls and every Default_Ignorable_Code_Point
 * (zero-width and bidi controls, fillers such as U+3164, variation selectors, tags), which
 * render as nothing and would let two names that look the same differ.
 */
const INVISIBLE = /[\p{Cc}\p{Default_Ignorable_Code_Point}]/u;

/** Characters refused in message content: controls other than tab and newline. */
const CONTENT_CONTROL = /[^\P{Cc}\t\n]/u;

const USERNAME_SHAPE = /^[\p{L}\p{M}\p{N}_.-]+( [\p{L}\p{M}\p{N}_.-]+)*$/u;

/** A username's first character: a letter or a digit, never a mark, `_ . -` or a space. */
const USERNAME_START = /^[\p{L}\p{N}]/u;

/** A combining mark that is not on a letter, a digit or another such mark. */
const LOOSE_MARK = /[^\p{L}\p{M}\p{N}]\p{M}/u;

function length(value: string): number {
  return [...value].length;
}

/**
 * Every text input: a string that is well-formed Unicode, i.e. holds no lone surrogate
 * (`String.prototype.isWellFormed`), since UTF-8 (Postgres, JSON to other users) cannot carry
 * one and it would come back as U+FFFD. Refused, never repaired. Every text field below builds
 * on it, and no other schema here starts from a bare string.
 */
export const text = z.string().refine((s) => s.isWellFormed(), {
  error: "Text must be well-formed Unicode: it has an unpaired surrogate",
  abort: true,
});

/**
 * A UUID, as every id in the API is (hex digits and dashes only, so always well-formed),
 * lower-cased: ids are compared as strings (the hub, the room gate, leave announcements), so one
 * room must have one spelling; Postgres compares uuids case-insensitively either way.
 */
export const id = z.uuid({ error: "Must be a UUID" }).transform((s) => s.toLowerCase());

/**
 * A username: trimmed, otherwise stored as sent (no normalisation), 1..32 letters, marks,
 * digits, `_ . -` and single inner spaces, nothing invisible. It starts with a letter or a digit
 * and has combining marks only on a letter or a digit, so that no name is only marks or
 * punctuation ("\u0301", "\u20DD", ".", "-") or renders a mark on nothing. Uniqueness is by the
 * keys of server/username_key.ts, which db/users.ts stores beside it.
 */
export const username = text
  .transform((s) => s.trim())
  .refine(
    (s) => length(s) >= 1 && length(s) <= 32,
    "Username must be 1 to 32 characters",
  )
  .refine(
    (s) => !INVISIBLE.test(s),
    "Username must not contain control or invisible characters (zero-width, bidi, fillers)",
  )
  .refine(
    (s) => USERNAME_SHAPE.test(s),
    "Username may hold only letters, digits, _ . - and single spaces between them",
  )
  .refine(
    (s) => s === "" || USERNAME_START.test(s),
    "Username must start with a letter or a digit (not a combining mark, _ . or -)",
  )
  .refine(
    (s) => !LOOSE_MARK.test(s),
    "Username may have combining marks (accents) only on a letter or a digit",
  );

/**
 * An image URL (avatar, thumbnail): null, or an absolute https URL of at most 2048
 * characters; http only for localhost and 127.0.0.1.
 */
export const imageUrl = text.nullable().refine(
  (s) => s === null || isImageUrl(s),
  "Must be an absolute https:// URL of at most 2048 characters (http:// only for localhost)",
);

function isImageUrl(value: string): boolean {
  if (
    value.length > 2048 || !/^https?:\/\/[^/\s]/i.test(value) ||
    /[\s\p{Cc}]/u.test(value)
  ) {
    return false;
  }
  if (!URL.canParse(value)) return false;
  const url = new URL(value);
  if (url.username !== "" || url.password !== "") return false;
  if (url.protocol === "https:") return true;
  return url.protocol === "http:" &&
    (url.hostname === "localhost" || url.hostname === "127.0.0.1");
}

/**
 * A password: 8 to 256 characters (code points) after NFKC normalisation, any Unicode, no
 * composition rules and no trimming, as NIST SP 800-63B §5.1.1.2 recommends. The value given
 * on is the normalised one (see server/password.ts). Never logged: errors name the rule only.
 */
export const password = text
  .transform((s) => s.normalize("NFKC"))
  .refine(
    (s) => length(s) >= 8 && length(s) <= 256,
    "Password must be 8 to 256 characters",
  );

/**
 * A password given to be checked (sign-in, current password): any text of 1 to 1024
 * characters, NFKC-normalised. Creation rules are not applied: a wrong guess is
 * `UNAUTHORIZED` like any other, never a hint about the rules.
 */
export const passwordAttempt = text
  .transform((s) => s.normalize("NFKC"))
  .refine(
    (s) => s.length >= 1 && length(s) <= 1024,
    "Password must be 1 to 1024 characters",
  );

/**
 * A username given to sign in: any text of 1 to 64 characters, trimmed. A name the rules of
 * `username` would refuse cannot exist, and gets the same `UNAUTHORIZED` as any unknown one.
 */
export const signInName = text
  .transform((s) => s.trim())
  .refine((s) => s.length >= 1 && length(s) <= 64, "Username must be 1 to 64 characters");

/** One fully-qualified emoji from Unicode's RGI set (UTS #51), by the language's `v` flag. */
// Built at run time: the client's .d.ts build (scripts/build_client.ts) targets an ES version
// whose TypeScript refuses the literal's `v` flag.
const RGI_EMOJI = new RegExp("^\\p{RGI_Emoji}$", "v");

/**
 * A reaction: one emoji grapheme of Unicode's recommended set (RGI, UTS #51), e.g. 👍, ❤️, 👨‍👩‍👧
 * or 🇫🇷, checked with the `\p{RGI_Emoji}` property of string (ES2024) rather than a hand list.
 * An emoji sent without its variation selector ("❤") is taken as its fully-qualified form
 * ("❤️"), so both count as one reaction.
 */
export const emoji = text
  .refine((s) => s.length <= 64, "Must be one emoji")
  .transform((s) => RGI_EMOJI.test(s) || !RGI_EMOJI.test(s + "\uFE0F") ? s : s + "\uFE0F")
  .refine(
    (s) => RGI_EMOJI.test(s),
    "Must be one emoji (a single emoji of Unicode's RGI set, e.g. 👍)",
  );

/** A room name: trimmed, 1..80 characters, no control characters. */
export const roomName = text
  .transform((s) => s.trim())
  .refine(
    (s) => length(s) >= 1 && length(s) <= 80,
    "Room name must be 1 to 80 characters",
  )
  .refine(
    (s) => !/[\p{Cc}\u202A-\u202E\u2066-\u2069]/u.test(s),
    "Room name must not contain control characters",
  );

/** Message text: 1..4000 characters after trimming; no controls but newline and tab. */
export const content = text
  .transform((s) => s.trim())
  .refine(
    (s) => length(s) >= 1 && length(s) <= 4000,
    "Message must be 1 to 4000 characters after trimming",
  )
  .refine(
    (s) => !CONTENT_CONTROL.test(s),
    "Message must not contain control characters other than newline and tab",
  );

/** A page size: 1..100, default 50. */
export const limit = z.number().int().min(1).max(100).default(50);

/** A message sequence number used as a bound. */
export const seq = z.number().int().min(0).max(2_147_483_647);
