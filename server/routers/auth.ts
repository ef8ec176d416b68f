/** `auth.*`: sign-in (password, identity provider), sessions and sign-out. */
import { TRPCError } from "@trpc/server";
import { z } from "zod";
import {
  listSessions,
  revokeOtherSessions,
  revokeSession,
  revokeToken,
} from "../../db/sessions.ts";
import { exchange, signIn } from "../accounts.ts";
import { id, passwordAttempt, signInName, text } from "../schemas.ts";
import { authedProcedure, router, signInProcedure } from "../trpc.ts";

/** Longest identity token accepted, in characters. */
const MAX_ID_TOKEN_LENGTH = 16_384;

/** Procedures on sign-in and sessions. */
export const authRouter = router({
  /**
   * Signs in with a password, opening a new session: `{ user, token, expiresAt }`. A wrong
   * password, an unknown username and a guest account give the same `UNAUTHORIZED`; after
   * `SIGN_IN_LOCKOUT.maxFailures` failures for a username, `TOO_MANY_REQUESTS` for it until
   * the window passes.
   */
  signIn: signInProcedure
    .input(z.object({ username: signInName, password: passwordAttempt }))
    .mutation(async ({ ctx, input }) => {
      return await signIn(
        {
          sql: ctx.sql,
          ttlSeconds: ctx.sessions.ttlSeconds,
          userAgent: ctx.userAgent,
          hub: ctx.hub,
        },
        input,
      );
    }),

  /**
   * Trades a JWT of the front end's identity provider for a session: `{ user, token,
   * expiresAt }`; the user is created on first sight (see `accounts.ts`). Off unless
   * `AUTH_JWKS_URL` or `AUTH_JWT_SECRET` is set.
   */
  exchange: signInProcedure
    .input(z.object({
      idToken: text.refine(
        (s) => s.length >= 1 && s.length <= MAX_ID_TOKEN_LENGTH,
        `idToken must be 1 to ${MAX_ID_TOKEN_LENGTH} characters`,
      ),
    }))
    .mutation(async ({ ctx, input }) => {
      if (!ctx.idTokens) {
        throw new TRPCError({
          code: "NOT_IMPLEMENTED",
          message: "auth.exchange is off on this server: set AUTH_JWKS_URL or AUTH_JWT_SECRET, " +
            "with AUTH_ISSUER and AUTH_AUDIENCE",
        });
      }
      const claims = await ctx.idTokens.verify(input.idToken);
      return await exchange(
        {
          sql: ctx.sql,
          ttlSeconds: ctx.sessions.ttlSeconds,
          userAgent: ctx.userAgent,
          hub: ctx.hub,
        },
        claims,
      );
    }),

  /** The caller's live sessions, one per device, most recently used first. */
  sessions: authedProcedure.query(async ({ ctx }) => {
    return await listSessions(ctx.sql, ctx.user.id, ctx.tokenHash);
  }),

  /**
   * Ends one of the caller's sessions (the current one too); its subscriptions end at once.
   * Like sign-out, never rate-limited: ending a session must always be possible.
   */
  revoke: authedProcedure
    .input(z.object({ sessionId: id }))
    .mutation(async ({ ctx, input }) => {
      const tokenHash = await revokeSession(ctx.sql, ctx.user.id, input.sessionId);
      if (tokenHash === undefined) {
        throw new TRPCError({ code: "NOT_FOUND", message: "Session not found" });
      }
      await ctx.hub.announceLogout(tokenHash);
      return { ok: true as const };
    }),

  /** Ends every session of the caller but the current one: `{ ended }`. */
  revokeOthers: authedProcedure.mutation(async ({ ctx }) => {
    const ended = await revokeOtherSessions(ctx.sql, ctx.user.id, ctx.tokenHash);
    await ctx.hub.announceLogouts(ended);
    return { ended: ended.length };
  }),

  /** Ends the caller's session; its subscriptions end on every instance. Never rate-limited. */
  signOut: authedProcedure.mutation(async ({ ctx }) => {
    if (await revokeToken(ctx.sql, ctx.tokenHash)) await ctx.hub.announceLogout(ctx.tokenHash);
    return { ok: true as const };
  }),
});
