//! Indexers: user code that keeps an in-memory index of a tree complete.
//!
//! An [`Indexer`] is registered per tree with [`Db::register_indexer`](crate::Db::register_indexer).
//! It is first replayed over every stored record, then called for every committed change
//! (local or, later, from the server) right after the commit and before subscribers see the
//! event, with zero-copy access to the record before and after the change. The pattern: the
//! indexer owns a clone of a handle (e.g. `Arc<RwLock<BTreeMap<..>>>`) that the application
//! keeps another clone of and queries.
//!
//! A panicking indexer is caught: it is disabled (its [`IndexerStatus`] says why), the
//! database and the other indexers and subscribers are not affected.

use crate::event::{EventKind, lock};
use crate::storage::Header;
use crate::tree::RecordMeta;
use crate::{Archived, Key, RawKey, Record};
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
#[non_exhaustive]
pub struct Change<'a, T: Record> {
    /// The record.
    pub key: Key<T>,
    /// What happened (`Created` during replay).
    pub kind: EventKind,
    /// Whether this is the replay of an existing record at registration.
    pub replay: bool,
    /// The record before the change (for updates and removals).
    pub old: Option<&'a Archived<T>>,
    /// The record after the change (absent for removals).
    pub new: Option<&'a Archived<T>>,
    /// The revision's metadata after the change (absent for removals).
    pub meta: Option<RecordMeta>,
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

/// A change with raw stored values (header included).
pub(crate) struct RawChange<'a> {
    pub(crate) key: RawKey,
    pub(crate) kind: EventKind,
    pub(crate) replay: bool,
    pub(crate) old: Option<&'a [u8]>,
    pub(crate) new: Option<&'a [u8]>,
}

type ApplyFn = Box<dyn FnMut(&RawChange<'_>) + Send>;

/// A type-erased registered indexer.
pub(crate) struct IndexerSlot {
    apply: ApplyFn,
    failure: Arc<Mutex<Option<String>>>,
}

/// The archived record in a stored value, if it has `T`'s version and validates.
fn view<T: Record>(value: &[u8]) -> Option<(&Archived<T>, Header)> {
    let (h, data) = Header::parse(value)?;
    if h.version != T::VERSION {
        return None;
    }
    Some((T::__access(data).ok()?, h))
}

impl IndexerSlot {
    pub(crate) fn new<T: Record, I: Indexer<T>>(mut indexer: I) -> Self {
        IndexerSlot {
            apply: Box::new(move |c: &RawChange<'_>| {
                let old = c.old.and_then(view::<T>);
                let new = c.new.and_then(view::<T>);
                indexer.apply(&Change {
                    key: Key::new(c.key.id, c.key.rev),
                    kind: c.kind,
                    replay: c.replay,
                    old: old.map(|(a, _)| a),
                    new: new.map(|(a, _)| a),
                    meta: new.map(|(_, h)| h.into()),
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
