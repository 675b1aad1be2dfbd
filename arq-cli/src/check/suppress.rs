//! Suppressions, each in its artifact's own syntax and each with a reason:
//!
//! - SQL: `-- arq-check-ignore: <rule> reason: <why>` on the line(s) before a statement;
//! - Dockerfile: `# arq-check-ignore: <rule> reason: <why>` before an instruction;
//! - Rust: `// arq-check-ignore: <rule> reason: <why>` on the line(s) before the code;
//! - Kubernetes: the annotation `arq.dev/check-ignore.<rule>: "<why>"` on the object;
//! - anything: `[[check.ignore]]` in `arq.toml` with `rule`, `path` and `reason`.
//!
//! A suppression without a reason suppresses nothing and is reported; one naming an unknown rule
//! is reported as a configuration error (exit 2); one that suppresses nothing is reported too,
//! like ruff's RUF100, so stale suppressions do not pile up.

use std::sync::LazyLock;

use regex::Regex;

use super::rules::kubernetes;
use super::{Ctx, Finding, Report, line_where, registry};

/// One suppression.
#[derive(Debug, Clone)]
pub(crate) struct Suppression {
    pub(crate) rule: String,
    pub(crate) reason: Option<String>,
    /// Where it is written.
    pub(crate) origin_path: String,
    pub(crate) origin_line: u32,
    /// The file or directory it covers (none: everywhere).
    pub(crate) path: Option<String>,
    /// The lines it covers, inclusive (none: the whole path).
    pub(crate) lines: Option<(u32, u32)>,
}

impl Suppression {
    fn covers(&self, f: &Finding) -> bool {
        if f.rule != self.rule {
            return false;
        }
        if let Some(p) = &self.path {
            let p = p.trim_end_matches('/');
            if f.path != p && !f.path.starts_with(&format!("{p}/")) {
                return false;
            }
        }
        self.lines.is_none_or(|(a, b)| (a..=b).contains(&f.line))
    }
}

static COMMENT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"^\s*(?:--|#|//)\s*arq-check-ignore:\s*([A-Za-z0-9_./-]+)\s*(?:reason:\s*(.*?))?\s*$",
    )
    .ok()
});

/// `-- arq-check-ignore:` / `# arq-check-ignore:` / `// arq-check-ignore:` comments in SQL files,
/// Dockerfiles and Rust sources: each
/// covers the next line that is neither blank nor a comment.
fn comment_suppressions(path: &str, text: &str, out: &mut Vec<Suppression>) {
    let Some(re) = COMMENT.as_ref() else { return };
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let Some(c) = re.captures(l) else { continue };
        let target = lines
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, t)| {
                let t = t.trim();
                !t.is_empty() && !t.starts_with("--") && !t.starts_with('#') && !t.starts_with("//")
            })
            .map_or(0, |(j, _)| j + 1);
        let target = u32::try_from(target).unwrap_or(u32::MAX);
        out.push(Suppression {
            rule: c[1].to_owned(),
            reason: c.get(2).map(|m| m.as_str().to_owned()),
            origin_path: path.to_owned(),
            origin_line: u32::try_from(i + 1).unwrap_or(u32::MAX),
            path: Some(path.to_owned()),
            lines: Some((target, target)),
        });
    }
}

fn collect(ctx: &Ctx) -> Vec<Suppression> {
    let mut out = Vec::new();
    for f in ctx.files.values() {
        let name = f.rel.rsplit('/').next().unwrap_or(&f.rel);
        if f.rel.ends_with(".sql")
            || f.rel.ends_with(".rs")
            || name == "Dockerfile"
            || name.starts_with("Dockerfile.")
        {
            comment_suppressions(&f.rel, &f.text, &mut out);
        }
    }
    out.extend(kubernetes::suppressions(ctx));
    if let Some(text) = &ctx.manifest_text {
        let headers: Vec<u32> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with("[[check.ignore]]"))
            .map(|(i, _)| u32::try_from(i + 1).unwrap_or(u32::MAX))
            .collect();
        for (i, e) in ctx.settings.ignore.iter().enumerate() {
            out.push(Suppression {
                rule: e.rule.clone(),
                reason: e.reason.clone(),
                origin_path: crate::manifest::MANIFEST_FILE.to_owned(),
                origin_line: headers.get(i).copied().unwrap_or(1),
                path: e.path.clone(),
                lines: None,
            });
        }
    }
    out
}

/// Applies every suppression to `findings`, adding findings about the suppressions themselves.
pub(crate) fn apply(ctx: &Ctx, findings: Vec<Finding>) -> Report {
    let sups = collect(ctx);
    let mut meta = Vec::new();
    let mut valid = Vec::new();
    for s in sups {
        if registry::find(&s.rule).is_none() {
            meta.push(Finding::new(
                "check-unknown-rule",
                &s.origin_path,
                s.origin_line,
                format!(
                    "suppression names unknown rule {:?}; see `arq check --list-rules`",
                    s.rule
                ),
            ));
        } else if s.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            meta.push(Finding::new(
                "check-suppression-reason",
                &s.origin_path,
                s.origin_line,
                format!(
                    "suppression of {} has no reason, so it suppresses nothing; add `reason: <why>`",
                    s.rule
                ),
            ));
        } else {
            valid.push((s, false));
        }
    }
    if let Some(text) = &ctx.manifest_text {
        for rule in ctx.settings.named_rules() {
            if registry::find(rule).is_none() {
                let line = line_where(text, |l| l.trim_start().starts_with(rule));
                meta.push(Finding::new(
                    "check-unknown-rule",
                    crate::manifest::MANIFEST_FILE,
                    line,
                    format!(
                        "[check.severity] names unknown rule {rule:?}; see `arq check --list-rules`"
                    ),
                ));
            }
        }
    }
    let mut report = Report::default();
    for f in findings {
        let hit = valid.iter_mut().find(|(s, _)| s.covers(&f));
        match hit {
            Some((_, used)) => {
                *used = true;
                report.suppressed += 1;
            }
            None => report.findings.push(f),
        }
    }
    for (s, used) in valid {
        if !used {
            meta.push(Finding::new(
                "check-unused-suppression",
                &s.origin_path,
                s.origin_line,
                format!(
                    "suppression of {} matches no finding; remove it (reason was: {})",
                    s.rule,
                    s.reason.unwrap_or_default()
                ),
            ));
        }
    }
    report.findings.extend(meta);
    report
}
