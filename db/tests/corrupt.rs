//! Stored bytes are input too: whatever a damaged or hostile file holds in a record value,
//! reads return a typed error (never a panic, never garbage), and the rest of the database keeps
//! working. Random bytes are written straight into the tree's redb table, then read through
//! every read path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use rekord::{Db, Error, Key};

#[rekord::record(tree = "victims", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Victim {
    pub name: String,
    pub list: Vec<u64>,
    pub maybe: Option<String>,
}

const TABLE: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("t.victims");

fn header(version: u32) -> Vec<u8> {
    let mut h = vec![1, 0, 0, 0];
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h
}

fn check_reads(db: &Db, bad: Key<Victim>, good: Key<Victim>) {
    let t = db.tree::<Victim>().unwrap();
    for r in [
        t.get(bad).map(|_| ()),
        t.with(bad, |v| {
            // Touch the data: if validation let garbage through, this is where it would show.
            let _ = v.name.len() + v.list.len();
        }),
        t.update(bad, |v| v.name.push('x')),
        t.snapshot().and_then(|s| s.get(bad)).map(|_| ()),
    ] {
        match r {
            Ok(()) => {}
            Err(
                Error::Corrupt { .. }
                | Error::UnknownSchema { .. }
                | Error::Incompatible { .. }
                | Error::NewerVersion { .. }
                | Error::NotFound { .. },
            ) => {}
            Err(e) => panic!("unexpected error kind: {e:?}"),
        }
    }
    for r in t.iter().unwrap() {
        match r {
            Ok(v) => {
                let _ = v.name.len();
            }
            Err(
                Error::Corrupt { .. } | Error::UnknownSchema { .. } | Error::Incompatible { .. },
            ) => {}
            Err(e) => panic!("unexpected error kind in iteration: {e:?}"),
        }
    }
    // The good record is unaffected.
    assert_eq!(t.get(good).unwrap().name, "good");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_values_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), with_header in any::<bool>(), version in 0u32..3) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.rekord");
        let good = {
            let db = Db::open(&path).unwrap();
            db.tree::<Victim>().unwrap().create(&Victim { name: "good".into(), list: vec![1, 2], maybe: None }).unwrap()
        };
        let bad = Key::<Victim>::new(good.id() + 1, 0);
        {
            let raw = redb::Database::open(&path).unwrap();
            let txn = raw.begin_write().unwrap();
            {
                let mut t = txn.open_table(TABLE).unwrap();
                let mut value = if with_header { header(version) } else { Vec::new() };
                value.extend_from_slice(&body);
                t.insert((u128::from(bad.id()) << 32) | u128::from(bad.rev()), value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let db = Db::open(&path).unwrap();
        check_reads(&db, bad, good);
    }
}

#[test]
fn truncated_and_bit_flipped_records_are_corrupt_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.rekord");
    let (good, victim) = {
        let db = Db::open(&path).unwrap();
        let t = db.tree::<Victim>().unwrap();
        let good = t
            .create(&Victim {
                name: "good".into(),
                list: vec![],
                maybe: None,
            })
            .unwrap();
        let victim = t
            .create(&Victim {
                name: "a fairly long name".into(),
                list: (0..20).collect(),
                maybe: Some("x".into()),
            })
            .unwrap();
        (good, victim)
    };
    let packed = (u128::from(victim.id()) << 32) | u128::from(victim.rev());
    let original: Vec<u8> = {
        let raw = redb::Database::open(&path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&raw).unwrap();
        let t = txn.open_table(TABLE).unwrap();
        t.get(packed).unwrap().unwrap().value().to_vec()
    };
    let mut corrupt_seen = 0;
    let variants: Vec<Vec<u8>> = (0..original.len())
        .step_by(3)
        .map(|i| original[..i].to_vec())
        .chain((16..original.len()).map(|i| {
            let mut v = original.clone();
            v[i] ^= 0x80;
            v
        }))
        .collect();
    for v in variants {
        {
            let raw = redb::Database::open(&path).unwrap();
            let txn = raw.begin_write().unwrap();
            txn.open_table(TABLE)
                .unwrap()
                .insert(packed, v.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let db = Db::open(&path).unwrap();
        if matches!(
            db.tree::<Victim>().unwrap().get(victim),
            Err(Error::Corrupt { .. })
        ) {
            corrupt_seen += 1;
        }
        check_reads(&db, victim, good);
    }
    assert!(
        corrupt_seen > 10,
        "validation caught only {corrupt_seen} damaged values"
    );
}
