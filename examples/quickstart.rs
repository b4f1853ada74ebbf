//! rekord in five minutes: declare a record type, create, read zero-copy, update, release,
//! make a new revision, watch events, keep an index, reopen.
//!
//! Run it with `cargo run --example quickstart`.

use rekord::{Change, Db, Event, Key};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A part in a workshop inventory. One attribute line makes it a record.
#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Display name.
    pub name: String,
    /// Pieces in stock.
    pub qty: u32,
    /// Free-form tags.
    pub tags: Vec<String>,
}

/// An index of parts by name: the indexer owns one clone, the application queries another.
#[derive(Clone, Default)]
struct ByName(Arc<RwLock<BTreeMap<String, Vec<Key<Part>>>>>);

impl ByName {
    fn apply(&self, change: &Change<'_, Part>) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = change.old
            && let Some(keys) = map.get_mut(old.name.as_str())
        {
            keys.retain(|k| *k != change.key);
        }
        if let Some(new) = change.new {
            let keys = map.entry(new.name.to_string()).or_default();
            if !keys.contains(&change.key) {
                keys.push(change.key);
            }
        }
        map.retain(|_, keys| !keys.is_empty());
    }

    fn find(&self, name: &str) -> Vec<Key<Part>> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(name).cloned().unwrap_or_default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("rekord-quickstart-{}", std::process::id()));
    // A fresh directory per run; a leftover from an earlier run is simply replaced.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("inventory.rekord");

    let bolt;
    {
        let db = Db::open(&path)?; // embedded: a single redb file, no server
        let parts = db.tree::<Part>()?; // typed handle, cheap to clone
        let events = db.subscribe(); // every committed change, in commit order

        // An indexer is replayed over existing records, then sees every change.
        let by_name = ByName::default();
        let idx = by_name.clone();
        parts.register_indexer(move |c: &Change<'_, Part>| idx.apply(c))?;

        bolt = parts.create(&Part {
            name: "bolt M6".into(),
            qty: 100,
            tags: vec!["metric".into()],
        })?;
        println!("created {bolt:?}");

        // Zero-copy read: the closure sees the archived record in place.
        let name_len = parts.with(bolt, |p| p.name.len())?;
        println!("zero-copy read: name has {name_len} bytes");

        parts.update(bolt, |p| p.qty -= 12)?; // this replica holds the borrow of what it created
        println!("after update: {:?}", parts.get(bolt)?);

        parts.release(bolt)?; // revision 0 is now frozen
        parts.set_state(bolt, 1)?; // released revisions keep a mutable state number
        let rev1 = parts.new_revision(bolt)?; // an editable copy: (id, rev 1)
        parts.update(rev1, |p| p.name = "bolt M6 (zinc)".into())?;
        println!(
            "revisions of {}: {:?}",
            bolt.id(),
            parts.revisions(bolt.id())?
        );

        // Atomic batch: both records or neither.
        db.write(|b| {
            b.create(&Part {
                name: "nut M6".into(),
                qty: 250,
                tags: vec![],
            })?;
            b.create(&Part {
                name: "washer M6".into(),
                qty: 500,
                tags: vec![],
            })?;
            Ok(())
        })?;

        println!("index: 'bolt M6' -> {:?}", by_name.find("bolt M6"));
        println!(
            "index: 'bolt M6 (zinc)' -> {:?}",
            by_name.find("bolt M6 (zinc)")
        );

        // A GUI would poll this every frame; it never blocks.
        for ev in events.try_iter() {
            if let Event::Record(r) = ev {
                println!(
                    "event #{:<2} {:>8} {}  {:?}",
                    r.commit, r.tree, r.key, r.kind
                );
            }
        }
        check(&parts)?;
    }

    // Reopen: everything committed is there.
    let db = Db::open(&path)?;
    let parts = db.tree::<Part>()?;
    println!("after reopen: {} revisions stored", parts.len()?);
    for r in parts.iter()? {
        let r = r?;
        let m = r.meta();
        println!(
            "  {:<6} {:<16} qty {:>3}  released: {:<5} state: {}",
            r.key().to_string(),
            r.name.as_str(),
            r.qty.to_native(),
            m.released,
            m.state
        );
    }
    println!("rev 0 is still {:?}", parts.get(bolt)?.name);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Checks what the tour promised, so running the example is also a test.
fn check(parts: &rekord::Tree<Part>) -> Result<(), rekord::Error> {
    let bolt = Key::<Part>::new(1, 0);
    let ok = parts.meta(bolt)?.released
        && parts.meta(bolt)?.state == 1
        && parts.get(bolt.with_rev(1))?.name == "bolt M6 (zinc)"
        && parts.len()? == 4;
    if !ok {
        eprintln!("quickstart: unexpected database contents");
        std::process::exit(1);
    }
    Ok(())
}
