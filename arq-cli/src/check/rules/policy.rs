//! policy: the CEL policy files of each service (`<service>/policies/*.yaml`) load — parse,
//! type-check against their schema, stay within the static cost limit — and their test cases
//! (`policies/tests/*.yaml`) pass, all through arq-auth's own library functions
//! ([`arq_auth::policy::PolicySet::from_yaml`], [`arq_auth::policy::run_policy_tests_in`]).

use arq_auth::policy::{PolicyError, PolicySet};

use crate::check::registry::{Rule, Severity};
use crate::check::{Ctx, Finding, line_where};

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "policy-type-check",
        Severity::Error,
        "Every CEL policy file parses and type-checks against its attribute schema.",
        "Fix the expression or the schema so every attribute resolves with the right type.",
    )
    .security("7.0"),
    Rule::new(
        "policy-cost-budget",
        Severity::Error,
        "Every CEL rule's static cost estimate stays within the limit.",
        "Bound the lists a rule iterates (max_size in the schema) or simplify the condition.",
    )
    .security("5.0"),
    Rule::new(
        "policy-tests",
        Severity::Error,
        "Every policy test case (policies/tests/*.yaml) gets the expected decision.",
        "Fix the policy or the test case; the message names the case and the decision.",
    )
    .security("6.0"),
];

fn line_of_rule(text: &str, rule_id: &str) -> u32 {
    line_where(text, |l| {
        let t = l.trim_start().trim_start_matches("- ");
        t.starts_with("id:") && t[3..].trim().trim_matches(['"', '\'']) == rule_id
    })
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for dir in ctx.services.values() {
        let prefix = if dir == "." {
            "policies/".to_owned()
        } else {
            format!("{dir}/policies/")
        };
        let files: Vec<_> = ctx
            .files
            .values()
            .filter(|f| {
                f.rel.starts_with(&prefix)
                    && (f.rel.ends_with(".yaml") || f.rel.ends_with(".yml"))
                    && !f.rel[prefix.len()..].contains('/')
            })
            .collect();
        if files.is_empty() {
            continue;
        }
        let mut loaded = true;
        for f in &files {
            let Err(e) = PolicySet::from_yaml(&f.rel, &f.text) else {
                continue;
            };
            loaded = false;
            let (rule, line) = match &e {
                PolicyError::Syntax { line, .. } | PolicyError::Rule { line, .. } => {
                    ("policy-type-check", u32::try_from(*line).unwrap_or(1))
                }
                PolicyError::Cost { rule_id, .. } => {
                    ("policy-cost-budget", line_of_rule(&f.text, rule_id))
                }
                _ => ("policy-type-check", 1),
            };
            out.push(Finding::new(rule, &f.rel, line, e.to_string()));
        }
        if !loaded {
            continue; // tests need every policy file loaded
        }
        let tests_prefix = format!("{prefix}tests/");
        if !ctx.files.keys().any(|p| p.starts_with(&tests_prefix)) {
            continue;
        }
        match arq_auth::policy::run_policy_tests_in(&ctx.root.join(&prefix)) {
            Ok(report) => {
                for fail in report.failures {
                    let base = std::path::Path::new(&fail.file)
                        .file_name()
                        .map_or_else(|| fail.file.clone(), |n| n.to_string_lossy().into_owned());
                    let rel = format!("{tests_prefix}{base}");
                    let line = ctx
                        .files
                        .get(&rel)
                        .map_or(1, |t| line_where(&t.text, |l| l.contains(&fail.name)));
                    out.push(Finding::new(
                        "policy-tests",
                        &rel,
                        line,
                        format!("policy test {:?} failed: {}", fail.name, fail.message),
                    ));
                }
            }
            Err(e) => out.push(Finding::new(
                "policy-tests",
                &tests_prefix,
                1,
                e.to_string(),
            )),
        }
    }
}
