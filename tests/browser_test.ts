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

async function until(page: Page, what: string, check: () => Promise<boolean>) {
  const deadline = Date.now() + 10_000;
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
          assert.equal(await storedToken(pageA2), null);
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
