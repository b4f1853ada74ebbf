//! Two builds that disagree about a tree cannot corrupt it (issue 11): builds X and Y declare
//! different types for the same tree and version. X syncs first; Y's records are refused by
//! the server (its check is exact: no bytes that belong to no part of the record), reported
//! on Y as rejected writes; X's records, which Y cannot read, are skipped on Y and reported;
//! Y keeps syncing its other trees instead of reconnecting for ever.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use rekord::{Db, Event, Retry, SyncConfig, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{APP, ServerProcess, token};

mod x {
    /// Build X's type.
    #[rekord::record(tree = "s", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct SA {
        pub name: String,
    }
}

mod y {
    /// Build Y's type: same tree, same version, another shape.
    #[rekord::record(tree = "s", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct SB {
        pub n: u64,
        pub name: String,
    }
}

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
}

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_tree_two_builds_disagree_about_is_refused_not_corrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let cfg = SyncConfig::new(server.addr, APP, &token).retry(
        Retry::default()
            .initial(Duration::from_millis(20))
            .max(Duration::from_millis(200)),
    );
    // Y gets its ids first, then works offline.
    let ypath = tmp.path().join("y.rekord");
    {
        let y = Db::open_synced(&ypath, cfg.clone()).unwrap();
        y.wait_caught_up(LIMIT).unwrap();
    }
    let xdb = Db::memory_synced(cfg.clone()).unwrap();
    xdb.wait_caught_up(LIMIT).unwrap();
    let xs = xdb.tree::<x::SA>().unwrap();
    let xk = xs
        .create(&x::SA {
            name: "alice".into(),
        })
        .unwrap();
    xdb.wait_pushed(LIMIT).unwrap();

    let yk = {
        let offline = SyncConfig::new("127.0.0.1:9".parse().unwrap(), APP, &token);
        let y = Db::open_synced(&ypath, offline).unwrap();
        y.tree::<y::SB>()
            .unwrap()
            .create(&y::SB {
                n: 7,
                name: "bob".into(),
            })
            .unwrap()
    };
    let (ydb, events) = Db::open_synced_subscribed(&ypath, cfg.clone()).unwrap();
    let ys = ydb.tree::<y::SB>().unwrap();
    // X adds a record of another tree after that: Y must still receive it.
    let xp = xdb.tree::<Part>().unwrap();
    let pk = xp.create(&Part { name: "nut".into() }).unwrap();
    xdb.wait_pushed(LIMIT).unwrap();

    let start = Instant::now();
    let (mut rejected, mut skipped) = (None, None);
    while rejected.is_none() || skipped.is_none() {
        match events.recv_timeout(Duration::from_millis(100)) {
            Some(Event::Sync(SyncEvent::Rejected { reason, .. })) => rejected = Some(reason),
            Some(Event::Sync(SyncEvent::Skipped { tree, reason, .. })) => {
                assert_eq!(tree, "s");
                skipped = Some(reason);
            }
            _ => {}
        }
        assert!(
            start.elapsed() < LIMIT,
            "Y did not report both: rejected {rejected:?}, skipped {skipped:?}"
        );
    }
    eprintln!("rejected: {rejected:?}\nskipped: {skipped:?}");
    // Y's record never reached the server; X's data is intact.
    ydb.wait_pushed(LIMIT).unwrap();
    // The refused create is undone here once the record is resynced from the server.
    let start = Instant::now();
    while ys.contains(yk).unwrap() {
        assert!(start.elapsed() < LIMIT, "Y's refused create was not undone");
        std::thread::sleep(Duration::from_millis(10));
    }

    let fresh = Db::memory_synced(cfg).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    let fs = fresh.tree::<x::SA>().unwrap();
    assert_eq!(fs.len().unwrap(), 1);
    assert_eq!(fs.get(xk).unwrap().name, "alice");
    // Y still syncs: it has the other tree's record and stays connected.
    let yp = ydb.tree::<Part>().unwrap();
    let start = Instant::now();
    while !yp.contains(pk).unwrap() {
        assert!(start.elapsed() < LIMIT, "Y stopped syncing its other trees");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ydb.sync_status().unwrap().online);
    drop((xs, xp, ys, yp, fs, xdb, ydb, fresh));
    server.kill();
}
