//! The server's own database, `server.redb`: access tokens, client holder numbers, granted
//! id ranges and borrows.
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

use crate::ServerError;

/// File name of the server database inside the data directory.
pub const DB_FILE: &str = "server.redb";

/// Token hash (hex) -> token record (TOML).
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
/// Token name -> token hash (hex).
const TOKEN_NAMES: TableDefinition<&str, &str> = TableDefinition::new("token_names");
/// Client UUID -> holder number.
const HOLDERS: TableDefinition<u128, u32> = TableDefinition::new("holders");
/// Counters: `next_holder`, `next_id`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (holder number, range start) -> range end (exclusive).
const RANGES: TableDefinition<(u32, u64), u64> = TableDefinition::new("ranges");
/// (tree, record id) -> holder number of the client holding the borrow.
const BORROWS: TableDefinition<(&str, u64), u32> = TableDefinition::new("borrows");

/// The names of every table of `server.redb`, in the order [`Store::backup`] copies them.
pub const TABLES: [&str; 6] = [
    "tokens",
    "token_names",
    "holders",
    "meta",
    "ranges",
    "borrows",
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
}

/// The server database.
#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    path: PathBuf,
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
        std::fs::create_dir_all(data_dir).map_err(|e| ServerError::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let path = data_dir.join(DB_FILE);
        let db = redb::Database::create(&path).map_err(|e| open_error(&path, e))?;
        let txn = db.begin_write()?;
        txn.open_table(TOKENS)?;
        txn.open_table(TOKEN_NAMES)?;
        txn.open_table(HOLDERS)?;
        txn.open_table(META)?;
        txn.open_table(RANGES)?;
        txn.open_table(BORROWS)?;
        txn.commit()?;
        Ok(Self { db, path })
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

    /// Every token's name and permissions, sorted by name.
    pub fn list(&self) -> Result<Vec<TokenInfo>, ServerError> {
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for entry in tokens.iter()? {
            let (_, record) = entry?;
            out.push(decode(record.value())?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// What `token` grants; `None` if it is unknown or revoked.
    pub fn grant(&self, token: &str) -> Result<Option<Grant>, ServerError> {
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(TOKENS)?;
        let Some(record) = tokens.get(hash(token).as_str())? else {
            return Ok(None);
        };
        let info = decode(record.value())?;
        Ok(Some(Grant {
            read: info.read,
            write: info.write,
        }))
    }

    /// The holder number of client `client`, assigned (persistently) on first call.
    pub fn holder(&self, client: [u8; 16]) -> Result<u32, ServerError> {
        let key = u128::from_be_bytes(client);
        {
            let txn = self.db.begin_read()?;
            if let Some(n) = txn.open_table(HOLDERS)?.get(key)? {
                return Ok(n.value());
            }
        }
        let txn = self.db.begin_write()?;
        let n = {
            let mut holders = txn.open_table(HOLDERS)?;
            if let Some(n) = holders.get(key)? {
                n.value()
            } else {
                let mut meta = txn.open_table(META)?;
                let next = meta
                    .get("next_holder")?
                    .map_or(u64::from(FIRST_HOLDER), |g| g.value());
                let n = u32::try_from(next)
                    .map_err(|_| ServerError::Database("every holder number is taken".into()))?;
                meta.insert("next_holder", next + 1)?;
                holders.insert(key, n)?;
                n
            }
        };
        txn.commit()?;
        Ok(n)
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
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut borrows = txn.open_table(BORROWS)?;
            let current = borrows.get((tree, id))?.map(|g| g.value());
            match current {
                Some(h) if h == holder => BorrowOutcome::AlreadyHeld,
                Some(h) => BorrowOutcome::HeldBy(h),
                None => {
                    borrows.insert((tree, id), holder)?;
                    BorrowOutcome::Granted
                }
            }
        };
        if outcome == BorrowOutcome::Granted {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(outcome)
    }

    /// Frees record `id` of `tree` if client `holder` holds it; returns whether it did
    /// (`false`: not held by this client, nothing changed).
    pub fn return_borrow(&self, tree: &str, id: u64, holder: u32) -> Result<bool, ServerError> {
        let txn = self.db.begin_write()?;
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
        if freed {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(freed)
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

/// Copies every table read by `read` into `copy`, in one write transaction.
fn copy_tables(read: &redb::ReadTransaction, copy: &redb::Database) -> Result<(), ServerError> {
    let write = copy.begin_write()?;
    {
        let src = read.open_table(TOKENS)?;
        let mut dst = write.open_table(TOKENS)?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
        let src = read.open_table(TOKEN_NAMES)?;
        let mut dst = write.open_table(TOKEN_NAMES)?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
        let src = read.open_table(HOLDERS)?;
        let mut dst = write.open_table(HOLDERS)?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
        let src = read.open_table(META)?;
        let mut dst = write.open_table(META)?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
        let src = read.open_table(RANGES)?;
        let mut dst = write.open_table(RANGES)?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
        let src = read.open_table(BORROWS)?;
        let mut dst = write.open_table(BORROWS)?;
        for entry in src.iter()? {
            let (k, v) = entry?;
            dst.insert(k.value(), v.value())?;
        }
    }
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
        assert_eq!(store.holder([3; 16]).unwrap(), FIRST_HOLDER + 2);
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

        assert_eq!(store.borrow("t", 5, 2).unwrap(), BorrowOutcome::Granted);
        assert_eq!(store.borrow("t", 5, 2).unwrap(), BorrowOutcome::AlreadyHeld);
        assert_eq!(store.borrow("t", 5, 3).unwrap(), BorrowOutcome::HeldBy(2));
        assert_eq!(store.borrow("u", 5, 3).unwrap(), BorrowOutcome::Granted);
        assert!(!store.return_borrow("t", 5, 3).unwrap());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.borrower("t", 5).unwrap(), Some(2));
        assert!(store.return_borrow("t", 5, 2).unwrap());
        assert_eq!(store.borrower("t", 5).unwrap(), None);
        assert_eq!(store.grant_range(4, 1).unwrap().0, c.1);
    }
}
