//! Integration tests of the core API through the public interface.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::{Db, Error, Event, EventKind, Key};
use std::collections::{BTreeMap, HashMap};

#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub struct Dimensions {
    pub w: f32,
    pub h: f32,
}

#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    Piece,
    Meter(f64),
    Box { count: u32 },
}

#[rekord::record(tree = "suppliers", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Supplier {
    pub name: String,
}

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
    pub tags: Vec<String>,
    pub dims: Option<Dimensions>,
    pub unit: Unit,
    pub supplier: Option<Key<Supplier>>,
    pub attrs: BTreeMap<String, i64>,
    pub extra: HashMap<u8, (bool, char)>,
    pub code: [u8; 4],
    pub id: uuid::Uuid,
    pub note: Box<String>,
}

fn part(name: &str, qty: u32) -> Part {
    Part {
        name: name.into(),
        qty,
        tags: vec!["a".into(), "b".into()],
        dims: Some(Dimensions { w: 1.5, h: 2.0 }),
        unit: Unit::Box { count: 3 },
        supplier: None,
        attrs: BTreeMap::from([("x".into(), -4)]),
        extra: HashMap::from([(1, (true, 'z'))]),
        code: [1, 2, 3, 4],
        id: uuid::Uuid::from_u128(42),
        note: Box::new("n".into()),
    }
}

#[test]
fn create_read_update_release_revise() -> rekord::Result<()> {
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let suppliers = db.tree::<Supplier>()?;
    let s = suppliers.create(&Supplier {
        name: "acme".into(),
    })?;
    let mut p = part("bolt", 3);
    p.supplier = Some(s);
    let k = parts.create(&p)?;
    assert_eq!(k.rev(), 0);
    assert_eq!(parts.get(k)?, p);
    assert_eq!(parts.with(k, |a| a.name.as_str().to_owned())?, "bolt");
    assert_eq!(
        parts.with(k, |a| a.supplier.as_ref().map(|s| s.to_key()))?,
        Some(s)
    );
    parts.update(k, |p| p.qty += 1)?;
    assert_eq!(parts.get(k)?.qty, 4);
    parts.release(k)?;
    assert!(matches!(
        parts.update(k, |p| p.qty = 0),
        Err(Error::Released { .. })
    ));
    assert!(matches!(parts.remove(k), Err(Error::Released { .. })));
    assert!(matches!(parts.set_state(k, 0), Ok(())));
    parts.set_state(k, 3)?;
    assert_eq!(parts.meta(k)?.state, 3);
    let k1 = parts.new_revision(k)?;
    assert_eq!(k1, k.with_rev(1));
    assert!(matches!(
        parts.new_revision(k),
        Err(Error::DraftExists { .. })
    ));
    parts.update(k1, |p| p.name = "bolt v2".into())?;
    assert_eq!(parts.get(k)?.name, "bolt");
    assert_eq!(parts.get(k1)?.name, "bolt v2");
    assert_eq!(parts.revisions(k.id())?, vec![k, k1]);
    assert_eq!(parts.latest(k.id())?, Some(k1));
    parts.remove(k1)?;
    assert_eq!(parts.latest(k.id())?, Some(k));
    assert!(!parts.contains(k1)?);
    assert!(matches!(parts.get(k1), Err(Error::NotFound { .. })));
    Ok(())
}

#[test]
fn borrows_are_checked_locally() -> rekord::Result<()> {
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let k = parts.create(&part("nut", 1))?;
    assert_eq!(parts.meta(k)?.holder, db.replica());
    parts.return_borrow(k)?;
    assert!(matches!(
        parts.update(k, |p| p.qty = 2),
        Err(Error::NotBorrowed { holder: 0, .. })
    ));
    assert!(matches!(
        parts.return_borrow(k),
        Err(Error::NotBorrowed { .. })
    ));
    parts.borrow(k)?;
    parts.borrow(k)?; // idempotent
    parts.update(k, |p| p.qty = 2)?;
    assert_eq!(parts.get(k)?.qty, 2);
    Ok(())
}

#[test]
fn events_in_commit_order_and_none_for_aborted_batches() -> rekord::Result<()> {
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let sub = db.subscribe();
    let k = parts.create(&part("a", 1))?;
    {
        let mut b = db.batch()?;
        b.update(k, |p| p.qty = 9)?;
        b.create(&part("never", 0))?;
        b.abort();
    }
    {
        let mut b = db.batch()?;
        b.create(&part("dropped", 0))?;
        // dropped without commit
    }
    parts.release(k)?;
    parts.set_state(k, 7)?;
    let kinds: Vec<(u64, EventKind)> = sub
        .try_iter()
        .map(|e| match e {
            Event::Record(r) => (r.commit, r.kind),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, EventKind::Created),
            (2, EventKind::Released),
            (3, EventKind::StateChanged { old: 0, new: 7 }),
        ]
    );
    assert_eq!(parts.get(k)?.qty, 1);
    assert_eq!(parts.len()?, 1);
    Ok(())
}

#[test]
fn batches_span_trees_atomically() -> rekord::Result<()> {
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let suppliers = db.tree::<Supplier>()?;
    let failed: rekord::Result<()> = db.write(|b| {
        let s = b.create(&Supplier { name: "x".into() })?;
        let mut p = part("p", 1);
        p.supplier = Some(s);
        b.create(&p)?;
        b.update(Key::<Part>::new(999, 0), |p| p.qty = 1)?; // fails: not found
        Ok(())
    });
    assert!(matches!(failed, Err(Error::NotFound { .. })));
    assert_eq!(parts.len()? + suppliers.len()?, 0);
    let (s, p) = db.write(|b| {
        let s = b.create(&Supplier { name: "x".into() })?;
        let p = b.create(&part("p", 1))?;
        Ok((s, p))
    })?;
    assert_eq!(suppliers.get(s)?.name, "x");
    assert_eq!(parts.get(p)?.name, "p");
    Ok(())
}

#[test]
fn nested_batch_is_an_error_not_a_deadlock() -> rekord::Result<()> {
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let k = parts.create(&part("a", 1))?;
    let inner = parts.update(k, |_| parts.create(&part("b", 1)).map(|_| ()))?;
    assert!(matches!(inner, Err(Error::BatchInProgress)));
    Ok(())
}

#[test]
fn iteration_and_ranges_are_zero_copy() -> rekord::Result<()> {
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let keys: Vec<_> = (0..10)
        .map(|i| parts.create(&part(&format!("p{i}"), i)))
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = parts
        .iter()?
        .map(|r| r.map(|r| r.name.to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names.len(), 10);
    assert_eq!(names[0], "p0");
    let mid: Vec<u32> = parts
        .range(keys[2].id()..keys[5].id())?
        .map(|r| r.map(|r| r.qty.to_native()))
        .collect::<Result<_, _>>()?;
    assert_eq!(mid, vec![2, 3, 4]);
    let last = parts.iter()?.next_back().transpose()?.map(|r| r.key());
    assert_eq!(last, Some(keys[9]));
    Ok(())
}

#[test]
fn reopen_keeps_data_and_schema() -> rekord::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.rekord");
    let k;
    {
        let db = Db::open(&path)?;
        k = db.tree::<Part>()?.create(&part("kept", 5))?;
    }
    let db = Db::open(&path)?;
    let parts = db.tree::<Part>()?;
    assert_eq!(parts.get(k)?.name, "kept");
    let k2 = parts.create(&part("next", 1))?;
    assert!(k2.id() > k.id(), "ids are never reused across reopen");
    assert_eq!(db.schemas("parts")?.len(), 1);
    Ok(())
}

mod evo_v1 {
    #[rekord::record(tree = "evo", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Item {
        pub a: u32,
        pub b: String,
    }
}

mod evo_v1_changed {
    // Same tree and version as `evo_v1::Item`, but `a` changed type: must be refused.
    #[rekord::record(tree = "evo", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Item {
        pub a: u64,
        pub b: String,
        pub c: bool,
    }
}

mod evo_v2 {
    #[rekord::record(tree = "evo", version = 2)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Item {
        pub a: u64,
        pub b: String,
    }
}

#[test]
fn changed_schema_with_same_version_is_refused_with_the_change_named() -> rekord::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.rekord");
    {
        let db = Db::open(&path)?;
        db.tree::<evo_v1::Item>()?.create(&evo_v1::Item {
            a: 1,
            b: "x".into(),
        })?;
    }
    let db = Db::open(&path)?;
    let err = db.tree::<evo_v1_changed::Item>().unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::SchemaChanged {
            tree,
            version,
            changes,
        } => {
            assert_eq!(tree, "evo");
            assert_eq!(*version, 1);
            assert!(
                changes
                    .iter()
                    .any(|c| c.contains("`Item.a` changed type from u32 to u64")),
                "{changes:?}"
            );
            assert!(
                changes.iter().any(|c| c.contains("`Item.c` was added")),
                "{changes:?}"
            );
        }
        other => panic!("expected SchemaChanged, got {other:?}"),
    }
    assert!(msg.contains("tree `evo`") && msg.contains("bump"), "{msg}");
    // The refused open changed nothing: the original type still reads its data.
    let items = db.tree::<evo_v1::Item>()?;
    assert_eq!(items.len()?, 1);
    assert_eq!(db.schemas("evo")?.len(), 1);
    Ok(())
}

#[test]
fn reading_another_schema_version_goes_through_evolution_never_garbage() -> rekord::Result<()> {
    // v2 widened `a` (u32 -> u64) without a migration: compatible by projection.
    let db = Db::memory()?;
    let k = db.tree::<evo_v1::Item>()?.create(&evo_v1::Item {
        a: 7,
        b: "seven".into(),
    })?;
    let v2 = db.tree::<evo_v2::Item>()?;
    let k2 = Key::<evo_v2::Item>::new(k.id(), k.rev());
    assert_eq!(
        v2.get(k2)?,
        evo_v2::Item {
            a: 7,
            b: "seven".into()
        }
    );
    assert_eq!(v2.with(k2, |i| i.a.to_native())?, 7);
    let all: Vec<u64> = v2
        .iter()?
        .map(|r| r.map(|r| r.a.to_native()))
        .collect::<Result<_, _>>()?;
    assert_eq!(all, vec![7]);
    // Writing it stores version 2; version-1 code still reads it (7 fits a u32)...
    v2.update(k2, |i| i.a = 8)?;
    assert_eq!(v2.meta(k2)?.version, 2);
    assert_eq!(db.tree::<evo_v1::Item>()?.get(k)?.a, 8);
    // ...but a value that does not fit is a typed error naming the field, never garbage.
    v2.update(k2, |i| i.a = u64::MAX)?;
    match db.tree::<evo_v1::Item>()?.get(k) {
        Err(Error::Incompatible {
            tree,
            stored: 2,
            expected: 1,
            path,
            ..
        }) => {
            assert_eq!(tree, "evo");
            assert!(path.contains('a'), "{path}");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    // Both schema versions are kept.
    let versions: Vec<u32> = db.schemas("evo")?.iter().map(|s| s.version).collect();
    assert_eq!(versions, vec![1, 2]);
    Ok(())
}

#[test]
fn indexer_replays_existing_records_and_follows_changes() -> rekord::Result<()> {
    use std::sync::{Arc, Mutex};
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let a = parts.create(&part("a", 1))?;
    let b = parts.create(&part("b", 2))?;
    let index: Arc<Mutex<BTreeMap<String, Key<Part>>>> = Arc::default();
    let ix = index.clone();
    let status = parts.register_indexer(move |c: &rekord::Change<'_, Part>| {
        let mut m = ix.lock().unwrap();
        if let Some(old) = c.old {
            m.remove(old.name.as_str());
        }
        if let Some(new) = c.new {
            m.insert(new.name.to_string(), c.key);
        }
        if c.kind == EventKind::Removed {
            m.retain(|_, k| *k != c.key);
        }
    })?;
    assert_eq!(index.lock().unwrap().len(), 2, "replayed");
    parts.update(a, |p| p.name = "a2".into())?;
    parts.remove(b)?;
    let c = parts.create(&part("c", 3))?;
    let m = index.lock().unwrap().clone();
    assert_eq!(
        m,
        BTreeMap::from([("a2".to_string(), a), ("c".to_string(), c)])
    );
    assert!(status.is_running());
    Ok(())
}

#[test]
fn a_panicking_indexer_is_disabled_and_harms_nothing_else() -> rekord::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let sub = db.subscribe();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    parts.register_indexer(move |_: &rekord::Change<'_, Part>| {
        s.fetch_add(1, Ordering::SeqCst);
    })?;
    let bad = parts.register_indexer(|c: &rekord::Change<'_, Part>| {
        if c.new.is_some_and(|p| p.qty == 13) {
            panic!("unlucky record");
        }
    })?;
    parts.create(&part("ok", 1))?;
    let k = parts.create(&part("bad", 13))?;
    parts.create(&part("after", 2))?;
    assert_eq!(bad.failure().as_deref(), Some("unlucky record"));
    assert!(!bad.is_running());
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "the other indexer saw every change"
    );
    assert_eq!(sub.try_iter().count(), 3, "subscribers got every event");
    assert_eq!(parts.get(k)?.qty, 13, "the commit stands");
    assert_eq!(parts.len()?, 3);
    // Replay panics are reported as an error and the indexer is not registered.
    let err = parts
        .register_indexer(|_: &rekord::Change<'_, Part>| panic!("boom"))
        .unwrap_err();
    assert!(matches!(err, Error::IndexerPanicked { .. }), "{err:?}");
    parts.create(&part("still fine", 4))?;
    Ok(())
}

#[test]
fn events_can_be_awaited_and_streamed() -> rekord::Result<()> {
    use futures_core::Stream;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let mut sub = db.subscribe();
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        Pin::new(&mut sub).poll_next(&mut cx),
        Poll::Pending
    ));
    let k = parts.create(&part("x", 1))?;
    match Pin::new(&mut sub).poll_next(&mut cx) {
        Poll::Ready(Some(Event::Record(r))) => {
            assert_eq!(r.key_of::<Part>(), Some(k));
            assert_eq!(r.kind, EventKind::Created);
        }
        other => panic!("expected an event, got {other:?}"),
    }
    parts.release(k)?;
    let mut fut = std::pin::pin!(sub.recv());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Some(Event::Record(r))) => assert_eq!(r.kind, EventKind::Released),
        other => panic!("expected an event, got {other:?}"),
    }
    // Another thread's commit wakes a blocking receiver.
    let sub2 = db.subscribe();
    let t = std::thread::spawn(move || sub2.recv_blocking());
    parts.set_state(k, 1)?;
    let got = t.join().unwrap();
    assert!(
        matches!(got, Some(Event::Record(r)) if r.kind == EventKind::StateChanged { old: 0, new: 1 })
    );
    // Closing the database ends the stream.
    let sub3 = db.subscribe();
    drop(parts);
    drop(db);
    assert!(sub3.recv_blocking().is_none());
    Ok(())
}

#[test]
fn keys_and_revisions_listing() -> rekord::Result<()> {
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let a = parts.create(&part("a", 1))?;
    parts.release(a)?;
    let a1 = parts.new_revision(a)?;
    let b = parts.create(&part("b", 1))?;
    assert_eq!(parts.keys()?, vec![a, a1, b]);
    assert_eq!(parts.snapshot()?.keys()?.next_back().transpose()?, Some(b));
    Ok(())
}

#[test]
fn hot_cache_never_serves_stale_data() -> rekord::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let keys: Vec<Key<Part>> = (0..8)
        .map(|i| parts.create(&part("p", i)))
        .collect::<Result<_, _>>()?;
    // Read each key several times so it is admitted to the cache, then change it.
    for _ in 0..3 {
        for &k in &keys {
            parts.with(k, |p| p.qty.to_native())?;
        }
    }
    parts.update(keys[0], |p| p.qty = 100)?;
    assert_eq!(parts.with(keys[0], |p| p.qty.to_native())?, 100);
    parts.release(keys[1])?;
    assert!(parts.meta(keys[1])?.released);
    assert!(matches!(
        parts.update(keys[1], |p| p.qty = 1),
        Err(Error::Released { .. })
    ));
    parts.remove(keys[2])?;
    assert!(matches!(
        parts.with(keys[2], |_| ()),
        Err(Error::NotFound { .. })
    ));

    // Concurrent readers: the values they see for a key never go backwards, and once the
    // writer is done every reader sees the final value.
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let parts = parts.clone();
            let keys = keys.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut last = [0u32; 8];
                while !done.load(Ordering::SeqCst) {
                    for (i, &k) in keys.iter().enumerate().skip(3) {
                        let q = parts.with(k, |p| p.qty.to_native()).unwrap();
                        assert!(q >= last[i], "key {i} went back from {} to {q}", last[i]);
                        last[i] = q;
                    }
                }
                keys.iter()
                    .skip(3)
                    .map(|&k| parts.with(k, |p| p.qty.to_native()).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for round in 1..=300u32 {
        let k = keys[3 + (round as usize % 5)];
        parts.update(k, |p| p.qty = 1000 + round)?;
    }
    let expected: Vec<u32> = keys
        .iter()
        .skip(3)
        .map(|&k| parts.get(k).map(|p| p.qty))
        .collect::<Result<_, _>>()?;
    done.store(true, Ordering::SeqCst);
    for r in readers {
        assert_eq!(r.join().unwrap(), expected);
    }
    Ok(())
}

#[test]
fn slow_subscribers_lose_nothing() -> rekord::Result<()> {
    // The abandoned predecessor dropped events when a channel filled. Here queues are
    // unbounded: a subscriber that reads nothing for 20,000 changes still gets all of them.
    let db = Db::memory()?;
    let sub = db.subscribe();
    db.write(|b| {
        let mut t = b.tree::<Supplier>()?;
        for i in 0..20_000 {
            t.create(&Supplier {
                name: format!("s{i}"),
            })?;
        }
        Ok(())
    })?;
    let suppliers = db.tree::<Supplier>()?;
    let k = suppliers.create(&Supplier {
        name: "last".into(),
    })?;
    let events: Vec<Event> = sub.try_iter().collect();
    assert_eq!(events.len(), 20_001);
    let ids: Vec<u64> = events
        .iter()
        .filter_map(|e| e.as_record())
        .map(|r| r.key.id)
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in commit order");
    assert_eq!(
        events.last().and_then(|e| e.as_record()).map(|r| r.key),
        Some(k.raw())
    );
    Ok(())
}

#[test]
fn records_are_read_in_place_at_any_alignment() {
    // No padding fields, no copies into aligned buffers: rkyv's unaligned format reads a
    // record wherever its bytes are (redb hands out values at addresses = 4 mod 8).
    use rekord::Record;
    let p = part("aligned?", 9);
    let bytes = p.__encode(Vec::new()).unwrap();
    for offset in 0..8 {
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(&bytes);
        let a = Part::__access(&buf[offset..]).unwrap();
        assert_eq!(a.name.as_str(), "aligned?");
        assert_eq!(a.qty.to_native(), 9);
        assert_eq!(a.tags.len(), 2);
    }
}

#[test]
fn for_each_visits_the_same_records_as_iter() -> rekord::Result<()> {
    let db = Db::memory()?;
    let parts = db.tree::<Part>()?;
    let keys: Vec<_> = (0..6)
        .map(|i| parts.create(&part(&format!("p{i}"), i)))
        .collect::<Result<_, _>>()?;
    let mut seen = Vec::new();
    parts.for_each(.., |k, p| seen.push((k, p.qty.to_native())))?;
    let expected: Vec<_> = keys.iter().zip(0..).map(|(k, i)| (*k, i)).collect();
    assert_eq!(seen, expected);
    let mut some = Vec::new();
    parts.for_each(keys[1].id()..=keys[3].id(), |k, _| some.push(k))?;
    assert_eq!(some, keys[1..=3].to_vec());
    Ok(())
}

mod named_a {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Dims {
        pub w: f32,
        pub h: f32,
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Kind {
        Plain,
        Sized(Dims),
    }

    #[rekord::record(tree = "renamed", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Widget {
        pub name: String,
        pub dims: Option<Dims>,
        pub kind: Kind,
    }
}

mod named_b {
    // `named_a` with every type renamed: the same schema.
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Size {
        pub w: f32,
        pub h: f32,
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Sort {
        Plain,
        Sized(Size),
    }

    #[rekord::record(tree = "renamed", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct WidgetV1 {
        pub name: String,
        pub dims: Option<Size>,
        pub kind: Sort,
    }
}

mod named_c {
    // Renamed, and a nested field retyped: a real change.
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Size {
        pub w: f64,
        pub h: f32,
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Sort {
        Plain,
        Sized(Size),
    }

    #[rekord::record(tree = "renamed", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct WidgetV1 {
        pub name: String,
        pub dims: Option<Size>,
        pub kind: Sort,
    }
}

#[test]
fn renaming_record_and_data_types_changes_nothing() -> rekord::Result<()> {
    use named_a::{Dims, Kind, Widget};
    use named_b::{Size, Sort, WidgetV1};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.rekord");
    let k = {
        let db = Db::open(&path)?;
        db.tree::<Widget>()?.create(&Widget {
            name: "w".into(),
            dims: Some(Dims { w: 1.0, h: 2.0 }),
            kind: Kind::Sized(Dims { w: 3.0, h: 4.0 }),
        })?
    };
    let db = Db::open(&path)?;
    let renamed = db.tree::<WidgetV1>()?;
    let k1 = Key::<WidgetV1>::new(k.id(), k.rev());
    assert_eq!(
        renamed.get(k1)?,
        WidgetV1 {
            name: "w".into(),
            dims: Some(Size { w: 1.0, h: 2.0 }),
            kind: Sort::Sized(Size { w: 3.0, h: 4.0 }),
        }
    );
    assert_eq!(renamed.with(k1, |w| w.name.len())?, 1);
    renamed.update(k1, |w| w.kind = Sort::Plain)?;
    // Both names work side by side; the stored schema keeps the first names.
    assert_eq!(db.tree::<Widget>()?.get(k)?.kind, Kind::Plain);
    let schemas = db.schemas("renamed")?;
    assert_eq!(schemas.len(), 1);
    assert_eq!(
        schemas[0].root,
        rekord::schema::Type::Named("Widget".into())
    );
    // A real change under new names is still refused, named in the stored names.
    match db.tree::<named_c::WidgetV1>() {
        Err(Error::SchemaChanged { changes, .. }) => {
            assert_eq!(
                changes,
                vec!["field `Dims.w` changed type from f32 to f64".to_string()]
            );
        }
        other => panic!("expected SchemaChanged, got {other:?}"),
    }
    Ok(())
}

#[test]
fn a_redb_file_of_another_application_is_refused_and_left_untouched() -> rekord::Result<()> {
    use redb::{ReadableDatabase, TableHandle};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    {
        let other = redb::Database::create(&path).unwrap();
        let txn = other.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("app.users"))
            .unwrap()
            .insert("ann", 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Db::open(&path).unwrap_err();
    match &err {
        Error::NotRekord { reason, .. } => assert!(reason.contains("app.users"), "{reason}"),
        other => panic!("expected NotRekord, got {other:?}"),
    }
    assert!(
        err.to_string().starts_with("not a rekord database: "),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is untouched"
    );
    let other = redb::Database::create(&path).unwrap();
    let tables: Vec<String> = other
        .begin_read()
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    assert_eq!(tables, ["app.users"]);
    drop(other);
    // A redb file without any table (just created) is initialised.
    let empty = dir.path().join("empty.redb");
    drop(redb::Database::create(&empty).unwrap());
    let db = Db::open(&empty)?;
    db.tree::<Supplier>()?
        .create(&Supplier { name: "a".into() })?;
    Ok(())
}

#[test]
fn open_errors_are_worded_with_the_storage_error_as_source() -> rekord::Result<()> {
    use std::error::Error as _;
    let dir = tempfile::tempdir().unwrap();
    // Not a redb file at all.
    let noise = dir.path().join("noise.bin");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&noise, &bytes).unwrap();
    let err = Db::open(&noise).unwrap_err();
    assert!(matches!(err, Error::NotRekord { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("not a rekord database: "),
        "{err}"
    );
    assert!(err.source().is_some(), "redb's error is attached");
    assert_eq!(
        std::fs::read(&noise).unwrap(),
        bytes,
        "the file is untouched"
    );
    // A rekord file cut in half.
    let cut = dir.path().join("cut.rekord");
    {
        let db = Db::open(&cut)?;
        let parts = db.tree::<Part>()?;
        for i in 0..200 {
            parts.create(&part(&format!("p{i}"), i))?;
        }
    }
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = Db::open(&cut).unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("the file is truncated or damaged: "),
        "{err}"
    );
    assert!(err.source().is_some(), "redb's error is attached");
    // A file another handle has open.
    let locked = dir.path().join("locked.rekord");
    let _first = Db::open(&locked)?;
    let err = Db::open(&locked).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("the file is locked by another process or handle"),
        "{err}"
    );
    assert!(err.source().is_some(), "redb's error is attached");
    Ok(())
}
