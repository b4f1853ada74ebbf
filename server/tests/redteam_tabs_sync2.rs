//! Red team, round 2, of the synced database shared by tabs: reproductions in real
//! Chromium against a real `rekord-server`, driven through
//! `examples/web/tests/tabs_relay.mjs`.
//!
//! ```text
//! cargo test -p rekord-server --test redteam_tabs_sync2 -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/tabs.rs"]
mod tabs;

use std::time::{Duration, Instant};
use tabs::*;

/// A follower's borrow is in flight when the leader freezes (on its `k`-th post after the
/// borrow was asked, its flushes failing from then on) and is closed. The follower takes
/// over; the part must end up either borrowed by this replica (and writable) or free.
fn borrow_in_flight(k: u32, no_flush: bool) -> Vec<String> {
    let mut s = setup();
    let name = "borrow";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let id = s.tabs.create(0, "to borrow", 1);
    s.tabs.wait_status(0, "pushed", |st| st["outbox"] == 0);
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    s.tabs.op("front", 0);
    if no_flush {
        s.tabs.ok(
            0,
            "const tx = IDBDatabase.prototype.transaction; IDBDatabase.prototype.transaction = function (n, m, o) { if (m === 'readwrite') throw new Error('red team: no flush'); return tx.call(this, n, m, o); }; return null;",
        );
    }
    let js = format!(
        r#"window.__posts = 0; window.__sizes = [];
        const post = BroadcastChannel.prototype.postMessage;
        BroadcastChannel.prototype.postMessage = function (msg) {{
            post.call(this, msg);
            window.__posts++;
            if (window.__posts >= {k}) {{ while (true) {{}} }}
        }};
        return null;"#
    );
    s.tabs.ok(0, &js);
    s.tabs.ok(
        1,
        &format!("window.__b = window.db.borrow({id}).then(() => 'ok', (e) => 'err ' + e.message); return null;"),
    );
    std::thread::sleep(Duration::from_millis(400));
    s.tabs.op("close_tab", 0);
    let st = s.tabs.wait_status(1, "tab 1 to sync by itself", online);
    let answer = s.tabs.ok(1, "return await window.__b;");
    eprintln!("k={k} no_flush={no_flush}: borrow answered {answer}; status {st}");
    let mine = st["replica"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let tab_view = s.tabs.get(1, id);
    let k_native = rekord::Key::<Part>::new(id, 0);
    let native_holder = s.parts.meta(k_native).unwrap().holder;
    eprintln!("tab 1 sees {tab_view:?}; native sees holder {native_holder}; tab replica {mine}");
    let mut bad = Vec::new();
    let upd = s
        .tabs
        .eval(1, &format!("window.db.update({id}, 77); return null;"));
    eprintln!("update after takeover: {upd:?}");
    if answer == "ok" && upd.is_err() {
        bad.push(format!("borrow granted but the update fails: {upd:?}"));
    }
    if upd.is_err() {
        // Borrow it again now that tab 1 leads.
        let again = s.tabs.eval(
            1,
            &format!("await window.db.borrow({id}); window.db.update({id}, 77); return null;"),
        );
        eprintln!("borrow again + update: {again:?}");
        if again.is_err() {
            bad.push(format!(
                "after the takeover the part cannot be borrowed/updated: {again:?} (native holder {native_holder}, tab {tab_view:?})"
            ));
        }
    }
    if bad.is_empty() {
        let got = eventually("native to see 77", || {
            s.parts.get(k_native).map(|p| p.qty == 77).unwrap_or(false)
        });
        if !got {
            bad.push(format!(
                "native never saw the update: {:?}",
                s.parts.get(k_native).ok()
            ));
        }
        let st = s.tabs.status(1);
        if st["rejected"] != 0 {
            bad.push(format!("rejected: {st}"));
        }
    }
    server_log(&s);
    eprintln!("k={k} no_flush={no_flush}: problems {bad:?}");
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn borrow_in_flight_when_the_leader_dies() {
    let mut all = Vec::new();
    for (k, nf) in [
        (1, true),
        (2, true),
        (3, true),
        (1, false),
        (2, false),
        (4, false),
    ] {
        let bad = borrow_in_flight(k, nf);
        if !bad.is_empty() {
            all.push(format!("k={k} no_flush={nf}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Both tabs write a burst; the leader is crashed; the server is killed `delay_ms` later
/// (during the new leader's takeover / first connection), the new leader writes offline,
/// and the server comes back.
fn server_killed_during_takeover(delay_ms: u64) -> Vec<String> {
    let mut s = setup();
    let name = "srvkill";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = vec![];
    let id = s.tabs.create(0, "first", 1);
    made.push((id, "first".to_owned(), 1));
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    made.extend(s.tabs.burst(1, "f", 30));
    made.extend(s.tabs.burst(0, "l", 30));
    s.tabs.op("crash", 0);
    std::thread::sleep(Duration::from_millis(delay_ms));
    let server = s.server.take().unwrap();
    server.kill();
    std::thread::sleep(Duration::from_millis(1500));
    eprintln!("after takeover, server down: {}", s.tabs.status(1));
    made.extend(s.tabs.burst(1, "offline", 20));
    s.server = Some(start(&s.data, &s.addr.to_string(), s.page_port));
    let st = s.tabs.wait_status(1, "tab 1 to sync", online);
    let tab_count = s.tabs.count(1);
    eprintln!("delay {delay_ms}: tab 1 {st} count {tab_count}");
    let mut bad = compare(&s, &made, made.len() as u64);
    if tab_count != made.len() as u64 {
        bad.push(format!(
            "tab 1 has {tab_count} parts, expected {}",
            made.len()
        ));
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    server_log(&s);
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn server_killed_during_the_takeover() {
    let mut all = Vec::new();
    for d in [0u64, 150, 400, 1000] {
        let bad = server_killed_during_takeover(d);
        if !bad.is_empty() {
            all.push(format!("delay {d}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Both tabs write; the leader is closed (`crash` or close); the follower takes over and
/// is reloaded `delay_ms` later (before or after its flusher stored its copy), opens again.
fn reload_after_takeover(crash: bool, delay_ms: u64) -> Vec<String> {
    let mut s = setup();
    let name = "reload";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = vec![];
    let id = s.tabs.create(0, "first", 1);
    made.push((id, "first".to_owned(), 1));
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    made.extend(s.tabs.burst(1, "f", 30));
    made.extend(s.tabs.burst(0, "l", 30));
    // What a page must not lose before it goes, it flushes (a write is stored once a
    // flush says so; until then it lives in the tabs' memory, and here both tabs go).
    s.tabs.ok(0, "await window.db.flush(); return null;");
    s.tabs.op(if crash { "crash" } else { "close_tab" }, 0);
    std::thread::sleep(Duration::from_millis(delay_ms));
    made.extend(s.tabs.burst(1, "post", 10));
    // (In a tab taking over, this waits for its first store.)
    s.tabs.ok(1, "await window.db.flush(); return null;");
    s.tabs.op("reload", 1);
    s.tabs.open(1, name);
    let st = s
        .tabs
        .wait_status(1, "tab 1 to sync after the reload", online);
    made.extend(s.tabs.burst(1, "after", 10));
    let st2 = s.tabs.wait_status(1, "drained", online);
    let tab_count = s.tabs.count(1);
    eprintln!("crash {crash} delay {delay_ms}: {st} then {st2}, tab count {tab_count}");
    let mut bad = compare(&s, &made, made.len() as u64);
    if tab_count != made.len() as u64 {
        bad.push(format!(
            "tab 1 has {tab_count} parts, expected {}",
            made.len()
        ));
    }
    if st2["rejected"] != 0 {
        bad.push(format!("rejected {}", st2["rejected"]));
    }
    server_log(&s);
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn reload_right_after_a_takeover() {
    let mut all = Vec::new();
    // RT_CASES="0c,300c,0": delays in ms after the leader's end, `c` for a crash.
    let cases: Vec<(bool, u64)> = std::env::var("RT_CASES")
        .map(|v| {
            v.split(',')
                .map(|c| (c.ends_with('c'), c.trim_end_matches('c').parse().unwrap()))
                .collect()
        })
        .unwrap_or_else(|_| {
            vec![
                (true, 0),
                (true, 300),
                (false, 0),
                (false, 300),
                (true, 1500),
            ]
        });
    for (c, d) in cases {
        let bad = reload_after_takeover(c, d);
        if !bad.is_empty() {
            all.push(format!("crash {c} delay {d}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// A follower creates far more parts than its carved range holds (about 5,000), while the
/// leader writes too; it asks for more ids.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn follower_runs_out_of_ids() {
    let mut s = setup();
    let name = "ids";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = vec![];
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    for round in 0..12 {
        let t = Instant::now();
        made.extend(s.tabs.burst(1, &format!("f{round}"), 1000));
        made.extend(s.tabs.burst(0, &format!("l{round}"), 200));
        eprintln!(
            "round {round}: {} made, {:?}, status {}",
            made.len(),
            t.elapsed(),
            s.tabs.status(1)
        );
    }
    let st = s.tabs.wait_status(0, "drained", online);
    let bad = compare(&s, &made, made.len() as u64);
    eprintln!("status {st}");
    server_log(&s);
    assert!(bad.is_empty() && st["rejected"] == 0, "{bad:?} {st}");
}

/// Three tabs write; the leader crashes; the new leader writes and crashes; the last tab
/// leads. Each crash comes right after a burst of every tab.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn takeovers_in_a_row() {
    let mut s = setup();
    let name = "chain";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = vec![];
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    s.tabs.op("new", 3);
    s.tabs.open(3, name);
    for t in 0..4 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 20));
    }
    s.tabs.op("crash", 0);
    // Who leads now? Burst in every live tab right away.
    for t in 1..4 {
        made.extend(s.tabs.burst(t, &format!("b{t}"), 20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    for t in 1..4 {
        eprintln!("tab {t}: {}", s.tabs.status(t));
    }
    // Crash the new leader: the one whose status is its own (try tab 1, then 2).
    s.tabs.op("crash", 1);
    for t in 2..4 {
        made.extend(s.tabs.burst(t, &format!("c{t}"), 20));
    }
    s.tabs.op("crash", 2);
    made.extend(s.tabs.burst(3, "d3", 20));
    let st = s.tabs.wait_status(3, "tab 3 to sync", online);
    let tab_count = s.tabs.count(3);
    eprintln!("tab 3 {st} count {tab_count}");
    let mut bad = compare(&s, &made, made.len() as u64);
    if tab_count != made.len() as u64 {
        bad.push(format!("tab 3 has {tab_count}, expected {}", made.len()));
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:?}");
}

/// The CI failure of `takeovers_in_a_row` on 0c0114b2 (20 writes of the second new leader
/// lost): a tab that writes while it takes over and crashes before it finished held those
/// writes only in its memory and on the channel, where no follower kept them. Here tab 1
/// takes over from tab 0 slowly (its IndexedDB takes 2 s to open), writes meanwhile, and
/// crashes; tab 2 takes over and must have tab 1's writes.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_tab_that_crashes_while_taking_over() {
    let mut s = setup();
    let name = "midtakeover";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.ok(1, SLOW_OPEN);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    let mut made = vec![];
    for t in 0..3 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 5));
    }
    s.tabs
        .wait_status(0, "tab 0 pushed", |st| online(st) && st["outbox"] == 0);
    s.tabs.ok(1, "window.__openDelay = 2000; return null;");
    s.tabs.op("crash", 0);
    std::thread::sleep(Duration::from_millis(200));
    made.extend(s.tabs.burst(1, "mid", 10));
    made.extend(s.tabs.burst(2, "mid2", 5));
    // The entries left tab 1 (this tests who keeps them, not a crash racing the post).
    std::thread::sleep(Duration::from_millis(300));
    let leads = s.tabs.ok(1, "return window.db.leads();");
    s.tabs.op("crash", 1);
    assert_eq!(wait_leader(&mut s, &[2]), 2);
    made.extend(s.tabs.burst(2, "d2", 5));
    let st = s.tabs.wait_status(2, "tab 2 to sync", online);
    let tab_count = s.tabs.count(2);
    eprintln!("tab 1 led when it crashed: {leads}; tab 2 {st} count {tab_count}");
    let mut bad = compare(&s, &made, made.len() as u64);
    if leads == true {
        bad.push("tab 1 finished its takeover: the setup did not hold it in the middle".into());
    }
    if tab_count != made.len() as u64 {
        bad.push(format!("tab 2 has {tab_count}, expected {}", made.len()));
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:?}");
}

/// Four tabs open the database at the same moment and write at once.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn tabs_opening_at_once() {
    let mut s = setup();
    let name = "race";
    s.tabs
        .send_op(serde_json::json!({"op": "new_many", "tabs": [1, 2, 3]}));
    let js = format!("{} return window.db.status();", s.tabs.open_js(name));
    let v = s
        .tabs
        .send_op(serde_json::json!({"op": "evals", "tabs": [0, 1, 2, 3], "js": js}));
    eprintln!("opened: {v}");
    let mut made = vec![];
    let js = r#"const out = []; const t0 = Date.now();
        for (let i = 0; i < 50; i++) {
            let id = window.db.create('T' + window.__tab + ' ' + i, i);
            while (id < 0) {
                if (Date.now() - t0 > 60000) return 'NOIDS';
                await new Promise((r) => setTimeout(r, 20));
                id = window.db.create('T' + window.__tab + ' ' + i, i);
            }
            out.push(id);
        }
        return out.join(',');"#;
    for t in 0..4 {
        s.tabs.ok(t, &format!("window.__tab = {t}; return null;"));
    }
    let v = s
        .tabs
        .send_op(serde_json::json!({"op": "evals", "tabs": [0, 1, 2, 3], "js": js}));
    for (t, ids) in v.as_array().unwrap().iter().enumerate() {
        let ids = ids.as_str().unwrap();
        assert!(
            !ids.starts_with("NOIDS") && !ids.starts_with("ERR"),
            "tab {t}: {ids}"
        );
        for (i, x) in ids.split(',').enumerate() {
            made.push((
                x.parse::<f64>().unwrap() as u64,
                format!("T{t} {i}"),
                i as u32,
            ));
        }
    }
    let mut bad = compare(&s, &made, made.len() as u64);
    for t in 0..4 {
        let st = s.tabs.status(t);
        let c = s.tabs.count(t);
        eprintln!("tab {t}: {st} count {c}");
        if c != made.len() as u64 {
            bad.push(format!("tab {t} has {c}"));
        }
        if st["rejected"] != 0 {
            bad.push(format!("tab {t} rejected {}", st["rejected"]));
        }
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:?}");
}

/// Round 1's `follower_burst_then_leader_closed`, with the follower's channel `ms` slow.
fn slow_burst(ms: u32, crash: bool) -> Vec<String> {
    let mut s = setup();
    let name = "slow-burst";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = vec![];
    let id = s.tabs.create(0, "first", 1);
    made.push((id, "first".to_owned(), 1));
    s.tabs.op("new", 1);
    s.tabs.ok(1, &slow_channel_js(ms));
    s.tabs.open(1, name);
    made.extend(s.tabs.burst(1, "warm", 1));
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 300));
    made.extend(s.tabs.burst(1, "fb", 40));
    s.tabs.op(if crash { "crash" } else { "close_tab" }, 0);
    let st = s.tabs.wait_status(1, "tab 1 to sync by itself", online);
    std::thread::sleep(Duration::from_millis(1000));
    let _ = st;
    let st = s.tabs.wait_status(1, "tab 1 to sync by itself", online);
    let tab_count = s.tabs.count(1);
    eprintln!("slow {ms} crash {crash}: tab 1 {st} count {tab_count}");
    let mut bad = compare(&s, &made, made.len() as u64);
    if tab_count != made.len() as u64 {
        bad.push(format!("tab 1 has {tab_count}, expected {}", made.len()));
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn follower_burst_then_close_with_a_slow_channel() {
    let mut all = Vec::new();
    // RT_CASES="0c,50c,300": delays in ms, `c` for a crash (else an ordinary close).
    let cases: Vec<(u32, bool)> = std::env::var("RT_CASES")
        .map(|v| {
            v.split(',')
                .map(|c| (c.trim_end_matches('c').parse().unwrap(), c.ends_with('c')))
                .collect()
        })
        .unwrap_or_else(|_| vec![(0, false), (100, false), (300, false), (300, true)]);
    for (ms, crash) in cases {
        let bad = slow_burst(ms, crash);
        eprintln!("slow {ms} crash {crash}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("slow {ms} crash {crash}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// The server is down; the leader writes 20 parts (each commit carried to the follower),
/// its flushes failing, and crashes at once. The follower's channel is `ms` slow: it may
/// take over before the carried commits arrive.
fn offline_leader_writes_then_crash(ms: u32) -> Vec<String> {
    let mut s = setup();
    let name = "slow-offline";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = vec![];
    let id = s.tabs.create(0, "first", 1);
    made.push((id, "first".to_owned(), 1));
    s.tabs.wait_status(0, "pushed", |st| st["outbox"] == 0);
    s.tabs.op("new", 1);
    s.tabs.ok(1, &slow_channel_js(ms));
    s.tabs.open(1, name);
    std::thread::sleep(Duration::from_millis(u64::from(ms) * 2 + 500));
    let server = s.server.take().unwrap();
    server.kill();
    s.tabs
        .wait_status(0, "tab 0 offline", |st| st["online"] == false);
    s.tabs.ok(
        0,
        "const tx = IDBDatabase.prototype.transaction; IDBDatabase.prototype.transaction = function (n, m, o) { if (m === 'readwrite') throw new Error('red team: no flush'); return tx.call(this, n, m, o); }; return null;",
    );
    made.extend(s.tabs.burst(0, "lost?", 20));
    s.tabs.op("crash", 0);
    std::thread::sleep(Duration::from_millis(u64::from(ms) + 2000));
    let t1 = s.tabs.count(1);
    eprintln!(
        "slow {ms}: tab 1 has {t1} after the takeover (server down): {}",
        s.tabs.status(1)
    );
    s.server = Some(start(&s.data, &s.addr.to_string(), s.page_port));
    let st = s.tabs.wait_status(1, "tab 1 to sync", online);
    let tab_count = s.tabs.count(1);
    eprintln!("slow {ms}: tab 1 {st} count {tab_count}");
    let mut bad = compare(&s, &made, made.len() as u64);
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    bad
}

#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn offline_leader_writes_then_crash_with_a_slow_channel() {
    let mut all = Vec::new();
    for ms in [0u32, 300] {
        let bad = offline_leader_writes_then_crash(ms);
        eprintln!("slow {ms}: {bad:?}");
        if !bad.is_empty() {
            all.push(format!("slow {ms}: {bad:?}"));
        }
    }
    assert!(all.is_empty(), "{all:#?}");
}

/// Control: one tab alone writes 10 parts, flushes and is reloaded at once (no takeover).
/// (Without the flush the last writes may be lost, as documented: a reload stores what it
/// can on `pagehide`, with no guarantee. Without it, this test failed once in about ten
/// runs on a loaded machine; that run's output was not kept.)
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn reload_right_after_writes_alone() {
    let mut s = setup();
    let name = "alone";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = s.tabs.burst(0, "pre", 30);
    made.extend(s.tabs.burst(0, "post", 10));
    s.tabs.ok(0, "await window.db.flush(); return null;");
    s.tabs.op("reload", 0);
    s.tabs.open(0, name);
    let st = s
        .tabs
        .wait_status(0, "tab 0 to sync after the reload", online);
    made.extend(s.tabs.burst(0, "after", 10));
    let st2 = s.tabs.wait_status(0, "drained", online);
    eprintln!("alone: {st} then {st2}, count {}", s.tabs.count(0));
    let bad = compare(&s, &made, made.len() as u64);
    assert!(bad.is_empty(), "{bad:?}");
}

// ---- round 3 (session 15): a new leader that dies before it stored ---------------------

/// Tab 0 leads and freezes; tabs 1 and 2 write while no tab leads. Tab 1 takes over (its
/// own writes and tab 2's, sent again to it, become its commits) but can store nothing,
/// and crashes. Tab 2 takes over from the stored image of tab 0: every write of tab 1's
/// commits (its own and tab 2's) must still reach the server, and tab 2 must keep every
/// record.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn a_new_leader_that_never_stored_dies() {
    let mut s = setup();
    let name = "unstored";
    s.tabs.open(0, name);
    s.tabs.wait_status(0, "tab 0 online", online);
    s.tabs.op("new", 1);
    s.tabs.open(1, name);
    s.tabs.op("new", 2);
    s.tabs.open(2, name);
    let mut made = vec![];
    for t in 0..3 {
        made.extend(s.tabs.burst(t, &format!("a{t}"), 20));
    }
    s.tabs.wait_status(0, "tab 0 to send everything", online);
    assert!(s.tabs.ok(0, "return window.db.leads();") == true);
    // Tab 0 stops for good (holding the lock); tabs 1 and 2 write with no leader.
    s.tabs
        .ok(0, "setTimeout(() => { while (true) {} }, 0); return null;");
    std::thread::sleep(Duration::from_millis(100));
    made.extend(s.tabs.burst(1, "b1", 20));
    made.extend(s.tabs.burst(2, "b2", 20));
    s.tabs.ok(1, STORAGE_REFUSES);
    s.tabs.op("close_tab", 0);
    let start = Instant::now();
    while s.tabs.ok(1, "return window.db.leads();") != true {
        assert!(start.elapsed() < LIMIT, "tab 1 never took over");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Tab 1 applies tab 2's writes (sent to it again) as its commits; it stores none.
    made.extend(s.tabs.burst(2, "c2", 20));
    let total = made.len() as u64;
    let start = Instant::now();
    while s.tabs.count(1) < total {
        assert!(start.elapsed() < LIMIT, "tab 1 never got tab 2's writes");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    eprintln!("tab 1 before its crash: {}", s.tabs.status(1));
    s.tabs.op("crash", 1);
    made.extend(s.tabs.burst(2, "d2", 20));
    let st = s.tabs.wait_status(2, "tab 2 to sync", online);
    let tab_count = s.tabs.count(2);
    eprintln!("tab 2 {st} count {tab_count}");
    let mut bad = compare(&s, &made, made.len() as u64);
    if tab_count != made.len() as u64 {
        bad.push(format!("tab 2 has {tab_count}, expected {}", made.len()));
    }
    if st["rejected"] != 0 {
        bad.push(format!("rejected {}", st["rejected"]));
    }
    server_log(&s);
    assert!(bad.is_empty(), "{bad:?}");
}
