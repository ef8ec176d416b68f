/**
 * `watchRoom`: a room's messages as one ordered list without holes or duplicates,
 * kept complete across reconnects and resyncs, with sends that are safe to retry.
 */
import { TRPCClientError } from "@trpc/client";
import type { ParleyClient } from "./mod.ts";

type Message = Awaited<ReturnType<ParleyClient["trpc"]["messages"]["send"]["mutate"]>>;

/** Where a watched room stands. */
export type RoomState = "connecting" | "live" | "reconnecting" | "resyncing" | "error";

/** Callbacks and tuning of `watchRoom`. */
export interface WatchRoomOptions {
  /** Gets the whole ordered list on every change. */
  onMessages: (messages: Message[]) => void;
  /** Gets every state change; `error` carries what failed. */
  onStateChange?: (state: RoomState, error?: unknown) => void;
  /** Messages per page (default 50). */
  pageSize?: number;
  /** How often `send` tries before giving up (default 5). */
  sendAttempts?: number;
}

/** What `watchRoom` returns. */
export interface WatchRoomHandle {
  /** Sends a message; retries with the same clientMessageId, so it is stored once. */
  send(content: string): Promise<Message>;
  /** Loads the page before the oldest message held; false when there is nothing older. */
  loadOlder(): Promise<boolean>;
  /** Stops watching. */
  stop(): void;
}

/** Watches a room: loads its latest page, then follows it live from the last seq held. */
export function watchRoom(
  parley: ParleyClient,
  roomId: string,
  options: WatchRoomOptions,
): WatchRoomHandle {
  const { trpc } = parley;
  const pageSize = options.pageSize ?? 50;
  let messages: Message[] = [];
  let state: RoomState | null = null;
  let stopped = false;
  let subscription: { unsubscribe(): void } | null = null;
  let wasLive = false;
  let loaded = false;
  /** Bumped by every (re)load, so a page fetched before it is not spliced in after. */
  let generation = 0;
  let retries = 0;

  const lastSeq = () => messages.at(-1)?.seq ?? 0;
  // seqs start at 1 with no gaps, so older messages exist exactly when we start above 1.
  const nextBeforeSeq = () => (messages.length > 0 && messages[0].seq > 1 ? messages[0].seq : null);
  function setState(next: RoomState, error?: unknown) {
    if (stopped || (state === next && error === undefined)) return;
    state = next;
    options.onStateChange?.(next, error);
  }
  function publish() {
    if (!stopped) options.onMessages([...messages]);
  }

  /** Appends messages that continue the list; reports whether a hole was found. */
  function append(incoming: Message[]): boolean {
    let changed = false;
    for (const message of incoming) {
      if (message.seq <= lastSeq()) continue;
      if (messages.length > 0 && message.seq !== lastSeq() + 1) return true;
      messages.push(message);
      changed = true;
    }
    if (changed) publish();
    return false;
  }

  /** Retries `load` after a transient failure, backing off up to 10 s. */
  function retryLater(error: unknown) {
    setState(wasLive ? "reconnecting" : "connecting", error);
    const delay = Math.min(10_000, 250 * 2 ** retries++);
    setTimeout(() => void load(), delay);
  }

  async function load() {
    if (stopped) return;
    subscription?.unsubscribe();
    subscription = null;
    const current = ++generation;
    setState(loaded ? "resyncing" : "connecting");
    try {
      const page = await trpc.messages.list.query({ roomId, limit: pageSize });
      if (stopped || current !== generation) return;
      // Merge by seq with what is held (a send may have landed first); if that leaves a
      // hole, the new page alone is the truth.
      const bySeq = new Map(messages.map((m) => [m.seq, m]));
      for (const message of page.items) bySeq.set(message.seq, message);
      const merged = [...bySeq.values()].sort((a, b) => a.seq - b.seq);
      const whole = merged.every((m, i) => i === 0 || m.seq === merged[i - 1].seq + 1);
      messages = whole ? merged : [...page.items];
      loaded = true;
      publish();
      subscribe();
    } catch (error) {
      if (isRetryable(error)) retryLater(error);
      else setState("error", error);
    }
  }

  function subscribe() {
    if (stopped) return;
    subscription = trpc.messages.onMessage.subscribe(
      { roomId, lastEventId: String(lastSeq()) },
      {
        onStarted() {
          wasLive = true;
          retries = 0;
          setState("live");
        },
        onData(event) {
          if (append([event.data])) void load();
        },
        onError(error) {
          const code = error.data?.code;
          if (code === "PRECONDITION_FAILED") void load();
          else if (code === "FORBIDDEN" || code === "UNAUTHORIZED" || code === "NOT_FOUND") {
            setState("error", error);
          } else retryLater(error);
        },
        onConnectionStateChange(connection) {
          if (connection.state === "connecting" && wasLive) setState("reconnecting");
        },
      },
    );
  }

  void load();

  return {
    async send(content) {
      const clientMessageId = crypto.randomUUID();
      const attempts = options.sendAttempts ?? 5;
      for (let attempt = 1;; attempt++) {
        try {
          const message = await trpc.messages.send.mutate({ roomId, content, clientMessageId });
          // Shown at once when it is next; otherwise the stream (or the first load) brings it.
          if (loaded) append([message]);
          return message;
        } catch (error) {
          if (attempt >= attempts || !isRetryable(error)) throw error;
          await new Promise((resolve) => setTimeout(resolve, Math.min(4000, 250 * 2 ** attempt)));
        }
      }
    },
    async loadOlder() {
      const before = nextBeforeSeq();
      if (before === null) return false;
      const current = generation;
      const page = await trpc.messages.list.query({ roomId, limit: pageSize, beforeSeq: before });
      // Only splice the page in if it still joins the list (a resync may have replaced it).
      if (current === generation && page.items.at(-1)?.seq === messages[0]?.seq - 1) {
        messages = [...page.items, ...messages];
        publish();
      }
      return true;
    },
    stop() {
      stopped = true;
      subscription?.unsubscribe();
    },
  };
}

/** Network failures and server errors are worth retrying; a refused request is not. */
function isRetryable(error: unknown): boolean {
  if (!(error instanceof TRPCClientError)) return true;
  const status = error.data?.httpStatus;
  return status === undefined || status >= 500 || status === 408 || status === 429;
}
