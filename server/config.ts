import { createOriginPolicy, type OriginPolicy } from "./origin.ts";

/** Server configuration, parsed and validated once at startup. */
export interface Config {
  port: number;
  hostname: string;
  databaseUrl: string;
  origins: OriginPolicy;
  /** Lines to print at startup about defaults that were applied. */
  warnings: string[];
}

/** The allowlist used when `ALLOWED_ORIGINS` is unset: a local Next.js dev server. */
export const DEFAULT_ALLOWED_ORIGINS = "http://localhost:3000,http://127.0.0.1:3000";

/** Raised when the environment holds a bad value; `problems` has one line per bad setting. */
export class ConfigError extends Error {
  /** One human-readable line per problem. */
  readonly problems: string[];

  constructor(problems: string[]) {
    super(
      `Invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`,
    );
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/** Parses the environment into a `Config`, or throws a `ConfigError` listing every problem. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const problems: string[] = [];
  const warnings: string[] = [];

  const portText = env.PORT?.trim() || "8000";
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port < 0 || port > 65535) {
    problems.push(`PORT must be an integer from 0 to 65535, got "${portText}"`);
  }

  const hostname = env.HOST?.trim() || "0.0.0.0";

  const databaseUrl = env.DATABASE_URL?.trim() ?? "";
  if (databaseUrl === "") {
    problems.push(
      "DATABASE_URL is required (for example postgres://user@127.0.0.1:5432/parley)",
    );
  } else if (
    !/^postgres(ql)?:\/\//.test(databaseUrl) || !URL.canParse(databaseUrl)
  ) {
    problems.push("DATABASE_URL must be a postgres:// or postgresql:// URL");
  }

  let originList = env.ALLOWED_ORIGINS;
  if (originList === undefined) {
    originList = DEFAULT_ALLOWED_ORIGINS;
    warnings.push(
      `ALLOWED_ORIGINS is not set: allowing only ${DEFAULT_ALLOWED_ORIGINS}`,
    );
  }
  let origins: OriginPolicy | undefined;
  try {
    origins = createOriginPolicy(originList);
  } catch (error) {
    problems.push(`ALLOWED_ORIGINS: ${(error as Error).message}`);
  }
  if (origins && origins.rules.length === 0) {
    warnings.push(
      "ALLOWED_ORIGINS is empty: every browser origin will be refused",
    );
  }

  if (problems.length > 0 || !origins) throw new ConfigError(problems);
  return { port, hostname, databaseUrl, origins, warnings };
}
