//! Profiling aid: builds a 200k-record tree in rekord and in raw redb, then scans both once.
//! Run under `valgrind --tool=callgrind` to compare instruction counts per function.
#![allow(clippy::unwrap_used, missing_docs)]
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

#[rekord::record(tree = "parts", version = 1)]
pub struct Part {
    pub code: u64,
    pub name: String,
    pub tags: Vec<String>,
    pub qty: u32,
}

const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("parts");

fn main() {
    let n = 200_000u64;
    let dir = tempfile::tempdir().unwrap();
    let recs: Vec<Part> = (0..n)
        .map(|i| Part {
            code: i,
            name: format!("part {i}"),
            tags: vec!["a".into(), "b".into()],
            qty: i as u32,
        })
        .collect();
    let raw = redb::Database::create(dir.path().join("raw")).unwrap();
    let t = raw.begin_write().unwrap();
    {
        let mut tb = t.open_table(RAW).unwrap();
        for (i, p) in recs.iter().enumerate() {
            tb.insert(
                i as u64,
                rkyv::to_bytes::<rkyv::rancor::Error>(p).unwrap().as_slice(),
            )
            .unwrap();
        }
    }
    t.commit().unwrap();
    const SAME: TableDefinition<u128, &[u8]> = TableDefinition::new("same");
    let t = raw.begin_write().unwrap();
    {
        let mut tb = t.open_table(SAME).unwrap();
        for (i, p) in recs.iter().enumerate() {
            let mut v = vec![1u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
            v.extend_from_slice(&rkyv::to_bytes::<rkyv::rancor::Error>(p).unwrap());
            tb.insert((i as u128 + 1) << 32, v.as_slice()).unwrap();
        }
    }
    t.commit().unwrap();
    let db = rekord::Db::open(dir.path().join("rek")).unwrap();
    db.write(|b| {
        let mut t = b.tree::<Part>()?;
        for p in &recs {
            t.create(p)?;
        }
        Ok(())
    })
    .unwrap();
    let tree = db.tree::<Part>().unwrap();
    if std::env::args().nth(1).as_deref() == Some("file") {
        // Scan rekord's own table with raw redb code, to tell file layout from code cost.
        drop(tree);
        drop(db);
        let rf = redb::Database::open(dir.path().join("rek")).unwrap();
        const T: TableDefinition<u128, &[u8]> = TableDefinition::new("t.parts");
        for round in 0..7 {
            let t0 = std::time::Instant::now();
            let txn = raw.begin_read().unwrap();
            let tb = txn.open_table(RAW).unwrap();
            let mut s = 0u64;
            for row in tb.iter().unwrap() {
                let (_, v) = row.unwrap();
                s += u64::from(
                    rkyv::access::<ArchivedPart, rkyv::rancor::Error>(v.value())
                        .unwrap()
                        .qty
                        .to_native(),
                );
            }
            let raw_t = t0.elapsed();
            let t0 = std::time::Instant::now();
            let txn = rf.begin_read().unwrap();
            let tb = txn.open_table(T).unwrap();
            for row in tb.iter().unwrap() {
                let (_, v) = row.unwrap();
                s += u64::from(
                    rkyv::access::<ArchivedPart, rkyv::rancor::Error>(&v.value()[16..])
                        .unwrap()
                        .qty
                        .to_native(),
                );
            }
            let file_t = t0.elapsed();
            println!(
                "round {round}: raw {raw_t:?}, raw code on rekord's file {file_t:?} ({:.2}x) {s}",
                file_t.as_secs_f64() / raw_t.as_secs_f64()
            );
        }
        return;
    }
    let mut s = 0u64;
    for round in 0..7 {
        let t = std::time::Instant::now();
        let txn = raw.begin_read().unwrap();
        let tb = txn.open_table(RAW).unwrap();
        for row in tb.iter().unwrap() {
            let (_, v) = row.unwrap();
            s += u64::from(
                rkyv::access::<ArchivedPart, rkyv::rancor::Error>(v.value())
                    .unwrap()
                    .qty
                    .to_native(),
            );
        }
        let raw_t = t.elapsed();
        let t = std::time::Instant::now();
        for r in tree.iter().unwrap() {
            s += u64::from(r.unwrap().qty.to_native());
        }
        let rek_t = t.elapsed();
        let t = std::time::Instant::now();
        let txn = raw.begin_read().unwrap();
        let tb = txn.open_table(SAME).unwrap();
        for row in tb.iter().unwrap() {
            let (_, v) = row.unwrap();
            s += u64::from(
                rkyv::access::<ArchivedPart, rkyv::rancor::Error>(&v.value()[16..])
                    .unwrap()
                    .qty
                    .to_native(),
            );
        }
        let same_t = t.elapsed();
        let t = std::time::Instant::now();
        let snap = tree.snapshot().unwrap();
        for k in snap.keys().unwrap() {
            let _ = k.unwrap();
        }
        let keys_t = t.elapsed();
        println!(
            "round {round}: raw {raw_t:?} rekord {rek_t:?} ratio {:.2} (keys only {keys_t:?}; raw with rekord's layout {same_t:?}: ratio {:.2})",
            rek_t.as_secs_f64() / raw_t.as_secs_f64(),
            rek_t.as_secs_f64() / same_t.as_secs_f64()
        );
    }
    println!("{s}");
}
