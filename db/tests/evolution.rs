//! Schema evolution inside one program: several versions of a record type in one tree.
//! (Across separately compiled programs: `evolution/tests/cross_version.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::{Db, Error, Event, EventKind, Key};

mod v1 {
    #[rekord::record(tree = "gadgets", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Gadget {
        pub name: String,
        pub price: String,
        pub legacy: u8,
    }
}

mod v2 {
    // Additive over v1 for `color`, but `price` changes type: needs the conversion.
    #[rekord::record(tree = "gadgets", version = 2, migrate_from = super::v1::Gadget)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Gadget {
        pub name: String,
        pub price_cents: u64,
        #[record(default)]
        pub color: Option<String>,
    }

    impl TryFrom<super::v1::Gadget> for Gadget {
        type Error = String;
        fn try_from(v: super::v1::Gadget) -> Result<Self, String> {
            let price_cents = v
                .price
                .parse()
                .map_err(|_| format!("price {:?} is not a number", v.price))?;
            Ok(Gadget {
                name: v.name,
                price_cents,
                color: None,
            })
        }
    }
}

mod v3 {
    // Only additive over v2 (`stock` has a default), but v1 records need v2's conversion of
    // `price`, so v3 links to v2 and the chain reads v1 -> v2 -> v3.
    #[rekord::record(tree = "gadgets", version = 3, migrate_from = super::v2::Gadget)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Gadget {
        pub name: String,
        pub price_cents: u64,
        #[record(default)]
        pub color: Option<String>,
        #[record(default = 1)]
        pub stock: u32,
    }

    impl From<super::v2::Gadget> for Gadget {
        fn from(v: super::v2::Gadget) -> Self {
            Gadget {
                name: v.name,
                price_cents: v.price_cents,
                color: v.color,
                stock: 1,
            }
        }
    }
}

fn old(name: &str, price: &str) -> v1::Gadget {
    v1::Gadget {
        name: name.into(),
        price: price.into(),
        legacy: 7,
    }
}

fn same<A: rekord::Record, B: rekord::Record>(k: Key<A>) -> Key<B> {
    Key::new(k.id(), k.rev())
}

#[test]
fn newer_code_reads_older_records_through_the_chain() -> rekord::Result<()> {
    let db = Db::memory()?;
    let k1 = db.tree::<v1::Gadget>()?.create(&old("lamp", "1250"))?;
    let g3 = db.tree::<v3::Gadget>()?;
    let k = same::<_, v3::Gadget>(k1);
    let want = v3::Gadget {
        name: "lamp".into(),
        price_cents: 1250,
        color: None,
        stock: 1,
    };
    assert_eq!(g3.get(k)?, want);
    // Zero-copy reads get a migrated archived copy, also when cached (read three times).
    for _ in 0..3 {
        assert_eq!(
            g3.with(k, |g| (g.price_cents.to_native(), g.stock.to_native()))?,
            (1250, 1)
        );
    }
    assert_eq!(g3.snapshot()?.get(k)?, want);
    let seen: Vec<u64> = g3
        .iter()?
        .map(|r| r.map(|r| r.price_cents.to_native()))
        .collect::<Result<_, _>>()?;
    assert_eq!(seen, vec![1250]);
    let mut each = Vec::new();
    g3.for_each(.., |_, g| each.push(g.name.to_string()))?;
    assert_eq!(each, vec!["lamp".to_string()]);
    // Still stored as version 1 until written.
    assert_eq!(g3.meta(k)?.version, 1);
    g3.update(k, |g| g.stock = 5)?;
    assert_eq!(g3.meta(k)?.version, 3);
    assert_eq!(g3.get(k)?.stock, 5);
    Ok(())
}

#[test]
fn a_failing_user_migration_is_a_typed_error() -> rekord::Result<()> {
    let db = Db::memory()?;
    let k1 = db.tree::<v1::Gadget>()?.create(&old("bad", "twelve"))?;
    let g3 = db.tree::<v3::Gadget>()?;
    match g3.get(same(k1)) {
        Err(Error::Migration {
            tree,
            from: 1,
            to: 3,
            reason,
            ..
        }) => {
            assert_eq!(tree, "gadgets");
            assert!(reason.contains("\"twelve\" is not a number"), "{reason}");
        }
        other => panic!("expected Migration, got {other:?}"),
    }
    // migrate stops at the failing record with the same error, leaving the rest readable
    // (migrate_skipping goes on: see below).
    assert!(matches!(g3.migrate(|_| {}), Err(Error::Migration { .. })));
    assert!(db.tree::<v1::Gadget>()?.get(k1).is_ok());
    Ok(())
}

#[test]
fn older_code_reads_newer_records_by_projection_but_never_overwrites_them() -> rekord::Result<()> {
    let db = Db::memory()?;
    let g3 = db.tree::<v3::Gadget>()?;
    let k = g3.create(&v3::Gadget {
        name: "desk".into(),
        price_cents: 9900,
        color: Some("oak".into()),
        stock: 2,
    })?;
    // v2 knows name, price_cents and color; `stock` is dropped.
    let g2 = db.tree::<v2::Gadget>()?;
    let k2 = same::<_, v2::Gadget>(k);
    assert_eq!(
        g2.get(k2)?,
        v2::Gadget {
            name: "desk".into(),
            price_cents: 9900,
            color: Some("oak".into())
        }
    );
    assert_eq!(
        g2.with(k2, |g| g.color.as_ref().map(|c| c.to_string()))?,
        Some("oak".to_string())
    );
    // v1 needs `price` and `legacy`, which v3 data does not have: a typed error naming one.
    match db.tree::<v1::Gadget>()?.get(same(k)) {
        Err(Error::Incompatible {
            stored: 3,
            expected: 1,
            path,
            ..
        }) => {
            assert!(path.contains("price") || path.contains("legacy"), "{path}");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    // Writing from older code would drop `stock`: refused; header-only changes are fine.
    for r in [
        g2.update(k2, |g| g.price_cents = 1),
        g2.replace(k2, &g2.get(k2)?),
    ] {
        assert!(
            matches!(
                r,
                Err(Error::NewerVersion {
                    stored: 3,
                    expected: 2,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    g2.release(k2)?;
    g2.set_state(k2, 4)?;
    let back = g3.get(k)?;
    assert_eq!(back.stock, 2, "nothing lost");
    assert_eq!(g3.meta(k)?.state, 4);
    Ok(())
}

#[test]
fn migrate_rewrites_in_batches_with_progress_and_events() -> rekord::Result<()> {
    let db = Db::memory()?;
    let keys: Vec<Key<v1::Gadget>> = db.write(|b| {
        let mut t = b.tree::<v1::Gadget>()?;
        (0..25)
            .map(|i| t.create(&old(&format!("g{i}"), &i.to_string())))
            .collect()
    })?;
    let g1 = db.tree::<v1::Gadget>()?;
    g1.release(keys[0])?; // released revisions migrate too (same value, new layout)
    let g3 = db.tree::<v3::Gadget>()?;
    g3.create(&v3::Gadget {
        name: "new".into(),
        price_cents: 1,
        color: None,
        stock: 0,
    })?;
    let sub = db.subscribe();
    let mut seen = Vec::new();
    let report = g3.migrate_with(10, |p| seen.push((p.done, p.total)))?;
    assert_eq!(seen, vec![(0, 25), (10, 25), (20, 25), (25, 25)]);
    assert_eq!(
        report,
        rekord::MigrateReport {
            migrated: 25,
            current: 1,
            newer: 0
        }
    );
    let events: Vec<(u64, EventKind)> = sub
        .try_iter()
        .filter_map(|e| match e {
            Event::Record(r) => Some((r.commit, r.kind)),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 25);
    assert!(
        events
            .iter()
            .all(|(_, k)| *k == EventKind::Migrated { from: 1, to: 3 })
    );
    let commits: std::collections::BTreeSet<u64> = events.iter().map(|(c, _)| *c).collect();
    assert_eq!(commits.len(), 3, "one commit per batch");
    for k in &keys {
        assert_eq!(g3.meta(same(*k))?.version, 3);
    }
    assert!(g3.meta(same(keys[0]))?.released);
    assert_eq!(g3.get(same(keys[7]))?.price_cents, 7);
    // Nothing left to do the second time.
    assert_eq!(g3.migrate(|_| {})?.migrated, 0);
    // And old code can still read everything by projection? v1 needs `price`: no. v2 can.
    let g2 = db.tree::<v2::Gadget>()?;
    assert_eq!(g2.get(same(keys[3]))?.price_cents, 3);
    Ok(())
}

mod shapes_v1 {
    #[rekord::record(tree = "shapes", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Shape {
        Circle { r: f64 },
        Square(f64),
    }
}

mod shapes_v2 {
    // A new variant: additive, no code needed for reading old records.
    #[rekord::record(tree = "shapes", version = 2)]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Shape {
        Circle { r: f64 },
        Square(f64),
        Triangle { a: f64, b: f64, c: f64 },
    }
}

#[test]
fn enum_variants_evolve_by_name() -> rekord::Result<()> {
    let db = Db::memory()?;
    let old = db.tree::<shapes_v1::Shape>()?;
    let c = old.create(&shapes_v1::Shape::Circle { r: 2.0 })?;
    let s = old.create(&shapes_v1::Shape::Square(3.0))?;
    let new = db.tree::<shapes_v2::Shape>()?;
    assert_eq!(new.get(same(c))?, shapes_v2::Shape::Circle { r: 2.0 });
    assert_eq!(new.get(same(s))?, shapes_v2::Shape::Square(3.0));
    let t = new.create(&shapes_v2::Shape::Triangle {
        a: 3.0,
        b: 4.0,
        c: 5.0,
    })?;
    let sq = new.create(&shapes_v2::Shape::Square(1.5))?;
    // Older code reads newer records whose variant it knows...
    assert_eq!(old.get(same(sq))?, shapes_v1::Shape::Square(1.5));
    // ...and gets a typed error naming the variant it does not know.
    match old.get(same(t)) {
        Err(Error::Incompatible {
            tree,
            stored: 2,
            expected: 1,
            reason,
            ..
        }) => {
            assert_eq!(tree, "shapes");
            assert!(reason.contains("Triangle"), "{reason}");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    Ok(())
}

/// What an indexer of `T` saw: (kind, replay, old, new, old unreadable, new unreadable).
type Seen<V> = Vec<(EventKind, bool, Option<V>, Option<V>, bool, bool)>;

fn watch<T: rekord::Record, V: Send + 'static>(
    db: &Db,
    read: fn(&rekord::Archived<T>) -> V,
) -> rekord::Result<std::sync::Arc<std::sync::Mutex<Seen<V>>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    db.register_indexer::<T, _>(move |c: &rekord::Change<'_, T>| {
        s.lock().unwrap().push((
            c.kind,
            c.replay,
            c.old.map(read),
            c.new.map(read),
            c.old_error.is_some(),
            c.new_error.is_some(),
        ));
    })?;
    Ok(seen)
}

fn cents(g: &rekord::Archived<v3::Gadget>) -> (String, u64) {
    (g.name.to_string(), g.price_cents.to_native())
}

#[test]
fn indexers_of_newer_code_see_older_records_migrated() -> rekord::Result<()> {
    let db = Db::memory()?;
    let g1 = db.tree::<v1::Gadget>()?;
    let a = g1.create(&old("lamp", "1250"))?;
    let b = g1.create(&old("desk", "9900"))?;
    let seen = watch::<v3::Gadget, _>(&db, cents)?;
    let lamp = Some(("lamp".to_string(), 1250));
    let desk = Some(("desk".to_string(), 9900));
    assert_eq!(
        std::mem::take(&mut *seen.lock().unwrap()),
        vec![
            (EventKind::Created, true, None, lamp.clone(), false, false),
            (EventKind::Created, true, None, desk.clone(), false, false),
        ],
        "replay passes v1 records as migrated copies"
    );
    // A v3 update of a v1 record: `old` is the migrated v1 record.
    let g3 = db.tree::<v3::Gadget>()?;
    g3.update(same(a), |g| g.price_cents = 1300)?;
    // A release of a v1 record (header only, still stored as v1): `new` is a migrated copy.
    g1.release(b)?;
    assert_eq!(g3.meta(same(b))?.version, 1);
    // Migration itself: old v1, new v3, both seen as v3.
    g1.create(&old("chair", "500"))?;
    g3.migrate(|_| {})?;
    let chair = Some(("chair".to_string(), 500));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        (
            EventKind::Updated,
            false,
            lamp,
            Some(("lamp".to_string(), 1300)),
            false,
            false
        )
    );
    assert_eq!(
        seen[1],
        (EventKind::Released, false, None, desk, false, false)
    );
    assert_eq!(
        seen[2],
        (EventKind::Created, false, None, chair.clone(), false, false)
    );
    assert_eq!(
        seen[3..],
        [
            (
                EventKind::Migrated { from: 1, to: 3 },
                false,
                Some(("desk".to_string(), 9900)),
                Some(("desk".to_string(), 9900)),
                false,
                false
            ),
            (
                EventKind::Migrated { from: 1, to: 3 },
                false,
                chair.clone(),
                chair,
                false,
                false
            ),
        ]
    );
    Ok(())
}

#[test]
fn indexers_of_older_code_see_newer_records_projected() -> rekord::Result<()> {
    let db = Db::memory()?;
    let g3 = db.tree::<v3::Gadget>()?;
    let k = g3.create(&v3::Gadget {
        name: "desk".into(),
        price_cents: 9900,
        color: Some("oak".into()),
        stock: 2,
    })?;
    let color = |g: &rekord::Archived<v2::Gadget>| g.color.as_ref().map(|c| c.to_string());
    let seen = watch::<v2::Gadget, _>(&db, color)?;
    g3.update(k, |g| g.color = Some("ash".into()))?;
    g3.remove(k)?;
    let oak = Some(Some("oak".to_string()));
    let ash = Some(Some("ash".to_string()));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (EventKind::Created, true, None, oak.clone(), false, false),
            (EventKind::Updated, false, oak, ash.clone(), false, false),
            (EventKind::Removed, false, ash, None, false, false),
        ]
    );
    Ok(())
}

#[test]
fn indexers_are_told_when_a_record_cannot_be_converted() -> rekord::Result<()> {
    let db = Db::memory()?;
    let g1 = db.tree::<v1::Gadget>()?;
    let k = g1.create(&old("bad", "twelve"))?;
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let e = errors.clone();
    db.register_indexer::<v3::Gadget, _>(move |c: &rekord::Change<'_, v3::Gadget>| {
        assert!(c.unreadable());
        let show = |x: Option<&Error>| x.map(|x| matches!(x, Error::Migration { .. }));
        e.lock().unwrap().push((
            c.kind,
            c.old.is_some(),
            c.new.is_some(),
            show(c.old_error),
            show(c.new_error),
            c.meta.map(|m| m.version),
        ));
    })?;
    g1.update(k, |g| g.name = "worse".into())?;
    assert_eq!(
        *errors.lock().unwrap(),
        vec![
            (EventKind::Created, false, false, None, Some(true), Some(1)),
            (
                EventKind::Updated,
                false,
                false,
                Some(true),
                Some(true),
                Some(1)
            ),
        ]
    );
    Ok(())
}

#[test]
fn migrate_skipping_goes_past_records_it_cannot_convert_and_retries_them() -> rekord::Result<()> {
    let db = Db::memory()?;
    let g1 = db.tree::<v1::Gadget>()?;
    let keys: Vec<Key<v1::Gadget>> = ["10", "20", "twelve", "40", "50"]
        .iter()
        .map(|p| g1.create(&old("g", p)))
        .collect::<Result<_, _>>()?;
    let bad = keys[2];
    let g3 = db.tree::<v3::Gadget>()?;
    let mut seen = Vec::new();
    let run = g3.migrate_skipping_with(2, |p| seen.push((p.done, p.total)))?;
    assert_eq!(seen, vec![(0, 5), (2, 5), (4, 5), (5, 5)]);
    assert_eq!(
        run.report,
        rekord::MigrateReport {
            migrated: 4,
            current: 0,
            newer: 0
        }
    );
    assert_eq!(run.skipped.len(), 1);
    let (key, err) = &run.skipped[0];
    assert_eq!(*key, same(bad));
    assert!(
        matches!(err, Error::Migration { from: 1, to: 3, reason, .. } if reason.contains("twelve")),
        "{err:?}"
    );
    // The others are migrated, the skipped one is untouched and still readable as v1.
    for k in keys.iter().filter(|k| **k != bad) {
        assert_eq!(g3.meta(same(*k))?.version, 3);
    }
    assert_eq!(g3.meta(same(bad))?.version, 1);
    assert_eq!(g1.get(bad)?, old("g", "twelve"));
    // Fixed, a second run migrates it.
    g1.update(bad, |g| g.price = "30".into())?;
    let again = g3.migrate_skipping(|_| {})?;
    assert!(again.skipped.is_empty());
    assert_eq!(again.report.migrated, 1);
    assert_eq!(again.report.current, 4);
    assert_eq!(g3.get(same(bad))?.price_cents, 30);
    Ok(())
}
