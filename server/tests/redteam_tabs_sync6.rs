//! Red team, round 6, of the synced database shared by tabs: commits 7e90afe3 (followers keep
//! other tabs' entries, `State::others`, requeued by a tab taking over; `join` asks again as
//! the same tab) and 01981cef (`tabs.applied.<tab>` in a synced leader's commits, noted by
//! `adopt_stored`). Real Chromium against a real `rekord-server`.
//!
//! ```text
//! cargo test -p rekord-server --test redteam_tabs_sync6 -- --ignored --nocapture --test-threads 1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/tabs.rs"]
mod tabs;

use std::time::{Duration, Instant};
use tabs::*;

/// Checks the last tab and native against `made` (creates only); every tab in `others`
/// must agree; the server's change log must hold exactly one change per create.
fn check_end(
    s: &mut Setup,
    last: usize,
    others: &[usize],
    made: &[(u64, String, u32)],
) -> Vec<String> {
    let st = s.tabs.wait_status(last, "the last tab to sync", online);
    let tab_count = s.tabs.count(last);
    eprintln!("tab {last} {st} count {tab_count}, made {}", made.len());
    let mut bad = vec![];
    let lack = native_lacks(s, made, 10);
    if !lack.is_empty() {
        bad.push(format!(
            "{} writes missing or wrong at native, e.g. {:?}",
            lack.len(),
            &lack[..lack.len().min(6)]
        ));
    }
    let mut ids: Vec<u64> = made.iter().map(|m| m.0).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    if ids.len() != n {
        bad.push(format!("an id twice: {n} ids, {} distinct", ids.len()));
    }
    let nat = native_parts(&s.parts).len() as u64;
    if nat != tab_count || nat != made.len() as u64 {
        bad.push(format!(
            "native has {nat} parts, tab {last} {tab_count}, made {}",
            made.len()
        ));
    }
    let ids: Vec<u64> = made.iter().map(|m| m.0).collect();
    let have = tab_has(&mut s.tabs, last, &ids);
    let wrong: Vec<String> = made
        .iter()
        .zip(&have)
        .filter(|((_, name, q), (_, got))| {
            got.as_deref()
                .is_none_or(|g| !g.starts_with(&format!("{name} {q} ")))
        })
        .take(6)
        .map(|((id, name, q), (_, got))| format!("{id} {name} {q}: tab has {got:?}"))
        .collect();
    if !wrong.is_empty() {
        bad.push(format!("tab {last} lacks or differs: {wrong:?}"));
    }
    for &o in others {
        let start = Instant::now();
        while s.tabs.count(o) != tab_count && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let theirs = tab_has(&mut s.tabs, o, &ids);
        let differ: Vec<String> = have
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.1 != b.1)
            .take(5)
            .map(|(a, b)| format!("{}: {:?} vs {:?}", a.0, a.1, b.1))
            .collect();
        let c = s.tabs.count(o);
        if c != tab_count || !differ.is_empty() {
            bad.push(format!(
                "tab {o} differs from tab {last}: count {c} vs {tab_count}; {differ:?}"
            ));
        }
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    // Only creates: a cursor past them means a change was sent twice.
    let st = s.tabs.status(last);
    if st["cursor"] != made.len() as u64 {
        bad.push(format!(
            "the server logged {} changes for {} creates",
            st["cursor"],
            made.len()
        ));
    }
    server_log(s);
    bad
}

/// Tab 0 leads; tab 3 writes `held` while tab 0 is frozen (tabs 1 and 2 keep them); tab 0 is
/// closed; the first new leader crashes `crash_ms` after it leads; the other takes over.
/// Tab 3 writes before and after. Everything once at native.
fn two_takeovers(crash_ms: u64, slow3: u32) -> Vec<String> {
    let mut s = setup();
    let name = "kept2";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    for t in 1..4 {
        s.tabs.op("new", t);
        if t == 3 {
            s.tabs.ok(3, SWITCHABLE_SLOW);
        }
        s.tabs.open(t, name);
    }
    let mut made = vec![];
    for t in 0..4 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
    }
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    std::thread::sleep(Duration::from_millis(500));
    s.tabs.ok(0, FREEZE);
    std::thread::sleep(Duration::from_millis(100));
    if slow3 > 0 {
        s.tabs.ok(3, &slow_now(slow3));
    }
    made.extend(s.tabs.burst(3, "held", 10));
    std::thread::sleep(Duration::from_millis(100));
    s.tabs.op("close_tab", 0);
    let l1 = wait_leader(&mut s, &[1, 2]);
    eprintln!("tab {l1} leads first");
    std::thread::sleep(Duration::from_millis(crash_ms));
    s.tabs.op("crash", l1);
    let rest: Vec<usize> = [1usize, 2].into_iter().filter(|t| *t != l1).collect();
    let l2 = wait_leader(&mut s, &rest);
    eprintln!("tab {l2} leads second");
    made.extend(s.tabs.burst(3, "after", 5));
    made.extend(s.tabs.burst(l2, "l", 3));
    std::thread::sleep(Duration::from_millis(u64::from(slow3) * 2 + 1000));
    s.tabs.ok(3, "await window.db.flush(); return null;");
    check_end(&mut s, l2, &[3], &made)
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn kept_entries_across_two_takeovers_in_a_row() {
    let mut all = vec![];
    for (crash, slow) in [(0u64, 0u32), (400, 0), (1500, 0), (0, 1500), (400, 1500)] {
        let bad = two_takeovers(crash, slow);
        eprintln!("crash {crash} slow {slow}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("crash {crash} slow {slow}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// The new leader (tab 1) hears the channel `ms` late. Tab 2 writes `w`; tab 0 applies it
/// (commits), and with `flush` stores it, then crashes (not flushed: its last commits are
/// only on the channel, which tab 1 hears late, and in tab 2's others).
fn slow_new_leader(ms: u32, flush: bool) -> Vec<String> {
    let mut s = setup();
    let name = "slowlead";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.ok(1, SWITCHABLE_SLOW);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    s.tabs.op("new", 3);
    s.tabs.open(3, name);
    let mut made = vec![];
    for t in 0..4 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
    }
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    std::thread::sleep(Duration::from_millis(500));
    s.tabs.ok(1, &slow_now(ms));
    made.extend(s.tabs.burst(2, "w", 5));
    made.extend(s.tabs.burst(3, "x", 5));
    if flush {
        s.tabs.ok(0, "await window.db.flush(); return null;");
        made.extend(s.tabs.burst(2, "w2", 3));
    } else {
        std::thread::sleep(Duration::from_millis(30));
    }
    s.tabs.op("crash", 0);
    let l = wait_leader(&mut s, &[1, 2, 3]);
    eprintln!("tab {l} leads");
    made.extend(s.tabs.burst(2, "y", 3));
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 1500));
    made.extend(s.tabs.burst(l, "l", 3));
    let others: Vec<usize> = [1usize, 2, 3].into_iter().filter(|t| *t != l).collect();
    check_end(&mut s, l, &others, &made)
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_slow_new_leader_and_the_old_leaders_late_commits() {
    let mut all = vec![];
    for (ms, flush) in [(600u32, false), (600, true), (2000, false), (2000, true)] {
        let bad = slow_new_leader(ms, flush);
        eprintln!("ms {ms} flush {flush}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms} flush {flush}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Tab 2 writes while tab 0 is frozen, is reloaded (its entries live on only in tabs 1 and 3),
/// tab 0 is closed, a new leader requeues the old incarnation's entries; the reloaded tab 2
/// opens again and writes.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_tab_reloaded_after_writing_while_no_leader() {
    let mut s = setup();
    let name = "reloadheld";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    for t in 1..4 {
        s.tabs.op("new", t);
        s.tabs.open(t, name);
    }
    let mut made = vec![];
    for t in 0..4 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
    }
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    std::thread::sleep(Duration::from_millis(500));
    s.tabs.ok(0, FREEZE);
    std::thread::sleep(Duration::from_millis(100));
    made.extend(s.tabs.burst(2, "held", 10));
    std::thread::sleep(Duration::from_millis(200));
    s.tabs.op("reload", 2);
    s.tabs.op("close_tab", 0);
    let l = wait_leader(&mut s, &[1, 3]);
    eprintln!("tab {l} leads");
    s.tabs.open(2, name);
    made.extend(s.tabs.burst(2, "new2", 5));
    made.extend(s.tabs.burst(l, "l", 3));
    s.tabs.ok(2, "await window.db.flush(); return null;");
    // The leader crashes too: tab 2 (new incarnation) or the other takes over.
    s.tabs.ok(l, "await window.db.flush(); return null;");
    s.tabs.wait_status(l, "leader synced", online);
    s.tabs.op("crash", l);
    let other = if l == 1 { 3 } else { 1 };
    let l2 = wait_leader(&mut s, &[2, other]);
    eprintln!("tab {l2} leads second");
    made.extend(s.tabs.burst(2, "end2", 3));
    made.extend(s.tabs.burst(other, "endo", 3));
    let rest: Vec<usize> = [2usize, other].into_iter().filter(|t| *t != l2).collect();
    let bad = check_end(&mut s, l2, &rest, &made);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Tab 1 hears the channel `ms` late: its first welcome comes during its second try (the
/// leader carves ids twice). Right after it joined, it writes, and the leader writes and
/// crashes; tab 1 or tab 2 takes over.
fn late_joiner_then_crash(ms: u32) -> Vec<String> {
    let mut s = setup();
    let name = "latejoin2";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    let mut made = s.tabs.burst(0, "a0", 5);
    made.extend(s.tabs.burst(2, "a2", 5));
    s.tabs.op("new", 1);
    s.tabs.ok(1, SWITCHABLE_SLOW);
    s.tabs.ok(1, &slow_now(ms));
    let start = Instant::now();
    s.tabs.open(1, name);
    eprintln!("tab 1 joined in {:?}", start.elapsed());
    made.extend(s.tabs.burst(1, "j", 5));
    made.extend(s.tabs.burst(0, "b0", 5));
    made.extend(s.tabs.burst(2, "b2", 5));
    s.tabs.op("crash", 0);
    let l = wait_leader(&mut s, &[1, 2]);
    eprintln!("tab {l} leads");
    made.extend(s.tabs.burst(1, "k", 5));
    made.extend(s.tabs.burst(2, "c2", 5));
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 1500));
    s.tabs.ok(1, "await window.db.flush(); return null;");
    s.tabs.ok(2, "await window.db.flush(); return null;");
    let others: Vec<usize> = [1usize, 2].into_iter().filter(|t| *t != l).collect();
    check_end(&mut s, l, &others, &made)
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_late_joiner_then_the_leader_crashes() {
    let mut all = vec![];
    for ms in [1300u32, 2500] {
        let bad = late_joiner_then_crash(ms);
        eprintln!("ms {ms}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Tab 1 asks to join while the leader (tab 0) is frozen (no answer, it asks again as the
/// same tab), then tab 0 is closed: tab 1 leads or joins tab 2, and everything is there.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_joiner_asking_a_frozen_leader_that_is_closed() {
    let mut s = setup();
    let name = "frozenjoin";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    let mut made = s.tabs.burst(0, "a0", 5);
    made.extend(s.tabs.burst(2, "a2", 5));
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    std::thread::sleep(Duration::from_millis(300));
    s.tabs.ok(0, FREEZE);
    made.extend(s.tabs.burst(2, "held", 5));
    s.tabs.op("new", 1);
    open_bg(&mut s, 1, name);
    std::thread::sleep(Duration::from_millis(2500));
    s.tabs.op("close_tab", 0);
    let opened = wait_open(&mut s, 1, 60);
    eprintln!("tab 1 open: {opened:?}");
    let mut bad = vec![];
    if let Err(e) = opened {
        bad.push(format!("tab 1 did not open: {e}"));
        assert!(bad.is_empty(), "{bad:?}");
    }
    let l = wait_leader(&mut s, &[1, 2]);
    eprintln!("tab {l} leads");
    made.extend(s.tabs.burst(1, "j", 5));
    made.extend(s.tabs.burst(2, "b2", 5));
    s.tabs.ok(1, "await window.db.flush(); return null;");
    s.tabs.ok(2, "await window.db.flush(); return null;");
    let others: Vec<usize> = [1usize, 2].into_iter().filter(|t| *t != l).collect();
    bad.extend(check_end(&mut s, l, &others, &made));
    assert!(bad.is_empty(), "{bad:#?}");
}

/// A plain shared database: tab 0 leads and is frozen; tabs 1, 2, 3 write (each other's
/// entries kept); tab 0 is closed; the first new leader takes over slowly (IndexedDB opens
/// 1.5 s late), and crashes; the other takes over. A new tab opens the stored image.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_plain_database_with_kept_entries_and_two_takeovers() {
    let mut s = setup_page("harness.html");
    let open = |name: &str| format!("window.s = await window.Shared.open({name:?}); return null;");
    s.tabs.ok(0, &open("plainkept"));
    for t in 1..4usize {
        s.tabs
            .send_op(serde_json::json!({"op": "new", "tab": t, "page": "harness.html"}));
        s.tabs.ok(t, SLOW_OPEN);
        s.tabs.ok(t, &open("plainkept"));
    }
    s.tabs.ok(
        0,
        "for (let n = 0; n < 10; n++) window.s.write(0, n, 100); await window.s.flush(); return null;",
    );
    for t in 1..4usize {
        s.tabs.ok(t, "window.__openDelay = 1500; return null;");
    }
    std::thread::sleep(Duration::from_millis(300));
    s.tabs.ok(0, FREEZE);
    std::thread::sleep(Duration::from_millis(100));
    for t in [1usize, 2, 3] {
        s.tabs.ok(
            t,
            &format!("for (let n = 0; n < 20; n++) window.s.write({t}, n, 100); return null;"),
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    s.tabs.op("close_tab", 0);
    // The first to take over crashes while it opens IndexedDB (mid-takeover), having
    // written meanwhile.
    std::thread::sleep(Duration::from_millis(400));
    for t in [1usize, 2, 3] {
        s.tabs.ok(
            t,
            &format!("for (let n = 20; n < 25; n++) window.s.write({t}, n, 100); return null;"),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    // Who holds the lock (mid-takeover) is not visible: crash tab 1 (the first in line).
    s.tabs.op("crash", 1);
    let start = Instant::now();
    let l = loop {
        if let Some(t) = [2usize, 3]
            .into_iter()
            .find(|t| s.tabs.ok(*t, "return window.s.leads();") == true)
        {
            break t;
        }
        assert!(start.elapsed() < LIMIT, "no takeover");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("tab {l} leads");
    for t in [2usize, 3] {
        s.tabs.ok(
            t,
            &format!(
                "for (let n = 25; n < 30; n++) window.s.write({t}, n, 100); await window.s.flush(); return null;"
            ),
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let counts = |tabs: &mut Tabs, t: usize| -> Vec<String> {
        (0..4)
            .map(|w| {
                let upto = [10, 25, 30, 30][w];
                let c = tabs.ok(t, &format!("return window.s.count({w});"));
                let m = tabs.eval(t, &format!("return window.s.missing({w}, {upto});"));
                format!("{c}/{m:?}")
            })
            .collect()
    };
    let want: Vec<String> = [10, 25, 30, 30]
        .iter()
        .map(|c| format!("{c}/Ok(Number(0))"))
        .collect();
    let mut bad = vec![];
    for t in [2usize, 3] {
        let c = counts(&mut s.tabs, t);
        eprintln!("tab {t} {c:?}");
        if c != want {
            bad.push(format!("tab {t} has {c:?}, want {want:?}"));
        }
    }
    s.tabs.ok(l, "await window.s.flush(); return null;");
    s.tabs
        .send_op(serde_json::json!({"op": "new", "tab": 4, "page": "harness.html"}));
    s.tabs.ok(4, &open("plainkept"));
    let c4 = counts(&mut s.tabs, 4);
    eprintln!("tab 4 (new) {c4:?}");
    if c4 != want {
        bad.push(format!("a new tab has {c4:?}, want {want:?}"));
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// Tab 1 hears the channel `ms` late and asks to join; tab 0 (the leader) answers, writes
/// and crashes `crash_ms` after tab 1 asked (before tab 1 heard the answer): tab 1's second
/// question reaches tab 2 (the new leader) or nobody. With `alone`, there is no tab 2: tab 1
/// takes over itself.
fn joiner_and_crash(ms: u32, crash_ms: u64, alone: bool) -> Vec<String> {
    let mut s = setup();
    let name = "joincrash";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = s.tabs.burst(0, "a0", 5);
    if !alone {
        s.tabs.op("new", 2);
        s.tabs.open(2, name);
        made.extend(s.tabs.burst(2, "a2", 5));
    }
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    s.tabs.op("new", 1);
    s.tabs.ok(1, SWITCHABLE_SLOW);
    s.tabs.ok(1, &slow_now(ms));
    open_bg(&mut s, 1, name);
    std::thread::sleep(Duration::from_millis(crash_ms));
    made.extend(s.tabs.burst(0, "b0", 5));
    if !alone {
        made.extend(s.tabs.burst(2, "b2", 5));
    }
    s.tabs.op("crash", 0);
    let opened = wait_open(&mut s, 1, 60);
    eprintln!("tab 1 open: {opened:?}");
    if let Err(e) = opened {
        return vec![format!("tab 1 did not open: {e}")];
    }
    let live: &[usize] = if alone { &[1] } else { &[1, 2] };
    let l = wait_leader(&mut s, live);
    eprintln!("tab {l} leads");
    made.extend(s.tabs.burst(1, "j", 5));
    if !alone {
        made.extend(s.tabs.burst(2, "c2", 5));
    }
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 1500));
    s.tabs.ok(1, "await window.db.flush(); return null;");
    let others: Vec<usize> = live.iter().copied().filter(|t| *t != l).collect();
    check_end(&mut s, l, &others, &made)
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_slow_joiner_whose_leader_crashes_before_it_hears_the_welcome() {
    let mut all = vec![];
    for (ms, crash, alone) in [
        (1500u32, 300u64, false),
        (1500, 1200, false),
        (2500, 1500, false),
        (1500, 300, true),
        (1500, 1200, true),
    ] {
        let bad = joiner_and_crash(ms, crash, alone);
        eprintln!("ms {ms} crash {crash} alone {alone}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms} crash {crash} alone {alone}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// The same records updated by a slow tab (tab 3, `ms` late) across two takeovers: qty 1, 2
/// while tab 0 is frozen; 3, 4 right after tab 1 or 2 took over; that leader crashes
/// `crash_ms` later; 5 after the second takeover. Every tab and native end with 5.
fn updates_across_two_takeovers(ms: u32, crash_ms: u64) -> Vec<String> {
    let mut s = setup();
    let name = "upd2";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    for t in 1..4 {
        s.tabs.op("new", t);
        if t == 3 {
            s.tabs.ok(3, SWITCHABLE_SLOW);
        }
        s.tabs.open(t, name);
    }
    let made = s.tabs.burst(3, "r", 5);
    let ids: Vec<u64> = made.iter().map(|m| m.0).collect();
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    std::thread::sleep(Duration::from_millis(500));
    s.tabs.ok(3, &slow_now(ms));
    s.tabs.ok(0, FREEZE);
    std::thread::sleep(Duration::from_millis(100));
    let upd = |q: u32| format!("for (const id of {ids:?}) window.db.update(id, {q}); return null;");
    s.tabs.ok(3, &upd(1));
    s.tabs.ok(3, &upd(2));
    std::thread::sleep(Duration::from_millis(100));
    s.tabs.op("close_tab", 0);
    let l1 = wait_leader(&mut s, &[1, 2]);
    s.tabs.ok(3, &upd(3));
    s.tabs.ok(3, &upd(4));
    std::thread::sleep(Duration::from_millis(crash_ms));
    s.tabs.op("crash", l1);
    let rest: Vec<usize> = [1usize, 2].into_iter().filter(|t| *t != l1).collect();
    let l2 = wait_leader(&mut s, &rest);
    eprintln!("tab {l1} then tab {l2} led");
    s.tabs.ok(3, &upd(5));
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 3500));
    s.tabs.ok(3, "await window.db.flush(); return null;");
    s.tabs.wait_status(l2, "leader synced", online);
    let mut bad = vec![];
    let want: Vec<(u64, String, u32)> = made.iter().map(|(id, n, _)| (*id, n.clone(), 5)).collect();
    let lack = native_lacks(&s, &want, 10);
    if !lack.is_empty() {
        bad.push(format!("native: {lack:?}"));
    }
    for t in [l2, 3] {
        let v: Vec<Option<String>> = tab_has(&mut s.tabs, t, &ids)
            .into_iter()
            .map(|x| x.1)
            .collect();
        if v.iter().zip(&want).any(|(g, (_, n, q))| {
            g.as_deref()
                .is_none_or(|g| !g.starts_with(&format!("{n} {q} ")))
        }) {
            bad.push(format!("tab {t}: {v:?}"));
        }
    }
    let st = s.tabs.status(l2);
    eprintln!("tab {l2} {st}");
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    server_log(&s);
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn updates_of_a_slow_tab_across_two_takeovers() {
    let mut all = vec![];
    for (ms, crash) in [(1500u32, 200u64), (1500, 1000), (4500, 500), (4500, 3800)] {
        let bad = updates_across_two_takeovers(ms, crash);
        eprintln!("ms {ms} crash {crash}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms} crash {crash}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Tab 1 writes `held` while tab 0 (the leader) is frozen: tab 2, which hears the channel
/// `ms` late, keeps them (`others`) when they come. Tab 0 is closed `close_ms` later; tab 1
/// takes over (its own entries go out as its commits and to the server), and crashes
/// `crash_ms` after it wrote, when tab 2 heard the entries but not tab 1's commits. Tab 2
/// takes over from tab 1's stored image: tab 1's own entries are in it, and must not be
/// applied (sent) again.
/// With `writer` 3, a third tab (fast, opened last) writes `held` instead of tab 1: tab 1
/// applies them as entries (a control: `tabs.applied.<tab>` covers those).
fn own_entries_of_a_crashed_new_leader(
    ms: u32,
    close_ms: u64,
    crash_ms: u64,
    writer: usize,
) -> Vec<String> {
    let mut s = setup();
    let name = "ownheld";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.ok(2, SWITCHABLE_SLOW);
    s.tabs.open(2, name);
    let tabs = if writer == 3 {
        s.tabs.op("new", 3);
        s.tabs.open(3, name);
        4
    } else {
        3
    };
    let mut made = vec![];
    for t in 0..tabs {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
    }
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    std::thread::sleep(Duration::from_millis(500));
    s.tabs.ok(2, &slow_now(ms));
    std::thread::sleep(Duration::from_millis(50));
    s.tabs.ok(0, FREEZE);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    made.extend(s.tabs.burst(writer, "held", 5));
    std::thread::sleep(Duration::from_millis(close_ms));
    s.tabs.op("close_tab", 0);
    assert_eq!(wait_leader(&mut s, &[1]), 1);
    let led = t0.elapsed();
    let st = s
        .tabs
        .wait_status(1, "tab 1 pushed", |st| online(st) && st["outbox"] == 0);
    let pushed = t0.elapsed();
    eprintln!("tab 1 led at {led:?}, pushed at {pushed:?}: {st}");
    let wait = Duration::from_millis(crash_ms).saturating_sub(t0.elapsed());
    std::thread::sleep(wait);
    s.tabs.op("crash", 1);
    eprintln!("tab 1 crashed at {:?}", t0.elapsed());
    let l = if writer == 3 {
        wait_leader(&mut s, &[2, 3])
    } else {
        wait_leader(&mut s, &[2])
    };
    eprintln!("tab {l} led at {:?}", t0.elapsed());
    std::thread::sleep(Duration::from_millis(u64::from(ms) + 1500));
    made.extend(s.tabs.burst(l, "l", 3));
    let others: Vec<usize> = if writer == 3 { vec![5 - l] } else { vec![] };
    check_end(&mut s, l, &others, &made)
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn own_entries_of_a_new_leader_that_crashes_before_a_slow_tab_hears_its_commits() {
    let mut all = vec![];
    for (ms, close, crash) in [(3000u32, 1000u64, 3500u64), (3000, 1500, 3400)] {
        let bad = own_entries_of_a_crashed_new_leader(ms, close, crash, 1);
        eprintln!("ms {ms} close {close} crash {crash}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms} close {close} crash {crash}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// The control of the test above: a third tab wrote the held entries (tab 1 applies them as
/// entries, and its commits note them in `tabs.applied.<tab>`).
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn control_held_entries_of_another_tab_and_a_new_leader_that_crashes() {
    let bad = own_entries_of_a_crashed_new_leader(3000, 1000, 3500, 3);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// A plain shared database: tab 1 hears the channel `ms` late and joins (its first welcome
/// comes during its second try: two ranges carved for it); both write; tab 0 crashes; tab 1
/// or tab 2 takes over; all write again; a new tab opens the stored image. Every tab has
/// every record once (ids given twice would overwrite records: fewer).
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_plain_database_slow_joiner_then_a_crash() {
    let mut s = setup_page("harness.html");
    let open = |name: &str| format!("window.s = await window.Shared.open({name:?}); return null;");
    s.tabs.ok(0, &open("plainjoin"));
    s.tabs
        .send_op(serde_json::json!({"op": "new", "tab": 2, "page": "harness.html"}));
    s.tabs.ok(2, &open("plainjoin"));
    s.tabs
        .send_op(serde_json::json!({"op": "new", "tab": 1, "page": "harness.html"}));
    s.tabs.ok(1, &slow_channel_js(1500));
    let start = Instant::now();
    s.tabs.ok(1, &open("plainjoin"));
    eprintln!("tab 1 joined in {:?}", start.elapsed());
    for t in 0..3usize {
        s.tabs.ok(
            t,
            &format!("for (let n = 0; n < 20; n++) window.s.write({t}, n, 100); return null;"),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    s.tabs.op("crash", 0);
    let start = Instant::now();
    let l = loop {
        if let Some(t) = [1usize, 2]
            .into_iter()
            .find(|t| s.tabs.ok(*t, "return window.s.leads();") == true)
        {
            break t;
        }
        assert!(start.elapsed() < LIMIT, "no takeover");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("tab {l} leads");
    for t in [1usize, 2] {
        s.tabs.ok(
            t,
            &format!("for (let n = 20; n < 30; n++) window.s.write({t}, n, 100); return null;"),
        );
    }
    std::thread::sleep(Duration::from_millis(4000));
    for t in [1usize, 2] {
        s.tabs.ok(t, "await window.s.flush(); return null;");
    }
    let counts = |tabs: &mut Tabs, t: usize| -> Vec<String> {
        (0..3)
            .map(|w| {
                let upto = [20, 30, 30][w];
                let c = tabs.ok(t, &format!("return window.s.count({w});"));
                let m = tabs.eval(t, &format!("return window.s.missing({w}, {upto});"));
                format!("{c}/{m:?}")
            })
            .collect()
    };
    // Tab 0's 20 writes may be lost with it (it crashed 300 ms after them: not flushed,
    // but tabs 1 and 2 heard them); tabs 1 and 2 must agree and have their own.
    let mut bad = vec![];
    let c1 = counts(&mut s.tabs, 1);
    let c2 = counts(&mut s.tabs, 2);
    eprintln!("tab 1 {c1:?}, tab 2 {c2:?}");
    let want: Vec<String> = [20, 30, 30]
        .iter()
        .map(|c| format!("{c}/Ok(Number(0))"))
        .collect();
    for (t, c) in [(1, &c1), (2, &c2)] {
        if *c != want {
            bad.push(format!("tab {t} has {c:?}, want {want:?}"));
        }
    }
    s.tabs.ok(l, "await window.s.flush(); return null;");
    s.tabs
        .send_op(serde_json::json!({"op": "new", "tab": 4, "page": "harness.html"}));
    s.tabs.ok(4, &open("plainjoin"));
    let c4 = counts(&mut s.tabs, 4);
    eprintln!("tab 4 (new) {c4:?}");
    if c4 != want {
        bad.push(format!("a new tab has {c4:?}, want {want:?}"));
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// Tab 1 hears the channel `ms` late and writes `mine`; tab 0 (the leader) applies them,
/// stores and sends them to the server, and crashes before tab 1 heard its commits. Tab 1
/// takes over from tab 0's stored image, which holds its writes (`tabs.applied.<tab 1>`):
/// they must not go to the server again.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_slow_new_leader_whose_own_writes_the_old_leader_stored_and_sent() {
    let mut all = vec![];
    for ms in [1500u32, 3000] {
        let mut s = setup();
        let name = "ownstored";
        s.tabs.open(0, name);
        s.tabs.wait_status(0, "tab 0 online", online);
        s.tabs.op("new", 1);
        s.tabs.ok(1, SWITCHABLE_SLOW);
        s.tabs.open(1, name);
        let mut made = vec![];
        for t in 0..2 {
            made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
        }
        s.tabs
            .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
        std::thread::sleep(Duration::from_millis(500));
        s.tabs.ok(1, &slow_now(ms));
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        made.extend(s.tabs.burst(1, "mine", 5));
        s.tabs.ok(0, "await window.db.flush(); return null;");
        let st = s
            .tabs
            .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
        eprintln!("tab 0 pushed at {:?}: {st}", t0.elapsed());
        s.tabs.op("crash", 0);
        assert_eq!(wait_leader(&mut s, &[1]), 1);
        eprintln!("tab 1 led at {:?}", t0.elapsed());
        std::thread::sleep(Duration::from_millis(u64::from(ms) + 1500));
        made.extend(s.tabs.burst(1, "l", 3));
        let bad = check_end(&mut s, 1, &[], &made);
        eprintln!("ms {ms}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}
