/**
 * The ceiling for `bench.ts`: a bare broadcast server with no tRPC and no Postgres.
 *
 * - `GET /ws?room=N` (WebSocket upgrade) joins room N.
 * - `POST /send?room=N` with a body broadcasts it to every socket of room N and answers
 *   with the room's new seq; a text frame sent on a WebSocket opened at `/send?room=N` does
 *   the same (the answer is a text frame holding the seq).
 *
 * Each room numbers its messages 1, 2, 3, ... like parley does, and every socket of the room
 * receives `{"id":"<seq>","data":<body>}`: the body is passed through as is (the bench sends
 * a JSON string literal), so the server does the least work a sequenced broadcast can do.
 *
 * Run: `PORT=0 HOST=127.0.0.1 deno run --allow-net --allow-env bench/bare_server.ts`; prints
 * `bare listening on http://HOST:PORT`.
 */

interface BareRoom {
  seq: number;
  sockets: Set<WebSocket>;
}

const rooms = new Map<string, BareRoom>();

function roomOf(name: string): BareRoom {
  let room = rooms.get(name);
  if (!room) rooms.set(name, room = { seq: 0, sockets: new Set() });
  return room;
}

function broadcast(room: BareRoom, body: string): number {
  const seq = ++room.seq;
  const frame = `{"id":"${seq}","data":${body}}`;
  for (const socket of room.sockets) {
    if (socket.readyState === WebSocket.OPEN) socket.send(frame);
  }
  return seq;
}

function answerPing(socket: WebSocket, data: unknown): boolean {
  if (data === "PING") {
    socket.send("PONG");
    return true;
  }
  return data === "PONG";
}

async function handle(req: Request): Promise<Response> {
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
      socket.send(String(broadcast(room, event.data)));
    };
    return response;
  }
  if (url.pathname === "/send" && req.method === "POST") {
    const body = await req.text();
    if (body === "") return new Response("empty body\n", { status: 400 });
    return new Response(String(broadcast(roomOf(name), body)));
  }
  return new Response("not found\n", { status: 404 });
}

if (import.meta.main) {
  const hostname = Deno.env.get("HOST") ?? "127.0.0.1";
  const port = Number(Deno.env.get("PORT") ?? "0");
  Deno.serve({
    hostname,
    port,
    onListen: (addr) => console.log(`bare listening on http://${hostname}:${addr.port}`),
  }, handle);
}
