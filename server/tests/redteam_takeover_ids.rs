//! Red team: ids of a synced database shared by tabs, after commit 49830927 ("a takeover
//! gives up every id of the old leader's ranges"). Real Chromium against a real
//! `rekord-server`, driven through `examples/web/tests/tabs_relay.mjs` (the web example
//! must be built: `bash examples/web/build.sh`).
//!
//! ```text
//! TMPDIR=target/chrome-tmp cargo test -p rekord-server --test redteam_takeover_ids -- --ignored --nocapture --test-threads 1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/tabs.rs"]
mod tabs;

use std::time::{Duration, Instant};
use tabs::*;

/// Tab `t` tries to create one part named `name` every 100 ms until one succeeds or `secs`
/// pass: its id and how long it took, or `None` (every try was out of ids).
fn create_within(s: &mut Setup, t: usize, name: &str, secs: u64) -> Option<(u64, Duration)> {
    let start = Instant::now();
    loop {
        let id = s
            .tabs
            .ok(t, &format!("return window.db.create({name:?}, 1);"))
            .as_f64()
            .unwrap();
        if id >= 0.0 {
            return Some((id as u64, start.elapsed()));
        }
        if start.elapsed() > Duration::from_secs(secs) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until tab `t` leads.
fn wait_leads(s: &mut Setup, t: usize) {
    let start = Instant::now();
    while s.tabs.ok(t, "return window.db.leads();") != true {
        assert!(start.elapsed() < LIMIT, "tab {t} never took over");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A follower that used up the ids carved for it, while the leading tab is idle (a page
/// open in a background tab, the user working in another). The leader's next carve is the
/// upper half of what it has left, which lies *below* the follower's next id, and a
/// follower takes ids only upward from its next one (`alloc_id`); the carve also did not
/// wake the leader's sync client, which asked the server for more only after an outbox
/// change of its own. So the follower was out of ids while online for as long as the
/// leader wrote nothing (found by this red team; it failed then: "got no id for 15 s").
/// Now the follower moves its next id down to the new range (`tabs::take_range`) and the
/// carve wakes the leader's sync client.
///
/// Ranges of 200 ids make it quick; with the default 10,000 the same happened after 5,000
/// creates in the follower.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn an_idle_leader_leaves_a_follower_without_ids() {
    let mut s = setup();
    let name = "idle-leader";
    s.tabs.open_ranged(0, name, 200);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.open_ranged(1, name, 200);
    // Its carve: the upper half of the leader's 200.
    let mut made = s.tabs.burst(1, "f", 100);
    s.tabs.wait_status(0, "tab 0 to send tab 1's parts", online);
    let more = create_within(&mut s, 1, "more", 15);
    eprintln!("tab 1 after its carve, the leader idle: {more:?}");
    let mut bad = Vec::new();
    match more {
        Some((id, _)) => made.push((id, "more".to_owned(), 1)),
        None => bad.push(
            "tab 1 (a follower, online) got no id for 15 s after using up its carved range, \
             while the leading tab had ids left and was idle"
                .to_owned(),
        ),
    }
    // The leader writes once: its sync client wakes, finds itself short and asks the
    // server; the follower's next carve comes from the new, higher range.
    made.extend(s.tabs.burst(0, "l", 1));
    match create_within(&mut s, 1, "after", 15) {
        Some((id, took)) => {
            eprintln!("tab 1 once the leader wrote: id {id} after {took:?}");
            made.push((id, "after".to_owned(), 1));
        }
        None => bad.push("tab 1 got no id even after the leader wrote".to_owned()),
    }
    s.tabs.wait_status(0, "tab 0 drained", online);
    bad.extend(compare(&s, &made, made.len() as u64));
    server_log(&s);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// A follower whose carve was `(0, 0)` (the leader had 1 id left: ranges of 2) takes over.
/// `offline`: the server is down at the takeover: the new leader has no id at all (a
/// clear out-of-ids, `create` answers -1), and `reload`: it is reloaded (alone, so it opens
/// as a plain leader from what it stored) before the server comes back. Once the server is
/// back (or at once when online) it must get ids within a few seconds; every part must
/// reach the native replica, no id twice.
fn zero_carve(offline: bool, reload: bool) -> Vec<String> {
    let mut s = setup();
    let name = "zero-carve";
    s.tabs.open_ranged(0, name, 2);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = s.tabs.burst(0, "a", 1);
    s.tabs.wait_status(0, "tab 0 pushed", online);
    s.tabs.op("new", 1);
    s.tabs.open_ranged(1, name, 2);
    let mut bad = Vec::new();
    if offline {
        s.server.take().unwrap().kill();
        s.tabs
            .wait_status(0, "tab 0 offline", |st| st["online"] == false);
    }
    s.tabs.op("crash", 0);
    wait_leads(&mut s, 1);
    let first = s
        .tabs
        .eval(1, "return window.db.create('first', 1);")
        .map(|v| v.as_f64().unwrap_or(f64::NAN));
    eprintln!("offline {offline}: the new leader's first create: {first:?}");
    if offline {
        match first {
            Ok(id) if id < 0.0 => {}
            Ok(id) => {
                // Not expected (no ids of its own, the old leader's given up), but kept.
                made.push((id as u64, "first".to_owned(), 1));
                bad.push(format!(
                    "offline, with no carved ids, the new leader created id {id}"
                ));
            }
            Err(e) => bad.push(format!("offline create failed with another error: {e}")),
        }
        if reload {
            s.tabs.ok(1, "await window.db.flush(); return null;");
            s.tabs.op("reload", 1);
            s.tabs.open_ranged(1, name, 2);
            let again = s.tabs.eval(1, "return window.db.create('again', 1);");
            eprintln!("after the reload, offline: {again:?}");
            if let Ok(v) = &again
                && v.as_f64().unwrap_or(-1.0) >= 0.0
            {
                made.push((v.as_f64().unwrap() as u64, "again".to_owned(), 1));
            }
        }
        s.server = Some(start(&s.data, &s.addr.to_string(), s.page_port));
    } else if let Ok(id) = first
        && id >= 0.0
    {
        made.push((id as u64, "first".to_owned(), 1));
    }
    match create_within(&mut s, 1, "online", 20) {
        Some((id, took)) => {
            eprintln!("offline {offline} reload {reload}: the new leader got an id after {took:?}");
            if took > Duration::from_secs(8) {
                bad.push(format!("the new leader waited {took:?} for ids"));
            }
            made.push((id, "online".to_owned(), 1));
        }
        None => bad.push("the new leader got no id within 20 s of the server".to_owned()),
    }
    made.extend(s.tabs.burst(1, "b", 10));
    if !offline {
        s.tabs.ok(1, "await window.db.flush(); return null;");
        s.tabs.op("reload", 1);
        s.tabs.open_ranged(1, name, 2);
        made.extend(s.tabs.burst(1, "c", 5));
    }
    let st = s.tabs.wait_status(1, "tab 1 to sync", online);
    bad.extend(compare(&s, &made, made.len() as u64));
    if st["rejected"] != 0 {
        bad.push(format!("rejected {st}"));
    }
    server_log(&s);
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_follower_with_no_carved_ids_takes_over() {
    let mut all = Vec::new();
    for (offline, reload) in [(false, false), (true, false), (true, true)] {
        let bad = zero_carve(offline, reload);
        eprintln!("offline {offline} reload {reload}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("offline {offline} reload {reload}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Tab 1 hears the channel 3 s late; tab 2 joins (its ids carved below tab 1's) and the
/// leader, whose storage refuses since before that join, crashes at once: tab 1 takes over
/// without having heard of tab 2's range, from a base (stored image or its welcome copy)
/// that still has it. It must not create in it (the earlier rule, 1,024 ids left to the old
/// leader, did: its next id was 1,024 past the old leader's creates, inside tab 2's range).
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_takeover_keeps_out_of_a_range_carved_for_a_tab_it_never_heard_of() {
    let mut s = setup();
    let name = "unheard-carve";
    s.tabs.open_ranged(0, name, 4000);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = s.tabs.burst(0, "a", 5);
    s.tabs.wait_status(0, "tab 0 pushed", online);
    s.tabs.op("new", 1);
    s.tabs.ok(1, SWITCHABLE_SLOW);
    s.tabs.open_ranged(1, name, 4000);
    s.tabs.ok(0, STORAGE_REFUSES);
    s.tabs.ok(1, &slow_now(3000));
    s.tabs.op("new", 2);
    s.tabs.open_ranged(2, name, 4000);
    s.tabs.op("crash", 0);
    wait_leads(&mut s, 1);
    s.tabs.ok(1, &slow_now(0));
    made.extend(s.tabs.burst(1, "l", 150));
    made.extend(s.tabs.burst(2, "f", 150));
    let ids1: Vec<u64> = made
        .iter()
        .filter(|m| m.1.starts_with('l'))
        .map(|m| m.0)
        .collect();
    let ids2: Vec<u64> = made
        .iter()
        .filter(|m| m.1.starts_with('f'))
        .map(|m| m.0)
        .collect();
    eprintln!(
        "new leader ids {:?}..{:?}, follower ids {:?}..{:?}",
        ids1.first(),
        ids1.last(),
        ids2.first(),
        ids2.last()
    );
    std::thread::sleep(Duration::from_millis(3500));
    let st = s.tabs.wait_status(1, "tab 1 to sync", online);
    let mut bad = compare(&s, &made, made.len() as u64);
    let count = s.tabs.count(1);
    if count != made.len() as u64 {
        bad.push(format!("tab 1 has {count}, expected {}", made.len()));
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {st}"));
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:#?}");
}
