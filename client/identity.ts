/**
 * Who the client acts as: the token is read before every call (HTTP request, WebSocket
 * operation, WebSocket connect), each reading is compared with the one before it, and a
 * change (sign-in, sign-out, another user, a refresh of the same user's token) is
 * announced: first to the WebSocket side, which must not go on sending over a socket
 * opened with another token, then to whoever waits for access (e.g. a refused `watchRoom`).
 */

/** The current token, or a function that returns it (null, undefined or "" when signed out). */
export type TokenSource =
  | string
  | null
  | undefined
  | (() => string | null | undefined | Promise<string | null | undefined>);

/**
 * Something that may have changed what this client is allowed to see: the token changed
 * (`token`), or a `rooms.join` call of this client succeeded (`joined`, with its room).
 */
export type AccessChange = { type: "token" } | { type: "joined"; roomId: string };

/** The client's identity: the token it acts with and notifications of changes. */
export interface Identity {
  /** Reads the token from its source now; a value unlike the last one read is a change. */
  read(): Promise<string | null>;
  /** The token read last (null when signed out or never read). */
  readonly token: string | null;
  /** Starts at 0 and goes up by one at every token change. */
  readonly version: number;
  /** Announces that this client joined `roomId`. */
  joined(roomId: string): void;
  /**
   * Calls `listener` after every access change; returns a function that removes it.
   * While at least one listener is registered, the token is also read every `pollMs`.
   */
  onChange(listener: (change: AccessChange) => void): () => void;
  /** Removes every listener and stops polling. */
  close(): void;
}

/** Options of `createIdentity`. */
export interface IdentityOptions {
  /** Runs synchronously on every token change, before listeners (the WebSocket guard). */
  onTokenChange: () => void;
  /**
   * Runs synchronously after every reading that set the token: the first reading, and every
   * change (after `onTokenChange`, before listeners). The session state is computed here.
   */
  onTokenSet?: () => void;
  /** How often, in ms, the token is read while a listener waits; 0 never (default 1000). */
  pollMs?: number;
}

/** Tracks the token of `source`; see `Identity`. */
export function createIdentity(source: TokenSource, options: IdentityOptions): Identity {
  const pollMs = options.pollMs ?? 1000;
  const listeners = new Set<(change: AccessChange) => void>();
  let token: string | null = null;
  let seen = false;
  let version = 0;
  let poll: ReturnType<typeof setInterval> | undefined;

  function notify(change: AccessChange) {
    for (const listener of [...listeners]) {
      // A throwing listener must not stop the others, nor fail the call that noticed.
      try {
        listener(change);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  function note(next: string | null) {
    if (seen && next === token) return;
    const changed = seen;
    seen = true;
    token = next;
    if (changed) {
      version++;
      options.onTokenChange();
    }
    options.onTokenSet?.();
    if (changed) notify({ type: "token" });
  }

  /** Reads started, and the latest one whose value was taken. */
  let started = 0;
  let taken = 0;

  async function read(): Promise<string | null> {
    const order = ++started;
    const value = typeof source === "function" ? await source() : source;
    // An async source may answer out of order: a reading older than one already taken
    // would flip the identity back, so it yields the newer value instead.
    if (order > taken) {
      taken = order;
      note(value || null);
    }
    return token;
  }

  function updatePolling() {
    if (listeners.size > 0 && pollMs > 0 && poll === undefined) {
      poll = setInterval(() => void read().catch(() => {}), pollMs);
    } else if ((listeners.size === 0 || pollMs <= 0) && poll !== undefined) {
      clearInterval(poll);
      poll = undefined;
    }
  }

  return {
    read,
    get token() {
      return token;
    },
    get version() {
      return version;
    },
    joined(roomId) {
      notify({ type: "joined", roomId });
    },
    onChange(listener) {
      // A wrapper per registration, so the same function may be registered twice.
      const entry = (change: AccessChange) => listener(change);
      listeners.add(entry);
      updatePolling();
      return () => {
        listeners.delete(entry);
        updatePolling();
      };
    },
    close() {
      listeners.clear();
      updatePolling();
    },
  };
}
