//! Shared by the network benchmarks: the raw quinn round trip on loopback (the floor every
//! network figure is divided by) and percentiles.
#![allow(dead_code)]

use quinn::rustls;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn raw_floor(n: usize) -> Vec<Duration> {
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

/// The raw quinn floor for bulk transfer: `n` messages of `size` bytes each (length-prefixed,
/// as rekord frames are) sent over one stream on loopback and read by the receiver; returns
/// the seconds from the first byte sent to the last byte read.
pub async fn raw_bulk(n: usize, size: usize) -> f64 {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let server_cfg = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key).unwrap();
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let sender = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut go = [0u8; 1];
        recv.read_exact(&mut go).await.unwrap();
        let mut msg = (size as u32).to_le_bytes().to_vec();
        msg.resize(4 + size, 7);
        let mut chunk = Vec::with_capacity(1000 * msg.len());
        let mut left = n;
        while left > 0 {
            let k = left.min(1000);
            chunk.clear();
            for _ in 0..k {
                chunk.extend_from_slice(&msg);
            }
            send.write_all(&chunk).await.unwrap();
            left -= k;
        }
        send.finish().unwrap();
        let _ = send.stopped().await;
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_cfg);
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let t = Instant::now();
    send.write_all(&[1]).await.unwrap();
    let total = n * (4 + size);
    let mut got = 0;
    while let Some(chunk) = recv.read_chunk(1 << 16, true).await.unwrap() {
        got += chunk.bytes.len();
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, total);
    sender.await.unwrap();
    conn.close(0u32.into(), b"done");
    secs
}

/// Fills the server at `addr` with `n` copies of `record` at the transport level (its
/// schema first, then 1,000 creates per request), as the bulk-sync cases start; returns
/// the record's encoded size.
pub async fn fill<T: rekord::Record>(
    addr: std::net::SocketAddr,
    app: &str,
    token: &str,
    record: &T,
    n: usize,
) -> usize {
    use rekord::proto::{Change, ChangeKind};
    let data = record.__encode(Vec::new()).unwrap();
    let cfg = rekord::proto::handshake::ClientConfig {
        app: app.into(),
        client: [9; 16],
        token: token.into(),
        pinned: None,
        cursor: 0,
        trees: vec![],
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    };
    let mut s = rekord::net::connect(addr, &cfg, None).await.unwrap();
    let schema = rekord::Schema::of::<T>().to_ron().unwrap();
    s.put_schema(T::TREE, T::VERSION, &schema).await.unwrap();
    let (start, _) = s.ranges(1_000_000).await.unwrap()[0];
    for (op, chunk) in (0..n as u64).collect::<Vec<_>>().chunks(1000).enumerate() {
        let changes = chunk
            .iter()
            .map(|i| Change {
                tree: T::TREE.into(),
                id: start + i,
                rev: 0,
                kind: ChangeKind::Put {
                    version: T::VERSION,
                    data: data.clone(),
                },
            })
            .collect();
        s.changes((op as u128 + 1).to_le_bytes(), changes)
            .await
            .unwrap();
    }
    s.close().await;
    data.len()
}

/// The raw floor of a propagation doing the same work as rekord's, with none of rekord's:
/// sender A and receiver B are each a thread with its own runtime and quinn connection
/// (as a replica's sync thread is); a relay on `rt`'s workers reads A's 8-byte message,
/// commits 64 bytes durably to a redb file (fsync), and writes the message to B. Each of
/// `n` samples (after 20 for warm-up, `gap` apart) is timed from the caller's thread
/// handing the message to A until a thread waiting on B has it: the same hand-offs as an
/// application's commit reaching another replica's subscriber.
pub fn raw_relay(rt: &tokio::runtime::Runtime, n: usize, gap: Duration) -> Vec<Duration> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let server_cfg = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("relay.redb")).unwrap();
    let (server, addr) = {
        let _guard = rt.enter();
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        (server, addr)
    };
    // The relay: the first connection is A's, the second B's.
    let relay = rt.spawn(async move {
        let a = server.accept().await.unwrap().await.unwrap();
        let b = server.accept().await.unwrap().await.unwrap();
        let (_, mut from_a) = a.accept_bi().await.unwrap();
        let (mut to_b, _) = b.accept_bi().await.unwrap();
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
        let mut buf = [0u8; 8];
        let mut i = 0u64;
        while from_a.read_exact(&mut buf).await.is_ok() {
            let txn = db.begin_write().unwrap();
            txn.open_table(table)
                .unwrap()
                .insert(i, [7u8; 64].as_slice())
                .unwrap();
            txn.commit().unwrap();
            i += 1;
            if to_b.write_all(&buf).await.is_err() {
                break;
            }
        }
        drop((a, b));
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    let connect = move |cfg: quinn::ClientConfig| {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(cfg);
        let conn = ep.connect(addr, "localhost").unwrap();
        (ep, conn)
    };
    let thread_rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // A: sends what the caller hands it.
    let (to_a, mut a_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let (a_ready_tx, a_ready) = std::sync::mpsc::channel::<()>();
    let a_cfg = client_cfg.clone();
    let a_thread = std::thread::spawn(move || {
        thread_rt().block_on(async move {
            let (_ep, connecting) = connect(a_cfg);
            let conn = connecting.await.unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            // (A stream is announced by its first bytes: the warm-up message.)
            a_ready_tx.send(()).unwrap();
            while let Some(i) = a_rx.recv().await {
                send.write_all(&i.to_le_bytes()).await.unwrap();
            }
            send.finish().unwrap();
            conn.closed().await;
        })
    });
    a_ready.recv().unwrap();
    // Only after A's connection: the relay takes the first as A's.
    std::thread::sleep(Duration::from_millis(50));
    // B: hands what arrives to the caller's waiting thread.
    let (b_tx, b_rx) = std::sync::mpsc::channel::<(u64, Instant)>();
    let b_thread = std::thread::spawn(move || {
        thread_rt().block_on(async move {
            let (_ep, connecting) = connect(client_cfg);
            let conn = connecting.await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            // Announces the stream (the relay accepts it when its first bytes arrive).
            send.write_all(&[0]).await.unwrap();
            let mut buf = [0u8; 8];
            while recv.read_exact(&mut buf).await.is_ok() {
                if b_tx
                    .send((u64::from_le_bytes(buf), Instant::now()))
                    .is_err()
                {
                    break;
                }
            }
        })
    });
    let waiter = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(n + 20);
        while got.len() < n + 20 {
            let (i, _) = b_rx.recv().unwrap();
            got.push((i, Instant::now()));
        }
        got
    });
    let mut sent = Vec::with_capacity(n + 20);
    for i in 0..(n + 20) as u64 {
        sent.push(Instant::now());
        to_a.send(i).unwrap();
        std::thread::sleep(gap);
    }
    let got = waiter.join().unwrap();
    drop(to_a);
    a_thread.join().unwrap();
    rt.block_on(relay).unwrap();
    b_thread.join().unwrap();
    got.iter()
        .skip(20)
        .map(|(i, at)| at.duration_since(sent[*i as usize]))
        .collect()
}
