//! Red team rt23: a browser tab (headless Chromium) whose id ranges the restored server
//! grants again to another replica.
//!
//! The restore gap (`RESTORE_ID_GAP`, 2^44 ids past the backup's allocator) is counted from
//! the backup's allocator, but every ordinary start of the server moves the allocator by
//! `START_ID_GAP` (2^40). After 16 starts between the backup and the restore, the old server
//! granted ranges at and past `backup + 2^44`: exactly where the restored server grants
//! again. The same holds when one backup file is restored twice (both starts move from the
//! same allocator by the same gap).
//!
//! Both failed before eda9a103 (11 of the tab's 29 writes lost: 5 replaced at native and at
//! the other replica by the other replica's records with the same ids, 6 offline ones
//! rejected); they pass from eda9a103 on (the data directory keeps the allocators'
//! high-water marks). The 15-restart case is the control.
//!
//! ```text
//! mkdir -p target/chrome-tmp
//! TMPDIR=$PWD/target/chrome-tmp cargo test -p rekord-server --test redteam_rt23_restore_ids -- --ignored --nocapture --test-threads 1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;
#[path = "common/tabs.rs"]
mod tabs;

use rekord::Db;
use std::time::{Duration, Instant};
use tabs::*;

/// Tab `t` creates up to `n` parts `prefix i` (qty i), stopping at the first "no ids"
/// (offline, out of ids): the ones made.
fn try_burst(s: &mut Setup, t: usize, prefix: &str, n: u32) -> Vec<(u64, String, u32)> {
    let js = format!(
        r#"const out = [];
        for (let i = 0; i < {n}; i++) {{
            const id = window.db.create({prefix:?} + ' ' + i, i);
            if (id < 0) break;
            out.push(id);
        }}
        return out.join(',');"#
    );
    let v = s.tabs.ok(t, &js);
    v.as_str()
        .unwrap()
        .split(',')
        .filter(|x| !x.is_empty())
        .enumerate()
        .map(|(i, x)| {
            (
                x.parse::<f64>().unwrap() as u64,
                format!("{prefix} {i}"),
                i as u32,
            )
        })
        .collect()
}

/// How a post-backup range comes to be granted again.
#[derive(Clone, Copy, Debug)]
enum Regrant {
    /// 16 ordinary restarts between the backup and the restore.
    Restarts(u32),
    /// The same backup restored twice (the tab's range granted between the two restores).
    SameBackupTwice,
}

fn case(how: Regrant) -> Vec<String> {
    let mut s = setup();
    let name = "rt23ids";
    let mut bad = vec![];
    // Ranges of 8 ids: the tab asks for a new range after a few creates.
    s.tabs.open_ranged(0, name, 8);
    s.tabs.wait_status(0, "tab 0 online", online);
    let mut made = s.tabs.burst(0, "pre", 3);
    s.tabs.ok(0, "await window.db.flush(); return null;");
    s.tabs.wait_status(0, "pre pushed", online);
    let backup = s.dir.path().join("backup.redb");
    process::backup(&s.data, &backup);
    match how {
        Regrant::Restarts(n) => {
            for _ in 0..n {
                s.restart();
            }
        }
        Regrant::SameBackupTwice => s.restore_from(&backup),
    }
    s.tabs
        .wait_status(0, "tab 0 online after the restarts", online);
    // Online writes: the tab needs new ranges now (granted by the latest start).
    made.extend(s.tabs.burst(0, "online", 20));
    s.tabs.ok(0, "await window.db.flush(); return null;");
    s.tabs.wait_status(0, "online writes pushed", online);
    assert!(
        native_lacks(&s, &made, 30).is_empty(),
        "online writes never reached native"
    );
    // Offline writes, in the same ranges (as many as the tab has ids for).
    s.server.take().unwrap().kill();
    let offline = try_burst(&mut s, 0, "offline", 6);
    eprintln!("offline writes: {offline:?}");
    made.extend(offline);
    s.tabs.ok(0, "await window.db.flush(); return null;");
    // The user closes the tab; the server comes back restored from the backup.
    s.tabs.op("close_tab", 0);
    s.restore_from(&backup);
    // Another replica connects first and creates.
    let other = Db::open_synced(
        s.dir.path().join("other.rekord"),
        process::config(s.addr, &s.tabs.token),
    )
    .unwrap();
    other.wait_caught_up(LIMIT).unwrap();
    let ot = other.tree::<Part>().unwrap();
    let mut other_made = vec![];
    for i in 0..5u32 {
        let k = ot
            .create(&Part {
                name: format!("other {i}"),
                qty: 500 + i,
            })
            .unwrap();
        other_made.push((k.id(), format!("other {i}"), 500 + i));
    }
    other.wait_pushed(LIMIT).unwrap();
    let tab_ids: Vec<u64> = made.iter().map(|m| m.0).collect();
    let reused: Vec<u64> = other_made
        .iter()
        .map(|m| m.0)
        .filter(|id| tab_ids.contains(id))
        .collect();
    eprintln!(
        "tab ids {:?}\nother ids {:?}",
        tab_ids,
        other_made.iter().map(|m| m.0).collect::<Vec<_>>()
    );
    if !reused.is_empty() {
        bad.push(format!(
            "the restored server granted the other replica ids the tab had used: {reused:?}"
        ));
    }
    // The tab comes back (a new tab opens the same database).
    s.tabs.op("new", 1);
    s.tabs.open_ranged(1, name, 8);
    let start = Instant::now();
    let mut st = s.tabs.status(1);
    while !online(&st) && start.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_millis(100));
        st = s.tabs.status(1);
    }
    eprintln!("tab 1 status {st}");
    let _ = other.wait_caught_up(LIMIT);
    for id in reused.iter().take(2) {
        let k = rekord::Key::<Part>::new(*id, 0);
        eprintln!(
            "{id}: tab 1 has {:?}; the other replica ({:?}) has holder {:?}; native holder {:?}",
            s.tabs.get(1, *id),
            other.sync_status().and_then(|st| st.replica),
            ot.meta(k).map(|m| m.holder).ok(),
            s.parts.meta(k).map(|m| m.holder).ok()
        );
    }
    if let Some(id) = reused.first() {
        let k = rekord::Key::<Part>::new(*id, 0);
        if let Err(e) = ot.update(k, |p| p.qty += 1) {
            bad.push(format!(
                "the other replica can no longer change the part it created ({id}): {e}"
            ));
        }
    }
    let tab_only: Vec<u64> = made
        .iter()
        .map(|m| m.0)
        .filter(|id| !reused.contains(id))
        .collect();
    eprintln!(
        "tab 1 has its last write: {:?}",
        s.tabs.get(1, *tab_only.last().unwrap())
    );
    let _ = other.wait_caught_up(LIMIT);
    let mut all = made.clone();
    all.extend(other_made.iter().cloned());
    let lack = native_lacks(&s, &all, 30);
    if !lack.is_empty() {
        bad.push(format!(
            "{} writes missing or wrong at native: {:?}",
            lack.len(),
            &lack[..lack.len().min(8)]
        ));
    }
    // The other replica too must have every write of the tab, and keep its own.
    let mut other_lacks = vec![];
    for (id, nm, q) in &all {
        let got = ot.get(rekord::Key::new(*id, 0)).ok();
        if got.as_ref().is_none_or(|p| &p.name != nm || p.qty != *q) {
            other_lacks.push(format!("{id} {nm} {q}: other has {got:?}"));
        }
    }
    if !other_lacks.is_empty() {
        bad.push(format!(
            "{} writes missing or wrong at the other replica: {:?}",
            other_lacks.len(),
            &other_lacks[..other_lacks.len().min(8)]
        ));
    }
    if st["rejected"] != 0 {
        bad.push(format!("the tab had writes rejected: {st}"));
    }
    let ns = s._native.sync_status().unwrap();
    eprintln!("native status {ns:?}; other {:?}", other.sync_status());
    server_log(&s);
    bad
}

/// Sixteen ordinary restarts between the backup and the restore (a crash loop, or a
/// fortnight of daily deploys), then the tab takes new ranges, writes online and offline, is
/// closed; the server is restored; another replica connects first and creates. Every write
/// of both must end at native and at the other replica, no id used by both.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_restarts_between_backup_and_restore_regrant_the_tabs_ids() {
    let bad = case(Regrant::Restarts(16));
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Control: 15 restarts (the old server's allocator stays below the restored one's).
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_control_fifteen_restarts() {
    let bad = case(Regrant::Restarts(15));
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The same backup restored twice: the tab's ranges granted between the two restores are
/// granted again after the second.
#[test]
#[ignore = "red team: needs the built web example, node and Chromium"]
fn rt23_the_same_backup_restored_twice_regrants_the_tabs_ids() {
    let bad = case(Regrant::SameBackupTwice);
    assert!(bad.is_empty(), "{bad:#?}");
}
