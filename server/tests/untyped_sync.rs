//! The untyped API on a synced replica, against a real `rekord-server` process: a tool that
//! knows no record types (the viewer) edits through the server's borrows, and typed
//! applications on other replicas see its edits; a refused borrow is the same typed error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use rekord::{Db, Error, Key};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, config, token};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(30);

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_untyped_replica_edits_through_the_servers_borrows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let app = Db::open_synced(tmp.path().join("app.rekord"), config(server.addr, &token)).unwrap();
    let viewer = Db::open_synced(
        tmp.path().join("viewer.rekord"),
        config(server.addr, &token),
    )
    .unwrap();
    app.wait_caught_up(LIMIT).unwrap();
    viewer.wait_caught_up(LIMIT).unwrap();
    let parts = app.tree::<Part>().unwrap();
    let k = parts
        .create(&Part {
            name: "bolt".into(),
            qty: 1,
        })
        .unwrap();
    app.wait_pushed(LIMIT).unwrap();
    eventually("the viewer to see the part and its schema", || {
        viewer
            .dyn_tree("parts")
            .is_ok_and(|t| t.get(k.raw()).is_ok())
    });
    let t = viewer.dyn_tree("parts").unwrap();

    // The app holds it: the viewer's borrow is refused by the server, naming the holder.
    match t.borrow(k.raw()) {
        Err(Error::AlreadyBorrowed { holder, .. }) => assert_eq!(holder, app.replica()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        t.replace_ron(k.raw(), "(name: \"bolt\", qty: 2)"),
        Err(Error::NotBorrowed { .. })
    ));

    // Returned by the app, the viewer borrows, edits and creates; the app sees both.
    parts.return_borrow(k).unwrap();
    app.wait_pushed(LIMIT).unwrap();
    eventually("the return to reach the viewer", || {
        t.get(k.raw()).unwrap().meta.holder == 0
    });
    t.borrow(k.raw()).unwrap();
    t.replace_ron(k.raw(), "(name: \"bolt\", qty: 99)").unwrap();
    let n = t.create_ron("(name: \"nut\", qty: 5)").unwrap();
    viewer.wait_pushed(LIMIT).unwrap();
    eventually("the app to see the viewer's edit and record", || {
        parts.get(k).is_ok_and(|p| p.qty == 99)
            && parts
                .get(Key::new(n.id, n.rev))
                .is_ok_and(|p| p.name == "nut")
    });
    assert_eq!(parts.meta(k).unwrap().holder, viewer.replica());
    assert_eq!(viewer.sync_status().unwrap().rejected, 0);
    drop((parts, t, app, viewer));
    server.kill();
}
