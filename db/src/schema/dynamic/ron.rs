//! [`Value`] -> pretty RON text that reads like the Rust value.

use super::{Fields, Value};

/// Values nested deeper than this are written as `()` (decoded values never are).
const MAX_RON_DEPTH: usize = 256;

/// Composite values shorter than this (and without line breaks) stay on one line.
const INLINE_WIDTH: usize = 60;

pub(crate) fn to_ron(value: &Value) -> String {
    render(value, 0, false)
}

/// The same text on one line: no line breaks at all (characters such as `'\n'` escaped),
/// for line-oriented files.
pub(crate) fn to_ron_line(value: &Value) -> String {
    render(value, 0, true)
}

fn indent(level: usize) -> String {
    "    ".repeat(level)
}

/// Renders `value` as if it started on a line indented `level` times (`line`: all on one
/// line).
fn render(value: &Value, level: usize, line: bool) -> String {
    if level > MAX_RON_DEPTH {
        return "()".to_owned();
    }
    match value {
        Value::Unit => "()".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::U8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::U128(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::I128(x) => x.to_string(),
        Value::F32(x) => float(f64::from(*x), format!("{x:?}")),
        Value::F64(x) => float(*x, format!("{x:?}")),
        Value::Char(c) if line => format!("'{}'", c.escape_debug()),
        Value::Char(c) => ::ron::to_string(c).unwrap_or_else(|_| format!("{c:?}")),
        Value::String(s) => string(s),
        Value::Uuid(u) => format!("\"{}\"", u.hyphenated()),
        Value::Option(None) => "None".to_owned(),
        Value::Option(Some(v)) => format!("Some({})", render(v, level, line)),
        Value::Box(v) => render(v, level, line),
        Value::Seq(xs) => list(
            "[",
            "]",
            xs.iter().map(|x| render(x, level + 1, line)).collect(),
            level,
            false,
            line,
        ),
        Value::Tuple(xs) => list(
            "(",
            ")",
            xs.iter().map(|x| render(x, level + 1, line)).collect(),
            level,
            xs.len() == 1,
            line,
        ),
        Value::Map(es) => list(
            "{",
            "}",
            es.iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        render(k, level + 1, line),
                        render(v, level + 1, line)
                    )
                })
                .collect(),
            level,
            false,
            line,
        ),
        Value::Key { id, rev } => format!("(id: {id}, rev: {rev})"),
        Value::Struct(fields) => named_fields("", fields, level, line),
        Value::Enum { variant, fields } => {
            let name = ident(variant);
            match fields {
                Fields::Unit => name,
                Fields::Tuple(xs) => {
                    let items = xs.iter().map(|x| render(x, level + 1, line)).collect();
                    format!("{name}{}", list("(", ")", items, level, false, line))
                }
                Fields::Named(fs) => named_fields(&name, fs, level, line),
            }
        }
    }
}

fn named_fields(name: &str, fields: &[(String, Value)], level: usize, line: bool) -> String {
    let items = fields
        .iter()
        .map(|(n, v)| format!("{}: {}", ident(n), render(v, level + 1, line)))
        .collect();
    format!("{name}{}", list("(", ")", items, level, false, line))
}

/// Joins rendered items in brackets: on one line if short, else one item per line.
fn list(
    open: &str,
    close: &str,
    items: Vec<String>,
    level: usize,
    single_tuple: bool,
    line: bool,
) -> String {
    if items.is_empty() {
        return format!("{open}{close}");
    }
    let one_line = line
        || (items.iter().all(|i| !i.contains('\n'))
            && items.iter().map(|i| i.len() + 2).sum::<usize>() <= INLINE_WIDTH);
    if one_line {
        // A one-element tuple needs a trailing comma to stay a tuple.
        let comma = if single_tuple { "," } else { "" };
        return format!("{open}{}{comma}{close}", items.join(", "));
    }
    let inner = indent(level + 1);
    let mut out = format!("{open}\n");
    for i in items {
        out.push_str(&inner);
        out.push_str(&i);
        out.push_str(",\n");
    }
    out.push_str(&indent(level));
    out.push_str(close);
    out
}

fn float(x: f64, text: String) -> String {
    if x.is_nan() {
        "NaN".to_owned()
    } else if x.is_infinite() {
        if x > 0.0 {
            "inf".to_owned()
        } else {
            "-inf".to_owned()
        }
    } else {
        text
    }
}

fn string(s: &str) -> String {
    ::ron::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// A field or variant name: as is if it is an identifier, else a raw identifier.
fn ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("r#{name}")
    }
}
