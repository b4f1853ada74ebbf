//! Replays the fuzz corpus (`fuzz/corpus/<target>/`, grown by `fuzz/run.sh`) through every
//! target: each input that once found new coverage, or once crashed a target, stays a
//! regression test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

#[test]
fn every_corpus_input_holds() {
    rekord_fuzz::watch_panics();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (name, target) in rekord_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "target {name} has no corpus");
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", input.display());
        }
        total += inputs.len();
    }
    eprintln!("{total} corpus inputs replayed");
}

#[path = "../../db/tests/common/frames.rs"]
mod frames;

/// Writes the seed inputs of every target into `fuzz/corpus/<target>/seed-*` (run once;
/// the fuzzer grows the corpus from them): `cargo test -p rekord-fuzz --test corpus --
/// --ignored write_seeds`.
#[test]
#[ignore = "writes the seed corpus"]
fn write_seeds() {
    use rekord::proto::{self, EntryOutcome, Push, RemoteError};
    use rekord::schema::dynamic;
    use rekord::{Db, Record as _, Schema};
    use rekord_fuzz::{Item, Kind};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, seeds: Vec<Vec<u8>>| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    };
    let frames = frames::sample_frames();
    let payloads: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| proto::encode(f).unwrap()[4..].to_vec())
        .collect();
    write("frame", payloads.clone());
    write("handshake", payloads.clone());
    let mut stream = vec![7u8];
    for f in &frames {
        stream.extend(proto::encode(f).unwrap());
    }
    write(
        "frame_stream",
        vec![stream, vec![1, 5, 0, 0, 0, 1, 2, 3, 4, 5]],
    );
    let mut log = Vec::new();
    for f in &frames {
        if let proto::Frame::Push(Push::Changes(list)) = f {
            log.extend(list.iter().map(|s| proto::encode_sequenced(s).unwrap()));
        }
    }
    for o in [
        EntryOutcome::Applied { seq: 3 },
        EntryOutcome::Duplicate,
        EntryOutcome::Skipped,
        EntryOutcome::Rejected(RemoteError::NotBorrowed),
        EntryOutcome::Rejected(RemoteError::Invalid("no".into())),
    ] {
        log.push(proto::encode_outcome(&o).unwrap());
    }
    write("stored_log", log);
    let items = [
        Item {
            name: "bolt".into(),
            qty: 3,
            delta: -4,
            weight: 1.5,
            note: Some("zinc".into()),
            tags: vec!["a".into(), "b".into()],
            kind: Kind::Sized { w: 2, h: 3 },
            pair: (1, true),
            big: u128::MAX,
        },
        Item {
            name: String::new(),
            qty: 0,
            delta: 0,
            weight: f32::NAN,
            note: None,
            tags: Vec::new(),
            kind: Kind::Nested(Box::new(Some(Kind::Boxed(7)))),
            pair: (0, false),
            big: 0,
        },
    ];
    let schema = Schema::of::<Item>();
    let text = schema.to_ron().unwrap();
    write("schema_text", vec![text.clone().into_bytes()]);
    let mut dynamic_seeds = Vec::new();
    let mut ron_seeds = Vec::new();
    let mut headers = Vec::new();
    for item in &items {
        let bytes = item.__encode(Vec::new()).unwrap();
        let mut seed = (text.len() as u16).to_le_bytes().to_vec();
        seed.extend(text.as_bytes());
        seed.extend(&bytes);
        dynamic_seeds.push(seed);
        let v = dynamic::decode(&schema, &bytes).unwrap();
        ron_seeds.push(dynamic::to_ron(&v).into_bytes());
        ron_seeds.push(dynamic::to_ron_line(&v).into_bytes());
        let mut value = rekord::storage::Header {
            released: true,
            version: 1,
            state: 2,
            holder: 3,
        }
        .to_bytes()
        .to_vec();
        value.extend(&bytes);
        headers.push(value);
    }
    write("dynamic", dynamic_seeds);
    write("ron_record", ron_seeds);
    write("record_header", headers);
    write("outbox_row", rekord::fuzz::outbox_seeds());
    write("pending_row", rekord::fuzz::pending_seeds());
    // The database file the `damaged_file` target damages.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.rekord");
    {
        let db = Db::open(&path).unwrap();
        let t = db.tree::<Item>().unwrap();
        for item in &items {
            let k = t.create(item).unwrap();
            t.release(k).unwrap();
        }
    }
    std::fs::copy(
        &path,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/base.rekord"),
    )
    .unwrap();
    // Damage: none, the file cut in half, a patch in the header, a patch of zeros deep in.
    let len = std::fs::metadata(&path).unwrap().len() as u32;
    let mut zeros = vec![0, 0, 0, 0];
    zeros.extend((len / 2).to_le_bytes());
    zeros.push(64);
    zeros.extend([0u8; 64]);
    write(
        "damaged_file",
        vec![
            Vec::new(),
            (len / 2).to_le_bytes().to_vec(),
            vec![0, 0, 0, 0, 9, 0, 0, 0, 2, 0xff, 0xff],
            zeros,
        ],
    );
}
