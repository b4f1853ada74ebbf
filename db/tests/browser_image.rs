//! The fixture `db/tests/browser.rs` imports into the browser: a database file written
//! natively. The bytes are the same on every target, so the browser opens it as it is.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::Db;

#[rekord::record(tree = "parts")]
#[derive(Debug, Clone, PartialEq)]
struct Part {
    name: String,
    qty: u32,
}

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/native.rekord");

/// Writes the fixture again: `cargo test -p rekord --test browser_image -- --ignored`.
#[test]
#[ignore = "writes db/tests/fixtures/native.rekord"]
fn make_the_native_fixture() {
    let _ = std::fs::remove_file(FIXTURE);
    let db = Db::open(FIXTURE).unwrap();
    let parts = db.tree::<Part>().unwrap();
    for i in 0..100u32 {
        parts
            .create(&Part {
                name: format!("native {i}"),
                qty: i * 3,
            })
            .unwrap();
    }
}

/// The fixture holds what the browser test expects (100 parts, `native i` with qty 3i).
#[test]
fn the_native_fixture_holds_what_the_browser_test_expects() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy.rekord");
    std::fs::copy(FIXTURE, &copy).unwrap();
    let db = Db::open(&copy).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let all: Vec<Part> = parts
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| parts.get(k).unwrap())
        .collect();
    assert_eq!(all.len(), 100);
    assert!(all.iter().any(|p| p.name == "native 7" && p.qty == 21));
}

/// A browser export (written by the crash driver, `examples/web/tests/export.mjs`, to
/// `REKORD_BROWSER_EXPORT`) opens natively with every commit the browser made.
#[test]
fn a_browser_export_opens_natively() {
    let Some(path) = std::env::var_os("REKORD_BROWSER_EXPORT") else {
        eprintln!("REKORD_BROWSER_EXPORT not set: nothing to check (CI sets it)");
        return;
    };
    #[rekord::record(tree = "head")]
    #[derive(Debug, Clone, PartialEq)]
    struct Head {
        seq: u64,
        count: u64,
    }
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("export.rekord");
    std::fs::copy(path, &copy).unwrap();
    let db = Db::open(&copy).unwrap();
    let heads = db.tree::<Head>().unwrap();
    let head = heads.get(heads.keys().unwrap()[0]).unwrap();
    let trees = db.trees().unwrap();
    let commits = trees.iter().find(|t| t.name == "commits").unwrap();
    assert_eq!(commits.records, head.count);
    assert!(head.count > 0);
}
