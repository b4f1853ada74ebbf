//! The transports a session runs over: a native QUIC connection (rekord's ALPN), a
//! WebTransport session (`h3`, see [`crate::web`]), and an in-process byte stream
//! ([`crate::LocalConnector`]: deterministic tests). All carry the protocol's frames on one
//! bidirectional stream; everything above this module is the same for all.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, ReadHalf, WriteHalf};

/// The connection of a session.
pub(crate) enum Peer {
    /// A native client.
    Quic(quinn::Connection),
    /// A browser (or any WebTransport client); boxed, as it is much larger than the others.
    Web(Box<web_transport_quinn::Session>),
    /// A client in this process ([`crate::LocalConnector`]); its stream, until accepted.
    Local(std::sync::Mutex<Option<DuplexStream>>),
}

/// The sending half of a session's stream.
pub(crate) enum SendHalf {
    Quic(quinn::SendStream),
    Web(web_transport_quinn::SendStream),
    Local(WriteHalf<DuplexStream>),
}

/// The receiving half of a session's stream.
pub(crate) enum RecvHalf {
    Quic(quinn::RecvStream),
    Web(web_transport_quinn::RecvStream),
    Local(ReadHalf<DuplexStream>),
}

impl Peer {
    /// The client's address.
    pub(crate) fn remote_address(&self) -> SocketAddr {
        match self {
            Peer::Quic(c) => c.remote_address(),
            Peer::Web(s) => s.remote_address(),
            Peer::Local(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// What the transport is called in logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Peer::Quic(_) => "quic",
            Peer::Web(_) => "webtransport",
            Peer::Local(_) => "local",
        }
    }

    /// Waits for the client's stream.
    pub(crate) async fn accept_bi(&self) -> Result<(SendHalf, RecvHalf), String> {
        match self {
            Peer::Quic(c) => c
                .accept_bi()
                .await
                .map(|(s, r)| (SendHalf::Quic(s), RecvHalf::Quic(r)))
                .map_err(|e| e.to_string()),
            Peer::Web(s) => s
                .accept_bi()
                .await
                .map(|(s, r)| (SendHalf::Web(s), RecvHalf::Web(r)))
                .map_err(|e| e.to_string()),
            Peer::Local(stream) => {
                let taken = match stream.lock() {
                    Ok(mut g) => g.take(),
                    Err(poisoned) => poisoned.into_inner().take(),
                };
                let stream = taken.ok_or_else(|| "the local stream was taken".to_owned())?;
                let (r, w) = tokio::io::split(stream);
                Ok((SendHalf::Local(w), RecvHalf::Local(r)))
            }
        }
    }

    /// Closes the connection with an application code and reason.
    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Peer::Quic(c) => c.close(code.into(), reason),
            Peer::Web(s) => s.close(code, reason),
            // The client sees the stream end when the session drops its halves.
            Peer::Local(_) => {}
        }
    }
}

impl SendHalf {
    /// Writes all of `bytes`; an error says why the stream is gone.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), String> {
        match self {
            SendHalf::Quic(s) => s.write_all(bytes).await.map_err(|e| e.to_string()),
            SendHalf::Web(s) => s.write_all(bytes).await.map_err(|e| e.to_string()),
            SendHalf::Local(s) => s.write_all(bytes).await.map_err(|e| e.to_string()),
        }
    }

    /// Ends the stream (what was written still arrives).
    pub(crate) fn finish(&mut self) {
        let _ = match self {
            SendHalf::Quic(s) => s.finish().is_ok(),
            SendHalf::Web(s) => s.finish().is_ok(),
            // Ended when dropped (a shutdown would have to be awaited).
            SendHalf::Local(_) => true,
        };
    }

    /// Waits until the client has read the stream to its end or stopped it.
    pub(crate) async fn stopped(&mut self) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.stopped().await;
            }
            SendHalf::Web(s) => {
                let _ = s.stopped().await;
            }
            SendHalf::Local(s) => {
                let _ = s.flush().await;
            }
        }
    }
}

impl RecvHalf {
    /// The next chunk of at most `max` bytes; `None` at the end of the stream.
    pub(crate) async fn read_chunk(&mut self, max: usize) -> Result<Option<bytes::Bytes>, String> {
        match self {
            RecvHalf::Quic(r) => r
                .read_chunk(max, true)
                .await
                .map(|c| c.map(|c| c.bytes))
                .map_err(|e| e.to_string()),
            RecvHalf::Web(r) => r
                .read_chunk(max, true)
                .await
                .map(|c| c.map(|c| c.bytes))
                .map_err(|e| e.to_string()),
            // Cancel-safe: `read` loses nothing when dropped before it completes.
            RecvHalf::Local(r) => {
                let mut buf = vec![0u8; max.min(64 * 1024)];
                match r.read(&mut buf).await {
                    Ok(0) => Ok(None),
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(Some(bytes::Bytes::from(buf)))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}
