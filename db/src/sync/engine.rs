//! The sync client with no I/O of its own: an [`Engine`] takes the frames the server sent,
//! the time, and the application's writes (through its [`Db`]), and gives back the frames
//! to send, the connections to open or close, and when it wants to run again. It never
//! waits on a socket or a timer, and runs only inside its calls, on the caller's thread: a
//! driver owns the transport and the clock (a test: a simulated server and time; see
//! `db/tests/engine.rs`), the way `quinn-proto` serves `quinn`.
//!
//! Inside, it is the same client every replica runs (the protocol's procedures are written
//! as async code, see ARCHITECTURE.md): it runs on the engine's own clock ([`crate::rt`]
//! reads it while the engine runs the client), and its session talks over an in-memory
//! stream whose far end the engine turns into frames.
//!
//! ```no_run
//! # fn main() -> rekord::Result<()> {
//! use std::time::{Duration, Instant};
//! use rekord::sync::engine::{Engine, Output};
//! use rekord::SyncConfig;
//!
//! let config = SyncConfig::new("127.0.0.1:4433".parse().unwrap(), "app", "token");
//! let mut now = Instant::now();
//! let mut engine = Engine::open("replica.rekord", config, now)?;
//! loop {
//!     while let Some(out) = engine.poll_output() {
//!         match out {
//!             Output::Connect { conn } => { /* open a transport for `conn` */ }
//!             Output::Send { conn, frame } => { /* send `frame` on `conn` */ }
//!             Output::Close { conn } => { /* close `conn` */ }
//!         }
//!     }
//!     // ... hand what arrived to `engine.handle_frame`, and at
//!     // `engine.poll_timeout()` call `engine.handle_timeout`:
//!     now += Duration::from_millis(10);
//!     engine.handle_timeout(now);
//!     # break;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use crate::net::{ByteStream, Connect, NetError, WireFuture};
use crate::proto::{Frame, FrameReader};
use crate::rt::Instant;
use crate::rt::virt::{self, Clock};
use crate::sync::SyncConfig;
use crate::sync::client::SyncDriver;
use crate::{Db, Error, Result};

/// How many bytes each direction of a connection holds before the writer waits.
const PIPE: usize = 1 << 20;

/// How many times one call runs the client at most before it returns (the client yields
/// only when it waits on something; this bounds a call should it keep waking itself).
const MAX_ROUNDS: usize = 10_000;

/// What an [`Engine`] asks of its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a connection to the server, numbered `conn` (a new one replaces the one
    /// before, which the engine closed). If it cannot be opened, say so with
    /// [`Engine::handle_closed`].
    Connect {
        /// The connection's number.
        conn: u64,
    },
    /// Send `frame` to the server on connection `conn`.
    Send {
        /// The connection's number.
        conn: u64,
        /// What to send.
        frame: Frame,
    },
    /// Close connection `conn`: the client is done with it.
    Close {
        /// The connection's number.
        conn: u64,
    },
}

/// A synced database whose sync client runs only when its driver calls (see the module).
pub struct Engine {
    db: Option<Db>,
    link: Option<Arc<crate::sync::client::Link>>,
    driver: Option<SyncDriver>,
    clock: Arc<Clock>,
    net: Arc<Net>,
    woken: Arc<Woken>,
    outputs: VecDeque<Output>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("running", &self.driver.is_some())
            .field("now", &self.clock.now())
            .field("outputs", &self.outputs.len())
            .finish()
    }
}

impl Engine {
    /// Opens (or creates) the synced database at `path` with `config` (its server address
    /// and transport are not used: the driver connects), at time `now`; runs the client up
    /// to its first wait.
    pub fn open(path: impl AsRef<Path>, config: SyncConfig, now: Instant) -> Result<Engine> {
        let net = Arc::new(Net::default());
        let config = config.connector(net.clone());
        let clock = Clock::new(now);
        // The client's first steps (its start reads the database) run on the engine's clock.
        let (db, driver) = virt::with(&clock, || Db::open_synced_driven(path, config))?;
        // Polled without tokio's cooperative budget: a driver on a tokio task would otherwise
        // see the in-memory stream pause, as if the client had nothing to say.
        let driver: SyncDriver = Box::pin(tokio::task::unconstrained(driver));
        let link = db.inner.link.get().cloned();
        let mut engine = Engine {
            db: Some(db),
            link,
            driver: Some(driver),
            clock,
            net,
            woken: Arc::new(Woken(AtomicBool::new(true), Mutex::new(None))),
            outputs: VecDeque::new(),
        };
        engine.run();
        Ok(engine)
    }

    /// The database: write and read through it as through any synced one (a borrow's or a
    /// wait's future completes as the engine runs; nothing in it blocks on the client).
    pub fn db(&self) -> Result<&Db> {
        self.db.as_ref().ok_or_else(closed)
    }

    /// The engine's clock: the latest time its driver gave it.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// When the engine wants to run again if nothing arrives before: the earliest of the
    /// client's timers (a request's timeout, a retry's back-off, a keep-alive), `None` when
    /// it waits on nothing but input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.clock.next_deadline()
    }

    /// The next thing the driver should do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.run();
        self.outputs.pop_front()
    }

    /// Whether the client has work it has not run yet (the application wrote since the
    /// last call, or an input woke it): call [`Engine::poll_output`].
    pub fn wants_to_run(&self) -> bool {
        self.woken.0.load(Ordering::Acquire) || !self.outputs.is_empty() || self.net.has_output()
    }

    /// `waker` is woken whenever the client has work to run that did not come through a
    /// call of the driver (the application wrote, or a borrow waits): a driver that
    /// sleeps until [`Engine::poll_timeout`] or input wakes for it then.
    pub fn set_waker(&mut self, waker: Waker) {
        *self.woken.1.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }

    /// Time passed: the clock moves to `now` (never back) and the client runs what became
    /// due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock.advance(now);
        self.run();
    }

    /// The server sent `frame` on connection `conn` (ignored if the client is done with
    /// that connection).
    pub fn handle_frame(&mut self, conn: u64, frame: &Frame) -> Result<()> {
        let bytes = match crate::proto::encode(frame) {
            Ok(bytes) => bytes,
            Err(e) => {
                // The connection cannot carry on without it (the client would miss what it
                // says): it ends, and the client connects again from where it stands.
                if self.net.end(conn) {
                    self.outputs.push_back(Output::Close { conn });
                }
                self.run();
                return Err(Error::Offline {
                    what: "handing a frame to the sync engine",
                    reason: format!("{e}; the connection was closed"),
                });
            }
        };
        self.net.deliver(conn, bytes);
        self.run();
        Ok(())
    }

    /// Connection `conn` closed, or could not be opened: the client sees its stream end
    /// (and connects again after its back-off).
    pub fn handle_closed(&mut self, conn: u64) {
        self.net.close(conn);
        self.run();
    }

    /// Closes the database the way a process exits: the client stops, makes what the
    /// server acknowledged durable, and closes its connection (the outputs returned, the
    /// last of them). Handles of the database the application still holds (a `Tree`) see
    /// a database without sync from then on.
    pub fn close(mut self) -> Vec<Output> {
        self.stop();
        self.outputs.drain(..).collect()
    }

    /// Stops the client (see [`Engine::close`]).
    fn stop(&mut self) {
        if let Some(link) = &self.link {
            link.stop();
        }
        for _ in 0..MAX_ROUNDS {
            if self.driver.is_none() {
                break;
            }
            self.woken.0.store(true, Ordering::Release);
            self.run();
        }
        self.driver = None;
        self.pump();
        self.db = None;
    }

    /// Runs the client until it waits, then collects what it wrote to its connection.
    fn run(&mut self) {
        for _ in 0..MAX_ROUNDS {
            self.pump();
            let woken = self.woken.0.swap(false, Ordering::AcqRel);
            if !woken {
                break;
            }
            let Some(driver) = self.driver.as_mut() else {
                break;
            };
            let waker = Waker::from(self.woken.clone());
            let mut cx = Context::from_waker(&waker);
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                virt::with(&self.clock, || driver.as_mut().poll(&mut cx))
            }));
            match polled {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(())) => self.driver = None,
                Err(_) => {
                    // A bug in the client: it is gone (a panicked future cannot be polled
                    // again), and the database says so instead of the engine panicking on.
                    self.driver = None;
                    if let Some(link) = &self.link {
                        link.update(|st| {
                            st.online = false;
                            st.caught_up = false;
                            st.last_error = Some(
                                "the sync client stopped on an internal error (a panic);                                  open the database again"
                                    .into(),
                            );
                        });
                    }
                }
            }
            // What it wrote may have made room (or the client finished): look again.
            self.pump();
        }
    }

    /// Moves frames between the client's stream and the driver: connects, sends, closes.
    /// Frames of a connection that ended before the driver took them are dropped (a
    /// driver that polls seldom does not pile up dead connections' frames).
    fn pump(&mut self) {
        let woke = self.net.pump(&mut self.outputs);
        if woke {
            self.woken.0.store(true, Ordering::Release);
        }
        let open = self.net.open_conn();
        // A connection opened and closed before the driver heard of it: neither is said.
        let unseen: std::collections::HashSet<u64> = self
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::Connect { conn } => Some(*conn),
                _ => None,
            })
            .filter(|c| {
                self.outputs
                    .iter()
                    .any(|o| matches!(o, Output::Close { conn } if conn == c))
            })
            .collect();
        self.outputs.retain(|o| match o {
            Output::Send { conn, .. } => Some(*conn) == open,
            Output::Connect { conn } | Output::Close { conn } => !unseen.contains(conn),
        });
    }
}

impl Drop for Engine {
    /// As [`Engine::close`]: the client stops (queued borrows are answered, handles the
    /// application still holds say offline).
    fn drop(&mut self) {
        if self.driver.is_some() {
            self.stop();
        }
    }
}

fn closed() -> Error {
    Error::Offline {
        what: "using a sync engine",
        reason: "it was closed".into(),
    }
}

/// Set when the client must run (its waker); wakes the driver's waker too.
struct Woken(AtomicBool, Mutex<Option<Waker>>);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
        let driver = self
            .1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(waker) = driver {
            waker.wake();
        }
    }
}

/// The engine's side of the client's connections.
#[derive(Default)]
struct Net {
    state: Mutex<NetState>,
}

#[derive(Default)]
struct NetState {
    /// The number of the latest connection.
    conn: u64,
    /// The engine's end of the latest connection, while open.
    pipe: Option<DuplexStream>,
    /// Frames the client wrote, as they arrive.
    reader: FrameReader,
    /// Bytes from the driver not yet in the pipe.
    inbound: VecDeque<u8>,
    /// Connections opened and closed that the driver has not heard of, in order.
    events: VecDeque<Output>,
}

impl NetState {
    /// The latest connection is over: the driver hears so.
    fn end(&mut self) {
        if self.pipe.take().is_some() {
            self.events.push_back(Output::Close { conn: self.conn });
        }
        self.inbound.clear();
        self.reader = FrameReader::new();
    }
}

impl Net {
    fn state(&self) -> std::sync::MutexGuard<'_, NetState> {
        // Every field stays whole if a holder panicked (each change is one step).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn has_output(&self) -> bool {
        !self.state().events.is_empty()
    }

    fn deliver(&self, conn: u64, bytes: Vec<u8>) {
        let mut s = self.state();
        if s.conn == conn && s.pipe.is_some() {
            s.inbound.extend(bytes);
        }
    }

    /// The number of the connection open now, if one is.
    fn open_conn(&self) -> Option<u64> {
        let s = self.state();
        s.pipe.is_some().then_some(s.conn)
    }

    /// Ends connection `conn` from the engine's side; whether it was open.
    fn end(&self, conn: u64) -> bool {
        let mut s = self.state();
        if s.conn != conn || s.pipe.is_none() {
            return false;
        }
        s.pipe = None;
        s.inbound.clear();
        s.reader = FrameReader::new();
        true
    }

    /// The driver closed connection `conn` (no need to tell it).
    fn close(&self, conn: u64) {
        self.end(conn);
    }

    /// Moves bytes both ways without waiting; whether any reached the client or left it.
    fn pump(&self, outputs: &mut VecDeque<Output>) -> bool {
        let mut s = self.state();
        // What the client wrote first (it may be gone, its last frames still in the pipe).
        let mut moved = s.read_client();
        let mut cx = Context::from_waker(Waker::noop());
        let mut ended = false;
        let NetState { pipe, inbound, .. } = &mut *s;
        if let Some(pipe) = pipe.as_mut() {
            while !inbound.is_empty() {
                let (front, _) = inbound.as_slices();
                match unbudgeted(&mut cx, |cx| Pin::new(&mut *pipe).poll_write(cx, front)) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        inbound.drain(..n);
                        moved = true;
                    }
                    Poll::Ready(_) => {
                        ended = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if ended {
            s.end();
        }
        outputs.extend(s.events.drain(..));
        moved
    }
}

impl NetState {
    /// Reads what the client wrote to the latest connection and queues its frames; ends
    /// the connection when the client did (or wrote what is not a frame). Whether any
    /// bytes came.
    fn read_client(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut moved = false;
        let mut ended = false;
        let conn = self.conn;
        let NetState {
            pipe,
            reader,
            events,
            ..
        } = self;
        let Some(pipe) = pipe.as_mut() else {
            return false;
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            let mut read = ReadBuf::new(&mut buf);
            match unbudgeted(&mut cx, |cx| Pin::new(&mut *pipe).poll_read(cx, &mut read)) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                    reader.push(read.filled());
                    moved = true;
                }
                Poll::Ready(_) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => events.push_back(Output::Send { conn, frame }),
                Ok(None) => break,
                Err(e) => {
                    // The client wrote what it cannot have meant: end the connection.
                    tracing::warn!(error = %e, "rekord sync engine: a frame of the client");
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            self.end();
        }
        moved
    }
}

/// Polls `f` once outside tokio's cooperative budget (which would make the in-memory
/// stream look empty or full to a caller on a tokio task that spent it).
fn unbudgeted<T>(cx: &mut Context<'_>, f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let mut fut = std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(f)));
    fut.as_mut().poll(cx)
}

impl Connect for Net {
    fn connect(&self) -> WireFuture<'static, std::result::Result<Box<dyn ByteStream>, NetError>> {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let mut s = self.state();
        // The last frames of the connection before go out before it closes.
        s.read_client();
        s.end();
        s.conn += 1;
        let conn = s.conn;
        s.events.push_back(Output::Connect { conn });
        s.pipe = Some(ours);
        Box::pin(async move { Ok(Box::new(theirs) as Box<dyn ByteStream>) })
    }
}
