//! Red team session 6: optimistic records through restores (three replicas at once, two
//! restores in a row, a replica away through both, client processes killed while they
//! reconcile or recheck), a refused write resynced while the replica keeps writing, and
//! `Db::write` of a large batch while the server dies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rekord::{Db, Error, Key, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{BIN, ServerProcess, backup, restore, token};

#[path = "common/restore.rs"]
mod shared;
use shared::{Note, Part, converge_with, note, notes, open_with, parts, set_note, trace};

const LIMIT: Duration = Duration::from_secs(20);
const CHILD_ENV: &str = "REKORD_S6_CHILD";

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    let c = process::config(addr, token)
        .range_size(3)
        .timeout(Duration::from_secs(10));
    // REDTEAM_S6_DECLARE=1: `notes` declared optimistic up front (a control).
    if std::env::var_os("REDTEAM_S6_DECLARE").is_some() {
        c.optimistic("notes", rekord::Merge::three_way())
    } else {
        c
    }
}

fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > LIMIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn open(path: &Path, addr: std::net::SocketAddr, token: &str) -> Db {
    open_with(path, config(addr, token))
}

fn converge(addr: std::net::SocketAddr, token: &str, dbs: &[(&str, &Db)]) -> Db {
    converge_with(config(addr, token), dbs)
}

fn mk_note(db: &Db, a: u32, b: u32) -> Key<Note> {
    db.tree::<Note>().unwrap().create(&Note { a, b }).unwrap()
}

fn settle(dbs: &[&Db]) {
    for _ in 0..2 {
        for d in dbs {
            let _ = d.wait_caught_up(LIMIT);
            let _ = d.wait_pushed(LIMIT);
        }
    }
}

/// Three replicas edit optimistic notes after the backup (acknowledged) and again while
/// the server is down (waiting edits); the restored server meets all three at once
/// (`staggered`: C only after A and B settled).
fn three_replicas(staggered: bool) {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let paths: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| tmp.path().join(format!("{n}.rekord")))
        .collect();
    let bk = tmp.path().join("bk.redb");
    let a = open(&paths[0], addr, &token);
    let b = open(&paths[1], addr, &token);
    let c = open(&paths[2], addr, &token);
    let n1 = mk_note(&a, 0, 0);
    let n2 = mk_note(&a, 0, 0);
    let n3 = mk_note(&b, 0, 0);
    settle(&[&a, &b, &c]);
    assert!(eventually(|| [&a, &b, &c]
        .iter()
        .all(|d| notes(d).len() == 3)));
    backup(&data, &bk);
    set_note(&a, n1, |x| x.a = 1);
    set_note(&b, n2, |x| x.b = 2);
    let m = mk_note(&c, 50, 50); // made after the backup, in C's range
    let q = mk_note(&b, 60, 60); // made after the backup, in B's range
    settle(&[&a, &b, &c]);
    assert!(eventually(|| [&a, &b, &c]
        .iter()
        .all(|d| notes(d).len() == 5)));
    set_note(&a, m, |x| x.a = 5);
    set_note(&c, q, |x| x.b = 6);
    settle(&[&a, &b, &c]);
    assert!(eventually(|| [&a, &b, &c].iter().all(|d| note(d, m)
        == Some((5, 50))
        && note(d, q) == Some((60, 6))
        && note(d, n1) == Some((1, 0))
        && note(d, n2) == Some((0, 2)))));
    server.kill();
    // Waiting edits, each on another field.
    set_note(&a, n2, |x| x.a = 11);
    set_note(&b, n3, |x| x.b = 12);
    set_note(&c, n1, |x| x.b = 13);
    set_note(&c, m, |x| x.b = 14);
    set_note(&a, q, |x| x.a = 15);
    let c = if staggered {
        drop(c);
        None
    } else {
        Some(c)
    };
    std::fs::copy(&bk, data.join("server.redb")).unwrap();
    let server = ServerProcess::start(&data, &addr.to_string());
    settle(&[&a, &b]);
    let c = c.unwrap_or_else(|| open(&paths[2], addr, &token));
    settle(&[&a, &b, &c]);
    let fresh = converge(addr, &token, &[("A", &a), ("B", &b), ("C", &c)]);
    let got = [n1, n2, n3, m, q].map(|k| note(&fresh, k));
    assert_eq!(
        got,
        [
            Some((1, 13)),
            Some((11, 2)),
            Some((0, 12)),
            Some((5, 14)),
            Some((15, 6))
        ],
        "n1 n2 n3 m q"
    );
    drop((a, b, c, fresh));
    server.kill();
}

#[test]
fn redteam_s6_three_replicas_with_waiting_optimistic_edits_reconcile_at_once() {
    three_replicas(false);
}

#[test]
fn redteam_s6_three_replicas_with_waiting_optimistic_edits_staggered() {
    three_replicas(true);
}

/// Two restores in a row from the same backup: A and B reconcile after the first and work
/// (acknowledged); the second restore loses that again. C was away through both, with
/// acknowledged work from before the first and waiting edits.
#[test]
fn redteam_s6_two_restores_and_a_replica_away_through_both() {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let paths: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| tmp.path().join(format!("{n}.rekord")))
        .collect();
    let bk = tmp.path().join("bk.redb");
    let (n1, n2, p, m, p2, r);
    {
        let a = open(&paths[0], addr, &token);
        let b = open(&paths[1], addr, &token);
        let c = open(&paths[2], addr, &token);
        n1 = mk_note(&a, 0, 0);
        n2 = mk_note(&b, 0, 0);
        p = a
            .tree::<Part>()
            .unwrap()
            .create(&Part {
                name: "p".into(),
                qty: 1,
            })
            .unwrap();
        settle(&[&a, &b, &c]);
        assert!(eventually(|| [&a, &b, &c]
            .iter()
            .all(|d| notes(d).len() == 2)));
        backup(&data, &bk);
        set_note(&c, n1, |x| x.b = 3);
        m = mk_note(&c, 70, 70);
        set_note(&a, n2, |x| x.a = 4);
        a.tree::<Part>().unwrap().update(p, |x| x.qty = 2).unwrap();
        settle(&[&a, &b, &c]);
        assert!(eventually(|| [&a, &b, &c]
            .iter()
            .all(|d| note(d, n1) == Some((0, 3))
                && note(d, n2) == Some((4, 0))
                && note(d, m).is_some())));
        set_note(&b, m, |x| x.a = 71);
        settle(&[&a, &b, &c]);
        assert!(eventually(|| note(&c, m) == Some((71, 70))));
    }
    server.kill();
    {
        // C works while the server is down, then stays away.
        let c = Db::open_synced(&paths[2], config(addr, &token)).unwrap();
        set_note(&c, n2, |x| x.b = 5);
        set_note(&c, m, |x| x.b = 72);
        assert!(c.sync_status().unwrap().outbox > 0);
    }
    std::fs::copy(&bk, data.join("server.redb")).unwrap();
    let server = ServerProcess::start(&data, &addr.to_string());
    {
        let a = open(&paths[0], addr, &token);
        let b = open(&paths[1], addr, &token);
        settle(&[&a, &b]);
        set_note(&a, n1, |x| x.a = 6);
        set_note(&b, n2, |x| x.a = 7);
        p2 = b
            .tree::<Part>()
            .unwrap()
            .create(&Part {
                name: "p2".into(),
                qty: 9,
            })
            .unwrap();
        r = mk_note(&a, 80, 80);
        settle(&[&a, &b]);
        assert!(eventually(
            || note(&b, r).is_some() && note(&a, n2) == Some((7, 0))
        ));
        set_note(&b, r, |x| x.b = 81);
        settle(&[&a, &b]);
    }
    let server = restore(server, &data, &bk);
    let a = open(&paths[0], addr, &token);
    let b = open(&paths[1], addr, &token);
    settle(&[&a, &b]);
    let c = open(&paths[2], addr, &token);
    settle(&[&a, &b, &c]);
    let fresh = converge(addr, &token, &[("A", &a), ("B", &b), ("C", &c)]);
    let got = [n1, n2, m, r].map(|k| note(&fresh, k));
    assert_eq!(
        got,
        [Some((6, 3)), Some((7, 5)), Some((71, 72)), Some((80, 81))],
        "n1 n2 m r"
    );
    let t = fresh.tree::<Part>().unwrap();
    assert_eq!(t.get(t.latest(p.id()).unwrap().unwrap()).unwrap().qty, 2);
    assert_eq!(t.get(t.latest(p2.id()).unwrap().unwrap()).unwrap().qty, 9);
    drop((a, b, c, fresh));
    server.kill();
}

// ---- client processes killed while they reconcile / recheck ----

#[test]
fn redteam_s6_client_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.splitn(3, '|');
    let (path, addr, token) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let db = Db::open_synced(path, config(addr.parse().unwrap(), token)).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "@ open").unwrap();
    out.flush().unwrap();
    // Keep editing a note of its own while reconciling (a write racing the recheck).
    let mine: Option<Key<Note>> =
        db.tree::<Note>()
            .unwrap()
            .keys()
            .unwrap()
            .into_iter()
            .find(|k| {
                let want = if path.ends_with("a.rekord") {
                    1000
                } else {
                    2000
                };
                db.tree::<Note>().unwrap().get(*k).unwrap().a == want
            });
    let mut i = 0u32;
    loop {
        if let Some(k) = mine {
            i += 1;
            let _ = db.tree::<Note>().unwrap().update(k, |x| x.b = i);
        }
        std::thread::sleep(Duration::from_millis(2));
        if i > 1_000_000 {
            break;
        }
    }
    drop(db);
}

fn spawn(path: &Path, addr: std::net::SocketAddr, token: &str) -> Child {
    let mut child = process::child(
        "redteam_s6_client_process",
        CHILD_ENV,
        format!("{}|{}|{}", path.display(), addr, token),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child exited");
        if line.contains("@ open") {
            break;
        }
    }
    child
}

/// A and B (client processes) reconcile at once with waiting optimistic edits and are
/// killed at `delays`, both at the same time; each keeps editing a note of its own
/// meanwhile. Then reopened: they must converge with a fresh replica, with every
/// acknowledged edit and every waiting edit.
fn killed_reconciling_optimistic(delays: &[u64]) {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (ap, bp) = (tmp.path().join("a.rekord"), tmp.path().join("b.rekord"));
    let bk = tmp.path().join("bk.redb");
    let (shared, own_a, own_b, late_a, late_b);
    {
        let a = open(&ap, addr, &token);
        let b = open(&bp, addr, &token);
        shared = (0..6).map(|_| mk_note(&a, 0, 0)).collect::<Vec<_>>();
        own_a = mk_note(&a, 1000, 0);
        own_b = mk_note(&b, 2000, 0);
        settle(&[&a, &b]);
        assert!(eventually(|| notes(&a).len() == 8 && notes(&b).len() == 8));
        backup(&data, &bk);
        for (i, k) in shared.iter().enumerate() {
            set_note(&a, *k, |x| x.a = 10 + i as u32);
        }
        late_a = (0..4).map(|i| mk_note(&a, 100 + i, 0)).collect::<Vec<_>>();
        late_b = (0..4).map(|i| mk_note(&b, 200 + i, 0)).collect::<Vec<_>>();
        settle(&[&a, &b]);
        assert!(eventually(|| notes(&a).len() == 16
            && notes(&b).len() == 16
            && notes(&a)
                .iter()
                .map(|r| (r.0, r.2, r.3))
                .collect::<Vec<_>>()
                == notes(&b)
                    .iter()
                    .map(|r| (r.0, r.2, r.3))
                    .collect::<Vec<_>>()));
        for (i, k) in shared.iter().enumerate() {
            set_note(&b, *k, |x| x.b = 20 + i as u32);
        }
        for k in &late_a {
            set_note(&b, *k, |x| x.b = 1);
        }
        settle(&[&a, &b]);
    }
    server.kill();
    {
        let a = Db::open_synced(&ap, config(addr, &token)).unwrap();
        let b = Db::open_synced(&bp, config(addr, &token)).unwrap();
        for k in &late_b {
            set_note(&a, *k, |x| x.b = 2);
        }
        for k in &shared[..3] {
            set_note(&a, *k, |x| x.a += 100);
        }
        for k in &shared[3..] {
            set_note(&b, *k, |x| x.b += 100);
        }
        assert!(a.sync_status().unwrap().outbox > 0);
    }
    std::fs::copy(&bk, data.join("server.redb")).unwrap();
    let server = ServerProcess::start(&data, &addr.to_string());
    for &d in delays {
        let mut ca = spawn(&ap, addr, &token);
        let mut cb = spawn(&bp, addr, &token);
        std::thread::sleep(Duration::from_millis(d));
        ca.kill().unwrap();
        cb.kill().unwrap();
        ca.wait().unwrap();
        cb.wait().unwrap();
    }
    let a = open(&ap, addr, &token);
    let b = open(&bp, addr, &token);
    settle(&[&a, &b]);
    let fresh = converge(addr, &token, &[("A", &a), ("B", &b)]);
    let mut want = Vec::new();
    for (i, k) in shared.iter().enumerate() {
        let i = i as u32;
        let (x, y) = if i < 3 {
            (110 + i, 20 + i)
        } else {
            (10 + i, 120 + i)
        };
        want.push((*k, Some((x, y))));
    }
    for (i, k) in late_a.iter().enumerate() {
        want.push((*k, Some((100 + i as u32, 1))));
    }
    for (i, k) in late_b.iter().enumerate() {
        want.push((*k, Some((200 + i as u32, 2))));
    }
    let bad: Vec<_> = want
        .iter()
        .filter(|(k, w)| note(&fresh, *k) != *w)
        .map(|(k, w)| (k.id(), *w, note(&fresh, *k)))
        .collect();
    assert!(
        bad.is_empty(),
        "(id, want, got): {bad:?}; own notes {:?} {:?}",
        note(&fresh, own_a),
        note(&fresh, own_b)
    );
    assert_eq!(notes(&fresh).len(), 16);
    drop((a, b, fresh));
    server.kill();
}

#[test]
fn redteam_s6_killed_early_reconciling_optimistic() {
    killed_reconciling_optimistic(&[1, 4, 8, 15, 25]);
}

#[test]
fn redteam_s6_killed_later_reconciling_or_rechecking_optimistic() {
    killed_reconciling_optimistic(&[40, 70, 110, 160, 250, 400]);
}

// ---- a refused write resynced while the replica keeps writing ----

/// A holds X and Y and writes both in one batch, in a loop; the administrator takes X's
/// borrow back. The batches carrying X are refused (X and Y resynced) while A keeps writing
/// Y. A's last write of Y must be what everyone ends with.
#[test]
fn redteam_s6_writes_while_a_refused_write_is_resynced() {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let a = open(&tmp.path().join("a.rekord"), addr, &token);
    let t = a.tree::<Part>().unwrap();
    let x = t
        .create(&Part {
            name: "x".into(),
            qty: 0,
        })
        .unwrap();
    let y = t
        .create(&Part {
            name: "y".into(),
            qty: 0,
        })
        .unwrap();
    a.wait_pushed(LIMIT).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let a = a.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u32;
            let mut last_y = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let r = a.write(|b| {
                    let mut t = b.tree::<Part>()?;
                    let _ = t.update(x, |p| p.qty = i);
                    t.update(y, |p| p.qty = i)?;
                    Ok(())
                });
                if r.is_ok() {
                    last_y = i;
                }
                // Y alone too, sometimes.
                if i.is_multiple_of(3) {
                    i += 1;
                    if a.tree::<Part>().unwrap().update(y, |p| p.qty = i).is_ok() {
                        last_y = i;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            last_y
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args(["borrow", "force-return", "--tree", "parts", "--id"])
        .arg(x.id().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last_y = writer.join().unwrap();
    settle(&[&a]);
    let fresh = converge(addr, &token, &[("A", &a)]);
    let ft = fresh.tree::<Part>().unwrap();
    let got = ft.get(ft.latest(y.id()).unwrap().unwrap()).unwrap().qty;
    eprintln!("status {:?}", a.sync_status());
    assert_eq!(got, last_y, "Y: A's last acknowledged-locally write");
    drop((a, fresh));
    server.kill();
}

// ---- Db::write of a large batch while the server dies ----

fn big_write(kill_after: Duration, n: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let timeout = Duration::from_secs(4);
    let a = Db::open_synced(
        tmp.path().join("a.rekord"),
        process::config(addr, &token).range_size(3).timeout(timeout),
    )
    .unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(kill_after);
        server.kill();
    });
    let start = Instant::now();
    let mut runs = 0;
    let r = a.write(|b| {
        runs += 1;
        let mut t = b.tree::<Part>()?;
        for i in 0..n {
            t.create(&Part {
                name: format!("w{i}"),
                qty: i,
            })?;
        }
        Ok(())
    });
    let took = start.elapsed();
    killer.join().unwrap();
    let count = parts(&a).len();
    eprintln!("n {n} kill after {kill_after:?}: {r:?} in {took:?}, {runs} runs, {count} parts");
    match r {
        Ok(()) => assert_eq!(count, n as usize),
        Err(Error::IdsExhausted) | Err(Error::Offline { .. }) => assert_eq!(count, 0),
        Err(e) => panic!("unexpected {e:?}"),
    }
    assert!(
        took < timeout + Duration::from_millis(1500),
        "Db::write took {took:?} with a sync timeout of {timeout:?}"
    );
}

#[test]
fn redteam_s6_large_write_while_the_server_dies_early() {
    big_write(Duration::from_millis(5), 3000);
}

#[test]
fn redteam_s6_large_write_while_the_server_dies_later() {
    big_write(Duration::from_millis(60), 3000);
}

#[test]
fn redteam_s6_huge_write_while_the_server_dies() {
    big_write(Duration::from_millis(150), 40000);
}

/// A batch whose runs take a while (1.8 s each; sync timeout 4 s): the server dies after the
/// first refill. The second run ends before the deadline and asks for ids again: that wait
/// is a whole timeout long, past the deadline `Db::write` documents.
#[test]
fn redteam_s6_slow_write_runs_past_the_sync_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let timeout = Duration::from_secs(4);
    let a = Db::open_synced(
        tmp.path().join("a.rekord"),
        process::config(addr, &token).range_size(3).timeout(timeout),
    )
    .unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        server.kill();
    });
    let start = Instant::now();
    let mut runs = 0u64;
    let r = a.write(|b| {
        runs += 1;
        std::thread::sleep(Duration::from_millis(1800));
        let mut t = b.tree::<Part>()?;
        for i in 0..(20 * runs * runs) {
            t.create(&Part {
                name: format!("w{i}"),
                qty: 0,
            })?;
        }
        Ok(())
    });
    let took = start.elapsed();
    killer.join().unwrap();
    eprintln!("{r:?} in {took:?}, {runs} runs, {} parts", parts(&a).len());
    assert!(r.is_err() || parts(&a).len() as u64 == 20 * runs * runs);
    assert!(
        took < timeout + Duration::from_millis(2000),
        "Db::write took {took:?} with a sync timeout of {timeout:?} ({runs} runs)"
    );
}

/// One restore: C edits note n (acknowledged) after the backup and goes away; A reconciles
/// (adopts the server's n) and edits another field of n (acknowledged); C comes back and
/// sends its edit again: both fields must hold.
#[test]
fn redteam_s6_acknowledged_optimistic_edit_of_a_replica_away_meets_a_later_edit() {
    acked_edit_away(false);
}

/// Control: the same with `notes` declared optimistic in C's configuration (known before
/// the reconciliation runs, not only once the application opens the tree).
#[test]
fn redteam_s6_control_same_with_the_merge_in_the_config() {
    acked_edit_away(true);
}

fn acked_edit_away(declared: bool) {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (ap, cp) = (tmp.path().join("a.rekord"), tmp.path().join("c.rekord"));
    let bk = tmp.path().join("bk.redb");
    let n;
    {
        let a = open(&ap, addr, &token);
        let c = open(&cp, addr, &token);
        n = mk_note(&a, 0, 0);
        settle(&[&a, &c]);
        assert!(eventually(|| note(&c, n).is_some()));
        backup(&data, &bk);
        set_note(&c, n, |x| x.b = 3);
        settle(&[&a, &c]);
        assert!(eventually(|| note(&a, n) == Some((0, 3))));
    }
    let server = restore(server, &data, &bk);
    let a = open(&ap, addr, &token);
    settle(&[&a]);
    eprintln!("A after reconciling: {:?}", note(&a, n));
    set_note(&a, n, |x| x.a = 6);
    settle(&[&a]);
    let c = if declared {
        let c = Db::open_synced(
            &cp,
            config(addr, &token).optimistic("notes", rekord::Merge::three_way()),
        )
        .unwrap();
        c.wait_caught_up(LIMIT).unwrap();
        c
    } else {
        open(&cp, addr, &token)
    };
    settle(&[&a, &c]);
    let fresh = converge(addr, &token, &[("A", &a), ("C", &c)]);
    assert_eq!(note(&fresh, n), Some((6, 3)));
    drop((a, c, fresh));
    server.kill();
}

// ---- a record another replica borrows while this one waits to take it back ----

/// B edits a record after the backup; the server is restored; A takes the server's version
/// and borrows the record before B comes back. B, coming back, waits to take the record
/// back (A holds it) and then learns that A's borrow stands: it must fetch the server's
/// version, not keep its own edit under A's borrow (seed 1795998821454072938 of the fault
/// test ended that way: a borrow push carries no data).
#[test]
fn a_record_borrowed_elsewhere_while_waiting_to_take_it_back_is_fetched_again() {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (pa, pb) = (tmp.path().join("a.rekord"), tmp.path().join("b.rekord"));
    let bk = tmp.path().join("bk.redb");
    let x;
    {
        let a = open(&pa, addr, &token);
        let b = open(&pb, addr, &token);
        let t = a.tree::<Part>().unwrap();
        x = t
            .create(&Part {
                name: "x".into(),
                qty: 1,
            })
            .unwrap();
        t.return_borrow(x).unwrap();
        settle(&[&a, &b]);
        assert!(eventually(|| parts(&b).len() == 1));
        backup(&data, &bk);
        let tb = b.tree::<Part>().unwrap();
        tb.borrow(x).unwrap();
        tb.update(x, |p| p.qty = 99).unwrap();
        settle(&[&a, &b]);
        assert!(eventually(|| parts(&a).first().is_some_and(|r| r.3 == 99)));
    }
    let server = restore(server, &data, &bk);
    let replica_a;
    {
        // A takes the server's version (qty 1, nobody's) and borrows the record, unedited.
        let a = open(&pa, addr, &token);
        settle(&[&a]);
        assert!(eventually(|| parts(&a).first().is_some_and(|r| r.3 == 1)));
        a.tree::<Part>().unwrap().borrow(x).unwrap();
        replica_a = a.replica();
        settle(&[&a]);
    }
    let a = open(&pa, addr, &token);
    let (b, events) = Db::open_synced_subscribed(&pb, config(addr, &token)).unwrap();
    settle(&[&a, &b]);
    let fresh = converge(addr, &token, &[("A", &a), ("B", &b)]);
    let row = parts(&fresh)[0].clone();
    assert_eq!(
        (row.3, row.6),
        (1, replica_a),
        "qty and holder: A's borrow of the server's version"
    );
    assert_eq!(parts(&b), parts(&fresh), "B holds what the server holds");
    // B is told its post-backup edit gave way to A's borrow.
    let superseded: Vec<_> = events
        .try_iter()
        .filter_map(|e| match e {
            rekord::Event::Sync(rekord::SyncEvent::Superseded { id, holder, .. }) => {
                Some((id, holder))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        superseded,
        vec![(x.id(), replica_a)],
        "B reports the record"
    );
    drop((a, b, fresh));
    server.kill();
}
