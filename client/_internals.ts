/**
 * What the sign-in helpers (auth.ts) and `watchRoom` need of a client beyond its public
 * interface.
 */
import type { SessionTracker } from "./session.ts";

/** A client's token store and session state, as `createParleyClient` set them up. */
export interface ClientInternals {
  /** `ParleyClientOptions.saveToken`, or null when the app stores tokens itself. */
  saveToken: ((token: string | null) => void | Promise<void>) | null;
  /** The client's session state. */
  session: SessionTracker;
  /** Calls `listener` at every `parley.reconnect()`; returns a function that removes it. */
  onReconnect(listener: () => void): () => void;
}

/** Each client's internals, keyed by the client object `createParleyClient` returned. */
export const clientInternals: WeakMap<object, ClientInternals> = new WeakMap();
