//! Red-team tests of the browser storage (added by a review session). Each test asserts
//! what the documentation claims; a failing test is a finding.
//!
//! Run: `cargo test -p rekord --target wasm32-unknown-unknown --test browser_redteam`
//! (`-- <name>` for one). Natively this file is empty. The findings were fixed; the two
//! memory tests are ignored (a documented limit).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::rc::Rc;

use rekord::{BrowserOptions, Db, DbOptions, Error, FlushPolicy};
use wasm_bindgen::JsCast;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[path = "common/browser.rs"]
mod web;
use web::*;

#[rekord::record(tree = "parts")]
#[derive(Debug, Clone, PartialEq)]
struct Part {
    name: String,
    qty: u32,
}

fn part(name: &str, qty: u32) -> Part {
    Part {
        name: name.into(),
        qty,
    }
}

/// Waits until a dropped database's flusher has closed (an open and drop wait for it).
async fn settle(name: &str) {
    drop(Db::open_browser(name).await.unwrap());
    drop(Db::open_browser(name).await.unwrap());
}

/// IEEE CRC-32 (what the marker's checksum uses).
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn marker(generation: u64, len: u64, digest: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"rekordM1");
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&(rekord::storage::BLOCK_SIZE as u64).to_le_bytes());
    b.extend_from_slice(&digest.to_le_bytes());
    let sum = crc32(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

/// Fault injection: while `window.__rt_fail` is true, `IDBObjectStore.put` throws a
/// QuotaExceededError; `window.__rt_attempts` counts the flushes refused.
fn inject_quota_failures(on: bool) {
    js_sys::eval(
        "if (!IDBObjectStore.prototype.__rt_put) {
           IDBObjectStore.prototype.__rt_put = IDBObjectStore.prototype.put;
           IDBObjectStore.prototype.put = function (...a) {
             if (globalThis.__rt_fail) {
               globalThis.__rt_attempts = (globalThis.__rt_attempts || 0) + 1;
               throw new DOMException('injected', 'QuotaExceededError');
             }
             return this.__rt_put(...a);
           };
         }",
    )
    .unwrap();
    js_sys::Reflect::set(&js_sys::global(), &"__rt_fail".into(), &on.into()).unwrap();
    js_sys::Reflect::set(&js_sys::global(), &"__rt_attempts".into(), &0.into()).unwrap();
}

fn attempts() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &"__rt_attempts".into())
        .unwrap()
        .as_f64()
        .unwrap_or(0.0)
}

// ---- claim 4: a failed flush keeps the last good image and retries ----

#[wasm_bindgen_test]
async fn redteam_a_failed_flush_is_retried_at_a_sane_rate() {
    let name = fresh("retry");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    parts.create(&part("a", 1)).unwrap();
    db.flush().await.unwrap();
    inject_quota_failures(true);
    let k = parts.create(&part("b", 2)).unwrap();
    assert!(matches!(db.flush().await, Err(Error::QuotaExceeded { .. })));
    let before = attempts();
    sleep(1000).await;
    let retries = attempts() - before;
    assert!(db.flush_error().is_some());
    inject_quota_failures(false);
    db.flush().await.unwrap();
    drop(parts);
    drop(db);
    let db = Db::open_browser(&name).await.unwrap();
    assert_eq!(db.tree::<Part>().unwrap().get(k).unwrap().qty, 2);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
    // The policy says 500 ms (max_delay); the flusher retries every `debounce` (20 ms).
    assert!(
        retries <= 4.0,
        "a refused flush was retried {retries} times in 1 s (each a full IndexedDB transaction)"
    );
}

// ---- claim 5: drop then immediate reopen sees every commit ----

/// The closing flusher retries (with backoff), then gives the commits up; the reopen that
/// waited for it is told, instead of loading the older state silently.
#[wasm_bindgen_test]
async fn redteam_a_failed_last_flush_at_drop_loses_commits_silently() {
    let name = fresh("closefail");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    parts.create(&part("a", 1)).unwrap();
    db.flush().await.unwrap();
    inject_quota_failures(true);
    let k = parts.create(&part("b", 2)).unwrap();
    drop(parts);
    drop(db);
    // The reopen waits for the closing flusher (whose attempts all fail).
    let reopened = Db::open_browser(&name).await;
    inject_quota_failures(false);
    match reopened {
        Ok(db) => {
            let got = db.tree::<Part>().unwrap().get(k);
            drop(db);
            Db::delete_browser(&name).await.unwrap();
            panic!("a reopen after a failed last flush reported nothing: {got:?}");
        }
        Err(e) => assert!(e.to_string().contains("lost"), "{e}"),
    }
    // Told once; the database then opens with its last stored state.
    let db = Db::open_browser(&name).await.unwrap();
    assert_eq!(db.tree::<Part>().unwrap().keys().unwrap().len(), 1);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

/// The same without hide listeners (`FlushPolicy::on_hide` off, as in a worker, which has
/// no such events): the closing flusher's channel then has no sender left, and a closed
/// channel ended each of its back-off waits at once, so its attempts ran back to back.
/// They are spaced by the back-off (500 ms, doubling): the reopen waits that long.
#[wasm_bindgen_test]
async fn a_failed_last_flush_without_hide_listeners_is_retried_with_back_off() {
    let name = fresh("closefail-nohide");
    let options = BrowserOptions {
        flush: FlushPolicy {
            on_hide: false,
            ..FlushPolicy::default()
        },
        ..BrowserOptions::default()
    };
    let db = Db::open_browser_with(&name, DbOptions::default(), options)
        .await
        .unwrap();
    let parts = db.tree::<Part>().unwrap();
    parts.create(&part("a", 1)).unwrap();
    db.flush().await.unwrap();
    inject_quota_failures(true);
    parts.create(&part("b", 2)).unwrap();
    drop(parts);
    let start = js_sys::Date::now();
    drop(db);
    let reopened = Db::open_browser(&name).await;
    let waited = js_sys::Date::now() - start;
    let tried = attempts();
    inject_quota_failures(false);
    let e = reopened.expect_err("a reopen after a failed last flush reported nothing");
    assert!(e.to_string().contains("lost"), "{e}");
    let db = Db::open_browser(&name).await.unwrap();
    assert_eq!(db.tree::<Part>().unwrap().keys().unwrap().len(), 1);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
    // Five attempts at close, 500 + 1,000 + 2,000 + 4,000 ms apart.
    assert!(tried <= 6.0, "{tried} attempts");
    assert!(
        waited >= 5_000.0,
        "the attempts at close ran within {waited} ms: no back-off"
    );
}

#[wasm_bindgen_test]
async fn redteam_drop_with_a_tree_alive_then_reopen() {
    // A Tree (or a clone of the Db) keeps the database open: a reopen follows it, as a
    // second tab would, and takes over once it goes.
    let name = fresh("treealive");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    parts.create(&part("a", 1)).unwrap();
    drop(db);
    let r = Db::open_browser(&name).await.unwrap();
    assert_eq!(r.tree::<Part>().unwrap().keys().unwrap().len(), 1);
    r.tree::<Part>().unwrap().create(&part("b", 2)).unwrap();
    r.flush().await.unwrap();
    drop(parts);
    drop(r);
    let db = Db::open_browser(&name).await.unwrap();
    assert_eq!(db.tree::<Part>().unwrap().keys().unwrap().len(), 2);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn redteam_a_snapshot_outliving_its_db() {
    let name = fresh("snapalive");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    let k = parts.create(&part("a", 1)).unwrap();
    let snap = parts.snapshot().unwrap();
    drop(parts);
    drop(db);
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    parts.update(k, |p| p.qty = 5).unwrap();
    assert_eq!(parts.get(k).unwrap().qty, 5);
    // The old snapshot: an error or the old value, never a panic.
    let old = snap.get(k);
    assert!(
        matches!(&old, Ok(p) if p.qty == 1) || old.is_err(),
        "{old:?}"
    );
    drop(snap);
    drop(parts);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

// ---- the OPEN registry: two reopens racing after a drop ----

#[wasm_bindgen_test]
async fn redteam_two_reopens_racing_after_a_drop() {
    let name = fresh("race");
    let db = Db::open_browser(&name).await.unwrap();
    db.tree::<Part>().unwrap().create(&part("a", 1)).unwrap();
    db.flush().await.unwrap();
    drop(db);
    // Both wait for the closing flusher, then both proceed.
    let first: Rc<RefCell<Option<rekord::Result<Db>>>> = Rc::new(RefCell::new(None));
    let f = first.clone();
    let n = name.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let r = Db::open_browser(&n).await;
        *f.borrow_mut() = Some(r);
    });
    let second = Db::open_browser(&name).await;
    while first.borrow().is_none() {
        sleep(5).await;
    }
    let first = first.borrow_mut().take().unwrap();
    // Both open: one leads, the other follows it.
    let (Ok(a), Ok(b)) = (&first, &second) else {
        panic!(
            "both opens succeed: {:?} {:?}",
            first.is_ok(),
            second.is_ok()
        );
    };
    {
        let pa = a.tree::<Part>().unwrap();
        let pb = b.tree::<Part>().unwrap();
        for i in 0..50 {
            pa.create(&part("from a", i)).unwrap();
        }
        a.flush().await.unwrap();
        pb.create(&part("from b", 1)).unwrap();
        b.flush().await.unwrap();
    }
    drop(first);
    drop(second);
    let reopened = Db::open_browser(&name).await;
    let state = match &reopened {
        Ok(db) => format!(
            "opens with {} parts",
            db.tree::<Part>().unwrap().keys().unwrap().len()
        ),
        Err(e) => format!("{e}"),
    };
    drop(reopened);
    let _ = Db::delete_browser(&name).await;
    assert_eq!(
        state, "opens with 52 parts",
        "every flushed commit of both is stored"
    );
}

// ---- claim 3: a damaged store is refused with StoreDamaged and left unchanged ----

#[wasm_bindgen_test]
async fn redteam_a_store_whose_marker_was_lost_is_refused() {
    let name = fresh("nomarker");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    for i in 0..300 {
        parts.create(&part(&"x".repeat(200), i)).unwrap();
    }
    db.flush().await.unwrap();
    drop(parts);
    drop(db);
    settle(&name).await;
    raw_delete(&name, "meta", &"marker".into()).await;
    let block0 = raw_get(&name, "blocks", &JsValue::from_f64(0.0)).await;
    assert!(block0.is_some());
    let r = Db::open_browser(&name).await;
    let refused = matches!(r, Err(Error::StoreDamaged { .. }));
    let mut after = String::new();
    if let Ok(db) = r {
        // Opened as an empty database: one commit and a flush over the old blocks.
        let n = db.tree::<Part>().unwrap().keys().unwrap().len();
        db.tree::<Part>().unwrap().create(&part("new", 1)).unwrap();
        db.flush().await.unwrap();
        drop(db);
        after = format!(
            "opened with {n} parts; after one commit and flush a reopen gives: {:?}",
            Db::open_browser(&name).await.map(drop)
        );
    }
    let _ = Db::delete_browser(&name).await;
    assert!(refused, "blocks without a marker: {after}");
}

/// What Chromium does when it finds an origin's IndexedDB damaged on start (seen in the
/// crash driver, `examples/web/tests/crash.mjs`): it deletes the whole database. rekord
/// must say so, not open an empty database in its place.
#[wasm_bindgen_test]
async fn a_database_the_browser_dropped_is_refused_as_lost_until_deleted() {
    let name = fresh("dropped");
    // Never flushed: nothing noted, and a database deleted behind rekord's back is simply
    // a new one.
    let db = Db::open_browser(&name).await.unwrap();
    drop(db);
    settle(&name).await;
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    for i in 0..50 {
        parts.create(&part("kept", i)).unwrap();
    }
    db.flush().await.unwrap();
    drop(parts);
    drop(db);
    settle(&name).await;
    // The browser drops it (as Chromium's recovery does: the IndexedDB database is gone).
    let req = web_sys::window()
        .unwrap()
        .indexed_db()
        .unwrap()
        .unwrap()
        .delete_database(&format!("rekord:{name}"))
        .unwrap();
    wait(&req).await;
    for _ in 0..2 {
        match Db::open_browser(&name).await {
            Err(Error::StoreLost { name: n }) => assert_eq!(n, name),
            Err(e) => panic!("expected StoreLost, got {e}"),
            Ok(db) => panic!(
                "opened a dropped database as a new one with {} parts",
                db.tree::<Part>().unwrap().keys().unwrap().len()
            ),
        }
    }
    let lost = Db::open_browser(&name).await.err().unwrap().to_string();
    assert!(lost.contains("Db::delete_browser"), "{lost}");
    // Acknowledged: a new, empty database, which is noted again once it stores a flush.
    Db::delete_browser(&name).await.unwrap();
    let db = Db::open_browser(&name).await.unwrap();
    assert!(db.tree::<Part>().unwrap().keys().unwrap().is_empty());
    db.tree::<Part>().unwrap().create(&part("new", 1)).unwrap();
    db.flush().await.unwrap();
    drop(db);
    settle(&name).await;
    let db = Db::open_browser(&name).await.unwrap();
    assert_eq!(db.tree::<Part>().unwrap().keys().unwrap().len(), 1);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
    // Deleted on purpose: not a loss.
    let db = Db::open_browser(&name).await.unwrap();
    drop(db);
    let _ = Db::delete_browser(&name).await;
}

#[wasm_bindgen_test]
async fn redteam_hostile_values_are_refused_as_damaged() {
    let name = fresh("hostile");
    let db = Db::open_browser(&name).await.unwrap();
    db.tree::<Part>().unwrap().create(&part("a", 1)).unwrap();
    db.flush().await.unwrap();
    drop(db);
    settle(&name).await;
    let m = raw_get(&name, "meta", &"marker".into()).await.unwrap();
    let b0 = raw_get(&name, "blocks", &JsValue::from_f64(0.0))
        .await
        .unwrap();
    let cases: Vec<(&str, &str, JsValue, JsValue)> = vec![
        (
            "marker a string",
            "meta",
            "marker".into(),
            "rekordM1".into(),
        ),
        (
            "marker a number",
            "meta",
            "marker".into(),
            JsValue::from_f64(7.0),
        ),
        (
            "marker with trailing bytes",
            "meta",
            "marker".into(),
            js_sys::Uint8Array::from(&[&m[..], &[1, 2, 3]].concat()[..]).into(),
        ),
        (
            "block 0 a string",
            "blocks",
            JsValue::from_f64(0.0),
            "x".into(),
        ),
        (
            "block 0 truncated",
            "blocks",
            JsValue::from_f64(0.0),
            js_sys::Uint8Array::from(&b0[..100]).into(),
        ),
        (
            "a block under a string key",
            "blocks",
            "0".into(),
            js_sys::Uint8Array::from(&b0[..]).into(),
        ),
        (
            "a block under key 1e20",
            "blocks",
            JsValue::from_f64(1e20),
            js_sys::Uint8Array::from(&b0[..]).into(),
        ),
        (
            "block 0 as an Int8Array",
            "blocks",
            JsValue::from_f64(0.0),
            js_sys::Int8Array::from(&b0.iter().map(|b| *b as i8).collect::<Vec<_>>()[..]).into(),
        ),
    ];
    let mut accepted = Vec::new();
    for (what, store, key, value) in cases {
        let old = raw_get(&name, store, &key).await;
        raw_put_value(&name, store, &key, &value).await;
        let r = Db::open_browser(&name).await;
        if !matches!(r, Err(Error::StoreDamaged { .. })) {
            accepted.push(format!("{what}: {:?}", r.as_ref().map(|_| "opened")));
        }
        drop(r);
        settle_quiet(&name).await;
        match old {
            Some(o) => {
                raw_put_value(&name, store, &key, &js_sys::Uint8Array::from(&o[..]).into()).await
            }
            None => raw_delete(&name, store, &key).await,
        }
    }
    let _ = Db::delete_browser(&name).await;
    assert!(
        accepted.is_empty(),
        "not refused as damaged:\n{}",
        accepted.join("\n")
    );
}

/// Waits for a closing flusher without opening (an open could refuse damage).
async fn settle_quiet(_name: &str) {
    sleep(50).await;
}

/// A marker with a valid checksum and an image length of 3 GiB: on wasm32 `vec![0; len]`
/// is past isize::MAX, a "capacity overflow" panic, which aborts the wasm instance (a
/// length below that but larger than the memory left aborts in the allocator). Run alone.
#[wasm_bindgen_test]
async fn redteam_hostile_marker_length() {
    let name = fresh("hugelen");
    let db = Db::open_browser(&name).await.unwrap();
    db.tree::<Part>().unwrap().create(&part("a", 1)).unwrap();
    db.flush().await.unwrap();
    drop(db);
    settle(&name).await;
    raw_put_value(
        &name,
        "meta",
        &"marker".into(),
        &js_sys::Uint8Array::from(&marker(9, 3 << 30, 0)[..]).into(),
    )
    .await;
    let r = Db::open_browser(&name).await;
    assert!(matches!(r, Err(Error::StoreDamaged { .. })), "{r:?}");
    let _ = Db::delete_browser(&name).await;
}

// ---- claim 2: Db::flush returns once every commit before it is stored ----

#[wasm_bindgen_test]
async fn redteam_flush_returns_under_a_steady_stream_of_commits() {
    let name = fresh("starve");
    let db = Db::open_browser(&name).await.unwrap();
    let stop = Rc::new(std::cell::Cell::new(false));
    let (s, d) = (stop.clone(), db.clone());
    wasm_bindgen_futures::spawn_local(async move {
        let parts = d.tree::<Part>().unwrap();
        let mut i = 0;
        while !s.get() {
            parts.create(&part("stream", i)).unwrap();
            i += 1;
            // A commit per macrotask (setTimeout 0: about every 4 ms).
            sleep(0).await;
        }
    });
    sleep(50).await;
    let t0 = js_sys::Date::now();
    let r = race_timeout(db.flush(), 3000).await;
    let took = js_sys::Date::now() - t0;
    stop.set(true);
    sleep(50).await;
    let stats = db.browser_stats().unwrap();
    drop(db);
    let _ = Db::delete_browser(&name).await;
    assert!(
        r.is_some(),
        "Db::flush did not return within 3 s while commits kept coming ({} flushes stored meanwhile)",
        stats.flushes
    );
    assert!(took < 1000.0, "Db::flush took {took} ms");
}

async fn race_timeout<F: std::future::Future>(f: F, ms: i32) -> Option<F::Output> {
    use std::future::Future;
    use std::task::Poll;
    let mut f = std::pin::pin!(f);
    let mut t = std::pin::pin!(sleep(ms));
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(x) = f.as_mut().poll(cx) {
            return Poll::Ready(Some(x));
        }
        if t.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

// ---- claim 6: memory stays about 1x the stored image ----

fn wasm_memory() -> f64 {
    wasm_bindgen::memory()
        .unchecked_into::<js_sys::WebAssembly::Memory>()
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
}

#[wasm_bindgen_test]
#[ignore = "known limit: the image is one Vec; growing it copies, and wasm memory never shrinks (BENCHMARKS.md)"]
async fn redteam_memory_of_a_database_built_in_the_session() {
    let name = fresh("memory");
    let db = Db::open_browser_with(
        &name,
        DbOptions::default(),
        BrowserOptions {
            flush: FlushPolicy::default(),
            ..BrowserOptions::default()
        },
    )
    .await
    .unwrap();
    let parts = db.tree::<Part>().unwrap();
    let m0 = wasm_memory();
    // 24 MiB in commits of 64 KiB, then 16 MiB in one batch.
    let big = "y".repeat(64 << 10);
    for i in 0..384 {
        parts.create(&part(&big, i)).unwrap();
    }
    db.flush().await.unwrap();
    let s1 = db.browser_stats().unwrap();
    let m1 = wasm_memory();
    {
        let mut b = db.batch().unwrap();
        for i in 0..256 {
            b.create(&part(&big, i)).unwrap();
        }
        b.commit().unwrap();
    }
    let staged = db.browser_stats().unwrap();
    db.flush().await.unwrap();
    let s2 = db.browser_stats().unwrap();
    let m2 = wasm_memory();
    let mb = |x: f64| x / 1048576.0;
    let msg = format!(
        "wasm memory {:.1} MiB at start; {:.1} MiB for a {:.1} MiB image after 384 commits; \
         {:.1} MiB for a {:.1} MiB image after one 16 MiB batch ({:.1} MiB were staged)",
        mb(m0),
        mb(m1),
        mb(s1.image_bytes as f64),
        mb(m2),
        mb(s2.image_bytes as f64),
        mb(staged.unflushed_bytes as f64),
    );
    console_log!("{msg}");
    drop(parts);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
    assert!(m2 < 1.3 * s2.image_bytes as f64 + 4.0 * 1048576.0, "{msg}");
}

// ---- claim 5 with the Web Lock (released asynchronously after the flusher ends) ----

#[wasm_bindgen_test]
async fn redteam_drop_then_immediate_reopen_many_times() {
    let name = fresh("reopenloop");
    let mut keys = Vec::new();
    let mut failures = Vec::new();
    let mut db = Db::open_browser(&name).await.unwrap();
    for i in 0..30 {
        keys.push(db.tree::<Part>().unwrap().create(&part("r", i)).unwrap());
        drop(db);
        db = match Db::open_browser(&name).await {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("reopen {i}: {e}"));
                sleep(50).await;
                Db::open_browser(&name).await.unwrap()
            }
        };
        let n = db.tree::<Part>().unwrap().keys().unwrap().len();
        if n != keys.len() {
            failures.push(format!("reopen {i}: {n} parts, {} committed", keys.len()));
        }
    }
    drop(db);
    let _ = Db::delete_browser(&name).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[wasm_bindgen_test]
#[ignore = "known limit: the image is one Vec; growing it copies, and wasm memory never shrinks (BENCHMARKS.md)"]
async fn redteam_memory_with_a_flush_after_every_commit() {
    // Nothing much is ever staged here: what wasm memory holds beyond the image is the
    // image's own growth (one Vec, reallocated as redb doubles the file).
    let name = fresh("memory2");
    let db = Db::open_browser_with(
        &name,
        DbOptions::default(),
        BrowserOptions {
            durability: rekord::Durability::Relaxed,
            ..BrowserOptions::default()
        },
    )
    .await
    .unwrap();
    let parts = db.tree::<Part>().unwrap();
    let big = "y".repeat(64 << 10);
    let mut max_staged = 0;
    for i in 0..384 {
        parts.create(&part(&big, i)).unwrap();
        max_staged = max_staged.max(db.browser_stats().unwrap().unflushed_bytes);
        db.flush().await.unwrap();
    }
    let s = db.browser_stats().unwrap();
    let m = wasm_memory();
    let msg = format!(
        "wasm memory {:.1} MiB for a {:.1} MiB image (at most {:.2} MiB staged at once)",
        m / 1048576.0,
        s.image_bytes as f64 / 1048576.0,
        max_staged as f64 / 1048576.0
    );
    console_log!("{msg}");
    drop(parts);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
    assert!(m < 1.3 * s.image_bytes as f64 + 4.0 * 1048576.0, "{msg}");
}
