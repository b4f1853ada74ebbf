//! Writes a demo database for the viewer (and its README screenshot): an inventory with
//! parts (nested data, enums, revisions, released records with states), suppliers and notes.
//!
//! `cargo run -p rekord-viewer --example demo_db -- inventory.rekord [RECORDS]`

use rekord::{Db, Key};
use std::collections::BTreeMap;

#[rekord::record(tree = "suppliers", version = 1)]
#[derive(Debug, Clone)]
pub struct Supplier {
    pub name: String,
    pub country: String,
}

#[rekord::data]
#[derive(Debug, Clone)]
pub enum Unit {
    Piece,
    Box { count: u32 },
    Weight { grams: u32 },
}

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub qty: u32,
    pub price_cents: u64,
    pub unit: Unit,
    pub supplier: Option<Key<Supplier>>,
    pub tags: Vec<String>,
    pub attrs: BTreeMap<String, i64>,
}

#[rekord::record(tree = "notes", version = 1)]
#[derive(Debug, Clone)]
pub struct Note {
    pub text: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "inventory.rekord".into());
    let count: u32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(2000);
    let _ = std::fs::remove_file(&path);
    let db = Db::open(&path)?;
    let suppliers = db.tree::<Supplier>()?;
    let acme = suppliers.create(&Supplier {
        name: "ACME Fasteners".into(),
        country: "DE".into(),
    })?;
    let bolt = suppliers.create(&Supplier {
        name: "Bolt & Co".into(),
        country: "NL".into(),
    })?;
    let parts = db.tree::<Part>()?;
    let names = [
        "bolt", "nut", "washer", "screw", "rivet", "pin", "spring", "bracket",
    ];
    let sizes = ["M3", "M4", "M5", "M6", "M8", "M10"];
    let mut keys = Vec::new();
    db.write(|b| {
        keys.clear();
        for i in 0..count {
            let name = format!(
                "{} {}",
                names[i as usize % names.len()],
                sizes[i as usize % sizes.len()]
            );
            let unit = match i % 3 {
                0 => Unit::Piece,
                1 => Unit::Box {
                    count: 50 + i % 7 * 25,
                },
                _ => Unit::Weight {
                    grams: 250 * (1 + i % 4),
                },
            };
            keys.push(b.create(&Part {
                name,
                qty: (i * 37) % 1000,
                price_cents: 5 + u64::from(i * 13 % 400),
                unit,
                supplier: Some(if i % 2 == 0 { acme } else { bolt }),
                tags: if i % 5 == 0 {
                    vec!["zinc".into()]
                } else {
                    vec![]
                },
                attrs: BTreeMap::from([("length_mm".into(), i64::from(8 + i % 40))]),
            })?);
        }
        Ok(())
    })?;
    // Some released records, with states, and a second revision.
    for (n, k) in keys.iter().take(12).enumerate() {
        parts.release(*k)?;
        parts.set_state(*k, n as u32 % 3)?;
    }
    if let Some(k) = keys.first() {
        let next = parts.new_revision(*k)?;
        parts.update(next, |p| {
            p.qty += 100;
            p.tags.push("restocked".into());
        })?;
    }
    db.tree::<Note>()?.create(&Note {
        text: "inventory counted on Monday".into(),
    })?;
    println!("wrote {count} parts, 2 suppliers and a note to {path}");
    println!("browse it: cargo run -p rekord-viewer -- --db {path} gui");
    Ok(())
}
