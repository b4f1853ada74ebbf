//! Red team of the synced database shared by tabs (db173baa): reproductions in real
//! Chromium against a real `rekord-server`, driven through
//! `examples/web/tests/tabs_relay.mjs` (any number of tabs).
//!
//! ```text
//! cargo test -p rekord-server --test redteam_tabs_sync -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/tabs.rs"]
mod tabs;

use std::time::Duration;
use tabs::*;

/// A follower joins while the leader writes on (online, each write acknowledged at once);
/// the leader freezes right after it sent the welcome (before its flusher stored the
/// writes since its last flush) and is closed. The follower takes over: the stored image's
/// `sync.next_entry` is behind the numbers the old leader used, and no `Settled` reached
/// the follower (those before the welcome are dropped by `join`): its new writes reuse
/// entry numbers the server already processed.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn takeover_right_after_a_join_reuses_entry_numbers() {
    let mut s = setup();
    let name = "reuse";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", |st| {
        st["online"] == true && st["caught_up"] == true
    });
    s.tabs.create(0, "first", 1);
    s.tabs.op("new", 1);
    s.tabs.op("front", 0);
    // Tab 0 writes on; it freezes on its own welcome (an `[message, image]` post).
    let js = writer_js("Array.isArray(msg)");
    s.tabs.ok(0, &js);
    std::thread::sleep(Duration::from_millis(300));
    let a = s.tabs.ok(0, "return window.__n;");
    std::thread::sleep(Duration::from_millis(400));
    let b = s.tabs.ok(0, "return window.__n;");
    eprintln!("tab 0 wrote {a} then {b} 400 ms later");
    s.tabs.open(1, name);
    let joined = s.tabs.count(1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.tabs.count(1), joined, "tab 0 froze at the welcome");
    eprintln!("tab 1 joined with {joined} parts");
    s.tabs.op("close_tab", 0);
    let st = s.tabs.wait_status(1, "tab 1 to sync by itself", |st| {
        st["online"] == true && st["outbox"] == 0 && st["caught_up"] == true
    });
    eprintln!("after takeover: {st}");
    let mut after = Vec::new();
    for i in 0..5u32 {
        after.push(s.tabs.create(1, &format!("after {i}"), 300 + i));
    }
    let st = s.tabs.wait_status(1, "tab 1's outbox to drain", |st| {
        st["online"] == true && st["outbox"] == 0
    });
    eprintln!("after the writes: {st}");
    let tab_count = s.tabs.count(1);
    let ok = eventually("native to have what tab 1 has", || {
        s.parts.len().unwrap() == tab_count
    });
    let native = native_parts(&s.parts);
    let missing: Vec<u64> = after
        .iter()
        .copied()
        .filter(|id| !native.iter().any(|(n, _, _)| n == id))
        .collect();
    eprintln!(
        "tab 1 count {tab_count}, native count {}, rejected {}, post-takeover writes missing at native: {missing:?}",
        native.len(),
        st["rejected"]
    );
    eprintln!(
        "tab 1 still has them: {:?}",
        tab_has(&mut s.tabs, 1, &after)
    );
    assert!(ok && missing.is_empty() && st["rejected"] == 0, "diverged");
    drop(s.tabs);
    drop(s.server);
    drop(s.dir);
}

/// The same join-then-crash window with the server down: the writes the old leader made
/// between its last flush and the welcome are in the new leader's records but in no
/// outbox (neither the stored image's nor a carried commit's): the server never gets them.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn takeover_right_after_a_join_while_offline_loses_writes() {
    let mut s = setup();
    let name = "offline-gap";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", |st| {
        st["online"] == true && st["caught_up"] == true
    });
    s.tabs.create(0, "first", 1);
    s.tabs.wait_status(0, "pushed", |st| st["outbox"] == 0);
    s.tabs.op("new", 1);
    s.tabs.op("front", 0);
    let server = s.server.take().unwrap();
    server.kill();
    s.tabs
        .wait_status(0, "tab 0 offline", |st| st["online"] == false);
    let js = writer_js("Array.isArray(msg)");
    s.tabs.ok(0, &js);
    std::thread::sleep(Duration::from_millis(300));
    s.tabs.open(1, name);
    let joined = s.tabs.count(1);
    eprintln!("tab 1 joined with {joined} parts");
    s.tabs.op("close_tab", 0);
    std::thread::sleep(Duration::from_millis(1500));
    let st = s.tabs.status(1);
    eprintln!("after takeover (server down): {st}");
    s.server = Some(start(&s.data, &s.addr.to_string(), s.page_port));
    let st = s.tabs.wait_status(1, "tab 1 to sync by itself", |st| {
        st["online"] == true && st["outbox"] == 0 && st["caught_up"] == true
    });
    eprintln!("after the restart: {st}");
    let tab_count = s.tabs.count(1);
    let ok = eventually("native to have what tab 1 has", || {
        s.parts.len().unwrap() == tab_count
    });
    eprintln!(
        "tab 1 count {tab_count}, native count {}, rejected {}",
        s.parts.len().unwrap(),
        st["rejected"]
    );
    assert!(ok, "the native replica lacks writes the tabs have");
    drop(s.tabs);
    drop(s.server);
    drop(s.dir);
}

/// Three tabs. The leader carves a range for the third tab at its welcome; the third
/// creates a record; the leader crashes before its flusher stored the carve. The second
/// tab takes over with the stored image's ranges (the carved range back in them) and
/// `skip_used_ids` moves its next id to just past the third tab's record: both tabs now
/// allocate the same ids.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn takeover_hands_out_a_third_tabs_ids_again() {
    let mut s = setup();
    let name = "ids";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", |st| {
        st["online"] == true && st["caught_up"] == true
    });
    s.tabs.create(0, "first", 1);
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.op("front", 0);
    let js = writer_js(
        "msg instanceof Uint8Array && new TextDecoder('latin1').decode(msg).includes('GGGG-marker')",
    );
    s.tabs.ok(0, &js);
    std::thread::sleep(Duration::from_millis(300));
    // From now on tab 0's flushes fail (as if it crashed before its next flush): the carve
    // of tab 2's range stays out of the stored image. (Deterministic; without this the
    // test fails about one run in four, when the crash beats the flusher.)
    s.tabs.ok(
        0,
        "const tx = IDBDatabase.prototype.transaction; IDBDatabase.prototype.transaction = function (n, m, o) { if (m === 'readwrite') throw new Error('red team: no flush'); return tx.call(this, n, m, o); }; return null;",
    );
    let js = format!(
        "{} return window.db.create('GGGG-marker', 1);",
        s.tabs.open_js(name)
    );
    let g0 = s.tabs.ok(2, &js).as_f64().unwrap();
    eprintln!("tab 2 created {g0}");
    std::thread::sleep(Duration::from_millis(200));
    s.tabs.op("close_tab", 0);
    s.tabs.wait_status(1, "tab 1 to sync by itself", |st| {
        st["online"] == true && st["outbox"] == 0 && st["caught_up"] == true
    });
    // Tab 1 is tab "1" of the relay; after tab 0 closed, tab 2 is still tab 2.
    let mut leader_ids = Vec::new();
    let mut third_ids = Vec::new();
    for i in 0..3u32 {
        leader_ids.push(s.tabs.create(1, &format!("leader {i}"), 500 + i));
        third_ids.push(s.tabs.create(2, &format!("third {i}"), 600 + i));
    }
    eprintln!("new leader's ids {leader_ids:?}, third tab's ids {third_ids:?}");
    let st = s
        .tabs
        .wait_status(1, "drained", |st| st["online"] == true && st["outbox"] == 0);
    std::thread::sleep(Duration::from_millis(500));
    let native = native_parts(&s.parts);
    let both: Vec<_> = leader_ids
        .iter()
        .chain(&third_ids)
        .map(|id| {
            (
                *id,
                native
                    .iter()
                    .find(|(n, _, _)| n == id)
                    .map(|(_, name, q)| format!("{name} {q}")),
            )
        })
        .collect();
    eprintln!("at native: {both:?}; leader status {st}");
    let t1 = tab_has(&mut s.tabs, 1, &leader_ids);
    let t2 = tab_has(&mut s.tabs, 2, &third_ids);
    eprintln!("tab 1: {t1:?}\ntab 2: {t2:?}");
    let collide: Vec<_> = leader_ids
        .iter()
        .filter(|i| third_ids.contains(i))
        .collect();
    assert!(
        collide.is_empty(),
        "two tabs allocated the same ids: {collide:?}"
    );
    drop(s.tabs);
    drop(s.server);
    drop(s.dir);
}

/// Held: a follower writes a burst and the leader is closed (ordinary close) at once; the
/// follower takes over and everything arrives once, nothing refused.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn follower_burst_then_leader_closed() {
    let mut s = setup();
    let name = "burst-close";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", |st| {
        st["online"] == true && st["caught_up"] == true
    });
    s.tabs.create(0, "first", 1);
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    s.tabs.create(1, "warm", 2);
    let ids = s.tabs.ok(
        1,
        "const ids = []; for (let i = 0; i < 40; i++) ids.push(window.db.create('fb ' + i, i)); return ids.join(',');",
    );
    s.tabs.op("close_tab", 0);
    let ids: Vec<u64> = ids
        .as_str()
        .unwrap()
        .split(',')
        .map(|x| x.parse::<f64>().unwrap() as u64)
        .collect();
    let st = s.tabs.wait_status(1, "tab 1 to sync by itself", |st| {
        st["online"] == true && st["outbox"] == 0 && st["caught_up"] == true
    });
    let tab_count = s.tabs.count(1);
    let ok = eventually("native count", || s.parts.len().unwrap() == tab_count);
    eprintln!(
        "ids {} tab1 count {tab_count} native {} status {st}",
        ids.len(),
        s.parts.len().unwrap()
    );
    let log = std::fs::read_to_string(s.data.with_extension("log")).unwrap_or_default();
    for l in log.lines().filter(|l| {
        l.contains("WARN") || l.contains("reject") || l.contains("refus") || l.contains("copy")
    }) {
        eprintln!("server: {l}");
    }
    assert!(ok && tab_count == 42 && st["rejected"] == 0);
}
