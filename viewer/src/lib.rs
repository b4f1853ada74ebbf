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
         through its server (--server ADDR --token TOKEN, with --replica {path} to use this file)"
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
