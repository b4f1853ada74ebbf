//! What the red-team tests of a synced database shared by tabs have in common: a real
//! `rekord-server` process, a native replica, and Chromium's tabs driven through
//! `examples/web/tests/tabs_relay.mjs` (any number of tabs, one JSON command per line).
//!
//! Included by path (`#[path = "common/tabs.rs"] mod tabs;`) next to `common/process.rs`
//! (as `mod process`).
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{APP, ServerProcess, config, identity, token};
use rekord::Db;

#[rekord::record(tree = "parts")]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

pub const LIMIT: Duration = Duration::from_secs(60);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Tabs {
    pub child: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
    pub port: u16,
    pub hashes: Vec<String>,
    pub token: String,
    pub pin: String,
}

impl Tabs {
    pub fn launch(
        page_port: u16,
        port: u16,
        hashes: Vec<String>,
        token: String,
        pin: String,
        page: &str,
    ) -> Tabs {
        let tmp = repo().join("target/chrome-tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut child = Command::new("node")
            .arg(repo().join("examples/web/tests/tabs_relay.mjs"))
            .env("PAGE_PORT", page_port.to_string())
            .env("PAGE", page)
            .env("TMPDIR", &tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut t = Tabs {
            child,
            stdin,
            stdout,
            port,
            hashes,
            token,
            pin,
        };
        t.answer().expect("relay did not start");
        t
    }

    pub fn answer(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("relay said {line:?}: {e}"));
        match (v.get("ok"), v.get("err")) {
            (Some(ok), _) => Ok(ok.clone()),
            (_, Some(err)) => Err(err.as_str().unwrap_or_default().to_owned()),
            _ => panic!("relay said {line:?}"),
        }
    }

    pub fn send(&mut self, cmd: serde_json::Value) -> Result<serde_json::Value, String> {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.answer()
    }

    pub fn eval(&mut self, tab: usize, js: &str) -> Result<serde_json::Value, String> {
        self.send(serde_json::json!({"op": "eval", "tab": tab, "js": js}))
    }

    pub fn ok(&mut self, tab: usize, js: &str) -> serde_json::Value {
        self.eval(tab, js)
            .unwrap_or_else(|e| panic!("tab {tab}: {js}: {e}"))
    }

    pub fn op(&mut self, op: &str, tab: usize) {
        self.send(serde_json::json!({"op": op, "tab": tab}))
            .unwrap_or_else(|e| panic!("{op} {tab}: {e}"));
    }

    pub fn open_js(&self, name: &str) -> String {
        let url = format!("https://127.0.0.1:{}/rekord", self.port);
        format!(
            "window.db = await window.Synced.open({name:?}, {url:?}, {:?}, {APP:?}, {:?}, {:?});",
            self.hashes.join(","),
            self.token,
            self.pin
        )
    }

    pub fn open(&mut self, tab: usize, name: &str) {
        let js = format!("{} return null;", self.open_js(name));
        self.ok(tab, &js);
    }

    /// [`Tabs::open`], asking the server for `ids` ids at a time.
    pub fn open_ranged(&mut self, tab: usize, name: &str, ids: u64) {
        let js = self
            .open_js(name)
            .replace(");", &format!(", false, {ids});"));
        self.ok(tab, &format!("{js} return null;"));
    }

    pub fn status(&mut self, tab: usize) -> serde_json::Value {
        let text = self.ok(tab, "return window.db.status();");
        serde_json::from_str(text.as_str().unwrap()).unwrap()
    }

    pub fn wait_status(
        &mut self,
        tab: usize,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let st = self.status(tab);
            if f(&st) {
                return st;
            }
            assert!(
                start.elapsed() < LIMIT,
                "timed out waiting for {what}: {st}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn create(&mut self, tab: usize, name: &str, qty: u32) -> u64 {
        let start = Instant::now();
        loop {
            let id = self
                .ok(tab, &format!("return window.db.create({name:?}, {qty});"))
                .as_f64()
                .unwrap();
            if id >= 0.0 {
                return id as u64;
            }
            assert!(start.elapsed() < LIMIT, "tab {tab} got no ids");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&mut self, tab: usize) -> u64 {
        self.ok(tab, "return window.db.count();").as_f64().unwrap() as u64
    }

    pub fn get(&mut self, tab: usize, id: u64) -> Option<String> {
        self.ok(tab, &format!("return window.db.get({id});"))
            .as_str()
            .map(str::to_owned)
    }
}

impl Drop for Tabs {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", serde_json::json!({"op": "quit"}));
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(data: &Path, listen: &str, origin_port: u16) -> ServerProcess {
    let origin = format!("http://127.0.0.1:{origin_port}");
    let log = data.with_extension("log");
    ServerProcess::start_with(
        data,
        listen,
        Some(&log),
        "info",
        &["--allow-origin", &origin],
    )
}

/// A server, a native replica and the relay with tab 0 (nothing opened yet).
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub server: Option<ServerProcess>,
    pub addr: std::net::SocketAddr,
    pub page_port: u16,
    /// Kept open for the test (the tree needs its database).
    pub _native: Db,
    pub parts: rekord::Tree<Part>,
    pub tabs: Tabs,
}

impl Setup {
    /// Kills the server and starts it again on the same address (and origin).
    pub fn restart(&mut self) {
        if let Some(old) = self.server.take() {
            old.kill();
        }
        self.server = Some(start(&self.data, &self.addr.to_string(), self.page_port));
    }

    /// Kills the server, puts the backup `from` in place of its database, starts it again.
    pub fn restore_from(&mut self, from: &Path) {
        if let Some(old) = self.server.take() {
            old.kill();
        }
        std::fs::copy(from, self.data.join("server.redb")).unwrap();
        self.server = Some(start(&self.data, &self.addr.to_string(), self.page_port));
    }
}

pub fn setup() -> Setup {
    setup_page("synced.html")
}

/// [`setup`], with every tab opening `page` of `examples/web/www` (`harness.html`: a
/// database shared by tabs, not synced).
pub fn setup_page(page: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let (uuid, fingerprint, hashes) = identity(&data);
    let token = token(&data);
    let page_port = free_port();
    let server = start(&data, "127.0.0.1:0", page_port);
    let addr = server.addr;
    let native = Db::open_synced(dir.path().join("native.rekord"), config(addr, &token)).unwrap();
    native.wait_caught_up(LIMIT).unwrap();
    let parts = native.tree::<Part>().unwrap();
    let tabs = Tabs::launch(
        page_port,
        addr.port(),
        hashes,
        token,
        format!("{uuid} {fingerprint}"),
        page,
    );
    Setup {
        dir,
        data,
        server: Some(server),
        addr,
        page_port,
        _native: native,
        parts,
        tabs,
    }
}

pub fn eventually(what: &str, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > LIMIT {
            eprintln!("TIMED OUT waiting for {what}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Native's parts as (id, name, qty).
pub fn native_parts(parts: &rekord::Tree<Part>) -> Vec<(u64, String, u32)> {
    let mut out = Vec::new();
    for row in parts.iter().unwrap() {
        let r = row.unwrap();
        let p = r.to_owned().unwrap();
        out.push((r.key().id(), p.name, p.qty));
    }
    out
}

/// A tab's parts, as `id name qty holder` lines, through `window.db.get` over the ids in
/// `ids` (the page API has no listing).
pub fn tab_has(tabs: &mut Tabs, tab: usize, ids: &[u64]) -> Vec<(u64, Option<String>)> {
    ids.iter().map(|id| (*id, tabs.get(tab, *id))).collect()
}

/// JS for tab 0: write a part every few ms (`window.__made` gets the ids), and freeze the
/// tab's main thread for good right after rekord posts a message for which `trigger(msg)`
/// holds (`BroadcastChannel.prototype.postMessage` wrapped: nothing runs after that post).
pub fn writer_js(trigger: &str) -> String {
    format!(
        r#"
        window.__made = []; window.__n = 0; window.__armed = false;
        window.__iv = setInterval(() => {{
            const id = window.db.create('s' + (window.__n++), 7);
            if (id >= 0) window.__made.push(id);
        }}, 3);
        const post = BroadcastChannel.prototype.postMessage;
        BroadcastChannel.prototype.postMessage = function (msg) {{
            post.call(this, msg);
            if ({trigger}) {{
                while (true) {{}}
            }}
        }};
        return null;
        "#
    )
}
impl Tabs {
    /// Tab `tab` creates `n` parts `prefix i` (qty i) in one go (retrying ids for at most
    /// 60 s); their ids.
    pub fn burst(&mut self, tab: usize, prefix: &str, n: u32) -> Vec<(u64, String, u32)> {
        let js = format!(
            r#"const out = []; const t0 = Date.now();
            for (let i = 0; i < {n}; i++) {{
                let id = window.db.create({prefix:?} + ' ' + i, i);
                while (id < 0) {{
                    if (Date.now() - t0 > 60000) return 'NOIDS ' + out.join(',');
                    await new Promise((r) => setTimeout(r, 20));
                    id = window.db.create({prefix:?} + ' ' + i, i);
                }}
                out.push(id);
            }}
            return out.join(',');"#
        );
        let v = self.ok(tab, &js);
        let text = v.as_str().unwrap().to_owned();
        assert!(
            !text.starts_with("NOIDS"),
            "tab {tab} ran out of ids: {}",
            &text[..text.len().min(200)]
        );
        text.split(',')
            .filter(|x| !x.is_empty())
            .enumerate()
            .map(|(i, x)| {
                (
                    x.parse::<f64>().unwrap() as u64,
                    format!("{prefix} {i}"),
                    i as u32,
                )
            })
            .collect()
    }

    pub fn send_op(&mut self, v: serde_json::Value) -> serde_json::Value {
        self.send(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
    }
}

/// Waits until native has `expected` (id, name, qty) and as many parts in all as
/// `total`; prints and returns what differs.
pub fn compare(s: &Setup, expected: &[(u64, String, u32)], total: u64) -> Vec<String> {
    let mut bad = Vec::new();
    let mut ids: Vec<u64> = expected.iter().map(|e| e.0).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    if ids.len() != before {
        bad.push(format!(
            "tabs handed out the same id twice: {} ids, {} distinct",
            before,
            ids.len()
        ));
    }
    eventually("native to have every part", || {
        let n = native_parts(&s.parts);
        n.len() as u64 >= total
            && expected
                .iter()
                .all(|(id, name, q)| n.iter().any(|(i, nm, qq)| i == id && nm == name && qq == q))
    });
    let n = native_parts(&s.parts);
    let missing: Vec<_> = expected
        .iter()
        .filter(|(id, name, q)| !n.iter().any(|(i, nm, qq)| i == id && nm == name && qq == q))
        .take(10)
        .map(|(id, name, q)| {
            let at = n
                .iter()
                .find(|(i, _, _)| i == id)
                .map(|(_, nm, q)| format!("{nm} {q}"));
            format!("{id} {name} {q} (native has {at:?})")
        })
        .collect();
    let nmissing = expected
        .iter()
        .filter(|(id, name, q)| !n.iter().any(|(i, nm, qq)| i == id && nm == name && qq == q))
        .count();
    if nmissing > 0 {
        bad.push(format!(
            "{nmissing} parts missing or wrong at native, e.g. {missing:?}"
        ));
    }
    if n.len() as u64 != total {
        bad.push(format!("native has {} parts, expected {total}", n.len()));
    }
    eprintln!(
        "compare: expected {} / total {total}; native {}; problems {bad:?}",
        expected.len(),
        n.len()
    );
    bad
}

pub fn server_log(s: &Setup) {
    let log = std::fs::read_to_string(s.data.with_extension("log")).unwrap_or_default();
    for l in log.lines().filter(|l| {
        l.contains("WARN")
            || l.contains("ERROR")
            || l.contains("reject")
            || l.contains("refus")
            || l.contains("copy")
    }) {
        eprintln!("server: {l}");
    }
}

pub fn online(st: &serde_json::Value) -> bool {
    st["online"] == true && st["outbox"] == 0 && st["caught_up"] == true
}

/// JS that makes every IndexedDB write of this tab fail while `window.__refuse` is true
/// (set here): a leader's flusher never stores.
pub const STORAGE_REFUSES: &str = r#"if (!window.__put) {
        window.__put = IDBObjectStore.prototype.put;
        IDBObjectStore.prototype.put = function (...a) {
            if (window.__refuse) {
                throw new DOMException('red team: storage refused', 'QuotaExceededError');
            }
            return window.__put.apply(this, a);
        };
    }
    window.__refuse = true;
    return null;"#;

/// JS that lets this tab store again (after [`STORAGE_REFUSES`]).
pub const STORAGE_WORKS: &str = "window.__refuse = false; return null;";

/// JS run in a tab before it opens the database: every message its BroadcastChannels
/// receive reaches the handler `ms` later (in order).
pub fn slow_channel_js(ms: u32) -> String {
    format!(
        r#"const d = Object.getOwnPropertyDescriptor(BroadcastChannel.prototype, 'onmessage');
        Object.defineProperty(BroadcastChannel.prototype, 'onmessage', {{
            configurable: true,
            get() {{ return d.get.call(this); }},
            set(f) {{ d.set.call(this, f ? (e) => setTimeout(() => f(e), {ms}) : f); }},
        }});
        return null;"#
    )
}

/// JS that freezes a tab for good (it keeps its Web Lock; close it with `close_tab`).
pub const FREEZE: &str = "setTimeout(() => { while (true) {} }, 0); return null;";

/// Polls the live tabs `live` until one leads; that one.
pub fn wait_leader(s: &mut Setup, live: &[usize]) -> usize {
    let start = Instant::now();
    loop {
        for &t in live {
            if s.tabs.ok(t, "return window.db.leads();") == true {
                return t;
            }
        }
        assert!(start.elapsed() < LIMIT, "no tab of {live:?} took over");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`slow_channel_js`], but the delay is `window.__delay` ms when a message comes
/// (0 at first: the tab opens on time; raise it after with [`slow_now`]).
pub const SWITCHABLE_SLOW: &str = r#"window.__delay = 0;
    const d = Object.getOwnPropertyDescriptor(BroadcastChannel.prototype, 'onmessage');
    Object.defineProperty(BroadcastChannel.prototype, 'onmessage', {
        configurable: true,
        get() { return d.get.call(this); },
        set(f) { d.set.call(this, f ? (e) => { if (window.__delay > 0) setTimeout(() => f(e), window.__delay); else f(e); } : f); },
    });
    return null;"#;

/// JS that sets the delay of [`SWITCHABLE_SLOW`] to `ms`.
pub fn slow_now(ms: u32) -> String {
    format!("window.__delay = {ms}; return null;")
}

/// JS that delays the answer to opening IndexedDB by `window.__openDelay` ms (0 at first):
/// a tab taking over stays in the middle of it that long.
pub const SLOW_OPEN: &str = r#"window.__openDelay = 0;
    const d = Object.getOwnPropertyDescriptor(IDBRequest.prototype, 'onsuccess');
    Object.defineProperty(IDBOpenDBRequest.prototype, 'onsuccess', {
        configurable: true,
        get() { return d.get.call(this); },
        set(f) { const ms = window.__openDelay; d.set.call(this, f && ms > 0 ? (e) => setTimeout(() => f(e), ms) : f); },
    });
    return null;"#;

/// Which of `made` native lacks (or has with other content), waiting at most `secs`.
pub fn native_lacks(s: &Setup, made: &[(u64, String, u32)], secs: u64) -> Vec<String> {
    let start = Instant::now();
    loop {
        let n = native_parts(&s.parts);
        let lack: Vec<String> = made
            .iter()
            .filter(|(id, name, q)| !n.iter().any(|(i, nm, qq)| i == id && nm == name && qq == q))
            .map(|(id, name, q)| {
                let at = n.iter().find(|(i, _, _)| i == id);
                format!("{id} {name} {q} (native {at:?})")
            })
            .collect();
        if lack.is_empty() || start.elapsed() > Duration::from_secs(secs) {
            return lack;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens the database in tab `t` without waiting (`window.__opened` / `window.__openErr`).
pub fn open_bg(s: &mut Setup, t: usize, name: &str) {
    let js = format!(
        "window.__opened = false; window.__openErr = null; (async () => {{ try {{ {} window.__opened = true; }} catch (e) {{ window.__openErr = String(e); }} }})(); return null;",
        s.tabs.open_js(name)
    );
    s.tabs.ok(t, &js);
}

/// Waits for [`open_bg`] in tab `t`: Ok(()) or the error.
pub fn wait_open(s: &mut Setup, t: usize, secs: u64) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let v = s.tabs.ok(
            t,
            "return JSON.stringify([window.__opened, window.__openErr]);",
        );
        let v: serde_json::Value = serde_json::from_str(v.as_str().unwrap()).unwrap();
        if v[0] == true {
            return Ok(());
        }
        if !v[1].is_null() {
            return Err(v[1].to_string());
        }
        if start.elapsed() > Duration::from_secs(secs) {
            return Err("timed out".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
