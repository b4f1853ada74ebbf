//! The database handle.

use crate::event::{Event, Subscribers, Subscription, lock};
use crate::index::{IndexerSlot, IndexerStatus};
use crate::schema::Schema;
use crate::storage::{self, META, RANGES, SCHEMAS};
use crate::tree::batch::Batch;
use crate::tree::cache::Cache;
use crate::{Error, Indexer, Record, Result, Tree};
use redb::{MultimapTableHandle, ReadableDatabase, ReadableTable, TableHandle};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The largest unclean file whose ownership is checked on a repaired copy in memory before
/// it is opened for writing (see `Db::open_redb`).
#[cfg(not(target_arch = "wasm32"))]
const PROBE_COPY_LIMIT: u64 = 256 << 20;

/// The holder number of this replica in a standalone database.
pub const LOCAL_REPLICA: u32 = 1;

/// Options for opening a database.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DbOptions {
    /// Memory budget, per tree, of the hot-record cache (default 64 MiB; 0 disables it).
    pub cache_bytes: usize,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            cache_bytes: 64 << 20,
        }
    }
}

impl DbOptions {
    /// Sets [`DbOptions::cache_bytes`].
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }
}

/// An open rekord database. Cheap to clone; all clones share one database.
///
/// ```
/// #[rekord::record(tree = "notes", version = 1)]
/// pub struct Note { pub text: String }
///
/// let db = rekord::Db::memory()?;
/// let notes = db.tree::<Note>()?;
/// let key = notes.create(&Note { text: "hello".into() })?;
/// assert_eq!(notes.with(key, |n| n.text.len())?, 5);
/// # Ok::<(), rekord::Error>(())
/// ```
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<DbInner>,
    /// Held by the application's handles only, not by the sync thread's temporary ones:
    /// dropping the last one stops the sync thread and waits for it, so the database is
    /// closed (and can be opened again) by the time that drop returns. Declared after
    /// `inner`, so it is dropped after it.
    #[allow(dead_code)] // held for its `Drop`
    closer: Option<Arc<Closer>>,
}

/// Stops the sync thread when the application's last handle goes (see [`Db`]'s `closer`).
struct Closer(#[cfg_attr(target_arch = "wasm32", allow(dead_code))] Arc<DbInner>);

impl Drop for Closer {
    fn drop(&mut self) {
        // Joins the sync thread, which makes its last commits durable before it ends and
        // then holds no handle; this `Arc` is then the last one, and the file closes here.
        if let Some(link) = self.0.link.get() {
            link.stop();
        }
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("replica", &self.replica())
            .field("synced", &self.inner.client)
            .finish_non_exhaustive()
    }
}

/// The redb database under a [`Db`]: writable, or opened read-only
/// ([`Db::open_read_only`]), where every write is [`Error::ReadOnly`].
pub(crate) enum Store {
    Rw(redb::Database),
    #[cfg(not(target_arch = "wasm32"))]
    Ro(redb::ReadOnlyDatabase),
}

impl Store {
    /// Begins a read transaction.
    pub(crate) fn begin_read(
        &self,
    ) -> std::result::Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Store::Rw(d) => d.begin_read(),
            #[cfg(not(target_arch = "wasm32"))]
            Store::Ro(d) => d.begin_read(),
        }
    }

    /// Whether the database was opened read-only.
    pub(crate) fn is_read_only(&self) -> bool {
        !matches!(self, Store::Rw(_))
    }

    /// Begins a write transaction ([`Error::ReadOnly`] on a read-only database).
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction> {
        match self {
            Store::Rw(d) => Ok(d.begin_write()?),
            #[cfg(not(target_arch = "wasm32"))]
            Store::Ro(_) => Err(Error::ReadOnly),
        }
    }
}

pub(crate) struct DbInner {
    pub(crate) redb: Store,
    /// In the browser, the IndexedDB flusher's handle (declared after `redb`, so a dropped
    /// database's last commit is staged before the flusher is told to close).
    #[cfg(target_arch = "wasm32")]
    pub(crate) browser: std::sync::OnceLock<crate::storage::browser::Handle>,
    pub(crate) writer: Mutex<WriterState>,
    pub(crate) trees: RwLock<HashMap<String, Arc<TreeState>>>,
    pub(crate) subscribers: Subscribers,
    /// Holder number of this replica (a synced database learns it at first contact).
    pub(crate) replica: AtomicU32,
    /// Whether this is a synced database (client mode).
    pub(crate) client: bool,
    /// The sync thread of a synced database.
    pub(crate) link: std::sync::OnceLock<Arc<crate::sync::client::Link>>,
    /// The optimistic trees of a synced database and their merge strategies: from the
    /// configuration, then from record types' `merge = "..."` as they are used.
    pub(crate) merges: RwLock<HashMap<String, crate::sync::Merge>>,
    /// The hybrid logical clock: the latest timestamp made or seen (written back by batches
    /// under the writer lock).
    pub(crate) hlc: std::sync::atomic::AtomicU64,
    pub(crate) options: DbOptions,
}

impl Drop for DbInner {
    fn drop(&mut self) {
        if let Some(link) = self.link.get() {
            link.stop();
        }
        self.subscribers.close();
    }
}

/// Whether a database file is standalone or a synced replica.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Standalone,
    Client,
}

/// State guarded by the writer lock: one batch at a time.
pub(crate) struct WriterState {
    /// The last commit number handed out.
    pub(crate) commit: u64,
    /// The next id to allocate (as committed).
    pub(crate) next_id: u64,
    /// End (exclusive) of the id range `next_id` is in; 0 when not looked up yet.
    pub(crate) range_end: u64,
    /// Whether the last commit was lazy ([`Batch::lazy`]): commits since the last durable
    /// one would be lost in a crash.
    pub(crate) lazy: bool,
}

/// The `rekord.meta` "state" value: next id and last commit, 16 bytes LE.
pub(crate) fn state_bytes(next_id: u64, commit: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&next_id.to_le_bytes());
    b[8..].copy_from_slice(&commit.to_le_bytes());
    b
}

/// Per-tree runtime state shared by all handles of one tree.
pub(crate) struct TreeState {
    pub(crate) name: Arc<str>,
    pub(crate) table: String,
    pub(crate) cache: Cache,
    /// (version, type) pairs whose schema was compared with the stored one.
    pub(crate) checked: Mutex<Vec<(u32, TypeId)>>,
    pub(crate) indexers: Mutex<Vec<IndexerSlot>>,
    pub(crate) has_indexers: AtomicBool,
    /// Stored schemas already parsed, by version.
    pub(crate) schemas: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl TreeState {
    pub(crate) fn def(&self) -> storage::DataTable<'_> {
        redb::TableDefinition::new(&self.table)
    }

    pub(crate) fn is_checked<T: Record>(&self) -> bool {
        lock(&self.checked).contains(&(T::VERSION, TypeId::of::<T>()))
    }
}

impl Db {
    /// Opens the database file at `path`, creating it if it does not exist.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Db> {
        Db::open_with(path, DbOptions::default())
    }

    /// Opens the database file at `path` with options.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_with(path: impl AsRef<std::path::Path>, options: DbOptions) -> Result<Db> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let redb = Db::open_redb(path, &shown)?;
        Db::init(redb, options, Mode::Standalone, &shown)
    }

    /// Opens the existing database file at `path` for reading only, standalone or synced
    /// (nothing of it is written, not even its header; every write is
    /// [`Error::ReadOnly`]). Other processes may read it at the same time; one that has it
    /// open for writing makes this [`Error::Locked`]. A file that was not closed cleanly
    /// must be opened writable once first (to recover it). What tools that only look use
    /// (the viewer).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_read_only(path: impl AsRef<std::path::Path>) -> Result<Db> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(Error::Open {
                path: shown,
                source: redb::DatabaseError::Storage(redb::StorageError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file",
                ))),
            });
        }
        let redb = match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => {
                return Err(Error::NeedsRecovery { path: shown });
            }
            Err(e) => return Err(Error::opening(&shown, e)),
        };
        let txn = redb.begin_read()?;
        Db::check_ours(&txn, &shown)?;
        let (mut commit, mut next_id, mut replica, mut client) = (0, 1, LOCAL_REPLICA, false);
        match txn.open_table(META) {
            Ok(meta) => {
                let format = meta.get("format")?.and_then(|v| read_u64(v.value()));
                if format != Some(u64::from(storage::FORMAT)) {
                    return Err(Error::Format {
                        found: format
                            .and_then(|f| u32::try_from(f).ok())
                            .unwrap_or(u32::MAX),
                        expected: storage::FORMAT,
                    });
                }
                if let Some(v) = meta.get("state")? {
                    let v = v.value();
                    next_id = read_u64(v).unwrap_or(1);
                    commit = v.get(8..).and_then(read_u64).unwrap_or(0);
                }
                client = meta
                    .get(crate::sync::MODE)?
                    .is_some_and(|v| v.value() == b"client");
                if client {
                    replica = meta
                        .get(crate::sync::REPLICA)?
                        .and_then(|v| v.value().get(..4).and_then(|b| b.try_into().ok()))
                        .map_or(crate::sync::UNKNOWN_REPLICA, u32::from_le_bytes);
                }
            }
            // A new empty file: nothing to read.
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        drop(txn);
        Ok(Db::handle(Arc::new(DbInner {
            redb: Store::Ro(redb),
            writer: Mutex::new(WriterState {
                commit,
                next_id,
                range_end: 0,
                lazy: false,
            }),
            trees: RwLock::new(HashMap::new()),
            subscribers: Subscribers::default(),
            replica: AtomicU32::new(replica),
            client,
            link: std::sync::OnceLock::new(),
            merges: RwLock::new(HashMap::new()),
            hlc: std::sync::atomic::AtomicU64::new(0),
            options: DbOptions::default(),
        })))
    }

    /// Opens (or creates) the synced database file at `path`: a local replica of a rekord
    /// server's database, synced in the background by a thread of its own. Opening never
    /// waits for the network; see the [`sync`](crate::sync) module for what holds.
    ///
    /// A file made by [`Db::open`] cannot be opened as a synced database, nor the other way
    /// round ([`Error::Mode`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_synced(
        path: impl AsRef<std::path::Path>,
        config: crate::sync::SyncConfig,
    ) -> Result<Db> {
        Db::open_synced_with(path, config, DbOptions::default())
    }

    /// [`Db::open_synced`], and a subscription made before the sync thread starts: it sees
    /// every event from the first instant (the first [`crate::SyncEvent::Connected`] or
    /// [`crate::SyncEvent::Refused`], every change of the first catch-up), which a
    /// [`Db::subscribe`] after opening may miss.
    ///
    /// ```no_run
    /// # #[rekord::record(tree = "parts", version = 1)]
    /// # pub struct Part { pub name: String }
    /// # fn main() -> rekord::Result<()> {
    /// let config = rekord::SyncConfig::new("127.0.0.1:7878".parse().unwrap(), "workshop", "rk1_token");
    /// let (db, events) = rekord::Db::open_synced_subscribed("parts.rekord", config)?;
    /// while let Some(event) = events.recv_timeout(std::time::Duration::from_secs(1)) {
    ///     println!("{event:?}");
    /// }
    /// # Ok(()) }
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_synced_subscribed(
        path: impl AsRef<std::path::Path>,
        config: crate::sync::SyncConfig,
    ) -> Result<(Db, Subscription)> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let redb = Db::open_redb(path, &shown)?;
        let db = Db::init(redb, DbOptions::default(), Mode::Client, &shown)?;
        let events = db.subscribe();
        Ok((Db::start_sync(db, config)?, events))
    }

    /// [`Db::open_synced`] with options.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_synced_with(
        path: impl AsRef<std::path::Path>,
        config: crate::sync::SyncConfig,
        options: DbOptions,
    ) -> Result<Db> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let redb = Db::open_redb(path, &shown)?;
        Db::start_sync(Db::init(redb, options, Mode::Client, &shown)?, config)
    }

    /// A fresh synced database in memory (a new client each time; for tests and tools).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn memory_synced(config: crate::sync::SyncConfig) -> Result<Db> {
        let redb = storage::open_memory().map_err(|source| Error::Open {
            path: "<memory>".into(),
            source,
        })?;
        Db::start_sync(
            Db::init(redb, DbOptions::default(), Mode::Client, "<memory>")?,
            config,
        )
    }

    /// [`Db::open_synced`], with the sync client as a future for the application to run on
    /// its own executor instead of a thread of its own: whole replicas on one thread, with a
    /// clock the application controls (tokio's paused time), for deterministic tests (see
    /// [`SyncConfig::connector`](crate::SyncConfig::connector)). Nothing of the database
    /// blocks waiting for the client then: [`Tree::borrow`](crate::Tree::borrow) says to
    /// use [`Tree::borrow_async`](crate::Tree::borrow_async), a create without ids fails
    /// with [`Error::IdsExhausted`] until the client fetched them, and the `wait_*` methods
    /// look once. The future ends when the database closes.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_synced_driven(
        path: impl AsRef<std::path::Path>,
        config: crate::sync::SyncConfig,
    ) -> Result<(Db, crate::sync::client::SyncDriver)> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let redb = Db::open_redb(path, &shown)?;
        let db = Db::init(redb, DbOptions::default(), Mode::Client, &shown)?;
        let (db, driver) = Db::start_sync_with(db, config, true)?;
        let driver = driver.ok_or_else(|| Error::Offline {
            what: "starting the sync client",
            reason: "no driver was made".into(),
        })?;
        Ok((db, driver))
    }

    pub(crate) fn start_sync(db: Db, config: crate::sync::SyncConfig) -> Result<Db> {
        Db::start_sync_with(db, config, false).map(|(db, _)| db)
    }

    fn start_sync_with(
        db: Db,
        config: crate::sync::SyncConfig,
        driven: bool,
    ) -> Result<(Db, Option<crate::sync::client::SyncDriver>)> {
        Db::prepare_sync(&db.inner, &config)?;
        let (link, driver) =
            crate::sync::client::start_with(crate::replica::handle(&db.inner), config, driven)?;
        // A fresh `DbInner` has no link yet.
        let _ = db.inner.link.set(link);
        Ok((db, driver))
    }

    /// Notes a synced database's optimistic trees and their merge strategies (before its
    /// sync client starts, or in a browser tab that goes through the one syncing it).
    pub(crate) fn prepare_sync(inner: &DbInner, config: &crate::sync::SyncConfig) -> Result<()> {
        if !config.merges.is_empty() {
            let txn = inner.redb.begin_write()?;
            {
                let mut meta = txn.open_table(META)?;
                for (tree, merge) in &config.merges {
                    let key = format!("{}{tree}", crate::sync::OPTIMISTIC_PREFIX);
                    meta.insert(key.as_str(), merge.name().as_bytes())?;
                }
            }
            txn.commit()?;
        }
        inner
            .merges
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(config.merges.iter().cloned());
        Ok(())
    }

    /// Starts the sync client of an open database that has none (a browser tab that
    /// followed the one syncing it and now leads).
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn start_sync_inner(
        inner: &Arc<DbInner>,
        config: crate::sync::SyncConfig,
    ) -> Result<()> {
        // Checked first: a second client started here could never be stopped.
        if inner.link.get().is_some() {
            return Err(Error::Browser {
                operation: "starting the sync client",
                message: "it runs already".into(),
            });
        }
        let (link, _) =
            crate::sync::client::start_with(crate::replica::handle(inner), config, false)?;
        inner.link.set(link).map_err(|_| Error::Browser {
            operation: "starting the sync client",
            message: "it runs already".into(),
        })
    }

    /// In a browser: whether this tab leads the database (it holds the database's Web Lock,
    /// stores it in IndexedDB and, for a synced database, runs the sync client). With
    /// several tabs open, one leads and the others go through it; when it closes or
    /// crashes, another takes over. Always `true` for a database opened without sharing.
    #[cfg(target_arch = "wasm32")]
    pub fn leads_tab(&self) -> bool {
        self.inner
            .browser
            .get()
            .and_then(|h| h.tab())
            .is_none_or(crate::storage::tabs::leads)
    }

    /// The state of the sync client (`None` for a database that is not synced).
    pub fn sync_status(&self) -> Option<crate::sync::SyncStatus> {
        if let Some(link) = self.inner.link.get() {
            return Some(link.status());
        }
        // A browser tab that goes through the one syncing the database: that one's.
        #[cfg(target_arch = "wasm32")]
        if let Some(tab) = self.inner.follower_tab() {
            return crate::storage::tabs::relayed_status(tab);
        }
        None
    }

    /// Waits until every local write committed so far has been accepted by the server (the
    /// outbox is empty), at most `timeout`. Fails with [`Error::Offline`] if that did not
    /// happen in time (the writes stay queued and are sent later), at once with
    /// [`Error::Refused`] while the server refuses this client
    /// ([`SyncStatus::refused`](crate::sync::SyncStatus::refused)), or with
    /// [`Error::NotSynced`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait_pushed(&self, timeout: std::time::Duration) -> Result<()> {
        let link = self.inner.link.get().ok_or(Error::NotSynced {
            what: "waiting for the outbox",
        })?;
        let (done, status) = link.wait(timeout, |s| s.outbox == 0 || s.refused.is_some());
        if status.outbox == 0 {
            return Ok(());
        }
        if let Some(reason) = status.refused.clone().filter(|_| done) {
            return Err(Error::Refused {
                what: "pushing the outbox (the writes stay queued)",
                reason,
            });
        }
        if link.driven() {
            return Err(Error::Offline {
                what: "pushing the outbox",
                reason: format!(
                    "{} entries still waiting; the sync client is driven by the application, \
                     so this looks once without waiting (poll Db::sync_status)",
                    status.outbox
                ),
            });
        }
        let reason = match status.last_error {
            Some(e) => e,
            None if status.waiting > 0 => format!(
                "{} entries still waiting after {timeout:?}, {} of them with records to be taken \
                 back after the server was restored from a backup: the restored server says another \
                 replica holds them, and they are sent once it reconnects and gives the borrows \
                 back, or, for a record of a tree this replica does not subscribe to, once it \
                 subscribes to that tree again (SyncStatus::waiting)",
                status.outbox, status.waiting
            ),
            None => format!("{} entries still waiting after {timeout:?}", status.outbox),
        };
        Err(Error::Offline {
            what: "pushing the outbox",
            reason,
        })
    }

    /// Waits until the sync client is connected and has applied every server change known
    /// when it connected, at most `timeout` ([`Error::Offline`] otherwise; at once
    /// [`Error::Refused`] while the server refuses this client).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait_caught_up(&self, timeout: std::time::Duration) -> Result<()> {
        let link = self.inner.link.get().ok_or(Error::NotSynced {
            what: "waiting for catch-up",
        })?;
        let (done, status) = link.wait(timeout, |s| {
            (s.online && s.caught_up) || s.refused.is_some()
        });
        if status.online && status.caught_up {
            return Ok(());
        }
        if let Some(reason) = status.refused.clone().filter(|_| done) {
            return Err(Error::Refused {
                what: "the connection",
                reason,
            });
        }
        Err(Error::Offline {
            what: "catching up with the server",
            reason: status
                .last_error
                .unwrap_or_else(|| format!("not caught up after {timeout:?}")),
        })
    }

    /// Stops the sync client (if any) and waits until it has stopped. Dropping the last
    /// handle of a database does the same; this is for when the file must be closed at a
    /// known point while other handles may still exist.
    pub fn stop_sync(&self) {
        if let Some(link) = self.inner.link.get() {
            link.stop();
        }
    }

    /// A database in memory (gone when the last handle is dropped); for tests and scratch data.
    pub fn memory() -> Result<Db> {
        Db::memory_with(DbOptions::default())
    }

    /// A database in memory, with options.
    pub fn memory_with(options: DbOptions) -> Result<Db> {
        let redb = storage::open_memory().map_err(|source| Error::Open {
            path: "<memory>".into(),
            source,
        })?;
        Db::init(redb, options, Mode::Standalone, "<memory>")
    }

    /// Opens (or creates) the redb file at `path` (`shown` in messages). An existing file is
    /// first checked read-only, so a file that is not rekord's is refused without being
    /// written to (opening a redb file for writing changes its header).
    #[cfg(not(target_arch = "wasm32"))]
    fn open_redb(path: &std::path::Path, shown: &str) -> Result<redb::Database> {
        let existing = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        if existing {
            match redb::ReadOnlyDatabase::open(path) {
                Ok(probe) => Db::check_ours(&probe.begin_read()?, shown)?,
                // Needs recovery (not closed cleanly): repair a copy in memory and check
                // that, so a crashed file of another application is refused untouched too.
                // (A file too large to copy is repaired in place by the writable open below,
                // and `init` checks the result before writing anything of rekord's.)
                Err(redb::DatabaseError::RepairAborted) => Db::probe_copy(path, shown)?,
                Err(e) => return Err(Error::opening(shown, e)),
            }
        }
        storage::open_file(path).map_err(|e| Error::opening(shown, e))
    }

    /// Checks an unclean file (one that needs recovery) by recovering a copy of it in
    /// memory, when it is at most [`PROBE_COPY_LIMIT`] bytes.
    #[cfg(not(target_arch = "wasm32"))]
    fn probe_copy(path: &std::path::Path, shown: &str) -> Result<()> {
        use redb::StorageBackend as _;
        let too_large = std::fs::metadata(path).map_or(true, |m| m.len() > PROBE_COPY_LIMIT);
        if too_large {
            return Ok(());
        }
        let io = |e: std::io::Error| {
            Error::opening(
                shown,
                redb::DatabaseError::Storage(redb::StorageError::Io(e)),
            )
        };
        let bytes = std::fs::read(path).map_err(io)?;
        let copy = redb::backends::InMemoryBackend::new();
        copy.set_len(bytes.len() as u64).map_err(io)?;
        copy.write(0, &bytes).map_err(io)?;
        drop(bytes);
        let probe = redb::Builder::new()
            .create_with_backend(copy)
            .map_err(|e| Error::opening(shown, e))?;
        Db::check_ours(&probe.begin_read()?, shown)
    }

    /// Refuses a file that is not rekord's, before anything is written to it: a file with
    /// tables but without `rekord.meta`, or whose `rekord.meta` has no format entry. A
    /// file without any table (just created) is fine.
    fn check_ours(txn: &redb::ReadTransaction, path: &str) -> Result<()> {
        let not_ours = |reason: String| Error::NotRekord {
            path: path.to_owned(),
            reason,
            source: None,
        };
        match txn.open_table(META) {
            Ok(meta) => {
                if meta.get("format")?.is_none() {
                    return Err(not_ours(
                        "its `rekord.meta` table has no format entry".into(),
                    ));
                }
                Ok(())
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {
                let mut tables: Vec<String> = txn
                    .list_tables()?
                    .map(|t| t.name().to_owned())
                    .chain(txn.list_multimap_tables()?.map(|t| t.name().to_owned()))
                    .collect();
                if tables.is_empty() {
                    return Ok(());
                }
                tables.sort();
                let shown = tables.len().min(5);
                Err(not_ours(format!(
                    "it is a redb database of another application (tables {}{}), without rekord's `rekord.meta` table",
                    tables[..shown].join(", "),
                    if tables.len() > shown { ", ..." } else { "" }
                )))
            }
            Err(e @ redb::TableError::TableTypeMismatch { .. }) => Err(not_ours(format!(
                "its `rekord.meta` table is not rekord's ({e})"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn init(
        redb: redb::Database,
        options: DbOptions,
        mode: Mode,
        path: &str,
    ) -> Result<Db> {
        Db::check_ours(&redb.begin_read()?, path)?;
        let txn = redb.begin_write()?;
        let (commit, next_id);
        #[cfg_attr(target_arch = "wasm32", allow(unused_mut))]
        let mut replica = LOCAL_REPLICA;
        let created;
        {
            let mut meta = txn.open_table(META)?;
            let format = meta.get("format")?.map(|v| read_u64(v.value()));
            created = format.is_none();
            match format {
                None => {
                    meta.insert(
                        "format",
                        u64::from(storage::FORMAT).to_le_bytes().as_slice(),
                    )?;
                    meta.insert("state", state_bytes(1, 0).as_slice())?;
                    let mut ranges = txn.open_table(RANGES)?;
                    if mode == Mode::Standalone {
                        // A standalone database owns the whole id space (0 is never an id);
                        // a synced one gets ranges from its server.
                        ranges.insert(1, u64::MAX)?;
                    }
                    txn.open_table(SCHEMAS)?;
                    commit = 0;
                    next_id = 1;
                }
                Some(Some(f)) if f == u64::from(storage::FORMAT) => {
                    let state = meta.get("state")?.map(|v| {
                        let v = v.value();
                        (read_u64(v), v.get(8..).and_then(read_u64))
                    });
                    match state {
                        Some((Some(n), Some(c))) => (next_id, commit) = (n, c),
                        _ => {
                            return Err(Error::CorruptMeta {
                                reason: "the allocator state is missing or truncated".into(),
                            });
                        }
                    }
                }
                Some(f) => {
                    return Err(Error::Format {
                        found: f.and_then(|f| u32::try_from(f).ok()).unwrap_or(u32::MAX),
                        expected: storage::FORMAT,
                    });
                }
            }
            let is_client = meta
                .get(crate::sync::MODE)?
                .is_some_and(|v| v.value() == b"client");
            match (mode, is_client || (created && mode == Mode::Client)) {
                (Mode::Standalone, true) => {
                    return Err(Error::Mode {
                        found: "synced",
                        open_with: "Db::open_synced",
                    });
                }
                (Mode::Client, false) => {
                    return Err(Error::Mode {
                        found: "standalone",
                        open_with: "Db::open",
                    });
                }
                _ => {}
            }
            if mode == Mode::Client {
                replica = crate::replica::init_meta(&mut meta, created)?;
            }
        }
        if mode == Mode::Client {
            // Present from the start, so readers never meet a missing outbox.
            txn.open_table(storage::OUTBOX)?;
            txn.open_table(storage::REJECTED)?;
            txn.open_table(storage::PENDING)?;
        }
        let hlc = if mode == Mode::Client {
            txn.open_table(META)?
                .get(crate::sync::HLC)?
                .and_then(|v| read_u64(v.value()))
                .unwrap_or(0)
        } else {
            0
        };
        if created || mode == Mode::Client {
            txn.commit()?;
        } else {
            // Opening an existing standalone database changes nothing in it.
            txn.abort()?;
        }
        Ok(Db::handle(Arc::new(DbInner {
            redb: Store::Rw(redb),
            #[cfg(target_arch = "wasm32")]
            browser: std::sync::OnceLock::new(),
            writer: Mutex::new(WriterState {
                commit,
                next_id,
                range_end: 0,
                lazy: false,
            }),
            trees: RwLock::new(HashMap::new()),
            subscribers: Subscribers::default(),
            replica: AtomicU32::new(replica),
            client: mode == Mode::Client,
            link: std::sync::OnceLock::new(),
            merges: RwLock::new(HashMap::new()),
            hlc: std::sync::atomic::AtomicU64::new(hlc),
            options,
        })))
    }

    /// The application's handle of `inner` (see [`Closer`]).
    fn handle(inner: Arc<DbInner>) -> Db {
        Db {
            closer: Some(Arc::new(Closer(inner.clone()))),
            inner,
        }
    }

    /// The application side of its sync client, if it has one.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn sync_link(&self) -> Option<Arc<crate::sync::client::Link>> {
        self.inner.link.get().cloned()
    }

    /// A handle for the database's own threads: it does not keep the sync thread running.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn internal(inner: Arc<DbInner>) -> Db {
        Db {
            inner,
            closer: None,
        }
    }

    /// The typed handle of `T`'s tree. The first call per type compares `T`'s schema with the
    /// one stored for the same version (storing it if it is new) and fails with
    /// [`Error::SchemaChanged`] if they differ.
    pub fn tree<T: Record>(&self) -> Result<Tree<T>> {
        self.inner.learn_merge::<T>();
        let state = self.inner.tree_state(T::TREE);
        if !state.is_checked::<T>() {
            if self.inner.redb.is_read_only() {
                // Compared, not stored: a read-only database is never written.
                let schema = Schema::of::<T>();
                if let Some(stored) = self
                    .schemas(T::TREE)?
                    .into_iter()
                    .find(|s| s.version == T::VERSION)
                    && !stored.same_shape(&schema)
                {
                    return Err(Error::SchemaChanged {
                        tree: T::TREE.to_owned(),
                        version: T::VERSION,
                        changes: crate::schema::describe_changes(&stored, &schema),
                    });
                }
                lock(&state.checked).push((T::VERSION, TypeId::of::<T>()));
            } else {
                let mut b = self.batch()?;
                b.check_schema::<T>(&state)?;
                b.commit()?;
            }
        }
        Ok(Tree::new(self.clone(), state))
    }

    /// Starts an atomic write batch: every change made through it commits together in
    /// [`Batch::commit`], or not at all (dropping the batch aborts it, without events).
    ///
    /// One batch is open at a time per database; other threads wait. Opening a second batch on
    /// the same thread is [`Error::BatchInProgress`].
    pub fn batch(&self) -> Result<Batch<'_>> {
        Batch::begin(&self.inner)
    }

    /// Runs `f` in a write batch and commits it if `f` returns `Ok`; aborts it otherwise.
    ///
    /// In a synced database, a batch that runs out of ids ([`Error::IdsExhausted`]) while
    /// the server is reachable is aborted, the replica fetches more ids (four times what the
    /// batch used) and `f` runs again in a new batch, until it has the ids it needs or
    /// [`SyncConfig::timeout`](crate::SyncConfig::timeout) passes (waiting for ids stops at
    /// the deadline; a run of `f` started before it finishes); this is why `f` is `FnMut`.
    /// [`Error::IdsExhausted`] means the server could not be reached in that time.
    pub fn write<R>(&self, mut f: impl FnMut(&mut Batch<'_>) -> Result<R>) -> Result<R> {
        let deadline = self.inner.sync_timeout().map(crate::rt::after);
        loop {
            let mut b = self.batch()?;
            match f(&mut b) {
                Ok(r) => {
                    b.commit()?;
                    return Ok(r);
                }
                Err(e) => {
                    let short = b.ids_short();
                    drop(b);
                    let in_time = deadline.filter(|d| crate::rt::Instant::now() < *d);
                    match (short, in_time) {
                        (Some(ids), Some(until)) if self.inner.refill_ids(ids, until)? => {}
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    /// Subscribes to every change committed from now on.
    pub fn subscribe(&self) -> Subscription {
        self.inner.subscribers.subscribe()
    }

    /// Registers an indexer for `T`'s tree: it is first called for every existing record
    /// (replay, while writes wait), then for every change, right after commit and before
    /// subscribers see the event. Keep a clonable handle to the index inside the indexer to
    /// query it. A panic inside the indexer disables that indexer (see [`IndexerStatus`]) and
    /// affects nothing else.
    pub fn register_indexer<T: Record, I: Indexer<T>>(&self, indexer: I) -> Result<IndexerStatus> {
        let state = self.inner.tree_state(T::TREE);
        let mut b = self.batch()?;
        if !state.is_checked::<T>() {
            b.check_schema::<T>(&state)?;
        }
        let status = b.replay_into::<T, I>(&state, indexer)?;
        b.commit()?;
        Ok(status)
    }

    /// The holder number of this replica (who it is in borrow records): [`LOCAL_REPLICA`]
    /// in a standalone database; in a synced one the number its server gave it (`u32::MAX`
    /// before the first connection).
    pub fn replica(&self) -> u32 {
        self.inner.replica.load(Ordering::Acquire)
    }

    /// Whether the database was opened with [`Db::open_read_only`] (every write is
    /// [`Error::ReadOnly`]).
    pub fn is_read_only(&self) -> bool {
        self.inner.redb.is_read_only()
    }

    /// Whether this is a synced database ([`Db::open_synced`]).
    pub fn is_synced(&self) -> bool {
        self.inner.client
    }

    /// The last committed change number.
    pub fn last_commit(&self) -> u64 {
        lock(&self.inner.writer).commit
    }

    /// Every schema version stored for `tree`, oldest first.
    pub fn schemas(&self, tree: &str) -> Result<Vec<Schema>> {
        let txn = self.inner.redb.begin_read()?;
        let table = txn.open_table(SCHEMAS)?;
        let mut out = Vec::new();
        for row in table.range((tree, 0)..=(tree, u32::MAX))? {
            let (k, v) = row?;
            let version = k.value().1;
            let schema = Schema::from_ron(v.value()).map_err(|e| Error::CorruptSchema {
                tree: tree.to_owned(),
                version,
                reason: e.to_string(),
            })?;
            if schema.tree != tree || schema.version != version {
                return Err(Error::CorruptSchema {
                    tree: tree.to_owned(),
                    version,
                    reason: format!(
                        "its text is the schema of tree `{}` version {}",
                        schema.tree, schema.version
                    ),
                });
            }
            out.push(schema);
        }
        Ok(out)
    }
}

impl DbInner {
    pub(crate) fn tree_state(&self, name: &str) -> Arc<TreeState> {
        if let Some(s) = self
            .trees
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            return s.clone();
        }
        let mut trees = self
            .trees
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        trees
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(TreeState {
                    name: Arc::from(name),
                    table: storage::table_name(name),
                    cache: Cache::new(self.options.cache_bytes),
                    checked: Mutex::new(Vec::new()),
                    indexers: Mutex::new(Vec::new()),
                    has_indexers: AtomicBool::new(false),
                    schemas: Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }

    /// The merge strategy of `tree` if it is an optimistic tree of a synced database.
    pub(crate) fn merge_of(&self, tree: &str) -> Option<crate::sync::Merge> {
        self.merges
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tree)
            .cloned()
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    /// Whether `tree` is optimistic here: known in this process ([`DbInner::merge_of`]), or
    /// recorded by an earlier one (`sync.optimistic.<tree>`).
    pub(crate) fn is_optimistic(&self, tree: &str) -> Result<bool> {
        if self.merge_of(tree).is_some() {
            return Ok(true);
        }
        Ok(self.stored_merge(tree)?.is_some())
    }

    /// The merge strategy name an earlier process recorded for `tree`
    /// (`sync.optimistic.<tree>`).
    fn stored_merge(&self, tree: &str) -> Result<Option<String>> {
        let txn = self.redb.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(m) => m,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let key = format!("{}{tree}", crate::sync::OPTIMISTIC_PREFIX);
        Ok(meta
            .get(key.as_str())?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// The merge strategy of `tree`: known in this process, else the one an earlier
    /// process recorded (a custom strategy is known only once the application opens the
    /// tree or configures it).
    pub(crate) fn merge_for(&self, tree: &str) -> Result<Option<crate::sync::Merge>> {
        if let Some(m) = self.merge_of(tree) {
            return Ok(Some(m));
        }
        Ok(self
            .stored_merge(tree)?
            .and_then(|name| crate::sync::Merge::from_name(&name)))
    }

    /// Makes `T`'s tree optimistic if its type says so (`merge = "..."`) and the
    /// configuration did not already decide (synced databases).
    pub(crate) fn learn_merge<T: Record>(&self) {
        if !self.client {
            return;
        }
        let Some(merge) = T::__merge() else {
            return;
        };
        let known = self
            .merges
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(T::TREE);
        if !known {
            self.merges
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(T::TREE.to_owned())
                .or_insert(merge);
        }
    }

    /// Tells the sync thread that the outbox has new entries.
    pub(crate) fn wake_sync(&self, entries: u64, bytes: u64) {
        if let Some(link) = self.link.get() {
            link.enqueued(entries, bytes);
        }
        #[cfg(target_arch = "wasm32")]
        let _ = (entries, bytes);
    }

    /// The sync client's request timeout (`None` for a database that is not synced).
    pub(crate) fn sync_timeout(&self) -> Option<std::time::Duration> {
        if let Some(link) = self.link.get() {
            return Some(link.timeout());
        }
        #[cfg(target_arch = "wasm32")]
        if let Some(tab) = self.follower_tab() {
            return crate::storage::tabs::follower_timeout(tab);
        }
        None
    }

    /// In a browser: the tab of a synced database that goes through the tab syncing it.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn follower_tab(&self) -> Option<u64> {
        if !self.client || self.link.get().is_some() {
            return None;
        }
        self.browser
            .get()
            .and_then(|h| h.tab())
            .filter(|t| !crate::storage::tabs::leads(*t))
    }

    /// Asks the sync client for `ids` free ids and waits for them (bounded); whether they
    /// came. Must not be called inside a batch (the sync thread commits the ranges).
    /// [`Error::IdsRefused`] when the server gives this replica no ids at all.
    pub(crate) fn refill_ids(&self, ids: u64, until: crate::rt::Instant) -> Result<bool> {
        if let Some(link) = self.link.get() {
            return link.refill_ids(ids, until);
        }
        // A tab that goes through the one syncing the database asks it (the write fails
        // now, and may be tried again once they came).
        #[cfg(target_arch = "wasm32")]
        if let Some(tab) = self.follower_tab() {
            crate::storage::tabs::want_ids(tab);
        }
        let _ = (ids, until);
        Ok(false)
    }

    /// Whether writes to `tree` wait for the server (write-through).
    pub(crate) fn write_through(&self, tree: &str) -> bool {
        if let Some(link) = self.link.get() {
            return link.write_through(tree);
        }
        #[cfg(target_arch = "wasm32")]
        if let Some(tab) = self.follower_tab() {
            return crate::storage::tabs::follower_write_through(tab, tree);
        }
        let _ = tree;
        false
    }

    /// Refuses a write-through write while the server is not connected.
    pub(crate) fn require_online(&self) -> Result<()> {
        if let Some(link) = self.link.get() {
            return link.require_online();
        }
        #[cfg(target_arch = "wasm32")]
        if self.follower_tab().is_some() {
            return Err(Error::Offline {
                what: "a write-through write",
                reason: "this tab goes through another tab of the page's origin, which syncs \
                         the database; a write-through write waits for the server, so make it \
                         in that tab"
                    .into(),
            });
        }
        Ok(())
    }

    /// Waits until the server processed outbox entries `first..=last` (write-through).
    pub(crate) fn await_entries(&self, first: u64, last: u64) -> Result<()> {
        if let Some(link) = self.link.get() {
            return link.await_entries(first, last, || {
                crate::replica::rejected_among(self, first, last)
            });
        }
        let _ = (first, last);
        Ok(())
    }

    /// Refuses a write whose `bytes` of outbox entries would exceed the outbox limit.
    pub(crate) fn outbox_room(&self, bytes: u64) -> Result<()> {
        if let Some(link) = self.link.get() {
            return link.room(bytes);
        }
        #[cfg(target_arch = "wasm32")]
        if let Some(tab) = self.follower_tab() {
            return crate::storage::tabs::follower_room(tab, bytes);
        }
        let _ = bytes;
        Ok(())
    }

    pub(crate) fn deliver(&self, events: &[Event]) {
        if !events.is_empty() {
            self.subscribers.send_all(events);
        }
    }
}

pub(crate) fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(*bytes.first_chunk::<8>()?))
}
