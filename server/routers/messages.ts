/** `messages.*`: send (idempotent on clientMessageId) and page through a room's history. */
import { TRPCError } from "@trpc/server";
import { z } from "zod";
import { listMessages, sendMessage } from "../../db/messages.ts";
import { content, id, limit, seq } from "../schemas.ts";
import { memberProcedure, router } from "../trpc.ts";

/** Procedures on messages. */
export const messagesRouter = router({
  send: memberProcedure
    .input(z.object({ content, clientMessageId: id.optional() }))
    .mutation(async ({ ctx, input }) => {
      const result = await sendMessage(ctx.sql, {
        roomId: input.roomId,
        userId: ctx.user.id,
        content: input.content,
        clientMessageId: input.clientMessageId ?? null,
      });
      switch (result.status) {
        case "created":
        case "duplicate":
          return result.message;
        case "conflict":
          throw new TRPCError({
            code: "CONFLICT",
            message:
              "clientMessageId was already used for another message: use a fresh id for new content",
          });
        case "not_member":
          throw new TRPCError({
            code: "FORBIDDEN",
            message: "Not a member of this room: join it first with rooms.join",
          });
      }
    }),

  list: memberProcedure
    .input(
      z.object({ limit, beforeSeq: seq.optional(), afterSeq: seq.optional() })
        .refine(
          (input) => input.beforeSeq === undefined || input.afterSeq === undefined,
          "Pass beforeSeq or afterSeq, not both",
        ),
    )
    .query(async ({ ctx, input }) => {
      const items = await listMessages(ctx.sql, input.roomId, input);
      // seq is gap-free from 1, so older messages exist exactly when the page starts above 1.
      const nextBeforeSeq = items.length > 0 && items[0].seq > 1 ? items[0].seq : null;
      return { items, nextBeforeSeq };
    }),
});
