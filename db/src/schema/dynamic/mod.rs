//! Records without their Rust types: decode stored bytes with a [`Schema`] into a [`Value`],
//! encode a [`Value`] back into the exact bytes rkyv would write, render values as RON, and
//! project a [`Value`] onto a Rust type through serde.
//!
//! The byte layout is rkyv 0.8's (unaligned, little-endian, 32-bit relative pointers), as
//! rekord configures it. [`decode`] applies the same checks as rkyv's checked access (bounds,
//! the sub-tree ordering of out-of-line objects, `bool`/`char`/UTF-8/tag validity, hash table
//! and B-tree structure) and never panics on arbitrary bytes or schemas: nesting depth and the
//! amount of work are bounded. [`encode`] mirrors rkyv's serializer, including the placement of
//! hash table entries (FxHasher64 over the native key) and the shape of B-trees, so typed code
//! can read (and look up in) what it writes.

mod btree;
mod de;
mod decode;
mod encode;
mod hash;
mod layout;
mod path;
mod ron;
mod value;

pub use value::{Fields, Value};

use super::Schema;

/// The deepest nesting of values [`decode`] and [`encode`] accept.
pub const MAX_DEPTH: usize = 128;

/// What went wrong, and where (a path like `parts.dims.w` or `tags[3]` or `map{2}.value`;
/// the empty path is the record itself).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at `{path}`: {message}")]
pub struct DynError {
    /// Where in the value: field names joined by `.`, `[i]` for sequence elements, `.i` for
    /// tuple elements, `{i}` for map and set entries (followed by `.key` or `.value` for maps),
    /// and the variant name before the fields of an enum variant.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

/// Decodes stored record bytes (rkyv root at the end of `bytes`) written with `schema`.
///
/// Maps and sets come back in stored order (bucket order for hash maps, key order for B-trees).
pub fn decode(schema: &Schema, bytes: &[u8]) -> Result<Value, DynError> {
    decode::decode(schema, bytes)
}

/// Encodes a value for `schema`. The result passes rkyv's checked access for the typed
/// archive and deserializes to the same value; it is byte-identical to rkyv's output except
/// for the order of hash map entries (which depends on the std `HashMap` iteration order).
///
/// Struct fields are matched by name; B-tree map and set entries are sorted by key like the
/// Rust type would be; duplicate keys are an error.
pub fn encode(schema: &Schema, value: &Value) -> Result<Vec<u8>, DynError> {
    encode::encode(schema, value)
}

/// Renders a value as pretty RON text that looks like the Rust value: structs
/// `(name: "x", qty: 3)`, enums `Variant`, `Variant(..)` or `Variant(a: 1)`, `Some(..)`/`None`,
/// maps `{k: v}`, keys `(id: 1, rev: 0)` and uuids as strings.
pub fn to_ron(value: &Value) -> String {
    ron::to_ron(value)
}

/// Builds a typed value from a dynamic one through serde.
///
/// Struct fields are matched by name (unknown fields are ignored, missing fields use the
/// type's `#[serde(default)]`, else an error naming the field), enums by variant name, and
/// integers convert when the value fits. Every error names the path of the offending value.
pub fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, DynError> {
    de::from_value(value)
}
