/**
 * ICE servers for calls: STUN, and TURN with short-lived credentials in the form coturn checks
 * with `use-auth-secret` ("A REST API for Access to TURN Services",
 * draft-uberti-behave-turn-rest-00 §2.2): the username is `<expiry unix seconds>:<user id>` and
 * the password the base64 HMAC-SHA1 of that username under the secret shared with the TURN
 * server. The secret never leaves the server; a credential works until its expiry only.
 */
import { createHmac } from "node:crypto";

/** What calls need from the configuration. */
export interface CallSettings {
  /** `stun:` / `stuns:` URLs (`STUN_URLS`, comma-separated; default none). */
  stunUrls: string[];
  /** `turn:` / `turns:` URLs (`TURN_URLS`; default none: no TURN). */
  turnUrls: string[];
  /** coturn's `static-auth-secret` (`TURN_SECRET`), required with `TURN_URLS`. */
  turnSecret: string | null;
  /** How long a TURN credential works, in seconds (`TURN_TTL`, default a day). */
  turnTtlSeconds: number;
  /** Most participants in one room's call (`CALL_MAX_PARTICIPANTS`, default 6: a mesh). */
  maxParticipants: number;
}

/** The defaults: no ICE servers (browsers on one network need none), a day, six people. */
export const DEFAULT_CALL_SETTINGS: Readonly<CallSettings> = {
  stunUrls: [],
  turnUrls: [],
  turnSecret: null,
  turnTtlSeconds: 24 * 3600,
  maxParticipants: 6,
};

/** An `RTCIceServer` dictionary (WebRTC §4.2.1), as `RTCPeerConnection` takes it. */
export interface IceServer {
  urls: string[];
  username?: string;
  credential?: string;
}

/**
 * The ICE servers for `userId` at `now` (ms since the epoch): `{ iceServers, expiresAt }`,
 * `expiresAt` being when the TURN credential stops working (null without TURN).
 */
export function iceServersFor(
  settings: CallSettings,
  userId: string,
  now: number = Date.now(),
): { iceServers: IceServer[]; expiresAt: Date | null } {
  const iceServers: IceServer[] = [];
  if (settings.stunUrls.length > 0) iceServers.push({ urls: settings.stunUrls });
  if (settings.turnUrls.length === 0 || settings.turnSecret === null) {
    return { iceServers, expiresAt: null };
  }
  const expiry = Math.floor(now / 1000) + settings.turnTtlSeconds;
  const username = `${expiry}:${userId}`;
  const credential = createHmac("sha1", settings.turnSecret).update(username).digest("base64");
  iceServers.push({ urls: settings.turnUrls, username, credential });
  return { iceServers, expiresAt: new Date(expiry * 1000) };
}
