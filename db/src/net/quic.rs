//! The native QUIC transport (quinn, rustls): connecting to a server with rekord's ALPN and
//! pinning its certificate.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::wire::{ConnWire, RecvWire, SendWire, WireFuture};
use super::{
    ALPN, CLOSE_PROTOCOL, ConnectOptions, DEFAULT_TIMEOUT, KEEP_ALIVE, NetError, Pin, Proof,
    Proved, SERVER_NAME, Session, Wire, fingerprint,
};
use crate::proto::FrameReader;
use crate::proto::handshake::ClientConfig;

/// What a connection refused before its handshake means.
pub(super) const REFUSED_AT_LIMIT: &str = "the server refused the connection: it is at one of its \
     limits (connections in total or from this address, handshakes in flight, or refused \
     tokens from this address); retry later, and check the token if it keeps happening";

/// How many bytes are read from the stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Why reading failed, with the peer's close code and reason when it closed the connection.
pub(super) fn read_error(e: quinn::ReadError) -> String {
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

/// The certificate verifier of the client: pins a fingerprint, or records the presented one
/// on first contact.
#[derive(Debug)]
pub struct PinnedVerifier {
    /// The fingerprints accepted (empty: any, first contact).
    accepted: Vec<String>,
    presented: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    /// A verifier that accepts only the certificate with fingerprint `pinned`, or (with
    /// `None`, first contact) the presented certificate, whose fingerprint it records.
    pub fn new(pinned: Option<String>) -> Self {
        Self::any_of(pinned.into_iter().collect())
    }

    /// A verifier that accepts a certificate whose fingerprint is one of `accepted` (any
    /// certificate if it is empty), and records the presented one.
    pub fn any_of(accepted: Vec<String>) -> Self {
        Self {
            accepted,
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
        match self.accepted.is_empty() || self.accepted.contains(&found) {
            false => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            true => Ok(ServerCertVerified::assertion()),
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
    match crate::rt::timeout(timeout, establish(addr, &cfg, pin, options)).await {
        Some(result) => result,
        None => Err(NetError::Timeout {
            what: "connecting and the handshake",
            after: timeout,
        }),
    }
}

pub(super) fn connect_error(addr: SocketAddr, reason: impl std::fmt::Display) -> NetError {
    NetError::Connect {
        addr,
        reason: reason.to_string(),
    }
}

/// A client endpoint for `addr` offering `alpn`, verifying with `verifier`, with the
/// keep-alive and idle bounds of `options`.
pub(super) fn client_endpoint(
    addr: SocketAddr,
    alpn: &[u8],
    verifier: Arc<PinnedVerifier>,
    options: ConnectOptions,
) -> Result<quinn::Endpoint, NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| connect_error(addr, e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
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
    Ok(endpoint)
}

async fn establish(
    addr: SocketAddr,
    cfg: &ClientConfig,
    pin: Option<&Pin>,
    options: ConnectOptions,
) -> Result<Session, NetError> {
    let wire = open_quic(addr, pin, options).await?;
    let pin = Pin {
        server: [0; 16],
        cert: wire.proved.cert,
    };
    Session::start(wire.conn, wire.send, wire.recv, cfg, pin, options.timeout).await
}

/// A connection to the server at `addr` over rekord's ALPN, its certificate checked against
/// `pin`'s (any, on first contact: the one presented is what the session pins), with its
/// stream open.
pub(super) async fn open_quic(
    addr: SocketAddr,
    pin: Option<&Pin>,
    options: ConnectOptions,
) -> Result<Wire, NetError> {
    // An empty fingerprint: pinned by UUID only so far (first contact over WebTransport).
    let pinned = pin.map(|p| p.cert.clone()).filter(|c| !c.is_empty());
    let verifier = Arc::new(PinnedVerifier::new(pinned.clone()));
    let endpoint = client_endpoint(addr, ALPN, verifier.clone(), options)?;

    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| connect_error(addr, e))?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            if let (Some(expected), Some(found)) = (pinned, verifier.presented())
                && expected != found
            {
                return Err(NetError::CertificateMismatch { expected, found });
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

    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| NetError::Closed(e.to_string()))?;
    Ok(Wire {
        conn: Box::new(QuicConn {
            _endpoint: endpoint,
            conn,
        }),
        send: Box::new(QuicSend(send)),
        recv: Box::new(QuicRecv(recv)),
        proved: Proved {
            cert,
            proof: Proof::None,
        },
    })
}

/// A native connection (kept with its endpoint: dropping the endpoint ends it).
#[derive(Debug)]
pub(super) struct QuicConn {
    pub(super) _endpoint: quinn::Endpoint,
    pub(super) conn: quinn::Connection,
}

impl ConnWire for QuicConn {
    fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(code.into(), reason);
    }

    fn closed(&self) -> WireFuture<'_, ()> {
        Box::pin(self._endpoint.wait_idle())
    }

    fn remote(&self) -> String {
        self.conn.remote_address().to_string()
    }
}

/// The sending half of a native stream.
#[derive(Debug)]
pub(super) struct QuicSend(pub(super) quinn::SendStream);

impl SendWire for QuicSend {
    fn write_all<'a>(&'a mut self, bytes: &'a [u8]) -> WireFuture<'a, Result<(), String>> {
        Box::pin(async move { self.0.write_all(bytes).await.map_err(write_error) })
    }

    fn finish(&mut self) {
        let _ = self.0.finish();
    }
}

/// The receiving half of a native stream.
#[derive(Debug)]
pub(super) struct QuicRecv(pub(super) quinn::RecvStream);

impl RecvWire for QuicRecv {
    fn read_into<'a>(
        &'a mut self,
        reader: &'a mut FrameReader,
    ) -> WireFuture<'a, Result<Option<usize>, String>> {
        // quinn's `read_chunk` is cancel-safe; the bytes reach `reader` only once read.
        Box::pin(async move {
            match self.0.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => {
                    reader.push(&chunk.bytes);
                    Ok(Some(chunk.bytes.len()))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(read_error(e)),
            }
        })
    }
}
