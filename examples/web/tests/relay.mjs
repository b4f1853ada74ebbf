// Relays a native test's commands to a page of headless Chromium: the test (a Rust process,
// server/tests/browser_sync.rs) writes one JSON command per line on stdin, and reads one
// answer per line on stdout: {"ok": value} or {"err": "message"}.
//
//   {"op": "eval", "js": "<async function body>"}  runs it in the page (`return` a value)
//   {"op": "reload"}                                reloads the page (same profile, same data)
//   {"op": "goto", "origin": "main" | "other"}      opens synced.html from the other origin
//   {"op": "eval2", "js": "..."}                    runs it in a second tab of the main origin
//   {"op": "close_first"}                           closes the first tab (the second stays)
//   {"op": "crash_first"}                           crashes the first tab's renderer
//   {"op": "close"}                                 closes the browser and exits
//
// PAGE_PORT and OTHER_PORT are the two origins' ports (the server allows only the first).
import { createInterface } from "node:readline";
import { launch, profile } from "./browser.mjs";
import { serve } from "./serve.mjs";

const root = new URL("../www/", import.meta.url).pathname;
const main = await serve(root, Number(process.env.PAGE_PORT ?? 0));
const other = await serve(root, Number(process.env.OTHER_PORT ?? 0));
const origins = {
  main: `http://127.0.0.1:${main.address().port}`,
  other: `http://127.0.0.1:${other.address().port}`,
};
const browser = await launch(profile());
const page = await browser.newPage();
page.on("pageerror", (e) => console.error(`page error: ${e}`));
page.on("console", (m) => console.error(`console ${m.type()}: ${m.text()}`));

let second = null;
async function secondTab() {
  if (!second) {
    second = await browser.newPage();
    second.on("pageerror", (e) => console.error(`second tab error: ${e}`));
    await second.goto(`${origins.main}/synced.html`);
    await second.waitForFunction("window.ready === true", { timeout: 60_000, polling: 50 });
  }
  return second;
}

// (Polled by time, not by animation frame: a tab behind another gets no frames.)
async function open(origin) {
  await page.bringToFront();
  await page.goto(`${origins[origin]}/synced.html`);
  await page.waitForFunction("window.ready === true", { timeout: 60_000, polling: 50 });
}
await open("main");
const answer = (o) => process.stdout.write(JSON.stringify(o) + "\n");
answer({ ok: origins });

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
    if (cmd.op === "eval") {
      const value = await page.evaluate(`(async () => { ${cmd.js} })()`);
      answer({ ok: value ?? null });
    } else if (cmd.op === "eval2") {
      const tab = await secondTab();
      const value = await tab.evaluate(`(async () => { ${cmd.js} })()`);
      answer({ ok: value ?? null });
    } else if (cmd.op === "close_first") {
      await page.close({ runBeforeUnload: false });
      answer({ ok: null });
    } else if (cmd.op === "crash_first") {
      // (Not awaited: a crashed page never answers.)
      const cdp = await page.createCDPSession();
      cdp.send("Page.crash").catch(() => {});
      await new Promise((r) => setTimeout(r, 100));
      answer({ ok: null });
    } else if (cmd.op === "reload") {
      await page.reload();
      await page.waitForFunction("window.ready === true", { timeout: 60_000, polling: 50 });
      answer({ ok: null });
    } else if (cmd.op === "goto") {
      await open(cmd.origin);
      answer({ ok: null });
    } else if (cmd.op === "close") {
      answer({ ok: null });
      break;
    } else {
      answer({ err: `unknown op ${cmd.op}` });
    }
  } catch (e) {
    answer({ err: String(e?.message ?? e) });
  }
}
await browser.close();
main.close();
other.close();
process.exit(0);
