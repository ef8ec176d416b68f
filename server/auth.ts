/** API tokens: random bearer strings whose SHA-256 hash is all Postgres keeps. */
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";

/** A new token: 32 random bytes, base64url without padding (43 characters). */
export function newToken(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString(
    "base64url",
  );
}

/** The hex SHA-256 of a token, as stored in `tokens.hash` (synchronous: no await per call). */
export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** What a token may look like: base64url, 16 to 256 characters (ours are 43). */
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{16,256}$/;

/** The token of an `Authorization: Bearer <token>` header value, or null. */
export function parseBearer(header: string | null): string | null {
  const match = /^Bearer (\S+)$/.exec(header?.trim() ?? "");
  return match ? parseToken(match[1]) : null;
}

/** A token from anywhere (a header, connectionParams), or null when it cannot be one. */
export function parseToken(value: unknown): string | null {
  return typeof value === "string" && TOKEN_SHAPE.test(value) ? value : null;
}
