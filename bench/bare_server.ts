/**
 * The ceiling of `deno task bench` (bench/main.ts): a bare broadcast server with no tRPC and
 * no Postgres.
 *
 * - `GET /ws?room=N` (WebSocket upgrade) joins room N.
 * - `POST /send?room=N` with a body broadcasts it to every socket of room N and answers
 *   with the room's new seq; a text frame sent on a WebSocket opened at `/send?room=N` does
 *   the same (the answer is a text frame holding the seq).
 *
 * Each room numbers its messages 1, 2, 3, ... like parley does, and every socket of the room
 * receives `{"id":"<seq>","data":<message>}`, where the message has the fields parley's
 * messages have (id, roomId, seq, userId, username, avatarUrl, content, clientMessageId,
 * createdAt) with values of the same sizes, so that bytes per frame compare like for like. The
 * body is the content as a JSON string literal, passed through as is; the sender is one
 * constant user (the bench measures delivery, not identity). Each message is encoded once and
 * the same string is written to every socket: the least work a sequenced broadcast can do.
 *
 * Run: `PORT=0 HOST=127.0.0.1 deno run --allow-net --allow-env bench/bare_server.ts`; prints
 * `bare listening on http://HOST:PORT`.
 */

interface BareRoom {
  seq: number;
  sockets: Set<WebSocket>;
}

/** The sender of every message: a user id and a name of the lengths the bench's users have. */
const SENDER = '"userId":"00000000-0000-4000-8000-000000000000","username":"bench_00"';

/** Numbers a message of room `name` and writes it to every open socket of the room. */
function broadcast(name: string, room: BareRoom, body: string): number {
  const seq = ++room.seq;
  const message = `{"id":"${crypto.randomUUID()}","roomId":${JSON.stringify(name)},` +
    `"seq":${seq},${SENDER},"avatarUrl":null,"content":${body},` +
    `"clientMessageId":"${crypto.randomUUID()}","createdAt":"${new Date().toISOString()}"}`;
  const frame = `{"id":"${seq}","data":${message}}`;
  for (const socket of room.sockets) {
    if (socket.readyState === WebSocket.OPEN) socket.send(frame);
  }
  return seq;
}

/** Answers a keep-alive PING; true for PING and PONG (nothing else to do with them). */
function answerPing(socket: WebSocket, data: unknown): boolean {
  if (data === "PING") {
    socket.send("PONG");
    return true;
  }
  return data === "PONG";
}

/** The server's request handler, holding its rooms. */
export function createHandler(): (req: Request) => Promise<Response> {
  const rooms = new Map<string, BareRoom>();
  const roomOf = (name: string) => {
    let room = rooms.get(name);
    if (!room) rooms.set(name, room = { seq: 0, sockets: new Set() });
    return room;
  };
  return async function handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const name = url.searchParams.get("room");
    if (name === null || name === "") return new Response("room required\n", { status: 400 });
    const isUpgrade = req.headers.get("upgrade")?.toLowerCase() === "websocket";
    if (url.pathname === "/ws" && isUpgrade) {
      const room = roomOf(name);
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onopen = () => room.sockets.add(socket);
      socket.onclose = () => room.sockets.delete(socket);
      socket.onerror = () => room.sockets.delete(socket);
      socket.onmessage = (event) => void answerPing(socket, event.data);
      return response;
    }
    if (url.pathname === "/send" && isUpgrade) {
      const room = roomOf(name);
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (event) => {
        if (typeof event.data !== "string" || answerPing(socket, event.data)) return;
        socket.send(String(broadcast(name, room, event.data)));
      };
      return response;
    }
    if (url.pathname === "/send" && req.method === "POST") {
      const body = await req.text();
      if (body === "") return new Response("empty body\n", { status: 400 });
      return new Response(String(broadcast(name, roomOf(name), body)));
    }
    return new Response("not found\n", { status: 404 });
  };
}

if (import.meta.main) {
  const hostname = Deno.env.get("HOST") ?? "127.0.0.1";
  const port = Number(Deno.env.get("PORT") ?? "0");
  Deno.serve({
    hostname,
    port,
    onListen: (addr) => console.log(`bare listening on http://${hostname}:${addr.port}`),
  }, createHandler());
}
