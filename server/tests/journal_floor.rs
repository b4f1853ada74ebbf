//! The journal floor (`sync.journal_floor`) when retention prunes a journal row of an
//! unknown sequence number (`sync::UNKNOWN_SEQ`: a browser tab that took over notes one for
//! each outbox entry the old leader settled, whose number it does not know). Such a row
//! stands for a change the server numbered at most its head when the row was pruned. Of a
//! tree the replica does not receive, once it is gone, a restore to a point before that
//! head must say its reconciliation may be incomplete (`SyncEvent::Restored::incomplete`);
//! of a tree it receives, the change comes back with its number, and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rekord::{Db, Event, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, config, token};

#[path = "common/restore.rs"]
mod shared;
use shared::{Note, Part, WAIT, open_with};

const JOURNAL: redb::TableDefinition<(u64, &str, u64), u64> =
    redb::TableDefinition::new("rekord.journal");

/// The shared point and `incomplete` of the next reconciliation `sub` hears of.
fn restored(sub: &rekord::Subscription) -> (u64, bool) {
    loop {
        match sub.recv_timeout(WAIT) {
            Some(Event::Sync(SyncEvent::Restored {
                common, incomplete, ..
            })) => return (common, incomplete),
            Some(_) => {}
            None => panic!("A did not reconcile with the restored server"),
        }
    }
}

fn settle(db: &Db) {
    db.wait_pushed(WAIT).unwrap();
    db.wait_caught_up(WAIT).unwrap();
}

#[test]
fn a_pruned_row_of_an_unknown_number_marks_the_journal_incomplete_up_to_the_head() {
    let (common, incomplete) = restore_after_pruning_an_unknown_row("notes");
    // The pruned row's change may have had any number up to the head at its pruning, past
    // the shared point: the journal may lack a record changed after it.
    assert!(
        incomplete,
        "the reconciliation from {common} says its journal is complete, though a row of an \
         unknown number of a tree not received, past it, was pruned"
    );
}

#[test]
fn a_pruned_row_of_an_unknown_number_of_a_received_tree_keeps_the_journal_complete() {
    let (common, incomplete) = restore_after_pruning_an_unknown_row("parts");
    assert!(
        !incomplete,
        "the reconciliation from {common} says its journal is incomplete, though the only \
         pruned row past it was of a tree whose changes come back with their numbers"
    );
}

/// A receives `parts` only, B writes `parts` and `notes`. A row of an unknown number of
/// `tree` is put in A's journal, dated long ago; A's next session prunes it; the server is
/// then restored to a backup before its head at that time. Returns A's `Restored`'s shared
/// point and `incomplete`.
fn restore_after_pruning_an_unknown_row(tree: &str) -> (u64, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let pa = tmp.path().join("a.rekord");
    let bk = tmp.path().join("bk.redb");
    let retention = Duration::from_secs(1);
    // A receives `parts` only; B writes both trees.
    let acfg = || {
        config(addr, &token)
            .trees(["parts"])
            .journal_retention(retention)
    };
    let b = Db::memory_synced(config(addr, &token)).unwrap();
    b.wait_caught_up(WAIT).unwrap();
    let (pb, nb) = (b.tree::<Part>().unwrap(), b.tree::<Note>().unwrap());
    let (p1, n1) = {
        let a = open_with(&pa, acfg());
        let p1 = pb
            .create(&Part {
                name: "p1".into(),
                qty: 1,
            })
            .unwrap();
        settle(&b);
        let n1 = nb.create(&Note { a: 1, b: 1 }).unwrap();
        settle(&b);
        let head = b.sync_status().unwrap().cursor;
        assert!(shared::eventually("A to receive p1", || {
            a.tree::<Part>().unwrap().len().unwrap() == 1
        }));
        process::backup(&data, &bk);
        // Past the backup, in a tree A does not receive: the server's head moves on, A's
        // journal does not.
        nb.create(&Note { a: 2, b: 2 }).unwrap();
        settle(&b);
        // (B's cursor moves when the echo of its own change is applied, which settling
        // does not wait for.)
        assert!(shared::eventually(
            "the head to move past the backup",
            || { b.sync_status().unwrap().cursor > head }
        ));
        drop(a);
        (p1, n1)
    };
    // A row of an unknown number in A's journal, made long ago (as a takeover notes one).
    {
        let file = redb::Database::open(&pa).unwrap();
        let txn = file.begin_write().unwrap();
        {
            let mut journal = txn.open_table(JOURNAL).unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let at = ((now - 60_000) << 1) | 1;
            journal
                .insert(
                    (
                        u64::MAX,
                        tree,
                        if tree == "parts" {
                            p1.raw().id
                        } else {
                            n1.raw().id
                        },
                    ),
                    at,
                )
                .unwrap();
        }
        txn.commit().unwrap();
    }
    std::thread::sleep(retention + Duration::from_millis(500));
    // A's next session prunes every row (all older than the retention), that one too.
    let a = open_with(&pa, acfg());
    a.wait_caught_up(WAIT).unwrap();
    // A change after that, which A journals: the restore below has a record to reconcile.
    pb.update(p1, |p| p.qty = 2).unwrap();
    settle(&b);
    assert!(shared::eventually("A to receive the update", || {
        a.tree::<Part>().unwrap().get(p1).is_ok_and(|p| p.qty == 2)
    }));
    let sub = a.subscribe();
    let server = process::restore(server, &data, &bk);
    let restored = restored(&sub);
    drop(server);
    restored
}

/// The journal floor after a reconciliation: the rows past the shared point are gone with
/// the old history, and the new history's rows past it are journaled as they arrive, so a
/// later restore to a point between the shared point and the old floor has a complete
/// journal. (The floor stayed where pruning under the old history had raised it, and every
/// such later restore said its reconciliation may be incomplete.)
#[test]
fn a_restore_after_a_reconciliation_that_lowered_the_journal_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let pa = tmp.path().join("a.rekord");
    let (bk1, bk2) = (tmp.path().join("bk1.redb"), tmp.path().join("bk2.redb"));
    let retention = Duration::from_secs(4);
    let acfg = || {
        config(addr, &token).journal_retention(retention).retry(
            rekord::Retry::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_millis(100)),
        )
    };
    let b = Db::memory_synced(config(addr, &token)).unwrap();
    b.wait_caught_up(WAIT).unwrap();
    let pb = b.tree::<Part>().unwrap();
    let a = open_with(&pa, acfg());
    let p1 = pb
        .create(&Part {
            name: "p1".into(),
            qty: 1,
        })
        .unwrap();
    settle(&b);
    assert!(shared::eventually("A to receive p1", || {
        a.tree::<Part>().unwrap().len().unwrap() == 1
    }));
    process::backup(&data, &bk1);
    // Three changes past the first backup, which A journals and, once older than the
    // retention, prunes (its next session): the floor rises to the third's number.
    for qty in 2..5 {
        pb.update(p1, |p| p.qty = qty).unwrap();
        settle(&b);
    }
    assert!(shared::eventually("A to receive the updates", || {
        a.tree::<Part>().unwrap().get(p1).is_ok_and(|p| p.qty == 4)
    }));
    drop(a);
    std::thread::sleep(retention + Duration::from_millis(500));
    let a = open_with(&pa, acfg());
    let sub = a.subscribe();
    // The first restore: pruned rows past its shared point, rightly incomplete.
    let server = process::restore(server, &data, &bk1);
    let (first, incomplete) = restored(&sub);
    assert!(
        incomplete,
        "rows past the shared point {first} were pruned, yet the journal is called complete"
    );
    a.wait_caught_up(WAIT).unwrap();
    settle(&b);
    // The new history: a change A journals, a backup, one more change.
    let p2 = pb
        .create(&Part {
            name: "p2".into(),
            qty: 1,
        })
        .unwrap();
    settle(&b);
    assert!(shared::eventually("A to receive p2", || {
        a.tree::<Part>().unwrap().get(p2).is_ok()
    }));
    process::backup(&data, &bk2);
    pb.update(p2, |p| p.qty = 2).unwrap();
    settle(&b);
    assert!(shared::eventually("A to receive p2's update", || {
        a.tree::<Part>().unwrap().get(p2).is_ok_and(|p| p.qty == 2)
    }));
    // The second restore, to a point past the first's shared point and below the old
    // floor, well within the retention: every row past it is here.
    let server = process::restore(server, &data, &bk2);
    let (second, incomplete) = restored(&sub);
    assert!(second > first, "{second} after {first}");
    assert!(
        !incomplete,
        "the reconciliation from {second} says its journal may be incomplete, though no row \
         past it was pruned (the first restore's shared point was {first})"
    );
    drop(server);
}
