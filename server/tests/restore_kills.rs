//! Red team (issue 11): replicas SIGKILLed while they reconcile with a restored server, and
//! while they push what they send again, then reopened: they must end like a fresh replica
//! and keep every acknowledged change. Client processes are this test binary re-executed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rekord::{Db, Key, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, backup, token};

const CHILD_ENV: &str = "REKORD_REDTEAM_CHILD";
const LIMIT: Duration = Duration::from_secs(40);

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token)
        .range_size(1000)
        .timeout(Duration::from_secs(10))
}

/// A client process: opens the replica (which reconciles), says so, then idles until killed
/// or told `quit`.
#[test]
fn redteam_client_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.splitn(3, '|');
    let (path, addr, token) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    if std::env::var_os("REDTEAM_CHILD_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("rekord=debug")
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
        eprintln!("child {} pid {}", path, std::process::id());
    }
    let db = Db::open_synced(path, config(addr.parse().unwrap(), token)).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "@ open").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        match line.trim() {
            "quit" => break,
            "settle" => {
                let _ = db.wait_caught_up(LIMIT);
                let _ = db.wait_pushed(LIMIT);
                writeln!(out, "@ ok").unwrap();
                out.flush().unwrap();
            }
            _ => {}
        }
    }
}

fn spawn(
    path: &Path,
    addr: std::net::SocketAddr,
    token: &str,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = process::child(
        "redteam_client_process",
        CHILD_ENV,
        format!("{}|{}|{}", path.display(), addr, token),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(match std::env::var_os("REDTEAM_CHILD_LOG") {
        Some(f) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .unwrap(),
        ),
        None => Stdio::null(),
    })
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child exited");
        if line.contains("@ open") {
            break;
        }
    }
    (child, out)
}

type Row = (u64, u32, String, u32, bool, u32, u32);

fn parts(db: &Db) -> Vec<Row> {
    let mut v: Vec<_> = db
        .tree::<Part>()
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            let k = r.key();
            let m = r.meta();
            (
                k.id(),
                k.rev(),
                r.name.to_string(),
                r.qty.to_native(),
                m.released,
                m.state,
                m.holder,
            )
        })
        .collect();
    v.sort();
    v
}

fn create(db: &Db, name: &str, qty: u32) -> Key<Part> {
    db.tree::<Part>()
        .unwrap()
        .create(&Part {
            name: name.into(),
            qty,
        })
        .unwrap()
}

fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > LIMIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn holder(db: &Db, k: Key<Part>) -> u32 {
    db.tree::<Part>().unwrap().meta(k).unwrap().holder
}

/// The lost history: A and B make records before and after the backup, borrows move from A
/// to B after it. Returns the state a fresh replica had before the restore.
fn lost_history(
    data: &Path,
    addr: std::net::SocketAddr,
    token: &str,
    a_path: &Path,
    b_path: &Path,
    backup_file: &Path,
) -> Vec<Row> {
    let a = Db::open_synced(a_path, config(addr, token)).unwrap();
    let b = Db::open_synced(b_path, config(addr, token)).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    let ks: Vec<_> = (0..10).map(|i| create(&a, &format!("k{i}"), i)).collect();
    let bs: Vec<_> = (0..5).map(|i| create(&b, &format!("b{i}"), i)).collect();
    a.wait_pushed(LIMIT).unwrap();
    b.wait_pushed(LIMIT).unwrap();
    backup(data, backup_file);
    let ta = a.tree::<Part>().unwrap();
    let tb = b.tree::<Part>().unwrap();
    for i in 0..150 {
        create(&a, &format!("a-late{i}"), i);
    }
    for (i, k) in ks.iter().enumerate() {
        ta.update(*k, |p| p.qty = 100 + i as u32).unwrap();
    }
    for k in &ks[5..8] {
        ta.return_borrow(*k).unwrap();
    }
    ta.release(ks[9]).unwrap();
    for i in 0..20 {
        create(&b, &format!("b-late{i}"), i);
    }
    for k in &bs {
        tb.update(*k, |p| p.qty += 50).unwrap();
    }
    a.wait_pushed(LIMIT).unwrap();
    assert!(eventually(|| {
        let _ = b.wait_caught_up(LIMIT);
        ks[5..8].iter().all(|k| holder(&b, *k) == 0)
    }));
    for k in &ks[5..8] {
        tb.borrow(*k).unwrap();
        tb.update(*k, |p| p.qty += 1000).unwrap();
    }
    tb.return_borrow(ks[7]).unwrap();
    b.wait_pushed(LIMIT).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    let fresh = Db::memory_synced(config(addr, token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    assert!(eventually(|| {
        let _ = fresh.wait_caught_up(LIMIT);
        parts(&fresh) == parts(&a) && parts(&a) == parts(&b)
    }));
    parts(&fresh)
}

/// Offline edits of A and B, made while the server is down (outbox entries waiting at the
/// restore): (id, qty) that must hold in the end.
fn offline_edits(
    a_path: &Path,
    b_path: &Path,
    addr: std::net::SocketAddr,
    token: &str,
) -> Vec<(u64, u32)> {
    let mut want = Vec::new();
    for (path, base) in [(a_path, 5000u32), (b_path, 6000)] {
        let db = Db::open_synced(path, config(addr, token)).unwrap();
        let t = db.tree::<Part>().unwrap();
        let me = db.replica();
        let held: Vec<Key<Part>> = t
            .keys()
            .unwrap()
            .into_iter()
            .filter(|k| t.meta(*k).unwrap().holder == me && !t.meta(*k).unwrap().released)
            .take(4)
            .collect();
        for (i, k) in held.iter().enumerate() {
            t.update(*k, |p| p.qty = base + i as u32).unwrap();
            want.push((k.id(), base + i as u32));
        }
        for i in 0..3 {
            let k = create(&db, &format!("off{base}-{i}"), base + 100 + i);
            want.push((k.id(), base + 100 + i));
        }
        assert!(db.sync_status().unwrap().outbox > 0);
    }
    want
}

fn killed_while_reconciling(delays: &[u64]) {
    killed_while_reconciling_with(delays, false);
}

fn killed_while_reconciling_with(delays: &[u64], offline: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (a_path, b_path) = (tmp.path().join("a.rekord"), tmp.path().join("b.rekord"));
    let backup_file = tmp.path().join("backup.redb");
    eprintln!("lost history");
    let expected = lost_history(&data, addr, &token, &a_path, &b_path, &backup_file);
    server.kill();
    let want = if offline {
        offline_edits(&a_path, &b_path, addr, &token)
    } else {
        Vec::new()
    };
    std::fs::copy(&backup_file, data.join("server.redb")).unwrap();
    let server = ServerProcess::start(&data, &addr.to_string());
    for path in [&a_path, &b_path] {
        for &d in delays {
            eprintln!("spawn {} after {d} ms", path.display());
            let (mut child, _out) = spawn(path, addr, &token);
            std::thread::sleep(Duration::from_millis(d));
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
    eprintln!("final opens");
    let a = Db::open_synced(&a_path, config(addr, &token)).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    a.wait_pushed(LIMIT).unwrap();
    let b = Db::open_synced(&b_path, config(addr, &token)).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    b.wait_pushed(LIMIT).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    let fresh = Db::memory_synced(config(addr, &token)).unwrap();
    let ok = eventually(|| {
        let _ = fresh.wait_caught_up(LIMIT);
        let f = parts(&fresh);
        let same = parts(&a) == f && parts(&b) == f;
        if offline {
            let ids: Vec<u64> = f.iter().map(|r| r.0).collect();
            same && expected.iter().all(|r| ids.contains(&r.0))
                && want
                    .iter()
                    .all(|(id, q)| f.iter().any(|r| r.0 == *id && r.3 == *q))
                && f.len() == expected.len() + 6
        } else {
            f == expected && same
        }
    });
    if !ok {
        let diff = |name: &str, got: Vec<Row>| {
            let missing: Vec<_> = expected.iter().filter(|r| !got.contains(r)).collect();
            let extra: Vec<_> = got.iter().filter(|r| !expected.contains(r)).collect();
            format!(
                "{name}: {} rows, missing {missing:?}\n extra {extra:?}\n",
                got.len()
            )
        };
        panic!(
            "after kills {delays:?} (offline edits {want:?}):\n{}{}{}A {:?}\nB {:?}",
            diff("fresh", parts(&fresh)),
            diff("A", parts(&a)),
            diff("B", parts(&b)),
            a.sync_status(),
            b.sync_status()
        );
    }
    drop((a, b, fresh));
    server.kill();
}

#[test]
fn redteam_killed_early_while_reconciling() {
    killed_while_reconciling(&[1, 3, 6, 10, 15, 25]);
}

#[test]
fn redteam_killed_later_while_reconciling_or_pushing() {
    killed_while_reconciling(&[30, 50, 80, 120, 200, 400]);
}

#[test]
fn redteam_killed_while_reconciling_with_a_waiting_outbox() {
    killed_while_reconciling_with(&[2, 8, 15, 30, 60, 120, 250], true);
}
