// Runs www/bench.html (rekord beside raw IndexedDB and absurd-sql, same page, same run) in
// headless Chromium and prints a Markdown table of medians and ratios.
//
//   examples/web/build.sh && node examples/web/tests/bench.mjs
//
// RELAXED=1 measures every side with relaxed IndexedDB durability; RUNS sets repetitions.
// absurd-sql is built into www/absurd/ by build-absurd.mjs when missing there (rebuild:
// node examples/web/tests/build-absurd.mjs); ABSURD=0 leaves it out, ABSURD_DURABILITY=default
// leaves its IndexedDB transactions the browser's default durability, as absurd-sql ships.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { launch } from "./browser.mjs";
import { serve } from "./serve.mjs";

const relaxed = process.env.RELAXED === "1" ? 1 : 0;
const runs = Number(process.env.RUNS ?? 5);
const www = new URL("../www/", import.meta.url).pathname;
// ONLY=open MB=100: only the open of a database of that size (and the memory it takes);
// ONLY=grow MB=64: the memory a database grown to that size in the page takes; ONLY=batch:
// only the 10,000-record batch (beside absurd-sql too).
const extra = process.env.ONLY ? `&only=${process.env.ONLY}&mb=${process.env.MB ?? 10}` : "";
const absurd = process.env.ABSURD !== "0" && (!process.env.ONLY || process.env.ONLY === "batch");
const absurdParams = !absurd ? "&absurd=0"
  : process.env.ABSURD_DURABILITY ? `&absurd_durability=${process.env.ABSURD_DURABILITY}` : "";
if (absurd && !["main.js", "worker.js", "idb-worker.js", "sql-wasm.wasm"].every((f) => existsSync(`${www}absurd/${f}`))) {
  execFileSync(process.execPath, [new URL("build-absurd.mjs", import.meta.url).pathname], { stdio: "inherit" });
}
const server = await serve(www);
const browser = await launch();
try {
  if (process.env.ONLY === "open") {
    const fill = await browser.newPage();
    await fill.goto(`http://127.0.0.1:${server.address().port}/bench.html?relaxed=${relaxed}&runs=1&only=fill&mb=${process.env.MB ?? 10}`);
    await fill.waitForFunction("window.results", { timeout: 900_000, polling: 500 });
    await fill.close();
  }
  const page = await browser.newPage();
  // A page error ends the wait at once (not after the 15 minutes).
  const failed = new Promise((_, err) => page.on("pageerror", (e) => err(new Error(`page error: ${e.message ?? e}`))));
  await page.goto(`http://127.0.0.1:${server.address().port}/bench.html?relaxed=${relaxed}&runs=${runs}${extra}${absurdParams}`);
  await Promise.race([page.waitForFunction("window.results", { timeout: 900_000, polling: 500 }), failed]);
  const results = await page.evaluate(() => window.results);
  const version = await browser.version();
  const durability = relaxed ? "relaxed" : "strict";
  const absurdDurability = !absurd ? "" : process.env.ABSURD_DURABILITY === "default"
    ? ", absurd-sql with the browser's default" : process.env.ABSURD_DURABILITY ? `, absurd-sql ${process.env.ABSURD_DURABILITY}` : "";
  console.log(`${version}, ${durability} durability${absurdDurability ? " on rekord and raw IndexedDB" + absurdDurability : " on every side"}, medians of ${runs} runs (200 for one record)`);
  console.log("vs raw, vs absurd-sql: that side's time over rekord's (above 1: rekord is faster)\n");
  console.log("| work | rekord | raw IndexedDB | absurd-sql | vs raw | vs absurd-sql |");
  console.log("|---|---:|---:|---:|---:|---:|");
  const ms = (x) => (x == null ? "—" : `${x.toFixed(2)} ms`);
  const ratio = (x) => (x == null ? "—" : `${x.toFixed(2)}x`);
  for (const r of results) {
    if (r.value !== undefined) continue;
    console.log(`| ${r.name} | ${ms(r.rekord)} | ${ms(r.raw)} | ${ms(r.absurd)} | ${ratio(r.ratio)} | ${ratio(r.absurdRatio)} |`);
  }
  for (const r of results) {
    if (r.value !== undefined) console.log(`\n${r.name}: ${(r.value / 1048576).toFixed(1)} MiB`);
  }
} finally {
  await browser.close();
  server.close();
}
