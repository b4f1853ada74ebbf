//! Browser replicas beside native ones, in one run (issue 16): the raw WebTransport echo round
//! trip from a page of headless Chromium and the raw quinn round trip natively; the raw cost of
//! one durable commit (redb, fsync) on this disk; propagation native -> native, native ->
//! browser and browser -> native (commit on A to the event on B, over a real `rekord-server`
//! on loopback); bulk sync of 100,000 records into a fresh browser replica beside a fresh
//! native one.
//!
//! A propagation sample starts before A's create begins, so it includes A's own commit; the
//! native senders' rows are also given from the end of A's commit (each create's duration
//! taken off its sample), the instant the change exists on A.
//!
//! The floor of propagation is one round trip plus one durable commit (the server commits a
//! change durably before anyone hears of it); ratios are to that floor of the same run.
//! Browser timestamps are `performance.timeOrigin + performance.now()` (microsecond-grained:
//! the page is cross-origin isolated), native ones `SystemTime::now()`: the same machine's
//! wall clock.
//!
//! Needs the built web example (`examples/web/build.sh`), node with `npm ci` done in
//! `examples/web/tests`, and Chromium. `REKORD_BENCH_QUICK=1` for a short run.
//!
//! ```text
//! cargo bench -p rekord-bench --bench web
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{fill, percentile, raw_floor, raw_relay};
use rekord::proto::handshake::Trees;
use rekord::{Db, Event, EventKind, Key, SyncConfig};
use rekord_server::{Config, Server};

const APP: &str = "bench";

/// The web example's part (the same schema as `examples/web/src/app.rs`).
#[rekord::record(tree = "parts")]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// What it is.
    pub name: String,
    /// How many are in stock.
    pub qty: u32,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn epoch_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e6
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A page of headless Chromium, through `examples/web/tests/relay.mjs`.
struct Page {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Page {
    fn launch(port: u16) -> Page {
        let tmp = repo().join("target/chrome-tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut child = Command::new("node")
            .arg(repo().join("examples/web/tests/relay.mjs"))
            .env("PAGE_PORT", port.to_string())
            .env("TMPDIR", &tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node, the built web example and Chromium are needed");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut page = Page {
            child,
            stdin,
            stdout,
        };
        page.answer().unwrap();
        page
    }

    fn answer(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match (v.get("ok"), v.get("err")) {
            (Some(ok), _) => Ok(ok.clone()),
            (_, Some(err)) => Err(err.to_string()),
            _ => panic!("relay said {line:?}"),
        }
    }

    fn eval(&mut self, js: &str) -> serde_json::Value {
        writeln!(
            self.stdin,
            "{}",
            serde_json::json!({"op": "eval", "js": js})
        )
        .unwrap();
        self.stdin.flush().unwrap();
        self.answer().unwrap_or_else(|e| panic!("{js}: {e}"))
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", serde_json::json!({"op": "close"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// Microsecond samples from a comma-separated list.
fn samples(v: &serde_json::Value) -> Vec<Duration> {
    v.as_str()
        .unwrap()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| Duration::from_secs_f64(s.parse::<f64>().unwrap().max(0.0) / 1e6))
        .collect()
}

/// A certificate Chromium accepts by hash (`serverCertificateHashes`: ECDSA P-256, valid
/// under 14 days) for 127.0.0.1: the certificate, its key and its hash.
fn web_cert() -> (
    quinn::rustls::pki_types::CertificateDer<'static>,
    quinn::rustls::pki_types::PrivateKeyDer<'static>,
    String,
) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(10);
    let cert = params.self_signed(&key).unwrap();
    let hash = rekord::net::fingerprint(cert.der());
    let der = quinn::rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let key = quinn::rustls::pki_types::PrivateKeyDer::Pkcs8(
        quinn::rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    );
    (der, key, hash)
}

/// A WebTransport echo server (web-transport-quinn, the certificate Chromium accepts by
/// hash): the raw floor of a page's round trip. Its port and certificate hash.
fn echo_server(rt: &tokio::runtime::Runtime) -> (u16, String) {
    let (der, key, hash) = web_cert();
    let server = rt.block_on(async {
        web_transport_quinn::ServerBuilder::new()
            .with_addr("127.0.0.1:0".parse().unwrap())
            .with_certificate(vec![der], key)
            .unwrap()
    });
    let port = server.local_addr().unwrap().port();
    rt.spawn(async move {
        let mut server = server;
        while let Some(request) = server.accept().await {
            tokio::spawn(async move {
                let session = request.ok().await.unwrap();
                let (mut send, mut recv) = session.accept_bi().await.unwrap();
                let mut buf = [0u8; 8];
                while recv.read_exact(&mut buf).await.is_ok() {
                    if send.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, hash)
}

/// The raw relay with the page at one end: the same work as a propagation between a native
/// replica and a browser one, done with none of rekord. A native peer (a thread with its own
/// runtime and quinn connection, as a replica's sync thread) and the page (its own
/// `WebTransport`, as a browser replica's connection) each reach a relay on this process's
/// runtime, which reads an 8-byte stamp (µs since the epoch) from one, commits 64 bytes
/// durably to a redb file and writes the stamp to the other; the receiver's clock minus the
/// stamp is the sample. `to_page`: the native peer sends and the page receives, else the
/// other way. `n` stamps, `gap` apart.
fn page_relay(
    rt: &tokio::runtime::Runtime,
    page: &mut Page,
    n: usize,
    gap: Duration,
    to_page: bool,
) -> Vec<Duration> {
    // The page's side: WebTransport with a certificate Chromium accepts by hash.
    let (der, web_key, hash) = web_cert();
    let web = rt.block_on(async {
        web_transport_quinn::ServerBuilder::new()
            .with_addr("127.0.0.1:0".parse().unwrap())
            .with_certificate(vec![der.clone()], web_key.clone_key())
            .unwrap()
    });
    let web_port = web.local_addr().unwrap().port();
    // The native side: raw quinn, the same certificate.
    let server_cfg = quinn::ServerConfig::with_single_cert(vec![der.clone()], web_key).unwrap();
    let quic = {
        let _guard = rt.enter();
        quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap()
    };
    let quic_addr = quic.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("relay.redb")).unwrap();
    let relay = rt.spawn(async move {
        let mut web = web;
        let session = web.accept().await.unwrap().ok().await.unwrap();
        let (mut page_send, mut page_recv) = session.accept_bi().await.unwrap();
        let mut hello = [0u8; 8];
        page_recv.read_exact(&mut hello).await.unwrap();
        let conn = quic.accept().await.unwrap().await.unwrap();
        let (mut quic_send, mut quic_recv) = conn.accept_bi().await.unwrap();
        quic_recv.read_exact(&mut hello).await.unwrap();
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
        let mut buf = [0u8; 8];
        for i in 0..n as u64 {
            let read = if to_page {
                quic_recv.read_exact(&mut buf).await.is_ok()
            } else {
                page_recv.read_exact(&mut buf).await.is_ok()
            };
            if !read {
                break;
            }
            let txn = db.begin_write().unwrap();
            txn.open_table(table)
                .unwrap()
                .insert(i, [7u8; 64].as_slice())
                .unwrap();
            txn.commit().unwrap();
            let written = if to_page {
                page_send.write_all(&buf).await.is_ok()
            } else {
                quic_send.write_all(&buf).await.is_ok()
            };
            if !written {
                break;
            }
        }
        // Both stay open until the receiver has read everything: it closes first.
        let limit = Duration::from_secs(30);
        if to_page {
            let _ = tokio::time::timeout(limit, session.closed()).await;
            conn.close(0u32.into(), b"done");
        } else {
            let _ = tokio::time::timeout(limit, conn.closed()).await;
            session.close(0, b"done");
        }
        drop((page_send, quic_send));
    });
    page.eval(&format!(
        r#"const hex = {hash:?};
        const bytes = new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
        const wt = new WebTransport("https://127.0.0.1:{web_port}/relay",
          {{ serverCertificateHashes: [{{ algorithm: "sha-256", value: bytes }}] }});
        await wt.ready;
        const s = await wt.createBidirectionalStream();
        window.relay = {{ wt, w: s.writable.getWriter(), r: s.readable.getReader() }};
        // The relay ends the session when the run is over: not an error of the page.
        for (const p of [wt.closed, window.relay.w.closed, window.relay.r.closed]) p.catch(() => {{}});
        await window.relay.w.write(new Uint8Array(8));
        return null;"#
    ));
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client_cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
    let native_peer = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
                ep.set_default_client_config(client_cfg);
                let conn = ep.connect(quic_addr, "127.0.0.1").unwrap().await.unwrap();
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(&[0u8; 8]).await.unwrap();
                ready_tx.send(()).unwrap();
                let mut out = Vec::with_capacity(n);
                if to_page {
                    // Let the page start reading first.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    for _ in 0..n {
                        send.write_all(&(epoch_us() as u64).to_le_bytes())
                            .await
                            .unwrap();
                        tokio::time::sleep(gap).await;
                    }
                    // The relay closes once the page has read everything.
                    let _ = tokio::time::timeout(Duration::from_secs(30), conn.closed()).await;
                } else {
                    let mut buf = [0u8; 8];
                    for _ in 0..n {
                        recv.read_exact(&mut buf).await.unwrap();
                        let sent = u64::from_le_bytes(buf) as f64;
                        out.push(Duration::from_secs_f64((epoch_us() - sent).max(0.0) / 1e6));
                    }
                }
                conn.close(0u32.into(), b"done");
                ep.wait_idle().await;
                out
            })
    });
    ready.recv().unwrap();
    let gap_ms = gap.as_secs_f64() * 1e3;
    let samples_out = if to_page {
        let v = page.eval(&format!(
            r#"const {{ r }} = window.relay; const out = [];
            let buf = new Uint8Array(0);
            while (out.length < {n}) {{
              const {{ value }} = await r.read();
              const at = (performance.timeOrigin + performance.now()) * 1000;
              const joined = new Uint8Array(buf.length + value.length);
              joined.set(buf); joined.set(value, buf.length); buf = joined;
              while (buf.length >= 8) {{
                const sent = Number(new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true));
                out.push((at - sent).toFixed(1));
                buf = buf.slice(8);
              }}
            }}
            window.relay.wt.close(); window.relay = null;
            return out.join(",");"#
        ));
        native_peer.join().unwrap();
        samples(&v)
    } else {
        page.eval(&format!(
            r#"const {{ w }} = window.relay;
            for (let i = 0; i < {n}; i++) {{
              const stamp = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
              const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, stamp, true);
              await w.write(b);
              await new Promise((r) => setTimeout(r, {gap_ms}));
            }}
            return null;"#
        ));
        let out = native_peer.join().unwrap();
        page.eval("window.relay.wt.close(); window.relay = null; return null;");
        out
    };
    rt.block_on(relay).unwrap();
    samples_out
}

/// The raw cost of one durable commit: a small redb transaction with the default
/// (immediate) durability, on this disk.
fn fsync_floor(n: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("fsync.redb")).unwrap();
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        let txn = db.begin_write().unwrap();
        txn.open_table(table)
            .unwrap()
            .insert(i as u64, [7u8; 64].as_slice())
            .unwrap();
        txn.commit().unwrap();
        if i >= 20 {
            out.push(t.elapsed());
        }
    }
    out
}

/// A server in this process serving `origin_port`'s pages; its address, web hash, token.
struct Served {
    addr: std::net::SocketAddr,
    hash: String,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), rekord_server::ServerError>>,
    _dir: tempfile::TempDir,
}

fn serve(rt: &tokio::runtime::Runtime, origin_port: u16) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().join("server"),
        app: APP.into(),
        ..Default::default()
    };
    config.web.origins = vec![format!("http://127.0.0.1:{origin_port}")];
    config.limits.requests_per_second = 1_000_000;
    let _guard = rt.enter();
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap();
    let hash = server.web_certs().hashes().remove(0);
    let token = server.store().issue("all", Trees::All, Trees::All).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Served {
        addr,
        hash,
        token,
        stop,
        task,
        _dir: dir,
    }
}

fn native(served: &Served) -> Db {
    let db = Db::memory_synced(SyncConfig::new(served.addr, APP, &served.token)).unwrap();
    db.wait_caught_up(Duration::from_secs(60)).unwrap();
    db
}

fn create(parts: &rekord::Tree<Part>, name: String, qty: u32) -> Key<Part> {
    let start = Instant::now();
    loop {
        match parts.create(&Part {
            name: name.clone(),
            qty,
        }) {
            Ok(k) => return k,
            Err(rekord::Error::IdsExhausted) if start.elapsed() < Duration::from_secs(60) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Latencies of `n` stamped creates arriving at `sub` (from another replica).
fn receive(db: &Db, sub: &rekord::Subscription, n: usize) -> Vec<Duration> {
    let parts = db.tree::<Part>().unwrap();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = sub
            .recv_timeout(Duration::from_secs(60))
            .expect("no event within a minute");
        let now = epoch_us();
        let Event::Record(r) = e else { continue };
        if r.kind != EventKind::Created || !r.is_remote(db) {
            continue;
        }
        let part = parts.get(Key::new(r.key.id, r.key.rev)).unwrap();
        if let Some(t) = part
            .name
            .strip_prefix("t=")
            .and_then(|t| t.parse::<f64>().ok())
        {
            out.push(Duration::from_secs_f64((now - t).max(0.0) / 1e6));
        }
    }
    out
}

/// `n` samples (µs, comma-separated) of one small commit in the page (a harness
/// database, strict or relaxed) until IndexedDB has stored it.
fn page_eval_flush(page: &mut Page, relaxed: bool, n: usize) -> serde_json::Value {
    page.eval(&format!(
        "const {{ Harness }} = await import(new URL('./pkg/rekord_web_example.js', location.href).href); \
         const h = await Harness.open('idb-floor-{relaxed}', {relaxed}, 500); \
         const out = []; \
         for (let i = 0; i < {n} + 20; i++) {{ \
           const t = performance.now(); h.commit(64); await h.flush(); \
           if (i >= 20) out.push(((performance.now() - t) * 1000).toFixed(1)); \
           await new Promise((r) => setTimeout(r, 2)); }} \
         h.free(); return out.join(',');"
    ))
}

/// Whether a page's commit and its store in IndexedDB get slower as its database grows:
/// `n` small commits (each stored before the next), the mean of each tenth in order
/// (`REKORD_BENCH_ONLY_IDB=n`).
fn idb_growth(page_port: u16, n: usize) {
    let mut page = Page::launch(page_port);
    let v = page.eval(&format!(
        "const {{ Harness }} = await import(new URL('./pkg/rekord_web_example.js', location.href).href); \
         const h = await Harness.open('idb-growth', false, 500); \
         const out = []; \
         for (let i = 0; i < {n}; i++) {{ \
           const t0 = performance.now(); h.commit(64); const t1 = performance.now(); \
           await h.flush(); const t2 = performance.now(); \
           out.push(((t1 - t0) * 1000).toFixed(1) + ':' + ((t2 - t1) * 1000).toFixed(1)); }} \
         const batches = []; \
         for (const k of [1, 2, 4, 8, 16, 32, 64]) {{ \
           let total = 0; \
           for (let r = 0; r < 20; r++) {{ \
             for (let j = 0; j < k; j++) h.commit(64); \
             const t = performance.now(); await h.flush(); total += performance.now() - t; }} \
           batches.push(k + ' commits: ' + (total / 20 * 1000).toFixed(0) + ' µs'); }} \
         h.free(); return out.join(',') + ';' + batches.join(', ');"
    ));
    let (v, batches) = v.as_str().unwrap().split_once(';').unwrap();
    println!("one store after k commits, mean of 20: {batches}");
    let pairs: Vec<(f64, f64)> = v
        .split(',')
        .map(|p| {
            let (c, f) = p.split_once(':').unwrap();
            (c.parse().unwrap(), f.parse().unwrap())
        })
        .collect();
    let tenth = (pairs.len() / 10).max(1);
    println!("commits stored one by one in IndexedDB, mean per tenth of {n}, in order:");
    for (i, chunk) in pairs.chunks(tenth).enumerate() {
        let k = chunk.len() as f64;
        println!(
            "- {:>2}: commit {:.1} µs, store {:.1} µs",
            i,
            chunk.iter().map(|p| p.0).sum::<f64>() / k,
            chunk.iter().map(|p| p.1).sum::<f64>() / k
        );
    }
}

/// `n` stamped creates on `parts`, `gap` apart; how long each create took (the stamp is
/// taken before it begins).
fn send(parts: &rekord::Tree<Part>, n: usize, gap: Duration) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        create(parts, format!("t={}", epoch_us()), i as u32);
        took.push(t.elapsed());
        std::thread::sleep(gap);
    }
    took
}

/// `latencies` (stamped before each create, in the order the creates were made: one
/// sender, and the server keeps its order) measured from the end of each create instead.
fn from_commit(latencies: &[Duration], took: &[Duration]) -> Vec<Duration> {
    assert_eq!(latencies.len(), took.len(), "one latency per create");
    latencies
        .iter()
        .zip(took)
        .map(|(l, t)| l.saturating_sub(*t))
        .collect()
}

fn main() {
    let quick = std::env::var_os("REKORD_BENCH_QUICK").is_some();
    let (n, records) = if quick {
        (200, 10_000)
    } else {
        (1_000, 100_000)
    };
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let page_port = free_port();
    if let Ok(n) = std::env::var("REKORD_BENCH_ONLY_IDB") {
        idb_growth(page_port, n.parse().unwrap());
        return;
    }
    let served = serve(&rt, page_port);
    let (echo_port, echo_hash) = echo_server(&rt);
    let mut page = Page::launch(page_port);

    // Floors.
    let mut raw = rt.block_on(raw_floor(n));
    let echo = page.eval(&format!(
        r#"const hex = {echo_hash:?};
        const bytes = new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
        const wt = new WebTransport("https://127.0.0.1:{echo_port}/echo",
          {{ serverCertificateHashes: [{{ algorithm: "sha-256", value: bytes }}] }});
        await wt.ready;
        const s = await wt.createBidirectionalStream();
        const w = s.writable.getWriter(), r = s.readable.getReader();
        const out = [];
        for (let i = 0; i < {n} + 50; i++) {{
          const t = performance.now();
          await w.write(new Uint8Array(8));
          let got = 0;
          while (got < 8) {{ const {{ value }} = await r.read(); got += value.length; }}
          if (i >= 50) out.push(((performance.now() - t) * 1000).toFixed(1));
        }}
        wt.close();
        return out.join(",");"#
    ));
    let mut echo = samples(&echo);
    let mut fsync = fsync_floor(n);
    // The same work as a native propagation done raw (a relay that commits durably).
    let mut relay = raw_relay(&rt, n, Duration::from_millis(2));
    // And with the page at one end, both ways.
    let mut relay_n2b = page_relay(&rt, &mut page, n, Duration::from_millis(2), true);
    let mut relay_b2n = page_relay(&rt, &mut page, n, Duration::from_millis(2), false);

    // Propagation native -> native.
    let (a, b) = (native(&served), native(&served));
    let sub_b = b.subscribe();
    let pa = a.tree::<Part>().unwrap();
    create(&pa, "warm-up".into(), 0);
    let gap = Duration::from_millis(2);
    let receiver = {
        let b = b.clone();
        std::thread::spawn(move || receive(&b, &sub_b, n))
    };
    let took_n2n = send(&pa, n, gap);
    let mut n2n = receiver.join().unwrap();
    let mut n2n_committed = from_commit(&n2n, &took_n2n);

    // Native -> browser, and browser -> native.
    let url = format!("https://127.0.0.1:{}/rekord", served.addr.port());
    page.eval(&format!(
        "window.db = await window.Synced.open('bench', {url:?}, {:?}, {APP:?}, {:?}, ''); \
         while (!JSON.parse(window.db.status()).caught_up) await new Promise((r) => setTimeout(r, 10)); \
         while (window.db.create_stamped(0) < 0) await new Promise((r) => setTimeout(r, 10)); \
         window.db.remote_events(); \
         return null;",
        served.hash, served.token
    ));
    let page_thread = std::thread::spawn(move || {
        let v = page.eval(&format!("return await window.db.remote_latencies({n});"));
        (page, samples(&v))
    });
    std::thread::sleep(Duration::from_millis(200));
    let took_n2b = send(&pa, n, gap);
    let (mut page, mut n2b) = page_thread.join().unwrap();
    let mut n2b_committed = from_commit(&n2b, &took_n2b);
    let sub_a = a.subscribe();
    let receiver = {
        let a = a.clone();
        std::thread::spawn(move || receive(&a, &sub_a, n))
    };
    page.eval(&format!(
        "for (let i = 0; i < {n}; i++) {{ window.db.create_stamped(i); \
         await new Promise((r) => setTimeout(r, 2)); }} return null;"
    ));
    let mut b2n = receiver.join().unwrap();
    page.eval("window.db = null; return null;");

    // Browser -> native again, the browser's replica stored with relaxed durability.
    page.eval(&format!(
        "window.db = await window.Synced.open('bench-relaxed', {url:?}, {:?}, {APP:?}, {:?}, '', true); \
         while (!JSON.parse(window.db.status()).caught_up) await new Promise((r) => setTimeout(r, 10)); \
         while (window.db.create_stamped(0) < 0) await new Promise((r) => setTimeout(r, 10)); \
         return null;",
        served.hash, served.token
    ));
    let sub_a = a.subscribe();
    let receiver = {
        let a = a.clone();
        std::thread::spawn(move || receive(&a, &sub_a, n))
    };
    page.eval(&format!(
        "for (let i = 0; i < {n}; i++) {{ window.db.create_stamped(i); \
         await new Promise((r) => setTimeout(r, 2)); }} return null;"
    ));
    let mut b2n_relaxed = receiver.join().unwrap();
    // And strict again at a change every 10 ms: one change at a time, no queue behind the
    // store (at a change every 2 ms the page stores about as fast as it writes).
    let sub_a = a.subscribe();
    let receiver = {
        let a = a.clone();
        std::thread::spawn(move || receive(&a, &sub_a, n))
    };
    page.eval(&format!(
        "window.db = null; \
         window.db = await window.Synced.open('bench-slow', {url:?}, {:?}, {APP:?}, {:?}, ''); \
         while (!JSON.parse(window.db.status()).caught_up) await new Promise((r) => setTimeout(r, 10)); \
         for (let i = 0; i < {n}; i++) {{ window.db.create_stamped(i); \
         await new Promise((r) => setTimeout(r, 10)); }} return null;",
        served.hash, served.token
    ));
    let mut b2n_slow = receiver.join().unwrap();
    drop((pa, a, b));
    page.eval("window.db = null; return null;");

    // What a browser replica adds before it sends: storing a small commit in IndexedDB
    // (the outbox is stored before it is sent), strict and relaxed.
    let mut idb_strict = samples(&page_eval_flush(&mut page, false, n));
    let mut idb_relaxed = samples(&page_eval_flush(&mut page, true, n));

    // Bulk sync into fresh replicas: the browser's, then a native one of the same run.
    let bulk_served = serve(&rt, page_port);
    let bolt = Part {
        name: "bolt".into(),
        qty: 1,
    };
    rt.block_on(fill(
        bulk_served.addr,
        APP,
        &bulk_served.token,
        &bolt,
        records,
    ));
    let bulk_url = format!("https://127.0.0.1:{}/rekord", bulk_served.addr.port());
    let times = page.eval(&format!(
        "const t0 = performance.now(); \
         const db = await window.Synced.open('bulk', {bulk_url:?}, {:?}, {APP:?}, {:?}, ''); \
         while (!(JSON.parse(db.status()).caught_up && db.count() >= {records})) \
           await new Promise((r) => setTimeout(r, 5)); \
         const t1 = performance.now(); await db.flush(); const t2 = performance.now(); \
         return [t1 - t0, t2 - t0].join(',');",
        bulk_served.hash, bulk_served.token
    ));
    let times: Vec<f64> = times
        .as_str()
        .unwrap()
        .split(',')
        .map(|t| t.parse::<f64>().unwrap() / 1000.0)
        .collect();
    let t = Instant::now();
    let fresh = native(&bulk_served);
    assert_eq!(fresh.tree::<Part>().unwrap().len().unwrap(), records as u64);
    let native_bulk = t.elapsed().as_secs_f64();
    drop(fresh);
    drop(page);

    // Arrival order, before sorting: whether a row's latency grows through the run (a
    // queue building up) or only spreads.
    let tenths = |v: &[Duration]| {
        v.chunks((v.len() / 10).max(1))
            .map(|c| {
                format!(
                    "{:.0}",
                    c.iter().map(|d| d.as_secs_f64() * 1e6).sum::<f64>() / c.len() as f64
                )
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let in_order = [
        ("native -> native", tenths(&n2n)),
        ("native -> browser", tenths(&n2b)),
        ("browser -> native", tenths(&b2n)),
        ("browser (relaxed) -> native", tenths(&b2n_relaxed)),
        ("browser -> native, a change every 10 ms", tenths(&b2n_slow)),
    ];
    for v in [
        &mut raw,
        &mut echo,
        &mut fsync,
        &mut relay,
        &mut relay_n2b,
        &mut relay_b2n,
        &mut n2n,
        &mut n2b,
        &mut n2n_committed,
        &mut n2b_committed,
        &mut b2n,
        &mut b2n_relaxed,
        &mut b2n_slow,
        &mut idb_strict,
        &mut idb_relaxed,
    ] {
        v.sort();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p50 = |v: &[Duration]| us(percentile(v, 0.5));
    let p99 = |v: &[Duration]| us(percentile(v, 0.99));
    let native_floor = p50(&raw) + p50(&fsync);
    let browser_floor = p50(&echo) + p50(&fsync);
    println!(
        "\n## web (issue 16): browser and native replicas on loopback, one run\n\n\
         | floor | p50 | p99 |\n|---|---|---|\n\
         | raw quinn round trip, native ({} samples) | {:.1} µs | {:.1} µs |\n\
         | raw WebTransport echo round trip, from the page ({} samples) | {:.1} µs | {:.1} µs |\n\
         | one durable redb commit (fsync) ({} samples) | {:.1} µs | {:.1} µs |\n\
         | native floor: round trip + durable commit | {native_floor:.1} µs | |\n\
         | browser floor: page round trip + durable commit | {browser_floor:.1} µs | |\n\
         | raw relay: A -> durable commit -> B over raw quinn, threads as replicas' ({} samples) | {:.1} µs | {:.1} µs |\n\
         | raw relay: native A -> durable commit -> the page over WebTransport ({} samples) | {:.1} µs | {:.1} µs |\n\
         | raw relay: the page -> durable commit -> native B ({} samples) | {:.1} µs | {:.1} µs |\n\
         | one small commit stored in IndexedDB, strict, from the page ({} samples) | {:.1} µs | {:.1} µs |\n\
         | the same, relaxed ({} samples) | {:.1} µs | {:.1} µs |\n",
        raw.len(),
        p50(&raw),
        p99(&raw),
        echo.len(),
        p50(&echo),
        p99(&echo),
        fsync.len(),
        p50(&fsync),
        p99(&fsync),
        relay.len(),
        p50(&relay),
        p99(&relay),
        relay_n2b.len(),
        p50(&relay_n2b),
        p99(&relay_n2b),
        relay_b2n.len(),
        p50(&relay_b2n),
        p99(&relay_b2n),
        idb_strict.len(),
        p50(&idb_strict),
        p99(&idb_strict),
        idb_relaxed.len(),
        p50(&idb_relaxed),
        p99(&idb_relaxed),
    );
    println!(
        "| propagation (commit on A -> event on B) | p50 | p50 / floor | p99 |\n|---|---|---|---|"
    );
    for (name, v, floor, target) in [
        ("native -> native", &n2n, native_floor, 1.3),
        ("native -> browser", &n2b, browser_floor, 2.0),
        (
            "native -> native, from the end of A's commit",
            &n2n_committed,
            native_floor,
            1.3,
        ),
        (
            "native -> browser, from the end of A's commit",
            &n2b_committed,
            browser_floor,
            2.0,
        ),
        ("browser -> native", &b2n, browser_floor, 2.0),
        (
            "browser (relaxed) -> native",
            &b2n_relaxed,
            browser_floor,
            2.0,
        ),
        (
            "browser -> native, a change every 10 ms",
            &b2n_slow,
            browser_floor,
            2.0,
        ),
    ] {
        println!(
            "| {name} ({} changes) | {:.1} µs | **{:.2}x** (target {target}x) | {:.1} µs |",
            v.len(),
            p50(v),
            p50(v) / floor,
            p99(v),
        );
    }
    println!(
        "- native -> native / the raw relay doing the same work: **{:.2}x** (p50), {:.2}x (p99)",
        p50(&n2n) / p50(&relay),
        p99(&n2n) / p99(&relay),
    );
    println!(
        "- native -> browser / the raw relay to the page: **{:.2}x** (p50), {:.2}x (p99)",
        p50(&n2b) / p50(&relay_n2b),
        p99(&n2b) / p99(&relay_n2b),
    );
    for (name, v, store) in [
        ("browser -> native", &b2n, &idb_strict),
        (
            "browser -> native, a change every 10 ms",
            &b2n_slow,
            &idb_strict,
        ),
    ] {
        println!(
            "- {name} / the raw relay from the page: **{:.2}x** (p50); with the page's IndexedDB store added to the relay ({:.1} µs): {:.2}x",
            p50(v) / p50(&relay_b2n),
            p50(&relay_b2n) + p50(store),
            p50(v) / (p50(&relay_b2n) + p50(store)),
        );
    }
    let deciles = |v: &[Duration]| {
        (1..10)
            .map(|d| format!("{:.0}", us(percentile(v, d as f64 / 10.0))))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!("\nmean of each tenth of the changes, in the order they arrived (µs):");
    for (name, t) in &in_order {
        println!("- {name}: {t}");
    }
    println!("\ndeciles (µs, p10 ... p90):");
    for (name, v) in [
        ("raw relay", &relay),
        ("raw relay to the page", &relay_n2b),
        ("raw relay from the page", &relay_b2n),
        ("native -> native", &n2n),
        ("native -> browser", &n2b),
        ("browser -> native", &b2n),
        ("browser (relaxed) -> native", &b2n_relaxed),
        ("browser -> native, a change every 10 ms", &b2n_slow),
    ] {
        println!("- {name}: {}", deciles(v));
    }
    // A browser replica stores what it sends first: with that store counted, its floor.
    for (name, v, store) in [
        ("browser -> native", &b2n, &idb_strict),
        ("browser (relaxed) -> native", &b2n_relaxed, &idb_relaxed),
        (
            "browser -> native, a change every 10 ms",
            &b2n_slow,
            &idb_strict,
        ),
    ] {
        let floor = browser_floor + p50(store);
        println!(
            "- {name}: floor with the page's IndexedDB store {floor:.1} µs, p50 / that floor {:.2}x",
            p50(v) / floor
        );
    }
    println!(
        "\n| bulk sync of {records} records into a fresh replica | seconds | records/s |\n|---|---|---|\n\
         | native (memory_synced, until caught up) | {native_bulk:.2} | {:.0} |\n\
         | browser (open_browser_synced, until caught up) | {:.2} | {:.0} |\n\
         | browser, until also stored in IndexedDB (flush) | {:.2} | {:.0} |",
        records as f64 / native_bulk,
        times[0],
        records as f64 / times[0],
        times[1],
        records as f64 / times[1],
    );
    for s in [served, bulk_served] {
        s.stop.send(()).unwrap();
        rt.block_on(s.task).unwrap().unwrap();
    }
}
