//! Attribute-based access control: policy files with a schema, checked when loaded, compiled to
//! typed closures, evaluated within a cost budget, explained and audited.
//!
//! A policy file (YAML) declares the attributes of `principal`, `resource` and `request`, and
//! rules with an id, an effect, the actions they cover and a CEL condition:
//!
//! ```yaml
//! schema:
//!   principal:
//!     role: string
//!     department: string
//!     costCenters: { type: list(string), max_size: 8 }
//!   resource:
//!     department: string
//! rules:
//!   - id: same-department-write
//!     effect: allow
//!     actions: ["write:project"]
//!     condition: principal.department == resource.department
//!     description: Members write projects of their own department.
//! ```
//!
//! Semantics: default deny; a matching `deny` rule overrides any `allow`; any evaluation error
//! (missing attribute, overflow, a list longer than its declared `max_size`, an exhausted cost
//! budget) denies. Every decision names the rules that decided it and emits an audit event
//! (`tracing`, target `arq::audit`).
//!
//! RBAC and ABAC combine in one decision through [`PolicySet::decide_with_rbac`]: pass the RBAC
//! verdict the role check produced (issue 6's `rbac` module will call this); an RBAC denial denies
//! without evaluating conditions.
//!
//! # Example
//!
//! ```
//! use arq_auth::policy::{MapAttributes, NoAttributes, PolicySet};
//! use arq_auth::cel::{Key, MapValue, Value};
//!
//! let set = std::sync::Arc::new(PolicySet::from_yaml("example.yaml", r#"
//! schema:
//!   principal: { department: string }
//!   resource: { department: string }
//! rules:
//!   - id: same-dept
//!     effect: allow
//!     actions: [read:doc]
//!     condition: principal.department == resource.department
//! "#).unwrap());
//! let mut p = MapValue::new();
//! p.insert(Key::String("department".into()), Value::string("eng"));
//! let principal = MapAttributes::new(p.clone());
//! let resource = MapAttributes::new(p);
//! let d = set.decide(&principal, "read:doc", &resource, &NoAttributes);
//! assert!(d.allowed());
//! assert_eq!(d.decided_by().collect::<Vec<_>>(), ["same-dept"]);
//! ```

mod compile;
mod condition;
mod cost;
mod file;
mod guard;
mod index;
pub mod schema;
mod source;
mod store;
mod testing;

use std::fmt;
use std::sync::Arc;

pub use condition::{CompiledCondition, ConditionCompiler, ConditionError};
pub use file::PolicyError;
pub use guard::{
    AttributeSourceDebug, PolicyGuardLayer, PolicyGuardService, RequestAttributes, ResourceResolver,
};
pub use schema::{AttrType, Schema};
pub use source::{AttrKey, AttrValue, AttributeSource, Entity, MapAttributes, NoAttributes};
pub use store::PolicyStore;
pub use testing::{PolicyTestFailure, PolicyTestReport, run_policy_tests, run_policy_tests_in};

use crate::cel::EvalError;
use compile::{BoolFn, Ctx};
use index::{FastMap, RuleList};

/// Default static cost limit of one rule's condition.
pub const DEFAULT_MAX_COST: u64 = 100_000;
/// Default runtime budget (evaluation steps) of one decision's dynamic-path evaluation.
pub const DEFAULT_RUNTIME_BUDGET: u64 = 100_000;

/// Whether a rule allows or denies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Effect {
    /// The rule grants the action when its condition holds.
    Allow,
    /// The rule refuses the action when its condition holds; it overrides any allow.
    Deny,
}

pub(crate) struct Rule {
    id: Arc<str>,
    effect: Effect,
    actions: Vec<String>,
    description: String,
    condition: String,
    cost: u64,
    eval: BoolFn,
    guards: Vec<index::Guard>,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("effect", &self.effect)
            .field("actions", &self.actions)
            .field("condition", &self.condition)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// A rule's public description.
#[derive(Clone, Copy, Debug)]
pub struct RuleInfo<'a> {
    /// Rule id.
    pub id: &'a str,
    /// Allow or deny.
    pub effect: Effect,
    /// Actions covered.
    pub actions: &'a [String],
    /// CEL condition text.
    pub condition: &'a str,
    /// Human description.
    pub description: &'a str,
    /// Static cost estimate of the condition.
    pub cost: u64,
}

#[derive(Debug, Default, Clone)]
struct ActionRules {
    deny: RuleList,
    allow: RuleList,
}

impl ActionRules {
    /// The `selected` rules (ascending indexes), split by effect and indexed.
    fn build(rules: &[Rule], selected: impl IntoIterator<Item = u16>) -> Self {
        let (mut deny, mut allow) = (Vec::new(), Vec::new());
        for i in selected {
            match rules[usize::from(i)].effect {
                Effect::Allow => allow.push(i),
                Effect::Deny => deny.push(i),
            }
        }
        let guards_of = |i: u16| rules[usize::from(i)].guards.as_slice();
        Self {
            deny: RuleList::new(deny, &guards_of),
            allow: RuleList::new(allow, &guards_of),
        }
    }
}

/// A loaded, checked and compiled set of rules.
#[derive(Debug)]
pub struct PolicySet {
    source: String,
    schema: Arc<Schema>,
    rules: Vec<Rule>,
    by_action: FastMap<String, ActionRules>,
    wildcard: Vec<u16>,
    runtime_budget: u64,
}

/// The RBAC verdict to combine with ABAC (see [`PolicySet::decide_with_rbac`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RbacVerdict {
    /// The principal's roles grant the permission.
    Granted,
    /// The principal's roles do not grant the permission.
    Refused,
    /// RBAC has no say (ABAC decides alone).
    NotApplicable,
}

/// Why a decision came out as it did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// An allow rule's condition held and no deny rule's did.
    AllowedByRule,
    /// A deny rule's condition held.
    DeniedByRule,
    /// No allow rule's condition held (default deny).
    NoAllowRuleMatched,
    /// A condition failed to evaluate; errors deny.
    EvaluationError(EvalError),
    /// The RBAC check refused the permission.
    RbacRefused,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::AllowedByRule => f.write_str("allowed by rule"),
            Reason::DeniedByRule => f.write_str("denied by rule"),
            Reason::NoAllowRuleMatched => f.write_str("no allow rule matched (default deny)"),
            Reason::EvaluationError(e) => write!(f, "evaluation error: {e}"),
            Reason::RbacRefused => f.write_str("refused by RBAC"),
        }
    }
}

const MAX_DECIDING: usize = 4;

/// The outcome of one authorization decision.
#[derive(Clone, Debug)]
pub struct Decision {
    id: uuid::Uuid,
    allowed: bool,
    reason: Reason,
    rules: [u16; MAX_DECIDING],
    n_rules: u8,
    set: Arc<PolicySet>,
}

impl Decision {
    /// True when the action is allowed.
    pub fn allowed(&self) -> bool {
        self.allowed
    }
    /// Why.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }
    /// The decision id carried by the audit event.
    pub fn id(&self) -> uuid::Uuid {
        self.id
    }
    /// Ids of the rules that decided (the allow rule, the deny rule(s), or the rule that
    /// failed to evaluate); empty for a default deny.
    pub fn decided_by(&self) -> impl Iterator<Item = &str> {
        self.rules[..usize::from(self.n_rules)]
            .iter()
            .filter_map(|i| self.set.rules.get(usize::from(*i)).map(|r| &*r.id))
    }
}

struct RuleIds<'a>(&'a Decision);

impl fmt::Display for RuleIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.decided_by().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(id)?;
        }
        Ok(())
    }
}

impl PolicySet {
    /// Loads a policy set from YAML text; `source` names it in errors (a file path).
    ///
    /// # Errors
    /// [`PolicyError`] naming the rule, line and column of the first problem.
    pub fn from_yaml(source: &str, text: &str) -> Result<Self, PolicyError> {
        file::load(source, text)
    }

    /// Loads a policy file.
    ///
    /// # Errors
    /// I/O errors and every error of [`PolicySet::from_yaml`].
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_yaml(&path.display().to_string(), &text)
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Where the set was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The rules, in file order.
    pub fn rules(&self) -> impl Iterator<Item = RuleInfo<'_>> {
        self.rules.iter().map(|r| RuleInfo {
            id: &r.id,
            effect: r.effect,
            actions: &r.actions,
            condition: &r.condition,
            description: &r.description,
            cost: r.cost,
        })
    }

    /// Decides whether `principal` may perform `action` on `resource` in the `request` context.
    pub fn decide(
        self: &Arc<Self>,
        principal: &dyn AttributeSource,
        action: &str,
        resource: &dyn AttributeSource,
        request: &dyn AttributeSource,
    ) -> Decision {
        self.decide_with_rbac(
            RbacVerdict::NotApplicable,
            principal,
            action,
            resource,
            request,
        )
    }

    /// Decides with the RBAC verdict folded in: RBAC `Refused` denies at once; otherwise ABAC
    /// rules decide as in [`decide`](Self::decide). This is the hook through which the RBAC
    /// module combines both checks into one decision and one audit event.
    pub fn decide_with_rbac(
        self: &Arc<Self>,
        rbac: RbacVerdict,
        principal: &dyn AttributeSource,
        action: &str,
        resource: &dyn AttributeSource,
        request: &dyn AttributeSource,
    ) -> Decision {
        let mut d = Decision {
            id: next_decision_id(),
            allowed: false,
            reason: Reason::NoAllowRuleMatched,
            rules: [0; MAX_DECIDING],
            n_rules: 0,
            set: Arc::clone(self),
        };
        if rbac == RbacVerdict::Refused {
            d.reason = Reason::RbacRefused;
        } else {
            self.evaluate(&mut d, principal, action, resource, request);
        }
        tracing::info!(
            target: "arq::audit",
            decision_id = %d.id,
            principal = principal.entity_id().unwrap_or(""),
            action,
            resource_id = resource.entity_id().unwrap_or(""),
            outcome = if d.allowed { "allow" } else { "deny" },
            rules = %RuleIds(&d),
            reason = %d.reason,
            "authorization decision"
        );
        d
    }

    fn evaluate(
        &self,
        d: &mut Decision,
        principal: &dyn AttributeSource,
        action: &str,
        resource: &dyn AttributeSource,
        request: &dyn AttributeSource,
    ) {
        let ctx = Ctx::new(
            [principal, resource, request],
            &self.schema,
            self.runtime_budget,
        );
        let fallback;
        let rules = if let Some(r) = self.by_action.get(action) {
            r
        } else {
            // An action no rule names exactly: only wildcard rules may apply.
            fallback = self.wildcard_rules(action);
            &fallback
        };
        let push = |d: &mut Decision, i: u16| {
            if usize::from(d.n_rules) < MAX_DECIDING {
                d.rules[usize::from(d.n_rules)] = i;
                d.n_rules += 1;
            }
        };
        // Deny overrides allow: every deny rule is evaluated first.
        let mut denied = false;
        for i in rules.deny.candidates(&ctx) {
            match (self.rules[usize::from(i)].eval)(&ctx) {
                Ok(true) => {
                    denied = true;
                    push(d, i);
                }
                Ok(false) => {}
                Err(e) => {
                    d.reason = Reason::EvaluationError(e);
                    d.n_rules = 0;
                    push(d, i);
                    return;
                }
            }
        }
        if denied {
            d.reason = Reason::DeniedByRule;
            return;
        }
        for i in rules.allow.candidates(&ctx) {
            match (self.rules[usize::from(i)].eval)(&ctx) {
                Ok(true) => {
                    d.allowed = true;
                    d.reason = Reason::AllowedByRule;
                    push(d, i);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    d.reason = Reason::EvaluationError(e);
                    push(d, i);
                    return;
                }
            }
        }
    }

    fn wildcard_rules(&self, action: &str) -> ActionRules {
        let covers = |i: &u16| {
            self.rules[usize::from(*i)]
                .actions
                .iter()
                .any(|p| action_matches(p, action))
        };
        ActionRules::build(&self.rules, self.wildcard.iter().copied().filter(covers))
    }
}

/// Decision ids: a random per-process prefix and a counter. Unique, cheap (one atomic add; a
/// UUIDv7 per decision cost a `getrandom` system call), and still formatted as a UUID.
fn next_decision_id() -> uuid::Uuid {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    uuid::Uuid::from_u64_pair(prefix, n)
}

/// `*` matches every action; `write:*` matches every action starting with `write:`.
fn action_matches(pattern: &str, action: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => action.starts_with(prefix),
        None => pattern == action,
    }
}
