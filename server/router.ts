/** The root router: every resource's router, merged. */
import { TRPCError } from "@trpc/server";
import { ping } from "../db/mod.ts";
import { authRouter } from "./routers/auth.ts";
import { callsRouter } from "./routers/calls.ts";
import { messagesRouter } from "./routers/messages.ts";
import { roomsRouter } from "./routers/rooms.ts";
import { usersRouter } from "./routers/users.ts";
import { publicProcedure, router } from "./trpc.ts";

/** The whole API. */
export const appRouter = router({
  health: publicProcedure.query(async ({ ctx }) => {
    if (!(await ping(ctx.sql, 1000))) {
      throw new TRPCError({
        code: "SERVICE_UNAVAILABLE",
        message: "Database did not answer",
      });
    }
    return { status: "ok" as const, db: "ok" as const };
  }),
  users: usersRouter,
  auth: authRouter,
  rooms: roomsRouter,
  messages: messagesRouter,
  calls: callsRouter,
});

/** The type the client is built from. */
export type AppRouter = typeof appRouter;
