//! Writes too large for the wire (issue 11): a synced database refuses them at the door with
//! a typed error and changes nothing, and the outbox keeps flowing afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rekord::{Db, Error, Retry, SyncConfig};

#[path = "common/process.rs"]
mod process;
use process::{APP, ServerProcess, token};

#[rekord::record(tree = "blobs", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub bytes: Vec<u8>,
}

const LIMIT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

#[test]
fn oversized_records_and_batches_are_refused_at_the_door_and_nothing_stalls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let token = token(&data);
    let server = ServerProcess::start(&data, "127.0.0.1:0");
    let cfg = SyncConfig::new(server.addr, APP, &token).retry(
        Retry::default()
            .initial(Duration::from_millis(20))
            .max(Duration::from_millis(200)),
    );
    let w = Db::memory_synced(cfg.clone()).unwrap();
    let r = Db::memory_synced(cfg).unwrap();
    w.wait_caught_up(LIMIT).unwrap();
    r.wait_caught_up(LIMIT).unwrap();
    let blobs = w.tree::<Blob>().unwrap();

    // One record over MAX_RECORD (8 MiB).
    let big = Blob {
        bytes: vec![7; 9 * MIB],
    };
    match blobs.create(&big) {
        Err(Error::TooLarge { size, limit, .. }) => assert!(size > limit, "{size} {limit}"),
        other => panic!("a 9 MiB record: {other:?}"),
    }
    // Three records under it, together over what one request carries.
    let seven = Blob {
        bytes: vec![1; 7 * MIB],
    };
    let r3 = w.write(|b| {
        for _ in 0..3 {
            b.create(&seven)?;
        }
        Ok(())
    });
    assert!(matches!(r3, Err(Error::TooLarge { .. })), "{r3:?}");
    assert_eq!(
        blobs.len().unwrap(),
        0,
        "nothing of the refused writes happened"
    );
    assert_eq!(w.sync_status().unwrap().outbox, 0);

    // A large but acceptable record, then a small one: both reach the other replica.
    let k1 = blobs.create(&seven).unwrap();
    let k2 = blobs.create(&Blob { bytes: vec![2; 10] }).unwrap();
    w.wait_pushed(LIMIT).unwrap();
    let rb = r.tree::<Blob>().unwrap();
    let start = std::time::Instant::now();
    while rb.len().unwrap() < 2 {
        assert!(
            start.elapsed() < LIMIT,
            "the other replica did not receive the records"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(rb.get(k1).unwrap().bytes.len(), 7 * MIB);
    assert_eq!(rb.get(k2).unwrap().bytes, vec![2; 10]);
    assert!(w.sync_status().unwrap().last_error.is_none());
    drop((blobs, rb, w, r));
    server.kill();
}
