//! Compilation of checked conditions into trees of typed closures.
//!
//! Every `principal.x` / `resource.x` / `request.x` reference becomes a [`Slot`] at compile
//! time: evaluation asks the attribute source for that slot directly and never looks a name up
//! in a map. Strings stay
//! borrowed from the source, constants stay in the closure, so the typical condition — string
//! equality, membership in a constant list or in an attribute list, boolean logic, integer
//! comparison — evaluates without allocating. Anything else (comprehensions, `dyn`, maps,
//! timestamps) takes the dynamic path: the same expression evaluated by the interpreter over
//! values materialised from the sources, within the runtime cost budget.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::cel::checker::TypeMap;
use crate::cel::interp::{Activation, Interpreter};
use crate::cel::{EvalError, Expr, ExprKind, Key, MapValue, Type, Value};

use super::schema::{AttrType, Schema};
use super::source::{AttrKey, AttrValue, AttributeSource, Entity};

/// A resolved attribute reference.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub(crate) entity: Entity,
    pub(crate) index: u16,
    pub(crate) name: Arc<str>,
    pub(crate) ty: AttrType,
}

/// Per-decision evaluation context: the three sources and the remaining budget.
///
/// Attributes are fetched from the source on each use rather than cached: a source answers with
/// a borrow after a `match` on the name, which profiling showed cheaper than copying cached enum
/// values through a per-decision cache (and it needs no per-decision initialisation).
pub(crate) struct Ctx<'a> {
    pub(crate) sources: [&'a dyn AttributeSource; 3],
    pub(crate) schema: &'a Schema,
    pub(crate) budget: Cell<u64>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        sources: [&'a dyn AttributeSource; 3],
        schema: &'a Schema,
        budget: u64,
    ) -> Self {
        Self {
            sources,
            schema,
            budget: Cell::new(budget),
        }
    }

    #[inline]
    fn fetch(&self, slot: &Slot) -> Option<AttrValue<'a>> {
        self.sources[slot.entity.index()].attribute(AttrKey {
            name: &slot.name,
            index: slot.index,
        })
    }

    /// The attribute's value, checked against its declared list bound.
    pub(crate) fn get(&self, slot: &Slot) -> Result<AttrValue<'a>, EvalError> {
        let v = self.fetch(slot).ok_or_else(|| missing(slot))?;
        if let Some(n) = v.list_len() {
            check_len(slot, n)?;
        }
        Ok(v)
    }

    /// A string attribute. Matched straight from the source's answer: routing the value through
    /// `get`'s `Result` made the compiler copy the enum through the stack in a way that stalled
    /// store forwarding, the hottest spot of the 50-rule benchmark.
    #[inline]
    pub(crate) fn get_str(&self, slot: &Slot) -> Result<&'a str, EvalError> {
        match self.fetch(slot) {
            Some(AttrValue::Str(s)) => Ok(s),
            Some(AttrValue::Value(Value::String(s))) => Ok(s),
            Some(_) => Err(type_error(slot, "string")),
            None => Err(missing(slot)),
        }
    }

    fn present(&self, slot: &Slot) -> bool {
        self.fetch(slot).is_some()
    }
}

pub(crate) type BoolFn = Box<dyn for<'a> Fn(&Ctx<'a>) -> Result<bool, EvalError> + Send + Sync>;
type IntFn = Box<dyn for<'a> Fn(&Ctx<'a>) -> Result<i64, EvalError> + Send + Sync>;

/// A string operand: a constant or a string attribute.
enum StrOp {
    Const(Box<str>),
    Attr(Slot),
}

impl StrOp {
    fn get<'s, 'a: 's>(&'s self, ctx: &'s Ctx<'a>) -> Result<&'s str, EvalError> {
        match self {
            StrOp::Const(s) => Ok(s),
            StrOp::Attr(slot) => ctx.get_str(slot),
        }
    }
}

fn missing(slot: &Slot) -> EvalError {
    EvalError::new(format!(
        "missing attribute {}.{}",
        slot.entity.as_str(),
        slot.name
    ))
}

fn check_len(slot: &Slot, n: usize) -> Result<(), EvalError> {
    match &slot.ty {
        AttrType::List { max_size, .. } | AttrType::Map { max_size, .. } if n > *max_size => {
            Err(EvalError::new(format!(
                "attribute {}.{} has {n} elements; the schema allows at most {max_size}",
                slot.entity.as_str(),
                slot.name
            )))
        }
        _ => Ok(()),
    }
}

fn type_error(slot: &Slot, want: &str) -> EvalError {
    EvalError::new(format!(
        "attribute {}.{} is not a {want} at run time",
        slot.entity.as_str(),
        slot.name
    ))
}

/// Compiles checked expressions of one policy set.
pub(crate) struct Compiler<'s> {
    pub(crate) slots: &'s HashMap<(Entity, String), Slot>,
    pub(crate) types: &'s TypeMap,
}

impl Compiler<'_> {
    fn ty(&self, e: &Expr) -> Type {
        self.types.get(e).cloned().unwrap_or(Type::Dyn)
    }

    pub(crate) fn slot_of(&self, e: &Expr) -> Option<Slot> {
        let ExprKind::Select {
            operand,
            field,
            test: false,
            optional: false,
        } = &e.kind
        else {
            return None;
        };
        let ExprKind::Ident(root) = &operand.kind else {
            return None;
        };
        let entity = match &**root {
            "principal" => Entity::Principal,
            "resource" => Entity::Resource,
            "request" => Entity::Request,
            _ => return None,
        };
        self.slots.get(&(entity, field.to_string())).cloned()
    }

    fn str_op(&self, e: &Expr) -> Option<StrOp> {
        match &e.kind {
            ExprKind::Lit(Value::String(s)) => Some(StrOp::Const(Box::from(&**s))),
            _ => {
                let slot = self.slot_of(e)?;
                matches!(slot.ty, AttrType::String).then_some(StrOp::Attr(slot))
            }
        }
    }

    /// Compiles a boolean condition.
    pub(crate) fn bool_fn(&self, e: &Expr) -> BoolFn {
        if let Some(f) = self.fast_bool(e) {
            return f;
        }
        self.dynamic_bool(e)
    }

    #[allow(clippy::too_many_lines)]
    fn fast_bool(&self, e: &Expr) -> Option<BoolFn> {
        match &e.kind {
            ExprKind::Lit(Value::Bool(b)) => {
                let b = *b;
                Some(Box::new(move |_| Ok(b)))
            }
            ExprKind::Select {
                operand,
                field,
                test: true,
                ..
            } => {
                let probe = Expr::new(
                    e.pos,
                    ExprKind::Select {
                        operand: operand.clone(),
                        field: field.clone(),
                        test: false,
                        optional: false,
                    },
                );
                let slot = self.slot_of(&probe)?;
                Some(Box::new(move |ctx| Ok(ctx.present(&slot))))
            }
            ExprKind::Select { .. } => {
                let slot = self.slot_of(e)?;
                if !matches!(slot.ty, AttrType::Bool) {
                    return None;
                }
                Some(Box::new(move |ctx| match ctx.get(&slot)? {
                    AttrValue::Bool(b) | AttrValue::Value(&Value::Bool(b)) => Ok(b),
                    _ => Err(type_error(&slot, "bool")),
                }))
            }
            ExprKind::Call {
                target: Some(t),
                func,
                args,
            } if args.len() == 1 && matches!(&**func, "startsWith" | "endsWith" | "contains") => {
                let (x, y) = (self.str_op(t)?, self.str_op(&args[0])?);
                let f: fn(&str, &str) -> bool = match &**func {
                    "startsWith" => |a, b| a.starts_with(b),
                    "endsWith" => |a, b| a.ends_with(b),
                    _ => |a, b| a.contains(b),
                };
                Some(Box::new(move |ctx| Ok(f(x.get(ctx)?, y.get(ctx)?))))
            }
            ExprKind::Call {
                target: None,
                func,
                args,
            } => match (&**func, args.as_slice()) {
                ("_&&_" | "_||_", [_, _]) => {
                    // A chain `a && b && c` is one closure looping over its operands rather
                    // than nested pairs: one indirect call per operand instead of two.
                    let and = &**func == "_&&_";
                    let mut ops = Vec::new();
                    flatten(e, func, &mut ops);
                    let fs: Box<[BoolFn]> = ops.into_iter().map(|x| self.bool_fn(x)).collect();
                    // CEL's commutative logic: a false (for `&&`; true for `||`) operand decides
                    // even after an error; otherwise the first error is the result.
                    Some(Box::new(move |ctx| {
                        let mut err = None;
                        for f in &*fs {
                            match f(ctx) {
                                Ok(b) if b != and => return Ok(b),
                                Ok(_) => {}
                                Err(e) => {
                                    err.get_or_insert(e);
                                }
                            }
                        }
                        err.map_or(Ok(and), Err)
                    }))
                }
                ("!_", [a]) => {
                    let fa = self.bool_fn(a);
                    Some(Box::new(move |ctx| fa(ctx).map(|b| !b)))
                }
                ("_?_:_", [c, a, b]) if self.ty(e) == Type::Bool => {
                    let (fc, fa, fb) = (self.bool_fn(c), self.bool_fn(a), self.bool_fn(b));
                    Some(Box::new(
                        move |ctx| if fc(ctx)? { fa(ctx) } else { fb(ctx) },
                    ))
                }
                ("_==_" | "_!=_", [a, b]) => {
                    let negate = &**func == "_!=_";
                    if let (Some(x), Some(y)) = (self.str_op(a), self.str_op(b)) {
                        return Some(Box::new(move |ctx| {
                            Ok(str_eq(x.get(ctx)?, y.get(ctx)?) != negate)
                        }));
                    }
                    if self.ty(a) == Type::Int && self.ty(b) == Type::Int {
                        let (x, y) = (self.int_fn(a)?, self.int_fn(b)?);
                        return Some(Box::new(move |ctx| Ok((x(ctx)? == y(ctx)?) != negate)));
                    }
                    if self.ty(a) == Type::Bool && self.ty(b) == Type::Bool {
                        let (x, y) = (self.bool_fn(a), self.bool_fn(b));
                        return Some(Box::new(move |ctx| Ok((x(ctx)? == y(ctx)?) != negate)));
                    }
                    None
                }
                ("_<_" | "_<=_" | "_>_" | "_>=_", [a, b]) => {
                    let op = match &**func {
                        "_<_" => |o: std::cmp::Ordering| o.is_lt(),
                        "_<=_" => |o: std::cmp::Ordering| o.is_le(),
                        "_>_" => |o: std::cmp::Ordering| o.is_gt(),
                        _ => |o: std::cmp::Ordering| o.is_ge(),
                    };
                    if self.ty(a) == Type::Int && self.ty(b) == Type::Int {
                        let (x, y) = (self.int_fn(a)?, self.int_fn(b)?);
                        return Some(Box::new(move |ctx| Ok(op(x(ctx)?.cmp(&y(ctx)?)))));
                    }
                    if let (Some(x), Some(y)) = (self.str_op(a), self.str_op(b)) {
                        return Some(Box::new(move |ctx| Ok(op(x.get(ctx)?.cmp(y.get(ctx)?)))));
                    }
                    None
                }
                ("@in", [a, b]) => {
                    let x = self.str_op(a)?;
                    if let ExprKind::List { elems, optional } = &b.kind
                        && optional.is_empty()
                    {
                        let consts: Option<Vec<Box<str>>> = elems
                            .iter()
                            .map(|el| match &el.kind {
                                ExprKind::Lit(Value::String(s)) => Some(Box::from(&**s)),
                                _ => None,
                            })
                            .collect();
                        let consts = consts?;
                        return Some(Box::new(move |ctx| {
                            let s = x.get(ctx)?;
                            Ok(consts.iter().any(|c| str_eq(c, s)))
                        }));
                    }
                    let slot = self.slot_of(b)?;
                    if !matches!(&slot.ty, AttrType::List { elem, .. } if **elem == AttrType::String)
                    {
                        return None;
                    }
                    Some(Box::new(move |ctx| {
                        let s = x.get(ctx)?;
                        match ctx.fetch(&slot) {
                            Some(AttrValue::StrList(l)) => {
                                check_len(&slot, l.len())?;
                                Ok(l.iter().any(|c| str_eq(c, s)))
                            }
                            Some(AttrValue::StrRefs(l)) => {
                                check_len(&slot, l.len())?;
                                Ok(l.iter().any(|c| str_eq(c, s)))
                            }
                            Some(AttrValue::ArcStrList(l)) => {
                                check_len(&slot, l.len())?;
                                Ok(l.iter().any(|c| str_eq(c, s)))
                            }
                            Some(AttrValue::Value(Value::List(l))) => {
                                check_len(&slot, l.len())?;
                                Ok(l.iter().any(|v| matches!(v, Value::String(c) if &**c == s)))
                            }
                            Some(_) => Err(type_error(&slot, "list(string)")),
                            None => Err(missing(&slot)),
                        }
                    }))
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn int_fn(&self, e: &Expr) -> Option<IntFn> {
        match &e.kind {
            ExprKind::Lit(Value::Int(i)) => {
                let i = *i;
                Some(Box::new(move |_| Ok(i)))
            }
            ExprKind::Call { target, func, args }
                if (&**func == "size") && args.len() + usize::from(target.is_some()) == 1 =>
            {
                let arg = target.as_deref().or(args.first())?;
                let slot = self.slot_of(arg)?;
                Some(Box::new(move |ctx| {
                    let v = ctx.get(&slot)?;
                    let n = match v {
                        AttrValue::Str(s) => s.chars().count(),
                        other => other
                            .list_len()
                            .ok_or_else(|| type_error(&slot, "sized value"))?,
                    };
                    i64::try_from(n).map_err(|_| EvalError::new("size overflows int"))
                }))
            }
            _ => {
                let slot = self.slot_of(e)?;
                if !matches!(slot.ty, AttrType::Int) {
                    return None;
                }
                Some(Box::new(move |ctx| match ctx.get(&slot)? {
                    AttrValue::Int(i) | AttrValue::Value(&Value::Int(i)) => Ok(i),
                    _ => Err(type_error(&slot, "int")),
                }))
            }
        }
    }

    /// The dynamic path: the interpreter over values materialised from the sources.
    fn dynamic_bool(&self, e: &Expr) -> BoolFn {
        let expr = Arc::new(e.clone());
        let slots: Arc<HashMap<String, Slot>> = Arc::new(
            self.slots
                .values()
                .map(|s| (format!("{}.{}", s.entity.as_str(), s.name), s.clone()))
                .collect(),
        );
        Box::new(move |ctx| {
            let act = CtxActivation { ctx, slots: &slots };
            let it = Interpreter::new(&act, "", ctx.budget.get());
            let r = it.eval(&expr);
            ctx.budget.set(ctx.budget.get().saturating_sub(it.cost()));
            match r? {
                Value::Bool(b) => Ok(b),
                other => Err(EvalError::new(format!(
                    "condition evaluated to {}, not bool",
                    other.type_name()
                ))),
            }
        })
    }
}

/// String equality without a `memcmp` call for strings of up to 16 bytes, the usual size of
/// attribute values and constants: two overlapping words per side, or bytes below 4. The call and its setup
/// were a sixth of a typical decision's instructions.
#[inline]
fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}

#[inline]
fn word(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_ne_bytes(w)
}

#[inline]
fn half(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_ne_bytes(w)
}

/// The operands of a chain of the same logical operator, in evaluation order.
fn flatten<'e>(e: &'e Expr, op: &str, out: &mut Vec<&'e Expr>) {
    match &e.kind {
        ExprKind::Call {
            target: None,
            func,
            args,
        } if &**func == op && args.len() == 2 => {
            flatten(&args[0], op, out);
            flatten(&args[1], op, out);
        }
        _ => out.push(e),
    }
}

/// Resolves `principal`, `principal.x`, … for the interpreter from a decision context.
struct CtxActivation<'c, 'a> {
    ctx: &'c Ctx<'a>,
    slots: &'c HashMap<String, Slot>,
}

impl Activation for CtxActivation<'_, '_> {
    fn resolve(&self, name: &str) -> Option<Value> {
        if let Some(slot) = self.slots.get(name) {
            return self.ctx.get(slot).ok().map(|v| v.to_value());
        }
        let entity = match name {
            "principal" => Entity::Principal,
            "resource" => Entity::Resource,
            "request" => Entity::Request,
            _ => return None,
        };
        let mut m = MapValue::new();
        for (i, (attr, ty)) in self.ctx.schema.attributes(entity).iter().enumerate() {
            let key = AttrKey {
                name: attr,
                index: u16::try_from(i).unwrap_or(u16::MAX),
            };
            if let Some(v) = self.ctx.sources[entity.index()].attribute(key) {
                if let (Some(n), AttrType::List { max_size, .. }) = (v.list_len(), ty)
                    && n > *max_size
                {
                    continue;
                }
                m.insert(Key::String(Arc::from(&**attr)), v.to_value());
            }
        }
        Some(Value::Map(Arc::new(m)))
    }
}
