/**
 * Calls: who is in each room's call, on every instance, and the relay of WebRTC signals
 * (offers, answers, ICE candidates) from one participant to another. Nothing is stored.
 *
 * A participant is one WebSocket connection in one room's call (a user on two devices is two
 * participants). Each instance keeps its own participants and tells the others when one joins
 * or leaves (`LiveItem`s on the broadcast, as presence does); an instance that dies takes its
 * participants out of the call when presence gives it up (see `presence.ts`). A signal goes to
 * the instance holding its addressee, in the order sent (one instance's NOTIFYs arrive in
 * order).
 *
 * Which side of a pair is "polite" in WebRTC's perfect negotiation pattern (W3C WebRTC 1.0
 * §10.7) is decided here, the same way on both sides: the participant whose id sorts first.
 */
import type { LiveMember } from "../../db/events.ts";
import type { LiveItem } from "./broadcast.ts";

/** A participant of a room's call. */
export interface Participant {
  participantId: string;
  userId: string;
  username: string;
  avatarUrl: string | null;
  joinedAt: Date;
}

/** An SDP offer, answer or rollback (`RTCSessionDescriptionInit`). */
export interface SessionDescription {
  type: "offer" | "answer" | "pranswer" | "rollback";
  sdp?: string;
}

/** A trickled ICE candidate (`RTCIceCandidateInit`); an empty `candidate` ends the trickle. */
export interface IceCandidate {
  candidate: string;
  sdpMid?: string | null;
  sdpMLineIndex?: number | null;
  usernameFragment?: string | null;
}

/** A signal as its addressee gets it. */
export interface Signal {
  from: string;
  description?: SessionDescription;
  candidate?: IceCandidate;
}

/**
 * An event of a room's call, as `calls.onEvent` delivers it: someone joined (and whether the
 * subscriber's own participant, if any, is the polite side toward them), someone left, or a
 * signal addressed to the subscriber's participant.
 */
export type CallEvent =
  | ({ type: "participant.joined"; polite: boolean } & Participant)
  | ({ type: "participant.left" } & Participant)
  | ({ type: "signal" } & Signal);

/** Receives the call events of one connection in one room. */
export type CallListener = (event: CallEvent) => void;

/** What `Calls.join` did. */
export type JoinResult =
  | { status: "joined"; participant: Participant; others: Participant[] }
  | { status: "full" };

/** Options of `Calls`. */
export interface CallsOptions {
  /** This instance's id in live items. */
  instanceId: string;
  /** Sends a live item to the other instances (`snapshot`: a whole list, see presence.ts). */
  announce(item: LiveItem, snapshot?: boolean): void;
  /** Runs `fn` in `ms` unless the hub closed meanwhile. */
  later(ms: number, fn: () => void): void;
}

/**
 * How long a participant may stay without a `calls.onEvent` listener on its connection, in
 * milliseconds: a client that joins first and subscribes after has this long; one that never
 * subscribes (or stops) is taken out of the call rather than holding a seat.
 */
export const UNHEARD_PARTICIPANT_MS = 10_000;

/** Most signals kept for a participant whose listener is not open yet. */
const MAX_PENDING_SIGNALS = 256;

/** One local participant and the connection it belongs to. */
interface Local {
  participant: Participant;
  connection: string;
  /** Runs once when it leaves, however it leaves. */
  release: () => void;
  /** Signals that came before the connection listened, in order. */
  pending: Signal[];
}

/** Calls across instances. */
export class Calls {
  readonly #options: CallsOptions;
  /** Room id → participant id → local participant. */
  #local = new Map<string, Map<string, Local>>();
  /** Instance id → room id → participant id → participant. */
  #remote = new Map<string, Map<string, Map<string, Participant>>>();
  /** Room id → connection → that connection's listeners (one per `calls.onEvent`). */
  #listeners = new Map<string, Map<string, Set<CallListener>>>();

  constructor(options: CallsOptions) {
    this.#options = options;
  }

  /** The participants of a room's call, on any instance, earliest joined first. */
  participants(roomId: string): Participant[] {
    const all = [...this.#local.get(roomId)?.values() ?? []].map((local) => local.participant);
    for (const rooms of this.#remote.values()) all.push(...rooms.get(roomId)?.values() ?? []);
    return all.sort((a, b) =>
      a.joinedAt.getTime() - b.joinedAt.getTime() || (a.participantId < b.participantId ? -1 : 1)
    );
  }

  /** Participants in calls through this instance, and its `calls.onEvent` listeners. */
  counts(): { participants: number; listeners: number } {
    let participants = 0;
    let listeners = 0;
    for (const room of this.#local.values()) participants += room.size;
    for (const room of this.#listeners.values()) {
      for (const set of room.values()) listeners += set.size;
    }
    return { participants, listeners };
  }

  /** The participant of `connection` in a room's call, if it joined. */
  participantOf(roomId: string, connection: string): Participant | null {
    for (const local of this.#local.get(roomId)?.values() ?? []) {
      if (local.connection === connection) return local.participant;
    }
    return null;
  }

  /**
   * `member`, over `connection`, joins the room's call (joining again over the same connection
   * returns the same participant): `full` when `max` participants are in it already. (Two
   * instances admitting the last seat at the same instant may exceed `max` by one each.)
   * `release` runs once when the new participant leaves, however it leaves.
   */
  join(
    member: LiveMember,
    connection: string,
    max: number,
    release: () => void = () => {},
  ): JoinResult {
    const { roomId } = member;
    const existing = this.participantOf(roomId, connection);
    const others = this.participants(roomId).filter((p) => p !== existing);
    if (existing) return { status: "joined", participant: existing, others };
    if (others.length >= max) return { status: "full" };
    const participant: Participant = {
      participantId: crypto.randomUUID(),
      userId: member.userId,
      username: member.username,
      avatarUrl: member.avatarUrl,
      joinedAt: new Date(),
    };
    let room = this.#local.get(roomId);
    if (!room) this.#local.set(roomId, room = new Map());
    room.set(participant.participantId, { participant, connection, release, pending: [] });
    this.#announce({ k: "call.join", r: roomId, p: participant });
    this.#joined(roomId, participant);
    if (!this.#listeners.get(roomId)?.has(connection)) this.#whenUnheard(roomId, participant);
    return { status: "joined", participant, others };
  }

  /** The participant of `connection` leaves the room's call; false when it was not in it. */
  leave(roomId: string, connection: string): boolean {
    const participant = this.participantOf(roomId, connection);
    if (!participant) return false;
    const room = this.#local.get(roomId)!;
    room.get(participant.participantId)!.release();
    room.delete(participant.participantId);
    if (room.size === 0) this.#local.delete(roomId);
    this.#announce({ k: "call.leave", r: roomId, p: participant });
    this.#left(roomId, participant);
    return true;
  }

  /**
   * Relays a signal from the participant of `connection` to participant `to` of the same
   * room's call: `not_joined` when the sender is not in the call, `unknown` when `to` is not.
   */
  signal(
    roomId: string,
    connection: string,
    to: string,
    payload: Omit<Signal, "from">,
  ): "sent" | "not_joined" | "unknown" {
    const from = this.participantOf(roomId, connection);
    if (!from) return "not_joined";
    if (
      to === from.participantId || !this.participants(roomId).some((p) => p.participantId === to)
    ) {
      return "unknown";
    }
    const signal = { from: from.participantId, ...payload };
    if (!this.#deliverSignal(roomId, to, signal)) {
      this.#announce({ k: "call.signal", r: roomId, to, s: signal });
    }
    return "sent";
  }

  /**
   * Listens to a room's call for `connection` (`calls.onEvent`): joins and leaves, and signals
   * addressed to the connection's participant. Returns a function that stops listening; the
   * connection's participant (if any) leaves the call then too.
   */
  listen(roomId: string, connection: string, listener: CallListener): () => void {
    let room = this.#listeners.get(roomId);
    if (!room) this.#listeners.set(roomId, room = new Map());
    let set = room.get(connection);
    if (!set) room.set(connection, set = new Set());
    set.add(listener);
    // Signals that came for this connection's participant before it listened.
    const participant = this.participantOf(roomId, connection);
    const local = participant && this.#local.get(roomId)?.get(participant.participantId);
    for (const signal of local?.pending.splice(0) ?? []) listener({ type: "signal", ...signal });
    return () => {
      const current = this.#listeners.get(roomId)?.get(connection);
      if (!current?.delete(listener) || current.size > 0) return;
      this.#listeners.get(roomId)!.delete(connection);
      if (this.#listeners.get(roomId)!.size === 0) this.#listeners.delete(roomId);
      // Nobody hears this participant's signals any more: out of the call.
      this.leave(roomId, connection);
    };
  }

  /**
   * Tells the other instances every participant of this one (`call.sync`): after a loss of
   * notifications, or for an instance that said hello.
   */
  resync(): void {
    const all: [string, Participant][] = [];
    for (const [roomId, room] of this.#local) {
      for (const { participant } of room.values()) all.push([roomId, participant]);
    }
    this.#announce({ k: "call.sync", all }, true);
  }

  /** A live item about calls from another instance. */
  heard(item: LiveItem): void {
    switch (item.k) {
      case "hello":
        return this.resync(); // a new (or recovering) instance learns this one's participants
      case "bye":
        return this.forgetInstance(item.i);
      case "call.sync": {
        // What the instance has now: who is gone left (their leave was lost), who is new joined.
        const known = this.#remote.get(item.i) ?? new Map<string, Map<string, Participant>>();
        const now = new Set(item.all.map(([, p]) => p.participantId));
        for (const [roomId, room] of known) {
          for (const participant of [...room.values()]) {
            if (now.has(participant.participantId)) continue;
            room.delete(participant.participantId);
            this.#left(roomId, participant);
          }
        }
        for (const [r, p] of item.all) this.heard({ k: "call.join", i: item.i, r, p });
        return;
      }
      case "call.join": {
        const participant = { ...item.p, joinedAt: new Date(item.p.joinedAt) };
        let rooms = this.#remote.get(item.i);
        if (!rooms) this.#remote.set(item.i, rooms = new Map());
        let room = rooms.get(item.r);
        if (!room) rooms.set(item.r, room = new Map());
        if (room.has(participant.participantId)) return;
        room.set(participant.participantId, participant);
        return this.#joined(item.r, participant);
      }
      case "call.leave": {
        const room = this.#remote.get(item.i)?.get(item.r);
        const participant = room?.get(item.p.participantId);
        if (!participant) return;
        room!.delete(participant.participantId);
        if (room!.size === 0) this.#remote.get(item.i)!.delete(item.r);
        return this.#left(item.r, participant);
      }
      case "call.signal":
        this.#deliverSignal(item.r, item.to, item.s);
        return;
    }
  }

  /** Takes another instance's participants out of their calls (it died, or stopped). */
  forgetInstance(instanceId: string): void {
    const rooms = this.#remote.get(instanceId);
    if (!rooms) return;
    this.#remote.delete(instanceId);
    for (const [roomId, room] of rooms) {
      for (const participant of room.values()) this.#left(roomId, participant);
    }
  }

  /**
   * Delivers a signal when its addressee is here (kept until its connection listens, if it does
   * not yet); false when it is not here.
   */
  #deliverSignal(roomId: string, to: string, signal: Signal): boolean {
    const local = this.#local.get(roomId)?.get(to);
    if (!local) return false;
    const listeners = this.#listeners.get(roomId)?.get(local.connection);
    if (listeners) { for (const listener of listeners) listener({ type: "signal", ...signal }); }
    else if (local.pending.length < MAX_PENDING_SIGNALS) local.pending.push(signal);
    return true;
  }

  /** Takes a participant out of the call unless its connection listens within the grace. */
  #whenUnheard(roomId: string, participant: Participant): void {
    this.#options.later(UNHEARD_PARTICIPANT_MS, () => {
      const local = this.#local.get(roomId)?.get(participant.participantId);
      if (local && !this.#listeners.get(roomId)?.has(local.connection)) {
        this.leave(roomId, local.connection);
      }
    });
  }

  #joined(roomId: string, participant: Participant): void {
    for (const [connection, listeners] of this.#listeners.get(roomId) ?? []) {
      const own = this.participantOf(roomId, connection);
      if (own?.participantId === participant.participantId) continue;
      const polite = own !== null && isPolite(own.participantId, participant.participantId);
      for (const listener of listeners) {
        listener({ type: "participant.joined", polite, ...participant });
      }
    }
  }

  #left(roomId: string, participant: Participant): void {
    for (const listeners of this.#listeners.get(roomId)?.values() ?? []) {
      for (const listener of listeners) listener({ type: "participant.left", ...participant });
    }
  }

  #announce(item: DistributiveOmit<LiveItem, "i">, snapshot = false): void {
    this.#options.announce({ ...item, i: this.#options.instanceId } as LiveItem, snapshot);
  }
}

/** `Omit` over each member of a union. */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** Whether `self` is the polite side toward `other` (see the module's doc). */
export function isPolite(self: string, other: string): boolean {
  return self < other;
}
