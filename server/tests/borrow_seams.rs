//! Borrows at the seams (issue 11): a borrow the application was granted survives an abort
//! right after `borrow` returned, and the return sent before it is not replayed over the
//! grant; a borrow in a tree outside the replica's subscription is granted and applied, not
//! left waiting for a push the server never sends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Duration;

use rekord::{Db, Error, Key, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, token};

#[rekord::record(tree = "a", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct A {
    pub n: u32,
}

#[rekord::record(tree = "b", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct B {
    pub n: u32,
}

const LIMIT: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "REKORD_BORROW_CHILD";

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token).timeout(Duration::from_secs(10))
}

/// Entry point of a child process (a no-op in a normal test run): creates a record, pushes,
/// returns it, pushes, borrows it again, prints the key and its holder number, and aborts.
#[test]
fn borrow_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.splitn(3, '|');
    let (path, addr, token) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let db = Db::open_synced(path, config(addr.parse().unwrap(), token)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let a = db.tree::<A>().unwrap();
    let k = a.create(&A { n: 1 }).unwrap();
    db.wait_pushed(LIMIT).unwrap();
    a.return_borrow(k).unwrap();
    db.wait_pushed(LIMIT).unwrap();
    a.borrow(k).unwrap();
    println!("@ {} {}", k.id(), db.replica());
    std::process::abort();
}

#[test]
fn a_granted_borrow_survives_an_abort_right_after_borrow_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let other = Db::memory_synced(config(server.addr, &token)).unwrap();
    other.wait_caught_up(LIMIT).unwrap();
    for round in 0..5 {
        let path = tmp.path().join(format!("r{round}.rekord"));
        let mut child = process::child(
            "borrow_child_process",
            CHILD_ENV,
            format!("{}|{}|{token}", path.display(), server.addr),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let mut said = String::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some((_, l)) = line.split_once("@ ") {
                said = l.to_owned();
            }
        }
        assert!(!child.wait().unwrap().success(), "the child aborts");
        let mut words = said.split_whitespace();
        let id: u64 = words
            .next()
            .expect("the child printed its key")
            .parse()
            .unwrap();
        let me: u32 = words.next().unwrap().parse().unwrap();
        let k = Key::<A>::new(id, 0);

        // Reopened where no server answers: the borrow is still held here.
        let offline = config("127.0.0.1:9".parse().unwrap(), &token);
        let db = Db::open_synced(&path, offline).unwrap();
        let held = db.tree::<A>().unwrap().meta(k).unwrap().holder;
        assert_eq!(
            held, me,
            "round {round}: the granted borrow was lost in the abort"
        );
        drop(db);

        // Reopened against the server: nothing replayed frees it; nobody else gets it.
        let db = Db::open_synced(&path, config(server.addr, &token)).unwrap();
        db.wait_pushed(LIMIT).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        assert_eq!(db.tree::<A>().unwrap().meta(k).unwrap().holder, me);
        let theirs = other.tree::<A>().unwrap();
        match theirs.borrow(k) {
            Err(Error::AlreadyBorrowed { holder, .. }) => assert_eq!(holder, me),
            r => panic!("round {round}: another replica's borrow: {r:?}"),
        }
        drop(db);
    }
    drop(other);
    server.kill();
}

#[test]
fn a_borrow_outside_the_subscription_is_granted_and_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let w = Db::memory_synced(config(server.addr, &token)).unwrap();
    w.wait_caught_up(LIMIT).unwrap();
    let wb = w.tree::<B>().unwrap();
    let k = wb.create(&B { n: 1 }).unwrap();
    wb.return_borrow(k).unwrap();
    w.wait_pushed(LIMIT).unwrap();

    // R holds the record from an earlier session, and now receives only tree `a`.
    let path = tmp.path().join("r.rekord");
    let r = Db::open_synced(&path, config(server.addr, &token)).unwrap();
    r.wait_caught_up(LIMIT).unwrap();
    drop(r);
    let r = Db::open_synced(&path, config(server.addr, &token).trees(["a"])).unwrap();
    r.wait_caught_up(LIMIT).unwrap();
    let start = std::time::Instant::now();
    r.tree::<B>().unwrap().borrow(k).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the borrow waited {:?} for a push the server never sends",
        start.elapsed()
    );
    // The server holds it for R, and R is still connected.
    match wb.borrow(k) {
        Err(Error::AlreadyBorrowed { holder, .. }) => assert_eq!(holder, r.replica()),
        other => panic!("W's borrow: {other:?}"),
    }
    assert!(r.sync_status().unwrap().online);
    drop((wb, w, r));
    server.kill();
}
