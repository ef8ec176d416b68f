/**
 * Sign-up, sign-in and sign-out in one call each: the server opens (or ends) a session, the
 * token goes to the app's store (`ParleyClientOptions.saveToken`) and the client switches to
 * it at once, so `watchRoom`s waiting in `signed-out` load again by themselves.
 */
import { type ClientInternals, clientInternals } from "./_internals.ts";
import type { ParleyClient, RouterInputs, RouterOutputs } from "./mod.ts";
import { isUnauthorized } from "./session.ts";

/**
 * A session just opened on this device: `{ user, token, expiresAt }`. `user` has
 * `hasPassword` (false for a guest account); `token` is shown once (keep it where the
 * client's `token` function reads it); `expiresAt` is when the session ends unless used (the
 * server extends it on every use).
 */
export type OpenedSession = RouterOutputs["auth"]["signIn"];

function internalsOf(parley: ParleyClient): ClientInternals {
  const internals = clientInternals.get(parley);
  if (!internals) {
    throw new TypeError("Expected a client made by createParleyClient");
  }
  return internals;
}

/** Saves `token` through `saveToken` (when the app gave one) and switches the client to it. */
async function adopt(parley: ParleyClient, token: string | null): Promise<void> {
  const { saveToken } = internalsOf(parley);
  if (!saveToken) return;
  await saveToken(token);
  await parley.checkToken();
}

/**
 * Creates an account (`users.create`: `{ username, avatarUrl?, password? }`; without a
 * password, a guest account that `users.setPassword` can complete) and opens its first
 * session; saves the token and switches to it (see `saveToken`).
 * @throws the call's `TRPCClientError`: `CONFLICT` for a taken name, `BAD_REQUEST` for bad
 * input, `TOO_MANY_REQUESTS` over the sign-up rate.
 */
export async function signUp(
  parley: ParleyClient,
  input: RouterInputs["users"]["create"],
): Promise<OpenedSession> {
  internalsOf(parley);
  const opened = await parley.trpc.users.create.mutate(input);
  await adopt(parley, opened.token);
  return opened;
}

/**
 * Signs in with a username (any letter case or form of it) and password, opening a new
 * session on this device; saves the token and switches to it (see `saveToken`). Other
 * devices' sessions are untouched.
 * @throws the call's `TRPCClientError`: `UNAUTHORIZED` "Wrong username or password" (also
 * for an unknown name or a guest account; the session state does not change),
 * `TOO_MANY_REQUESTS` after 10 failures for the name within 15 min (`retryAfterMs(error)`
 * says how long).
 */
export async function signIn(
  parley: ParleyClient,
  input: { username: string; password: string },
): Promise<OpenedSession> {
  internalsOf(parley);
  const opened = await parley.trpc.auth.signIn.mutate(input);
  await adopt(parley, opened.token);
  return opened;
}

/**
 * Trades a JWT of the front end's identity provider (Auth.js, Clerk, Auth0, ...) for a
 * session (`auth.exchange`; the user is created on first sight); saves the token and
 * switches to it (see `saveToken`).
 * @throws the call's `TRPCClientError`: `UNAUTHORIZED` "Identity token refused: ..." (the
 * session state does not change), `NOT_IMPLEMENTED` when the server has no `AUTH_*` setup.
 */
export async function exchangeIdToken(
  parley: ParleyClient,
  idToken: string,
): Promise<OpenedSession> {
  internalsOf(parley);
  const opened = await parley.trpc.auth.exchange.mutate({ idToken });
  await adopt(parley, opened.token);
  return opened;
}

/**
 * Signs out on this device: `session` becomes `signed-out` at once (one change; rooms being
 * watched stop in `signed-out`), the server ends the session (`auth.signOut`: its
 * subscriptions end on every instance), and the token is cleared (`saveToken(null)`). A
 * session the server already ended counts as signed out.
 * @throws the call's error when the server could not be told (e.g. no network); the token is
 * cleared on this device anyway, and the session ends on the server when it expires.
 */
export async function signOut(parley: ParleyClient): Promise<void> {
  const { session } = internalsOf(parley);
  await parley.checkToken();
  const live = parley.session === "signed-in";
  session.signedOut();
  try {
    if (live) await parley.trpc.auth.signOut.mutate();
  } catch (error) {
    if (!isUnauthorized(error)) throw error;
  } finally {
    await adopt(parley, null);
  }
}
