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
