// The page's side of the absurd-sql bench (bundled to www/absurd/main.js by
// tests/build-absurd.mjs): starts the bench worker and absurd-sql's main-thread backend,
// which spawns absurd-sql's IndexedDB worker for each database file the worker opens.
import { initBackend } from "absurd-sql/dist/indexeddb-main-thread";

/** Starts the worker; `durability` goes to absurd-sql's IndexedDB transactions
 * ("strict", "relaxed", or "default": none given, as absurd-sql ships). */
export function startAbsurd(durability = "default") {
  if (!globalThis.crossOriginIsolated) {
    throw new Error("absurd-sql needs SharedArrayBuffer: serve the page with COOP same-origin and COEP require-corp");
  }
  globalThis.__absurdIdbDurability = durability;
  const worker = new Worker(new URL("./worker.js", import.meta.url));
  initBackend(worker);
  const pending = new Map();
  let next = 1;
  worker.addEventListener("message", (e) => {
    const p = pending.get(e.data?.id);
    if (!p) return;
    pending.delete(e.data.id);
    if (e.data.error) p.err(new Error(`absurd-sql worker: ${e.data.error}`));
    else p.ok(e.data.result);
  });
  worker.addEventListener("error", (e) => {
    for (const p of pending.values()) p.err(new Error(`absurd-sql worker: ${e.message}`));
    pending.clear();
  });
  return {
    /** Runs one workload in the worker; resolves to its timings (ms). */
    run(cmd, args = {}) {
      const id = next++;
      return new Promise((ok, err) => {
        pending.set(id, { ok, err });
        worker.postMessage({ id, cmd, args });
      });
    },
    terminate: () => worker.terminate(),
  };
}
