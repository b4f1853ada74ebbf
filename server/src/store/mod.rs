//! The server's own database, `server.redb`: access tokens, client holder numbers (with the
//! name of the token each client first connected with, table `holder_tokens`), granted
//! id ranges, borrows, record schemas, the change log, the records' state and the accepted
//! operations (tables `schemas`, `log`, `records`, `ops`; see [`Store::apply_changes`]).
//!
//! # Id ranges
//!
//! Record ids are allocated in ranges by one global allocator: the `next_id` counter of the
//! `meta` table starts at [`FIRST_ID`] (2^32; ids below are left to standalone replicas)
//! and only grows, so an id is never granted twice. [`Store::grant_range`] takes at most
//! [`MAX_RANGE`] ids (at least 1) from it and records the range for the client (table
//! `ranges`: `(holder, start) -> end`) in the same write transaction, committed durably
//! before the range is answered: a range a client was told about survives any crash, and a
//! range whose transaction did not commit was never told to anyone.
//!
//! # Borrows
//!
//! Table `borrows` maps `(tree, id)` to the holder number of the client holding the record.
//! [`Store::borrow`] and [`Store::return_borrow`] check and change it inside one write
//! transaction; redb runs one write transaction at a time, so under contention exactly one
//! client wins a borrow.
//!
//! Tokens are never stored: only the SHA-256 of each token is, as the key of the token
//! table. Checking a token hashes it and looks the hash up; the lookup compares hashes, so
//! its timing reveals at most something about a hash, never about a valid token.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use rekord::proto::handshake::{Grant, Trees};
use rekord::proto::{Change, ChangeKind, EntryOutcome, Refusal, RemoteError, Revision, Sequenced};

use crate::ServerError;

mod allocated;
mod borrows;
mod changes;
mod entries;
mod history;
mod holders;
mod ranges;
mod records;
mod schemas;
mod tokens;

pub use borrows::BorrowOutcome;
pub use changes::Applied;
use changes::{Parsed, Tables, apply_in, head_of, wire_error};
use entries::migrate_outcomes;
use history::open_history;
pub use records::RecordState;
pub use tokens::TokenInfo;

/// File name of the server database inside the data directory.
pub const DB_FILE: &str = "server.redb";

/// Token hash (hex) -> token record (TOML).
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
/// Token name -> token hash (hex).
const TOKEN_NAMES: TableDefinition<&str, &str> = TableDefinition::new("token_names");
/// Client UUID -> holder number.
const HOLDERS: TableDefinition<u128, u32> = TableDefinition::new("holders");
/// Holder number -> name of the token that client first connected with (holders that
/// connected before the server recorded names get theirs at their next connection).
const HOLDER_TOKENS: TableDefinition<u32, &str> = TableDefinition::new("holder_tokens");
/// Counters: `next_holder`, `next_id`; `outcomes_format`: the layout of the `outcomes`
/// table's values (2: protocol version 2; absent: version 1, migrated by [`Store::open`]).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (holder number, range start) -> range end (exclusive).
const RANGES: TableDefinition<(u32, u64), u64> = TableDefinition::new("ranges");
/// (tree, record id) -> holder number of the client holding the borrow.
const BORROWS: TableDefinition<(&str, u64), u32> = TableDefinition::new("borrows");

/// (tree, schema version) -> the schema as RON text.
const SCHEMAS: TableDefinition<(&str, u32), &str> = TableDefinition::new("schemas");
/// Sequence number -> the accepted change ([`rekord::proto::encode_sequenced`] bytes).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// How many log entries back the base of a conflicting edit is looked for.
const BASE_LOOKBACK: usize = 4096;
/// (tree, record id, revision) -> [`RecordState`] (encoded by `RecordState::encode`).
const RECORDS: TableDefinition<(&str, u64, u32), &[u8]> = TableDefinition::new("records");
/// (holder number, operation id) -> sequence number answered for that operation.
const OPS: TableDefinition<(u32, u128), u64> = TableDefinition::new("ops");
/// Holder number -> the last outbox entry number of that client processed
/// ([`Store::apply_entries`]).
const ENTRIES: TableDefinition<u32, u64> = TableDefinition::new("entries");
/// (holder number, entry number) -> what became of that outbox entry (rkyv bytes of
/// [`EntryOutcome`]), so a retry after a lost answer hears the same answer (with the
/// sequence number, or the refusal); dropped once the client sends later entries only.
const OUTCOMES: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("outcomes");
/// (holder number, entry number) -> digest of the entry's changes ([`entry_digest`]), kept
/// beside its outcome: a retry must carry the same changes, or it comes from another copy
/// of the client's file, which numbered other changes the same.
const DIGESTS: TableDefinition<(u32, u64), u32> = TableDefinition::new("entry_digests");
/// Holder number -> the first entry number the client still sent: it settled every
/// entry before it, and never sends one of them again (a copy of its file, or an older
/// backup of it, would).
const SETTLED: TableDefinition<u32, u64> = TableDefinition::new("settled");

/// Position -> (history id, base): the lineage of this server's history, oldest first. A
/// history is the sequence of changes one line of this database has logged; restoring a
/// backup starts a new one, which shares its parent's changes up to `base` only. The first
/// entry has base 0. See [`Store::history`].
const HISTORY: TableDefinition<u64, (u64, u64)> = TableDefinition::new("history");

/// Start -> end (exclusive) of the id regions earlier histories may have granted from
/// after this state: each opening of the database skips one (see `open_history`). Records
/// with ids from them come only from replicas reconciling after a restore.
const LOST_IDS: TableDefinition<u64, u64> = TableDefinition::new("lost_ids");

/// The names of every table of `server.redb`, in the order [`Store::backup`] copies them.
pub const TABLES: [&str; 17] = [
    "tokens",
    "token_names",
    "holders",
    "holder_tokens",
    "meta",
    "ranges",
    "borrows",
    "schemas",
    "log",
    "records",
    "ops",
    "entries",
    "outcomes",
    "entry_digests",
    "settled",
    "history",
    "lost_ids",
];

/// The first record id the server grants (ids below 2^32 are never granted).
pub const FIRST_ID: u64 = 1 << 32;

/// The most ids one [`Store::grant_range`] grants; larger wishes are clamped to it, and a
/// wish of 0 is raised to 1.
pub const MAX_RANGE: u64 = 1_000_000;

/// How far a restore moves the id allocator past the backup's: beyond every id the server
/// can have granted between the backup and the restore (17 million ranges of the largest
/// size), so no id range is ever granted twice. Clients of the lost history reclaim the
/// ranges they hold ([`Store::reclaim`]).
pub const RESTORE_ID_GAP: u64 = 1 << 44;

/// How far a restore moves the holder numbers past the backup's, for the same reason:
/// numbers assigned between the backup and the restore are never given to other clients.
pub const RESTORE_HOLDER_GAP: u64 = 1 << 20;

/// How far every opening of the database moves the id allocator (see `open_history`).
pub const START_ID_GAP: u64 = 1 << 40;

/// How far every opening of the database moves the holder numbers.
pub const START_HOLDER_GAP: u64 = 1 << 10;

/// `meta` key set in a backup copy: its first opening moves the allocators further.
const RESTORE_PENDING: &str = "restore_pending";

/// How many lineage entries a [`rekord::proto::ServerHello`] carries (the newest): a
/// client that last synced more than this many server starts ago reconciles every record
/// its journal names.
pub const HISTORY_SENT: usize = rekord::proto::MAX_HISTORY;

/// The first holder number given to a client (1 is reserved for standalone replicas).
pub const FIRST_HOLDER: u32 = 2;

/// Longest token name accepted.
pub const MAX_TOKEN_NAME: usize = 128;

/// The value of the `outcomes_format` counter written by this version.
const OUTCOMES_FORMAT: u64 = 2;

/// The server database.
#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    path: PathBuf,
    /// Whether logged changes commit without waiting for the disk (group commit: the
    /// server makes them durable with [`Store::flush`] before it answers or pushes).
    group_commit: std::sync::atomic::AtomicBool,
    /// [`crate::Limits::replicas_per_token`].
    replicas_per_token: std::sync::atomic::AtomicU32,
    /// [`crate::Limits::max_schemas`].
    max_schemas: std::sync::atomic::AtomicU32,
    /// The stored schemas parsed so far, by (tree, version): a stored schema never changes
    /// (see `put_schema`), and parsing its RON for every request cost more than the rest of
    /// applying a one-change entry. At most `max_schemas` of them.
    parsed: std::sync::Mutex<Parsed>,
    /// The data directory (where the allocators' high-water marks are kept).
    dir: PathBuf,
    /// The allocators' high-water marks, as stored (see `allocated`).
    marks: std::sync::Mutex<allocated::Marks>,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ServerError {
            fn from(e: $t) -> Self {
                ServerError::Database(redb::Error::from(e).to_string())
            }
        }
    )*};
}
from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

fn open_error(path: &Path, e: redb::DatabaseError) -> ServerError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => ServerError::Busy(path.to_path_buf()),
        e => ServerError::Database(format!("cannot open {}: {e}", path.display())),
    }
}

impl Store {
    /// The cache of parsed schemas (writers hold it while they apply; a panic while it was
    /// held leaves at worst a schema not cached yet).
    fn parsed(&self) -> std::sync::MutexGuard<'_, Parsed> {
        self.parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens (creating if needed) `server.redb` in `data_dir`, with every table present.
    pub fn open(data_dir: &Path) -> Result<Self, ServerError> {
        crate::datadir::prepare(data_dir)?;
        let path = data_dir.join(DB_FILE);
        // Every tree is in it, whatever the tokens allow: the owner's alone.
        if !path.exists() {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ServerError::Io { path, source: e }),
            }
        }
        crate::datadir::owner_only(&path)?;
        let db = redb::Database::create(&path).map_err(|e| open_error(&path, e))?;
        let txn = db.begin_write()?;
        txn.open_table(TOKENS)?;
        txn.open_table(TOKEN_NAMES)?;
        txn.open_table(HOLDERS)?;
        txn.open_table(HOLDER_TOKENS)?;
        txn.open_table(META)?;
        txn.open_table(RANGES)?;
        txn.open_table(BORROWS)?;
        txn.open_table(SCHEMAS)?;
        txn.open_table(LOG)?;
        txn.open_table(RECORDS)?;
        txn.open_table(OPS)?;
        txn.open_table(ENTRIES)?;
        txn.open_table(LOST_IDS)?;
        migrate_outcomes(&txn)?;
        let marks = allocated::Marks::load(data_dir)?;
        open_history(&txn, &path, marks)?;
        txn.commit()?;
        Ok(Self {
            db,
            path,
            group_commit: std::sync::atomic::AtomicBool::new(false),
            replicas_per_token: std::sync::atomic::AtomicU32::new(
                crate::Limits::default().replicas_per_token,
            ),
            max_schemas: std::sync::atomic::AtomicU32::new(crate::Limits::default().max_schemas),
            parsed: std::sync::Mutex::new(Parsed::new()),
            dir: data_dir.to_path_buf(),
            marks: std::sync::Mutex::new(marks),
        })
    }

    /// Switches group commit on or off. With it on, the methods that log changes
    /// ([`Store::apply_entries`], [`Store::apply_changes`], [`Store::borrow_logged`],
    /// [`Store::return_logged`], [`Store::force_return`]) commit atomically but not durably;
    /// the caller must call [`Store::flush`] before it tells anyone about them. The server
    /// does (one flush for every change committed meanwhile). Off (the default), each of
    /// them is durable when it returns.
    pub fn set_group_commit(&self, on: bool) {
        self.group_commit
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// Sets the bounds on replicas per token and schemas stored ([`crate::Limits`]; the
    /// defaults apply until this is called).
    pub fn set_limits(&self, replicas_per_token: u32, max_schemas: u32) {
        use std::sync::atomic::Ordering::Release;
        self.replicas_per_token.store(replicas_per_token, Release);
        self.max_schemas.store(max_schemas, Release);
    }

    /// Makes every earlier commit durable (one disk sync).
    pub fn flush(&self) -> Result<(), ServerError> {
        let txn = self.db.begin_write()?;
        txn.commit()?;
        Ok(())
    }

    /// A write transaction for logged changes (non-durable under group commit).
    fn begin_logged(&self) -> Result<redb::WriteTransaction, ServerError> {
        let mut txn = self.db.begin_write()?;
        if self.group_commit.load(std::sync::atomic::Ordering::Acquire) {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| ServerError::Database(e.to_string()))?;
        }
        Ok(txn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a consistent copy of the database to `out`, a new file (an existing file is
    /// never overwritten; on Unix the copy is readable by the owner only): every table is
    /// copied inside one read transaction, so the copy is the state of one instant even
    /// while the server keeps writing. If the copy fails, the partial file is removed.
    ///
    /// To restore: stop the server, replace `server.redb` in its data directory by the
    /// copy, start the server. (The identity files `server.uuid`, `cert.der` and `key.der`
    /// are not in the database; back them up once, they never change.)
    pub fn backup(&self, out: &Path) -> Result<(), ServerError> {
        let read = self.db.begin_read()?;
        for table in read.list_tables()? {
            let name = redb::TableHandle::name(&table);
            if !TABLES.contains(&name) {
                return Err(ServerError::Database(format!(
                    "unknown table `{name}` in {}; this server version cannot back it up",
                    self.path.display()
                )));
            }
        }
        // Claiming the name atomically: no race with another file of that name.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(out).map_err(|e| ServerError::Io {
            path: out.to_path_buf(),
            source: if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the backup file exists already; choose a new name",
                )
            } else {
                e
            },
        })?;
        // redb initialises a new database in the empty file.
        drop(file);
        let copied = redb::Database::create(out)
            .map_err(|e| open_error(out, e))
            .and_then(|copy| copy_tables(&read, &copy));
        if copied.is_err() {
            let _ = std::fs::remove_file(out);
        }
        copied
    }
}

/// Copies every table read by `read` into `copy`, in one write transaction.
fn copy_tables(read: &redb::ReadTransaction, copy: &redb::Database) -> Result<(), ServerError> {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        read: &redb::ReadTransaction,
        write: &redb::WriteTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<(), ServerError> {
        let src = match read.open_table(def) {
            Ok(t) => t,
            // Tables appear on first use (an older or fresh server may lack some).
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut dst = write.open_table(def)?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
        Ok(())
    }
    let write = copy.begin_write()?;
    table(read, &write, TOKENS)?;
    table(read, &write, TOKEN_NAMES)?;
    table(read, &write, HOLDERS)?;
    table(read, &write, HOLDER_TOKENS)?;
    table(read, &write, META)?;
    table(read, &write, RANGES)?;
    table(read, &write, BORROWS)?;
    table(read, &write, SCHEMAS)?;
    table(read, &write, LOG)?;
    table(read, &write, RECORDS)?;
    table(read, &write, OPS)?;
    table(read, &write, ENTRIES)?;
    table(read, &write, OUTCOMES)?;
    table(read, &write, DIGESTS)?;
    table(read, &write, SETTLED)?;
    table(read, &write, HISTORY)?;
    table(read, &write, LOST_IDS)?;
    // The copy's first open starts a new history: restoring it (once or many times) never
    // reuses the sequence numbers, id ranges or holder numbers of the history it was taken
    // from.
    write.open_table(META)?.insert(RESTORE_PENDING, 1)?;
    write.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tokens_and_holders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = store
            .issue("alice", Trees::Only(vec!["parts".into()]), Trees::All)
            .unwrap();
        assert!(t.len() >= 4 + 64);
        let g = store.grant(&t).unwrap().unwrap();
        assert_eq!(g.read, Trees::Only(vec!["parts".into()]));
        assert_eq!(g.write, Trees::All);
        assert!(store.grant("rk1_nope").unwrap().is_none());
        assert!(store.issue("alice", Trees::All, Trees::All).is_err());
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(store.revoke(&t).unwrap(), "alice");
        assert!(store.grant(&t).unwrap().is_none());
        assert!(store.revoke("alice").is_err());
        let t2 = store.issue("bob", Trees::All, Trees::All).unwrap();
        assert_eq!(store.revoke("bob").unwrap(), "bob");
        assert!(store.grant(&t2).unwrap().is_none());

        assert_eq!(store.holder([1; 16]).unwrap(), FIRST_HOLDER);
        assert_eq!(store.holder([2; 16]).unwrap(), FIRST_HOLDER + 1);
        assert_eq!(store.holder([1; 16]).unwrap(), FIRST_HOLDER);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.holder([2; 16]).unwrap(), FIRST_HOLDER + 1);
        // Every opening starts a new history: numbers move past the earlier run's.
        assert_eq!(
            u64::from(store.holder([3; 16]).unwrap()),
            u64::from(FIRST_HOLDER) + 2 + START_HOLDER_GAP
        );

        // A holder keeps the name of the token it first connected with; one assigned
        // before names were recorded gets one at its next connection.
        store.issue("carol", Trees::All, Trees::All).unwrap();
        assert_eq!(store.holder_token(FIRST_HOLDER).unwrap(), None);
        assert_eq!(store.connect([1; 16], "carol").unwrap(), FIRST_HOLDER);
        let fourth = store.connect([4; 16], "carol").unwrap();
        assert_eq!(
            u64::from(fourth),
            u64::from(FIRST_HOLDER) + 3 + START_HOLDER_GAP
        );
        // Bound to `carol` now: another token's hello with that identity is refused.
        assert!(store.connect([1; 16], "dave").is_err());
        assert_eq!(
            store.connect_claiming([1; 16], "dave", 0).unwrap(),
            Err(Refusal::ReplicaOfAnotherToken)
        );
        assert_eq!(
            store.holder_token(FIRST_HOLDER).unwrap().as_deref(),
            Some("carol")
        );
        let carol = store
            .list()
            .unwrap()
            .into_iter()
            .find(|t| t.name == "carol");
        assert_eq!(carol.unwrap().holders, vec![FIRST_HOLDER, fourth]);
    }

    /// Entry outcomes a server stored before protocol version 2 are rewritten when the
    /// database opens, so a retry still hears its first answer.
    #[test]
    fn outcomes_of_protocol_version_1_are_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        {
            let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .remove("outcomes_format")
                .unwrap();
            txn.open_table(ENTRIES).unwrap().insert(2, 5).unwrap();
            // Entry 5 of holder 2 refused with `AlreadyBorrowed { holder: 7 }`, as
            // protocol version 1's `encode_outcome` wrote it.
            let old: &[u8] = &[2, 0, 7, 0, 0, 0, 0, 0, 0, 0];
            txn.open_table(OUTCOMES)
                .unwrap()
                .insert((2, 5), old)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let grant = Grant {
            read: Trees::All,
            write: Trees::All,
        };
        let (outcomes, _) = store.apply_entries(2, &grant, 5, &[vec![]]).unwrap();
        assert_eq!(
            outcomes,
            vec![EntryOutcome::Rejected(RemoteError::AlreadyBorrowed {
                holder: 7,
                name: None
            })]
        );
        // Opening again does not migrate twice.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let (again, _) = store.apply_entries(2, &grant, 5, &[vec![]]).unwrap();
        assert_eq!(again, outcomes);
    }

    #[test]
    fn ranges_and_borrows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.grant_range(2, 10).unwrap();
        assert_eq!(a, (FIRST_ID, FIRST_ID + 10));
        let b = store.grant_range(3, 0).unwrap();
        assert_eq!(b, (FIRST_ID + 10, FIRST_ID + 11));
        let c = store.grant_range(2, u64::MAX).unwrap();
        assert_eq!(c.1 - c.0, MAX_RANGE);
        assert!(store.owns(2, FIRST_ID).unwrap());
        assert!(store.owns(2, FIRST_ID + 9).unwrap());
        assert!(!store.owns(2, FIRST_ID + 10).unwrap());
        assert!(store.owns(3, FIRST_ID + 10).unwrap());
        assert!(store.owns(2, c.0).unwrap() && store.owns(2, c.1 - 1).unwrap());
        assert!(!store.owns(2, c.1).unwrap() && !store.owns(2, 1).unwrap());
        assert_eq!(store.ranges(2).unwrap(), vec![a, c]);

        let five = a.0 + 5;
        assert_eq!(store.borrow("t", five, 2).unwrap(), BorrowOutcome::Granted);
        assert_eq!(
            store.borrow("t", five, 2).unwrap(),
            BorrowOutcome::AlreadyHeld
        );
        assert_eq!(
            store.borrow("t", five, 3).unwrap(),
            BorrowOutcome::HeldBy(2)
        );
        assert_eq!(store.borrow("u", b.0, 3).unwrap(), BorrowOutcome::Granted);
        assert!(!store.return_borrow("t", five, 3).unwrap());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.borrower("t", five).unwrap(), Some(2));
        assert!(store.return_borrow("t", five, 2).unwrap());
        assert_eq!(store.borrower("t", five).unwrap(), None);
        // Each opening starts a history and skips past what the earlier ones granted.
        let openings = store.history().unwrap().len() as u64;
        assert!(openings >= 2);
        assert_eq!(
            store.grant_range(4, 1).unwrap().0,
            c.1 + (openings - 1) * START_ID_GAP
        );
    }

    #[test]
    fn a_restored_backup_starts_a_history_and_reuses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let before = store.grant_range(2, 10).unwrap();
        let lineage = store.history().unwrap();
        assert_eq!(lineage.len(), 1);
        assert_eq!(lineage[0].1, 0);
        let copy = dir.path().join("backup.redb");
        store.backup(&copy).unwrap();
        // The lost history grants more after the backup.
        let lost = store.grant_range(3, 10).unwrap();
        drop(store);
        let restored_dir = tempfile::tempdir().unwrap();
        std::fs::copy(&copy, restored_dir.path().join(DB_FILE)).unwrap();
        let restored = Store::open(restored_dir.path()).unwrap();
        let lineage2 = restored.history().unwrap();
        assert_eq!(lineage2.len(), 2);
        assert_eq!(lineage2[0], lineage[0]);
        assert_ne!(lineage2[1].0, lineage[0].0);
        // Nothing granted after the backup is granted again.
        let fresh = restored.grant_range(4, 10).unwrap();
        assert!(fresh.0 >= before.1 + RESTORE_ID_GAP && fresh.0 >= lost.1);
        // The client that held the lost range gets it back; another may not take it.
        assert_eq!(restored.reclaim(3, &[lost]).unwrap(), vec![]);
        assert!(restored.owns(3, lost.0).unwrap());
        assert_eq!(restored.reclaim(5, &[lost]).unwrap(), vec![lost]);
        // Ranges the server cannot have granted are refused.
        assert_eq!(
            restored
                .reclaim(3, &[(1, 5), (u64::MAX - 5, u64::MAX)])
                .unwrap()
                .len(),
            2
        );
        // Restoring the same file again starts yet another history.
        drop(restored);
        let again = tempfile::tempdir().unwrap();
        std::fs::copy(&copy, again.path().join(DB_FILE)).unwrap();
        let third = Store::open(again.path()).unwrap().history().unwrap();
        assert_eq!(third.len(), 2);
        assert_ne!(third[1].0, lineage2[1].0);
    }

    /// Puts `copy` back as the database of `dir` (a restore in place: the data directory
    /// and its other files stay).
    fn restore_in_place(dir: &Path, copy: &Path) -> Store {
        std::fs::copy(copy, dir.join(DB_FILE)).unwrap();
        Store::open(dir).unwrap()
    }

    #[test]
    fn one_backup_restored_twice_hands_out_no_id_or_holder_twice() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("backup.redb");
        let store = Store::open(dir.path()).unwrap();
        store.issue("all", Trees::All, Trees::All).unwrap();
        store.grant_range(2, 10).unwrap();
        store.backup(&copy).unwrap();
        drop(store);
        // The first restore hands out a range and a holder number to a new client.
        let first = restore_in_place(dir.path(), &copy);
        let range = first.grant_range(2, 1000).unwrap();
        let holder = first.connect([7; 16], "all").unwrap();
        drop(first);
        // The same backup again (a restore retried): both start from the same counters.
        let second = restore_in_place(dir.path(), &copy);
        let again = second.grant_range(3, 1000).unwrap();
        assert!(
            again.0 >= range.1,
            "the second restore granted {again:?}, the first {range:?}"
        );
        let other = second.connect([8; 16], "all").unwrap();
        assert!(other > holder, "holder {other} after {holder}");
        // The client of the first restore's history takes its range back.
        assert_eq!(second.reclaim(2, &[range]).unwrap(), vec![]);
    }

    #[test]
    fn many_starts_between_a_backup_and_its_restore_hand_out_no_id_twice() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("backup.redb");
        let store = Store::open(dir.path()).unwrap();
        store.grant_range(2, 10).unwrap();
        store.backup(&copy).unwrap();
        drop(store);
        // Each start moves the allocator by START_ID_GAP; after 16 of them the server
        // grants where a restore's gap (RESTORE_ID_GAP) from the backup's counter lands.
        let mut last = (0, 0);
        for _ in 0..(RESTORE_ID_GAP / START_ID_GAP + 1) {
            let store = Store::open(dir.path()).unwrap();
            last = store.grant_range(2, 10).unwrap();
        }
        let restored = restore_in_place(dir.path(), &copy);
        let fresh = restored.grant_range(3, 10).unwrap();
        assert!(fresh.0 >= last.1, "granted {fresh:?} after {last:?}");
        // The lost history's last range is one a client of it may take back.
        assert_eq!(restored.reclaim(2, &[last]).unwrap(), vec![]);
    }

    #[test]
    fn a_damaged_high_water_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.grant_range(2, 10).unwrap();
        drop(store);
        let marks = dir.path().join(allocated::FILE);
        let text = std::fs::read_to_string(&marks).unwrap();
        assert!(text.starts_with("ids "), "{text}");
        std::fs::write(&marks, "ids twelve\n").unwrap();
        let Err(e) = Store::open(dir.path()) else {
            panic!("a damaged high-water file was accepted")
        };
        let said = e.to_string();
        assert!(
            said.contains("damaged") && said.contains("restored"),
            "{said}"
        );
    }

    #[rekord::record(tree = "t", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Doc {
        pub n: u32,
    }

    fn edit(id: u64, base: u64, n: u32) -> Change {
        use rekord::Record as _;
        Change {
            tree: "t".into(),
            id,
            rev: 0,
            kind: ChangeKind::Edit {
                base,
                hlc: u64::from(n),
                version: 1,
                data: Doc { n }.__encode(Vec::new()).unwrap(),
            },
        }
    }

    /// A store with the schema of `Doc`, and a grant to write everything.
    fn doc_store(dir: &Path) -> (Store, Grant) {
        let store = Store::open(dir).unwrap();
        let ron = rekord::Schema::of::<Doc>().to_ron().unwrap();
        store.put_schema("t", 1, &ron).unwrap().unwrap();
        let grant = Grant {
            read: Trees::All,
            write: Trees::All,
        };
        (store, grant)
    }

    #[test]
    fn optimistic_edits_conflict_only_with_other_clients_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, grant) = doc_store(dir.path());
        let (a, b) = (2, 3);
        let (id, _) = store.grant_range(a, 10).unwrap();
        // An optimistic create (seq 1) gives nobody the borrow.
        let (o, _) = store
            .apply_entries(a, &grant, 1, &[vec![edit(id, 0, 1)]])
            .unwrap();
        assert_eq!(o, vec![EntryOutcome::Applied { seq: 1 }]);
        assert_eq!(store.borrower("t", id).unwrap(), None);
        // A chain of A's edits on its own version, all based on 0: fine.
        let (o, _) = store
            .apply_entries(a, &grant, 2, &[vec![edit(id, 0, 2)], vec![edit(id, 0, 3)]])
            .unwrap();
        assert_eq!(
            o,
            vec![
                EntryOutcome::Applied { seq: 2 },
                EntryOutcome::Applied { seq: 3 }
            ]
        );
        // B saw seq 3 and edits on top of it: fine.
        let (o, _) = store
            .apply_entries(b, &grant, 1, &[vec![edit(id, 3, 4)]])
            .unwrap();
        assert_eq!(o, vec![EntryOutcome::Applied { seq: 4 }]);
        // A edits again on its old base: a conflict naming B's version and the base.
        let (o, _) = store
            .apply_entries(a, &grant, 4, &[vec![edit(id, 3, 5)]])
            .unwrap();
        let [EntryOutcome::Rejected(RemoteError::Conflict(c))] = o.as_slice() else {
            panic!("expected a conflict: {o:?}");
        };
        assert_eq!((c.seq, c.origin, c.hlc), (4, b, 4));
        use rekord::Record as _;
        assert_eq!(c.data, Doc { n: 4 }.__encode(Vec::new()).unwrap());
        assert_eq!(
            c.base.as_ref().map(|(_, d)| d.clone()),
            Some(Doc { n: 3 }.__encode(Vec::new()).unwrap()),
            "the base is the version logged at the edit's base"
        );
        // The retry of that entry (its answer lost) hears the same conflict, applies nothing.
        let (again, changes) = store
            .apply_entries(a, &grant, 4, &[vec![edit(id, 3, 5)]])
            .unwrap();
        assert_eq!(again, o);
        assert!(changes.is_empty());
        // A conflict does not count the entry as processed: the client sends it again,
        // merged, based on B's version: accepted; a retry of it gets the same answer.
        let (o, _) = store
            .apply_entries(a, &grant, 4, &[vec![edit(id, 4, 6)]])
            .unwrap();
        assert_eq!(o, vec![EntryOutcome::Applied { seq: 5 }]);
        let (o, changes) = store
            .apply_entries(a, &grant, 4, &[vec![edit(id, 4, 6)]])
            .unwrap();
        assert_eq!(o, vec![EntryOutcome::Applied { seq: 5 }]);
        assert!(changes.is_empty(), "a retry applies nothing");
        // Once the client moved on, the old answers are forgotten; the client never sends a
        // settled entry again, so one that comes is from another copy of its file: refused.
        let (o, _) = store.apply_entries(a, &grant, 5, &[vec![]]).unwrap();
        assert_eq!(o, vec![EntryOutcome::Applied { seq: 5 }]);
        let (o, _) = store
            .apply_entries(a, &grant, 4, &[vec![edit(id, 4, 6)]])
            .unwrap();
        assert!(
            matches!(&o[..], [EntryOutcome::Rejected(RemoteError::Invalid(m))] if m.contains("copy")),
            "{o:?}"
        );
        // A borrow blocks everyone else's optimistic edits.
        assert_eq!(store.borrow("t", id, b).unwrap(), BorrowOutcome::Granted);
        let (o, _) = store
            .apply_entries(a, &grant, 7, &[vec![edit(id, 5, 7)]])
            .unwrap();
        assert_eq!(
            o,
            vec![EntryOutcome::Rejected(RemoteError::AlreadyBorrowed {
                holder: b,
                name: None,
            })]
        );
        let state = store.record("t", id, 0).unwrap().unwrap();
        assert_eq!((state.seq, state.origin, state.before), (5, a, 4));
    }

    #[test]
    fn after_a_conflict_later_conflicts_are_reported_and_the_rest_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, grant) = doc_store(dir.path());
        let (a, b) = (2, 3);
        let (id, _) = store.grant_range(a, 10).unwrap();
        let created: Vec<Vec<Change>> = (0..3).map(|i| vec![edit(id + i, 0, 1)]).collect();
        store.apply_entries(a, &grant, 1, &created).unwrap();
        // B changes records 0 and 2 (based on the creates, seqs 1 to 3).
        store
            .apply_entries(
                b,
                &grant,
                1,
                &[vec![edit(id, 3, 2)], vec![edit(id + 2, 3, 2)]],
            )
            .unwrap();
        // A's offline edits of all three, based on seq 3: 0 and 2 conflict, 1 does not.
        let run: Vec<Vec<Change>> = (0..3).map(|i| vec![edit(id + i, 3, 3)]).collect();
        let (o, changes) = store.apply_entries(a, &grant, 4, &run).unwrap();
        assert!(changes.is_empty(), "nothing applied: {o:?}");
        assert_eq!(o.len(), 3);
        assert!(matches!(&o[0], EntryOutcome::Rejected(RemoteError::Conflict(c)) if c.id == id));
        assert_eq!(o[1], EntryOutcome::Skipped);
        assert!(
            matches!(&o[2], EntryOutcome::Rejected(RemoteError::Conflict(c)) if c.id == id + 2)
        );
        // Merged (based on B's versions), all three go through.
        let run = vec![
            vec![edit(id, 4, 4)],
            vec![edit(id + 1, 3, 4)],
            vec![edit(id + 2, 5, 4)],
        ];
        let (o, _) = store.apply_entries(a, &grant, 4, &run).unwrap();
        assert_eq!(
            o,
            (6..=8)
                .map(|seq| EntryOutcome::Applied { seq })
                .collect::<Vec<_>>()
        );
    }
}
