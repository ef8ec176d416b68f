/**
 * The wire limits of parley's API, in one place. The server enforces them and the client
 * derives its batching from them, so anything the client may send alone also goes through
 * when many calls are sent at once.
 *
 * This module has no imports: the client (`client/`) imports it as a value, the one module
 * of `server/` it does, so that both sides read the same numbers. These limits are fixed
 * (a deployed client must agree with every server it may talk to); the abuse limits that an
 * operator tunes (rates, connection caps) are in `config.ts`.
 */

/** Largest HTTP request body the server reads, in bytes (larger: 413 `PAYLOAD_TOO_LARGE`). */
export const MAX_BODY_BYTES = 64 * 1024;

/** Most calls in one tRPC HTTP batch (more: tRPC's "Batch call exceeds maximum size"). */
export const MAX_BATCH_SIZE = 20;

/**
 * Largest WebSocket frame a client may send, in bytes (larger: the socket closes with 1009).
 * Equal to the body limit, so a call that fits one HTTP request also fits one frame.
 */
export const MAX_FRAME_BYTES = MAX_BODY_BYTES;

/**
 * Longest request target (path and query) the server accepts, in bytes (longer: 414). The
 * client's batched GET queries stay under it.
 */
export const MAX_URL_BYTES = 16 * 1024;

/**
 * Most bytes of request headers (names, values and their separators, request line
 * included) the server accepts (more: 431 Request Header Fields Too Large, RFC 6585 §5).
 */
export const MAX_HEADER_BYTES = 32 * 1024;
