//! The hot-record cache: a memory-resident copy of recently read records, so repeated reads
//! (an immediate-mode GUI redrawing the same rows every frame) cost a hash lookup instead of a
//! redb B-tree walk.
//!
//! Consistency: every committed change removes the keys it touched *after* the redb commit,
//! and bumps a generation number under the same lock. A reader remembers the generation before
//! it opens its redb read transaction and only inserts what it read if the generation is still
//! the same, so a value read before a commit can never be inserted after that commit's removal.
//!
//! Admission: a record enters the cache on its second read within a short window (a small
//! "doorkeeper" table of recently missed keys), so a one-pass scan or random reads over a large
//! tree do not pay for copying into the cache.
//!
//! Bounded: when the cached bytes exceed the budget, a quarter of the entries are dropped.

use crate::RawKey;
use std::any::TypeId;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

const DOOR_SLOTS: usize = 4096;

/// A cached, validated record value (header + rkyv bytes).
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) bytes: Arc<[u8]>,
    /// The record type whose checked access validated `bytes`.
    pub(crate) validated_as: TypeId,
}

struct Inner {
    map: HashMap<RawKey, Entry, foldhash::fast::FixedState>,
    generation: u64,
    bytes: usize,
}

pub(crate) struct Cache {
    inner: RwLock<Inner>,
    door: Box<[AtomicU64]>,
    budget: usize,
}

impl Cache {
    pub(crate) fn new(budget: usize) -> Self {
        Cache {
            inner: RwLock::new(Inner {
                map: HashMap::with_hasher(foldhash::fast::FixedState::default()),
                generation: 0,
                bytes: 0,
            }),
            door: (0..DOOR_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            budget,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Poisoning cannot leave `Inner` inconsistent: every write section only inserts or
        // removes whole entries and adjusts the byte count after the map operation.
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached entry and, on a miss, the generation to pass to [`Cache::admit`].
    pub(crate) fn get(&self, key: RawKey) -> Result<Entry, u64> {
        let inner = self.read();
        match inner.map.get(&key) {
            Some(e) => Ok(e.clone()),
            None => Err(inner.generation),
        }
    }

    /// Whether a record just read from storage should be copied into the cache (its second
    /// miss within the doorkeeper window).
    pub(crate) fn wants(&self, key: RawKey) -> bool {
        if self.budget == 0 {
            return false;
        }
        let mut h = foldhash::fast::FixedState::default().build_hasher();
        key.hash(&mut h);
        let hash = h.finish() | 1;
        let slot = &self.door[(hash as usize) % DOOR_SLOTS];
        if slot.load(Ordering::Relaxed) == hash {
            true
        } else {
            slot.store(hash, Ordering::Relaxed);
            false
        }
    }

    /// Inserts a value read under `generation`, unless a commit happened since.
    pub(crate) fn admit(&self, generation: u64, key: RawKey, entry: Entry) {
        let mut inner = self.write();
        if inner.generation != generation {
            return;
        }
        let len = entry.bytes.len();
        if let Some(old) = inner.map.insert(key, entry) {
            inner.bytes -= old.bytes.len();
        }
        inner.bytes += len;
        if inner.bytes > self.budget {
            let target = self.budget / 4 * 3;
            let mut bytes = inner.bytes;
            inner.map.retain(|_, e| {
                if bytes > target {
                    bytes -= e.bytes.len();
                    false
                } else {
                    true
                }
            });
            inner.bytes = bytes;
        }
    }

    /// Forgets `keys` after a commit changed them.
    pub(crate) fn invalidate(&self, keys: impl IntoIterator<Item = RawKey>) {
        let mut inner = self.write();
        inner.generation += 1;
        if inner.map.is_empty() {
            return;
        }
        for k in keys {
            if let Some(old) = inner.map.remove(&k) {
                inner.bytes -= old.bytes.len();
            }
        }
    }
}
