//! Red team of the built-in sync driver: a client process (this test binary, re-executed)
//! writes through a synced database, sometimes closing and reopening it, and aborts
//! (`std::process::abort`) at a random instant; again and again on the same file. Once the
//! database is reopened and its outbox empty, a fresh replica sees every write the child
//! reported committed, none twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rekord::{Db, Error};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, config, token};

const CHILD_ENV: &str = "REKORD_REDTEAM_DRIVER_CHILD";
const LIMIT: Duration = Duration::from_secs(60);

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
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

fn quick(addr: std::net::SocketAddr, token: &str) -> rekord::SyncConfig {
    config(addr, token)
        .timeout(Duration::from_secs(2))
        .idle_timeout(Duration::from_secs(1))
}

/// The child: `path|addr|token|seed|round`. Writes `round-i` records, printing `@ name`
/// once each create returned; closes and reopens its database now and then; aborts at a
/// random instant.
#[test]
fn redteam_driver_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let (path, addr, token) = (f[0], f[1].parse().unwrap(), f[2]);
    let seed: u64 = f[3].parse().unwrap();
    let round: u64 = f[4].parse().unwrap();
    let mut rng = Rng(seed | 1);
    let die_after = Duration::from_millis(50 + rng.below(900));
    std::thread::spawn(move || {
        std::thread::sleep(die_after);
        std::process::abort();
    });
    let mut out = std::io::stdout().lock();
    let mut i = 0u64;
    loop {
        let db = Db::open_synced(path, quick(addr, token)).unwrap();
        let parts = db.tree::<Part>().unwrap();
        let writes = 1 + rng.below(40);
        for _ in 0..writes {
            let name = format!("{round}-{i}");
            let start = Instant::now();
            loop {
                match parts.create(&Part {
                    name: name.clone(),
                    qty: i as u32,
                }) {
                    Ok(_) => break,
                    Err(Error::IdsExhausted) if start.elapsed() < LIMIT => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("create: {e}"),
                }
            }
            writeln!(out, "@ {name}").unwrap();
            out.flush().unwrap();
            i += 1;
            if rng.below(4) == 0 {
                std::thread::sleep(Duration::from_millis(rng.below(30)));
            }
        }
        drop(parts);
        drop(db);
    }
}

#[test]
fn a_client_process_aborting_at_random_instants_loses_and_duplicates_nothing() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let path = tmp.path().join("a.rekord");
    let mut reported = Vec::new();
    let mut rng = Rng(0x5eed_d21f);
    for round in 0..12u64 {
        let seed = rng.next();
        let mut child = process::child(
            "redteam_driver_child",
            CHILD_ENV,
            format!(
                "{}|{}|{}|{seed}|{round}",
                path.display(),
                server.addr,
                token
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(name) = line.strip_prefix("@ ") {
                    let _ = tx.send(name.to_owned());
                }
            }
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("round {round}: the child did not abort within 30 s (hangs?)");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_millis(50));
        let names: Vec<String> = rx.try_iter().collect();
        eprintln!("round {round}: {} writes reported, {status:?}", names.len());
        assert!(!status.success(), "the child aborts");
        reported.extend(names);
    }
    let db = Db::open_synced(&path, quick(server.addr, &token)).unwrap();
    db.wait_pushed(LIMIT)
        .unwrap_or_else(|e| panic!("not pushed: {e}; {:?}", db.sync_status()));
    let local = db.tree::<Part>().unwrap();
    let fresh =
        Db::open_synced(tmp.path().join("fresh.rekord"), config(server.addr, &token)).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    let parts = fresh.tree::<Part>().unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for key in parts.keys().unwrap() {
        *seen.entry(parts.get(key).unwrap().name).or_insert(0) += 1;
    }
    let missing: Vec<_> = reported.iter().filter(|n| !seen.contains_key(*n)).collect();
    let doubled: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    eprintln!(
        "{} reported, {} on the server, {} locally",
        reported.len(),
        seen.len(),
        local.len().unwrap()
    );
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "missing {missing:?}; duplicated {doubled:?}"
    );
    assert_eq!(
        local.len().unwrap(),
        parts.len().unwrap(),
        "the replica and the server agree"
    );
    drop((local, parts, db, fresh));
    server.kill();
}
