//! Bytes -> [`Value`], with the checks of rkyv's checked access.
//!
//! Out-of-line objects (the targets of boxes, vectors, long strings, hash tables and B-tree
//! nodes) are checked like rkyv's validator does: each must lie in the current "sub-tree
//! range"; while its contents are checked the range ends at its start (dependencies come
//! before the object), and afterwards the range starts at its end (later objects come after).
//! This also makes the work linear in the input: no byte is decoded twice.

use super::layout::{Layout, add, mul};
use super::path::{Path, Seg};
use super::{DynError, Fields, MAX_DEPTH, Value};
use crate::schema::{Field, Schema, Type, TypeDef, VariantKind};

/// Entries per B-tree node.
pub(crate) const BTREE_E: usize = 5;

/// Decoded map or set entries (the value is `None` for sets).
type Entries = Vec<(Value, Option<Value>)>;

pub(crate) fn decode(schema: &Schema, bytes: &[u8]) -> Result<Value, DynError> {
    let mut d = Decoder {
        bytes,
        layout: Layout::new(schema),
        start: 0,
        end: bytes.len(),
        path: Path::default(),
        depth: 0,
        // Every value costs one unit; zero-sized values (`()`, empty structs) cost no bytes,
        // so this is what stops a `Vec<()>` claiming four billion elements.
        budget: bytes.len().saturating_mul(8).saturating_add(4096),
        covered: 0,
    };
    let root = &schema.root;
    let size = d.size(root)?;
    if size > bytes.len() {
        return Err(d.path.error(format!(
            "{} bytes are too few for the record ({size} bytes)",
            bytes.len()
        )));
    }
    let pos = bytes.len() - size;
    let value = d.in_subtree(pos, size, |d| d.value(root, pos))?;
    // Exact: the record's objects (which never overlap) cover every byte, as rkyv's
    // unaligned format lays them out without padding. Bytes that belong to no object are
    // another type's data read under this schema (say, a record with an extra field).
    if d.covered != bytes.len() {
        return Err(Path::default().error(format!(
            "{} of the record's {} bytes belong to no part of it: the bytes do not match this schema (were they written by a different type?)",
            bytes.len() - d.covered.min(bytes.len()),
            bytes.len()
        )));
    }
    Ok(value)
}

struct Decoder<'a> {
    bytes: &'a [u8],
    layout: Layout<'a>,
    /// The current sub-tree range `[start, end)`.
    start: usize,
    end: usize,
    path: Path<'a>,
    depth: usize,
    budget: usize,
    /// Bytes of the objects entered so far (they never overlap).
    covered: usize,
}

impl<'a> Decoder<'a> {
    fn err(&self, message: impl Into<String>) -> DynError {
        self.path.error(message)
    }

    fn size(&mut self, ty: &'a Type) -> Result<usize, DynError> {
        self.layout.size(ty).map_err(|m| self.err(m))
    }

    fn def(&self, name: &str) -> Result<&'a TypeDef, DynError> {
        self.layout.def(name).map_err(|m| self.err(m))
    }

    fn checked<T>(&self, r: Result<T, String>) -> Result<T, DynError> {
        r.map_err(|m| self.err(m))
    }

    fn bytes_at(&self, pos: usize, len: usize) -> Result<&'a [u8], DynError> {
        pos.checked_add(len)
            .and_then(|end| self.bytes.get(pos..end))
            .ok_or_else(|| self.err(format!("{len} bytes at {pos} are out of bounds")))
    }

    fn array<const N: usize>(&self, pos: usize) -> Result<[u8; N], DynError> {
        let b = self.bytes_at(pos, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32_at(&self, pos: usize) -> Result<u32, DynError> {
        Ok(u32::from_le_bytes(self.array(pos)?))
    }

    /// The raw offset of the relative pointer at `pos`.
    fn offset_at(&self, pos: usize) -> Result<i32, DynError> {
        Ok(i32::from_le_bytes(self.array(pos)?))
    }

    /// The target of the relative pointer at `pos`, relative to `base`.
    fn target(&self, base: usize, offset: i32) -> Result<usize, DynError> {
        let t = base as i64 + i64::from(offset);
        usize::try_from(t)
            .ok()
            .filter(|t| *t <= self.bytes.len())
            .ok_or_else(|| self.err(format!("pointer at {base} points out of the buffer")))
    }

    /// Checks that `[pos, pos + len)` lies in the current sub-tree range (without entering it).
    fn check_subtree(&self, pos: usize, len: usize) -> Result<(), DynError> {
        match pos.checked_add(len) {
            Some(end) if pos >= self.start && end <= self.end => Ok(()),
            _ => Err(self.err(format!(
                "object of {len} bytes at {pos} is outside its allowed range {}..{} \
                 (overlapping, out of order or out of bounds)",
                self.start, self.end
            ))),
        }
    }

    /// Checks `[pos, pos + len)` is in range, then runs `f` for its contents, like rkyv's
    /// `in_subtree`.
    fn in_subtree<R>(
        &mut self,
        pos: usize,
        len: usize,
        f: impl FnOnce(&mut Self) -> Result<R, DynError>,
    ) -> Result<R, DynError> {
        self.check_subtree(pos, len)?;
        self.covered = self.covered.saturating_add(len);
        let saved_end = self.end;
        self.end = pos;
        let r = f(self)?;
        self.start = pos + len;
        self.end = saved_end;
        Ok(r)
    }

    fn spend(&mut self, n: usize) -> Result<(), DynError> {
        match self.budget.checked_sub(n) {
            Some(b) => {
                self.budget = b;
                Ok(())
            }
            None => Err(self.err(format!(
                "the record holds more values than {} bytes can describe",
                self.bytes.len()
            ))),
        }
    }

    fn enter(&mut self) -> Result<(), DynError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// Decodes the value of type `ty` whose inline bytes are at `pos`.
    fn value(&mut self, ty: &'a Type, pos: usize) -> Result<Value, DynError> {
        self.enter()?;
        self.spend(1)?;
        let v = self.value_inner(ty, pos)?;
        self.depth -= 1;
        Ok(v)
    }

    fn value_inner(&mut self, ty: &'a Type, pos: usize) -> Result<Value, DynError> {
        Ok(match ty {
            Type::Unit => Value::Unit,
            Type::Bool => match self.array::<1>(pos)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("invalid bool byte {b:#04x}"))),
            },
            Type::U8 => Value::U8(u8::from_le_bytes(self.array(pos)?)),
            Type::U16 => Value::U16(u16::from_le_bytes(self.array(pos)?)),
            Type::U32 => Value::U32(u32::from_le_bytes(self.array(pos)?)),
            Type::U64 => Value::U64(u64::from_le_bytes(self.array(pos)?)),
            Type::U128 => Value::U128(u128::from_le_bytes(self.array(pos)?)),
            Type::I8 => Value::I8(i8::from_le_bytes(self.array(pos)?)),
            Type::I16 => Value::I16(i16::from_le_bytes(self.array(pos)?)),
            Type::I32 => Value::I32(i32::from_le_bytes(self.array(pos)?)),
            Type::I64 => Value::I64(i64::from_le_bytes(self.array(pos)?)),
            Type::I128 => Value::I128(i128::from_le_bytes(self.array(pos)?)),
            Type::F32 => Value::F32(f32::from_le_bytes(self.array(pos)?)),
            Type::F64 => Value::F64(f64::from_le_bytes(self.array(pos)?)),
            Type::Char => {
                let c = self.u32_at(pos)?;
                Value::Char(
                    char::from_u32(c).ok_or_else(|| self.err(format!("invalid char {c:#x}")))?,
                )
            }
            Type::String => Value::String(self.string(pos)?),
            Type::Uuid => Value::Uuid(uuid::Uuid::from_bytes(self.array(pos)?)),
            Type::Option(inner) => match self.array::<1>(pos)?[0] {
                0 => Value::Option(None),
                1 => Value::Option(Some(Box::new(self.value(inner, pos + 1)?))),
                t => return Err(self.err(format!("invalid Option tag {t}"))),
            },
            Type::Box(inner) => {
                let size = self.size(inner)?;
                let target = self.target(pos, self.offset_at(pos)?)?;
                let v = self.in_subtree(target, size, |d| d.value(inner, target))?;
                Value::Box(Box::new(v))
            }
            Type::Vec(inner) => {
                let size = self.size(inner)?;
                let target = self.target(pos, self.offset_at(pos)?)?;
                let len = self.u32_at(pos + 4)? as usize;
                let total = self.checked(mul(size, len))?;
                Value::Seq(
                    self.in_subtree(target, total, |d| d.elements(inner, target, len, size))?,
                )
            }
            Type::Array(inner, n) => {
                let size = self.size(inner)?;
                Value::Seq(self.elements(inner, pos, *n as usize, size)?)
            }
            Type::Tuple(tys) => {
                let mut out = Vec::with_capacity(tys.len());
                let mut at = pos;
                for (i, t) in tys.iter().enumerate() {
                    self.path.push(Seg::Tuple(i));
                    out.push(self.value(t, at)?);
                    self.path.pop();
                    at += self.size(t)?;
                }
                Value::Tuple(out)
            }
            Type::Map {
                ordered,
                key,
                value,
            } => {
                let entries = self.map(*ordered, key, Some(value), pos)?;
                Value::Map(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or(Value::Unit)))
                        .collect(),
                )
            }
            Type::Set { ordered, item } => {
                let entries = self.map(*ordered, item, None, pos)?;
                Value::Seq(entries.into_iter().map(|(k, _)| k).collect())
            }
            Type::Key { .. } => Value::Key {
                id: u64::from_le_bytes(self.array(pos)?),
                rev: self.u32_at(pos + 8)?,
            },
            Type::Named(name) => match self.def(name)? {
                TypeDef::Struct(fields) => Value::Struct(self.fields(fields, pos)?),
                TypeDef::Enum(variants) => {
                    let tag = self.array::<1>(pos)?[0];
                    let variant = variants.get(usize::from(tag)).ok_or_else(|| {
                        self.err(format!(
                            "invalid enum tag {tag} (`{name}` has {} variants)",
                            variants.len()
                        ))
                    })?;
                    self.path.push(Seg::Field(&variant.name));
                    let fields = match &variant.kind {
                        VariantKind::Unit => Fields::Unit,
                        VariantKind::Tuple(tys) => {
                            let mut out = Vec::with_capacity(tys.len());
                            let mut at = pos + 1;
                            for (i, t) in tys.iter().enumerate() {
                                self.path.push(Seg::Tuple(i));
                                out.push(self.value(t, at)?);
                                self.path.pop();
                                at += self.size(t)?;
                            }
                            Fields::Tuple(out)
                        }
                        VariantKind::Named(fields) => Fields::Named(self.fields(fields, pos + 1)?),
                    };
                    self.path.pop();
                    Value::Enum {
                        variant: variant.name.clone(),
                        fields,
                    }
                }
            },
        })
    }

    fn fields(
        &mut self,
        fields: &'a [Field],
        pos: usize,
    ) -> Result<Vec<(String, Value)>, DynError> {
        let mut out = Vec::with_capacity(fields.len());
        let mut at = pos;
        for f in fields {
            self.path.push(Seg::Field(&f.name));
            out.push((f.name.clone(), self.value(&f.ty, at)?));
            self.path.pop();
            at += self.size(&f.ty)?;
        }
        Ok(out)
    }

    /// `len` contiguous elements of `size` bytes at `pos`.
    fn elements(
        &mut self,
        ty: &'a Type,
        pos: usize,
        len: usize,
        size: usize,
    ) -> Result<Vec<Value>, DynError> {
        let mut out = Vec::with_capacity(len.min(1024));
        for i in 0..len {
            self.path.push(Seg::Index(i));
            out.push(self.value(ty, pos + i * size)?);
            self.path.pop();
        }
        Ok(out)
    }

    fn string(&mut self, pos: usize) -> Result<String, DynError> {
        let raw: [u8; 8] = self.array(pos)?;
        if raw[0] & 0xc0 != 0x80 {
            // Inline: the bytes up to the first 0xff.
            let len = raw.iter().position(|&b| b == 0xff).unwrap_or(8);
            return self.utf8(&raw[..len]);
        }
        let v = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let len = ((v & 0x3f) | ((v & !0xff) >> 2)) as usize;
        if len <= 8 {
            return Err(self.err("out-of-line string with an inline length"));
        }
        let offset = i32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let target = self.target(pos, offset)?;
        self.in_subtree(target, len, |d| {
            let b = d.bytes_at(target, len)?;
            d.utf8(b)
        })
    }

    fn utf8(&self, b: &[u8]) -> Result<String, DynError> {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|e| self.err(format!("invalid UTF-8 in string: {e}")))
    }

    fn map(
        &mut self,
        ordered: bool,
        kty: &'a Type,
        vty: Option<&'a Type>,
        pos: usize,
    ) -> Result<Entries, DynError> {
        let ks = self.size(kty)?;
        let vs = match vty {
            Some(t) => self.size(t)?,
            None => 0,
        };
        if ordered {
            self.btree(kty, vty, ks, vs, pos)
        } else {
            self.hash_table(kty, vty, ks, vs, pos)
        }
    }

    /// One entry of a map or set: the key at `pos`, the value right after it.
    fn entry(
        &mut self,
        index: usize,
        kty: &'a Type,
        vty: Option<&'a Type>,
        kpos: usize,
        vpos: usize,
    ) -> Result<(Value, Option<Value>), DynError> {
        self.path.push(Seg::Entry(index));
        let entry = match vty {
            Some(vty) => {
                self.path.push(Seg::Key);
                let k = self.value(kty, kpos)?;
                self.path.pop();
                self.path.push(Seg::Value);
                let v = self.value(vty, vpos)?;
                self.path.pop();
                (k, Some(v))
            }
            None => (self.value(kty, kpos)?, None),
        };
        self.path.pop();
        Ok(entry)
    }

    /// A swiss table (`ArchivedHashMap`/`ArchivedHashSet`): entries in bucket order.
    fn hash_table(
        &mut self,
        kty: &'a Type,
        vty: Option<&'a Type>,
        ks: usize,
        vs: usize,
        pos: usize,
    ) -> Result<Entries, DynError> {
        let len = self.u32_at(pos + 4)? as usize;
        let cap = self.u32_at(pos + 8)? as usize;
        if len == 0 && cap == 0 {
            return Ok(Vec::new());
        }
        if len >= cap {
            return Err(self.err(format!(
                "hash table length {len} is not below its capacity {cap}"
            )));
        }
        let es = self.checked(add(ks, vs))?;
        let control_count = self.checked(add(cap.next_multiple_of(16), 15))?;
        let buckets = self.checked(mul(cap, es))?;
        let block = self.checked(add(buckets, control_count))?;
        let ctrl = self.target(pos, self.offset_at(pos)?)?;
        let start = ctrl
            .checked_sub(buckets)
            .ok_or_else(|| self.err("hash table buckets start before the buffer"))?;
        self.in_subtree(start, block, |d| {
            let controls = d.bytes_at(ctrl, control_count)?;
            let mut out = Vec::with_capacity(len.min(1024));
            for (i, &c) in controls.iter().take(cap).enumerate() {
                if c & 0x80 != 0 {
                    continue;
                }
                if out.len() == len {
                    return Err(d.err(format!("hash table holds more than its {len} entries")));
                }
                let at = ctrl - (i + 1) * es;
                out.push(d.entry(out.len(), kty, vty, at, at + ks)?);
            }
            if out.len() != len {
                return Err(d.err(format!(
                    "hash table holds {} entries, not its {len}",
                    out.len()
                )));
            }
            for i in cap..usize::min(2 * cap, control_count - cap) {
                if controls[i] != controls[i % cap] {
                    return Err(d.err(format!("hash table control byte {i} is not mirrored")));
                }
            }
            Ok(out)
        })
    }

    /// A B-tree (`ArchivedBTreeMap`/`ArchivedBTreeSet`): entries in key order.
    fn btree(
        &mut self,
        kty: &'a Type,
        vty: Option<&'a Type>,
        ks: usize,
        vs: usize,
        pos: usize,
    ) -> Result<Entries, DynError> {
        let len = self.u32_at(pos + 4)? as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        let root = self.target(pos, self.offset_at(pos)?)?;
        let node = Node { kty, vty, ks, vs };
        let entries = self.node(&node, root, 0)?;
        if entries.len() != len {
            return Err(self.err(format!(
                "B-tree holds {} entries, not its {len}",
                entries.len()
            )));
        }
        Ok(entries)
    }

    /// The B-tree node at `pos` and its children; `first` is the in-order index of its first
    /// entry (for error paths). Validation order is rkyv's: children, then the node's entries.
    fn node(&mut self, n: &Node<'a>, pos: usize, first: usize) -> Result<Entries, DynError> {
        let node_size = self.checked(
            add(n.ks, n.vs)
                .and_then(|s| mul(BTREE_E, s))
                .and_then(|s| add(1, s)),
        )?;
        self.check_subtree(pos, node_size)?;
        let key_at = |i: usize| pos + 1 + i * n.ks;
        let value_at = |i: usize| pos + 1 + BTREE_E * n.ks + i * n.vs;
        match self.array::<1>(pos)?[0] {
            0 => self.in_subtree(pos, node_size + 4, |d| {
                let len = d.u32_at(pos + node_size)? as usize;
                if len > BTREE_E {
                    return Err(d.err(format!(
                        "B-tree leaf holds {len} entries (at most {BTREE_E})"
                    )));
                }
                (0..len)
                    .map(|i| d.entry(first + i, n.kty, n.vty, key_at(i), value_at(i)))
                    .collect()
            }),
            1 => {
                self.enter()?;
                let out = self.in_subtree(pos, node_size + 4 * BTREE_E + 4, |d| {
                    // Children first: lesser[0..E], then greater.
                    let mut children: Vec<Entries> = Vec::with_capacity(BTREE_E + 1);
                    let mut next = first;
                    for i in 0..=BTREE_E {
                        let at = pos + node_size + 4 * i;
                        let offset = d.offset_at(at)?;
                        let child = if offset == 1 {
                            Vec::new()
                        } else {
                            let target = d.target(at, offset)?;
                            d.node(n, target, next)?
                        };
                        next += child.len() + 1;
                        children.push(child);
                    }
                    let mut out = Vec::new();
                    let mut index = first;
                    let mut children = children.into_iter();
                    for i in 0..BTREE_E {
                        let lesser = children.next().unwrap_or_default();
                        index += lesser.len();
                        out.extend(lesser);
                        out.push(d.entry(index, n.kty, n.vty, key_at(i), value_at(i))?);
                        index += 1;
                    }
                    out.extend(children.next().unwrap_or_default());
                    Ok(out)
                })?;
                self.depth -= 1;
                Ok(out)
            }
            k => Err(self.err(format!("invalid B-tree node kind {k}"))),
        }
    }
}

/// What every node of one B-tree holds.
struct Node<'a> {
    kty: &'a Type,
    vty: Option<&'a Type>,
    ks: usize,
    vs: usize,
}
