//! Secrets stay secret (issue 15): a token appears in no log line of the server or of a
//! client (both at trace level), in no error a refused client gets, in no `Debug` output
//! of the handshake, and not in the server's files (tokens are stored as hashes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rekord::Db;

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, token};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
}

const LIMIT: Duration = Duration::from_secs(20);

/// Everything this process logs, at trace level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `haystack` holds `token`, or a long piece of it (a log that cut it would still
/// give most of it away).
fn leaks(haystack: &[u8], token: &str) -> bool {
    let t = token.as_bytes();
    let piece = (t.len() / 2).max(8).min(t.len());
    t.windows(piece)
        .any(|w| haystack.windows(w.len()).any(|h| h == w))
}

#[test]
fn tokens_appear_in_no_log_error_or_file() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let good = token(&data);
    let log = tmp.path().join("server.log");
    let server = ServerProcess::start_logged(&data, "127.0.0.1:0", &log);

    // A client that works: connects, writes, is pushed to.
    let config = process::config(server.addr, &good).timeout(Duration::from_secs(5));
    assert!(!format!("{config:?}").contains(&good), "{config:?}");
    let db = Db::memory_synced(config).unwrap();
    db.wait_caught_up(LIMIT).unwrap();
    db.tree::<Part>()
        .unwrap()
        .create(&Part {
            name: "bolt".into(),
        })
        .unwrap();
    db.wait_pushed(LIMIT).unwrap();

    // Clients that guess: refused, and told so without their guess echoed.
    let mut errors = Vec::new();
    for guess in [
        format!("{good}x"),
        "rekord-guess-0123456789abcdef".to_owned(),
        good[..good.len() - 1].to_owned(),
    ] {
        let db =
            Db::memory_synced(process::config(server.addr, &guess).timeout(Duration::from_secs(5)))
                .unwrap();
        let err = db.wait_caught_up(LIMIT).unwrap_err();
        let refused = db.sync_status().unwrap().refused.unwrap_or_default();
        assert!(refused.contains("token"), "{refused}");
        errors.push((guess, format!("{err} {err:?} {refused}")));
    }
    drop(db);
    server.kill();

    let client_log = captured.0.lock().unwrap().clone();
    let server_log = std::fs::read(&log).unwrap();
    assert!(
        !client_log.is_empty() && !server_log.is_empty(),
        "both sides logged at trace level"
    );
    // (The check itself finds a token, whole or cut.)
    assert!(leaks(format!("a {good} b").as_bytes(), &good));
    assert!(leaks(&good.as_bytes()[..good.len() * 3 / 4], &good));
    let mut all = vec![good.clone()];
    all.extend(errors.iter().map(|(g, _)| g.clone()));
    for t in &all {
        assert!(!leaks(&client_log, t), "a client log line holds a token");
        assert!(!leaks(&server_log, t), "a server log line holds a token");
        for (_, e) in &errors {
            assert!(!leaks(e.as_bytes(), t), "an error holds a token: {e}");
        }
    }
    // On disk: hashes only.
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(!leaks(&bytes, &good), "{} holds the token", path.display());
        }
    }
}
