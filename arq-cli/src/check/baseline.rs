//! Baselines: `arq check --write-baseline FILE` records the fingerprints of today's findings;
//! `arq check --baseline FILE` then reports only findings that are not in it, so an existing
//! platform can adopt the checker and fix its backlog over time.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CheckError, Finding};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    /// For people reading the file: rule, path and message of each entry.
    findings: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    fingerprint: String,
    rule: String,
    path: String,
    message: String,
}

/// Writes the baseline of `findings` to `path`.
pub fn write(path: &Path, findings: &[Finding]) -> Result<(), CheckError> {
    let file = File {
        version: 1,
        findings: findings
            .iter()
            .map(|f| Entry {
                fingerprint: f.fingerprint(),
                rule: f.rule.to_owned(),
                path: f.path.clone(),
                message: f.message.clone(),
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&file).map_err(|e| CheckError::Baseline {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| CheckError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the fingerprints in the baseline at `path`.
pub fn read(path: &Path) -> Result<BTreeSet<String>, CheckError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file: File = serde_json::from_str(&text).map_err(|e| CheckError::Baseline {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if file.version != 1 {
        return Err(CheckError::Baseline {
            path: path.to_path_buf(),
            message: format!("unsupported version {}", file.version),
        });
    }
    Ok(file.findings.into_iter().map(|e| e.fingerprint).collect())
}
