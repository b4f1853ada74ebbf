//! Paths to values inside a record, for error messages.

use super::DynError;
use std::fmt::Write as _;

/// One step from a value to a part of it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Seg<'a> {
    /// A struct field or an enum variant: `.name`.
    Field(&'a str),
    /// A tuple element: `.i`.
    Tuple(usize),
    /// A sequence element: `[i]`.
    Index(usize),
    /// A map or set entry: `{i}`.
    Entry(usize),
    /// The key of a map entry: `.key`.
    Key,
    /// The value of a map entry: `.value`.
    Value,
}

/// Renders segments as a path like `parts.dims.w`, `tags[3]` or `map{2}.value`.
pub(crate) fn render<'a>(segs: impl IntoIterator<Item = Seg<'a>>) -> String {
    let mut out = String::new();
    for seg in segs {
        let dot = if out.is_empty() { "" } else { "." };
        // Writing to a String cannot fail.
        let _ = match seg {
            Seg::Field(name) => write!(out, "{dot}{name}"),
            Seg::Tuple(i) => write!(out, "{dot}{i}"),
            Seg::Index(i) => write!(out, "[{i}]"),
            Seg::Entry(i) => write!(out, "{{{i}}}"),
            Seg::Key => write!(out, "{dot}key"),
            Seg::Value => write!(out, "{dot}value"),
        };
    }
    out
}

/// The current path of a decoder or encoder walking a value.
#[derive(Clone, Debug, Default)]
pub(crate) struct Path<'a> {
    segs: Vec<Seg<'a>>,
}

impl<'a> Path<'a> {
    pub(crate) fn push(&mut self, seg: Seg<'a>) {
        self.segs.push(seg);
    }

    pub(crate) fn pop(&mut self) {
        self.segs.pop();
    }

    /// An error at the current path.
    pub(crate) fn error(&self, message: impl Into<String>) -> DynError {
        DynError {
            path: render(self.segs.iter().copied()),
            message: message.into(),
        }
    }
}
