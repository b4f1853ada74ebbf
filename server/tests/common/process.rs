//! A real `rekord-server` process for tests: started on a loopback port, killed at will.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The server binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_rekord-server");
/// The application name test servers serve.
pub const APP: &str = "workshop";

pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `rekord-server run` on `listen` (port 0: any).
    pub fn start(data: &Path, listen: &str) -> ServerProcess {
        Self::start_logging(data, listen, None)
    }

    /// [`ServerProcess::start`] with the server's trace-level log appended to `log`.
    pub fn start_logged(data: &Path, listen: &str, log: &Path) -> ServerProcess {
        Self::start_logging(data, listen, Some(log))
    }

    fn start_logging(data: &Path, listen: &str, log: Option<&Path>) -> ServerProcess {
        Self::start_with(data, listen, log, "trace", &[])
    }

    /// Starts `rekord-server run` on `listen` with `extra` arguments, its log at `level`
    /// appended to `log` (if given).
    pub fn start_with(
        data: &Path,
        listen: &str,
        log: Option<&Path>,
        level: &str,
        extra: &[&str],
    ) -> ServerProcess {
        // REKORD_TEST_SERVER_LOG=<file>: the server's log goes there (append).
        let file = log
            .map(|l| l.as_os_str().to_owned())
            .or_else(|| std::env::var_os("REKORD_TEST_SERVER_LOG"));
        let stderr = match file {
            Some(file) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .unwrap(),
            ),
            None => Stdio::null(),
        };
        // REKORD_TEST_SERVER_BIN=<file>: another build of the server (say, a release one).
        let mut command =
            Command::new(std::env::var_os("REKORD_TEST_SERVER_BIN").unwrap_or_else(|| BIN.into()));
        if log.is_some() {
            command.env("RUST_LOG", level);
        }
        let mut child = command
            .arg("--data")
            .arg(data)
            .args(["run", "--listen", listen, "--app", APP])
            .args(extra)
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
        ServerProcess { child, addr }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test that panics does not leave its server running.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token(data: &Path) -> String {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args([
            "token",
            "issue",
            "--name",
            "all",
            "--read-all",
            "--write-all",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A synced database's configuration for `addr` with quick retries (tests).
pub fn config(addr: SocketAddr, token: &str) -> rekord::SyncConfig {
    rekord::SyncConfig::new(addr, APP, token).retry(
        rekord::Retry::default()
            .initial(std::time::Duration::from_millis(20))
            .max(std::time::Duration::from_millis(200)),
    )
}

/// `rekord-server backup --out out` (through the admin socket while the server runs).
pub fn backup(data: &Path, out: &Path) {
    let status = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(["backup", "--out"])
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Stops the server, puts the backup `from` in place of its database, starts it again on
/// the same address.
pub fn restore(server: ServerProcess, data: &Path, from: &Path) -> ServerProcess {
    let addr = server.addr;
    server.kill();
    std::fs::copy(from, data.join("server.redb")).unwrap();
    ServerProcess::start(data, &addr.to_string())
}

/// Issues a token named `name` with `args` (e.g. `--read-all --write parts`).
pub fn issue(data: &Path, name: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(["token", "issue", "--name", name])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Revokes the token named `name`.
pub fn revoke(data: &Path, name: &str) {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(["token", "revoke", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rekord-server identity`: the UUID, the fingerprint, and the WebTransport certificate
/// hashes (current first).
pub fn identity(data: &Path) -> (String, String, Vec<String>) {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .arg("identity")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .collect::<Vec<_>>()
    };
    let uuid = field("uuid ").remove(0);
    let fingerprint = field("fingerprint ").remove(0);
    (uuid, fingerprint, field("web-hash "))
}

/// This test binary, run again to execute only its test `test` (a child process's part,
/// which reads its role from the environment variable `env`, set to `spec`). Standard input,
/// output and error are left for the caller to set.
pub fn child(test: &str, env: &str, spec: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, spec);
    command
}
