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
mod parse;
mod path;
mod ron;
mod value;

pub use parse::{RonError, ValueSeed};
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

/// Reads RON text as a value of `schema`'s record type: what [`to_ron`] writes reads back
/// to the same value. Struct fields may come in any order; a missing field is an error unless
/// the schema marks it `default` (then it takes its type's default); an unknown field, a
/// wrong type or a number out of range is an error naming the line, column and path.
pub fn from_ron(schema: &Schema, text: &str) -> Result<Value, RonError> {
    parse::from_ron(schema, text)
}

/// [`to_ron`] on one line: no line breaks anywhere (a `char` such as `'\n'` is escaped), so
/// line-oriented files (the viewer's exports) can hold one value per line. Reads back with
/// [`from_ron`] to the same value.
pub fn to_ron_line(value: &Value) -> String {
    ron::to_ron_line(value)
}

/// Builds a typed value from a dynamic one through serde.
///
/// Struct fields are matched by name (unknown fields are ignored, missing fields use the
/// type's `#[serde(default)]`, else an error naming the field), enums by variant name, and
/// integers convert when the value fits. Every error names the path of the offending value.
pub fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, DynError> {
    de::from_value(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::schema::{Field, Type, TypeDef};

    /// A record type for tests that need one (e.g. `Key<Rec>`).
    #[crate::record(tree = "rec")]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Rec {
        pub a: u32,
        pub b: String,
    }

    fn schema(fields: Vec<(&str, Type)>) -> Schema {
        Schema {
            tree: "t".into(),
            version: 1,
            root: Type::Named("A".into()),
            types: [(
                "A".to_owned(),
                TypeDef::Struct(
                    fields
                        .into_iter()
                        .map(|(n, t)| Field::new(n, t, false))
                        .collect(),
                ),
            )]
            .into(),
        }
    }

    #[test]
    fn paths_render_like_rust() {
        use path::{Seg, render};
        assert_eq!(
            render([
                Seg::Field("parts"),
                Seg::Index(3),
                Seg::Field("dims"),
                Seg::Field("w")
            ]),
            "parts[3].dims.w"
        );
        assert_eq!(
            render([Seg::Field("map"), Seg::Entry(2), Seg::Value]),
            "map{2}.value"
        );
        assert_eq!(render([Seg::Tuple(1), Seg::Key]), "1.key");
        assert_eq!(render([]), "");
    }

    #[test]
    fn round_trip_of_a_record() {
        let r = Rec {
            a: 7,
            b: "a string longer than 8".into(),
        };
        let bytes = crate::Record::__encode(&r, Vec::new()).unwrap();
        let s = Schema::of::<Rec>();
        let v = decode(&s, &bytes).unwrap();
        assert_eq!(
            v,
            Value::Struct(vec![
                ("a".into(), Value::U32(7)),
                ("b".into(), Value::String("a string longer than 8".into())),
            ])
        );
        assert_eq!(encode(&s, &v).unwrap(), bytes);
        assert_eq!(from_value::<Rec>(v.clone()).unwrap(), r);
        assert_eq!(to_ron(&v), "(a: 7, b: \"a string longer than 8\")");
    }

    #[test]
    fn layout_errors() {
        let s = schema(vec![("a", Type::Named("A".into()))]);
        let e = decode(&s, &[]).unwrap_err();
        assert!(e.message.contains("infinite"), "{e}");
        let s = schema(vec![("a", Type::Array(Box::new(Type::U64), u32::MAX))]);
        let e = decode(&s, &[]).unwrap_err();
        assert!(e.message.contains("larger"), "{e}");
        // Recursion through a Box is fine.
        let s = schema(vec![(
            "a",
            Type::Option(Box::new(Type::Box(Box::new(Type::Named("A".into()))))),
        )]);
        assert_eq!(
            decode(&s, &[0; 5]).unwrap(),
            Value::Struct(vec![("a".into(), Value::Option(None))])
        );
    }

    #[test]
    fn out_of_order_dependencies_are_rejected() {
        // (String, String) with the second string's bytes first (rkyv rejects this too).
        let s = schema(vec![("x", Type::Tuple(vec![Type::String, Type::String]))]);
        let enc = |l: u32| ((l & 0x3f) | 0x80 | ((l & !0x3f) << 2)).to_le_bytes();
        let mut b = Vec::new();
        b.extend(b"BBBBBBBBBB");
        b.extend(b"AAAAAAAAAA");
        b.extend(enc(10));
        b.extend((10i32 - 20).to_le_bytes());
        b.extend(enc(10));
        b.extend((0i32 - 28).to_le_bytes());
        assert!(decode(&s, &b).is_err());
        // Sharing one byte range is rejected as well.
        let mut b = Vec::new();
        b.extend(b"AAAAAAAAAA");
        b.extend(enc(10));
        b.extend((0i32 - 10).to_le_bytes());
        b.extend(enc(10));
        b.extend((0i32 - 18).to_le_bytes());
        assert!(decode(&s, &b).is_err());
        // In order, it decodes.
        let mut b = Vec::new();
        b.extend(b"AAAAAAAAAA");
        b.extend(b"BBBBBBBBBB");
        b.extend(enc(10));
        b.extend((0i32 - 20).to_le_bytes());
        b.extend(enc(10));
        b.extend((10i32 - 28).to_le_bytes());
        let v = decode(&s, &b).unwrap();
        assert_eq!(encode(&s, &v).unwrap(), b);
    }
}
