//! The rule registry: every rule as data, from which `--list-rules`, `--explain`, the SARIF
//! rule table and docs/check.md's list are generated.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::rules;

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; never fails a run.
    Info,
    /// Should be fixed; fails a run with `--fail-on warning`.
    Warning,
    /// Must be fixed; fails a run by default.
    Error,
}

impl Severity {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The stable id, `<domain>-<name>`.
    pub id: &'static str,
    /// The default severity.
    pub severity: Severity,
    /// For security rules, the CVSS-like score (0.0–10.0) GitHub code scanning ranks by.
    pub security_severity: Option<&'static str>,
    /// What the rule checks, one sentence.
    pub description: &'static str,
    /// How to fix a finding.
    pub remedy: &'static str,
    /// Findings mean an input could not be read or the check configuration is wrong (exit 2).
    pub input_error: bool,
    /// Why the rule cannot run in this build, if it cannot.
    pub unavailable: Option<&'static str>,
}

impl Rule {
    /// The domain: the id up to its first hyphen.
    pub fn domain(&self) -> &'static str {
        self.id.split_once('-').map_or(self.id, |(d, _)| d)
    }

    pub(crate) const fn new(
        id: &'static str,
        severity: Severity,
        description: &'static str,
        remedy: &'static str,
    ) -> Self {
        Self {
            id,
            severity,
            security_severity: None,
            description,
            remedy,
            input_error: false,
            unavailable: None,
        }
    }

    pub(crate) const fn security(mut self, score: &'static str) -> Self {
        self.security_severity = Some(score);
        self
    }

    pub(crate) const fn input(mut self) -> Self {
        self.input_error = true;
        self
    }
}

/// Every rule, grouped by domain in a fixed order.
pub fn all() -> impl Iterator<Item = &'static Rule> {
    [
        rules::manifest::RULES,
        rules::config::RULES,
        rules::auth::RULES,
        rules::routes::RULES,
        rules::policy::RULES,
        rules::migrations::RULES,
        rules::kubernetes::RULES,
        rules::docker::RULES,
        rules::queues::RULES,
        rules::tenancy::RULES,
        rules::meta::RULES,
    ]
    .into_iter()
    .flatten()
}

/// The rule with this id.
pub fn find(id: &str) -> Option<&'static Rule> {
    all().find(|r| r.id == id)
}

/// `arq check --list-rules`.
pub fn list() -> String {
    let mut out = String::new();
    let mut domain = "";
    for r in all() {
        if r.domain() != domain {
            domain = r.domain();
            out.push_str(&format!("{domain}\n"));
        }
        let note = if r.unavailable.is_some() {
            " (not available in this build)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {:<42} {:<7} {}{note}\n",
            r.id, r.severity, r.description
        ));
    }
    out
}

/// `arq check --explain ID`.
pub fn explain(r: &Rule) -> String {
    let mut out = format!(
        "{id}  ({sev}{sec})\n\n{desc}\n\nHow to fix: {remedy}\n",
        id = r.id,
        sev = r.severity,
        sec = r
            .security_severity
            .map(|s| format!(", security severity {s}"))
            .unwrap_or_default(),
        desc = r.description,
        remedy = r.remedy,
    );
    if let Some(why) = r.unavailable {
        out.push_str(&format!("\nNot available in this build: {why}\n"));
    }
    if r.input_error {
        out.push_str(
            "\nA finding of this rule means an input could not be checked: arq check exits 2.\n",
        );
    }
    out.push_str(&format!(
        "\nSuppress one finding, with a reason, in the artifact's own syntax:\n  SQL / Dockerfile: -- arq-check-ignore: {id} reason: <why>   (or # … in a Dockerfile, // … in Rust)\n  Kubernetes:       metadata.annotations: {{ \"arq.dev/check-ignore.{id}\": \"<why>\" }}\n  arq.toml:         [[check.ignore]] rule = \"{id}\", path = \"<file or dir>\", reason = \"<why>\"\n",
        id = r.id
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_well_formed_and_annotation_safe() {
        let mut seen = std::collections::BTreeSet::new();
        for r in all() {
            assert!(seen.insert(r.id), "duplicate {}", r.id);
            assert!(
                r.id.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{}",
                r.id
            );
            // The name segment of `arq.dev/check-ignore.<id>` is at most 63 characters.
            assert!(format!("check-ignore.{}", r.id).len() <= 63, "{}", r.id);
            assert!(!r.domain().is_empty() && r.id.len() > r.domain().len() + 1);
            assert!(!r.description.is_empty() && !r.remedy.is_empty());
        }
    }
}
