/**
 * Serves the example chat page (`examples/chat/`) with the client bundled from
 * `client/`. The page talks to the API given in its `?api=` query parameter.
 *
 *   deno task example        # http://localhost:3000/?api=http://localhost:8000
 */
import { bundleClient } from "./build_client.ts";

const PAGE_DIR = new URL("../examples/chat/", import.meta.url);

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

/** A running example server. */
export interface ExampleServer {
  /** Its origin, e.g. `http://127.0.0.1:3000`. */
  url: string;
  shutdown(): Promise<void>;
}

/** Bundles the client once and serves the page on `hostname:port` (0 picks a port). */
export async function serveExample(
  options: { hostname?: string; port?: number; bundle?: string } = {},
): Promise<ExampleServer> {
  let bundle = options.bundle;
  if (!bundle) {
    bundle = `${await Deno.makeTempDir({ prefix: "parley_example_" })}/parley_client.js`;
    await bundleClient(bundle);
  }
  const code = await Deno.readFile(bundle);
  const ac = new AbortController();
  const hostname = options.hostname ?? "127.0.0.1";
  const server = Deno.serve(
    { hostname, port: options.port ?? 0, signal: ac.signal, onListen() {} },
    async (req) => {
      const name = new URL(req.url).pathname.slice(1) || "index.html";
      const type = TYPES[name.slice(name.lastIndexOf("."))];
      if (name === "parley_client.js") {
        return new Response(code, { headers: { "content-type": type } });
      }
      if (!/^[a-z_]+\.(html|js|css|svg)$/.test(name)) {
        return new Response("Not found", { status: 404 });
      }
      try {
        return new Response(await Deno.readFile(new URL(name, PAGE_DIR)), {
          headers: { "content-type": type },
        });
      } catch {
        return new Response("Not found", { status: 404 });
      }
    },
  );
  return {
    url: `http://${hostname}:${server.addr.port}`,
    async shutdown() {
      ac.abort();
      await server.finished;
    },
  };
}

if (import.meta.main) {
  const port = Number(Deno.env.get("EXAMPLE_PORT") ?? 3000);
  const example = await serveExample({ hostname: "localhost", port });
  const api = Deno.env.get("API_URL") ?? "http://localhost:8000";
  console.log(`Example chat page: ${example.url.replace("127.0.0.1", "localhost")}/?api=${api}`);
}
