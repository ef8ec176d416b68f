/**
 * The load generator: subscribers that check every frame they get, senders that keep servers
 * saturated or paced, and the raw tRPC frames parley is spoken to with (its WebSocket JSON-RPC
 * frames with superjson, and `POST /trpc/<path>` for calls over HTTP).
 *
 * Everything lives in objects the caller holds (`Fleet`, `RoomLoad`, `Sub`): two fleets on two
 * servers never share a counter. Every wait has a timeout; what goes wrong is counted in
 * `Notes` under a topic naming the fleet, with samples.
 */
import type { Notes } from "./report.ts";
import type { CpuMeter, CpuUsage } from "./process_metrics.ts";

/** Longest a subscriber may take to be subscribed, or an HTTP or WebSocket call to answer. */
export const CALL_TIMEOUT_MS = 15_000;

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Rejects after `ms` with `what` in the message; settles as `promise` otherwise. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `fn` over `items` with at most `limit` calls in flight; a rejection rejects the lot. */
export async function pool<T, R>(
  items: T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/**
 * Collects this process's garbage when V8 lets it (`--v8-flags=--expose-gc`, as `deno task
 * bench` runs): after thousands of sockets closed, the load generator's own heap would
 * otherwise slow the next measurement down and pass for the server's slowness.
 */
export function collectOwnGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** Log-linear histogram of non-negative integers (microseconds): exact below 64, ~3% above. */
export class Histogram {
  #counts = new Float64Array(64 + 26 * 32);
  /** Values recorded. */
  count = 0;
  /** Largest value recorded. */
  max = 0;

  /** Records `value` (rounded, clamped to 0..2^31-1). */
  record(value: number): void {
    const v = Math.min(0x7fffffff, Math.max(0, Math.round(value)));
    let index: number;
    if (v < 64) index = v;
    else {
      const shift = 31 - Math.clz32(v) - 5;
      index = 64 + (shift - 1) * 32 + ((v >>> shift) - 32);
    }
    this.#counts[index]++;
    this.count++;
    if (v > this.max) this.max = v;
  }

  /** The value at quantile `q` (0..1): the middle of its bucket; NaN when empty. */
  quantile(q: number): number {
    if (this.count === 0) return NaN;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < this.#counts.length; i++) {
      seen += this.#counts[i];
      if (seen >= rank) {
        if (i < 64) return i;
        const shift = Math.floor((i - 64) / 32) + 1;
        const sub = (i - 64) % 32 + 32;
        return Math.min(this.max, ((sub << shift) + ((sub + 1) << shift) - 1) / 2);
      }
    }
    return this.max;
  }
}

// ---------------------------------------------------------------------------------------------
// Raw frames

/** The first frame on a socket opened at `/trpc?connectionParams=1`: who is calling. */
export function connectionParamsFrame(token: string): string {
  return JSON.stringify({ method: "connectionParams", data: { token } });
}

/**
 * `messages.onMessage` for `roomId`; `lastEventId` goes where wsLink puts it (tRPC merges it
 * into the input), so the server replays what came after it.
 */
export function subscribeFrame(id: number, roomId: string, lastEventId: number | null): string {
  const params: Record<string, unknown> = {
    path: "messages.onMessage",
    input: { json: { roomId } },
  };
  if (lastEventId !== null) params.lastEventId = String(lastEventId);
  return JSON.stringify({ id, method: "subscription", params });
}

/** A tRPC mutation over WebSocket, its input wrapped as superjson does for plain JSON. */
export function mutationFrame(id: number, path: string, input: unknown): string {
  return JSON.stringify({ id, method: "mutation", params: { path, input: { json: input } } });
}

/** The body of `messages.send`: content, and a fresh clientMessageId as parley's client sends. */
export function sendInput(roomId: string, content: string, idempotent: boolean): unknown {
  return idempotent
    ? { roomId, content, clientMessageId: crypto.randomUUID() }
    : { roomId, content };
}

/** Reads decimal digits at `at` up to a closing `"`; -1 when there are none. */
function digitsAt(frame: string, at: number): number {
  let value = 0;
  let i = at;
  for (; i < frame.length; i++) {
    const c = frame.charCodeAt(i);
    if (c < 48 || c > 57) break;
    value = value * 10 + (c - 48);
  }
  return i > at && frame.charCodeAt(i) === 34 ? value : -1;
}

/** How tRPC frames a subscription's data: `{"id":<n>,"result":{"type":"data",...`. */
const PARLEY_DATA = '"result":{"type":"data",';

/**
 * The seq of a subscription data frame from parley (its tracked id), or -1 for any other
 * frame. The tracked id is the first `"id":"` after the frame's type, whether tRPC puts it in
 * the result (`"id":"5","data":{"json":{"id":"5",...`) or only in the superjson envelope; it is
 * read in place. A frame of another shape with the same meaning (keys in another order, say)
 * is parsed as JSON.
 */
function parleySeq(frame: string): number {
  const comma = frame.indexOf(",");
  if (comma > 0 && frame.startsWith(PARLEY_DATA, comma + 1)) {
    const at = frame.indexOf('"id":"', comma + 1 + PARLEY_DATA.length);
    if (at > 0) {
      const seq = digitsAt(frame, at + 6);
      if (seq >= 0) return seq;
    }
  }
  if (!frame.includes('"data"')) return -1;
  try {
    const result = JSON.parse(frame)?.result;
    if (result?.type !== "data") return -1;
    const id = result.id ?? result.data?.json?.id;
    return typeof id === "string" && /^\d+$/.test(id) ? Number(id) : -1;
  } catch {
    return -1;
  }
}

/** The `seq` of a stored message in a call's answer (HTTP or WebSocket), or -1. */
function seqInAnswer(text: string): number {
  const at = text.indexOf('"seq":');
  return at < 0 ? -1 : parseInt(text.slice(at + 6, at + 22), 10);
}

// ---------------------------------------------------------------------------------------------
// Endpoints: how the load generator talks to each kind of server

/** The two servers measured against each other. */
export type Kind = "parley" | "bare";

/** A room as both servers know it (the bare server takes any name: it gets parley's id). */
export interface Room {
  /** parley's room id. */
  id: string;
  /** Tokens of the room's members; subscribers and senders take them in turn. */
  tokens: string[];
}

/** Raised for a send the server refused or did not answer. */
export class SendError extends Error {}

/** How the load generator subscribes, sends and reads frames on one server. */
export interface Endpoint {
  kind: Kind;
  /** `http://host:port`. */
  http: string;
  wsUrl(room: Room): string;
  /** Frames to send once the socket is open. */
  hello(room: Room, token: string, lastEventId: number | null): string[];
  /** Subscribed when the socket opens (bare), or on tRPC's `started` (parley). */
  readyOnOpen: boolean;
  /** Sends `content` to `room` over HTTP; resolves with the seq it got. */
  send(room: Room, token: string, content: string, idempotent?: boolean): Promise<number>;
  /** The seq of a data frame, or -1 for anything else. */
  frameSeq(frame: string): number;
}

/** POSTs `body` to `url`; returns the answer's text, throwing `SendError` for a non-2xx. */
export async function post(url: string, body: string, token?: string): Promise<string> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(url, {
    method: "POST",
    headers,
    body,
    signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
  });
  const text = await response.text();
  if (!response.ok) throw new SendError(`HTTP ${response.status}: ${text}`);
  return text;
}

/** parley's WebSocket endpoint, where the first frame says who is calling. */
export function parleySocketUrl(http: string): string {
  return `${http.replace(/^http/, "ws")}/trpc?connectionParams=1`;
}

/** parley at `http` (tRPC over HTTP and WebSocket). */
export function parleyEndpoint(http: string): Endpoint {
  return {
    kind: "parley",
    http,
    readyOnOpen: false,
    wsUrl: () => parleySocketUrl(http),
    hello: (room, token, lastEventId) => [
      connectionParamsFrame(token),
      subscribeFrame(1, room.id, lastEventId),
    ],
    async send(room, token, content, idempotent = false) {
      const body = JSON.stringify({ json: sendInput(room.id, content, idempotent) });
      const text = await post(`${http}/trpc/messages.send`, body, token);
      const seq = seqInAnswer(text);
      if (!(seq > 0)) throw new SendError(`No seq in the answer: ${text}`);
      return seq;
    },
    frameSeq: parleySeq,
  };
}

/** The bare broadcast server at `http` (`bench/bare_server.ts`). */
export function bareEndpoint(http: string): Endpoint {
  return {
    kind: "bare",
    http,
    readyOnOpen: true,
    wsUrl: (room) => `${http.replace(/^http/, "ws")}/ws?room=${room.id}`,
    hello: () => [],
    async send(room, _token, content) {
      return parseInt(await post(`${http}/send?room=${room.id}`, JSON.stringify(content)), 10);
    },
    // {"id":"<seq>","data":{"id":"<uuid>",...}}
    frameSeq: (frame) => frame.startsWith('{"id":"') ? digitsAt(frame, 7) : -1,
  };
}

// ---------------------------------------------------------------------------------------------
// Subscribers

/** One subscriber: a socket, replaced when it reconnects, and what it has received. */
export interface Sub {
  ws: WebSocket;
  room: RoomLoad;
  token: string;
  /** The seq it was subscribed after: it must receive first + 1 .. the room's last seq. */
  first: number;
  /** Highest seq received. */
  last: number;
  /** Data frames received (duplicates included), new ones in order, duplicates, seqs skipped. */
  frames: number;
  unique: number;
  dups: number;
  gaps: number;
  /** Error frames and frames it could not read. */
  errors: number;
  closed: boolean;
  closeInfo: string;
  /** Settles the connection being set up, if any. */
  pending: { resolve(): void; reject(error: Error): void } | null;
}

/** One room on one server, as the load generator sees it. */
export interface RoomLoad {
  room: Room;
  /** Highest seq the server acknowledged for a send (seqs are gap-free from 1). */
  maxSeq: number;
  /** Sends the server acknowledged. */
  okSends: number;
  subs: Sub[];
  /** Sends started and deliveries counted since the saturation window began. */
  winSent: number;
  winDelivered: number;
  /** Senders waiting for room in the window. */
  waiters: (() => void)[];
  /** Which member sends next. */
  turn: number;
}

/** Subscribers of some rooms on one server, and the counters of the window being measured. */
export interface Fleet {
  endpoint: Endpoint;
  /** Names this fleet in notes: "parley 10×50". */
  label: string;
  rooms: RoomLoad[];
  notes: Notes;
  /** Most messages per room sent but not yet delivered to all its subscribers. */
  window: number;
  deliveries: number;
  bytes: number;
  /** Send-to-delivery latency, µs, while pacing. */
  latency: Histogram | null;
}

/** A fleet with no subscribers yet; `lastSeqs` are the rooms' current last seqs (default 0). */
export function newFleet(
  endpoint: Endpoint,
  rooms: Room[],
  options: { label: string; notes: Notes; window?: number; lastSeqs?: number[] },
): Fleet {
  return {
    endpoint,
    label: options.label,
    notes: options.notes,
    window: options.window ?? 32,
    rooms: rooms.map((room, i) => ({
      room,
      maxSeq: options.lastSeqs?.[i] ?? 0,
      okSends: 0,
      subs: [],
      winSent: 0,
      winDelivered: 0,
      waiters: [],
      turn: 0,
    })),
    deliveries: 0,
    bytes: 0,
    latency: null,
  };
}

/** Every subscriber of the fleet. */
export function allSubs(fleet: Fleet): Sub[] {
  return fleet.rooms.flatMap((room) => room.subs);
}

function wakeOne(fleet: Fleet, room: RoomLoad): void {
  if (room.winSent - room.winDelivered / room.subs.length < fleet.window) room.waiters.shift()?.();
}

function onFrame(fleet: Fleet, sub: Sub, data: unknown): void {
  if (typeof data !== "string") {
    sub.errors++;
    fleet.notes.add(`${fleet.label}: binary frame`, `${sub.room.room.id}`);
    return;
  }
  const seq = fleet.endpoint.frameSeq(data);
  if (seq < 0) return onControl(fleet, sub, data);
  sub.frames++;
  fleet.deliveries++;
  fleet.bytes += data.length;
  if (seq === sub.last + 1) {
    sub.unique++;
    sub.last = seq;
  } else if (seq <= sub.last) {
    sub.dups++;
  } else {
    sub.gaps += seq - sub.last - 1;
    sub.unique++;
    sub.last = seq;
  }
  const room = sub.room;
  room.winDelivered++;
  if (room.waiters.length > 0) wakeOne(fleet, room);
  if (fleet.latency) {
    const at = data.indexOf("~T");
    if (at >= 0) {
      const sentAt = parseFloat(data.slice(at + 2, data.indexOf("~", at + 2)));
      fleet.latency.record((performance.now() - sentAt) * 1000);
    }
  }
}

function onControl(fleet: Fleet, sub: Sub, data: string): void {
  // tRPC's keep-alive: the server pings, a live client answers.
  if (data === "PING") return sub.ws.send("PONG");
  if (data === "PONG") return;
  if (data.includes('"type":"started"')) {
    sub.pending?.resolve();
    sub.pending = null;
    return;
  }
  if (data.includes('"error"')) {
    sub.errors++;
    fleet.notes.add(`${fleet.label}: error frame`, data);
    sub.pending?.reject(new Error(`Subscription refused: ${data.slice(0, 300)}`));
    sub.pending = null;
    return;
  }
  fleet.notes.add(`${fleet.label}: unexpected frame`, data);
}

/**
 * Opens `sub`'s socket and subscribes it after `lastEventId` (parley replays what came after;
 * null: from now on). Resolves once it is subscribed; rejects on refusal, close or timeout.
 */
function openSocket(fleet: Fleet, sub: Sub, lastEventId: number | null): Promise<void> {
  const { endpoint } = fleet;
  const ws = new WebSocket(endpoint.wsUrl(sub.room.room));
  sub.ws = ws;
  sub.closed = false;
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  sub.pending = { resolve, reject };
  ws.onopen = () => {
    for (const frame of endpoint.hello(sub.room.room, sub.token, lastEventId)) ws.send(frame);
    if (endpoint.readyOnOpen) {
      sub.pending?.resolve();
      sub.pending = null;
    }
  };
  ws.onmessage = (event) => onFrame(fleet, sub, event.data);
  return settleSubscription(ws, sub, promise, fleet.label);
}

/** What `settleSubscription` needs of a subscriber. */
export interface SettlingSubscriber {
  closed: boolean;
  closeInfo: string;
  pending: { resolve(): void; reject(error: Error): void } | null;
}

/**
 * Notes a subscriber's socket closing (failing its subscription if it was still being set up)
 * and bounds the setup by `CALL_TIMEOUT_MS`, closing the socket when it fails.
 */
export function settleSubscription(
  ws: WebSocket,
  sub: SettlingSubscriber,
  subscribed: Promise<void>,
  label: string,
): Promise<void> {
  ws.onerror = () => {};
  ws.onclose = (event) => {
    sub.closed = true;
    sub.closeInfo = `${event.code} ${event.reason}`.trim();
    sub.pending?.reject(new Error(`Socket closed before subscribing: ${sub.closeInfo}`));
    sub.pending = null;
  };
  return withTimeout(subscribed, CALL_TIMEOUT_MS, `${label} subscriber to subscribe`)
    .catch((error) => {
      sub.pending = null;
      ws.close();
      throw error;
    });
}

/** How a batch of connections went. */
export interface Connecting {
  /** From the first attempt until the last subscriber is subscribed, ms. */
  ms: number;
  connected: number;
  failed: number;
}

/**
 * Connects `perRoom(i)` subscribers to the i-th room of the fleet, at most `concurrency`
 * setting up at once; each subscribes after its room's last acknowledged seq. Failures are
 * counted and noted, not thrown.
 */
export async function connectAll(
  fleet: Fleet,
  perRoom: (index: number) => number,
  concurrency: number,
): Promise<Connecting> {
  const jobs: Sub[] = [];
  fleet.rooms.forEach((room, index) => {
    for (let i = 0; i < perRoom(index); i++) {
      jobs.push({
        ws: null as unknown as WebSocket,
        room,
        token: room.room.tokens[(room.subs.length + i) % room.room.tokens.length],
        first: room.maxSeq,
        last: room.maxSeq,
        frames: 0,
        unique: 0,
        dups: 0,
        gaps: 0,
        errors: 0,
        closed: false,
        closeInfo: "",
        pending: null,
      });
    }
  });
  return await openAll(fleet, jobs, concurrency, "subscriber failed", (sub) => {
    sub.room.subs.push(sub);
  });
}

/**
 * Drops every subscriber's socket at once and opens new ones at once, each resuming after the
 * last seq it saw. Frames still in flight on an old socket are ignored (its handlers go first),
 * as a client that lost its connection never sees them. Resolves when all are subscribed again.
 */
export async function reconnectAll(fleet: Fleet, concurrency: number): Promise<Connecting> {
  const subs = allSubs(fleet);
  for (const sub of subs) {
    sub.ws.onmessage = null;
    sub.ws.onclose = null;
    sub.ws.close();
  }
  return await openAll(fleet, subs, concurrency, "resubscribe failed");
}

/**
 * Opens the sockets of `subs`, at most `concurrency` setting up at once; on parley each
 * subscribes after the last seq it has (its room's, for a new one), as wsLink resumes; then
 * `onOpened` gets it. A failure closes its socket and is noted under `topic`.
 */
async function openAll(
  fleet: Fleet,
  subs: Sub[],
  concurrency: number,
  topic: string,
  onOpened: (sub: Sub) => void = () => {},
): Promise<Connecting> {
  const t0 = performance.now();
  let failed = 0;
  await pool(subs, concurrency, async (sub) => {
    try {
      await openSocket(fleet, sub, fleet.endpoint.kind === "parley" ? sub.last : null);
      onOpened(sub);
    } catch (error) {
      failed++;
      sub.closed = true;
      fleet.notes.add(`${fleet.label}: ${topic}`, (error as Error).message);
    }
  });
  return { ms: performance.now() - t0, connected: subs.length - failed, failed };
}

/** Forgets the fleet's subscribers (closed ones), keeping what it knows of its rooms' seqs. */
export function forgetSubs(fleet: Fleet): void {
  for (const room of fleet.rooms) room.subs = [];
}

/** Whether every open subscriber has every acknowledged message of its room. */
export function caughtUp(fleet: Fleet, target?: (room: RoomLoad) => number): boolean {
  for (const room of fleet.rooms) {
    const seq = target ? target(room) : room.maxSeq;
    for (const sub of room.subs) if (!sub.closed && sub.last < seq) return false;
  }
  return true;
}

/** Waits until `caughtUp`; false (and a note) on timeout. */
export function drain(fleet: Fleet, timeoutMs: number, what: string): Promise<boolean> {
  return waitCaughtUp(fleet, () => caughtUp(fleet), timeoutMs, what);
}

/** Waits until `isCaughtUp()` holds, polling; false (and a note on `on`) after `timeoutMs`. */
export async function waitCaughtUp(
  on: { label: string; notes: Notes },
  isCaughtUp: () => boolean,
  timeoutMs: number,
  what: string,
): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!isCaughtUp()) {
    if (performance.now() > deadline) {
      on.notes.add(`${on.label}: not caught up`, `${what}: within ${timeoutMs} ms`);
      return false;
    }
    await sleep(20);
  }
  return true;
}

/** Closes every subscriber's socket and waits (at most 10 s) until they are closed. */
export async function closeAll(fleet: Fleet): Promise<void> {
  const closed = allSubs(fleet).map((sub) =>
    new Promise<void>((resolve) => {
      if (sub.ws.readyState === WebSocket.CLOSED) return resolve();
      sub.ws.onmessage = null;
      sub.ws.onclose = () => resolve();
      sub.ws.close(1000);
    })
  );
  await withTimeout(Promise.all(closed), 10_000, "sockets to close").catch((error) =>
    fleet.notes.add(`${fleet.label}: close`, (error as Error).message)
  );
}

/** What the subscribers received against what they should have. */
export interface Delivery {
  subscribers: number;
  /** Sum over subscribers of the seqs they should have received. */
  expected: number;
  /** Data frames received (duplicates included). */
  delivered: number;
  dups: number;
  /** Seqs never received (skipped, or missing at the end). */
  gaps: number;
  /** Error frames and unreadable frames. */
  errors: number;
  closed: number;
  /** Rooms where sends acknowledged ≠ highest seq acknowledged (a seq lost or repeated). */
  seqMismatches: number;
}

/** Checks every subscriber: it must have had first + 1 .. its room's last seq, once, in order. */
export function verify(fleet: Fleet): Delivery {
  const result: Delivery = {
    subscribers: 0,
    expected: 0,
    delivered: 0,
    dups: 0,
    gaps: 0,
    errors: 0,
    closed: 0,
    seqMismatches: 0,
  };
  for (const room of fleet.rooms) {
    for (const sub of room.subs) {
      result.subscribers++;
      result.expected += room.maxSeq - sub.first;
      result.delivered += sub.frames;
      result.dups += sub.dups;
      result.gaps += sub.gaps + Math.max(0, room.maxSeq - sub.last);
      result.errors += sub.errors;
      if (sub.closed) {
        result.closed++;
        fleet.notes.add(`${fleet.label}: subscriber closed`, sub.closeInfo);
      }
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Senders

/** Message content: the send time (performance.now(), ms) between markers, padded to 80 chars. */
export function messageContent(): string {
  const head = `~T${performance.now().toFixed(3)}~ bench message `;
  return head + "x".repeat(Math.max(0, 80 - head.length));
}

/** Sends one message to `room` with its next member's token; false when the send failed. */
async function sendOne(fleet: Fleet, room: RoomLoad): Promise<boolean> {
  const token = room.room.tokens[room.turn++ % room.room.tokens.length];
  try {
    const seq = await fleet.endpoint.send(room.room, token, messageContent());
    room.okSends++;
    if (seq > room.maxSeq) room.maxSeq = seq;
    return true;
  } catch (error) {
    fleet.notes.add(`${fleet.label}: send failed`, (error as Error).message);
    return false;
  }
}

/** One message per room, then waits until every subscriber has it. */
export async function probe(fleet: Fleet, timeoutMs: number): Promise<boolean> {
  await Promise.all(fleet.rooms.map((room) => sendOne(fleet, room)));
  return await drain(fleet, timeoutMs, "probe");
}

/** A saturation window's figures. */
export interface Saturation {
  deliveries: number;
  deliveriesPerSec: number;
  sendsPerSec: number;
  cpu: CpuUsage;
  bytesPerFrame: number;
  /** Failed sends in the window. */
  failedSends: number;
  /** Whether every subscriber caught up after the window. */
  drained: boolean;
}

/** Which rooms sender `j` of `senders` serves: its share when rooms outnumber senders. */
function roomsOf(fleet: Fleet, j: number, senders: number): RoomLoad[] {
  const { rooms } = fleet;
  if (rooms.length < senders) return [rooms[j % rooms.length]];
  return rooms.filter((_, i) => i % senders === j);
}

/**
 * Sends as fast as the server takes it for `seconds` with `senders` HTTP senders spread over
 * the rooms, each room keeping at most `fleet.window` messages in flight (sent but not yet
 * delivered to all its subscribers), so the window measures delivery rather than queueing.
 * CPU is measured by the meter `startMeter` starts.
 */
export async function saturate(
  fleet: Fleet,
  options: { seconds: number; senders: number },
  startMeter: () => Promise<CpuMeter>,
): Promise<Saturation> {
  for (const room of fleet.rooms) {
    room.winSent = 0;
    room.winDelivered = 0;
  }
  const failedBefore = fleet.notes.count(`${fleet.label}: send failed`);
  const sendsBefore = fleet.rooms.reduce((sum, room) => sum + room.okSends, 0);
  const meter = await startMeter();
  const deliveries0 = fleet.deliveries;
  const bytes0 = fleet.bytes;
  const deadline = performance.now() + options.seconds * 1000;

  async function sender(rooms: RoomLoad[]) {
    for (let turn = 0; performance.now() < deadline; turn++) {
      const room = rooms[turn % rooms.length];
      if (room.winSent - room.winDelivered / room.subs.length >= fleet.window) {
        await new Promise<void>((resolve) => room.waiters.push(resolve));
        turn--;
        continue;
      }
      room.winSent++;
      if (!await sendOne(fleet, room)) {
        room.winSent--;
        await sleep(5);
      }
    }
  }
  const senders = Array.from(
    { length: options.senders },
    (_, j) => sender(roomsOf(fleet, j, options.senders)),
  );
  await sleep(options.seconds * 1000);
  const deliveries = fleet.deliveries - deliveries0;
  const bytes = fleet.bytes - bytes0;
  const sends = fleet.rooms.reduce((sum, room) => sum + room.okSends, 0) - sendsBefore;
  const cpu = await meter.stop();
  // Senders waiting for window space are released; each then sees the deadline and stops.
  const release = setInterval(() => {
    for (const room of fleet.rooms) while (room.waiters.length) room.waiters.shift()!();
  }, 10);
  try {
    await withTimeout(Promise.all(senders), CALL_TIMEOUT_MS * 2, `${fleet.label} senders to stop`);
  } catch (error) {
    fleet.notes.add(`${fleet.label}: senders`, (error as Error).message);
  } finally {
    clearInterval(release);
  }
  return {
    deliveries,
    deliveriesPerSec: deliveries / cpu.seconds,
    sendsPerSec: sends / cpu.seconds,
    cpu,
    bytesPerFrame: bytes / deliveries,
    failedSends: fleet.notes.count(`${fleet.label}: send failed`) - failedBefore,
    drained: await drain(fleet, 10_000, "after saturation"),
  };
}

/** Send-to-delivery latency while sending at a fixed rate. */
export interface Latency {
  /** Messages per second asked for and achieved. */
  targetRate: number;
  achievedRate: number;
  samples: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** How late a 5 ms timer fired in the load generator (p99), ms: its own lateness. */
  lagP99Ms: number;
}

/** Sends that go on in the background until stopped. */
export interface SteadySender {
  /** Stops issuing, waits (bounded) for the sends in flight; resolves with the sends issued. */
  stop(): Promise<number>;
}

/**
 * Starts sending `rate` messages per second over the rooms in turn, at most `maxInflight`
 * unanswered (beyond it the schedule slips rather than piling up requests).
 */
export function startSending(
  fleet: Fleet,
  options: { rate: number; maxInflight: number },
): SteadySender {
  const inflight = new Set<Promise<void>>();
  const t0 = performance.now();
  let issued = 0;
  let stopped = false;
  const issuing = (async () => {
    while (!stopped) {
      const due = Math.floor((performance.now() - t0) / 1000 * options.rate);
      while (issued < due && inflight.size < options.maxInflight) {
        const room = fleet.rooms[issued % fleet.rooms.length];
        issued++;
        const sending: Promise<void> = sendOne(fleet, room).then(() =>
          void inflight.delete(sending)
        );
        inflight.add(sending);
      }
      await sleep(1);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await issuing;
      await withTimeout(Promise.all(inflight), CALL_TIMEOUT_MS * 2, `${fleet.label} sends`)
        .catch((error) => fleet.notes.add(`${fleet.label}: senders`, (error as Error).message));
      return issued;
    },
  };
}

/**
 * Sends `rate` messages per second for `seconds` (see `startSending`); every delivery's
 * latency is measured from the send time in its content. Waits for subscribers to catch up.
 */
export async function paced(
  fleet: Fleet,
  options: { seconds: number; rate: number; maxInflight: number },
): Promise<Latency> {
  const histogram = new Histogram();
  const lag = new Histogram();
  fleet.latency = histogram;
  const t0 = performance.now();
  let expected = t0 + 5;
  const lagTimer = setInterval(() => {
    const t = performance.now();
    lag.record((t - expected) * 1000);
    expected = t + 5;
  }, 5);
  const sender = startSending(fleet, options);
  await sleep(options.seconds * 1000);
  const elapsed = (performance.now() - t0) / 1000;
  clearInterval(lagTimer);
  const issued = await sender.stop();
  await drain(fleet, 10_000, "after pacing");
  fleet.latency = null;
  return {
    targetRate: options.rate,
    achievedRate: issued / elapsed,
    samples: histogram.count,
    p50Ms: histogram.quantile(0.5) / 1000,
    p99Ms: histogram.quantile(0.99) / 1000,
    maxMs: histogram.max / 1000,
    lagP99Ms: lag.quantile(0.99) / 1000,
  };
}

/** Operations completed in a closed-loop window. */
export interface Loop {
  /** Operations that completed within the window. */
  ops: number;
  failed: number;
  seconds: number;
}

/**
 * Runs `workers` loops, each calling `op(worker)` again as soon as the previous call settles,
 * for `seconds`; a failure is passed to `onError` and followed by a 5 ms pause. Counts the
 * calls that completed in the window, then waits (bounded) for the ones still running.
 */
export async function closedLoop(
  workers: number,
  seconds: number,
  op: (worker: number) => Promise<void>,
  onError: (error: unknown) => void,
): Promise<Loop> {
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  let ops = 0;
  let failed = 0;
  async function worker(index: number) {
    while (performance.now() < deadline) {
      try {
        await op(index);
        if (performance.now() <= deadline) ops++;
      } catch (error) {
        failed++;
        onError(error);
        await sleep(5);
      }
    }
  }
  const running = Promise.all(Array.from({ length: workers }, (_, i) => worker(i)));
  await sleep(seconds * 1000);
  await withTimeout(running, CALL_TIMEOUT_MS * 2, "closed-loop workers to stop").catch(onError);
  return { ops, failed, seconds };
}

// ---------------------------------------------------------------------------------------------
// Calls over WebSocket

/** A WebSocket authenticated through connectionParams, making tRPC calls one frame each. */
export interface Caller {
  /** Sends a mutation; resolves with the answer frame, rejects on an error frame or close. */
  mutate(path: string, input: unknown): Promise<string>;
  close(): void;
}

/** Opens a socket to parley at `http` as the holder of `token`; resolves once it is open. */
export async function openCaller(http: string, token: string): Promise<Caller> {
  const ws = new WebSocket(parleySocketUrl(http));
  const calls = new Map<number, { resolve(text: string): void; reject(error: Error): void }>();
  let nextId = 1;
  let closed = "";
  const failAll = (reason: string) => {
    closed = reason;
    for (const call of calls.values()) call.reject(new SendError(reason));
    calls.clear();
  };
  ws.onmessage = (event) => {
    const text = String(event.data);
    if (text === "PING") return ws.send("PONG");
    // {"id":<n>,... : the id comes first in every answer tRPC sends today; else parse it all.
    let id = text.startsWith('{"id":') ? parseInt(text.slice(6, 20), 10) : NaN;
    if (Number.isNaN(id)) {
      try {
        id = Number(JSON.parse(text)?.id);
      } catch {
        return;
      }
    }
    const call = calls.get(id);
    if (!call) return;
    calls.delete(id);
    if (text.includes('"error"')) call.reject(new SendError(text));
    else call.resolve(text);
  };
  ws.onclose = (event) => failAll(`Socket closed: ${event.code} ${event.reason}`.trim());
  ws.onerror = () => {};
  const opened = new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.addEventListener("close", () => reject(new Error(closed)));
  });
  await withTimeout(opened, CALL_TIMEOUT_MS, "caller socket to open");
  ws.send(connectionParamsFrame(token));
  return {
    mutate(path, input) {
      if (closed) return Promise.reject(new SendError(closed));
      const id = nextId++;
      const { promise, resolve, reject } = Promise.withResolvers<string>();
      calls.set(id, { resolve, reject });
      ws.send(mutationFrame(id, path, input));
      return withTimeout(promise, CALL_TIMEOUT_MS, path).finally(() => calls.delete(id));
    },
    close: () => ws.close(),
  };
}

/** Sends one message over a caller; resolves with its seq. */
export async function sendOver(caller: Caller, input: unknown): Promise<number> {
  const text = await caller.mutate("messages.send", input);
  const seq = seqInAnswer(text);
  if (!(seq > 0)) throw new SendError(`No seq in the answer: ${text}`);
  return seq;
}
