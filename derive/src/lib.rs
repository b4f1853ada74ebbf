#![warn(missing_docs)]
//! Procedural macros of [rekord](https://docs.rs/rekord). Use them through the `rekord`
//! crate, never directly: `#[rekord::record(...)]` turns a struct or enum into a record type,
//! `#[rekord::data]` turns a type into something a record may contain.
//!
//! Both attributes add, on the item they are placed on, rkyv's `Archive`/`Serialize`/
//! `Deserialize` derives and serde's `Serialize`/`Deserialize` derives (all through
//! re-exports of `rekord`, so the user's crate needs neither rkyv nor serde), and generate the
//! compile-time schema description (`rekord::Describe`). `record` also implements
//! `rekord::Record` (tree name, schema version, codec).
//!
//! Every mistake is a compile error with a span at the culprit; all errors found in one item
//! are reported together.

mod attr;
mod expand;
mod validate;

use proc_macro::TokenStream;

/// Makes a struct with named fields, or an enum, a rekord record type.
///
/// ```text
/// #[rekord::record(tree = "parts", version = 2)]
/// pub struct Part {
///     pub name: String,
///     #[record(default)]
///     pub supplier: Option<String>,
/// }
/// ```
///
/// Item options (all optional):
/// - `tree = "name"`: the stable tree name (default: the type name in snake_case). Lowercase
///   ASCII letters, digits, `_`, `-` and `.`, at most 64 characters.
/// - `version = N`: the schema version, an integer from 1 (default 1).
/// - `migrate_from = OldType`: the previous version of this record (same tree, smaller
///   version), to read records stored with it (or, through its own `migrate_from`, with any
///   older version); needs `impl From<OldType> for ThisType` or `TryFrom` with a `Display`
///   error. Checked at compile time.
/// - `crate = "path"`: the path of the `rekord` crate if it was renamed (default `::rekord`).
///
/// Field options:
/// - `#[record(default)]`: the field may be missing in stored data; `Default::default()` is used.
/// - `#[record(default = expr)]`: as above, with `expr` as the value.
#[proc_macro_attribute]
pub fn record(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr::Kind::Record, args.into(), item.into()).into()
}

/// Makes a type usable inside a record (a nested struct or enum) without making it a record
/// itself. Options: `crate = "path"`. Field options are those of [`macro@record`].
#[proc_macro_attribute]
pub fn data(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr::Kind::Data, args.into(), item.into()).into()
}
