/**
 * Password hashing with scrypt from `node:crypto` (memory-hard, RFC 7914), a maintained
 * implementation rather than our own. Parameters follow OWASP's Password Storage Cheat Sheet
 * (scrypt, N=2^15, r=8, p=3: 32 MiB and about 0.45 s of one core on the CI machine). Hashes are
 * stored as PHC strings (`$scrypt$ln=15,r=8,p=3$<salt>$<hash>`, base64 without padding), so a
 * later change of cost still verifies older hashes.
 *
 * Hashing runs off the event loop (libuv's pool); at most `MAX_CONCURRENT_HASHES` run at once
 * per process and at most `MAX_WAITING_HASHES` wait, beyond which callers get
 * `SERVICE_UNAVAILABLE`: a flood of sign-ins must not take the memory or every core.
 */
import { Buffer } from "node:buffer";
import { scrypt, timingSafeEqual } from "node:crypto";
import { passwordChecksBusy } from "./errors.ts";

/** scrypt's cost parameters: N = 2^ln, block size r, parallelism p. */
interface Cost {
  ln: number;
  r: number;
  p: number;
}

/** The cost new hashes get. */
const COST: Cost = { ln: 15, r: 8, p: 3 };

/** Salt and key lengths, in bytes. */
const SALT_BYTES = 16;
const KEY_BYTES = 32;

/** Password checks running at once, and waiting, per process. */
const MAX_CONCURRENT_HASHES = 2;
const MAX_WAITING_HASHES = 64;

let running = 0;
const waiting: { start: () => void; fail: (error: unknown) => void }[] = [];

/**
 * Runs `work` in one of the hash slots, waiting for one if need be; a caller whose `signal`
 * aborts while it waits leaves the queue (its hash is never computed).
 */
async function withHashSlot<T>(work: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  if (running >= MAX_CONCURRENT_HASHES) {
    if (waiting.length >= MAX_WAITING_HASHES) throw passwordChecksBusy();
    signal?.throwIfAborted();
    await new Promise<void>((start, fail) => {
      const entry = { start, fail };
      waiting.push(entry);
      signal?.addEventListener("abort", () => {
        const at = waiting.indexOf(entry);
        if (at >= 0) {
          waiting.splice(at, 1);
          fail(signal.reason);
        }
      }, { once: true });
    });
  } else running++;
  try {
    return await work();
  } finally {
    const next = waiting.shift();
    if (next) next.start(); // the slot passes on
    else running--;
  }
}

function derive(password: string, salt: Uint8Array, cost: Cost): Promise<Buffer> {
  const N = 2 ** cost.ln;
  return new Promise((resolve, reject) => {
    scrypt(
      password,
      salt,
      KEY_BYTES,
      { N, r: cost.r, p: cost.p, maxmem: 256 * N * cost.r },
      (error, key) => error ? reject(error) : resolve(key),
    );
  });
}

/**
 * A password as it is hashed: NFKC-normalised, as NIST SP 800-63B §5.1.1.2 asks of Unicode
 * passwords, so the same password typed on two keyboards matches.
 */
export function normalizePassword(password: string): string {
  return password.normalize("NFKC");
}

/**
 * Hashes a password (normalised first) into a PHC string.
 * @throws `SERVICE_UNAVAILABLE` when too many password checks are waiting; `signal`'s reason
 * when it aborts while this one waits.
 */
export async function hashPassword(password: string, signal?: AbortSignal): Promise<string> {
  const salt = crypto.getRandomValues(new Uint8Array(SALT_BYTES));
  const key = await withHashSlot(() => derive(normalizePassword(password), salt, COST), signal);
  return `$scrypt$ln=${COST.ln},r=${COST.r},p=${COST.p}$${b64(salt)}$${b64(key)}`;
}

const PHC = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/;

/**
 * True when `password` (normalised first) matches `stored`, a PHC string of `hashPassword`.
 * With `stored` null (an unknown user, a guest account) it checks against a dummy hash of the
 * same cost and returns false, so every failure takes about the same time.
 * @throws `SERVICE_UNAVAILABLE` when too many password checks are waiting; `signal`'s reason
 * when it aborts while this one waits.
 */
export async function verifyPassword(
  password: string,
  stored: string | null,
  signal?: AbortSignal,
): Promise<boolean> {
  const match = PHC.exec(stored ?? "") ?? PHC.exec(await dummyHash())!;
  const cost = { ln: Number(match[1]), r: Number(match[2]), p: Number(match[3]) };
  const salt = Buffer.from(match[4], "base64");
  const expected = Buffer.from(match[5], "base64");
  const key = await withHashSlot(() => derive(normalizePassword(password), salt, cost), signal);
  const equal = key.length === expected.length && timingSafeEqual(key, expected);
  return stored !== null && equal;
}

let dummy: Promise<string> | null = null;

/** Makes the dummy hash now (at startup), so the first failed sign-in takes no longer either. */
export function preparePasswordChecks(): Promise<void> {
  return dummyHash().then(() => {});
}

/** A hash of a random password, made once, for failures to take as long as a real check. */
function dummyHash(): Promise<string> {
  dummy ??= hashPassword(crypto.randomUUID());
  return dummy;
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64").replace(/=+$/, "");
}
