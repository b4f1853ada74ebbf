//! What a [`Session`](super::Session) needs of its transport: one bidirectional byte stream
//! and a way to close the connection. Natively the stream is a QUIC stream (rekord's ALPN)
//! or a WebTransport stream (`h3`, the browsers' transport, served on the same port); in a
//! browser it is a WebTransport stream of the page. Frames, requests, pushes and timeouts
//! are the session's business, the same over every transport.

use std::future::Future;
use std::pin::Pin;

use crate::proto::FrameReader;

/// A boxed future of a transport (`Send` natively, where sessions may move between
/// threads).
#[cfg(not(target_arch = "wasm32"))]
pub type WireFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed future of a transport (`Send` natively, where sessions may move between
/// threads).
#[cfg(target_arch = "wasm32")]
pub type WireFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// `Send` natively; nothing in a browser (whose JavaScript objects stay on their thread).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send> MaybeSend for T {}
/// `Send` natively; nothing in a browser (whose JavaScript objects stay on their thread).
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSend for T {}

/// The sending half of a session's stream.
pub trait SendWire: MaybeSend + std::fmt::Debug {
    /// Writes all of `bytes` (waiting for flow control); an error says why the stream is
    /// gone, with the peer's close reason when it closed.
    fn write_all<'a>(&'a mut self, bytes: &'a [u8]) -> WireFuture<'a, Result<(), String>>;
    /// Ends the stream; what was written still arrives.
    fn finish(&mut self);
}

/// The receiving half of a session's stream.
pub trait RecvWire: MaybeSend + std::fmt::Debug {
    /// Reads the next bytes that arrived into `reader`: how many (`None` at the end of the
    /// stream). Must be cancel-safe: a read dropped before it completes loses no byte (the
    /// session polls it once to look for pushes that arrived already).
    fn read_into<'a>(
        &'a mut self,
        reader: &'a mut FrameReader,
    ) -> WireFuture<'a, Result<Option<usize>, String>>;
}

/// The connection a session's stream belongs to.
pub trait ConnWire: MaybeSend + std::fmt::Debug {
    /// Closes the connection with an application `code` (`CLOSE_*`) and reason.
    fn close(&self, code: u32, reason: &[u8]);
    /// Waits until the close reached the peer (the caller bounds the wait).
    fn closed(&self) -> WireFuture<'_, ()>;
    /// The server's address as text, for messages.
    fn remote(&self) -> String;
}
