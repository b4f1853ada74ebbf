//! The untyped door into a database (`Db::trees`, `Db::dyn_tree`): trees by name, records as
//! dynamic values and RON, under the same rules and errors as typed code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::schema::dynamic::Value;
use rekord::{Db, Error, EventKind, Key};

mod v1 {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Unit {
        Piece,
        Box { count: u32 },
    }

    #[rekord::record(tree = "parts", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Part {
        pub name: String,
        pub qty: u32,
        pub unit: Unit,
        pub tags: Vec<String>,
    }
}

mod v2 {
    #[rekord::record(tree = "parts", version = 2, migrate_from = super::v1::Part)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Part {
        pub name: String,
        pub qty: u64,
        #[record(default)]
        pub note: Option<String>,
    }

    impl From<super::v1::Part> for Part {
        fn from(p: super::v1::Part) -> Self {
            Part {
                name: p.name,
                qty: u64::from(p.qty),
                note: None,
            }
        }
    }
}

#[rekord::record(tree = "other")]
#[derive(Debug, Clone, PartialEq)]
pub struct Other {
    pub n: i8,
}

use v1::{Part, Unit};

fn part(name: &str, qty: u32) -> Part {
    Part {
        name: name.into(),
        qty,
        unit: Unit::Box { count: 3 },
        tags: vec!["a".into()],
    }
}

fn field<'v>(v: &'v Value, name: &str) -> &'v Value {
    match v {
        Value::Struct(fs) => &fs.iter().find(|(n, _)| n == name).unwrap().1,
        other => panic!("not a struct: {other:?}"),
    }
}

/// Typed records read untyped: trees with counts and versions, get, iteration, ranges,
/// revisions, RON; an unknown tree is a typed error.
#[test]
fn typed_records_read_untyped() {
    let db = Db::memory().unwrap();
    let parts = db.tree::<Part>().unwrap();
    let keys: Vec<Key<Part>> = (0..5)
        .map(|i| parts.create(&part(&format!("p{i}"), i)).unwrap())
        .collect();
    parts.release(keys[1]).unwrap();
    let k1b = parts.new_revision(keys[1]).unwrap();
    db.tree::<Other>()
        .unwrap()
        .create(&Other { n: -3 })
        .unwrap();

    let trees = db.trees().unwrap();
    let names: Vec<(&str, u64, &[u32])> = trees
        .iter()
        .map(|t| (t.name.as_str(), t.records, t.versions.as_slice()))
        .collect();
    assert_eq!(names, [("other", 1, &[1][..]), ("parts", 6, &[1][..])]);

    let t = db.dyn_tree("parts").unwrap();
    assert_eq!(t.len().unwrap(), 6);
    assert_eq!(t.schema().version, 1);
    let r = t.get(keys[2].raw()).unwrap();
    assert_eq!(field(&r.value, "name"), &Value::String("p2".into()));
    assert_eq!(field(&r.value, "qty"), &Value::U32(2));
    assert_eq!(r.key.to_string(), format!("parts/{}@0", keys[2].id()));
    assert!(r.meta.holder != 0 && !r.meta.released && r.meta.version == 1);
    assert!(r.to_ron().contains("unit: Box(count: 3)"), "{}", r.to_ron());

    let all: Vec<_> = t.iter().unwrap().map(|r| r.unwrap().key.raw()).collect();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "key order");
    let revs = t.revisions(keys[1].id()).unwrap();
    assert_eq!(revs.len(), 2);
    assert!(revs[0].meta.released && !revs[1].meta.released);
    assert_eq!(
        t.latest(keys[1].id()).unwrap().unwrap().key.raw(),
        k1b.raw()
    );
    let back: Vec<u64> = t
        .range(keys[2].id()..=keys[3].id())
        .unwrap()
        .rev()
        .map(|r| r.unwrap().key.id)
        .collect();
    assert_eq!(back, [keys[3].id(), keys[2].id()]);
    assert!(t.latest(u64::MAX).unwrap().is_none());
    assert!(matches!(
        t.get(rekord::RawKey::new(u64::MAX, 0)),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        db.dyn_tree("nope"),
        Err(Error::NoSuchTree { tree }) if tree == "nope"
    ));
}

/// Writes from RON and values, seen by typed code; bad text or values are errors that name
/// where, and change nothing; borrows, releases, states and revisions follow the rules.
#[test]
fn untyped_writes_follow_the_rules() {
    let db = Db::memory().unwrap();
    let parts = db.tree::<Part>().unwrap();
    let k = parts.create(&part("a", 1)).unwrap();
    let t = db.dyn_tree("parts").unwrap();

    // Create from RON (fields in any order, the struct named or not).
    let n = t
        .create_ron("Part(qty: 7, tags: [], name: \"new\", unit: Piece)")
        .unwrap();
    let typed: Key<Part> = Key::new(n.id, n.rev);
    assert_eq!(
        parts.get(typed).unwrap(),
        Part {
            name: "new".into(),
            qty: 7,
            unit: Unit::Piece,
            tags: vec![]
        }
    );

    // Replace and update a draft held here.
    let text = t
        .get(k.raw())
        .unwrap()
        .to_ron()
        .replace("qty: 1", "qty: 42");
    t.replace_ron(k.raw(), &text).unwrap();
    assert_eq!(parts.get(k).unwrap().qty, 42);
    t.update(k.raw(), |v| {
        if let Value::Struct(fs) = v {
            fs[0].1 = Value::String("renamed".into());
        }
    })
    .unwrap();
    assert_eq!(parts.get(k).unwrap().name, "renamed");

    // Mistakes: nothing is written.
    let before = (t.len().unwrap(), parts.get(k).unwrap());
    let bad = [
        ("(name: \"x\", qty: , tags: [], unit: Piece)", "", 1),
        ("(name: \"x\", qty: -1, tags: [], unit: Piece)", "qty", 1),
        (
            "(name: \"x\",\n qty: 1,\n tags: [],\n unit: Crate)",
            "unit",
            4,
        ),
        ("(name: \"x\", tags: [], unit: Piece)", "", 1),
        (
            "(name: \"x\", qty: 1, tags: [], unit: Piece, extra: 1)",
            "",
            1,
        ),
    ];
    for (text, path, line) in bad {
        match t.create_ron(text) {
            Err(Error::InvalidRon { tree, error, .. }) => {
                assert_eq!(tree, "parts");
                assert_eq!(error.line, line, "{text}: {error}");
                if !path.is_empty() {
                    assert_eq!(error.path, path, "{text}: {error}");
                }
            }
            other => panic!("{text}: {other:?}"),
        }
        assert!(matches!(
            t.replace_ron(k.raw(), text),
            Err(Error::InvalidRon { .. })
        ));
    }
    assert!(matches!(
        t.update(k.raw(), |v| *v = Value::U8(1)),
        Err(Error::InvalidValue { .. })
    ));
    assert!(matches!(
        t.create(&Value::Unit),
        Err(Error::InvalidValue { .. })
    ));
    assert_eq!((t.len().unwrap(), parts.get(k).unwrap()), before);

    // Borrows: returned, edits are refused; borrowed again, they work.
    t.return_borrow(k.raw()).unwrap();
    assert!(matches!(
        t.replace_ron(k.raw(), &text),
        Err(Error::NotBorrowed { .. })
    ));
    t.borrow(k.raw()).unwrap();
    t.replace_ron(k.raw(), &text).unwrap();

    // Release, state, next revision, removal.
    t.release(k.raw()).unwrap();
    assert!(matches!(
        t.replace_ron(k.raw(), &text),
        Err(Error::Released { .. })
    ));
    t.set_state(k.raw(), 9).unwrap();
    assert_eq!(parts.meta(k).unwrap().state, 9);
    let k2 = t.new_revision(k.raw()).unwrap();
    assert_eq!(k2.rev, 1);
    t.replace_ron(k2.raw(), &text).unwrap();
    assert!(matches!(t.remove(k.raw()), Err(Error::Released { .. })));
    t.remove(k2.raw()).unwrap();
    assert_eq!(t.revisions(k.id()).unwrap().len(), 1);
}

/// Events name their tree: an untyped reader can follow changes made by typed code and its
/// own.
#[test]
fn events_name_their_tree() {
    let db = Db::memory().unwrap();
    let parts = db.tree::<Part>().unwrap();
    parts.create(&part("a", 1)).unwrap();
    let t = db.dyn_tree("parts").unwrap();
    let sub = db.subscribe();
    let k = t
        .create_ron("(name: \"b\", qty: 2, tags: [], unit: Piece)")
        .unwrap();
    db.tree::<Other>().unwrap().create(&Other { n: 1 }).unwrap();
    let events: Vec<_> = sub
        .try_iter()
        .filter_map(|e| match e {
            rekord::Event::Record(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(&*events[0].tree, "parts");
    assert_eq!(events[0].key, k.raw());
    assert!(matches!(events[0].kind, EventKind::Created));
    assert_eq!(&*events[1].tree, "other");
}

/// Records of older schema versions are read with the schema they were written with; writes
/// use the newest; a record written by a schema newer than the handle's is refused.
#[test]
fn versions_read_as_written_and_writes_use_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.rekord");
    let old = {
        let db = Db::open(&path).unwrap();
        db.tree::<Part>().unwrap().create(&part("old", 5)).unwrap()
    };
    let db = Db::open(&path).unwrap();
    let stale = db.dyn_tree("parts").unwrap();
    let newer = db
        .tree::<v2::Part>()
        .unwrap()
        .create(&v2::Part {
            name: "new".into(),
            qty: 6,
            note: Some("n".into()),
        })
        .unwrap();
    let t = db.dyn_tree("parts").unwrap();
    assert_eq!(t.schema().version, 2);
    assert_eq!(db.trees().unwrap()[0].versions, [1, 2]);
    let r = t.get(old.raw()).unwrap();
    assert_eq!(r.meta.version, 1);
    assert_eq!(field(&r.value, "qty"), &Value::U32(5));
    assert_eq!(t.get(newer.raw()).unwrap().meta.version, 2);

    // The newest handle writes version 2; typed v2 code reads it.
    t.replace_ron(old.raw(), "(name: \"old\", qty: 50, note: None)")
        .unwrap();
    assert_eq!(t.get(old.raw()).unwrap().meta.version, 2);
    assert_eq!(
        db.tree::<v2::Part>()
            .unwrap()
            .get(Key::new(old.id(), 0))
            .unwrap()
            .qty,
        50
    );
    // A handle opened before version 2 existed refuses to overwrite it.
    let v1_text = "(name: \"x\", qty: 1, tags: [], unit: Piece)";
    assert!(matches!(
        stale.replace_ron(newer.raw(), v1_text),
        Err(Error::NewerVersion {
            stored: 2,
            expected: 1,
            ..
        })
    ));
}

/// `Db::open_read_only`: reads a file without writing a byte of it, refuses every write,
/// and lets several readers in at once; a missing file is an error, never created.
#[test]
fn read_only_opens_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.rekord");
    let k = {
        let db = Db::open(&path).unwrap();
        db.tree::<Part>().unwrap().create(&part("a", 1)).unwrap()
    };
    let before = std::fs::read(&path).unwrap();
    {
        let a = Db::open_read_only(&path).unwrap();
        let b = Db::open_read_only(&path).unwrap();
        assert_eq!(a.trees().unwrap()[0].records, 1);
        let t = b.dyn_tree("parts").unwrap();
        assert_eq!(
            field(&t.get(k.raw()).unwrap().value, "name"),
            &Value::String("a".into())
        );
        assert_eq!(a.tree::<Part>().unwrap().get(k).unwrap().qty, 1);
        assert!(matches!(
            t.create_ron("(name: \"b\", qty: 2, tags: [], unit: Piece)"),
            Err(Error::ReadOnly)
        ));
        assert!(matches!(t.release(k.raw()), Err(Error::ReadOnly)));
        assert!(matches!(
            a.tree::<Part>().unwrap().update(k, |p| p.qty = 2),
            Err(Error::ReadOnly)
        ));
        // A writer cannot open it meanwhile (readers share it, a writer needs it alone).
        assert!(matches!(Db::open(&path), Err(Error::Locked { .. })));
    }
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a read-only open wrote to the file"
    );
    let missing = dir.path().join("missing.rekord");
    assert!(Db::open_read_only(&missing).is_err());
    assert!(!missing.exists());
}

/// Imports keep typed code's invariants: revisions from 0 without gaps, drafts only as the
/// latest revision, no id 0; any refusal writes nothing.
#[test]
fn imports_keep_the_invariants() {
    let src = Db::memory().unwrap();
    let parts = src.tree::<Part>().unwrap();
    let k = parts.create(&part("a", 1)).unwrap();
    parts.release(k).unwrap();
    parts.new_revision(k).unwrap();
    let schema = src.schemas("parts").unwrap().remove(0);
    let records: Vec<rekord::DynRecord> = src
        .dyn_tree("parts")
        .unwrap()
        .iter()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let import = |db: &Db, recs: Vec<rekord::DynRecord>| {
        let mut items = vec![Ok(rekord::Import::Schema(schema.clone()))];
        items.extend(
            recs.into_iter()
                .map(|r| Ok(rekord::Import::Record(Box::new(r)))),
        );
        db.import(items)
    };
    // Whole: fine, and exact.
    let dst = Db::memory().unwrap();
    assert_eq!(import(&dst, records.clone()).unwrap(), 2);
    assert_eq!(
        dst.dyn_tree("parts").unwrap().revisions(k.id()).unwrap(),
        records
    );
    // A gap (revision 1 without 0), a draft before the latest, id 0: refused, nothing kept.
    for bad in [
        vec![records[1].clone()],
        {
            let mut r = records.clone();
            r[0].meta = rekord::RecordMeta::new(false, 0, 1, 1);
            r
        },
        {
            let mut r = records[0].clone();
            r.key.id = 0;
            vec![r]
        },
    ] {
        let dst = Db::memory().unwrap();
        assert!(matches!(
            import(&dst, bad),
            Err(Error::ImportAborted { .. })
        ));
        assert!(dst.trees().unwrap().is_empty());
    }
}
