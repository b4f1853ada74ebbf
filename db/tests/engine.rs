//! The sync client as a sans-IO engine ([`rekord::sync::engine::Engine`]) against a server
//! simulated in this file, frame by frame, with a clock the test moves: no socket, no
//! thread, no runtime, no real timer. Each test says what the client sends, what it does
//! when the server answers (or does not), when it wants to run again, and across an exit
//! or a crash (a child process) between a push and its answer. Two runs of a script give
//! the same frames.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rekord::net::Proved;
use rekord::proto::{
    ChangeKind, EntryOutcome, Frame, Push, RemoteError, Request, Response, Sequenced, ServerHello,
};
use rekord::sync::engine::{Engine, Output};
use rekord::{Event, SyncConfig};

#[path = "common/frame_log.rs"]
mod frame_log;
use frame_log::{parse_frames, print_frame};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

const SERVER: [u8; 16] = [7; 16];
const REPLICA: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(2);

fn config() -> SyncConfig {
    // (The address is never dialled: the engine's driver, this test, is the network.)
    SyncConfig::new("127.0.0.1:9".parse().unwrap(), "workshop", "token")
        .timeout(TIMEOUT)
        .idle_timeout(Duration::from_secs(5))
}

/// A server as the protocol describes it, small: one history, ids from 1,000 on, every
/// entry applied (each change sequenced and pushed back), each entry's answer kept so a
/// retry hears it again.
#[derive(Default)]
struct Sim {
    log: Vec<Sequenced>,
    next_id: u64,
    outcomes: BTreeMap<u64, EntryOutcome>,
    /// Entries applied (not answered from `outcomes`).
    applied: u64,
    /// Every frame the client sent, as text (what two runs compare).
    heard: Vec<String>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            next_id: 1_000,
            ..Sim::default()
        }
    }

    fn head(&self) -> u64 {
        self.log.last().map_or(0, |s| s.seq)
    }

    /// The server's frames in answer to `frame`.
    fn answer(&mut self, frame: &Frame) -> Vec<Frame> {
        self.heard.push(describe(frame));
        match frame {
            Frame::ClientHello(h) => {
                let mut out = vec![Frame::ServerHello(ServerHello {
                    protocol: h.protocol,
                    app: h.app.clone(),
                    server: SERVER,
                    replica: REPLICA,
                    head: self.head(),
                    history: vec![(1, 0)],
                    read: None,
                    common: None,
                })];
                let missed: Vec<Sequenced> = self
                    .log
                    .iter()
                    .filter(|s| s.seq > h.cursor)
                    .cloned()
                    .collect();
                if !missed.is_empty() {
                    out.push(Frame::Push(Push::Changes(missed)));
                }
                out.push(Frame::Push(Push::CaughtUp { head: self.head() }));
                out
            }
            Frame::Request { id, body } => {
                let mut pushes = Vec::new();
                let body = match body {
                    Request::Ping => Response::Pong,
                    Request::Ranges { want } => {
                        let range = (self.next_id, self.next_id + want);
                        self.next_id += want;
                        Response::Ranges(vec![range])
                    }
                    Request::PutSchema { .. } => Response::Accepted { seq: 0 },
                    Request::Entries { first, entries } => {
                        let mut outcomes = Vec::new();
                        for (n, changes) in (*first..).zip(entries) {
                            if let Some(o) = self.outcomes.get(&n) {
                                outcomes.push(o.clone());
                                continue;
                            }
                            self.applied += 1;
                            let mut batch = Vec::new();
                            for change in changes {
                                let seq = self.head() + 1;
                                let s = Sequenced {
                                    seq,
                                    origin: REPLICA,
                                    change: change.clone(),
                                };
                                self.log.push(s.clone());
                                batch.push(s);
                            }
                            let o = EntryOutcome::Applied { seq: self.head() };
                            self.outcomes.insert(n, o.clone());
                            outcomes.push(o);
                            pushes.push(Frame::Push(Push::Changes(batch)));
                        }
                        Response::Entries(outcomes)
                    }
                    other => Response::Error(RemoteError::Invalid(format!(
                        "the simulated server does not do {other:?}"
                    ))),
                };
                let mut out = vec![Frame::Response { id: *id, body }];
                out.extend(pushes);
                out
            }
            other => panic!("a client sent {other:?}"),
        }
    }
}

/// A frame as text, without what differs from run to run (random client ids, clocks).
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::ClientHello(h) => format!("hello cursor {} last_entry {}", h.cursor, h.last_entry),
        Frame::Request { body, .. } => match body {
            Request::Entries { first, entries } => {
                let kinds: Vec<String> = entries
                    .iter()
                    .flatten()
                    .map(|c| {
                        let kind = match &c.kind {
                            ChangeKind::Put { .. } => "put",
                            ChangeKind::Edit { .. } => "edit",
                            ChangeKind::Remove => "remove",
                            _ => "other",
                        };
                        format!("{kind} {}/{}", c.tree, c.id)
                    })
                    .collect();
                format!("entries from {first}: {kinds:?}")
            }
            Request::Ranges { want } => format!("ranges {want}"),
            Request::PutSchema { tree, version, .. } => format!("schema {tree} v{version}"),
            Request::Ping => "ping".into(),
            other => format!("{other:?}"),
        },
        other => format!("{other:?}"),
    }
}

/// The engine and the simulated server joined: every frame the engine sends reaches the
/// server unless the network is `down`, and every answer comes back at once.
struct Pair {
    engine: Engine,
    sim: Sim,
    conn: Option<u64>,
    down: bool,
    /// The server gets every frame, but its answers are lost.
    deaf: bool,
    /// Prints every frame the server gets (`FRAME hex`, for a parent process).
    print: bool,
    /// Connections the engine asked for.
    connects: u64,
}

impl Pair {
    fn open(path: &Path, sim: Sim, now: Instant) -> Pair {
        Pair {
            engine: Engine::open(path, config(), now).unwrap(),
            sim,
            conn: None,
            down: false,
            deaf: false,
            print: false,
            connects: 0,
        }
    }

    /// Runs the engine and the server until neither has anything to do at this instant.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let Some(out) = self.engine.poll_output() else {
                return;
            };
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
                    if self.print {
                        print_frame(&frame);
                    }
                    let answers = self.sim.answer(&frame);
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

    /// Moves the clock to the engine's next wake-up (at most `limit` ahead), settling
    /// after; the time it moved to.
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

    /// Lets virtual time pass (`span`), waking the engine whenever it asked.
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
        let key = parts
            .create(&Part {
                name: name.into(),
                qty,
            })
            .unwrap();
        key.id()
    }
}

/// The first session: hello, schema, ids, and a create pushed, applied and echoed.
fn first_session(dir: &Path) -> (Vec<String>, Vec<String>, u64) {
    let t0 = Instant::now();
    let mut pair = Pair::open(&dir.join("a.rekord"), Sim::new(), t0);
    let sub = pair.engine.db().unwrap().subscribe();
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.caught_up, "{st:?}");
    assert_eq!(st.replica, Some(REPLICA));

    let id = pair.create("bolt", 4);
    assert!(pair.engine.wants_to_run(), "a write wakes the client");
    pair.settle();
    let st = pair.status();
    assert_eq!(st.outbox, 0, "{st:?}");
    assert_eq!(st.cursor, 1, "the echo moved the cursor: {st:?}");
    assert_eq!(pair.sim.applied, 1);
    let mut events = Vec::new();
    while let Some(e) = sub.try_next() {
        if let Event::Record(r) = e {
            events.push(format!("{:?} {} {}", r.kind, r.key.id, r.origin));
        }
    }
    (pair.sim.heard.clone(), events, id)
}

#[test]
fn a_session_runs_frame_by_frame_the_same_every_time() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (heard_a, events_a, id_a) = first_session(a.path());
    let (heard_b, events_b, id_b) = first_session(b.path());
    assert_eq!(heard_a, heard_b);
    assert_eq!(events_a, events_b);
    assert_eq!(id_a, id_b);
    assert!(
        heard_a[0].starts_with("hello cursor 0"),
        "the client speaks first: {heard_a:?}"
    );
    assert!(
        heard_a.iter().any(|h| h == "schema parts v1"),
        "{heard_a:?}"
    );
    assert!(
        heard_a
            .iter()
            .any(|h| h == &format!("entries from 1: [\"put parts/{id_a}\"]")),
        "{heard_a:?}"
    );
    assert!(
        (1_000..11_000).contains(&id_a),
        "an id of the granted range"
    );
    assert_eq!(events_a.len(), 1, "{events_a:?}");
    assert!(
        events_a[0].starts_with(&format!("Created {id_a}")),
        "{events_a:?}"
    );
}

#[test]
fn a_silent_server_times_out_when_the_engine_said_and_it_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut pair = Pair::open(&dir.path().join("a.rekord"), Sim::new(), t0);
    pair.settle();
    assert!(pair.status().online);
    assert_eq!(pair.connects, 1);

    // The server stops answering (frames are lost); a create is pushed into the void.
    pair.down = true;
    pair.create("nut", 1);
    pair.settle();
    let st = pair.status();
    assert_eq!(st.outbox, 1, "{st:?}");
    // The engine says when it wants to run: the request's timeout, not before.
    let due = pair
        .engine
        .poll_timeout()
        .expect("a request waits on a timer");
    assert_eq!(due, t0 + TIMEOUT, "the push's timeout");
    pair.engine.handle_timeout(due - Duration::from_millis(1));
    pair.settle();
    assert!(
        pair.status().online,
        "still online a moment before its timeout"
    );
    pair.next_wakeup(Duration::from_secs(60));
    let st = pair.status();
    assert!(!st.online, "offline once the timeout passed: {st:?}");
    assert!(st.last_error.is_some(), "{st:?}");

    // Down for a virtual minute: it retries on its back-off, every attempt refused.
    pair.run_for(Duration::from_secs(60));
    assert!(pair.connects > 2, "{} connects", pair.connects);
    assert!(!pair.status().online);
    assert_eq!(pair.status().outbox, 1, "nothing lost while offline");

    // Back up: within one back-off (at most its cap) the entry reaches the server once.
    pair.down = false;
    pair.run_for(Duration::from_secs(31));
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    assert_eq!(pair.sim.applied, 1, "applied once");
    let sent: Vec<&String> = pair
        .sim
        .heard
        .iter()
        .filter(|h| h.starts_with("entries"))
        .collect();
    assert_eq!(sent.len(), 1, "reached the server once: {sent:?}");
}

/// Creates a part and runs the engine until it pushed the create: the server applies it,
/// but its answer and echo never arrive (its schema goes first, answered).
fn push_and_lose_the_answer(pair: &mut Pair) {
    pair.create("washer", 9);
    while let Some(out) = pair.engine.poll_output() {
        if let Output::Send { conn, frame } = out {
            if pair.print {
                print_frame(&frame);
            }
            let answers = pair.sim.answer(&frame);
            if matches!(
                frame,
                Frame::Request {
                    body: Request::Entries { .. },
                    ..
                }
            ) {
                return;
            }
            for answer in answers {
                pair.engine.handle_frame(conn, &answer).unwrap();
            }
        }
    }
    panic!("the create was never pushed");
}

/// Opens the replica at `path` again against `sim` (which applied its push and heard
/// `before` frames): the entry is sent again once, under its number, and answered
/// without being applied again.
fn reopen_and_check_the_resend(path: &Path, sim: Sim) {
    assert_eq!(
        sim.applied, 1,
        "the server applied the push: {:?}",
        sim.heard
    );
    let before = sim.heard.len();
    let mut pair = Pair::open(path, sim, Instant::now());
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.outbox == 0, "{st:?}");
    assert_eq!(
        pair.sim.applied, 1,
        "the retry was answered, not applied again"
    );
    let after: Vec<&String> = pair.sim.heard[before..]
        .iter()
        .filter(|h| h.starts_with("entries"))
        .collect();
    assert_eq!(
        after,
        ["entries from 1: [\"put parts/1000\"]"],
        "resent once, same number"
    );
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let p = parts.get(rekord::Key::new(1000, 0)).unwrap();
    assert_eq!((p.name.as_str(), p.qty), ("washer", 9));
    assert_eq!(st.cursor, 1, "the catch-up sent the echo: {st:?}");
}

#[test]
fn an_exit_between_a_push_and_its_answer_resends_the_same_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rekord");
    let mut pair = Pair::open(&path, Sim::new(), Instant::now());
    pair.settle();
    push_and_lose_the_answer(&mut pair);
    // The application exits here (the engine dropped, not closed: it never hears).
    let Pair { engine, sim, .. } = pair;
    drop(engine);
    reopen_and_check_the_resend(&path, sim);
}

#[test]
fn an_exit_makes_what_the_server_acknowledged_durable_and_reopens_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rekord");
    let t0 = Instant::now();
    let mut pair = Pair::open(&path, Sim::new(), t0);
    pair.settle();
    for i in 0..5 {
        pair.create(&format!("part {i}"), i);
    }
    pair.settle();
    assert_eq!(pair.status().outbox, 0);
    let cursor = pair.status().cursor;
    assert_eq!(cursor, 5);
    // A tree handle outlives the engine: closing still stops the client and its connection.
    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
    let Pair {
        engine, sim, conn, ..
    } = pair;
    let last = engine.close();
    assert!(
        last.iter().all(|o| !matches!(o, Output::Send { .. })),
        "nothing more to send: {last:?}"
    );
    assert!(
        last.iter()
            .any(|o| matches!(o, Output::Close { conn: c, .. } if Some(*c) == conn)),
        "{last:?}"
    );
    drop(parts);
    let mut pair = Pair::open(&path, sim, t0 + Duration::from_secs(1));
    pair.settle();
    let st = pair.status();
    assert!(st.online && st.caught_up, "{st:?}");
    assert_eq!(st.cursor, cursor, "reopened where it stood");
    assert!(
        pair.sim
            .heard
            .iter()
            .any(|h| h == &format!("hello cursor {cursor} last_entry 5")),
        "{:?}",
        pair.sim.heard
    );
    assert_eq!(pair.sim.applied, 5);
}

/// The child of [`a_crash_between_a_push_and_its_answer_resends_the_same_entry_once`]: a
/// session up to the push of one create, every frame printed, then the process dies.
fn crash_after_the_push(path: &Path) -> ! {
    let mut pair = Pair::open(path, Sim::new(), Instant::now());
    pair.print = true;
    pair.settle();
    push_and_lose_the_answer(&mut pair);
    std::process::abort();
}

#[test]
fn a_crash_between_a_push_and_its_answer_resends_the_same_entry_once() {
    if let Ok(path) = std::env::var("REKORD_ENGINE_CRASH_CHILD") {
        crash_after_the_push(Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.rekord");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_crash_between_a_push_and_its_answer_resends_the_same_entry_once",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("REKORD_ENGINE_CRASH_CHILD", &path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child was to die");
    // The server as the child left it: every frame it got, answered again.
    let mut sim = Sim::new();
    for frame in &parse_frames(&String::from_utf8_lossy(&out.stdout)) {
        sim.answer(frame);
    }
    reopen_and_check_the_resend(&path, sim);
}

/// What the proptest below does to a replica and its network.
#[derive(Debug, Clone)]
enum Step {
    /// The application creates this many parts.
    Create(u8),
    /// The network drops every frame for this many virtual milliseconds.
    Outage(u16),
    /// The server gets and applies what the replica sends, but its answers are lost, for
    /// this many virtual milliseconds.
    Deaf(u16),
    /// The connection breaks (the driver says it closed).
    Break,
    /// Virtual time passes (milliseconds), the network up.
    Wait(u16),
    /// The application exits (the engine dropped) and opens the database again.
    Reopen,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1u8..5).prop_map(Step::Create),
        1 => (1u16..5_000).prop_map(Step::Outage),
        2 => (1u16..5_000).prop_map(Step::Deaf),
        1 => Just(Step::Break),
        2 => (0u16..3_000).prop_map(Step::Wait),
        1 => Just(Step::Reopen),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..Default::default()
    })]

    /// Against a model (the parts the application created): whatever the outages, broken
    /// connections and exits, once the network is up every part reaches the server exactly
    /// once, under an id of its own, and the replica's outbox empties.
    #[test]
    fn every_create_reaches_the_server_once_whatever_the_network_does(
        steps in proptest::collection::vec(step(), 1..24)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.rekord");
        let mut now = Instant::now();
        let mut pair = Pair::open(&path, Sim::new(), now);
        pair.settle();
        let mut model: BTreeMap<u64, String> = BTreeMap::new();
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Create(n) => {
                    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
                    for j in 0..*n {
                        let name = format!("part {i}.{j}");
                        match parts.create(&Part { name: name.clone(), qty: j.into() }) {
                            Ok(k) => {
                                proptest::prop_assert!(model.insert(k.id(), name).is_none());
                            }
                            // Offline before the first range: no ids yet.
                            Err(rekord::Error::IdsExhausted) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    pair.settle();
                }
                Step::Outage(ms) => {
                    pair.down = true;
                    pair.run_for(Duration::from_millis((*ms).into()));
                    pair.down = false;
                }
                Step::Deaf(ms) => {
                    pair.deaf = true;
                    let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
                    if let Ok(k) = parts.create(&Part { name: format!("deaf {i}"), qty: 0 }) {
                        model.insert(k.id(), format!("deaf {i}"));
                    }
                    pair.run_for(Duration::from_millis((*ms).into()));
                    pair.deaf = false;
                }
                Step::Break => {
                    if let Some(conn) = pair.conn.take() {
                        pair.engine.handle_closed(conn);
                        pair.settle();
                    }
                }
                Step::Wait(ms) => pair.run_for(Duration::from_millis((*ms).into())),
                Step::Reopen => {
                    let Pair { engine, sim, .. } = pair;
                    now = engine.now();
                    drop(engine);
                    pair = Pair::open(&path, sim, now);
                    pair.settle();
                }
            }
        }
        // The network up for a virtual minute: everything settles.
        pair.down = false;
        pair.run_for(Duration::from_secs(60));
        let st = pair.status();
        proptest::prop_assert!(st.online && st.outbox == 0, "{:?}", st);
        let mut on_server: BTreeMap<u64, u32> = BTreeMap::new();
        for s in &pair.sim.log {
            if matches!(s.change.kind, ChangeKind::Put { .. }) {
                *on_server.entry(s.change.id).or_default() += 1;
            }
        }
        let twice: Vec<_> = on_server.iter().filter(|(_, n)| **n > 1).collect();
        proptest::prop_assert!(twice.is_empty(), "applied twice: {:?}", twice);
        let created: Vec<u64> = model.keys().copied().collect();
        let got: Vec<u64> = on_server.keys().copied().collect();
        proptest::prop_assert_eq!(created, got);
        let parts = pair.engine.db().unwrap().tree::<Part>().unwrap();
        for (id, name) in &model {
            proptest::prop_assert_eq!(&parts.get(rekord::Key::new(*id, 0)).unwrap().name, name);
        }
    }
}
