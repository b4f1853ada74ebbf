//! Synced-database benchmarks (issue #4, database level), each beside the raw quinn floor
//! measured in the same run:
//!
//! - change propagation: from the return of a commit on client A (`Tree::create`) to the
//!   event on client B, p50 and p99 over at least 1,000 changes;
//! - fan-out: the same, until all of 8 clients have the event;
//! - bulk sync: a fresh client catching up with 100,000 records (records/s), beside raw
//!   quinn moving the same number of equally sized messages over one stream;
//! - (issue #5) reconnect catch-up after 10,000 offline changes; conflict resolution: 2,000
//!   offline optimistic edits each conflicting with another client's edit, merged three-way,
//!   beside the same reconnect without conflicts; propagation p50/p99 while 50 clients write.
//!
//! `cargo bench -p rekord-bench --bench sync`; `REKORD_BENCH_QUICK=1` for a smaller run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
use common::{fill, percentile, raw_bulk, raw_floor, raw_relay};

use rekord::proto::handshake::Trees;
use rekord::{Db, Event, EventKind, Retry, SyncConfig, Tree};
use rekord_server::{Config, Server};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[rekord::record(tree = "items", version = 1)]
pub struct Item {
    pub name: String,
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(120);

struct Running {
    addr: SocketAddr,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), rekord_server::ServerError>>,
    _dir: tempfile::TempDir,
}

fn start(rt: &tokio::runtime::Runtime) -> Running {
    start_in(
        rt,
        tempfile::tempdir().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
}

/// Starts a server with its data in `dir`, listening on `listen`.
fn start_in(rt: &tokio::runtime::Runtime, dir: tempfile::TempDir, listen: SocketAddr) -> Running {
    let _guard = rt.enter();
    let server = Server::bind(Config {
        listen,
        data: dir.path().to_path_buf(),
        app: "bench".into(),
        // Every client of a benchmark shares one token: its request rate is not what is
        // measured (the defaults would make the 50-client load wait).
        limits: rekord_server::Limits {
            requests_per_second: 1_000_000,
            ..Default::default()
        },
        web: Default::default(),
    })
    .unwrap();
    let addr = server.local_addr().unwrap();
    let token = match server.store().issue("bench", Trees::All, Trees::All) {
        Ok(t) => t,
        // Restarted on the same data: the token exists; issue another name.
        Err(_) => server
            .store()
            .issue(
                &format!("bench-{}", std::process::id()),
                Trees::All,
                Trees::All,
            )
            .unwrap(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        token,
        stop,
        task,
        _dir: dir,
    }
}

fn stop(rt: &tokio::runtime::Runtime, r: Running) -> tempfile::TempDir {
    let _ = r.stop.send(());
    let _ = rt.block_on(r.task);
    r._dir
}

fn client(r: &Running) -> Db {
    let cfg = SyncConfig::new(r.addr, "bench", r.token.clone())
        .retry(Retry::default().initial(Duration::from_millis(10)));
    let db = Db::memory_synced(cfg).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    db
}

fn create(t: &Tree<Item>, i: u32) -> rekord::Key<Item> {
    let start = Instant::now();
    loop {
        match t.create(&Item {
            name: "bolt".into(),
            qty: i,
        }) {
            Ok(k) => return k,
            Err(rekord::Error::IdsExhausted) if start.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Waits until `sub` delivers the creation of `key` (bounded).
fn wait_created(sub: &rekord::Subscription, key: rekord::RawKey) {
    let start = Instant::now();
    loop {
        match sub.recv_blocking() {
            Some(Event::Record(r)) if r.key == key && r.kind == EventKind::Created => return,
            Some(_) => {}
            None => panic!("database closed"),
        }
        assert!(start.elapsed() < LIMIT, "change {key} did not arrive");
    }
}

/// Creates `n` records on `ta` (after 20 for warm-up), each timed from the commit's
/// return until `sub` (another client's subscription) delivers it.
fn measure_propagation(ta: &Tree<Item>, sub: &rekord::Subscription, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let key = create(ta, i as u32);
        let t = Instant::now();
        wait_created(sub, key.raw());
        if i >= 20 {
            out.push(t.elapsed());
        }
    }
    out
}

/// The benchmarks' runtime: two worker threads, like the machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Propagation A -> B and fan-out A -> 8 clients: `n` changes each.
fn propagation(rt: &tokio::runtime::Runtime, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let r = start(rt);
    let a = client(&r);
    let b = client(&r);
    let ta = a.tree::<Item>().unwrap();
    let sub = b.subscribe();
    let prop = measure_propagation(&ta, &sub, n);
    drop((sub, b));
    let fans: Vec<Db> = (0..8).map(|_| client(&r)).collect();
    let subs: Vec<_> = fans.iter().map(Db::subscribe).collect();
    let mut fan = Vec::with_capacity(n / 4);
    for i in 0..n / 4 + 10 {
        let key = create(&ta, i as u32);
        let t = Instant::now();
        for s in &subs {
            wait_created(s, key.raw());
        }
        if i >= 10 {
            fan.push(t.elapsed());
        }
    }
    drop((subs, fans, ta, a));
    stop(rt, r);
    (prop, fan)
}

/// Fills a server with `n` records (transport level, 1,000 per request), then times a fresh
/// synced client from opening to caught up. Returns (seconds, encoded record size).
fn bulk(rt: &tokio::runtime::Runtime, n: usize) -> (f64, usize) {
    let r = start(rt);
    let item = Item {
        name: "bolt".into(),
        qty: 1,
    };
    let size = rt.block_on(fill(r.addr, "bench", &r.token, &item, n));
    let t = Instant::now();
    let fresh = client(&r);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(fresh.tree::<Item>().unwrap().len().unwrap(), n as u64);
    drop(fresh);
    stop(rt, r);
    (secs, size)
}

/// Reconnect catch-up: client A creates `n` records while the server is down; the server
/// comes back; returns the seconds from A's reconnection until client B (waiting,
/// connected after the restart) holds all of them.
fn reconnect(rt: &tokio::runtime::Runtime, n: usize) -> f64 {
    let r = start(rt);
    let addr = r.addr;
    let token = r.token.clone();
    let cfg = SyncConfig::new(addr, "bench", token)
        .retry(
            Retry::default()
                .initial(Duration::from_millis(5))
                .max(Duration::from_millis(20)),
        )
        .range_size(n as u64 * 2)
        .idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30));
    let a = Db::memory_synced(cfg.clone()).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    let ta = a.tree::<Item>().unwrap();
    create(&ta, 0);
    a.wait_pushed(LIMIT).unwrap();
    let dir = stop(rt, r);
    for i in 0..n {
        create(&ta, i as u32);
    }
    let b = Db::memory_synced(cfg).unwrap();
    // The clock starts when A is connected again (not when the server restarts: a QUIC
    // handshake attempted while the port was closed waits for its ~1 s retransmission).
    let sub = a.subscribe();
    let connected = std::thread::spawn(move || {
        loop {
            match sub.recv_blocking() {
                Some(Event::Sync(rekord::SyncEvent::Connected { .. })) => return Instant::now(),
                Some(_) => {}
                None => panic!("A closed"),
            }
        }
    });
    let r = start_in(rt, dir, addr);
    let tb = b.tree::<Item>().unwrap();
    let deadline = Instant::now() + LIMIT;
    while tb.len().unwrap() < n as u64 + 1 {
        assert!(Instant::now() < deadline, "B did not converge");
        std::thread::sleep(Duration::from_millis(1));
    }
    let done = Instant::now();
    let t = connected.join().unwrap();
    a.wait_pushed(LIMIT).unwrap();
    let secs = done.duration_since(t).as_secs_f64();
    drop((ta, tb, a, b));
    stop(rt, r);
    secs
}

/// Conflict resolution: A edits `n` records of an optimistic tree (three-way merge) while
/// offline, B edits the same records online (another field); A reconnects and merges every
/// one. With `conflicting` false, B does not edit (the same reconnect without conflicts).
/// Seconds from A's reconnection until A's outbox is empty and B has A's edits merged.
fn conflicts(rt: &tokio::runtime::Runtime, n: usize, conflicting: bool) -> (f64, u64) {
    let r = start(rt);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rekord");
    let cfg = SyncConfig::new(r.addr, "bench", r.token.clone())
        .retry(
            Retry::default()
                .initial(Duration::from_millis(5))
                .max(Duration::from_millis(20)),
        )
        .range_size(n as u64 * 2)
        .timeout(Duration::from_secs(30))
        .optimistic("items", rekord::Merge::three_way());
    let a = Db::open_synced(&path, cfg.clone()).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    let b = Db::memory_synced(cfg.clone()).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    let (ta, tb) = (a.tree::<Item>().unwrap(), b.tree::<Item>().unwrap());
    let keys: Vec<_> = (0..n).map(|i| create(&ta, i as u32)).collect();
    a.wait_pushed(LIMIT).unwrap();
    let deadline = Instant::now() + LIMIT;
    while tb.len().unwrap() < n as u64 {
        assert!(Instant::now() < deadline, "B did not get the records");
        std::thread::sleep(Duration::from_millis(1));
    }
    a.stop_sync();
    for k in &keys {
        ta.update(*k, |it| it.name = "edited offline".into())
            .unwrap();
    }
    if conflicting {
        for k in &keys {
            tb.update(*k, |it| it.qty += 1_000_000).unwrap();
        }
        b.wait_pushed(LIMIT).unwrap();
    }
    drop((ta, a));
    let a = Db::open_synced(&path, cfg).unwrap();
    let sub = a.subscribe();
    let connected = std::thread::spawn(move || {
        loop {
            match sub.recv_blocking() {
                Some(Event::Sync(rekord::SyncEvent::Connected { .. })) => return Instant::now(),
                Some(_) => {}
                None => panic!("A closed"),
            }
        }
    });
    let deadline = Instant::now() + LIMIT;
    loop {
        let merged = keys.iter().all(|k| {
            tb.get(*k).is_ok_and(|it| {
                it.name == "edited offline" && (!conflicting || it.qty >= 1_000_000)
            })
        });
        if merged && a.sync_status().unwrap().outbox == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the conflicts were not resolved");
        std::thread::sleep(Duration::from_millis(1));
    }
    let done = Instant::now();
    let t = connected.join().unwrap();
    let merged = a.sync_status().unwrap().conflicts;
    drop((tb, a, b));
    stop(rt, r);
    (done.duration_since(t).as_secs_f64(), merged)
}

/// Propagation A -> B while 50 other clients write (each a create and an update every
/// ~100 ms: about 1,000 changes/s in all); `n` changes.
fn under_load(rt: &tokio::runtime::Runtime, n: usize) -> Vec<Duration> {
    let r = start(rt);
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..50)
        .map(|_| {
            let db = client(&r);
            let stop_flag = stop_flag.clone();
            std::thread::spawn(move || {
                let t = db.tree::<Item>().unwrap();
                let mut i = 0;
                while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = create(&t, i);
                    t.update(k, |it| it.qty += 1).unwrap();
                    i += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                db
            })
        })
        .collect();
    let a = client(&r);
    let b = client(&r);
    let ta = a.tree::<Item>().unwrap();
    let sub = b.subscribe();
    let out = measure_propagation(&ta, &sub, n);
    stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let dbs: Vec<Db> = load.into_iter().map(|h| h.join().unwrap()).collect();
    drop((sub, ta, a, b, dbs));
    stop(rt, r);
    out
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let quick = std::env::var_os("REKORD_BENCH_QUICK").is_some();
    if let Ok(n) = std::env::var("REKORD_BENCH_ONLY_CONFLICTS") {
        let rt = runtime();
        let n: usize = n.parse().unwrap();
        let (plain, _) = conflicts(&rt, n, false);
        let (secs, merged) = conflicts(&rt, n, true);
        println!(
            "reconnect {n} optimistic edits: {plain:.3} s; with {merged} conflicts: {secs:.3} s"
        );
        return;
    }
    if let Ok(n) = std::env::var("REKORD_BENCH_ONLY_PROPAGATION") {
        // The raw floor and propagation alone, 3 interleaved rounds (for working on latency).
        let rt = runtime();
        let n: usize = n.parse().unwrap();
        let (mut raw, mut prop, mut relay) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            raw.extend(rt.block_on(raw_floor(1000)));
            prop.extend(propagation(&rt, n / 3).0);
            relay.extend(raw_relay(&rt, n / 3, Duration::from_millis(1)));
        }
        raw.sort();
        prop.sort();
        relay.sort();
        let (r, p, l) = (
            percentile(&raw, 0.5),
            percentile(&prop, 0.5),
            percentile(&relay, 0.5),
        );
        println!(
            "raw p50 {r:?}; raw relay (A -> durable commit -> B) p50 {l:?}, p99 {:?}; \
             propagation p50 {p:?} ({:.1}x raw, {:.2}x relay), p99 {:?}",
            percentile(&relay, 0.99),
            p.as_secs_f64() / r.as_secs_f64(),
            p.as_secs_f64() / l.as_secs_f64(),
            percentile(&prop, 0.99)
        );
        return;
    }
    if let Ok(n) = std::env::var("REKORD_BENCH_ONLY_RECONNECT") {
        let rt = runtime();
        let secs = reconnect(&rt, n.parse().unwrap());
        println!("reconnect {n}: {secs:.3} s");
        return;
    }
    let (n, records) = if quick {
        (300, 20_000)
    } else {
        (1_200, 100_000)
    };
    let rt = runtime();
    let (mut raw, mut prop, mut fan) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bulk_secs, mut raw_bulk_secs) = (Vec::new(), Vec::new());
    // Interleaved rounds, so drift hits every case alike.
    for _ in 0..3 {
        raw.extend(rt.block_on(raw_floor(1000)));
        let (p, f) = propagation(&rt, n / 3);
        prop.extend(p);
        fan.extend(f);
        let (secs, size) = bulk(&rt, records);
        bulk_secs.push(secs);
        raw_bulk_secs.push(rt.block_on(raw_bulk(records, size + 40)));
    }
    // One run each of the issue #5 cases (they are long), after the interleaved rounds.
    let offline = if quick { 2_000 } else { 10_000 };
    let reconnect_secs = reconnect(&rt, offline);
    let contested = if quick { 300 } else { 2_000 };
    let (plain_secs, _) = conflicts(&rt, contested, false);
    let (conflict_secs, merged) = conflicts(&rt, contested, true);
    assert_eq!(merged, contested as u64, "every record conflicted once");
    let mut loaded = under_load(&rt, if quick { 200 } else { 1_000 });
    raw.extend(rt.block_on(raw_floor(1000)));
    for v in [&mut raw, &mut prop, &mut fan, &mut loaded] {
        v.sort();
    }
    let (r50, r99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut out = format!(
        "\n## sync (synced databases on loopback; ratios to the raw quinn floor of the same run)\n\n| case | p50 | p50 / raw | p99 | p99 / raw |\n|---|---|---|---|---|\n| raw quinn round trip (floor, {} samples) | {:.1} µs | 1.00x | {:.1} µs | 1.00x |\n",
        raw.len(),
        us(r50),
        us(r99)
    );
    for (name, v) in [
        ("propagation: commit on A -> event on B", &prop),
        ("fan-out: commit on A -> event on all of 8 clients", &fan),
        (
            "propagation A -> B while 50 clients write ~1,000 changes/s",
            &loaded,
        ),
    ] {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        out.push_str(&format!(
            "| {name} ({} changes) | {:.1} µs | **{:.1}x** | {:.1} µs | **{:.1}x** |\n",
            v.len(),
            us(p50),
            us(p50) / us(r50),
            us(p99),
            us(p99) / us(r99)
        ));
    }
    let med = |v: &[f64]| rekord_bench::median(v);
    let (ours, floor) = (
        records as f64 / med(&bulk_secs),
        records as f64 / med(&raw_bulk_secs),
    );
    out.push_str(&format!(
        "\n| bulk sync of {records} records to a fresh client (median of {}) | records/s | ratio |\n|---|---|---|\n| raw quinn: {records} messages of the same size over one stream | {:.0} | 1.00x |\n| rekord: open a synced database until caught up | {:.0} | **{:.1}x slower** |\n",
        bulk_secs.len(),
        floor,
        ours,
        floor / ours
    ));
    out.push_str(&format!(
        "\n| reconnect catch-up | time | per change | per change / raw round trip |\n|---|---|---|---|\n| {offline} changes made offline on A, until B (online) has them all | {:.2} s | {:.1} µs | {:.2}x |\n",
        reconnect_secs,
        reconnect_secs * 1e6 / offline as f64,
        reconnect_secs * 1e6 / offline as f64 / us(r50),
    ));
    out.push_str(&format!(
        "\n| conflict resolution (three-way merge) | time | per record | conflicts/s | per record / raw round trip |\n|---|---|---|---|---|\n| {contested} offline optimistic edits, no conflict (baseline) | {:.2} s | {:.1} µs | - | {:.2}x |\n| the same {contested} edits, each conflicting with another client's edit | {:.2} s | {:.1} µs | **{:.0}** | {:.2}x |\n",
        plain_secs,
        plain_secs * 1e6 / contested as f64,
        plain_secs * 1e6 / contested as f64 / us(r50),
        conflict_secs,
        conflict_secs * 1e6 / contested as f64,
        contested as f64 / conflict_secs,
        conflict_secs * 1e6 / contested as f64 / us(r50),
    ));
    println!("{out}");
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into());
    let _ = std::fs::write(format!("{dir}/bench-sync.md"), out);
}
