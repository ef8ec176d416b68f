/**
 * Hostile and careless input at the front door: WebSocket handshakes outside RFC 6455,
 * oversized headers and URLs, bodies that are not UTF-8, input that makes engines throw, and
 * request text echoed into logs and responses. Each is refused cleanly, never with a 101, a 500
 * or engine text.
 */
import assert from "node:assert/strict";
import { createLogger } from "../server/log.ts";
import { MAX_HEADER_BYTES, MAX_URL_BYTES } from "../server/limits.ts";
import { clientFrame, rawUpgrade, signUp, startTestEnv, waitFor, wsClient } from "./_helpers.ts";

/** Sends a raw HTTP/1.1 request and returns the status code and the headers of the answer. */
async function rawRequest(url: string, lines: string[]): Promise<{
  status: number;
  headers: Map<string, string>;
}> {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  await conn.write(new TextEncoder().encode(`${lines.join("\r\n")}\r\n\r\n`));
  const buffer = new Uint8Array(16 * 1024);
  let text = "";
  while (!text.includes("\r\n\r\n")) {
    const n = await conn.read(buffer);
    if (n === null) break;
    text += new TextDecoder().decode(buffer.subarray(0, n));
  }
  conn.close();
  const [statusLine, ...headerLines] = text.split("\r\n\r\n")[0].split("\r\n");
  const headers = new Map<string, string>();
  for (const line of headerLines) {
    const i = line.indexOf(":");
    headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
  }
  return { status: Number(statusLine.split(" ")[1]), headers };
}

/** An upgrade request to /trpc with the headers given (null leaves one out). */
function upgradeLines(url: string, overrides: Record<string, string | null>): string[] {
  const { host } = new URL(url);
  const headers: Record<string, string | null> = {
    Host: host,
    Upgrade: "websocket",
    Connection: "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
    ...overrides,
  };
  const method = overrides[":method"] ?? "GET";
  return [
    `${method} /trpc HTTP/1.1`,
    ...Object.entries(headers)
      .filter(([name, value]) => value !== null && !name.startsWith(":"))
      .map(([name, value]) => `${name}: ${value}`),
  ];
}

/** Texts that come from engines or libraries, never from parley's own messages. */
const ENGINE_TEXT =
  /call stack|is not (iterable|a function|an entry)|JSON at position|Unexpected (end|token)|undefined|deserialize|__proto__/i;

Deno.test("WebSocket handshakes outside RFC 6455 get 400 or 426, never 101 or 500", async (t) => {
  await using env = await startTestEnv();
  const cases: [string, Record<string, string | null>, number][] = [
    ["Sec-WebSocket-Version: 8", { "Sec-WebSocket-Version": "8" }, 426],
    ["Sec-WebSocket-Version: 14", { "Sec-WebSocket-Version": "14" }, 426],
    ["no Sec-WebSocket-Version", { "Sec-WebSocket-Version": null }, 400],
    ["an empty Sec-WebSocket-Key", { "Sec-WebSocket-Key": "" }, 400],
    ["no Sec-WebSocket-Key", { "Sec-WebSocket-Key": null }, 400],
    ["a key that is not 16 bytes", { "Sec-WebSocket-Key": "c2hvcnQ=" }, 400],
    ["a key that is not base64", { "Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!==" }, 400],
    ["no Connection header", { Connection: null }, 400],
    ["Connection: keep-alive only", { Connection: "keep-alive" }, 400],
    ["a POST", { ":method": "POST", "Content-Length": "0" }, 400],
  ];
  for (const [label, overrides, expected] of cases) {
    await t.step(`${label} gets ${expected}`, async () => {
      const { status, headers } = await rawRequest(env.url, upgradeLines(env.url, overrides));
      assert.equal(status, expected, label);
      if (expected === 426 || label.includes("Version")) {
        assert.equal(headers.get("sec-websocket-version"), "13", label);
      }
    });
  }
  await t.step(
    "a valid handshake, with Connection listing Upgrade among others, gets 101",
    async () => {
      const { status } = await rawRequest(
        env.url,
        upgradeLines(env.url, { Connection: "keep-alive, Upgrade", Upgrade: "WebSocket" }),
      );
      assert.equal(status, 101);
    },
  );
  assert.ok(!env.log.lines.some((line) => /failed|Internal/i.test(line)), env.log.lines.join("\n"));
});

Deno.test("request headers over 32 KB get 431 and URLs over 16 KB get 414, on every path", async () => {
  await using env = await startTestEnv();
  for (const path of ["/health", "/trpc/health", "/nope"]) {
    const big = await fetch(`${env.url}${path}`, {
      headers: { "x-big": "a".repeat(MAX_HEADER_BYTES + 1) },
    });
    assert.equal(big.status, 431, path);
    await big.body?.cancel();
    const fine = await fetch(`${env.url}${path}`, {
      headers: { "x-big": "a".repeat(MAX_HEADER_BYTES - 2000) },
    });
    assert.notEqual(fine.status, 431, path);
    await fine.body?.cancel();
    const long = await fetch(`${env.url}${path}?x=${"a".repeat(MAX_URL_BYTES)}`);
    assert.equal(long.status, 414, path);
    await long.body?.cancel();
  }
  // Headers split over many lines count as a whole, and an upgrade is refused the same way.
  const many: Record<string, string> = {};
  for (let i = 0; i < 40; i++) many[`x-h${i}`] = "b".repeat(1000);
  const split = await fetch(`${env.url}/health`, { headers: many });
  assert.equal(split.status, 431);
  await split.body?.cancel();
  const { status } = await rawRequest(
    env.url,
    upgradeLines(env.url, { "X-Big": "c".repeat(MAX_HEADER_BYTES) }),
  );
  assert.equal(status, 431);
});

Deno.test("malformed and deeply nested input is BAD_REQUEST in words about the input", async (t) => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Hostile" });
  let deepArray = "1";
  for (let i = 0; i < 20_000; i++) deepArray = `[${deepArray}]`;
  let deepObject = "1";
  for (let i = 0; i < 5_000; i++) deepObject = `{"a":${deepObject}}`;
  const roomId = JSON.stringify(room.id);
  const bodies: [string, string][] = [
    ["deeply nested content", `{"json":{"roomId":${roomId},"content":${deepArray}}}`],
    ["deeply nested object", `{"json":${deepObject}}`],
    [
      "meta.values of the wrong type",
      `{"json":{"roomId":${roomId},"content":"x"},"meta":{"values":"zz"}}`,
    ],
    ["meta.values naming a map", `{"json":{"content":"x"},"meta":{"values":{"content":["map"]}}}`],
    [
      "an unknown custom type",
      `{"json":{"content":"x"},"meta":{"values":{"content":[["custom","no"]]}}}`,
    ],
    [
      "broken referentialEqualities",
      `{"json":{"content":"x"},"meta":{"referentialEqualities":{"a":1}}}`,
    ],
    ["__proto__ in meta", `{"json":{"content":"x"},"meta":{"values":{"__proto__":["Date"]}}}`],
    ["truncated JSON", `{"json":`],
    ["not JSON at all", `hello`],
  ];
  for (const [label, body] of bodies) {
    await t.step(label, async () => {
      const res = await fetch(`${env.url}/trpc/messages.send`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${alice.token}` },
        body,
      });
      const answer = await res.json();
      assert.equal(res.status, 400, `${label}: ${JSON.stringify(answer).slice(0, 300)}`);
      const message: string = answer.error.json.message;
      assert.match(message, /^Invalid input/, label);
      assert.doesNotMatch(message, ENGINE_TEXT, `${label}: ${message}`);
    });
  }
  await t.step("a GET query with malformed input", async () => {
    const res = await fetch(`${env.url}/trpc/rooms.list?input=${encodeURIComponent("{x")}`);
    const answer = await res.json();
    assert.equal(res.status, 400);
    assert.doesNotMatch(answer.error.json.message, ENGINE_TEXT);
  });
  await t.step("over WebSocket: a deeply nested frame gets an error reply in words", async () => {
    const socket = new WebSocket(`${env.url.replace(/^http/, "ws")}/trpc`);
    const frames: string[] = [];
    socket.onmessage = (event) => void frames.push(String(event.data));
    await new Promise((resolve) => socket.onopen = resolve);
    socket.send(JSON.stringify({ id: 1, method: "query", params: { path: "health" } }));
    socket.send(`{"id":2,"method":"query","params":{"path":"rooms.get","input":${deepArray}}}`);
    await waitFor(() => frames.length >= 2, "two replies");
    const reply = frames.map((f) => JSON.parse(f)).find((f) => f.error)?.error;
    assert.ok(reply, frames.join("\n"));
    const error = reply.json ?? reply; // superjson-encoded
    assert.match(error.data.code, /^(BAD_REQUEST|PARSE_ERROR)$/);
    assert.doesNotMatch(error.message, ENGINE_TEXT, error.message);
    const closed = new Promise((resolve) => socket.onclose = resolve);
    socket.close();
    await closed;
  });
  assert.equal((await alice.api.messages.list.query({ roomId: room.id })).items.length, 0);
});

Deno.test("a body that is not UTF-8, or a query that is not, is refused and stores nothing", async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Bytes" });
  const encode = (text: string) => new TextEncoder().encode(text);
  for (const bad of [[0xff, 0xfe], [0xc3], [0xed, 0xa0, 0x80] /* an encoded surrogate */]) {
    const body = new Uint8Array([
      ...encode(`{"json":{"roomId":"${room.id}","content":"a`),
      ...bad,
      ...encode(`b"}}`),
    ]);
    const res = await fetch(`${env.url}/trpc/messages.send`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${alice.token}` },
      body,
    });
    const answer = await res.json();
    assert.equal(res.status, 400, JSON.stringify(answer));
    assert.equal(answer.error.json.data.code, "BAD_REQUEST");
    assert.match(answer.error.json.message, /not valid UTF-8/);
  }
  const query = await fetch(`${env.url}/trpc/rooms.list?input=%E0%A4%A`);
  assert.equal(query.status, 400);
  await query.body?.cancel();
  // A WebSocket text frame that is not UTF-8 ends the connection (RFC 6455 §8.1) before
  // tRPC sees it.
  const conn = await rawUpgrade(env.url);
  await conn.read(new Uint8Array(4096)); // the 101
  const send = JSON.stringify({
    id: 1,
    method: "mutation",
    params: { path: "messages.send", input: { json: { roomId: room.id, content: "aXb" } } },
  });
  const payload = encode(send).map((byte) => byte === 0x58 /* X */ ? 0xff : byte);
  await conn.write(clientFrame(payload));
  assert.equal(await conn.read(new Uint8Array(4096)), null, "the server closed the connection");
  conn.close();
  assert.equal((await alice.api.messages.list.query({ roomId: room.id })).items.length, 0);
});

Deno.test("request text in refusals and logs is bounded: a 20 KB Origin stays short", async () => {
  await using env = await startTestEnv();
  // 20 KB passes the header limit (a 40 KB one is refused whole with 431, before any echo).
  const origin = `https://${"e".repeat(20_000)}.example.com`;
  for (const path of ["/health", "/trpc/users.me", "/nope"]) {
    const res = await fetch(`${env.url}${path}`, { headers: { origin } });
    assert.equal(res.status, 403, path);
    assert.ok((await res.text()).length < 1000, path);
  }
  const upgrade = await rawUpgrade(env.url, { origin });
  const buffer = new Uint8Array(65536);
  const n = await upgrade.read(buffer);
  upgrade.close();
  assert.ok(new TextDecoder().decode(buffer.subarray(0, n ?? 0)).startsWith("HTTP/1.1 403"));
  assert.ok(env.log.lines.length >= 3);
  for (const line of env.log.lines) assert.ok(line.length < 1000, `${line.length} characters`);
  const longPath = await fetch(`${env.url}/${"p".repeat(10_000)}`);
  assert.equal(longPath.status, 404);
  assert.ok((await longPath.text()).length < 1000);
});

Deno.test("the production logger bounds every message and field", () => {
  const printed: string[] = [];
  const { log, error } = console;
  console.log = (line: string) => void printed.push(line);
  console.error = (line: string) => void printed.push(line);
  try {
    const logger = createLogger("json");
    logger.warn(`Refused origin ${"o".repeat(50_000)}`, { origin: "o".repeat(50_000) });
    logger.info("request", { path: `/${"p".repeat(50_000)}`, status: 404 });
    logger.error("failed", new Error("x".repeat(50_000)), { origin: "\ud800".repeat(10) });
    createLogger("text").warn("w", { origin: "o".repeat(50_000) });
  } finally {
    console.log = log;
    console.error = error;
  }
  assert.equal(printed.length, 4);
  for (const line of printed) assert.ok(line.length < 6000, `${line.length} characters`);
  const parsed = JSON.parse(printed[0]);
  assert.ok(parsed.origin.length <= 201 && parsed.origin.endsWith("…"));
  assert.ok(JSON.parse(printed[2]).origin.isWellFormed());
});

Deno.test("a client that vanishes without a close frame is logged as a routine close", async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  await alice.api.rooms.create.mutate({ name: "Vanish" });
  for (let i = 0; i < 3; i++) {
    const conn = await rawUpgrade(env.url);
    const buffer = new Uint8Array(4096);
    await conn.read(buffer); // the 101
    await waitFor(() => env.server.connections === 1, "the socket is open");
    conn.close(); // no close frame: the server reads EOF
    await waitFor(() => env.server.connections === 0, "the server counted it closed");
  }
  const closes = env.log.events.filter((e) => e.message === "WebSocket closed");
  assert.equal(closes.length, 3);
  assert.ok(closes.every((e) => e.fields.abrupt === true));
  assert.deepEqual(env.log.events.filter((e) => e.level === "error"), []);
});

Deno.test("a subscription over HTTP is refused before it runs, and leaves nothing behind", async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "No SSE" });
  const input = encodeURIComponent(JSON.stringify({ json: { roomId: room.id } }));
  for (let i = 0; i < 30; i++) {
    const res = await fetch(`${env.url}/trpc/messages.onMessage?input=${input}`, {
      method: i % 2 ? "POST" : "GET",
      headers: { authorization: `Bearer ${alice.token}`, "content-type": "application/json" },
      body: i % 2 ? JSON.stringify({ json: { roomId: room.id } }) : undefined,
    });
    await res.body?.cancel();
  }
  assert.deepEqual(env.server.hubStats(), { rooms: 0, listeners: 0, holders: 0 });
  const res = await fetch(`${env.url}/trpc/messages.onMessage?input=${input}`, {
    headers: { authorization: `Bearer ${alice.token}`, accept: "application/json" },
  });
  const text = await res.text();
  assert.match(text, /Subscriptions need a WebSocket connection/);
});

Deno.test("upgrades elsewhere than /trpc or without Host get 400", async () => {
  await using env = await startTestEnv();
  const { host } = new URL(env.url);
  const lines = (path: string, withHost: boolean) => [
    `GET ${path} HTTP/1.1`,
    ...(withHost ? [`Host: ${host}`] : []),
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
  ];
  assert.equal((await rawRequest(env.url, lines("/trpc/users.me", true))).status, 400);
  assert.equal((await rawRequest(env.url, lines("/trpc", false))).status, 400);
  assert.equal((await rawRequest(env.url, lines("/trpc", true))).status, 101);
});

Deno.test("a path echoed in an error is bounded", async () => {
  await using env = await startTestEnv();
  const res = await fetch(`${env.url}/trpc/${"p".repeat(10_000)}`);
  const body = await res.text();
  assert.ok(body.length < 1500, `${body.length} characters`);
});

Deno.test("a body that trickles in is cut off with 408", async () => {
  await using env = await startTestEnv();
  const { hostname, port } = new URL(env.url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  const head = [
    "POST /trpc/users.create HTTP/1.1",
    `Host: ${hostname}:${port}`,
    "Content-Type: application/json",
    "Content-Length: 1000",
  ].join("\r\n");
  await conn.write(new TextEncoder().encode(`${head}\r\n\r\n{"json":`));
  const started = Date.now();
  const buffer = new Uint8Array(4096);
  const n = await conn.read(buffer);
  conn.close();
  const answer = new TextDecoder().decode(buffer.subarray(0, n ?? 0));
  assert.match(answer, /^HTTP\/1\.1 408/);
  assert.ok(Date.now() - started < 12_000);
});

Deno.test("calls in flight on one socket are bounded; the rest are told to retry shortly", async () => {
  await using env = await startTestEnv();
  const socket = new WebSocket(`${env.url.replace(/^http/, "ws")}/trpc`);
  const replies: {
    id: number;
    error?: { json: { data: { code: string; retryAfterMs: number } } };
  }[] = [];
  socket.onmessage = (event) => {
    const parsed = JSON.parse(String(event.data));
    for (const reply of Array.isArray(parsed) ? parsed : [parsed]) replies.push(reply);
  };
  await new Promise((resolve) => socket.onopen = resolve);
  socket.send(JSON.stringify(
    Array.from({ length: 100 }, (_, i) => ({
      id: i + 1,
      method: "query",
      params: { path: "rooms.list", input: { json: { limit: 100 } } },
    })),
  ));
  await waitFor(() => replies.length >= 100, "every call answered");
  const refused = replies.filter((r) => r.error?.json.data.code === "TOO_MANY_REQUESTS");
  assert.ok(refused.length > 0 && refused.length <= 100 - 64, `${refused.length} refused`);
  assert.ok(refused.every((r) => r.error!.json.data.retryAfterMs > 0));
  const closed = new Promise((resolve) => socket.onclose = resolve);
  socket.close();
  await closed;
});

Deno.test("a room id in upper case is the same room: live messages arrive, a leave ends access", async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const bob = await signUp(env);
  const room = await alice.api.rooms.create.mutate({ name: "Case" });
  const upper = room.id.toUpperCase();
  await bob.api.rooms.join.mutate({ roomId: upper });
  const ws = wsClient(env, { token: bob.token });
  const seen: string[] = [];
  const errors: string[] = [];
  let started = false;
  const sub = ws.trpc.messages.onMessage.subscribe({ roomId: upper }, {
    onStarted: () => void (started = true),
    onData: (event) => void seen.push(event.data.content),
    onError: (error) => void errors.push(error.data?.code ?? "?"),
  });
  try {
    await waitFor(() => started, "subscribed with an upper-case id");
    await alice.api.messages.send.mutate({ roomId: room.id, content: "hello" });
    await waitFor(() => seen.length === 1, "the live message");
    assert.equal((await bob.api.rooms.leave.mutate({ roomId: upper })).left, true);
    await waitFor(() => errors.length === 1, "the subscription ended");
    assert.deepEqual(errors, ["FORBIDDEN"]);
    await alice.api.messages.send.mutate({ roomId: room.id, content: "after bob left" });
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(seen, ["hello"]);
  } finally {
    sub.unsubscribe();
    await ws.close();
  }
});
