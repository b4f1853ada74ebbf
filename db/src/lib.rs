#![doc = include_str!("../../README.md")]
#![warn(missing_docs)]

// Lets the attribute's generated `::rekord::...` paths resolve inside this crate's own tests.
extern crate self as rekord;

mod db;
mod error;
pub mod event;
pub mod index;
mod key;
pub mod net;
pub mod proto;
mod record;
mod replica;
pub mod rt;
pub mod schema;
pub mod storage;
pub mod sync;
mod tree;

/// Entry points of the fuzz targets (`fuzz/`). Not a public API.
#[cfg(all(feature = "fuzz", not(target_arch = "wasm32")))]
#[doc(hidden)]
pub mod fuzz;

pub use db::{Db, DbOptions, LOCAL_REPLICA};
pub use error::{Error, Result};
pub use event::{Conflict, Event, EventKind, RecordEvent, Subscription, SyncEvent};
pub use index::{Change, Indexer, IndexerStatus};
pub use key::{ArchivedKey, Key, RawKey};
pub use record::{Archived, Record};
pub use rekord_derive::{data, record};
pub use schema::{Describe, Schema};
#[cfg(target_arch = "wasm32")]
pub use storage::browser::{BrowserOptions, BrowserStats, Durability, FlushPolicy};
pub use sync::{Merge, Retry, SyncConfig, SyncDriver, SyncStatus, WriteMode};
pub use tree::batch::{Batch, BatchTree};
pub use tree::dynamic::{
    DynIter, DynKey, DynKeys, DynRecord, DynSnapshot, DynTree, Import, TreeInfo,
};
pub use tree::{
    Iter, MigrateProgress, MigrateReport, MigrateSkipReport, RecordMeta, RecordRef, Snapshot, Tree,
};

/// Re-exports used by the code `#[rekord::record]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::record::{ChainError, from_older_via, same_str};
    pub use rkyv;
    pub use rkyv::rancor;
    pub use serde;
}
