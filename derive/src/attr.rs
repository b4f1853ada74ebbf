//! Parsing of `#[rekord::record(...)]` arguments and of `#[record(...)]` field attributes.

use proc_macro2::{Span, TokenStream};
use syn::{Expr, Ident, Lit, LitStr, Path, meta::ParseNestedMeta, spanned::Spanned};

/// Collects every error of one expansion so they are all reported at once.
#[derive(Default)]
pub struct Ctxt {
    errors: Vec<syn::Error>,
}

impl Ctxt {
    /// Records an error at `span`.
    pub fn error(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.errors.push(syn::Error::new(span, msg));
    }

    /// Records an error spanning all of `tokens` (not only their first token).
    pub fn error_spanned(&mut self, tokens: impl quote::ToTokens, msg: impl std::fmt::Display) {
        self.errors.push(syn::Error::new_spanned(tokens, msg));
    }

    /// Records a ready-made error.
    pub fn push(&mut self, err: syn::Error) {
        self.errors.push(err);
    }

    /// Returns all errors combined, if any.
    pub fn finish(self) -> Option<syn::Error> {
        let mut it = self.errors.into_iter();
        let mut first = it.next()?;
        for e in it {
            first.combine(e);
        }
        Some(first)
    }
}

/// Which attribute is being expanded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `#[rekord::record]`: a record type with a tree.
    Record,
    /// `#[rekord::data]`: a nested type.
    Data,
}

/// Item-level options.
pub struct ItemArgs {
    pub tree: Option<LitStr>,
    pub version: Option<(u32, Span)>,
    pub krate: Option<Path>,
    pub migrate_from: Option<syn::Type>,
    /// `merge = "..."`: the tree is optimistic in synced databases, with this strategy.
    pub merge: Option<LitStr>,
}

const RECORD_KEYS: &str = "`tree`, `version`, `migrate_from`, `merge`, `crate`";

/// The strategies `merge = "..."` accepts (`larger-wins:<field>` besides).
pub const MERGES: &str = "\"last-write-wins\", \"local-wins\", \"remote-wins\", \"three-way\" or \"larger-wins:<field>\"";
const DATA_KEYS: &str = "`crate`";

fn set_once<T>(cx: &mut Ctxt, slot: &mut Option<T>, value: T, name: &str, span: Span) {
    if slot.is_some() {
        cx.error(span, format!("`{name}` is already specified"));
    } else {
        *slot = Some(value);
    }
}

/// Parses the arguments of the attribute itself.
pub fn parse_item_args(cx: &mut Ctxt, kind: Kind, args: TokenStream) -> ItemArgs {
    let mut out = ItemArgs {
        tree: None,
        version: None,
        krate: None,
        migrate_from: None,
        merge: None,
    };
    if args.is_empty() {
        return out;
    }
    let parser = syn::meta::parser(|meta: ParseNestedMeta| {
        let span = meta.path.span();
        if kind == Kind::Data && (meta.path.is_ident("tree") || meta.path.is_ident("version")) {
            let _ = meta.value().and_then(|v| v.parse::<Lit>());
            cx.error(
                span,
                "`#[rekord::data]` types have no tree or version (only `#[rekord::record]` types do); the only option here is `crate`",
            );
        } else if meta.path.is_ident("tree") {
            match meta.value()?.parse::<Lit>()? {
                Lit::Str(lit) => {
                    if let Some(problem) = tree_name_problem(&lit.value()) {
                        cx.error(lit.span(), problem);
                    }
                    set_once(cx, &mut out.tree, lit, "tree", span);
                }
                other => cx.error_spanned(other, "`tree` must be a string such as \"parts\""),
            }
        } else if meta.path.is_ident("version") {
            match meta.value()?.parse::<Lit>()? {
                Lit::Int(lit) if lit.suffix().is_empty() => match lit.base10_parse::<u32>() {
                    Ok(0) => cx.error(lit.span(), "schema versions start at 1"),
                    Ok(v) => set_once(cx, &mut out.version, (v, lit.span()), "version", span),
                    Err(_) => cx.error(
                        lit.span(),
                        "`version` must be an integer from 1 to 4294967295",
                    ),
                },
                other => cx.error_spanned(
                    other,
                    "`version` must be a plain integer from 1 to 4294967295 (no quotes, no suffix)",
                ),
            }
        } else if meta.path.is_ident("merge") && kind == Kind::Record {
            match meta.value()?.parse::<Lit>()? {
                Lit::Str(lit) => set_once(cx, &mut out.merge, lit, "merge", span),
                other => cx.error_spanned(other, format!("`merge` must be one of {MERGES}")),
            }
        } else if meta.path.is_ident("migrate_from") && kind == Kind::Record {
            let ty: syn::Type = meta.value()?.parse()?;
            set_once(cx, &mut out.migrate_from, ty, "migrate_from", span);
        } else if meta.path.is_ident("crate") {
            match meta.value()?.parse::<Lit>()? {
                Lit::Str(lit) => match lit.parse::<Path>() {
                    Ok(p) => set_once(cx, &mut out.krate, p, "crate", span),
                    Err(_) => cx.error(lit.span(), "`crate` must be a path such as \"::rekord\""),
                },
                other => {
                    cx.error_spanned(other, "`crate` must be a string path such as \"::rekord\"")
                }
            }
        } else {
            let keys = if kind == Kind::Record {
                RECORD_KEYS
            } else {
                DATA_KEYS
            };
            let name = meta
                .path
                .get_ident()
                .map_or_else(|| "this".to_string(), |i| format!("`{i}`"));
            return Err(meta.error(format!("unknown option {name}; expected one of {keys}")));
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        cx.push(e);
    }
    out
}

/// Why `name` cannot be a tree name, if it cannot.
pub fn tree_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the tree name must not be empty".into());
    }
    if name.len() > 64 {
        return Some("the tree name must be at most 64 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.')))
    {
        return Some(format!(
            "the tree name may only contain lowercase ASCII letters, digits, `_`, `-` and `.`; found {c:?}"
        ));
    }
    None
}

/// Field-level options.
#[derive(Default)]
pub struct FieldArgs {
    /// `None`: required; `Some(None)`: `Default::default()`; `Some(Some(e))`: `e`.
    pub default: Option<Option<Expr>>,
    /// Where `default` was written.
    pub default_path: Option<Path>,
}

/// Parses and removes the `#[record(...)]` attributes of a field.
pub fn take_field_args(cx: &mut Ctxt, attrs: &mut Vec<syn::Attribute>) -> FieldArgs {
    let mut out = FieldArgs::default();
    let mut keep = Vec::with_capacity(attrs.len());
    for attr in attrs.drain(..) {
        if !attr.path().is_ident("record") {
            keep.push(attr);
            continue;
        }
        let res = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("default") {
                let value = if meta.input.peek(syn::Token![=]) {
                    Some(meta.value()?.parse::<Expr>()?)
                } else {
                    None
                };
                if out.default.is_some() {
                    cx.error_spanned(&meta.path, "`default` is already specified");
                } else {
                    out.default = Some(value);
                    out.default_path = Some(meta.path.clone());
                }
                Ok(())
            } else {
                let name = meta
                    .path
                    .get_ident()
                    .map_or_else(|| "this".to_string(), |i: &Ident| format!("`{i}`"));
                Err(meta.error(format!(
                    "unknown field option {name}; expected `default` or `default = <expr>`"
                )))
            }
        });
        if let Err(e) = res {
            cx.push(e);
        }
    }
    *attrs = keep;
    out
}

/// Rejects `#[record(...)]` where no option exists (on variants), and removes it.
pub fn reject_record_attrs(cx: &mut Ctxt, attrs: &mut Vec<syn::Attribute>, what: &str) {
    attrs.retain(|a| {
        if a.path().is_ident("record") {
            cx.error_spanned(a, format!("`#[record(...)]` has no options on {what}"));
            false
        } else {
            true
        }
    });
}

/// `PartName` -> `part_name`.
pub fn snake_case(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 4);
    let chars: Vec<char> = ident.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if i > 0 && (prev_lower || (next_lower && chars[i - 1].is_uppercase())) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_names() {
        assert_eq!(snake_case("Part"), "part");
        assert_eq!(snake_case("PartName"), "part_name");
        assert_eq!(snake_case("HTTPServer"), "http_server");
        assert_eq!(snake_case("Part2Kind"), "part2_kind");
    }

    #[test]
    fn tree_names() {
        assert!(tree_name_problem("parts").is_none());
        assert!(tree_name_problem("").is_some());
        assert!(tree_name_problem("Parts").is_some());
        assert!(tree_name_problem(&"a".repeat(65)).is_some());
    }
}
