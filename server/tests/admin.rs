//! The admin socket of a running `rekord-server run` process: token commands and online
//! backups through the CLI while the server serves QUIC clients, and the socket's life
//! cycle (removed on SIGTERM, a stale one replaced after SIGKILL).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase as _, ReadableTableMetadata as _};
use rekord::net::{self, NetError};
use rekord::proto::Refusal;
use rekord::proto::handshake::{ClientConfig, HandshakeError};
use rekord_server::Store;
use rekord_server::admin::{MAX_REQUEST, SOCKET_FILE};

const BIN: &str = env!("CARGO_BIN_EXE_rekord-server");
const APP: &str = "workshop";
const BOUND: Duration = Duration::from_secs(30);

fn run_cli(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

fn cli(data: &Path, args: &[&str]) -> String {
    let out = run_cli(data, args);
    assert!(
        out.status.success(),
        "rekord-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cli_fails(data: &Path, args: &[&str]) -> String {
    let out = run_cli(data, args);
    assert!(!out.status.success(), "rekord-server {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn client(token: &str) -> ClientConfig {
    ClientConfig {
        app: APP.into(),
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

async fn connect(addr: SocketAddr, token: &str) -> Result<net::Session, NetError> {
    tokio::time::timeout(BOUND, net::connect(addr, &client(token), None))
        .await
        .expect("the connection took too long")
}

struct Process {
    child: Child,
    addr: SocketAddr,
}

fn spawn_server(data: &Path) -> Process {
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(["run", "--listen", "127.0.0.1:0", "--app", APP])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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

fn terminate(mut p: Process) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .arg("-TERM")
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
            panic!("the server did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw bytes to the admin socket and returns the reply line.
fn raw(data: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(data.join(SOCKET_FILE)).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    // The server may answer (and close) before reading everything.
    let _ = stream.write_all(bytes);
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn tokens_and_backup_through_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = spawn_server(&data);
    let socket = data.join(SOCKET_FILE);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".admin"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Issued while the server runs: usable at once.
    let alice = cli(
        &data,
        &[
            "token",
            "issue",
            "--name",
            "alice",
            "--read-all",
            "--write-all",
        ],
    )
    .trim()
    .to_owned();
    assert!(alice.starts_with("rk1_"), "{alice}");
    let bob = cli(
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
    )
    .trim()
    .to_owned();
    let duplicate = cli_fails(&data, &["token", "issue", "--name", "alice", "--read-all"]);
    assert!(duplicate.contains("exists already"), "{duplicate}");

    let list = cli(&data, &["token", "list"]);
    assert!(list.contains("alice\tread: all\twrite: all"), "{list}");
    assert!(
        list.contains("bob\tread: parts,tools\twrite: parts"),
        "{list}"
    );
    assert!(!list.contains(&alice) && !list.contains(&bob), "{list}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut session = runtime.block_on(async {
        let mut session = connect(server.addr, &alice).await.unwrap();
        session.ping().await.unwrap();
        session
    });

    // An online backup with a session open, relative to the CLI's working directory.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .arg("--data")
        .arg(&data)
        .args(["backup", "--out", "backup.redb"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = dir.path().join("backup.redb");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(backup.to_str().unwrap()),
        "the absolute path is reported"
    );
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
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
        assert!(names.get("bob").unwrap().is_some());
        let holders = txn
            .open_table(redb::TableDefinition::<u128, u32>::new("holders"))
            .unwrap();
        assert_eq!(holders.len().unwrap(), 1, "the connected client's holder");
    }
    // Never overwritten.
    let again = cli_fails(&data, &["backup", "--out", backup.to_str().unwrap()]);
    assert!(again.contains("exists already"), "{again}");

    runtime.block_on(async {
        // The server kept serving: the open session and new ones work.
        session.ping().await.unwrap();
        let mut other = connect(server.addr, &bob).await.unwrap();
        other.ping().await.unwrap();
        other.close().await;
    });

    // Revoked while the server runs: the next connection is refused.
    assert!(cli(&data, &["token", "revoke", "alice"]).contains("`alice`"));
    assert!(cli(&data, &["token", "revoke", &bob]).contains("`bob`"));
    let gone = cli_fails(&data, &["token", "revoke", "alice"]);
    assert!(gone.contains("already revoked"), "{gone}");
    assert_eq!(cli(&data, &["token", "list"]), "");
    runtime.block_on(async {
        for token in [&alice, &bob] {
            match connect(server.addr, token).await {
                Err(NetError::Handshake(HandshakeError::Refused(Refusal::BadToken))) => {}
                other => panic!("expected BadToken, got {other:?}"),
            }
        }
        // A session opened before the revocation is not cut off.
        session.ping().await.unwrap();
    });

    // The protocol is validated: unknown commands, overlong lines, relative backup paths.
    let reply = raw(&data, b"Drop(everything:true)\n");
    assert!(
        reply.starts_with("Error(") && reply.ends_with('\n'),
        "{reply}"
    );
    let reply = raw(&data, &vec![b'x'; MAX_REQUEST + 10]);
    assert!(reply.contains("longer than"), "{reply}");
    let reply = raw(&data, b"Backup(out:\"relative.redb\")\n");
    assert!(reply.contains("absolute"), "{reply}");
    let reply = raw(&data, b"List\n");
    assert_eq!(reply, "Tokens([])\n");

    // SIGTERM with a session open: a clean stop, and the socket is gone.
    assert!(terminate(server).success());
    assert!(!socket.exists());
    runtime.block_on(async {
        assert!(session.ping().await.is_err());
    });
    // Without a server, the commands open the database directly again.
    cli(&data, &["token", "issue", "--name", "carol", "--read-all"]);
    assert!(cli(&data, &["token", "list"]).contains("carol"));
}

#[test]
fn a_stale_socket_does_not_prevent_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut killed = spawn_server(&data);
    killed.child.kill().unwrap(); // SIGKILL: no cleanup.
    killed.child.wait().unwrap();
    let socket = data.join(SOCKET_FILE);
    assert!(std::fs::symlink_metadata(&socket).is_ok(), "left behind");
    // Without a server the CLI ignores the stale socket.
    assert_eq!(cli(&data, &["token", "list"]), "");

    let server = spawn_server(&data);
    let token = cli(&data, &["token", "issue", "--name", "dave", "--read-all"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut session = connect(server.addr, token.trim()).await.unwrap();
        session.ping().await.unwrap();
        session.close().await;
    });
    assert!(terminate(server).success());
    assert!(!socket.exists());
}

#[test]
fn a_locked_database_without_a_server_is_reported_as_busy() {
    let dir = tempfile::tempdir().unwrap();
    // This process holds the database; nobody listens on an admin socket.
    let _store = Store::open(dir.path()).unwrap();
    let stderr = cli_fails(dir.path(), &["token", "list"]);
    assert!(stderr.contains("is the server running?"), "{stderr}");
    let stderr = cli_fails(
        dir.path(),
        &[
            "backup",
            "--out",
            dir.path().join("b.redb").to_str().unwrap(),
        ],
    );
    assert!(stderr.contains("is the server running?"), "{stderr}");
}
