//! The sync client's one interface to the replica's database.
//!
//! The protocol side ([`super::client`] and its restore reconciliation) decides what to
//! send, what to ask and what an answer means; everything it reads of the replica or
//! writes to it goes through the two types here, named by what it means (the cursor, the
//! outbox run to send next, settling answered entries, the records waiting to be taken
//! back, ...), never by table:
//!
//! - [`Local`]: a live handle on the database (got per step: the client holds only a weak
//!   reference, so it never keeps a closed database open). Each read is a read
//!   transaction of its own.
//! - [`Write`]: one local transaction (a [`crate::Batch`]): applying pushed changes with the
//!   cursor, settling outbox entries, a reconciliation's rewind, ... committed whole or not
//!   at all.
//!
//! No redb table, transaction or database lock shows outside this module; a change to how
//! the sync client's state is stored stays here. (The [`Link`](super::client::Link) the
//! application's side talks to the client through reads one thing here too:
//! [`rejected_among`].)

use super::outbox::{self, Entry, PendingRow};
use super::{
    CLIENT, COVERAGE, CURSOR, Coverage, HISTORY, JOURNAL_FLOOR, JOURNAL_STATES_FROM,
    JOURNAL_UNKNOWN_FLOOR, MODE, PIN, RECLAIM_COMMON, REPLICA, UNKNOWN_REPLICA, UNKNOWN_SEQ,
    WEB_HASHES,
};
use crate::db::{DbInner, read_u64};
use crate::event::{Event, SyncEvent, lock};
use crate::net::Pin;
use crate::proto::{Change, ChangeKind, Current, EntryOutcome, RemoteError, Revision, Sequenced};
use crate::storage::{
    DEFERRED, Header, JOURNAL, JOURNAL_STATES, META, OUTBOX, PENDING, RANGES, RECHECK, RECLAIM,
    REJECTED, SCHEMAS,
};
use crate::{Error, Result};
use redb::{ReadableTable, ReadableTableMetadata};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// A live handle on the replica's database, for the sync client.
pub(crate) struct Local(crate::Db);

/// What the sync client holds of its database: a weak handle, which never keeps a closed
/// database open ([`Handle::get`] is `None` once it closed).
#[derive(Clone)]
pub(crate) struct Handle(Weak<DbInner>);

impl Handle {
    /// The handle of `db`.
    pub(crate) fn new(db: &Arc<DbInner>) -> Self {
        Handle(Arc::downgrade(db))
    }

    /// The database, unless it closed.
    pub(crate) fn get(&self) -> Option<Local> {
        self.0.upgrade().map(Local::new)
    }
}

/// One local transaction of the sync client (see the module documentation).
pub(crate) struct Write<'d>(crate::Batch<'d>);

/// What the sync client starts from.
pub(crate) struct Start {
    /// This client's 16-byte identity.
    pub(crate) client: [u8; 16],
    /// The last applied server sequence number.
    pub(crate) cursor: u64,
    /// Entries to push (those waiting with records to be taken back included), their
    /// bytes, entries refused for good, and how many of the first wait.
    pub(crate) outbox: u64,
    pub(crate) outbox_bytes: u64,
    pub(crate) rejected: u64,
    pub(crate) waiting: u64,
}

/// What a connection's hello says of this replica.
pub(crate) struct HelloState {
    pub(crate) cursor: u64,
    pub(crate) pin: Option<Pin>,
    pub(crate) history: Vec<(u64, u64)>,
    pub(crate) last_entry: u64,
}

/// The next run of outbox entries to send (see [`Local::outbox_run`]).
pub(crate) struct Run {
    /// The first entry's number.
    pub(crate) first: u64,
    /// Consecutive entries from `first` on, each a list of changes (a return is a borrow
    /// change to holder 0).
    pub(crate) entries: Vec<Vec<Change>>,
    /// Why entry `first` cannot be sent at all (too large for any request).
    pub(crate) oversized: Option<String>,
}

/// What settling answered outbox entries did ([`Write::settle`]).
pub(crate) struct Settled {
    /// Records to fetch again (refused changes).
    pub(crate) refused: Vec<(String, u64)>,
    /// Entries refused with a conflict (they stay, to be merged): entry and server version.
    pub(crate) conflicts: Vec<(u64, Box<Current>)>,
    /// Outcomes (by index) of entries that now wait with records to be taken back.
    pub(crate) waited: Vec<usize>,
    /// Bytes that left the outbox.
    pub(crate) freed: u64,
    /// Entries left in the outbox.
    pub(crate) left: u64,
}

/// What [`Write::release_deferred`] did with writes that waited with records to be taken
/// back: those rejected (entry numbers and bytes), and how many went back to the outbox.
#[derive(Default)]
pub(crate) struct Released {
    pub(crate) rejected: Vec<u64>,
    pub(crate) bytes: u64,
    /// How many waiting writes went back to the outbox, to be sent again.
    pub(crate) again: u64,
    /// Whether records were noted to be fetched again once caught up.
    pub(crate) recheck: bool,
}

/// What the journal says for a reconciliation from a shared point.
pub(crate) struct Journal {
    /// Records a change after the shared point touched.
    pub(crate) touched: BTreeSet<(String, u64)>,
    /// Those of them this replica changed.
    pub(crate) own: HashSet<(String, u64)>,
    /// Journal rows up to here were pruned.
    pub(crate) floor: u64,
    /// This replica's id ranges.
    pub(crate) ranges: Vec<(u64, u64)>,
    /// The states other replicas' changes left each record in (see [`Seen`]).
    pub(crate) seen: Option<Seen>,
}

/// Per record, the states other replicas' changes left it in here: (digest, origin).
pub(crate) type Seen = HashMap<(String, u64), HashSet<(u64, u32)>>;

/// One record's revision as stored here.
pub(crate) struct LocalRevision {
    pub(crate) rev: u32,
    pub(crate) header: Header,
    pub(crate) data: Vec<u8>,
}

impl LocalRevision {
    /// Whether the server's revision `r` is this one.
    pub(crate) fn same_as(&self, r: &Revision) -> bool {
        self.rev == r.rev
            && self.header.released == r.released
            && self.header.state == r.state
            && self.header.version == r.version
            && self.data == r.data
    }
}

/// The digest of a record's state as the journal keeps the states this replica saw
/// (`rekord.journal_states`), of the server's revisions of it.
pub(crate) fn digest(revisions: &[Revision]) -> u64 {
    crate::storage::record_digest(
        revisions
            .iter()
            .map(|r| (r.rev, r.version, r.released, r.state, r.data.as_slice())),
    )
}

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

impl Local {
    /// The database of `inner`.
    pub(crate) fn new(inner: Arc<DbInner>) -> Self {
        Local(crate::Db::internal(inner))
    }

    fn inner(&self) -> &DbInner {
        &self.0.inner
    }

    fn read(&self) -> Result<redb::ReadTransaction> {
        Ok(self.inner().redb.begin_read()?)
    }

    /// A local transaction.
    pub(crate) fn write(&self) -> Result<Write<'_>> {
        Ok(Write(self.0.batch()?))
    }

    /// This replica's holder number ([`UNKNOWN_REPLICA`] before the first connection).
    pub(crate) fn replica(&self) -> u32 {
        self.inner().replica.load(Ordering::Acquire)
    }

    /// Notes the holder number stored at first contact ([`Write::store_first_contact`]),
    /// once committed.
    pub(crate) fn set_replica(&self, replica: u32) {
        self.inner().replica.store(replica, Ordering::Release);
    }

    /// Whether a lazy commit is not durable yet.
    pub(crate) fn lazy_pending(&self) -> bool {
        lock(&self.inner().writer).lazy
    }

    /// Makes the lazy commits durable; whether there were any.
    pub(crate) fn make_durable(&self) -> Result<bool> {
        crate::tree::batch::Batch::make_durable(self.inner())
    }

    /// In a browser: waits until what was committed is stored in IndexedDB.
    #[cfg(target_arch = "wasm32")]
    pub(crate) async fn stored_in_browser(&self) -> std::result::Result<(), String> {
        match self.inner().browser.get() {
            Some(h) => h.flush().await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Delivers a sync event to the application's subscribers (in a browser, the other
    /// tabs sharing the database hear it too).
    pub(crate) fn emit(&self, event: SyncEvent) {
        #[cfg(target_arch = "wasm32")]
        if let Some(tab) = self.inner().browser.get().and_then(|h| h.tab()) {
            crate::storage::tabs::sync_event(tab, &event);
        }
        self.inner().deliver(&[Event::Sync(event)]);
    }

    /// Whether `tree` takes optimistic edits.
    pub(crate) fn is_optimistic(&self, tree: &str) -> Result<bool> {
        self.inner().is_optimistic(tree)
    }

    /// The merge of `tree`'s conflicting edits.
    pub(crate) fn merge_for(&self, tree: &str) -> Result<Option<super::Merge>> {
        self.inner().merge_for(tree)
    }

    /// Identity, cursor and outbox counts at start.
    pub(crate) fn start(&self) -> Result<Start> {
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

    /// What the next hello says of this replica.
    pub(crate) fn hello_state(&self) -> Result<HelloState> {
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

    /// The stored pin's bytes (server UUID, then the certificate fingerprint if known).
    pub(crate) fn stored_pin(&self) -> Result<Option<Vec<u8>>> {
        let txn = self.read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(PIN)?.map(|v| v.value().to_vec()))
    }

    /// The WebTransport certificate hashes the server last announced, as stored
    /// (`hash:not_after`, comma-separated).
    pub(crate) fn announced_hashes(&self) -> Result<Option<String>> {
        let txn = self.read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get(WEB_HASHES)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// The subscription coverage (`None`: a new database, or one from before it was kept).
    pub(crate) fn coverage(&self) -> Result<Option<Coverage>> {
        let txn = self.read()?;
        stored_coverage(&txn.open_table(META)?)
    }

    /// The lineage of the server's history this replica last synced with.
    pub(crate) fn history(&self) -> Result<Vec<(u64, u64)>> {
        let txn = self.read()?;
        stored_history(&txn.open_table(META)?)
    }

    /// Ids left in this replica's ranges.
    pub(crate) fn free_ids(&self) -> Result<u64> {
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

    /// Whether `id` is from one of this replica's id ranges.
    pub(crate) fn owns_id(&self, id: u64) -> Result<bool> {
        let txn = self.read()?;
        let Some(ranges) = optional(&txn, RANGES)? else {
            return Ok(false);
        };
        Ok(match ranges.range(..=id)?.next_back() {
            Some(r) => id < r?.1.value(),
            None => false,
        })
    }

    /// The next run of up to `max_entries` consecutive outbox entries (changes and returns,
    /// all numbered: a resent one is answered with its first outcome) of at most about
    /// `max_bytes`. An entry no request can carry (written by a version that did not check
    /// sizes at commit) ends the run, or is named alone as `oversized`.
    pub(crate) fn outbox_run(&self, max_entries: usize, max_bytes: usize) -> Result<Run> {
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

    /// When the oldest outbox entry was made (milliseconds since the epoch).
    pub(crate) fn oldest_entry_at(&self) -> Result<Option<u64>> {
        let txn = self.read()?;
        let table = txn.open_table(OUTBOX)?;
        Ok(match table.first()? {
            Some((_, v)) => Some(outbox::decode(v.value())?.0),
            None => None,
        })
    }

    /// The schema of `tree` version `version`, if stored.
    pub(crate) fn schema(&self, tree: &str, version: u32) -> Result<Option<String>> {
        let txn = self.read()?;
        let schemas = txn.open_table(SCHEMAS)?;
        Ok(schemas.get((tree, version))?.map(|v| v.value().to_owned()))
    }

    /// Those of `versions` whose schema is not stored, each once.
    pub(crate) fn missing_schemas(&self, versions: &[(String, u32)]) -> Result<Vec<(String, u32)>> {
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

    /// The records of journal rows noted under [`UNKNOWN_SEQ`] (a tab taking over).
    pub(crate) fn unknown_journal_rows(&self) -> Result<Vec<(String, u64)>> {
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

    /// Journal rows older than `horizon` (milliseconds since the epoch), oldest first, at
    /// most 100,000.
    pub(crate) fn journal_rows_before(&self, horizon: u64) -> Result<Vec<(u64, String, u64)>> {
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

    /// Whether holder `me` holds record `id` of `tree` here.
    pub(crate) fn holds(&self, tree: &str, id: u64, me: u32) -> Result<bool> {
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

    /// The stored revisions of record `id` of `tree`, oldest first.
    pub(crate) fn revisions(&self, tree: &str, id: u64) -> Result<Vec<LocalRevision>> {
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
                header,
                data: data.to_vec(),
            });
        }
        Ok(out)
    }

    /// Whether record `id` of optimistic tree `tree` has edits waiting in the outbox.
    pub(crate) fn optimistic_pending(&self, tree: &str, id: u64) -> Result<bool> {
        // (Only optimistic edits have `rekord.pending` rows.)
        let txn = self.read()?;
        match optional(&txn, PENDING)? {
            Some(t) => has_edits(&t, tree, id),
            None => Ok(false),
        }
    }

    /// What the journal says after shared point `common` (see [`Journal`]).
    pub(crate) fn journal_since(&self, common: u64) -> Result<Journal> {
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

    /// The records waiting to be taken back after a restore, and whether this replica
    /// held each.
    pub(crate) fn reclaims(&self) -> Result<Vec<(String, u64, bool)>> {
        let txn = self.read()?;
        Ok(match optional(&txn, RECLAIM)? {
            Some(t) => t
                .iter()?
                .map(|r| r.map(|(k, v)| (k.value().0.to_owned(), k.value().1, v.value() & 1 == 1)))
                .collect::<std::result::Result<_, _>>()?,
            None => Vec::new(),
        })
    }

    /// Whether records wait to be taken back after a restore.
    pub(crate) fn has_reclaims(&self) -> Result<bool> {
        let txn = self.read()?;
        Ok(match optional(&txn, RECLAIM)? {
            Some(t) => t.len()? > 0,
            None => false,
        })
    }

    /// Whether record `id` of `tree` still waits to be taken back.
    pub(crate) fn waits_to_take_back(&self, tree: &str, id: u64) -> Result<bool> {
        let txn = self.read()?;
        Ok(match optional(&txn, RECLAIM)? {
            Some(t) => t.get((tree, id))?.is_some(),
            None => false,
        })
    }

    /// The shared point of the reconciliation that left records waiting (0 when unknown).
    pub(crate) fn reclaim_common(&self) -> Result<u64> {
        let txn = self.read()?;
        Ok(meta_u64(&txn.open_table(META)?, RECLAIM_COMMON)?.unwrap_or(0))
    }

    /// The records to fetch again once caught up.
    pub(crate) fn rechecks(&self) -> Result<Vec<(String, u64)>> {
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

impl<'d> Write<'d> {
    fn txn(&self) -> &redb::WriteTransaction {
        &self.0.txn
    }

    /// Commits without waiting for the disk (see the client's lazy durability).
    pub(crate) fn lazy(&mut self) {
        self.0.lazy();
    }

    /// Commits, within the write limits of the application's own writes.
    pub(crate) fn commit(self) -> Result<()> {
        self.0.commit()
    }

    /// Commits what the server sent or asked for, whatever its size.
    pub(crate) fn commit_for_sync(self) -> Result<()> {
        self.0.commit_for_sync()
    }

    /// Sets the cursor, committed with the changes it covers.
    pub(crate) fn set_cursor(&mut self, cursor: u64) {
        self.0.set_cursor(cursor);
    }

    /// Applies pushed changes; the events of those skipped.
    pub(crate) fn apply_remote(&mut self, entries: &[Sequenced]) -> Result<Vec<SyncEvent>> {
        self.0.apply_remote(entries)
    }

    /// Notes that holder `holder` holds record `id` of `tree`.
    pub(crate) fn apply_borrow(&mut self, tree: &str, id: u64, holder: u32) -> Result<()> {
        self.0.apply_borrow(tree, id, holder)
    }

    /// Makes record `id` of `tree` what the server has.
    pub(crate) fn replace_record(
        &mut self,
        tree: &str,
        id: u64,
        holder: u32,
        revisions: &[Revision],
    ) -> Result<()> {
        self.0.replace_record(tree, id, holder, revisions)
    }

    /// Merges entry `entry`'s optimistic edits with the server's version (see
    /// [`crate::Batch`]'s conflict resolution).
    pub(crate) fn resolve_conflict(
        &mut self,
        entry: u64,
        current: &Current,
        merge: Option<super::Merge>,
    ) -> Result<Option<crate::tree::conflict::Resolved>> {
        self.0.resolve_conflict(entry, current, merge)
    }

    /// Stores the subscription coverage.
    pub(crate) fn store_coverage(&self, c: &Coverage) -> Result<()> {
        store_coverage(&mut self.txn().open_table(META)?, c)
    }

    /// Stores the lineage of the server's history.
    pub(crate) fn store_history(&self, lineage: &[(u64, u64)]) -> Result<()> {
        store_history(&mut self.txn().open_table(META)?, lineage)
    }

    /// Notes the token's read rights in the stored coverage; whether the trees received
    /// changed (`None`: nothing noted, no coverage stored or the same rights).
    /// `trees`: the subscription.
    pub(crate) fn note_read_rights(
        &self,
        read: super::Readable,
        trees: &[String],
    ) -> Result<Option<bool>> {
        let mut meta = self.txn().open_table(META)?;
        let Some(mut c) = stored_coverage(&meta)? else {
            return Ok(None);
        };
        if c.read == read {
            return Ok(None);
        }
        let known = c.read != super::Readable::Unknown;
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

    /// Stores the WebTransport certificate hashes the server announced.
    pub(crate) fn store_announced_hashes(&self, hashes: &str) -> Result<()> {
        self.txn()
            .open_table(META)?
            .insert(WEB_HASHES, hashes.as_bytes())?;
        Ok(())
    }

    /// Stores the holder number and the pin at first contact.
    pub(crate) fn store_first_contact(&self, replica: u32, pin: &Pin) -> Result<()> {
        let mut meta = self.txn().open_table(META)?;
        meta.insert(REPLICA, replica.to_le_bytes().as_slice())?;
        let mut bytes = pin.server.to_vec();
        bytes.extend_from_slice(pin.cert.as_bytes());
        meta.insert(PIN, bytes.as_slice())?;
        Ok(())
    }

    /// Stores the pin's bytes.
    pub(crate) fn store_pin(&self, bytes: &[u8]) -> Result<()> {
        self.txn().open_table(META)?.insert(PIN, bytes)?;
        Ok(())
    }

    /// Stores id ranges the server granted.
    pub(crate) fn add_ranges(&self, granted: &[(u64, u64)]) -> Result<()> {
        let mut ranges = self.txn().open_table(RANGES)?;
        for &(start, end) in granted {
            ranges.insert(start, end)?;
        }
        Ok(())
    }

    /// Stores a schema the server sent, unless one is stored already.
    pub(crate) fn store_schema(&self, tree: &str, version: u32, text: &str) -> Result<()> {
        let mut schemas = self.txn().open_table(SCHEMAS)?;
        if schemas.get((tree, version))?.is_none() {
            schemas.insert((tree, version), text)?;
        }
        Ok(())
    }

    /// Whether an entry waiting in the outbox touches record `id` of `tree` (read in this
    /// transaction, so no local write slips in between).
    pub(crate) fn outbox_touches(&self, tree: &str, id: u64) -> Result<bool> {
        outbox::touches(self.txn(), tree, id)
    }

    /// Whether record `id` of `tree` waits to be taken back and a write waiting with it
    /// (`rekord.deferred`) touches it, read in this transaction.
    pub(crate) fn waits_with_writes(&self, tree: &str, id: u64) -> Result<bool> {
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

    /// Whether record `id` of `tree` has optimistic edits waiting in the outbox, read in
    /// this transaction.
    pub(crate) fn edited(&self, tree: &str, id: u64) -> Result<bool> {
        match self.txn().open_table(PENDING) {
            Ok(t) => has_edits(&t, tree, id),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Queues `changes` as one outbox entry and each of `returns` as one; how many entries,
    /// and their bytes.
    pub(crate) fn enqueue(
        &self,
        changes: &[Change],
        returns: &[(String, u64)],
    ) -> Result<(u64, u64)> {
        let (_, n, bytes) = outbox::enqueue(self.txn(), changes, returns)?;
        Ok((n, bytes))
    }

    /// Takes every entry out of the outbox, in order, to be put back after entries that
    /// must go first ([`Write::append_outbox`]).
    pub(crate) fn take_outbox(&self) -> Result<Vec<Vec<u8>>> {
        outbox::take_all(self.txn())
    }

    /// Appends entries [`Write::take_outbox`] took, under new numbers.
    pub(crate) fn append_outbox(&self, entries: &[Vec<u8>]) -> Result<()> {
        outbox::append(self.txn(), entries)
    }

    /// Notes record `id` of `tree` to be fetched again once caught up.
    pub(crate) fn note_recheck(&self, tree: &str, id: u64) -> Result<()> {
        self.txn().open_table(RECHECK)?.insert((tree, id), ())?;
        Ok(())
    }

    /// Record `id` of `tree` was fetched: no longer to fetch again.
    pub(crate) fn clear_recheck(&self, tree: &str, id: u64) -> Result<()> {
        self.txn().open_table(RECHECK)?.remove((tree, id))?;
        Ok(())
    }

    /// Notes record `id` of `tree` to wait to be taken back (`held`: this replica held it).
    pub(crate) fn note_reclaim(&self, tree: &str, id: u64, held: bool) -> Result<()> {
        self.txn()
            .open_table(RECLAIM)?
            .insert((tree, id), (outbox::now_ms() << 1) | u64::from(held))?;
        Ok(())
    }

    /// Record `id` of `tree` no longer waits to be taken back.
    pub(crate) fn clear_reclaim(&self, tree: &str, id: u64) -> Result<()> {
        self.txn().open_table(RECLAIM)?.remove((tree, id))?;
        Ok(())
    }

    /// Whether `entries` return the borrow of a record waiting to be taken back.
    pub(crate) fn returns_a_waiting_record(&self, entries: &[Sequenced]) -> Result<bool> {
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

    /// Forgets the records waiting to be taken back that a replica other than `me`
    /// borrowed in `entries`, and notes them to be fetched again; the records, each with
    /// its new holder.
    pub(crate) fn forget_taken(
        &self,
        entries: &[Sequenced],
        me: u32,
    ) -> Result<Vec<(String, u64, u32)>> {
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

    /// A borrow granted under `seq` in a tree this replica does not receive, its copy
    /// fetched: changes of others up to `seq`, met later, are older and skipped (the
    /// optimistic bookkeeping's floor), and the grant is journaled (no push brings it).
    pub(crate) fn note_unpushed_grant(&self, tree: &str, id: u64, seq: u64) -> Result<()> {
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
            .insert((seq, tree, id), (outbox::now_ms() << 1) | 1)?;
        Ok(())
    }

    /// Removes the journal rows noted under [`UNKNOWN_SEQ`] of `keys`.
    pub(crate) fn drop_unknown_journal_rows(&self, keys: &[(String, u64)]) -> Result<()> {
        let mut journal = self.txn().open_table(JOURNAL)?;
        for (tree, id) in keys {
            journal.remove((UNKNOWN_SEQ, tree.as_str(), *id))?;
        }
        Ok(())
    }

    /// Removes journal rows `old` (and their states), and raises the journal floor to
    /// `top` and the floor of rows of an unknown number to `unknown_top` (see
    /// [`JOURNAL_UNKNOWN_FLOOR`]).
    pub(crate) fn prune_journal(
        &self,
        old: &[(u64, String, u64)],
        top: u64,
        unknown_top: u64,
    ) -> Result<()> {
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

    /// Removes outbox entries `first, first + 1, ...` that the server processed (one per
    /// outcome): accepted ones go (journaled), rejected ones are kept aside in
    /// `rekord.outbox_rejected` (their records noted to fetch again), an entry changing a
    /// record waiting to be taken back waits with it, and one refused with a conflict stays
    /// (returned, to be merged). `cursor`: the client's; `reclaiming`: whether records wait
    /// to be taken back.
    pub(crate) fn settle(
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
                let at = outbox::now_ms() << 1;
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

    /// Goes through the writes waiting with records to be taken back (`rekord.deferred`):
    /// one that changes a record of `superseded` (another replica's version of it stands)
    /// is set aside as rejected, its other records fetched again once caught up (except
    /// those still waiting); one none of whose records waits any more is sent again, under
    /// a new number.
    pub(crate) fn release_deferred(&self, superseded: &[(String, u64)]) -> Result<Released> {
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

    /// A reconciliation's rewind to shared point `common` (the cursor going back to
    /// `back`): the subscription coverage goes back with the cursor, the new `lineage` is
    /// stored (and the shared point, when records wait to be taken back), optimistic
    /// edits based past it are based on it instead, and journal rows past it go.
    pub(crate) fn rewind(
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

#[cfg(test)]
mod tests {
    /// The protocol side names no table, transaction or lock of the database, nor its
    /// `db` and `tree` modules: everything it reads or writes goes through
    /// [`super::Local`] and [`super::Write`].
    #[test]
    fn the_protocol_side_reaches_the_database_only_through_this_module() {
        let files = [
            ("sync/client.rs", include_str!("client.rs")),
            ("sync/client/restore.rs", include_str!("client/restore.rs")),
        ];
        let past_the_interface = [
            "open_table",
            "begin_read",
            "begin_write",
            "crate::storage",
            "redb::",
            ".txn",
            ".batch()",
            ".inner.",
            "Batch",
            "DbInner",
            "crate::db",
            "crate::tree",
        ];
        for (file, text) in files {
            for needle in past_the_interface {
                assert!(
                    !text.contains(needle),
                    "{file} reaches the database past sync::local: `{needle}`"
                );
            }
        }
    }
}
