/**
 * The WebSocket opening handshake, checked before anything is upgraded (RFC 6455 §4.2.1), so a
 * malformed upgrade gets a clear 400 or 426 instead of Deno's own refusal.
 */
/** True when a request asks to upgrade to a WebSocket (`Upgrade: websocket`). */
export function isUpgrade(req: Request): boolean {
  return hasToken(req.headers.get("upgrade"), "websocket");
}

/** Why an upgrade request is refused: the HTTP status, a message, and headers to add. */
export interface HandshakeRefusal {
  status: 400 | 426;
  message: string;
  headers: Record<string, string>;
}

/**
 * Checks an upgrade request against the opening handshake of RFC 6455 §4.2.1 before anything
 * is upgraded: a GET, `Connection` listing `Upgrade`, `Upgrade` listing `websocket`, a
 * `Sec-WebSocket-Key` that is base64 of 16 bytes, and `Sec-WebSocket-Version: 13`. A wrong
 * version gets 426 with `Sec-WebSocket-Version: 13` (§4.4); anything else malformed, 400.
 * Returns null for a valid handshake.
 */
export function checkHandshake(req: Request): HandshakeRefusal | null {
  const refuse = (message: string): HandshakeRefusal => ({
    status: 400,
    message: `Malformed WebSocket upgrade request: ${message}`,
    headers: {},
  });
  if (req.method !== "GET") return refuse("the method must be GET");
  if (!req.headers.get("host")) return refuse("the Host header is missing");
  if (!hasToken(req.headers.get("connection"), "upgrade")) {
    return refuse("the Connection header must list Upgrade");
  }
  if (!isUpgrade(req)) return refuse("the Upgrade header must list websocket");
  const key = req.headers.get("sec-websocket-key")?.trim() ?? "";
  if (!isNonceKey(key)) {
    return refuse("Sec-WebSocket-Key must be 16 bytes in base64");
  }
  const version = req.headers.get("sec-websocket-version")?.trim();
  if (version === undefined || version === "") {
    return { ...refuse("Sec-WebSocket-Version is missing"), headers: VERSION_HEADER };
  }
  if (version !== "13") {
    return {
      status: 426,
      message: "Unsupported WebSocket version: this server speaks version 13 (RFC 6455)",
      headers: VERSION_HEADER,
    };
  }
  return null;
}

const VERSION_HEADER = { "sec-websocket-version": "13" };

/** True when a comma-separated header value lists `token` (case-insensitive, RFC 9110 §5.6.1). */
function hasToken(value: string | null, token: string): boolean {
  return value?.split(",").some((item) => item.trim().toLowerCase() === token) ?? false;
}

/** A Sec-WebSocket-Key: base64 of exactly 16 bytes, i.e. 22 characters and `==`. */
function isNonceKey(key: string): boolean {
  return /^[A-Za-z0-9+/]{21}[AQgw]==$/.test(key);
}
