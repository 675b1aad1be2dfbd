//! `arq check`: the CI gate for a platform (or a standalone service).
//!
//! The rules are data ([`registry::all`]): a stable id, a domain, a severity, a description and
//! a remedy each, from which `--list-rules`, `--explain` and the SARIF rule table are generated.
//! A rule id is `<domain>-<name>` in lowercase letters, digits and hyphens: the domain never
//! contains a hyphen, so the first hyphen separates it, and the id is valid inside a Kubernetes
//! annotation key (`arq.dev/check-ignore.migrations-rls-forced`), a SQL comment and TOML.
//!
//! A run reads the platform once into a `Ctx`, lets every domain add [`Finding`]s, applies
//! suppressions (each in its artifact's own syntax, each with a reason), the `[check]` severity
//! overrides and the baseline, and returns a [`Report`]. Findings of rules marked
//! [`Rule::input_error`] mean the checker could not read an input; they make the exit code 2.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub mod baseline;
pub mod live;
pub mod output;
pub mod registry;
mod rules;
mod settings;
mod suppress;

pub use registry::{Rule, Severity};
pub use settings::CheckSettings;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule id.
    pub rule: &'static str,
    /// The effective severity (after `[check]` overrides).
    pub severity: Severity,
    /// The file, relative to the checked root, with `/` separators.
    pub path: String,
    /// The 1-based line the finding is about (1 when the whole file is meant).
    pub line: u32,
    /// What is wrong, specifically.
    pub message: String,
}

impl Finding {
    /// A finding of `rule` (its registry severity; overrides are applied later).
    pub(crate) fn new(rule: &'static str, path: &str, line: u32, message: String) -> Self {
        let severity = registry::find(rule).map_or(Severity::Error, |r| r.severity);
        Self {
            rule,
            severity,
            path: path.to_owned(),
            line: line.max(1),
            message,
        }
    }

    /// A fingerprint that survives unrelated edits (no line number in it): used by baselines
    /// and SARIF `partialFingerprints`.
    pub fn fingerprint(&self) -> String {
        crate::plan::sha256_hex(&format!(
            "{}\u{0}{}\u{0}{}",
            self.rule, self.path, self.message
        ))
    }
}

/// What `arq check` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Drop findings whose fingerprints are in this baseline file.
    pub baseline: Option<PathBuf>,
    /// Also run the live tenancy audit against this database URL.
    pub database_url: Option<String>,
    /// The runtime role the live audit checks (default `arq_app`).
    pub runtime_role: Option<String>,
}

/// The result of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Findings left after suppressions and the baseline, sorted by path, line and rule.
    pub findings: Vec<Finding>,
    /// How many findings suppressions hid.
    pub suppressed: usize,
    /// How many findings the baseline hid.
    pub baselined: usize,
}

impl Report {
    /// Whether a finding means the checker could not read an input (exit 2).
    pub fn has_input_errors(&self) -> bool {
        self.findings
            .iter()
            .any(|f| registry::find(f.rule).is_some_and(|r| r.input_error))
    }

    /// The exit code: 2 for unreadable inputs, 1 for findings at or above `fail_on`, else 0.
    pub fn exit_code(&self, fail_on: Severity) -> u8 {
        if self.has_input_errors() {
            crate::EXIT_ERROR
        } else if self.findings.iter().any(|f| f.severity >= fail_on) {
            crate::EXIT_FINDINGS
        } else {
            crate::EXIT_OK
        }
    }
}

/// Errors that stop a run before it can report findings (exit 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The directory is not a platform or service.
    #[error(
        "{} has no arq.toml (and is not a service with config/ or migrations/); run arq check inside a platform or pass --dir",
        .0.display()
    )]
    NotAPlatform(PathBuf),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The baseline file is unreadable.
    #[error("baseline {}: {message}; re-create it with `arq check --write-baseline FILE`", path.display())]
    Baseline {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The live audit could not run.
    #[error(
        "live tenancy audit: {0}; check --database-url (or DATABASE_URL) and that the database is up"
    )]
    Live(String),
}

/// A text file read for checking.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// Path relative to the root.
    pub(crate) rel: String,
    /// Content.
    pub(crate) text: String,
}

/// Everything a rule may look at, read once.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) root: PathBuf,
    /// `arq.toml` text, if present.
    pub(crate) manifest_text: Option<String>,
    /// The typed manifest, when it parsed and validated.
    pub(crate) manifest: Option<crate::manifest::Manifest>,
    /// The raw `arq.toml` table (for `[queues]` and `[check]`, which the typed manifest ignores).
    pub(crate) manifest_table: Option<toml::Table>,
    /// `[check]` settings.
    pub(crate) settings: CheckSettings,
    /// Service directories (relative), by service name.
    pub(crate) services: BTreeMap<String, String>,
    /// Every file under the root that rules look at, by relative path.
    pub(crate) files: BTreeMap<String, SourceFile>,
}

impl Ctx {
    /// Files whose relative path satisfies `pred`.
    pub(crate) fn files_where<'a>(
        &'a self,
        pred: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a SourceFile> + 'a {
        self.files.values().filter(move |f| pred(&f.rel))
    }
}

/// Directories never descended into.
const SKIP_DIRS: &[&str] = &["target", ".git", "node_modules", "tests/fixtures"];

fn interesting(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    rel == crate::plan::RECORD_FILE
        || name == "Dockerfile"
        || name.starts_with("Dockerfile.")
        || [".toml", ".yaml", ".yml", ".sql", ".rs"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Reads the platform under `root`.
pub(crate) fn load(root: &Path) -> Result<(Ctx, Vec<Finding>), CheckError> {
    let mut findings = Vec::new();
    let mut files = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            let rel = rel.to_string_lossy().replace('\\', "/");
            !SKIP_DIRS
                .iter()
                .any(|d| rel == *d || rel.ends_with(&format!("/{d}")))
        })
    {
        let entry = entry.map_err(|e| CheckError::Io {
            path: e
                .path()
                .map_or_else(|| root.to_path_buf(), Path::to_path_buf),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk failed")),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .replace('\\', "/");
        if !interesting(&rel) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|source| CheckError::Io {
            path: entry.path().to_path_buf(),
            source,
        })?;
        files.insert(rel.clone(), SourceFile { rel, text });
    }
    let manifest_text = files
        .get(crate::manifest::MANIFEST_FILE)
        .map(|f| f.text.clone());
    if manifest_text.is_none() && !root.join("config").is_dir() && !root.join("migrations").is_dir()
    {
        return Err(CheckError::NotAPlatform(root.to_path_buf()));
    }
    let mut ctx = Ctx {
        root: root.to_path_buf(),
        manifest_text,
        manifest: None,
        manifest_table: None,
        settings: CheckSettings::default(),
        services: BTreeMap::new(),
        files,
    };
    rules::manifest::load(&mut ctx, &mut findings);
    Ok((ctx, findings))
}

/// Checks the platform (or service) at `root`.
pub fn run(root: &Path, opts: &CheckOptions) -> Result<Report, CheckError> {
    let (ctx, mut findings) = load(root)?;
    rules::run_all(&ctx, &mut findings);
    if let Some(url) = &opts.database_url {
        findings.extend(live::run(
            url,
            opts.runtime_role.as_deref().unwrap_or("arq_app"),
        )?);
    }
    let mut report = suppress::apply(&ctx, findings);
    for f in &mut report.findings {
        if let Some(sev) = ctx.settings.severity.get(f.rule) {
            f.severity = *sev;
        }
    }
    report
        .findings
        .retain(|f| !ctx.settings.disabled.contains(f.rule));
    if let Some(path) = &opts.baseline {
        let base = baseline::read(path)?;
        let before = report.findings.len();
        report.findings.retain(|f| !base.contains(&f.fingerprint()));
        report.baselined = before - report.findings.len();
    }
    report.findings.sort_by(|a, b| {
        (&a.path, a.line, a.rule, &a.message).cmp(&(&b.path, b.line, b.rule, &b.message))
    });
    report.findings.dedup();
    Ok(report)
}

/// The 1-based line of the first line of `text` that satisfies `pred`, or 1.
pub(crate) fn line_where(text: &str, pred: impl Fn(&str) -> bool) -> u32 {
    text.lines()
        .position(pred)
        .map_or(1, |i| u32::try_from(i + 1).unwrap_or(u32::MAX))
}

/// The 1-based line of byte offset `offset` in `text`.
pub(crate) fn line_of_offset(text: &str, offset: usize) -> u32 {
    let n = text
        .get(..offset.min(text.len()))
        .map_or(0, |s| s.matches('\n').count());
    u32::try_from(n + 1).unwrap_or(u32::MAX)
}
