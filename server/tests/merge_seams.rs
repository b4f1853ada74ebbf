//! Merged optimistic edits survive whatever the process does next: a clean exit right after
//! a merge, a SIGKILL at a random instant (while merging, while pushing, while idle after
//! merges), and a fresh reopen converges to exactly the server's state. Client processes
//! are this test binary re-executed as driven clients; the server is a real `rekord-server`
//! process on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rekord::{Db, Event, Retry, SyncConfig, SyncEvent};

#[path = "common/process.rs"]
mod process;
use process::{APP, ServerProcess, token};

const CHILD_ENV: &str = "REKORD_MERGE_CHILD";
const LIMIT: Duration = Duration::from_secs(60);

/// A record of an optimistic tree merged field by field.
#[rekord::record(tree = "docs", version = 1, merge = "three-way")]
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub a: u32,
    pub b: u32,
}

/// xorshift64*: seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@ {line}").unwrap();
    out.flush().unwrap();
}

/// Entry point of a client process (a no-op in a normal test run). Commands on stdin, one
/// answer line each on stdout.
#[test]
fn merge_client_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.splitn(3, '|');
    let (path, addr, token) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    // REKORD_MERGE_TRACE=<dir>: each client process writes its sync log there.
    if let Some(dir) = std::env::var_os("REKORD_MERGE_TRACE") {
        let stem = Path::new(path).file_stem().unwrap().to_string_lossy();
        let file = Path::new(&dir).join(format!("{stem}-{}.log", std::process::id()));
        let file = std::fs::File::create(file).unwrap();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    }
    let cfg = SyncConfig::new(addr.parse().unwrap(), APP, token)
        .retry(
            Retry::default()
                .initial(Duration::from_millis(20))
                .max(Duration::from_millis(250)),
        )
        .timeout(Duration::from_secs(5));
    let db = Db::open_synced(path, cfg).unwrap();
    let events = db.subscribe();
    let docs = db.tree::<Doc>().unwrap();
    say(format!("open {}", db.sync_status().unwrap().outbox));
    let key = |s: &str| rekord::Key::<Doc>::new(s.parse().unwrap(), 0);
    let mut conflicts = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        for e in events.try_iter() {
            if let Event::Sync(SyncEvent::Conflict(_)) = e {
                conflicts += 1;
            }
        }
        match words.as_slice() {
            ["caught_up"] => say(match db.wait_caught_up(LIMIT) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("err {e}"),
            }),
            ["pushed"] => say(match db.wait_pushed(LIMIT) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("err {e}"),
            }),
            ["create"] => {
                let start = Instant::now();
                let k = loop {
                    match docs.create(&Doc { a: 0, b: 0 }) {
                        Err(rekord::Error::IdsExhausted) if start.elapsed() < LIMIT => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        other => break other.unwrap(),
                    }
                };
                say(format!("key {}", k.id()));
            }
            ["set", id, field, value] => {
                let v: u32 = value.parse().unwrap();
                let r = docs.update(key(id), |d| match *field {
                    "a" => d.a = v,
                    _ => d.b = v,
                });
                say(match r {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("err {e}"),
                });
            }
            // A seeded burst of edits of field `field` over the given ids, with short pauses.
            ["burst", seed, field, n, ids] => {
                let mut rng = Rng(seed.parse::<u64>().unwrap() | 1);
                let ids: Vec<&str> = ids.split(',').collect();
                for _ in 0..n.parse::<u32>().unwrap() {
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    let v = rng.below(1_000_000) as u32;
                    if let Err(e) = docs.update(key(id), |d| match *field {
                        "a" => d.a = v,
                        _ => d.b = v,
                    }) {
                        panic!("editing {id}: {e}");
                    }
                    std::thread::sleep(Duration::from_micros(rng.below(2000)));
                }
                say("done");
            }
            ["conflicts"] => say(format!("conflicts {conflicts}")),
            ["status"] => {
                let s = db.sync_status().unwrap();
                say(format!("status {} {}", s.outbox, s.conflicts));
            }
            ["dump"] => {
                let mut rows = Vec::new();
                for item in docs.iter().unwrap() {
                    let r = item.unwrap();
                    rows.push(format!("{}:{}:{}", r.key().id(), r.a, r.b));
                }
                say(format!("dump {}", rows.join(" ")));
            }
            ["quit"] => {
                say("bye");
                // Returns from the process normally: the database is dropped here.
                return;
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    name: String,
    /// The outbox count the database reported when it opened.
    opened_outbox: u64,
}

impl Client {
    fn start(name: &str, path: &Path, addr: SocketAddr, token: &str) -> Client {
        let mut child = process::child(
            "merge_client_process",
            CHILD_ENV,
            format!("{}|{addr}|{token}", path.display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((_, l)) = line.split_once("@ ") {
                    let _ = tx.send(l.to_owned());
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            lines,
            name: name.to_owned(),
            opened_outbox: 0,
        };
        let first = c.line();
        c.opened_outbox = first
            .strip_prefix("open ")
            .unwrap_or_else(|| panic!("{name}: {first}"))
            .parse()
            .unwrap();
        c
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(LIMIT * 2)
            .unwrap_or_else(|_| panic!("client {} did not answer", self.name))
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.line()
    }

    fn ok(&mut self, command: &str) {
        let answer = self.ask(command);
        assert_eq!(answer, "ok", "{}: `{command}` answered {answer}", self.name);
    }

    fn create(&mut self) -> u64 {
        let a = self.ask("create");
        a.strip_prefix("key ").unwrap().parse().unwrap()
    }

    fn dump(&mut self) -> String {
        self.ask("dump")
    }

    fn quit(mut self) {
        assert_eq!(self.ask("quit"), "bye");
        self.child.wait().unwrap();
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// What a brand-new replica receives from the server: the server's state.
fn server_state(root: &Path, addr: SocketAddr, token: &str, n: u32) -> String {
    let path = root.join(format!("fresh{n}.rekord"));
    let mut fresh = Client::start("fresh", &path, addr, token);
    fresh.ok("caught_up");
    let dump = fresh.dump();
    fresh.quit();
    dump
}

/// Reopens `path`, lets it push what it still has and catch up, and returns what it holds.
fn reopen_settled(name: &str, path: &Path, addr: SocketAddr, token: &str) -> String {
    let mut c = Client::start(name, path, addr, token);
    c.ok("pushed");
    c.ok("caught_up");
    let dump = c.dump();
    c.quit();
    dump
}

/// The reproduction of issue #10: A edits `a` and exits; B, still behind the server, edits
/// `b` at once, merges the conflict and exits (cleanly, or killed while idle afterwards).
/// Reopened, B must hold the server's `{a: 1, b: 1}`, not its own unmerged `{a: 0, b: 1}`.
fn merged_edit_survives(kill_idle: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (pa, pb) = (root.join("a.rekord"), root.join("b.rekord"));

    let mut a = Client::start("A", &pa, addr, &token);
    a.ok("caught_up");
    let id = a.create();
    a.ok("pushed");
    let mut b = Client::start("B", &pb, addr, &token);
    b.ok("caught_up");
    assert_eq!(b.dump(), format!("dump {id}:0:0"));
    b.quit();

    a.ok(&format!("set {id} a 1"));
    a.ok("pushed");
    a.quit();

    // B edits before it has caught up with A's edit: the server refuses it with a conflict
    // and B merges.
    let mut b = Client::start("B", &pb, addr, &token);
    b.ok(&format!("set {id} b 1"));
    b.ok("pushed");
    b.ok("caught_up");
    assert_eq!(b.dump(), format!("dump {id}:1:1"));
    if kill_idle {
        std::thread::sleep(Duration::from_millis(1500));
        b.kill();
    } else {
        b.quit();
    }
    let want = server_state(root, addr, &token, 0);
    assert_eq!(want, format!("dump {id}:1:1"), "the server holds the merge");
    let mut b = Client::start("B", &pb, addr, &token);
    if !kill_idle {
        assert_eq!(
            b.opened_outbox, 0,
            "after a clean exit, nothing acknowledged is queued"
        );
    }
    b.ok("pushed");
    b.ok("caught_up");
    assert_eq!(b.dump(), want, "B diverged from the server after reopening");
    b.quit();
    server.kill();
}

#[test]
fn a_merged_edit_survives_a_clean_exit() {
    merged_edit_survives(false);
}

#[test]
fn a_merged_edit_survives_a_kill_while_idle() {
    merged_edit_survives(true);
}

/// Rounds of concurrent optimistic edits on a few shared records by two replicas (each edits
/// one field, so three-way merges keep both), with one replica killed or exiting at a random
/// instant (mid-burst, mid-merge, right after pushing, idle after merges); after each round
/// every replica reopens and converges to the server's state.
fn merge_rounds(seed: u64, rounds: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (pa, pb) = (root.join("a.rekord"), root.join("b.rekord"));
    let mut rng = Rng(seed | 1);
    eprintln!("merge rounds: seed {seed} (REKORD_MERGE_SEED replays it)");

    let mut a = Client::start("A", &pa, addr, &token);
    a.ok("caught_up");
    let ids: Vec<u64> = (0..4).map(|_| a.create()).collect();
    let ids = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    a.ok("pushed");
    a.quit();
    let mut b = Client::start("B", &pb, addr, &token);
    b.ok("caught_up");
    b.quit();
    let mut conflicts = 0u64;
    for round in 0..rounds {
        let mut a = Client::start("A", &pa, addr, &token);
        let mut b = Client::start("B", &pb, addr, &token);
        let n = 5 + rng.below(30);
        a.send(&format!("burst {} a {n} {ids}", rng.next()));
        b.send(&format!("burst {} b {n} {ids}", rng.next()));
        assert_eq!(a.line(), "done");
        let how = rng.below(4);
        match how {
            // Killed while B's burst and the merges it causes are under way.
            0 => {
                std::thread::sleep(Duration::from_millis(rng.below(60)));
                b.kill();
            }
            // Exits cleanly right after its burst (merges may still be in flight).
            1 => {
                assert_eq!(b.line(), "done");
                b.quit();
            }
            // Killed right after everything was pushed (merges done, bookkeeping lazy).
            2 => {
                assert_eq!(b.line(), "done");
                b.ok("pushed");
                b.kill();
            }
            // Killed while idle after merges.
            _ => {
                assert_eq!(b.line(), "done");
                b.ok("pushed");
                std::thread::sleep(Duration::from_millis(rng.below(800)));
                b.kill();
            }
        }
        a.ok("pushed");
        let st = a.ask("status");
        conflicts += st
            .split_whitespace()
            .nth(2)
            .map_or(0, |c| c.parse().unwrap());
        a.quit();
        // B pushes what it still had queued; then A and a fresh replica catch up.
        let got_b = reopen_settled("B", &pb, addr, &token);
        let got_a = reopen_settled("A", &pa, addr, &token);
        let want = server_state(root, addr, &token, round);
        eprintln!("round {round}: exit mode {how}, {want}");
        assert_eq!(got_a, want, "round {round}: A diverged from the server");
        // B settled before A and the fresh replica looked: it must hold the same.
        let again_b = reopen_settled("B", &pb, addr, &token);
        assert_eq!(got_b, want, "round {round}: B diverged from the server");
        assert_eq!(again_b, want, "round {round}: B changed across a reopen");
    }
    assert!(conflicts > 0, "the rounds merged no conflict at all");
    server.kill();
}

#[test]
fn merges_then_exits_and_kills_at_random_instants_converge() {
    let seed = std::env::var("REKORD_MERGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    merge_rounds(seed, 6);
}

#[test]
#[ignore = "long merge-crash run (minutes); the short variant runs in CI"]
fn merges_then_exits_and_kills_at_random_instants_converge_long() {
    let seed = std::env::var("REKORD_MERGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    merge_rounds(seed, 60);
}
