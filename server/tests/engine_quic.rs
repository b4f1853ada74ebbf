//! The sans-IO sync engine ([`rekord::sync::engine::Engine`]) driven over real QUIC: this
//! test is the driver (it opens what the engine dials with `rekord::net::open`, one stream
//! per connection, the machine's clock; frames one at a time), beside an ordinary native replica, against a real
//! server on loopback. The engine itself has no socket: it asks for connections, hands
//! frames to send, takes what arrived and says when it wants to run again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future as _;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::{APP, Running};
use rekord::net::{ConnWire, DialTarget, RecvWire, SendWire};
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
    wire: Box<dyn ConnWire>,
    send: Box<dyn SendWire>,
    recv: Box<dyn RecvWire>,
    reader: FrameReader,
}

/// The driver: opens what the engine dials with `rekord::net::open` (QUIC with rekord's
/// ALPN, the pinned certificate checked).
struct Quic {
    /// Woken by the engine when the application gave its client work.
    wake: Arc<tokio::sync::Notify>,
    addr: std::net::SocketAddr,
    fingerprint: String,
    open: Option<Open>,
    connects: u32,
}

impl Quic {
    /// Does what the engine asks, then waits (at most a millisecond, or until the engine's
    /// deadline) for bytes from the server, and gives the engine the time.
    async fn step(&mut self, engine: &mut Engine) {
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Connect { conn, dial } => {
                    self.connects += 1;
                    // The engine asks for the configured server, its certificate pinned.
                    assert_eq!(dial.target, DialTarget::Quic(self.addr));
                    assert_eq!(
                        dial.pin.as_ref().map(|p| p.cert.as_str()),
                        Some(self.fingerprint.as_str())
                    );
                    match rekord::net::open(&dial).await {
                        Ok(wire) => {
                            if engine.handle_connected(conn, wire.proved) {
                                self.open = Some(Open {
                                    conn,
                                    wire: wire.conn,
                                    send: wire.send,
                                    recv: wire.recv,
                                    reader: FrameReader::new(),
                                });
                            }
                        }
                        Err(e) => engine.handle_failed(conn, e),
                    }
                }
                Output::Send { conn, frame } => {
                    if let Some(open) = self.open.as_mut().filter(|o| o.conn == conn) {
                        let bytes = rekord::proto::encode(&frame).unwrap();
                        if let Err(e) = open.send.write_all(&bytes).await {
                            self.open = None;
                            engine.handle_failed(conn, rekord::net::NetError::Closed(e));
                        }
                    }
                }
                Output::Transmit { .. } => unreachable!("an engine that hands frames"),
                Output::Close { conn, code, reason } => {
                    if let Some(open) = self.open.take_if(|o| o.conn == conn) {
                        open.wire.close(code, &reason);
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
                Some(open) => {
                    let got = open.recv.read_into(&mut open.reader).await;
                    Some((open.conn, got))
                }
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
            Some((conn, Ok(Some(_)))) => {
                if let Some(open) = self.open.as_mut() {
                    while let Some(frame) = open.reader.next_frame().unwrap() {
                        engine.handle_frame(conn, &frame).unwrap();
                    }
                }
            }
            Some((conn, _)) => {
                self.open = None;
                engine.handle_closed(conn);
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
    a.set_waker(&Waker::from(Arc::new(Wake(wake.clone()))));
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
