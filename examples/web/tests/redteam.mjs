// Red-team driver (added by a review session): two tabs of one browser open the same
// database. README: "a second tab's open is refused with Error::Locked". Uses the harness
// page as built by examples/web/build.sh.
//
//   TMPDIR=$PWD/target/chrome-tmp node examples/web/tests/redteam.mjs
import { launch, profile } from "./browser.mjs";
import { serve } from "./serve.mjs";

const server = await serve(new URL("../www/", import.meta.url).pathname);
const url = `http://127.0.0.1:${server.address().port}/harness.html`;
const browser = await launch(profile());
let failed = false;
try {
  const tab = async () => {
    const p = await browser.newPage();
    p.on("pageerror", (e) => console.log(`page error: ${e}`));
    await p.goto(url);
    await p.waitForFunction("window.ready === true", { timeout: 60_000 });
    return p;
  };
  const open = (p) =>
    p.evaluate(async () => {
      try {
        window.h = await window.Harness.open("multi", false, 100);
        return `opened, ${window.h.check()} commits`;
      } catch (e) {
        return `refused: ${e.message ?? e}`;
      }
    });
  const a = await tab();
  const b = await tab();
  console.log(`tab A: ${await open(a)}`);
  const second = await open(b);
  console.log(`tab B: ${second}`);
  if (second.startsWith("opened")) {
    failed = true;
    // Both write and flush, interleaved.
    for (let i = 0; i < 5; i++) {
      for (const [t, n] of [[a, "A"], [b, "B"]]) {
        const r = await t.evaluate(async (len) => {
          try {
            for (let j = 0; j < 20; j++) window.h.commit(len);
            await window.h.flush();
            return "ok";
          } catch (e) {
            return `error: ${e.message ?? e}`;
          }
        }, n === "A" ? 3000 : 50000);
        if (r !== "ok") console.log(`tab ${n} round ${i}: ${r}`);
      }
    }
    await a.close();
    await b.close();
    const c = await tab();
    const reopened = await open(c);
    console.log(`tab C after both flushed (A: 100 commits of 3 KB, B: 100 of 50 KB): ${reopened}`);
    if (reopened.startsWith("opened")) {
      const chk = await c.evaluate(() => {
        try { return `check: ${window.h.check()} commits`; } catch (e) { return `check failed: ${e.message ?? e}`; }
      });
      console.log(`tab C: ${chk}`);
    }
  }
} finally {
  await browser.close().catch(() => {});
  server.close();
}
console.log(failed ? "redteam: a second tab opened the same database" : "redteam: second tab refused");
process.exit(failed ? 1 : 0);
