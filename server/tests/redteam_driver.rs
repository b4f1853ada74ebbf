//! Red team of the built-in sync driver (`rekord::sync::driver`: every synced database's
//! client runs in a sans-IO engine, its connections opened and pumped by a driver loop on
//! the sync thread) against a real `rekord-server` process on loopback: killed with
//! SIGKILL mid-burst and restarted on the same address, stopped with SIGSTOP while the
//! replica writes and closes, replaced by an impostor, a wrong pin, databases dropped right
//! after a write and reopened at once, subscriptions that gain a tree across a server kill,
//! and many quick reopenings under a small per-address connection limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rekord::{Db, Error, Event, SyncConfig, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, config, token};

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

/// A blob record: many bytes per write.
#[rekord::record(tree = "blobs", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub name: String,
    pub data: Vec<u8>,
}

fn signal(server: &ServerProcess, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// A replica's configuration that notices a dead or stopped server quickly.
fn quick(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    config(addr, token)
        .timeout(Duration::from_secs(2))
        .idle_timeout(Duration::from_secs(1))
}

fn create_retrying<T: rekord::Record>(tree: &rekord::Tree<T>, record: &T) -> rekord::Key<T> {
    let start = Instant::now();
    loop {
        match tree.create(record) {
            Ok(k) => return k,
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("create: {e}"),
        }
    }
}

/// Runs `f` on a thread of its own, failing the test if it takes longer than `limit`; the
/// time it took.
fn bounded_thread(what: &str, limit: Duration, f: impl FnOnce() + Send + 'static) -> Duration {
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => start.elapsed(),
        Err(_) => panic!("{what} did not finish within {limit:?} (hangs)"),
    }
}

/// Closes `db` (its last handle), bounded: a close that hangs fails the test.
fn close_bounded(what: &str, db: Db, limit: Duration) -> Duration {
    bounded_thread(what, limit, move || drop(db))
}

/// Every record name of a tree, with how many records carry it.
fn names<T: rekord::Record>(
    tree: &rekord::Tree<T>,
    name: impl Fn(&T) -> String,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for key in tree.keys().unwrap() {
        let record = tree.get(key).unwrap();
        *out.entry(name(&record)).or_insert(0) += 1;
    }
    out
}

/// What a fresh replica of everything sees once caught up.
fn fresh_view(dir: &Path, addr: std::net::SocketAddr, token: &str, tag: &str) -> Db {
    let db = Db::open_synced(dir.join(format!("fresh-{tag}.rekord")), config(addr, token)).unwrap();
    db.wait_caught_up(LIMIT)
        .unwrap_or_else(|e| panic!("a fresh replica did not catch up: {e}"));
    db
}

/// Asserts that `seen` holds each of `expected` exactly once and nothing else.
fn exactly_once(seen: &BTreeMap<String, usize>, expected: &[String]) {
    let missing: Vec<_> = expected.iter().filter(|n| !seen.contains_key(*n)).collect();
    let doubled: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    let extra: Vec<_> = seen.keys().filter(|n| !expected.contains(n)).collect();
    assert!(
        missing.is_empty() && doubled.is_empty() && extra.is_empty(),
        "missing {} {:?}, duplicated {} {:?}, unexpected {} {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        doubled.len(),
        doubled.iter().take(10).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(10).collect::<Vec<_>>()
    );
}

/// Some tests here count the process's sockets and threads: the tests of this file run one
/// at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sockets this process holds open (each QUIC connection of the driver has an endpoint
/// of its own, a UDP socket).
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// A burst of 600 creates while the server process is killed with SIGKILL three times and
/// restarted on the same data and address: once the replica's outbox is empty, a fresh
/// replica sees each create exactly once.
#[test]
fn server_sigkill_mid_burst_restarted_on_the_same_address_gets_each_write_once() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let mut server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let db = Db::open_synced(
        tmp.path().join("a.rekord"),
        quick(addr, &token).range_size(5_000),
    )
    .unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let writer = {
        let parts = parts.clone();
        std::thread::spawn(move || {
            let mut made = Vec::new();
            for i in 0..600u32 {
                let name = format!("p{i}");
                create_retrying(
                    &parts,
                    &Part {
                        name: name.clone(),
                        qty: i,
                    },
                );
                made.push(name);
                if i % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            made
        })
    };
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(120 + 90 * round));
        server.kill();
        std::thread::sleep(Duration::from_millis(300));
        server = ServerProcess::start(&data, &addr.to_string());
    }
    let made = writer.join().unwrap();
    db.wait_pushed(LIMIT)
        .unwrap_or_else(|e| panic!("A's outbox did not empty: {e}; {:?}", db.sync_status()));
    let status = db.sync_status().unwrap();
    eprintln!("A after the kills: {status:?}");
    let fresh = fresh_view(tmp.path(), addr, &token, "b");
    let seen = names(&fresh.tree::<Part>().unwrap(), |p: &Part| p.name.clone());
    exactly_once(&seen, &made);
    drop(parts);
    close_bounded("closing A", db, Duration::from_secs(10));
    close_bounded("closing B", fresh, Duration::from_secs(10));
    server.kill();
}

/// A synced database closed right after a write (sometimes right after opening, before it
/// connected) and opened again at once, 40 times: no close hangs or takes long, no
/// socket or thread is left behind, and every write reaches the server.
#[test]
fn closed_right_after_a_write_and_reopened_at_once_many_times() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let path = tmp.path().join("a.rekord");
    // First contact: ranges and the pin.
    {
        let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        close_bounded("the first close", db, Duration::from_secs(10));
    }
    let (sockets_before, threads_before) = (sockets(), threads());
    let mut made = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..40u32 {
        let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
        if i % 3 == 1 {
            // Let it connect first, sometimes.
            std::thread::sleep(Duration::from_millis(u64::from(i) * 3));
        }
        let parts = db.tree::<Part>().unwrap();
        let name = format!("r{i}");
        create_retrying(
            &parts,
            &Part {
                name: name.clone(),
                qty: i,
            },
        );
        made.push(name);
        drop(parts);
        let took = close_bounded(&format!("close {i}"), db, Duration::from_secs(10));
        slowest = slowest.max(took);
    }
    // Settle: the last sync thread's tasks are gone once its runtime is.
    std::thread::sleep(Duration::from_millis(300));
    let (sockets_after, threads_after) = (sockets(), threads());
    eprintln!(
        "slowest close {slowest:?}; sockets {sockets_before} -> {sockets_after}; threads \
         {threads_before} -> {threads_after}"
    );
    assert!(slowest < Duration::from_secs(3), "a close took {slowest:?}");
    assert!(
        sockets_after <= sockets_before,
        "sockets left behind: {sockets_before} -> {sockets_after}"
    );
    assert!(
        threads_after <= threads_before,
        "threads left behind: {threads_before} -> {threads_after}"
    );
    let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
    db.wait_pushed(LIMIT).unwrap();
    let fresh = fresh_view(tmp.path(), server.addr, &token, "b");
    let seen = names(&fresh.tree::<Part>().unwrap(), |p: &Part| p.name.clone());
    exactly_once(&seen, &made);
    close_bounded("closing A", db, Duration::from_secs(10));
    close_bounded("closing B", fresh, Duration::from_secs(10));
}

/// The server process stops (SIGSTOP) while the replica writes 4 MiB and more: closing the
/// replica then returns within a bound (twice: once with a batch stuck in flight, once
/// right after reopening while the server is still stopped); once the server runs again
/// (SIGCONT) the reopened replica delivers everything, exactly once.
#[test]
fn a_stopped_server_does_not_hang_the_close_and_the_replica_recovers() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let path = tmp.path().join("a.rekord");
    let db = Db::open_synced(&path, quick(server.addr, &token).range_size(1_000)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let blobs = db.tree::<Blob>().unwrap();
    let mut made = Vec::new();
    signal(&server, "-STOP");
    let mut cont = scopeguard(&server);
    for i in 0..100u32 {
        let name = format!("b{i}");
        create_retrying(
            &blobs,
            &Blob {
                name: name.clone(),
                data: vec![i as u8; 48 * 1024],
            },
        );
        made.push(name);
    }
    // The batch is on its way to a server that reads nothing.
    std::thread::sleep(Duration::from_millis(1500));
    drop(blobs);
    let took = close_bounded("closing with a stopped server", db, Duration::from_secs(10));
    eprintln!("close with a stopped server: {took:?}");
    assert!(took < Duration::from_secs(3), "the close took {took:?}");

    let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
    let blobs = db.tree::<Blob>().unwrap();
    for i in 100..120u32 {
        let name = format!("b{i}");
        create_retrying(
            &blobs,
            &Blob {
                name: name.clone(),
                data: vec![i as u8; 48 * 1024],
            },
        );
        made.push(name);
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(blobs);
    let took = close_bounded(
        "closing again, server still stopped",
        db,
        Duration::from_secs(10),
    );
    eprintln!("second close with a stopped server: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "the second close took {took:?}"
    );

    cont.done();
    signal(&server, "-CONT");
    let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
    db.wait_pushed(LIMIT)
        .unwrap_or_else(|e| panic!("not pushed after SIGCONT: {e}; {:?}", db.sync_status()));
    let fresh = fresh_view(tmp.path(), server.addr, &token, "b");
    let seen = names(&fresh.tree::<Blob>().unwrap(), |b: &Blob| b.name.clone());
    exactly_once(&seen, &made);
    close_bounded("closing A", db, Duration::from_secs(10));
    close_bounded("closing B", fresh, Duration::from_secs(10));
}

/// The server process is stopped (SIGSTOP) for 4 s while the replica keeps writing, and
/// runs again: the open replica reconnects on its own and delivers everything.
#[test]
fn a_stopped_then_continued_server_gets_everything_from_an_open_replica() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let db = Db::open_synced(
        tmp.path().join("a.rekord"),
        quick(server.addr, &token).range_size(1_000),
    )
    .unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let events = db.subscribe();
    let blobs = db.tree::<Blob>().unwrap();
    let mut made = Vec::new();
    let mut cont = scopeguard(&server);
    signal(&server, "-STOP");
    let stopped = Instant::now();
    let mut i = 0u32;
    while stopped.elapsed() < Duration::from_secs(4) {
        let name = format!("b{i}");
        create_retrying(
            &blobs,
            &Blob {
                name: name.clone(),
                data: vec![i as u8; 16 * 1024],
            },
        );
        made.push(name);
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    cont.done();
    signal(&server, "-CONT");
    let start = Instant::now();
    db.wait_pushed(LIMIT)
        .unwrap_or_else(|e| panic!("not pushed after SIGCONT: {e}; {:?}", db.sync_status()));
    let mut disconnects = 0;
    for e in events.try_iter() {
        if let Event::Sync(SyncEvent::Disconnected { .. }) = e {
            disconnects += 1;
        }
    }
    eprintln!(
        "{} writes; pushed {:?} after SIGCONT; {disconnects} disconnects",
        made.len(),
        start.elapsed()
    );
    let fresh = fresh_view(tmp.path(), server.addr, &token, "b");
    let seen = names(&fresh.tree::<Blob>().unwrap(), |b: &Blob| b.name.clone());
    exactly_once(&seen, &made);
    drop(blobs);
    close_bounded("closing A", db, Duration::from_secs(10));
    close_bounded("closing B", fresh, Duration::from_secs(10));
}

/// A replica whose subscription gains a tree reopens while the server is killed (SIGKILL)
/// in the middle of the new tree's backfill, and restarted on the same address: it ends
/// with every record of the tree once, and its own writes of both trees reach the server.
#[test]
fn a_subscription_that_gains_a_tree_survives_a_server_kill_during_the_backfill() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let mut server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let path = tmp.path().join("a.rekord");
    let mut made_parts = Vec::new();
    {
        let db = Db::open_synced(&path, quick(addr, &token).trees(["parts"])).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let parts = db.tree::<Part>().unwrap();
        for i in 0..50u32 {
            let name = format!("a-part{i}");
            create_retrying(
                &parts,
                &Part {
                    name: name.clone(),
                    qty: i,
                },
            );
            made_parts.push(name);
        }
        db.wait_pushed(LIMIT).unwrap();
        drop(parts);
        close_bounded("closing A", db, Duration::from_secs(10));
    }
    let mut made_tools = Vec::new();
    {
        let db = Db::open_synced(
            tmp.path().join("b.rekord"),
            quick(addr, &token).range_size(5_000),
        )
        .unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let tools = db.tree::<Tool>().unwrap();
        db.write(|b| {
            for i in 0..1500u32 {
                let name = format!("b-tool{i}");
                b.create(&Tool { name: name.clone() })?;
                made_tools.push(name);
            }
            Ok(())
        })
        .unwrap();
        db.wait_pushed(LIMIT).unwrap();
        drop(tools);
        close_bounded("closing B", db, Duration::from_secs(10));
    }
    // A gains `tools`; the server dies while A fetches them, twice.
    let db = Db::open_synced(&path, quick(addr, &token).trees(["parts", "tools"])).unwrap();
    let tools = db.tree::<Tool>().unwrap();
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(40 + 60 * round));
        eprintln!("kill {round}: A has {} tools", tools.len().unwrap());
        server.kill();
        std::thread::sleep(Duration::from_millis(300));
        server = ServerProcess::start(&data, &addr.to_string());
    }
    let parts = db.tree::<Part>().unwrap();
    for i in 0..20u32 {
        let name = format!("a2-part{i}");
        create_retrying(
            &parts,
            &Part {
                name: name.clone(),
                qty: i,
            },
        );
        made_parts.push(name);
        let name = format!("a2-tool{i}");
        create_retrying(&tools, &Tool { name: name.clone() });
        made_tools.push(name);
    }
    db.wait_pushed(LIMIT)
        .unwrap_or_else(|e| panic!("A not pushed: {e}; {:?}", db.sync_status()));
    db.wait_caught_up(LIMIT).unwrap();
    let start = Instant::now();
    while tools.len().unwrap() < made_tools.len() as u64 && start.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    exactly_once(&names(&tools, |t: &Tool| t.name.clone()), &made_tools);
    exactly_once(&names(&parts, |p: &Part| p.name.clone()), &made_parts);
    let fresh = fresh_view(tmp.path(), addr, &token, "c");
    exactly_once(
        &names(&fresh.tree::<Tool>().unwrap(), |t: &Tool| t.name.clone()),
        &made_tools,
    );
    exactly_once(
        &names(&fresh.tree::<Part>().unwrap(), |p: &Part| p.name.clone()),
        &made_parts,
    );
    drop((tools, parts));
    close_bounded("closing A", db, Duration::from_secs(10));
    close_bounded("closing C", fresh, Duration::from_secs(10));
    server.kill();
}

/// Another server (another identity and certificate) on the address a replica pinned: the
/// replica is refused, says why (status `refused`, one `Refused` event however many times
/// it retries), never goes online, and goes back online once the real server is back.
#[test]
fn an_impostor_on_the_pinned_address_is_refused_clearly_and_the_real_server_is_taken_back() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let path = tmp.path().join("a.rekord");
    {
        let db = Db::open_synced(&path, quick(addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        close_bounded("closing A", db, Duration::from_secs(10));
    }
    server.kill();
    let impostor_data = tmp.path().join("impostor");
    let impostor_token = token_of(&impostor_data);
    let impostor = ServerProcess::start(&impostor_data, &addr.to_string());

    // The replica's own token: refused before its hello, it is never sent.
    let db = Db::open_synced(&path, quick(addr, &token)).unwrap();
    let events = db.subscribe();
    let start = Instant::now();
    let refused = loop {
        let s = db.sync_status().unwrap();
        assert!(!s.online, "online with an impostor: {s:?}");
        if let Some(r) = s.refused {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not refused: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("refused after {:?}: {refused}", start.elapsed());
    // Many retries later.
    std::thread::sleep(Duration::from_secs(3));
    let s = db.sync_status().unwrap();
    assert!(!s.online);
    let (mut refusals, mut disconnects) = (0, 0);
    for e in events.try_iter() {
        match e {
            Event::Sync(SyncEvent::Refused { .. }) => refusals += 1,
            Event::Sync(SyncEvent::Disconnected { .. }) => disconnects += 1,
            Event::Sync(SyncEvent::Connected { .. }) => panic!("connected to the impostor"),
            _ => {}
        }
    }
    eprintln!("{refusals} refusals, {disconnects} disconnects; {s:?}");
    assert_eq!(refusals, 1, "one refusal reported");
    assert!(
        refused.contains("impostor") || refused.contains("certificate"),
        "{refused}"
    );
    // The impostor's token never worked either way.
    let _ = impostor_token;
    impostor.kill();
    // The real server comes back on the address: the open replica goes back online.
    // (`wait_caught_up` answers at once while `refused` is set: the status is polled.)
    let server = ServerProcess::start(&data, &addr.to_string());
    let start = Instant::now();
    loop {
        let s = db.sync_status().unwrap();
        if s.online && s.caught_up {
            assert!(s.refused.is_none(), "still said refused once back: {s:?}");
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "not back with the real server: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "back online {:?} after the real server restarted",
        start.elapsed()
    );
    drop(events);
    let took = close_bounded("closing A", db, Duration::from_secs(10));
    assert!(took < Duration::from_secs(3), "{took:?}");
    server.kill();
}

/// A replica given a pin (`SyncConfig::pin`) with the right UUID but another certificate
/// fingerprint is refused before any session (never online), with a clear reason.
#[test]
fn a_wrong_pinned_certificate_is_refused_with_a_clear_reason() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let (uuid, _fingerprint, _) = process::identity(&data);
    let pin = rekord::net::Pin::parse(&uuid, &"ab".repeat(32)).unwrap();
    let db = Db::open_synced(
        tmp.path().join("a.rekord"),
        quick(server.addr, &token).pin(pin),
    )
    .unwrap();
    let start = Instant::now();
    let refused = loop {
        let s = db.sync_status().unwrap();
        assert!(!s.online, "online with a wrong pin: {s:?}");
        if let Some(r) = s.refused {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not refused: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("refused: {refused}");
    assert!(refused.contains("certificate"), "{refused}");
    close_bounded("closing", db, Duration::from_secs(10));
    server.kill();
}

/// With at most 2 connections per address on the server (loopback not trusted), a replica
/// opened and closed 30 times in quick succession always gets in: every close reaches the
/// server (a connection left open would hold a place until the server's idle timeout).
#[test]
fn quick_reopenings_leave_no_connection_open_on_the_server() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let conf = tmp.path().join("server.toml");
    std::fs::write(
        &conf,
        "[limits]\nmax_connections_per_address = 2\nhandshakes_per_second_per_address = 1000\n\
         trusted = []\n",
    )
    .unwrap();
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--config", conf.to_str().unwrap()],
    );
    let path = tmp.path().join("a.rekord");
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
        let start = Instant::now();
        if let Err(e) = db.wait_caught_up(Duration::from_secs(8)) {
            panic!(
                "reopening {i}: not caught up in 8 s: {e}; {:?}",
                db.sync_status()
            );
        }
        slowest = slowest.max(start.elapsed());
        close_bounded("closing", db, Duration::from_secs(10));
    }
    eprintln!("slowest catch-up {slowest:?}");
    // The limit is in force: a third replica at once is refused.
    let held: Vec<Db> = (0..2)
        .map(|i| {
            let db = Db::open_synced(
                tmp.path().join(format!("h{i}.rekord")),
                quick(server.addr, &token),
            )
            .unwrap();
            db.wait_caught_up(LIMIT).unwrap();
            db
        })
        .collect();
    let third =
        Db::open_synced(tmp.path().join("third.rekord"), quick(server.addr, &token)).unwrap();
    let r = third.wait_caught_up(Duration::from_secs(3));
    eprintln!("a third replica at once: {r:?}");
    assert!(r.is_err(), "the per-address limit of 2 is not in force");
    drop(held);
    drop(third);
    server.kill();
}

/// `token` for a second server's data directory.
fn token_of(data: &Path) -> String {
    token(data)
}

/// Sends SIGCONT to the server if the test fails while it is stopped (so its kill works).
struct Cont<'a>(&'a ServerProcess, bool);

fn scopeguard(server: &ServerProcess) -> Cont<'_> {
    Cont(server, true)
}

impl Cont<'_> {
    fn done(&mut self) {
        self.1 = false;
    }
}

impl Drop for Cont<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("kill")
                .args(["-CONT", &self.0.child.id().to_string()])
                .status();
        }
    }
}

/// Two replicas, one writing a burst and the other only receiving, while the server process
/// is killed (SIGKILL) ten times in quick succession and restarted on the same address:
/// both end with every write exactly once, and neither keeps sockets of the connections it
/// gave up (each QUIC connection of the driver has an endpoint, a UDP socket, of its own).
#[test]
fn ten_quick_server_kills_with_a_writer_and_a_reader_converge_and_leave_no_sockets() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let mut server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    // A first synced database creates what the process keeps for good (tokio's signal
    // pipe, a socket pair): counted before.
    close_bounded(
        "warming up",
        Db::memory_synced(quick(addr, &token)).unwrap(),
        Duration::from_secs(10),
    );
    let sockets_before = sockets();
    let a = Db::open_synced(
        tmp.path().join("a.rekord"),
        quick(addr, &token).range_size(5_000),
    )
    .unwrap();
    let b = Db::open_synced(tmp.path().join("b.rekord"), quick(addr, &token)).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let sockets_online = sockets();
    let parts = a.tree::<Part>().unwrap();
    let writer = {
        let parts = parts.clone();
        std::thread::spawn(move || {
            let mut made = Vec::new();
            let start = Instant::now();
            let mut i = 0u32;
            while start.elapsed() < Duration::from_secs(4) {
                let name = format!("p{i}");
                create_retrying(
                    &parts,
                    &Part {
                        name: name.clone(),
                        qty: i,
                    },
                );
                made.push(name);
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            made
        })
    };
    let mut rng = 0x1234_5678_9abc_def1u64;
    for _ in 0..10 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(50 + rng % 200));
        server.kill();
        std::thread::sleep(Duration::from_millis(rng % 150));
        server = ServerProcess::start(&data, &addr.to_string());
    }
    let made = writer.join().unwrap();
    a.wait_pushed(LIMIT)
        .unwrap_or_else(|e| panic!("A not pushed: {e}; {:?}", a.sync_status()));
    let b_parts = b.tree::<Part>().unwrap();
    let start = Instant::now();
    while b_parts.len().unwrap() < made.len() as u64 && start.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    b.wait_caught_up(LIMIT).unwrap();
    exactly_once(&names(&b_parts, |p: &Part| p.name.clone()), &made);
    exactly_once(&names(&parts, |p: &Part| p.name.clone()), &made);
    // Dial attempts that failed end within their timeout (2 s).
    let mut trace = Vec::new();
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(500));
        trace.push(sockets());
    }
    eprintln!("sockets every 500 ms after convergence: {trace:?}");
    let sockets_now = sockets();
    eprintln!(
        "{} writes; sockets: {sockets_before} before opening, {sockets_online} with both \
         replicas online before the kills, {sockets_now} after",
        made.len()
    );
    assert!(
        sockets_now <= sockets_online,
        "sockets kept: {sockets_online} with both replicas online before the kills, \
         {sockets_now} after"
    );
    drop((parts, b_parts));
    close_bounded("closing A", a, Duration::from_secs(10));
    close_bounded("closing B", b, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sockets() <= sockets_before,
        "{} sockets after closing both",
        sockets()
    );
    server.kill();
}

/// A fresh replica catching up with 24 MiB of blobs is closed in the middle of it, over and
/// over (its reader paused, a big frame half read): each close is bounded, and the replica
/// ends with every blob once. The last closes happen with the server stopped (SIGSTOP).
#[test]
fn closing_in_the_middle_of_a_big_catch_up_is_bounded_and_the_catch_up_completes() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let mut made = Vec::new();
    {
        let db = Db::open_synced(
            tmp.path().join("w.rekord"),
            quick(server.addr, &token).range_size(1_000),
        )
        .unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        for chunk in 0..6u32 {
            db.write(|b| {
                for j in 0..8u32 {
                    let name = format!("blob{chunk}-{j}");
                    b.create(&Blob {
                        name: name.clone(),
                        data: vec![(chunk * 8 + j) as u8; 512 * 1024],
                    })?;
                    made.push(name);
                }
                Ok(())
            })
            .unwrap();
        }
        db.wait_pushed(LIMIT).unwrap();
        close_bounded("closing the writer", db, Duration::from_secs(10));
    }
    let path = tmp.path().join("c.rekord");
    let mut slowest = Duration::ZERO;
    let mut cont = scopeguard(&server);
    for round in 0..12u64 {
        let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
        std::thread::sleep(Duration::from_millis(60 + 120 * (round % 9)));
        if round >= 9 {
            signal(&server, "-STOP");
            std::thread::sleep(Duration::from_millis(200));
        }
        let blobs = db.tree::<Blob>().unwrap().len().unwrap();
        let took = close_bounded(&format!("close {round}"), db, Duration::from_secs(10));
        if round >= 9 {
            signal(&server, "-CONT");
        }
        eprintln!("round {round}: {blobs} blobs, close took {took:?}");
        slowest = slowest.max(took);
    }
    cont.done();
    drop(cont);
    assert!(slowest < Duration::from_secs(3), "a close took {slowest:?}");
    let start = Instant::now();
    let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
    db.wait_caught_up(LIMIT)
        .unwrap_or_else(|e| panic!("not caught up: {e}; {:?}", db.sync_status()));
    eprintln!("the rest of the catch-up took {:?}", start.elapsed());
    let blobs = db.tree::<Blob>().unwrap();
    exactly_once(&names(&blobs, |b: &Blob| b.name.clone()), &made);
    drop(blobs);
    close_bounded("closing C", db, Duration::from_secs(10));
    server.kill();
}
