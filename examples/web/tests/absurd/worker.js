// The absurd-sql side of www/bench.html, in a worker as absurd-sql requires (bundled to
// www/absurd/worker.js by tests/build-absurd.mjs). The same four workloads as the page's
// rekord and raw IndexedDB sides, with SQL, timed here with performance.now().
//
// "Stored": absurd-sql returns from COMMIT once its IndexedDB worker has called commit()
// on the readwrite transaction, not when IndexedDB has committed it (handleUnlock downgrades
// to a readonly transaction and waits on that one). So each write is timed until a readonly
// transaction from a second IndexedDB connection to the same database, created after
// COMMIT returned, reads block 0 with the new file change counter (SQLite bumps it at
// every write transaction): IndexedDB starts that transaction only once the readwrite one
// before it has finished committing (with its durability), and it sees the new bytes.
import initSqlJs from "@jlongster/sql.js";
import { SQLiteFS } from "absurd-sql";
import IndexedDBBackend from "absurd-sql/dist/indexeddb-backend";

const NOTE = "n".repeat(180);
const ready = (async () => {
  const SQL = await initSqlJs({ locateFile: (file) => file });
  const fs = new SQLiteFS(SQL.FS, new IndexedDBBackend());
  SQL.register_for_idb(fs);
  SQL.FS.mkdir("/sql");
  SQL.FS.mount(fs, {}, "/sql");
  return SQL;
})();
let SQL;

const req = (r) => new Promise((ok, err) => { r.onsuccess = () => ok(r.result); r.onerror = () => err(r.error); });
const fresh = (p) => `${p}-${Math.random().toString(36).slice(2)}.sqlite`;
// absurd-sql's IndexedDB database for /sql/<file>: its name (SQLiteFS hands the backend
// the file's name in its folder; FileOps.getStoreName replaces any "/" with "-").
const idbName = (file) => file.replace(/\//g, "-");

/** Opens (creating if need be) /sql/<file> as absurd-sql's README advises. */
function open(file) {
  const db = new SQL.Database(`/sql/${file}`, { filename: true });
  db.exec("PRAGMA page_size=8192; PRAGMA journal_mode=MEMORY;");
  return db;
}
function create(file) {
  const db = open(file);
  db.exec("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, note TEXT)");
  return db;
}

/** A second IndexedDB connection to the database absurd-sql keeps /sql/<file> in. */
async function watcher(file) {
  const r = indexedDB.open(idbName(file), 2);
  // (As absurd-sql's loadDb; it has made the database before we get here.)
  r.onupgradeneeded = () => { if (!r.result.objectStoreNames.contains("data")) r.result.createObjectStore("data"); };
  const conn = await req(r);
  const counter = async () => {
    const t = conn.transaction(["data"], "readonly");
    const get = t.objectStore("data").get(0);
    // Commit now: left to auto-commit, it would end only when this thread's task does, and
    // the next statement blocks this thread until absurd-sql's readwrite transaction (which
    // waits for this one) is done.
    t.commit();
    const block = await req(get);
    return block ? new DataView(block.buffer ?? block, block.byteOffset ?? 0).getUint32(24) : -1;
  };
  let last = await counter();
  return {
    /** Resolves once this connection sees a write transaction committed after the last. */
    async stored() {
      for (let tries = 0; ; tries++) {
        const c = await counter();
        if (c !== last) { last = c; return; }
        if (tries > 10000) throw new Error(`${file}: no committed write seen (change counter ${c})`);
      }
    },
    close: () => conn.close(),
  };
}

function insertAll(db, from, n) {
  const ins = db.prepare("INSERT INTO items VALUES (?, ?, ?, ?)");
  db.exec("BEGIN");
  for (let i = from; i < from + n; i++) ins.run([i, `item ${i}`, i, NOTE]);
  db.exec("COMMIT");
  ins.free();
}

const workloads = {
  // 1. One small record committed and stored, `n` times (each INSERT its own transaction).
  async one({ n = 200 }) {
    const file = fresh("one");
    const db = create(file);
    const w = await watcher(file);
    const ins = db.prepare("INSERT INTO items VALUES (?, ?, ?, ?)");
    const stored = [], committed = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      ins.run([i, `item ${i}`, i, NOTE]);
      committed.push(performance.now() - t);
      await w.stored();
      stored.push(performance.now() - t);
    }
    ins.free(); db.close(); w.close();
    return { stored, committed };
  },
  // 2. 10,000 records in one transaction, stored; a fresh database each run.
  async batch({ runs, n = 10000 }) {
    const stored = [];
    for (let r = 0; r < runs; r++) {
      const file = fresh("batch");
      const db = create(file);
      const w = await watcher(file);
      const t = performance.now();
      insertAll(db, 0, n);
      await w.stored();
      stored.push(performance.now() - t);
      db.close(); w.close();
    }
    return { stored };
  },
  // 3. 10,000 random point reads (xorshift as bench.html) of a 10,000-record database,
  // in one read transaction as the raw side's one readonly transaction.
  async reads({ runs, n = 10000 }) {
    const file = fresh("reads");
    const db = create(file);
    const w = await watcher(file);
    insertAll(db, 0, n);
    await w.stored();
    const times = [];
    for (let r = 0; r < runs; r++) {
      const t = performance.now();
      db.exec("BEGIN");
      const sel = db.prepare("SELECT id, name, qty, note FROM items WHERE id = ?");
      let x = (r + 1) | 1;
      for (let i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
        const k = (x >>> 0) % n;
        const row = sel.getAsObject([k]);
        if (row.qty !== k) throw new Error(`read ${k}: ${JSON.stringify(row)}`);
      }
      sel.free();
      db.exec("COMMIT");
      times.push(performance.now() - t);
    }
    db.close(); w.close();
    return { reads: times };
  },
  // 4. Open a database of `records` records (filled in batches of 10,000) to its first
  // record: the open includes absurd-sql starting its IndexedDB worker for the file.
  async open({ runs, records = 50000 }) {
    const file = fresh("open");
    {
      const db = create(file);
      const w = await watcher(file);
      for (let k = 0; k < records; k += 10000) insertAll(db, k, Math.min(10000, records - k));
      await w.stored();
      db.close(); w.close();
    }
    await new Promise((r) => setTimeout(r, 300));
    const times = [];
    let size = 0;
    for (let r = 0; r < runs; r++) {
      const t = performance.now();
      const db = open(file);
      const row = db.prepare("SELECT id, name, qty, note FROM items ORDER BY id LIMIT 1").getAsObject([]);
      times.push(performance.now() - t);
      if (row.id !== 0) throw new Error(`first record: ${JSON.stringify(row)}`);
      size = db.exec("PRAGMA page_count")[0].values[0][0] * db.exec("PRAGMA page_size")[0].values[0][0];
      db.close();
      await new Promise((r) => setTimeout(r, 100));
    }
    return { open: times, size };
  },
};

self.onmessage = async (e) => {
  const { id, cmd, args } = e.data ?? {};
  if (!workloads[cmd]) return; // (absurd-sql's own messages)
  try {
    SQL = await ready;
    self.postMessage({ id, result: await workloads[cmd](args) });
  } catch (err) {
    self.postMessage({ id, error: String(err?.stack ?? err) });
  }
};
