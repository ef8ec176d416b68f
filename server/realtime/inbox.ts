/** A queue between a push-based source and one async-generator consumer. */
export class Inbox<T> {
  #items: T[] = [];
  #head = 0;
  #error: unknown = undefined;
  #failed = false;
  #wake: (() => void) | null = null;
  #limit: number;
  #onOverflow: () => unknown;

  /** `onOverflow` makes the error the consumer gets when more than `limit` items wait. */
  constructor(limit: number, onOverflow: () => unknown) {
    this.#limit = limit;
    this.#onOverflow = onOverflow;
  }

  /** Queues an item for the consumer. */
  push(item: T): void {
    if (this.#items.length - this.#head >= this.#limit) {
      this.fail(this.#onOverflow());
      return;
    }
    this.#items.push(item);
    this.#wake?.();
  }

  /** Ends the consumer with `error` as soon as it next looks, ahead of queued items. */
  fail(error: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#error = error;
    this.#wake?.();
  }

  /** Yields queued items until `signal` aborts; throws the error given to `fail`. */
  async *take(signal: AbortSignal): AsyncGenerator<T> {
    const onAbort = () => this.#wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      while (true) {
        // A failure wins over a stop: it is what the consumer must learn.
        if (this.#failed) throw this.#error;
        if (signal.aborted) break;
        if (this.#head < this.#items.length) {
          const item = this.#items[this.#head++];
          if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
            this.#items = this.#items.slice(this.#head);
            this.#head = 0;
          }
          yield item;
          continue;
        }
        await new Promise<void>((resolve) => this.#wake = resolve);
        this.#wake = null;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
