//! Found by a red team (issue 11): a subscription widened after the server was restored from
//! a backup brings in what was missed; a borrow in a tree outside the subscription takes the
//! server's version of the record, so the holder never overwrites another replica's change
//! with a stale copy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use rekord::{Db, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, token};

#[rekord::record(tree = "a", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct A {
    pub n: u32,
}

#[rekord::record(tree = "b", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct B {
    pub n: u32,
    pub note: String,
}

const LIMIT: Duration = Duration::from_secs(30);

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token).timeout(Duration::from_secs(10))
}

fn bs(db: &Db) -> Vec<u32> {
    let mut b: Vec<u32> = db
        .tree::<B>()
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| r.unwrap().n.to_native())
        .collect();
    b.sort_unstable();
    b
}

fn open_read(path: &Path, cfg: SyncConfig) -> Vec<u32> {
    let db = Db::open_synced(path, cfg).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    bs(&db)
}

/// Was: coverage (`sync.coverage`) was not lowered when the server turned out to be behind the
/// replica (restored from a backup): the cursor went back to the server's head, but the
/// coverage of the trees outside the subscription kept the old, higher number, so widening
/// the subscription afterwards fetched nothing and the replica missed changes a fresh
/// replica has.
#[test]
fn widening_after_a_server_restore_brings_in_what_was_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let w = Db::memory_synced(config(addr, &token)).unwrap();
    w.wait_caught_up(LIMIT).unwrap();
    w.tree::<A>().unwrap().create(&A { n: 1 }).unwrap();
    w.tree::<B>()
        .unwrap()
        .create(&B {
            n: 10,
            note: String::new(),
        })
        .unwrap();
    w.wait_pushed(LIMIT).unwrap();
    let reader = tmp.path().join("reader.rekord");
    // The reader, all trees: sees b = [10].
    assert_eq!(open_read(&reader, config(addr, &token)), vec![10]);
    // Backup of the server now (stopped, file copy).
    server.kill();
    std::fs::copy(data.join("server.redb"), tmp.path().join("backup.redb")).unwrap();
    let server = ServerProcess::start(&data, &addr.to_string());
    // More changes in `a` after the backup; the reader sees them (cursor moves on).
    for n in 2..6 {
        w.tree::<A>().unwrap().create(&A { n }).unwrap();
    }
    w.wait_pushed(LIMIT).unwrap();
    drop(w);
    assert_eq!(open_read(&reader, config(addr, &token)), vec![10]);
    // The reader narrows to `a` only (coverage: every other tree up to its cursor).
    assert_eq!(
        open_read(&reader, config(addr, &token).trees(["a"])),
        vec![10]
    );
    // The server is restored from the backup (it lost the `a` creates).
    server.kill();
    std::fs::copy(tmp.path().join("backup.redb"), data.join("server.redb")).unwrap();
    let server = ServerProcess::start(&data, &addr.to_string());
    // A new writer writes to `b` on the restored server.
    let w2 = Db::memory_synced(config(addr, &token)).unwrap();
    w2.wait_caught_up(LIMIT).unwrap();
    w2.tree::<B>()
        .unwrap()
        .create(&B {
            n: 20,
            note: String::new(),
        })
        .unwrap();
    w2.wait_pushed(LIMIT).unwrap();
    // The reader (still `a` only) meets the server behind it: cursor back to its head.
    assert_eq!(
        open_read(&reader, config(addr, &token).trees(["a"])),
        vec![10]
    );
    // A fresh replica of all trees holds b = [10, 20].
    let fresh = tmp.path().join("fresh.rekord");
    assert_eq!(open_read(&fresh, config(addr, &token)), vec![10, 20]);
    // The reader widens to all trees: it should receive b 20 too.
    let got = open_read(&reader, config(addr, &token));
    drop(w2);
    server.kill();
    assert!(
        got.contains(&20),
        "after widening, the reader lacks b 20 that a fresh replica has: {got:?}"
    );
}

/// Was: a borrow in a tree outside the subscription was applied to whatever copy the replica
/// had (`apply_borrow` only set the holder): a stale copy. The application, told it holds the record, reads the old value; its next update
/// is a `Put` of the whole stale record, which the server accepts (it holds the borrow) and
/// which silently overwrites the other replica's change.
#[test]
fn a_borrow_outside_the_subscription_takes_the_servers_version() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    // Replica X subscribes to `a` only but writes a record of `b`.
    let x = Db::memory_synced(config(addr, &token).trees(["a"])).unwrap();
    let y = Db::memory_synced(config(addr, &token)).unwrap();
    x.wait_caught_up(LIMIT).unwrap();
    y.wait_caught_up(LIMIT).unwrap();
    let xb = x.tree::<B>().unwrap();
    let k = xb
        .create(&B {
            n: 1,
            note: "x".into(),
        })
        .unwrap();
    xb.return_borrow(k).unwrap();
    x.wait_pushed(LIMIT).unwrap();
    // Y borrows it, changes it, returns it.
    let yb = y.tree::<B>().unwrap();
    let start = Instant::now();
    while yb.get(k).is_err() {
        assert!(start.elapsed() < LIMIT);
        std::thread::sleep(Duration::from_millis(10));
    }
    yb.borrow(k).unwrap();
    yb.update(k, |r| r.note = "written by y".into()).unwrap();
    yb.return_borrow(k).unwrap();
    y.wait_pushed(LIMIT).unwrap();
    // X borrows it again: the grant is applied from the answer.
    xb.borrow(k).unwrap();
    let seen = xb.get(k).unwrap();
    // X changes another field and pushes.
    xb.update(k, |r| r.n = 2).unwrap();
    x.wait_pushed(LIMIT).unwrap();
    let start = Instant::now();
    while yb.get(k).unwrap().n != 2 {
        assert!(start.elapsed() < LIMIT, "y never saw x's update");
        std::thread::sleep(Duration::from_millis(10));
    }
    let final_y = yb.get(k).unwrap();
    drop((xb, yb, x, y));
    server.kill();
    assert!(
        seen.note == "written by y" && final_y.note == "written by y",
        "x read {:?} after its borrow; y ends with {:?} (y's change overwritten)",
        seen.note,
        final_y.note
    );
}
