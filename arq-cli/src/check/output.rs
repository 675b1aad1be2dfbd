//! Rendering a [`Report`]: human (grouped by file, coloured only when the writer is a
//! terminal — `anstream` strips the styles otherwise), JSON, SARIF 2.1.0 and GitHub workflow
//! annotations.

use std::collections::BTreeMap;

use anstyle::{AnsiColor, Style};
use serde_json::{Value, json};

use super::{Report, Severity, registry};

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Grouped by file, `path:line`, coloured on a terminal.
    #[default]
    Human,
    /// One JSON document.
    Json,
    /// SARIF 2.1.0, for GitHub code scanning and other SARIF consumers.
    Sarif,
    /// GitHub Actions workflow commands (`::error file=…,line=…::…`).
    Github,
}

fn style(sev: Severity) -> Style {
    match sev {
        Severity::Error => AnsiColor::Red.on_default().bold(),
        Severity::Warning => AnsiColor::Yellow.on_default().bold(),
        Severity::Info => AnsiColor::Cyan.on_default(),
    }
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Human => human(report),
        Format::Json => json_doc(report),
        Format::Sarif => serde_json::to_string_pretty(&sarif(report)).unwrap_or_default() + "\n",
        Format::Github => github(report),
    }
}

fn human(report: &Report) -> String {
    let mut by_file: BTreeMap<&str, Vec<&super::Finding>> = BTreeMap::new();
    for f in &report.findings {
        by_file.entry(&f.path).or_default().push(f);
    }
    let bold = Style::new().bold();
    let dim = Style::new().dimmed();
    let mut out = String::new();
    for (path, fs) in &by_file {
        out.push_str(&format!("{bold}{path}{bold:#}\n"));
        for f in fs {
            let s = style(f.severity);
            out.push_str(&format!(
                "  {path}:{line}: {s}{sev}{s:#} {dim}[{rule}]{dim:#} {msg}\n",
                line = f.line,
                sev = f.severity,
                rule = f.rule,
                msg = f.message
            ));
        }
    }
    let count = |s: Severity| report.findings.iter().filter(|f| f.severity == s).count();
    let (e, w, i) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info),
    );
    if report.findings.is_empty() {
        out.push_str(&format!("{bold}arq check{bold:#}: no findings"));
    } else {
        out.push_str(&format!(
            "{bold}arq check{bold:#}: {e} error(s), {w} warning(s), {i} info"
        ));
    }
    if report.suppressed > 0 || report.baselined > 0 {
        out.push_str(&format!(
            " ({} suppressed, {} in the baseline)",
            report.suppressed, report.baselined
        ));
    }
    out.push('\n');
    out
}

fn json_doc(report: &Report) -> String {
    let findings: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            json!({
                "rule": f.rule,
                "severity": f.severity,
                "path": f.path,
                "line": f.line,
                "message": f.message,
                "fingerprint": f.fingerprint(),
            })
        })
        .collect();
    let doc = json!({
        "version": 1,
        "findings": findings,
        "suppressed": report.suppressed,
        "baselined": report.baselined,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

/// The SARIF 2.1.0 log of `report`.
pub fn sarif(report: &Report) -> Value {
    let rules: Vec<&registry::Rule> = registry::all().collect();
    let index: BTreeMap<&str, usize> = rules.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    let descriptors: Vec<Value> = rules
        .iter()
        .map(|r| {
            let mut props = json!({ "tags": [r.domain()] });
            if let Some(score) = r.security_severity {
                props["security-severity"] = json!(score);
                props["tags"] = json!([r.domain(), "security"]);
            }
            json!({
                "id": r.id,
                "name": r.id,
                "shortDescription": { "text": r.description },
                "fullDescription": { "text": r.description },
                "help": { "text": format!("{} How to fix: {}", r.description, r.remedy) },
                "defaultConfiguration": { "level": level(r.severity) },
                "properties": props,
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            json!({
                "ruleId": f.rule,
                "ruleIndex": index.get(f.rule).copied().unwrap_or(0),
                "level": level(f.severity),
                "message": { "text": f.message },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": f.path, "uriBaseId": "%SRCROOT%" },
                        "region": { "startLine": f.line },
                    }
                }],
                "partialFingerprints": { "arqFindingHash/v1": f.fingerprint() },
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "arq check",
                    "informationUri": "https://github.com/arq-rs/arq",
                    "semanticVersion": env!("CARGO_PKG_VERSION"),
                    "rules": descriptors,
                }
            },
            "originalUriBaseIds": { "%SRCROOT%": { "description": { "text": "The checked platform's root." } } },
            "results": results,
        }]
    })
}

/// GitHub workflow commands escape `%`, CR and LF in messages, plus `:` and `,` in properties.
fn esc(s: &str, property: bool) -> String {
    let s = s
        .replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A");
    if property {
        s.replace(':', "%3A").replace(',', "%2C")
    } else {
        s
    }
}

fn github(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let cmd = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "notice",
        };
        out.push_str(&format!(
            "::{cmd} file={},line={},title={}::{}\n",
            esc(&f.path, true),
            f.line,
            esc(f.rule, true),
            esc(&f.message, false)
        ));
    }
    out
}
