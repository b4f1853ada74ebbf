//! Red team of the copied-replica detection (`Store::apply_entries`, and the hello's
//! `last_entry`): false positives (a single, never copied replica whose entry is refused as
//! "a copy") and holes (a copy that still diverges silently).
//!
//! Tests named `older_copy_*` are the holes the red team found, closed: a file older than
//! another copy of the same replica (put back from a backup, or copied while the replica
//! went on) is refused at the hello (`Refusal::OlderCopy`), loudly, instead of skipping the
//! other copy's changes as its own. `holds_*` probe legitimate sequences for a false
//! positive. One hole stays open (ignored test, see there).
//!
//! Run: `cargo test -p rekord-server --test redteam_copies -- --test-threads=1`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Optimistic by its type: edits need no borrow, conflicts are merged.
#[rekord::record(tree = "notes", version = 1, merge = "last-write-wins")]
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub text: String,
}

const LIMIT: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "REKORD_REDTEAM_COPIES_CHILD";
const COPY_WORDS: &str = "not the one the server received";

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token)
        .timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(1))
}

fn eventually(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            eprintln!("never: {what}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn create_retrying<T: rekord::Record>(tree: &rekord::Tree<T>, v: &T) -> rekord::Key<T> {
    let start = Instant::now();
    loop {
        match tree.create(v) {
            Ok(k) => return k,
            Err(rekord::Error::IdsExhausted) if start.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Collects every rejection reason a database reports (in a thread).
fn rejections(db: &Db) -> Arc<Mutex<Vec<String>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let events = db.subscribe();
    let o = out.clone();
    std::thread::spawn(move || {
        loop {
            match events.recv_timeout(Duration::from_millis(200)) {
                Some(Event::Sync(SyncEvent::Rejected { reason, .. })) => {
                    o.lock().unwrap().push(reason)
                }
                Some(_) => {}
                None => {
                    if Arc::strong_count(&o) == 1 {
                        return;
                    }
                }
            }
        }
    });
    out
}

fn part(name: &str, qty: u32) -> Part {
    Part {
        name: name.into(),
        qty,
    }
}

// ---------------------------------------------------------------------------------------
// Holes
// ---------------------------------------------------------------------------------------

/// Was a hole (finding 1). A replica's file put back from an older copy of itself (a backup
/// of the application's directory, restored): its later change, which the server holds,
/// came back in the catch-up as a change of its own holder and was skipped ("the record
/// here already reflects them"): the file kept the old value for good, silently. Now the
/// hello says how far the file's entries go, and the older file is refused.
#[test]
fn older_copy_put_back_from_a_backup_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let file = tmp.path().join("app.rekord");
    let older = tmp.path().join("older.rekord");
    let key = {
        let db = Db::open_synced(&file, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let parts = db.tree::<Part>().unwrap();
        let k = create_retrying(&parts, &part("v1", 1));
        db.wait_pushed(LIMIT).unwrap();
        drop(parts);
        drop(db);
        // The backup of the application's file.
        std::fs::copy(&file, &older).unwrap();
        let db = Db::open_synced(&file, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        db.tree::<Part>()
            .unwrap()
            .replace(k, &part("v2", 2))
            .unwrap();
        db.wait_pushed(LIMIT).unwrap();
        k
    };
    // The application's file is put back from the backup: refused, loudly.
    std::fs::copy(&older, &file).unwrap();
    let db = Db::open_synced(&file, config(server.addr, &token)).unwrap();
    refused_as_older_copy(&db);
    let fresh = Db::memory_synced(config(server.addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    assert_eq!(
        fresh.tree::<Part>().unwrap().get(key).unwrap(),
        part("v2", 2)
    );
    drop((db, fresh));
    server.kill();
}

/// A file older than another copy of its replica is refused at the hello: nothing it holds
/// or makes is mixed with the other copy's changes, and the application is told why.
fn refused_as_older_copy(db: &Db) {
    let err = db.wait_caught_up(LIMIT).unwrap_err();
    assert!(
        matches!(&err, rekord::Error::Refused { .. }) && err.to_string().contains("older copy"),
        "{err}"
    );
    let status = db.sync_status().unwrap();
    assert!(
        status
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("older copy")),
        "{status:?}"
    );
}

/// Was a hole (finding 1, the issue-13 scenario with two records). The copy changed record
/// R; the application, back on its file, never got R (a change of its own holder, skipped).
/// Now the application's file, older than the copy, is refused at the hello.
#[test]
fn older_copy_after_a_copy_wrote_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let original = tmp.path().join("app.rekord");
    let (r, s) = {
        let db = Db::open_synced(&original, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let parts = db.tree::<Part>().unwrap();
        let r = create_retrying(&parts, &part("r", 1));
        let s = create_retrying(&parts, &part("s", 1));
        db.wait_pushed(LIMIT).unwrap();
        (r, s)
    };
    let copy = tmp.path().join("copy.rekord");
    std::fs::copy(&original, &copy).unwrap();
    {
        let db = Db::open_synced(&copy, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        db.tree::<Part>()
            .unwrap()
            .replace(r, &part("r from the copy", 5))
            .unwrap();
        db.wait_pushed(LIMIT).unwrap();
    }
    // The original, back: older than the copy now, refused.
    let db = Db::open_synced(&original, config(server.addr, &token)).unwrap();
    refused_as_older_copy(&db);
    let _ = s;
    drop(db);
    server.kill();
}

/// OPEN HOLE (finding 2). The copy and the original online at once: whichever sends an
/// entry number first wins it, and the other's changes under numbers the first has not used
/// yet are accepted as its own. Here the copy writes while the original only reads: the
/// original never sees the copy's change (own holder, skipped) until it reconnects (then
/// it is refused as the older copy). Closing it needs the server to tell two live sessions
/// of one client identity apart (the client's own second connection, for trees joining
/// its subscription, shares the identity).
#[test]
#[ignore = "open hole: two copies of one replica online at the same time"]
fn hole_copy_and_original_online_at_once_the_original_never_sees_the_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let original = tmp.path().join("app.rekord");
    let key = {
        let db = Db::open_synced(&original, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let k = create_retrying(&db.tree::<Part>().unwrap(), &part("v1", 1));
        db.wait_pushed(LIMIT).unwrap();
        k
    };
    let copy = tmp.path().join("copy.rekord");
    std::fs::copy(&original, &copy).unwrap();
    let app = Db::open_synced(&original, config(server.addr, &token)).unwrap();
    let rejected = rejections(&app);
    app.wait_caught_up(LIMIT).unwrap();
    let viewer = Db::open_synced(&copy, config(server.addr, &token)).unwrap();
    viewer.wait_caught_up(LIMIT).unwrap();
    viewer
        .tree::<Part>()
        .unwrap()
        .replace(key, &part("from the copy", 7))
        .unwrap();
    viewer.wait_pushed(LIMIT).unwrap();
    let parts = app.tree::<Part>().unwrap();
    let converged = eventually(
        "the original sees the change",
        Duration::from_secs(5),
        || parts.get(key).unwrap() == part("from the copy", 7),
    );
    let here = parts.get(key).unwrap();
    drop((parts, viewer, app));
    server.kill();
    assert!(
        converged,
        "silent divergence: the original holds {here:?}; reported: {:?}",
        rejected.lock().unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// False-positive probes (hold today)
// ---------------------------------------------------------------------------------------

/// A tiny deterministic generator (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Entry point of a writer process (a no-op in a normal test run): opens the file, then
/// writes as fast as it can (a borrowed part it created, an optimistic note another replica
/// edits too), reporting every rejection on stdout, until it is killed.
#[test]
fn writer_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.split('|');
    let (path, addr, token, note) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap().parse::<u64>().unwrap(),
    );
    let db = Db::open_synced(path, config(addr.parse().unwrap(), token)).unwrap();
    let events = db.subscribe();
    std::thread::spawn(move || {
        loop {
            if let Some(Event::Sync(SyncEvent::Rejected { entry, reason })) =
                events.recv_timeout(Duration::from_millis(100))
            {
                println!("@ rejected {entry} {reason}");
            }
        }
    });
    let parts = db.tree::<Part>().unwrap();
    let notes = db.tree::<Note>().unwrap();
    let pk = match parts.keys().unwrap().into_iter().next() {
        Some(k) => k,
        None => create_retrying(&parts, &part("w", 0)),
    };
    let nk = rekord::Key::<Note>::new(note, 0);
    println!("@ ready");
    let mut i = parts.get(pk).map(|p| p.qty).unwrap_or(0);
    loop {
        i += 1;
        let _ = parts.replace(pk, &part("w", i));
        if i.is_multiple_of(2) {
            let _ = notes.replace(
                nk,
                &Note {
                    text: format!("writer {i}"),
                },
            );
        }
        if i.is_multiple_of(5) {
            // A write-through-ish pace now and then: wait for the server.
            let _ = db.wait_pushed(Duration::from_millis(300));
        } else {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}

fn start_writer(
    path: &Path,
    addr: std::net::SocketAddr,
    token: &str,
    note: u64,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = process::child(
        "writer_process",
        CHILD_ENV,
        format!("{}|{addr}|{token}|{note}", path.display()),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some((_, l)) = line.split_once("@ ") {
                let _ = tx.send(l.to_owned());
            }
        }
    });
    (child, rx)
}

/// HOLDS. A writer process SIGKILLed at random moments (around sending entries, settling
/// them, merging conflicts), the server killed and restarted now and then, another replica
/// editing the same optimistic note all along: no entry of the writer is ever refused
/// (nothing in this workload can be refused, least of all as a copy), and it converges.
#[test]
fn holds_random_kills_of_a_writer_and_the_server_never_refuse_as_a_copy() {
    kill_run(false);
}

/// HOLDS. [`holds_random_kills_of_a_writer_and_the_server_never_refuse_as_a_copy`] with
/// backups taken while the writer writes, and the server restored from a random one of
/// them (older ones too, after newer ones): the writer reconciles (its outbox renumbered,
/// bases moved back), and is never refused as a copy. Other refusals (records taken back
/// by the restore) are allowed here.
#[test]
fn holds_server_restores_from_random_backups_amid_kills_never_refuse_as_a_copy() {
    kill_run(true);
}

fn kill_run(restores: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let mut server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let seed = std::env::var("REDTEAM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("REDTEAM_SEED={seed}");
    let mut rng = Rng(seed);
    let other = Db::memory_synced(config(addr, &token)).unwrap();
    other.wait_caught_up(LIMIT).unwrap();
    let nk = create_retrying(
        &other.tree::<Note>().unwrap(),
        &Note {
            text: "start".into(),
        },
    );
    other.wait_pushed(LIMIT).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let editor = {
        let (other, stop) = (other.clone(), stop.clone());
        std::thread::spawn(move || {
            let notes = other.tree::<Note>().unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let _ = notes.replace(
                    nk,
                    &Note {
                        text: format!("other {i}"),
                    },
                );
                std::thread::sleep(Duration::from_millis(7));
            }
        })
    };
    let file = tmp.path().join("writer.rekord");
    let mut lines = Vec::new();
    let mut backups: Vec<std::path::PathBuf> = Vec::new();
    let rounds = std::env::var("REDTEAM_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    for round in 0..rounds {
        let (mut child, rx) = start_writer(&file, addr, &token, nk.id());
        let start = Instant::now();
        let mut ready = false;
        while start.elapsed() < LIMIT && !ready {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
                ready |= l == "ready";
                lines.push(l);
            }
        }
        assert!(ready, "round {round}: the writer never started");
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 700));
        if rng.next().is_multiple_of(4) {
            // The server dies too (before or after the writer).
            let first = rng.next().is_multiple_of(2);
            if first {
                child.kill().unwrap();
            }
            server.kill();
            std::thread::sleep(Duration::from_millis(rng.next() % 300));
            server = ServerProcess::start(&data, &addr.to_string());
            std::thread::sleep(Duration::from_millis(rng.next() % 500));
            if !first {
                child.kill().unwrap();
            }
        } else if restores && rng.next().is_multiple_of(2) {
            let out = tmp.path().join(format!("backup{round}.redb"));
            process::backup(&data, &out);
            backups.push(out);
            std::thread::sleep(Duration::from_millis(rng.next() % 400));
            if rng.next().is_multiple_of(2) {
                child.kill().unwrap();
            }
            let from = backups[(rng.next() % backups.len() as u64) as usize].clone();
            eprintln!("round {round}: restore from {}", from.display());
            server = process::restore(server, &data, &from);
            std::thread::sleep(Duration::from_millis(rng.next() % 700));
            let _ = child.kill();
        } else {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        lines.extend(rx.try_iter());
    }
    stop.store(true, Ordering::Relaxed);
    editor.join().unwrap();
    let db = Db::open_synced(&file, config(addr, &token)).unwrap();
    let rejected = rejections(&db);
    db.wait_caught_up(LIMIT).unwrap();
    db.wait_pushed(LIMIT).unwrap();
    other.wait_pushed(LIMIT).unwrap();
    let status = db.sync_status().unwrap();
    let mut reported: Vec<String> = lines
        .into_iter()
        .filter(|l| l.starts_with("rejected"))
        .collect();
    reported.extend(rejected.lock().unwrap().iter().cloned());
    let pk = db.tree::<Part>().unwrap().keys().unwrap()[0];
    let fresh = Db::memory_synced(config(addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    let want = fresh.tree::<Part>().unwrap().get(pk).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let converged = eventually("the writer's part converges", LIMIT, || {
        parts.get(pk).unwrap() == want
    });
    let here = parts.get(pk).unwrap();
    drop((parts, db, fresh, other));
    server.kill();
    if restores {
        reported.retain(|r| r.contains(COPY_WORDS));
        assert!(
            reported.is_empty(),
            "seed {seed}: refused as copies: {reported:?}"
        );
        return assert!(converged, "seed {seed}: {here:?} vs {want:?}");
    }
    assert!(
        reported.is_empty() && status.rejected == 0,
        "seed {seed}: refused {} entries: {reported:?}",
        status.rejected
    );
    assert!(converged, "seed {seed}: {here:?} vs {want:?}");
}

/// Was a hole (finding 3). A file put back from an older copy of itself had every later
/// write refused and undone, one after another, until its entry numbers passed the
/// server's. Now it is refused at the hello, before it writes anything.
#[test]
fn older_copy_eight_entries_behind_is_refused_before_it_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let file = tmp.path().join("app.rekord");
    let older = tmp.path().join("older.rekord");
    let keys: Vec<rekord::Key<Part>> = {
        let db = Db::open_synced(&file, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let parts = db.tree::<Part>().unwrap();
        let keys: Vec<_> = (0..3)
            .map(|i| create_retrying(&parts, &part(&format!("k{i}"), 0)))
            .collect();
        db.wait_pushed(LIMIT).unwrap();
        drop(parts);
        drop(db);
        std::fs::copy(&file, &older).unwrap();
        let db = Db::open_synced(&file, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let parts = db.tree::<Part>().unwrap();
        for i in 0..8 {
            parts.replace(keys[0], &part("app", i)).unwrap();
        }
        db.wait_pushed(LIMIT).unwrap();
        keys
    };
    let db = Db::open_synced(&older, config(server.addr, &token)).unwrap();
    refused_as_older_copy(&db);
    let _ = keys;
    drop(db);
    server.kill();
}
