//! The fuzz targets of rekord: every decoder of bytes that come from the network or from
//! disk. Each function takes the fuzzer's input and panics when a property does not hold
//! (never on the input alone): decoding never panics, and what decodes goes back and
//! forth unchanged (round trips) or agrees with a second implementation (model
//! agreement).
//!
//! `fuzz_targets/*.rs` hand them to libFuzzer (`fuzz/run.sh`); `tests/corpus.rs` replays
//! the corpus kept in `fuzz/corpus/<target>/` as regression tests in every test run.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use rekord::proto::handshake::{ClientConfig, Grant, Trees, check_client, check_server};
use rekord::proto::{self, Frame, FrameReader};
use rekord::schema::dynamic::{self, Value};
use rekord::storage::Header;
use rekord::{Db, Record as _, Schema};

/// A fuzz target: takes the fuzzer's input.
pub type Target = fn(&[u8]);

/// Every target, by name (the name of its corpus directory and of its libFuzzer binary).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("frame_stream", frame_stream),
    ("handshake", handshake),
    ("stored_log", stored_log),
    ("schema_text", schema_text),
    ("dynamic", dynamic_bytes),
    ("ron_record", ron_record),
    ("record_header", record_header),
    ("outbox_row", rekord::fuzz::outbox_row),
    ("pending_row", rekord::fuzz::pending_row),
    ("damaged_file", damaged_file),
];

/// One frame's payload (a message of any kind: hello, request, response, push): decoded
/// and validated, or refused; a frame that decodes encodes to the same frame.
pub fn frame(data: &[u8]) {
    if let Ok(f) = proto::decode(data) {
        let bytes = proto::encode(&f).expect("a decoded frame encodes");
        let again = proto::decode(&bytes[4..]).expect("an encoded frame decodes");
        assert_eq!(f, again);
    }
}

/// A byte stream cut into chunks (the first byte sets their size): frames come out whole,
/// in order, or the stream is refused; never more buffered than one frame's announced
/// length.
pub fn frame_stream(data: &[u8]) {
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let size = usize::from(size).max(1);
    let mut r = FrameReader::new();
    for chunk in stream.chunks(size) {
        r.push(chunk);
        loop {
            match r.next_frame() {
                Ok(Some(f)) => frame(&proto::encode(&f).expect("a decoded frame encodes")[4..]),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(r.pending() <= 4 + proto::MAX_FRAME as usize + size);
    }
}

/// The handshake on both sides: a server checking a client's hello, a client checking
/// the server's answer (refusals are typed errors).
pub fn handshake(data: &[u8]) {
    let Ok(f) = proto::decode(data) else {
        return;
    };
    let grant = |token: &str| {
        (token == "tok").then(|| Grant {
            read: Trees::All,
            write: Trees::Only(vec!["parts".into()]),
        })
    };
    match f {
        Frame::ClientHello(hello) => {
            if let Ok(g) = check_client(&hello, "workshop", grant) {
                assert_eq!(hello.token, "tok");
                assert!(hello.trees.iter().all(|t| g.read.allows(t)));
            }
        }
        answer => {
            for server in [None, Some([9; 16])] {
                let cfg = ClientConfig {
                    app: "workshop".into(),
                    client: [7; 16],
                    token: "tok".into(),
                    pinned: server,
                    cursor: 0,
                    trees: vec!["parts".into()],
                    replica: 0,
                    history: Vec::new(),
                    last_entry: 0,
                };
                let _ = check_server(&cfg, answer.clone());
            }
        }
    }
}

/// What a server keeps on disk of the wire's messages: its log's changes and the outcomes
/// it remembers (both formats): decoded or refused; what decodes encodes to the same.
pub fn stored_log(data: &[u8]) {
    if let Ok(s) = proto::decode_sequenced(data) {
        let b = proto::encode_sequenced(&s).expect("a decoded change encodes");
        assert_eq!(proto::decode_sequenced(&b).expect("decodes"), s);
    }
    if let Ok(o) = proto::decode_outcome(data) {
        let b = proto::encode_outcome(&o).expect("a decoded outcome encodes");
        assert_eq!(proto::decode_outcome(&b).expect("decodes"), o);
    }
    let _ = proto::decode_outcome_v1(data);
}

/// A stored schema (RON text): parsed or refused; one that parses prints as text that
/// parses to the same schema.
pub fn schema_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = Schema::from_ron(text) {
        let again = s.to_ron().expect("a parsed schema prints");
        assert_eq!(
            Schema::from_ron(&again).expect("a printed schema parses"),
            s
        );
    }
}

/// Two values are the same (as text: NaN is not equal to itself as a float).
fn same(a: &Value, b: &Value) -> bool {
    dynamic::to_ron(a) == dynamic::to_ron(b)
}

/// The dynamic decoder on an arbitrary schema and arbitrary bytes. Input: the schema
/// text's length (u16 LE), the schema (RON), the record bytes. Bytes that decode encode
/// to bytes that decode to the same value, and those encode to themselves again (the
/// encoder's output is its own fixed point).
pub fn dynamic_bytes(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (text, bytes) = rest.split_at(len);
    let Ok(schema) = std::str::from_utf8(text).map(Schema::from_ron) else {
        return;
    };
    let Ok(schema) = schema else {
        return;
    };
    let Ok(v) = dynamic::decode(&schema, bytes) else {
        return;
    };
    let b2 = dynamic::encode(&schema, &v).expect("a decoded value encodes");
    let v2 = dynamic::decode(&schema, &b2).expect("an encoded value decodes");
    assert!(same(&v, &v2), "{v:?} != {v2:?}");
    let b3 = dynamic::encode(&schema, &v2).expect("encodes again");
    assert_eq!(b2, b3, "the encoder is not a fixed point");
    let _ = dynamic::to_ron_line(&v);
}

/// An application's kind of record (the schema `ron_record` reads text with).
#[rekord::record(tree = "items", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// A name.
    pub name: String,
    /// A count.
    pub qty: u32,
    /// A signed amount.
    pub delta: i64,
    /// A measure.
    pub weight: f32,
    /// An optional note.
    pub note: Option<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// A kind.
    pub kind: Kind,
    /// A pair.
    pub pair: (u8, bool),
    /// A wide number.
    pub big: u128,
}

/// The kind of an [`Item`].
#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// No fields.
    Plain,
    /// A tuple variant.
    Boxed(u16),
    /// A struct variant.
    Sized {
        /// Width.
        w: u32,
        /// Height.
        h: u32,
    },
    /// A nested one.
    Nested(Box<Option<Kind>>),
}

/// RON text into a `Value` and into an encoded record (what the viewer's edits do): read
/// with the schema or refused with a position; a value read encodes to bytes that the
/// application's own type reads as the same value (model agreement), and prints as text
/// that reads back to it.
pub fn ron_record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let schema = Schema::of::<Item>();
    let v = match dynamic::from_ron(&schema, text) {
        Ok(v) => v,
        Err(e) => {
            assert!(e.line >= 1 && e.column >= 1, "{e}");
            return;
        }
    };
    let bytes = dynamic::encode(&schema, &v).expect("a value read with the schema encodes");
    let back = dynamic::decode(&schema, &bytes).expect("and decodes");
    assert!(same(&v, &back));
    // The application's type agrees with the dynamic encoder.
    let typed: Item = dynamic::from_value(v.clone()).expect("the typed record reads the value");
    let typed_bytes = typed
        .__encode(Vec::new())
        .expect("the typed record encodes");
    let from_typed = dynamic::decode(&schema, &typed_bytes).expect("typed bytes decode");
    assert!(same(&from_typed, &v), "{from_typed:?} != {v:?}");
    let printed = dynamic::to_ron(&v);
    let again = dynamic::from_ron(&schema, &printed).expect("printed text reads back");
    assert!(same(&again, &v), "{printed}");
}

/// A stored value's header: parsed or refused; one that parses is the header that prints
/// as those bytes.
pub fn record_header(data: &[u8]) {
    if let Some((h, rest)) = Header::parse(data) {
        let bytes = h.to_bytes();
        assert_eq!(&data[..bytes.len()], &bytes[..]);
        assert_eq!(rest, &data[bytes.len()..]);
    }
}

/// The database file `damaged_file` damages: a few records of two revisions, released
/// (written by `tests/corpus.rs` `write_seeds`).
pub const BASE_FILE: &[u8] = include_bytes!("base.rekord");

/// The damage an input describes, applied to [`BASE_FILE`]: the first 4 bytes (u32 LE)
/// truncate the file to that length when shorter than it (and not 0); then patches of
/// `offset (u32 LE, modulo the length), length (1 byte), that many bytes`. The corpus
/// stays small (patches, not whole files) while every byte of the file can be damaged.
pub fn damage(data: &[u8]) -> Vec<u8> {
    let mut file = BASE_FILE.to_vec();
    let Some((cut, mut rest)) = data.split_first_chunk::<4>() else {
        return file;
    };
    let cut = u32::from_le_bytes(*cut) as usize;
    if cut != 0 && cut < file.len() {
        file.truncate(cut);
    }
    while let Some((head, tail)) = rest.split_first_chunk::<5>() {
        let len = file.len().max(1);
        let at = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize % len;
        let n = usize::from(head[4]).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        for (i, b) in bytes.iter().enumerate() {
            if let Some(x) = file.get_mut(at + i) {
                *x = *b;
            }
        }
        rest = next;
    }
    file
}

/// A damaged database file (see [`damage`]), opened read-only and read through: every
/// tree, every record, as values. Errors are expected; a panic is one only if rekord's own
/// code raised it (the storage engine's own, on pages it cannot read, are reported to the
/// viewer's user as a damaged file and counted here, not failed).
pub fn damaged_file(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("f.rekord");
    std::fs::write(&path, damage(data)).expect("written");
    let outcome = std::panic::catch_unwind(|| {
        let Ok(db) = Db::open_read_only(&path) else {
            return;
        };
        let Ok(trees) = db.trees() else {
            return;
        };
        for t in trees {
            let Ok(tree) = db.dyn_tree(&t.name) else {
                continue;
            };
            let _ = tree.schemas();
            if let Ok(records) = tree.iter() {
                // (An unreadable record is an error the iteration goes past.)
                for r in records.take(10_000).flatten() {
                    let _ = r.to_ron();
                }
            }
        }
    });
    if let Err(p) = outcome {
        let in_storage_engine =
            LAST_PANIC.with(|l| l.borrow().as_deref().is_some_and(|w| w.contains("/redb-")));
        if !in_storage_engine {
            std::panic::resume_unwind(p);
        }
    }
}

thread_local! {
    /// Where the last panic on this thread was raised (set by [`watch_panics`]).
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Notes where each panic is raised (for `damaged_file`), then lets the previous hook
/// report it unless it was raised in the storage engine.
pub fn watch_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let at = info.location().map(|l| l.file().to_owned());
        let in_redb = at.as_deref().is_some_and(|f| f.contains("/redb-"));
        LAST_PANIC.with(|l| *l.borrow_mut() = at);
        if !in_redb {
            previous(info);
        }
    }));
}
