//! Red team of the signed WebTransport certificate announcements (protocol version 6), the
//! first-contact pin changes and the in-process driven harness.
//!
//! The malicious servers are a WebTransport proxy in this process: it presents the victim's
//! WebTransport certificate (a stolen WebTransport key: the attacker the announcements are
//! meant to stop) and relays to the genuine server (in-process, `Server::local_connector`),
//! rewriting frames. Tests marked `Was a bug` found a bug fixed since.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin as StdPin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use process::{APP, ServerProcess, config, identity};
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rekord::net::{ByteStream, Connect, NetError, Pin, WebTarget, WireFuture};
use rekord::proto::handshake::{ClientConfig, Trees, client_hello};
use rekord::proto::{Frame, FrameReader, Request, Response, WebCertificate, WebCertificates};
use rekord::{Db, Error, Key, SyncConfig};
use rekord_server::{Config, LocalConnector, Server};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(20);
const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("rekord.meta");

// ---------------------------------------------------------------------------------------
// Helpers

#[allow(dead_code)]
fn create(parts: &rekord::Tree<Part>, name: &str) -> Key<Part> {
    let start = Instant::now();
    loop {
        match parts.create(&Part {
            name: name.into(),
            qty: 1,
        }) {
            Ok(k) => return k,
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("create failed: {e}"),
        }
    }
}

/// Waits until the replica is refused (its reason) or `limit` passes (`None`).
fn refused_within(db: &Db, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let st = db.sync_status().unwrap();
        if let Some(r) = st.refused {
            return Some(r);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn meta(path: &Path, key: &str) -> Option<Vec<u8>> {
    use redb::ReadableDatabase as _;
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(META).unwrap();
    t.get(key).unwrap().map(|v| v.value().to_vec())
}

fn set_meta(path: &Path, key: &str, value: &[u8]) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(META).unwrap();
        t.insert(key, value).unwrap();
    }
    txn.commit().unwrap();
}

fn uuid_bytes(uuid: &str) -> [u8; 16] {
    *uuid::Uuid::parse_str(uuid).unwrap().as_bytes()
}

/// What the proxy does to the frames it relays.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Relays unchanged (a man in the middle with the stolen WebTransport key).
    Pass,
    /// Asks the server to sign another nonce (a replayed answer).
    OtherNonce,
    /// Keeps the genuine certificate, signs with another key.
    OtherKey,
    /// Its own long-term identity, consistently signed (an impostor with its own key).
    OwnIdentity,
    /// Garbage in place of the certificate DER.
    GarbageCert,
    /// More certificates than any server announces.
    HugeList,
    /// Answers the certificate request with `Pong`.
    Pong,
    /// Like `OtherKey`, and the hello names another holder number.
    OtherHolder,
    /// Garbage certificate, and the hello names another server UUID (first contact, no pin).
    OtherUuid,
    /// Signs (with its own identity) hashes that expired long ago and one far in the future.
    OddExpiry,
}

struct ProxyState {
    mode: Mutex<Mode>,
    /// The nonce of the replica's last certificate request.
    nonce: Mutex<Option<[u8; 32]>>,
    /// The tokens the replicas sent in their hellos.
    tokens: Mutex<Vec<String>>,
    /// The impostor's own long-term identity.
    own: rcgen::CertifiedKey<rcgen::KeyPair>,
    uuid: [u8; 16],
}

fn sign(key: &rcgen::KeyPair, msg: &[u8]) -> Vec<u8> {
    use rcgen::SigningKey as _;
    key.sign(msg).unwrap()
}

impl ProxyState {
    fn to_server(&self, frame: Frame) -> Frame {
        match frame {
            Frame::ClientHello(h) => {
                self.tokens.lock().unwrap().push(h.token.clone());
                Frame::ClientHello(h)
            }
            Frame::Request {
                id,
                body: Request::WebCertificates { nonce },
            } => {
                *self.nonce.lock().unwrap() = Some(nonce);
                let nonce = if *self.mode.lock().unwrap() == Mode::OtherNonce {
                    [7; 32]
                } else {
                    nonce
                };
                Frame::Request {
                    id,
                    body: Request::WebCertificates { nonce },
                }
            }
            f => f,
        }
    }

    fn to_client(&self, frame: Frame) -> Frame {
        let mode = *self.mode.lock().unwrap();
        let nonce = self.nonce.lock().unwrap().unwrap_or([0; 32]);
        match frame {
            Frame::ServerHello(mut h) if mode == Mode::OtherUuid => {
                h.server = [9; 16];
                Frame::ServerHello(h)
            }
            Frame::ServerHello(mut h) if mode == Mode::OtherHolder => {
                h.replica += 41;
                Frame::ServerHello(h)
            }
            Frame::Response {
                id,
                body: Response::WebCertificates(mut w),
            } => {
                let other = rcgen::KeyPair::generate().unwrap();
                match mode {
                    Mode::Pass | Mode::OtherNonce => {}
                    Mode::OtherKey | Mode::OtherHolder => {
                        let msg = WebCertificates::signed(&self.uuid, &nonce, &w.certificates);
                        w.signature = sign(&other, &msg);
                    }
                    Mode::OwnIdentity | Mode::OddExpiry => {
                        if mode == Mode::OddExpiry {
                            w.certificates = vec![
                                WebCertificate {
                                    hash: [0xaa; 32],
                                    not_after: 1,
                                },
                                WebCertificate {
                                    hash: [0xbb; 32],
                                    not_after: u64::MAX,
                                },
                            ];
                        }
                        w.cert = self.own.cert.der().to_vec();
                        let msg = WebCertificates::signed(&self.uuid, &nonce, &w.certificates);
                        w.signature = sign(&self.own.signing_key, &msg);
                    }
                    Mode::GarbageCert | Mode::OtherUuid => {
                        w.cert = vec![0x30, 0x82, 0xff, 0xff, 1, 2, 3]
                    }
                    Mode::HugeList => {
                        let c = w.certificates[0].clone();
                        w.certificates = vec![c; 5000];
                    }
                    Mode::Pong => {
                        return Frame::Response {
                            id,
                            body: Response::Pong,
                        };
                    }
                }
                Frame::Response {
                    id,
                    body: Response::WebCertificates(w),
                }
            }
            f => f,
        }
    }
}

/// The genuine server in this process, and a WebTransport proxy in front of it presenting
/// the server's own (stolen) WebTransport certificate.
struct Rig {
    rt: tokio::runtime::Runtime,
    data: PathBuf,
    uuid: String,
    fingerprint: String,
    hashes: Vec<String>,
    token: String,
    /// The genuine server's native QUIC address.
    addr: SocketAddr,
    proxy: SocketAddr,
    state: Arc<ProxyState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), rekord_server::ServerError>>>,
}

impl Rig {
    fn new(dir: &Path) -> Rig {
        let data = dir.join("server");
        let (uuid, fingerprint, hashes) = identity(&data);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let server = Server::bind(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data: data.clone(),
            app: APP.into(),
            ..Default::default()
        })
        .unwrap();
        let addr = server.local_addr().unwrap();
        let token = server.store().issue("all", Trees::All, Trees::All).unwrap();
        let connector = server.local_connector();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(server.serve(async {
            let _ = stopped.await;
        }));
        let state = Arc::new(ProxyState {
            mode: Mutex::new(Mode::Pass),
            nonce: Mutex::new(None),
            tokens: Mutex::new(Vec::new()),
            own: rcgen::generate_simple_self_signed(vec!["impostor".into()]).unwrap(),
            uuid: uuid_bytes(&uuid),
        });
        let cert = std::fs::read(data.join("web-current.der")).unwrap();
        let key = std::fs::read(data.join("web-current.key")).unwrap();
        let wt = web_transport_quinn::ServerBuilder::new()
            .with_addr("127.0.0.1:0".parse().unwrap())
            .with_certificate(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )
            .unwrap();
        let proxy = wt.local_addr().unwrap();
        rt.spawn(run_proxy(wt, connector, state.clone()));
        Rig {
            rt,
            data,
            uuid,
            fingerprint,
            hashes,
            token,
            addr,
            proxy,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn pin(&self) -> Pin {
        Pin::parse(&self.uuid, &self.fingerprint).unwrap()
    }

    /// A replica reaching the server through the proxy over WebTransport.
    fn web_config(&self) -> SyncConfig {
        config(self.addr, &self.token)
            .web_transport(WebTarget::new(
                format!("https://127.0.0.1:{}/rekord", self.proxy.port()),
                self.hashes.clone(),
            ))
            .timeout(Duration::from_secs(3))
    }

    fn native_config(&self) -> SyncConfig {
        config(self.addr, &self.token).timeout(Duration::from_secs(3))
    }

    fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self.rt.block_on(task);
        }
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }
}

async fn run_proxy(
    mut wt: web_transport_quinn::Server,
    connector: LocalConnector,
    state: Arc<ProxyState>,
) {
    while let Some(request) = wt.accept().await {
        let connector = connector.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(session) = request.ok().await else {
                return;
            };
            let Ok((mut send, mut recv)) = session.accept_bi().await else {
                return;
            };
            let Ok(upstream) = connector.connect() else {
                return;
            };
            let (mut up_read, mut up_write) = tokio::io::split(upstream);
            let st = state.clone();
            let upward = async move {
                let mut reader = FrameReader::new();
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(Some(n)) = recv.read(&mut buf).await {
                    reader.push(&buf[..n]);
                    while let Ok(Some(frame)) = reader.next_frame() {
                        let bytes = rekord::proto::encode(&st.to_server(frame)).unwrap();
                        if up_write.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let st = state.clone();
            let downward = async move {
                let mut reader = FrameReader::new();
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = up_read.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    reader.push(&buf[..n]);
                    while let Ok(Some(frame)) = reader.next_frame() {
                        let bytes = rekord::proto::encode(&st.to_client(frame)).unwrap();
                        if send.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                }
            };
            tokio::select! {
                _ = upward => {}
                _ = downward => {}
            }
            session.close(0, b"proxy done");
        });
    }
}

// ---------------------------------------------------------------------------------------
// Malicious answers to Request::WebCertificates

/// A genuine announcement signed over another nonce (what a replayed capture is), a
/// signature by another key under the genuine certificate, and an impostor with its own
/// consistent identity: each refused with a clear reason, nothing learned.
#[test]
fn forged_announcements_under_a_pin_are_refused_and_nothing_is_learned() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    for (i, (mode, why)) in [
        (Mode::OtherNonce, "signature"),
        (Mode::OtherKey, "signature"),
        (Mode::OwnIdentity, "not the pinned one"),
    ]
    .into_iter()
    .enumerate()
    {
        rig.set(mode);
        let path = dir.path().join(format!("r{i}.rekord"));
        let db = Db::open_synced(&path, rig.web_config().pin(rig.pin())).unwrap();
        let refused = refused_within(&db, LIMIT);
        eprintln!("{mode:?}: {refused:?}");
        assert!(
            refused.as_deref().is_some_and(|r| r.contains(why)),
            "{mode:?}: {refused:?} / {:?}",
            db.sync_status().unwrap()
        );
        drop(db);
        assert_eq!(meta(&path, "sync.web_hashes"), None, "{mode:?}");
    }
    rig.shutdown();
}

/// First contact with no pin (trust on first use) over WebTransport: garbage DER, a huge
/// list, and a different response. No panic, no hashes or fingerprint learned; the replica
/// then syncs with the genuine server.
#[test]
fn malformed_announcements_on_first_contact_do_not_panic_or_pin() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    for (i, mode) in [Mode::GarbageCert, Mode::HugeList, Mode::Pong]
        .into_iter()
        .enumerate()
    {
        rig.set(mode);
        let path = dir.path().join(format!("m{i}.rekord"));
        let db = Db::open_synced(&path, rig.web_config()).unwrap();
        let refused = refused_within(&db, Duration::from_secs(4));
        let st = db.sync_status().unwrap();
        eprintln!(
            "{mode:?}: refused {refused:?}, last error {:?}",
            st.last_error
        );
        assert!(!(st.online && st.caught_up), "{mode:?}: {st:?}");
        if mode == Mode::GarbageCert {
            assert!(refused.is_some_and(|r| r.contains("does not parse")));
        } else {
            assert!(st.last_error.is_some(), "{mode:?}: {st:?}");
        }
        drop(db);
        assert_eq!(meta(&path, "sync.web_hashes"), None, "{mode:?}");
        let pin = meta(&path, "sync.pin");
        assert!(
            pin.as_ref().is_none_or(|p| p.len() == 16),
            "{mode:?}: a fingerprint was pinned from a failed check: {pin:?}"
        );
        // The genuine server after the attack.
        rig.set(Mode::Pass);
        let db = Db::open_synced(&path, rig.web_config()).unwrap();
        db.wait_caught_up(LIMIT)
            .unwrap_or_else(|e| panic!("{mode:?}: the genuine server after the attack: {e}"));
        drop(db);
    }
    rig.shutdown();
}

/// Was a bug, fixed (`check_web_identity` now runs before `first_contact`): `Client::run` called `first_contact` (which stores the holder number the hello
/// gave, and the UUID) before `check_web_identity`. An impostor with the stolen
/// WebTransport key that is refused by the signature check has still written its holder
/// number into the replica: the genuine server is then refused for good ("was the server
/// restored from an old backup?").
#[test]
fn a_refused_impostor_leaves_no_holder_number_behind() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    rig.set(Mode::OtherHolder);
    let path = dir.path().join("victim.rekord");
    let db = Db::open_synced(&path, rig.web_config().pin(rig.pin())).unwrap();
    let refused = refused_within(&db, LIMIT);
    assert!(refused.is_some_and(|r| r.contains("signature")));
    drop(db);
    rig.set(Mode::Pass);
    let db = Db::open_synced(&path, rig.web_config().pin(rig.pin())).unwrap();
    let result = db.wait_caught_up(Duration::from_secs(8));
    let st = db.sync_status().unwrap();
    drop(db);
    rig.shutdown();
    assert!(
        result.is_ok(),
        "the genuine server is refused after a refused impostor: {:?}",
        st.refused
    );
}

/// Was a bug, fixed: same root cause as above, with no pin configured (trust on first use): a first
/// contact whose identity check fails has still pinned the UUID the hello named, so the
/// genuine server is refused for good afterwards.
#[test]
fn a_refused_first_contact_pins_no_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    rig.set(Mode::OtherUuid);
    let path = dir.path().join("victim.rekord");
    let db = Db::open_synced(&path, rig.web_config()).unwrap();
    let refused = refused_within(&db, LIMIT);
    assert!(refused.is_some_and(|r| r.contains("does not parse")));
    drop(db);
    let pinned = meta(&path, "sync.pin");
    rig.set(Mode::Pass);
    let db = Db::open_synced(&path, rig.web_config()).unwrap();
    let result = db.wait_caught_up(Duration::from_secs(8));
    let st = db.sync_status().unwrap();
    drop(db);
    rig.shutdown();
    assert!(
        result.is_ok(),
        "after a refused first contact (pin left: {pinned:?}) the genuine server is refused: \
         {:?} / {:?}",
        st.refused,
        st.last_error
    );
}

/// Was a bug (design gap), fixed: the server now proves its identity before the hello (`Request::WebCertificates` first on the stream). The replica sent its token in the hello, before the server proves
/// its identity: an impostor with the stolen WebTransport key that is then refused (its
/// own long-term key) has the token, and uses it against the genuine server.
#[test]
fn a_refused_impostor_does_not_get_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    rig.set(Mode::OwnIdentity);
    let path = dir.path().join("victim.rekord");
    let db = Db::open_synced(&path, rig.web_config().pin(rig.pin())).unwrap();
    assert!(refused_within(&db, LIMIT).is_some());
    drop(db);
    let stolen = rig.state.tokens.lock().unwrap().first().cloned();
    // The attacker replays it natively to the genuine server.
    let thief = stolen.map(|t| {
        let db = Db::open_synced(
            dir.path().join("thief.rekord"),
            config(rig.addr, &t).timeout(Duration::from_secs(3)),
        )
        .unwrap();
        let ok = db.wait_caught_up(LIMIT).is_ok();
        drop(db);
        ok
    });
    rig.shutdown();
    assert_ne!(
        thief,
        Some(true),
        "an impostor refused over WebTransport kept the replica's token and synced with it"
    );
}

/// A man in the middle relaying to the genuine server (stolen WebTransport key, no
/// long-term key): the signature is over the nonce only, with no binding to the TLS
/// session, so the relay passes. Documented, not asserted (browsers expose no channel
/// binding); the replica syncs through it.
#[test]
fn a_relaying_man_in_the_middle_passes_the_signed_check() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    let path = dir.path().join("victim.rekord");
    let db = Db::open_synced(&path, rig.web_config().pin(rig.pin())).unwrap();
    let ok = db.wait_caught_up(LIMIT).is_ok();
    eprintln!("relayed through the holder of a stolen WebTransport key: caught up {ok}");
    drop(db);
    rig.shutdown();
}

/// Hashes the server signs that expired long ago or expire at u64::MAX (a TOFU impostor
/// with its own key here). Since the session also checks that the certificate it was shown
/// is among the announced ones, such an announcement (which lists only odd hashes) is
/// refused before the hello, and nothing is stored; damaged stored values are
/// `damaged_stored_hashes_do_not_stop_the_replica`'s.
#[test]
fn odd_expiries_are_stored_as_signed_and_expired_ones_not_named() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    rig.set(Mode::OddExpiry);
    let path = dir.path().join("tofu.rekord");
    let db = Db::open_synced(&path, rig.web_config()).unwrap();
    let e = db.wait_caught_up(LIMIT).unwrap_err().to_string();
    assert!(e.contains("is not one the server announces"), "{e}");
    drop(db);
    assert!(
        meta(&path, "sync.web_hashes").is_none(),
        "an unproven list was stored"
    );
    rig.shutdown();
}

// ---------------------------------------------------------------------------------------
// Stored hashes

/// A damaged `sync.web_hashes` (not UTF-8, no colons, empty hashes, huge) neither panics
/// nor stops a replica whose configured hash is right; an expired learned hash alone is
/// not named (the replica reports it has no hash instead of connecting).
#[test]
fn damaged_stored_hashes_do_not_stop_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    let path = dir.path().join("r.rekord");
    let db = Db::open_synced(&path, rig.web_config().pin(rig.pin())).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    let learned = String::from_utf8(meta(&path, "sync.web_hashes").unwrap()).unwrap();
    assert!(
        learned.contains(&rig.hashes[0].to_ascii_lowercase()),
        "{learned}"
    );
    let mut huge = Vec::new();
    for i in 0..2_000u32 {
        huge.extend_from_slice(format!("{i:064x}:99999999999,").as_bytes());
    }
    let damaged: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, b':', b'9', 0x00],
        b",,,::,:,zz:zz".to_vec(),
        b":99999999999, :99999999999".to_vec(),
        huge,
    ];
    for (i, value) in damaged.iter().enumerate() {
        set_meta(&path, "sync.web_hashes", value);
        let db = Db::open_synced(&path, rig.web_config().pin(rig.pin())).unwrap();
        db.wait_caught_up(LIMIT).unwrap_or_else(|e| {
            panic!(
                "damaged value {i}: {e} / {:?}",
                db.sync_status().unwrap().last_error
            )
        });
        drop(db);
    }
    // Only a learned hash, expired: not named.
    set_meta(
        &path,
        "sync.web_hashes",
        format!("{}:1", rig.hashes[0]).as_bytes(),
    );
    let target = WebTarget::new(
        format!("https://127.0.0.1:{}/rekord", rig.proxy.port()),
        vec![],
    );
    let db = Db::open_synced(
        &path,
        config(rig.addr, &rig.token)
            .web_transport(target.clone())
            .pin(rig.pin()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let st = db.sync_status().unwrap();
    assert!(!st.online, "an expired learned hash was named: {st:?}");
    drop(db);
    // Live again: named, and enough alone.
    set_meta(
        &path,
        "sync.web_hashes",
        format!("{}:99999999999", rig.hashes[0]).as_bytes(),
    );
    let db = Db::open_synced(
        &path,
        config(rig.addr, &rig.token)
            .web_transport(target)
            .pin(rig.pin()),
    )
    .unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    rig.shutdown();
}

// ---------------------------------------------------------------------------------------
// First contact orders

fn impostor_process(dir: &Path, genuine: &Path) -> ServerProcess {
    let evil = dir.join("impostor");
    let _ = identity(&evil);
    for f in ["server.uuid", "server.redb"] {
        std::fs::copy(genuine.join(f), evil.join(f)).unwrap();
    }
    ServerProcess::start_with(&evil, "127.0.0.1:0", None, "info", &[])
}

/// TOFU over WebTransport, then the genuine server natively, then an impostor natively;
/// and native first, then WebTransport, then a WebTransport impostor with its own key.
#[test]
fn pins_learned_over_either_transport_agree() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    let uuid = uuid_bytes(&rig.uuid);
    let mut expected = uuid.to_vec();
    expected.extend_from_slice(rig.fingerprint.as_bytes());

    // Web first.
    let web_first = dir.path().join("web-first.rekord");
    let db = Db::open_synced(&web_first, rig.web_config()).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    assert_eq!(meta(&web_first, "sync.pin"), Some(expected.clone()));
    let db = Db::open_synced(&web_first, rig.native_config()).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);

    // Native first, then web, then a web impostor.
    let native_first = dir.path().join("native-first.rekord");
    let db = Db::open_synced(&native_first, rig.native_config()).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    assert_eq!(meta(&native_first, "sync.pin"), Some(expected.clone()));
    let db = Db::open_synced(&native_first, rig.web_config()).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    rig.set(Mode::OwnIdentity);
    let db = Db::open_synced(&native_first, rig.web_config()).unwrap();
    let r = refused_within(&db, LIMIT);
    assert!(r.is_some_and(|r| r.contains("not the pinned one")));
    drop(db);
    assert_eq!(meta(&native_first, "sync.pin"), Some(expected.clone()));

    let data = rig.data.clone();
    let token = rig.token.clone();
    rig.shutdown();
    // A native impostor: same UUID and token table, its own certificate.
    let impostor = impostor_process(dir.path(), &data);
    for path in [&web_first, &native_first] {
        let db = Db::open_synced(path, config(impostor.addr, &token)).unwrap();
        let r = refused_within(&db, LIMIT);
        assert!(
            r.as_deref().is_some_and(|r| r.contains("certificate")),
            "{path:?}: {r:?}"
        );
        drop(db);
    }
    impostor.kill();
}

// ---------------------------------------------------------------------------------------
// Protocol version

/// A client claiming protocol 5 is refused with a reason naming both versions.
#[test]
fn an_old_client_is_refused_with_the_versions() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(dir.path());
    let answer = rig.rt.block_on(async {
        // Raw QUIC with rekord's ALPN, accepting any certificate.
        let provider = Arc::new(quinn::rustls::crypto::ring::default_provider());
        let verifier = Arc::new(rekord::net::PinnedVerifier::any_of(vec![]));
        let tls = quinn::rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&quinn::rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let mut tls = tls;
        tls.alpn_protocols = vec![rekord::net::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = ep.connect(rig.addr, "rekord").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut hello = client_hello(&ClientConfig {
            app: APP.into(),
            client: *uuid::Uuid::new_v4().as_bytes(),
            token: rig.token.clone(),
            pinned: None,
            cursor: 0,
            trees: vec![],
            replica: 0,
            history: Vec::new(),
            last_entry: 0,
        });
        if let Frame::ClientHello(h) = &mut hello {
            h.protocol = 5;
        }
        send.write_all(&rekord::proto::encode(&hello).unwrap())
            .await
            .unwrap();
        let mut reader = FrameReader::new();
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(f) = reader.next_frame().unwrap() {
                return f;
            }
            let n = tokio::time::timeout_at(deadline, recv.read(&mut buf))
                .await
                .expect("no answer to a version-5 hello")
                .unwrap()
                .expect("closed without an answer");
            reader.push(&buf[..n]);
        }
    });
    let text = format!("{answer:?}");
    eprintln!("{text}");
    assert!(matches!(answer, Frame::Refused(_)), "{text}");
    assert!(text.contains('5') && text.contains('6'), "{text}");
    rig.shutdown();
}

// ---------------------------------------------------------------------------------------
// Driven mode

/// How the connector's streams misbehave.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Net {
    Good,
    /// One byte per read.
    Trickle,
    /// Closed after this many bytes read (mid-frame).
    CutAfter(usize),
    /// Never says anything.
    Stall,
}

struct Flaky {
    server: LocalConnector,
    net: Mutex<Net>,
    /// Misbehaving connections left (then good ones).
    bad: AtomicUsize,
    stalled: Mutex<Vec<tokio::io::DuplexStream>>,
    connects: AtomicUsize,
}

struct Wrapped {
    inner: tokio::io::DuplexStream,
    net: Net,
    read: usize,
}

impl AsyncRead for Wrapped {
    fn poll_read(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let max = match self.net {
            Net::Trickle => 1,
            Net::CutAfter(n) => n.saturating_sub(self.read),
            _ => buf.remaining(),
        }
        .min(buf.remaining());
        if max == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut tmp = vec![0u8; max];
        let mut rb = ReadBuf::new(&mut tmp);
        match StdPin::new(&mut self.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                buf.put_slice(rb.filled());
                self.read += n;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Wrapped {
    fn poll_write(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let buf = if self.net == Net::Trickle && !buf.is_empty() {
            &buf[..1]
        } else {
            buf
        };
        StdPin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        StdPin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        StdPin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connect for Flaky {
    fn connect(&self) -> WireFuture<'static, Result<Box<dyn ByteStream>, NetError>> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        let bad = self
            .bad
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_ok();
        let net = if bad {
            *self.net.lock().unwrap()
        } else {
            Net::Good
        };
        let stream: Result<Box<dyn ByteStream>, NetError> = if net == Net::Stall {
            let (a, b) = tokio::io::duplex(64);
            self.stalled.lock().unwrap().push(b);
            Ok(Box::new(a))
        } else {
            self.server
                .connect()
                .map(|s| {
                    Box::new(Wrapped {
                        inner: s,
                        net,
                        read: 0,
                    }) as Box<dyn ByteStream>
                })
                .map_err(|e| NetError::Closed(e.to_string()))
        };
        Box::pin(async move { stream })
    }
}

/// Runs `f` on a paused current-thread runtime in a `LocalSet`, on a thread of its own,
/// failing (rather than hanging) after 40 s of wall time.
fn driven<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(tokio::task::LocalSet::new().run_until(f()))
        }));
        let _ = tx.send(result.map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        }));
    });
    match rx.recv_timeout(Duration::from_secs(40)) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => panic!("{panic}"),
        Err(_) => panic!("the driven test hung (40 s of wall time)"),
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not within two virtual minutes: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn local_server(dir: &Path) -> (LocalConnector, String, tokio::sync::oneshot::Sender<()>) {
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.join("server"),
        app: APP.into(),
        ..Default::default()
    })
    .unwrap();
    let token = server.store().issue("all", Trees::All, Trees::All).unwrap();
    let connector = server.local_connector();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    (connector, token, stop)
}

/// Streams that deliver a byte at a time (always), close mid-frame, or stall (the first
/// few connections): a fresh replica keeps retrying and gets through, and pushes.
#[test]
fn driven_replicas_survive_trickling_cut_and_stalled_streams() {
    driven(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (server, token, stop) = local_server(dir.path());
        for (i, (net, bad)) in [
            (Net::Trickle, usize::MAX),
            (Net::CutAfter(3), 3),
            (Net::CutAfter(40), 3),
            (Net::CutAfter(300), 3),
            (Net::Stall, 2),
        ]
        .into_iter()
        .enumerate()
        {
            let flaky = Arc::new(Flaky {
                server: server.clone(),
                net: Mutex::new(net),
                bad: AtomicUsize::new(bad),
                stalled: Mutex::new(Vec::new()),
                connects: AtomicUsize::new(0),
            });
            let cfg = SyncConfig::new("0.0.0.0:0".parse().unwrap(), APP, &token)
                .connector(flaky.clone())
                .timeout(Duration::from_secs(5));
            let (db, driver) =
                Db::open_synced_driven(dir.path().join(format!("r{i}.rekord")), cfg).unwrap();
            let drive = tokio::task::spawn_local(driver);
            until(&format!("{net:?}: online"), || {
                db.sync_status().is_some_and(|s| s.online && s.caught_up)
            })
            .await;
            let parts = db.tree::<Part>().unwrap();
            let start = tokio::time::Instant::now();
            loop {
                match parts.create(&Part {
                    name: format!("{net:?}"),
                    qty: 1,
                }) {
                    Ok(_) => break,
                    Err(Error::IdsExhausted) if start.elapsed() < Duration::from_secs(60) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            until(&format!("{net:?}: pushed"), || {
                db.sync_status().unwrap().outbox == 0
            })
            .await;
            eprintln!(
                "{net:?}: {} connections, {:?}",
                flaky.connects.load(Ordering::SeqCst),
                db.sync_status().unwrap().last_error
            );
            drop(parts);
            drop(db);
            drive.await.unwrap();
        }
        let _ = stop.send(());
    });
}

/// The driver dropped (aborted) while the Db lives: blocking calls return at once, the Db
/// closes, and the file opens again.
#[test]
fn a_dropped_driver_leaves_nothing_hanging() {
    driven(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (server, token, stop) = local_server(dir.path());
        let flaky = Arc::new(Flaky {
            server,
            net: Mutex::new(Net::Stall),
            bad: AtomicUsize::new(0),
            stalled: Mutex::new(Vec::new()),
            connects: AtomicUsize::new(0),
        });
        let cfg = SyncConfig::new("0.0.0.0:0".parse().unwrap(), APP, &token)
            .connector(flaky.clone())
            .timeout(Duration::from_secs(5));
        let path = dir.path().join("a.rekord");
        let (db, driver) = Db::open_synced_driven(&path, cfg.clone()).unwrap();
        let drive = tokio::task::spawn_local(driver);
        until("online", || {
            db.sync_status().is_some_and(|s| s.online && s.caught_up)
        })
        .await;
        let parts = db.tree::<Part>().unwrap();
        let start = tokio::time::Instant::now();
        let key = loop {
            match parts.create(&Part {
                name: "x".into(),
                qty: 1,
            }) {
                Ok(k) => break k,
                Err(Error::IdsExhausted) if start.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        parts.return_borrow(key).unwrap();
        until("the return pushed", || {
            db.sync_status().unwrap().outbox == 0
        })
        .await;
        // Blocking calls while the driver runs on this very thread.
        let wall = Instant::now();
        let b = parts.borrow(key);
        assert!(b.is_err(), "a blocking borrow in driven mode: {b:?}");
        let w = db.wait_pushed(Duration::from_secs(5));
        let c = db.wait_caught_up(Duration::from_secs(5));
        eprintln!("driven: borrow {b:?}, wait_pushed {w:?}, wait_caught_up {c:?}");
        assert!(wall.elapsed() < Duration::from_secs(2));
        // The driver dropped mid-session (with a stall pending too).
        flaky.bad.store(usize::MAX, Ordering::SeqCst);
        drive.abort();
        let _ = drive.await;
        let wall = Instant::now();
        let b = parts.borrow(key);
        let w = db.wait_pushed(Duration::from_secs(5));
        let a = parts.borrow_async(key).await;
        eprintln!("no driver: borrow {b:?}, wait_pushed {w:?}, borrow_async {a:?}");
        assert!(wall.elapsed() < Duration::from_secs(2));
        assert!(a.is_err(), "borrow_async without a driver: {a:?}");
        let _ = parts.update(key, |p| p.qty = 2);
        drop(parts);
        drop(db);
        // The file is closed: it opens again.
        let (db, driver) = Db::open_synced_driven(&path, cfg).unwrap();
        drop(driver);
        drop(db);
        let _ = stop.send(());
    });
}
