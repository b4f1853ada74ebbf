//! Applying server changes to the local database (synced databases).
//!
//! Remote changes go through a normal [`Batch`], so they reach the hot cache, indexers and
//! subscribers exactly like local ones (with the origin replica in the event), and the
//! cursor is stored in the same transaction as the data it covers.

use super::batch::{Batch, Pending};
use super::evolve;
use crate::event::{EventKind, SyncEvent};
use crate::proto::{ChangeKind, Sequenced};
use crate::schema::dynamic;
use crate::storage::{
    Header, JOURNAL, JOURNAL_STATES, META, PENDING, SCHEMAS, id_range, pack, record_digest, unpack,
};
use crate::{Error, RawKey, Result};
use redb::{ReadableTable, ReadableTableMetadata};
use std::sync::atomic::Ordering;

impl Batch<'_> {
    /// Stores `cursor` (the last applied server sequence number) with this batch.
    pub(crate) fn set_cursor(&mut self, cursor: u64) {
        self.core.cursor = Some(cursor);
    }

    pub(crate) fn pend(
        &mut self,
        tree: u32,
        key: RawKey,
        kind: EventKind,
        origin: u32,
        old: Option<Vec<u8>>,
        new: Option<&[u8]>,
    ) {
        let indexed = self
            .core
            .trees
            .get(tree as usize)
            .is_some_and(|s| s.has_indexers.load(Ordering::Relaxed));
        let bytes = indexed.then(|| Box::new((old, new.map(<[u8]>::to_vec))));
        self.core.pending.push(Pending {
            tree,
            key,
            kind,
            origin,
            event: true,
            invalidate: true,
            bytes,
        });
    }

    /// Applies changes other replicas made (data changes whose origin is this replica are
    /// skipped: their effect is here already, and applying them could undo later local
    /// writes; borrow changes are facts of the server's log and always applied, so a grant
    /// lands after any older borrow change). Record bytes are checked against the stored
    /// schema of their version, which the caller made sure is stored.
    ///
    /// A data change of another replica to a record with optimistic edits still in this
    /// replica's outbox is not applied either: those edits are based on an older version,
    /// so the server refuses them with a conflict, and the merge then brings the other
    /// replica's version in (see [`crate::sync::merge`]).
    pub(crate) fn apply_remote(&mut self, entries: &[Sequenced]) -> Result<Vec<SyncEvent>> {
        let mut skipped = Vec::new();
        let me = self.core.replica;
        // Changes held back for records with optimistic edits (by sequence number).
        let held: std::collections::HashSet<u64> = {
            let mut pending = self.txn.open_table(PENDING)?;
            let mut held = std::collections::HashSet::new();
            if !pending.is_empty()? {
                for e in entries {
                    let c = &e.change;
                    if e.origin != me
                        && pending.get((c.tree.as_str(), c.id))?.is_some_and(|v| {
                            crate::storage::outbox::PendingRow::decode(v.value()).holds_back(e.seq)
                        })
                    {
                        held.insert(e.seq);
                    }
                }
                // Rows without waiting edits go once the cursor passed their floor.
                if let Some(last) = entries.last().map(|e| e.seq) {
                    pending.retain(|_, v| !crate::storage::outbox::PendingRow::done_at(v, last))?;
                }
            }
            held
        };
        {
            let at = crate::rt::now_ms() << 1;
            let mut journal = self.txn.open_table(JOURNAL)?;
            for e in entries {
                let own = u64::from(e.origin == me);
                journal.insert((e.seq, e.change.tree.as_str(), e.change.id), at | own)?;
            }
        }
        let mut first_noted = None;
        for entry in entries {
            let change = &entry.change;
            if let ChangeKind::Edit { hlc, .. } = change.kind
                && hlc > self.core.hlc
            {
                self.core.hlc = hlc;
                self.core.hlc_moved = true;
            }
            if entry.origin == me && !matches!(change.kind, ChangeKind::Borrow { .. }) {
                continue;
            }
            let data = matches!(
                change.kind,
                ChangeKind::Put { .. } | ChangeKind::Edit { .. }
            );
            if data && held.contains(&entry.seq) {
                continue;
            }
            if let Some(event) = self.apply_one(entry)? {
                skipped.push(event);
            }
            if entry.origin != me && !matches!(change.kind, ChangeKind::Borrow { .. }) {
                self.note_state(entry)?;
                first_noted.get_or_insert(entry.seq);
            }
        }
        // The first push noted: every state pushes bring is noted from it on.
        if let Some(seq) = first_noted {
            let mut meta = self.txn.open_table(META)?;
            if meta.get(crate::sync::JOURNAL_STATES_FROM)?.is_none() {
                meta.insert(
                    crate::sync::JOURNAL_STATES_FROM,
                    seq.to_le_bytes().as_slice(),
                )?;
            }
        }
        Ok(skipped)
    }

    /// Notes the state `entry` (another replica's change) left its record in
    /// (`rekord.journal_states`, see there).
    fn note_state(&mut self, entry: &Sequenced) -> Result<()> {
        let change = &entry.change;
        let digest = {
            let state = self.db.tree_state(&change.tree);
            let table = self.txn.open_table(state.def())?;
            let mut revisions = Vec::new();
            for row in table.range(id_range(change.id))? {
                let (k, v) = row?;
                revisions.push((unpack(k.value()).rev, v.value().to_vec()));
            }
            record_digest(revisions.iter().filter_map(|(rev, v)| {
                Header::parse(v).map(|(h, data)| (*rev, h.version, h.released, h.state, data))
            }))
        };
        // The server names the replica of a revision's last change of data, release or
        // state (`Revision::by`); a removal is noted with origin 0, matched whoever the
        // server names.
        let origin = match change.kind {
            ChangeKind::Remove => 0,
            _ => entry.origin,
        };
        self.note_digest(entry.seq, &change.tree, change.id, digest, origin)
    }

    /// Notes that record `id` of `tree` was seen here in the state `digest`, which the
    /// server's change `seq` left it in.
    fn note_digest(
        &mut self,
        seq: u64,
        tree: &str,
        id: u64,
        digest: u64,
        origin: u32,
    ) -> Result<()> {
        self.txn
            .open_table(JOURNAL_STATES)?
            .insert((seq, tree, id), (digest, origin))?;
        Ok(())
    }

    /// Applies one change; a data change whose bytes do not decode with this replica's
    /// schema of their version is skipped and reported (`Some`), so one unreadable record
    /// never stops a replica from syncing.
    fn apply_one(&mut self, entry: &Sequenced) -> Result<Option<SyncEvent>> {
        let change = &entry.change;
        if let ChangeKind::Borrow { holder } = change.kind {
            self.apply_borrow(&change.tree, change.id, holder)?;
            return Ok(None);
        }
        let state = self.db.tree_state(&change.tree);
        let tree = self.tree_index(&state);
        let key = RawKey::new(change.id, change.rev);
        let corrupt = |reason: String| Error::Corrupt {
            tree: change.tree.clone(),
            key,
            reason,
        };
        let mut table = self.txn.open_table(state.def())?;
        let current = match table.get(pack(key))? {
            Some(g) => {
                let v = g.value().to_vec();
                let (h, _) =
                    Header::parse(&v).ok_or_else(|| corrupt("invalid value header".into()))?;
                Some((h, v))
            }
            None => None,
        };
        match &change.kind {
            // Handled above.
            ChangeKind::Borrow { .. } => {}
            ChangeKind::Put { version, data } | ChangeKind::Edit { version, data, .. } => {
                let schema = evolve::writer_schema(&state, *version, || {
                    Ok(self.txn.open_table(SCHEMAS)?)
                })?;
                if let Err(e) = dynamic::decode(&schema, data) {
                    let reason = format!(
                        "the server sent record data that does not match this replica's \
                         schema version {version} (another build of the application declares \
                         tree `{}` differently?): {e}",
                        change.tree
                    );
                    tracing::warn!(tree = %change.tree, %key, seq = entry.seq, %reason, "rekord sync: skipped a change");
                    return Ok(Some(SyncEvent::Skipped {
                        tree: change.tree.clone(),
                        key,
                        seq: entry.seq,
                        reason,
                    }));
                }
                let (header, kind, old) = match current {
                    Some((h, old)) => (
                        Header {
                            version: *version,
                            ..h
                        },
                        EventKind::Updated,
                        Some(old),
                    ),
                    None => {
                        // A new record or revision: its creator holds the borrow (the
                        // server only accepts a new revision from the borrow's holder),
                        // unless it was an optimistic create.
                        let optimistic = matches!(change.kind, ChangeKind::Edit { .. });
                        let header = Header {
                            released: false,
                            version: *version,
                            state: 0,
                            holder: if optimistic { 0 } else { entry.origin },
                        };
                        let kind = if key.rev == 0 {
                            EventKind::Created
                        } else {
                            EventKind::RevisionCreated
                        };
                        (header, kind, None)
                    }
                };
                let value = header.value(data);
                table.insert(pack(key), value.as_slice())?;
                drop(table);
                self.pend(tree, key, kind, entry.origin, old, Some(&value));
            }
            ChangeKind::Remove => {
                let Some((h, old)) = current else {
                    return Ok(None);
                };
                table.remove(pack(key))?;
                if key.rev > 0 {
                    // The previous revision becomes the latest and carries the borrow.
                    let prev = RawKey::new(key.id, key.rev - 1);
                    let pv = table.get(pack(prev))?.map(|g| g.value().to_vec());
                    if let Some(mut pv) = pv
                        && let Some((ph, _)) = Header::parse(&pv)
                    {
                        Header {
                            holder: h.holder,
                            ..ph
                        }
                        .write_into(&mut pv);
                        table.insert(pack(prev), pv.as_slice())?;
                    }
                }
                drop(table);
                self.pend(tree, key, EventKind::Removed, entry.origin, Some(old), None);
                if key.rev > 0 {
                    // Not an event (the borrow of the id did not change), but cached copies
                    // of the previous revision go.
                    self.core.pending.push(Pending {
                        tree,
                        key: RawKey::new(key.id, key.rev - 1),
                        kind: EventKind::Updated,
                        origin: entry.origin,
                        event: false,
                        invalidate: true,
                        bytes: None,
                    });
                }
            }
            ChangeKind::Release => {
                let Some((h, mut v)) = current else {
                    return Ok(None);
                };
                if h.released {
                    return Ok(None);
                }
                Header {
                    released: true,
                    ..h
                }
                .write_into(&mut v);
                table.insert(pack(key), v.as_slice())?;
                drop(table);
                self.pend(tree, key, EventKind::Released, entry.origin, None, Some(&v));
            }
            ChangeKind::SetState(s) => {
                let Some((h, mut v)) = current else {
                    return Ok(None);
                };
                if h.state == *s {
                    return Ok(None);
                }
                Header { state: *s, ..h }.write_into(&mut v);
                table.insert(pack(key), v.as_slice())?;
                drop(table);
                let kind = EventKind::StateChanged {
                    old: h.state,
                    new: *s,
                };
                self.pend(tree, key, kind, entry.origin, None, Some(&v));
            }
        }
        Ok(None)
    }

    /// Records that the borrow of record `id` of `tree` is now held by `holder` (0:
    /// nobody), as the server says.
    pub(crate) fn apply_borrow(&mut self, tree: &str, id: u64, holder: u32) -> Result<()> {
        let state = self.db.tree_state(tree);
        let ti = self.tree_index(&state);
        let mut table = self.txn.open_table(state.def())?;
        let latest = match table.range(id_range(id))?.next_back() {
            Some(row) => {
                let (k, v) = row?;
                Some((unpack(k.value()), v.value().to_vec()))
            }
            None => None,
        };
        // A record not here (yet, or not subscribed): its creation brings its holder.
        let Some((key, mut v)) = latest else {
            return Ok(());
        };
        let Some((h, _)) = Header::parse(&v) else {
            return Err(Error::Corrupt {
                tree: tree.to_owned(),
                key,
                reason: "invalid value header".into(),
            });
        };
        if h.holder == holder {
            return Ok(());
        }
        Header { holder, ..h }.write_into(&mut v);
        table.insert(pack(key), v.as_slice())?;
        drop(table);
        let (kind, origin) = if holder == 0 {
            (EventKind::Returned { holder: h.holder }, h.holder)
        } else {
            (EventKind::Borrowed { holder }, holder)
        };
        self.pend(ti, key, kind, origin, None, Some(&v));
        Ok(())
    }
}

impl Batch<'_> {
    /// Replaces every local revision of record `id` of `tree` by the server's state
    /// (`revisions`, oldest first; `holder` holds the borrow): after the server refused this
    /// replica's changes to it, the local copy goes back to what everyone else has. Events
    /// (origin 0, the server) for every revision that changed; data checked against its
    /// schema, which the caller made sure is stored.
    pub(crate) fn replace_record(
        &mut self,
        tree: &str,
        id: u64,
        holder: u32,
        revisions: &[crate::proto::Revision],
    ) -> Result<()> {
        let state = self.db.tree_state(tree);
        let ti = self.tree_index(&state);
        for r in revisions {
            let schema =
                evolve::writer_schema(&state, r.version, || Ok(self.txn.open_table(SCHEMAS)?))?;
            dynamic::decode(&schema, &r.data).map_err(|e| Error::Corrupt {
                tree: tree.to_owned(),
                key: RawKey::new(id, r.rev),
                reason: format!("the server sent record data that does not match its schema: {e}"),
            })?;
        }
        let mut table = self.txn.open_table(state.def())?;
        let mut local: Vec<(RawKey, Vec<u8>)> = Vec::new();
        for row in table.range(id_range(id))? {
            let (k, v) = row?;
            local.push((unpack(k.value()), v.value().to_vec()));
        }
        let latest = revisions.last().map(|r| r.rev);
        let mut events = Vec::new();
        for (k, old) in &local {
            if !revisions.iter().any(|r| r.rev == k.rev) {
                table.remove(pack(*k))?;
                events.push((*k, EventKind::Removed, Some(old.clone()), None));
            }
        }
        for r in revisions {
            let key = RawKey::new(id, r.rev);
            let old = local.iter().find(|(k, _)| k.rev == r.rev).map(|(_, v)| v);
            let old_holder = old
                .and_then(|v| Header::parse(v))
                .map_or(0, |(h, _)| h.holder);
            let header = Header {
                released: r.released,
                version: r.version,
                state: r.state,
                holder: if Some(r.rev) == latest {
                    holder
                } else {
                    old_holder
                },
            };
            let value = header.value(&r.data);
            if old.is_some_and(|o| *o == value) {
                continue;
            }
            table.insert(pack(key), value.as_slice())?;
            let kind = match old {
                Some(_) => EventKind::Updated,
                None if r.rev == 0 => EventKind::Created,
                None => EventKind::RevisionCreated,
            };
            events.push((key, kind, old.cloned(), Some(value)));
        }
        drop(table);
        for (key, kind, old, new) in events {
            self.pend(ti, key, kind, 0, old, new.as_deref());
        }
        // A state seen here, like those pushes bring (a resync, a grant outside the
        // subscription): at the sequence number of its last data change.
        if let Some(last) = revisions
            .iter()
            .filter(|r| r.changed > 0)
            .max_by_key(|r| r.changed)
        {
            let digest = record_digest(
                revisions
                    .iter()
                    .map(|r| (r.rev, r.version, r.released, r.state, r.data.as_slice())),
            );
            self.note_digest(last.changed, tree, id, digest, last.by)?;
        }
        Ok(())
    }
}
