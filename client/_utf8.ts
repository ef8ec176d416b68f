/** Byte counting for the wire limits, shared by the client's HTTP and WebSocket sides. */

const encoder = new TextEncoder();

/** The UTF-8 length of a string, in bytes (what it weighs in a request body or a frame). */
export function utf8Length(text: string): number {
  return encoder.encode(text).byteLength;
}
