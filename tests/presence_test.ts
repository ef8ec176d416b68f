/**
 * Presence between instances, in process: what one instance hears of another's members, when
 * its notifications come slowly or it is heard again after being given up.
 */
import assert from "node:assert/strict";
import type { LiveMember } from "../db/events.ts";
import type { LiveItem } from "../server/realtime/broadcast.ts";
import { Presence } from "../server/realtime/presence.ts";

/** An instance's presence whose announcements and publications are recorded. */
function instance(instanceId: string) {
  const sent: LiveItem[] = [];
  const changes: string[][] = [];
  const offline: string[] = [];
  const timers = new Set<ReturnType<typeof setTimeout>>();
  const presence = new Presence({
    instanceId,
    announce: (item) => void sent.push(JSON.parse(JSON.stringify(item))),
    onChange: (_roomId, online) => void changes.push(online.map((m) => m.userId)),
    onOffline: (_roomId, userId) => void offline.push(userId),
    onInstanceGone: () => {},
    onFirstPeer: () => {},
    later(ms, fn) {
      const timer = setTimeout(() => {
        timers.delete(timer);
        fn();
      }, ms);
      timers.add(timer);
    },
  });
  return {
    presence,
    sent,
    changes,
    offline,
    close() {
      presence.close();
      for (const timer of timers) clearTimeout(timer);
    },
  };
}

const member = (userId: string): LiveMember => ({
  roomId: "room",
  userId,
  username: userId,
  avatarUrl: null,
  joinedAt: new Date(0),
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

Deno.test("another instance sending its members again slowly never takes them offline", async () => {
  const a = instance("a");
  const b = instance("b");
  try {
    a.presence.enter(member("ada"));
    for (const item of a.sent.splice(0)) b.presence.heard(item);
    await sleep(120);
    assert.deepEqual(b.changes, [["ada"]]);
    // b says hello (it reconnected): a sends reset, its members, synced. They reach b slowly.
    a.presence.heard({ k: "hello", i: "b" });
    const resend = a.sent.splice(0).filter((item) => item.k !== "alive");
    assert.deepEqual(resend.map((item) => item.k), ["reset", "presence", "synced"]);
    for (const item of resend) {
      b.presence.heard(item);
      await sleep(80); // longer than the coalescing window
    }
    await sleep(120);
    assert.deepEqual(b.changes, [["ada"]], "no change published: ada never went offline");
    assert.deepEqual(b.offline, []);
    assert.deepEqual(b.presence.online("room").map((m) => m.userId), ["ada"]);
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("an instance heard again after being given up is asked for its members", () => {
  const b = instance("b");
  try {
    // The first item heard from instance "a" is a member coming online, not its list.
    b.presence.heard({ k: "presence", i: "a", r: "room", m: member("ada"), on: true });
    assert.ok(b.sent.some((item) => item.k === "hello"), "b says hello: everyone sends all");
  } finally {
    b.close();
  }
});
