// Builds the absurd-sql side of www/bench.html into www/absurd/ (gitignored):
//   main.js       the page's side: starts the bench worker and absurd-sql's initBackend
//   worker.js     the bench worker: sql.js (@jlongster's fork) on absurd-sql's SQLiteFS
//   idb-worker.js absurd-sql's IndexedDB backend worker, as shipped, plus a durability shim
//   sql-wasm.wasm sqlite3
//
//   node examples/web/tests/build-absurd.mjs      (tests/bench.mjs runs it when missing)
//
// absurd-sql ships its backend worker as a base64 string that its main-thread module
// turns into a blob: worker. We write that same code to idb-worker.js instead, so it can
// take a ?durability= parameter: its IndexedDB transactions pass no durability option (the
// browser's default, relaxed in Chrome 121+); the shim adds the one bench.html measures
// the other sides with.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const here = new URL(".", import.meta.url).pathname;
const out = new URL("../www/absurd/", import.meta.url).pathname;
const require = createRequire(import.meta.url);
const absurdDist = dirname(require.resolve("absurd-sql/dist/index.js"));
mkdirSync(out, { recursive: true });

// The backend worker, decoded from the module that would make a blob: of it.
const factoryFile = readdirSync(absurdDist).find((f) => /^indexeddb-main-thread-worker-.*\.js$/.test(f));
const factory = readFileSync(join(absurdDist, factoryFile), "utf8");
const base64 = factory.match(/createBase64WorkerFactory\('([^']+)'/)[1];
const source = Buffer.from(base64, "base64").toString("utf8");
// (absurd-sql's createURL drops the first line, a rollup comment, too.)
const body = source.slice(source.indexOf("\n", 10) + 1);
const shim = `// absurd-sql ${require("absurd-sql/package.json").version}'s IndexedDB backend worker (written by tests/build-absurd.mjs).
// Shim: ?durability=strict|relaxed passes that durability to each of its transactions;
// without it (or =default) they keep the browser's default, as absurd-sql ships.
(() => {
  const durability = new URLSearchParams(self.location.search).get("durability");
  if (!durability || durability === "default") return;
  const transaction = IDBDatabase.prototype.transaction;
  IDBDatabase.prototype.transaction = function (stores, mode, options) {
    return transaction.call(this, stores, mode, { ...options, durability });
  };
})();
`;
writeFileSync(join(out, "idb-worker.js"), shim + body);

// initBackend's worker factory, replaced by one that starts idb-worker.js.
const factoryPlugin = {
  name: "absurd-idb-worker",
  setup(b) {
    b.onLoad({ filter: /indexeddb-main-thread-worker-[^/]*\.js$/ }, () => ({
      contents: `export default function WorkerFactory(options) {
        const durability = globalThis.__absurdIdbDurability ?? "default";
        return new Worker(new URL("./idb-worker.js?durability=" + durability, import.meta.url), options);
      }`,
      loader: "js",
    }));
  },
};
const common = {
  bundle: true,
  logLevel: "warning",
  define: { "process.env.NODE_ENV": '"production"', "process.env.PERF_BUILD": "false" },
  // sql.js's node paths (never taken in a browser).
  external: ["fs", "path", "crypto"],
};
await build({
  ...common,
  entryPoints: [join(here, "absurd/main.js")],
  outfile: join(out, "main.js"),
  format: "esm",
  plugins: [factoryPlugin],
});
await build({
  ...common,
  entryPoints: [join(here, "absurd/worker.js")],
  outfile: join(out, "worker.js"),
  format: "iife",
});
copyFileSync(require.resolve("@jlongster/sql.js/dist/sql-wasm.wasm"), join(out, "sql-wasm.wasm"));
console.error(`absurd-sql bench built in ${out}`);
