//! The sans-IO sync engine ([`rekord::sync::engine::Engine`]) driven over real QUIC: this
//! test is the driver (a quinn endpoint that pins the server's certificate, one stream per
//! connection, the machine's clock), beside an ordinary native replica, against a real
//! server on loopback. The engine itself has no socket: it asks for connections, hands
//! frames to send, takes what arrived and says when it wants to run again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future as _;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::{APP, Running};
use rekord::net::{ALPN, PinnedVerifier, SERVER_NAME};
use rekord::proto::FrameReader;
use rekord::sync::engine::{Engine, Output};
use rekord::{Db, Key, SyncConfig};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(60);

/// One open connection of the engine.
struct Open {
    conn: u64,
    quic: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: FrameReader,
    /// Keeps the connection's endpoint alive.
    _endpoint: quinn::Endpoint,
}

/// The driver: QUIC with rekord's ALPN, the server's certificate pinned.
struct Quic {
    /// Woken by the engine when the application gave its client work.
    wake: Arc<tokio::sync::Notify>,
    addr: std::net::SocketAddr,
    fingerprint: String,
    open: Option<Open>,
    connects: u32,
}

impl Quic {
    async fn connect(&self) -> Result<(quinn::Endpoint, quinn::Connection), String> {
        use quinn::rustls;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedVerifier::new(Some(self.fingerprint.clone())));
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let connecting = endpoint
            .connect(self.addr, SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_millis(500), connecting)
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok((endpoint, conn))
    }

    /// Does what the engine asks, then waits (at most a millisecond, or until the engine's
    /// deadline) for bytes from the server, and gives the engine the time.
    async fn step(&mut self, engine: &mut Engine) {
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Connect { conn } => {
                    self.connects += 1;
                    let opened = match self.connect().await {
                        Ok((endpoint, quic)) => match quic.open_bi().await {
                            Ok((send, recv)) => Some(Open {
                                conn,
                                quic,
                                send,
                                recv,
                                reader: FrameReader::new(),
                                _endpoint: endpoint,
                            }),
                            Err(_) => None,
                        },
                        Err(_) => None,
                    };
                    if opened.is_none() {
                        engine.handle_closed(conn);
                    }
                    self.open = opened;
                }
                Output::Send { conn, frame } => {
                    if let Some(open) = self.open.as_mut().filter(|o| o.conn == conn) {
                        let bytes = rekord::proto::encode(&frame).unwrap();
                        if open.send.write_all(&bytes).await.is_err() {
                            self.open = None;
                            engine.handle_closed(conn);
                        }
                    }
                }
                Output::Close { conn } => {
                    if let Some(open) = self.open.take_if(|o| o.conn == conn) {
                        open.quic.close(0u32.into(), b"done");
                    }
                }
            }
        }
        // Then waits for bytes from the server, the engine's next deadline, or its waker
        // (the application wrote).
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let wake = self.wake.clone();
        let open = self.open.as_mut();
        let read = async move {
            match open {
                Some(open) => Some(open.recv.read_chunk(64 * 1024, true).await),
                None => std::future::pending().await,
            }
        };
        let got = tokio::select! {
            got = read => got,
            () = wake.notified() => None,
            () = sleep => None,
            // (A bound of its own: the test's checks look at the replicas between steps.)
            () = tokio::time::sleep(Duration::from_millis(5)) => None,
        };
        match got {
            Some(Ok(Some(chunk))) => {
                if let Some(open) = self.open.as_mut() {
                    open.reader.push(&chunk.bytes);
                    let conn = open.conn;
                    while let Some(frame) = open.reader.next_frame().unwrap() {
                        engine.handle_frame(conn, &frame).unwrap();
                    }
                }
            }
            Some(_) => {
                if let Some(open) = self.open.take() {
                    engine.handle_closed(open.conn);
                }
            }
            None => {}
        }
        engine.handle_timeout(Instant::now());
    }

    /// Drives the engine until `f` holds (bounded).
    async fn until(&mut self, engine: &mut Engine, what: &str, mut f: impl FnMut(&Engine) -> bool) {
        let start = Instant::now();
        while !f(engine) {
            assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
            self.step(engine).await;
        }
        eprintln!("{what}: {:?}", start.elapsed());
    }
}

/// The engine's waker for this driver.
struct Wake(Arc<tokio::sync::Notify>);

impl std::task::Wake for Wake {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }
}

fn online(engine: &Engine) -> bool {
    engine
        .db()
        .unwrap()
        .sync_status()
        .is_some_and(|s| s.online && s.caught_up && s.outbox == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_driven_over_quic_syncs_borrows_and_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = Running::start(&data);
    let addr = server.addr;
    let token = server.token("all");
    let fingerprint = rekord::net::fingerprint(&server.identity.cert_der);
    let pin = rekord::net::Pin {
        server: *server.identity.uuid.as_bytes(),
        cert: fingerprint.clone(),
    };
    let config = || {
        SyncConfig::new(addr, APP, &token)
            .pin(pin.clone())
            .timeout(Duration::from_secs(2))
            .idle_timeout(Duration::from_secs(2))
            .retry(
                rekord::Retry::default()
                    .initial(Duration::from_millis(20))
                    .max(Duration::from_millis(200)),
            )
    };
    // B: an ordinary replica with its own sync thread.
    let b = Db::open_synced(dir.path().join("b.rekord"), config()).unwrap();
    let pb = b.tree::<Part>().unwrap();
    // A: the engine, driven here.
    let mut a = Engine::open(dir.path().join("a.rekord"), config(), Instant::now()).unwrap();
    let wake = Arc::new(tokio::sync::Notify::new());
    a.set_waker(Waker::from(Arc::new(Wake(wake.clone()))));
    let mut quic = Quic {
        wake,
        addr,
        fingerprint,
        open: None,
        connects: 0,
    };
    quic.until(&mut a, "A online", online).await;
    let pa = a.db().unwrap().tree::<Part>().unwrap();

    // A's create reaches B; B's reaches A.
    let bolt = pa
        .create(&Part {
            name: "bolt".into(),
            qty: 1,
        })
        .unwrap();
    quic.until(&mut a, "B has A's bolt", |_| pb.get(bolt).is_ok())
        .await;
    let nut = loop {
        match pb.create(&Part {
            name: "nut".into(),
            qty: 2,
        }) {
            Ok(k) => break k,
            Err(rekord::Error::IdsExhausted) => quic.step(&mut a).await,
            Err(e) => panic!("{e}"),
        }
    };
    quic.until(&mut a, "A has B's nut", |_| {
        pa.get(nut).is_ok_and(|p| p.name == "nut")
    })
    .await;

    // B gives its nut back, and A borrows it through the server (the borrow's future runs
    // beside the driver).
    pb.return_borrow(nut).unwrap();
    quic.until(&mut a, "A sees B's return", |_| {
        pa.meta(nut).is_ok_and(|m| m.holder == 0)
    })
    .await;
    {
        let mut borrow = std::pin::pin!(pa.borrow_async(nut));
        let mut cx = Context::from_waker(Waker::noop());
        let start = Instant::now();
        let granted = loop {
            if let Poll::Ready(r) = borrow.as_mut().poll(&mut cx) {
                break r;
            }
            assert!(start.elapsed() < LIMIT, "the borrow never came back");
            quic.step(&mut a).await;
        };
        granted.unwrap();
    }
    pa.update(nut, |p| p.qty = 20).unwrap();
    pa.return_borrow(nut).unwrap();
    quic.until(&mut a, "B sees A's edit and return", |_| {
        pb.get(nut).is_ok_and(|p| p.qty == 20) && pb.meta(nut).is_ok_and(|m| m.holder == 0)
    })
    .await;

    // The server goes away: A notices on its own timers, creates offline, and once the
    // server is back (same address, same data) its write arrives.
    server.stop().await;
    quic.until(&mut a, "A offline", |e| {
        e.db().unwrap().sync_status().is_some_and(|s| !s.online)
    })
    .await;
    let offline = pa
        .create(&Part {
            name: "washer".into(),
            qty: 3,
        })
        .unwrap();
    // It keeps trying, on its back-off (each attempt fails: nothing answers).
    let (connects, start) = (quic.connects, Instant::now());
    while quic.connects < connects + 3 {
        assert!(start.elapsed() < LIMIT, "no retries");
        quic.step(&mut a).await;
    }
    let server = Running::start_on(&data, addr);
    quic.until(&mut a, "A back online", online).await;
    quic.until(&mut a, "B has A's offline washer", |_| {
        pb.get(offline).is_ok_and(|p| p.name == "washer")
    })
    .await;
    assert_eq!(pa.get(bolt).unwrap().qty, 1);
    let key: Key<Part> = bolt;
    assert_eq!(pb.get(key).unwrap().name, "bolt");

    let last = a.close();
    assert!(
        last.iter().any(|o| matches!(o, Output::Close { .. })),
        "{last:?}"
    );
    drop((pa, pb, b));
    server.stop().await;
}
