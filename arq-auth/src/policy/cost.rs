//! Static cost estimate of a condition: an upper bound on evaluation steps, computed from the
//! expression and the declared maximum sizes of list and map attributes. Comprehensions multiply
//! the cost of their body by the size of their range, so nested comprehensions over large lists
//! are refused at load time instead of running for seconds.

use crate::cel::{Expr, ExprKind, Value};

use super::schema::Schema;
use super::source::Entity;

/// Range size assumed when nothing bounds it (a `dyn` value, a computed list).
const UNKNOWN_SIZE: u64 = 1_000;

/// Estimated (cost, size) of an expression; size is the largest number of elements (or
/// characters) the value can hold.
pub(crate) fn estimate(e: &Expr, schema: &Schema) -> (u64, u64) {
    match &e.kind {
        ExprKind::Lit(v) => (
            1,
            match v {
                Value::String(s) => s.len() as u64,
                Value::Bytes(b) => b.len() as u64,
                _ => 1,
            },
        ),
        ExprKind::Ident(_) => (1, UNKNOWN_SIZE),
        ExprKind::Select { operand, field, .. } => {
            if let ExprKind::Ident(root) = &operand.kind {
                let entity = match &**root {
                    "principal" => Some(Entity::Principal),
                    "resource" => Some(Entity::Resource),
                    "request" => Some(Entity::Request),
                    _ => None,
                };
                if let Some(entity) = entity
                    && let Some((_, ty)) = schema
                        .attributes(entity)
                        .iter()
                        .find(|(n, _)| **n == **field)
                {
                    return (1, ty.max_size().map_or(UNKNOWN_SIZE, |m| m as u64));
                }
            }
            let (c, s) = estimate(operand, schema);
            (c.saturating_add(1), s)
        }
        ExprKind::List { elems, .. } => {
            let c = elems
                .iter()
                .map(|x| estimate(x, schema).0)
                .fold(1u64, u64::saturating_add);
            (c, elems.len() as u64)
        }
        ExprKind::Map(entries) => {
            let c = entries
                .iter()
                .map(|(k, v, _)| estimate(k, schema).0.saturating_add(estimate(v, schema).0))
                .fold(1u64, u64::saturating_add);
            (c, entries.len() as u64)
        }
        ExprKind::Struct { fields, .. } => {
            let c = fields
                .iter()
                .map(|(_, v, _)| estimate(v, schema).0)
                .fold(1u64, u64::saturating_add);
            (c, 1)
        }
        ExprKind::Call { target, func, args } => {
            let mut cost = 1u64;
            let mut sizes = Vec::new();
            for a in target.iter().map(|t| &**t).chain(args.iter()) {
                let (c, s) = estimate(a, schema);
                cost = cost.saturating_add(c);
                sizes.push(s);
            }
            let max = sizes.iter().copied().max().unwrap_or(1);
            let sum = sizes.iter().copied().fold(0u64, u64::saturating_add);
            let (work, size) = match &**func {
                // Linear in the operands.
                "@in" | "contains" | "startsWith" | "endsWith" | "matches" | "size" | "indexOf"
                | "lastIndexOf" | "split" | "join" | "replace" | "lowerAscii" | "upperAscii"
                | "trim" | "_==_" | "_!=_" => (max / 8, max),
                "_+_" => (sum / 8, sum),
                _ => (0, max),
            };
            (cost.saturating_add(work), size)
        }
        ExprKind::Comprehension(c) => {
            let (rc, rs) = estimate(&c.iter_range, schema);
            let (ic, is) = estimate(&c.accu_init, schema);
            let (cc, _) = estimate(&c.loop_cond, schema);
            let (sc, _) = estimate(&c.loop_step, schema);
            let (resc, _) = estimate(&c.result, schema);
            let per_iter = cc.saturating_add(sc).saturating_add(1);
            let cost = rc
                .saturating_add(ic)
                .saturating_add(rs.saturating_mul(per_iter))
                .saturating_add(resc);
            // map/filter produce at most one element per iteration; bind keeps its init size.
            (cost, rs.max(is))
        }
    }
}
