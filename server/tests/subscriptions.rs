//! Widening a subscription brings in what was hidden (issue 11): a replica that caught up
//! with a subset of trees, reopened with more trees (or all), receives the records of the
//! trees it adds, however its subscription shrank and grew before.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use rekord::{Db, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, config, issue, revoke, token};

#[rekord::record(tree = "a", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct A {
    pub n: u32,
}

#[rekord::record(tree = "b", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct B {
    pub n: u32,
}

const LIMIT: Duration = Duration::from_secs(30);

/// Opens the reader with `trees` (empty: all), catches up, and returns the `n`s of its
/// records of `a` and of `b`, sorted.
fn read(path: &Path, cfg: SyncConfig) -> (Vec<u32>, Vec<u32>) {
    let db = Db::open_synced(path, cfg).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let mut a: Vec<u32> = db
        .tree::<A>()
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| r.unwrap().n.to_native())
        .collect();
    let mut b: Vec<u32> = db
        .tree::<B>()
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| r.unwrap().n.to_native())
        .collect();
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

#[test]
fn a_subscription_that_grows_receives_what_it_did_not_see() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let w = Db::memory_synced(config(server.addr, &token)).unwrap();
    w.wait_caught_up(LIMIT).unwrap();
    let (wa, wb) = (w.tree::<A>().unwrap(), w.tree::<B>().unwrap());
    wa.create(&A { n: 1 }).unwrap();
    wb.create(&B { n: 10 }).unwrap();
    wb.create(&B { n: 11 }).unwrap();
    wa.create(&A { n: 2 }).unwrap();
    w.wait_pushed(LIMIT).unwrap();

    let path = tmp.path().join("reader.rekord");
    let only_a = || config(server.addr, &token).trees(["a"]);
    assert_eq!(read(&path, only_a()), (vec![1, 2], vec![]));
    // Grows to a and b: b's records arrive.
    let a_and_b = config(server.addr, &token).trees(["a", "b"]);
    assert_eq!(read(&path, a_and_b), (vec![1, 2], vec![10, 11]));
    // Shrinks to a; b changes meanwhile; grows to all trees: b's new record arrives too.
    assert_eq!(read(&path, only_a()), (vec![1, 2], vec![10, 11]));
    wb.create(&B { n: 12 }).unwrap();
    wa.create(&A { n: 3 }).unwrap();
    w.wait_pushed(LIMIT).unwrap();
    assert_eq!(read(&path, only_a()), (vec![1, 2, 3], vec![10, 11]));
    assert_eq!(
        read(&path, config(server.addr, &token)),
        (vec![1, 2, 3], vec![10, 11, 12])
    );
    // From all trees to b only, then to all again: nothing lost, nothing doubled.
    wa.create(&A { n: 4 }).unwrap();
    w.wait_pushed(LIMIT).unwrap();
    let only_b = config(server.addr, &token).trees(["b"]);
    assert_eq!(read(&path, only_b), (vec![1, 2, 3], vec![10, 11, 12]));
    assert_eq!(
        read(&path, config(server.addr, &token)),
        (vec![1, 2, 3, 4], vec![10, 11, 12])
    );
    // A fresh replica agrees.
    let fresh = tmp.path().join("fresh.rekord");
    assert_eq!(
        read(&fresh, config(server.addr, &token)),
        (vec![1, 2, 3, 4], vec![10, 11, 12])
    );
    drop((wa, wb, w));
    server.kill();
}

/// Found by the fault test: while a tree was outside the subscription, this replica changed
/// a record of it after another replica had; widening fetched the other replica's older
/// change and applied it over this replica's newer one (its own changes are not applied
/// again), so the replica held a value the server did not.
#[test]
fn widening_never_applies_an_older_change_over_this_replicas_own() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let w = Db::memory_synced(config(server.addr, &token)).unwrap();
    w.wait_caught_up(LIMIT).unwrap();
    let wb = w.tree::<B>().unwrap();
    let k = wb.create(&B { n: 1 }).unwrap();
    w.wait_pushed(LIMIT).unwrap();

    let path = tmp.path().join("reader.rekord");
    // The reader sees the record, then narrows to `a`.
    assert_eq!(read(&path, config(server.addr, &token)), (vec![], vec![1]));
    assert_eq!(
        read(&path, config(server.addr, &token).trees(["a"])),
        (vec![], vec![1])
    );
    // The writer changes it and lets go of it.
    wb.update(k, |b| b.n = 2).unwrap();
    wb.return_borrow(k).unwrap();
    w.wait_pushed(LIMIT).unwrap();
    // The reader, still on `a`, borrows it and changes it after the writer.
    {
        let r = Db::open_synced(&path, config(server.addr, &token).trees(["a"])).unwrap();
        r.wait_caught_up(LIMIT).unwrap();
        let rb = r.tree::<B>().unwrap();
        rb.borrow(k).unwrap();
        rb.update(k, |b| b.n = 3).unwrap();
        r.wait_pushed(LIMIT).unwrap();
    }
    // Widened: the reader holds what the server holds (its own 3), not the writer's 2.
    assert_eq!(read(&path, config(server.addr, &token)), (vec![], vec![3]));
    let fresh = tmp.path().join("fresh.rekord");
    assert_eq!(read(&fresh, config(server.addr, &token)), (vec![], vec![3]));
    drop((wb, w));
    server.kill();
}

/// Widening a token's read rights is like widening the subscription: a replica that
/// caught up reading only `a` (its cursor passed `b`'s changes, which the server filtered
/// out) receives `b`'s records once it connects with its token re-issued (same name) with
/// the right to read `b`. Before, it never did: its subscription ("all trees") had not
/// changed.
#[test]
fn read_rights_that_grow_bring_in_what_was_hidden() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let all = token(&data);
    let narrow = issue(&data, "reader", &["--read", "a"]);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let w = Db::memory_synced(config(server.addr, &all)).unwrap();
    w.wait_caught_up(LIMIT).unwrap();
    w.tree::<A>().unwrap().create(&A { n: 1 }).unwrap();
    w.tree::<B>().unwrap().create(&B { n: 10 }).unwrap();
    w.tree::<B>().unwrap().create(&B { n: 11 }).unwrap();
    w.tree::<A>().unwrap().create(&A { n: 2 }).unwrap();
    w.wait_pushed(LIMIT).unwrap();
    let reader = tmp.path().join("reader.rekord");
    assert_eq!(
        read(&reader, config(server.addr, &narrow)),
        (vec![1, 2], vec![])
    );
    // The administrator re-issues the reader's token with the right to read everything.
    revoke(&data, "reader");
    let wide = issue(&data, "reader", &["--read-all"]);
    assert_eq!(
        read(&reader, config(server.addr, &wide)),
        (vec![1, 2], vec![10, 11])
    );
    // Narrowed again, then wide again: nothing lost, nothing twice.
    w.tree::<B>().unwrap().create(&B { n: 12 }).unwrap();
    w.wait_pushed(LIMIT).unwrap();
    revoke(&data, "reader");
    let narrow = issue(&data, "reader", &["--read", "a"]);
    assert_eq!(
        read(&reader, config(server.addr, &narrow)),
        (vec![1, 2], vec![10, 11])
    );
    revoke(&data, "reader");
    let wide = issue(&data, "reader", &["--read-all"]);
    assert_eq!(
        read(&reader, config(server.addr, &wide)),
        (vec![1, 2], vec![10, 11, 12])
    );
    drop(w);
    server.kill();
}
