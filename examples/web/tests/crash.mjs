// Crashes the tab in the middle of commits and flushes, ROUNDS times (default 20): even
// rounds crash the renderer (DevTools Page.crash), odd rounds SIGKILL the whole browser.
// Each round starts Chromium again on the same profile, and checks after every reopen that every flushed commit is there and that
// the database holds exactly the state of one commit (never a torn or mixed one).
//
//   examples/web/build.sh && node examples/web/tests/crash.mjs
//
// SEED replays a run; RELAXED=1 uses relaxed IndexedDB durability. When Chromium finds the
// site's IndexedDB damaged on start, it deletes it: the reopen must then fail with
// rekord's StoreLost (checked against Chromium's log), and the run starts again.
import { launch, profile, rng, sleep } from "./browser.mjs";
import { serve } from "./serve.mjs";
import { copyFileSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

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
// What the profile holds of the site's IndexedDB before each launch (file: size), to tell
// apart on a failure a database Chromium dropped from one rekord did not find.
const stored = () => {
  const root = join(dir, "Default", "IndexedDB");
  const out = [];
  const walk = (d) => {
    for (const e of existsSync(d) ? readdirSync(d, { withFileTypes: true }) : []) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(`${p.slice(root.length + 1)}: ${statSync(p).size}`);
    }
  };
  walk(root);
  return out.length ? out.join("\n  ") : "(nothing)";
};
let before = "";
// Rounds whose reopen found that Chromium had deleted the site's IndexedDB (it does when it
// finds it damaged on start: "IndexedDB recovering from a corrupted (and deleted)
// database" in its log). rekord must refuse to open it then (Error::StoreLost), never open
// an empty database in its place; the driver acknowledges the loss and starts again.
const dropped = [];
// Opens the harness database in `page` and checks it; returns its number of commits.
const reopen = async (page, round) => {
  const open = () =>
    page.evaluate(async (relaxed) => {
      try {
        window.h = await window.Harness.open("crash", relaxed, 100);
      } catch (e) {
        return { error: String(e?.message ?? e) };
      }
      return { n: window.h.check() };
    }, relaxed);
  let opened = await open();
  if (opened.error !== undefined) {
    if (!opened.error.includes("IndexedDB storage is gone")) {
      throw new Error(`round ${round}: the reopen failed: ${opened.error}`);
    }
    const log = join(dir, "chrome_debug.log");
    const said = existsSync(log) ? readFileSync(log, "utf8") : "";
    if (!said.includes("recovering from a corrupted (and deleted) database")) {
      throw new Error(
        `round ${round}: rekord says the browser dropped the database, Chromium's log does not: ${opened.error}\n` +
          `its IndexedDB before this launch:\n  ${before}\nand now:\n  ${stored()}`,
      );
    }
    console.log(`round ${round}: Chromium deleted the damaged IndexedDB on start, rekord refused it as lost; starting again`);
    dropped.push(round);
    await page.evaluate(() => window.Harness.delete("crash"));
    opened = await open();
    if (opened.error !== undefined) throw new Error(`round ${round}: reopen after delete: ${opened.error}`);
  }
  return opened.n;
};
// CHROME_LOG=1 keeps Chromium's log of every round (round-N.log in the profile).
const keepLog = (round) => {
  const log = join(dir, "chrome_debug.log");
  if (process.env.CHROME_LOG === "1" && existsSync(log)) copyFileSync(log, join(dir, `round-${round}.log`));
};
try {
  let flushed = 0; // commits known to be flushed before a crash
  let inFlush = 0; // crashes that hit while a flush was in flight
  let lost = 0; // commits made but not flushed when the tab crashed (allowed to be lost)
  for (let round = 0; round < rounds; round++) {
    before = stored();
    browser = await launch(dir, { log: true });
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.log(`page error: ${e}`));
    await page.goto(url);
    await page.waitForFunction("window.ready === true", { timeout: 60_000 });
    const n = await reopen(page, round);
    if (n === 0 && flushed > 0 && dropped.at(-1) === round) {
      flushed = 0;
    }
    if (n < flushed) {
      throw new Error(
        `round ${round}: ${n} commits after reopening, but ${flushed} were flushed\n` +
          `profile ${dir}; its IndexedDB before this launch:\n  ${before}\nand now:\n  ${stored()}`,
      );
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
    let killedClosing = false;
    if (round % 2 === 0) {
      // Never answered (the session dies with the tab): not awaited, or it waits for
      // puppeteer's 180 s protocol timeout (what made rounds take minutes before).
      const crashed = new Promise((ok) => page.once("error", ok));
      const cdp = await page.target().createCDPSession();
      cdp.send("Page.crash").catch(() => {});
      await Promise.race([crashed, sleep(5000)]);
      const proc = browser.process();
      await browser.close().catch(() => {});
      // The next round starts Chromium on the same profile: this one must be gone first
      // (killed if closing did not end it).
      if (proc && proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGKILL");
        await exited;
        killedClosing = true;
      }
    } else {
      browser.process().kill("SIGKILL");
      await new Promise((r) => browser.process().once("exit", r));
    }
    browser = null;
    keepLog(round);
    flushed = Math.max(flushed, state.flushed);
    if (state.inFlush) inFlush++;
    lost += state.made - state.flushed;
    console.log(
      `round ${round}: reopened with ${n} commits; made ${state.made}, flushed ${state.flushed}${state.inFlush ? ", crashed during a flush" : ""}${killedClosing ? ", killed while closing" : ""}`,
    );
  }
  // A last reopen, checked the same way.
  browser = await launch(dir, { log: true });
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction("window.ready === true", { timeout: 60_000 });
  const n = await reopen(page, "final");
  if (n === 0 && flushed > 0 && dropped.at(-1) === "final") flushed = 0;
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
    `crash test: ${rounds} crashes (${inFlush} during an explicit flush, ${lost} unflushed commits at crash time), every reopen a committed state with every flushed commit; ${n} commits at the end` +
      (dropped.length ? `; Chromium deleted its damaged IndexedDB at ${dropped.length} reopen(s) (rounds ${dropped.join(", ")}), refused by rekord as lost each time` : ""),
  );
} catch (e) {
  failed = true;
  console.error(`crash test FAILED (SEED=${seed}): ${e.stack ?? e}`);
} finally {
  await browser?.close().catch(() => {});
  server.close();
}
process.exit(failed ? 1 : 0);
