//! Compile-time schema descriptions of record types.
//!
//! `#[rekord::record]` and `#[rekord::data]` implement [`Describe`] for the user's types; the
//! std types records commonly hold implement it here. A [`Schema`] is the description of one
//! record type at one version: the root type plus every user type it reaches, by name. Schemas
//! are stored in the database (as RON text) next to the data, so a reader always knows the
//! layout a record was written with.

mod describe;
mod diff;
pub mod dynamic;
mod shape;

pub use diff::describe_changes;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Types whose layout rekord can describe, and so store.
///
/// Implemented by `#[rekord::record]`, `#[rekord::data]`, and here for the std types: integers
/// (not `usize`/`isize`), floats, `bool`, `char`, `String`, `()`, `Option`, `Box`, `Vec`,
/// arrays, tuples up to 8, `HashMap`/`BTreeMap`, `HashSet`/`BTreeSet`, `uuid::Uuid` and
/// [`Key<T>`](crate::Key).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a rekord record",
    label = "this type has no rekord schema",
    note = "put #[rekord::data] on your own nested types; supported std types are integers, floats, bool, char, String, Option, Box, Vec, arrays, tuples, HashMap, BTreeMap, HashSet, BTreeSet, uuid::Uuid and rekord::Key<T>"
)]
pub trait Describe {
    /// Describes the type, registering nested user types in `builder`.
    fn describe(builder: &mut SchemaBuilder) -> Type;
}

/// The shape of one value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Type {
    /// `()`
    Unit,
    /// `bool`
    Bool,
    /// `u8`
    U8,
    /// `u16`
    U16,
    /// `u32`
    U32,
    /// `u64`
    U64,
    /// `u128`
    U128,
    /// `i8`
    I8,
    /// `i16`
    I16,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `i128`
    I128,
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// `char`
    Char,
    /// `String`
    String,
    /// `uuid::Uuid`
    Uuid,
    /// `Option<T>`
    Option(Box<Type>),
    /// `Box<T>`
    Box(Box<Type>),
    /// `Vec<T>`
    Vec(Box<Type>),
    /// `[T; N]`
    Array(Box<Type>, u32),
    /// `(A, B, ...)`
    Tuple(Vec<Type>),
    /// `BTreeMap<K, V>` (`ordered`) or `HashMap<K, V>`
    Map {
        /// Whether the map is ordered (`BTreeMap`).
        ordered: bool,
        /// Key type.
        key: Box<Type>,
        /// Value type.
        value: Box<Type>,
    },
    /// `BTreeSet<T>` (`ordered`) or `HashSet<T>`
    Set {
        /// Whether the set is ordered (`BTreeSet`).
        ordered: bool,
        /// Element type.
        item: Box<Type>,
    },
    /// `rekord::Key<T>`: a key into the named tree.
    Key {
        /// The tree the key points into.
        tree: String,
    },
    /// A user type, defined in [`Schema::types`].
    Named(String),
}

/// The definition of a user type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TypeDef {
    /// A struct with named fields, in declaration order.
    Struct(Vec<Field>),
    /// An enum, variants in declaration order.
    Enum(Vec<Variant>),
}

/// A named field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Field name (raw identifiers without `r#`).
    pub name: String,
    /// Field type.
    pub ty: Type,
    /// Whether the field has `#[record(default)]`, so data without it can be read.
    pub default: bool,
}

impl Field {
    /// A field description (used by generated code).
    pub fn new(name: &str, ty: Type, default: bool) -> Self {
        Field {
            name: name.to_owned(),
            ty,
            default,
        }
    }
}

/// An enum variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Variant name.
    pub name: String,
    /// Variant payload.
    pub kind: VariantKind,
}

/// The payload of an enum variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VariantKind {
    /// `A`
    Unit,
    /// `A(T, U)`
    Tuple(Vec<Type>),
    /// `A { x: T }`
    Named(Vec<Field>),
}

impl Variant {
    /// A unit variant (used by generated code).
    pub fn unit(name: &str) -> Self {
        Variant {
            name: name.to_owned(),
            kind: VariantKind::Unit,
        }
    }
    /// A tuple variant (used by generated code).
    pub fn tuple(name: &str, types: Vec<Type>) -> Self {
        Variant {
            name: name.to_owned(),
            kind: VariantKind::Tuple(types),
        }
    }
    /// A variant with named fields (used by generated code).
    pub fn named(name: &str, fields: Vec<Field>) -> Self {
        Variant {
            name: name.to_owned(),
            kind: VariantKind::Named(fields),
        }
    }
}

/// The full description of a record type at one schema version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The tree the record type lives in.
    pub tree: String,
    /// The schema version.
    pub version: u32,
    /// The record type itself (a [`Type::Named`]).
    pub root: Type,
    /// Every user type reachable from the root, by name.
    pub types: BTreeMap<String, TypeDef>,
}

impl Schema {
    /// Builds the schema of `T`.
    pub fn of<T: crate::Record>() -> Schema {
        let mut b = SchemaBuilder::default();
        let root = T::describe(&mut b);
        Schema {
            tree: T::TREE.to_owned(),
            version: T::VERSION,
            root,
            types: b.types,
        }
    }

    /// The schema as RON text (how it is stored).
    pub fn to_ron(&self) -> Result<String, ron::Error> {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default())
    }

    /// Parses a stored schema.
    ///
    /// Names must be unique where the encoding finds things by name: a struct's fields, an
    /// enum's variants, a variant's fields. A schema that repeats one is refused (values
    /// would decode to one variant and encode as the other).
    pub fn from_ron(text: &str) -> Result<Schema, ron::error::SpannedError> {
        let schema: Schema = ron::Options::default()
            .with_recursion_limit(256)
            .from_str(text)?;
        schema
            .check_names()
            .map_err(|msg| ron::error::SpannedError {
                code: ron::Error::Message(msg),
                span: ron::error::Span {
                    start: ron::error::Position { line: 1, col: 1 },
                    end: ron::error::Position { line: 1, col: 1 },
                },
            })?;
        Ok(schema)
    }

    /// Refuses a name given twice among a struct's fields, an enum's variants or a
    /// variant's fields.
    fn check_names(&self) -> Result<(), String> {
        fn unique<'a>(
            names: impl Iterator<Item = &'a str>,
            what: impl Fn(&str) -> String,
        ) -> Result<(), String> {
            let mut seen = std::collections::BTreeSet::new();
            for name in names {
                if !seen.insert(name) {
                    return Err(what(name));
                }
            }
            Ok(())
        }
        for (ty, def) in &self.types {
            match def {
                TypeDef::Struct(fields) => unique(fields.iter().map(|f| f.name.as_str()), |n| {
                    format!("struct `{ty}` has two fields named `{n}`")
                })?,
                TypeDef::Enum(variants) => {
                    unique(variants.iter().map(|v| v.name.as_str()), |n| {
                        format!("enum `{ty}` has two variants named `{n}`")
                    })?;
                    for v in variants {
                        if let VariantKind::Named(fields) = &v.kind {
                            unique(fields.iter().map(|f| f.name.as_str()), |n| {
                                format!("variant `{ty}::{}` has two fields named `{n}`", v.name)
                            })?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Collects the user types a schema reaches.
#[derive(Default, Debug)]
pub struct SchemaBuilder {
    types: BTreeMap<String, TypeDef>,
    /// Schema name given to each Rust type met so far.
    names: Vec<(std::any::TypeId, String)>,
}

impl SchemaBuilder {
    /// Defines the user type `name` (once; recursive types refer to themselves by name) and
    /// returns a reference to it. Two different Rust types with the same name (from different
    /// modules) get distinct schema names: `Name`, `Name#2`, ... in the order they are reached.
    pub fn define(
        &mut self,
        name: &str,
        type_id: std::any::TypeId,
        def: impl FnOnce(&mut SchemaBuilder) -> TypeDef,
    ) -> Type {
        if let Some((_, n)) = self.names.iter().find(|(t, _)| *t == type_id) {
            return Type::Named(n.clone());
        }
        let mut unique = name.to_owned();
        let mut i = 1;
        while self.names.iter().any(|(_, n)| *n == unique) {
            i += 1;
            unique = format!("{name}#{i}");
        }
        self.names.push((type_id, unique.clone()));
        let d = def(self);
        self.types.insert(unique.clone(), d);
        Type::Named(unique)
    }
}
