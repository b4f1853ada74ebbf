//! Red team: export -> import -> export of tricky data through the binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    non_camel_case_types
)]

use rekord::{Db, Key};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rekord-viewer");

#[rekord::record(tree = "notes", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub text: String,
}

#[allow(non_camel_case_types, nonstandard_style)]
#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    r#type,
    r#match(u8),
    Plain { r#struct: String },
    None,
    Some(u8),
}

mod v1 {
    #[rekord::record(tree = "tricky", version = 1)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Tricky {
        pub name: String,
    }
}

#[rekord::record(tree = "tricky", version = 2, migrate_from = v1::Tricky)]
#[derive(Debug, Clone, PartialEq)]
pub struct Tricky {
    pub name: String,
    pub c: char,
    pub f32s: Vec<f32>,
    pub f64s: Vec<f64>,
    pub u: (u128, u128),
    pub i: (i128, i128),
    pub nested: Option<Option<Option<u8>>>,
    pub b: Box<Option<Box<String>>>,
    pub tmap: HashMap<(u8, String), Vec<String>>,
    pub hmap: HashMap<String, u32>,
    pub set: BTreeSet<String>,
    pub r#type: Kind,
    pub kinds: Vec<Kind>,
    pub note: Option<Key<Note>>,
    pub arr: [u8; 3],
    pub unit: (),
    pub one: (String,),
}

impl From<v1::Tricky> for Tricky {
    fn from(v: v1::Tricky) -> Self {
        base(&v.name, 'x')
    }
}

const STRINGS: &[&str] = &[
    "",
    "\"quoted\"",
    "back\\slash\\",
    "line\nbreak\r\nend",
    "tab\there",
    "unicode ünï 😀 \u{2028} \u{0} \u{7f} \u{feff}",
    ") , ] } (",
    "a  b   c",
    "// not a comment",
    "'",
    "r#\"raw\"#",
    "trailing,",
    "    ",
];

fn base(name: &str, c: char) -> Tricky {
    Tricky {
        name: name.into(),
        c,
        f32s: vec![],
        f64s: vec![],
        u: (0, 0),
        i: (0, 0),
        nested: None,
        b: Box::new(None),
        tmap: HashMap::new(),
        hmap: HashMap::new(),
        set: BTreeSet::new(),
        r#type: Kind::r#type,
        kinds: vec![],
        note: None,
        arr: [0; 3],
        unit: (),
        one: (String::new(),),
    }
}

fn tricky(
    i: usize,
    note: Key<Note>,
    quote_char: bool,
    newline_char: bool,
    hashmap: bool,
) -> Tricky {
    let s = STRINGS[i % STRINGS.len()];
    let chars = ['"', '\'', '\\', '\n', '\0', '😀', ')', ','];
    let mut c = chars[i % chars.len()];
    if c == '"' && !quote_char {
        c = 'q';
    }
    if c == '\n' && !newline_char {
        c = 'n';
    }
    let mut t = base(s, c);
    t.f32s = vec![
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MIN_POSITIVE,
        1e-45,
        f32::MAX,
        0.1,
        16_777_217.0,
    ];
    t.f64s = vec![
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        5e-324,
        f64::MAX,
        0.1,
        1e300,
    ];
    t.u = (u128::MAX, 1);
    t.i = (i128::MIN, i128::MAX);
    t.nested = [None, Some(None), Some(Some(None)), Some(Some(Some(7)))][i % 4];
    t.b = Box::new(if i.is_multiple_of(2) {
        Some(Box::new(s.to_string()))
    } else {
        None
    });
    for (j, s2) in STRINGS.iter().enumerate() {
        t.tmap
            .insert((j as u8, (*s2).to_string()), vec![(*s2).to_string(); j % 3]);
        if hashmap {
            t.hmap.insert(format!("{s2}{j}"), j as u32);
        }
        t.set.insert((*s2).to_string());
    }
    t.r#type = match i % 5 {
        0 => Kind::r#type,
        1 => Kind::r#match(9),
        2 => Kind::Plain { r#struct: s.into() },
        3 => Kind::None,
        _ => Kind::Some(3),
    };
    t.kinds = vec![
        Kind::None,
        Kind::Some(1),
        Kind::r#type,
        Kind::Plain {
            r#struct: "x".into(),
        },
    ];
    t.note = Some(note);
    t.arr = [1, 2, 255];
    t.one = (s.to_string(),);
    t
}

fn viewer(db: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("EDITOR")
        .env_remove("VISUAL")
        .output()
        .unwrap()
}

fn ok(db: &Path, args: &[&str]) -> String {
    let out = viewer(db, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn same(a: &Tricky, b: &Tricky) -> bool {
    // NaN-aware: compare floats by bits.
    let fa: Vec<u32> = a.f32s.iter().map(|x| x.to_bits()).collect();
    let fb: Vec<u32> = b.f32s.iter().map(|x| x.to_bits()).collect();
    let da: Vec<u64> = a.f64s.iter().map(|x| x.to_bits()).collect();
    let db: Vec<u64> = b.f64s.iter().map(|x| x.to_bits()).collect();
    let mut a2 = a.clone();
    let mut b2 = b.clone();
    a2.f32s.clear();
    b2.f32s.clear();
    a2.f64s.clear();
    b2.f64s.clear();
    fa == fb && da == db && a2 == b2
}

fn make_db(
    path: &Path,
    quote_char: bool,
    newline_char: bool,
    hashmap: bool,
) -> Vec<(Key<Tricky>, Tricky)> {
    let mut v1keys = vec![];
    {
        let db = Db::open(path).unwrap();
        let t = db.tree::<v1::Tricky>().unwrap();
        for s in STRINGS {
            v1keys.push(
                t.create(&v1::Tricky {
                    name: (*s).to_string(),
                })
                .unwrap(),
            );
        }
        t.release(v1keys[0]).unwrap();
        t.set_state(v1keys[0], u32::MAX).unwrap();
    }
    let db = Db::open(path).unwrap();
    let notes = db.tree::<Note>().unwrap();
    let note = notes
        .create(&Note {
            text: "n\"o)te,".into(),
        })
        .unwrap();
    let t = db.tree::<Tricky>().unwrap();
    let mut out = vec![];
    for i in 0..40 {
        let v = tricky(
            i,
            Key::new(note.id(), note.rev()),
            quote_char,
            newline_char,
            hashmap,
        );
        let k = t.create(&v).unwrap();
        out.push((k, v));
    }
    // revisions and states
    t.release(out[0].0).unwrap();
    t.set_state(out[0].0, 3).unwrap();
    let k1 = t.new_revision(out[0].0).unwrap();
    let mut v = out[0].1.clone();
    v.name = "rev1 \"x\"".into();
    t.replace(k1, &v).unwrap();
    t.release(k1).unwrap();
    let k2 = t.new_revision(k1).unwrap();
    out.push((k1, v.clone()));
    out.push((k2, v));
    t.return_borrow(k2).unwrap();
    for (k, _) in &out[5..10] {
        t.release(*k).unwrap();
    }
    out
}

/// A record with a `char` field holding `"` (and a string after it).
#[test]
fn tricky_round_trip_quote_char() {
    round_trip(true, false, false);
}

/// A `char` field holding `'\n'`: comes back as `' '`.
#[test]
fn tricky_round_trip_newline_char() {
    round_trip(false, true, false);
}

/// A `HashMap<String, u32>` of 13 entries: the second export lists them in another order.
#[test]
fn tricky_round_trip_hashmap_order() {
    round_trip(false, false, true);
}

/// Everything else tricky.
#[test]
fn tricky_round_trip() {
    round_trip(false, false, false);
}

fn round_trip(quote_char: bool, newline_char: bool, hashmap: bool) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.rekord");
    let recs = make_db(&a, quote_char, newline_char, hashmap);
    let dump = dir.path().join("a.ron");
    ok(&a, &["export", "--out", dump.to_str().unwrap()]);
    let text = std::fs::read_to_string(&dump).unwrap();
    if let Ok(d) = std::env::var("REDTEAM_KEEP") {
        std::fs::write(d, &text).unwrap();
    }
    let b = dir.path().join("b.rekord");
    ok(&b, &["--write", "import", dump.to_str().unwrap()]);
    let again = dir.path().join("b.ron");
    ok(&b, &["export", "--out", again.to_str().unwrap()]);
    let text2 = std::fs::read_to_string(&again).unwrap();
    if let Ok(d) = std::env::var("REDTEAM_KEEP") {
        std::fs::write(format!("{d}.2"), &text2).unwrap();
    }
    // Typed read of the import equals what the application wrote.
    let db = Db::open_read_only(&b).unwrap();
    let t = db.tree::<Tricky>().unwrap();
    let mut bad = vec![];
    for (k, v) in &recs {
        let got = t.get(*k).unwrap();
        if !same(&got, v) {
            bad.push(format!("{k:?}:\n  want {v:?}\n  got  {got:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} records differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
    if text != text2 {
        for (i, (x, y)) in text.lines().zip(text2.lines()).enumerate() {
            if x != y {
                let j = x.chars().zip(y.chars()).take_while(|(p, q)| p == q).count();
                let cut = |s: &str| {
                    s.chars()
                        .skip(j.saturating_sub(60))
                        .take(120)
                        .collect::<String>()
                };
                eprintln!("line {}:\n  {:?}\n  {:?}", i + 1, cut(x), cut(y));
            }
        }
        panic!("export -> import -> export differs");
    }
}
