//! Comparing schemas by structure, type names aside.
//!
//! The names of the record type and of nested `#[rekord::data]` types are kept in stored
//! schemas (a viewer shows them) but are not part of the layout: renaming a Rust type, or
//! moving it to another module, changes nothing in the stored bytes.

use super::{Field, Schema, Type, TypeDef, Variant, VariantKind};
use std::collections::HashMap;

impl Schema {
    /// Whether `self` and `other` describe the same layout: the same tree, version and
    /// structure (field and variant names and order, field types, defaults), whatever the
    /// user types are named. A type renamed consistently everywhere is the same schema; two
    /// types merged into one, or one split in two, are not.
    pub fn same_shape(&self, other: &Schema) -> bool {
        self.tree == other.tree
            && self.version == other.version
            && Matcher {
                a: self,
                b: other,
                names: HashMap::new(),
                back: HashMap::new(),
            }
            .ty(&self.root, &other.root)
    }
}

/// Walks two schemas in parallel, pairing type names one to one.
struct Matcher<'s> {
    a: &'s Schema,
    b: &'s Schema,
    /// Names of `a` paired with names of `b`, and back.
    names: HashMap<&'s str, &'s str>,
    back: HashMap<&'s str, &'s str>,
}

impl<'s> Matcher<'s> {
    fn ty(&mut self, x: &'s Type, y: &'s Type) -> bool {
        match (x, y) {
            (Type::Named(a), Type::Named(b)) => self.named(a, b),
            (Type::Option(a), Type::Option(b))
            | (Type::Box(a), Type::Box(b))
            | (Type::Vec(a), Type::Vec(b)) => self.ty(a, b),
            (Type::Array(a, n), Type::Array(b, m)) => n == m && self.ty(a, b),
            (Type::Tuple(a), Type::Tuple(b)) => self.types(a, b),
            (
                Type::Map {
                    ordered: o1,
                    key: k1,
                    value: v1,
                },
                Type::Map {
                    ordered: o2,
                    key: k2,
                    value: v2,
                },
            ) => o1 == o2 && self.ty(k1, k2) && self.ty(v1, v2),
            (
                Type::Set {
                    ordered: o1,
                    item: i1,
                },
                Type::Set {
                    ordered: o2,
                    item: i2,
                },
            ) => o1 == o2 && self.ty(i1, i2),
            // Leaves (numbers, strings, keys into a tree, ...) and different kinds of type.
            _ => x == y,
        }
    }

    fn types(&mut self, a: &'s [Type], b: &'s [Type]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.ty(x, y))
    }

    fn named(&mut self, a: &'s str, b: &'s str) -> bool {
        match (self.names.get(a), self.back.get(b)) {
            (Some(&pb), Some(&pa)) => return pb == b && pa == a,
            (None, None) => {}
            // One of them is already paired with another type.
            _ => return false,
        }
        // Paired before comparing the definitions, so recursive types terminate.
        self.names.insert(a, b);
        self.back.insert(b, a);
        match (self.a.types.get(a), self.b.types.get(b)) {
            (Some(x), Some(y)) => self.def(x, y),
            (x, y) => x.is_none() && y.is_none(),
        }
    }

    fn def(&mut self, x: &'s TypeDef, y: &'s TypeDef) -> bool {
        match (x, y) {
            (TypeDef::Struct(a), TypeDef::Struct(b)) => self.fields(a, b),
            (TypeDef::Enum(a), TypeDef::Enum(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(v, w)| self.variant(v, w))
            }
            _ => false,
        }
    }

    fn fields(&mut self, a: &'s [Field], b: &'s [Field]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(f, g)| f.name == g.name && f.default == g.default && self.ty(&f.ty, &g.ty))
    }

    fn variant(&mut self, v: &'s Variant, w: &'s Variant) -> bool {
        v.name == w.name
            && match (&v.kind, &w.kind) {
                (VariantKind::Unit, VariantKind::Unit) => true,
                (VariantKind::Tuple(a), VariantKind::Tuple(b)) => self.types(a, b),
                (VariantKind::Named(a), VariantKind::Named(b)) => self.fields(a, b),
                _ => false,
            }
    }
}

/// `new` with its type names replaced by the names of the types of `old` at the same
/// places (the root, fields and variants of the same name), where that is unambiguous: so
/// that describing the changes from `old` to `new` lists what changed in the layout, not
/// renamed types.
pub(super) fn aligned(old: &Schema, new: &Schema) -> Schema {
    let mut map: HashMap<String, String> = HashMap::new();
    pair(old, new, &old.root, &new.root, &mut map);
    // Never rename onto a name that another type of `new` keeps.
    map.retain(|from, to| from == to || !new.types.contains_key(to.as_str()));
    let mut targets: Vec<&String> = map.values().collect();
    targets.sort();
    if targets.windows(2).any(|w| w[0] == w[1]) {
        return new.clone();
    }
    let rename = |n: &String| map.get(n).cloned().unwrap_or_else(|| n.clone());
    let mut out = new.clone();
    rename_type(&mut out.root, &rename);
    out.types = new
        .types
        .iter()
        .map(|(name, def)| {
            let mut def = def.clone();
            match &mut def {
                TypeDef::Struct(fs) => fs.iter_mut().for_each(|f| rename_type(&mut f.ty, &rename)),
                TypeDef::Enum(vs) => vs.iter_mut().for_each(|v| match &mut v.kind {
                    VariantKind::Unit => {}
                    VariantKind::Tuple(ts) => ts.iter_mut().for_each(|t| rename_type(t, &rename)),
                    VariantKind::Named(fs) => {
                        fs.iter_mut().for_each(|f| rename_type(&mut f.ty, &rename))
                    }
                }),
            }
            (rename(name), def)
        })
        .collect();
    out
}

/// Pairs the names of `new` (keys) with those of `old` met at the same places.
fn pair(old: &Schema, new: &Schema, o: &Type, n: &Type, map: &mut HashMap<String, String>) {
    match (o, n) {
        (Type::Named(a), Type::Named(b)) => {
            if map.contains_key(b) || map.values().any(|v| v == a) {
                return;
            }
            map.insert(b.clone(), a.clone());
            match (old.types.get(a), new.types.get(b)) {
                (Some(TypeDef::Struct(x)), Some(TypeDef::Struct(y))) => {
                    pair_fields(old, new, x, y, map)
                }
                (Some(TypeDef::Enum(x)), Some(TypeDef::Enum(y))) => {
                    for w in y {
                        let Some(v) = x.iter().find(|v| v.name == w.name) else {
                            continue;
                        };
                        match (&v.kind, &w.kind) {
                            (VariantKind::Tuple(p), VariantKind::Tuple(q)) => {
                                for (s, t) in p.iter().zip(q) {
                                    pair(old, new, s, t, map);
                                }
                            }
                            (VariantKind::Named(p), VariantKind::Named(q)) => {
                                pair_fields(old, new, p, q, map)
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        (Type::Option(a), Type::Option(b))
        | (Type::Box(a), Type::Box(b))
        | (Type::Vec(a), Type::Vec(b))
        | (Type::Array(a, _), Type::Array(b, _))
        | (Type::Set { item: a, .. }, Type::Set { item: b, .. }) => pair(old, new, a, b, map),
        (Type::Tuple(a), Type::Tuple(b)) => {
            for (s, t) in a.iter().zip(b) {
                pair(old, new, s, t, map);
            }
        }
        (
            Type::Map {
                key: k1, value: v1, ..
            },
            Type::Map {
                key: k2, value: v2, ..
            },
        ) => {
            pair(old, new, k1, k2, map);
            pair(old, new, v1, v2, map);
        }
        _ => {}
    }
}

fn pair_fields(
    old: &Schema,
    new: &Schema,
    x: &[Field],
    y: &[Field],
    map: &mut HashMap<String, String>,
) {
    for g in y {
        if let Some(f) = x.iter().find(|f| f.name == g.name) {
            pair(old, new, &f.ty, &g.ty, map);
        }
    }
}

fn rename_type(t: &mut Type, rename: &impl Fn(&String) -> String) {
    match t {
        Type::Named(n) => *n = rename(n),
        Type::Option(a) | Type::Box(a) | Type::Vec(a) | Type::Array(a, _) => rename_type(a, rename),
        Type::Set { item, .. } => rename_type(item, rename),
        Type::Tuple(ts) => ts.iter_mut().for_each(|t| rename_type(t, rename)),
        Type::Map { key, value, .. } => {
            rename_type(key, rename);
            rename_type(value, rename);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn schema(root: &str, types: &[(&str, TypeDef)]) -> Schema {
        Schema {
            tree: "t".into(),
            version: 1,
            root: Type::Named(root.into()),
            types: types
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn st(fields: &[(&str, Type)]) -> TypeDef {
        TypeDef::Struct(
            fields
                .iter()
                .map(|(n, t)| Field::new(n, t.clone(), false))
                .collect(),
        )
    }

    fn named(n: &str) -> Type {
        Type::Named(n.into())
    }

    #[test]
    fn renamed_types_are_the_same_shape_merged_or_changed_ones_are_not() {
        let leaf = st(&[("x", Type::U8)]);
        let a = schema(
            "R",
            &[
                (
                    "R",
                    st(&[
                        ("a", named("A")),
                        ("b", named("B")),
                        ("r", Type::Option(Box::new(named("R")))),
                    ]),
                ),
                ("A", leaf.clone()),
                ("B", leaf.clone()),
            ],
        );
        let renamed = schema(
            "S",
            &[
                (
                    "S",
                    st(&[
                        ("a", named("X")),
                        ("b", named("Y")),
                        ("r", Type::Option(Box::new(named("S")))),
                    ]),
                ),
                ("X", leaf.clone()),
                ("Y", leaf.clone()),
            ],
        );
        assert!(a.same_shape(&renamed));
        assert!(describe_changes_is_empty(&a, &renamed));
        // Two types merged into one.
        let merged = schema(
            "R",
            &[
                (
                    "R",
                    st(&[
                        ("a", named("A")),
                        ("b", named("A")),
                        ("r", Type::Option(Box::new(named("R")))),
                    ]),
                ),
                ("A", leaf.clone()),
            ],
        );
        assert!(!a.same_shape(&merged));
        // A field renamed.
        let field = schema(
            "R",
            &[
                (
                    "R",
                    st(&[
                        ("a", named("A")),
                        ("c", named("B")),
                        ("r", Type::Option(Box::new(named("R")))),
                    ]),
                ),
                ("A", leaf.clone()),
                ("B", leaf),
            ],
        );
        assert!(!a.same_shape(&field));
        let mut version = renamed.clone();
        version.version = 2;
        assert!(!a.same_shape(&version));
    }

    fn describe_changes_is_empty(a: &Schema, b: &Schema) -> bool {
        super::super::describe_changes(a, b).is_empty()
    }
}
