/**
 * The client's address, for per-address limits. Behind a proxy (Railway's edge, a load
 * balancer) the TCP peer is the proxy, so the address comes from the header the proxy sets —
 * but only when the operator names that header (`CLIENT_ADDRESS_HEADER`): a client can write
 * any header it likes, and only a proxy that overwrites or appends it makes it trustworthy.
 */
import { clip } from "./clip.ts";

/**
 * Returns the client's address: from `header` when one is configured and present, else the
 * TCP peer's (`unknown` when there is none, as in in-process calls). For `x-forwarded-for`
 * (a list, RFC 7239's predecessor) the LAST entry is used: the one the nearest proxy, the
 * trusted one, appended; entries before it were written by the client or by proxies we do not
 * know. The result is at most 64 characters.
 */
export function clientAddress(
  headers: Headers,
  peer: Deno.Addr | undefined,
  header: string | null,
): string {
  if (header !== null) {
    const value = headers.get(header);
    const last = value?.split(",").at(-1)?.trim();
    if (last) return clip(last, 64);
  }
  if (peer && (peer.transport === "tcp" || peer.transport === "udp")) return peer.hostname;
  return "unknown";
}
