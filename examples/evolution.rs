//! Schema evolution: records written by version 1 of a type are read by version 2 (through a
//! migration), then rewritten for good by `migrate`, with a progress bar.
//!
//! Run it with `cargo run --example evolution`.

use indicatif::{ProgressBar, ProgressStyle};
use rekord::Db;

/// How `Part` looked in version 1 of the program.
#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone)]
pub struct PartV1 {
    /// Name.
    pub name: String,
    /// Price in cents, as text (a mistake version 2 fixes).
    pub price: String,
}

/// Version 2: the price becomes a number, which needs a conversion, and a supplier field
/// appears, which needs none (it has a default).
#[rekord::record(tree = "parts", version = 2, migrate_from = PartV1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Name.
    pub name: String,
    /// Price in cents.
    pub price_cents: u64,
    /// Supplier, new in version 2.
    #[record(default)]
    pub supplier: Option<String>,
}

impl TryFrom<PartV1> for Part {
    type Error = String;
    fn try_from(v: PartV1) -> Result<Self, String> {
        let price_cents = v
            .price
            .parse()
            .map_err(|e| format!("price {:?} is not a number: {e}", v.price))?;
        Ok(Part {
            name: v.name,
            price_cents,
            supplier: None,
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Db::memory()?;

    // "Version 1 of the program" writes 20,000 records.
    db.write(|b| {
        let mut t = b.tree::<PartV1>()?;
        for i in 0..20_000u64 {
            t.create(&PartV1 {
                name: format!("part {i}"),
                price: (i * 3).to_string(),
            })?;
        }
        Ok(())
    })?;

    // "Version 2" reads them right away: the chain decodes v1 and converts.
    let parts = db.tree::<Part>()?;
    let first = parts.get(rekord::Key::new(1, 0))?;
    println!("read through the migration: {first:?}");
    println!(
        "stored as version {}",
        parts.meta(rekord::Key::new(1, 0))?.version
    );

    // Rewrite every record in version 2, in batches, with a progress bar.
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(
        "migrating {bar:40} {pos}/{len} records",
    )?);
    let report = parts.migrate(|p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    })?;
    bar.finish();
    println!(
        "migrated {}, already current {}, newer (left alone) {}",
        report.migrated, report.current, report.newer
    );
    println!(
        "stored as version {}",
        parts.meta(rekord::Key::new(1, 0))?.version
    );
    if report.migrated != 20_000 || parts.get(rekord::Key::new(20_000, 0))?.price_cents != 59_997 {
        eprintln!("evolution example: unexpected result");
        std::process::exit(1);
    }
    Ok(())
}
