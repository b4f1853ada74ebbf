//! Merging a conflicting optimistic edit (synced databases; see [`crate::sync::merge`]).

use super::batch::{Batch, alloc_id};
use super::evolve;
use crate::event::{Conflict, EventKind};
use crate::proto::{Change, ChangeKind, Current};
use crate::schema::dynamic;
use crate::storage::outbox::{self, Entry};
use crate::storage::{HEADER_LEN, Header, OUTBOX, PENDING, SCHEMAS, pack};
use crate::sync::local::Resolved;
use crate::sync::merge::{Merge, Side, Stamped, Winner, hlc_next};
use crate::{Error, RawKey, Result};
use redb::ReadableTable;

impl Batch<'_> {
    /// Resolves the conflict the server reported for outbox entry `entry` (still in the
    /// outbox: the server did not count it as processed): merges this replica's version of
    /// the record with the server's (`current`) per `merge` (`None`: the strategy the edits
    /// were made under), writes the outcome here (with events), and rewrites the entry: its
    /// other changes and, unless the server's version won as is, the outcome as an edit
    /// based on `current.seq`. Later edits of the record in the outbox are dropped: the
    /// outcome includes them. `None` if the entry no longer edits the record (an earlier
    /// merge took its edits out). The schemas of `current` (and its base) must be stored.
    pub(crate) fn resolve_conflict(
        &mut self,
        entry: u64,
        current: &Current,
        merge: Option<Merge>,
    ) -> Result<Option<Resolved>> {
        let tree = current.tree.as_str();
        let key = RawKey::new(current.id, current.rev);
        let is_edit_of_record = |c: &Change| {
            c.tree == tree && c.id == key.id && matches!(c.kind, ChangeKind::Edit { .. })
        };
        // The entry as it is now (merging an earlier conflict of the same request may have
        // taken the record's edits out of it already: nothing left to merge then).
        let changes = match self.txn.open_table(OUTBOX)?.get(entry)? {
            Some(v) => match outbox::decode(v.value())?.1 {
                Entry::Changes(changes) => changes,
                Entry::Return { .. } => return Ok(None),
            },
            None => return Ok(None),
        };
        if !changes.iter().any(is_edit_of_record) {
            return Ok(None);
        }
        let state = self.db.tree_state(tree);
        let ti = self.tree_index(&state);
        let corrupt = |reason: String| Error::Corrupt {
            tree: tree.to_owned(),
            key,
            reason,
        };
        let schema = |version: u32| {
            evolve::writer_schema(&state, version, || Ok(self.txn.open_table(SCHEMAS)?))
        };
        let ron = |version: u32, data: &[u8]| -> String {
            match schema(version).map(|s| dynamic::decode(&s, data)) {
                Ok(Ok(v)) => dynamic::to_ron(&v),
                Ok(Err(e)) => format!("<undecodable: {e}>"),
                Err(e) => format!("<undecodable: {e}>"),
            }
        };
        // The server's data is checked like any data from the network.
        let theirs_schema = schema(current.version)?;
        dynamic::decode(&theirs_schema, &current.data).map_err(|e| {
            corrupt(format!(
                "the server sent conflicting data that does not match its schema: {e}"
            ))
        })?;
        let (local, pending) = {
            let table = self.txn.open_table(state.def())?;
            let local = table.get(pack(key))?.map(|g| g.value().to_vec());
            let pending = self.txn.open_table(PENDING)?;
            let row = pending
                .get((tree, key.id))?
                .map(|v| outbox::PendingRow::decode(v.value()));
            (local, row)
        };
        let mine_hlc = pending.as_ref().map_or(0, |r| r.hlc);
        // The tree's strategy: configured or from the record type, else the one the edits
        // were made under, else last-write-wins.
        let merge = merge
            .or_else(|| pending.as_ref().and_then(|r| Merge::from_name(&r.strategy)))
            .unwrap_or_else(Merge::last_write_wins);
        let merge = &merge;
        // The common ancestor: the version this replica's edits started from (or its last
        // accepted edit), else what the server's log had at their base.
        let local_base = pending
            .as_ref()
            .and_then(|r| Header::parse(&r.base_value))
            .map(|(h, d)| (h.version, d));
        let base = local_base
            .or(current.base.as_ref().map(|(v, d)| (*v, d.as_slice())))
            .filter(|(v, d)| schema(*v).is_ok_and(|s| dynamic::decode(&s, d).is_ok()))
            .map(|(version, data)| Side { version, data });
        let local = match local {
            Some(v) => {
                let (h, _) =
                    Header::parse(&v).ok_or_else(|| corrupt("invalid value header".into()))?;
                Some((h, v))
            }
            None => None,
        };
        let me = self.core.replica;
        // The clock moves past the other side's.
        self.core.hlc = self.core.hlc.max(current.hlc);
        let (outcome, mine_ron) = match &local {
            Some((h, v)) => {
                let mine = Stamped {
                    side: Side {
                        version: h.version,
                        data: v.get(HEADER_LEN..).unwrap_or_default(),
                    },
                    hlc: mine_hlc,
                    replica: me,
                };
                let theirs = Stamped {
                    side: Side {
                        version: current.version,
                        data: &current.data,
                    },
                    hlc: current.hlc,
                    replica: current.origin,
                };
                (
                    merge.merge(&schema, base, &mine, &theirs)?,
                    ron(mine.side.version, mine.side.data),
                )
            }
            // Gone here (it cannot be removed without the borrow): the server's side.
            None => (
                crate::sync::merge::Outcome {
                    winner: Winner::Theirs,
                    merged: None,
                    note: Some("the record is missing here".into()),
                },
                "<missing>".into(),
            ),
        };
        // The record as it ends up, and the edit to send (unless the server's side won).
        let (final_version, final_data): (u32, Vec<u8>) = match (&outcome.winner, &local) {
            (Winner::Mine, Some((h, v))) => {
                (h.version, v.get(HEADER_LEN..).unwrap_or_default().to_vec())
            }
            (Winner::Merged, _) => outcome
                .merged
                .clone()
                .ok_or_else(|| corrupt("a merge produced no record".into()))?,
            _ => (current.version, current.data.clone()),
        };
        let final_ron = ron(final_version, &final_data);
        let theirs_ron = ron(current.version, &current.data);
        // Write the outcome here.
        if outcome.winner != Winner::Mine {
            let header = match &local {
                Some((h, _)) => Header {
                    version: final_version,
                    ..*h
                },
                None => Header {
                    released: false,
                    version: final_version,
                    state: 0,
                    holder: 0,
                },
            };
            let value = header.value(&final_data);
            let mut table = self.txn.open_table(state.def())?;
            table.insert(pack(key), value.as_slice())?;
            drop(table);
            let (kind, old) = match &local {
                Some((_, old)) => (EventKind::Updated, Some(old.clone())),
                None => (EventKind::Created, None),
            };
            let origin = if outcome.winner == Winner::Theirs {
                current.origin
            } else {
                me
            };
            self.pend(ti, key, kind, origin, old, Some(&value));
        }
        // What goes to the server in the entry: its other changes, then the outcome.
        let in_entry = changes.iter().filter(|c| is_edit_of_record(c)).count() as u64;
        // Whether later entries hold edits of the record too (else they are not read).
        let later_edits = pending.as_ref().is_some_and(|r| r.count > in_entry);
        let mut front: Vec<Change> = changes
            .into_iter()
            .filter(|c| !is_edit_of_record(c))
            .collect();
        let resend = outcome.winner != Winner::Theirs;
        // The outcome keeps the time of what it is made of (so a later last-write-wins
        // comparison sees when the winning edit was made, not when it was merged).
        let hlc = match outcome.winner {
            Winner::Mine => mine_hlc,
            _ => mine_hlc.max(current.hlc),
        };
        if resend {
            front.push(Change {
                tree: tree.to_owned(),
                id: key.id,
                rev: key.rev,
                kind: ChangeKind::Edit {
                    base: current.seq,
                    hlc,
                    version: final_version,
                    data: final_data.clone(),
                },
            });
        }
        self.core.hlc_moved = true;
        let mut bytes_delta = 0i64;
        {
            let mut table = self.txn.open_table(OUTBOX)?;
            // Later edits of the record are part of the outcome (it started from this
            // replica's latest version): drop them.
            let later: Vec<(u64, Vec<u8>)> = table
                .range(entry + 1..)?
                .take(if later_edits { usize::MAX } else { 0 })
                .map(|row| row.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<std::result::Result<_, _>>()?;
            for (n, bytes) in later {
                let (at, e) = outbox::decode(&bytes)?;
                let Entry::Changes(list) = e else {
                    continue;
                };
                let kept: Vec<Change> = list
                    .iter()
                    .filter(|c| !is_edit_of_record(c))
                    .cloned()
                    .collect();
                if kept.len() != list.len() {
                    let value = outbox::encode(&Entry::Changes(kept), at)?;
                    bytes_delta += value.len() as i64 - bytes.len() as i64;
                    table.insert(n, value.as_slice())?;
                    self.core.rewritten.push(n);
                }
            }
            // The entry itself, merged, goes again under its number.
            let (at, old) = match table.get(entry)? {
                Some(v) => (outbox::decode(v.value())?.0, v.value().len() as i64),
                None => (crate::rt::now_ms(), 0),
            };
            let value = outbox::encode(&Entry::Changes(front), at)?;
            bytes_delta += value.len() as i64 - old;
            table.insert(entry, value.as_slice())?;
            self.core.rewritten.push(entry);
        }
        {
            let mut pending = self.txn.open_table(PENDING)?;
            if resend {
                // The outcome is based on the server's version: the next common ancestor.
                let base_value = Header::draft_value(current.version, &current.data);
                let row = outbox::PendingRow {
                    count: 1,
                    base: current.seq,
                    hlc,
                    floor: current.seq,
                    strategy: merge.name(),
                    base_value,
                };
                pending.insert((tree, key.id), row.encode().as_slice())?;
            } else {
                // The record is the server's version `current.seq` now: older pushed
                // changes still to come must not be applied over it.
                let row = outbox::PendingRow {
                    count: 0,
                    base: current.seq,
                    hlc,
                    floor: current.seq,
                    strategy: merge.name(),
                    base_value: Vec::new(),
                };
                pending.insert((tree, key.id), row.encode().as_slice())?;
            }
        }
        // The losing side, kept as a new record.
        let mut kept = None;
        if merge.keeps_loser() {
            let loser = match (&outcome.winner, &local) {
                (Winner::Mine, _) => Some((current.version, current.data.clone())),
                (_, Some((h, v))) => {
                    Some((h.version, v.get(HEADER_LEN..).unwrap_or_default().to_vec()))
                }
                _ => None,
            };
            if let Some((version, data)) = loser {
                match alloc_id(&self.txn, &mut self.core) {
                    Ok(id) => {
                        let k = RawKey::new(id, 0);
                        let value = Header::draft_value(version, &data);
                        self.txn
                            .open_table(state.def())?
                            .insert(pack(k), value.as_slice())?;
                        self.pend(ti, k, EventKind::Created, me, None, Some(&value));
                        let cursor = crate::storage::cursor_in(&self.txn)?;
                        self.core.hlc = hlc_next(self.core.hlc, crate::rt::now_ms());
                        self.core.outbox.push(Change {
                            tree: tree.to_owned(),
                            id,
                            rev: 0,
                            kind: ChangeKind::Edit {
                                base: cursor,
                                hlc: self.core.hlc,
                                version,
                                data,
                            },
                        });
                        kept = Some(k);
                    }
                    // No ids left offline: the loser stays in the event only.
                    Err(Error::IdsExhausted) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut strategy = merge.name();
        if let Some(note) = &outcome.note {
            strategy = format!("{strategy} ({note})");
        }
        Ok(Some(Resolved {
            event: Conflict {
                tree: tree.to_owned(),
                key,
                strategy,
                winner: outcome.winner,
                mine: mine_ron,
                theirs: theirs_ron,
                outcome: final_ron,
                other: current.origin,
                kept,
            },
            bytes_delta,
        }))
    }
}
