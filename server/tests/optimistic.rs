//! Optimistic trees against a real server on loopback: edits without borrows, concurrent
//! offline edits merged per strategy (last-write-wins on hybrid logical clocks, local-wins,
//! remote-wins, three-way, larger-wins, custom), conflict events with both sides, the losing
//! side kept, forced returns, and convergence whatever the order in which replicas
//! reconnect. Each client reaches the server through its own loopback UDP proxy, which
//! takes it offline on demand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "common/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use common::{APP, Running};
use proxy::{Faults, Proxy};
use rekord::sync::Winner;
use rekord::{Conflict, Db, Error, Key, Merge, Retry, SyncConfig, SyncEvent};

#[rekord::record(tree = "docs", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub title: String,
    pub body: String,
    pub votes: u32,
}

/// Optimistic by its type alone (no `SyncConfig::optimistic`).
#[rekord::record(tree = "scores", version = 1, merge = "larger-wins:points")]
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub name: String,
    pub points: u32,
}

const LIMIT: Duration = Duration::from_secs(60);

/// A client behind its own proxy (so it can be taken offline alone).
struct Client {
    db: Db,
    proxy: Proxy,
    sub: rekord::Subscription,
}

impl Client {
    async fn start(server: &Running, token: &str, merge: Merge) -> Client {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let proxy = Proxy::start(server.addr, 7, Faults::NONE).await;
        let config = SyncConfig::new(proxy.addr, APP, token)
            .retry(
                Retry::default()
                    .initial(Duration::from_millis(20))
                    .max(Duration::from_millis(100)),
            )
            .idle_timeout(Duration::from_millis(600))
            .timeout(Duration::from_millis(600))
            .optimistic("docs", merge);
        let db = tokio::task::spawn_blocking(move || {
            let db = Db::memory_synced(config).unwrap();
            db.wait_caught_up(LIMIT).unwrap();
            db
        })
        .await
        .unwrap();
        let sub = db.subscribe();
        Client { db, proxy, sub }
    }

    fn docs(&self) -> rekord::Tree<Doc> {
        self.db.tree::<Doc>().unwrap()
    }

    fn offline(&self) {
        self.proxy.block(true);
        eventually("going offline", || !self.db.sync_status().unwrap().online);
    }

    fn online(&self) {
        self.proxy.block(false);
        self.db.wait_caught_up(LIMIT).unwrap();
        self.db.wait_pushed(LIMIT).unwrap();
    }

    /// The conflict events reported so far.
    fn conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        while let Some(e) = self.sub.try_next() {
            if let Some(SyncEvent::Conflict(c)) = e.as_sync() {
                out.push((**c).clone());
            }
        }
        out
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn create(docs: &rekord::Tree<Doc>, doc: &Doc) -> Key<Doc> {
    let start = Instant::now();
    loop {
        match docs.create(doc) {
            Ok(k) => return k,
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("create failed: {e}"),
        }
    }
}

fn doc(title: &str, body: &str, votes: u32) -> Doc {
    Doc {
        title: title.into(),
        body: body.into(),
        votes,
    }
}

/// Waits until every client holds the same value for `key`; that value.
fn converged(clients: &[&Client], key: Key<Doc>) -> Doc {
    let mut last = None;
    let start = Instant::now();
    eventually("convergence", || {
        if start.elapsed() > LIMIT - Duration::from_secs(1) {
            for c in clients {
                eprintln!(
                    "replica {}: {:?} {:?}",
                    c.db.replica(),
                    c.docs().get(key),
                    c.db.sync_status()
                );
            }
        }
        let values: Vec<Option<Doc>> = clients.iter().map(|c| c.docs().get(key).ok()).collect();
        let same = values.windows(2).all(|w| w[0] == w[1]) && values[0].is_some();
        last = values[0].clone();
        same && clients
            .iter()
            .all(|c| c.db.sync_status().unwrap().outbox == 0)
    });
    last.unwrap()
}

/// A creates a doc both see; A goes offline and edits it with `mine`; B edits it with
/// `theirs` online (accepted first); A comes back. The value both end with and A- conflict.
async fn race(
    server: &Running,
    token: &str,
    merge: Merge,
    mine: impl FnOnce(&mut Doc) + Send + 'static,
    theirs: impl FnOnce(&mut Doc) + Send + 'static,
) -> (Doc, Vec<Conflict>, Client, Client, Key<Doc>) {
    let a = Client::start(server, token, merge.clone()).await;
    let b = Client::start(server, token, merge).await;
    tokio::task::spawn_blocking(move || {
        let key = create(&a.docs(), &doc("draft", "text", 1));
        a.db.wait_pushed(LIMIT).unwrap();
        eventually("B sees the doc", || b.docs().get(key).is_ok());
        assert_eq!(
            a.docs().meta(key).unwrap().holder,
            0,
            "an optimistic create is borrowed by nobody"
        );
        a.offline();
        // Edited by A first (an earlier clock), offline.
        a.docs().update(key, mine).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        b.docs().update(key, theirs).unwrap();
        b.db.wait_pushed(LIMIT).unwrap();
        a.online();
        let value = converged(&[&a, &b], key);
        let conflicts = a.conflicts();
        assert!(
            b.conflicts().is_empty(),
            "B- edit came first: B has no conflict"
        );
        (value, conflicts, a, b, key)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_edits_merge_per_strategy_and_report_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");

    // Last-write-wins on hybrid logical clocks: B edited later, B wins.
    let (v, c, ..) = race(
        &server,
        &token,
        Merge::last_write_wins(),
        |d| d.title = "A- title".into(),
        |d| d.title = "B- title".into(),
    )
    .await;
    assert_eq!(v, doc("B- title", "text", 1));
    assert_eq!(c.len(), 1, "one conflict, reported once: {c:?}");
    assert_eq!(c[0].winner, Winner::Theirs);
    assert!(
        c[0].mine.contains("A- title") && c[0].theirs.contains("B- title"),
        "{c:?}"
    );
    assert!(c[0].outcome.contains("B- title"));
    assert_eq!(c[0].strategy, "last-write-wins");

    // Local-wins: A- side wins although it is older.
    let (v, c, ..) = race(
        &server,
        &token,
        Merge::local_wins(),
        |d| d.title = "A- title".into(),
        |d| d.body = "B- body".into(),
    )
    .await;
    assert_eq!(v, doc("A- title", "text", 1), "{c:?}");
    assert_eq!(c[0].winner, Winner::Mine);

    // Remote-wins, keeping the loser: B- side stays, A- is kept as a new record.
    let (v, c, a, b, key) = race(
        &server,
        &token,
        Merge::remote_wins().keep_loser(),
        |d| d.title = "A- title".into(),
        |d| d.body = "B- body".into(),
    )
    .await;
    assert_eq!(v, doc("draft", "B- body", 1));
    assert_eq!(c[0].winner, Winner::Theirs);
    let kept = c[0].kept.expect("the losing side was kept");
    assert_ne!(kept.id, key.id());
    let kept: Key<Doc> = Key::new(kept.id, kept.rev);
    let kept_value = converged(&[&a, &b], kept);
    assert_eq!(kept_value, doc("A- title", "text", 1));

    // Three-way: disjoint fields both survive; the same field goes to the later clock.
    let (v, c, ..) = race(
        &server,
        &token,
        Merge::three_way(),
        |d| {
            d.title = "A- title".into();
            d.votes = 5;
        },
        |d| {
            d.body = "B- body".into();
            d.votes = 7;
        },
    )
    .await;
    assert_eq!(v, doc("A- title", "B- body", 7));
    assert_eq!(c[0].winner, Winner::Merged);
    assert_eq!(c[0].strategy, "three-way");
    assert!(c[0].outcome.contains("A- title") && c[0].outcome.contains("B- body"));

    // Larger-wins on `votes`: A- larger count wins although A is older.
    let (v, c, ..) = race(
        &server,
        &token,
        Merge::larger_wins("votes"),
        |d| {
            d.title = "A- title".into();
            d.votes = 9;
        },
        |d| d.votes = 3,
    )
    .await;
    assert_eq!(v, doc("A- title", "text", 9));
    assert_eq!(c[0].winner, Winner::Mine);

    // A custom merger: votes add up (both sides' increments count), titles concatenate.
    let (v, c, ..) = race(
        &server,
        &token,
        Merge::custom(|base: Option<&Doc>, mine: &Doc, theirs: &Doc| {
            let base_votes = base.map_or(0, |b| b.votes);
            Doc {
                title: format!("{}+{}", mine.title, theirs.title),
                body: theirs.body.clone(),
                votes: mine.votes + theirs.votes - base_votes,
            }
        }),
        |d| {
            d.title = "a".into();
            d.votes += 2;
        },
        |d| {
            d.title = "b".into();
            d.votes += 3;
        },
    )
    .await;
    assert_eq!(v, doc("a+b", "text", 6));
    assert_eq!(c[0].winner, Winner::Merged);
    assert_eq!(c[0].strategy, "custom");
    server.stop().await;
}

/// Several offline edits of A in a row (a chain) against one of B: merged once, and the
/// later edits are not lost or replayed over B-.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_of_offline_edits_merges_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    let a = Client::start(&server, &token, Merge::three_way()).await;
    let b = Client::start(&server, &token, Merge::three_way()).await;
    tokio::task::spawn_blocking(move || {
        let key = create(&a.docs(), &doc("t", "b", 0));
        a.db.wait_pushed(LIMIT).unwrap();
        eventually("B sees the doc", || b.docs().get(key).is_ok());
        a.offline();
        for i in 1..=5 {
            a.docs().update(key, |d| d.votes = i).unwrap();
        }
        b.docs().update(key, |d| d.body = "B".into()).unwrap();
        b.db.wait_pushed(LIMIT).unwrap();
        // While A has edits waiting, B- version is not applied over them.
        std::thread::sleep(Duration::from_millis(100));
        a.online();
        let v = converged(&[&a, &b], key);
        assert_eq!(v, doc("t", "B", 5));
        let c = a.conflicts();
        assert_eq!(c.len(), 1, "{c:?}");
    })
    .await
    .unwrap();
    server.stop().await;
}

/// Borrows still block optimistic edits; a record whose borrow an administrator took back
/// from an offline holder: the holder's offline edit is merged, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_return_turns_the_holders_offline_edits_into_a_merge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    let a = Client::start(&server, &token, Merge::three_way()).await;
    let b = Client::start(&server, &token, Merge::three_way()).await;
    let data = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let key = create(&a.docs(), &doc("t", "b", 0));
        a.db.wait_pushed(LIMIT).unwrap();
        eventually("B sees the doc", || b.docs().get(key).is_ok());
        a.docs().borrow(key).unwrap();
        eventually("B sees A- borrow", || {
            b.docs().meta(key).unwrap().holder == a.db.replica()
        });
        match b.docs().update(key, |d| d.votes = 1) {
            Err(Error::NotBorrowed { holder, .. }) => assert_eq!(holder, a.db.replica()),
            other => panic!("a borrowed record must not be edited by others: {other:?}"),
        }
        a.offline();
        a.docs().update(key, |d| d.title = "A-".into()).unwrap();
        // Through the running server's admin socket, as `rekord-server borrow force-return`.
        let reply = rekord_server::admin::request(
            &data,
            &rekord_server::AdminRequest::ForceReturn {
                tree: "docs".into(),
                id: key.id(),
            },
        )
        .unwrap();
        assert!(reply.is_some(), "the server answers on its admin socket");
        eventually("B sees the forced return", || {
            b.docs().meta(key).unwrap().holder == 0
        });
        b.docs().update(key, |d| d.body = "B-".into()).unwrap();
        b.db.wait_pushed(LIMIT).unwrap();
        a.online();
        let v = converged(&[&a, &b], key);
        assert_eq!(v, doc("A-", "B-", 0), "neither edit is lost");
        assert_eq!(a.conflicts().len(), 1);
        assert_eq!(a.db.sync_status().unwrap().rejected, 0);
    })
    .await
    .unwrap();
    server.stop().await;
}

/// Three replicas edit the same records offline; they reconnect in every possible order
/// (three-way merge), or with the latest editor first, second and last (last-write-wins).
/// Whatever the order: every replica ends identical; with three-way merge each replica's
/// field holds its last edit; with last-write-wins the record holds the edit made last
/// (by hybrid logical clock), not the one delivered last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_converge_whatever_the_order_of_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for merge in [Merge::three_way(), Merge::last_write_wins()] {
        let three_way = merge.name() == "three-way";
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(Client::start(&server, &token, merge.clone()).await);
        }
        let clients = tokio::task::spawn_blocking(move || {
            // Last-write-wins: the latest edit's replica (2) reconnects first, second or last.
            let lww_orders = [[2, 0, 1], [0, 2, 1], [0, 1, 2]];
            let orders: &[[usize; 3]] = if three_way { &orders } else { &lww_orders };
            for &order in orders {
                let key = create(&clients[0].docs(), &doc("t", "b", 0));
                clients[0].db.wait_pushed(LIMIT).unwrap();
                for c in &clients {
                    eventually("every replica has the doc", || c.docs().get(key).is_ok());
                }
                // All three go offline together (each notices within its idle timeout).
                for c in &clients {
                    c.proxy.block(true);
                }
                for c in &clients {
                    c.offline();
                }
                // Each replica edits twice, in turn (so the clocks order the edits).
                for round in 0..2 {
                    for (i, c) in clients.iter().enumerate() {
                        let text = format!("r{i}e{round}");
                        c.docs()
                            .update(key, |d| match (three_way, i) {
                                (true, 0) => d.title = text,
                                (true, 1) => d.body = text,
                                (true, _) => d.votes = 10 + round,
                                (false, _) => d.title = text,
                            })
                            .unwrap();
                        std::thread::sleep(Duration::from_millis(3));
                    }
                }
                for &i in &order {
                    clients[i].online();
                }
                let refs: Vec<&Client> = clients.iter().collect();
                let v = converged(&refs, key);
                if three_way {
                    assert_eq!(v, doc("r0e1", "r1e1", 11), "order {order:?}");
                } else {
                    assert_eq!(v.title, "r2e1", "order {order:?}: the latest edit wins");
                }
                for c in &clients {
                    c.conflicts();
                }
            }
            clients
        })
        .await
        .unwrap();
        drop(clients);
    }
    server.stop().await;
}

/// `merge = "..."` on the record type makes its tree optimistic without any configuration:
/// edits need no borrow, and the type's strategy (here: larger `points` wins) merges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_record_types_merge_attribute_makes_its_tree_optimistic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    // The configured strategy is for another tree.
    let a = Client::start(&server, &token, Merge::remote_wins()).await;
    let b = Client::start(&server, &token, Merge::remote_wins()).await;
    tokio::task::spawn_blocking(move || {
        let (sa, sb) = (a.db.tree::<Score>().unwrap(), b.db.tree::<Score>().unwrap());
        let key = {
            let start = Instant::now();
            loop {
                match sa.create(&Score {
                    name: "x".into(),
                    points: 1,
                }) {
                    Ok(k) => break k,
                    Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        assert_eq!(sa.meta(key).unwrap().holder, 0, "nobody borrows it");
        a.db.wait_pushed(LIMIT).unwrap();
        eventually("B sees the score", || sb.get(key).is_ok());
        a.offline();
        sa.update(key, |s| s.points = 50).unwrap();
        sb.update(key, |s| s.points = 20).unwrap();
        b.db.wait_pushed(LIMIT).unwrap();
        a.online();
        eventually("both hold the larger score", || {
            sb.get(key).is_ok_and(|s| s.points == 50) && sa.get(key).is_ok_and(|s| s.points == 50)
        });
        let c = a.conflicts();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].strategy, "larger-wins(points)");
        assert_eq!(c[0].winner, Winner::Mine);
    })
    .await
    .unwrap();
    server.stop().await;
}
