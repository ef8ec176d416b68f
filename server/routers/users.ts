/** `users.*`: sign-up, profile, password, sign-out and deletion of one's account. */
import { TRPCError } from "@trpc/server";
import { z } from "zod";
import { deleteUser, setPasswordHash } from "../../db/accounts.ts";
import { revokeOtherSessions, revokeToken } from "../../db/sessions.ts";
import { updateUser } from "../../db/users.ts";
import { requireProof, signUp } from "../accounts.ts";
import type { Context } from "../context.ts";
import { usernameReserved } from "../errors.ts";
import { hashPassword } from "../password.ts";
import { isReservedUsername } from "../username_key.ts";
import { imageUrl, password, passwordAttempt, username } from "../schemas.ts";
import { authedProcedure, router, signupProcedure, writeProcedure } from "../trpc.ts";

/** Procedures on users. */
export const usersRouter = router({
  /**
   * Signs up: `{ user, token, expiresAt }`. Without a password the account is a guest account,
   * reachable only through its sessions until `users.setPassword` gives it one.
   */
  create: signupProcedure
    .input(z.object({ username, avatarUrl: imageUrl.optional(), password: password.optional() }))
    .mutation(async ({ ctx, input }) => {
      if (isReservedUsername(input.username)) throw usernameReserved();
      const passwordHash = input.password === undefined
        ? null
        : await hashPassword(input.password, ctx.deadline);
      return await signUp(
        {
          sql: ctx.sql,
          ttlSeconds: ctx.sessions.ttlSeconds,
          userAgent: ctx.userAgent,
          hub: ctx.hub,
        },
        { username: input.username, avatarUrl: input.avatarUrl ?? null, passwordHash },
      );
    }),

  me: authedProcedure.query(({ ctx }) => ctx.user),

  update: writeProcedure("creates")
    .input(
      z.object({
        username: username.optional(),
        avatarUrl: imageUrl.optional(),
      }),
    )
    .mutation(async ({ ctx, input }) => {
      if (input.username !== undefined && isReservedUsername(input.username)) {
        throw usernameReserved();
      }
      const user = await updateUser(ctx.sql, ctx.user.id, input);
      if (!user) {
        throw new TRPCError({
          code: "NOT_FOUND",
          message: "User no longer exists",
        });
      }
      return user;
    }),

  /**
   * Sets the password: `currentPassword` is required when one exists; an account from the
   * identity provider needs a sign-in through it (`auth.exchange`) in the last 10 minutes
   * instead, or the current password (see `requireProof`). Changing a password ends every
   * other session of the account, on every instance; the caller's stays. Counted against the
   * user's rate and, as a password check, against the client address's sign-in rate.
   * `{ ok, sessionsEnded }`.
   */
  setPassword: writeProcedure("creates")
    .input(z.object({ password, currentPassword: passwordAttempt.optional() }))
    .mutation(async ({ ctx, input }) => {
      await countPasswordCheck(ctx);
      const caller = { user: ctx.user, tokenHash: ctx.tokenHash, signal: ctx.deadline };
      await requireProof(ctx.sql, caller, input.currentPassword, "currentPassword");
      const hash = await hashPassword(input.password, ctx.deadline);
      if (!(await setPasswordHash(ctx.sql, ctx.user.id, hash))) {
        throw new TRPCError({ code: "NOT_FOUND", message: "User no longer exists" });
      }
      let ended: string[] = [];
      if (ctx.user.hasPassword) {
        ended = await revokeOtherSessions(ctx.sql, ctx.user.id, ctx.tokenHash);
        await ctx.hub.announceLogouts(ended);
      }
      return { ok: true as const, sessionsEnded: ended.length };
    }),

  /**
   * Ends the caller's session (as `auth.signOut`); its subscriptions end on every instance.
   * Never rate-limited: signing out must always be possible.
   */
  logout: authedProcedure.mutation(async ({ ctx }) => {
    if (await revokeToken(ctx.sql, ctx.tokenHash)) await ctx.hub.announceLogout(ctx.tokenHash);
    return { ok: true as const };
  }),

  /**
   * Deletes the caller's account (`password` is required when it has one; see `requireProof`
   * for accounts from the identity provider): its sessions end
   * and its subscriptions with them, on every instance; its memberships go and its name is
   * free again; its messages stay in history as a deleted user's (`userId` null, no avatar).
   */
  delete: writeProcedure("creates")
    .input(z.object({ password: passwordAttempt.optional() }))
    .mutation(async ({ ctx, input }) => {
      await countPasswordCheck(ctx);
      const caller = { user: ctx.user, tokenHash: ctx.tokenHash, signal: ctx.deadline };
      await requireProof(ctx.sql, caller, input.password, "password");
      const deleted = await deleteUser(ctx.sql, ctx.user.id);
      if (!deleted) {
        throw new TRPCError({ code: "NOT_FOUND", message: "User no longer exists" });
      }
      for (const [roomId, event] of deleted.events) ctx.hub.committedEvent(roomId, event);
      await ctx.hub.announceAccountDeleted(ctx.user.id, deleted.sessions);
      return { ok: true as const };
    }),
});

/**
 * Counts a password check by a signed-in caller against the client address's sign-in rate too:
 * new guest accounts would otherwise multiply one address's share of the hash slots.
 */
async function countPasswordCheck(ctx: Context): Promise<void> {
  await ctx.writes.consume("signIns", {
    userId: null,
    connection: ctx.connection.key,
    address: ctx.address,
  });
}
