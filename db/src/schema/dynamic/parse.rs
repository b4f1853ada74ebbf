//! RON text -> [`Value`], guided by a [`Schema`]: what [`super::to_ron`] writes reads back
//! to the same value, and anything else is an error naming the line, the column and the
//! path of the offending value.
//!
//! The text is read by the `ron` crate's deserializer, driven by the schema (each type asks
//! for what it expects: `deserialize_struct` with the field names, `deserialize_enum` with
//! the variant names, `deserialize_u16` for a `u16`, ...), so RON's syntax and error
//! positions are RON's own.

use super::{Fields, MAX_DEPTH, Value};
use crate::schema::{Field, Schema, Type, TypeDef, VariantKind};
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess};
use serde::de::{VariantAccess, Visitor};
use std::cell::RefCell;
use std::fmt;

/// Why RON text could not be read as a record: where (1-based line and column, and the
/// path of the value as in [`super::DynError`]), and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}{}: {message}", at(path))]
pub struct RonError {
    /// The line of the error (1-based).
    pub line: usize,
    /// The column of the error (1-based).
    pub column: usize,
    /// The path of the value being read (empty: the record itself).
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(", at `{path}`")
    }
}

/// Reads `text` as a value of `schema`'s record type.
pub(crate) fn from_ron(schema: &Schema, text: &str) -> Result<Value, RonError> {
    let path = RefCell::new(String::new());
    let seed = Seed {
        schema,
        ty: &schema.root,
        path: String::new(),
        last: &path,
        depth: 0,
        split: true,
    };
    ron::Options::default()
        .with_recursion_limit(MAX_DEPTH * 2)
        .from_str_seed(text, seed)
        .map_err(|e| {
            let message = e.code.to_string();
            // A message of ours carries its own path (see `Seed::error`).
            let (path, message) = match message.split_once('\u{1}') {
                Some((p, m)) => (p.to_owned(), m.to_owned()),
                None => (path.borrow().clone(), message),
            };
            RonError {
                line: e.span.start.line,
                column: e.span.start.col,
                path,
                message,
            }
        })
}

/// The default of a type, for a missing field marked `#[record(default)]` (what
/// `Default::default()` gives for the std types; `None` for a user enum, which has no
/// default the schema knows of).
pub(crate) fn default_value(schema: &Schema, ty: &Type, depth: usize) -> Option<Value> {
    let mut budget = DEFAULT_BUDGET;
    default_within(schema, ty, depth, &mut budget)
}

/// The most values a default may be made of (a schema is untrusted input: `[u8; 4294967295]`
/// must not allocate gigabytes).
const DEFAULT_BUDGET: usize = 1 << 16;

fn default_within(schema: &Schema, ty: &Type, depth: usize, budget: &mut usize) -> Option<Value> {
    if depth > MAX_DEPTH || *budget == 0 {
        return None;
    }
    *budget -= 1;
    Some(match ty {
        Type::Unit => Value::Unit,
        Type::Bool => Value::Bool(false),
        Type::U8 => Value::U8(0),
        Type::U16 => Value::U16(0),
        Type::U32 => Value::U32(0),
        Type::U64 => Value::U64(0),
        Type::U128 => Value::U128(0),
        Type::I8 => Value::I8(0),
        Type::I16 => Value::I16(0),
        Type::I32 => Value::I32(0),
        Type::I64 => Value::I64(0),
        Type::I128 => Value::I128(0),
        Type::F32 => Value::F32(0.0),
        Type::F64 => Value::F64(0.0),
        Type::Char => Value::Char('\0'),
        Type::String => Value::String(String::new()),
        Type::Uuid => Value::Uuid(uuid::Uuid::nil()),
        Type::Option(_) => Value::Option(None),
        Type::Box(t) => Value::Box(Box::new(default_within(schema, t, depth + 1, budget)?)),
        Type::Vec(_) | Type::Set { .. } => Value::Seq(Vec::new()),
        Type::Array(t, n) => {
            let n = *n as usize;
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(default_within(schema, t, depth + 1, budget)?);
            }
            Value::Seq(items)
        }
        Type::Tuple(ts) => Value::Tuple(
            ts.iter()
                .map(|t| default_within(schema, t, depth + 1, budget))
                .collect::<Option<_>>()?,
        ),
        Type::Map { .. } => Value::Map(Vec::new()),
        Type::Key { .. } => return None,
        Type::Named(name) => match schema.types.get(name)? {
            TypeDef::Struct(fields) => Value::Struct(
                fields
                    .iter()
                    .map(|f| {
                        Some((
                            f.name.clone(),
                            default_within(schema, &f.ty, depth + 1, budget)?,
                        ))
                    })
                    .collect::<Option<_>>()?,
            ),
            TypeDef::Enum(_) => return None,
        },
    })
}

/// Reads one value of type `ty`.
struct Seed<'s> {
    schema: &'s Schema,
    ty: &'s Type,
    path: String,
    /// The path of the value read last (errors of RON itself name it).
    last: &'s RefCell<String>,
    depth: usize,
    /// Errors of ours carry their path split off by a marker ([`from_ron`] separates it);
    /// else it is in their text.
    split: bool,
}

impl<'s> Seed<'s> {
    fn child(&self, ty: &'s Type, step: impl fmt::Display, sep: &str) -> Seed<'s> {
        let path = if self.path.is_empty() && sep == "." {
            step.to_string()
        } else {
            format!("{}{sep}{step}", self.path)
        };
        Seed {
            schema: self.schema,
            ty,
            path,
            last: self.last,
            depth: self.depth + 1,
            split: self.split,
        }
    }

    /// An error of ours, with its path (split off again in [`from_ron`]).
    fn error<E: de::Error>(&self, message: impl fmt::Display) -> E {
        if self.split {
            E::custom(format!("{}\u{1}{message}", self.path))
        } else if self.path.is_empty() {
            E::custom(message)
        } else {
            E::custom(format!("at `{}`: {message}", self.path))
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.last.borrow_mut().clone_from(&self.path);
        let schema = self.schema;
        match self.ty {
            Type::Unit => d.deserialize_unit(Scalar(self)),
            Type::Bool => d.deserialize_bool(Scalar(self)),
            // Any number: the visitor checks the range and says so.
            Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::U128
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::I128 => d.deserialize_any(Scalar(self)),
            // Read wide: an f32 literal out of its range must be refused, not become inf.
            Type::F32 => d.deserialize_f64(Scalar(self)),
            Type::F64 => d.deserialize_f64(Scalar(self)),
            Type::Char => d.deserialize_char(Scalar(self)),
            Type::String | Type::Uuid => d.deserialize_string(Scalar(self)),
            Type::Option(_) => d.deserialize_option(Scalar(self)),
            Type::Box(inner) => {
                let seed = Seed { ty: inner, ..self };
                Ok(Value::Box(Box::new(seed.deserialize(d)?)))
            }
            Type::Vec(_) | Type::Array(..) | Type::Set { .. } => d.deserialize_seq(Scalar(self)),
            Type::Tuple(ts) => d.deserialize_tuple(ts.len(), Scalar(self)),
            Type::Map { .. } => d.deserialize_map(Scalar(self)),
            // (`deserialize_any`: RON reads `(a: 1)` and `Name(a: 1)` alike as a struct.)
            Type::Key { .. } => d.deserialize_any(Scalar(self)),
            Type::Named(name) => match schema.types.get(name) {
                Some(TypeDef::Struct(_)) => d.deserialize_any(Scalar(self)),
                Some(TypeDef::Enum(_)) => d.deserialize_enum("", &[], Scalar(self)),
                _ => Err(self.error(format!("the schema does not define type `{name}`"))),
            },
        }
    }
}

/// The visitor of a [`Seed`]: what it accepts depends on the seed's type.
struct Scalar<'s>(Seed<'s>);

macro_rules! int {
    ($self:ident, $v:ident, $wide:ty) => {{
        let s = &$self.0;
        let out = match s.ty {
            Type::U8 => u8::try_from($v).ok().map(Value::U8),
            Type::U16 => u16::try_from($v).ok().map(Value::U16),
            Type::U32 => u32::try_from($v).ok().map(Value::U32),
            Type::U64 => u64::try_from($v).ok().map(Value::U64),
            Type::U128 => u128::try_from($v).ok().map(Value::U128),
            Type::I8 => i8::try_from($v).ok().map(Value::I8),
            Type::I16 => i16::try_from($v).ok().map(Value::I16),
            Type::I32 => i32::try_from($v).ok().map(Value::I32),
            Type::I64 => i64::try_from($v).ok().map(Value::I64),
            Type::I128 => i128::try_from($v).ok().map(Value::I128),
            // Integers are exact floats up to 2^53; RON writes `1` for `1.0` only when asked.
            Type::F32 => Some(Value::F32($v as f32)),
            Type::F64 => Some(Value::F64($v as f64)),
            _ => {
                return Err(s.error(format!(
                    "expected {}, found the integer {}",
                    expected(s.ty),
                    $v
                )));
            }
        };
        out.ok_or_else(|| s.error(format!("{} does not fit in {}", $v, expected(s.ty))))
    }};
}

fn expected(ty: &Type) -> String {
    match ty {
        Type::Unit => "()".into(),
        Type::Bool => "a bool".into(),
        Type::U8 => "a u8 (0 to 255)".into(),
        Type::U16 => "a u16 (0 to 65535)".into(),
        Type::U32 => "a u32".into(),
        Type::U64 => "a u64".into(),
        Type::U128 => "a u128".into(),
        Type::I8 => "an i8 (-128 to 127)".into(),
        Type::I16 => "an i16".into(),
        Type::I32 => "an i32".into(),
        Type::I64 => "an i64".into(),
        Type::I128 => "an i128".into(),
        Type::F32 => "an f32".into(),
        Type::F64 => "an f64".into(),
        Type::Char => "a char".into(),
        Type::String => "a string".into(),
        Type::Uuid => "a uuid string".into(),
        Type::Option(_) => "Some(..) or None".into(),
        Type::Box(t) => expected(t),
        Type::Vec(_) => "a list [..]".into(),
        Type::Array(_, n) => format!("a list of {n} items"),
        Type::Set { .. } => "a set [..]".into(),
        Type::Tuple(ts) => format!("a tuple of {}", ts.len()),
        Type::Map { .. } => "a map {..}".into(),
        Type::Key { tree } => format!("a key (id: .., rev: ..) into `{tree}`"),
        Type::Named(n) => format!("a `{n}`"),
    }
}

impl<'de> Visitor<'de> for Scalar<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&expected(self.0.ty))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        match self.0.ty {
            Type::Unit => Ok(Value::Unit),
            t => Err(self.0.error(format!("expected {}, found ()", expected(t)))),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        match self.0.ty {
            Type::Bool => Ok(Value::Bool(v)),
            t => Err(self.0.error(format!("expected {}, found {v}", expected(t)))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        int!(self, v, i64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        int!(self, v, u64)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        int!(self, v, i128)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        int!(self, v, u128)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        match self.0.ty {
            // (Narrowing to f32 is what writing the literal in Rust does; a finite number
            // past f32's range is refused rather than made infinite.)
            Type::F32 if v.is_finite() && (v as f32).is_infinite() => Err(self
                .0
                .error(format!("{v} does not fit in {}", expected(&Type::F32)))),
            Type::F32 => Ok(Value::F32(v as f32)),
            Type::F64 => Ok(Value::F64(v)),
            t => Err(self
                .0
                .error(format!("expected {}, found the number {v}", expected(t)))),
        }
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<Value, E> {
        match self.0.ty {
            Type::Char => Ok(Value::Char(v)),
            Type::String => Ok(Value::String(v.to_string())),
            t => Err(self
                .0
                .error(format!("expected {}, found {v:?}", expected(t)))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        match self.0.ty {
            Type::String => Ok(Value::String(v.to_owned())),
            Type::Uuid => uuid::Uuid::parse_str(v)
                .map(Value::Uuid)
                .map_err(|e| self.0.error(format!("{v:?} is not a uuid: {e}"))),
            Type::Char => {
                let mut cs = v.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) => Ok(Value::Char(c)),
                    _ => Err(self.0.error(format!("expected a char, found {v:?}"))),
                }
            }
            t => Err(self
                .0
                .error(format!("expected {}, found {v:?}", expected(t)))),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        match self.0.ty {
            Type::Option(_) => Ok(Value::Option(None)),
            t => Err(self
                .0
                .error(format!("expected {}, found None", expected(t)))),
        }
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0.ty {
            Type::Option(inner) => {
                let seed = self.0.child(inner, "Some", ".");
                Ok(Value::Option(Some(Box::new(seed.deserialize(d)?))))
            }
            t => Err(self
                .0
                .error(format!("expected {}, found Some(..)", expected(t)))),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let s = &self.0;
        match s.ty {
            Type::Vec(item) | Type::Set { item, .. } | Type::Array(item, _) => {
                let mut out = Vec::new();
                while let Some(v) =
                    seq.next_element_seed(s.child(item, format!("[{}]", out.len()), ""))?
                {
                    out.push(v);
                }
                if let Type::Array(_, n) = s.ty
                    && out.len() != *n as usize
                {
                    return Err(s.error(format!("expected {n} items, found {}", out.len())));
                }
                Ok(Value::Seq(out))
            }
            Type::Tuple(ts) => {
                let mut out = Vec::with_capacity(ts.len());
                for (i, t) in ts.iter().enumerate() {
                    match seq.next_element_seed(s.child(t, i, "."))? {
                        Some(v) => out.push(v),
                        None => {
                            return Err(s.error(format!(
                                "expected a tuple of {}, found {i} items",
                                ts.len()
                            )));
                        }
                    }
                }
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(s.error(format!("expected a tuple of {}, found more", ts.len())));
                }
                Ok(Value::Tuple(out))
            }
            t => Err(s.error(format!("expected {}, found a list", expected(t)))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let s = &self.0;
        match s.ty {
            Type::Map { key, value, .. } => {
                let mut out = Vec::new();
                loop {
                    let i = out.len();
                    let Some(k) = map.next_key_seed(s.child(key, format!("{{{i}}}.key"), ""))?
                    else {
                        break;
                    };
                    let v = map.next_value_seed(s.child(value, format!("{{{i}}}.value"), ""))?;
                    out.push((k, v));
                }
                Ok(Value::Map(out))
            }
            Type::Key { .. } => {
                let (mut id, mut rev) = (None, None);
                while let Some(name) = map.next_key_seed(FieldName)? {
                    match name.as_str() {
                        "id" => id = Some(map.next_value::<u64>()?),
                        "rev" => rev = Some(map.next_value::<u32>()?),
                        other => {
                            return Err(s.error(format!("a key has `id` and `rev`, not `{other}`")));
                        }
                    }
                }
                match (id, rev) {
                    (Some(id), Some(rev)) => Ok(Value::Key { id, rev }),
                    _ => Err(s.error("a key needs both `id` and `rev`")),
                }
            }
            Type::Named(name) => match s.schema.types.get(name) {
                Some(TypeDef::Struct(fields)) => {
                    Ok(Value::Struct(read_fields(s, name, fields, &mut map)?))
                }
                _ => Err(s.error(format!("expected {}, found a struct", expected(s.ty)))),
            },
            t => Err(s.error(format!("expected {}, found a map or struct", expected(t)))),
        }
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let s = &self.0;
        let Type::Named(name) = s.ty else {
            return Err(s.error(format!(
                "expected {}, found an enum variant",
                expected(s.ty)
            )));
        };
        let Some(TypeDef::Enum(variants)) = s.schema.types.get(name) else {
            return Err(s.error(format!(
                "expected {}, found an enum variant",
                expected(s.ty)
            )));
        };
        let (variant, access) = data.variant_seed(FieldName)?;
        let Some(v) = variants.iter().find(|v| v.name == variant) else {
            let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
            return Err(s.error(format!(
                "`{name}` has no variant `{variant}` (it has {})",
                names.join(", ")
            )));
        };
        let fields = match &v.kind {
            VariantKind::Unit => {
                access.unit_variant()?;
                Fields::Unit
            }
            VariantKind::Tuple(ts) => {
                let seed = Seed {
                    schema: s.schema,
                    ty: s.ty,
                    path: format!(
                        "{}{}{variant}",
                        s.path,
                        if s.path.is_empty() { "" } else { "." }
                    ),
                    last: s.last,
                    depth: s.depth + 1,
                    split: s.split,
                };
                access.tuple_variant(ts.len(), VariantTuple { seed, types: ts })?
            }
            VariantKind::Named(fs) => {
                let seed = Seed {
                    schema: s.schema,
                    ty: s.ty,
                    path: format!(
                        "{}{}{variant}",
                        s.path,
                        if s.path.is_empty() { "" } else { "." }
                    ),
                    last: s.last,
                    depth: s.depth + 1,
                    split: s.split,
                };
                access.struct_variant(
                    &[],
                    VariantNamed {
                        seed,
                        name: &v.name,
                        fields: fs,
                    },
                )?
            }
        };
        Ok(Value::Enum {
            variant: v.name.clone(),
            fields,
        })
    }
}

/// Reads the fields of a struct (or struct variant) in any order, in schema order.
fn read_fields<'de, A: MapAccess<'de>>(
    s: &Seed<'_>,
    name: &str,
    fields: &[Field],
    map: &mut A,
) -> Result<Vec<(String, Value)>, A::Error> {
    let mut got: Vec<Option<Value>> = vec![None; fields.len()];
    while let Some(key) = map.next_key_seed(FieldName)? {
        let Some(i) = fields.iter().position(|f| f.name == key) else {
            let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            return Err(s.error(format!(
                "`{name}` has no field `{key}` (its fields: {})",
                names.join(", ")
            )));
        };
        if got[i].is_some() {
            return Err(s.error(format!("field `{key}` is given twice")));
        }
        got[i] = Some(map.next_value_seed(s.child(&fields[i].ty, &key, "."))?);
    }
    fields
        .iter()
        .zip(got)
        .map(|(f, v)| match v {
            Some(v) => Ok((f.name.clone(), v)),
            None if f.default => default_value(s.schema, &f.ty, 0)
                .map(|v| (f.name.clone(), v))
                .ok_or_else(|| {
                    s.error(format!(
                        "missing field `{}` (its type has no default here)",
                        f.name
                    ))
                }),
            None => Err(s.error(format!("missing field `{}`", f.name))),
        })
        .collect()
}

struct VariantTuple<'s> {
    seed: Seed<'s>,
    types: &'s [Type],
}

impl<'de> Visitor<'de> for VariantTuple<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a tuple variant of {}", self.types.len())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fields, A::Error> {
        let mut out = Vec::with_capacity(self.types.len());
        for (i, t) in self.types.iter().enumerate() {
            match seq.next_element_seed(self.seed.child(t, i, "."))? {
                Some(v) => out.push(v),
                None => {
                    return Err(self
                        .seed
                        .error(format!("expected {} values, found {i}", self.types.len())));
                }
            }
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(self
                .seed
                .error(format!("expected {} values, found more", self.types.len())));
        }
        Ok(Fields::Tuple(out))
    }
}

struct VariantNamed<'s> {
    seed: Seed<'s>,
    name: &'s str,
    fields: &'s [Field],
}

impl<'de> Visitor<'de> for VariantNamed<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the fields of `{}`", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        Ok(Fields::Named(read_fields(
            &self.seed,
            self.name,
            self.fields,
            &mut map,
        )?))
    }
}

/// A field or variant name.
struct FieldName;

impl<'de> DeserializeSeed<'de> for FieldName {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for FieldName {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

/// A serde seed that reads one value of a schema's record type from any deserializer: for
/// documents that embed records (the viewer's exports). Errors name the path of the value in
/// their text.
pub struct ValueSeed<'s> {
    schema: &'s Schema,
}

impl<'s> ValueSeed<'s> {
    /// A seed for records of `schema`.
    pub fn new(schema: &'s Schema) -> ValueSeed<'s> {
        ValueSeed { schema }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let last = RefCell::new(String::new());
        Seed {
            schema: self.schema,
            ty: &self.schema.root,
            path: String::new(),
            last: &last,
            depth: 0,
            split: false,
        }
        .deserialize(d)
    }
}
