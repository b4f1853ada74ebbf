// Two tabs of one browser share a database: one leads (stores it in IndexedDB), the other
// follows. Each round: both open it, the time for a commit in one tab to show in the other
// is measured, both write at once (a flush every few commits), then the leading tab's
// renderer is crashed mid-work; the other must take over (its flushes keep succeeding),
// and a third tab must find every record either tab had flushed, each exactly once.
//
//   examples/web/build.sh && node examples/web/tests/tabs.mjs
//
// ROUNDS sets the rounds (default 3); SEED replays a run.
import { launch, profile, rng, sleep } from "./browser.mjs";
import { serve } from "./serve.mjs";

const rounds = Number(process.env.ROUNDS ?? 3);
const seed = Number(process.env.SEED ?? Date.now());
const random = rng(seed);
console.log(`tabs test: SEED=${seed} ROUNDS=${rounds}`);

const server = await serve(new URL("../www/", import.meta.url).pathname);
const url = `http://127.0.0.1:${server.address().port}/harness.html`;
let browser = null;
let failed = false;
const latencies = [];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function tab() {
  const p = await browser.newPage();
  p.on("pageerror", (e) => console.log(`page error: ${e}`));
  p.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warn") console.log(`console ${m.type()}: ${m.text()}`);
  });
  await p.goto(url);
  await p.waitForFunction("window.ready === true", { timeout: 60_000 });
  return p;
}

// Crashes the tab's renderer (DevTools Page.crash). The command is never answered (the
// session dies with the tab): not awaited, or it waits for puppeteer's 180 s timeout.
async function crash(p) {
  const crashed = new Promise((ok) => p.once("error", ok));
  const cdp = await p.target().createCDPSession();
  cdp.send("Page.crash").catch(() => {});
  await Promise.race([crashed, sleep(5000)]);
}

const open = (p, name) =>
  p.evaluate(async (name) => {
    window.s = await window.Shared.open(name);
    return "opened";
  }, name);

// Starts writing records of `writer` in the page: a flush after every few; window.acked is
// how many were flushed (all of 0..acked are stored).
const work = (p, writer, s) =>
  p.evaluate(
    (writer, s) => {
      let x = s | 1;
      const r = (n) => {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        return (x >>> 0) % n;
      };
      window.acked = 0;
      window.made = 0;
      window.stop = false;
      window.error = null;
      window.done = (async () => {
        try {
          while (!window.stop) {
            const n = window.made;
            window.s.write(writer, n, 50 + r(20_000));
            window.made = n + 1;
            if (r(4) === 0) {
              await window.s.flush();
              window.acked = n + 1;
            } else {
              await new Promise((res) => setTimeout(res, r(4)));
            }
          }
          await window.s.flush();
          window.acked = window.made;
        } catch (e) {
          window.error = `${e.message ?? e}`;
        }
      })();
    },
    writer,
    s,
  );

try {
  for (let round = 0; round < rounds; round++) {
    browser = await launch(profile());
    const name = `tabs-${round}`;
    const a = await tab();
    await open(a, name);
    const b = await tab();
    await open(b, name);
    // A commit in one tab, seen in the other: 10 times each way.
    for (let i = 0; i < 20; i++) {
      const [from, to, writer] = i % 2 === 0 ? [a, b, 9] : [b, a, 8];
      const waiting = to.evaluate(
        (writer, n) =>
          new Promise((ok) => {
            const t0 = performance.now();
            const poll = () => (window.s.has(writer, n) ? ok(performance.now() - t0) : setTimeout(poll, 0));
            poll();
          }),
        writer,
        i,
      );
      await from.evaluate((writer, n) => window.s.write(writer, n, 100), writer, i);
      latencies.push(await waiting);
    }
    await work(a, 1, random(1 << 30));
    await work(b, 2, random(1 << 30));
    await sleep(200 + random(800));
    const before = await a.evaluate(() => ({ acked: window.acked, made: window.made, error: window.error }));
    await crash(a);
    // B goes on alone: it must take over and keep storing its records.
    const ackedAtCrash = await b.evaluate(() => window.acked);
    await sleep(1500);
    const bState = await b.evaluate(async () => {
      window.stop = true;
      await window.done;
      return { acked: window.acked, made: window.made, error: window.error };
    });
    if (bState.error) throw new Error(`round ${round}: tab B failed after the crash: ${bState.error}`);
    if (!(bState.acked > ackedAtCrash)) {
      throw new Error(`round ${round}: tab B stored nothing after the leader crashed (${ackedAtCrash} → ${bState.acked})`);
    }
    const c = await tab();
    await open(c, name);
    const check = await c.evaluate(
      (a, b) => ({
        missingA: window.s.missing(1, a),
        missingB: window.s.missing(2, b),
        countA: window.s.count(1),
        countB: window.s.count(2),
      }),
      before.acked,
      bState.acked,
    );
    const bCounts = await b.evaluate(() => ({ countA: window.s.count(1), countB: window.s.count(2) }));
    if (check.missingA || check.missingB) {
      throw new Error(`round ${round}: flushed records lost: ${JSON.stringify({ before, bState, check })}`);
    }
    if (bCounts.countA !== check.countA || bCounts.countB !== check.countB) {
      throw new Error(`round ${round}: B and a new tab differ: ${JSON.stringify({ bCounts, check })}`);
    }
    console.log(
      `round ${round}: leader crashed with ${before.acked}/${before.made} of its records flushed; the follower took over and flushed ${bState.acked}; a new tab has ${check.countA} + ${check.countB}, every flushed one`,
    );
    await browser.close().catch(() => {});
    browser = null;
  }
  console.log(
    `tabs test: ${rounds} leader crashes, nothing flushed was lost; a commit shows in the other tab after ${median(latencies).toFixed(1)} ms (median of ${latencies.length}, max ${Math.max(...latencies).toFixed(1)} ms)`,
  );
} catch (e) {
  failed = true;
  console.error(`tabs test FAILED (SEED=${seed}): ${e.stack ?? e}`);
} finally {
  await browser?.close().catch(() => {});
  server.close();
}
process.exit(failed ? 1 : 0);
