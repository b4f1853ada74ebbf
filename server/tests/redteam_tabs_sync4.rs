//! Red team, round 4, of the synced database shared by tabs: commit e7cb1d04 (leader
//! commits in epochs, `Msg::Stored` says what a store holds, late commits carried with
//! their records, entry and id gaps at takeover). Real Chromium against a real
//! `rekord-server`, driven through `examples/web/tests/tabs_relay.mjs`.
//!
//! ```text
//! cargo test -p rekord-server --test redteam_tabs_sync4 -- --ignored --nocapture --test-threads 1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/tabs.rs"]
mod tabs;

use std::time::{Duration, Instant};
use tabs::*;

/// Checks the last tab and native against `made`; every other tab in `others` must have
/// the same parts as the last one.
fn check_end(
    s: &mut Setup,
    last: usize,
    others: &[usize],
    made: &[(u64, String, u32)],
) -> Vec<String> {
    let st = s.tabs.wait_status(last, "the last tab to sync", online);
    let tab_count = s.tabs.count(last);
    eprintln!("tab {last} {st} count {tab_count}");
    let mut bad = compare(s, made, made.len() as u64);
    if tab_count != made.len() as u64 {
        bad.push(format!(
            "tab {last} has {tab_count}, expected {}",
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
        .take(10)
        .map(|((id, name, q), (_, got))| format!("{id} {name} {q}: tab has {got:?}"))
        .collect();
    if !wrong.is_empty() {
        bad.push(format!("tab {last} lacks or differs: {wrong:?}"));
    }
    for &o in others {
        let ok = eventually("the other tabs to agree", || s.tabs.count(o) == tab_count);
        let theirs = tab_has(&mut s.tabs, o, &ids);
        let differ: Vec<String> = have
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.1 != b.1)
            .take(5)
            .map(|(a, b)| format!("{}: {:?} vs {:?}", a.0, a.1, b.1))
            .collect();
        if !ok || !differ.is_empty() {
            bad.push(format!(
                "tab {o} differs from tab {last}: count {} vs {tab_count}; {differ:?}",
                s.tabs.count(o)
            ));
        }
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    server_log(s);
    bad
}

/// Four tabs: tab 0 leads; tab 1 (first in line) hears the channel `d1` ms late, tab 2
/// `d2` ms late, tab 3 on time. Tab 0 writes a burst and crashes at once; the next leader
/// (with `refuse`, its storage refuses) writes with every tab and crashes `gap_ms` later;
/// the next leader writes; every write must end in the last leader, every tab and native.
fn two_slow(d1: u32, d2: u32, refuse: bool, gap_ms: u64) -> Vec<String> {
    let mut s = setup();
    let name = "two-slow";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    for (t, d) in [(1, d1), (2, d2), (3, 0)] {
        s.tabs.op("new", t);
        if d > 0 {
            s.tabs.ok(t, &slow_channel_js(d));
        }
        s.tabs.open(t, name);
    }
    if refuse {
        s.tabs.ok(1, STORAGE_REFUSES);
        s.tabs.ok(2, STORAGE_REFUSES);
    }
    let mut made = vec![];
    for t in 0..4 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 10));
    }
    s.tabs.wait_status(0, "tab 0 to send everything", online);
    std::thread::sleep(Duration::from_millis(u64::from(d1.max(d2)) * 2 + 300));
    made.extend(s.tabs.burst(0, "last0", 40));
    s.tabs.op("crash", 0);
    let mut live = vec![1, 2, 3];
    let l1 = wait_leader(&mut s, &live);
    eprintln!("tab {l1} leads first");
    made.extend(s.tabs.burst(l1, "l1", 20));
    for &t in &live {
        if t != l1 {
            made.extend(s.tabs.burst(t, &format!("f1t{t}"), 10));
        }
    }
    std::thread::sleep(Duration::from_millis(gap_ms));
    eprintln!("leader {l1} before its crash: {}", s.tabs.status(l1));
    live.retain(|t| *t != l1);
    if refuse {
        for &t in &live {
            s.tabs.ok(t, STORAGE_WORKS);
        }
    }
    s.tabs.op("crash", l1);
    for &t in &live {
        made.extend(s.tabs.burst(t, &format!("g{t}"), 10));
    }
    let l2 = wait_leader(&mut s, &live);
    eprintln!("tab {l2} leads second");
    made.extend(s.tabs.burst(l2, "l2", 10));
    std::thread::sleep(Duration::from_millis(u64::from(d1.max(d2)) * 2 + 500));
    let others: Vec<usize> = live.iter().copied().filter(|t| *t != l2).collect();
    check_end(&mut s, l2, &others, &made)
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn two_slow_followers_and_two_crashes() {
    let mut all = Vec::new();
    for (d1, d2, refuse, gap) in [
        (400u32, 100u32, false, 0u64),
        (400, 100, true, 0),
        (100, 400, false, 0),
        (400, 100, true, 1000),
    ] {
        let bad = two_slow(d1, d2, refuse, gap);
        eprintln!("d1 {d1} d2 {d2} refuse {refuse} gap {gap}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!(
                "d1 {d1} d2 {d2} refuse {refuse} gap {gap}: {bad:?}"
            ));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Values of `ids` in tab `t` (`name qty holder` or null).
fn values(s: &mut Setup, t: usize, ids: &[u64]) -> Vec<Option<String>> {
    tab_has(&mut s.tabs, t, ids)
        .into_iter()
        .map(|(_, v)| v.map(|v| v.rsplit_once(' ').unwrap().0.to_owned()))
        .collect()
}

fn native_values(s: &Setup, ids: &[u64]) -> Vec<Option<String>> {
    let n = native_parts(&s.parts);
    ids.iter()
        .map(|id| {
            n.iter()
                .find(|(i, _, _)| i == id)
                .map(|(_, nm, q)| format!("{nm} {q}"))
        })
        .collect()
}

/// Tab 0 creates parts every tab has; tab 1 hears the channel `ms` late. Tab 0 updates
/// every part (qty 1000 + i) and crashes at once; tab 1 takes over before it heard those
/// and updates the first half (2000 + i) right away, tab 2 the last quarter (3000 + i).
/// With `crash`, tab 1 then crashes (with `refuse`, it never stored) and tab 2 leads.
/// Every tab and native must end with the same value for every part.
fn late_updates(ms: u32, crash: bool, refuse: bool) -> Vec<String> {
    let mut s = setup();
    let name = "late-updates";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.ok(1, &slow_channel_js(ms));
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    if refuse {
        s.tabs.ok(1, STORAGE_REFUSES);
    }
    let n = 20u32;
    let made = s.tabs.burst(0, "u", n);
    let ids: Vec<u64> = made.iter().map(|m| m.0).collect();
    s.tabs.wait_status(0, "tab 0 pushed", online);
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 300));
    let js = format!(
        "for (const [i, id] of {:?}.entries()) window.db.update(id, 1000 + i); return null;",
        ids
    );
    s.tabs.ok(0, &js);
    s.tabs.op("crash", 0);
    let leader = wait_leader(&mut s, &[1, 2]);
    let other = 3 - leader;
    eprintln!("tab {leader} leads");
    let half: Vec<u64> = ids[..(n / 2) as usize].to_vec();
    let js = format!(
        "for (const [i, id] of {half:?}.entries()) window.db.update(id, 2000 + i); return null;"
    );
    s.tabs.ok(leader, &js);
    let quarter: Vec<u64> = ids[(3 * n / 4) as usize..].to_vec();
    let js = format!(
        "for (const [i, id] of {quarter:?}.entries()) window.db.update(id, 3000 + i); return null;"
    );
    if let Err(e) = s.tabs.eval(other, &js) {
        eprintln!("tab {other} update: {e}");
    }
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 500));
    let mut bad = vec![];
    let vl = values(&mut s, leader, &ids);
    let vo = values(&mut s, other, &ids);
    eprintln!("leader {leader}: {vl:?}\nother {other}: {vo:?}");
    if vl != vo {
        bad.push(format!(
            "before any crash of the new leader: tabs differ: leader {leader} {vl:?} vs tab {other} {vo:?}"
        ));
    }
    let last = if crash {
        eprintln!(
            "leader {leader} before its crash: {}",
            s.tabs.status(leader)
        );
        s.tabs.op("crash", leader);
        assert_eq!(wait_leader(&mut s, &[other]), other);
        other
    } else {
        leader
    };
    let st = s.tabs.wait_status(last, "the last tab to sync", online);
    let vt = values(&mut s, last, &ids);
    eventually("native to agree with the last tab", || {
        native_values(&s, &ids) == vt
    });
    let vn = native_values(&s, &ids);
    eprintln!("last {last}: {vt:?}\nnative: {vn:?}");
    if vt != vn {
        let d: Vec<String> = ids
            .iter()
            .zip(vt.iter().zip(&vn))
            .filter(|(_, (a, b))| a != b)
            .map(|(id, (a, b))| format!("{id}: tab {a:?} native {b:?}"))
            .collect();
        bad.push(format!("tab {last} and native differ: {d:?}"));
    }
    if !crash {
        let vo = values(&mut s, other, &ids);
        if vo != vt {
            bad.push(format!(
                "at the end tab {other} {vo:?} vs tab {last} {vt:?}"
            ));
        }
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {st}"));
    }
    server_log(&s);
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn late_updates_of_the_records_the_new_leader_changes() {
    let mut all = Vec::new();
    for (ms, crash, refuse) in [
        (400u32, false, false),
        (400, true, false),
        (400, true, true),
    ] {
        let bad = late_updates(ms, crash, refuse);
        eprintln!("ms {ms} crash {crash} refuse {refuse}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms} crash {crash} refuse {refuse}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Tab 0 creates `n` parts in one go and crashes; tab 1 hears the channel `ms` late, takes
/// over and creates at once. Reports whether ids were handed out twice and what is lost.
/// (Once a documented limit: a takeover left the old leader only 1,024 ids of its ranges,
/// and a longer burst heard after the takeover met the new leader's creates, in about one
/// run of five. A takeover now gives up every id of the old leader's ranges.)
fn over_the_id_gap(n: u32, ms: u32) -> Vec<String> {
    let mut s = setup();
    let name = "id-gap";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.ok(1, &slow_channel_js(ms));
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    let mut made = vec![];
    for t in 0..3 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
    }
    s.tabs.wait_status(0, "tab 0 pushed", online);
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 300));
    made.extend(s.tabs.burst(0, "big", n));
    s.tabs.op("crash", 0);
    let leader = wait_leader(&mut s, &[1, 2]);
    eprintln!("tab {leader} leads");
    made.extend(s.tabs.burst(leader, "l", 50));
    made.extend(s.tabs.burst(3 - leader, "f", 20));
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 1500));
    check_end(&mut s, leader, &[3 - leader], &made)
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_burst_larger_than_the_id_gap() {
    let mut all = Vec::new();
    for (n, ms) in [(900u32, 800u32), (2000, 800)] {
        let bad = over_the_id_gap(n, ms);
        eprintln!("n {n} ms {ms}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("n {n} ms {ms}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Tab 1 hears the channel `ms` late and takes over after tab 0's burst and crash; it
/// writes and flushes (with `flush`) and is reloaded; it opens again (slow again) while
/// tab 2 leads. Every write must end in tab 2, tab 1 and native.
fn reload_slow_leader(ms: u32, flush: bool) -> Vec<String> {
    let mut s = setup();
    let name = "reload-slow";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.ok(1, &slow_channel_js(ms));
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    let mut made = vec![];
    for t in 0..3 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 10));
    }
    s.tabs.wait_status(0, "tab 0 pushed", online);
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 300));
    made.extend(s.tabs.burst(0, "last0", 30));
    s.tabs.op("crash", 0);
    let leader = wait_leader(&mut s, &[1, 2]);
    let other = 3 - leader;
    eprintln!("tab {leader} leads");
    made.extend(s.tabs.burst(leader, "l", 20));
    made.extend(s.tabs.burst(other, "f", 20));
    if flush {
        s.tabs.ok(leader, "await window.db.flush(); return null;");
    } else {
        // The other tab has everything (its own and the leader's commits).
        let start = Instant::now();
        while s.tabs.count(other) < made.len() as u64 {
            assert!(start.elapsed() < LIMIT, "tab {other} never got everything");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    s.tabs.op("reload", leader);
    if leader == 1 {
        s.tabs.ok(1, &slow_channel_js(ms));
    }
    s.tabs.open(leader, name);
    assert_eq!(wait_leader(&mut s, &[other]), other);
    made.extend(s.tabs.burst(leader, "r", 10));
    made.extend(s.tabs.burst(other, "o", 10));
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 500));
    check_end(&mut s, other, &[leader], &made)
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn reload_of_the_slow_tab_after_it_took_over() {
    let mut all = Vec::new();
    for (ms, flush) in [(300u32, true), (300, false)] {
        let bad = reload_slow_leader(ms, flush);
        eprintln!("ms {ms} flush {flush}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms} flush {flush}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// The failing case of `two_slow_followers_and_two_crashes` again, `runs` times each:
/// tab 3's writes made while tab 1 led (tab 1 heard them 400 ms late and crashed first).
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn entries_a_dead_leader_never_heard_again() {
    let mut all = Vec::new();
    for (d1, d2, refuse) in [(400u32, 100u32, true), (400, 100, false), (400, 100, true)] {
        let bad = two_slow(d1, d2, refuse, 0);
        eprintln!("d1 {d1} d2 {d2} refuse {refuse}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("d1 {d1} d2 {d2} refuse {refuse}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}
