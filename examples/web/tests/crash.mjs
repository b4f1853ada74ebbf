// Crashes the tab in the middle of commits and flushes, ROUNDS times (default 20): even
// rounds crash the renderer (DevTools Page.crash), odd rounds SIGKILL the whole browser.
// Each round starts Chromium again on the same profile, and checks after every reopen that every flushed commit is there and that
// the database holds exactly the state of one commit (never a torn or mixed one).
//
//   examples/web/build.sh && node examples/web/tests/crash.mjs
//
// SEED replays a run; RELAXED=1 uses relaxed IndexedDB durability.
import { launch, profile, rng, sleep } from "./browser.mjs";
import { serve } from "./serve.mjs";
import { writeFileSync } from "node:fs";

const rounds = Number(process.env.ROUNDS ?? 20);
const seed = Number(process.env.SEED ?? Date.now());
const relaxed = process.env.RELAXED === "1";
const random = rng(seed);
console.log(`crash test: SEED=${seed} ROUNDS=${rounds} RELAXED=${relaxed ? 1 : 0}`);

const server = await serve(new URL("../www/", import.meta.url).pathname);
const url = `http://127.0.0.1:${server.address().port}/harness.html`;
const dir = profile();
let browser = null;
let failed = false;
try {
  let flushed = 0; // commits known to be flushed before a crash
  let inFlush = 0; // crashes that hit while a flush was in flight
  let lost = 0; // commits made but not flushed when the tab crashed (allowed to be lost)
  for (let round = 0; round < rounds; round++) {
    browser = await launch(dir);
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.log(`page error: ${e}`));
    await page.goto(url);
    await page.waitForFunction("window.ready === true", { timeout: 60_000 });
    const n = await page.evaluate(
      async (relaxed) => {
        window.h = await window.Harness.open("crash", relaxed, 100);
        return window.h.check();
      },
      relaxed,
    );
    if (n < flushed) {
      throw new Error(`round ${round}: ${n} commits after reopening, but ${flushed} were flushed`);
    }
    // Work until the crash: commits of 100 B to 60 KB (one to four blocks), an explicit
    // flush every few, the automatic policy (100 ms) in between.
    await page.evaluate((s) => {
      let x = s | 1;
      const r = (n) => {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        return (x >>> 0) % n;
      };
      window.flushed = 0;
      window.made = 0;
      window.inFlush = false;
      (async () => {
        for (;;) {
          const seq = window.h.commit(100 + r(60_000));
          window.made = seq + 1;
          if (r(5) === 0) {
            window.inFlush = true;
            await window.h.flush();
            window.inFlush = false;
            window.flushed = seq + 1;
          } else {
            await new Promise((res) => setTimeout(res, r(3)));
          }
        }
      })();
    }, random(1 << 30));
    await sleep(30 + random(400));
    const state = await page.evaluate(() => ({
      flushed: window.flushed,
      made: window.made,
      inFlush: window.inFlush,
    }));
    if (round % 2 === 0) {
      // Never answered (the session dies with the tab): not awaited, or it waits for
      // puppeteer's 180 s protocol timeout (what made rounds take minutes before).
      const crashed = new Promise((ok) => page.once("error", ok));
      const cdp = await page.target().createCDPSession();
      cdp.send("Page.crash").catch(() => {});
      await Promise.race([crashed, sleep(5000)]);
      const proc = browser.process();
      await browser.close().catch(() => {});
      // The next round starts Chromium on the same profile: this one must be gone first.
      // (Once in CI a reopen after a renderer crash found no database at all, SEED
      // 1796039641055 round 7, not reproduced with the same seed; a browser still closing on
      // the profile is the likely cause.)
      if (proc && proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGKILL");
        await exited;
      }
    } else {
      browser.process().kill("SIGKILL");
      await new Promise((r) => browser.process().once("exit", r));
    }
    browser = null;
    flushed = Math.max(flushed, state.flushed);
    if (state.inFlush) inFlush++;
    lost += state.made - state.flushed;
    console.log(
      `round ${round}: reopened with ${n} commits; made ${state.made}, flushed ${state.flushed}${state.inFlush ? ", crashed during a flush" : ""}`,
    );
  }
  // A last reopen, checked the same way.
  browser = await launch(dir);
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction("window.ready === true", { timeout: 60_000 });
  const n = await page.evaluate(async (relaxed) => {
    window.h = await window.Harness.open("crash", relaxed, 100);
    return window.h.check();
  }, relaxed);
  if (n < flushed) throw new Error(`final: ${n} commits, but ${flushed} were flushed`);
  // EXPORT=path: the final database as a file's bytes, for a native program to open
  // (db/tests/browser_image.rs with REKORD_BROWSER_EXPORT=path).
  if (process.env.EXPORT) {
    // In 8 MiB pieces, as base64: one array of ~100 M numbers is more than the protocol
    // carries ("Invalid array length" once the database grew past ~60 MB).
    const len = await page.evaluate(() => {
      window.exported = window.h.export();
      return window.exported.length;
    });
    const parts = [];
    for (let off = 0; off < len; off += 8 << 20) {
      const b64 = await page.evaluate((off) => {
        const piece = window.exported.subarray(off, off + (8 << 20));
        let text = "";
        for (let i = 0; i < piece.length; i += 0x8000) {
          text += String.fromCharCode.apply(null, piece.subarray(i, i + 0x8000));
        }
        return btoa(text);
      }, off);
      parts.push(Buffer.from(b64, "base64"));
    }
    const bytes = Buffer.concat(parts);
    writeFileSync(process.env.EXPORT, bytes);
    console.log(`exported ${bytes.length} bytes to ${process.env.EXPORT}`);
  }
  console.log(
    `crash test: ${rounds} crashes (${inFlush} during an explicit flush, ${lost} unflushed commits at crash time), every reopen a committed state with every flushed commit; ${n} commits at the end`,
  );
} catch (e) {
  failed = true;
  console.error(`crash test FAILED (SEED=${seed}): ${e.stack ?? e}`);
} finally {
  await browser?.close().catch(() => {});
  server.close();
}
process.exit(failed ? 1 : 0);
