//! Red team of the WebTransport landing (commit 0336d432): one quinn endpoint serving
//! `rekord/1` and `h3`, WebTransport sessions checked by `Origin`, the rotating WebTransport
//! certificate, the raised stream limits, and the native WebTransport client. Every attack
//! runs against a real `rekord-server` process on loopback (or, where the clock must move,
//! the server's own `WebCerts` on a real data directory beside the real `identity` command).
//!
//! Tests marked `Was a bug` found a bug, fixed since (they assert the correct behaviour);
//! the others document an attack that was defended from the start. One known gap is
//! ignored (the long-term fingerprint over WebTransport, see its test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process::{ServerProcess, config, identity, token};
use quinn::rustls;
use rekord::net::{Pin, WebTarget};
use rekord::proto::handshake::{ClientConfig, client_hello};
use rekord::proto::{Frame, FrameReader, Request, Response};
use rekord::{Db, Error, Key, SyncConfig};
use rekord_server::WebCerts;
use web_transport_quinn::proto as h3;

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

/// Bound on anything that should happen quickly.
const LIMIT: Duration = Duration::from_secs(20);
const STEP: Duration = Duration::from_secs(5);
const DAY: u64 = 24 * 3600;

// ---------------------------------------------------------------------------------------
// Helpers

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn create(parts: &rekord::Tree<Part>, part: &Part) -> Key<Part> {
    let start = Instant::now();
    loop {
        match parts.create(part) {
            Ok(k) => return k,
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("create failed: {e}"),
        }
    }
}

fn web(port: u16, hashes: &[String]) -> WebTarget {
    WebTarget::new(format!("https://127.0.0.1:{port}/rekord"), hashes.to_vec())
}

fn web_config(addr: SocketAddr, token: &str, hashes: &[String]) -> SyncConfig {
    config(addr, token)
        .web_transport(web(addr.port(), hashes))
        .timeout(Duration::from_secs(3))
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Stops a server process cleanly (SIGTERM: it closes its connections), and waits for it.
fn stop(mut server: ServerProcess) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.child.wait().unwrap();
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

fn hello_bytes(token: &str) -> Vec<u8> {
    rekord::proto::encode(&client_hello(&ClientConfig {
        app: process::APP.into(),
        client: *uuid::Uuid::new_v4().as_bytes(),
        token: token.into(),
        pinned: None,
        cursor: 0,
        trees: vec![],
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    }))
    .unwrap()
}

/// Accepts any certificate (an attacker does not care whom it talks to) and notes the
/// SHA-256 of the one presented.
#[derive(Debug)]
struct Capture {
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Arc<Mutex<Option<String>>>,
}

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(rekord::net::fingerprint(end));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A raw client endpoint on `ip` offering `alpns`, keeping its connections alive; the
/// fingerprint of the last certificate presented to it.
fn raw_endpoint(ip: IpAddr, alpns: &[&[u8]]) -> (quinn::Endpoint, Arc<Mutex<Option<String>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(Mutex::new(None));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Capture {
            provider,
            seen: seen.clone(),
        }))
        .with_no_client_auth();
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into().unwrap()));
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    cfg.transport_config(Arc::new(transport));
    let mut ep = quinn::Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
    ep.set_default_client_config(cfg);
    (ep, seen)
}

/// An HTTP/3 handshake by hand on `conn`: our SETTINGS, then a CONNECT with `headers`. The
/// CONNECT stream's halves, our control stream, and the status answered.
async fn raw_h3(
    conn: &quinn::Connection,
    port: u16,
    headers: &[(&str, &str)],
) -> Result<(quinn::SendStream, quinn::RecvStream, quinn::SendStream, u16), String> {
    let mut ctl = conn.open_uni().await.map_err(|e| e.to_string())?;
    let mut settings = h3::Settings::default();
    settings.enable_webtransport(1);
    let mut buf = Vec::new();
    settings.encode(&mut buf);
    ctl.write_all(&buf).await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let url: url::Url = format!("https://127.0.0.1:{port}/rekord").parse().unwrap();
    let mut request = h3::ConnectRequest::new(url);
    for (name, value) in headers {
        request.headers.append(
            h3::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            h3::http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let mut buf = Vec::new();
    request.encode(&mut buf).map_err(|e| e.to_string())?;
    send.write_all(&buf).await.map_err(|e| e.to_string())?;
    let response = h3::ConnectResponse::read(&mut recv)
        .await
        .map_err(|e| e.to_string())?;
    Ok((send, recv, ctl, response.status.as_u16()))
}

/// A WebTransport session through the library's client (the server's certificate checked
/// by hash) with `origin`.
async fn wt_session(
    port: u16,
    hashes: &[String],
    origin: Option<&str>,
) -> Result<web_transport_quinn::Session, String> {
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(hashes.iter().map(|h| hex_bytes(h)).collect())
        .map_err(|e| e.to_string())?;
    let url: url::Url = format!("https://127.0.0.1:{port}/rekord").parse().unwrap();
    let mut request = h3::ConnectRequest::new(url);
    if let Some(origin) = origin {
        request.headers.insert(
            "origin",
            origin.parse().map_err(|_| "bad origin".to_owned())?,
        );
    }
    tokio::time::timeout(STEP, client.connect(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
}

async fn wt_next_frame(
    recv: &mut web_transport_quinn::RecvStream,
    reader: &mut FrameReader,
) -> Result<Frame, String> {
    loop {
        if let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        match recv.read_chunk(1 << 16, true).await {
            Ok(Some(chunk)) => reader.push(&chunk.bytes),
            Ok(None) => return Err("the stream ended".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits (bounded) for a file to stop growing.
fn settled(path: &Path) {
    let mut last = u64::MAX;
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len == last || start.elapsed() > LIMIT {
            return;
        }
        last = len;
    }
}

// ---------------------------------------------------------------------------------------
// 1. h3 connections and the connection limits

/// Was a bug, fixed: a WebTransport connection whose session ended (here: the client finished the
/// session stream before any hello, `End::Gone`) is never closed by the server. `handle`
/// only closes on the error paths that call `conn.close`; for `Ok`/`End::Gone` it relies on
/// dropping the connection, which closes a native quinn connection, but web-transport-quinn
/// keeps a clone of the connection in the task it spawns to read capsules from the CONNECT
/// stream (`Session::run_recv`), which the client keeps open. The ticket is dropped
/// meanwhile, so such connections stay open without counting against
/// `max_connections`/`max_connections_per_address`, each able to park a receive window of
/// unread bytes in streams nobody accepts.
#[test]
fn an_ended_webtransport_session_closes_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &[
            "--limit",
            "max_connections=2",
            "--limit",
            "hello_timeout_secs=2",
        ],
    );
    let (addr, pid) = (server.addr, server.child.id());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (ep, _) = raw_endpoint(loopback(1), &[b"h3"]);
        let mut kept = Vec::new();
        for _ in 0..8 {
            let conn = match ep.connect(addr, "localhost").unwrap().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("connection refused: {e}");
                    continue;
                }
            };
            // The HTTP/3 handshake by hand (a client that ignores what the server's
            // streams say), then the session's stream: its WebTransport header (type
            // 0x41, the CONNECT stream's id 0), and its end, before any hello: the server's
            // session ends (`End::Gone`) and its ticket goes.
            let (connect_send, connect_recv, ctl, status) =
                raw_h3(&conn, addr.port(), &[]).await.unwrap();
            assert_eq!(status, 200);
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let mut header = Vec::new();
            h3::Frame::WEBTRANSPORT.encode(&mut header);
            h3::VarInt::from_u64(quinn::VarInt::from(connect_send.id()).into_inner())
                .unwrap()
                .encode(&mut header);
            send.write_all(&header).await.unwrap();
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let session = (connect_send, connect_recv, ctl);
            kept.push((conn, session, send, recv));
        }
        // Well past the hello bound: nothing of these sessions should be left.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let open: Vec<&quinn::Connection> = kept
            .iter()
            .map(|k| &k.0)
            .filter(|c| c.close_reason().is_none())
            .collect();
        // What each of them can make the server hold: bytes in streams nobody accepts.
        let before = rss_mib(pid);
        for conn in &open {
            for _ in 0..2 {
                let wait = Duration::from_secs(1);
                if let Ok(Ok(mut s)) = tokio::time::timeout(wait, conn.open_uni()).await {
                    let _ = tokio::time::timeout(wait, s.write_all(&vec![7u8; 3 << 19])).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_mib(pid);
        eprintln!(
            "{} of {} connections still open; server RSS {before} -> {after} MiB",
            open.len(),
            kept.len()
        );
        assert!(
            open.len() <= 2,
            "{} WebTransport connections whose session had ended are still open 4 s after the \
             hello bound, with max_connections=2 (the server holds {} MiB more after they \
             sent 3 MiB each into streams nobody reads)",
            open.len(),
            after.saturating_sub(before)
        );
    });
    drop(server);
}

/// Defended: h3 connections that never send SETTINGS, that stall inside the HTTP/3
/// handshake (a CONNECT stream of endless GREASE frames), or that send an oversized
/// HEADERS frame are counted against `max_connections` while they handshake, and are closed
/// within the hello bound (the oversized one at once, as a protocol error).
#[test]
fn stalled_h3_handshakes_count_against_the_limits_and_are_closed_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let tok = token(&data);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &[
            "--limit",
            "max_connections=3",
            "--limit",
            "hello_timeout_secs=2",
        ],
    );
    let addr = server.addr;
    let port = addr.port();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (ep, _) = raw_endpoint(loopback(1), &[b"h3"]);
        let started = Instant::now();
        // Silent: QUIC handshake, then nothing.
        let silent = ep.connect(addr, "localhost").unwrap().await.unwrap();
        // SETTINGS, then a CONNECT stream that never ends its GREASE frames.
        let greasy = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let mut ctl = greasy.open_uni().await.unwrap();
        let mut settings = h3::Settings::default();
        settings.enable_webtransport(1);
        let mut buf = Vec::new();
        settings.encode(&mut buf);
        ctl.write_all(&buf).await.unwrap();
        let (mut grease_send, _grease_recv) = greasy.open_bi().await.unwrap();
        let grease_task = tokio::spawn(async move {
            // Frame type 0x21 (GREASE), 0 bytes, every 10 ms.
            while grease_send.write_all(&[0x40, 0x21, 0x00]).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        // Both count: a third gets in, a fourth connection is refused at the door.
        let third = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let fourth = ep.connect(addr, "localhost").unwrap().await;
        eprintln!("fourth connection: {:?}", fourth.as_ref().err());
        assert!(
            fourth.is_err(),
            "a 4th connection got in beside 3 unfinished h3 handshakes with max_connections=3"
        );
        for (what, conn) in [("silent", &silent), ("greasy", &greasy), ("third", &third)] {
            let reason = tokio::time::timeout(LIMIT, conn.closed()).await;
            assert!(reason.is_ok(), "the {what} h3 connection was never closed");
            eprintln!(
                "{what}: {:?} after {:?}",
                reason.unwrap(),
                started.elapsed()
            );
        }
        assert!(started.elapsed() < Duration::from_secs(6));
        grease_task.abort();

        // An oversized HEADERS frame (64 KiB announced, the limit is 16 KiB).
        let big = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let mut ctl = big.open_uni().await.unwrap();
        ctl.write_all(&buf).await.unwrap();
        let (mut send, _recv) = big.open_bi().await.unwrap();
        let mut frame = Vec::new();
        h3::Frame::HEADERS.encode(&mut frame);
        h3::VarInt::from_u32(65_000).encode(&mut frame);
        frame.extend(std::iter::repeat_n(0x41u8, 65_000));
        let t = Instant::now();
        let _ = send.write_all(&frame).await;
        let reason = tokio::time::timeout(LIMIT, big.closed()).await.unwrap();
        eprintln!("oversized headers: {reason:?} after {:?}", t.elapsed());
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "not closed at once"
        );
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(
                    c.error_code.into_inner(),
                    u64::from(rekord::net::CLOSE_PROTOCOL)
                )
            }
            other => panic!("unexpected end {other}"),
        }

        // The server still serves a good native client.
        let session = rekord::net::connect_timeout(
            addr,
            &ClientConfig {
                app: process::APP.into(),
                client: *uuid::Uuid::new_v4().as_bytes(),
                token: tok.clone(),
                pinned: None,
                cursor: 0,
                trees: vec![],
                replica: 0,
                history: Vec::new(),
                last_entry: 0,
            },
            None,
            STEP,
        )
        .await;
        assert!(session.is_ok(), "{:?}", session.err());
        let _ = port;
    });
    drop(server);
}

/// Was a bug, fixed: after its CONNECT is accepted, and before any hello or token, a client can make
/// the server log one WARN line per capsule it sends on the CONNECT stream: web-transport-
/// quinn logs every unknown capsule (`tracing::warn!("unknown capsule")` in
/// `Session::read_capsules`) and the server's default filter (`info`) lets it through. Two
/// bytes sent give one log line of ~94 bytes (x47), unauthenticated; the server's own refusals
/// are logged at most once a second per kind (`limits::Quiet`), these are not.
#[test]
fn capsules_on_the_connect_stream_do_not_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let log = dir.path().join("server.log");
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", Some(&log), "info", &[]);
    let addr = server.addr;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let before = std::fs::metadata(&log).unwrap().len();
    runtime.block_on(async {
        let (ep, _) = raw_endpoint(loopback(1), &[b"h3"]);
        let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut send, _recv, _ctl, status) = raw_h3(&conn, addr.port(), &[]).await.unwrap();
        assert_eq!(status, 200);
        // DATA frames full of empty capsules of an unknown type (0x10): 2 bytes each.
        let capsules = [0x10u8, 0x00].repeat(30_000);
        let mut frame = Vec::new();
        h3::Frame::DATA.encode(&mut frame);
        h3::VarInt::from_u32(capsules.len() as u32).encode(&mut frame);
        frame.extend_from_slice(&capsules);
        for _ in 0..2 {
            send.write_all(&frame).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    settled(&log);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text
        .lines()
        .filter(|l| l.contains("unknown capsule"))
        .count();
    let grown = std::fs::metadata(&log).unwrap().len() - before;
    eprintln!("{lines} 'unknown capsule' lines, log grew by {grown} bytes from 120 KB sent");
    assert!(
        lines < 100,
        "an unauthenticated client made the server log {lines} lines ({grown} bytes) with \
         120 KB of capsules"
    );
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 2. Native clients and the raised stream limits

/// Defended (within the documented per-connection bound): native clients that, after
/// their hello, open the extra bidirectional stream and the three unidirectional ones the
/// endpoint now allows and write 8 MiB into each make the server hold at most about one
/// receive window (4 MiB) each; a good client is served meanwhile and its requests are
/// answered.
#[test]
fn native_clients_writing_into_extra_streams_stay_within_the_receive_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let tok = token(&data);
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let (addr, pid) = (server.addr, server.child.id());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let good = rekord::net::connect_timeout(
            addr,
            &ClientConfig {
                app: process::APP.into(),
                client: *uuid::Uuid::new_v4().as_bytes(),
                token: tok.clone(),
                pinned: None,
                cursor: 0,
                trees: vec![],
                replica: 0,
                history: Vec::new(),
                last_entry: 0,
            },
            None,
            STEP,
        )
        .await
        .unwrap();
        let before = rss_mib(pid);
        let (ep, _) = raw_endpoint(loopback(2), &[rekord::net::ALPN]);
        let junk = vec![0x5au8; 8 << 20];
        let mut conns = Vec::new();
        const N: usize = 8;
        for _ in 0..N {
            let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&hello_bytes(&tok)).await.unwrap();
            let mut reader = FrameReader::new();
            let hello = loop {
                if let Some(f) = reader.next_frame().unwrap() {
                    break f;
                }
                let chunk = recv.read_chunk(1 << 16, true).await.unwrap().unwrap();
                reader.push(&chunk.bytes);
            };
            assert!(matches!(hello, Frame::ServerHello(_)), "{hello:?}");
            let (mut extra, _extra_recv) = conn.open_bi().await.unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(700), extra.write_all(&junk)).await;
            for _ in 0..3 {
                if let Ok(Ok(mut uni)) =
                    tokio::time::timeout(Duration::from_millis(500), conn.open_uni()).await
                {
                    let _ = tokio::time::timeout(Duration::from_millis(500), uni.write_all(&junk))
                        .await;
                }
            }
            conns.push((conn, send, recv, extra, _extra_recv));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_mib(pid);
        eprintln!("server RSS {before} -> {after} MiB with {N} clients filling extra streams");
        // Still answering the good client.
        let mut good = good;
        let t = Instant::now();
        good.ping().await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(
            after.saturating_sub(before) <= (N as u64) * 6,
            "server memory grew by {} MiB for {N} clients",
            after - before
        );
    });
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 3. WebTransport sessions that misbehave

/// Defended: over WebTransport, a first frame that is not a hello and a first frame
/// announced above the hello limit (1 MiB) end the session at once (not at the hello
/// bound); a second WebTransport stream after the hello gets no stream credit, and the
/// session goes on answering.
#[test]
fn webtransport_sessions_that_break_the_protocol_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, hashes) = identity(&data);
    let tok = token(&data);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--limit", "hello_timeout_secs=30"],
    );
    let port = server.addr.port();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // A request instead of a hello.
        let session = wt_session(port, &hashes, None).await.unwrap();
        let (mut send, _recv) = session.open_bi().await.unwrap();
        let request = rekord::proto::encode(&Frame::Request {
            id: 1,
            body: Request::Ping,
        })
        .unwrap();
        send.write_all(&request).await.unwrap();
        let t = Instant::now();
        let end = tokio::time::timeout(LIMIT, session.closed()).await.unwrap();
        eprintln!("request first: {end} after {:?}", t.elapsed());
        assert!(t.elapsed() < STEP);

        // A first frame announced at 1 MiB + 1.
        let session = wt_session(port, &hashes, None).await.unwrap();
        let (mut send, _recv) = session.open_bi().await.unwrap();
        let mut big = ((1u32 << 20) + 1).to_le_bytes().to_vec();
        big.extend(std::iter::repeat_n(0u8, 64 << 10));
        let _ = send.write_all(&big).await;
        let t = Instant::now();
        let end = tokio::time::timeout(LIMIT, session.closed()).await.unwrap();
        eprintln!("oversized hello: {end} after {:?}", t.elapsed());
        assert!(t.elapsed() < STEP);

        // A good session, then a second stream full of junk: ignored.
        let session = wt_session(port, &hashes, None).await.unwrap();
        let (mut send, mut recv) = session.open_bi().await.unwrap();
        send.write_all(&hello_bytes(&tok)).await.unwrap();
        let mut reader = FrameReader::new();
        let hello = wt_next_frame(&mut recv, &mut reader).await.unwrap();
        assert!(matches!(hello, Frame::ServerHello(_)), "{hello:?}");
        // The endpoint's two bidirectional streams are the CONNECT stream and this one: a
        // second WebTransport stream gets no credit (and, were it opened, nobody reads it).
        let second = tokio::time::timeout(Duration::from_secs(1), session.open_bi()).await;
        assert!(second.is_err(), "a second bidirectional stream was opened");
        let ping = rekord::proto::encode(&Frame::Request {
            id: 7,
            body: Request::Ping,
        })
        .unwrap();
        send.write_all(&ping).await.unwrap();
        let answer = tokio::time::timeout(STEP, async {
            loop {
                match wt_next_frame(&mut recv, &mut reader).await {
                    Ok(Frame::Push(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            matches!(
                answer,
                Frame::Response {
                    id: 7,
                    body: Response::Pong
                }
            ),
            "{answer:?}"
        );
    });
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 4. Origins

/// Defended: origins that merely resemble the allowed one (a longer host, a longer port,
/// another scheme, a path, userinfo, no port, `null`, empty) are answered 403; the allowed
/// one passes in any letter case and with a trailing slash; `*` lets every origin in.
#[test]
fn origins_that_resemble_the_allowed_one_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, hashes) = identity(&data);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--allow-origin", "http://127.0.0.1:8080"],
    );
    let port = server.addr.port();
    let star_data = dir.path().join("star");
    let (_, _, star_hashes) = identity(&star_data);
    let star = ServerProcess::start_with(
        &star_data,
        "127.0.0.1:0",
        None,
        "info",
        &["--allow-origin", "*"],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let refused = [
            "http://127.0.0.1:8080.evil.com",
            "http://127.0.0.1:80800",
            "http://127.0.0.1:808",
            "http://127.0.0.1:8080/path",
            "http://127.0.0.1:8080?x",
            "http://127.0.0.1:8080#x",
            "https://127.0.0.1:8080",
            "http://127.0.0.1",
            "http://evil@127.0.0.1:8080",
            "http://127.0.0.1:8080@evil.com",
            "ws://127.0.0.1:8080",
            "null",
            "",
            "*",
            " http://127.0.0.1:8080",
            "http://127.0.0.1:8080 ",
            "http://127.0.0.1:8080\t",
        ];
        for origin in refused {
            let outcome = wt_session(port, &hashes, Some(origin)).await;
            match outcome {
                Err(e) if e.contains("bad origin") => eprintln!("{origin:?}: not sendable"),
                Err(e) => assert!(e.contains("403"), "{origin:?}: {e}"),
                Ok(_) => panic!("{origin:?} was let in"),
            }
        }
        for origin in [
            "http://127.0.0.1:8080",
            "HTTP://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
        ] {
            assert!(
                wt_session(port, &hashes, Some(origin)).await.is_ok(),
                "{origin}"
            );
        }
        for origin in [
            "https://evil.example",
            "null",
            "http://127.0.0.1:8080.evil.com",
        ] {
            assert!(
                wt_session(star.addr.port(), &star_hashes, Some(origin))
                    .await
                    .is_ok(),
                "`*` refused {origin}"
            );
        }
    });
    drop(star);
    drop(server);
}

/// Configured origins the server cannot use: a path is refused at startup (defended).
/// Was a bug, fixed (minor, configuration): `https://app.example:443` passes validation but can never
/// match, because browsers leave the default port out of `Origin`; the page is refused
/// with 403 while the configuration looks right. `Web::validate` should refuse (or
/// normalise) a default port.
#[test]
fn an_allowed_origin_with_its_default_port_matches() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, hashes) = identity(&data);
    let out = std::process::Command::new(process::BIN)
        .arg("--data")
        .arg(&data)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--allow-origin",
            "https://app.example/",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a path in an origin was accepted");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr).trim());

    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--allow-origin", "https://app.example:443"],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // What Chromium sends for a page at https://app.example:443/.
        let outcome = wt_session(server.addr.port(), &hashes, Some("https://app.example")).await;
        assert!(
            outcome.is_ok(),
            "the server started with --allow-origin https://app.example:443 refuses the page \
             https://app.example/ (the browser's Origin has no default port): {outcome:?}"
        );
    });
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 5. Certificates: damaged files, rotation, the clock

/// Defended: a WebTransport certificate slot whose `until` is missing or garbage, or whose
/// key is missing, is made again: `identity` prints the new hash and a replica given it
/// connects.
#[test]
fn partial_web_certificate_files_are_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, first) = identity(&data);
    let tok = token(&data);
    let mut hashes = first.clone();
    for damage in [
        "until-garbage",
        "until-missing",
        "key-missing",
        "until-empty",
    ] {
        match damage {
            "until-garbage" => std::fs::write(data.join("web-current.until"), "soon\n").unwrap(),
            "until-missing" => std::fs::remove_file(data.join("web-current.until")).unwrap(),
            "key-missing" => std::fs::remove_file(data.join("web-current.key")).unwrap(),
            _ => std::fs::write(data.join("web-current.until"), "").unwrap(),
        }
        let (_, _, now) = identity(&data);
        assert_eq!(now.len(), 1, "{damage}: {now:?}");
        assert_ne!(now, hashes, "{damage}: the damaged certificate was kept");
        hashes = now;
    }
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let (_, _, served) = identity(&data);
    assert_eq!(served, hashes);
    let db = Db::memory_synced(web_config(server.addr, &tok, &hashes)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    drop(server);
}

/// Was a bug, fixed (low): a WebTransport certificate slot whose files are all present but do not go
/// together (a key that is not the certificate's: a damaged or mixed-up data directory,
/// a restore mixing slots, or a crash inside `WebCerts::force_rotate` between the key and
/// certificate writes of `switch`, which is not repaired at restart because the young
/// current certificate is not due) is loaded as is: `identity` prints its hash, the
/// server starts and presents it, and every WebTransport handshake fails (BadSignature)
/// until its `until` passes. `WebCert::load` should check that the certificate parses and
/// that the key matches it (`CertifiedKey::keys_match`), and treat the slot as missing
/// otherwise.
#[test]
fn a_web_certificate_whose_key_does_not_match_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, _) = identity(&data);
    let tok = token(&data);
    // Another data directory's WebTransport key over this one's (what `switch` leaves when
    // it dies after writing the next certificate's key over the current slot).
    let other = dir.path().join("other");
    let _ = identity(&other);
    std::fs::copy(other.join("web-current.key"), data.join("web-current.key")).unwrap();
    let (_, _, hashes) = identity(&data);
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let (_, _, hashes_now) = identity(&data);
    let db = Db::memory_synced(web_config(server.addr, &tok, &hashes_now)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut last = None;
    while Instant::now() < deadline && !db.sync_status().unwrap().caught_up {
        last = db.sync_status().unwrap().last_error;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        db.sync_status().unwrap().caught_up,
        "a WebTransport replica given the printed hash ({hashes:?}) cannot connect: {last:?}"
    );
    drop(db);
    drop(server);
}

/// Was a bug: `rekord-server identity`, run while the server serves in the last days of a
/// certificate, made a next certificate the running server never knew (it made its own and
/// switched to that), so pages configured with the printed hashes were refused. Fixed:
/// while a server runs, `identity` asks it (admin socket) what it presents and announces,
/// and writes nothing; with none running it applies the rotation the server would apply
/// when it starts, so what it prints is what the server will present.
#[test]
fn identity_while_serving_prints_only_hashes_the_server_has() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let now = rekord_server::web::unix_now();
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let presented = WebCerts::load(&data).unwrap().unwrap().current.hash();
    // The files now say the certificate is in its last days: the serving server (which
    // has it in memory, 10 days left) made no next one, and `identity` makes none either.
    std::fs::write(
        data.join("web-current.until"),
        format!("{}\n", now + 4 * DAY + DAY / 2),
    )
    .unwrap();
    let (_, _, printed) = identity(&data);
    assert_eq!(printed, vec![presented.clone()]);
    assert!(
        !data.join("web-next.der").exists(),
        "identity made a certificate under a running server"
    );
    drop(server);
    // No server runs: `identity` rotates as a starting server would (a next certificate in
    // the last five days), and prints both.
    let (_, _, printed) = identity(&data);
    assert_eq!(printed.len(), 2, "{printed:?}");
    assert_eq!(printed[0], presented);
    assert!(data.join("web-next.der").exists());
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let (_, _, again) = identity(&data);
    assert_eq!(
        again, printed,
        "the started server presents and announces what was printed"
    );
    drop(server);
}

/// Was a bug, fixed: a clock far in the future once (a wrong RTC at boot, corrected later) leaves the
/// server presenting a WebTransport certificate that is not valid yet for a year: it was
/// made from the wrong `now`, and `rotate` only looks at how far away `not_after` is, so
/// it never replaces it. Browsers refuse it ("not yet valid") all that time. `rotate`
/// should also replace a current certificate whose validity starts after `now` (or whose
/// `not_after` is more than CERT_DAYS away).
#[test]
fn a_certificate_made_under_a_clock_far_ahead_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    std::fs::remove_file(data.join("web-current.until")).unwrap();
    let now = rekord_server::web::unix_now();
    let future = now + 365 * DAY;
    // Started once with the clock a year ahead.
    let certs = WebCerts::load_or_create(&data, future).unwrap();
    drop(certs);
    // The clock is right again; the server starts, and runs its rotation checks.
    let mut certs = WebCerts::load_or_create(&data, now).unwrap();
    for hour in 0..48 {
        certs.rotate(now + hour * 3600).unwrap();
    }
    let valid_from = certs
        .current
        .not_after
        .saturating_sub(rekord_server::web::CERT_DAYS * DAY);
    assert!(
        valid_from <= now + 2 * DAY,
        "two days after the clock was corrected the server still presents a certificate \
         valid only from {} days from now",
        (valid_from - now) / DAY
    );
}

// ---------------------------------------------------------------------------------------
// 6. ALPN dispatch

/// Defended: the certificate and the path follow the negotiated ALPN. A client offering
/// only `h3` gets the WebTransport certificate; one offering `rekord/1` (alone or with
/// `h3`, in either order) negotiates `rekord/1`, gets the long-term certificate, and is
/// served the native session; an unknown ALPN fails the handshake.
#[test]
fn the_certificate_and_the_path_follow_the_negotiated_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, fingerprint, hashes) = identity(&data);
    let tok = token(&data);
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let addr = server.addr;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // (offered ALPNs, the one expected, the certificate expected)
        type Case<'a> = (&'a [&'a [u8]], Option<&'a [u8]>, &'a String);
        let cases: [Case; 4] = [
            (&[b"h3"], Some(b"h3"), &hashes[0]),
            (&[rekord::net::ALPN], Some(rekord::net::ALPN), &fingerprint),
            (
                &[b"h3", rekord::net::ALPN],
                Some(rekord::net::ALPN),
                &fingerprint,
            ),
            (
                &[rekord::net::ALPN, b"h3"],
                Some(rekord::net::ALPN),
                &fingerprint,
            ),
        ];
        for (offer, negotiated, cert) in cases {
            let (ep, seen) = raw_endpoint(loopback(1), offer);
            let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
            let protocol = conn
                .handshake_data()
                .unwrap()
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .unwrap()
                .protocol;
            assert_eq!(protocol.as_deref(), negotiated, "offer {offer:?}");
            assert_eq!(seen.lock().unwrap().as_ref(), Some(cert), "offer {offer:?}");
            if negotiated == Some(rekord::net::ALPN) {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(&hello_bytes(&tok)).await.unwrap();
                let mut reader = FrameReader::new();
                let frame = loop {
                    if let Some(f) = reader.next_frame().unwrap() {
                        break f;
                    }
                    let chunk = tokio::time::timeout(STEP, recv.read_chunk(1 << 16, true))
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    reader.push(&chunk.bytes);
                };
                assert!(matches!(frame, Frame::ServerHello(_)), "{frame:?}");
            }
            conn.close(0u32.into(), b"");
        }
        for offer in [&[b"h3-29".as_slice()][..], &[b"rekord/2".as_slice()][..]] {
            let (ep, _) = raw_endpoint(loopback(1), offer);
            let outcome = ep.connect(addr, "localhost").unwrap().await;
            assert!(outcome.is_err(), "offer {offer:?} connected");
        }
    });
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 7. Kills mid-session

/// Defended: a WebTransport replica whose server is killed while it pushes its outbox
/// (twice), and right after a borrow was granted, loses nothing and duplicates nothing:
/// the native replica ends with exactly the records written, and the borrow as granted.
#[test]
fn kills_while_a_webtransport_replica_pushes_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, hashes) = identity(&data);
    let tok = token(&data);
    let mut server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let addr = server.addr;
    let native = Db::open_synced(dir.path().join("native.rekord"), config(addr, &tok)).unwrap();
    let webdb = Db::open_synced(
        dir.path().join("web.rekord"),
        web_config(addr, &tok, &hashes).range_size(1000),
    )
    .unwrap();
    native.wait_caught_up(LIMIT).unwrap();
    webdb.wait_caught_up(LIMIT).unwrap();
    let (pn, pw) = (
        native.tree::<Part>().unwrap(),
        webdb.tree::<Part>().unwrap(),
    );
    let mut written = Vec::new();
    for round in 0..3 {
        for i in 0..60 {
            written.push(create(
                &pw,
                &Part {
                    name: format!("r{round} p{i}"),
                    qty: i,
                },
            ));
        }
        // Killed while those are on their way.
        server.kill();
        server = ServerProcess::start_with(&data, &addr.to_string(), None, "info", &[]);
    }
    webdb.wait_pushed(LIMIT).unwrap();
    // A borrow granted over WebTransport, the server killed right after.
    let bolt = written[0];
    pw.borrow(bolt).unwrap();
    server.kill();
    server = ServerProcess::start_with(&data, &addr.to_string(), None, "info", &[]);
    pw.update(bolt, |p| p.qty = 999).unwrap();
    pw.return_borrow(bolt).unwrap();
    webdb.wait_pushed(LIMIT).unwrap();
    eventually("the native replica to have every record", || {
        pn.len().unwrap() >= written.len() as u64
            && pn.get(bolt).is_ok_and(|p| p.qty == 999)
            && pn.meta(bolt).is_ok_and(|m| m.holder == 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    let keys = pn.keys().unwrap();
    let mut names: Vec<String> = keys.iter().map(|k| pn.get(*k).unwrap().name).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicated records");
    assert_eq!(keys.len(), written.len(), "records lost or added");
    assert_eq!(webdb.sync_status().unwrap().outbox, 0);
    assert_eq!(webdb.sync_status().unwrap().rejected, 0);
    drop((pn, pw));
    drop((native, webdb));
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 8. Impostors and pins

/// Defended: an impostor server on the victim's address, given the victim's WebTransport
/// certificate files but its own identity, is refused by a replica that pinned the victim
/// at first contact over WebTransport (its UUID).
#[test]
fn an_impostor_with_the_stolen_web_certificate_but_its_own_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (uuid, _, hashes) = identity(&data);
    let tok = token(&data);
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let addr = server.addr;
    let db = Db::open_synced(
        dir.path().join("web.rekord"),
        web_config(addr, &tok, &hashes),
    )
    .unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    server.kill();

    let evil = dir.path().join("impostor");
    let _ = identity(&evil);
    for f in ["web-current.der", "web-current.key", "web-current.until"] {
        std::fs::copy(data.join(f), evil.join(f)).unwrap();
    }
    // It even accepts the replica's token (it has the victim's token table).
    std::fs::copy(data.join("server.redb"), evil.join("server.redb")).unwrap();
    let impostor = ServerProcess::start_with(&evil, &addr.to_string(), None, "info", &[]);
    let deadline = Instant::now() + LIMIT;
    let refused = loop {
        let st = db.sync_status().unwrap();
        if let Some(r) = st.refused {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the impostor was not refused: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("{refused}");
    assert!(refused.contains(&uuid), "{refused}");
    drop(db);
    drop(impostor);
}

/// Was a bug (the gap docs/browser-trust.md planned to close with signed certificate
/// announcements; nothing says so to the user today): over WebTransport the pinned
/// long-term fingerprint is not checked at all (`connect_web` keeps only the pin's UUID),
/// so a replica configured with the full pin (UUID and fingerprint, as
/// `rekord-server identity` prints them) trusts anyone who holds the current WebTransport
/// key and says the victim's UUID (public: every hello carries it). Here the impostor has
/// the victim's WebTransport files and UUID but not its long-term key: a native replica
/// refuses it, the WebTransport replica syncs with it (and hands it its token).
///
/// Fixed by the signed announcements (`Request::WebCertificates`): the server signs its
/// WebTransport certificates over the replica's nonce with its long-term key, and the
/// replica checks that key's certificate against the pinned fingerprint.
#[test]
fn an_impostor_without_the_long_term_key_is_refused_over_webtransport() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (uuid, fingerprint, hashes) = identity(&data);
    let tok = token(&data);
    let pin = Pin::parse(&uuid, &fingerprint).unwrap();
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let addr = server.addr;
    let webdb = Db::open_synced(
        dir.path().join("web.rekord"),
        web_config(addr, &tok, &hashes).pin(pin.clone()),
    )
    .unwrap();
    let native = Db::open_synced(
        dir.path().join("native.rekord"),
        config(addr, &tok).pin(pin.clone()),
    )
    .unwrap();
    webdb.wait_caught_up(LIMIT).unwrap();
    native.wait_caught_up(LIMIT).unwrap();
    // Stopped cleanly (its connections closed), so both replicas know it is gone.
    stop(server);
    eventually("both replicas to notice the server stopped", || {
        !webdb.sync_status().unwrap().online && !native.sync_status().unwrap().online
    });

    // The impostor: the victim's data directory without its long-term key and certificate.
    let evil = dir.path().join("impostor");
    let _ = identity(&evil);
    for f in [
        "web-current.der",
        "web-current.key",
        "web-current.until",
        "server.uuid",
        "server.redb",
    ] {
        std::fs::copy(data.join(f), evil.join(f)).unwrap();
    }
    let impostor = ServerProcess::start_with(&evil, &addr.to_string(), None, "info", &[]);
    // The WebTransport replica writes; does its write reach the impostor?
    let parts = webdb.tree::<Part>().unwrap();
    create(
        &parts,
        &Part {
            name: "for the impostor".into(),
            qty: 1,
        },
    );
    let pushed = webdb.wait_pushed(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut native_refused = None;
    while Instant::now() < deadline && native_refused.is_none() {
        native_refused = native.sync_status().unwrap().refused;
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "native: {:?}\nweb: {:?}",
        native.sync_status().unwrap(),
        webdb.sync_status().unwrap()
    );
    assert!(
        native_refused.is_some_and(|r| r.contains("certificate")),
        "the native replica did not refuse the impostor"
    );
    assert!(
        pushed.is_err() && webdb.sync_status().unwrap().refused.is_some(),
        "a WebTransport replica pinned to {uuid} / {fingerprint} synced its write to a server \
         that does not hold that certificate's key (it was refused natively)"
    );
    drop(parts);
    drop((webdb, native));
    drop(impostor);
}

/// Was a bug, fixed: a replica whose first contact was over WebTransport stores the WebTransport
/// certificate's hash as its pinned certificate fingerprint (`Client::first_contact`
/// stores `Session::pin()`, whose `cert` is the certificate the `h3` connection saw), even
/// when its configuration gave the right long-term pin. Opened later over rekord's own
/// QUIC ALPN (a native application that fell back to WebTransport once), it refuses the
/// genuine server for good as "a possible impostor". And the stored hash is of a
/// certificate that is replaced every 8 days. The long-term fingerprint (from the
/// configuration, or nothing) should be stored for a WebTransport first contact.
#[test]
fn a_replica_first_synced_over_webtransport_accepts_the_genuine_server_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (uuid, fingerprint, hashes) = identity(&data);
    let tok = token(&data);
    let pin = Pin::parse(&uuid, &fingerprint).unwrap();
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let addr = server.addr;
    let path = dir.path().join("laptop.rekord");
    {
        let db = Db::open_synced(&path, web_config(addr, &tok, &hashes).pin(pin.clone())).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let parts = db.tree::<Part>().unwrap();
        create(
            &parts,
            &Part {
                name: "over webtransport".into(),
                qty: 1,
            },
        );
        db.wait_pushed(LIMIT).unwrap();
    }
    let db = Db::open_synced(&path, config(addr, &tok).pin(pin)).unwrap();
    let caught_up = db.wait_caught_up(Duration::from_secs(8));
    let status = db.sync_status().unwrap();
    assert!(
        caught_up.is_ok(),
        "the genuine server (pinned {fingerprint}) is refused over QUIC: {:?} / {:?}",
        status.last_error,
        status.refused
    );
    drop(db);
    drop(server);
}
