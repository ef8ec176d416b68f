/**
 * A real call in a real browser (issue #13): two headless Chromium contexts with a fake camera
 * and microphone join a room's call through the client's `joinCall` (perfect negotiation over
 * `calls.*`), reach `connected` and decode each other's video. Then again with
 * `iceTransportPolicy: "relay"` through a local coturn started with `use-auth-secret` and
 * parley's secret: media flows only if coturn accepts the credentials parley issued. On real
 * Postgres the two sit on two instances. A third context, not a member, is refused.
 *
 * Then the example chat page's call button (examples/chat/): two users sign up and open one
 * room through the page, click "Join call" and each sees the other's video tile playing; a
 * third sees why it cannot join (camera refused, then call full); leaving the call, or the
 * room, takes the tile away on the other page (on real Postgres the second user's page talks
 * to a second instance). A screenshot goes to test-results/browser/.
 */
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix
import { type Browser, chromium, type Page } from "npm:playwright-core@1.65.1";
import { serveExample } from "../scripts/serve_example.ts";
import { spawnProcess } from "../scripts/server_process.ts";
import {
  createTestDatabase,
  EMBEDDED,
  errorCode,
  freePort,
  signUp,
  startTestEnv,
  wsClient,
} from "./_helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
/** Headless Chromium with a fake camera and microphone (a test pattern and a beep). */
const FAKE_MEDIA_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--use-fake-device-for-media-stream",
];
const SHOTS = new URL("../test-results/browser/", import.meta.url);
const TURNSERVER = "/usr/bin/turnserver";
const hasChromium = await Deno.stat(CHROMIUM).then(() => true, () => false);
const hasCoturn = await Deno.stat(TURNSERVER).then(() => true, () => false);
if ((!hasChromium || !hasCoturn) && Deno.env.get("PARLEY_REQUIRE_BROWSER")) {
  throw new Error(
    `Call tests need ${CHROMIUM} and ${TURNSERVER}: apt-get install -y chromium coturn`,
  );
}

/** Starts coturn on 127.0.0.1 with TURN REST API credentials (`use-auth-secret`). */
async function startCoturn(secret: string) {
  const port = freePort();
  const turn = spawnProcess({
    args: [],
    env: {},
    prefix: [
      TURNSERVER,
      "-n",
      `--listening-port=${port}`,
      "--listening-ip=127.0.0.1",
      "--relay-ip=127.0.0.1",
      "--min-port=40000",
      "--max-port=40999",
      "--use-auth-secret",
      `--static-auth-secret=${secret}`,
      "--realm=parley.test",
      "--fingerprint",
      "--no-tls",
      "--no-dtls",
      "--no-cli",
      "--allow-loopback-peers",
      "--log-file=stdout",
      "--simple-log",
    ],
    keepLines: 2000,
  });
  await turn.waitForLine("stdout", /(Total|listener|relay).*(thread|started|opened)/i, 10_000)
    .catch(() => {});
  return { port, turn };
}

/** Joins the room's call in `page` with the fake camera; the handle stays in `window`. */
function joinIn(
  page: Page,
  call: { api: string; token: string; roomId: string; policy: "all" | "relay" },
) {
  return page.evaluate(async ({ api, token, roomId, policy }) => {
    const bundle = "/parley_client.js"; // served next to the page
    const { createParleyClient, joinCall } = await import(bundle);
    const w = window as unknown as Record<string, unknown>;
    w.parley ??= createParleyClient({ url: api, token });
    // DOM types are not loaded in Deno's type check: what is used, structurally.
    const media = (navigator as unknown as {
      mediaDevices: { getUserMedia(constraints: unknown): Promise<unknown> };
    }).mediaDevices;
    const stream = await media.getUserMedia({ video: true, audio: true });
    const seen = { tracks: [] as string[], states: [] as string[] };
    w.seen = seen;
    w.call = await joinCall(w.parley, roomId, {
      localStream: stream,
      iceTransportPolicy: policy,
      onTrack: (_p: unknown, track: { kind: string }) => seen.tracks.push(track.kind),
      onConnectionStateChange: (_p: unknown, state: string) => seen.states.push(state),
    });
    return (w.call as { participantId: string }).participantId;
  }, call);
}

/** The page's first peer connection: its state, decoded video frames, and the local candidate type in use. */
function peerStats(page: Page) {
  return page.evaluate(async () => {
    type Report = Record<string, string | number | undefined> & { id: string; type: string };
    type Peer = { pc: { connectionState: string; getStats(): Promise<Map<string, Report>> } };
    const call = (window as unknown as { call: { peers: Map<string, Peer> } }).call;
    const [peer] = call.peers.values();
    if (!peer) return null;
    const stats = await peer.pc.getStats();
    let frames = 0;
    let pair: Report | undefined;
    stats.forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") {
        frames = Number(report.framesDecoded ?? 0);
      }
      if (report.type === "transport" && report.selectedCandidatePairId) {
        pair = stats.get(String(report.selectedCandidatePairId));
      }
    });
    const local = pair?.localCandidateId ? stats.get(String(pair.localCandidateId)) : undefined;
    return {
      state: peer.pc.connectionState,
      frames,
      candidateType: (local?.candidateType as string | undefined) ?? null,
    };
  });
}

/** Waits until both pages are connected and each decodes ever more video frames. */
async function expectVideoBothWays(pages: Page[], candidateType?: string) {
  const deadline = Date.now() + 30_000;
  for (const page of pages) {
    while ((await peerStats(page))?.state !== "connected") {
      if (Date.now() > deadline) {
        throw new Error(`not connected: ${JSON.stringify(await peerStats(page))}`);
      }
      await page.waitForTimeout(200);
    }
  }
  for (const page of pages) {
    let first = await peerStats(page);
    while ((first?.frames ?? 0) === 0 && Date.now() < deadline) {
      await page.waitForTimeout(200);
      first = await peerStats(page);
    }
    await page.waitForTimeout(1_000);
    const later = await peerStats(page);
    assert.ok(first!.frames > 0, "video frames decoded");
    assert.ok(
      later!.frames > first!.frames,
      `frames keep coming: ${first!.frames} then ${later!.frames}`,
    );
    if (candidateType) assert.equal(later!.candidateType, candidateType);
  }
}

Deno.test({
  name: "a call between two browsers: connected, video both ways, then through coturn only",
  ignore: !hasChromium || !hasCoturn,
  async fn(t) {
    const secret = crypto.randomUUID();
    const { port, turn } = await startCoturn(secret);
    await using _turn = turn;
    const page = await serveExample();
    const calls = { turnUrls: [`turn:127.0.0.1:${port}?transport=udp`], turnSecret: secret };
    await using db = await createTestDatabase();
    await using one = await startTestEnv({ db, origins: page.url, calls });
    // On real Postgres the second browser talks to a second instance.
    await using two = EMBEDDED ? null : await startTestEnv({ db, origins: page.url, calls });
    const [ada, bob, eve] = [await signUp(one), await signUp(one), await signUp(one)];
    const room = await ada.api.rooms.create.mutate({ name: "Video" });
    await bob.api.rooms.join.mutate({ roomId: room.id });

    let browser: Browser | undefined;
    try {
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        // Every getUserMedia is allowed without asking.
        args: [...FAKE_MEDIA_ARGS, "--use-fake-ui-for-media-stream"],
      });
      const pages = await Promise.all([1, 2, 3].map(async () => {
        const p = await (await browser!.newContext()).newPage();
        await p.goto(`${page.url}/?api=${one.url}`);
        return p;
      }));
      const [pageA, pageB, pageE] = pages;
      const apiB = two?.url ?? one.url;

      await t.step("both join, reach connected and decode each other's video", async () => {
        const a = await joinIn(pageA, {
          api: one.url,
          token: ada.token,
          roomId: room.id,
          policy: "all",
        });
        const b = await joinIn(pageB, {
          api: apiB,
          token: bob.token,
          roomId: room.id,
          policy: "all",
        });
        assert.notEqual(a, b);
        await expectVideoBothWays([pageA, pageB]);
      });

      await t.step("again through coturn only: parley's credentials are accepted", async () => {
        for (const p of [pageA, pageB]) {
          await p.evaluate(() =>
            (window as unknown as { call: { leave(): Promise<void> } }).call.leave()
          );
        }
        await joinIn(pageA, { api: one.url, token: ada.token, roomId: room.id, policy: "relay" });
        await joinIn(pageB, { api: apiB, token: bob.token, roomId: room.id, policy: "relay" });
        await expectVideoBothWays([pageA, pageB], "relay");
      });

      await t.step("a browser that is not a member can neither join nor signal", async () => {
        const outcome = await pageE.evaluate(async ({ api, token, roomId }) => {
          const bundle = "/parley_client.js";
          const { createParleyClient, joinCall } = await import(bundle);
          const parley = createParleyClient({ url: api, token });
          const codes: string[] = [];
          try {
            await joinCall(parley, roomId, {});
          } catch (error) {
            codes.push((error as { data?: { code?: string } }).data?.code ?? String(error));
          }
          return codes;
        }, { api: one.url, token: eve.token, roomId: room.id });
        assert.deepEqual(outcome, ["FORBIDDEN"]);
        const to = await pageA.evaluate(() =>
          (window as unknown as { call: { participantId: string } }).call.participantId
        );
        const intruder = wsClient(one, { token: eve.token });
        try {
          const signal = { roomId: room.id, to, candidate: { candidate: "" } };
          assert.equal(await errorCode(intruder.trpc.calls.signal.mutate(signal)), "FORBIDDEN");
        } finally {
          await intruder.close();
        }
      });
    } finally {
      await browser?.close();
      await page.shutdown();
    }
  },
});

/** A remote video tile of the example page: whose, its state, and its video's size and playhead. */
interface Tile {
  participantId: string | null;
  name: string | null;
  state: string | null;
  videoWidth: number;
  currentTime: number;
}

/** The example page's remote tiles, in order. */
function remoteTiles(page: Page): Promise<Tile[]> {
  return page.$$eval("#tiles .tile.remote", (tiles) =>
    tiles.map((tile) => {
      // DOM types are not loaded in Deno's type check: what is used, structurally.
      const video = tile.querySelector("video") as unknown as {
        videoWidth: number;
        currentTime: number;
      };
      return {
        participantId: tile.getAttribute("data-participant-id"),
        name: tile.querySelector(".name")?.textContent ?? null,
        state: tile.getAttribute("data-state"),
        videoWidth: video.videoWidth,
        currentTime: video.currentTime,
      };
    }));
}

async function until(page: Page, what: string, check: () => Promise<boolean>, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`Timed out in the browser: ${what}`);
    await page.waitForTimeout(100);
  }
}

/** Waits until `page` shows `name`'s tile connected with video, then checks it plays on. */
async function expectPlayingTile(page: Page, name: string): Promise<Tile> {
  let tile: Tile | undefined;
  await until(page, `${name}'s video playing`, async () => {
    tile = (await remoteTiles(page)).find((t) => t.name === name);
    return tile?.state === "connected" && tile.videoWidth > 0 && tile.currentTime > 0;
  }, 30_000);
  await page.waitForTimeout(1_000);
  const later = (await remoteTiles(page)).find((t) => t.participantId === tile!.participantId);
  assert.ok(later, `${name}'s tile stays`);
  assert.ok(
    later.currentTime > tile!.currentTime,
    `${name}'s video plays on: ${tile!.currentTime} s then ${later.currentTime} s`,
  );
  assert.match(tile!.participantId ?? "", /^[0-9a-f-]{36}$/);
  return tile!;
}

/** Signs up as `username` through the example page's form. */
async function signUpOnPage(page: Page, url: string, username: string) {
  await page.goto(url);
  await page.fill("#signup-form [name=username]", username);
  await page.click("#signup-form button");
  await page.waitForSelector("#rooms:not([hidden])");
}

/** The text of the page's call button, and the call's message (null while hidden). */
function callUi(page: Page) {
  return page.$eval("#call", (call) => {
    const message = call.querySelector("#call-message")!;
    return {
      button: call.querySelector("#call-button")!.textContent,
      message: message.hasAttribute("hidden") ? null : message.textContent,
      tiles: call.querySelectorAll("#tiles .tile").length,
    };
  });
}

Deno.test({
  name: "the example page's call button: video tiles both ways, a full call, leaving",
  ignore: !hasChromium,
  async fn(t) {
    const example = await serveExample();
    await using db = await createTestDatabase();
    // Two seats, so a third person finds the call full.
    const calls = { maxParticipants: 2 };
    await using one = await startTestEnv({ db, origins: example.url, calls });
    // On real Postgres the second browser talks to a second instance.
    await using two = EMBEDDED ? null : await startTestEnv({ db, origins: example.url, calls });
    await Deno.mkdir(SHOTS, { recursive: true });
    const urlA = `${example.url}/?api=${one.url}`;
    const urlB = `${example.url}/?api=${two?.url ?? one.url}`;

    let browser: Browser | undefined;
    try {
      // Without --use-fake-ui-for-media-stream: a context's camera is refused unless granted.
      browser = await chromium.launch({ executablePath: CHROMIUM, args: FAKE_MEDIA_ARGS });
      const media = { permissions: ["camera", "microphone"] };
      const pageA = await (await browser.newContext(media)).newPage();
      const pageB = await (await browser.newContext(media)).newPage();
      const carol = await browser.newContext(); // no camera until granted
      const pageC = await carol.newPage();

      await t.step("two users sign up and open the same room through the page", async () => {
        await signUpOnPage(pageA, urlA, "ada");
        await pageA.fill("#room-form [name=name]", "Huddle");
        await pageA.click("#room-form button");
        await pageA.waitForSelector("#state[data-state=live]");
        await signUpOnPage(pageB, urlB, "bob");
        await pageB.click("#room-list button[data-room-name=Huddle]");
        await pageB.waitForSelector("#state[data-state=live]");
        assert.deepEqual(await callUi(pageA), { button: "Join call", message: null, tiles: 0 });
      });

      await t.step("both click 'Join call' and each plays the other's video", async () => {
        await pageA.click("#call-button");
        await pageB.click("#call-button");
        const seenByA = await expectPlayingTile(pageA, "bob");
        const seenByB = await expectPlayingTile(pageB, "ada");
        assert.notEqual(seenByA.participantId, seenByB.participantId);
        for (const page of [pageA, pageB]) {
          assert.deepEqual(await callUi(page), { button: "Leave call", message: null, tiles: 2 });
          const local = await page.$eval("#tiles .tile.local", (tile) => {
            const video = tile.querySelector("video") as unknown as {
              muted: boolean;
              videoWidth: number;
            };
            return { muted: video.muted, playing: video.videoWidth > 0 };
          });
          assert.deepEqual(local, { muted: true, playing: true }, "one's own tile, muted");
        }
        await pageA.screenshot({ path: new URL("11_ada_call.png", SHOTS).pathname });
      });

      await t.step(
        "a third member is told the camera was refused, then that the call is full",
        async () => {
          await signUpOnPage(pageC, urlA, "carol");
          await pageC.click("#room-list button[data-room-name=Huddle]");
          await pageC.waitForSelector("#state[data-state=live]");
          await pageC.click("#call-button");
          await pageC.waitForSelector("#call-message:not([hidden])");
          const refused = await callUi(pageC);
          assert.match(refused.message ?? "", /refused/);
          assert.deepEqual([refused.button, refused.tiles], ["Join call", 0]);

          await carol.grantPermissions(["camera", "microphone"]);
          await pageC.click("#call-button");
          await until(
            pageC,
            "the call is full",
            async () => /full/.test((await callUi(pageC)).message ?? ""),
          );
          assert.equal((await callUi(pageC)).button, "Join call");
          assert.equal((await callUi(pageC)).tiles, 0);
          assert.equal((await remoteTiles(pageA)).length, 1, "ada still sees bob only");
        },
      );

      await t.step("bob leaves: his tile goes from ada's page", async () => {
        await pageB.click("#call-button");
        assert.deepEqual(await callUi(pageB), { button: "Join call", message: null, tiles: 0 });
        await until(
          pageA,
          "bob's tile removed",
          async () => (await remoteTiles(pageA)).length === 0,
        );
        assert.equal((await callUi(pageA)).tiles, 1, "ada's own tile stays");
      });

      await t.step("carol joins now; ada leaving the room leaves the call", async () => {
        await pageC.click("#call-button");
        await expectPlayingTile(pageC, "ada");
        await expectPlayingTile(pageA, "carol");
        await pageA.click("#leave-room");
        await pageA.waitForSelector("#rooms:not([hidden])");
        await until(
          pageC,
          "ada's tile removed",
          async () => (await remoteTiles(pageC)).length === 0,
        );
        assert.equal((await callUi(pageA)).tiles, 0);
        await pageA.click("#room-list button[data-room-name=Huddle]");
        await pageA.waitForSelector("#state[data-state=live]");
        assert.deepEqual(await callUi(pageA), { button: "Join call", message: null, tiles: 0 });
      });
    } finally {
      await browser?.close();
      await example.shutdown();
    }
  },
});
