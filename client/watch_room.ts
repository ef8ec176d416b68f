/**
 * `watchRoom`: a room as one live view, kept complete across reconnects, resyncs and changes of
 * identity: its messages as one ordered list without holes or duplicates, with edits, deletions
 * and reactions applied; who is online and who is typing. Sends, edits, deletions and reactions
 * are safe to retry. A session that ends stops it in one state, `signed-out`, until the token
 * changes.
 *
 * It follows `rooms.onEvent`. A (re)load subscribes first (without `lastEventId`: only new
 * events), and reads the latest page with `messages.list` once the first event has come: the
 * stream is then registered on the server and has an event id that tRPC resumes from, so every
 * change after the page is in the stream, and one before it is in the page. Events that come
 * while the page is read wait, then are applied to it in order. Each event sets a state (content,
 * deletion, a count), so one that the page already shows changes nothing.
 */
import { TRPCClientError } from "@trpc/client";
import type { RoomEvent } from "../db/events.ts";
import { clientInternals } from "./_internals.ts";
import type { ParleyClient } from "./mod.ts";
import { isRateLimited, isRetryable, retryDelay, withRetries } from "./retry.ts";

type Trpc = ParleyClient["trpc"];
type Message = Awaited<ReturnType<Trpc["messages"]["send"]["mutate"]>>;
type Member = Awaited<ReturnType<Trpc["rooms"]["join"]["mutate"]>>;
type ReactionChange = Awaited<ReturnType<Trpc["messages"]["react"]["mutate"]>>;

/** How often, in ms, `setTyping(true)` renews the typing state while the user types. */
export const TYPING_RENEW_MS = 2_500;

/** How long, in ms, the server keeps a typing state that is not renewed (server/realtime/typing.ts). */
const TYPING_TIMEOUT_MS = 6_000;

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
  /**
   * Gets the whole ordered list on every change: new messages, edits (`content`, `editedAt`),
   * deletions (a deleted message keeps its seq, with empty `content`, `deletedAt` set and no
   * reactions) and reactions (`reactions`: `{ emoji, count, mine }` per emoji in the order first
   * used, `mine` true when the watching user reacted with it).
   */
  onMessages: (messages: Message[]) => void;
  /**
   * Gets the members online in the room (holding a subscription to it, on any instance; the
   * watching user included), earliest joined first, at every change. Empty while the room is
   * `signed-out` or in `error`.
   */
  onPresence?: (online: Member[]) => void;
  /**
   * Gets the other members typing in the room, earliest started first, at every change (the
   * watching user is left out: their own typing is what they see in their input box). Empty
   * while the room is `signed-out` or in `error`.
   */
  onTyping?: (typing: Member[]) => void;
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
  /**
   * How often `send`, `edit`, `delete`, `react` and `markRead` try when calls fail without an
   * answer or with a 5xx (default 5).
   */
  sendAttempts?: number;
  /**
   * How long, in ms, `send`, `edit`, `delete`, `react`, `markRead` and `loadOlder` wait in
   * total on refusals for rate (429, each wait as long as the server asks) before they give up
   * (default 120000).
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
   * as someone else). Ends the user's typing state (`setTyping(false)`).
   */
  send(content: string): Promise<Message>;
  /**
   * Replaces the content of one of the user's own messages (the rules of `send` apply) and
   * resolves to the message as it is now, `editedAt` set. Retried as `send` is. The list shows
   * the edit when its event arrives (at once while live, after the resume otherwise).
   * @throws `FORBIDDEN` for another's message, `NOT_FOUND` for a message not in this room,
   * `CONFLICT` for a deleted one.
   */
  edit(messageId: string, content: string): Promise<Message>;
  /**
   * Deletes a message (the user's own; any, for the room's creator) and resolves to it as it
   * is now: same seq, empty `content`, `deletedAt` set, no reactions. Deleting it again changes
   * nothing. Retried as `send` is; the list shows it when its event arrives.
   * @throws `FORBIDDEN` for anyone else's message, `NOT_FOUND` for a message not in this room.
   */
  delete(messageId: string): Promise<Message>;
  /**
   * Adds (`on` true) or removes (`on` false) the user's reaction with one emoji; without `on`,
   * toggles it (removes it when the held message shows it as `mine`, else adds it). Resolves to
   * `{ messageId, emoji, userId, added, count }`, `count` being that emoji's reactions now.
   * Idempotent both ways, retried as `send` is; the list shows it when its event arrives.
   * @throws `BAD_REQUEST` for anything but one emoji of Unicode's RGI set, or a 21st distinct
   * emoji on the message; `NOT_FOUND` for a message not in this room; `CONFLICT` for a deleted
   * one.
   */
  react(messageId: string, emoji: string, on?: boolean): Promise<ReactionChange>;
  /**
   * Tells the room whether the user is typing; call it with `true` on every keystroke and with
   * `false` when the input is cleared or left. Throttled: the first `true` is sent at once,
   * then at most one renewal every `TYPING_RENEW_MS` (2.5 s) while `true` keeps coming; `false`
   * is sent once, and only if a `true` may still be shown (the server ends a state not renewed
   * for 6 s by itself). Best effort: sent in order, nothing is retried, failures are ignored,
   * and nothing is sent while the room is `signed-out`, in `error` or stopped.
   */
  setTyping(typing: boolean): void;
  /**
   * Marks the room read up to `seq` (default: the newest message held) and resolves to
   * `{ lastReadSeq }`, the user's read position now (it never moves backwards; `rooms.mine`
   * counts unread messages after it). A `seq` at or below the position this handle last got is
   * answered from it without a call. Retried as `send` is.
   */
  markRead(seq?: number): Promise<{ lastReadSeq: number }>;
  /**
   * Loads the page before the oldest message held (retried after refusals for rate);
   * false when there is nothing older. Changes made to its messages while it loads are applied
   * to it.
   */
  loadOlder(): Promise<boolean>;
  /** Stops watching. */
  stop(): void;
}

/**
 * Watches a room: subscribes to its events, loads its latest page, then keeps messages,
 * presence and typing up to date from the events.
 */
export function watchRoom(
  parley: ParleyClient,
  roomId: string,
  options: WatchRoomOptions,
): WatchRoomHandle {
  const { trpc } = parley;
  const pageSize = options.pageSize ?? 50;
  const attempts = options.sendAttempts ?? 5;
  const rateLimitWaitMs = options.rateLimitWaitMs ?? 120_000;
  let messages: Message[] = [];
  let online: Member[] = [];
  let typing: Member[] = [];
  let state: RoomState | null = null;
  let stopped = false;
  let subscription: { unsubscribe(): void } | null = null;
  let wasLive = false;
  let loaded = false;
  /** Bumped by every (re)load and failure, so a page or event of an older one is dropped. */
  let generation = 0;
  let retries = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** True while a load that failed for the network (not for rate) waits to be retried. */
  let retryingNetwork = false;
  /** The watching user, read with the identity version it belongs to. */
  let me: { id: string; version: number } | null = null;
  /** Events recorded for each `loadOlder` in flight, applied to its page when it comes. */
  const olderLoads = new Set<MessageChange[]>();
  /** When `typing: true` was last sent (ms since the epoch), 0 when not typing. */
  let typingSentAt = 0;
  /** Typing updates are sent one after another, so a `false` never overtakes a `true`. */
  let typingQueue: Promise<unknown> = Promise.resolve();
  /** The read position as the server last answered, for the identity version it is of. */
  let read: { lastReadSeq: number; version: number } | null = null;
  /** Set while refused access: removes the listener that waits for access to change. */
  let stopWaiting: (() => void) | null = null;
  // A session that ends, wherever it was noticed, stops the room at once: no subscription
  // or retry is left to be refused again.
  const stopSessionWatch = parley.onSessionChange((session) => {
    if (session !== "signed-in") signedOut();
  });
  // `parley.reconnect()` (the network is back): a load that failed for the network and waits
  // to be retried is retried now (one refused for rate still waits as the server asked).
  const stopReconnectWatch = clientInternals.get(parley)?.onReconnect(() => {
    if (retryingNetwork && !stopped) void load();
  });

  const lastSeq = () => messages.at(-1)?.seq ?? 0;
  // seqs start at 1 with no gaps, so older messages exist exactly when we start above 1.
  const nextBeforeSeq = () => (messages.length > 0 && messages[0].seq > 1 ? messages[0].seq : null);
  function setState(next: RoomState, error?: unknown) {
    if (stopped || (state === next && error === undefined)) return;
    state = next;
    options.onStateChange?.(next, error);
  }
  /** True while a batch of events is applied: the list is published once, after it. */
  let batching = false;
  function publish() {
    if (!batching && !stopped) options.onMessages([...messages]);
  }
  function setOnline(next: Member[]) {
    if (stopped || (next.length === 0 && online.length === 0)) return;
    online = next;
    options.onPresence?.([...online]);
  }
  function setTypingMembers(next: Member[]) {
    const others = next.filter((member) => member.userId !== me?.id);
    if (stopped || (others.length === 0 && typing.length === 0)) return;
    typing = others;
    options.onTyping?.([...typing]);
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
   * Applies one event to the room; a new message that leaves a hole makes it load again.
   * Messages not held (older than the list) are left alone, but recorded for the `loadOlder`
   * calls in flight.
   */
  function apply(event: RoomEvent) {
    switch (event.type) {
      case "message.created": {
        const { type: _, ...message } = event;
        if (append([message])) void load();
        return;
      }
      case "message.updated":
      case "message.deleted":
      case "reaction.changed":
        for (const recorded of olderLoads) recorded.push(event);
        if (changeMessage(messages, event, me?.id ?? null)) publish();
        return;
      case "presence.changed":
        return setOnline(event.online);
      case "typing.changed":
        return setTypingMembers(event.typing);
      case "member.joined":
      case "member.left":
        return; // who is online and typing comes from presence and typing events
    }
  }

  /**
   * Retries `load` after a transient failure: as late as a refusal for rate asks, else
   * backing off up to 10 s.
   */
  function retryLater(error: unknown) {
    setState(wasLive ? "reconnecting" : "connecting", error);
    clearTimeout(retryTimer);
    retryingNetwork = !isRateLimited(error);
    retryTimer = setTimeout(() => void load(), retryDelay(error, ++retries));
  }

  /** Drops the subscription and anything loading; with `clear`, the presence and typing shown. */
  function halt(clear: boolean) {
    generation++;
    clearTimeout(retryTimer);
    retryingNetwork = false;
    subscription?.unsubscribe();
    subscription = null;
    if (clear) {
      setOnline([]);
      setTypingMembers([]);
    }
  }

  /** Handles a failure of a load or of the subscription. */
  function failed(error: unknown) {
    const code = error instanceof TRPCClientError ? error.data?.code : undefined;
    if (code === "UNAUTHORIZED") return signedOut(error);
    const retryable = code !== "FORBIDDEN" && code !== "NOT_FOUND" && isRetryable(error);
    halt(!retryable);
    if (code === "FORBIDDEN") refused("error", error);
    else if (!retryable) setState("error", error);
    else retryLater(error);
  }

  /** No live session: drops the subscription and any retry, then waits in `signed-out`. */
  function signedOut(error?: unknown) {
    if (stopped) return;
    halt(true);
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

  /**
   * (Re)loads: subscribes to the room's new events, then, once the first one is in (the stream
   * is registered and resumable), reads the latest page and applies to it the events that came
   * meanwhile, in order.
   */
  async function load() {
    if (stopped) return;
    clearTimeout(retryTimer);
    retryingNetwork = false;
    subscription?.unsubscribe();
    subscription = null;
    const current = ++generation;
    setState(loaded ? "resyncing" : "connecting");
    typingSentAt = 0;
    let version: number;
    try {
      version = await parley.checkToken();
    } catch (error) {
      if (!stopped && current === generation) failed(error);
      return;
    }
    if (stopped || current !== generation) return;
    /** Events that came before the page, in order; null once the page is in. */
    let pending: RoomEvent[] | null = [];
    let reading = false;
    let connected = false;

    async function readPage() {
      try {
        const [user, page] = await Promise.all([
          me?.version === version ? me : trpc.users.me.query(),
          trpc.messages.list.query({ roomId, limit: pageSize }),
        ]);
        if (stopped || current !== generation || pending === null) return;
        me = { id: user.id, version };
        // Held messages newer than the page stay when they continue it (a send landed
        // first); older ones go: they may have missed changes while the stream was away.
        const after = page.items.at(-1)?.seq ?? 0;
        const newer = messages.filter((m) => m.seq > after);
        const continues = newer.every((m, i) => m.seq === after + 1 + i);
        messages = page.items.length === 0 || continues
          ? [...page.items, ...newer]
          : [...page.items];
        loaded = true;
        const events = pending;
        pending = null;
        batching = true;
        try {
          for (const event of events) {
            apply(event);
            if (current !== generation) return; // a hole made it load again
          }
        } finally {
          batching = false;
        }
        publish();
        if (connected) {
          wasLive = true;
          retries = 0;
          setState("live");
        } else setState(wasLive ? "reconnecting" : "connecting");
      } catch (error) {
        if (!stopped && current === generation) failed(error);
      }
    }

    /**
     * Whether the token still names the user this load is for: the same token, or a new one of
     * the same user once the page is in (a refresh), which is then taken as this load's own.
     */
    async function sameUser(): Promise<boolean> {
      try {
        const now = await parley.checkToken();
        if (now === version) return true;
        if (pending !== null || me === null) return false;
        const user = await trpc.users.me.query();
        if (current !== generation || user.id !== me.id) return false;
        if (now === (await parley.checkToken())) version = me.version = now;
        return version === now;
      } catch {
        return false;
      }
    }

    subscription = trpc.rooms.onEvent.subscribe({ roomId }, {
      onStarted() {
        if (current !== generation) return;
        connected = true;
        // A typing state that ended while the stream was away is not announced again: the
        // snapshot that follows every start shows who types now.
        setTypingMembers([]);
        // The stream resumed as whoever the token now names: reload for them (their
        // reactions, their typing) if it changed since this load began.
        void sameUser().then((same) => {
          if (!same && current === generation) void load();
        });
        if (pending === null) {
          wasLive = true;
          retries = 0;
          setState("live");
        }
      },
      onData({ data }) {
        if (current !== generation) return;
        if (pending === null) return apply(data);
        pending.push(data);
        if (!reading) {
          reading = true;
          void readPage();
        }
      },
      onError(error) {
        if (current !== generation) return;
        if (error.data?.code === "PRECONDITION_FAILED") void load();
        else failed(error);
      },
      onConnectionStateChange(connection) {
        if (current !== generation || connection.state !== "connecting") return;
        connected = false;
        if (wasLive) setState("reconnecting");
      },
    });
  }

  /** Runs `call` with retries (see `withRetries`), never as an identity other than the first. */
  async function retried<T>(call: () => Promise<T>, refusal: string): Promise<T> {
    const version = await parley.checkToken();
    return await withRetries(call, {
      attempts,
      rateLimitWaitMs,
      async beforeRetry(error) {
        if ((await parley.checkToken()) !== version) throw new Error(refusal, { cause: error });
      },
    });
  }

  /** Sends a typing update after the ones before it; failures are ignored. */
  function sendTyping(on: boolean) {
    typingQueue = typingQueue
      .then(() => trpc.rooms.typing.mutate({ roomId, typing: on }))
      .catch(() => {});
  }

  /** See `WatchRoomHandle.setTyping`. */
  function setTyping(on: boolean) {
    if (stopped || state === "signed-out" || state === "error") return;
    const now = Date.now();
    if (on) {
      if (typingSentAt !== 0 && now - typingSentAt < TYPING_RENEW_MS) return;
      typingSentAt = now;
      sendTyping(true);
    } else {
      const shown = typingSentAt !== 0 && now - typingSentAt < TYPING_TIMEOUT_MS;
      typingSentAt = 0;
      if (shown) sendTyping(false);
    }
  }

  void load();

  return {
    async send(content) {
      setTyping(false);
      const clientMessageId = crypto.randomUUID();
      const message = await retried(
        () => trpc.messages.send.mutate({ roomId, content, clientMessageId }),
        "Cannot send: the token changed while the message was being retried " +
          "(it may have been stored for the previous identity)",
      );
      // Shown at once when it is next; otherwise the stream (or the first load) brings it.
      if (loaded) append([message]);
      return message;
    },
    edit(messageId, content) {
      return retried(
        () => trpc.messages.edit.mutate({ roomId, messageId, content }),
        "Cannot edit: the token changed while the edit was being retried",
      );
    },
    delete(messageId) {
      return retried(
        () => trpc.messages.delete.mutate({ roomId, messageId }),
        "Cannot delete: the token changed while the deletion was being retried",
      );
    },
    react(messageId, emoji, on) {
      const held = messages.find((m) => m.id === messageId);
      const add = on ?? !held?.reactions.some((r) => r.emoji === emoji && r.mine);
      return retried(
        () => trpc.messages.react.mutate({ roomId, messageId, emoji, on: add }),
        "Cannot react: the token changed while the reaction was being retried",
      );
    },
    setTyping,
    async markRead(seq) {
      const target = seq ?? lastSeq();
      const version = await parley.checkToken();
      if (read?.version === version && target <= read.lastReadSeq) {
        return { lastReadSeq: read.lastReadSeq };
      }
      const result = await retried(
        () => trpc.rooms.markRead.mutate({ roomId, seq: target }),
        "Cannot mark read: the token changed while the call was being retried",
      );
      if (read?.version !== version || result.lastReadSeq > read.lastReadSeq) {
        read = { lastReadSeq: result.lastReadSeq, version };
      }
      return result;
    },
    async loadOlder() {
      const before = nextBeforeSeq();
      if (before === null) return false;
      const current = generation;
      const recorded: MessageChange[] = [];
      olderLoads.add(recorded);
      let page;
      try {
        page = await withRetries(
          () => trpc.messages.list.query({ roomId, limit: pageSize, beforeSeq: before }),
          { attempts: 1, rateLimitWaitMs },
        );
      } finally {
        olderLoads.delete(recorded);
      }
      // Only splice the page in if it still joins the list (a resync may have replaced it).
      if (current === generation && page.items.at(-1)?.seq === messages[0]?.seq - 1) {
        const items = [...page.items];
        for (const event of recorded) changeMessage(items, event, me?.id ?? null);
        messages = [...items, ...messages];
        publish();
      }
      return true;
    },
    stop() {
      stopped = true;
      generation++;
      clearTimeout(retryTimer);
      stopWaiting?.();
      stopWaiting = null;
      stopSessionWatch();
      stopReconnectWatch?.();
      subscription?.unsubscribe();
    },
  };
}

/** The events that change a message already in the list. */
type MessageChange = Extract<
  RoomEvent,
  { type: "message.updated" | "message.deleted" | "reaction.changed" }
>;

/**
 * Applies `event` to its message in `list` (replaced by a new object, in place); reports
 * whether the list holds that message. `me` is the watching user: their reactions are `mine`.
 */
function changeMessage(list: Message[], event: MessageChange, me: string | null): boolean {
  const index = event.type === "reaction.changed"
    ? list.findLastIndex((m) => m.id === event.messageId)
    : list.findLastIndex((m) => m.seq === event.seq);
  if (index < 0) return false;
  const held = list[index];
  switch (event.type) {
    case "message.updated": {
      // Events carry counts without `mine` (one frame for everyone): it stays as held.
      const { type: _, ...message } = event;
      const mine = new Set(held.reactions.filter((r) => r.mine).map((r) => r.emoji));
      const reactions = message.reactions.map((r) => ({ ...r, mine: mine.has(r.emoji) }));
      list[index] = { ...message, reactions };
      break;
    }
    case "message.deleted":
      list[index] = { ...held, content: "", deletedAt: event.deletedAt, reactions: [] };
      break;
    case "reaction.changed": {
      const reactions = [...held.reactions];
      const at = reactions.findIndex((r) => r.emoji === event.emoji);
      const mine = event.userId !== null && event.userId === me
        ? event.added
        : reactions[at]?.mine ?? false;
      const reaction = { emoji: event.emoji, count: event.count, mine };
      if (event.count <= 0) {
        if (at >= 0) reactions.splice(at, 1);
      } else if (at >= 0) reactions[at] = reaction;
      else reactions.push(reaction);
      list[index] = { ...held, reactions };
      break;
    }
  }
  return true;
}
