//! `rekord-viewer` as a user runs it: a separate process on a database file an application
//! wrote (the viewer knows none of its types), and on a server as a replica.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::{Db, Key};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rekord-viewer");

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
}

#[rekord::record(tree = "notes", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub text: String,
}

/// An application's database: three parts (one released with a second revision) and a note.
fn app_db(path: &Path) -> Vec<Key<Part>> {
    let db = Db::open(path).unwrap();
    let parts = db.tree::<Part>().unwrap();
    let keys: Vec<_> = [("bolt", 3), ("nut", 10), ("washer", 3)]
        .into_iter()
        .map(|(n, q)| {
            parts
                .create(&Part {
                    name: n.into(),
                    qty: q,
                    unit: Unit::Box { count: 2 },
                })
                .unwrap()
        })
        .collect();
    parts.release(keys[1]).unwrap();
    parts.set_state(keys[1], 4).unwrap();
    parts.new_revision(keys[1]).unwrap();
    db.tree::<Note>()
        .unwrap()
        .create(&Note {
            text: "hello".into(),
        })
        .unwrap();
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

fn ok(db: &Path, args: &[&str]) -> String {
    let out = viewer(db, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(db: &Path, args: &[&str]) -> String {
    let out = viewer(db, args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn browse_a_database_without_its_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    let keys = app_db(&path);
    let bytes = std::fs::read(&path).unwrap();

    let trees = ok(&path, &["trees"]);
    assert!(
        trees.contains("notes") && trees.contains("parts"),
        "{trees}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&path, &["--json", "trees"])).unwrap();
    assert_eq!(json[1]["name"], "parts");
    assert_eq!(json[1]["records"], 4);
    assert_eq!(json[1]["versions"], serde_json::json!([1]));

    let schema = ok(&path, &["schema", "parts"]);
    assert!(
        schema.contains("struct Part {") && schema.contains("qty: u32,"),
        "{schema}"
    );
    assert!(
        schema.contains("Box {") && schema.contains("count: u32,"),
        "{schema}"
    );

    // ls: the latest revision of each record, with a summary; filters; --all; limits.
    let ls = ok(&path, &["ls", "parts"]);
    assert_eq!(ls.lines().count(), 4, "{ls}");
    assert!(
        ls.contains(r#"(name: "bolt", qty: 3, unit: Box(count: 2))"#),
        "{ls}"
    );
    assert!(ls.contains(&format!("{}@1", keys[1].id())), "{ls}");
    let qty3 = ok(&path, &["ls", "parts", "--where", "qty=3"]);
    assert_eq!(qty3.lines().count(), 3, "{qty3}");
    let named = ok(
        &path,
        &["ls", "parts", "--where", "name~was", "--where", "qty=3"],
    );
    assert_eq!(named.lines().count(), 2, "{named}");
    assert_eq!(ok(&path, &["ls", "parts", "--all"]).lines().count(), 5);
    assert_eq!(
        ok(&path, &["ls", "parts", "--limit", "1"]).lines().count(),
        2
    );
    let from = ok(&path, &["ls", "parts", "--from", &keys[2].id().to_string()]);
    assert_eq!(from.lines().count(), 2, "{from}");

    // get: one revision, every revision, JSON.
    let id = keys[1].id().to_string();
    let get = ok(&path, &["get", "parts", &format!("{id}@0")]);
    assert!(
        get.contains("released (state 4)") && get.contains("name: \"nut\""),
        "{get}"
    );
    let all: serde_json::Value =
        serde_json::from_str(&ok(&path, &["--json", "get", "parts", &id, "--all"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["state"], 4);
    assert_eq!(all[1]["data"]["unit"]["Box"]["count"], 2);

    // Mistakes are messages, never panics, and nothing is written.
    assert!(fails(&path, &["ls", "nope"]).contains("no tree `nope`"));
    assert!(fails(&path, &["get", "parts", "x@y"]).contains("not a key"));
    let e = fails(&path, &["get", "parts", "999999"]);
    assert!(e.contains("999999"), "{e}");
    let missing = dir.path().join("missing.rekord");
    assert!(fails(&missing, &["trees"]).contains("does not exist"));
    assert!(!missing.exists(), "the viewer never creates a database");
    let not_ours = dir.path().join("text.txt");
    std::fs::write(&not_ours, "hello").unwrap();
    let e = fails(&not_ours, &["trees"]);
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(std::fs::read(&not_ours).unwrap(), b"hello");
    // Browsing wrote nothing (the file is opened read-only).
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "browsing changed the file"
    );
}

#[test]
fn edit_a_database_without_its_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    let keys = app_db(&path);
    let id0 = keys[0].id().to_string();

    // Read-only unless asked.
    let e = fails(
        &path,
        &[
            "edit",
            "parts",
            &id0,
            "--ron",
            "(name: \"b\", qty: 1, unit: Piece)",
        ],
    );
    assert!(e.contains("--write"), "{e}");

    // Edit from RON; create; release; state; new revision; borrow and return.
    ok(
        &path,
        &[
            "--write",
            "edit",
            "parts",
            &id0,
            "--ron",
            "(name: \"bolt\", qty: 7, unit: Piece)",
        ],
    );
    let created = ok(
        &path,
        &[
            "--write",
            "--json",
            "create",
            "parts",
            "(unit: Piece, qty: 1, name: \"pin\")",
        ],
    );
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let new_id = created["created"]["id"].as_u64().unwrap();
    ok(&path, &["--write", "release", "parts", &id0]);
    ok(&path, &["--write", "state", "parts", &id0, "2"]);
    let rev = ok(&path, &["--write", "new-revision", "parts", &id0]);
    assert!(rev.contains(&format!("parts/{id0}@1")), "{rev}");
    ok(&path, &["--write", "return", "parts", &id0]);
    let e = fails(
        &path,
        &[
            "--write",
            "edit",
            "parts",
            &id0,
            "--ron",
            "(name: \"x\", qty: 1, unit: Piece)",
        ],
    );
    assert!(e.contains("borrow"), "{e}");
    ok(&path, &["--write", "borrow", "parts", &id0]);

    // A bad edit names line and column, and changes nothing.
    let e = fails(
        &path,
        &[
            "--write",
            "edit",
            "parts",
            &id0,
            "--ron",
            "(name: \"x\",\n qty: -1, unit: Piece)",
        ],
    );
    assert!(e.contains("line 2") && e.contains("qty"), "{e}");
    let e = fails(
        &path,
        &[
            "--write",
            "create",
            "parts",
            "(name: \"x\", qty: 1, unit: Crate)",
        ],
    );
    assert!(e.contains("Crate"), "{e}");

    // $EDITOR: a script that changes the quantity.
    let script = dir.path().join("ed.sh");
    std::fs::write(&script, "#!/bin/sh\nsed -i 's/qty: 7/qty: 8/' \"$1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--db"])
        .arg(&path)
        .args(["--write", "edit", "parts", &format!("{id0}@1")])
        .env("EDITOR", format!("sh {}", script.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the application reads back.
    let db = Db::open(&path).unwrap();
    let parts = db.tree::<Part>().unwrap();
    assert_eq!(parts.get(Key::new(keys[0].id(), 0)).unwrap().qty, 7);
    let meta0 = parts.meta(Key::new(keys[0].id(), 0)).unwrap();
    assert!(meta0.released && meta0.state == 2);
    assert_eq!(parts.get(Key::new(keys[0].id(), 1)).unwrap().qty, 8);
    assert_eq!(parts.get(Key::new(new_id, 0)).unwrap().name, "pin");
    assert_eq!(parts.len().unwrap(), 6);
}

#[test]
fn a_database_in_use_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    app_db(&path);
    let _open = Db::open(&path).unwrap();
    let e = fails(&path, &["trees"]);
    assert!(e.contains("in use") && e.contains("--server"), "{e}");
}

#[test]
fn export_and_import_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.rekord");
    let keys = app_db(&a);
    let dump = dir.path().join("a.ron");
    let out = ok(&a, &["export", "--out", dump.to_str().unwrap()]);
    assert!(out.contains("exported 5 records"), "{out}");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.starts_with("// rekord export 1\n["), "{text}");
    assert!(
        ron::from_str::<ron::Value>(text.trim_start_matches(|c| c != '[')).is_ok(),
        "the export is one RON document"
    );

    // Into a new database, read back by the application's types: identical.
    let b = dir.path().join("b.rekord");
    assert!(fails(&b, &["import", dump.to_str().unwrap()]).contains("--write"));
    let out = ok(&b, &["--write", "import", dump.to_str().unwrap()]);
    assert!(out.contains("imported 5 records"), "{out}");
    let again = dir.path().join("b.ron");
    ok(&b, &["export", "--out", again.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        text,
        "round trip not exact"
    );
    {
        let db = Db::open(&b).unwrap();
        let parts = db.tree::<Part>().unwrap();
        assert_eq!(parts.get(keys[0]).unwrap().name, "bolt");
        let meta = parts.meta(keys[1]).unwrap();
        assert!(meta.released && meta.state == 4);
        assert_eq!(parts.latest(keys[1].id()).unwrap().unwrap().rev(), 1);
        // New records get ids past the imported ones.
        let fresh = parts
            .create(&Part {
                name: "new".into(),
                qty: 1,
                unit: Unit::Piece,
            })
            .unwrap();
        assert!(keys.iter().all(|k| k.id() < fresh.id()));
    }

    // Importing again: every key exists already; nothing is written.
    let e = fails(&b, &["--write", "import", dump.to_str().unwrap()]);
    assert!(e.contains("already"), "{e}");
    let db = Db::open_read_only(&b).unwrap();
    assert_eq!(
        db.trees().unwrap().iter().map(|t| t.records).sum::<u64>(),
        6
    );
    drop(db);

    // A damaged line: named, and no record of the file is written.
    let bad = dir.path().join("bad.ron");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let last = lines
        .iter()
        .position(|l| l.contains("text: \"hello\""))
        .unwrap();
    lines[last] = lines[last].replace("text: \"hello\"", "text: 42");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let c = dir.path().join("c.rekord");
    let e = fails(&c, &["--write", "import", bad.to_str().unwrap()]);
    assert!(e.contains(&format!("line {}", last + 1)), "{e}");
    assert!(
        !c.exists(),
        "a failed import into a new file leaves no file"
    );
    // Cut short at a line boundary (the closing `]` missing): refused, nothing imported.
    let cut = dir.path().join("cut.ron");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&cut, lines[..lines.len() - 2].join("\n")).unwrap();
    let e = fails(&c, &["--write", "import", cut.to_str().unwrap()]);
    assert!(e.contains("closing"), "{e}");
    assert!(!c.exists());
    // Not an export at all.
    let e = fails(&c, &["--write", "import", a.to_str().unwrap()]);
    assert!(
        e.contains("not a rekord export") || e.contains("stream did not contain valid UTF-8"),
        "{e}"
    );
}

/// A `rekord-server` serving on loopback in this process, with a token that may write
/// everything and one that may only read.
struct Served {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    addr: String,
    token: String,
    reader: String,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), rekord_server::ServerError>>,
}

impl Served {
    fn start() -> Served {
        use rekord::proto::handshake::Trees;
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = rekord_server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data: dir.path().join("server"),
            app: "rekord".into(),
            ..Default::default()
        };
        let server = rt
            .block_on(async { rekord_server::Server::bind(config) })
            .unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let token = server
            .store()
            .issue("viewer", Trees::All, Trees::All)
            .unwrap();
        let reader = server
            .store()
            .issue("reader", Trees::All, Trees::Only(Vec::new()))
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = rt.spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Served {
            dir,
            rt,
            addr,
            token,
            reader,
            stop,
            serving,
        }
    }

    /// An application's synced replica (file `app.rekord`), with its first record (a
    /// bolt, which also brings the tree's schema to the server) pushed.
    fn app(&self) -> Db {
        let limit = std::time::Duration::from_secs(20);
        let app = Db::open_synced(
            self.dir.path().join("app.rekord"),
            rekord::SyncConfig::new(self.addr.parse().unwrap(), "rekord", self.token.as_str()),
        )
        .unwrap();
        app.wait_caught_up(limit).unwrap();
        app.tree::<Part>()
            .unwrap()
            .create(&Part {
                name: "bolt".into(),
                qty: 3,
                unit: Unit::Piece,
            })
            .unwrap();
        app.wait_pushed(limit).unwrap();
        app
    }

    /// The viewer as a replica of this server, with `token`.
    fn viewer(&self, token: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(BIN)
            .args(["--server", &self.addr, "--token", token, "--wait", "10"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.rt.block_on(self.serving).unwrap().unwrap();
    }
}

/// As a replica of a running server: the viewer lists what an application wrote, and
/// `follow` prints the application's changes as they happen.
#[test]
fn a_server_replica_lists_and_follows() {
    use std::io::BufRead as _;
    let served = Served::start();
    let (addr, token) = (served.addr.clone(), served.token.clone());
    let limit = std::time::Duration::from_secs(20);
    let app = served.app();
    let parts = app.tree::<Part>().unwrap();

    let viewer = |args: &[&str]| {
        Command::new(BIN)
            .args(["--server", &addr, "--token", &token])
            .args(args)
            .output()
            .unwrap()
    };
    let out = viewer(&["ls", "parts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = String::from_utf8(out.stdout).unwrap();
    assert!(
        ls.contains(r#"(name: "bolt", qty: 3, unit: Piece)"#),
        "{ls}"
    );

    // follow: started, then the application makes two changes.
    let mut child = Command::new(BIN)
        .args([
            "--server", &addr, "--token", &token, "follow", "--tree", "parts", "--count", "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It says on standard error when it follows (caught up, subscribed): then change.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("following"), "{line}");
    parts
        .create(&Part {
            name: "nut".into(),
            qty: 9,
            unit: Unit::Piece,
        })
        .unwrap();
    app.wait_pushed(limit).unwrap();
    parts
        .create(&Part {
            name: "washer".into(),
            qty: 1,
            unit: Unit::Piece,
        })
        .unwrap();
    app.wait_pushed(limit).unwrap();
    let lines: Vec<String> = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert!(child.wait().unwrap().success());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("created") && lines[0].contains("nut"),
        "{lines:?}"
    );
    assert!(lines[1].contains("washer"), "{lines:?}");

    // An edit through the server: refused while the application holds the record; once it
    // returns it, the viewer checks it out, edits and checks it in.
    let bolt = parts.keys().unwrap()[0];
    let edit = |qty: u32| {
        viewer(&[
            "--write",
            "edit",
            "parts",
            &bolt.id().to_string(),
            "--ron",
            &format!("(name: \"bolt\", qty: {qty}, unit: Piece)"),
        ])
    };
    let refused = edit(4);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("borrowed"),
        "{refused:?}"
    );
    parts.return_borrow(bolt).unwrap();
    app.wait_pushed(limit).unwrap();
    let out = edit(5);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = std::time::Instant::now();
    while parts.get(bolt).unwrap().qty != 5 {
        assert!(
            start.elapsed() < limit,
            "the edit never reached the application"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(parts.meta(bolt).unwrap().holder, 0, "checked in again");
    drop((parts, app));
    served.stop();
}

/// Each viewer run on a server is a replica of its own that ends with the command: it must
/// never leave a record borrowed (nobody could return it). A record it creates is checked
/// in at once; an edit whose text is refused, or whose editor fails, borrows nothing or
/// returns what it took; `borrow` without `--replica` is refused. A token that may write
/// nothing is told so at once, not after the wait.
#[test]
fn the_viewer_on_a_server_leaves_no_borrow_behind() {
    let served = Served::start();
    let limit = std::time::Duration::from_secs(20);
    let app = served.app();
    let parts = app.tree::<Part>().unwrap();
    let token = served.token.clone();
    let succeeds = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let free = |id: u64| {
        let start = std::time::Instant::now();
        loop {
            let key = parts.keys().unwrap().into_iter().find(|k| k.id() == id);
            if let Some(k) = key
                && parts.meta(k).unwrap().holder == 0
            {
                return k;
            }
            assert!(start.elapsed() < limit, "record {id} stayed borrowed");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let out = served.viewer(
        &token,
        &[
            "--write",
            "--json",
            "create",
            "parts",
            r#"(name: "from the viewer", qty: 1, unit: Piece)"#,
        ],
        &[],
    );
    succeeds(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = json["created"]["id"].as_u64().unwrap();
    let k = free(id);
    // The application can take it and give it back.
    parts.borrow(k).unwrap();
    parts.return_borrow(k).unwrap();
    app.wait_pushed(limit).unwrap();

    let sid = id.to_string();
    // A text that cannot be the record: refused before anything is borrowed.
    let out = served.viewer(
        &token,
        &[
            "--write",
            "edit",
            "parts",
            &sid,
            "--ron",
            r#"(name: "x", qty: "oops", unit: Piece)"#,
        ],
        &[],
    );
    assert!(!out.status.success());
    free(id);
    // An editor that fails (vim's :cq), or a file emptied to cancel.
    for editor in ["false", "sh -c ': > \"$1\"' --"] {
        let out = served.viewer(
            &token,
            &["--write", "edit", "parts", &sid],
            &[("EDITOR", editor)],
        );
        assert!(!out.status.success(), "{editor}");
        free(id);
    }
    // An editor that changes the record: edited, and checked in again.
    let out = served.viewer(
        &token,
        &["--write", "edit", "parts", &sid],
        &[("EDITOR", "sed -i s/qty:.1,/qty:8,/")],
    );
    succeeds(&out);
    let k = free(id);
    let start = std::time::Instant::now();
    while parts.get(k).unwrap().qty != 8 {
        assert!(
            start.elapsed() < limit,
            "the edit never reached the application"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // `borrow` by a replica that ends with the command: refused, nothing borrowed.
    let out = served.viewer(&token, &["--write", "borrow", "parts", &sid], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--replica"));
    free(id);
    // A token that may write nothing: told so, well before the wait ends.
    let start = std::time::Instant::now();
    let out = served.viewer(
        &served.reader.clone(),
        &[
            "--write",
            "create",
            "parts",
            r#"(name: "no", qty: 1, unit: Piece)"#,
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may write no tree"), "{err}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    drop((parts, app));
    served.stop();
}

/// `--write` on a synced replica's file is refused before the file is opened for writing:
/// not a byte of it changes.
#[test]
fn write_on_a_replica_file_changes_no_byte() {
    let served = Served::start();
    drop(served.app());
    let path = served.dir.path().join("app.rekord");
    let before = std::fs::read(&path).unwrap();
    for args in [
        &["--write", "trees"][..],
        &[
            "--write",
            "create",
            "parts",
            r#"(name: "x", qty: 1, unit: Piece)"#,
        ],
    ] {
        let err = fails(&path, args);
        assert!(err.contains("synced replica"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{args:?} changed the file"
        );
    }
    served.stop();
}

/// Files whose redb pages a red team damaged (a few flipped or zeroed bytes) made the
/// storage engine panic inside a read: the viewer says the file looks damaged, exits with
/// an error, never with a panic, and writes nothing.
#[test]
fn damaged_files_are_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["slice-range", "allocator", "unreachable"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/damaged")
            .join(format!("{name}.rekord"));
        let path = dir.path().join(format!("{name}.rekord"));
        std::fs::copy(&src, &path).unwrap();
        let before = std::fs::read(&path).unwrap();
        for args in [&["trees"][..], &["ls", "parts"], &["--json", "trees"]] {
            let out = viewer(&path, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name} {args:?}: {err}");
            assert!(!err.contains("panicked"), "{name} {args:?}: {err}");
            if err.contains("storage engine") {
                assert!(err.contains("looks damaged"), "{err}");
            }
            if args[0] == "--json" {
                let json: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("an error as JSON");
                assert!(json["error"].is_string(), "{json}");
            }
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "{name} changed");
    }
}

/// `ls --limit 0` lists nothing; `--json` edits that change nothing still print JSON;
/// `follow` on a file is refused (nothing could ever come: no other process can open the
/// file meanwhile) with the way to follow through the server.
#[test]
fn small_cli_edges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.rekord");
    let keys = app_db(&path);
    let ls = ok(&path, &["--json", "ls", "parts", "--limit", "0"]);
    assert_eq!(ls.trim(), "[]");
    let id = keys[0].id().to_string();
    let same = ok(&path, &["get", "parts", &id]);
    let ron: String = same.lines().skip(1).collect::<Vec<_>>().join("\n");
    let out = ok(
        &path,
        &["--write", "--json", "edit", "parts", &id, "--ron", &ron],
    );
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        json["edited"].is_object() || json["unchanged"].is_object(),
        "{json}"
    );
    let err = fails(&path, &["follow"]);
    assert!(err.contains("--server"), "{err}");
}

/// An import keeps only this database's own holder numbers (another database's would lock
/// its records for good: no server here to force them back), and refuses ids so high that
/// new records would find none after them.
#[test]
fn imports_free_foreign_holders_and_refuse_ids_past_2_pow_63() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app.rekord");
    app_db(&src);
    let out = viewer(&src, &["export", "--out", "-"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text
        .lines()
        .find(|l| l.starts_with("(tree: \"notes\""))
        .unwrap();
    let holder = first
        .split("holder: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_owned();
    // A server's holder number: imported free.
    let foreign = text.replace(
        first,
        &first.replace(&format!("holder: {holder},"), "holder: 77,"),
    );
    let file = dir.path().join("foreign.ron");
    std::fs::write(&file, &foreign).unwrap();
    let target = dir.path().join("foreign.rekord");
    ok(&target, &["--write", "import", file.to_str().unwrap()]);
    let ls = ok(&target, &["--json", "ls", "notes"]);
    let json: serde_json::Value = serde_json::from_str(ls.trim()).unwrap();
    assert_eq!(json[0]["holder"], 0, "{json}");
    // Its own holder number (an export of this kind of database) stays.
    let own = dir.path().join("own.rekord");
    let file = dir.path().join("own.ron");
    std::fs::write(&file, &text).unwrap();
    ok(&own, &["--write", "import", file.to_str().unwrap()]);
    let json: serde_json::Value =
        serde_json::from_str(ok(&own, &["--json", "ls", "notes"]).trim()).unwrap();
    assert_eq!(json[0]["holder"].to_string(), holder, "{json}");
    // An id past 2^63: refused, nothing made.
    let id = first
        .split("id: ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let high = text.replace(
        first,
        &first.replace(&format!("id: {id},"), "id: 18446744073709551614,"),
    );
    let file = dir.path().join("high.ron");
    std::fs::write(&file, &high).unwrap();
    let target = dir.path().join("high.rekord");
    let err = fails(&target, &["--write", "import", file.to_str().unwrap()]);
    assert!(err.contains("2^63"), "{err}");
    assert!(
        !target.exists(),
        "a failed import into a new file leaves none"
    );
}
