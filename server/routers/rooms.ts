/** `rooms.*`: create, browse, update, join, leave, members. */
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
import { id, imageUrl, limit, roomName, seq } from "../schemas.ts";
import {
  authedProcedure,
  memberProcedure,
  memberWriteProcedure,
  publicProcedure,
  router,
  writeProcedure,
} from "../trpc.ts";

const roomInput = z.object({ roomId: id });

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
    const member = await joinRoom(ctx.sql, { roomId: input.roomId, userId: ctx.user.id });
    if (!member) throw roomNotFound(input.roomId);
    return member;
  }),

  leave: writeProcedure("joins").input(roomInput).mutation(async ({ ctx, input }) => {
    const left = await leaveRoom(ctx.sql, { roomId: input.roomId, userId: ctx.user.id });
    if (left) await ctx.hub.announceLeave({ roomId: input.roomId, userId: ctx.user.id });
    else if (!(await getRoom(ctx.sql, input.roomId))) throw roomNotFound(input.roomId);
    return { left };
  }),

  members: memberProcedure.query(({ ctx, input }) => listMembers(ctx.sql, input.roomId)),

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
