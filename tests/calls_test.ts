/**
 * Calls (issue #13), the server's side: TURN credentials coturn accepts the form of, joining a
 * room's call, relaying signals only between participants of one call, and leaving by any
 * path, on one instance and across two.
 */
import assert from "node:assert/strict";
import type { CallEvent } from "../server/realtime/calls.ts";
import {
  BULK_LIMITS,
  callError,
  client,
  createTestDatabase,
  errorCode,
  needsRealPostgres,
  signUp,
  startTestEnv,
  waitFor,
  wsClient,
} from "./_helpers.ts";

type Ws = ReturnType<typeof wsClient>;

/** A `calls.onEvent` subscription whose events and errors are collected. */
function watchCall(ws: Ws, roomId: string) {
  const seen = { events: [] as CallEvent[], errors: [] as string[], started: false };
  const sub = ws.trpc.calls.onEvent.subscribe({ roomId }, {
    onStarted: () => void (seen.started = true),
    onData: (event) => void seen.events.push(event),
    onError: (error) => void seen.errors.push(String(error.data?.code)),
  });
  return {
    seen,
    of<T extends CallEvent["type"]>(type: T) {
      return seen.events.filter((e): e is Extract<CallEvent, { type: T }> => e.type === type);
    },
    stop: () => sub.unsubscribe(),
  };
}

/** The base64 HMAC-SHA1 of `message` under `secret`, by WebCrypto (not the server's code). */
async function hmacSha1(secret: string, message: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-1" },
    false,
    ["sign"],
  );
  const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(message));
  return btoa(String.fromCharCode(...new Uint8Array(mac)));
}

Deno.test("calls.iceServers: STUN, and TURN credentials in coturn's use-auth-secret form", async () => {
  const secret = "a shared secret with coturn";
  await using env = await startTestEnv({
    calls: {
      stunUrls: ["stun:stun.example.com:3478"],
      turnUrls: ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"],
      turnSecret: secret,
      turnTtlSeconds: 3600,
    },
  });
  const ada = await signUp(env);
  const before = Math.floor(Date.now() / 1000);
  const { iceServers, expiresAt } = await ada.api.calls.iceServers.query();
  assert.deepEqual(iceServers[0], { urls: ["stun:stun.example.com:3478"] });
  const turn = iceServers[1];
  assert.deepEqual(turn.urls, [
    "turn:turn.example.com:3478?transport=udp",
    "turns:turn.example.com:5349",
  ]);
  const [expiry, userId] = turn.username!.split(":");
  assert.equal(userId, ada.user.id);
  assert.ok(Number(expiry) >= before + 3600 && Number(expiry) <= before + 3601);
  assert.equal(expiresAt?.getTime(), Number(expiry) * 1000);
  assert.equal(turn.credential, await hmacSha1(secret, turn.username!));
  assert.equal(await errorCode(client(env).calls.iceServers.query()), "UNAUTHORIZED");
});

Deno.test("a call: join, polite sides, signals only to their addressee, leave by any path", async (t) => {
  await using env = await startTestEnv({ limits: BULK_LIMITS, calls: { maxParticipants: 3 } });
  const [ada, bob, cy, dee, eve] = await Promise.all([1, 2, 3, 4, 5].map(() => signUp(env)));
  const room = await ada.api.rooms.create.mutate({ name: "Call" });
  for (const u of [bob, cy, dee]) await u.api.rooms.join.mutate({ roomId: room.id });
  const [a, b, c, d, e] = [ada, bob, cy, dee, eve].map((u) => wsClient(env, { token: u.token }));
  const [wa, wb, wc] = [a, b, c].map((ws) => watchCall(ws, room.id));
  try {
    await waitFor(() => [wa, wb, wc].every((w) => w.seen.started), "subscribed");
    const ja = await a.trpc.calls.join.mutate({ roomId: room.id });
    const jb = await b.trpc.calls.join.mutate({ roomId: room.id });

    await t.step("the second joiner sees the first; the first hears of the second", async () => {
      assert.deepEqual(ja.participants, []);
      assert.equal(jb.participants.length, 1);
      assert.equal(jb.participants[0].participantId, ja.participantId);
      assert.equal(jb.participants[0].userId, ada.user.id);
      await waitFor(() => wa.of("participant.joined").length === 1, "ada hears bob");
      const joined = wa.of("participant.joined")[0];
      assert.equal(joined.participantId, jb.participantId);
      assert.equal(joined.username, bob.user.username);
      // Exactly one side of the pair is polite, and both agree which.
      assert.notEqual(joined.polite, jb.participants[0].polite);
      // A subscriber who has not joined hears of joins too, polite toward nobody.
      await waitFor(() => wc.of("participant.joined").length === 2, "cy hears both");
      assert.ok(wc.of("participant.joined").every((j) => j.polite === false));
    });

    await t.step("joining again over the same socket is the same participant", async () => {
      const again = await a.trpc.calls.join.mutate({ roomId: room.id });
      assert.equal(again.participantId, ja.participantId);
    });

    await t.step("a signal reaches its addressee only, in the order sent", async () => {
      const sdp = "v=0\r\n" + "a=x\r\n".repeat(3000); // 15 KB: more than one NOTIFY
      await b.trpc.calls.signal.mutate({
        roomId: room.id,
        to: ja.participantId,
        description: { type: "offer", sdp },
      });
      for (let i = 0; i < 5; i++) {
        await b.trpc.calls.signal.mutate({
          roomId: room.id,
          to: ja.participantId,
          candidate: {
            candidate: `candidate:${i} 1 udp 1 10.0.0.1 ${5000 + i} typ host`,
            sdpMLineIndex: 0,
          },
        });
      }
      await waitFor(() => wa.of("signal").length === 6, "six signals");
      const signals = wa.of("signal");
      assert.ok(signals.every((s) => s.from === jb.participantId));
      assert.equal(signals[0].description?.sdp, sdp);
      assert.deepEqual(
        signals.slice(1).map((s) => s.candidate?.candidate.split(" ")[0]),
        ["candidate:0", "candidate:1", "candidate:2", "candidate:3", "candidate:4"],
      );
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(wb.of("signal").length, 0);
      assert.equal(wc.of("signal").length, 0);
    });

    await t.step("anything else is refused", async () => {
      const to = ja.participantId;
      // Not in the call (cy has not joined): FORBIDDEN.
      assert.equal(
        await errorCode(
          c.trpc.calls.signal.mutate({ roomId: room.id, to, candidate: { candidate: "" } }),
        ),
        "FORBIDDEN",
      );
      // An addressee not in the call: NOT_FOUND.
      assert.equal(
        await errorCode(
          b.trpc.calls.signal.mutate({
            roomId: room.id,
            to: crypto.randomUUID(),
            candidate: { candidate: "" },
          }),
        ),
        "NOT_FOUND",
      );
      // Both, neither, an oversized SDP, an unknown field: BAD_REQUEST.
      for (
        const bad of [
          { description: { type: "offer" as const, sdp: "v=0" }, candidate: { candidate: "" } },
          {},
          { description: { type: "offer" as const, sdp: "x".repeat(32 * 1024 + 1) } },
          { candidate: { candidate: "", extra: 1 } as unknown as { candidate: string } },
        ]
      ) {
        assert.equal(
          await errorCode(b.trpc.calls.signal.mutate({ roomId: room.id, to, ...bad })),
          "BAD_REQUEST",
        );
      }
      // Over HTTP there is no socket to be a participant.
      const error = await callError(bob.api.calls.join.mutate({ roomId: room.id }));
      assert.equal(error.data?.code, "BAD_REQUEST");
    });

    await t.step("a non-member can neither join, nor listen, nor signal", async () => {
      assert.equal(await errorCode(e.trpc.calls.join.mutate({ roomId: room.id })), "FORBIDDEN");
      const we = watchCall(e, room.id);
      await waitFor(() => we.seen.errors.length > 0, "refused");
      assert.deepEqual(we.seen.errors, ["FORBIDDEN"]);
      assert.equal(
        await errorCode(
          e.trpc.calls.signal.mutate({
            roomId: room.id,
            to: ja.participantId,
            candidate: { candidate: "" },
          }),
        ),
        "FORBIDDEN",
      );
      assert.equal(
        await errorCode(e.trpc.calls.join.mutate({ roomId: crypto.randomUUID() })),
        "NOT_FOUND",
      );
    });

    await t.step("a full call is CONFLICT", async () => {
      await c.trpc.calls.join.mutate({ roomId: room.id });
      const error = await callError(d.trpc.calls.join.mutate({ roomId: room.id }));
      assert.equal(error.data?.code, "CONFLICT");
      assert.match(error.message, /at most 3/);
    });

    await t.step("leaving, a closed socket and leaving the room all take one out", async () => {
      assert.deepEqual(await c.trpc.calls.leave.mutate({ roomId: room.id }), { left: true });
      await waitFor(() => wa.of("participant.left").length === 1, "cy left");
      await b.close();
      await waitFor(() => wa.of("participant.left").length === 2, "bob's socket closed");
      assert.equal(wa.of("participant.left")[1].participantId, jb.participantId);
      const jd = await d.trpc.calls.join.mutate({ roomId: room.id });
      await waitFor(() => wa.of("participant.joined").length === 3, "dee joined");
      await dee.api.rooms.leave.mutate({ roomId: room.id });
      await waitFor(() => wa.of("participant.left").length === 3, "dee left the room");
      assert.equal(wa.of("participant.left")[2].participantId, jd.participantId);
      // A signal to someone who left is NOT_FOUND.
      assert.equal(
        await errorCode(
          a.trpc.calls.signal.mutate({
            roomId: room.id,
            to: jd.participantId,
            candidate: { candidate: "" },
          }),
        ),
        "NOT_FOUND",
      );
    });
  } finally {
    for (const w of [wa, wb, wc]) w.stop();
    await Promise.all([a, b, c, d, e].map((ws) => ws.close()));
  }
});

const TWO = "two participants on two instances call each other";
Deno.test({ name: TWO, ignore: needsRealPostgres(TWO) }, async () => {
  await using db = await createTestDatabase();
  await using one = await startTestEnv({ db, limits: BULK_LIMITS });
  await using two = await startTestEnv({ db, limits: BULK_LIMITS });
  const ada = await signUp(one);
  const bob = await signUp(two);
  const room = await ada.api.rooms.create.mutate({ name: "Far apart" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const a = wsClient(one, { token: ada.token });
  const b = wsClient(two, { token: bob.token });
  const wa = watchCall(a, room.id);
  const wb = watchCall(b, room.id);
  try {
    await waitFor(() => wa.seen.started && wb.seen.started, "subscribed");
    const ja = await a.trpc.calls.join.mutate({ roomId: room.id });
    await waitFor(() => wb.of("participant.joined").length === 1, "bob hears ada");
    const jb = await b.trpc.calls.join.mutate({ roomId: room.id });
    assert.deepEqual(jb.participants.map((p) => p.participantId), [ja.participantId]);
    await waitFor(() => wa.of("participant.joined").length === 1, "ada hears bob");
    const sdp = "v=0\r\n" + "a=ü\r\n".repeat(4000); // pieces, and not only ASCII
    await b.trpc.calls.signal.mutate({
      roomId: room.id,
      to: ja.participantId,
      description: { type: "offer", sdp },
    });
    await a.trpc.calls.signal.mutate({
      roomId: room.id,
      to: jb.participantId,
      description: { type: "answer", sdp: "v=0\r\n" },
    });
    await waitFor(() => wa.of("signal").length === 1 && wb.of("signal").length === 1, "signals");
    assert.equal(wa.of("signal")[0].description?.sdp, sdp);
    assert.equal(wb.of("signal")[0].from, ja.participantId);
    await a.close();
    await waitFor(() => wb.of("participant.left").length === 1, "ada's close heard on two");
  } finally {
    wa.stop();
    wb.stop();
    await a.close();
    await b.close();
  }
});

Deno.test("a participant lives with its call subscription and its session, and leaks nothing", async (t) => {
  await using env = await startTestEnv({
    limits: BULK_LIMITS,
    accounts: { sessionTtlSeconds: 3 },
  });
  const [ada, bob] = [await signUp(env), await signUp(env)];
  const room = await ada.api.rooms.create.mutate({ name: "Lifetimes" });
  await bob.api.rooms.join.mutate({ roomId: room.id });
  const a = wsClient(env, { token: ada.token });
  const b = wsClient(env, { token: bob.token });
  const wa = watchCall(a, room.id);
  try {
    await waitFor(() => wa.seen.started, "ada listens");
    const baseline = env.server.hubStats().holders;

    await t.step(
      "signals wait for a subscription opened after joining; it ends the call",
      async () => {
        const jb = await b.trpc.calls.join.mutate({ roomId: room.id });
        const ja = await a.trpc.calls.join.mutate({ roomId: room.id });
        await a.trpc.calls.signal.mutate({
          roomId: room.id,
          to: jb.participantId,
          description: { type: "offer", sdp: "v=0\r\n" },
        });
        const wb = watchCall(b, room.id);
        await waitFor(() => wb.of("signal").length === 1, "the early offer, once bob listens");
        assert.equal(wb.of("signal")[0].from, ja.participantId);
        // Ending the call subscription takes the participant out.
        wb.stop();
        await waitFor(() => wa.of("participant.left").length === 1, "bob out");
        assert.equal(wa.of("participant.left")[0].participantId, jb.participantId);
      },
    );

    await t.step("joining again over one socket watches nothing more", async () => {
      for (let i = 0; i < 5; i++) await a.trpc.calls.join.mutate({ roomId: room.id });
      // Ada's call subscription and her participant: one holder each.
      assert.equal(env.server.hubStats().holders, baseline + 1);
      await a.trpc.calls.leave.mutate({ roomId: room.id });
      assert.equal(env.server.hubStats().holders, baseline);
    });

    await t.step("a session that expires takes its participant out of the call", async () => {
      const wb = watchCall(b, room.id);
      await waitFor(() => wb.seen.started, "bob listens again");
      const before = wb.of("participant.left").length;
      await a.trpc.calls.join.mutate({ roomId: room.id });
      await waitFor(() => wb.of("participant.joined").length === 1, "ada in");
      // Nothing renews ada's session: it ends within its 3 s lifetime (and a 1 s sweep). Bob's
      // is kept alive meanwhile.
      const keepAlive = setInterval(() => void b.trpc.users.me.query().catch(() => {}), 500);
      try {
        await waitFor(() => wb.of("participant.left").length > before, "ada out", 8_000);
      } finally {
        clearInterval(keepAlive);
      }
      assert.deepEqual(wb.seen.errors, []);
      wb.stop();
    });
  } finally {
    wa.stop();
    await a.close();
    await b.close();
  }
});
