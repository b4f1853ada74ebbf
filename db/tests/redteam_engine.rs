//! Red team of the sans-IO sync engine ([`rekord::sync::engine::Engine`]): a careless or
//! hostile driver (odd call orders, stale connections, time backwards or at the end of
//! time, a driver that never polls, frames larger than the in-memory pipe), a hostile
//! server behind `handle_frame` (wrong hellos, unknown request ids, garbage pushes, wrong
//! answer counts, a restore), the seams (close, drop, reopen, a second opener, an exit right
//! after a merge) and the timers (a deadline whenever the client waits, progress at it).
//! The simulated server and the `Pair` driver are those of `db/tests/engine.rs`, grown a
//! little (schemas, optimistic edits that conflict, reclaims, a hook that rewrites answers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rekord::net::Proved;
use rekord::proto::{
    Change, ChangeKind, Current, EntryOutcome, Frame, PROTOCOL_VERSION, Push, Refusal, RemoteError,
    Request, Response, Revision, Sequenced, ServerHello,
};
use rekord::sync::engine::{Engine, Output};
use rekord::{Event, Key, Record as _, SyncConfig, SyncEvent};

#[path = "common/frame_log.rs"]
mod frame_log;
use frame_log::{parse_frames, print_frame};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

/// A record of an optimistic tree merged field by field.
#[rekord::record(tree = "docs", version = 1, merge = "three-way")]
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub a: u32,
    pub b: u32,
}

const SERVER: [u8; 16] = [7; 16];
const REPLICA: u32 = 3;
/// Another replica of the simulated server.
const OTHER: u32 = 9;
const TIMEOUT: Duration = Duration::from_secs(2);

fn config() -> SyncConfig {
    SyncConfig::new("127.0.0.1:9".parse().unwrap(), "workshop", "token")
        .timeout(TIMEOUT)
        .idle_timeout(Duration::from_secs(5))
}

type Tamper = Box<dyn FnMut(&Frame, Vec<Frame>) -> Vec<Frame>>;

/// The simulated server of `engine.rs`, with schemas, conflicts of optimistic edits
/// (an edit based before another replica's change of the record is refused with the
/// current version), reclaims, and pushes of everything logged since the last frame.
#[derive(Default)]
struct Sim {
    log: Vec<Sequenced>,
    next_id: u64,
    outcomes: BTreeMap<u64, EntryOutcome>,
    applied: u64,
    heard: Vec<String>,
    /// Log entries up to this seq were pushed on the current connection.
    pushed: u64,
    schemas: BTreeMap<(String, u32), String>,
    /// The history the server announces.
    history: Vec<(u64, u64)>,
}

impl Sim {
    fn new() -> Sim {
        let mut schemas = BTreeMap::new();
        schemas.insert(
            ("parts".to_string(), 1),
            rekord::Schema::of::<Part>().to_ron().unwrap(),
        );
        schemas.insert(
            ("docs".to_string(), 1),
            rekord::Schema::of::<Doc>().to_ron().unwrap(),
        );
        Sim {
            next_id: 1_000,
            history: vec![(1, 0)],
            schemas,
            ..Sim::default()
        }
    }

    fn head(&self) -> u64 {
        self.log.last().map_or(0, |s| s.seq)
    }

    /// Logs a change of another replica (pushed with the server's next frames).
    fn inject(&mut self, origin: u32, change: Change) -> u64 {
        let seq = self.head() + 1;
        self.log.push(Sequenced {
            seq,
            origin,
            change,
        });
        seq
    }

    /// The latest data of a record: (seq, origin, version, data).
    fn latest(&self, tree: &str, id: u64, upto: u64) -> Option<(u64, u32, u32, Vec<u8>)> {
        self.log
            .iter()
            .rev()
            .filter(|s| s.seq <= upto && s.change.tree == tree && s.change.id == id)
            .find_map(|s| match &s.change.kind {
                ChangeKind::Put { version, data } | ChangeKind::Edit { version, data, .. } => {
                    Some((s.seq, s.origin, *version, data.clone()))
                }
                _ => None,
            })
    }

    /// Who holds a record (0: nobody).
    fn holder(&self, tree: &str, id: u64) -> u32 {
        self.log
            .iter()
            .rev()
            .filter(|s| s.change.tree == tree && s.change.id == id)
            .find_map(|s| match s.change.kind {
                ChangeKind::Borrow { holder } => Some(holder),
                _ => None,
            })
            .unwrap_or(0)
    }

    fn conflict(&self, c: &Change) -> Option<Current> {
        let ChangeKind::Edit { base, .. } = &c.kind else {
            return None;
        };
        let newer = self.log.iter().any(|s| {
            s.seq > *base && s.origin != REPLICA && s.change.tree == c.tree && s.change.id == c.id
        });
        if !newer {
            return None;
        }
        let (seq, origin, version, data) = self.latest(&c.tree, c.id, u64::MAX)?;
        let base = self.latest(&c.tree, c.id, *base).map(|(_, _, v, d)| (v, d));
        Some(Current {
            tree: c.tree.clone(),
            id: c.id,
            rev: c.rev,
            seq,
            origin,
            hlc: 0,
            version,
            data,
            base,
        })
    }

    fn answer(&mut self, frame: &Frame) -> Vec<Frame> {
        self.heard.push(describe(frame));
        let mut out = Vec::new();
        match frame {
            Frame::ClientHello(h) => {
                out.push(Frame::ServerHello(ServerHello {
                    protocol: h.protocol,
                    app: h.app.clone(),
                    server: SERVER,
                    replica: REPLICA,
                    head: self.head(),
                    history: self.history.clone(),
                    read: None,
                    common: None,
                }));
                self.pushed = h.cursor;
            }
            Frame::Request { id, body } => {
                let body = match body {
                    Request::Ping => Response::Pong,
                    Request::Ranges { want } => {
                        let range = (self.next_id, self.next_id + want);
                        self.next_id += want;
                        Response::Ranges(vec![range])
                    }
                    Request::PutSchema {
                        tree,
                        version,
                        schema,
                    } => {
                        self.schemas
                            .insert((tree.clone(), *version), schema.clone());
                        Response::Accepted { seq: 0 }
                    }
                    Request::Schema { tree, version } => {
                        match self.schemas.get(&(tree.clone(), *version)) {
                            Some(s) => Response::Schema(s.clone()),
                            None => Response::Error(RemoteError::NotFound),
                        }
                    }
                    Request::Reclaim { .. } => Response::Reclaimed { refused: vec![] },
                    Request::Fetch { tree, id } => Response::Record {
                        holder: self.holder(tree, *id),
                        revisions: self
                            .latest(tree, *id, u64::MAX)
                            .map(|(seq, by, version, data)| Revision {
                                rev: 0,
                                version,
                                released: false,
                                state: 0,
                                data,
                                changed: seq,
                                by,
                            })
                            .into_iter()
                            .collect(),
                    },
                    Request::Borrow { tree, id } => match self.holder(tree, *id) {
                        h if h != 0 && h != REPLICA => {
                            Response::Error(RemoteError::AlreadyBorrowed {
                                holder: h,
                                name: None,
                            })
                        }
                        _ => {
                            let seq = self.inject(
                                0,
                                Change {
                                    tree: tree.clone(),
                                    id: *id,
                                    rev: 0,
                                    kind: ChangeKind::Borrow { holder: REPLICA },
                                },
                            );
                            Response::Granted { seq }
                        }
                    },
                    Request::Entries { first, entries } => {
                        let mut outcomes = Vec::new();
                        let mut conflicted = false;
                        for (n, changes) in (*first..).zip(entries) {
                            if let Some(o) = self.outcomes.get(&n) {
                                outcomes.push(o.clone());
                                continue;
                            }
                            if let Some(current) = changes.iter().find_map(|c| self.conflict(c)) {
                                conflicted = true;
                                outcomes.push(EntryOutcome::Rejected(RemoteError::Conflict(
                                    Box::new(current),
                                )));
                                continue;
                            }
                            if conflicted {
                                outcomes.push(EntryOutcome::Skipped);
                                continue;
                            }
                            self.applied += 1;
                            for change in changes {
                                self.inject(REPLICA, change.clone());
                            }
                            let o = EntryOutcome::Applied { seq: self.head() };
                            self.outcomes.insert(n, o.clone());
                            outcomes.push(o);
                        }
                        Response::Entries(outcomes)
                    }
                    other => Response::Error(RemoteError::Invalid(format!(
                        "the simulated server does not do {other:?}"
                    ))),
                };
                out.push(Frame::Response { id: *id, body });
            }
            other => panic!("a client sent {other:?}"),
        }
        let missed: Vec<Sequenced> = self
            .log
            .iter()
            .filter(|s| s.seq > self.pushed)
            .cloned()
            .collect();
        if !missed.is_empty() {
            out.push(Frame::Push(Push::Changes(missed)));
        }
        if matches!(frame, Frame::ClientHello(_)) {
            out.push(Frame::Push(Push::CaughtUp { head: self.head() }));
        }
        self.pushed = self.head();
        out
    }
}

fn describe(frame: &Frame) -> String {
    match frame {
        Frame::ClientHello(h) => format!("hello cursor {} last_entry {}", h.cursor, h.last_entry),
        Frame::Request { body, .. } => match body {
            Request::Entries { first, entries } => {
                let kinds: Vec<String> = entries
                    .iter()
                    .flatten()
                    .map(|c| format!("{} {}/{}", kind(&c.kind), c.tree, c.id))
                    .collect();
                format!("entries from {first}: {kinds:?}")
            }
            Request::Ranges { want } => format!("ranges {want}"),
            Request::PutSchema { tree, version, .. } => format!("schema {tree} v{version}"),
            Request::Ping => "ping".into(),
            Request::Borrow { tree, id } => format!("borrow {tree}/{id}"),
            other => format!("{:.80}", format!("{other:?}")),
        },
        other => format!("{:.80}", format!("{other:?}")),
    }
}

fn kind(k: &ChangeKind) -> &'static str {
    match k {
        ChangeKind::Put { .. } => "put",
        ChangeKind::Edit { .. } => "edit",
        ChangeKind::Remove => "remove",
        _ => "other",
    }
}

struct Pair {
    engine: Engine,
    sim: Sim,
    conn: Option<u64>,
    down: bool,
    deaf: bool,
    connects: u64,
    /// Rewrites the server's answers to a frame.
    tamper: Option<Tamper>,
}

impl Pair {
    fn open(path: &Path, sim: Sim, now: Instant) -> Pair {
        Pair::with(Engine::open(path, config(), now).unwrap(), sim)
    }

    fn with(engine: Engine, sim: Sim) -> Pair {
        Pair {
            engine,
            sim,
            conn: None,
            down: false,
            deaf: false,
            connects: 0,
            tamper: None,
        }
    }

    fn settle(&mut self) {
        assert!(self.settle_until(|_| false).is_none());
    }

    /// Settles, giving up after `n` frames sent to the server; whether it went idle.
    fn settle_at_most(&mut self, n: usize) -> bool {
        let mut sent = 0;
        let stopped = self.settle_until(|_| {
            sent += 1;
            sent > n
        });
        stopped.is_none()
    }

    /// Like `settle`, but stops at the first frame the client sends that `stop` picks
    /// (not handed to the server), and returns it.
    fn settle_until(&mut self, mut stop: impl FnMut(&Frame) -> bool) -> Option<(u64, Frame)> {
        for _ in 0..20_000 {
            let out = self.engine.poll_output()?;
            match out {
                Output::Connect { conn, dial } => {
                    self.connects += 1;
                    if self.down {
                        self.engine.handle_closed(conn);
                    } else {
                        self.engine
                            .handle_connected(conn, Proved::trusted(dial.pin.as_ref()));
                        self.conn = Some(conn);
                    }
                }
                Output::Send { conn, frame } => {
                    if self.down || self.conn != Some(conn) {
                        continue;
                    }
                    if stop(&frame) {
                        return Some((conn, frame));
                    }
                    let mut answers = self.sim.answer(&frame);
                    if let Some(t) = self.tamper.as_mut() {
                        answers = t(&frame, answers);
                    }
                    if self.deaf {
                        continue;
                    }
                    for answer in answers {
                        self.engine.handle_frame(conn, &answer).unwrap();
                    }
                }
                Output::Close { conn, .. } => {
                    if self.conn == Some(conn) {
                        self.conn = None;
                    }
                }
                Output::Transmit { .. } => unreachable!("an engine that hands frames"),
            }
        }
        panic!("the engine never stopped sending");
    }

    fn next_wakeup(&mut self, limit: Duration) -> Instant {
        let now = self.engine.now();
        let at = self
            .engine
            .poll_timeout()
            .unwrap_or(now + limit)
            .min(now + limit);
        self.engine.handle_timeout(at);
        self.settle();
        at
    }

    fn run_for(&mut self, span: Duration) {
        let end = self.engine.now() + span;
        while self.engine.now() < end {
            let left = end - self.engine.now();
            self.next_wakeup(left);
        }
    }

    fn status(&self) -> rekord::SyncStatus {
        self.engine.db().unwrap().sync_status().unwrap()
    }

    fn create(&mut self, name: &str, qty: u32) -> u64 {
        let parts = self.engine.db().unwrap().tree::<Part>().unwrap();
        parts
            .create(&Part {
                name: name.into(),
                qty,
            })
            .unwrap()
            .id()
    }

    fn into_parts(self) -> (Engine, Sim) {
        (self.engine, self.sim)
    }
}

fn is_entries(f: &Frame) -> bool {
    matches!(
        f,
        Frame::Request {
            body: Request::Entries { .. },
            ..
        }
    )
}

/// Ids of parts the server logged a put of, with how many times.
fn puts_on_server(sim: &Sim) -> BTreeMap<u64, u32> {
    let mut on = BTreeMap::new();
    for s in &sim.log {
        if s.origin == REPLICA && matches!(s.change.kind, ChangeKind::Put { .. }) {
            *on.entry(s.change.id).or_default() += 1;
        }
    }
    on
}

fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    f.poll(&mut cx)
}

/// The number of outputs the engine holds for its driver (from its `Debug`).
fn queued_outputs(engine: &Engine) -> usize {
    let text = format!("{engine:?}");
    let at = text.find("outputs: ").unwrap() + "outputs: ".len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn part_put(id: u64, part: &Part) -> Change {
    Change {
        tree: "parts".into(),
        id,
        rev: 0,
        kind: ChangeKind::Put {
            version: 1,
            data: part.__encode(Vec::new()).unwrap(),
        },
    }
}

fn fresh() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rekord");
    (dir, path)
}

/// A session up and caught up.
fn online(path: &Path) -> Pair {
    let mut pair = Pair::open(path, Sim::new(), Instant::now());
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.caught_up, "{st:?}");
    pair
}

// ---------------------------------------------------------------------------------------
// A driver calling things in odd orders
// ---------------------------------------------------------------------------------------

#[test]
fn frames_and_closes_for_stale_unknown_or_future_connections_are_ignored() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let conn = pair.conn.unwrap();
    for c in [0, conn + 1, conn + 100, u64::MAX] {
        pair.engine
            .handle_frame(c, &Frame::Push(Push::CaughtUp { head: 999 }))
            .unwrap();
        pair.engine
            .handle_frame(
                c,
                &Frame::Response {
                    id: 77,
                    body: Response::Pong,
                },
            )
            .unwrap();
        pair.engine.handle_closed(c);
    }
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.caught_up && st.cursor == 0, "{st:?}");
    assert_eq!(pair.conn, Some(conn), "the connection stayed");

    // Closed twice, then a close for the next number before the engine asked for it.
    pair.engine.handle_closed(conn);
    pair.engine.handle_closed(conn);
    pair.conn = None;
    pair.engine.handle_closed(conn + 1);
    pair.settle();
    assert!(!pair.status().online);
    pair.run_for(Duration::from_secs(30));
    let st = pair.status();
    assert!(st.online, "{st:?}");
    let id = pair.create("bolt", 1);
    pair.settle();
    assert_eq!(pair.status().outbox, 0);
    assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1));
}

#[test]
fn time_going_backwards_changes_nothing() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let now = pair.engine.now();
    let due = pair.engine.poll_timeout();
    assert!(due.is_some());
    for back in [Duration::from_millis(1), Duration::from_secs(3600)] {
        if let Some(t) = now.checked_sub(back) {
            pair.engine.handle_timeout(t);
            pair.settle();
        }
    }
    assert_eq!(pair.engine.now(), now);
    assert_eq!(pair.engine.poll_timeout(), due);
    assert!(pair.status().online);
}

#[test]
fn a_jump_a_century_ahead_reconnects_and_loses_nothing() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    pair.down = true;
    let id = pair.create("nut", 2);
    pair.settle();
    let far = pair.engine.now() + Duration::from_secs(100 * 365 * 86_400);
    pair.engine.handle_timeout(far);
    pair.settle();
    assert!(!pair.status().online);
    assert_eq!(pair.status().outbox, 1);
    pair.down = false;
    pair.run_for(Duration::from_secs(30));
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1));
}

/// The latest instant `Instant` can say (to the second).
fn last_instant(from: Instant) -> Instant {
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if from.checked_add(Duration::from_secs(mid)).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    from + Duration::from_secs(lo)
}

/// A driver hands the engine a time at the very end of what an `Instant` can say (a
/// "never" computed as `now + Duration::MAX`-ish, saturated): the client's own
/// `now + duration` must not overflow and panic inside the engine's call.
#[test]
fn a_time_at_the_end_of_instant_never_panics() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let end = last_instant(pair.engine.now());
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        pair.engine.handle_timeout(end - Duration::from_secs(120));
        pair.settle();
        for _ in 0..2_000 {
            let Some(at) = pair.engine.poll_timeout() else {
                break;
            };
            pair.engine.handle_timeout(at);
            pair.settle();
        }
    }));
    assert!(
        r.is_ok(),
        "the engine panicked on a time {:?} before the end of Instant",
        end.saturating_duration_since(pair.engine.now())
    );
}

/// A careless configuration: "never time out" as `u64::MAX` seconds.
#[test]
fn a_timeout_of_u64_max_seconds_never_panics() {
    let (_dir, path) = fresh();
    let cfg = config()
        .timeout(Duration::from_secs(u64::MAX))
        .idle_timeout(Duration::from_secs(u64::MAX));
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut pair = Pair::with(
            Engine::open(&path, cfg, Instant::now()).unwrap(),
            Sim::new(),
        );
        pair.settle();
        assert!(pair.status().online);
        pair.create("bolt", 1);
        pair.settle();
        assert_eq!(pair.status().outbox, 0);
    }));
    assert!(r.is_ok(), "a huge timeout panicked");
}

#[test]
fn a_driver_that_does_not_poll_while_the_application_writes_loses_nothing() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let mut ids = Vec::new();
    for i in 0..2_000u32 {
        match parts.create(&Part {
            name: format!("p{i}"),
            qty: i,
        }) {
            Ok(k) => ids.push(k.id()),
            // Out of ids: the client has not run to fetch more.
            Err(rekord::Error::IdsExhausted) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(pair.engine.wants_to_run());
    assert_eq!(pair.status().outbox, ids.len() as u64);
    assert_eq!(queued_outputs(&pair.engine), 0, "nothing ran yet");
    // Time passes, the driver still never asks for outputs.
    for _ in 0..50 {
        let at = pair.engine.now() + Duration::from_millis(10);
        pair.engine.handle_timeout(at);
    }
    let q = queued_outputs(&pair.engine);
    assert!(q < 10, "{q} outputs queued");
    pair.settle();
    pair.run_for(Duration::from_secs(5));
    assert_eq!(pair.status().outbox, 0);
    let on = puts_on_server(&pair.sim);
    for id in &ids {
        assert_eq!(on.get(id), Some(&1), "part {id}");
    }
}

/// A driver that stops reading outputs for a virtual day while the server is gone: what the
/// engine queues for it (connects, hellos and closes of connections long over) must not grow with
/// the time that passes.
#[test]
fn outputs_of_a_driver_that_never_polls_stay_bounded() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let mut max = 0;
    let end = pair.engine.now() + Duration::from_secs(86_400);
    while pair.engine.now() < end {
        let at = pair
            .engine
            .poll_timeout()
            .unwrap_or(pair.engine.now() + Duration::from_secs(1));
        pair.engine.handle_timeout(at);
        max = max.max(queued_outputs(&pair.engine));
    }
    eprintln!("outputs queued after a virtual day: {max}");
    assert!(
        max < 100,
        "{max} outputs queued for a driver that did not poll for a virtual day"
    );
}

#[test]
fn a_push_many_times_the_pipe_is_applied_whole() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let conn = pair.conn.unwrap();
    let big = "x".repeat(3 << 20);
    let mut entries = Vec::new();
    for i in 0..4u64 {
        let change = part_put(
            50_000 + i,
            &Part {
                name: big.clone(),
                qty: i as u32,
            },
        );
        let seq = pair.sim.inject(OTHER, change.clone());
        entries.push(Sequenced {
            seq,
            origin: OTHER,
            change,
        });
    }
    pair.sim.pushed = pair.sim.head();
    // 12 MiB in one frame.
    pair.engine
        .handle_frame(conn, &Frame::Push(Push::Changes(entries)))
        .unwrap();
    pair.settle();
    let st = pair.status();
    assert_eq!(st.cursor, 4, "{st:?}");
    assert!(st.online);
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    for i in 0..4u64 {
        let p = parts.get(Key::new(50_000 + i, 0)).unwrap();
        assert_eq!((p.name.len(), p.qty), (3 << 20, i as u32));
    }
}

/// A frame over the protocol's limit cannot be handed over (`handle_frame` fails); the
/// connection it came on must not go on as if it had arrived: a later push on it would move
/// the cursor past the changes the lost one carried, and they would never be fetched again.
#[test]
fn an_undeliverable_frame_leaves_no_gap_in_the_changes() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let conn = pair.conn.unwrap();
    let big = "y".repeat(6 << 20);
    let mut entries = Vec::new();
    for i in 0..3u64 {
        let change = part_put(
            60_000 + i,
            &Part {
                name: big.clone(),
                qty: 0,
            },
        );
        let seq = pair.sim.inject(OTHER, change.clone());
        entries.push(Sequenced {
            seq,
            origin: OTHER,
            change,
        });
    }
    let err = pair
        .engine
        .handle_frame(conn, &Frame::Push(Push::Changes(entries)));
    assert!(err.is_err(), "18 MiB is over MAX_FRAME");
    // The server goes on: the next change.
    let change = part_put(
        60_010,
        &Part {
            name: "small".into(),
            qty: 1,
        },
    );
    let seq = pair.sim.inject(OTHER, change.clone());
    pair.sim.pushed = seq;
    let _ = pair.engine.handle_frame(
        conn,
        &Frame::Push(Push::Changes(vec![Sequenced {
            seq,
            origin: OTHER,
            change,
        }])),
    );
    pair.settle();
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let st = pair.status();
    let missing: Vec<u64> = (0..3)
        .map(|i| 60_000 + i)
        .filter(|id| !parts.contains(Key::new(*id, 0)).unwrap())
        .collect();
    assert!(
        st.cursor < 4 || missing.is_empty(),
        "the cursor moved to {} past changes never applied: {missing:?}",
        st.cursor
    );
}

#[test]
fn a_create_many_times_the_pipe_goes_out_in_one_frame() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let id = pair.create(&"z".repeat(6 << 20), 7);
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1));
    // Over the record limit: refused at once, nothing hangs.
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let r = parts.create(&Part {
        name: "w".repeat(9 << 20),
        qty: 0,
    });
    pair.settle();
    if r.is_ok() {
        pair.run_for(Duration::from_secs(5));
    }
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{r:?} {st:?}");
}

#[test]
fn thousands_of_frames_at_once() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let conn = pair.conn.unwrap();
    let started = std::time::Instant::now();
    for i in 0..3_000u64 {
        let change = part_put(
            70_000 + i,
            &Part {
                name: format!("o{i}"),
                qty: 0,
            },
        );
        let seq = pair.sim.inject(OTHER, change.clone());
        pair.engine
            .handle_frame(
                conn,
                &Frame::Push(Push::Changes(vec![Sequenced {
                    seq,
                    origin: OTHER,
                    change,
                }])),
            )
            .unwrap();
    }
    pair.sim.pushed = pair.sim.head();
    pair.settle();
    assert_eq!(pair.status().cursor, 3_000);
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    assert_eq!(parts.len().unwrap(), 3_000);
    eprintln!("3,000 frames in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// A hostile server
// ---------------------------------------------------------------------------------------

/// A session up, then a create while the network is down: one entry waits.
fn with_one_waiting(path: &Path) -> (Pair, u64) {
    let mut pair = online(path);
    pair.down = true;
    let id = pair.create("nut", 1);
    pair.settle();
    if let Some(conn) = pair.conn.take() {
        pair.engine.handle_closed(conn);
    }
    pair.settle();
    assert_eq!(pair.status().outbox, 1);
    (pair, id)
}

fn bad_hello(kind: &'static str) -> Tamper {
    Box::new(move |frame, mut answers| {
        if !matches!(frame, Frame::ClientHello(_)) {
            return answers;
        }
        let Frame::ServerHello(h) = &mut answers[0] else {
            panic!()
        };
        match kind {
            "app" => h.app = "another-app".into(),
            "server" => h.server = [8; 16],
            "protocol" => h.protocol = PROTOCOL_VERSION + 1,
            "refused" => {
                return vec![Frame::Refused(Refusal::BadToken)];
            }
            "push-first" => {
                answers.insert(0, Frame::Push(Push::CaughtUp { head: 0 }));
            }
            "request" => {
                answers.insert(
                    0,
                    Frame::Request {
                        id: 1,
                        body: Request::Ping,
                    },
                );
            }
            "replica" => h.replica = REPLICA + 1,
            _ => unreachable!(),
        }
        answers
    })
}

#[test]
fn wrong_hellos_are_reported_and_nothing_waiting_is_lost() {
    for kind in [
        "app",
        "server",
        "protocol",
        "refused",
        "push-first",
        "request",
        "replica",
    ] {
        let (_dir, path) = fresh();
        let (mut pair, id) = with_one_waiting(&path);
        pair.down = false;
        pair.tamper = Some(bad_hello(kind));
        pair.run_for(Duration::from_secs(30));
        let st = pair.status();
        assert!(!st.online, "{kind}: {st:?}");
        assert!(st.last_error.is_some(), "{kind}: {st:?}");
        assert_eq!(st.outbox, 1, "{kind}: {st:?}");
        eprintln!("{kind}: {:?} / refused {:?}", st.last_error, st.refused);
        // The server mends its ways.
        pair.tamper = None;
        pair.run_for(Duration::from_secs(30));
        let st = pair.status();
        assert!(st.online && st.outbox == 0, "{kind}: {st:?}");
        assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1), "{kind}");
    }
}

#[test]
fn a_response_to_an_unknown_request_ends_the_session_cleanly() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let conn = pair.conn.unwrap();
    pair.engine
        .handle_frame(
            conn,
            &Frame::Response {
                id: 999_999,
                body: Response::Pong,
            },
        )
        .unwrap();
    pair.settle();
    let st = pair.status();
    assert!(!st.online, "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("unexpected"),
        "{st:?}"
    );
    pair.run_for(Duration::from_secs(30));
    let id = pair.create("x", 1);
    pair.settle();
    assert!(pair.status().online);
    assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1));
}

#[test]
fn pushes_of_unknown_trees_or_garbage_never_panic() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let conn = pair.conn.unwrap();
    // Garbage data for a tree whose schema the replica has.
    let garbage = Change {
        tree: "parts".into(),
        id: 80_000,
        rev: 0,
        kind: ChangeKind::Put {
            version: 1,
            data: vec![0xff; 7],
        },
    };
    let seq = pair.sim.inject(OTHER, garbage.clone());
    pair.sim.pushed = seq;
    pair.engine
        .handle_frame(
            conn,
            &Frame::Push(Push::Changes(vec![Sequenced {
                seq,
                origin: OTHER,
                change: garbage,
            }])),
        )
        .unwrap();
    pair.settle();
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
        let got = parts.get(Key::new(80_000, 0));
        let all: Vec<_> = parts.iter().unwrap().collect();
        (format!("{got:?}"), all.len())
    }));
    eprintln!("garbage: {r:?}; status {:?}", pair.status());
    assert!(r.is_ok(), "reading garbage a server pushed panicked");

    // A tree nobody knows, of a version no schema has: the push cannot be applied (no
    // schema): reported, the session ends, the outbox still flows.
    let ghost = Change {
        tree: "ghost".into(),
        id: 5,
        rev: 0,
        kind: ChangeKind::Put {
            version: 3,
            data: vec![1, 2, 3],
        },
    };
    let conn = pair.conn.unwrap();
    pair.engine
        .handle_frame(
            conn,
            &Frame::Push(Push::Changes(vec![Sequenced {
                seq: pair.sim.head() + 1,
                origin: OTHER,
                change: ghost,
            }])),
        )
        .unwrap();
    pair.settle();
    let st = pair.status();
    eprintln!("ghost: {st:?}");
    assert!(st.last_error.is_some() || st.online);
    pair.run_for(Duration::from_secs(30));
    let id = pair.create("after", 1);
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1));
}

#[test]
fn caught_up_below_the_cursor_and_a_hello_behind_it() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    for i in 0..3 {
        pair.create(&format!("p{i}"), i);
    }
    pair.settle();
    assert_eq!(pair.status().cursor, 3);
    let conn = pair.conn.unwrap();
    pair.engine
        .handle_frame(conn, &Frame::Push(Push::CaughtUp { head: 0 }))
        .unwrap();
    pair.settle();
    assert_eq!(pair.status().cursor, 3);
    // A hello whose head is below the cursor, on the same history, once.
    let mut once = true;
    pair.tamper = Some(Box::new(move |frame, mut answers| {
        if once && let (Frame::ClientHello(_), Frame::ServerHello(h)) = (frame, &mut answers[0]) {
            once = false;
            h.head = 1;
        }
        answers
    }));
    pair.engine.handle_closed(conn);
    pair.conn = None;
    pair.run_for(Duration::from_secs(60));
    let st = pair.status();
    eprintln!("{st:?}");
    let id = pair.create("later", 9);
    pair.settle();
    pair.run_for(Duration::from_secs(30));
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1));
}

#[test]
fn fewer_outcomes_than_entries_resend_the_rest_once() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    pair.down = true;
    let ids: Vec<u64> = (0..3).map(|i| pair.create(&format!("p{i}"), i)).collect();
    pair.settle();
    pair.down = false;
    let mut once = true;
    pair.tamper = Some(Box::new(move |frame, mut answers| {
        if once && is_entries(frame) {
            once = false;
            if let Frame::Response {
                body: Response::Entries(o),
                ..
            } = &mut answers[0]
            {
                o.truncate(1);
            }
        }
        answers
    }));
    pair.run_for(Duration::from_secs(30));
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    let on = puts_on_server(&pair.sim);
    for id in ids {
        assert_eq!(on.get(&id), Some(&1));
    }
}

/// The server answers an `Entries` request with more outcomes than it carried: the extra
/// ones must not settle entries the application wrote after the request went out (they
/// never reached the server).
#[test]
fn more_outcomes_than_entries_settle_nothing_unsent() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let first = pair.create("sent", 1);
    let (conn, request) = pair.settle_until(is_entries).expect("pushed");
    let answers = pair.sim.answer(&request);
    // Written while the request is in flight: entry 2.
    let second = pair.create("written meanwhile", 2);
    for mut answer in answers {
        if let Frame::Response {
            body: Response::Entries(o),
            ..
        } = &mut answer
        {
            let seq = pair.sim.head();
            o.push(EntryOutcome::Applied { seq: seq + 1 });
        }
        pair.engine.handle_frame(conn, &answer).unwrap();
    }
    pair.settle();
    pair.run_for(Duration::from_secs(30));
    let st = pair.status();
    let on = puts_on_server(&pair.sim);
    assert_eq!(on.get(&first), Some(&1));
    assert_eq!(
        on.get(&second),
        Some(&1),
        "the entry written meanwhile never reached the server (outbox {}, {st:?})",
        st.outbox
    );
}

#[test]
fn no_outcomes_and_rejections_are_reported_and_the_rest_flows() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let events = pair.engine.db().unwrap().subscribe();
    pair.down = true;
    let ids: Vec<u64> = (0..3).map(|i| pair.create(&format!("p{i}"), i)).collect();
    pair.settle();
    pair.down = false;
    // First an empty answer, then entry 2 rejected.
    let mut step = 0;
    pair.tamper = Some(Box::new(move |frame, mut answers| {
        if !is_entries(frame) {
            return answers;
        }
        step += 1;
        if let Frame::Response {
            body: Response::Entries(o),
            ..
        } = &mut answers[0]
        {
            if step == 1 {
                o.clear();
            } else if step == 2 && o.len() == 3 {
                o[1] = EntryOutcome::Rejected(RemoteError::NotAllowed {
                    tree: "parts".into(),
                });
                o.truncate(2);
            }
        }
        answers
    }));
    pair.run_for(Duration::from_secs(60));
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    assert_eq!(st.rejected, 1, "{st:?}");
    let rejected = events
        .try_iter()
        .filter(|e| matches!(e, Event::Sync(SyncEvent::Rejected { .. })))
        .count();
    assert_eq!(rejected, 1);
    let on = puts_on_server(&pair.sim);
    assert_eq!(on.get(&ids[0]), Some(&1));
    assert_eq!(on.get(&ids[2]), Some(&1), "the entry after the refused one");
}

#[test]
fn a_server_restored_from_a_backup_never_panics_nor_loses_the_outbox() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let ids: Vec<u64> = (0..3).map(|i| pair.create(&format!("p{i}"), i)).collect();
    pair.settle();
    assert_eq!(pair.status().cursor, 3);
    pair.down = true;
    let waiting = pair.create("waiting", 4);
    pair.settle();
    let (engine, mut sim) = pair.into_parts();
    // Restored to the state after the first change: a new history from seq 1.
    sim.log.truncate(1);
    sim.outcomes.retain(|n, _| *n <= 1);
    sim.history = vec![(1, 0), (2, 1)];
    let mut pair = Pair::with(engine, sim);
    if let Some(conn) = pair.conn.take() {
        pair.engine.handle_closed(conn);
    }
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        pair.down = false;
        pair.run_for(Duration::from_secs(120));
    }));
    assert!(r.is_ok());
    let st = pair.status();
    eprintln!("restored: {st:?}");

    assert!(st.online && st.outbox == 0, "{st:?}");
    let on = puts_on_server(&pair.sim);
    for id in ids.iter().chain([&waiting]) {
        assert!(
            on.contains_key(id),
            "part {id} is not on the restored server"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Seams
// ---------------------------------------------------------------------------------------

#[test]
fn close_right_after_a_write_then_reopen_pushes_it_once() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let id = pair.create("last words", 1);
    let (engine, mut sim) = pair.into_parts();
    let last = engine.close();
    eprintln!(
        "close gave {:?}",
        last.iter()
            .map(|o| match o {
                Output::Send { frame, .. } => describe(frame),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
    );
    // The driver sends what close gave it (the server applies; the answer is lost).
    for out in &last {
        if let Output::Send { frame, .. } = out {
            sim.answer(frame);
        }
    }
    let mut pair = Pair::open(&path, sim, Instant::now());
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1));
}

/// A record another replica holds.
fn held_elsewhere(pair: &mut Pair) -> Key<Part> {
    let id = 90_000;
    pair.sim.inject(
        OTHER,
        part_put(
            id,
            &Part {
                name: "theirs".into(),
                qty: 1,
            },
        ),
    );
    pair.sim.inject(
        OTHER,
        Change {
            tree: "parts".into(),
            id,
            rev: 0,
            kind: ChangeKind::Borrow { holder: OTHER },
        },
    );
    // Pushed with the answer to a ping.
    let conn = pair.conn.unwrap();
    for a in pair.sim.answer(&Frame::Request {
        id: 0,
        body: Request::Ping,
    }) {
        if matches!(a, Frame::Push(_)) {
            pair.engine.handle_frame(conn, &a).unwrap();
        }
    }
    pair.settle();
    let key = Key::new(id, 0);
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    assert_eq!(parts.meta(key).unwrap().holder, OTHER);
    key
}

#[test]
fn close_while_a_borrow_is_pending_answers_it() {
    for ran in [false, true] {
        let (_dir, path) = fresh();
        let mut pair = online(&path);
        let key = held_elsewhere(&mut pair);
        let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
        let mut borrow = std::pin::pin!(parts.borrow_async(key));
        assert!(poll_once(borrow.as_mut()).is_pending());
        if ran {
            // The client sent the request; no answer.
            let got = pair.settle_until(|f| describe(f).starts_with("borrow"));
            assert!(got.is_some());
        }
        let (engine, _sim) = pair.into_parts();
        let _ = engine.close();
        let mut answered = None;
        for _ in 0..10 {
            if let Poll::Ready(r) = poll_once(borrow.as_mut()) {
                answered = Some(r);
                break;
            }
        }
        let answered = answered.expect("the borrow is answered once the engine closed");
        assert!(answered.is_err(), "{answered:?}");
    }
}

/// The application exits without `close` (the engine dropped) with a borrow asked and a
/// tree in hand: the borrow must be answered, not wait forever.
#[test]
fn dropping_the_engine_while_a_borrow_is_pending_answers_it() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let key = held_elsewhere(&mut pair);
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let mut borrow = std::pin::pin!(parts.borrow_async(key));
    assert!(poll_once(borrow.as_mut()).is_pending());
    let (engine, _sim) = pair.into_parts();
    drop(engine);
    let mut answered = None;
    for _ in 0..10 {
        if let Poll::Ready(r) = poll_once(borrow.as_mut()) {
            answered = Some(r);
            break;
        }
    }
    let st = parts.db().sync_status().unwrap();
    assert!(
        answered.is_some(),
        "the borrow waits forever after the engine was dropped (status says {st:?})"
    );
}

/// Dropped without `close`, while the application keeps a handle: the status must not go
/// on saying the client is online and caught up.
#[test]
fn dropping_the_engine_while_a_handle_lives_reports_offline() {
    let (_dir, path) = fresh();
    let pair = online(&path);
    let db = pair.engine.db().unwrap().clone();
    let (engine, _sim) = pair.into_parts();
    drop(engine);
    let st = db.sync_status().unwrap();
    assert!(
        !st.online,
        "no client runs, yet the status says online: {st:?}"
    );
}

#[test]
fn dropping_the_engine_with_frames_queued_then_reopen_loses_nothing() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let ids: Vec<u64> = (0..5).map(|i| pair.create(&format!("p{i}"), i)).collect();
    let now = pair.engine.now();
    pair.engine.handle_timeout(now + Duration::from_millis(1));
    assert!(queued_outputs(&pair.engine) > 0);
    let (engine, sim) = pair.into_parts();
    drop(engine);
    let mut pair = Pair::open(&path, sim, Instant::now());
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    let on = puts_on_server(&pair.sim);
    for id in ids {
        assert_eq!(on.get(&id), Some(&1));
    }
}

#[test]
fn a_second_engine_on_a_live_file_is_refused_and_the_first_goes_on() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let second = Engine::open(&path, config(), Instant::now());
    let err = second.expect_err("the file is open in this process");
    eprintln!("second engine: {err}");
    // And a plain synced database on the same file.
    let plain = rekord::Db::open_synced(&path, config());
    assert!(plain.is_err());
    let id = pair.create("still", 1);
    pair.settle();
    assert_eq!(pair.status().outbox, 0);
    assert_eq!(puts_on_server(&pair.sim).get(&id), Some(&1));
    let (engine, sim) = pair.into_parts();
    let _ = engine.close();
    let pair = Pair::open(&path, sim, Instant::now());
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    assert_eq!(parts.get(Key::new(id, 0)).unwrap().name, "still");
}

#[test]
fn an_engine_on_a_file_a_threaded_synced_db_holds_is_refused() {
    let (_dir, path) = fresh();
    {
        let db = rekord::Db::open_synced(&path, config()).unwrap();
        let r = Engine::open(&path, config(), Instant::now());
        assert!(r.is_err(), "opened twice");
        drop(db);
    }
    // Afterwards it takes the file over.
    let mut pair = Pair::open(&path, Sim::new(), Instant::now());
    pair.settle();
    assert!(pair.status().online);
}

/// Merges the conflict of an optimistic edit, then exits at once (dropped, the merged
/// entry on its way); reopened, the server ends with the merge, and so does the replica.
#[test]
fn an_exit_right_after_a_merge_keeps_the_merge() {
    for exit in ["drop", "close"] {
        let (_dir, path) = fresh();
        let mut pair = online(&path);
        let docs = pair.engine.db().unwrap().tree::<Doc>().unwrap();
        let key = docs.create(&Doc { a: 0, b: 0 }).unwrap();
        pair.settle();
        assert_eq!(pair.status().outbox, 0);
        // Another replica sets b; its change is not pushed yet.
        pair.sim.inject(
            OTHER,
            Change {
                tree: "docs".into(),
                id: key.id(),
                rev: 0,
                kind: ChangeKind::Edit {
                    base: pair.sim.head(),
                    hlc: 1,
                    version: 1,
                    data: Doc { a: 0, b: 7 }.__encode(Vec::new()).unwrap(),
                },
            },
        );
        // This one sets a: refused with a conflict, merged, sent again.
        docs.update(key, |d| d.a = 5).unwrap();
        let mut seen = 0;
        let resent = pair.settle_until(|f| {
            if is_entries(f) {
                seen += 1;
            }
            seen == 2
        });
        assert!(resent.is_some(), "the merged edit was sent again");
        assert!(pair.status().conflicts >= 1);
        let (engine, sim) = pair.into_parts();
        drop(docs);
        if exit == "drop" {
            drop(engine);
        } else {
            let _ = engine.close();
        }
        let mut pair = Pair::open(&path, sim, Instant::now());
        pair.settle();
        pair.run_for(Duration::from_secs(5));
        let st = pair.status();
        assert!(st.online && st.outbox == 0, "{exit}: {st:?}");
        let (_, _, _, data) = pair.sim.latest("docs", key.id(), u64::MAX).unwrap();
        let docs = pair.engine.db().unwrap().tree::<Doc>().unwrap();
        let here = docs.get(key).unwrap();
        assert_eq!(here, Doc { a: 5, b: 7 }, "{exit}: the replica");
        assert_eq!(
            data,
            Doc { a: 5, b: 7 }.__encode(Vec::new()).unwrap(),
            "{exit}: the server"
        );
    }
}

/// Another replica's edit of doc `id` setting b = 7, based on the server's head.
fn others_edit(sim: &Sim, id: u64) -> Change {
    Change {
        tree: "docs".into(),
        id,
        rev: 0,
        kind: ChangeKind::Edit {
            base: sim.head(),
            hlc: 1,
            version: 1,
            data: Doc { a: 0, b: 7 }.__encode(Vec::new()).unwrap(),
        },
    }
}

/// Whether `frame` pushes an optimistic edit.
fn pushes_an_edit(frame: &Frame) -> Option<u64> {
    match frame {
        Frame::Request {
            body: Request::Entries { entries, .. },
            ..
        } => entries
            .iter()
            .flatten()
            .find(|c| matches!(c.kind, ChangeKind::Edit { .. }))
            .map(|c| c.id),
        _ => None,
    }
}

/// The child of [`a_crash_right_after_a_merge_keeps_the_merge`]: every frame the server
/// answers is printed (`FRAME hex`); the process dies right after the client merged the
/// conflict of its edit (the merge committed, its entry about to go).
fn crash_right_after_a_merge(path: &Path) -> ! {
    let mut pair = Pair::open(path, Sim::new(), Instant::now());
    pair.tamper = Some(Box::new(|frame: &Frame, answers: Vec<Frame>| {
        print_frame(frame);
        answers
    }));
    pair.settle();
    let docs = pair.engine.db().unwrap().tree::<Doc>().unwrap();
    let key = docs.create(&Doc { a: 0, b: 0 }).unwrap();
    pair.settle();
    let change = others_edit(&pair.sim, key.id());
    pair.sim.inject(OTHER, change);
    docs.update(key, |d| d.a = 5).unwrap();
    let mut seen = 0;
    let merged = pair.settle_until(|f| {
        if is_entries(f) {
            seen += 1;
        }
        seen == 2
    });
    assert!(merged.is_some(), "the merged edit was about to go");
    std::process::abort();
}

/// As [`an_exit_right_after_a_merge_keeps_the_merge`], but the process dies (a child
/// aborted right after the merge, before its entry reaches the server): reopened against
/// the server the child left, the replica and the server end with the merge.
#[test]
fn a_crash_right_after_a_merge_keeps_the_merge() {
    if let Ok(path) = std::env::var("REKORD_ENGINE_MERGE_CRASH_CHILD") {
        crash_right_after_a_merge(Path::new(&path));
    }
    let (_dir, path) = fresh();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_crash_right_after_a_merge_keeps_the_merge",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("REKORD_ENGINE_MERGE_CRASH_CHILD", &path)
        .output()
        .unwrap();
    // Killed by its abort (no exit code), not failed on a check of its own.
    assert!(
        out.status.code().is_none(),
        "the child was to die after the merge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server as the child left it: its frames answered again, the other replica's
    // edit logged where it was (before the child's edit arrived).
    let mut sim = Sim::new();
    // (An optimistic tree's create goes as an edit too: the second edit is the update.)
    let (mut edits, mut doc) = (0, None);
    for frame in parse_frames(&String::from_utf8_lossy(&out.stdout)) {
        if let Some(id) = pushes_an_edit(&frame) {
            edits += 1;
            if edits == 2 {
                let change = others_edit(&sim, id);
                sim.inject(OTHER, change);
                doc = Some(id);
            }
        }
        sim.answer(&frame);
    }
    let id = doc.expect("the child pushed its edit");
    assert!(
        sim.log.iter().all(|s| s.origin != REPLICA
            || !matches!(&s.change.kind, ChangeKind::Edit { data, .. }
                if *data != Doc { a: 0, b: 0 }.__encode(Vec::new()).unwrap())),
        "the child's edit was refused, not applied: {:?}",
        sim.heard
    );
    let mut pair = Pair::open(&path, sim, Instant::now());
    pair.settle();
    pair.run_for(Duration::from_secs(5));
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    let (_, _, _, data) = pair.sim.latest("docs", id, u64::MAX).unwrap();
    let docs = pair.engine.db().unwrap().tree::<Doc>().unwrap();
    let here = docs.get(Key::new(id, 0)).unwrap();
    assert_eq!(here, Doc { a: 5, b: 7 }, "the replica");
    assert_eq!(
        data,
        Doc { a: 5, b: 7 }.__encode(Vec::new()).unwrap(),
        "the server"
    );
}

// ---------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------

/// Whatever the network does, whenever the client waits it names a deadline in the future,
/// a call at exactly that deadline fires it (the next one is later), and after a settle
/// it has no work of its own left (no spinning).
#[test]
fn every_wait_has_a_deadline_and_waking_there_makes_progress() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let mut phase = 0u32;
    let mut steps = 0u32;
    let end = pair.engine.now() + Duration::from_secs(1_800);
    while pair.engine.now() < end {
        steps += 1;
        // Every virtual minute the network does something else.
        let minute = (end - pair.engine.now()).as_secs() / 60;
        if minute as u32 != phase {
            phase = minute as u32;
            pair.down = phase % 4 == 1;
            pair.deaf = phase % 4 == 2;
            if phase % 4 == 3
                && let Some(conn) = pair.conn.take()
            {
                pair.engine.handle_closed(conn);
                pair.settle();
            }
            if phase.is_multiple_of(3) {
                let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
                let _ = parts.create(&Part {
                    name: "t".into(),
                    qty: phase,
                });
                pair.settle();
            }
        }
        assert!(
            !pair.engine.wants_to_run(),
            "work left after a settle (step {steps})"
        );
        assert!(pair.engine.poll_output().is_none());
        let now = pair.engine.now();
        let at = pair.engine.poll_timeout().unwrap_or_else(|| {
            panic!(
                "no deadline while it waits (step {steps}, {:?})",
                pair.status()
            )
        });
        assert!(at > now, "a deadline {:?} in the past", now - at);
        pair.engine.handle_timeout(at);
        pair.settle();
        if let Some(next) = pair.engine.poll_timeout() {
            assert!(next > at, "the deadline {at:?} did not fire (step {steps})");
        }
    }
    pair.down = false;
    pair.deaf = false;
    pair.run_for(Duration::from_secs(60));
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    eprintln!("{steps} wake-ups in 30 virtual minutes");
}

/// `wants_to_run` is what a driver that sleeps checks: false while outputs wait means a
/// frame to send sits in the engine until something else wakes the driver.
#[test]
fn wants_to_run_while_outputs_wait() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    pair.create("bolt", 1);
    let now = pair.engine.now();
    // The driver's timer fires first: the client runs, the push is queued.
    pair.engine.handle_timeout(now);
    let queued = queued_outputs(&pair.engine);
    assert!(queued > 0);
    assert!(
        pair.engine.wants_to_run(),
        "{queued} outputs wait, yet wants_to_run is false"
    );
}

/// With "never time out" configured (`u64::MAX` seconds), a borrow makes the client
/// compute `now + timeout` inside the engine's call: that must not panic (a panic there
/// leaves the client's future poisoned: every later call of the engine panics too).
#[test]
fn a_borrow_with_a_u64_max_timeout_never_panics_inside_the_engine() {
    let (_dir, path) = fresh();
    let cfg = config().timeout(Duration::from_secs(u64::MAX));
    let mut pair = Pair::with(
        Engine::open(&path, cfg, Instant::now()).unwrap(),
        Sim::new(),
    );
    pair.settle();
    assert!(pair.status().online);
    let key = held_elsewhere(&mut pair);
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let mut borrow = std::pin::pin!(parts.borrow_async(key));
    assert!(poll_once(borrow.as_mut()).is_pending());
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| pair.settle()));
    let later = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let now = pair.engine.now();
        pair.engine.handle_timeout(now + Duration::from_secs(1));
        pair.engine.poll_output()
    }));
    assert!(
        first.is_ok() && later.is_ok(),
        "the engine panicked (first call: {}, a later call: {})",
        first.is_err(),
        later.is_err()
    );
}

/// `close` while the client is in a handshake (the driver opened nothing yet, no answer)
/// and a borrow waits in the client's queue: the borrow must be answered, not wait forever.
#[test]
fn close_during_a_handshake_with_a_borrow_queued_answers_it() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let key = held_elsewhere(&mut pair);
    // The connection breaks; the next one is asked for, its hello never answered.
    let conn = pair.conn.take().unwrap();
    pair.engine.handle_closed(conn);
    pair.deaf = true;
    for _ in 0..20 {
        pair.next_wakeup(Duration::from_secs(1));
        if pair
            .sim
            .heard
            .last()
            .is_some_and(|h| h.starts_with("hello"))
            && pair.conn.is_some()
        {
            break;
        }
    }
    assert!(pair.sim.heard.last().unwrap().starts_with("hello"));
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let mut borrow = std::pin::pin!(parts.borrow_async(key));
    assert!(poll_once(borrow.as_mut()).is_pending());
    let (engine, _sim) = pair.into_parts();
    let _ = engine.close();
    let mut answered = None;
    for _ in 0..10 {
        if let Poll::Ready(r) = poll_once(borrow.as_mut()) {
            answered = Some(r);
            break;
        }
    }
    assert!(
        answered.is_some(),
        "closed during a handshake: the borrow waits forever"
    );
}

/// A server grants ids at the very top of `u64` (once; then ordinary ranges): creates use
/// them up, then go on with the next range; nothing panics, nothing is lost.
#[test]
fn ids_granted_at_the_top_of_u64_then_lower_ones_stay_usable() {
    let (_dir, path) = fresh();
    let mut pair = Pair::open(&path, Sim::new(), Instant::now());
    let mut once = true;
    pair.tamper = Some(Box::new(move |frame, mut answers| {
        if once
            && matches!(
                frame,
                Frame::Request {
                    body: Request::Ranges { .. },
                    ..
                }
            )
            && let Frame::Response { body, .. } = &mut answers[0]
        {
            once = false;
            *body = Response::Ranges(vec![(u64::MAX - 3, u64::MAX)]);
        }
        answers
    }));
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        assert!(pair.settle_at_most(500));
        let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
        let mut made = Vec::new();
        for i in 0..6u32 {
            match parts.create(&Part {
                name: format!("top{i}"),
                qty: i,
            }) {
                Ok(k) => made.push(k.id()),
                Err(e) => eprintln!("create {i}: {e}"),
            }
            assert!(
                pair.settle_at_most(500),
                "after create {i}, the client asks for ids without end: {} requests",
                pair.sim
                    .heard
                    .iter()
                    .filter(|h| h.starts_with("ranges"))
                    .count()
            );
        }
        pair.run_for(Duration::from_secs(10));
        made
    }));
    let made = r.expect("panicked (see the first message)");
    eprintln!("made {made:?}; {:?}", pair.status());
    assert!(made.len() >= 3);
    let on = puts_on_server(&pair.sim);
    for id in made {
        assert_eq!(on.get(&id), Some(&1), "part {id}");
    }
}

/// A server that answers every request for ids with no new ones (an empty list, which the
/// protocol's checks let through, or a range granted before): the client, asked for ids by
/// a create that ran out, must not ask again and again without end.
#[test]
fn a_server_granting_no_new_ids_is_not_asked_forever() {
    let (_dir, path) = fresh();
    let mut pair = Pair::open(&path, Sim::new(), Instant::now());
    pair.tamper = Some(Box::new(|frame, mut answers| {
        if matches!(
            frame,
            Frame::Request {
                body: Request::Ranges { .. },
                ..
            }
        ) && let Frame::Response { body, .. } = &mut answers[0]
        {
            *body = Response::Ranges(vec![]);
        }
        answers
    }));
    pair.settle();
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let r = parts.create(&Part {
        name: "none".into(),
        qty: 0,
    });
    assert!(matches!(r, Err(rekord::Error::IdsExhausted)), "{r:?}");
    let settled = pair.settle_at_most(500);
    let asked = pair
        .sim
        .heard
        .iter()
        .filter(|h| h.starts_with("ranges"))
        .count();
    assert!(
        settled && asked < 100,
        "one failed create made the client ask for ids {asked} times without pause"
    );
}

/// A frame the protocol's checks refuse (pushed changes out of order), handed over by a
/// driver that built it itself: the connection ends as over a real transport, reported,
/// and the next one catches up.
#[test]
fn an_invalid_frame_from_the_driver_ends_the_connection() {
    let (_dir, path) = fresh();
    let mut pair = online(&path);
    let conn = pair.conn.unwrap();
    let a = part_put(
        95_000,
        &Part {
            name: "a".into(),
            qty: 0,
        },
    );
    let bad = Frame::Push(Push::Changes(vec![
        Sequenced {
            seq: 5,
            origin: OTHER,
            change: a.clone(),
        },
        Sequenced {
            seq: 4,
            origin: OTHER,
            change: a,
        },
    ]));
    pair.engine.handle_frame(conn, &bad).unwrap();
    pair.settle();
    let st = pair.status();
    assert!(!st.online && st.cursor == 0, "{st:?}");
    eprintln!("invalid frame: {:?}", st.last_error);
    pair.run_for(Duration::from_secs(30));
    let st = pair.status();
    assert!(st.online && st.caught_up, "{st:?}");
}
