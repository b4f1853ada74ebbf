//! The sync client's one interface to the replica's database.
//!
//! The protocol side ([`super::client`] and its restore reconciliation) decides what to
//! send, what to ask and what an answer means; everything it reads of the replica or
//! writes to it goes through the two traits here, named by what it means (the cursor, the
//! outbox run to send next, settling answered entries, the records waiting to be taken
//! back, ...), never by table:
//!
//! - [`Local`]: a live handle on the database (got per step from a [`Handle`]: the client
//!   holds only a weak reference, so it never keeps a closed database open). Each read is a
//!   read transaction of its own.
//! - [`Write`]: one local transaction: applying pushed changes with the cursor, settling
//!   outbox entries, a reconciliation's rewind, ... committed whole or not at all.
//!
//! `crate::replica` implements them over the real database (redb tables and the write
//! batch); nothing under `sync/` names a table, a transaction, the database or its trees
//! (a unit test below checks), so the protocol side depends on this module only and a
//! change to how the sync client's state is stored stays in `replica`.

use super::{Coverage, Merge, Readable};
use crate::Result;
use crate::event::{Conflict, SyncEvent};
use crate::net::Pin;
use crate::proto::{Change, Current, EntryOutcome, Revision, Sequenced};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Where a [`Handle`] gets its database from.
pub(crate) trait Source: Send + Sync {
    /// The database, unless it closed.
    fn get(&self) -> Option<Box<dyn Local>>;
}

/// What the sync client holds of its database: a weak handle, which never keeps a closed
/// database open ([`Handle::get`] is `None` once it closed).
#[derive(Clone)]
pub(crate) struct Handle(Arc<dyn Source>);

impl Handle {
    /// The handle over `source`.
    pub(crate) fn new(source: Arc<dyn Source>) -> Self {
        Handle(source)
    }

    /// The database, unless it closed.
    pub(crate) fn get(&self) -> Option<Box<dyn Local>> {
        self.0.get()
    }
}

/// What resolving one conflict did to the outbox ([`Write::resolve_conflict`]).
pub(crate) struct Resolved {
    /// The event to report.
    pub(crate) event: Conflict,
    /// Change of the outbox's size in bytes (entries rewritten).
    pub(crate) bytes_delta: i64,
}

/// A digest of a record's state: each revision's number, schema version, release, state
/// and bytes, in order (SHA-256, the first 8 bytes: stored, so it must not change).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn record_digest<'a>(
    revisions: impl Iterator<Item = (u32, u32, bool, u32, &'a [u8])>,
) -> u64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for (rev, version, released, state, data) in revisions {
        h.update(rev.to_le_bytes());
        h.update(version.to_le_bytes());
        h.update([u8::from(released)]);
        h.update(state.to_le_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first)
}

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
    /// Whether it is released, its schema version, its state and its holder (as stored).
    pub(crate) released: bool,
    pub(crate) version: u32,
    pub(crate) state: u32,
    pub(crate) holder: u32,
    pub(crate) data: Vec<u8>,
}

impl LocalRevision {
    /// Whether the server's revision `r` is this one.
    pub(crate) fn same_as(&self, r: &Revision) -> bool {
        self.rev == r.rev
            && self.released == r.released
            && self.state == r.state
            && self.version == r.version
            && self.data == r.data
    }
}

/// The digest of a record's state as the journal keeps the states this replica saw
/// (`rekord.journal_states`), of the server's revisions of it.
pub(crate) fn digest(revisions: &[Revision]) -> u64 {
    record_digest(
        revisions
            .iter()
            .map(|r| (r.rev, r.version, r.released, r.state, r.data.as_slice())),
    )
}

/// A live handle on the replica's database, for the sync client (see the module
/// documentation).
pub(crate) trait Local {
    /// A local transaction.
    fn write(&self) -> Result<Box<dyn Write + '_>>;

    /// This replica's holder number ([`UNKNOWN_REPLICA`] before the first connection).
    fn replica(&self) -> u32;

    /// Notes the holder number stored at first contact ([`Write::store_first_contact`]),
    /// once committed.
    fn set_replica(&self, replica: u32);

    /// Whether a lazy commit is not durable yet.
    fn lazy_pending(&self) -> bool;

    /// Makes the lazy commits durable; whether there were any.
    fn make_durable(&self) -> Result<bool>;

    /// In a browser: waits until what was committed is stored in IndexedDB.
    #[cfg(target_arch = "wasm32")]
    fn stored_in_browser(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<(), String>> + '_>>;

    /// Delivers a sync event to the application's subscribers (in a browser, the other
    /// tabs sharing the database hear it too).
    fn emit(&self, event: SyncEvent);

    /// Whether `tree` takes optimistic edits.
    fn is_optimistic(&self, tree: &str) -> Result<bool>;

    /// The merge of `tree`'s conflicting edits.
    fn merge_for(&self, tree: &str) -> Result<Option<Merge>>;

    /// Identity, cursor and outbox counts at start.
    fn start(&self) -> Result<Start>;

    /// What the next hello says of this replica.
    fn hello_state(&self) -> Result<HelloState>;

    /// The stored pin's bytes (server UUID, then the certificate fingerprint if known).
    fn stored_pin(&self) -> Result<Option<Vec<u8>>>;

    /// The WebTransport certificate hashes the server last announced, as stored
    /// (`hash:not_after`, comma-separated).
    fn announced_hashes(&self) -> Result<Option<String>>;

    /// The subscription coverage (`None`: a new database, or one from before it was kept).
    fn coverage(&self) -> Result<Option<Coverage>>;

    /// The lineage of the server's history this replica last synced with.
    fn history(&self) -> Result<Vec<(u64, u64)>>;

    /// Ids left in this replica's ranges.
    fn free_ids(&self) -> Result<u64>;

    /// Whether `id` is from one of this replica's id ranges.
    fn owns_id(&self, id: u64) -> Result<bool>;

    /// The next run of up to `max_entries` consecutive outbox entries (changes and returns,
    /// all numbered: a resent one is answered with its first outcome) of at most about
    /// `max_bytes`. An entry no request can carry (written by a version that did not check
    /// sizes at commit) ends the run, or is named alone as `oversized`.
    fn outbox_run(&self, max_entries: usize, max_bytes: usize) -> Result<Run>;

    /// When the oldest outbox entry was made (milliseconds since the epoch).
    fn oldest_entry_at(&self) -> Result<Option<u64>>;

    /// The schema of `tree` version `version`, if stored.
    fn schema(&self, tree: &str, version: u32) -> Result<Option<String>>;

    /// Those of `versions` whose schema is not stored, each once.
    fn missing_schemas(&self, versions: &[(String, u32)]) -> Result<Vec<(String, u32)>>;

    /// The records of journal rows noted under [`UNKNOWN_SEQ`] (a tab taking over).
    fn unknown_journal_rows(&self) -> Result<Vec<(String, u64)>>;

    /// Journal rows older than `horizon` (milliseconds since the epoch), oldest first, at
    /// most 100,000.
    fn journal_rows_before(&self, horizon: u64) -> Result<Vec<(u64, String, u64)>>;

    /// Whether holder `me` holds record `id` of `tree` here.
    fn holds(&self, tree: &str, id: u64, me: u32) -> Result<bool>;

    /// The stored revisions of record `id` of `tree`, oldest first.
    fn revisions(&self, tree: &str, id: u64) -> Result<Vec<LocalRevision>>;

    /// Whether record `id` of optimistic tree `tree` has edits waiting in the outbox.
    fn optimistic_pending(&self, tree: &str, id: u64) -> Result<bool>;

    /// What the journal says after shared point `common` (see [`Journal`]).
    fn journal_since(&self, common: u64) -> Result<Journal>;

    /// The records waiting to be taken back after a restore, and whether this replica
    /// held each.
    fn reclaims(&self) -> Result<Vec<(String, u64, bool)>>;

    /// Whether records wait to be taken back after a restore.
    fn has_reclaims(&self) -> Result<bool>;

    /// Whether record `id` of `tree` still waits to be taken back.
    fn waits_to_take_back(&self, tree: &str, id: u64) -> Result<bool>;

    /// The shared point of the reconciliation that left records waiting (0 when unknown).
    fn reclaim_common(&self) -> Result<u64>;

    /// The records to fetch again once caught up.
    fn rechecks(&self) -> Result<Vec<(String, u64)>>;
}

/// One local transaction of the sync client (see the module documentation).
pub(crate) trait Write {
    /// Commits without waiting for the disk (see the client's lazy durability).
    fn lazy(&mut self);

    /// Commits, within the write limits of the application's own writes.
    fn commit(self: Box<Self>) -> Result<()>;

    /// Commits what the server sent or asked for, whatever its size.
    fn commit_for_sync(self: Box<Self>) -> Result<()>;

    /// Sets the cursor, committed with the changes it covers.
    fn set_cursor(&mut self, cursor: u64);

    /// Applies pushed changes; the events of those skipped.
    fn apply_remote(&mut self, entries: &[Sequenced]) -> Result<Vec<SyncEvent>>;

    /// Notes that holder `holder` holds record `id` of `tree`.
    fn apply_borrow(&mut self, tree: &str, id: u64, holder: u32) -> Result<()>;

    /// Makes record `id` of `tree` what the server has.
    fn replace_record(
        &mut self,
        tree: &str,
        id: u64,
        holder: u32,
        revisions: &[Revision],
    ) -> Result<()>;

    /// Merges entry `entry`'s optimistic edits with the server's version (see
    /// [`crate::Batch`]'s conflict resolution).
    fn resolve_conflict(
        &mut self,
        entry: u64,
        current: &Current,
        merge: Option<Merge>,
    ) -> Result<Option<Resolved>>;

    /// Stores the subscription coverage.
    fn store_coverage(&self, c: &Coverage) -> Result<()>;

    /// Stores the lineage of the server's history.
    fn store_history(&self, lineage: &[(u64, u64)]) -> Result<()>;

    /// Notes the token's read rights in the stored coverage; whether the trees received
    /// changed (`None`: nothing noted, no coverage stored or the same rights).
    /// `trees`: the subscription.
    fn note_read_rights(&self, read: Readable, trees: &[String]) -> Result<Option<bool>>;

    /// Stores the WebTransport certificate hashes the server announced.
    fn store_announced_hashes(&self, hashes: &str) -> Result<()>;

    /// Stores the holder number and the pin at first contact.
    fn store_first_contact(&self, replica: u32, pin: &Pin) -> Result<()>;

    /// Stores the pin's bytes.
    fn store_pin(&self, bytes: &[u8]) -> Result<()>;

    /// Stores id ranges the server granted.
    fn add_ranges(&self, granted: &[(u64, u64)]) -> Result<()>;

    /// Stores a schema the server sent, unless one is stored already.
    fn store_schema(&self, tree: &str, version: u32, text: &str) -> Result<()>;

    /// Whether an entry waiting in the outbox touches record `id` of `tree` (read in this
    /// transaction, so no local write slips in between).
    fn outbox_touches(&self, tree: &str, id: u64) -> Result<bool>;

    /// Whether record `id` of `tree` waits to be taken back and a write waiting with it
    /// (`rekord.deferred`) touches it, read in this transaction.
    fn waits_with_writes(&self, tree: &str, id: u64) -> Result<bool>;

    /// Whether record `id` of `tree` has optimistic edits waiting in the outbox, read in
    /// this transaction.
    fn edited(&self, tree: &str, id: u64) -> Result<bool>;

    /// Queues `changes` as one outbox entry and each of `returns` as one; how many entries,
    /// and their bytes.
    fn enqueue(&self, changes: &[Change], returns: &[(String, u64)]) -> Result<(u64, u64)>;

    /// Takes every entry out of the outbox, in order, to be put back after entries that
    /// must go first ([`Write::append_outbox`]).
    fn take_outbox(&self) -> Result<Vec<Vec<u8>>>;

    /// Appends entries [`Write::take_outbox`] took, under new numbers.
    fn append_outbox(&self, entries: &[Vec<u8>]) -> Result<()>;

    /// Notes record `id` of `tree` to be fetched again once caught up.
    fn note_recheck(&self, tree: &str, id: u64) -> Result<()>;

    /// Record `id` of `tree` was fetched: no longer to fetch again.
    fn clear_recheck(&self, tree: &str, id: u64) -> Result<()>;

    /// Notes record `id` of `tree` to wait to be taken back (`held`: this replica held it).
    fn note_reclaim(&self, tree: &str, id: u64, held: bool) -> Result<()>;

    /// Record `id` of `tree` no longer waits to be taken back.
    fn clear_reclaim(&self, tree: &str, id: u64) -> Result<()>;

    /// Whether `entries` return the borrow of a record waiting to be taken back.
    fn returns_a_waiting_record(&self, entries: &[Sequenced]) -> Result<bool>;

    /// Forgets the records waiting to be taken back that a replica other than `me`
    /// borrowed in `entries`, and notes them to be fetched again; the records, each with
    /// its new holder.
    fn forget_taken(&self, entries: &[Sequenced], me: u32) -> Result<Vec<(String, u64, u32)>>;

    /// A borrow granted under `seq` in a tree this replica does not receive, its copy
    /// fetched: changes of others up to `seq`, met later, are older and skipped (the
    /// optimistic bookkeeping's floor), and the grant is journaled (no push brings it).
    fn note_unpushed_grant(&self, tree: &str, id: u64, seq: u64) -> Result<()>;

    /// Removes the journal rows noted under [`UNKNOWN_SEQ`] of `keys`.
    fn drop_unknown_journal_rows(&self, keys: &[(String, u64)]) -> Result<()>;

    /// Removes journal rows `old` (and their states), and raises the journal floor to
    /// `top` and the floor of rows of an unknown number to `unknown_top` (see
    /// [`JOURNAL_UNKNOWN_FLOOR`]).
    fn prune_journal(&self, old: &[(u64, String, u64)], top: u64, unknown_top: u64) -> Result<()>;

    /// Removes outbox entries `first, first + 1, ...` that the server processed (one per
    /// outcome): accepted ones go (journaled), rejected ones are kept aside in
    /// `rekord.outbox_rejected` (their records noted to fetch again), an entry changing a
    /// record waiting to be taken back waits with it, and one refused with a conflict stays
    /// (returned, to be merged). `cursor`: the client's; `reclaiming`: whether records wait
    /// to be taken back.
    fn settle(
        &self,
        first: u64,
        outcomes: &[EntryOutcome],
        cursor: u64,
        reclaiming: bool,
    ) -> Result<Settled>;

    /// Goes through the writes waiting with records to be taken back (`rekord.deferred`):
    /// one that changes a record of `superseded` (another replica's version of it stands)
    /// is set aside as rejected, its other records fetched again once caught up (except
    /// those still waiting); one none of whose records waits any more is sent again, under
    /// a new number.
    fn release_deferred(&self, superseded: &[(String, u64)]) -> Result<Released>;

    /// A reconciliation's rewind to shared point `common` (the cursor going back to
    /// `back`): the subscription coverage goes back with the cursor, the new `lineage` is
    /// stored (and the shared point, when records wait to be taken back), optimistic
    /// edits based past it are based on it instead, and journal rows past it go (the journal
    /// floors come down to it).
    fn rewind(
        &mut self,
        common: u64,
        back: u64,
        lineage: &[(u64, u64)],
        waiting: bool,
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    /// No module under `sync/` names a table, transaction or lock of the database, nor
    /// the modules that hold them (`db`, `tree`, `storage`, `index`, `replica`): the
    /// protocol side reads and writes the replica only through [`super::Local`] and
    /// [`super::Write`], so the sync module depends on none of them (they depend on it).
    /// Comments may name them; code may not.
    #[test]
    fn the_sync_module_reaches_the_database_only_through_this_interface() {
        let files = [
            ("sync/mod.rs", include_str!("mod.rs")),
            ("sync/local.rs", include_str!("local.rs")),
            ("sync/client.rs", include_str!("client.rs")),
            ("sync/client/restore.rs", include_str!("client/restore.rs")),
            ("sync/engine.rs", include_str!("engine.rs")),
            ("sync/driver.rs", include_str!("driver.rs")),
            ("sync/merge.rs", include_str!("merge.rs")),
        ];
        let past_the_interface = [
            "open_table",
            "begin_read",
            "begin_write",
            "redb::",
            ".txn",
            ".batch()",
            ".inner.",
            "Batch",
            "DbInner",
            "crate::db",
            "crate::tree",
            "crate::storage",
            "crate::index",
            "crate::replica",
        ];
        for (file, text) in files {
            // The code before the file's unit tests (this one lists the needles), without
            // comments.
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for (n, line) in code.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for needle in past_the_interface {
                    assert!(
                        !line.contains(needle),
                        "{file}:{} reaches the database past sync::local: `{needle}`",
                        n + 1
                    );
                }
            }
        }
    }
}
