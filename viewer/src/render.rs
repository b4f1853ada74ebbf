//! Text for people and scripts: schemas as Rust-like declarations, records on one line, and
//! values as JSON.

use rekord::schema::dynamic::{Fields, Value, to_ron};
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
    let text = to_ron(value);
    let mut out = String::with_capacity(text.len().min(width.saturating_add(8)));
    let mut in_string = false;
    let mut escaped = false;
    let mut space = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space {
            // Pretty RON puts a comma before each line break: `(\n  a: 1,\n)` -> `(a: 1)`.
            if matches!(c, ')' | ']' | '}') {
                if out.ends_with(',') {
                    out.pop();
                }
            } else if !out.ends_with(['(', '[', '{']) {
                out.push(' ');
            }
            space = false;
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    if out.chars().count() > width {
        let cut: String = out.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        out
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
