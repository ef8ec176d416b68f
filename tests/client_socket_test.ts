/**
 * Unit tests of the client's WebSocket guard, close reporting and frame cutting (client/socket.ts) and of
 * its token readings (client/identity.ts), on a fake socket: no server.
 */
import assert from "node:assert/strict";
import { createIdentity } from "../client/identity.ts";
import { CLOSE_WAIT_MS, frames, type GuardedSocket, guardedWebSocket } from "../client/socket.ts";
import { MAX_BATCH_SIZE, MAX_FRAME_BYTES } from "../server/limits.ts";

/** Just enough of a WebSocket: records what is sent and how it was closed. */
class FakeSocket extends EventTarget {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  readyState = 1;
  sent: string[] = [];
  closedWith: number | null = null;
  constructor(readonly url: string) {
    super();
  }
  send(data: string) {
    this.sent.push(data);
  }
  close(code?: number) {
    this.closedWith = code ?? 1005;
    this.readyState = 2;
  }
}

const subscription = (id: number, roomId = crypto.randomUUID()) => ({
  id,
  method: "subscription",
  params: { path: "messages.onMessage", input: { json: { roomId, lastEventId: "0" } } },
});

Deno.test("frames cut tRPC's batches by count and by bytes, in order", () => {
  const many = Array.from({ length: 45 }, (_, i) => subscription(i));
  const cut = frames(many).map((frame) => JSON.parse(frame));
  assert.deepEqual(cut.map((f) => (Array.isArray(f) ? f.length : 1)), [20, 20, 5]);
  assert.deepEqual(cut.flat().map((m) => m.id), many.map((m) => m.id));

  const big = Array.from({ length: 5 }, (_, i) => ({ id: i, text: "x".repeat(20_000) }));
  const sized = frames(big);
  assert.ok(sized.length > 1);
  for (const frame of sized) {
    assert.ok(new TextEncoder().encode(frame).byteLength <= MAX_FRAME_BYTES);
    const parsed = JSON.parse(frame);
    assert.ok((Array.isArray(parsed) ? parsed.length : 1) <= MAX_BATCH_SIZE);
  }
  assert.deepEqual(sized.flatMap((f) => [JSON.parse(f)].flat()).map((m) => m.id), [0, 1, 2, 3, 4]);
  assert.deepEqual(frames([{ id: 1 }]), ['{"id":1}'], "one message is sent as itself");
});

Deno.test("a socket never sends calls once the token read last is not the one it announced", async () => {
  let token = "carol-token-0000000000";
  const identity = createIdentity(() => token, { onTokenChange: () => {} });
  const sockets = new Set<GuardedSocket>();
  const Guarded = guardedWebSocket(FakeSocket as unknown as typeof WebSocket, {
    identity,
    sockets,
  });
  const ws = new Guarded("ws://parley.test/trpc") as unknown as FakeSocket & GuardedSocket;
  assert.equal(sockets.size, 1);

  await identity.read();
  ws.send(JSON.stringify({ method: "connectionParams", data: { token } }));
  assert.equal(ws.announced, token);
  ws.send(JSON.stringify(Array.from({ length: 25 }, (_, i) => subscription(i))));
  assert.equal(ws.sent.length, 3, "connectionParams, then 20 + 5");

  token = "dave-token-00000000000";
  await identity.read();
  ws.send(JSON.stringify({ id: 3, method: "subscription.stop" }));
  assert.equal(ws.sent.length, 4, "stopping is still allowed");
  ws.send(JSON.stringify(subscription(30)));
  assert.equal(ws.sent.length, 4, "the call was not sent");
  assert.equal(ws.closedWith, 4000);
  ws.dispatchEvent(new Event("close"));
  assert.equal(sockets.size, 0);
});

Deno.test("a socket the client closes reports close once, within CLOSE_WAIT_MS or at once when abandoned", async () => {
  const identity = createIdentity(() => null, { onTokenChange: () => {} });
  const sockets = new Set<GuardedSocket>();
  const Guarded = guardedWebSocket(FakeSocket as unknown as typeof WebSocket, {
    identity,
    sockets,
  });
  const watch = (ws: EventTarget) => {
    const events: string[] = [];
    for (const type of ["error", "close"]) {
      ws.addEventListener(type, (e) => events.push(`${type}:${(e as CloseEvent).code ?? ""}`));
    }
    return events;
  };

  // A dead peer: close() gets no answer, so close is reported after CLOSE_WAIT_MS.
  const dead = new Guarded("ws://parley.test/trpc") as unknown as FakeSocket & GuardedSocket;
  const deadEvents = watch(dead);
  const closedAt = performance.now();
  dead.close();
  assert.equal(dead.closedWith, 1005);
  await new Promise((resolve) => setTimeout(resolve, CLOSE_WAIT_MS / 2));
  assert.deepEqual(deadEvents, []);
  await new Promise((resolve) => dead.addEventListener("close", resolve));
  assert.ok(performance.now() - closedAt >= CLOSE_WAIT_MS - 10);
  assert.deepEqual(deadEvents, ["close:1006"]);
  assert.equal(sockets.size, 0);
  dead.dispatchEvent(new Event("error")); // the runtime's own events, much later
  dead.dispatchEvent(new Event("close"));
  assert.deepEqual(deadEvents, ["close:1006"], "not passed on");

  // A live peer answers in time: its close passes, once, and no timer is left.
  const live = new Guarded("ws://parley.test/trpc") as unknown as FakeSocket & GuardedSocket;
  const liveEvents = watch(live);
  live.close(1000);
  live.dispatchEvent(new CloseEvent("close", { code: 1000 }));
  live.abandon(4001, "Reconnect requested");
  assert.deepEqual(liveEvents, ["close:1000"]);

  // Abandoned while connecting: error then close at once, as a failed connection reports.
  const connecting = new Guarded("ws://parley.test/trpc") as unknown as FakeSocket & GuardedSocket;
  connecting.readyState = 0;
  const connectingEvents = watch(connecting);
  connecting.abandon(4001, "Reconnect requested");
  assert.equal(connecting.closedWith, 4001);
  assert.deepEqual(connectingEvents, ["error:", "close:4001"]);
  connecting.dispatchEvent(new Event("error"));
  connecting.dispatchEvent(new Event("close"));
  assert.deepEqual(connectingEvents, ["error:", "close:4001"]);
  assert.equal(sockets.size, 0);
});

Deno.test("an identity takes readings in the order they were started", async () => {
  const answers: ((token: string | null) => void)[] = [];
  const changes: string[] = [];
  const identity = createIdentity(
    () => new Promise<string | null>((resolve) => answers.push(resolve)),
    { onTokenChange: () => changes.push(identity.token ?? "signed out"), pollMs: 0 },
  );
  const first = identity.read();
  answers[0]("carol-token-0000000000");
  assert.equal(await first, "carol-token-0000000000");
  assert.equal(identity.version, 0, "the first reading is no change");

  const older = identity.read();
  const newer = identity.read();
  answers[2]("dave-token-00000000000"); // the newer reading answers first
  answers[1]("carol-token-0000000000");
  assert.equal(await newer, "dave-token-00000000000");
  assert.equal(await older, "dave-token-00000000000", "the older reading does not flip it back");
  assert.deepEqual(changes, ["dave-token-00000000000"]);
  assert.equal(identity.version, 1);

  const seen: string[] = [];
  const stop = identity.onChange((change) => seen.push(change.type));
  identity.joined("room");
  const signOut = identity.read();
  answers[3]("");
  assert.equal(await signOut, null, "an empty token is no token");
  stop();
  identity.joined("room");
  assert.deepEqual(seen, ["joined", "token"]);
});
