/** `users.*`: sign-up with a token, profile, logout. */
import { TRPCError } from "@trpc/server";
import { z } from "zod";
import { createUser, revokeToken, updateUser } from "../../db/users.ts";
import { hashToken, newToken } from "../auth.ts";
import { imageUrl, username } from "../schemas.ts";
import { authedProcedure, router, signupProcedure, writeProcedure } from "../trpc.ts";

/** Procedures on users. */
export const usersRouter = router({
  create: signupProcedure
    .input(z.object({ username, avatarUrl: imageUrl.optional() }))
    .mutation(async ({ ctx, input }) => {
      const token = newToken();
      const user = await createUser(ctx.sql, {
        username: input.username,
        avatarUrl: input.avatarUrl ?? null,
        tokenHash: hashToken(token),
      });
      return { user, token };
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
      const user = await updateUser(ctx.sql, ctx.user.id, input);
      if (!user) {
        throw new TRPCError({
          code: "NOT_FOUND",
          message: "User no longer exists",
        });
      }
      return user;
    }),

  logout: writeProcedure("creates").mutation(async ({ ctx }) => {
    if (await revokeToken(ctx.sql, ctx.tokenHash)) await ctx.hub.announceLogout(ctx.tokenHash);
    return { ok: true as const };
  }),
});
