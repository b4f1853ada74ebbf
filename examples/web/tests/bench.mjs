// Runs www/bench.html (rekord beside raw IndexedDB, same page, same run) in headless
// Chromium and prints a Markdown table of medians and ratios.
//
//   examples/web/build.sh && node examples/web/tests/bench.mjs
//
// RELAXED=1 measures both sides with relaxed IndexedDB durability; RUNS sets repetitions.
import { launch } from "./browser.mjs";
import { serve } from "./serve.mjs";

const relaxed = process.env.RELAXED === "1" ? 1 : 0;
const runs = Number(process.env.RUNS ?? 5);
// ONLY=open MB=100: only the open of a database of that size (and the memory it takes).
const extra = process.env.ONLY ? `&only=${process.env.ONLY}&mb=${process.env.MB ?? 10}` : "";
const server = await serve(new URL("../www/", import.meta.url).pathname);
const browser = await launch();
try {
  if (process.env.ONLY === "open") {
    const fill = await browser.newPage();
    await fill.goto(`http://127.0.0.1:${server.address().port}/bench.html?relaxed=${relaxed}&runs=1&only=fill&mb=${process.env.MB ?? 10}`);
    await fill.waitForFunction("window.results", { timeout: 900_000, polling: 500 });
    await fill.close();
  }
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e}`));
  await page.goto(`http://127.0.0.1:${server.address().port}/bench.html?relaxed=${relaxed}&runs=${runs}${extra}`);
  await page.waitForFunction("window.results", { timeout: 900_000, polling: 500 });
  const results = await page.evaluate(() => window.results);
  const version = await browser.version();
  console.log(`${version}, ${relaxed ? "relaxed" : "strict"} durability on both sides, medians of ${runs} runs (200 for one record)\n`);
  console.log("| work | rekord | raw IndexedDB | rekord's speed-up |");
  console.log("|---|---:|---:|---:|");
  for (const r of results) {
    if (r.value !== undefined) continue;
    console.log(`| ${r.name} | ${r.rekord.toFixed(2)} ms | ${r.raw.toFixed(2)} ms | ${r.ratio.toFixed(2)}x |`);
  }
  for (const r of results) {
    if (r.value !== undefined) console.log(`\n${r.name}: ${(r.value / 1048576).toFixed(1)} MiB`);
  }
} finally {
  await browser.close();
  server.close();
}
