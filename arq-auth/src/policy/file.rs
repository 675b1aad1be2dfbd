//! Reading, checking and compiling a policy file.

use std::collections::HashSet;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::cel::Location;

use super::condition::{ConditionCompiler, ConditionError};
use super::index::FastMap;
use super::schema::{AttrType, Schema};
use super::source::Entity;
use super::{ActionRules, DEFAULT_MAX_COST, DEFAULT_RUNTIME_BUDGET, Effect, PolicySet, Rule};

/// Why a policy file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {message}")]
    Io {
        /// Path.
        path: String,
        /// OS error.
        message: String,
    },
    /// The YAML is malformed or does not have the policy file's shape.
    #[error("{source_name}:{line}:{column}: invalid policy file: {message}")]
    Syntax {
        /// File name.
        source_name: String,
        /// Line (1-based; 0 when unknown).
        line: usize,
        /// Column (1-based; 0 when unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The schema is invalid.
    #[error("{source_name}: invalid schema: {message}")]
    Schema {
        /// File name.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A rule is invalid: its condition does not parse or type-check, or its shape is wrong.
    #[error("{source_name}:{line}:{column}: rule '{rule_id}': {message}")]
    Rule {
        /// File name.
        source_name: String,
        /// The rule's id.
        rule_id: String,
        /// Line in the file (1-based).
        line: usize,
        /// Column in the file (1-based).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A rule's static cost estimate is over the limit.
    #[error(
        "{source_name}: rule '{rule_id}': estimated cost {estimate} exceeds the limit {limit}; bound the lists it iterates (max_size) or simplify it"
    )]
    Cost {
        /// File name.
        source_name: String,
        /// The rule's id.
        rule_id: String,
        /// Estimated cost.
        estimate: u64,
        /// Configured limit.
        limit: u64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    schema: RawSchema,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_cost: Option<u64>,
    runtime_budget: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    #[serde(default)]
    principal: IndexMap<String, RawAttr>,
    #[serde(default)]
    resource: IndexMap<String, RawAttr>,
    #[serde(default)]
    request: IndexMap<String, RawAttr>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawAttr {
    Short(String),
    Full {
        #[serde(rename = "type")]
        ty: String,
        max_size: Option<usize>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    effect: Effect,
    actions: Vec<String>,
    condition: String,
    #[serde(default)]
    description: String,
}

/// Largest number of attributes per entity.
const MAX_ATTRIBUTES: usize = 256;

pub(crate) fn load(source: &str, text: &str) -> Result<PolicySet, PolicyError> {
    let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| {
        let loc = e.location();
        PolicyError::Syntax {
            source_name: source.to_owned(),
            line: loc.as_ref().map_or(0, serde_yaml_ng::Location::line),
            column: loc.as_ref().map_or(0, serde_yaml_ng::Location::column),
            message: e.to_string(),
        }
    })?;
    let schema_err = |message: String| PolicyError::Schema {
        source_name: source.to_owned(),
        message,
    };
    let mut schema = Schema::default();
    for (entity, attrs) in [
        (Entity::Principal, &raw.schema.principal),
        (Entity::Resource, &raw.schema.resource),
        (Entity::Request, &raw.schema.request),
    ] {
        if attrs.len() > MAX_ATTRIBUTES {
            return Err(schema_err(format!(
                "{} declares {} attributes; the limit is {MAX_ATTRIBUTES}",
                entity.as_str(),
                attrs.len()
            )));
        }
        for (name, a) in attrs {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(schema_err(format!(
                    "attribute name '{name}' of {} must be letters, digits and underscores",
                    entity.as_str()
                )));
            }
            let ty = match a {
                RawAttr::Short(t) => AttrType::parse(t, None),
                RawAttr::Full { ty, max_size } => AttrType::parse(ty, *max_size),
            }
            .map_err(|m| schema_err(format!("{}.{name}: {m}", entity.as_str())))?;
            schema.declare(entity, name, ty);
        }
    }
    let max_cost = raw.limits.max_cost.unwrap_or(DEFAULT_MAX_COST);
    let mut compiler = ConditionCompiler::new(schema).with_max_cost(max_cost);
    let runtime_budget = raw.limits.runtime_budget.unwrap_or(DEFAULT_RUNTIME_BUDGET);
    if raw.rules.len() > usize::from(u16::MAX) {
        return Err(schema_err("too many rules (limit 65535)".to_owned()));
    }
    let mut rules = Vec::with_capacity(raw.rules.len());
    let mut ids = HashSet::new();
    for r in &raw.rules {
        let locate = |pos: Option<u32>| locate_condition(text, &r.id, &r.condition, pos);
        let rule_err = |message: String, pos: Option<u32>| {
            let (line, column) = locate(pos);
            PolicyError::Rule {
                source_name: source.to_owned(),
                rule_id: r.id.clone(),
                line,
                column,
                message,
            }
        };
        if r.id.trim().is_empty() {
            return Err(rule_err("rule id is empty".to_owned(), None));
        }
        if !ids.insert(r.id.clone()) {
            return Err(rule_err("duplicate rule id".to_owned(), None));
        }
        if r.actions.is_empty() {
            return Err(rule_err("rule covers no actions".to_owned(), None));
        }
        let compiled = compiler.compile(&r.condition).map_err(|e| match e {
            ConditionError::Invalid { message, pos } => rule_err(message, Some(pos)),
            ConditionError::Cost { estimate, limit } => PolicyError::Cost {
                source_name: source.to_owned(),
                rule_id: r.id.clone(),
                estimate,
                limit,
            },
        })?;
        rules.push(Rule {
            id: Arc::from(r.id.as_str()),
            effect: r.effect,
            actions: r.actions.clone(),
            description: r.description.clone(),
            condition: r.condition.clone(),
            cost: compiled.cost,
            eval: compiled.eval,
            guards: compiled.guards,
        });
    }
    // Index rules by action; wildcard patterns are matched at decision time and also folded
    // into every exact action's list.
    let mut by_action: FastMap<String, ActionRules> = FastMap::default();
    let mut wildcard = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let i = u16::try_from(i).unwrap_or(u16::MAX);
        if r.actions.iter().any(|a| a.ends_with('*')) {
            wildcard.push(i);
        }
        for a in r.actions.iter().filter(|a| !a.ends_with('*')) {
            by_action.entry(a.clone()).or_default();
        }
    }
    let actions: Vec<String> = by_action.keys().cloned().collect();
    for a in actions {
        let covered = (0..rules.len()).filter_map(|i| {
            let covers = rules[i]
                .actions
                .iter()
                .any(|p| super::action_matches(p, &a));
            covers.then(|| u16::try_from(i).unwrap_or(u16::MAX))
        });
        let ar = ActionRules::build(&rules, covered);
        by_action.insert(a, ar);
    }
    Ok(PolicySet {
        source: source.to_owned(),
        schema: compiler.shared_schema(),
        rules,
        by_action,
        wildcard,
        runtime_budget,
    })
}

/// Finds the line and column in the file of byte `pos` of rule `id`'s condition. YAML parsers
/// with span support are heavy; the file layout is regular enough to locate the `condition:` key
/// of the rule by its `id:` line. Plain and literal-block (`|`) scalars map exactly; quoted and
/// folded scalars map to the start of the condition.
fn locate_condition(text: &str, id: &str, cond: &str, pos: Option<u32>) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let is_id_line = |l: &str| {
        let t = l.trim_start().trim_start_matches('-').trim_start();
        t.strip_prefix("id:").is_some_and(|v| {
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
            v == id
        })
    };
    let Some(id_line) = lines.iter().position(|l| is_id_line(l)) else {
        return (0, 0);
    };
    // The rule's item starts at the nearest line at or above `id:` holding a `-`.
    let mut start = id_line;
    while start > 0 && !lines[start].trim_start().starts_with('-') {
        start -= 1;
    }
    let item_indent = lines[start].len() - lines[start].trim_start().len();
    let mut end = lines.len();
    for (j, l) in lines.iter().enumerate().skip(start + 1) {
        let ind = l.len() - l.trim_start().len();
        if !l.trim().is_empty() && ind <= item_indent {
            end = j;
            break;
        }
    }
    let Some(cl) = (start..end).find(|&j| {
        lines[j]
            .trim_start()
            .trim_start_matches('-')
            .trim_start()
            .starts_with("condition:")
    }) else {
        return (id_line + 1, 1);
    };
    let line = lines[cl];
    let key_col = line.find("condition:").unwrap_or(0);
    let after = &line[key_col + "condition:".len()..];
    let value_col = key_col + "condition:".len() + (after.len() - after.trim_start().len());
    let rest = after.trim();
    let loc = pos.map(|p| Location::of(cond, p));
    if rest.starts_with('|') || rest.starts_with('>') {
        // Block scalar: content starts on the next non-empty line.
        let first = (cl + 1..end)
            .find(|&j| !lines[j].trim().is_empty())
            .unwrap_or(cl + 1);
        let indent = lines
            .get(first)
            .map_or(0, |l| l.len() - l.trim_start().len());
        return match (rest.starts_with('|'), loc) {
            (true, Some(l)) => (first + usize_of(l.line), indent + usize_of(l.column)),
            _ => (first + 1, indent + 1),
        };
    }
    let quoted = rest.starts_with('"') || rest.starts_with('\'');
    match loc {
        Some(l) if l.line == 1 => (cl + 1, value_col + usize::from(quoted) + usize_of(l.column)),
        _ => (cl + 1, value_col + 1),
    }
}

fn usize_of(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}
