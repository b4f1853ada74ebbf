//! Typed record keys: `(id, revision)`.

use std::fmt;
use std::marker::PhantomData;

/// An untyped record key: the record id and the revision.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct RawKey {
    /// The record id, unique in the database (allocated from this replica's id ranges).
    pub id: u64,
    /// The revision: 0 for the first, then 1, 2, ...
    pub rev: u32,
}

impl RawKey {
    /// A raw key.
    pub const fn new(id: u64, rev: u32) -> Self {
        RawKey { id, rev }
    }
}

impl fmt::Display for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.rev)
    }
}

/// The key of a record of type `T`: the record id and the revision.
///
/// Keys are typed: a `Key<Part>` cannot be used with the tree of another type (that is a
/// compile error). A key may be stored inside another record to refer to it.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Key<T> {
    id: u64,
    rev: u32,
    #[rkyv(with = rkyv::with::Skip)]
    _type: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    /// A key from its parts. Prefer keys returned by the database; this is for keys that came
    /// from elsewhere (user input, another system).
    pub const fn new(id: u64, rev: u32) -> Self {
        Key {
            id,
            rev,
            _type: PhantomData,
        }
    }

    /// The record id.
    pub const fn id(self) -> u64 {
        self.id
    }

    /// The revision.
    pub const fn rev(self) -> u32 {
        self.rev
    }

    /// The untyped key.
    pub const fn raw(self) -> RawKey {
        RawKey {
            id: self.id,
            rev: self.rev,
        }
    }

    /// The key of another revision of the same record.
    pub const fn with_rev(self, rev: u32) -> Self {
        Key::new(self.id, rev)
    }
}

impl<T> ArchivedKey<T> {
    /// The record id.
    pub fn id(&self) -> u64 {
        self.id.to_native()
    }
    /// The revision.
    pub fn rev(&self) -> u32 {
        self.rev.to_native()
    }
    /// The key as a native value.
    pub fn to_key(&self) -> Key<T> {
        Key::new(self.id(), self.rev())
    }
}

impl<T> From<Key<T>> for RawKey {
    fn from(k: Key<T>) -> RawKey {
        k.raw()
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Key<T> {}
impl<T> PartialEq for Key<T> {
    fn eq(&self, o: &Self) -> bool {
        self.raw() == o.raw()
    }
}
impl<T> Eq for Key<T> {}
impl<T> PartialOrd for Key<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Key<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.raw().cmp(&o.raw())
    }
}
impl<T> std::hash::Hash for Key<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.raw().hash(h);
    }
}
impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}@{})", self.id, self.rev)
    }
}
impl<T> fmt::Display for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.rev)
    }
}

impl<T> serde::Serialize for Key<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw().serialize(s)
    }
}
impl<'de, T> serde::Deserialize<'de> for Key<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawKey::deserialize(d)?;
        Ok(Key::new(r.id, r.rev))
    }
}
