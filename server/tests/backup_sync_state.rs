//! A backup carries the whole sync state: schemas, the change log and its head, records,
//! ranges, borrows and the idempotency table (a retried operation after a restore is still
//! recognised).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::Record;
use rekord::proto::handshake::{Grant, Trees};
use rekord::proto::{Change, ChangeKind};
use rekord_server::Applied;
use rekord_server::Store;

#[rekord::record(tree = "items", version = 1)]
pub struct Item {
    pub name: String,
}

fn put(id: u64) -> Change {
    Change {
        tree: "items".into(),
        id,
        rev: 0,
        kind: ChangeKind::Put {
            version: 1,
            data: Item {
                name: format!("item {id}"),
            }
            .__encode(Vec::new())
            .unwrap(),
        },
    }
}

#[test]
fn a_restored_backup_resumes_sync_where_it_was() {
    let live = tempfile::tempdir().unwrap();
    let restored = tempfile::tempdir().unwrap();
    let grant = Grant {
        read: Trees::All,
        write: Trees::All,
    };
    let (holder, start, seq) = {
        let store = Store::open(live.path()).unwrap();
        let holder = store.holder([1; 16]).unwrap();
        let schema = rekord::Schema::of::<Item>().to_ron().unwrap();
        store.put_schema("items", 1, &schema).unwrap().unwrap();
        let (start, _) = store.grant_range(holder, 100).unwrap();
        let seq = match store
            .apply_changes(holder, &grant, [7; 16], vec![put(start), put(start + 1)])
            .unwrap()
        {
            Applied::Accepted { seq, .. } => seq,
            other => panic!("not accepted: {other:?}"),
        };
        store.backup(&restored.path().join("server.redb")).unwrap();
        (holder, start, seq)
    };
    let store = Store::open(restored.path()).unwrap();
    assert_eq!(store.head().unwrap(), seq);
    assert_eq!(store.log_after(0, 1000, 1 << 20).unwrap().len(), 2);
    assert!(store.record("items", start, 0).unwrap().is_some());
    assert!(store.owns(holder, start + 50).unwrap());
    assert_eq!(store.borrower("items", start).unwrap(), Some(holder));
    // The same operation retried against the restored server is recognised, not re-applied.
    match store
        .apply_changes(holder, &grant, [7; 16], vec![put(start), put(start + 1)])
        .unwrap()
    {
        Applied::Retried { seq: again, .. } => assert_eq!(again, seq),
        other => panic!("a retried op must not apply again: {other:?}"),
    }
    assert_eq!(store.head().unwrap(), seq);
    // The stored schema came along: new changes are still validated and accepted.
    match store
        .apply_changes(holder, &grant, [8; 16], vec![put(start + 2)])
        .unwrap()
    {
        Applied::Accepted { seq: next, .. } => assert_eq!(next, seq + 1),
        other => panic!("not accepted: {other:?}"),
    }
}
