//! Typed tree handles: reads (zero-copy, cached), writes, iteration.

pub mod batch;
pub(crate) mod cache;
pub(crate) mod evolve;
// Used by the sync client, which is native-only.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) mod conflict;
pub(crate) mod dynamic;
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
mod remote;

use crate::db::TreeState;
use crate::storage::{HEADER_LEN, Header, id_range, pack, unpack};
use crate::{Archived, Db, Error, Indexer, IndexerStatus, Key, RawKey, Record, Result};
use cache::Entry;
use redb::{ReadableTable, ReadableTableMetadata};
use std::any::TypeId;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// The commit number a read transaction sees (`None` if it cannot be read).
fn snapshot_commit(txn: &redb::ReadTransaction) -> Option<u64> {
    let meta = txn.open_table(crate::storage::META).ok()?;
    let state = meta.get("state").ok()??;
    state.value().get(8..).and_then(crate::db::read_u64)
}

/// Metadata of a stored revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordMeta {
    /// Whether the revision is released (frozen).
    pub released: bool,
    /// The application-defined state (meaningful on released revisions).
    pub state: u32,
    /// Who holds the record's borrow, as stored on this revision (0: nobody). The borrow of a
    /// record is the one stored on its latest revision.
    pub holder: u32,
    /// The schema version the record was stored with.
    pub version: u32,
}

impl RecordMeta {
    /// Metadata as given (imports, tools).
    pub fn new(released: bool, state: u32, holder: u32, version: u32) -> RecordMeta {
        RecordMeta {
            released,
            state,
            holder,
            version,
        }
    }
}

impl From<Header> for RecordMeta {
    fn from(h: Header) -> Self {
        RecordMeta {
            released: h.released,
            state: h.state,
            holder: h.holder,
            version: h.version,
        }
    }
}

/// Progress of [`Tree::migrate`]: records migrated so far, out of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrateProgress {
    /// Records migrated so far (with [`Tree::migrate_skipping`], also the records skipped).
    pub done: u64,
    /// Records that needed migration when it started.
    pub total: u64,
}

/// What [`Tree::migrate`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Records rewritten in the current version.
    pub migrated: u64,
    /// Records that were already current.
    pub current: u64,
    /// Records written by a newer version, left alone.
    pub newer: u64,
}

/// What [`Tree::migrate_skipping`] did: the counts, and the records it could not convert.
#[derive(Debug)]
#[non_exhaustive]
pub struct MigrateSkipReport<T: Record> {
    /// Records migrated, already current, and newer (as [`Tree::migrate`] counts them; the
    /// skipped records are not in `migrated`).
    pub report: MigrateReport,
    /// The records whose conversion failed ([`Error::Migration`], [`Error::Incompatible`]
    /// or [`Error::Corrupt`]), in key order, with the error. They are left as they were,
    /// in their old version (readable by projection where that fits); fix the conversion
    /// or the records, and run the migration again to retry them.
    pub skipped: Vec<(Key<T>, Error)>,
}

/// The typed handle of one tree. Cheap to clone.
///
/// Reads are local and never wait for writers. Each write method is its own atomic, durable
/// commit; use [`Db::batch`] to commit several changes (on several trees) together.
pub struct Tree<T: Record> {
    db: Db,
    state: Arc<TreeState>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Record> Clone for Tree<T> {
    fn clone(&self) -> Self {
        Tree {
            db: self.db.clone(),
            state: self.state.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: Record> std::fmt::Debug for Tree<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tree({})", T::TREE)
    }
}

impl<T: Record> Tree<T> {
    pub(crate) fn new(db: Db, state: Arc<TreeState>) -> Self {
        Tree {
            db,
            state,
            _type: PhantomData,
        }
    }

    /// The database this tree belongs to.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn write<R>(&self, f: impl FnOnce(&mut batch::BatchTree<'_, T>) -> Result<R>) -> Result<R> {
        let mut b = self.db.batch()?;
        let r = f(&mut b.tree::<T>()?)?;
        b.commit()?;
        Ok(r)
    }

    /// Creates a record: allocates a new id (revision 0); the record is a draft, borrowed by
    /// this replica from birth.
    ///
    /// In a synced database whose id ranges ran out, this fetches a new range from the
    /// server when it is reachable (bounded by
    /// [`SyncConfig::timeout`](crate::SyncConfig::timeout)) and then creates;
    /// [`Error::IdsExhausted`] only when it is not.
    pub fn create(&self, record: &T) -> Result<Key<T>> {
        // Other writers may take the ids fetched for this one: ask again until the timeout.
        let deadline = self.db.inner.sync_timeout().map(crate::rt::after);
        loop {
            let mut b = self.db.batch()?;
            let r = b.tree::<T>()?.create(record);
            match r {
                Ok(k) => {
                    b.commit()?;
                    return Ok(k);
                }
                Err(Error::IdsExhausted) => {
                    let short = b.ids_short();
                    drop(b);
                    let in_time = deadline.filter(|d| crate::rt::Instant::now() < *d);
                    let refilled = match (short, in_time) {
                        (Some(ids), Some(d)) => self.db.inner.refill_ids(ids, d)?,
                        _ => false,
                    };
                    if !refilled {
                        return Err(Error::IdsExhausted);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Changes a draft this replica holds through a closure on an owned copy; returns what the
    /// closure returns.
    pub fn update<R>(&self, key: Key<T>, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        self.write(|t| t.update(key, f))
    }

    /// Replaces a draft this replica holds.
    pub fn replace(&self, key: Key<T>, record: &T) -> Result<()> {
        self.write(|t| t.replace(key, record))
    }

    /// Removes a draft revision this replica holds ([`Error::Released`] for released ones).
    pub fn remove(&self, key: Key<T>) -> Result<()> {
        self.write(|t| t.remove(key))
    }

    /// Releases a draft: its data is frozen from now on.
    pub fn release(&self, key: Key<T>) -> Result<()> {
        self.write(|t| t.release(key))
    }

    /// Sets the application state of a released revision.
    pub fn set_state(&self, key: Key<T>, state: u32) -> Result<()> {
        self.write(|t| t.set_state(key, state))
    }

    /// Makes the next revision (a draft, a copy of the latest revision, which must be
    /// released) and returns its key.
    pub fn new_revision(&self, key: Key<T>) -> Result<Key<T>> {
        self.write(|t| t.new_revision(key))
    }

    /// Takes the record's borrow: granted locally in a standalone database; in a synced
    /// database the server grants it (this waits for its answer, bounded by
    /// [`SyncConfig::timeout`](crate::SyncConfig), and fails with [`Error::Offline`] when
    /// it is unreachable or [`Error::AlreadyBorrowed`] naming the holder). Holding it already
    /// is fine. Call it outside a batch ([`Error::BatchInProgress`] otherwise). From async
    /// code, [`Tree::borrow_async`] does not block the thread.
    pub fn borrow(&self, key: Key<T>) -> Result<()> {
        if let Some(link) = self.db.inner.link.get() {
            let Some(latest) = self.server_borrow_needed(key)? else {
                return Ok(());
            };
            #[cfg(not(target_arch = "wasm32"))]
            return link.borrow_blocking(T::TREE, latest);
            // A page must not block on the network.
            #[cfg(target_arch = "wasm32")]
            {
                let _ = (link, latest);
                return Err(Error::Offline {
                    what: "borrowing",
                    reason: "in a browser a borrow waits for the server without blocking the \
                             page: use Tree::borrow_async"
                        .into(),
                });
            }
        }
        self.write(|t| t.borrow(key))
    }

    /// [`Tree::borrow`] for async code: waits for the server without blocking the thread.
    pub async fn borrow_async(&self, key: Key<T>) -> Result<()> {
        if let Some(link) = self.db.inner.link.get() {
            let Some(latest) = self.server_borrow_needed(key)? else {
                return Ok(());
            };
            return link.borrow(T::TREE, latest).await;
        }
        // A browser tab that goes through the one syncing the database: through it.
        #[cfg(target_arch = "wasm32")]
        if let Some(tab) = self.db.inner.follower_tab() {
            let Some(latest) = self.server_borrow_needed(key)? else {
                return Ok(());
            };
            let timeout = self.db.inner.sync_timeout().unwrap_or_default();
            return crate::storage::tabs::borrow(tab, T::TREE, latest, timeout).await;
        }
        self.write(|t| t.borrow(key))
    }

    /// The latest revision of `key`'s record if its borrow must be asked for (not held here).
    fn server_borrow_needed(&self, key: Key<T>) -> Result<Option<RawKey>> {
        if batch::batch_open_here(&self.db.inner) {
            return Err(Error::BatchInProgress);
        }
        let latest = self
            .latest(key.id())?
            .ok_or_else(|| not_found::<T>(key.raw()))?;
        if self.meta(latest)?.holder == self.db.replica() {
            return Ok(None);
        }
        Ok(Some(latest.raw()))
    }

    /// Returns the record's borrow (check-in).
    pub fn return_borrow(&self, key: Key<T>) -> Result<()> {
        self.write(|t| t.return_borrow(key))
    }

    /// Reads a record zero-copy: `f` gets the archived record in place.
    ///
    /// A record stored with another schema version (older, or written by a newer program) is
    /// read through schema evolution (see the crate docs) and `f` gets a *migrated archived
    /// copy* in this type's layout; [`Tree::migrate`] rewrites such records for good.
    ///
    /// Repeatedly read records are served from memory (see the crate docs, "Hot records"),
    /// so calling this for every visible row of a GUI every frame is cheap.
    pub fn with<R>(&self, key: Key<T>, f: impl FnOnce(&Archived<T>) -> R) -> Result<R> {
        let k = key.raw();
        let generation = match self.state.cache.get(k) {
            Ok(entry) if entry.validated_as == TypeId::of::<T>() => {
                let (_, data) = Header::parse(&entry.bytes)
                    .ok_or_else(|| corrupt::<T>(k, "invalid value header"))?;
                // SAFETY: the cache only holds entries whose record bytes passed `T::__access`
                // (checked rkyv validation) for the type recorded in `validated_as`, which we
                // just compared with `T`; the bytes are immutable behind the `Arc`.
                let a = unsafe { rkyv::access_unchecked::<Archived<T>>(data) };
                return Ok(f(a));
            }
            Ok(_) => None,
            Err(generation) => Some(generation),
        };
        let txn = self.db.inner.redb.begin_read()?;
        let table = match txn.open_table(self.state.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Err(not_found::<T>(k)),
            Err(e) => return Err(e.into()),
        };
        let guard = table.get(pack(k))?.ok_or_else(|| not_found::<T>(k))?;
        let value = guard.value();
        let (h, data) =
            Header::parse(value).ok_or_else(|| corrupt::<T>(k, "invalid value header"))?;
        // (The commit number of the snapshot is read only for a value to be admitted.)
        let admit = generation
            .filter(|_| self.state.cache.wants(k))
            .and_then(|g| snapshot_commit(&txn).map(|seen| (g, seen)));
        if h.version == T::VERSION {
            let a = T::__access(data).map_err(|e| corrupt::<T>(k, e))?;
            if let Some((generation, seen)) = admit {
                self.state.cache.admit(
                    generation,
                    seen,
                    k,
                    Entry {
                        bytes: Arc::from(value),
                        validated_as: TypeId::of::<T>(),
                    },
                );
            }
            return Ok(f(a));
        }
        // Another schema version: read a migrated archived copy (cached like any record).
        let record: T =
            evolve::decode_record(&self.state, || evolve::read_schemas(&txn), k, &h, data)?;
        let bytes: Arc<[u8]> = Arc::from(evolve::reencode(&record, &h)?);
        if let Some((generation, seen)) = admit {
            self.state.cache.admit(
                generation,
                seen,
                k,
                Entry {
                    bytes: bytes.clone(),
                    validated_as: TypeId::of::<T>(),
                },
            );
        }
        let a = T::__access(bytes.get(HEADER_LEN..).unwrap_or_default())
            .map_err(|e| corrupt::<T>(k, e))?;
        Ok(f(a))
    }

    /// Reads an owned copy of a record (of any schema version: see [`Tree::with`]).
    pub fn get(&self, key: Key<T>) -> Result<T> {
        let k = key.raw();
        if let Ok(entry) = self.state.cache.get(k)
            && entry.validated_as == TypeId::of::<T>()
            && let Some((h, data)) = Header::parse(&entry.bytes)
            && h.version == T::VERSION
        {
            // SAFETY: as in `with`: validated for `T` before it entered the cache.
            let a = unsafe { rkyv::access_unchecked::<Archived<T>>(data) };
            return T::__deserialize(a).map_err(|e| corrupt::<T>(k, e));
        }
        let txn = self.db.inner.redb.begin_read()?;
        let table = match txn.open_table(self.state.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Err(not_found::<T>(k)),
            Err(e) => return Err(e.into()),
        };
        let guard = table.get(pack(k))?.ok_or_else(|| not_found::<T>(k))?;
        let (h, data) =
            Header::parse(guard.value()).ok_or_else(|| corrupt::<T>(k, "invalid value header"))?;
        evolve::decode_record(&self.state, || evolve::read_schemas(&txn), k, &h, data)
    }

    /// Whether the record exists.
    pub fn contains(&self, key: Key<T>) -> Result<bool> {
        self.snapshot()?.contains(key)
    }

    /// The metadata (released, state, borrow holder, schema version) of a revision.
    pub fn meta(&self, key: Key<T>) -> Result<RecordMeta> {
        self.snapshot()?.meta(key)
    }

    /// The latest revision of record `id`.
    pub fn latest(&self, id: u64) -> Result<Option<Key<T>>> {
        self.snapshot()?.latest(id)
    }

    /// Every revision of record `id`, oldest first.
    pub fn revisions(&self, id: u64) -> Result<Vec<Key<T>>> {
        self.snapshot()?.revisions(id)
    }

    /// Number of stored revisions (of all records) in the tree.
    pub fn len(&self) -> Result<u64> {
        self.snapshot()?.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Iterates over every revision of every record, in key order, zero-copy.
    pub fn iter(&self) -> Result<Iter<T>> {
        self.snapshot()?.iter()
    }

    /// Every key in the tree (all revisions), in order.
    pub fn keys(&self) -> Result<Vec<Key<T>>> {
        self.snapshot()?.keys()?.collect()
    }

    /// Iterates over every revision of the records whose ids are in `ids`, zero-copy.
    pub fn range(&self, ids: impl RangeBounds<u64>) -> Result<Iter<T>> {
        self.snapshot()?.range(ids)
    }

    /// Calls `f` with every revision of every record whose id is in `ids`, zero-copy; see
    /// [`Snapshot::for_each`].
    pub fn for_each(
        &self,
        ids: impl RangeBounds<u64>,
        f: impl FnMut(Key<T>, &Archived<T>),
    ) -> Result<()> {
        self.snapshot()?.for_each(ids, f)
    }

    /// A consistent read-only view of the tree as of now, for many reads or iteration.
    pub fn snapshot(&self) -> Result<Snapshot<T>> {
        let txn = self.db.inner.redb.begin_read()?;
        let table = match txn.open_table(self.state.def()) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Snapshot {
            table,
            ctx: Arc::new(Ctx {
                txn,
                state: self.state.clone(),
            }),
            _type: PhantomData,
        })
    }

    /// Rewrites every record of the tree stored with an older schema version in the current
    /// one (see [`Tree::migrate_with`]); `progress` is called after every committed batch.
    pub fn migrate(&self, progress: impl FnMut(MigrateProgress)) -> Result<MigrateReport> {
        self.migrate_with(1000, progress)
    }

    /// Rewrites every record stored with an older schema version in `T`'s version, in
    /// batches of `batch_size` records, each its own atomic commit with `Migrated` events.
    ///
    /// Safe to interrupt (a crash, a kill, an error): every record is at all times either
    /// still in its old version (readable through evolution) or migrated; running `migrate`
    /// again continues with what is left. Migration changes the stored layout, not the
    /// record's value, so it also rewrites released revisions and needs no borrows. Records
    /// written by a *newer* version are left alone and counted in [`MigrateReport::newer`].
    ///
    /// The first record that cannot be converted stops the migration with its error
    /// (batches committed before stay committed); [`Tree::migrate_skipping`] goes on instead.
    pub fn migrate_with(
        &self,
        batch_size: usize,
        progress: impl FnMut(MigrateProgress),
    ) -> Result<MigrateReport> {
        Ok(self.run_migration(batch_size, false, progress)?.report)
    }

    /// [`Tree::migrate`] that does not stop at records it cannot convert (a failing
    /// `TryFrom`, a record that does not fit by projection, corrupt bytes): it leaves them
    /// as they were and lists them, with their errors, in [`MigrateSkipReport::skipped`].
    /// Running it (or `migrate`) again retries them. Storage errors still stop it.
    pub fn migrate_skipping(
        &self,
        progress: impl FnMut(MigrateProgress),
    ) -> Result<MigrateSkipReport<T>> {
        self.migrate_skipping_with(1000, progress)
    }

    /// [`Tree::migrate_skipping`] in batches of `batch_size` records (see
    /// [`Tree::migrate_with`]).
    pub fn migrate_skipping_with(
        &self,
        batch_size: usize,
        progress: impl FnMut(MigrateProgress),
    ) -> Result<MigrateSkipReport<T>> {
        self.run_migration(batch_size, true, progress)
    }

    fn run_migration(
        &self,
        batch_size: usize,
        skip: bool,
        mut progress: impl FnMut(MigrateProgress),
    ) -> Result<MigrateSkipReport<T>> {
        let mut report = MigrateReport::default();
        let mut skipped = Vec::new();
        let mut todo = Vec::new();
        {
            let snap = self.snapshot()?;
            if let Some(t) = &snap.table {
                for row in t.iter()? {
                    let (k, v) = row?;
                    let key = unpack(k.value());
                    let (h, _) = Header::parse(v.value())
                        .ok_or_else(|| corrupt::<T>(key, "invalid value header"))?;
                    match h.version.cmp(&T::VERSION) {
                        std::cmp::Ordering::Less => todo.push(key),
                        std::cmp::Ordering::Equal => report.current += 1,
                        std::cmp::Ordering::Greater => report.newer += 1,
                    }
                }
            }
        }
        let total = todo.len() as u64;
        progress(MigrateProgress { done: 0, total });
        for chunk in todo.chunks(batch_size.max(1)) {
            let mut b = self.db.batch()?;
            {
                let mut t = b.tree::<T>()?;
                for &k in chunk {
                    match t.migrate_one(k, skip)? {
                        batch::MigrateOne::Done => report.migrated += 1,
                        batch::MigrateOne::Nothing => {}
                        batch::MigrateOne::Skipped(e) => skipped.push((Key::new(k.id, k.rev), e)),
                    }
                }
            }
            b.commit()?;
            progress(MigrateProgress {
                done: report.migrated + skipped.len() as u64,
                total,
            });
        }
        Ok(MigrateSkipReport { report, skipped })
    }

    /// Registers an indexer for this tree; see [`Db::register_indexer`].
    pub fn register_indexer<I: Indexer<T>>(&self, indexer: I) -> Result<IndexerStatus> {
        self.db.register_indexer::<T, I>(indexer)
    }
}

fn not_found<T: Record>(key: RawKey) -> Error {
    Error::NotFound {
        tree: T::TREE.to_owned(),
        key,
    }
}

fn corrupt<T: Record>(key: RawKey, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        tree: T::TREE.to_owned(),
        key,
        reason: reason.to_string(),
    }
}

type ReadTable = redb::ReadOnlyTable<u128, &'static [u8]>;

/// What a snapshot needs to read other schema versions: its read transaction (for the stored
/// schemas) and the tree's state (for the schema cache).
struct Ctx {
    txn: redb::ReadTransaction,
    state: Arc<TreeState>,
}

impl Ctx {
    fn decode<T: Record>(&self, key: RawKey, h: &Header, data: &[u8]) -> Result<T> {
        evolve::decode_record(
            &self.state,
            || evolve::read_schemas(&self.txn),
            key,
            h,
            data,
        )
    }
}

/// A consistent read-only view of one tree (a redb read transaction).
pub struct Snapshot<T: Record> {
    table: Option<ReadTable>,
    ctx: Arc<Ctx>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Record> Snapshot<T> {
    /// The stored value of `k` ([`Error::NotFound`] if there is none).
    fn stored(&self, k: RawKey) -> Result<ValueGuard> {
        self.table
            .as_ref()
            .map(|t| t.get(pack(k)))
            .transpose()?
            .flatten()
            .ok_or_else(|| not_found::<T>(k))
    }

    fn fetch(&self, k: RawKey) -> Result<RecordRef<T>> {
        let guard = self.stored(k)?;
        RecordRef::new(k, guard, &self.ctx)
    }

    /// The record, zero-copy, held as long as the returned guard lives.
    pub fn get_ref(&self, key: Key<T>) -> Result<RecordRef<T>> {
        self.fetch(key.raw())
    }

    /// Reads a record zero-copy (a migrated copy for other schema versions, see [`Tree::with`]).
    pub fn with<R>(&self, key: Key<T>, f: impl FnOnce(&Archived<T>) -> R) -> Result<R> {
        let r = self.fetch(key.raw())?;
        Ok(f(&r))
    }

    /// Reads an owned copy of a record.
    pub fn get(&self, key: Key<T>) -> Result<T> {
        let k = key.raw();
        let guard = self.stored(k)?;
        let (h, data) =
            Header::parse(guard.value()).ok_or_else(|| corrupt::<T>(k, "invalid value header"))?;
        self.ctx.decode(k, &h, data)
    }

    /// Whether the record exists.
    pub fn contains(&self, key: Key<T>) -> Result<bool> {
        let k = key.raw();
        Ok(match &self.table {
            Some(t) => t.get(pack(k))?.is_some(),
            None => false,
        })
    }

    /// The metadata of a revision.
    pub fn meta(&self, key: Key<T>) -> Result<RecordMeta> {
        let k = key.raw();
        let guard = self.stored(k)?;
        let (h, _) =
            Header::parse(guard.value()).ok_or_else(|| corrupt::<T>(k, "invalid value header"))?;
        Ok(h.into())
    }

    /// The latest revision of record `id`.
    pub fn latest(&self, id: u64) -> Result<Option<Key<T>>> {
        let Some(t) = &self.table else {
            return Ok(None);
        };
        match t.range(id_range(id))?.next_back() {
            Some(row) => {
                let (k, _) = row?;
                let k = unpack(k.value());
                Ok(Some(Key::new(k.id, k.rev)))
            }
            None => Ok(None),
        }
    }

    /// Every revision of record `id`, oldest first.
    pub fn revisions(&self, id: u64) -> Result<Vec<Key<T>>> {
        let Some(t) = &self.table else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.range(id_range(id))? {
            let (k, _) = row?;
            let k = unpack(k.value());
            out.push(Key::new(k.id, k.rev));
        }
        Ok(out)
    }

    /// Number of stored revisions.
    pub fn len(&self) -> Result<u64> {
        Ok(match &self.table {
            Some(t) => t.len()?,
            None => 0,
        })
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Iterates over every revision of every record, in key order.
    pub fn iter(&self) -> Result<Iter<T>> {
        self.range(..)
    }

    /// Calls `f` with every revision of every record whose id is in `ids`, zero-copy, in key
    /// order; stops at the first record that cannot be read (returning its error). The
    /// fastest way to scan: no per-record guard objects are built. Records of other schema
    /// versions are passed as migrated copies.
    pub fn for_each(
        &self,
        ids: impl RangeBounds<u64>,
        mut f: impl FnMut(Key<T>, &Archived<T>),
    ) -> Result<()> {
        let Some(t) = &self.table else {
            return Ok(());
        };
        for row in t.range::<u128>(packed_bounds(&ids))? {
            let (k, v) = row?;
            let key = unpack(k.value());
            let (h, data) = Header::parse(v.value())
                .ok_or_else(|| corrupt::<T>(key, "invalid value header"))?;
            if h.version == T::VERSION {
                let a = T::__access(data).map_err(|e| corrupt::<T>(key, e))?;
                f(Key::new(key.id, key.rev), a);
            } else {
                let record: T = self.ctx.decode(key, &h, data)?;
                let bytes = evolve::reencode(&record, &h)?;
                let a = T::__access(bytes.get(HEADER_LEN..).unwrap_or_default())
                    .map_err(|e| corrupt::<T>(key, e))?;
                f(Key::new(key.id, key.rev), a);
            }
        }
        Ok(())
    }

    /// Iterates over the keys of every revision, in key order, without touching the records.
    pub fn keys(&self) -> Result<impl DoubleEndedIterator<Item = Result<Key<T>>> + use<T>> {
        let inner = match &self.table {
            Some(t) => Some(t.range::<u128>(..)?),
            None => None,
        };
        Ok(inner.into_iter().flatten().map(|row| {
            let (k, _) = row?;
            let k = unpack(k.value());
            Ok(Key::new(k.id, k.rev))
        }))
    }

    /// Iterates over every revision of the records whose ids are in `ids`.
    pub fn range(&self, ids: impl RangeBounds<u64>) -> Result<Iter<T>> {
        let inner = match &self.table {
            Some(t) => Some(t.range::<u128>(packed_bounds(&ids))?),
            None => None,
        };
        Ok(Iter {
            inner,
            ctx: self.ctx.clone(),
            _type: PhantomData,
        })
    }
}

/// Bounds on ids as bounds on packed keys.
pub(crate) fn packed_bounds(ids: &impl RangeBounds<u64>) -> (Bound<u128>, Bound<u128>) {
    let lower = match ids.start_bound() {
        Bound::Included(&a) => Bound::Included(pack(RawKey::new(a, 0))),
        Bound::Excluded(&a) => Bound::Excluded(pack(RawKey::new(a, u32::MAX))),
        Bound::Unbounded => Bound::Unbounded,
    };
    let upper = match ids.end_bound() {
        Bound::Included(&b) => Bound::Included(pack(RawKey::new(b, u32::MAX))),
        Bound::Excluded(&b) => Bound::Excluded(pack(RawKey::new(b, 0))),
        Bound::Unbounded => Bound::Unbounded,
    };
    (lower, upper)
}

type ValueGuard = redb::AccessGuard<'static, &'static [u8]>;

enum Bytes {
    /// The stored value, in `T`'s layout.
    Stored(ValueGuard),
    /// A migrated copy in `T`'s layout, and the header as stored.
    Migrated(Box<[u8]>, Header),
}

/// A record read zero-copy from a snapshot or an iterator; dereferences to the archived
/// record (a migrated copy for records of other schema versions).
pub struct RecordRef<T: Record> {
    key: RawKey,
    bytes: Bytes,
    _type: PhantomData<fn() -> T>,
}

impl<T: Record> RecordRef<T> {
    #[inline]
    fn new(key: RawKey, guard: ValueGuard, ctx: &Ctx) -> Result<Self> {
        let (header, data) = Header::parse(guard.value())
            .ok_or_else(|| corrupt::<T>(key, "invalid value header"))?;
        let bytes = if header.version == T::VERSION {
            T::__access(data).map_err(|e| corrupt::<T>(key, e))?;
            Bytes::Stored(guard)
        } else {
            let record: T = ctx.decode(key, &header, data)?;
            let copy = evolve::reencode(&record, &header)?;
            T::__access(copy.get(HEADER_LEN..).unwrap_or_default())
                .map_err(|e| corrupt::<T>(key, e))?;
            Bytes::Migrated(copy.into_boxed_slice(), header)
        };
        Ok(RecordRef {
            key,
            bytes,
            _type: PhantomData,
        })
    }

    /// The key.
    pub fn key(&self) -> Key<T> {
        Key::new(self.key.id, self.key.rev)
    }

    /// The revision's metadata (as stored).
    pub fn meta(&self) -> RecordMeta {
        match &self.bytes {
            Bytes::Migrated(_, h) => (*h).into(),
            // `new` parsed this header successfully; the guard's bytes cannot change since.
            Bytes::Stored(g) => Header::parse(g.value()).map_or(
                RecordMeta {
                    released: false,
                    state: 0,
                    holder: 0,
                    version: T::VERSION,
                },
                |(h, _)| h.into(),
            ),
        }
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Result<T> {
        T::__deserialize(self).map_err(|e| corrupt::<T>(self.key, e))
    }
}

impl<T: Record> std::ops::Deref for RecordRef<T> {
    type Target = Archived<T>;
    #[inline]
    fn deref(&self) -> &Archived<T> {
        let value = match &self.bytes {
            Bytes::Stored(g) => g.value(),
            Bytes::Migrated(b, _) => b,
        };
        let data = value.get(HEADER_LEN..).unwrap_or_default();
        // SAFETY: `RecordRef::new` validated exactly these bytes with `T::__access` (checked
        // rkyv access); the guard keeps stored bytes alive and unchanged (pages of a read
        // transaction are immutable), and a migrated copy is owned and never mutated.
        unsafe { rkyv::access_unchecked::<Archived<T>>(data) }
    }
}

/// Iterator over records, zero-copy; yields `Err` for a record that cannot be read (corrupt,
/// or incompatible with this type) and goes on with the next.
pub struct Iter<T: Record> {
    inner: Option<redb::Range<'static, u128, &'static [u8]>>,
    ctx: Arc<Ctx>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Record> Iter<T> {
    #[inline]
    fn map_row(
        ctx: &Ctx,
        row: std::result::Result<
            (redb::AccessGuard<'static, u128>, ValueGuard),
            redb::StorageError,
        >,
    ) -> Result<RecordRef<T>> {
        let (k, v) = row?;
        RecordRef::new(unpack(k.value()), v, ctx)
    }
}

impl<T: Record> Iterator for Iter<T> {
    type Item = Result<RecordRef<T>>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let row = self.inner.as_mut()?.next()?;
        Some(Self::map_row(&self.ctx, row))
    }
}

impl<T: Record> DoubleEndedIterator for Iter<T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let row = self.inner.as_mut()?.next_back()?;
        Some(Self::map_row(&self.ctx, row))
    }
}
