//! The sync client with no I/O of its own: an [`Engine`] takes the frames the server sent,
//! the time, and the application's writes (through its [`Db`]), and gives back the frames
//! to send, the connections to open or close, and when it wants to run again. It never
//! waits on a socket or a timer, and runs only inside its calls, on the caller's thread: a
//! driver owns the transport and the clock (a test: a simulated server and time; see
//! `db/tests/engine.rs`), the way `quinn-proto` serves `quinn`.
//!
//! Inside, it is the same client every replica runs (the protocol's procedures are written
//! as async code, see ARCHITECTURE.md): it runs on the engine's own clock ([`crate::rt`]
//! reads it while the engine runs the client), and its session's stream is the engine's:
//! what the client writes comes out as [`Output::Send`] (or [`Output::Transmit`]), what the
//! driver hands in is what it reads. Connecting is the driver's: [`Output::Connect`] says
//! where and what to check ([`Dial`]); [`crate::net::open`] opens such a connection, and
//! the driver reports what it proved ([`Engine::handle_connected`]).
//!
//! Every synced database runs its client through an engine: natively on its sync thread
//! (QUIC through quinn, tokio's clock), in a browser as a task of the page (the page's
//! WebTransport, its timers); see [`crate::sync::driver`].
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
//!             Output::Connect { conn, dial } => {
//!                 /* open a connection for `dial` (`rekord::net::open`), then
//!                 `engine.handle_connected(conn, wire.proved)` */
//!             }
//!             Output::Send { conn, frame } => { /* send `frame` on `conn` */ }
//!             Output::Transmit { conn, bytes } => { /* send `bytes` on `conn` */ }
//!             Output::Close { conn, code, reason } => { /* close `conn` */ }
//!         }
//!     }
//!     // ... hand what arrived to `engine.handle_frame` (or `handle_bytes`), and at
//!     // `engine.poll_timeout()` call `engine.handle_timeout`:
//!     now += Duration::from_millis(10);
//!     engine.handle_timeout(now);
//!     # break;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use crate::net::{
    CLOSE_NORMAL, CLOSE_PROTOCOL, ConnWire, Dial, NetError, Proved, RecvWire, SendWire, Wire,
    WireFuture,
};
use crate::proto::{Frame, FrameReader};
use crate::rt::Instant;
use crate::rt::virt::{self, Clock};
use crate::sync::client::{Link, SyncDriver};
use crate::{Db, Error, Result};

/// How many bytes the engine holds for the client before [`Engine::wants_bytes`] says no.
const ROOM: usize = 1 << 20;

/// How many times one call runs the client at most before it returns (the client yields
/// only when it waits on something; this bounds a call should it keep waking itself).
const MAX_ROUNDS: usize = 10_000;

/// What an [`Engine`] asks of its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a connection for `dial`, numbered `conn` (a new one replaces the one before,
    /// which the engine closed). Say what became of it: [`Engine::handle_connected`] with
    /// what the transport proved, or [`Engine::handle_failed`].
    Connect {
        /// The connection's number.
        conn: u64,
        /// Where, and what to check ([`crate::net::open`] does both).
        dial: Dial,
    },
    /// Send `frame` to the server on connection `conn` (an engine made by
    /// [`Engine::open`]).
    Send {
        /// The connection's number.
        conn: u64,
        /// What to send.
        frame: Frame,
    },
    /// Send `bytes` (whole frames, encoded) to the server on connection `conn` (an engine
    /// that hands bytes, as the built-in drivers run it).
    Transmit {
        /// The connection's number.
        conn: u64,
        /// What to send.
        bytes: Vec<u8>,
    },
    /// Close connection `conn` with an application `code` (`rekord::net::CLOSE_*`) and
    /// `reason`, after what was sent on it: the client is done with it.
    Close {
        /// The connection's number.
        conn: u64,
        /// The application close code.
        code: u32,
        /// Why, as text for the server's log.
        reason: Vec<u8>,
    },
}

/// A synced database whose sync client runs only when its driver calls (see the module).
pub struct Engine {
    db: Option<Db>,
    link: Option<Arc<Link>>,
    driver: Option<SyncDriver>,
    clock: Arc<Clock>,
    net: Arc<Net>,
    woken: Arc<Woken>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("running", &self.driver.is_some())
            .field("now", &self.clock.now())
            .field("outputs", &self.net.state().outputs.len())
            .finish()
    }
}

impl Engine {
    /// Opens (or creates) the synced database at `path` with `config` (its transport is the
    /// driver's: [`Output::Connect`] says where the config points), at time `now`; runs the
    /// client up to its first wait. Frames come out as [`Output::Send`]. (Native: in a
    /// browser the database opens with its synced constructor, which runs an engine.)
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(
        path: impl AsRef<std::path::Path>,
        mut config: crate::SyncConfig,
        now: Instant,
    ) -> Result<Engine> {
        let net = Net::new(true);
        config.dialer = Some(net.clone());
        let clock = Clock::new(now);
        // The client's first steps (its start reads the database) run on the engine's clock.
        let (db, driver) = virt::with(&clock, || Db::open_synced_driven(path, config))?;
        let link = db.sync_link();
        let mut engine = Engine::driving(driver, link, net, clock);
        engine.db = Some(db);
        Ok(engine)
    }

    /// The engine of a client made to run over `net` (its dialer) on `clock`: the sync
    /// thread's and the browser task's (see [`crate::sync::driver`]). It does not hold the
    /// database: the application does, and closing it stops the client.
    pub(crate) fn driving(
        driver: SyncDriver,
        link: Option<Arc<Link>>,
        net: Arc<Net>,
        clock: Arc<Clock>,
    ) -> Engine {
        // Polled without tokio's cooperative budget: a driver on a tokio task would otherwise
        // see the client's channels pause, as if it had nothing to do.
        #[cfg(not(target_arch = "wasm32"))]
        let driver: SyncDriver = Box::pin(tokio::task::unconstrained(driver));
        let mut engine = Engine {
            db: None,
            link,
            driver: Some(driver),
            clock,
            net,
            woken: Arc::new(Woken(AtomicBool::new(true), Mutex::new(None))),
        };
        engine.run();
        engine
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
        self.net.state().outputs.pop_front()
    }

    /// Whether the client has work it has not run yet (the application wrote since the
    /// last call, or an input woke it): call [`Engine::poll_output`].
    pub fn wants_to_run(&self) -> bool {
        self.woken.0.load(Ordering::Acquire) || !self.net.state().outputs.is_empty()
    }

    /// Whether the client still runs (it stops when the database closes; the last outputs
    /// may still be waiting in [`Engine::poll_output`]).
    pub fn is_running(&self) -> bool {
        self.driver.is_some()
    }

    /// Whether the engine takes more bytes from the server now: a driver reads its
    /// connection only while it does (what the client has not read yet stays bounded, and
    /// the transport's flow control holds the server back).
    pub fn wants_bytes(&self) -> bool {
        self.net.state().inbound_len < ROOM
    }

    /// `waker` is woken whenever the client has work to run that did not come through a
    /// call of the driver (the application wrote, or a borrow waits): a driver that
    /// sleeps until [`Engine::poll_timeout`] or input wakes for it then.
    pub fn set_waker(&mut self, waker: &Waker) {
        let mut slot = self.woken.1.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// Time passed: the clock moves to `now` (never back) and the client runs what became
    /// due. A driver gives the time before each input too: the client reads the clock.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock.advance(now);
        self.run();
    }

    /// Moves the clock to `now` (never back) without running the client: a driver that
    /// hands in an input next lets the client see the input and the time together (an
    /// answer that arrived wins over the timeout that became due meanwhile).
    pub fn set_time(&mut self, now: Instant) {
        self.clock.advance(now);
    }

    /// Connection `conn` is open: `proved` is what its transport proved of the server
    /// ([`crate::net::Wire::proved`]). `false` if the client no longer wants it (close it).
    pub fn handle_connected(&mut self, conn: u64, proved: Proved) -> bool {
        let taken = self.net.connected(conn, proved);
        self.input();
        taken
    }

    /// Connection `conn` could not be opened, or failed: `error` says why (the client
    /// reports it and connects again after its back-off, or stops if it was refused).
    pub fn handle_failed(&mut self, conn: u64, error: NetError) {
        self.net.failed(conn, Some(error));
        self.input();
    }

    /// Connection `conn` closed (the server ended it), or could not be opened.
    pub fn handle_closed(&mut self, conn: u64) {
        self.net.failed(conn, None);
        self.input();
    }

    /// The server sent `bytes` on connection `conn` (any cut of its frames; ignored if the
    /// client is done with that connection).
    pub fn handle_bytes(&mut self, conn: u64, bytes: Vec<u8>) {
        self.net.deliver(conn, bytes);
        self.input();
    }

    /// The server sent `frame` on connection `conn` (ignored if the client is done with
    /// that connection).
    pub fn handle_frame(&mut self, conn: u64, frame: &Frame) -> Result<()> {
        match crate::proto::encode(frame) {
            Ok(bytes) => {
                self.handle_bytes(conn, bytes);
                Ok(())
            }
            Err(e) => {
                // The connection cannot carry on without it (the client would miss what it
                // says): it ends, and the client connects again from where it stands.
                self.net.failed(
                    conn,
                    Some(NetError::Closed(format!(
                        "a frame could not be handed in: {e}"
                    ))),
                );
                self.input();
                Err(Error::Offline {
                    what: "handing a frame to the sync engine",
                    reason: format!("{e}; the connection was closed"),
                })
            }
        }
    }

    /// Closes the database the way a process exits: the client stops, makes what the
    /// server acknowledged durable, and closes its connection (the outputs returned, the
    /// last of them). Handles of the database the application still holds (a `Tree`) see
    /// a database without sync from then on.
    pub fn close(mut self) -> Vec<Output> {
        self.stop();
        self.net.state().outputs.drain(..).collect()
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
        self.db = None;
    }

    /// An input changed what the client waits on: it runs.
    fn input(&mut self) {
        self.woken.0.store(true, Ordering::Release);
        self.run();
    }

    /// Runs the client until it waits.
    fn run(&mut self) {
        for _ in 0..MAX_ROUNDS {
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
                                "the sync client stopped on an internal error (a panic); \
                                 open the database again"
                                    .into(),
                            );
                        });
                    }
                }
            }
        }
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

/// The engine's side of the client's connections: the client's dialer, and the stream its
/// session reads and writes. The client waits on it only inside the engine's runs, and
/// every input from the driver runs the client again, so its futures need no waker.
pub(crate) struct Net {
    state: Mutex<NetState>,
    /// Whether what the client writes comes out as frames ([`Output::Send`]) or bytes.
    frames: bool,
}

#[derive(Default)]
struct NetState {
    /// The number of the latest connection.
    conn: u64,
    phase: Phase,
    /// What the driver is asked to do, in order.
    outputs: VecDeque<Output>,
    /// What the client wrote, as frames come whole (engines that hand frames).
    written: FrameReader,
    /// What the server sent that the client has not read.
    inbound: VecDeque<Vec<u8>>,
    inbound_len: usize,
}

/// Where the latest connection stands.
#[derive(Default)]
enum Phase {
    /// None open.
    #[default]
    Idle,
    /// Asked for; what became of it once the driver said.
    Dialing(Option<std::result::Result<Proved, NetError>>),
    /// Open; how it ended once it did (`Some(None)`: the server ended the stream).
    Open(Option<Option<String>>),
}

impl Net {
    pub(crate) fn new(frames: bool) -> Arc<Net> {
        Arc::new(Net {
            state: Mutex::new(NetState::default()),
            frames,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, NetState> {
        // Every field stays whole if a holder panicked (each change is one step).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connected(&self, conn: u64, proved: Proved) -> bool {
        let mut s = self.state();
        if s.conn == conn && matches!(s.phase, Phase::Dialing(None)) {
            s.phase = Phase::Dialing(Some(Ok(proved)));
            return true;
        }
        false
    }

    fn failed(&self, conn: u64, error: Option<NetError>) {
        let mut s = self.state();
        if s.conn != conn {
            return;
        }
        match &mut s.phase {
            Phase::Dialing(result @ None) => {
                *result = Some(Err(error.unwrap_or_else(|| {
                    NetError::Closed("the connection could not be opened".into())
                })));
            }
            Phase::Open(ended @ None) => {
                *ended = Some(error.map(|e| match e {
                    NetError::Closed(reason) => reason,
                    other => other.to_string(),
                }));
            }
            _ => {}
        }
    }

    fn deliver(&self, conn: u64, bytes: Vec<u8>) {
        let mut s = self.state();
        if s.conn == conn && matches!(s.phase, Phase::Open(None)) && !bytes.is_empty() {
            s.inbound_len += bytes.len();
            s.inbound.push_back(bytes);
        }
    }
}

impl NetState {
    /// The client is done with connection `conn` (the latest): the driver closes it, or
    /// never hears of it if it has not taken the `Connect` yet.
    fn close(&mut self, conn: u64, code: u32, reason: &[u8]) {
        if self.conn != conn || matches!(self.phase, Phase::Idle) {
            return;
        }
        self.phase = Phase::Idle;
        self.inbound.clear();
        self.inbound_len = 0;
        self.written = FrameReader::new();
        let unseen = self
            .outputs
            .iter()
            .any(|o| matches!(o, Output::Connect { conn: c, .. } if *c == conn));
        if unseen {
            self.outputs.retain(|o| match o {
                Output::Connect { conn: c, .. }
                | Output::Send { conn: c, .. }
                | Output::Transmit { conn: c, .. }
                | Output::Close { conn: c, .. } => *c != conn,
            });
        } else {
            self.outputs.push_back(Output::Close {
                conn,
                code,
                reason: reason.to_vec(),
            });
        }
    }
}

/// The client's dialer: a connection is what the driver opens for it.
impl crate::net::Dialer for Net {
    fn open(
        self: Arc<Self>,
        dial: Dial,
    ) -> WireFuture<'static, std::result::Result<Wire, NetError>> {
        let conn = {
            let mut s = self.state();
            let before = s.conn;
            s.close(before, CLOSE_NORMAL, b"replaced");
            s.conn += 1;
            let conn = s.conn;
            s.phase = Phase::Dialing(None);
            s.outputs.push_back(Output::Connect { conn, dial });
            conn
        };
        Box::pin(Dialing {
            net: Some(self),
            conn,
        })
    }
}

/// The client waits for its connection: the driver's word on it.
struct Dialing {
    net: Option<Arc<Net>>,
    conn: u64,
}

impl Future for Dialing {
    type Output = std::result::Result<Wire, NetError>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(net) = self.net.clone() else {
            return Poll::Ready(Err(NetError::Closed("the connection was closed".into())));
        };
        let conn = self.conn;
        let mut s = net.state();
        if s.conn != conn {
            drop(s);
            self.net = None;
            return Poll::Ready(Err(NetError::Closed("the connection was replaced".into())));
        }
        let result = match &mut s.phase {
            Phase::Dialing(result) => match result.take() {
                Some(result) => result,
                None => return Poll::Pending,
            },
            _ => Err(NetError::Closed("the connection was closed".into())),
        };
        s.phase = match &result {
            Ok(_) => Phase::Open(None),
            Err(_) => Phase::Idle,
        };
        drop(s);
        self.net = None;
        Poll::Ready(result.map(|proved| Wire {
            conn: Box::new(EngineConn {
                net: net.clone(),
                conn,
            }),
            send: Box::new(EngineSend {
                net: net.clone(),
                conn,
            }),
            recv: Box::new(EngineRecv { net, conn }),
            proved,
        }))
    }
}

impl Drop for Dialing {
    /// Given up before the driver said (the client's timeout): the driver closes it.
    fn drop(&mut self) {
        if let Some(net) = self.net.take() {
            let mut s = net.state();
            if s.conn == self.conn && matches!(s.phase, Phase::Dialing(_)) {
                s.close(self.conn, CLOSE_NORMAL, b"gave up");
            }
        }
    }
}

/// The connection of a session the engine runs.
struct EngineConn {
    net: Arc<Net>,
    conn: u64,
}

impl std::fmt::Debug for EngineConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineConn({})", self.conn)
    }
}

impl ConnWire for EngineConn {
    fn close(&self, code: u32, reason: &[u8]) {
        self.net.state().close(self.conn, code, reason);
    }

    // The driver waits for the close (the client does not wait on the network).
    fn closed(&self) -> WireFuture<'_, ()> {
        Box::pin(async {})
    }

    fn remote(&self) -> String {
        "the sync engine's driver".into()
    }
}

impl Drop for EngineConn {
    /// A session dropped without closing: the connection closes, as a dropped QUIC
    /// connection does.
    fn drop(&mut self) {
        self.net.state().close(self.conn, CLOSE_NORMAL, b"");
    }
}

/// The sending half of a session's stream: what it writes is the driver's to send.
struct EngineSend {
    net: Arc<Net>,
    conn: u64,
}

impl std::fmt::Debug for EngineSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineSend({})", self.conn)
    }
}

impl SendWire for EngineSend {
    fn write_all<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> WireFuture<'a, std::result::Result<(), String>> {
        let written = self.write(bytes);
        Box::pin(async move { written })
    }

    // The driver closes the connection after what was sent on it.
    fn finish(&mut self) {}
}

impl EngineSend {
    fn write(&self, bytes: &[u8]) -> std::result::Result<(), String> {
        let mut s = self.net.state();
        if s.conn != self.conn || !matches!(s.phase, Phase::Open(None)) {
            return Err("the connection is closed".into());
        }
        let conn = self.conn;
        if !self.net.frames {
            if let Some(Output::Transmit {
                conn: c,
                bytes: queued,
            }) = s.outputs.back_mut()
                && *c == conn
            {
                queued.extend_from_slice(bytes);
            } else {
                s.outputs.push_back(Output::Transmit {
                    conn,
                    bytes: bytes.to_vec(),
                });
            }
            return Ok(());
        }
        s.written.push(bytes);
        loop {
            match s.written.next_frame() {
                Ok(Some(frame)) => s.outputs.push_back(Output::Send { conn, frame }),
                Ok(None) => return Ok(()),
                Err(e) => {
                    // The client wrote what it cannot have meant: the connection ends.
                    tracing::warn!(error = %e, "rekord sync engine: a frame of the client");
                    s.close(conn, CLOSE_PROTOCOL, b"malformed frame");
                    return Err(format!("the client wrote a malformed frame: {e}"));
                }
            }
        }
    }
}

/// The receiving half of a session's stream: what the driver handed in.
struct EngineRecv {
    net: Arc<Net>,
    conn: u64,
}

impl std::fmt::Debug for EngineRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EngineRecv({})", self.conn)
    }
}

impl RecvWire for EngineRecv {
    fn read_into<'a>(
        &'a mut self,
        reader: &'a mut FrameReader,
    ) -> WireFuture<'a, std::result::Result<Option<usize>, String>> {
        // Cancel-safe: bytes leave the queue only in the poll that returns them.
        Box::pin(std::future::poll_fn(move |_cx| {
            let mut s = self.net.state();
            if s.conn != self.conn {
                return Poll::Ready(Err("the connection was closed".into()));
            }
            if let Some(bytes) = s.inbound.pop_front() {
                s.inbound_len -= bytes.len();
                reader.push(&bytes);
                return Poll::Ready(Ok(Some(bytes.len())));
            }
            match &s.phase {
                Phase::Open(None) => Poll::Pending,
                Phase::Open(Some(None)) => Poll::Ready(Ok(None)),
                Phase::Open(Some(Some(reason))) => Poll::Ready(Err(reason.clone())),
                _ => Poll::Ready(Err("the connection was closed".into())),
            }
        }))
    }
}
