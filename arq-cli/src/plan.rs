//! Generation is a plan first, then applied: the plan lists every file arq would create or
//! change with its old and new content, so `--dry-run` can print it as a unified diff and a
//! conflict with a user's edit stops everything before a single byte is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where arq records what it generated, relative to the platform (or service) root.
pub const RECORD_FILE: &str = ".arq/generated.toml";

/// What arq generated, by which template and with what content hash. A file whose current hash
/// differs from the recorded one has been edited by someone, and arq will not overwrite it
/// without `--force`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The arq template version that last wrote the files.
    #[serde(default)]
    pub template_version: String,
    /// One entry per generated file, keyed by its path relative to the root.
    #[serde(default)]
    pub files: BTreeMap<String, FileRecord>,
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// The template it was rendered from, or `edit:<what>` for a structured edit.
    pub source: String,
    /// SHA-256 of the content arq wrote, hex.
    pub sha256: String,
}

impl Record {
    /// Reads the record under `root`; a missing file is an empty record.
    pub fn load(root: &Path) -> Result<Self, PlanError> {
        let path = root.join(RECORD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| PlanError::Record {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(PlanError::Io { path, source }),
        }
    }

    fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Written by arq: which files it generated and their content hashes, so that it never\n\
             # overwrites a file you edited without being told to (--force). Commit this file.\n{body}"
        )
    }
}

/// SHA-256 of `text`, hex.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// How a planned file relates to what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The file does not exist yet.
    Create,
    /// The file exists and arq will change it.
    Update,
    /// The file already has exactly this content.
    Unchanged,
}

/// One file in a plan.
#[derive(Debug, Clone)]
pub struct Step {
    /// Path relative to the root, with `/` separators.
    pub path: String,
    /// Current content, if the file exists.
    pub old: Option<String>,
    /// Content after applying.
    pub new: String,
    /// The template or structured edit that produced it.
    pub source: String,
    /// Whether the file is rendered whole from a template (protected by the record) or is a
    /// structured edit of a document the user owns (always safe to apply).
    pub kind: StepKind,
}

/// Whether a step renders a whole file or edits part of a user-owned document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A whole file rendered from a template.
    Rendered,
    /// A structured edit (TOML document) that keeps everything else in the file.
    Edit,
}

impl Step {
    /// How this step changes the file.
    pub fn change(&self) -> Change {
        match &self.old {
            None => Change::Create,
            Some(old) if *old == self.new => Change::Unchanged,
            Some(_) => Change::Update,
        }
    }
}

/// A plan: the files to write under `root`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The directory the paths are relative to.
    pub root: PathBuf,
    /// The files, in the order they were planned.
    pub steps: Vec<Step>,
    /// The record as it is on disk: what arq last wrote, to tell a user's edits from its own.
    record: Record,
    record_old: Option<String>,
}

impl Plan {
    /// Starts a plan under `root`, reading its record.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, PlanError> {
        let root = root.into();
        let record = Record::load(&root)?;
        let record_old = read_optional(&root.join(RECORD_FILE))?;
        Ok(Self {
            root,
            steps: Vec::new(),
            record,
            record_old,
        })
    }

    /// Plans a whole file rendered from `template`.
    pub fn render(&mut self, path: &str, template: &str, content: String) -> Result<(), PlanError> {
        self.push(path, template.to_owned(), content, StepKind::Rendered)
    }

    /// Plans a structured edit of a user-owned document.
    pub fn edit(&mut self, path: &str, what: &str, content: String) -> Result<(), PlanError> {
        self.push(path, format!("edit:{what}"), content, StepKind::Edit)
    }

    /// The current content of `path` (relative to the root): from an earlier step of this plan
    /// if there is one, else from disk.
    pub fn current(&self, path: &str) -> Result<Option<String>, PlanError> {
        if let Some(step) = self.steps.iter().rev().find(|s| s.path == path) {
            return Ok(Some(step.new.clone()));
        }
        read_optional(&self.root.join(path))
    }

    fn push(
        &mut self,
        path: &str,
        source: String,
        new: String,
        kind: StepKind,
    ) -> Result<(), PlanError> {
        if path.split('/').any(|seg| seg == ".." || seg.is_empty()) || path.starts_with('/') {
            return Err(PlanError::BadPath {
                path: path.to_owned(),
            });
        }
        let old = read_optional(&self.root.join(path))?;
        self.steps.retain(|s| s.path != path);
        self.steps.push(Step {
            path: path.to_owned(),
            old,
            new,
            source,
            kind,
        });
        Ok(())
    }

    /// Files that exist, differ from what arq would write, and were not written by arq in
    /// that exact form: a user's edits, or files arq never made.
    pub fn conflicts(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| s.kind == StepKind::Rendered && s.change() == Change::Update)
            .filter(|s| {
                let on_disk = s.old.as_deref().map(sha256_hex);
                let recorded = self.record.files.get(&s.path).map(|r| &r.sha256);
                on_disk.as_ref() != recorded
            })
            .map(|s| s.path.clone())
            .collect()
    }

    fn final_record(&self, template_version: &str) -> Record {
        let mut record = self.record.clone();
        record.template_version = template_version.to_owned();
        for s in &self.steps {
            // A structured edit of a file arq generated keeps it arq's: record its new content,
            // or `arq check` would report the edit as drift.
            if s.kind == StepKind::Edit
                && let Some(r) = record.files.get_mut(&s.path)
            {
                r.sha256 = sha256_hex(&s.new);
            }
            if s.kind == StepKind::Rendered {
                record.files.insert(
                    s.path.clone(),
                    FileRecord {
                        source: s.source.clone(),
                        sha256: sha256_hex(&s.new),
                    },
                );
            }
        }
        record
    }

    /// Adds the record update as the plan's last step.
    pub fn finish(mut self, template_version: &str) -> Self {
        let record = self.final_record(template_version);
        let new = record.render();
        self.steps.retain(|s| s.path != RECORD_FILE);
        self.steps.push(Step {
            path: RECORD_FILE.to_owned(),
            old: self.record_old.clone(),
            new,
            source: "record".to_owned(),
            kind: StepKind::Edit,
        });
        self
    }

    /// Whether applying would change nothing.
    pub fn is_noop(&self) -> bool {
        self.steps.iter().all(|s| s.change() == Change::Unchanged)
    }

    /// The plan as a unified diff (what `--dry-run` prints).
    pub fn diff(&self) -> String {
        let mut out = String::new();
        for s in self
            .steps
            .iter()
            .filter(|s| s.change() != Change::Unchanged)
        {
            let old = s.old.as_deref().unwrap_or("");
            let from = if s.old.is_some() {
                format!("a/{}", s.path)
            } else {
                "/dev/null".to_owned()
            };
            let diff = similar::TextDiff::from_lines(old, &s.new);
            let _ = write!(
                out,
                "{}",
                diff.unified_diff()
                    .context_radius(3)
                    .header(&from, &format!("b/{}", s.path))
            );
        }
        out
    }

    /// Writes every changed file (refusing if there are conflicts and `force` is false).
    /// Each file is written to a temporary sibling and renamed into place, so a crash never
    /// leaves a half-written file.
    pub fn apply(&self, force: bool) -> Result<Vec<(Change, String)>, PlanError> {
        let conflicts = self.conflicts();
        if !conflicts.is_empty() && !force {
            return Err(PlanError::Conflicts { paths: conflicts });
        }
        let mut done = Vec::new();
        for s in &self.steps {
            let change = s.change();
            if change == Change::Unchanged {
                continue;
            }
            let path = self.root.join(&s.path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| PlanError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            let tmp = path.with_extension("arq-tmp");
            std::fs::write(&tmp, &s.new).map_err(|source| PlanError::Io {
                path: tmp.clone(),
                source,
            })?;
            std::fs::rename(&tmp, &path).map_err(|source| PlanError::Io {
                path: path.clone(),
                source,
            })?;
            done.push((change, s.path.clone()));
        }
        Ok(done)
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, PlanError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PlanError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Errors while planning or applying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The generation record is unreadable.
    #[error("{}: {message}\nThe record is written by arq; restore it from version control or delete it (arq will then treat every existing file as yours).", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A planned path would escape the root.
    #[error("refusing to write {path:?}: generated paths stay inside the platform")]
    BadPath {
        /// The offending path.
        path: String,
    },
    /// Files differ from what arq last wrote: someone edited them.
    #[error(
        "these files were changed since arq generated them (or were not made by arq), so arq will not overwrite them:\n  {}\nNothing was written. Review the changes with --dry-run; re-run with --force to overwrite them.",
        paths.join("\n  ")
    )]
    Conflicts {
        /// The conflicting paths.
        paths: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_in(dir: &Path, content: &str) -> Plan {
        let mut p = Plan::new(dir).unwrap();
        p.render("a/b.txt", "t/b.txt", content.to_owned()).unwrap();
        p.finish("1")
    }

    #[test]
    fn create_then_rerun_is_a_noop() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan_in(dir.path(), "hello\n");
        assert!(p.diff().contains("+++ b/a/b.txt"));
        p.apply(false).unwrap();
        let again = plan_in(dir.path(), "hello\n");
        assert!(again.is_noop(), "{}", again.diff());
        assert_eq!(again.diff(), "");
    }

    #[test]
    fn template_change_updates_unedited_files() {
        let dir = tempfile::tempdir().unwrap();
        plan_in(dir.path(), "v1\n").apply(false).unwrap();
        let p = plan_in(dir.path(), "v2\n");
        assert!(p.conflicts().is_empty());
        p.apply(false).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b.txt")).unwrap(),
            "v2\n"
        );
    }

    #[test]
    fn user_edits_are_never_overwritten_silently() {
        let dir = tempfile::tempdir().unwrap();
        plan_in(dir.path(), "v1\n").apply(false).unwrap();
        std::fs::write(dir.path().join("a/b.txt"), "mine\n").unwrap();
        let p = plan_in(dir.path(), "v2\n");
        let err = p.apply(false).unwrap_err().to_string();
        assert!(err.contains("a/b.txt") && err.contains("--force"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b.txt")).unwrap(),
            "mine\n"
        );
        p.apply(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/b.txt")).unwrap(),
            "v2\n"
        );
    }

    #[test]
    fn files_arq_did_not_make_are_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/b.txt"), "pre-existing\n").unwrap();
        assert_eq!(plan_in(dir.path(), "v1\n").conflicts(), ["a/b.txt"]);
    }

    #[test]
    fn paths_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Plan::new(dir.path()).unwrap();
        for bad in ["../x", "/etc/passwd", "a//b", "a/../../x"] {
            assert!(p.render(bad, "t", String::new()).is_err(), "{bad}");
        }
    }

    #[test]
    fn corrupt_record_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".arq")).unwrap();
        std::fs::write(dir.path().join(RECORD_FILE), "files = 3").unwrap();
        let err = Plan::new(dir.path()).unwrap_err().to_string();
        assert!(err.contains("generated.toml"), "{err}");
    }
}
