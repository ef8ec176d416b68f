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
  let nextBeforeSeq: number | null = null;
  let state: RoomState | null = null;
  let stopped = false;
  let subscription: { unsubscribe(): void } | null = null;
  let wasLive = false;

  const lastSeq = () => messages.at(-1)?.seq ?? 0;
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

  async function load() {
    subscription?.unsubscribe();
    subscription = null;
    setState(messages.length > 0 ? "resyncing" : "connecting");
    try {
      const page = await trpc.messages.list.query({ roomId, limit: pageSize });
      if (stopped) return;
      const first = page.items[0]?.seq;
      if (messages.length === 0 || first === undefined || first > lastSeq() + 1) {
        // Nothing held, or a hole between what we hold and the new page: start over from it.
        messages = [...page.items];
        nextBeforeSeq = page.nextBeforeSeq;
        publish();
      } else {
        append(page.items);
      }
      subscribe();
    } catch (error) {
      setState("error", error);
    }
  }

  function subscribe() {
    if (stopped) return;
    subscription = trpc.messages.onMessage.subscribe(
      { roomId, lastEventId: String(lastSeq()) },
      {
        onStarted() {
          wasLive = true;
          setState("live");
        },
        onData(event) {
          if (append([event.data])) void load();
        },
        onError(error) {
          if (error.data?.code === "PRECONDITION_FAILED") void load();
          else setState("error", error);
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
          append([message]); // shows at once when it is next; otherwise the stream brings it
          return message;
        } catch (error) {
          if (attempt >= attempts || !isRetryable(error)) throw error;
          await new Promise((resolve) => setTimeout(resolve, Math.min(4000, 250 * 2 ** attempt)));
        }
      }
    },
    async loadOlder() {
      if (nextBeforeSeq === null) return false;
      const page = await trpc.messages.list.query({
        roomId,
        limit: pageSize,
        beforeSeq: nextBeforeSeq,
      });
      const oldest = messages[0]?.seq ?? Infinity;
      messages = [...page.items.filter((m) => m.seq < oldest), ...messages];
      nextBeforeSeq = page.nextBeforeSeq;
      publish();
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
