//! The built-in driver of the sync engine (`rekord::sync::driver`, on each synced database's
//! sync thread) against a real server: what it opens it closes, and time spent blocked
//! inside the client counts as time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use rekord::{Db, Error, Event, Key, SyncConfig, SyncEvent};

const APP: &str = "workshop";
const LIMIT: Duration = Duration::from_secs(60);

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

#[rekord::record(tree = "tools", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
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
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LIMIT, "not within {LIMIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn caught_up(db: &Db) -> bool {
    db.sync_status()
        .is_some_and(|s| s.online && s.caught_up && s.outbox == 0)
}

async fn create(parts: &rekord::Tree<Part>, name: &str) -> Key<Part> {
    let start = Instant::now();
    loop {
        match parts.create(&Part {
            name: name.into(),
            qty: 1,
        }) {
            Ok(k) => return k,
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

/// A replica whose subscription gained a tree first catches that tree up in a session of
/// its own, then goes on in another: the first one's stream ends (the server's session
/// with it), and closing the database ends the second. Before the driver stopped a closed
/// connection's reader, each such session stayed open on both sides until the database
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_the_client_is_done_with_end() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("server"));
    let path = dir.path().join("a.rekord");

    let db = Db::open_synced(&path, served.config().trees(["parts"])).unwrap();
    until("A caught up", || caught_up(&db)).await;
    let parts = db.tree::<Part>().unwrap();
    create(&parts, "bolt").await;
    until("A's bolt sent", || caught_up(&db)).await;
    drop(parts);
    drop(db);
    until("no stream alive after A closed", || served.alive() == 0).await;

    // A tool made by another replica, in the tree A gains next.
    let other = Db::open_synced(dir.path().join("b.rekord"), served.config()).unwrap();
    until("B caught up", || caught_up(&other)).await;
    let tools = other.tree::<Tool>().unwrap();
    let hammer = loop {
        match tools.create(&Tool {
            name: "hammer".into(),
        }) {
            Ok(k) => break k,
            Err(Error::IdsExhausted) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => panic!("{e}"),
        }
    };
    until("B's hammer sent", || caught_up(&other)).await;
    drop(tools);
    drop(other);
    until("no stream alive after B closed", || served.alive() == 0).await;

    let opened = served.opened();
    let db = Db::open_synced(&path, served.config().trees(["parts", "tools"])).unwrap();
    let tools = db.tree::<Tool>().unwrap();
    until("A has the hammer", || tools.get(hammer).is_ok()).await;
    until("A caught up again", || caught_up(&db)).await;
    assert!(
        served.opened() >= opened + 2,
        "the backfill and the session after it: {} streams",
        served.opened() - opened
    );
    until("only the session's stream alive", || served.alive() == 1).await;
    drop(tools);
    drop(db);
    until("no stream alive after A closed again", || {
        served.alive() == 0
    })
    .await;
    served.stop().await;
}

/// The sync thread blocks inside the client (here on a write batch the application holds
/// for longer than the request timeout, which the client waits for before it sends): the
/// request it sends after is still given its whole timeout. With the engine's clock behind
/// the machine's, the request's deadline had passed before it was sent, and every such
/// block cost the session (a reconnect, `Disconnected`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_blocked_inside_the_client_does_not_cut_its_next_request_short() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("server"));
    let timeout = Duration::from_millis(600);
    let db = Db::open_synced(
        dir.path().join("a.rekord"),
        served.config().timeout(timeout),
    )
    .unwrap();
    let events = db.subscribe();
    until("caught up", || caught_up(&db)).await;
    let parts = db.tree::<Part>().unwrap();
    create(&parts, "first").await;
    until("the first create sent", || caught_up(&db)).await;
    let opened = served.opened();

    for round in 0..3 {
        // A commit wakes the client, and the application takes the writer right after
        // for longer than the timeout: the client's flush waits for it.
        let db2 = db.clone();
        let holder = std::thread::spawn(move || {
            let parts = db2.tree::<Part>().unwrap();
            parts
                .create(&Part {
                    name: format!("round {round}"),
                    qty: 1,
                })
                .unwrap();
            db2.write(|_| {
                std::thread::sleep(timeout * 2);
                Ok(())
            })
            .unwrap();
        });
        tokio::task::spawn_blocking(move || holder.join().unwrap())
            .await
            .unwrap();
        until("the round's create sent", || caught_up(&db)).await;
    }
    assert_eq!(
        served.opened(),
        opened,
        "no reconnect: {:?}",
        db.sync_status()
    );
    let mut disconnects = 0;
    for event in events.try_iter() {
        if matches!(event, Event::Sync(SyncEvent::Disconnected { .. })) {
            disconnects += 1;
        }
    }
    assert_eq!(disconnects, 0);
    drop(parts);
    drop(db);
    served.stop().await;
}
