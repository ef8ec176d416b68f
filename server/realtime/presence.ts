/**
 * Presence: who is online in which room, on every instance. A member is online in a room while
 * they hold at least one open subscription to it (`messages.onMessage` or `rooms.onEvent`) on
 * any instance. Nothing is stored: each instance counts its own subscribers and tells the
 * others when a member comes or goes (`LiveItem`s on the broadcast); it also says it is alive
 * every `heartbeatMs`, and the members of an instance not heard for `timeoutMs` go offline
 * (an instance that died). A `hello` (at start, and after listening again) asks every instance
 * to send its members again, so presence heals after lost notifications.
 *
 * Changes are published per room as the whole online list, coalesced over `COALESCE_MS` (a
 * storm of reconnects is one change, not thousands), as Centrifugo and Phoenix do with their
 * presence diffs.
 */
import type { LiveMember } from "../../db/events.ts";
import type { LiveItem } from "./broadcast.ts";

/** Between "alive" heartbeats of an instance, in milliseconds. */
export const PRESENCE_HEARTBEAT_MS = 5_000;

/**
 * An instance not heard for this long is dead: its members go offline, in milliseconds. With
 * a heartbeat every 5 s and a sweep every second, an instance that dies takes its members
 * offline for everyone else within 21 s (the contract says 30).
 */
export const PRESENCE_TIMEOUT_MS = 20_000;

/** Between sweeps for dead instances, in milliseconds. */
const SWEEP_MS = 1_000;

/**
 * Presence changes of a room within a window are published once: 50 ms, growing by 5 ms per
 * member online beyond ten up to 2 s. Every change sends the whole list to every subscriber
 * (N² bytes for N people arriving together), so a big room gets fewer, bigger updates.
 */
function coalesceMs(online: number): number {
  return Math.min(2_000, Math.max(50, online * 5));
}

/** The presence timings (tests shorten them). */
export interface PresenceTimings {
  heartbeatMs: number;
  timeoutMs: number;
}

/** Options of `Presence`. */
export interface PresenceOptions extends Partial<PresenceTimings> {
  /** This instance's id in live items. */
  instanceId: string;
  /**
   * Sends a live item to the other instances; `snapshot` for the items of a whole list (sent
   * even while no other instance is known).
   */
  announce(item: LiveItem, snapshot?: boolean): void;
  /** Publishes a room's online members after a change. */
  onChange(roomId: string, online: LiveMember[]): void;
  /** A member went offline in a room (their typing ends). */
  onOffline(roomId: string, userId: string): void;
  /** Another instance was given up (it said bye, or was not heard for `timeoutMs`). */
  onInstanceGone(instanceId: string): void;
  /**
   * The first other instance was heard (after none): changes were not sent while alone, so
   * this instance's members were sent to it; send the rest (calls) too.
   */
  onFirstPeer(): void;
  /** Runs `fn` in `ms` unless the hub closed meanwhile. */
  later(ms: number, fn: () => void): void;
}

/** One member's subscriptions to a room on this instance. */
interface Local {
  member: LiveMember;
  subscriptions: number;
}

/** What another instance told of its members. */
interface Remote {
  /** When it was last heard, in ms since the epoch. */
  heardAt: number;
  /** Room id → user id → member. */
  rooms: Map<string, Map<string, LiveMember>>;
  /**
   * Its members being sent again (after its `reset`, until `synced`): they replace `rooms` in
   * one step, so nobody flaps offline and back.
   */
  incoming: Map<string, Map<string, LiveMember>> | null;
}

/** Presence across instances. */
export class Presence {
  readonly #options: PresenceOptions;
  readonly #heartbeatMs: number;
  readonly #timeoutMs: number;
  /** Room id → user id → this instance's subscriptions. */
  #local = new Map<string, Map<string, Local>>();
  #remote = new Map<string, Remote>();
  /** Rooms whose change is about to be published, with who was online before it. */
  #changed = new Map<string, Set<string>>();
  #closed = false;

  constructor(options: PresenceOptions) {
    this.#options = options;
    this.#heartbeatMs = options.heartbeatMs ?? PRESENCE_HEARTBEAT_MS;
    this.#timeoutMs = options.timeoutMs ?? PRESENCE_TIMEOUT_MS;
  }

  /**
   * Starts the heartbeat and the sweep. (The hello that asks the others for their members goes
   * out when the broadcast starts listening: see `resync`.)
   */
  start(): void {
    this.#beat();
    this.#sweep();
  }

  /** Tells the others this instance's members are gone (a graceful stop). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#announce({ k: "bye", i: this.#options.instanceId });
  }

  /**
   * A subscription of `member` to their room opened here: they are online until the function
   * returned is called (idempotent) and no other subscription of theirs remains.
   */
  enter(member: LiveMember): () => void {
    const { roomId, userId } = member;
    let room = this.#local.get(roomId);
    if (!room) this.#local.set(roomId, room = new Map());
    const local = room.get(userId);
    if (local) {
      local.subscriptions++;
    } else {
      this.#willChange(roomId);
      room.set(userId, { member, subscriptions: 1 });
      this.#announce({
        k: "presence",
        i: this.#options.instanceId,
        r: roomId,
        m: member,
        on: true,
      });
    }
    let left = false;
    return () => {
      if (left) return;
      left = true;
      const current = this.#local.get(roomId)?.get(userId);
      if (!current || --current.subscriptions > 0) return;
      this.#willChange(roomId);
      this.#local.get(roomId)!.delete(userId);
      if (this.#local.get(roomId)!.size === 0) this.#local.delete(roomId);
      this.#announce({
        k: "presence",
        i: this.#options.instanceId,
        r: roomId,
        m: member,
        on: false,
      });
    };
  }

  /** The members online in a room, on any instance, earliest joined first. */
  online(roomId: string): LiveMember[] {
    const members = new Map<string, LiveMember>();
    for (const { member } of this.#local.get(roomId)?.values() ?? []) {
      members.set(member.userId, member);
    }
    for (const remote of this.#remote.values()) {
      for (const member of remote.rooms.get(roomId)?.values() ?? []) {
        if (!members.has(member.userId)) members.set(member.userId, member);
      }
    }
    return [...members.values()].sort((a, b) =>
      a.joinedAt.getTime() - b.joinedAt.getTime() || (a.userId < b.userId ? -1 : 1)
    );
  }

  /**
   * The member, when they hold a subscription to the room on this instance: their access was
   * checked when it opened, and the hub ends it when that access goes (leave, sign-out,
   * expiry), so a call of theirs about the room needs no read to know they are a member.
   */
  localMember(roomId: string, userId: string): LiveMember | null {
    return this.#local.get(roomId)?.get(userId)?.member ?? null;
  }

  /** Members online in a room through this instance's subscriptions (a member per room). */
  localCount(): number {
    let members = 0;
    for (const room of this.#local.values()) members += room.size;
    return members;
  }

  /** Whether another instance is known (heard lately): live items have someone to reach. */
  hasPeers(): boolean {
    return this.#remote.size > 0;
  }

  /** A live item from another instance. */
  heard(item: LiveItem): void {
    const now = Date.now();
    if (item.k === "bye") return this.#forget(item.i);
    const alone = this.#remote.size === 0;
    let remote = this.#remote.get(item.i);
    if (!remote) {
      this.#remote.set(item.i, remote = { heardAt: now, rooms: new Map(), incoming: null });
      // An instance heard for the first time (or again after it was given up) that is not
      // sending its members already: ask everyone for theirs.
      if (item.k !== "hello" && item.k !== "reset") {
        this.#announce({ k: "hello", i: this.#options.instanceId });
      }
    }
    remote.heardAt = now;
    switch (item.k) {
      case "hello":
        this.#sendAll();
        break;
      case "reset":
        remote.incoming = new Map();
        break;
      case "synced": {
        const incoming = remote.incoming;
        if (incoming === null) break;
        remote.incoming = null;
        for (const roomId of new Set([...remote.rooms.keys(), ...incoming.keys()])) {
          const before = remote.rooms.get(roomId);
          const after = incoming.get(roomId);
          const same = before?.size === after?.size &&
            [...before?.keys() ?? []].every((userId) => after?.has(userId));
          if (!same) this.#willChange(roomId);
        }
        remote.rooms = incoming;
        break;
      }
      case "alive":
        break;
      case "presence": {
        const member = { ...item.m, joinedAt: new Date(item.m.joinedAt) };
        const rooms = remote.incoming ?? remote.rooms;
        let room = rooms.get(item.r);
        const live = rooms === remote.rooms;
        if (item.on) {
          if (!room) rooms.set(item.r, room = new Map());
          if (live) this.#willChange(item.r);
          room.set(member.userId, member);
        } else if (room?.has(member.userId)) {
          if (live) this.#willChange(item.r);
          room.delete(member.userId);
          if (room.size === 0) rooms.delete(item.r);
        }
        break;
      }
    }
    // Changes were not sent while alone: the first instance heard gets everything (after a
    // hello it was sent already).
    if (alone && item.k !== "hello") {
      this.#sendAll();
      this.#options.onFirstPeer();
    }
  }

  /** Listening again after a loss: everyone (this instance too) sends their members again. */
  resync(): void {
    this.#announce({ k: "hello", i: this.#options.instanceId });
    this.#sendAll();
  }

  /**
   * This instance's members, between a `reset` and a `synced` (they replace what the others
   * knew of it in one step), for an instance that said hello.
   */
  #sendAll(): void {
    const i = this.#options.instanceId;
    this.#announce({ k: "reset", i }, true);
    for (const [roomId, room] of this.#local) {
      for (const { member } of room.values()) {
        this.#announce({ k: "presence", i, r: roomId, m: member, on: true }, true);
      }
    }
    this.#announce({ k: "synced", i }, true);
  }

  /** Drops what another instance told (it said bye, or was not heard for `timeoutMs`). */
  #forget(instanceId: string): void {
    const remote = this.#remote.get(instanceId);
    if (!remote) return;
    for (const roomId of remote.rooms.keys()) this.#willChange(roomId);
    this.#remote.delete(instanceId);
    this.#options.onInstanceGone(instanceId);
  }

  #beat(): void {
    if (this.#closed) return;
    this.#announce({ k: "alive", i: this.#options.instanceId });
    this.#options.later(this.#heartbeatMs, () => this.#beat());
  }

  /** Forgets the instances not heard for `timeoutMs`. */
  #sweep(): void {
    if (this.#closed) return;
    const now = Date.now();
    for (const [instanceId, remote] of this.#remote) {
      if (now - remote.heardAt > this.#timeoutMs) this.#forget(instanceId);
    }
    this.#options.later(Math.min(SWEEP_MS, this.#timeoutMs), () => this.#sweep());
  }

  #announce(item: LiveItem, snapshot = false): void {
    if (this.#closed && item.k !== "bye") return;
    this.#options.announce(item, snapshot);
  }

  /** Notes who was online in a room before a change; publishes after `COALESCE_MS`. */
  #willChange(roomId: string): void {
    if (this.#changed.has(roomId)) return;
    const online = this.online(roomId);
    this.#changed.set(roomId, new Set(online.map((member) => member.userId)));
    this.#options.later(coalesceMs(online.length), () => {
      const before = this.#changed.get(roomId)!;
      this.#changed.delete(roomId);
      const online = this.online(roomId);
      const now = new Set(online.map((member) => member.userId));
      const same = now.size === before.size && [...now].every((userId) => before.has(userId));
      if (same) return;
      for (const userId of before) if (!now.has(userId)) this.#options.onOffline(roomId, userId);
      this.#options.onChange(roomId, online);
    });
  }
}
