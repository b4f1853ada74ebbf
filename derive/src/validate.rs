//! Syntactic checks of field types: what can never be stored gets a spanned error here, with a
//! hint; everything else is checked by the `Describe` trait bound (whose error also points at
//! the field type).

use crate::attr::Ctxt;
use syn::{GenericArgument, PathArguments, Type};

/// Reports every part of `ty` that cannot be stored in a record.
pub fn check_type(cx: &mut Ctxt, ty: &Type) {
    match ty {
        Type::Reference(r) => cx.error_spanned(r,
            "references cannot be stored in a record; use an owned type (String instead of &str, Vec<T> instead of &[T])",
        ),
        Type::Ptr(p) => cx.error_spanned(p, "raw pointers cannot be stored in a record"),
        Type::BareFn(f) => cx.error_spanned(f, "function pointers cannot be stored in a record"),
        Type::TraitObject(t) => cx.error_spanned(t,
            "trait objects cannot be stored in a record; use an enum of the concrete types",
        ),
        Type::ImplTrait(t) => cx.error_spanned(t, "`impl Trait` cannot be stored in a record"),
        Type::Slice(s) => cx.error_spanned(s,
            "unsized slices cannot be stored in a record; use Vec<T> or [T; N]",
        ),
        Type::Never(n) => cx.error_spanned(n, "the never type cannot be stored in a record"),
        Type::Infer(i) => cx.error_spanned(i, "field types must be written out"),
        Type::Macro(m) => cx.error_spanned(m,
            "type macros are not supported in records; write the type out",
        ),
        Type::Paren(p) => check_type(cx, &p.elem),
        Type::Group(g) => check_type(cx, &g.elem),
        Type::Array(a) => check_type(cx, &a.elem),
        Type::Tuple(t) => {
            for e in &t.elems {
                check_type(cx, e);
            }
        }
        Type::Path(p) => {
            if p.qself.is_some() {
                cx.error_spanned(p, "qualified associated types are not supported in records");
                return;
            }
            if let Some(last) = p.path.segments.last() {
                let name = last.ident.to_string();
                if name == "usize" || name == "isize" {
                    let fix = if name == "usize" { "u64 or u32" } else { "i64 or i32" };
                    cx.error(
                        last.ident.span(),
                        format!(
                            "`{name}` has a platform-dependent size and cannot be stored portably; use {fix}"
                        ),
                    );
                }
            }
            for seg in &p.path.segments {
                if let PathArguments::AngleBracketed(args) = &seg.arguments {
                    for arg in &args.args {
                        if let GenericArgument::Type(t) = arg {
                            check_type(cx, t);
                        }
                    }
                }
            }
        }
        other => cx.error_spanned(other, "this type cannot be stored in a record"),
    }
}
