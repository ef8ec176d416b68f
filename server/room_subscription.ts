/**
 * Opening a subscription to a room (`messages.onMessage`, `rooms.onEvent`): the per-socket
 * cap, the access checks and their race with a leave or a sign-out, presence, and the hand-over
 * to a `RoomStream` of the hub's log.
 */
import { knownUserId, openRoom, type RoomOpening } from "./access.ts";
import type { Context } from "./context.ts";
import { accessEnded, subscriptionCancelled, tooManySubscriptions } from "./errors.ts";
import type { LiveMember } from "../db/events.ts";
import type { Revocation } from "./realtime/hub.ts";
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
  let stopped = false;
  let member: LiveMember | null = null;
  const stream = new RoomStream<T>({
    log: kind.log,
    roomId,
    onStop() {
      stopped = true;
      connection.subscriptions--;
      unwatch();
      offline();
    },
    snapshot: kind.snapshot && (() => member ? kind.snapshot!(member) : []),
    admit: kind.admit?.(),
  });
  // The subscriber may go away during setup, or before the stream is first read.
  signal?.addEventListener("abort", () => stream.stop(), { once: true });
  try {
    const watched = await watchRoomAccess(ctx, roomId, (reason) => {
      stream.fail(accessEnded(reason));
    });
    if (stopped || signal?.aborted) {
      watched.unwatch();
      throw subscriptionCancelled();
    }
    unwatch = watched.unwatch;
    const { access } = watched;
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

/**
 * Reads the caller's access to a room (session, membership) while watching it, as every open
 * subscription and call participant does: the watch starts before the read, so a leave or
 * sign-out that commits meanwhile is never missed (it only asks for another read), and the
 * session's expiry is watched from then on. `onLost` runs, after the setup, when the access goes
 * (leave, sign-out, revocation, expiry, account deletion, on any instance). Returns what was
 * read and the function that stops watching.
 * @throws `UNAUTHORIZED`, `NOT_FOUND`, `FORBIDDEN` as `openRoom` (nothing is left watched).
 */
export async function watchRoomAccess(
  ctx: Context & { tokenHash: string },
  roomId: string,
  onLost: (reason: Revocation) => void,
): Promise<{ access: RoomOpening; unwatch: () => void }> {
  const holder = {
    roomId,
    userId: knownUserId(ctx.tokenHash) ?? "",
    tokenHash: ctx.tokenHash,
    expiresAt: 0,
  };
  let settingUp = true;
  let recheck = false;
  const unwatch = ctx.hub.watchAccess(holder, (reason) => {
    if (settingUp) recheck = true;
    else onLost(reason);
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
    ctx.hub.checked(holder);
    ctx.sessions.used(ctx.tokenHash);
    return { access, unwatch };
  } catch (error) {
    unwatch();
    throw error;
  }
}
