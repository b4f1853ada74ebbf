//! The WebTransport transport from native code (feature `web-transport`): the same session as
//! over rekord's own ALPN, carried by a WebTransport stream (HTTP/3, ALPN `h3`) the way a
//! browser replica reaches the server. Used by tests and benchmarks of the server's browser
//! path, and by applications that must pass where only HTTP/3 goes.
//!
//! The server presents its WebTransport certificate to `h3` clients, not the long-term one,
//! so the connection is verified against the certificate hashes given (as a browser's
//! `serverCertificateHashes`), and the server's identity through the pinned UUID in the
//! hello.

use std::net::SocketAddr;
use std::sync::Arc;

use super::quic::{PinnedVerifier, REFUSED_AT_LIMIT, client_endpoint, connect_error, read_error};
use super::wire::{ConnWire, RecvWire, SendWire, WireFuture};
use super::{ConnectOptions, NetError, Pin, Proved, Session, WebTarget, Wire};
use crate::proto::FrameReader;
use crate::proto::handshake::ClientConfig;

/// How many bytes are read from the stream at a time.
const READ_CHUNK: usize = 64 * 1024;

impl WebTarget {
    /// The socket address of the URL's host and port (an IP address, or a name looked up).
    pub async fn addr(&self) -> Result<SocketAddr, NetError> {
        let bad = |reason: String| NetError::Protocol(format!("{}: {reason}", self.url));
        let url = url::Url::parse(&self.url).map_err(|e| bad(e.to_string()))?;
        if url.scheme() != "https" {
            return Err(bad("a WebTransport URL starts with https://".into()));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad("the URL names no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port().unwrap_or(443);
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| bad(e.to_string()))?
            .next()
            .ok_or_else(|| bad("the host has no address".into()))
    }
}

/// Connects to the server over WebTransport and runs the handshake, like
/// [`connect_with`](super::connect_with) over rekord's own ALPN; `pin`'s server UUID is
/// checked (its certificate fingerprint is the long-term one, not presented to `h3`
/// clients).
pub async fn connect_web(
    target: &WebTarget,
    cfg: &ClientConfig,
    pin: Option<&Pin>,
    options: ConnectOptions,
) -> Result<Session, NetError> {
    let timeout = options.timeout;
    let mut cfg = cfg.clone();
    if let Some(pin) = pin {
        cfg.pinned = Some(pin.server);
    }
    let establish = async {
        let wire = open_web(target, pin, options).await?;
        Session::start_on(wire, &cfg, timeout).await
    };
    match crate::rt::timeout(timeout, establish).await {
        Some(result) => result,
        None => Err(NetError::Timeout {
            what: "connecting and the handshake",
            after: timeout,
        }),
    }
}

/// A WebTransport session to `target`, its certificate one of the target's hashes, with its
/// stream open; the server proves its long-term identity (`pin`'s UUID) in the session.
pub(super) async fn open_web(
    target: &WebTarget,
    pin: Option<&Pin>,
    options: ConnectOptions,
) -> Result<Wire, NetError> {
    // What a WebTransport session proves is the WebTransport certificate, not the long-term
    // one native clients pin: the pin to keep is the one given, else none yet (a later
    // native connection pins the long-term certificate).
    let keep = pin.map(|p| p.cert.clone()).unwrap_or_default();
    let addr = target.addr().await?;
    if target.webpki {
        return Err(connect_error(
            addr,
            "the native WebTransport client accepts the server's rotating WebTransport \
             certificate only (by its hash), not one from a public CA: reach such a server \
             over rekord's own ALPN (SyncConfig::new), which pins its long-term certificate",
        ));
    }
    if target.cert_hashes.is_empty() {
        return Err(connect_error(
            addr,
            "no WebTransport certificate hash to accept (rekord-server identity prints them)",
        ));
    }
    let hashes: Vec<String> = target
        .cert_hashes
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let verifier = Arc::new(PinnedVerifier::any_of(hashes.clone()));
    let endpoint = client_endpoint(
        addr,
        web_transport_quinn::ALPN.as_bytes(),
        verifier.clone(),
        options,
    )?;
    let url = url::Url::parse(&target.url).map_err(|e| connect_error(addr, e))?;
    let host = url.host_str().unwrap_or("localhost").to_owned();
    let connecting = endpoint
        .connect(addr, host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| connect_error(addr, e))?;
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(e) => {
            if let Some(found) = verifier.presented()
                && !hashes.contains(&found)
            {
                return Err(NetError::UnknownWebCertificate {
                    expected: hashes.join(" or "),
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
    let presented = verifier.presented();
    let session = web_transport_quinn::Session::connect(conn, url)
        .await
        .map_err(|e| connect_error(addr, format!("the WebTransport session failed: {e}")))?;
    let (send, recv) = session
        .open_bi()
        .await
        .map_err(|e| NetError::Closed(e.to_string()))?;
    Ok(Wire {
        conn: Box::new(WebConn {
            _endpoint: endpoint,
            session,
            url: target.url.clone(),
        }),
        send: Box::new(WebSend(send)),
        recv: Box::new(WebRecv(recv)),
        proved: Proved {
            cert: keep,
            proof: super::Proof::Announced { presented },
        },
    })
}

/// A WebTransport session (kept with its endpoint: dropping the endpoint ends it).
#[derive(Debug)]
struct WebConn {
    _endpoint: quinn::Endpoint,
    session: web_transport_quinn::Session,
    url: String,
}

impl ConnWire for WebConn {
    fn close(&self, code: u32, reason: &[u8]) {
        self.session.close(code, reason);
    }

    fn closed(&self) -> WireFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.session.closed().await;
            self._endpoint.wait_idle().await;
        })
    }

    fn remote(&self) -> String {
        self.url.clone()
    }
}

#[derive(Debug)]
struct WebSend(web_transport_quinn::SendStream);

impl SendWire for WebSend {
    fn write_all<'a>(&'a mut self, bytes: &'a [u8]) -> WireFuture<'a, Result<(), String>> {
        Box::pin(async move { self.0.write_all(bytes).await.map_err(|e| e.to_string()) })
    }

    fn finish(&mut self) {
        let _ = self.0.finish();
    }
}

#[derive(Debug)]
struct WebRecv(web_transport_quinn::RecvStream);

impl RecvWire for WebRecv {
    fn read_into<'a>(
        &'a mut self,
        reader: &'a mut FrameReader,
    ) -> WireFuture<'a, Result<Option<usize>, String>> {
        // Cancel-safe: quinn's `read_chunk` underneath is.
        Box::pin(async move {
            match self.0.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => {
                    reader.push(&chunk.bytes);
                    Ok(Some(chunk.bytes.len()))
                }
                Ok(None) => Ok(None),
                Err(web_transport_quinn::ReadError::SessionError(
                    web_transport_quinn::SessionError::ConnectionError(c),
                )) => Err(read_error(quinn::ReadError::ConnectionLost(c))),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
