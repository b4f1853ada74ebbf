//! The `rekord-server` binary: tokens, identity, backup, and a running server process that
//! ends cleanly on SIGTERM and SIGINT.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase as _, ReadableTableMetadata as _};
use rekord::net;
use rekord::proto::handshake::ClientConfig;
use rekord_server::{Config, Server};

const BIN: &str = env!("CARGO_BIN_EXE_rekord-server");

fn cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rekord-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn client(app: &str, token: &str) -> ClientConfig {
    ClientConfig {
        app: app.into(),
        client: *uuid::Uuid::new_v4().as_bytes(),
        token: token.into(),
        pinned: None,
        cursor: 0,
        trees: vec![],
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    }
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{key}` in {text:?}"))
}

#[test]
fn cli_tokens_identity_and_backup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = cli(
        &data,
        &[
            "token",
            "issue",
            "--name",
            "alice",
            "--read-all",
            "--write-all",
        ],
    );
    let token = token.trim().to_owned();
    assert!(token.len() >= 64, "{token}");
    cli(
        &data,
        &[
            "token",
            "issue",
            "--name",
            "bob",
            "--read",
            "parts,tools",
            "--write",
            "parts",
        ],
    );
    let list = cli(&data, &["token", "list"]);
    assert!(list.contains("alice\tread: all\twrite: all"), "{list}");
    assert!(
        list.contains("bob\tread: parts,tools\twrite: parts"),
        "{list}"
    );
    assert!(!list.contains(&token), "tokens are never shown again");

    let nobody = cli(
        &data,
        &["borrow", "force-return", "--tree", "parts", "--id", "5"],
    );
    assert_eq!(nobody.trim(), "nobody held record 5 of tree `parts`");

    let identity = cli(&data, &["identity"]);
    let uuid = field(&identity, "uuid").to_owned();
    let fingerprint = field(&identity, "fingerprint").to_owned();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = Server::bind(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data: data.clone(),
            app: "workshop".into(),
            ..Default::default()
        })
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        let mut session = tokio::time::timeout(
            Duration::from_secs(30),
            net::connect(addr, &client("workshop", &token), None),
        )
        .await
        .unwrap()
        .unwrap();
        session.ping().await.unwrap();
        let pin = session.pin();
        assert_eq!(pin.cert, fingerprint, "`identity` prints what clients pin");
        assert_eq!(uuid::Uuid::from_bytes(pin.server).to_string(), uuid);
        session.close().await;
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    });

    // `token list` shows the holder numbers that connected with each token.
    let list = cli(&data, &["token", "list"]);
    assert!(
        list.contains("alice\tread: all\twrite: all\tholders: 2\n"),
        "{list}"
    );
    assert!(
        list.contains("bob\tread: parts,tools\twrite: parts\tholders: none\n"),
        "{list}"
    );

    let backup = dir.path().join("backup.redb");
    cli(&data, &["backup", "--out", backup.to_str().unwrap()]);
    {
        let db = redb::Database::open(&backup).unwrap();
        let txn = db.begin_read().unwrap();
        let tokens = txn
            .open_table(redb::TableDefinition::<&str, &str>::new("tokens"))
            .unwrap();
        assert_eq!(tokens.len().unwrap(), 2);
        let names = txn
            .open_table(redb::TableDefinition::<&str, &str>::new("token_names"))
            .unwrap();
        assert!(names.get("alice").unwrap().is_some());
        let holders = txn
            .open_table(redb::TableDefinition::<u128, u32>::new("holders"))
            .unwrap();
        assert_eq!(
            holders.len().unwrap(),
            1,
            "the client's holder number is backed up"
        );
    }
    // A backup never overwrites a file.
    let again = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args(["backup", "--out", backup.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());

    // Restore: the backup replaces server.redb; the backed-up tokens work again.
    assert!(cli(&data, &["token", "revoke", "alice"]).contains("alice"));
    assert!(!cli(&data, &["token", "list"]).contains("alice"));
    std::fs::copy(&backup, data.join("server.redb")).unwrap();
    assert!(cli(&data, &["token", "list"]).contains("alice"));
    // Revoking by the token itself works as well.
    assert!(cli(&data, &["token", "revoke", &token]).contains("alice"));
}

struct Process {
    child: Child,
    addr: SocketAddr,
}

fn spawn_server(data: &Path) -> Process {
    spawn_server_logging(data, Stdio::null())
}

/// Starts `rekord-server run` on `data`, its logs (stderr) going to `stderr`.
fn spawn_server_logging(data: &Path, stderr: Stdio) -> Process {
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(["run", "--listen", "127.0.0.1:0", "--app", "workshop"])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Process { child, addr }
}

fn signal_and_wait(mut p: Process, signal: &str) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(p.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            p.child.kill().unwrap();
            panic!("the server did not stop after SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn a_server_process_stops_cleanly_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = cli(&data, &["token", "issue", "--name", "alice", "--read-all"]);
    let cfg = client("workshop", token.trim());
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut pin = None;
    for signal in ["TERM", "INT"] {
        let server = spawn_server(&data);
        let connected = runtime.block_on(async {
            let mut session = tokio::time::timeout(
                Duration::from_secs(30),
                net::connect(server.addr, &cfg, pin.as_ref()),
            )
            .await
            .unwrap()
            .unwrap();
            session.ping().await.unwrap();
            session
        });
        pin = Some(connected.pin());
        // The database is locked while the server runs: the CLI asks the server instead
        // (on Unix, through its admin socket; see tests/admin.rs).
        assert!(cli(&data, &["token", "list"]).contains("alice"));
        // Signalled with a session open: the server closes it and exits with status 0.
        let status = signal_and_wait(server, signal);
        assert!(status.success(), "SIG{signal}: {status:?}");
        runtime.block_on(async {
            let mut connected = connected;
            assert!(connected.ping().await.is_err());
        });
    }
    // Nothing was lost: the database opens and still holds the token.
    let list = cli(&data, &["token", "list"]);
    assert!(list.contains("alice"), "{list}");
}

/// Logs written to a pipe (not a terminal) carry no ANSI colour codes.
#[cfg(unix)]
#[test]
fn server_logs_to_a_pipe_have_no_colour_codes() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = cli(&data, &["token", "issue", "--name", "alice", "--read-all"]);
    let cfg = client("workshop", token.trim());
    let mut server = spawn_server_logging(&data, Stdio::piped());
    let mut stderr = server.child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut session = tokio::time::timeout(
            Duration::from_secs(30),
            net::connect(server.addr, &cfg, None),
        )
        .await
        .unwrap()
        .unwrap();
        session.ping().await.unwrap();
        session.close().await;
    });
    assert!(signal_and_wait(server, "TERM").success());
    let logs = logs.join().unwrap();
    // The connection's log line names the holder number and the token's name together.
    assert!(
        logs.contains("client connected as holder 2 with token `alice`"),
        "{logs}"
    );
    assert!(
        !logs.contains("\x1b["),
        "colour codes in logs written to a pipe: {logs:?}"
    );
}
