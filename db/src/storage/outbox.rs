//! The persistent outbox of a synced database: local writes waiting for the server.
//!
//! Each committed batch that changed anything adds one entry (its changes, sent as one
//! all-or-nothing request), then one entry per returned borrow, in the same local
//! transaction as the changes themselves. Entries are numbered in commit order and numbers
//! are never reused; the server remembers the last entry number it processed for each
//! client, so a retry is idempotent. An entry leaves the outbox once the server processed
//! it (accepted, or refused and kept aside).

use crate::proto::{Change, ChangeKind};
use crate::storage::{META, OUTBOX};

/// `rekord.meta` key of the next outbox entry number (u64 LE).
pub(crate) const NEXT_ENTRY: &str = "sync.next_entry";
use crate::{Error, Result};
use redb::{ReadableTable, WriteTransaction};

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub(crate) enum Entry {
    /// The changes of one local batch.
    Changes(Vec<Change>),
    /// A returned borrow (sent after the changes before it).
    Return {
        /// Tree.
        tree: String,
        /// Record id.
        id: u64,
    },
}

/// The bytes of an entry made at `at` (milliseconds since the Unix epoch): `at` as 8
/// bytes LE, then the entry's rkyv bytes.
pub(crate) fn encode(entry: &Entry, at: u64) -> Result<Vec<u8>> {
    let out = at.to_le_bytes().to_vec();
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(entry, out).map_err(|e| Error::Encode {
        tree: "rekord.outbox".into(),
        reason: e.to_string(),
    })
}

/// An entry and its time from its bytes (checked: the file may be damaged).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn decode(bytes: &[u8]) -> Result<(u64, Entry)> {
    let corrupt = |e: String| Error::CorruptMeta {
        reason: format!("an outbox entry is unreadable: {e}"),
    };
    let (at, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("too short".into()))?;
    let archived = rkyv::access::<ArchivedEntry, rkyv::rancor::Error>(rest)
        .map_err(|e| corrupt(e.to_string()))?;
    let entry = rkyv::deserialize::<Entry, rkyv::rancor::Error>(archived)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok((u64::from_le_bytes(*at), entry))
}

/// The highest entry number this file has made (0: none).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn last_made(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64> {
    Ok(meta
        .get(NEXT_ENTRY)?
        .and_then(|v| crate::db::read_u64(v.value()))
        .map_or(0, |next| next.saturating_sub(1)))
}

/// Takes every entry out of the outbox, in order (their bytes), to be put back after
/// entries that must go first ([`append`]).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn take_all(txn: &WriteTransaction) -> Result<Vec<Vec<u8>>> {
    let mut table = txn.open_table(OUTBOX)?;
    let mut out = Vec::new();
    while let Some((_, v)) = table.pop_first()? {
        out.push(v.value().to_vec());
    }
    Ok(out)
}

/// Appends entries (their bytes, as [`take_all`] gave them) under new numbers.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn append(txn: &WriteTransaction, entries: &[Vec<u8>]) -> Result<()> {
    let mut meta = txn.open_table(META)?;
    let mut next = meta
        .get(NEXT_ENTRY)?
        .and_then(|v| crate::db::read_u64(v.value()))
        .unwrap_or(1);
    let mut table = txn.open_table(OUTBOX)?;
    for bytes in entries {
        table.insert(next, bytes.as_slice())?;
        next += 1;
    }
    meta.insert(NEXT_ENTRY, next.to_le_bytes().as_slice())?;
    Ok(())
}

/// Whether an entry waiting in the outbox touches record `id` of `tree` (read in the
/// transaction that is about to change the record, so no local write slips in between).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn touches(txn: &WriteTransaction, tree: &str, id: u64) -> Result<bool> {
    let table = txn.open_table(OUTBOX)?;
    for row in table.iter()? {
        let (_, v) = row?;
        if keys(v.value())?.iter().any(|(t, i)| t == tree && *i == id) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The records an entry's changes touch, in order (read in place: the record bytes are
/// not copied).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn keys(bytes: &[u8]) -> Result<Vec<(String, u64)>> {
    let rest = bytes.get(8..).ok_or_else(|| Error::CorruptMeta {
        reason: "an outbox entry is unreadable: too short".into(),
    })?;
    let archived = rkyv::access::<ArchivedEntry, rkyv::rancor::Error>(rest).map_err(|e| {
        Error::CorruptMeta {
            reason: format!("an outbox entry is unreadable: {e}"),
        }
    })?;
    Ok(match archived {
        ArchivedEntry::Changes(changes) => changes
            .iter()
            .map(|c| (c.tree.as_str().to_owned(), c.id.to_native()))
            .collect(),
        ArchivedEntry::Return { tree, id } => vec![(tree.as_str().to_owned(), id.to_native())],
    })
}

/// A `rekord.pending` row: the optimistic edits of one record waiting in the outbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PendingRow {
    /// How many.
    pub(crate) count: u64,
    /// The server sequence number they are based on.
    pub(crate) base: u64,
    /// The clock of the last one.
    pub(crate) hlc: u64,
    /// The server sequence number of the newest version this replica has of the record
    /// that it got other than by applying pushed changes (its own accepted edit, a
    /// merge's base): pushed changes of other replicas up to it are older and skipped. A
    /// row with `count` 0 stays until the cursor reaches `floor`.
    pub(crate) floor: u64,
    /// The name of the tree's merge strategy when the edits were made (see
    /// [`crate::sync::Merge::name`]): a conflict met after a restart, before the record
    /// type was used again, is merged with it.
    pub(crate) strategy: String,
    /// The version they started from, as stored (header and record bytes; empty for a
    /// create): the common ancestor of a three-way merge.
    pub(crate) base_value: Vec<u8>,
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
impl PendingRow {
    /// The stored form: count, base, clock, floor (u64 LE each), the strategy's length
    /// (u32 LE) and name, then the base value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(36 + self.strategy.len() + self.base_value.len());
        b.extend_from_slice(&self.count.to_le_bytes());
        b.extend_from_slice(&self.base.to_le_bytes());
        b.extend_from_slice(&self.hlc.to_le_bytes());
        b.extend_from_slice(&self.floor.to_le_bytes());
        let len = u32::try_from(self.strategy.len()).unwrap_or(0);
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(
            self.strategy
                .as_bytes()
                .get(..len as usize)
                .unwrap_or_default(),
        );
        b.extend_from_slice(&self.base_value);
        b
    }

    /// Whether a pushed change of another replica with sequence number `seq` must not be
    /// applied to the record: edits of this replica are waiting (the server will refuse
    /// them with a conflict, and the merge brings the change in), or it is older than
    /// what this replica has.
    pub(crate) fn holds_back(&self, seq: u64) -> bool {
        self.count > 0 || seq <= self.floor
    }

    /// Whether a stored row can go once the cursor is at `cursor`: no edits waiting, and
    /// no pushed change older than its floor still to come (read without copying it).
    pub(crate) fn done_at(bytes: &[u8], cursor: u64) -> bool {
        let word = |i: usize| {
            bytes
                .get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        word(0) == 0 && word(24) <= cursor
    }

    /// Reads a stored row (a damaged one reads as no pending edits).
    pub(crate) fn decode(bytes: &[u8]) -> Self {
        let word = |i: usize| {
            bytes
                .get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let len = bytes
            .get(32..36)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes) as usize;
        PendingRow {
            count: word(0),
            base: word(8),
            hlc: word(16),
            floor: word(24),
            strategy: String::from_utf8_lossy(bytes.get(36..36 + len).unwrap_or_default())
                .into_owned(),
            base_value: bytes.get(36 + len..).unwrap_or_default().to_vec(),
        }
    }
}

/// Appends the entries of one committed batch inside its transaction; returns the first
/// entry's number, how many, and their bytes.
/// The largest stored outbox entry one request can carry: a frame, less room for the
/// request's own framing.
pub(crate) const MAX_ENTRY: u64 = crate::proto::MAX_FRAME as u64 - (64 << 10);

/// Why `changes` (stored as `stored` bytes) can never be sent, if so.
pub(crate) fn too_large(changes: &[Change], stored: u64) -> Option<crate::Error> {
    for c in changes {
        let size = match &c.kind {
            ChangeKind::Put { data, .. } | ChangeKind::Edit { data, .. } => data.len(),
            _ => 0,
        };
        if size > crate::proto::MAX_RECORD {
            return Some(crate::Error::TooLarge {
                what: format!("record {}@{} of tree `{}`", c.id, c.rev, c.tree),
                size: size as u64,
                limit: crate::proto::MAX_RECORD as u64,
            });
        }
    }
    (stored > MAX_ENTRY).then(|| crate::Error::TooLarge {
        what: format!("a batch of {} changes", changes.len()),
        size: stored,
        limit: MAX_ENTRY,
    })
}

/// Queues `changes` as one entry and each of `returns` as one; the first entry's number,
/// how many, and their bytes.
pub(crate) fn enqueue(
    txn: &WriteTransaction,
    changes: &[Change],
    returns: &[(String, u64)],
) -> Result<(u64, u64, u64)> {
    enqueue_groups(txn, changes, &[], returns, false)
}

/// A batch's commit: [`enqueue`], with each of `relayed` (other tabs' entries a leader
/// sends on) an entry of its own after `changes`, and every entry refused at the door when
/// no request could carry it ([`too_large`]).
pub(crate) fn enqueue_checked(
    txn: &WriteTransaction,
    changes: &[Change],
    relayed: &[Vec<Change>],
    returns: &[(String, u64)],
) -> Result<(u64, u64, u64)> {
    enqueue_groups(txn, changes, relayed, returns, true)
}

fn enqueue_groups(
    txn: &WriteTransaction,
    changes: &[Change],
    relayed: &[Vec<Change>],
    returns: &[(String, u64)],
    check: bool,
) -> Result<(u64, u64, u64)> {
    let at = crate::rt::now_ms();
    let mut bytes = 0u64;
    // Entry numbers are never reused (they are the op ids the server remembers), so the
    // next one is kept in the metadata, not derived from the (emptied) table.
    let mut meta = txn.open_table(META)?;
    let mut next = meta
        .get(NEXT_ENTRY)?
        .and_then(|v| crate::db::read_u64(v.value()))
        .unwrap_or(1);
    let first = next;
    let mut table = txn.open_table(OUTBOX)?;
    let groups = std::iter::once(changes).chain(relayed.iter().map(Vec::as_slice));
    for group in groups.filter(|g| !g.is_empty()) {
        let value = encode(&Entry::Changes(group.to_vec()), at)?;
        // Refused at the door: an entry no request could carry would block the outbox.
        if check && let Some(e) = too_large(group, value.len() as u64) {
            return Err(e);
        }
        bytes += value.len() as u64;
        table.insert(next, value.as_slice())?;
        next += 1;
    }
    for (tree, id) in returns {
        let entry = Entry::Return {
            tree: tree.clone(),
            id: *id,
        };
        let value = encode(&entry, at)?;
        bytes += value.len() as u64;
        table.insert(next, value.as_slice())?;
        next += 1;
    }
    meta.insert(NEXT_ENTRY, next.to_le_bytes().as_slice())?;
    Ok((first, next - first, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_rows_round_trip_and_damage_reads_as_nothing_waiting() {
        let row = PendingRow {
            count: 3,
            base: 17,
            hlc: 5 << 16,
            floor: 20,
            strategy: "larger-wins(points)".into(),
            base_value: vec![1, 2, 3],
        };
        let bytes = row.encode();
        assert_eq!(PendingRow::decode(&bytes), row);
        assert!(!PendingRow::done_at(&bytes, 100), "edits are waiting");
        let done = PendingRow { count: 0, ..row }.encode();
        assert!(!PendingRow::done_at(&done, 19) && PendingRow::done_at(&done, 20));
        assert_eq!(PendingRow::decode(&[1, 2]), PendingRow::default());
        let mut long = bytes.clone();
        long[32] = 0xff; // a strategy length past the end
        assert_eq!(PendingRow::decode(&long).strategy, "");
    }

    #[test]
    fn entries_round_trip_and_damage_is_an_error() {
        let e = Entry::Changes(vec![Change {
            tree: "t".into(),
            id: 7,
            rev: 1,
            kind: ChangeKind::Put {
                version: 2,
                data: vec![1, 2, 3],
            },
        }]);
        let bytes = encode(&e, 77).unwrap();
        assert_eq!(decode(&bytes).unwrap(), (77, e));
        let r = Entry::Return {
            tree: "t".into(),
            id: 9,
        };
        assert_eq!(decode(&encode(&r, 5).unwrap()).unwrap(), (5, r));
        assert!(decode(&bytes[..4]).is_err());
        assert!(decode(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn entries_no_request_can_carry_are_recognised() {
        let put = |len: usize| Change {
            tree: "t".into(),
            id: 7,
            rev: 0,
            kind: ChangeKind::Put {
                version: 1,
                data: vec![0; len],
            },
        };
        let max = crate::proto::MAX_RECORD;
        assert!(too_large(&[put(max)], max as u64 + 100).is_none());
        assert!(matches!(
            too_large(&[put(max + 1)], max as u64 + 100),
            Some(Error::TooLarge { size, .. }) if size == max as u64 + 1
        ));
        assert!(too_large(&[put(10), put(10)], MAX_ENTRY).is_none());
        assert!(matches!(
            too_large(&[put(10), put(10)], MAX_ENTRY + 1),
            Some(Error::TooLarge { .. })
        ));
    }
}
