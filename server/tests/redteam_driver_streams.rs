//! Red team of the built-in sync driver with in-process streams it can count: streams that
//! stop carrying bytes (both ways, or only the client's writes) make the client give up on
//! them and connect again, many times; each stream given up ends (no reader or writer task
//! keeps it), closing the database ends the last one within a bound, and every write
//! reaches the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rekord::{Db, Error, SyncConfig};

const APP: &str = "workshop";
const LIMIT: Duration = Duration::from_secs(60);

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

#[path = "common/local.rs"]
mod local;

use local::{Counting, InProcess};

type Served = InProcess<Counting>;

fn serve(dir: &std::path::Path) -> Served {
    local::serve(dir, APP, Counting::new)
}

impl Served {
    fn config(&self) -> SyncConfig {
        self.base_config()
            .timeout(Duration::from_millis(600))
            .idle_timeout(Duration::from_millis(400))
            .retry(
                rekord::Retry::default()
                    .initial(Duration::from_millis(10))
                    .max(Duration::from_millis(50)),
            )
    }
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn caught_up(db: &Db) -> bool {
    db.sync_status()
        .is_some_and(|s| s.online && s.caught_up && s.outbox == 0)
}

async fn create(parts: &rekord::Tree<Part>, name: &str) {
    let start = Instant::now();
    loop {
        match parts.create(&Part {
            name: name.into(),
            qty: 1,
        }) {
            Ok(_) => return,
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

/// Closes `db` on a blocking thread, failing if it takes longer than `limit`.
async fn close_bounded(db: Db, limit: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(limit, tokio::task::spawn_blocking(move || drop(db)))
        .await
        .expect("closing the database hangs")
        .unwrap();
    start.elapsed()
}

async fn stalled_streams_are_given_up_and_end(mode: usize) {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("server"));
    served.connector.mode.store(mode, Ordering::SeqCst);
    let db = Db::open_synced(dir.path().join("a.rekord"), served.config()).unwrap();
    until("caught up", LIMIT, || caught_up(&db)).await;
    let parts = db.tree::<Part>().unwrap();
    let mut most_alive = 0;
    for round in 0..15 {
        let opened = served.opened();
        served.stall_all();
        create(&parts, &format!("r{round}")).await;
        // The client gives up on the stalled stream and connects again.
        let start = Instant::now();
        while !(served.opened() > opened && caught_up(&db)) {
            most_alive = most_alive.max(served.alive());
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "round {round}: no new session in 20 s: {:?}",
                db.sync_status()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        until(
            &format!(
                "round {round}: only the new stream alive ({} alive)",
                served.alive()
            ),
            Duration::from_secs(5),
            || served.alive() == 1,
        )
        .await;
    }
    eprintln!(
        "mode {mode}: {} streams opened, at most {most_alive} alive at once",
        served.opened()
    );
    assert!(most_alive <= 2, "{most_alive} streams alive at once");
    // One more stall, and the database closes while its stream carries nothing.
    served.stall_all();
    create(&parts, "last").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(parts);
    let took = close_bounded(db, Duration::from_secs(10)).await;
    eprintln!("mode {mode}: close over a stalled stream took {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    until(
        "no stream alive after the close",
        Duration::from_secs(5),
        || served.alive() == 0,
    )
    .await;
    // Everything reached the server.
    served.connector.stall_below.store(0, Ordering::SeqCst);
    let db = Db::open_synced(dir.path().join("a.rekord"), served.config()).unwrap();
    until("A's last write sent", LIMIT, || caught_up(&db)).await;
    let fresh = Db::open_synced(dir.path().join("b.rekord"), served.config()).unwrap();
    until("B caught up", LIMIT, || caught_up(&fresh)).await;
    let parts = fresh.tree::<Part>().unwrap();
    let mut names: Vec<String> = parts
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| parts.get(k).unwrap().name)
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..15).map(|r| format!("r{r}")).collect();
    want.push("last".into());
    want.sort();
    assert_eq!(names, want);
    drop(parts);
    close_bounded(db, Duration::from_secs(10)).await;
    close_bounded(fresh, Duration::from_secs(10)).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_carry_nothing_are_given_up_and_end() {
    stalled_streams_are_given_up_and_end(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_take_no_writes_are_given_up_and_end() {
    stalled_streams_are_given_up_and_end(1).await;
}
