//! The storage layout on redb.
//!
//! One redb database holds:
//! - `rekord.meta` (`&str -> &[u8]`): format version, id allocator, commit counter;
//! - `rekord.id_ranges` (`start -> end`, exclusive): the id ranges this replica owns;
//! - `rekord.schemas` (`(tree, version) -> RON`): every schema version ever written;
//! - `t.<tree>` (`id << 32 | rev -> value`, a `u128`): the records of one tree;
//! - in a synced database (`Db::open_synced`) also `rekord.outbox` (`entry -> rkyv bytes`):
//!   local writes not yet accepted by the server, written in the same transaction as the
//!   write; `rekord.outbox_rejected`: entries the server refused for good; and
//!   `rekord.pending`: records of optimistic trees with edits in the outbox;
//!   `rekord.journal`: which records recent server changes touched (for reconciling with a
//!   server restored from a backup). `rekord.meta`
//!   then holds `mode` (`client`), `sync.client` (16-byte identity), `sync.replica` (holder
//!   number), `sync.pin` (server UUID + certificate fingerprint) and `sync.cursor` (last
//!   applied server sequence number, written with the data it covers) and `sync.hlc` (the
//!   hybrid logical clock).
//!
//! A value is a 16-byte header followed by the record's rkyv bytes (unaligned, little-endian,
//! 32-bit offsets: the same on every target, readable in place from any address):
//!
//! | bytes  | field                                              |
//! |--------|----------------------------------------------------|
//! | 0      | value format (1)                                   |
//! | 1      | flags (bit 0: released)                            |
//! | 2..4   | reserved, 0                                        |
//! | 4..8   | schema version of the record bytes (u32 LE)        |
//! | 8..12  | state (u32 LE), the application's lifecycle number |
//! | 12..16 | borrow holder (u32 LE; 0: nobody)                  |
//!
//! The borrow of a record id is the holder field of its latest revision.

use redb::TableDefinition;

pub(crate) mod blocks;
pub(crate) mod outbox;
pub use blocks::{BLOCK_SIZE, LoadError};
#[cfg(target_arch = "wasm32")]
pub mod browser;
#[cfg(target_arch = "wasm32")]
pub(crate) mod tabs;

/// File format version written to `rekord.meta`.
pub const FORMAT: u32 = 1;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("rekord.meta");
pub(crate) const RANGES: TableDefinition<u64, u64> = TableDefinition::new("rekord.id_ranges");
pub(crate) const SCHEMAS: TableDefinition<(&str, u32), &str> =
    TableDefinition::new("rekord.schemas");

pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("rekord.outbox");
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const REJECTED: TableDefinition<u64, &[u8]> =
    TableDefinition::new("rekord.outbox_rejected");

/// `(tree, id) -> count, base, hlc` (3 x u64 LE) of records with optimistic edits in the
/// outbox: how many, the server sequence number they are based on, and the clock of the
/// last one (synced databases).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const PENDING: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("rekord.pending");

/// `(seq, tree, id) -> at << 1 | own` (synced databases): the records each server change
/// after some point touched, as this replica learned of them (`own`: a change of this
/// replica; `at`: milliseconds since the Unix epoch when it was noted). When the server is
/// restored from a backup, the rows after the last sequence number both histories share
/// name exactly the records to reconcile. Rows older than
/// `SyncConfig::journal_retention` are pruned.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const JOURNAL: TableDefinition<(u64, &str, u64), u64> =
    TableDefinition::new("rekord.journal");

/// `(seq, tree, id) -> (digest, origin)` (synced databases), beside [`JOURNAL`]: the state
/// each change of another replica (`origin`, its holder number) left its record in here
/// ([`record_digest`]). After a restore, a
/// record held here that the server shows changed since the shared point by another replica
/// is told apart by it: a state seen here before (a stale holder's resend of what this
/// replica built on) is older than this replica's own version; one never seen (or seen made
/// by another replica than the one the server names) was made in the restored history
/// (another replica borrowed the record since) and stands. Pruned with the journal;
/// `sync.journal_states_from` says from which sequence number it is complete.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const JOURNAL_STATES: TableDefinition<(u64, &str, u64), (u64, u32)> =
    TableDefinition::new("rekord.journal_states");

pub(crate) use crate::sync::local::record_digest;

/// The cursor as `txn` sees it (0 before the first applied change).
pub(crate) fn cursor_in(txn: &redb::WriteTransaction) -> crate::Result<u64> {
    use redb::ReadableTable as _;
    Ok(txn
        .open_table(META)?
        .get(crate::sync::CURSOR)?
        .and_then(|v| crate::db::read_u64(v.value()))
        .unwrap_or(0))
}

/// `(tree, id) -> milliseconds since the Unix epoch` (synced databases): records this
/// replica held when the server was restored from a backup whose borrow the restored
/// server gives to another replica (which returned it after the backup, and will return
/// it again when it reconciles). Their local state is sent again once the borrow is back.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const RECLAIM: TableDefinition<(&str, u64), u64> =
    TableDefinition::new("rekord.reclaim");

/// `(tree, id) -> ()` (synced databases): records this replica sent again after a restore,
/// fetched once more when it has caught up with the restored server (whose catch-up
/// replays older changes of others over them).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const RECHECK: TableDefinition<(&str, u64), ()> = TableDefinition::new("rekord.recheck");

/// Outbox entries (by their number) the server refused because a record they change waits
/// in `rekord.reclaim`: sent again (under new numbers) once every such record is taken
/// back, set aside as rejected if another replica takes one of them first.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const DEFERRED: TableDefinition<u64, &[u8]> = TableDefinition::new("rekord.deferred");

/// A table of records.
pub(crate) type DataTable<'a> = TableDefinition<'a, u128, &'static [u8]>;

/// The stored form of a key: `id << 32 | rev` (orders by id, then revision; one integer
/// comparison per B-tree step).
pub(crate) const fn pack(key: crate::RawKey) -> u128 {
    ((key.id as u128) << 32) | key.rev as u128
}

/// The inverse of [`pack`].
pub(crate) const fn unpack(k: u128) -> crate::RawKey {
    // Truncations are the point: the high 64 bits of the packed value are the id (k < 2^96),
    // the low 32 bits the revision.
    crate::RawKey::new((k >> 32) as u64, k as u32)
}

/// All packed keys of record `id`.
pub(crate) fn id_range(id: u64) -> std::ops::RangeInclusive<u128> {
    pack(crate::RawKey::new(id, 0))..=pack(crate::RawKey::new(id, u32::MAX))
}

/// The redb table name of a tree.
pub(crate) fn table_name(tree: &str) -> String {
    format!("t.{tree}")
}

/// Length of the value header.
pub const HEADER_LEN: usize = 16;
const VALUE_FORMAT: u8 = 1;
const FLAG_RELEASED: u8 = 1;

/// The header in front of every stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Whether the revision is released (frozen).
    pub released: bool,
    /// Schema version of the record bytes.
    pub version: u32,
    /// Application-defined state.
    pub state: u32,
    /// Borrow holder (0: nobody).
    pub holder: u32,
}

impl Header {
    /// Splits a stored value into header and record bytes; `None` if it is not a valid value.
    pub fn parse(value: &[u8]) -> Option<(Header, &[u8])> {
        let (h, rest) = value.split_first_chunk::<HEADER_LEN>()?;
        if h[0] != VALUE_FORMAT || h[1] & !FLAG_RELEASED != 0 || h[2] != 0 || h[3] != 0 {
            return None;
        }
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Some((
            Header {
                released: h[1] & FLAG_RELEASED != 0,
                version: word(4),
                state: word(8),
                holder: word(12),
            },
            rest,
        ))
    }

    /// The 16 header bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = VALUE_FORMAT;
        h[1] = if self.released { FLAG_RELEASED } else { 0 };
        h[4..8].copy_from_slice(&self.version.to_le_bytes());
        h[8..12].copy_from_slice(&self.state.to_le_bytes());
        h[12..16].copy_from_slice(&self.holder.to_le_bytes());
        h
    }

    /// A stored value: this header, then the record bytes `data`.
    pub(crate) fn value(self, data: &[u8]) -> Vec<u8> {
        let mut value = Vec::with_capacity(HEADER_LEN + data.len());
        value.extend_from_slice(&self.to_bytes());
        value.extend_from_slice(data);
        value
    }

    /// The value of a draft nobody holds, of schema `version` (a version as the server
    /// has it, kept as the common ancestor of a merge).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn draft_value(version: u32, data: &[u8]) -> Vec<u8> {
        Header {
            released: false,
            version,
            state: 0,
            holder: 0,
        }
        .value(data)
    }

    /// Overwrites the header at the start of `value` (which must be a parsed value).
    pub(crate) fn write_into(self, value: &mut [u8]) {
        if let Some(h) = value.first_chunk_mut::<HEADER_LEN>() {
            *h = self.to_bytes();
        }
    }
}

/// Opens or creates the redb database behind a [`Db`](crate::Db).
pub(crate) fn open_memory() -> Result<redb::Database, redb::DatabaseError> {
    redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
}

/// Opens the database file at `path`, creating it first if it does not exist.
///
/// A new file is made under a temporary sibling name, closed, then renamed into place (and
/// the directory synced), so a crash during creation leaves at worst a stray
/// `*.creating-<pid>` file, never a half-initialized file at `path` that redb refuses.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn open_file(path: &std::path::Path) -> Result<redb::Database, redb::DatabaseError> {
    let io = |e: std::io::Error| redb::DatabaseError::Storage(redb::StorageError::Io(e));
    if !path.exists() {
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".creating-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        // A leftover from an earlier crashed attempt of this very process id is garbage.
        let _ = std::fs::remove_file(&tmp);
        // The replica's identity and data are its owner's alone (0600 on Unix, whatever
        // the umask); created exclusively, so nothing planted under the name is written.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        drop(options.open(&tmp).map_err(io)?);
        drop(redb::Database::create(&tmp)?);
        std::fs::rename(&tmp, path).map_err(io)?;
        #[cfg(unix)]
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
    }
    redb::Database::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            released: true,
            version: 7,
            state: 3,
            holder: 9,
        };
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(b"data");
        let (p, rest) = Header::parse(&v).expect("valid header");
        assert_eq!(p, h);
        assert_eq!(rest, b"data");
    }

    #[test]
    fn header_rejects_garbage() {
        assert!(Header::parse(&[1, 0, 0]).is_none());
        let mut v = Header {
            released: false,
            version: 1,
            state: 0,
            holder: 0,
        }
        .to_bytes();
        v[0] = 2;
        assert!(Header::parse(&v).is_none());
        v[0] = 1;
        v[1] = 4;
        assert!(Header::parse(&v).is_none());
    }
}
