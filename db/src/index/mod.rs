//! Indexers: user code that keeps an in-memory index of a tree complete.
//!
//! An [`Indexer`] is registered per tree with [`Db::register_indexer`](crate::Db::register_indexer).
//! It is first replayed over every stored record, then called for every committed change
//! (local or, later, from the server) right after the commit and before subscribers see the
//! event, with zero-copy access to the record before and after the change, in every schema
//! version (records of other versions are passed as converted copies; one that cannot be
//! converted is reported as such, see [`Change`]). The pattern: the
//! indexer owns a clone of a handle (e.g. `Arc<RwLock<BTreeMap<..>>>`) that the application
//! keeps another clone of and queries.
//!
//! A panicking indexer is caught: it is disabled (its [`IndexerStatus`] says why), the
//! database and the other indexers and subscribers are not affected.

use crate::event::{EventKind, lock};
use crate::schema::Schema;
use crate::storage::{HEADER_LEN, Header};
use crate::tree::{RecordMeta, evolve};
use crate::{Archived, Error, Key, RawKey, Record, Result};
use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

/// A user index over one tree; see the [module docs](self).
pub trait Indexer<T: Record>: Send + 'static {
    /// Called once per stored record at registration (`change.replay`), then for every change.
    fn apply(&mut self, change: &Change<'_, T>);
}

impl<T: Record, F: FnMut(&Change<'_, T>) + Send + 'static> Indexer<T> for F {
    fn apply(&mut self, change: &Change<'_, T>) {
        self(change)
    }
}

/// One change as an indexer sees it.
///
/// Records stored with another schema version than `T`'s are passed like [`Tree::with`]
/// passes them: as a *migrated archived copy* (older data, through the `migrate_from` chain
/// or by projection) or a *projected copy* (data written by a newer version). A record that
/// exists but cannot be read as `T` (a failing conversion, an incompatible newer record,
/// corrupt bytes) is never passed as absent: its side is `None` and [`Change::old_error`] /
/// [`Change::new_error`] says why (see [`Change::unreadable`]).
///
/// [`Tree::with`]: crate::Tree::with
#[non_exhaustive]
pub struct Change<'a, T: Record> {
    /// The record.
    pub key: Key<T>,
    /// What happened (`Created` during replay).
    pub kind: EventKind,
    /// Whether this is the replay of an existing record at registration.
    pub replay: bool,
    /// The record before the change (for updates and removals); `None` if there was no
    /// record before, or if it cannot be read as `T` (then [`Change::old_error`] is set).
    pub old: Option<&'a Archived<T>>,
    /// The record after the change (absent for removals); `None` if there is no record
    /// after the change, or if it cannot be read as `T` (then [`Change::new_error`] is set).
    pub new: Option<&'a Archived<T>>,
    /// The revision's metadata after the change (absent for removals), as stored: its
    /// `version` is the stored schema version, also when `new` is a converted copy.
    pub meta: Option<RecordMeta>,
    /// Why the record before the change exists but cannot be read as `T`
    /// ([`Error::Migration`], [`Error::Incompatible`], [`Error::Corrupt`], ...).
    pub old_error: Option<&'a Error>,
    /// Why the record after the change exists but cannot be read as `T`.
    pub new_error: Option<&'a Error>,
}

impl<T: Record> Change<'_, T> {
    /// Whether the record exists (before or after the change) but cannot be read as `T`:
    /// an indexer should not take such a change for a removal or a creation.
    pub fn unreadable(&self) -> bool {
        self.old_error.is_some() || self.new_error.is_some()
    }
}

/// Tells whether a registered indexer is still running.
#[derive(Clone, Debug)]
pub struct IndexerStatus {
    failure: Arc<Mutex<Option<String>>>,
}

impl IndexerStatus {
    /// The panic message if the indexer panicked and was disabled.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Whether the indexer is still called for changes.
    pub fn is_running(&self) -> bool {
        lock(&self.failure).is_none()
    }
}

/// Gives the stored schema of a version of the tree (for projecting records of other
/// versions).
pub(crate) type SchemaFn<'a> = &'a dyn Fn(u32) -> Result<Arc<Schema>>;

/// A change with raw stored values (header included).
pub(crate) struct RawChange<'a> {
    pub(crate) key: RawKey,
    pub(crate) kind: EventKind,
    pub(crate) replay: bool,
    pub(crate) old: Option<&'a [u8]>,
    pub(crate) new: Option<&'a [u8]>,
    /// The stored schemas of the tree, as of the change.
    pub(crate) schemas: SchemaFn<'a>,
}

type ApplyFn = Box<dyn FnMut(&RawChange<'_>) + Send>;

/// A type-erased registered indexer.
pub(crate) struct IndexerSlot {
    apply: ApplyFn,
    failure: Arc<Mutex<Option<String>>>,
}

/// A stored value (header included) as record bytes in `T`'s layout: the stored bytes
/// themselves for `T`'s version, otherwise a converted copy (as `Tree::with` makes it).
fn converted<'v, T: Record>(
    key: RawKey,
    value: &'v [u8],
    schemas: SchemaFn<'_>,
) -> Result<Cow<'v, [u8]>> {
    let (h, data) = Header::parse(value).ok_or_else(|| Error::Corrupt {
        tree: T::TREE.to_owned(),
        key,
        reason: "invalid value header".into(),
    })?;
    if h.version == T::VERSION {
        return Ok(Cow::Borrowed(data));
    }
    let record: T = evolve::decode_with(schemas, key, &h, data)?;
    let mut copy = evolve::reencode(&record, &h)?;
    copy.drain(..HEADER_LEN.min(copy.len()));
    Ok(Cow::Owned(copy))
}

/// One side of a change: the archived record, or why the stored value cannot be read.
/// `bytes` is what [`converted`] made of the stored value; `access_error` holds a
/// validation error made here.
fn side<'b, T: Record>(
    key: RawKey,
    bytes: &'b Option<Result<Cow<'_, [u8]>>>,
    access_error: &'b mut Option<Error>,
) -> (Option<&'b Archived<T>>, Option<&'b Error>) {
    match bytes {
        None => (None, None),
        Some(Err(e)) => (None, Some(e)),
        Some(Ok(b)) => match T::__access(b) {
            Ok(a) => (Some(a), None),
            Err(e) => {
                let e = access_error.insert(Error::Corrupt {
                    tree: T::TREE.to_owned(),
                    key,
                    reason: e.to_string(),
                });
                (None, Some(&*e))
            }
        },
    }
}

impl IndexerSlot {
    pub(crate) fn new<T: Record, I: Indexer<T>>(mut indexer: I) -> Self {
        IndexerSlot {
            apply: Box::new(move |c: &RawChange<'_>| {
                let old = c.old.map(|v| converted::<T>(c.key, v, c.schemas));
                let new = c.new.map(|v| converted::<T>(c.key, v, c.schemas));
                let (mut old_access, mut new_access) = (None, None);
                let (old_ref, old_error) = side::<T>(c.key, &old, &mut old_access);
                let (new_ref, new_error) = side::<T>(c.key, &new, &mut new_access);
                indexer.apply(&Change {
                    key: Key::new(c.key.id, c.key.rev),
                    kind: c.kind,
                    replay: c.replay,
                    old: old_ref,
                    new: new_ref,
                    meta: c.new.and_then(Header::parse).map(|(h, _)| h.into()),
                    old_error,
                    new_error,
                });
            }),
            failure: Arc::new(Mutex::new(None)),
        }
    }

    pub(crate) fn status(&self) -> IndexerStatus {
        IndexerStatus {
            failure: self.failure.clone(),
        }
    }

    /// Calls the indexer; `false` if it panicked (it is then disabled).
    pub(crate) fn call(&mut self, tree: &str, change: &RawChange<'_>) -> bool {
        match catch_unwind(AssertUnwindSafe(|| (self.apply)(change))) {
            Ok(()) => true,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                tracing::error!(tree, key = %change.key, "indexer panicked and was disabled: {msg}");
                *lock(&self.failure) = Some(msg);
                false
            }
        }
    }
}
