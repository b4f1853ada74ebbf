//! Answers and merges that outgrow the wire limits in optimistic trees (found by a red
//! team, issue 11): the conflicts a run of small entries provokes are answered within one
//! frame (the rest skipped and resent), so the outbox drains; a merge whose result is over
//! `MAX_RECORD` is set aside and reported, and the replicas converge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "common/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use common::{APP, Running};
use proxy::{Faults, Proxy};
use rekord::{Db, Key, Merge, Retry, SyncConfig, SyncEvent};

#[rekord::record(tree = "docs", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub title: String,
    pub body: String,
    pub votes: u32,
}

const LIMIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

struct Client {
    db: Db,
    proxy: Proxy,
    sub: rekord::Subscription,
}

impl Client {
    async fn start(server: &Running, token: &str) -> Client {
        let proxy = Proxy::start(server.addr, 7, Faults::NONE).await;
        let config = SyncConfig::new(proxy.addr, APP, token)
            .retry(
                Retry::default()
                    .initial(Duration::from_millis(20))
                    .max(Duration::from_millis(200)),
            )
            .timeout(Duration::from_secs(5))
            .optimistic("docs", Merge::three_way());
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
        eventually("offline", || !self.db.sync_status().unwrap().online);
    }
    fn events(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = self.sub.try_next() {
            if let Some(s) = e.as_sync() {
                match s {
                    SyncEvent::Rejected { .. } | SyncEvent::Conflict(_) => {
                        out.push(format!("{s:?}").chars().take(300).collect())
                    }
                    _ => {}
                }
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

fn doc(n: u32) -> Doc {
    Doc {
        title: format!("t{n}"),
        body: String::new(),
        votes: 0,
    }
}

/// Three small offline edits (three outbox entries, one run) of three records that another
/// replica grew to 6 MiB each: the server answers the run with three conflicts, each
/// carrying the 6 MiB current data: an 18 MiB `Response::Entries`, over `MAX_FRAME`. The
/// server cannot encode it (End::Internal, connection dropped), the client sends the same
/// run again after reconnecting, for ever: the outbox never drained. Now the server answers
/// the conflicts that fit and skips the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicts_of_one_run_outgrow_a_frame_and_the_outbox_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    let a = Client::start(&server, &token).await;
    let b = Client::start(&server, &token).await;
    tokio::task::spawn_blocking(move || {
        let keys: Vec<Key<Doc>> = (0..3).map(|n| a.docs().create(&doc(n)).unwrap()).collect();
        a.db.wait_pushed(LIMIT).unwrap();
        eventually("b sees the docs", || {
            keys.iter().all(|k| b.docs().get(*k).is_ok())
        });
        a.offline();
        for k in &keys {
            a.docs().update(*k, |d| d.votes = 1).unwrap();
        }
        for k in &keys {
            b.docs()
                .update(*k, |d| d.body = "x".repeat(6 * MIB))
                .unwrap();
        }
        b.db.wait_pushed(LIMIT).unwrap();
        a.proxy.block(false);
        let pushed = a.db.wait_pushed(Duration::from_secs(30));
        let status = a.db.sync_status().unwrap();
        let events = a.events();
        assert!(
            pushed.is_ok() && status.outbox == 0,
            "a's outbox never drains: {pushed:?}; outbox {}, last error {:?}; events {events:?}",
            status.outbox,
            status.last_error
        );
        for k in &keys {
            let v = a.docs().get(*k).unwrap();
            assert_eq!((v.body.len(), v.votes), (6 * MIB, 1));
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

/// A three-way merge of two edits, each under MAX_RECORD, whose union is over it (5 MiB in
/// `title` here, 5 MiB in `body` there): what happens to the merged entry?
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_that_grows_past_max_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(dir.path());
    let token = server.token("all");
    let a = Client::start(&server, &token).await;
    let b = Client::start(&server, &token).await;
    tokio::task::spawn_blocking(move || {
        let k = a.docs().create(&doc(0)).unwrap();
        a.db.wait_pushed(LIMIT).unwrap();
        eventually("b sees the doc", || b.docs().get(k).is_ok());
        a.offline();
        a.docs().update(k, |d| d.title = "a".repeat(5 * MIB)).unwrap();
        b.docs().update(k, |d| d.body = "b".repeat(5 * MIB)).unwrap();
        b.db.wait_pushed(LIMIT).unwrap();
        a.proxy.block(false);
        let pushed = a.db.wait_pushed(Duration::from_secs(30));
        let status = a.db.sync_status().unwrap();
        let events = a.events();
        let (va, vb) = (a.docs().get(k).unwrap(), b.docs().get(k).unwrap());
        eprintln!(
            "pushed {pushed:?}; outbox {}; last error {:?}; events {events:?}; a: title {} body {}; b: title {} body {}",
            status.outbox,
            status.last_error,
            va.title.len(),
            va.body.len(),
            vb.title.len(),
            vb.body.len()
        );
        assert!(pushed.is_ok() && status.outbox == 0, "a's outbox stalls");
        eventually("convergence", || {
            let (va, vb) = (a.docs().get(k).unwrap(), b.docs().get(k).unwrap());
            va == vb
        });
    })
    .await
    .unwrap();
    server.stop().await;
}
