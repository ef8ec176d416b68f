/**
 * The typing load (issue #12): one room whose every member is subscribed to `rooms.onEvent`
 * over its own raw WebSocket (tRPC's JSON-RPC frames, as `load.ts` speaks them) and is typing,
 * toggling `rooms.typing` true/false over HTTP.
 *
 * The calls go over HTTP because the message fan-out's senders do (`saturate` in `load.ts`
 * posts `messages.send`): both phases then pay the same kind of call (an HTTP request, the
 * token in its header, tRPC's HTTP handler) for every 50 deliveries, and their server CPU per
 * delivery compares the fan-out itself, not two transports.
 *
 * A typist waits for its answer before its next call, so every call it makes flips its state:
 * a start is never absorbed (it had stopped) and a stop always ends a state; every call changes
 * the room's set of typists and so reaches every subscriber as one `typing.changed` (the
 * typist's own subscription included). Deliveries are therefore known exactly: answered calls
 * × subscribers, checked at the end, when every typist has stopped and every subscriber's last
 * `typing.changed` must list nobody.
 */
import {
  CALL_TIMEOUT_MS,
  type Connecting,
  connectionParamsFrame,
  parleySocketUrl,
  pool,
  post,
  settleSubscription,
  sleep,
  waitCaughtUp,
  withTimeout,
} from "./load.ts";
import type { CpuMeter, CpuUsage } from "./process_metrics.ts";
import type { Notes } from "./report.ts";

/** One member's subscription to the room's events. */
export interface TypingSub {
  ws: WebSocket;
  token: string;
  /** `typing.changed` frames received, and the last one (read at the end). */
  typingFrames: number;
  lastTyping: string;
  /** `presence.changed` frames received (members coming online while the room sets up). */
  presenceFrames: number;
  /** Error frames and frames it could not place. */
  errors: number;
  closed: boolean;
  closeInfo: string;
  pending: { resolve(): void; reject(error: Error): void } | null;
}

/** The room, its subscribers and typists, and the counters of the window being measured. */
export interface TypingRoom {
  /** parley's `http://host:port`. */
  http: string;
  roomId: string;
  /** The members' tokens: member i subscribes and types with `tokens[i]`. */
  tokens: string[];
  /** Names the room in notes. */
  label: string;
  notes: Notes;
  /** Most changes made but not yet delivered to every subscriber (as the fan-out's window). */
  window: number;
  subs: TypingSub[];
  /** `typing.changed` frames received by all subscribers, and their length. */
  deliveries: number;
  bytes: number;
  /** Calls answered (each one a change), calls that failed. */
  okCalls: number;
  failedCalls: number;
  /** Members typing after the answered calls, summed over them (mean typists per change). */
  typistsListed: number;
  /** Calls started and deliveries counted since the window began. */
  winStarted: number;
  winDelivered: number;
  /** Typists waiting for room in the window. */
  waiters: (() => void)[];
}

/** The room `roomId` with members `tokens`, nobody subscribed yet. */
export function newTypingRoom(
  http: string,
  roomId: string,
  tokens: string[],
  options: { label: string; notes: Notes; window: number },
): TypingRoom {
  return {
    http,
    roomId,
    tokens,
    label: options.label,
    notes: options.notes,
    window: options.window,
    subs: [],
    deliveries: 0,
    bytes: 0,
    okCalls: 0,
    failedCalls: 0,
    typistsListed: 0,
    winStarted: 0,
    winDelivered: 0,
    waiters: [],
  };
}

/** `rooms.onEvent` for the room, from now on (no lastEventId: nothing is replayed). */
function onEventFrame(id: number, roomId: string): string {
  return JSON.stringify({
    id,
    method: "subscription",
    params: { path: "rooms.onEvent", input: { json: { roomId } } },
  });
}

/** How tRPC frames a subscription's data: `{"id":<n>,"result":{"type":"data",...`. */
const DATA = '"result":{"type":"data",';
const TYPING = '"type":"typing.changed"';
const PRESENCE = '"type":"presence.changed"';

function onFrame(room: TypingRoom, sub: TypingSub, data: unknown): void {
  if (typeof data !== "string") {
    sub.errors++;
    room.notes.add(`${room.label}: binary frame`, room.roomId);
    return;
  }
  const comma = data.indexOf(",");
  if (comma > 0 && data.startsWith(DATA, comma + 1)) {
    // The event's type comes right after the envelope's ids; a typing frame is long (the whole
    // list of typists), so only its head is searched.
    const head = data.length > 400 ? data.slice(0, 400) : data;
    if (head.includes(TYPING)) {
      sub.typingFrames++;
      sub.lastTyping = data;
      room.deliveries++;
      room.bytes += data.length;
      room.winDelivered++;
      const waiting = room.waiters.length;
      if (waiting > 0 && room.winStarted - room.winDelivered / room.subs.length < room.window) {
        room.waiters.shift()!();
      }
    } else if (head.includes(PRESENCE)) {
      sub.presenceFrames++;
    } else {
      room.notes.add(`${room.label}: unexpected event`, data);
    }
    return;
  }
  if (data === "PING") return sub.ws.send("PONG");
  if (data === "PONG") return;
  if (data.includes('"type":"started"')) {
    sub.pending?.resolve();
    sub.pending = null;
    return;
  }
  sub.errors++;
  room.notes.add(`${room.label}: error or unexpected frame`, data);
  sub.pending?.reject(new Error(`Subscription refused: ${data.slice(0, 300)}`));
  sub.pending = null;
}

/** Opens `sub`'s socket and subscribes it; resolves once tRPC says it started. */
function openSub(room: TypingRoom, sub: TypingSub): Promise<void> {
  const ws = new WebSocket(parleySocketUrl(room.http));
  sub.ws = ws;
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  sub.pending = { resolve, reject };
  ws.onopen = () => {
    ws.send(connectionParamsFrame(sub.token));
    ws.send(onEventFrame(1, room.roomId));
  };
  ws.onmessage = (event) => onFrame(room, sub, event.data);
  return settleSubscription(ws, sub, promise, room.label);
}

/**
 * Subscribes every member to the room's events, at most `concurrency` setting up at once,
 * then waits until presence is quiet (each subscriber coming online reaches the others as a
 * `presence.changed`, coalesced by the server over 50 ms): none may fall in the window.
 */
export async function connectTyping(room: TypingRoom, concurrency: number): Promise<Connecting> {
  const t0 = performance.now();
  let failed = 0;
  const subs: TypingSub[] = room.tokens.map((token) => ({
    ws: null as unknown as WebSocket,
    token,
    typingFrames: 0,
    lastTyping: "",
    presenceFrames: 0,
    errors: 0,
    closed: false,
    closeInfo: "",
    pending: null,
  }));
  await pool(subs, concurrency, async (sub) => {
    try {
      await openSub(room, sub);
      room.subs.push(sub);
    } catch (error) {
      failed++;
      sub.closed = true;
      room.notes.add(`${room.label}: subscriber failed`, (error as Error).message);
    }
  });
  const ms = performance.now() - t0;
  const presence = () => room.subs.reduce((sum, sub) => sum + sub.presenceFrames, 0);
  const deadline = performance.now() + 5000;
  for (let last = -1; performance.now() < deadline;) {
    const now = presence();
    if (now === last) break;
    last = now;
    await sleep(300);
  }
  return { ms, connected: room.subs.length, failed };
}

/** Sets member `i`'s typing over HTTP; false (and a note) when the call failed. */
async function setTyping(room: TypingRoom, i: number, typing: boolean): Promise<boolean> {
  try {
    const body = JSON.stringify({ json: { roomId: room.roomId, typing } });
    const text = await post(`${room.http}/trpc/rooms.typing`, body, room.tokens[i]);
    if (!text.includes(`"typing":${typing}`)) throw new Error(`Unexpected answer: ${text}`);
    return true;
  } catch (error) {
    room.failedCalls++;
    room.notes.add(`${room.label}: typing call failed`, (error as Error).message);
    return false;
  }
}

/**
 * Every member starts and stops typing once, one after the other: warms up the code paths
 * the window takes (and the members' sessions), then waits until every subscriber has it all.
 */
export async function warmUp(room: TypingRoom, timeoutMs: number): Promise<boolean> {
  for (let i = 0; i < room.tokens.length; i++) {
    for (const typing of [true, false]) {
      if (await setTyping(room, i, typing)) room.okCalls++;
    }
  }
  return await drainTyping(room, timeoutMs, "warm-up");
}

/** Whether every open subscriber has a `typing.changed` for every answered call. */
function caughtUp(room: TypingRoom): boolean {
  return room.subs.every((sub) => sub.closed || sub.typingFrames >= room.okCalls);
}

/** Waits until `caughtUp`; false (and a note) on timeout. */
export function drainTyping(room: TypingRoom, timeoutMs: number, what: string): Promise<boolean> {
  return waitCaughtUp(room, () => caughtUp(room), timeoutMs, what);
}

/** A typing window's figures. */
export interface TypingSaturation {
  /** `typing.changed` frames received by all subscribers in the window. */
  deliveries: number;
  deliveriesPerSec: number;
  /** Calls answered in the window (each one a change) per second. */
  callsPerSec: number;
  cpu: CpuUsage;
  bytesPerFrame: number;
  /** Mean members typing after a change: the length of the list a frame carries. */
  typistsPerFrame: number;
  failedCalls: number;
  /** `presence.changed` frames received in the window (none is expected). */
  presenceFrames: number;
  /** Whether every subscriber caught up after the window. */
  drained: boolean;
}

/**
 * Every member toggles its typing as fast as its answers come for `seconds`, the room keeping
 * at most `room.window` changes in flight (started but not yet delivered to every subscriber),
 * as the fan-out's saturation window does for messages. CPU is measured by the meter
 * `startMeter` starts. Afterwards every typist that is typing stops (outside the window).
 */
export async function saturateTyping(
  room: TypingRoom,
  options: { seconds: number },
  startMeter: () => Promise<CpuMeter>,
): Promise<TypingSaturation> {
  room.winStarted = 0;
  room.winDelivered = 0;
  // Each member's state as its typist last set it (true: typing); all start stopped.
  const states = room.tokens.map(() => false);
  let typingNow = 0;
  const failedBefore = room.failedCalls;
  const callsBefore = room.okCalls;
  const listedBefore = room.typistsListed;
  const presence = () => room.subs.reduce((sum, sub) => sum + sub.presenceFrames, 0);
  const presence0 = presence();
  const meter = await startMeter();
  const deliveries0 = room.deliveries;
  const bytes0 = room.bytes;
  const deadline = performance.now() + options.seconds * 1000;
  const subs = room.subs.length;

  async function typist(i: number) {
    while (performance.now() < deadline) {
      if (room.winStarted - room.winDelivered / subs >= room.window) {
        await new Promise<void>((resolve) => room.waiters.push(resolve));
        continue;
      }
      room.winStarted++;
      const typing = !states[i];
      if (await setTyping(room, i, typing)) {
        states[i] = typing;
        typingNow += typing ? 1 : -1;
        room.okCalls++;
        room.typistsListed += typingNow;
      } else {
        room.winStarted--;
        await sleep(5);
      }
    }
  }
  const typists = Array.from({ length: room.tokens.length }, (_, i) => typist(i));
  await sleep(options.seconds * 1000);
  const deliveries = room.deliveries - deliveries0;
  const bytes = room.bytes - bytes0;
  const calls = room.okCalls - callsBefore;
  const listed = room.typistsListed - listedBefore;
  const presenceFrames = presence() - presence0;
  const cpu = await meter.stop();
  // Typists waiting for window space are released; each then sees the deadline and stops.
  const release = setInterval(() => {
    while (room.waiters.length) room.waiters.shift()!();
  }, 10);
  try {
    await withTimeout(Promise.all(typists), CALL_TIMEOUT_MS * 2, `${room.label} typists to stop`);
  } catch (error) {
    room.notes.add(`${room.label}: typists`, (error as Error).message);
  } finally {
    clearInterval(release);
  }
  // Everyone stops typing, so the last frame each subscriber gets must list nobody.
  await Promise.all(states.map(async (typing, i) => {
    if (typing && await setTyping(room, i, false)) room.okCalls++;
  }));
  return {
    deliveries,
    deliveriesPerSec: deliveries / cpu.seconds,
    callsPerSec: calls / cpu.seconds,
    cpu,
    bytesPerFrame: bytes / deliveries,
    typistsPerFrame: listed / calls,
    failedCalls: room.failedCalls - failedBefore,
    presenceFrames,
    drained: await drainTyping(room, 10_000, "after the window"),
  };
}

/** What the subscribers received against what they should have. */
export interface TypingDelivery {
  /** Answered calls × open subscribers (every call was a change, see the module doc). */
  expected: number;
  delivered: number;
  /** Subscribers whose last `typing.changed` still lists someone, or who got none. */
  staleLast: number;
  errors: number;
  closed: number;
}

/** Checks every subscriber: one `typing.changed` per answered call, the last one empty. */
export function verifyTyping(room: TypingRoom): TypingDelivery {
  const result: TypingDelivery = { expected: 0, delivered: 0, staleLast: 0, errors: 0, closed: 0 };
  for (const sub of room.subs) {
    result.expected += room.okCalls;
    result.delivered += sub.typingFrames;
    result.errors += sub.errors;
    if (sub.closed) {
      result.closed++;
      room.notes.add(`${room.label}: subscriber closed`, sub.closeInfo);
    }
    let empty = false;
    try {
      const event = JSON.parse(sub.lastTyping)?.result?.data?.json?.data;
      empty = event?.type === "typing.changed" && Array.isArray(event.typing) &&
        event.typing.length === 0;
    } catch {
      // not a frame: counted below
    }
    if (!empty) {
      result.staleLast++;
      room.notes.add(`${room.label}: last typing.changed not empty`, sub.lastTyping || "(none)");
    }
  }
  return result;
}

/** Closes every subscriber's socket and waits (at most 10 s) until they are closed. */
export async function closeTyping(room: TypingRoom): Promise<void> {
  const closed = room.subs.map((sub) =>
    new Promise<void>((resolve) => {
      if (sub.ws.readyState === WebSocket.CLOSED) return resolve();
      sub.ws.onmessage = null;
      sub.ws.onclose = () => resolve();
      sub.ws.close(1000);
    })
  );
  await withTimeout(Promise.all(closed), 10_000, "sockets to close").catch((error) =>
    room.notes.add(`${room.label}: close`, (error as Error).message)
  );
}
