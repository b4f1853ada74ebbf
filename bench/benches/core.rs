//! Core benchmarks: rekord beside plain redb + rkyv (the raw baseline) and native_db (the peer),
//! on the same work, in the same process, interleaved round by round. Prints medians and
//! ratios to the raw baseline.
//!
//! `cargo bench -p rekord-bench --bench core`; `REKORD_BENCH_QUICK=1` runs a 10x smaller
//! variant (for checking that it works, not for numbers).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use native_db::{Builder as NativeBuilder, Models, ToKey, native_db};
use native_model::{Model, native_model};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use rekord::Db;
use rekord_bench::{Report, Rng, median, time};
use std::hint::black_box;
use std::path::Path;

/// A realistic record: ten fields, strings and a Vec.
#[rekord::record(tree = "parts", version = 1)]
#[derive(Clone, Debug)]
pub struct Part {
    pub code: u64,
    pub name: String,
    pub description: String,
    pub qty: u32,
    pub price_cents: i64,
    pub weight_kg: f64,
    pub active: bool,
    pub tags: Vec<String>,
    pub supplier: String,
    pub note: Option<String>,
}

/// The same record for native_db (its own derive).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
#[native_model(id = 1, version = 1)]
#[native_db]
pub struct NativePart {
    #[primary_key]
    pub code: u64,
    pub name: String,
    pub description: String,
    pub qty: u32,
    pub price_cents: i64,
    pub weight_kg: f64,
    pub active: bool,
    pub tags: Vec<String>,
    pub supplier: String,
    pub note: Option<String>,
}

fn make(i: u64) -> Part {
    Part {
        code: i,
        name: format!("part {i:08}"),
        description: format!("hex socket cap screw, stainless A2, batch {}", i % 97),
        qty: (i % 1000) as u32,
        price_cents: (i as i64 % 5000) + 10,
        weight_kg: (i % 50) as f64 * 0.013,
        active: !i.is_multiple_of(7),
        tags: vec!["metric".into(), format!("m{}", i % 12), "stock".into()],
        supplier: format!("supplier-{}", i % 31),
        note: i
            .is_multiple_of(3)
            .then(|| "check thread pitch".to_string()),
    }
}

fn native(p: &Part) -> NativePart {
    NativePart {
        code: p.code,
        name: p.name.clone(),
        description: p.description.clone(),
        qty: p.qty,
        price_cents: p.price_cents,
        weight_kg: p.weight_kg,
        active: p.active,
        tags: p.tags.clone(),
        supplier: p.supplier.clone(),
        note: p.note.clone(),
    }
}

const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("parts");
const RAW_SAME: TableDefinition<u128, &[u8]> = TableDefinition::new("parts-same-layout");

fn raw_bytes(p: &Part) -> rkyv::util::AlignedVec {
    rkyv::to_bytes::<rkyv::rancor::Error>(p).unwrap()
}

fn raw_bulk(path: &Path, records: &[Part]) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(RAW).unwrap();
        for (i, p) in records.iter().enumerate() {
            t.insert(i as u64 + 1, raw_bytes(p).as_slice()).unwrap();
        }
    }
    txn.commit().unwrap();
}

fn rekord_bulk(path: &Path, records: &[Part]) {
    let db = Db::open(path).unwrap();
    let mut b = db.batch().unwrap();
    {
        let mut t = b.tree::<Part>().unwrap();
        for p in records {
            t.create(p).unwrap();
        }
    }
    b.commit().unwrap();
}

fn native_bulk(path: &Path, models: &Models, records: &[Part]) {
    let db = NativeBuilder::new().create(models, path).unwrap();
    let rw = db.rw_transaction().unwrap();
    for p in records {
        rw.insert(native(p)).unwrap();
    }
    rw.commit().unwrap();
}

fn raw_read(db: &redb::Database, id: u64) -> u32 {
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(RAW).unwrap();
    let g = t.get(id).unwrap().unwrap();
    let a = rkyv::access::<ArchivedPart, rkyv::rancor::Error>(g.value()).unwrap();
    a.qty.to_native()
}

fn main() {
    let quick = std::env::var_os("REKORD_BENCH_QUICK").is_some();
    let n: u64 = if quick { 100_000 } else { 1_000_000 };
    let commits: u64 = if quick { 1_000 } else { 10_000 };
    let reads: usize = if quick { 100_000 } else { 1_000_000 };
    let rounds = if quick { 1 } else { 3 };
    let dir = tempfile::tempdir().unwrap();
    let mut models = Models::new();
    models.define::<NativePart>().unwrap();
    let mut report = Report::new();

    let records: Vec<Part> = (1..=n).map(make).collect();
    eprintln!(
        "records: {n}, avg archived size {} bytes",
        raw_bytes(&records[0]).len()
    );

    // 1. Bulk insert in one batch.
    let (mut raw_t, mut rek_t, mut nat_t) = (vec![], vec![], vec![]);
    for r in 0..rounds {
        let (pr, pk, pn) = (
            dir.path().join(format!("raw{r}")),
            dir.path().join(format!("rek{r}")),
            dir.path().join(format!("nat{r}")),
        );
        raw_t.push(time(|| raw_bulk(&pr, &records)));
        rek_t.push(time(|| rekord_bulk(&pk, &records)));
        nat_t.push(time(|| native_bulk(&pn, &models, &records)));
        if r + 1 < rounds {
            for p in [&pr, &pk, &pn] {
                std::fs::remove_file(p).ok();
            }
        }
    }
    report.add(
        &format!("bulk insert {n} records, one batch"),
        n,
        &raw_t,
        &rek_t,
        Some(&nat_t),
    );
    let last = rounds - 1;
    let (pr, pk, pn) = (
        dir.path().join(format!("raw{last}")),
        dir.path().join(format!("rek{last}")),
        dir.path().join(format!("nat{last}")),
    );

    // 2. Single-record durable commits. fsync latency drifts with whatever else the disk is
    // doing, so the three systems take turns in blocks of 250 commits, and each block time is
    // scaled to the full count: the medians compare like with like.
    let block = (commits / 40).max(1);
    let (mut raw_t, mut rek_t, mut nat_t) = (vec![], vec![], vec![]);
    let scale = commits as f64 / block as f64;
    let rdb = redb::Database::create(dir.path().join("craw")).unwrap();
    let kdb = Db::open(dir.path().join("crek")).unwrap();
    let ktree = kdb.tree::<Part>().unwrap();
    let ndb = NativeBuilder::new()
        .create(&models, dir.path().join("cnat"))
        .unwrap();
    let mut next = 0usize;
    for _ in 0..commits / block {
        let chunk = &records[next..next + block as usize];
        raw_t.push(
            scale
                * time(|| {
                    for (i, p) in chunk.iter().enumerate() {
                        let txn = rdb.begin_write().unwrap();
                        txn.open_table(RAW)
                            .unwrap()
                            .insert((next + i) as u64 + 1, raw_bytes(p).as_slice())
                            .unwrap();
                        txn.commit().unwrap();
                    }
                }),
        );
        rek_t.push(
            scale
                * time(|| {
                    for p in chunk {
                        ktree.create(p).unwrap();
                    }
                }),
        );
        nat_t.push(
            scale
                * time(|| {
                    for p in chunk {
                        let rw = ndb.rw_transaction().unwrap();
                        rw.insert(native(p)).unwrap();
                        rw.commit().unwrap();
                    }
                }),
        );
        next += block as usize;
    }
    drop((rdb, ktree, kdb, ndb));
    report.add(
        &format!("{commits} single-record durable commits (block-interleaved)"),
        commits,
        &raw_t,
        &rek_t,
        Some(&nat_t),
    );

    // 3. Random zero-copy point reads, each in its own read transaction.
    let rdb = redb::Database::create(&pr).unwrap();
    let kdb = Db::open(&pk).unwrap();
    let tree = kdb.tree::<Part>().unwrap();
    let ndb = NativeBuilder::new().open(&models, &pn).unwrap();
    let mut rng = Rng::new(7);
    let ids: Vec<u64> = (0..reads).map(|_| rng.below(n) + 1).collect();
    let (mut raw_t, mut rek_t, mut nat_t) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        raw_t.push(time(|| {
            let mut s = 0u64;
            for &id in &ids {
                s += u64::from(raw_read(&rdb, id));
            }
            black_box(s);
        }));
        rek_t.push(time(|| {
            let mut s = 0u64;
            for &id in &ids {
                s += u64::from(
                    tree.with(rekord::Key::new(id, 0), |p| p.qty.to_native())
                        .unwrap(),
                );
            }
            black_box(s);
        }));
        nat_t.push(time(|| {
            let mut s = 0u64;
            for &id in &ids {
                let r = ndb.r_transaction().unwrap();
                let p: NativePart = r.get().primary(id).unwrap().unwrap();
                s += u64::from(p.qty);
            }
            black_box(s);
        }));
    }
    report.add(
        &format!("{reads} random point reads (txn per read)"),
        reads as u64,
        &raw_t,
        &rek_t,
        Some(&nat_t),
    );

    // 3b. The same reads inside one read transaction / snapshot.
    let (mut raw_t, mut rek_t, mut nat_t) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        raw_t.push(time(|| {
            let txn = rdb.begin_read().unwrap();
            let t = txn.open_table(RAW).unwrap();
            let mut s = 0u64;
            for &id in &ids {
                let g = t.get(id).unwrap().unwrap();
                s += u64::from(
                    rkyv::access::<ArchivedPart, rkyv::rancor::Error>(g.value())
                        .unwrap()
                        .qty
                        .to_native(),
                );
            }
            black_box(s);
        }));
        rek_t.push(time(|| {
            let snap = tree.snapshot().unwrap();
            let mut s = 0u64;
            for &id in &ids {
                s += u64::from(
                    snap.with(rekord::Key::new(id, 0), |p| p.qty.to_native())
                        .unwrap(),
                );
            }
            black_box(s);
        }));
        nat_t.push(time(|| {
            let r = ndb.r_transaction().unwrap();
            let mut s = 0u64;
            for &id in &ids {
                let p: NativePart = r.get().primary(id).unwrap().unwrap();
                s += u64::from(p.qty);
            }
            black_box(s);
        }));
    }
    report.add(
        &format!("{reads} random point reads (one snapshot)"),
        reads as u64,
        &raw_t,
        &rek_t,
        Some(&nat_t),
    );

    // A raw table with rekord's own layout (u128 (id, rev) key, 16-byte header before the rkyv
    // bytes), untimed, to tell storage volume from code overhead in the scan.
    let rdb_same = redb::Database::create(dir.path().join("raw-same-layout")).unwrap();
    {
        let txn = rdb_same.begin_write().unwrap();
        {
            let mut t = txn.open_table(RAW_SAME).unwrap();
            for (i, p) in records.iter().enumerate() {
                let mut v = vec![1u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
                v.extend_from_slice(&raw_bytes(p));
                t.insert((i as u128 + 1) << 32, v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    // 4. Full scan (cheap, so more rounds against the noise).
    let scan_rounds = rounds * 3;
    let (mut raw_t, mut rek_t, mut nat_t, mut each_t) = (vec![], vec![], vec![], vec![]);
    for _ in 0..scan_rounds {
        raw_t.push(time(|| {
            let txn = rdb.begin_read().unwrap();
            let t = txn.open_table(RAW).unwrap();
            let mut s = 0u64;
            for row in t.iter().unwrap() {
                let (_, v) = row.unwrap();
                s += u64::from(
                    rkyv::access::<ArchivedPart, rkyv::rancor::Error>(v.value())
                        .unwrap()
                        .qty
                        .to_native(),
                );
            }
            assert!(s > 0);
        }));
        rek_t.push(time(|| {
            let mut s = 0u64;
            for r in tree.iter().unwrap() {
                s += u64::from(r.unwrap().qty.to_native());
            }
            assert!(s > 0);
        }));
        each_t.push(time(|| {
            let mut s = 0u64;
            tree.for_each(.., |_, p| s += u64::from(p.qty.to_native()))
                .unwrap();
            assert!(s > 0);
        }));
        nat_t.push(time(|| {
            let r = ndb.r_transaction().unwrap();
            let mut s = 0u64;
            for p in r.scan().primary::<NativePart>().unwrap().all().unwrap() {
                s += u64::from(p.unwrap().qty);
            }
            assert!(s > 0);
        }));
    }
    report.add(
        &format!("full scan of {n} records (iterator)"),
        n,
        &raw_t,
        &rek_t,
        Some(&nat_t),
    );
    report.add(
        &format!("full scan of {n} records (for_each)"),
        n,
        &raw_t,
        &each_t,
        None,
    );
    let mut same_t = vec![];
    let mut rek2_t = vec![];
    for _ in 0..scan_rounds {
        same_t.push(time(|| {
            let txn = rdb_same.begin_read().unwrap();
            let t = txn.open_table(RAW_SAME).unwrap();
            let mut s = 0u64;
            for row in t.iter().unwrap() {
                let (_, v) = row.unwrap();
                let data = &v.value()[16..];
                s += u64::from(
                    rkyv::access::<ArchivedPart, rkyv::rancor::Error>(data)
                        .unwrap()
                        .qty
                        .to_native(),
                );
            }
            assert!(s > 0);
        }));
        rek2_t.push(time(|| {
            let mut s = 0u64;
            tree.for_each(.., |_, p| s += u64::from(p.qty.to_native()))
                .unwrap();
            assert!(s > 0);
        }));
    }
    report.add(
        &format!("full scan of {n} records, raw using rekord's layout (u128 key + 16-byte header); rekord for_each"),
        n,
        &same_t,
        &rek2_t,
        None,
    );

    // 5. GUI frame: the same 10,000 rows read zero-copy every frame.
    let rows = 10_000usize;
    let frames = if quick { 20 } else { 100 };
    let hot: Vec<u64> = (0..rows).map(|_| rng.below(n) + 1).collect();
    // Two untimed frames first: the steady state of a GUI is what matters.
    for _ in 0..2 {
        for &id in &hot {
            black_box(
                tree.with(rekord::Key::new(id, 0), |p| p.qty.to_native())
                    .unwrap(),
            );
        }
    }
    let (mut raw_t, mut rek_t, mut nat_t) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        raw_t.push(time(|| {
            for _ in 0..frames {
                let mut s = 0u64;
                for &id in &hot {
                    s += u64::from(raw_read(&rdb, id));
                }
                black_box(s);
            }
        }));
        rek_t.push(time(|| {
            for _ in 0..frames {
                let mut s = 0u64;
                for &id in &hot {
                    s += u64::from(
                        tree.with(rekord::Key::new(id, 0), |p| p.qty.to_native())
                            .unwrap(),
                    );
                }
                black_box(s);
            }
        }));
        nat_t.push(time(|| {
            for _ in 0..frames {
                let r = ndb.r_transaction().unwrap();
                let mut s = 0u64;
                for &id in &hot {
                    let p: NativePart = r.get().primary(id).unwrap().unwrap();
                    s += u64::from(p.qty);
                }
                black_box(s);
            }
        }));
    }
    let per_frame = median(&rek_t) / frames as f64;
    report.add(
        &format!("GUI frame: {rows} hot rows x {frames} frames (raw: txn per read)"),
        (rows * frames) as u64,
        &raw_t,
        &rek_t,
        Some(&nat_t),
    );
    report.note(format!(
        "GUI frame: rekord {:.2} ms per 10,000-row frame, {:.1} M reads/s (target: <= 2 ms, >= 5 M reads/s)",
        per_frame * 1e3,
        rows as f64 / per_frame / 1e6
    ));

    report.print("core");
}
