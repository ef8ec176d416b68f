/** tRPC over HTTP: the fast path for single mutations answers exactly as tRPC's fetch adapter. */
import assert from "node:assert/strict";
import { signUp, startTestEnv, TEST_ORIGINS } from "./_helpers.ts";

const ORIGIN = TEST_ORIGINS.split(",")[0].trim();

Deno.test("a single mutation (the fast path) is answered like the same call in a batch of two (tRPC's adapter)", async () => {
  await using env = await startTestEnv();
  const alice = await signUp(env);
  const bob = await signUp(env); // not a member: his sends fail
  const room = await alice.api.rooms.create.mutate({ name: "Same answers" });
  const post = async (path: string, token: string, body: unknown) => {
    const res = await fetch(`${env.url}/trpc/${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${token}`,
        origin: ORIGIN,
      },
      body: JSON.stringify(body),
    });
    return { status: res.status, headers: res.headers, json: await res.json() };
  };
  const input = (content: string) => ({ json: { roomId: room.id, content } });

  const single = await post("messages.send?batch=1", alice.token, { 0: input("one") });
  const plain = await post("messages.send", alice.token, input("two"));
  const pair = await post("messages.send,messages.send?batch=1", alice.token, {
    0: input("three"),
    1: input("four"),
  });
  for (const answer of [single, plain, pair]) {
    assert.equal(answer.status, 200);
    assert.equal(answer.headers.get("content-type"), "application/json");
    assert.match(answer.headers.get("vary") ?? "", /trpc-accept/);
    assert.equal(answer.headers.get("access-control-allow-origin"), ORIGIN);
  }
  const shape = (item: { result: { data: { json: object; meta: unknown } } }) => ({
    keys: Object.keys(item.result.data.json).sort(),
    meta: item.result.data.meta,
  });
  assert.deepEqual(shape(single.json[0]), shape(pair.json[0]));
  assert.deepEqual(shape(plain.json), shape(pair.json[1]));
  assert.deepEqual(
    [single.json[0], plain.json, ...pair.json].map((item) => item.result.data.json.content),
    ["one", "two", "three", "four"],
  );

  const refusedSingle = await post("messages.send?batch=1", bob.token, { 0: input("no") });
  const refusedPair = await post("messages.send,messages.send?batch=1", bob.token, {
    0: input("no"),
    1: input("no"),
  });
  assert.equal(refusedSingle.status, 403);
  assert.equal(refusedPair.status, 403);
  assert.deepEqual(refusedSingle.json[0], refusedPair.json[0]);
  assert.equal(refusedSingle.json[0].error.json.data.code, "FORBIDDEN");

  // What tRPC does not take as JSON is left to tRPC's adapter (415), not to the fast path.
  const plainText = await fetch(`${env.url}/trpc/messages.send`, {
    method: "POST",
    headers: {
      "content-type": "text/plain",
      authorization: `Bearer ${alice.token}`,
      origin: ORIGIN,
    },
    body: JSON.stringify(input("not json")),
  });
  assert.equal(plainText.status, 415);
  await plainText.body?.cancel();
});
