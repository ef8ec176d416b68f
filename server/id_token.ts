/**
 * Trusting the front end's identity provider (Auth.js, Clerk, Auth0, Supabase Auth, …): its
 * JWTs are verified with `jose`, a maintained JOSE implementation, against the provider's JWKS
 * (`AUTH_JWKS_URL`, asymmetric algorithms only) or a shared secret (`AUTH_JWT_SECRET`, HS256
 * only), with the issuer and audience checked and `exp`/`nbf` honoured within
 * `ID_TOKEN_CLOCK_TOLERANCE_S` (RFC 7519 §4.1.4–4.1.5). Unsigned tokens (`alg: none`) are never
 * accepted: jose's `jwtVerify` has no way to take one.
 */
import { createRemoteJWKSet, errors, type JWTPayload, jwtVerify } from "jose";
import { idTokenRefused, RetryableError } from "./errors.ts";

/** How the provider's tokens are checked (from `AUTH_*`, see config.ts). */
export interface IdTokenSettings {
  /** The provider's JWKS (https, or http on localhost), or null with `secret`. */
  jwksUrl: string | null;
  /** The HS256 secret shared with the provider, or null with `jwksUrl`. */
  secret: string | null;
  /** The `iss` every token must carry. */
  issuer: string;
  /** The `aud` values accepted (a token must name one of them). */
  audiences: string[];
}

/** What parley takes from a verified token. */
export interface IdClaims {
  issuer: string;
  subject: string;
  /** `preferred_username`, else `name`, else null (a string of at most 256 characters). */
  name: string | null;
  /** `picture`, when it is a string; the caller checks it is an allowed image URL. */
  picture: string | null;
}

/** Checks identity tokens; built once per server by `createIdTokenVerifier`. */
export interface IdTokenVerifier {
  /**
   * Verifies a token and returns its claims.
   * @throws `UNAUTHORIZED` (`idTokenRefused`) when the token is malformed, unsigned, signed
   * with another key or algorithm, expired, not yet valid, or of another issuer or audience;
   * `SERVICE_UNAVAILABLE` when the JWKS cannot be fetched.
   */
  verify(idToken: string): Promise<IdClaims>;
}

/** Clock skew allowed between the provider and this server on `exp` and `nbf`, in seconds. */
export const ID_TOKEN_CLOCK_TOLERANCE_S = 5;

/** Algorithms accepted with a JWKS: the asymmetric ones of RFC 7518 §3.1 and EdDSA (RFC 8037). */
const ASYMMETRIC = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
  "Ed25519",
];

/** Longest `sub` and `iss` kept, in characters. */
const MAX_CLAIM_LENGTH = 255;

/** Builds the verifier of `settings`. */
export function createIdTokenVerifier(settings: IdTokenSettings): IdTokenVerifier {
  const remote = settings.jwksUrl !== null;
  const jwks = settings.jwksUrl
    ? createRemoteJWKSet(new URL(settings.jwksUrl), { timeoutDuration: 5000 })
    : null;
  const secret = new TextEncoder().encode(settings.secret ?? "");
  const options = {
    issuer: settings.issuer,
    audience: settings.audiences,
    algorithms: remote ? ASYMMETRIC : ["HS256"],
    clockTolerance: ID_TOKEN_CLOCK_TOLERANCE_S,
    requiredClaims: ["exp", "sub"],
  };
  return {
    async verify(idToken) {
      let payload: JWTPayload;
      try {
        const verified = jwks
          ? await jwtVerify(idToken, jwks, options)
          : await jwtVerify(idToken, secret, options);
        payload = verified.payload;
      } catch (error) {
        throw refusal(error, remote);
      }
      const subject = payload.sub;
      if (typeof subject !== "string" || subject === "" || subject.length > MAX_CLAIM_LENGTH) {
        throw idTokenRefused("its sub claim must be a string of 1 to 255 characters");
      }
      const name = [payload.preferred_username, payload.name].find((v) =>
        typeof v === "string" && v.trim() !== ""
      ) as string | undefined;
      return {
        issuer: settings.issuer,
        subject,
        name: name ? name.slice(0, 256) : null,
        picture: typeof payload.picture === "string" ? payload.picture : null,
      };
    },
  };
}

/** The API error for a failed verification: what was wrong, never the token. */
function refusal(error: unknown, remote: boolean): Error {
  // The provider's keys could not be fetched (a timeout, or fetch's TypeError): nothing is
  // known about the token yet, so the caller may retry.
  if (error instanceof errors.JWKSTimeout || (remote && error instanceof TypeError)) {
    return new RetryableError(
      "SERVICE_UNAVAILABLE",
      "The identity provider's keys (AUTH_JWKS_URL) cannot be fetched: retry shortly",
      2000,
    );
  }
  if (!(error instanceof errors.JOSEError)) return idTokenRefused("it is not a valid JWT");
  // jose throws its base class when the JWKS endpoint answers other than 200 with JSON.
  if (remote && error.constructor === errors.JOSEError) {
    return new RetryableError(
      "SERVICE_UNAVAILABLE",
      "The identity provider's keys (AUTH_JWKS_URL) cannot be fetched: retry shortly",
      2000,
    );
  }
  if (error instanceof errors.JWTExpired) return idTokenRefused("it has expired");
  if (error instanceof errors.JWTClaimValidationFailed) {
    const claim = error.claim;
    if (claim === "nbf") return idTokenRefused("it is not valid yet (nbf)");
    if (claim === "iss") return idTokenRefused("it was issued by another issuer");
    if (claim === "aud") return idTokenRefused("it is meant for another audience");
    return idTokenRefused(`its ${claim} claim is missing or invalid`);
  }
  if (error instanceof errors.JOSEAlgNotAllowed || error instanceof errors.JOSENotSupported) {
    return idTokenRefused("its algorithm is not accepted");
  }
  if (
    error instanceof errors.JWSSignatureVerificationFailed ||
    error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys
  ) {
    return idTokenRefused("its signature does not verify with the provider's keys");
  }
  if (error instanceof errors.JWKSInvalid) {
    return new RetryableError(
      "SERVICE_UNAVAILABLE",
      "The identity provider's keys (AUTH_JWKS_URL) are not a valid JWKS: retry later",
      5000,
    );
  }
  return idTokenRefused("it is not a well-formed signed JWT");
}
