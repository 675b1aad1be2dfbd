//! Rule indexing: which rules a decision needs to evaluate at all.
//!
//! Rules are first grouped by action (at load time). Within an action's allow or deny list, when
//! several rules require the same string attribute to equal a constant (a top-level conjunct
//! `request.region == "eu"` or `principal.role in ["admin", "owner"]`), the list is also indexed
//! by that constant: a decision reads the attribute once and evaluates only the rules whose
//! constant matches, plus the rules without such a conjunct, in file order. A skipped rule's
//! condition is a conjunction with a false conjunct, so it is false whatever its other conjuncts
//! would have done (CEL's `&&` absorbs errors next to a false), and the decision is the one full
//! evaluation would give. When the attribute is missing or not a string, every rule is evaluated.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::cel::{Expr, ExprKind, Value};

use super::compile::{Ctx, Slot};
use super::schema::AttrType;
use super::source::Entity;

/// A word-at-a-time multiplicative hash for short keys. The maps it serves are built once from
/// the policy file (action names, constants of conditions) and only looked up per decision, so
/// SipHash's protection against chosen colliding insertions is not needed, and its cost (about
/// a third of a typical decision's action lookup) is saved.
#[derive(Clone, Copy, Default)]
pub(crate) struct WordHasher(u64);

const SEED: u64 = 0xf135_7aea_2e62_a9c5;

impl WordHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(SEED).rotate_left(26);
    }
}

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` keyed by strings fixed at load time.
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// A conjunct `slot == "c"` / `slot in ["c", …]` of a rule's condition.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    pub(crate) slot: Slot,
    pub(crate) values: Vec<Box<str>>,
}

/// The guards among the top-level conjuncts of a condition.
pub(crate) fn guards(e: &Expr, slot_of: &dyn Fn(&Expr) -> Option<Slot>) -> Vec<Guard> {
    let mut conj = Vec::new();
    conjuncts(e, &mut conj);
    let string_slot = |e: &Expr| slot_of(e).filter(|s| s.ty == AttrType::String);
    let lit = |e: &Expr| match &e.kind {
        ExprKind::Lit(Value::String(s)) => Some(Box::<str>::from(&**s)),
        _ => None,
    };
    conj.into_iter()
        .filter_map(|c| {
            let ExprKind::Call {
                target: None,
                func,
                args,
            } = &c.kind
            else {
                return None;
            };
            match (&**func, args.as_slice()) {
                ("_==_", [a, b]) => match (string_slot(a), lit(b), string_slot(b), lit(a)) {
                    (Some(slot), Some(v), ..) | (_, _, Some(slot), Some(v)) => Some(Guard {
                        slot,
                        values: vec![v],
                    }),
                    _ => None,
                },
                ("@in", [a, b]) => {
                    let slot = string_slot(a)?;
                    let ExprKind::List { elems, optional } = &b.kind else {
                        return None;
                    };
                    if !optional.is_empty() {
                        return None;
                    }
                    let values = elems.iter().map(lit).collect::<Option<Vec<_>>>()?;
                    Some(Guard { slot, values })
                }
                _ => None,
            }
        })
        .collect()
}

fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match &e.kind {
        ExprKind::Call {
            target: None,
            func,
            args,
        } if &**func == "_&&_" && args.len() == 2 => {
            conjuncts(&args[0], out);
            conjuncts(&args[1], out);
        }
        _ => out.push(e),
    }
}

/// Fewest rules sharing a guarded attribute for an index to be built: below that, evaluating
/// the rules costs about what the lookup does.
const MIN_INDEXED: usize = 4;

/// Rules guarded by one attribute, and its distinct constants.
type GuardStats<'r> = (usize, FastMap<&'r str, ()>);

/// The rules of one action and effect, in file order, possibly indexed by a guard.
#[derive(Debug, Default, Clone)]
pub(crate) struct RuleList {
    all: Vec<u16>,
    index: Option<GuardIndex>,
}

#[derive(Debug, Clone)]
struct GuardIndex {
    slot: Slot,
    by_value: FastMap<Box<str>, Vec<u16>>,
    unguarded: Vec<u16>,
}

impl RuleList {
    /// Builds the list for `rules` (file order); `guards_of(i)` are rule `i`'s guards.
    pub(crate) fn new<'r>(rules: Vec<u16>, guards_of: &dyn Fn(u16) -> &'r [Guard]) -> Self {
        // Per guarded attribute: how many rules it guards and how many distinct constants it
        // has. The index goes to the attribute that splits the rules finest (most constants);
        // an attribute every rule tests against the same few values narrows nothing.
        let mut stats: FastMap<(Entity, u16), GuardStats<'_>> = FastMap::default();
        for &i in &rules {
            let mut seen: Vec<(Entity, u16)> = Vec::new();
            for g in guards_of(i) {
                let k = (g.slot.entity, g.slot.index);
                if seen.contains(&k) {
                    continue;
                }
                seen.push(k);
                let (n, values) = stats.entry(k).or_default();
                *n += 1;
                for v in &g.values {
                    values.insert(&**v, ());
                }
            }
        }
        let best = stats
            .into_iter()
            .filter(|(_, (n, _))| *n >= MIN_INDEXED)
            .map(|(k, (n, values))| (k, (values.len(), n)))
            .max_by_key(|&((e, i), score)| (score, std::cmp::Reverse((e.index(), i))));
        let index = best.and_then(|((entity, index), _)| {
            let mut slot = None;
            let mut by_value: FastMap<Box<str>, Vec<u16>> = FastMap::default();
            let mut unguarded = Vec::new();
            for &i in &rules {
                match guards_of(i)
                    .iter()
                    .find(|g| g.slot.entity == entity && g.slot.index == index)
                {
                    Some(g) => {
                        slot.get_or_insert_with(|| g.slot.clone());
                        for v in &g.values {
                            let list = by_value.entry(v.clone()).or_default();
                            if list.last() != Some(&i) {
                                list.push(i);
                            }
                        }
                    }
                    None => unguarded.push(i),
                }
            }
            // One value shared by every guarded rule discriminates nothing.
            if by_value.len() < 2 {
                return None;
            }
            Some(GuardIndex {
                slot: slot?,
                by_value,
                unguarded,
            })
        });
        Self { all: rules, index }
    }

    /// The rules a decision must evaluate, in file order.
    #[inline]
    pub(crate) fn candidates<'s>(&'s self, ctx: &Ctx<'_>) -> Candidates<'s> {
        let Some(ix) = &self.index else {
            return Candidates {
                a: &self.all,
                b: &[],
            };
        };
        match ctx.get_str(&ix.slot) {
            Ok(v) => Candidates {
                a: ix.by_value.get(v).map_or(&[][..], Vec::as_slice),
                b: &ix.unguarded,
            },
            Err(_) => Candidates {
                a: &self.all,
                b: &[],
            },
        }
    }
}

/// Two sorted lists of rule indexes merged in order.
pub(crate) struct Candidates<'s> {
    a: &'s [u16],
    b: &'s [u16],
}

impl<'s> Iterator for Candidates<'s> {
    type Item = u16;
    #[inline]
    fn next(&mut self) -> Option<u16> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let side = if take_a { &mut self.a } else { &mut self.b };
        let cur: &'s [u16] = side;
        let (first, rest) = cur.split_first()?;
        *side = rest;
        Some(*first)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fmt::Write as _;
    use std::sync::Arc;

    use crate::cel::{Key, MapValue, Value};
    use crate::policy::{MapAttributes, PolicySet, Reason};

    fn attrs(pairs: &[(&str, Value)]) -> MapAttributes {
        let mut m = MapValue::new();
        for (k, v) in pairs {
            m.insert(Key::String(Arc::from(*k)), v.clone());
        }
        MapAttributes::new(m)
    }

    /// Rules `r0..r9` allow when the region is `region{i}`; `open` has no region guard and
    /// holds for level 7; `broken` (region3) fails to evaluate; `blocked` denies region5 and
    /// region6 through a list guard.
    fn set() -> Arc<PolicySet> {
        let mut y = String::from(
            "schema:\n  principal: { level: int }\n  request: { region: string, flag: dyn }\nrules:\n",
        );
        for i in 0..10 {
            writeln!(
                y,
                "  - id: r{i}\n    effect: allow\n    actions: [act]\n    condition: request.region == 'region{i}' && principal.level > 0"
            )
            .unwrap();
            if i == 3 {
                y.push_str("  - id: broken\n    effect: allow\n    actions: [act]\n    condition: \"'region3' == request.region && principal.level / 0 == 1\"\n");
            }
        }
        y.push_str("  - id: open\n    effect: allow\n    actions: [act]\n    condition: principal.level == 7\n");
        for i in 0..4 {
            writeln!(
                y,
                "  - id: d{i}\n    effect: deny\n    actions: [act]\n    condition: request.region in ['region5', 'region6'] && principal.level == {i}"
            )
            .unwrap();
        }
        Arc::new(PolicySet::from_yaml("index.yaml", &y).unwrap())
    }

    fn decide(set: &Arc<PolicySet>, level: i64, region: Option<Value>) -> (bool, Vec<String>) {
        let p = attrs(&[("level", Value::Int(level))]);
        let q = attrs(&region.map(|r| vec![("region", r)]).unwrap_or_default());
        let d = set.decide(&p, "act", &crate::policy::NoAttributes, &q);
        (d.allowed(), d.decided_by().map(str::to_owned).collect())
    }

    #[test]
    fn the_index_is_built_for_shared_guards() {
        let set = set();
        let rules = set.by_action.get("act").unwrap();
        assert!(rules.allow.index.is_some());
        assert!(rules.deny.index.is_some());
    }

    #[test]
    fn indexed_rules_decide_as_a_full_scan_does() {
        let set = set();
        let region = |r: &str| Some(Value::string(r));
        assert_eq!(
            decide(&set, 1, region("region8")),
            (true, vec!["r8".into()])
        );
        // `open` comes after the matching rule in file order but is no less a candidate.
        assert_eq!(
            decide(&set, 7, region("nowhere")),
            (true, vec!["open".into()])
        );
        assert_eq!(decide(&set, 1, region("nowhere")), (false, vec![]));
        // The failing rule is a candidate for its own region only.
        assert_eq!(
            decide(&set, 1, region("region2")),
            (true, vec!["r2".into()])
        );
        assert_eq!(
            decide(&set, 1, region("region3")),
            (true, vec!["r3".into()])
        );
        let (allowed, by) = decide(&set, 0, region("region3"));
        assert!(!allowed);
        assert_eq!(by, ["broken"].map(String::from));
        // Deny rules through a list guard.
        assert_eq!(
            decide(&set, 2, region("region6")),
            (false, vec!["d2".into()])
        );
        assert_eq!(
            decide(&set, 2, region("region4")),
            (true, vec!["r4".into()])
        );
    }

    #[test]
    fn without_the_indexed_attribute_every_rule_is_evaluated() {
        let set = set();
        // Missing: the guard of every region rule errors; `open` still decides for level 7...
        let p = attrs(&[("level", Value::Int(7))]);
        let d = set.decide(&p, "act", &crate::policy::NoAttributes, &attrs(&[]));
        // ...but the first failing rule in file order denies, as a full scan does.
        assert!(!d.allowed());
        assert!(matches!(d.reason(), Reason::EvaluationError(_)));
        assert_eq!(d.decided_by().collect::<Vec<_>>(), ["r0"]);
        // Not a string at run time: the same.
        let (allowed, by) = decide(&set, 7, Some(Value::Int(1)));
        assert!(!allowed);
        assert_eq!(by, ["r0"].map(String::from));
    }
}
