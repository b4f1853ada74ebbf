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

#[cfg(any(feature = "web-transport", target_arch = "wasm32"))]
mod announce;
#[cfg(target_arch = "wasm32")]
mod browser;
#[cfg(not(target_arch = "wasm32"))]
mod quic;
#[cfg(not(target_arch = "wasm32"))]
mod stream;
#[cfg(all(feature = "web-transport", not(target_arch = "wasm32")))]
mod webtransport;
mod wire;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use sha2::Digest as _;

#[cfg(any(feature = "web-transport", target_arch = "wasm32"))]
pub use announce::verify_web_certificates;
#[cfg(target_arch = "wasm32")]
pub use browser::connect_browser;
#[cfg(not(target_arch = "wasm32"))]
pub use quic::{PinnedVerifier, connect, connect_timeout, connect_with};
#[cfg(not(target_arch = "wasm32"))]
pub use stream::{ByteStream, Connect, Connector, connect_stream};
#[cfg(all(feature = "web-transport", not(target_arch = "wasm32")))]
pub use webtransport::connect_web;
pub use wire::{ConnWire, MaybeSend, RecvWire, SendWire, WireFuture};

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

/// The SHA-256 fingerprint of a DER certificate, as 64 lowercase hex digits.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex(&sha2::Sha256::digest(cert_der))
}

/// Bytes as lowercase hex digits (fingerprints, WebTransport certificate hashes).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
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

/// Where a server serves WebTransport: its URL and the SHA-256 hashes (hex, as
/// `rekord-server identity` prints them on its `web-hash` lines) of the certificates to
/// accept, or [`WebTarget::webpki`] for a server with a certificate from a public CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebTarget {
    /// `https://HOST:PORT/PATH` (the path is free; the server serves every path).
    pub url: String,
    /// Certificate hashes to accept; a synced replica adds those the server announced
    /// (signed) last time.
    pub cert_hashes: Vec<String>,
    /// The server presents a certificate from a public CA: the browser validates it by
    /// WebPKI, and no hash is named, not even ones learned before (a browser that is named
    /// a hash accepts no other certificate).
    pub webpki: bool,
}

impl WebTarget {
    /// A target at `url` accepting the certificates with these hashes.
    pub fn new(url: impl Into<String>, cert_hashes: Vec<String>) -> Self {
        Self {
            url: url.into(),
            cert_hashes,
            webpki: false,
        }
    }

    /// A target at `url` whose server presents a certificate from a public CA
    /// (`[web] certificate`): validated by the browser's WebPKI, no hash named. Only the
    /// application says so: a replica never drops the hashes it learned on its own (a
    /// relay holding a CA-issued certificate for the name could then step in).
    pub fn webpki(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cert_hashes: Vec::new(),
            webpki: true,
        }
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
    /// No WebTransport session could be opened (in a browser: the page's `WebTransport`
    /// refused, which it does without saying why).
    #[error("could not connect to {url}: {reason}")]
    Unreachable {
        /// The server's WebTransport URL.
        url: String,
        /// What went wrong, and what to check.
        reason: String,
    },
    /// Over WebTransport, the server did not prove it holds the pinned long-term identity
    /// (its signed announcement did not verify); refused before the hello, so no token was
    /// sent.
    #[error(
        "the server did not prove over WebTransport that it is the pinned server ({0}); \
         refusing a possible impostor"
    )]
    NotProven(String),
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
    /// Over WebTransport (native client), the server presented a certificate whose hash is
    /// none of those this replica was given ([`WebTarget`]) or learned from the server's
    /// signed announcements.
    #[error(
        "the server's WebTransport certificate (hash {found}) is none of those this replica \
         was given or learned ({expected}); name the `web-hash` lines `rekord-server identity` \
         prints (not its fingerprint), and check that this is the right server"
    )]
    UnknownWebCertificate {
        /// The hashes accepted.
        expected: String,
        /// The presented certificate's hash.
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
    conn: Box<dyn ConnWire>,
    send: Box<dyn SendWire>,
    recv: Box<dyn RecvWire>,
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
    /// Whether the session runs over WebTransport (the server showed its WebTransport
    /// certificate, not its long-term one).
    web: bool,
    /// Over WebTransport: the long-term fingerprint the server proved before the hello, and
    /// its signed announcement.
    web_identity: Option<(String, proto::WebCertificates)>,
}

/// What a sync client asks of its transport when it connects: where its server is, what it
/// pinned of it, and the bounds of the connection. A [`sync engine`](crate::sync::engine)
/// hands it to its driver ([`crate::sync::engine::Output::Connect`]), which opens the
/// connection with [`open`] (or a transport of its own that checks as much).
#[derive(Debug, Clone, PartialEq)]
pub struct Dial {
    /// Where the server is.
    pub target: DialTarget,
    /// What this replica pinned of its server: the transport checks the certificate's
    /// fingerprint (natively over rekord's ALPN); the session checks the UUID.
    pub pin: Option<Pin>,
    /// Bounds of the connection.
    pub options: ConnectOptions,
}

/// Where a [`Dial`] goes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DialTarget {
    /// rekord's ALPN over QUIC, at this address (native).
    Quic(SocketAddr),
    /// WebTransport at this target (a browser, or natively with the `web-transport` feature).
    Web(WebTarget),
    /// A stream of the configured [`SyncConfig::connector`](crate::SyncConfig::connector)
    /// (native: an in-process server, or a pipe a test controls).
    Stream,
}

/// A connection opened for a [`Dial`]: the stream a session runs over, and what the
/// transport proved of the server.
pub struct Wire {
    /// The connection.
    pub conn: Box<dyn ConnWire>,
    /// Its stream's sending half.
    pub send: Box<dyn SendWire>,
    /// Its stream's receiving half.
    pub recv: Box<dyn RecvWire>,
    /// What the transport proved of the server.
    pub proved: Proved,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("remote", &self.conn.remote())
            .field("proved", &self.proved)
            .finish()
    }
}

/// What a transport proved of the server when it opened a [`Wire`]: the certificate it
/// checked (natively over rekord's ALPN, the one to pin), and whether the server must still
/// prove its long-term identity in the session (WebTransport). Made by [`open`] only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proved {
    pub(crate) cert: String,
    pub(crate) proof: Proof,
}

impl Proved {
    /// What a stream trusted as the server's proves (an in-process server, a simulated
    /// one): nothing; `pin`'s certificate, if any, is what the session keeps.
    pub fn trusted(pin: Option<&Pin>) -> Proved {
        Proved {
            cert: pin.map(|p| p.cert.clone()).unwrap_or_default(),
            proof: Proof::None,
        }
    }
}

/// Opens the connections of a sync client that does not open its own: a sync engine's, whose
/// driver does.
pub(crate) trait Dialer: Send + Sync {
    /// A connection for `dial`, once the driver opened it.
    fn open(self: std::sync::Arc<Self>, dial: Dial) -> WireFuture<'static, Result<Wire, NetError>>;
}

/// Opens a connection for `dial` over its transport: QUIC with the certificate pinned,
/// WebTransport with the server's certificate hashes, bounded by `dial.options.timeout`.
/// [`DialTarget::Stream`] needs the connector: natively, [`open_with`].
pub async fn open(dial: &Dial) -> Result<Wire, NetError> {
    #[cfg(not(target_arch = "wasm32"))]
    return open_with(dial, None).await;
    #[cfg(target_arch = "wasm32")]
    match &dial.target {
        DialTarget::Web(target) => {
            browser::open_browser(target, dial.pin.as_ref(), dial.options).await
        }
        other => Err(NetError::Closed(format!(
            "a browser reaches its server over WebTransport only, not {other:?}"
        ))),
    }
}

/// [`open`], with the streams of `connector` for [`DialTarget::Stream`] (native).
#[cfg(not(target_arch = "wasm32"))]
pub async fn open_with(dial: &Dial, connector: Option<&Connector>) -> Result<Wire, NetError> {
    let timeout = dial.options.timeout;
    let opening = async {
        match &dial.target {
            DialTarget::Quic(addr) => quic::open_quic(*addr, dial.pin.as_ref(), dial.options).await,
            #[cfg(feature = "web-transport")]
            DialTarget::Web(target) => {
                webtransport::open_web(target, dial.pin.as_ref(), dial.options).await
            }
            #[cfg(not(feature = "web-transport"))]
            DialTarget::Web(_) => Err(NetError::Closed(
                "WebTransport natively needs the crate feature `web-transport`".into(),
            )),
            DialTarget::Stream => match connector {
                Some(connector) => {
                    let stream = connector.connect().await?;
                    Ok(stream::stream_wire(stream, dial.pin.as_ref()))
                }
                None => Err(NetError::Closed(
                    "no connector to open a stream with (SyncConfig::connector)".into(),
                )),
            },
        }
    };
    match crate::rt::timeout(timeout, opening).await {
        Some(result) => result,
        None => Err(NetError::Timeout {
            what: "connecting",
            after: timeout,
        }),
    }
}

/// Whether a session's server proves its long-term identity before the hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Proof {
    /// No: the transport showed the long-term certificate (QUIC) or needs none (in-process).
    None,
    /// Yes (WebTransport), and the certificate the connection showed, when the transport
    /// says (`None` in a browser), must be one the server announces.
    #[cfg_attr(
        not(any(feature = "web-transport", target_arch = "wasm32")),
        allow(dead_code)
    )]
    Announced {
        /// The SHA-256 of the certificate shown, as hex.
        presented: Option<String>,
    },
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

impl Session {
    /// Runs the handshake over `wire` (opened by [`open`]) with `cfg`, its pinned UUID
    /// checked; bounded by `timeout` like every request of the session.
    pub async fn start_on(
        wire: Wire,
        cfg: &ClientConfig,
        timeout: Duration,
    ) -> Result<Session, NetError> {
        let pin = Pin {
            server: [0; 16],
            cert: wire.proved.cert,
        };
        let start = Session::start_proving(
            wire.conn,
            wire.send,
            wire.recv,
            cfg,
            pin,
            timeout,
            wire.proved.proof,
        );
        match crate::rt::timeout(timeout, start).await {
            Some(result) => result,
            None => Err(NetError::Timeout {
                what: "the handshake",
                after: timeout,
            }),
        }
    }

    /// Runs the handshake on a fresh stream: sends the hello, reads and checks the answer.
    /// `pin` carries what the transport verified (the certificate fingerprint); its server
    /// id is filled from the answer.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) async fn start(
        conn: Box<dyn ConnWire>,
        send: Box<dyn SendWire>,
        recv: Box<dyn RecvWire>,
        cfg: &ClientConfig,
        pin: Pin,
        timeout: Duration,
    ) -> Result<Session, NetError> {
        Session::start_proving(conn, send, recv, cfg, pin, timeout, Proof::None).await
    }

    /// [`Session::start`]; with a `prove` other than [`Proof::None`] (WebTransport), the
    /// server first proves its long-term identity
    /// ([`Request::WebCertificates`](crate::proto::Request::WebCertificates) before the hello,
    /// which carries the token), checked against `pin`.
    pub(crate) async fn start_proving(
        conn: Box<dyn ConnWire>,
        send: Box<dyn SendWire>,
        recv: Box<dyn RecvWire>,
        cfg: &ClientConfig,
        pin: Pin,
        timeout: Duration,
        prove: Proof,
    ) -> Result<Session, NetError> {
        let mut session = Session {
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
            pin,
            next_id: 1,
            timeout,
            pushes: VecDeque::new(),
            sent: 0,
            cut: false,
            web: prove != Proof::None,
            web_identity: None,
            received: 0,
        };
        if let Proof::Announced { presented } = prove {
            #[cfg(any(feature = "web-transport", target_arch = "wasm32"))]
            session.prove_identity(cfg.pinned, presented).await?;
            #[cfg(not(any(feature = "web-transport", target_arch = "wasm32")))]
            {
                let _ = presented;
                return Err(NetError::NotProven(
                    "checking a WebTransport server needs the crate feature `web-transport`".into(),
                ));
            }
        }
        let bytes = proto::encode(&client_hello(cfg))?;
        session
            .send
            .write_all(&bytes)
            .await
            .map_err(NetError::Closed)?;
        session.sent += bytes.len() as u64;
        let answer = match session.read_frame().await {
            Ok(frame) => frame,
            Err(e) => {
                session.conn.close(CLOSE_PROTOCOL, b"bad answer");
                return Err(e);
            }
        };
        match check_server(cfg, answer) {
            Ok(hello) => {
                if let Some((_, announced)) = &session.web_identity
                    && announced.server != hello.server
                {
                    session.conn.close(CLOSE_PROTOCOL, b"another server");
                    return Err(NetError::NotProven(
                        "the hello names another server than the signed announcement".into(),
                    ));
                }
                session.pin.server = hello.server;
                session.hello = hello;
                Ok(session)
            }
            Err(e) => {
                let code = match e {
                    HandshakeError::Refused(_) => CLOSE_NORMAL,
                    _ => CLOSE_PROTOCOL,
                };
                session.conn.close(code, b"handshake failed");
                Err(e.into())
            }
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

    /// Whether this session runs over WebTransport: the server presented its WebTransport
    /// certificate, and its long-term identity is checked with
    /// [`crate::proto::Request::WebCertificates`].
    pub fn is_web(&self) -> bool {
        self.web
    }

    /// Over WebTransport: the long-term certificate fingerprint the server proved before the
    /// hello (signed with that certificate's key, over this session's nonce), and its signed
    /// announcement of its WebTransport certificates.
    pub fn web_identity(&self) -> Option<&(String, proto::WebCertificates)> {
        self.web_identity.as_ref()
    }

    /// Before the hello: asks for the signed announcement and checks it against the pinned
    /// server (`pinned`) and certificate (`self.pin.cert`, when not empty).
    #[cfg(any(feature = "web-transport", target_arch = "wasm32"))]
    async fn prove_identity(
        &mut self,
        pinned: Option<Id>,
        presented: Option<String>,
    ) -> Result<(), NetError> {
        let nonce = crate::rt::random::<32>().map_err(|e| NetError::NotProven(e.to_string()))?;
        let request = Frame::Request {
            id: 0,
            body: Request::WebCertificates { nonce },
        };
        let bytes = proto::encode(&request)?;
        self.send
            .write_all(&bytes)
            .await
            .map_err(NetError::Closed)?;
        self.sent += bytes.len() as u64;
        let announced = match self.read_frame().await? {
            Frame::Response {
                id: 0,
                body: Response::WebCertificates(w),
            } => w,
            other => {
                self.conn.close(CLOSE_PROTOCOL, b"unexpected frame");
                return Err(NetError::Protocol(format!(
                    "expected the server's signed certificate announcement, got {other:?}"
                )));
            }
        };
        let uuid = |id: &Id| uuid::Uuid::from_bytes(*id).to_string();
        if let Some(pinned) = pinned
            && pinned != announced.server
        {
            self.conn.close(CLOSE_NORMAL, b"another server");
            return Err(NetError::NotProven(format!(
                "it announces itself as server {}, the pinned one is {}",
                uuid(&announced.server),
                uuid(&pinned)
            )));
        }
        let expected = (!self.pin.cert.is_empty()).then(|| self.pin.cert.clone());
        let fingerprint =
            verify_web_certificates(&announced, &announced.server, &nonce, expected.as_deref())
                .map_err(|why| {
                    self.conn.close(CLOSE_NORMAL, b"not proven");
                    NetError::NotProven(why)
                })?;
        // The certificate this connection showed must be one the server signed for (a
        // relay holding a WebTransport key the server no longer uses is refused). A browser
        // does not say which it saw.
        if let Some(presented) = presented {
            let listed = announced
                .certificates
                .iter()
                .any(|c| hex(&c.hash) == presented);
            if !listed {
                self.conn.close(CLOSE_NORMAL, b"not proven");
                return Err(NetError::NotProven(format!(
                    "the certificate this connection showed ({presented}) is not one the \
                     server announces"
                )));
            }
        }
        self.web_identity = Some((fingerprint, announced));
        Ok(())
    }

    /// The server's address, as text (`IP:port`, or the URL of a WebTransport session).
    pub fn remote(&self) -> String {
        self.conn.remote()
    }

    /// Sends [`Request::Ping`] and waits for the pong; returns the round-trip time.
    pub async fn ping(&mut self) -> Result<Duration, NetError> {
        let start = crate::rt::now();
        match self.request(Request::Ping).await? {
            Response::Pong => Ok(crate::rt::now().saturating_duration_since(start)),
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
                        self.conn.close(CLOSE_PROTOCOL, b"unexpected frame");
                        return Err(NetError::Protocol(format!(
                            "unexpected frame while waiting for pushes: {other:?}"
                        )));
                    }
                }
            }
        };
        // Cancel-safe: `read_frame` keeps every received byte in the session's reader.
        match crate::rt::timeout(timeout, wait).await {
            Some(result) => result.map(Some),
            None => Ok(None),
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
                    self.conn.close(CLOSE_PROTOCOL, b"unexpected frame");
                    return Err(NetError::Protocol(format!(
                        "unexpected frame while looking for pushes: {other:?}"
                    )));
                }
                Ok(None) => {}
                Err(e) => {
                    self.conn.close(CLOSE_PROTOCOL, b"malformed frame");
                    return Err(e.into());
                }
            }
            // Polled once: data the transport has received already is taken, nothing is
            // waited for (reading is cancel-safe).
            let mut read = self.recv.read_into(&mut self.reader);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::future::Future::poll(read.as_mut(), &mut cx) {
                std::task::Poll::Ready(Ok(Some(n))) => self.received += n as u64,
                std::task::Poll::Ready(Ok(None)) => {
                    return Err(NetError::Closed("the server ended the stream".into()));
                }
                std::task::Poll::Ready(Err(e)) => return Err(NetError::Closed(e)),
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
        match crate::rt::timeout(timeout, self.round_trip(body)).await {
            Some(result) => result,
            None => {
                if self.cut {
                    // The next frame would continue this one's bytes: nothing more can be
                    // said on this stream.
                    self.conn
                        .close(CLOSE_PROTOCOL, b"a request was cut off mid-frame");
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
            let mut write = send.write_all(&bytes);
            let mut reading = true;
            loop {
                if !reading {
                    write.as_mut().await.map_err(NetError::Closed)?;
                    break;
                }
                // A read dropped when the write completes loses nothing (cancel-safe).
                match crate::rt::first(write.as_mut(), recv.read_into(reader)).await {
                    crate::rt::Either::Left(written) => {
                        written.map_err(NetError::Closed)?;
                        break;
                    }
                    crate::rt::Either::Right(Ok(Some(n))) => *received += n as u64,
                    // The end or an error shows again in `read_frame`; the write finishes
                    // or fails on its own.
                    crate::rt::Either::Right(Ok(None) | Err(_)) => reading = false,
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
                    self.conn.close(CLOSE_PROTOCOL, b"unexpected frame");
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
                    self.conn.close(CLOSE_PROTOCOL, b"malformed frame");
                    return Err(e.into());
                }
            }
            match self.recv.read_into(&mut self.reader).await {
                Ok(Some(n)) => self.received += n as u64,
                Ok(None) => return Err(NetError::Closed("the server ended the stream".into())),
                Err(e) => return Err(NetError::Closed(e)),
            }
        }
    }

    /// Closes the session politely and waits (bounded) until the server knows.
    pub async fn close(mut self) {
        self.send.finish();
        self.conn.close(CLOSE_NORMAL, b"bye");
        let _ = crate::rt::timeout(Duration::from_secs(1), self.conn.closed()).await;
    }
}
