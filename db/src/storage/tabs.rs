//! Every tab, one database: the tabs (and workers) of an origin that open the same
//! database share it.
//!
//! One of them, the **leader**, holds the database's Web Lock and is the only one that writes
//! to IndexedDB (its flusher, see [`super::browser`]). Every other one is a **follower**: it
//! asks the leader for a copy of the database as it is at that moment (the image of its
//! last commit) and for a range of ids of its own, then keeps the copy in step over a
//! `BroadcastChannel` (`rekord:<name>`):
//!
//! - the leader sends every commit (the records it touched, whole: every revision, as
//!   stored) numbered by `seq`, and after every flush the last `seq` it stored;
//! - a follower commits locally (reads and writes stay synchronous, as in the leader) and
//!   sends the commit's records to the leader as a numbered entry; the leader applies it
//!   (once: entries are numbered per tab) and sends it on as one of its commits. A
//!   follower's commit is stored once the leader's commit that carries it is: that is when
//!   [`Db::flush`](crate::Db::flush) returns in the follower;
//! - a record a follower changed whose entry the leader has not sent back yet keeps the
//!   follower's version: the leader applies the entry after whatever it sends meanwhile,
//!   so the entry's version is the one everyone ends with.
//!
//! Every follower also waits for the Web Lock. When the leader goes (closed, or its tab
//! crashed), the browser grants it to one of them, which becomes the leader: it writes its
//! whole copy to IndexedDB as the new stored image (its copy holds every commit the old
//! leader sent, stored or not, and its own entries), announces itself, and the other
//! followers send it every entry the old leader had not sent back. So nothing a tab
//! committed is lost when the leader goes, except by a crash of the tab that made it
//! before it reached the leader; and what a follower's `flush` confirmed is stored.
//!
//! Ids: the leader carves ranges of [`SPAN`] ids for followers from the top of the id
//! space down (`tabs.top` in `rekord.meta`), never granting one twice.
//!
//! A synced database: the leader also runs the sync client, and followers go through it. A
//! follower's entry carries what its commit gives the server ([`SyncPart`]), which the
//! leader queues as its own; follower ids are carved from the leader's server-granted
//! ranges; borrows and the sync status go over the channel. A follower taking over adopts
//! the sync side of the stored image, with what the old leader's commits carried since
//! ([`adopt`]); ARCHITECTURE.md tells the whole of it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Weak};

use js_sys::Uint8Array;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BroadcastChannel, MessageEvent};

use super::blocks::{self, Image};
use super::{Header, META, RANGES, SCHEMAS, id_range, pack, unpack};
use crate::db::{DbInner, read_u64, state_bytes};
use crate::event::EventKind;
use crate::proto::{Change, ChangeKind};
use crate::schema::{Schema, dynamic};
use crate::sync::SyncStatus;
use crate::tree::batch::Batch;
use crate::{Error, RawKey, Result};
use redb::ReadableTable as _;

/// Ids granted to a follower tab when it opens the database.
pub(crate) const SPAN: u64 = 1 << 32;

/// The `rekord.meta` key of the lowest id granted to a follower tab so far.
const TOP: &str = "tabs.top";

/// The `rekord.meta` key of a synced leader's commit count (every commit of the tab that
/// syncs the database adds one): which of two copies of the database is newer, and which
/// commits a copy holds.
const COMMITS: &str = "tabs.commits";

/// The `rekord.meta` keys of the leader that made a copy's last commit: its own commits
/// are numbered from `tabs.own_from`, and it had applied every earlier leader's commit up
/// to `tabs.old` (see [`Msg::Stored`]): which carried commits a stored image holds.
const OWN_FROM: &str = "tabs.own_from";
const OLD: &str = "tabs.old";

/// A synced leader's `rekord.meta` key prefix for the last entry of each tab it applied
/// (`tabs.applied.<tab>`), written in the commit that applies it: a takeover from that image
/// knows which entries it holds (and does not apply the copies other tabs kept again).
const APPLIED: &str = "tabs.applied.";

/// Notes in `txn` (a synced leader's commit) that it applies entry `n` of tab `t`.
fn store_applied(txn: &redb::WriteTransaction, t: u64, n: u64) -> Result<()> {
    let key = format!("{APPLIED}{t}");
    let mut meta = txn.open_table(META)?;
    let last = meta
        .get(key.as_str())?
        .and_then(|v| read_u64(v.value()))
        .unwrap_or(0);
    if n > last {
        meta.insert(key.as_str(), n.to_le_bytes().as_slice())?;
    }
    Ok(())
}

/// How far a tab taking over moves the commit count ([`COMMITS`]) past every count it
/// knows: the old leader's commits it has not heard yet keep theirs, below.
const TAKEOVER_COMMIT_GAP: u64 = 1 << 20;

/// What the copy a tab took over from holds of other leaders' commits.
#[derive(Debug, Clone, Copy, Default)]
struct BaseCover {
    own_from: u64,
    old: u64,
    commits: u64,
}

impl BaseCover {
    /// Whether the copy holds leader commit `seq` (commit count `n`).
    fn holds(&self, seq: u64, n: u64) -> bool {
        seq <= self.old || (seq > self.own_from && n <= self.commits)
    }
}

/// How long a tab waits for a sign of the leader before it tries again (each message of a
/// live leader waits this long again, up to [`WELCOME_MAX_MS`]: a large database takes a
/// while to copy).
const WELCOME_WAIT_MS: f64 = 1000.0;

/// The longest a tab waits for the leader's answer while the leader shows signs of life.
const WELCOME_MAX_MS: f64 = 60_000.0;

/// How many times a tab asks the leader (or tries to become it) before it gives up.
pub(crate) const WELCOME_TRIES: u32 = 10;

/// One record as stored: every revision, `(rev, header and data)`, and the holder number
/// of the replica whose change it was (the origin of its events).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub(crate) struct TabRecord {
    tree: String,
    id: u64,
    revisions: Vec<(u32, Vec<u8>)>,
    origin: u32,
}

/// A stored schema a commit's records need.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub(crate) struct TabSchema {
    tree: String,
    version: u32,
    text: String,
}

/// What one commit changed, as other tabs apply it.
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub(crate) struct Changes {
    records: Vec<TabRecord>,
    schemas: Vec<TabSchema>,
    /// In a synced database: what the commit gives the server.
    sync: Option<SyncPart>,
}

/// The sync side of a synced database's commit, as it goes between tabs.
///
/// A follower's entry carries the outbox changes and returned borrows its commit made
/// (`outbox`, `returns`) and the `rekord.pending` rows of the records it edited
/// optimistically (`pending`, based on what the follower saw); the leader queues them in its
/// own outbox as if it had made the commit. A leader's commit carries the outbox rows it
/// appended (`entries`, as stored, by number), the pending rows it left and its server
/// cursor, which
/// followers keep until the commit is stored: a follower taking over after a crash of the
/// leader queues again the entries of the commits the stored image lacks.
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub(crate) struct SyncPart {
    outbox: Vec<Change>,
    returns: Vec<(String, u64)>,
    pending: Vec<(String, u64, Vec<u8>)>,
    entries: Vec<(u64, Vec<u8>)>,
    cursor: u64,
    /// A leader's commit: its number in the leader's commit count ([`COMMITS`]).
    n: u64,
}

/// The sync side of a follower's copy as the welcome gave it: what a takeover starts from
/// when the stored image is older (the outbox and the other tables of the sync client are
/// never changed in a follower; these are).
#[derive(Debug, Clone, Default)]
struct WelcomeSync {
    commits: u64,
    /// What the welcome copy holds of leader commits (from its `tabs.*` keys).
    cover: BaseCover,
    next: u64,
    meta: Vec<(String, Vec<u8>)>,
    pending: Vec<(String, u64, Vec<u8>)>,
    ranges: Vec<(u64, u64)>,
}

/// What a synced leader tells its followers of its sync client.
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
struct TabStatus {
    online: bool,
    caught_up: bool,
    cursor: u64,
    outbox: u64,
    outbox_bytes: u64,
    processed_entry: u64,
    rejected: u64,
    conflicts: u64,
    last_sync_ms: Option<u64>,
    bytes_sent: u64,
    bytes_received: u64,
    replica: Option<u32>,
    last_error: Option<String>,
    refused: Option<String>,
    refills: u64,
    ids_refused: Option<String>,
    waiting: u64,
}

impl TabStatus {
    fn of(st: &SyncStatus) -> TabStatus {
        TabStatus {
            online: st.online,
            caught_up: st.caught_up,
            cursor: st.cursor,
            outbox: st.outbox,
            outbox_bytes: st.outbox_bytes,
            processed_entry: st.processed_entry,
            rejected: st.rejected,
            conflicts: st.conflicts,
            last_sync_ms: st.last_sync.and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            }),
            bytes_sent: st.bytes_sent,
            bytes_received: st.bytes_received,
            replica: st.replica,
            last_error: st.last_error.clone(),
            refused: st.refused.clone(),
            refills: st.refills,
            ids_refused: st.ids_refused.clone(),
            waiting: st.waiting,
        }
    }

    fn status(&self) -> SyncStatus {
        SyncStatus {
            online: self.online,
            caught_up: self.caught_up,
            cursor: self.cursor,
            outbox: self.outbox,
            outbox_bytes: self.outbox_bytes,
            processed_entry: self.processed_entry,
            rejected: self.rejected,
            conflicts: self.conflicts,
            last_sync: self
                .last_sync_ms
                .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            replica: self.replica,
            last_error: self.last_error.clone(),
            refused: self.refused.clone(),
            refills: self.refills,
            ids_refused: self.ids_refused.clone(),
            waiting: self.waiting,
        }
    }
}

/// A leader's answer to a follower's borrow.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
enum BorrowAnswer {
    Granted,
    AlreadyBorrowed {
        holder: u32,
        holder_name: Option<String>,
    },
    Offline {
        reason: String,
    },
    Refused {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

impl Changes {
    fn keys(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.records.iter().map(|r| (r.tree.clone(), r.id))
    }
}

/// The messages between tabs.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
enum Msg {
    /// A tab opening the database asks the leader for it.
    Hello { tab: u64 },
    /// The leader's answer to `Hello`: the database as of its commit `seq` (`image`, sent
    /// beside the message and filled in only by the tab it welcomes), the ids granted to
    /// the tab, and the entries applied so far per tab.
    Welcome {
        to: u64,
        leader: u64,
        seq: u64,
        image: Vec<u8>,
        range: (u64, u64),
        applied: Vec<(u64, u64)>,
    },
    /// A follower's commit, for the leader.
    Entry { tab: u64, n: u64, changes: Changes },
    /// A commit of the leader (`origin`: the follower entry it applied).
    Commit {
        seq: u64,
        origin: Option<(u64, u64)>,
        changes: Changes,
        /// A commit of an earlier leader (numbered so) that reached this leader after it
        /// took over, applied here with its outbox entries numbered again: followers that
        /// carry that commit drop it (this one carries it now).
        replaces: Option<u64>,
    },
    /// The leader stored its commits up to `seq`: its own (numbered above `own_from`) and
    /// every earlier leader's it applied (up to `old`).
    Stored { seq: u64, own_from: u64, old: u64 },
    /// The leader cannot apply entry `n` of tab `to` (another build of the application with
    /// a different schema).
    Refused { to: u64, n: u64, reason: String },
    /// Tab `tab` became the leader, at commit `seq`.
    Leader { tab: u64, seq: u64 },
    /// A follower waits for its entries to be stored: the leader flushes now.
    Flush,
    /// A synced leader's sync client, as it is now.
    Status { status: TabStatus },
    /// A synced follower asks for the borrow of a record (its request `n`).
    Borrow {
        tab: u64,
        n: u64,
        tree: String,
        id: u64,
        rev: u32,
    },
    /// The leader's answer to request `n` of tab `to` (sent after the commit that holds a
    /// granted borrow).
    Borrowed {
        to: u64,
        n: u64,
        answer: BorrowAnswer,
    },
    /// A synced leader's outbox: every entry below `below` is settled (the server answered
    /// it and the leader acted on the answer), and the next entry will be `next`.
    Settled {
        below: u64,
        next: u64,
        /// Numbers that a leader taking over left free for the old leader's commits it had
        /// not heard (see [`TAKEOVER_ENTRY_GAP`]): `below` says nothing of them, and their
        /// entries were never sent.
        windows: Vec<(u64, u64)>,
    },
    /// A synced follower ran out of ids.
    Ids { tab: u64 },
    /// More ids for tab `to`, carved from the leader's server-granted ranges (and the
    /// replica's holder number, which its records carry).
    Range {
        to: u64,
        range: (u64, u64),
        replica: u32,
    },
    /// A synced leader's sync client reported `event` (a [`crate::SyncEvent`] in RON):
    /// followers deliver it to their subscribers too.
    Sync { event: String },
}

fn encode(msg: &Msg) -> Option<Vec<u8>> {
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(msg, Vec::new()).ok()
}

fn decode(bytes: &[u8]) -> Option<Msg> {
    let archived = rkyv::access::<ArchivedMsg, rkyv::rancor::Error>(bytes).ok()?;
    rkyv::deserialize::<Msg, rkyv::rancor::Error>(archived).ok()
}

/// A follower entry the leader has not stored yet.
struct Unacked {
    n: u64,
    changes: Changes,
    /// The leader commit that carried it, once seen.
    seq: Option<u64>,
}

/// One open database's place among the tabs.
pub(crate) struct Tab {
    name: String,
    id: u64,
    channel: BroadcastChannel,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    inbox: async_channel::Receiver<Msg>,
    /// This tab's own inbox, for messages it hands itself (a follower taking over: the
    /// entries of other tabs it carried, see [`State::others`]).
    requeue: async_channel::Sender<Msg>,
    /// Whether [`run`] holds a message it has not finished with.
    busy: std::cell::Cell<bool>,
    state: RefCell<State>,
    db: RefCell<Weak<DbInner>>,
    /// What the flusher needs when this follower becomes the leader.
    takeover: RefCell<Option<super::browser::Takeover>>,
    /// The image beside the welcome addressed to this tab, as it arrived (read into this
    /// tab's memory once, by [`join`]).
    welcome_image: Rc<RefCell<Option<Uint8Array>>>,
    /// Whether [`join`] took its welcome: a later one (the hello was said again to a new
    /// leader, and both answered) keeps no copy of the database.
    welcomed: Rc<std::cell::Cell<bool>>,
    /// A synced follower: the configuration its sync client starts with when it leads.
    sync: RefCell<Option<crate::SyncConfig>>,
}

#[derive(Default)]
struct State {
    leader: bool,
    /// The last leader commit made (leader) or applied (follower).
    seq: u64,
    /// The last leader commit stored.
    stored: u64,
    /// A leader: its own commits are numbered above this. A follower: the last storing
    /// leader's (see [`Msg::Stored`]).
    own_from: u64,
    /// A leader: every commit of an earlier leader numbered up to this is applied here. A
    /// follower: the last storing leader's.
    old: u64,
    /// Whether a follower ever joined (a leader sends its commits only then).
    followers: bool,
    /// Set while this tab applies another tab's changes (with the entry a leader applies).
    applying: Option<Option<(u64, u64)>>,
    /// This follower's entries not yet stored, oldest first.
    unacked: VecDeque<Unacked>,
    /// A follower: other tabs' entries that no leader applied yet (as far as this tab
    /// heard), by tab and number. A tab that dies right after it wrote (a follower whose
    /// leader is gone, or a tab in the middle of taking over) held its writes only in its
    /// memory and on the channel: the tab taking over after it applies them from here.
    others: std::collections::BTreeMap<(u64, u64), Changes>,
    next_n: u64,
    /// The last entry applied, per tab.
    applied: HashMap<u64, u64>,
    /// The lowest id granted to a follower (the next range ends there).
    top: u64,
    /// `flush` calls waiting for entries up to `n` to be stored.
    waiters: Vec<(u64, async_channel::Sender<Result<()>>)>,
    /// Why this tab's copy can no longer follow the leader.
    broken: Option<String>,
    closed: bool,
    /// Whether the database is synced (the leader runs the sync client).
    synced: bool,
    /// A synced follower: the sync parts of the leader's commits not known to be stored
    /// yet, by commit (what a takeover queues again if the stored image lacks them).
    carried: VecDeque<Carried>,
    /// A synced leader applying an earlier leader's late commit (numbered so).
    replacing: Option<u64>,
    /// A synced database: the entry numbers leaders taking over left free (see
    /// [`Msg::Settled`]).
    windows: Vec<(u64, u64)>,
    /// A leader: entries of other tabs that came ahead of an earlier one of theirs, by tab
    /// and number, with when they came (`Date.now()`).
    early: HashMap<u64, std::collections::BTreeMap<u64, (Changes, f64)>>,
    /// A leader: entries of other tabs it went past after waiting for them (see
    /// [`Gap`]), by tab.
    gaps: HashMap<u64, Gap>,
    /// A synced follower: the sync side of its copy as the welcome gave it (before this tab
    /// changed its ranges and pending rows), which may be newer than the stored image.
    welcome: Option<WelcomeSync>,
    /// A synced follower: the leader's sync status, as last told, and when
    /// (`Date.now()`).
    status: Option<TabStatus>,
    status_at: f64,
    /// A synced follower: borrows waiting for the leader's answer, by request.
    borrows: HashMap<u64, async_channel::Sender<BorrowAnswer>>,
    next_borrow: u64,
    /// A synced follower: the leader's outbox as last told (entries below the first are
    /// settled; the second is the next entry's number). A synced leader: as last told.
    outbox: (u64, u64),
    /// A synced database: the ranges the leader carved for followers, as seen on the
    /// channel (a takeover takes them out of the stored image's ranges, which may predate
    /// them).
    carved: Vec<(u64, u64)>,
    /// A synced tab that took over: the commit count its sync side started from (a former
    /// leader's later commit that arrives after the takeover is applied then).
    adopted: Option<u64>,
    /// A synced tab that took over: what its base held (see [`BaseCover`]).
    adopted_cover: BaseCover,
    /// When a synced follower last asked the leader for ids (`Date.now()`, 0: no question
    /// waits).
    asked_ids: f64,
}

/// Entries of a tab that a leader went past (a later one waited [`EARLY_WAIT_MS`] for them):
/// when one still comes, it is applied but for the records the later ones changed.
#[derive(Debug, Default)]
struct Gap {
    missing: std::collections::BTreeSet<u64>,
    after: HashSet<(String, u64)>,
}

/// The most entry numbers of one tab a leader remembers going past.
const GAP_MAX: u64 = 100_000;

/// A leader commit a synced follower keeps until a store holds it.
#[derive(Debug, Clone)]
struct Carried {
    seq: u64,
    part: SyncPart,
    /// The ids of the records it changed.
    ids: Vec<u64>,
    /// What it changed, when this tab did not apply it: a late commit of an earlier leader
    /// (the tab leading now applies those and sends them on as its own; a takeover applies
    /// those that never came so).
    unapplied: Option<Changes>,
}

impl State {
    /// A follower: whether the last storing leader's image holds commit `q`.
    fn covers(&self, q: u64) -> bool {
        q <= self.stored && (q > self.own_from || q <= self.old)
    }

    /// A follower: leader commits are stored (see [`Msg::Stored`]); what that store holds
    /// is no longer carried, and this tab's entries in it are done.
    fn note_stored(&mut self, seq: u64, own_from: u64, old: u64) {
        if own_from < self.own_from {
            // An earlier leader's store, heard late: a later leader's image replaced it.
            return;
        }
        if own_from > self.own_from {
            (self.own_from, self.old, self.stored) = (own_from, old, seq);
        } else {
            self.stored = self.stored.max(seq);
            self.old = self.old.max(old);
        }
        let carried = std::mem::take(&mut self.carried);
        self.carried = carried
            .into_iter()
            .filter(|c| !self.covers(c.seq))
            .collect();
        let unacked = std::mem::take(&mut self.unacked);
        self.unacked = unacked
            .into_iter()
            .filter(|u| !u.seq.is_some_and(|q| self.covers(q)))
            .collect();
    }
}

thread_local! {
    static TABS: RefCell<HashMap<u64, Rc<Tab>>> = RefCell::new(HashMap::new());
}

fn get(id: u64) -> Option<Rc<Tab>> {
    TABS.with(|t| t.borrow().get(&id).cloned())
}

fn random_id() -> u64 {
    let hi = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let lo = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    (hi << 32 | lo).max(1)
}

fn channel_name(name: &str) -> String {
    super::browser::idb_name(name)
}

fn tab_error(e: &JsValue) -> Error {
    Error::Browser {
        operation: "sharing the database between tabs",
        message: format!("{e:?}"),
    }
}

impl Tab {
    fn new(name: &str) -> Result<Rc<Tab>> {
        let channel = BroadcastChannel::new(&channel_name(name)).map_err(|e| tab_error(&e))?;
        let (tx, inbox) = async_channel::unbounded();
        let requeue = tx.clone();
        let id = random_id();
        let welcome_image = Rc::new(RefCell::new(None));
        let slot = welcome_image.clone();
        let welcomed = Rc::new(std::cell::Cell::new(false));
        let done = welcomed.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            // A message, or `[message, image]` (a welcome: the image is copied into this
            // tab's memory only by the tab it welcomes).
            let data = e.data();
            let (head, image) = match data.dyn_ref::<js_sys::Array>() {
                Some(parts) => (parts.get(0), parts.get(1).dyn_into::<Uint8Array>().ok()),
                None => (data, None),
            };
            let Ok(bytes) = head.dyn_into::<Uint8Array>() else {
                return;
            };
            match decode(&bytes.to_vec()) {
                Some(Msg::Welcome {
                    to,
                    leader,
                    seq,
                    range,
                    applied,
                    ..
                }) => {
                    if to == id && !done.get() {
                        *slot.borrow_mut() = image;
                    }
                    let _ = tx.try_send(Msg::Welcome {
                        to,
                        leader,
                        seq,
                        image: Vec::new(),
                        range,
                        applied,
                    });
                }
                Some(msg) => {
                    let _ = tx.try_send(msg);
                }
                None => {
                    tracing::warn!("rekord: an unreadable message from another tab was ignored")
                }
            }
        });
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        let tab = Rc::new(Tab {
            name: name.to_owned(),
            id,
            channel,
            _on_message: on_message,
            inbox,
            requeue,
            busy: std::cell::Cell::new(false),
            state: RefCell::new(State {
                top: u64::MAX,
                ..State::default()
            }),
            db: RefCell::new(Weak::new()),
            takeover: RefCell::new(None),
            welcome_image,
            welcomed,
            sync: RefCell::new(None),
        });
        TABS.with(|t| t.borrow_mut().insert(tab.id, tab.clone()));
        Ok(tab)
    }

    fn post(&self, msg: &Msg) {
        let Some(bytes) = encode(msg) else {
            tracing::warn!("rekord: a message to other tabs could not be encoded");
            return;
        };
        if let Err(e) = self.channel.post_message(&Uint8Array::from(&bytes[..])) {
            tracing::warn!("rekord: a message to other tabs could not be sent: {e:?}");
        }
    }

    /// Posts `msg` with the committed `image` beside it (`[message, image]`), copied once
    /// from this tab's memory into the message. `false` while a transaction has written to
    /// the image since its last commit (nothing is sent).
    fn post_with_image(&self, msg: &Msg, image: &Image) -> bool {
        let Some(blocks) = image.committed() else {
            return false;
        };
        let Some(bytes) = encode(msg) else {
            tracing::warn!("rekord: a message to other tabs could not be encoded");
            return true;
        };
        let copy = Uint8Array::new_with_length(image.len() as u32);
        let mut at = 0u32;
        for b in blocks {
            copy.subarray(at, at + b.len() as u32).copy_from(b);
            at += b.len() as u32;
        }
        let parts = js_sys::Array::of2(&Uint8Array::from(&bytes[..]), &copy);
        if let Err(e) = self.channel.post_message(&parts) {
            tracing::warn!("rekord: a message to other tabs could not be sent: {e:?}");
        }
        true
    }

    fn db(&self) -> Option<Arc<DbInner>> {
        self.db.borrow().upgrade()
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        self.channel.set_onmessage(None);
        self.channel.close();
    }
}

/// The leader's side of a new database: registered, waiting for [`attach`].
pub(crate) fn lead(name: &str, top: u64) -> Result<u64> {
    let tab = Tab::new(name)?;
    {
        let mut s = tab.state.borrow_mut();
        s.leader = true;
        s.top = top;
        begin_epoch(&mut s);
    }
    Ok(tab.id)
}

/// What a follower got from the leader.
pub(crate) struct Joined {
    pub(crate) tab: u64,
    pub(crate) image: Image,
    pub(crate) range: (u64, u64),
}

/// What [`join`] got.
pub(crate) enum Join {
    /// The leader's copy of the database.
    Joined(Joined),
    /// No answer within a second (the leader may be gone: the caller tries to take the lock
    /// again): the tab that asked, which asks again (its first answer may still come: a
    /// busy leader, or a page slow to hear the channel) until [`forget`] it.
    NoAnswer(u64),
}

/// Asks the leader of `name` for the database, as tab `again` (which asked before and got
/// no answer) or as a new tab.
pub(crate) async fn join(name: &str, again: Option<u64>) -> Result<Join> {
    let tab = match again.and_then(get) {
        Some(tab) => tab,
        None => Tab::new(name)?,
    };
    tab.post(&Msg::Hello { tab: tab.id });
    let start = js_sys::Date::now();
    let mut deadline = start + WELCOME_WAIT_MS;
    loop {
        let left = deadline - js_sys::Date::now();
        if left <= 0.0 {
            return Ok(Join::NoAnswer(tab.id));
        }
        let msg = match super::browser::race(tab.inbox.recv(), super::browser::sleep(left)).await {
            Some(Ok(msg)) => msg,
            None => continue,
            Some(Err(_)) => return Ok(Join::NoAnswer(tab.id)),
        };
        if matches!(
            msg,
            Msg::Commit { .. } | Msg::Stored { .. } | Msg::Welcome { .. } | Msg::Leader { .. }
        ) {
            // A leader is alive (busy, or copying a large database): wait on.
            deadline = (js_sys::Date::now() + WELCOME_WAIT_MS).min(start + WELCOME_MAX_MS);
        }
        let mut s = tab.state.borrow_mut();
        match msg {
            Msg::Welcome {
                to,
                seq,
                image: _,
                range,
                applied,
                ..
            } => {
                s.top = s.top.min(range.0);
                s.carved.push(range);
                if to != tab.id {
                    continue;
                }
                s.seq = seq;
                s.stored = s.stored.min(seq);
                s.applied = applied.into_iter().collect();
                s.followers = true;
                drop(s);
                let copy = tab.welcome_image.borrow_mut().take().unwrap_or_default();
                tab.welcomed.set(true);
                let image = Image::detached(u64::from(copy.length()), |at, out| {
                    copy.subarray(at as u32, at as u32 + out.len() as u32)
                        .copy_to(out)
                })
                .map_err(|e| {
                    forget(tab.id);
                    Error::Browser {
                        operation: "joining the tab that holds the database",
                        message: format!("no memory for a copy of the database: {e}"),
                    }
                })?;
                return Ok(Join::Joined(Joined {
                    tab: tab.id,
                    image,
                    range,
                }));
            }
            // Commits before the welcome are in its image; the rest are applied after it.
            Msg::Commit { .. }
            | Msg::Hello { .. }
            | Msg::Entry { .. }
            | Msg::Refused { .. }
            | Msg::Flush
            | Msg::Status { .. }
            | Msg::Borrow { .. }
            | Msg::Borrowed { .. }
            | Msg::Ids { .. }
            | Msg::Settled { .. }
            | Msg::Range { .. }
            | Msg::Sync { .. } => {}
            Msg::Stored { seq, own_from, old } => s.note_stored(seq, own_from, old),
            // A new leader: the hello may have reached it before it led (and been left
            // unanswered), so it is said again.
            Msg::Leader { .. } => {
                drop(s);
                tab.post(&Msg::Hello { tab: tab.id });
            }
        }
    }
}

/// Forgets tab `id` (its database closed, or its open failed).
pub(crate) fn forget(id: u64) {
    let tab = TABS.with(|t| t.borrow_mut().remove(&id));
    if let Some(tab) = tab {
        let mut s = tab.state.borrow_mut();
        s.closed = true;
        for (_, w) in s.waiters.drain(..) {
            let _ = w.try_send(Err(Error::Browser {
                operation: "flushing",
                message: "the database was closed".into(),
            }));
        }
    }
}

/// Makes follower `tab`'s copy use its own ids: `range` only, from its start (its sync
/// side as the welcome gave it is kept first, for a takeover).
pub(crate) fn use_range(tab: u64, redb: &redb::Database, range: (u64, u64)) -> Result<()> {
    let txn = redb.begin_write()?;
    {
        let mut welcome = WelcomeSync::default();
        for row in txn.open_table(META)?.iter()? {
            let (k, v) = row?;
            let (k, v) = (k.value(), v.value());
            if k.starts_with("sync.") {
                welcome.meta.push((k.to_owned(), v.to_vec()));
            } else if k == COMMITS {
                welcome.commits = read_u64(v).unwrap_or(0);
            } else if k == OWN_FROM {
                welcome.cover.own_from = read_u64(v).unwrap_or(0);
            } else if k == OLD {
                welcome.cover.old = read_u64(v).unwrap_or(0);
            } else if k == "state" {
                welcome.next = read_u64(v).unwrap_or(0);
            }
        }
        for row in txn.open_table(crate::storage::PENDING)?.iter()? {
            let (k, v) = row?;
            let (tree, id) = k.value();
            welcome
                .pending
                .push((tree.to_owned(), id, v.value().to_vec()));
        }
        for row in txn.open_table(RANGES)?.iter()? {
            let (s, e) = row?;
            welcome.ranges.push((s.value(), e.value()));
        }
        welcome.cover.commits = welcome.commits;
        if let Some(tab) = get(tab) {
            tab.state.borrow_mut().welcome = Some(welcome);
        }
    }
    {
        let mut ranges = txn.open_table(RANGES)?;
        ranges.retain(|_, _| false)?;
        if range.0 < range.1 {
            ranges.insert(range.0, range.1)?;
        }
        // A synced follower's optimistic edits are based on what it sees, not on the
        // leader's waiting ones (which the leader keeps count of).
        txn.open_table(crate::storage::PENDING)?
            .retain(|_, _| false)?;
        let mut meta = txn.open_table(META)?;
        let commit = meta
            .get("state")?
            .and_then(|v| v.value().get(8..16).and_then(read_u64))
            .unwrap_or(0);
        meta.insert("state", state_bytes(range.0, commit).as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// The lowest id granted to a follower tab so far, as stored (`u64::MAX`: none).
pub(crate) fn stored_top(redb: &redb::Database) -> Result<u64> {
    let txn = redb::ReadableDatabase::begin_read(redb)?;
    let top = match txn.open_table(META) {
        Ok(meta) => meta.get(TOP)?.and_then(|v| read_u64(v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(top.unwrap_or(u64::MAX))
}

/// Keeps what a follower needs to become the leader.
pub(crate) fn keep_takeover(id: u64, takeover: super::browser::Takeover) {
    if let Some(tab) = get(id) {
        *tab.takeover.borrow_mut() = Some(takeover);
    }
}

/// Starts tab `id`'s work once its database is open: applying other tabs' messages and,
/// for a follower, waiting to become the leader.
pub(crate) fn attach(id: u64, db: &Arc<DbInner>) {
    let Some(tab) = get(id) else {
        return;
    };
    *tab.db.borrow_mut() = Arc::downgrade(db);
    let leader = tab.state.borrow().leader;
    wasm_bindgen_futures::spawn_local(run(id));
    if !leader {
        let name = tab.name.clone();
        wasm_bindgen_futures::spawn_local(async move {
            // The lock comes when every tab before this one in line has let it go.
            let lock = super::browser::WebLock::wait(&name).await;
            match (lock, get(id)) {
                (Ok(lock), Some(tab)) => take_over(tab, lock).await,
                (Err(e), Some(_)) => {
                    tracing::warn!("rekord: this tab cannot wait to lead `{name}`: {e}")
                }
                // Closed meanwhile: the lock is let go at once.
                (_, None) => {}
            }
        });
    }
}

/// Whether a commit of tab `id` is sent to other tabs (a leader with followers; a follower
/// committing its own changes).
pub(crate) fn captures(id: u64) -> bool {
    get(id).is_some_and(|tab| {
        let s = tab.state.borrow();
        if s.leader {
            s.followers
        } else {
            s.applying.is_none()
        }
    })
}

/// The records a batch changed (every revision, as the commit leaves them), the schemas
/// they are written with and, in a synced database, what the commit gives the server
/// (`appended`: the outbox entries it added). Tab `id` commits it.
pub(crate) fn capture(
    id: u64,
    txn: &redb::WriteTransaction,
    core: &crate::tree::batch::Core,
    appended: Option<(u64, u64)>,
    commits: Option<u64>,
) -> Result<Changes> {
    let mut seen = HashSet::new();
    let mut changes = Changes::default();
    let mut versions = HashSet::new();
    for p in &core.pending {
        let Some(state) = core.trees.get(p.tree as usize) else {
            continue;
        };
        if !seen.insert((state.name.clone(), p.key.id)) {
            continue;
        }
        let table = txn.open_table(state.def())?;
        let mut revisions = Vec::new();
        for row in table.range(id_range(p.key.id))? {
            let (k, v) = row?;
            let value = v.value();
            if let Some((h, _)) = Header::parse(value) {
                versions.insert((state.name.clone(), h.version));
            }
            revisions.push((unpack(k.value()).rev, value.to_vec()));
        }
        changes.records.push(TabRecord {
            tree: state.name.to_string(),
            id: p.key.id,
            revisions,
            origin: p.origin,
        });
    }
    let schemas = txn.open_table(SCHEMAS)?;
    for (tree, version) in versions {
        if let Some(text) = schemas.get((&*tree, version))? {
            changes.schemas.push(TabSchema {
                tree: tree.to_string(),
                version,
                text: text.value().to_owned(),
            });
        }
    }
    let Some(tab) = get(id) else {
        return Ok(changes);
    };
    let (leader, synced) = {
        let s = tab.state.borrow();
        (s.leader, s.synced)
    };
    if !synced {
        return Ok(changes);
    }
    // The records the commit edited optimistically (or merged: a leader's rewritten
    // entries): their pending rows go with it.
    let mut edited: Vec<(String, u64)> = Vec::new();
    for c in core.outbox.iter().chain(core.relayed.iter().flatten()) {
        if matches!(c.kind, ChangeKind::Edit { .. }) && !edited.contains(&(c.tree.clone(), c.id)) {
            edited.push((c.tree.clone(), c.id));
        }
    }
    if leader && !core.rewritten.is_empty() {
        for (tree, id) in &seen {
            let key = (tree.to_string(), *id);
            if !edited.contains(&key) {
                edited.push(key);
            }
        }
    }
    let mut part = SyncPart::default();
    {
        let mut pending = txn.open_table(crate::storage::PENDING)?;
        for (tree, id) in &edited {
            let row = pending
                .get((tree.as_str(), *id))?
                .map(|v| v.value().to_vec());
            if let Some(row) = row {
                if !leader {
                    // A follower's rows mean nothing here (the leader keeps the real ones):
                    // each of its entries starts from what the follower sees.
                    pending.remove((tree.as_str(), *id))?;
                }
                part.pending.push((tree.clone(), *id, row));
            }
        }
    }
    if leader {
        let outbox = txn.open_table(crate::storage::OUTBOX)?;
        let mut numbers: Vec<u64> = appended.map(|(a, b)| (a..=b).collect()).unwrap_or_default();
        numbers.extend(core.rewritten.iter().copied());
        numbers.sort_unstable();
        numbers.dedup();
        for n in numbers {
            if let Some(v) = outbox.get(n)? {
                part.entries.push((n, v.value().to_vec()));
            }
        }
        drop(outbox);
        part.cursor = crate::storage::cursor_in(txn)?;
        part.n = commits.unwrap_or(0);
    } else {
        part.outbox.clone_from(&core.outbox);
        part.returns.clone_from(&core.returns);
        // A follower sends nothing itself: its outbox keeps only what the leader had.
        if let Some((first, last)) = appended {
            let mut outbox = txn.open_table(crate::storage::OUTBOX)?;
            for n in first..=last {
                outbox.remove(n)?;
            }
        }
    }
    changes.sync = Some(part);
    Ok(changes)
}

/// A synced leader's outbox: its first entry and the next entry's number.
pub(crate) type OutboxFront = (u64, u64);

/// A commit of tab `id`, a synced leader: counted ([`COMMITS`], in its transaction), with
/// its outbox's first entry and next number when followers follow (for [`outbox_moved`]
/// once it committed).
pub(crate) fn leader_commit(
    id: u64,
    txn: &redb::WriteTransaction,
) -> Result<Option<(u64, Option<OutboxFront>)>> {
    let Some(tab) = get(id) else {
        return Ok(None);
    };
    let followers = {
        let s = tab.state.borrow();
        if !(s.leader && s.synced) {
            return Ok(None);
        }
        s.followers
    };
    let mut meta = txn.open_table(META)?;
    let n = meta
        .get(COMMITS)?
        .and_then(|v| read_u64(v.value()))
        .unwrap_or(0)
        + 1;
    meta.insert(COMMITS, n.to_le_bytes().as_slice())?;
    {
        let s = tab.state.borrow();
        meta.insert(OWN_FROM, s.own_from.to_le_bytes().as_slice())?;
        meta.insert(OLD, s.old.to_le_bytes().as_slice())?;
    }
    if !followers {
        return Ok(Some((n, None)));
    }
    let next = crate::storage::outbox::last_made(&meta)? + 1;
    drop(meta);
    let first = txn
        .open_table(crate::storage::OUTBOX)?
        .first()?
        .map_or(next, |(k, _)| k.value());
    Ok(Some((n, Some((first, next)))))
}

/// A synced leader's commit moved its outbox: followers learn at once which entries are
/// settled (a follower taking over does not send them again).
pub(crate) fn outbox_moved(id: u64, front: (u64, u64)) {
    let Some(tab) = get(id) else {
        return;
    };
    {
        let mut s = tab.state.borrow_mut();
        if s.outbox == front {
            return;
        }
        s.outbox = front;
    }
    let windows = tab.state.borrow().windows.clone();
    tab.post(&Msg::Settled {
        below: front.0,
        next: front.1,
        windows,
    });
}

/// A commit of tab `id` that [`captures`] said to send: a leader sends it as its next
/// commit, a follower as its next entry.
pub(crate) fn committed(id: u64, changes: Changes) {
    let Some(tab) = get(id) else {
        return;
    };
    let mut s = tab.state.borrow_mut();
    if s.leader {
        s.seq += 1;
        let origin = s.applying.flatten();
        let msg = Msg::Commit {
            seq: s.seq,
            origin,
            changes,
            replaces: s.replacing,
        };
        drop(s);
        tab.post(&msg);
    } else {
        s.next_n += 1;
        let n = s.next_n;
        let msg = Msg::Entry {
            tab: tab.id,
            n,
            changes,
        };
        drop(s);
        tab.post(&msg);
        if let Msg::Entry { changes, .. } = msg {
            tab.state.borrow_mut().unacked.push_back(Unacked {
                n,
                changes,
                seq: None,
            });
        }
    }
}

/// Marks tab `id`'s database as synced (before it commits anything) and keeps the
/// configuration a follower's sync client starts with when it leads.
pub(crate) fn set_synced(id: u64, config: &crate::SyncConfig) {
    if let Some(tab) = get(id) {
        tab.state.borrow_mut().synced = true;
        *tab.sync.borrow_mut() = Some(config.clone());
        if tab.state.borrow().leader {
            wasm_bindgen_futures::spawn_local(relay_status(id));
        }
    }
}

/// The configuration of tab `id`'s sync client, if it is a synced follower.
fn follower_config(id: u64) -> Option<crate::SyncConfig> {
    let tab = get(id)?;
    let s = tab.state.borrow();
    if s.leader || !s.synced {
        return None;
    }
    tab.sync.borrow().clone()
}

/// The request timeout of tab `id`, if it is a synced follower (its borrows and id
/// requests wait this long for the leader).
pub(crate) fn follower_timeout(id: u64) -> Option<std::time::Duration> {
    follower_config(id).map(|c| c.timeout)
}

/// Refuses a write in tab `id`, a synced follower, whose `bytes` of outbox entries would
/// take the leading tab's outbox (as last told) over the configured limit: the leading tab
/// would refuse it.
pub(crate) fn follower_room(id: u64, bytes: u64) -> Result<()> {
    let Some(limit) = follower_config(id).and_then(|c| c.max_outbox_bytes) else {
        return Ok(());
    };
    let queued = get(id)
        .and_then(|t| t.state.borrow().status.as_ref().map(|s| s.outbox_bytes))
        .unwrap_or(0);
    if queued.saturating_add(bytes) > limit {
        return Err(Error::OutboxFull { queued, limit });
    }
    Ok(())
}

/// Whether writes to `tree` are write-through in tab `id`, a synced follower.
pub(crate) fn follower_write_through(id: u64, tree: &str) -> bool {
    follower_config(id).is_some_and(|c| {
        let mode = c
            .tree_write_modes
            .iter()
            .find(|(t, _)| t == tree)
            .map_or(c.write_mode, |(_, m)| *m);
        mode == crate::sync::WriteMode::Through
    })
}

/// A synced follower: the leader's sync status as last told (before any: offline, saying
/// why).
pub(crate) fn relayed_status(id: u64) -> Option<SyncStatus> {
    let tab = get(id)?;
    let s = tab.state.borrow();
    if s.leader || !s.synced {
        return None;
    }
    let silent = js_sys::Date::now() - s.status_at;
    Some(match &s.status {
        // The leader tells at least every two seconds: one that stopped is gone (another
        // tab takes over).
        Some(st) if silent > STATUS_STALE_MS => SyncStatus {
            online: false,
            caught_up: false,
            last_error: Some(format!(
                "the tab that syncs the database has not answered for {:.1} s (closed or \
                 crashed: another tab takes over)",
                silent / 1000.0
            )),
            ..st.status()
        },
        Some(st) => st.status(),
        None => SyncStatus {
            last_error: Some(
                "this tab follows the tab that syncs the database, which has not said how its \
                 sync client is yet"
                    .into(),
            ),
            ..SyncStatus::default()
        },
    })
}

/// How long a synced follower taking over waits for the channel to be quiet (the old
/// leader's last messages may come after the lock).
const TAKEOVER_QUIET_MS: f64 = 50.0;

/// The low bits of a leader commit number that count a leader's commits; the high bits are
/// the leader's epoch. A leader numbers its commits from an epoch above every number it has
/// seen and no earlier than its start (in ms since 2020): a tab taking over may not have heard
/// the old leader's last commits yet, and its own must never be taken for those by tabs that
/// did (they skip commits numbered at or below the last they applied).
const EPOCH_BITS: u32 = 23;

/// The first commit number of a leader that has seen numbers up to `seen`.
fn epoch_start(seen: u64) -> u64 {
    const SINCE_2020_MS: f64 = 1_577_836_800_000.0;
    // Below 2^41 ms (the year 2089): shifted, it fits a u64.
    let now = (js_sys::Date::now() - SINCE_2020_MS).clamp(0.0, ((1u64 << 41) - 1) as f64) as u64;
    ((seen >> EPOCH_BITS) + 1).max(now) << EPOCH_BITS
}

/// A tab leads from now on: its commits are numbered in a new epoch.
fn begin_epoch(s: &mut State) {
    s.old = s.seq;
    s.seq = epoch_start(s.seq);
    s.own_from = s.seq;
}

/// How far past every outbox entry number it knows a tab taking over numbers its own
/// entries: the old leader's last commits may not have reached it yet (their entries keep
/// their numbers, below this tab's).
const TAKEOVER_ENTRY_GAP: u64 = 1 << 20;

/// How long a follower trusts the leader's last status.
const STATUS_STALE_MS: f64 = 3000.0;

/// A synced follower ran out of ids: asks the leader for more (again only after a second
/// without an answer).
pub(crate) fn want_ids(id: u64) {
    let Some(tab) = get(id) else {
        return;
    };
    {
        let mut s = tab.state.borrow_mut();
        let now = js_sys::Date::now();
        if s.leader || !s.synced || now - s.asked_ids < 1000.0 {
            return;
        }
        s.asked_ids = now;
    }
    tab.post(&Msg::Ids { tab: id });
}

/// A synced follower borrows through the leader's sync client: waits (at most `timeout`)
/// for its answer. Once granted, this tab's copy shows the borrow (the commit that holds
/// it comes before the answer).
pub(crate) async fn borrow(
    id: u64,
    tree: &str,
    key: RawKey,
    timeout: std::time::Duration,
) -> Result<()> {
    let gone = || Error::Offline {
        what: "borrowing",
        reason: "the database was closed in this tab".into(),
    };
    let Some(tab) = get(id) else {
        return Err(gone());
    };
    let (tx, rx) = async_channel::bounded(1);
    let n = {
        let mut s = tab.state.borrow_mut();
        s.next_borrow += 1;
        let n = s.next_borrow;
        s.borrows.insert(n, tx);
        n
    };
    tab.post(&Msg::Borrow {
        tab: id,
        n,
        tree: tree.to_owned(),
        id: key.id,
        rev: key.rev,
    });
    drop(tab);
    let ms = timeout.as_secs_f64() * 1000.0;
    let answer = super::browser::race(rx.recv(), super::browser::sleep(ms)).await;
    if let Some(tab) = get(id) {
        tab.state.borrow_mut().borrows.remove(&n);
    }
    match answer {
        Some(Ok(BorrowAnswer::Granted)) => Ok(()),
        Some(Ok(BorrowAnswer::AlreadyBorrowed {
            holder,
            holder_name,
        })) => Err(Error::AlreadyBorrowed {
            tree: tree.to_owned(),
            key,
            holder,
            holder_name,
        }),
        Some(Ok(BorrowAnswer::Offline { reason })) => Err(Error::Offline {
            what: "borrowing",
            reason,
        }),
        Some(Ok(BorrowAnswer::Refused { reason })) => Err(Error::Refused {
            what: "borrowing",
            reason,
        }),
        Some(Ok(BorrowAnswer::Failed { reason })) => Err(Error::Browser {
            operation: "borrowing through the tab that syncs the database",
            message: reason,
        }),
        Some(Err(_)) => Err(gone()),
        None => Err(Error::Offline {
            what: "borrowing",
            reason: format!(
                "the tab that syncs the database did not answer within {timeout:?} (it may \
                 have closed: another tab takes over)"
            ),
        }),
    }
}

/// How often a synced leader tells its followers how its sync client is.
const STATUS_MS: f64 = 250.0;

/// A synced leader's followers learn its sync status: when it changes, and every two
/// seconds (for a follower that joined since).
async fn relay_status(id: u64) {
    let mut last: Option<TabStatus> = None;
    let mut ticks = 0u32;
    loop {
        super::browser::sleep(STATUS_MS).await;
        let Some(tab) = get(id) else {
            return;
        };
        let Some(db) = tab.db() else {
            continue;
        };
        if !tab.state.borrow().followers {
            continue;
        }
        let Some(link) = db.link.get() else {
            continue;
        };
        let status = TabStatus::of(&link.status());
        ticks += 1;
        if last.as_ref() != Some(&status) || ticks >= 8 {
            ticks = 0;
            tab.post(&Msg::Status {
                status: status.clone(),
            });
            last = Some(status);
        }
    }
}

/// The leader commit number to announce as stored after a flush that starts now.
pub(crate) fn seq(id: u64) -> Option<u64> {
    get(id).map(|t| t.state.borrow().seq)
}

/// The leader stored its commits up to `seq`.
pub(crate) fn stored(id: u64, seq: u64) {
    if let Some(tab) = get(id) {
        let followers = {
            let mut s = tab.state.borrow_mut();
            s.stored = s.stored.max(seq);
            (s.followers, s.own_from, s.old)
        };
        if followers.0 {
            tab.post(&Msg::Stored {
                seq,
                own_from: followers.1,
                old: followers.2,
            });
        }
    }
}

/// A synced leader's sync client reported `event`: its followers' subscribers get it too.
pub(crate) fn sync_event(id: u64, event: &crate::SyncEvent) {
    let Some(tab) = get(id) else {
        return;
    };
    {
        let s = tab.state.borrow();
        if !(s.leader && s.synced && s.followers) {
            return;
        }
    }
    match ron::to_string(event) {
        Ok(event) => tab.post(&Msg::Sync { event }),
        Err(e) => tracing::warn!("rekord: a sync event could not be sent to other tabs: {e}"),
    }
}

/// Whether tab `id` leads (stores the database).
pub(crate) fn leads(id: u64) -> bool {
    get(id).is_some_and(|t| t.state.borrow().leader)
}

/// For a follower: waits until every entry it sent so far is stored. `None` for a leader
/// (its flusher answers).
pub(crate) fn follower_flush(id: u64) -> Option<async_channel::Receiver<Result<()>>> {
    let tab = get(id)?;
    let mut s = tab.state.borrow_mut();
    if s.leader {
        return None;
    }
    let (tx, rx) = async_channel::bounded(1);
    if let Some(reason) = &s.broken {
        let _ = tx.try_send(Err(broken(reason)));
    } else if s.unacked.is_empty() {
        let _ = tx.try_send(Ok(()));
    } else {
        let n = s.next_n;
        s.waiters.push((n, tx));
        drop(s);
        tab.post(&Msg::Flush);
    }
    Some(rx)
}

fn broken(reason: &str) -> Error {
    Error::Browser {
        operation: "sharing the database between tabs",
        message: format!("{reason}; reload this tab"),
    }
}

/// Answers the waiters whose entries are all stored.
fn settle_waiters(s: &mut State) {
    let first_unacked = s.unacked.front().map_or(u64::MAX, |u| u.n);
    s.waiters.retain(|(n, w)| {
        if *n < first_unacked {
            let _ = w.try_send(Ok(()));
            false
        } else {
            true
        }
    });
}

/// Applies other tabs' messages, in order, for as long as the tab is open.
async fn run(id: u64) {
    let Some(inbox) = get(id).map(|t| t.inbox.clone()) else {
        return;
    };
    let mut queue: VecDeque<Msg> = VecDeque::new();
    loop {
        if queue.is_empty() {
            if let Some(tab) = get(id) {
                tab.busy.set(false);
            }
            match inbox.recv().await {
                Ok(m) => queue.push_back(m),
                Err(_) => return,
            }
            if let Some(tab) = get(id) {
                tab.busy.set(true);
            }
        }
        let Some(tab) = get(id) else {
            return;
        };
        let Some(msg) = queue.front().cloned() else {
            continue;
        };
        match handle(&tab, msg) {
            Ok(()) => {
                queue.pop_front();
            }
            // The application holds a batch across an await: after it.
            Err(Error::BatchInProgress) => {
                drop(tab);
                super::browser::sleep(2.0).await;
            }
            Err(e) => {
                queue.pop_front();
                tracing::warn!("rekord: a change from another tab could not be applied: {e}");
                let mut s = tab.state.borrow_mut();
                if !s.leader {
                    let reason =
                        format!("a change from another tab could not be applied here ({e})");
                    for (_, w) in s.waiters.drain(..) {
                        let _ = w.try_send(Err(broken(&reason)));
                    }
                    s.broken = Some(reason);
                }
            }
        }
    }
}

fn handle(tab: &Rc<Tab>, msg: Msg) -> Result<()> {
    let Some(db) = tab.db() else {
        return Ok(());
    };
    let leader = tab.state.borrow().leader;
    if leader && !tab.state.borrow().early.is_empty() {
        // Entries that waited long enough for an earlier one are applied now.
        apply_early(tab, &db);
    }
    match msg {
        Msg::Hello { tab: other } if leader => welcome(tab, &db, other),
        Msg::Flush if leader => {
            if let Some(h) = db.browser.get() {
                h.flush_soon();
            }
            Ok(())
        }
        Msg::Entry {
            tab: other,
            n,
            changes,
        } if leader => {
            let last = tab.state.borrow().applied.get(&other).copied().unwrap_or(0);
            if n <= last {
                // One the leader went past after waiting for it: applied now, but for the
                // records later entries of that tab changed.
                let skip = {
                    let mut s = tab.state.borrow_mut();
                    match s.gaps.get_mut(&other) {
                        Some(g) if g.missing.contains(&n) => Some(g.after.clone()),
                        _ => None,
                    }
                };
                if let Some(skip) = skip {
                    // What it sends the server for those records goes too (the later
                    // entries sent their newer state already).
                    let mut changes = changes;
                    if let Some(part) = changes.sync.as_mut() {
                        let gone = |tree: &str, id: u64| skip.contains(&(tree.to_owned(), id));
                        part.outbox.retain(|c| !gone(&c.tree, c.id));
                        part.returns.retain(|(tree, id)| !gone(tree, *id));
                        part.pending.retain(|(tree, id, _)| !gone(tree, *id));
                    }
                    match apply(tab, &db, &changes, &skip, Some((other, n))) {
                        Err(Error::BatchInProgress) => return Err(Error::BatchInProgress),
                        Err(e) => tab.post(&Msg::Refused {
                            to: other,
                            n,
                            reason: e.to_string(),
                        }),
                        Ok(()) => {}
                    }
                    let mut s = tab.state.borrow_mut();
                    if let Some(g) = s.gaps.get_mut(&other) {
                        g.missing.remove(&n);
                        if g.missing.is_empty() {
                            s.gaps.remove(&other);
                        }
                    }
                }
                return Ok(());
            }
            if n > last + 1 {
                // Ahead of an entry of that tab not applied yet (it sends again what no
                // leader took once it hears of a new leader, after what it wrote
                // meanwhile; or a commit of the old leader that applied it is on its way):
                // kept until the gap fills, applied in order.
                let mut s = tab.state.borrow_mut();
                s.early
                    .entry(other)
                    .or_default()
                    .insert(n, (changes, js_sys::Date::now()));
                drop(s);
                schedule_early(tab.id);
                return Ok(());
            }
            apply_entry(tab, &db, other, n, &changes)?;
            apply_early(tab, &db);
            Ok(())
        }
        Msg::Commit {
            seq,
            origin,
            changes,
            replaces,
        } if !leader => {
            if let Some(part) = &changes.sync {
                let mut s = tab.state.borrow_mut();
                if let Some(x) = replaces {
                    s.carried.retain(|c| c.seq != x);
                }
                // A late commit of an earlier leader too (numbered below what came since):
                // kept until a store covers it, with its changes (not applied here: the
                // leader applies it and sends it on).
                if !s.covers(seq) && !s.carried.iter().any(|c| c.seq == seq) {
                    let late = seq <= s.seq
                        && origin.is_none_or(|(t, _)| t != tab.id)
                        && replaces.is_none();
                    s.carried.push_back(Carried {
                        seq,
                        part: part.clone(),
                        ids: changes.records.iter().map(|r| r.id).collect(),
                        unapplied: late.then(|| changes.clone()),
                    });
                }
            }
            let skip: HashSet<(String, u64)> = {
                let mut s = tab.state.borrow_mut();
                if let Some((t, n)) = origin
                    && t == tab.id
                {
                    // This tab's own entry, carried: applied here already.
                    for u in s.unacked.iter_mut().filter(|u| u.n <= n && u.seq.is_none()) {
                        u.seq = Some(seq);
                    }
                    s.seq = s.seq.max(seq);
                    note_applied(&mut s, t, n);
                    return Ok(());
                }
                if seq <= s.seq {
                    // Late (carried above, applied by a takeover if no leader sends it on).
                    if let Some((t, n)) = origin {
                        note_applied(&mut s, t, n);
                    }
                    return Ok(());
                }
                s.unacked
                    .iter()
                    .filter(|u| u.seq.is_none())
                    .flat_map(|u| u.changes.keys())
                    .collect()
            };
            apply(tab, &db, &changes, &skip, None)?;
            let mut s = tab.state.borrow_mut();
            s.seq = s.seq.max(seq);
            if let Some((t, n)) = origin {
                note_applied(&mut s, t, n);
            }
            Ok(())
        }
        Msg::Commit {
            seq,
            origin,
            changes,
            ..
        } if leader => {
            late_commit(tab, &db, seq, origin, &changes)?;
            apply_early(tab, &db);
            Ok(())
        }
        Msg::Stored { seq, own_from, old } if !leader => {
            let mut s = tab.state.borrow_mut();
            s.note_stored(seq, own_from, old);
            settle_waiters(&mut s);
            Ok(())
        }
        Msg::Entry {
            tab: other,
            n,
            changes,
        } if !leader && other != tab.id => {
            // Kept until a leader's commit says it applied it (see `State::others`).
            let mut s = tab.state.borrow_mut();
            if n > s.applied.get(&other).copied().unwrap_or(0) {
                s.others.insert((other, n), changes);
            }
            Ok(())
        }
        Msg::Refused { to, n, .. } if to != tab.id => {
            // The leader is done with that entry: one taking over does not wait for it.
            note_applied(&mut tab.state.borrow_mut(), to, n);
            Ok(())
        }
        Msg::Refused { to, n, reason } if to == tab.id => {
            let reason =
                format!("the leading tab could not apply a change made here (entry {n}: {reason})");
            let mut s = tab.state.borrow_mut();
            for (_, w) in s.waiters.drain(..) {
                let _ = w.try_send(Err(broken(&reason)));
            }
            s.broken = Some(reason);
            Ok(())
        }
        Msg::Leader { tab: other, seq } if !leader && other != tab.id => {
            // The new leader has everything it was sent; what it was not, it gets now.
            let resend: Vec<Msg> = {
                let mut s = tab.state.borrow_mut();
                s.seq = s.seq.max(seq);
                // The carried commits stay until the new leader says they are stored: it
                // may die before it stored anything, and a takeover after it needs them.
                s.unacked
                    .iter()
                    .filter(|u| u.seq.is_none())
                    .map(|u| Msg::Entry {
                        tab: tab.id,
                        n: u.n,
                        changes: u.changes.clone(),
                    })
                    .collect()
            };
            for m in &resend {
                tab.post(m);
            }
            Ok(())
        }
        Msg::Welcome { range, .. } => {
            let mut s = tab.state.borrow_mut();
            if s.synced {
                s.carved.push(range);
            } else {
                s.top = s.top.min(range.0);
            }
            s.followers = true;
            Ok(())
        }
        Msg::Status { status } if !leader => {
            if let Some(replica) = status.replica
                && db.replica.load(std::sync::atomic::Ordering::Acquire)
                    == crate::sync::UNKNOWN_REPLICA
            {
                db.replica
                    .store(replica, std::sync::atomic::Ordering::Release);
            }
            let mut s = tab.state.borrow_mut();
            s.status = Some(status);
            s.status_at = js_sys::Date::now();
            Ok(())
        }
        Msg::Borrow {
            tab: other,
            n,
            tree,
            id,
            rev,
        } if leader => {
            let link = db.link.get().cloned();
            let me = tab.id;
            wasm_bindgen_futures::spawn_local(async move {
                let answer = match link {
                    None => BorrowAnswer::Offline {
                        reason: "the tab that syncs the database has not started its sync \
                                 client yet"
                            .into(),
                    },
                    Some(link) => match link.borrow(&tree, RawKey::new(id, rev)).await {
                        Ok(()) => BorrowAnswer::Granted,
                        Err(Error::AlreadyBorrowed {
                            holder,
                            holder_name,
                            ..
                        }) => BorrowAnswer::AlreadyBorrowed {
                            holder,
                            holder_name,
                        },
                        Err(Error::Offline { reason, .. }) => BorrowAnswer::Offline { reason },
                        Err(Error::Refused { reason, .. }) => BorrowAnswer::Refused { reason },
                        Err(e) => BorrowAnswer::Failed {
                            reason: e.to_string(),
                        },
                    },
                };
                if let Some(tab) = get(me) {
                    tab.post(&Msg::Borrowed {
                        to: other,
                        n,
                        answer,
                    });
                }
            });
            Ok(())
        }
        Msg::Borrowed { to, n, answer } if to == tab.id => {
            if let Some(w) = tab.state.borrow_mut().borrows.remove(&n) {
                let _ = w.try_send(answer);
            }
            Ok(())
        }
        Msg::Settled {
            below,
            next,
            windows,
        } if !leader => {
            let mut s = tab.state.borrow_mut();
            s.outbox = (s.outbox.0.max(below), s.outbox.1.max(next));
            for w in windows {
                if !s.windows.contains(&w) {
                    s.windows.push(w);
                }
            }
            Ok(())
        }
        Msg::Ids { tab: other } if leader => {
            let range = carve_synced(&db)?;
            // What it has left may now be under half a range: its sync client asks the
            // server for more (it looked only after the leader's own writes before, so a
            // follower of an idle leader ran out while online).
            if let Some(link) = db.link.get() {
                link.wake();
            }
            let replica = db.replica.load(std::sync::atomic::Ordering::Acquire);
            tab.post(&Msg::Range {
                to: other,
                range,
                replica,
            });
            Ok(())
        }
        Msg::Range { to, range, replica } if to == tab.id => {
            if replica != crate::sync::UNKNOWN_REPLICA
                && db.replica.load(std::sync::atomic::Ordering::Acquire)
                    == crate::sync::UNKNOWN_REPLICA
            {
                db.replica
                    .store(replica, std::sync::atomic::Ordering::Release);
            }
            if range.0 < range.1 {
                take_range(&db, range)?;
            }
            let mut s = tab.state.borrow_mut();
            s.asked_ids = 0.0;
            s.carved.push(range);
            Ok(())
        }
        Msg::Range { range, .. } => {
            tab.state.borrow_mut().carved.push(range);
            Ok(())
        }
        Msg::Sync { event } if !leader => {
            match ron::from_str::<crate::SyncEvent>(&event) {
                Ok(event) => db.deliver(&[crate::Event::Sync(event)]),
                // A tab of another build may send an event this one does not know.
                Err(e) => tracing::debug!("rekord: a sync event from the leading tab: {e}"),
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A commit of a former leader that arrived after this tab took over (the lock and the
/// channel take different paths): in a synced database, one its sync side did not start
/// from is applied now, its outbox entries queued as this tab's (they were never sent:
/// the old leader sends only what it stored, and the takeover started from what it
/// stored).
fn late_commit(
    tab: &Rc<Tab>,
    db: &Arc<DbInner>,
    seq: u64,
    origin: Option<(u64, u64)>,
    changes: &Changes,
) -> Result<()> {
    let Some(part) = &changes.sync else {
        return late_plain(tab, db, seq, changes);
    };
    {
        let mut s = tab.state.borrow_mut();
        if s.adopted.is_none() {
            return Ok(());
        }
        // Held here already: in the copy this tab took over with, or as the entry of the
        // tab that made it.
        let held = s.adopted_cover.holds(seq, part.n)
            || origin
                .is_some_and(|(t, n)| t == tab.id || s.applied.get(&t).is_some_and(|a| *a >= n));
        if held {
            if seq < s.own_from {
                s.old = s.old.max(seq);
            }
            if let Some((t, n)) = origin {
                note_applied(&mut s, t, n);
            }
            return Ok(());
        }
    }
    tracing::info!(
        "rekord: a commit of the tab that synced `{}` before came after the takeover: applied",
        tab.name
    );
    // Each entry of the commit stays an entry of its own (a takeover's first commit may
    // carry more than one request can).
    let (mut groups, mut returns) = (Vec::new(), Vec::new());
    for (_, bytes) in &part.entries {
        match crate::storage::outbox::decode(bytes)?.1 {
            crate::storage::outbox::Entry::Changes(list) => groups.push(list),
            crate::storage::outbox::Entry::Return { tree, id } => returns.push((tree, id)),
        }
    }
    let mut b = Batch::begin(db)?;
    for schema in &changes.schemas {
        b.tab_schema(schema)?;
    }
    let replica = db.replica.load(std::sync::atomic::Ordering::Acquire);
    for r in &changes.records {
        b.tab_record(r, if r.origin != 0 { r.origin } else { replica })?;
    }
    b.relay_entries(groups, &returns, &part.pending)?;
    if let Some((t, n)) = origin {
        store_applied(&b.txn, t, n)?;
    }
    commit_replacing(tab, b, seq)?;
    if let Some((t, n)) = origin {
        note_applied(&mut tab.state.borrow_mut(), t, n);
    }
    Ok(())
}

/// Commits `b`, which applies an earlier leader's commit `seq` that came after this tab
/// took over: sent on as this leader's commit, which replaces it in the tabs that carry it,
/// and `tabs.old` (written by the commit) says this image holds it. A failed commit leaves
/// `old` as it was.
fn commit_replacing(tab: &Rc<Tab>, b: Batch, seq: u64) -> Result<()> {
    let before = {
        let mut s = tab.state.borrow_mut();
        s.replacing = Some(seq);
        let before = s.old;
        if seq < s.own_from {
            s.old = s.old.max(seq);
        }
        before
    };
    let done = b.commit();
    let mut s = tab.state.borrow_mut();
    s.replacing = None;
    if done.is_err() {
        s.old = before;
    }
    done
}

/// The leader applies entry `n` of tab `other` (refused: the tab is told).
fn apply_entry(
    tab: &Rc<Tab>,
    db: &Arc<DbInner>,
    other: u64,
    n: u64,
    changes: &Changes,
) -> Result<()> {
    match apply(tab, db, changes, &HashSet::new(), Some((other, n))) {
        Ok(()) => {}
        Err(Error::BatchInProgress) => return Err(Error::BatchInProgress),
        Err(e) => {
            tab.post(&Msg::Refused {
                to: other,
                n,
                reason: e.to_string(),
            });
        }
    }
    let mut s = tab.state.borrow_mut();
    note_applied(&mut s, other, n);
    if let Some(g) = s.gaps.get_mut(&other) {
        g.after.extend(changes.keys());
    }
    Ok(())
}

/// Runs [`apply_early`] for tab `id` once the wait of the entries kept now is over (no
/// message may come meanwhile).
fn schedule_early(id: u64) {
    wasm_bindgen_futures::spawn_local(async move {
        super::browser::sleep(EARLY_WAIT_MS + 50.0).await;
        if let Some(tab) = get(id)
            && tab.state.borrow().leader
            && let Some(db) = tab.db()
        {
            apply_early(&tab, &db);
        }
    });
}

/// Entry `n` of tab `t` is applied here (or was, by an earlier leader).
fn note_applied(s: &mut State, t: u64, n: u64) {
    let a = s.applied.entry(t).or_insert(0);
    *a = (*a).max(n);
    let a = *a;
    s.others.retain(|&(o, m), _| o != t || m > a);
}

/// How long an entry that came ahead of an earlier one of its tab waits for it before it is
/// applied anyway (the earlier one may never come: its tab was reloaded meanwhile).
const EARLY_WAIT_MS: f64 = 3000.0;

/// The leader applies the entries that came ahead of others and no longer wait: the gap
/// before them filled, or they waited [`EARLY_WAIT_MS`]. A batch the application holds
/// leaves them for the next message.
fn apply_early(tab: &Rc<Tab>, db: &Arc<DbInner>) {
    loop {
        let next = {
            let mut s = tab.state.borrow_mut();
            let now = js_sys::Date::now();
            let mut found = None;
            let tabs: Vec<u64> = s.early.keys().copied().collect();
            for t in tabs {
                let last = s.applied.get(&t).copied().unwrap_or(0);
                let Some(queue) = s.early.get_mut(&t) else {
                    continue;
                };
                while queue.first_key_value().is_some_and(|(n, _)| *n <= last) {
                    queue.pop_first();
                }
                let due = queue
                    .first_key_value()
                    .is_some_and(|(n, (_, at))| *n == last + 1 || now - at > EARLY_WAIT_MS);
                if due && let Some((n, (changes, _))) = queue.pop_first() {
                    found = Some((t, n, changes));
                }
                if queue.is_empty() {
                    s.early.remove(&t);
                }
                if found.is_some() {
                    break;
                }
            }
            found
        };
        let Some((t, n, changes)) = next else {
            return;
        };
        let last = tab.state.borrow().applied.get(&t).copied().unwrap_or(0);
        if n > last + 1 {
            tracing::warn!(
                "rekord: a change of another tab waited {EARLY_WAIT_MS} ms for an earlier one \
                 that never came: applied without it (the earlier one is applied if it comes)"
            );
            let mut s = tab.state.borrow_mut();
            let g = s.gaps.entry(t).or_default();
            let from = (last + 1).max(n.saturating_sub(GAP_MAX));
            g.missing.extend(from..n);
        }
        if apply_entry(tab, db, t, n, &changes).is_err() {
            // Held by a batch of the application: put back, for the next message or the
            // timer.
            tab.state
                .borrow_mut()
                .early
                .entry(t)
                .or_default()
                .insert(n, (changes, 0.0));
            schedule_early(tab.id);
            return;
        }
    }
}

/// [`late_commit`] of a database that is not synced: a commit of the tab that led before,
/// numbered above what this tab had applied when it took over, is applied now (other tabs
/// may hold it; the stored image must too) and sent on as this leader's.
fn late_plain(tab: &Rc<Tab>, db: &Arc<DbInner>, seq: u64, changes: &Changes) -> Result<()> {
    {
        let s = tab.state.borrow();
        if s.synced || seq <= s.old || seq >= s.own_from || changes.records.is_empty() {
            return Ok(());
        }
    }
    tracing::info!(
        "rekord: a commit of the tab that stored `{}` before came after the takeover: applied",
        tab.name
    );
    let mut b = Batch::begin(db)?;
    for schema in &changes.schemas {
        b.tab_schema(schema)?;
    }
    let replica = db.replica.load(std::sync::atomic::Ordering::Acquire);
    for r in &changes.records {
        b.tab_record(r, replica)?;
    }
    // (`seq` is below `own_from`, checked above.)
    commit_replacing(tab, b, seq)
}

/// The most ids a synced follower gets at once.
const SYNCED_SPAN: u64 = 1 << 16;

/// Carves ids for a synced follower from the leader's server-granted ranges: the upper half
/// of the free ids of the range with the most (at most [`SYNCED_SPAN`]); `(0, 0)` when
/// there are too few (the follower asks again when it runs out; the leader's sync client
/// asks the server for more as its own run low).
fn carve_synced(db: &Arc<DbInner>) -> Result<(u64, u64)> {
    let b = Batch::begin(db)?;
    let next_id = b.writer.next_id;
    let carved = {
        let mut ranges = b.txn.open_table(RANGES)?;
        let mut best: Option<(u64, u64, u64)> = None;
        for row in ranges.iter()? {
            let (s, e) = row?;
            let (s, e) = (s.value(), e.value());
            if e <= next_id {
                continue;
            }
            let free = e - s.max(next_id);
            if best.is_none_or(|(_, _, f)| free > f) {
                best = Some((s, e, free));
            }
        }
        match best {
            Some((s, e, free)) if free >= 2 => {
                let cut = e - (free / 2).min(SYNCED_SPAN);
                ranges.remove(s)?;
                if cut > s {
                    ranges.insert(s, cut)?;
                }
                (cut, e)
            }
            _ => (0, 0),
        }
    };
    b.commit()?;
    if carved.0 < carved.1 {
        let mut w = crate::event::lock(&db.writer);
        if w.next_id < carved.0 {
            w.range_end = w.range_end.min(carved.0);
        } else if w.next_id < carved.1 {
            w.next_id = carved.1;
            w.range_end = 0;
        }
    }
    Ok(carved)
}

/// A follower takes the ids the leader carved for it. A later carve is the upper half of
/// what the leader has left, below the ids this tab took before, while a tab takes ids only
/// upward from its next one (`alloc_id`): so the ids below its next one (used, or passed
/// by) leave its ranges and its next id moves down to the new range. (Without the move the
/// new range was never used: a follower of an idle leader was out of ids while online,
/// `redteam_takeover_ids::an_idle_leader_leaves_a_follower_without_ids`.)
fn take_range(db: &Arc<DbInner>, range: (u64, u64)) -> Result<()> {
    let b = Batch::begin(db)?;
    let next = b.writer.next_id;
    {
        let mut ranges = b.txn.open_table(RANGES)?;
        if range.1 <= next {
            let mut below = Vec::new();
            for row in ranges.range(..next)? {
                let (s, e) = row?;
                below.push((s.value(), e.value()));
            }
            for (s, e) in below {
                ranges.remove(s)?;
                if e > next {
                    ranges.insert(next, e)?;
                }
            }
        }
        ranges.insert(range.0, range.1)?;
    }
    b.commit()?;
    if range.1 <= next {
        let mut w = crate::event::lock(&db.writer);
        if w.next_id == next {
            w.next_id = range.0;
            w.range_end = 0;
        }
    }
    Ok(())
}

/// Applies another tab's changes in one batch (`origin`: the follower entry a leader
/// applies; records in `skip` are left as they are).
fn apply(
    tab: &Rc<Tab>,
    db: &Arc<DbInner>,
    changes: &Changes,
    skip: &HashSet<(String, u64)>,
    origin: Option<(u64, u64)>,
) -> Result<()> {
    let mut b = Batch::begin(db)?;
    for s in &changes.schemas {
        b.tab_schema(s)?;
    }
    let (replica, synced, leader) = {
        let s = tab.state.borrow();
        let replica = db.replica.load(std::sync::atomic::Ordering::Acquire);
        (replica, s.synced, s.leader)
    };
    for r in &changes.records {
        if skip.contains(&(r.tree.clone(), r.id)) {
            continue;
        }
        // In a synced database a change keeps the replica it came from (another replica's,
        // through the leader's sync client, is remote here too).
        let origin = if synced && r.origin != 0 {
            r.origin
        } else {
            replica
        };
        b.tab_record(r, origin)?;
    }
    if synced
        && leader
        && let Some((t, n)) = origin
    {
        store_applied(&b.txn, t, n)?;
    }
    if let Some(part) = &changes.sync {
        if leader && origin.is_some() {
            b.relay(part)?;
        } else if !leader {
            b.follow(part)?;
        }
    }
    let before = tab.state.borrow().seq;
    tab.state.borrow_mut().applying = Some(origin);
    let outcome = b.commit();
    let mut s = tab.state.borrow_mut();
    s.applying = None;
    // An entry that changed nothing here (its records were already so) is still carried,
    // so that its tab learns it was applied.
    if outcome.is_ok() && s.leader && origin.is_some() && s.seq == before {
        s.seq += 1;
        let msg = Msg::Commit {
            seq: s.seq,
            origin,
            changes: Changes::default(),
            replaces: None,
        };
        drop(s);
        tab.post(&msg);
    }
    outcome
}

/// The leader's answer to a tab that opens the database: a range of ids of its own, and
/// the database as of now.
fn welcome(tab: &Rc<Tab>, db: &Arc<DbInner>, other: u64) -> Result<()> {
    if tab.state.borrow().synced {
        let range = carve_synced(db)?;
        return send_welcome(tab, db, other, range);
    }
    let top = tab.state.borrow().top;
    let start = top.saturating_sub(SPAN);
    if start <= SPAN {
        tracing::warn!("rekord: no ids are left to give another tab");
        return Ok(());
    }
    let b = Batch::begin(db)?;
    {
        let mut ranges = b.txn.open_table(RANGES)?;
        let mut overlapping = Vec::new();
        for row in ranges.iter()? {
            let (s, e) = row?;
            let (s, e) = (s.value(), e.value());
            if s < top && e > start {
                overlapping.push((s, e));
            }
        }
        for (s, e) in overlapping {
            ranges.remove(s)?;
            if s < start {
                ranges.insert(s, start)?;
            }
            if e > top {
                ranges.insert(top, e)?;
            }
        }
        b.txn
            .open_table(META)?
            .insert(TOP, start.to_le_bytes().as_slice())?;
    }
    b.commit()?;
    {
        let mut w = crate::event::lock(&db.writer);
        if w.next_id < start {
            w.range_end = w.range_end.min(start);
        } else if w.next_id < top {
            w.next_id = top;
            w.range_end = 0;
        }
    }
    tab.state.borrow_mut().top = start;
    send_welcome(tab, db, other, (start, top))
}

/// Sends tab `other` the database as of now and its ids.
fn send_welcome(tab: &Rc<Tab>, db: &Arc<DbInner>, other: u64, range: (u64, u64)) -> Result<()> {
    let Some(handle) = db.browser.get() else {
        return Ok(());
    };
    let image = blocks::lock(&handle.image);
    if image.committed().is_none() {
        return Err(Error::BatchInProgress);
    }
    let msg = {
        let mut s = tab.state.borrow_mut();
        s.followers = true;
        Msg::Welcome {
            to: other,
            leader: tab.id,
            seq: s.seq,
            image: Vec::new(),
            range,
            applied: s.applied.iter().map(|(a, b)| (*a, *b)).collect(),
        }
    };
    // Committed (checked above, under the same lock): sent.
    tab.post_with_image(&msg, &image);
    Ok(())
}

/// This follower becomes the leader: its copy becomes the stored image.
async fn take_over(tab: Rc<Tab>, lock: Option<super::browser::WebLock>) {
    let Some(db) = tab.db() else {
        return;
    };
    let Some(takeover) = tab.takeover.borrow_mut().take() else {
        return;
    };
    // Everything the old leader sent is applied first (its last commits may still be in
    // flight when the lock is let go): then this copy holds them, and the numbering of
    // commits goes on from the last one.
    // (The lock and the old leader's last messages come by different paths: a quiet
    // channel for a while is the sign they are all here.)
    let quiet = if tab.state.borrow().synced {
        TAKEOVER_QUIET_MS
    } else {
        30.0
    };
    loop {
        if !tab.busy.get() && tab.inbox.is_empty() {
            super::browser::sleep(quiet).await;
            if !tab.busy.get() && tab.inbox.is_empty() {
                break;
            }
        } else {
            super::browser::sleep(2.0).await;
        }
    }
    tracing::info!("rekord: this tab now stores `{}`", tab.name);
    // The ids granted to followers so far, kept with the image.
    let top = tab.state.borrow().top;
    loop {
        let done = Batch::begin(&db).and_then(|b| {
            b.txn
                .open_table(META)?
                .insert(TOP, top.to_le_bytes().as_slice())?;
            b.commit()
        });
        match done {
            Err(Error::BatchInProgress) => super::browser::sleep(2.0).await,
            Err(e) => {
                tracing::warn!("rekord: taking over `{}`: {e}", tab.name);
                break;
            }
            Ok(()) => break,
        }
    }
    // A synced database: the sync side of the stored image is taken, with what the old
    // leader's commits since queued and this tab's own entries added (see `adopt`).
    let synced = tab.state.borrow().synced;
    if synced && let Err(e) = adopt(&tab, &db).await {
        tracing::error!("rekord: taking over the sync of `{}`: {e}", tab.name);
        let mut s = tab.state.borrow_mut();
        let reason = format!("this tab could not take over syncing the database ({e})");
        for (_, w) in s.waiters.drain(..) {
            let _ = w.try_send(Err(broken(&reason)));
        }
        s.broken = Some(reason);
        return;
    }
    let own: Vec<(u64, Changes)> = {
        let mut s = tab.state.borrow_mut();
        if !synced {
            begin_epoch(&mut s);
        }
        s.leader = true;
        s.followers = true;
        s.carried.clear();
        s.status = None;
        // A synced database: the outbox entries of these writes went with the first
        // commit (`adopt`); their records go now, each commit carried under that commit's
        // number (a takeover after this tab keeps the records with the entries).
        let part = synced.then(|| SyncPart {
            n: s.adopted.map_or(0, |a| a + 1),
            ..SyncPart::default()
        });
        s.unacked
            .iter()
            .filter(|u| u.seq.is_none())
            .map(|u| {
                let mut changes = u.changes.clone();
                changes.sync.clone_from(&part);
                (u.n, changes)
            })
            .collect()
    };
    // Its own writes the old leader did not send on: sent as its commits.
    for (n, changes) in own {
        let msg = {
            let mut s = tab.state.borrow_mut();
            s.seq += 1;
            s.applied.insert(tab.id, n);
            Msg::Commit {
                seq: s.seq,
                origin: Some((tab.id, n)),
                changes,
                replaces: None,
            }
        };
        tab.post(&msg);
    }
    // Entries of other tabs no leader applied: this tab applies them now, in order, as if
    // they had just come (a tab alive sends its own again when it hears of this leader;
    // the second copy of an entry is ignored).
    let others = std::mem::take(&mut tab.state.borrow_mut().others);
    for ((other, n), changes) in others {
        let _ = tab.requeue.try_send(Msg::Entry {
            tab: other,
            n,
            changes,
        });
    }
    let seq = tab.state.borrow().seq;
    tab.post(&Msg::Leader { tab: tab.id, seq });
    let outcome = super::browser::start_flusher(&tab.name, takeover, lock, tab.id).await;
    if synced {
        // Its image stored: this tab syncs the database from now on.
        let config = tab.sync.borrow().clone();
        if let Some(config) = config {
            match crate::Db::start_sync_inner(&db, config) {
                Ok(()) => wasm_bindgen_futures::spawn_local(relay_status(tab.id)),
                Err(e) => tracing::error!("rekord: starting to sync `{}`: {e}", tab.name),
            }
        }
    }
    let mut s = tab.state.borrow_mut();
    s.unacked.clear();
    for (_, w) in s.waiters.drain(..) {
        let _ = w.try_send(outcome.as_ref().map(|_| ()).map_err(|e| Error::Browser {
            operation: "flushing",
            message: e.to_string(),
        }));
    }
}

/// A synced follower becoming the leader takes the sync side of the database as stored:
/// its own copy has every record the old leader sent (and its own writes), but the sync
/// client's tables only as the welcome gave them. The stored image's are what a reload
/// after a crash of the old leader would resume from (the server answers entries it
/// already processed as such, and sends again what the image's cursor lacks); to them
/// come the outbox entries of the old leader's commits the image lacks (each commit
/// carried them) and then this tab's own entries the old leader never applied. Ids any
/// record here already has are taken out of the ranges.
async fn adopt(tab: &Rc<Tab>, db: &Arc<DbInner>) -> Result<()> {
    let stored = super::browser::stored_database(&tab.name).await?;
    loop {
        match adopt_stored(tab, db, &stored) {
            Err(Error::BatchInProgress) => super::browser::sleep(2.0).await,
            other => return other,
        }
    }
}

fn adopt_stored(tab: &Rc<Tab>, db: &Arc<DbInner>, stored: &redb::Database) -> Result<()> {
    use crate::storage::{
        DEFERRED, JOURNAL, JOURNAL_STATES, OUTBOX, PENDING, RECHECK, RECLAIM, REJECTED,
    };
    let read = redb::ReadableDatabase::begin_read(stored)?;
    let mut image_applied = Vec::new();
    let (image_commits, image_next, image_cover) = {
        let (mut next, mut cover) = (0, BaseCover::default());
        for row in read.open_table(META)?.iter()? {
            let (k, v) = row?;
            let value = read_u64(v.value()).unwrap_or(0);
            match k.value() {
                COMMITS => cover.commits = value,
                OWN_FROM => cover.own_from = value,
                OLD => cover.old = value,
                "state" => next = value,
                k => {
                    if let Some(t) = k.strip_prefix(APPLIED).and_then(|t| t.parse().ok()) {
                        image_applied.push((t, value));
                    }
                }
            }
        }
        (cover.commits, next, cover)
    };
    let welcome = tab.state.borrow().welcome.clone().unwrap_or_default();
    // What the base holds: carried commits it holds are not put back.
    let cover = if image_commits >= welcome.commits {
        image_cover
    } else {
        welcome.cover
    };
    let held = |c: &Carried| cover.holds(c.seq, c.part.n);
    if image_commits >= welcome.commits {
        // The image's commits may have applied entries whose commits this tab has not heard
        // yet: those are held, not applied again from the copies tabs kept.
        let mut s = tab.state.borrow_mut();
        for (t, n) in image_applied {
            note_applied(&mut s, t, n);
        }
    }
    let mut b = Batch::begin(db)?;
    // The ids this tab has left of its own: a synced follower's ranges are only those the
    // leaders carved for it (its welcome cleared the rest), and it takes them upward from
    // its next id (every id below, of a record removed since too, is used). No other tab
    // takes them: they stay this tab's when it leads.
    let own_free: Vec<(u64, u64)> = {
        let from = b.writer.next_id;
        let mut free = Vec::new();
        for row in b.txn.open_table(RANGES)?.iter()? {
            let (s, e) = row?;
            let (s, e) = (s.value().max(from), e.value());
            if s < e {
                free.push((s, e));
            }
        }
        free
    };
    // The newer of the stored image and the welcome copy is where the sync side starts.
    let (base, base_next) = if image_commits >= welcome.commits {
        copy_table(&read, &b.txn, OUTBOX)?;
        copy_table(&read, &b.txn, REJECTED)?;
        copy_table(&read, &b.txn, PENDING)?;
        copy_table(&read, &b.txn, JOURNAL)?;
        copy_table(&read, &b.txn, JOURNAL_STATES)?;
        copy_table(&read, &b.txn, RECLAIM)?;
        copy_table(&read, &b.txn, RECHECK)?;
        copy_table(&read, &b.txn, DEFERRED)?;
        copy_table(&read, &b.txn, RANGES)?;
        let mut meta = b.txn.open_table(META)?;
        clear_sync_meta(&mut meta)?;
        for row in read.open_table(META)?.iter()? {
            let (k, v) = row?;
            if k.value().starts_with("sync.") {
                meta.insert(k.value(), v.value())?;
            }
        }
        (image_commits, image_next)
    } else {
        // This copy's own outbox and the sync client's other tables are the welcome's (a
        // follower never changes them); what it changed comes back.
        let mut meta = b.txn.open_table(META)?;
        clear_sync_meta(&mut meta)?;
        for (k, v) in &welcome.meta {
            meta.insert(k.as_str(), v.as_slice())?;
        }
        let mut pending = b.txn.open_table(PENDING)?;
        pending.retain(|_, _| false)?;
        for (tree, id, row) in &welcome.pending {
            pending.insert((tree.as_str(), *id), row.as_slice())?;
        }
        let mut ranges = b.txn.open_table(RANGES)?;
        ranges.retain(|_, _| false)?;
        for (start, end) in &welcome.ranges {
            ranges.insert(*start, *end)?;
        }
        (welcome.commits, welcome.next)
    };
    if base == image_commits && image_commits > welcome.commits {
        // The stored image is newer than the welcome copy: commits of the old leader this
        // tab never heard of (their messages came late, or never) are in it. Its records
        // are taken, but for those this tab changed itself or heard of in later commits.
        let mut newer: HashSet<u64> = HashSet::new();
        {
            let s = tab.state.borrow();
            for c in s.carried.iter().filter(|c| !held(c)) {
                newer.extend(c.ids.iter().copied());
            }
            for u in &s.unacked {
                newer.extend(u.changes.records.iter().map(|r| r.id));
            }
        }
        take_records(&mut b, &read, &newer)?;
    }
    // The late commits of an earlier leader that this tab carried without applying (the
    // leader that should have sent them on did not): applied now, in order.
    {
        let mut late: Vec<Carried> = tab
            .state
            .borrow()
            .carried
            .iter()
            .filter(|c| !held(c) && c.unapplied.is_some())
            .cloned()
            .collect();
        late.sort_by_key(|c| c.seq);
        let replica = db.replica.load(std::sync::atomic::Ordering::Acquire);
        for c in &late {
            if let Some(changes) = &c.unapplied {
                for schema in &changes.schemas {
                    b.tab_schema(schema)?;
                }
                for r in &changes.records {
                    b.tab_record(r, if r.origin != 0 { r.origin } else { replica })?;
                }
            }
        }
    }
    let (carried, mut used, own): (Vec<SyncPart>, Vec<u64>, Vec<SyncPart>) = {
        let s = tab.state.borrow();
        let mut after: Vec<&Carried> = s.carried.iter().filter(|c| !held(c)).collect();
        after.sort_by_key(|c| c.seq);
        (
            after.iter().map(|c| c.part.clone()).collect(),
            after.iter().flat_map(|c| c.ids.iter().copied()).collect(),
            // (Not those an earlier leader applied and stored in the image: their commits
            // may not have come yet, but their entries are queued in the base.)
            s.unacked
                .iter()
                .filter(|u| u.seq.is_none())
                .filter(|u| u.n > s.applied.get(&tab.id).copied().unwrap_or(0))
                .filter_map(|u| u.changes.sync.clone())
                .collect(),
        )
    };
    // This tab's own entries are applied by this commit: a takeover from its image knows.
    let own_last = tab.state.borrow().unacked.iter().map(|u| u.n).max();
    if let Some(n) = own_last {
        store_applied(&b.txn, tab.id, n)?;
    }
    let (below, next) = tab.state.borrow().outbox;
    let mut last_commit = base;
    // One part per entry: each stays an entry of its own (together they may be more than
    // one request carries).
    let mut renumbered: Vec<SyncPart> = Vec::new();
    {
        // The old leader's entries under their own numbers (the server knows them so);
        // those it settled are done: their outcome is in the records it sent.
        // Entries numbered in the room a leader left when it took over were made by the
        // leader before it and never sent (that leader had not heard of them): numbered
        // again as this tab's (the server may have seen higher numbers since).
        let windows = tab.state.borrow().windows.clone();
        let mut outbox = b.txn.open_table(OUTBOX)?;
        let mut last = 0;
        for part in &carried {
            for (n, bytes) in &part.entries {
                if windows.iter().any(|(a, z)| (*a..*z).contains(n)) {
                    renumbered.push(match crate::storage::outbox::decode(bytes)?.1 {
                        crate::storage::outbox::Entry::Changes(outbox) => SyncPart {
                            outbox,
                            ..SyncPart::default()
                        },
                        crate::storage::outbox::Entry::Return { tree, id } => SyncPart {
                            returns: vec![(tree, id)],
                            ..SyncPart::default()
                        },
                    });
                    continue;
                }
                outbox.insert(*n, bytes.as_slice())?;
                last = last.max(*n);
            }
            last_commit = last_commit.max(part.n);
        }
        // Their journal rows went with the old leader's commit that settled them, which
        // the base may not hold: noted again, under a number not known here (a restore of
        // the server before their pushes come back must send the records again).
        {
            let mut journal = b.txn.open_table(crate::storage::JOURNAL)?;
            let at = (crate::rt::now_ms() << 1) | 1;
            for row in outbox.range(..below)? {
                let (_, v) = row?;
                for (tree, id) in crate::storage::outbox::keys(v.value())? {
                    journal.insert((crate::sync::UNKNOWN_SEQ, tree.as_str(), id), at)?;
                }
            }
        }
        outbox.retain_in(..below, |_, _| false)?;
        let mut meta = b.txn.open_table(META)?;
        let made = crate::storage::outbox::last_made(&meta)?;
        // Past every number known here, with room for those of the old leader's commits
        // still on their way (they keep their numbers; a later takeover numbers them again).
        let known = next.max(last + 1).max(made + 1);
        let next = known.saturating_add(TAKEOVER_ENTRY_GAP);
        tab.state.borrow_mut().windows.push((known, next));
        meta.insert(
            crate::storage::outbox::NEXT_ENTRY,
            next.to_le_bytes().as_slice(),
        )?;
        // The old leader's pending rows as its commits left them (their counts are made
        // right below, from the outbox as put together here).
        let mut pending = b.txn.open_table(PENDING)?;
        for part in &carried {
            for (tree, id, row) in &part.pending {
                pending.insert((tree.as_str(), *id), row.as_slice())?;
            }
        }
    }
    for part in &renumbered {
        b.relay(part)?;
    }
    for part in &own {
        b.relay(part)?;
    }
    recount_pending(&b)?;
    let carved = tab.state.borrow().carved.clone();
    // Ids of records the old leader's carried commits touched (a removed one leaves no
    // record to find) and this tab's own entries' are used too.
    for u in tab.state.borrow().unacked.iter() {
        used.extend(u.changes.records.iter().map(|r| r.id));
    }
    let next = skip_used_ids(&b, base_next, &carved, &own_free, &used)?;
    // The old leader's last commits may still be on their way, with records it created
    // from where it stood: this tab's own creates keep out of their way.
    let next = leave_gap(&b, next, &own_free)?;
    {
        let mut meta = b.txn.open_table(META)?;
        let commit = b.writer.commit;
        meta.insert("state", state_bytes(next, commit).as_slice())?;
        // Past every count known here, with room for the old leader's commits still on
        // their way (they keep theirs).
        last_commit = last_commit.saturating_add(TAKEOVER_COMMIT_GAP);
        meta.insert(COMMITS, last_commit.to_le_bytes().as_slice())?;
    }
    // This commit is the new leader's first: counted and sent as a leader's (the entries
    // it queued for this tab's own writes go with it, and every other tab carries them
    // until they are stored, in case this tab dies before it stores anything). No message
    // is handled between here and the end of `take_over` (no await), which makes the rest
    // of the tab a leader.
    {
        let mut s = tab.state.borrow_mut();
        begin_epoch(&mut s);
        s.leader = true;
        s.followers = true;
    }
    // The commit stores the writer's next id (as it was, were it left: below the ranges
    // now, and a reload of this image would start there).
    let before = (b.writer.next_id, b.writer.range_end);
    b.writer.next_id = next;
    b.writer.range_end = 0;
    if let Err(e) = b.commit() {
        tab.state.borrow_mut().leader = false;
        let mut w = crate::event::lock(&db.writer);
        (w.next_id, w.range_end) = before;
        return Err(e);
    }
    {
        let mut s = tab.state.borrow_mut();
        s.adopted = Some(last_commit);
        s.adopted_cover = cover;
    }
    Ok(())
}

/// Makes every record of this copy what it is in the stored image (`read`), but for the
/// records `keep` names (with events for what changes); the image's schemas come first.
fn take_records(
    b: &mut Batch<'_>,
    read: &redb::ReadTransaction,
    keep: &HashSet<u64>,
) -> Result<()> {
    use redb::TableHandle as _;
    let mut schemas = Vec::new();
    if let Ok(table) = read.open_table(SCHEMAS) {
        for row in table.iter()? {
            let (k, v) = row?;
            let (tree, version) = k.value();
            schemas.push(TabSchema {
                tree: tree.to_owned(),
                version,
                text: v.value().to_owned(),
            });
        }
    }
    for schema in &schemas {
        b.tab_schema(schema)?;
    }
    let mut names: Vec<String> = read
        .list_tables()?
        .map(|h| h.name().to_owned())
        .chain(b.txn.list_tables()?.map(|h| h.name().to_owned()))
        .filter(|n| n.starts_with("t."))
        .collect();
    names.sort();
    names.dedup();
    let replica = b.db.replica.load(std::sync::atomic::Ordering::Acquire);
    for name in names {
        let def = crate::storage::DataTable::new(&name);
        let tree = name.strip_prefix("t.").unwrap_or(&name).to_owned();
        let theirs = match read.open_table(def) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        // Id by id through both tables in key order (one record's revisions in memory at a
        // time, whatever the size of the tree).
        let mut from = 0u64;
        loop {
            let mine_next = {
                let t = b.txn.open_table(def)?;
                next_id(&t, from)?
            };
            let theirs_next = match &theirs {
                Some(t) => next_id(t, from)?,
                None => None,
            };
            let id = match (mine_next, theirs_next) {
                (None, None) => break,
                (Some(a), Some(c)) => a.min(c),
                (Some(a), None) | (None, Some(a)) => a,
            };
            let theirs_revs = match &theirs {
                Some(t) => revisions(t, id)?,
                None => Vec::new(),
            };
            let mine_revs = {
                let t = b.txn.open_table(def)?;
                revisions(&t, id)?
            };
            if !keep.contains(&id) && theirs_revs != mine_revs {
                let record = TabRecord {
                    tree: tree.clone(),
                    id,
                    revisions: theirs_revs,
                    origin: replica,
                };
                b.tab_record(&record, replica)?;
            }
            match id.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
    }
    Ok(())
}

/// The first record id at or after `from` in `table`.
fn next_id(
    table: &impl redb::ReadableTable<u128, &'static [u8]>,
    from: u64,
) -> Result<Option<u64>> {
    Ok(match table.range(pack(RawKey::new(from, 0))..)?.next() {
        Some(row) => Some(unpack(row?.0.value()).id),
        None => None,
    })
}

/// Every revision of record `id` in `table`, in order.
fn revisions(
    table: &impl redb::ReadableTable<u128, &'static [u8]>,
    id: u64,
) -> Result<Vec<(u32, Vec<u8>)>> {
    let mut out = Vec::new();
    for row in table.range(id_range(id))? {
        let (k, v) = row?;
        out.push((unpack(k.value()).rev, v.value().to_vec()));
    }
    Ok(out)
}

/// Removes every `sync.*` key.
fn clear_sync_meta(meta: &mut redb::Table<'_, &str, &[u8]>) -> Result<()> {
    let mut mine = Vec::new();
    for row in meta.iter()? {
        let (k, _) = row?;
        if k.value().starts_with("sync.") {
            mine.push(k.value().to_owned());
        }
    }
    for k in &mine {
        meta.remove(k.as_str())?;
    }
    Ok(())
}

/// Makes table `def` in `to` what it is in `from`.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<()> {
    let mut dst = to.open_table(def)?;
    dst.retain(|_, _| false)?;
    let src = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Sets each pending row's count of waiting edits to the optimistic edits the outbox
/// holds for its record (after a takeover put entries together from several places).
fn recount_pending(b: &Batch<'_>) -> Result<()> {
    let mut counts: HashMap<(String, u64), u64> = HashMap::new();
    let mut count = |changes: &[Change]| {
        for c in changes {
            if matches!(c.kind, ChangeKind::Edit { .. }) {
                *counts.entry((c.tree.clone(), c.id)).or_default() += 1;
            }
        }
    };
    {
        let outbox = b.txn.open_table(crate::storage::OUTBOX)?;
        for row in outbox.iter()? {
            let (_, v) = row?;
            if let (_, crate::storage::outbox::Entry::Changes(cs)) =
                crate::storage::outbox::decode(v.value())?
            {
                count(&cs);
            }
        }
    }
    count(&b.core.outbox);
    for group in &b.core.relayed {
        count(group);
    }
    let mut pending = b.txn.open_table(crate::storage::PENDING)?;
    let mut rows = Vec::new();
    for row in pending.iter()? {
        let (k, v) = row?;
        let (tree, id) = k.value();
        rows.push((
            tree.to_owned(),
            id,
            crate::storage::outbox::PendingRow::decode(v.value()),
        ));
    }
    for (tree, id, mut row) in rows {
        let n = counts.get(&(tree.clone(), id)).copied().unwrap_or(0);
        if row.count != n {
            row.count = n;
            pending.insert((tree.as_str(), id), row.encode().as_slice())?;
        }
    }
    Ok(())
}

/// A tab taking over: the old leader's creates not heard of yet (a burst right before it
/// went, of any length) took ids upward from where the known ones end, through its ranges.
/// Every id of every range that is not this tab's own is taken out, so no create of the old
/// leader, however late its message, can meet one of this tab's. The ids this tab has left
/// of its own ranges (`own`: carved for it, which no other tab takes, in the ranges since
/// [`skip_used_ids`]) stay; what the old leader left unused of its ranges is given up (ids
/// are plentiful; a collision is not recoverable). The next id to use: the lowest left, or,
/// with none left, `from` past every range taken out (the writer then has no range and
/// creates wait for the server's next grant, a clear out-of-ids error offline). (An earlier
/// rule left only 1,024 ids to the old leader: a longer burst arriving after the takeover
/// met this tab's creates, `redteam_tabs_sync4::a_burst_larger_than_the_id_gap`.)
fn leave_gap(b: &Batch<'_>, from: u64, own: &[(u64, u64)]) -> Result<u64> {
    let is_own = |s: u64, e: u64| own.iter().any(|&(o0, o1)| s >= o0 && e <= o1);
    let mut ranges = b.txn.open_table(RANGES)?;
    let mut all = Vec::new();
    for row in ranges.iter()? {
        let (s, e) = row?;
        all.push((s.value(), e.value()));
    }
    let mut skipped_to = from;
    for (s, e) in all {
        if is_own(s, e) {
            continue;
        }
        ranges.remove(s)?;
        skipped_to = skipped_to.max(e);
    }
    let lowest = match ranges.iter()?.next() {
        Some(row) => Some(row?.0.value()),
        None => None,
    };
    Ok(lowest.unwrap_or(skipped_to))
}

/// Takes out of the id ranges the ranges carved for followers (the stored image may
/// predate them), puts back this tab's own ids left (`own`), and takes out every id up to
/// the highest any record here has in each, or `used` names (the old leader's creates since
/// the stored image); the next id to use.
fn skip_used_ids(
    b: &Batch<'_>,
    next: u64,
    carved: &[(u64, u64)],
    own: &[(u64, u64)],
    used: &[u64],
) -> Result<u64> {
    use redb::TableHandle as _;
    let names: Vec<String> = b
        .txn
        .list_tables()?
        .map(|h| h.name().to_owned())
        .filter(|n| n.starts_with("t."))
        .collect();
    let mut ranges = b.txn.open_table(RANGES)?;
    for &(c0, c1) in carved.iter().filter(|(c0, c1)| c0 < c1) {
        let mut overlapping = Vec::new();
        for row in ranges.iter()? {
            let (s, e) = row?;
            let (s, e) = (s.value(), e.value());
            if s < c1 && e > c0 {
                overlapping.push((s, e));
            }
        }
        for (s, e) in overlapping {
            ranges.remove(s)?;
            if s < c0 {
                ranges.insert(s, c0)?;
            }
            if e > c1 {
                ranges.insert(c1, e)?;
            }
        }
    }
    // This tab's own ids left (its share of the carved ranges, out now) come back, to be
    // checked against the records here like the rest.
    for &(s, e) in own {
        ranges.insert(s, e)?;
    }
    let mut all = Vec::new();
    for row in ranges.iter()? {
        let (s, e) = row?;
        all.push((s.value(), e.value()));
    }
    let mut next = next;
    for (s, e) in all {
        let mut used: Option<u64> = used.iter().copied().filter(|i| (s..e).contains(i)).max();
        for name in &names {
            let table = b.txn.open_table(crate::storage::DataTable::new(name))?;
            let last = table
                .range(pack(RawKey::new(s, 0))..pack(RawKey::new(e, 0)))?
                .next_back();
            if let Some(row) = last {
                let id = unpack(row?.0.value()).id;
                used = used.max(Some(id));
            }
        }
        if let Some(m) = used {
            ranges.remove(s)?;
            if m + 1 < e {
                ranges.insert(m + 1, e)?;
            }
            if next >= s && next <= m {
                next = m + 1;
            }
        }
    }
    Ok(next)
}

impl Batch<'_> {
    /// A synced leader applying a follower's entry: queues its outbox changes and returned
    /// borrows as this commit's (so the sync client sends them as the leader's own), with
    /// the pending rows of its optimistic edits merged into the leader's: edits already
    /// waiting for a record keep their base (and common ancestor); the first one is based
    /// on what the follower saw when it edited.
    fn relay(&mut self, part: &SyncPart) -> Result<()> {
        self.relay_entries(vec![part.outbox.clone()], &part.returns, &part.pending)
    }

    /// [`Batch::relay`] of several entries of one commit (`groups`, each an entry of its
    /// own: together they may be more than one request carries), with that commit's
    /// returned borrows and pending rows.
    fn relay_entries(
        &mut self,
        mut groups: Vec<Vec<Change>>,
        returns: &[(String, u64)],
        rows: &[(String, u64, Vec<u8>)],
    ) -> Result<()> {
        use crate::storage::outbox::PendingRow;
        {
            let mut pending = self.txn.open_table(crate::storage::PENDING)?;
            for (tree, id, theirs) in rows {
                let theirs = PendingRow::decode(theirs);
                let edits = groups
                    .iter()
                    .flatten()
                    .filter(|c| {
                        c.tree == *tree && c.id == *id && matches!(c.kind, ChangeKind::Edit { .. })
                    })
                    .count() as u64;
                let mine = pending
                    .get((tree.as_str(), *id))?
                    .map(|v| PendingRow::decode(v.value()));
                let row = match mine {
                    Some(mut m) if m.count > 0 => {
                        m.count += edits;
                        m.hlc = m.hlc.max(theirs.hlc);
                        m.strategy.clone_from(&theirs.strategy);
                        m
                    }
                    mine => {
                        let floor = mine.map_or(0, |m| m.floor);
                        PendingRow {
                            count: edits,
                            base: theirs.base.max(floor),
                            floor,
                            ..theirs
                        }
                    }
                };
                for c in groups
                    .iter_mut()
                    .flatten()
                    .filter(|c| c.tree == *tree && c.id == *id)
                {
                    if let ChangeKind::Edit { base, hlc, .. } = &mut c.kind {
                        *base = row.base;
                        self.core.hlc = self.core.hlc.max(*hlc);
                        self.core.hlc_moved = true;
                    }
                }
                pending.insert((tree.as_str(), *id), row.encode().as_slice())?;
            }
        }
        self.core
            .relayed
            .extend(groups.into_iter().filter(|g| !g.is_empty()));
        self.core.returns.extend(returns.iter().cloned());
        Ok(())
    }

    /// A synced follower applying a leader's commit: its server cursor (what the
    /// follower's optimistic edits are based on).
    fn follow(&mut self, part: &SyncPart) -> Result<()> {
        let mut meta = self.txn.open_table(META)?;
        let cursor = meta
            .get(crate::sync::CURSOR)?
            .and_then(|v| read_u64(v.value()))
            .unwrap_or(0);
        if part.cursor > cursor {
            meta.insert(crate::sync::CURSOR, part.cursor.to_le_bytes().as_slice())?;
        }
        Ok(())
    }

    /// Stores a schema another tab's records are written with, if this database does not
    /// have it; one of another shape under the same version is an error.
    fn tab_schema(&mut self, s: &TabSchema) -> Result<()> {
        let mut table = self.txn.open_table(SCHEMAS)?;
        let stored = table
            .get((s.tree.as_str(), s.version))?
            .map(|v| v.value().to_owned());
        match stored {
            None => {
                table.insert((s.tree.as_str(), s.version), s.text.as_str())?;
            }
            Some(text) if text == s.text => {}
            Some(text) => {
                let parse = |t: &str| {
                    Schema::from_ron(t).map_err(|e| Error::CorruptSchema {
                        tree: s.tree.clone(),
                        version: s.version,
                        reason: e.to_string(),
                    })
                };
                let (mine, theirs) = (parse(&text)?, parse(&s.text)?);
                if !mine.same_shape(&theirs) {
                    return Err(Error::SchemaChanged {
                        tree: s.tree.clone(),
                        version: s.version,
                        changes: crate::schema::describe_changes(&mine, &theirs),
                    });
                }
            }
        }
        Ok(())
    }

    /// Makes record `r.id` of `r.tree` exactly what another tab has (every revision),
    /// with events (origin `origin`) for what changed.
    fn tab_record(&mut self, r: &TabRecord, origin: u32) -> Result<()> {
        let state = self.db.tree_state(&r.tree);
        let ti = self.tree_index(&state);
        for (rev, value) in &r.revisions {
            let key = RawKey::new(r.id, *rev);
            let corrupt = |reason: String| Error::Corrupt {
                tree: r.tree.clone(),
                key,
                reason,
            };
            let (h, data) = Header::parse(value)
                .ok_or_else(|| corrupt("another tab sent a record without its header".into()))?;
            let schema = crate::tree::evolve::writer_schema(&state, h.version, || {
                Ok(self.txn.open_table(SCHEMAS)?)
            })?;
            dynamic::decode(&schema, data).map_err(|e| {
                corrupt(format!(
                    "another tab sent record data that does not match its schema: {e}"
                ))
            })?;
        }
        let mut table = self.txn.open_table(state.def())?;
        let mut local: Vec<(RawKey, Vec<u8>)> = Vec::new();
        for row in table.range(id_range(r.id))? {
            let (k, v) = row?;
            local.push((unpack(k.value()), v.value().to_vec()));
        }
        let mut events = Vec::new();
        for (k, old) in &local {
            if !r.revisions.iter().any(|(rev, _)| *rev == k.rev) {
                table.remove(pack(*k))?;
                events.push((*k, EventKind::Removed, Some(old.clone()), None));
            }
        }
        for (rev, value) in &r.revisions {
            let key = RawKey::new(r.id, *rev);
            let old = local.iter().find(|(k, _)| k.rev == *rev).map(|(_, v)| v);
            if old.is_some_and(|o| o == value) {
                continue;
            }
            table.insert(pack(key), value.as_slice())?;
            // Classified as the tab that made it did (and as sync does): a change of the
            // header alone is a release, a state change or a borrow, not an update.
            let kind = match old.map(|o| (Header::parse(o), Header::parse(value))) {
                Some((Some((oh, od)), Some((nh, nd)))) if od == nd && oh.version == nh.version => {
                    if !oh.released && nh.released {
                        Some(EventKind::Released)
                    } else if oh.released && nh.released && oh.state != nh.state {
                        Some(EventKind::StateChanged {
                            old: oh.state,
                            new: nh.state,
                        })
                    } else if oh.holder != nh.holder && oh.released == nh.released {
                        Some(if nh.holder == 0 {
                            EventKind::Returned { holder: oh.holder }
                        } else {
                            EventKind::Borrowed { holder: nh.holder }
                        })
                    } else {
                        None
                    }
                }
                _ => None,
            };
            let (kind, old) = match (kind, old) {
                (Some(k), _) => (k, None),
                (None, Some(o)) => (EventKind::Updated, Some(o.clone())),
                (None, None) if *rev == 0 => (EventKind::Created, None),
                (None, None) => (EventKind::RevisionCreated, None),
            };
            events.push((key, kind, old, Some(value.clone())));
        }
        drop(table);
        for (key, kind, old, new) in events {
            self.pend(ti, key, kind, origin, old, new.as_deref());
        }
        Ok(())
    }
}
