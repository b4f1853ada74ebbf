// The parts list (www/index.html) in two tabs: parts added and changed in one tab, the
// other tab shows them live; a screenshot of the second tab goes to docs/web-example.png.
//
//   examples/web/build.sh && node examples/web/tests/screenshot.mjs [out.png]
import { launch, profile, sleep } from "./browser.mjs";
import { serve } from "./serve.mjs";

const out = process.argv[2] ?? new URL("../../../docs/web-example.png", import.meta.url).pathname;
const server = await serve(new URL("../www/", import.meta.url).pathname);
const url = `http://127.0.0.1:${server.address().port}/index.html`;
const browser = await launch(profile());
let failed = false;
try {
  const tab = async () => {
    const p = await browser.newPage();
    await p.setViewport({ width: 720, height: 460, deviceScaleFactor: 1 });
    p.on("pageerror", (e) => console.log(`page error: ${e}`));
    p.on("error", (e) => console.log(`tab crashed: ${e}`));
    await p.goto(url);
    await p.waitForFunction("window.ready === true", { timeout: 60_000 });
    return p;
  };
  const a = await tab();
  const b = await tab();
  // Tab A adds and edits through its page (the form and the buttons; events dispatched in
  // the page: puppeteer's synthetic mouse clicks with two tabs open bring headless
  // Chromium down here).
  await a.bringToFront(); // a hidden tab draws nothing (no animation frames)
  for (const [name, qty] of [["M4 bolt, 20 mm", 120], ["M4 nut", 200], ["Bearing 608-2RS", 16], ["Drive belt GT2, 6 mm", 3]]) {
    await a.evaluate((name, qty) => {
      document.querySelector("#name").value = name;
      document.querySelector("#qty").value = qty;
      document.querySelector("#add").requestSubmit();
    }, name, String(qty));
  }
  await sleep(100);
  // Two more M4 nuts (the last row, sorted by name).
  await a.waitForFunction(() => document.querySelectorAll("#rows tr").length === 4);
  for (let i = 0; i < 2; i++) {
    await a.evaluate(() => document.querySelector("#rows tr:nth-child(4) button[data-op=inc]").click());
  }
  await b.bringToFront();
  // Tab B must show all of it, without a reload.
  await b.waitForFunction(() => document.querySelectorAll("#rows tr").length === 4 && document.body.innerText.includes("202"), { timeout: 5000 });
  await sleep(1200); // the status line: "everything stored"
  await b.screenshot({ path: out });
  const text = await b.$eval("#rows", (e) => e.innerText);
  console.log(`tab B shows:\n${text}\nscreenshot: ${out}`);
} catch (e) {
  failed = true;
  console.error(`screenshot FAILED: ${e.stack ?? e}`);
} finally {
  await browser.close().catch(() => {});
  server.close();
}
process.exit(failed ? 1 : 0);
