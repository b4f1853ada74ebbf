//! What rkyv's hash tables and B-trees need from keys: the hash (FxHasher64 fed by std's
//! `Hash` of the *native* key, emulated here per type), the order (the native derived `Ord`,
//! emulated), and the swiss-table placement.
//!
//! Keys reaching these functions have already been checked against their type by encoding
//! them, so mismatches (which cannot happen) fall back to harmless defaults.

use super::layout::Layout;
use super::value::field;
use super::{Fields, Value};
use crate::schema::{Type, TypeDef, VariantKind};
use std::cmp::Ordering;

/// rkyv's `FxHasher64` (`rkyv/src/hash.rs`).
#[derive(Default)]
pub(crate) struct Fx(u64);

impl Fx {
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }

    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    /// `Hasher::write`: 8-byte little-endian words, then a 4-, 2- and 1-byte tail.
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let mut rest = chunks.remainder();
        if rest.len() >= 4 {
            self.word(u64::from(u32::from_le_bytes([
                rest[0], rest[1], rest[2], rest[3],
            ])));
            rest = &rest[4..];
        }
        if rest.len() >= 2 {
            self.word(u64::from(u16::from_le_bytes([rest[0], rest[1]])));
            rest = &rest[2..];
        }
        if let Some(&b) = rest.first() {
            self.word(u64::from(b));
        }
    }

    fn u128(&mut self, v: u128) {
        self.word(v as u64);
        self.word((v >> 64) as u64);
    }

    /// `write_usize` / `write_length_prefix` (rkyv hashes usize as its 32-bit `FixedUsize`).
    fn usize(&mut self, n: usize) {
        self.word(u64::from(n as u32));
    }
}

/// The little-endian bytes of an integer value (what `hash_slice` writes for integers).
fn int_bytes(v: &Value) -> Option<Vec<u8>> {
    Some(match v {
        Value::U8(x) => x.to_le_bytes().to_vec(),
        Value::U16(x) => x.to_le_bytes().to_vec(),
        Value::U32(x) => x.to_le_bytes().to_vec(),
        Value::U64(x) => x.to_le_bytes().to_vec(),
        Value::U128(x) => x.to_le_bytes().to_vec(),
        Value::I8(x) => x.to_le_bytes().to_vec(),
        Value::I16(x) => x.to_le_bytes().to_vec(),
        Value::I32(x) => x.to_le_bytes().to_vec(),
        Value::I64(x) => x.to_le_bytes().to_vec(),
        Value::I128(x) => x.to_le_bytes().to_vec(),
        _ => return None,
    })
}

fn is_int(ty: &Type) -> bool {
    matches!(
        ty,
        Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::U128
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::I128
    )
}

/// Feeds `v` (of type `ty`) to `h` the way std's `Hash` for the native type would.
pub(crate) fn hash(layout: &Layout<'_>, ty: &Type, v: &Value, h: &mut Fx) {
    match (ty, v) {
        (_, Value::Box(inner)) => hash(layout, ty_unbox(ty), inner, h),
        (Type::Bool, Value::Bool(b)) => h.word(u64::from(*b)),
        (Type::Char, Value::Char(c)) => h.word(u64::from(u32::from(*c))),
        (Type::U128, Value::U128(x)) => h.u128(*x),
        (Type::I128, Value::I128(x)) => h.u128(*x as u128),
        (_, Value::U8(x)) => h.word(u64::from(*x)),
        (_, Value::U16(x)) => h.word(u64::from(*x)),
        (_, Value::U32(x)) => h.word(u64::from(*x)),
        (_, Value::U64(x)) => h.word(*x),
        (_, Value::I8(x)) => h.word(u64::from(*x as u8)),
        (_, Value::I16(x)) => h.word(u64::from(*x as u16)),
        (_, Value::I32(x)) => h.word(u64::from(*x as u32)),
        (_, Value::I64(x)) => h.word(*x as u64),
        // Floats are not `Hash`; any deterministic choice will do.
        (_, Value::F32(x)) => h.word(u64::from(x.to_bits())),
        (_, Value::F64(x)) => h.word(x.to_bits()),
        (_, Value::String(s)) => {
            h.bytes(s.as_bytes());
            h.word(0xff);
        }
        // uuid hashes its 16 bytes with one `write`, without a length prefix.
        (_, Value::Uuid(u)) => h.bytes(u.as_bytes()),
        (Type::Option(inner), Value::Option(o)) => {
            // derived Hash: the discriminant as isize (rkyv: as i64), then the payload.
            h.word(u64::from(o.is_some()));
            if let Some(x) = o {
                hash(layout, inner, x, h);
            }
        }
        (Type::Set { item, .. }, Value::Seq(xs)) => {
            // BTreeSet: the length, then each element (no slice shortcut).
            h.usize(xs.len());
            xs.iter().for_each(|x| hash(layout, item, x, h));
        }
        (Type::Vec(inner) | Type::Array(inner, _), Value::Seq(xs)) => {
            h.usize(xs.len());
            if is_int(inner) {
                // Integer slices are hashed with one `write` of all their bytes.
                let all: Vec<u8> = xs.iter().filter_map(int_bytes).flatten().collect();
                h.bytes(&all);
            } else {
                xs.iter().for_each(|x| hash(layout, inner, x, h));
            }
        }
        (Type::Tuple(tys), Value::Tuple(xs)) => {
            tys.iter().zip(xs).for_each(|(t, x)| hash(layout, t, x, h));
        }
        (Type::Map { key, value, .. }, Value::Map(es)) => {
            h.usize(es.len());
            for (k, v) in es {
                hash(layout, key, k, h);
                hash(layout, value, v, h);
            }
        }
        (Type::Key { .. }, Value::Key { id, rev }) => {
            h.word(*id);
            h.word(u64::from(*rev));
        }
        (Type::Named(name), _) => match (layout.def(name), v) {
            (Ok(TypeDef::Struct(fs)), Value::Struct(vals)) => {
                for (i, f) in fs.iter().enumerate() {
                    if let Some(x) = field(vals, &f.name, i) {
                        hash(layout, &f.ty, x, h);
                    }
                }
            }
            (Ok(TypeDef::Enum(vs)), Value::Enum { variant, fields }) => {
                let Some(index) = vs.iter().position(|v| v.name == *variant) else {
                    return;
                };
                if vs.len() > 1 {
                    h.word(index as u64);
                }
                match (&vs[index].kind, fields) {
                    (VariantKind::Tuple(tys), Fields::Tuple(xs)) => {
                        tys.iter().zip(xs).for_each(|(t, x)| hash(layout, t, x, h));
                    }
                    (VariantKind::Named(fs), Fields::Named(vals)) => {
                        for (i, f) in fs.iter().enumerate() {
                            if let Some(x) = field(vals, &f.name, i) {
                                hash(layout, &f.ty, x, h);
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn ty_unbox(ty: &Type) -> &Type {
    match ty {
        Type::Box(inner) => inner,
        other => other,
    }
}

/// Compares two keys of type `ty` the way the native derived `Ord` would.
pub(crate) fn cmp(layout: &Layout<'_>, ty: &Type, a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Box(a), Value::Box(b)) => cmp(layout, ty_unbox(ty), a, b),
        (Value::Unit, Value::Unit) => Ordering::Equal,
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::U8(a), Value::U8(b)) => a.cmp(b),
        (Value::U16(a), Value::U16(b)) => a.cmp(b),
        (Value::U32(a), Value::U32(b)) => a.cmp(b),
        (Value::U64(a), Value::U64(b)) => a.cmp(b),
        (Value::U128(a), Value::U128(b)) => a.cmp(b),
        (Value::I8(a), Value::I8(b)) => a.cmp(b),
        (Value::I16(a), Value::I16(b)) => a.cmp(b),
        (Value::I32(a), Value::I32(b)) => a.cmp(b),
        (Value::I64(a), Value::I64(b)) => a.cmp(b),
        (Value::I128(a), Value::I128(b)) => a.cmp(b),
        (Value::F32(a), Value::F32(b)) => a.total_cmp(b),
        (Value::F64(a), Value::F64(b)) => a.total_cmp(b),
        (Value::Char(a), Value::Char(b)) => a.cmp(b),
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Uuid(a), Value::Uuid(b)) => a.cmp(b),
        (Value::Key { id, rev }, Value::Key { id: i2, rev: r2 }) => (id, rev).cmp(&(i2, r2)),
        (Value::Option(a), Value::Option(b)) => match (a, b) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => match ty {
                Type::Option(inner) => cmp(layout, inner, a, b),
                _ => Ordering::Equal,
            },
        },
        (Value::Seq(a), Value::Seq(b)) => {
            let inner = match ty {
                Type::Vec(i) | Type::Array(i, _) | Type::Set { item: i, .. } => i.as_ref(),
                _ => ty,
            };
            lexicographic(a.iter().zip(b), a.len(), b.len(), |x, y| {
                cmp(layout, inner, x, y)
            })
        }
        (Value::Tuple(a), Value::Tuple(b)) => match ty {
            Type::Tuple(tys) => {
                for ((t, x), y) in tys.iter().zip(a).zip(b) {
                    let o = cmp(layout, t, x, y);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.len().cmp(&b.len())
            }
            _ => Ordering::Equal,
        },
        (Value::Map(a), Value::Map(b)) => match ty {
            Type::Map { key, value, .. } => {
                lexicographic(a.iter().zip(b), a.len(), b.len(), |x, y| {
                    cmp(layout, key, &x.0, &y.0).then_with(|| cmp(layout, value, &x.1, &y.1))
                })
            }
            _ => Ordering::Equal,
        },
        (Value::Struct(a), Value::Struct(b)) => match ty {
            Type::Named(name) => match layout.def(name) {
                Ok(TypeDef::Struct(fs)) => fields_cmp(layout, fs, a, b),
                _ => Ordering::Equal,
            },
            _ => Ordering::Equal,
        },
        (
            Value::Enum {
                variant: va,
                fields: fa,
            },
            Value::Enum {
                variant: vb,
                fields: fb,
            },
        ) => {
            let Type::Named(name) = ty else {
                return Ordering::Equal;
            };
            let Ok(TypeDef::Enum(vs)) = layout.def(name) else {
                return Ordering::Equal;
            };
            let ia = vs.iter().position(|v| v.name == *va);
            let ib = vs.iter().position(|v| v.name == *vb);
            match (ia, ib) {
                (Some(ia), Some(ib)) if ia == ib => match (&vs[ia].kind, fa, fb) {
                    (VariantKind::Tuple(tys), Fields::Tuple(xa), Fields::Tuple(xb)) => {
                        for ((t, x), y) in tys.iter().zip(xa).zip(xb) {
                            let o = cmp(layout, t, x, y);
                            if o != Ordering::Equal {
                                return o;
                            }
                        }
                        Ordering::Equal
                    }
                    (VariantKind::Named(fs), Fields::Named(xa), Fields::Named(xb)) => {
                        fields_cmp(layout, fs, xa, xb)
                    }
                    _ => Ordering::Equal,
                },
                (ia, ib) => ia.cmp(&ib),
            }
        }
        _ => Ordering::Equal,
    }
}

fn fields_cmp(
    layout: &Layout<'_>,
    fs: &[crate::schema::Field],
    a: &[(String, Value)],
    b: &[(String, Value)],
) -> Ordering {
    for (i, f) in fs.iter().enumerate() {
        if let (Some(x), Some(y)) = (field(a, &f.name, i), field(b, &f.name, i)) {
            let o = cmp(layout, &f.ty, x, y);
            if o != Ordering::Equal {
                return o;
            }
        }
    }
    Ordering::Equal
}

/// Slice order: the first differing pair decides, then the length.
fn lexicographic<X, Y>(
    pairs: impl Iterator<Item = (X, Y)>,
    len_a: usize,
    len_b: usize,
    mut f: impl FnMut(X, Y) -> Ordering,
) -> Ordering {
    for (x, y) in pairs {
        let o = f(x, y);
        if o != Ordering::Equal {
            return o;
        }
    }
    len_a.cmp(&len_b)
}

/// The capacity rkyv gives a hash table of `len` entries (load factor 7/8).
pub(crate) fn capacity(len: usize) -> Option<usize> {
    if len == 0 {
        Some(0)
    } else {
        Some(usize::max(len.checked_mul(8)? / 7, len + 1))
    }
}

/// The swiss-table placement of rkyv's `ArchivedHashTable::serialize_from_iter`: the control
/// bytes, and for each bucket the index of the item it holds.
pub(crate) fn place(hashes: &[u64], cap: usize) -> Result<(Vec<u8>, Vec<Option<usize>>), String> {
    if cap <= hashes.len() {
        return Err("hash table capacity too small".into());
    }
    let probe_cap = cap.next_multiple_of(16);
    let control_count = probe_cap + 15;
    let mask = control_count.next_power_of_two() - 1;
    let mut ctrl = vec![0xffu8; control_count];
    let mut slots: Vec<Option<usize>> = vec![None; cap];
    for (i, &h) in hashes.iter().enumerate() {
        let h2 = (h >> 57) as u8;
        let mut pos = (h % cap as u64) as usize;
        let mut stride = 0usize;
        // Triangular probing over a power of two visits every group: this ends well before.
        let mut rounds = 0usize;
        'probe: loop {
            for j in 0..16 {
                if ctrl.get(pos + j).is_some_and(|c| c & 0x80 != 0) {
                    let index = (pos + j) % cap;
                    if slots[index].is_some() {
                        return Err(format!("hash table bucket {index} used twice"));
                    }
                    ctrl[index] = h2;
                    if index < control_count - cap {
                        ctrl[cap + index] = h2;
                    }
                    slots[index] = Some(i);
                    break 'probe;
                }
            }
            loop {
                rounds += 1;
                if rounds > 2 * (mask + 1) {
                    return Err("hash table has no free bucket".into());
                }
                stride += 16;
                pos = (pos + stride) & mask;
                if pos < probe_cap {
                    break;
                }
            }
        }
    }
    Ok((ctrl, slots))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::schema::Schema;
    use rkyv::hash::{FxHasher64, hash_value};
    use std::collections::BTreeSet;

    fn ours(ty: Type, v: Value) -> u64 {
        let schema = Schema {
            tree: "t".into(),
            version: 1,
            root: Type::Unit,
            types: Default::default(),
        };
        let layout = Layout::new(&schema);
        let mut h = Fx::default();
        hash(&layout, &ty, &v, &mut h);
        h.finish()
    }

    fn b(t: Type) -> Box<Type> {
        Box::new(t)
    }

    #[test]
    fn hashes_match_rkyv() {
        let s = |x: &str| Value::String(x.to_owned());
        assert_eq!(
            ours(Type::U32, Value::U32(5)),
            hash_value::<_, FxHasher64>(&5u32)
        );
        assert_eq!(
            ours(Type::I8, Value::I8(-3)),
            hash_value::<_, FxHasher64>(&-3i8)
        );
        assert_eq!(
            ours(Type::I64, Value::I64(-3)),
            hash_value::<_, FxHasher64>(&-3i64)
        );
        assert_eq!(
            ours(Type::I128, Value::I128(i128::MIN + 9)),
            hash_value::<_, FxHasher64>(&(i128::MIN + 9))
        );
        assert_eq!(
            ours(Type::Char, Value::Char('é')),
            hash_value::<_, FxHasher64>(&'é')
        );
        assert_eq!(
            ours(Type::Bool, Value::Bool(true)),
            hash_value::<_, FxHasher64>(&true)
        );
        for x in [
            "",
            "a",
            "abcdefg",
            "abcdefgh",
            "abcdefghijklmnopq",
            "héllo wörld!!",
        ] {
            assert_eq!(ours(Type::String, s(x)), hash_value::<_, FxHasher64>(x));
        }
        assert_eq!(
            ours(
                Type::Tuple(vec![Type::U8, Type::String]),
                Value::Tuple(vec![Value::U8(1), s("yy")])
            ),
            hash_value::<_, FxHasher64>(&(1u8, "yy".to_owned()))
        );
        assert_eq!(
            ours(
                Type::Option(b(Type::U16)),
                Value::Option(Some(Box::new(Value::U16(3))))
            ),
            hash_value::<_, FxHasher64>(&Some(3u16))
        );
        assert_eq!(
            ours(Type::Option(b(Type::U16)), Value::Option(None)),
            hash_value::<_, FxHasher64>(&None::<u16>)
        );
        assert_eq!(
            ours(
                Type::Vec(b(Type::U16)),
                Value::Seq(vec![Value::U16(1), Value::U16(2), Value::U16(3)])
            ),
            hash_value::<_, FxHasher64>(&vec![1u16, 2, 3])
        );
        assert_eq!(
            ours(
                Type::Vec(b(Type::Bool)),
                Value::Seq(vec![Value::Bool(true), Value::Bool(false)])
            ),
            hash_value::<_, FxHasher64>(&vec![true, false])
        );
        assert_eq!(
            ours(
                Type::Array(b(Type::U8), 3),
                Value::Seq(vec![Value::U8(1), Value::U8(2), Value::U8(3)])
            ),
            hash_value::<_, FxHasher64>(&[1u8, 2, 3])
        );
        assert_eq!(
            ours(Type::Vec(b(Type::String)), Value::Seq(vec![s("x")])),
            hash_value::<_, FxHasher64>(&vec!["x".to_owned()])
        );
        let u = uuid::Uuid::from_bytes([7; 16]);
        assert_eq!(
            ours(Type::Uuid, Value::Uuid(u)),
            hash_value::<_, FxHasher64>(&u)
        );
        assert_eq!(
            ours(Type::Box(b(Type::U64)), Value::Box(Box::new(Value::U64(9)))),
            hash_value::<_, FxHasher64>(&Box::new(9u64))
        );
        assert_eq!(
            ours(
                Type::Set {
                    ordered: true,
                    item: b(Type::U8)
                },
                Value::Seq(vec![Value::U8(1), Value::U8(2)])
            ),
            hash_value::<_, FxHasher64>(&BTreeSet::from([1u8, 2]))
        );
        assert_eq!(
            ours(Type::Key { tree: "t".into() }, Value::Key { id: 4, rev: 5 }),
            hash_value::<_, FxHasher64>(&crate::Key::<crate::schema::dynamic::tests::Rec>::new(
                4, 5
            ))
        );
        assert_eq!(
            ours(Type::Unit, Value::Unit),
            hash_value::<_, FxHasher64>(&())
        );
    }

    #[test]
    fn placement_fills_every_item_once() {
        for len in 1..100usize {
            let cap = capacity(len).unwrap();
            let hashes: Vec<u64> = (0..len as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            let (ctrl, slots) = place(&hashes, cap).unwrap();
            assert_eq!(slots.iter().flatten().count(), len);
            assert_eq!(
                ctrl.iter().take(cap).filter(|c| *c & 0x80 == 0).count(),
                len
            );
        }
        assert!(place(&[1, 2], 2).is_err());
    }
}
