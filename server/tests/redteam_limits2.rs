//! Second red team of the server's limits (issue 15), after 47bcf17: the fixes and their
//! seams. Good clients on 127.0.0.1 (trusted), attackers on other loopback addresses.
//! Each test asserts what should happen; the holes it found are fixed (each test's
//! "Fixed:" says how).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quinn::rustls;
use rekord::net::NetError;
use rekord::proto::handshake::{ClientConfig, HandshakeError, Trees, client_hello};
use rekord::proto::{Change, ChangeKind, Frame, FrameReader, Refusal, Request};
use rekord_server::{Config, Limits, Server, ServerError, Store};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const APP: &str = process::APP;
const MIB: usize = 1 << 20;
const STEP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Helpers (copied from redteam_limits.rs).

struct Served {
    addr: SocketAddr,
    store: Arc<Store>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Served {
    fn start(dir: &Path, limits: Limits) -> Result<Served, ServerError> {
        let server = Server::bind(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
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

fn endpoint(ip: IpAddr) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(SocketAddr::new(ip, 0)).unwrap();
    ep.set_default_client_config(client_config());
    ep
}

fn client_config() -> quinn::ClientConfig {
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
    config.transport_config(Arc::new(transport));
    config
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    RefusedAtDoor,
    Closed(u64, String),
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

struct Raw {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: FrameReader,
}

impl Raw {
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

    async fn session(ep: &quinn::Endpoint, server: SocketAddr, token: &str) -> Result<Raw, String> {
        match Raw::hello(ep, server, &client_hello(&hello(token))).await {
            Ok((raw, Frame::ServerHello(_))) => Ok(raw),
            other => Err(format!("no session: {:?}", other.map(|(_, f)| f))),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Outcome> {
        self.send.write_all(bytes).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(c) => outcome(&c),
            e => Outcome::Other(e.to_string()),
        })
    }

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

/// `REDTEAM_CLIENT_LOG=<file>`: this process's log (clients, in-process servers) goes there.
fn client_log() {
    if let Some(file) = std::env::var_os("REDTEAM_CLIENT_LOG") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("REDTEAM_CLIENT_FILTER").unwrap_or_else(|_| "debug".into()),
            ))
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_thread_names(true)
            .try_init();
    }
}

#[rekord::record(tree = "blobs", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub tag: u32,
    pub bytes: Vec<u8>,
}

#[rekord::record(tree = "items", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub n: u32,
}

// ---------------------------------------------------------------------------------------
// (5) Token guesses checked at once.

/// `Gate::guessing` is asked before a hello's token is checked and `Gate::refused_token`
/// charged after: hellos that arrive together all pass the first check before any of them
/// is charged. Opening connections at the allowed rate (8/s, bursts of 8) and holding them
/// before their hello (the hello deadline is 10 s), one address gets up to
/// `max_connections_per_address` (64) tokens checked at once, not the 10 a minute
/// `auth_failures_per_minute` allows ("can pass the allowance by a few at most").
///
/// Fixed: an address's token checks take turns (`Gate::token_turn`), each after the last one's refusal was counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_sent_at_once_get_no_more_checks_than_the_allowance() {
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(dir.path(), Limits::default()).unwrap();
        let addr = server.addr;
        server.token("good");
        let ep = endpoint(loopback(2));
        let start = Instant::now();
        let mut opened = Vec::new();
        let mut refused_at_door = 0;
        // Within the hello deadline of the first connection (10 s).
        while opened.len() < 64 && start.elapsed() < Duration::from_secs(8) {
            match Raw::open(&ep, addr).await {
                Ok(raw) => opened.push(raw),
                Err(Outcome::RefusedAtDoor) => {
                    refused_at_door += 1;
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        eprintln!(
            "{} connections held open before their hello after {:?} ({refused_at_door} \
             refused at the door on the way)",
            opened.len(),
            start.elapsed()
        );
        // Every hello but its last byte first, then all the last bytes together.
        let mut ready = Vec::new();
        for (i, mut raw) in opened.into_iter().enumerate() {
            let frame = client_hello(&hello(&format!("rk_guess_{i:04}")));
            let bytes = rekord::proto::encode(&frame).unwrap();
            raw.write(&bytes[..bytes.len() - 1]).await.unwrap();
            ready.push((raw, bytes[bytes.len() - 1]));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut guesses = tokio::task::JoinSet::new();
        for (mut raw, last) in ready {
            guesses.spawn(async move {
                raw.write(&[last]).await?;
                raw.next().await
            });
        }
        let (mut checked, mut locked, mut other) = (0, 0, Vec::new());
        while let Some(r) = guesses.join_next().await {
            match r.unwrap() {
                Ok(Frame::Refused(Refusal::BadToken)) => checked += 1,
                Err(Outcome::Closed(6, _)) => locked += 1,
                o => other.push(format!("{o:?}")),
            }
        }
        eprintln!("tokens checked: {checked}; refused unchecked: {locked}; other: {other:?}");
        // The allowance is 10; a couple more for hellos already being checked.
        assert!(
            checked <= 12,
            "one address got {checked} token guesses checked at once \
             (auth_failures_per_minute = 10)"
        );
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// (3) One token's stalled frames and everyone else's big frames.

/// A client with a valid token, on one address and within every per-address limit (about
/// 2 new connections a second, about 24 at once), opens sessions that each announce a
/// 16 MiB frame and send only its length: each such frame takes its whole share of the
/// frame memory (or waits in line for it, FIFO) until its frame deadline. Every later frame
/// above 1 MiB waits behind all of them; as the attacker keeps the line full, a good
/// frame gets memory only near the end of its own deadline (its wait counts against its
/// frame deadline), and a synced database's request times out first (10 s < the frame
/// deadline), so it reconnects and goes to the back of the line again: its big record
/// never gets through while the attack lasts. Frames of 1 MiB or less are not affected.
///
/// Here (to keep the test short) the frame memory is 32 MiB and the frame deadline 12 s;
/// with the defaults (256 MiB, 30 s) the same happens with ~1 connection a second.
///
/// Fixed: one token's sessions hold at most a quarter of the frame memory (at least one frame's 15 MiB).
#[test]
fn one_tokens_stalled_frames_do_not_starve_big_frames_of_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let good = process::issue(&data, "good", &["--read-all", "--write-all"]);
    let bad = process::issue(&data, "bad", &["--read-all", "--write-all"]);
    let log = std::env::var_os("REDTEAM_LOG").map(std::path::PathBuf::from);
    let server = process::ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        log.as_deref(),
        "debug",
        &[
            "--limit",
            "frame_memory_mib=32",
            "--limit",
            "frame_timeout_secs=12",
        ],
    );
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let attack = {
        let (stop, opened) = (stop.clone(), opened.clone());
        rt.spawn(async move {
            let ep = endpoint(loopback(2));
            let mut held = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                let tick = tokio::time::sleep(Duration::from_millis(500));
                if let Ok(mut raw) = Raw::session(&ep, addr, &bad).await {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let _ = raw.write(&(16u32 << 20).to_le_bytes()).await;
                    held.spawn(async move {
                        // The whole connection, streams included, stays alive.
                        let raw = raw;
                        raw.conn.closed().await
                    });
                }
                tick.await;
                while held.try_join_next().is_some() {}
            }
            held.abort_all();
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let db = rekord::Db::memory_synced(process::config(addr, &good)).unwrap();
    db.wait_caught_up(STEP).unwrap();
    let tree = db.tree::<Blob>().unwrap();
    // A small record goes through (its frame needs no share).
    tree.create(&Blob {
        tag: 0,
        bytes: vec![1; 1000],
    })
    .unwrap();
    let small = db.wait_pushed(STEP);
    let start = Instant::now();
    tree.create(&Blob {
        tag: 1,
        bytes: vec![2; 6 * MIB],
    })
    .unwrap();
    let during = db.wait_pushed(Duration::from_secs(22));
    let waited = start.elapsed();
    let status = db.sync_status();
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        let _ = attack.await;
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let after = db.wait_pushed(Duration::from_secs(20));
    eprintln!(
        "attacker sessions opened: {}; small record: {small:?}; 6 MiB record during the \
         attack: {during:?} after {waited:?} (status {status:?}); after the attack: {after:?} \
         after {:?}",
        opened.load(Ordering::Relaxed),
        start.elapsed()
    );
    assert!(small.is_ok(), "a small record: {small:?}");
    assert!(after.is_ok(), "the big record after the attack: {after:?}");
    assert!(
        during.is_ok(),
        "a good 6 MiB record was not pushed in {waited:?} while one token on one address kept \
         announcing 16 MiB frames (status {status:?})"
    );
}

/// Raw measurement of the same: how long a good 14 MiB frame waits for memory behind one
/// token's stalled frames, and whether it is then closed although it is sent at full speed
/// (its wait for memory counts against its own frame deadline).
///
/// Fixed: a frame's time to arrive starts when it gets its memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_frame_that_waited_for_memory_still_has_its_deadline_to_arrive() {
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                frame_memory_mib: 16,
                frame_timeout_secs: 8,
                ..Limits::default()
            },
        )
        .unwrap();
        let addr = server.addr;
        let good = server.token("good");
        let bad = server.token("bad");
        let ep = endpoint(loopback(2));
        // One stalled 16 MiB frame takes the whole memory for 8 s; another, announced
        // 0.3 s later, waits for it and then holds it until its own deadline.
        let mut holder = Raw::session(&ep, addr, &bad).await.unwrap();
        let mut next = Raw::session(&ep, addr, &bad).await.unwrap();
        holder.write(&(16u32 << 20).to_le_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        next.write(&(16u32 << 20).to_le_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A good client right behind it, sending at full speed.
        let gep = endpoint(loopback(1));
        let mut raw = Raw::session(&gep, addr, &good).await.unwrap();
        let start = Instant::now();
        let frame = big_request(1, 14);
        let sent = raw.write(&frame).await;
        let written = start.elapsed();
        let answer = raw.response().await;
        eprintln!(
            "good 14 MiB frame: written {sent:?} after {written:?}; answer {answer:?} after {:?}",
            start.elapsed()
        );
        drop((holder, next));
        assert!(
            answer.is_ok(),
            "a good 14 MiB frame, sent at once at full speed, queued 10 ms after a stalled one \
             got the memory 10 ms before its own deadline and was closed: {answer:?}"
        );
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// (8) Big and small records between synced databases, through a server kill.

/// Two synced databases write big records (7 MiB, near the 8 MiB record limit) and many
/// small ones at the same time, update their big records, and the server is killed and
/// started again in the middle. Both end with every record of both, at its last version.
/// Held (nothing lost, duplicated or out of order).
#[test]
fn big_and_small_records_converge_through_a_server_kill() {
    client_log();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = process::issue(&data, "good", &["--read-all", "--write-all"]);
    let log = std::env::var_os("REDTEAM_LOG").map(std::path::PathBuf::from);
    let server =
        process::ServerProcess::start_with(&data, "127.0.0.1:0", log.as_deref(), "debug", &[]);
    let addr = server.addr;
    let a = rekord::Db::memory_synced(process::config(addr, &token)).unwrap();
    let b = rekord::Db::memory_synced(process::config(addr, &token)).unwrap();
    a.wait_caught_up(STEP).unwrap();
    b.wait_caught_up(STEP).unwrap();
    const BIG: u32 = 1;
    const SMALL: u32 = 300;
    let start = Instant::now();
    let write = |db: &rekord::Db, side: u32| {
        let blobs = db.tree::<Blob>().unwrap();
        let items = db.tree::<Item>().unwrap();
        let mut big = Vec::new();
        let mut small = Vec::new();
        for i in 0..BIG {
            let tag = side * 100 + i;
            big.push((
                blobs
                    .create(&Blob {
                        tag,
                        bytes: vec![tag as u8; 7 * MIB],
                    })
                    .unwrap(),
                tag,
            ));
            for n in 0..SMALL / BIG {
                small.push(create_item(&items, side * 100_000 + i * 1000 + n));
            }
        }
        // Second versions of the big records.
        for (k, tag) in &big {
            blobs
                .update(*k, |b| {
                    b.bytes = vec![*tag as u8 + 1; 7 * MIB - 1];
                })
                .unwrap();
        }
        (big, small)
    };
    let (ra, rb, server) = std::thread::scope(|s| {
        let ta = s.spawn(|| write(&a, 1));
        let tb = s.spawn(|| write(&b, 2));
        std::thread::sleep(Duration::from_millis(1500));
        server.kill();
        std::thread::sleep(Duration::from_millis(700));
        let server = process::ServerProcess::start_with(
            &data,
            &addr.to_string(),
            log.as_deref(),
            "debug",
            &[],
        );
        (ta.join().unwrap(), tb.join().unwrap(), server)
    });
    eprintln!("written after {:?}", start.elapsed());
    let pa = a.wait_pushed(Duration::from_secs(40));
    let pb = b.wait_pushed(Duration::from_secs(40));
    eprintln!("pushed after {:?}: {pa:?} / {pb:?}", start.elapsed());
    assert!(pa.is_ok() && pb.is_ok(), "{pa:?} / {pb:?}");
    let check = |db: &rekord::Db, big: &[(rekord::Key<Blob>, u32)], small: &[rekord::Key<Item>]| {
        let blobs = db.tree::<Blob>().unwrap();
        let items = db.tree::<Item>().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Cheap checks first (this loop must not starve the sync threads of CPU).
            let ok = items.len().unwrap() as usize >= small.len()
                && small.iter().all(|k| items.get(*k).is_ok())
                && big.iter().all(|(k, tag)| {
                    blobs.get(*k).is_ok_and(|b| {
                        b.tag == *tag
                            && b.bytes.len() == 7 * MIB - 1
                            && b.bytes.iter().all(|x| *x == *tag as u8 + 1)
                    })
                });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not converged: {} of {} big at their last version, {} of {} small",
                big.iter()
                    .filter(|(k, tag)| blobs
                        .get(*k)
                        .is_ok_and(|b| b.bytes.len() == 7 * MIB - 1 && b.tag == *tag))
                    .count(),
                big.len(),
                small.iter().filter(|k| items.get(**k).is_ok()).count(),
                small.len()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    check(&b, &ra.0, &ra.1);
    eprintln!("B has A's after {:?}", start.elapsed());
    check(&a, &rb.0, &rb.1);
    eprintln!("A has B's after {:?}", start.elapsed());
    check(&a, &ra.0, &ra.1);
    check(&b, &rb.0, &rb.1);
    eprintln!("converged after {:?}", start.elapsed());
    assert_eq!(a.tree::<Blob>().unwrap().len().unwrap(), u64::from(2 * BIG));
    assert_eq!(
        b.tree::<Item>().unwrap().len().unwrap(),
        a.tree::<Item>().unwrap().len().unwrap()
    );
    drop(server);
}

fn create_item(t: &rekord::Tree<Item>, n: u32) -> rekord::Key<Item> {
    let start = Instant::now();
    loop {
        match t.create(&Item { n }) {
            Ok(k) => return k,
            Err(rekord::Error::IdsExhausted) if start.elapsed() < Duration::from_secs(40) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// (1) Refusals reach their clients.

/// Fifty bad tokens and fifty wrong application names from 127.0.0.1: every client hears
/// the refusal as such (not as a lost connection). Held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_client_hears_why() {
    bounded(Duration::from_secs(55), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(dir.path(), Limits::default()).unwrap();
        let addr = server.addr;
        let token = server.token("good");
        let mut wrong = Vec::new();
        for i in 0..100 {
            let cfg = if i % 2 == 0 {
                hello("rk_not_a_token")
            } else {
                ClientConfig {
                    app: "another".into(),
                    ..hello(&token)
                }
            };
            let r = rekord::net::connect_timeout(addr, &cfg, None, Duration::from_secs(5)).await;
            match r {
                Err(NetError::Handshake(HandshakeError::Refused(
                    Refusal::BadToken | Refusal::WrongApp { .. },
                ))) => {}
                Err(e) => wrong.push(e.to_string()),
                Ok(_) => wrong.push("accepted".into()),
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of 100: {:?}",
            wrong.len(),
            wrong.first()
        );
        server.stop().await;
    })
    .await;
}

/// A client busy for 2.5 s right after sending its hello (its runtime blocked) then reads:
/// it still learns why it was refused, from the refusal frame or the close reason. Held
/// (it reads `Refused(BadToken)`: received stream data outlives the close).
#[test]
fn a_client_busy_after_its_hello_still_learns_its_refusal() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = rt.block_on(async {
        let server = Served::start(dir.path(), Limits::default()).unwrap();
        let addr = server.addr;
        (server, addr)
    });
    // The client on its own single-threaded runtime, which it blocks.
    let answer = std::thread::spawn(move || {
        let crt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        crt.block_on(async move {
            let ep = endpoint(loopback(1));
            let mut raw = Raw::open(&ep, addr).await.unwrap();
            let bytes = rekord::proto::encode(&client_hello(&hello("rk_bad"))).unwrap();
            raw.write(&bytes).await.unwrap();
            std::thread::sleep(Duration::from_millis(2500));
            format!("{:?}", raw.next().await)
        })
    })
    .join()
    .unwrap();
    eprintln!("busy client read: {answer}");
    rt.block_on(server.stop());
    assert!(
        answer.contains("BadToken") || answer.contains("token"),
        "a client busy for 2.5 s after its hello: {answer}"
    );
}

// ---------------------------------------------------------------------------------------
// (4) The largest hello a client may say.

/// The largest valid hello (1024 subscribed trees of 128-byte names, the longest history;
/// the application name must be the server's) is about 140 KB: it fits `MAX_HELLO` and is
/// accepted. Held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_valid_hello_is_accepted() {
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(dir.path(), Limits::default()).unwrap();
        let token = server.token("good");
        let mut cfg = hello(&token);
        cfg.trees = (0..rekord::proto::MAX_TREES)
            .map(|i| format!("{i:0>128}"))
            .collect();
        cfg.history = (0..rekord::proto::MAX_HISTORY as u64)
            .map(|i| (u64::MAX - i, u64::MAX - i))
            .collect();
        let bytes = rekord::proto::encode(&client_hello(&cfg)).unwrap();
        eprintln!("largest valid hello: {} bytes", bytes.len());
        let ep = endpoint(loopback(2));
        let (_raw, answer) = Raw::hello(&ep, server.addr, &client_hello(&cfg))
            .await
            .unwrap();
        assert!(
            matches!(answer, Frame::ServerHello(_)),
            "{:?}",
            format!("{answer:?}").chars().take(300).collect::<String>()
        );
        server.stop().await;
    })
    .await;
}

/// `Inbound::read_frame` waits for frame memory inside the session's `select!`, whose other
/// branch forwards pushes: every push drops the waiting `acquire_many_owned` and the next
/// loop asks again, at the back of the (FIFO) line. A session that receives pushes while
/// its big frame waits (any synced replica while others write) loses its place to every
/// frame announced after its own; here a stalled 16 MiB frame announced after it takes the
/// memory first and holds it past the good frame's deadline, which closes the good one.
///
/// Fixed: the wait for frame memory is kept across the session's `select!` (`Inbound::waiting`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_receiving_pushes_keeps_its_place_in_line_for_frame_memory() {
    client_log();
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                frame_memory_mib: 16,
                frame_timeout_secs: 10,
                ..Limits::default()
            },
        )
        .unwrap();
        let addr = server.addr;
        let good = server.token("good");
        let bad = server.token("bad");
        let ep = endpoint(loopback(2));
        let gep = endpoint(loopback(1));
        let mut first = Raw::session(&ep, addr, &bad).await.unwrap();
        let mut later = Raw::session(&ep, addr, &bad).await.unwrap();
        let mut g = Raw::session(&gep, addr, &good).await.unwrap();
        // A writer whose changes are pushed to the good session (small: no frame memory).
        let writer = Raw::session(&gep, addr, &good).await.unwrap();
        let start = Instant::now();
        // t = 0: a stalled 16 MiB frame takes the whole memory until t = 10 s.
        first.write(&(16u32 << 20).to_le_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // t = 2: the good 8 MiB frame, first in line (its deadline: t = 12 s).
        let frame = big_request(1, 8);
        let good_frame = tokio::spawn(async move {
            let sent = g.write(&frame).await;
            let answer = g.response().await;
            (sent, answer, start.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // t = 2.5: another stalled 16 MiB frame, second in line (deadline t = 12.5 s).
        later.write(&(16u32 << 20).to_le_bytes()).await.unwrap();
        // Meanwhile small changes of others are pushed to the good session.
        let pushing = tokio::spawn(async move {
            let mut writer = writer;
            let mut id = 1;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A borrow changing hands is logged and pushed to every reader.
                let (tree, rid) = ("junk".to_owned(), 1);
                let body = if id % 2 == 1 {
                    Request::Borrow { tree, id: rid }
                } else {
                    Request::Return { tree, id: rid }
                };
                let bytes = rekord::proto::encode(&Frame::Request { id, body }).unwrap();
                if writer.write(&bytes).await.is_err() || writer.response().await.is_err() {
                    return id;
                }
                id += 1;
            }
        });
        let (sent, answer, after) = good_frame.await.unwrap();
        pushing.abort();
        let requests = pushing.await.err().map(|_| "aborted");
        eprintln!("writer: {requests:?}");
        eprintln!("good 8 MiB frame: written {sent:?}; answer {answer:?} after {after:?}");
        drop((first, later));
        assert!(
            answer.is_ok(),
            "a good frame first in line for the memory (announced at 2 s, the memory free at \
             10 s, its deadline 12 s) was closed: {answer:?}"
        );
        server.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Memory the limits do not count: pushes in transit.

/// The limits bound what a session makes the server hold for frames it receives (one
/// frame, the shared memory, QUIC's windows). Pushes it does not read are not bounded: each
/// session takes its own deep copy of every push from the broadcast queue, encodes it (a
/// second copy) and waits up to `PUSH_WRITE_TIMEOUT` (30 s) to write it, and the queue keeps
/// every later push until the slowest session has taken it. A token with read rights and
/// sessions that stop reading after their hello make the server hold about 2-3 times
/// each big push per session (1024 sessions and 8 MiB records: tens of GiB), for 30 s at
/// a time, renewed by reconnecting.
///
/// Fixed: sessions share each push and its bytes, encoded once (`Outgoing`).
#[test]
fn pushes_to_sessions_that_read_nothing_cost_at_most_their_send_window() {
    const SESSIONS: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = process::issue(&data, "good", &["--read-all", "--write-all"]);
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
    let sessions = rt.block_on(async {
        let ep = endpoint(loopback(2));
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS {
            sessions.push(Raw::session(&ep, addr, &token).await.unwrap());
        }
        sessions
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_mib(pid);
    let db = rekord::Db::memory_synced(process::config(addr, &token)).unwrap();
    db.wait_caught_up(STEP).unwrap();
    let tree = db.tree::<Blob>().unwrap();
    for tag in 0..2 {
        tree.create(&Blob {
            tag,
            bytes: vec![tag as u8; 7 * MIB],
        })
        .unwrap();
    }
    db.wait_pushed(STEP).unwrap();
    let mut peak = 0;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        peak = peak.max(rss_mib(pid));
    }
    drop(db);
    drop(sessions);
    rt.shutdown_timeout(Duration::from_secs(1));
    let growth = peak.saturating_sub(before);
    let window = (rekord_server::limits::SEND_WINDOW >> 20) as usize;
    eprintln!(
        "{SESSIONS} sessions that read nothing, 2 pushes of 7 MiB: server RSS {before} -> \
         {peak} MiB (+{growth})"
    );
    // Each session: its send window; the records themselves (database, one queue copy):
    // generous slack.
    let bound = SESSIONS * window + 100;
    assert!(
        (growth as usize) <= bound,
        "{SESSIONS} sessions that read nothing made the server hold +{growth} MiB for two \
         7 MiB records (bound: {bound} MiB = their send windows + 100)"
    );
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

/// `Session::request` bounds a round trip, the write of the request included, and skips
/// late answers to requests that timed out, so a session stays usable after a timeout.
/// But a timeout in the middle of writing a big request (the server holds the writer back
/// while it waits for frame memory) leaves half a frame on the stream; the next request's
/// bytes become part of it, and the session is broken (the server reads a frame that never
/// ends and closes it at the frame deadline) without the client knowing why. The session
/// should refuse further requests (or the request should not be cut mid-frame).
///
/// Fixed: a request cut mid-frame closes the session; later requests fail at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_mid_write_by_its_timeout_does_not_break_the_next_one() {
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                frame_memory_mib: 16,
                frame_timeout_secs: 10,
                ..Limits::default()
            },
        )
        .unwrap();
        let addr = server.addr;
        let good = server.token("good");
        let bad = server.token("bad");
        let ep = endpoint(loopback(2));
        let mut holder = Raw::session(&ep, addr, &bad).await.unwrap();
        holder.write(&(16u32 << 20).to_le_bytes()).await.unwrap();
        let mut s = rekord::net::connect_timeout(addr, &hello(&good), None, Duration::from_secs(2))
            .await
            .unwrap();
        let changes = (0..3)
            .map(|i| Change {
                tree: "junk".into(),
                id: i + 1,
                rev: 0,
                kind: ChangeKind::Put {
                    version: 1,
                    data: vec![7; 4 * MIB],
                },
            })
            .collect();
        let first = s.changes(*uuid::Uuid::new_v4().as_bytes(), changes).await;
        eprintln!("12 MiB request while the memory is taken: {first:?}");
        // The stalled frame goes away; the memory is free again.
        holder.conn.close(0u32.into(), b"");
        drop(holder);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ping = s.ping().await;
        let again = s.ping().await;
        eprintln!("then: ping {ping:?}, again {again:?}");
        assert!(
            again.is_ok() || matches!(ping, Err(NetError::Closed(_)) | Err(NetError::Protocol(_))),
            "after a request timed out mid-write the session neither works nor says it is \
             unusable: {ping:?} / {again:?}"
        );
        server.stop().await;
    })
    .await;
}

/// A server that closes a connection while the client writes a request says why (code and
/// reason). A big request is what meets the frame limits, and the client is then writing
/// it: `Session::round_trip` mapped the write's error with `to_string()`, which for quinn's
/// `WriteError::ConnectionLost` is just "connection lost": the code and the reason were
/// dropped (`read_error` keeps them on the read side).
///
/// Fixed: the write side keeps them too (`write_error`). Shown here with the server's
/// shutdown (code 3) closing a client in the middle of a 12 MiB request the server is not
/// reading (its token's frame memory is taken), the same path `CLOSE_LIMITED` takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closed_past_a_limit_while_writing_hears_which() {
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                frame_memory_mib: 16,
                frame_timeout_secs: 30,
                ..Limits::default()
            },
        )
        .unwrap();
        let addr = server.addr;
        let good = server.token("good");
        let ep = endpoint(loopback(2));
        // The good token's own first session holds its part of the frame memory.
        let mut holder = Raw::session(&ep, addr, &good).await.unwrap();
        holder.write(&(16u32 << 20).to_le_bytes()).await.unwrap();
        let mut s =
            rekord::net::connect_timeout(addr, &hello(&good), None, Duration::from_secs(20))
                .await
                .unwrap();
        let changes = (0..3)
            .map(|i| Change {
                tree: "junk".into(),
                id: i + 1,
                rev: 0,
                kind: ChangeKind::Put {
                    version: 1,
                    data: vec![7; 4 * MIB],
                },
            })
            .collect();
        let writing = tokio::spawn(async move {
            s.changes(*uuid::Uuid::new_v4().as_bytes(), changes)
                .await
                .unwrap_err()
                .to_string()
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.stop().await;
        let e = writing.await.unwrap();
        eprintln!("12 MiB request cut by the server's close: {e}");
        drop(holder);
        assert!(
            e.contains("code 3") && e.contains("shutting down"),
            "closed while writing, the client only says: {e}"
        );
    })
    .await;
}

/// Before a hello is accepted frames are at most `MAX_HELLO` (1 MiB) and "take no share"
/// of the frame memory, but the share is computed as `(4 + len - FREE_FRAME_BYTES)` MiB
/// rounded up: a frame announced at exactly 1 MiB (allowed) takes 1 MiB of the shared
/// memory. `max_handshakes` (128) strangers without a token so hold up to 128 MiB of it
/// for `hello_timeout_secs` (10 s) at a time, renewing: all of a smaller budget. Here 16
/// strangers hold a 16 MiB budget, and a good 6 MiB request waits for their hello deadline.
///
/// Fixed: a frame's share leaves out its 4-byte length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_hellos_of_exactly_one_mib_take_no_frame_memory() {
    bounded(Duration::from_secs(50), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Served::start(
            dir.path(),
            Limits {
                frame_memory_mib: 16,
                ..Limits::default()
            },
        )
        .unwrap();
        let addr = server.addr;
        let token = server.token("good");
        let ep = endpoint(loopback(2));
        let mut strangers = Vec::new();
        while strangers.len() < 16 {
            match Raw::open(&ep, addr).await {
                Ok(mut raw) => {
                    raw.write(&(rekord::proto::MAX_FRAME >> 4).to_le_bytes())
                        .await
                        .unwrap();
                    strangers.push(raw);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert_eq!(rekord::proto::MAX_FRAME >> 4, 1 << 20);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let gep = endpoint(loopback(1));
        let mut raw = Raw::session(&gep, addr, &token).await.unwrap();
        let start = Instant::now();
        raw.write(&big_request(1, 6)).await.unwrap();
        let answer = raw.response().await;
        let waited = start.elapsed();
        eprintln!(
            "good 6 MiB request behind 16 strangers' 1 MiB hellos: {answer:?} after {waited:?}"
        );
        drop(strangers);
        assert!(answer.is_ok(), "{answer:?}");
        assert!(
            waited < Duration::from_secs(3),
            "a good 6 MiB request waited {waited:?} for frame memory held by 16 strangers \
             without a token (hellos announced at exactly 1 MiB)"
        );
        server.stop().await;
    })
    .await;
}
