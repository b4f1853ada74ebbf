//! Shared command-line driver of the `parts_v*` programs: each program declares its own
//! version of the `Part` record and calls [`run`] with it.
//!
//! Commands (first argument: the database path):
//! - `write <n>`: creates `n` records in one batch, prints `created <id>@<rev>` for each;
//! - `dump`: prints `<id>@<rev> <Debug of the record>` for every record;
//! - `update <id> <rev>`: adds 1 to the quantity through `Tree::update`;
//! - `migrate <batch>`: `Tree::migrate_with`, printing `progress <done>/<total>` per batch;
//! - `kinds`: prints the schema versions stored with each record.
//!
//! Errors print `error <Variant>: <message>` and exit with status 2.

use rekord::{Db, Error, Key, Record};
use std::fmt::Debug;

/// What a program's `Part` type must offer the driver.
pub trait Part: Record + Debug {
    /// A new record from an index.
    fn make(i: u64) -> Self;
    /// Adds one to the quantity.
    fn bump(&mut self);
}

fn variant(e: &Error) -> String {
    let d = format!("{e:?}");
    d.split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs one command for the `Part` type `P`; returns the process exit code.
pub fn run<P: Part>() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match exec::<P>(&args) {
        Ok(()) => 0,
        Err(e) => {
            println!("error {}: {e}", variant(&e));
            2
        }
    }
}

fn num(args: &[String], i: usize) -> u64 {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn exec<P: Part>(args: &[String]) -> Result<(), Error> {
    let path = args.first().map_or("parts.rekord", String::as_str);
    let db = Db::open(path)?;
    let parts = db.tree::<P>()?;
    match args.get(1).map(String::as_str) {
        Some("write") => {
            // One batch: fast, and all-or-nothing.
            let keys = db.write(|b| {
                let mut t = b.tree::<P>()?;
                (0..num(args, 2))
                    .map(|i| t.create(&P::make(i)))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            for k in keys {
                println!("created {k}");
            }
        }
        Some("dump") => {
            for r in parts.iter()? {
                let r = r?;
                println!("{} {:?}", r.key(), r.to_owned()?);
            }
        }
        Some("update") => {
            let k = Key::<P>::new(num(args, 2), num(args, 3) as u32);
            parts.update(k, |p| p.bump())?;
            println!("updated {k} {:?}", parts.get(k)?);
        }
        Some("migrate") => {
            let report = parts.migrate_with(num(args, 2).max(1) as usize, |p| {
                println!("progress {}/{}", p.done, p.total);
            })?;
            println!(
                "migrated {} current {} newer {}",
                report.migrated, report.current, report.newer
            );
        }
        Some("kinds") => {
            let mut versions = Vec::new();
            for k in parts.keys()? {
                versions.push(parts.meta(k)?.version);
            }
            println!("versions {versions:?}");
        }
        other => println!("unknown command {other:?}"),
    }
    Ok(())
}
