/**
 * The one origin policy of parley: parsed from `ALLOWED_ORIGINS`, used by CORS,
 * by tRPC context creation and by the WebSocket upgrade check.
 */

/** One allowed origin: exact, or with one `*` inside the host's first label. */
export interface OriginRule {
  scheme: "http" | "https";
  /** Lowercase host; for a pattern, the part of the first label before `*` plus the rest. */
  host: string;
  port: string;
  /** Present for a pattern: matches `prefix + [a-z0-9-]+ + suffix` in the first label. */
  pattern?: RegExp;
  /** The entry as written, for logs. */
  source: string;
}

/** The decision for one request's `Origin` header. */
export type OriginDecision =
  | { allowed: true; origin: string | null }
  | { allowed: false; origin: string; reason: string };

/** An allowlist of origins with a matcher. */
export interface OriginPolicy {
  rules: readonly OriginRule[];
  /** Decides on an `Origin` header value (`null` when the header is absent). */
  check(origin: string | null): OriginDecision;
}

const DEFAULT_PORTS: Record<string, string> = { http: "80", https: "443" };
const LABEL = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

/** Parses one allowlist entry; throws an error naming what is wrong with it. */
export function parseOriginRule(entry: string): OriginRule {
  const source = entry.trim();
  const match = /^(https?):\/\/([^/?#:]+)(?::(\d{1,5}))?$/i.exec(source);
  if (!match) {
    throw new Error(
      `Invalid allowed origin "${source}": expected scheme://host[:port] with no path, query or fragment`,
    );
  }
  const scheme = match[1].toLowerCase() as "http" | "https";
  const host = match[2].toLowerCase();
  const port = normalizePort(scheme, match[3]);
  if (port === null) {
    throw new Error(`Invalid allowed origin "${source}": port out of range`);
  }
  const labels = host.split(".");
  const stars = host.split("*").length - 1;
  if (stars > 1 || (stars === 1 && !labels[0].includes("*"))) {
    throw new Error(
      `Invalid allowed origin "${source}": a "*" may appear once, inside the host's first label`,
    );
  }
  const checked = labels.map((label, i) => i === 0 ? label.replace("*", "x") : label);
  if (!checked.every((label) => LABEL.test(label)) && !isIpv4(host)) {
    throw new Error(
      `Invalid allowed origin "${source}": "${host}" is not a valid host name`,
    );
  }
  if (stars === 0) return { scheme, host, port, source };
  if (labels.length < 3) {
    throw new Error(
      `Invalid allowed origin "${source}": a pattern needs a fixed domain after its first label`,
    );
  }
  const [prefix, suffix] = labels[0].split("*");
  const rest = labels.slice(1).join(".");
  const pattern = new RegExp(
    `^${escapeRegExp(prefix)}[a-z0-9-]+${escapeRegExp(suffix)}\\.${escapeRegExp(rest)}$`,
  );
  return { scheme, host, port, pattern, source };
}

/** Builds the policy from a comma-separated `ALLOWED_ORIGINS` value; throws listing every bad entry. */
export function createOriginPolicy(list: string): OriginPolicy {
  const entries = list.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const problems: string[] = [];
  const rules: OriginRule[] = [];
  for (const entry of entries) {
    try {
      rules.push(parseOriginRule(entry));
    } catch (error) {
      problems.push((error as Error).message);
    }
  }
  if (problems.length > 0) throw new Error(problems.join("; "));
  return {
    rules,
    check(origin) {
      if (origin === null) return { allowed: true, origin: null };
      const reason = refusal(rules, origin);
      return reason === null ? { allowed: true, origin } : { allowed: false, origin, reason };
    },
  };
}

/** Why `origin` is refused, or null when a rule allows it. */
function refusal(rules: readonly OriginRule[], origin: string): string | null {
  if (origin === "null") return "opaque origin (null) is never allowed";
  const match = /^(https?):\/\/([^/?#:@]+)(?::(\d{1,5}))?$/i.exec(origin);
  if (!match) return "not a valid origin";
  const scheme = match[1].toLowerCase();
  const host = match[2].toLowerCase();
  const port = normalizePort(scheme, match[3]);
  if (port === null) return "not a valid origin";
  for (const rule of rules) {
    if (rule.scheme !== scheme || rule.port !== port) continue;
    if (rule.pattern ? rule.pattern.test(host) : rule.host === host) {
      return null;
    }
  }
  return "not in ALLOWED_ORIGINS";
}

function normalizePort(
  scheme: string,
  port: string | undefined,
): string | null {
  if (port === undefined) return DEFAULT_PORTS[scheme];
  const n = Number(port);
  if (!Number.isInteger(n) || n < 1 || n > 65535) return null;
  return String(n);
}

function isIpv4(host: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host) &&
    host.split(".").every((part) => Number(part) <= 255);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** CORS headers for a response to an allowed browser origin (none when there is no origin). */
export function corsHeaders(origin: string | null): Record<string, string> {
  if (origin === null) return {};
  return {
    "access-control-allow-origin": origin,
    "access-control-allow-credentials": "true",
    "vary": "Origin",
  };
}

/** Extra headers a successful preflight answer carries. */
export const PREFLIGHT_HEADERS: Readonly<Record<string, string>> = {
  "access-control-allow-methods": "GET, POST, OPTIONS",
  "access-control-allow-headers": "content-type, authorization, trpc-accept, x-trpc-source",
  "access-control-max-age": "600",
};
