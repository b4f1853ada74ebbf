//! The server's WebTransport side (the browsers' transport, ALPN `h3`, on the same UDP port as
//! native clients), exercised from native code against a real `rekord-server` process: a
//! replica over WebTransport and one over rekord's own QUIC ALPN see each other's changes,
//! borrow and return through the server, and the WebTransport one's offline writes arrive
//! after the server was killed and restarted. A wrong certificate hash, an impostor server,
//! a refused origin and a silent `h3` connection are refused with clear reasons.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::path::Path;
use std::time::{Duration, Instant};

use process::{ServerProcess, config, identity, token};
use rekord::net::WebTarget;
use rekord::{Db, Error, Key, SyncConfig};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(60);

/// Waits (polling, bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Creates a part once the first id range has arrived.
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

/// The WebTransport target of a server at `port` whose certificates have `hashes`.
fn web(port: u16, hashes: &[String]) -> WebTarget {
    WebTarget::new(format!("https://127.0.0.1:{port}/rekord"), hashes.to_vec())
}

/// A synced database's configuration reaching the server over WebTransport.
fn web_config(server: &ServerProcess, token: &str, hashes: &[String]) -> SyncConfig {
    config(server.addr, token)
        .web_transport(web(server.addr.port(), hashes))
        .timeout(Duration::from_secs(3))
}

fn start(data: &Path, listen: &str) -> ServerProcess {
    ServerProcess::start_with(
        data,
        listen,
        None,
        "info",
        &["--allow-origin", "http://127.0.0.1:9"],
    )
}

#[test]
fn a_webtransport_replica_and_a_native_one_sync_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, hashes) = identity(&data);
    assert_eq!(
        hashes.len(),
        1,
        "a fresh server has one WebTransport certificate"
    );
    let token = token(&data);
    let server = start(&data, "127.0.0.1:0");
    let addr = server.addr;

    let native = Db::open_synced(dir.path().join("native.rekord"), config(addr, &token)).unwrap();
    let browser_like = Db::open_synced(
        dir.path().join("web.rekord"),
        web_config(&server, &token, &hashes),
    )
    .unwrap();
    native.wait_caught_up(LIMIT).unwrap();
    browser_like.wait_caught_up(LIMIT).unwrap();
    assert_ne!(native.replica(), browser_like.replica());
    let (pn, pw) = (
        native.tree::<Part>().unwrap(),
        browser_like.tree::<Part>().unwrap(),
    );

    // Native creates: the WebTransport replica receives it live.
    let bolt = create(
        &pn,
        &Part {
            name: "bolt".into(),
            qty: 1,
        },
    );
    eventually(
        "the WebTransport replica to receive the native create",
        || pw.get(bolt).is_ok(),
    );
    // The WebTransport replica creates (ids granted over WebTransport): native receives it.
    let nut = create(
        &pw,
        &Part {
            name: "nut".into(),
            qty: 5,
        },
    );
    eventually(
        "the native replica to receive the WebTransport create",
        || pn.get(nut).is_ok(),
    );
    assert_eq!(pn.get(nut).unwrap().qty, 5);

    // A borrow over WebTransport goes through the server: refused while native holds it.
    assert!(matches!(
        pw.borrow(bolt),
        Err(Error::AlreadyBorrowed { .. })
    ));
    pn.return_borrow(bolt).unwrap();
    native.wait_pushed(LIMIT).unwrap();
    eventually("the return to reach the WebTransport replica", || {
        pw.meta(bolt).is_ok_and(|m| m.holder == 0)
    });
    pw.borrow(bolt).unwrap();
    pw.update(bolt, |p| p.qty = 7).unwrap();
    pw.return_borrow(bolt).unwrap();
    browser_like.wait_pushed(LIMIT).unwrap();
    eventually("the WebTransport edit to reach the native replica", || {
        pn.get(bolt).is_ok_and(|p| p.qty == 7)
    });

    // The server dies while the WebTransport replica writes: its writes wait in the outbox
    // (kept across a reopen), and arrive once the server is back on the same port.
    server.kill();
    let mut offline = Vec::new();
    for i in 0..20 {
        offline.push(
            pw.create(&Part {
                name: format!("offline {i}"),
                qty: i,
            })
            .unwrap(),
        );
    }
    drop(pw);
    drop(browser_like);
    let browser_like = Db::open_synced(
        dir.path().join("web.rekord"),
        web_config_at(addr, &token, &hashes),
    )
    .unwrap();
    assert!(browser_like.sync_status().unwrap().outbox >= 20);
    let server = start(&data, &addr.to_string());
    browser_like.wait_pushed(LIMIT).unwrap();
    for key in &offline {
        eventually("an offline write to reach the native replica", || {
            pn.get(*key).is_ok()
        });
    }
    assert_eq!(pn.get(offline[19]).unwrap().name, "offline 19");
    drop(server);
}

/// [`web_config`] for a server at `addr` that is not running now.
fn web_config_at(addr: std::net::SocketAddr, token: &str, hashes: &[String]) -> SyncConfig {
    config(addr, token)
        .web_transport(web(addr.port(), hashes))
        .timeout(Duration::from_secs(3))
}

#[test]
fn a_wrong_certificate_hash_and_an_impostor_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (uuid, fingerprint, hashes) = identity(&data);
    let token = token(&data);
    let server = start(&data, "127.0.0.1:0");

    // A hash that is not the server's: the TLS handshake fails, and the status says why.
    let wrong = vec!["00".repeat(32)];
    let db = Db::memory_synced(web_config(&server, &token, &wrong)).unwrap();
    let deadline = Instant::now() + LIMIT;
    let reason = loop {
        let st = db.sync_status().unwrap();
        if let Some(e) = st.last_error {
            break e;
        }
        assert!(Instant::now() < deadline, "no error reported");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!db.sync_status().unwrap().online);
    assert!(reason.contains("certificate"), "{reason}");
    drop(db);

    // An impostor: another server (its own identity), whose WebTransport certificate the
    // replica is given, while the replica expects the first server's UUID.
    let other_data = dir.path().join("impostor");
    let (_, _, other_hashes) = identity(&other_data);
    let other_token = token_for(&other_data);
    let impostor = start(&other_data, "127.0.0.1:0");
    let pin = rekord::net::Pin::parse(&uuid, &fingerprint).unwrap();
    let mut cfg = web_config(&impostor, &other_token, &other_hashes);
    cfg.pin = Some(pin);
    let db = Db::memory_synced(cfg).unwrap();
    let deadline = Instant::now() + LIMIT;
    let refused = loop {
        let st = db.sync_status().unwrap();
        if let Some(r) = st.refused {
            break r;
        }
        assert!(Instant::now() < deadline, "the impostor was not refused");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(refused.contains(&uuid), "{refused}");
    assert!(db.replica() == u32::MAX || !db.sync_status().unwrap().online);
    drop(db);

    // The right hash still works.
    let db = Db::memory_synced(web_config(&server, &token, &hashes)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(impostor);
    drop(server);
}

fn token_for(data: &Path) -> String {
    token(data)
}

/// A raw WebTransport session with `origin` in its CONNECT request; the HTTP status or the
/// failure.
async fn open_raw(
    port: u16,
    hashes: &[String],
    origin: Option<&str>,
) -> Result<web_transport_quinn::Session, String> {
    let bytes: Vec<Vec<u8>> = hashes
        .iter()
        .map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect();
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(bytes)
        .map_err(|e| e.to_string())?;
    let url: url::Url = format!("https://127.0.0.1:{port}/rekord").parse().unwrap();
    let mut request = web_transport_quinn::proto::ConnectRequest::new(url);
    if let Some(origin) = origin {
        request.headers.insert(
            "origin",
            origin.parse().map_err(|_| "bad origin".to_owned())?,
        );
    }
    client.connect(request).await.map_err(|e| e.to_string())
}

#[test]
fn origins_not_allowed_are_refused_and_a_silent_session_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, hashes) = identity(&data);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &[
            "--allow-origin",
            "http://127.0.0.1:8080",
            "--limit",
            "hello_timeout_secs=2",
        ],
    );
    let port = server.addr.port();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Allowed origin (any letter case, a trailing slash) and no origin (not a browser).
        for origin in [
            Some("http://127.0.0.1:8080"),
            Some("HTTP://127.0.0.1:8080/"),
            None,
        ] {
            let session = open_raw(port, &hashes, origin).await;
            assert!(session.is_ok(), "{origin:?}: {session:?}");
        }
        // Another origin: the CONNECT is answered 403.
        for origin in ["http://127.0.0.1:8081", "https://evil.example", "null"] {
            let refused = open_raw(port, &hashes, Some(origin)).await;
            let e = refused
                .err()
                .unwrap_or_else(|| panic!("{origin} was let in"));
            assert!(e.contains("403"), "{origin}: {e}");
        }
        // A session that never sends its hello is closed within the hello bound.
        let session = open_raw(port, &hashes, None).await.unwrap();
        let start = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(20), session.closed()).await;
        assert!(closed.is_ok(), "a silent session stayed open");
        assert!(start.elapsed() < Duration::from_secs(10));
    });
    drop(server);
}

/// The server announces its WebTransport certificates signed with its long-term key; the
/// replica keeps the hashes and names them next time: after a rotation, a replica whose
/// configuration still names only the old hash connects with the one it learned.
#[test]
fn a_replica_learns_the_next_certificate_and_survives_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (uuid, fingerprint, first) = identity(&data);
    let now = rekord_server::web::unix_now();
    // A next certificate exists (as in the last days of the current one).
    let mut certs = rekord_server::WebCerts::load_or_create(&data, now).unwrap();
    certs.prepare_next(now).unwrap();
    let next = certs.hashes()[1].clone();
    let token = token(&data);
    let server = start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let pin = rekord::net::Pin::parse(&uuid, &fingerprint).unwrap();
    let path = dir.path().join("web.rekord");
    let cfg = || web_config_at(addr, &token, &first).pin(pin.clone());
    let db = Db::open_synced(&path, cfg()).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    server.kill();

    // The rotation: the next certificate is presented, the old one is gone.
    let mut certs = rekord_server::WebCerts::load_or_create(&data, now).unwrap();
    certs.force_rotate(now).unwrap();
    assert_eq!(certs.hashes(), vec![next.clone()]);
    let server = start(&data, &addr.to_string());
    // Configured with the old hash only: it connects with the learned one.
    let db = Db::open_synced(&path, cfg()).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    // A replica that never met the server, with the same stale configuration: refused by
    // TLS (nothing names the presented certificate).
    let fresh = Db::memory_synced(cfg()).unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        let st = fresh.sync_status().unwrap();
        if let Some(e) = st.last_error {
            assert!(e.contains("certificate"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "no error reported");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!fresh.sync_status().unwrap().online);
    drop(server);
}
