//! Entry points of the fuzz targets (crate `rekord-fuzz`) for decoders of rows this crate
//! keeps private. Not a public API: built only with the `fuzz` feature. Each function
//! panics when a property does not hold (the fuzzer's signal), never on input alone.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use crate::storage::outbox::{self, PendingRow};

/// An outbox row read back from disk: any bytes decode or are an error; what decodes
/// encodes to bytes that decode to the same entry.
pub fn outbox_row(bytes: &[u8]) {
    if let Ok((at, entry)) = outbox::decode(bytes) {
        let again = outbox::encode(&entry, at).expect("a decoded entry encodes");
        let (at2, entry2) = outbox::decode(&again).expect("an encoded entry decodes");
        assert_eq!((at, &entry), (at2, &entry2));
    }
}

/// A `rekord.pending` row read back from disk: any bytes read as a row (a damaged one as
/// no pending edits), whose stored form reads back as the same row.
pub fn pending_row(bytes: &[u8]) {
    let row = PendingRow::decode(bytes);
    assert_eq!(PendingRow::decode(&row.encode()), row);
    let done = PendingRow::done_at(bytes, u64::MAX);
    assert_eq!(done, row.count == 0, "{row:?}");
}

/// Seeds of the `outbox_row` target: entries of every kind as stored.
pub fn outbox_seeds() -> Vec<Vec<u8>> {
    use crate::proto::{Change, ChangeKind};
    let change = |kind| Change {
        tree: "parts".into(),
        id: 1 << 32,
        rev: 0,
        kind,
    };
    let entries = [
        outbox::Entry::Changes(vec![
            change(ChangeKind::Put {
                version: 1,
                data: vec![1, 2, 3, 4],
            }),
            change(ChangeKind::Release),
            change(ChangeKind::SetState(2)),
        ]),
        outbox::Entry::Changes(vec![change(ChangeKind::Edit {
            base: 17,
            hlc: 5 << 16,
            version: 2,
            data: vec![9; 40],
        })]),
        outbox::Entry::Changes(vec![change(ChangeKind::Remove)]),
        outbox::Entry::Return {
            tree: "parts".into(),
            id: 7,
        },
    ];
    entries
        .iter()
        .map(|e| outbox::encode(e, 1_700_000_000_000).expect("encodes"))
        .collect()
}

/// Seeds of the `pending_row` target: rows as stored.
pub fn pending_seeds() -> Vec<Vec<u8>> {
    vec![
        PendingRow::default().encode(),
        PendingRow {
            count: 2,
            base: 17,
            hlc: 5 << 16,
            floor: 20,
            strategy: "fields".into(),
            base_value: vec![1; 24],
        }
        .encode(),
    ]
}
