//! Sizes of archived types (every archived type has alignment 1, so a type's inline bytes
//! are its fields' inline bytes, packed).

use crate::schema::{Schema, Type, TypeDef, VariantKind};
use std::collections::HashMap;

/// The largest inline size accepted: relative pointers are 32-bit, so nothing larger can be
/// addressed.
pub(crate) const MAX_SIZE: usize = i32::MAX as usize;

/// How deep a single type description may nest (guards the size computation's recursion).
const MAX_TYPE_DEPTH: usize = 256;

/// Inline size of an archived `Box`, `Vec`, `String`, B-tree map/set, hash map/set and `Key`.
pub(crate) const BOX_SIZE: usize = 4;
pub(crate) const VEC_SIZE: usize = 8;
pub(crate) const STRING_SIZE: usize = 8;
pub(crate) const BTREE_SIZE: usize = 8;
pub(crate) const HASH_SIZE: usize = 12;
pub(crate) const KEY_SIZE: usize = 12;

/// Computes (and caches) inline sizes of the types of one schema.
pub(crate) struct Layout<'a> {
    schema: &'a Schema,
    /// Sizes of named types; `None` while being computed (a cycle means infinite size).
    named: HashMap<&'a str, Option<usize>>,
    /// Sizes of anonymous types, by address (all of them live in `schema`).
    cache: HashMap<usize, usize>,
}

impl<'a> Layout<'a> {
    pub(crate) fn new(schema: &'a Schema) -> Self {
        Layout {
            schema,
            named: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// The definition of the user type `name`.
    pub(crate) fn def(&self, name: &str) -> Result<&'a TypeDef, String> {
        self.schema
            .types
            .get(name)
            .ok_or_else(|| format!("type `{name}` is not defined in the schema"))
    }

    /// The inline size of `ty`.
    pub(crate) fn size(&mut self, ty: &'a Type) -> Result<usize, String> {
        self.size_at(ty, 0)
    }

    fn size_at(&mut self, ty: &'a Type, depth: usize) -> Result<usize, String> {
        if depth > MAX_TYPE_DEPTH {
            return Err(format!("type nests deeper than {MAX_TYPE_DEPTH} levels"));
        }
        let size = match ty {
            Type::Unit => 0,
            Type::Bool | Type::U8 | Type::I8 => 1,
            Type::U16 | Type::I16 => 2,
            Type::U32 | Type::I32 | Type::F32 | Type::Char => 4,
            Type::U64 | Type::I64 | Type::F64 => 8,
            Type::U128 | Type::I128 | Type::Uuid => 16,
            Type::String => STRING_SIZE,
            Type::Box(_) => BOX_SIZE,
            Type::Vec(_) => VEC_SIZE,
            Type::Key { .. } => KEY_SIZE,
            Type::Map { ordered: true, .. } | Type::Set { ordered: true, .. } => BTREE_SIZE,
            Type::Map { ordered: false, .. } | Type::Set { ordered: false, .. } => HASH_SIZE,
            Type::Option(inner) => add(1, self.size_at(inner, depth + 1)?)?,
            Type::Array(inner, n) => {
                let key = ty as *const Type as usize;
                if let Some(&s) = self.cache.get(&key) {
                    return Ok(s);
                }
                let one = self.size_at(inner, depth + 1)?;
                let s = mul(one, *n as usize)?;
                self.cache.insert(key, s);
                s
            }
            Type::Tuple(tys) => {
                let key = ty as *const Type as usize;
                if let Some(&s) = self.cache.get(&key) {
                    return Ok(s);
                }
                let mut s = 0usize;
                for t in tys {
                    s = add(s, self.size_at(t, depth + 1)?)?;
                }
                self.cache.insert(key, s);
                s
            }
            Type::Named(name) => return self.named_size(name, depth),
        };
        Ok(size)
    }

    fn named_size(&mut self, name: &'a str, depth: usize) -> Result<usize, String> {
        match self.named.get(name) {
            Some(Some(s)) => return Ok(*s),
            Some(None) => {
                return Err(format!(
                    "type `{name}` contains itself without indirection (infinite size)"
                ));
            }
            None => {}
        }
        let def = self.def(name)?;
        self.named.insert(name, None);
        let size = self.def_size(def, depth);
        match size {
            Ok(s) => self.named.insert(name, Some(s)),
            Err(_) => self.named.remove(name),
        };
        size
    }

    fn def_size(&mut self, def: &'a TypeDef, depth: usize) -> Result<usize, String> {
        let size = match def {
            TypeDef::Struct(fields) => {
                let mut s = 0usize;
                for f in fields {
                    s = add(s, self.size_at(&f.ty, depth + 1)?)?;
                }
                s
            }
            TypeDef::Enum(variants) => {
                let mut max = 0usize;
                for v in variants {
                    let mut s = 0usize;
                    match &v.kind {
                        VariantKind::Unit => {}
                        VariantKind::Tuple(tys) => {
                            for t in tys {
                                s = add(s, self.size_at(t, depth + 1)?)?;
                            }
                        }
                        VariantKind::Named(fields) => {
                            for f in fields {
                                s = add(s, self.size_at(&f.ty, depth + 1)?)?;
                            }
                        }
                    }
                    max = max.max(s);
                }
                add(1, max)?
            }
        };
        Ok(size)
    }
}

fn too_large() -> String {
    format!("type is larger than {MAX_SIZE} bytes")
}

/// Adds sizes, failing beyond [`MAX_SIZE`].
pub(crate) fn add(a: usize, b: usize) -> Result<usize, String> {
    a.checked_add(b)
        .filter(|s| *s <= MAX_SIZE)
        .ok_or_else(too_large)
}

/// Multiplies sizes, failing beyond [`MAX_SIZE`].
pub(crate) fn mul(a: usize, b: usize) -> Result<usize, String> {
    a.checked_mul(b)
        .filter(|s| *s <= MAX_SIZE)
        .ok_or_else(too_large)
}
