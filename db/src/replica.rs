//! The replica's side of the sync client's interface ([`crate::sync::local`]): its
//! [`Local`](local::Local) and [`Write`](local::Write) over the real database, the redb
//! tables of `crate::storage` and the write batch. Every table the sync client's state
//! lives in is read and written here, named by what it means.

use crate::db::{DbInner, read_u64};
use crate::event::{Event, SyncEvent, lock};
use crate::net::Pin;
use crate::proto::{Change, ChangeKind, Current, EntryOutcome, RemoteError, Revision, Sequenced};
use crate::storage::outbox::{self, Entry, PendingRow};
use crate::storage::{
    DEFERRED, Header, JOURNAL, JOURNAL_STATES, META, OUTBOX, PENDING, RANGES, RECHECK, RECLAIM,
    REJECTED, SCHEMAS,
};
use crate::sync::local::{
    self, HelloState, Journal, LocalRevision, Released, Resolved, Run, Seen, Settled, Start,
};
use crate::sync::{
    CLIENT, COVERAGE, CURSOR, Coverage, HISTORY, JOURNAL_FLOOR, JOURNAL_STATES_FROM,
    JOURNAL_UNKNOWN_FLOOR, MODE, Merge, PIN, RECLAIM_COMMON, REPLICA, Readable, UNKNOWN_REPLICA,
    UNKNOWN_SEQ, WEB_HASHES,
};
use crate::{Error, Result};
use redb::{ReadableTable, ReadableTableMetadata};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// The sync client's handle on database `db` (weak: it never keeps it open).
pub(crate) fn handle(db: &Arc<DbInner>) -> local::Handle {
    local::Handle::new(Arc::new(Source(Arc::downgrade(db))))
}

/// Where the handle gets the database from.
struct Source(Weak<DbInner>);

impl local::Source for Source {
    fn get(&self) -> Option<Box<dyn local::Local>> {
        self.0
            .upgrade()
            .map(|inner| Box::new(Replica::new(inner)) as Box<dyn local::Local>)
    }
}

/// A live handle on the replica's database, for the sync client.
struct Replica(crate::Db);

/// One local transaction of the sync client (a [`crate::Batch`]).
struct Txn<'d>(crate::Batch<'d>);

/// A table that may not exist yet (a database that never needed it): `None` then.
fn optional<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: redb::TableDefinition<'_, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn meta_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<u64>> {
    Ok(meta.get(key)?.and_then(|v| read_u64(v.value())))
}

/// The subscription coverage stored in `rekord.meta` (`None` if none, or unreadable).
fn stored_coverage(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<Coverage>> {
    Ok(meta
        .get(COVERAGE)?
        .and_then(|v| std::str::from_utf8(v.value()).ok().map(str::to_owned))
        .and_then(|text| ron::from_str::<Coverage>(&text).ok()))
}

/// Stores the subscription coverage in `rekord.meta`.
fn store_coverage(meta: &mut redb::Table<'_, &str, &[u8]>, c: &Coverage) -> Result<()> {
    let text = ron::to_string(c).map_err(|e| Error::CorruptMeta {
        reason: format!("cannot encode the subscription coverage: {e}"),
    })?;
    meta.insert(COVERAGE, text.as_bytes())?;
    Ok(())
}

/// The stored lineage of the server's history (`sync.history`).
fn stored_history(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(u64, u64)>> {
    let Some(v) = meta.get(HISTORY)? else {
        return Ok(Vec::new());
    };
    Ok(v.value()
        .chunks_exact(16)
        .filter_map(|c| {
            let (a, b) = c.split_first_chunk::<8>()?;
            Some((u64::from_le_bytes(*a), read_u64(b)?))
        })
        .collect())
}

/// Stores the lineage.
fn store_history(meta: &mut redb::Table<'_, &str, &[u8]>, lineage: &[(u64, u64)]) -> Result<()> {
    let mut bytes = Vec::with_capacity(lineage.len() * 16);
    for (id, base) in lineage {
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&base.to_le_bytes());
    }
    meta.insert(HISTORY, bytes.as_slice())?;
    Ok(())
}

/// Whether record `key` waits in `rekord.reclaim` to be taken back after a restore.
fn waits(
    reclaim: &impl ReadableTable<(&'static str, u64), u64>,
    key: &(String, u64),
) -> Result<bool> {
    Ok(reclaim.get((key.0.as_str(), key.1))?.is_some())
}

/// Whether `pending` (`rekord.pending`) has optimistic edits of record `id` of `tree`
/// waiting.
fn has_edits(
    pending: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    tree: &str,
    id: u64,
) -> Result<bool> {
    Ok(pending
        .get((tree, id))?
        .is_some_and(|v| PendingRow::decode(v.value()).count > 0))
}

/// Prepares the client-mode bookkeeping of a database being initialized; its holder
/// number ([`UNKNOWN_REPLICA`] before the first connection).
pub(crate) fn init_meta(meta: &mut redb::Table<'_, &str, &[u8]>, created: bool) -> Result<u32> {
    if created {
        meta.insert(MODE, b"client".as_slice())?;
        meta.insert(CLIENT, crate::rt::random::<16>()?.as_slice())?;
        meta.insert(CURSOR, 0u64.to_le_bytes().as_slice())?;
    }
    let replica = meta
        .get(REPLICA)?
        .and_then(|v| v.value().first_chunk::<4>().map(|b| u32::from_le_bytes(*b)));
    Ok(replica.unwrap_or(UNKNOWN_REPLICA))
}

/// Whether any of outbox entries `first..=last` of `db` was refused for good.
pub(crate) fn rejected_among(db: &DbInner, first: u64, last: u64) -> Result<bool> {
    let txn = db.redb.begin_read()?;
    Ok(txn
        .open_table(REJECTED)?
        .range(first..=last)?
        .next()
        .is_some())
}

impl Replica {
    /// The database of `inner`.
    fn new(inner: Arc<DbInner>) -> Self {
        Replica(crate::Db::internal(inner))
    }

    fn inner(&self) -> &DbInner {
        &self.0.inner
    }

    fn read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.inner().redb.begin_read()?)
    }
}

impl local::Local for Replica {
    fn write(&self) -> Result<Box<dyn local::Write + '_>> {
        Ok(Box::new(Txn(self.0.batch()?)))
    }

    fn replica(&self) -> u32 {
        self.inner().replica.load(Ordering::Acquire)
    }

    fn set_replica(&self, replica: u32) {
        self.inner().replica.store(replica, Ordering::Release);
    }

    fn lazy_pending(&self) -> bool {
        lock(&self.inner().writer).lazy
    }

    fn make_durable(&self) -> Result<bool> {
        crate::tree::batch::Batch::make_durable(self.inner())
    }

    #[cfg(target_arch = "wasm32")]
    fn stored_in_browser(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<(), String>> + '_>>
    {
        Box::pin(async move {
            match self.inner().browser.get() {
                Some(h) => h.flush().await.map_err(|e| e.to_string()),
                None => Ok(()),
            }
        })
    }

    fn emit(&self, event: SyncEvent) {
        #[cfg(target_arch = "wasm32")]
        if let Some(tab) = self.inner().browser.get().and_then(|h| h.tab()) {
            crate::storage::tabs::sync_event(tab, &event);
        }
        self.inner().deliver(&[Event::Sync(event)]);
    }

    fn is_optimistic(&self, tree: &str) -> Result<bool> {
        self.inner().is_optimistic(tree)
    }

    fn merge_for(&self, tree: &str) -> Result<Option<Merge>> {
        self.inner().merge_for(tree)
    }

    fn start(&self) -> Result<Start> {
        let txn = self.read()?;
        let meta = txn.open_table(META)?;
        let client = meta
            .get(CLIENT)?
            .and_then(|v| v.value().first_chunk::<16>().copied())
            .ok_or_else(|| Error::CorruptMeta {
                reason: "the synced database has no client identity".into(),
            })?;
        let cursor = meta_u64(&meta, CURSOR)?.unwrap_or(0);
        let table = txn.open_table(OUTBOX)?;
        let mut outbox_bytes = 0u64;
        for row in table.iter()? {
            outbox_bytes += row?.1.value().len() as u64;
        }
        let mut outbox = table.len()?;
        let mut waiting = 0;
        // Entries waiting for records to be taken back after a restore are still to push.
        if let Some(deferred) = optional(&txn, DEFERRED)? {
            for row in deferred.iter()? {
                outbox_bytes += row?.1.value().len() as u64;
                outbox += 1;
                waiting += 1;
            }
        }
        let rejected = txn.open_table(REJECTED)?.len()?;
        Ok(Start {
            client,
            cursor,
            outbox,
            outbox_bytes,
            rejected,
            waiting,
        })
    }

    fn hello_state(&self) -> Result<HelloState> {
        let txn = self.read()?;
        let meta = txn.open_table(META)?;
        let pin = meta.get(PIN)?.and_then(|v| {
            let (server, cert) = v.value().split_first_chunk::<16>()?;
            Some(Pin {
                server: *server,
                cert: String::from_utf8(cert.to_vec()).ok()?,
            })
        });
        Ok(HelloState {
            cursor: meta_u64(&meta, CURSOR)?.unwrap_or(0),
            pin,
            history: stored_history(&meta)?,
            last_entry: outbox::last_made(&meta)?,
        })
    }

    fn stored_pin(&self) -> Result<Option<Vec<u8>>> {
        let txn = self.read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(PIN)?.map(|v| v.value().to_vec()))
    }

    fn announced_hashes(&self) -> Result<Option<String>> {
        let txn = self.read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get(WEB_HASHES)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    fn coverage(&self) -> Result<Option<Coverage>> {
        let txn = self.read()?;
        stored_coverage(&txn.open_table(META)?)
    }

    fn history(&self) -> Result<Vec<(u64, u64)>> {
        let txn = self.read()?;
        stored_history(&txn.open_table(META)?)
    }

    fn free_ids(&self) -> Result<u64> {
        let next = lock(&self.inner().writer).next_id;
        let txn = self.read()?;
        let ranges = txn.open_table(RANGES)?;
        let mut left = 0u64;
        for row in ranges.iter()? {
            let (start, end) = row?;
            left = left.saturating_add(end.value().saturating_sub(start.value().max(next)));
        }
        Ok(left)
    }

    fn owns_id(&self, id: u64) -> Result<bool> {
        let txn = self.read()?;
        let Some(ranges) = optional(&txn, RANGES)? else {
            return Ok(false);
        };
        Ok(match ranges.range(..=id)?.next_back() {
            Some(r) => id < r?.1.value(),
            None => false,
        })
    }

    fn outbox_run(&self, max_entries: usize, max_bytes: usize) -> Result<Run> {
        let txn = self.read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut first = 0;
        let mut entries: Vec<Vec<Change>> = Vec::new();
        let mut oversized = None;
        let mut bytes = 0usize;
        for row in table.iter()? {
            let (k, v) = row?;
            let n = k.value();
            if entries.is_empty() {
                first = n;
            } else if n != first + entries.len() as u64
                || entries.len() >= max_entries
                || bytes + v.value().len() > max_bytes
            {
                break;
            }
            match outbox::decode(v.value())?.1 {
                Entry::Changes(changes)
                    if let Some(e) = outbox::too_large(&changes, v.value().len() as u64) =>
                {
                    if entries.is_empty() {
                        oversized = Some(e.to_string());
                    }
                    break;
                }
                Entry::Changes(changes) => {
                    bytes += v.value().len();
                    entries.push(changes);
                }
                Entry::Return { tree, id } => {
                    bytes += v.value().len();
                    entries.push(vec![Change {
                        tree,
                        id,
                        rev: 0,
                        kind: ChangeKind::Borrow { holder: 0 },
                    }]);
                }
            }
        }
        Ok(Run {
            first,
            entries,
            oversized,
        })
    }

    fn oldest_entry_at(&self) -> Result<Option<u64>> {
        let txn = self.read()?;
        let table = txn.open_table(OUTBOX)?;
        Ok(match table.first()? {
            Some((_, v)) => Some(outbox::decode(v.value())?.0),
            None => None,
        })
    }

    fn schema(&self, tree: &str, version: u32) -> Result<Option<String>> {
        let txn = self.read()?;
        let schemas = txn.open_table(SCHEMAS)?;
        Ok(schemas.get((tree, version))?.map(|v| v.value().to_owned()))
    }

    fn missing_schemas(&self, versions: &[(String, u32)]) -> Result<Vec<(String, u32)>> {
        let txn = self.read()?;
        let schemas = txn.open_table(SCHEMAS)?;
        let mut needed: Vec<(String, u32)> = Vec::new();
        for key in versions {
            if !needed.contains(key) && schemas.get((key.0.as_str(), key.1))?.is_none() {
                needed.push(key.clone());
            }
        }
        Ok(needed)
    }

    fn unknown_journal_rows(&self) -> Result<Vec<(String, u64)>> {
        let txn = self.read()?;
        let Some(journal) = optional(&txn, JOURNAL)? else {
            return Ok(Vec::new());
        };
        let mut keys = Vec::new();
        for row in journal.range((UNKNOWN_SEQ, "", 0)..)? {
            let (k, _) = row?;
            let (_, tree, id) = k.value();
            keys.push((tree.to_owned(), id));
        }
        Ok(keys)
    }

    fn journal_rows_before(&self, horizon: u64) -> Result<Vec<(u64, String, u64)>> {
        let txn = self.read()?;
        let Some(journal) = optional(&txn, JOURNAL)? else {
            return Ok(Vec::new());
        };
        let mut old = Vec::new();
        for row in journal.iter()? {
            let (k, v) = row?;
            if v.value() >> 1 >= horizon || old.len() >= 100_000 {
                break;
            }
            let (seq, tree, id) = k.value();
            old.push((seq, tree.to_owned(), id));
        }
        Ok(old)
    }

    fn holds(&self, tree: &str, id: u64, me: u32) -> Result<bool> {
        let txn = self.read()?;
        let state = self.inner().tree_state(tree);
        let table = match txn.open_table(state.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let latest = table
            .range(crate::storage::id_range(id))?
            .next_back()
            .transpose()?;
        Ok(latest
            .is_some_and(|(_, v)| Header::parse(v.value()).is_some_and(|(h, _)| h.holder == me)))
    }

    fn revisions(&self, tree: &str, id: u64) -> Result<Vec<LocalRevision>> {
        let txn = self.read()?;
        let name = crate::storage::table_name(tree);
        let def = crate::storage::DataTable::new(&name);
        let Some(table) = optional(&txn, def)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in table.range(crate::storage::id_range(id))? {
            let (k, v) = row?;
            let key = crate::storage::unpack(k.value());
            let (header, data) = Header::parse(v.value()).ok_or_else(|| Error::Corrupt {
                tree: tree.to_owned(),
                key,
                reason: "invalid value header".into(),
            })?;
            out.push(LocalRevision {
                rev: key.rev,
                released: header.released,
                version: header.version,
                state: header.state,
                holder: header.holder,
                data: data.to_vec(),
            });
        }
        Ok(out)
    }

    fn optimistic_pending(&self, tree: &str, id: u64) -> Result<bool> {
        // (Only optimistic edits have `rekord.pending` rows.)
        let txn = self.read()?;
        match optional(&txn, PENDING)? {
            Some(t) => has_edits(&t, tree, id),
            None => Ok(false),
        }
    }

    fn journal_since(&self, common: u64) -> Result<Journal> {
        let txn = self.read()?;
        let mut touched = BTreeSet::new();
        let mut own = HashSet::new();
        let seen = seen_states(&txn, common)?;
        if let Some(journal) = optional(&txn, JOURNAL)? {
            for row in journal.range((common + 1, "", 0)..)? {
                let (k, v) = row?;
                let (_, tree, id) = k.value();
                let key = (tree.to_owned(), id);
                if v.value() & 1 == 1 {
                    own.insert(key.clone());
                }
                touched.insert(key);
            }
        }
        let meta = txn.open_table(META)?;
        // (Rows of an unknown number that were pruned stood for changes up to the second.)
        let floor = meta_u64(&meta, JOURNAL_FLOOR)?
            .unwrap_or(0)
            .max(meta_u64(&meta, JOURNAL_UNKNOWN_FLOOR)?.unwrap_or(0));
        let ranges: Vec<(u64, u64)> = match optional(&txn, RANGES)? {
            Some(t) => t
                .iter()?
                .map(|r| r.map(|(a, b)| (a.value(), b.value())))
                .collect::<std::result::Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Journal {
            touched,
            own,
            floor,
            ranges,
            seen,
        })
    }

    fn reclaims(&self) -> Result<Vec<(String, u64, bool)>> {
        let txn = self.read()?;
        Ok(match optional(&txn, RECLAIM)? {
            Some(t) => t
                .iter()?
                .map(|r| r.map(|(k, v)| (k.value().0.to_owned(), k.value().1, v.value() & 1 == 1)))
                .collect::<std::result::Result<_, _>>()?,
            None => Vec::new(),
        })
    }

    fn has_reclaims(&self) -> Result<bool> {
        let txn = self.read()?;
        Ok(match optional(&txn, RECLAIM)? {
            Some(t) => t.len()? > 0,
            None => false,
        })
    }

    fn waits_to_take_back(&self, tree: &str, id: u64) -> Result<bool> {
        let txn = self.read()?;
        Ok(match optional(&txn, RECLAIM)? {
            Some(t) => t.get((tree, id))?.is_some(),
            None => false,
        })
    }

    fn reclaim_common(&self) -> Result<u64> {
        let txn = self.read()?;
        Ok(meta_u64(&txn.open_table(META)?, RECLAIM_COMMON)?.unwrap_or(0))
    }

    fn rechecks(&self) -> Result<Vec<(String, u64)>> {
        let txn = self.read()?;
        Ok(match optional(&txn, RECHECK)? {
            Some(t) => t
                .iter()?
                .map(|r| r.map(|(k, _)| (k.value().0.to_owned(), k.value().1)))
                .collect::<std::result::Result<_, _>>()?,
            None => Vec::new(),
        })
    }
}

/// The states each record was left in by other replicas' changes after `common`, as this
/// replica applied them (`rekord.journal_states`); `None` when they are not known from
/// `common` on (a database from before they were kept).
fn seen_states(txn: &redb::ReadTransaction, common: u64) -> Result<Option<Seen>> {
    let meta = txn.open_table(META)?;
    let from = meta_u64(&meta, JOURNAL_STATES_FROM)?;
    // Kept from a point after the shared one, or pruned past it: an earlier state may be
    // missing.
    let floor = meta_u64(&meta, JOURNAL_FLOOR)?.unwrap_or(0);
    if from.is_none_or(|from| from > common + 1) || floor > common {
        return Ok(None);
    }
    let Some(table) = optional(txn, JOURNAL_STATES)? else {
        return Ok(None);
    };
    let mut seen = Seen::new();
    for row in table.range((common + 1, "", 0)..)? {
        let (k, v) = row?;
        let (_, tree, id) = k.value();
        seen.entry((tree.to_owned(), id))
            .or_default()
            .insert(v.value());
    }
    Ok(Some(seen))
}

impl Txn<'_> {
    fn txn(&self) -> &redb::WriteTransaction {
        &self.0.txn
    }
}

impl local::Write for Txn<'_> {
    fn lazy(&mut self) {
        self.0.lazy();
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit()
    }

    fn commit_for_sync(self: Box<Self>) -> Result<()> {
        self.0.commit_for_sync()
    }

    fn set_cursor(&mut self, cursor: u64) {
        self.0.set_cursor(cursor);
    }

    fn apply_remote(&mut self, entries: &[Sequenced]) -> Result<Vec<SyncEvent>> {
        self.0.apply_remote(entries)
    }

    fn apply_borrow(&mut self, tree: &str, id: u64, holder: u32) -> Result<()> {
        self.0.apply_borrow(tree, id, holder)
    }

    fn replace_record(
        &mut self,
        tree: &str,
        id: u64,
        holder: u32,
        revisions: &[Revision],
    ) -> Result<()> {
        self.0.replace_record(tree, id, holder, revisions)
    }

    fn resolve_conflict(
        &mut self,
        entry: u64,
        current: &Current,
        merge: Option<Merge>,
    ) -> Result<Option<Resolved>> {
        self.0.resolve_conflict(entry, current, merge)
    }

    fn store_coverage(&self, c: &Coverage) -> Result<()> {
        store_coverage(&mut self.txn().open_table(META)?, c)
    }

    fn store_history(&self, lineage: &[(u64, u64)]) -> Result<()> {
        store_history(&mut self.txn().open_table(META)?, lineage)
    }

    fn note_read_rights(&self, read: Readable, trees: &[String]) -> Result<Option<bool>> {
        let mut meta = self.txn().open_table(META)?;
        let Some(mut c) = stored_coverage(&meta)? else {
            return Ok(None);
        };
        if c.read == read {
            return Ok(None);
        }
        let known = c.read != Readable::Unknown;
        c.read = read;
        let target = Coverage::effective(trees, &c.read);
        if !known {
            // What this replica received so far was limited by these rights already.
            c.live = target;
            store_coverage(&mut meta, &c)?;
            Ok(Some(false))
        } else {
            store_coverage(&mut meta, &c)?;
            Ok(Some(target != c.live))
        }
    }

    fn store_announced_hashes(&self, hashes: &str) -> Result<()> {
        self.txn()
            .open_table(META)?
            .insert(WEB_HASHES, hashes.as_bytes())?;
        Ok(())
    }

    fn store_first_contact(&self, replica: u32, pin: &Pin) -> Result<()> {
        let mut meta = self.txn().open_table(META)?;
        meta.insert(REPLICA, replica.to_le_bytes().as_slice())?;
        let mut bytes = pin.server.to_vec();
        bytes.extend_from_slice(pin.cert.as_bytes());
        meta.insert(PIN, bytes.as_slice())?;
        Ok(())
    }

    fn store_pin(&self, bytes: &[u8]) -> Result<()> {
        self.txn().open_table(META)?.insert(PIN, bytes)?;
        Ok(())
    }

    fn add_ranges(&self, granted: &[(u64, u64)]) -> Result<()> {
        let mut ranges = self.txn().open_table(RANGES)?;
        for &(start, end) in granted {
            ranges.insert(start, end)?;
        }
        Ok(())
    }

    fn store_schema(&self, tree: &str, version: u32, text: &str) -> Result<()> {
        let mut schemas = self.txn().open_table(SCHEMAS)?;
        if schemas.get((tree, version))?.is_none() {
            schemas.insert((tree, version), text)?;
        }
        Ok(())
    }

    fn outbox_touches(&self, tree: &str, id: u64) -> Result<bool> {
        outbox::touches(self.txn(), tree, id)
    }

    fn waits_with_writes(&self, tree: &str, id: u64) -> Result<bool> {
        match self.txn().open_table(RECLAIM) {
            Ok(t) => {
                if !waits(&t, &(tree.to_owned(), id))? {
                    return Ok(false);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let deferred = match self.txn().open_table(DEFERRED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        for row in deferred.iter()? {
            let (_, v) = row?;
            if outbox::keys(v.value())?
                .iter()
                .any(|(t, i)| t == tree && *i == id)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn edited(&self, tree: &str, id: u64) -> Result<bool> {
        match self.txn().open_table(PENDING) {
            Ok(t) => has_edits(&t, tree, id),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn enqueue(&self, changes: &[Change], returns: &[(String, u64)]) -> Result<(u64, u64)> {
        let (_, n, bytes) = outbox::enqueue(self.txn(), changes, returns)?;
        Ok((n, bytes))
    }

    fn take_outbox(&self) -> Result<Vec<Vec<u8>>> {
        outbox::take_all(self.txn())
    }

    fn append_outbox(&self, entries: &[Vec<u8>]) -> Result<()> {
        outbox::append(self.txn(), entries)
    }

    fn note_recheck(&self, tree: &str, id: u64) -> Result<()> {
        self.txn().open_table(RECHECK)?.insert((tree, id), ())?;
        Ok(())
    }

    fn clear_recheck(&self, tree: &str, id: u64) -> Result<()> {
        self.txn().open_table(RECHECK)?.remove((tree, id))?;
        Ok(())
    }

    fn note_reclaim(&self, tree: &str, id: u64, held: bool) -> Result<()> {
        self.txn()
            .open_table(RECLAIM)?
            .insert((tree, id), (crate::rt::now_ms() << 1) | u64::from(held))?;
        Ok(())
    }

    fn clear_reclaim(&self, tree: &str, id: u64) -> Result<()> {
        self.txn().open_table(RECLAIM)?.remove((tree, id))?;
        Ok(())
    }

    fn returns_a_waiting_record(&self, entries: &[Sequenced]) -> Result<bool> {
        let reclaim = self.txn().open_table(RECLAIM)?;
        for e in entries {
            if matches!(e.change.kind, ChangeKind::Borrow { holder: 0 })
                && reclaim
                    .get((e.change.tree.as_str(), e.change.id))?
                    .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn forget_taken(&self, entries: &[Sequenced], me: u32) -> Result<Vec<(String, u64, u32)>> {
        let mut reclaim = self.txn().open_table(RECLAIM)?;
        let mut recheck = self.txn().open_table(RECHECK)?;
        let mut taken = Vec::new();
        for e in entries {
            let key = (e.change.tree.as_str(), e.change.id);
            if let ChangeKind::Borrow { holder } = e.change.kind
                && holder != 0
                && holder != me
                && reclaim.remove(key)?.is_some()
            {
                recheck.insert(key, ())?;
                taken.push((e.change.tree.clone(), e.change.id, holder));
            }
        }
        Ok(taken)
    }

    fn note_unpushed_grant(&self, tree: &str, id: u64, seq: u64) -> Result<()> {
        let mut pending = self.txn().open_table(PENDING)?;
        let row = pending
            .get((tree, id))?
            .map(|v| PendingRow::decode(v.value()));
        let row = match row {
            Some(mut r) => {
                r.floor = r.floor.max(seq);
                r
            }
            None => PendingRow {
                count: 0,
                base: seq,
                hlc: 0,
                floor: seq,
                strategy: String::new(),
                base_value: Vec::new(),
            },
        };
        pending.insert((tree, id), row.encode().as_slice())?;
        self.txn()
            .open_table(JOURNAL)?
            .insert((seq, tree, id), (crate::rt::now_ms() << 1) | 1)?;
        Ok(())
    }

    fn drop_unknown_journal_rows(&self, keys: &[(String, u64)]) -> Result<()> {
        let mut journal = self.txn().open_table(JOURNAL)?;
        for (tree, id) in keys {
            journal.remove((UNKNOWN_SEQ, tree.as_str(), *id))?;
        }
        Ok(())
    }

    fn prune_journal(&self, old: &[(u64, String, u64)], top: u64, unknown_top: u64) -> Result<()> {
        let mut journal = self.txn().open_table(JOURNAL)?;
        let mut states = self.txn().open_table(JOURNAL_STATES)?;
        for (seq, tree, id) in old {
            journal.remove((*seq, tree.as_str(), *id))?;
            states.remove((*seq, tree.as_str(), *id))?;
        }
        let mut meta = self.txn().open_table(META)?;
        let floor = meta_u64(&meta, JOURNAL_FLOOR)?.unwrap_or(0);
        meta.insert(JOURNAL_FLOOR, floor.max(top).to_le_bytes().as_slice())?;
        if unknown_top > 0 {
            let floor = meta_u64(&meta, JOURNAL_UNKNOWN_FLOOR)?.unwrap_or(0);
            meta.insert(
                JOURNAL_UNKNOWN_FLOOR,
                floor.max(unknown_top).to_le_bytes().as_slice(),
            )?;
        }
        Ok(())
    }

    fn settle(
        &self,
        first: u64,
        outcomes: &[EntryOutcome],
        cursor: u64,
        reclaiming: bool,
    ) -> Result<Settled> {
        let mut refused: Vec<(String, u64)> = Vec::new();
        let mut conflicts = Vec::new();
        let mut waited: Vec<usize> = Vec::new();
        let mut freed = 0u64;
        let txn = self.txn();
        let mut table = txn.open_table(OUTBOX)?;
        let mut aside = txn.open_table(REJECTED)?;
        let mut pending = txn.open_table(PENDING)?;
        let mut journal = txn.open_table(JOURNAL)?;
        // A refused record is fetched again (`resync`, right after this); noted here too, in
        // the commit that sets the entry aside, so that a session ending before that fetch
        // completes still fetches it once caught up.
        let mut recheck = txn.open_table(RECHECK)?;
        let mut reclaim = txn.open_table(RECLAIM)?;
        let mut deferred = txn.open_table(DEFERRED)?;
        let any_pending = !pending.is_empty()?;
        for (k, outcome) in outcomes.iter().enumerate() {
            let n = first + k as u64;
            tracing::trace!(
                entry = n,
                outcome = match outcome {
                    EntryOutcome::Applied { .. } => "applied",
                    EntryOutcome::Duplicate => "duplicate",
                    EntryOutcome::Skipped => "skipped",
                    EntryOutcome::Rejected(RemoteError::Conflict(_)) => "conflict",
                    EntryOutcome::Rejected(_) => "rejected",
                },
                "rekord sync: entry outcome"
            );
            match outcome {
                EntryOutcome::Rejected(RemoteError::Conflict(current)) => {
                    // The entry stays (the merge rewrites it) and its optimistic edits stay
                    // counted as pending.
                    conflicts.push((n, current.clone()));
                    continue;
                }
                // Sent again later.
                EntryOutcome::Skipped => continue,
                _ => {}
            }
            let entry = table.remove(n)?.map(|v| v.value().to_vec());
            let Some(entry) = entry else {
                continue;
            };
            freed += entry.len() as u64;
            if let EntryOutcome::Applied { seq } = outcome {
                // Noted now, not only when the change comes back as a push: a restore of
                // the server in between must not lose it.
                let keys = outbox::keys(&entry)?;
                let count = keys.len() as u64;
                let at = crate::rt::now_ms() << 1;
                for (i, (tree, id)) in keys.iter().enumerate() {
                    let seq = seq.saturating_sub(count - 1 - i as u64);
                    journal.insert((seq, tree.as_str(), *id), at | 1)?;
                }
            }
            let rejected = matches!(outcome, EntryOutcome::Rejected(_));
            let decoded_return = if reclaiming {
                Some(outbox::decode(&entry)?.1)
            } else {
                None
            };
            let waited_return = match decoded_return {
                Some(Entry::Return { tree, id }) => {
                    let at = reclaim.get((tree.as_str(), id))?.map(|v| v.value());
                    at.map(|at| (tree, id, at))
                }
                _ => None,
            };
            if let Some((tree, id, at)) = waited_return {
                // The application returned a record it waits to take back (the server,
                // which gives it to another replica, takes the return as a no-op): the
                // borrow is returned after the record is sent again.
                reclaim.insert((tree.as_str(), id), at & !1)?;
            }
            if !rejected && !any_pending {
                continue;
            }
            let decoded = outbox::decode(&entry)?.1;
            // Records waiting to be taken back after a restore (`rekord.reclaim`): the
            // server refuses their writes until this replica has their borrows again. An
            // entry that changes one of them waits with it, whole (other records it changes
            // too: a batch stays one), in `rekord.deferred`: neither set aside nor
            // reported, its local changes kept; it is sent again once they are taken back,
            // or rejected if another replica takes one first.
            let borrow_refusal = matches!(
                outcome,
                EntryOutcome::Rejected(
                    RemoteError::NotBorrowed | RemoteError::AlreadyBorrowed { .. }
                )
            );
            if borrow_refusal {
                let keys = outbox::keys(&entry)?;
                let mut any_waits = false;
                for key in &keys {
                    any_waits |= waits(&reclaim, key)?;
                }
                let optimistic = matches!(&decoded, Entry::Changes(cs)
                    if cs.iter().any(|c| matches!(c.kind, ChangeKind::Edit { .. })));
                if any_waits && !optimistic {
                    deferred.insert(n, entry.as_slice())?;
                    // Still to push: counted in the outbox.
                    freed -= entry.len() as u64;
                    tracing::debug!(
                        entry = n,
                        "rekord sync: a write to a record waiting to be taken back after the \
                         restore waits with it"
                    );
                    waited.push(k);
                    continue;
                }
            }
            let changes = match decoded {
                Entry::Changes(changes) => changes,
                Entry::Return { tree, id } => {
                    let key = (tree, id);
                    if rejected && !refused.contains(&key) && !waits(&reclaim, &key)? {
                        recheck.insert((key.0.as_str(), id), ())?;
                        refused.push(key);
                    }
                    Vec::new()
                }
            };
            // Sequence numbers of the entry's changes (consecutive, the last one's given).
            let last_seq = match outcome {
                EntryOutcome::Applied { seq } => Some(*seq),
                _ => None,
            };
            let count = changes.len() as u64;
            for (i, c) in changes.iter().enumerate() {
                let ChangeKind::Edit { version, data, .. } = &c.kind else {
                    continue;
                };
                let key = (c.tree.as_str(), c.id);
                let row = pending.get(key)?.map(|v| PendingRow::decode(v.value()));
                let Some(mut row) = row else {
                    continue;
                };
                row.count = row.count.saturating_sub(1);
                if !rejected {
                    // Accepted: the common ancestor of the edits still waiting, and newer
                    // than any pushed change before it.
                    row.base_value = Header::draft_value(*version, data);
                    if let Some(last) = last_seq {
                        let seq = last.saturating_sub(count - 1 - i as u64);
                        row.floor = row.floor.max(seq);
                    }
                }
                if row.count == 0 && (rejected || row.floor <= cursor) {
                    pending.remove(key)?;
                } else {
                    pending.insert(key, row.encode().as_slice())?;
                }
            }
            if rejected {
                aside.insert(n, entry.as_slice())?;
                for c in changes {
                    let key = (c.tree, c.id);
                    // A waiting record keeps its copy (sent again once taken back).
                    if refused.contains(&key) || waits(&reclaim, &key)? {
                        continue;
                    }
                    recheck.insert((key.0.as_str(), key.1), ())?;
                    refused.push(key);
                }
            }
        }
        let left = table.len()?;
        Ok(Settled {
            refused,
            conflicts,
            waited,
            freed,
            left,
        })
    }

    fn release_deferred(&self, superseded: &[(String, u64)]) -> Result<Released> {
        let txn = self.txn();
        let mut deferred = txn.open_table(DEFERRED)?;
        let reclaim = txn.open_table(RECLAIM)?;
        let mut rows = Vec::new();
        for row in deferred.iter()? {
            let (k, v) = row?;
            rows.push((k.value(), v.value().to_vec()));
        }
        let mut released = Released::default();
        if rows.is_empty() {
            return Ok(released);
        }
        let mut aside = txn.open_table(REJECTED)?;
        let mut recheck = txn.open_table(RECHECK)?;
        let mut again = Vec::new();
        for (n, bytes) in rows {
            let keys = outbox::keys(&bytes)?;
            if keys.iter().any(|k| superseded.contains(k)) {
                deferred.remove(n)?;
                aside.insert(n, bytes.as_slice())?;
                for (tree, id) in &keys {
                    if !waits(&reclaim, &(tree.clone(), *id))? {
                        recheck.insert((tree.as_str(), *id), ())?;
                        released.recheck = true;
                    }
                }
                released.rejected.push(n);
                released.bytes += bytes.len() as u64;
            } else {
                let mut waiting = false;
                for k in &keys {
                    waiting |= waits(&reclaim, k)?;
                }
                if !waiting {
                    deferred.remove(n)?;
                    again.push(bytes);
                    // Fetched again once it settles: a refetch while it waited may have
                    // replaced the copy it was made on (its echo, this replica's own, is
                    // not applied).
                    for (tree, id) in &keys {
                        recheck.insert((tree.as_str(), *id), ())?;
                        released.recheck = true;
                    }
                }
            }
        }
        drop((deferred, reclaim, aside, recheck));
        if !again.is_empty() {
            tracing::debug!(
                entries = again.len(),
                "rekord sync: writes that waited for records taken back are sent again"
            );
            outbox::append(txn, &again)?;
        }
        released.again = again.len() as u64;
        Ok(released)
    }

    fn rewind(
        &mut self,
        common: u64,
        back: u64,
        lineage: &[(u64, u64)],
        waiting: bool,
    ) -> Result<()> {
        self.set_cursor(back);
        let txn = self.txn();
        {
            let mut meta = txn.open_table(META)?;
            if let Some(mut c) = stored_coverage(&meta)? {
                c.rest = c.rest.min(back);
                c.left.values_mut().for_each(|at| *at = (*at).min(back));
                store_coverage(&mut meta, &c)?;
            }
            store_history(&mut meta, lineage)?;
            if waiting {
                meta.insert(RECLAIM_COMMON, common.to_le_bytes().as_slice())?;
            }
            // Pruned rows of an unknown number stood for changes of the old history: those
            // past the shared point are gone with it (this reconciliation reported them),
            // and the journal past it is made again from the new history's changes.
            if let Some(floor) = meta_u64(&meta, JOURNAL_UNKNOWN_FLOOR)?
                && floor > common
            {
                meta.insert(JOURNAL_UNKNOWN_FLOOR, common.to_le_bytes().as_slice())?;
            }
            // So are the pruned rows of known numbers past it: the journal past the shared
            // point is the new history's only (rows below go, rows from the cursor on come
            // with the changes received again), complete until retention prunes it.
            if let Some(floor) = meta_u64(&meta, JOURNAL_FLOOR)?
                && floor > common
            {
                meta.insert(JOURNAL_FLOOR, common.to_le_bytes().as_slice())?;
            }
        }
        // Optimistic edits based on changes the server lost are based on the shared point
        // instead (a change made since by another replica is then a conflict, merged as
        // usual).
        let mut pending = txn.open_table(PENDING)?;
        let mut rows = Vec::new();
        for row in pending.iter()? {
            let (k, v) = row?;
            let (tree, id) = k.value();
            rows.push(((tree.to_owned(), id), PendingRow::decode(v.value())));
        }
        for ((tree, id), mut row) in rows {
            if row.base > back || row.floor > back {
                // An edit of this replica accepted past the shared point (`floor`) is in
                // the version its edits start from, and the restored server lost it: that
                // version is no longer a common ancestor (this replica's own change would
                // look unchanged to a merge), so a merge takes the server's version at the
                // shared point. A version others made past it stays the ancestor: this
                // replica did not change what they did.
                if row.floor > back {
                    row.base_value = Vec::new();
                }
                row.base = row.base.min(back);
                row.floor = row.floor.min(back);
                pending.insert((tree.as_str(), id), row.encode().as_slice())?;
            }
        }
        let mut table = txn.open_table(OUTBOX)?;
        let mut rewrite = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (at, entry) = outbox::decode(v.value())?;
            if let Entry::Changes(mut changes) = entry {
                let mut moved = false;
                for c in &mut changes {
                    if let ChangeKind::Edit { base, .. } = &mut c.kind
                        && *base > back
                    {
                        *base = back;
                        moved = true;
                    }
                }
                if moved {
                    rewrite.push((k.value(), outbox::encode(&Entry::Changes(changes), at)?));
                }
            }
        }
        for (n, bytes) in rewrite {
            table.insert(n, bytes.as_slice())?;
        }
        txn.open_table(JOURNAL)?
            .retain_in((common + 1, "", 0).., |_, _| false)?;
        txn.open_table(JOURNAL_STATES)?
            .retain_in((common + 1, "", 0).., |_, _| false)?;
        Ok(())
    }
}
