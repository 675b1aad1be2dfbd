//! Rules about the check configuration and suppressions themselves.

use crate::check::registry::{Rule, Severity};

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "check-config",
        Severity::Error,
        "The [check] section of arq.toml is well-formed.",
        "Fix the [check] section; see docs/check.md for its keys.",
    )
    .input(),
    Rule::new(
        "check-unknown-rule",
        Severity::Error,
        "Every suppression and severity override names a rule that exists.",
        "Correct the rule id (see `arq check --list-rules`) or remove the suppression.",
    )
    .input(),
    Rule::new(
        "check-suppression-reason",
        Severity::Error,
        "Every suppression gives a reason; one without a reason suppresses nothing.",
        "Add `reason: <why>` to the comment, the annotation's value, or `reason = \"...\"` to [[check.ignore]].",
    ),
    Rule::new(
        "check-unused-suppression",
        Severity::Warning,
        "Every suppression suppresses at least one finding.",
        "Remove the stale suppression.",
    ),
];
