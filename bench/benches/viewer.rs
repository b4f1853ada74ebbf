//! The viewer and immediate-mode GUIs, beside the raw dynamic decoder (redb get + the
//! schema-driven decoder, no viewer code) on the same records, in the same run:
//!
//! - a frame of the viewer's table: the 50 visible rows of a 1,000,000-record tree read from
//!   one snapshot, decoded and summarized into cell texts (`gui::row_texts`);
//! - a frame of an application's own table: 50 rows read zero-copy with `Tree::with`;
//! - exporting a tree to RON, beside decoding and rendering it as RON alone;
//! - opening the 1,000,000-record database in the viewer up to its first screen.
//!
//! `cargo bench -p rekord-bench --bench viewer`; `REKORD_BENCH_QUICK=1` uses 100,000 records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use redb::{ReadableDatabase, TableDefinition};
use rekord::schema::dynamic;
use rekord::{Db, Key, RawKey};
use rekord_bench::{Report, Rng, median, time};
use rekord_viewer::gui::{ViewerApp, row_texts, table_columns};
use std::collections::BTreeMap;
use std::hint::black_box;

#[rekord::data]
#[derive(Clone, Debug)]
pub enum Unit {
    Piece,
    Box { count: u32 },
    Weight { grams: u32 },
}

#[rekord::record(tree = "parts", version = 1)]
#[derive(Clone, Debug)]
pub struct Part {
    pub name: String,
    pub qty: u32,
    pub price_cents: u64,
    pub unit: Unit,
    pub tags: Vec<String>,
    pub attrs: BTreeMap<String, i64>,
    pub note: Option<String>,
}

fn make(i: u32) -> Part {
    Part {
        name: format!("part {i:08}"),
        qty: i % 1000,
        price_cents: u64::from(i % 5000) + 10,
        unit: match i % 3 {
            0 => Unit::Piece,
            1 => Unit::Box { count: i % 200 },
            _ => Unit::Weight { grams: i % 5000 },
        },
        tags: (0..i % 3).map(|t| format!("tag{t}")).collect(),
        attrs: BTreeMap::from([("length_mm".to_owned(), i64::from(i % 90))]),
        note: i.is_multiple_of(4).then(|| "checked".to_owned()),
    }
}

const TABLE: TableDefinition<u128, &[u8]> = TableDefinition::new("t.parts");

fn main() {
    let quick = std::env::var_os("REKORD_BENCH_QUICK").is_some();
    let n: u32 = if quick { 100_000 } else { 1_000_000 };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.rekord");
    let mut all: Vec<Key<Part>> = Vec::with_capacity(n as usize);
    let made = time(|| {
        let db = Db::open(&path).unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(50_000) {
            db.write(|b| {
                for &i in chunk {
                    all.push(b.create(&make(i))?);
                }
                Ok(())
            })
            .unwrap();
        }
    });
    let keys = all;
    eprintln!("made {n} records in {made:.1} s");
    let mut report = Report::against("raw dynamic decode");
    let rounds = 9;
    let mut rng = Rng::new(7);

    // 1. First screen: open, list trees, open the tree, index the first keys, 50 rows.
    let (mut raw_open, mut ours_open) = (Vec::new(), Vec::new());
    let schema = {
        let db = Db::open_read_only(&path).unwrap();
        db.dyn_tree("parts").unwrap().schema().clone()
    };
    for _ in 0..rounds {
        raw_open.push(time(|| {
            let rdb = redb::ReadOnlyDatabase::open(&path).unwrap();
            let txn = rdb.begin_read().unwrap();
            let t = txn.open_table(TABLE).unwrap();
            for row in redb::ReadableTable::iter(&t).unwrap().take(50) {
                let (_, v) = row.unwrap();
                black_box(dynamic::decode(&schema, &v.value()[16..]).unwrap());
            }
        }));
        ours_open.push(time(|| {
            let db = Db::open_read_only(&path).unwrap();
            let mut app = ViewerApp::new(db.clone());
            app.select_tree("parts", None);
            let tree = db.dyn_tree("parts").unwrap();
            let columns = table_columns(&tree);
            let snap = tree.snapshot().unwrap();
            for k in app.rows().iter().take(50) {
                black_box(row_texts(&snap, *k, &columns).unwrap());
            }
        }));
    }
    report.add(
        &format!("viewer: open a {n}-record database to its first screen (50 rows)"),
        1,
        &raw_open,
        &ours_open,
        None,
    );

    // 2. A frame of the viewer's table: 50 consecutive visible rows at a random place.
    // (Read-only, like the viewer: the first screens' background indexes may still read.)
    let db = Db::open_read_only(&path).unwrap();
    let tree = db.dyn_tree("parts").unwrap();
    let columns = table_columns(&tree);
    let frames = 200;
    let (mut raw_rows, mut ours_rows) = (Vec::new(), Vec::new());
    let rdb_keys: Vec<RawKey> = keys.iter().map(|k| k.raw()).collect();
    for _ in 0..rounds {
        let starts: Vec<usize> = (0..frames)
            .map(|_| rng.below(u64::from(n) - 50) as usize)
            .collect();
        raw_rows.push(
            time(|| {
                for &s in &starts {
                    let snap = tree.snapshot().unwrap();
                    for k in &rdb_keys[s..s + 50] {
                        // The decoder alone (DynSnapshot::get is redb get + decode).
                        black_box(snap.get(*k).unwrap());
                    }
                }
            }) / f64::from(frames),
        );
        ours_rows.push(
            time(|| {
                for &s in &starts {
                    let snap = tree.snapshot().unwrap();
                    for k in &rdb_keys[s..s + 50] {
                        black_box(row_texts(&snap, *k, &columns).unwrap());
                    }
                }
            }) / f64::from(frames),
        );
    }
    report.add(
        "viewer: one frame of the table (50 visible rows, decode + cell texts)",
        50,
        &raw_rows,
        &ours_rows,
        None,
    );

    // 3. A frame of an application's own table: 50 rows zero-copy (`Tree::with`, the hot
    //    cache after the first frame), beside the dynamic decoder of the same rows.
    let parts = db.tree::<Part>().unwrap();
    let (mut raw_app, mut ours_app) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let s = rng.below(u64::from(n) - 50) as usize;
        let visible = &keys[s..s + 50];
        raw_app.push(
            time(|| {
                for _ in 0..frames {
                    let snap = tree.snapshot().unwrap();
                    for k in visible {
                        black_box(snap.get(k.raw()).unwrap());
                    }
                }
            }) / f64::from(frames),
        );
        ours_app.push(
            time(|| {
                for _ in 0..frames {
                    for k in visible {
                        parts
                            .with(*k, |p| {
                                black_box((p.name.as_str(), p.qty.to_native()));
                            })
                            .unwrap();
                    }
                }
            }) / f64::from(frames),
        );
    }
    report.add(
        "app: one frame of its own table (50 rows, Tree::with every frame)",
        50,
        &raw_app,
        &ours_app,
        None,
    );

    // 4. Export: the viewer's export file, beside decoding and rendering RON alone.
    let export_n = n.min(200_000);
    let (mut raw_exp, mut ours_exp) = (Vec::new(), Vec::new());
    let sub = dir.path().join("sub.rekord");
    {
        let small = Db::open(&sub).unwrap();
        small
            .write(|b| {
                for i in 0..export_n {
                    b.create(&make(i))?;
                }
                Ok(())
            })
            .unwrap();
    }
    let small = Db::open_read_only(&sub).unwrap();
    let small_tree = small.dyn_tree("parts").unwrap();
    for _ in 0..3 {
        raw_exp.push(time(|| {
            let mut bytes = 0usize;
            for r in small_tree.iter().unwrap() {
                bytes += dynamic::to_ron(&r.unwrap().value).len();
            }
            black_box(bytes);
        }));
        ours_exp.push(time(|| {
            let mut sink = std::io::sink();
            rekord_viewer::transfer::export(&small, &[], &mut sink, &mut |_| {}).unwrap();
        }));
    }
    report.add(
        &format!("viewer: export {export_n} records to RON"),
        u64::from(export_n),
        &raw_exp,
        &ours_exp,
        None,
    );
    report.note(format!(
        "Medians. First screen: {:.1} ms (budget 200 ms). Table frame: {:.3} ms (budget 1 ms, \
         60 fps = 16.7 ms). An application's own frame of 50 rows: {:.1} µs. Export: {:.2}x the \
         decoder and RON rendering alone (budget 1.5x).",
        median(&ours_open) * 1e3,
        median(&ours_rows) * 1e3,
        median(&ours_app) * 1e6,
        median(&ours_exp) / median(&raw_exp)
    ));
    report.print("viewer");
}
