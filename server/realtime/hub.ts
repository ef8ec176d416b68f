/**
 * The hub: local fan-out of what rooms commit to this instance's subscribers, in order,
 * exactly once, whichever instance stored it. It keeps two room logs (`room_log.ts`): messages
 * by seq (`messages.onMessage`) and events by event id (`rooms.onEvent`), and the live-only
 * items (presence, typing) that go to event subscribers. It also watches subscribers' access
 * and ends their subscriptions when it goes away.
 *
 * When the broadcast can lose notifications (`Broadcast.lossy`), the hub reads the watched
 * rooms' last seqs and event ids every `reconcileMs` in one query and catches up the rooms that
 * are behind (a message committed by a process that died before announcing it).
 */
import {
  listEvents,
  type LiveEvent,
  messageEvent,
  type NumberedEvent,
  type RoomEvent,
} from "../../db/events.ts";
import { listMessages, type Message } from "../../db/messages.ts";
import type { Sql } from "../../db/mod.ts";
import { getRoomPositions, type MemberKey } from "../../db/rooms.ts";
import { withDeadline } from "../deadline.ts";
import type { Logger } from "../log.ts";
import type { Broadcast, HeartbeatTimings, LiveItem } from "./broadcast.ts";
import { Calls } from "./calls.ts";
import { Presence, type PresenceTimings } from "./presence.ts";
import { RoomLog } from "./room_log.ts";
import { Typing } from "./typing.ts";

/** The live items that tell a change, left out while no other instance is known. */
const CHANGES = new Set<LiveItem["k"]>(["presence", "typing", "call.join", "call.leave"]);

/** How one reconciliation query may take before the next one is scheduled anyway. */
const RECONCILE_DEADLINE_MS = 10_000;

/** Between reconciliations of the watched rooms, in milliseconds (none while none is watched). */
export const DEFAULT_RECONCILE_MS = 2_000;

/**
 * Who holds a subscription, to end it when their access goes away. `userId` is "" while the
 * holder is being set up and its user is not known yet.
 */
export interface Holder {
  roomId: string;
  userId: string;
  tokenHash: string;
  /**
   * When the holder's session expires unless used meanwhile, in ms since the epoch; 0 while
   * unknown. The hub checks the session again at that time (see `HubOptions.checkHolders`).
   */
  expiresAt: number;
}

/** What a check found of one holder's access (see `HubOptions.checkHolders`). */
export interface HolderState {
  /** False when the session ended (signed out, revoked, expired, account deleted). */
  session: boolean;
  /** False when the user is no longer a member of the room. */
  member: boolean;
  /** When the session expires now, in ms since the epoch. */
  expiresAt: number;
}

/** Why a holder lost access: it left the room, its session ended, or a check found it gone. */
export type Revocation = "left" | "logged_out" | "revoked";

/** How often holders whose session may have expired are looked for, in milliseconds. */
const EXPIRY_SWEEP_MS = 1000;

/** How often the hub and its broadcast check on things, in milliseconds (tests shorten them). */
export interface HubTimings extends HeartbeatTimings {
  /** Between reconciliations of the watched rooms (none while no room is watched). */
  reconcileMs: number;
}

/** Options of a `Hub`. */
export interface HubOptions {
  /** How other instances hear of this one's messages and access changes, and it of theirs. */
  broadcast: Broadcast;
  /** Serialises an item into a data frame suffix under `id` (see `FanoutItem`). */
  encode: (value: unknown, id: number) => string;
  /** Reads the holders' sessions and memberships, in their order (see `access.ts`). */
  checkHolders: (holders: Holder[]) => Promise<HolderState[]>;
  /** Between reconciliations, in milliseconds (default `DEFAULT_RECONCILE_MS`). */
  reconcileMs?: number;
  /** Presence heartbeat and timeout (tests shorten them; see `presence.ts`). */
  presenceTimings?: Partial<PresenceTimings>;
}

/** The per-process fan-out hub. */
export class Hub {
  /** Committed messages by seq, for `messages.onMessage`. */
  readonly messages: RoomLog<Message>;
  /** Stored events by event id, and live items, for `rooms.onEvent`. */
  readonly events: RoomLog<RoomEvent>;
  /** Who is online in which room, on every instance. */
  readonly presence: Presence;
  /** Who is typing in which room, on every instance. */
  readonly typing: Typing;
  /** Who is in which room's call, on every instance, and the relay of their signals. */
  readonly calls: Calls;
  #sql: Sql;
  #log: Logger;
  #broadcast: Broadcast;
  #checkHolders: (holders: Holder[]) => Promise<HolderState[]>;
  #expiryCheck: Promise<void> | null = null;
  #reconcileMs: number;
  #holders = new Map<Holder, (reason: Revocation) => void>();
  /** `<token hash>:<room id>` → how many checked holders are that session in that room. */
  #held = new Map<string, number>();
  /** The holders whose access was checked (see `checked`). */
  #checked = new Set<Holder>();
  #closed = false;
  #timers = new Set<ReturnType<typeof setTimeout>>();
  #reconcileFailing = false;

  /** `sql` is the pool catch-up reads go through (it may be a pooler). */
  constructor(sql: Sql, log: Logger, options: HubOptions) {
    this.#sql = sql;
    this.#log = log;
    this.#broadcast = options.broadcast;
    this.#checkHolders = options.checkHolders;
    this.#reconcileMs = options.reconcileMs ?? DEFAULT_RECONCILE_MS;
    const later = (ms: number, fn: () => void) => this.#later(ms, fn);
    this.messages = new RoomLog<Message>({
      name: "messages",
      async read(roomId, afterId, limit) {
        const messages = await listMessages(sql, roomId, { afterSeq: afterId, limit });
        return messages.map((message) => ({ id: message.seq, value: message }));
      },
      encode: options.encode,
      log,
      later,
    });
    this.events = new RoomLog<RoomEvent>({
      name: "events",
      async read(roomId, afterId, limit) {
        const events = await listEvents(sql, roomId, afterId, limit);
        return events.map(({ eventId, event }) => ({ id: eventId, value: event }));
      },
      encode: options.encode,
      log,
      later,
    });
    const publish = (roomId: string, event: LiveEvent) => this.events.publish(roomId, event);
    // Alone (no other instance heard), a change of presence, typing or a call has nobody to
    // tell. Snapshots always go out, and the first instance heard is sent one (presence.ts).
    const announce = (item: LiveItem, snapshot = false) => {
      if (snapshot || !CHANGES.has(item.k) || this.presence.hasPeers()) {
        this.#broadcast.announceLive(item);
      }
    };
    const instanceId = crypto.randomUUID();
    this.presence = new Presence({
      instanceId,
      announce,
      later,
      onChange: (roomId, online) => publish(roomId, { type: "presence.changed", online }),
      onOffline: (roomId, userId) => this.typing.clear(roomId, userId),
      onInstanceGone: (instanceId) => this.calls.forgetInstance(instanceId),
      onFirstPeer: () => this.calls.resync(),
      ...options.presenceTimings,
    });
    this.typing = new Typing({
      instanceId,
      announce,
      onChange: (roomId, typing) => publish(roomId, { type: "typing.changed", typing }),
    });
    this.calls = new Calls({ instanceId, announce, later });
  }

  /**
   * Starts hearing other instances (see `Broadcast.start`, whose errors it passes on) and,
   * when the broadcast is lossy, the reconciliation.
   */
  async start(): Promise<void> {
    await this.#broadcast.start({
      onMessages: (roomId, seq, eventId) => {
        this.messages.announced(roomId, seq);
        this.events.announced(roomId, eventId);
      },
      onEvents: (roomId, eventId) => this.events.announced(roomId, eventId),
      onAccess: (item) => this.#onAccess(item),
      onLive: (item) => {
        if (item.k === "typing") return this.typing.heard(item);
        if (item.k.startsWith("call.")) return this.calls.heard(item);
        this.presence.heard(item);
        if (item.k === "hello" || item.k === "bye") this.calls.heard(item);
      },
      // After a (re)connect or a replacement, anything may have been missed.
      onMessagesResumed: () => {
        this.messages.catchUpAll();
        this.events.catchUpAll();
      },
      onAccessResumed: () => this.#revalidate(),
      onLiveResumed: () => {
        this.presence.resync();
        this.calls.resync();
      },
    });
    if (this.#broadcast.lossy) this.#later(this.#reconcileMs, () => this.#reconcile());
    this.#later(EXPIRY_SWEEP_MS, () => this.#sweepExpired());
    this.presence.start();
  }

  /** Stops the timers and the broadcast (pending announcements are sent first). */
  async close(): Promise<void> {
    this.presence.close();
    this.typing.close();
    this.#closed = true;
    for (const timer of this.#timers) clearTimeout(timer);
    await this.#broadcast.close();
  }

  /**
   * A message this instance committed, with its id in the room's event order: delivered here
   * (as a message and as a `message.created` event), and announced to other instances.
   */
  committed(message: Message, eventId: number): void {
    this.messages.committed(message.roomId, message.seq, message);
    // The event is built only for a room someone here follows by events (a copy per message).
    if (this.events.watches(message.roomId)) {
      this.events.committed(message.roomId, eventId, messageEvent("message.created", message));
    }
    this.#broadcast.announceMessage(message.roomId, message.seq, eventId);
  }

  /** A stored event (not a new message) this instance committed: delivered and announced. */
  committedEvent(roomId: string, { eventId, event }: NumberedEvent): void {
    this.events.committed(roomId, eventId, event);
    this.#broadcast.announceEvent(roomId, eventId);
  }

  /** The LISTEN connection's state (see `Broadcast.listenState`); null without one. */
  listenState(): { up: boolean; replacements: number } | null {
    return this.#broadcast.listenState();
  }

  /** What the hub holds: watched rooms, subscribers, access watchers. */
  stats(): { rooms: number; listeners: number; holders: number } {
    const messages = this.messages.stats();
    const events = this.events.stats();
    return {
      rooms: messages.rooms + events.rooms,
      listeners: messages.listeners + events.listeners,
      holders: this.#holders.size,
    };
  }

  /**
   * Calls `onRevoke` when the holder leaves the room, or their session ends (sign-out,
   * revocation, account deletion: on any instance; expiry: found by this hub at `expiresAt`).
   */
  watchAccess(holder: Holder, onRevoke: (reason: Revocation) => void): () => void {
    this.#holders.set(holder, onRevoke);
    return () => {
      if (!this.#holders.delete(holder)) return;
      if (!this.#checked.delete(holder)) return;
      const key = `${holder.tokenHash}:${holder.roomId}`;
      const left = this.#held.get(key)! - 1;
      if (left === 0) this.#held.delete(key);
      else this.#held.set(key, left);
    };
  }

  /**
   * Notes that a watched holder's access was checked (after `watchAccess`, once its session and
   * membership were read): from now until it is unwatched, `holds` counts it.
   */
  checked(holder: Holder): void {
    if (!this.#holders.has(holder) || this.#checked.has(holder)) return;
    this.#checked.add(holder);
    const key = `${holder.tokenHash}:${holder.roomId}`;
    this.#held.set(key, (this.#held.get(key) ?? 0) + 1);
  }

  /**
   * Whether the session of `tokenHash` holds a checked subscription (or call) in the room here:
   * its access was read when it opened and is watched since (it ends when the session expires
   * or ends, or the membership does), so a call about the room with that token needs no read.
   */
  holds(tokenHash: string, roomId: string): boolean {
    return this.#held.has(`${tokenHash}:${roomId}`);
  }

  /** Announces that a user left a room: their subscriptions to it end on every instance. */
  async announceLeave({ roomId, userId }: MemberKey): Promise<void> {
    await this.#announceAccess(`leave:${roomId}:${userId}`);
  }

  /** Announces that a token's session ended: its subscriptions end on every instance. */
  async announceLogout(tokenHash: string): Promise<void> {
    await this.#announceAccess(`logout:${tokenHash}`);
  }

  /** Announces that these sessions ended (`announceLogout` for each). */
  async announceLogouts(tokenHashes: readonly string[]): Promise<void> {
    for (const tokenHash of tokenHashes) await this.announceLogout(tokenHash);
  }

  /**
   * Announces that an account was deleted: its subscriptions end on every instance, and the
   * rooms' recent messages and events in memory are dropped where they hold its messages, so
   * that replays read them from Postgres as a deleted user's (see db/accounts.ts).
   */
  async announceAccountDeleted(userId: string, tokenHashes: readonly string[]): Promise<void> {
    await this.#announceAccess(`deleted:${userId}`);
    // Also as sign-outs, which instances of the previous release understand (rolling deploys).
    await this.announceLogouts(tokenHashes);
  }

  /**
   * Announces that a message of the room was edited or deleted: every instance drops the
   * room's messages and events in memory, so replays read them as they are now and deleted
   * text is never sent again.
   */
  async announceRedaction(roomId: string): Promise<void> {
    await this.#announceAccess(`redact:${roomId}`);
  }

  /** Ends this instance's affected subscriptions at once, then tells the other instances. */
  async #announceAccess(item: string): Promise<void> {
    this.#onAccess(item);
    await this.#broadcast.announceAccess(item);
  }

  #later(ms: number, fn: () => void): void {
    if (this.#closed) return;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      fn();
    }, ms);
    this.#timers.add(timer);
  }

  /**
   * Reads the last seq of every watched room in one query and catches up those that are
   * behind: a committed message whose announcement was lost reaches subscribers within
   * `reconcileMs` and a catch-up. No query while no room is watched.
   */
  #reconcile(): void {
    const messages = this.messages.cursors();
    const events = this.events.cursors();
    const roomIds = [...new Set([...messages.keys(), ...events.keys()])];
    if (roomIds.length === 0) {
      this.#later(this.#reconcileMs, () => this.#reconcile());
      return;
    }
    // Bounded: a query stuck on a dead pool connection must not end the reconciliation.
    withDeadline(RECONCILE_DEADLINE_MS, () => getRoomPositions(this.#sql, roomIds)).then(
      (positions) => {
        this.#reconcileFailing = false;
        for (const [roomId, seq] of messages) {
          const lastSeq = positions.get(roomId)?.lastSeq ?? 0;
          if (lastSeq > seq) this.messages.announced(roomId, lastSeq);
        }
        for (const [roomId, eventId] of events) {
          const lastEventId = positions.get(roomId)?.lastEventId ?? 0;
          if (lastEventId > eventId) this.events.announced(roomId, lastEventId);
        }
      },
    ).catch((error) => {
      // An outage: logged once, tried again at every interval.
      if (!this.#reconcileFailing && !this.#closed) {
        this.#log.error("Cannot reconcile watched rooms: retrying", error);
      }
      this.#reconcileFailing = true;
    }).finally(() => this.#later(this.#reconcileMs, () => this.#reconcile()));
  }

  #revalidate(): void {
    // Holders still being set up read their access again (their callback asks for it).
    const all = [...this.#holders];
    for (const [holder, onRevoke] of all) if (holder.userId === "") onRevoke("revoked");
    const holders = all.filter(([holder]) => holder.userId !== "");
    this.#check(holders).catch((error) => {
      this.#log.error("Cannot re-check subscribers' access: retrying in 1s", error);
      this.#later(1000, () => this.#revalidate());
    });
  }

  /** Checks the holders' access and ends the subscriptions of those who lost it. */
  async #check(holders: [Holder, (reason: Revocation) => void][]): Promise<void> {
    if (holders.length === 0) return;
    const states = await this.#checkHolders(holders.map(([holder]) => holder));
    states.forEach((state, i) => {
      const [holder, onRevoke] = holders[i];
      if (!state.session) onRevoke("logged_out");
      else if (!state.member) onRevoke("revoked");
      else holder.expiresAt = state.expiresAt;
    });
  }

  /**
   * Every `EXPIRY_SWEEP_MS`: the holders whose session expiry has come are checked again (a
   * use elsewhere may have extended it); those whose session did expire end with
   * `UNAUTHORIZED`. One check at a time.
   */
  #sweepExpired(): void {
    this.#later(EXPIRY_SWEEP_MS, () => this.#sweepExpired());
    if (this.#expiryCheck) return;
    const now = Date.now();
    const due = [...this.#holders].filter(([holder]) =>
      holder.expiresAt > 0 && holder.expiresAt <= now
    );
    if (due.length === 0) return;
    this.#expiryCheck = this.#check(due).catch((error) => {
      const code = (error as { code?: string }).code ?? (error as Error).message;
      this.#log.warn(`Cannot check expiring sessions (${code}): retrying`);
    }).finally(() => {
      this.#expiryCheck = null;
    });
  }

  #onAccess(item: string): void {
    const [kind, a, b] = item.split(":");
    if (kind === "redact") {
      this.messages.forgetRoom(a);
      this.events.forgetRoom(a);
      return;
    }
    if (kind === "deleted") {
      this.messages.forget((message) => message.userId === a);
      // Messages, reactions and memberships name the user by `userId`.
      this.events.forget((event) => "userId" in event && event.userId === a);
      this.typing.clearUser(a);
    }
    if (kind === "leave") this.typing.clear(a, b);
    for (const [holder, onRevoke] of this.#holders) {
      // A holder still being set up may not know its user yet: it checks again itself.
      const unknown = holder.userId === "";
      if (kind === "leave" && holder.roomId === a && (unknown || holder.userId === b)) {
        onRevoke("left");
      }
      if (kind === "logout" && holder.tokenHash === a) onRevoke("logged_out");
      if (kind === "deleted" && (unknown || holder.userId === a)) onRevoke("logged_out");
    }
  }
}
