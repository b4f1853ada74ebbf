//! Atomic write batches.

use super::RecordMeta;
use super::evolve;
use crate::db::{DbInner, TreeState, WriterState};
use crate::event::{Event, EventKind, RecordEvent, lock};
use crate::index::{IndexerSlot, IndexerStatus, RawChange};
use crate::proto::{Change, ChangeKind};
use crate::schema::dynamic::Value;
use crate::schema::{Schema, describe_changes};
use crate::storage::{HEADER_LEN, Header, META, PENDING, RANGES, SCHEMAS, id_range, pack, unpack};
use crate::{Archived, Error, Indexer, Key, RawKey, Record, Result};
use redb::{ReadableTable, WriteTransaction};
use std::any::TypeId;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

thread_local! {
    /// Databases (by address) with a batch open on this thread.
    static OPEN: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

struct Reentrancy(usize);

/// Whether a batch of `db` is open on this thread.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn batch_open_here(db: &DbInner) -> bool {
    let addr = std::ptr::from_ref(db) as usize;
    OPEN.with(|o| o.borrow().contains(&addr))
}

impl Reentrancy {
    fn enter(db: &DbInner) -> Result<Reentrancy> {
        let addr = std::ptr::from_ref(db) as usize;
        OPEN.with(|o| {
            let mut o = o.borrow_mut();
            if o.contains(&addr) {
                Err(Error::BatchInProgress)
            } else {
                o.push(addr);
                Ok(Reentrancy(addr))
            }
        })
    }
}

impl Drop for Reentrancy {
    fn drop(&mut self) {
        OPEN.with(|o| o.borrow_mut().retain(|a| *a != self.0));
    }
}

/// An atomic write batch over any number of trees; see [`Db::batch`](crate::Db::batch).
///
/// For many changes to one tree, open the tree once with [`Batch::tree`] and call its methods:
/// that keeps the tree's table open between changes. The methods on `Batch` itself are
/// shorthands that open the tree for one change.
pub struct Batch<'db> {
    pub(crate) db: &'db DbInner,
    pub(crate) writer: MutexGuard<'db, WriterState>,
    pub(crate) txn: WriteTransaction,
    pub(crate) core: Core,
    // Declared last: released after the writer lock.
    _reentrancy: Reentrancy,
}

pub(crate) struct Pending {
    pub(crate) tree: u32,
    pub(crate) key: RawKey,
    pub(crate) kind: EventKind,
    /// Holder number of the replica that made the change.
    pub(crate) origin: u32,
    /// Whether this is an event (false: only a cache invalidation).
    pub(crate) event: bool,
    pub(crate) invalidate: bool,
    /// Old and new stored values, kept only for trees with indexers.
    pub(crate) bytes: Option<Box<OldNew>>,
}

/// The stored values before and after a change.
pub(crate) type OldNew = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The highest record id an import accepts (2^63): new records take ids after the highest
/// imported one.
const IMPORT_MAX_ID: u64 = 1 << 63;

struct IdAlloc {
    next: u64,
    end: u64,
    dirty: bool,
}

pub(crate) struct Core {
    pub(crate) replica: u32,
    /// Whether this is a synced database: local changes also go to the outbox.
    client: bool,
    /// Changes for the outbox (synced databases).
    pub(crate) outbox: Vec<Change>,
    /// Other tabs' entries a leader sends on as its own (`storage::tabs`): each stays an
    /// entry of its own after `outbox` (together they may be more than one request carries).
    pub(crate) relayed: Vec<Vec<Change>>,
    /// Borrows returned in this batch, sent after `outbox` (synced databases).
    pub(crate) returns: Vec<(String, u64)>,
    /// Outbox entries this batch wrote again under their numbers (a merged conflict):
    /// carried to other tabs like new ones.
    pub(crate) rewritten: Vec<u64>,
    /// The server cursor to store with this batch (remote changes applied).
    pub(crate) cursor: Option<u64>,
    /// Whether the outbox byte limit does not apply (the sync client's own batches).
    pub(crate) unlimited: bool,
    /// Whether this batch commits without waiting for the disk ([`Batch::lazy`]).
    lazy: bool,
    /// Ids this batch allocated, and whether it ran out of them.
    allocated: u64,
    short_of_ids: bool,
    /// The hybrid logical clock as this batch moved it, and whether it did.
    pub(crate) hlc: u64,
    pub(crate) hlc_moved: bool,
    /// Id allocator state as of the last commit (copied from the writer state).
    next_id: u64,
    range_end: u64,
    pub(crate) pending: Vec<Pending>,
    pub(crate) trees: Vec<Arc<TreeState>>,
    checked: Vec<(Arc<TreeState>, u32, TypeId)>,
    ids: Option<IdAlloc>,
    scratch: Vec<u8>,
}

impl<'db> Batch<'db> {
    pub(crate) fn begin(db: &'db DbInner) -> Result<Batch<'db>> {
        let reentrancy = Reentrancy::enter(db)?;
        let writer = lock(&db.writer);
        let txn = db.redb.begin_write()?;
        let (next_id, range_end) = (writer.next_id, writer.range_end);
        Ok(Batch {
            db,
            writer,
            txn,
            core: Core {
                replica: db.replica.load(Ordering::Acquire),
                client: db.client,
                outbox: Vec::new(),
                relayed: Vec::new(),
                returns: Vec::new(),
                rewritten: Vec::new(),
                cursor: None,
                unlimited: false,
                lazy: false,
                allocated: 0,
                short_of_ids: false,
                hlc: db.hlc.load(Ordering::Acquire),
                hlc_moved: false,
                next_id,
                range_end,
                pending: Vec::new(),
                trees: Vec::new(),
                checked: Vec::new(),
                ids: None,
                scratch: Vec::new(),
            },
            _reentrancy: reentrancy,
        })
    }

    /// Compares `T`'s schema with the stored one for its version, storing it if new.
    pub(crate) fn check_schema<T: Record>(&mut self, state: &Arc<TreeState>) -> Result<()> {
        if self
            .core
            .checked
            .iter()
            .any(|(s, v, t)| Arc::ptr_eq(s, state) && *v == T::VERSION && *t == TypeId::of::<T>())
        {
            return Ok(());
        }
        let schema = Schema::of::<T>();
        let mut table = self.txn.open_table(SCHEMAS)?;
        let stored = table
            .get((T::TREE, T::VERSION))?
            .map(|v| v.value().to_owned());
        match stored {
            Some(text) => {
                let stored = Schema::from_ron(&text).map_err(|e| Error::CorruptSchema {
                    tree: T::TREE.to_owned(),
                    version: T::VERSION,
                    reason: e.to_string(),
                })?;
                // Type names are not part of the layout: a renamed type is the same schema
                // (the stored one keeps the names it was first stored with).
                if !stored.same_shape(&schema) {
                    return Err(Error::SchemaChanged {
                        tree: T::TREE.to_owned(),
                        version: T::VERSION,
                        changes: describe_changes(&stored, &schema),
                    });
                }
            }
            None => {
                let text = schema.to_ron().map_err(|e| Error::Encode {
                    tree: T::TREE.to_owned(),
                    reason: e.to_string(),
                })?;
                table.insert((T::TREE, T::VERSION), text.as_str())?;
            }
        }
        drop(table);
        if self.core.client
            && let Some(merge) = T::__merge()
        {
            let key = format!("{}{}", crate::sync::OPTIMISTIC_PREFIX, T::TREE);
            self.txn
                .open_table(META)?
                .insert(key.as_str(), merge.name().as_bytes())?;
        }
        // Make sure the tree's table exists, so readers find an empty tree.
        self.txn.open_table(state.def())?;
        self.core
            .checked
            .push((state.clone(), T::VERSION, TypeId::of::<T>()));
        Ok(())
    }

    /// The index of `state` in this batch's list of trees (added if new).
    pub(crate) fn tree_index(&mut self, state: &Arc<TreeState>) -> u32 {
        let tree = match self.core.trees.iter().position(|s| Arc::ptr_eq(s, state)) {
            Some(i) => i,
            None => {
                self.core.trees.push(state.clone());
                self.core.trees.len() - 1
            }
        };
        // At most one entry per tree name, and tree names are distinct strings of at most
        // the number of trees in the process: far below u32::MAX.
        u32::try_from(tree).unwrap_or(u32::MAX)
    }

    /// Opens `T`'s tree in this batch.
    pub fn tree<T: Record>(&mut self) -> Result<BatchTree<'_, T>> {
        let state = self.db.tree_state(T::TREE);
        if !state.is_checked::<T>() {
            self.check_schema::<T>(&state)?;
        }
        let tree = self.tree_index(&state);
        let table = self.txn.open_table(state.def())?;
        self.db.learn_merge::<T>();
        let merge = self.db.merge_of(T::TREE).filter(|_| self.core.client);
        let optimistic = merge.is_some();
        let strategy = merge.map(|m| m.name()).unwrap_or_default();
        Ok(BatchTree {
            table,
            txn: &self.txn,
            core: &mut self.core,
            tree,
            state,
            optimistic,
            strategy,
            version: T::VERSION,
            _type: PhantomData,
        })
    }

    /// Opens the tree `name` untyped, writing schema `version` (its newest stored one).
    pub(crate) fn dyn_tree(&mut self, name: &str, version: u32) -> Result<BatchTree<'_, Dynamic>> {
        let state = self.db.tree_state(name);
        let tree = self.tree_index(&state);
        let table = self.txn.open_table(state.def())?;
        let merge = if self.core.client {
            self.db.merge_for(name)?
        } else {
            None
        };
        let optimistic = merge.is_some();
        let strategy = merge.map(|m| m.name()).unwrap_or_default();
        Ok(BatchTree {
            table,
            txn: &self.txn,
            core: &mut self.core,
            tree,
            state,
            optimistic,
            strategy,
            version,
            _type: PhantomData,
        })
    }

    /// Creates a record (revision 0), borrowed by this replica from birth.
    pub fn create<T: Record>(&mut self, record: &T) -> Result<Key<T>> {
        self.tree::<T>()?.create(record)
    }

    /// Changes a draft this replica holds, through a closure on an owned copy.
    pub fn update<T: Record, R>(&mut self, key: Key<T>, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        self.tree::<T>()?.update(key, f)
    }

    /// Replaces a draft this replica holds.
    pub fn replace<T: Record>(&mut self, key: Key<T>, record: &T) -> Result<()> {
        self.tree::<T>()?.replace(key, record)
    }

    /// Removes a draft revision this replica holds.
    pub fn remove<T: Record>(&mut self, key: Key<T>) -> Result<()> {
        self.tree::<T>()?.remove(key)
    }

    /// Releases (freezes) a draft this replica holds.
    pub fn release<T: Record>(&mut self, key: Key<T>) -> Result<()> {
        self.tree::<T>()?.release(key)
    }

    /// Sets the state of a released revision.
    pub fn set_state<T: Record>(&mut self, key: Key<T>, state: u32) -> Result<()> {
        self.tree::<T>()?.set_state(key, state)
    }

    /// Makes the next revision (a draft) from the latest, released, revision.
    pub fn new_revision<T: Record>(&mut self, key: Key<T>) -> Result<Key<T>> {
        self.tree::<T>()?.new_revision(key)
    }

    /// Takes the borrow of a record.
    pub fn borrow<T: Record>(&mut self, key: Key<T>) -> Result<()> {
        self.tree::<T>()?.borrow(key)
    }

    /// Returns the borrow of a record.
    pub fn return_borrow<T: Record>(&mut self, key: Key<T>) -> Result<()> {
        self.tree::<T>()?.return_borrow(key)
    }

    /// Reads a record as this batch sees it (including its own uncommitted changes).
    pub fn get<T: Record>(&mut self, key: Key<T>) -> Result<T> {
        self.tree::<T>()?.get(key)
    }

    /// Commits every change of the batch atomically and durably, then delivers the events.
    ///
    /// In a synced database, a batch that changes a write-through tree (see
    /// [`WriteMode`](crate::sync::WriteMode)) returns only once the server accepted it: it
    /// fails with [`Error::Offline`] (or [`Error::Refused`] while the server refuses this
    /// client) before changing anything when the server is not connected, with
    /// [`Error::Refused`] when the server refused the write (the local change is then
    /// undone, with events), and with [`Error::Unconfirmed`] when no answer came in time
    /// (the change stays committed locally and queued).
    ///
    /// A batch of a synced database that could never reach the server (a record over
    /// [`crate::proto::MAX_RECORD`] bytes, or more than one request carries) fails with
    /// [`Error::TooLarge`] and changes nothing.
    pub fn commit(self) -> Result<()> {
        let through = self.core.client
            && (self
                .core
                .outbox
                .iter()
                .any(|c| self.db.write_through(&c.tree))
                || self
                    .core
                    .returns
                    .iter()
                    .any(|(t, _)| self.db.write_through(t)));
        if through {
            self.db.require_online()?;
        }
        let db = self.db;
        let entries = self.commit_inner()?;
        match entries {
            Some((first, last)) if through => db.await_entries(first, last),
            _ => Ok(()),
        }
    }

    /// Commits for the sync client: never waits for the server (write-through does not
    /// apply) and the outbox byte limit does not refuse it.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn commit_for_sync(mut self) -> Result<()> {
        self.core.unlimited = true;
        self.commit_inner().map(|_| ())
    }

    /// Commits; returns the outbox entry numbers added (first, last).
    fn commit_inner(self) -> Result<Option<(u64, u64)>> {
        let Batch {
            db,
            mut writer,
            txn,
            core,
            _reentrancy,
        } = self;
        let has_events = core.pending.iter().any(|p| p.event);
        let commit = if !has_events {
            writer.commit
        } else {
            writer.commit + 1
        };
        {
            let mut meta = txn.open_table(META)?;
            let ids_dirty = core.ids.as_ref().is_some_and(|i| i.dirty);
            if ids_dirty || commit != writer.commit {
                let next = core.ids.as_ref().map_or(writer.next_id, |i| i.next);
                meta.insert("state", crate::db::state_bytes(next, commit).as_slice())?;
            }
            if let Some(cursor) = core.cursor {
                meta.insert(crate::sync::CURSOR, cursor.to_le_bytes().as_slice())?;
            }
            if core.hlc_moved {
                meta.insert(crate::sync::HLC, core.hlc.to_le_bytes().as_slice())?;
            }
        }
        // (An entry no request could carry is refused at the door: it would block the
        // outbox. Refusing aborts the transaction: nothing of the batch happens.)
        let (first, queued, bytes) =
            if !core.outbox.is_empty() || !core.relayed.is_empty() || !core.returns.is_empty() {
                crate::storage::outbox::enqueue_checked(
                    &txn,
                    &core.outbox,
                    &core.relayed,
                    &core.returns,
                )?
            } else {
                (0, 0, 0)
            };
        let entries = (queued > 0).then(|| (first, first + queued - 1));
        if queued > 0 && !core.unlimited {
            // Refusing here aborts the transaction: nothing of the batch happens.
            db.outbox_room(bytes)?;
        }
        // Values read before this commit must not enter the cache from now on (see
        // `cache::Cache::bump`).
        // The keys it changes leave the cache now, before the commit can be seen (a reader
        // that already sees the new value must never meet the old one in the cache).
        for (i, state) in core.trees.iter().enumerate() {
            let mut keys = core
                .pending
                .iter()
                .filter(|p| p.invalidate && p.tree as usize == i)
                .map(|p| p.key)
                .peekable();
            if keys.peek().is_some() {
                state.cache.bump(keys);
            }
        }
        // In the browser, a synced database's leading tab counts its commits and tells
        // its followers how its outbox moves.
        #[cfg(target_arch = "wasm32")]
        let (commits, front) = match db.browser.get().and_then(|h| h.tab()) {
            Some(tab) => match crate::storage::tabs::leader_commit(tab, &txn)? {
                Some((n, front)) => (Some(n), front.map(|f| (tab, f))),
                None => (None, None),
            },
            None => (None, None),
        };
        // In the browser, with other tabs sharing the database: what they apply.
        #[cfg(target_arch = "wasm32")]
        let shared = match db.browser.get().and_then(|h| h.tab()) {
            Some(tab)
                if (!core.pending.is_empty()
                    || !core.rewritten.is_empty()
                    || entries.is_some())
                    && crate::storage::tabs::captures(tab) =>
            {
                Some((
                    tab,
                    crate::storage::tabs::capture(tab, &txn, &core, entries, commits)?,
                ))
            }
            _ => None,
        };
        if let Err(e) = txn.commit() {
            // Nothing changed: the caches admit again.
            for state in &core.trees {
                state.cache.invalidate([], 0);
            }
            return Err(e.into());
        }
        #[cfg(target_arch = "wasm32")]
        if let Some((tab, changes)) = shared {
            crate::storage::tabs::committed(tab, changes);
        }
        #[cfg(target_arch = "wasm32")]
        if let Some((tab, front)) = front {
            crate::storage::tabs::outbox_moved(tab, front);
        }
        // A durable commit makes every earlier lazy one durable too.
        writer.lazy = core.lazy;
        if core.hlc_moved {
            db.hlc.fetch_max(core.hlc, Ordering::AcqRel);
        }
        if queued > 0 {
            db.wake_sync(queued, bytes);
        }
        writer.commit = commit;
        if let Some(ids) = &core.ids {
            writer.next_id = ids.next;
            writer.range_end = ids.end;
        }

        for (state, v, t) in core.checked {
            let mut c = lock(&state.checked);
            if !c.contains(&(v, t)) {
                c.push((v, t));
            }
        }
        if core.pending.is_empty() {
            return Ok(entries);
        }
        for (i, state) in core.trees.iter().enumerate() {
            let keys = core
                .pending
                .iter()
                .filter(|p| p.invalidate && p.tree as usize == i)
                .map(|p| p.key);
            state.cache.invalidate(keys, commit);
        }
        for p in &core.pending {
            let Some(state) = core.trees.get(p.tree as usize).filter(|_| p.event) else {
                continue;
            };
            if !state.has_indexers.load(Ordering::Acquire) {
                continue;
            }
            let (old, new) = match &p.bytes {
                Some(b) => (b.0.as_deref(), b.1.as_deref()),
                None => (None, None),
            };
            let schemas = |version| {
                evolve::writer_schema(state, version, || {
                    evolve::read_schemas(&db.redb.begin_read()?)
                })
            };
            let change = RawChange {
                key: p.key,
                kind: p.kind,
                replay: false,
                old,
                new,
                schemas: &schemas,
            };
            let mut slots = lock(&state.indexers);
            slots.retain_mut(|s| s.call(&state.name, &change));
            if slots.is_empty() {
                state.has_indexers.store(false, Ordering::Release);
            }
        }
        if db.subscribers.any() {
            let events: Vec<Event> = core
                .pending
                .iter()
                .filter(|p| p.event)
                .filter_map(|p| {
                    let state = core.trees.get(p.tree as usize)?;
                    Some(Event::Record(RecordEvent {
                        commit,
                        tree: state.name.clone(),
                        key: p.key,
                        kind: p.kind,
                        origin: p.origin,
                    }))
                })
                .collect();
            db.deliver(&events);
        }
        drop(writer);
        Ok(entries)
    }

    /// Commits this batch without waiting for the disk (redb `Durability::None`): atomic,
    /// and made durable by the next durable commit, but lost in a crash before that.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn lazy(&mut self) {
        // Refused only with persistent savepoints, which rekord never creates; then the
        // commit simply stays durable.
        if self.txn.set_durability(redb::Durability::None).is_ok() {
            self.core.lazy = true;
        }
    }

    /// Makes every lazy commit so far durable (one empty durable commit), if there is one
    /// that is not yet; whether a commit was needed.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn make_durable(db: &DbInner) -> Result<bool> {
        if !lock(&db.writer).lazy {
            return Ok(false);
        }
        let b = Batch::begin(db)?;
        if !b.writer.lazy {
            return Ok(false);
        }
        b.commit_for_sync()?;
        Ok(true)
    }

    /// Discards every change of the batch (no events). Dropping the batch does the same.
    pub fn abort(self) {}

    /// How many free ids to ask the server for after this batch ran out of them (`None` if
    /// it did not): four times what it used, so a batch larger than the ranges gets through
    /// in a few runs at most, without asking for ids nobody will use.
    pub(crate) fn ids_short(&self) -> Option<u64> {
        self.core
            .short_of_ids
            .then(|| self.core.allocated.saturating_mul(4).saturating_add(1))
    }

    pub(crate) fn replay_into<T: Record, I: Indexer<T>>(
        &mut self,
        state: &Arc<TreeState>,
        indexer: I,
    ) -> Result<IndexerStatus> {
        let mut slot = IndexerSlot::new::<T, I>(indexer);
        {
            let txn = &self.txn;
            let schemas =
                |version| evolve::writer_schema(state, version, || Ok(txn.open_table(SCHEMAS)?));
            let table = self.txn.open_table(state.def())?;
            for row in table.iter()? {
                let (k, v) = row?;
                let change = RawChange {
                    key: unpack(k.value()),
                    kind: EventKind::Created,
                    replay: true,
                    old: None,
                    new: Some(v.value()),
                    schemas: &schemas,
                };
                if !slot.call(&state.name, &change) {
                    return Err(Error::IndexerPanicked {
                        tree: state.name.to_string(),
                        message: slot.status().failure().unwrap_or_default(),
                    });
                }
            }
        }
        let status = slot.status();
        lock(&state.indexers).push(slot);
        state.has_indexers.store(true, Ordering::Release);
        Ok(status)
    }
}

/// What [`BatchTree::migrate_one`] did with one record.
pub(crate) enum MigrateOne {
    /// Rewritten in the current version.
    Done,
    /// Nothing to do (gone, or not older).
    Nothing,
    /// Left as it is: it cannot be converted, for this reason.
    Skipped(Error),
}

/// The record type of an untyped tree in a batch (see [`crate::DynTree`]).
pub enum Dynamic {}

/// One tree inside a [`Batch`], with its table kept open; see [`Batch::tree`].
pub struct BatchTree<'b, T> {
    table: redb::Table<'b, u128, &'static [u8]>,
    txn: &'b WriteTransaction,
    core: &'b mut Core,
    tree: u32,
    state: Arc<TreeState>,
    /// Whether this is an optimistic tree of a synced database.
    optimistic: bool,
    /// The name of its merge strategy (optimistic trees).
    strategy: String,
    /// The schema version written (`T::VERSION`; the newest stored one for untyped trees).
    version: u32,
    _type: PhantomData<fn() -> T>,
}

impl<T> BatchTree<'_, T> {
    /// The tree's name.
    fn name(&self) -> String {
        self.state.name.to_string()
    }

    fn not_found(&self, key: RawKey) -> Error {
        Error::NotFound {
            tree: self.name(),
            key,
        }
    }

    fn corrupt(&self, key: RawKey, reason: impl std::fmt::Display) -> Error {
        Error::Corrupt {
            tree: self.name(),
            key,
            reason: reason.to_string(),
        }
    }

    fn push(
        &mut self,
        key: RawKey,
        kind: EventKind,
        invalidate: bool,
        old: Option<Vec<u8>>,
        new: Option<&[u8]>,
    ) {
        let bytes = if self.state.has_indexers.load(Ordering::Relaxed) {
            Some(Box::new((old, new.map(<[u8]>::to_vec))))
        } else {
            None
        };
        self.core.pending.push(Pending {
            tree: self.tree,
            key,
            kind,
            origin: self.core.replica,
            event: true,
            invalidate,
            bytes,
        });
    }

    /// Queues `kind` for the server (synced databases only).
    fn log(&mut self, key: RawKey, kind: impl FnOnce() -> ChangeKind) {
        if self.core.client {
            self.core.outbox.push(Change {
                tree: self.name(),
                id: key.id,
                rev: key.rev,
                kind: kind(),
            });
        }
    }

    fn put(&self, value: &[u8]) -> ChangeKind {
        let (version, data) = match Header::parse(value) {
            Some((h, data)) => (h.version, data.to_vec()),
            None => (self.version, Vec::new()),
        };
        ChangeKind::Put { version, data }
    }

    /// The stored value of `key`, copied, with its header.
    fn load(&self, key: RawKey) -> Result<(Header, Vec<u8>)> {
        let guard = self
            .table
            .get(pack(key))?
            .ok_or_else(|| self.not_found(key))?;
        let value = guard.value();
        let (h, _) =
            Header::parse(value).ok_or_else(|| self.corrupt(key, "invalid value header"))?;
        Ok((h, value.to_vec()))
    }

    /// The latest revision of `id`: its key, header and value.
    fn latest(&self, id: u64) -> Result<Option<(RawKey, Header, Vec<u8>)>> {
        let mut range = self.table.range(id_range(id))?;
        let Some(row) = range.next_back() else {
            return Ok(None);
        };
        let (k, v) = row?;
        let key = unpack(k.value());
        let value = v.value();
        let (h, _) =
            Header::parse(value).ok_or_else(|| self.corrupt(key, "invalid value header"))?;
        Ok(Some((key, h, value.to_vec())))
    }

    /// Checks that `key` is a draft this replica may change the data of: it holds the
    /// borrow, or (optimistic trees) nobody does.
    fn check_editable(&self, key: RawKey, h: &Header) -> Result<()> {
        if self.optimistic && h.holder == 0 && !h.released {
            return Ok(());
        }
        self.check_draft(key, h)
    }

    fn check_draft(&self, key: RawKey, h: &Header) -> Result<()> {
        if h.released {
            return Err(Error::Released {
                tree: self.name(),
                key,
            });
        }
        // A draft is always the latest revision of its id (new_revision requires the latest to
        // be released), so its own header carries the id's borrow.
        self.check_holder(key, h)
    }

    fn check_holder(&self, key: RawKey, h: &Header) -> Result<()> {
        if h.holder != self.core.replica {
            return Err(Error::NotBorrowed {
                tree: self.name(),
                key,
                holder: h.holder,
            });
        }
        Ok(())
    }

    fn store(&mut self, key: RawKey, value: &[u8]) -> Result<()> {
        self.table.insert(pack(key), value)?;
        Ok(())
    }

    fn alloc_id(&mut self) -> Result<u64> {
        alloc_id(self.txn, self.core)
    }

    /// Queues an optimistic edit of `key` to `value` (optimistic trees): stamped with the
    /// next clock value, based on the server version the record's pending edits are based
    /// on, or else on the last applied server change.
    fn log_edit(&mut self, key: RawKey, value: &[u8], old: Option<&[u8]>) -> Result<()> {
        let (version, data) = match Header::parse(value) {
            Some((h, data)) => (h.version, data.to_vec()),
            None => (self.version, Vec::new()),
        };
        self.core.hlc = crate::sync::merge::hlc_next(self.core.hlc, crate::rt::now_ms());
        self.core.hlc_moved = true;
        let hlc = self.core.hlc;
        let mut pending = self.txn.open_table(PENDING)?;
        let row = pending
            .get((&*self.state.name, key.id))?
            .map(|v| crate::storage::outbox::PendingRow::decode(v.value()));
        let row = match row {
            Some(mut row) if row.count > 0 => {
                row.count += 1;
                row.hlc = hlc;
                row.strategy.clone_from(&self.strategy);
                row
            }
            row => {
                // The first edit waiting: based on the newest server version the record
                // here reflects: the last applied server change, or this replica's own
                // newer accepted edit.
                let cursor = crate::storage::cursor_in(self.txn)?;
                let floor = row.map_or(0, |r| r.floor);
                crate::storage::outbox::PendingRow {
                    count: 1,
                    base: cursor.max(floor),
                    hlc,
                    floor,
                    strategy: self.strategy.clone(),
                    base_value: old.map(<[u8]>::to_vec).unwrap_or_default(),
                }
            }
        };
        let base = row.base;
        pending.insert((&*self.state.name, key.id), row.encode().as_slice())?;
        self.core.outbox.push(Change {
            tree: self.name(),
            id: key.id,
            rev: key.rev,
            kind: ChangeKind::Edit {
                base,
                hlc,
                version,
                data,
            },
        });
        Ok(())
    }

    /// Refuses changes to a record written by a newer schema version (see
    /// [`Error::NewerVersion`]).
    fn check_not_newer(&self, key: RawKey, h: &Header) -> Result<()> {
        if h.version > self.version {
            return Err(Error::NewerVersion {
                tree: self.name(),
                key,
                stored: h.version,
                expected: self.version,
            });
        }
        Ok(())
    }

    /// Removes a draft revision this replica holds. Released revisions cannot be removed.
    pub fn remove(&mut self, key: Key<T>) -> Result<()> {
        let k = key.raw();
        let (h, old) = self.load(k)?;
        self.check_draft(k, &h)?;
        self.table.remove(pack(k))?;
        if k.rev > 0 {
            // The previous revision becomes the latest and carries the borrow from now on.
            let prev = RawKey::new(k.id, k.rev - 1);
            if let Ok((ph, mut pv)) = self.load(prev) {
                Header {
                    holder: h.holder,
                    ..ph
                }
                .write_into(&mut pv);
                self.store(prev, &pv)?;
                // Not an event (the borrow of the id did not change), but cached copies go.
                self.core.pending.push(Pending {
                    tree: self.tree,
                    key: prev,
                    kind: EventKind::Updated,
                    origin: self.core.replica,
                    event: false,
                    invalidate: true,
                    bytes: None,
                });
            }
        }
        let old = self
            .state
            .has_indexers
            .load(Ordering::Relaxed)
            .then_some(old);
        self.push(k, EventKind::Removed, true, old, None);
        self.log(k, || ChangeKind::Remove);
        Ok(())
    }

    /// Releases (freezes) a draft this replica holds.
    pub fn release(&mut self, key: Key<T>) -> Result<()> {
        let k = key.raw();
        let (h, mut v) = self.load(k)?;
        self.check_draft(k, &h)?;
        Header {
            released: true,
            ..h
        }
        .write_into(&mut v);
        self.store(k, &v)?;
        let keep = self.state.has_indexers.load(Ordering::Relaxed);
        self.push(k, EventKind::Released, true, None, keep.then_some(&v[..]));
        self.log(k, || ChangeKind::Release);
        Ok(())
    }

    /// Sets the application state of a released revision (needs the record's borrow).
    pub fn set_state(&mut self, key: Key<T>, state: u32) -> Result<()> {
        let k = key.raw();
        let (h, mut v) = self.load(k)?;
        if !h.released {
            return Err(Error::NotReleased {
                tree: self.name(),
                key: k,
            });
        }
        let (lk, lh, _) = self.latest(k.id)?.ok_or_else(|| self.not_found(k))?;
        self.check_holder(lk, &lh)?;
        if h.state == state {
            return Ok(());
        }
        Header { state, ..h }.write_into(&mut v);
        self.store(k, &v)?;
        let keep = self.state.has_indexers.load(Ordering::Relaxed);
        self.push(
            k,
            EventKind::StateChanged {
                old: h.state,
                new: state,
            },
            true,
            None,
            keep.then_some(&v[..]),
        );
        self.log(k, || ChangeKind::SetState(state));
        Ok(())
    }

    /// Makes the next revision (a draft) from the latest revision of `key`'s record, which must
    /// be released; needs the record's borrow. Returns the new key.
    pub fn new_revision(&mut self, key: Key<T>) -> Result<Key<T>> {
        let (lk, lh, mut v) = self
            .latest(key.id())?
            .ok_or_else(|| self.not_found(key.raw()))?;
        if !lh.released {
            return Err(Error::DraftExists {
                tree: self.name(),
                key: lk,
            });
        }
        self.check_holder(lk, &lh)?;
        let rev = lk.rev.checked_add(1).ok_or(Error::RevisionsExhausted {
            tree: self.name(),
            id: lk.id,
        })?;
        let nk = RawKey::new(lk.id, rev);
        Header {
            released: false,
            state: 0,
            ..lh
        }
        .write_into(&mut v);
        self.store(nk, &v)?;
        self.push(nk, EventKind::RevisionCreated, false, None, Some(&v));
        let put = self.put(&v);
        self.log(nk, || put);
        Ok(Key::new(nk.id, nk.rev))
    }

    /// Takes the borrow of `key`'s record. In a standalone database this replica is the only
    /// one, so the borrow is granted unless it is already held; holding it already is fine.
    pub fn borrow(&mut self, key: Key<T>) -> Result<()> {
        let (lk, lh, mut v) = self
            .latest(key.id())?
            .ok_or_else(|| self.not_found(key.raw()))?;
        if lh.holder == self.core.replica {
            return Ok(());
        }
        if self.core.client {
            return Err(Error::BorrowNeedsServer {
                tree: self.name(),
                key: lk,
            });
        }
        if lh.holder != 0 {
            return Err(Error::AlreadyBorrowed {
                tree: self.name(),
                key: lk,
                holder: lh.holder,
                holder_name: None,
            });
        }
        let holder = self.core.replica;
        Header { holder, ..lh }.write_into(&mut v);
        self.store(lk, &v)?;
        let keep = self.state.has_indexers.load(Ordering::Relaxed);
        self.push(
            lk,
            EventKind::Borrowed { holder },
            true,
            None,
            keep.then_some(&v[..]),
        );
        Ok(())
    }

    /// Returns the borrow of `key`'s record (check-in). Afterwards changes need a new borrow.
    pub fn return_borrow(&mut self, key: Key<T>) -> Result<()> {
        let (lk, lh, mut v) = self
            .latest(key.id())?
            .ok_or_else(|| self.not_found(key.raw()))?;
        self.check_holder(lk, &lh)?;
        Header { holder: 0, ..lh }.write_into(&mut v);
        self.store(lk, &v)?;
        let keep = self.state.has_indexers.load(Ordering::Relaxed);
        self.push(
            lk,
            EventKind::Returned { holder: lh.holder },
            true,
            None,
            keep.then_some(&v[..]),
        );
        if self.core.client {
            self.core.returns.push((self.name(), lk.id));
        }
        Ok(())
    }

    /// The metadata of a record as the batch sees it.
    pub fn meta(&self, key: Key<T>) -> Result<RecordMeta> {
        let (h, _) = self.load(key.raw())?;
        Ok(RecordMeta::from(h))
    }
}

impl<T> BatchTree<'_, T> {
    /// The header of a new record: a draft of this tree's version, borrowed by this replica
    /// from birth (in an optimistic tree of a synced database: by nobody).
    fn new_header(&self) -> Header {
        Header {
            released: false,
            version: self.version,
            state: 0,
            holder: if self.optimistic {
                0
            } else {
                self.core.replica
            },
        }
    }

    /// Stores a new record `id` (revision 0) from its encoded value (header included).
    fn create_value(&mut self, id: u64, value: Vec<u8>) -> Result<RawKey> {
        let key = RawKey::new(id, 0);
        self.store(key, &value)?;
        self.push(key, EventKind::Created, false, None, Some(&value));
        if self.optimistic {
            self.log_edit(key, &value, None)?;
        } else {
            let put = self.put(&value);
            self.log(key, || put);
        }
        self.core.scratch = value;
        Ok(key)
    }

    /// Stores the new encoded value (header included) of draft `k`, whose old value was
    /// `old`.
    fn write_draft_value(&mut self, k: RawKey, old: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.store(k, &value)?;
        if self.optimistic {
            self.log_edit(k, &value, Some(&old))?;
        } else {
            let put = self.put(&value);
            self.log(k, || put);
        }
        let old = self
            .state
            .has_indexers
            .load(Ordering::Relaxed)
            .then_some(old);
        self.push(k, EventKind::Updated, true, old, Some(&value));
        self.core.scratch = value;
        Ok(())
    }
}

impl<T: Record> BatchTree<'_, T> {
    fn encode(&mut self, record: &T, header: Header) -> Result<Vec<u8>> {
        let mut buf = std::mem::take(&mut self.core.scratch);
        buf.clear();
        buf.extend_from_slice(&header.to_bytes());
        record.__encode(buf).map_err(|e| Error::Encode {
            tree: self.name(),
            reason: e.to_string(),
        })
    }

    /// Creates a record (revision 0), borrowed by this replica from birth (in an optimistic
    /// tree of a synced database: by nobody).
    pub fn create(&mut self, record: &T) -> Result<Key<T>> {
        let id = self.alloc_id()?;
        let header = self.new_header();
        let value = self.encode(record, header)?;
        let key = self.create_value(id, value)?;
        Ok(Key::new(key.id, key.rev))
    }

    /// Decodes a stored value (header included) as `T`, across schema versions.
    fn decode(&self, key: RawKey, h: &Header, value: &[u8]) -> Result<T> {
        let data = value.get(HEADER_LEN..).unwrap_or_default();
        evolve::decode_record(
            &self.state,
            || Ok(self.txn.open_table(SCHEMAS)?),
            key,
            h,
            data,
        )
    }

    /// Changes a draft this replica holds (in an optimistic tree of a synced database, also
    /// one nobody holds), through a closure on an owned copy. A record
    /// stored with an older schema version is migrated and written in the current one; one
    /// written by a newer version is refused ([`Error::NewerVersion`]).
    pub fn update<R>(&mut self, key: Key<T>, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        let k = key.raw();
        let (h, old) = self.load(k)?;
        self.check_editable(k, &h)?;
        self.check_not_newer(k, &h)?;
        let mut record = self.decode(k, &h, &old)?;
        let r = f(&mut record);
        self.write_draft(k, h, old, &record)?;
        Ok(r)
    }

    /// Replaces a draft this replica holds (in an optimistic tree, also one nobody holds).
    pub fn replace(&mut self, key: Key<T>, record: &T) -> Result<()> {
        let k = key.raw();
        let (h, old) = self.load(k)?;
        self.check_editable(k, &h)?;
        self.check_not_newer(k, &h)?;
        self.write_draft(k, h, old, record)
    }

    fn write_draft(&mut self, k: RawKey, h: Header, old: Vec<u8>, record: &T) -> Result<()> {
        let value = self.encode(
            record,
            Header {
                version: T::VERSION,
                ..h
            },
        )?;
        self.write_draft_value(k, old, value)
    }

    /// Rewrites one record stored with an older schema version in the current one. With
    /// `skip`, a record that cannot be converted (its conversion fails, it does not fit,
    /// its bytes are corrupt) is left as it is and its error returned as
    /// [`MigrateOne::Skipped`] instead of failing.
    pub(crate) fn migrate_one(&mut self, k: RawKey, skip: bool) -> Result<MigrateOne> {
        let (h, old) = match self.load(k) {
            Ok(v) => v,
            Err(Error::NotFound { .. }) => return Ok(MigrateOne::Nothing),
            Err(e) => return Err(e),
        };
        if h.version >= T::VERSION {
            return Ok(MigrateOne::Nothing);
        }
        let record = match self.decode(k, &h, &old) {
            Ok(r) => r,
            Err(
                e @ (Error::Migration { .. } | Error::Incompatible { .. } | Error::Corrupt { .. }),
            ) if skip => return Ok(MigrateOne::Skipped(e)),
            Err(e) => return Err(e),
        };
        let value = evolve::reencode(&record, &h)?;
        self.store(k, &value)?;
        let keep = self.state.has_indexers.load(Ordering::Relaxed);
        self.push(
            k,
            EventKind::Migrated {
                from: h.version,
                to: T::VERSION,
            },
            true,
            keep.then_some(old),
            keep.then_some(&value[..]),
        );
        Ok(MigrateOne::Done)
    }

    /// Reads a record as the batch sees it.
    pub fn get(&self, key: Key<T>) -> Result<T> {
        let k = key.raw();
        let (h, v) = self.load(k)?;
        self.decode(k, &h, &v)
    }

    /// Reads a record zero-copy as the batch sees it.
    pub fn with<R>(&self, key: Key<T>, f: impl FnOnce(&Archived<T>) -> R) -> Result<R> {
        let k = key.raw();
        let guard = self.table.get(pack(k))?.ok_or_else(|| self.not_found(k))?;
        let (h, data) =
            Header::parse(guard.value()).ok_or_else(|| self.corrupt(k, "invalid value header"))?;
        if h.version == T::VERSION {
            let a = T::__access(data).map_err(|e| self.corrupt(k, e))?;
            return Ok(f(a));
        }
        let record = self.decode(k, &h, guard.value())?;
        let copy = evolve::reencode(&record, &h)?;
        let a = T::__access(copy.get(HEADER_LEN..).unwrap_or_default())
            .map_err(|e| self.corrupt(k, e))?;
        Ok(f(a))
    }
}

impl BatchTree<'_, Dynamic> {
    fn encode_dyn(&self, schema: &Schema, value: &Value) -> Result<Vec<u8>> {
        crate::schema::dynamic::encode(schema, value).map_err(|error| Error::InvalidValue {
            tree: self.name(),
            version: schema.version,
            error,
        })
    }

    /// Creates a record from a value of `schema` (the tree's newest).
    pub(crate) fn create_dyn(&mut self, schema: &Schema, value: &Value) -> Result<RawKey> {
        // Encoded first: an invalid value takes no id.
        let data = self.encode_dyn(schema, value)?;
        let id = self.alloc_id()?;
        let mut bytes = self.new_header().to_bytes().to_vec();
        bytes.extend_from_slice(&data);
        self.create_value(id, bytes)
    }

    /// Replaces draft `k` with a value of `schema` (the tree's newest), under the rules of
    /// typed code: it must be a draft this replica may edit, not written by a newer schema.
    pub(crate) fn replace_dyn(&mut self, k: RawKey, schema: &Schema, value: &Value) -> Result<()> {
        let data = self.encode_dyn(schema, value)?;
        let (h, old) = self.load(k)?;
        self.check_editable(k, &h)?;
        self.check_not_newer(k, &h)?;
        let mut bytes = Header {
            version: self.version,
            ..h
        }
        .to_bytes()
        .to_vec();
        bytes.extend_from_slice(&data);
        self.write_draft_value(k, old, bytes)
    }

    /// Stores record `k` exactly as given (an import): header from `meta`, data encoded
    /// with the stored schema of `meta.version`. The key must be free; ids of this
    /// replica's allocator move past it.
    pub(crate) fn import_dyn(&mut self, k: RawKey, meta: &RecordMeta, value: &Value) -> Result<()> {
        let schema = evolve::writer_schema(&self.state, meta.version, || {
            Ok(self.txn.open_table(SCHEMAS)?)
        })?;
        let data = self.encode_dyn(&schema, value)?;
        if self.table.get(pack(k))?.is_some() {
            return Err(Error::KeyExists {
                tree: self.name(),
                key: k,
            });
        }
        let refuse = |reason: String| Error::ImportAborted {
            reason: format!("record {}/{k}: {reason}", self.state.name),
        };
        if k.id == 0 || k.id == u64::MAX {
            return Err(refuse("ids 0 and 2^64-1 are never record ids".into()));
        }
        // New records take ids after the highest one imported: an id this high would
        // leave the database without ids for them.
        if k.id > IMPORT_MAX_ID {
            return Err(refuse(format!(
                "id {} is above {IMPORT_MAX_ID} (2^63): new records take ids after the \
                 highest imported one, and none would be left",
                k.id
            )));
        }
        // Revisions come in order, from 0, into a record the import makes: revision 0 of
        // an id that has none, or the next revision of one it already has.
        let mut revisions = 0u32;
        for row in self.table.range(id_range(k.id))? {
            let (other, _) = row?;
            revisions = revisions.max(unpack(other.value()).rev.saturating_add(1));
        }
        if k.rev != revisions {
            return Err(refuse(if k.rev == 0 {
                "the record exists already".to_owned()
            } else {
                format!(
                    "revision {} comes without revision {} before it",
                    k.rev,
                    k.rev - 1
                )
            }));
        }
        // Only the latest revision of a record may be a draft.
        for row in self.table.range(id_range(k.id))? {
            let (other, v) = row?;
            let other = unpack(other.value());
            let released = Header::parse(v.value()).is_some_and(|(h, _)| h.released);
            if other.rev < k.rev && !released {
                return Err(refuse(format!(
                    "revision {} is a draft, and only the latest revision may be one",
                    other.rev
                )));
            }
            if other.rev > k.rev && !meta.released {
                return Err(refuse(format!(
                    "a draft, but revision {} comes after it (only the latest revision may be a draft)",
                    other.rev
                )));
            }
        }
        // Holders are replicas of the database the export came from: only this database's
        // own holder means something here (a server's holder numbers would lock the
        // record for good, with no server to force it back).
        let holder = if meta.holder == self.core.replica {
            meta.holder
        } else {
            0
        };
        let mut bytes = Header {
            released: meta.released,
            version: meta.version,
            state: meta.state,
            holder,
        }
        .to_bytes()
        .to_vec();
        bytes.extend_from_slice(&data);
        self.store(k, &bytes)?;
        if self.core.ids.is_none() {
            self.core.ids = Some(IdAlloc {
                next: self.core.next_id,
                end: self.core.range_end,
                dirty: false,
            });
        }
        if let Some(ids) = self.core.ids.as_mut()
            && k.id >= ids.next
        {
            ids.next = k.id.saturating_add(1);
            ids.dirty = true;
        }
        let kind = if k.rev == 0 {
            EventKind::Created
        } else {
            EventKind::RevisionCreated
        };
        self.push(k, kind, false, None, Some(&bytes));
        Ok(())
    }

    /// The value of `k` as this batch sees it (decoded with the schema it was written with).
    pub(crate) fn get_dyn(&self, k: RawKey) -> Result<(RecordMeta, Value)> {
        let (h, v) = self.load(k)?;
        let schema = evolve::writer_schema(&self.state, h.version, || {
            Ok(self.txn.open_table(SCHEMAS)?)
        })?;
        let data = v.get(HEADER_LEN..).unwrap_or_default();
        let value =
            crate::schema::dynamic::decode(&schema, data).map_err(|e| self.corrupt(k, e))?;
        Ok((RecordMeta::from(h), value))
    }
}

/// The next record id of this replica's ranges.
pub(crate) fn alloc_id(txn: &WriteTransaction, core: &mut Core) -> Result<u64> {
    if core.ids.is_none() {
        core.ids = Some(IdAlloc {
            next: core.next_id,
            end: core.range_end,
            dirty: false,
        });
    }
    let Some(ids) = core.ids.as_mut() else {
        return Err(Error::IdsExhausted);
    };
    if ids.next >= ids.end {
        let ranges = txn.open_table(RANGES)?;
        let containing = match ranges.range(..=ids.next)?.next_back() {
            Some(row) => {
                let (s, e) = row?;
                Some((s.value(), e.value()))
            }
            None => None,
        }
        .filter(|&(_, e)| e > ids.next);
        let found = match containing {
            Some(r) => Some(r),
            None => match ranges.range(ids.next..)?.next() {
                Some(row) => {
                    let (s, e) = row?;
                    Some((s.value(), e.value()))
                }
                None => None,
            },
        };
        match found {
            Some((s, e)) if e > s.max(ids.next) => {
                ids.next = s.max(ids.next);
                ids.end = e;
            }
            _ => {
                core.short_of_ids = true;
                return Err(Error::IdsExhausted);
            }
        }
    }
    let id = ids.next;
    ids.next += 1;
    ids.dirty = true;
    core.allocated += 1;
    Ok(id)
}
