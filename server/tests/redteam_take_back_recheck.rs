//! Red team (review session) of a4e50e54's take-back recheck: writes racing the take-back
//! and its recheck; A closing right around the take-back.
//!
//! Run: `cargo test -p rekord-server --test redteam_take_back_recheck -- --test-threads=1 --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

#[path = "common/process.rs"]
mod process;

#[path = "common/restore.rs"]
mod shared;
use shared::{Part, parts};

#[path = "common/reclaim.rs"]
mod reclaim;
use reclaim::*;

/// A waits to take x back with a write waiting (qty 60); B returns x while A keeps writing
/// (61, 62, ...), so writes land between the take-back, its resend, and the recheck.
#[test]
fn writes_racing_the_take_back_and_its_recheck_stand() {
    let env = setup_restored_with(true);
    let last;
    {
        let a = env.open(&env.pa);
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(300));
        a.tree::<Part>()
            .unwrap()
            .update(env.x, |p| p.qty = 60)
            .unwrap();
        settle(&[&a]);
        let t = a.tree::<Part>().unwrap();
        let mut q = 60;
        let mut refused = 0u32;
        std::thread::scope(|s| {
            let h = s.spawn(|| env.b_returns_any());
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(4) {
                match t.update(env.x, |p| p.qty = q + 1) {
                    Ok(()) => q += 1,
                    Err(e) => {
                        refused += 1;
                        if refused == 1 {
                            eprintln!(
                                "a write refused at {:?} (A's copy {:?}): {e}",
                                start.elapsed(),
                                parts(&a)
                            );
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            h.join().unwrap();
        });
        last = q;
        eprintln!("last write {last}, {refused} refused");
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(500));
        settle(&[&a]);
        let ok =
            eventually(|| parts(&a)[0].3 == last && env.server_x().is_some_and(|r| r.3 == last));
        assert!(
            ok,
            "last write {last}: A's copy {:?}, the server's {:?}, A {:?}",
            parts(&a),
            env.server_x(),
            a.sync_status()
        );
    }
    let got = env.converge_all();
    assert_eq!(got.map(|r| r.3), Some(last), "A's last write stands");
}

/// A closes at various moments after B returns x (around A's take-back commit and before
/// its recheck), then reopens: its write stands everywhere.
#[test]
fn closing_around_the_take_back() {
    for delay in [0u64, 30, 80, 150, 300] {
        let env = setup_restored_with(true);
        {
            let a = env.open(&env.pa);
            settle(&[&a]);
            std::thread::sleep(Duration::from_millis(300));
            a.tree::<Part>()
                .unwrap()
                .update(env.x, |p| p.qty = 60)
                .unwrap();
            settle(&[&a]);
            std::thread::scope(|s| {
                let h = s.spawn(|| env.b_returns_any());
                // B's open and reconciliation take a while; A closes at `delay` after B is
                // seen returning x on the server.
                let _ = eventually(|| env.server_x().is_some_and(|r| r.6 == 0 || r.3 != 1));
                std::thread::sleep(Duration::from_millis(delay));
                drop(a);
                h.join().unwrap();
            });
        }
        let got = env.converge_all();
        eprintln!("delay {delay}: x {got:?}");
        assert_eq!(
            got.map(|r| r.3),
            Some(60),
            "delay {delay}: A's write stands"
        );
    }
}
