// A static file server for examples/web/www on 127.0.0.1 (what the drivers and run.sh use).
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".wasm": "application/wasm",
  ".css": "text/css",
  ".png": "image/png",
};

/** Serves `root` on 127.0.0.1:`port` (0: any free port); resolves to the server. */
export function serve(root, port = 0) {
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    if (path.includes("..")) {
      res.writeHead(400).end();
      return;
    }
    const file = join(root, path.endsWith("/") ? path + "index.html" : path);
    try {
      const body = await readFile(file);
      res.writeHead(200, {
        "content-type": TYPES[extname(file)] ?? "application/octet-stream",
        "cache-control": "no-store",
        // Cross-origin isolation, for SharedArrayBuffer (absurd-sql in bench.html needs it;
        // every page here loads only same-origin files, which COEP lets through).
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-embedder-policy": "require-corp",
      });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

// `node serve.mjs [port]`: serve the example until stopped.
if (import.meta.url === `file://${process.argv[1]}`) {
  const root = new URL("../www/", import.meta.url).pathname;
  const server = await serve(root, Number(process.argv[2] ?? 8080));
  console.log(`rekord web example: http://127.0.0.1:${server.address().port}/`);
}
