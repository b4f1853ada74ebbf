//! Export a tree or a whole database to a RON file, and import it back, exactly: keys,
//! revisions, released flags, states, holders, schema versions and data.
//!
//! The file is one RON list, one entry per line (so it streams both ways, and a line number
//! says where a problem is): first every schema version, then every record, each record's
//! data as one-line RON of the schema it was written with.
//!
//! ```text
//! // rekord export 1
//! [
//! (schema: "parts", version: 1, text: "(tree: \"parts\", version: 1, ...)"),
//! (tree: "parts", id: 3, rev: 0, released: true, state: 2, holder: 1, version: 1, data: (name: "bolt", qty: 3)),
//! ]
//! ```

use crate::ViewerError;
use crate::render;
use rekord::schema::Schema;
use rekord::schema::dynamic::ValueSeed;
use rekord::{Db, DynRecord, Import, RawKey, RecordMeta};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Read as _, Write};
use std::sync::Arc;

/// The first line of an export.
pub const HEADER: &str = "// rekord export 1";

/// Writes `trees` (every tree if empty) of `db` to `out`; `progress` is called with the
/// number of records written so far (every 1,000, and at the end). Returns how many records
/// were written.
pub fn export(
    db: &Db,
    trees: &[String],
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ViewerError> {
    let all = db.trees()?;
    let chosen: Vec<String> = if trees.is_empty() {
        all.iter().map(|t| t.name.clone()).collect()
    } else {
        for t in trees {
            if !all.iter().any(|a| &a.name == t) {
                return Err(rekord::Error::NoSuchTree { tree: t.clone() }.into());
            }
        }
        trees.to_vec()
    };
    writeln!(out, "{HEADER}")?;
    writeln!(out, "[")?;
    for name in &chosen {
        for s in db.schemas(name)? {
            let text = s
                .to_ron()
                .map_err(|e| ViewerError::Usage(format!("cannot write a schema: {e}")))?;
            writeln!(
                out,
                "(schema: {}, version: {}, text: {}),",
                ron_string(name),
                s.version,
                ron_string(&text)
            )?;
        }
    }
    let mut n = 0u64;
    for name in &chosen {
        let tree = db.dyn_tree(name)?;
        let schemas: HashMap<u32, Schema> = db
            .schemas(name)?
            .into_iter()
            .map(|s| (s.version, s))
            .collect();
        for r in tree.iter()? {
            let mut r = r?;
            // Hash maps and sets in key order: the same data exports the same text.
            let Some(s) = schemas.get(&r.meta.version) else {
                // (A replica being synced got a new schema version during the export.)
                return Err(ViewerError::Usage(format!(
                    "record {} has schema version {}, which came after the export began: run \
                     it again",
                    r.key, r.meta.version
                )));
            };
            render::canonical(s, &s.root, &mut r.value);
            writeln!(
                out,
                "(tree: {}, id: {}, rev: {}, released: {}, state: {}, holder: {}, version: {}, data: {}),",
                ron_string(name),
                r.key.id,
                r.key.rev,
                r.meta.released,
                r.meta.state,
                r.meta.holder,
                r.meta.version,
                rekord::schema::dynamic::to_ron_line(&r.value)
            )?;
            n += 1;
            if n.is_multiple_of(1000) {
                progress(n);
            }
        }
    }
    writeln!(out, "]")?;
    out.flush()?;
    progress(n);
    Ok(n)
}

fn ron_string(s: &str) -> String {
    // A string always serializes.
    ron::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Checks that `path` starts like an export (before anything is opened for it).
pub fn check_header(path: &std::path::Path) -> Result<(), ViewerError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ViewerError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut first = String::new();
    std::io::BufReader::new(file)
        .take(256)
        .read_line(&mut first)
        .map_err(|e| {
            ViewerError::Usage(format!("{} is not a rekord export: {e}", path.display()))
        })?;
    if first.trim_start_matches('\u{feff}').trim() != HEADER {
        return Err(ViewerError::Usage(format!(
            "{} is not a rekord export: its first line is not `{HEADER}`",
            path.display()
        )));
    }
    Ok(())
}

/// Reads an export from `input` into `db` (standalone): schemas first, then every record in
/// one batch, so a problem anywhere (a line that does not parse, a record that does not fit
/// its schema, a key that exists already) writes no record at all; it names the line.
/// `progress` is called with the number of records read so far.
pub fn import(
    db: &Db,
    input: &mut dyn BufRead,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ViewerError> {
    let mut lines = input.lines().enumerate();
    let first = lines
        .next()
        .map(|(_, l)| l)
        .transpose()?
        .unwrap_or_default();
    if first.trim_start_matches('\u{feff}').trim() != HEADER {
        return Err(ViewerError::Usage(format!(
            "not a rekord export: its first line is not `{HEADER}`"
        )));
    }
    let mut schemas: HashMap<(String, u32), Arc<Schema>> = HashMap::new();
    let mut count = 0u64;
    let stop = |i: usize, e: &dyn fmt::Display| rekord::Error::ImportAborted {
        reason: format!("line {}: {e}", i + 1),
    };
    // The list must close: an export cut short at a line boundary is refused, not
    // imported in part.
    let mut closed = false;
    let mut last_line = 0;
    // Schema lines are stored as they come; records go to one batch, read lazily.
    let records = std::iter::from_fn(|| {
        loop {
            let Some(next) = lines.next() else {
                if closed {
                    return None;
                }
                return Some(Err(stop(
                    last_line,
                    &"the export ends without its closing `]` (cut short?); nothing was imported",
                )));
            };
            let (i, line) = match next {
                (i, Ok(line)) => (i, line),
                (i, Err(e)) => return Some(Err(stop(i, &e))),
            };
            last_line = i;
            let text = line.trim();
            if text.is_empty() || text.starts_with("//") {
                continue;
            }
            if closed {
                return Some(Err(stop(i, &"text after the closing `]`")));
            }
            if text == "[" {
                continue;
            }
            if text == "]" {
                closed = true;
                continue;
            }
            let text = text.strip_suffix(',').unwrap_or(text);
            let parsed =
                ron::Options::default().from_str_seed(text, EntrySeed { schemas: &schemas });
            return Some(match parsed {
                Ok(Entry::Schema(s)) => {
                    schemas.insert((s.tree.clone(), s.version), Arc::new(s.clone()));
                    Ok(Import::Schema(s))
                }
                Ok(Entry::Record(r)) => {
                    count += 1;
                    if count.is_multiple_of(1000) {
                        progress(count);
                    }
                    Ok(Import::Record(r))
                }
                Err(e) => Err(stop(i, &e)),
            });
        }
    });
    let n = db.import(records)?;
    progress(n);
    Ok(n)
}

enum Entry {
    Schema(Schema),
    Record(Box<DynRecord>),
}

/// Reads one entry, the record's data with the schema its `tree` and `version` name (which
/// come before `data` on the line).
struct EntrySeed<'a> {
    schemas: &'a HashMap<(String, u32), Arc<Schema>>,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
        d.deserialize_struct("", &[], self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a schema or a record entry")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        let (mut tree, mut schema_of) = (None::<String>, None::<String>);
        let (mut id, mut rev, mut version) = (None::<u64>, None::<u32>, None::<u32>);
        let (mut released, mut state, mut holder) = (false, 0u32, 0u32);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "schema" => schema_of = Some(map.next_value()?),
                "text" => {
                    let text: String = map.next_value()?;
                    let s = Schema::from_ron(&text).map_err(|e| {
                        de::Error::custom(format!("a schema that does not parse: {e}"))
                    })?;
                    if schema_of.as_deref() != Some(s.tree.as_str()) || version != Some(s.version) {
                        return Err(de::Error::custom(
                            "the schema text is not the tree and version the line names",
                        ));
                    }
                    return Ok(Entry::Schema(s));
                }
                "tree" => tree = Some(map.next_value()?),
                "id" => id = Some(map.next_value()?),
                "rev" => rev = Some(map.next_value()?),
                "released" => released = map.next_value()?,
                "state" => state = map.next_value()?,
                "holder" => holder = map.next_value()?,
                "version" => version = Some(map.next_value()?),
                "data" => {
                    let (Some(t), Some(id), Some(rev), Some(v)) = (&tree, id, rev, version) else {
                        return Err(de::Error::custom(
                            "`tree`, `id`, `rev` and `version` come before `data`",
                        ));
                    };
                    let schema = self.schemas.get(&(t.clone(), v)).ok_or_else(|| {
                        de::Error::custom(format!(
                            "no schema version {v} of tree `{t}` came before this record"
                        ))
                    })?;
                    let value = map.next_value_seed(ValueSeed::new(schema))?;
                    let key = RawKey::new(id, rev);
                    return Ok(Entry::Record(Box::new(DynRecord {
                        key: rekord::DynKey {
                            tree: Arc::from(t.as_str()),
                            id: key.id,
                            rev: key.rev,
                        },
                        meta: RecordMeta::new(released, state, holder, v),
                        value,
                    })));
                }
                other => return Err(de::Error::custom(format!("unknown field `{other}`"))),
            }
        }
        Err(de::Error::custom("an entry without `data` or `text`"))
    }
}
