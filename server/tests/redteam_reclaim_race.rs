//! Red team of `retry_reclaims` while live (was a bug, fixed): the retry walks `rekord.reclaim`
//! with one Fetch and one Borrow per record, and pushes received meanwhile stay buffered in
//! the session (not applied, so `reclaim_taken` does not see them). A record whose stale
//! holder returned it, and that another replica (C) then borrowed, edited and returned
//! before the retry reached it, is taken back and A's pre-restore copy resent over C's
//! post-restore edit. Fixed: the retry applies every push received before and after it
//! decides each record, and gives back a borrow it took if another replica took the record
//! meanwhile.
//!
//! Setup: D creates K parts (held by D), B creates x (held by B); backup. D and B change and
//! return theirs; A borrows all of them and sets qty 50. The server is restored: D and B
//! hold them again there. A comes back (waits for all K + 1). D never comes back. C is
//! online. B comes back and returns x; C borrows x at once, sets 77, returns it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unused_imports
)]

use std::time::{Duration, Instant};

use rekord::{Db, Key};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, backup, restore, token};

#[path = "common/restore.rs"]
mod shared;
use shared::{Part, open_with, parts, trace};

#[path = "common/reclaim.rs"]
mod reclaim;
use reclaim::{LIMIT, config, eventually, settle};

const K: u32 = 1500;

#[test]
fn rt_live_retry_resends_stale_copy_over_a_borrow_it_did_not_see() {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let tok = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let p = |n: &str| tmp.path().join(format!("{n}.rekord"));
    let (pa, pb, pc, pd) = (p("a"), p("b"), p("c"), p("d"));
    let bk = tmp.path().join("bk.redb");
    let big = || config(addr, &tok).range_size(20_000);

    // D first (the lowest ids), then B.
    let d = open_with(&pd, big());
    let dkeys: Vec<Key<Part>> = d
        .write(|b| {
            let mut t = b.tree::<Part>()?;
            let mut v = Vec::new();
            for i in 0..K {
                v.push(t.create(&Part {
                    name: format!("d{i}"),
                    qty: 1,
                })?);
            }
            Ok(v)
        })
        .unwrap();
    settle(&[&d]);
    let b = open_with(&pb, config(addr, &tok));
    let a = open_with(&pa, config(addr, &tok));
    let c = open_with(&pc, config(addr, &tok));
    let x = b
        .tree::<Part>()
        .unwrap()
        .create(&Part {
            name: "x".into(),
            qty: 1,
        })
        .unwrap();
    settle(&[&a, &b, &c, &d]);
    let max_d = dkeys.iter().map(|k| k.id()).max().unwrap();
    assert!(
        max_d < x.id(),
        "D's ids ({max_d}) sort before x ({})",
        x.id()
    );
    assert!(eventually(|| parts(&a).len() == K as usize + 1));
    backup(&data, &bk);

    // After the backup: D and B change theirs and return them; A borrows all, sets 50.
    d.write(|bt| {
        let mut t = bt.tree::<Part>()?;
        for k in &dkeys {
            t.update(*k, |p| p.qty = 2)?;
            t.return_borrow(*k)?;
        }
        Ok(())
    })
    .unwrap();
    let tb = b.tree::<Part>().unwrap();
    tb.update(x, |p| p.qty = 2).unwrap();
    tb.return_borrow(x).unwrap();
    settle(&[&b, &d]);
    assert!(eventually(|| parts(&a).iter().all(|r| r.6 == 0)));
    let ta = a.tree::<Part>().unwrap();
    for k in dkeys.iter().chain([&x]) {
        ta.borrow(*k).unwrap();
    }
    a.write(|bt| {
        let mut t = bt.tree::<Part>()?;
        for k in dkeys.iter().chain([&x]) {
            t.update(*k, |p| p.qty = 50)?;
        }
        Ok(())
    })
    .unwrap();
    settle(&[&a, &b, &c]);
    assert!(eventually(|| parts(&c).iter().all(|r| r.3 == 50)));
    drop((ta, tb));
    drop((a, b, c, d));
    std::thread::sleep(Duration::from_millis(300));

    let server = restore(server, &data, &bk);
    assert_eq!(server.addr, addr);

    // A comes back and waits for every record; C is online; D never comes back.
    let a = open_with(&pa, config(addr, &tok));
    settle(&[&a]);
    let c = open_with(&pc, config(addr, &tok));
    settle(&[&c]);
    std::thread::sleep(Duration::from_millis(500));
    let c_x = |c: &Db| parts(c).into_iter().find(|r| r.0 == x.id()).unwrap();
    eprintln!(
        "before B: A x {:?}, C x {:?}, A {:?}",
        parts(&a).into_iter().find(|r| r.0 == x.id()),
        c_x(&c),
        a.sync_status().unwrap()
    );
    assert_ne!(c_x(&c).6, 0, "x is held (by B) on the restored server");

    // Cost of the retries while D (a stale holder) never comes back: an idle window (the
    // quiet backstop), then returns of an unrelated record y by C (each a full pass).
    let sent = |d: &Db| d.sync_status().unwrap().bytes_sent;
    let before = sent(&a);
    std::thread::sleep(Duration::from_secs(16));
    eprintln!(
        "A sent {} bytes in 16 s idle, {} records waiting",
        sent(&a) - before,
        K + 1
    );
    let tc0 = c.tree::<Part>().unwrap();
    let y = tc0
        .create(&Part {
            name: "y".into(),
            qty: 0,
        })
        .unwrap();
    tc0.return_borrow(y).unwrap();
    c.wait_pushed(LIMIT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = sent(&a);
    let t0 = Instant::now();
    for i in 0..10 {
        tc0.borrow(y).unwrap();
        tc0.update(y, |p| p.qty = i).unwrap();
        tc0.return_borrow(y).unwrap();
        c.wait_pushed(LIMIT).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "C: 10 borrow/return of unrelated y in {:?}; A sent {} bytes meanwhile",
        t0.elapsed(),
        sent(&a) - before
    );
    // How long A's application waits for a borrow of y while A retries.
    tc0.borrow(y).unwrap();
    tc0.return_borrow(y).unwrap();
    c.wait_pushed(LIMIT).unwrap();
    let ta2 = a.tree::<Part>().unwrap();
    let t1 = Instant::now();
    let r = ta2.borrow(y);
    eprintln!(
        "A's borrow of y right after C's return took {:?}: {r:?}",
        t1.elapsed()
    );
    if r.is_ok() {
        ta2.return_borrow(y).unwrap();
        a.wait_pushed(LIMIT).unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));

    // B comes back (in a thread: opening it reconciles: it returns x).
    let b_thread = {
        let pb = pb.clone();
        let tok = tok.clone();
        std::thread::spawn(move || {
            let b = open_with(&pb, config(addr, &tok));
            settle(&[&b]);
            std::thread::sleep(Duration::from_secs(3));
            drop(b);
        })
    };
    // C takes x as soon as it sees it free.
    let start = Instant::now();
    assert!(eventually(|| c_x(&c).6 == 0), "B returned x");
    let seen = start.elapsed();
    let tc = c.tree::<Part>().unwrap();
    let borrowed = tc.borrow(x);
    eprintln!("C saw x free after {seen:?}; C's borrow: {borrowed:?}");
    let c_won = borrowed.is_ok();
    if c_won {
        tc.update(x, |p| p.qty = 77).unwrap();
        tc.return_borrow(x).unwrap();
        c.wait_pushed(LIMIT).unwrap();
        eprintln!("C set 77 and returned x at {:?}", start.elapsed());
    }
    b_thread.join().unwrap();
    // Let A's retries run out.
    std::thread::sleep(Duration::from_secs(10));
    settle(&[&a, &c]);
    let fresh = Db::memory_synced(config(addr, &tok)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    let on_server = parts(&fresh).into_iter().find(|r| r.0 == x.id()).unwrap();
    let st_a = a.sync_status().unwrap();
    let st_c = c.sync_status().unwrap();
    eprintln!("server x {on_server:?}\nA {st_a:?}\nC {st_c:?}");
    assert!(c_won, "C did not win the race (scenario not reached)");
    assert_eq!(st_c.rejected, 0, "C's edit was accepted");
    assert_eq!(
        on_server.3, 77,
        "C borrowed x after the restore before A took it back: C's version must stand, but \
         A's pre-restore copy was resent over it: {on_server:?}"
    );
}
