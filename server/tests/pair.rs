//! Whole replicas and the real server in one thread, with no socket and a simulated clock:
//! the sync engine runs as a future on the test's executor ([`Db::open_synced_driven`]),
//! reaching the server through in-memory streams ([`Server::local_connector`]), under
//! tokio's paused time (timers fire in virtual time, as soon as nothing else can run). Like
//! quinn's `Pair`, this tests the protocol's seams deterministically and fast: an hour-long
//! outage costs no wall time, and the same run gives the same events every time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rekord::net::{ByteStream, Connect, NetError, WireFuture};
use rekord::{Db, Error, Event, Key, SyncConfig, SyncEvent};
use rekord_server::LocalConnector;
use tokio::time::Instant;

const APP: &str = "workshop";

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

#[rekord::record(tree = "docs", version = 1, merge = "three-way")]
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub a: u32,
    pub b: u32,
}

/// The server's in-process connector, which the test can take down and bring back.
struct Link {
    server: LocalConnector,
    up: AtomicBool,
}

impl Connect for Link {
    fn connect(&self) -> WireFuture<'static, Result<Box<dyn ByteStream>, NetError>> {
        let stream = if self.up.load(Ordering::SeqCst) {
            self.server
                .connect()
                .map(|s| Box::new(s) as Box<dyn ByteStream>)
                .map_err(|e| NetError::Closed(e.to_string()))
        } else {
            Err(NetError::Closed("the simulated network is down".into()))
        };
        Box::pin(async move { stream })
    }
}

#[path = "common/local.rs"]
mod local;

/// A server in this process, and a token for every tree.
type Served = local::InProcess<Link>;

fn serve(dir: &Path) -> Served {
    local::serve(dir, APP, |server| Link {
        server,
        up: AtomicBool::new(true),
    })
}

impl Served {
    fn config(&self) -> SyncConfig {
        self.base_config().timeout(Duration::from_secs(5))
    }
}

/// Opens a replica whose engine runs as a task of this thread.
fn replica(path: &Path, config: SyncConfig) -> (Db, tokio::task::JoinHandle<()>) {
    let (db, driver) = Db::open_synced_driven(path, config).unwrap();
    (db, tokio::task::spawn_local(driver))
}

/// Waits in virtual time (at most a virtual minute) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not within a virtual minute: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Creates once the replica has ids (the engine fetches them in the background).
async fn create(parts: &rekord::Tree<Part>, name: &str, qty: u32) -> Key<Part> {
    let start = Instant::now();
    loop {
        match parts.create(&Part {
            name: name.into(),
            qty,
        }) {
            Ok(k) => return k,
            Err(Error::IdsExhausted) if start.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

fn online(db: &Db) -> bool {
    db.sync_status().is_some_and(|s| s.online && s.caught_up)
}

/// The record events of `sub` so far, as text (kind, key, origin).
fn drain(sub: &rekord::Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = sub.try_next() {
        if let Event::Record(r) = e {
            out.push(format!("{:?} {} {}", r.kind, r.key, r.origin));
        }
    }
    out
}

/// Two replicas create, borrow, edit and return; the events each saw.
async fn borrow_round(dir: &Path) -> (Vec<String>, Vec<String>) {
    let served = serve(&dir.join("server"));
    // One after the other: the server checks tokens on threads of its own, so two
    // handshakes at once could end in either order (and get the holder numbers swapped).
    let (a, drive_a) = replica(&dir.join("a.rekord"), served.config());
    let sub_a = a.subscribe();
    until("A online", || online(&a)).await;
    let (b, drive_b) = replica(&dir.join("b.rekord"), served.config());
    let sub_b = b.subscribe();
    until("both replicas online", || online(&a) && online(&b)).await;
    let (pa, pb) = (a.tree::<Part>().unwrap(), b.tree::<Part>().unwrap());

    let bolt = create(&pa, "bolt", 1).await;
    until("B receives A's create", || pb.get(bolt).is_ok()).await;
    match pb.borrow_async(bolt).await {
        Err(Error::AlreadyBorrowed { holder, .. }) => assert_eq!(holder, a.replica()),
        other => panic!("expected AlreadyBorrowed, got {other:?}"),
    }
    pa.update(bolt, |p| p.qty = 2).unwrap();
    pa.return_borrow(bolt).unwrap();
    until("B sees the return", || {
        pb.meta(bolt).is_ok_and(|m| m.holder == 0) && pb.get(bolt).is_ok_and(|p| p.qty == 2)
    })
    .await;
    pb.borrow_async(bolt).await.unwrap();
    pb.update(bolt, |p| p.qty = 3).unwrap();
    pb.return_borrow(bolt).unwrap();
    until("A sees B's edit and return", || {
        pa.get(bolt).is_ok_and(|p| p.qty == 3) && pa.meta(bolt).is_ok_and(|m| m.holder == 0)
    })
    .await;
    until("both outboxes empty", || {
        a.sync_status().unwrap().outbox == 0 && b.sync_status().unwrap().outbox == 0
    })
    .await;
    let events = (drain(&sub_a), drain(&sub_b));
    drop((pa, pb, a, b));
    drive_a.await.unwrap();
    drive_b.await.unwrap();
    served.stop().await;
    events
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn replicas_borrow_and_edit_in_one_thread_and_run_the_same_every_time() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let first = tempfile::tempdir().unwrap();
            let second = tempfile::tempdir().unwrap();
            let one = borrow_round(first.path()).await;
            let two = borrow_round(second.path()).await;
            assert!(!one.0.is_empty() && !one.1.is_empty());
            assert_eq!(one, two, "the same run gave other events");
        })
        .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_hour_offline_costs_no_wall_time_and_loses_nothing() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let served = serve(&dir.path().join("server"));
            let (a, drive_a) = replica(&dir.path().join("a.rekord"), served.config());
            let (b, drive_b) = replica(&dir.path().join("b.rekord"), served.config());
            until("both online", || online(&a) && online(&b)).await;
            let (pa, pb) = (a.tree::<Part>().unwrap(), b.tree::<Part>().unwrap());
            // Ids for the outage.
            let first = create(&pa, "first", 0).await;
            until("B gets the first", || pb.get(first).is_ok()).await;

            let wall = std::time::Instant::now();
            let virtual_start = Instant::now();
            // The network goes down: B, reopened, cannot connect, and writes for an hour
            // (of virtual time: each retry's backoff passes at once).
            served.connector.up.store(false, Ordering::SeqCst);
            drop(pb);
            drop(b);
            drive_b.await.unwrap();
            let (b, drive_b) = replica(&dir.path().join("b.rekord"), served.config());
            let pb = b.tree::<Part>().unwrap();
            let mut made = Vec::new();
            for i in 0..50 {
                let part = Part {
                    name: format!("offline {i}"),
                    qty: i,
                };
                made.push(pb.create(&part).unwrap());
                tokio::time::sleep(Duration::from_secs(72)).await;
            }
            assert!(Instant::now() - virtual_start >= Duration::from_secs(3600));
            assert!(!b.sync_status().unwrap().online);
            assert_eq!(b.sync_status().unwrap().outbox, 50);
            served.connector.up.store(true, Ordering::SeqCst);
            until("B's outbox drains", || {
                b.sync_status().is_some_and(|s| s.online && s.outbox == 0)
            })
            .await;
            for k in &made {
                until("A gets an offline create", || pa.get(*k).is_ok()).await;
            }
            assert!(
                wall.elapsed() < Duration::from_secs(30),
                "an hour of virtual outage took {:?} of wall time",
                wall.elapsed()
            );
            drop((pa, pb, a, b));
            drive_a.await.unwrap();
            drive_b.await.unwrap();
            served.stop().await;
        })
        .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn exit_right_after_a_merge_then_reopen_converges() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let served = serve(&dir.path().join("server"));
            let (pa_path, pb_path) = (dir.path().join("a.rekord"), dir.path().join("b.rekord"));
            let (a, drive_a) = replica(&pa_path, served.config());
            let (b, drive_b) = replica(&pb_path, served.config());
            until("both online", || online(&a) && online(&b)).await;
            let (da, db_) = (a.tree::<Doc>().unwrap(), b.tree::<Doc>().unwrap());
            let doc = loop {
                match da.create(&Doc { a: 0, b: 0 }) {
                    Ok(k) => break k,
                    Err(Error::IdsExhausted) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(e) => panic!("{e}"),
                }
            };
            until("B has the doc", || db_.get(doc).is_ok()).await;
            // B goes away; A edits `a`; B, reopened offline, edits `b`.
            drop(db_);
            drop(b);
            drive_b.await.unwrap();
            da.update(doc, |d| d.a = 1).unwrap();
            until("A's edit is pushed", || {
                a.sync_status().unwrap().outbox == 0
            })
            .await;
            served.connector.up.store(false, Ordering::SeqCst);
            let (b, drive_b) = replica(&pb_path, served.config());
            let sub = b.subscribe();
            let db_ = b.tree::<Doc>().unwrap();
            db_.update(doc, |d| d.b = 1).unwrap();
            // Back online: the server refuses B's edit with a conflict, B merges...
            served.connector.up.store(true, Ordering::SeqCst);
            let start = Instant::now();
            loop {
                let merged = std::iter::from_fn(|| sub.try_next())
                    .any(|e| matches!(e.as_sync(), Some(SyncEvent::Conflict(_))));
                if merged {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(60), "no merge");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // ... and exits right after the merge.
            drop(db_);
            drop(b);
            drive_b.await.unwrap();
            let (b, drive_b) = replica(&pb_path, served.config());
            let db_ = b.tree::<Doc>().unwrap();
            until("B reopened, caught up and pushed", || {
                online(&b) && b.sync_status().unwrap().outbox == 0
            })
            .await;
            let want = Doc { a: 1, b: 1 };
            until("A has the merge", || da.get(doc).is_ok_and(|d| d == want)).await;
            assert_eq!(
                db_.get(doc).unwrap(),
                want,
                "B diverged after exiting right after the merge"
            );
            drop((da, db_, a, b));
            drive_a.await.unwrap();
            drive_b.await.unwrap();
            served.stop().await;
        })
        .await;
}
