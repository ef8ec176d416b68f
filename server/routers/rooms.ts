/**
 * `rooms.*`: create, browse, update, join, leave, members; a room's events (`onEvent`), who is
 * online (`presence`) and typing (`typing`); read positions (`markRead`, `mine`).
 */
import { TRPCError } from "@trpc/server";
import { roomNotFound } from "../errors.ts";
import { z } from "zod";
import {
  createRoom,
  getRoom,
  joinRoom,
  leaveRoom,
  listMembers,
  listRooms,
  updateRoom,
} from "../../db/rooms.ts";
import { listMyRooms, markRead } from "../../db/reads.ts";
import type { RoomEvent } from "../../db/events.ts";
import { openRoomSubscription } from "../room_subscription.ts";
import { id, imageUrl, limit, roomName, seq, text } from "../schemas.ts";
import {
  authedProcedure,
  memberProcedure,
  memberWriteProcedure,
  publicProcedure,
  router,
  sessionProcedure,
  typingProcedure,
  writeProcedure,
} from "../trpc.ts";

const roomInput = z.object({ roomId: id });

/** The members of a live event, as one key (computed once per event, not per subscriber). */
const liveKeys = new WeakMap<RoomEvent, string>();

/**
 * A subscriber's filter of live events: a presence event that lists the same members as the
 * last one it got is dropped. (A change coalesced over a window can reach a new subscriber
 * after its snapshot already showed it; typing changes are not coalesced, so none repeats.)
 */
function withoutRepeats(): (event: RoomEvent) => boolean {
  let last: string | null = null;
  return (event) => {
    if (event.type !== "presence.changed") return true;
    let key = liveKeys.get(event);
    if (key === undefined) {
      key = event.online.map((member) => member.userId).join(",");
      liveKeys.set(event, key);
    }
    if (last === key) return false;
    last = key;
    return true;
  };
}

/** Procedures on rooms and membership. */
export const roomsRouter = router({
  create: writeProcedure("creates")
    .input(z.object({ name: roomName, thumbnailUrl: imageUrl.optional() }))
    .mutation(({ ctx, input }) =>
      createRoom(ctx.sql, {
        name: input.name,
        thumbnailUrl: input.thumbnailUrl ?? null,
        createdBy: ctx.user.id,
      })
    ),

  list: publicProcedure
    .input(z.object({ limit, cursor: id.optional() }).default({ limit: 50 }))
    .query(async ({ ctx, input }) => {
      const rows = await listRooms(ctx.sql, input);
      const items = rows.slice(0, input.limit);
      const nextCursor = rows.length > input.limit ? items[items.length - 1].id : null;
      return { items, nextCursor };
    }),

  get: publicProcedure.input(roomInput).query(async ({ ctx, input }) => {
    const room = await getRoom(ctx.sql, input.roomId);
    if (!room) throw roomNotFound(input.roomId);
    return room;
  }),

  update: writeProcedure("creates")
    .input(
      z.object({
        roomId: id,
        name: roomName.optional(),
        thumbnailUrl: imageUrl.optional(),
      }),
    )
    .mutation(async ({ ctx, input }) => {
      const { roomId, ...patch } = input;
      const room = await updateRoom(ctx.sql, { roomId, userId: ctx.user.id }, patch);
      if (room) return room;
      if (!(await getRoom(ctx.sql, roomId))) throw roomNotFound(roomId);
      throw new TRPCError({
        code: "FORBIDDEN",
        message: "Only the room's creator can update it",
      });
    }),

  join: writeProcedure("joins").input(roomInput).mutation(async ({ ctx, input }) => {
    const joined = await joinRoom(ctx.sql, { roomId: input.roomId, userId: ctx.user.id });
    if (!joined) throw roomNotFound(input.roomId);
    if (joined.event) ctx.hub.committedEvent(input.roomId, joined.event);
    return joined.member;
  }),

  leave: writeProcedure("joins").input(roomInput).mutation(async ({ ctx, input }) => {
    const key = { roomId: input.roomId, userId: ctx.user.id };
    const event = await leaveRoom(ctx.sql, key);
    if (event) {
      ctx.hub.committedEvent(input.roomId, event);
      ctx.hub.typing.clear(input.roomId, ctx.user.id);
      await ctx.hub.announceLeave(key);
    } else if (!(await getRoom(ctx.sql, input.roomId))) throw roomNotFound(input.roomId);
    return { left: event !== null };
  }),

  members: memberProcedure.query(({ ctx, input }) => listMembers(ctx.sql, input.roomId)),

  /**
   * Every event of the room, in one order, each `tracked(eventId, RoomEvent)` (see
   * db/events.ts): stored events (messages created, updated, deleted; reactions; members
   * joining and leaving) are replayed after `lastEventId`, in order, once, under the replay cap
   * and resync rule of `messages.onMessage`; `presence.changed` comes once the replay is done
   * and after every change, `typing.changed` after every change (and once at the start while
   * someone types). Without `lastEventId` only new events arrive.
   * @throws as `messages.onMessage`.
   */
  onEvent: sessionProcedure
    .input(z.object({ roomId: id, lastEventId: text.nullish() }))
    .subscription(({ ctx, input, signal }) =>
      openRoomSubscription<RoomEvent>(ctx, input, signal, {
        log: ctx.hub.events,
        what: "events",
        lastId: "lastEventId",
        snapshot({ roomId }) {
          const events: RoomEvent[] = [
            { type: "presence.changed", online: ctx.hub.presence.online(roomId) },
          ];
          const typing = ctx.hub.typing.typing(roomId);
          if (typing.length > 0) events.push({ type: "typing.changed", typing });
          return events;
        },
        admit: withoutRepeats,
      })
    ),

  /**
   * The members online in the room now, on any instance: `{ online: Member[] }`, earliest
   * joined first. A member is online while they hold a subscription to the room.
   */
  presence: memberProcedure.query(({ ctx, input }) => ({
    online: ctx.hub.presence.online(input.roomId),
  })),

  /**
   * The caller starts (`typing: true`, renewed while they type) or stops typing: `{ typing }`.
   * A state not renewed for 6 s ends by itself; renewals within a second of the last are
   * absorbed. Nothing is written to Postgres.
   * @throws `NOT_FOUND`, `FORBIDDEN` as `memberProcedure`; `TOO_MANY_REQUESTS` past the
   * reactions rate (absorbed renewals do not count).
   */
  typing: typingProcedure.mutation(({ ctx, input }) => {
    if (ctx.member) ctx.hub.typing.set(ctx.member, input.typing);
    return { typing: input.typing };
  }),

  /**
   * Marks the room read up to `seq` (capped at its last message): `{ lastReadSeq }`, which
   * never moves backwards.
   */
  markRead: memberWriteProcedure("reactions")
    .input(z.object({ seq }))
    .mutation(async ({ ctx, input }) => {
      const lastReadSeq = await markRead(
        ctx.sql,
        { roomId: input.roomId, userId: ctx.user.id },
        input.seq,
      );
      if (lastReadSeq === undefined) throw roomNotFound(input.roomId);
      return { lastReadSeq };
    }),

  /**
   * The caller's rooms, most recently active first, each with `unreadCount` (others' messages
   * after the read position), `lastMessage` and `lastReadSeq`: the front end's room list.
   */
  mine: authedProcedure.query(({ ctx }) => listMyRooms(ctx.sql, ctx.user.id)),
});
