//! Schema-evolution benchmarks: reading records stored one version back (through a
//! `migrate_from` chain, and by projection through the dynamic decoder), and the dynamic
//! decoder's raw throughput, each beside the zero-copy same-version read in the same run.
//!
//! `cargo bench -p rekord-bench --bench evolution`; `REKORD_BENCH_QUICK=1` for a 10x smaller run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use rekord::schema::dynamic;
use rekord::{Db, Record, Schema};
use rekord_bench::{Report, time};
use std::hint::black_box;

/// Version 1 (tree "parts").
#[rekord::record(tree = "parts", version = 1)]
#[derive(Clone, Debug)]
pub struct PartV1 {
    pub code: u64,
    pub name: String,
    pub description: String,
    pub qty: u32,
    pub price: String,
    pub tags: Vec<String>,
    pub supplier: String,
}

/// Version 2: the price becomes a number (a conversion), `qty` widens.
#[rekord::record(tree = "parts", version = 2, migrate_from = PartV1)]
#[derive(Clone, Debug)]
pub struct Part {
    pub code: u64,
    pub name: String,
    pub description: String,
    pub qty: u64,
    pub price_cents: i64,
    pub tags: Vec<String>,
    pub supplier: String,
}

impl From<PartV1> for Part {
    fn from(v: PartV1) -> Self {
        Part {
            code: v.code,
            name: v.name,
            description: v.description,
            qty: u64::from(v.qty),
            price_cents: v.price.parse().unwrap_or(0),
            tags: v.tags,
            supplier: v.supplier,
        }
    }
}

/// Version 1 of another tree, evolved additively (no migration code: projection).
#[rekord::record(tree = "items", version = 1)]
#[derive(Clone, Debug)]
pub struct ItemV1 {
    pub code: u64,
    pub name: String,
    pub description: String,
    pub qty: u32,
    pub tags: Vec<String>,
    pub supplier: String,
}

/// Version 2: one more field with a default.
#[rekord::record(tree = "items", version = 2)]
#[derive(Clone, Debug)]
pub struct Item {
    pub code: u64,
    pub name: String,
    pub description: String,
    pub qty: u32,
    pub tags: Vec<String>,
    pub supplier: String,
    #[record(default)]
    pub weight_g: Option<u32>,
}

fn v1(i: u64) -> PartV1 {
    PartV1 {
        code: i,
        name: format!("part {i:08}"),
        description: format!("hex socket cap screw, stainless A2, batch {}", i % 97),
        qty: (i % 1000) as u32,
        price: ((i % 5000) + 10).to_string(),
        tags: vec!["metric".into(), format!("m{}", i % 12)],
        supplier: format!("supplier-{}", i % 31),
    }
}

fn item(i: u64) -> ItemV1 {
    let p = v1(i);
    ItemV1 {
        code: p.code,
        name: p.name,
        description: p.description,
        qty: p.qty,
        tags: p.tags,
        supplier: p.supplier,
    }
}

fn main() {
    let quick = std::env::var_os("REKORD_BENCH_QUICK").is_some();
    let n: u64 = if quick { 100_000 } else { 1_000_000 };
    let rounds = if quick { 1 } else { 3 };
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("evo.rekord")).unwrap();
    db.write(|b| {
        let mut t = b.tree::<PartV1>()?;
        for i in 0..n {
            t.create(&v1(i))?;
        }
        Ok(())
    })
    .unwrap();
    db.write(|b| {
        let mut t = b.tree::<ItemV1>()?;
        for i in 0..n {
            t.create(&item(i))?;
        }
        Ok(())
    })
    .unwrap();
    let old = db.tree::<PartV1>().unwrap();
    let new = db.tree::<Part>().unwrap();
    let items = db.tree::<Item>().unwrap();
    let mut report = Report::against("zero-copy same-version read");

    let (mut same, mut chain, mut chain_owned, mut proj) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        same.push(time(|| {
            let mut s = 0u64;
            old.for_each(.., |_, p| s += u64::from(p.qty.to_native()))
                .unwrap();
            assert!(s > 0);
        }));
        chain.push(time(|| {
            let mut s = 0u64;
            new.for_each(.., |_, p| s += p.qty.to_native()).unwrap();
            assert!(s > 0);
        }));
        chain_owned.push(time(|| {
            let mut s = 0u64;
            for r in new.iter().unwrap() {
                s += r.unwrap().to_owned().unwrap().qty;
            }
            assert!(s > 0);
        }));
        proj.push(time(|| {
            let mut s = 0u64;
            items
                .for_each(.., |_, p| s += u64::from(p.qty.to_native()))
                .unwrap();
            assert!(s > 0);
        }));
    }
    report.add(
        &format!("{n} records one version back, migrate_from chain, zero-copy view (for_each)"),
        n,
        &same,
        &chain,
        None,
    );
    report.add(
        &format!("{n} records one version back, migrate_from chain, owned (iter + to_owned)"),
        n,
        &same,
        &chain_owned,
        None,
    );
    report.add(
        &format!("{n} records one version back, additive change by projection (dynamic decoder)"),
        n,
        &same,
        &proj,
        None,
    );

    // The dynamic decoder alone, on in-memory bytes, beside checked zero-copy access.
    let schema = Schema::of::<PartV1>();
    let bytes: Vec<Vec<u8>> = (0..n)
        .map(|i| v1(i).__encode(Vec::new()).unwrap())
        .collect();
    let total: u64 = bytes.iter().map(|b| b.len() as u64).sum();
    let (mut access, mut dyn_t) = (vec![], vec![]);
    for _ in 0..rounds {
        access.push(time(|| {
            let mut s = 0u64;
            for b in &bytes {
                s += u64::from(PartV1::__access(b).unwrap().qty.to_native());
            }
            black_box(s);
        }));
        dyn_t.push(time(|| {
            for b in &bytes {
                black_box(dynamic::decode(&schema, b).unwrap());
            }
        }));
    }
    report.add(
        &format!(
            "dynamic decode of {n} records ({} MB) vs checked zero-copy access",
            total / 1_000_000
        ),
        n,
        &access,
        &dyn_t,
        None,
    );
    report.note(format!(
        "dynamic decoder: {:.0} MB/s, {:.2} M records/s",
        total as f64 / rekord_bench::median(&dyn_t) / 1e6,
        n as f64 / rekord_bench::median(&dyn_t) / 1e6
    ));
    report.print("evolution");
}
