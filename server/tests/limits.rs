//! The server's limits as a client meets them (issue 15): what a refused connection, a
//! token at its replica limit, a server full of schemas and a wrong configuration say.
//! The attacks themselves are in `attack.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rekord::net::{self, NetError};
use rekord::proto::handshake::HandshakeError;
use rekord::proto::{Refusal, RemoteError};
use rekord::{Db, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{APP, BIN, ServerProcess, issue};

mod common;

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(30);

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    SyncConfig::new(addr, APP, token).retry(
        rekord::Retry::default()
            .initial(Duration::from_millis(20))
            .max(Duration::from_millis(200)),
    )
}

/// A connection refused at the door (here: an address opening connections faster than
/// `handshakes_per_second_per_address`) is reported as such, not as a lost packet.
#[tokio::test]
async fn a_connection_refused_at_a_limit_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = rekord_server::Server::bind(rekord_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        app: common::APP.into(),
        limits: rekord_server::Limits {
            handshakes_per_second_per_address: 1,
            // 127.0.0.1 is trusted by default.
            trusted: Vec::new(),
            ..Default::default()
        },
        web: Default::default(),
    })
    .unwrap();
    let addr = server.local_addr().unwrap();
    let token = server
        .store()
        .issue(
            "t",
            rekord::proto::handshake::Trees::All,
            rekord::proto::handshake::Trees::All,
        )
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let first = net::connect(addr, &common::client(&token), None)
        .await
        .unwrap();
    let second = net::connect(addr, &common::client(&token), None).await;
    match second {
        Err(e @ NetError::Connect { .. }) => {
            let text = e.to_string();
            assert!(text.contains("refused the connection"), "{text}");
            assert!(text.contains("retry later"), "{text}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a second connection within a second was admitted"),
    }
    // The allowance refills: a second later the address is welcome again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    net::connect(addr, &common::client(&token), None)
        .await
        .unwrap();
    drop(first);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A token at its replica limit: known replicas still connect, a new one is refused with
/// the reason (a synced database reports it), and other tokens are untouched.
#[test]
fn a_token_at_its_replica_limit_refuses_new_replicas_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = issue(&data, "app", &["--read-all", "--write-all"]);
    let other = issue(&data, "other", &["--read-all", "--write-all"]);
    let server = ServerProcess::start_with(
        &data,
        "127.0.0.1:0",
        None,
        "info",
        &["--limit", "replicas_per_token=2"],
    );
    let files: Vec<_> = (0..2)
        .map(|i| dir.path().join(format!("r{i}.rekord")))
        .collect();
    for file in &files {
        let db = Db::open_synced(file, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
    }
    // A third replica of the same token is refused, saying why.
    let third = Db::memory_synced(config(server.addr, &token)).unwrap();
    let err = third.wait_caught_up(LIMIT).unwrap_err().to_string();
    assert!(err.contains("registered 2 replicas"), "{err}");
    assert!(err.contains("replicas_per_token"), "{err}");
    // The two known replicas still connect.
    for file in &files {
        let db = Db::open_synced(file, config(server.addr, &token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
    }
    // Another token has its own count.
    let db = Db::memory_synced(config(server.addr, &other)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
}

/// Past `max_schemas`, a new schema is refused with the limit's name; the schemas stored
/// stay usable.
#[tokio::test]
async fn a_server_full_of_schemas_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = rekord_server::Server::bind(rekord_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        app: common::APP.into(),
        limits: rekord_server::Limits {
            max_schemas: 2,
            ..Default::default()
        },
        web: Default::default(),
    })
    .unwrap();
    let addr = server.local_addr().unwrap();
    let token = server
        .store()
        .issue(
            "t",
            rekord::proto::handshake::Trees::All,
            rekord::proto::handshake::Trees::All,
        )
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let mut s = net::connect(addr, &common::client(&token), None)
        .await
        .unwrap();
    let ron = rekord::Schema::of::<Part>().to_ron().unwrap();
    let named = |tree: &str| ron.replace("\"parts\"", &format!("\"{tree}\""));
    s.put_schema("parts", 1, &ron).await.unwrap();
    s.put_schema("a", 1, &named("a")).await.unwrap();
    match s.put_schema("b", 1, &named("b")).await {
        Err(NetError::Remote(RemoteError::Invalid(text))) => {
            assert!(text.contains("limits.max_schemas"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // A schema already stored is still accepted again.
    s.put_schema("parts", 1, &ron).await.unwrap();
    drop(s);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Limits given wrong are refused with their name; `run --help` prints the defaults.
#[test]
fn limits_are_checked_and_their_defaults_printed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("--data")
            .arg(dir.path())
            .arg("run")
            .args(args)
            .output()
            .unwrap()
    };
    for (args, says) in [
        (
            &["--limit", "max_handshakes=0"][..],
            "limits.max_handshakes must be at least 1",
        ),
        (&["--limit", "nope=3"][..], "no such limit"),
        (&["--limit", "max_handshakes"][..], "expected NAME=VALUE"),
        (&["--limit", "max_handshakes=-1"][..], "not a whole number"),
        (
            &["--limit", "trusted=10.0.0.1,nope"][..],
            "`nope` is not an IP address",
        ),
    ] {
        let out = run(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[limits]\nmax_schemas = 0\n").unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_schemas"));

    let help = std::process::Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (name, value, _) in rekord_server::Limits::default().describe() {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} is not in run --help:\n{help}"));
        assert!(line.contains(&value.to_string()), "{line}");
    }
}

/// A refusal at the replica limit is a typed refusal on the wire, too.
#[tokio::test]
async fn the_replica_refusal_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let server = rekord_server::Server::bind(rekord_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        app: common::APP.into(),
        limits: rekord_server::Limits {
            replicas_per_token: 1,
            ..Default::default()
        },
        web: Default::default(),
    })
    .unwrap();
    let addr = server.local_addr().unwrap();
    let token = server
        .store()
        .issue(
            "t",
            rekord::proto::handshake::Trees::All,
            rekord::proto::handshake::Trees::All,
        )
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    net::connect(addr, &common::client(&token), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    match net::connect(addr, &common::client(&token), None).await {
        Err(NetError::Handshake(HandshakeError::Refused(Refusal::TooManyReplicas { limit }))) => {
            assert_eq!(limit, 1);
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a second replica was admitted"),
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
