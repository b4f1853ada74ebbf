//! Red team: the untyped API (Db::import, Db::dyn_tree, from_ron) on hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::schema::dynamic::{self, Value};
use rekord::schema::{Field, Schema, Type, TypeDef};
use rekord::{Db, DynKey, DynRecord, Error, Import, RecordMeta};
use std::collections::BTreeMap;
use std::sync::Arc;

mod a {
    #[rekord::record(tree = "x", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct X {
        pub a: u8,
    }
}

mod b {
    #[rekord::record(tree = "x", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct X {
        pub name: String,
    }
}

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

fn rec(tree: &str, id: u64, rev: u32, value: Value) -> Import {
    Import::Record(Box::new(DynRecord {
        key: DynKey {
            tree: Arc::from(tree),
            id,
            rev,
        },
        meta: RecordMeta::new(false, 0, 1, 1),
        value,
    }))
}

/// An import that fails leaves nothing in the file, but the handle remembers the schema
/// it saw; the next import of the same tree and version with another schema is then
/// checked against the stale one.
#[test]
fn failed_import_leaves_a_stale_schema_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db")).unwrap();
    let r = db.import([
        Ok(Import::Schema(Schema::of::<a::X>())),
        Ok(rec(
            "x",
            1,
            0,
            Value::Struct(vec![("a".into(), Value::U8(5))]),
        )),
        Err(Error::ImportAborted {
            reason: "the user pressed ctrl-c".into(),
        }),
    ]);
    assert!(r.is_err());
    assert!(matches!(db.dyn_tree("x"), Err(Error::NoSuchTree { .. })));
    // Now a correct import of another application's tree `x` v1.
    let r = db.import([
        Ok(Import::Schema(Schema::of::<b::X>())),
        Ok(rec(
            "x",
            1,
            0,
            Value::Struct(vec![("name".into(), Value::String("hi".into()))]),
        )),
    ]);
    assert!(r.is_ok(), "a valid import refused: {r:?}");
    let got = db.dyn_tree("x").unwrap().get(rekord::RawKey::new(1, 0));
    assert!(got.is_ok(), "{got:?}");
}

/// Same stale schema, reached by typed code after the failed import: the typed tree stores
/// its schema, its records are then read untyped with the stale one.
#[test]
fn failed_import_then_typed_tree_reads_untyped_with_stale_schema() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db")).unwrap();
    let r = db.import([
        Ok(Import::Schema(Schema::of::<a::X>())),
        Ok(rec(
            "x",
            1,
            0,
            Value::Struct(vec![("a".into(), Value::U8(5))]),
        )),
        Err(Error::ImportAborted {
            reason: "stop".into(),
        }),
    ]);
    assert!(r.is_err());
    let t = db.tree::<b::X>().unwrap();
    let k = t.create(&b::X { name: "hi".into() }).unwrap();
    let got = db
        .dyn_tree("x")
        .unwrap()
        .get(rekord::RawKey::new(k.id(), k.rev()));
    assert!(
        matches!(&got, Ok(r) if r.value == Value::Struct(vec![("name".into(), Value::String("hi".into()))])),
        "{got:?}"
    );
}

fn one_field_schema(ty: Type, default: bool) -> Schema {
    let mut types = BTreeMap::new();
    types.insert(
        "R".to_owned(),
        TypeDef::Struct(vec![
            Field::new("a", ty, default),
            Field::new("b", Type::U8, false),
        ]),
    );
    Schema {
        tree: "r".into(),
        version: 1,
        root: Type::Named("R".into()),
        types,
    }
}

/// A field marked default of a huge array type: reading `()` must not try to build it.
/// (Run in a child process: an allocation failure aborts.)
#[test]
fn default_of_a_huge_array_does_not_abort() {
    if std::env::var("REDTEAM_CHILD").is_ok() {
        let s = one_field_schema(Type::Array(Box::new(Type::U8), u32::MAX), true);
        let r = dynamic::from_ron(&s, "(b: 1)");
        println!("RESULT {:?}", r.as_ref().map(|_| ()));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "default_of_a_huge_array_does_not_abort",
            "--nocapture",
        ])
        .env("REDTEAM_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RESULT"),
        "the process died: {:?}\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nested arrays whose inline size (1.8 GB) is under the limit, built as a default (it
/// allocated until the OOM killer stopped it; defaults are now bounded).
#[test]
fn default_of_nested_arrays_does_not_abort() {
    if std::env::var("REDTEAM_CHILD").is_ok() {
        let s = one_field_schema(
            Type::Array(Box::new(Type::Array(Box::new(Type::U8), 60_000)), 30_000),
            true,
        );
        let r = dynamic::from_ron(&s, "(b: 1)");
        println!("RESULT {:?}", r.as_ref().map(|_| ()));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "default_of_nested_arrays_does_not_abort",
            "--nocapture",
        ])
        .env("REDTEAM_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RESULT"),
        "the process died: {:?}\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A zero-sized array of four billion units: decoding and reading RON stay bounded.
#[test]
fn huge_array_of_units() {
    let s = one_field_schema(Type::Array(Box::new(Type::Unit), u32::MAX), false);
    let r = dynamic::decode(&s, &[]);
    assert!(r.is_err(), "{:?}", r.map(|_| ()));
    let r = dynamic::from_ron(&s, "(a: [(), ()], b: 1)");
    assert!(r.is_err());
}

/// Deep RON input: errors, not stack overflows.
#[test]
fn deep_ron_input() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db")).unwrap();
    db.tree::<Part>().unwrap();
    let t = db.dyn_tree("parts").unwrap();
    for open in ["[", "(", "{", "Some(", "(a:"] {
        let text = format!("(name: {}", open.repeat(100_000));
        let r = t.create_ron(&text);
        assert!(matches!(r, Err(Error::InvalidRon { .. })), "{open}: {r:?}");
    }
    // Extra tuple/struct values are skipped with IgnoredAny: deep there too.
    let text = format!("(name: \"a\", qty: 1, extra: {})", "[".repeat(100_000));
    assert!(t.create_ron(&text).is_err());
    // Huge numbers.
    for q in [
        "99999999999999999999999999999999999999999999999999",
        "-1",
        "4294967296",
        "1e400",
        "0x1_0000_0000",
        "NaN",
    ] {
        let r = t.create_ron(&format!("(name: \"a\", qty: {q})"));
        assert!(matches!(r, Err(Error::InvalidRon { .. })), "{q}: {r:?}");
    }
    assert_eq!(t.len().unwrap(), 0);
}

/// Import edge keys: id 0 ("never an id") and u64::MAX, then create.
#[test]
fn import_edge_ids() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db")).unwrap();
    let v = |n: &str| {
        Value::Struct(vec![
            ("name".into(), Value::String(n.into())),
            ("qty".into(), Value::U32(1)),
        ])
    };
    let r0 = db.import([
        Ok(Import::Schema(Schema::of::<Part>())),
        Ok(rec("parts", 0, 0, v("zero"))),
    ]);
    println!("import id 0: {r0:?}");
    let r1 = db.import([Ok(rec("parts", u64::MAX, u32::MAX, v("max")))]);
    println!("import id max: {r1:?}");
    let parts = db.tree::<Part>().unwrap();
    let c = parts.create(&Part {
        name: "after".into(),
        qty: 1,
    });
    println!("create after: {c:?}");
    assert!(r0.is_err(), "id 0 (never an id) was imported");
}

/// Duplicate key inside one import: refused, nothing written.
#[test]
fn import_duplicate_key_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db")).unwrap();
    let v = Value::Struct(vec![
        ("name".into(), Value::String("a".into())),
        ("qty".into(), Value::U32(1)),
    ]);
    let r = db.import([
        Ok(Import::Schema(Schema::of::<Part>())),
        Ok(rec("parts", 5, 0, v.clone())),
        Ok(rec("parts", 5, 0, v)),
    ]);
    assert!(matches!(r, Err(Error::KeyExists { .. })), "{r:?}");
    assert!(db.trees().unwrap().is_empty());
}

/// Two drafts of one id (typed code never makes this): accepted by import?
#[test]
fn import_two_drafts_of_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db")).unwrap();
    let v = Value::Struct(vec![
        ("name".into(), Value::String("a".into())),
        ("qty".into(), Value::U32(1)),
    ]);
    let r = db.import([
        Ok(Import::Schema(Schema::of::<Part>())),
        Ok(rec("parts", 5, 0, v.clone())),
        Ok(rec("parts", 5, 1, v)),
    ]);
    println!("two drafts: {r:?}");
    if r.is_ok() {
        let parts = db.tree::<Part>().unwrap();
        let k0 = rekord::Key::<Part>::new(5, 0);
        let u = parts.update(k0, |p| p.qty = 9);
        println!("update of the older draft: {u:?}");
        assert!(u.is_err(), "an older revision stayed an editable draft");
    }
}

mod c {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum E {
        X,
        Y,
    }
    #[rekord::record(tree = "e", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct R {
        pub a: E,
    }
}

mod d {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum E {
        Y,
        X,
    }
    #[rekord::record(tree = "e", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct R {
        pub a: E,
    }
}

/// The stale schema silently mis-encodes: variant `Y` is written with the aborted
/// import's tag for `Y` (1), which the stored schema reads as `X`.
#[test]
fn failed_import_then_reimport_stores_the_wrong_variant() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db")).unwrap();
    let y = || {
        Value::Struct(vec![(
            "a".into(),
            Value::Enum {
                variant: "Y".into(),
                fields: rekord::schema::dynamic::Fields::Unit,
            },
        )])
    };
    let r = db.import([
        Ok(Import::Schema(Schema::of::<c::R>())),
        Ok(rec("e", 1, 0, y())),
        Err(Error::ImportAborted {
            reason: "stop".into(),
        }),
    ]);
    assert!(r.is_err());
    db.import([
        Ok(Import::Schema(Schema::of::<d::R>())),
        Ok(rec("e", 1, 0, y())),
    ])
    .unwrap();
    drop(db);
    let db = Db::open(dir.path().join("db")).unwrap();
    let typed = db
        .tree::<d::R>()
        .unwrap()
        .get(rekord::Key::new(1, 0))
        .unwrap();
    assert_eq!(
        typed.a,
        d::E::Y,
        "the imported Y reads back as {:?}",
        typed.a
    );
}

// ---------------------------------------------------------------------------------------
// Damaged databases, browsed with the viewer binary (built by `cargo build -p
// rekord-viewer`; skipped when it is missing). With REDTEAM_DAMAGED=DIR the files are also
// kept in DIR for viewer/tests/redteam_gui.rs.

const SCHEMAS: redb::TableDefinition<(&str, u32), &str> =
    redb::TableDefinition::new("rekord.schemas");
const PARTS: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("t.parts");

fn viewer_bin() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rekord-viewer");
    p.exists().then_some(p)
}

fn app_db(path: &std::path::Path) {
    let db = Db::open(path).unwrap();
    let t = db.tree::<Part>().unwrap();
    for i in 0..5 {
        t.create(&Part {
            name: format!("p{i}"),
            qty: i,
        })
        .unwrap();
    }
}

fn header(version: u32) -> Vec<u8> {
    let mut h = vec![1u8, 0, 0, 0];
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h
}

fn damaged(dir: &std::path::Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = vec![];
    let mut add = |name: &str, f: &dyn Fn(&std::path::Path)| {
        let p = dir.join(format!("{name}.rekord"));
        f(&p);
        out.push((name.to_owned(), p));
    };
    let schema_text = |text: String| {
        move |p: &std::path::Path| {
            app_db(p);
            let db = redb::Database::open(p).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(SCHEMAS)
                .unwrap()
                .insert(("parts", 1), text.as_str())
                .unwrap();
            w.commit().unwrap();
        }
    };
    add("schema_garbage", &schema_text("garbage(((".into()));
    add("schema_empty", &schema_text(String::new()));
    let good = Schema::of::<Part>().to_ron().unwrap();
    add(
        "schema_wrong_tree",
        &schema_text(good.replace("\"parts\"", "\"other\"")),
    );
    add(
        "schema_ghost_root",
        &schema_text(good.replace("root: Named(\"Part\")", "root: Named(\"Ghost\")")),
    );
    add(
        "schema_recursive",
        &schema_text(good.replace("ty: String", "ty: Named(\"Part\")")),
    );
    add(
        "schema_option_deep",
        &schema_text(good.replace(
            "ty: String",
            &format!("ty: {}String{}", "Option(".repeat(250), ")".repeat(250)),
        )),
    );
    add(
        "schema_u32_array",
        &schema_text(good.replace("ty: String", "ty: Array(U8, 4294967295)")),
    );
    add(
        "schema_version_mismatch",
        &schema_text(good.replace("version: 1", "version: 7")),
    );
    // A schema version 2 whose text differs, no record of it.
    add("schema_v2_of_other_shape", &|p: &std::path::Path| {
        app_db(p);
        let db = redb::Database::open(p).unwrap();
        let w = db.begin_write().unwrap();
        let t = Schema::of::<b::X>()
            .to_ron()
            .unwrap()
            .replace("\"x\"", "\"parts\"")
            .replace("version: 1", "version: 2");
        w.open_table(SCHEMAS)
            .unwrap()
            .insert(("parts", 2), t.as_str())
            .unwrap();
        w.commit().unwrap();
    });
    let record = |bytes: Vec<u8>| {
        move |p: &std::path::Path| {
            app_db(p);
            let db = redb::Database::open(p).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(PARTS)
                .unwrap()
                .insert(2u128 << 32, bytes.as_slice())
                .unwrap();
            w.commit().unwrap();
        }
    };
    add("record_empty", &record(vec![]));
    add("record_short_header", &record(vec![1, 0, 0]));
    add("record_header_only", &record(header(1)));
    add(
        "record_garbage",
        &record({
            let mut h = header(1);
            h.extend_from_slice(&[0xff; 37]);
            h
        }),
    );
    add(
        "record_unknown_version",
        &record({
            let mut h = header(99);
            h.extend_from_slice(&[0; 12]);
            h
        }),
    );
    add(
        "record_bad_format_byte",
        &record({
            let mut h = header(1);
            h[0] = 9;
            h.extend_from_slice(&[0; 12]);
            h
        }),
    );
    add(
        "record_bad_utf8",
        &record({
            // name: String inline (8 bytes: len|ptr or inline), qty: u32.
            let mut h = header(1);
            h.extend_from_slice(&[0xc3, 0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0x82, 1, 0, 0, 0]);
            h
        }),
    );
    add("not_redb", &|p: &std::path::Path| {
        std::fs::write(p, b"hello, I am a text file\n".repeat(300)).unwrap()
    });
    add("empty_file", &|p: &std::path::Path| {
        std::fs::write(p, b"").unwrap()
    });
    add("other_redb", &|p: &std::path::Path| {
        let db = redb::Database::create(p).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<u64, u64>::new("stuff"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        w.commit().unwrap();
    });
    add("truncated", &|p: &std::path::Path| {
        app_db(p);
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() / 2]).unwrap();
    });
    add("meta_wrong_type", &|p: &std::path::Path| {
        let db = redb::Database::create(p).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<u64, u64>::new("rekord.meta"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        w.commit().unwrap();
    });
    add("schemas_wrong_type", &|p: &std::path::Path| {
        app_db(p);
        let db = redb::Database::open(p).unwrap();
        let w = db.begin_write().unwrap();
        w.delete_table(SCHEMAS).unwrap();
        w.open_table(redb::TableDefinition::<u64, u64>::new("rekord.schemas"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        w.commit().unwrap();
    });
    add("tree_table_wrong_type", &|p: &std::path::Path| {
        app_db(p);
        let db = redb::Database::open(p).unwrap();
        let w = db.begin_write().unwrap();
        w.delete_table(PARTS).unwrap();
        w.open_table(redb::TableDefinition::<u64, u64>::new("t.parts"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        w.commit().unwrap();
    });
    out
}

#[test]
fn viewer_on_damaged_databases() {
    let Some(bin) = viewer_bin() else {
        eprintln!("no viewer binary; skipped");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("REDTEAM_DAMAGED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).unwrap();
    let files = damaged(&dir);
    let commands: &[&[&str]] = &[
        &["trees"],
        &["schema", "parts"],
        &["ls", "parts"],
        &["ls", "parts", "--all", "--where", "name~p"],
        &["get", "parts", "2"],
        &["get", "parts", "2", "--all"],
        &["get", "parts", "1", "--json"],
        &["export", "--out", "-"],
        &["--write", "create", "parts", "(name: \"n\", qty: 1)"],
        &[
            "--write",
            "edit",
            "parts",
            "1",
            "--ron",
            "(name: \"n\", qty: 1)",
        ],
    ];
    let mut report = vec![];
    for (name, path) in &files {
        for args in commands {
            let before = std::fs::read(path).unwrap();
            let out = std::process::Command::new(&bin)
                .arg("--db")
                .arg(path)
                .args(*args)
                .env_remove("EDITOR")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let after = std::fs::read(path).unwrap();
            let line = format!(
                "{name} {args:?}: {} {}",
                if out.status.success() { "ok" } else { "err" },
                err.lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
            println!("{line}");
            if err.contains("panicked")
                || out.status.code().is_none()
                || out.status.code() == Some(101)
            {
                report.push(format!("PANIC/CRASH {line}\n{err}"));
            }
            if !args.contains(&"--write") && before != after {
                report.push(format!("WROTE on read-only {line}"));
            }
            // A refused write leaves every record as it was. (Refusals found only inside
            // a write transaction leave redb's allocator bookkeeping rewritten, so the bytes
            // are compared only for what a read-only look sees: the `ls --all` listing.)
            if args.contains(&"--write") && !out.status.success() && before != after {
                std::fs::write(path, &before).unwrap();
                let listing = |p: &std::path::Path| {
                    std::process::Command::new(&bin)
                        .arg("--db")
                        .arg(p)
                        .args(["ls", "parts", "--all", "--limit", "1000"])
                        .output()
                        .unwrap()
                        .stdout
                };
                let was = listing(path);
                std::fs::write(path, &after).unwrap();
                if listing(path) != was {
                    report.push(format!("WROTE on refused write {line}"));
                }
                std::fs::write(path, &before).unwrap();
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}
