//! Synced databases (`Db::open_synced`) against a real server on loopback, in one process:
//! remote changes with events and indexers, borrows through the server, returns, releases,
//! offline creates with an outbox, reconnects, subscriptions, refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{APP, Running, bounded};
use rekord::{Db, Error, Event, EventKind, Key, Retry, SyncConfig, SyncEvent, WriteMode};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

#[rekord::record(tree = "notes", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub text: String,
}

/// What the indexer saw: (id, new name).
type Seen = Arc<Mutex<Vec<(u64, Option<String>)>>>;

const LIMIT: Duration = Duration::from_secs(60);

fn config(server: &Running, token: &str) -> SyncConfig {
    SyncConfig::new(server.addr, APP, token)
        .retry(
            Retry::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_millis(200)),
        )
        // Notice a stopped server quickly.
        .idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
}

/// Waits (polling, bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for the first record event matching `pred` (bounded).
fn wait_event(sub: &rekord::Subscription, mut pred: impl FnMut(&rekord::RecordEvent) -> bool) {
    let start = Instant::now();
    loop {
        while let Some(e) = sub.try_next() {
            if let Event::Record(r) = &e
                && pred(r)
            {
                return;
            }
        }
        assert!(start.elapsed() < LIMIT, "timed out waiting for an event");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (bounded) for the first sync event `pick` accepts; what it picked.
fn wait_sync<R>(
    sub: &rekord::Subscription,
    what: &str,
    mut pick: impl FnMut(&SyncEvent) -> Option<R>,
) -> R {
    let start = Instant::now();
    loop {
        while let Some(e) = sub.try_next() {
            if let Some(r) = e.as_sync().and_then(&mut pick) {
                return r;
            }
        }
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Creates a part once the first id range has arrived.
fn create(parts: &rekord::Tree<Part>, part: &Part) -> Key<Part> {
    let start = Instant::now();
    loop {
        match parts.create(part) {
            Ok(k) => return k,
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("create failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_borrows_returns_and_releases_reach_the_other_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("alice");
    let (t, t_bob) = (token.clone(), server.token("bob"));
    let srv_addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let server_cfg = |t: &str| {
            SyncConfig::new(srv_addr, APP, t)
                .retry(Retry::default().initial(Duration::from_millis(20)))
        };
        let a = Db::memory_synced(server_cfg(&t)).unwrap();
        let b = Db::memory_synced(server_cfg(&t_bob)).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        b.wait_caught_up(LIMIT).unwrap();
        assert_ne!(a.replica(), b.replica());
        let (pa, pb) = (a.tree::<Part>().unwrap(), b.tree::<Part>().unwrap());

        // An indexer on B sees remote changes.
        let seen: Seen = Arc::default();
        let s2 = seen.clone();
        b.register_indexer::<Part, _>(move |c: &rekord::Change<'_, Part>| {
            s2.lock()
                .unwrap()
                .push((c.key.id(), c.new.map(|n| n.name.to_string())));
        })
        .unwrap();
        let sub_b = b.subscribe();

        // A creates: B gets the record, the event (origin A) and the indexer call.
        let key = create(
            &pa,
            &Part {
                name: "bolt".into(),
                qty: 1,
            },
        );
        assert!(key.id() >= 1 << 32, "ids come from the server's ranges");
        let ra = a.replica();
        wait_event(&sub_b, |e| {
            e.kind == EventKind::Created && e.key == key.raw() && e.origin == ra && e.is_remote(&b)
        });
        assert_eq!(
            pb.get(key).unwrap(),
            Part {
                name: "bolt".into(),
                qty: 1
            }
        );
        assert_eq!(
            pb.meta(key).unwrap().holder,
            ra,
            "the creator holds it from birth"
        );
        assert!(
            seen.lock()
                .unwrap()
                .contains(&(key.id(), Some("bolt".into())))
        );

        // B cannot borrow it (A holds it): a typed error naming the holder, by number and
        // by the name of the token it connected with.
        match pb.borrow(key) {
            Err(e @ Error::AlreadyBorrowed { .. }) => {
                let text = e.to_string();
                let Error::AlreadyBorrowed {
                    holder,
                    holder_name,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((holder, holder_name.as_deref()), (ra, Some("alice")));
                assert!(
                    text.contains(&format!("held by holder {ra} (alice)")),
                    "{text}"
                );
            }
            other => panic!("expected AlreadyBorrowed, got {other:?}"),
        }
        // B cannot change it locally either.
        assert!(matches!(
            pb.update(key, |p| p.qty = 9),
            Err(Error::NotBorrowed { .. })
        ));

        // A edits and returns: B sees the edit, then the return.
        pa.update(key, |p| p.qty = 2).unwrap();
        pa.return_borrow(key).unwrap();
        a.wait_pushed(LIMIT).unwrap();
        wait_event(&sub_b, |e| {
            matches!(e.kind, EventKind::Returned { .. }) && e.key.id == key.id()
        });
        assert_eq!(pb.get(key).unwrap().qty, 2);
        assert_eq!(pb.meta(key).unwrap().holder, 0);

        // Now B borrows (exactly one winner), edits, releases, returns.
        pb.borrow(key).unwrap();
        let rb = b.replica();
        assert_eq!(pb.meta(key).unwrap().holder, rb);
        let sub_a = a.subscribe();
        pb.update(key, |p| p.qty = 3).unwrap();
        pb.release(key).unwrap();
        b.wait_pushed(LIMIT).unwrap();
        wait_event(&sub_a, |e| {
            e.kind == EventKind::Released && e.key == key.raw() && e.origin == rb
        });
        assert_eq!(pa.get(key).unwrap().qty, 3);
        assert!(pa.meta(key).unwrap().released);
        match pa.borrow(key) {
            Err(Error::AlreadyBorrowed {
                holder,
                holder_name,
                ..
            }) => assert_eq!((holder, holder_name.as_deref()), (rb, Some("bob"))),
            other => panic!("expected AlreadyBorrowed, got {other:?}"),
        }
        // A released revision is frozen; a new revision carries on (B holds the borrow).
        pb.set_state(key, 7).unwrap();
        let k1 = pb.new_revision(key).unwrap();
        pb.update(k1, |p| p.qty = 4).unwrap();
        b.wait_pushed(LIMIT).unwrap();
        wait_event(&sub_a, |e| {
            e.key == k1.raw() && e.kind == EventKind::Updated
        });
        assert_eq!(pa.meta(key).unwrap().state, 7);
        assert_eq!(pa.get(k1).unwrap().qty, 4);
        assert_eq!(pa.latest(key.id()).unwrap(), Some(k1));
        assert_eq!(b.sync_status().unwrap().rejected, 0);
        assert_eq!(a.sync_status().unwrap().rejected, 0);
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_creates_wait_in_the_outbox_and_converge_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let addr = server.addr;
    let token = server.token("all");
    let files = tempfile::tempdir().unwrap();
    let path_a = files.path().join("a.rekord");
    let cfg = move |t: &str| {
        SyncConfig::new(addr, APP, t).retry(
            Retry::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_millis(100)),
        )
    };
    let (t, p) = (token.clone(), path_a.clone());
    // First contact: A gets its ids, then the server goes away.
    let keys = tokio::task::spawn_blocking(move || {
        let a = Db::open_synced(&p, cfg(&t)).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        let pa = a.tree::<Part>().unwrap();
        create(
            &pa,
            &Part {
                name: "first".into(),
                qty: 0,
            },
        );
        a.wait_pushed(LIMIT).unwrap();
        a
    })
    .await
    .unwrap();
    let a = keys;
    server.stop().await;

    let a2 = a.clone();
    let offline_keys = tokio::task::spawn_blocking(move || {
        eventually("A to notice the server is gone", || {
            !a2.sync_status().unwrap().online
        });
        let pa = a2.tree::<Part>().unwrap();
        let keys: Vec<_> = (0..50)
            .map(|i| {
                pa.create(&Part {
                    name: format!("offline {i}"),
                    qty: i,
                })
                .unwrap()
            })
            .collect();
        assert_eq!(a2.sync_status().unwrap().outbox, 50);
        // Borrowing needs the server.
        assert!(matches!(pa.borrow(keys[0]), Ok(()))); // held from birth: no server needed
        keys
    })
    .await
    .unwrap();
    // Restart A's process-equivalent: drop it (outbox stays in the file) and reopen.
    drop(a);

    // The server comes back on the same port.
    let server = Running::start_on(dir.path(), addr);
    let (t, p) = (token.clone(), path_a.clone());
    tokio::task::spawn_blocking(move || {
        let a = Db::open_synced(&p, cfg(&t)).unwrap();
        a.wait_pushed(LIMIT).unwrap();
        let b = Db::memory_synced(cfg(&t)).unwrap();
        b.wait_caught_up(LIMIT).unwrap();
        let pb = b.tree::<Part>().unwrap();
        assert_eq!(pb.len().unwrap(), 51);
        for (i, k) in offline_keys.iter().enumerate() {
            assert_eq!(pb.get(*k).unwrap().name, format!("offline {i}"));
        }
    })
    .await
    .unwrap();
    // Each change was applied once: 51 creates in the server's log, no more.
    assert_eq!(server.store.head().unwrap(), 51);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_may_subscribe_to_a_subset_of_trees() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    let cfg = config(&server, &token);
    tokio::task::spawn_blocking(move || {
        let a = Db::memory_synced(cfg.clone()).unwrap();
        let b = Db::memory_synced(cfg.trees(["notes"])).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        b.wait_caught_up(LIMIT).unwrap();
        let sub = b.subscribe();
        let pa = a.tree::<Part>().unwrap();
        create(
            &pa,
            &Part {
                name: "x".into(),
                qty: 1,
            },
        );
        let na = a.tree::<Note>().unwrap();
        let nk = na
            .create(&Note {
                text: "hello".into(),
            })
            .unwrap();
        a.wait_pushed(LIMIT).unwrap();
        wait_event(&sub, |e| e.key == nk.raw());
        assert_eq!(b.tree::<Note>().unwrap().get(nk).unwrap().text, "hello");
        assert_eq!(b.tree::<Part>().unwrap().len().unwrap(), 0);
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_token_is_refused_with_an_event_and_waits_say_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let cfg = config(&server, "not-a-token");
    tokio::task::spawn_blocking(move || {
        let db = Db::memory_synced(cfg).unwrap();
        let sub = db.subscribe();
        let reason = wait_sync(&sub, "a refusal", |e| match e {
            SyncEvent::Refused { reason } => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.contains("token"), "{reason}");
        // A refusal, not an outage.
        assert!(matches!(
            db.wait_caught_up(Duration::from_millis(50)),
            Err(Error::Refused { .. })
        ));
        // No ids without a server: a clear error, not a panic.
        assert!(matches!(
            db.tree::<Part>().unwrap().create(&Part {
                name: "n".into(),
                qty: 0
            }),
            Err(Error::IdsExhausted)
        ));
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn borrowing_from_async_code_neither_blocks_the_runtime_nor_panics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    let cfg = config(&server, &token);
    bounded(LIMIT, async move {
        // The sync client runs on its own thread: this single-threaded runtime only serves
        // the server.
        let a = Db::memory_synced(cfg.clone()).unwrap();
        let b = Db::memory_synced(cfg).unwrap();
        let pa = a.tree::<Part>().unwrap();
        let pb = b.tree::<Part>().unwrap();
        let key = loop {
            match pa.create(&Part {
                name: "async".into(),
                qty: 0,
            }) {
                Ok(k) => break k,
                Err(Error::IdsExhausted) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => panic!("{e}"),
            }
        };
        pa.return_borrow(key).unwrap();
        loop {
            match pb.borrow_async(key).await {
                Ok(()) => break,
                // Not here yet, or A's return not yet at the server.
                Err(Error::NotFound { .. } | Error::AlreadyBorrowed { .. }) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(pb.meta(key).unwrap().holder, b.replica());
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_restored_from_an_older_backup_is_reconciled_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let addr = server.addr;
    let token = server.token("all");
    let backup = tempfile::tempdir().unwrap().keep().join("backup.redb");
    let cfg = config(&server, &token);
    let store = server.store.clone();
    let (b_path, b_dir) = {
        let d = tempfile::tempdir().unwrap();
        (d.path().join("b.rekord"), d)
    };
    let (cfg2, bp, bk) = (cfg.clone(), b_path.clone(), backup.clone());
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = Db::memory_synced(cfg2.clone()).unwrap();
        let b = Db::open_synced(&bp, cfg2).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        b.wait_caught_up(LIMIT).unwrap();
        let pa = a.tree::<Part>().unwrap();
        for i in 0..3 {
            create(
                &pa,
                &Part {
                    name: format!("kept {i}"),
                    qty: i,
                },
            );
        }
        a.wait_pushed(LIMIT).unwrap();
        store.backup(&bk).unwrap();
        for i in 0..2 {
            create(
                &pa,
                &Part {
                    name: format!("lost {i}"),
                    qty: i,
                },
            );
        }
        a.wait_pushed(LIMIT).unwrap();
        eventually("B to apply all five", || {
            b.sync_status().unwrap().cursor == 5
        });
        (a, b)
    })
    .await
    .unwrap();
    server.stop().await;
    std::fs::copy(&backup, dir.path().join(rekord_server::store::DB_FILE)).unwrap();
    let server = Running::start_on(dir.path(), addr);
    let cfg3 = config(&server, &token);
    tokio::task::spawn_blocking(move || {
        let sub = b.subscribe();
        // B notices the restore: the histories share changes up to 3; B changed nothing.
        let restored = wait_sync(&sub, "Restored", |e| match e {
            SyncEvent::Restored {
                common,
                cursor,
                resent,
                ..
            } => Some((*common, *cursor, *resent)),
            _ => None,
        });
        assert_eq!(restored, (3, 5, 0));
        // A made the two lost records: it sends them again, and creates one more.
        a.wait_caught_up(LIMIT).unwrap();
        let pa = a.tree::<Part>().unwrap();
        let k = create(
            &pa,
            &Part {
                name: "after restore".into(),
                qty: 9,
            },
        );
        a.wait_pushed(LIMIT).unwrap();
        wait_event(&sub, |e| e.key == k.raw() && e.kind == EventKind::Created);
        let names = |db: &Db| {
            let mut v: Vec<String> = db
                .tree::<Part>()
                .unwrap()
                .iter()
                .unwrap()
                .map(|r| r.unwrap().name.to_string())
                .collect();
            v.sort();
            v
        };
        let fresh = Db::memory_synced(cfg3).unwrap();
        eventually("A, B and a fresh replica to agree", || {
            let _ = fresh.wait_caught_up(LIMIT);
            names(&fresh).len() == 6 && names(&a) == names(&fresh) && names(&b) == names(&fresh)
        });
        assert_eq!(
            names(&b),
            [
                "after restore",
                "kept 0",
                "kept 1",
                "kept 2",
                "lost 0",
                "lost 1"
            ]
        );
        drop(b_dir);
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_creates_work_until_the_granted_ids_run_out_and_refill_online() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let addr = server.addr;
    let token = server.token("all");
    let cfg = config(&server, &token).range_size(4);
    let a = tokio::task::spawn_blocking(move || {
        let a = Db::memory_synced(cfg).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        let pa = a.tree::<Part>().unwrap();
        create(
            &pa,
            &Part {
                name: "online".into(),
                qty: 0,
            },
        );
        a.wait_pushed(LIMIT).unwrap();
        a
    })
    .await
    .unwrap();
    server.stop().await;
    let a2 = a.clone();
    tokio::task::spawn_blocking(move || {
        let pa = a2.tree::<Part>().unwrap();
        let mut made = 0;
        let err = loop {
            match pa.create(&Part {
                name: "offline".into(),
                qty: made,
            }) {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
        };
        // One range of 4 ids, one used online: 3 offline creates, then a clear error.
        assert_eq!(made, 3);
        assert!(matches!(err, Error::IdsExhausted), "{err}");
        assert!(err.to_string().contains("once it reconnects"), "{err}");
    })
    .await
    .unwrap();
    let server = Running::start_on(dir.path(), addr);
    tokio::task::spawn_blocking(move || {
        a.wait_pushed(LIMIT).unwrap();
        let pa = a.tree::<Part>().unwrap();
        // Back online, the client refills its ids in the background.
        create(
            &pa,
            &Part {
                name: "refilled".into(),
                qty: 0,
            },
        );
        a.wait_pushed(LIMIT).unwrap();
        assert_eq!(pa.len().unwrap(), 5);
    })
    .await
    .unwrap();
    assert_eq!(server.store.head().unwrap(), 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_of_another_application_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    let cfg = SyncConfig::new(server.addr, "another-app", token);
    tokio::task::spawn_blocking(move || {
        let db = Db::memory_synced(cfg).unwrap();
        let sub = db.subscribe();
        let reason = wait_sync(&sub, "a refusal", |e| match e {
            SyncEvent::Refused { reason } => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.contains("application"), "{reason}");
        assert!(db.sync_status().unwrap().replica.is_none());
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_controls_limits_staleness_throttling_and_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let addr = server.addr;
    let token = server.token("all");
    let cfg = config(&server, &token)
        .max_outbox_bytes(4_000)
        .max_outbox_age(Duration::from_millis(100))
        .batch_size(5)
        .replay_bytes_per_sec(20_000);
    let a = tokio::task::spawn_blocking(move || {
        let a = Db::memory_synced(cfg).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        let pa = a.tree::<Part>().unwrap();
        create(
            &pa,
            &Part {
                name: "online".into(),
                qty: 0,
            },
        );
        a.wait_pushed(LIMIT).unwrap();
        let st = a.sync_status().unwrap();
        assert!(
            st.online && st.bytes_sent > 0 && st.bytes_received > 0,
            "{st:?}"
        );
        assert!(st.last_sync.is_some(), "{st:?}");
        assert_eq!((st.outbox, st.outbox_bytes), (0, 0));
        a
    })
    .await
    .unwrap();
    server.stop().await;
    let a2 = a.clone();
    let made = tokio::task::spawn_blocking(move || {
        let sub = a2.subscribe();
        let pa = a2.tree::<Part>().unwrap();
        // Offline writes fill the outbox up to its byte limit; the next is refused whole.
        let mut made = 0;
        let err = loop {
            match pa.create(&Part {
                name: "offline".into(),
                qty: made,
            }) {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
            assert!(made < 1_000, "the outbox limit never hit");
        };
        let Error::OutboxFull { queued, limit } = err else {
            panic!("expected OutboxFull, got {err}");
        };
        assert_eq!(limit, 4_000);
        let st = a2.sync_status().unwrap();
        assert_eq!(st.outbox_bytes, queued);
        assert!(queued <= 4_000 && st.outbox == u64::from(made), "{st:?}");
        assert_eq!(
            pa.len().unwrap(),
            u64::from(made) + 1,
            "the refused write changed nothing"
        );
        // The outbox grows old while the server is away: one event, nothing dropped.
        let (age, entries) = wait_sync(&sub, "OutboxStale", |e| match e {
            SyncEvent::OutboxStale { age, entries } => Some((*age, *entries)),
            _ => None,
        });
        assert!(age >= Duration::from_millis(100));
        assert_eq!(entries, u64::from(made));
        made
    })
    .await
    .unwrap();
    let server = Running::start_on(dir.path(), addr);
    tokio::task::spawn_blocking(move || {
        let before = a.sync_status().unwrap();
        let queued = before.outbox_bytes;
        let start = Instant::now();
        a.wait_pushed(LIMIT).unwrap();
        let took = start.elapsed();
        // Throttled to 20,000 bytes/s: the replay cannot be faster than that (one batch's
        // pause may overlap the end).
        let floor = Duration::from_secs_f64(queued as f64 / 20_000.0 * 0.5);
        assert!(
            took >= floor,
            "replayed {queued} bytes in {took:?}, floor {floor:?}"
        );
        let st = a.sync_status().unwrap();
        assert_eq!((st.outbox, st.outbox_bytes), (0, 0));
        assert!(st.bytes_sent > before.bytes_sent + queued / 2, "{st:?}");
        assert_eq!(
            a.tree::<Part>().unwrap().len().unwrap(),
            u64::from(made) + 1
        );
    })
    .await
    .unwrap();
    assert_eq!(server.store.head().unwrap(), u64::from(made) + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forced_return_is_reported_and_later_offline_edits_are_refused_kept_and_undone() {
    use rekord_server::{AdminReply, AdminRequest};
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let addr = server.addr;
    let token = server.token("all");
    let cfg = config(&server, &token);
    let data = dir.path().to_path_buf();
    let (a, b, k, k2) = tokio::task::spawn_blocking(move || {
        let a = Db::memory_synced(cfg.clone()).unwrap();
        let b = Db::memory_synced(cfg).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        b.wait_caught_up(LIMIT).unwrap();
        let (pa, pb) = (a.tree::<Part>().unwrap(), b.tree::<Part>().unwrap());
        let k = create(
            &pa,
            &Part {
                name: "bolt".into(),
                qty: 1,
            },
        );
        let k2 = create(
            &pa,
            &Part {
                name: "nut".into(),
                qty: 1,
            },
        );
        a.wait_pushed(LIMIT).unwrap();
        let sub_a = a.subscribe();
        // Live: the administrator takes k back; A is told, and B sees it returned.
        let reply = rekord_server::admin::request(
            &data,
            &AdminRequest::ForceReturn {
                tree: "parts".into(),
                id: k.id(),
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            reply,
            AdminReply::ForceReturned {
                holder: Some(a.replica())
            }
        );
        let revoked = wait_sync(&sub_a, "BorrowRevoked", |e| match e {
            SyncEvent::BorrowRevoked { tree, id } => Some((tree.clone(), *id)),
            _ => None,
        });
        assert_eq!(revoked, ("parts".to_string(), k.id()));
        assert_eq!(pa.meta(k).unwrap().holder, 0);
        assert!(matches!(
            pa.update(k, |p| p.qty = 5),
            Err(Error::NotBorrowed { .. })
        ));
        eventually("B to see k returned", || pb.meta(k).unwrap().holder == 0);
        pb.borrow(k).unwrap();
        (a, b, k, k2)
    })
    .await
    .unwrap();
    server.stop().await;
    // Offline, A edits k2, which it still holds; meanwhile the administrator takes it back
    // (the server is down: directly on its database).
    let a2 = a.clone();
    tokio::task::spawn_blocking(move || {
        a2.tree::<Part>()
            .unwrap()
            .update(k2, |p| p.qty = 99)
            .unwrap();
    })
    .await
    .unwrap();
    {
        let store = rekord_server::Store::open(dir.path()).unwrap();
        assert_eq!(
            store
                .force_return("parts", k2.id())
                .unwrap()
                .map(|(h, _)| h),
            Some(a.replica())
        );
    }
    let server = Running::start_on(dir.path(), addr);
    tokio::task::spawn_blocking(move || {
        let sub = a.subscribe();
        a.wait_pushed(LIMIT).unwrap();
        let pa = a.tree::<Part>().unwrap();
        // The edit was refused, kept aside, reported, and the local copy is the server's.
        let mut rejected = false;
        let start = Instant::now();
        while !(rejected && pa.get(k2).unwrap().qty == 1) {
            if let Some(Event::Sync(SyncEvent::Rejected { reason, .. })) = sub.try_next() {
                assert!(reason.contains("borrow"), "{reason}");
                rejected = true;
            }
            assert!(start.elapsed() < LIMIT, "the refused edit was not undone");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(a.sync_status().unwrap().rejected, 1);
        assert_eq!(pa.meta(k2).unwrap().holder, 0);
        let pb = b.tree::<Part>().unwrap();
        eventually("B to see k2 returned", || pb.meta(k2).unwrap().holder == 0);
        assert_eq!(pb.get(k2).unwrap().qty, 1);
        assert_eq!(pa.meta(k).unwrap().holder, b.replica());
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_through_waits_for_the_server_and_refusals_are_undone_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let all = server.token("all");
    // This token may read everything but write only notes.
    let notes_only = server
        .store
        .issue(
            "notes-only",
            rekord::proto::handshake::Trees::All,
            rekord::proto::handshake::Trees::Only(vec!["notes".into()]),
        )
        .unwrap();
    let store = server.store.clone();
    let through = config(&server, &all).write_mode(WriteMode::Through);
    let limited = config(&server, &notes_only).tree_write_mode("notes", WriteMode::Through);
    let a = tokio::task::spawn_blocking(move || {
        let a = Db::memory_synced(through).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        let pa = a.tree::<Part>().unwrap();
        // Accepted: when create and update return, the server has them already.
        let k = create(
            &pa,
            &Part {
                name: "bolt".into(),
                qty: 1,
            },
        );
        assert!(store.record("parts", k.id(), 0).unwrap().is_some());
        let head = store.head().unwrap();
        pa.update(k, |p| p.qty = 2).unwrap();
        assert_eq!(store.head().unwrap(), head + 1);
        assert_eq!(a.sync_status().unwrap().outbox, 0);

        // Refused writes are undone locally, with events, in both modes.
        let c = Db::memory_synced(limited).unwrap();
        c.wait_caught_up(LIMIT).unwrap();
        let sub = c.subscribe();
        let (pc, nc) = (c.tree::<Part>().unwrap(), c.tree::<Note>().unwrap());
        // Write-behind tree: the create returns, then is refused and undone.
        let k2 = create(
            &pc,
            &Part {
                name: "forbidden".into(),
                qty: 0,
            },
        );
        let start = Instant::now();
        let (mut rejected, mut removed) = (false, false);
        while !(rejected && removed) {
            match sub.try_next() {
                Some(Event::Sync(SyncEvent::Rejected { reason, .. })) => {
                    assert!(reason.contains("may not write"), "{reason}");
                    rejected = true;
                }
                Some(Event::Record(r)) if r.key == k2.raw() && r.kind == EventKind::Removed => {
                    assert_eq!(r.origin, 0, "undone on the server's word");
                    removed = true;
                }
                Some(_) => {}
                None => std::thread::sleep(Duration::from_millis(5)),
            }
            assert!(start.elapsed() < LIMIT, "the refused create was not undone");
        }
        assert!(!pc.contains(k2).unwrap());
        // Write-through tree: accepted notes return Ok with the server having them.
        let nk = nc
            .create(&Note {
                text: "fine".into(),
            })
            .unwrap();
        assert_eq!(c.sync_status().unwrap().outbox, 0);
        assert!(nc.contains(nk).unwrap());
        a
    })
    .await
    .unwrap();
    server.stop().await;
    tokio::task::spawn_blocking(move || {
        eventually("A to notice the server is gone", || {
            !a.sync_status().unwrap().online
        });
        let pa = a.tree::<Part>().unwrap();
        let before = pa.len().unwrap();
        // Offline, a write-through write is refused before anything changes.
        let err = pa
            .create(&Part {
                name: "offline".into(),
                qty: 0,
            })
            .unwrap_err();
        assert!(matches!(err, Error::Offline { .. }), "{err}");
        assert_eq!(pa.len().unwrap(), before);
        assert_eq!(a.sync_status().unwrap().outbox, 0);
    })
    .await
    .unwrap();
}
