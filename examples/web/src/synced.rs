//! A synced browser replica for the browser-sync tests and benchmark
//! (`server/tests/browser_sync.rs` drives it through `tests/relay.mjs`): a parts list opened
//! with [`Db::open_browser_synced_with`], reaching `rekord-server` over the page's WebTransport.

use rekord::net::{Pin, WebTarget};
use rekord::{Db, Event, EventKind, Key, SyncConfig, Tree};
use wasm_bindgen::prelude::*;

use crate::Part;

fn js(e: rekord::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// A note edited without borrows by every replica: concurrent edits of different fields
/// merge (three-way), those of the same field keep the later one.
#[rekord::record(tree = "docs", merge = "three-way")]
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// One field.
    pub a: u32,
    /// Another.
    pub b: u32,
}

/// A synced parts list in this tab.
#[wasm_bindgen]
pub struct Synced {
    db: Db,
    parts: Tree<Part>,
    docs: Tree<Doc>,
    events: rekord::Subscription,
    /// Sync events, once asked for (see [`Synced::sync_events`]).
    sync: std::cell::RefCell<Option<rekord::Subscription>>,
}

/// Microseconds since the Unix epoch, from the page's high-resolution clock
/// (`performance.timeOrigin + performance.now()`; microsecond-grained in a cross-origin
/// isolated page).
fn epoch_us() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(js_sys::Date::now() * 1000.0, |p| {
            (p.time_origin() + p.now()) * 1000.0
        })
}

fn key(id: f64) -> Key<Part> {
    Key::new(id as u64, 0)
}

#[wasm_bindgen]
impl Synced {
    /// Opens (or creates) the synced database `name`, reaching the server at `url` (its
    /// WebTransport certificate hashes comma-separated, or `webpki` for a certificate from a
    /// public CA; `pin` is `UUID FINGERPRINT` or empty) as application `app` with `token`;
    /// `relaxed` (optional, default false) stores it with relaxed durability; `range_size`
    /// (optional) is how many ids it asks the server for at a time.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        name: String,
        url: String,
        hashes: String,
        app: String,
        token: String,
        pin: String,
        relaxed: Option<bool>,
        range_size: Option<f64>,
    ) -> Result<Synced, JsError> {
        // A panic's message reaches the console (the driver prints it), not only "unreachable".
        std::panic::set_hook(Box::new(|info| {
            web_sys::console::error_1(&format!("rekord panicked: {info}").into());
        }));
        let target = if hashes == "webpki" {
            WebTarget::webpki(url)
        } else {
            let hashes = hashes
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            WebTarget::new(url, hashes)
        };
        let mut config = SyncConfig::web(target, app, token)
            .timeout(std::time::Duration::from_secs(3))
            .idle_timeout(std::time::Duration::from_secs(3))
            .retry(
                rekord::Retry::default()
                    .initial(std::time::Duration::from_millis(50))
                    .max(std::time::Duration::from_millis(500)),
            );
        if let Some(ids) = range_size {
            config = config.range_size(ids as u64);
        }
        if let Some((uuid, fingerprint)) = pin.split_once(' ') {
            config = config.pin(Pin::parse(uuid, fingerprint).map_err(js)?);
        }
        let browser = rekord::BrowserOptions {
            durability: if relaxed.unwrap_or(false) {
                rekord::Durability::Relaxed
            } else {
                rekord::Durability::Strict
            },
            ..Default::default()
        };
        let db = Db::open_browser_synced_with(&name, config, rekord::DbOptions::default(), browser)
            .await
            .map_err(js)?;
        let events = db.subscribe();
        let parts = db.tree::<Part>().map_err(js)?;
        let docs = db.tree::<Doc>().map_err(js)?;
        Ok(Synced {
            db,
            parts,
            docs,
            events,
            sync: Default::default(),
        })
    }

    /// Whether this tab leads the database (stores it and runs its sync client).
    pub fn leads(&self) -> bool {
        self.db.leads_tab()
    }

    /// The sync state as JSON: online, caught_up, cursor, outbox, rejected, replica,
    /// last_error, refused.
    pub fn status(&self) -> String {
        let Some(st) = self.db.sync_status() else {
            return "null".into();
        };
        let text = |s: &Option<String>| match s {
            Some(s) => format!("{:?}", s),
            None => "null".into(),
        };
        format!(
            r#"{{"online":{},"caught_up":{},"cursor":{},"outbox":{},"rejected":{},"replica":{},"last_error":{},"refused":{}}}"#,
            st.online,
            st.caught_up,
            st.cursor,
            st.outbox,
            st.rejected,
            st.replica.map_or(-1, i64::from),
            text(&st.last_error),
            text(&st.refused),
        )
    }

    /// Creates a part; its id (`-1` while this replica has no ids yet: the first range
    /// comes with the first connection).
    pub fn create(&self, name: String, qty: u32) -> Result<f64, JsError> {
        match self.parts.create(&Part { name, qty }) {
            Ok(k) => Ok(k.id() as f64),
            Err(rekord::Error::IdsExhausted) => Ok(-1.0),
            Err(e) => Err(js(e)),
        }
    }

    /// `name qty holder` of part `id`, or `null`.
    pub fn get(&self, id: f64) -> Result<Option<String>, JsError> {
        let k = key(id);
        if !self.parts.contains(k).map_err(js)? {
            return Ok(None);
        }
        let p = self.parts.get(k).map_err(js)?;
        let holder = self.parts.meta(k).map_err(js)?.holder;
        Ok(Some(format!("{} {} {holder}", p.name, p.qty)))
    }

    /// Borrows part `id` through the server.
    pub async fn borrow(&self, id: f64) -> Result<(), JsError> {
        self.parts.borrow_async(key(id)).await.map_err(js)
    }

    /// Sets part `id`'s quantity (this replica must hold it).
    pub fn update(&self, id: f64, qty: u32) -> Result<(), JsError> {
        self.parts.update(key(id), |p| p.qty = qty).map_err(js)
    }

    /// Returns part `id`'s borrow.
    pub fn give_back(&self, id: f64) -> Result<(), JsError> {
        self.parts.return_borrow(key(id)).map_err(js)
    }

    /// Creates a doc; its id (`-1` while this replica has no ids).
    pub fn create_doc(&self, a: u32, b: u32) -> Result<f64, JsError> {
        match self.docs.create(&Doc { a, b }) {
            Ok(k) => Ok(k.id() as f64),
            Err(rekord::Error::IdsExhausted) => Ok(-1.0),
            Err(e) => Err(js(e)),
        }
    }

    /// Sets field `a` or `b` of doc `id` (no borrow: an optimistic edit).
    pub fn edit_doc(&self, id: f64, field: String, value: u32) -> Result<(), JsError> {
        self.docs
            .update(Key::new(id as u64, 0), |d| {
                if field == "a" {
                    d.a = value;
                } else {
                    d.b = value;
                }
            })
            .map_err(js)
    }

    /// `a b` of doc `id`, or `null`.
    pub fn get_doc(&self, id: f64) -> Result<Option<String>, JsError> {
        let k = Key::new(id as u64, 0);
        if !self.docs.contains(k).map_err(js)? {
            return Ok(None);
        }
        let d = self.docs.get(k).map_err(js)?;
        Ok(Some(format!("{} {}", d.a, d.b)))
    }

    /// How many parts this replica has.
    pub fn count(&self) -> Result<f64, JsError> {
        Ok(self.parts.len().map_err(js)? as f64)
    }

    /// Waits until what was committed is stored in IndexedDB.
    pub async fn flush(&self) -> Result<(), JsError> {
        self.db.flush().await.map_err(js)
    }

    /// Creates a part named `t=<microseconds since the epoch now>` (the benchmark's
    /// propagation probe); its id (`-1` without ids yet).
    pub fn create_stamped(&self, qty: u32) -> Result<f64, JsError> {
        self.create(format!("t={}", epoch_us()), qty)
    }

    /// Waits for `n` parts created by other replicas with a `t=<µs>` name and returns how
    /// long each took to arrive (now minus the stamp, µs), comma-separated.
    pub async fn remote_latencies(&self, n: u32) -> Result<String, JsError> {
        let mut out = Vec::with_capacity(n as usize);
        while out.len() < n as usize {
            let Some(e) = self.events.recv().await else {
                return Err(JsError::new("the database closed"));
            };
            let now = epoch_us();
            let Event::Record(r) = e else { continue };
            if r.kind != EventKind::Created || !r.is_remote(&self.db) {
                continue;
            }
            let part = self.parts.get(Key::new(r.key.id, r.key.rev)).map_err(js)?;
            if let Some(t) = part
                .name
                .strip_prefix("t=")
                .and_then(|t| t.parse::<f64>().ok())
            {
                out.push(format!("{:.1}", now - t));
            }
        }
        Ok(out.join(","))
    }

    /// Record events received from other replicas since the last call, as
    /// `kind id qty` lines (quantities as this replica has them now).
    pub fn remote_events(&self) -> Result<String, JsError> {
        let mut out = String::new();
        while let Some(e) = self.events.try_next() {
            if let Event::Record(r) = e
                && r.is_remote(&self.db)
            {
                let kind = match r.kind {
                    EventKind::Created => "created",
                    EventKind::Updated => "updated",
                    _ => "other",
                };
                let qty = self
                    .parts
                    .get(Key::new(r.key.id, r.key.rev))
                    .map_or(u32::MAX, |p| p.qty);
                out.push_str(&format!("{kind} {} {qty}\n", r.key.id));
            }
        }
        Ok(out)
    }

    /// The sync events heard since the last call (in a tab that goes through another, the
    /// leading tab's), as their kinds, one per line (`Connected`, `Pushed`, ...). The first
    /// call starts listening (and answers nothing).
    pub fn sync_events(&self) -> String {
        let mut out = String::new();
        let mut sync = self.sync.borrow_mut();
        let Some(sync) = sync.as_ref() else {
            *sync = Some(self.db.subscribe());
            return out;
        };
        while let Some(e) = sync.try_next() {
            if let Event::Sync(s) = e {
                let text = format!("{s:?}");
                let kind: String = text.chars().take_while(|c| c.is_alphanumeric()).collect();
                out.push_str(&kind);
                out.push('\n');
            }
        }
        out
    }
}
