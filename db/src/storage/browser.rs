//! The browser's storage: a redb image in memory ([`blocks`](super::blocks)), persisted in
//! IndexedDB by a flusher task.
//!
//! One IndexedDB database per rekord database (`rekord:<name>`), with two object stores:
//! `blocks` (block number → stored block: magic, generation, checksum, 16 KiB of data) and
//! `meta` (`"marker"` → the commit marker). A flush puts every block changed since the last
//! flush and then the marker in one readwrite transaction, so what IndexedDB holds is
//! always exactly the state of some commit: a tab that crashes loses the commits after the
//! last completed flush, never part of one.
//!
//! The flusher is one task per open database (`wasm_bindgen_futures::spawn_local`). It
//! flushes when asked ([`Db::flush`](crate::Db::flush)), when the page is hidden or left,
//! once commits stop for [`FlushPolicy::debounce`], at the latest
//! [`FlushPolicy::max_delay`] after the first unflushed commit, and at once past
//! [`FlushPolicy::max_dirty_bytes`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbFactory, IdbKeyRange, IdbObjectStore, IdbRequest, IdbTransaction};

use super::blocks::{self, BlockBackend, Flush, Image, Marker};
use super::tabs;
use crate::{Error, Result};

/// How IndexedDB commits a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The browser reports a flush complete only once it is on disk (IndexedDB
    /// `durability: "strict"`): a flushed commit survives a crash of the tab, of the browser
    /// and of the operating system. About half as fast as `Relaxed`.
    #[default]
    Strict,
    /// The browser reports a flush complete once it has the data (`"relaxed"`, Chromium's
    /// default since version 121): a flushed commit survives a crash of the tab, not
    /// necessarily a power loss.
    Relaxed,
}

/// When commits reach IndexedDB by themselves. Every commit is atomic and visible at once;
/// it is durable once a flush that follows it completes ([`Db::flush`](crate::Db::flush)
/// waits for that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Flush once no commit came for this long (coalesces bursts). Default 20 ms.
    pub debounce: Duration,
    /// Flush at the latest this long after the first unflushed commit, however busy.
    /// Default 500 ms: the most a crash of the tab loses, plus the flush's own time.
    pub max_delay: Duration,
    /// Flush at once when this many bytes of changed blocks wait. Default 8 MiB.
    pub max_dirty_bytes: usize,
    /// Flush when the page is hidden or left (`visibilitychange`, `pagehide`). Default on.
    pub on_hide: bool,
}

impl Default for FlushPolicy {
    fn default() -> FlushPolicy {
        FlushPolicy {
            debounce: Duration::from_millis(20),
            max_delay: Duration::from_millis(500),
            max_dirty_bytes: 8 << 20,
            on_hide: true,
        }
    }
}

/// Options of a database in the browser ([`Db::open_browser_with`](crate::Db::open_browser_with)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrowserOptions {
    /// How IndexedDB commits a flush.
    pub durability: Durability,
    /// When commits are flushed without being asked.
    pub flush: FlushPolicy,
}

/// Attempts to store the last commits of a dropped database before giving them up.
const CLOSE_ATTEMPTS: u32 = 5;

/// redb's page cache in the browser (natively it is redb's default).
const REDB_CACHE: usize = 4 << 20;

/// The state of a database stored in the browser ([`Db::browser_stats`](crate::Db::browser_stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrowserStats {
    /// Bytes of the database's image, held in memory and stored in IndexedDB (in blocks of
    /// [`BLOCK_SIZE`](crate::storage::BLOCK_SIZE) with 16 bytes of header each).
    pub image_bytes: u64,
    /// Bytes of changed blocks committed and not yet flushed.
    pub unflushed_bytes: u64,
    /// Bytes of memory the image takes: its length rounded up to a block, plus a copy of
    /// each unflushed block written again before its flush (redb's own cache of 4 MiB and
    /// the application's memory come on top).
    pub memory_bytes: u64,
    /// Flushes stored since the database was created (the commit marker's generation).
    pub flushes: u64,
}

/// What the flusher is told.
pub(crate) enum Kick {
    /// A commit was staged; this many bytes wait.
    Commit(usize),
    /// Flush now, then answer.
    Flush(async_channel::Sender<Result<()>>),
    /// The page is being hidden or left: flush now.
    Hide,
    /// The database was dropped: store what is left and end.
    Close,
}

/// The handle a [`Db`](crate::Db) keeps of its browser storage.
pub(crate) struct Handle {
    name: String,
    pub(crate) image: Arc<Mutex<Image>>,
    kick: async_channel::Sender<Kick>,
    /// The flusher's last error, cleared by its next successful flush.
    last_error: Arc<Mutex<Option<String>>>,
    /// This database's place among the tabs that share it ([`tabs`]).
    tab: Option<u64>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Fields of `DbInner` drop in order, redb (and its last commit) before this.
        // Only a database that stores (leads) is the page's open one: a follower's drop
        // leaves it be.
        if self.tab.is_none_or(tabs::leads) {
            OPEN.with(|o| {
                if let Some(c) = o.borrow().get(&self.name) {
                    c.dropped.set(true);
                }
            });
        }
        if let Some(t) = self.tab {
            tabs::forget(t);
        }
        let _ = self.kick.try_send(Kick::Close);
    }
}

impl Handle {
    /// This database's tab id among the tabs that share it.
    pub(crate) fn tab(&self) -> Option<u64> {
        self.tab
    }

    /// Flushes everything committed so far; returns when it is stored (in a follower tab:
    /// when the leading tab stored it).
    pub(crate) async fn flush(&self) -> Result<()> {
        if let Some(rx) = self.tab.and_then(tabs::follower_flush) {
            return rx.recv().await.unwrap_or_else(|_| {
                Err(Error::Browser {
                    operation: "flushing",
                    message: "the database was closed".into(),
                })
            });
        }
        flush_via(&self.kick).await
    }

    /// Asks the flusher to flush now, without waiting for it (a follower tab waits).
    pub(crate) fn flush_soon(&self) {
        let _ = self.kick.try_send(Kick::Hide);
    }

    /// The error of the last automatic flush, if it failed and none succeeded since.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

thread_local! {
    /// Names open in this page (or worker), with a promise-like signal that resolves when
    /// their flusher has finished its last flush (a reopen waits for it).
    static OPEN: RefCell<HashMap<String, Rc<Closing>>> = RefCell::new(HashMap::new());
}

/// Set once a database's flusher has stored its last flush and closed IndexedDB.
#[derive(Default)]
struct Closing {
    /// The `Db` was dropped: its flusher is storing the last commits.
    dropped: std::cell::Cell<bool>,
    /// Why the last commits could not be stored at close (told to the next open).
    lost: RefCell<Option<String>>,
    closed: std::cell::Cell<bool>,
    wakers: RefCell<Vec<std::task::Waker>>,
}

impl Closing {
    fn close(&self) {
        self.closed.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.closed.get() {
                Poll::Ready(())
            } else {
                self.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Opens (creating if needed) the IndexedDB database of `name`, loads and verifies the
/// image, and starts the flusher. Returns the redb database and the handle.
pub(crate) async fn open(name: &str, options: BrowserOptions) -> Result<(redb::Database, Handle)> {
    // Open in this page already: this open follows it, as one in another tab would.
    let open_here = OPEN.with(|o| {
        o.borrow()
            .get(name)
            .is_some_and(|c| !c.closed.get() && !c.dropped.get())
    });
    if !open_here {
        // A database of the same name still closing in this page finishes its last flush
        // first.
        wait_closed(name).await?;
    }
    // The tab that asked the leader and got no answer yet (it asks again: the answer to the
    // first question may come late).
    let mut asking = None;
    let forget = |asking: Option<u64>| {
        if let Some(id) = asking {
            tabs::forget(id);
        }
    };
    for _ in 0..tabs::WELCOME_TRIES {
        if !open_here || OPEN.with(|o| o.borrow().get(name).is_none_or(|c| c.closed.get())) {
            // The leader: the only tab that writes to IndexedDB.
            match WebLock::take(name).await {
                Ok(lock) => {
                    forget(asking);
                    return open_leader(name, options, lock).await;
                }
                Err(Error::Locked { .. }) => {}
                Err(e) => {
                    forget(asking);
                    return Err(e);
                }
            }
        }
        match tabs::join(name, asking).await {
            Ok(tabs::Join::Joined(joined)) => return open_follower(name, options, joined),
            Ok(tabs::Join::NoAnswer(id)) => asking = Some(id),
            Err(e) => {
                forget(asking);
                return Err(e);
            }
        }
    }
    forget(asking);
    Err(Error::Locked {
        path: format!("indexeddb:{name}"),
        source: redb::DatabaseError::DatabaseAlreadyOpen,
    })
}

async fn open_leader(
    name: &str,
    options: BrowserOptions,
    lock: Option<WebLock>,
) -> Result<(redb::Database, Handle)> {
    let closing = Rc::new(Closing::default());
    let previous = OPEN.with(|o| o.borrow_mut().insert(name.to_owned(), closing.clone()));
    match open_inner(name, options, closing.clone(), lock).await {
        Ok(x) => Ok(x),
        Err(e) => {
            closing.close();
            unregister(name, &closing, previous);
            Err(e)
        }
    }
}

/// What a follower tab keeps to become the leader ([`start_flusher`]).
pub(crate) struct Takeover {
    image: Arc<Mutex<Image>>,
    options: BrowserOptions,
    kick: async_channel::Sender<Kick>,
    kicks: async_channel::Receiver<Kick>,
    last_error: Arc<Mutex<Option<String>>>,
}

/// A follower tab's database: its copy of the leader's, in memory, with its own ids.
fn open_follower(
    name: &str,
    options: BrowserOptions,
    joined: tabs::Joined,
) -> Result<(redb::Database, Handle)> {
    let image = Arc::new(Mutex::new(joined.image));
    let (kick, kicks) = async_channel::unbounded();
    let on_commit = kick.clone();
    let on_commit: blocks::OnCommit = Box::new(move |staged| {
        // Nothing is staged until this tab leads (the flusher is not reading yet).
        if staged > 0 {
            let _ = on_commit.try_send(Kick::Commit(staged));
        }
    });
    let opened = redb_over(name, &image, Some(on_commit))
        .and_then(|redb| tabs::use_range(joined.tab, &redb, joined.range).map(|()| redb));
    let redb = match opened {
        Ok(redb) => redb,
        Err(e) => {
            tabs::forget(joined.tab);
            return Err(e);
        }
    };
    let last_error = Arc::new(Mutex::new(None));
    tabs::keep_takeover(
        joined.tab,
        Takeover {
            image: image.clone(),
            options,
            kick: kick.clone(),
            kicks,
            last_error: last_error.clone(),
        },
    );
    Ok((
        redb,
        Handle {
            name: name.to_owned(),
            image,
            kick,
            last_error,
            tab: Some(joined.tab),
        },
    ))
}

/// The database as stored in IndexedDB now: a copy in memory, for reading (a follower
/// taking over a synced database reads its sync side).
pub(crate) async fn stored_database(name: &str) -> Result<redb::Database> {
    let idb = open_idb(name).await?;
    let image = load(&idb, name).await;
    idb.close();
    let image = Arc::new(Mutex::new(image?));
    redb_over(name, &image, None)
}

/// Makes a follower tab's copy the stored image and starts its flusher (the follower
/// became the leader, holding `lock`); returns when that first flush is done.
pub(crate) async fn start_flusher(
    name: &str,
    t: Takeover,
    lock: Option<WebLock>,
    tab: u64,
) -> Result<()> {
    let idb = open_idb(name).await?;
    let generation = match stored_marker(&idb).await {
        Ok(m) => m.map_or(0, |m| m.generation),
        Err(e) => {
            idb.close();
            return Err(e);
        }
    };
    // Attached between commits: a batch the application holds across an await has written
    // to the image without committing.
    while blocks::lock(&t.image).committed().is_none() {
        sleep(2.0).await;
    }
    // Between commits (checked above, with no await since): attached.
    let attached = blocks::lock(&t.image).attach(generation);
    debug_assert!(attached);
    // Registered as open in this page: a later open here waits for its last flush.
    let closing = Rc::new(Closing::default());
    let name_owned = name.to_owned();
    OPEN.with(|o| {
        let mut o = o.borrow_mut();
        if o.get(name).is_none_or(|c| c.closed.get()) {
            o.insert(name_owned, closing.clone());
        }
    });
    let listeners = if t.options.flush.on_hide {
        HideListeners::add(&t.kick)
    } else {
        None
    };
    let flusher = Flusher {
        idb,
        image: t.image,
        options: t.options,
        kicks: t.kicks,
        last_error: t.last_error,
        _listeners: listeners,
        _lock: lock,
        tab: Some(tab),
        witnessed: std::cell::Cell::new(false),
    };
    wasm_bindgen_futures::spawn_local(async move {
        flusher.run(closing.clone()).await;
        closing.close();
    });
    flush_via(&t.kick).await
}

/// Asks the flusher behind `kick` to flush now and waits for its answer.
async fn flush_via(kick: &async_channel::Sender<Kick>) -> Result<()> {
    let (tx, rx) = async_channel::bounded(1);
    if kick.send(Kick::Flush(tx)).await.is_err() {
        return Err(Error::Browser {
            operation: "flushing",
            message: "the flusher stopped (the database is closing)".into(),
        });
    }
    rx.recv().await.unwrap_or_else(|_| {
        Err(Error::Browser {
            operation: "flushing",
            message: "the flusher stopped before answering".into(),
        })
    })
}

/// The stored commit marker, if any.
async fn stored_marker(idb: &IdbDatabase) -> Result<Option<Marker>> {
    let t = idb
        .transaction_with_str("meta")
        .map_err(|e| browser_error("opening", &e))?;
    let meta = t
        .object_store("meta")
        .map_err(|e| browser_error("opening", &e))?;
    let r = meta
        .get(&JsValue::from_str("marker"))
        .map_err(|e| browser_error("opening", &e))?;
    let v = request(&r, "opening").await?;
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    let bytes = v
        .dyn_into::<Uint8Array>()
        .map_err(|e| browser_error("opening", &e))?
        .to_vec();
    Marker::decode(&bytes)
        .map(Some)
        .map_err(|e| Error::StoreDamaged {
            name: name_of(idb),
            source: e,
        })
}

fn name_of(idb: &IdbDatabase) -> String {
    idb.name()
        .strip_prefix("rekord:")
        .map(str::to_owned)
        .unwrap_or_else(|| idb.name())
}

/// Puts back the `OPEN` entry a failed open or import replaced (another open of the name
/// may have won meanwhile: its entry stays).
fn unregister(name: &str, mine: &Rc<Closing>, previous: Option<Rc<Closing>>) {
    OPEN.with(|o| {
        let mut o = o.borrow_mut();
        if o.get(name).is_some_and(|c| Rc::ptr_eq(c, mine)) {
            match previous {
                Some(p) => {
                    o.insert(name.to_owned(), p);
                }
                None => {
                    o.remove(name);
                }
            }
        }
    });
}

async fn open_inner(
    name: &str,
    options: BrowserOptions,
    closing: Rc<Closing>,
    lock: Option<WebLock>,
) -> Result<(redb::Database, Handle)> {
    let idb = open_idb(name).await?;
    // A connection left open would block a later delete (and upgrades) for good.
    let image = match load(&idb, name).await {
        Ok(image) => image,
        Err(e) => {
            idb.close();
            return Err(e);
        }
    };
    let image = Arc::new(Mutex::new(image));
    let (kick, kicks) = async_channel::unbounded();
    let handle_name = name.to_owned();
    let on_commit = kick.clone();
    let on_commit: blocks::OnCommit = Box::new(move |staged| {
        // Unbounded: never full; closed only once the flusher is gone, when nothing
        // commits any more. (Told even of a commit that leaves no block dirty: one that
        // only shrank the image has stored blocks to delete.)
        let _ = on_commit.try_send(Kick::Commit(staged));
    });
    let redb = match redb_over(name, &image, Some(on_commit)) {
        Ok(redb) => redb,
        Err(e) => {
            idb.close();
            return Err(e);
        }
    };
    let tab = match tabs::stored_top(&redb).and_then(|top| tabs::lead(name, top)) {
        Ok(tab) => tab,
        Err(e) => {
            idb.close();
            return Err(e);
        }
    };
    let last_error = Arc::new(Mutex::new(None));
    let listeners = if options.flush.on_hide {
        HideListeners::add(&kick)
    } else {
        None
    };
    let flusher = Flusher {
        idb,
        image: image.clone(),
        options,
        kicks,
        last_error: last_error.clone(),
        _listeners: listeners,
        _lock: lock,
        tab: Some(tab),
        witnessed: std::cell::Cell::new(false),
    };
    wasm_bindgen_futures::spawn_local(async move {
        flusher.run(closing.clone()).await;
        closing.close();
    });
    Ok((
        redb,
        Handle {
            name: handle_name,
            image: image.clone(),
            kick,
            last_error,
            tab: Some(tab),
        },
    ))
}

/// redb over `image`, `on_commit` told of every commit.
fn redb_over(
    name: &str,
    image: &Arc<Mutex<Image>>,
    on_commit: Option<blocks::OnCommit>,
) -> Result<redb::Database> {
    // The image is in memory already: redb's own cache of it only needs to hold the pages
    // a transaction works on, not a second copy of the database.
    redb::Database::builder()
        .set_cache_size(REDB_CACHE)
        .create_with_backend(BlockBackend::new(image.clone(), on_commit))
        .map_err(|source| Error::opening(&format!("indexeddb:{name}"), source))
}

/// An exclusive Web Lock (`navigator.locks`) on a database name, held until dropped.
pub(crate) struct WebLock {
    release: Function,
}

impl WebLock {
    /// Takes the lock `rekord:<name>` if no other tab or worker of the origin holds it
    /// ([`Error::Locked`] otherwise). `None` where the browser has no Web Locks.
    async fn take(name: &str) -> Result<Option<WebLock>> {
        WebLock::request(name, true).await
    }

    /// [`WebLock::take`], tried again for a moment while it is held: a lock released in
    /// this page (a database just dropped, an import just done) is free only once the
    /// browser has seen its promise settle.
    async fn take_soon(name: &str) -> Result<Option<WebLock>> {
        let mut tries = 0;
        loop {
            match WebLock::take(name).await {
                Err(Error::Locked { .. }) if tries < 25 => {
                    tries += 1;
                    sleep(8.0).await;
                }
                other => return other,
            }
        }
    }

    /// Waits for the lock `rekord:<name>` (in line behind every tab that asked before).
    /// `None` where the browser has no Web Locks: then it never comes.
    pub(crate) async fn wait(name: &str) -> Result<Option<WebLock>> {
        match WebLock::request(name, false).await? {
            Some(lock) => Ok(Some(lock)),
            None => std::future::pending().await,
        }
    }

    async fn request(name: &str, if_available: bool) -> Result<Option<WebLock>> {
        let locks = Reflect::get(&js_sys::global(), &"navigator".into())
            .and_then(|n| Reflect::get(&n, &"locks".into()))
            .ok()
            .filter(|l| !l.is_undefined() && !l.is_null());
        let Some(locks) = locks else {
            tracing::warn!(
                "rekord: this browser has no Web Locks; nothing stops two tabs from opening the same database"
            );
            return Ok(None);
        };
        let request: Function = Reflect::get(&locks, &"request".into())
            .and_then(|f| f.dyn_into())
            .map_err(|e| browser_error("opening", &e))?;
        // The lock is held while the promise the callback returns is pending.
        let mut release = None;
        let hold = Promise::new(&mut |resolve, _| release = Some(resolve));
        let Some(release) = release else {
            // The executor runs synchronously inside `new Promise`.
            return Err(Error::Browser {
                operation: "opening",
                message: "a promise executor did not run".into(),
            });
        };
        let (tx, rx) = async_channel::bounded(1);
        let callback = Closure::once_into_js(move |lock: JsValue| -> JsValue {
            let granted = !lock.is_null();
            let _ = tx.try_send(granted);
            if granted {
                hold.into()
            } else {
                JsValue::UNDEFINED
            }
        });
        let options = Object::new();
        if if_available {
            Reflect::set(&options, &"ifAvailable".into(), &JsValue::TRUE)
                .map_err(|e| browser_error("opening", &e))?;
        }
        request
            .call3(&locks, &idb_name(name).into(), &options, &callback)
            .map_err(|e| browser_error("opening", &e))?;
        match rx.recv().await {
            Ok(true) => Ok(Some(WebLock { release })),
            _ => Err(Error::Locked {
                path: format!("indexeddb:{name}"),
                source: redb::DatabaseError::DatabaseAlreadyOpen,
            }),
        }
    }
}

impl Drop for WebLock {
    fn drop(&mut self) {
        let _ = self.release.call0(&JsValue::NULL);
    }
}

/// The `visibilitychange` and `pagehide` listeners of one database (removed when dropped).
struct HideListeners {
    target: web_sys::EventTarget,
    document: web_sys::EventTarget,
    on_hide: Closure<dyn FnMut(web_sys::Event)>,
}

impl HideListeners {
    fn add(kick: &async_channel::Sender<Kick>) -> Option<HideListeners> {
        // Only a page has them; a worker has neither event.
        let window = web_sys::window()?;
        let document = window.document()?;
        let kick = kick.clone();
        let doc = document.clone();
        let on_hide = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
            if e.type_() == "pagehide" || doc.visibility_state() == web_sys::VisibilityState::Hidden
            {
                let _ = kick.try_send(Kick::Hide);
            }
        });
        let target: web_sys::EventTarget = window.into();
        let document: web_sys::EventTarget = document.into();
        let f = on_hide.as_ref().unchecked_ref();
        let _ = target.add_event_listener_with_callback("pagehide", f);
        let _ = document.add_event_listener_with_callback("visibilitychange", f);
        Some(HideListeners {
            target,
            document,
            on_hide,
        })
    }
}

impl Drop for HideListeners {
    fn drop(&mut self) {
        let f = self.on_hide.as_ref().unchecked_ref();
        let _ = self
            .target
            .remove_event_listener_with_callback("pagehide", f);
        let _ = self
            .document
            .remove_event_listener_with_callback("visibilitychange", f);
    }
}

/// The task that writes the image's changes to IndexedDB.
struct Flusher {
    idb: IdbDatabase,
    image: Arc<Mutex<Image>>,
    options: BrowserOptions,
    kicks: async_channel::Receiver<Kick>,
    last_error: Arc<Mutex<Option<String>>>,
    _listeners: Option<HideListeners>,
    /// Released when the flusher ends (after its last flush).
    _lock: Option<WebLock>,
    /// The tab id: other tabs are told what each flush stored.
    tab: Option<u64>,
    /// Whether this flusher has noted outside IndexedDB that the database is stored
    /// ([`witness`]), after its first successful flush.
    witnessed: std::cell::Cell<bool>,
}

impl Flusher {
    async fn run(self, closing: Rc<Closing>) {
        let policy = self.options.flush;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // When the oldest unflushed commit must be flushed by (ms since the epoch), or,
        // after a failure, when the next attempt is due.
        let mut deadline: Option<f64> = None;
        // The wait before the next attempt after a failure (0 while flushes succeed):
        // from `max_delay`, doubling up to 30 s.
        let mut backoff = 0.0f64;
        let mut waiters: Vec<async_channel::Sender<Result<()>>> = Vec::new();
        let mut dropped = false;
        let mut attempts_at_close = 0;
        // Commits made while the last store ran are still to store: no waiting.
        let mut more = false;
        loop {
            let wait = deadline.map(|d| {
                let left = (d - js_sys::Date::now()).max(0.0);
                if backoff > 0.0 {
                    left
                } else {
                    left.min(ms(policy.debounce))
                }
            });
            let kick = match wait {
                _ if std::mem::take(&mut more) => None,
                // Closing, after a failed store: the kicks' channel may have no sender
                // left (no hide listeners, as in a worker), and a closed channel would end
                // every wait at once, spending the attempts at close within milliseconds.
                Some(wait) if dropped => {
                    sleep(wait).await;
                    None
                }
                None => Some(self.kicks.recv().await.map_err(|_| ())),
                Some(wait) => race(self.kicks.recv(), sleep(wait))
                    .await
                    .map(|r| r.map_err(|_| ())),
            };
            let now = match kick {
                // The database was dropped: store what is left, then end.
                Some(Err(())) | Some(Ok(Kick::Close)) => {
                    dropped = true;
                    true
                }
                None => true,
                Some(Ok(Kick::Commit(staged))) => {
                    deadline.get_or_insert(js_sys::Date::now() + ms(policy.max_delay));
                    backoff == 0.0 && staged >= policy.max_dirty_bytes
                }
                Some(Ok(Kick::Flush(w))) => {
                    waiters.push(w);
                    true
                }
                Some(Ok(Kick::Hide)) => true,
            };
            if !now {
                continue;
            }
            // Every request already waiting is answered by this flush.
            while let Ok(k) = self.kicks.try_recv() {
                match k {
                    Kick::Flush(w) => waiters.push(w),
                    Kick::Close => dropped = true,
                    Kick::Commit(_) | Kick::Hide => {}
                }
            }
            let seq = self.tab.and_then(tabs::seq);
            // One store answers every request that came before it: it holds everything
            // committed until it was taken. Commits made while it ran are stored next,
            // without holding up those requests (a writer that commits faster than a
            // store takes would otherwise keep them waiting until it pauses).
            let outcome = self.flush_once().await;
            if let (Ok(_), Some(tab), Some(seq)) = (&outcome, self.tab, seq) {
                tabs::stored(tab, seq);
            }
            for w in waiters.drain(..) {
                let _ = w.try_send(outcome.as_ref().map(|_| ()).map_err(again));
            }
            match outcome {
                Ok(left) => {
                    backoff = 0.0;
                    if left {
                        more = true;
                        continue;
                    }
                    deadline = None;
                    if dropped {
                        break;
                    }
                }
                Err(e) => {
                    backoff = if backoff == 0.0 {
                        ms(policy.max_delay)
                    } else {
                        (backoff * 2.0).min(30_000.0)
                    };
                    deadline = Some(js_sys::Date::now() + backoff);
                    if dropped {
                        // A reopen in this page waits for this; after a few attempts the
                        // commits are given up, and that reopen is told.
                        attempts_at_close += 1;
                        if attempts_at_close >= CLOSE_ATTEMPTS {
                            *closing.lost.borrow_mut() = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
        }
        self.idb.close();
    }

    /// Stores every commit staged so far (one IndexedDB transaction); whether commits made
    /// meanwhile are left to store. On failure the blocks stay staged for the next attempt.
    async fn flush_once(&self) -> Result<bool> {
        let taken = blocks::lock(&self.image).take_flush(js_block);
        let Some(flush) = taken else {
            return Ok(false);
        };
        match store(&self.idb, &flush, self.options.durability).await {
            Ok(()) => {
                let left = {
                    let mut image = blocks::lock(&self.image);
                    image.flushed(&flush);
                    image.is_dirty()
                };
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if !self.witnessed.replace(true) {
                    witness::stored(&name_of(&self.idb));
                }
                Ok(left)
            }
            Err(e) => {
                tracing::warn!(
                    "rekord: a flush to IndexedDB failed (the last flushed state is kept; retried): {e}"
                );
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                blocks::lock(&self.image).failed(flush, js_block_data);
                Err(e)
            }
        }
    }
}

/// A copy of a flush error, for every request it answers.
fn again(e: &Error) -> Error {
    match e {
        Error::QuotaExceeded { bytes } => Error::QuotaExceeded { bytes: *bytes },
        other => Error::Browser {
            operation: "flushing",
            message: match other {
                Error::Browser { message, .. } => message.clone(),
                other => other.to_string(),
            },
        },
    }
}

/// The first of two futures to finish: `Some` with the first's output, `None` if the
/// second finished first.
pub(crate) async fn race<A: Future, B: Future>(a: A, b: B) -> Option<A::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Some(x));
        }
        if b.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &Function, ms: f64) -> JsValue;
}

/// `IDBDatabase.transaction(names, "readwrite", options)` (the options argument is not in
/// web-sys's stable API).
fn transaction_with_options(
    idb: &IdbDatabase,
    names: &Array,
    options: &Object,
) -> std::result::Result<IdbTransaction, JsValue> {
    let f: Function = Reflect::get(idb, &"transaction".into())?.dyn_into()?;
    f.call3(idb, names, &"readwrite".into(), options)?
        .dyn_into::<IdbTransaction>()
}

/// Resolves after `ms` milliseconds (in a page or a worker).
pub(crate) async fn sleep(ms: f64) {
    let p = Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, ms);
    });
    let _ = JsFuture::from(p).await;
}

/// A readable message from a JavaScript error value.
fn message(e: &JsValue) -> String {
    if let Some(d) = e.dyn_ref::<web_sys::DomException>() {
        return format!("{}: {}", d.name(), d.message());
    }
    if let Some(e) = e.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// Whether `e` is IndexedDB's quota error.
fn is_quota(e: &JsValue) -> bool {
    e.dyn_ref::<web_sys::DomException>()
        .is_some_and(|d| d.name() == "QuotaExceededError")
}

fn browser_error(operation: &'static str, e: &JsValue) -> Error {
    Error::Browser {
        operation,
        message: message(e),
    }
}

/// Waits for an IndexedDB request's result.
async fn request(r: &IdbRequest, operation: &'static str) -> Result<JsValue> {
    let p = Promise::new(&mut |resolve, reject| {
        let ok = resolve.clone();
        let r2 = r.clone();
        let on_ok = Closure::once_into_js(move |_: web_sys::Event| {
            let _ = ok.call1(&JsValue::NULL, &r2.result().unwrap_or(JsValue::UNDEFINED));
        });
        let r3 = r.clone();
        let on_err = Closure::once_into_js(move |_: web_sys::Event| {
            let e = r3
                .error()
                .ok()
                .flatten()
                .map(JsValue::from)
                .unwrap_or(JsValue::UNDEFINED);
            let _ = reject.call1(&JsValue::NULL, &e);
        });
        r.set_onsuccess(Some(on_ok.unchecked_ref()));
        r.set_onerror(Some(on_err.unchecked_ref()));
    });
    JsFuture::from(p)
        .await
        .map_err(|e| browser_error(operation, &e))
}

/// Waits for a transaction to complete; its error (or abort) otherwise.
async fn complete(t: &IdbTransaction) -> std::result::Result<(), JsValue> {
    let p = Promise::new(&mut |resolve, reject| {
        let t2 = t.clone();
        let on_done = Closure::once_into_js(move |_: web_sys::Event| {
            let _ = resolve.call0(&JsValue::NULL);
        });
        let reject2 = reject.clone();
        let on_err = Closure::once_into_js(move |_: web_sys::Event| {
            let e = t2
                .error()
                .map(JsValue::from)
                .unwrap_or_else(|| JsValue::from_str("the transaction was aborted"));
            let _ = reject2.call1(&JsValue::NULL, &e);
        });
        t.set_oncomplete(Some(on_done.unchecked_ref()));
        t.set_onerror(Some(on_err.unchecked_ref()));
        t.set_onabort(Some(on_err.unchecked_ref()));
    });
    JsFuture::from(p).await.map(drop)
}

/// The global `indexedDB` (of a page or a worker).
fn factory() -> Result<IdbFactory> {
    Reflect::get(&js_sys::global(), &JsValue::from_str("indexedDB"))
        .ok()
        .and_then(|f| f.dyn_into::<IdbFactory>().ok())
        .ok_or_else(|| Error::Browser {
            operation: "opening",
            message: "IndexedDB is not available here (a private window, or not a browser)".into(),
        })
}

/// The name of the IndexedDB database behind rekord database `name`.
pub(crate) fn idb_name(name: &str) -> String {
    format!("rekord:{name}")
}

async fn open_idb(name: &str) -> Result<IdbDatabase> {
    let req = factory()?
        .open_with_u32(&idb_name(name), 1)
        .map_err(|e| browser_error("opening", &e))?;
    let on_upgrade = Closure::<dyn FnMut(web_sys::Event)>::new({
        let req = req.clone();
        move |_: web_sys::Event| {
            if let Ok(db) = req.result().and_then(|r| r.dyn_into::<IdbDatabase>()) {
                let names = db.object_store_names();
                for store in ["blocks", "meta"] {
                    if !names.contains(store) {
                        let _ = db.create_object_store(store);
                    }
                }
            }
        }
    });
    req.set_onupgradeneeded(Some(on_upgrade.as_ref().unchecked_ref()));
    let db = request(&req, "opening").await?;
    req.set_onupgradeneeded(None);
    drop(on_upgrade);
    let db = db
        .dyn_into::<IdbDatabase>()
        .map_err(|e| browser_error("opening", &e))?;
    // Something outside rekord deletes or upgrades the database (the site's data cleared,
    // another script): this connection closes instead of blocking it. Flushes then fail
    // with IndexedDB's error (`Db::flush_error`, `Db::flush`), never silently.
    let on_change = Closure::<dyn FnMut(web_sys::Event)>::new({
        let db = db.clone();
        move |_: web_sys::Event| {
            tracing::warn!(
                "rekord: IndexedDB database {} is being deleted or upgraded elsewhere; this tab \
                 stops storing it",
                db.name()
            );
            db.close();
        }
    });
    db.set_onversionchange(Some(on_change.as_ref().unchecked_ref()));
    // Lives as long as the connection (a handler per open).
    on_change.forget();
    Ok(db)
}

/// Blocks read from IndexedDB per request while loading (16 MiB): the stored image never
/// sits in JavaScript's memory whole.
const LOAD_BATCH: u32 = 256;

/// Loads and verifies the stored image (empty if nothing was ever flushed), in one read
/// transaction (a snapshot: another tab's flush cannot mix in).
async fn load(idb: &IdbDatabase, name: &str) -> Result<Image> {
    let names = Array::of2(&"blocks".into(), &"meta".into());
    let t = idb
        .transaction_with_str_sequence(&names)
        .map_err(|e| browser_error("loading", &e))?;
    let store = |n: &str| t.object_store(n).map_err(|e| browser_error("loading", &e));
    let meta = store("meta")?;
    let blocks = store("blocks")?;
    let marker = meta
        .get(&JsValue::from_str("marker"))
        .map_err(|e| browser_error("loading", &e))?;
    let marker = request(&marker, "loading").await?;
    let damaged = |source| Error::StoreDamaged {
        name: name.to_owned(),
        source,
    };
    let marker = if marker.is_undefined() || marker.is_null() {
        None
    } else {
        Some(Marker::decode(&bytes_of(&marker)).map_err(damaged)?)
    };
    let never_stored = marker.is_none();
    let deleted = if never_stored {
        let mark = meta
            .get(&JsValue::from_str(DELETED))
            .map_err(|e| browser_error("loading", &e))?;
        !request(&mark, "loading").await?.is_undefined()
    } else {
        false
    };
    // Every stored block, a batch of keys and values at a time, each block copied straight
    // into its place in the image. The image's own checks refuse keys past its end.
    let mut loading = blocks::Loading::new(marker).map_err(damaged)?;
    let mut stored: Vec<std::result::Result<(u64, JsBlock), blocks::LoadError>> = Vec::new();
    let mut from = 0.0f64;
    loop {
        let range = IdbKeyRange::lower_bound(&JsValue::from_f64(from))
            .map_err(|e| browser_error("loading", &e))?;
        let keys = blocks
            .get_all_keys_with_key_and_limit(&range, LOAD_BATCH)
            .map_err(|e| browser_error("loading", &e))?;
        let values = blocks
            .get_all_with_key_and_limit(&range, LOAD_BATCH)
            .map_err(|e| browser_error("loading", &e))?;
        let (keys, values) = (request(&keys, "loading"), request(&values, "loading"));
        let keys = Array::from(&keys.await?);
        let values = Array::from(&values.await?);
        let last = keys.length() < LOAD_BATCH;
        for (k, v) in keys.iter().zip(values.iter()) {
            let block = match k.as_f64().filter(|n| *n >= 0.0 && n.fract() == 0.0) {
                Some(n) => {
                    from = n + 1.0;
                    let v = if v.is_instance_of::<js_sys::ArrayBuffer>() {
                        Uint8Array::new(&v)
                    } else {
                        v.dyn_into::<Uint8Array>().unwrap_or_default()
                    };
                    Ok((n as u64, JsBlock(v)))
                }
                None => Err(blocks::LoadError::Mixed(format!(
                    "a block is stored under key {k:?}, not a block number"
                ))),
            };
            stored.push(block);
        }
        loading.add(std::mem::take(&mut stored)).map_err(damaged)?;
        if last {
            break;
        }
    }
    let image = loading.finish().map_err(damaged)?;
    // Nothing stored (blocks without a marker are refused above as damaged), yet this
    // origin noted that a flush stored it: the browser dropped it. Never opened as a new,
    // empty database in its place.
    if never_stored && deleted {
        // Deleted on purpose, maybe where the note was out of reach.
        witness::forget(name);
    } else if never_stored && witness::was_stored(name) {
        return Err(Error::StoreLost {
            name: name.to_owned(),
        });
    }
    Ok(image)
}

/// A note kept outside IndexedDB, in the origin's `localStorage`, that a flush stored the
/// database: Chromium deletes an origin's whole IndexedDB when it finds it damaged on
/// start (after being killed while writing, for instance), and the database would
/// otherwise open as a new, empty one. Without `localStorage` (a worker, a sandboxed
/// frame) nothing is noted and such a loss is not told apart from a new database.
mod witness {
    use js_sys::Reflect;
    use wasm_bindgen::{JsCast, JsValue};

    fn storage() -> Option<web_sys::Storage> {
        // Reading `localStorage` throws in a sandboxed frame: no note then.
        Reflect::get(&js_sys::global(), &JsValue::from_str("localStorage"))
            .ok()?
            .dyn_into::<web_sys::Storage>()
            .ok()
    }

    fn key(name: &str) -> String {
        format!("rekord:stored:{name}")
    }

    /// Notes that a flush stored database `name`.
    pub(super) fn stored(name: &str) {
        if let Some(s) = storage() {
            // A full localStorage only loses the note (and the loss's detection).
            let _ = s.set_item(&key(name), "1");
        }
    }

    /// Whether a flush stored database `name` here before.
    pub(super) fn was_stored(name: &str) -> bool {
        storage().is_some_and(|s| s.get_item(&key(name)).ok().flatten().is_some())
    }

    /// Forgets the note (the database was deleted on purpose).
    pub(super) fn forget(name: &str) {
        if let Some(s) = storage() {
            let _ = s.remove_item(&key(name));
        }
    }
}

/// The bytes of a stored value (a `Uint8Array` or `ArrayBuffer`; anything else is empty).
fn bytes_of(v: &JsValue) -> Vec<u8> {
    if v.is_instance_of::<Uint8Array>() || v.is_instance_of::<js_sys::ArrayBuffer>() {
        Uint8Array::new(v).to_vec()
    } else {
        Vec::new()
    }
}

/// A block's stored form (header, then data) in a `Uint8Array`: copied once, from the
/// image into JavaScript's memory.
fn js_block(header: &[u8; blocks::BLOCK_HEADER_LEN], data: &[u8]) -> Uint8Array {
    let b = Uint8Array::new_with_length((header.len() + data.len()) as u32);
    b.subarray(0, header.len() as u32).copy_from(header);
    b.subarray(header.len() as u32, b.length()).copy_from(data);
    b
}

/// A stored block's data, copied out of its stored form (`out`: a whole block).
fn js_block_data(b: &Uint8Array, out: &mut [u8]) {
    let at = blocks::BLOCK_HEADER_LEN as u32;
    b.subarray(at, at + out.len() as u32).copy_to(out);
}

/// A block as IndexedDB hands it back (a `Uint8Array`), read straight into the image.
struct JsBlock(Uint8Array);

impl blocks::StoredBlock for JsBlock {
    fn stored_len(&self) -> usize {
        self.0.length() as usize
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.0
            .subarray(offset as u32, (offset + out.len()) as u32)
            .copy_to(out);
    }
}

/// Stores one flush in one readwrite transaction.
async fn store(idb: &IdbDatabase, flush: &Flush<Uint8Array>, durability: Durability) -> Result<()> {
    let fail = |e: &JsValue| {
        if is_quota(e) {
            Error::QuotaExceeded {
                bytes: flush.bytes(),
            }
        } else {
            browser_error("flushing", e)
        }
    };
    let options = Object::new();
    let d = match durability {
        Durability::Strict => "strict",
        Durability::Relaxed => "relaxed",
    };
    Reflect::set(&options, &"durability".into(), &d.into()).map_err(|e| fail(&e))?;
    let names = Array::of2(&"blocks".into(), &"meta".into());
    let t = transaction_with_options(idb, &names, &options).map_err(|e| fail(&e))?;
    let put = |t: &IdbTransaction| -> std::result::Result<(), JsValue> {
        let blocks: IdbObjectStore = t.object_store("blocks")?;
        if let Some(from) = flush.delete_from {
            let range = IdbKeyRange::lower_bound(&JsValue::from_f64(from as f64))?;
            blocks.delete(&range)?;
        }
        for (n, _, block) in &flush.blocks {
            blocks.put_with_key(block, &JsValue::from_f64(*n as f64))?;
        }
        let marker = flush.marker.encode();
        t.object_store("meta")?
            .put_with_key(&Uint8Array::from(&marker[..]), &JsValue::from_str("marker"))?;
        Ok(())
    };
    if let Err(e) = put(&t) {
        let _ = t.abort();
        return Err(fail(&e));
    }
    complete(&t).await.map_err(|e| fail(&e))
}

/// Stores the image `bytes` as the new database `name` (see `Db::import_browser_image`).
async fn import(name: &str, bytes: Vec<u8>) -> Result<()> {
    wait_closed(name).await?;
    // Registered as open while importing: an open of the name waits or is refused.
    let closing = Rc::new(Closing::default());
    let previous = OPEN.with(|o| o.borrow_mut().insert(name.to_owned(), closing.clone()));
    let outcome = import_inner(name, bytes).await;
    closing.close();
    unregister(name, &closing, previous);
    outcome
}

async fn import_inner(name: &str, bytes: Vec<u8>) -> Result<()> {
    let shown = format!("indexeddb:{name}");
    // Held while importing: no tab opens (and creates) the database meanwhile.
    let _lock = WebLock::take_soon(name).await?;
    let image = Image::from_bytes(&bytes).map_err(|e| Error::Browser {
        operation: "importing",
        message: format!("the image does not fit in memory: {e}"),
    })?;
    drop(bytes);
    let image = Arc::new(Mutex::new(image));
    {
        // Checked as an open would check it; dropping it closes redb cleanly.
        let redb = redb_over(name, &image, None)?;
        drop(crate::Db::init(
            redb,
            crate::DbOptions::default(),
            crate::db::Mode::Standalone,
            &shown,
        )?);
    }
    let idb = open_idb(name).await?;
    let outcome = async {
        let t = idb
            .transaction_with_str("meta")
            .map_err(|e| browser_error("importing", &e))?;
        let meta = t
            .object_store("meta")
            .map_err(|e| browser_error("importing", &e))?;
        let marker = meta
            .get(&JsValue::from_str("marker"))
            .map_err(|e| browser_error("importing", &e))?;
        if !request(&marker, "importing").await?.is_undefined() {
            return Err(Error::Browser {
                operation: "importing",
                message: format!(
                    "a database named `{name}` exists in this browser; delete it first (Db::delete_browser)"
                ),
            });
        }
        let taken = blocks::lock(&image).take_flush(js_block);
        match taken {
            Some(flush) => {
                store(&idb, &flush, Durability::Strict).await?;
                witness::stored(name);
                Ok(())
            }
            None => Ok(()),
        }
    }
    .await;
    idb.close();
    outcome
}

/// Deletes the stored database `name` (every block and the marker; an empty IndexedDB
/// database marked deleted stays). Fails with [`Error::Locked`] while it is open in this
/// page.
pub(crate) async fn delete(name: &str) -> Result<()> {
    wait_closed(name).await?;
    // Held while deleting: refused while another tab has the database open (its leader
    // holds the lock), and no tab opens it meanwhile.
    let _lock = WebLock::take_soon(name).await?;
    // Emptied and marked deleted in one transaction, rather than deleted: the note that
    // the database was stored (`witness`) may be out of this context's reach (a worker has
    // no localStorage) or outlive a crash right after, and the mark tells the next open
    // that the database was deleted on purpose. A database the browser dropped is gone
    // whole, mark and all.
    witness::forget(name);
    let idb = open_idb(name).await?;
    let outcome = async {
        let names = Array::of2(&"blocks".into(), &"meta".into());
        let t = transaction_with_options(&idb, &names, &Object::new())
            .map_err(|e| browser_error("deleting", &e))?;
        let empty = |t: &IdbTransaction| -> std::result::Result<(), JsValue> {
            t.object_store("blocks")?.clear()?;
            let meta = t.object_store("meta")?;
            meta.clear()?;
            meta.put_with_key(&JsValue::TRUE, &JsValue::from_str(DELETED))?;
            Ok(())
        };
        if let Err(e) = empty(&t) {
            let _ = t.abort();
            return Err(browser_error("deleting", &e));
        }
        complete(&t)
            .await
            .map_err(|e| browser_error("deleting", &e))
    }
    .await;
    idb.close();
    outcome
}

/// The key in `meta` of the mark [`delete`] leaves: the database was deleted on purpose.
const DELETED: &str = "deleted";

/// Waits until the database `name`, if it was dropped in this page, has stored its last
/// flush and closed; [`Error::Locked`] if it is still open.
async fn wait_closed(name: &str) -> Result<()> {
    let open = OPEN.with(|o| o.borrow().get(name).cloned());
    if let Some(c) = open {
        if !c.closed.get() && !c.dropped.get() {
            return Err(Error::Locked {
                path: format!("indexeddb:{name}"),
                source: redb::DatabaseError::DatabaseAlreadyOpen,
            });
        }
        c.wait().await;
        if let Some(lost) = c.lost.borrow_mut().take() {
            return Err(Error::Browser {
                operation: "opening",
                message: format!(
                    "the last commits made in this page to `{name}` could not be stored before it closed ({lost}); they are lost, the database holds the state of its last stored flush"
                ),
            });
        }
    }
    Ok(())
}

/// The database in the browser.
impl crate::Db {
    /// Opens the database `name` stored in this origin's IndexedDB, creating it if it does
    /// not exist (the browser's counterpart of [`Db::open`](crate::Db)).
    ///
    /// Reads are synchronous and zero-copy from memory, as natively; every commit is atomic
    /// and visible at once, and durable once a flush after it completes: [`Db::flush`]
    /// waits for that, and the [`FlushPolicy`] flushes by itself (by default within 500 ms,
    /// and when the page is hidden or left). A crash of the tab loses at most the commits
    /// after the last completed flush, never part of a commit.
    ///
    /// [`Error::Locked`] if it is already open in this page; [`Error::StoreDamaged`] if the
    /// stored blocks fail their checksums (nothing is changed then); [`Error::StoreLost`]
    /// if the browser dropped a database stored here before, instead of opening an empty
    /// one in its place.
    ///
    /// [`Db::flush`]: crate::Db::flush
    pub async fn open_browser(name: &str) -> Result<crate::Db> {
        crate::Db::open_browser_with(name, crate::DbOptions::default(), BrowserOptions::default())
            .await
    }

    /// [`Db::open_browser`](crate::Db::open_browser) with options.
    pub async fn open_browser_with(
        name: &str,
        options: crate::DbOptions,
        browser: BrowserOptions,
    ) -> Result<crate::Db> {
        let (redb, handle) = open(name, browser).await?;
        let db = crate::Db::init(
            redb,
            options,
            crate::db::Mode::Standalone,
            &format!("indexeddb:{name}"),
        )?;
        let tab = handle.tab();
        // Set once, right after init: nothing else can have set it.
        let _ = db.inner.browser.set(handle);
        if let Some(tab) = tab {
            tabs::attach(tab, &db.inner);
        }
        Ok(db)
    }

    /// Opens (or creates) a synced database in this browser: a replica of a rekord server's
    /// database, stored in IndexedDB like [`Db::open_browser`]'s and synced in the
    /// background over the page's WebTransport ([`SyncConfig::web`](crate::SyncConfig::web)).
    /// It behaves as a native synced database: writes commit locally and never wait on the
    /// network, their outbox entries are stored with them (a reload or a crash keeps what a
    /// flush stored), ids come from ranges the server granted (so records can be created
    /// offline), borrows go to the server ([`Tree::borrow_async`](crate::Tree::borrow_async):
    /// a page never blocks), and other replicas' changes arrive as events.
    ///
    /// Several tabs of the origin share it: the first to open it (the leading tab) holds
    /// the connection and syncs it; in the others every write goes through the leading
    /// tab, borrows are asked through it ([`Tree::borrow_async`](crate::Tree::borrow_async)),
    /// [`Db::sync_status`](crate::Db::sync_status) is its, and other replicas' changes
    /// arrive as events as in it. Ids come from the leading tab's ranges. When the leading
    /// tab closes or crashes, another takes over: it stores its copy and syncs from then
    /// on, with nothing lost that either tab committed and the leading tab sent on (see
    /// ARCHITECTURE.md). A database made by
    /// [`Db::open_browser`] cannot be opened synced, nor the other way round
    /// ([`Error::Mode`]).
    ///
    /// The leading tab stores the database before it connects (the replica's identity,
    /// made with a new database, must outlive the tab before the server grants it
    /// anything): if the browser refuses to store it, the open fails with
    /// [`Error::QuotaExceeded`] or [`Error::Browser`].
    ///
    /// [`Db::open_browser`]: crate::Db::open_browser
    pub async fn open_browser_synced(name: &str, config: crate::SyncConfig) -> Result<crate::Db> {
        crate::Db::open_browser_synced_with(
            name,
            config,
            crate::DbOptions::default(),
            BrowserOptions::default(),
        )
        .await
    }

    /// [`Db::open_browser_synced`](crate::Db::open_browser_synced) with options.
    pub async fn open_browser_synced_with(
        name: &str,
        config: crate::SyncConfig,
        options: crate::DbOptions,
        browser: BrowserOptions,
    ) -> Result<crate::Db> {
        let (redb, handle) = open(name, browser).await?;
        let tab = handle.tab();
        let follower = tab.is_some_and(|t| !tabs::leads(t));
        if let Some(tab) = tab {
            tabs::set_synced(tab, &config);
        }
        let db = crate::Db::init(
            redb,
            options,
            crate::db::Mode::Client,
            &format!("indexeddb:{name}"),
        )?;
        // Set once, right after init: nothing else can have set it.
        let _ = db.inner.browser.set(handle);
        if let Some(tab) = tab {
            tabs::attach(tab, &db.inner);
        }
        if follower {
            // Another tab syncs it: this one goes through that one (and syncs it itself
            // once that one is gone).
            crate::Db::prepare_sync(&db.inner, &config)?;
            return Ok(db);
        }
        // Stored before the server first hears of it: the replica's identity (made with a
        // new database). A tab that died before its first store would come back as another
        // replica, and what the server granted the lost one (a borrow) stayed its forever.
        db.flush().await?;
        crate::Db::start_sync(db, config)
    }

    /// Waits until every commit made so far is stored in IndexedDB. A database in memory
    /// has nothing to store. [`Error::QuotaExceeded`] or [`Error::Browser`] if the browser
    /// refused: the commits stay in memory and the next flush tries again.
    pub async fn flush(&self) -> Result<()> {
        match self.inner.browser.get() {
            Some(h) => h.flush().await,
            None => Ok(()),
        }
    }

    /// The size of the stored image and what waits to be flushed; `None` for a database
    /// that is not stored in the browser.
    pub fn browser_stats(&self) -> Option<BrowserStats> {
        let h = self.inner.browser.get()?;
        let image = blocks::lock(&h.image);
        Some(BrowserStats {
            image_bytes: image.len(),
            unflushed_bytes: image.staged_bytes() as u64,
            memory_bytes: image.memory_bytes() as u64,
            flushes: image.generation(),
        })
    }

    /// Why the last automatic flush failed, if it did and none succeeded since (a quota
    /// exceeded, IndexedDB closed by the browser...). `None` when all is well.
    pub fn flush_error(&self) -> Option<String> {
        self.inner.browser.get().and_then(Handle::last_error)
    }

    /// The database as the bytes of a redb file: what [`Db::open`](crate::Db) opens
    /// natively (the format is the same on every target). [`Error::BatchInProgress`] while
    /// a batch is open. A database not stored in the browser has no image here
    /// ([`Error::Browser`]).
    pub fn export_image(&self) -> Result<Vec<u8>> {
        let Some(h) = self.inner.browser.get() else {
            return Err(Error::Browser {
                operation: "exporting",
                message: "this database is not stored in the browser".into(),
            });
        };
        let image = blocks::lock(&h.image);
        if image.committed().is_none() {
            return Err(Error::BatchInProgress);
        }
        image.committed_vec().ok_or_else(|| Error::Browser {
            operation: "exporting",
            message: format!("no memory for a copy of the {} byte image", image.len()),
        })
    }

    /// Creates the database `name` in this origin's IndexedDB from the bytes of a rekord
    /// database file (a native file, or [`Db::export_image`](crate::Db::export_image)),
    /// stored before this returns. The bytes are checked by opening them first
    /// ([`Error::NotRekord`] and the other open errors); a database of that name must not
    /// exist yet ([`Error::Browser`]: delete it first).
    pub async fn import_browser_image(name: &str, bytes: Vec<u8>) -> Result<()> {
        import(name, bytes).await
    }

    /// Deletes the database `name` from this origin's IndexedDB. [`Error::Locked`] while it
    /// is open in this page or another tab; a database dropped a moment ago is first left
    /// to store its last commits. After [`Error::StoreLost`], this acknowledges the loss:
    /// the next open creates the database anew.
    pub async fn delete_browser(name: &str) -> Result<()> {
        delete(name).await
    }
}
