//! The sync client of a synced database: the protocol's client side over a
//! [`Session`](crate::net::Session), whatever carries it. Natively it runs on a thread of its
//! own with a tokio runtime (QUIC, or WebTransport with the `web-transport` feature); in a
//! browser it runs on the page's event loop (`wasm-bindgen-futures`), over the page's
//! WebTransport. Its only timers are [`crate::rt`]'s.

mod restore;

use super::outbox::{self, Entry};
use super::{
    CLIENT, COVERAGE, CURSOR, Coverage, MODE, PIN, REPLICA, SyncConfig, SyncStatus,
    UNKNOWN_REPLICA, WEB_HASHES,
};
use crate::db::{DbInner, read_u64};
use crate::event::{Event, SyncEvent, lock};
use crate::net::{self, NetError, Pin, Session};
use crate::proto::handshake::{ClientConfig, HandshakeError};
use crate::proto::{ChangeKind, EntryOutcome, Push, RemoteError, Request, Response, Sequenced};
use crate::rt::Instant;
use crate::storage::{
    DEFERRED, JOURNAL, META, OUTBOX, PENDING, RANGES, RECHECK, RECLAIM, REJECTED, SCHEMAS,
};
use crate::{Error, RawKey, Result};
use redb::{ReadableTable, ReadableTableMetadata};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
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

impl Link {
    /// The bound on each request to the server ([`SyncConfig::timeout`]).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
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
    /// timeout; a refusal of any of them is [`Error::Refused`].
    pub(crate) fn await_entries(&self, db: &DbInner, first: u64, last: u64) -> Result<()> {
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
        let txn = db.redb.begin_read()?;
        let rejected = txn
            .open_table(REJECTED)?
            .range(first..=last)?
            .next()
            .is_some();
        if rejected {
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

    fn update(&self, f: impl FnOnce(&mut SyncStatus)) {
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
        let deadline = Instant::now() + timeout;
        let mut status = lock(&self.status);
        loop {
            if done(&status) {
                return (true, status.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
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

/// Random bytes from the operating system (through the TLS library's source), or the
/// browser's `crypto.getRandomValues`.
pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    let failed = |_| Error::CorruptMeta {
        reason: "the operating system gave no random bytes for the client identity".into(),
    };
    #[cfg(not(target_arch = "wasm32"))]
    quinn::rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(failed)?;
    #[cfg(target_arch = "wasm32")]
    getrandom::getrandom(&mut buf).map_err(failed)?;
    Ok(buf)
}

fn unit_random() -> f64 {
    random::<8>().map_or(0.5, |b| {
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Prepares the client-mode bookkeeping of a database being initialized.
pub(crate) fn init_meta(meta: &mut redb::Table<'_, &str, &[u8]>, created: bool) -> Result<u32> {
    if created {
        meta.insert(MODE, b"client".as_slice())?;
        meta.insert(CLIENT, random::<16>()?.as_slice())?;
        meta.insert(CURSOR, 0u64.to_le_bytes().as_slice())?;
    }
    let replica = meta
        .get(REPLICA)?
        .and_then(|v| v.value().first_chunk::<4>().map(|b| u32::from_le_bytes(*b)));
    Ok(replica.unwrap_or(UNKNOWN_REPLICA))
}

/// The sync client of a database opened with [`crate::Db::open_synced_driven`]: a future to
/// run on the application's executor (it ends when the database closes).
pub type SyncDriver = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Starts the sync client of `db`: on a thread of its own (a task in a browser), or, when
/// `driven`, as the returned future for the application to run.
pub(crate) fn start_with(
    db: &Arc<DbInner>,
    config: SyncConfig,
    driven: bool,
) -> Result<(Arc<Link>, Option<SyncDriver>)> {
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
    let (client_id, cursor, replica) = {
        let txn = db.redb.begin_read()?;
        let meta = txn.open_table(META)?;
        let id = meta
            .get(CLIENT)?
            .and_then(|v| v.value().first_chunk::<16>().copied())
            .ok_or_else(|| Error::CorruptMeta {
                reason: "the synced database has no client identity".into(),
            })?;
        let cursor = meta
            .get(CURSOR)?
            .and_then(|v| read_u64(v.value()))
            .unwrap_or(0);
        (id, cursor, db.replica.load(Ordering::Acquire))
    };
    let (outbox, outbox_bytes, rejected, waiting) = counts(db)?;
    link.update(|s| {
        s.cursor = cursor;
        s.outbox = outbox;
        s.waiting = waiting;
        s.outbox_bytes = outbox_bytes;
        s.rejected = rejected;
        s.replica = (replica != UNKNOWN_REPLICA).then_some(replica);
    });
    let client = Client {
        db: Arc::downgrade(db),
        link: link.clone(),
        config,
        commands: commands_rx,
        client_id,
        cursor,
        head: 0,
        caught_up: false,
        uploaded: HashSet::new(),
        last_durable: Instant::now(),
        stale_reported: false,
        sent_before: 0,
        received_before: 0,
        interrupted: None,
        reclaiming: false,
        reclaim_due: false,
        quiet_reclaim: (Instant::now(), QUIET_RECLAIM_FIRST),
        no_ids: false,
        rechecking: true,
    };
    let weak = Arc::downgrade(db);
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
        if let Some(db) = weak.upgrade()
            && let Err(e) = crate::tree::batch::Batch::make_durable(&db)
        {
            tracing::warn!(error = %e, "rekord sync: cannot make the last commits durable");
        }
        done_link.update(|s| s.online = false);
    };
    if driven {
        return Ok((link, Some(Box::pin(drive()))));
    }
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
                runtime.block_on(drive());
            })
            .map_err(|e| Error::Offline {
                what: "starting the sync client",
                reason: e.to_string(),
            })?;
        *lock(&link.thread) = Some(handle);
    }
    #[cfg(target_arch = "wasm32")]
    wasm_bindgen_futures::spawn_local(drive());
    Ok((link, None))
}

/// Outbox entries and bytes, and rejected entries.
fn counts(db: &DbInner) -> Result<(u64, u64, u64, u64)> {
    let txn = db.redb.begin_read()?;
    let table = txn.open_table(OUTBOX)?;
    let mut bytes = 0u64;
    for row in table.iter()? {
        bytes += row?.1.value().len() as u64;
    }
    let mut outbox = table.len()?;
    let mut waiting = 0;
    // Entries waiting for records to be taken back after a restore are still to push.
    match txn.open_table(DEFERRED) {
        Ok(deferred) => {
            for row in deferred.iter()? {
                bytes += row?.1.value().len() as u64;
                outbox += 1;
                waiting += 1;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let rejected = txn.open_table(REJECTED)?.len()?;
    Ok((outbox, bytes, rejected, waiting))
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
    db: Weak<DbInner>,
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

/// An outbox entry the server refused with a conflict, and the server's version.
struct Conflicted {
    entry: u64,
    current: Box<crate::proto::Current>,
}

/// What settling outbox entries left to do: records to resync (refused changes) and a
/// conflict to merge.
type Settled = (Vec<(String, u64)>, Vec<Conflicted>);

/// Whether record `key` waits in `rekord.reclaim` to be taken back after a restore.
fn waits(
    reclaim: &impl ReadableTable<(&'static str, u64), u64>,
    key: &(String, u64),
) -> std::result::Result<bool, End> {
    Ok(reclaim
        .get((key.0.as_str(), key.1))
        .map_err(Error::from)?
        .is_some())
}

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
    fn db(&self) -> std::result::Result<crate::Db, End> {
        self.db
            .upgrade()
            .map(crate::Db::internal)
            .ok_or(End::Closed)
    }

    /// A batch for the sync client's own bookkeeping (applied server changes, settled
    /// outbox entries), durable only every [`LAZY_DURABILITY`]: the cursor is committed
    /// atomically with the data it covers, so a crash loses at most a suffix of such commits,
    /// which are fetched (or resent, idempotently) again. The application's own writes stay
    /// durable, and each of them makes the earlier lazy commits durable too.
    fn lazy_batch<'d>(&mut self, db: &'d crate::Db) -> Result<crate::Batch<'d>> {
        let mut b = db.batch()?;
        if self.last_durable.elapsed() < LAZY_DURABILITY {
            b.lazy();
        } else {
            self.last_durable = Instant::now();
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
        let db = self.db()?;
        if crate::tree::batch::Batch::make_durable(&db.inner)? {
            self.last_durable = Instant::now();
        }
        Ok(())
    }

    /// Whether a lazy commit is not durable yet.
    fn lazy_pending(&self) -> bool {
        self.db.upgrade().is_some_and(|db| lock(&db.writer).lazy)
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
        let Some(db) = self.db.upgrade() else {
            return;
        };
        let oldest = (|| -> Result<Option<u64>> {
            let txn = db.redb.begin_read()?;
            let table = txn.open_table(OUTBOX)?;
            Ok(match table.first()? {
                Some((_, v)) => Some(outbox::decode(v.value())?.0),
                None => None,
            })
        })();
        drop(db);
        let Ok(Some(at)) = oldest else {
            return;
        };
        let age = Duration::from_millis(outbox::now_ms().saturating_sub(at));
        if age > max {
            self.stale_reported = true;
            let entries = self.link.status().outbox;
            tracing::warn!(?age, entries, "rekord sync: the outbox is stale");
            self.emit(SyncEvent::OutboxStale { age, entries });
        }
    }

    fn emit(&self, event: SyncEvent) {
        if let Some(db) = self.db.upgrade() {
            // In a browser, the other tabs sharing the database hear it too.
            #[cfg(target_arch = "wasm32")]
            if let Some(tab) = db.browser.get().and_then(|h| h.tab()) {
                crate::storage::tabs::sync_event(tab, &event);
            }
            db.deliver(&[Event::Sync(event)]);
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
                        matches!(end, End::Refused(_)) || Instant::now() >= i.deadline
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
                delay = delay.min(i.deadline.saturating_duration_since(Instant::now()));
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
        let db = self.db()?;
        let (cursor, pin, history, last_entry) = {
            let txn = db.inner.redb.begin_read().map_err(Error::from)?;
            let meta = txn.open_table(META).map_err(Error::from)?;
            let history = restore::stored_history(&meta)?;
            let cursor = meta
                .get(CURSOR)
                .map_err(Error::from)?
                .and_then(|v| read_u64(v.value()))
                .unwrap_or(0);
            let pin = meta.get(PIN).map_err(Error::from)?.and_then(|v| {
                let (server, cert) = v.value().split_first_chunk::<16>()?;
                Some(Pin {
                    server: *server,
                    cert: String::from_utf8(cert.to_vec()).ok()?,
                })
            });
            let last_entry = outbox::last_made(&meta)?;
            (cursor, pin, history, last_entry)
        };
        drop(db);
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
                let r = self.db()?.inner.replica.load(Ordering::Acquire);
                if r == UNKNOWN_REPLICA { 0 } else { r }
            },
            history,
            last_entry,
        };
        self.backfill(&hello, pin.as_ref()).await?;
        self.dial(&hello, pin.as_ref()).await
    }

    /// Connects with `hello` over the configured transport.
    async fn dial(
        &self,
        hello: &ClientConfig,
        pin: Option<&Pin>,
    ) -> std::result::Result<Session, End> {
        let options = net::ConnectOptions::default().timeout(self.config.timeout);
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(connector) = &self.config.connector {
            let stream = connector.connect().await?;
            return Ok(net::connect_stream(stream, hello, pin, self.config.timeout).await?);
        }
        let learned = match &self.config.web_transport {
            Some(target) if target.webpki => Some(target.clone()),
            Some(target) => Some(net::WebTarget::new(
                target.url.clone(),
                self.web_hashes(&target.cert_hashes)?,
            )),
            None => None,
        };
        match &learned {
            #[cfg(target_arch = "wasm32")]
            Some(target) => Ok(net::connect_browser(target, hello, pin, options).await?),
            #[cfg(target_arch = "wasm32")]
            None => Err(End::Refused(
                "a browser replica reaches its server over WebTransport: SyncConfig::web".into(),
            )),
            #[cfg(all(feature = "web-transport", not(target_arch = "wasm32")))]
            Some(target) => Ok(net::connect_web(target, hello, pin, options).await?),
            #[cfg(all(not(feature = "web-transport"), not(target_arch = "wasm32")))]
            Some(_) => Err(End::Refused(
                "SyncConfig::web_transport needs the crate feature `web-transport` natively".into(),
            )),
            #[cfg(not(target_arch = "wasm32"))]
            None => Ok(net::connect_with(self.config.server, hello, pin, options).await?),
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
            let db = self.db()?;
            let txn = db.inner.redb.begin_read().map_err(Error::from)?;
            let meta = txn.open_table(META).map_err(Error::from)?;
            let stored = stored_coverage(&meta)?;
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
            let me = self.db()?.inner.replica.load(Ordering::Acquire);
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
                let mut b = db.batch()?;
                let skipped = b.apply_remote(chunk)?;
                // A replica that borrowed a record this one waits to take back, in changes
                // the subscription missed: its version stands (fetched at `CaughtUp`).
                self.reclaiming |= self.has_reclaims()?;
                let taken = self.reclaim_taken(&b, chunk)?;
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
            let b = db.batch()?;
            store_coverage(&mut b.txn.open_table(META).map_err(Error::from)?, &next)?;
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
        let mine = {
            let db = self.db()?;
            let txn = db.inner.redb.begin_read().map_err(Error::from)?;
            let meta = txn.open_table(META).map_err(Error::from)?;
            restore::stored_history(&meta)?
        };
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
            let b = db.batch()?;
            restore::store_history(
                &mut b.txn.open_table(META).map_err(Error::from)?,
                &hello.history,
            )?;
            b.commit_for_sync()?;
        }
        self.prune_journal()?;
        // Records waiting to be taken back are retried once caught up (`CaughtUp`): a
        // replica that borrowed one meanwhile shows in the catch-up, and its version then
        // stands (`reclaim_taken`); retried before, this replica's stale copy could be
        // resent over edits made while it was away.
        self.reclaiming = self.has_reclaims()?;
        self.reclaim_due = false;
        self.quiet_reclaim = (Instant::now() + QUIET_RECLAIM_FIRST, QUIET_RECLAIM_FIRST);
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
                    let deadline = Instant::now() + self.config.timeout;
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
                    if self.reclaiming && self.caught_up && Instant::now() >= at {
                        self.reclaim_due = true;
                        let gap = (gap * 2).min(QUIET_RECLAIM_MAX);
                        self.quiet_reclaim = (Instant::now() + gap, gap);
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
        let b = db.batch()?;
        let changed = {
            let mut meta = b.txn.open_table(META).map_err(Error::from)?;
            let Some(mut c) = stored_coverage(&meta)? else {
                return Ok(false);
            };
            if c.read == read {
                return Ok(false);
            }
            let known = c.read != super::Readable::Unknown;
            c.read = read;
            let target = Coverage::effective(&self.config.trees, &c.read);
            if !known {
                // What this replica received so far was limited by these rights already.
                c.live = target;
                store_coverage(&mut meta, &c)?;
                false
            } else {
                store_coverage(&mut meta, &c)?;
                target != c.live
            }
        };
        b.commit()?;
        Ok(changed)
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
            Err(End::Lost(reason)) if Instant::now() < deadline && !reply.is_closed() => {
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
        let b = db.batch()?;
        b.txn
            .open_table(META)
            .map_err(Error::from)?
            .insert(WEB_HASHES, hashes.as_bytes())
            .map_err(Error::from)?;
        b.commit()?;
        Ok(Some(fingerprint))
    }

    /// The WebTransport certificate hashes to name: the configured ones, then those the
    /// server last announced (signed) that have not expired.
    fn web_hashes(&self, configured: &[String]) -> std::result::Result<Vec<String>, End> {
        let mut hashes = configured.to_vec();
        let db = self.db()?;
        let txn = db.inner.redb.begin_read().map_err(Error::from)?;
        let meta = txn.open_table(META).map_err(Error::from)?;
        let now = outbox::now_ms() / 1000;
        if let Some(v) = meta.get(WEB_HASHES).map_err(Error::from)? {
            let text = String::from_utf8_lossy(v.value()).into_owned();
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
        let known = db.inner.replica.load(Ordering::Acquire);
        if known != UNKNOWN_REPLICA && known != replica {
            return Err(End::Refused(format!(
                "the server knows this client as holder {replica}, but its borrows here are \
                 recorded for holder {known}; was the server restored from an old backup?"
            )));
        }
        if known == UNKNOWN_REPLICA {
            let b = db.batch()?;
            {
                let mut meta = b.txn.open_table(META).map_err(Error::from)?;
                meta.insert(REPLICA, replica.to_le_bytes().as_slice())
                    .map_err(Error::from)?;
                let mut bytes = pin.server.to_vec();
                bytes.extend_from_slice(pin.cert.as_bytes());
                meta.insert(PIN, bytes.as_slice()).map_err(Error::from)?;
            }
            b.commit()?;
            db.inner.replica.store(replica, Ordering::Release);
            self.link.update(|s| s.replica = Some(replica));
        } else if !pin.cert.is_empty() {
            // Pinned by UUID only so far (first contact over WebTransport, which proves
            // another certificate): the long-term certificate is pinned from now on.
            let stored = {
                let txn = db.inner.redb.begin_read().map_err(Error::from)?;
                let meta = txn.open_table(META).map_err(Error::from)?;
                meta.get(PIN)
                    .map_err(Error::from)?
                    .map(|v| v.value().to_vec())
            };
            if let Some(stored) = stored
                && stored.len() == 16
            {
                let b = db.batch()?;
                {
                    let mut meta = b.txn.open_table(META).map_err(Error::from)?;
                    let mut bytes = stored;
                    bytes.extend_from_slice(pin.cert.as_bytes());
                    meta.insert(PIN, bytes.as_slice()).map_err(Error::from)?;
                }
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
        let db = self.db()?;
        let next = lock(&db.inner.writer).next_id;
        let txn = db.inner.redb.begin_read().map_err(Error::from)?;
        let ranges = txn.open_table(RANGES).map_err(Error::from)?;
        let mut left = 0u64;
        for row in ranges.iter().map_err(Error::from)? {
            let (start, end) = row.map_err(Error::from)?;
            left = left.saturating_add(end.value().saturating_sub(start.value().max(next)));
        }
        Ok(left)
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
        let b = db.batch()?;
        {
            let mut ranges = b.txn.open_table(RANGES).map_err(Error::from)?;
            for (start, end) in granted {
                ranges.insert(start, end).map_err(Error::from)?;
            }
        }
        b.commit()?;
        Ok(())
    }

    /// Sends the outbox, oldest entry first, until it is empty.
    async fn flush(&mut self, s: &mut Session) -> std::result::Result<(), End> {
        let max_entries = self.config.batch_size.clamp(1, crate::proto::MAX_ENTRIES);
        loop {
            // The next run of up to `max_entries` consecutive entries (changes and
            // returns, all numbered: a resent one is answered with its first outcome) of at
            // most about `BATCH_BYTES`.
            let (first, run, oversized) = {
                let db = self.db()?;
                let txn = db.inner.redb.begin_read().map_err(Error::from)?;
                let table = txn.open_table(OUTBOX).map_err(Error::from)?;
                let mut first = 0;
                let mut run: Vec<Vec<crate::proto::Change>> = Vec::new();
                let mut oversized = None;
                let mut bytes = 0usize;
                for row in table.iter().map_err(Error::from)? {
                    let (k, v) = row.map_err(Error::from)?;
                    let n = k.value();
                    if run.is_empty() {
                        first = n;
                    } else if n != first + run.len() as u64
                        || run.len() >= max_entries
                        || bytes + v.value().len() > BATCH_BYTES
                    {
                        break;
                    }
                    match outbox::decode(v.value())?.1 {
                        // An entry no request can carry (written by a version that did not
                        // check sizes at commit): set aside below, alone.
                        Entry::Changes(changes)
                            if let Some(e) =
                                outbox::too_large(&changes, v.value().len() as u64) =>
                        {
                            if run.is_empty() {
                                oversized = Some(e.to_string());
                            }
                            break;
                        }
                        Entry::Changes(changes) => {
                            bytes += v.value().len();
                            run.push(changes);
                        }
                        Entry::Return { tree, id } => {
                            bytes += v.value().len();
                            run.push(vec![crate::proto::Change {
                                tree,
                                id,
                                rev: 0,
                                kind: ChangeKind::Borrow { holder: 0 },
                            }]);
                        }
                    }
                }
                (first, run, oversized)
            };
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
            {
                let db = self.db()?;
                if let Some(h) = db.inner.browser.get() {
                    h.flush().await.map_err(|e| {
                        End::Lost(format!(
                            "the outbox waits: what it sends is stored first, and storing \
                             failed ({e})"
                        ))
                    })?;
                }
            }
            let before = s.bytes_sent();
            let answer = s
                .request(Request::Entries {
                    first,
                    entries: run,
                })
                .await?;
            let sent_bytes = s.bytes_sent() - before;
            let outcomes = match answer {
                Response::Entries(o) if !o.is_empty() => o,
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

    /// Removes outbox entries `first, first + 1, ...` that the server processed (one per
    /// outcome): accepted ones go, rejected ones are kept aside in `rekord.outbox_rejected`,
    /// except one refused with a conflict, which is returned for [`Client::resolve`]. Returns
    /// the records to resync and that conflict.
    fn settle(
        &mut self,
        first: u64,
        outcomes: &[EntryOutcome],
    ) -> std::result::Result<Settled, End> {
        let mut refused: Vec<(String, u64)> = Vec::new();
        let mut conflicts = Vec::new();
        // Outcomes (by index) of entries that wait with records to be taken back.
        let mut waited: Vec<usize> = Vec::new();
        let db = self.db()?;
        let b = self.lazy_batch(&db)?;
        let mut freed = 0u64;
        let left = {
            let mut table = b.txn.open_table(OUTBOX).map_err(Error::from)?;
            let mut aside = b.txn.open_table(REJECTED).map_err(Error::from)?;
            let mut pending = b.txn.open_table(PENDING).map_err(Error::from)?;
            let mut journal = b.txn.open_table(JOURNAL).map_err(Error::from)?;
            // A refused record is fetched again (`resync`, right after this); noted here
            // too, in the commit that sets the entry aside, so that a session ending before
            // that fetch completes still fetches it once caught up.
            let mut recheck = b.txn.open_table(RECHECK).map_err(Error::from)?;
            let mut reclaim = b.txn.open_table(RECLAIM).map_err(Error::from)?;
            let mut deferred = b.txn.open_table(DEFERRED).map_err(Error::from)?;
            let any_pending = !pending.is_empty().map_err(Error::from)?;
            for (k, outcome) in outcomes.iter().enumerate() {
                let n = first + k as u64;
                tracing::trace!(
                    entry = n,
                    outcome = match outcome {
                        EntryOutcome::Applied { .. } => "applied",
                        EntryOutcome::Duplicate => "duplicate",
                        EntryOutcome::Skipped => "skipped",
                        EntryOutcome::Rejected(RemoteError::Conflict(_)) => "conflict",
                        EntryOutcome::Rejected(_) => "rejected",
                    },
                    "rekord sync: entry outcome"
                );
                match outcome {
                    EntryOutcome::Rejected(RemoteError::Conflict(current)) => {
                        // The entry stays (the merge rewrites it) and its optimistic edits
                        // stay counted as pending.
                        conflicts.push(Conflicted {
                            entry: n,
                            current: current.clone(),
                        });
                        continue;
                    }
                    // Sent again later.
                    EntryOutcome::Skipped => continue,
                    _ => {}
                }
                let entry = table
                    .remove(n)
                    .map_err(Error::from)?
                    .map(|v| v.value().to_vec());
                let Some(entry) = entry else {
                    continue;
                };
                freed += entry.len() as u64;
                if let EntryOutcome::Applied { seq } = outcome {
                    // Noted now, not only when the change comes back as a push: a restore
                    // of the server in between must not lose it.
                    let keys = outbox::keys(&entry)?;
                    let count = keys.len() as u64;
                    let at = outbox::now_ms() << 1;
                    for (i, (tree, id)) in keys.iter().enumerate() {
                        let seq = seq.saturating_sub(count - 1 - i as u64);
                        journal
                            .insert((seq, tree.as_str(), *id), at | 1)
                            .map_err(Error::from)?;
                    }
                }
                let rejected = matches!(outcome, EntryOutcome::Rejected(_));
                let decoded_return = if self.reclaiming {
                    Some(outbox::decode(&entry)?.1)
                } else {
                    None
                };
                let waited_return = match decoded_return {
                    Some(Entry::Return { tree, id }) => {
                        let at = reclaim
                            .get((tree.as_str(), id))
                            .map_err(Error::from)?
                            .map(|v| v.value());
                        at.map(|at| (tree, id, at))
                    }
                    _ => None,
                };
                if let Some((tree, id, at)) = waited_return {
                    // The application returned a record it waits to take back (the server,
                    // which gives it to another replica, takes the return as a no-op): the
                    // borrow is returned after the record is sent again.
                    reclaim
                        .insert((tree.as_str(), id), at & !1)
                        .map_err(Error::from)?;
                }
                if !rejected && !any_pending {
                    continue;
                }
                let decoded = outbox::decode(&entry)?.1;
                // Records waiting to be taken back after a restore (`rekord.reclaim`): the
                // server refuses their writes until this replica has their borrows again.
                // An entry that changes one of them waits with it, whole (other records it
                // changes too: a batch stays one), in `rekord.deferred`: neither set aside
                // nor reported, its local changes kept; it is sent again once they are
                // taken back, or rejected if another replica takes one first.
                let borrow_refusal = matches!(
                    outcome,
                    EntryOutcome::Rejected(
                        RemoteError::NotBorrowed | RemoteError::AlreadyBorrowed { .. }
                    )
                );
                if borrow_refusal {
                    let keys = outbox::keys(&entry)?;
                    let mut any_waits = false;
                    for key in &keys {
                        any_waits |= waits(&reclaim, key)?;
                    }
                    let optimistic = matches!(&decoded, Entry::Changes(cs)
                        if cs.iter().any(|c| matches!(c.kind, ChangeKind::Edit { .. })));
                    if any_waits && !optimistic {
                        deferred.insert(n, entry.as_slice()).map_err(Error::from)?;
                        // Still to push: counted in the outbox.
                        freed -= entry.len() as u64;
                        tracing::debug!(
                            entry = n,
                            "rekord sync: a write to a record waiting to be taken back after the \
                             restore waits with it"
                        );
                        waited.push(k);
                        continue;
                    }
                }
                let changes = match decoded {
                    Entry::Changes(changes) => changes,
                    Entry::Return { tree, id } => {
                        let key = (tree, id);
                        if rejected && !refused.contains(&key) && !waits(&reclaim, &key)? {
                            recheck
                                .insert((key.0.as_str(), id), ())
                                .map_err(Error::from)?;
                            refused.push(key);
                        }
                        Vec::new()
                    }
                };
                // Sequence numbers of the entry's changes (consecutive, the last one's given).
                let last_seq = match outcome {
                    EntryOutcome::Applied { seq } => Some(*seq),
                    _ => None,
                };
                let count = changes.len() as u64;
                for (i, c) in changes.iter().enumerate() {
                    let ChangeKind::Edit { version, data, .. } = &c.kind else {
                        continue;
                    };
                    let key = (c.tree.as_str(), c.id);
                    let row = pending
                        .get(key)
                        .map_err(Error::from)?
                        .map(|v| outbox::PendingRow::decode(v.value()));
                    let Some(mut row) = row else {
                        continue;
                    };
                    row.count = row.count.saturating_sub(1);
                    if !rejected {
                        // Accepted: the common ancestor of the edits still waiting, and
                        // newer than any pushed change before it.
                        row.base_value = crate::storage::Header::draft_value(*version, data);
                        if let Some(last) = last_seq {
                            let seq = last.saturating_sub(count - 1 - i as u64);
                            row.floor = row.floor.max(seq);
                        }
                    }
                    if row.count == 0 && (rejected || row.floor <= self.cursor) {
                        pending.remove(key).map_err(Error::from)?;
                    } else {
                        pending
                            .insert(key, row.encode().as_slice())
                            .map_err(Error::from)?;
                    }
                }
                if rejected {
                    aside.insert(n, entry.as_slice()).map_err(Error::from)?;
                    for c in changes {
                        let key = (c.tree, c.id);
                        // A waiting record keeps its copy (sent again once taken back).
                        if refused.contains(&key) || waits(&reclaim, &key)? {
                            continue;
                        }
                        recheck
                            .insert((key.0.as_str(), key.1), ())
                            .map_err(Error::from)?;
                        refused.push(key);
                    }
                }
            }
            table.len().map_err(Error::from)?
        };
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
        conflicts: Vec<Conflicted>,
    ) -> std::result::Result<(), End> {
        if conflicts.is_empty() {
            return Ok(());
        }
        let mut versions = Vec::new();
        for c in &conflicts {
            versions.push((c.current.tree.clone(), c.current.version));
            if let Some((v, _)) = &c.current.base {
                versions.push((c.current.tree.clone(), *v));
            }
        }
        self.fetch_schemas(s, &versions).await?;
        let db = self.db()?;
        // Lazily durable: after a crash the entries are still the unmerged ones, which the
        // server refuses again, and the merges are made again.
        let mut b = self.lazy_batch(&db)?;
        let mut events = Vec::with_capacity(conflicts.len());
        let mut delta = 0i64;
        for c in conflicts {
            let merge = db.inner.merge_for(&c.current.tree)?;
            if let Some(resolved) = b.resolve_conflict(c.entry, &c.current, merge)? {
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
            let mut b = db.batch()?;
            // A local write made since the fetch (or waiting from before it) shows here and
            // goes to the server next: the fetched version would undo it here only, while
            // the server takes it (its push, being this replica's own, is not applied
            // again). A refusal of that write resyncs the record then.
            // It is fetched again once nothing waits for it (`rekord.recheck`).
            if outbox::touches(&b.txn, &tree, id)? {
                tracing::debug!(%tree, id, "rekord sync: a refetched record has local writes waiting; kept");
                b.txn
                    .open_table(RECHECK)
                    .map_err(Error::from)?
                    .insert((tree.as_str(), id), ())
                    .map_err(Error::from)?;
                b.commit_for_sync()?;
                self.rechecking = true;
                continue;
            }
            b.replace_record(&tree, id, holder, &revisions)?;
            b.txn
                .open_table(RECHECK)
                .map_err(Error::from)?
                .remove((tree.as_str(), id))
                .map_err(Error::from)?;
            // The server's version replaced the copy this replica waited to take the record
            // back with: nothing is left to resend, so it no longer waits.
            b.txn
                .open_table(crate::storage::RECLAIM)
                .map_err(Error::from)?
                .remove((tree.as_str(), id))
                .map_err(Error::from)?;
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
        let text = {
            let db = self.db()?;
            let txn = db.inner.redb.begin_read().map_err(Error::from)?;
            let schemas = txn.open_table(SCHEMAS).map_err(Error::from)?;
            schemas
                .get((tree, version))
                .map_err(Error::from)?
                .map(|v| v.value().to_owned())
        };
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
        let mut needed: Vec<(String, u32)> = Vec::new();
        {
            let db = self.db()?;
            let txn = db.inner.redb.begin_read().map_err(Error::from)?;
            let schemas = txn.open_table(SCHEMAS).map_err(Error::from)?;
            for key in versions {
                if !needed.contains(key)
                    && schemas
                        .get((key.0.as_str(), key.1))
                        .map_err(Error::from)?
                        .is_none()
                {
                    needed.push(key.clone());
                }
            }
        }
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
            let b = db.batch()?;
            {
                let mut schemas = b.txn.open_table(SCHEMAS).map_err(Error::from)?;
                if schemas
                    .get((tree.as_str(), version))
                    .map_err(Error::from)?
                    .is_none()
                {
                    schemas
                        .insert((tree.as_str(), version), text.as_str())
                        .map_err(Error::from)?;
                }
            }
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
                let mut b = self.lazy_batch(&db)?;
                let skipped = b.apply_remote(&fresh)?;
                // Whichever path applies the changes (live pushes, a resync's buffered
                // ones, a borrow's wait), in the same commit as the cursor.
                let taken = self.reclaim_taken(&b, &fresh)?;
                let took = taken.took;
                // Only once caught up: a borrow taken by another replica later in the
                // catch-up must be seen before taking a record back (`CaughtUp` retries).
                // Only the return of a record waiting here makes a retry worth it.
                if self.reclaiming && self.caught_up && !self.reclaim_due {
                    let reclaim = b.txn.open_table(RECLAIM).map_err(Error::from)?;
                    for e in &fresh {
                        if matches!(e.change.kind, ChangeKind::Borrow { holder: 0 })
                            && reclaim
                                .get((e.change.tree.as_str(), e.change.id))
                                .map_err(Error::from)?
                                .is_some()
                        {
                            self.reclaim_due = true;
                            break;
                        }
                    }
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
        let unknown = crate::sync::UNKNOWN_SEQ;
        let keys: Vec<(String, u64)> = {
            let txn = db.inner.redb.begin_read().map_err(Error::from)?;
            let journal = match txn.open_table(JOURNAL) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(Error::from(e).into()),
            };
            let coverage = stored_coverage(&txn.open_table(META).map_err(Error::from)?)?;
            let receives = |tree: &str| match &coverage {
                Some(c) => c.is_live(tree),
                None => self.config.trees.is_empty() || self.config.trees.iter().any(|t| t == tree),
            };
            let mut keys = Vec::new();
            for row in journal.range((unknown, "", 0)..).map_err(Error::from)? {
                let (k, _) = row.map_err(Error::from)?;
                let (_, tree, id) = k.value();
                if receives(tree) {
                    keys.push((tree.to_owned(), id));
                }
            }
            keys
        };
        if keys.is_empty() {
            return Ok(());
        }
        let b = self.lazy_batch(&db)?;
        {
            let mut journal = b.txn.open_table(JOURNAL).map_err(Error::from)?;
            for (tree, id) in &keys {
                journal
                    .remove((unknown, tree.as_str(), *id))
                    .map_err(Error::from)?;
            }
        }
        b.commit()?;
        Ok(())
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
        let Some(db) = self.db.upgrade() else {
            return Vec::new();
        };
        let me = db.replica.load(Ordering::Acquire);
        let mut out = Vec::new();
        for e in entries {
            if e.origin != 0 || e.change.kind != (ChangeKind::Borrow { holder: 0 }) {
                continue;
            }
            let held = (|| -> Result<bool> {
                let txn = db.redb.begin_read()?;
                let state = db.tree_state(&e.change.tree);
                let table = match txn.open_table(state.def()) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                    Err(e) => return Err(e.into()),
                };
                let latest = table
                    .range(crate::storage::id_range(e.change.id))?
                    .next_back()
                    .transpose()?;
                Ok(latest.is_some_and(|(_, v)| {
                    crate::storage::Header::parse(v.value()).is_some_and(|(h, _)| h.holder == me)
                }))
            })();
            if held.unwrap_or(false) {
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
                let b = db.batch()?;
                {
                    let mut pending = b.txn.open_table(PENDING).map_err(Error::from)?;
                    let row = pending
                        .get((tree, key.id))
                        .map_err(Error::from)?
                        .map(|v| outbox::PendingRow::decode(v.value()));
                    let row = match row {
                        Some(mut r) => {
                            r.floor = r.floor.max(seq);
                            r
                        }
                        None => outbox::PendingRow {
                            count: 0,
                            base: seq,
                            hlc: 0,
                            floor: seq,
                            strategy: String::new(),
                            base_value: Vec::new(),
                        },
                    };
                    pending
                        .insert((tree, key.id), row.encode().as_slice())
                        .map_err(Error::from)?;
                    // No push brings this grant: noted for a restore of the server.
                    b.txn
                        .open_table(JOURNAL)
                        .map_err(Error::from)?
                        .insert((seq, tree, key.id), (outbox::now_ms() << 1) | 1)
                        .map_err(Error::from)?;
                }
                b.commit()?;
                Ok(Ok(()))
            }
            // Held already (by the server's word): make sure it shows here.
            Ok(0) => {
                let db = self.db()?;
                let me = db.inner.replica.load(Ordering::Acquire);
                let mut b = db.batch()?;
                b.apply_borrow(tree, key.id, me)?;
                b.commit()?;
                Ok(Ok(()))
            }
            Ok(seq) => {
                // The grant arrives as a logged change after every older one (a return
                // by the previous holder, say): apply the log up to it, in order.
                let deadline = Instant::now() + self.config.timeout;
                while self.cursor < seq {
                    let left = deadline.saturating_duration_since(Instant::now());
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

/// The subscription coverage stored in `rekord.meta` (`None` if none, or unreadable).
fn stored_coverage(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<Coverage>> {
    Ok(meta
        .get(COVERAGE)?
        .and_then(|v| std::str::from_utf8(v.value()).ok().map(str::to_owned))
        .and_then(|text| ron::from_str::<Coverage>(&text).ok()))
}

/// Stores the subscription coverage in `rekord.meta`.
fn store_coverage(meta: &mut redb::Table<'_, &str, &[u8]>, c: &Coverage) -> Result<()> {
    let text = ron::to_string(c).map_err(|e| Error::CorruptMeta {
        reason: format!("cannot encode the subscription coverage: {e}"),
    })?;
    meta.insert(COVERAGE, text.as_bytes())?;
    Ok(())
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
