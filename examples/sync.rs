//! Sync in one process: a rekord server and two synced databases, "alice" and "bob". Alice
//! creates a task and bob sees it arrive in real time; bob cannot borrow it while alice holds
//! it, alice returns it, bob borrows and edits it, and alice sees bob's edit. Then an
//! optimistic tree: both edit a note without borrowing it, bob while offline, and bob's
//! replica merges the two edits field by field when it reconnects.
//!
//! Run it with `cargo run --example sync`. The same with real processes:
//!
//! ```sh
//! cargo run -p rekord-server -- --data DIR run        # listens on 127.0.0.1:7878, app `rekord`
//! cargo run -p rekord-server -- --data DIR token issue --name demo --read-all --write-all
//! ```
//!
//! and each client program opens its local file as a replica of the server's database:
//!
//! ```ignore
//! let config = SyncConfig::new("127.0.0.1:7878".parse()?, "rekord", token);
//! let db = rekord::Db::open_synced("alice.rekord", config)?;
//! ```

use rekord::proto::handshake::Trees;
use rekord::{
    Db, Error, Event, EventKind, Key, Merge, Record, RecordEvent, Subscription, SyncConfig,
    SyncEvent, Tree,
};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// A task on a shared list.
#[rekord::record(tree = "tasks", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
}

/// A note on a shared board: an optimistic tree (no borrows; concurrent edits merged).
#[rekord::record(tree = "notes", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The text.
    pub text: String,
    /// How many liked it.
    pub likes: u32,
}

/// The application name the server and its clients agree on (the server's default).
const APP: &str = "rekord";
/// Bound on every wait: the example fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(10);

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let t0 = Instant::now();
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // 1. The server, in-process on a free loopback port, and a token for the clients.
    let config = rekord_server::Config {
        listen: "127.0.0.1:0".parse()?,
        data: dir.path().join("server"),
        app: APP.into(),
        ..Default::default()
    };
    let server = rt.block_on(async { rekord_server::Server::bind(config) })?;
    let addr = server.local_addr()?;
    let id = server.identity();
    println!("server on {addr}, uuid {}", id.uuid);
    println!("  certificate fingerprint {}", id.fingerprint());
    let token = server.store().issue("demo", Trees::All, Trees::All)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.serve(async {
        let _ = stopped.await;
    }));

    // 2. Two synced databases, each a local file (all reads and writes stay local).
    let open = |name: &str| -> Res<Db> {
        let config = SyncConfig::new(addr, APP, token.as_str())
            // Notes are edited without borrows; concurrent edits merge field by field.
            .optimistic("notes", Merge::three_way());
        let db = Db::open_synced(dir.path().join(format!("{name}.rekord")), config)?;
        db.wait_caught_up(LIMIT)?;
        println!("{name} is online as replica {}", db.replica());
        Ok(db)
    };
    let (alice, bob) = (open("alice")?, open("bob")?);
    let (ra, rb) = (alice.replica(), bob.replica());
    let who = move |holder: u32| match holder {
        0 => "nobody",
        h if h == ra => "alice",
        h if h == rb => "bob",
        _ => "someone else",
    };
    let (tasks_a, tasks_b) = (alice.tree::<Task>()?, bob.tree::<Task>()?);
    let holders = |key: Key<Task>| -> Res<()> {
        let a = who(tasks_a.meta(key)?.holder);
        let b = who(tasks_b.meta(key)?.holder);
        println!("  holder: {a} as alice sees it, {b} as bob sees it");
        Ok(())
    };

    // 3. Bob's listener thread prints each remote change as it arrives and hands it on to
    //    main. (It keeps bob's replica number rather than a `Db` handle: `r.is_remote(&bob)`
    //    is the same test, and dropping `bob` below then ends the subscription and the thread.)
    let sub = bob.subscribe();
    let (tx, bob_events) = channel::<(RecordEvent, Instant)>();
    let listener = std::thread::spawn(move || {
        while let Some(event) = sub.recv_blocking() {
            let now = Instant::now();
            let ms = now.duration_since(t0).as_secs_f64() * 1e3;
            match event {
                Event::Record(r) if r.origin != rb => {
                    let by = who(r.origin);
                    println!("  [bob {ms:5.1} ms] {:?} {} by {by}", r.kind, r.key);
                    let _ = tx.send((r, now));
                }
                Event::Sync(s) => println!("  [bob {ms:5.1} ms] sync: {s:?}"),
                _ => {} // bob's own changes
            }
        }
    });

    // 4. Alice creates a task (a fresh client can once its first id range has arrived).
    let task = Task {
        title: "water the plants".into(),
        done: false,
    };
    let key = create(&tasks_a, &task)?;
    let committed = Instant::now();
    println!("alice created {key}");
    let seen = bob_sees(&bob_events, key, EventKind::Created)?;
    println!("bob got it {:.1?} after alice's commit", seen - committed);
    check(tasks_b.get(key)? == task, "bob's copy differs from alice's")?;
    check(tasks_b.meta(key)?.holder == ra, "alice should hold it")?;
    holders(key)?;

    // 5. Borrows: one holder at a time, granted by the server.
    match tasks_b.borrow(key) {
        Err(e @ Error::AlreadyBorrowed { .. }) => println!("bob cannot borrow it: {e}"),
        other => return Err(format!("expected AlreadyBorrowed, got {other:?}").into()),
    }
    tasks_a.update(key, |t| t.title = "water the plants (twice)".into())?;
    tasks_a.return_borrow(key)?;
    alice.wait_pushed(LIMIT)?;
    println!("alice edited it and returned it");
    bob_sees(&bob_events, key, EventKind::Returned { holder: ra })?;
    holders(key)?;

    let alice_sub = alice.subscribe();
    tasks_b.borrow(key)?;
    println!("bob borrowed it");
    alice_sees(&alice_sub, key, EventKind::Borrowed { holder: rb })?;
    holders(key)?;
    tasks_b.update(key, |t| t.done = true)?;
    tasks_b.return_borrow(key)?;
    bob.wait_pushed(LIMIT)?;
    println!("bob marked it done and returned it");
    alice_sees(&alice_sub, key, EventKind::Returned { holder: rb })?;
    let now = tasks_a.get(key)?;
    println!("alice sees {now:?}");
    check(
        now.done && now.title.ends_with("(twice)"),
        "alice misses an edit",
    )?;
    holders(key)?;

    // 6. Sync statistics, as an application would show them.
    for (name, db) in [("alice", &alice), ("bob", &bob)] {
        let Some(st) = db.sync_status() else {
            return Err("a synced database has a sync status".into());
        };
        println!(
            "{name}: online {}, outbox {} entries / {} bytes, cursor {}, conflicts {}, sent {} B, received {} B, last sync {:?} ago",
            st.online,
            st.outbox,
            st.outbox_bytes,
            st.cursor,
            st.conflicts,
            st.bytes_sent,
            st.bytes_received,
            st.last_sync
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default(),
        );
        check(
            st.online && st.bytes_sent > 0,
            "the statistics should show traffic",
        )?;
    }

    // 7. An optimistic tree: alice writes a note, bob sees it.
    let (notes_a, notes_b) = (alice.tree::<Note>()?, bob.tree::<Note>()?);
    let note = create(
        &notes_a,
        &Note {
            text: "buy soil".into(),
            likes: 0,
        },
    )?;
    wait_until("bob sees the note", || notes_b.get(note).is_ok())?;
    // Bob goes offline (his sync client stops) and edits the text; nobody borrows anything.
    bob.stop_sync();
    notes_b.update(note, |n| n.text = "buy soil and seeds".into())?;
    println!("bob (offline) edited the note's text");
    // Meanwhile alice likes it; the server accepts her edit first.
    notes_a.update(note, |n| n.likes += 1)?;
    alice.wait_pushed(LIMIT)?;
    println!("alice (online) liked the note");
    // Bob reconnects (reopens his file): the server refuses his edit as based on an older
    // version, bob's replica merges the two field by field and sends the outcome.
    drop((tasks_a, tasks_b, notes_b, alice_sub));
    drop(bob);
    if listener.join().is_err() {
        return Err("bob's listener thread panicked".into());
    }
    let bob = Db::open_synced(
        dir.path().join("bob.rekord"),
        SyncConfig::new(addr, APP, token.as_str()).optimistic("notes", Merge::three_way()),
    )?;
    // Subscribed before the sync client can report anything.
    let bob_sub = bob.subscribe();
    let conflict = wait_for(&bob_sub, |e| match e.as_sync() {
        Some(SyncEvent::Conflict(c)) => Some(c.clone()),
        _ => None,
    })?;
    println!(
        "bob merged a conflict ({}; winner: {:?}):\n  mine   {}\n  theirs {}\n  merged {}",
        conflict.strategy, conflict.winner, conflict.mine, conflict.theirs, conflict.outcome
    );
    bob.wait_pushed(LIMIT)?;
    let merged = Note {
        text: "buy soil and seeds".into(),
        likes: 1,
    };
    wait_until("alice sees the merge", || {
        notes_a.get(note).is_ok_and(|n| n == merged)
    })?;
    println!("alice sees {:?}", notes_a.get(note)?);
    let conflicts = bob.sync_status().map_or(0, |s| s.conflicts);
    println!("bob: {conflicts} conflict(s) merged");
    check(conflicts == 1, "bob should report one merged conflict")?;

    // 8. Close the clients (their sync threads stop), then the server.
    drop((notes_a, bob_sub));
    drop((alice, bob));
    let _ = stop.send(());
    rt.block_on(serving)??;
    println!("clients and server stopped after {:.1?}", t0.elapsed());
    Ok(())
}

/// Creates `record`, retrying briefly while the client waits for its first id range.
fn create<T: Record>(tree: &Tree<T>, record: &T) -> Res<Key<T>> {
    let start = Instant::now();
    loop {
        match tree.create(record) {
            Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            done => return Ok(done?),
        }
    }
}

/// Waits (bounded) for bob's listener to hand on event `kind` of `key`; when it arrived.
fn bob_sees(
    events: &Receiver<(RecordEvent, Instant)>,
    key: Key<Task>,
    kind: EventKind,
) -> Res<Instant> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (r, at) = events
            .recv_timeout(left)
            .map_err(|_| "bob did not see the change")?;
        if r.key == key.raw() && r.kind == kind {
            return Ok(at);
        }
    }
}

/// Waits (bounded) for event `kind` of `key` on alice's subscription.
fn alice_sees(sub: &Subscription, key: Key<Task>, kind: EventKind) -> Res<()> {
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        match sub.try_next() {
            Some(Event::Record(r)) if r.key == key.raw() && r.kind == kind => return Ok(()),
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    Err("alice did not see bob's change".into())
}

/// Waits (bounded, polling) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Res<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > LIMIT {
            return Err(format!("timed out: {what}").into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Waits (bounded) for the first event `pick` accepts on `sub`.
fn wait_for<R>(sub: &Subscription, mut pick: impl FnMut(&Event) -> Option<R>) -> Res<R> {
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        match sub.try_next() {
            Some(e) => {
                if let Some(r) = pick(&e) {
                    return Ok(r);
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    Err("timed out waiting for an event".into())
}

/// Fails the example with `msg` unless `ok`.
fn check(ok: bool, msg: &str) -> Res<()> {
    if ok { Ok(()) } else { Err(msg.into()) }
}
