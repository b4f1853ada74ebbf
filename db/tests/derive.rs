//! Positive tests of `#[rekord::record]` / `#[rekord::data]` through the public API: the schema
//! the attributes describe, the serde defaults they install, and database round trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rekord::schema::{Field, Type, TypeDef, Variant};
use rekord::{Db, Key, Record, Schema};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

fn field(name: &str, ty: Type, default: bool) -> Field {
    Field::new(name, ty, default)
}

fn named(name: &str) -> Type {
    Type::Named(name.to_owned())
}

fn bx(ty: Type) -> Box<Type> {
    Box::new(ty)
}

// ---------------------------------------------------------------------------------------------
// Types under test
// ---------------------------------------------------------------------------------------------

#[rekord::record(tree = "suppliers", version = 3)]
#[derive(Debug, Clone, PartialEq)]
pub struct Supplier {
    pub name: String,
}

#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub w: f32,
    pub h: f32,
}

#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Point,
    Circle(f64),
    Pair(u8, String),
    Rect { w: f64, h: Option<f64> },
}

/// A recursive data type: needs no annotation (the attribute omits rkyv's field bounds).
#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub label: String,
    pub children: Vec<Node>,
}

/// A record with every supported field type.
#[rekord::record]
#[derive(Debug, Clone, PartialEq)]
pub struct Everything {
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
    pub a_string: String,
    pub a_unit: (),
    pub a_option: Option<u32>,
    pub a_box: Box<String>,
    pub a_vec: Vec<i16>,
    pub a_array: [u8; 4],
    pub a_tuple: (u8, String, bool),
    pub a_hash_map: HashMap<String, u32>,
    pub a_btree_map: BTreeMap<u64, String>,
    pub a_hash_set: HashSet<i64>,
    pub a_btree_set: BTreeSet<char>,
    pub a_uuid: uuid::Uuid,
    pub a_key: Key<Supplier>,
    pub dims: Dims,
    pub shape: Shape,
    pub shapes: Vec<Option<Box<Shape>>>,
    pub node: Node,
    pub r#type: String,
}

/// Default tree name and version.
#[rekord::record]
#[derive(Debug, Clone, PartialEq)]
pub struct PartName {
    pub name: String,
}

#[rekord::record]
#[derive(Debug, Clone, PartialEq)]
pub struct HTTPServerLog {
    pub line: String,
}

/// A record that is an enum.
#[rekord::record(tree = "events.v1", version = 2)]
#[derive(Debug, Clone, PartialEq)]
pub enum Happening {
    Started,
    Moved(Dims),
    Renamed { from: String, to: String },
}

#[rekord::data]
#[derive(Debug, Clone, PartialEq)]
pub struct Inner {
    pub id: u32,
    #[record(default = 7)]
    pub weight: u32,
}

#[rekord::record(tree = "with-defaults")]
#[derive(Debug, Clone, PartialEq)]
pub struct WithDefaults {
    pub name: String,
    #[record(default)]
    pub note: Option<String>,
    #[record(default = 5)]
    pub qty: u32,
    #[record(default = String::from("pcs"))]
    pub unit: String,
    #[record(default)]
    pub tags: Vec<String>,
    #[record(default = vec![Inner { id: 1, weight: 2 }])]
    pub inner: Vec<Inner>,
    #[record(default = 9)]
    pub r#type: u8,
}

/// The `crate = "..."` option, with the rekord crate under another name.
mod renamed {
    use ::rekord as rk;

    #[rk::record(crate = "rk", tree = "renamed")]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Renamed {
        pub x: u32,
        #[record(default = 3)]
        pub y: u32,
    }
}

fn everything() -> Everything {
    Everything {
        a_u8: 1,
        a_u16: 2,
        a_u32: 3,
        a_u64: 4,
        a_u128: u128::MAX - 5,
        a_i8: -6,
        a_i16: -7,
        a_i32: -8,
        a_i64: -9,
        a_i128: i128::MIN + 10,
        a_f32: 1.5,
        a_f64: -2.25,
        a_bool: true,
        a_char: 'ß',
        a_string: "hello".into(),
        a_unit: (),
        a_option: Some(11),
        a_box: Box::new("boxed".into()),
        a_vec: vec![-1, 0, 1],
        a_array: [9, 8, 7, 6],
        a_tuple: (12, "t".into(), false),
        a_hash_map: HashMap::from([("a".into(), 1), ("b".into(), 2)]),
        a_btree_map: BTreeMap::from([(3, "c".into()), (1, "a".into())]),
        a_hash_set: HashSet::from([-1, 5]),
        a_btree_set: BTreeSet::from(['x', 'y']),
        a_uuid: uuid::Uuid::from_u128(0x1234_5678_9abc_def0),
        a_key: Key::new(42, 3),
        dims: Dims { w: 2.0, h: 3.5 },
        shape: Shape::Rect { w: 1.0, h: None },
        shapes: vec![
            None,
            Some(Box::new(Shape::Point)),
            Some(Box::new(Shape::Circle(0.5))),
            Some(Box::new(Shape::Pair(4, "four".into()))),
        ],
        node: Node {
            label: "root".into(),
            children: vec![
                Node {
                    label: "a".into(),
                    children: vec![Node {
                        label: "a1".into(),
                        children: vec![],
                    }],
                },
                Node {
                    label: "b".into(),
                    children: vec![],
                },
            ],
        },
        r#type: "raw".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Schema descriptions
// ---------------------------------------------------------------------------------------------

#[test]
fn every_supported_field_type_is_described() {
    let s = Schema::of::<Everything>();
    assert_eq!(s.tree, "everything");
    assert_eq!(s.version, 1);
    assert_eq!(s.root, named("Everything"));

    let expected = vec![
        field("a_u8", Type::U8, false),
        field("a_u16", Type::U16, false),
        field("a_u32", Type::U32, false),
        field("a_u64", Type::U64, false),
        field("a_u128", Type::U128, false),
        field("a_i8", Type::I8, false),
        field("a_i16", Type::I16, false),
        field("a_i32", Type::I32, false),
        field("a_i64", Type::I64, false),
        field("a_i128", Type::I128, false),
        field("a_f32", Type::F32, false),
        field("a_f64", Type::F64, false),
        field("a_bool", Type::Bool, false),
        field("a_char", Type::Char, false),
        field("a_string", Type::String, false),
        field("a_unit", Type::Unit, false),
        field("a_option", Type::Option(bx(Type::U32)), false),
        field("a_box", Type::Box(bx(Type::String)), false),
        field("a_vec", Type::Vec(bx(Type::I16)), false),
        field("a_array", Type::Array(bx(Type::U8), 4), false),
        field(
            "a_tuple",
            Type::Tuple(vec![Type::U8, Type::String, Type::Bool]),
            false,
        ),
        field(
            "a_hash_map",
            Type::Map {
                ordered: false,
                key: bx(Type::String),
                value: bx(Type::U32),
            },
            false,
        ),
        field(
            "a_btree_map",
            Type::Map {
                ordered: true,
                key: bx(Type::U64),
                value: bx(Type::String),
            },
            false,
        ),
        field(
            "a_hash_set",
            Type::Set {
                ordered: false,
                item: bx(Type::I64),
            },
            false,
        ),
        field(
            "a_btree_set",
            Type::Set {
                ordered: true,
                item: bx(Type::Char),
            },
            false,
        ),
        field("a_uuid", Type::Uuid, false),
        field(
            "a_key",
            Type::Key {
                tree: "suppliers".into(),
            },
            false,
        ),
        field("dims", named("Dims"), false),
        field("shape", named("Shape"), false),
        field(
            "shapes",
            Type::Vec(bx(Type::Option(bx(Type::Box(bx(named("Shape"))))))),
            false,
        ),
        field("node", named("Node"), false),
        // Raw identifiers are described without `r#`.
        field("type", Type::String, false),
    ];
    assert_eq!(s.types.get("Everything"), Some(&TypeDef::Struct(expected)));

    // Every reachable user type, and only those: a `Key<Supplier>` refers to the tree, it does
    // not pull `Supplier` into the schema.
    let names: Vec<&str> = s.types.keys().map(String::as_str).collect();
    assert_eq!(names, ["Dims", "Everything", "Node", "Shape"]);

    assert_eq!(
        s.types["Dims"],
        TypeDef::Struct(vec![
            field("w", Type::F32, false),
            field("h", Type::F32, false),
        ])
    );
    assert_eq!(
        s.types["Shape"],
        TypeDef::Enum(vec![
            Variant::unit("Point"),
            Variant::tuple("Circle", vec![Type::F64]),
            Variant::tuple("Pair", vec![Type::U8, Type::String]),
            Variant::named(
                "Rect",
                vec![
                    field("w", Type::F64, false),
                    field("h", Type::Option(bx(Type::F64)), false),
                ]
            ),
        ])
    );
}

#[test]
fn recursive_data_type_refers_to_itself_by_name() {
    let s = Schema::of::<Everything>();
    assert_eq!(
        s.types["Node"],
        TypeDef::Struct(vec![
            field("label", Type::String, false),
            field("children", Type::Vec(bx(named("Node"))), false),
        ])
    );
}

#[test]
fn default_tree_name_is_snake_case_and_default_version_is_1() {
    assert_eq!(PartName::TREE, "part_name");
    assert_eq!(PartName::VERSION, 1);
    let s = Schema::of::<PartName>();
    assert_eq!(s.tree, "part_name");
    assert_eq!(s.version, 1);
    assert_eq!(s.root, named("PartName"));
    assert_eq!(
        s.types["PartName"],
        TypeDef::Struct(vec![field("name", Type::String, false)])
    );

    assert_eq!(HTTPServerLog::TREE, "http_server_log");
    assert_eq!(Everything::TREE, "everything");
}

#[test]
fn explicit_tree_and_version() {
    assert_eq!(Supplier::TREE, "suppliers");
    assert_eq!(Supplier::VERSION, 3);
    let s = Schema::of::<Supplier>();
    assert_eq!((s.tree.as_str(), s.version), ("suppliers", 3));

    let s = Schema::of::<Happening>();
    assert_eq!((s.tree.as_str(), s.version), ("events.v1", 2));
    assert_eq!(s.root, named("Happening"));
    assert_eq!(
        s.types["Happening"],
        TypeDef::Enum(vec![
            Variant::unit("Started"),
            Variant::tuple("Moved", vec![named("Dims")]),
            Variant::named(
                "Renamed",
                vec![
                    field("from", Type::String, false),
                    field("to", Type::String, false),
                ]
            ),
        ])
    );
    assert!(s.types.contains_key("Dims"));
    assert_eq!(s.types.len(), 2);
}

#[test]
fn crate_option_uses_the_renamed_path() {
    use renamed::Renamed;
    assert_eq!(Renamed::TREE, "renamed");
    let s = Schema::of::<Renamed>();
    assert_eq!(
        s.types["Renamed"],
        TypeDef::Struct(vec![
            field("x", Type::U32, false),
            field("y", Type::U32, true),
        ])
    );
    let r: Renamed = ron::from_str("(x: 1)").unwrap();
    assert_eq!(r, Renamed { x: 1, y: 3 });
}

// ---------------------------------------------------------------------------------------------
// Field defaults
// ---------------------------------------------------------------------------------------------

#[test]
fn field_defaults_are_in_the_schema() {
    let s = Schema::of::<WithDefaults>();
    assert_eq!(s.tree, "with-defaults");
    assert_eq!(
        s.types["WithDefaults"],
        TypeDef::Struct(vec![
            field("name", Type::String, false),
            field("note", Type::Option(bx(Type::String)), true),
            field("qty", Type::U32, true),
            field("unit", Type::String, true),
            field("tags", Type::Vec(bx(Type::String)), true),
            field("inner", Type::Vec(bx(named("Inner"))), true),
            field("type", Type::U8, true),
        ])
    );
    assert_eq!(
        s.types["Inner"],
        TypeDef::Struct(vec![
            field("id", Type::U32, false),
            field("weight", Type::U32, true),
        ])
    );
}

#[test]
fn field_defaults_are_honoured_by_serde() {
    // Only the required field: every other field takes its default.
    let v: WithDefaults = ron::from_str(r#"(name: "bolt")"#).unwrap();
    assert_eq!(
        v,
        WithDefaults {
            name: "bolt".into(),
            note: None,
            qty: 5,
            unit: "pcs".into(),
            tags: vec![],
            inner: vec![Inner { id: 1, weight: 2 }],
            r#type: 9,
        }
    );

    // Present fields win over defaults; defaults apply in nested data types too.
    let v: WithDefaults = ron::from_str(
        r#"(name: "nut", note: Some("n"), qty: 1, unit: "kg", tags: ["t"], inner: [(id: 4)], type: 2)"#,
    )
    .unwrap();
    assert_eq!(
        v,
        WithDefaults {
            name: "nut".into(),
            note: Some("n".into()),
            qty: 1,
            unit: "kg".into(),
            tags: vec!["t".into()],
            inner: vec![Inner { id: 4, weight: 7 }],
            r#type: 2,
        }
    );

    // A field without `#[record(default)]` stays required.
    let err = ron::from_str::<WithDefaults>("(qty: 1)").unwrap_err();
    assert!(err.to_string().contains("name"), "{err}");
    let err = ron::from_str::<Inner>("(weight: 1)").unwrap_err();
    assert!(err.to_string().contains("id"), "{err}");
}

#[test]
fn serde_round_trip_of_data_and_enum_types() {
    // (`Everything` is not used here: the `ron` crate is built without its `integer128`
    // feature, so it cannot serialize the u128/i128 fields.)
    let v = everything();
    let text = ron::to_string(&(&v.node, &v.shapes, &v.dims)).unwrap();
    let back: (Node, Vec<Option<Box<Shape>>>, Dims) = ron::from_str(&text).unwrap();
    assert_eq!(back, (v.node.clone(), v.shapes.clone(), v.dims.clone()));

    let h = Happening::Renamed {
        from: "a".into(),
        to: "b".into(),
    };
    let text = ron::to_string(&h).unwrap();
    assert_eq!(text, r#"Renamed(from:"a",to:"b")"#);
    assert_eq!(ron::from_str::<Happening>(&text).unwrap(), h);

    // Raw identifiers are (de)serialized without `r#`, like serde does.
    let text = ron::to_string(&WithDefaults {
        name: "n".into(),
        note: None,
        qty: 0,
        unit: String::new(),
        tags: vec![],
        inner: vec![],
        r#type: 4,
    })
    .unwrap();
    assert!(text.contains("type:4"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Schema text and the database
// ---------------------------------------------------------------------------------------------

#[test]
fn schema_ron_round_trip() {
    for s in [
        Schema::of::<Everything>(),
        Schema::of::<WithDefaults>(),
        Schema::of::<Happening>(),
        Schema::of::<Supplier>(),
    ] {
        let text = s.to_ron().unwrap();
        let back = Schema::from_ron(&text).unwrap();
        assert_eq!(back, s, "{text}");
    }
    let text = Schema::of::<Supplier>().to_ron().unwrap();
    assert!(text.contains("\"suppliers\""), "{text}");
    assert!(Schema::from_ron("(tree: \"x\")").is_err());
}

/// A stored schema that names one variant (or field) twice is refused: a value would decode
/// as one and encode as the other (found by the `dynamic` fuzz target).
#[test]
fn schemas_with_a_name_given_twice_are_refused() {
    let text = Schema::of::<Happening>().to_ron().unwrap();
    let twice = |from: &str, to: &str| {
        assert!(text.contains(from), "{text}");
        Schema::from_ron(&text.replacen(from, to, 1))
    };
    for (from, to) in [
        ("name: \"Moved\"", "name: \"Started\""),
        ("name: \"to\"", "name: \"from\""),
    ] {
        let err = twice(from, to).unwrap_err().to_string();
        assert!(err.contains("two"), "{err}");
    }
}

#[test]
fn records_round_trip_through_the_database() -> rekord::Result<()> {
    let db = Db::memory()?;

    let suppliers = db.tree::<Supplier>()?;
    let sk = suppliers.create(&Supplier {
        name: "acme".into(),
    })?;

    let all = db.tree::<Everything>()?;
    let mut v = everything();
    v.a_key = sk;
    let k = all.create(&v)?;
    assert_eq!(all.get(k)?, v);
    assert_eq!(suppliers.get(all.get(k)?.a_key)?.name, "acme");
    assert_eq!(
        all.with(k, |a| (a.node.children.len(), a.r#type.as_str().to_owned()))?,
        (2, "raw".to_owned())
    );

    let happenings = db.tree::<Happening>()?;
    let values = [
        Happening::Started,
        Happening::Moved(Dims { w: 1.0, h: 2.0 }),
        Happening::Renamed {
            from: "a".into(),
            to: "b".into(),
        },
    ];
    for h in &values {
        let k = happenings.create(h)?;
        assert_eq!(&happenings.get(k)?, h);
    }
    assert_eq!(happenings.len()?, 3);

    let defaults = db.tree::<WithDefaults>()?;
    let w: WithDefaults = ron::from_str(r#"(name: "x")"#).unwrap();
    let k = defaults.create(&w)?;
    assert_eq!(defaults.get(k)?, w);

    // The stored schema is the one `Schema::of` describes.
    assert_eq!(db.schemas("everything")?, vec![Schema::of::<Everything>()]);
    assert_eq!(db.schemas("events.v1")?, vec![Schema::of::<Happening>()]);
    Ok(())
}

mod first {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Dims {
        pub w: f32,
    }
}

mod second {
    #[rekord::data]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Dims {
        pub name: String,
    }
}

#[rekord::record(tree = "clash")]
#[derive(Debug, Clone, PartialEq)]
pub struct Clash {
    pub a: first::Dims,
    pub b: second::Dims,
    pub c: first::Dims,
}

#[test]
fn same_named_types_from_different_modules_get_distinct_schema_names() {
    let s = Schema::of::<Clash>();
    let TypeDef::Struct(fields) = &s.types["Clash"] else {
        panic!("struct expected")
    };
    let tys: Vec<&Type> = fields.iter().map(|f| &f.ty).collect();
    assert_eq!(tys, vec![&named("Dims"), &named("Dims#2"), &named("Dims")]);
    assert_eq!(
        s.types["Dims"],
        TypeDef::Struct(vec![field("w", Type::F32, false)])
    );
    assert_eq!(
        s.types["Dims#2"],
        TypeDef::Struct(vec![field("name", Type::String, false)])
    );
}
