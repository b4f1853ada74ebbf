//! Ids under contention (found by a red team, issue 11): many threads creating at once with
//! tiny id ranges never get `IdsExhausted` while the server is reachable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rekord::{Db, Error};

#[path = "common/process.rs"]
mod process;
use process::{ServerProcess, config, token};

#[rekord::record(tree = "parts", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub qty: u32,
}

const LIMIT: Duration = Duration::from_secs(30);

/// Online, `Tree::create` is documented to fail with `IdsExhausted` only when the server is
/// not reachable. Eight threads creating at once with ranges of one id.
#[test]
fn concurrent_creates_with_tiny_ranges_never_run_out_online() {
    let mut bad = Vec::new();
    for range in [1u64, 2, 4, 16] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("server");
        let token = token(&data);
        let server = ServerProcess::start(&data, "127.0.0.1:0");
        let db =
            Arc::new(Db::memory_synced(config(server.addr, &token).range_size(range)).unwrap());
        db.wait_caught_up(LIMIT).unwrap();
        let t0 = Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let parts = db.tree::<Part>().unwrap();
                    let mut failed = 0;
                    for i in 0..40 {
                        match parts.create(&Part {
                            name: format!("t{t} p{i}"),
                            qty: i,
                        }) {
                            Ok(_) => {}
                            Err(Error::IdsExhausted) => failed += 1,
                            Err(e) => panic!("thread {t} create {i}: {e}"),
                        }
                    }
                    failed
                })
            })
            .collect();
        let failed: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        eprintln!(
            "range {range}: {failed} of 320 creates IdsExhausted online, {:?}",
            t0.elapsed()
        );
        if failed > 0 {
            bad.push((range, failed));
        }
        server.kill();
    }
    assert!(
        bad.is_empty(),
        "(range_size, creates of 320 that failed IdsExhausted online): {bad:?}"
    );
}
