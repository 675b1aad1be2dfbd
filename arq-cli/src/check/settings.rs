//! `[check]` in `arq.toml`: severity overrides, ignores, allow-lists and policy numbers.
//!
//! ```toml
//! [check]
//! security_definer_allow = ["arq.current_tenant_id"]
//! max_access_token_ttl_secs = 3600
//! public_routes = ["/auth/login"]      # served without a permission
//! route_guards = ["RequireScope"]      # your own guard extractors, layers or functions
//!
//! [check.severity]
//! kubernetes-probes = "error"     # or "warning", "info", "off"
//!
//! [[check.ignore]]
//! rule = "docker-base-pinned"
//! path = "services/legacy/Dockerfile"   # a file or a directory; omit for everywhere
//! reason = "vendor image, pinned by the vendor's digest policy"
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::Severity;

/// The parsed `[check]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSettings {
    /// Severity overrides by rule id.
    pub severity: BTreeMap<String, Severity>,
    /// Rules turned off.
    pub disabled: BTreeSet<String>,
    /// `[[check.ignore]]` entries.
    pub ignore: Vec<IgnoreEntry>,
    /// SECURITY DEFINER functions that are allowed (schema-qualified names).
    pub security_definer_allow: Vec<String>,
    /// The longest access-token lifetime the auth rules accept.
    pub max_access_token_ttl_secs: u64,
    /// The longest refresh-token lifetime the auth rules accept.
    pub max_refresh_token_ttl_secs: u64,
    /// The largest clock-skew leeway the auth rules accept.
    pub max_leeway_secs: u64,
    /// The platform's autoscaling numbers.
    pub hpa: HpaPolicy,
    /// Route paths served without a permission (besides health, metrics, OpenAPI and JWKS).
    pub public_routes: Vec<String>,
    /// Extra extractor, layer or function names that guard a route with a permission or policy.
    pub route_guards: Vec<String>,
}

/// The HPA/PDB numbers every deployment must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HpaPolicy {
    /// `minReplicas`.
    pub min_replicas: u64,
    /// `maxReplicas`.
    pub max_replicas: u64,
    /// Target CPU utilisation, percent.
    pub cpu_percent: u64,
    /// Target memory utilisation, percent.
    pub memory_percent: u64,
    /// PDB `minAvailable`.
    pub pdb_min_available: u64,
}

impl Default for HpaPolicy {
    fn default() -> Self {
        Self {
            min_replicas: 2,
            max_replicas: 10,
            cpu_percent: 70,
            memory_percent: 80,
            pdb_min_available: 1,
        }
    }
}

impl Default for CheckSettings {
    fn default() -> Self {
        Self {
            severity: BTreeMap::new(),
            disabled: BTreeSet::new(),
            ignore: Vec::new(),
            security_definer_allow: Vec::new(),
            max_access_token_ttl_secs: 3600,
            max_refresh_token_ttl_secs: 30 * 24 * 3600,
            max_leeway_secs: 60,
            hpa: HpaPolicy::default(),
            public_routes: Vec::new(),
            route_guards: Vec::new(),
        }
    }
}

/// One `[[check.ignore]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnoreEntry {
    /// The rule id.
    pub rule: String,
    /// A file or directory, relative to the root; none means everywhere.
    #[serde(default)]
    pub path: Option<String>,
    /// Why: required.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    severity: BTreeMap<String, String>,
    #[serde(default)]
    ignore: Vec<IgnoreEntry>,
    #[serde(default)]
    security_definer_allow: Vec<String>,
    max_access_token_ttl_secs: Option<u64>,
    max_refresh_token_ttl_secs: Option<u64>,
    max_leeway_secs: Option<u64>,
    #[serde(default)]
    hpa: Option<HpaPolicy>,
    #[serde(default)]
    public_routes: Vec<String>,
    #[serde(default)]
    route_guards: Vec<String>,
}

impl CheckSettings {
    /// Parses `[check]`; returns problems as messages (each becomes a `check-config` finding).
    pub(crate) fn from_value(v: toml::Value) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let raw: Raw = match v.try_into() {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("[check]: {e}"));
                return (Self::default(), problems);
            }
        };
        let mut s = Self::default();
        for (rule, sev) in raw.severity {
            match sev.as_str() {
                "off" => {
                    s.disabled.insert(rule);
                }
                "error" => {
                    s.severity.insert(rule, Severity::Error);
                }
                "warning" => {
                    s.severity.insert(rule, Severity::Warning);
                }
                "info" => {
                    s.severity.insert(rule, Severity::Info);
                }
                other => problems.push(format!(
                    "[check.severity] {rule} = {other:?}: use \"error\", \"warning\", \"info\" or \"off\""
                )),
            }
        }
        s.ignore = raw.ignore;
        s.security_definer_allow = raw.security_definer_allow;
        if let Some(v) = raw.max_access_token_ttl_secs {
            s.max_access_token_ttl_secs = v;
        }
        if let Some(v) = raw.max_refresh_token_ttl_secs {
            s.max_refresh_token_ttl_secs = v;
        }
        if let Some(v) = raw.max_leeway_secs {
            s.max_leeway_secs = v;
        }
        if let Some(h) = raw.hpa {
            s.hpa = h;
        }
        s.public_routes = raw.public_routes;
        s.route_guards = raw.route_guards;
        (s, problems)
    }

    /// Rule ids named in the settings (to report unknown ones).
    pub(crate) fn named_rules(&self) -> impl Iterator<Item = &str> {
        self.severity
            .keys()
            .chain(self.disabled.iter())
            .map(String::as_str)
    }
}
