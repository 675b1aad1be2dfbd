//! policy: CEL policies under `services/*/policies/`. These rules need arq-auth's policy engine
//! (`arq_auth::policy`), which this build does not have yet: they are registered so ids are
//! stable and documented, marked unavailable, and report nothing. They are not faked.

use crate::check::registry::{Rule, Severity};

const WHY: &str = "arq_auth::policy (the CEL engine) is not in this build of arq; the rule runs once arq-cli is built against an arq-auth that has it";

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "policy-type-check",
        Severity::Error,
        "Every CEL policy type-checks against its attribute schema.",
        "Fix the expression or the schema so every attribute resolves with the right type.",
    )
    .unavailable(WHY),
    Rule::new(
        "policy-cost-budget",
        Severity::Error,
        "Every CEL policy's worst-case evaluation cost stays within the budget.",
        "Simplify the expression (fewer comprehensions, smaller lists) or split the policy.",
    )
    .unavailable(WHY),
    Rule::new(
        "policy-tests",
        Severity::Error,
        "Every policy's test cases pass.",
        "Fix the policy or the test case; `arq check --explain policy-tests` shows the format.",
    )
    .unavailable(WHY),
];
