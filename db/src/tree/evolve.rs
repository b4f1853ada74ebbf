//! Reading records stored with another schema version.
//!
//! A record's header names the schema version its bytes were written with. Reading it as a
//! type `T` of another version goes, in order:
//! 1. same version: zero-copy (or a typed decode for owned reads);
//! 2. older version reached by `T`'s `migrate_from` chain: the old type is decoded and
//!    converted with the user's `From`/`TryFrom` impls, step by step;
//! 3. anything else (an additive change without a chain, or a record written by a *newer*
//!    version of the program): the stored writer schema drives the dynamic decoder, and the
//!    dynamic value is projected onto `T` by field name through serde: unknown fields are
//!    dropped, missing fields take their `#[record(default)]`, and whatever does not fit is an
//!    [`Error::Incompatible`] naming the field.
//!
//! Zero-copy reads (`with`, iteration) of another version see a *migrated archived copy*: the
//! owned value re-encoded in the current layout (kept in the hot-record cache, so repeated
//! reads do not migrate again). `Tree::migrate` rewrites the stored bytes for good.

use crate::db::TreeState;
use crate::record::ChainError;
use crate::schema::{Schema, dynamic};
use crate::storage::{HEADER_LEN, Header, SCHEMAS};
use crate::{Error, RawKey, Record, Result};
use redb::ReadableTable;
use std::sync::Arc;

/// A table of stored schemas (read or write transaction).
pub(crate) trait SchemaTable: ReadableTable<(&'static str, u32), &'static str> {}
impl<T: ReadableTable<(&'static str, u32), &'static str>> SchemaTable for T {}

/// The stored schema `version` of `state`'s tree, cached per tree (schemas never change once
/// stored).
pub(crate) fn writer_schema<S: SchemaTable>(
    state: &TreeState,
    version: u32,
    open: impl FnOnce() -> Result<S>,
) -> Result<Arc<Schema>> {
    if let Some(s) = crate::event::lock(&state.schemas).get(&version) {
        return Ok(s.clone());
    }
    let table = open()?;
    let text = table
        .get((&*state.name, version))?
        .map(|v| v.value().to_owned())
        .ok_or_else(|| Error::UnknownSchema {
            tree: state.name.to_string(),
            version,
        })?;
    let schema = Arc::new(Schema::from_ron(&text).map_err(|e| Error::CorruptSchema {
        tree: state.name.to_string(),
        version,
        reason: e.to_string(),
    })?);
    if *schema.tree != *state.name || schema.version != version {
        return Err(Error::CorruptSchema {
            tree: state.name.to_string(),
            version,
            reason: format!(
                "its text is the schema of tree `{}` version {}",
                schema.tree, schema.version
            ),
        });
    }
    crate::event::lock(&state.schemas).insert(version, schema.clone());
    Ok(schema)
}

fn corrupt<T: Record>(key: RawKey, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        tree: T::TREE.to_owned(),
        key,
        reason: reason.to_string(),
    }
}

/// Decodes the record bytes `data` (stored with `h.version`) as an owned `T`.
/// `schemas` is only opened when the dynamic path is needed.
pub(crate) fn decode_record<T: Record, S: SchemaTable>(
    state: &TreeState,
    schemas: impl FnOnce() -> Result<S>,
    key: RawKey,
    h: &Header,
    data: &[u8],
) -> Result<T> {
    decode_with::<T>(|v| writer_schema(state, v, schemas), key, h, data)
}

/// [`decode_record`] with the stored schema of a version given by `schema` (only called
/// when the dynamic path is needed).
pub(crate) fn decode_with<T: Record>(
    schema: impl FnOnce(u32) -> Result<Arc<Schema>>,
    key: RawKey,
    h: &Header,
    data: &[u8],
) -> Result<T> {
    if h.version == T::VERSION {
        let a = T::__access(data).map_err(|e| corrupt::<T>(key, e))?;
        return T::__deserialize(a).map_err(|e| corrupt::<T>(key, e));
    }
    if h.version < T::VERSION
        && let Some(r) = T::__from_older(h.version, data)
    {
        return r.map_err(|e| match e {
            ChainError::Decode(reason) => corrupt::<T>(key, reason),
            ChainError::Convert { from, reason } => Error::Migration {
                tree: T::TREE.to_owned(),
                key,
                from,
                to: T::VERSION,
                reason,
            },
        });
    }
    let schema = schema(h.version)?;
    let value = dynamic::decode(&schema, data).map_err(|e| corrupt::<T>(key, e))?;
    dynamic::from_value::<T>(value).map_err(|e| Error::Incompatible {
        tree: T::TREE.to_owned(),
        key,
        stored: h.version,
        expected: T::VERSION,
        path: e.path,
        reason: e.message,
    })
}

/// `record` as a stored value in `T`'s current layout, keeping `h`'s flags, state and holder.
pub(crate) fn reencode<T: Record>(record: &T, h: &Header) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(HEADER_LEN + 128);
    buf.extend_from_slice(
        &Header {
            version: T::VERSION,
            ..*h
        }
        .to_bytes(),
    );
    record.__encode(buf).map_err(|e| Error::Encode {
        tree: T::TREE.to_owned(),
        reason: e.to_string(),
    })
}

/// Opens the schema table of a read transaction.
pub(crate) fn read_schemas(
    txn: &redb::ReadTransaction,
) -> Result<redb::ReadOnlyTable<(&'static str, u32), &'static str>> {
    Ok(txn.open_table(SCHEMAS)?)
}
