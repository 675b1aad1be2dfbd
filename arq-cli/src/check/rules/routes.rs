//! auth-route-permission: every route a service serves is guarded by a permission or a policy.
//!
//! The service's Rust sources are parsed (syn) and every axum `.route(path, method_router)` call
//! is found. A route is guarded when its handler takes a guard extractor (`RequirePermission<P>`),
//! calls `authorize`/`authorize_with_request`/`require_permission` in its body, or when a guard
//! layer (`RequirePermissionLayer`, `PolicyGuardLayer`) is applied to the handler, to its method
//! router, or by `.layer`/`.route_layer` later in the same router chain (which covers every route
//! added before it). Health, metrics, OpenAPI and JWKS paths are public by default;
//! `[check] public_routes` names others, and `[check] route_guards` adds guard names.
//!
//! What it cannot see it does not report: a handler defined outside the service (a library
//! function) is assumed to guard itself, and a router assembled across statements only counts
//! layers in the same expression.

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::Span;
use quote::ToTokens;
use syn::visit::{self, Visit};

use crate::check::registry::{Rule, Severity};
use crate::check::{Ctx, Finding};

pub(crate) const RULES: &[Rule] = &[Rule::new(
    "auth-route-permission",
    Severity::Error,
    "Every route a service serves requires a permission (RequirePermission, RequirePermissionLayer) or a policy (PolicyGuardLayer, authorize), or is declared public.",
    "Take `RequirePermission<P>` in the handler, add `.route_layer(RequirePermissionLayer::new(\"read:thing\"))` or a `PolicyGuardLayer` after the route, call `authorize(..)` in the handler, or list the path in `[check] public_routes` of arq.toml.",
)
.security("8.1")];

/// Paths served without a permission unless a platform says otherwise.
const DEFAULT_PUBLIC: &[&str] = &[
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/openapi.json",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
];

/// Names that guard a route wherever they appear in its handler, method router or layers.
const GUARDS: &[&str] = &[
    "RequirePermission",
    "RequirePermissionLayer",
    "PolicyGuardLayer",
    "authorize",
    "authorize_with_request",
    "require_permission",
];

/// The axum method-router constructors whose last argument is the handler.
const METHODS: &[&str] = &[
    "get", "post", "put", "patch", "delete", "head", "options", "trace", "connect", "any", "on",
];

/// A handler function: whether its signature or body names a guard.
struct HandlerFn {
    guarded: bool,
}

/// One `.route(...)` call.
struct Route {
    path: String,
    line: u32,
    /// (method, handler name or `closure`, guarded).
    handlers: Vec<(String, String, Option<bool>)>,
    /// A guard layer on the method router or later in the chain.
    layered: bool,
}

fn mentions_guard(tokens: &proc_macro2::TokenStream, guards: &BTreeSet<String>) -> bool {
    tokens.clone().into_iter().any(|t| match t {
        proc_macro2::TokenTree::Ident(i) => guards.contains(&i.to_string()),
        proc_macro2::TokenTree::Group(g) => mentions_guard(&g.stream(), guards),
        _ => false,
    })
}

fn line(span: Span) -> u32 {
    u32::try_from(span.start().line).unwrap_or(u32::MAX).max(1)
}

/// The path a route serves, as written: a literal, the literal of a `format!`, or the tokens.
fn route_path(e: &syn::Expr) -> String {
    match e {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => s.value(),
        syn::Expr::Reference(r) => route_path(&r.expr),
        syn::Expr::Macro(m) => m
            .mac
            .parse_body_with(
                syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
            )
            .ok()
            .and_then(|args| args.first().map(route_path))
            .map(|p| p.replace("{{", "{").replace("}}", "}"))
            .unwrap_or_else(|| m.mac.tokens.to_string()),
        other => other.to_token_stream().to_string().replace(' ', ""),
    }
}

/// Collects every function with whether it names a guard, by name and by `module::name` (the
/// module being the file's: `src/invitations.rs` → `invitations`).
struct Fns<'g> {
    guards: &'g BTreeSet<String>,
    /// The module of the file being visited (empty for the crate root).
    module: String,
    out: BTreeMap<String, HandlerFn>,
}

impl Fns<'_> {
    fn record(&mut self, sig: &syn::Signature, block: &syn::Block) {
        let guarded = mentions_guard(&sig.inputs.to_token_stream(), self.guards)
            || mentions_guard(&block.to_token_stream(), self.guards);
        let name = sig.ident.to_string();
        let qualified = (!self.module.is_empty()).then(|| format!("{}::{name}", self.module));
        for key in std::iter::once(name).chain(qualified) {
            let entry = self.out.entry(key).or_insert(HandlerFn { guarded });
            // Two functions of one key (same name in different modules, for the bare name):
            // guarded only if both are.
            entry.guarded &= guarded;
        }
    }

    /// The handler `name` (`create` or `invitations::create`): the qualified entry when there is
    /// one, so that `invitations::create` is not judged by a `workspaces::create` of the same name.
    fn get(&self, name: &str) -> Option<&HandlerFn> {
        self.out.get(name).or_else(|| {
            name.rsplit_once("::")
                .and_then(|(_, last)| self.out.get(last))
        })
    }
}

/// The module a source file defines: its stem, or its directory's name for `mod.rs`; empty for
/// `lib.rs` and `main.rs`.
fn module_of(rel: &str) -> String {
    let path = std::path::Path::new(rel);
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    match stem {
        "lib" | "main" => String::new(),
        "mod" => path
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_owned(),
        other => other.to_owned(),
    }
}

impl<'ast> Visit<'ast> for Fns<'_> {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.record(&f.sig, &f.block);
        visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.record(&f.sig, &f.block);
        visit::visit_impl_item_fn(self, f);
    }
}

/// Finds `.route(...)` calls, tracking guard layers applied further along the chain.
struct Routes<'g> {
    guards: &'g BTreeSet<String>,
    /// How many enclosing `.layer`/`.route_layer` calls with a guard cover the current receiver.
    covered: usize,
    out: Vec<Route>,
}

impl Routes<'_> {
    /// The handlers of a method router expression: `get(h)`, `get(h).post(h2)`, `on(filter, h)`.
    fn handlers(
        &self,
        e: &syn::Expr,
        out: &mut Vec<(String, String, Option<bool>)>,
        layered: &mut bool,
    ) {
        match e {
            syn::Expr::Call(c) => {
                let name = match &*c.func {
                    syn::Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
                    _ => None,
                };
                if let (Some(name), Some(h)) = (name, c.args.last())
                    && METHODS.contains(&name.as_str())
                {
                    out.push(self.handler(&name, h));
                }
            }
            syn::Expr::MethodCall(m) => {
                let name = m.method.to_string();
                if (name == "layer" || name == "route_layer")
                    && mentions_guard(&m.args.to_token_stream(), self.guards)
                {
                    *layered = true;
                } else if METHODS.contains(&name.as_str())
                    && let Some(h) = m.args.last()
                {
                    out.push(self.handler(&name, h));
                }
                self.handlers(&m.receiver, out, layered);
            }
            syn::Expr::Paren(p) => self.handlers(&p.expr, out, layered),
            _ => {}
        }
    }

    fn handler(&self, method: &str, h: &syn::Expr) -> (String, String, Option<bool>) {
        let method = method.to_ascii_uppercase();
        match h {
            syn::Expr::Path(p) => {
                // `module::handler` keeps its module, so same-named handlers stay apart.
                let segments: Vec<String> = p
                    .path
                    .segments
                    .iter()
                    .map(|s| s.ident.to_string())
                    .collect();
                let name = match segments.as_slice() {
                    [.., module, last]
                        if module != "crate" && module != "self" && module != "super" =>
                    {
                        format!("{module}::{last}")
                    }
                    [.., last] => last.clone(),
                    [] => String::new(),
                };
                (method, name, None)
            }
            // `handler.layer(guard)`, `handler.with_state(..)`.
            syn::Expr::MethodCall(m) => {
                if mentions_guard(&m.args.to_token_stream(), self.guards) {
                    (method, m.receiver.to_token_stream().to_string(), Some(true))
                } else {
                    self.handler(&method, &m.receiver)
                }
            }
            other => (
                method,
                "closure".to_owned(),
                Some(mentions_guard(&other.to_token_stream(), self.guards)),
            ),
        }
    }
}

impl<'ast> Visit<'ast> for Routes<'_> {
    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        let name = m.method.to_string();
        let guard_layer = (name == "layer" || name == "route_layer")
            && mentions_guard(&m.args.to_token_stream(), self.guards);
        if name == "route" && m.args.len() == 2 {
            let mut handlers = Vec::new();
            let mut layered = self.covered > 0;
            if let Some(router) = m.args.get(1) {
                self.handlers(router, &mut handlers, &mut layered);
            }
            if let Some(path) = m.args.first() {
                self.out.push(Route {
                    path: route_path(path),
                    line: line(m.method.span()),
                    handlers,
                    layered,
                });
            }
        }
        if guard_layer {
            self.covered += 1;
            self.visit_expr(&m.receiver);
            self.covered -= 1;
            for a in &m.args {
                self.visit_expr(a);
            }
        } else {
            visit::visit_expr_method_call(self, m);
        }
    }
}

fn is_public(path: &str, public: &[String]) -> bool {
    let path = path.trim_end_matches('/');
    DEFAULT_PUBLIC
        .iter()
        .map(|p| (*p).to_owned())
        .chain(public.iter().cloned())
        .any(|p| {
            let p = p.trim_end_matches('/').to_owned();
            path == p || path.ends_with(&p) && p.starts_with('/')
        })
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    let guards: BTreeSet<String> = GUARDS
        .iter()
        .map(|g| (*g).to_owned())
        .chain(ctx.settings.route_guards.iter().cloned())
        .collect();
    for dir in ctx.services.values() {
        let prefix = if dir == "." {
            "src/".to_owned()
        } else {
            format!("{dir}/src/")
        };
        let files: Vec<_> = ctx
            .files_where(|p| p.starts_with(&prefix) && p.ends_with(".rs"))
            .filter_map(|f| syn::parse_file(&f.text).ok().map(|ast| (f, ast)))
            .collect();
        let mut fns = Fns {
            guards: &guards,
            module: String::new(),
            out: BTreeMap::new(),
        };
        for (f, ast) in &files {
            fns.module = module_of(&f.rel);
            fns.visit_file(ast);
        }
        for (f, ast) in &files {
            let mut routes = Routes {
                guards: &guards,
                covered: 0,
                out: Vec::new(),
            };
            routes.visit_file(ast);
            for r in routes.out {
                if r.layered || is_public(&r.path, &ctx.settings.public_routes) {
                    continue;
                }
                for (method, handler, guarded) in &r.handlers {
                    let guarded = guarded.or_else(|| fns.get(handler).map(|h| h.guarded));
                    // A handler not defined in the service is a library's: not ours to judge.
                    if guarded != Some(false) {
                        continue;
                    }
                    out.push(Finding::new(
                        "auth-route-permission",
                        &f.rel,
                        r.line,
                        format!(
                            "route {method} {} (handler `{handler}`) requires no permission or policy",
                            r.path
                        ),
                    ));
                }
            }
        }
    }
}
