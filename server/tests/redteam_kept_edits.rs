//! Red team (review session) of 1467245b: an optimistic record edited while a reconciliation
//! fetches is kept instead of adopted. Variants where the server's version is *newer* (another
//! replica edited, removed or borrowed the record after the restore), so the kept edit meets
//! a conflict or a refusal. Each ends comparing every replica with a fresh one.
//!
//! Run: `cargo test -p rekord-server --test redteam_kept_edits -- --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use rekord::{Db, Key, SyncConfig, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, backup, restore, token};

#[path = "common/restore.rs"]
mod shared;
use shared::{Note, Part, converge_with, eventually, note, notes, open_with, parts, trace};

const LIMIT: Duration = Duration::from_secs(30);
/// Bound on B's reconciliation after the restore.
const RECONCILE: Duration = Duration::from_secs(120);

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token)
        .range_size(3)
        .timeout(Duration::from_secs(10))
}

fn open(path: &Path, addr: std::net::SocketAddr, token: &str) -> Db {
    open_with(path, config(addr, token))
}

#[derive(Clone, Copy, Debug)]
enum After {
    /// B edits m (a = 200) after its own reconciliation.
    Edit,
    /// B borrows m and removes it.
    Remove,
    /// B borrows m and keeps the borrow.
    Hold,
}

/// B makes m before the backup, edits it (a = 100) and makes many parts after it; A sees
/// everything. After the restore B reconciles first, then does `after` to m. A reconciles
/// while the application edits m (b += 1) in a loop: m sorts first, so edits land while A
/// fetches the parts, after m was decided as Adopt (server newer).
fn scenario(after: After) -> (u32, Option<(u32, u32)>) {
    trace();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (a_path, b_path) = (tmp.path().join("a.rekord"), tmp.path().join("b.rekord"));
    let backup_file = tmp.path().join("backup.redb");
    let m: Key<Note>;
    const PARTS: usize = 3000;
    {
        let a = open(&a_path, addr, &token);
        let b = open(&b_path, addr, &token);
        m = b
            .tree::<Note>()
            .unwrap()
            .create(&Note { a: 7, b: 7 })
            .unwrap();
        b.wait_pushed(LIMIT).unwrap();
        assert!(eventually("A to see m", || note(&a, m).is_some()));
        backup(&data, &backup_file);
        b.tree::<Note>().unwrap().update(m, |x| x.a = 100).unwrap();
        b.write(|w| {
            let mut t = w.tree::<Part>()?;
            for i in 0..PARTS {
                t.create(&Part {
                    name: format!("p{i}"),
                    qty: 1,
                })?;
            }
            Ok(())
        })
        .unwrap();
        b.wait_pushed(LIMIT).unwrap();
        assert!(eventually("A to see m edited and the parts", || note(
            &a, m
        ) == Some(
            (100, 7)
        ) && parts(&a).len()
            == PARTS));
    }
    let server = restore(server, &data, &backup_file);
    // B reconciles first: it makes again the 3,000 parts the restore lost, one fetch each
    // (three of these run at once in a debug build: 30 s was not always enough in CI).
    let b = Db::open_synced(&b_path, config(addr, &token)).unwrap();
    b.wait_caught_up(RECONCILE).unwrap();
    b.wait_pushed(LIMIT).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    match after {
        After::Edit => b.tree::<Note>().unwrap().update(m, |x| x.a = 200).unwrap(),
        After::Remove => {
            b.tree::<Note>().unwrap().borrow(m).unwrap();
            b.tree::<Note>().unwrap().remove(m).unwrap();
        }
        After::Hold => b.tree::<Note>().unwrap().borrow(m).unwrap(),
    }
    b.wait_pushed(LIMIT).unwrap();
    eprintln!("{after:?}: B's m {:?}", note(&b, m));
    let (a, events) =
        Db::open_synced_subscribed(&a_path, config(addr, &token).timeout(LIMIT)).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let t = a.tree::<Note>().unwrap();
    let start = std::time::Instant::now();
    let mut edits = 0u32;
    let mut restored = false;
    while !restored && start.elapsed() < LIMIT {
        if t.update(m, |x| x.b += 1).is_ok() {
            edits += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
        restored = events
            .try_iter()
            .any(|e| matches!(e, rekord::Event::Sync(SyncEvent::Restored { .. })));
    }
    assert!(restored, "A reported no restore");
    eprintln!(
        "{after:?}: {edits} edits of m while A reconciled; A's m {:?}",
        note(&a, m)
    );
    a.wait_pushed(LIMIT).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    let fresh = converge_with(config(addr, &token), &[("A", &a), ("B", &b)]);
    let out = note(&fresh, m);
    eprintln!(
        "{after:?}: m on the server {out:?}; notes {:?}; A status {:?}",
        notes(&fresh),
        a.sync_status()
    );
    drop((a, b, fresh));
    server.kill();
    (edits, out)
}

#[test]
fn kept_edit_meets_a_newer_edit_of_another_replica() {
    let (edits, m) = scenario(After::Edit);
    // Three-way: B's a = 200 and A's b edits both survive.
    assert_eq!(m, Some((200, 7 + edits)), "{edits} edits");
}

#[test]
fn kept_edit_meets_a_removal_by_another_replica() {
    let _ = scenario(After::Remove);
}

#[test]
fn kept_edit_meets_a_borrow_by_another_replica() {
    let (_, m) = scenario(After::Hold);
    assert!(m.is_some());
}
