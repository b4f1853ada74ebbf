//! A real QUIC server and real clients on loopback: the pinned, authenticated handshake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{APP, Running, client};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rekord::net::{self, NetError};
use rekord::proto::handshake::{HandshakeError, Trees};
use rekord::proto::{self, Refusal, Request, Response};

const BOUND: Duration = Duration::from_secs(60);

async fn bounded<F: Future>(f: F) -> F::Output {
    common::bounded(BOUND, f).await
}

fn refusal(result: Result<net::Session, NetError>) -> Refusal {
    match result {
        Err(NetError::Handshake(HandshakeError::Refused(r))) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_pins_identity_and_ping_works() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let cfg = client(&server.token("alice"));

        let mut session = net::connect(server.addr, &cfg, None).await.unwrap();
        let pin = session.pin();
        assert_eq!(pin.server, *server.identity.uuid.as_bytes());
        assert_eq!(pin.cert, server.identity.fingerprint());
        assert_eq!(pin.cert.len(), 64);
        let hello = session.server_hello().clone();
        assert_eq!(hello.app, APP);
        assert_eq!(hello.protocol, proto::PROTOCOL_VERSION);
        assert!(hello.replica >= 2, "holder 1 is reserved");
        let rtt = session.ping().await.unwrap();
        assert!(rtt < Duration::from_secs(5));
        session.ping().await.unwrap();
        // An empty batch of changes is accepted at the current head (nothing yet).
        let changes = Request::Changes {
            op: [7; 16],
            changes: vec![],
        };
        match session.request(changes).await.unwrap() {
            Response::Accepted { seq } => assert_eq!(seq, 0),
            other => panic!("unexpected {other:?}"),
        }
        session.ping().await.unwrap();
        session.close().await;

        // Later contacts check the pin; the holder number is the client's for good.
        let mut again = net::connect(server.addr, &cfg, Some(&pin)).await.unwrap();
        assert_eq!(again.pin(), pin);
        assert_eq!(again.server_hello().replica, hello.replica);
        again.ping().await.unwrap();
        // Another client gets another holder number.
        let other = net::connect(server.addr, &client(&server.token("bob")), None)
            .await
            .unwrap();
        assert_ne!(other.server_hello().replica, hello.replica);
        assert!(other.server_hello().replica >= 2);
        again.close().await;
        other.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_server_is_refused() {
    bounded(async {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let a = Running::start(dir_a.path());
        let b = Running::start(dir_b.path());
        let cfg = client(&a.token("alice"));
        // The stranger even knows a valid token of its own for this client: not enough.
        let _ = b.token("alice");
        let pin = net::connect(a.addr, &cfg, None).await.unwrap().pin();

        match net::connect(b.addr, &cfg, Some(&pin)).await {
            Err(e @ NetError::CertificateMismatch { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("not the one pinned at first contact")
                        && text.contains("impostor"),
                    "{text}"
                );
            }
            other => panic!("expected a certificate mismatch, got {other:?}"),
        }
        // The pinned server is still fine.
        net::connect(a.addr, &cfg, Some(&pin))
            .await
            .unwrap()
            .ping()
            .await
            .unwrap();
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_pinned_certificate_but_another_identity_is_refused() {
    bounded(async {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let a = Running::start(dir_a.path());
        let cfg = client(&a.token("alice"));
        let pin = net::connect(a.addr, &cfg, None).await.unwrap().pin();
        a.stop().await;

        // A copy of A's data directory (key, certificate, tokens) under another UUID.
        for f in ["cert.der", "key.der", "server.redb"] {
            std::fs::copy(dir_a.path().join(f), dir_b.path().join(f)).unwrap();
        }
        let other = uuid::Uuid::new_v4();
        std::fs::write(dir_b.path().join("server.uuid"), other.to_string()).unwrap();
        let b = Running::start(dir_b.path());
        assert_eq!(b.identity.fingerprint(), pin.cert);

        match net::connect(b.addr, &cfg, Some(&pin)).await {
            Err(NetError::Handshake(HandshakeError::WrongServer { expected, found })) => {
                assert_eq!(expected, uuid::Uuid::from_bytes(pin.server).to_string());
                assert_eq!(found, other.to_string());
            }
            other => panic!("expected a wrong server, got {other:?}"),
        }
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_app_bad_token_revoked_token_and_forbidden_tree_are_refused() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let token = server.token("alice");

        let mut wrong_app = client(&token);
        wrong_app.app = "payroll".into();
        assert_eq!(
            refusal(net::connect(server.addr, &wrong_app, None).await),
            Refusal::WrongApp {
                server: APP.into(),
                client: "payroll".into()
            }
        );

        let bad = client("rk1_0000000000000000000000000000000000000000000000000000000000000000");
        assert_eq!(
            refusal(net::connect(server.addr, &bad, None).await),
            Refusal::BadToken
        );
        assert_eq!(
            refusal(net::connect(server.addr, &client(""), None).await),
            Refusal::BadToken
        );

        // Revoked while the server runs: refused from the next hello on.
        let cfg = client(&token);
        net::connect(server.addr, &cfg, None).await.unwrap();
        assert_eq!(server.store.revoke("alice").unwrap(), "alice");
        assert_eq!(
            refusal(net::connect(server.addr, &cfg, None).await),
            Refusal::BadToken
        );

        // A token limited to `parts`.
        let parts = server
            .store
            .issue("parts-only", Trees::Only(vec!["parts".into()]), Trees::All)
            .unwrap();
        let mut salaries = client(&parts);
        salaries.trees = vec!["salaries".into()];
        assert_eq!(
            refusal(net::connect(server.addr, &salaries, None).await),
            Refusal::TreeNotAllowed {
                tree: "salaries".into()
            }
        );
        let mut allowed = client(&parts);
        allowed.trees = vec!["parts".into()];
        net::connect(server.addr, &allowed, None)
            .await
            .unwrap()
            .ping()
            .await
            .unwrap();
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_keeps_its_identity_and_holder_numbers() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let cfg = client(&server.token("alice"));
        let first = net::connect(server.addr, &cfg, None).await.unwrap();
        let pin = first.pin();
        let replica = first.server_hello().replica;
        first.close().await;
        let before = server.identity.clone();
        server.stop().await;

        let server = Running::start(dir.path());
        assert_eq!(server.identity.uuid, before.uuid);
        assert_eq!(server.identity.fingerprint(), before.fingerprint());
        let mut again = net::connect(server.addr, &cfg, Some(&pin)).await.unwrap();
        assert_eq!(again.pin(), pin);
        assert_eq!(again.server_hello().replica, replica);
        again.ping().await.unwrap();
        again.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_sessions() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let mut session = net::connect(server.addr, &client(&server.token("a")), None)
            .await
            .unwrap();
        session.ping().await.unwrap();
        server.stop().await;
        assert!(matches!(
            session.ping().await,
            Err(NetError::Closed(_) | NetError::Timeout { .. })
        ));
        // Nothing listens any more.
        let cfg = client("x");
        assert!(
            net::connect_timeout(
                "127.0.0.1:9".parse().unwrap(),
                &cfg,
                None,
                Duration::from_millis(500)
            )
            .await
            .is_err()
        );
    })
    .await;
}

/// A raw QUIC client (trusting the server's certificate on first contact) that speaks
/// bytes, not frames: the server must close the connection with the protocol error code.
async fn raw_stream(addr: SocketAddr) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream) {
    use quinn::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(net::PinnedVerifier::new(None)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![net::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(addr, net::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (send, _recv) = conn.open_bi().await.unwrap();
    (endpoint, conn, send)
}

async fn closed_with(conn: &quinn::Connection) -> u32 {
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            u32::try_from(close.error_code.into_inner()).unwrap()
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_close_the_connection() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());

        let (_e, conn, mut send) = raw_stream(server.addr).await;
        send.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        assert_eq!(closed_with(&conn).await, net::CLOSE_PROTOCOL);

        let (_e, conn, mut send) = raw_stream(server.addr).await;
        let mut garbage = 16u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xAB; 16]);
        send.write_all(&garbage).await.unwrap();
        assert_eq!(closed_with(&conn).await, net::CLOSE_PROTOCOL);

        // A request before the hello breaks the protocol too.
        let (_e, conn, mut send) = raw_stream(server.addr).await;
        let ping = proto::encode(&proto::Frame::Request {
            id: 1,
            body: Request::Ping,
        })
        .unwrap();
        send.write_all(&ping).await.unwrap();
        assert_eq!(closed_with(&conn).await, net::CLOSE_PROTOCOL);

        // The server is unharmed.
        net::connect(server.addr, &client(&server.token("a")), None)
            .await
            .unwrap()
            .ping()
            .await
            .unwrap();
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_while_serving() {
    use redb::{ReadableDatabase as _, ReadableTableMetadata as _};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let cfg = client(&server.token("alice"));
        let mut session = net::connect(server.addr, &cfg, None).await.unwrap();
        let backup = out.path().join("server-backup.redb");
        let store = server.store.clone();
        let path = backup.clone();
        tokio::task::spawn_blocking(move || store.backup(&path))
            .await
            .unwrap()
            .unwrap();
        session.ping().await.unwrap();
        session.close().await;
        server.stop().await;
        let db = redb::Database::open(&backup).unwrap();
        let txn = db.begin_read().unwrap();
        let tokens = txn
            .open_table(redb::TableDefinition::<&str, &str>::new("tokens"))
            .unwrap();
        assert_eq!(tokens.len().unwrap(), 1);
    })
    .await;
}
