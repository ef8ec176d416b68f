/**
 * `calls.*`: a room's video call. ICE servers (TURN credentials that expire), joining and
 * leaving (one participant per WebSocket connection), the relay of WebRTC signals between two
 * participants, and each participant's stream of call events. Authorised like messages: only
 * members of the room, checked in Postgres; nothing is stored.
 */
import { TRPCError } from "@trpc/server";
import { z } from "zod";
import { memberOf, openRoom } from "../access.ts";
import { accessEnded, tooManySubscriptions } from "../errors.ts";
import { iceServersFor } from "../ice_servers.ts";
import { type CallEvent, isPolite } from "../realtime/calls.ts";
import { Inbox } from "../realtime/inbox.ts";
import { id, text } from "../schemas.ts";
import {
  authedProcedure,
  router,
  sessionProcedure,
  sessionWriteProcedure,
  writeProcedure,
} from "../trpc.ts";

/** Longest SDP accepted, in UTF-16 code units (a browser's offer for audio and video is 3-8 KiB). */
export const MAX_SDP_CHARS = 32 * 1024;

/** Longest ICE candidate line (RFC 8839 §5.1; real ones are under 300 characters). */
export const MAX_CANDIDATE_CHARS = 1024;

/** Most call events queued for a subscriber that does not read; past it the stream ends. */
const MAX_QUEUED_CALL_EVENTS = 1000;

const roomInput = z.object({ roomId: id });

/** An `RTCSessionDescriptionInit`. */
const description = z.strictObject({
  type: z.enum(["offer", "answer", "pranswer", "rollback"]),
  sdp: text.max(MAX_SDP_CHARS).optional(),
});

/** An `RTCIceCandidateInit` (an empty `candidate` marks the end of candidates). */
const candidate = z.strictObject({
  candidate: text.max(MAX_CANDIDATE_CHARS),
  sdpMid: text.max(64).nullish(),
  sdpMLineIndex: z.number().int().min(0).max(1023).nullish(),
  usernameFragment: text.max(256).nullish(),
});

/** The call needs a connection that lasts: a participant lives as long as its WebSocket. */
function requireWebSocket(key: string | null, what: string): string {
  if (key !== null) return key;
  throw new TRPCError({
    code: "BAD_REQUEST",
    message: `${what} needs a WebSocket connection: a participant lives as long as its socket`,
  });
}

/** Procedures of a room's call. */
export const callsRouter = router({
  /**
   * The ICE servers for the caller's peer connections: `{ iceServers: RTCIceServer[],
   * expiresAt: Date | null }`; the TURN entry's credential stops working at `expiresAt` (ask
   * again before then; see ice_servers.ts).
   */
  iceServers: authedProcedure.query(({ ctx }) => iceServersFor(ctx.calls, ctx.user.id)),

  /**
   * Joins the room's call over this WebSocket: `{ participantId, participants }`, the others
   * in the call, each with `polite`: whether the caller is the polite side toward them in the
   * perfect negotiation pattern. Joining again over the same socket returns the same
   * participant. The participant leaves with `calls.leave`, when the socket closes (keep-alive
   * included), or when the caller loses access to the room.
   * @throws `BAD_REQUEST` over HTTP; `NOT_FOUND` / `FORBIDDEN` for an unknown room or a
   * non-member; `CONFLICT` when the call is full (`CALL_MAX_PARTICIPANTS`);
   * `TOO_MANY_REQUESTS` past the joins rate.
   */
  join: writeProcedure("joins").input(roomInput).mutation(async ({ ctx, input }) => {
    const connection = requireWebSocket(ctx.connection.key, "calls.join");
    const { roomId } = input;
    const member = await memberOf(ctx.sql, { roomId, userId: ctx.user.id });
    const holder = { roomId, userId: ctx.user.id, tokenHash: ctx.tokenHash, expiresAt: 0 };
    const leave = () => ctx.hub.calls.leave(roomId, connection);
    let unwatch = () => {};
    const result = ctx.hub.calls.join(member, connection, ctx.calls.maxParticipants, () => {
      unwatch();
      ctx.connection.closed.removeEventListener("abort", leave);
    });
    if (result.status === "full") {
      throw new TRPCError({
        code: "CONFLICT",
        message: `The call is full: at most ${ctx.calls.maxParticipants} participants`,
      });
    }
    const { participant, others } = result;
    if (ctx.connection.closed.aborted) leave();
    else ctx.connection.closed.addEventListener("abort", leave, { once: true });
    unwatch = ctx.hub.watchAccess(holder, leave);
    return {
      participantId: participant.participantId,
      participants: others.map((other) => ({
        ...other,
        polite: isPolite(participant.participantId, other.participantId),
      })),
    };
  }),

  /** Leaves the room's call over this WebSocket: `{ left }` (false when not in it). */
  leave: authedProcedure.input(roomInput).mutation(({ ctx, input }) => {
    const connection = requireWebSocket(ctx.connection.key, "calls.leave");
    return { left: ctx.hub.calls.leave(input.roomId, connection) };
  }),

  /**
   * Relays one signal (`description` or `candidate`, exactly one) from the caller's participant
   * to participant `to` of the same call, in the order sent: `{ ok: true }`.
   * @throws `BAD_REQUEST` for anything but one bounded description or candidate, or over
   * HTTP; `FORBIDDEN` when this socket is not in the call; `NOT_FOUND` when `to` is not;
   * `TOO_MANY_REQUESTS` past the signals rate.
   */
  signal: sessionWriteProcedure("signals")
    .input(
      z.object({
        roomId: id,
        to: id,
        description: description.optional(),
        candidate: candidate.optional(),
      })
        .refine(
          (input) => (input.description === undefined) !== (input.candidate === undefined),
          "Pass a description or a candidate, exactly one",
        ),
    )
    .mutation(({ ctx, input }) => {
      const connection = requireWebSocket(ctx.connection.key, "calls.signal");
      const { roomId, to, ...payload } = input;
      const outcome = ctx.hub.calls.signal(roomId, connection, to, payload);
      if (outcome === "not_joined") {
        throw new TRPCError({ code: "FORBIDDEN", message: "Join the call before signalling" });
      }
      if (outcome === "unknown") {
        throw new TRPCError({ code: "NOT_FOUND", message: "No such participant in this call" });
      }
      return { ok: true as const };
    }),

  /**
   * The call events of the room for this WebSocket: `participant.joined` (with `polite`, once
   * this socket joined), `participant.left`, and the signals addressed to this socket's
   * participant, in the order sent (`CallEvent` in realtime/calls.ts). Subscribe before
   * `calls.join`: signals for a participant with no subscription are dropped. Members only; the
   * stream ends when the caller loses access.
   * @throws as `messages.onMessage` (cap, `UNAUTHORIZED`, `NOT_FOUND`, `FORBIDDEN`).
   */
  onEvent: sessionProcedure.input(roomInput).subscription(async function* ({ ctx, input, signal }) {
    const connection = requireWebSocket(ctx.connection.key, "calls.onEvent");
    const { roomId } = input;
    if (ctx.connection.subscriptions >= ctx.limits.subscriptionsPerSocket) {
      throw tooManySubscriptions(ctx.limits.subscriptionsPerSocket);
    }
    ctx.connection.subscriptions++;
    try {
      const access = await openRoom(ctx.sql, ctx.tokenHash, roomId);
      const inbox = new Inbox<CallEvent>(
        MAX_QUEUED_CALL_EVENTS,
        () => new TRPCError({ code: "TOO_MANY_REQUESTS", message: "Call events not read" }),
      );
      const holder = { roomId, userId: access.userId, tokenHash: ctx.tokenHash, expiresAt: 0 };
      const unwatch = ctx.hub.watchAccess(holder, (reason) => inbox.fail(accessEnded(reason)));
      const stop = ctx.hub.calls.listen(roomId, connection, (event) => inbox.push(event));
      try {
        yield* inbox.take(signal ?? new AbortController().signal);
      } finally {
        stop();
        unwatch();
      }
    } finally {
      ctx.connection.subscriptions--;
    }
  }),
});
