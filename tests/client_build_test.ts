/**
 * The client as a front end gets it: built by `deno task build:client`, packed and
 * installed with npm into a strict TypeScript project, type-checked by npm's `tsc`
 * (Node module resolution), then run under `node` against a real server.
 */
import assert from "node:assert/strict";
import { buildClient, TYPESCRIPT_VERSION } from "../scripts/build_client.ts";
import { BULK_LIMITS, startTestEnv } from "./_helpers.ts";

async function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}) {
  const { code, stdout, stderr } = await new Deno.Command(cmd, { args, cwd, env }).output();
  const out = new TextDecoder().decode(stdout);
  return { code, out, text: out + new TextDecoder().decode(stderr) };
}

/** Runs a script of the app under node against `url`; returns the JSON line it prints. */
async function runNode(app: string, script: string, url: string) {
  const node = await run("node", ["--experimental-websocket", script, url], app);
  assert.equal(node.code, 0, node.text);
  const line = node.text.split("\n").find((l) => l.startsWith("{"));
  assert.ok(line, node.text);
  return JSON.parse(line);
}

const TSCONFIG = {
  compilerOptions: {
    strict: true,
    module: "nodenext",
    moduleResolution: "nodenext",
    target: "es2022",
    lib: ["es2022", "dom"],
    types: ["node"],
    noEmit: true,
  },
};

const GOOD = `
import { createParleyClient, watchRoom, type Message, type Room, type RouterInputs, type User }
  from "parley-client";
import { type OpenedSession, type SessionState, signIn, signOut } from "parley-client";
import { defaultRetryDelayMs, isParleyError, type KeepAliveOptions, TRPCClientError }
  from "parley-client";

const parley = createParleyClient({ url: "http://127.0.0.1:8000", token: () => null });
const input: RouterInputs["messages"]["send"] = { roomId: "id", content: "hi" };

export async function use(): Promise<void> {
  const { user, token }: { user: User; token: string } = await parley.trpc.users.create.mutate({
    username: "ada",
    avatarUrl: null,
  });
  const room: Room = await parley.trpc.rooms.create.mutate({ name: "n", thumbnailUrl: undefined });
  const sent: Message = await parley.trpc.messages.send.mutate(input);
  const seq: number = sent.seq;
  const when: Date = sent.createdAt;
  const page = await parley.trpc.messages.list.query({ roomId: room.id, beforeSeq: seq });
  const next: number | null = page.nextBeforeSeq;
  const handle = watchRoom(parley, room.id, {
    onMessages: (list: Message[]) => list.map((m) => m.avatarUrl ?? m.username[0]),
    onStateChange: (state) => state === "live",
  });
  const mine: Message = await handle.send("hello");
  console.log(user.id, token, when, next, mine.clientMessageId);
}

let stored: string | null = null;
const device = createParleyClient({
  url: "http://127.0.0.1:8000",
  token: () => stored,
  saveToken: (next: string | null) => void (stored = next),
});

const keepAlive: KeepAliveOptions = { enabled: true, intervalMs: 10_000, pongTimeoutMs: 2_000 };
const tuned = createParleyClient({
  url: "http://127.0.0.1:8000",
  retryDelayMs: (attempt: number) => Math.min(defaultRetryDelayMs(attempt), 1_000),
  idleCloseMs: 10_000,
  keepAlive,
});

export async function tuning(roomId: string): Promise<void> {
  tuned.reconnect();
  try {
    const first = await tuned.trpc.messages.list.query({ roomId, limit: 20, cursor: null });
    const next: number | null = first.nextCursor;
    const same: number | null = first.nextBeforeSeq;
    await tuned.trpc.messages.list.query({ roomId, cursor: next ?? same });
  } catch (error) {
    if (isParleyError(error)) {
      const code: string | undefined = error.data?.code;
      const status: number | undefined = error.data?.httpStatus;
      console.log(code, status, error.message);
    }
    const caught: boolean = error instanceof TRPCClientError;
    console.log(caught);
  }
}

export async function account(): Promise<void> {
  const opened: OpenedSession = await signIn(device, { username: "ada", password: "secret" });
  const until: Date = opened.expiresAt;
  const guest: boolean = !opened.user.hasPassword;
  const state: SessionState = device.session;
  const stop = device.onSessionChange((next: SessionState) => next === "ended" && stop());
  await signOut(device);
  console.log(until, guest, state);
}
`;

/** Each wrong call, with the line it is on in BAD and the tsc error expected there. */
const BAD_LINES: [line: number, code: string, what: string][] = [
  [5, "TS2322", "roomId given a number"],
  [6, "TS2322", "content given a number"],
  [7, "TS2345", "rooms.create without a name"],
  [8, "TS2353", "an unknown input key"],
  [10, "TS2322", "a Message's content read as a number"],
  [11, "TS2339", "a procedure that does not exist"],
  [12, "TS2322", "messages.list's cursor given a string"],
  [13, "TS2322", "retryDelayMs given a number"],
];

const BAD = `import { createParleyClient } from "parley-client";
const parley = createParleyClient({ url: "http://127.0.0.1:8000" });

export async function misuse(): Promise<void> {
  await parley.trpc.messages.send.mutate({ roomId: 1, content: "x" });
  await parley.trpc.messages.send.mutate({ roomId: "r", content: 42 });
  await parley.trpc.rooms.create.mutate({});
  await parley.trpc.users.create.mutate({ username: "a", admin: true });
  const sent = await parley.trpc.messages.send.mutate({ roomId: "r", content: "x" });
  const wrong: number = sent.content;
  await parley.trpc.rooms.nope.query();
  await parley.trpc.messages.list.query({ roomId: "r", cursor: "older" });
  createParleyClient({ url: "http://127.0.0.1:8000", retryDelayMs: 1000 });
  console.log(wrong);
}
`;

/** Runs under node: two clients, a room, watchRoom on both, one message each way. */
const RUN = `
import { createParleyClient, watchRoom } from "parley-client";
const url = process.argv[2];
const anon = createParleyClient({ url });
const a = await anon.trpc.users.create.mutate({ username: "node_ada", avatarUrl: "https://cdn.example.com/a.png" });
const b = await anon.trpc.users.create.mutate({ username: "node_bob" });
const ada = createParleyClient({ url, token: a.token });
const bob = createParleyClient({ url, token: () => b.token });
const room = await ada.trpc.rooms.create.mutate({ name: "From node" });
await bob.trpc.rooms.join.mutate({ roomId: room.id });
const seen = { ada: [], bob: [] };
const live = (who) => new Promise((resolve) => {
  const handle = watchRoom(who === "ada" ? ada : bob, room.id, {
    onMessages: (list) => { seen[who] = list; },
    onStateChange: (state) => state === "live" && resolve(handle),
  });
});
const [adaRoom, bobRoom] = await Promise.all([live("ada"), live("bob")]);
await adaRoom.send("hello from node");
await bobRoom.send("hi ada");
const deadline = Date.now() + 10000;
while ((seen.ada.length < 2 || seen.bob.length < 2) && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 20));
}
adaRoom.stop();
bobRoom.stop();
await Promise.all([anon.close(), ada.close(), bob.close()]);
const view = (list) => list.map((m) => [m.seq, m.username, m.avatarUrl, m.content, m.createdAt instanceof Date]);
console.log(JSON.stringify({ ada: view(seen.ada), bob: view(seen.bob) }));
`;

/** Shared by the scripts below: polls until `predicate` holds, or exits with `what`. */
const UNTIL = `
const until = async (predicate, what, ms = 10000) => {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("Timed out waiting: " + what);
    await new Promise((r) => setTimeout(r, 20));
  }
};
`;

/**
 * Runs under node: one client whose token the app switches (carol, dave who is not a
 * member, carol again, then a logout and a new sign-up), with a watched room throughout.
 */
const IDENTITY = `
import { createParleyClient, watchRoom } from "parley-client";
${UNTIL}
const url = process.argv[2];
const anon = createParleyClient({ url });
const carol = await anon.trpc.users.create.mutate({ username: "node_carol" });
const dave = await anon.trpc.users.create.mutate({ username: "node_dave" });
const carolApi = createParleyClient({ url, token: carol.token });
const room = await carolApi.trpc.rooms.create.mutate({ name: "Carol's" });
for (let i = 1; i <= 3; i++) await carolApi.trpc.messages.send.mutate({ roomId: room.id, content: "secret " + i });

let stored = carol.token;
const parley = createParleyClient({ url, token: () => stored });
const states = [];
let list = [];
const watch = watchRoom(parley, room.id, {
  onMessages: (messages) => { list = messages; },
  onStateChange: (state, error) => states.push([state, error?.data?.code ?? null]),
});
const last = () => states.at(-1) ?? [];
await until(() => last()[0] === "live", "carol live");

// C→D: dave subscribes from the start at once, on the socket carol opened.
stored = dave.token;
const dave0 = { seqs: [], code: null };
const sub = parley.trpc.messages.onMessage.subscribe({ roomId: room.id, lastEventId: "0" }, {
  onData: (event) => dave0.seqs.push(event.data.seq),
  onError: (error) => { dave0.code = error.data?.code ?? "UNKNOWN"; },
});
await until(() => dave0.code !== null || dave0.seqs.length > 0, "an answer for dave");
sub.unsubscribe();
await until(() => last()[0] === "error", "carol's watch refused as dave");
const refusedAsDave = last()[1];

// D→C: no call made; the refused watch notices the token by itself.
stored = carol.token;
await until(() => last()[0] === "live", "carol live again");
const recovered = list.map((m) => m.seq);

// Logout, a new sign-up and a join: live again well before the 5 s idle close.
await parley.trpc.users.logout.mutate();
await until(() => last()[0] === "signed-out", "refused after logout");
const afterLogout = last()[1];
stored = null;
const erin = await parley.trpc.users.create.mutate({ username: "node_erin" });
stored = erin.token;
const joinedAt = Date.now();
await parley.trpc.rooms.join.mutate({ roomId: room.id });
await until(() => last()[0] === "live", "live as erin", 4000);
const liveAfterMs = Date.now() - joinedAt;
const sent = await watch.send("hi from erin");
await until(() => list.at(-1)?.seq === sent.seq, "erin's message shown");
watch.stop();
await Promise.all([anon.close(), carolApi.close(), parley.close()]);
console.log(JSON.stringify({
  dave: dave0, refusedAsDave, recovered, afterLogout, liveSoon: liveAfterMs < 4000,
  erinSent: sent.userId === erin.user.id, seqs: list.map((m) => m.seq),
}));
`;

/**
 * Runs under node: errors over HTTP and over the WebSocket are the exported TRPCClientError;
 * the tuning options are taken; reconnect() replaces the socket and the room loses nothing.
 */
const TUNING = `
import { createParleyClient, isParleyError, TRPCClientError, watchRoom } from "parley-client";
${UNTIL}
const url = process.argv[2];
const anon = createParleyClient({ url });
const httpError = await anon.trpc.users.me.query().catch((error) => error);
const a = await anon.trpc.users.create.mutate({ username: "node_tune_a" });
const b = await anon.trpc.users.create.mutate({ username: "node_tune_b" });
const ada = createParleyClient({ url, token: a.token });
const room = await ada.trpc.rooms.create.mutate({ name: "Tuning" });
const opened = [];
const attempts = [];
const bob = createParleyClient({
  url,
  token: b.token,
  idleCloseMs: 200,
  retryDelayMs: (attempt) => { attempts.push(attempt); return attempt === 0 ? 0 : 100; },
  keepAlive: { enabled: true, intervalMs: 1000 },
  WebSocket: class extends WebSocket {
    constructor(...args) {
      super(...args);
      const socket = { closed: null };
      opened.push(socket);
      this.addEventListener("close", (event) => { socket.closed ??= event.code; });
    }
  },
});
const wsError = await new Promise((resolve) => {
  const sub = bob.trpc.messages.onMessage.subscribe({ roomId: room.id }, {
    onData() {},
    onError(error) { sub.unsubscribe(); resolve(error); },
  });
});
await bob.trpc.rooms.join.mutate({ roomId: room.id });
let list = [];
let state = null;
const watch = watchRoom(bob, room.id, {
  onMessages: (messages) => { list = messages; },
  onStateChange: (next) => { state = next; },
});
await until(() => state === "live", "live");
const before = opened.length;
bob.reconnect();
const sent = await ada.trpc.messages.send.mutate({ roomId: room.id, content: "during reconnect" });
await until(() => list.at(-1)?.seq === sent.seq && state === "live", "resumed");
const reconnectedWith = opened[before - 1].closed;
const newSockets = opened.length - before;
watch.stop();
const stoppedAt = Date.now();
await until(() => opened.every((socket) => socket.closed !== null), "idle close", 3000);
const idleSoon = Date.now() - stoppedAt < 1500;
await Promise.all([anon.close(), ada.close(), bob.close()]);
const view = (error) => ({
  instance: error instanceof TRPCClientError,
  guard: isParleyError(error),
  code: error?.data?.code ?? null,
});
console.log(JSON.stringify({
  http: view(httpError), ws: view(wsError), other: isParleyError(new Error("x")),
  reconnectedWith, newSockets, firstAttempt: attempts[0], seqs: list.map((m) => m.seq), idleSoon,
}));
`;

/** Runs under node: many calls in one tick, large messages and 25 watched rooms. */
const LIMITS = `
import { createParleyClient, watchRoom } from "parley-client";
${UNTIL}
const url = process.argv[2];
const anon = createParleyClient({ url });
const ada = await anon.trpc.users.create.mutate({ username: "node_limits" });
const parley = createParleyClient({ url, token: () => ada.token });
const times = (n, make) => Promise.allSettled(Array.from({ length: n }, (_, i) => make(i)));
const ok = (results) => results.filter((r) => r.status === "fulfilled").length;

const rooms = (await times(25, (i) => parley.trpc.rooms.create.mutate({ name: "Room " + i })))
  .filter((r) => r.status === "fulfilled").map((r) => r.value);
const room = rooms[0];
const q21 = ok(await times(21, () => parley.trpc.rooms.get.query({ roomId: room.id })));
const q60 = ok(await times(60, () => parley.trpc.messages.list.query({ roomId: room.id })));
const emoji = "\u{1F600}".repeat(4000);
const sent5 = ok(await times(5, () => parley.trpc.messages.send.mutate({ roomId: room.id, content: emoji })));
const sent20 = ok(await times(20, () => parley.trpc.messages.send.mutate({ roomId: room.id, content: emoji })));
// A page holds at most 256 KiB of content (16 of these messages): page back to the first.
let stored = 0;
for (let before; before !== null;) {
  const page = await parley.trpc.messages.list.query({ roomId: room.id, limit: 100, beforeSeq: before });
  stored += page.items.length;
  before = page.nextBeforeSeq;
}

const states = new Map();
const handles = rooms.map((r) => watchRoom(parley, r.id, {
  onMessages: () => {},
  onStateChange: (state) => states.set(r.id, state),
}));
const allLive = () => rooms.every((r) => states.get(r.id) === "live");
await until(allLive, "25 rooms live").catch(() => {});
const live = rooms.filter((r) => states.get(r.id) === "live").length;
for (const handle of handles) handle.stop();
await Promise.all([anon.close(), parley.close()]);
console.log(JSON.stringify({ rooms: rooms.length, q21, q60, sent5, sent20, stored, live }));
`;

Deno.test("the built client", async (t) => {
  const work = await Deno.makeTempDir({ prefix: "parley_consumer_" });
  try {
    const dist = await buildClient(`${work}/dist`);
    const pack = await run("npm", ["pack", "--pack-destination", work], dist);
    assert.equal(pack.code, 0, pack.text);
    const tarball = `${work}/${pack.out.trim().split("\n").at(-1)}`;

    const app = `${work}/app`;
    await Deno.mkdir(app);
    await Deno.writeTextFile(
      `${app}/package.json`,
      JSON.stringify({
        private: true,
        type: "module",
        dependencies: {
          "parley-client": `file:${tarball}`,
          typescript: TYPESCRIPT_VERSION,
          "@types/node": "20.19.43",
        },
      }),
    );
    const install = await run("npm", ["install", "--no-audit", "--no-fund"], app);
    assert.equal(install.code, 0, install.text);
    await Deno.writeTextFile(`${app}/good.ts`, GOOD);
    await Deno.writeTextFile(`${app}/bad.ts`, BAD);
    await Deno.writeTextFile(`${app}/run.mjs`, RUN);
    await Deno.writeTextFile(`${app}/identity.mjs`, IDENTITY);
    await Deno.writeTextFile(`${app}/limits.mjs`, LIMITS);
    await Deno.writeTextFile(`${app}/tuning.mjs`, TUNING);
    const tsc = (file: string) => {
      const config = { ...TSCONFIG, files: [file] };
      return Deno.writeTextFile(`${app}/tsconfig.${file}.json`, JSON.stringify(config))
        .then(() => run(`${app}/node_modules/.bin/tsc`, ["-p", `tsconfig.${file}.json`], app));
    };

    await t.step("a strict TypeScript project that uses the client right compiles", async () => {
      const result = await tsc("good.ts");
      assert.equal(result.code, 0, result.text);
    });

    await t.step("calls with wrong input types fail to compile, each where it is", async () => {
      const result = await tsc("bad.ts");
      assert.notEqual(result.code, 0);
      for (const [line, code, what] of BAD_LINES) {
        assert.ok(result.text.includes(`bad.ts(${line},`) && result.text.includes(code), what);
        assert.match(result.text, new RegExp(`bad\\.ts\\(${line},\\d+\\): error ${code}`), what);
      }
      const errors = result.text.match(/^bad\.ts\(\d+,\d+\): error/gm) ?? [];
      assert.equal(errors.length, BAD_LINES.length, result.text);
    });

    await t.step("the built client runs under node against a real server", async () => {
      await using env = await startTestEnv();
      const node = await run("node", ["--experimental-websocket", "run.mjs", env.url], app);
      assert.equal(node.code, 0, node.text);
      const line = node.text.split("\n").find((l) => l.startsWith("{"));
      assert.ok(line, node.text);
      const seen = JSON.parse(line);
      const expected = [
        [1, "node_ada", "https://cdn.example.com/a.png", "hello from node", true],
        [2, "node_bob", null, "hi ada", true],
      ];
      assert.deepEqual(seen, { ada: expected, bob: expected });
    });

    await t.step(
      "under node, a socket opened with one token never serves another's calls",
      async () => {
        await using env = await startTestEnv();
        const seen = await runNode(app, "identity.mjs", env.url);
        assert.deepEqual(seen, {
          dave: { seqs: [], code: "FORBIDDEN" },
          refusedAsDave: "FORBIDDEN",
          recovered: [1, 2, 3],
          afterLogout: "UNAUTHORIZED",
          liveSoon: true,
          erinSent: true,
          seqs: [1, 2, 3, 4],
        });
      },
    );

    await t.step(
      "under node, errors are the exported TRPCClientError; tuning and reconnect() work",
      async () => {
        await using env = await startTestEnv();
        const seen = await runNode(app, "tuning.mjs", env.url);
        const ok = (code: string) => ({ instance: true, guard: true, code });
        assert.deepEqual(seen, {
          http: ok("UNAUTHORIZED"),
          ws: ok("FORBIDDEN"),
          other: false,
          reconnectedWith: 4001,
          newSockets: 1,
          firstAttempt: 0,
          seqs: [1],
          idleSoon: true,
        });
      },
    );

    await t.step("under node, many calls at once stay within the server's limits", async () => {
      await using env = await startTestEnv({ limits: BULK_LIMITS });
      const seen = await runNode(app, "limits.mjs", env.url);
      assert.deepEqual(seen, {
        rooms: 25,
        q21: 21,
        q60: 60,
        sent5: 5,
        sent20: 20,
        stored: 25,
        live: 25,
      });
    });
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
