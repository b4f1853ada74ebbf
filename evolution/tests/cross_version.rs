//! Schema evolution across real builds: `parts_v1`, `parts_v2`, `parts_v3` and `parts_v4_bad`
//! are separate programs, each compiled with its own version of the `Part` record, taking
//! turns on one database file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};

fn run(bin: &str, db: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin)
        .arg(db)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn ok(bin: &str, db: &Path, args: &[&str]) -> String {
    let (code, out) = run(bin, db, args);
    assert_eq!(code, 0, "{bin} {args:?} failed:\n{out}");
    out
}

const V1: &str = env!("CARGO_BIN_EXE_parts_v1");
const V2: &str = env!("CARGO_BIN_EXE_parts_v2");
const V3: &str = env!("CARGO_BIN_EXE_parts_v3");
const V4_BAD: &str = env!("CARGO_BIN_EXE_parts_v4_bad");

#[test]
fn three_versions_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("parts.rekord");

    // v1 writes.
    let out = ok(V1, &db, &["write", "3"]);
    assert_eq!(out.lines().count(), 3);

    // v3 reads v1 records through its chain v1 -> v2 -> v3.
    let out = ok(V3, &db, &["dump"]);
    assert!(
        out.contains(
            r#"1@0 Part { name: "part-0", qty: 0, supplier: None, kind: Made { drawing: 0 } }"#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"3@0 Part { name: "part-2", qty: 2, supplier: None, kind: Made"#),
        "{out}"
    );

    // v3 writes its own records; v1 reads them by projection (unknown fields dropped, the
    // u64 quantity fits its u32).
    ok(V3, &db, &["write", "2"]);
    let out = ok(V1, &db, &["dump"]);
    assert!(
        out.contains(r#"4@0 Part { name: "part-0", qty: 0 }"#),
        "{out}"
    );
    assert!(
        out.contains(r#"5@0 Part { name: "part-1", qty: 1 }"#),
        "{out}"
    );
    assert!(
        out.contains(r#"1@0 Part { name: "part-0", qty: 0 }"#),
        "{out}"
    );

    // v2 reads both: v1 records get the default supplier, v3 records are projected.
    let out = ok(V2, &db, &["dump"]);
    assert!(
        out.contains(r#"1@0 Part { name: "part-0", qty: 0, supplier: None }"#),
        "{out}"
    );
    assert!(
        out.contains(r#"5@0 Part { name: "part-1", qty: 1, supplier: None }"#),
        "{out}"
    );
    assert_eq!(out.lines().count(), 5);

    // Older code never silently destroys newer fields: v1 may not update a v3 record...
    let (code, out) = run(V1, &db, &["update", "4", "0"]);
    assert_eq!(code, 2);
    assert!(out.starts_with("error NewerVersion"), "{out}");
    // ...but may update its own, and v3 still reads it.
    ok(V1, &db, &["update", "1", "0"]);
    let out = ok(V3, &db, &["dump"]);
    assert!(
        out.contains(r#"1@0 Part { name: "part-0", qty: 1,"#),
        "{out}"
    );

    // A type change without a migration is caught with a typed error naming the field.
    let (code, out) = run(V4_BAD, &db, &["dump"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("error Incompatible"), "{out}");
    assert!(out.contains("`qty`"), "{out}");

    // v3 migrates the tree for good; afterwards every record is version 3 and all versions
    // still read everything.
    let before = ok(V3, &db, &["kinds"]);
    assert!(before.contains('1') && before.contains('3'), "{before}");
    let out = ok(V3, &db, &["migrate", "2"]);
    assert!(out.contains("progress 0/3"), "{out}");
    assert!(out.contains("progress 3/3"), "{out}");
    assert!(out.contains("migrated 3 current 2 newer 0"), "{out}");
    assert_eq!(ok(V3, &db, &["kinds"]).trim(), "versions [3, 3, 3, 3, 3]");
    assert_eq!(ok(V1, &db, &["dump"]).lines().count(), 5);
    assert_eq!(ok(V2, &db, &["dump"]).lines().count(), 5);
    // Older code does not migrate newer records down.
    assert!(ok(V2, &db, &["migrate", "10"]).contains("migrated 0 current 0 newer 5"));
}

#[test]
fn a_migration_killed_midway_leaves_everything_readable_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.rekord");
    ok(V1, &base, &["write", "3000"]);
    let mut killed_midway = 0;
    for round in 0..8u64 {
        let db = dir.path().join(format!("round{round}.rekord"));
        std::fs::copy(&base, &db).unwrap();
        let mut child = Command::new(V3)
            .arg(&db)
            .args(["migrate", "25"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5 + round * round * 4));
        let _ = child.kill();
        child.wait().unwrap();
        // Whatever happened, every record reads with every version.
        let kinds = ok(V3, &db, &["kinds"]);
        if kinds.contains('1') && kinds.contains('3') {
            killed_midway += 1;
        }
        assert_eq!(ok(V1, &db, &["dump"]).lines().count(), 3000);
        assert_eq!(ok(V3, &db, &["dump"]).lines().count(), 3000);
        // Running it again finishes the job.
        let out = ok(V3, &db, &["migrate", "500"]);
        let last = out.lines().last().unwrap_or_default().to_owned();
        assert!(
            last.starts_with("migrated ") && last.ends_with("newer 0"),
            "{out}"
        );
        let kinds = ok(V3, &db, &["kinds"]);
        assert!(!kinds.contains('1'), "all migrated: {kinds}");
    }
    assert!(
        killed_midway > 0,
        "no kill landed in the middle of a migration; the test proved nothing"
    );
}
