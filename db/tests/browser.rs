//! rekord in a real browser (headless Chromium through wasm-bindgen-test): the database
//! stored in IndexedDB, reopened, evolved, indexed and checked for damage.
//!
//! Run: `cargo test -p rekord --target wasm32-unknown-unknown --test browser` (the runner
//! and Chromium as `.ci/run` installs them). Natively this file is empty.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use rekord::{BrowserOptions, Db, DbOptions, Error, EventKind, FlushPolicy};
use wasm_bindgen::JsCast;
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

mod v1 {
    #[rekord::record(tree = "gadgets", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Gadget {
        pub name: String,
    }
}

mod v2 {
    #[rekord::record(tree = "gadgets", version = 2)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Gadget {
        pub name: String,
        #[record(default)]
        pub color: Option<String>,
    }
}

#[wasm_bindgen_test]
async fn records_survive_a_reopen() {
    let name = fresh("reopen");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    let mut keys = Vec::new();
    for i in 0..500 {
        keys.push(
            parts
                .create(&Part {
                    name: format!("part {i}"),
                    qty: i,
                })
                .unwrap(),
        );
    }
    parts.update(keys[7], |p| p.qty = 7000).unwrap();
    db.flush().await.unwrap();
    drop(parts);
    drop(db);

    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    assert_eq!(parts.keys().unwrap().len(), 500);
    assert_eq!(parts.get(keys[7]).unwrap().qty, 7000);
    // Zero-copy reads, as natively.
    parts
        .with(keys[499], |p| assert_eq!(p.name.as_str(), "part 499"))
        .unwrap();
    drop(parts);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn a_dropped_database_stores_its_last_commits() {
    // No flush: dropping the Db flushes what is left before a reopen reads it.
    let name = fresh("drop");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    let k = parts
        .create(&Part {
            name: "bolt".into(),
            qty: 1,
        })
        .unwrap();
    drop(parts);
    drop(db);
    let db = Db::open_browser(&name).await.unwrap();
    assert_eq!(db.tree::<Part>().unwrap().get(k).unwrap().qty, 1);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn deleting_an_open_database_is_refused() {
    let name = fresh("locked");
    let db = Db::open_browser(&name).await.unwrap();
    assert!(matches!(
        Db::delete_browser(&name).await,
        Err(Error::Locked { .. })
    ));
    drop(db);
    Db::delete_browser(&name).await.unwrap();
    // Deleted: a new, empty database.
    let db = Db::open_browser(&name).await.unwrap();
    assert!(db.tree::<Part>().unwrap().keys().unwrap().is_empty());
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

/// Holds the Web Lock another tab's open of `name` holds (the leader's), until the returned
/// function is called.
fn hold_lock_as_another_tab(name: &str) -> js_sys::Function {
    let hold = js_sys::Function::new_with_args(
        "name",
        "let release; const held = new Promise((r) => { release = r; });
         navigator.locks.request(name, () => held);
         return release;",
    );
    hold.call1(
        &wasm_bindgen::JsValue::NULL,
        &format!("rekord:{name}").into(),
    )
    .unwrap()
    .into()
}

/// Another tab holding the database open: deleting it (or importing over its name) from
/// this page is refused, and works once that tab is gone.
#[wasm_bindgen_test]
async fn deleting_a_database_another_tab_holds_is_refused() {
    let name = fresh("other-tab");
    let db = Db::open_browser(&name).await.unwrap();
    db.tree::<Part>()
        .unwrap()
        .create(&Part {
            name: "bolt".into(),
            qty: 1,
        })
        .unwrap();
    db.flush().await.unwrap();
    let image = db.export_image().unwrap();
    drop(db);
    // Let this page's close finish, then another tab takes the database.
    sleep(50).await;
    let release = hold_lock_as_another_tab(&name);
    sleep(20).await;
    assert!(matches!(
        Db::delete_browser(&name).await,
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        Db::import_browser_image(&fresh("unused"), image.clone()).await,
        Ok(())
    ));
    release.call0(&wasm_bindgen::JsValue::NULL).unwrap();
    sleep(20).await;
    Db::delete_browser(&name).await.unwrap();
}

/// The database deleted from outside rekord while open (the site's data cleared, another
/// script): the open connection gives way instead of blocking the deletion, and the next
/// flush fails with an error, never silently.
#[wasm_bindgen_test]
async fn a_database_deleted_from_outside_fails_its_flushes() {
    let name = fresh("deleted-outside");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    parts
        .create(&Part {
            name: "bolt".into(),
            qty: 1,
        })
        .unwrap();
    db.flush().await.unwrap();
    let req = web_sys::window()
        .unwrap()
        .indexed_db()
        .unwrap()
        .unwrap()
        .delete_database(&format!("rekord:{name}"))
        .unwrap();
    let (tx, rx) = async_channel::bounded::<bool>(1);
    let ok = {
        let tx = tx.clone();
        wasm_bindgen::closure::Closure::once_into_js(move || {
            let _ = tx.try_send(true);
        })
    };
    let blocked = wasm_bindgen::closure::Closure::once_into_js(move || {
        let _ = tx.try_send(false);
    });
    req.set_onsuccess(Some(ok.unchecked_ref()));
    req.set_onblocked(Some(blocked.unchecked_ref()));
    assert!(
        rx.recv().await.unwrap(),
        "the deletion was blocked by the open database"
    );
    parts
        .create(&Part {
            name: "nut".into(),
            qty: 2,
        })
        .unwrap();
    assert!(
        db.flush().await.is_err(),
        "a flush after the deletion succeeded"
    );
    assert!(db.flush_error().is_some());
}

fn qtys(db: &Db) -> Vec<(u64, u32)> {
    let t = db.tree::<Part>().unwrap();
    let mut v: Vec<(u64, u32)> = t
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| (k.id(), t.get(k).unwrap().qty))
        .collect();
    v.sort();
    v
}

/// Two opens of one database share it, as two tabs do (the second follows the first over
/// a BroadcastChannel): each sees the other's commits as events, ids never collide, and a
/// follower's flush returns once the leader stored its commit.
#[wasm_bindgen_test]
async fn two_opens_share_the_database_and_see_each_others_commits() {
    let name = fresh("tabs");
    let a = Db::open_browser(&name).await.unwrap();
    let ta = a.tree::<Part>().unwrap();
    let x = ta
        .create(&Part {
            name: "x".into(),
            qty: 1,
        })
        .unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let tb = b.tree::<Part>().unwrap();
    assert_eq!(
        tb.get(x).unwrap().qty,
        1,
        "the follower starts from the leader's state"
    );
    let events = b.subscribe();
    ta.update(x, |p| p.qty = 2).unwrap();
    assert!(
        eventually(5000, || tb.get(x).unwrap().qty == 2).await,
        "the leader's commit reaches the follower"
    );
    let mut saw = false;
    for e in events.try_iter() {
        saw |= matches!(e, rekord::Event::Record(r) if r.key.id == x.id() && r.kind == EventKind::Updated);
    }
    assert!(saw, "as an event");
    // Creates in both at once: distinct ids.
    let mut mine = Vec::new();
    for i in 0..50 {
        mine.push(
            ta.create(&Part {
                name: format!("a{i}"),
                qty: 100 + i,
            })
            .unwrap(),
        );
        mine.push(
            tb.create(&Part {
                name: format!("b{i}"),
                qty: 200 + i,
            })
            .unwrap(),
        );
    }
    tb.update(x, |p| p.qty = 3).unwrap();
    b.flush().await.unwrap();
    assert!(
        eventually(5000, || qtys(&a) == qtys(&b)).await,
        "both converge"
    );
    assert_eq!(qtys(&a).len(), 101, "no id was used twice");
    assert_eq!(
        ta.get(x).unwrap().qty,
        3,
        "the follower's write reached the leader"
    );
    // The follower's flush means stored: a fresh open after both close has it.
    drop((ta, tb, events));
    drop(a);
    drop(b);
    let c = Db::open_browser(&name).await.unwrap();
    assert_eq!(qtys(&c).len(), 101);
    assert_eq!(c.tree::<Part>().unwrap().get(x).unwrap().qty, 3);
    drop(c);
    Db::delete_browser(&name).await.unwrap();
}

/// The leader closes: the follower takes over (stores its copy, with commits the leader
/// never stored and its own), and goes on writing; a third open follows it.
#[wasm_bindgen_test]
async fn the_follower_takes_over_when_the_leader_closes() {
    let name = fresh("takeover");
    let a = Db::open_browser_with(
        &name,
        DbOptions::default(),
        BrowserOptions {
            flush: FlushPolicy {
                debounce: std::time::Duration::from_secs(60),
                max_delay: std::time::Duration::from_secs(60),
                on_hide: false,
                ..FlushPolicy::default()
            },
            ..BrowserOptions::default()
        },
    )
    .await
    .unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let ta = a.tree::<Part>().unwrap();
    let tb = b.tree::<Part>().unwrap();
    let x = ta
        .create(&Part {
            name: "x".into(),
            qty: 1,
        })
        .unwrap();
    let y = tb
        .create(&Part {
            name: "y".into(),
            qty: 2,
        })
        .unwrap();
    assert!(eventually(5000, || qtys(&a).len() == 2 && qtys(&b).len() == 2).await);
    drop(ta);
    drop(a);
    // B now leads: its writes are stored by its own flushes.
    assert!(
        eventually(5000, || b.browser_stats().is_some_and(|s| s.flushes > 0)).await,
        "B stored the database"
    );
    tb.update(y, |p| p.qty = 20).unwrap();
    b.flush().await.unwrap();
    let c = Db::open_browser(&name).await.unwrap();
    let tc = c.tree::<Part>().unwrap();
    assert_eq!(tc.get(x).unwrap().qty, 1);
    assert_eq!(tc.get(y).unwrap().qty, 20);
    let z = tc
        .create(&Part {
            name: "z".into(),
            qty: 3,
        })
        .unwrap();
    c.flush().await.unwrap();
    assert!(
        eventually(5000, || tb.get(z).is_ok()).await,
        "C's write reached B"
    );
    drop((tb, tc));
    drop(c);
    drop(b);
    let d = Db::open_browser(&name).await.unwrap();
    assert_eq!(
        qtys(&d),
        vec![(x.id(), 1), (y.id(), 20), (z.id(), 3)]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    drop(d);
    Db::delete_browser(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn schema_evolution_across_two_builds() {
    // "Build 1" writes version 1; "build 2" reads it as version 2 and writes version 2;
    // build 1 still reads the new record (projected).
    let name = fresh("evolve");
    let db = Db::open_browser(&name).await.unwrap();
    let k = db
        .tree::<v1::Gadget>()
        .unwrap()
        .create(&v1::Gadget {
            name: "lamp".into(),
        })
        .unwrap();
    db.flush().await.unwrap();
    drop(db);

    let db = Db::open_browser(&name).await.unwrap();
    let g2 = db.tree::<v2::Gadget>().unwrap();
    let k2 = rekord::Key::<v2::Gadget>::new(k.id(), k.rev());
    assert_eq!(
        g2.get(k2).unwrap(),
        v2::Gadget {
            name: "lamp".into(),
            color: None
        }
    );
    let n = g2
        .create(&v2::Gadget {
            name: "desk".into(),
            color: Some("oak".into()),
        })
        .unwrap();
    drop(g2);
    drop(db);

    let db = Db::open_browser(&name).await.unwrap();
    let g1 = db.tree::<v1::Gadget>().unwrap();
    let n1 = rekord::Key::<v1::Gadget>::new(n.id(), n.rev());
    assert_eq!(g1.get(n1).unwrap().name, "desk");
    drop(g1);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn events_and_indexers_work_in_the_browser() {
    let name = fresh("events");
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    let total = Arc::new(Mutex::new(0u64));
    let t = total.clone();
    parts
        .register_indexer(move |c: &rekord::Change<'_, Part>| {
            let mut t = t.lock().unwrap();
            if let Some(o) = c.old {
                *t -= u64::from(o.qty.to_native());
            }
            if let Some(n) = c.new {
                *t += u64::from(n.qty.to_native());
            }
        })
        .unwrap();
    let events = db.subscribe();
    let k = parts
        .create(&Part {
            name: "nut".into(),
            qty: 5,
        })
        .unwrap();
    parts.update(k, |p| p.qty = 9).unwrap();
    assert_eq!(*total.lock().unwrap(), 9);
    let e = events.recv().await.unwrap();
    let r = e.as_record().unwrap();
    assert_eq!((r.kind, r.key), (EventKind::Created, k.raw()));
    let e = events.recv().await.unwrap();
    assert_eq!(e.as_record().unwrap().kind, EventKind::Updated);
    drop(parts);
    drop(events);
    drop(db);

    // Reopened: the indexer replays what was stored.
    let db = Db::open_browser(&name).await.unwrap();
    let replayed = Arc::new(Mutex::new(0u64));
    let r = replayed.clone();
    db.tree::<Part>()
        .unwrap()
        .register_indexer(move |c: &rekord::Change<'_, Part>| {
            if let Some(n) = c.new {
                *r.lock().unwrap() += u64::from(n.qty.to_native());
            }
        })
        .unwrap();
    assert_eq!(*replayed.lock().unwrap(), 9);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

/// The commit marker's generation as stored in IndexedDB (0 if none), read with raw
/// IndexedDB while the database is open.
async fn stored_generation(name: &str) -> u64 {
    let bytes = raw_get(name, "meta", &"marker".into()).await;
    match bytes {
        None => 0,
        Some(b) => u64::from_le_bytes(b[8..16].try_into().unwrap()),
    }
}

#[wasm_bindgen_test]
async fn commits_are_flushed_by_the_policy_without_being_asked() {
    let name = fresh("policy");
    let policy = FlushPolicy {
        debounce: std::time::Duration::from_millis(30),
        max_delay: std::time::Duration::from_millis(200),
        ..FlushPolicy::default()
    };
    let db = Db::open_browser_with(
        &name,
        DbOptions::default(),
        BrowserOptions {
            flush: policy,
            ..BrowserOptions::default()
        },
    )
    .await
    .unwrap();
    sleep(300).await;
    let g0 = stored_generation(&name).await;
    assert!(g0 >= 1, "the created database was flushed");
    let parts = db.tree::<Part>().unwrap();
    // A steady stream of commits, each within the debounce of the last: the deadline
    // flushes anyway.
    for i in 0..20 {
        parts
            .create(&Part {
                name: "x".into(),
                qty: i,
            })
            .unwrap();
        sleep(20).await;
    }
    let busy = stored_generation(&name).await;
    assert!(
        busy > g0,
        "flushed while busy (max_delay): {busy} after {g0}"
    );
    sleep(300).await;
    let quiet = stored_generation(&name).await;
    assert!(quiet > g0);
    assert!(db.flush_error().is_none());
    drop(parts);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn a_damaged_block_is_refused_and_left_as_it_was() {
    let name = fresh("damaged");
    let db = Db::open_browser(&name).await.unwrap();
    db.tree::<Part>()
        .unwrap()
        .create(&Part {
            name: "gear".into(),
            qty: 3,
        })
        .unwrap();
    db.flush().await.unwrap();
    drop(db);
    // Give the closing flusher its time, then flip a byte of block 0's data.
    let open = Db::open_browser(&name).await.unwrap();
    drop(open);
    let key = wasm_bindgen::JsValue::from_f64(0.0);
    let mut block = loop {
        if let Some(b) = raw_get(&name, "blocks", &key).await {
            break b;
        }
        sleep(20).await;
    };
    let original = block.clone();
    block[100] ^= 0x10;
    raw_put(&name, "blocks", &key, &block).await;
    match Db::open_browser(&name).await {
        Err(Error::StoreDamaged { source, .. }) => {
            assert!(source.to_string().contains("block 0"), "{source}")
        }
        other => panic!("expected StoreDamaged, got {other:?}"),
    }
    // Nothing was changed: the damaged block is still there, and repaired it opens.
    assert_eq!(raw_get(&name, "blocks", &key).await.unwrap(), block);
    raw_put(&name, "blocks", &key, &original).await;
    let db = Db::open_browser(&name).await.unwrap();
    assert_eq!(db.tree::<Part>().unwrap().keys().unwrap().len(), 1);
    drop(db);
    Db::delete_browser(&name).await.unwrap();
}

#[wasm_bindgen_test]
async fn a_native_file_opens_in_the_browser_and_an_export_imports_again() {
    // Written natively (db/tests/browser_image.rs makes and checks it): the same bytes.
    let native = include_bytes!("fixtures/native.rekord").to_vec();
    let name = fresh("native");
    Db::import_browser_image(&name, native.clone())
        .await
        .unwrap();
    // Importing over an existing database is refused.
    assert!(matches!(
        Db::import_browser_image(&name, native).await,
        Err(Error::Browser { .. })
    ));
    let db = Db::open_browser(&name).await.unwrap();
    let parts = db.tree::<Part>().unwrap();
    let all: Vec<Part> = parts
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| parts.get(k).unwrap())
        .collect();
    assert_eq!(all.len(), 100);
    assert!(all.iter().any(|p| p.name == "native 7" && p.qty == 21));
    let k = parts
        .create(&Part {
            name: "browser".into(),
            qty: 1,
        })
        .unwrap();
    // The browser's image, as a file's bytes, imported under another name.
    let image = db.export_image().unwrap();
    let copy = fresh("copy");
    Db::import_browser_image(&copy, image).await.unwrap();
    let db2 = Db::open_browser(&copy).await.unwrap();
    let parts2 = db2.tree::<Part>().unwrap();
    assert_eq!(parts2.keys().unwrap().len(), 101);
    assert_eq!(parts2.get(k).unwrap().name, "browser");
    // Not a rekord database: refused, nothing stored.
    let junk = fresh("junk");
    assert!(
        Db::import_browser_image(&junk, vec![7u8; 10_000])
            .await
            .is_err()
    );
    let db3 = Db::open_browser(&junk).await.unwrap();
    assert!(db3.tree::<Part>().unwrap().keys().unwrap().is_empty());
    drop((parts, parts2, db, db2, db3));
    for n in [name, copy, junk] {
        Db::delete_browser(&n).await.unwrap();
    }
}
