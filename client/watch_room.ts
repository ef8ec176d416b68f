/**
 * `watchRoom`: a room's messages as one ordered list without holes or duplicates,
 * kept complete across reconnects, resyncs and changes of identity, with sends that are
 * safe to retry. A session that ends stops it in one state, `signed-out`, until the token
 * changes.
 */
import { TRPCClientError } from "@trpc/client";
import type { ParleyClient } from "./mod.ts";
import { isRetryable, retryDelay, withRetries } from "./retry.ts";

type Message = Awaited<ReturnType<ParleyClient["trpc"]["messages"]["send"]["mutate"]>>;

/**
 * Where a watched room stands: loading (`connecting`), following (`live`), catching up after
 * a lost connection (`reconnecting`) or a resync (`resyncing`), waiting for a sign-in
 * (`signed-out`), or stopped by another failure (`error`).
 */
export type RoomState =
  | "connecting"
  | "live"
  | "reconnecting"
  | "resyncing"
  | "signed-out"
  | "error";

/** Callbacks and tuning of `watchRoom`. */
export interface WatchRoomOptions {
  /** Gets the whole ordered list on every change. */
  onMessages: (messages: Message[]) => void;
  /**
   * Gets every state change; `error` carries what failed. Without a live session (no token,
   * UNAUTHORIZED, `signOut`, or the client's session ended by any other call) the room goes
   * to `signed-out` once and waits, making no calls, until the token changes to another
   * one; then it loads again by itself. After FORBIDDEN it stays in `error` until access may
   * have changed (the token changed, or this client joined the room), then loads again.
   */
  onStateChange?: (state: RoomState, error?: unknown) => void;
  /** Messages per page (default 50). */
  pageSize?: number;
  /** How often `send` tries when calls fail without an answer or with a 5xx (default 5). */
  sendAttempts?: number;
  /**
   * How long, in ms, `send` and `loadOlder` wait in total on refusals for rate (429, each
   * wait as long as the server asks) before they give up (default 120000).
   */
  rateLimitWaitMs?: number;
}

/** What `watchRoom` returns. */
export interface WatchRoomHandle {
  /**
   * Sends a message; retries with the same clientMessageId, so it is stored once: after a
   * refusal for rate, as late as the server asks; after a failure without an answer or a
   * 5xx, with backoff, up to `sendAttempts` times. Throws the last error when it gives up,
   * and stops retrying when the token changed since the send began (a retry would be sent
   * as someone else).
   */
  send(content: string): Promise<Message>;
  /**
   * Loads the page before the oldest message held (retried after refusals for rate);
   * false when there is nothing older.
   */
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
  const rateLimitWaitMs = options.rateLimitWaitMs ?? 120_000;
  let messages: Message[] = [];
  let state: RoomState | null = null;
  let stopped = false;
  let subscription: { unsubscribe(): void } | null = null;
  let wasLive = false;
  let loaded = false;
  /** Bumped by every (re)load, so a page fetched before it is not spliced in after. */
  let generation = 0;
  let retries = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Set while refused access: removes the listener that waits for access to change. */
  let stopWaiting: (() => void) | null = null;
  // A session that ends, wherever it was noticed, stops the room at once: no subscription
  // or retry is left to be refused again.
  const stopSessionWatch = parley.onSessionChange((session) => {
    if (session !== "signed-in") signedOut();
  });

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

  /**
   * Retries `load` after a transient failure: as late as a refusal for rate asks, else
   * backing off up to 10 s.
   */
  function retryLater(error: unknown) {
    setState(wasLive ? "reconnecting" : "connecting", error);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => void load(), retryDelay(error, ++retries));
  }

  /** Handles a failure of a load or of the subscription. */
  function failed(error: unknown) {
    const code = error instanceof TRPCClientError ? error.data?.code : undefined;
    if (code === "UNAUTHORIZED") signedOut(error);
    else if (code === "FORBIDDEN") refused("error", error);
    else if (code === "NOT_FOUND" || !isRetryable(error)) setState("error", error);
    else retryLater(error);
  }

  /** No live session: drops the subscription and any retry, then waits in `signed-out`. */
  function signedOut(error?: unknown) {
    if (stopped) return;
    generation++; // a load in flight is stale
    clearTimeout(retryTimer);
    subscription?.unsubscribe();
    subscription = null;
    refused("signed-out", error);
  }

  /**
   * Refused access: waits in `next` until the token changes (`signed-out`: to a token, not
   * to none) or this client joins the room, then loads again.
   */
  function refused(next: "signed-out" | "error", error: unknown) {
    setState(next, error);
    if (stopped || stopWaiting) return;
    stopWaiting = parley.onAccessChange((change) => {
      if (change.type === "joined" && change.roomId !== roomId) return;
      // The room's state now, not when the wait began: a FORBIDDEN room may since be signed out.
      if (state === "signed-out" && parley.session !== "signed-in") return;
      stopWaiting?.();
      stopWaiting = null;
      void load();
    });
  }

  async function load() {
    if (stopped) return;
    clearTimeout(retryTimer);
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
      if (!stopped && current === generation) failed(error);
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
          if (error.data?.code === "PRECONDITION_FAILED") void load();
          else failed(error);
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
      const version = await parley.checkToken();
      const message = await withRetries(
        () => trpc.messages.send.mutate({ roomId, content, clientMessageId }),
        {
          attempts: options.sendAttempts ?? 5,
          rateLimitWaitMs,
          async beforeRetry(error) {
            if ((await parley.checkToken()) !== version) {
              throw new Error(
                "Cannot send: the token changed while the message was being retried " +
                  "(it may have been stored for the previous identity)",
                { cause: error },
              );
            }
          },
        },
      );
      // Shown at once when it is next; otherwise the stream (or the first load) brings it.
      if (loaded) append([message]);
      return message;
    },
    async loadOlder() {
      const before = nextBeforeSeq();
      if (before === null) return false;
      const current = generation;
      const page = await withRetries(
        () => trpc.messages.list.query({ roomId, limit: pageSize, beforeSeq: before }),
        { attempts: 1, rateLimitWaitMs },
      );
      // Only splice the page in if it still joins the list (a resync may have replaced it).
      if (current === generation && page.items.at(-1)?.seq === messages[0]?.seq - 1) {
        messages = [...page.items, ...messages];
        publish();
      }
      return true;
    },
    stop() {
      stopped = true;
      clearTimeout(retryTimer);
      stopWaiting?.();
      stopWaiting = null;
      stopSessionWatch();
      subscription?.unsubscribe();
    },
  };
}
