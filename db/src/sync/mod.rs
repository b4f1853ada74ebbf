//! Synced databases: a local rekord database that is a replica of a rekord server's.
//!
//! [`Db::open_synced`](crate::Db::open_synced) opens (or creates) a local database in
//! *client mode* and starts its sync client on a thread of its own (with its own async
//! runtime: the application needs none, and no call of the database ever blocks inside the
//! application's async code on the network). What holds:
//!
//! - **Local first.** Reads and writes are local and never wait on the network. Each write
//!   batch also adds its changes to a persistent *outbox* in the same local transaction
//!   ([`crate::storage`] documents the tables), so nothing the database acknowledged is
//!   lost, offline or across crashes. The sync client sends the outbox in order, up to
//!   [`SyncConfig::batch_size`] entries per request; entries are numbered (never reusing a
//!   number) and the server remembers the last number it processed for each client, so a
//!   retry after a lost answer or a crash never applies anything twice. While the server is unreachable it retries with
//!   exponential backoff and jitter ([`Retry`]).
//! - **Ids.** Records are created with ids from ranges the server granted this client (kept
//!   in the local database); the client asks for more in the background while online
//!   ([`SyncConfig::range_size`]). Offline, creating works until the ranges are used up
//!   ([`crate::Error::IdsExhausted`]). Online, a create that runs out fetches a range and
//!   goes on, and a batch that runs out makes the replica fetch more before the error
//!   returns (run it again). A fresh database can create records only after its first
//!   connection.
//! - **Borrows.** [`Tree::borrow`](crate::Tree::borrow) asks the server (it fails with
//!   [`crate::Error::Offline`] when the server is unreachable, or
//!   [`crate::Error::AlreadyBorrowed`] naming the holder); records a client creates are
//!   borrowed by it from birth. Held borrows are stored in the records' headers, so editing
//!   continues offline and across restarts. [`Tree::return_borrow`](crate::Tree::return_borrow)
//!   is a write like any other: the server frees the borrow after it has the changes made
//!   before it. Every client learns who holds what ([`crate::EventKind::Borrowed`],
//!   [`crate::RecordMeta::holder`]).
//! - **Remote changes** are applied in server order, with the cursor (last applied sequence
//!   number) in the same local transaction, so a crash resumes exactly where it stopped
//!   and a reconnect asks only for what is new. They produce the same events as local
//!   changes (with [`crate::RecordEvent::origin`] the other replica), reach indexers and
//!   invalidate the hot cache. Record bytes from the server are checked against their
//!   schema before they are stored; schemas of versions other clients wrote are fetched.
//! - **Durability of the sync client's own bookkeeping.** Applied server changes, settled
//!   outbox entries and merges commit without waiting for the disk, and become durable
//!   with the next application write, after at most 250 ms of quiet, when the database is
//!   closed, and always *before* the client sends the server anything it acts on for good
//!   (the next outbox request: the server then forgets the answers to earlier entries, and
//!   keeps a merged entry it accepted). A crash at any instant therefore loses at most
//!   commits the server has not heard of: the replica reopens, asks again, and converges
//!   to exactly the server's state (`server/tests/merge_seams.rs` kills replicas at random
//!   instants around merges to check it). Events and indexer calls are sent after each
//!   commit, lazy ones included: a replica killed before such a commit became durable
//!   applies the same server changes again after reopening, so subscribers and indexers of
//!   a synced database may see a remote change twice across a crash (never out of order,
//!   never missing). In a browser, durable means stored in IndexedDB: the sync client
//!   waits for a flush before every outbox request (the entries and the settling of
//!   earlier ones are then stored), so a crash of the tab never leaves a stored copy
//!   older than what the server has of it (which the server would refuse as an older
//!   copy of the replica). This puts a flush on the path of every change a browser
//!   replica sends (BENCHMARKS.md).
//! - **Closing.** Dropping the application's last handle ([`crate::Db`] or a
//!   [`crate::Tree`]) stops the sync thread, makes its commits durable and closes the file
//!   before the drop returns: the same file can be opened again at once, and
//!   [`SyncStatus::outbox`] at the next open counts only entries the server has not
//!   acknowledged.
//! - **Refusals** (an unknown or revoked token, another application, an unsupported
//!   protocol version, a server other than the pinned one) are not outages:
//!   [`SyncStatus::refused`] says why, and waits, borrows and write-through writes fail at
//!   once with [`crate::Error::Refused`] instead of [`crate::Error::Offline`] after their
//!   timeout. A borrow interrupted by the loss of the connection is asked again after
//!   reconnecting, within [`SyncConfig::timeout`].
//! - **Subscriptions** ([`SyncConfig::trees`]) may change between openings. The replica
//!   stores which trees its cursor covers (`sync.coverage` in `rekord.meta`); trees a
//!   subscription gains are first brought up to the cursor by a catch-up of their own, so
//!   a replica that widens its subscription holds what a fresh one would.
//! - **Restores.** A server restored from a backup starts a new history, which every
//!   hello names; a replica that synced with the lost one reconciles
//!   ([`crate::SyncEvent::Restored`]): what it changed after the last change both share
//!   is sent again, what others changed becomes what the server has (their authors send
//!   it again), its borrows and id ranges are taken back. The records to look at come
//!   from a journal of which records recent server changes touched (`rekord.journal`,
//!   kept for [`SyncConfig::journal_retention`]).
//! - **Events** [`crate::SyncEvent`]: connected, disconnected (with the retry delay),
//!   refused, catch-up progress, caught up, outbox entry pushed or rejected.
//!   [`crate::Db::open_synced_subscribed`] subscribes before the sync thread starts, so
//!   not even the first event is missed.
//!
//! - **Optimistic trees** ([`SyncConfig::optimistic`], [`merge`]): edits without borrows,
//!   concurrent edits merged per the tree's [`Merge`] strategy, every conflict reported
//!   ([`crate::SyncEvent::Conflict`]).
//! - **Write modes** ([`WriteMode`], per database or per tree): write-behind (default) or
//!   write-through, where a batch returns once the server accepted it
//!   ([`crate::Batch::commit`] has the errors).
//! - **Controls**: [`SyncConfig::batch_size`], [`Retry`], [`SyncConfig::max_outbox_bytes`]
//!   ([`crate::Error::OutboxFull`]), [`SyncConfig::max_outbox_age`]
//!   ([`crate::SyncEvent::OutboxStale`]), [`SyncConfig::replay_bytes_per_sec`]; statistics
//!   in [`SyncStatus`].
//!
//! A rejected outbox entry (the server refused it for good, e.g. a change to a record whose
//! borrow an administrator took back, [`crate::SyncEvent::BorrowRevoked`]) is moved to the
//! `rekord.outbox_rejected` table and reported as [`crate::SyncEvent::Rejected`]; the
//! records it touched are then fetched from the server and replaced locally (with events),
//! so the local copy is what every other replica has.

pub(crate) mod client;
pub mod driver;
pub mod engine;
pub(crate) mod local;
pub use client::SyncDriver;
pub mod merge;

pub use merge::{Hlc, Merge, Winner};

use std::time::Duration;

/// `rekord.meta` key of the database mode (`client` for synced databases).
pub(crate) const MODE: &str = "mode";
/// `rekord.meta` key of the client's identity (16 bytes).
pub(crate) const CLIENT: &str = "sync.client";
/// `rekord.meta` key of the client's holder number (u32 LE).
pub(crate) const REPLICA: &str = "sync.replica";
/// `rekord.meta` key of the pinned server (16 bytes of UUID, then the certificate
/// fingerprint as text).
pub(crate) const PIN: &str = "sync.pin";
/// `rekord.meta` key of the WebTransport certificates the server last announced, signed
/// (`HASH:NOT_AFTER` text, comma-separated): named to the browser with the configured ones.
pub(crate) const WEB_HASHES: &str = "sync.web_hashes";
/// `rekord.meta` key of the cursor (u64 LE).
pub(crate) const CURSOR: &str = "sync.cursor";

/// `rekord.meta` key of the lineage of the server history this replica synced with (pairs
/// of u64 LE: history id, base), as the server last told it.
pub(crate) const HISTORY: &str = "sync.history";
/// Meta key prefix: `sync.optimistic.<tree>` names a tree this replica knows to be
/// optimistic (its merge strategy's name), from the record type or the configuration, so a
/// reconciliation after a restore knows it before the application opens the tree.
pub(crate) const OPTIMISTIC_PREFIX: &str = "sync.optimistic.";

/// `rekord.meta` key of the highest sequence number whose journal rows were pruned (u64 LE).
pub(crate) const JOURNAL_FLOOR: &str = "sync.journal_floor";
/// `rekord.meta` key of the highest sequence number a pruned journal row of an unknown
/// number ([`UNKNOWN_SEQ`]) may have stood for (u64 LE): the server's head when it was
/// pruned. Only whether a reconciliation's journal is complete counts it (such a row has no
/// states in `rekord.journal_states`, so the seen states keep [`JOURNAL_FLOOR`]).
pub(crate) const JOURNAL_UNKNOWN_FLOOR: &str = "sync.journal_unknown_floor";
/// The sequence number of a `rekord.journal` row whose change's number is not known here
/// yet: a tab taking over learns that the leader before it settled entries whose journal
/// rows the stored image may not hold. Such a row counts as after any restore point
/// (a restore before the change comes back sends the record again), and goes once the
/// replica is caught up (every change of a tree it receives came back with its real
/// number; rows of trees it does not receive stay) or with a reconciliation.
pub(crate) const UNKNOWN_SEQ: u64 = u64::MAX;
/// `rekord.meta` key of the first sequence number `rekord.journal_states` has rows from
/// (u64 LE; absent: it has none yet, a database from before it was kept).
pub(crate) const JOURNAL_STATES_FROM: &str = "sync.journal_states_from";
/// Meta key: the shared point of the last reconciliation that left records waiting
/// (`rekord.reclaim`): optimistic records sent again later are edits based on it.
pub(crate) const RECLAIM_COMMON: &str = "sync.reclaim_common";

pub(crate) use crate::proto::diverged;

/// `rekord.meta` key of the hybrid logical clock (u64 LE).
pub(crate) const HLC: &str = "sync.hlc";

/// `rekord.meta` key of the subscription the cursor covers ([`Coverage`], RON).
pub(crate) const COVERAGE: &str = "sync.coverage";

/// Which trees' changes this replica has received, and up to where: the trees of the
/// subscription up to the cursor; every other tree up to where it left the subscription
/// (`left`, else `rest`, 0 if it never was in it). When a subscription grows, the changes of
/// the trees it adds between their coverage and the cursor are fetched before anything else.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Coverage {
    /// The subscribed trees (empty: all).
    pub(crate) live: Vec<String>,
    /// Cursor up to which the trees not subscribed (and not in `left`) are covered.
    pub(crate) rest: u64,
    /// Trees not subscribed, covered up to a cursor of their own.
    pub(crate) left: std::collections::BTreeMap<String, u64>,
    /// The read rights of the token when `live` was computed: `live` is the subscription
    /// limited to them ([`Coverage::effective`]), so trees a token may newly read are
    /// fetched like trees a subscription gains.
    #[serde(default)]
    pub(crate) read: Readable,
}

/// What a token may read, as the server last said ([`Coverage::read`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Readable {
    /// Not known yet (a new replica, or one from before the rights were kept).
    #[default]
    Unknown,
    /// Every tree.
    All,
    /// These trees.
    Only(Vec<String>),
}

impl Readable {
    /// From a server hello's `read`.
    pub(crate) fn from_hello(read: &Option<Vec<String>>) -> Self {
        match read {
            None => Readable::All,
            Some(trees) => Readable::Only(trees.clone()),
        }
    }
}

impl Coverage {
    /// The trees a subscription to `trees` (empty: all) receives under `read`, in the form
    /// of [`Coverage::live`] (empty: all; a name no tree has when nothing is readable).
    pub(crate) fn effective(trees: &[String], read: &Readable) -> Vec<String> {
        match read {
            Readable::Unknown | Readable::All => trees.to_vec(),
            Readable::Only(readable) => {
                let mut live: Vec<String> = if trees.is_empty() {
                    readable.clone()
                } else {
                    trees
                        .iter()
                        .filter(|t| readable.contains(t))
                        .cloned()
                        .collect()
                };
                if live.is_empty() {
                    // Tree names are never empty: this matches no tree.
                    live.push(String::new());
                }
                live
            }
        }
    }

    /// Whether `tree` is subscribed.
    pub(crate) fn is_live(&self, tree: &str) -> bool {
        self.live.is_empty() || self.live.iter().any(|t| t == tree)
    }

    /// Up to which sequence number `tree`'s changes were received, at cursor `cursor`.
    pub(crate) fn covered(&self, tree: &str, cursor: u64) -> u64 {
        if self.is_live(tree) {
            cursor
        } else {
            self.left.get(tree).copied().unwrap_or(self.rest)
        }
    }

    /// The coverage after the subscription becomes `live` at cursor `cursor` (trees that
    /// leave it keep what they had), and the oldest coverage among trees it adds, if any
    /// is older than the cursor (a backfill is needed from there).
    pub(crate) fn resubscribe(&self, live: &[String], cursor: u64) -> (Coverage, Option<u64>) {
        let mut next = Coverage {
            live: live.to_vec(),
            rest: self.rest,
            left: self.left.clone(),
            read: self.read.clone(),
        };
        if self.live.is_empty() && !live.is_empty() {
            // From all trees to some: every other tree is covered up to now.
            next.rest = cursor;
            next.left.clear();
        } else if !self.live.is_empty() {
            for t in &self.live {
                if !next.is_live(t) {
                    next.left.insert(t.clone(), cursor);
                }
            }
        }
        // The trees that join: the oldest coverage among them.
        let oldest = if live.is_empty() {
            if self.live.is_empty() {
                None
            } else {
                self.left.values().copied().chain([self.rest]).min()
            }
        } else {
            live.iter()
                .filter(|t| !self.is_live(t))
                .map(|t| self.covered(t, cursor))
                .min()
        };
        for t in live {
            next.left.remove(t);
        }
        if live.is_empty() {
            next.left.clear();
            next.rest = 0;
        }
        (next, oldest.filter(|&o| o < cursor))
    }
}

/// The holder number of a synced database before its first connection (it owns no ids and
/// holds no borrows yet, so the number is never stored in a record).
pub(crate) const UNKNOWN_REPLICA: u32 = u32::MAX;

/// Retry policy while the server is unreachable: exponential backoff with jitter.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Retry {
    /// First delay (default 100 ms).
    pub initial: Duration,
    /// Longest delay (default 10 s).
    pub max: Duration,
    /// Factor between consecutive delays (default 2).
    pub multiplier: f64,
    /// Fraction of each delay that is random (default 0.5: a delay `d` becomes a uniform
    /// pick in `[d/2, d]`), so that many clients do not reconnect in lockstep.
    pub jitter: f64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Retry {
    /// Sets [`Retry::initial`].
    pub fn initial(mut self, d: Duration) -> Self {
        self.initial = d;
        self
    }
    /// Sets [`Retry::max`].
    pub fn max(mut self, d: Duration) -> Self {
        self.max = d;
        self
    }
    /// Sets [`Retry::multiplier`] (values below 1 count as 1).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = m;
        self
    }
    /// Sets [`Retry::jitter`] (clamped to `0..=1`).
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = j;
        self
    }

    /// The delay before retry number `attempt` (from 0), given a uniform random `unit` in
    /// `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let m = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        let max = self.max.as_secs_f64();
        let base = (self.initial.as_secs_f64() * m.powi(attempt.min(64) as i32)).min(max);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = base * (1.0 - jitter * unit);
        Duration::try_from_secs_f64(d).unwrap_or(self.max)
    }
}

/// When a write to a synced database returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteMode {
    /// Commit locally and sync in the background (the default): writes never wait on the
    /// network and work offline.
    #[default]
    Behind,
    /// Commit only when connected, and return once the server accepted the write
    /// ([`crate::Batch::commit`] documents the errors).
    Through,
}

/// How a synced database reaches its server; see [`Db::open_synced`](crate::Db::open_synced).
/// (Its `Debug` output leaves the token out: a configuration can be logged.)
#[derive(Clone)]
#[non_exhaustive]
pub struct SyncConfig {
    /// The server's address.
    #[cfg(not(target_arch = "wasm32"))]
    pub server: std::net::SocketAddr,
    /// Reach the server over WebTransport (HTTP/3, the browsers' transport) at this URL
    /// instead of rekord's own QUIC ALPN at [`SyncConfig::server`] (default `None`). Natively
    /// this needs the crate feature `web-transport`.
    pub web_transport: Option<crate::net::WebTarget>,
    /// Reach the server over streams this opens instead of the network (default `None`):
    /// an in-process server (`rekord_server::LocalConnector`), a test's pipe. Natively only.
    #[cfg(not(target_arch = "wasm32"))]
    pub connector: Option<crate::net::Connector>,
    /// The application name (must match the server's).
    pub app: String,
    /// The access token issued by the server's CLI.
    pub token: String,
    /// Trees to receive changes of (empty, the default: every tree the token may read). It
    /// may change from one opening to the next: trees it gains get what they missed first
    /// (the replica remembers up to where each tree was received).
    pub trees: Vec<String>,
    /// The server to expect on first contact (UUID and certificate fingerprint, as printed
    /// by `rekord-server identity`); `None` (default): trust the first server met, then
    /// pin it. After the first contact the stored pin is what counts.
    pub pin: Option<crate::net::Pin>,
    /// Retry policy while the server is unreachable.
    pub retry: Retry,
    /// Ids asked for per range (default 10,000); a new range is asked for when fewer than
    /// half of this are left.
    pub range_size: u64,
    /// Bound on connecting and on each request (default 10 s). A request's answer must
    /// arrive whole within it, and a catch-up's answers can be megabytes: on a slow link
    /// keep it long (a 24 MiB catch-up with 2 s, in a debug build, was cut off 15 times).
    /// In a browser, opening the connection may take up to 100 s (Chromium holds a page's
    /// WebTransport handshakes back after failed ones; an attempt given up on would count as
    /// one more failure); the handshake after it has this bound.
    pub timeout: Duration,
    /// Refuse local writes ([`crate::Error::OutboxFull`], nothing changed) once the outbox
    /// holds this many bytes (default `None`: no limit).
    pub max_outbox_bytes: Option<u64>,
    /// Report [`crate::SyncEvent::OutboxStale`] when the oldest outbox entry is older than
    /// this (default `None`: never); nothing is dropped.
    pub max_outbox_age: Option<Duration>,
    /// Limit the outbox replay (after a reconnect, or a burst of writes) to about this many
    /// bytes per second (default `None`: as fast as the server takes them).
    pub replay_bytes_per_sec: Option<u64>,
    /// When writes return (default [`WriteMode::Behind`]); see also
    /// [`SyncConfig::tree_write_modes`].
    pub write_mode: WriteMode,
    /// Per-tree exceptions to [`SyncConfig::write_mode`].
    pub tree_write_modes: Vec<(String, WriteMode)>,
    /// Outbox entries (local write batches) sent per request (default 256, at most
    /// [`crate::proto::MAX_ENTRIES`]); each entry is still applied all or nothing.
    pub batch_size: usize,
    /// A session that hears nothing from the server for this long is considered lost and
    /// the client reconnects (default 15 s); see [`crate::net::ConnectOptions`].
    pub idle_timeout: Duration,
    /// Optimistic trees and their merge strategies ([`SyncConfig::optimistic`]).
    pub merges: Vec<(String, Merge)>,
    /// How long the replica remembers which records server changes touched (default 30
    /// days; about 50 bytes per change). If the server is restored from a backup older
    /// than this, the records changed before the journal's start are not reconciled
    /// ([`crate::SyncEvent::Restored`] says `incomplete`).
    pub journal_retention: Duration,
    /// Who opens the client's connections when it does not itself: its sync engine.
    pub(crate) dialer: Option<std::sync::Arc<dyn crate::net::Dialer>>,
}

impl std::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("SyncConfig");
        #[cfg(not(target_arch = "wasm32"))]
        d.field("server", &self.server);
        d.field("web_transport", &self.web_transport);
        #[cfg(not(target_arch = "wasm32"))]
        d.field("connector", &self.connector.as_ref().map(|_| "<connector>"));
        d.field("app", &self.app)
            .field("token", &"<redacted>")
            .field("trees", &self.trees);
        d.field("pin", &self.pin);
        d.field("retry", &self.retry)
            .field("range_size", &self.range_size)
            .field("timeout", &self.timeout)
            .field("max_outbox_bytes", &self.max_outbox_bytes)
            .field("max_outbox_age", &self.max_outbox_age)
            .field("replay_bytes_per_sec", &self.replay_bytes_per_sec)
            .field("write_mode", &self.write_mode)
            .field("tree_write_modes", &self.tree_write_modes)
            .field("batch_size", &self.batch_size)
            .field("idle_timeout", &self.idle_timeout)
            .field("merges", &self.merges)
            .field("journal_retention", &self.journal_retention)
            .finish()
    }
}

impl SyncConfig {
    /// A configuration with defaults for everything but the server, application and token.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(
        server: std::net::SocketAddr,
        app: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        Self::with_transport(server, None, app.into(), token.into())
    }

    /// A configuration reaching the server over WebTransport at `target` (how a browser
    /// replica reaches it), with defaults for everything else. In a browser this is the only
    /// transport; natively it needs the crate feature `web-transport`.
    ///
    /// Over WebTransport the server presents its rotating WebTransport certificate (checked
    /// against `target`'s hashes, and the ones it announced last time), not the long-term
    /// one; it proves the long-term identity by signing its certificate announcement, which
    /// the replica checks against [`SyncConfig::pin`] (see `docs/browser-trust.md`).
    pub fn web(
        target: crate::net::WebTarget,
        app: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        let server = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        Self::with_transport(
            #[cfg(not(target_arch = "wasm32"))]
            server,
            Some(target),
            app.into(),
            token.into(),
        )
    }

    fn with_transport(
        #[cfg(not(target_arch = "wasm32"))] server: std::net::SocketAddr,
        web_transport: Option<crate::net::WebTarget>,
        app: String,
        token: String,
    ) -> Self {
        SyncConfig {
            #[cfg(not(target_arch = "wasm32"))]
            server,
            web_transport,
            #[cfg(not(target_arch = "wasm32"))]
            connector: None,
            app,
            token,
            trees: Vec::new(),
            pin: None,
            retry: Retry::default(),
            range_size: 10_000,
            timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            batch_size: 256,
            write_mode: WriteMode::Behind,
            tree_write_modes: Vec::new(),
            max_outbox_bytes: None,
            max_outbox_age: None,
            replay_bytes_per_sec: None,
            merges: Vec::new(),
            journal_retention: Duration::from_secs(30 * 24 * 3600),
            dialer: None,
        }
    }

    /// Makes `tree` optimistic: its records can be edited without borrowing them, and
    /// concurrent edits are merged with `merge` (see [`merge`]).
    pub fn optimistic(mut self, tree: impl Into<String>, merge: Merge) -> Self {
        let tree = tree.into();
        self.merges.retain(|(t, _)| *t != tree);
        self.merges.push((tree, merge));
        self
    }

    /// Sets [`SyncConfig::web_transport`]: the server is reached over WebTransport at
    /// `target`.
    pub fn web_transport(mut self, target: crate::net::WebTarget) -> Self {
        self.web_transport = Some(target);
        self
    }

    /// Sets [`SyncConfig::connector`]: the server is reached over the streams `connector`
    /// opens.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn connector(mut self, connector: crate::net::Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Sets [`SyncConfig::trees`].
    pub fn trees<S: Into<String>>(mut self, trees: impl IntoIterator<Item = S>) -> Self {
        self.trees = trees.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`SyncConfig::retry`].
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`SyncConfig::range_size`] (at least 1).
    pub fn range_size(mut self, ids: u64) -> Self {
        self.range_size = ids.max(1);
        self
    }

    /// Sets [`SyncConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`SyncConfig::write_mode`].
    pub fn write_mode(mut self, mode: WriteMode) -> Self {
        self.write_mode = mode;
        self
    }

    /// Sets the write mode of one tree (see [`SyncConfig::tree_write_modes`]).
    pub fn tree_write_mode(mut self, tree: impl Into<String>, mode: WriteMode) -> Self {
        let tree = tree.into();
        self.tree_write_modes.retain(|(t, _)| *t != tree);
        self.tree_write_modes.push((tree, mode));
        self
    }

    /// Sets [`SyncConfig::max_outbox_bytes`].
    pub fn max_outbox_bytes(mut self, bytes: u64) -> Self {
        self.max_outbox_bytes = Some(bytes);
        self
    }

    /// Sets [`SyncConfig::max_outbox_age`].
    pub fn max_outbox_age(mut self, age: Duration) -> Self {
        self.max_outbox_age = Some(age);
        self
    }

    /// Sets [`SyncConfig::replay_bytes_per_sec`] (at least 1).
    pub fn replay_bytes_per_sec(mut self, rate: u64) -> Self {
        self.replay_bytes_per_sec = Some(rate.max(1));
        self
    }

    /// Sets [`SyncConfig::batch_size`] (at least 1).
    pub fn batch_size(mut self, entries: usize) -> Self {
        self.batch_size = entries.max(1);
        self
    }

    /// Sets [`SyncConfig::journal_retention`].
    pub fn journal_retention(mut self, retention: Duration) -> Self {
        self.journal_retention = retention;
        self
    }

    /// Sets [`SyncConfig::idle_timeout`].
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Sets [`SyncConfig::pin`].
    pub fn pin(mut self, pin: crate::net::Pin) -> Self {
        self.pin = Some(pin);
        self
    }
}

/// The state of a synced database's sync client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStatus {
    /// Whether a session with the server is up.
    pub online: bool,
    /// Whether every server change known at connection time is applied.
    pub caught_up: bool,
    /// The last applied server sequence number.
    pub cursor: u64,
    /// Local outbox entries not yet accepted by the server.
    pub outbox: u64,
    /// Bytes of those entries (as stored).
    pub outbox_bytes: u64,
    /// The number of the last outbox entry the server processed in this run (entries are
    /// numbered in commit order; 0: none yet).
    pub processed_entry: u64,
    /// Outbox entries the server refused for good (see [`crate::SyncEvent::Rejected`]).
    pub rejected: u64,
    /// Conflicts of optimistic edits merged since the database was opened (see
    /// [`crate::SyncEvent::Conflict`]).
    pub conflicts: u64,
    /// When the server last accepted local writes or sent changes that were applied here.
    pub last_sync: Option<std::time::SystemTime>,
    /// Bytes sent to the server, over all sessions since the database was opened.
    pub bytes_sent: u64,
    /// Bytes received from the server, over all sessions since the database was opened.
    pub bytes_received: u64,
    /// This client's holder number (`None` before the first connection).
    pub replica: Option<u32>,
    /// Why the last connection ended or failed, if it did.
    pub last_error: Option<String>,
    /// Why the server (or this client, checking the server) refused the connection, while
    /// it does: an unknown or revoked token, another application, an unsupported protocol
    /// version, a server other than the pinned one. Cleared by the next accepted
    /// connection. While set, [`crate::Db::wait_caught_up`], [`crate::Db::wait_pushed`],
    /// borrows and write-through writes fail at once with [`crate::Error::Refused`].
    pub refused: Option<String>,
    /// How many times the sync client fetched id ranges a write that ran out of ids asked
    /// for (see [`crate::Error::IdsExhausted`]).
    pub refills: u64,
    /// Why the server gave this session no id ranges (a token that may write no tree), if
    /// it did not (see [`crate::Error::IdsRefused`]).
    pub ids_refused: Option<String>,
    /// Outbox entries (counted in [`outbox`](Self::outbox)) that wait with records to be
    /// taken back after the server was restored from a backup: the restored server says
    /// another replica holds them, and they are sent once that replica gives the borrow
    /// back when it reconnects (or set aside as rejected if another replica takes one
    /// first). A record of a tree this replica does not subscribe to waits until it
    /// subscribes to that tree again: without its changes, the replica cannot tell whether
    /// another one borrowed the record meanwhile. [`crate::Db::wait_pushed`] names them
    /// when it times out.
    pub waiting: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_follows_a_subscription_that_shrinks_and_grows() {
        let s = |v: &[&str]| v.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        // From `a` to `a, b` at cursor 5: b needs everything from 0.
        let c0 = Coverage {
            live: s(&["a"]),
            ..Coverage::default()
        };
        let (c1, from) = c0.resubscribe(&s(&["a", "b"]), 5);
        assert_eq!(from, Some(0));
        assert!(c1.is_live("b") && !c1.is_live("x"));
        // Back to `a` at 9: b is covered up to 9; then to all at 12: from 9 for b, 0 for others.
        let (c2, from) = c1.resubscribe(&s(&["a"]), 9);
        assert_eq!(from, None);
        assert_eq!(c2.covered("b", 9), 9);
        assert_eq!(c2.covered("x", 9), 0);
        let (c3, from) = c2.resubscribe(&[], 12);
        assert_eq!(from, Some(0));
        assert!(c3.is_live("x") && c3.left.is_empty());
        // From all to `b` at 20: everything else covered up to 20; back to all: from 20.
        let (c4, from) = c3.resubscribe(&s(&["b"]), 20);
        assert_eq!(from, None);
        assert_eq!(c4.covered("a", 30), 20);
        assert_eq!(c4.covered("b", 30), 30);
        let (_, from) = c4.resubscribe(&[], 30);
        assert_eq!(from, Some(20));
        // The same subscription again: nothing to fetch.
        assert_eq!(c4.resubscribe(&s(&["b"]), 30).1, None);
    }

    #[test]
    fn histories_part_where_their_lineages_do() {
        // Same history, or nothing known yet: nothing to reconcile.
        assert_eq!(diverged(&[(1, 0)], &[(1, 0)]), None);
        assert_eq!(diverged(&[], &[(1, 0)]), None);
        // Restored from a backup at 40: shared up to 40.
        assert_eq!(diverged(&[(1, 0)], &[(1, 0), (2, 40)]), Some(40));
        // This replica saw a restore at 70 (history 2); the server was then restored from
        // a backup of history 1 taken at 55: shared up to 55.
        assert_eq!(diverged(&[(1, 0), (2, 70)], &[(1, 0), (3, 55)]), Some(55));
        // A client of history 2 meets history 4, restored from a backup of 2 at 90.
        assert_eq!(
            diverged(&[(1, 0), (2, 70)], &[(1, 0), (2, 70), (4, 90)]),
            Some(90)
        );
        // Two restores while the client was away: the earlier branch point counts.
        assert_eq!(diverged(&[(1, 0)], &[(1, 0), (2, 70), (3, 30)]), Some(30));
        // Nothing in common (the lineage sent was cut): from scratch.
        assert_eq!(diverged(&[(9, 0)], &[(1, 0), (2, 5)]), Some(0));
    }

    #[test]
    fn backoff_grows_caps_and_jitters_downwards() {
        let r = Retry::default();
        assert_eq!(r.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(r.delay(1, 0.0), Duration::from_millis(200));
        assert_eq!(r.delay(3, 0.0), Duration::from_millis(800));
        assert_eq!(r.delay(30, 0.0), Duration::from_secs(10));
        assert_eq!(r.delay(u32::MAX, 0.0), Duration::from_secs(10));
        let j = r.delay(2, 0.999);
        assert!(j >= Duration::from_millis(200) && j < Duration::from_millis(400));
        let odd = Retry::default().multiplier(f64::NAN).jitter(7.0);
        assert_eq!(odd.delay(5, 0.0), Duration::from_millis(100));
        assert!(odd.delay(5, 1.0) <= Duration::from_millis(1));
    }
}
