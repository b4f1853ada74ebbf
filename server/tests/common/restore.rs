//! What the restore tests share: their record types, the states they compare, and waiting
//! until every replica equals a fresh one.
#![allow(dead_code)]

use rekord::{Db, Key, SyncConfig};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bound on every wait of these helpers.
pub const WAIT: Duration = Duration::from_secs(30);

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

#[rekord::record(tree = "notes", version = 1, merge = "three-way")]
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub a: u32,
    pub b: u32,
}

/// RUST_LOG=... shows the clients' logs.
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub type Row = (u64, u32, String, u32, bool, u32, u32);

/// Every part as (id, rev, name, qty, released, state, holder), sorted.
pub fn parts(db: &Db) -> Vec<Row> {
    let mut v: Vec<_> = db
        .tree::<Part>()
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            let k = r.key();
            let m = r.meta();
            (
                k.id(),
                k.rev(),
                r.name.to_string(),
                r.qty.to_native(),
                m.released,
                m.state,
                m.holder,
            )
        })
        .collect();
    v.sort();
    v
}

/// Every note as (id, rev, a, b, holder), sorted.
pub fn notes(db: &Db) -> Vec<(u64, u32, u32, u32, u32)> {
    let mut v: Vec<_> = db
        .tree::<Note>()
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            let k = r.key();
            (
                k.id(),
                k.rev(),
                r.a.to_native(),
                r.b.to_native(),
                r.meta().holder,
            )
        })
        .collect();
    v.sort();
    v
}

/// Whether `ok` holds within [`WAIT`] (says what timed out otherwise).
pub fn eventually(what: &str, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > WAIT {
            eprintln!("timed out waiting for {what}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A synced replica at `path`, caught up.
pub fn open_with(path: &Path, config: SyncConfig) -> Db {
    let db = Db::open_synced(path, config).unwrap();
    db.wait_caught_up(WAIT).unwrap();
    db
}

/// Waits until every replica equals a fresh replica (made with `config`); panics with the
/// states otherwise. Returns the fresh replica.
pub fn converge_with(config: SyncConfig, dbs: &[(&str, &Db)]) -> Db {
    let fresh = Db::memory_synced(config).unwrap();
    fresh.wait_caught_up(WAIT).unwrap();
    let ok = eventually("replicas to equal a fresh replica", || {
        let _ = fresh.wait_caught_up(WAIT);
        let f = (parts(&fresh), notes(&fresh));
        dbs.iter().all(|(_, d)| (parts(d), notes(d)) == f)
    });
    if !ok {
        let mut msg = format!(
            "replicas differ from a fresh one:\nfresh parts {:?}\nfresh notes {:?}\n",
            parts(&fresh),
            notes(&fresh)
        );
        for (name, d) in dbs {
            msg += &format!(
                "{name} parts {:?}\n{name} notes {:?}\n{name} status {:?}\n",
                parts(d),
                notes(d),
                d.sync_status()
            );
        }
        panic!("{msg}");
    }
    fresh
}

pub fn set_note(db: &Db, k: Key<Note>, f: impl FnOnce(&mut Note)) {
    db.tree::<Note>().unwrap().update(k, f).unwrap();
}

/// A note's latest (a, b).
pub fn note(db: &Db, k: Key<Note>) -> Option<(u32, u32)> {
    let t = db.tree::<Note>().unwrap();
    let latest = t.latest(k.id()).unwrap()?;
    let n = t.get(latest).unwrap();
    Some((n.a, n.b))
}

/// Creates part `name` (`qty`) in `db`.
pub fn create(db: &Db, name: &str, qty: u32) -> Key<Part> {
    db.tree::<Part>()
        .unwrap()
        .create(&Part {
            name: name.into(),
            qty,
        })
        .unwrap()
}

/// The quantity of the latest revision of part `k` in `db`, if it has one.
pub fn qty(db: &Db, k: Key<Part>) -> Option<u32> {
    let t = db.tree::<Part>().unwrap();
    let latest = t.latest(k.id()).unwrap()?;
    Some(t.get(latest).unwrap().qty)
}

/// The holder of the latest revision of part `k` in `db`, if it has one.
pub fn holder(db: &Db, k: Key<Part>) -> Option<u32> {
    let t = db.tree::<Part>().unwrap();
    let latest = t.latest(k.id()).unwrap()?;
    Some(t.meta(latest).unwrap().holder)
}
