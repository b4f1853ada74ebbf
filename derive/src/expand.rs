//! Expansion: parse, validate, then emit the item with its derives and the rekord impls.

use crate::attr::{self, Ctxt, FieldArgs, Kind};
use crate::validate::check_type;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{Data, DeriveInput, Fields, Path, spanned::Spanned};

/// Entry point of both attributes.
pub fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let mut cx = Ctxt::default();
    let args = attr::parse_item_args(&mut cx, kind, args);
    let mut input: DeriveInput = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(_) => {
            let what = if kind == Kind::Record {
                "record"
            } else {
                "data"
            };
            let err = syn::Error::new_spanned(
                &item,
                format!(
                    "#[rekord::{what}] can only be placed on a struct with named fields or an enum"
                ),
            );
            let mut out = err.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    let krate: Path = args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::rekord));

    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        cx.error(
            input.generics.span(),
            "record and data types cannot be generic; declare a concrete type",
        );
    }

    let ident = input.ident.clone();
    let type_name = syn::ext::IdentExt::unraw(&ident).to_string();
    if kind == Kind::Record && args.tree.is_none() {
        let derived = attr::snake_case(&type_name);
        if let Some(problem) = attr::tree_name_problem(&derived) {
            cx.error(
                ident.span(),
                format!(
                    "the default tree name `{derived}` is invalid: {problem}; set `tree = \"...\"`"
                ),
            );
        }
    }
    let mut defaults: Vec<TokenStream> = Vec::new();

    let describe_body = match &mut input.data {
        Data::Struct(s) => match &mut s.fields {
            Fields::Named(named) => {
                let mut fields = Vec::new();
                for f in named.named.iter_mut() {
                    let fa = attr::take_field_args(&mut cx, &mut f.attrs);
                    check_type(&mut cx, &f.ty);
                    let fname = f
                        .ident
                        .as_ref()
                        .map(|i| syn::ext::IdentExt::unraw(i).to_string())
                        .unwrap_or_default();
                    add_serde_default(&ident, &fname, &fa, f, &mut defaults);
                    fields.push(field_desc(&krate, &fname, &f.ty, &fa));
                }
                quote! { #krate::schema::TypeDef::Struct(::std::vec![#(#fields),*]) }
            }
            Fields::Unnamed(_) | Fields::Unit => {
                cx.error(
                    ident.span(),
                    "types stored in rekord need named fields (`struct Name { field: Type }`); tuple and unit structs cannot evolve by field name",
                );
                quote! { #krate::schema::TypeDef::Struct(::std::vec![]) }
            }
        },
        Data::Enum(e) => {
            if e.variants.is_empty() {
                cx.error(
                    ident.span(),
                    "an enum stored in a record needs at least one variant",
                );
            }
            let mut variants = Vec::new();
            for v in e.variants.iter_mut() {
                attr::reject_record_attrs(&mut cx, &mut v.attrs, "enum variants");
                if let Some((_, d)) = &v.discriminant {
                    cx.error(
                        d.span(),
                        "explicit discriminants are not supported in records",
                    );
                }
                let vname = syn::ext::IdentExt::unraw(&v.ident).to_string();
                match &mut v.fields {
                    Fields::Unit => {
                        variants.push(quote! { #krate::schema::Variant::unit(#vname) });
                    }
                    Fields::Unnamed(un) => {
                        let mut tys = Vec::new();
                        for f in un.unnamed.iter_mut() {
                            attr::reject_record_attrs(
                                &mut cx,
                                &mut f.attrs,
                                "tuple variant fields",
                            );
                            check_type(&mut cx, &f.ty);
                            let ty = &f.ty;
                            tys.push(quote_spanned! {ty.span()=>
                                <#ty as #krate::Describe>::describe(__reg)
                            });
                        }
                        variants.push(
                            quote! { #krate::schema::Variant::tuple(#vname, ::std::vec![#(#tys),*]) },
                        );
                    }
                    Fields::Named(named) => {
                        let mut fields = Vec::new();
                        for f in named.named.iter_mut() {
                            let fa = attr::take_field_args(&mut cx, &mut f.attrs);
                            if let Some(path) = &fa.default_path {
                                cx.error_spanned(
                                    path,
                                    "`default` is not supported on fields of enum variants",
                                );
                            }
                            check_type(&mut cx, &f.ty);
                            let fname = f
                                .ident
                                .as_ref()
                                .map(|i| syn::ext::IdentExt::unraw(i).to_string())
                                .unwrap_or_default();
                            fields.push(field_desc(&krate, &fname, &f.ty, &fa));
                        }
                        variants.push(
                            quote! { #krate::schema::Variant::named(#vname, ::std::vec![#(#fields),*]) },
                        );
                    }
                }
            }
            quote! { #krate::schema::TypeDef::Enum(::std::vec![#(#variants),*]) }
        }
        Data::Union(u) => {
            cx.error(
                u.union_token.span,
                "unions cannot be stored in a record; use an enum",
            );
            quote! { #krate::schema::TypeDef::Struct(::std::vec![]) }
        }
    };

    // `merge = "..."`: the strategy, checked here (a larger-wins field must exist).
    let merge_fn = match &args.merge {
        None => quote! {},
        Some(lit) => {
            let value = lit.value();
            let field_names: Vec<String> = match &input.data {
                Data::Struct(s) => s
                    .fields
                    .iter()
                    .filter_map(|f| f.ident.as_ref())
                    .map(|i| syn::ext::IdentExt::unraw(i).to_string())
                    .collect(),
                _ => Vec::new(),
            };
            let expr = match value.as_str() {
                "last-write-wins" => Some(quote! { #krate::Merge::last_write_wins() }),
                "local-wins" => Some(quote! { #krate::Merge::local_wins() }),
                "remote-wins" => Some(quote! { #krate::Merge::remote_wins() }),
                "three-way" => Some(quote! { #krate::Merge::three_way() }),
                other => match other.strip_prefix("larger-wins:") {
                    Some(field) if field_names.iter().any(|f| f == field) => {
                        Some(quote! { #krate::Merge::larger_wins(#field) })
                    }
                    Some(field) => {
                        cx.error(
                            lit.span(),
                            format!("`larger-wins:{field}`: this type has no field `{field}`"),
                        );
                        None
                    }
                    None => {
                        cx.error(
                            lit.span(),
                            format!(
                                "unknown merge strategy `{other}`; expected {}",
                                attr::MERGES
                            ),
                        );
                        None
                    }
                },
            };
            match expr {
                Some(expr) => quote! {
                    fn __merge() -> ::core::option::Option<#krate::Merge> {
                        ::core::option::Option::Some(#expr)
                    }
                },
                None => quote! {},
            }
        }
    };

    if let Some(err) = cx.finish() {
        // Without the derives, serde/rkyv helper attributes would be secondary errors.
        strip_helper_attrs(&mut input);
        let mut out = err.to_compile_error();
        out.extend(quote! { #input });
        return out;
    }
    omit_field_bounds(&mut input);

    let serde_path = format!("{}::__private::serde", quote!(#krate)).replace(' ', "");
    let describe = quote! {
        impl #krate::Describe for #ident {
            fn describe(__reg: &mut #krate::schema::SchemaBuilder) -> #krate::schema::Type {
                __reg.define(#type_name, ::core::any::TypeId::of::<Self>(), |__reg| #describe_body)
            }
        }
    };
    let record_impl = if kind == Kind::Record {
        let tree = args
            .tree
            .as_ref()
            .map_or_else(|| attr::snake_case(&type_name), |t| t.value());
        let version = args.version.map_or(1, |(v, _)| v);
        let (from_older, chain_checks) = match &args.migrate_from {
            None => (quote! {}, quote! {}),
            Some(prev) => (
                quote! {
                    fn __from_older(
                        __version: u32,
                        __data: &[u8],
                    ) -> ::core::option::Option<::core::result::Result<Self, #krate::__private::ChainError>> {
                        #krate::__private::from_older_via::<#prev, Self>(__version, __data)
                    }
                },
                quote_spanned! {prev.span()=>
                    const _: () = {
                        ::core::assert!(
                            #krate::__private::same_str(<#prev as #krate::Record>::TREE, #tree),
                            "`migrate_from` must name an older version of the same tree (same `tree = ...`)"
                        );
                        ::core::assert!(
                            <#prev as #krate::Record>::VERSION < #version,
                            "`migrate_from` must name an older version (a smaller `version`)"
                        );
                    };
                },
            ),
        };
        quote! {
            impl #krate::Record for #ident {
                const TREE: &'static str = #tree;
                const VERSION: u32 = #version;

                fn __encode(
                    &self,
                    __out: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, #krate::__private::rancor::Error> {
                    #krate::__private::rkyv::api::high::to_bytes_in::<_, #krate::__private::rancor::Error>(self, __out)
                }

                fn __access(
                    __bytes: &[u8],
                ) -> ::core::result::Result<&#krate::__private::rkyv::Archived<Self>, #krate::__private::rancor::Error> {
                    #krate::__private::rkyv::access::<#krate::__private::rkyv::Archived<Self>, #krate::__private::rancor::Error>(__bytes)
                }

                fn __deserialize(
                    __archived: &#krate::__private::rkyv::Archived<Self>,
                ) -> ::core::result::Result<Self, #krate::__private::rancor::Error> {
                    #krate::__private::rkyv::deserialize::<Self, #krate::__private::rancor::Error>(__archived)
                }

                #from_older
                #merge_fn
            }

            #chain_checks
        }
    } else {
        quote! {}
    };

    let default_fns = if defaults.is_empty() {
        quote! {}
    } else {
        quote! {
            #[doc(hidden)]
            #[allow(non_snake_case)]
            impl #ident { #(#defaults)* }
        }
    };

    quote! {
        #[derive(
            #krate::__private::rkyv::Archive,
            #krate::__private::rkyv::Serialize,
            #krate::__private::rkyv::Deserialize,
            #krate::__private::serde::Serialize,
            #krate::__private::serde::Deserialize
        )]
        #[rkyv(crate = #krate::__private::rkyv, attr(allow(missing_docs)))]
        // Record types are never generic, so the field bounds rkyv would add are either
        // trivially true or errors reported elsewhere; omitting them makes recursive types work.
        #[rkyv(serialize_bounds(
            __S: #krate::__private::rkyv::ser::Writer + #krate::__private::rkyv::ser::Allocator,
            __S::Error: #krate::__private::rkyv::rancor::Source,
        ))]
        #[rkyv(deserialize_bounds(__D::Error: #krate::__private::rkyv::rancor::Source))]
        #[rkyv(bytecheck(bounds(
            __C: #krate::__private::rkyv::validation::ArchiveContext,
            __C::Error: #krate::__private::rkyv::rancor::Source,
        )))]
        #[serde(crate = #serde_path)]
        #input

        #default_fns

        const _: () = {
            #describe
            #record_impl
        };
    }
}

fn field_desc(krate: &Path, name: &str, ty: &syn::Type, fa: &FieldArgs) -> TokenStream {
    let has_default = fa.default.is_some();
    quote_spanned! {ty.span()=>
        #krate::schema::Field::new(#name, <#ty as #krate::Describe>::describe(__reg), #has_default)
    }
}

/// Adds the serde attribute matching a `#[record(default ...)]`.
fn add_serde_default(
    ident: &syn::Ident,
    fname: &str,
    fa: &FieldArgs,
    f: &mut syn::Field,
    defaults: &mut Vec<TokenStream>,
) {
    match &fa.default {
        None => {}
        Some(None) => f.attrs.push(syn::parse_quote!(#[serde(default)])),
        Some(Some(expr)) => {
            let fn_name = format_ident!("__rekord_default_{}", fname);
            let ty = &f.ty;
            defaults.push(quote! { fn #fn_name() -> #ty { #expr } });
            let path = format!("{ident}::{fn_name}");
            f.attrs.push(syn::parse_quote!(#[serde(default = #path)]));
        }
    }
}

fn all_fields(input: &mut DeriveInput) -> Vec<&mut syn::Field> {
    match &mut input.data {
        Data::Struct(s) => s.fields.iter_mut().collect(),
        Data::Enum(e) => e
            .variants
            .iter_mut()
            .flat_map(|v| v.fields.iter_mut())
            .collect(),
        Data::Union(u) => u.fields.named.iter_mut().collect(),
    }
}

/// Removes serde and rkyv helper attributes (used when the derives are not emitted).
fn strip_helper_attrs(input: &mut DeriveInput) {
    let foreign = |a: &syn::Attribute| a.path().is_ident("serde") || a.path().is_ident("rkyv");
    input.attrs.retain(|a| !foreign(a));
    if let Data::Enum(e) = &mut input.data {
        for v in e.variants.iter_mut() {
            v.attrs.retain(|a| !foreign(a));
        }
    }
    for f in all_fields(input) {
        f.attrs.retain(|a| !foreign(a));
    }
}

/// Adds `#[rkyv(omit_bounds)]` to every field (see the item-level bounds in `expand`).
fn omit_field_bounds(input: &mut DeriveInput) {
    for f in all_fields(input) {
        f.attrs.push(syn::parse_quote!(#[rkyv(omit_bounds)]));
    }
}
