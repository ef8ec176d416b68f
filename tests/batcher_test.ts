/** The batcher behind access checks: one batch in flight, the rest wait and go together. */
import assert from "node:assert/strict";
import { Batcher } from "../server/batcher.ts";

Deno.test("requests arriving while a batch runs go together in the next one, in order, at most maxBatch", async () => {
  const batches: number[][] = [];
  let release = () => {};
  const batcher = new Batcher<number, string>(async (inputs) => {
    batches.push(inputs);
    await new Promise<void>((resolve) => release = resolve);
    return inputs.map((n) => `#${n}`);
  }, { maxBatch: 4, maxWaiting: 100, whenFull: () => new Error("full") });
  const results = Array.from({ length: 7 }, (_, n) => batcher.load(n));
  assert.deepEqual(batches, [[0]], "the first request goes at once, alone");
  release();
  await results[0];
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.deepEqual(batches, [[0], [1, 2, 3, 4]], "the waiting ones go together, at most 4");
  release();
  await new Promise((resolve) => setTimeout(resolve, 0));
  release();
  assert.deepEqual(await Promise.all(results), ["#0", "#1", "#2", "#3", "#4", "#5", "#6"]);
  assert.deepEqual(batches, [[0], [1, 2, 3, 4], [5, 6]]);
});

Deno.test("a failed batch rejects each of its requests, and the next batch still runs", async () => {
  let calls = 0;
  const batcher = new Batcher<number, number>((inputs) => {
    calls++;
    return calls === 1 ? Promise.reject(new Error("database down")) : Promise.resolve(inputs);
  }, { maxBatch: 10, maxWaiting: 100, whenFull: () => new Error("full") });
  const first = batcher.load(1);
  const second = batcher.load(2);
  await assert.rejects(first, /database down/);
  assert.equal(await second, 2);
  assert.equal(await batcher.load(3), 3);
});

Deno.test("past maxWaiting requests fail at once instead of piling up behind a stuck batch", async () => {
  const batcher = new Batcher<number, number>(
    () => new Promise(() => {}), // a batch that never ends
    { maxBatch: 10, maxWaiting: 3, whenFull: () => new Error("full") },
  );
  batcher.load(0); // in flight
  for (let i = 1; i <= 3; i++) batcher.load(i); // waiting
  await assert.rejects(batcher.load(4), /full/);
});
