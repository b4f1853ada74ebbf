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

/// What [`Store::borrow`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BorrowOutcome {
    /// Nobody held the record: the asking client holds it now.
    Granted,
    /// The asking client held it already; nothing changed.
    AlreadyHeld,
    /// Another client holds it (its holder number); nothing changed.
    HeldBy(u32),
}

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

/// A token as listed (the token itself is not stored and cannot be listed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    /// The name given at issue (unique).
    pub name: String,
    /// Trees the token may read.
    pub read: Trees,
    /// Trees the token may write.
    pub write: Trees,
    /// The holder numbers of the clients that connected with a token of this name, in
    /// increasing order. Filled by [`Store::list`]; not part of the stored token record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<u32>,
}

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

fn hash(token: &str) -> String {
    rekord::net::fingerprint(token.as_bytes())
}

fn encode(info: &TokenInfo) -> Result<String, ServerError> {
    toml::to_string(info).map_err(|e| ServerError::Database(format!("cannot encode a token: {e}")))
}

fn decode(text: &str) -> Result<TokenInfo, ServerError> {
    toml::from_str(text)
        .map_err(|e| ServerError::Database(format!("a stored token record is corrupt: {e}")))
}

fn open_error(path: &Path, e: redb::DatabaseError) -> ServerError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => ServerError::Busy(path.to_path_buf()),
        e => ServerError::Database(format!("cannot open {}: {e}", path.display())),
    }
}

impl Store {
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
        open_history(&txn, &path)?;
        txn.commit()?;
        Ok(Self {
            db,
            path,
            group_commit: std::sync::atomic::AtomicBool::new(false),
            replicas_per_token: std::sync::atomic::AtomicU32::new(
                crate::Limits::default().replicas_per_token,
            ),
            max_schemas: std::sync::atomic::AtomicU32::new(crate::Limits::default().max_schemas),
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

    /// Issues a new token named `name` (unique) granting `read` and `write`; returns the
    /// token, which is shown once and never stored.
    pub fn issue(&self, name: &str, read: Trees, write: Trees) -> Result<String, ServerError> {
        if name.is_empty() || name.len() > MAX_TOKEN_NAME {
            return Err(ServerError::Token(format!(
                "a token name must be 1 to {MAX_TOKEN_NAME} bytes"
            )));
        }
        // Two v4 UUIDs: 244 bits from the operating system's random number generator.
        let token = format!(
            "rk1_{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let digest = hash(&token);
        let record = encode(&TokenInfo {
            name: name.to_owned(),
            read,
            write,
            holders: Vec::new(),
        })?;
        let txn = self.db.begin_write()?;
        {
            let mut names = txn.open_table(TOKEN_NAMES)?;
            if names.get(name)?.is_some() {
                return Err(ServerError::Token(format!(
                    "a token named `{name}` exists already; revoke it first or choose another name"
                )));
            }
            names.insert(name, digest.as_str())?;
            txn.open_table(TOKENS)?
                .insert(digest.as_str(), record.as_str())?;
        }
        txn.commit()?;
        Ok(token)
    }

    /// Revokes a token, given either the token itself or its name; returns the name.
    pub fn revoke(&self, token_or_name: &str) -> Result<String, ServerError> {
        let txn = self.db.begin_write()?;
        let name = {
            let mut names = txn.open_table(TOKEN_NAMES)?;
            let mut tokens = txn.open_table(TOKENS)?;
            let by_name = names.get(token_or_name)?.map(|g| g.value().to_owned());
            let digest = by_name.unwrap_or_else(|| hash(token_or_name));
            let record = tokens
                .remove(digest.as_str())?
                .map(|g| g.value().to_owned());
            let Some(record) = record else {
                return Err(ServerError::Token(
                    "no token has this name or value (already revoked?)".into(),
                ));
            };
            let info = decode(&record)?;
            names.remove(info.name.as_str())?;
            info.name
        };
        txn.commit()?;
        Ok(name)
    }

    /// Every token's name and permissions, with the holder numbers that connected with it
    /// ([`TokenInfo::holders`]), sorted by name.
    pub fn list(&self) -> Result<Vec<TokenInfo>, ServerError> {
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for entry in tokens.iter()? {
            let (_, record) = entry?;
            out.push(decode(record.value())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in txn.open_table(HOLDER_TOKENS)?.iter()? {
            let (holder, name) = entry?;
            if let Ok(i) = out.binary_search_by(|t| t.name.as_str().cmp(name.value())) {
                // Holder numbers come in increasing order.
                out[i].holders.push(holder.value());
            }
        }
        Ok(out)
    }

    /// The name and permissions of `token`; `None` if it is unknown or revoked.
    pub fn token(&self, token: &str) -> Result<Option<TokenInfo>, ServerError> {
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let Some(record) = tokens.get(hash(token).as_str())? else {
            return Ok(None);
        };
        decode(record.value()).map(Some)
    }

    /// What `token` grants; `None` if it is unknown or revoked.
    pub fn grant(&self, token: &str) -> Result<Option<Grant>, ServerError> {
        Ok(self.token(token)?.map(|info| Grant {
            read: info.read,
            write: info.write,
        }))
    }

    /// The holder number of client `client`, assigned (persistently) on first call.
    pub fn holder(&self, client: [u8; 16]) -> Result<u32, ServerError> {
        self.assign_holder(client, None, 0)?
            .map_err(|_| ServerError::Database("a holder number went missing".into()))
    }

    /// The holder number of client `client`, connecting with the token named `token`:
    /// assigned (persistently) on its first connection, together with the token's name
    /// ([`Store::holder_token`]). A holder keeps the name it first connected with; one
    /// without a name (assigned before the server recorded names) gets `token`'s now.
    pub fn connect(&self, client: [u8; 16], token: &str) -> Result<u32, ServerError> {
        self.assign_holder(client, Some(token), 0)?
            .map_err(|refusal| ServerError::Token(refusal.to_string()))
    }

    /// [`Store::connect`] for a client that says it had holder number `claimed` (0: none)
    /// in an earlier history of this server: a client the restored server does not know
    /// gets its number back when no other client has it (numbers assigned after a backup
    /// are never given to others after a restore, see [`RESTORE_HOLDER_GAP`]), so the
    /// borrows recorded on its replica stay its own.
    ///
    /// A client is bound to the name of the token it first connected with: refused
    /// ([`Refusal::ReplicaOfAnotherToken`]) if `client` is a replica that connected with a
    /// token of another name (its identity is not this token's to use), and
    /// ([`Refusal::TooManyReplicas`]) if it is new and the token has registered
    /// [`crate::Limits::replicas_per_token`] replicas already.
    pub fn connect_claiming(
        &self,
        client: [u8; 16],
        token: &str,
        claimed: u32,
    ) -> Result<Result<u32, Refusal>, ServerError> {
        self.assign_holder(client, Some(token), claimed)
    }

    /// The lineage of this server's history, oldest first, at most the newest
    /// [`HISTORY_SENT`] entries: `(history id, base)`, where each history shares the
    /// changes of the one before it up to sequence number `base`. A restore of a backup
    /// appends an entry (based at the backup's head), so a client that synced with a
    /// history this one does not descend from knows exactly which of its changes the
    /// server lost.
    pub fn history(&self) -> Result<Vec<(u64, u64)>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HISTORY)?;
        let mut out: Vec<(u64, u64)> = table
            .iter()?
            .rev()
            .take(HISTORY_SENT)
            .map(|e| e.map(|(_, v)| v.value()))
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Where `client`'s lineage (as it last heard it) parts from this server's whole
    /// lineage: the last sequence number both share (`None`: the same history, or the
    /// client has none). See [`rekord::proto::diverged`].
    pub fn common_with(&self, client: &[(u64, u64)]) -> Result<Option<u64>, ServerError> {
        if client.is_empty() {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HISTORY)?;
        let all: Vec<(u64, u64)> = table
            .iter()?
            .map(|e| e.map(|(_, v)| v.value()))
            .collect::<Result<_, _>>()?;
        Ok(rekord::proto::diverged(client, &all))
    }

    /// Registers id ranges a client of a lost history held (granted after the backup this
    /// server was restored from) as client `holder`'s again, so its records created with
    /// them are accepted. A range is refused (returned) if it is not one this server can
    /// have granted before (ids from [`FIRST_ID`] below the allocator) or overlaps a range
    /// another client holds; the client then stops using it.
    pub fn reclaim(
        &self,
        holder: u32,
        wanted: &[(u64, u64)],
    ) -> Result<Vec<(u64, u64)>, ServerError> {
        let txn = self.db.begin_write()?;
        let mut refused = Vec::new();
        {
            let next_id = txn
                .open_table(META)?
                .get("next_id")?
                .map_or(FIRST_ID, |g| g.value());
            let mut ranges = txn.open_table(RANGES)?;
            let lost = txn.open_table(LOST_IDS)?;
            for &(start, end) in wanted {
                // A range this history granted the client already: nothing to do.
                let mut known = false;
                for row in ranges.iter()? {
                    let (k, e) = row?;
                    let ((h, s), e) = (k.value(), e.value());
                    if h == holder && s <= start && end <= e {
                        known = true;
                        break;
                    }
                }
                if known {
                    continue;
                }
                // Only ranges a lost history may have granted (ranges of this history are
                // registered already), of a size one grant can have.
                let in_lost = match lost.range(..=start)?.next_back() {
                    Some(entry) => end <= entry?.1.value(),
                    None => false,
                };
                if start < FIRST_ID
                    || end <= start
                    || end > next_id
                    || end - start > MAX_RANGE
                    || !in_lost
                {
                    refused.push((start, end));
                    continue;
                }
                let mut overlaps = false;
                let mut own = false;
                for row in ranges.iter()? {
                    let (k, e) = row?;
                    let ((h, s), e) = (k.value(), e.value());
                    if s < end && start < e {
                        if h == holder && s <= start && end <= e {
                            own = true;
                        } else if h != holder {
                            overlaps = true;
                        }
                    }
                }
                if overlaps {
                    refused.push((start, end));
                } else if !own {
                    ranges.insert((holder, start), end)?;
                }
            }
        }
        txn.commit()?;
        Ok(refused)
    }

    /// The name of the token client `holder` first connected with (`None`: unknown).
    pub fn holder_token(&self, holder: u32) -> Result<Option<String>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HOLDER_TOKENS)?;
        Ok(table.get(holder)?.map(|g| g.value().to_owned()))
    }

    /// The holder number of `client`, assigned if new; refused if it is bound to a token
    /// name other than `token` (checked in the same write transaction that binds it, so
    /// two first hellos with one identity and different tokens cannot both win), or if it
    /// is new and `token` has as many replicas as it may.
    fn assign_holder(
        &self,
        client: [u8; 16],
        token: Option<&str>,
        claimed: u32,
    ) -> Result<Result<u32, Refusal>, ServerError> {
        let key = u128::from_be_bytes(client);
        {
            let txn = self.db.begin_read()?;
            if let Some(n) = txn.open_table(HOLDERS)?.get(key)? {
                let n = n.value();
                match (token, txn.open_table(HOLDER_TOKENS)?.get(n)?) {
                    (None, _) => return Ok(Ok(n)),
                    (Some(t), Some(name)) if name.value() == t => return Ok(Ok(n)),
                    (Some(_), Some(_)) => return Ok(Err(Refusal::ReplicaOfAnotherToken)),
                    (Some(_), None) => {}
                }
            }
        }
        let txn = self.db.begin_write()?;
        let n = {
            let mut holders = txn.open_table(HOLDERS)?;
            if let Some(n) = holders.get(key)? {
                n.value()
            } else {
                if let Some(token) = token {
                    let limit = self
                        .replicas_per_token
                        .load(std::sync::atomic::Ordering::Acquire);
                    let mut count = 0u32;
                    for row in txn.open_table(HOLDER_TOKENS)?.iter()? {
                        if row?.1.value() == token {
                            count += 1;
                        }
                    }
                    if count >= limit {
                        drop(holders);
                        txn.abort()?;
                        return Ok(Err(Refusal::TooManyReplicas { limit }));
                    }
                }
                let mut meta = txn.open_table(META)?;
                let next = meta
                    .get("next_holder")?
                    .map_or(u64::from(FIRST_HOLDER), |g| g.value());
                let free = |n: u32| -> Result<bool, ServerError> {
                    if n < FIRST_HOLDER || u64::from(n) >= next {
                        return Ok(false);
                    }
                    if txn.open_table(HOLDER_TOKENS)?.get(n)?.is_some() {
                        return Ok(false);
                    }
                    for row in holders.iter()? {
                        if row?.1.value() == n {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                };
                if claimed != 0 && free(claimed)? {
                    holders.insert(key, claimed)?;
                    claimed
                } else {
                    let n = u32::try_from(next).map_err(|_| {
                        ServerError::Database("every holder number is taken".into())
                    })?;
                    meta.insert("next_holder", next + 1)?;
                    holders.insert(key, n)?;
                    n
                }
            }
        };
        if let Some(token) = token {
            let taken = {
                let mut names = txn.open_table(HOLDER_TOKENS)?;
                let bound = names.get(n)?.map(|g| g.value().to_owned());
                match bound {
                    None => {
                        names.insert(n, token)?;
                        false
                    }
                    Some(name) => name != token,
                }
            };
            if taken {
                txn.abort()?;
                return Ok(Err(Refusal::ReplicaOfAnotherToken));
            }
        }
        txn.commit()?;
        Ok(Ok(n))
    }

    /// Grants client `holder` a new range of `want` ids, clamped to `1..=`[`MAX_RANGE`],
    /// from the global allocator; returns `(start, end)`, `end` exclusive. The range is
    /// recorded and the allocator advanced in one durable write transaction: no id is ever
    /// granted twice, also across crashes and restarts.
    pub fn grant_range(&self, holder: u32, want: u64) -> Result<(u64, u64), ServerError> {
        let n = want.clamp(1, MAX_RANGE);
        let txn = self.db.begin_write()?;
        let range = {
            let mut meta = txn.open_table(META)?;
            let start = meta.get("next_id")?.map_or(FIRST_ID, |g| g.value());
            let end = start
                .checked_add(n)
                .ok_or_else(|| ServerError::Database("every record id is taken".into()))?;
            meta.insert("next_id", end)?;
            txn.open_table(RANGES)?.insert((holder, start), end)?;
            (start, end)
        };
        txn.commit()?;
        Ok(range)
    }

    /// Every range granted to client `holder`, in id order.
    pub fn ranges(&self, holder: u32) -> Result<Vec<(u64, u64)>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RANGES)?;
        let mut out = Vec::new();
        for entry in table.range((holder, 0)..=(holder, u64::MAX))? {
            let (k, end) = entry?;
            out.push((k.value().1, end.value()));
        }
        Ok(out)
    }

    /// Whether `id` lies in a range granted to client `holder` (for validating creates).
    pub fn owns(&self, holder: u32, id: u64) -> Result<bool, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RANGES)?;
        let last = table.range((holder, 0)..=(holder, id))?.next_back();
        match last {
            Some(entry) => {
                let (_, end) = entry?;
                Ok(id < end.value())
            }
            None => Ok(false),
        }
    }

    /// Makes client `holder` the holder of record `id` of `tree` unless another client
    /// holds it; check and change happen in one durable write transaction.
    pub fn borrow(&self, tree: &str, id: u64, holder: u32) -> Result<BorrowOutcome, ServerError> {
        Ok(self.borrow_logged(tree, id, holder)?.0)
    }

    /// [`Store::borrow`], also returning the log entry a grant wrote (a
    /// [`ChangeKind::Borrow`] change under the next sequence number, in the same
    /// transaction, so borrow changes reach clients in order with the data, also in
    /// catch-up).
    pub fn borrow_logged(
        &self,
        tree: &str,
        id: u64,
        holder: u32,
    ) -> Result<(BorrowOutcome, Option<Sequenced>), ServerError> {
        let txn = self.begin_logged()?;
        let outcome = {
            let mut borrows = txn.open_table(BORROWS)?;
            let current = borrows.get((tree, id))?.map(|g| g.value());
            match current {
                Some(h) if h == holder => BorrowOutcome::AlreadyHeld,
                Some(h) => BorrowOutcome::HeldBy(h),
                // A record that does not exist yet is granted too (a replica re-making a
                // record the server lost after a restore borrows it first). Known issue: a
                // client that may write the tree can so take ids of another client's range
                // before their owner uses them (see the `security_red_team` test).
                None => {
                    borrows.insert((tree, id), holder)?;
                    BorrowOutcome::Granted
                }
            }
        };
        if outcome != BorrowOutcome::Granted {
            txn.abort()?;
            return Ok((outcome, None));
        }
        let entry = log_borrow(&txn, tree, id, holder, holder)?;
        txn.commit()?;
        Ok((outcome, Some(entry)))
    }

    /// Frees record `id` of `tree` if client `holder` holds it; returns whether it did
    /// (`false`: not held by this client, nothing changed).
    pub fn return_borrow(&self, tree: &str, id: u64, holder: u32) -> Result<bool, ServerError> {
        Ok(self.return_logged(tree, id, holder)?.is_some())
    }

    /// [`Store::return_borrow`], returning the log entry of the return (`None`: nothing
    /// changed).
    pub fn return_logged(
        &self,
        tree: &str,
        id: u64,
        holder: u32,
    ) -> Result<Option<Sequenced>, ServerError> {
        let txn = self.begin_logged()?;
        let freed = {
            let mut borrows = txn.open_table(BORROWS)?;
            let current = borrows.get((tree, id))?.map(|g| g.value());
            if current == Some(holder) {
                borrows.remove((tree, id))?;
                true
            } else {
                false
            }
        };
        if !freed {
            txn.abort()?;
            return Ok(None);
        }
        let entry = log_borrow(&txn, tree, id, 0, holder)?;
        txn.commit()?;
        Ok(Some(entry))
    }

    /// Frees record `id` of `tree` whoever holds it (an administrator's forced return),
    /// logging a [`ChangeKind::Borrow`] change with origin 0 (the server). Returns the
    /// holder it was taken from and the log entry; `None` if nobody held it. The former
    /// holder's later changes to the record are refused ([`RemoteError::NotBorrowed`]) like
    /// any change without the borrow; its client keeps them aside and reports them.
    pub fn force_return(
        &self,
        tree: &str,
        id: u64,
    ) -> Result<Option<(u32, Sequenced)>, ServerError> {
        let txn = self.begin_logged()?;
        let held = txn
            .open_table(BORROWS)?
            .remove((tree, id))?
            .map(|g| g.value());
        let Some(holder) = held else {
            txn.abort()?;
            return Ok(None);
        };
        let entry = log_borrow(&txn, tree, id, 0, 0)?;
        txn.commit()?;
        Ok(Some((holder, entry)))
    }

    /// The server's state of record `id` of `tree`: its borrow holder (0: nobody) and its
    /// existing (not removed) revisions, oldest first.
    pub fn fetch(&self, tree: &str, id: u64) -> Result<(u32, Vec<Revision>), ServerError> {
        let txn = self.db.begin_read()?;
        let holder = txn
            .open_table(BORROWS)?
            .get((tree, id))?
            .map_or(0, |g| g.value());
        let records = txn.open_table(RECORDS)?;
        let mut revisions = Vec::new();
        for row in records.range((tree, id, 0)..=(tree, id, u32::MAX))? {
            let (k, v) = row?;
            let state = RecordState::decode(v.value())?;
            if state.exists {
                revisions.push(Revision {
                    rev: k.value().2,
                    version: state.version,
                    released: state.released,
                    state: state.state,
                    data: state.data,
                    changed: state.seq,
                    by: state.origin,
                });
            }
        }
        Ok((holder, revisions))
    }

    /// The holder number of the client holding record `id` of `tree`, if any.
    pub fn borrower(&self, tree: &str, id: u64) -> Result<Option<u32>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BORROWS)?;
        Ok(table.get((tree, id))?.map(|g| g.value()))
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

/// The server's state of one revision of one record (table `records`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    /// `false` once the revision is removed (the row stays, so the revision is never
    /// recreated).
    pub exists: bool,
    /// Whether the revision is released (its data is final; only its state may change).
    pub released: bool,
    /// The released revision's state ([`ChangeKind::SetState`]; 0 until set).
    pub state: u32,
    /// Schema version of `data`.
    pub version: u32,
    /// The record bytes (empty once removed).
    pub data: Vec<u8>,
    /// Sequence number of the last data change (`Put` or `Edit`; 0: none recorded).
    pub seq: u64,
    /// Holder number of the client that made it.
    pub origin: u32,
    /// Sequence number of the last data change by a client other than `origin` (0: none):
    /// `origin` may keep editing on top of it without a conflict.
    pub before: u64,
    /// Hybrid logical clock timestamp of the last data change (0: a `Put`).
    pub hlc: u64,
}

/// Flags byte, state, version.
const RECORD_HEADER: usize = 9;
/// Flag: the state carries the data change tracking (`seq`, `origin`, `before`, `hlc`).
const TRACKED: u8 = 4;

impl RecordState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + 28 + self.data.len());
        out.push(u8::from(self.exists) | (u8::from(self.released) << 1) | TRACKED);
        out.extend_from_slice(&self.state.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.origin.to_le_bytes());
        out.extend_from_slice(&self.before.to_le_bytes());
        out.extend_from_slice(&self.hlc.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, ServerError> {
        let corrupt = || ServerError::Database("a stored record state is corrupt".into());
        let (&flags, rest) = bytes.split_first().ok_or_else(corrupt)?;
        let (state, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let (version, mut data) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let mut tracked = (0, 0, 0, 0);
        if flags & TRACKED != 0 {
            let (seq, rest) = data.split_first_chunk::<8>().ok_or_else(corrupt)?;
            let (origin, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
            let (before, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
            let (hlc, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
            tracked = (
                u64::from_le_bytes(*seq),
                u32::from_le_bytes(*origin),
                u64::from_le_bytes(*before),
                u64::from_le_bytes(*hlc),
            );
            data = rest;
        }
        Ok(Self {
            exists: flags & 1 != 0,
            released: flags & 2 != 0,
            state: u32::from_le_bytes(*state),
            version: u32::from_le_bytes(*version),
            data: data.to_vec(),
            seq: tracked.0,
            origin: tracked.1,
            before: tracked.2,
            hlc: tracked.3,
        })
    }

    /// Records a data change by `origin` under sequence number `seq`.
    fn changed(&mut self, origin: u32, seq: u64, hlc: u64) {
        if self.origin != origin {
            self.before = self.seq;
            self.origin = origin;
        }
        self.seq = seq;
        self.hlc = hlc;
    }

    /// Whether an edit by `origin` based on sequence number `base` sees every change of
    /// other clients (no conflict).
    fn edit_fits(&self, origin: u32, base: u64) -> bool {
        self.seq <= base || (self.origin == origin && self.before <= base)
    }
}

/// What [`Store::apply_changes`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The batch was applied (durably) under these sequence numbers.
    Accepted {
        /// The sequence number of the batch's last change (the head for an empty batch).
        seq: u64,
        /// The accepted changes, in sequence order.
        entries: Vec<Sequenced>,
        /// Records created by the batch, whose borrow the client now holds: `(tree, id)`.
        borrows: Vec<(String, u64)>,
    },
    /// The operation was accepted before; nothing was applied again.
    Retried {
        /// The sequence number answered the first time.
        seq: u64,
    },
    /// The batch was refused (nothing applied) for this reason.
    Rejected(RemoteError),
}

fn wire_error(e: rekord::proto::WireError) -> ServerError {
    ServerError::Database(format!("a stored log entry is corrupt: {e}"))
}

/// The last sequence number in the log (0: empty).
fn head_of(log: &impl redb::ReadableTable<u64, &'static [u8]>) -> Result<u64, ServerError> {
    Ok(log.last()?.map_or(0, |(k, _)| k.value()))
}

impl Store {
    /// Stores the schema (RON text) of `tree` at `version`. The text must parse as a
    /// [`rekord::Schema`] naming the same tree and version; the same schema again is fine,
    /// a different one for an existing `(tree, version)` is refused (the outer `Ok` holds
    /// the refusal).
    pub fn put_schema(
        &self,
        tree: &str,
        version: u32,
        ron: &str,
    ) -> Result<Result<(), RemoteError>, ServerError> {
        let schema = match rekord::Schema::from_ron(ron) {
            Ok(schema) => schema,
            Err(e) => {
                return Ok(Err(RemoteError::Invalid(format!(
                    "the schema of tree `{tree}` version {version} is not valid RON: {e}"
                ))));
            }
        };
        if schema.tree != tree || schema.version != version {
            return Ok(Err(RemoteError::Invalid(format!(
                "the schema describes tree `{}` version {}, not tree `{tree}` version {version}",
                schema.tree, schema.version
            ))));
        }
        let txn = self.db.begin_write()?;
        {
            let mut schemas = txn.open_table(SCHEMAS)?;
            let existing = schemas.get((tree, version))?.map(|g| g.value().to_owned());
            let limit = self.max_schemas.load(std::sync::atomic::Ordering::Acquire);
            if existing.is_none() && redb::ReadableTableMetadata::len(&schemas)? >= u64::from(limit)
            {
                return Ok(Err(RemoteError::Invalid(format!(
                    "the server stores {limit} schemas, as many as it may \
                     (limits.max_schemas); ask its administrator"
                ))));
            }
            if let Some(existing) = existing {
                let same =
                    rekord::Schema::from_ron(&existing).is_ok_and(|old| old.same_shape(&schema));
                return Ok(if same {
                    Ok(())
                } else {
                    Err(RemoteError::Invalid(format!(
                        "tree `{tree}` has a different schema for version {version} already; \
                         a schema version never changes, use a new version"
                    )))
                });
            }
            schemas.insert((tree, version), ron)?;
        }
        txn.commit()?;
        Ok(Ok(()))
    }

    /// The stored schema (RON text) of `tree` at `version`.
    pub fn schema(&self, tree: &str, version: u32) -> Result<Option<String>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SCHEMAS)?;
        Ok(table.get((tree, version))?.map(|g| g.value().to_owned()))
    }

    /// The server's state of revision `rev` of record `id` of `tree`.
    pub fn record(
        &self,
        tree: &str,
        id: u64,
        rev: u32,
    ) -> Result<Option<RecordState>, ServerError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        table
            .get((tree, id, rev))?
            .map(|g| RecordState::decode(g.value()))
            .transpose()
    }

    /// The latest sequence number (0: nothing accepted yet).
    pub fn head(&self) -> Result<u64, ServerError> {
        let txn = self.db.begin_read()?;
        head_of(&txn.open_table(LOG)?)
    }

    /// Logged changes with a sequence number above `after`, in order: at most `max` of them
    /// and, beyond the first, about `max_bytes` of record data in total.
    pub fn log_after(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Sequenced>, ServerError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let Some(from) = after.checked_add(1) else {
            return Ok(out);
        };
        for entry in log.range(from..)? {
            let (_, value) = entry?;
            let len = value.value().len();
            if out.len() >= max || (!out.is_empty() && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            out.push(rekord::proto::decode_sequenced(value.value()).map_err(wire_error)?);
        }
        Ok(out)
    }

    /// Applies the changes of operation `op` of client `holder` (whose token grants
    /// `grant`): all or nothing, in one durable write transaction, each accepted change
    /// logged under the next sequence number. A retried `op` is answered with its first
    /// sequence number and applies nothing. The rules are those of the crate
    /// documentation (section "Changes").
    pub fn apply_changes(
        &self,
        holder: u32,
        grant: &Grant,
        op: [u8; 16],
        changes: Vec<Change>,
    ) -> Result<Applied, ServerError> {
        let op_key = (holder, u128::from_be_bytes(op));
        let txn = self.begin_logged()?;
        {
            let ops = txn.open_table(OPS)?;
            if let Some(seq) = ops.get(op_key)? {
                return Ok(Applied::Retried { seq: seq.value() });
            }
        }
        let mut seq = head_of(&txn.open_table(LOG)?)?;
        let mut entries = Vec::with_capacity(changes.len());
        let mut created = Vec::new();
        match apply_in(
            &txn,
            holder,
            grant,
            changes,
            &mut seq,
            &mut entries,
            &mut created,
            &mut Parsed::new(),
        )? {
            Err(e) => {
                txn.abort()?;
                Ok(Applied::Rejected(e))
            }
            Ok(()) => {
                txn.open_table(OPS)?.insert(op_key, seq)?;
                txn.commit()?;
                Ok(Applied::Accepted {
                    seq,
                    entries,
                    borrows: created,
                })
            }
        }
    }

    /// The last outbox entry number of client `holder` this server processed (0: none).
    pub fn last_entry(&self, holder: u32) -> Result<u64, ServerError> {
        let txn = self.db.begin_read()?;
        match txn.open_table(ENTRIES) {
            Ok(t) => Ok(t.get(holder)?.map_or(0, |v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies consecutive outbox entries `first, first + 1, ...` of client `holder`, each
    /// all or nothing, in one durable transaction. The server remembers the last entry
    /// number processed per client, and the outcome of each entry the client has not
    /// settled yet: a retry of an entry up to it applies nothing and gets the first answer
    /// again (or [`EntryOutcome::Duplicate`] once forgotten); a refused entry is answered
    /// [`EntryOutcome::Rejected`] and counts as processed (its number is never applied
    /// later), except for a [`RemoteError::Conflict`], after which the client sends the
    /// entry again, merged, under the same number; entries after a refused one are not processed by this call (they are missing
    /// from the answer; the client sends them again). Returns the outcomes, in entry order,
    /// and the accepted changes, in sequence order.
    pub fn apply_entries(
        &self,
        holder: u32,
        grant: &Grant,
        first: u64,
        batch: &[Vec<Change>],
    ) -> Result<(Vec<EntryOutcome>, Vec<Sequenced>), ServerError> {
        let mut limit = batch.len();
        let mut parsed = Parsed::new();
        // The refusal of entry `limit`, found by an earlier round.
        let mut refusal: Option<RemoteError> = None;
        loop {
            let txn = self.begin_logged()?;
            let last = txn
                .open_table(ENTRIES)?
                .get(holder)?
                .map_or(0, |v| v.value());
            let mut seq = head_of(&txn.open_table(LOG)?)?;
            let mut answered = txn.open_table(OUTCOMES)?;
            let mut digests = txn.open_table(DIGESTS)?;
            let mut settled = txn.open_table(SETTLED)?;
            let floor = settled.get(holder)?.map_or(0, |v| v.value());
            // The client settled every entry before `first`.
            if first > floor {
                answered.retain_in((holder, 0)..(holder, first), |_, _| false)?;
                digests.retain_in((holder, 0)..(holder, first), |_, _| false)?;
                settled.insert(holder, first)?;
            }
            drop(settled);
            let mut entries = Vec::new();
            let mut created = Vec::new();
            let mut outcomes = Vec::with_capacity(limit + 1);
            let mut processed = last;
            let mut failed = None;
            for (i, changes) in batch.iter().take(limit).enumerate() {
                let n = first.saturating_add(i as u64);
                if n <= last {
                    // Entries the client settled, or that it numbered other than the entry
                    // answered under that number: another copy of its file sent those.
                    let copied = n < floor
                        || digests
                            .get((holder, n))?
                            .is_some_and(|d| d.value() != entry_digest(changes));
                    outcomes.push(if copied {
                        EntryOutcome::Rejected(RemoteError::Invalid(copied_entry(n)))
                    } else {
                        match answered.get((holder, n))? {
                            Some(o) => decode_outcome(o.value())?,
                            None => EntryOutcome::Duplicate,
                        }
                    });
                    continue;
                }
                match apply_in(
                    &txn,
                    holder,
                    grant,
                    changes.clone(),
                    &mut seq,
                    &mut entries,
                    &mut created,
                    &mut parsed,
                )? {
                    Ok(()) => {
                        let outcome = EntryOutcome::Applied { seq };
                        answered.insert((holder, n), encode_outcome(&outcome)?.as_slice())?;
                        digests.insert((holder, n), entry_digest(changes))?;
                        outcomes.push(outcome);
                        processed = n;
                    }
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            if let Some((i, e)) = failed {
                // The refused entry may have written part of its changes: start over
                // without it (`limit` shrinks every round, so this ends).
                drop((answered, digests));
                txn.abort()?;
                limit = i;
                refusal = Some(e);
                continue;
            }
            if let Some(e) = refusal {
                let n = first.saturating_add(limit as u64);
                if n > last {
                    // A conflict leaves the entry unprocessed: the client merges and sends
                    // it again, under the same number.
                    let conflict = matches!(e, RemoteError::Conflict(_));
                    let outcome = EntryOutcome::Rejected(e);
                    if !conflict {
                        answered.insert((holder, n), encode_outcome(&outcome)?.as_slice())?;
                        if let Some(changes) = batch.get(limit) {
                            digests.insert((holder, n), entry_digest(changes))?;
                        }
                        processed = n;
                    }
                    outcomes.push(outcome);
                    if conflict {
                        // Look ahead: the later entries' conflicts (which no change of this
                        // client can resolve) are reported now, so the client merges them
                        // all before it sends again; the others are skipped.
                        drop(answered);
                        let rest = batch.get(limit + 1..).unwrap_or_default();
                        outcomes.extend(look_ahead(&txn, holder, rest, &mut parsed)?);
                        fit_answer(&mut outcomes);
                        answered = txn.open_table(OUTCOMES)?;
                    }
                } else {
                    outcomes.push(match answered.get((holder, n))? {
                        Some(o) => decode_outcome(o.value())?,
                        None => EntryOutcome::Duplicate,
                    });
                }
            }
            drop((answered, digests));
            txn.open_table(ENTRIES)?.insert(holder, processed)?;
            txn.commit()?;
            return Ok((outcomes, entries));
        }
    }
}

/// A digest of an outbox entry's changes, the same for every send of the entry: the base
/// of an optimistic edit is left out (a replica moves it back after a server restore, and
/// sends the entry again under its number).
fn entry_digest(changes: &[Change]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for c in changes {
        h.update(c.tree.as_bytes());
        h.update(&[0]);
        h.update(&c.id.to_le_bytes());
        h.update(&c.rev.to_le_bytes());
        match &c.kind {
            ChangeKind::Edit {
                hlc, version, data, ..
            } => {
                h.update(&[1]);
                h.update(&hlc.to_le_bytes());
                h.update(&version.to_le_bytes());
                h.update(&(data.len() as u64).to_le_bytes());
                h.update(data);
            }
            ChangeKind::Put { version, data } => {
                h.update(&[2]);
                h.update(&version.to_le_bytes());
                h.update(&(data.len() as u64).to_le_bytes());
                h.update(data);
            }
            ChangeKind::Remove => h.update(&[3]),
            ChangeKind::Release => h.update(&[4]),
            ChangeKind::SetState(s) => {
                h.update(&[5]);
                h.update(&s.to_le_bytes());
            }
            ChangeKind::Borrow { holder } => {
                h.update(&[6]);
                h.update(&holder.to_le_bytes());
            }
        }
    }
    h.finalize()
}

/// Why entry `n` of a client is refused: another copy of its file sent an entry under
/// that number.
fn copied_entry(n: u64) -> String {
    format!(
        "outbox entry {n} of this replica is not the one the server received under that \
         number: another copy of this replica's file (or a newer state of it, if this one was \
         restored from a backup) sent its own changes with the same numbers. This change is \
         refused and undone here; use one file per replica (a viewer or a second process \
         needs a new file of its own, never a copy)"
    )
}

fn encode_outcome(o: &EntryOutcome) -> Result<Vec<u8>, ServerError> {
    rekord::proto::encode_outcome(o)
        .map_err(|e| ServerError::Database(format!("cannot encode an entry outcome: {e}")))
}

fn decode_outcome(bytes: &[u8]) -> Result<EntryOutcome, ServerError> {
    rekord::proto::decode_outcome(bytes)
        .map_err(|e| ServerError::Database(format!("a stored entry outcome is corrupt: {e}")))
}

/// Logs that the borrow of record `id` of `tree` is now `holder`'s (0: nobody), caused by
/// client `origin`.
fn log_borrow(
    txn: &redb::WriteTransaction,
    tree: &str,
    id: u64,
    holder: u32,
    origin: u32,
) -> Result<Sequenced, ServerError> {
    let mut log = txn.open_table(LOG)?;
    let seq = head_of(&log)? + 1;
    let entry = Sequenced {
        seq,
        origin,
        change: Change {
            tree: tree.to_owned(),
            id,
            rev: 0,
            kind: ChangeKind::Borrow { holder },
        },
    };
    let bytes = rekord::proto::encode_sequenced(&entry).map_err(wire_error)?;
    log.insert(seq, bytes.as_slice())?;
    Ok(entry)
}

/// Keeps an answer within one frame: each conflict carries the record's current data (and
/// its base), at most [`rekord::proto::MAX_RECORD`] bytes each; after the first one, a
/// conflict that would take the answer's conflict data past that much again is answered
/// [`EntryOutcome::Skipped`] instead (the client sends it again after merging the others,
/// and hears of its conflict then). Without this, a run of small entries could provoke an
/// answer too large to send, and the client would retry it for ever.
fn fit_answer(outcomes: &mut [EntryOutcome]) {
    let mut bytes = 0usize;
    let mut first = true;
    for o in outcomes.iter_mut() {
        let EntryOutcome::Rejected(RemoteError::Conflict(c)) = o else {
            continue;
        };
        let size = c.data.len() + c.base.as_ref().map_or(0, |(_, d)| d.len());
        if !first && bytes + size > rekord::proto::MAX_RECORD {
            *o = EntryOutcome::Skipped;
            continue;
        }
        first = false;
        bytes += size;
    }
}

/// Outcomes of the entries after a conflicting one: [`RemoteError::Conflict`] for those
/// whose optimistic edits conflict in the current state, [`EntryOutcome::Skipped`] for the
/// others (nothing is applied).
fn look_ahead(
    txn: &redb::WriteTransaction,
    holder: u32,
    batch: &[Vec<Change>],
    parsed: &mut Parsed,
) -> Result<Vec<EntryOutcome>, ServerError> {
    let log = txn.open_table(LOG)?;
    let mut records = txn.open_table(RECORDS)?;
    let mut borrows = txn.open_table(BORROWS)?;
    let schemas = txn.open_table(SCHEMAS)?;
    let ranges = txn.open_table(RANGES)?;
    let holder_tokens = txn.open_table(HOLDER_TOKENS)?;
    let lost_ids = txn.open_table(LOST_IDS)?;
    let tables = Tables {
        log: &log,
        records: &mut records,
        borrows: &mut borrows,
        schemas: &schemas,
        ranges: &ranges,
        holder_tokens: &holder_tokens,
        parsed,
        lost_ids: &lost_ids,
    };
    batch
        .iter()
        .map(|changes| {
            Ok(match tables.first_conflict(holder, changes)? {
                Some(e) => EntryOutcome::Rejected(e),
                None => EntryOutcome::Skipped,
            })
        })
        .collect()
}

/// Schemas parsed during one request, by (tree, version) (parsing RON costs more than
/// checking a record).
type Parsed = std::collections::HashMap<(String, u32), rekord::Schema>;

/// Checks and applies `changes` in `txn`, logging each under the next sequence number
/// (`seq` is the last one used); the outer error is a storage failure, the inner one the
/// first refusal (after which `txn` holds partial writes and must be aborted).
// The accumulators are the caller's state across the entries of one request.
#[allow(clippy::too_many_arguments)]
fn apply_in(
    txn: &redb::WriteTransaction,
    holder: u32,
    grant: &Grant,
    changes: Vec<Change>,
    seq: &mut u64,
    entries: &mut Vec<Sequenced>,
    created: &mut Vec<(String, u64)>,
    parsed: &mut Parsed,
) -> Result<Result<(), RemoteError>, ServerError> {
    let mut log = txn.open_table(LOG)?;
    let mut records = txn.open_table(RECORDS)?;
    let mut borrows = txn.open_table(BORROWS)?;
    let schemas = txn.open_table(SCHEMAS)?;
    let ranges = txn.open_table(RANGES)?;
    let holder_tokens = txn.open_table(HOLDER_TOKENS)?;
    let lost_ids = txn.open_table(LOST_IDS)?;
    for change in changes {
        let mut tables = Tables {
            log: &log,
            records: &mut records,
            borrows: &mut borrows,
            schemas: &schemas,
            ranges: &ranges,
            holder_tokens: &holder_tokens,
            parsed,
            lost_ids: &lost_ids,
        };
        match tables.apply(holder, grant, &change, *seq + 1)? {
            Ok(effect) => {
                let change = match effect {
                    Effect::Nothing => continue,
                    Effect::Born => {
                        created.push((change.tree.clone(), change.id));
                        change
                    }
                    // A return is logged like the server's own borrow changes (revision 0).
                    Effect::Logged if matches!(change.kind, ChangeKind::Borrow { .. }) => {
                        Change { rev: 0, ..change }
                    }
                    Effect::Logged => change,
                };
                *seq += 1;
                let entry = Sequenced {
                    seq: *seq,
                    origin: holder,
                    change,
                };
                let bytes = rekord::proto::encode_sequenced(&entry).map_err(wire_error)?;
                log.insert(*seq, bytes.as_slice())?;
                entries.push(entry);
            }
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(()))
}

/// What applying one accepted change did.
enum Effect {
    /// Changed and logged.
    Logged,
    /// Created a record whose borrow the client now holds (logged).
    Born,
    /// Nothing to change (a return of a record the client no longer holds): not logged.
    Nothing,
}

/// The tables one change is checked against and applied to.
struct Tables<'a, 't> {
    log: &'a redb::Table<'t, u64, &'static [u8]>,
    records: &'a mut redb::Table<'t, (&'static str, u64, u32), &'static [u8]>,
    borrows: &'a mut redb::Table<'t, (&'static str, u64), u32>,
    schemas: &'a redb::Table<'t, (&'static str, u32), &'static str>,
    ranges: &'a redb::Table<'t, (u32, u64), u64>,
    holder_tokens: &'a redb::Table<'t, u32, &'static str>,
    parsed: &'a mut std::collections::HashMap<(String, u32), rekord::Schema>,
    lost_ids: &'a redb::Table<'t, u64, u64>,
}

impl Tables<'_, '_> {
    /// The refusal of a change to a record client `holder` has borrowed, naming its token.
    fn held_by(&self, holder: u32) -> Result<RemoteError, ServerError> {
        let name = self
            .holder_tokens
            .get(holder)?
            .map(|g| g.value().to_owned());
        Ok(RemoteError::AlreadyBorrowed { holder, name })
    }

    fn state(&self, tree: &str, id: u64, rev: u32) -> Result<Option<RecordState>, ServerError> {
        self.records
            .get((tree, id, rev))?
            .map(|g| RecordState::decode(g.value()))
            .transpose()
    }

    fn known_id(&self, tree: &str, id: u64) -> Result<bool, ServerError> {
        Ok(self
            .records
            .range((tree, id, 0)..=(tree, id, u32::MAX))?
            .next()
            .is_some())
    }

    /// Whether `id` is one some client may have made a record with: granted to any client,
    /// or where an earlier history of this server may have granted ids this one does not
    /// know of (`lost_ids`). A record with such an id, re-made by the replica that holds
    /// its borrow (reconciling after a restore: the record's creator may not be back yet),
    /// is accepted whoever's range it came from.
    fn lost_id(&self, id: u64) -> Result<bool, ServerError> {
        if let Some(entry) = self.lost_ids.range(..=id)?.next_back()
            && id < entry?.1.value()
        {
            return Ok(true);
        }
        // Or in another client's range: that client made it in the lost history, and the
        // replica re-making it borrowed it from that client later.
        for row in self.ranges.iter()? {
            let (k, end) = row?;
            let (_, start) = k.value();
            if start <= id && id < end.value() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn owns(&self, holder: u32, id: u64) -> Result<bool, ServerError> {
        match self.ranges.range((holder, 0)..=(holder, id))?.next_back() {
            Some(entry) => Ok(id < entry?.1.value()),
            None => Ok(false),
        }
    }

    /// Checks `data` against the stored schema `(tree, version)`.
    fn check_data(
        &mut self,
        tree: &str,
        version: u32,
        data: &[u8],
    ) -> Result<Result<(), RemoteError>, ServerError> {
        let key = (tree.to_owned(), version);
        if !self.parsed.contains_key(&key) {
            let Some(text) = self
                .schemas
                .get((tree, version))?
                .map(|g| g.value().to_owned())
            else {
                return Ok(Err(RemoteError::Invalid(format!(
                    "the server has no schema for tree `{tree}` version {version}; \
                     upload the schema first"
                ))));
            };
            let schema = rekord::Schema::from_ron(&text).map_err(|e| {
                ServerError::Database(format!(
                    "the stored schema of tree `{tree}` version {version} is corrupt: {e}"
                ))
            })?;
            self.parsed.insert(key.clone(), schema);
        }
        let Some(schema) = self.parsed.get(&key) else {
            return Err(ServerError::Database("a parsed schema went missing".into()));
        };
        Ok(rekord::schema::dynamic::decode(schema, data)
            .map(|_| ())
            .map_err(|e| {
                RemoteError::Invalid(format!(
                    "the data of a record of tree `{tree}` does not match schema version \
                     {version}: {e}"
                ))
            }))
    }

    /// The data revision `rev` of record `id` of `tree` had as of sequence number `seq` (the
    /// base of a three-way merge): the last data change of it logged at or before `seq`,
    /// looked for among at most [`BASE_LOOKBACK`] log entries (`None` when not found, or
    /// when the record's last change before `seq` was not a data change).
    fn logged_data(
        &self,
        seq: u64,
        tree: &str,
        id: u64,
        rev: u32,
    ) -> Result<Option<(u32, Vec<u8>)>, ServerError> {
        if seq == 0 {
            return Ok(None);
        }
        for row in self.log.range(..=seq)?.rev().take(BASE_LOOKBACK) {
            let (_, bytes) = row?;
            let entry = rekord::proto::decode_sequenced(bytes.value()).map_err(wire_error)?;
            let c = entry.change;
            if c.tree != tree || c.id != id {
                continue;
            }
            match c.kind {
                ChangeKind::Put { version, data } | ChangeKind::Edit { version, data, .. }
                    if c.rev == rev =>
                {
                    return Ok(Some((version, data)));
                }
                // Borrows, releases and states leave the data as it was.
                ChangeKind::Borrow { .. } | ChangeKind::Release | ChangeKind::SetState(_) => {}
                ChangeKind::Remove if c.rev == rev => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The conflict an optimistic edit by `holder` meets, given the revision's `state`:
    /// another client changed it after the edit's base (`None`: no conflict, or not an
    /// edit of an existing draft).
    fn conflict(
        &self,
        holder: u32,
        change: &Change,
        state: Option<&RecordState>,
    ) -> Result<Option<RemoteError>, ServerError> {
        let ChangeKind::Edit { base, .. } = change.kind else {
            return Ok(None);
        };
        let Some(state) = state.filter(|s| s.exists && !s.released) else {
            return Ok(None);
        };
        if state.edit_fits(holder, base) {
            return Ok(None);
        }
        let (tree, id, rev) = (change.tree.as_str(), change.id, change.rev);
        // Base data and current data must fit in one frame together.
        let base = self
            .logged_data(base, tree, id, rev)?
            .filter(|(_, b)| b.len() + state.data.len() <= rekord::proto::MAX_RECORD);
        Ok(Some(RemoteError::Conflict(Box::new(
            rekord::proto::Current {
                tree: tree.to_owned(),
                id,
                rev,
                seq: state.seq,
                origin: state.origin,
                hlc: state.hlc,
                version: state.version,
                data: state.data.clone(),
                base,
            },
        ))))
    }

    /// The first conflict any optimistic edit of `changes` meets in the current state (a
    /// look ahead after an earlier entry conflicted: nothing is applied).
    fn first_conflict(
        &self,
        holder: u32,
        changes: &[Change],
    ) -> Result<Option<RemoteError>, ServerError> {
        for c in changes {
            if !matches!(c.kind, ChangeKind::Edit { .. }) {
                continue;
            }
            if self
                .borrows
                .get((c.tree.as_str(), c.id))?
                .is_some_and(|g| g.value() != holder)
            {
                continue;
            }
            let state = self.state(&c.tree, c.id, c.rev)?;
            if let Some(conflict) = self.conflict(holder, c, state.as_ref())? {
                return Ok(Some(conflict));
            }
        }
        Ok(None)
    }

    /// Checks and applies one change, which gets sequence number `seq` if it is logged.
    fn apply(
        &mut self,
        holder: u32,
        grant: &Grant,
        change: &Change,
        seq: u64,
    ) -> Result<Result<Effect, RemoteError>, ServerError> {
        let Change {
            tree,
            id,
            rev,
            kind,
        } = change;
        let (tree, id, rev) = (tree.as_str(), *id, *rev);
        if let ChangeKind::Borrow { holder: to } = kind
            && *to != 0
        {
            return Ok(Err(RemoteError::Invalid(
                "borrows are granted by the server; ask with Request::Borrow".into(),
            )));
        }
        if !grant.write.allows(tree) {
            return Ok(Err(RemoteError::NotAllowed {
                tree: tree.to_owned(),
            }));
        }
        let borrower = self.borrows.get((tree, id))?.map(|g| g.value());
        if let ChangeKind::Borrow { .. } = kind {
            // A return (an outbox entry of its own, numbered like changes: a resent one is
            // answered with its first outcome and never frees a later borrow). Returning
            // what this client does not hold (taken back by an administrator) changes
            // nothing.
            if borrower != Some(holder) {
                return Ok(Ok(Effect::Nothing));
            }
            self.borrows.remove((tree, id))?;
            return Ok(Ok(Effect::Logged));
        }
        let current = self.state(tree, id, rev)?;
        let creates = current.is_none() && rev == 0 && !self.known_id(tree, id)?;
        if creates {
            let (version, data, hlc, optimistic) = match kind {
                ChangeKind::Put { version, data } => (*version, data, 0, false),
                ChangeKind::Edit {
                    version, data, hlc, ..
                } => (*version, data, *hlc, true),
                _ => return Ok(Err(RemoteError::NotFound)),
            };
            // Re-made after a restore: by its borrower, or as an optimistic edit (which
            // takes no borrow; replicas re-making it at once meet as a conflict, merged).
            let remade = (borrower == Some(holder) || (optimistic && borrower.is_none()))
                && self.lost_id(id)?;
            if !remade && !self.owns(holder, id)? {
                return Ok(Err(RemoteError::OutsideRange { id }));
            }
            if let Some(other) = borrower.filter(|h| *h != holder) {
                return Ok(Err(self.held_by(other)?));
            }
            if let Err(e) = self.check_data(tree, version, data)? {
                return Ok(Err(e));
            }
            let mut state = RecordState {
                exists: true,
                released: false,
                state: 0,
                version,
                data: data.clone(),
                seq: 0,
                origin: 0,
                before: 0,
                hlc: 0,
            };
            state.changed(holder, seq, hlc);
            self.records
                .insert((tree, id, rev), state.encode().as_slice())?;
            // An optimistic create gives nobody the borrow.
            let born = borrower.is_none() && !optimistic;
            if born {
                self.borrows.insert((tree, id), holder)?;
                return Ok(Ok(Effect::Born));
            }
            return Ok(Ok(Effect::Logged));
        }
        if let ChangeKind::Edit { .. } = kind {
            if let Some(other) = borrower.filter(|h| *h != holder) {
                return Ok(Err(self.held_by(other)?));
            }
            if !current.as_ref().is_some_and(|s| s.exists) {
                return Ok(Err(RemoteError::NotFound));
            }
            if let Some(conflict) = self.conflict(holder, change, current.as_ref())? {
                return Ok(Err(conflict));
            }
        } else if borrower != Some(holder) {
            return Ok(Err(RemoteError::NotBorrowed));
        }
        let mut state = match current {
            Some(state) if state.exists => state,
            // Never there, or a removed draft revision (its row stays): only a new revision
            // after the latest existing one may be created here. Making a removed draft's
            // number again is what a standalone database does too (drafts are not frozen;
            // released revisions can never be removed).
            _ => {
                let ChangeKind::Put { .. } = kind else {
                    return Ok(Err(RemoteError::NotFound));
                };
                let previous = match rev.checked_sub(1) {
                    Some(p) => self.state(tree, id, p)?,
                    None => None,
                };
                if !previous.is_some_and(|p| p.exists) {
                    return Ok(Err(RemoteError::Invalid(format!(
                        "revision {rev} of record {id} of tree `{tree}` needs revision {} to \
                         exist first",
                        rev.saturating_sub(1)
                    ))));
                }
                RecordState {
                    exists: true,
                    released: false,
                    state: 0,
                    version: 0,
                    data: Vec::new(),
                    seq: 0,
                    origin: 0,
                    before: 0,
                    hlc: 0,
                }
            }
        };
        match kind {
            // Refused at the top of this function.
            ChangeKind::Borrow { .. } => {}
            ChangeKind::Put { version, data } | ChangeKind::Edit { version, data, .. } => {
                if state.released {
                    return Ok(Err(RemoteError::Released));
                }
                if let Err(e) = self.check_data(tree, *version, data)? {
                    return Ok(Err(e));
                }
                let hlc = match kind {
                    ChangeKind::Edit { hlc, .. } => *hlc,
                    _ => 0,
                };
                state.version = *version;
                state.data = data.clone();
                state.changed(holder, seq, hlc);
            }
            ChangeKind::Remove => {
                if state.released {
                    return Ok(Err(RemoteError::Released));
                }
                state.exists = false;
                state.data = Vec::new();
            }
            ChangeKind::Release => {
                if state.released {
                    return Ok(Err(RemoteError::Released));
                }
                state.released = true;
            }
            ChangeKind::SetState(s) => {
                if !state.released {
                    return Ok(Err(RemoteError::Invalid(format!(
                        "revision {rev} of record {id} of tree `{tree}` is not released; only \
                         a released revision has a state"
                    ))));
                }
                state.state = *s;
            }
        }
        self.records
            .insert((tree, id, rev), state.encode().as_slice())?;
        Ok(Ok(Effect::Logged))
    }
}

/// Starts a new history (see [`HISTORY`]) each time the database is opened: its base is
/// the head now, and the id allocator and holder numbers move past anything an earlier
/// history can have handed out after this state. A database file put back from a copy
/// (restored) therefore never continues the history its copy was taken from: clients
/// that synced with that history after the copy see a history that parted from theirs at
/// the copy's head. Opened for the first time after [`Store::backup`] wrote it, the gaps
/// are wider ([`RESTORE_ID_GAP`], [`RESTORE_HOLDER_GAP`]); other openings use
/// [`START_ID_GAP`] and [`START_HOLDER_GAP`] (a file copied by other means and restored is
/// safe while fewer ids and clients were handed out between copy and restore).
fn open_history(txn: &redb::WriteTransaction, path: &Path) -> Result<(), ServerError> {
    let mut history = txn.open_table(HISTORY)?;
    let mut meta = txn.open_table(META)?;
    let restored = meta.remove(RESTORE_PENDING)?.is_some();
    let last = history.last()?.map(|(k, _)| k.value());
    let head = head_of(&txn.open_table(LOG)?)?;
    // Never 0 (0 means "none" to clients).
    let id = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
    let position = last.map_or(0, |l| l + 1);
    history.insert(position, (id, if last.is_some() { head } else { 0 }))?;
    let (id_gap, holder_gap) = if restored {
        (RESTORE_ID_GAP, RESTORE_HOLDER_GAP)
    } else {
        (START_ID_GAP, START_HOLDER_GAP)
    };
    let next_id = meta.get("next_id")?.map(|g| g.value());
    if let Some(next_id) = next_id {
        let end = next_id.saturating_add(id_gap);
        meta.insert("next_id", end)?;
        txn.open_table(LOST_IDS)?.insert(next_id, end)?;
    }
    let next_holder = meta.get("next_holder")?.map(|g| g.value());
    if let Some(next_holder) = next_holder {
        meta.insert(
            "next_holder",
            next_holder
                .saturating_add(holder_gap)
                .min(u64::from(u32::MAX)),
        )?;
    }
    if restored {
        tracing::warn!(
            file = %path.display(),
            head,
            "opened a restored backup: a new history starts after sequence number {head}; \
             clients of the lost history reconcile when they connect"
        );
    }
    Ok(())
}

/// Rewrites the values of the `outcomes` table in the current layout if they are in the
/// layout of protocol version 1 (a server database written before version 2), and records
/// the layout in `meta`.
fn migrate_outcomes(txn: &redb::WriteTransaction) -> Result<(), ServerError> {
    let mut meta = txn.open_table(META)?;
    if meta.get("outcomes_format")?.map(|g| g.value()) == Some(OUTCOMES_FORMAT) {
        return Ok(());
    }
    let mut outcomes = txn.open_table(OUTCOMES)?;
    let mut rows = Vec::new();
    for row in outcomes.iter()? {
        let (k, v) = row?;
        let old = rekord::proto::decode_outcome_v1(v.value()).map_err(|e| {
            ServerError::Database(format!(
                "a stored entry outcome (protocol version 1) is corrupt: {e}"
            ))
        })?;
        rows.push((k.value(), encode_outcome(&old)?));
    }
    for (k, v) in rows {
        outcomes.insert(k, v.as_slice())?;
    }
    meta.insert("outcomes_format", OUTCOMES_FORMAT)?;
    Ok(())
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
