/** `messages.*`: send (idempotent on clientMessageId) and page through a room's history. */
import { tracked, TRPCError } from "@trpc/server";
import { z } from "zod";
import { listMessages, type Message, sendMessage } from "../../db/messages.ts";
import { getLastSeq, getMembership } from "../../db/rooms.ts";
import { findUserByTokenHash } from "../../db/users.ts";
import { clip } from "../clip.ts";
import {
  notMember,
  resyncRequired,
  roomNotFound,
  tokenRevoked,
  tooManySubscriptions,
} from "../errors.ts";
import { Inbox } from "../inbox.ts";
import { MAX_PAGE_CONTENT_BYTES } from "../limits.ts";
import { content, id, limit, seq, text } from "../schemas.ts";
import { authedProcedure, memberProcedure, memberWriteProcedure, router } from "../trpc.ts";

/** Most messages a reconnecting subscriber may replay; beyond it the client must reload. */
export const MAX_REPLAY = 1000;

/** Most messages queued for one subscriber before it is told to resync. */
const MAX_QUEUED = 10_000;

const REPLAY_BATCH = 200;

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
  send: memberWriteProcedure("sends")
    .input(z.object({ content, clientMessageId: id.optional() }))
    .mutation(async ({ ctx, input }) => {
      const result = await ctx.roomGate.run(input.roomId, ctx.deadline, () =>
        sendMessage(ctx.sql, {
          roomId: input.roomId,
          userId: ctx.user.id,
          content: input.content,
          clientMessageId: input.clientMessageId ?? null,
        }, ctx.deadline));
      switch (result.status) {
        case "created":
        case "duplicate":
          // A retry may follow a send whose announcement was lost (crash, failed NOTIFY):
          // publishing again is harmless, subscribers skip seqs they already have.
          ctx.hub.published(result.message);
          return result.message;
        case "conflict":
          throw new TRPCError({
            code: "CONFLICT",
            message:
              "clientMessageId was already used for another message: use a fresh id for new content",
          });
        case "not_member":
          throw notMember();
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
      const fetched = await listMessages(ctx.sql, input.roomId, input);
      // A page holds at most MAX_PAGE_CONTENT_BYTES of content: cut at the far end from where
      // it was asked (the oldest for a page back, the newest for a page forward).
      const forward = input.afterSeq !== undefined;
      const items = withinBudget(forward ? fetched : fetched.toReversed());
      if (!forward) items.reverse();
      const cut = items.length < fetched.length;
      // seq is gap-free from 1, so older messages exist exactly when the page starts above 1.
      const nextBeforeSeq = items.length > 0 && items[0].seq > 1 ? items[0].seq : null;
      const nextAfterSeq = forward && items.length > 0 && (cut || items.length === input.limit)
        ? items[items.length - 1].seq
        : null;
      return { items, nextBeforeSeq, nextAfterSeq };
    }),

  onMessage: authedProcedure
    .input(z.object({ roomId: id, lastEventId: text.nullish() }))
    .subscription(async ({ ctx, input, signal }) => {
      // Access checks and registration with the hub happen here, before tRPC answers
      // "started": a client that sends right after onStarted is already being listened to.
      const { roomId } = input;
      const { connection } = ctx;
      if (connection.subscriptions >= ctx.limits.subscriptionsPerSocket) {
        throw tooManySubscriptions(ctx.limits.subscriptionsPerSocket);
      }
      connection.subscriptions++;
      const inbox = new Inbox<Message>(
        MAX_QUEUED,
        () => resyncRequired("this subscriber fell too far behind"),
      );
      // Watch for a leave or logout before checking access, so one that commits meanwhile
      // is never missed.
      const unwatch = ctx.hub.watchAccess(
        { roomId, userId: ctx.user.id, tokenHash: ctx.tokenHash },
        (reason) =>
          inbox.fail(
            reason === "logged_out" ? tokenRevoked() : new TRPCError({
              code: "FORBIDDEN",
              message: reason === "left" ? "You left this room" : "Access to this room ended",
            }),
          ),
      );
      let released = false;
      let unsubscribe = () => {};
      const release = () => {
        if (!released) connection.subscriptions--;
        released = true;
        unsubscribe();
        unwatch();
      };
      // The client may go away during setup, or before the stream is first read (then the
      // generator's finally never runs): release on abort, and after every await below.
      signal?.addEventListener("abort", release, { once: true });
      const stillWanted = () => {
        if (released || signal?.aborted) {
          release();
          throw new TRPCError({ code: "CLIENT_CLOSED_REQUEST", message: "Subscription cancelled" });
        }
      };
      let from: number;
      let lastSeq: number;
      try {
        if (!(await findUserByTokenHash(ctx.sql, ctx.tokenHash))) throw tokenRevoked();
        const membership = await getMembership(ctx.sql, roomId, ctx.user.id);
        if (!membership.roomExists) {
          throw roomNotFound(roomId);
        }
        if (!membership.isMember) throw notMember();
        // Listen first, then read the backlog, so nothing falls in between.
        stillWanted();
        unsubscribe = await ctx.hub.subscribe(roomId, (message) => inbox.push(message));
        stillWanted();
        lastSeq = (await getLastSeq(ctx.sql, roomId)) ?? 0;
        from = lastSeq;
        if (input.lastEventId !== undefined && input.lastEventId !== null) {
          const text = input.lastEventId;
          from = /^\d{1,15}$/.test(text) ? Number(text) : NaN;
          if (!(from <= lastSeq)) {
            throw resyncRequired(`lastEventId "${clip(text, 40)}" is not a seq of this room`);
          }
          if (lastSeq - from > MAX_REPLAY) {
            throw resyncRequired(
              `${lastSeq - from} messages were missed (replay limit ${MAX_REPLAY})`,
            );
          }
        }
      } catch (error) {
        release();
        throw error;
      }

      stillWanted();
      const stream = (async function* () {
        try {
          let last = from;
          while (last < lastSeq) {
            const batch = await listMessages(ctx.sql, roomId, {
              afterSeq: last,
              limit: REPLAY_BATCH,
            });
            if (batch.length === 0) break;
            for (const message of batch) {
              yield tracked(String(message.seq), message);
              last = message.seq;
            }
          }
          for await (const message of inbox.drain(signal ?? new AbortController().signal)) {
            if (message.seq <= last) continue;
            yield tracked(String(message.seq), message);
            last = message.seq;
          }
        } finally {
          release();
        }
      })();
      // return() on a stream never read skips the generator's finally: release here too.
      type Item = typeof stream extends AsyncGenerator<infer T> ? T : never;
      const wrapped: AsyncIterableIterator<Item> = {
        [Symbol.asyncIterator]() {
          return this;
        },
        next: () => stream.next(),
        return: (value?: unknown) => {
          release();
          return stream.return(value as never);
        },
      };
      return wrapped;
    }),
});
