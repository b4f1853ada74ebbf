//! Id ranges, borrows and borrow pushes, with real QUIC servers and clients on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{Running, client};

use std::sync::Arc;
use std::time::Duration;

use rekord::net::{self, NetError, Session};
use rekord::proto::handshake::Trees;
use rekord::proto::{ChangeKind, Push, RemoteError};
use rekord_server::store::{FIRST_ID, MAX_RANGE};

const BOUND: Duration = Duration::from_secs(20);
const PUSH_WAIT: Duration = Duration::from_secs(5);

async fn bounded<F: Future>(f: F) -> F::Output {
    common::bounded(BOUND, f).await
}

fn holder(s: &Session) -> u32 {
    s.server_hello().replica
}

fn remote<T: std::fmt::Debug>(result: Result<T, NetError>) -> RemoteError {
    match result {
        Err(NetError::Remote(e)) => e,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// The next push other than the `CaughtUp` every session gets after its (here empty)
/// catch-up.
async fn next_push(s: &mut Session, wait: Duration) -> Option<Push> {
    loop {
        match s.next_push(wait).await.unwrap() {
            Some(Push::CaughtUp { .. }) => continue,
            other => return other,
        }
    }
}

async fn expect_push(s: &mut Session, tree: &str, id: u64, holder: u32) {
    let push = next_push(s, PUSH_WAIT).await;
    match push {
        Some(Push::Changes(entries)) => {
            assert_eq!(entries.len(), 1, "{entries:?}");
            let c = &entries[0].change;
            assert_eq!(
                (c.tree.as_str(), c.id, &c.kind),
                (tree, id, &ChangeKind::Borrow { holder }),
                "{entries:?}"
            );
        }
        other => panic!("expected a borrow change, got {other:?}"),
    }
}

async fn expect_no_push(s: &mut Session) {
    let push = next_push(s, Duration::from_millis(200)).await;
    assert_eq!(push, None);
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_disjoint_clamped_and_survive_a_restart() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let cfg_a = client(&server.token("a"));
        let cfg_b = client(&server.token("b"));
        let mut a = net::connect(server.addr, &cfg_a, None).await.unwrap();
        let mut b = net::connect(server.addr, &cfg_b, None).await.unwrap();
        let pin = a.pin();

        let mut granted = Vec::new();
        for (first, want) in [(true, 100), (false, 100), (true, 5), (false, 1)] {
            let s = if first { &mut a } else { &mut b };
            let r = s.ranges(want).await.unwrap();
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].1 - r[0].0, want);
            assert!(r[0].0 >= FIRST_ID);
            granted.push((holder(s), r[0]));
        }
        // Clamping: 0 gives 1 id, a huge wish gives MAX_RANGE ids.
        let r = a.ranges(0).await.unwrap();
        assert_eq!(r[0].1 - r[0].0, 1);
        granted.push((holder(&a), r[0]));
        let r = b.ranges(u64::MAX).await.unwrap();
        assert_eq!(r[0].1 - r[0].0, MAX_RANGE);
        granted.push((holder(&b), r[0]));
        // The server knows whose ranges they are.
        for (h, (start, end)) in &granted {
            assert!(server.store.owns(*h, *start).unwrap());
            assert!(server.store.owns(*h, end - 1).unwrap());
        }
        assert!(!server.store.owns(holder(&a), granted[1].1.0).unwrap());
        a.close().await;
        b.close().await;
        server.stop().await;

        // After a restart, new ranges never overlap the earlier ones.
        let server = Running::start(dir.path());
        let mut a = net::connect(server.addr, &cfg_a, Some(&pin)).await.unwrap();
        let mut b = net::connect(server.addr, &cfg_b, Some(&pin)).await.unwrap();
        for first in [true, false, true] {
            let s = if first { &mut a } else { &mut b };
            let r = s.ranges(1000).await.unwrap();
            granted.push((holder(s), r[0]));
        }
        for (i, x) in granted.iter().enumerate() {
            for y in &granted[i + 1..] {
                assert!(!overlaps(x.1, y.1), "{x:?} overlaps {y:?}");
            }
        }
        assert_eq!(
            server.store.ranges(holder(&a)).unwrap().len(),
            granted.iter().filter(|g| g.0 == holder(&a)).count()
        );
        a.close().await;
        b.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrow_contention_has_one_winner_and_is_pushed_to_everyone() {
    const N: usize = 8;
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let mut sessions = Vec::new();
        for i in 0..N {
            let cfg = client(&server.token(&format!("c{i}")));
            sessions.push(net::connect(server.addr, &cfg, None).await.unwrap());
        }
        // Everyone races for the same record at once.
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let mut tasks = Vec::new();
        for mut s in sessions {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let result = s.borrow("parts", 42).await;
                (s, result)
            }));
        }
        let mut sessions = Vec::new();
        let mut results = Vec::new();
        for t in tasks {
            let (s, r) = t.await.unwrap();
            sessions.push(s);
            results.push(r);
        }
        let winners: Vec<usize> = (0..N).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        let w = winners[0];
        let winner = holder(&sessions[w]);
        // The refusal names the winner by holder number and by its token's name.
        let winner_name = Some(format!("c{w}"));
        for (i, r) in results.into_iter().enumerate() {
            if i != w {
                assert_eq!(
                    remote(r),
                    RemoteError::AlreadyBorrowed {
                        holder: winner,
                        name: winner_name.clone(),
                    }
                );
            }
        }
        assert_eq!(server.store.borrower("parts", 42).unwrap(), Some(winner));
        // Every session, the winner included, is told exactly once.
        for s in &mut sessions {
            expect_push(s, "parts", 42, winner).await;
            expect_no_push(s).await;
        }
        // Borrowing again is idempotent and changes nothing (no push).
        sessions[w].borrow("parts", 42).await.unwrap();
        expect_no_push(&mut sessions[(w + 1) % N]).await;

        // Return: freed and pushed with holder 0 to everyone.
        sessions[w].return_borrow("parts", 42).await.unwrap();
        for s in &mut sessions {
            expect_push(s, "parts", 42, 0).await;
        }
        // Another client can borrow it now.
        let other = (w + 1) % N;
        sessions[other].borrow("parts", 42).await.unwrap();
        let new_holder = holder(&sessions[other]);
        for s in &mut sessions {
            expect_push(s, "parts", 42, new_holder).await;
        }
        assert_eq!(
            remote(sessions[w].borrow("parts", 42).await),
            RemoteError::AlreadyBorrowed {
                holder: new_holder,
                name: Some(format!("c{other}")),
            }
        );
        for s in sessions {
            s.close().await;
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_arriving_during_a_request_are_buffered_not_lost() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let mut a = net::connect(server.addr, &client(&server.token("a")), None)
            .await
            .unwrap();
        let mut b = net::connect(server.addr, &client(&server.token("b")), None)
            .await
            .unwrap();
        for id in 1..=20 {
            a.borrow("parts", id).await.unwrap();
        }
        // B's requests meet A's pushes on the stream first; they wait for next_push.
        b.ping().await.unwrap();
        b.ranges(10).await.unwrap();
        for id in 1..=20 {
            expect_push(&mut b, "parts", id, holder(&a)).await;
        }
        expect_no_push(&mut b).await;
        let holder_a = holder(&a);
        for id in 1..=20 {
            expect_push(&mut a, "parts", id, holder_a).await;
        }
        a.close().await;
        b.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrows_survive_a_server_restart() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let cfg_a = client(&server.token("a"));
        let cfg_b = client(&server.token("b"));
        let mut a = net::connect(server.addr, &cfg_a, None).await.unwrap();
        let pin = a.pin();
        let holder_a = holder(&a);
        a.borrow("parts", 7).await.unwrap();
        a.close().await;
        server.stop().await;

        let server = Running::start(dir.path());
        let mut b = net::connect(server.addr, &cfg_b, Some(&pin)).await.unwrap();
        // Borrow changes are logged: B's catch-up tells it who holds the record.
        expect_push(&mut b, "parts", 7, holder_a).await;
        assert_eq!(
            remote(b.borrow("parts", 7).await),
            RemoteError::AlreadyBorrowed {
                holder: holder_a,
                name: Some("a".into()),
            }
        );
        assert_eq!(
            remote(b.return_borrow("parts", 7).await),
            RemoteError::NotBorrowed
        );
        let mut a = net::connect(server.addr, &cfg_a, Some(&pin)).await.unwrap();
        assert_eq!(holder(&a), holder_a);
        expect_push(&mut a, "parts", 7, holder_a).await;
        // Still held by A: borrowing again is fine, and A can return it.
        a.borrow("parts", 7).await.unwrap();
        a.return_borrow("parts", 7).await.unwrap();
        expect_push(&mut b, "parts", 7, 0).await;
        b.borrow("parts", 7).await.unwrap();
        expect_push(&mut a, "parts", 7, 0).await;
        expect_push(&mut a, "parts", 7, holder(&b)).await;
        a.close().await;
        b.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_returns_by_non_holders() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let reader = server
            .store
            .issue("reader", Trees::All, Trees::Only(vec!["notes".into()]))
            .unwrap();
        let mut r = net::connect(server.addr, &client(&reader), None)
            .await
            .unwrap();
        let mut a = net::connect(server.addr, &client(&server.token("a")), None)
            .await
            .unwrap();

        let e = remote(r.borrow("parts", 1).await);
        assert_eq!(
            e,
            RemoteError::NotAllowed {
                tree: "parts".into()
            }
        );
        assert!(
            NetError::Remote(e)
                .to_string()
                .contains("may not write tree `parts`")
        );
        assert_eq!(server.store.borrower("parts", 1).unwrap(), None);
        // A writable tree is fine for the same token.
        r.borrow("notes", 1).await.unwrap();

        // Returning what nobody holds, or what another client holds.
        assert_eq!(
            remote(a.return_borrow("parts", 1).await),
            RemoteError::NotBorrowed
        );
        assert_eq!(
            remote(a.return_borrow("notes", 1).await),
            RemoteError::NotBorrowed
        );
        assert_eq!(server.store.borrower("notes", 1).unwrap(), Some(holder(&r)));
        // Only the successful borrow was pushed.
        expect_push(&mut a, "notes", 1, holder(&r)).await;
        expect_no_push(&mut a).await;
        r.close().await;
        a.close().await;
        server.stop().await;
    })
    .await;
}
