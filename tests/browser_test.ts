/**
 * The seed's success checklist, in a real browser: headless Chromium drives the example
 * chat page (served from an allowed origin on its own port) against the API on another
 * port, so CORS and the WebSocket Origin check are exercised by the browser itself.
 * Screenshots go to test-results/browser/.
 */
import assert from "node:assert/strict";
// Test-only, so imported by URL and locked in tests/deno.lock: deno.json's import map and
// deno.lock hold only what `deno task start` installs.
// deno-lint-ignore no-import-prefix
import { type Browser, type BrowserContext, chromium, type Page } from "npm:playwright-core@1.65.1";
import { serveExample } from "../scripts/serve_example.ts";
import { client, startTestEnv, waitFor } from "./_helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const PASSWORD = "alice's password";
const SHOTS = new URL("../test-results/browser/", import.meta.url);
const hasChromium = await Deno.stat(CHROMIUM).then(() => true, () => false);
if (!hasChromium && Deno.env.get("PARLEY_REQUIRE_BROWSER")) {
  throw new Error(`Browser tests need ${CHROMIUM}: apt-get install -y chromium`);
}
if (!hasChromium) console.log(`Skipping browser tests: ${CHROMIUM} is not installed`);

/** The visible messages of a page: [seq, author, avatar src or fallback letter, content]. */
function messagesOf(page: Page) {
  return page.$$eval("#messages .message", (items) =>
    items.map((item) => {
      const avatar = item.querySelector(".avatar");
      return [
        Number(item.getAttribute("data-seq")),
        item.querySelector(".author")?.textContent,
        avatar?.tagName === "IMG" ? avatar.getAttribute("src") : avatar?.textContent,
        item.querySelector(".content")?.textContent,
      ];
    }));
}

/** The avatar in the page's header: the image's src, or "" for the first-letter fallback. */
function myAvatar(page: Page) {
  return page.$eval("#me-avatar", (el) => el.querySelector("img")?.getAttribute("src") ?? "");
}

/** The names in the page's room list, in order. */
function roomNames(page: Page) {
  return page.$$eval("#room-list .room-name", (items) => items.map((item) => item.textContent));
}

/** The token the page stored for the API it talks to, or null. */
function storedToken(page: Page) {
  return page.evaluate(() => {
    const key = Object.keys(localStorage).find((k) => k.startsWith("parley-token:"));
    return key ? localStorage.getItem(key) : null;
  });
}

/** The names shown online in the open room, each with a presence dot. */
function onlineNames(page: Page) {
  return page.$$eval(
    "#online .member",
    (items) => items.filter((item) => item.querySelector(".dot")).map((item) => item.textContent),
  );
}

/** The "… is typing" line, or null while it is hidden. */
function typingLine(page: Page) {
  return page.$eval("#typing", (el) => el.hasAttribute("hidden") ? null : el.textContent);
}

/** A message's content, note ("(edited)", "message deleted") and whether it shows as deleted. */
function messageAt(page: Page, seq: number) {
  return page.$eval(`#messages .message[data-seq="${seq}"]`, (item) => ({
    content: item.querySelector(".content")?.textContent,
    note: item.querySelector(".note")?.textContent ?? null,
    deleted: item.classList.contains("deleted"),
    canEdit: item.querySelector(".edit") !== null,
  }));
}

/** A message's reaction button for `emoji`: its count (0 when none) and whether it is mine. */
function reactionAt(page: Page, seq: number, emoji: string) {
  return page.$eval(
    `#messages .message[data-seq="${seq}"] .reaction[data-emoji="${emoji}"]`,
    (b) => ({
      count: Number(b.querySelector(".count")?.textContent ?? 0),
      mine: b.getAttribute("aria-pressed") === "true",
    }),
  );
}

/** The unread count the room list shows for a room (0 when its badge is hidden). */
function unreadOf(page: Page, roomName: string) {
  return page.$eval(
    `#room-list li[data-room-name="${roomName}"] .unread`,
    (el) => el.hasAttribute("hidden") ? 0 : Number(el.textContent),
  );
}

/** Cuts the page's WebSockets; with `offline`, new ones fail until it is set back to false. */
function cutSockets(page: Page, offline: boolean) {
  return page.evaluate((offline) => {
    const debug = (globalThis as unknown as {
      parleyDebug: { sockets: WebSocket[]; offline: boolean };
    }).parleyDebug;
    debug.offline = offline;
    if (offline) { for (const socket of debug.sockets) socket.close(); }
  }, offline);
}

async function until(
  page: Page,
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 10_000,
) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`Timed out in the browser: ${what}`);
    await page.waitForTimeout(50);
  }
}

Deno.test({
  name: "the example chat page in headless Chromium",
  ignore: !hasChromium,
  async fn(t) {
    const bundle = `${await Deno.makeTempDir({ prefix: "parley_browser_" })}/parley_client.js`;
    const allowedPage = await serveExample();
    const refusedPage = await serveExample({ bundle: await bundleFrom(allowedPage.url, bundle) });
    await using env = await startTestEnv({ origins: allowedPage.url });
    const api = env.url;
    await Deno.mkdir(SHOTS, { recursive: true });

    let browser: Browser | undefined;
    try {
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
      });
      const alice = await browser.newContext();
      const bob = await browser.newContext(); // a second device
      const alice2 = await browser.newContext(); // alice's second device, signed in later
      const pageA2 = await alice2.newPage();
      const pageA = await alice.newPage();
      const pageB = await bob.newPage();
      const avatarUrl = `${allowedPage.url}/sample_avatar.svg`;
      const thumbnailUrl = `${allowedPage.url}/sample_thumbnail.svg`;

      await t.step(
        "user creation and join answer 200 with CORS headers; the WebSocket opens",
        async () => {
          const calls: { url: string; status: number; cors: string | null }[] = [];
          pageA.on("response", (res) => {
            if (res.url().startsWith(api)) {
              calls.push({
                url: res.url(),
                status: res.status(),
                cors: res.headers()["access-control-allow-origin"] ?? null,
              });
            }
          });
          let socketOpened = false;
          pageA.on("websocket", (ws) => {
            ws.on("framereceived", () => socketOpened = true);
          });
          await pageA.goto(`${allowedPage.url}/?api=${api}`);
          await pageA.fill("#signup-form [name=username]", "alice");
          await pageA.fill("#signup-form [name=avatarUrl]", avatarUrl);
          await pageA.click("#signup-form button");
          await pageA.waitForSelector("#rooms:not([hidden])");
          await pageA.fill("#room-form [name=name]", "Standup");
          await pageA.fill("#room-form [name=thumbnailUrl]", thumbnailUrl);
          await pageA.click("#room-form button");
          await pageA.waitForSelector("#state[data-state=live]");
          const create = calls.find((c) => c.url.includes("users.create"));
          assert.deepEqual([create?.status, create?.cors], [200, allowedPage.url]);
          assert.ok(socketOpened, "the WebSocket opened and carried frames");

          await pageB.goto(`${allowedPage.url}/?api=${api}`);
          await pageB.fill("#signup-form [name=username]", "bob");
          await pageB.click("#signup-form button");
          const join = pageB.waitForResponse((res) => res.url().includes("rooms.join"));
          await pageB.click("#room-list button[data-room-name=Standup]");
          const joined = await join;
          assert.equal(joined.status(), 200);
          assert.equal(joined.headers()["access-control-allow-origin"], allowedPage.url);
          await pageB.waitForSelector("#state[data-state=live]");
        },
      );

      await t.step(
        "a message sent on one device shows at once on the other, with its avatar",
        async () => {
          await pageA.fill("#send-form [name=content]", "hello from alice");
          await pageA.click("#send-form button");
          await until(
            pageB,
            "bob sees alice's message",
            async () => (await messagesOf(pageB)).length === 1,
          );
          assert.deepEqual(await messagesOf(pageB), [[1, "alice", avatarUrl, "hello from alice"]]);
          await pageB.fill("#send-form [name=content]", "hi alice");
          await pageB.click("#send-form button");
          await until(
            pageA,
            "alice sees bob's reply",
            async () => (await messagesOf(pageA)).length === 2,
          );
          assert.deepEqual((await messagesOf(pageA))[1], [2, "bob", "B", "hi alice"]);
          await shot(pageA, "1_alice_live");
          await shot(pageB, "1_bob_live");
        },
      );

      await t.step(
        "after a reload both devices show the full history and the thumbnail",
        async () => {
          const before = await messagesOf(pageA);
          for (const page of [pageA, pageB]) {
            await page.reload();
            await page.waitForSelector("#state[data-state=live]");
            await until(
              page,
              "history after reload",
              async () => (await messagesOf(page)).length === before.length,
            );
            assert.deepEqual(await messagesOf(page), before);
            assert.equal(await page.getAttribute("#room-thumbnail", "src"), thumbnailUrl);
            assert.equal(await page.isHidden("#room-thumbnail"), false);
          }
        },
      );

      await t.step("a cut WebSocket resumes with every message once, in order", async () => {
        await pageB.evaluate(() => {
          const debug = (globalThis as unknown as { parleyDebug: { sockets: WebSocket[] } })
            .parleyDebug;
          for (const socket of debug.sockets) socket.close();
        });
        for (let i = 1; i <= 5; i++) {
          await pageA.fill("#send-form [name=content]", `while bob was away ${i}`);
          await pageA.click("#send-form button");
        }
        await until(pageB, "bob caught up", async () => (await messagesOf(pageB)).length === 7);
        const seen = await messagesOf(pageB);
        assert.deepEqual(seen.map((m) => m[0]), [1, 2, 3, 4, 5, 6, 7]);
        assert.deepEqual(seen.slice(2).map((m) => m[3]), [
          "while bob was away 1",
          "while bob was away 2",
          "while bob was away 3",
          "while bob was away 4",
          "while bob was away 5",
        ]);
        await shot(pageA, "2_alice_after_cut");
        await shot(pageB, "2_bob_after_cut");
      });

      await t.step("each page shows the other member online, with a presence dot", async () => {
        await until(
          pageA,
          "bob online for alice",
          async () => (await onlineNames(pageA)).includes("bob"),
        );
        await until(
          pageB,
          "alice online for bob",
          async () => (await onlineNames(pageB)).includes("alice"),
        );
        assert.deepEqual((await onlineNames(pageA)).sort(), ["alice", "bob"]);
      });

      await t.step(
        "typing on one page shows '… is typing' on the other; clearing the box ends it",
        async () => {
          await pageB.locator("#send-form [name=content]").pressSequentially("hel", {
            delay: 50,
          });
          await until(pageA, "bob typing", async () => await typingLine(pageA) !== null);
          assert.equal(await typingLine(pageA), "bob is typing…");
          assert.equal(await typingLine(pageB), null, "one's own typing is not shown");
          await shot(pageA, "6_alice_sees_bob_typing");
          await pageB.fill("#send-form [name=content]", "");
          await until(pageA, "bob stopped", async () => await typingLine(pageA) === null);
        },
      );

      await t.step(
        "an edit and a deletion of one's own message show on the other page",
        async () => {
          assert.equal((await messageAt(pageA, 3)).canEdit, true, "alice's own message");
          assert.equal((await messageAt(pageB, 3)).canEdit, false, "not bob's to edit");
          assert.equal((await messageAt(pageB, 2)).canEdit, true, "bob's own message");
          await pageA.click('#messages .message[data-seq="3"] .edit');
          assert.equal(
            await pageA.inputValue("#send-form [name=content]"),
            "while bob was away 1",
          );
          await pageA.fill("#send-form [name=content]", "edited by alice");
          await pageA.click("#send-form button");
          await until(
            pageB,
            "bob sees the edit",
            async () => (await messageAt(pageB, 3)).content === "edited by alice",
          );
          assert.equal((await messageAt(pageB, 3)).note, "(edited)");

          await pageA.click('#messages .message[data-seq="4"] .delete');
          await until(
            pageB,
            "bob sees the deletion",
            async () => (await messageAt(pageB, 4)).deleted,
          );
          assert.deepEqual(await messageAt(pageB, 4), {
            content: "",
            note: "message deleted",
            deleted: true,
            canEdit: false,
          });
          await shot(pageB, "7_bob_sees_edit_and_delete");
        },
      );

      await t.step(
        "a reaction on one page shows its count on the other, pressed only for who reacted",
        async () => {
          await pageB.click('#messages .message[data-seq="1"] .reaction[data-emoji="👍"]');
          await until(
            pageA,
            "alice sees bob's 👍",
            async () => (await reactionAt(pageA, 1, "👍")).count === 1,
          );
          assert.deepEqual(await reactionAt(pageA, 1, "👍"), { count: 1, mine: false });
          await until(
            pageB,
            "bob's 👍 pressed",
            async () => (await reactionAt(pageB, 1, "👍")).mine,
          );
          await pageA.click('#messages .message[data-seq="1"] .reaction[data-emoji="👍"]');
          await until(pageB, "two 👍", async () => (await reactionAt(pageB, 1, "👍")).count === 2);
          assert.deepEqual(await reactionAt(pageB, 1, "👍"), { count: 2, mine: true });
          await shot(pageA, "8_alice_reactions");
        },
      );

      await t.step(
        "a room's unread count in the room list rises with new messages and clears once read",
        async () => {
          await pageB.click("#leave-room");
          await until(pageB, "the room list", async () => (await roomNames(pageB)).length > 0);
          assert.equal(await unreadOf(pageB, "Standup"), 0, "bob read it all");
          for (const content of ["are you there, bob?", "bob?"]) {
            await pageA.fill("#send-form [name=content]", content);
            await pageA.click("#send-form button");
          }
          await until(pageB, "two unread", async () => await unreadOf(pageB, "Standup") === 2);
          await shot(pageB, "9_bob_unread");
          await pageB.click("#room-list button[data-room-name=Standup]");
          await pageB.waitForSelector("#state[data-state=live]");
          await until(
            pageB,
            "both shown",
            async () => (await messagesOf(pageB)).at(-1)?.[3] === "bob?",
          );
          await pageB.waitForTimeout(500); // read once shown
          await pageB.click("#leave-room");
          await until(pageB, "read", async () => await unreadOf(pageB, "Standup") === 0);
          await pageB.click("#room-list button[data-room-name=Standup]");
          await pageB.waitForSelector("#state[data-state=live]");
        },
      );

      await t.step(
        "across a cut socket, an edit and a reaction made meanwhile show after the reconnect",
        async () => {
          const seq = 5;
          await cutSockets(pageB, true);
          await pageB.waitForSelector("#state[data-state=reconnecting]");
          await pageA.click(`#messages .message[data-seq="${seq}"] .edit`);
          await pageA.fill("#send-form [name=content]", "edited while bob was cut off");
          await pageA.click("#send-form button");
          await pageA.click(`#messages .message[data-seq="${seq}"] .reaction[data-emoji="🎉"]`);
          await until(
            pageA,
            "alice's own 🎉",
            async () => (await reactionAt(pageA, seq, "🎉")).count === 1,
          );
          assert.equal((await messageAt(pageB, seq)).content, "while bob was away 3");
          assert.equal(await pageB.getAttribute("#state", "data-state"), "reconnecting");
          await cutSockets(pageB, false);
          await until(
            pageB,
            "bob live again",
            async () => await pageB.getAttribute("#state", "data-state") === "live",
            20_000,
          );
          await until(
            pageB,
            "the edit after the reconnect",
            async () => (await messageAt(pageB, seq)).content === "edited while bob was cut off",
          );
          await until(
            pageB,
            "the reaction after the reconnect",
            async () => (await reactionAt(pageB, seq, "🎉")).count === 1,
          );
          assert.deepEqual(await reactionAt(pageB, seq, "🎉"), { count: 1, mine: false });
          assert.deepEqual(await messagesOf(pageB), await messagesOf(pageA));
          await shot(pageB, "10_bob_after_cut_with_edit");
        },
      );

      await t.step(
        "a guest sets a password; signed in with it in a second context, the same rooms, history and avatar show",
        async () => {
          await pageA.click("#account summary");
          await pageA.fill("#password-form [name=password]", PASSWORD);
          await pageA.click("#password-form button");
          await until(
            pageA,
            "the password is set",
            async () => /Password set/.test(await pageA.textContent("#notice") ?? ""),
          );

          await pageA2.goto(`${allowedPage.url}/?api=${api}`);
          await pageA2.fill("#signin-form [name=username]", "Alice"); // any letter case
          await pageA2.fill("#signin-form [name=password]", PASSWORD);
          await pageA2.click("#signin-form button");
          await pageA2.waitForSelector("#rooms:not([hidden])");
          assert.equal(await pageA2.textContent("#me"), "alice");
          assert.equal(await myAvatar(pageA2), avatarUrl);
          await until(pageA2, "the room list", async () => (await roomNames(pageA2)).length > 0);
          await pageA.click("#leave-room");
          await until(pageA, "the room list", async () => (await roomNames(pageA)).length > 0);
          assert.deepEqual(await roomNames(pageA2), await roomNames(pageA));

          const history = await messagesOf(pageB);
          for (const page of [pageA, pageA2]) {
            await page.click("#room-list button[data-room-name=Standup]");
            await page.waitForSelector("#state[data-state=live]");
            await until(
              page,
              "the history",
              async () => (await messagesOf(page)).length === history.length,
            );
            assert.deepEqual(await messagesOf(page), history);
          }
        },
      );

      await t.step(
        "an avatar changed on one device shows on the other, and on new messages",
        async () => {
          const newAvatar = `${allowedPage.url}/sample_avatar_alt.svg`;
          await pageA2.click("#account summary");
          await pageA2.fill("#avatar-form [name=avatarUrl]", newAvatar);
          await pageA2.click("#avatar-form button");
          await until(
            pageA2,
            "the new avatar here",
            async () => await myAvatar(pageA2) === newAvatar,
          );
          // The other device re-reads the profile every few seconds (and on focus).
          await until(
            pageA,
            "the new avatar on the other device",
            async () => await myAvatar(pageA) === newAvatar,
          );
          const count = (await messagesOf(pageB)).length + 1;
          await pageA.fill("#send-form [name=content]", "new look");
          await pageA.click("#send-form button");
          for (const page of [pageA2, pageB]) {
            await until(
              page,
              "the message with the new avatar",
              async () => (await messagesOf(page)).length === count,
            );
            assert.deepEqual((await messagesOf(page)).at(-1), [
              count,
              "alice",
              newAvatar,
              "new look",
            ]);
          }
          await shot(pageA, "3_alice_avatar_first_device");
          await shot(pageA2, "3_alice_avatar_second_device");
        },
      );

      await t.step(
        "signing out one device leaves the other; a session ended elsewhere returns to sign-in with a message",
        async () => {
          await pageA2.click("#sign-out");
          await pageA2.waitForSelector("#welcome:not([hidden])");
          assert.match(await pageA2.textContent("#notice") ?? "", /Signed out/);
          // The page shows the welcome screen at once, and forgets the token once the server
          // has been told.
          await until(
            pageA2,
            "the token forgotten",
            async () => await storedToken(pageA2) === null,
          );
          await pageA.waitForTimeout(300);
          assert.equal(await pageA.getAttribute("#state", "data-state"), "live");

          // Signed in again there, alice ends every other session: the first device's.
          await pageA2.fill("#signin-form [name=username]", "alice");
          await pageA2.fill("#signin-form [name=password]", PASSWORD);
          await pageA2.click("#signin-form button");
          await pageA2.waitForSelector("#state[data-state=live]"); // back in the room it had open
          const token = await storedToken(pageA2);
          assert.deepEqual(await client(env, { token }).auth.revokeOthers.mutate(), { ended: 1 });
          await pageA.waitForSelector("#welcome:not([hidden])");
          assert.match(await pageA.textContent("#notice") ?? "", /session ended/i);
          assert.equal(await pageA.isHidden("#room"), true);
          assert.equal(await pageA.isHidden("#profile"), true, "no one is shown as signed in");
          assert.equal(await storedToken(pageA), null, "the dead token is forgotten");
          await shot(pageA, "4_alice_session_ended");

          await pageA.fill("#signin-form [name=username]", "alice");
          await pageA.fill("#signin-form [name=password]", PASSWORD);
          await pageA.click("#signin-form button");
          await pageA.waitForSelector("#state[data-state=live]");
          assert.deepEqual(await messagesOf(pageA), await messagesOf(pageB));
        },
      );

      await t.step("the same page from an origin not on the list gets no data", async () => {
        const mallory: BrowserContext = await browser!.newContext();
        const page = await mallory.newPage();
        const failed: string[] = [];
        page.on("requestfailed", (req) => failed.push(req.url()));
        env.log.lines.length = 0;
        await page.goto(`${refusedPage.url}/?api=${api}`);
        await page.fill("#signup-form [name=username]", "mallory");
        await page.click("#signup-form button");
        await page.waitForSelector("#error:not([hidden])");
        assert.ok(failed.some((url) => url.includes("users.create")), "the call failed CORS");
        assert.equal(await page.isHidden("#rooms"), true);
        const socket = await page.evaluate((url) =>
          new Promise<string>((resolve) => {
            const ws = new WebSocket(`${url.replace(/^http/, "ws")}/trpc`);
            ws.onopen = () => resolve("open");
            ws.onerror = () => resolve("error");
          }), api);
        assert.equal(socket, "error", "the WebSocket does not open");
        await waitFor(
          () => env.log.lines.some((line) => line.includes(`Refused origin ${refusedPage.url}`)),
          "the server logged the refused origin",
        );
        const [{ n }] = await env
          .sql`select count(*)::int as n from users where username = 'mallory'`;
        assert.equal(n, 0);
        await shot(page, "5_refused_origin");
        await mallory.close();
      });

      await alice.close();
      await alice2.close();
      await bob.close();
    } finally {
      await browser?.close();
      await allowedPage.shutdown();
      await refusedPage.shutdown();
    }
  },
});

/** Saves the bundle the first server made, so the second serves the same file. */
async function bundleFrom(pageUrl: string, file: string): Promise<string> {
  const res = await fetch(`${pageUrl}/parley_client.js`);
  await Deno.writeFile(file, new Uint8Array(await res.arrayBuffer()));
  return file;
}

async function shot(page: Page, name: string) {
  await page.screenshot({ path: new URL(`${name}.png`, SHOTS).pathname, fullPage: true });
}
