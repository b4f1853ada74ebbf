//! Red team of the writes a replica makes to a record it waits to take back after a restore
//! (issue 11): the server refuses them until the borrow is back, and they wait whole, with
//! the record, in `rekord.deferred` (sent again after the take-back, rejected and reported
//! if another replica takes the record first). Same setup as redteam_reclaim.rs: B created
//! x (qty 1, backup), then B set 2 and returned, A borrowed and set 50; the server is
//! restored (B holds x there, qty 1); A came back first and waits to take x back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unused_imports
)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rekord::{Db, Error, Event, Key, SyncConfig, SyncEvent, WriteMode};

#[path = "common/process.rs"]
mod process;
use process::{BIN, ServerProcess, backup, restore, token};

#[path = "common/restore.rs"]
mod shared;
use shared::{Note, Part, Row, converge_with, open_with, parts, trace};

const CHILD_ENV: &str = "REKORD_WAIT_CHILD";

#[path = "common/reclaim.rs"]
mod reclaim;
use reclaim::*;

// ---- helpers of these scenarios ----

/// A (online, waiting) sets x's qty; the server refuses it (B holds x) and A absorbs it.
fn a_edits_while_waiting(env: &Env, qty: u32) {
    let a = env.open(&env.pa);
    settle(&[&a]);
    a.tree::<Part>()
        .unwrap()
        .update(env.x, |p| p.qty = qty)
        .unwrap();
    settle(&[&a]);
    std::thread::sleep(Duration::from_millis(500));
    let st = a.sync_status().unwrap();
    eprintln!("A after its edit while waiting: {:?} {st:?}", parts(&a));
    assert_eq!(st.rejected, 0, "waiting, not rejected");
    assert_eq!(st.outbox, 1, "waiting with the record, still to push");
    assert_eq!(st.waiting, 1, "counted as waiting for the take-back");
    let e = a.wait_pushed(Duration::from_millis(200)).unwrap_err();
    assert!(
        matches!(&e, Error::Offline { reason, .. } if reason.contains("taken back")),
        "wait_pushed names the waiting write: {e}"
    );
    assert_eq!(parts(&a)[0].3, qty);
}

/// A reopened (subscribed from the start): the ids it reports superseded, and its
/// persistent count of rejected entries.
fn a_reports(env: &Env, cfg: SyncConfig) -> (Vec<u64>, u64) {
    let (a, events) = Db::open_synced_subscribed(&env.pa, cfg).unwrap();
    let _ = a.wait_caught_up(LIMIT);
    settle(&[&a]);
    std::thread::sleep(Duration::from_millis(500));
    settle(&[&a]);
    let sup: Vec<u64> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::Sync(SyncEvent::Superseded { id, .. }) => Some(id),
            _ => None,
        })
        .collect();
    let rejected = a.sync_status().unwrap().rejected;
    (sup, rejected)
}

/// A's persistent count of rejected entries (rekord.outbox_rejected), reopened.
fn a_rejected(env: &Env) -> u64 {
    let a = env.open(&env.pa);
    settle(&[&a]);
    a.sync_status().unwrap().rejected
}

fn offline(env: &Env) -> Db {
    Db::open_synced(&env.pa, config("127.0.0.1:9".parse().unwrap(), &env.token)).unwrap()
}

// ---- S1: the waiting record is borrowed by another replica after the edit was absorbed ----

/// A edits x while waiting (absorbed: not rejected, not in the outbox); A goes away; B
/// returns, C borrows, edits (77), returns; A comes back: C's borrow clears A's reclaim
/// row and A refetches C's version. A's edit 51 is lost: is it reported anywhere?
#[test]
fn rw_absorbed_edit_then_other_borrows_while_away() {
    let env = setup();
    a_edits_while_waiting(&env, 51);
    env.b_returns();
    env.c_edits(77, true);
    let (sup, rejected) = a_reports(&env, config(env.addr, &env.token));
    let got = env.converge_all();
    eprintln!("x {got:?}, A rejected {rejected}, superseded {sup:?}");
    assert_eq!(got.map(|r| r.3), Some(77), "C's borrow stands");
    assert!(
        rejected >= 1 && sup.contains(&env.x.id()),
        "A reports its edit lost (rejected {rejected}, superseded {sup:?})"
    );
}

/// As above, but A makes the edit offline; when it reconnects the flush (before the
/// catch-up) is refused with AlreadyBorrowed(C) while x still waits, then the catch-up
/// applies C's borrow.
#[test]
fn rw_offline_edit_while_waiting_then_other_borrows() {
    let env = setup();
    {
        let a = offline(&env);
        a.tree::<Part>()
            .unwrap()
            .update(env.x, |p| p.qty = 51)
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    env.b_returns();
    env.c_edits(77, true);
    let (sup, rejected) = a_reports(&env, config(env.addr, &env.token));
    let got = env.converge_all();
    eprintln!("x {got:?}, A rejected {rejected}, superseded {sup:?}");
    assert_eq!(got.map(|r| r.3), Some(77), "C's borrow stands");
    assert!(
        rejected >= 1 && sup.contains(&env.x.id()),
        "A reports its offline edit lost (rejected {rejected}, superseded {sup:?})"
    );
}

// ---- S2: one entry touching a waiting record and a normal one ----

/// A creates y (it holds it), then one batch sets x (waiting) and y. The server refuses
/// the entry (x); it is set aside and reported, y is refetched. Does x's half of the
/// rejected batch still reach the server once A takes x back?
fn batch_env(through: bool) -> (Env, Key<Part>, Result<(), Error>, Vec<Row>, u64) {
    let env = setup();
    let mut cfg = config(env.addr, &env.token);
    if through {
        cfg = cfg.write_mode(WriteMode::Through);
    }
    let a = open_with(&env.pa, cfg);
    settle(&[&a]);
    let t = a.tree::<Part>().unwrap();
    let y = t
        .create(&Part {
            name: "y".into(),
            qty: 5,
        })
        .unwrap();
    settle(&[&a]);
    assert!(eventually(|| env.server_x().is_some() && {
        let f = env.fresh();
        parts(&f).iter().any(|r| r.0 == y.id())
    }));
    let x = env.x;
    let r = a.write(|b| {
        let mut t = b.tree::<Part>()?;
        t.update(x, |p| p.qty = 51)?;
        t.update(y, |p| p.qty = 6)?;
        Ok(())
    });
    settle(&[&a]);
    std::thread::sleep(Duration::from_millis(500));
    let st = a.sync_status().unwrap();
    let after = parts(&a);
    eprintln!("A after the batch: {r:?} {after:?} {st:?}");
    drop((t, a));
    (env, y, r, after, st.rejected)
}

#[test]
fn rw_batch_waiting_and_normal_record() {
    let (env, y, r, after, rejected) = batch_env(false);
    assert!(r.is_ok());
    env.b_returns();
    let got = env.converge_all();
    let fresh = env.fresh();
    let all = parts(&fresh);
    eprintln!("fresh: {all:?}; A's rejected {rejected}; A after the refusal {after:?}");
    let yq = all.iter().find(|r| r.0 == y.id()).map(|r| r.3);
    let xq = got.map(|r| r.3);
    assert_eq!(rejected, 0, "the batch waited with x, it was not rejected");
    assert_eq!(
        (xq, yq),
        (Some(51), Some(6)),
        "the whole batch landed after the take-back"
    );
}

#[test]
fn rw_batch_waiting_and_normal_record_write_through() {
    let (env, y, r, after, _) = batch_env(true);
    let xa = after.iter().find(|r| r.0 == env.x.id()).map(|r| r.3);
    let ya = after.iter().find(|r| r.0 == y.id()).map(|r| r.3);
    eprintln!("write-through batch: {r:?}; A has x {xa:?} y {ya:?}");
    env.b_returns();
    let got = env.converge_all();
    eprintln!("converged x {got:?}");
    assert!(
        matches!(&r, Err(Error::Unconfirmed { .. })),
        "the write-through writer is told the batch is not confirmed yet: {r:?}"
    );
    assert_eq!((xa, ya), (Some(51), Some(6)), "kept locally while waiting");
    let fresh = env.fresh();
    let yq = parts(&fresh).iter().find(|r| r.0 == y.id()).map(|r| r.3);
    assert_eq!(
        (got.map(|r| r.3), yq),
        (Some(51), Some(6)),
        "the whole batch landed"
    );
}

// ---- S3: a return while waiting ----

/// A (waiting, its copy says it holds x) returns x. The server takes a return of a record
/// the client does not hold as a no-op (Applied), so the new code's `held`-clearing branch
/// never runs. After B returns, does A keep the borrow it returned?
#[test]
fn rw_return_while_waiting_then_take_back() {
    let env = setup();
    {
        let a = env.open(&env.pa);
        settle(&[&a]);
        let t = a.tree::<Part>().unwrap();
        let r = t.return_borrow(env.x);
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(300));
        eprintln!(
            "A's return while waiting: {r:?}; {:?} {:?}",
            parts(&a),
            a.sync_status()
        );
        r.unwrap();
    }
    env.b_returns();
    let a = env.open(&env.pa);
    settle(&[&a]);
    std::thread::sleep(Duration::from_millis(500));
    drop(a);
    let got = env.converge_all();
    eprintln!("x {got:?} (A is {})", env.a_replica);
    assert_eq!(
        qty_holder(got),
        Some((50, 0)),
        "A's copy is sent again and the borrow A returned is returned"
    );
}

// ---- S4: the client killed right after the absorbed refusal ----

#[test]
fn rw_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.splitn(4, '|');
    let (path, addr, token, id) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    let db = Db::open_synced(path, config(addr.parse().unwrap(), token)).unwrap();
    if id != "-" {
        db.wait_caught_up(LIMIT).unwrap();
        let x: Key<Part> = Key::new(id.parse().unwrap(), 0);
        db.tree::<Part>()
            .unwrap()
            .update(x, |p| p.qty = 51)
            .unwrap();
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "@ edited").unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
    drop(db);
}

fn spawn_editor(env: &Env) -> Child {
    spawn_child(&env.pa, env.addr, &env.token, &env.x.id().to_string())
}

fn spawn_child(path: &Path, addr: std::net::SocketAddr, token: &str, id: &str) -> Child {
    let mut child = process::child(
        "rw_child_process",
        CHILD_ENV,
        format!("{}|{}|{}|{}", path.display(), addr, token, id),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child exited");
        if line.contains("@ edited") {
            break;
        }
    }
    child
}

#[test]
fn rw_killed_after_the_absorbed_refusal() {
    let _ = BIN;
    for delay in [0u64, 5, 20, 60, 200, 600] {
        let env = setup();
        let mut child = spawn_editor(&env);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        child.wait().unwrap();
        {
            let a = env.open(&env.pa);
            settle(&[&a]);
            std::thread::sleep(Duration::from_millis(300));
            eprintln!(
                "delay {delay}: A reopened {:?} {:?}",
                parts(&a),
                a.sync_status()
            );
        }
        env.b_returns_any();
        let got = env.converge_all();
        let rejected = a_rejected(&env);
        eprintln!("delay {delay}: x {got:?} rejected {rejected}");
        assert_eq!(got.map(|r| r.3), Some(51), "delay {delay}: A's edit kept");
        assert_eq!(rejected, 0, "delay {delay}");
    }
}

// ---- S5: a write-through writer ----

#[test]
fn rw_write_through_edit_while_waiting() {
    let env = setup();
    {
        let a = open_with(
            &env.pa,
            config(env.addr, &env.token).write_mode(WriteMode::Through),
        );
        settle(&[&a]);
        let r = a.tree::<Part>().unwrap().update(env.x, |p| p.qty = 51);
        eprintln!("write-through update while waiting: {r:?}");
        assert!(matches!(r, Err(Error::Unconfirmed { .. })), "{r:?}");
        // A second write-through edit, after the first was absorbed.
        let r2 = a.tree::<Part>().unwrap().update(env.x, |p| p.qty = 52);
        eprintln!("second: {r2:?}");
        assert!(matches!(r2, Err(Error::Unconfirmed { .. })), "{r2:?}");
        assert_eq!(a.sync_status().unwrap().rejected, 0);
    }
    env.b_returns_any();
    let got = env.converge_all();
    assert_eq!(got.map(|r| r.3), Some(52));
}

// ---- S6: removal and release while waiting ----

#[test]
fn rw_remove_while_waiting() {
    let env = setup();
    {
        let a = env.open(&env.pa);
        settle(&[&a]);
        let r = a.tree::<Part>().unwrap().remove(env.x);
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(300));
        eprintln!(
            "remove while waiting: {r:?} {:?} {:?}",
            parts(&a),
            a.sync_status()
        );
        r.unwrap();
    }
    env.b_returns_any();
    let got = env.converge_all();
    let rejected = a_rejected(&env);
    eprintln!("x {got:?} rejected {rejected}");
    assert!(
        got.is_none() || rejected > 0,
        "A's removal: x {got:?}, rejected {rejected}"
    );
}

#[test]
fn rw_release_then_new_revision_while_waiting() {
    let env = setup();
    {
        let a = env.open(&env.pa);
        settle(&[&a]);
        let t = a.tree::<Part>().unwrap();
        t.release(env.x).unwrap();
        let x1 = t.new_revision(env.x).unwrap();
        t.update(x1, |p| p.qty = 60).unwrap();
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(300));
        eprintln!(
            "release+rev while waiting: {:?} {:?}",
            parts(&a),
            a.sync_status()
        );
    }
    env.b_returns_any();
    let a = env.open(&env.pa);
    settle(&[&a]);
    std::thread::sleep(Duration::from_millis(500));
    drop(a);
    let _ = env.converge_all();
    let f = env.fresh();
    let all = parts(&f);
    let rejected = a_rejected(&env);
    eprintln!("fresh {all:?} rejected {rejected}");
    assert!(
        all.iter().any(|r| r.1 == 1 && r.3 == 60) || rejected > 0,
        "A's release and new revision: {all:?}, rejected {rejected}"
    );
}

// ---- S7: a second restore while the absorbed edit waits ----

/// A absorbs its edit (51); backup 2; the server is restored to backup 2 (same state, new
/// lineage); A reconnects (still waiting), B returns: 51 everywhere?
#[test]
fn rw_second_restore_while_the_edit_waits() {
    let mut env = setup();
    a_edits_while_waiting(&env, 51);
    let bk2 = env.data.parent().unwrap().join("bk2.redb");
    env.backup(&bk2);
    env.restore(&bk2);
    {
        let a = env.open(&env.pa);
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(300));
        eprintln!("A after restore 2: {:?} {:?}", parts(&a), a.sync_status());
    }
    env.b_returns_any();
    let got = env.converge_all();
    assert_eq!(got.map(|r| r.3), Some(51));
}

/// A absorbs its edit, B returns and A takes x back and resends 51 (held by A); backup 2
/// was taken before B's return; the server is restored to it: A waits again (B holds x
/// there); B comes back and returns: 51 everywhere, held by A?
#[test]
fn rw_second_restore_after_the_take_back() {
    let mut env = setup();
    a_edits_while_waiting(&env, 51);
    let bk2 = env.data.parent().unwrap().join("bk2.redb");
    env.backup(&bk2);
    {
        let a = env.open(&env.pa);
        settle(&[&a]);
        env.b_returns_any();
        settle(&[&a]);
        assert!(
            eventually(|| qty_holder(env.server_x()) == Some((51, env.a_replica))),
            "A took x back: {:?}",
            env.server_x()
        );
    }
    env.restore(&bk2);
    {
        let a = env.open(&env.pa);
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(300));
        eprintln!("A after restore 2: {:?} {:?}", parts(&a), a.sync_status());
    }
    env.b_returns_any();
    let got = env.converge_all();
    assert_eq!(qty_holder(got), Some((51, env.a_replica)));
}

// ---- S8: outside the subscription ----

/// A, subscribed to `notes` only, edits x while waiting (absorbed; its retry skips trees
/// outside the subscription); B returns and C borrows, edits, returns; A reopens with
/// everything.
#[test]
fn rw_absorbed_edit_outside_the_subscription() {
    let env = setup();
    {
        let a = open_with(&env.pa, config(env.addr, &env.token).trees(["notes"]));
        settle(&[&a]);
        a.tree::<Part>()
            .unwrap()
            .update(env.x, |p| p.qty = 51)
            .unwrap();
        settle(&[&a]);
        std::thread::sleep(Duration::from_millis(300));
        eprintln!(
            "A (notes only) after the edit: {:?} {:?}",
            parts(&a),
            a.sync_status()
        );
    }
    env.b_returns();
    env.c_edits(77, true);
    let (sup, rejected) = a_reports(&env, config(env.addr, &env.token));
    let got = env.converge_all();
    eprintln!("x {got:?}, A rejected {rejected}, superseded {sup:?}");
    assert!(
        got.as_ref().is_some_and(|r| r.3 == 51) || rejected > 0 || sup.contains(&env.x.id()),
        "A's edit (51) lost (x {got:?}) without a report (rejected {rejected}, superseded {sup:?})"
    );
}

// ---- S9: what the app is told about the absorbed write ----

/// `Db::wait_pushed` is documented as "every local write committed so far has been
/// accepted by the server"; `SyncEvent::Pushed` as "a local write was accepted by the
/// server". After an absorbed edit, does either claim it was accepted?
#[test]
fn rw_wait_pushed_after_absorbed_edit() {
    let env = setup();
    let (a, events) = Db::open_synced_subscribed(&env.pa, config(env.addr, &env.token)).unwrap();
    a.wait_caught_up(LIMIT).unwrap();
    settle(&[&a]);
    let _ = events.try_iter().count();
    a.tree::<Part>()
        .unwrap()
        .update(env.x, |p| p.qty = 51)
        .unwrap();
    let pushed = a.wait_pushed(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    let evs: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::Sync(s) => Some(format!("{s:?}")),
            _ => None,
        })
        .collect();
    let server = env.server_x();
    eprintln!(
        "wait_pushed {pushed:?}; events {evs:?}; server x {server:?}; status {:?}",
        a.sync_status()
    );
    assert!(
        pushed.is_err() && server.as_ref().is_some_and(|r| r.3 == 1),
        "the edit waits: not pushed ({pushed:?}), the server has {server:?}; events {evs:?}"
    );
    assert!(
        !evs.iter().any(|e| e.starts_with("Pushed")),
        "no Pushed event for it: {evs:?}"
    );
    assert_eq!(a.sync_status().unwrap().waiting, 1);
    // B (the stale holder) reconciles while A stays online: A sees the return live, takes
    // x back, and its waiting edit goes out.
    env.b_returns_any();
    a.wait_pushed(LIMIT).unwrap();
    let st = a.sync_status().unwrap();
    assert_eq!((st.outbox, st.waiting, st.rejected), (0, 0, 0), "{st:?}");
    assert_eq!(env.server_x().map(|r| r.3), Some(51), "A's edit arrived");
}

// ---- S10: the recheck noted with the refusal (no restore) ----

/// A holds z; an administrator takes the borrow back; A, offline, edits z; A (a child
/// process) connects, the edit is refused, and A is killed at `delay`; reopened, A must
/// end with the server's z (not its refused draft) and report the refusal.
#[test]
fn rw_killed_between_a_refusal_and_its_refetch() {
    trace();
    for delay in [0u64, 10, 30, 60, 120, 300] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("server");
        let token = token(&data);
        let server = ServerProcess::start(&data, "127.0.0.1:0");
        let addr = server.addr;
        let pa = tmp.path().join("a.rekord");
        let z = {
            let a = open_with(&pa, config(addr, &token));
            let z = a
                .tree::<Part>()
                .unwrap()
                .create(&Part {
                    name: "z".into(),
                    qty: 1,
                })
                .unwrap();
            settle(&[&a]);
            z
        };
        let out = Command::new(BIN)
            .arg("--data")
            .arg(&data)
            .args(["borrow", "force-return", "--tree", "parts", "--id"])
            .arg(z.id().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        {
            let a = Db::open_synced(&pa, config("127.0.0.1:9".parse().unwrap(), &token)).unwrap();
            a.tree::<Part>().unwrap().update(z, |p| p.qty = 9).unwrap();
        }
        let mut child = spawn_child(&pa, addr, &token, "-");
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        child.wait().unwrap();
        let a = open_with(&pa, config(addr, &token));
        settle(&[&a]);
        let fresh = converge_with(config(addr, &token), &[("A", &a)]);
        let st = a.sync_status().unwrap();
        eprintln!(
            "delay {delay}: A {:?} fresh {:?} rejected {}",
            parts(&a),
            parts(&fresh),
            st.rejected
        );
        assert_eq!(st.rejected, 1, "delay {delay}: the refusal is reported");
        drop((a, fresh));
        server.kill();
    }
}
