//! Network benchmarks (issue #4, transport level): the raw quinn round trip on loopback as the
//! floor, and in the same run rekord's request round trip (`Session::ping`), borrow round trip
//! (a durable grant plus its pushes), and change propagation from client A's request to the
//! pushed change arriving at client B (durable commit on the server), p50 and p99.
//!
//! `cargo bench -p rekord-bench --bench net`; `REKORD_BENCH_QUICK=1` for fewer round trips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use rekord::Record;
use rekord::proto::handshake::{ClientConfig, Trees};
use rekord::proto::{Change, ChangeKind, Push};
use rekord_server::{Config, Server};
use std::time::{Duration, Instant};

/// The record the propagation case sends.
#[rekord::record(tree = "items", version = 1)]
pub struct Item {
    pub name: String,
    pub qty: u32,
}

mod common;
use common::{percentile, raw_floor};

/// Per-case samples of one rekord run: ping, borrow, propagation (A's commit request to B's
/// receipt of the pushed change).
struct Samples {
    ping: Vec<Duration>,
    borrow: Vec<Duration>,
    propagation: Vec<Duration>,
}

async fn rekord_cases(n: usize) -> Samples {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
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
    let token = server
        .store()
        .issue("bench", Trees::All, Trees::All)
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let cfg = |client: u8| ClientConfig {
        app: "bench".into(),
        client: [client; 16],
        token: token.clone(),
        pinned: None,
        cursor: 0,
        trees: vec![],
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    };
    let mut a = rekord::net::connect(addr, &cfg(1), None).await.unwrap();
    let schema = rekord::Schema::of::<Item>().to_ron().unwrap();
    a.put_schema("items", 1, &schema).await.unwrap();
    let (start, _) = a.ranges(1_000_000).await.unwrap()[0];
    let data = Item {
        name: "bolt".into(),
        qty: 1,
    }
    .__encode(Vec::new())
    .unwrap();
    let put = |id: u64| Change {
        tree: "items".into(),
        id,
        rev: 0,
        kind: ChangeKind::Put {
            version: 1,
            data: data.clone(),
        },
    };
    let mut op = 0u128;
    let mut next_op = || {
        op += 1;
        op.to_le_bytes()
    };
    // Borrow round trips: one record, borrowed and returned by A, alone on the server.
    a.changes(next_op(), vec![put(start)]).await.unwrap();
    a.return_borrow("items", start).await.unwrap();
    let mut borrow = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        a.borrow("items", start).await.unwrap();
        let dt = t.elapsed();
        a.return_borrow("items", start).await.unwrap();
        if i >= 20 {
            borrow.push(dt);
        }
    }
    // A's own pushes were buffered meanwhile; drop them.
    while a
        .next_push(Duration::from_millis(1))
        .await
        .unwrap()
        .is_some()
    {}
    let mut ping = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        a.ping().await.unwrap();
        if i >= 20 {
            ping.push(t.elapsed());
        }
    }
    // Propagation: A creates a record; B is connected and waits for the pushed change.
    let mut b = rekord::net::connect(addr, &cfg(2), None).await.unwrap();
    while let Some(p) = b.next_push(Duration::from_millis(200)).await.unwrap() {
        if matches!(p, Push::CaughtUp { .. }) {
            break;
        }
    }
    let mut propagation = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let id = start + 1 + i;
        let t = Instant::now();
        a.changes(next_op(), vec![put(id)]).await.unwrap();
        loop {
            match b.next_push(Duration::from_secs(5)).await.unwrap() {
                Some(Push::Changes(c)) if c.iter().any(|s| s.change.id == id) => break,
                Some(_) => {}
                None => panic!("change {id} did not reach B"),
            }
        }
        propagation.push(t.elapsed());
        while a
            .next_push(Duration::from_micros(1))
            .await
            .unwrap()
            .is_some()
        {}
    }
    drop((a, b));
    let _ = stop.send(());
    let _ = task.await;
    Samples {
        ping,
        borrow,
        propagation,
    }
}

fn main() {
    let quick = std::env::var_os("REKORD_BENCH_QUICK").is_some();
    let n = if quick { 500 } else { 5_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut raw = Vec::new();
    let (mut ping, mut borrow, mut prop) = (Vec::new(), Vec::new(), Vec::new());
    // Interleave rounds so drift hits both alike.
    for _ in 0..3 {
        raw.extend(rt.block_on(raw_floor(n / 3)));
        let s = rt.block_on(rekord_cases(n / 3));
        ping.extend(s.ping);
        borrow.extend(s.borrow);
        prop.extend(s.propagation);
    }
    for v in [&mut raw, &mut ping, &mut borrow, &mut prop] {
        v.sort();
    }
    let (r50, r99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut out = format!(
        "\n## net ({} samples per case, loopback; ratios to the raw quinn round trip)\n\n| case | p50 | p50 / raw | p99 | p99 / raw |\n|---|---|---|---|---|\n| raw quinn round trip (floor) | {:.1} µs | 1.00x | {:.1} µs | 1.00x |\n",
        raw.len(),
        us(r50),
        us(r99)
    );
    for (name, v) in [
        ("rekord request round trip (ping)", &ping),
        ("rekord borrow round trip (durable grant + push)", &borrow),
        (
            "change propagation A -> server -> B (durable commit, transport level)",
            &prop,
        ),
    ] {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        out.push_str(&format!(
            "| {name} | {:.1} µs | **{:.2}x** | {:.1} µs | **{:.2}x** |\n",
            us(p50),
            us(p50) / us(r50),
            us(p99),
            us(p99) / us(r99)
        ));
    }
    println!("{out}");
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into());
    let _ = std::fs::write(format!("{dir}/bench-net.md"), out);
}
