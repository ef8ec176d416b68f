/**
 * Where the client's session stands, as one state an app can show: signed out (no token),
 * signed in (a token the server has not refused), or ended (the server refused the current
 * token: it expired, was revoked or signed out on another device, or its account was
 * deleted). The first call or subscription refused with UNAUTHORIZED while its token is
 * still the current one ends the session; every later refusal of that token is no news, so
 * listeners hear of it once. The state leaves `ended` only when the token changes.
 */
import { TRPCClientError, type TRPCLink } from "@trpc/client";
import { observable } from "@trpc/server/observable";
import type { AppRouter } from "../server/router.ts";
import type { Identity } from "./identity.ts";

/**
 * The session as the client knows it, from the token read last (every call reads it;
 * `parley.checkToken()` reads it now):
 * - `signed-out`: no token, or `signOut` ended the current one on this device;
 * - `signed-in`: a token the server has not refused (it may still be refused at the next call);
 * - `ended`: the server refused the current token (expired, revoked, signed out elsewhere,
 *   account deleted); stays until the token changes.
 */
export type SessionState = "signed-out" | "signed-in" | "ended";

/** Gets every change of the session state; `error` is the refusal that ended it (`ended`). */
export type SessionListener = (state: SessionState, error?: unknown) => void;

/** Procedures whose UNAUTHORIZED refuses credentials given as input, not the session. */
const CREDENTIAL_PROCEDURES = new Set(["auth.signIn", "auth.exchange"]);

/** The session state of one client; see the module comment. */
export interface SessionTracker {
  /** The current state (computed from the identity, so right even between notifications). */
  readonly state: SessionState;
  /** Calls `listener` after every change of `state`; returns a function that removes it. */
  onChange(listener: SessionListener): () => void;
  /** Re-reads the state and tells listeners when it changed (call after each token reading). */
  update(): void;
  /** Marks the current token as signed out on this device, before the server is told. */
  signedOut(): void;
  /** The link that notices refusals of the current token; goes before the terminating links. */
  link: TRPCLink<AppRouter>;
  /** Removes every listener. */
  close(): void;
}

/** True for a tRPC error with code UNAUTHORIZED. */
export function isUnauthorized(error: unknown): boolean {
  return error instanceof TRPCClientError && error.data?.code === "UNAUTHORIZED";
}

/** Tracks the session of `identity`'s token. */
export function createSessionTracker(identity: Identity): SessionTracker {
  const listeners = new Set<SessionListener>();
  /** The identity version whose token is known to be over, how, and the refusal that said so. */
  let over: { version: number; state: "signed-out" | "ended"; error?: unknown } | null = null;
  let reported: SessionState = current();

  function current(): SessionState {
    if (identity.token === null) return "signed-out";
    if (over?.version === identity.version) return over.state;
    return "signed-in";
  }

  function update() {
    const next = current();
    if (next === reported) return;
    reported = next;
    const error = next === "ended" ? over?.error : undefined;
    for (const listener of [...listeners]) {
      // A throwing listener must not stop the others, nor fail the call that noticed.
      try {
        listener(next, error);
      } catch (thrown) {
        setTimeout(() => {
          throw thrown;
        });
      }
    }
  }

  /**
   * A call made with the token of identity version `version` was refused with UNAUTHORIZED.
   * The token is read again first: an app that already stored another one has moved on,
   * and the refusal of the old one ends nothing.
   */
  async function refused(version: number, error: unknown) {
    await identity.read().catch(() => {});
    if (identity.version !== version || identity.token === null) return;
    if (over?.version === version) return;
    over = { version, state: "ended", error };
    update();
  }

  // Which token a refused call carried: an HTTP call reads the token after it starts, so
  // the version at its start is that token's only if the version has not moved since (else
  // the refusal is ignored: a later call will tell). A subscription is sent over a socket
  // that announced the token current then, and tRPC confirms every (re)subscription with
  // `started`, so the version at its last start is the token its refusal is about.
  const link: TRPCLink<AppRouter> = () => ({ op, next }) => {
    if (CREDENTIAL_PROCEDURES.has(op.path)) return next(op);
    return observable((observer) => {
      let version = identity.version;
      return next(op).subscribe({
        next(result) {
          if (result.result.type === "started") version = identity.version;
          observer.next(result);
        },
        error(error) {
          observer.error(error);
          if (isUnauthorized(error)) void refused(version, error);
        },
        complete: () => observer.complete(),
      });
    });
  };

  return {
    get state() {
      return current();
    },
    onChange(listener) {
      // A wrapper per registration, so the same function may be registered twice.
      const entry: SessionListener = (state, error) => listener(state, error);
      listeners.add(entry);
      return () => void listeners.delete(entry);
    },
    update,
    signedOut() {
      if (identity.token === null) return;
      over = { version: identity.version, state: "signed-out" };
      update();
    },
    link,
    close() {
      listeners.clear();
    },
  };
}
