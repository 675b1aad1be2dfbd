//! Policy tests: YAML cases (principal, resource, request, action → expected decision) run
//! against a policy set. `arq check` and generated services' `cargo test` call
//! [`run_policy_tests_in`].
//!
//! ```yaml
//! tests:
//!   - name: members write projects of their department
//!     action: write:project
//!     principal: { role: member, department: eng, costCenters: [cc1] }
//!     resource: { department: eng, costCenter: cc1 }
//!     request: { region: eu }
//!     expect: allow          # or deny
//!     rules: [dept-write]    # optional: the rules that must decide
//! ```

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::cel::{Key, MapValue, Value};

use super::schema::AttrType;
use super::source::{Entity, MapAttributes};
use super::{PolicyError, PolicySet};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    policy: Option<String>,
    tests: Vec<TestCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    action: String,
    #[serde(default)]
    principal: serde_yaml_ng::Mapping,
    #[serde(default)]
    resource: serde_yaml_ng::Mapping,
    #[serde(default)]
    request: serde_yaml_ng::Mapping,
    expect: Expectation,
    #[serde(default)]
    rules: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Expectation {
    Allow,
    Deny,
}

/// One failed policy test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTestFailure {
    /// Test file.
    pub file: String,
    /// Test name.
    pub name: String,
    /// What went wrong.
    pub message: String,
}

/// The outcome of a policy test run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyTestReport {
    /// Cases run.
    pub total: usize,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed, with reasons.
    pub failures: Vec<PolicyTestFailure>,
}

impl PolicyTestReport {
    /// True when every case passed.
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }
}

fn yaml_to_value(v: &serde_yaml_ng::Value, ty: &AttrType) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match (ty, v) {
        (AttrType::Bool, Y::Bool(b)) => Value::Bool(*b),
        (AttrType::Int, Y::Number(n)) => Value::Int(n.as_i64().ok_or("not an int")?),
        (AttrType::Uint, Y::Number(n)) => Value::Uint(n.as_u64().ok_or("not a uint")?),
        (AttrType::Double, Y::Number(n)) => Value::Double(n.as_f64().ok_or("not a double")?),
        (AttrType::String, Y::String(s)) => Value::string(s.as_str()),
        (AttrType::Bytes, Y::String(s)) => Value::Bytes(Arc::from(s.as_bytes())),
        (AttrType::Timestamp, Y::String(s)) => crate::cel::eval_str(&format!("timestamp({s:?})"))?,
        (AttrType::Duration, Y::String(s)) => crate::cel::eval_str(&format!("duration({s:?})"))?,
        (AttrType::List { elem, .. }, Y::Sequence(items)) => Value::list(
            items
                .iter()
                .map(|i| yaml_to_value(i, elem))
                .collect::<Result<_, _>>()?,
        ),
        (AttrType::Map { value, .. }, Y::Mapping(m)) => {
            let mut mv = MapValue::new();
            for (k, v) in m {
                let Y::String(k) = k else {
                    return Err("map keys must be strings".to_owned());
                };
                mv.insert(Key::String(Arc::from(k.as_str())), yaml_to_value(v, value)?);
            }
            Value::Map(Arc::new(mv))
        }
        (AttrType::Dyn, v) => dyn_value(v)?,
        (t, v) => return Err(format!("expected {t}, found {v:?}")),
    })
}

fn dyn_value(v: &serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_u64().map(Value::Uint))
            .or_else(|| n.as_f64().map(Value::Double))
            .ok_or("bad number")?,
        Y::String(s) => Value::string(s.as_str()),
        Y::Sequence(items) => Value::list(items.iter().map(dyn_value).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut mv = MapValue::new();
            for (k, v) in m {
                let key = Key::from_value(&dyn_value(k)?).ok_or("unsupported key")?;
                mv.insert(key, dyn_value(v)?);
            }
            Value::Map(Arc::new(mv))
        }
        Y::Tagged(t) => dyn_value(&t.value)?,
    })
}

fn attributes(
    set: &PolicySet,
    entity: Entity,
    m: &serde_yaml_ng::Mapping,
) -> Result<MapAttributes, String> {
    let mut mv = MapValue::new();
    let mut id = None;
    for (k, v) in m {
        let serde_yaml_ng::Value::String(name) = k else {
            return Err(format!(
                "{} attribute names must be strings",
                entity.as_str()
            ));
        };
        let Some((_, ty)) = set
            .schema()
            .attributes(entity)
            .iter()
            .find(|(n, _)| n == name)
        else {
            if name == "id" {
                id = v.as_str().map(str::to_owned);
                continue;
            }
            return Err(format!(
                "{}.{name} is not declared in the schema",
                entity.as_str()
            ));
        };
        if name == "id" {
            id = v.as_str().map(str::to_owned);
        }
        let value = yaml_to_value(v, ty).map_err(|e| format!("{}.{name}: {e}", entity.as_str()))?;
        mv.insert(Key::String(Arc::from(name.as_str())), value);
    }
    let attrs = MapAttributes::new(mv);
    Ok(match id {
        Some(id) => attrs.with_id(id),
        None => attrs,
    })
}

/// Runs the cases of the test files in `tests_dir` (`*.yaml`) against `set`.
///
/// # Errors
/// A test file cannot be read or parsed.
pub fn run_policy_tests(
    set: &Arc<PolicySet>,
    tests_dir: &Path,
) -> Result<PolicyTestReport, PolicyError> {
    let mut report = PolicyTestReport::default();
    for path in yaml_files(tests_dir)? {
        run_file(set, &path, &mut report)?;
    }
    Ok(report)
}

fn yaml_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, PolicyError> {
    let io = |e: std::io::Error| PolicyError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn run_file(
    set: &Arc<PolicySet>,
    path: &Path,
    report: &mut PolicyTestReport,
) -> Result<(), PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let file: TestFile = serde_yaml_ng::from_str(&text).map_err(|e| PolicyError::Syntax {
        source_name: path.display().to_string(),
        line: e.location().map_or(0, |l| l.line()),
        column: e.location().map_or(0, |l| l.column()),
        message: e.to_string(),
    })?;
    let file_name = path.display().to_string();
    for case in &file.tests {
        report.total += 1;
        let fail = |message: String| PolicyTestFailure {
            file: file_name.clone(),
            name: case.name.clone(),
            message,
        };
        let sources = (|| {
            Ok::<_, String>((
                attributes(set, Entity::Principal, &case.principal)?,
                attributes(set, Entity::Resource, &case.resource)?,
                attributes(set, Entity::Request, &case.request)?,
            ))
        })();
        let (p, r, q) = match sources {
            Ok(s) => s,
            Err(m) => {
                report.failures.push(fail(m));
                continue;
            }
        };
        let d = set.decide(&p, &case.action, &r, &q);
        let got = if d.allowed() {
            Expectation::Allow
        } else {
            Expectation::Deny
        };
        let rules: Vec<String> = d.decided_by().map(str::to_owned).collect();
        if got != case.expect {
            report.failures.push(fail(format!(
                "expected {:?}, got {got:?} ({}; rules: [{}])",
                case.expect,
                d.reason(),
                rules.join(", ")
            )));
            continue;
        }
        if let Some(want) = &case.rules
            && *want != rules
        {
            report.failures.push(fail(format!(
                "decided by [{}], expected [{}]",
                rules.join(", "),
                want.join(", ")
            )));
            continue;
        }
        report.passed += 1;
    }
    Ok(())
}

/// Loads the policy files of a service's `policies/` directory (`*.yaml`) and runs the test files
/// of `policies/tests/`. A test file picks its policy file with `policy: <file name>`; without
/// it, it runs against every policy file.
///
/// # Errors
/// A policy file fails to load or a test file cannot be read.
pub fn run_policy_tests_in(policies_dir: &Path) -> Result<PolicyTestReport, PolicyError> {
    let mut sets = Vec::new();
    for path in yaml_files(policies_dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sets.push((name, Arc::new(PolicySet::from_file(&path)?)));
    }
    let mut report = PolicyTestReport::default();
    let tests_dir = policies_dir.join("tests");
    if !tests_dir.is_dir() {
        return Ok(report);
    }
    for path in yaml_files(&tests_dir)? {
        let text = std::fs::read_to_string(&path).map_err(|e| PolicyError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let wanted: Option<String> = serde_yaml_ng::from_str::<TestFile>(&text)
            .ok()
            .and_then(|f| f.policy);
        for (name, set) in &sets {
            if wanted.as_ref().is_none_or(|w| w == name) {
                run_file(set, &path, &mut report)?;
            }
        }
    }
    Ok(report)
}
