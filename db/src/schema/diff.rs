//! Human-readable differences between two schemas, for error messages.

use super::{Field, Schema, Type, TypeDef, VariantKind};

/// Lists what changed from `old` to `new`, one short sentence each (at most 8). Renamed
/// types are not changes (see [`Schema::same_shape`]): `new`'s types are compared with
/// `old`'s types at the same places, whatever their names.
pub fn describe_changes(old: &Schema, new: &Schema) -> Vec<String> {
    if old.same_shape(new) {
        return Vec::new();
    }
    let new = &super::shape::aligned(old, new);
    let mut out = Vec::new();
    if old.root != new.root {
        out.push(format!(
            "the record type changed from {} to {}",
            show(&old.root),
            show(&new.root)
        ));
    }
    for (name, def) in &new.types {
        match old.types.get(name) {
            None => out.push(format!("type `{name}` was added")),
            Some(o) if o != def => diff_def(name, o, def, &mut out),
            Some(_) => {}
        }
    }
    for name in old.types.keys() {
        if !new.types.contains_key(name) {
            out.push(format!("type `{name}` was removed"));
        }
    }
    if out.is_empty() {
        out.push("the schema changed".into());
    }
    out.truncate(8);
    out
}

fn diff_def(name: &str, old: &TypeDef, new: &TypeDef, out: &mut Vec<String>) {
    match (old, new) {
        (TypeDef::Struct(o), TypeDef::Struct(n)) => diff_fields(name, o, n, out),
        (TypeDef::Enum(o), TypeDef::Enum(n)) => {
            for v in n {
                match o.iter().find(|x| x.name == v.name) {
                    None => out.push(format!("variant `{name}::{}` was added", v.name)),
                    Some(ov) if ov.kind != v.kind => match (&ov.kind, &v.kind) {
                        (VariantKind::Named(of), VariantKind::Named(nf)) => {
                            diff_fields(&format!("{name}::{}", v.name), of, nf, out);
                        }
                        _ => out.push(format!(
                            "the fields of variant `{name}::{}` changed",
                            v.name
                        )),
                    },
                    Some(_) => {}
                }
            }
            for v in o {
                if !n.iter().any(|x| x.name == v.name) {
                    out.push(format!("variant `{name}::{}` was removed", v.name));
                }
            }
            let on: Vec<_> = o.iter().map(|v| &v.name).collect();
            let nn: Vec<_> = n
                .iter()
                .filter(|v| on.contains(&&v.name))
                .map(|v| &v.name)
                .collect();
            let on2: Vec<_> = on.into_iter().filter(|x| nn.contains(x)).collect();
            if on2 != nn {
                out.push(format!("the variants of `{name}` were reordered"));
            }
        }
        (TypeDef::Struct(_), TypeDef::Enum(_)) => {
            out.push(format!("`{name}` changed from a struct to an enum"))
        }
        (TypeDef::Enum(_), TypeDef::Struct(_)) => {
            out.push(format!("`{name}` changed from an enum to a struct"))
        }
    }
}

fn diff_fields(name: &str, old: &[Field], new: &[Field], out: &mut Vec<String>) {
    for f in new {
        match old.iter().find(|x| x.name == f.name) {
            None => out.push(format!("field `{name}.{}` was added", f.name)),
            Some(o) if o.ty != f.ty => out.push(format!(
                "field `{name}.{}` changed type from {} to {}",
                f.name,
                show(&o.ty),
                show(&f.ty)
            )),
            Some(o) if o.default != f.default => out.push(format!(
                "field `{name}.{}` {} `#[record(default)]`",
                f.name,
                if f.default { "gained" } else { "lost" }
            )),
            Some(_) => {}
        }
    }
    for f in old {
        if !new.iter().any(|x| x.name == f.name) {
            out.push(format!("field `{name}.{}` was removed", f.name));
        }
    }
    let common_old: Vec<_> = old
        .iter()
        .filter(|f| new.iter().any(|x| x.name == f.name))
        .map(|f| &f.name)
        .collect();
    let common_new: Vec<_> = new
        .iter()
        .filter(|f| old.iter().any(|x| x.name == f.name))
        .map(|f| &f.name)
        .collect();
    if common_old != common_new {
        out.push(format!("the fields of `{name}` were reordered"));
    }
}

/// Rust-like rendering of a type.
pub(crate) fn show(t: &Type) -> String {
    match t {
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
        Type::Option(t) => format!("Option<{}>", show(t)),
        Type::Box(t) => format!("Box<{}>", show(t)),
        Type::Vec(t) => format!("Vec<{}>", show(t)),
        Type::Array(t, n) => format!("[{}; {n}]", show(t)),
        Type::Tuple(ts) => format!("({})", ts.iter().map(show).collect::<Vec<_>>().join(", ")),
        Type::Map {
            ordered,
            key,
            value,
        } => format!(
            "{}<{}, {}>",
            if *ordered { "BTreeMap" } else { "HashMap" },
            show(key),
            show(value)
        ),
        Type::Set { ordered, item } => {
            format!(
                "{}<{}>",
                if *ordered { "BTreeSet" } else { "HashSet" },
                show(item)
            )
        }
        Type::Key { tree } => format!("Key<{tree}>"),
        Type::Named(n) => n.clone(),
    }
}
