//! The dynamic evaluation path: a tree-walking evaluator over [`Value`]s.
//!
//! Policies compiled against a schema use typed closures (see `compile`); this path serves
//! `dyn` values, expressions without a schema and the conformance suite. Every step is charged
//! against a cost budget so that no expression runs for long.

use std::cell::Cell;
use std::sync::Arc;

use super::ast::{Comprehension, Expr, ExprKind};
use super::functions;
use super::value::{EvalError, EvalResult, Key, MapValue, Value};

/// Where variables come from.
pub trait Activation {
    /// The value bound to a (possibly dotted) variable name.
    fn resolve(&self, name: &str) -> Option<Value>;
}

impl Activation for std::collections::HashMap<String, Value> {
    fn resolve(&self, name: &str) -> Option<Value> {
        self.get(name).cloned()
    }
}

/// No variables at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyActivation;

impl Activation for EmptyActivation {
    fn resolve(&self, _: &str) -> Option<Value> {
        None
    }
}

struct Scope<'a> {
    name: &'a str,
    /// Accumulators may hold an error that a later step absorbs (`false && error`).
    value: EvalResult,
    parent: Option<&'a Scope<'a>>,
}

impl Scope<'_> {
    fn find(&self, name: &str) -> Option<&EvalResult> {
        let mut s = Some(self);
        while let Some(sc) = s {
            if sc.name == name {
                return Some(&sc.value);
            }
            s = sc.parent;
        }
        None
    }
}

/// The tree-walking evaluator.
pub struct Interpreter<'a> {
    act: &'a dyn Activation,
    container: &'a str,
    cost: Cell<u64>,
    budget: u64,
}

const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "optional_type",
    "net.IP",
    "net.CIDR",
];

impl<'a> Interpreter<'a> {
    /// An evaluator over `act`, resolving names in `container`, stopping after `budget` cost units.
    pub fn new(act: &'a dyn Activation, container: &'a str, budget: u64) -> Self {
        Self {
            act,
            container,
            cost: Cell::new(0),
            budget,
        }
    }

    /// Cost units spent so far.
    pub fn cost(&self) -> u64 {
        self.cost.get()
    }

    /// Evaluates an expression.
    pub fn eval(&self, e: &Expr) -> EvalResult {
        self.eval_in(e, None)
    }

    pub(crate) fn charge(&self, units: u64) -> Result<(), EvalError> {
        let c = self.cost.get().saturating_add(units);
        self.cost.set(c);
        if c > self.budget {
            return Err(EvalError::new(format!(
                "evaluation stopped: cost budget of {} exceeded",
                self.budget
            )));
        }
        Ok(())
    }

    fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(root) = name.strip_prefix('.') {
            return vec![root.to_owned()];
        }
        let mut out = Vec::new();
        let mut c = self.container;
        while !c.is_empty() {
            out.push(format!("{c}.{name}"));
            c = c.rfind('.').map_or("", |i| &c[..i]);
        }
        out.push(name.to_owned());
        out
    }

    fn lookup_global(&self, name: &str) -> Option<Value> {
        for cand in self.candidates(name) {
            if let Some(v) = self.act.resolve(&cand) {
                return Some(v);
            }
        }
        let bare = name.strip_prefix('.').unwrap_or(name);
        TYPE_NAMES
            .iter()
            .find(|t| **t == bare)
            .map(|t| Value::Type(Arc::from(*t)))
    }

    /// Resolves a dotted chain `a.b.c` whose root is not a local variable, preferring the longest
    /// declared prefix. Returns the value and the number of trailing fields still to select.
    fn resolve_chain(&self, e: &Expr, scope: Option<&Scope<'_>>) -> Option<EvalResult> {
        let qn = e.qualified_name()?;
        let root = qn.trim_start_matches('.').split('.').next().unwrap_or("");
        if !qn.starts_with('.') && scope.and_then(|s| s.find(root)).is_some() {
            return None;
        }
        let parts: Vec<&str> = qn.trim_start_matches('.').split('.').collect();
        let lead = if qn.starts_with('.') { "." } else { "" };
        for n in (1..=parts.len()).rev() {
            let name = format!("{lead}{}", parts[..n].join("."));
            if let Some(v) = self.lookup_global(&name) {
                let mut cur = Ok(v);
                for f in &parts[n..] {
                    cur = cur.and_then(|v| select(&v, f));
                }
                return Some(cur);
            }
        }
        Some(Err(EvalError::new(format!("no such attribute: {qn}"))))
    }

    fn eval_in(&self, e: &Expr, scope: Option<&Scope<'_>>) -> EvalResult {
        self.charge(1)?;
        match &e.kind {
            ExprKind::Lit(v) => Ok(v.clone()),
            ExprKind::Ident(name) => {
                if let Some(v) = scope.and_then(|s| s.find(name)) {
                    return v.clone();
                }
                self.lookup_global(name)
                    .ok_or_else(|| EvalError::new(format!("no such attribute: {name}")))
            }
            ExprKind::Select {
                operand,
                field,
                test,
                optional,
            } => {
                if !*test
                    && !*optional
                    && let Some(r) = self.resolve_chain(e, scope)
                {
                    return r;
                }
                let v = self.eval_in(operand, scope)?;
                if *test {
                    return has_field(&v, field);
                }
                if *optional {
                    return optional_select(&v, field);
                }
                if let Value::Optional(o) = &v {
                    return optional_select(&Value::Optional(o.clone()), field);
                }
                select(&v, field)
            }
            ExprKind::Call { target, func, args } => {
                self.call(e, target.as_deref(), func, args, scope)
            }
            ExprKind::List { elems, optional } => {
                let mut out = Vec::with_capacity(elems.len());
                for (i, el) in elems.iter().enumerate() {
                    let v = self.eval_in(el, scope)?;
                    if optional.contains(&i) {
                        match v {
                            Value::Optional(Some(inner)) => out.push((*inner).clone()),
                            Value::Optional(None) => {}
                            _ => return Err(EvalError::no_overload()),
                        }
                    } else {
                        out.push(v);
                    }
                }
                Ok(Value::list(out))
            }
            ExprKind::Map(entries) => {
                let mut m = MapValue::new();
                for (k, v, opt) in entries {
                    let kv = self.eval_in(k, scope)?;
                    let key = Key::from_value(&kv).ok_or_else(|| {
                        EvalError::new(format!("unsupported key type: {}", kv.type_name()))
                    })?;
                    let vv = self.eval_in(v, scope)?;
                    let vv = if *opt {
                        match vv {
                            Value::Optional(Some(inner)) => (*inner).clone(),
                            Value::Optional(None) => continue,
                            _ => return Err(EvalError::no_overload()),
                        }
                    } else {
                        vv
                    };
                    if !m.insert(key, vv) {
                        return Err(EvalError::new(format!("Failed with repeated key: {kv}")));
                    }
                }
                Ok(Value::Map(Arc::new(m)))
            }
            ExprKind::Struct { name, .. } => Err(EvalError::new(format!(
                "unknown message type {name}: no message types are registered"
            ))),
            ExprKind::Comprehension(c) => self.comprehension(c, scope),
        }
    }

    fn comprehension(&self, c: &Comprehension, scope: Option<&Scope<'_>>) -> EvalResult {
        let range = self.eval_in(&c.iter_range, scope)?;
        let mut accu = self.eval_in(&c.accu_init, scope);
        let items: Vec<(Value, Value)> = match &range {
            Value::List(l) => l
                .iter()
                .enumerate()
                .map(|(i, v)| (Value::Int(i64::try_from(i).unwrap_or(i64::MAX)), v.clone()))
                .collect(),
            Value::Map(m) => m.iter().map(|(k, v)| (k.to_value(), v.clone())).collect(),
            _ => {
                return Err(EvalError::new(format!(
                    "cannot iterate over {}",
                    range.type_name()
                )));
            }
        };
        let is_map = matches!(range, Value::Map(_));
        for (a, b) in items {
            self.charge(1)?;
            let (v1, v2) = match (&c.iter_var2, is_map) {
                (Some(_), _) => (a, Some(b)),
                (None, true) => (a, None),
                (None, false) => (b, None),
            };
            let accu_scope = Scope {
                name: &c.accu_var,
                value: accu,
                parent: scope,
            };
            let s1 = Scope {
                name: &c.iter_var,
                value: Ok(v1),
                parent: Some(&accu_scope),
            };
            let s2;
            let inner: &Scope<'_> = match (&c.iter_var2, v2) {
                (Some(n), Some(v)) => {
                    s2 = Scope {
                        name: n,
                        value: Ok(v),
                        parent: Some(&s1),
                    };
                    &s2
                }
                _ => &s1,
            };
            let cont = self.eval_in(&c.loop_cond, Some(inner))?;
            if !matches!(cont, Value::Bool(true)) {
                accu = accu_scope.value;
                break;
            }
            accu = self.eval_in(&c.loop_step, Some(inner));
        }
        let s = Scope {
            name: &c.accu_var,
            value: accu,
            parent: scope,
        };
        self.eval_in(&c.result, Some(&s))
    }

    fn call(
        &self,
        e: &Expr,
        target: Option<&Expr>,
        func: &str,
        args: &[Expr],
        scope: Option<&Scope<'_>>,
    ) -> EvalResult {
        // Short-circuiting operators with CEL's error absorption.
        match (func, args.len(), target) {
            ("_&&_", 2, None) | ("_||_", 2, None) => {
                let short = func == "_||_";
                let a = self.eval_in(&args[0], scope);
                if let Ok(Value::Bool(b)) = a
                    && b == short
                {
                    return Ok(Value::Bool(short));
                }
                let b = self.eval_in(&args[1], scope);
                return match (a, b) {
                    (_, Ok(Value::Bool(v))) if v == short => Ok(Value::Bool(short)),
                    (Ok(Value::Bool(_)), Ok(Value::Bool(v))) => Ok(Value::Bool(v)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                    _ => Err(EvalError::no_overload()),
                };
            }
            ("_?_:_", 3, None) => {
                return match self.eval_in(&args[0], scope)? {
                    Value::Bool(true) => self.eval_in(&args[1], scope),
                    Value::Bool(false) => self.eval_in(&args[2], scope),
                    _ => Err(EvalError::no_overload()),
                };
            }
            ("@not_strictly_false", 1, None) => {
                return Ok(match self.eval_in(&args[0], scope) {
                    Ok(Value::Bool(false)) => Value::Bool(false),
                    _ => Value::Bool(true),
                });
            }
            ("or", 1, Some(t)) | ("orValue", 1, Some(t)) => {
                let tv = self.eval_in(t, scope)?;
                if let Value::Optional(o) = &tv {
                    return match o {
                        Some(v) if func == "or" => Ok(Value::Optional(Some(v.clone()))),
                        Some(v) => Ok((**v).clone()),
                        None => {
                            let alt = self.eval_in(&args[0], scope)?;
                            if func == "or" && !matches!(alt, Value::Optional(_)) {
                                return Err(EvalError::no_overload());
                            }
                            Ok(alt)
                        }
                    };
                }
                return Err(EvalError::no_overload());
            }
            ("optMap" | "optFlatMap", 2, Some(t)) => {
                let tv = self.eval_in(t, scope)?;
                let Value::Optional(o) = tv else {
                    return Err(EvalError::no_overload());
                };
                let Some(inner) = o else {
                    return Ok(Value::Optional(None));
                };
                let ExprKind::Ident(var) = &args[0].kind else {
                    return Err(EvalError::new("optMap needs a variable name"));
                };
                let s = Scope {
                    name: var,
                    value: Ok((*inner).clone()),
                    parent: scope,
                };
                let r = self.eval_in(&args[1], Some(&s))?;
                return if func == "optMap" {
                    Ok(Value::Optional(Some(Arc::new(r))))
                } else {
                    match r {
                        Value::Optional(_) => Ok(r),
                        _ => Err(EvalError::no_overload()),
                    }
                };
            }
            _ => {}
        }
        // A member call whose receiver is a namespace (`math.greatest(…)`) is a global call.
        let mut qualified = None;
        if let Some(t) = target
            && let Some(qn) = t.qualified_name()
        {
            let root = qn.split('.').next().unwrap_or("");
            let local = scope.and_then(|s| s.find(root)).is_some();
            let full = format!("{qn}.{func}");
            if !local && self.lookup_global(&qn).is_none() && functions::is_global(&full) {
                qualified = Some(full);
            }
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        let name: &str = match &qualified {
            Some(q) => q,
            None => {
                if let Some(t) = target {
                    vals.push(self.eval_in(t, scope)?);
                }
                func.strip_prefix('.').unwrap_or(func)
            }
        };
        for a in args {
            vals.push(self.eval_in(a, scope)?);
        }
        let member = target.is_some() && qualified.is_none();
        // A container may qualify a global function name.
        let mut resolved = name.to_owned();
        if !member && !func.starts_with('.') && !functions::is_global(name) {
            for c in self.candidates(name) {
                if functions::is_global(&c) {
                    resolved = c;
                    break;
                }
            }
        }
        let _ = e;
        functions::call(self, &resolved, member, &vals)
    }
}

/// `v.field` on a map (the only field-bearing values without protobuf messages).
pub(crate) fn select(v: &Value, field: &str) -> EvalResult {
    match v {
        Value::Map(m) => m
            .get_str(field)
            .cloned()
            .ok_or_else(|| EvalError::new(format!("no such key: {field}"))),
        _ => Err(EvalError::new(format!(
            "type '{}' does not support field selection",
            v.type_name()
        ))),
    }
}

fn has_field(v: &Value, field: &str) -> EvalResult {
    match v {
        Value::Optional(None) => Ok(Value::Bool(false)),
        Value::Optional(Some(inner)) => has_field(inner, field),
        Value::Map(m) => Ok(Value::Bool(m.get_str(field).is_some())),
        _ => Err(EvalError::new(format!(
            "invalid type for field selection: {}",
            v.type_name()
        ))),
    }
}

fn optional_select(v: &Value, field: &str) -> EvalResult {
    match v {
        Value::Optional(None) => Ok(Value::Optional(None)),
        Value::Optional(Some(inner)) => optional_select(inner, field),
        Value::Map(m) => Ok(Value::Optional(m.get_str(field).cloned().map(Arc::new))),
        _ => Err(EvalError::no_overload()),
    }
}
