//! Two copies of one replica's file (a copy made while its application was stopped, used by
//! a viewer or a second process with the same token) number their outbox entries the same.
//! The server must not take one copy's change for a retry of the other's (and answer it
//! with the first one's outcome, a silent divergence), and a copy older than the other must
//! not skip the other's changes as its own: the older one is refused at the hello, and a
//! change one copy sends under a number the other used is refused, reported and undone.
//! A red team found the divergence (issue 13).
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

/// A server, an application's replica file with one record pushed, and a copy of the file.
struct Copied {
    _tmp: tempfile::TempDir,
    server: ServerProcess,
    token: String,
    original: std::path::PathBuf,
    copy: std::path::PathBuf,
    key: rekord::Key<Part>,
}

impl Copied {
    fn make() -> Copied {
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
        let copy = tmp.path().join("copy.rekord");
        std::fs::copy(&original, &copy).unwrap();
        Copied {
            _tmp: tmp,
            server,
            token,
            original,
            copy,
            key,
        }
    }
}

#[test]
fn a_copy_of_a_replica_file_cannot_make_it_diverge_silently() {
    // The copy (what a user copies to look at the data while the application runs).
    let Copied {
        _tmp,
        server,
        token,
        original,
        copy,
        key,
    } = Copied::make();
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
    // The application, back on its own file: older than the copy now, refused at the
    // hello (it would skip the copy's change as its own, and number its changes like it).
    let db = Db::open_synced(&original, config(server.addr, &token)).unwrap();
    let err = db.wait_caught_up(LIMIT).unwrap_err();
    assert!(err.to_string().contains("older copy"), "{err}");
    assert!(
        db.sync_status()
            .unwrap()
            .refused
            .is_some_and(|r| r.contains("older copy"))
    );
    let fresh = Db::memory_synced(config(server.addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    assert_eq!(fresh.tree::<Part>().unwrap().get(key).unwrap(), from_copy);
    drop((db, fresh));
    server.kill();
}

/// The copy and the original online at once: the copy writes first under the next entry
/// number; the original's change under the same number is not taken for a retry of the
/// copy's (and answered with its outcome): it is refused, reported and undone, and the
/// original ends with the server's value.
#[test]
fn two_copies_online_at_once_cannot_answer_for_each_other() {
    // The copy (what a user copies to look at the data while the application runs).
    let Copied {
        _tmp,
        server,
        token,
        original,
        copy,
        key,
    } = Copied::make();
    let db = Db::open_synced(&original, config(server.addr, &token)).unwrap();
    let events = db.subscribe();
    db.wait_caught_up(LIMIT).unwrap();
    let from_copy = Part {
        name: "from the copy".into(),
        qty: 5,
    };
    {
        let c = Db::open_synced(&copy, config(server.addr, &token)).unwrap();
        c.wait_caught_up(LIMIT).unwrap();
        c.tree::<Part>().unwrap().replace(key, &from_copy).unwrap();
        c.wait_pushed(LIMIT).unwrap();
    }
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
    let start = std::time::Instant::now();
    let reason = loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Some(Event::Sync(SyncEvent::Rejected { reason, .. })) => break reason,
            _ => assert!(start.elapsed() < LIMIT, "no rejection reported"),
        }
    };
    assert!(reason.contains("copy"), "{reason}");
    assert!(db.sync_status().unwrap().rejected >= 1);
    converges(&parts, key, &from_copy);
    let fresh = Db::memory_synced(config(server.addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    assert_eq!(fresh.tree::<Part>().unwrap().get(key).unwrap(), from_copy);
    drop((parts, db, fresh));
    server.kill();
}
