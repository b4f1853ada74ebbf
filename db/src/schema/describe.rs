//! [`Describe`] for the std types records commonly hold.

use super::{Describe, SchemaBuilder, Type};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

macro_rules! leaf {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl Describe for $t {
            fn describe(_: &mut SchemaBuilder) -> Type {
                Type::$v
            }
        }
    )*};
}

leaf! {
    () => Unit, bool => Bool, u8 => U8, u16 => U16, u32 => U32, u64 => U64, u128 => U128,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64, i128 => I128, f32 => F32, f64 => F64,
    char => Char, String => String, uuid::Uuid => Uuid,
}

impl<T: Describe> Describe for Option<T> {
    fn describe(b: &mut SchemaBuilder) -> Type {
        Type::Option(Box::new(T::describe(b)))
    }
}

impl<T: Describe> Describe for Box<T> {
    fn describe(b: &mut SchemaBuilder) -> Type {
        Type::Box(Box::new(T::describe(b)))
    }
}

impl<T: Describe> Describe for Vec<T> {
    fn describe(b: &mut SchemaBuilder) -> Type {
        Type::Vec(Box::new(T::describe(b)))
    }
}

impl<T: Describe, const N: usize> Describe for [T; N] {
    fn describe(b: &mut SchemaBuilder) -> Type {
        // Arrays longer than u32::MAX elements cannot be archived with 32-bit offsets anyway.
        Type::Array(
            Box::new(T::describe(b)),
            u32::try_from(N).unwrap_or(u32::MAX),
        )
    }
}

impl<K: Describe, V: Describe, S> Describe for HashMap<K, V, S> {
    fn describe(b: &mut SchemaBuilder) -> Type {
        Type::Map {
            ordered: false,
            key: Box::new(K::describe(b)),
            value: Box::new(V::describe(b)),
        }
    }
}

impl<K: Describe, V: Describe> Describe for BTreeMap<K, V> {
    fn describe(b: &mut SchemaBuilder) -> Type {
        Type::Map {
            ordered: true,
            key: Box::new(K::describe(b)),
            value: Box::new(V::describe(b)),
        }
    }
}

impl<T: Describe, S> Describe for HashSet<T, S> {
    fn describe(b: &mut SchemaBuilder) -> Type {
        Type::Set {
            ordered: false,
            item: Box::new(T::describe(b)),
        }
    }
}

impl<T: Describe> Describe for BTreeSet<T> {
    fn describe(b: &mut SchemaBuilder) -> Type {
        Type::Set {
            ordered: true,
            item: Box::new(T::describe(b)),
        }
    }
}

macro_rules! tuple {
    ($($n:ident),+) => {
        impl<$($n: Describe),+> Describe for ($($n,)+) {
            fn describe(b: &mut SchemaBuilder) -> Type {
                Type::Tuple(vec![$($n::describe(b)),+])
            }
        }
    };
}

tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);
tuple!(A, B, C, D, E, F);
tuple!(A, B, C, D, E, F, G);
tuple!(A, B, C, D, E, F, G, H);

impl<T: crate::Record> Describe for crate::Key<T> {
    fn describe(_: &mut SchemaBuilder) -> Type {
        Type::Key {
            tree: T::TREE.to_owned(),
        }
    }
}
