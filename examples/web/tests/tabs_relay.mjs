// Relay for the red-team tests of tabs sharing a synced database (server/tests/common/tabs.rs): like relay.mjs, but with any number of
// tabs of the main origin. One JSON command per line on stdin, one answer per line.
//   {"op": "new", "tab": i}            opens tab i at $PAGE (default synced.html; or at "page"),
//                                      waits for window.ready
//   {"op": "eval", "tab": i, "js": ..} runs an async function body in tab i
//   {"op": "crash", "tab": i}          crashes tab i's renderer
//   {"op": "close_tab", "tab": i}      closes tab i
//   {"op": "reload", "tab": i}         reloads tab i
//   {"op": "front", "tab": i}          brings tab i to the front (visible)
//   {"op": "evals", "tabs": [i..], "js": ..} runs the body in the tabs at once (answers the list)
//   {"op": "quit"}
import { createInterface } from "node:readline";
import { launch, profile } from "./browser.mjs";
import { serve } from "./serve.mjs";

const root = new URL("../www/", import.meta.url).pathname;
const main = await serve(root, Number(process.env.PAGE_PORT ?? 0));
const origin = `http://127.0.0.1:${main.address().port}`;
const browser = await launch(profile());
const tabs = [];
async function openTab(i, page) {
  const p = await browser.newPage();
  p.on("pageerror", (e) => console.error(`tab ${i} error: ${e}`));
  p.on("console", (m) => console.error(`tab ${i} console ${m.type()}: ${m.text()}`));
  await p.goto(`${origin}/${page ?? process.env.PAGE ?? "synced.html"}`);
  await p.waitForFunction("window.ready === true", { timeout: 60_000, polling: 50 });
  tabs[i] = p;
}
await openTab(0);
const answer = (o) => process.stdout.write(JSON.stringify(o) + "\n");
answer({ ok: origin });
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  try {
    const cmd = JSON.parse(line);
    const t = cmd.tab ?? 0;
    if (cmd.op === "new") {
      await openTab(t, cmd.page);
      answer({ ok: null });
    } else if (cmd.op === "eval") {
      const v = await tabs[t].evaluate(`(async () => { ${cmd.js} })()`);
      answer({ ok: v ?? null });
    } else if (cmd.op === "crash") {
      const cdp = await tabs[t].createCDPSession();
      cdp.send("Page.crash").catch(() => {});
      await new Promise((r) => setTimeout(r, 100));
      answer({ ok: null });
    } else if (cmd.op === "close_tab") {
      await tabs[t].close({ runBeforeUnload: false });
      answer({ ok: null });
    } else if (cmd.op === "reload") {
      await tabs[t].reload();
      await tabs[t].waitForFunction("window.ready === true", { timeout: 60_000, polling: 50 });
      answer({ ok: null });
    } else if (cmd.op === "front") {
      await tabs[t].bringToFront();
      answer({ ok: null });
    } else if (cmd.op === "evals") {
      const vs = await Promise.all(
        cmd.tabs.map((t) => tabs[t].evaluate(`(async () => { ${cmd.js} })()`).catch((e) => `ERR ${e?.message ?? e}`)),
      );
      answer({ ok: vs });
    } else if (cmd.op === "new_many") {
      await Promise.all(cmd.tabs.map((t) => openTab(t)));
      answer({ ok: null });
    } else if (cmd.op === "quit") {
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
process.exit(0);
