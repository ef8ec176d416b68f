import { createOriginPolicy, type OriginPolicy } from "./origin.ts";

/** Server configuration, parsed and validated once at startup. */
export interface Config {
  port: number;
  hostname: string;
  /** A real Postgres server, or null for the embedded database in `pgliteDir`. */
  databaseUrl: string | null;
  pgliteDir: string;
  origins: OriginPolicy;
  /** Set by `RAILWAY_ENVIRONMENT` or `DENO_ENV=production`: stricter checks, JSON logs. */
  production: boolean;
  logFormat: "json" | "text";
  /** Lines to print at startup about defaults that were applied. */
  warnings: string[];
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

  if (problems.length > 0 || !origins) throw new ConfigError(problems);
  return {
    port,
    hostname,
    databaseUrl,
    pgliteDir,
    origins,
    production,
    logFormat: logFormat as "json" | "text",
    warnings,
  };
}
