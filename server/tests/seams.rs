//! Seams of synced databases against a real `rekord-server` process: dropping the last
//! handle closes the file at once (an immediate reopen works, nothing acknowledged is
//! queued again), a refusal is reported at once and as a refusal (not as an outage after
//! the whole timeout), write-through refusals carry the server's reason, and a subscription
//! made at open sees the very first event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rekord::{Db, Error, Event, SyncEvent, WriteMode};

#[path = "common/process.rs"]
mod process;
use process::{BIN, ServerProcess, config, token};

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

const LIMIT: Duration = Duration::from_secs(30);

/// Runs the server's CLI on `data`; its standard output.
fn cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn dropping_the_last_handle_closes_the_file_before_the_drop_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let path = tmp.path().join("replica.rekord");
    let mut key = None;
    for round in 0..20u32 {
        // Opens right after the previous round dropped its handles: no "already open".
        let db = Db::open_synced(&path, config(server.addr, &token))
            .unwrap_or_else(|e| panic!("round {round}: reopening at once failed: {e}"));
        assert_eq!(
            db.sync_status().unwrap().outbox,
            0,
            "round {round}: entries the server acknowledged are queued again"
        );
        let parts = db.tree::<Part>().unwrap();
        let k = match key {
            None => {
                db.wait_caught_up(LIMIT).unwrap();
                parts
                    .create(&Part {
                        name: "bolt".into(),
                        qty: 0,
                    })
                    .unwrap()
            }
            Some(k) => k,
        };
        key = Some(k);
        parts.update(k, |p| p.qty = round).unwrap();
        db.wait_pushed(LIMIT).unwrap();
        if round % 2 == 1 {
            // A tree handle outliving the `Db` keeps the database open and working.
            drop(db);
            assert_eq!(parts.get(k).unwrap().qty, round);
            assert!(Db::open_synced(&path, config(server.addr, &token)).is_err());
        } else {
            drop(db);
        }
        drop(parts);
    }
    // What the server acknowledged reached it and stays here.
    let db = Db::open_synced(&path, config(server.addr, &token)).unwrap();
    assert_eq!(
        db.tree::<Part>().unwrap().get(key.unwrap()).unwrap().qty,
        19
    );
    drop(db);
    server.kill();
}

/// Fails if `f` takes more than a few seconds (the waits below are given 30).
fn at_once<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let r = f();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{what} took {:?}: a refusal must be reported at once",
        start.elapsed()
    );
    r
}

fn assert_refused<T: std::fmt::Debug>(what: &str, r: rekord::Result<T>, needle: &str) {
    match r {
        Err(Error::Refused { reason, .. }) => {
            assert!(
                reason.contains(needle),
                "{what}: {reason:?} lacks {needle:?}"
            )
        }
        other => panic!("{what}: expected Error::Refused, got {other:?}"),
    }
}

#[test]
fn a_refused_client_hears_it_at_once_from_every_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let _all = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let bob = cli(
        &data,
        &[
            "token",
            "issue",
            "--name",
            "bob",
            "--read-all",
            "--write-all",
        ],
    );

    // An unknown token: refused, at once, from `wait_caught_up`.
    let stranger = Db::memory_synced(config(server.addr, "rk1_not_a_token")).unwrap();
    let r = at_once("wait_caught_up", || stranger.wait_caught_up(LIMIT));
    assert_refused("unknown token", r, "token");
    assert!(stranger.sync_status().unwrap().refused.is_some());

    // Another application: refused too.
    let mut other = config(server.addr, &bob);
    other.app = "another-app".into();
    let other = Db::memory_synced(other).unwrap();
    let r = at_once("wait_caught_up", || other.wait_caught_up(LIMIT));
    assert_refused("another application", r, "another-app");

    // A client that worked, whose token is then revoked: every wait and every call that
    // needs the server says it is refused.
    let path = tmp.path().join("bob.rekord");
    let db = Db::open_synced(&path, config(server.addr, &bob)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let k = parts
        .create(&Part {
            name: "bolt".into(),
            qty: 1,
        })
        .unwrap();
    // A second record, returned: borrowing it again needs the server.
    let k2 = parts
        .create(&Part {
            name: "nut".into(),
            qty: 1,
        })
        .unwrap();
    parts.return_borrow(k2).unwrap();
    db.wait_pushed(LIMIT).unwrap();
    drop(parts);
    drop(db);
    cli(&data, &["token", "revoke", "bob"]);
    let cfg = config(server.addr, &bob).tree_write_mode("notes", WriteMode::Through);
    let db = Db::open_synced(&path, cfg).unwrap();
    let parts = db.tree::<Part>().unwrap();
    assert_refused(
        "wait_caught_up",
        at_once("wait_caught_up", || db.wait_caught_up(LIMIT)),
        "token",
    );
    parts.update(k, |p| p.qty = 2).unwrap(); // local, queued
    assert_refused(
        "wait_pushed",
        at_once("wait_pushed", || db.wait_pushed(LIMIT)),
        "token",
    );
    assert_refused("borrow", at_once("borrow", || parts.borrow(k2)), "token");
    let notes = db.tree::<Note>().unwrap();
    assert_refused(
        "write-through create",
        at_once("write-through", || {
            notes.create(&Note {
                text: "hello".into(),
            })
        }),
        "token",
    );
    assert!(notes.keys().unwrap().is_empty(), "nothing changed");
    drop((parts, notes, db));
    server.kill();
}

#[test]
fn a_refused_write_through_write_carries_the_servers_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let _all = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    // May read everything but write only `parts`.
    let carol = cli(
        &data,
        &[
            "token",
            "issue",
            "--name",
            "carol",
            "--read-all",
            "--write",
            "parts",
        ],
    );
    let cfg = config(server.addr, &carol).write_mode(WriteMode::Through);
    let db = Db::memory_synced(cfg).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let notes = db.tree::<Note>().unwrap();
    let r = notes.create(&Note { text: "x".into() });
    match r {
        Err(Error::Refused { reason, .. }) => {
            assert!(
                reason.contains("notes") && reason.contains("undone"),
                "the reason names the tree and what happened here: {reason}"
            );
            assert!(
                !reason.contains("see SyncEvent::Rejected"),
                "the reason is the server's, not a pointer elsewhere: {reason}"
            );
        }
        other => panic!("expected Error::Refused, got {other:?}"),
    }
    assert!(
        notes.keys().unwrap().is_empty(),
        "the local change was undone"
    );
    drop((notes, db));
    server.kill();
}

#[test]
fn a_subscription_made_at_open_sees_the_first_event() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let path = tmp.path().join("r.rekord");
    // A record to catch up on.
    {
        let db = Db::open_synced(tmp.path().join("w.rekord"), config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        db.tree::<Part>()
            .unwrap()
            .create(&Part {
                name: "nut".into(),
                qty: 3,
            })
            .unwrap();
        db.wait_pushed(LIMIT).unwrap();
    }
    let (db, events) = Db::open_synced_subscribed(&path, config(server.addr, &token)).unwrap();
    let first = events
        .recv_timeout(LIMIT)
        .expect("an event within the limit");
    assert!(
        matches!(first, Event::Sync(SyncEvent::Connected { .. })),
        "the first event is the connection: {first:?}"
    );
    // Then the catch-up's record, then CaughtUp.
    let mut created = false;
    loop {
        match events.recv_timeout(LIMIT).expect("catch-up events") {
            Event::Record(r) if &*r.tree == "parts" => created = true,
            Event::Sync(SyncEvent::CaughtUp { .. }) => break,
            _ => {}
        }
    }
    assert!(created, "the catch-up's change was seen");
    // `recv_timeout` returns when nothing comes.
    let start = Instant::now();
    assert!(events.recv_timeout(Duration::from_millis(200)).is_none());
    assert!(start.elapsed() >= Duration::from_millis(200));
    drop(db);
    server.kill();
}

const FOREIGN_CHILD: &str = "REKORD_FOREIGN_CHILD";

/// Entry point of a child process (a no-op in a normal test run): another application
/// writes a redb file and dies without closing it (the file then needs recovery).
#[test]
fn foreign_writer_child() {
    let Ok(path) = std::env::var(FOREIGN_CHILD) else {
        return;
    };
    const T: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("accounts");
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(T).unwrap();
        for i in 0..100u64 {
            t.insert(format!("acct{i}").as_str(), i).unwrap();
        }
    }
    txn.commit().unwrap();
    let mut txn = db.begin_write().unwrap();
    txn.set_durability(redb::Durability::None).unwrap();
    txn.open_table(T).unwrap().insert("late", 7).unwrap();
    txn.commit().unwrap();
    std::process::abort();
}

/// Found by the red team: a foreign file that needs recovery was repaired in place before
/// it was refused. It must be refused byte for byte untouched, by both opens.
#[test]
fn an_unclean_file_of_another_application_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("other-app.redb");
    let status = process::child("foreign_writer_child", FOREIGN_CHILD, &path)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child dies without closing the file");
    let before = std::fs::read(&path).unwrap();
    let r = Db::open(&path);
    assert!(matches!(r, Err(Error::NotRekord { .. })), "{r:?}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "Db::open changed the file"
    );
    let r = Db::open_synced(&path, config("127.0.0.1:9".parse().unwrap(), "rk1_x"));
    assert!(matches!(r, Err(Error::NotRekord { .. })), "{r:?}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "Db::open_synced changed the file"
    );
}

/// Issue 11: `Error::Offline` from a write-through write meant both "not written" and
/// "written here and queued". A write the server does not confirm in time (here: the server
/// process is stopped with SIGSTOP while the client still thinks it is connected) is
/// `Error::Unconfirmed`, stands locally, and reaches the server once it runs again.
#[test]
fn an_unconfirmed_write_through_write_is_not_called_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let cfg = config(server.addr, &token)
        .write_mode(WriteMode::Through)
        .timeout(Duration::from_secs(1))
        .idle_timeout(Duration::from_secs(30));
    let db = Db::memory_synced(cfg).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &server.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let r = parts.create(&Part {
        name: "queued".into(),
        qty: 1,
    });
    signal("-CONT");
    assert!(matches!(r, Err(Error::Unconfirmed { .. })), "{r:?}");
    // Written here, and sent once the server answers again.
    let keys = parts.keys().unwrap();
    assert_eq!(keys.len(), 1, "the unconfirmed write stands locally");
    db.wait_pushed(LIMIT).unwrap();
    let fresh = Db::memory_synced(config(server.addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    assert_eq!(
        fresh.tree::<Part>().unwrap().get(keys[0]).unwrap().name,
        "queued"
    );
    drop((parts, db, fresh));
    server.kill();
}

/// Issue 11: ids do not run out while online. With tiny ranges, single creates fetch what
/// they need, and a batch of many creates succeeds in one `Db::write` call (it fetches ids
/// and runs the batch again).
#[test]
fn ids_do_not_run_out_while_online() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let db = Db::memory_synced(config(server.addr, &token).range_size(4)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let parts = db.tree::<Part>().unwrap();
    for i in 0..200 {
        parts
            .create(&Part {
                name: format!("p{i}"),
                qty: i,
            })
            .unwrap_or_else(|e| panic!("create {i} while online: {e}"));
    }
    // Ranges of 4 ids, a batch of 500: `Db::write` fetches ids and runs the batch again
    // until it has enough, within the sync timeout; the caller sees one success.
    let mut runs = 0;
    db.write(|b| {
        runs += 1;
        for i in 0..500 {
            b.create(&Part {
                name: format!("b{i}"),
                qty: i,
            })?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("a batch of 500 creates while online: {e}"));
    eprintln!("a batch of 500 creates with ranges of 4 ids: {runs} runs");
    assert!(
        runs > 1,
        "ranges of 4 ids cannot hold a batch of 500 at first"
    );
    assert_eq!(parts.len().unwrap(), 700);
    assert!(db.sync_status().unwrap().refills > 0);
    db.wait_pushed(LIMIT).unwrap();
    drop((parts, db));
    server.kill();
}
