//! Change sync: schemas, the rules on changes, idempotent retries, pushes and catch-up,
//! with real QUIC servers and clients on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{Running, client};

use std::net::SocketAddr;
use std::time::Duration;

use rekord::net::{self, NetError, Session};
use rekord::proto::handshake::{ClientConfig, Trees};
use rekord::proto::{
    Change, ChangeKind, EntryOutcome, Push, RemoteError, Request, Response, Sequenced,
};
use rekord::{Record, Schema};

const BOUND: Duration = Duration::from_secs(20);
const PUSH_WAIT: Duration = Duration::from_secs(5);

#[rekord::record(tree = "parts")]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
    pub tags: Vec<String>,
}

async fn bounded<F: Future>(f: F) -> F::Output {
    common::bounded(BOUND, f).await
}

fn part(name: &str, qty: u32) -> Vec<u8> {
    Part {
        name: name.into(),
        qty,
        tags: vec!["a".into(), "b".into()],
    }
    .__encode(Vec::new())
    .unwrap()
}

fn schema_ron() -> String {
    Schema::of::<Part>().to_ron().unwrap()
}

fn put(id: u64, rev: u32, data: Vec<u8>) -> Change {
    Change {
        tree: "parts".into(),
        id,
        rev,
        kind: ChangeKind::Put {
            version: Part::VERSION,
            data,
        },
    }
}

fn change(id: u64, rev: u32, kind: ChangeKind) -> Change {
    Change {
        tree: "parts".into(),
        id,
        rev,
        kind,
    }
}

fn remote<T: std::fmt::Debug>(result: Result<T, NetError>) -> RemoteError {
    match result {
        Err(NetError::Remote(e)) => e,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

fn op() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// Connects and reads the catch-up: the changes pushed before `CaughtUp`, and its head.
async fn connect(
    addr: SocketAddr,
    cfg: &ClientConfig,
    pin: Option<&net::Pin>,
) -> (Session, Vec<Sequenced>, u64) {
    let mut s = net::connect(addr, cfg, pin).await.unwrap();
    let mut got = Vec::new();
    loop {
        match s.next_push(PUSH_WAIT).await.unwrap() {
            Some(Push::Changes(entries)) => {
                assert!(entries.len() <= 1000);
                got.extend(entries);
            }
            Some(Push::CaughtUp { head }) => return (s, got, head),
            other => panic!("unexpected push during catch-up: {other:?}"),
        }
    }
}

/// Reads pushes until changes up to `seq` arrived; returns the changes.
async fn changes_until(s: &mut Session, seq: u64) -> Vec<Sequenced> {
    let mut got: Vec<Sequenced> = Vec::new();
    while got.last().is_none_or(|e| e.seq < seq) {
        match s.next_push(PUSH_WAIT).await.unwrap() {
            Some(Push::Changes(entries)) => got.extend(entries),
            other => panic!("expected changes up to {seq}, got {other:?}"),
        }
    }
    got
}

fn assert_gap_free(entries: &[Sequenced], first: u64, last: u64) {
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (first..=last).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_validated_and_immutable() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let (mut a, _, _) = connect(server.addr, &client(&server.token("a")), None).await;
        let ron = schema_ron();
        a.put_schema("parts", Part::VERSION, &ron).await.unwrap();
        // The same schema again is fine.
        a.put_schema("parts", Part::VERSION, &ron).await.unwrap();
        // A different schema for the same version is refused, naming tree and version.
        let mut other = Schema::of::<Part>();
        other.types.clear();
        let e = remote(
            a.put_schema("parts", Part::VERSION, &other.to_ron().unwrap())
                .await,
        );
        let RemoteError::Invalid(msg) = e else {
            panic!("{e:?}")
        };
        assert!(msg.contains("parts") && msg.contains(&Part::VERSION.to_string()));
        // Tree or version not matching the schema's, and text that is no schema.
        assert!(matches!(
            remote(a.put_schema("tools", Part::VERSION, &ron).await),
            RemoteError::Invalid(_)
        ));
        assert!(matches!(
            remote(a.put_schema("parts", Part::VERSION + 1, &ron).await),
            RemoteError::Invalid(_)
        ));
        assert!(matches!(
            remote(a.put_schema("parts", 7, "not ron").await),
            RemoteError::Invalid(_)
        ));
        assert_eq!(
            server.store.schema("parts", Part::VERSION).unwrap(),
            Some(ron)
        );
        a.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_on_changes() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let (mut a, _, _) = connect(server.addr, &client(&server.token("a")), None).await;
        let (mut b, _, _) = connect(server.addr, &client(&server.token("b")), None).await;
        let holder_a = a.server_hello().replica;

        let (start, _) = a.ranges(10).await.unwrap()[0];
        let (b_start, _) = b.ranges(10).await.unwrap()[0];
        let id = start;

        // Unknown schema.
        let e = remote(a.changes(op(), vec![put(id, 0, part("bolt", 1))]).await);
        let RemoteError::Invalid(msg) = e else {
            panic!("{e:?}")
        };
        assert!(msg.contains("upload the schema first"), "{msg}");
        a.put_schema("parts", Part::VERSION, &schema_ron())
            .await
            .unwrap();

        // Creates: inside the range accepted, outside refused.
        assert_eq!(
            a.changes(op(), vec![put(id, 0, part("bolt", 1))])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            remote(a.changes(op(), vec![put(b_start, 0, part("x", 1))]).await),
            RemoteError::OutsideRange { id: b_start }
        );
        assert_eq!(
            remote(a.changes(op(), vec![put(5, 0, part("x", 1))]).await),
            RemoteError::OutsideRange { id: 5 }
        );
        // Garbage data is refused by the schema check.
        let e = remote(a.changes(op(), vec![put(id + 1, 0, vec![0xff; 3])]).await);
        assert!(matches!(e, RemoteError::Invalid(_)), "{e:?}");

        // The create gave A the borrow.
        assert_eq!(server.store.borrower("parts", id).unwrap(), Some(holder_a));
        assert_eq!(
            remote(b.borrow("parts", id).await),
            RemoteError::AlreadyBorrowed {
                holder: holder_a,
                name: Some("a".into()),
            }
        );
        // Updates: without the borrow refused, with it accepted.
        assert_eq!(
            remote(b.changes(op(), vec![put(id, 0, part("nut", 2))]).await),
            RemoteError::NotBorrowed
        );
        assert_eq!(
            a.changes(op(), vec![put(id, 0, part("bolt", 2))])
                .await
                .unwrap(),
            2
        );
        let state = server.store.record("parts", id, 0).unwrap().unwrap();
        assert_eq!(state.data, part("bolt", 2));
        assert!(state.exists && !state.released);

        // State of an unreleased revision: refused.
        assert!(matches!(
            remote(
                a.changes(op(), vec![change(id, 0, ChangeKind::SetState(1))])
                    .await
            ),
            RemoteError::Invalid(_)
        ));
        // Release, then updates are refused but the state may change.
        assert_eq!(
            a.changes(op(), vec![change(id, 0, ChangeKind::Release)])
                .await
                .unwrap(),
            3
        );
        assert_eq!(
            remote(a.changes(op(), vec![put(id, 0, part("bolt", 3))]).await),
            RemoteError::Released
        );
        assert_eq!(
            remote(
                a.changes(op(), vec![change(id, 0, ChangeKind::Remove)])
                    .await
            ),
            RemoteError::Released
        );
        assert_eq!(
            a.changes(op(), vec![change(id, 0, ChangeKind::SetState(7))])
                .await
                .unwrap(),
            4
        );
        let state = server.store.record("parts", id, 0).unwrap().unwrap();
        assert!(state.released);
        assert_eq!(state.state, 7);
        // B may not set the state without the borrow.
        assert_eq!(
            remote(
                b.changes(op(), vec![change(id, 0, ChangeKind::SetState(8))])
                    .await
            ),
            RemoteError::NotBorrowed
        );

        // New revisions need the previous one.
        assert!(matches!(
            remote(a.changes(op(), vec![put(id, 2, part("bolt", 9))]).await),
            RemoteError::Invalid(_)
        ));
        assert_eq!(
            a.changes(op(), vec![put(id, 1, part("bolt", 9))])
                .await
                .unwrap(),
            5
        );
        assert_eq!(
            a.changes(op(), vec![change(id, 1, ChangeKind::Remove)])
                .await
                .unwrap(),
            6
        );
        assert!(!server.store.record("parts", id, 1).unwrap().unwrap().exists);

        // Tree not writable.
        let reader = server
            .store
            .issue("reader", Trees::All, Trees::Only(vec!["notes".into()]))
            .unwrap();
        let (mut r, _, _) = connect(server.addr, &client(&reader), None).await;
        let (r_start, _) = r.ranges(1).await.unwrap()[0];
        assert_eq!(
            remote(r.changes(op(), vec![put(r_start, 0, part("x", 1))]).await),
            RemoteError::NotAllowed {
                tree: "parts".into()
            }
        );
        assert_eq!(server.store.head().unwrap(), 6);
        a.close().await;
        b.close().await;
        r.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_apply_once_and_batches_all_or_nothing() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let (mut a, _, _) = connect(server.addr, &client(&server.token("a")), None).await;
        a.put_schema("parts", Part::VERSION, &schema_ron())
            .await
            .unwrap();
        let (start, _) = a.ranges(10).await.unwrap()[0];

        // All or nothing: the second change is invalid, the first is not applied.
        let batch = vec![
            put(start, 0, part("a", 1)),
            put(start + 1, 0, vec![1, 2, 3]),
            put(start + 2, 0, part("c", 1)),
        ];
        assert!(matches!(
            remote(a.changes(op(), batch).await),
            RemoteError::Invalid(_)
        ));
        assert_eq!(server.store.head().unwrap(), 0);
        assert_eq!(server.store.record("parts", start, 0).unwrap(), None);
        assert_eq!(server.store.borrower("parts", start).unwrap(), None);

        // A batch: create then update the same record, and another create.
        let batch = vec![
            put(start, 0, part("a", 1)),
            put(start, 0, part("a", 2)),
            put(start + 1, 0, part("b", 1)),
        ];
        let once = op();
        assert_eq!(a.changes(once, batch.clone()).await.unwrap(), 3);
        // The retry answers the same and applies nothing.
        assert_eq!(a.changes(once, batch.clone()).await.unwrap(), 3);
        assert_eq!(server.store.head().unwrap(), 3);
        let log = server.store.log_after(0, 100, usize::MAX).unwrap();
        assert_gap_free(&log, 1, 3);
        // Pushed once only.
        let got = changes_until(&mut a, 3).await;
        assert_gap_free(&got, 1, 3);
        assert_eq!(
            got.iter().map(|e| e.change.clone()).collect::<Vec<_>>(),
            batch
        );
        let extra = a.next_push(Duration::from_millis(300)).await.unwrap();
        assert!(
            !matches!(extra, Some(Push::Changes(_))),
            "the retry was pushed again: {extra:?}"
        );
        // A fresh op with the same changes is a new operation (here: updates).
        assert_eq!(
            a.changes(op(), vec![put(start, 0, part("a", 3))])
                .await
                .unwrap(),
            4
        );
        a.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_receive_changes_in_order() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let (mut a, _, _) = connect(server.addr, &client(&server.token("a")), None).await;
        let (mut b, _, head) = connect(server.addr, &client(&server.token("b")), None).await;
        assert_eq!(head, 0);
        let holder_a = a.server_hello().replica;
        a.put_schema("parts", Part::VERSION, &schema_ron())
            .await
            .unwrap();
        let (start, _) = a.ranges(100).await.unwrap()[0];
        let mut last = 0;
        for i in 0..20u64 {
            let batch = (0..3)
                .map(|j| put(start + i * 3 + j, 0, part("p", 1)))
                .collect();
            last = a.changes(op(), batch).await.unwrap();
        }
        assert_eq!(last, 60);
        let got = changes_until(&mut b, 60).await;
        assert_gap_free(&got, 1, 60);
        assert!(got.iter().all(|e| e.origin == holder_a));
        assert_eq!(got[0].change, put(start, 0, part("p", 1)));
        let mine = changes_until(&mut a, 60).await;
        assert_gap_free(&mine, 1, 60);
        a.close().await;
        b.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_from_a_cursor_also_across_a_restart() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let cfg_a = client(&server.token("a"));
        let cfg_c = client(&server.token("c"));
        let (mut a, _, _) = connect(server.addr, &cfg_a, None).await;
        let pin = a.pin();
        a.put_schema("parts", Part::VERSION, &schema_ron())
            .await
            .unwrap();
        let (start, _) = a.ranges(100).await.unwrap()[0];
        for i in 0..5 {
            a.changes(op(), vec![put(start + i, 0, part("p", 1))])
                .await
                .unwrap();
        }

        // Cursor 2: exactly 3..=5, then CaughtUp.
        let mut cfg = cfg_c.clone();
        cfg.cursor = 2;
        let (c, got, head) = connect(server.addr, &cfg, Some(&pin)).await;
        assert_eq!(c.server_hello().head, 5);
        assert_gap_free(&got, 3, 5);
        assert_eq!(head, 5);
        c.close().await;

        // Changes written while a client catches up: no gap, no duplicate.
        let writer = tokio::spawn(async move {
            for i in 5..40 {
                a.changes(op(), vec![put(start + i, 0, part("p", 1))])
                    .await
                    .unwrap();
            }
            a
        });
        let mut cfg = cfg_c.clone();
        cfg.cursor = 1;
        let (mut c, mut got, _) = connect(server.addr, &cfg, Some(&pin)).await;
        let a = writer.await.unwrap();
        let rest = changes_until(&mut c, 40).await;
        got.extend(rest);
        assert_gap_free(&got, 2, 40);
        c.close().await;
        a.close().await;
        server.stop().await;

        // After a restart: the head survives, catch-up works the same.
        let server = Running::start(dir.path());
        assert_eq!(server.store.head().unwrap(), 40);
        let mut cfg = cfg_c.clone();
        cfg.cursor = 37;
        let (c, got, head) = connect(server.addr, &cfg, Some(&pin)).await;
        assert_eq!(c.server_hello().head, 40);
        assert_gap_free(&got, 38, 40);
        assert_eq!(head, 40);
        c.close().await;
        cfg.cursor = 0;
        let (c, got, _) = connect(server.addr, &cfg, Some(&pin)).await;
        assert_gap_free(&got, 1, 40);
        assert_eq!(got[0].change, put(start, 0, part("p", 1)));
        c.close().await;
        server.stop().await;
    })
    .await;
}

#[rekord::record(tree = "tools")]
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_receive_only_the_trees_they_subscribe_to_and_may_read() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let (mut a, _, _) = connect(server.addr, &client(&server.token("a")), None).await;
        // B subscribes to `tools` only; C's token may read `parts` only (no subscription list).
        let mut tools_only = client(&server.token("b"));
        tools_only.trees = vec!["tools".into()];
        let (mut b, _, _) = connect(server.addr, &tools_only, None).await;
        let c_token = server
            .store
            .issue("c", Trees::Only(vec!["parts".into()]), Trees::Only(vec![]))
            .unwrap();
        let (mut c, _, _) = connect(server.addr, &client(&c_token), None).await;

        a.put_schema("parts", Part::VERSION, &schema_ron())
            .await
            .unwrap();
        a.put_schema(
            "tools",
            Tool::VERSION,
            &Schema::of::<Tool>().to_ron().unwrap(),
        )
        .await
        .unwrap();
        let (start, _) = a.ranges(10).await.unwrap()[0];
        let tool = Change {
            tree: "tools".into(),
            id: start + 1,
            rev: 0,
            kind: ChangeKind::Put {
                version: Tool::VERSION,
                data: Tool { name: "saw".into() }.__encode(Vec::new()).unwrap(),
            },
        };
        let s1 = a
            .changes(op(), vec![put(start, 0, part("bolt", 1))])
            .await
            .unwrap();
        let s2 = a.changes(op(), vec![tool]).await.unwrap();
        assert_eq!(s2, s1 + 1);

        // B sees the tool change and nothing of `parts`.
        let got_b = changes_until(&mut b, s2).await;
        assert_eq!(
            got_b
                .iter()
                .map(|e| e.change.tree.as_str())
                .collect::<Vec<_>>(),
            ["tools"]
        );
        // C sees the part change; the tool change never reaches it.
        let got_c = changes_until(&mut c, s1).await;
        assert_eq!(
            got_c
                .iter()
                .map(|e| e.change.tree.as_str())
                .collect::<Vec<_>>(),
            ["parts"]
        );
        match c.next_push(Duration::from_millis(300)).await.unwrap() {
            None => {}
            Some(other) => panic!("C must not receive other trees' changes: {other:?}"),
        }
        // Catch-up is filtered the same way.
        let (_, caught, head) = connect(server.addr, &tools_only, None).await;
        assert_eq!(head, s2);
        assert_eq!(caught.iter().map(|e| e.seq).collect::<Vec<_>>(), [s2]);
        // A token that may not read `tools` cannot subscribe to it.
        let mut greedy = client(&c_token);
        greedy.trees = vec!["tools".into()];
        assert!(net::connect(server.addr, &greedy, None).await.is_err());
        a.close().await;
        b.close().await;
        c.close().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbered_entries_apply_once_and_a_refused_one_stops_the_run() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let (mut a, _, _) = connect(server.addr, &client(&server.token("a")), None).await;
        a.put_schema("parts", Part::VERSION, &schema_ron())
            .await
            .unwrap();
        let (start, _) = a.ranges(10).await.unwrap()[0];
        let entries = |first: u64, entries: Vec<Vec<Change>>| Request::Entries { first, entries };
        let answer = |r: Response| match r {
            Response::Entries(o) => o,
            other => panic!("expected entry outcomes, got {other:?}"),
        };

        // Entries 1..=3; the second has two changes, applied together.
        let run = vec![
            vec![put(start, 0, part("a", 1))],
            vec![put(start + 1, 0, part("b", 1)), put(start, 0, part("a", 2))],
            vec![put(start + 2, 0, part("c", 1))],
        ];
        let got = answer(a.request(entries(1, run.clone())).await.unwrap());
        assert_eq!(
            got,
            vec![
                EntryOutcome::Applied { seq: 1 },
                EntryOutcome::Applied { seq: 3 },
                EntryOutcome::Applied { seq: 4 },
            ]
        );
        // The same run again (a lost answer): nothing applied twice, the same answers.
        let again = answer(a.request(entries(1, run.clone())).await.unwrap());
        assert_eq!(again, got);
        assert_eq!(server.store.head().unwrap(), 4);

        // Entries 4..=6 where 5 is refused halfway (its first change is fine, its second
        // is not): 4 applies, nothing of 5, 6 is not processed.
        let run = vec![
            vec![put(start + 3, 0, part("d", 1))],
            vec![
                put(start + 4, 0, part("e", 1)),
                put(start + 5, 0, vec![9, 9]),
            ],
            vec![put(start + 6, 0, part("g", 1))],
        ];
        let got = answer(a.request(entries(4, run)).await.unwrap());
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], EntryOutcome::Applied { seq: 5 });
        assert!(matches!(
            got[1],
            EntryOutcome::Rejected(RemoteError::Invalid(_))
        ));
        assert_eq!(server.store.head().unwrap(), 5);
        assert_eq!(server.store.record("parts", start + 4, 0).unwrap(), None);
        // Entry 5 counts as processed: sending it again (even fixed) applies nothing and
        // hears the refusal again; 6 goes.
        let run = vec![
            vec![put(start + 4, 0, part("e", 1))],
            vec![put(start + 6, 0, part("g", 1))],
        ];
        let got = answer(a.request(entries(5, run)).await.unwrap());
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(
            got[0],
            EntryOutcome::Rejected(RemoteError::Invalid(_))
        ));
        assert_eq!(got[1], EntryOutcome::Applied { seq: 6 });
        // Once the client sends only later entries, the earlier answers are forgotten; a
        // client never sends a settled entry again, so one that does is another copy of
        // its file (or an older backup of it): refused, not taken for a retry.
        let got = answer(a.request(entries(7, vec![vec![]])).await.unwrap());
        assert_eq!(got, vec![EntryOutcome::Applied { seq: 6 }]);
        let run = vec![vec![put(start, 0, part("a", 1))]];
        let got = answer(a.request(entries(1, run)).await.unwrap());
        assert!(
            matches!(&got[..], [EntryOutcome::Rejected(RemoteError::Invalid(m))] if m.contains("copy")),
            "{got:?}"
        );
        let log = server.store.log_after(0, 100, usize::MAX).unwrap();
        assert_gap_free(&log, 1, 6);
        // Entry numbers start at 1.
        assert!(a.request(entries(0, vec![vec![]])).await.is_err());
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_does_not_read_its_pushes_is_closed_as_lagged_never_skipped() {
    common::bounded(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let server = Running::start(dir.path());
        let token = server.token("a");
        let (mut a, _, _) = connect(server.addr, &client(&token), None).await;
        // B connects, then never reads again.
        let (mut b, _, _) = connect(server.addr, &client(&token), None).await;
        a.put_schema("parts", Part::VERSION, &schema_ron())
            .await
            .unwrap();
        let (start, _) = a.ranges(10_000).await.unwrap()[0];
        // Large records first fill B's flow-control window, so the server cannot hand B
        // anything more; then small ones, one push each, overflow B's push queue.
        let big = part(&"x".repeat(60_000), 1);
        let small = part("s", 1);
        let total = 40 + rekord_server::PUSH_QUEUE as u64 + 200;
        for i in 0..total {
            let data = if i < 40 { big.clone() } else { small.clone() };
            a.changes(op(), vec![put(start + i, 0, data)])
                .await
                .unwrap();
            // A reads its own pushes, so it is never the one lagging.
            while a.try_next_push().unwrap().is_some() {}
        }
        // B reads now: what was queued for it, then the close, with the reason.
        let end = loop {
            match b.next_push(Duration::from_secs(10)).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("B was neither closed nor sent anything"),
                Err(e) => break e,
            }
        };
        let text = end.to_string();
        assert!(
            matches!(end, NetError::Closed(_)) && text.contains("too many pushes"),
            "{text}"
        );
        // A is unaffected and B's data is all in the log for its next catch-up.
        a.ping().await.unwrap();
        assert_eq!(server.store.head().unwrap(), total);
        server.stop().await;
    })
    .await;
}
