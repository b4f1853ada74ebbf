//! `rekord-viewer`: browse and edit any rekord database as RON text, without the
//! application's code.
//!
//! It opens a database file (read-only unless `--write` is given) or connects to a server as
//! a synced replica (`--server`), and works through rekord's untyped API
//! ([`rekord::Db::trees`], [`rekord::DynTree`]): the same rules, borrows and errors as the
//! application's own code. See `rekord-viewer --help`.

#![warn(missing_docs)]

pub mod cli;
pub mod filter;
pub mod gui;
pub mod render;
pub mod transfer;

use std::path::PathBuf;

impl ViewerError {
    /// What the person at the terminal can do about it, where the database's own words
    /// speak to a program (`call borrow() first`).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ViewerError::Db(rekord::Error::NeedsRecovery { .. }) => {
                Some("with the viewer: run it once with --write, which recovers the file")
            }
            ViewerError::Db(rekord::Error::NotBorrowed { .. }) => Some(
                "with the viewer: `edit` checks a record out and in by itself; `borrow` and \
                 `return` (with --replica FILE on a server) hold it across commands",
            ),
            ViewerError::Db(rekord::Error::SchemaChanged { .. }) => Some(
                "the database holds another schema under this version: the viewer writes \
                 with the newest stored schema only",
            ),
            _ => None,
        }
    }
}

/// What went wrong, in words for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The database said no.
    #[error("{0}")]
    Db(#[from] rekord::Error),
    /// The file is open in another process (redb allows one process per file).
    #[error(
        "{path} is in use by another process (a running application?). Stop it, or connect \
         to its server instead: rekord-viewer --server ADDR --token TOKEN ... (the viewer is then \
         a replica like any other, and edits go through the server's borrows)"
    )]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// A synced replica's file was asked to change: its changes go through its server.
    #[error(
        "{path} is a synced replica: read it as is (without --write), or change the data \
         through its server (--server ADDR --token TOKEN; add --replica {path} to use this very \
         file while its application is stopped, never a copy of it: two copies of one \
         replica would be taken for each other)"
    )]
    Replica {
        /// The file.
        path: PathBuf,
    },
    /// There is no database at the path (the viewer never creates one).
    #[error("{path} does not exist (the viewer opens existing databases only)")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A change was asked of a database opened read-only.
    #[error("the database is open read-only: pass --write to change it")]
    ReadOnly,
    /// The command line is not usable as given.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a file or the terminal failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
