//! A client is who its token says, and the server's files are the server's (issue 12).
//! Against a real `rekord-server` process: the two identity attacks (a replica's UUID
//! used with another token to free its borrow, or to burn its entry numbers), the
//! per-request rights, file modes under a permissive umask, refused data directories, a
//! planted temporary key file, and tokens kept out of debug output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rekord::net::{self, NetError};
use rekord::proto::handshake::{ClientConfig, HandshakeError};
use rekord::proto::{Refusal, RemoteError, Request, Response};
use rekord::{Db, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{APP, BIN, ServerProcess, issue};

#[rekord::record(tree = "secret", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Secret {
    pub text: String,
}

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(30);

/// The client identity a replica file holds (what an attacker reads from the file or the
/// server's log).
fn client_id(path: &Path) -> [u8; 16] {
    use redb::ReadableDatabase as _;
    let db = redb::ReadOnlyDatabase::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("rekord.meta");
    let table = txn.open_table(meta).unwrap();
    let value = table.get("sync.client").unwrap().unwrap();
    value.value().try_into().unwrap()
}

fn hello(client: [u8; 16], token: &str) -> ClientConfig {
    ClientConfig {
        app: APP.into(),
        client,
        token: token.into(),
        pinned: None,
        cursor: 0,
        trees: Vec::new(),
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    }
}

fn config(addr: std::net::SocketAddr, token: &str) -> SyncConfig {
    process::config(addr, token)
}

/// The two attacks of the issue: with the victim's UUID and a token of its own, the
/// attacker (1) returned, and so freed, a borrow the victim held in a tree its token may
/// not write, and (2) sent an entry under a high number, after which the victim's next
/// write was silently dropped as a duplicate. Both are refused at the hello now, the
/// attacker's own session cannot return what it may not write, and nothing of the
/// victim's is lost.
#[test]
fn another_tokens_replica_cannot_be_impersonated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let victim_token = issue(&data, "victim", &["--read-all", "--write-all"]);
    let attacker_token = issue(&data, "attacker", &["--read-all", "--write", "parts"]);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    let victim_path = tmp.path().join("victim.rekord");
    let key = {
        let db = Db::open_synced(&victim_path, config(addr, &victim_token)).unwrap();
        db.wait_caught_up(LIMIT).unwrap();
        let key = db
            .tree::<Secret>()
            .unwrap()
            .create(&Secret {
                text: "the victim's".into(),
            })
            .unwrap();
        db.wait_pushed(LIMIT).unwrap();
        key
    };
    let victim = client_id(&victim_path);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The victim's identity with the attacker's token: refused, with the reason.
        let stolen = net::connect_timeout(addr, &hello(victim, &attacker_token), None, LIMIT).await;
        match stolen {
            Err(NetError::Handshake(HandshakeError::Refused(Refusal::ReplicaOfAnotherToken))) => {}
            other => panic!("expected the identity to be refused, got {other:?}"),
        }
        // The attacker as itself: it may not return (nor borrow) in `secret`, and gets ids
        // only because it may write `parts`.
        let mut own = net::connect_timeout(addr, &hello([0xAA; 16], &attacker_token), None, LIMIT)
            .await
            .unwrap();
        match own
            .request(Request::Return {
                tree: "secret".into(),
                id: key.id(),
            })
            .await
            .unwrap()
        {
            Response::Error(RemoteError::NotAllowed { tree }) => assert_eq!(tree, "secret"),
            other => panic!("a return in a tree the token may not write: {other:?}"),
        }
        match own.borrow("secret", key.id() + 1_000).await {
            Err(NetError::Remote(RemoteError::NotAllowed { .. })) => {}
            other => panic!("a borrow of a record that does not exist: {other:?}"),
        }
        assert!(own.ranges(10).await.is_ok());
        // An entry sent as itself under a high number touches only its own numbering.
        let entries = Request::Entries {
            first: 1_000_000,
            entries: vec![vec![]],
        };
        assert!(matches!(
            own.request(entries).await.unwrap(),
            Response::Entries(_)
        ));
        own.close().await;
        // A token that may write nothing gets no ids.
    });
    let reader = issue(&data, "reader", &["--read-all"]);
    rt.block_on(async {
        let mut r = net::connect_timeout(addr, &hello([0xBB; 16], &reader), None, LIMIT)
            .await
            .unwrap();
        assert!(matches!(
            r.ranges(10).await,
            Err(NetError::Remote(RemoteError::Invalid(_)))
        ));
        r.close().await;
    });
    // The victim still holds its record, and its next write arrives.
    let db = Db::open_synced(&victim_path, config(addr, &victim_token)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    let secrets = db.tree::<Secret>().unwrap();
    assert_eq!(
        secrets.meta(key).unwrap().holder,
        db.sync_status().unwrap().replica.unwrap()
    );
    secrets
        .update(key, |s| s.text = "still the victim's".into())
        .unwrap();
    db.wait_pushed(LIMIT).unwrap();
    let status = db.sync_status().unwrap();
    assert_eq!((status.outbox, status.rejected), (0, 0));
    drop(db);
    let fresh = Db::memory_synced(config(addr, &victim_token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    assert_eq!(
        fresh.tree::<Secret>().unwrap().get(key).unwrap().text,
        "still the victim's"
    );
    drop(fresh);
    server.kill();
}

/// Runs `rekord-server` with `args` under umask 000 (as permissive as it gets).
fn under_open_umask(data: &Path, args: &[&str]) -> std::process::Output {
    let mut script = format!("umask 000; exec '{BIN}' --data '{}'", data.display());
    for a in args {
        script.push_str(&format!(" '{a}'"));
    }
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Under umask 000 the data directory is created 0700 and every file holding records or
/// secrets is 0600 (`server.redb` was 0644: any local user could read every tree); a
/// client's replica file is 0600 too.
#[cfg(unix)]
#[test]
fn the_servers_files_are_its_users_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let out = under_open_umask(&data, &["token", "issue", "--name", "a", "--read-all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = under_open_umask(&data, &["identity"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("server.redb")), 0o600);
    assert_eq!(mode(&data.join("key.der")), 0o600);
    // A replica file.
    let token = issue(&data, "w", &["--read-all", "--write-all"]);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let replica = tmp.path().join("replica.rekord");
    let db = Db::open_synced(&replica, config(server.addr, &token)).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    drop(db);
    assert_eq!(mode(&replica), 0o600);
    let local = tmp.path().join("local.rekord");
    drop(Db::open(&local).unwrap());
    assert_eq!(mode(&local), 0o600);
    server.kill();
}

/// A data directory others may write to, or owned by another user, is refused with a
/// message saying how to fix it (before, it was used silently: another user could swap
/// the key, the certificate or the database).
#[cfg(unix)]
#[test]
fn an_unsafe_data_directory_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["identity"][..], &["run", "--listen", "127.0.0.1:0"][..]] {
        let out = Command::new(BIN)
            .arg("--data")
            .arg(&data)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("every user") && err.contains("chmod 700"),
            "{err}"
        );
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o770)).unwrap();
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .arg("identity")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("its group"));
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Owned by another user (the test runs as root here; elsewhere chown is not allowed).
    if rustix::process::geteuid().is_root() {
        rustix::fs::chown(&data, Some(rustix::process::Uid::from_raw(65534)), None).unwrap();
        let out = Command::new(BIN)
            .arg("--data")
            .arg(&data)
            .arg("identity")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("owned by user 65534"), "{err}");
    }
}

/// A `key.tmp` planted before the first start (a link to a file another user reads) never
/// receives the private key: the temporary file is created exclusively.
#[cfg(unix)]
#[test]
fn a_planted_temporary_key_file_never_receives_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    std::fs::create_dir(&data).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let trap = tmp.path().join("trap");
    std::fs::write(&trap, b"").unwrap();
    std::os::unix::fs::symlink(&trap, data.join("key.tmp")).unwrap();
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .arg("identity")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&trap).unwrap(),
        b"",
        "the key went through the link"
    );
    assert_eq!(mode(&data.join("key.der")), 0o600);
    assert!(std::fs::read(data.join("key.der")).unwrap().len() > 32);
}

/// Tokens stay out of debug output.
#[test]
fn tokens_are_not_in_debug_output() {
    let token = "rk1_this_is_secret";
    let cfg = SyncConfig::new("127.0.0.1:1".parse().unwrap(), APP, token);
    assert!(!format!("{cfg:?}").contains(token));
    let hello = hello([1; 16], token);
    assert!(!format!("{hello:?}").contains(token));
    let frame = rekord::proto::handshake::client_hello(&hello);
    assert!(!format!("{frame:?}").contains(token));
    assert!(format!("{cfg:?}").contains("redacted"));
}

/// The pin `rekord-server identity` prints parses; anything else is a clear error.
#[test]
fn a_pin_is_read_from_what_the_identity_command_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .arg("identity")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let pin = rekord::net::Pin::parse(&field("uuid "), &field("fingerprint ")).unwrap();
    assert_eq!(pin.cert.len(), 64);
    let bad = rekord::net::Pin::parse("not-a-uuid", &field("fingerprint ")).unwrap_err();
    assert!(bad.to_string().contains("rekord-server identity"));
    assert!(rekord::net::Pin::parse(&field("uuid "), "abc").is_err());
}
