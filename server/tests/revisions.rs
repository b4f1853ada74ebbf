//! A removed draft revision does not block its record (issue 11): after `remove` of a new
//! revision, `new_revision` makes it again, standalone and synced alike, and the server
//! accepts it (it refused it before, the resync deleted it here, and every retry repeated).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rekord::{Db, Event, Key, Retry, SyncConfig, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{APP, ServerProcess, token};

#[rekord::record(tree = "docs", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub text: String,
}

const LIMIT: Duration = Duration::from_secs(30);

/// The steps of the issue, on `db`; the key of the revision made last.
fn remove_and_remake(db: &Db, rounds: u32) -> Key<Doc> {
    let docs = db.tree::<Doc>().unwrap();
    let k = docs.create(&Doc { text: "v0".into() }).unwrap();
    docs.release(k).unwrap();
    let mut last = k;
    for round in 0..rounds {
        let r1 = docs.new_revision(k).unwrap();
        if db.sync_status().is_some() {
            db.wait_pushed(LIMIT).unwrap();
        }
        docs.remove(r1).unwrap();
        if db.sync_status().is_some() {
            db.wait_pushed(LIMIT).unwrap();
        }
        let again = docs.new_revision(k).unwrap();
        assert_eq!(again.rev(), r1.rev(), "the removed number is made again");
        docs.update(again, |d| d.text = format!("remade {round}"))
            .unwrap();
        docs.release(again).unwrap();
        if db.sync_status().is_some() {
            db.wait_pushed(LIMIT).unwrap();
        }
        last = again;
    }
    last
}

#[test]
fn a_removed_draft_revision_is_made_again_standalone_and_synced_alike() {
    let standalone = Db::memory().unwrap();
    let ks = remove_and_remake(&standalone, 4);

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let cfg = SyncConfig::new(server.addr, APP, &token).retry(
        Retry::default()
            .initial(Duration::from_millis(20))
            .max(Duration::from_millis(200)),
    );
    let db = Db::memory_synced(cfg.clone()).unwrap();
    let events = db.subscribe();
    db.wait_caught_up(LIMIT).unwrap();
    let k = remove_and_remake(&db, 4);
    assert_eq!(k.rev(), ks.rev(), "the same revision number as standalone");
    let rejected: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::Sync(SyncEvent::Rejected { reason, .. }) => Some(reason),
            _ => None,
        })
        .collect();
    assert!(rejected.is_empty(), "the server refused: {rejected:?}");
    let docs = db.tree::<Doc>().unwrap();
    assert_eq!(docs.get(k).unwrap().text, "remade 3");
    // A fresh replica holds the same.
    let fresh = Db::memory_synced(cfg).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    let theirs = fresh.tree::<Doc>().unwrap();
    assert_eq!(theirs.get(k).unwrap().text, "remade 3");
    assert_eq!(theirs.latest(k.id()).unwrap(), Some(k));
    drop((docs, theirs, db, fresh));
    server.kill();
}
