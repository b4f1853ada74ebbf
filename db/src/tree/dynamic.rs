//! Trees by name, without the application's Rust types: what the viewer and any tool that
//! must read a database it did not write work with.
//!
//! Records are [`Value`]s, decoded with the schema each was written with (stored in the
//! database, see [`crate::Db::schemas`]) and encoded with the tree's newest stored schema.
//! Every write goes through the same batches, rules and errors as typed code
//! ([`Error::NotBorrowed`], [`Error::Released`], [`Error::NewerVersion`], ...), and in a
//! synced database through the server.

use super::RecordMeta;
#[cfg(not(target_arch = "wasm32"))]
use super::batch;
use super::batch::{BatchTree, Dynamic};
use super::evolve;
use super::packed_bounds;
use crate::db::TreeState;
use crate::schema::Schema;
use crate::schema::dynamic::{self, Value};
use crate::storage::{HEADER_LEN, Header, SCHEMAS, pack, unpack};
use crate::{Db, Error, Key, RawKey, Result};
use redb::{ReadableTable, ReadableTableMetadata};
use std::fmt;
use std::ops::RangeBounds;
use std::sync::Arc;

/// A record key that names its tree: the key of untyped code.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DynKey {
    /// The tree.
    pub tree: Arc<str>,
    /// The record id.
    pub id: u64,
    /// The revision.
    pub rev: u32,
}

impl DynKey {
    /// The key without its tree.
    pub fn raw(&self) -> RawKey {
        RawKey::new(self.id, self.rev)
    }
}

impl fmt::Display for DynKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.tree, self.id, self.rev)
    }
}

/// One item of [`Db::import`].
#[derive(Clone, Debug)]
pub enum Import {
    /// A schema version of a tree.
    Schema(Schema),
    /// A record, key and metadata included.
    Record(Box<DynRecord>),
}

/// What [`Db::trees`] says about one tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeInfo {
    /// The tree's name.
    pub name: String,
    /// How many revisions it stores (every revision of every record).
    pub records: u64,
    /// The schema versions stored for it, oldest first.
    pub versions: Vec<u32>,
}

/// One revision of a record, untyped.
#[derive(Clone, Debug, PartialEq)]
pub struct DynRecord {
    /// Its key.
    pub key: DynKey,
    /// Released, state, holder and the schema version it was written with.
    pub meta: RecordMeta,
    /// Its data, decoded with the schema of `meta.version`.
    pub value: Value,
}

impl DynRecord {
    /// The data as pretty RON text (what [`DynTree::replace_ron`] reads back).
    pub fn to_ron(&self) -> String {
        dynamic::to_ron(&self.value)
    }
}

impl Db {
    /// Stores schemas and records exactly as given, keys and metadata included (an import
    /// into a standalone database: a synced replica's records come from its server), all in
    /// one batch. A schema version not stored yet is added, one stored already must have
    /// the same layout ([`Error::SchemaChanged`]); each record's value is checked against
    /// the schema of its tree and `meta.version` (stored, or imported before it); a key that
    /// exists already is [`Error::KeyExists`]; on any error, including one the iterator
    /// yields, nothing is written. Later creates allocate ids past the imported ones, so an
    /// id above 2^63 is refused ([`Error::ImportAborted`]). A record's holder is kept only
    /// when it is this database's own holder number: the holders of another database (a
    /// server's replicas) mean nothing here, and their records are imported free.
    /// Returns how many records were stored.
    pub fn import(&self, items: impl IntoIterator<Item = Result<Import>>) -> Result<u64> {
        if self.is_synced() {
            return Err(Error::ImportIntoReplica);
        }
        let mut b = self.batch()?;
        // Schemas this import adds: parsed copies cached while it runs are forgotten if it
        // fails (they were never stored), while the batch still holds the writer lock.
        let mut added: Vec<(String, u32)> = Vec::new();
        match self.import_in_batch(&mut b, items, &mut added) {
            Ok(n) => {
                b.commit()?;
                Ok(n)
            }
            Err(e) => {
                for (tree, version) in added {
                    crate::event::lock(&self.inner.tree_state(&tree).schemas).remove(&version);
                }
                drop(b);
                Err(e)
            }
        }
    }

    fn import_in_batch(
        &self,
        b: &mut crate::Batch<'_>,
        items: impl IntoIterator<Item = Result<Import>>,
        added: &mut Vec<(String, u32)>,
    ) -> Result<u64> {
        let mut n = 0u64;
        for item in items {
            match item? {
                Import::Schema(schema) => {
                    let stored = b
                        .txn
                        .open_table(SCHEMAS)?
                        .get((schema.tree.as_str(), schema.version))?
                        .map(|v| v.value().to_owned());
                    match stored {
                        Some(text) => {
                            let s = Schema::from_ron(&text).map_err(|e| Error::CorruptSchema {
                                tree: schema.tree.clone(),
                                version: schema.version,
                                reason: e.to_string(),
                            })?;
                            if !s.same_shape(&schema) {
                                return Err(Error::SchemaChanged {
                                    tree: schema.tree.clone(),
                                    version: schema.version,
                                    changes: crate::schema::describe_changes(&s, &schema),
                                });
                            }
                        }
                        None => {
                            let text = schema.to_ron().map_err(|e| Error::Encode {
                                tree: schema.tree.clone(),
                                reason: e.to_string(),
                            })?;
                            b.txn
                                .open_table(SCHEMAS)?
                                .insert((schema.tree.as_str(), schema.version), text.as_str())?;
                            added.push((schema.tree.clone(), schema.version));
                            b.txn
                                .open_table(self.inner.tree_state(&schema.tree).def())?;
                        }
                    }
                }
                Import::Record(r) => {
                    b.dyn_tree(&r.key.tree, r.meta.version)?.import_dyn(
                        r.key.raw(),
                        &r.meta,
                        &r.value,
                    )?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Every tree that has a stored schema, by name, with its record count and schema
    /// versions.
    pub fn trees(&self) -> Result<Vec<TreeInfo>> {
        let txn = self.inner.redb.begin_read()?;
        let mut out: Vec<TreeInfo> = Vec::new();
        {
            let schemas = match txn.open_table(SCHEMAS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
                Err(e) => return Err(e.into()),
            };
            for row in schemas.iter()? {
                let (k, _) = row?;
                let (tree, version) = k.value();
                match out.last_mut() {
                    Some(t) if t.name == tree => t.versions.push(version),
                    _ => out.push(TreeInfo {
                        name: tree.to_owned(),
                        records: 0,
                        versions: vec![version],
                    }),
                }
            }
        }
        for t in &mut out {
            let state = self.inner.tree_state(&t.name);
            t.records = match txn.open_table(state.def()) {
                Ok(table) => table.len()?,
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(e.into()),
            };
        }
        Ok(out)
    }

    /// The tree `name`, untyped ([`Error::NoSuchTree`] if no schema is stored for it). It
    /// writes with the newest schema stored when it was opened.
    pub fn dyn_tree(&self, name: &str) -> Result<DynTree> {
        let schema = self.schemas(name)?.pop().ok_or_else(|| Error::NoSuchTree {
            tree: name.to_owned(),
        })?;
        Ok(DynTree {
            db: self.clone(),
            state: self.inner.tree_state(name),
            schema: Arc::new(schema),
        })
    }
}

/// A tree opened by name, without its Rust type (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct DynTree {
    db: Db,
    state: Arc<TreeState>,
    schema: Arc<Schema>,
}

impl fmt::Debug for DynTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynTree")
            .field("name", &self.name())
            .field("version", &self.schema.version)
            .finish()
    }
}

impl DynTree {
    /// The tree's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The schema writes use: the newest stored one.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Every schema version stored for the tree, oldest first.
    pub fn schemas(&self) -> Result<Vec<Schema>> {
        self.db.schemas(self.name())
    }

    /// The key of record `id`, revision `rev`, of this tree.
    pub fn key(&self, id: u64, rev: u32) -> DynKey {
        DynKey {
            tree: self.state.name.clone(),
            id,
            rev,
        }
    }

    /// Reads RON text as a record of the newest schema ([`Error::InvalidRon`] naming the
    /// line, column and field path otherwise).
    pub fn parse(&self, text: &str) -> Result<Value> {
        dynamic::from_ron(&self.schema, text).map_err(|error| Error::InvalidRon {
            tree: self.name().to_owned(),
            version: self.schema.version,
            error,
        })
    }

    fn not_found(&self, key: RawKey) -> Error {
        Error::NotFound {
            tree: self.name().to_owned(),
            key,
        }
    }

    /// A read transaction and the tree's table (`None`: the table does not exist yet).
    fn read(&self) -> Result<(redb::ReadTransaction, Option<ReadTable>)> {
        let txn = self.db.inner.redb.begin_read()?;
        let table = match txn.open_table(self.state.def()) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok((txn, table))
    }

    /// How many revisions the tree stores.
    pub fn len(&self) -> Result<u64> {
        Ok(match self.read()?.1 {
            Some(t) => t.len()?,
            None => 0,
        })
    }

    /// Whether the tree stores nothing.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// One revision.
    pub fn get(&self, key: RawKey) -> Result<DynRecord> {
        let (txn, table) = self.read()?;
        let table = table.ok_or_else(|| self.not_found(key))?;
        let guard = table.get(pack(key))?.ok_or_else(|| self.not_found(key))?;
        decode_row(self, &txn, key, guard.value())
    }

    /// Every revision of record `id`, oldest first (empty: no such record).
    pub fn revisions(&self, id: u64) -> Result<Vec<DynRecord>> {
        self.range(id..=id)?.collect()
    }

    /// The latest revision of record `id`.
    pub fn latest(&self, id: u64) -> Result<Option<DynRecord>> {
        self.range(id..=id)?.next_back().transpose()
    }

    /// Every revision of every record, in key order, read lazily from one snapshot.
    pub fn iter(&self) -> Result<DynIter> {
        self.range(..)
    }

    /// Every revision of the records whose ids are in `ids`, lazily, from one snapshot.
    pub fn range(&self, ids: impl RangeBounds<u64>) -> Result<DynIter> {
        let (txn, table) = self.read()?;
        let inner = match &table {
            Some(t) => Some(t.range::<u128>(packed_bounds(&ids))?),
            None => None,
        };
        Ok(DynIter {
            inner,
            txn,
            tree: self.clone(),
        })
    }

    /// The keys of the revisions of records whose ids are in `ids`, in order, read lazily
    /// from one snapshot without decoding anything (building an index of a large tree).
    pub fn keys(&self, ids: impl RangeBounds<u64>) -> Result<DynKeys> {
        let (_, table) = self.read()?;
        let inner = match &table {
            Some(t) => Some(t.range::<u128>(packed_bounds(&ids))?),
            None => None,
        };
        Ok(DynKeys { inner })
    }

    /// One read snapshot for many point reads (the visible rows of a GUI frame): cheaper
    /// than [`DynTree::get`] per record, and consistent across them.
    pub fn snapshot(&self) -> Result<DynSnapshot> {
        let (txn, table) = self.read()?;
        Ok(DynSnapshot {
            txn,
            table,
            tree: self.clone(),
        })
    }

    fn write<R>(&self, f: impl FnOnce(&mut BatchTree<'_, Dynamic>) -> Result<R>) -> Result<R> {
        let mut b = self.db.batch()?;
        let r = f(&mut b.dyn_tree(self.name(), self.schema.version)?)?;
        b.commit()?;
        Ok(r)
    }

    /// Creates a record from a value of the newest schema (checked against it: an
    /// [`Error::InvalidValue`] names the field path). Borrowed by this replica from birth,
    /// as in typed code. In a synced database that runs out of ids, waits for more like
    /// [`crate::Tree::create`].
    pub fn create(&self, value: &Value) -> Result<DynKey> {
        let key = self.db.write(|b| {
            b.dyn_tree(self.name(), self.schema.version)?
                .create_dyn(&self.schema, value)
        })?;
        Ok(self.key(key.id, key.rev))
    }

    /// Creates a record from RON text ([`DynTree::parse`], then [`DynTree::create`]).
    pub fn create_ron(&self, text: &str) -> Result<DynKey> {
        self.create(&self.parse(text)?)
    }

    /// Replaces a draft this replica holds (in an optimistic tree of a synced database,
    /// also one nobody holds) with a value of the newest schema.
    pub fn replace(&self, key: RawKey, value: &Value) -> Result<()> {
        self.write(|t| t.replace_dyn(key, &self.schema, value))
    }

    /// Replaces a draft from RON text; nothing changes if the text is not a valid record.
    pub fn replace_ron(&self, key: RawKey, text: &str) -> Result<()> {
        self.replace(key, &self.parse(text)?)
    }

    /// Changes a draft through a closure on its current value, in one batch; returns what
    /// the closure returns. A value the closure leaves invalid changes nothing
    /// ([`Error::InvalidValue`]).
    pub fn update<R>(&self, key: RawKey, f: impl FnOnce(&mut Value) -> R) -> Result<R> {
        self.write(|t| {
            let (_, mut value) = t.get_dyn(key)?;
            let r = f(&mut value);
            t.replace_dyn(key, &self.schema, &value)?;
            Ok(r)
        })
    }

    /// Removes a draft revision this replica holds.
    pub fn remove(&self, key: RawKey) -> Result<()> {
        self.write(|t| t.remove(typed(key)))
    }

    /// Releases (freezes) a draft this replica holds.
    pub fn release(&self, key: RawKey) -> Result<()> {
        self.write(|t| t.release(typed(key)))
    }

    /// Sets the application state of a released revision (needs the record's borrow).
    pub fn set_state(&self, key: RawKey, state: u32) -> Result<()> {
        self.write(|t| t.set_state(typed(key), state))
    }

    /// Makes the next revision (a draft copy of the latest, which must be released).
    pub fn new_revision(&self, key: RawKey) -> Result<DynKey> {
        let k = self.write(|t| t.new_revision(typed(key)))?;
        Ok(self.key(k.id(), k.rev()))
    }

    /// Takes the record's borrow: locally in a standalone database, from the server in a
    /// synced one (like [`crate::Tree::borrow`]).
    pub fn borrow(&self, key: RawKey) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(link) = self.db.inner.link.get() {
            if batch::batch_open_here(&self.db.inner) {
                return Err(Error::BatchInProgress);
            }
            let latest = self.latest(key.id)?.ok_or_else(|| self.not_found(key))?;
            if latest.meta.holder == self.db.replica() {
                return Ok(());
            }
            return link.borrow_blocking(self.name(), latest.key.raw());
        }
        self.write(|t| t.borrow(typed(key)))
    }

    /// Returns the record's borrow (check-in).
    pub fn return_borrow(&self, key: RawKey) -> Result<()> {
        self.write(|t| t.return_borrow(typed(key)))
    }
}

fn typed(key: RawKey) -> Key<Dynamic> {
    Key::new(key.id, key.rev)
}

type ReadTable = redb::ReadOnlyTable<u128, &'static [u8]>;

/// Decodes a stored row of `tree` with the schema it was written with.
fn decode_row(
    tree: &DynTree,
    txn: &redb::ReadTransaction,
    key: RawKey,
    bytes: &[u8],
) -> Result<DynRecord> {
    let corrupt = |reason: String| Error::Corrupt {
        tree: tree.name().to_owned(),
        key,
        reason,
    };
    let (h, _) = Header::parse(bytes).ok_or_else(|| corrupt("invalid value header".into()))?;
    let schema = evolve::writer_schema(&tree.state, h.version, || evolve::read_schemas(txn))?;
    let data = bytes.get(HEADER_LEN..).unwrap_or_default();
    let value = dynamic::decode(&schema, data).map_err(|e| corrupt(e.to_string()))?;
    Ok(DynRecord {
        key: tree.key(key.id, key.rev),
        meta: RecordMeta::from(h),
        value,
    })
}

/// Revisions of an untyped tree, read lazily from one snapshot (see [`DynTree::range`]).
pub struct DynIter {
    inner: Option<redb::Range<'static, u128, &'static [u8]>>,
    txn: redb::ReadTransaction,
    tree: DynTree,
}

impl DynIter {
    fn row(
        &self,
        row: std::result::Result<
            (
                redb::AccessGuard<'static, u128>,
                redb::AccessGuard<'static, &'static [u8]>,
            ),
            redb::StorageError,
        >,
    ) -> Result<DynRecord> {
        let (k, v) = row?;
        decode_row(&self.tree, &self.txn, unpack(k.value()), v.value())
    }
}

impl Iterator for DynIter {
    type Item = Result<DynRecord>;

    fn next(&mut self) -> Option<Result<DynRecord>> {
        let row = self.inner.as_mut()?.next()?;
        Some(self.row(row))
    }
}

impl DoubleEndedIterator for DynIter {
    fn next_back(&mut self) -> Option<Result<DynRecord>> {
        let row = self.inner.as_mut()?.next_back()?;
        Some(self.row(row))
    }
}

/// Keys of an untyped tree, read lazily (see [`DynTree::keys`]).
pub struct DynKeys {
    inner: Option<redb::Range<'static, u128, &'static [u8]>>,
}

impl Iterator for DynKeys {
    type Item = Result<RawKey>;

    fn next(&mut self) -> Option<Result<RawKey>> {
        let row = self.inner.as_mut()?.next()?;
        Some(row.map(|(k, _)| unpack(k.value())).map_err(Error::from))
    }
}

/// A read snapshot of an untyped tree (see [`DynTree::snapshot`]).
pub struct DynSnapshot {
    txn: redb::ReadTransaction,
    table: Option<ReadTable>,
    tree: DynTree,
}

impl DynSnapshot {
    /// One revision, as of the snapshot.
    pub fn get(&self, key: RawKey) -> Result<DynRecord> {
        let table = self
            .table
            .as_ref()
            .ok_or_else(|| self.tree.not_found(key))?;
        let guard = table
            .get(pack(key))?
            .ok_or_else(|| self.tree.not_found(key))?;
        decode_row(&self.tree, &self.txn, key, guard.value())
    }
}
