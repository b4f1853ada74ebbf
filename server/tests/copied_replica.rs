//! Two copies of one replica's file (a copy made while its application was stopped, used by
//! a viewer or a second process with the same token) number their outbox entries the same.
//! The server must not take one copy's change for a retry of the other's (and answer it
//! with the first one's outcome, a silent divergence): the second is refused, reported and
//! undone, and every replica ends with the server's value. A red team found the divergence
//! (issue 13).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rekord::{Db, Event, SyncConfig, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, token};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(30);

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token).timeout(Duration::from_secs(10))
}

fn converges(parts: &rekord::Tree<Part>, key: rekord::Key<Part>, want: &Part) {
    let start = std::time::Instant::now();
    while &parts.get(key).unwrap() != want {
        assert!(
            start.elapsed() < LIMIT,
            "never converged: {:?} instead of {want:?}",
            parts.get(key).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_copy_of_a_replica_file_cannot_make_it_diverge_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let original = tmp.path().join("app.rekord");
    let key = {
        let db = Db::open_synced(&original, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let k = db
            .tree::<Part>()
            .unwrap()
            .create(&Part {
                name: "bolt".into(),
                qty: 1,
            })
            .unwrap();
        db.wait_pushed(LIMIT).unwrap();
        k
    };
    // The copy (what a user copies to look at the data while the application runs).
    let copy = tmp.path().join("copy.rekord");
    std::fs::copy(&original, &copy).unwrap();
    let from_copy = Part {
        name: "from the copy".into(),
        qty: 5,
    };
    {
        let db = Db::open_synced(&copy, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        db.tree::<Part>().unwrap().replace(key, &from_copy).unwrap();
        db.wait_pushed(LIMIT).unwrap();
    }
    // The application, back on its own file, changes the record (it still holds it): its
    // outbox entry has the number the copy's had.
    let db = Db::open_synced(&original, config(server.addr, &token)).unwrap();
    let events = db.subscribe();
    db.wait_caught_up(LIMIT).unwrap();
    let parts = db.tree::<Part>().unwrap();
    parts
        .replace(
            key,
            &Part {
                name: "from the application".into(),
                qty: 2,
            },
        )
        .unwrap();
    db.wait_pushed(LIMIT).unwrap();
    // Refused and reported, not taken for the copy's retry...
    let start = std::time::Instant::now();
    let reason = loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Some(Event::Sync(SyncEvent::Rejected { reason, .. })) => break reason,
            _ => assert!(start.elapsed() < LIMIT, "no rejection reported"),
        }
    };
    assert!(reason.contains("copy"), "{reason}");
    assert!(db.sync_status().unwrap().rejected >= 1);
    // ...and undone: the application holds what the server holds, as a fresh replica sees.
    converges(&parts, key, &from_copy);
    let fresh = Db::memory_synced(config(server.addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    assert_eq!(fresh.tree::<Part>().unwrap().get(key).unwrap(), from_copy);
    // The application goes on: its next changes are numbered past the copy's.
    let last = Part {
        name: "later".into(),
        qty: 3,
    };
    parts.replace(key, &last).unwrap();
    db.wait_pushed(LIMIT).unwrap();
    let fresh_parts = fresh.tree::<Part>().unwrap();
    converges(&fresh_parts, key, &last);
    drop((parts, db, fresh_parts, fresh));
    server.kill();
}
