//! Errors. Every error says what happened and, where there is one, what to do about it.

use crate::RawKey;

/// The result type of rekord operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in rekord.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file could not be opened or created.
    #[error("cannot open the database at {path}: {source}")]
    Open {
        /// The path given to `Db::open`.
        path: String,
        /// What redb reported.
        #[source]
        source: redb::DatabaseError,
    },
    /// The file is not a rekord database: another application's redb file, or not a redb
    /// file at all. Rekord left it as it was.
    #[error(
        "not a rekord database: {path}: {reason}; check the path (rekord does not change a file it does not recognise)"
    )]
    NotRekord {
        /// The path given to `Db::open`.
        path: String,
        /// What was found instead.
        reason: String,
        /// What redb reported, if it could not read the file at all.
        #[source]
        source: Option<redb::DatabaseError>,
    },
    /// The database file is truncated or damaged (redb cannot read its structure).
    #[error(
        "cannot open the database at {path}: the file is truncated or damaged: {source}; restore it from a backup"
    )]
    Damaged {
        /// The path given to `Db::open`.
        path: String,
        /// What redb reported.
        #[source]
        source: redb::DatabaseError,
    },
    /// The database file is open in another process, or through another `Db` of this one.
    #[error(
        "cannot open the database at {path}: the file is locked by another process or handle ({source}); close the other one first, or share one Db (clones are cheap)"
    )]
    Locked {
        /// The path given to `Db::open`.
        path: String,
        /// What redb reported.
        #[source]
        source: redb::DatabaseError,
    },
    /// The storage engine failed (I/O error, corruption detected by redb, ...).
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    /// The file is a redb database but not one written by this version of rekord.
    #[error(
        "the database uses rekord format {found}, this build understands format {expected}; open it with a matching rekord version"
    )]
    Format {
        /// Format found in the file.
        found: u32,
        /// Format this build writes.
        expected: u32,
    },
    /// The database's own bookkeeping is unreadable.
    #[error("the database's metadata is corrupt ({reason}); restore it from a backup")]
    CorruptMeta {
        /// What is wrong.
        reason: String,
    },
    /// No record has this key.
    #[error("no record {key} in tree `{tree}`")]
    NotFound {
        /// Tree name.
        tree: String,
        /// The key that was looked up.
        key: RawKey,
    },
    /// A change needs the record's borrow, and this replica does not hold it.
    #[error("record {key} in tree `{tree}` is not borrowed by this replica{}; call borrow() first", holder_text(*.holder))]
    NotBorrowed {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
        /// Who holds it (0: nobody).
        holder: u32,
    },
    /// The record is borrowed by another replica.
    #[error(
        "record {key} in tree `{tree}` is borrowed: held by holder {holder}{}; wait until it is \
         returned (or ask the server's administrator: rekord-server borrow force-return)",
        holder_name_text(.holder_name.as_deref())
    )]
    AlreadyBorrowed {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
        /// The holder number of the replica holding the borrow.
        holder: u32,
        /// The name of the token that replica connected to the server with (`None` when
        /// not known: a standalone database, or a holder the server has no token name for).
        holder_name: Option<String>,
    },
    /// The revision is released: its data is frozen for good.
    #[error(
        "record {key} in tree `{tree}` is released and cannot change; make a new revision with new_revision()"
    )]
    Released {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
    },
    /// The operation needs a released revision (e.g. `set_state`).
    #[error(
        "record {key} in tree `{tree}` is a draft; release it first (states belong to released revisions)"
    )]
    NotReleased {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
    },
    /// `new_revision` while the latest revision is still a draft.
    #[error(
        "record {key} in tree `{tree}` is still a draft; edit it, or release it before making a new revision"
    )]
    DraftExists {
        /// Tree name.
        tree: String,
        /// The latest revision, a draft.
        key: RawKey,
    },
    /// The revision counter of a record is exhausted.
    #[error("record {id} in tree `{tree}` has no revision numbers left")]
    RevisionsExhausted {
        /// Tree name.
        tree: String,
        /// Record id.
        id: u64,
    },
    /// This replica has no ids left to create records with.
    #[error(
        "no record ids left in this replica's id ranges; a synced replica gets new ranges from its server while connected (after a batch ran out online, enough for it were fetched: run it again); offline it can create records again once it reconnects"
    )]
    IdsExhausted,
    /// A synced replica ran out of record ids and its server gives it none: its token may
    /// write no tree, so nothing it created would be accepted.
    #[error(
        "this replica has no record ids left and its server gives it none ({reason}): its \
         token may write no tree; create records with a token that may write"
    )]
    IdsRefused {
        /// The server's answer.
        reason: String,
    },
    /// The compiled record type differs from the schema stored for the same version.
    #[error("the schema of tree `{tree}` changed but its version is still {version}: {}; bump #[record(version = ...)] (or undo the change)", .changes.join("; "))]
    SchemaChanged {
        /// Tree name.
        tree: String,
        /// The unchanged version number.
        version: u32,
        /// What changed.
        changes: Vec<String>,
    },
    /// A user migration (`TryFrom` in a `migrate_from` chain) refused a stored record.
    #[error(
        "migrating record {key} in tree `{tree}` from schema version {from} to {to} failed: {reason}"
    )]
    Migration {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
        /// The version the failing conversion started from.
        from: u32,
        /// The version being read.
        to: u32,
        /// The conversion's error.
        reason: String,
    },
    /// A record stored with another schema version cannot be projected onto the reading type.
    #[error(
        "record {key} in tree `{tree}` (schema version {stored}) cannot be read as version {expected}: at `{path}`: {reason}; give the field a #[record(default)] or add a migration (migrate_from)"
    )]
    Incompatible {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
        /// The version the record was stored with.
        stored: u32,
        /// The version of the reading type.
        expected: u32,
        /// Path of the offending field (`dims.w`, `tags[2]`, ...).
        path: String,
        /// What does not fit.
        reason: String,
    },
    /// A change to a record written by a newer schema version, which this program would
    /// partly destroy (it does not know the newer fields).
    #[error(
        "record {key} in tree `{tree}` was written with schema version {stored}, newer than this program's version {expected}; changing it here could drop fields this program does not know, so it is refused: use the newer program"
    )]
    NewerVersion {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
        /// The version the record was stored with.
        stored: u32,
        /// The version of this program's type.
        expected: u32,
    },
    /// A record names a schema version the database does not have.
    #[error(
        "tree `{tree}` has no stored schema version {version}; the database is damaged or was edited by hand"
    )]
    UnknownSchema {
        /// Tree name.
        tree: String,
        /// The missing version.
        version: u32,
    },
    /// The record was stored with another schema version than the type reading it.
    #[error(
        "record {key} in tree `{tree}` was stored with schema version {stored}, but this code reads version {expected}; schema evolution is needed to read it"
    )]
    SchemaVersion {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
        /// The version stored with the record.
        stored: u32,
        /// The version of the reading type.
        expected: u32,
    },
    /// Stored bytes failed validation.
    #[error("record {key} in tree `{tree}` is corrupt: {reason}")]
    Corrupt {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
        /// What validation found.
        reason: String,
    },
    /// A stored schema could not be parsed.
    #[error("the stored schema of tree `{tree}` version {version} is unreadable: {reason}")]
    CorruptSchema {
        /// Tree name.
        tree: String,
        /// Schema version.
        version: u32,
        /// Parser message.
        reason: String,
    },
    /// A record could not be serialized.
    #[error("cannot encode a record for tree `{tree}`: {reason}")]
    Encode {
        /// Tree name.
        tree: String,
        /// Serializer message.
        reason: String,
    },
    /// A write batch was started on a thread that already has one open on this database.
    #[error(
        "a write batch is already open on this thread (nested writes, or a write from an indexer or an update closure); use the open batch instead"
    )]
    BatchInProgress,
    /// An indexer panicked while its index was being built.
    #[error("the indexer for tree `{tree}` panicked while replaying existing records: {message}")]
    IndexerPanicked {
        /// Tree name.
        tree: String,
        /// The panic message.
        message: String,
    },
    /// In a synced database borrows are granted by the server, not inside a batch.
    #[error(
        "record {key} in tree `{tree}` is not borrowed by this replica; in a synced database the server grants borrows: call Tree::borrow (outside a batch)"
    )]
    BorrowNeedsServer {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
    },
    /// The operation needs the server, which is not reachable now.
    #[error("{what} needs the server, which is not reachable ({reason}); try again when online")]
    Offline {
        /// What needed the server.
        what: &'static str,
        /// Why the server is not reachable.
        reason: String,
    },
    /// The server refused the operation.
    #[error("the server refused {what}: {reason}")]
    Refused {
        /// What was refused.
        what: &'static str,
        /// The server's reason.
        reason: String,
    },
    /// The outbox (local writes the server has not accepted yet) is at its size limit.
    #[error(
        "this write was refused (nothing changed): the outbox already holds {queued} bytes of local writes the server has not accepted, the limit is {limit} (SyncConfig::max_outbox_bytes); reconnect to the server or raise the limit"
    )]
    OutboxFull {
        /// Bytes waiting in the outbox.
        queued: u64,
        /// The limit.
        limit: u64,
    },
    /// A write-through write was committed here and queued, but the server did not confirm
    /// it (no answer in time, or the server refuses this client for now). Unlike
    /// [`Error::Offline`] from a write-through write (nothing was written), the write stands
    /// locally and is sent when the server is reachable again (or reported as
    /// [`crate::SyncEvent::Rejected`] and undone if the server refuses it).
    #[error(
        "the write is committed here and queued, but the server has not confirmed it: {reason}"
    )]
    Unconfirmed {
        /// Why it is not confirmed.
        reason: String,
    },
    /// A write of a synced database too large to ever reach the server: a record over
    /// [`crate::proto::MAX_RECORD`] bytes, or a batch whose changes together exceed what one
    /// request carries ([`crate::proto::MAX_FRAME`] less room for framing). Nothing was
    /// written.
    #[error(
        "this write was refused (nothing changed): {what} is {size} bytes, over the {limit} bytes a synced database can send to its server; split it into smaller records or batches"
    )]
    TooLarge {
        /// What is too large (a record, named by tree and key, or a batch).
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// No longer returned: a synced browser database opened in a second tab of the origin
    /// goes through the tab that syncs it (see `Db::open_browser_synced`). Kept so that
    /// code matching on it still builds.
    #[error(
        "the synced database `{name}` is open in another tab, which syncs it; use it there \
         (or close that tab, and open it here again)"
    )]
    SyncedElsewhere {
        /// The database's name.
        name: String,
    },
    /// A sync operation on a database that is not synced.
    #[error("{what} needs a synced database; open it with Db::open_synced")]
    NotSynced {
        /// The operation.
        what: &'static str,
    },
    /// A server pin (UUID and certificate fingerprint, as `rekord-server identity` prints
    /// them) could not be read.
    #[error(
        "invalid server pin: {reason}; pass the uuid and the fingerprint that `rekord-server identity` prints"
    )]
    InvalidPin {
        /// What is wrong.
        reason: String,
    },
    /// The file was made for the other mode (standalone or synced).
    #[error("the database file is a {found} database; open it with {open_with}")]
    Mode {
        /// The file's mode.
        found: &'static str,
        /// The function that opens it.
        open_with: &'static str,
    },
    /// A write to a database opened with [`crate::Db::open_read_only`].
    #[error("the database is open read-only (Db::open_read_only): it cannot be changed")]
    ReadOnly,
    /// A file that was not closed cleanly cannot be opened read-only: recovering it writes.
    #[error(
        "{path} was not closed cleanly and needs recovery, which writes to it: open it once with Db::open (or Db::open_synced for a replica) to recover it"
    )]
    NeedsRecovery {
        /// The file.
        path: String,
    },
    /// Records cannot be imported into a synced replica (its records come from its
    /// server).
    #[error(
        "cannot import records into a synced replica: import into a standalone database, or write them through the untyped API (create) so the server takes them"
    )]
    ImportIntoReplica,
    /// The records given to [`crate::Db::import`] could not all be read; nothing
    /// was written.
    #[error("import stopped, nothing was written: {reason}")]
    ImportAborted {
        /// Where and why.
        reason: String,
    },
    /// An import met a record that exists already.
    #[error("tree `{tree}` has a record {key} already; import into a database without it")]
    KeyExists {
        /// Tree name.
        tree: String,
        /// The record.
        key: RawKey,
    },
    /// No schema is stored for the tree: no application ever wrote it in this database.
    #[error("the database has no tree `{tree}` (`Db::trees` lists those it has)")]
    NoSuchTree {
        /// Tree name.
        tree: String,
    },
    /// RON text given for a record of the tree is not a valid record of its newest schema;
    /// nothing was written.
    #[error("not a valid record of tree `{tree}` (schema version {version}): {error}")]
    InvalidRon {
        /// Tree name.
        tree: String,
        /// The schema version the text was read with.
        version: u32,
        /// Where and what.
        error: crate::schema::dynamic::RonError,
    },
    /// IndexedDB failed (in the browser). The last flushed state is kept; commits not yet
    /// flushed stay in memory and are retried with the next flush.
    #[error(
        "IndexedDB failed while {operation}: {message}; the last flushed state is kept (retry, or reload the page)"
    )]
    Browser {
        /// What rekord was doing: "opening", "loading", "flushing", "deleting".
        operation: &'static str,
        /// What the browser reported.
        message: String,
    },
    /// The browser refused to store more (IndexedDB quota exceeded). The last flushed state
    /// is kept; the unflushed commits stay in memory and are retried with the next flush.
    #[error(
        "the browser refused to store {bytes} more bytes (storage quota exceeded); the last flushed state is kept: free space (remove records, or other sites' data) or ask for more with navigator.storage.persist()"
    )]
    QuotaExceeded {
        /// Bytes of changed blocks the refused flush carried.
        bytes: usize,
    },
    /// The database stored in the browser is damaged: a block does not match its checksum,
    /// or the blocks do not form the state the commit marker names. Nothing was changed.
    #[error(
        "the database `{name}` stored in this browser is damaged ({source}); nothing was changed: export what the application can still read elsewhere, or delete it (Db::delete_browser) and sync again"
    )]
    StoreDamaged {
        /// The database name given to `Db::open_browser`.
        name: String,
        /// What is wrong.
        source: crate::storage::LoadError,
    },
    /// The database was stored in this browser before, but its IndexedDB storage is gone,
    /// deleted outside rekord: by the browser (Chromium deletes an origin's IndexedDB when
    /// it finds it damaged on start, after being killed while writing for instance; its
    /// log then says "IndexedDB recovering from a corrupted (and deleted) database"), by
    /// other code of the site (`indexedDB.deleteDatabase`), or by clearing the site's
    /// IndexedDB alone. Nothing was opened in its place.
    #[error(
        "the database `{name}` was stored in this browser, but its IndexedDB storage is gone, deleted outside rekord (Chromium deletes a site's IndexedDB it finds damaged on start; or the site's code or its user deleted it); what was stored here is lost: Db::delete_browser acknowledges the loss and the next open starts empty (a synced database then fetches again what the server holds; writes it had not pushed are lost)"
    )]
    StoreLost {
        /// The database name given to `Db::open_browser`.
        name: String,
    },
    /// A dynamic value given for a record of the tree does not fit its newest schema;
    /// nothing was written.
    #[error("not a valid record of tree `{tree}` (schema version {version}): {error}")]
    InvalidValue {
        /// Tree name.
        tree: String,
        /// The schema version the value was checked against.
        version: u32,
        /// Where and what.
        error: crate::schema::dynamic::DynError,
    },
}

fn holder_name_text(name: Option<&str>) -> String {
    name.map(|n| format!(" ({n})")).unwrap_or_default()
}

impl Error {
    /// A storage error met while opening the file at `path`, in rekord's words.
    pub(crate) fn opening(path: &str, source: redb::DatabaseError) -> Error {
        use redb::{DatabaseError as D, StorageError as S};
        let path = path.to_owned();
        match &source {
            D::DatabaseAlreadyOpen | D::LockProtocolMismatch => Error::Locked { path, source },
            D::Storage(S::Corrupted(m)) if m.contains("magic number") => Error::NotRekord {
                path,
                reason: "it is not a redb file (its header is not redb's)".into(),
                source: Some(source),
            },
            D::Storage(S::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData
                    && e.to_string().contains("magic number") =>
            {
                Error::NotRekord {
                    path,
                    reason: "it is not a redb file (its header is not redb's)".into(),
                    source: Some(source),
                }
            }
            D::Storage(S::Corrupted(_)) => Error::Damaged { path, source },
            D::Storage(S::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Error::Damaged { path, source }
            }
            _ => Error::Open { path, source },
        }
    }
}

fn holder_text(holder: u32) -> String {
    match holder {
        0 => " (nobody holds it)".to_string(),
        h => format!(" (replica {h} holds it)"),
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
