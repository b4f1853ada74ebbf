//! Red team of the "seen states" fix (e7e51de0): a record held here that the restored
//! server shows changed after the shared point by another replica is superseded when its
//! state was never seen here (`rekord.journal_states`), else resent over.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unused_imports
)]

use std::time::Duration;

use rekord::{Db, Key};

#[path = "common/process.rs"]
mod process;
use process::{BIN, ServerProcess, token};

#[path = "common/restore.rs"]
mod shared;
use shared::{Part, converge_with, open_with, parts, trace};

#[path = "common/reclaim.rs"]
mod reclaim;
use reclaim::*;

/// False "seen" (ABA): B (online) only returns x after the restore; C then borrows x and
/// sets qty 2 — by chance the state B left x in after the backup, which A saw. C's change,
/// made in the restored history, stands: a seen state counts only when made by the replica
/// the server names. (A took it for a stale resend before; found by the red team.)
#[test]
fn rs_other_replica_sets_a_state_a_saw_before() {
    let env = setup_restored();
    env.b_returns();
    assert_eq!(qty_holder(env.server_x()), Some((1, 0)));
    let c = env.c_edits(2, true);
    assert_ne!(c, env.a_replica);
    let got = env.converge_all();
    assert_eq!(qty_holder(got), Some((2, 0)), "C's version stands");
}

/// Control of the above with another value: C's 77 stands.
#[test]
fn rs_other_replica_sets_a_new_state_b_online() {
    let env = setup_restored();
    env.b_returns();
    env.c_edits(77, true);
    let got = env.converge_all();
    assert_eq!(qty_holder(got), Some((77, 0)), "C's version stands");
}

/// A's journal rows of B's edit were pruned (journal_retention) before A borrowed x and
/// edited it; the restore goes back before B's edit. B (away since) resends its qty 2 and
/// returns x. A still journals x (its own recent borrow and edit), but B's state's row went
/// with the pruning: the seen states are not complete past the journal's floor, and A keeps
/// the old rule (its newer edit stands). (It was dropped before; found by the red team.)
#[test]
fn rs_pruned_seen_state_loses_a_newer_edit() {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let p = |n: &str| tmp.path().join(format!("{n}.rekord"));
    let (pa, pb) = (p("a"), p("b"));
    let bk = tmp.path().join("bk.redb");
    let retention = Duration::from_secs(4);
    let acfg = || config(addr, &token).journal_retention(retention);
    let x;
    let a_replica;
    {
        let a = open_with(&pa, acfg());
        let b = open_with(&pb, config(addr, &token));
        let tb = b.tree::<Part>().unwrap();
        x = tb
            .create(&Part {
                name: "x".into(),
                qty: 1,
            })
            .unwrap();
        settle(&[&a, &b]);
        assert!(eventually(|| parts(&a).len() == 1));
        process::backup(&data, &bk);
        tb.update(x, |p| p.qty = 2).unwrap();
        tb.return_borrow(x).unwrap();
        settle(&[&b]);
        assert!(eventually(|| parts(&a)[0].3 == 2 && parts(&a)[0].6 == 0));
        drop(b);
        drop(a);
    }
    // Past the retention: A's next connection prunes B's rows.
    std::thread::sleep(retention + Duration::from_secs(1));
    {
        let a = open_with(&pa, acfg());
        settle(&[&a]);
        let ta = a.tree::<Part>().unwrap();
        ta.borrow(x).unwrap();
        ta.update(x, |p| p.qty = 50).unwrap();
        settle(&[&a]);
        a_replica = a.replica();
        drop(a);
    }
    let server = process::restore(server, &data, &bk);
    {
        // B, the stale holder, resends its qty 2 and returns x.
        let b = open_with(&pb, config(addr, &token));
        settle(&[&b]);
        std::thread::sleep(Duration::from_millis(300));
        drop(b);
    }
    let fresh = || {
        let f = Db::memory_synced(config(addr, &token)).unwrap();
        f.wait_caught_up(LIMIT).unwrap();
        parts(&f)
    };
    assert_eq!(fresh()[0].3, 2, "B resent");
    // A comes back (within its retention of its own edit).
    let a = open_with(&pa, config(addr, &token));
    let b = open_with(&pb, config(addr, &token));
    settle(&[&a, &b]);
    let f = converge_with(config(addr, &token), &[("A", &a), ("B", &b)]);
    let got = parts(&f)[0].clone();
    drop(server);
    assert_eq!(
        (got.3, got.6),
        (50, a_replica),
        "A's version stands (the old behaviour), as in rr_a_reconciles_after_the_stale_holder_resent_a_state_it_saw"
    );
}

/// A was closed while B edited and returned x after the backup: it sees B's edit in its
/// catch-up, then borrows and edits. B's resend after the restore is of a state A saw.
#[test]
fn rs_a_offline_during_b_edit_then_stale_resend() {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let p = |n: &str| tmp.path().join(format!("{n}.rekord"));
    let (pa, pb) = (p("a"), p("b"));
    let bk = tmp.path().join("bk.redb");
    let x;
    let a_replica;
    {
        let a = open_with(&pa, config(addr, &token));
        let b = open_with(&pb, config(addr, &token));
        let tb = b.tree::<Part>().unwrap();
        x = tb
            .create(&Part {
                name: "x".into(),
                qty: 1,
            })
            .unwrap();
        settle(&[&a, &b]);
        assert!(eventually(|| parts(&a).len() == 1));
        drop(a);
        process::backup(&data, &bk);
        tb.update(x, |p| p.qty = 2).unwrap();
        tb.update(x, |p| p.qty = 3).unwrap();
        tb.return_borrow(x).unwrap();
        settle(&[&b]);
        drop(b);
    }
    {
        let a = open_with(&pa, config(addr, &token));
        settle(&[&a]);
        assert!(eventually(|| parts(&a)[0].3 == 3 && parts(&a)[0].6 == 0));
        let ta = a.tree::<Part>().unwrap();
        ta.borrow(x).unwrap();
        ta.update(x, |p| p.qty = 50).unwrap();
        settle(&[&a]);
        a_replica = a.replica();
    }
    let server = process::restore(server, &data, &bk);
    {
        let b = open_with(&pb, config(addr, &token));
        settle(&[&b]);
        std::thread::sleep(Duration::from_millis(300));
    }
    let a = open_with(&pa, config(addr, &token));
    let b = open_with(&pb, config(addr, &token));
    settle(&[&a, &b]);
    let f = converge_with(config(addr, &token), &[("A", &a), ("B", &b)]);
    let got = parts(&f)[0].clone();
    drop(server);
    assert_eq!((got.3, got.6), (50, a_replica), "A's version stands");
}

/// Two restores: after the first (B resent, A resent over it), the server is restored from
/// the same backup again; B (online) returns x, C borrows, edits and returns it: C's
/// version stands.
#[test]
fn rs_second_restore_then_other_replica_edits() {
    let mut env = setup_restored_with(true);
    env.b_returns_any();
    let got = env.converge_all();
    assert_eq!(qty_holder(got), Some((50, env.a_replica)));
    let bk = env.bk.clone();
    env.restore(&bk);
    env.b_returns();
    env.c_edits(77, true);
    let got = env.converge_all();
    assert_eq!(qty_holder(got), Some((77, 0)), "C's version stands");
}

/// A state change alone: x is released (rev 0) and held by B at the backup; after it B
/// sets state 1 and returns x, A borrows it and sets state 5. After the restore B (online)
/// returns x; C borrows it, sets state 7 (a state A never saw) and returns it: C's change,
/// made in the restored history, stands. (The server dated revisions by data changes only,
/// so A resent its state 5 over it; found by the red team.)
#[test]
fn rs_other_replica_changes_only_the_state() {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let p = |n: &str| tmp.path().join(format!("{n}.rekord"));
    let (pa, pb, pc) = (p("a"), p("b"), p("c"));
    let bk = tmp.path().join("bk.redb");
    let x;
    let a_replica;
    {
        let a = open_with(&pa, config(addr, &token));
        let b = open_with(&pb, config(addr, &token));
        let c = open_with(&pc, config(addr, &token));
        let tb = b.tree::<Part>().unwrap();
        x = tb
            .create(&Part {
                name: "x".into(),
                qty: 1,
            })
            .unwrap();
        tb.release(x).unwrap();
        settle(&[&a, &b, &c]);
        assert!(eventually(|| parts(&a).len() == 1 && parts(&a)[0].4));
        process::backup(&data, &bk);
        tb.set_state(x, 1).unwrap();
        tb.return_borrow(x).unwrap();
        settle(&[&b]);
        assert!(eventually(|| parts(&a)[0].5 == 1 && parts(&a)[0].6 == 0));
        let ta = a.tree::<Part>().unwrap();
        ta.borrow(x).unwrap();
        ta.set_state(x, 5).unwrap();
        a_replica = a.replica();
        settle(&[&a, &b, &c]);
        assert!(eventually(|| [&a, &b, &c]
            .iter()
            .all(|d| parts(d)[0].5 == 5)));
    }
    let server = process::restore(server, &data, &bk);
    {
        let b = open_with(&pb, config(addr, &token));
        settle(&[&b]);
        std::thread::sleep(Duration::from_millis(300));
    }
    {
        let c = open_with(&pc, config(addr, &token));
        settle(&[&c]);
        let tc = c.tree::<Part>().unwrap();
        tc.borrow(x).unwrap();
        tc.set_state(x, 7).unwrap();
        tc.return_borrow(x).unwrap();
        settle(&[&c]);
    }
    let a = open_with(&pa, config(addr, &token));
    let b = open_with(&pb, config(addr, &token));
    let c = open_with(&pc, config(addr, &token));
    settle(&[&a, &b, &c]);
    let f = converge_with(config(addr, &token), &[("A", &a), ("B", &b), ("C", &c)]);
    let got = parts(&f)[0].clone();
    drop(server);
    assert_ne!(a_replica, 0);
    assert_eq!((got.5, got.6), (7, 0), "C's state stands");
}
