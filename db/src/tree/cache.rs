//! The hot-record cache: a memory-resident copy of recently read records, so repeated reads
//! (an immediate-mode GUI redrawing the same rows every frame) cost a hash lookup instead of a
//! redb B-tree walk.
//!
//! Consistency: every commit bumps a generation number of each tree it changes *before* the
//! redb commit and marks a write under way, and removes the keys it touched (bumping again,
//! ending the write) *after* it. A reader remembers the generation before it opens its redb
//! read transaction and only inserts what it read if the generation is still the same and
//! no write is under way, so a value read before a commit can never be inserted once that
//! commit started: reads of one key never go back in time.
//!
//! Admission: a record enters the cache on its second read within a window (a "doorkeeper":
//! a 512 Ki-bit Bloom filter of recently missed keys, cleared after every 64 Ki misses), so a
//! one-pass scan or random reads over a large tree do not pay for copying into the cache,
//! while rows a GUI shows every frame are cached from the second frame on.
//!
//! Bounded: when the cached bytes exceed the budget, a quarter of the entries are dropped.

use crate::RawKey;
use std::any::TypeId;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

const DOOR_WORDS: usize = 8192; // 512 Ki bits, 64 KiB per tree
const DOOR_RESET: u64 = 1 << 16;

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
    /// A commit that changes this tree is under way ([`Cache::bump`] to
    /// [`Cache::invalidate`]): nothing is admitted meanwhile.
    writing: bool,
    /// The commit number of the last commit that changed this tree: a value read from a
    /// snapshot older than it is not admitted (even if the reader's transaction began after
    /// that commit returned).
    commit: u64,
    bytes: usize,
}

pub(crate) struct Cache {
    inner: RwLock<Inner>,
    door: Box<[AtomicU64]>,
    door_marks: AtomicU64,
    budget: usize,
}

impl Cache {
    pub(crate) fn new(budget: usize) -> Self {
        Cache {
            inner: RwLock::new(Inner {
                map: HashMap::with_hasher(foldhash::fast::FixedState::default()),
                generation: 0,
                writing: false,
                commit: 0,
                bytes: 0,
            }),
            door: (0..DOOR_WORDS).map(|_| AtomicU64::new(0)).collect(),
            door_marks: AtomicU64::new(0),
            budget,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Poisoning cannot leave `Inner` inconsistent: every write section only inserts or
        // removes whole entries and adjusts the byte count after the map operation.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let hash = foldhash::fast::FixedState::default().hash_one(key);
        // Two bit positions from the two halves of the hash (truncation intended).
        let bits = [hash as u32, (hash >> 32) as u32].map(|x| x as usize % (DOOR_WORDS * 64));
        let seen = bits
            .iter()
            .all(|&b| self.door[b / 64].load(Ordering::Relaxed) & (1 << (b % 64)) != 0);
        if seen {
            return true;
        }
        // Plain loads and stores instead of read-modify-write: a lost update between racing
        // readers only delays an admission or a reset, and keeps the miss path cheap.
        let marks = self.door_marks.load(Ordering::Relaxed).wrapping_add(1);
        self.door_marks.store(marks, Ordering::Relaxed);
        if marks.is_multiple_of(DOOR_RESET) {
            for w in self.door.iter() {
                w.store(0, Ordering::Relaxed);
            }
        }
        for b in bits {
            let w = &self.door[b / 64];
            w.store(
                w.load(Ordering::Relaxed) | (1 << (b % 64)),
                Ordering::Relaxed,
            );
        }
        false
    }

    /// Inserts a value read under `generation` from a snapshot of commit `seen`, unless a
    /// commit happened since or the snapshot is older than the last commit of this tree.
    pub(crate) fn admit(&self, generation: u64, seen: u64, key: RawKey, entry: Entry) {
        let mut inner = self.write();
        if inner.generation != generation || inner.writing || seen < inner.commit {
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

    /// Called before a commit that changes this tree: values read before it can no longer
    /// be admitted. (Without it, a reader that read the old value before the commit could
    /// admit it between the commit and [`Cache::invalidate`], and another reader that had
    /// already read the new value from storage would then read the old one from the cache.)
    ///
    /// Until [`Cache::invalidate`], nothing is admitted: a reader that took its generation
    /// after this call but opened its read transaction before the redb commit finished
    /// read the old value (CI caught a reader seeing a key go back in time this way).
    ///
    /// The `keys` the commit changes are removed now, not only after it: between the redb
    /// commit and [`Cache::invalidate`] a reader may already read the new value from
    /// storage, and another must not be served the old one from here (the full suite under
    /// load caught readers seeing a key go back in time this way).
    pub(crate) fn bump(&self, keys: impl IntoIterator<Item = RawKey>) {
        let mut inner = self.write();
        inner.generation += 1;
        inner.writing = true;
        for k in keys {
            if let Some(old) = inner.map.remove(&k) {
                inner.bytes -= old.bytes.len();
            }
        }
    }

    /// Forgets `keys` after commit number `commit` changed them.
    pub(crate) fn invalidate(&self, keys: impl IntoIterator<Item = RawKey>, commit: u64) {
        let mut inner = self.write();
        inner.generation += 1;
        inner.writing = false;
        inner.commit = inner.commit.max(commit);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            bytes: Arc::from(&[1u8, 2, 3][..]),
            validated_as: TypeId::of::<u32>(),
        }
    }

    /// A reader that takes its generation while a commit is under way (after the bump,
    /// before the redb commit finished) may have read the old value: it is not admitted.
    #[test]
    fn nothing_is_admitted_while_a_commit_is_under_way() {
        let cache = Cache::new(1 << 20);
        let k = RawKey::new(1, 0);
        cache.bump([]);
        let Err(generation) = cache.get(k) else {
            panic!("an empty cache has no entry");
        };
        cache.admit(generation, 0, k, entry());
        assert!(
            cache.get(k).is_err(),
            "admitted while a commit was under way"
        );
        cache.invalidate([k], 0);
        let Err(generation) = cache.get(k) else {
            panic!("invalidated");
        };
        cache.admit(generation, 0, k, entry());
        assert!(cache.get(k).is_ok(), "admitted once the commit ended");
        // A read that started before a commit is not admitted after it either.
        let Err(before) = cache.get(RawKey::new(2, 0)) else {
            panic!("never admitted");
        };
        cache.bump([]);
        cache.invalidate([k], 0);
        cache.admit(before, 0, RawKey::new(2, 0), entry());
        assert!(cache.get(RawKey::new(2, 0)).is_err());
        // A read that took its generation after commit 7 but read a snapshot older than it
        // (the commit not yet visible to it) is not admitted.
        cache.bump([]);
        cache.invalidate([k], 7);
        let Err(generation) = cache.get(k) else {
            panic!("invalidated");
        };
        cache.admit(generation, 6, k, entry());
        assert!(
            cache.get(k).is_err(),
            "a value older than the last commit was admitted"
        );
        cache.admit(generation, 7, k, entry());
        assert!(cache.get(k).is_ok());
        // The keys a commit changes leave at the bump, before the redb commit is visible.
        cache.bump([k]);
        assert!(
            cache.get(k).is_err(),
            "an entry the commit changes stayed until it ended"
        );
        cache.invalidate([k], 8);
    }
}
