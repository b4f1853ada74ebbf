//! The schema-driven dynamic decoder/encoder (`rekord::schema::dynamic`): round trips against
//! rkyv's typed encoding, hash table placement, robustness on arbitrary bytes and schemas,
//! serde projection and RON rendering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::collection::{btree_map, btree_set, hash_map, hash_set, vec};
use proptest::option;
use proptest::prelude::*;
use rekord::schema::dynamic::{
    DynError, Fields, Value, decode, encode, from_ron, from_value, to_ron, to_ron_line,
};
use rekord::schema::{Field, Type, TypeDef, Variant, VariantKind};
use rekord::{Key, Record, Schema};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

// ---------------------------------------------------------------------------------------------
// Types under test
// ---------------------------------------------------------------------------------------------

#[rekord::record(tree = "other")]
#[derive(Debug, Clone, PartialEq)]
pub struct Other {
    pub name: String,
}

#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub w: f32,
    pub h: f64,
}

#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Point,
    Circle(f64),
    Pair(u8, String),
    Rect { w: u32, h: Option<i16> },
}

/// Recursive through a Vec.
#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub label: String,
    pub kids: Vec<Tree>,
}

/// Recursive through a Box.
#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub enum List {
    Nil,
    Cons(u8, Box<List>),
}

/// Every supported field type.
#[rekord::record(tree = "rich")]
#[derive(Debug, Clone, PartialEq)]
pub struct Rich {
    pub a_u8: u8,
    pub a_u16: u16,
    pub a_u32: u32,
    pub a_u64: u64,
    pub a_u128: u128,
    pub a_i8: i8,
    pub a_i16: i16,
    pub a_i32: i32,
    pub a_i64: i64,
    pub a_i128: i128,
    pub a_f32: f32,
    pub a_f64: f64,
    pub a_bool: bool,
    pub a_char: char,
    pub short: String,
    pub long: String,
    pub unit: (),
    pub opt: Option<u32>,
    pub opt_str: Option<String>,
    pub boxed: Box<String>,
    pub ints: Vec<i16>,
    pub strings: Vec<String>,
    pub arr: [u8; 3],
    pub arr_str: [String; 2],
    pub tuple: (u8, String, bool),
    pub hmap: HashMap<String, u32>,
    pub hmap_int: HashMap<u64, Vec<u8>>,
    pub hmap_tup: HashMap<(u8, String), i32>,
    pub hset: HashSet<i64>,
    pub hset_str: HashSet<String>,
    pub bmap: BTreeMap<i32, String>,
    pub bmap_str: BTreeMap<String, Option<u8>>,
    pub bmap_tup: BTreeMap<(u16, String), bool>,
    pub bset: BTreeSet<u16>,
    pub bset_str: BTreeSet<String>,
    pub uuid: uuid::Uuid,
    pub key: Key<Other>,
    pub dims: Dims,
    pub shape: Shape,
    pub shapes: Vec<Option<Box<Shape>>>,
    pub tree: Tree,
    pub list: List,
    pub r#type: String,
}

/// Everything but hash maps and sets: rkyv's bytes are canonical, so re-encoding must give
/// them back exactly.
#[rekord::record(tree = "ordered")]
#[derive(Debug, Clone, PartialEq)]
pub struct Ordered {
    pub a_u8: u8,
    pub a_u16: u16,
    pub a_u32: u32,
    pub a_u64: u64,
    pub a_u128: u128,
    pub a_i8: i8,
    pub a_i16: i16,
    pub a_i32: i32,
    pub a_i64: i64,
    pub a_i128: i128,
    pub a_f32: f32,
    pub a_f64: f64,
    pub a_bool: bool,
    pub a_char: char,
    pub short: String,
    pub long: String,
    pub unit: (),
    pub opt: Option<u32>,
    pub boxed: Box<String>,
    pub ints: Vec<i16>,
    pub arr_str: [String; 2],
    pub tuple: (u8, String, bool),
    pub bmap: BTreeMap<i32, String>,
    pub bmap_str: BTreeMap<String, Option<u8>>,
    pub bmap_tup: BTreeMap<(u16, String), bool>,
    pub bset: BTreeSet<u16>,
    pub uuid: uuid::Uuid,
    pub key: Key<Other>,
    pub dims: Dims,
    pub shapes: Vec<Option<Box<Shape>>>,
    pub tree: Tree,
    pub list: List,
}

/// Everything RON can read back: no 128-bit integers (`ron` is built without them) and no
/// arrays (serde reads `[T; N]` as a tuple, `to_ron` cannot tell an array from a `Vec`).
#[rekord::record(tree = "plain")]
#[derive(Debug, Clone, PartialEq)]
pub struct Plain {
    pub a_u64: u64,
    pub a_i8: i8,
    pub a_f32: f32,
    pub a_f64: f64,
    pub a_char: char,
    pub long: String,
    pub unit: (),
    pub opt: Option<u32>,
    pub boxed: Box<String>,
    pub tuple: (u8, String, bool),
    pub hmap_tup: HashMap<(u8, String), i32>,
    pub bset_str: BTreeSet<String>,
    pub uuid: uuid::Uuid,
    pub key: Key<Other>,
    pub dims: Dims,
    pub shapes: Vec<Option<Box<Shape>>>,
    pub tree: Tree,
    pub list: List,
    pub r#type: String,
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn string() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{0,8}", "\\PC{0,12}", "[a-zé]{9,40}"]
}

fn f32s() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<i32>().prop_map(|x| x as f32 / 7.0),
        Just(0.0f32),
        Just(-0.0f32),
        Just(f32::INFINITY),
        Just(f32::MIN_POSITIVE),
    ]
}

fn f64s() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<i64>().prop_map(|x| x as f64 / 3.0),
        Just(-0.0f64),
        Just(f64::NEG_INFINITY),
        Just(1e-300),
    ]
}

fn dims() -> impl Strategy<Value = Dims> {
    (f32s(), f64s()).prop_map(|(w, h)| Dims { w, h })
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Point),
        f64s().prop_map(Shape::Circle),
        (any::<u8>(), string()).prop_map(|(a, b)| Shape::Pair(a, b)),
        (any::<u32>(), option::of(any::<i16>())).prop_map(|(w, h)| Shape::Rect { w, h }),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = string().prop_map(|label| Tree {
        label,
        kids: vec![],
    });
    leaf.prop_recursive(3, 12, 4, |inner| {
        (string(), vec(inner, 0..4)).prop_map(|(label, kids)| Tree { label, kids })
    })
}

fn list() -> impl Strategy<Value = List> {
    Just(List::Nil).prop_recursive(6, 6, 1, |inner| {
        (any::<u8>(), inner).prop_map(|(x, l)| List::Cons(x, Box::new(l)))
    })
}

fn shapes() -> impl Strategy<Value = Vec<Option<Box<Shape>>>> {
    vec(option::of(shape().prop_map(Box::new)), 0..5)
}

fn key() -> impl Strategy<Value = Key<Other>> {
    (any::<u64>(), any::<u32>()).prop_map(|(id, rev)| Key::new(id, rev))
}

fn uuids() -> impl Strategy<Value = uuid::Uuid> {
    any::<u128>().prop_map(uuid::Uuid::from_u128)
}

prop_compose! {
    fn ints()(
        a_u8 in any::<u8>(), a_u16 in any::<u16>(), a_u32 in any::<u32>(), a_u64 in any::<u64>(),
        a_u128 in any::<u128>(), a_i8 in any::<i8>(), a_i16 in any::<i16>(), a_i32 in any::<i32>(),
        a_i64 in any::<i64>(), a_i128 in any::<i128>(),
    ) -> (u8, u16, u32, u64, u128, i8, i16, i32, i64, i128) {
        (a_u8, a_u16, a_u32, a_u64, a_u128, a_i8, a_i16, a_i32, a_i64, a_i128)
    }
}

prop_compose! {
    fn scalars()(
        a_f32 in f32s(), a_f64 in f64s(), a_bool in any::<bool>(), a_char in any::<char>(),
        short in "[a-z]{0,8}", long in "[a-z0-9 ]{9,60}", opt in option::of(any::<u32>()),
        opt_str in option::of(string()), boxed in string(), uuid in uuids(), key in key(),
        r#type in string(),
    ) -> (f32, f64, bool, char, String, String, Option<u32>, Option<String>, String, uuid::Uuid, Key<Other>, String) {
        (a_f32, a_f64, a_bool, a_char, short, long, opt, opt_str, boxed, uuid, key, r#type)
    }
}

prop_compose! {
    fn seqs()(
        ints in vec(any::<i16>(), 0..10), strings in vec(string(), 0..5), arr in any::<[u8; 3]>(),
        arr_str in [string(), string()], tuple in (any::<u8>(), string(), any::<bool>()),
    ) -> (Vec<i16>, Vec<String>, [u8; 3], [String; 2], (u8, String, bool)) {
        (ints, strings, arr, arr_str, tuple)
    }
}

prop_compose! {
    fn hashes()(
        hmap in hash_map(string(), any::<u32>(), 0..20),
        hmap_int in hash_map(any::<u64>(), vec(any::<u8>(), 0..4), 0..40),
        hmap_tup in hash_map((0u8..4, "[a-c]{0,10}"), any::<i32>(), 0..12),
        hset in hash_set(any::<i64>(), 0..70),
        hset_str in hash_set(string(), 0..10),
    ) -> (HashMap<String, u32>, HashMap<u64, Vec<u8>>, HashMap<(u8, String), i32>, HashSet<i64>, HashSet<String>) {
        (hmap, hmap_int, hmap_tup, hset, hset_str)
    }
}

prop_compose! {
    fn btrees()(
        bmap in btree_map(any::<i32>(), string(), 0..60),
        bmap_str in btree_map(string(), option::of(any::<u8>()), 0..10),
        bmap_tup in btree_map((0u16..3, "[a-c]{0,10}"), any::<bool>(), 0..45),
        bset in btree_set(any::<u16>(), 0..250),
        bset_str in btree_set(string(), 0..8),
    ) -> (BTreeMap<i32, String>, BTreeMap<String, Option<u8>>, BTreeMap<(u16, String), bool>, BTreeSet<u16>, BTreeSet<String>) {
        (bmap, bmap_str, bmap_tup, bset, bset_str)
    }
}

prop_compose! {
    fn nested()(dims in dims(), shape in shape(), shapes in shapes(), tree in tree(), list in list())
        -> (Dims, Shape, Vec<Option<Box<Shape>>>, Tree, List) {
        (dims, shape, shapes, tree, list)
    }
}

prop_compose! {
    fn rich()(i in ints(), s in scalars(), q in seqs(), h in hashes(), b in btrees(), n in nested()) -> Rich {
        Rich {
            a_u8: i.0, a_u16: i.1, a_u32: i.2, a_u64: i.3, a_u128: i.4,
            a_i8: i.5, a_i16: i.6, a_i32: i.7, a_i64: i.8, a_i128: i.9,
            a_f32: s.0, a_f64: s.1, a_bool: s.2, a_char: s.3, short: s.4, long: s.5,
            unit: (), opt: s.6, opt_str: s.7, boxed: Box::new(s.8),
            ints: q.0, strings: q.1, arr: q.2, arr_str: q.3, tuple: q.4,
            hmap: h.0, hmap_int: h.1, hmap_tup: h.2, hset: h.3, hset_str: h.4,
            bmap: b.0, bmap_str: b.1, bmap_tup: b.2, bset: b.3, bset_str: b.4,
            uuid: s.9, key: s.10, dims: n.0, shape: n.1, shapes: n.2, tree: n.3, list: n.4,
            r#type: s.11,
        }
    }
}

fn ordered_of(r: &Rich) -> Ordered {
    Ordered {
        a_u8: r.a_u8,
        a_u16: r.a_u16,
        a_u32: r.a_u32,
        a_u64: r.a_u64,
        a_u128: r.a_u128,
        a_i8: r.a_i8,
        a_i16: r.a_i16,
        a_i32: r.a_i32,
        a_i64: r.a_i64,
        a_i128: r.a_i128,
        a_f32: r.a_f32,
        a_f64: r.a_f64,
        a_bool: r.a_bool,
        a_char: r.a_char,
        short: r.short.clone(),
        long: r.long.clone(),
        unit: (),
        opt: r.opt,
        boxed: r.boxed.clone(),
        ints: r.ints.clone(),
        arr_str: r.arr_str.clone(),
        tuple: r.tuple.clone(),
        bmap: r.bmap.clone(),
        bmap_str: r.bmap_str.clone(),
        bmap_tup: r.bmap_tup.clone(),
        bset: r.bset.clone(),
        uuid: r.uuid,
        key: r.key,
        dims: r.dims.clone(),
        shapes: r.shapes.clone(),
        tree: r.tree.clone(),
        list: r.list.clone(),
    }
}

fn plain_of(r: &Rich) -> Plain {
    Plain {
        a_u64: r.a_u64,
        a_i8: r.a_i8,
        a_f32: r.a_f32,
        a_f64: r.a_f64,
        a_char: r.a_char,
        long: r.long.clone(),
        unit: (),
        opt: r.opt,
        boxed: r.boxed.clone(),
        tuple: r.tuple.clone(),
        hmap_tup: r.hmap_tup.clone(),
        bset_str: r.bset_str.clone(),
        uuid: r.uuid,
        key: r.key,
        dims: r.dims.clone(),
        shapes: r.shapes.clone(),
        tree: r.tree.clone(),
        list: r.list.clone(),
        r#type: r.r#type.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn field_mut<'v>(v: &'v mut Value, name: &str) -> &'v mut Value {
    let Value::Struct(fields) = v else {
        panic!("struct expected: {v:?}")
    };
    &mut fields.iter_mut().find(|(n, _)| n == name).unwrap().1
}

/// Reorders the entries of a decoded hash map/set to `order` (the native iteration order,
/// which is what rkyv fed its table builder).
fn reorder(v: &mut Value, order: &[Value]) {
    let pos = |k: &Value| order.iter().position(|o| o == k).unwrap();
    match v {
        Value::Map(es) => es.sort_by_key(|(k, _)| pos(k)),
        Value::Seq(xs) => xs.sort_by_key(|k| pos(k)),
        other => panic!("map expected: {other:?}"),
    }
}

fn s(x: &str) -> Value {
    Value::String(x.to_owned())
}

/// Encodes with the dynamic encoder and checks rkyv accepts it; returns the typed value.
fn reencode<T: Record>(schema: &Schema, v: &Value) -> (Vec<u8>, T) {
    let bytes = encode(schema, v).unwrap();
    let archived = T::__access(&bytes).unwrap();
    (bytes.clone(), T::__deserialize(archived).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn rich_round_trip(r in rich()) {
        let schema = Schema::of::<Rich>();
        let bytes = r.__encode(Vec::new()).unwrap();
        let dv = decode(&schema, &bytes).unwrap();

        // Typed projection.
        prop_assert_eq!(&from_value::<Rich>(dv.clone()).unwrap(), &r);

        // Re-encode in stored (bucket) order: valid, equal, and archived lookups work.
        let bytes2 = encode(&schema, &dv).unwrap();
        let a = Rich::__access(&bytes2).unwrap();
        prop_assert_eq!(&Rich::__deserialize(a).unwrap(), &r);
        for (k, v) in &r.hmap {
            prop_assert_eq!(a.hmap.get(k.as_str()).map(|x| x.to_native()), Some(*v));
        }
        for (k, v) in &r.hmap_int {
            let found = a.hmap_int.get_with(k, |q, k| *q == k.to_native()).unwrap();
            prop_assert_eq!(found.as_slice(), v.as_slice());
        }
        for (k, v) in &r.hmap_tup {
            let found = a.hmap_tup.get_with(k, |q, k| q.0 == k.0 && q.1 == k.1.as_str());
            prop_assert_eq!(found.map(|x| x.to_native()), Some(*v));
        }
        for k in &r.hset {
            prop_assert!(a.hset.contains(&rekord::__private::rkyv::Archived::<i64>::from_native(*k)));
        }
        for k in &r.hset_str {
            prop_assert!(a.hset_str.contains(k.as_str()));
        }
        for (k, v) in &r.bmap {
            prop_assert_eq!(a.bmap.get(&rekord::__private::rkyv::Archived::<i32>::from_native(*k)).map(|x| x.as_str()), Some(v.as_str()));
        }

        // Decoding what we wrote gives the same value back (hash entries may move: placement
        // depends on insertion order).
        prop_assert_eq!(&from_value::<Rich>(decode(&schema, &bytes2).unwrap()).unwrap(), &r);

        // Fed in rkyv's own input order, the hash tables come out byte-identical.
        let mut dv3 = dv.clone();
        reorder(field_mut(&mut dv3, "hmap"), &r.hmap.keys().map(|k| s(k)).collect::<Vec<_>>());
        reorder(field_mut(&mut dv3, "hmap_int"), &r.hmap_int.keys().map(|k| Value::U64(*k)).collect::<Vec<_>>());
        reorder(
            field_mut(&mut dv3, "hmap_tup"),
            &r.hmap_tup.keys().map(|(a, b)| Value::Tuple(vec![Value::U8(*a), s(b)])).collect::<Vec<_>>(),
        );
        reorder(field_mut(&mut dv3, "hset"), &r.hset.iter().map(|k| Value::I64(*k)).collect::<Vec<_>>());
        reorder(field_mut(&mut dv3, "hset_str"), &r.hset_str.iter().map(|k| s(k)).collect::<Vec<_>>());
        prop_assert!(encode(&schema, &dv3).unwrap() == bytes, "hash tables differ from rkyv's");

        // RON: valid text, read back (guided by the schema) to the same record.
        let text = to_ron(&dv);
        prop_assert!(ron::from_str::<ron::Value>(&text).is_ok(), "{}", text);
        let back = from_ron(&schema, &text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert!(encode(&schema, &back).unwrap() == bytes2, "RON round trip differs:\n{}", text);
        // One line: no line break at all, and the same value back.
        let line = to_ron_line(&dv);
        prop_assert!(!line.contains('\n') && !line.contains('\r'), "{}", line);
        let back = from_ron(&schema, &line).map_err(|e| TestCaseError::fail(format!("{e}\n{line}")))?;
        prop_assert!(encode(&schema, &back).unwrap() == bytes2, "one-line RON round trip differs:\n{}", line);
    }

    #[test]
    fn ordered_round_trip_is_byte_identical(r in rich()) {
        let o = ordered_of(&r);
        let schema = Schema::of::<Ordered>();
        let bytes = o.__encode(Vec::new()).unwrap();
        let dv = decode(&schema, &bytes).unwrap();
        let (bytes2, back) = reencode::<Ordered>(&schema, &dv);
        prop_assert_eq!(&back, &o);
        prop_assert!(bytes2 == bytes, "bytes differ");
        prop_assert_eq!(&from_value::<Ordered>(dv).unwrap(), &o);
    }

    #[test]
    fn plain_ron_parses_back(r in rich()) {
        let p = plain_of(&r);
        let schema = Schema::of::<Plain>();
        let dv = decode(&schema, &p.__encode(Vec::new()).unwrap()).unwrap();
        let text = to_ron(&dv);
        let back: Plain = ron::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(back, p);
    }

    /// B-tree maps given in any order are sorted like the Rust type.
    #[test]
    fn btree_entries_are_sorted_on_encode(r in rich()) {
        let o = ordered_of(&r);
        let schema = Schema::of::<Ordered>();
        let bytes = o.__encode(Vec::new()).unwrap();
        let mut dv = decode(&schema, &bytes).unwrap();
        for name in ["bmap", "bmap_str", "bmap_tup", "bset"] {
            match field_mut(&mut dv, name) {
                Value::Map(es) => es.reverse(),
                Value::Seq(xs) => xs.reverse(),
                _ => unreachable!(),
            }
        }
        prop_assert!(encode(&schema, &dv).unwrap() == bytes);
    }
}

#[test]
fn big_btrees_match_rkyv() {
    let schema = Schema::of::<Ordered>();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for n in [36usize, 37, 215, 216, 217, 1295, 1296, 1297, 3000] {
        let o = Ordered {
            a_u8: 0,
            a_u16: 0,
            a_u32: 0,
            a_u64: 0,
            a_u128: 0,
            a_i8: 0,
            a_i16: 0,
            a_i32: 0,
            a_i64: 0,
            a_i128: 0,
            a_f32: 0.0,
            a_f64: 0.0,
            a_bool: false,
            a_char: 'x',
            short: String::new(),
            long: "long enough string".into(),
            unit: (),
            opt: None,
            boxed: Box::default(),
            ints: vec![],
            arr_str: [String::new(), "0123456789".into()],
            tuple: (0, String::new(), true),
            bmap: (0..n)
                .map(|i| (next() as i32, format!("value {i}")))
                .collect(),
            bmap_str: BTreeMap::new(),
            bmap_tup: (0..n)
                .map(|i| ((i as u16 % 7, format!("{}", next() % 1000)), i % 2 == 0))
                .collect(),
            bset: (0..n).map(|_| next() as u16).collect(),
            uuid: uuid::Uuid::nil(),
            key: Key::new(1, 2),
            dims: Dims { w: 1.0, h: 2.0 },
            shapes: vec![],
            tree: Tree {
                label: "t".into(),
                kids: vec![],
            },
            list: List::Nil,
        };
        let bytes = o.__encode(Vec::new()).unwrap();
        let dv = decode(&schema, &bytes).unwrap();
        let (bytes2, back) = reencode::<Ordered>(&schema, &dv);
        assert_eq!(back, o, "n = {n}");
        assert!(bytes2 == bytes, "n = {n}");
    }
}

#[test]
fn big_hash_maps_keep_lookups() {
    let schema = Schema::of::<Plain>();
    for n in [1usize, 7, 8, 15, 16, 17, 100, 1000, 3000] {
        let p = Plain {
            a_u64: 1,
            a_i8: -1,
            a_f32: 1.5,
            a_f64: 2.5,
            a_char: 'c',
            long: "0123456789".into(),
            unit: (),
            opt: Some(3),
            boxed: Box::new("b".into()),
            tuple: (1, "x".into(), false),
            hmap_tup: (0..n)
                .map(|i| ((i as u8, format!("key {i}")), i as i32))
                .collect(),
            bset_str: BTreeSet::new(),
            uuid: uuid::Uuid::from_u128(7),
            key: Key::new(3, 4),
            dims: Dims { w: 0.0, h: 0.0 },
            shapes: vec![],
            tree: Tree {
                label: String::new(),
                kids: vec![],
            },
            list: List::Cons(1, Box::new(List::Nil)),
            r#type: "t".into(),
        };
        let bytes = p.__encode(Vec::new()).unwrap();
        let dv = decode(&schema, &bytes).unwrap();
        let bytes2 = encode(&schema, &dv).unwrap();
        let a = Plain::__access(&bytes2).unwrap();
        assert_eq!(Plain::__deserialize(a).unwrap(), p);
        for (k, v) in &p.hmap_tup {
            let found = a
                .hmap_tup
                .get_with(k, |q, k| q.0 == k.0 && q.1 == k.1.as_str());
            assert_eq!(found.map(|x| x.to_native()), Some(*v), "n = {n}");
        }
    }
}

#[test]
fn decoded_value_shape() {
    let schema = Schema::of::<Plain>();
    let p = Plain {
        a_u64: 1,
        a_i8: -1,
        a_f32: 1.5,
        a_f64: 2.5,
        a_char: 'c',
        long: "0123456789".into(),
        unit: (),
        opt: Some(3),
        boxed: Box::new("b".into()),
        tuple: (1, "x".into(), false),
        hmap_tup: HashMap::from([((1, "a".into()), 5)]),
        bset_str: BTreeSet::from(["y".into(), "x".into()]),
        uuid: uuid::Uuid::from_u128(7),
        key: Key::new(3, 4),
        dims: Dims { w: 0.5, h: 0.25 },
        shapes: vec![None, Some(Box::new(Shape::Rect { w: 1, h: None }))],
        tree: Tree {
            label: "r".into(),
            kids: vec![],
        },
        list: List::Cons(1, Box::new(List::Nil)),
        r#type: "t".into(),
    };
    let dv = decode(&schema, &p.__encode(Vec::new()).unwrap()).unwrap();
    let Value::Struct(fields) = &dv else { panic!() };
    let get = |n: &str| &fields.iter().find(|(k, _)| k == n).unwrap().1;
    assert_eq!(fields[0].0, "a_u64");
    assert_eq!(fields.last().unwrap().0, "type");
    assert_eq!(get("a_i8"), &Value::I8(-1));
    assert_eq!(get("unit"), &Value::Unit);
    assert_eq!(get("opt"), &Value::Option(Some(Box::new(Value::U32(3)))));
    assert_eq!(get("boxed"), &Value::Box(Box::new(s("b"))));
    assert_eq!(
        get("tuple"),
        &Value::Tuple(vec![Value::U8(1), s("x"), Value::Bool(false)])
    );
    assert_eq!(
        get("hmap_tup"),
        &Value::Map(vec![(
            Value::Tuple(vec![Value::U8(1), s("a")]),
            Value::I32(5)
        )])
    );
    assert_eq!(get("bset_str"), &Value::Seq(vec![s("x"), s("y")]));
    assert_eq!(get("uuid"), &Value::Uuid(uuid::Uuid::from_u128(7)));
    assert_eq!(get("key"), &Value::Key { id: 3, rev: 4 });
    assert_eq!(
        get("dims"),
        &Value::Struct(vec![
            ("w".into(), Value::F32(0.5)),
            ("h".into(), Value::F64(0.25))
        ])
    );
    assert_eq!(
        get("shapes"),
        &Value::Seq(vec![
            Value::Option(None),
            Value::Option(Some(Box::new(Value::Box(Box::new(Value::Enum {
                variant: "Rect".into(),
                fields: Fields::Named(vec![
                    ("w".into(), Value::U32(1)),
                    ("h".into(), Value::Option(None))
                ]),
            })))))
        ])
    );
    assert_eq!(
        get("list"),
        &Value::Enum {
            variant: "Cons".into(),
            fields: Fields::Tuple(vec![
                Value::U8(1),
                Value::Box(Box::new(Value::Enum {
                    variant: "Nil".into(),
                    fields: Fields::Unit
                }))
            ]),
        }
    );

    let text = to_ron(&dv);
    assert!(text.contains("key: (id: 3, rev: 4)"), "{text}");
    assert!(
        text.contains("uuid: \"00000000-0000-0000-0000-000000000007\""),
        "{text}"
    );
    assert!(text.contains("Some(Rect(w: 1, h: None))"), "{text}");
    assert!(text.contains("list: Cons(1, Nil)"), "{text}");
    assert!(text.contains("hmap_tup: {(1, \"a\"): 5}"), "{text}");
    assert_eq!(ron::from_str::<Plain>(&text).unwrap(), p);
}

// ---------------------------------------------------------------------------------------------
// Encoder errors
// ---------------------------------------------------------------------------------------------

fn plain_value() -> (Schema, Value) {
    let schema = Schema::of::<Plain>();
    let p = Plain {
        a_u64: 1,
        a_i8: -1,
        a_f32: 1.5,
        a_f64: 2.5,
        a_char: 'c',
        long: "0123456789".into(),
        unit: (),
        opt: Some(3),
        boxed: Box::new("b".into()),
        tuple: (1, "x".into(), false),
        hmap_tup: HashMap::from([((1, "a".into()), 5), ((2, "b".into()), 6)]),
        bset_str: BTreeSet::from(["y".into(), "x".into()]),
        uuid: uuid::Uuid::from_u128(7),
        key: Key::new(3, 4),
        dims: Dims { w: 0.5, h: 0.25 },
        shapes: vec![None, Some(Box::new(Shape::Rect { w: 1, h: None }))],
        tree: Tree {
            label: "r".into(),
            kids: vec![Tree {
                label: "k".into(),
                kids: vec![],
            }],
        },
        list: List::Cons(1, Box::new(List::Nil)),
        r#type: "t".into(),
    };
    let dv = decode(&schema, &p.__encode(Vec::new()).unwrap()).unwrap();
    (schema, dv)
}

fn encode_err(f: impl FnOnce(&mut Value)) -> DynError {
    let (schema, mut v) = plain_value();
    f(&mut v);
    encode(&schema, &v).unwrap_err()
}

#[test]
fn encoder_rejects_mismatches_with_paths() {
    let e = encode_err(|v| *field_mut(v, "a_u64") = Value::U32(1));
    assert_eq!(e.path, "a_u64");
    assert!(e.message.contains("expected u64, found u32"), "{e}");

    let e = encode_err(|v| *field_mut(field_mut(v, "dims"), "w") = s("x"));
    assert_eq!(e.path, "dims.w");

    let e = encode_err(|v| {
        let Value::Struct(fs) = field_mut(v, "dims") else {
            panic!()
        };
        fs.retain(|(n, _)| n != "h");
    });
    assert_eq!(e.path, "dims.h");
    assert!(e.message.contains("missing"), "{e}");

    let e = encode_err(|v| {
        let Value::Struct(fs) = field_mut(v, "dims") else {
            panic!()
        };
        fs.push(("depth".into(), Value::U8(1)));
    });
    assert_eq!(e.path, "dims");
    assert!(e.message.contains("depth"), "{e}");

    let arr = schema_with(
        "A",
        vec![(
            "A",
            strukt(vec![("arr", Type::Array(Box::new(Type::U8), 3))]),
        )],
    );
    let e = encode(
        &arr,
        &Value::Struct(vec![("arr".into(), Value::Seq(vec![Value::U8(1)]))]),
    )
    .unwrap_err();
    assert_eq!(e.path, "arr");
    assert!(e.message.contains("3"), "{e}");
    let three = Value::Seq(vec![Value::U8(1), Value::U8(2), Value::U8(3)]);
    let bytes = encode(&arr, &Value::Struct(vec![("arr".into(), three.clone())])).unwrap();
    assert_eq!(bytes, [1, 2, 3]);
    assert_eq!(
        decode(&arr, &bytes).unwrap(),
        Value::Struct(vec![("arr".into(), three)])
    );

    let long = "x".repeat(9);
    let e = encode_err(|v| *field_mut(v, "a_char") = s(&long));
    assert_eq!(e.path, "a_char");

    let e = encode_err(|v| {
        *field_mut(v, "shapes") = Value::Seq(vec![Value::Option(Some(Box::new(Value::Box(
            Box::new(Value::Enum {
                variant: "Hexagon".into(),
                fields: Fields::Unit,
            }),
        ))))])
    });
    assert_eq!(e.path, "shapes[0]");
    assert!(e.message.contains("Hexagon"), "{e}");

    let e = encode_err(|v| {
        *field_mut(v, "shapes") = Value::Seq(vec![Value::Option(Some(Box::new(Value::Box(
            Box::new(Value::Enum {
                variant: "Rect".into(),
                fields: Fields::Named(vec![
                    ("w".into(), Value::U64(1)),
                    ("h".into(), Value::Option(None)),
                ]),
            }),
        ))))])
    });
    assert_eq!(e.path, "shapes[0].Rect.w");

    let e = encode_err(|v| {
        let Value::Map(es) = field_mut(v, "hmap_tup") else {
            panic!()
        };
        es[1].1 = s("no");
    });
    assert_eq!(e.path, "hmap_tup{1}.value");

    let e = encode_err(|v| {
        let Value::Map(es) = field_mut(v, "hmap_tup") else {
            panic!()
        };
        es[1].0 = Value::Tuple(vec![Value::U8(1)]);
    });
    assert_eq!(e.path, "hmap_tup{1}.key");

    let e = encode_err(|v| {
        let Value::Map(es) = field_mut(v, "hmap_tup") else {
            panic!()
        };
        es[1].0 = es[0].0.clone();
    });
    assert_eq!(e.path, "hmap_tup{1}");
    assert!(e.message.contains("duplicate"), "{e}");

    let e = encode_err(|v| *field_mut(v, "tuple") = Value::Tuple(vec![Value::U8(1), s("x")]));
    assert_eq!(e.path, "tuple");

    let e = encode_err(|v| {
        *field_mut(v, "tuple") = Value::Tuple(vec![Value::U8(1), Value::U8(2), Value::Bool(true)])
    });
    assert_eq!(e.path, "tuple.1");

    let e = encode_err(|v| *field_mut(v, "boxed") = s("not boxed"));
    assert_eq!(e.path, "boxed");

    let e = encode_err(|v| {
        *field_mut(field_mut(v, "tree"), "kids") = Value::Seq(vec![Value::Struct(vec![
            ("label".into(), s("a")),
            ("kids".into(), Value::Seq(vec![Value::Unit])),
        ])])
    });
    assert_eq!(e.path, "tree.kids[0].kids[0]");

    let (schema, v) = plain_value();
    assert!(encode(&schema, &Value::Unit).is_err());
    assert!(encode(&schema, &v).is_ok());
}

#[test]
fn encoder_rejects_over_deep_values() {
    let schema = Schema::of::<Plain>();
    let (_, mut v) = plain_value();
    let mut list = Value::Enum {
        variant: "Nil".into(),
        fields: Fields::Unit,
    };
    for _ in 0..200 {
        list = Value::Enum {
            variant: "Cons".into(),
            fields: Fields::Tuple(vec![Value::U8(0), Value::Box(Box::new(list))]),
        };
    }
    *field_mut(&mut v, "list") = list;
    let e = encode(&schema, &v).unwrap_err();
    assert!(e.message.contains("deeper"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Decoder robustness
// ---------------------------------------------------------------------------------------------

fn named(n: &str) -> Type {
    Type::Named(n.to_owned())
}

fn schema_with(root: &str, types: Vec<(&str, TypeDef)>) -> Schema {
    Schema {
        tree: "t".into(),
        version: 1,
        root: named(root),
        types: types.into_iter().map(|(n, d)| (n.to_owned(), d)).collect(),
    }
}

fn strukt(fields: Vec<(&str, Type)>) -> TypeDef {
    TypeDef::Struct(
        fields
            .into_iter()
            .map(|(n, t)| Field::new(n, t, false))
            .collect(),
    )
}

#[test]
fn zero_sized_bombs_are_rejected() {
    // Vec<()> claiming 4e9 elements.
    let s = schema_with(
        "A",
        vec![("A", strukt(vec![("v", Type::Vec(Box::new(Type::Unit)))]))],
    );
    let mut bytes = 0i32.to_le_bytes().to_vec();
    bytes.extend(4_000_000_000u32.to_le_bytes());
    let e = decode(&s, &bytes).unwrap_err();
    assert!(e.message.contains("more values"), "{e}");

    // [(); 4e9] in the schema.
    let s = schema_with(
        "A",
        vec![(
            "A",
            strukt(vec![(
                "v",
                Type::Array(Box::new(Type::Unit), 4_000_000_000),
            )]),
        )],
    );
    assert!(decode(&s, &[]).is_err());

    // [u64; 4e9]: far larger than any buffer.
    let s = schema_with(
        "A",
        vec![(
            "A",
            strukt(vec![("v", Type::Array(Box::new(Type::U64), 4_000_000_000))]),
        )],
    );
    assert!(decode(&s, &[0; 64]).is_err());
    assert!(encode(&s, &Value::Struct(vec![("v".into(), Value::Seq(vec![]))])).is_err());
}

#[test]
fn bad_schemas_are_errors() {
    let dangling = schema_with("A", vec![("A", strukt(vec![("b", named("B"))]))]);
    let e = decode(&dangling, &[0; 16]).unwrap_err();
    assert!(e.message.contains("`B`"), "{e}");
    let infinite = schema_with(
        "A",
        vec![("A", strukt(vec![("a", Type::Option(Box::new(named("A"))))]))],
    );
    assert!(decode(&infinite, &[0; 16]).is_err());
    let missing_root = schema_with("Nope", vec![]);
    assert!(decode(&missing_root, &[0; 16]).is_err());
    assert!(encode(&missing_root, &Value::Unit).is_err());
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let mut l = List::Nil;
    for i in 0..300u32 {
        l = List::Cons(i as u8, Box::new(l));
    }
    let mut p = plain_of_default();
    p.list = l;
    let bytes = p.__encode(Vec::new()).unwrap();
    let e = decode(&Schema::of::<Plain>(), &bytes).unwrap_err();
    assert!(e.message.contains("deeper"), "{e}");
    assert!(e.path.starts_with("list.Cons.1.Cons.1"), "{e}");
}

fn plain_of_default() -> Plain {
    Plain {
        a_u64: 0,
        a_i8: 0,
        a_f32: 0.0,
        a_f64: 0.0,
        a_char: 'a',
        long: String::new(),
        unit: (),
        opt: None,
        boxed: Box::default(),
        tuple: (0, String::new(), false),
        hmap_tup: HashMap::new(),
        bset_str: BTreeSet::new(),
        uuid: uuid::Uuid::nil(),
        key: Key::new(0, 0),
        dims: Dims { w: 0.0, h: 0.0 },
        shapes: vec![],
        tree: Tree {
            label: String::new(),
            kids: vec![],
        },
        list: List::Nil,
        r#type: String::new(),
    }
}

#[test]
fn invalid_scalars_are_rejected() {
    let s = schema_with(
        "A",
        vec![(
            "A",
            strukt(vec![
                ("b", Type::Bool),
                ("c", Type::Char),
                ("o", Type::Option(Box::new(Type::U8))),
                ("s", Type::String),
            ]),
        )],
    );
    let ok = [
        1u8, 0x41, 0, 0, 0, 1, 7, b'h', b'i', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert_eq!(
        decode(&s, &ok).unwrap(),
        Value::Struct(vec![
            ("b".into(), Value::Bool(true)),
            ("c".into(), Value::Char('A')),
            ("o".into(), Value::Option(Some(Box::new(Value::U8(7))))),
            ("s".into(), Value::String("hi".into())),
        ])
    );
    let bad = |i: usize, b: u8, path: &str| {
        let mut x = ok;
        x[i] = b;
        let e = decode(&s, &x).unwrap_err();
        assert_eq!(e.path, path, "{e}");
    };
    bad(0, 2, "b");
    bad(3, 0xd8, "c"); // 0xd80041: > 0x10FFFF
    bad(5, 2, "o");
    bad(7, 0xc3, "s"); // invalid UTF-8
    bad(7, 0x85, "s"); // out-of-line with a short length
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes never crash the decoder.
    #[test]
    fn decode_random_bytes_rich(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode(&Schema::of::<Rich>(), &bytes);
    }

    /// Corrupted real records: the decoder accepts exactly what rkyv's checked access
    /// accepts, except that it also refuses bytes that belong to no object of the record
    /// (rkyv's access ignores them; a record of another type read under this schema).
    #[test]
    fn decode_agrees_with_rkyv_on_corruption(
        r in rich(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let p = plain_of(&r);
        let schema = Schema::of::<Plain>();
        let mut bytes = p.__encode(Vec::new()).unwrap();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let ours = decode(&schema, &bytes);
        let theirs = Plain::__access(&bytes);
        let stricter = matches!(&ours, Err(e) if e.message.contains("belong to no part of it"));
        prop_assert_eq!(ours.is_ok() || stricter, theirs.is_ok(), "{:?}", ours.err());
        if let (Ok(v), Ok(a)) = (ours, theirs) {
            let mut typed = Plain::__deserialize(a).unwrap();
            let mut ours = from_value::<Plain>(v).unwrap();
            prop_assert_eq!(&ours.hmap_tup, &typed.hmap_tup);
            // Floats may now be NaN: compare the rest through Debug text.
            ours.hmap_tup.clear();
            typed.hmap_tup.clear();
            prop_assert_eq!(format!("{ours:?}"), format!("{typed:?}"));
        }
    }

    /// Arbitrary schemas (recursive, dangling, huge arrays) and bytes never crash the decoder;
    /// whatever it accepts, the encoder writes back into something it decodes again.
    #[test]
    fn decode_random_schemas(schema in schemas(), bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(v) = decode(&schema, &bytes) {
            match encode(&schema, &v) {
                Ok(b) => {
                    let again = decode(&schema, &b);
                    prop_assert!(again.is_ok(), "{:?}", again);
                    if !has_maps(&schema) {
                        prop_assert_eq!(format!("{:?}", again.unwrap()), format!("{v:?}"));
                    }
                }
                // Random tables can hold the same key twice.
                Err(e) => prop_assert!(e.message.contains("duplicate"), "{e}"),
            }
        }
    }

    /// Arbitrary values against arbitrary schemas never crash the encoder.
    #[test]
    fn encode_random_values(schema in schemas(), value in values()) {
        if let Ok(b) = encode(&schema, &value) {
            prop_assert!(decode(&schema, &b).is_ok());
        }
        let _ = to_ron(&value);
        let _ = from_value::<Rich>(value);
    }
}

fn has_maps(s: &Schema) -> bool {
    let text = format!("{s:?}");
    text.contains("Map {") || text.contains("Set {")
}

const NAMES: [&str; 4] = ["A", "B", "C", "Missing"];

fn types() -> impl Strategy<Value = Type> {
    let leaf = prop_oneof![
        Just(Type::Unit),
        Just(Type::Bool),
        Just(Type::U8),
        Just(Type::U16),
        Just(Type::U32),
        Just(Type::U64),
        Just(Type::U128),
        Just(Type::I8),
        Just(Type::I32),
        Just(Type::I128),
        Just(Type::F32),
        Just(Type::F64),
        Just(Type::Char),
        Just(Type::String),
        Just(Type::Uuid),
        Just(Type::Key { tree: "k".into() }),
        prop::sample::select(&NAMES[..]).prop_map(named),
    ];
    leaf.prop_recursive(4, 16, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|t| Type::Option(Box::new(t))),
            inner.clone().prop_map(|t| Type::Box(Box::new(t))),
            inner.clone().prop_map(|t| Type::Vec(Box::new(t))),
            (inner.clone(), prop_oneof![0u32..4, Just(4_000_000_000)])
                .prop_map(|(t, n)| Type::Array(Box::new(t), n)),
            vec(inner.clone(), 0..4).prop_map(Type::Tuple),
            (any::<bool>(), inner.clone(), inner.clone()).prop_map(|(ordered, k, v)| Type::Map {
                ordered,
                key: Box::new(k),
                value: Box::new(v),
            }),
            (any::<bool>(), inner).prop_map(|(ordered, t)| Type::Set {
                ordered,
                item: Box::new(t),
            }),
        ]
    })
}

fn fields() -> impl Strategy<Value = Vec<Field>> {
    vec(types(), 0..4).prop_map(|ts| {
        ts.into_iter()
            .enumerate()
            .map(|(i, t)| Field::new(&format!("f{i}"), t, false))
            .collect::<Vec<_>>()
    })
}

fn typedefs() -> impl Strategy<Value = TypeDef> {
    prop_oneof![
        fields().prop_map(TypeDef::Struct),
        vec(
            prop_oneof![
                Just(VariantKind::Unit),
                vec(types(), 0..3).prop_map(VariantKind::Tuple),
                fields().prop_map(VariantKind::Named),
            ],
            0..4
        )
        .prop_map(|kinds| TypeDef::Enum(
            kinds
                .into_iter()
                .enumerate()
                .map(|(i, kind)| Variant {
                    name: format!("V{i}"),
                    kind,
                })
                .collect()
        )),
    ]
}

fn schemas() -> impl Strategy<Value = Schema> {
    (typedefs(), option::of(typedefs()), option::of(typedefs())).prop_map(|(a, b, c)| {
        let mut types = BTreeMap::new();
        types.insert("A".to_owned(), a);
        if let Some(b) = b {
            types.insert("B".to_owned(), b);
        }
        if let Some(c) = c {
            types.insert("C".to_owned(), c);
        }
        Schema {
            tree: "t".into(),
            version: 1,
            root: named("A"),
            types,
        }
    })
}

fn values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Unit),
        any::<bool>().prop_map(Value::Bool),
        any::<u8>().prop_map(Value::U8),
        any::<u32>().prop_map(Value::U32),
        any::<u64>().prop_map(Value::U64),
        any::<i128>().prop_map(Value::I128),
        any::<f32>().prop_map(Value::F32),
        any::<char>().prop_map(Value::Char),
        string().prop_map(Value::String),
        uuids().prop_map(Value::Uuid),
        (any::<u64>(), any::<u32>()).prop_map(|(id, rev)| Value::Key { id, rev }),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        let name = prop::sample::select(vec!["f0", "f1", "V0", "V1", "x"]).prop_map(str::to_owned);
        prop_oneof![
            option::of(inner.clone()).prop_map(|o| Value::Option(o.map(Box::new))),
            inner.clone().prop_map(|v| Value::Box(Box::new(v))),
            vec(inner.clone(), 0..4).prop_map(Value::Seq),
            vec(inner.clone(), 0..4).prop_map(Value::Tuple),
            vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
            vec((name.clone(), inner.clone()), 0..4).prop_map(Value::Struct),
            (name.clone(), vec(inner.clone(), 0..3)).prop_map(|(variant, xs)| Value::Enum {
                variant,
                fields: Fields::Tuple(xs),
            }),
            (name.clone(), vec((name, inner), 0..3)).prop_map(|(variant, xs)| Value::Enum {
                variant,
                fields: Fields::Named(xs),
            }),
        ]
    })
}

// ---------------------------------------------------------------------------------------------
// Projection (from_value)
// ---------------------------------------------------------------------------------------------

mod v1 {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Dims {
        pub w: u32,
        pub h: u32,
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Kind {
        Bolt,
        Nut(u8),
        Washer { d: u16 },
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Part {
        pub dims: Dims,
    }

    #[rekord::record(tree = "items")]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Item {
        pub name: String,
        pub qty: u32,
        pub big: u64,
        pub obsolete: bool,
        pub kind: Kind,
        pub parts: Vec<Part>,
        pub stock: std::collections::BTreeMap<String, u32>,
    }
}

mod v2 {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Dims {
        pub w: u32,
        pub h: u32,
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Kind {
        Bolt,
        Nut(u8),
        Washer { d: u16 },
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Part {
        pub dims: Dims,
    }

    /// v1 plus a defaulted field, minus `obsolete`, with `qty` widened and `big` narrowed.
    #[rekord::record(tree = "items", version = 2)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Item {
        pub name: String,
        pub qty: u64,
        pub big: u32,
        #[record(default = 7)]
        pub extra: u32,
        #[record(default)]
        pub note: Option<String>,
        pub kind: Kind,
        pub parts: Vec<Part>,
        pub stock: std::collections::BTreeMap<String, u64>,
    }
}

mod required {
    #[rekord::record(tree = "items", version = 3)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Item {
        pub name: String,
        pub required: String,
    }
}

mod retyped {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Dims {
        pub w: String,
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Part {
        pub dims: Dims,
    }

    #[rekord::record(tree = "items", version = 4)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Item {
        pub qty: String,
    }

    #[rekord::record(tree = "items", version = 5)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Nested {
        pub parts: Vec<Part>,
    }

    #[rekord::record(tree = "items", version = 6)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Stock {
        pub stock: std::collections::BTreeMap<String, String>,
    }

    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub enum Kind {
        Bolt,
        Nut(u8),
    }

    #[rekord::record(tree = "items", version = 7)]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Kinds {
        pub kind: Kind,
    }
}

fn v1_item(big: u64, kind: v1::Kind) -> Value {
    let item = v1::Item {
        name: "bolt".into(),
        qty: 3,
        big,
        obsolete: true,
        kind,
        parts: vec![
            v1::Part {
                dims: v1::Dims { w: 1, h: 2 },
            },
            v1::Part {
                dims: v1::Dims { w: 3, h: 4 },
            },
        ],
        stock: BTreeMap::from([("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]),
    };
    decode(
        &Schema::of::<v1::Item>(),
        &item.__encode(Vec::new()).unwrap(),
    )
    .unwrap()
}

#[test]
fn projection_fills_defaults_drops_unknown_fields_and_widens() {
    let v2: v2::Item = from_value(v1_item(5, v1::Kind::Washer { d: 9 })).unwrap();
    assert_eq!(
        v2,
        v2::Item {
            name: "bolt".into(),
            qty: 3,
            big: 5,
            extra: 7,
            note: None,
            kind: v2::Kind::Washer { d: 9 },
            parts: vec![
                v2::Part {
                    dims: v2::Dims { w: 1, h: 2 }
                },
                v2::Part {
                    dims: v2::Dims { w: 3, h: 4 }
                },
            ],
            stock: BTreeMap::from([("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]),
        }
    );
}

#[test]
fn projection_narrowing_fails_when_the_value_does_not_fit() {
    let e = from_value::<v2::Item>(v1_item(u64::MAX, v1::Kind::Bolt)).unwrap_err();
    assert_eq!(e.path, "big");
    assert!(e.message.contains("18446744073709551615"), "{e}");
}

#[test]
fn projection_missing_required_field_is_named() {
    let e = from_value::<required::Item>(v1_item(1, v1::Kind::Bolt)).unwrap_err();
    assert_eq!(e.path, "required");
    assert!(e.message.contains("missing field `required`"), "{e}");
}

#[test]
fn projection_changed_field_type_is_named() {
    let e = from_value::<retyped::Item>(v1_item(1, v1::Kind::Bolt)).unwrap_err();
    assert_eq!(e.path, "qty");
    assert!(e.message.contains("invalid type"), "{e}");

    let e = from_value::<retyped::Nested>(v1_item(1, v1::Kind::Bolt)).unwrap_err();
    assert_eq!(e.path, "parts[0].dims.w");

    let e = from_value::<retyped::Stock>(v1_item(1, v1::Kind::Bolt)).unwrap_err();
    assert_eq!(e.path, "stock{0}.value");
    assert_eq!(
        e.to_string(),
        format!("at `stock{{0}}.value`: {}", e.message)
    );
}

#[test]
fn projection_unknown_variant_is_named() {
    let e = from_value::<retyped::Kinds>(v1_item(1, v1::Kind::Washer { d: 1 })).unwrap_err();
    assert_eq!(e.path, "kind");
    assert!(e.message.contains("unknown variant `Washer`"), "{e}");
    let ok: retyped::Kinds = from_value(v1_item(1, v1::Kind::Nut(4))).unwrap();
    assert_eq!(ok.kind, retyped::Kind::Nut(4));
}

#[test]
fn projection_of_uuid_key_box_and_options() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct T {
        u: uuid::Uuid,
        k: Key<Other>,
        r: rekord::RawKey,
        b: Box<u8>,
        o: Option<u16>,
        became_optional: Option<u8>,
        t: (u8, String),
    }
    let v = Value::Struct(vec![
        ("u".into(), Value::Uuid(uuid::Uuid::from_u128(99))),
        ("k".into(), Value::Key { id: 5, rev: 6 }),
        ("r".into(), Value::Key { id: 7, rev: 8 }),
        ("b".into(), Value::Box(Box::new(Value::U8(1)))),
        ("o".into(), Value::Option(Some(Box::new(Value::U8(2))))),
        ("became_optional".into(), Value::U8(3)),
        ("t".into(), Value::Tuple(vec![Value::U8(4), s("x")])),
    ]);
    assert_eq!(
        from_value::<T>(v).unwrap(),
        T {
            u: uuid::Uuid::from_u128(99),
            k: Key::new(5, 6),
            r: rekord::RawKey::new(7, 8),
            b: Box::new(1),
            o: Some(2),
            became_optional: Some(3),
            t: (4, "x".into()),
        }
    );
    let e = from_value::<(u8, u8)>(Value::Tuple(vec![Value::U8(1), s("x")])).unwrap_err();
    assert_eq!(e.path, "1");
    let e = from_value::<Vec<u8>>(Value::Seq(vec![Value::U8(1), Value::I32(-1)])).unwrap_err();
    assert_eq!(e.path, "[1]");
}

// ---------------------------------------------------------------------------------------------
// RON
// ---------------------------------------------------------------------------------------------

#[test]
fn ron_rendering() {
    let v = Value::Struct(vec![
        ("name".into(), s("x \"quoted\"\n")),
        ("qty".into(), Value::U32(3)),
        ("f".into(), Value::F64(f64::NAN)),
        ("g".into(), Value::F32(1e-7)),
        ("one".into(), Value::Tuple(vec![Value::U8(1)])),
        (
            "m".into(),
            Value::Map(vec![(s("k"), Value::Option(None)), (s("l"), Value::Unit)]),
        ),
        (
            "e".into(),
            Value::Enum {
                variant: "Unit".into(),
                fields: Fields::Unit,
            },
        ),
        ("c".into(), Value::Char('\'')),
        ("big".into(), Value::U128(u128::MAX)),
    ]);
    let text = to_ron(&v);
    assert!(text.contains("qty: 3"), "{text}");
    assert!(text.contains("one: (1,)"), "{text}");
    assert!(text.contains("m: {\"k\": None, \"l\": ()}"), "{text}");
    assert!(text.contains("e: Unit"), "{text}");
    ron::from_str::<ron::Value>(&text).unwrap();

    assert_eq!(to_ron(&Value::Struct(vec![])), "()");
    assert_eq!(
        to_ron(&Value::Enum {
            variant: "A".into(),
            fields: Fields::Named(vec![("a".into(), Value::I8(1))])
        }),
        "A(a: 1)"
    );
}

#[test]
fn values_at_the_depth_limit_work_everywhere() {
    let mut l = List::Nil;
    for i in 0..60u32 {
        l = List::Cons(i as u8, Box::new(l));
    }
    let mut p = plain_of_default();
    p.list = l;
    let schema = Schema::of::<Plain>();
    let bytes = p.__encode(Vec::new()).unwrap();
    let v = decode(&schema, &bytes).unwrap();
    assert_eq!(encode(&schema, &v).unwrap(), bytes);
    let text = to_ron(&v);
    let back: Plain = ron::Options::default()
        .with_recursion_limit(1024)
        .from_str(&text)
        .unwrap();
    assert_eq!(back, p);
    assert_eq!(from_value::<Plain>(v).unwrap(), p);
}

/// Hand-written RON: fields in any order, named or anonymous structs, defaults, and every
/// kind of mistake is an error with its line, column and path.
#[test]
fn ron_text_is_read_with_the_schema() {
    let schema = Schema::of::<Plain>();
    let (_, value) = plain_value();
    let text = to_ron(&value);
    assert_eq!(from_ron(&schema, &text).unwrap(), value);

    let err = |text: &str| from_ron(&schema, text).unwrap_err();
    // Not RON at all.
    let e = err("(\n  a_u64: 1,\n  a_i8: ,\n)");
    assert_eq!(e.line, 3, "{e}");
    // A wrong type, out of range, unknown and missing fields: each names its path.
    // Fields in another order, and the struct named.
    let first = text.lines().nth(1).unwrap().to_owned();
    assert!(first.trim_start().starts_with("a_u64:"), "{text}");
    let body: String = text.lines().skip(2).collect::<Vec<_>>().join("\n");
    let reordered = format!("Plain(\n{}\n{first}\n)", body.trim_end_matches(')'));
    assert_eq!(from_ron(&schema, &reordered).unwrap(), value, "{reordered}");
    // f32's extremes and infinities are values, not mistakes.
    for x in ["3.4028235e38", "-3.4028235e38", "inf", "-inf", "1e-45"] {
        let t = text.replacen("a_f32: 1.5", &format!("a_f32: {x}"), 1);
        assert!(from_ron(&schema, &t).is_ok(), "{x}");
    }
    for (bad, path, says) in plain_mistakes(&text) {
        let e = err(&bad);
        assert_eq!(e.path, path, "{bad}\n{e}");
        assert!(e.message.contains(says), "{bad}\n{e}");
        assert!(e.line >= 1 && e.column >= 1, "{e}");
    }
}

/// Mistakes made in `text` (the RON of `plain_value`): (the bad text, the path the error
/// must name, what its message must say).
fn plain_mistakes(text: &str) -> Vec<(String, &'static str, &'static str)> {
    let edit = |from: &str, to: &str| {
        assert!(text.contains(from), "{from:?} not in\n{text}");
        text.replacen(from, to, 1)
    };
    let without_long: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("long:"))
        .collect::<Vec<_>>()
        .join("\n");
    vec![
        // (A finite f32 past its range is refused, not made infinite: a red team found
        // `1e39` stored as inf.)
        (edit("a_f32: 1.5", "a_f32: 1e39"), "a_f32", "does not fit"),
        (
            edit("a_f32: 1.5", "a_f32: -3.5e38"),
            "a_f32",
            "does not fit",
        ),
        (edit("a_i8: -1", "a_i8: 300"), "a_i8", "does not fit"),
        (edit("a_i8: -1", "a_i8: -129"), "a_i8", "does not fit"),
        (
            edit("a_u64: 1", "a_u64: \"one\""),
            "a_u64",
            "expected a u64",
        ),
        (edit("a_u64: 1", "a_u64: -1"), "a_u64", "does not fit"),
        (edit("a_i8:", "a_i9:"), "", "no field `a_i9`"),
        (without_long, "", "missing field `long`"),
        (
            edit("Rect(w: 1", "Square(w: 1"),
            "shapes[1].Some",
            "no variant `Square`",
        ),
        (
            edit("Rect(w: 1", "Rect(w: -1"),
            "shapes[1].Some.Rect.w",
            "does not fit",
        ),
        (edit("(id: 3, rev: 4)", "(id: 3)"), "key", "needs both"),
        (
            edit("00000000-0000-0000-0000-000000000007", "nope"),
            "uuid",
            "not a uuid",
        ),
        (edit("a_char: 'c'", "a_char: true"), "a_char", "char"),
        (edit("opt: Some(3)", "opt: 3"), "opt", ""),
    ]
}
