//! Red team of the server's limits (issue 15): small attacks on one bound at a time, each
//! against a server in this process (or a `rekord-server` process) on loopback, with good
//! clients on 127.0.0.1 and attackers on other loopback addresses. Each test asserts what
//! should happen; the holes it found are fixed (each test's "Fixed:" says how).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A test holds `MEASURING` for its whole run, awaits included (it only orders the tests).
#![allow(clippy::await_holding_lock)]

#[path = "common/process.rs"]
mod process;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use quinn::rustls;
use rekord::net::NetError;
use rekord::proto::handshake::{ClientConfig, Trees, client_hello};
use rekord::proto::{Change, ChangeKind, Frame, FrameReader, Refusal, Request};
use rekord_server::{Config, Limits, Server, ServerError, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const APP: &str = process::APP;
const MIB: usize = 1 << 20;
/// Bound on every step that should be quick.
const STEP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Bytes allocated and not yet freed in this process (server and clients together).

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live_mib() -> i64 {
    LIVE.load(Ordering::Relaxed) / MIB as i64
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

/// Tests share this process's allocations: the one that measures them runs alone.
static MEASURING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn alongside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    MEASURING.read().unwrap_or_else(|e| e.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    MEASURING.write().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// A server in this process with chosen limits.

struct Served {
    addr: SocketAddr,
    store: Arc<Store>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Served {
    fn start(dir: &Path, limits: Limits) -> Result<Served, ServerError> {
        Served::start_on(dir, "127.0.0.1:0".parse().unwrap(), limits)
    }

    fn start_on(dir: &Path, listen: SocketAddr, limits: Limits) -> Result<Served, ServerError> {
        let server = Server::bind(Config {
            listen,
            data: dir.to_path_buf(),
            app: APP.into(),
            limits,
            web: Default::default(),
        })?;
        let addr = server.local_addr()?;
        let store = server.store().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Ok(Served {
            addr,
            store,
            stop,
            task,
        })
    }

    fn token(&self, name: &str) -> String {
        self.store.issue(name, Trees::All, Trees::All).unwrap()
    }

    async fn stop(self) {
        let Served {
            store, stop, task, ..
        } = self;
        drop(store);
        let _ = stop.send(());
        let _ = tokio::time::timeout(STEP, task).await;
    }
}

/// Limits that let a test open connections quickly from one address; the rest default.
fn quick() -> Limits {
    Limits {
        handshakes_per_second_per_address: 1000,
        ..Limits::default()
    }
}

fn hello(token: &str) -> ClientConfig {
    ClientConfig {
        app: APP.into(),
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

/// A good client on 127.0.0.1 (the library's own connect).
async fn good_connect(addr: SocketAddr, token: &str) -> Result<rekord::net::Session, NetError> {
    rekord::net::connect_timeout(addr, &hello(token), None, Duration::from_secs(5)).await
}

// ---------------------------------------------------------------------------------------
// Raw clients (attackers) on any loopback address.

/// Accepts any certificate: an attacker does not care whom it talks to.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
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
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client endpoint on `ip`; `deaf`: it grants the server no flow-control credit at all
/// (a receive window of zero), so the server can write it nothing.
fn endpoint(ip: IpAddr, deaf: bool) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
    ep.set_default_client_config(client_config(deaf));
    ep
}

fn client_config(deaf: bool) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![rekord::net::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into().unwrap()));
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    if deaf {
        transport.stream_receive_window(0u32.into());
        transport.receive_window(0u32.into());
    }
    config.transport_config(Arc::new(transport));
    config
}

/// QUIC Initials from `ip` that never go further (quinn-proto connections that are never
/// driven after their first datagram).
fn unfinished_handshakes(server: SocketAddr, ip: IpAddr, n: usize) {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    let mut ep = quinn_proto::Endpoint::new(Default::default(), None, false, None);
    let mut buf = Vec::new();
    for _ in 0..n {
        let now = Instant::now();
        let (_, mut conn) = ep
            .connect(now, client_config(false), server, rekord::net::SERVER_NAME)
            .unwrap();
        buf.clear();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            socket.send_to(&buf[..t.size], server).unwrap();
        }
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// How a raw connection ended (or failed).
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Refused before the handshake (`CONNECTION_REFUSED`).
    RefusedAtDoor,
    /// Closed by the server with this application code and reason.
    Closed(u64, String),
    /// Anything else.
    Other(String),
}

fn outcome(e: &quinn::ConnectionError) -> Outcome {
    match e {
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Outcome::RefusedAtDoor
        }
        quinn::ConnectionError::ApplicationClosed(c) => Outcome::Closed(
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => Outcome::Other(other.to_string()),
    }
}

/// A raw connection with its one stream.
struct Raw {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: FrameReader,
}

impl Raw {
    /// Connects from `ep` and opens the stream (nothing sent yet).
    async fn open(ep: &quinn::Endpoint, server: SocketAddr) -> Result<Raw, Outcome> {
        let conn = ep
            .connect(server, rekord::net::SERVER_NAME)
            .unwrap()
            .await
            .map_err(|e| outcome(&e))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| outcome(&e))?;
        Ok(Raw {
            conn,
            send,
            recv,
            reader: FrameReader::new(),
        })
    }

    /// Connects and says `hello`; the server's answer frame.
    async fn hello(
        ep: &quinn::Endpoint,
        server: SocketAddr,
        hello: &Frame,
    ) -> Result<(Raw, Frame), Outcome> {
        let mut raw = Raw::open(ep, server).await?;
        raw.write(&rekord::proto::encode(hello).unwrap()).await?;
        let frame = raw.next().await?;
        Ok((raw, frame))
    }

    /// A session with `token`; panics if refused.
    async fn session(ep: &quinn::Endpoint, server: SocketAddr, token: &str) -> Raw {
        match Raw::hello(ep, server, &client_hello(&hello(token))).await {
            Ok((raw, Frame::ServerHello(_))) => raw,
            other => panic!("no session: {:?}", other.map(|(_, f)| f)),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Outcome> {
        self.send.write_all(bytes).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(c) => outcome(&c),
            e => Outcome::Other(e.to_string()),
        })
    }

    /// The next frame from the server.
    async fn next(&mut self) -> Result<Frame, Outcome> {
        loop {
            if let Some(frame) = self.reader.next_frame().unwrap() {
                return Ok(frame);
            }
            match self.recv.read_chunk(1 << 16, true).await {
                Ok(Some(chunk)) => self.reader.push(&chunk.bytes),
                Ok(None) => return Err(Outcome::Other("stream ended".into())),
                Err(quinn::ReadError::ConnectionLost(e)) => return Err(outcome(&e)),
                Err(e) => return Err(Outcome::Other(e.to_string())),
            }
        }
    }

    /// The next response (pushes skipped).
    async fn response(&mut self) -> Result<rekord::proto::Response, Outcome> {
        loop {
            match self.next().await? {
                Frame::Response { body, .. } => return Ok(body),
                Frame::Push(_) => {}
                other => return Err(Outcome::Other(format!("unexpected {other:?}"))),
            }
        }
    }
}

/// A request frame of about `mib` MiB (changes the server refuses: nothing is stored).
fn big_request(id: u64, mib: usize) -> Vec<u8> {
    let changes = (0..mib.div_ceil(4))
        .map(|i| Change {
            tree: "junk".into(),
            id: i as u64 + 1,
            rev: 0,
            kind: ChangeKind::Put {
                version: 1,
                data: vec![7; (mib * MIB / mib.div_ceil(4)).min(4 * MIB)],
            },
        })
        .collect();
    let body = Request::Changes {
        op: *uuid::Uuid::new_v4().as_bytes(),
        changes,
    };
    rekord::proto::encode(&Frame::Request { id, body }).unwrap()
}

async fn bounded<F: Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .expect("the test took too long")
}

// ---------------------------------------------------------------------------------------
// Handshake places.

/// A stranger whose hello is refused (here: a wrong protocol version, which uses no token
/// guess) and who grants the server no flow-control credit keeps the server waiting to
/// write the refusal, with no deadline: the connection keeps its handshake place forever.
/// `max_handshakes` such connections (two addresses' worth with the defaults: 2 x 64) lock
/// every client of every address out for as long as the attacker keeps them alive.
///
/// Fixed: the refusal is written within `REFUSAL_TIME` (2 s), the server's hello within the frame deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_to_a_client_that_reads_nothing_frees_its_handshake_place() {
    let _others = alongside_others();
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                max_handshakes: 4,
                hello_timeout_secs: 2,
                ..quick()
            },
        )
        .unwrap();
        let token = server.token("good");
        good_connect(server.addr, &token).await.unwrap();

        let ep = endpoint(loopback(2), true);
        let mut wrong = client_hello(&hello("rk_not_checked"));
        if let Frame::ClientHello(h) = &mut wrong {
            h.protocol += 100;
        }
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut raw = Raw::open(&ep, server.addr).await.unwrap();
            raw.write(&rekord::proto::encode(&wrong).unwrap())
                .await
                .unwrap();
            held.push(raw);
        }
        // Well past the hello deadline (and the 2 s the server gives a refusal to arrive).
        tokio::time::sleep(Duration::from_secs(6)).await;
        let still_open = held
            .iter()
            .filter(|r| r.conn.close_reason().is_none())
            .count();
        let result = good_connect(server.addr, &token).await;
        assert!(
            result.is_ok(),
            "a good client on 127.0.0.1 is refused while {still_open} refused strangers on \
             127.0.0.2 that read nothing stay connected: {:?}",
            result.err()
        );
        drop(held);
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Frame memory.

/// `frame_memory_mib` is to bound the memory of frames in transit beyond the first MiB of
/// each. A session's frame buffer keeps the capacity of the largest frame it received
/// (`FrameReader` drains, it never shrinks), while the permits go back when the frame is
/// complete: sessions that each sent one big frame and then idle hold ~16 MiB each outside
/// the budget (1024 connections: 16 GiB, not 1 GiB + 256 MiB). Big frames are ordinary:
/// a synced database sends outbox batches of up to ~4 MiB plus one entry (up to ~16 MiB).
///
/// Fixed: `FrameReader` gives back room beyond 1 MiB after a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_hold_no_frame_memory_outside_the_budget() {
    let _alone = alone();
    const SESSIONS: usize = 10;
    const FRAME_MIB: usize = 12;
    const BUDGET: u32 = 16;
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                frame_memory_mib: BUDGET,
                ..quick()
            },
        )
        .unwrap();
        let token = server.token("good");
        let ep = endpoint(loopback(1), false);
        // Warm up (first session, first refused batch), then the baseline.
        let mut warm = Raw::session(&ep, server.addr, &token).await;
        warm.write(&big_request(1, 2)).await.unwrap();
        warm.response().await.unwrap();
        drop(warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = live_mib();

        let mut idle = Vec::new();
        for _ in 0..SESSIONS {
            let mut raw = Raw::session(&ep, server.addr, &token).await;
            // One big request at a time: the frames in transit never exceed the budget.
            raw.write(&big_request(1, FRAME_MIB)).await.unwrap();
            raw.response().await.unwrap();
            idle.push(raw);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_growth = live_mib() - before;
        drop(idle);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let closed_growth = live_mib() - before;
        eprintln!(
            "{SESSIONS} idle sessions after one {FRAME_MIB} MiB frame each: +{idle_growth} MiB \
             live; after they closed: +{closed_growth} MiB"
        );
        // Each session: its free first MiB and its connection's state; all together: the
        // budget once. Generous slack for the runtime and QUIC.
        let bound = (SESSIONS * 2) as i64 + i64::from(BUDGET) + 24;
        assert!(
            idle_growth <= bound,
            "{SESSIONS} idle sessions hold {idle_growth} MiB (bound {bound} MiB) after one \
             {FRAME_MIB} MiB frame each"
        );
        server.stop().await;
    })
    .await;
}

/// Found by this red team: the shared frame memory was taken a MiB at a time as a frame's
/// bytes arrived, and a session waited for more while holding what it had: two frames that
/// each fit the budget but not both waited for each other until the frame deadline closed
/// both. A frame now takes its whole share at once when its length is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_big_frames_that_each_fit_the_frame_memory_both_arrive() {
    let _others = alongside_others();
    const FRAME_MIB: usize = 12;
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                frame_memory_mib: 16,
                frame_timeout_secs: 8,
                ..quick()
            },
        )
        .unwrap();
        let token = server.token("good");
        let ep = endpoint(loopback(1), false);
        let a = Raw::session(&ep, server.addr, &token).await;
        let b = Raw::session(&ep, server.addr, &token).await;
        let (fa, fb) = (big_request(1, FRAME_MIB), big_request(1, FRAME_MIB));
        // Each sends its first 8 MiB, the second 700 ms after the first, then after
        // another 700 ms the rest (the two clients write concurrently, as real ones do).
        let start = Instant::now();
        let send = |mut raw: Raw, frame: Vec<u8>, after: u64| async move {
            tokio::time::sleep(Duration::from_millis(after)).await;
            raw.write(&frame[..8 * MIB]).await?;
            tokio::time::sleep(Duration::from_millis(1400 - after)).await;
            raw.write(&frame[8 * MIB..]).await?;
            raw.response().await
        };
        let (ra, rb) = tokio::join!(send(a, fa, 0), send(b, fb, 700));
        eprintln!("after {:?}: {ra:?} / {rb:?}", start.elapsed());
        assert!(
            ra.is_ok() && rb.is_ok(),
            "two {FRAME_MIB} MiB frames under a 16 MiB budget: {ra:?} / {rb:?}"
        );
        server.stop().await;
    })
    .await;
}

/// `frame_memory_mib` is only checked to be at least 1, but a frame takes up to 15 MiB of
/// it (16 MiB less the free first MiB): below that, frames the protocol allows (a record
/// of up to 8 MiB, a batch of up to 16 MiB) can never arrive. Each waits for memory that
/// cannot come, the session is closed "retry later" after the frame deadline, and a synced
/// database retries the same batch forever. The configuration should be refused (or a
/// frame should take at most the whole budget).
///
/// Fixed: a frame's share is at most the whole budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_memory_below_one_big_frame_is_refused_or_still_carries_it() {
    let _others = alongside_others();
    bounded(Duration::from_secs(40), async {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            frame_memory_mib: 4,
            frame_timeout_secs: 4,
            ..quick()
        };
        let server = match Served::start(dir.path(), limits) {
            Err(ServerError::Config(why)) => {
                eprintln!("refused: {why}");
                return;
            }
            other => other.unwrap(),
        };
        let token = server.token("good");
        let ep = endpoint(loopback(1), false);
        let mut raw = Raw::session(&ep, server.addr, &token).await;
        raw.write(&big_request(1, 7)).await.unwrap();
        let answer = raw.response().await;
        assert!(
            answer.is_ok(),
            "a 7 MiB frame with frame_memory_mib = 4 (accepted by the configuration): {answer:?}"
        );
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Token guesses.

/// A hello's token check takes one of its address's guesses and gives it back if the token
/// was good. Good hellos checked at the same time therefore use the allowance up as if
/// they were guesses: one beyond `auth_failures_per_minute` is closed with "too many
/// refused tokens from this address" although no token from the address was ever refused
/// (and meanwhile new connections from the address are refused at the door). Many clients
/// behind one NAT reconnecting after a server restart look like this.
///
/// Fixed: only refused tokens count; a hello is refused unchecked once they used the allowance up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_hellos_at_once_are_not_taken_for_guesses() {
    let _others = alongside_others();
    const CLIENTS: usize = 24;
    bounded(Duration::from_secs(40), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            // auth_failures_per_minute: the default, 10.
            quick(),
        )
        .unwrap();
        let token = server.token("good");
        // Not 127.0.0.1: trusted by default, it skips the per-address limits.
        let ep = endpoint(loopback(2), false);
        let mut opened = Vec::new();
        for _ in 0..CLIENTS {
            opened.push(Raw::open(&ep, server.addr).await.unwrap());
        }
        // All hellos at once (new replicas: each is registered in a write transaction).
        let mut hellos = tokio::task::JoinSet::new();
        for mut raw in opened {
            let frame = rekord::proto::encode(&client_hello(&hello(&token))).unwrap();
            hellos.spawn(async move {
                raw.write(&frame).await?;
                let answer = raw.next().await;
                (raw, answer).1.map(|f| format!("{f:?}"))
            });
        }
        let mut refused = Vec::new();
        while let Some(r) = hellos.join_next().await {
            match r.unwrap() {
                Ok(f) if f.starts_with("ServerHello") => {}
                other => refused.push(other),
            }
        }
        assert!(
            refused.is_empty(),
            "{} of {CLIENTS} good hellos from one address were refused, no token ever \
             refused: {:?}",
            refused.len(),
            refused.first()
        );
        server.stop().await;
    })
    .await;
}

/// `trusted` holds 127.0.0.1 and ::1 ("processes on the server's own machine"), but a
/// server listening on `[::]` (dual stack) sees a local IPv4 client as ::ffff:127.0.0.1,
/// which is not trusted: there the local client is limited like any stranger (here: locked
/// out by one refused token).
///
/// Fixed: addresses are canonical (`IpAddr::to_canonical`) before any limit looks at them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_client_of_a_dual_stack_server_is_trusted() {
    let _others = alongside_others();
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let Ok(server) = Served::start_on(
            dir.path(),
            "[::]:0".parse().unwrap(),
            Limits {
                auth_failures_per_minute: 1,
                ..quick()
            },
        ) else {
            eprintln!("no IPv6 here");
            return;
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
        let token = server.token("good");
        let ep = endpoint(loopback(1), false);
        for _ in 0..2 {
            let _ = Raw::hello(&ep, addr, &client_hello(&hello("rk_0"))).await;
        }
        let result = good_connect(addr, &token).await;
        assert!(
            result.is_ok(),
            "a client on 127.0.0.1 of a server on [::] is not trusted: {:?}",
            result.err()
        );
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Places given back.

/// Every way a connection from an address can end gives its places back (per address, in
/// handshake, in total): after each kind of ending, as many good sessions as the address
/// may have at once connect from it, and the per-address allowance of new connections
/// refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_connection_ends_gives_its_places_back() {
    let _others = alongside_others();
    const PLACES: u32 = 3;
    bounded(Duration::from_secs(55), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                max_connections_per_address: PLACES,
                max_handshakes: PLACES,
                max_connections: PLACES + 1,
                hello_timeout_secs: 2,
                frame_timeout_secs: 2,
                ..quick()
            },
        )
        .unwrap();
        let addr = server.addr;
        let token = server.token("good");
        let other = server.token("other");
        let ip = loopback(2);
        let ep = endpoint(ip, false);

        // As many good sessions as the address may have, at once, then closed.
        let full_house = |why: &'static str| {
            let (ep, token) = (ep.clone(), token.clone());
            async move {
                let mut sessions = Vec::new();
                for _ in 0..PLACES {
                    let (raw, f) = Raw::hello(&ep, addr, &client_hello(&hello(&token)))
                        .await
                        .unwrap_or_else(|e| panic!("after {why}: {e:?}"));
                    assert!(matches!(f, Frame::ServerHello(_)), "after {why}: {f:?}");
                    sessions.push(raw);
                }
                for s in &sessions {
                    s.conn.close(0u32.into(), b"");
                }
                drop(sessions);
                // The server sees the closes.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        full_house("nothing").await;

        // Handshakes that never finish, until they time out.
        unfinished_handshakes(addr, ip, PLACES as usize);
        tokio::time::sleep(Duration::from_secs(3)).await;
        full_house("unfinished handshakes").await;

        // Connections that never say hello: closed at the hello deadline.
        let mut silent = Vec::new();
        for _ in 0..PLACES {
            silent.push(Raw::open(&ep, addr).await.unwrap());
        }
        for s in silent {
            let e = s.conn.closed().await;
            assert!(
                matches!(outcome(&e), Outcome::Closed(6, _)),
                "{:?}",
                outcome(&e)
            );
        }
        full_house("connections without hello").await;

        // Hellos the client gives up halfway through.
        for _ in 0..PLACES {
            let mut raw = Raw::open(&ep, addr).await.unwrap();
            let bytes = rekord::proto::encode(&client_hello(&hello(&token))).unwrap();
            raw.write(&bytes[..bytes.len() / 2]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            raw.conn.close(0u32.into(), b"bye");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        full_house("hellos given up halfway").await;

        // Refused hellos: a bad token, another application, another protocol, a replica
        // of another token, an older copy of a replica; and a first frame that is no hello.
        let known = hello(&token);
        let (mut r, f) = Raw::hello(&ep, addr, &client_hello(&known)).await.unwrap();
        assert!(matches!(f, Frame::ServerHello(_)), "{f:?}");
        // The server processes the replica's entry 1: a copy that made none is older.
        let entries = Request::Entries {
            first: 1,
            entries: vec![vec![]],
        };
        r.write(
            &rekord::proto::encode(&Frame::Request {
                id: 1,
                body: entries,
            })
            .unwrap(),
        )
        .await
        .unwrap();
        r.response().await.unwrap();
        r.conn.close(0u32.into(), b"");
        drop(r);
        let edit = |f: &dyn Fn(&mut rekord::proto::ClientHello)| {
            let mut frame = client_hello(&hello(&token));
            if let Frame::ClientHello(h) = &mut frame {
                f(h);
            }
            frame
        };
        let refusals: Vec<(Frame, &str)> = vec![
            (client_hello(&hello("rk_0000")), "BadToken"),
            (edit(&|h| h.app = "another".into()), "WrongApp"),
            (edit(&|h| h.protocol += 1), "ProtocolVersion"),
            (
                client_hello(&ClientConfig {
                    token: other.clone(),
                    ..known.clone()
                }),
                "ReplicaOfAnotherToken",
            ),
            (client_hello(&known), "OlderCopy"),
            (
                Frame::Request {
                    id: 1,
                    body: Request::Ping,
                },
                "Closed(2",
            ),
        ];
        for (frame, expected) in &refusals {
            let answer = match Raw::hello(&ep, addr, frame).await {
                Ok((raw, f)) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), raw.conn.closed()).await;
                    format!("{f:?}")
                }
                Err(e) => format!("{e:?}"),
            };
            assert!(answer.contains(expected), "{expected}: {answer}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        full_house("refused hellos").await;

        // Sessions closed by the server: a frame trickled past its deadline.
        let mut trickles = Vec::new();
        for _ in 0..PLACES {
            let mut raw = Raw::session(&ep, addr, &token).await;
            raw.write(&(1u32 << 20).to_le_bytes()).await.unwrap();
            raw.write(&[0; 10]).await.unwrap();
            trickles.push(raw);
        }
        for t in trickles {
            let e = t.conn.closed().await;
            assert!(matches!(outcome(&e), Outcome::Closed(6, _)), "{e}");
        }
        full_house("frames past their deadline").await;

        // And the good client elsewhere was never affected.
        good_connect(addr, &token).await.unwrap();
        server.stop().await;
    })
    .await;
}

/// A hello refused for anything but its token (another application or protocol, a tree
/// its token may not read, a replica of another token, an older copy, too many replicas)
/// gives back the guess its check took: after many of them, the address still has its
/// whole allowance, and the allowance still holds against bad tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_refused_with_a_good_token_use_no_guesses() {
    let _others = alongside_others();
    const GUESSES: u32 = 2;
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                auth_failures_per_minute: GUESSES,
                replicas_per_token: 2,
                ..quick()
            },
        )
        .unwrap();
        let addr = server.addr;
        let token = server.token("good");
        let other = server.token("other");
        let narrow = server
            .store
            .issue("narrow", Trees::Only(vec!["a".into()]), Trees::All)
            .unwrap();
        let ep = endpoint(loopback(2), false);

        // Two replicas of `good` (its limit), the first with a processed entry.
        let known = hello(&token);
        let (mut r, f) = Raw::hello(&ep, addr, &client_hello(&known)).await.unwrap();
        assert!(matches!(f, Frame::ServerHello(_)), "{f:?}");
        let entries = Request::Entries {
            first: 1,
            entries: vec![vec![]],
        };
        r.write(
            &rekord::proto::encode(&Frame::Request {
                id: 1,
                body: entries,
            })
            .unwrap(),
        )
        .await
        .unwrap();
        r.response().await.unwrap();
        r.conn.close(0u32.into(), b"");
        Raw::session(&ep, addr, &token)
            .await
            .conn
            .close(0u32.into(), b"");

        let edit = |f: &dyn Fn(&mut rekord::proto::ClientHello)| {
            let mut frame = client_hello(&hello(&other));
            if let Frame::ClientHello(h) = &mut frame {
                f(h);
            }
            frame
        };
        let refusals: Vec<(Frame, &str)> = vec![
            (edit(&|h| h.app = "another".into()), "WrongApp"),
            (edit(&|h| h.protocol += 1), "ProtocolVersion"),
            (
                client_hello(&ClientConfig {
                    trees: vec!["b".into()],
                    ..hello(&narrow)
                }),
                "TreeNotAllowed",
            ),
            (
                client_hello(&ClientConfig {
                    token: other.clone(),
                    ..known.clone()
                }),
                "ReplicaOfAnotherToken",
            ),
            (client_hello(&known), "OlderCopy"),
            (client_hello(&hello(&token)), "TooManyReplicas"),
        ];
        for round in 0..3 {
            for (frame, expected) in &refusals {
                let answer = match Raw::hello(&ep, addr, frame).await {
                    Ok((raw, f)) => {
                        raw.conn.close(0u32.into(), b"");
                        format!("{f:?}")
                    }
                    Err(e) => format!("{e:?}"),
                };
                assert!(
                    answer.contains(expected),
                    "round {round}, {expected}: {answer}"
                );
            }
        }
        // The whole allowance is left: GUESSES bad tokens are checked, the next is not.
        for i in 0..=GUESSES {
            let answer = match Raw::hello(&ep, addr, &client_hello(&hello("rk_0"))).await {
                Ok((_, f)) => format!("{f:?}"),
                Err(e) => format!("{e:?}"),
            };
            if i < GUESSES {
                assert!(answer.contains("BadToken"), "guess {i}: {answer}");
            } else {
                assert!(
                    answer.contains("refused tokens") || answer.contains("RefusedAtDoor"),
                    "guess {i}: {answer}"
                );
            }
        }
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Replicas per token.

/// New replicas said at once cannot pass `replicas_per_token` (they are counted in the
/// write transaction that registers them), replicas registered before still connect at the
/// limit, and another token is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_limit_holds_under_concurrent_hellos_and_spares_known_replicas() {
    let _others = alongside_others();
    const LIMIT: u32 = 5;
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                replicas_per_token: LIMIT,
                // Not what is tested here (see `good_hellos_at_once_are_not_taken_for_guesses`).
                auth_failures_per_minute: 1000,
                ..quick()
            },
        )
        .unwrap();
        let addr = server.addr;
        let token = server.token("good");
        let ep = endpoint(loopback(2), false);
        let first = hello(&token);
        let (raw, f) = Raw::hello(&ep, addr, &client_hello(&first)).await.unwrap();
        assert!(matches!(f, Frame::ServerHello(_)), "{f:?}");
        raw.conn.close(0u32.into(), b"");

        let mut opened = Vec::new();
        for _ in 0..20 {
            opened.push(Raw::open(&ep, addr).await.unwrap());
        }
        let mut hellos = tokio::task::JoinSet::new();
        for mut raw in opened {
            let frame = rekord::proto::encode(&client_hello(&hello(&token))).unwrap();
            hellos.spawn(async move {
                raw.write(&frame).await.unwrap();
                let f = raw.next().await.unwrap();
                raw.conn.close(0u32.into(), b"");
                f
            });
        }
        let (mut made, mut refused) = (0, 0);
        while let Some(r) = hellos.join_next().await {
            match r.unwrap() {
                Frame::ServerHello(_) => made += 1,
                Frame::Refused(Refusal::TooManyReplicas { limit }) => {
                    assert_eq!(limit, LIMIT);
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((made, refused), (LIMIT - 1, 20 - (LIMIT - 1)));
        // The first replica still connects; so does a replica of another token.
        let (raw, f) = Raw::hello(&ep, addr, &client_hello(&first)).await.unwrap();
        assert!(matches!(f, Frame::ServerHello(_)), "{f:?}");
        raw.conn.close(0u32.into(), b"");
        let another = server.token("another");
        good_connect(addr, &another).await.unwrap();
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Frame memory given back.

/// The shared frame memory comes back however a frame in transit ends: its connection
/// closed mid-frame (before and after the hello), a frame past its deadline, a complete
/// frame followed by part of the next. A good big frame afterwards arrives at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_memory_comes_back_however_a_frame_ends() {
    let _others = alongside_others();
    const BUDGET: u32 = 16;
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                frame_memory_mib: BUDGET,
                frame_timeout_secs: 4,
                ..quick()
            },
        )
        .unwrap();
        let addr = server.addr;
        let token = server.token("good");
        let ep = endpoint(loopback(2), false);
        let big = big_request(1, 14);

        // Closed mid-frame, in session.
        for _ in 0..3 {
            let mut raw = Raw::session(&ep, addr, &token).await;
            raw.write(&big[..big.len() - 1000]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            raw.conn.close(0u32.into(), b"bye");
        }
        // A 16 MiB "hello" is refused as soon as its length arrives (a hello is at most
        // 1 MiB), taking none of the memory.
        for _ in 0..3 {
            let mut raw = Raw::open(&ep, addr).await.unwrap();
            raw.write(&(16u32 << 20).to_le_bytes()).await.unwrap();
            let _ = raw.write(&vec![0; 15 * MIB]).await;
            let e = raw.conn.closed().await;
            match outcome(&e) {
                Outcome::Closed(2, reason) => {
                    assert!(reason.contains("before the hello"), "{reason}")
                }
                other => panic!("a 16 MiB hello ended as {other:?}"),
            }
        }
        // Past its deadline, and a complete frame followed by most of the next.
        let mut slow = Raw::session(&ep, addr, &token).await;
        slow.write(&big[..big.len() - 1000]).await.unwrap();
        let mut two = Raw::session(&ep, addr, &token).await;
        let small = big_request(1, 1);
        two.write(&small).await.unwrap();
        two.write(&big[..big.len() - 1000]).await.unwrap();
        for raw in [slow, two] {
            let e = raw.conn.closed().await;
            assert!(matches!(outcome(&e), Outcome::Closed(6, _)), "{e}");
        }

        // A good big frame now arrives (within its deadline: no memory is left taken).
        let good = endpoint(loopback(1), false);
        let mut raw = Raw::session(&good, addr, &token).await;
        let start = Instant::now();
        raw.write(&big).await.unwrap();
        let answer = raw.response().await;
        eprintln!("a good 14 MiB frame answered in {:?}", start.elapsed());
        assert!(answer.is_ok(), "{answer:?}");
        server.stop().await;
    })
    .await;
}

/// A stranger's first frame (its hello) may be announced at 16 MiB and takes the shared
/// frame memory like any frame, although a hello is a few hundred KiB at most. Strangers
/// without a token can so keep `frame_memory_mib` taken, renewing their hellos as the
/// hello deadline closes them, and every good client's frame above 1 MiB waits for them:
/// up to `hello_timeout_secs` (10 s, as long as a client's request round trip may take).
///
/// Fixed: before its hello is accepted a client's frames are at most 1 MiB (`limits::MAX_HELLO`) and take no share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_without_a_token_cannot_hold_the_frame_memory() {
    let _others = alongside_others();
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                // The attack test's budget (keeps this test's memory small); the rest default.
                frame_memory_mib: 32,
                ..Limits::default()
            },
        )
        .unwrap();
        let addr = server.addr;
        let token = server.token("good");
        // Four strangers on two addresses, each renewing a 16 MiB "hello" stalled before
        // its end (4 x 15 MiB > 32 MiB).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut strangers = Vec::new();
        for i in 0..4u8 {
            let stop = stop.clone();
            strangers.push(tokio::spawn(async move {
                let ep = endpoint(loopback(2 + i % 2), false);
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut raw) = Raw::open(&ep, addr).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let _ = raw.write(&(16u32 << 20).to_le_bytes()).await;
                    let held = tokio::spawn(async move {
                        let _ = raw.write(&vec![0; 15 * MIB]).await;
                        raw.conn.closed().await
                    });
                    let _ = held.await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ep = endpoint(loopback(1), false);
        let mut slowest = Duration::ZERO;
        for _ in 0..3 {
            let mut raw = Raw::session(&ep, addr, &token).await;
            let start = Instant::now();
            raw.write(&big_request(1, 6)).await.unwrap();
            let answer = raw.response().await;
            assert!(answer.is_ok(), "{answer:?}");
            slowest = slowest.max(start.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        for s in strangers {
            s.abort();
        }
        assert!(
            slowest < Duration::from_secs(3),
            "a good 6 MiB request waited {slowest:?} for memory held by strangers' hellos"
        );
        server.stop().await;
    })
    .await;
}

/// Records of several MiB sync between two databases under the default limits. They do
/// not (already before the limits: the same test fails against 3f8bc32): the server
/// pushes each accepted change to every session, its origin's too, and a session writing a
/// push bigger than its client's stream window waits for the client to read; the client
/// reads nothing while it writes its next request, which the server does not read while
/// it writes the push. With a request bigger than the server's receive window (now
/// `RECEIVE_WINDOW`, 4 MiB) both wait until the client's request timeout (10 s), and each
/// new session carries one record before it stalls again.
///
/// Fixed: the client reads while it writes a request (`Session::round_trip`).
#[test]
fn big_records_sync_under_the_default_limits() {
    let _others = alongside_others();
    #[rekord::record(tree = "blobs", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Blob {
        pub bytes: Vec<u8>,
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = process::issue(&data, "good", &["--read-all", "--write-all"]);
    let log = std::env::var_os("REDTEAM_LOG").map(std::path::PathBuf::from);
    let server =
        process::ServerProcess::start_with(&data, "127.0.0.1:0", log.as_deref(), "debug", &[]);
    let a = rekord::Db::memory_synced(process::config(server.addr, &token)).unwrap();
    let b = rekord::Db::memory_synced(process::config(server.addr, &token)).unwrap();
    a.wait_caught_up(STEP).unwrap();
    b.wait_caught_up(STEP).unwrap();
    let ta = a.tree::<Blob>().unwrap();
    let start = Instant::now();
    let mut keys = Vec::new();
    for n in 0..4u8 {
        keys.push(
            ta.create(&Blob {
                bytes: vec![n; 7 * MIB],
            })
            .unwrap(),
        );
    }
    if let Err(e) = a.wait_pushed(Duration::from_secs(30)) {
        panic!("4 records of 7 MiB: {e}; status {:?}", a.sync_status());
    }
    let tb = b.tree::<Blob>().unwrap();
    while tb.len().unwrap() < keys.len() as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "B did not get them"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("4 records of 7 MiB synced in {:?}", start.elapsed());
    for (n, k) in keys.iter().enumerate() {
        assert_eq!(tb.get(*k).unwrap().bytes, vec![n as u8; 7 * MIB]);
    }
}

// ---------------------------------------------------------------------------------------
// Configuration.

/// `rekord-server run` with `args` must exit at once with a failure; its stderr.
fn run_fails(data: &Path, config: Option<&Path>, args: &[&str]) -> String {
    let mut command = std::process::Command::new(process::BIN);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .arg("--data")
        .arg(data)
        .args(["run", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`run {args:?}` kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "`run {args:?}` succeeded");
    assert!(!stderr.contains("panicked"), "`run {args:?}`: {stderr}");
    stderr
}

/// Bad `--limit` settings and bad `[limits]` tables are refused with a message that names
/// the setting, never with a panic.
#[test]
fn bad_limit_settings_are_refused_clearly() {
    let _others = alongside_others();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    // (tests/limits.rs has the plain cases: an unknown name, no `=`, -1, 0.)
    for (setting, says) in [
        ("max_connections=", "whole number"),
        ("max_connections=1.5", "whole number"),
        ("max_connections=4294967296", "whole number"),
        ("frame_memory_mib=0", "at least 1"),
        ("=3", "no such limit"),
        ("trusted=127.0.0.1/8", "not an IP address"),
    ] {
        let stderr = run_fails(&data, None, &["--limit", setting]);
        assert!(
            stderr.contains(says) && stderr.contains(setting.split('=').next().unwrap()),
            "--limit {setting}: {stderr}"
        );
    }
    for (table, says) in [
        ("[limits]\nmax_conections = 5\n", "max_conections"),
        ("[limits]\nmax_connections = 0\n", "max_connections"),
        ("[limits]\nmax_connections = -5\n", "max_connections"),
        (
            "[limits]\nmax_connections = 4294967296\n",
            "max_connections",
        ),
        ("[limits]\nmax_connections = \"many\"\n", "max_connections"),
        ("limits = 5\n", "limits"),
    ] {
        let file = dir.path().join("config.toml");
        std::fs::write(&file, table).unwrap();
        let stderr = run_fails(&data, Some(&file), &[]);
        assert!(stderr.contains(says), "{table}: {stderr}");
    }
}

/// Every limit at its largest (u32::MAX: MiB of frame memory, seconds of deadlines) starts
/// a server that serves: no overflow of a deadline, no semaphore past its maximum.
#[test]
fn the_largest_limits_start_a_server_that_serves() {
    let _others = alongside_others();
    #[rekord::record(tree = "blobs", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Blob {
        pub bytes: Vec<u8>,
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = process::issue(&data, "good", &["--read-all", "--write-all"]);
    let names: Vec<String> = Limits::default()
        .describe()
        .into_iter()
        .map(|(name, _, _)| format!("{name}={}", u32::MAX))
        .collect();
    let mut args = Vec::new();
    for n in &names {
        args.push("--limit");
        args.push(n);
    }
    let log = dir.path().join("server.log");
    let server =
        process::ServerProcess::start_with(&data, "127.0.0.1:0", Some(&log), "info", &args);
    let a = rekord::Db::memory_synced(process::config(server.addr, &token)).unwrap();
    a.wait_caught_up(STEP).unwrap();
    a.tree::<Blob>()
        .unwrap()
        .create(&Blob {
            bytes: vec![1; 3 * MIB],
        })
        .unwrap();
    a.wait_pushed(STEP).unwrap();
    let mut server = server;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    server.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "{text}");
}

// ---------------------------------------------------------------------------------------
// Requests per second.

#[rekord::record(tree = "items", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub n: u32,
}

fn create(t: &rekord::Tree<Item>, n: u32) -> rekord::Key<Item> {
    let start = Instant::now();
    loop {
        match t.create(&Item { n }) {
            Ok(k) => return k,
            Err(rekord::Error::IdsExhausted) if start.elapsed() < STEP => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A synced database with thousands of writes queued (one outbox entry each) pushes them
/// in batches: the default request rate does not make it crawl, and another database
/// receives them all.
#[test]
fn a_big_outbox_syncs_quickly_at_the_default_request_rate() {
    let _others = alongside_others();
    const WRITES: u32 = 5000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = process::issue(&data, "good", &["--read-all", "--write-all"]);
    let server = process::ServerProcess::start_with(&data, "127.0.0.1:0", None, "info", &[]);
    let a = rekord::Db::memory_synced(process::config(server.addr, &token)).unwrap();
    let b = rekord::Db::memory_synced(process::config(server.addr, &token)).unwrap();
    a.wait_caught_up(STEP).unwrap();
    b.wait_caught_up(STEP).unwrap();
    let ta = a.tree::<Item>().unwrap();
    let start = Instant::now();
    for n in 0..WRITES {
        create(&ta, n);
    }
    let written = start.elapsed();
    a.wait_pushed(Duration::from_secs(40)).unwrap();
    let pushed = start.elapsed();
    let tb = b.tree::<Item>().unwrap();
    while tb.len().unwrap() < u64::from(WRITES) {
        assert!(
            start.elapsed() < Duration::from_secs(50),
            "B has {}",
            tb.len().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{WRITES} writes: written in {written:?}, pushed after {pushed:?}, on B after {:?}",
        start.elapsed()
    );
}

/// A session whose token is throttled (its requests wait) still forwards pushes of other
/// tokens' changes promptly: they go out before each answer.
#[test]
fn a_throttled_session_still_gets_pushes_promptly() {
    let _others = alongside_others();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let flooder = process::issue(&data, "flooder", &["--read-all", "--write-all"]);
    let writer = process::issue(&data, "writer", &["--read-all", "--write-all"]);
    let server = process::ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--limit", "requests_per_second=20"],
    );
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pushes = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let answers = Arc::new(AtomicI64::new(0));
    let flood = {
        let (stop, pushes, answers) = (stop.clone(), pushes.clone(), answers.clone());
        rt.spawn(async move {
            let ep = endpoint(loopback(2), false);
            let Raw {
                conn: _conn,
                mut send,
                mut recv,
                mut reader,
            } = Raw::session(&ep, addr, &flooder).await;
            let reading = tokio::spawn(async move {
                loop {
                    let frame = loop {
                        if let Some(f) = reader.next_frame().unwrap() {
                            break f;
                        }
                        match recv.read_chunk(1 << 16, true).await {
                            Ok(Some(c)) => reader.push(&c.bytes),
                            _ => return,
                        }
                    };
                    match frame {
                        Frame::Push(rekord::proto::Push::Changes(entries)) => {
                            let mut p = pushes.lock().unwrap();
                            for e in entries {
                                p.push((Instant::now(), e.seq));
                            }
                        }
                        Frame::Response { .. } => {
                            answers.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            });
            let mut id = 1;
            while !stop.load(Ordering::Relaxed) {
                let bytes = rekord::proto::encode(&Frame::Request {
                    id,
                    body: Request::Ping,
                })
                .unwrap();
                if send.write_all(&bytes).await.is_err() {
                    break;
                }
                id += 1;
                if id % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            reading.abort();
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let w = rekord::Db::memory_synced(process::config(addr, &writer)).unwrap();
    w.wait_caught_up(STEP).unwrap();
    let tw = w.tree::<Item>().unwrap();
    let mut delays = Vec::new();
    for n in 0..10 {
        create(&tw, n);
        w.wait_pushed(STEP).unwrap();
        let done = Instant::now();
        let start = Instant::now();
        loop {
            let seen = pushes.lock().unwrap().len() > n as usize;
            if seen {
                break;
            }
            assert!(
                start.elapsed() < STEP,
                "no push reached the throttled session"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        delays.push(done.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let answered = answers.load(Ordering::Relaxed);
    // The flooder is blocked writing (the server reads its requests at the rate).
    flood.abort();
    rt.shutdown_timeout(Duration::from_secs(2));
    delays.sort();
    eprintln!("throttled session: {answered} answers; push delays {delays:?}");
    assert!(
        delays[delays.len() - 1] < Duration::from_millis(500),
        "pushes reached the throttled session after {delays:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Memory outside every limit.

/// The protocol uses no QUIC datagrams, but the server's transport accepts them (quinn's
/// default: a 1.25 MB receive buffer per connection) and never reads them: every
/// connection, before its hello too, can make the server keep datagrams that no limit
/// counts (128 strangers in handshake, or 1024 sessions, times that buffer).
///
/// Fixed: the server's transport accepts no datagrams.
#[test]
fn unread_datagrams_cost_the_server_nothing() {
    let _others = alongside_others();
    const CONNECTIONS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    process::issue(&data, "good", &["--read-all", "--write-all"]);
    let server = process::ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--limit", "handshakes_per_second_per_address=1000"],
    );
    let (addr, pid) = (server.addr, server.child.id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (quiet, loud) = rt.block_on(async move {
        let ep = endpoint(loopback(2), false);
        // Strangers without a token, within their hello deadline (10 s).
        let mut conns = Vec::new();
        for _ in 0..CONNECTIONS {
            conns.push(Raw::open(&ep, addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let quiet = rss_mib(pid);
        let Some(size) = conns[0].conn.max_datagram_size() else {
            return (quiet, quiet);
        };
        for raw in &conns {
            for _ in 0..(1_250_000 / size) {
                if raw
                    .conn
                    .send_datagram_wait(vec![7u8; size].into())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let loud = rss_mib(pid);
        drop(conns);
        (quiet, loud)
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    eprintln!(
        "{CONNECTIONS} connections without hello: server RSS {quiet} MiB; after their \
         datagrams {loud} MiB"
    );
    assert!(
        loud < quiet + 10,
        "{CONNECTIONS} strangers' unread datagrams took the server from {quiet} to {loud} MiB"
    );
}
