/**
 * `calls.*`: a room's video call. ICE servers (TURN credentials that expire), joining and
 * leaving (one participant per WebSocket connection), the relay of WebRTC signals between two
 * participants, and each participant's stream of call events. Authorised like messages: only
 * members of the room, checked in Postgres; nothing is stored.
 */
import { TRPCError } from "@trpc/server";
import { z } from "zod";
import { accessEnded, subscriptionCancelled, tooManySubscriptions } from "../errors.ts";
import { iceServersFor } from "../ice_servers.ts";
import { type CallEvent, isPolite, type Participant } from "../realtime/calls.ts";
import { Inbox } from "../realtime/inbox.ts";
import { watchRoomAccess } from "../room_subscription.ts";
import { id, text } from "../schemas.ts";
import {
  authedProcedure,
  router,
  sessionProcedure,
  sessionWriteProcedure,
  writeProcedure,
} from "../trpc.ts";

/** Longest SDP accepted, in UTF-8 bytes (a browser's offer for audio and video is 3-8 KiB). */
export const MAX_SDP_BYTES = 32 * 1024;

/** Longest ICE candidate line (RFC 8839 §5.1; real ones are under 300 characters). */
export const MAX_CANDIDATE_CHARS = 1024;

/** Most call events queued for a subscriber that does not read; past it the stream ends. */
const MAX_QUEUED_CALL_EVENTS = 1000;

const roomInput = z.object({ roomId: id });

const encoder = new TextEncoder();

/** An `RTCSessionDescriptionInit`. */
const description = z.strictObject({
  type: z.enum(["offer", "answer", "pranswer", "rollback"]),
  sdp: text.max(MAX_SDP_BYTES).refine(
    (sdp) => encoder.encode(sdp).byteLength <= MAX_SDP_BYTES,
    `An SDP holds at most ${MAX_SDP_BYTES} bytes`,
  ).optional(),
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
   * included), when its socket's `calls.onEvent` for the room ends (or none opens within 10 s:
   * signals that come before it are kept for it), or when the caller loses access to the room
   * (leave, sign-out, session expiry, account deletion).
   * @throws `BAD_REQUEST` over HTTP; `NOT_FOUND` / `FORBIDDEN` for an unknown room or a
   * non-member; `CONFLICT` when the call is full (`CALL_MAX_PARTICIPANTS`);
   * `TOO_MANY_REQUESTS` past the joins rate.
   */
  join: writeProcedure("joins").input(roomInput).mutation(async ({ ctx, input }) => {
    const connection = requireWebSocket(ctx.connection.key, "calls.join");
    const { roomId } = input;
    const { calls } = ctx.hub;
    const answer = (participantId: string, others: Participant[]) => ({
      participantId,
      participants: others.map((other) => ({
        ...other,
        polite: isPolite(participantId, other.participantId),
      })),
    });
    const existing = calls.participantOf(roomId, connection);
    if (existing) {
      const others = calls.participants(roomId).filter((p) => p !== existing);
      return answer(existing.participantId, others);
    }
    // Watched from before the read: a sign-out, a leave or an expiry takes it out of the call.
    const leave = () => calls.leave(roomId, connection);
    const { access, unwatch } = await watchRoomAccess(ctx, roomId, leave);
    const result = calls.join(access.member, connection, ctx.calls.maxParticipants, () => {
      unwatch();
      ctx.connection.closed.removeEventListener("abort", leave);
    });
    if (result.status === "full") {
      unwatch();
      throw new TRPCError({
        code: "CONFLICT",
        message: `The call is full: at most ${ctx.calls.maxParticipants} participants`,
      });
    }
    if (ctx.connection.closed.aborted) leave();
    else ctx.connection.closed.addEventListener("abort", leave, { once: true });
    return answer(result.participant.participantId, result.others);
  }),

  /**
   * Leaves the room's call over this WebSocket: `{ left }` (false when not in it). Needs no live
   * session: leaving is always allowed.
   */
  leave: sessionProcedure.input(roomInput).mutation(({ ctx, input }) => {
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
  onEvent: sessionProcedure.input(roomInput).subscription(async ({ ctx, input, signal }) => {
    // Access is checked and the listener registered before tRPC answers "started": a client
    // that joins right after onStarted gets every signal addressed to it.
    const connection = requireWebSocket(ctx.connection.key, "calls.onEvent");
    const { roomId } = input;
    if (ctx.connection.subscriptions >= ctx.limits.subscriptionsPerSocket) {
      throw tooManySubscriptions(ctx.limits.subscriptionsPerSocket);
    }
    const inbox = new Inbox<CallEvent>(
      MAX_QUEUED_CALL_EVENTS,
      () => new TRPCError({ code: "TOO_MANY_REQUESTS", message: "Call events not read" }),
    );
    ctx.connection.subscriptions++;
    let unwatch: () => void;
    try {
      ({ unwatch } = await watchRoomAccess(ctx, roomId, (reason) => {
        inbox.fail(accessEnded(reason));
      }));
    } catch (error) {
      ctx.connection.subscriptions--;
      throw error;
    }
    if (signal?.aborted) {
      unwatch();
      ctx.connection.subscriptions--;
      throw subscriptionCancelled();
    }
    const stop = ctx.hub.calls.listen(roomId, connection, (event) => inbox.push(event));
    const stopped = new AbortController();
    signal?.addEventListener("abort", () => stopped.abort(), { once: true });
    return (async function* () {
      try {
        yield* inbox.take(stopped.signal);
      } finally {
        stop();
        unwatch();
        ctx.connection.subscriptions--;
      }
    })();
  }),
});
