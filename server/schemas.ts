/** Input rules shared by the routers: every value is checked here before any query runs. */
import { z } from "zod";

/** Characters never accepted in names: C0/C1 controls, zero-width and bidi controls. */
const INVISIBLE = /[\p{Cc}\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]/u;

/** Characters refused in message content: controls other than tab and newline. */
const CONTENT_CONTROL = /[^\P{Cc}\t\n]/u;

const USERNAME_SHAPE = /^[\p{L}\p{M}\p{N}_.-]+( [\p{L}\p{M}\p{N}_.-]+)*$/u;

function length(text: string): number {
  return [...text].length;
}

/** A UUID, as every id in the API is. */
export const id = z.uuid({ error: "Must be a UUID" });

/** A username: trimmed, NFC, 1..32 letters, digits, `_ . -` and single inner spaces. */
export const username = z.string()
  .transform((s) => s.trim().normalize("NFC"))
  .refine(
    (s) => length(s) >= 1 && length(s) <= 32,
    "Username must be 1 to 32 characters",
  )
  .refine(
    (s) => !INVISIBLE.test(s),
    "Username must not contain control, zero-width or bidi characters",
  )
  .refine(
    (s) => USERNAME_SHAPE.test(s),
    "Username may hold only letters, digits, _ . - and single spaces between them",
  );

/**
 * An image URL (avatar, thumbnail): null, or an absolute https URL of at most 2048
 * characters; http only for localhost and 127.0.0.1.
 */
export const imageUrl = z.string().nullable().refine(
  (s) => s === null || isImageUrl(s),
  "Must be an absolute https:// URL of at most 2048 characters (http:// only for localhost)",
);

function isImageUrl(text: string): boolean {
  if (
    text.length > 2048 || !/^https?:\/\/[^/\s]/i.test(text) ||
    /[\s\p{Cc}]/u.test(text)
  ) {
    return false;
  }
  if (!URL.canParse(text)) return false;
  const url = new URL(text);
  if (url.username !== "" || url.password !== "") return false;
  if (url.protocol === "https:") return true;
  return url.protocol === "http:" &&
    (url.hostname === "localhost" || url.hostname === "127.0.0.1");
}

/** A room name: trimmed, 1..80 characters, no control characters. */
export const roomName = z.string()
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
export const content = z.string()
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
