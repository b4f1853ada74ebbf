//! rekord in the browser, compiled to wasm with wasm-bindgen: a parts list shared by every
//! tab (`run_parts_app`, `www/index.html`), the pages the browser drivers crash (`Harness`,
//! `Shared`) and the in-page benchmark (`Bench`). Build with `examples/web/build.sh`, serve
//! with `node examples/web/tests/serve.mjs`.
#![cfg(target_arch = "wasm32")]

mod app;
mod synced;
pub use app::{Part, run_parts_app};
pub use synced::Synced;

use rekord::{BrowserOptions, Db, DbOptions, Durability, FlushPolicy, Key, Tree};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// One commit of the crash harness: record `seq`, with `len` bytes of payload.
#[rekord::record(tree = "commits")]
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The commit's sequence number (0, 1, 2, ...).
    pub seq: u64,
    /// Filler, so that commits span several blocks.
    pub payload: Vec<u8>,
}

/// The last sequence number committed (one record, updated with every commit).
#[rekord::record(tree = "head")]
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Sequence number of the last commit (`u64::MAX` before the first).
    pub seq: u64,
    /// Records in `commits` (must be `seq + 1`).
    pub count: u64,
}

fn js(e: rekord::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// A database the browser driver writes, crashes and checks.
#[wasm_bindgen]
pub struct Harness {
    db: Db,
    commits: Tree<Commit>,
    heads: Tree<Head>,
    head: Key<Head>,
    next: u64,
}

#[wasm_bindgen]
impl Harness {
    /// Opens (or creates) the harness database `name`; `relaxed` selects relaxed
    /// durability; `max_delay_ms` the flush policy's deadline.
    pub async fn open(name: String, relaxed: bool, max_delay_ms: u32) -> Result<Harness, JsError> {
        let browser = BrowserOptions {
            durability: if relaxed {
                Durability::Relaxed
            } else {
                Durability::Strict
            },
            flush: FlushPolicy {
                max_delay: std::time::Duration::from_millis(u64::from(max_delay_ms)),
                ..FlushPolicy::default()
            },
        };
        let db = Db::open_browser_with(&name, DbOptions::default(), browser)
            .await
            .map_err(js)?;
        let commits = db.tree::<Commit>().map_err(js)?;
        let heads = db.tree::<Head>().map_err(js)?;
        let head = match heads.keys().map_err(js)?.first() {
            Some(k) => *k,
            None => heads
                .create(&Head {
                    seq: u64::MAX,
                    count: 0,
                })
                .map_err(js)?,
        };
        let next = heads.get(head).map_err(js)?.seq.wrapping_add(1);
        Ok(Harness {
            db,
            commits,
            heads,
            head,
            next,
        })
    }

    /// Deletes the harness database `name` (after the browser dropped it: the driver
    /// acknowledges the loss and starts again).
    pub async fn delete(name: String) -> Result<(), JsError> {
        Db::delete_browser(&name).await.map_err(js)
    }

    /// Checks that the database holds exactly the state of one commit (the head names the
    /// last commit, and commits `0..=seq` are all there with their payloads); returns the
    /// number of commits (the next sequence number).
    pub fn check(&self) -> Result<f64, JsError> {
        let head = self.heads.get(self.head).map_err(js)?;
        let keys = self.commits.keys().map_err(js)?;
        let n = head.seq.wrapping_add(1);
        if keys.len() as u64 != n || head.count != n {
            return Err(JsError::new(&format!(
                "not a committed state: head says {n} commits (count {}), {} stored",
                head.count,
                keys.len()
            )));
        }
        let mut seen = vec![false; keys.len()];
        for k in keys {
            let c = self.commits.get(k).map_err(js)?;
            let i = usize::try_from(c.seq).unwrap_or(usize::MAX);
            if i >= seen.len() || seen[i] || c.payload != payload(c.seq, c.payload.len()) {
                return Err(JsError::new(&format!(
                    "commit {} is wrong or repeated",
                    c.seq
                )));
            }
            seen[i] = true;
        }
        Ok(n as f64)
    }

    /// Makes one commit (a new record of `len` bytes and the head) and returns its
    /// sequence number.
    pub fn commit(&mut self, len: u32) -> Result<f64, JsError> {
        let seq = self.next;
        let mut b = self.db.batch().map_err(js)?;
        b.create(&Commit {
            seq,
            payload: payload(seq, len as usize),
        })
        .map_err(js)?;
        b.update(self.head, |h| {
            h.seq = seq;
            h.count = seq + 1;
        })
        .map_err(js)?;
        b.commit().map_err(js)?;
        self.next += 1;
        Ok(seq as f64)
    }

    /// Waits until every commit so far is stored in IndexedDB.
    pub async fn flush(&self) -> Result<(), JsError> {
        self.db.flush().await.map_err(js)
    }

    /// The database as a file's bytes (what `Db::open` opens natively).
    pub fn export(&self) -> Result<Vec<u8>, JsError> {
        self.db.export_image().map_err(js)
    }
}

/// One record of the tabs driver: record `n` of writer `writer` (a tab).
#[rekord::record(tree = "notes")]
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Which tab wrote it.
    pub writer: u32,
    /// Its number among that tab's records (0, 1, 2, ...).
    pub n: u32,
    /// Recognisable filler.
    pub payload: Vec<u8>,
}

/// A database several tabs share (`tests/tabs.mjs` writes from each, crashes the leading
/// tab and checks that every flushed record of every tab is there).
#[wasm_bindgen]
pub struct Shared {
    db: Db,
    notes: Tree<Note>,
}

#[wasm_bindgen]
impl Shared {
    /// Opens (or joins, if another tab has it open) the database `name`.
    pub async fn open(name: String) -> Result<Shared, JsError> {
        panics_to_console();
        let db = Db::open_browser(&name).await.map_err(js)?;
        let notes = db.tree::<Note>().map_err(js)?;
        Ok(Shared { db, notes })
    }

    /// Commits record `n` of `writer` with `len` bytes of payload.
    pub fn write(&self, writer: u32, n: u32, len: u32) -> Result<(), JsError> {
        self.notes
            .create(&Note {
                writer,
                n,
                payload: payload(u64::from(writer) << 32 | u64::from(n), len as usize),
            })
            .map_err(js)?;
        Ok(())
    }

    /// Waits until every commit of this tab so far is stored (by whichever tab leads).
    pub async fn flush(&self) -> Result<(), JsError> {
        self.db.flush().await.map_err(js)
    }

    /// Whether this tab leads the database (stores it).
    pub fn leads(&self) -> bool {
        self.db.leads_tab()
    }

    /// Whether record `n` of `writer` is here (with its payload intact).
    pub fn has(&self, writer: u32, n: u32) -> Result<bool, JsError> {
        Ok(self.numbers(writer)?.contains(&n))
    }

    /// How many of records `0..upto` of `writer` are missing here (or damaged); an
    /// error if one is there twice.
    pub fn missing(&self, writer: u32, upto: u32) -> Result<u32, JsError> {
        let got = self.numbers(writer)?;
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != got.len() {
            return Err(JsError::new(&format!(
                "a record of writer {writer} is there twice"
            )));
        }
        Ok((0..upto)
            .filter(|n| sorted.binary_search(n).is_err())
            .count() as u32)
    }

    /// How many records of `writer` are here.
    pub fn count(&self, writer: u32) -> Result<u32, JsError> {
        Ok(self.numbers(writer)?.len() as u32)
    }

    fn numbers(&self, writer: u32) -> Result<Vec<u32>, JsError> {
        let mut out = Vec::new();
        for r in self.notes.iter().map_err(js)? {
            let r = r.map_err(js)?;
            if r.writer.to_native() != writer {
                continue;
            }
            let n = r.n.to_native();
            let id = u64::from(writer) << 32 | u64::from(n);
            if r.payload.as_slice() != payload(id, r.payload.len()).as_slice() {
                return Err(JsError::new(&format!(
                    "record {n} of writer {writer} is damaged"
                )));
            }
            out.push(n);
        }
        Ok(out)
    }
}

/// Reports a panic on the page's console (a wasm panic is otherwise only "unreachable").
fn panics_to_console() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&JsValue::from_str(&format!(
            "rekord example panicked: {info}"
        )));
    }));
}

/// The payload of commit `seq`: recognisable bytes, different per commit.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

/// One record of the benchmark: about 200 bytes, like the raw IndexedDB baseline's objects.
#[rekord::record(tree = "items")]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// A short name.
    pub name: String,
    /// A number.
    pub qty: u32,
    /// Filler text (180 bytes).
    pub note: String,
}

fn item(i: u32) -> Item {
    Item {
        name: format!("item {i}"),
        qty: i,
        note: "n".repeat(180),
    }
}

/// The rekord side of the in-page benchmark (`www/bench.html` times it beside raw
/// IndexedDB doing the same work).
#[wasm_bindgen]
pub struct Bench {
    db: Db,
    items: Tree<Item>,
    keys: Vec<Key<Item>>,
    next: u32,
}

#[wasm_bindgen]
impl Bench {
    /// Opens (or creates) the benchmark database `name`.
    pub async fn open(name: String, relaxed: bool) -> Result<Bench, JsError> {
        let browser = BrowserOptions {
            durability: if relaxed {
                Durability::Relaxed
            } else {
                Durability::Strict
            },
            ..BrowserOptions::default()
        };
        let db = Db::open_browser_with(&name, DbOptions::default(), browser)
            .await
            .map_err(js)?;
        let items = db.tree::<Item>().map_err(js)?;
        Ok(Bench {
            next: 0,
            db,
            items,
            keys: Vec::new(),
        })
    }

    /// Commits one record and waits until it is stored.
    pub async fn one(&mut self) -> Result<(), JsError> {
        let k = self.items.create(&item(self.next)).map_err(js)?;
        self.next += 1;
        self.keys.push(k);
        self.db.flush().await.map_err(js)
    }

    /// Commits one record without waiting for it to be stored.
    pub fn commit_one(&mut self) -> Result<(), JsError> {
        let k = self.items.create(&item(self.next)).map_err(js)?;
        self.next += 1;
        self.keys.push(k);
        Ok(())
    }

    /// Waits until every commit so far is stored.
    pub async fn flush(&self) -> Result<(), JsError> {
        self.db.flush().await.map_err(js)
    }

    /// Commits `n` records in one batch and waits until they are stored.
    pub async fn batch(&mut self, n: u32) -> Result<(), JsError> {
        let mut b = self.db.batch().map_err(js)?;
        for _ in 0..n {
            let k = b.create(&item(self.next)).map_err(js)?;
            self.next += 1;
            self.keys.push(k);
        }
        b.commit().map_err(js)?;
        self.db.flush().await.map_err(js)
    }

    /// Commits `n` records in one batch without waiting for them to be stored.
    pub fn commit_batch(&mut self, n: u32) -> Result<(), JsError> {
        let mut b = self.db.batch().map_err(js)?;
        for _ in 0..n {
            let k = b.create(&item(self.next)).map_err(js)?;
            self.next += 1;
            self.keys.push(k);
        }
        b.commit().map_err(js)
    }

    /// Reads `n` random records (zero-copy) and returns the sum of their quantities.
    pub fn reads(&self, n: u32, seed: u32) -> Result<f64, JsError> {
        let mut x = seed | 1;
        let mut sum = 0u64;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let Some(k) = self.keys.get(x as usize % self.keys.len().max(1)) else {
                break;
            };
            sum += self
                .items
                .with(*k, |i| u64::from(i.qty.to_native()))
                .map_err(js)?;
        }
        Ok(sum as f64)
    }

    /// The quantity of the first record (what "open to the first row" reads).
    pub fn first(&self) -> Result<f64, JsError> {
        match self.items.iter().map_err(js)?.next() {
            Some(r) => Ok(f64::from(r.map_err(js)?.qty.to_native())),
            None => Ok(-1.0),
        }
    }

    /// Bytes of the database's image (what IndexedDB stores, without its small overhead).
    pub fn stored(&self) -> f64 {
        self.db
            .browser_stats()
            .map_or(0.0, |s| s.image_bytes as f64)
    }

    /// Bytes of changed blocks committed and not yet stored (what the next flush writes).
    pub fn unflushed(&self) -> f64 {
        self.db
            .browser_stats()
            .map_or(0.0, |s| s.unflushed_bytes as f64)
    }

    /// Bytes of memory the image takes (its blocks, and copies of unflushed blocks written
    /// again).
    pub fn image_memory(&self) -> f64 {
        self.db
            .browser_stats()
            .map_or(0.0, |s| s.memory_bytes as f64)
    }

    /// Size of a stored block, as IndexedDB stores it (without its 16-byte header).
    pub fn block_size() -> f64 {
        rekord::storage::BLOCK_SIZE as f64
    }

    /// Records stored.
    pub fn count(&self) -> f64 {
        self.keys.len() as f64
    }

    /// Bytes of wasm memory in use (the image, redb's cache and everything else).
    pub fn memory() -> f64 {
        wasm_bindgen::memory()
            .unchecked_into::<js_sys::WebAssembly::Memory>()
            .buffer()
            .unchecked_into::<js_sys::ArrayBuffer>()
            .byte_length() as f64
    }
}
