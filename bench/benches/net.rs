//! Network benchmarks (issue #4, first slice): the raw quinn round trip on loopback as the
//! floor, and rekord's request round trip (`Session::ping`: a framed, validated request and
//! response on the session stream of a pinned, authenticated connection), in the same run.
//!
//! `cargo bench -p rekord-bench --bench net`; `REKORD_BENCH_QUICK=1` for fewer round trips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use quinn::rustls;
use rekord::proto::handshake::{ClientConfig, Trees};
use rekord_server::{Config, Server};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn raw_floor(n: usize) -> Vec<Duration> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let server_cfg = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key).unwrap();
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        if let Some(incoming) = server.accept().await {
            let conn = incoming.await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut buf = [0u8; 8];
            while recv.read_exact(&mut buf).await.is_ok() {
                if send.write_all(&buf).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_cfg);
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 8];
    for i in 0..n + 50 {
        let t = Instant::now();
        send.write_all(&(i as u64).to_le_bytes()).await.unwrap();
        recv.read_exact(&mut buf).await.unwrap();
        if i >= 50 {
            out.push(t.elapsed());
        }
    }
    conn.close(0u32.into(), b"done");
    out
}

async fn rekord_ping(n: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        app: "bench".into(),
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
    let cfg = ClientConfig {
        app: "bench".into(),
        client: [3; 16],
        token,
        pinned: None,
        cursor: 0,
        trees: vec![],
    };
    let mut session = rekord::net::connect(addr, &cfg, None).await.unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t = Instant::now();
        session.ping().await.unwrap();
        if i >= 50 {
            out.push(t.elapsed());
        }
    }
    drop(session);
    let _ = stop.send(());
    let _ = task.await;
    out
}

fn main() {
    let quick = std::env::var_os("REKORD_BENCH_QUICK").is_some();
    let n = if quick { 500 } else { 5_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    // Interleave rounds so drift hits both alike.
    for _ in 0..3 {
        raw.extend(rt.block_on(raw_floor(n / 3)));
        ours.extend(rt.block_on(rekord_ping(n / 3)));
    }
    raw.sort();
    ours.sort();
    let (r50, r99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
    let (k50, k99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
    let out = format!(
        "\n## net ({} round trips each, loopback)\n\n| case | raw quinn round trip | rekord request round trip (ping) | ratio |\n|---|---|---|---|\n| p50 | {:.1} µs | {:.1} µs | **{:.2}x** |\n| p99 | {:.1} µs | {:.1} µs | **{:.2}x** |\n",
        raw.len(),
        r50.as_secs_f64() * 1e6,
        k50.as_secs_f64() * 1e6,
        k50.as_secs_f64() / r50.as_secs_f64(),
        r99.as_secs_f64() * 1e6,
        k99.as_secs_f64() * 1e6,
        k99.as_secs_f64() / r99.as_secs_f64(),
    );
    println!("{out}");
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "../target".into());
    let _ = std::fs::write(format!("{dir}/bench-net.md"), out);
}
