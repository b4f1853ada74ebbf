//! Red-team tests of tab sharing (db/src/storage/tabs.rs): several opens of one database in
//! one page share it exactly as tabs do (the second open follows the first over a
//! BroadcastChannel).
//!
//! Run: `TMPDIR=$PWD/target/chrome-tmp cargo test -p rekord --target wasm32-unknown-unknown
//! --test browser_tabs_redteam`.
#![cfg(target_arch = "wasm32")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use rekord::{BrowserOptions, Db, DbOptions, Error, EventKind, FlushPolicy};
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

mod other_build {
    /// The same tree and version as `Part`, another shape (another build of the app).
    #[rekord::record(tree = "parts")]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Part {
        pub name: String,
        pub qty: u32,
        pub color: String,
    }
}

#[rekord::record(tree = "blobs")]
#[derive(Debug, Clone, PartialEq)]
struct Blob {
    data: Vec<u8>,
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

fn part(name: &str, qty: u32) -> Part {
    Part {
        name: name.into(),
        qty,
    }
}

fn slow_flush() -> BrowserOptions {
    BrowserOptions {
        flush: FlushPolicy {
            debounce: std::time::Duration::from_secs(60),
            max_delay: std::time::Duration::from_secs(60),
            on_hide: false,
            ..FlushPolicy::default()
        },
        ..BrowserOptions::default()
    }
}

fn now() -> f64 {
    js_sys::Date::now()
}

/// A follower opened in the same page as its leader, then dropped: the page must still be
/// able to open the database again (and `delete_browser` must answer Locked), while the
/// leader is open.
#[wasm_bindgen_test]
async fn dropping_a_same_page_follower_leaves_the_leader_usable() {
    let name = fresh("rt-dropfollower");
    let a = Db::open_browser(&name).await.unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    drop(b);
    let reopened = timeout(5_000, Db::open_browser(&name)).await;
    assert!(
        reopened.as_ref().is_some_and(|r| r.is_ok()),
        "a third open in the page after the follower closed: {:?}",
        reopened.as_ref().map(|r| r.as_ref().err())
    );
    drop(reopened);
    let deleted = timeout(5_000, Db::delete_browser(&name)).await;
    assert!(
        matches!(deleted, Some(Err(Error::Locked { .. }))),
        "delete while the leader is open: {deleted:?}"
    );
    drop(a);
    let _ = timeout(5_000, Db::delete_browser(&name)).await;
}

/// A follower holds a batch across an await when the leader commits (flushed!) and then
/// closes: the follower takes over once its batch ends. It must not lose the leader's last
/// commits (its run loop and the takeover both wait on the batch).
#[wasm_bindgen_test]
async fn takeover_while_a_batch_is_held_keeps_the_old_leaders_commits() {
    let mut lost = Vec::new();
    for round in 0..8 {
        let name = fresh("rt-heldtakeover");
        console_log!("round {round}: start");
        let a = Db::open_browser(&name).await.unwrap();
        let ta = a.tree::<Part>().unwrap();
        let x = ta.create(&part("x", 1)).unwrap();
        a.flush().await.unwrap();
        let b = Db::open_browser(&name).await.unwrap();
        let tb = b.tree::<Part>().unwrap();
        assert_eq!(tb.get(x).unwrap().qty, 1);
        let mut batch = b.batch().unwrap();
        batch.create(&part("held", 7)).unwrap();
        // Leader commits, stores it (acknowledged), closes.
        ta.update(x, |p| p.qty = 2).unwrap();
        ta.update(x, |p| p.qty = 3).unwrap();
        a.flush().await.unwrap();
        drop(ta);
        drop(a);
        sleep(300 + round * 7).await; // the lock goes to B meanwhile
        console_log!("round {round}: commit held batch");
        batch.commit().unwrap();
        let converged = eventually(2_000, || tb.get(x).unwrap().qty == 3).await;
        console_log!("round {round}: converged {converged}; flushing b");
        let fb = timeout(10_000, b.flush()).await;
        console_log!("round {round}: b flush {fb:?}");
        drop(tb);
        drop(b);
        let c = timeout(10_000, Db::open_browser(&name))
            .await
            .expect("reopen hangs")
            .unwrap();
        let stored = c.tree::<Part>().unwrap().get(x).unwrap().qty;
        drop(c);
        let _ = timeout(5_000, Db::delete_browser(&name)).await;
        console_log!("round {round}: stored {stored}");
        if !converged || stored != 3 {
            lost.push((round, converged, stored));
        }
    }
    assert!(
        lost.is_empty(),
        "(round, B saw qty 3, qty stored after B led): {lost:?}"
    );
}

/// Three opens update the same records at once, with flushes: all converge, and what a
/// flush confirmed is what a later open finds.
#[wasm_bindgen_test]
async fn three_tabs_updating_the_same_records_converge() {
    let name = fresh("rt-converge");
    let a = Db::open_browser(&name).await.unwrap();
    let ta = a.tree::<Part>().unwrap();
    let keys: Vec<_> = (0..5).map(|i| ta.create(&part("k", i)).unwrap()).collect();
    let b = Db::open_browser(&name).await.unwrap();
    let c = Db::open_browser(&name).await.unwrap();
    let tb = b.tree::<Part>().unwrap();
    let tc = c.tree::<Part>().unwrap();
    let mut seed = 12345u32;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for i in 0..300u32 {
        let k = keys[(rnd() % 5) as usize];
        let v = 1000 + i;
        match rnd() % 3 {
            0 => ta.update(k, |p| p.qty = v).unwrap(),
            1 => tb.update(k, |p| p.qty = v).unwrap(),
            _ => tc.update(k, |p| p.qty = v).unwrap(),
        }
        if rnd() % 7 == 0 {
            sleep((rnd() % 3) as i32).await;
        }
    }
    b.flush().await.unwrap();
    c.flush().await.unwrap();
    a.flush().await.unwrap();
    let same = eventually(5_000, || qtys(&a) == qtys(&b) && qtys(&b) == qtys(&c)).await;
    let (qa, qb, qc) = (qtys(&a), qtys(&b), qtys(&c));
    assert!(same, "diverged: a {qa:?} b {qb:?} c {qc:?}");
    a.flush().await.unwrap();
    drop((ta, tb, tc));
    drop(c);
    drop(b);
    drop(a);
    let d = Db::open_browser(&name).await.unwrap();
    assert_eq!(qtys(&d), qa, "stored = converged");
    drop(d);
    Db::delete_browser(&name).await.unwrap();
}

/// The same record removed in two tabs at once: the follower's entry changes nothing in
/// the leader; the follower's flush must still return.
#[wasm_bindgen_test]
async fn an_entry_that_changes_nothing_in_the_leader_is_still_flushed() {
    let name = fresh("rt-noop");
    let a = Db::open_browser_with(&name, DbOptions::default(), slow_flush())
        .await
        .unwrap();
    let ta = a.tree::<Part>().unwrap();
    let x = ta.create(&part("x", 1)).unwrap();
    a.flush().await.unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let tb = b.tree::<Part>().unwrap();
    // Both remove x before either hears of the other.
    tb.remove(x).unwrap();
    ta.remove(x).unwrap();
    a.flush().await.unwrap();
    sleep(50).await;
    let flushed = timeout(5_000, b.flush()).await;
    assert!(
        matches!(flushed, Some(Ok(()))),
        "follower flush of an entry that changed nothing in the leader: {flushed:?}"
    );
    drop((ta, tb));
    drop(b);
    drop(a);
    Db::delete_browser(&name).await.unwrap();
}

/// Indexers in the leader and a follower see the same changes (create, update, remove,
/// release, set_state, new_revision), whichever tab makes them; events in the follower
/// carry the kind the change had.
#[wasm_bindgen_test]
async fn indexers_and_revisions_match_across_tabs() {
    let name = fresh("rt-index");
    let a = Db::open_browser(&name).await.unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let sums: Vec<Arc<Mutex<i64>>> = (0..2).map(|_| Arc::new(Mutex::new(0))).collect();
    for (db, sum) in [(&a, &sums[0]), (&b, &sums[1])] {
        let s = sum.clone();
        db.tree::<Part>()
            .unwrap()
            .register_indexer(move |c: &rekord::Change<'_, Part>| {
                let mut t = s.lock().unwrap();
                if let Some(o) = c.old {
                    *t -= i64::from(o.qty.to_native());
                }
                if let Some(n) = c.new {
                    *t += i64::from(n.qty.to_native());
                }
            })
            .unwrap();
    }
    let events_b = b.subscribe();
    let ta = a.tree::<Part>().unwrap();
    let tb = b.tree::<Part>().unwrap();
    let mut keys = Vec::new();
    for i in 0..20 {
        keys.push(ta.create(&part("a", i)).unwrap());
        keys.push(tb.create(&part("b", 100 + i)).unwrap());
    }
    sleep(20).await;
    for (i, k) in keys.iter().enumerate() {
        let t = if i % 2 == 0 { &tb } else { &ta };
        match i % 5 {
            0 => t.update(*k, |p| p.qty += 1000).unwrap(),
            1 => t.remove(*k).unwrap(),
            2 => {
                t.release(*k).unwrap();
            }
            3 => {
                t.release(*k).unwrap();
                t.set_state(*k, 9).unwrap();
                let k1 = t.new_revision(*k).unwrap();
                t.update(k1, |p| p.qty += 7).unwrap();
            }
            _ => {}
        }
        if i % 3 == 0 {
            sleep(1).await;
        }
    }
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    let same = eventually(3_000, || {
        qtys(&a) == qtys(&b) && *sums[0].lock().unwrap() == *sums[1].lock().unwrap()
    })
    .await;
    assert!(
        same,
        "index sums a {} b {}; records equal: {}",
        sums[0].lock().unwrap(),
        sums[1].lock().unwrap(),
        qtys(&a) == qtys(&b)
    );
    // Meta (released, state) equal in both.
    for k in &keys {
        for rev in 0..2 {
            let k = k.with_rev(rev);
            let (ma, mb) = (ta.meta(k).ok(), tb.meta(k).ok());
            assert_eq!(
                ma.map(|m| (m.released, m.state)),
                mb.map(|m| (m.released, m.state)),
                "meta of {k:?}"
            );
        }
    }
    // The follower hears of the leader's release / set_state as such.
    let kinds: Vec<EventKind> = events_b
        .try_iter()
        .filter_map(|e| e.as_record().map(|r| r.kind))
        .collect();
    let released = kinds.iter().any(|k| matches!(k, EventKind::Released));
    let state = kinds
        .iter()
        .any(|k| matches!(k, EventKind::StateChanged { .. }));
    drop((ta, tb, events_b));
    drop(b);
    drop(a);
    Db::delete_browser(&name).await.unwrap();
    assert!(
        released && state,
        "follower events for the leader's release/set_state: released {released}, state changed {state}"
    );
}

/// Many follower opens and closes, then everything closed and reopened: ids never collide
/// and a new follower's range is below every earlier one (tabs.top persisted).
#[wasm_bindgen_test]
async fn ids_never_collide_across_follower_opens_and_a_reopen() {
    let name = fresh("rt-ids");
    let a = Db::open_browser(&name).await.unwrap();
    let ta = a.tree::<Part>().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    ids.insert(ta.create(&part("a", 0)).unwrap().id());
    for i in 0..12 {
        let b = Db::open_browser(&name).await.unwrap();
        let k = b.tree::<Part>().unwrap().create(&part("b", i)).unwrap();
        assert!(ids.insert(k.id()), "id {} twice", k.id());
        b.flush().await.unwrap();
        drop(b);
    }
    let lowest = *ids.iter().filter(|i| **i > 1 << 40).min().unwrap();
    a.flush().await.unwrap();
    drop(ta);
    drop(a);
    // Everything closed: reopen, leader then follower.
    let a = Db::open_browser(&name).await.unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let kb = b.tree::<Part>().unwrap().create(&part("b2", 0)).unwrap();
    assert!(ids.insert(kb.id()), "id {} twice", kb.id());
    assert!(kb.id() < lowest, "new range {} not below {lowest}", kb.id());
    b.flush().await.unwrap();
    // The follower takes over, a new follower joins: still no collisions.
    drop(a);
    let led = eventually(3_000, || b.browser_stats().is_some_and(|s| s.flushes > 0)).await;
    console_log!("ids: b stored after takeover: {led}");
    let c = timeout(15_000, Db::open_browser(&name))
        .await
        .expect("c join hangs")
        .unwrap();
    let kc = c.tree::<Part>().unwrap().create(&part("c", 0)).unwrap();
    let kb2 = b.tree::<Part>().unwrap().create(&part("b3", 0)).unwrap();
    assert!(ids.insert(kc.id()), "id {} twice (c)", kc.id());
    assert!(ids.insert(kb2.id()), "id {} twice (b)", kb2.id());
    let fc = timeout(5_000, c.flush()).await;
    console_log!("ids: c flush after b took over: {fc:?}");
    drop(c);
    drop(b);
    let d = timeout(15_000, Db::open_browser(&name))
        .await
        .expect("reopen hangs")
        .unwrap();
    assert_eq!(qtys(&d).len(), ids.len());
    assert!(
        matches!(fc, Some(Ok(()))),
        "c's flush after the takeover: {fc:?}"
    );
    drop(d);
    Db::delete_browser(&name).await.unwrap();
}

/// A follower of another build (same tree and version, another shape).
#[wasm_bindgen_test]
async fn a_follower_of_another_build() {
    // 1. The leader wrote the tree first: the follower cannot even open it.
    let name = fresh("rt-build1");
    let a = Db::open_browser(&name).await.unwrap();
    a.tree::<Part>().unwrap().create(&part("x", 1)).unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    assert!(matches!(
        b.tree::<other_build::Part>(),
        Err(Error::SchemaChanged { .. })
    ));
    drop(b);
    drop(a);
    Db::delete_browser(&name).await.unwrap();

    // 2. The follower writes the tree first: who is refused?
    let name = fresh("rt-build2");
    let a = Db::open_browser(&name).await.unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let tb = b.tree::<other_build::Part>().unwrap();
    tb.create(&other_build::Part {
        name: "y".into(),
        qty: 2,
        color: "red".into(),
    })
    .unwrap();
    let fb = timeout(5_000, b.flush()).await;
    let leader_tree = a.tree::<Part>().map(|_| ());
    console_log!("build2: follower flush {fb:?}; leader opens its tree: {leader_tree:?}");
    drop(tb);
    drop(b);
    drop(a);
    Db::delete_browser(&name).await.unwrap();
}

/// A tab joins while the leader closes and the new leader is busy (commits every 100 ms):
/// how long does the join take?
#[wasm_bindgen_test]
async fn a_tab_joining_while_the_leader_closes() {
    let name = fresh("rt-joinclose");
    let a = Db::open_browser(&name).await.unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let tb = b.tree::<Part>().unwrap();
    let x = tb.create(&part("x", 0)).unwrap();
    b.flush().await.unwrap();
    let done: Rc<RefCell<Option<(f64, rekord::Result<Db>)>>> = Rc::new(RefCell::new(None));
    let started = now();
    {
        let done = done.clone();
        let name = name.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let r = Db::open_browser(&name).await;
            *done.borrow_mut() = Some((now() - started, r));
        });
    }
    // Hello in flight: the leader goes.
    drop(a);
    let mut i = 0;
    while done.borrow().is_none() && now() - started < 30_000.0 {
        tb.update(x, |p| p.qty = i).unwrap();
        i += 1;
        sleep(100).await;
    }
    let took = done.borrow().as_ref().map(|(t, r)| (*t, r.is_ok()));
    let c = done.borrow_mut().take().and_then(|(_, r)| r.ok());
    if let Some(c) = &c {
        assert!(
            eventually(3_000, || qtys(c) == qtys(&b)).await,
            "c follows b"
        );
    }
    drop(c);
    drop(tb);
    drop(b);
    let _ = Db::delete_browser(&name).await;
    assert!(
        took.is_some_and(|(t, ok)| ok && t < 5_000.0),
        "joining took (ms, ok): {took:?}"
    );
}

/// The new leader goes right after it took over (before its first flush is stored): the
/// third tab leads and nothing any tab's flush confirmed is lost.
#[wasm_bindgen_test]
async fn the_new_leader_closes_right_after_taking_over() {
    let name = fresh("rt-newleader");
    let a = Db::open_browser_with(&name, DbOptions::default(), slow_flush())
        .await
        .unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let c = Db::open_browser(&name).await.unwrap();
    let (ta, tb, tc) = (
        a.tree::<Part>().unwrap(),
        b.tree::<Part>().unwrap(),
        c.tree::<Part>().unwrap(),
    );
    let xa = ta.create(&part("a", 1)).unwrap();
    let xb = tb.create(&part("b", 2)).unwrap();
    let xc = tc.create(&part("c", 3)).unwrap();
    sleep(50).await;
    drop(ta);
    drop(a); // its last flush stores a, b and c
    // B or C takes over; whichever leads first is dropped at once.
    let mut closed_leader = None;
    for _ in 0..400 {
        if b.browser_stats().is_some_and(|s| s.flushes > 0)
            || c.browser_stats().is_some_and(|s| s.flushes > 0)
        {
            break;
        }
        sleep(1).await;
    }
    let b_leads = b.browser_stats().is_some_and(|s| s.flushes > 0);
    let (survivor, ts) = if b_leads {
        drop(tb);
        drop(b);
        closed_leader = Some("b");
        tc.update(xc, |p| p.qty = 30).unwrap();
        (c, tc)
    } else {
        drop(tc);
        drop(c);
        closed_leader = closed_leader.or(Some("c"));
        tb.update(xb, |p| p.qty = 20).unwrap();
        (b, tb)
    };
    let f = timeout(10_000, survivor.flush()).await;
    assert!(matches!(f, Some(Ok(()))), "survivor flush: {f:?}");
    drop(ts);
    drop(survivor);
    let d = Db::open_browser(&name).await.unwrap();
    let q = qtys(&d);
    drop(d);
    Db::delete_browser(&name).await.unwrap();
    let want_b = if closed_leader == Some("b") { 2 } else { 20 };
    let want_c = if closed_leader == Some("b") { 30 } else { 3 };
    let mut want = vec![(xa.id(), 1), (xb.id(), want_b), (xc.id(), want_c)];
    want.sort();
    assert_eq!(q, want, "closed leader {closed_leader:?}");
}

/// A database of tens of MB joined by a second open.
#[wasm_bindgen_test]
async fn a_large_database_is_joined() {
    let name = fresh("rt-large");
    let a = Db::open_browser(&name).await.unwrap();
    let blobs = a.tree::<Blob>().unwrap();
    let mut keys = Vec::new();
    for chunk in 0..40 {
        let mut b = a.batch().unwrap();
        for i in 0..64u32 {
            let data: Vec<u8> = (0..16_384u32)
                .map(|j| (j.wrapping_mul(2_654_435_761) ^ i ^ chunk) as u8)
                .collect();
            keys.push(b.create(&Blob { data }).unwrap());
        }
        b.commit().unwrap();
    }
    a.flush().await.unwrap();
    let bytes = a.browser_stats().unwrap().image_bytes;
    let mem_before = wasm_bindgen::memory()
        .dyn_into::<js_sys::WebAssembly::Memory>()
        .unwrap()
        .buffer()
        .dyn_into::<js_sys::ArrayBuffer>()
        .unwrap()
        .byte_length();
    let t = now();
    let b = timeout(60_000, Db::open_browser(&name)).await;
    let took = now() - t;
    let mem_after = wasm_bindgen::memory()
        .dyn_into::<js_sys::WebAssembly::Memory>()
        .unwrap()
        .buffer()
        .dyn_into::<js_sys::ArrayBuffer>()
        .unwrap()
        .byte_length();
    console_log!(
        "large: image {} MB, join {took:.0} ms, wasm memory {} -> {} MB",
        bytes >> 20,
        mem_before >> 20,
        mem_after >> 20
    );
    let b = b.expect("join timed out").expect("join failed");
    let tb = b.tree::<Blob>().unwrap();
    assert_eq!(tb.keys().unwrap().len(), keys.len());
    let k = tb.create(&Blob { data: vec![1; 10] }).unwrap();
    b.flush().await.unwrap();
    assert!(blobs.get(rekord::Key::new(k.id(), 0)).is_ok());
    drop((blobs, tb));
    drop(b);
    drop(a);
    Db::delete_browser(&name).await.unwrap();
}

use wasm_bindgen::JsCast;

/// A long-lived follower committing and flushing: does wasm memory keep growing?
#[wasm_bindgen_test]
async fn memory_of_a_long_lived_follower() {
    let name = fresh("rt-mem");
    let a = Db::open_browser(&name).await.unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let tb = b.tree::<Part>().unwrap();
    let x = tb.create(&part("x", 0)).unwrap();
    let mem = || {
        wasm_bindgen::memory()
            .dyn_into::<js_sys::WebAssembly::Memory>()
            .unwrap()
            .buffer()
            .dyn_into::<js_sys::ArrayBuffer>()
            .unwrap()
            .byte_length()
    };
    let mut samples = Vec::new();
    for round in 0..6 {
        for i in 0..500 {
            tb.update(x, |p| p.qty = i).unwrap();
        }
        b.flush().await.unwrap();
        samples.push((
            round,
            mem() >> 20,
            b.browser_stats().unwrap().image_bytes >> 10,
        ));
    }
    console_log!("memory (round, wasm MB, image KB): {samples:?}");
    drop(tb);
    drop(b);
    drop(a);
    Db::delete_browser(&name).await.unwrap();
    assert!(samples[5].1 <= samples[1].1 + 8, "{samples:?}");
}

/// Diagnosis of the hang above: does the follower that held a batch ever lead?
#[wasm_bindgen_test]
async fn a_follower_holding_a_batch_takes_over_with_the_leaders_last_commit() {
    for held in [false, true] {
        let name = fresh("rt-diag");
        let a = Db::open_browser(&name).await.unwrap();
        let ta = a.tree::<Part>().unwrap();
        let x = ta.create(&part("x", 1)).unwrap();
        a.flush().await.unwrap();
        let b = Db::open_browser(&name).await.unwrap();
        let tb = b.tree::<Part>().unwrap();
        let mut batch = if held { Some(b.batch().unwrap()) } else { None };
        if let Some(batch) = batch.as_mut() {
            batch.create(&part("held", 7)).unwrap();
        }
        ta.update(x, |p| p.qty = 2).unwrap();
        a.flush().await.unwrap();
        drop(ta);
        drop(a);
        sleep(300).await;
        if let Some(batch) = batch.take() {
            batch.commit().unwrap();
        }
        let mut log = Vec::new();
        for i in 0..30 {
            log.push((i * 100, b.browser_stats().unwrap().flushes));
            sleep(100).await;
        }
        let fb = timeout(3_000, b.flush()).await;
        console_log!(
            "held {held}: flushes over time {log:?}; flush {fb:?}; x = {}",
            tb.get(x).unwrap().qty
        );
        assert!(
            matches!(fb, Some(Ok(()))),
            "held {held}: the new leader flushes: {fb:?}"
        );
        assert_eq!(
            tb.get(x).unwrap().qty,
            2,
            "held {held}: the old leader's last commit is kept"
        );
        assert!(
            b.browser_stats().unwrap().flushes > 0,
            "held {held}: {log:?}"
        );
        drop(tb);
        drop(batch);
        drop(b);
        let _ = timeout(5_000, Db::delete_browser(&name)).await;
    }
}

async fn raw_open_ok(name: &str) -> bool {
    let f = web_sys::window().unwrap().indexed_db().unwrap().unwrap();
    let req = f.open_with_u32(&format!("rekord:{name}"), 1).unwrap();
    let p = js_sys::Promise::new(&mut |resolve, _| {
        let r2 = resolve.clone();
        let ok = wasm_bindgen::closure::Closure::once_into_js(move |_: web_sys::Event| {
            let _ = r2.call1(&wasm_bindgen::JsValue::NULL, &wasm_bindgen::JsValue::TRUE);
        });
        req.set_onsuccess(Some(ok.unchecked_ref()));
        let bad = wasm_bindgen::closure::Closure::once_into_js(move |_: web_sys::Event| {
            let _ = resolve.call1(&wasm_bindgen::JsValue::NULL, &wasm_bindgen::JsValue::FALSE);
        });
        req.set_onerror(Some(bad.unchecked_ref()));
    });
    let r = timeout(2_000, wasm_bindgen_futures::JsFuture::from(p)).await;
    if let Ok(db) = req.result()
        && let Ok(db) = db.dyn_into::<web_sys::IdbDatabase>()
    {
        db.close();
    }
    matches!(r, Some(Ok(v)) if v.is_truthy())
}

/// The simplest takeover: the leader commits, flushes, closes; the idle follower must lead.
#[wasm_bindgen_test]
async fn an_idle_follower_takes_over_and_stores() {
    for variant in 0..3 {
        let name = fresh("rt-diag2");
        let a = Db::open_browser(&name).await.unwrap();
        let ta = a.tree::<Part>().unwrap();
        let x = ta.create(&part("x", 1)).unwrap();
        a.flush().await.unwrap();
        let b = Db::open_browser(&name).await.unwrap();
        let tb = b.tree::<Part>().unwrap();
        if variant >= 1 {
            ta.update(x, |p| p.qty = 2).unwrap();
            a.flush().await.unwrap();
        }
        if variant == 2 {
            // the follower commits something itself after
            sleep(20).await;
            tb.create(&part("y", 5)).unwrap();
        }
        drop(ta);
        drop(a);
        sleep(500).await;
        let quick = timeout(3_000, b.flush()).await;
        let raw = raw_open_ok(&name).await;
        let flushes = b.browser_stats().unwrap().flushes;
        let export = b.export_image().map(|v| v.len());
        let batch = b.batch().map(|_| ());
        console_log!(
            "variant {variant}: b.flush within 3 s {quick:?}; raw idb open ok {raw}; flushes {flushes}; export {export:?}; batch {batch:?}"
        );
        assert!(
            matches!(quick, Some(Ok(()))),
            "variant {variant}: {quick:?}"
        );
        assert!(
            flushes > 0 && export.is_ok() && batch.is_ok() && raw,
            "variant {variant}"
        );
        drop(tb);
        drop(b);
        let _ = timeout(5_000, Db::delete_browser(&name)).await;
    }
}

/// After a follower applies a leader commit, is its copy "between commits"?
#[wasm_bindgen_test]
async fn a_followers_copy_is_exportable_between_commits() {
    let name = fresh("rt-diag3");
    let a = Db::open_browser(&name).await.unwrap();
    let ta = a.tree::<Part>().unwrap();
    let x = ta.create(&part("x", 1)).unwrap();
    let b = Db::open_browser(&name).await.unwrap();
    let tb = b.tree::<Part>().unwrap();
    let e0 = b.export_image().map(|v| v.len());
    ta.update(x, |p| p.qty = 2).unwrap();
    assert!(eventually(2_000, || tb.get(x).unwrap().qty == 2).await);
    let e1 = b.export_image().map(|v| v.len());
    let ea = a.export_image().map(|v| v.len());
    let _ = b.tree::<Blob>().unwrap(); // a commit with no records (schema)
    let e2 = b.export_image().map(|v| v.len());
    {
        let mut batch = b.batch().unwrap();
        batch.create(&part("y", 1)).unwrap();
        batch.abort();
    }
    let e3 = b.export_image().map(|v| v.len());
    tb.create(&part("z", 1)).unwrap();
    let e4 = b.export_image().map(|v| v.len());
    console_log!(
        "export of the follower: joined {e0:?}; after applying {e1:?} (leader {ea:?}); after a schema-only commit {e2:?}; after an aborted batch {e3:?}; after an own commit {e4:?}"
    );
    for (i, e) in [e0, e1, ea, e2, e3, e4].iter().enumerate() {
        assert!(e.is_ok(), "export {i} of the copy between commits: {e:?}");
    }
    drop((ta, tb));
    drop(b);
    drop(a);
    let _ = timeout(5_000, Db::delete_browser(&name)).await;
}

#[wasm_bindgen_test]
async fn new_trees_in_both_tabs_leave_the_copies_exportable() {
    let name = fresh("rt-diag4");
    let a = Db::open_browser(&name).await.unwrap();
    let ta = a.tree::<Part>().unwrap();
    ta.create(&part("x", 1)).unwrap();
    let _ = a.tree::<Blob>().unwrap();
    let la = a.export_image().map(|v| v.len());
    let b = Db::open_browser(&name).await.unwrap();
    let lb0 = b.export_image().map(|v| v.len());
    let tb = b.tree::<Part>().unwrap();
    let lb1 = b.export_image().map(|v| v.len());
    tb.create(&part("y", 1)).unwrap();
    let lb2 = b.export_image().map(|v| v.len());
    #[rekord::record(tree = "third")]
    #[derive(Debug, Clone, PartialEq)]
    struct Third {
        n: u32,
    }
    let t3 = b.tree::<Third>().unwrap();
    let lb3 = b.export_image().map(|v| v.len());
    t3.create(&Third { n: 1 }).unwrap();
    let lb4 = b.export_image().map(|v| v.len());
    let stats = b.browser_stats().unwrap();
    console_log!(
        "leader after 2 trees {la:?}; follower joined {lb0:?}, parts opened {lb1:?}, created {lb2:?}, new tree opened {lb3:?}, created in it {lb4:?}; image_bytes {}",
        stats.image_bytes
    );
    let t3a = a.tree::<Third>().unwrap();
    t3a.create(&Third { n: 2 }).unwrap();
    let la2 = a.export_image().map(|v| v.len());
    console_log!("leader after a new tree {la2:?}");
    for (i, e) in [la, lb0, lb1, lb2, lb3, lb4, la2].iter().enumerate() {
        assert!(e.is_ok(), "export {i} between commits: {e:?}");
    }
    drop((ta, tb, t3, t3a));
    drop(b);
    drop(a);
    let _ = timeout(5_000, Db::delete_browser(&name)).await;
}

/// A leader whose last commit shrank the redb file (redb trims after its final sync_data):
/// its image looks "between commits" (export_image: BatchInProgress), so `welcome` is
/// retried forever and a joining tab cannot open the database.
#[wasm_bindgen_test]
async fn a_tab_joins_after_the_leader_shrank_its_file() {
    let name = fresh("rt-shrink");
    let a = Db::open_browser(&name).await.unwrap();
    let blobs = a.tree::<Blob>().unwrap();
    let mut keys = Vec::new();
    for _ in 0..8 {
        let mut b = a.batch().unwrap();
        for _ in 0..32 {
            keys.push(
                b.create(&Blob {
                    data: vec![7; 16_384],
                })
                .unwrap(),
            );
        }
        b.commit().unwrap();
    }
    let mut dirty_after = None;
    for (i, k) in keys.iter().enumerate().rev() {
        blobs.remove(*k).unwrap();
        if a.export_image().is_err() {
            dirty_after = Some(i);
            break;
        }
    }
    console_log!(
        "leader image between commits after removing down to {dirty_after:?}; export {:?}",
        a.export_image().map(|v| v.len())
    );
    let t = now();
    let b = timeout(20_000, Db::open_browser(&name)).await;
    let took = now() - t;
    let ok = matches!(b, Some(Ok(_)));
    console_log!(
        "join after the shrink: {:?} in {took:.0} ms",
        b.as_ref()
            .map(|r| r.as_ref().map(|_| ()).map_err(|e| e.to_string()))
    );
    drop(b);
    drop(blobs);
    drop(a);
    let _ = timeout(5_000, Db::delete_browser(&name)).await;
    assert!(
        dirty_after.is_none() || ok,
        "a tab could not join the leader after a shrinking commit"
    );
}
