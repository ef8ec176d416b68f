import { type AbuseLimits, DEFAULT_ABUSE_LIMITS, type Rate } from "./limits.ts";
import type { IdTokenSettings } from "./id_token.ts";
import { createOriginPolicy, type OriginPolicy } from "./origin.ts";
import { DEFAULT_SESSION_TTL_SECONDS } from "./sessions.ts";
import { type CallSettings, DEFAULT_CALL_SETTINGS } from "./ice_servers.ts";
import type { MetricsSettings } from "./metrics.ts";

/** Server configuration, parsed and validated once at startup. */
export interface Config {
  port: number;
  hostname: string;
  /** A real Postgres server, or null for the embedded database in `pgliteDir`. */
  databaseUrl: string | null;
  /**
   * Postgres itself when `databaseUrl` is a pooler in transaction mode (`DATABASE_DIRECT_URL`):
   * the LISTEN connection and migrations go there, and `databaseUrl` gets unnamed statements
   * and no startup parameters. Null when unset or equal to `databaseUrl` (then that one is
   * Postgres itself).
   */
  databaseDirectUrl: string | null;
  pgliteDir: string;
  origins: OriginPolicy;
  /** Set by `RAILWAY_ENVIRONMENT` or `DENO_ENV=production`: stricter checks, JSON logs. */
  production: boolean;
  logFormat: "json" | "text";
  /** Rates and connection caps (`RATE_LIMIT_*`, `MAX_*`). */
  limits: AbuseLimits;
  /**
   * The request header a trusted proxy puts the client's address in (`CLIENT_ADDRESS_HEADER`,
   * lowercase), or null to use the TCP peer's address.
   */
  clientAddressHeader: string | null;
  /** Accounts: session lifetime and the identity provider, if any. */
  accounts: AccountSettings;
  /** Calls: ICE servers and the size of a call (`STUN_URLS`, `TURN_*`, `CALL_MAX_PARTICIPANTS`). */
  calls: CallSettings;
  /**
   * `/metrics` (`METRICS_TOKEN`): with a token, served to holders of it; without, served
   * outside production only.
   */
  metrics: MetricsSettings;
  /** Lines to print at startup about defaults that were applied. */
  warnings: string[];
}

/** How sessions live and whom `auth.exchange` trusts. */
export interface AccountSettings {
  /** A session's lifetime after its last use, in seconds (`SESSION_TTL`, default 30 days). */
  sessionTtlSeconds: number;
  /** The identity provider `auth.exchange` trusts (`AUTH_*`), or null: exchange is off. */
  idTokens: IdTokenSettings | null;
}

/** The allowlist used when `ALLOWED_ORIGINS` is unset: a local Next.js dev server. */
export const DEFAULT_ALLOWED_ORIGINS = "http://localhost:3000,http://127.0.0.1:3000";

/** Where the embedded database lives unless `PGLITE_DIR` says otherwise. */
export const DEFAULT_PGLITE_DIR = "./data/pglite";

/** Raised when the environment holds a bad value; `problems` has one line per bad setting. */
export class ConfigError extends Error {
  /** One human-readable line per problem. */
  readonly problems: string[];

  constructor(problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/** Parses the environment into a `Config`, or throws a `ConfigError` listing every problem. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const problems: string[] = [];
  const warnings: string[] = [];
  const production = Boolean(env.RAILWAY_ENVIRONMENT?.trim()) ||
    env.DENO_ENV?.trim() === "production";

  const portText = env.PORT?.trim() || "8000";
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 0 || port > 65535) {
    problems.push(`PORT must be an integer from 0 to 65535, got "${portText}"`);
  }

  const hostname = env.HOST?.trim() || "0.0.0.0";

  const databaseUrl = env.DATABASE_URL?.trim() || null;
  if (databaseUrl === null && production) {
    problems.push(
      "DATABASE_URL is required in production: the embedded database lives on the " +
        "container's disk and serves one instance only",
    );
  } else if (
    databaseUrl !== null && (!/^postgres(ql)?:\/\//.test(databaseUrl) || !URL.canParse(databaseUrl))
  ) {
    problems.push("DATABASE_URL must be a postgres:// or postgresql:// URL");
  }
  let databaseDirectUrl = env.DATABASE_DIRECT_URL?.trim() || null;
  if (databaseDirectUrl !== null) {
    if (!/^postgres(ql)?:\/\//.test(databaseDirectUrl) || !URL.canParse(databaseDirectUrl)) {
      problems.push("DATABASE_DIRECT_URL must be a postgres:// or postgresql:// URL");
    } else if (databaseUrl === null) {
      problems.push(
        "DATABASE_DIRECT_URL is set without DATABASE_URL: set DATABASE_URL to the pooler " +
          "and DATABASE_DIRECT_URL to Postgres itself",
      );
    }
    if (databaseDirectUrl === databaseUrl) databaseDirectUrl = null;
  }
  const pgliteDir = env.PGLITE_DIR?.trim() || DEFAULT_PGLITE_DIR;

  let originList = env.ALLOWED_ORIGINS;
  if (originList === undefined && !production) {
    originList = DEFAULT_ALLOWED_ORIGINS;
    warnings.push(`ALLOWED_ORIGINS is not set: allowing only ${DEFAULT_ALLOWED_ORIGINS}`);
  }
  let origins: OriginPolicy | undefined;
  try {
    origins = createOriginPolicy(originList ?? "");
  } catch (error) {
    problems.push(`ALLOWED_ORIGINS: ${(error as Error).message}`);
  }
  if (origins && origins.rules.length === 0) {
    if (production) {
      problems.push(
        "ALLOWED_ORIGINS must list your front end's origins in production " +
          "(e.g. https://app.vercel.app,https://app-*-team.vercel.app)",
      );
    } else {
      warnings.push("ALLOWED_ORIGINS is empty: every browser origin will be refused");
    }
  }

  const logFormat = env.LOG_FORMAT?.trim() || (production ? "json" : "text");
  if (logFormat !== "json" && logFormat !== "text") {
    problems.push(`LOG_FORMAT must be json or text, got "${logFormat}"`);
  }

  const limits = parseLimits(env, problems);

  const clientAddressHeader = env.CLIENT_ADDRESS_HEADER?.trim().toLowerCase() || null;
  if (clientAddressHeader !== null && !/^[a-z0-9-]{1,64}$/.test(clientAddressHeader)) {
    problems.push(
      `CLIENT_ADDRESS_HEADER must be a header name such as x-forwarded-for, got "${clientAddressHeader}"`,
    );
  }

  const accounts = parseAccounts(env, problems, warnings, production);
  const calls = parseCalls(env, problems);
  const metrics = parseMetrics(env, problems, warnings, production);

  if (problems.length > 0 || !origins) throw new ConfigError(problems);
  return {
    port,
    hostname,
    databaseUrl,
    databaseDirectUrl,
    pgliteDir,
    origins,
    production,
    logFormat: logFormat as "json" | "text",
    limits,
    clientAddressHeader,
    accounts,
    calls,
    metrics,
    warnings,
  };
}

/** Shortest `METRICS_TOKEN`, in characters. */
const MIN_METRICS_TOKEN_CHARS = 16;

/**
 * Reads `METRICS_TOKEN`: when set, `/metrics` needs `Authorization: Bearer <token>`; when
 * unset, `/metrics` is off in production (404) and open elsewhere.
 */
function parseMetrics(
  env: Record<string, string | undefined>,
  problems: string[],
  warnings: string[],
  production: boolean,
): MetricsSettings {
  const token = env.METRICS_TOKEN?.trim() || null;
  if (token !== null) {
    if (!/^[\x21-\x7e]+$/.test(token)) {
      problems.push(
        "METRICS_TOKEN must be printable ASCII without spaces: it is sent in a header",
      );
    } else if (token.length < MIN_METRICS_TOKEN_CHARS) {
      // Refused in production, tolerated (with a warning) in development and tests.
      const short = `METRICS_TOKEN must be at least ${MIN_METRICS_TOKEN_CHARS} characters`;
      if (production) problems.push(short);
      else warnings.push(`${short}: a shorter one is accepted outside production only`);
    }
  }
  return { token, enabled: token !== null || !production };
}

/** Longest `TURN_TTL`, in seconds: a week. */
const MAX_TURN_TTL_SECONDS = 7 * 24 * 3600;

/** Most `CALL_MAX_PARTICIPANTS`: a mesh of more peers would drown the browsers' uplinks. */
const MAX_CALL_PARTICIPANTS = 16;

/** Reads `STUN_URLS`, `TURN_URLS`, `TURN_SECRET`, `TURN_TTL` and `CALL_MAX_PARTICIPANTS`. */
function parseCalls(env: Record<string, string | undefined>, problems: string[]): CallSettings {
  const urls = (name: string, schemes: RegExp) => {
    const list = (env[name] ?? "").split(",").map((u) => u.trim()).filter(Boolean);
    for (const url of list) {
      if (!schemes.test(url) || /\s/.test(url)) {
        problems.push(`${name}: "${url.slice(0, 80)}" is not a ${schemes.source.slice(2, -2)} URL`);
      }
    }
    return list;
  };
  const stunUrls = urls("STUN_URLS", /^(stuns?):./);
  const turnUrls = urls("TURN_URLS", /^(turns?):./);
  const turnSecret = env.TURN_SECRET?.trim() || null;
  if (turnUrls.length > 0 && !turnSecret) {
    problems.push("TURN_URLS needs TURN_SECRET (coturn's static-auth-secret)");
  }
  let turnTtlSeconds = DEFAULT_CALL_SETTINGS.turnTtlSeconds;
  const ttlText = env.TURN_TTL?.trim();
  if (ttlText) {
    const n = Number(ttlText);
    if (!/^\d{1,7}$/.test(ttlText) || n < 60 || n > MAX_TURN_TTL_SECONDS) {
      problems.push(
        `TURN_TTL must be a whole number of seconds from 60 to ${MAX_TURN_TTL_SECONDS}, got "${ttlText}"`,
      );
    } else turnTtlSeconds = n;
  }
  let maxParticipants = DEFAULT_CALL_SETTINGS.maxParticipants;
  const maxText = env.CALL_MAX_PARTICIPANTS?.trim();
  if (maxText) {
    const n = Number(maxText);
    if (!/^\d{1,2}$/.test(maxText) || n < 2 || n > MAX_CALL_PARTICIPANTS) {
      problems.push(
        `CALL_MAX_PARTICIPANTS must be a whole number from 2 to ${MAX_CALL_PARTICIPANTS}, got "${maxText}"`,
      );
    } else maxParticipants = n;
  }
  return {
    stunUrls,
    turnUrls,
    turnSecret: turnUrls.length > 0 ? turnSecret : null,
    turnTtlSeconds,
    maxParticipants,
  };
}

/** Longest `SESSION_TTL`, in seconds: ten years. */
const MAX_SESSION_TTL_SECONDS = 10 * 365 * 24 * 3600;

/** Shortest `AUTH_JWT_SECRET`: 32 bytes, the key size HS256 needs (RFC 7518 §3.2). */
const MIN_JWT_SECRET_BYTES = 32;

/** Reads `SESSION_TTL` and the identity provider's `AUTH_*` settings. */
function parseAccounts(
  env: Record<string, string | undefined>,
  problems: string[],
  warnings: string[],
  production: boolean,
): AccountSettings {
  let sessionTtlSeconds = DEFAULT_SESSION_TTL_SECONDS;
  const ttlText = env.SESSION_TTL?.trim();
  if (ttlText) {
    const n = Number(ttlText);
    if (!/^\d{1,10}$/.test(ttlText) || n < 1 || n > MAX_SESSION_TTL_SECONDS) {
      problems.push(
        `SESSION_TTL must be a whole number of seconds from 1 to ${MAX_SESSION_TTL_SECONDS}, got "${ttlText}"`,
      );
    } else sessionTtlSeconds = n;
  }
  const jwksUrl = env.AUTH_JWKS_URL?.trim() || null;
  const secret = env.AUTH_JWT_SECRET?.trim() || null;
  const issuer = env.AUTH_ISSUER?.trim() || null;
  const audiences = (env.AUTH_AUDIENCE ?? "").split(",").map((a) => a.trim()).filter(Boolean);
  if (!jwksUrl && !secret) {
    if (issuer || audiences.length > 0) {
      problems.push("AUTH_ISSUER and AUTH_AUDIENCE need AUTH_JWKS_URL or AUTH_JWT_SECRET");
    }
    return { sessionTtlSeconds, idTokens: null };
  }
  if (jwksUrl && secret) {
    problems.push("Set AUTH_JWKS_URL or AUTH_JWT_SECRET, not both");
  }
  if (jwksUrl && !isJwksUrl(jwksUrl)) {
    problems.push(
      "AUTH_JWKS_URL must be an https:// URL (http:// only for localhost, 127.0.0.1 or [::1])",
    );
  }
  if (secret && new TextEncoder().encode(secret).length < MIN_JWT_SECRET_BYTES) {
    // A short secret can be guessed offline from one token: refused in production, tolerated
    // (with a warning) in development and tests.
    const short = `AUTH_JWT_SECRET must be at least ${MIN_JWT_SECRET_BYTES} bytes (HS256)`;
    if (production) problems.push(short);
    else warnings.push(`${short}: a shorter one is accepted outside production only`);
  }
  if (!issuer) problems.push("AUTH_ISSUER is required with AUTH_JWKS_URL or AUTH_JWT_SECRET");
  if (audiences.length === 0) {
    problems.push("AUTH_AUDIENCE is required with AUTH_JWKS_URL or AUTH_JWT_SECRET");
  }
  return {
    sessionTtlSeconds,
    idTokens: { jwksUrl, secret: jwksUrl ? null : secret, issuer: issuer ?? "", audiences },
  };
}

function isJwksUrl(value: string): boolean {
  if (!URL.canParse(value)) return false;
  const url = new URL(value);
  if (url.username !== "" || url.password !== "") return false;
  if (url.protocol === "https:") return true;
  return url.protocol === "http:" &&
    ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
}

/** The environment variable of each abuse limit; the README's limits table lists the same. */
const RATE_VARIABLES = {
  sends: "RATE_LIMIT_SENDS",
  joins: "RATE_LIMIT_JOINS",
  creates: "RATE_LIMIT_CREATES",
  signups: "RATE_LIMIT_SIGNUPS",
  signIns: "RATE_LIMIT_SIGN_INS",
  reactions: "RATE_LIMIT_REACTIONS",
  signals: "RATE_LIMIT_SIGNALS",
  connectionWrites: "RATE_LIMIT_CONNECTION_WRITES",
} as const;

const CAP_VARIABLES = {
  subscriptionsPerSocket: "MAX_SUBSCRIPTIONS_PER_SOCKET",
  connectionsPerAddress: "MAX_CONNECTIONS_PER_ADDRESS",
  connections: "MAX_CONNECTIONS",
} as const;

/** Reads the abuse limits: rates as `<calls>/<seconds>s` (or `off`), caps as whole numbers. */
function parseLimits(env: Record<string, string | undefined>, problems: string[]): AbuseLimits {
  const limits: AbuseLimits = { ...DEFAULT_ABUSE_LIMITS };
  for (
    const [key, name] of Object.entries(RATE_VARIABLES) as [keyof typeof RATE_VARIABLES, string][]
  ) {
    const text = env[name]?.trim();
    if (!text) continue;
    const rate = parseRate(text);
    if (rate === undefined) {
      problems.push(`${name} must look like 30/10s (calls per seconds) or off, got "${text}"`);
    } else limits[key] = rate;
  }
  for (
    const [key, name] of Object.entries(CAP_VARIABLES) as [keyof typeof CAP_VARIABLES, string][]
  ) {
    const text = env[name]?.trim();
    if (!text) continue;
    const n = Number(text);
    if (!/^\d{1,9}$/.test(text) || n < 1) {
      problems.push(`${name} must be a whole number of at least 1, got "${text}"`);
    } else limits[key] = n;
  }
  return limits;
}

/** `30/10s` → 30 calls per 10 seconds; `off` → null; anything else → undefined. */
export function parseRate(text: string): Rate | null | undefined {
  if (text.toLowerCase() === "off") return null;
  const match = /^(\d{1,9})\/(\d{1,7})s?$/.exec(text);
  if (!match) return undefined;
  const points = Number(match[1]);
  const seconds = Number(match[2]);
  return points >= 1 && seconds >= 1 ? { points, seconds } : undefined;
}
