/**
 * Opening a subscription to a room (`messages.onMessage`, `rooms.onEvent`): the per-socket
 * cap, the access checks and their race with a leave or a sign-out, presence, and the hand-over
 * to a `RoomStream` of the hub's log.
 */
import { knownUserId, openRoom } from "./access.ts";
import type { Context } from "./context.ts";
import { accessEnded, subscriptionCancelled, tooManySubscriptions } from "./errors.ts";
import type { LiveMember } from "../db/events.ts";
import type { RoomLog } from "./realtime/room_log.ts";
import { resumePoint, RoomStream } from "./realtime/room_stream.ts";

/** What to open: which log, and the live items a subscriber gets once its replay is done. */
export interface RoomSubscriptionKind<T> {
  log: RoomLog<T>;
  /** Names the log's ids in resync errors. */
  what: "messages" | "events";
  /** Where the room's last id is in an access read: its last seq, or last event id. */
  lastId: "lastSeq" | "lastEventId";
  /** The live items describing the room now (see `RoomStreamOptions.snapshot`). */
  snapshot?: (member: LiveMember) => T[];
  /** Makes a new subscriber's filter of live items (see `RoomStreamOptions.admit`). */
  admit?: () => (value: T) => boolean;
}

/**
 * Opens `input.roomId` to the caller from `input.lastEventId` on. Access is checked and the
 * stream registered with the hub before tRPC answers "started": a client that sends right after
 * onStarted is already being listened to. The caller is online in the room (presence) until the
 * stream ends.
 * @throws `TOO_MANY_REQUESTS` past the per-socket subscription cap; `UNAUTHORIZED`,
 * `NOT_FOUND`, `FORBIDDEN` as `openRoom`; `PRECONDITION_FAILED` (resync) as `resumePoint`; `CLIENT_CLOSED_REQUEST`
 * when the subscriber went away during setup.
 */
export async function openRoomSubscription<T>(
  ctx: Context & { tokenHash: string },
  input: { roomId: string; lastEventId?: string | null },
  signal: AbortSignal | undefined,
  kind: RoomSubscriptionKind<T>,
): Promise<RoomStream<T>> {
  const { roomId } = input;
  const { connection } = ctx;
  if (connection.subscriptions >= ctx.limits.subscriptionsPerSocket) {
    throw tooManySubscriptions(ctx.limits.subscriptionsPerSocket);
  }
  connection.subscriptions++;
  let unwatch = () => {};
  let offline = () => {};
  let member: LiveMember | null = null;
  const stream = new RoomStream<T>({
    log: kind.log,
    roomId,
    onStop() {
      connection.subscriptions--;
      unwatch();
      offline();
    },
    snapshot: kind.snapshot && (() => member ? kind.snapshot!(member) : []),
    admit: kind.admit?.(),
  });
  // The subscriber may go away during setup, or before the stream is first read.
  signal?.addEventListener("abort", () => stream.stop(), { once: true });
  // Watch for a leave or logout before checking access, so one that commits meanwhile is
  // never missed: during setup it only asks for a second check.
  const holder = {
    roomId,
    userId: knownUserId(ctx.tokenHash) ?? "",
    tokenHash: ctx.tokenHash,
    expiresAt: 0,
  };
  let settingUp = true;
  let recheck = false;
  unwatch = ctx.hub.watchAccess(holder, (reason) => {
    if (settingUp) recheck = true;
    else stream.fail(accessEnded(reason));
  });
  try {
    let access = await openRoom(ctx.sql, ctx.tokenHash, roomId);
    holder.userId = access.userId;
    // Until no leave or logout came in during the last read.
    while (recheck) {
      recheck = false;
      access = await openRoom(ctx.sql, ctx.tokenHash, roomId);
    }
    holder.expiresAt = access.expiresAt;
    settingUp = false;
    ctx.sessions.used(ctx.tokenHash);
    if (signal?.aborted) throw subscriptionCancelled();
    const lastId = access[kind.lastId];
    stream.resumeAfter(resumePoint(input.lastEventId, lastId, kind.what), lastId);
    member = access.member;
    offline = ctx.hub.presence.enter(access.member);
  } catch (error) {
    stream.stop();
    throw error;
  }
  return stream;
}
