//! A write waiting with a record to be taken back after a restore (`rekord.deferred`) and a
//! refetch of that record (`resync`, here after the application borrows it outside the
//! replica's subscription): the refetch replaced the copy and left the waiting write, sent
//! later over it: the server took it, the replica skipped its own echo, and the replicas
//! differed for good (the fault test's seed 1796146442521312495 ended so, with qty 490 on
//! the holder and 5 everywhere else). Now a replica that holds the record again sends its
//! waiting writes at once, over its copy, and fetches it again once they settle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use rekord::{Db, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, backup, restore, token};

#[path = "common/restore.rs"]
mod shared;
use shared::{Part, converge_with, create, eventually, holder, open_with, parts, qty, trace};

const LIMIT: Duration = Duration::from_secs(30);

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token)
        .range_size(3)
        .timeout(Duration::from_secs(10))
}

fn open(path: &Path, addr: std::net::SocketAddr, token: &str) -> Db {
    open_with(path, config(addr, token))
}

/// A holds X and Y in the backup, returns them after it and goes away; B borrows and
/// changes both. After the restore B comes back subscribed to `notes` only: X and Y wait
/// to be taken back from A (held). B changes X (the write waits with X), returns X. A comes
/// back and gives X and Y back. B borrows X: outside its subscription, the grant refetches
/// X (`resync`: server's copy, X no longer waits), but B's waiting write of X stays in
/// `rekord.deferred`. B reopens with every tree: Y is taken back, which releases the
/// waiting writes, X's among them: the server applies it (B holds X), B skips its echo.
#[test]
fn a_waiting_write_is_sent_when_its_replica_borrows_the_record_back() {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (a_path, b_path) = (tmp.path().join("a.rekord"), tmp.path().join("b.rekord"));
    let backup_file = tmp.path().join("backup.redb");
    let (x, y);
    {
        let a = open(&a_path, addr, &token);
        let b = open(&b_path, addr, &token);
        x = create(&a, "x", 1);
        y = create(&a, "y", 1);
        a.wait_pushed(LIMIT).unwrap();
        assert!(eventually("B to see X and Y", || qty(&b, x) == Some(1)
            && qty(&b, y) == Some(1)));
        backup(&data, &backup_file);
        let t = a.tree::<Part>().unwrap();
        t.return_borrow(x).unwrap();
        t.return_borrow(y).unwrap();
        a.wait_pushed(LIMIT).unwrap();
        drop(a);
        assert!(eventually("B to see X and Y free", || holder(&b, x)
            == Some(0)
            && holder(&b, y) == Some(0)));
        let t = b.tree::<Part>().unwrap();
        t.borrow(x).unwrap();
        t.borrow(y).unwrap();
        t.update(x, |p| p.qty = 99).unwrap();
        t.update(y, |p| p.qty = 99).unwrap();
        b.wait_pushed(LIMIT).unwrap();
    }
    let server = restore(server, &data, &backup_file);
    {
        let b = open_with(&b_path, config(addr, &token).trees(["notes"]));
        let me = b.replica();
        assert_eq!(holder(&b, x), Some(me), "B keeps X while it waits");
        let t = b.tree::<Part>().unwrap();
        t.update(x, |p| p.qty = 5).unwrap();
        assert!(eventually("B's write of X to wait with X", || b
            .sync_status()
            .unwrap()
            .waiting
            == 1));
        t.return_borrow(x).unwrap();
        assert!(eventually("B's return to settle", || {
            let s = b.sync_status().unwrap();
            s.outbox == s.waiting
        }));
        eprintln!("B status after its return: {:?}", b.sync_status().unwrap());
        // A, the stale holder, comes back and gives X and Y back.
        let a = open(&a_path, addr, &token);
        a.wait_pushed(LIMIT).unwrap();
        {
            let f = Db::memory_synced(config(addr, &token)).unwrap();
            f.wait_caught_up(LIMIT).unwrap();
            assert!(eventually("X free on the server", || holder(&f, x) == Some(0)));
        }
        drop(a);
        t.borrow(x).unwrap();
        // B holds X again: its waiting write goes now, without waiting for a reconnect.
        b.wait_pushed(LIMIT).unwrap();
        eprintln!(
            "B after borrowing X: qty {:?} holder {:?}, status {:?}",
            qty(&b, x),
            holder(&b, x),
            b.sync_status().unwrap()
        );
    }
    let b = open(&b_path, addr, &token);
    b.wait_pushed(LIMIT).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    let a = open(&a_path, addr, &token);
    a.wait_caught_up(LIMIT).unwrap();
    eprintln!("B parts {:?}", parts(&b));
    eprintln!("A parts {:?}", parts(&a));
    let fresh = converge_with(config(addr, &token), &[("A", &a), ("B", &b)]);
    // The write B made while it waited stands (B got the record back), nothing refused.
    assert_eq!(qty(&b, x), Some(5));
    assert_eq!(qty(&fresh, x), Some(5));
    assert_eq!(b.sync_status().unwrap().rejected, 0);
    drop((a, b, fresh));
    server.kill();
}
