/**
 * Batching of independent reads: at most one batch in flight, and the requests that arrive
 * meanwhile go together in the next one. Under a storm (thousands of subscribers opening at
 * once) this turns thousands of round trips into a few; when quiet, a request is sent at once.
 */

interface Pending<I, O> {
  input: I;
  resolve(output: O): void;
  reject(error: unknown): void;
}

/** Runs `run` on batches of at most `maxBatch` inputs, one batch at a time. */
export class Batcher<I, O> {
  #run: (inputs: I[]) => Promise<O[]>;
  #maxBatch: number;
  #maxWaiting: number;
  #whenFull: () => unknown;
  #queue: Pending<I, O>[] = [];
  #running = false;

  /**
   * `run` answers a batch, one output per input in order; when it rejects, every request of
   * the batch rejects with its error.
   */
  constructor(
    run: (inputs: I[]) => Promise<O[]>,
    options: { maxBatch: number; maxWaiting: number; whenFull: () => unknown },
  ) {
    this.#run = run;
    this.#maxBatch = options.maxBatch;
    this.#maxWaiting = options.maxWaiting;
    this.#whenFull = options.whenFull;
  }

  /**
   * Resolves with the output for `input`. Rejects at once with `whenFull()` when `maxWaiting`
   * requests already wait (a batch stuck on a dead connection must not gather them forever).
   */
  load(input: I): Promise<O> {
    if (this.#queue.length >= this.#maxWaiting) return Promise.reject(this.#whenFull());
    const { promise, resolve, reject } = Promise.withResolvers<O>();
    this.#queue.push({ input, resolve, reject });
    if (!this.#running) this.#pump();
    return promise;
  }

  async #pump(): Promise<void> {
    this.#running = true;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, this.#maxBatch);
        try {
          const outputs = await this.#run(batch.map((pending) => pending.input));
          batch.forEach((pending, i) => pending.resolve(outputs[i]));
        } catch (error) {
          for (const pending of batch) pending.reject(error);
        }
      }
    } finally {
      this.#running = false;
    }
  }
}
