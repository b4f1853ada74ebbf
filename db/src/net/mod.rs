//! The QUIC transport of the [wire protocol](crate::proto): the client side, and the contract
//! both sides follow (native targets only).
//!
//! # Transport contract
//!
//! - QUIC (quinn) with TLS 1.3 (rustls, ring provider), ALPN [`ALPN`] (`rekord/1`).
//! - The server's certificate is self-signed for the name [`SERVER_NAME`] (`rekord-server`).
//!   No certificate authority is involved: the client pins the certificate's SHA-256
//!   [`fingerprint`] and the server's UUID on first contact ([`Pin`]) and afterwards refuses
//!   any other certificate ([`NetError::CertificateMismatch`]) or identity
//!   ([`HandshakeError::WrongServer`]). TLS signatures are still verified with the presented
//!   certificate's key, so a peer must hold the pinned key, not just replay the certificate.
//! - Right after connecting, the client opens exactly one bidirectional stream and sends its
//!   [`Frame::ClientHello`] on it. The server answers on the same stream with
//!   [`Frame::ServerHello`] or [`Frame::Refused`]; after a refusal it closes the connection
//!   with application error code [`CLOSE_REFUSED`] and the refusal as reason text.
//! - Every later frame of the session travels on that stream: requests from the client,
//!   responses and pushes from the server. Frames are [`proto::encode`]d (a `u32`
//!   little-endian length, then rkyv bytes) and read back with a [`FrameReader`].
//! - Application error codes when closing a connection: [`CLOSE_NORMAL`] (0, done),
//!   [`CLOSE_REFUSED`] (1, handshake refused), [`CLOSE_PROTOCOL`] (2, the peer broke the
//!   protocol: malformed or oversized frame, unexpected message), [`CLOSE_SHUTDOWN`] (3, the
//!   server is shutting down).
//! - Application close code [`CLOSE_LAGGED`] (5): the server closed a session that did not
//!   read its pushes fast enough (it missed some); reconnect to resynchronise.
//! - Application close code [`CLOSE_LIMITED`] (6): the server closed a connection that went
//!   past one of its limits (no hello in time, a frame too slow, no memory for frames); the
//!   reason text says which. A connection the server refuses before its handshake (too many
//!   connections, handshakes, or refused tokens from the address) fails with QUIC's
//!   `CONNECTION_REFUSED`, reported as [`NetError::Connect`] with that explanation.
//! - Connecting and the handshake are bounded in time ([`DEFAULT_TIMEOUT`], 10 s, unless
//!   [`connect_timeout`] says otherwise); so is every request round trip of a [`Session`].

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest as _;

use crate::proto::handshake::{ClientConfig, HandshakeError, check_server, client_hello};
use crate::proto::{
    self, Change, Frame, FrameReader, Id, Push, RemoteError, Request, Response, ServerHello,
    WireError,
};

/// The ALPN protocol identifier of rekord's QUIC transport.
pub const ALPN: &[u8] = b"rekord/1";

/// The name the server's self-signed certificate is issued for, and the TLS server name the
/// client asks for.
pub const SERVER_NAME: &str = "rekord-server";

/// Application close code: the session ended normally.
pub const CLOSE_NORMAL: u32 = 0;
/// Application close code: the server refused the client's hello.
pub const CLOSE_REFUSED: u32 = 1;
/// Application close code: the peer broke the protocol (malformed, oversized or unexpected
/// frame).
pub const CLOSE_PROTOCOL: u32 = 2;
/// Application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 3;
/// Application close code: the server's queue of pushes for this session overflowed (the
/// client did not read them fast enough and missed some); reconnect to resynchronise.
pub const CLOSE_LAGGED: u32 = 5;
/// Application close code: the connection went past one of the server's limits (the reason
/// text says which); retry later, and check the client if it keeps happening.
pub const CLOSE_LIMITED: u32 = 6;

/// Default bound on connecting plus the handshake, and on each request round trip.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an idle client session sends a keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// What a connection refused before its handshake means.
const REFUSED_AT_LIMIT: &str = "the server refused the connection: it is at one of its \
     limits (connections in total or from this address, handshakes in flight, or refused \
     tokens from this address); retry later, and check the token if it keeps happening";

/// How many bytes are read from the stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Why reading failed, with the peer's close code and reason when it closed the connection.
fn read_error(e: quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(close)) => {
            format!(
                "the server closed the connection (code {}): {}",
                close.error_code,
                String::from_utf8_lossy(&close.reason)
            )
        }
        quinn::ReadError::ConnectionLost(c) => c.to_string(),
        other => other.to_string(),
    }
}

/// Why writing failed, with the peer's close code and reason when it closed the connection.
fn write_error(e: quinn::WriteError) -> String {
    match e {
        quinn::WriteError::ConnectionLost(c) => read_error(quinn::ReadError::ConnectionLost(c)),
        other => other.to_string(),
    }
}

/// The SHA-256 fingerprint of a DER certificate, as 64 lowercase hex digits.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = sha2::Sha256::digest(cert_der);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What a client pins on first contact and checks on every later connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The server's identity (UUID bytes).
    pub server: Id,
    /// The SHA-256 [`fingerprint`] of the server's certificate.
    pub cert: String,
}

impl Pin {
    /// The pin of a server, from the two lines `rekord-server identity` prints: its UUID
    /// (hyphenated) and its certificate fingerprint (64 hex digits). With it
    /// ([`crate::SyncConfig::pin`]) not even a replica's first connection can go to an
    /// impostor.
    pub fn parse(uuid: &str, fingerprint: &str) -> crate::Result<Pin> {
        let server = uuid::Uuid::parse_str(uuid.trim()).map_err(|e| crate::Error::InvalidPin {
            reason: format!("`{uuid}` is not a UUID ({e})"),
        })?;
        let cert = fingerprint.trim().to_ascii_lowercase();
        if cert.len() != 64 || !cert.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(crate::Error::InvalidPin {
                reason: format!("`{fingerprint}` is not a SHA-256 fingerprint (64 hex digits)"),
            });
        }
        Ok(Pin {
            server: *server.as_bytes(),
            cert,
        })
    }
}

/// Why a connection or a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// No QUIC connection could be established (address unreachable, TLS failure other than
    /// a pin mismatch, local socket error).
    #[error("could not connect to {addr}: {reason}")]
    Connect {
        /// The server address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The server presented another certificate than the one pinned at first contact.
    #[error(
        "the server's certificate is not the one pinned at first contact; refusing a possible impostor (pinned fingerprint {expected}, presented {found})"
    )]
    CertificateMismatch {
        /// The pinned fingerprint.
        expected: String,
        /// The presented certificate's fingerprint.
        found: String,
    },
    /// The handshake failed: the server refused this client, or its answer was not
    /// acceptable (another identity, application or protocol version).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The peer sent bytes that are not a valid frame.
    #[error("the server broke the wire protocol: {0}")]
    Wire(#[from] WireError),
    /// The connection was lost or closed.
    #[error("the connection to the server was lost: {0}")]
    Closed(String),
    /// The server answered something that does not fit the request.
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    /// The server rejected the request (for example [`RemoteError::AlreadyBorrowed`] with
    /// the holder number of the client holding the record).
    #[error("the server rejected the request: {}", describe(.0))]
    Remote(RemoteError),
    /// An operation took longer than its bound.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The bound.
        after: Duration,
    },
}

fn describe(e: &RemoteError) -> String {
    match e {
        RemoteError::AlreadyBorrowed { holder, name } => format!(
            "the record is borrowed by another client (holder {holder}{})",
            name.as_ref()
                .map(|n| format!(", token `{n}`"))
                .unwrap_or_default()
        ),
        RemoteError::NotBorrowed => "this client does not hold the record's borrow".into(),
        RemoteError::Released => "the revision is released; only its state may change".into(),
        RemoteError::OutsideRange { id } => {
            format!("id {id} is outside this client's granted ranges")
        }
        RemoteError::NotAllowed { tree } => {
            format!("this client's token may not write tree `{tree}`")
        }
        RemoteError::NotFound => "not found".into(),
        RemoteError::Invalid(msg) => format!("invalid request: {msg}"),
        RemoteError::Conflict(c) => format!(
            "record {} revision {} of tree `{}` was changed by holder {} (sequence number {}) \
             after the version this edit was based on",
            c.id, c.rev, c.tree, c.origin, c.seq
        ),
    }
}

/// The certificate verifier of the client: pins a fingerprint, or records the presented one
/// on first contact.
#[derive(Debug)]
pub struct PinnedVerifier {
    pinned: Option<String>,
    presented: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    /// A verifier that accepts only the certificate with fingerprint `pinned`, or (with
    /// `None`, first contact) the presented certificate, whose fingerprint it records.
    pub fn new(pinned: Option<String>) -> Self {
        Self {
            pinned,
            presented: Mutex::new(None),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// The fingerprint of the certificate the server presented, once TLS reached it.
    pub fn presented(&self) -> Option<String> {
        match self.presented.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = fingerprint(end_entity.as_ref());
        match self.presented.lock() {
            Ok(mut g) => *g = Some(found.clone()),
            Err(poisoned) => *poisoned.into_inner() = Some(found.clone()),
        }
        match &self.pinned {
            Some(expected) if *expected != found => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An authenticated session with a server: the connection and its one stream.
///
/// This is the transport-level API: one request at a time ([`request`](Session::request)
/// and its typed wrappers [`ranges`](Session::ranges), [`borrow`](Session::borrow),
/// [`return_borrow`](Session::return_borrow)), and the server's pushes
/// ([`next_push`](Session::next_push)). Responses and pushes share the stream; pushes that
/// arrive while a request waits for its response are buffered in arrival order and handed
/// out by `next_push`, so none is lost (the buffer is unbounded: read it regularly). The
/// database-level sync client builds on this.
#[derive(Debug)]
pub struct Session {
    // Kept alive for the connection's sake: dropping the endpoint ends its connections.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: FrameReader,
    hello: ServerHello,
    pin: Pin,
    next_id: u64,
    timeout: Duration,
    pushes: VecDeque<Push>,
    sent: u64,
    received: u64,
    /// A request's frame is partly written (its round trip was cut short by its timeout):
    /// the stream is unusable, and the session is closed.
    cut: bool,
}

/// Bounds of a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Bound on connecting plus the handshake, and on each request round trip (default
    /// [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// A connection that hears nothing from the server for this long is considered lost
    /// (default 15 s); keep-alives are sent at a quarter of it, at most every
    /// [`KEEP_ALIVE`]. This is how a client notices a server that vanished without closing.
    pub idle_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: DEFAULT_TIMEOUT,
            idle_timeout: Duration::from_secs(15),
        }
    }
}

impl ConnectOptions {
    /// Sets [`ConnectOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::idle_timeout`].
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
}

/// Connects to the server at `addr`, pinned to `pin` if given (else first contact), and
/// runs the handshake, bounded by [`DEFAULT_TIMEOUT`].
pub async fn connect(
    addr: SocketAddr,
    cfg: &ClientConfig,
    pin: Option<&Pin>,
) -> Result<Session, NetError> {
    connect_timeout(addr, cfg, pin, DEFAULT_TIMEOUT).await
}

/// [`connect`] with another bound on connecting plus the handshake (also used for each
/// request round trip of the session).
pub async fn connect_timeout(
    addr: SocketAddr,
    cfg: &ClientConfig,
    pin: Option<&Pin>,
    timeout: Duration,
) -> Result<Session, NetError> {
    connect_with(addr, cfg, pin, ConnectOptions::default().timeout(timeout)).await
}

/// [`connect`] with explicit [`ConnectOptions`].
pub async fn connect_with(
    addr: SocketAddr,
    cfg: &ClientConfig,
    pin: Option<&Pin>,
    options: ConnectOptions,
) -> Result<Session, NetError> {
    let timeout = options.timeout;
    // The pinned server identity travels in the hello and is checked by `check_server`.
    let mut cfg = cfg.clone();
    if let Some(pin) = pin {
        cfg.pinned = Some(pin.server);
    }
    match tokio::time::timeout(timeout, establish(addr, &cfg, pin, options)).await {
        Ok(result) => result,
        Err(_) => Err(NetError::Timeout {
            what: "connecting and the handshake",
            after: timeout,
        }),
    }
}

fn connect_error(addr: SocketAddr, reason: impl std::fmt::Display) -> NetError {
    NetError::Connect {
        addr,
        reason: reason.to_string(),
    }
}

async fn establish(
    addr: SocketAddr,
    cfg: &ClientConfig,
    pin: Option<&Pin>,
    options: ConnectOptions,
) -> Result<Session, NetError> {
    let timeout = options.timeout;
    let verifier = Arc::new(PinnedVerifier::new(pin.map(|p| p.cert.clone())));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| connect_error(addr, e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| connect_error(addr, e))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // Keeps an idle session alive, and notices a vanished server after `idle_timeout`.
    let idle = options.idle_timeout.max(Duration::from_millis(100));
    transport.keep_alive_interval(Some((idle / 4).min(KEEP_ALIVE)));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    client_config.transport_config(Arc::new(transport));

    let local: SocketAddr = match addr {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let mut endpoint = quinn::Endpoint::client(local).map_err(|e| connect_error(addr, e))?;
    endpoint.set_default_client_config(client_config);

    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| connect_error(addr, e))?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            if let (Some(pin), Some(found)) = (pin, verifier.presented())
                && pin.cert != found
            {
                return Err(NetError::CertificateMismatch {
                    expected: pin.cert.clone(),
                    found,
                });
            }
            if let quinn::ConnectionError::ConnectionClosed(close) = &e
                && close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
            {
                return Err(connect_error(addr, REFUSED_AT_LIMIT));
            }
            return Err(connect_error(addr, e));
        }
    };
    // The verifier ran during the TLS handshake; a connection without a presented
    // certificate cannot be pinned.
    let Some(cert) = verifier.presented() else {
        conn.close(CLOSE_PROTOCOL.into(), b"no certificate");
        return Err(connect_error(addr, "the server presented no certificate"));
    };

    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| NetError::Closed(e.to_string()))?;
    let bytes = proto::encode(&client_hello(cfg))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| NetError::Closed(e.to_string()))?;

    let mut session = Session {
        _endpoint: endpoint,
        conn,
        send,
        recv,
        reader: FrameReader::new(),
        hello: ServerHello {
            protocol: 0,
            app: String::new(),
            server: [0; 16],
            replica: 0,
            head: 0,
            history: Vec::new(),
            read: None,
            common: None,
        },
        pin: Pin {
            server: [0; 16],
            cert,
        },
        next_id: 1,
        timeout,
        pushes: VecDeque::new(),
        sent: bytes.len() as u64,
        cut: false,
        received: 0,
    };
    let answer = match session.read_frame().await {
        Ok(frame) => frame,
        Err(e) => {
            session.conn.close(CLOSE_PROTOCOL.into(), b"bad answer");
            return Err(e);
        }
    };
    match check_server(cfg, answer) {
        Ok(hello) => {
            session.pin.server = hello.server;
            session.hello = hello;
            Ok(session)
        }
        Err(e) => {
            let code = match e {
                HandshakeError::Refused(_) => CLOSE_NORMAL,
                _ => CLOSE_PROTOCOL,
            };
            session.conn.close(code.into(), b"handshake failed");
            Err(e.into())
        }
    }
}

impl Session {
    /// What to persist after first contact (and what was checked on later contacts).
    pub fn pin(&self) -> Pin {
        self.pin.clone()
    }

    /// The server's answer to the hello.
    pub fn server_hello(&self) -> &ServerHello {
        &self.hello
    }

    /// The address of the server.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Sends [`Request::Ping`] and waits for the pong; returns the round-trip time.
    pub async fn ping(&mut self) -> Result<Duration, NetError> {
        let start = Instant::now();
        match self.request(Request::Ping).await? {
            Response::Pong => Ok(start.elapsed()),
            other => Err(NetError::Protocol(format!(
                "expected a pong, got {other:?}"
            ))),
        }
    }

    /// Asks for a new id range of `want` ids (the server clamps `want` to 1..=1,000,000);
    /// returns the granted ranges, `(start, end)` with `end` exclusive.
    pub async fn ranges(&mut self, want: u64) -> Result<Vec<(u64, u64)>, NetError> {
        match self.request(Request::Ranges { want }).await? {
            Response::Ranges(ranges) => Ok(ranges),
            Response::Error(e) => Err(NetError::Remote(e)),
            other => Err(NetError::Protocol(format!(
                "expected id ranges, got {other:?}"
            ))),
        }
    }

    /// Borrows record `id` of `tree` (also fine if this client holds it already); returns
    /// the sequence number of the logged grant (0 if it was held already). Another
    /// client's borrow gives [`NetError::Remote`] with [`RemoteError::AlreadyBorrowed`]; a
    /// tree the token may not write gives [`RemoteError::NotAllowed`].
    pub async fn borrow(&mut self, tree: &str, id: u64) -> Result<u64, NetError> {
        let request = Request::Borrow {
            tree: tree.to_owned(),
            id,
        };
        match self.request(request).await? {
            Response::Granted { seq } => Ok(seq),
            Response::Error(e) => Err(NetError::Remote(e)),
            other => Err(NetError::Protocol(format!(
                "expected a borrow answer, got {other:?}"
            ))),
        }
    }

    /// Returns the borrow of record `id` of `tree`. If this client does not hold it:
    /// [`NetError::Remote`] with [`RemoteError::NotBorrowed`].
    pub async fn return_borrow(&mut self, tree: &str, id: u64) -> Result<(), NetError> {
        let request = Request::Return {
            tree: tree.to_owned(),
            id,
        };
        match self.request(request).await? {
            Response::Returned => Ok(()),
            Response::Error(e) => Err(NetError::Remote(e)),
            other => Err(NetError::Protocol(format!(
                "expected a return answer, got {other:?}"
            ))),
        }
    }

    /// Uploads the schema of `tree` at `version` (RON text of a [`crate::Schema`], e.g.
    /// `Schema::of::<T>().to_ron()`); the server refuses data of a version it has no schema
    /// for. Uploading the same schema again is fine; a different schema for an existing
    /// version gives [`NetError::Remote`] with [`RemoteError::Invalid`].
    ///
    /// This is the transport-level API: the database-level sync client calls it.
    pub async fn put_schema(
        &mut self,
        tree: &str,
        version: u32,
        ron: &str,
    ) -> Result<(), NetError> {
        let request = Request::PutSchema {
            tree: tree.to_owned(),
            version,
            schema: ron.to_owned(),
        };
        match self.request(request).await? {
            Response::Accepted { .. } => Ok(()),
            Response::Error(e) => Err(NetError::Remote(e)),
            other => Err(NetError::Protocol(format!(
                "expected a schema answer, got {other:?}"
            ))),
        }
    }

    /// Sends local changes as operation `op` (unique per client operation): the server
    /// applies all of them or none, durably, and returns the sequence number of the last
    /// one. Sending the same `op` again (a retry after a lost answer) returns the same
    /// sequence number and applies nothing twice. A refusal is [`NetError::Remote`] with
    /// the server's [`RemoteError`] (`NotBorrowed`, `Released`,
    /// `OutsideRange`, `NotAllowed`, `Invalid`, ...). The accepted changes also come back
    /// as a [`Push::Changes`] (like everyone else's), which carries their sequence numbers.
    ///
    /// This is the transport-level API: the database-level sync client builds on it.
    pub async fn changes(&mut self, op: [u8; 16], changes: Vec<Change>) -> Result<u64, NetError> {
        match self.request(Request::Changes { op, changes }).await? {
            Response::Accepted { seq } => Ok(seq),
            Response::Error(e) => Err(NetError::Remote(e)),
            other => Err(NetError::Protocol(format!(
                "expected an answer to changes, got {other:?}"
            ))),
        }
    }

    /// The next push from the server: a buffered one (received while waiting for a
    /// response) first, else one that arrives within `timeout`; `Ok(None)` if none did.
    pub async fn next_push(&mut self, timeout: Duration) -> Result<Option<Push>, NetError> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(Some(push));
        }
        let wait = async {
            loop {
                match self.read_frame().await? {
                    Frame::Push(push) => return Ok(push),
                    // The late answer to a request that timed out.
                    Frame::Response { id, .. } if id < self.next_id => continue,
                    other => {
                        self.conn.close(CLOSE_PROTOCOL.into(), b"unexpected frame");
                        return Err(NetError::Protocol(format!(
                            "unexpected frame while waiting for pushes: {other:?}"
                        )));
                    }
                }
            }
        };
        // Cancel-safe: `read_frame` keeps every received byte in the session's reader.
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The next push if one has arrived already (buffered, or received and not yet
    /// read); never waits.
    pub fn try_next_push(&mut self) -> Result<Option<Push>, NetError> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(Some(push));
        }
        loop {
            match self.reader.next_frame() {
                Ok(Some(Frame::Push(push))) => return Ok(Some(push)),
                // The late answer to a request that timed out.
                Ok(Some(Frame::Response { id, .. })) if id < self.next_id => continue,
                Ok(Some(other)) => {
                    self.conn.close(CLOSE_PROTOCOL.into(), b"unexpected frame");
                    return Err(NetError::Protocol(format!(
                        "unexpected frame while looking for pushes: {other:?}"
                    )));
                }
                Ok(None) => {}
                Err(e) => {
                    self.conn.close(CLOSE_PROTOCOL.into(), b"malformed frame");
                    return Err(e.into());
                }
            }
            // Polled once: data quinn has received already is taken, nothing is waited
            // for (reading a chunk is cancel-safe).
            let mut read = std::pin::pin!(self.recv.read_chunk(READ_CHUNK, true));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::future::Future::poll(read.as_mut(), &mut cx) {
                std::task::Poll::Ready(Ok(Some(chunk))) => {
                    self.received += chunk.bytes.len() as u64;
                    self.reader.push(&chunk.bytes);
                }
                std::task::Poll::Ready(Ok(None)) => {
                    return Err(NetError::Closed("the server ended the stream".into()));
                }
                std::task::Poll::Ready(Err(e)) => return Err(NetError::Closed(read_error(e))),
                std::task::Poll::Pending => return Ok(None),
            }
        }
    }

    /// How many pushes are buffered (received, not yet taken by
    /// [`next_push`](Session::next_push)).
    pub fn buffered_pushes(&self) -> usize {
        self.pushes.len()
    }

    /// Bytes of frames this session sent (the hello included).
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Bytes of frames this session received.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Sends a request and waits for its response (bounded by the session's timeout).
    /// Pushes received meanwhile are buffered for [`next_push`](Session::next_push).
    pub async fn request(&mut self, body: Request) -> Result<Response, NetError> {
        if self.cut {
            return Err(NetError::Closed(
                "an earlier request timed out halfway through its frame; connect again".into(),
            ));
        }
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.round_trip(body)).await {
            Ok(result) => result,
            Err(_) => {
                if self.cut {
                    // The next frame would continue this one's bytes: nothing more can be
                    // said on this stream.
                    self.conn
                        .close(CLOSE_PROTOCOL.into(), b"a request was cut off mid-frame");
                }
                Err(NetError::Timeout {
                    what: "a request",
                    after: timeout,
                })
            }
        }
    }

    async fn round_trip(&mut self, body: Request) -> Result<Response, NetError> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = proto::encode(&Frame::Request { id, body })?;
        // Read while writing: the server may be writing a big push to this client at the
        // same time, and waits for it to be read before it reads more of this request
        // (each side's flow control window is smaller than a big frame). Bytes read here
        // are kept for `read_frame`.
        {
            let Session {
                send,
                recv,
                reader,
                received,
                ..
            } = self;
            self.cut = true;
            let write = send.write_all(&bytes);
            tokio::pin!(write);
            let mut reading = true;
            loop {
                tokio::select! {
                    written = &mut write => {
                        written.map_err(|e| NetError::Closed(write_error(e)))?;
                        break;
                    }
                    chunk = recv.read_chunk(READ_CHUNK, true), if reading => match chunk {
                        Ok(Some(chunk)) => {
                            *received += chunk.bytes.len() as u64;
                            reader.push(&chunk.bytes);
                        }
                        // The end or an error shows again in `read_frame`; the write
                        // finishes or fails on its own.
                        Ok(None) | Err(_) => reading = false,
                    },
                }
            }
        }
        self.cut = false;
        self.sent += bytes.len() as u64;
        loop {
            match self.read_frame().await? {
                Frame::Response { id: got, body } if got == id => return Ok(body),
                // The late answer to an earlier request that timed out.
                Frame::Response { id: got, .. } if got < id => continue,
                Frame::Push(push) => self.pushes.push_back(push),
                other => {
                    self.conn.close(CLOSE_PROTOCOL.into(), b"unexpected frame");
                    return Err(NetError::Protocol(format!(
                        "unexpected frame while waiting for response {id}: {other:?}"
                    )));
                }
            }
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, NetError> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => {
                    self.conn.close(CLOSE_PROTOCOL.into(), b"malformed frame");
                    return Err(e.into());
                }
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => {
                    self.received += chunk.bytes.len() as u64;
                    self.reader.push(&chunk.bytes);
                }
                Ok(None) => return Err(NetError::Closed("the server ended the stream".into())),
                Err(e) => return Err(NetError::Closed(read_error(e))),
            }
        }
    }

    /// Closes the session politely and waits (bounded) until the server knows.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        self.conn.close(CLOSE_NORMAL.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self._endpoint.wait_idle()).await;
    }
}
