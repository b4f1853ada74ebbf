//! Text for people and scripts: schemas as Rust-like declarations, records on one line, and
//! values as JSON.

use rekord::schema::dynamic::{Fields, Value};
use rekord::schema::{Field, Schema, Type, TypeDef, VariantKind};
use std::fmt::Write as _;

/// A type as Rust would write it.
pub fn type_name(ty: &Type) -> String {
    match ty {
        Type::Unit => "()".into(),
        Type::Bool => "bool".into(),
        Type::U8 => "u8".into(),
        Type::U16 => "u16".into(),
        Type::U32 => "u32".into(),
        Type::U64 => "u64".into(),
        Type::U128 => "u128".into(),
        Type::I8 => "i8".into(),
        Type::I16 => "i16".into(),
        Type::I32 => "i32".into(),
        Type::I64 => "i64".into(),
        Type::I128 => "i128".into(),
        Type::F32 => "f32".into(),
        Type::F64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "String".into(),
        Type::Uuid => "Uuid".into(),
        Type::Option(t) => format!("Option<{}>", type_name(t)),
        Type::Box(t) => format!("Box<{}>", type_name(t)),
        Type::Vec(t) => format!("Vec<{}>", type_name(t)),
        Type::Array(t, n) => format!("[{}; {n}]", type_name(t)),
        Type::Tuple(ts) => {
            let items: Vec<String> = ts.iter().map(type_name).collect();
            if items.len() == 1 {
                format!("({},)", items[0])
            } else {
                format!("({})", items.join(", "))
            }
        }
        Type::Map {
            ordered,
            key,
            value,
        } => format!(
            "{}<{}, {}>",
            if *ordered { "BTreeMap" } else { "HashMap" },
            type_name(key),
            type_name(value)
        ),
        Type::Set { ordered, item } => format!(
            "{}<{}>",
            if *ordered { "BTreeSet" } else { "HashSet" },
            type_name(item)
        ),
        Type::Key { tree } => format!("Key<{tree}>"),
        Type::Named(n) => n.clone(),
        _ => "/* unknown */".into(),
    }
}

fn fields(out: &mut String, fields: &[Field], indent: &str) {
    for f in fields {
        let default = if f.default { "#[record(default)] " } else { "" };
        let _ = writeln!(out, "{indent}{default}{}: {},", f.name, type_name(&f.ty));
    }
}

/// A schema as Rust-like declarations: the record type first, then every type it uses.
pub fn schema_text(schema: &Schema) -> String {
    let mut out = format!("// tree `{}`, version {}\n", schema.tree, schema.version);
    let root = match &schema.root {
        Type::Named(n) => Some(n.as_str()),
        _ => None,
    };
    let order = root.into_iter().chain(
        schema
            .types
            .keys()
            .map(String::as_str)
            .filter(|n| Some(*n) != root),
    );
    for name in order {
        let Some(def) = schema.types.get(name) else {
            continue;
        };
        match def {
            TypeDef::Struct(fs) => {
                let _ = writeln!(out, "struct {name} {{");
                fields(&mut out, fs, "    ");
                out.push_str("}\n");
            }
            TypeDef::Enum(vs) => {
                let _ = writeln!(out, "enum {name} {{");
                for v in vs {
                    match &v.kind {
                        VariantKind::Unit => {
                            let _ = writeln!(out, "    {},", v.name);
                        }
                        VariantKind::Tuple(ts) => {
                            let items: Vec<String> = ts.iter().map(type_name).collect();
                            let _ = writeln!(out, "    {}({}),", v.name, items.join(", "));
                        }
                        VariantKind::Named(fs) => {
                            let _ = writeln!(out, "    {} {{", v.name);
                            fields(&mut out, fs, "        ");
                            out.push_str("    },\n");
                        }
                    }
                }
                out.push_str("}\n");
            }
            _ => {}
        }
    }
    out
}

/// A value as RON on one line, cut to `width` characters (with `…`).
pub fn one_line(value: &Value, width: usize) -> String {
    let out = rekord::schema::dynamic::to_ron_line(value);
    if out.chars().count() > width {
        let cut: String = out.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        out
    }
}

/// Puts the entries of hash maps and hash sets (whose stored order depends on how they
/// were inserted) in the order of their keys' RON text, so the same data always reads the
/// same: what exports compare by.
pub fn canonical(schema: &Schema, ty: &Type, value: &mut Value) {
    canonical_at(schema, ty, value, 0);
}

fn canonical_at(schema: &Schema, ty: &Type, value: &mut Value, depth: usize) {
    if depth > rekord::schema::dynamic::MAX_DEPTH {
        return;
    }
    let d = depth + 1;
    match (ty, value) {
        (Type::Option(t), Value::Option(Some(v))) | (Type::Box(t), Value::Box(v)) => {
            canonical_at(schema, t, v, d);
        }
        (Type::Box(t), v) => canonical_at(schema, t, v, d),
        (Type::Vec(t) | Type::Array(t, _), Value::Seq(xs)) => {
            xs.iter_mut().for_each(|x| canonical_at(schema, t, x, d));
        }
        (Type::Set { ordered, item }, Value::Seq(xs)) => {
            xs.iter_mut().for_each(|x| canonical_at(schema, item, x, d));
            if !ordered {
                xs.sort_by_cached_key(rekord::schema::dynamic::to_ron_line);
            }
        }
        (Type::Tuple(ts), Value::Tuple(xs)) => {
            for (t, x) in ts.iter().zip(xs.iter_mut()) {
                canonical_at(schema, t, x, d);
            }
        }
        (
            Type::Map {
                ordered,
                key,
                value: vt,
            },
            Value::Map(es),
        ) => {
            for (k, v) in es.iter_mut() {
                canonical_at(schema, key, k, d);
                canonical_at(schema, vt, v, d);
            }
            if !ordered {
                es.sort_by_cached_key(|(k, _)| rekord::schema::dynamic::to_ron_line(k));
            }
        }
        (Type::Named(name), v) => match (schema.types.get(name), v) {
            (Some(TypeDef::Struct(fs)), Value::Struct(vs)) => fields_at(schema, fs, vs, d),
            (Some(TypeDef::Enum(variants)), Value::Enum { variant, fields }) => {
                let Some(def) = variants.iter().find(|x| &x.name == variant) else {
                    return;
                };
                match (&def.kind, fields) {
                    (VariantKind::Tuple(ts), Fields::Tuple(xs)) => {
                        for (t, x) in ts.iter().zip(xs.iter_mut()) {
                            canonical_at(schema, t, x, d);
                        }
                    }
                    (VariantKind::Named(fs), Fields::Named(vs)) => fields_at(schema, fs, vs, d),
                    _ => {}
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn fields_at(schema: &Schema, fields: &[Field], values: &mut [(String, Value)], depth: usize) {
    for (name, v) in values.iter_mut() {
        if let Some(f) = fields.iter().find(|f| &f.name == name) {
            canonical_at(schema, &f.ty, v, depth);
        }
    }
}

/// A value in a table cell: strings as their text, anything else as one-line RON.
pub fn cell(value: &Value, width: usize) -> String {
    match value {
        Value::String(s) if s.chars().count() <= width => s.clone(),
        _ => one_line(value, width),
    }
}

/// The value of top-level field `name` of a struct value.
pub fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    match value {
        Value::Struct(fs) => fs.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

/// A value as JSON: structs as objects, unit variants as strings, other variants as
/// `{"Variant": ...}`, maps as lists of `[key, value]` pairs (keys need not be strings),
/// 128-bit integers beyond 64 bits and non-finite floats as strings.
pub fn json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    let float = |x: f64| {
        serde_json::Number::from_f64(x).map_or_else(|| J::String(format!("{x}")), J::Number)
    };
    match value {
        Value::Unit => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::U8(x) => J::from(*x),
        Value::U16(x) => J::from(*x),
        Value::U32(x) => J::from(*x),
        Value::U64(x) => J::from(*x),
        Value::U128(x) => u64::try_from(*x).map_or_else(|_| J::String(x.to_string()), J::from),
        Value::I8(x) => J::from(*x),
        Value::I16(x) => J::from(*x),
        Value::I32(x) => J::from(*x),
        Value::I64(x) => J::from(*x),
        Value::I128(x) => i64::try_from(*x).map_or_else(|_| J::String(x.to_string()), J::from),
        Value::F32(x) => float(f64::from(*x)),
        Value::F64(x) => float(*x),
        Value::Char(c) => J::String(c.to_string()),
        Value::String(s) => J::String(s.clone()),
        Value::Uuid(u) => J::String(u.hyphenated().to_string()),
        Value::Option(None) => J::Null,
        Value::Option(Some(v)) | Value::Box(v) => json(v),
        Value::Seq(xs) | Value::Tuple(xs) => J::Array(xs.iter().map(json).collect()),
        Value::Map(es) => J::Array(
            es.iter()
                .map(|(k, v)| J::Array(vec![json(k), json(v)]))
                .collect(),
        ),
        Value::Key { id, rev } => serde_json::json!({ "id": id, "rev": rev }),
        Value::Struct(fs) => J::Object(fs.iter().map(|(n, v)| (n.clone(), json(v))).collect()),
        Value::Enum { variant, fields } => match fields {
            Fields::Unit => J::String(variant.clone()),
            Fields::Tuple(xs) if xs.len() == 1 => {
                serde_json::json!({ variant.clone(): json(&xs[0]) })
            }
            Fields::Tuple(xs) => {
                serde_json::json!({ variant.clone(): J::Array(xs.iter().map(json).collect()) })
            }
            Fields::Named(fs) => serde_json::json!({
                variant.clone(): J::Object(fs.iter().map(|(n, v)| (n.clone(), json(v))).collect())
            }),
        },
    }
}
