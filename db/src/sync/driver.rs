//! The driver of a synced database's [`Engine`]: the transport and the clock around the
//! sans-IO sync client. One loop serves both targets: natively it runs on the database's
//! sync thread (a current-thread tokio runtime, QUIC through quinn, tokio's timers); in a
//! browser it is a task of the page (the page's WebTransport, `setTimeout`).
//!
//! Each turn gives the engine the time, does what it asks (open a connection with
//! [`crate::net::open`], send, close) and waits for the first of: a connection opened or
//! failed, bytes from the server or the end of its stream, the engine's next deadline, or
//! its waker (the application wrote, a borrow waits). Each connection's stream is read and
//! written by tasks of its own, so a slow write never holds the engine back; its reader
//! pauses while the engine holds as much as it takes of what the client has not read (see
//! [`Engine::wants_bytes`]), and the transport's flow control holds the server back. No
//! event is dropped: every channel here waits for room or is unbounded and drained each
//! turn.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use crate::net::{self, CLOSE_NORMAL, ConnWire, Dial, NetError, RecvWire, SendWire, Wire};
use crate::proto::FrameReader;
use crate::rt::Instant;
use crate::sync::engine::{Engine, Output};

/// How long the driver waits, once the client stopped, for its connections' closes to
/// reach the server.
const CLOSING: Duration = Duration::from_millis(250);

/// How long a connection's writer waits for its close to reach the server.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Chunks a connection's reader may have read ahead of the loop.
const READ_AHEAD: usize = 4;

/// The loop's wait for the engine's next deadline.
type Timer = Pin<Box<dyn Future<Output = ()>>>;

/// What the connection tasks tell the loop.
enum Event {
    /// A connection asked for is open, or could not be opened.
    Dialed(u64, Result<Wire, NetError>),
    /// Bytes from the server.
    Bytes(u64, Vec<u8>),
    /// The stream ended: cleanly (`None`), or with this error.
    Ended(u64, Option<String>),
}

/// The loop's handles on the open connection's writer: bytes to write, and the close,
/// which goes first (as closing a QUIC connection drops what it had not sent).
struct Open {
    conn: u64,
    writes: async_channel::Sender<Vec<u8>>,
    close: async_channel::Sender<(u32, Vec<u8>)>,
}

impl Open {
    fn close(self, code: u32, reason: &[u8]) {
        // Room for one: the first close is the one that counts.
        let _ = self.close.try_send((code, reason.to_vec()));
    }
}

/// Opens the connections of [`DialTarget::Stream`](crate::net::DialTarget::Stream) natively.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type Streams = Option<crate::net::Connector>;
/// Nothing in a browser (it has no in-process streams).
#[cfg(target_arch = "wasm32")]
pub(crate) type Streams = NoStreams;

/// A browser has no in-process streams to open.
#[cfg(target_arch = "wasm32")]
#[derive(Clone)]
pub(crate) struct NoStreams;

/// Runs `engine` until its client stops (the database closed), then waits (bounded) for the
/// last connection's close to reach the server.
pub(crate) async fn run(mut engine: Engine, streams: Streams) {
    let (events, inbox) = async_channel::unbounded::<Event>();
    let (reads, read) = async_channel::bounded::<Event>(READ_AHEAD);
    // Every writer holds a sender: the channel closes when the last one finished closing.
    let (done, writers) = async_channel::bounded::<()>(1);
    let mut open: Option<Open> = None;
    let mut timer: Option<(Instant, Timer)> = None;
    loop {
        engine.handle_timeout(crate::rt::now());
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Connect { conn, dial } => {
                    if let Some(before) = open.take() {
                        before.close(CLOSE_NORMAL, b"replaced");
                    }
                    spawn(dial_task(conn, dial, streams.clone(), events.clone()));
                }
                Output::Transmit { conn, bytes } => send(&open, conn, bytes),
                Output::Send { conn, frame } => match crate::proto::encode(&frame) {
                    Ok(bytes) => send(&open, conn, bytes),
                    Err(e) => engine.handle_failed(
                        conn,
                        NetError::Closed(format!("a frame of the client cannot be sent: {e}")),
                    ),
                },
                Output::Close { conn, code, reason } => {
                    if let Some(done) = open.take_if(|o| o.conn == conn) {
                        done.close(code, &reason);
                    }
                }
            }
        }
        if !engine.is_running() {
            break;
        }
        let deadline = engine.poll_timeout();
        if timer.as_ref().map(|(at, _)| *at) != deadline {
            timer = deadline.map(|at| {
                let sleep = crate::rt::sleep(at.saturating_duration_since(crate::rt::now()));
                (at, Box::pin(sleep) as Timer)
            });
        }
        let room = engine.wants_bytes();
        let event = {
            // Cancel-safe: a receive dropped before it completed took nothing.
            let mut next = std::pin::pin!(inbox.recv());
            let mut bytes = std::pin::pin!(read.recv());
            std::future::poll_fn(|cx| {
                engine.set_waker(cx.waker());
                if engine.wants_to_run() {
                    return Poll::Ready(None);
                }
                if let Poll::Ready(Ok(event)) = next.as_mut().poll(cx) {
                    return Poll::Ready(Some(event));
                }
                if room && let Poll::Ready(Ok(event)) = bytes.as_mut().poll(cx) {
                    return Poll::Ready(Some(event));
                }
                if let Some((_, sleep)) = timer.as_mut()
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    timer = None;
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        // The client reads the clock as it handles what came: the time moves first, and the
        // client runs once with both (an answer that came wins over a timeout due meanwhile).
        let now = crate::rt::now();
        if event.is_some() {
            engine.set_time(now);
        }
        match event {
            None => engine.handle_timeout(now),
            Some(Event::Dialed(conn, Ok(wire))) => {
                let Wire {
                    conn: connection,
                    send,
                    recv,
                    proved,
                } = wire;
                if engine.handle_connected(conn, proved) {
                    let (writer, writes) = async_channel::unbounded();
                    let (close, closing) = async_channel::bounded(1);
                    // Dropped by the writer once it closed the connection: the reader stops
                    // then (an in-process stream ends only when both halves are gone).
                    let (stop, stopped) = async_channel::bounded::<()>(1);
                    spawn(write_task(
                        conn,
                        connection,
                        send,
                        Writes {
                            writes,
                            closing,
                            reads: reads.clone(),
                            _stop: stop,
                            _done: done.clone(),
                        },
                    ));
                    spawn(read_task(conn, recv, reads.clone(), stopped));
                    open = Some(Open {
                        conn,
                        writes: writer,
                        close,
                    });
                } else {
                    connection.close(CLOSE_NORMAL, b"not wanted");
                }
            }
            Some(Event::Dialed(conn, Err(e))) => engine.handle_failed(conn, e),
            Some(Event::Bytes(conn, bytes)) => engine.handle_bytes(conn, bytes),
            Some(Event::Ended(conn, None)) => engine.handle_closed(conn),
            Some(Event::Ended(conn, Some(e))) => engine.handle_failed(conn, NetError::Closed(e)),
        }
    }
    // The client stopped: the writers close their connections, and the server hears so.
    drop(open);
    drop(done);
    let _ = crate::rt::timeout(CLOSING, writers.recv()).await;
}

/// Hands `bytes` to the writer of connection `conn` if it is the open one.
fn send(open: &Option<Open>, conn: u64, bytes: Vec<u8>) {
    if let Some(o) = open
        && o.conn == conn
    {
        // Unbounded (each write of the client is a request whose answer it waits for):
        // fails only once the writer ended, and then its stream is gone.
        let _ = o.writes.try_send(bytes);
    }
}

async fn dial_task(conn: u64, dial: Dial, streams: Streams, events: async_channel::Sender<Event>) {
    #[cfg(not(target_arch = "wasm32"))]
    let result = net::open_with(&dial, streams.as_ref()).await;
    #[cfg(target_arch = "wasm32")]
    let result = {
        let NoStreams = streams;
        net::open(&dial).await
    };
    // The loop ended: the connection drops, and closes.
    let _ = events.send(Event::Dialed(conn, result)).await;
}

async fn read_task(
    conn: u64,
    mut recv: Box<dyn RecvWire>,
    reads: async_channel::Sender<Event>,
    stopped: async_channel::Receiver<()>,
) {
    let mut buffer = FrameReader::new();
    loop {
        // Cancel-safe: a read dropped when the writer closed the connection lost nothing
        // anyone still wants.
        let read = match crate::rt::first(recv.read_into(&mut buffer), stopped.recv()).await {
            crate::rt::Either::Left(read) => read,
            crate::rt::Either::Right(_) => return,
        };
        let event = match read {
            Ok(Some(_)) => Event::Bytes(conn, buffer.take_bytes()),
            Ok(None) => Event::Ended(conn, None),
            Err(e) => Event::Ended(conn, Some(e)),
        };
        let last = !matches!(event, Event::Bytes(..));
        if reads.send(event).await.is_err() || last {
            return;
        }
    }
}

/// A writer's channels.
struct Writes {
    writes: async_channel::Receiver<Vec<u8>>,
    closing: async_channel::Receiver<(u32, Vec<u8>)>,
    /// Where a failed write is reported: behind what the reader read before.
    reads: async_channel::Sender<Event>,
    /// Dropped once the connection is closed: the reader stops.
    _stop: async_channel::Sender<()>,
    /// Dropped once the close reached the server, or its wait ended.
    _done: async_channel::Sender<()>,
}

async fn write_task(
    conn: u64,
    connection: Box<dyn ConnWire>,
    mut send: Box<dyn SendWire>,
    channels: Writes,
) {
    use crate::rt::Either::{Left, Right};
    let Writes {
        writes,
        closing,
        reads,
        _stop,
        _done,
    } = channels;
    let bye = || (CLOSE_NORMAL, b"bye".to_vec());
    // The close goes first, also over a write that waits for the server to read.
    let (code, reason) = loop {
        let bytes = match crate::rt::first(closing.recv(), writes.recv()).await {
            Left(close) => break close.unwrap_or_else(|_| bye()),
            Right(Ok(bytes)) => bytes,
            // The loop ended (the client stopped).
            Right(Err(_)) => break bye(),
        };
        match crate::rt::first(closing.recv(), send.write_all(&bytes)).await {
            Left(close) => break close.unwrap_or_else(|_| bye()),
            Right(Ok(())) => {}
            Right(Err(e)) => {
                let _ = reads.send(Event::Ended(conn, Some(e))).await;
                break (CLOSE_NORMAL, Vec::new());
            }
        }
    };
    send.finish();
    connection.close(code, &reason);
    drop(_stop);
    let _ = crate::rt::timeout(CLOSE_WAIT, connection.closed()).await;
}

/// Runs `task` beside the loop (on the sync thread's runtime; in a browser, the page's).
#[cfg(not(target_arch = "wasm32"))]
fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    drop(tokio::spawn(task));
}

/// Runs `task` beside the loop (on the sync thread's runtime; in a browser, the page's).
#[cfg(target_arch = "wasm32")]
fn spawn(task: impl Future<Output = ()> + 'static) {
    wasm_bindgen_futures::spawn_local(task);
}
