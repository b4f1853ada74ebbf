//! The server's state of each revision of each record (table `records`).

use super::*;

/// The server's state of one revision of one record (table `records`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    /// `false` once the revision is removed (the row stays, so the revision is never
    /// recreated).
    pub exists: bool,
    /// Whether the revision is released (its data is final; only its state may change).
    pub released: bool,
    /// The released revision's state ([`ChangeKind::SetState`]; 0 until set).
    pub state: u32,
    /// Schema version of `data`.
    pub version: u32,
    /// The record bytes (empty once removed).
    pub data: Vec<u8>,
    /// Sequence number of the last data change (`Put` or `Edit`; 0: none recorded).
    pub seq: u64,
    /// Holder number of the client that made it.
    pub origin: u32,
    /// Sequence number of the last data change by a client other than `origin` (0: none):
    /// `origin` may keep editing on top of it without a conflict.
    pub before: u64,
    /// Hybrid logical clock timestamp of the last data change (0: a `Put`).
    pub hlc: u64,
}

/// Flags byte, state, version.
const RECORD_HEADER: usize = 9;
/// Flag: the state carries the data change tracking (`seq`, `origin`, `before`, `hlc`).
const TRACKED: u8 = 4;

impl RecordState {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + 28 + self.data.len());
        out.push(u8::from(self.exists) | (u8::from(self.released) << 1) | TRACKED);
        out.extend_from_slice(&self.state.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.origin.to_le_bytes());
        out.extend_from_slice(&self.before.to_le_bytes());
        out.extend_from_slice(&self.hlc.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, ServerError> {
        let corrupt = || ServerError::Database("a stored record state is corrupt".into());
        let (&flags, rest) = bytes.split_first().ok_or_else(corrupt)?;
        let (state, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let (version, mut data) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let mut tracked = (0, 0, 0, 0);
        if flags & TRACKED != 0 {
            let (seq, rest) = data.split_first_chunk::<8>().ok_or_else(corrupt)?;
            let (origin, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
            let (before, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
            let (hlc, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
            tracked = (
                u64::from_le_bytes(*seq),
                u32::from_le_bytes(*origin),
                u64::from_le_bytes(*before),
                u64::from_le_bytes(*hlc),
            );
            data = rest;
        }
        Ok(Self {
            exists: flags & 1 != 0,
            released: flags & 2 != 0,
            state: u32::from_le_bytes(*state),
            version: u32::from_le_bytes(*version),
            data: data.to_vec(),
            seq: tracked.0,
            origin: tracked.1,
            before: tracked.2,
            hlc: tracked.3,
        })
    }

    /// Records a data change by `origin` under sequence number `seq`.
    pub(super) fn changed(&mut self, origin: u32, seq: u64, hlc: u64) {
        if self.origin != origin {
            self.before = self.seq;
            self.origin = origin;
        }
        self.seq = seq;
        self.hlc = hlc;
    }

    /// Whether an edit by `origin` based on sequence number `base` sees every change of
    /// other clients (no conflict).
    pub(super) fn edit_fits(&self, origin: u32, base: u64) -> bool {
        self.seq <= base || (self.origin == origin && self.before <= base)
    }
}
impl Store {
    /// The server's state of revision `rev` of record `id` of `tree`.
    pub fn record(
        &self,
        tree: &str,
        id: u64,
        rev: u32,
    ) -> Result<Option<RecordState>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        table
            .get((tree, id, rev))?
            .map(|g| RecordState::decode(g.value()))
            .transpose()
    }
}
