//! The sync client of a synced database: the protocol's client side over a
//! [`Session`](crate::net::Session), whatever carries it. Natively it runs on a thread of its
//! own with a tokio runtime (QUIC, or WebTransport with the `web-transport` feature); in a
//! browser it runs on the page's event loop (`wasm-bindgen-futures`), over the page's
//! WebTransport. Its only timers are [`crate::rt`]'s.

mod restore;

use super::local::{Handle, Local, Write};
use super::{Coverage, SyncConfig, SyncStatus, UNKNOWN_REPLICA};
use crate::event::{SyncEvent, lock};
use crate::net::{self, NetError, Pin, Session};
use crate::proto::handshake::{ClientConfig, HandshakeError};
use crate::proto::{ChangeKind, EntryOutcome, Push, RemoteError, Request, Response, Sequenced};
use crate::rt::Instant;
use crate::{Error, RawKey, Result};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the application asks of the sync thread.
pub(crate) enum Command {
    /// Borrow a record through the server.
    Borrow {
        tree: String,
        key: RawKey,
        reply: async_channel::Sender<Result<()>>,
    },
}

/// The application's side of the sync thread.
pub(crate) struct Link {
    commands: async_channel::Sender<Command>,
    /// Signalled after every commit that added outbox entries.
    wake: tokio::sync::Notify,
    shutdown: tokio::sync::watch::Sender<bool>,
    status: Mutex<SyncStatus>,
    changed: Condvar,
    #[cfg(not(target_arch = "wasm32"))]
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    #[cfg(not(target_arch = "wasm32"))]
    thread_id: Mutex<Option<std::thread::ThreadId>>,
    max_outbox_bytes: Option<u64>,
    write_mode: super::WriteMode,
    tree_write_modes: Vec<(String, super::WriteMode)>,
    timeout: Duration,
    /// The server's reasons for the latest refused outbox entries (by entry number), for
    /// write-through writers to report; bounded to [`REASONS_KEPT`].
    reasons: Mutex<std::collections::BTreeMap<u64, String>>,
    /// Outbox entries that wait with records to be taken back after a restore (see
    /// [`Link::note_waiting`]); bounded to [`REASONS_KEPT`].
    waiting: Mutex<std::collections::BTreeSet<u64>>,
    /// Ids a write that ran out of them asked for (0: none); the sync thread fetches ranges
    /// until this many are free, then counts `refills` up.
    ids_wanted: std::sync::atomic::AtomicU64,
    /// Whether the application drives the client on its own executor
    /// ([`crate::Db::open_synced_driven`]): nothing may then block waiting for it.
    driven: bool,
}

/// How many refusal reasons [`Link`] keeps for write-through writers.
const REASONS_KEPT: usize = 1024;

/// How long a browser's connection attempt may take to open before the client gives up on
/// it (its handshake then is bounded by the client's timeout, as natively). Chromium holds
/// a page's WebTransport handshakes back after failed ones (each failure counts for minutes;
/// the wait grows to a minute, times up to 1.5), and a handshake given up on counts as one
/// more failure: a tab that gave up at its short timeout never reconnected after an outage
/// of a few seconds, each attempt cancelled before the browser started it.
#[cfg(target_arch = "wasm32")]
const BROWSER_OPEN_WAIT: Duration = Duration::from_secs(100);

impl Link {
    /// The bound on each request to the server ([`SyncConfig::timeout`]).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Wakes the sync client to look at its ids again (a leading tab carved some of its own
    /// for another tab: it asks the server for more when fewer than half a range are left).
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// In a browser: asks the sync client for at least `ids` more free ids, without waiting
    /// (`false`: the write that needs them fails with [`Error::IdsExhausted`] and may be
    /// tried again once they came).
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn refill_ids(&self, ids: u64, until: Instant) -> Result<bool> {
        // In a browser nothing may block: the write fails (ids exhausted) and the refill
        // goes on in the background.
        let _ = until;
        self.ids_wanted.fetch_add(ids, Ordering::AcqRel);
        self.wake.notify_one();
        Ok(false)
    }

    /// Asks the sync thread for at least `ids` more free ids, and waits (at most the request
    /// timeout) until it has fetched them; whether it did. `false` at once while offline or
    /// when called on the sync thread itself.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn refill_ids(&self, ids: u64, until: Instant) -> Result<bool> {
        if *lock(&self.thread_id) == Some(std::thread::current().id()) {
            return Ok(false);
        }
        if self.driven {
            // The client may run on this very thread: ask, do not wait.
            self.ids_wanted.fetch_add(ids, Ordering::AcqRel);
            self.wake.notify_one();
            return Ok(false);
        }
        let refused = |st: &SyncStatus| match &st.ids_refused {
            Some(reason) => Err(Error::IdsRefused {
                reason: reason.clone(),
            }),
            None => Ok(()),
        };
        let before = {
            let st = lock(&self.status);
            if !st.online {
                return Ok(false);
            }
            refused(&st)?;
            st.refills
        };
        // Summed: several writers short at once each need their own ids.
        self.ids_wanted.fetch_add(ids, Ordering::AcqRel);
        self.wake.notify_one();
        let left = until.saturating_duration_since(Instant::now());
        let (done, _) = self.wait(self.timeout.min(left), |s| s.refills > before || !s.online);
        let st = lock(&self.status);
        refused(&st)?;
        Ok(done && st.refills > before)
    }

    /// Keeps the server's reason for refusing outbox entry `entry`.
    /// Notes that outbox entry `entry` waits with records to be taken back after a restore
    /// (refused until then, sent again with their copies): a write-through writer of it is
    /// told it is not confirmed.
    fn note_waiting(&self, entry: u64) {
        let mut waiting = lock(&self.waiting);
        waiting.insert(entry);
        while waiting.len() > REASONS_KEPT {
            waiting.pop_first();
        }
    }

    fn note_refusal(&self, entry: u64, reason: &str) {
        let mut reasons = lock(&self.reasons);
        reasons.insert(entry, reason.to_owned());
        while reasons.len() > REASONS_KEPT {
            reasons.pop_first();
        }
    }

    /// The refusal to report while the server refuses this client, if it does.
    fn refusal(status: &SyncStatus, what: &'static str) -> Option<Error> {
        status.refused.as_ref().map(|reason| Error::Refused {
            what,
            reason: reason.clone(),
        })
    }

    /// Counts `entries` new outbox entries of `bytes` and wakes the sync thread.
    pub(crate) fn enqueued(&self, entries: u64, bytes: u64) {
        self.update(|s| {
            s.outbox += entries;
            s.outbox_bytes += bytes;
        });
        self.wake.notify_one();
    }

    /// Refuses `bytes` more of outbox entries beyond the limit.
    pub(crate) fn room(&self, bytes: u64) -> Result<()> {
        let Some(limit) = self.max_outbox_bytes else {
            return Ok(());
        };
        let queued = lock(&self.status).outbox_bytes;
        if queued.saturating_add(bytes) > limit {
            return Err(Error::OutboxFull { queued, limit });
        }
        Ok(())
    }

    /// Whether writes to `tree` are write-through.
    pub(crate) fn write_through(&self, tree: &str) -> bool {
        let mode = self
            .tree_write_modes
            .iter()
            .find(|(t, _)| t == tree)
            .map_or(self.write_mode, |(_, m)| *m);
        mode == super::WriteMode::Through
    }

    /// Refuses a write-through write while offline (before anything changes).
    pub(crate) fn require_online(&self) -> Result<()> {
        let st = lock(&self.status);
        if st.online {
            return Ok(());
        }
        if let Some(e) = Link::refusal(&st, "a write-through write") {
            return Err(e);
        }
        Err(Error::Offline {
            what: "a write-through write",
            reason: st
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected yet".into()),
        })
    }

    /// Waits until the server processed outbox entries `first..=last`, at most the request
    /// timeout; a refusal of any of them is [`Error::Refused`] (`rejected`: whether the
    /// database set any of them aside as refused).
    pub(crate) fn await_entries(
        &self,
        first: u64,
        last: u64,
        rejected: impl FnOnce() -> Result<bool>,
    ) -> Result<()> {
        let (done, status) = self.wait(self.timeout, |s| {
            s.processed_entry >= last || s.refused.is_some()
        });
        // Committed here but not confirmed: distinct from `Offline` (nothing written).
        if status.processed_entry < last
            && let Some(reason) = &status.refused
        {
            return Err(Error::Unconfirmed {
                reason: format!("the server refuses this client: {reason}"),
            });
        }
        if !done {
            return Err(Error::Unconfirmed {
                reason: format!(
                    "no answer from the server within {:?} ({})",
                    self.timeout,
                    status.last_error.as_deref().unwrap_or("connected")
                ),
            });
        }
        if lock(&self.waiting).range(first..=last).next().is_some() {
            return Err(Error::Unconfirmed {
                reason: "the record waits to be taken back after the server was restored \
                         from a backup; this write is kept here and sent again then"
                    .into(),
            });
        }
        if rejected()? {
            let reasons = lock(&self.reasons);
            let mut why: Vec<&str> = reasons
                .range(first..=last)
                .map(|(_, r)| r.as_str())
                .collect();
            why.dedup();
            let why = if why.is_empty() {
                "the server refused it".to_owned()
            } else {
                why.join("; ")
            };
            return Err(Error::Refused {
                what: "the write",
                reason: format!("{why} (the local change was undone)"),
            });
        }
        Ok(())
    }

    /// Whether the application drives the client ([`crate::Db::open_synced_driven`]).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn driven(&self) -> bool {
        self.driven
    }

    pub(crate) fn status(&self) -> SyncStatus {
        lock(&self.status).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
        f(&mut lock(&self.status));
        self.changed.notify_all();
    }

    /// Waits (blocking) until `done` holds for the status, at most `timeout`; the status
    /// seen last.
    pub(crate) fn wait(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&SyncStatus) -> bool,
    ) -> (bool, SyncStatus) {
        if self.driven {
            // The client may run on this very thread: a blocking wait would never end.
            let status = lock(&self.status).clone();
            return (done(&status), status);
        }
        // (A timeout past what an instant can say is none.)
        let deadline = Instant::now().checked_add(timeout);
        let mut status = lock(&self.status);
        loop {
            if done(&status) {
                return (true, status.clone());
            }
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return (false, status.clone());
            }
            status = match self.changed.wait_timeout(status, left) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Asks the server for a borrow; the answer is applied locally before it returns.
    pub(crate) async fn borrow(&self, tree: &str, key: RawKey) -> Result<()> {
        let (reply, answer) = async_channel::bounded(1);
        let command = Command::Borrow {
            tree: tree.to_owned(),
            key,
            reply,
        };
        let gone = || Error::Offline {
            what: "borrowing",
            reason: "the sync client has stopped".into(),
        };
        self.commands.send(command).await.map_err(|_| gone())?;
        answer.recv().await.map_err(|_| gone())?
    }

    /// [`Link::borrow`], blocking the calling thread (never the sync thread's runtime).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn borrow_blocking(&self, tree: &str, key: RawKey) -> Result<()> {
        if self.driven {
            return Err(Error::Offline {
                what: "borrowing",
                reason: "the sync client is driven by the application: use Tree::borrow_async"
                    .into(),
            });
        }
        let (reply, answer) = async_channel::bounded(1);
        let command = Command::Borrow {
            tree: tree.to_owned(),
            key,
            reply,
        };
        let gone = || Error::Offline {
            what: "borrowing",
            reason: "the sync client has stopped".into(),
        };
        self.commands.send_blocking(command).map_err(|_| gone())?;
        answer.recv_blocking().map_err(|_| gone())?
    }

    /// Stops the sync thread and waits for it (unless called on it). In a browser the
    /// client stops at its next await.
    pub(crate) fn stop(&self) {
        self.commands.close();
        let _ = self.shutdown.send(true);
        #[cfg(not(target_arch = "wasm32"))]
        let on_sync_thread = *lock(&self.thread_id) == Some(std::thread::current().id());
        #[cfg(not(target_arch = "wasm32"))]
        if !on_sync_thread && let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
    }
}

fn unit_random() -> f64 {
    crate::rt::random::<8>().map_or(0.5, |b| {
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The sync client of a database opened with [`crate::Db::open_synced_driven`]: a future to
/// run on the application's executor (it ends when the database closes).
pub type SyncDriver = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Starts the sync client of `db`: on a thread of its own (a task in a browser), or, when
/// `driven`, as the returned future for the application to run.
pub(crate) fn start_with(
    db: Handle,
    mut config: SyncConfig,
    driven: bool,
) -> Result<(Arc<Link>, Option<SyncDriver>)> {
    // On its own, the client runs in a sync engine whose driver opens its connections.
    let net = (!driven).then(|| {
        let net = super::engine::Net::new(false);
        config.dialer = Some(net.clone());
        net
    });
    #[cfg(not(target_arch = "wasm32"))]
    let streams = config.connector.clone();
    #[cfg(target_arch = "wasm32")]
    let streams = super::driver::NoStreams;
    let (commands, commands_rx) = async_channel::unbounded();
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let link = Arc::new(Link {
        commands,
        wake: tokio::sync::Notify::new(),
        shutdown,
        status: Mutex::new(SyncStatus::default()),
        changed: Condvar::new(),
        #[cfg(not(target_arch = "wasm32"))]
        thread: Mutex::new(None),
        #[cfg(not(target_arch = "wasm32"))]
        thread_id: Mutex::new(None),
        max_outbox_bytes: config.max_outbox_bytes,
        write_mode: config.write_mode,
        tree_write_modes: config.tree_write_modes.clone(),
        timeout: config.timeout,
        reasons: Mutex::new(std::collections::BTreeMap::new()),
        waiting: Mutex::new(std::collections::BTreeSet::new()),
        ids_wanted: std::sync::atomic::AtomicU64::new(0),
        driven,
    });
    let (start, replica) = {
        let local = db.get().ok_or_else(|| Error::Offline {
            what: "starting the sync client",
            reason: "the database closed".into(),
        })?;
        (local.start()?, local.replica())
    };
    let cursor = start.cursor;
    link.update(|s| {
        s.cursor = cursor;
        s.outbox = start.outbox;
        s.waiting = start.waiting;
        s.outbox_bytes = start.outbox_bytes;
        s.rejected = start.rejected;
        s.replica = (replica != UNKNOWN_REPLICA).then_some(replica);
    });
    let client = Client {
        db: db.clone(),
        link: link.clone(),
        config,
        commands: commands_rx.clone(),
        client_id: start.client,
        cursor,
        head: 0,
        caught_up: false,
        uploaded: HashSet::new(),
        last_durable: crate::rt::now(),
        stale_reported: false,
        sent_before: 0,
        received_before: 0,
        interrupted: None,
        reclaiming: false,
        reclaim_due: false,
        quiet_reclaim: (crate::rt::now(), QUIET_RECLAIM_FIRST),
        no_ids: false,
        rechecking: true,
    };
    let weak = db;
    let done_link = link.clone();
    // The client until the database closes; then what the server acknowledged (settled
    // entries, merges, applied changes) becomes durable now, not at some later commit.
    // Made where it runs (natively on the sync thread: the future is not `Send`).
    let drive = move || async move {
        let mut shutdown_rx = shutdown_rx;
        let stopped = async move {
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
        };
        let _ = crate::rt::first(client.run(), stopped).await;
        // Commands still queued (a borrow asked as the database closed) are answered: their
        // reply channels close, and their callers hear that the client stopped.
        commands_rx.close();
        while let Ok(command) = commands_rx.try_recv() {
            drop(command);
        }
        if let Some(db) = weak.get()
            && let Err(e) = db.make_durable()
        {
            tracing::warn!(error = %e, "rekord sync: cannot make the last commits durable");
        }
        done_link.update(|s| {
            s.online = false;
            s.caught_up = false;
        });
    };
    let Some(net) = net else {
        return Ok((link, Some(Box::pin(drive()))));
    };
    let engine_link = link.clone();
    let run = move || {
        let clock = crate::rt::virt::Clock::live();
        let engine =
            super::engine::Engine::driving(Box::pin(drive()), Some(engine_link), net, clock);
        super::driver::run(engine, streams)
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Offline {
                what: "starting the sync client",
                reason: e.to_string(),
            })?;
        let thread_link = link.clone();
        let handle = std::thread::Builder::new()
            .name("rekord-sync".into())
            .spawn(move || {
                *lock(&thread_link.thread_id) = Some(std::thread::current().id());
                // The engine is made on the runtime: its first run may start what needs one.
                runtime.block_on(async move { run().await });
            })
            .map_err(|e| Error::Offline {
                what: "starting the sync client",
                reason: e.to_string(),
            })?;
        *lock(&link.thread) = Some(handle);
    }
    #[cfg(target_arch = "wasm32")]
    wasm_bindgen_futures::spawn_local(async move { run().await });
    Ok((link, None))
}

/// Why a session ended.
enum End {
    /// The application closed the database.
    Closed,
    /// The connection failed or broke; retry.
    Lost(String),
    /// A refusal (either side); retry, but it needs a fix.
    Refused(String),
}

impl From<NetError> for End {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Handshake(_)
            | NetError::CertificateMismatch { .. }
            | NetError::UnknownWebCertificate { .. }
            | NetError::NotProven(_) => End::Refused(e.to_string()),
            other => End::Lost(other.to_string()),
        }
    }
}

impl From<Error> for End {
    fn from(e: Error) -> Self {
        End::Lost(format!("local database error: {e}"))
    }
}

struct Client {
    db: Handle,
    link: Arc<Link>,
    config: SyncConfig,
    commands: async_channel::Receiver<Command>,
    client_id: [u8; 16],
    cursor: u64,
    head: u64,
    caught_up: bool,
    /// Schemas uploaded in this session.
    uploaded: HashSet<(String, u32)>,
    /// When the sync client last committed durably.
    last_durable: Instant,
    /// Whether the current stale outbox was reported.
    stale_reported: bool,
    /// Bytes sent and received by earlier sessions.
    sent_before: u64,
    received_before: u64,
    /// A borrow to ask again on the next connection.
    interrupted: Option<Interrupted>,
    /// Whether records wait to be taken back after a restore (`rekord.reclaim`).
    reclaiming: bool,
    /// A record another replica held was returned while caught up (a
    /// [`ChangeKind::Borrow`] to holder 0 applied by any path: a live push, a resync's
    /// buffered pushes, a borrow's wait): the records waiting to be taken back are tried
    /// again once the session loop is back in control.
    reclaim_due: bool,
    /// When a quiet session next retries the records waiting to be taken back (the
    /// backstop of `reclaim_due`), and the gap after that one: it doubles, up to
    /// [`QUIET_RECLAIM_MAX`], so that records whose stale holder never comes back cost
    /// little.
    quiet_reclaim: (Instant, Duration),
    /// Whether the server refused this session id ranges (a token that may write nothing).
    no_ids: bool,
    /// Whether records sent again after a restore wait to be fetched once caught up
    /// (`rekord.recheck`).
    rechecking: bool,
}

/// A borrow the loss of the connection interrupted, asked again after reconnecting.
struct Interrupted {
    tree: String,
    key: RawKey,
    reply: async_channel::Sender<Result<()>>,
    /// When the application stops waiting for a new connection.
    deadline: Instant,
    /// Why the connection was lost.
    reason: String,
}

/// Outbox entries the server refused with a conflict (entry, and the server's version).
type Conflicts = Vec<(u64, Box<crate::proto::Current>)>;

/// What settling outbox entries left to do: records to resync (refused changes) and
/// conflicts to merge.
type Settled = (Vec<(String, u64)>, Conflicts);

/// Whether the entry of this outcome stays in the outbox and is sent again (a conflict,
/// once merged, or an entry skipped after one).
fn sent_again(outcome: &EntryOutcome) -> bool {
    matches!(
        outcome,
        EntryOutcome::Skipped | EntryOutcome::Rejected(RemoteError::Conflict(_))
    )
}

/// The first gap of the quiet retries of records waiting to be taken back.
const QUIET_RECLAIM_FIRST: Duration = Duration::from_secs(15);

/// The longest gap of the quiet retries of records waiting to be taken back.
const QUIET_RECLAIM_MAX: Duration = Duration::from_secs(600);

/// About how many bytes of outbox entries go into one request.
const BATCH_BYTES: usize = 4 << 20;

/// How long the sync client's own commits may stay non-durable.
const LAZY_DURABILITY: Duration = Duration::from_millis(250);

enum Wakeup {
    Command(Option<Command>),
    Outbox,
    Push(std::result::Result<Option<Push>, NetError>),
}

impl Client {
    /// The database, through the sync client's interface to it ([`Local`]).
    fn db(&self) -> std::result::Result<Box<dyn Local>, End> {
        self.db.get().ok_or(End::Closed)
    }

    /// A batch for the sync client's own bookkeeping (applied server changes, settled
    /// outbox entries), durable only every [`LAZY_DURABILITY`]: the cursor is committed
    /// atomically with the data it covers, so a crash loses at most a suffix of such commits,
    /// which are fetched (or resent, idempotently) again. The application's own writes stay
    /// durable, and each of them makes the earlier lazy commits durable too.
    fn lazy_write<'d>(&mut self, db: &'d dyn Local) -> Result<Box<dyn Write + 'd>> {
        let mut b = db.write()?;
        if crate::rt::now().saturating_duration_since(self.last_durable) < LAZY_DURABILITY {
            b.lazy();
        } else {
            self.last_durable = crate::rt::now();
        }
        Ok(b)
    }

    /// Makes the sync client's lazy commits durable, if any is not yet. Called before
    /// anything is sent that the server acts on for good (write-ahead): the server forgets
    /// the outcomes of entries below a request's first one, and keeps a merged entry it
    /// accepted. Were the settling of those entries, or the merge itself, lost in a crash
    /// after the server heard of them, the replica would send again an entry the server
    /// answers as a duplicate, with nothing left to merge: its copy would stay the unmerged
    /// one for good.
    fn make_durable(&mut self) -> std::result::Result<(), End> {
        if self.db()?.make_durable()? {
            self.last_durable = crate::rt::now();
        }
        Ok(())
    }

    /// Whether a lazy commit is not durable yet.
    fn lazy_pending(&self) -> bool {
        self.db().is_ok_and(|db| db.lazy_pending())
    }

    /// Publishes the byte counters, this session's included.
    fn publish_traffic(&self, s: &Session) {
        let traffic = (
            self.sent_before + s.bytes_sent(),
            self.received_before + s.bytes_received(),
        );
        self.link
            .update(|st| (st.bytes_sent, st.bytes_received) = traffic);
    }

    /// Reports a stale outbox once (see `SyncConfig::max_outbox_age`).
    fn check_stale(&mut self) {
        let Some(max) = self.config.max_outbox_age else {
            return;
        };
        if self.stale_reported {
            return;
        }
        let Ok(db) = self.db() else {
            return;
        };
        let oldest = db.oldest_entry_at();
        drop(db);
        let Ok(Some(at)) = oldest else {
            return;
        };
        let age = Duration::from_millis(crate::rt::now_ms().saturating_sub(at));
        if age > max {
            self.stale_reported = true;
            let entries = self.link.status().outbox;
            tracing::warn!(?age, entries, "rekord sync: the outbox is stale");
            self.emit(SyncEvent::OutboxStale { age, entries });
        }
    }

    fn emit(&self, event: SyncEvent) {
        if let Ok(db) = self.db() {
            db.emit(event);
        }
    }

    async fn run(mut self) {
        let mut attempt = 0u32;
        let mut last_refusal: Option<String> = None;
        loop {
            let end = match self.connect().await {
                Ok(session) => {
                    attempt = 0;
                    last_refusal = None;
                    self.session(session).await
                }
                Err(end) => {
                    // Reconnecting failed: an interrupted borrow is answered once the
                    // server refuses this client or its deadline passed; until then the
                    // client keeps reconnecting for it.
                    let give_up = self.interrupted.as_ref().is_some_and(|i| {
                        matches!(end, End::Refused(_)) || crate::rt::now() >= i.deadline
                    });
                    if give_up && let Some(i) = self.interrupted.take() {
                        let error = match &end {
                            End::Refused(r) => borrow_failed(r.clone(), true),
                            _ => borrow_failed(i.reason, false),
                        };
                        let _ = i.reply.try_send(Err(error));
                    }
                    end
                }
            };
            let (reason, refused) = match end {
                End::Closed => return,
                End::Lost(r) => (r, false),
                End::Refused(r) => (r, true),
            };
            let mut delay = self.config.retry.delay(attempt, unit_random());
            if let Some(i) = &self.interrupted {
                // Try once more right at the deadline of an interrupted borrow, at the latest.
                delay = delay.min(i.deadline.saturating_duration_since(crate::rt::now()));
            }
            attempt = attempt.saturating_add(1);
            tracing::debug!(%reason, ?delay, "rekord sync: offline");
            self.link.update(|s| {
                s.online = false;
                s.caught_up = false;
                s.last_error = Some(reason.clone());
                if refused {
                    s.refused = Some(reason.clone());
                }
            });
            // A refusal is reported once, not on every retry.
            if refused && last_refusal.as_ref() != Some(&reason) {
                self.emit(SyncEvent::Refused {
                    reason: reason.clone(),
                });
            }
            last_refusal = refused.then(|| reason.clone());
            self.emit(SyncEvent::Disconnected {
                reason: reason.clone(),
                retry_in: delay,
            });
            self.check_stale();
            let mut sleep = std::pin::pin!(crate::rt::sleep(delay));
            loop {
                match crate::rt::first(sleep.as_mut(), self.commands.recv()).await {
                    crate::rt::Either::Left(()) => break,
                    crate::rt::Either::Right(Ok(command)) => fail(command, &reason, refused),
                    crate::rt::Either::Right(Err(_)) => return,
                }
            }
        }
    }

    async fn connect(&mut self) -> std::result::Result<Session, End> {
        let super::local::HelloState {
            cursor,
            pin,
            history,
            last_entry,
        } = self.db()?.hello_state()?;
        self.cursor = cursor;
        let pin = match (pin, &self.config.pin) {
            // Pinned by UUID only so far: the configured fingerprint of that server counts.
            (Some(stored), Some(configured))
                if stored.cert.is_empty() && stored.server == configured.server =>
            {
                Some(configured.clone())
            }
            (stored, configured) => stored.or_else(|| configured.clone()),
        };
        let hello = ClientConfig {
            app: self.config.app.clone(),
            client: self.client_id,
            token: self.config.token.clone(),
            pinned: pin.as_ref().map(|p| p.server),
            cursor,
            trees: self.config.trees.clone(),
            replica: {
                let r = self.db()?.replica();
                if r == UNKNOWN_REPLICA { 0 } else { r }
            },
            history,
            last_entry,
        };
        self.backfill(&hello, pin.as_ref()).await?;
        self.dial(&hello, pin.as_ref()).await
    }

    /// Connects with `hello` over the configured transport (opened by the engine's driver
    /// when the client runs in one).
    async fn dial(
        &self,
        hello: &ClientConfig,
        pin: Option<&Pin>,
    ) -> std::result::Result<Session, End> {
        // A browser's connection may take longer to open than the client waits for an
        // answer: see [`BROWSER_OPEN_WAIT`].
        #[cfg(target_arch = "wasm32")]
        let (open_for, bound) = {
            let open_for = self.config.timeout.max(BROWSER_OPEN_WAIT);
            (open_for, open_for.saturating_add(self.config.timeout))
        };
        #[cfg(not(target_arch = "wasm32"))]
        let (open_for, bound) = (self.config.timeout, self.config.timeout);
        let options = net::ConnectOptions::default().timeout(open_for);
        let target = self.dial_target()?;
        // The pinned server identity travels in the hello and is checked by the session.
        let mut hello = hello.clone();
        if let Some(pin) = pin {
            hello.pinned = Some(pin.server);
        }
        let dial = net::Dial {
            target,
            pin: pin.cloned(),
            options,
        };
        let timeout = self.config.timeout;
        let connecting = async {
            let wire = match &self.config.dialer {
                Some(dialer) => dialer.clone().open(dial).await?,
                #[cfg(not(target_arch = "wasm32"))]
                None => net::open_with(&dial, self.config.connector.as_ref()).await?,
                #[cfg(target_arch = "wasm32")]
                None => net::open(&dial).await?,
            };
            Session::start_on(wire, &hello, timeout).await
        };
        match crate::rt::timeout(bound, connecting).await {
            Some(session) => Ok(session?),
            None => Err(NetError::Timeout {
                what: "connecting and the handshake",
                after: bound,
            }
            .into()),
        }
    }

    /// Where the configured transport goes.
    fn dial_target(&self) -> std::result::Result<net::DialTarget, End> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.config.connector.is_some() {
            return Ok(net::DialTarget::Stream);
        }
        #[cfg(all(not(feature = "web-transport"), not(target_arch = "wasm32")))]
        if self.config.web_transport.is_some() {
            return Err(End::Refused(
                "SyncConfig::web_transport needs the crate feature `web-transport` natively".into(),
            ));
        }
        match &self.config.web_transport {
            Some(target) if target.webpki => Ok(net::DialTarget::Web(target.clone())),
            Some(target) => Ok(net::DialTarget::Web(net::WebTarget::new(
                target.url.clone(),
                self.web_hashes(&target.cert_hashes)?,
            ))),
            #[cfg(target_arch = "wasm32")]
            None => Err(End::Refused(
                "a browser replica reaches its server over WebTransport: SyncConfig::web".into(),
            )),
            #[cfg(not(target_arch = "wasm32"))]
            None => Ok(net::DialTarget::Quic(self.config.server)),
        }
    }

    /// Brings in the changes of trees the subscription gained (see
    /// [`super::Coverage`]), before the session that goes on from the cursor: a session of
    /// its own, from the oldest coverage among them, keeps what those trees missed up to the
    /// cursor, then the new coverage is stored.
    async fn backfill(
        &mut self,
        main: &ClientConfig,
        pin: Option<&Pin>,
    ) -> std::result::Result<(), End> {
        let (old, next, from, unstored) = {
            let stored = self.db()?.coverage()?;
            let unstored = stored.is_none();
            // A new database, or one from before coverage was kept: its cursor covers this
            // subscription.
            let old = stored.unwrap_or_else(|| Coverage {
                live: self.config.trees.clone(),
                ..Coverage::default()
            });
            let target = Coverage::effective(&self.config.trees, &old.read);
            let (next, from) = old.resubscribe(&target, main.cursor);
            (old, next, from, unstored)
        };
        let upto = main.cursor;
        if let Some(from) = from {
            tracing::debug!(
                from,
                upto,
                "rekord sync: the subscription grew; fetching what it missed"
            );
            let joining: Vec<String> = if next.live.is_empty() {
                Vec::new()
            } else {
                next.live
                    .iter()
                    .filter(|t| !old.is_live(t))
                    .cloned()
                    .collect()
            };
            let hello = ClientConfig {
                cursor: from,
                trees: joining,
                ..main.clone()
            };
            let mut s = self.dial(&hello, pin).await?;
            let verified = self.check_web_identity(&mut s).await?;
            self.first_contact(s.pin(), s.server_hello().replica, verified)?;
            // Everything first: a change this replica made itself later in the range
            // supersedes the older changes of others to the same record (its own changes
            // are not applied again: the record here already reflects them).
            let mut missed: Vec<Sequenced> = Vec::new();
            loop {
                match s.next_push(self.config.timeout).await? {
                    Some(Push::Changes(entries)) => {
                        missed.extend(entries.into_iter().filter(|e| {
                            let tree = &e.change.tree;
                            e.seq <= upto && !old.is_live(tree) && e.seq > old.covered(tree, upto)
                        }));
                    }
                    Some(Push::CaughtUp { .. }) => break,
                    None => {
                        return Err(End::Lost(
                            "no answer while fetching the changes of newly subscribed trees".into(),
                        ));
                    }
                }
            }
            let me = self.db()?.replica();
            let is_data = |e: &Sequenced| !matches!(e.change.kind, ChangeKind::Borrow { .. });
            let mut last_own: std::collections::HashMap<(&str, u64, u32), u64> =
                std::collections::HashMap::new();
            for e in missed.iter().filter(|e| e.origin == me && is_data(e)) {
                last_own.insert((e.change.tree.as_str(), e.change.id, e.change.rev), e.seq);
            }
            let superseded: HashSet<u64> = missed
                .iter()
                .filter(|e| {
                    is_data(e)
                        && last_own
                            .get(&(e.change.tree.as_str(), e.change.id, e.change.rev))
                            .is_some_and(|&own| e.seq <= own)
                })
                .map(|e| e.seq)
                .collect();
            missed.retain(|e| !superseded.contains(&e.seq));
            for chunk in missed.chunks(4096) {
                let versions: Vec<(String, u32)> = chunk
                    .iter()
                    .filter_map(|e| match &e.change.kind {
                        ChangeKind::Put { version, .. } | ChangeKind::Edit { version, .. } => {
                            Some((e.change.tree.clone(), *version))
                        }
                        _ => None,
                    })
                    .collect();
                self.fetch_schemas(&mut s, &versions).await?;
                let db = self.db()?;
                let mut b = db.write()?;
                let skipped = b.apply_remote(chunk)?;
                // A replica that borrowed a record this one waits to take back, in changes
                // the subscription missed: its version stands (fetched at `CaughtUp`).
                self.reclaiming |= self.has_reclaims()?;
                let taken = self.reclaim_taken(&*b, chunk)?;
                b.commit_for_sync()?;
                self.report_taken(taken);
                for event in skipped {
                    self.emit(event);
                }
            }
            s.close().await;
        }
        if unstored || from.is_some() || next != old {
            let db = self.db()?;
            let b = db.write()?;
            b.store_coverage(&next)?;
            b.commit_for_sync()?;
        }
        Ok(())
    }

    async fn session(&mut self, mut s: Session) -> End {
        let end = self.serve(&mut s).await;
        self.sent_before += s.bytes_sent();
        self.received_before += s.bytes_received();
        let (sent, received) = (self.sent_before, self.received_before);
        self.link
            .update(|st| (st.bytes_sent, st.bytes_received) = (sent, received));
        match &end {
            End::Closed => s.close().await,
            _ => drop(s),
        }
        end
    }

    async fn serve(&mut self, s: &mut Session) -> End {
        match self.serve_inner(s).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn serve_inner(
        &mut self,
        s: &mut Session,
    ) -> std::result::Result<std::convert::Infallible, End> {
        let hello = s.server_hello().clone();
        // Over WebTransport the server proves its identity first: nothing of a first contact
        // (holder number, pin) is stored from a server that fails to.
        let verified = self.check_web_identity(s).await?;
        self.first_contact(s.pin(), hello.replica, verified)?;
        // A server restored from a backup (or any older copy of its file): reconcile from
        // the last change both histories share.
        let mine = self.db()?.history()?;
        // The server knows its whole lineage (a client may have been away for more starts
        // than a hello carries); an older answer without it is computed here.
        let common = match hello
            .common
            .or_else(|| super::diverged(&mine, &hello.history))
        {
            Some(common) => Some(common),
            // Same history, yet behind: nothing is known of where they part.
            None if hello.head < self.cursor => Some(0),
            None => None,
        };
        if let Some(common) = common {
            if self.reconcile(s, common, &hello.history).await? {
                return Err(End::Lost(
                    "reconciled with the server's restored history; reconnecting to receive \
                     its changes"
                        .into(),
                ));
            }
        } else if mine != hello.history {
            let db = self.db()?;
            let b = db.write()?;
            b.store_history(&hello.history)?;
            b.commit_for_sync()?;
        }
        self.prune_journal(hello.head)?;
        // Records waiting to be taken back are retried once caught up (`CaughtUp`): a
        // replica that borrowed one meanwhile shows in the catch-up, and its version then
        // stands (`reclaim_taken`); retried before, this replica's stale copy could be
        // resent over edits made while it was away.
        self.reclaiming = self.has_reclaims()?;
        self.reclaim_due = false;
        self.quiet_reclaim = (crate::rt::after(QUIET_RECLAIM_FIRST), QUIET_RECLAIM_FIRST);
        if self.read_rights_grew(&hello.read)? {
            return Err(End::Lost(
                "the token's read rights changed; reconnecting to fetch what the trees it may \
                 now read missed"
                    .into(),
            ));
        }
        self.head = hello.head;
        self.no_ids = false;
        self.link.update(|st| st.ids_refused = None);
        self.caught_up = false;
        self.uploaded.clear();
        self.link.update(|st| {
            st.online = true;
            st.last_error = None;
            st.refused = None;
        });
        self.emit(SyncEvent::Connected { head: hello.head });
        tracing::debug!(
            head = hello.head,
            cursor = self.cursor,
            "rekord sync: connected"
        );
        self.ensure_ranges(s).await?;
        self.flush(s).await?;
        if let Some(i) = self.interrupted.take() {
            self.answer_borrow(s, i.tree, i.key, i.reply, i.deadline)
                .await?;
        }
        // After this long without a push, a ping checks that the server is still there (a
        // server that vanished without closing is noticed within about `idle_timeout`).
        let quiet = (self.config.idle_timeout / 2).max(Duration::from_millis(50));
        loop {
            // Lazy commits become durable after at most `LAZY_DURABILITY` of quiet too, so
            // a replica killed while idle reopens with what it had.
            let lazy = self.lazy_pending();
            let wait = if lazy {
                LAZY_DURABILITY.min(quiet)
            } else {
                quiet
            };
            // In this order (commands first); each is cancel-safe: a command stays queued, a
            // notification leaves its permit, a push stays buffered in the session.
            use crate::rt::{Either, first};
            let wakeup = match first(
                first(self.commands.recv(), self.link.wake.notified()),
                s.next_push(wait),
            )
            .await
            {
                Either::Left(Either::Left(command)) => Wakeup::Command(command.ok()),
                Either::Left(Either::Right(())) => Wakeup::Outbox,
                Either::Right(push) => Wakeup::Push(push),
            };
            self.publish_traffic(s);
            match wakeup {
                Wakeup::Command(None) => return Err(End::Closed),
                Wakeup::Command(Some(Command::Borrow { tree, key, reply })) => {
                    let deadline = crate::rt::after(self.config.timeout);
                    self.answer_borrow(s, tree, key, reply, deadline).await?;
                }
                Wakeup::Outbox => {
                    self.flush(s).await?;
                    self.ensure_ranges(s).await?;
                }
                Wakeup::Push(Ok(Some(push))) => self.apply_ready(s, push).await?,
                Wakeup::Push(Ok(None)) if lazy => self.make_durable()?,
                Wakeup::Push(Ok(None)) => {
                    self.check_stale();
                    // Quiet: records still waiting to be taken back are tried again (a
                    // return is normally seen as a push; this is the backstop).
                    let (at, gap) = self.quiet_reclaim;
                    if self.reclaiming && self.caught_up && crate::rt::now() >= at {
                        self.reclaim_due = true;
                        let gap = (gap * 2).min(QUIET_RECLAIM_MAX);
                        self.quiet_reclaim = (crate::rt::after(gap), gap);
                    }
                    match crate::rt::timeout(self.config.idle_timeout.max(quiet), s.ping()).await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => {
                            return Err(End::Lost(format!(
                                "the server did not answer a ping within {:?}",
                                self.config.idle_timeout
                            )));
                        }
                    }
                }
                Wakeup::Push(Err(e)) => return Err(e.into()),
            }
            if std::mem::take(&mut self.reclaim_due) {
                self.retry_reclaims(s).await?;
            }
        }
    }

    /// Notes the token's read rights with the subscription coverage; returns whether the
    /// trees received changed (the next connection's backfill fetches what trees that
    /// became readable missed, like trees a subscription gains).
    fn read_rights_grew(&mut self, read: &Option<Vec<String>>) -> std::result::Result<bool, End> {
        let read = super::Readable::from_hello(read);
        let db = self.db()?;
        let b = db.write()?;
        match b.note_read_rights(read, &self.config.trees)? {
            None => Ok(false),
            Some(changed) => {
                b.commit()?;
                Ok(changed)
            }
        }
    }

    /// Asks the server for a borrow and answers the application. A borrow the loss of the
    /// connection interrupted is kept and asked again on the next connection, until
    /// `deadline` (the application hears of an outage only when reconnecting fails or takes
    /// too long, not because one connection broke).
    async fn answer_borrow(
        &mut self,
        s: &mut Session,
        tree: String,
        key: RawKey,
        reply: async_channel::Sender<Result<()>>,
        deadline: Instant,
    ) -> std::result::Result<(), End> {
        match self.borrow(s, &tree, key).await {
            Ok(answer) => {
                let _ = reply.try_send(answer);
                Ok(())
            }
            Err(End::Lost(reason)) if crate::rt::now() < deadline && !reply.is_closed() => {
                tracing::debug!(%reason, %tree, %key, "rekord sync: a borrow was interrupted; asking again after reconnecting");
                self.interrupted = Some(Interrupted {
                    tree,
                    key,
                    reply,
                    deadline,
                    reason: reason.clone(),
                });
                Err(End::Lost(reason))
            }
            Err(end) => {
                let error = match &end {
                    End::Refused(r) => borrow_failed(r.clone(), true),
                    End::Lost(r) => borrow_failed(r.clone(), false),
                    End::Closed => borrow_failed("the database is closing".into(), false),
                };
                let _ = reply.try_send(Err(error));
                Err(end)
            }
        }
    }

    /// Over WebTransport, where the server shows only its WebTransport certificate: it
    /// proved its long-term identity before the hello by signing its certificate
    /// announcement over a fresh nonce with its long-term key (checked against the pin by
    /// the session); the announced hashes are kept to name next time.
    /// The long-term fingerprint it proved (`None` off WebTransport); stores only the
    /// announced hashes ([`Client::first_contact`] stores the pin).
    async fn check_web_identity(
        &mut self,
        s: &mut Session,
    ) -> std::result::Result<Option<String>, End> {
        if !s.is_web() {
            return Ok(None);
        }
        // Proven before the hello (`Session::web_identity`, checked against the pin there).
        let Some((fingerprint, announced)) = s.web_identity().cloned() else {
            return Err(End::Lost(
                "a WebTransport session without the server's signed announcement".into(),
            ));
        };
        let hashes = announced
            .certificates
            .iter()
            .take(8)
            .map(|c| format!("{}:{}", crate::net::hex(&c.hash), c.not_after))
            .collect::<Vec<_>>()
            .join(",");
        let db = self.db()?;
        let b = db.write()?;
        b.store_announced_hashes(&hashes)?;
        b.commit()?;
        Ok(Some(fingerprint))
    }

    /// The WebTransport certificate hashes to name: the configured ones, then those the
    /// server last announced (signed) that have not expired.
    fn web_hashes(&self, configured: &[String]) -> std::result::Result<Vec<String>, End> {
        let mut hashes = configured.to_vec();
        let now = crate::rt::now_ms() / 1000;
        if let Some(text) = self.db()?.announced_hashes()? {
            // A server announces two; a damaged value is read no further than a few.
            for item in text.split(',').take(8) {
                let Some((hash, until)) = item.split_once(':') else {
                    continue;
                };
                let live = until.parse::<u64>().is_ok_and(|u| u > now);
                if live && !hashes.iter().any(|h| h.eq_ignore_ascii_case(hash)) {
                    hashes.push(hash.to_owned());
                }
            }
        }
        Ok(hashes)
    }

    /// Stores the pin and holder number at first contact; checks them afterwards. `verified`:
    /// the long-term fingerprint a WebTransport session proved (pinned rather than what the
    /// session shows).
    fn first_contact(
        &mut self,
        mut pin: Pin,
        replica: u32,
        verified: Option<String>,
    ) -> std::result::Result<(), End> {
        if let Some(fingerprint) = verified {
            pin.cert = fingerprint;
        }
        let db = self.db()?;
        let known = db.replica();
        if known != UNKNOWN_REPLICA && known != replica {
            return Err(End::Refused(format!(
                "the server knows this client as holder {replica}, but its borrows here are \
                 recorded for holder {known}; was the server restored from an old backup?"
            )));
        }
        if known == UNKNOWN_REPLICA {
            let b = db.write()?;
            b.store_first_contact(replica, &pin)?;
            b.commit()?;
            db.set_replica(replica);
            self.link.update(|s| s.replica = Some(replica));
        } else if !pin.cert.is_empty() {
            // Pinned by UUID only so far (first contact over WebTransport, which proves
            // another certificate): the long-term certificate is pinned from now on.
            if let Some(mut bytes) = db.stored_pin()?
                && bytes.len() == 16
            {
                let b = db.write()?;
                bytes.extend_from_slice(pin.cert.as_bytes());
                b.store_pin(&bytes)?;
                b.commit()?;
            }
        }
        Ok(())
    }

    /// Asks for a new id range when fewer than half a range of ids are left.
    async fn ensure_ranges(&mut self, s: &mut Session) -> std::result::Result<(), End> {
        let asked = self.link.ids_wanted.swap(0, Ordering::AcqRel);
        let want = self.config.range_size.max(1);
        loop {
            let left = self.free_ids()?;
            // A write that ran out asked for `asked` ids: fetch until that many are free.
            if asked > 0 && left < asked && !self.no_ids {
                let more = (asked - left).max(want);
                self.grant(s, more).await?;
                if self.free_ids()? <= left {
                    // The server granted nothing this replica can use (none, or ids below
                    // where it stands): not asked again in this session.
                    let reason = "the server granted no usable record ids".to_owned();
                    tracing::warn!("rekord sync: {reason}");
                    self.no_ids = true;
                    self.link.update(|st| {
                        st.ids_refused = Some(reason);
                        st.refills += 1;
                    });
                    return Ok(());
                }
                continue;
            }
            if asked > 0 {
                self.link.update(|st| st.refills += 1);
            }
            if left >= want.div_ceil(2) {
                return Ok(());
            }
            return self.grant(s, want).await;
        }
    }

    /// Ids left in this replica's ranges.
    fn free_ids(&self) -> std::result::Result<u64, End> {
        Ok(self.db()?.free_ids()?)
    }

    /// Asks the server for a range of `want` ids and stores it. A token that may write no
    /// tree gets none: noted, and not asked again in this session (nothing it could create
    /// would be accepted anyway).
    async fn grant(&mut self, s: &mut Session, want: u64) -> std::result::Result<(), End> {
        if self.no_ids {
            return Ok(());
        }
        let granted = match s.ranges(want).await {
            Ok(granted) => granted,
            Err(NetError::Remote(e)) => {
                let reason = NetError::Remote(e).to_string();
                tracing::info!(error = %reason, "rekord sync: no record ids for this token");
                self.no_ids = true;
                self.link.update(|st| st.ids_refused = Some(reason));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let db = self.db()?;
        let b = db.write()?;
        b.add_ranges(&granted)?;
        b.commit()?;
        Ok(())
    }

    /// Sends the outbox, oldest entry first, until it is empty.
    async fn flush(&mut self, s: &mut Session) -> std::result::Result<(), End> {
        let max_entries = self.config.batch_size.clamp(1, crate::proto::MAX_ENTRIES);
        loop {
            let super::local::Run {
                first,
                entries: run,
                oversized,
            } = self.db()?.outbox_run(max_entries, BATCH_BYTES)?;
            if let Some(reason) = oversized {
                // Reported and kept aside like a write the server refused, so that later
                // entries and incoming changes keep flowing.
                let refusal = RemoteError::Invalid(format!("never sent: {reason}"));
                let (refused, _) = self.settle(first, &[EntryOutcome::Rejected(refusal)])?;
                self.resync(s, refused).await?;
                self.processed(first);
                continue;
            }
            if run.is_empty() {
                // Records refetched while writes of theirs waited: fetched now.
                if self.rechecking && self.caught_up {
                    Box::pin(self.recheck(s)).await?;
                }
                return Ok(());
            }
            for c in run.iter().flatten() {
                if let ChangeKind::Put { version, .. } | ChangeKind::Edit { version, .. } = &c.kind
                {
                    self.upload_schema(s, &c.tree, *version).await?;
                }
            }
            for (i, c) in run.iter().enumerate() {
                for c in c {
                    tracing::trace!(
                        entry = first + i as u64, tree = %c.tree, id = c.id, rev = c.rev,
                        kind = c.kind.name(), "rekord sync: sending an outbox entry"
                    );
                }
            }
            self.make_durable()?;
            // In a browser "durable" is stored in IndexedDB: nothing is sent before it is
            // (the entries, and the settling of earlier ones, whose answers the server
            // forgets at this request). Otherwise a crash of the tab before its next flush
            // leaves a stored copy older than what the server has of it: refused as an
            // older copy for good, and in a tab taking over, entry numbers used again.
            #[cfg(target_arch = "wasm32")]
            self.db()?.stored_in_browser().await.map_err(|e| {
                End::Lost(format!(
                    "the outbox waits: what it sends is stored first, and storing failed \
                     ({e})"
                ))
            })?;
            let before = s.bytes_sent();
            let sent = run.len();
            let answer = s
                .request(Request::Entries {
                    first,
                    entries: run,
                })
                .await?;
            let sent_bytes = s.bytes_sent() - before;
            let outcomes = match answer {
                // (More outcomes than entries would settle entries never sent.)
                Response::Entries(o) if !o.is_empty() && o.len() <= sent => o,
                other => {
                    return Err(End::Lost(format!(
                        "the server answered outbox entries with {other:?}"
                    )));
                }
            };
            let (refused, conflicts) = self.settle(first, &outcomes)?;
            self.resync(s, refused).await?;
            // After the resync: a write-through writer told of a refusal finds its local
            // change undone already. Conflicting and skipped entries are sent again.
            let processed = outcomes.iter().take_while(|o| !sent_again(o)).count() as u64;
            self.resolve(s, conflicts).await?;
            if processed > 0 {
                self.processed(first + processed - 1);
            }
            self.publish_traffic(s);
            if let Some(rate) = self.config.replay_bytes_per_sec {
                // Throttle: this batch's bytes at `rate` bytes per second.
                let secs = sent_bytes as f64 / rate.max(1) as f64;
                crate::rt::sleep(Duration::from_secs_f64(secs.min(60.0))).await;
            }
        }
    }

    /// Settles outbox entries `first, first + 1, ...` that the server processed, one per
    /// outcome ([`Write::settle`]), and reports them. Returns the records to resync and the
    /// conflicts to merge ([`Client::resolve`]).
    fn settle(
        &mut self,
        first: u64,
        outcomes: &[EntryOutcome],
    ) -> std::result::Result<Settled, End> {
        let db = self.db()?;
        let b = self.lazy_write(&*db)?;
        let super::local::Settled {
            refused,
            conflicts,
            waited,
            freed,
            left,
        } = b.settle(first, outcomes, self.cursor, self.reclaiming)?;
        b.commit()?;
        if !refused.is_empty() {
            self.rechecking = true;
        }
        let rejected = outcomes
            .iter()
            .enumerate()
            .filter(|(k, o)| {
                matches!(o, EntryOutcome::Rejected(e) if !matches!(e, RemoteError::Conflict(_)))
                    && !waited.contains(k)
            })
            .count() as u64;
        // Counted down, not set to `left`: a local commit may have counted its entries in
        // between this commit and this update. Conflicting and skipped entries stay.
        let settled = outcomes
            .iter()
            .enumerate()
            .filter(|(k, o)| !sent_again(o) && !waited.contains(k))
            .count() as u64;
        let deferred = waited.len() as u64;
        self.link.update(|st| {
            st.outbox = st.outbox.saturating_sub(settled);
            st.outbox_bytes = st.outbox_bytes.saturating_sub(freed);
            st.waiting += deferred;
            st.rejected += rejected;
            st.last_sync = Some(crate::rt::system_now());
        });
        self.stale_reported = false;
        let mut seq = 0;
        for (k, outcome) in outcomes.iter().enumerate() {
            match outcome {
                EntryOutcome::Applied { seq: s } => seq = seq.max(*s),
                EntryOutcome::Duplicate
                | EntryOutcome::Skipped
                | EntryOutcome::Rejected(RemoteError::Conflict(_)) => {}
                EntryOutcome::Rejected(_) if waited.contains(&k) => {
                    self.link.note_waiting(first + k as u64);
                }
                EntryOutcome::Rejected(e) => {
                    let reason = NetError::Remote(e.clone()).to_string();
                    let entry = first + k as u64;
                    self.link.note_refusal(entry, &reason);
                    tracing::warn!(entry, %reason, "rekord sync: the server rejected a local write");
                    self.emit(SyncEvent::Rejected { entry, reason });
                }
            }
        }
        if settled > rejected {
            self.emit(SyncEvent::Pushed { seq, outbox: left });
        }
        Ok((refused, conflicts))
    }

    /// Merges the optimistic edits the server refused with conflicts (see
    /// [`crate::sync::merge`]) and rewrites their entries, in one local transaction.
    async fn resolve(
        &mut self,
        s: &mut Session,
        conflicts: Conflicts,
    ) -> std::result::Result<(), End> {
        if conflicts.is_empty() {
            return Ok(());
        }
        let mut versions = Vec::new();
        for (_, current) in &conflicts {
            versions.push((current.tree.clone(), current.version));
            if let Some((v, _)) = &current.base {
                versions.push((current.tree.clone(), *v));
            }
        }
        self.fetch_schemas(s, &versions).await?;
        let db = self.db()?;
        // Lazily durable: after a crash the entries are still the unmerged ones, which the
        // server refuses again, and the merges are made again.
        let mut b = self.lazy_write(&*db)?;
        let mut events = Vec::with_capacity(conflicts.len());
        let mut delta = 0i64;
        for (entry, current) in conflicts {
            let merge = db.merge_for(&current.tree)?;
            if let Some(resolved) = b.resolve_conflict(entry, &current, merge)? {
                delta += resolved.bytes_delta;
                events.push(resolved.event);
            }
        }
        b.commit_for_sync()?;
        let merged = events.len() as u64;
        self.link.update(|st| {
            st.conflicts += merged;
            st.outbox_bytes = st.outbox_bytes.saturating_add_signed(delta);
        });
        for event in events {
            tracing::debug!(
                tree = %event.tree,
                key = %event.key,
                winner = ?event.winner,
                strategy = %event.strategy,
                "rekord sync: merged a conflicting edit"
            );
            self.emit(SyncEvent::Conflict(Box::new(event)));
        }
        Ok(())
    }

    /// Publishes that the server processed outbox entries up to `last`.
    fn processed(&self, last: u64) {
        self.link
            .update(|st| st.processed_entry = st.processed_entry.max(last));
    }

    /// Makes the local copies of records the server refused changes to (or that a restore
    /// sent again) what the server has (the refused changes stay in
    /// `rekord.outbox_rejected`); a record with local writes waiting in the outbox is
    /// fetched later instead (`rekord.recheck`).
    async fn resync(
        &mut self,
        s: &mut Session,
        keys: Vec<(String, u64)>,
    ) -> std::result::Result<(), End> {
        'keys: for (tree, id) in keys {
            let mut tries = 0;
            let (holder, revisions) = loop {
                tries += 1;
                let answer = s
                    .request(Request::Fetch {
                        tree: tree.clone(),
                        id,
                    })
                    .await?;
                let (holder, revisions) = match answer {
                    Response::Record { holder, revisions } => (holder, revisions),
                    Response::Error(e) => {
                        tracing::warn!(%tree, id, error = ?e, "rekord sync: cannot refetch a record");
                        continue 'keys;
                    }
                    other => {
                        return Err(End::Lost(format!(
                            "the server answered a fetch with {other:?}"
                        )));
                    }
                };
                // Changes the server sent before this answer are applied first. One of them
                // to this record may be newer than the answer (the server pushes from
                // another task than the one answering): then the record is fetched again,
                // after it (a change pushed after the answer is applied after it, and the
                // last push of the record is its latest change).
                let mut touched = false;
                while s.buffered_pushes() > 0 {
                    if let Some(push) = s.next_push(Duration::ZERO).await? {
                        touched |= matches!(&push, Push::Changes(es) if es.iter().any(|e| {
                            e.change.tree == tree && e.change.id == id
                        }));
                        Box::pin(self.apply(s, push)).await?;
                    }
                }
                if !touched || tries >= 4 {
                    break (holder, revisions);
                }
            };
            let versions: Vec<(String, u32)> = revisions
                .iter()
                .map(|r| (tree.clone(), r.version))
                .collect();
            self.fetch_schemas(s, &versions).await?;
            let db = self.db()?;
            let mut b = db.write()?;
            // A local write made since the fetch (or waiting from before it) shows here and
            // goes to the server next: the fetched version would undo it here only, while
            // the server takes it (its push, being this replica's own, is not applied
            // again). A refusal of that write resyncs the record then.
            // It is fetched again once nothing waits for it (`rekord.recheck`).
            if b.outbox_touches(&tree, id)? {
                tracing::debug!(%tree, id, "rekord sync: a refetched record has local writes waiting; kept");
                b.note_recheck(&tree, id)?;
                b.commit_for_sync()?;
                self.rechecking = true;
                continue;
            }
            // Writes that wait with the record to be taken back after a restore were made
            // on this copy too: replaced, it would lose them here only, while they are sent
            // later (the server takes them, this replica skips their echo).
            if b.waits_with_writes(&tree, id)? {
                if holder == db.replica() {
                    // This replica holds it now (its application borrowed it): taken
                    // back. Its waiting writes go now, over its copy, fetched again once
                    // they settle.
                    tracing::debug!(%tree, id, "rekord sync: a refetched record this replica holds again had writes waiting; sent");
                    b.clear_reclaim(&tree, id)?;
                    b.note_recheck(&tree, id)?;
                    let released = self.release_deferred(&*b, &[])?;
                    b.commit_for_sync()?;
                    self.report_released(released);
                    self.rechecking = true;
                    // (The outbox loop sends them: woken, as for any write.)
                    self.link.enqueued(0, 0);
                } else {
                    // Still waiting: kept, and fetched again once nothing waits for it
                    // (the take-back, or another replica's borrow, decides).
                    tracing::debug!(%tree, id, "rekord sync: a refetched record has writes waiting with it; kept");
                    b.note_recheck(&tree, id)?;
                    b.commit_for_sync()?;
                }
                continue;
            }
            b.replace_record(&tree, id, holder, &revisions)?;
            b.clear_recheck(&tree, id)?;
            // The server's version replaced the copy this replica waited to take the record
            // back with: nothing is left to resend, so it no longer waits.
            b.clear_reclaim(&tree, id)?;
            b.commit()?;
        }
        Ok(())
    }

    async fn upload_schema(
        &mut self,
        s: &mut Session,
        tree: &str,
        version: u32,
    ) -> std::result::Result<(), End> {
        let key = (tree.to_owned(), version);
        if self.uploaded.contains(&key) {
            return Ok(());
        }
        let text = self.db()?.schema(tree, version)?;
        if let Some(text) = text {
            match s.put_schema(tree, version, &text).await {
                Ok(()) => {}
                // The change itself will be refused with the reason.
                Err(NetError::Remote(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.uploaded.insert(key);
        Ok(())
    }

    /// Stores the schemas `entries` need that this database does not have yet.
    async fn fetch_schemas(
        &mut self,
        s: &mut Session,
        versions: &[(String, u32)],
    ) -> std::result::Result<(), End> {
        let needed = self.db()?.missing_schemas(versions)?;
        for (tree, version) in needed {
            let request = Request::Schema {
                tree: tree.clone(),
                version,
            };
            let text = match s.request(request).await? {
                Response::Schema(text) => text,
                other => {
                    return Err(End::Lost(format!(
                        "the server has no schema for tree `{tree}` version {version} ({other:?})"
                    )));
                }
            };
            let schema = crate::Schema::from_ron(&text)
                .map_err(|e| End::Lost(format!("the server sent an unreadable schema: {e}")))?;
            if schema.tree != tree || schema.version != version {
                return Err(End::Lost(format!(
                    "the server sent the schema of tree `{}` version {} for tree `{tree}` version {version}",
                    schema.tree, schema.version
                )));
            }
            let db = self.db()?;
            let b = db.write()?;
            b.store_schema(&tree, version, &text)?;
            b.commit()?;
        }
        Ok(())
    }

    /// Applies one push from the server.
    async fn apply(&mut self, s: &mut Session, push: Push) -> std::result::Result<(), End> {
        match push {
            Push::Changes(entries) => {
                let Some(last) = entries.last().map(|e| e.seq) else {
                    return Ok(());
                };
                if last <= self.cursor {
                    return Ok(());
                }
                let versions: Vec<(String, u32)> = entries
                    .iter()
                    .filter_map(|e| match &e.change.kind {
                        ChangeKind::Put { version, .. } | ChangeKind::Edit { version, .. } => {
                            Some((e.change.tree.clone(), *version))
                        }
                        _ => None,
                    })
                    .collect();
                self.fetch_schemas(s, &versions).await?;
                let revoked = self.revoked_borrows(&entries);
                let db = self.db()?;
                let fresh: Vec<Sequenced> = entries
                    .into_iter()
                    .filter(|e| e.seq > self.cursor)
                    .collect();
                for e in &fresh {
                    tracing::trace!(
                        seq = e.seq, tree = %e.change.tree, id = e.change.id, rev = e.change.rev,
                        kind = e.change.kind.name(), "rekord sync: applying a pushed change"
                    );
                }
                let mut b = self.lazy_write(&*db)?;
                let skipped = b.apply_remote(&fresh)?;
                // Whichever path applies the changes (live pushes, a resync's buffered
                // ones, a borrow's wait), in the same commit as the cursor.
                let taken = self.reclaim_taken(&*b, &fresh)?;
                let took = taken.took;
                // Only once caught up: a borrow taken by another replica later in the
                // catch-up must be seen before taking a record back (`CaughtUp` retries).
                // Only the return of a record waiting here makes a retry worth it.
                if self.reclaiming
                    && self.caught_up
                    && !self.reclaim_due
                    && b.returns_a_waiting_record(&fresh)?
                {
                    self.reclaim_due = true;
                }
                b.set_cursor(last);
                b.commit()?;
                self.report_taken(taken);
                if took {
                    // Writes that waited with a record no longer waiting may have joined
                    // the outbox again (`release_deferred`): sent now.
                    self.link.enqueued(0, 0);
                }
                for event in skipped {
                    self.emit(event);
                }
                self.cursor = last;
                self.link.update(|st| {
                    st.cursor = last;
                    st.last_sync = Some(crate::rt::system_now());
                });
                for (tree, id) in revoked {
                    tracing::warn!(%tree, id, "rekord sync: an administrator took back a borrow");
                    self.emit(SyncEvent::BorrowRevoked { tree, id });
                }
                if !self.caught_up {
                    self.emit(SyncEvent::Progress {
                        cursor: last,
                        head: self.head,
                    });
                } else if took {
                    // Live: fetch the other replica's version now (during a catch-up,
                    // `CaughtUp` rechecks, after the older changes replayed).
                    Box::pin(self.recheck(s)).await?;
                }
            }
            Push::CaughtUp { head } => {
                if self.rechecking {
                    Box::pin(self.recheck(s)).await?;
                }
                if self.reclaiming && !self.caught_up {
                    Box::pin(self.retry_reclaims(s)).await?;
                }
                self.drop_unknown_journal_rows()?;
                self.caught_up = true;
                self.head = head;
                let cursor = self.cursor;
                self.link.update(|st| st.caught_up = true);
                self.emit(SyncEvent::CaughtUp { cursor });
            }
        }
        Ok(())
    }

    /// Caught up: every change the server holds of a tree this replica receives came back
    /// with its real number, so the journal rows noted under [`crate::sync::UNKNOWN_SEQ`]
    /// (a tab taking over) of those trees go; those of other trees stay until a
    /// reconciliation.
    fn drop_unknown_journal_rows(&mut self) -> std::result::Result<(), End> {
        let db = self.db()?;
        let mut keys = db.unknown_journal_rows()?;
        if keys.is_empty() {
            return Ok(());
        }
        let coverage = db.coverage()?;
        keys.retain(|(tree, _)| self.receives(coverage.as_ref(), tree));
        if keys.is_empty() {
            return Ok(());
        }
        let b = self.lazy_write(&*db)?;
        b.drop_unknown_journal_rows(&keys)?;
        b.commit()?;
        Ok(())
    }

    /// Whether this replica receives the changes of `tree` (per the stored subscription
    /// coverage, else the configured subscription).
    fn receives(&self, coverage: Option<&Coverage>, tree: &str) -> bool {
        match coverage {
            Some(c) => c.is_live(tree),
            None => self.config.trees.is_empty() || self.config.trees.iter().any(|t| t == tree),
        }
    }

    /// Applies `first` and every push already received after it, consecutive changes in
    /// one local transaction (under load, many small pushes cost one commit, not many).
    async fn apply_ready(&mut self, s: &mut Session, first: Push) -> std::result::Result<(), End> {
        const MAX_MERGED: usize = 4096;
        let mut merged: Vec<Sequenced> = Vec::new();
        let mut next = Some(first);
        while let Some(push) = next.take() {
            match push {
                Push::Changes(entries) => merged.extend(entries),
                other => {
                    if !merged.is_empty() {
                        self.apply(s, Push::Changes(std::mem::take(&mut merged)))
                            .await?;
                    }
                    self.apply(s, other).await?;
                }
            }
            if merged.len() < MAX_MERGED {
                next = s.try_next_push()?;
            }
        }
        if !merged.is_empty() {
            self.apply(s, Push::Changes(merged)).await?;
        }
        Ok(())
    }

    /// Records this replica holds whose borrow `entries` take back by force (origin 0).
    fn revoked_borrows(&self, entries: &[Sequenced]) -> Vec<(String, u64)> {
        let Ok(db) = self.db() else {
            return Vec::new();
        };
        let me = db.replica();
        let mut out = Vec::new();
        for e in entries {
            if e.origin != 0 || e.change.kind != (ChangeKind::Borrow { holder: 0 }) {
                continue;
            }
            if db.holds(&e.change.tree, e.change.id, me).unwrap_or(false) {
                out.push((e.change.tree.clone(), e.change.id));
            }
        }
        out
    }

    async fn borrow(
        &mut self,
        s: &mut Session,
        tree: &str,
        key: RawKey,
    ) -> std::result::Result<Result<()>, End> {
        // Returns queued before this borrow must reach the server first, and their settling
        // be durable: were it lost in a crash, the return would be sent again after the
        // grant, and free the borrow granted now.
        self.flush(s).await?;
        self.make_durable()?;
        let subscribed =
            self.config.trees.is_empty() || self.config.trees.iter().any(|t| t == tree);
        match s.borrow(tree, key.id).await {
            // Granted in a tree whose changes this replica does not receive: no push brings
            // the grant, and the copy here may be stale; take the server's version (with
            // the grant) now, so the holder edits what everyone else has.
            Ok(seq) if seq != 0 && !subscribed => {
                self.resync(s, vec![(tree.to_owned(), key.id)]).await?;
                // The copy here is the server's as of the grant: changes of others up to it,
                // met later (when the tree joins the subscription), are older and skipped.
                let db = self.db()?;
                let b = db.write()?;
                b.note_unpushed_grant(tree, key.id, seq)?;
                b.commit()?;
                Ok(Ok(()))
            }
            // Held already (by the server's word): make sure it shows here.
            Ok(0) => {
                let db = self.db()?;
                let me = db.replica();
                let mut b = db.write()?;
                b.apply_borrow(tree, key.id, me)?;
                b.commit()?;
                Ok(Ok(()))
            }
            Ok(seq) => {
                // The grant arrives as a logged change after every older one (a return
                // by the previous holder, say): apply the log up to it, in order.
                let deadline = crate::rt::after(self.config.timeout);
                while self.cursor < seq {
                    let left = deadline.saturating_duration_since(crate::rt::now());
                    match s.next_push(left).await? {
                        Some(push) => self.apply(s, push).await?,
                        None => {
                            return Err(End::Lost(format!(
                                "the borrow granted under sequence number {seq} did not arrive"
                            )));
                        }
                    }
                }
                // The application is told it holds the record: that must survive a crash.
                self.make_durable()?;
                Ok(Ok(()))
            }
            Err(NetError::Remote(RemoteError::AlreadyBorrowed { holder, name })) => {
                Ok(Err(Error::AlreadyBorrowed {
                    tree: tree.to_owned(),
                    key,
                    holder,
                    holder_name: name,
                }))
            }
            Err(NetError::Remote(e)) => Ok(Err(Error::Refused {
                what: "the borrow",
                reason: NetError::Remote(e).to_string(),
            })),
            Err(e) => Err(e.into()),
        }
    }
}

/// The error a borrow fails with when the server refuses this client or cannot be reached.
fn borrow_failed(reason: String, refused: bool) -> Error {
    let what = "borrowing";
    if refused {
        Error::Refused { what, reason }
    } else {
        Error::Offline { what, reason }
    }
}

/// Answers a command while the server is unreachable (or refuses this client).
fn fail(command: Command, reason: &str, refused: bool) {
    match command {
        Command::Borrow { reply, .. } => {
            let _ = reply.try_send(Err(borrow_failed(reason.to_owned(), refused)));
        }
    }
}

impl From<HandshakeError> for End {
    fn from(e: HandshakeError) -> Self {
        End::Refused(e.to_string())
    }
}
