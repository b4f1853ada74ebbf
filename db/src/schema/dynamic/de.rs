//! [`Value`] -> typed values through serde, with errors that name the offending path.

use super::path::{Seg, render};
use super::{DynError, Fields, Value};
use serde::de::value::StringDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::fmt;

pub(crate) fn from_value<T: de::DeserializeOwned>(value: Value) -> Result<T, DynError> {
    let root = Node::Root;
    T::deserialize(ValueDe { value, path: &root }).map_err(|e| {
        let e = e.at(&root);
        DynError {
            path: e.path.unwrap_or_default(),
            message: e.message,
        }
    })
}

/// The path of the value being deserialized, as a linked list up to the root.
enum Node<'p> {
    Root,
    Child(&'p Node<'p>, Seg<'p>),
}

impl Node<'_> {
    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut n = self;
        while let Node::Child(parent, seg) = n {
            segs.push(*seg);
            n = parent;
        }
        segs.reverse();
        render(segs)
    }
}

/// A serde error that learns its path on the way out.
#[derive(Debug)]
pub(crate) struct DeError {
    path: Option<String>,
    message: String,
    /// A missing field: appended to the path of the struct that lacks it.
    missing: Option<&'static str>,
}

impl DeError {
    /// Sets the path (the innermost one wins) if not set yet.
    fn at(mut self, node: &Node<'_>) -> Self {
        if self.path.is_none() {
            let mut path = node.render();
            if let Some(field) = self.missing.take() {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(field);
            }
            self.path = Some(path);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "at `{p}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: None,
            message: msg.to_string(),
            missing: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            path: None,
            message: format!("missing field `{field}`"),
            missing: Some(field),
        }
    }
}

/// Deserializes one owned value at a path.
struct ValueDe<'p> {
    value: Value,
    path: &'p Node<'p>,
}

/// Strips `Box`es (transparent for serde), without recursion.
fn unbox(mut v: Value) -> Value {
    while let Value::Box(inner) = v {
        v = *inner;
    }
    v
}

fn key_fields(id: u64, rev: u32) -> Vec<(String, Value)> {
    vec![
        ("id".to_owned(), Value::U64(id)),
        ("rev".to_owned(), Value::U32(rev)),
    ]
}

impl<'p> ValueDe<'p> {
    fn any<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let path = self.path;
        match unbox(self.value) {
            Value::Unit => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::U8(x) => visitor.visit_u8(x),
            Value::U16(x) => visitor.visit_u16(x),
            Value::U32(x) => visitor.visit_u32(x),
            Value::U64(x) => visitor.visit_u64(x),
            Value::U128(x) => visitor.visit_u128(x),
            Value::I8(x) => visitor.visit_i8(x),
            Value::I16(x) => visitor.visit_i16(x),
            Value::I32(x) => visitor.visit_i32(x),
            Value::I64(x) => visitor.visit_i64(x),
            Value::I128(x) => visitor.visit_i128(x),
            Value::F32(x) => visitor.visit_f32(x),
            Value::F64(x) => visitor.visit_f64(x),
            Value::Char(c) => visitor.visit_char(c),
            Value::String(s) => visitor.visit_string(s),
            // uuid (human-readable) parses strings.
            Value::Uuid(u) => visitor.visit_string(u.hyphenated().to_string()),
            Value::Option(None) => visitor.visit_none(),
            Value::Option(Some(v)) => visitor.visit_some(ValueDe { value: *v, path }),
            Value::Box(v) => ValueDe { value: *v, path }.any(visitor),
            Value::Seq(xs) => visit_seq(xs, false, path, visitor),
            Value::Tuple(xs) => visit_seq(xs, true, path, visitor),
            Value::Map(es) => visitor.visit_map(MapDe {
                entries: es.into_iter().enumerate(),
                pending: None,
                path,
            }),
            Value::Key { id, rev } => visit_struct(key_fields(id, rev), path, visitor),
            Value::Struct(fields) => visit_struct(fields, path, visitor),
            Value::Enum { variant, fields } => visitor.visit_enum(EnumDe {
                variant,
                fields,
                path,
            }),
        }
    }
}

fn visit_seq<'de, V: Visitor<'de>>(
    xs: Vec<Value>,
    tuple: bool,
    path: &Node<'_>,
    visitor: V,
) -> Result<V::Value, DeError> {
    let len = xs.len();
    let mut seq = SeqDe {
        items: xs.into_iter().enumerate(),
        tuple,
        path,
    };
    let out = visitor.visit_seq(&mut seq)?;
    let left = seq.items.len();
    if left > 0 {
        return Err(de::Error::invalid_length(
            len,
            &format!("{} elements", len - left).as_str(),
        ));
    }
    Ok(out)
}

fn visit_struct<'de, V: Visitor<'de>>(
    fields: Vec<(String, Value)>,
    path: &Node<'_>,
    visitor: V,
) -> Result<V::Value, DeError> {
    visitor.visit_map(StructDe {
        fields: fields.into_iter(),
        pending: None,
        path,
    })
}

impl<'de> de::Deserializer<'de> for ValueDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let path = self.path;
        self.any(visitor).map_err(|e| e.at(path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let path = self.path;
        match unbox(self.value) {
            Value::Option(None) => visitor.visit_none(),
            Value::Option(Some(v)) => visitor.visit_some(ValueDe { value: *v, path }),
            // A value where an Option is expected (a field that became optional).
            value => visitor.visit_some(ValueDe { value, path }),
        }
        .map_err(|e| e.at(path))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let path = self.path;
        match unbox(self.value) {
            Value::Enum { variant, fields } => visitor.visit_enum(EnumDe {
                variant,
                fields,
                path,
            }),
            // A bare name is a unit variant.
            Value::String(variant) => visitor.visit_enum(EnumDe {
                variant,
                fields: Fields::Unit,
                path,
            }),
            value => ValueDe { value, path }.any(visitor),
        }
        .map_err(|e| e.at(path))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let path = self.path;
        visitor.visit_newtype_struct(self).map_err(|e| e.at(path))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let path = self.path;
        match unbox(self.value) {
            Value::Uuid(u) => visitor.visit_bytes(u.as_bytes()),
            value => ValueDe { value, path }.any(visitor),
        }
        .map_err(|e| e.at(path))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        drop(self.value);
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// The elements of a sequence or tuple.
struct SeqDe<'p> {
    items: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    tuple: bool,
    path: &'p Node<'p>,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        let seg = if self.tuple {
            Seg::Tuple(i)
        } else {
            Seg::Index(i)
        };
        let node = Node::Child(self.path, seg);
        seed.deserialize(ValueDe { value, path: &node })
            .map(Some)
            .map_err(|e| e.at(&node))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a map.
struct MapDe<'p> {
    entries: std::iter::Enumerate<std::vec::IntoIter<(Value, Value)>>,
    pending: Option<(usize, Value)>,
    path: &'p Node<'p>,
}

impl<'de> de::MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((i, (key, value))) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((i, value));
        let entry = Node::Child(self.path, Seg::Entry(i));
        let node = Node::Child(&entry, Seg::Key);
        seed.deserialize(ValueDe {
            value: key,
            path: &node,
        })
        .map(Some)
        .map_err(|e| e.at(&node))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((i, value)) = self.pending.take() else {
            return Err(de::Error::custom("map value requested before its key"));
        };
        let entry = Node::Child(self.path, Seg::Entry(i));
        let node = Node::Child(&entry, Seg::Value);
        seed.deserialize(ValueDe { value, path: &node })
            .map_err(|e| e.at(&node))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// The fields of a struct (or a struct variant, or a key), as a map keyed by field name.
struct StructDe<'p> {
    fields: std::vec::IntoIter<(String, Value)>,
    pending: Option<(String, Value)>,
    path: &'p Node<'p>,
}

impl<'de> de::MapAccess<'de> for StructDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((name, value)) = self.fields.next() else {
            return Ok(None);
        };
        let key: StringDeserializer<DeError> = name.clone().into_deserializer();
        self.pending = Some((name, value));
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((name, value)) = self.pending.take() else {
            return Err(de::Error::custom("field value requested before its name"));
        };
        let node = Node::Child(self.path, Seg::Field(&name));
        seed.deserialize(ValueDe { value, path: &node })
            .map_err(|e| e.at(&node))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

/// An enum value: the variant name, then its fields.
struct EnumDe<'p> {
    variant: String,
    fields: Fields,
    path: &'p Node<'p>,
}

impl<'de, 'p> de::EnumAccess<'de> for EnumDe<'p> {
    type Error = DeError;
    type Variant = VariantDe<'p>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantDe<'p>), DeError> {
        let name: StringDeserializer<DeError> = self.variant.clone().into_deserializer();
        let v = seed.deserialize(name)?;
        Ok((
            v,
            VariantDe {
                variant: self.variant,
                fields: self.fields,
                path: self.path,
            },
        ))
    }
}

struct VariantDe<'p> {
    variant: String,
    fields: Fields,
    path: &'p Node<'p>,
}

impl VariantDe<'_> {
    fn wrong(&self, expected: &str) -> DeError {
        let found = match &self.fields {
            Fields::Unit => "a unit variant".to_owned(),
            Fields::Tuple(xs) => format!("a tuple variant of {} fields", xs.len()),
            Fields::Named(xs) => format!("a struct variant of {} fields", xs.len()),
        };
        de::Error::custom(format!(
            "variant `{}` is {found}, expected {expected}",
            self.variant
        ))
    }
}

impl<'de> de::VariantAccess<'de> for VariantDe<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match &self.fields {
            Fields::Unit => Ok(()),
            Fields::Tuple(xs) if xs.is_empty() => Ok(()),
            Fields::Named(xs) if xs.is_empty() => Ok(()),
            _ => Err(self.wrong("a unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        let variant = Node::Child(self.path, Seg::Field(&self.variant));
        match self.fields {
            Fields::Tuple(xs) if xs.len() == 1 => {
                let node = Node::Child(&variant, Seg::Tuple(0));
                let mut xs = xs;
                let value = xs.pop().unwrap_or(Value::Unit);
                seed.deserialize(ValueDe { value, path: &node })
                    .map_err(|e| e.at(&node))
            }
            fields => {
                let me = VariantDe {
                    variant: self.variant.clone(),
                    fields,
                    path: self.path,
                };
                Err(me.wrong("a newtype variant"))
            }
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        let variant = Node::Child(self.path, Seg::Field(&self.variant));
        match self.fields {
            Fields::Tuple(xs) => visit_seq(xs, true, &variant, visitor).map_err(|e| e.at(&variant)),
            fields => {
                let me = VariantDe {
                    variant: self.variant.clone(),
                    fields,
                    path: self.path,
                };
                Err(me.wrong("a tuple variant"))
            }
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let variant = Node::Child(self.path, Seg::Field(&self.variant));
        match self.fields {
            Fields::Named(xs) => visit_struct(xs, &variant, visitor).map_err(|e| e.at(&variant)),
            fields => {
                let me = VariantDe {
                    variant: self.variant.clone(),
                    fields,
                    path: self.path,
                };
                Err(me.wrong("a struct variant"))
            }
        }
    }
}
