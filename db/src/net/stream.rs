//! The session over any in-process byte stream (native): a server's
//! `rekord_server::LocalConnector`, or a pipe a test controls. With
//! [`SyncConfig::connector`](crate::SyncConfig::connector) and
//! [`Db::open_synced_driven`](crate::Db::open_synced_driven) whole replicas run against a
//! server with no socket and no thread of their own: on one executor, with a clock the test
//! controls (tokio's paused time).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::wire::{ConnWire, RecvWire, SendWire, WireFuture};
use super::{NetError, Pin, Proved, Session, Wire};
use crate::proto::FrameReader;
use crate::proto::handshake::ClientConfig;

/// A byte stream a session can run over.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// Opens byte streams to a server (see [`SyncConfig::connector`](crate::SyncConfig::connector)).
pub trait Connect: Send + Sync {
    /// A new stream to the server, or why there is none now (the sync client retries).
    fn connect(&self) -> WireFuture<'static, Result<Box<dyn ByteStream>, NetError>>;
}

/// A shared [`Connect`].
pub type Connector = Arc<dyn Connect>;

/// Runs the handshake over `stream` (no TLS: the stream is trusted as the server's), bounded
/// by `timeout` like every request of the session.
pub async fn connect_stream(
    stream: Box<dyn ByteStream>,
    cfg: &ClientConfig,
    pin: Option<&Pin>,
    timeout: std::time::Duration,
) -> Result<Session, NetError> {
    let mut cfg = cfg.clone();
    if let Some(pin) = pin {
        cfg.pinned = Some(pin.server);
    }
    Session::start_on(stream_wire(stream, pin), &cfg, timeout).await
}

/// `stream` as a session's [`Wire`]: trusted as the server's (what `pin` says of its
/// certificate is what the session keeps).
pub(super) fn stream_wire(stream: Box<dyn ByteStream>, pin: Option<&Pin>) -> Wire {
    let (read, write) = tokio::io::split(stream);
    Wire {
        conn: Box::new(StreamConn),
        send: Box::new(StreamSend(write)),
        recv: Box::new(StreamRecv(read)),
        proved: Proved::trusted(pin),
    }
}

#[derive(Debug)]
struct StreamConn;

impl ConnWire for StreamConn {
    // The stream ends when the session drops its halves.
    fn close(&self, _code: u32, _reason: &[u8]) {}

    fn closed(&self) -> WireFuture<'_, ()> {
        Box::pin(async {})
    }

    fn remote(&self) -> String {
        "an in-process stream".into()
    }
}

struct StreamSend(tokio::io::WriteHalf<Box<dyn ByteStream>>);

impl std::fmt::Debug for StreamSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamSend")
    }
}

impl SendWire for StreamSend {
    fn write_all<'a>(&'a mut self, bytes: &'a [u8]) -> WireFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0.write_all(bytes).await.map_err(|e| e.to_string())?;
            self.0.flush().await.map_err(|e| e.to_string())
        })
    }

    fn finish(&mut self) {}
}

struct StreamRecv(tokio::io::ReadHalf<Box<dyn ByteStream>>);

impl std::fmt::Debug for StreamRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamRecv")
    }
}

impl RecvWire for StreamRecv {
    fn read_into<'a>(
        &'a mut self,
        reader: &'a mut FrameReader,
    ) -> WireFuture<'a, Result<Option<usize>, String>> {
        // Cancel-safe: `read` loses nothing when dropped before it completes.
        Box::pin(async move {
            let mut buf = [0u8; 16 * 1024];
            match self.0.read(&mut buf).await {
                Ok(0) => Ok(None),
                Ok(n) => {
                    reader.push(&buf[..n]);
                    Ok(Some(n))
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
