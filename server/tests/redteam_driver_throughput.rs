//! Red team of the built-in sync driver: how long a fresh replica takes to catch up with
//! 24 MiB of blobs over loopback QUIC, and what interrupts it (each `Disconnected` with its
//! reason), with the default request timeout and with a short one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use rekord::{Db, Event, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, config, token};

const LIMIT: Duration = Duration::from_secs(120);

#[rekord::record(tree = "blobs", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub name: String,
    pub data: Vec<u8>,
}

fn fill(server: &ServerProcess, dir: &std::path::Path, token: &str) {
    let db = Db::open_synced(
        dir.join("w.rekord"),
        config(server.addr, token).range_size(1_000),
    )
    .unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    for chunk in 0..6u32 {
        db.write(|b| {
            for j in 0..8u32 {
                b.create(&Blob {
                    name: format!("blob{chunk}-{j}"),
                    data: vec![(chunk * 8 + j) as u8; 512 * 1024],
                })?;
            }
            Ok(())
        })
        .unwrap();
    }
    db.wait_pushed(LIMIT).unwrap();
}

fn catch_up(
    server: &ServerProcess,
    path: &std::path::Path,
    cfg: rekord::SyncConfig,
) -> (Duration, Vec<String>) {
    let start = Instant::now();
    let db = Db::open_synced(path, cfg).unwrap();
    let events = db.subscribe();
    let r = db.wait_caught_up(LIMIT);
    let took = start.elapsed();
    let mut reasons = Vec::new();
    for e in events.try_iter() {
        if let Event::Sync(SyncEvent::Disconnected { reason, .. }) = e {
            reasons.push(reason);
        }
    }
    r.unwrap_or_else(|e| panic!("not caught up: {e}; {reasons:?}"));
    let n = db.tree::<Blob>().unwrap().len().unwrap();
    assert_eq!(n, 48);
    let _ = server;
    (took, reasons)
}

/// With the default timeout (10 s) and with 2 s: the catch-up of 24 MiB is not cut off by
/// request timeouts and ends within 30 s.
///
/// FAILS (debug build, 2-core machine): with a 2 s timeout the catch-up is cut off by 15
/// "a request timed out after 2s" and takes about 42 s (12 s with the default timeout).
/// Not the driver's doing as far as measured: the same catch-up takes as long through the
/// client run directly (`the_driver_catches_up_about_as_fast_as_the_client_run_directly`).
#[test]
#[ignore = "fails: a 2 s request timeout cuts a 24 MiB catch-up off 15 times (about 70 s)"]
fn a_24_mib_catch_up_is_not_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    fill(&server, tmp.path(), &token);
    let (took, reasons) = catch_up(
        &server,
        &tmp.path().join("d.rekord"),
        config(server.addr, &token),
    );
    eprintln!(
        "default timeout: {took:?}, {} disconnects: {reasons:?}",
        reasons.len()
    );
    let (took2, reasons2) = catch_up(
        &server,
        &tmp.path().join("q.rekord"),
        config(server.addr, &token)
            .timeout(Duration::from_secs(2))
            .idle_timeout(Duration::from_secs(1)),
    );
    eprintln!(
        "2 s timeout: {took2:?}, {} disconnects: {reasons2:?}",
        reasons2.len()
    );
    assert!(reasons.is_empty(), "{reasons:?}");
    assert!(reasons2.is_empty(), "{reasons2:?}");
    assert!(took < Duration::from_secs(30) && took2 < Duration::from_secs(30));
}

/// The same catch-up through the client run directly (`Db::open_synced_driven` on a
/// current-thread runtime of its own: no engine, no driver loop, the client opening its
/// own QUIC connection), as before the driver, and through the built-in driver: the driver
/// takes at most twice as long.
#[test]
#[ignore = "a timing comparison (a benchmark's work, not CI's): 11.9 s directly, 11.3 s through the driver, debug build, 2-core VM"]
fn the_driver_catches_up_about_as_fast_as_the_client_run_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    fill(&server, tmp.path(), &token);

    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let (path, cfg) = (
        tmp.path().join("direct.rekord"),
        config(server.addr, &token),
    );
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (db, driver) = runtime
            .block_on(async { Db::open_synced_driven(path, cfg) })
            .unwrap();
        tx.send(db).unwrap();
        runtime.block_on(driver);
    });
    let db = rx.recv().unwrap();
    loop {
        let s = db.sync_status().unwrap();
        if s.online && s.caught_up {
            break;
        }
        assert!(start.elapsed() < LIMIT, "direct: not caught up: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let direct = start.elapsed();
    assert_eq!(db.tree::<Blob>().unwrap().len().unwrap(), 48);
    drop(db);
    thread.join().unwrap();

    let (driven, reasons) = catch_up(
        &server,
        &tmp.path().join("driver.rekord"),
        config(server.addr, &token),
    );
    eprintln!(
        "24 MiB catch-up: client run directly {direct:?}, through the driver {driven:?} ({reasons:?})"
    );
    assert!(
        driven < direct * 2 + Duration::from_secs(1),
        "through the driver {driven:?}, directly {direct:?}"
    );
}
