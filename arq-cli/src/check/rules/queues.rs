//! queues: every queue a service consumes (`queues = [...]` in `[services.NAME]`) is declared
//! in `[queues.NAME]` of arq.toml with a dead-letter queue and a prefetch.
//!
//! ```toml
//! [queues."email.send"]
//! dead_letter = "email.send.dead"
//! prefetch = 10
//! ```

use crate::check::registry::{Rule, Severity};
use crate::check::{Ctx, Finding, line_where};
use crate::manifest::MANIFEST_FILE;

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "queues-declared",
        Severity::Error,
        "Every queue a service consumes is declared in [queues.NAME] of arq.toml.",
        "Add [queues.\"<name>\"] with dead_letter and prefetch.",
    ),
    Rule::new(
        "queues-dead-letter",
        Severity::Error,
        "Every declared queue names its dead-letter queue.",
        "Set dead_letter = \"<name>.dead\" (arq-queue's dead-letter queue) in [queues.\"<name>\"].",
    ),
    Rule::new(
        "queues-prefetch",
        Severity::Error,
        "Every declared queue sets a prefetch between 1 and 1000.",
        "Set prefetch = 10 (email), 20 (push), 5 (reports), … in [queues.\"<name>\"].",
    ),
];

fn header_line(text: &str, name: &str) -> u32 {
    line_where(text, |l| {
        let t = l.trim();
        t == format!("[queues.{name}]") || t == format!("[queues.\"{name}\"]")
    })
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    let (Some(m), Some(table), Some(text)) =
        (&ctx.manifest, &ctx.manifest_table, &ctx.manifest_text)
    else {
        return;
    };
    let declared = table.get("queues").and_then(toml::Value::as_table);
    for (svc, entry) in &m.services {
        for q in &entry.queues {
            if declared.and_then(|d| d.get(q)).is_none() {
                out.push(Finding::new(
                    "queues-declared",
                    MANIFEST_FILE,
                    line_where(text, |l| {
                        l.trim_start().starts_with(&format!("[services.{svc}]"))
                    }),
                    format!(
                        "service {svc} consumes queue {q:?}, which is not declared in [queues]"
                    ),
                ));
            }
        }
    }
    for (name, q) in declared.into_iter().flatten() {
        let line = header_line(text, name);
        let dl = q
            .get("dead_letter")
            .and_then(toml::Value::as_str)
            .is_some_and(|s| !s.trim().is_empty());
        if !dl {
            out.push(Finding::new(
                "queues-dead-letter",
                MANIFEST_FILE,
                line,
                format!("queue {name:?} has no dead_letter queue"),
            ));
        }
        let pf = q.get("prefetch").and_then(toml::Value::as_integer);
        if !pf.is_some_and(|p| (1..=1000).contains(&p)) {
            out.push(Finding::new(
                "queues-prefetch",
                MANIFEST_FILE,
                line,
                format!(
                    "queue {name:?} has prefetch {}; set 1..=1000",
                    pf.map_or_else(|| "unset".to_owned(), |p| p.to_string())
                ),
            ));
        }
    }
}
