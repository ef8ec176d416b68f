/** `messages.*`: send (idempotent on clientMessageId) and page through a room's history. */
import { TRPCError } from "@trpc/server";
import { z } from "zod";
import {
  type ChangeResult,
  deleteMessage,
  editMessage,
  listMessages,
  MAX_EMOJI_PER_MESSAGE,
  type Message,
  reactToMessage,
} from "../../db/messages.ts";
import { notMember, roomNotFound, unauthenticated } from "../errors.ts";
import { MAX_PAGE_CONTENT_BYTES } from "../limits.ts";
import type { Hub } from "../realtime/hub.ts";
import { openRoomSubscription } from "../room_subscription.ts";
import { content, emoji, id, limit, seq, text } from "../schemas.ts";
import {
  memberProcedure,
  memberWriteProcedure,
  router,
  sessionProcedure,
  sessionWriteProcedure,
} from "../trpc.ts";

/** The leading messages of `messages` whose content fits MAX_PAGE_CONTENT_BYTES (at least one). */
function withinBudget(messages: Message[]): Message[] {
  let bytes = 0;
  const kept: Message[] = [];
  for (const message of messages) {
    bytes += encoder.encode(message.content).byteLength;
    if (kept.length > 0 && bytes > MAX_PAGE_CONTENT_BYTES) break;
    kept.push(message);
  }
  return kept;
}

const encoder = new TextEncoder();

/** Procedures on messages. */
export const messagesRouter = router({
  send: sessionWriteProcedure("sends")
    .input(z.object({ roomId: id, content, clientMessageId: id.optional() }))
    .mutation(async ({ ctx, input }) => {
      // One round trip, shared with concurrent sends to the room: the statement checks the
      // token and membership itself.
      const result = await ctx.sendQueue.send({
        tokenHash: ctx.tokenHash,
        roomId: input.roomId,
        content: input.content,
        clientMessageId: input.clientMessageId ?? null,
      }, ctx.deadline);
      switch (result.status) {
        case "created":
        case "duplicate":
          ctx.sessions.used(ctx.tokenHash);
          // A retry may follow a send whose announcement was lost (crash, failed NOTIFY):
          // publishing again is harmless, subscribers skip seqs they already have.
          ctx.hub.committed(result.message, result.eventId);
          return result.message;
        case "conflict":
          throw new TRPCError({
            code: "CONFLICT",
            message:
              "clientMessageId was already used for another message: use a fresh id for new content",
          });
        case "unauthenticated":
          throw unauthenticated();
        case "room_not_found":
          throw roomNotFound(input.roomId);
        case "not_member":
          throw notMember();
      }
    }),

  /**
   * A page of the room's messages, oldest first: the latest `limit`, those before `beforeSeq`
   * (paging back) or after `afterSeq` (catching up), at most `MAX_PAGE_CONTENT_BYTES` of
   * content. `cursor` is `beforeSeq` under the name tRPC's infinite queries use (`null` or
   * absent: the latest page), and `nextCursor` is `nextBeforeSeq`, so
   * `infiniteQueryOptions({ roomId }, { getNextPageParam: (page) => page.nextCursor })` pages
   * back through the history (each page older than the one before).
   * @throws `BAD_REQUEST` for `beforeSeq` with `afterSeq`, or `cursor` (even `null`) with either.
   */
  list: memberProcedure
    .input(
      z.object({
        limit,
        beforeSeq: seq.optional(),
        afterSeq: seq.optional(),
        cursor: seq.nullish(),
      })
        .refine(
          (input) => input.beforeSeq === undefined || input.afterSeq === undefined,
          "Pass beforeSeq or afterSeq, not both",
        )
        .refine(
          (input) =>
            input.cursor === undefined ||
            (input.beforeSeq === undefined && input.afterSeq === undefined),
          "Pass cursor (tRPC's name for beforeSeq) alone, not with beforeSeq or afterSeq",
        ),
    )
    .query(async ({ ctx, input }) => {
      const options = {
        limit: input.limit,
        beforeSeq: input.beforeSeq ?? input.cursor ?? undefined,
        afterSeq: input.afterSeq,
      };
      const fetched = await listMessages(ctx.sql, input.roomId, options, ctx.user.id);
      // A page holds at most MAX_PAGE_CONTENT_BYTES of content: cut at the far end from where
      // it was asked (the oldest for a page back, the newest for a page forward).
      const forward = options.afterSeq !== undefined;
      const items = withinBudget(forward ? fetched : fetched.toReversed());
      if (!forward) items.reverse();
      const cut = items.length < fetched.length;
      // seq is gap-free from 1, so older messages exist exactly when the page starts above 1.
      const nextBeforeSeq = items.length > 0 && items[0].seq > 1 ? items[0].seq : null;
      const nextAfterSeq = forward && items.length > 0 && (cut || items.length === options.limit)
        ? items[items.length - 1].seq
        : null;
      return { items, nextBeforeSeq, nextAfterSeq, nextCursor: nextBeforeSeq };
    }),

  /**
   * Replaces the content of one's own message (the content rules of `send` apply) and stamps
   * `editedAt`: the message as it is now.
   * @throws `FORBIDDEN` for another's message, `NOT_FOUND` for a message of another room,
   * `CONFLICT` for a deleted one.
   */
  edit: memberWriteProcedure("sends")
    .input(z.object({ messageId: id, content }))
    .mutation(async ({ ctx, input }) => {
      const key = { roomId: input.roomId, messageId: input.messageId, userId: ctx.user.id };
      return await changed(
        ctx.hub,
        input.roomId,
        await editMessage(ctx.sql, key, input.content),
        "edit",
      );
    }),

  /**
   * Deletes a message (its author, or the room's creator): it keeps its seq with empty
   * content and `deletedAt`, and loses its reactions; the message as it is now. Deleting it
   * again changes nothing.
   * @throws `FORBIDDEN` for anyone else, `NOT_FOUND` for a message of another room.
   */
  delete: memberWriteProcedure("sends")
    .input(z.object({ messageId: id }))
    .mutation(async ({ ctx, input }) => {
      const key = { roomId: input.roomId, messageId: input.messageId, userId: ctx.user.id };
      return await changed(ctx.hub, input.roomId, await deleteMessage(ctx.sql, key), "delete");
    }),

  /**
   * Adds (`on: true`) or removes the caller's reaction with one emoji:
   * `{ messageId, emoji, userId, added, count }`, `count` being that emoji's reactions now.
   * Idempotent both ways.
   * @throws `BAD_REQUEST` for anything but one RGI emoji, or a 21st distinct emoji on the
   * message; `NOT_FOUND` for a message of another room; `CONFLICT` for a deleted one.
   */
  react: memberWriteProcedure("reactions")
    .input(z.object({ messageId: id, emoji, on: z.boolean() }))
    .mutation(async ({ ctx, input }) => {
      const key = { roomId: input.roomId, messageId: input.messageId, userId: ctx.user.id };
      const result = await reactToMessage(ctx.sql, key, input.emoji, input.on);
      return await changed(ctx.hub, input.roomId, result, "react to");
    }),

  onMessage: sessionProcedure
    .input(z.object({ roomId: id, lastEventId: text.nullish() }))
    .subscription(({ ctx, input, signal }) =>
      openRoomSubscription(ctx, input, signal, {
        log: ctx.hub.messages,
        what: "messages",
        lastId: "lastSeq",
      })
    ),
});

/**
 * The value of an edit, deletion or reaction, whose event (if it stored one) is handed to the
 * hub (an edit or deletion also drops the room's messages in memory everywhere); or the API
 * error for what it found.
 */
async function changed<T>(
  hub: Hub,
  roomId: string,
  result: ChangeResult<T>,
  verb: string,
): Promise<T> {
  switch (result.status) {
    case "ok":
      if (result.event) {
        hub.committedEvent(roomId, result.event);
        if (result.event.event.type !== "reaction.changed") await hub.announceRedaction(roomId);
      }
      return result.value;
    case "not_found":
      throw new TRPCError({ code: "NOT_FOUND", message: "Message not found in this room" });
    case "forbidden":
      throw new TRPCError({
        code: "FORBIDDEN",
        message: verb === "delete"
          ? "Only the message's author or the room's creator can delete it"
          : `Only the message's author can ${verb} it`,
      });
    case "deleted":
      throw new TRPCError({ code: "CONFLICT", message: `Cannot ${verb} a deleted message` });
    case "too_many_emoji":
      throw new TRPCError({
        code: "BAD_REQUEST",
        message: `A message holds at most ${MAX_EMOJI_PER_MESSAGE} different emoji`,
      });
  }
}
