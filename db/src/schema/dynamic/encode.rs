//! [`Value`] -> bytes, mirroring rkyv's serializer.
//!
//! rkyv serializes in two phases per value: first its *dependencies* (out-of-line data:
//! string bytes, boxed values, vector elements, tables, nodes), in field order and depth
//! first, then its own *inline* bytes, which start zeroed. [`Encoder::ser`] does the first
//! phase and fills the inline bytes into an [`Inline`] buffer; relative pointers are recorded
//! as fixups and resolved when the buffer is emitted at its final position.

use super::hash::{self, Fx};
use super::layout::{Layout, add, mul};
use super::path::{Path, Seg};
use super::value::field;
use super::{DynError, Fields, MAX_DEPTH, Value};
use crate::schema::{Field, Schema, Type, TypeDef, VariantKind};
use std::cmp::Ordering;

/// The longest string rkyv can archive.
const MAX_STRING: usize = (1 << 30) - 1;

pub(crate) fn encode(schema: &Schema, value: &Value) -> Result<Vec<u8>, DynError> {
    let mut e = Encoder {
        layout: Layout::new(schema),
        buf: Vec::new(),
        path: Path::default(),
        depth: 0,
    };
    e.write_obj(&schema.root, value)?;
    Ok(e.buf)
}

/// A relative pointer to resolve: the `i32` at `at` gets `target - (position of base)`.
struct Fixup {
    at: usize,
    base: usize,
    target: usize,
}

/// The inline bytes of an object being built, with its unresolved pointers.
pub(super) struct Inline {
    bytes: Vec<u8>,
    fixups: Vec<Fixup>,
}

impl Inline {
    pub(super) fn zeroed(len: usize) -> Self {
        Inline {
            bytes: vec![0; len],
            fixups: Vec::new(),
        }
    }
}

/// One entry of a map or set being encoded: its index in the given value (for error paths).
#[derive(Clone, Copy)]
pub(super) struct Entry<'v> {
    pub(super) index: usize,
    pub(super) key: &'v Value,
    pub(super) value: Option<&'v Value>,
}

pub(super) struct Encoder<'a> {
    pub(super) layout: Layout<'a>,
    pub(super) buf: Vec<u8>,
    pub(super) path: Path<'a>,
    depth: usize,
}

impl<'a> Encoder<'a> {
    pub(super) fn err(&self, message: impl Into<String>) -> DynError {
        self.path.error(message)
    }

    pub(super) fn checked<T>(&self, r: Result<T, String>) -> Result<T, DynError> {
        r.map_err(|m| self.err(m))
    }

    pub(super) fn size(&mut self, ty: &'a Type) -> Result<usize, DynError> {
        self.layout.size(ty).map_err(|m| self.path.error(m))
    }

    /// Writes `data` into `out` at `at`.
    pub(super) fn put(&self, out: &mut Inline, at: usize, data: &[u8]) -> Result<(), DynError> {
        match out.bytes.get_mut(at..at.saturating_add(data.len())) {
            Some(dst) => {
                dst.copy_from_slice(data);
                Ok(())
            }
            None => Err(self.err("internal error: write outside an object")),
        }
    }

    /// Records a relative pointer at `at` (relative to `base`) to `target`.
    pub(super) fn pointer(&self, out: &mut Inline, at: usize, base: usize, target: usize) {
        out.fixups.push(Fixup { at, base, target });
    }

    /// Appends `inline` to the output, resolving its pointers; returns its position.
    pub(super) fn emit(&mut self, inline: Inline) -> Result<usize, DynError> {
        let pos = self.buf.len();
        let mut bytes = inline.bytes;
        for f in inline.fixups {
            let offset = i64::try_from(f.target)
                .ok()
                .zip(i64::try_from(pos + f.base).ok())
                .and_then(|(t, b)| i32::try_from(t - b).ok())
                .ok_or_else(|| self.err("the record is too large (offsets exceed 2 GiB)"))?;
            match bytes.get_mut(f.at..f.at + 4) {
                Some(dst) => dst.copy_from_slice(&offset.to_le_bytes()),
                None => return Err(self.err("internal error: pointer outside an object")),
            }
        }
        self.buf.extend_from_slice(&bytes);
        Ok(pos)
    }

    /// Writes `v` as a whole object (dependencies, then inline bytes); returns its position.
    pub(super) fn write_obj(&mut self, ty: &'a Type, v: &Value) -> Result<usize, DynError> {
        let size = self.size(ty)?;
        let mut inline = Inline::zeroed(size);
        self.ser(ty, v, &mut inline, 0)?;
        self.emit(inline)
    }

    fn mismatch(&self, ty: &Type, v: &Value) -> DynError {
        self.err(format!("expected {}, found {}", describe(ty), v.kind()))
    }

    /// Writes the dependencies of `v` and fills its inline bytes into `out` at `at`.
    pub(super) fn ser(
        &mut self,
        ty: &'a Type,
        v: &Value,
        out: &mut Inline,
        at: usize,
    ) -> Result<(), DynError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        self.ser_inner(ty, v, out, at)?;
        self.depth -= 1;
        Ok(())
    }

    fn ser_inner(
        &mut self,
        ty: &'a Type,
        v: &Value,
        out: &mut Inline,
        at: usize,
    ) -> Result<(), DynError> {
        match (ty, v) {
            (Type::Unit, Value::Unit) => Ok(()),
            (Type::Bool, Value::Bool(b)) => self.put(out, at, &[u8::from(*b)]),
            (Type::U8, Value::U8(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::U16, Value::U16(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::U32, Value::U32(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::U64, Value::U64(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::U128, Value::U128(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::I8, Value::I8(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::I16, Value::I16(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::I32, Value::I32(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::I64, Value::I64(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::I128, Value::I128(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::F32, Value::F32(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::F64, Value::F64(x)) => self.put(out, at, &x.to_le_bytes()),
            (Type::Char, Value::Char(c)) => self.put(out, at, &u32::from(*c).to_le_bytes()),
            (Type::Uuid, Value::Uuid(u)) => self.put(out, at, u.as_bytes()),
            (Type::String, Value::String(s)) => self.string(s, out, at),
            (Type::Option(inner), Value::Option(o)) => match o {
                None => Ok(()),
                Some(x) => {
                    self.put(out, at, &[1])?;
                    self.ser(inner, x, out, at + 1)
                }
            },
            (Type::Box(inner), Value::Box(x)) => {
                let target = self.write_obj(inner, x)?;
                self.pointer(out, at, at, target);
                Ok(())
            }
            (Type::Vec(inner), Value::Seq(xs)) => {
                let len = u32::try_from(xs.len())
                    .map_err(|_| self.err("a Vec holds at most u32::MAX elements"))?;
                let size = self.size(inner)?;
                let total = self.checked(mul(size, xs.len()))?;
                let mut elems = Inline::zeroed(total);
                for (i, x) in xs.iter().enumerate() {
                    self.path.push(Seg::Index(i));
                    self.ser(inner, x, &mut elems, i * size)?;
                    self.path.pop();
                }
                let target = self.emit(elems)?;
                self.pointer(out, at, at, target);
                self.put(out, at + 4, &len.to_le_bytes())
            }
            (Type::Array(inner, n), Value::Seq(xs)) => {
                if xs.len() != *n as usize {
                    return Err(self.err(format!(
                        "expected an array of {n} elements, found {}",
                        xs.len()
                    )));
                }
                let size = self.size(inner)?;
                for (i, x) in xs.iter().enumerate() {
                    self.path.push(Seg::Index(i));
                    self.ser(inner, x, out, at + i * size)?;
                    self.path.pop();
                }
                Ok(())
            }
            (Type::Tuple(tys), Value::Tuple(xs)) => {
                if xs.len() != tys.len() {
                    return Err(self.err(format!(
                        "expected a tuple of {} elements, found {}",
                        tys.len(),
                        xs.len()
                    )));
                }
                let mut o = at;
                for (i, (t, x)) in tys.iter().zip(xs).enumerate() {
                    self.path.push(Seg::Tuple(i));
                    self.ser(t, x, out, o)?;
                    self.path.pop();
                    o += self.size(t)?;
                }
                Ok(())
            }
            (
                Type::Map {
                    ordered,
                    key,
                    value,
                },
                Value::Map(es),
            ) => {
                let entries: Vec<Entry<'_>> = es
                    .iter()
                    .enumerate()
                    .map(|(index, (k, v))| Entry {
                        index,
                        key: k,
                        value: Some(v),
                    })
                    .collect();
                self.map(*ordered, key, Some(value), entries, out, at)
            }
            (Type::Set { ordered, item }, Value::Seq(xs)) => {
                let entries: Vec<Entry<'_>> = xs
                    .iter()
                    .enumerate()
                    .map(|(index, k)| Entry {
                        index,
                        key: k,
                        value: None,
                    })
                    .collect();
                self.map(*ordered, item, None, entries, out, at)
            }
            (Type::Key { .. }, Value::Key { id, rev }) => {
                self.put(out, at, &id.to_le_bytes())?;
                self.put(out, at + 8, &rev.to_le_bytes())
            }
            (Type::Named(name), _) => {
                let def = self.layout.def(name).map_err(|m| self.path.error(m))?;
                match (def, v) {
                    (TypeDef::Struct(fields), Value::Struct(vals)) => {
                        self.fields(name, fields, vals, out, at)
                    }
                    (TypeDef::Enum(variants), Value::Enum { variant, fields }) => {
                        let Some(index) = variants.iter().position(|x| x.name == *variant) else {
                            let names: Vec<&str> =
                                variants.iter().map(|x| x.name.as_str()).collect();
                            return Err(self.err(format!(
                                "unknown variant `{variant}` of `{name}` (expected one of {})",
                                names.join(", ")
                            )));
                        };
                        let tag = u8::try_from(index)
                            .map_err(|_| self.err("enums have at most 256 variants"))?;
                        self.put(out, at, &[tag])?;
                        let var = &variants[index];
                        self.path.push(Seg::Field(&var.name));
                        match (&var.kind, fields) {
                            (VariantKind::Unit, Fields::Unit) => {}
                            (VariantKind::Tuple(tys), Fields::Tuple(xs))
                                if tys.len() == xs.len() =>
                            {
                                let mut o = at + 1;
                                for (i, (t, x)) in tys.iter().zip(xs).enumerate() {
                                    self.path.push(Seg::Tuple(i));
                                    self.ser(t, x, out, o)?;
                                    self.path.pop();
                                    o += self.size(t)?;
                                }
                            }
                            (VariantKind::Named(fs), Fields::Named(vals)) => {
                                self.fields(&var.name, fs, vals, out, at + 1)?;
                            }
                            (kind, fields) => {
                                return Err(self.err(format!(
                                    "variant `{variant}` has {}, found {}",
                                    describe_kind(kind),
                                    describe_fields(fields)
                                )));
                            }
                        }
                        self.path.pop();
                        Ok(())
                    }
                    (TypeDef::Struct(_), v) => {
                        Err(self.err(format!("expected struct `{name}`, found {}", v.kind())))
                    }
                    (TypeDef::Enum(_), v) => {
                        Err(self.err(format!("expected enum `{name}`, found {}", v.kind())))
                    }
                }
            }
            (ty, v) => Err(self.mismatch(ty, v)),
        }
    }

    fn string(&mut self, s: &str, out: &mut Inline, at: usize) -> Result<(), DynError> {
        if s.len() <= 8 {
            // Inline: the bytes, padded with 0xff.
            let mut b = [0xffu8; 8];
            b[..s.len()].copy_from_slice(s.as_bytes());
            return self.put(out, at, &b);
        }
        if s.len() > MAX_STRING {
            return Err(self.err(format!("strings hold at most {MAX_STRING} bytes")));
        }
        let target = self.buf.len();
        self.buf.extend_from_slice(s.as_bytes());
        let l = s.len() as u32;
        let l = (l & 0x3f) | 0x80 | ((l & !0x3f) << 2);
        self.put(out, at, &l.to_le_bytes())?;
        // The offset is relative to the start of the string, not to the offset field.
        self.pointer(out, at + 4, at, target);
        Ok(())
    }

    fn fields(
        &mut self,
        owner: &str,
        fields: &'a [Field],
        vals: &[(String, Value)],
        out: &mut Inline,
        at: usize,
    ) -> Result<(), DynError> {
        if let Some((extra, _)) = vals
            .iter()
            .find(|(n, _)| !fields.iter().any(|f| f.name == *n))
        {
            return Err(self.err(format!("`{owner}` has no field `{extra}`")));
        }
        let mut o = at;
        for (i, f) in fields.iter().enumerate() {
            self.path.push(Seg::Field(&f.name));
            let x = field(vals, &f.name, i).ok_or_else(|| self.err("missing field"))?;
            self.ser(&f.ty, x, out, o)?;
            self.path.pop();
            o += self.size(&f.ty)?;
        }
        Ok(())
    }

    /// Writes one map or set entry's dependencies, filling its key and value inline bytes.
    pub(super) fn entry(
        &mut self,
        kty: &'a Type,
        vty: Option<&'a Type>,
        e: Entry<'_>,
        out: &mut Inline,
        kat: usize,
        vat: usize,
    ) -> Result<(), DynError> {
        self.path.push(Seg::Entry(e.index));
        match (vty, e.value) {
            (Some(vty), Some(v)) => {
                self.path.push(Seg::Key);
                self.ser(kty, e.key, out, kat)?;
                self.path.pop();
                self.path.push(Seg::Value);
                self.ser(vty, v, out, vat)?;
                self.path.pop();
            }
            _ => self.ser(kty, e.key, out, kat)?,
        }
        self.path.pop();
        Ok(())
    }

    /// Checks a key against its type by encoding it into a scratch buffer (so hashing and
    /// comparing it afterwards cannot meet a mismatch).
    fn check_key(&mut self, kty: &'a Type, e: Entry<'_>) -> Result<(), DynError> {
        let saved = std::mem::take(&mut self.buf);
        self.path.push(Seg::Entry(e.index));
        if e.value.is_some() {
            self.path.push(Seg::Key);
        }
        let r = self.write_obj(kty, e.key);
        self.buf = saved;
        r?;
        if e.value.is_some() {
            self.path.pop();
        }
        self.path.pop();
        Ok(())
    }

    fn map(
        &mut self,
        ordered: bool,
        kty: &'a Type,
        vty: Option<&'a Type>,
        mut entries: Vec<Entry<'_>>,
        out: &mut Inline,
        at: usize,
    ) -> Result<(), DynError> {
        let len = u32::try_from(entries.len())
            .map_err(|_| self.err("maps and sets hold at most u32::MAX entries"))?;
        if entries.is_empty() {
            // An invalid pointer (1), length 0 (and capacity 0).
            return self.put(out, at, &1i32.to_le_bytes());
        }
        for e in &entries {
            self.check_key(kty, *e)?;
        }
        // Native key order (B-trees need it; it also finds duplicates).
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| hash::cmp(&self.layout, kty, a.key, b.key));
        for w in sorted.windows(2) {
            if hash::cmp(&self.layout, kty, w[0].key, w[1].key) == Ordering::Equal {
                self.path.push(Seg::Entry(w[0].index.max(w[1].index)));
                return Err(self.err("duplicate key"));
            }
        }
        let target = if ordered {
            entries = sorted;
            self.btree(kty, vty, &entries)?
        } else {
            self.hash_table(kty, vty, &entries, out, at)?
        };
        self.pointer(out, at, at, target);
        self.put(out, at + 4, &len.to_le_bytes())
    }

    /// Writes a swiss table for `entries` (in the given order); returns the position of the
    /// control bytes and fills the capacity into the header.
    fn hash_table(
        &mut self,
        kty: &'a Type,
        vty: Option<&'a Type>,
        entries: &[Entry<'_>],
        out: &mut Inline,
        at: usize,
    ) -> Result<usize, DynError> {
        let ks = self.size(kty)?;
        let vs = match vty {
            Some(t) => self.size(t)?,
            None => 0,
        };
        let es = self.checked(add(ks, vs))?;
        let cap = hash::capacity(entries.len()).ok_or_else(|| self.err("map too large"))?;
        let cap32 = u32::try_from(cap).map_err(|_| self.err("map too large"))?;
        self.checked(mul(es, cap))?;
        let hashes: Vec<u64> = entries
            .iter()
            .map(|e| {
                let mut h = Fx::default();
                hash::hash(&self.layout, kty, e.key, &mut h);
                h.finish()
            })
            .collect();
        let (ctrl, slots) = self.checked(hash::place(&hashes, cap))?;
        // Dependencies in bucket order, then the buckets in reverse order, then the controls.
        let mut buckets: Vec<Option<Inline>> = Vec::with_capacity(cap);
        for slot in &slots {
            buckets.push(match slot.and_then(|i| entries.get(i)) {
                Some(e) => {
                    let mut inline = Inline::zeroed(es);
                    self.entry(kty, vty, *e, &mut inline, 0, ks)?;
                    Some(inline)
                }
                None => None,
            });
        }
        for bucket in buckets.into_iter().rev() {
            match bucket {
                Some(inline) => {
                    self.emit(inline)?;
                }
                None => self.buf.resize(self.buf.len() + es, 0),
            }
        }
        let target = self.buf.len();
        self.buf.extend_from_slice(&ctrl);
        self.put(out, at + 8, &cap32.to_le_bytes())?;
        Ok(target)
    }
}

/// A type as Rust would spell it, for error messages.
pub(super) fn describe(ty: &Type) -> String {
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
        Type::Option(_) => "Option".into(),
        Type::Box(_) => "Box".into(),
        Type::Vec(_) => "Vec (a sequence)".into(),
        Type::Array(_, n) => format!("an array of {n} (a sequence)"),
        Type::Tuple(t) => format!("a tuple of {}", t.len()),
        Type::Map { .. } => "a map".into(),
        Type::Set { .. } => "a set (a sequence)".into(),
        Type::Key { tree } => format!("Key<{tree}>"),
        Type::Named(n) => format!("`{n}`"),
    }
}

fn describe_kind(kind: &VariantKind) -> String {
    match kind {
        VariantKind::Unit => "no fields".into(),
        VariantKind::Tuple(t) => format!("{} unnamed fields", t.len()),
        VariantKind::Named(f) => format!("{} named fields", f.len()),
    }
}

fn describe_fields(fields: &Fields) -> String {
    match fields {
        Fields::Unit => "no fields".into(),
        Fields::Tuple(t) => format!("{} unnamed fields", t.len()),
        Fields::Named(f) => format!("{} named fields", f.len()),
    }
}
