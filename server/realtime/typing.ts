/**
 * Typing indicators: who is typing in which room, on every instance, never written to
 * Postgres. A typing state lasts `TYPING_TIMEOUT_MS` unless renewed (the client renews while
 * the user types, as Ably Chat's and Slack's do); a renewal within `TYPING_RENEWAL_MS` of the
 * last one told to the others is absorbed (it changes nothing anyone sees). Each instance
 * keeps the state it hears with its own expiry, so an instance that dies takes its typists
 * with it within the timeout.
 */
import type { LiveMember } from "../../db/events.ts";
import type { LiveItem } from "./broadcast.ts";

/** A typing state without renewal ends after this long, in milliseconds. */
export const TYPING_TIMEOUT_MS = 6_000;

/** Renewals closer than this to the last one announced are absorbed, in milliseconds. */
export const TYPING_RENEWAL_MS = 1_000;

/** Options of `Typing`. */
export interface TypingOptions {
  /** This instance's id in live items. */
  instanceId: string;
  /** Sends a live item to the other instances. */
  announce(item: LiveItem): void;
  /** Publishes a room's typists after a change. */
  onChange(roomId: string, typing: LiveMember[]): void;
}

/** One member typing in a room. */
interface Typist {
  member: LiveMember;
  /** When this state was last announced (or heard), in ms since the epoch. */
  renewedAt: number;
  expiry: ReturnType<typeof setTimeout>;
}

/** Typing across instances. */
export class Typing {
  readonly #options: TypingOptions;
  /** Room id → user id → typist. */
  #rooms = new Map<string, Map<string, Typist>>();

  constructor(options: TypingOptions) {
    this.#options = options;
  }

  /** The members typing in a room, earliest started first. */
  typing(roomId: string): LiveMember[] {
    return [...this.#rooms.get(roomId)?.values() ?? []].map((typist) => typist.member);
  }

  /** Members typing, in every room, on any instance. */
  count(): number {
    let typists = 0;
    for (const room of this.#rooms.values()) typists += room.size;
    return typists;
  }

  /** Whether a renewal of this member's typing now would be absorbed (see `set`). */
  absorbs(roomId: string, userId: string): boolean {
    const known = this.#rooms.get(roomId)?.get(userId);
    return known !== undefined && Date.now() - known.renewedAt < TYPING_RENEWAL_MS;
  }

  /**
   * `member` (of this instance's caller) starts, renews or stops typing in their room. Told to
   * the other instances unless absorbed; published here when the set of typists changes.
   */
  set(member: LiveMember, typing: boolean): void {
    if (typing && this.absorbs(member.roomId, member.userId)) return;
    if (!typing && !this.#rooms.get(member.roomId)?.has(member.userId)) return;
    this.#apply(member, typing);
    this.#options.announce({
      k: "typing",
      i: this.#options.instanceId,
      r: member.roomId,
      m: member,
      on: typing,
    });
  }

  /** A typing item from another instance. */
  heard(item: LiveItem): void {
    if (item.k !== "typing") return;
    this.#apply({ ...item.m, joinedAt: new Date(item.m.joinedAt) }, item.on);
  }

  /** Ends a member's typing in a room here (they went offline, or left). */
  clear(roomId: string, userId: string): void {
    const known = this.#rooms.get(roomId)?.get(userId);
    if (known) this.#apply(known.member, false);
  }

  /** Ends a user's typing in every room here (their account is gone). */
  clearUser(userId: string): void {
    for (const roomId of [...this.#rooms.keys()]) this.clear(roomId, userId);
  }

  /** Ends every timer. */
  close(): void {
    for (const room of this.#rooms.values()) {
      for (const typist of room.values()) clearTimeout(typist.expiry);
    }
    this.#rooms.clear();
  }

  #apply(member: LiveMember, typing: boolean): void {
    const { roomId, userId } = member;
    let room = this.#rooms.get(roomId);
    const known = room?.get(userId);
    if (known) clearTimeout(known.expiry);
    if (!typing) {
      if (!known) return;
      room!.delete(userId);
      if (room!.size === 0) this.#rooms.delete(roomId);
      this.#options.onChange(roomId, this.typing(roomId));
      return;
    }
    if (!room) this.#rooms.set(roomId, room = new Map());
    const expiry = setTimeout(() => this.clear(roomId, userId), TYPING_TIMEOUT_MS);
    room.set(userId, { member, renewedAt: Date.now(), expiry });
    if (!known) this.#options.onChange(roomId, this.typing(roomId));
  }
}
