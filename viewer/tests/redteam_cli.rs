//! Red team: the CLI as a careless or hostile user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::{Db, Key};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rekord-viewer");

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

fn app_db(path: &Path) -> Vec<Key<Part>> {
    let db = Db::open(path).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let keys: Vec<_> = (0..4)
        .map(|i| {
            parts
                .create(&Part {
                    name: format!("p{i} a=b~c"),
                    qty: i,
                })
                .unwrap()
        })
        .collect();
    parts.release(keys[1]).unwrap();
    keys
}

fn viewer(db: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("EDITOR")
        .env_remove("VISUAL")
        .output()
        .unwrap()
}

fn no_panic(out: &Output, args: &[&str]) {
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !e.contains("panicked") && out.status.code().is_some_and(|c| c != 101),
        "{args:?} crashed: {:?} {e}",
        out.status
    );
}

/// A refused change with --write: no record changes. (A change refused by the rules,
/// here a released revision, is refused inside a write transaction: redb rewrites its own
/// allocator bookkeeping when a file opened for writing closes, so the bytes may differ;
/// refusals found before that, bad RON or keys, leave every byte: see below.)
#[test]
fn refused_write_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    let keys = app_db(&path);
    let before = std::fs::read(&path).unwrap();
    let id = keys[1].id().to_string();
    let out = viewer(
        &path,
        &[
            "--write",
            "edit",
            "parts",
            &id,
            "--ron",
            "(name: \"x\", qty: 1)",
        ],
    );
    no_panic(&out, &[]);
    assert!(!out.status.success(), "editing a released revision");
    let _ = before;
    let db = rekord::Db::open_read_only(&path).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let now: Vec<_> = keys.iter().map(|k| parts.get(*k).unwrap()).collect();
    let db0 = now.len();
    assert_eq!(db0, keys.len());
    assert_ne!(now[1].name, "x", "a refused edit changed the record");
}

/// Same, with RON that does not parse.
#[test]
fn refused_bad_ron_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    app_db(&path);
    let before = std::fs::read(&path).unwrap();
    let out = viewer(&path, &["--write", "create", "parts", "(name: 1)"]);
    assert!(!out.status.success());
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a refused create changed the file"
    );
}

/// Read-only browsing with odd filters and keys: never panics, never writes.
#[test]
fn odd_filters_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    app_db(&path);
    let before = std::fs::read(&path).unwrap();
    let filters = [
        "=",
        "~",
        "=~",
        "~=",
        "name=",
        "=x",
        "name~",
        "nope=1",
        "a=b=c",
        "name~a=b",
        "qty=",
        "qty=0",
        "qty~",
        "ü=ü",
        "name=p0 a=b~c",
        " name = p0 a=b~c ",
        "name~\"",
        "name=\"p0 a=b~c\"",
    ];
    let mut seen = vec![];
    for f in filters {
        let args = ["ls", "parts", "--all", "--where", f];
        let out = viewer(&path, &args);
        no_panic(&out, &args);
        seen.push(format!(
            "{f:?}: {} rows {}",
            String::from_utf8_lossy(&out.stdout).lines().count(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    for k in [
        "",
        "@",
        "1@",
        "@0",
        "-1",
        "18446744073709551616",
        "1@4294967296",
        "0",
        "1@99",
        " 1 ",
        "1@0@0",
        "0x1",
        "١",
    ] {
        for args in [
            vec!["get", "parts", k],
            vec!["ls", "parts", "--from", k],
            vec!["ls", "parts", "--limit", k],
        ] {
            let out = viewer(&path, &args);
            no_panic(&out, &args);
        }
    }
    println!("{}", seen.join("\n"));
    assert!(std::fs::read(&path).unwrap() == before);
}

/// `export --out` naming the database file itself (a slip of the finger).
#[test]
fn export_onto_the_database_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    app_db(&path);
    let before = std::fs::read(&path).unwrap();
    let out = viewer(&path, &["export", "--out", path.to_str().unwrap()]);
    no_panic(&out, &[]);
    let after = std::fs::read(&path).unwrap();
    assert!(
        after == before,
        "a read-only export destroyed the database: {} -> {} bytes; {}",
        before.len(),
        after.len(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A failed import into a new path leaves no database behind.
#[test]
fn failed_import_into_new_file_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.rekord");
    let out = viewer(&path, &["--write", "import", "/nonexistent/dump.ron"]);
    assert!(!out.status.success());
    let e1 = path.exists();
    let bad = dir.path().join("bad.ron");
    std::fs::write(&bad, "not an export\n").unwrap();
    let path2 = dir.path().join("new2.rekord");
    let out = viewer(&path2, &["--write", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        !e1 && !path2.exists(),
        "a failed import created a database file (missing dump: {e1}, bad dump: {})",
        path2.exists()
    );
}

fn export_text(path: &Path) -> String {
    let out = viewer(path, &["export", "--out", "-"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Import files edited by hand: every variant is refused or accepted cleanly, and a
/// refused one writes nothing.
#[test]
fn hand_edited_imports() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app.rekord");
    app_db(&src);
    let text = export_text(&src);
    let lines: Vec<&str> = text.lines().collect();
    let schema_line = lines
        .iter()
        .position(|l| l.starts_with("(schema:"))
        .unwrap();
    let rec = lines.iter().position(|l| l.starts_with("(tree:")).unwrap();
    let mut cases: Vec<(&str, String)> = vec![];
    let with = |f: &dyn Fn(&mut Vec<String>)| {
        let mut v: Vec<String> = lines.iter().map(|s| (*s).to_owned()).collect();
        f(&mut v);
        v.join("\n")
    };
    cases.push(("crlf", text.replace('\n', "\r\n")));
    cases.push(("bom", format!("\u{feff}{text}")));
    cases.push((
        "no trailing ]",
        with(&|v| {
            v.pop();
        }),
    ));
    cases.push(("empty", String::new()));
    cases.push(("header only", "// rekord export 1\n".into()));
    cases.push((
        "missing rev",
        with(&|v| v[rec] = v[rec].replace("rev: 0, ", "")),
    ));
    cases.push((
        "data before version",
        with(&|v| {
            v[rec] = v[rec]
                .replace("version: 1, data:", "data:")
                .replace("),", ", version: 1)),")
        }),
    ));
    cases.push((
        "fields reordered",
        with(&|v| {
            v[rec] = v[rec].replace(
                "(tree: \"parts\", id: 1, rev: 0,",
                "(rev: 0, id: 1, tree: \"parts\",",
            )
        }),
    ));
    cases.push((
        "data fields reordered",
        with(&|v| {
            v[rec] = v[rec].replace(
                "data: (name: \"p0 a=b~c\", qty: 0)",
                "data: (qty: 0, name: \"p0 a=b~c\")",
            )
        }),
    ));
    cases.push((
        "data field missing",
        with(&|v| v[rec] = v[rec].replace(", qty: 0)", ")")),
    ));
    cases.push((
        "data field extra",
        with(&|v| v[rec] = v[rec].replace(", qty: 0)", ", qty: 0, x: 1)")),
    ));
    cases.push((
        "text before version",
        with(&|v| {
            v[schema_line] = v[schema_line]
                .replace("version: 1, ", "")
                .replace("),", ", version: 1),")
        }),
    ));
    cases.push((
        "schema after records",
        with(&|v| {
            let s = v.remove(schema_line);
            let n = v.len();
            v.insert(n - 1, s);
        }),
    ));
    cases.push((
        "duplicate record line",
        with(&|v| {
            let r = v[rec].clone();
            v.insert(rec, r);
        }),
    ));
    cases.push((
        "duplicate schema line",
        with(&|v| {
            let r = v[schema_line].clone();
            v.insert(schema_line, r);
        }),
    ));
    cases.push((
        "two entries on one line",
        with(&|v| {
            let r = v.remove(rec + 1);
            v[rec] = format!("{} {r}", v[rec]);
        }),
    ));
    cases.push((
        "entry split over two lines",
        with(&|v| {
            v[rec] = v[rec].replace("data: ", "\ndata: ");
        }),
    ));
    cases.push((
        "id huge",
        with(&|v| v[rec] = v[rec].replace("id: 1,", "id: 99999999999999999999999999,")),
    ));
    cases.push((
        "id negative",
        with(&|v| v[rec] = v[rec].replace("id: 1,", "id: -1,")),
    ));
    cases.push((
        "version unknown",
        with(&|v| v[rec] = v[rec].replace("version: 1,", "version: 9,")),
    ));
    cases.push((
        "tree unknown",
        with(&|v| v[rec] = v[rec].replace("tree: \"parts\"", "tree: \"ghost\"")),
    ));
    cases.push((
        "deep data",
        with(&|v| {
            v[rec] = v[rec].replace(
                "qty: 0)",
                &format!("qty: {}0{})", "[".repeat(50_000), "]".repeat(50_000)),
            )
        }),
    ));
    cases.push((
        "deep unknown field value",
        with(&|v| {
            v[rec] = v[rec].replace(
                "state: 0,",
                &format!("nope: {}, state: 0,", "[".repeat(50_000)),
            )
        }),
    ));
    cases.push((
        "schema text garbage",
        with(&|v| v[schema_line] = "(schema: \"parts\", version: 1, text: \"garbage(\"),".into()),
    ));
    cases.push((
        "schema text deep",
        with(&|v| {
            v[schema_line] = format!(
                "(schema: \"parts\", version: 1, text: \"{}\"),",
                "(".repeat(100_000)
            )
        }),
    ));
    let mut report = vec![];
    for (name, body) in &cases {
        let dump = dir.path().join("dump.ron");
        std::fs::write(&dump, body).unwrap();
        let db = dir
            .path()
            .join(format!("{}.rekord", name.replace(' ', "_")));
        app_db_empty(&db);
        let before = std::fs::read(&db).unwrap();
        let out = viewer(&db, &["--write", "import", dump.to_str().unwrap()]);
        no_panic(&out, &[name]);
        let after = std::fs::read(&db).unwrap();
        let status = if out.status.success() {
            "ok"
        } else {
            "refused"
        };
        report.push(format!(
            "{name}: {status} {} {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(200)
                .collect::<String>(),
            if !out.status.success() && after != before {
                " [FILE CHANGED]"
            } else {
                ""
            }
        ));
    }
    println!("{}", report.join("\n"));
}

/// An empty standalone database (no trees).
fn app_db_empty(path: &Path) {
    drop(Db::open(path).unwrap());
}

/// A schema line of a hostile export: a field marked default, of an array type of four
/// billion bytes, and a record line without it. The import must refuse, not abort.
#[test]
fn hostile_schema_default_array_aborts_import() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app.rekord");
    app_db(&src);
    let text = export_text(&src);
    let hostile = text.replace(
        "ty: U32,\\n                default: false,",
        "ty: Array(U8, 4294967295),\\n                default: true,",
    );
    assert_ne!(hostile, text, "the schema text changed form: {text}");
    let hostile: String = hostile
        .lines()
        .map(|l| {
            if l.starts_with("(tree:") {
                let i = l.find(", qty:").unwrap();
                format!("{})),", &l[..i])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dump = dir.path().join("dump.ron");
    std::fs::write(&dump, &hostile).unwrap();
    let db = dir.path().join("new.rekord");
    let out = viewer(&db, &["--write", "import", dump.to_str().unwrap()]);
    assert!(
        out.status.code().is_some(),
        "the viewer was killed by a signal: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
