//! The server's own database, `server.redb`: access tokens and client holder numbers.
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
/// Counters: `next_holder`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The names of every table of `server.redb`, in the order [`Store::backup`] copies them.
pub const TABLES: [&str; 4] = ["tokens", "token_names", "holders", "meta"];

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
}
