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
