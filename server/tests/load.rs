//! Load: 50 synced clients (one process, each with its own sync thread) against a real
//! `rekord-server` process on loopback, each doing a bounded mix of creates, contended
//! borrows, edits and returns. The server stays responsive (every operation completes
//! within its bound), its memory stays bounded, and nothing is lost: a fresh client
//! afterwards holds every acknowledged create and the last acknowledged value of each
//! record. (Latency under load is measured by `cargo bench -p rekord-bench --bench sync`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process::{APP, ServerProcess, token};
use rekord::{Db, Error, Key, Retry, SyncConfig};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub owner: u32,
    pub qty: u32,
}

const CLIENTS: usize = 50;
const OPS: u32 = 20;
const LIMIT: Duration = Duration::from_secs(240);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn fifty_clients_keep_the_server_responsive_bounded_and_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let addr = server.addr;
    // Slow clients are allowed (the test must hold on a machine whose cores are busy): a
    // client starved of CPU keeps its session for a minute of silence, and a borrow that a
    // lost connection interrupts is asked again for up to a minute.
    let cfg = SyncConfig::new(addr, APP, token)
        .retry(Retry::default().initial(Duration::from_millis(20)))
        .timeout(Duration::from_secs(60))
        .idle_timeout(Duration::from_secs(60));
    // Every record created, and the last value its holder wrote (acknowledged writes).
    let keys: Arc<Mutex<Vec<Key<Part>>>> = Arc::default();
    let last: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let start = Instant::now();
    let mut peak = 0u64;
    let threads: Vec<_> = (0..CLIENTS as u32)
        .map(|c| {
            let (cfg, keys, last) = (cfg.clone(), keys.clone(), last.clone());
            std::thread::spawn(move || {
                let db = Db::memory_synced(cfg).unwrap();
                db.wait_caught_up(LIMIT).unwrap();
                let parts = db.tree::<Part>().unwrap();
                let mut rng = u64::from(c) * 7919 + 1;
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let (mut borrowed, mut refused) = (0, 0);
                for i in 0..OPS {
                    match next() % 4 {
                        0 => {
                            let k = loop {
                                match parts.create(&Part { owner: c, qty: i }) {
                                    Ok(k) => break k,
                                    Err(Error::IdsExhausted) => {
                                        std::thread::sleep(Duration::from_millis(5))
                                    }
                                    Err(e) => panic!("{e}"),
                                }
                            };
                            last.lock().unwrap().insert(k.id(), i);
                            // Borrowed from birth; let others have it.
                            parts.return_borrow(k).unwrap();
                            keys.lock().unwrap().push(k);
                        }
                        _ => {
                            let pick = {
                                let keys = keys.lock().unwrap();
                                (!keys.is_empty())
                                    .then(|| keys[(next() % keys.len() as u64) as usize])
                            };
                            let Some(k) = pick else { continue };
                            match parts.borrow(k) {
                                Ok(()) => {
                                    borrowed += 1;
                                    let qty = 1000 + c * 100 + i;
                                    // Record the write under the borrow, so no other
                                    // client's acknowledged write can come after it
                                    // before the return.
                                    let mut l = last.lock().unwrap();
                                    parts.update(k, |p| p.qty = qty).unwrap();
                                    l.insert(k.id(), qty);
                                    drop(l);
                                    parts.return_borrow(k).unwrap();
                                }
                                // Contention (or not synced here yet) is expected.
                                Err(Error::AlreadyBorrowed { .. } | Error::NotFound { .. }) => {
                                    refused += 1
                                }
                                Err(e) => panic!("client {c}: {e}"),
                            }
                        }
                    }
                }
                db.wait_pushed(LIMIT).unwrap();
                (borrowed, refused)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in threads {
        while !t.is_finished() {
            peak = peak.max(rss_kib(server.child.id()));
            assert!(start.elapsed() < LIMIT, "the load did not finish in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        results.push(t.join().unwrap());
    }
    let took = start.elapsed();
    let borrowed: u32 = results.iter().map(|r| r.0).sum();
    let refused: u32 = results.iter().map(|r| r.1).sum();
    // A fresh client converges to every acknowledged write.
    let fresh = Db::memory_synced(cfg).unwrap();
    fresh.wait_caught_up(LIMIT).unwrap();
    let parts = fresh.tree::<Part>().unwrap();
    let last = last.lock().unwrap();
    assert_eq!(parts.len().unwrap(), last.len() as u64);
    for (id, qty) in last.iter() {
        assert_eq!(
            parts.get(Key::new(*id, 0)).unwrap().qty,
            *qty,
            "record {id}"
        );
    }
    eprintln!(
        "load: {CLIENTS} clients x {OPS} operations in {took:?}: {} records, {borrowed} borrows \
         granted, {refused} refused (contention); server peak RSS {} MiB",
        last.len(),
        peak / 1024
    );
    assert!(borrowed > 0 && refused > 0, "no contention exercised");
    assert!(peak < 512 * 1024, "server memory grew to {peak} KiB");
    drop(fresh);
    server.kill();
}
