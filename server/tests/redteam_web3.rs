//! Red team 16: WebTransport certificate continuity (damaged slots, crashes inside a switch,
//! `rekord-server identity` before start and while serving), Origin matching, and stalls
//! around the pre-hello certificate announcement. Each test asserts the correct behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use process::{ServerProcess, identity, token};
use rekord::net::{ConnectOptions, NetError, WebTarget};
use rekord::proto::handshake::ClientConfig;
use rekord::proto::{Frame, FrameReader, Request, Response};
use rekord_server::{Web, WebCerts};

const DAY: u64 = 24 * 3600;

fn client(token: &str) -> ClientConfig {
    ClientConfig {
        app: process::APP.into(),
        client: *uuid::Uuid::new_v4().as_bytes(),
        token: token.into(),
        pinned: None,
        cursor: 0,
        trees: vec![],
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    }
}

fn target(addr: SocketAddr, hashes: &[String]) -> WebTarget {
    WebTarget::new(
        format!("https://127.0.0.1:{}/rekord", addr.port()),
        hashes.to_vec(),
    )
}

/// The hash of the WebTransport certificate the server at `addr` presents now (asked with a
/// hash it cannot have: the mismatch names the presented one).
fn presented(addr: SocketAddr) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bogus = vec!["00".repeat(32)];
        let r = rekord::net::connect_web(
            &target(addr, &bogus),
            &client("x"),
            None,
            ConnectOptions::default().timeout(Duration::from_secs(5)),
        )
        .await;
        match r {
            Err(NetError::UnknownWebCertificate { found, .. }) => found,
            other => panic!("expected a certificate mismatch, got {other:?}"),
        }
    })
}

/// Whether a WebTransport session with `hashes` reaches the hello at the server at `addr`.
fn connects(addr: SocketAddr, token: &str, hashes: &[String]) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        rekord::net::connect_web(
            &target(addr, hashes),
            &client(token),
            None,
            ConnectOptions::default().timeout(Duration::from_secs(5)),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    })
}

fn slot(data: &Path, slot: &str, ext: &str) -> std::path::PathBuf {
    data.join(format!("web-{slot}.{ext}"))
}

// ---------------------------------------------------------------------------------------
// 1. A damaged current slot beside a valid, announced next one

/// `WebCerts::switch` writes the next certificate over the current slot key first, then the
/// certificate, then `until`, then removes the next slot. A crash after the key was written
/// leaves a current slot whose key is not its certificate's, and the next slot intact.
/// `WebCert::load` then drops the current slot and `load_or_create` makes a brand-new
/// certificate that no replica ever learned, while the next one (announced, signed, and
/// stored by every replica that connected in the overlap) sits unused on disk and is never
/// presented. The same happens when the current slot is deleted. Correct: a valid next
/// certificate takes the place of an unusable current one (the switch completes), so a
/// replica that learned [current, next] keeps connecting.
#[test]
fn rt16_a_crash_inside_a_switch_keeps_a_certificate_replicas_learned() {
    for damage in ["key-of-next-over-current", "current-slot-removed"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server");
        let _ = identity(&data);
        let now = rekord_server::web::unix_now();
        // In the overlap (as in the last five days of the current certificate): both
        // announced, both learned by replicas.
        let mut certs = WebCerts::load_or_create(&data, now).unwrap();
        certs.prepare_next(now).unwrap();
        let learned = certs.hashes();
        assert_eq!(learned.len(), 2);
        match damage {
            "key-of-next-over-current" => {
                std::fs::copy(slot(&data, "next", "key"), slot(&data, "current", "key")).unwrap();
            }
            _ => {
                for ext in ["der", "key", "until"] {
                    std::fs::remove_file(slot(&data, "current", ext)).unwrap();
                }
            }
        }
        // The server starts again.
        let restarted = WebCerts::load_or_create(&data, now).unwrap();
        assert!(
            learned.contains(&restarted.current.hash()),
            "{damage}: the server now presents {} while every replica learned {learned:?} \
             (the valid next certificate is on disk: {:?})",
            restarted.current.hash(),
            restarted.next.as_ref().map(|n| n.hash()),
        );
    }
}

/// The same through the real binary: the server restarted after the crash presents a
/// certificate a WebTransport replica configured with the printed [current, next] hashes
/// can reach.
#[test]
fn rt16_after_a_crash_inside_a_switch_the_server_is_reachable_with_the_learned_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let tok = token(&data);
    let now = rekord_server::web::unix_now();
    let mut certs = WebCerts::load_or_create(&data, now).unwrap();
    certs.prepare_next(now).unwrap();
    let learned = certs.hashes();
    std::fs::copy(slot(&data, "next", "key"), slot(&data, "current", "key")).unwrap();
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let outcome = connects(server.addr, &tok, &learned);
    assert!(
        outcome.is_ok(),
        "a replica holding the announced hashes {learned:?} is refused: {outcome:?}"
    );
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 2. `rekord-server identity` prints hashes the server does not present

/// A server stopped for a week: its current WebTransport certificate has less than a day
/// left. The operator runs `rekord-server identity` (as documented, to configure pages) and
/// then `rekord-server run`. `identity` only reads the stored certificates (so as not to
/// race a running server), but no server runs here: it prints the old hash, and the server
/// switches to a new certificate at start. A page configured with the printed hash is
/// refused. Correct: what `identity` prints with no server running includes the certificate
/// the server presents when it starts.
#[test]
fn rt16_identity_before_start_prints_the_certificate_the_server_presents() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let tok = token(&data);
    for ext in ["der", "key", "until"] {
        std::fs::remove_file(slot(&data, "current", ext)).unwrap();
    }
    let now = rekord_server::web::unix_now();
    // Made nine days ago: 23 hours left, no next one (the server was stopped since).
    let old = WebCerts::load_or_create(&data, now - 9 * DAY).unwrap();
    assert!(old.next.is_none());
    let (_, _, printed) = identity(&data);
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let shown = presented(server.addr);
    let outcome = connects(server.addr, &tok, &printed);
    assert!(
        printed.contains(&shown),
        "identity printed {printed:?} before the start; the server presents {shown} \
         (a page configured with the printed hashes: {outcome:?})"
    );
    drop(server);
}

/// While the server serves, a current slot that does not load (here: a key that is not the
/// certificate's, as for an instant inside every switch, which writes the key first) makes
/// `identity` fall back to `WebCerts::load_or_create`: it writes a new certificate over the
/// running server's slot and prints its hash, which the running server never presents (it
/// presents the one in memory). Correct: `identity` while serving prints only hashes the
/// server presents or announces, and does not write certificates under it.
#[test]
fn rt16_identity_while_serving_does_not_replace_the_servers_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let _ = identity(&data);
    let tok = token(&data);
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let shown = presented(server.addr);
    let other = dir.path().join("other");
    let _ = identity(&other);
    std::fs::copy(
        slot(&other, "current", "key"),
        slot(&data, "current", "key"),
    )
    .unwrap();
    let der_before = std::fs::read(slot(&data, "current", "der")).unwrap();
    let (_, _, printed) = identity(&data);
    let der_after = std::fs::read(slot(&data, "current", "der")).unwrap();
    let outcome = connects(server.addr, &tok, &printed);
    assert!(
        printed.contains(&shown) && der_before == der_after,
        "identity while serving printed {printed:?} (the server presents {shown}); \
         certificate file rewritten: {}; a page given the printed hashes: {outcome:?}",
        der_before != der_after
    );
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 3. Origins (defended)

/// Odd forms of the Origin header against an allow-list: letter case and default ports
/// match; a trailing dot, another port, another scheme, `null`, userinfo, a path-like
/// suffix and an empty value do not.
#[test]
fn rt16_odd_origins_match_only_when_they_are_the_same_origin() {
    let web = Web {
        origins: vec![
            "https://app.example.com".into(),
            "http://127.0.0.1:8080".into(),
        ],
        ..Web::default()
    };
    web.validate().unwrap();
    for ok in [
        "https://app.example.com",
        "HTTPS://APP.EXAMPLE.COM",
        "https://app.example.com:443",
        "https://app.example.com/",
        "http://127.0.0.1:8080",
    ] {
        assert!(web.allows(Some(ok)), "{ok} refused");
    }
    for bad in [
        "https://app.example.com.",
        "https://app.example.com:8443",
        "https://app.example.com:4430",
        "http://app.example.com",
        "https://app.example.com.evil.example",
        "https://evil@app.example.com",
        "https://app.example.com@evil.example",
        "null",
        "",
        " https://app.example.com",
        "https://app.example.com\0",
        "http://127.0.0.1",
        "http://127.0.0.1:80",
        "http://127.0.0.1:808",
        "https://127.0.0.1:8080",
        "http://[::1]:8080",
    ] {
        assert!(!web.allows(Some(bad)), "{bad:?} let in");
    }
    // Shapes the configuration refuses.
    for origin in [
        "null",
        "app.example.com",
        "ftp://x",
        "https://",
        "https://a/b",
    ] {
        let web = Web {
            origins: vec![origin.into()],
            ..Web::default()
        };
        assert!(web.validate().is_err(), "{origin} accepted in web.origins");
    }
}

// ---------------------------------------------------------------------------------------
// 4. Stalls around the pre-hello announcement (defended)

/// Sessions that ask for the signed announcement and then stall (never send the hello, or
/// never read the answer), a session that asks twice, and a native client that asks before
/// its hello: the stalled ones are closed within the hello bound, the double ask is a
/// protocol error, and a genuine WebTransport client connects meanwhile.
#[test]
fn rt16_announcement_then_stall_is_closed_and_does_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, hashes) = identity(&data);
    let tok = token(&data);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--limit", "hello_timeout_secs=2"],
    );
    let addr = server.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bytes: Vec<Vec<u8>> = hashes
            .iter()
            .map(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect();
        let mut stalled = Vec::new();
        for _ in 0..6 {
            let wt = web_transport_quinn::ClientBuilder::new()
                .with_server_certificate_hashes(bytes.clone())
                .unwrap();
            let url: url::Url = format!("https://127.0.0.1:{}/rekord", addr.port())
                .parse()
                .unwrap();
            let session = wt
                .connect(web_transport_quinn::proto::ConnectRequest::new(url))
                .await
                .unwrap();
            let (mut send, mut recv) = session.open_bi().await.unwrap();
            let ask = rekord::proto::encode(&Frame::Request {
                id: 0,
                body: Request::WebCertificates { nonce: [7; 32] },
            })
            .unwrap();
            send.write_all(&ask).await.unwrap();
            let mut reader = FrameReader::new();
            let answer = loop {
                if let Some(f) = reader.next_frame().unwrap() {
                    break f;
                }
                let chunk =
                    tokio::time::timeout(Duration::from_secs(5), recv.read_chunk(1 << 16, true))
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                reader.push(&chunk.bytes);
            };
            assert!(
                matches!(
                    answer,
                    Frame::Response {
                        id: 0,
                        body: Response::WebCertificates(_)
                    }
                ),
                "{answer:?}"
            );
            stalled.push((session, send, recv));
        }
        // A second ask before the hello: closed at once as a protocol error.
        {
            let wt = web_transport_quinn::ClientBuilder::new()
                .with_server_certificate_hashes(bytes.clone())
                .unwrap();
            let url: url::Url = format!("https://127.0.0.1:{}/rekord", addr.port())
                .parse()
                .unwrap();
            let session = wt
                .connect(web_transport_quinn::proto::ConnectRequest::new(url))
                .await
                .unwrap();
            let (mut send, _recv) = session.open_bi().await.unwrap();
            for id in 0..2 {
                let ask = rekord::proto::encode(&Frame::Request {
                    id,
                    body: Request::WebCertificates {
                        nonce: [id as u8; 32],
                    },
                })
                .unwrap();
                send.write_all(&ask).await.unwrap();
            }
            let closed = tokio::time::timeout(Duration::from_secs(5), session.closed()).await;
            assert!(
                closed.is_ok(),
                "a double ask before the hello was not closed"
            );
        }
        // A genuine client gets through meanwhile.
        let start = Instant::now();
        let s = rekord::net::connect_web(
            &target(addr, &hashes),
            &client(&tok),
            None,
            ConnectOptions::default().timeout(Duration::from_secs(5)),
        )
        .await;
        assert!(s.is_ok(), "{:?}", s.err());
        assert!(start.elapsed() < Duration::from_secs(3));
        // The stalled ones are closed within the hello bound.
        for (session, _s, _r) in &stalled {
            let closed = tokio::time::timeout(Duration::from_secs(8), session.closed()).await;
            assert!(
                closed.is_ok(),
                "a session that stalled after the announcement stayed open"
            );
        }
    });
    drop(server);
}

// ---------------------------------------------------------------------------------------
// 5. Close reasons over WebTransport

/// A session the server ends for a limit or a protocol violation is closed with a code and a
/// reason (`CLOSE_LIMITED` "no hello within 2 s (limits.hello_timeout_secs)",
/// `CLOSE_PROTOCOL` and why); a native client reads them from the QUIC close. Over
/// WebTransport `Peer::close` closes the *session* (web_transport_quinn writes the
/// CLOSE_WEBTRANSPORT_SESSION capsule from a spawned task), and `handle` then drops its
/// `CloseOnDrop`, which closes the QUIC connection at once with code 0 "session ended":
/// the capsule never leaves, and the client is told only "session ended". Correct: a
/// WebTransport client learns the reason too.
#[test]
fn rt16_a_webtransport_client_learns_why_the_server_closed_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, hashes) = identity(&data);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--limit", "hello_timeout_secs=2"],
    );
    let addr = server.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reasons = rt.block_on(async {
        let bytes: Vec<Vec<u8>> = hashes
            .iter()
            .map(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect();
        let mut reasons = Vec::new();
        // (what, bytes sent on the session's stream)
        let garbage = {
            let mut b = 64u32.to_le_bytes().to_vec();
            b.extend_from_slice(&[0xAB; 64]);
            b
        };
        let ask = rekord::proto::encode(&Frame::Request {
            id: 0,
            body: Request::WebCertificates { nonce: [1; 32] },
        })
        .unwrap();
        for (what, send_bytes, expect) in [
            ("no hello", ask.clone(), "hello"),
            ("a malformed frame", garbage, "frame"),
        ] {
            let wt = web_transport_quinn::ClientBuilder::new()
                .with_server_certificate_hashes(bytes.clone())
                .unwrap();
            let url: url::Url = format!("https://127.0.0.1:{}/rekord", addr.port())
                .parse()
                .unwrap();
            let session = wt
                .connect(web_transport_quinn::proto::ConnectRequest::new(url))
                .await
                .unwrap();
            let (mut send, _recv) = session.open_bi().await.unwrap();
            send.write_all(&send_bytes).await.unwrap();
            let closed = tokio::time::timeout(Duration::from_secs(8), session.closed())
                .await
                .unwrap_or_else(|_| panic!("{what}: not closed"));
            reasons.push((what, closed.to_string(), expect));
        }
        reasons
    });
    drop(server);
    for (what, reason, expect) in &reasons {
        assert!(
            reason.contains(expect),
            "{what}: the WebTransport client was told only {reason:?} (all: {reasons:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6. A genuine announcement replayed (defended)

/// A genuine signed announcement, taken from the server for one nonce, does not verify for
/// another nonce, for another server UUID, with its list shortened, reordered or with an
/// expiry changed, or under another pinned fingerprint.
#[test]
fn rt16_a_genuine_announcement_does_not_verify_when_replayed_or_edited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, fingerprint, _) = identity(&data);
    let now = rekord_server::web::unix_now();
    let mut certs = WebCerts::load_or_create(&data, now).unwrap();
    certs.prepare_next(now).unwrap();
    let hashes = certs.hashes();
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let addr = server.addr;
    let nonce = [0x5a; 32];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let announced = rt.block_on(async {
        let bytes: Vec<Vec<u8>> = hashes
            .iter()
            .map(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect();
        let wt = web_transport_quinn::ClientBuilder::new()
            .with_server_certificate_hashes(bytes)
            .unwrap();
        let url: url::Url = format!("https://127.0.0.1:{}/rekord", addr.port())
            .parse()
            .unwrap();
        let session = wt
            .connect(web_transport_quinn::proto::ConnectRequest::new(url))
            .await
            .unwrap();
        let (mut send, mut recv) = session.open_bi().await.unwrap();
        let ask = rekord::proto::encode(&Frame::Request {
            id: 0,
            body: Request::WebCertificates { nonce },
        })
        .unwrap();
        send.write_all(&ask).await.unwrap();
        let mut reader = FrameReader::new();
        loop {
            if let Some(f) = reader.next_frame().unwrap() {
                match f {
                    Frame::Response {
                        body: Response::WebCertificates(w),
                        ..
                    } => break w,
                    other => panic!("{other:?}"),
                }
            }
            let chunk =
                tokio::time::timeout(Duration::from_secs(5), recv.read_chunk(1 << 16, true))
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
            reader.push(&chunk.bytes);
        }
    });
    drop(server);
    assert_eq!(announced.certificates.len(), 2);
    let verify = rekord::net::verify_web_certificates;
    let server_id = announced.server;
    assert_eq!(
        verify(&announced, &server_id, &nonce, Some(&fingerprint)).unwrap(),
        fingerprint
    );
    assert!(verify(&announced, &server_id, &[0x5b; 32], Some(&fingerprint)).is_err());
    let mut other_id = server_id;
    other_id[0] ^= 1;
    assert!(verify(&announced, &other_id, &nonce, Some(&fingerprint)).is_err());
    assert!(verify(&announced, &server_id, &nonce, Some(&"ab".repeat(32))).is_err());
    let mut edited = announced.clone();
    edited.certificates.pop();
    assert!(verify(&edited, &server_id, &nonce, None).is_err());
    let mut edited = announced.clone();
    edited.certificates.reverse();
    assert!(verify(&edited, &server_id, &nonce, None).is_err());
    let mut edited = announced.clone();
    edited.certificates[0].not_after += 1;
    assert!(verify(&edited, &server_id, &nonce, None).is_err());
    let mut edited = announced.clone();
    edited.certificates[1].hash[0] ^= 1;
    assert!(verify(&edited, &server_id, &nonce, None).is_err());
}

// ---------------------------------------------------------------------------------------
// 7. The error for a WebTransport hash that is not the presented certificate's

/// An operator mistake: a WebTransport target given the server's long-term `fingerprint`
/// (the line `identity` prints above the `web-hash` lines) instead of a `web-hash`. The
/// error is `NetError::CertificateMismatch`, whose text says the certificate "is not the
/// one pinned at first contact; refusing a possible impostor (pinned fingerprint ...)"
/// although nothing was pinned (first contact, hashes from the configuration) and the
/// server is the genuine one. Correct: the error names the WebTransport certificate hashes
/// it was given, not a pin (and hints at the `web-hash` lines).
#[test]
fn rt16_a_wrong_webtransport_hash_is_reported_as_such_not_as_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, fingerprint, _) = identity(&data);
    let tok = token(&data);
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let err = connects(server.addr, &tok, &[fingerprint]).unwrap_err();
    drop(server);
    assert!(
        !err.contains("pinned at first contact") && err.contains("WebTransport"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. A rotation forced by the administrator

/// `rekord-server rotate-web-certificate` runs the command (through the admin socket
/// while the server serves, on the files otherwise) and prints the hashes after it.
fn rotate(data: &Path) -> Vec<String> {
    let out = std::process::Command::new(process::BIN)
        .arg("--data")
        .arg(data)
        .arg("rotate-web-certificate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("web-hash ").map(str::to_owned))
        .collect()
}

/// A suspected leak of the WebTransport key: the administrator rotates while the server
/// serves. The server presents the new certificate at once (no restart), `identity` prints
/// it, a replica given the new hash connects and one holding only the old one is refused;
/// with the server stopped the command works on the files, and the server presents that
/// certificate when it starts.
#[test]
fn rt16_an_administrator_rotates_the_webtransport_certificate_live_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (_, _, before) = identity(&data);
    let tok = token(&data);
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    assert_eq!(presented(server.addr), before[0]);
    let rotated = rotate(&data);
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert!(
        !before.contains(&rotated[0]),
        "a new certificate: {rotated:?} {before:?}"
    );
    assert_eq!(presented(server.addr), rotated[0], "presented at once");
    assert_eq!(identity(&data).2, rotated);
    connects(server.addr, &tok, &rotated).unwrap();
    let old = connects(server.addr, &tok, &before).unwrap_err();
    assert!(old.contains("WebTransport certificate"), "{old}");
    drop(server);
    let offline = rotate(&data);
    assert!(!offline.contains(&rotated[0]), "{offline:?}");
    let server = ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    assert_eq!(presented(server.addr), offline[0]);
    connects(server.addr, &tok, &offline).unwrap();
    drop(server);
}

/// `web.certificate` and `web.key`: both or neither; an unreadable chain, an empty one, and
/// a key of another certificate are refused at start with what is wrong, naming the file.
#[test]
fn a_public_certificate_is_checked_before_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let key_pem = |dir: &std::path::Path, name: &str| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sync.example.com".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let (cert_a, key_a) = key_pem(dir.path(), "a");
    let (_, key_b) = key_pem(dir.path(), "b");
    let web = |c: Option<&std::path::Path>, k: Option<&std::path::Path>| Web {
        certificate: c.map(Into::into),
        key: k.map(Into::into),
        ..Web::default()
    };
    let alone = web(Some(&cert_a), None).validate().unwrap_err().to_string();
    assert!(alone.contains("go together"), "{alone}");
    assert!(web(None, Some(&key_a)).validate().is_err());
    let ok = web(Some(&cert_a), Some(&key_a));
    ok.validate().unwrap();
    assert!(ok.public_certificate().unwrap().is_some());
    assert!(Web::default().public_certificate().unwrap().is_none());
    let other = web(Some(&cert_a), Some(&key_b))
        .public_certificate()
        .unwrap_err()
        .to_string();
    assert!(other.contains("does not belong"), "{other}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let empty = web(Some(&garbage), Some(&key_a))
        .public_certificate()
        .unwrap_err()
        .to_string();
    assert!(
        empty.contains("garbage.pem") && empty.contains("no certificate"),
        "{empty}"
    );
    let missing = web(Some(&dir.path().join("missing.pem")), Some(&key_a))
        .public_certificate()
        .unwrap_err()
        .to_string();
    assert!(missing.contains("missing.pem"), "{missing}");
}
