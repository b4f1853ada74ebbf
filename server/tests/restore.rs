//! A server restored from a backup (issue 11): every replica of the lost history notices it
//! at its next handshake, sends again what it changed after the backup, takes back what
//! others changed, and ends identical to a fresh replica; no id range, sequence number or
//! holder number of the lost history is reused. Against a real `rekord-server` process,
//! backed up through its CLI while it runs, restored by replacing its file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use rekord::{Db, Key, SyncConfig, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, backup, restore, token};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(30);

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token).range_size(3)
}

/// Every part as (id, rev, name, qty, released), sorted.
fn parts(db: &Db) -> Vec<(u64, u32, String, u32, bool)> {
    let mut v: Vec<_> = db
        .tree::<Part>()
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            let k = r.key();
            (
                k.id(),
                k.rev(),
                r.name.to_string(),
                r.qty.to_native(),
                r.meta().released,
            )
        })
        .collect();
    v.sort();
    v
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn create(db: &Db, name: &str, qty: u32) -> Key<Part> {
    db.tree::<Part>()
        .unwrap()
        .create(&Part {
            name: name.into(),
            qty,
        })
        .unwrap()
}

/// The reproduction: a backup after the first changes, more changes by both
/// replicas, a restore; A comes back first and writes (reusing the lost sequence numbers
/// for new changes), then B. Before: A, B and a fresh replica ended in three different
/// states, and the restored server granted again id ranges it had granted before.
#[test]
fn a_restore_is_noticed_and_nothing_is_lost_or_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let a_path = tmp.path().join("a.rekord");
    let b_path = tmp.path().join("b.rekord");

    let (a1, b1, a3, b_own);
    {
        let a = Db::open_synced(&a_path, config(addr, &token)).unwrap();
        let b = Db::open_synced(&b_path, config(addr, &token)).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        b.wait_caught_up(LIMIT).unwrap();
        a1 = create(&a, "a1", 1);
        b1 = create(&b, "b1", 1);
        a.wait_pushed(LIMIT).unwrap();
        b.wait_pushed(LIMIT).unwrap();
        backup(&data, &tmp.path().join("backup.redb"));
        // After the backup: A edits its record and makes more (new ranges: 3 ids each);
        // B returns its record, A borrows and changes it; B makes one and releases it.
        a.tree::<Part>()
            .unwrap()
            .update(a1, |p| p.qty = 10)
            .unwrap();
        a3 = (0..4)
            .map(|i| create(&a, &format!("a-late-{i}"), i))
            .collect::<Vec<_>>();
        b.tree::<Part>().unwrap().return_borrow(b1).unwrap();
        b.wait_pushed(LIMIT).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        eventually("B's return to reach A", || {
            a.tree::<Part>().unwrap().meta(b1).unwrap().holder == 0
        });
        a.tree::<Part>().unwrap().borrow(b1).unwrap();
        a.tree::<Part>()
            .unwrap()
            .update(b1, |p| p.qty = 20)
            .unwrap();
        b_own = create(&b, "b-late", 5);
        b.tree::<Part>().unwrap().release(b_own).unwrap();
        a.wait_pushed(LIMIT).unwrap();
        b.wait_pushed(LIMIT).unwrap();
        eventually("A and B to agree before the restore", || {
            parts(&a) == parts(&b) && parts(&a).len() == 7
        });
    }
    let before = {
        let a = Db::open_synced(&a_path, config(addr, &token)).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        parts(&a)
    };

    let server = restore(server, &data, &tmp.path().join("backup.redb"));
    // A comes back first, reconciles and writes; then B.
    let (a, sub_a) = Db::open_synced_subscribed(&a_path, config(addr, &token)).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    let a_new = create(&a, "a-after", 7);
    a.wait_pushed(LIMIT).unwrap();
    let b = Db::open_synced(&b_path, config(addr, &token)).unwrap();
    b.wait_caught_up(LIMIT).unwrap();
    b.wait_pushed(LIMIT).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    a.wait_pushed(LIMIT).unwrap();

    // A reported the restore and sent its own later changes again.
    let mut restored = None;
    for e in sub_a.try_iter() {
        if let rekord::Event::Sync(SyncEvent::Restored { common, resent, .. }) = e {
            restored = Some((common, resent));
        }
    }
    let (common, resent) = restored.expect("A reported no restore");
    assert!(
        common > 0,
        "the histories share the changes before the backup"
    );
    assert!(
        resent >= 5,
        "A changed a1, b1 and four new records: {resent}"
    );

    // A fresh replica, A and B agree, and hold everything made before the restore plus
    // the new record.
    let fresh = Db::memory_synced(config(addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    let start = Instant::now();
    loop {
        let _ = fresh.wait_caught_up(LIMIT);
        let f = parts(&fresh);
        if f.len() == 8 && parts(&a) == f && parts(&b) == f {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "A, B and a fresh replica differ:\nA {:?}\nB {:?}\nF {:?}\nA {:?}\nB {:?}",
            parts(&a),
            parts(&b),
            f,
            a.sync_status().unwrap(),
            b.sync_status().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut expected = before.clone();
    expected.push((a_new.id(), a_new.rev(), "a-after".into(), 7, false));
    expected.sort();
    assert_eq!(parts(&fresh), expected);
    let t = fresh.tree::<Part>().unwrap();
    assert_eq!(t.get(a1).unwrap().qty, 10);
    assert_eq!(t.get(b1).unwrap().qty, 20);
    assert!(t.meta(b_own).unwrap().released);
    assert_eq!(a3.len(), 4);

    // Ids: a new client creating on the restored server never gets the ids the lost
    // history granted (A's and B's later records keep theirs, and differ from C's).
    let c = Db::memory_synced(config(addr, &token)).unwrap();
    c.wait_caught_up(LIMIT).unwrap();
    let c_keys: Vec<u64> = (0..6).map(|i| create(&c, "c", i).id()).collect();
    c.wait_pushed(LIMIT).unwrap();
    let taken: Vec<u64> = expected.iter().map(|p| p.0).collect();
    for id in &c_keys {
        assert!(!taken.contains(id), "id {id} granted twice");
    }
    // Borrows: A holds what it held (a1, its late records, b1); B holds b-late.
    let meta_a = |k: Key<Part>| fresh.tree::<Part>().unwrap().meta(k).unwrap().holder;
    eventually("the borrows to be as before the restore", || {
        let _ = fresh.wait_caught_up(LIMIT);
        meta_a(a1) == a.sync_status().unwrap().replica.unwrap()
            && meta_a(b1) == a.sync_status().unwrap().replica.unwrap()
            && meta_a(b_own) == b.sync_status().unwrap().replica.unwrap()
    });
    drop((a, b, c, fresh));
    server.kill();
}

/// Restoring the same backup twice starts two histories: changes made between the two
/// restores are reconciled like any others (a history id that came back with the file
/// would have hidden them).
#[test]
fn restoring_the_same_backup_twice_is_noticed_both_times() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let a_path = tmp.path().join("a.rekord");
    let backup_file = tmp.path().join("backup.redb");
    {
        let a = Db::open_synced(&a_path, config(addr, &token)).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        create(&a, "first", 1);
        a.wait_pushed(LIMIT).unwrap();
        backup(&data, &backup_file);
    }
    let server = restore(server, &data, &backup_file);
    let later = {
        let a = Db::open_synced(&a_path, config(addr, &token)).unwrap();
        a.wait_caught_up(LIMIT).unwrap();
        let k = create(&a, "between the restores", 2);
        a.wait_pushed(LIMIT).unwrap();
        k
    };
    let server = restore(server, &data, &backup_file);
    let a = Db::open_synced(&a_path, config(addr, &token)).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    a.wait_pushed(LIMIT).unwrap();
    let fresh = Db::memory_synced(config(addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    eventually(
        "the record made between the restores to reach a fresh replica",
        || {
            let _ = fresh.wait_caught_up(LIMIT);
            fresh.tree::<Part>().unwrap().contains(later).unwrap()
        },
    );
    assert_eq!(parts(&fresh), parts(&a));
    assert_eq!(parts(&fresh).len(), 2);
    drop((a, fresh));
    server.kill();
}

/// Other replicas' changes the server lost are taken back (and reported); their author
/// sends them again when it returns, and then every replica has them.
#[test]
fn changes_of_a_replica_that_stays_away_are_reported_then_return_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let w_path = tmp.path().join("w.rekord");
    let r_path = tmp.path().join("r.rekord");
    let backup_file = tmp.path().join("backup.redb");
    let late = {
        let w = Db::open_synced(&w_path, config(addr, &token)).unwrap();
        let r = Db::open_synced(&r_path, config(addr, &token)).unwrap();
        w.wait_caught_up(LIMIT).unwrap();
        create(&w, "kept", 1);
        w.wait_pushed(LIMIT).unwrap();
        backup(&data, &backup_file);
        let late = create(&w, "late", 2);
        w.wait_pushed(LIMIT).unwrap();
        eventually("R to have W's late record", || {
            let _ = r.wait_caught_up(LIMIT);
            r.tree::<Part>().unwrap().contains(late).unwrap()
        });
        late
    };
    let server = restore(server, &data, &backup_file);
    // R alone: the late record is not on the server, so R drops it and says so.
    {
        let (r, sub) = Db::open_synced_subscribed(&r_path, config(addr, &token)).unwrap();
        r.wait_caught_up(LIMIT).unwrap();
        let mut lost = None;
        let start = Instant::now();
        while lost.is_none() && start.elapsed() < LIMIT {
            if let Some(rekord::Event::Sync(SyncEvent::Restored { lost: l, .. })) =
                sub.recv_timeout(Duration::from_millis(100))
            {
                lost = Some(l);
            }
        }
        assert_eq!(
            lost.expect("R reported no restore"),
            vec![("parts".to_owned(), late.id())]
        );
        assert!(!r.tree::<Part>().unwrap().contains(late).unwrap());
    }
    // W returns: it sends the record again, and R receives it.
    let w = Db::open_synced(&w_path, config(addr, &token)).unwrap();
    w.wait_caught_up(LIMIT).unwrap();
    w.wait_pushed(LIMIT).unwrap();
    let r = Db::open_synced(&r_path, config(addr, &token)).unwrap();
    eventually("R to have the late record again", || {
        let _ = r.wait_caught_up(LIMIT);
        r.tree::<Part>().unwrap().contains(late).unwrap()
    });
    assert_eq!(parts(&r), parts(&w));
    drop((w, r));
    server.kill();
}
