//! The dynamic value type.

/// A record value without its Rust type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `()`
    Unit,
    /// `bool`
    Bool(bool),
    /// `u8`
    U8(u8),
    /// `u16`
    U16(u16),
    /// `u32`
    U32(u32),
    /// `u64`
    U64(u64),
    /// `u128`
    U128(u128),
    /// `i8`
    I8(i8),
    /// `i16`
    I16(i16),
    /// `i32`
    I32(i32),
    /// `i64`
    I64(i64),
    /// `i128`
    I128(i128),
    /// `f32`
    F32(f32),
    /// `f64`
    F64(f64),
    /// `char`
    Char(char),
    /// `String`
    String(String),
    /// `uuid::Uuid`
    Uuid(uuid::Uuid),
    /// `Option<T>`
    Option(Option<Box<Value>>),
    /// `Box<T>`
    Box(Box<Value>),
    /// `Vec<T>`, `[T; N]`, `HashSet<T>` and `BTreeSet<T>` (sets in stored order).
    Seq(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// `HashMap<K, V>` and `BTreeMap<K, V>` (in stored order).
    Map(Vec<(Value, Value)>),
    /// `rekord::Key<T>`
    Key {
        /// The record id.
        id: u64,
        /// The revision.
        rev: u32,
    },
    /// A struct: its fields in schema order.
    Struct(Vec<(String, Value)>),
    /// An enum value.
    Enum {
        /// The variant name.
        variant: String,
        /// The variant's fields.
        fields: Fields,
    },
}

/// The fields of an enum variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Fields {
    /// `A`
    Unit,
    /// `A(x, y)`
    Tuple(Vec<Value>),
    /// `A { x: 1 }`
    Named(Vec<(String, Value)>),
}

impl Value {
    /// A short name of the value's kind, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Unit => "()",
            Value::Bool(_) => "bool",
            Value::U8(_) => "u8",
            Value::U16(_) => "u16",
            Value::U32(_) => "u32",
            Value::U64(_) => "u64",
            Value::U128(_) => "u128",
            Value::I8(_) => "i8",
            Value::I16(_) => "i16",
            Value::I32(_) => "i32",
            Value::I64(_) => "i64",
            Value::I128(_) => "i128",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Char(_) => "char",
            Value::String(_) => "String",
            Value::Uuid(_) => "Uuid",
            Value::Option(_) => "Option",
            Value::Box(_) => "Box",
            Value::Seq(_) => "sequence",
            Value::Tuple(_) => "tuple",
            Value::Map(_) => "map",
            Value::Key { .. } => "Key",
            Value::Struct(_) => "struct",
            Value::Enum { .. } => "enum",
        }
    }
}

/// Finds a field by name, trying position `hint` first (fields are usually in order).
pub(crate) fn field<'v>(
    fields: &'v [(String, Value)],
    name: &str,
    hint: usize,
) -> Option<&'v Value> {
    match fields.get(hint) {
        Some((n, v)) if n == name => Some(v),
        _ => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
    }
}
