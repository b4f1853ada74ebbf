//! Red team, round 5, of the synced database shared by tabs: commit 4af5cd3c (in-order
//! follower entries with `State::early` and `EARLY_WAIT_MS`, entry windows, `BaseCover`,
//! `late_plain`). Real Chromium against a real `rekord-server`.
//!
//! ```text
//! cargo test -p rekord-server --test redteam_tabs_sync5 -- --ignored --nocapture --test-threads 1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/tabs.rs"]
mod tabs;

use std::time::{Duration, Instant};
use tabs::*;

/// Tab 0 leads, tab 1 is next in line, tab 2 hears the channel `ms` late. Tab 2 writes
/// `held` creates while tab 0 is frozen (tab 0 never applies them), tab 0 crashes, tab 1
/// takes over, tab 2 writes `after` creates at once: they reach tab 1 ahead of the held
/// ones (tab 2 sends those again only when it hears of tab 1, `ms` later).
/// With `reload`, tab 2 is reloaded before it hears of tab 1 (the held writes live on in
/// the tabs that heard them; the `after` ones wait in tab 1's `early` queue, tab 1 is
/// alive: both must reach native). Without, tab 3 writes `poke_ms` after
/// the `after` burst (a message that makes tab 1 look at its early queue).
fn early(ms: u32, reload: bool, poke_ms: u64) -> Vec<String> {
    let mut s = setup();
    let name = "early";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.ok(2, SWITCHABLE_SLOW);
    s.tabs.open(2, name);
    s.tabs.op("new", 3);
    s.tabs.open(3, name);
    let mut made = vec![];
    for t in 0..4 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
    }
    s.tabs.wait_status(0, "tab 0 pushed", online);
    std::thread::sleep(Duration::from_millis(500));
    s.tabs.ok(2, &slow_now(ms));
    s.tabs.ok(0, FREEZE);
    std::thread::sleep(Duration::from_millis(100));
    let held = s.tabs.burst(2, "held", 5);
    std::thread::sleep(Duration::from_millis(100));
    s.tabs.op("close_tab", 0);
    let l = wait_leader(&mut s, &[1, 3]);
    eprintln!("tab {l} leads");
    let after = s.tabs.burst(2, "after", 5);
    let mut bad = vec![];
    if reload {
        s.tabs.op("reload", 2);
        s.tabs.open(2, name);
        // Quiet: only the leader writes.
        std::thread::sleep(Duration::from_millis(4500));
        made.extend(s.tabs.burst(l, "l", 3));
        s.tabs.ok(l, "await window.db.flush(); return null;");
        s.tabs.wait_status(l, "leader synced", online);
        let lack = native_lacks(&s, &after, 8);
        if !lack.is_empty() {
            bad.push(format!(
                "quiet, 4.5 s after: the reloaded tab's later writes (held in the leader's early queue) not at native: {lack:?}"
            ));
        }
        // A follower's message now.
        made.extend(s.tabs.burst(3, "poke", 1));
        let lack = native_lacks(&s, &after, 8);
        eprintln!("after a follower's write, native lacks {lack:?}");
        made.extend(after);
        // The held writes: tabs 1 and 3 kept them (`State::others`), so the reload of tab 2
        // does not lose them (before 7e90afe3 it did, as a crash of every tab holding them).
        made.extend(held);
    } else {
        std::thread::sleep(Duration::from_millis(poke_ms));
        made.extend(s.tabs.burst(3, "poke", 1));
        std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 1500));
        made.extend(held);
        made.extend(after);
        made.extend(s.tabs.burst(2, "b2", 3));
    }
    let others: Vec<usize> = [1usize, 2, 3].into_iter().filter(|t| *t != l).collect();
    bad.extend(check_end(&mut s, l, &others, &made));
    bad
}

/// Checks the last tab and native against `made`; every tab in `others` must agree.
fn check_end(
    s: &mut Setup,
    last: usize,
    others: &[usize],
    made: &[(u64, String, u32)],
) -> Vec<String> {
    let st = s.tabs.wait_status(last, "the last tab to sync", online);
    let tab_count = s.tabs.count(last);
    eprintln!("tab {last} {st} count {tab_count}");
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
    if nat != tab_count {
        bad.push(format!("native has {nat} parts, tab {last} {tab_count}"));
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
    server_log(s);
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn early_entries_of_a_reloaded_follower() {
    let bad = early(1500, true, 0);
    eprintln!("reload: {bad:?}");
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_live_follower_that_hears_the_new_leader_after_early_wait() {
    let mut all = vec![];
    for (ms, poke) in [(4500u32, 3500u64), (1500, 0)] {
        let bad = early(ms, false, poke);
        eprintln!("ms {ms} poke {poke}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms} poke {poke}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// The same record updated in consecutive entries of tab 2 (slow by `ms`) across a
/// takeover: qty 1, 2 while tab 0 is frozen, 3, 4 right after tab 1 took over. Every tab and
/// native must end with 4.
fn same_record(ms: u32, poke_ms: u64) -> Vec<String> {
    let mut s = setup();
    let name = "same-record";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.ok(2, SWITCHABLE_SLOW);
    s.tabs.open(2, name);
    s.tabs.op("new", 3);
    s.tabs.open(3, name);
    let made = s.tabs.burst(2, "r", 5);
    let ids: Vec<u64> = made.iter().map(|m| m.0).collect();
    s.tabs.wait_status(0, "tab 0 pushed", online);
    std::thread::sleep(Duration::from_millis(500));
    s.tabs.ok(2, &slow_now(ms));
    s.tabs.ok(0, FREEZE);
    std::thread::sleep(Duration::from_millis(100));
    let upd = |q: u32| format!("for (const id of {ids:?}) window.db.update(id, {q}); return null;");
    s.tabs.ok(2, &upd(1));
    s.tabs.ok(2, &upd(2));
    s.tabs.op("close_tab", 0);
    let l = wait_leader(&mut s, &[1, 3]);
    s.tabs.ok(2, &upd(3));
    s.tabs.ok(2, &upd(4));
    std::thread::sleep(Duration::from_millis(poke_ms));
    s.tabs.burst(3, "poke", 1);
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 1500));
    s.tabs.ok(2, "await window.db.flush(); return null;");
    let mut bad = vec![];
    s.tabs.wait_status(l, "leader synced", online);
    let want: Vec<(u64, String, u32)> = made.iter().map(|(id, n, _)| (*id, n.clone(), 4)).collect();
    let lack = native_lacks(&s, &want, 10);
    if !lack.is_empty() {
        bad.push(format!("native: {lack:?}"));
    }
    for t in [1usize, 2, 3] {
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
    server_log(&s);
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn same_record_updated_across_a_takeover() {
    let mut all = vec![];
    for (ms, poke) in [(1500u32, 0u64), (4500, 3500)] {
        let bad = same_record(ms, poke);
        eprintln!("ms {ms} poke {poke}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("ms {ms} poke {poke}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// A plain shared database (harness.html): tab 1 hears the channel 300 ms late and takes over
/// after tab 0's last burst and crash; tabs 1, 2, 3 write; tab 1 crashes at once (nothing
/// flushed); tab 2 takes over; tabs 2 and 3 write more and flush; a new tab opens the
/// stored image. Tabs 2, 3 and the new tab must all hold 40, 20, 30, 30 records of
/// writers 0..3 (tab 1's writes were heard by tabs 2 and 3 on time).
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_plain_shared_database_with_two_takeovers() {
    let mut s = setup_page("harness.html");
    let open = |name: &str| format!("window.s = await window.Shared.open({name:?}); return null;");
    s.tabs.ok(0, &open("plain2"));
    for t in 1..4usize {
        s.tabs
            .send_op(serde_json::json!({"op": "new", "tab": t, "page": "harness.html"}));
        if t == 1 {
            s.tabs.ok(1, &slow_channel_js(300));
        }
        s.tabs.ok(t, &open("plain2"));
    }
    s.tabs.ok(
        0,
        "for (let n = 0; n < 10; n++) window.s.write(0, n, 100); await window.s.flush(); return null;",
    );
    std::thread::sleep(Duration::from_millis(900));
    s.tabs.ok(
        0,
        "for (let n = 10; n < 40; n++) window.s.write(0, n, 100); return null;",
    );
    s.tabs.op("crash", 0);
    let start = Instant::now();
    while s.tabs.ok(1, "return window.s.leads();") != true {
        assert!(start.elapsed() < LIMIT, "tab 1 never took over");
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in [1usize, 2, 3] {
        s.tabs.ok(
            t,
            &format!("for (let n = 0; n < 20; n++) window.s.write({t}, n, 100); return null;"),
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    s.tabs.op("crash", 1);
    let start = Instant::now();
    let l = loop {
        if let Some(t) = [2usize, 3]
            .into_iter()
            .find(|t| s.tabs.ok(*t, "return window.s.leads();") == true)
        {
            break t;
        }
        assert!(start.elapsed() < LIMIT, "no second takeover");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("tab {l} leads second");
    for t in [2usize, 3] {
        s.tabs.ok(
            t,
            &format!(
                "for (let n = 20; n < 30; n++) window.s.write({t}, n, 100); await window.s.flush(); return null;"
            ),
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let counts = |tabs: &mut Tabs, t: usize| -> Vec<u64> {
        (0..4)
            .map(|w| {
                tabs.ok(t, &format!("return window.s.count({w});"))
                    .as_f64()
                    .unwrap() as u64
            })
            .collect()
    };
    let want = vec![40u64, 20, 30, 30];
    let mut bad = vec![];
    let (c2, c3) = (counts(&mut s.tabs, 2), counts(&mut s.tabs, 3));
    eprintln!("tab 2 {c2:?}, tab 3 {c3:?}");
    for (t, c) in [(2, &c2), (3, &c3)] {
        if *c != want {
            bad.push(format!("tab {t} has {c:?}, want {want:?}"));
        }
    }
    s.tabs.ok(l, "await window.s.flush(); return null;");
    s.tabs
        .send_op(serde_json::json!({"op": "new", "tab": 4, "page": "harness.html"}));
    s.tabs.ok(4, &open("plain2"));
    let c4 = counts(&mut s.tabs, 4);
    eprintln!("tab 4 (new) {c4:?}");
    if c4 != want {
        bad.push(format!("a new tab has {c4:?}, want {want:?}"));
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// Round 4's side note: a tab that hears the channel 1.5 s late (a busy page; the leader's
/// answer takes longer than the 1 s a tab waits before it asks again) could not join at all:
/// each try asked as a new tab, and each answer came for the tab of the try before. It
/// joins now, and its writes and the leader's reach native and every tab.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_tab_that_hears_the_channel_late_joins() {
    let mut s = setup();
    let name = "latejoin";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = s.tabs.burst(0, "a0", 5);
    s.tabs.op("new", 1);
    s.tabs.ok(1, &slow_channel_js(1500));
    let start = Instant::now();
    s.tabs.open(1, name);
    eprintln!("tab 1 joined in {:?}", start.elapsed());
    made.extend(s.tabs.burst(1, "a1", 5));
    made.extend(s.tabs.burst(0, "b0", 5));
    s.tabs.ok(1, "await window.db.flush(); return null;");
    let bad = check_end(&mut s, 0, &[1], &made);
    assert!(bad.is_empty(), "{bad:?}");
}

/// A new leader that hears the channel late takes over from an image that holds a commit
/// applying another tab's entry, then hears that entry (and the commit) late: the entry
/// must not be applied a second time (its changes sent twice).
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_slow_new_leader_hears_an_entry_its_image_holds() {
    let mut s = setup();
    let name = "heldentry";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.ok(1, SWITCHABLE_SLOW);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    let mut made = vec![];
    for t in 0..3 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
    }
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    std::thread::sleep(Duration::from_millis(500));
    s.tabs.ok(1, &slow_now(600));
    made.extend(s.tabs.burst(2, "w", 5));
    s.tabs.ok(0, "await window.db.flush(); return null;");
    s.tabs.op("crash", 0);
    let l = wait_leader(&mut s, &[1, 2]);
    eprintln!("tab {l} leads");
    std::thread::sleep(Duration::from_millis(1500));
    made.extend(s.tabs.burst(l, "l", 3));
    let others: Vec<usize> = [1usize, 2].into_iter().filter(|t| *t != l).collect();
    let mut bad = check_end(&mut s, l, &others, &made);
    // Only creates were made, one change each: a cursor past them means some were sent twice.
    let st = s.tabs.status(l);
    if st["cursor"] != made.len() as u64 {
        bad.push(format!(
            "the server logged {} changes for {} creates: entries sent twice",
            st["cursor"],
            made.len()
        ));
    }
    assert!(bad.is_empty(), "{bad:?}");
}
