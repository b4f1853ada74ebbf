// Launches Debian's Chromium headless for the drivers, with a throwaway profile.
import puppeteer from "puppeteer-core";
import { mkdtempSync } from "node:fs";
import { join } from "node:path";

/** A fresh profile directory (IndexedDB lives there; reuse it to reopen the same data). */
export function profile() {
  return mkdtempSync(join(process.env.TMPDIR ?? "/tmp", "rekord-chrome-"));
}

/** Starts Chromium on `userDataDir`; `log`: Chromium's own log in the profile
 * (chrome_debug.log, also with CHROME_LOG=1), which says why it dropped a site's storage. */
export async function launch(userDataDir = profile(), { log = false } = {}) {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    dumpio: process.env.DUMPIO === "1",
    userDataDir,
    // As in db/webdriver.json, plus the services that made a start wait ~3 minutes now and
    // then (a fresh profile, or one a killed browser left) on this offline machine.
    args: [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--no-default-browser-check",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-default-apps",
      "--disable-breakpad",
      "--disable-features=OptimizationGuideModelDownloading,OptimizationHintsFetching,OptimizationTargetPrediction,OnDeviceModelPerformanceParams,AutofillServerCommunication,MediaRouter,Translate",
      ...(log || process.env.CHROME_LOG === "1" ? ["--enable-logging", "--v=0"] : []),
      // CHROME_ARGS: more flags, space-separated (a test trusting its own CA:
      // --ignore-certificate-errors-spki-list=...).
      ...(process.env.CHROME_ARGS ? process.env.CHROME_ARGS.split(" ").filter((a) => a) : []),
    ],
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A seeded pseudo-random generator (xorshift), so a failing run can be replayed. */
export function rng(seed) {
  let x = BigInt(seed) | 1n;
  return (n) => {
    x ^= (x << 13n) & 0xffffffffffffffffn;
    x ^= x >> 7n;
    x ^= (x << 17n) & 0xffffffffffffffffn;
    return Number(x % BigInt(n));
  };
}
