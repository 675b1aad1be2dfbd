//! `arq.toml`, the platform manifest: read into typed values for decisions, edited as a
//! `toml_edit` document so a user's comments and layout survive every change arq makes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml_edit::{DocumentMut, Item, Table, value};

use crate::names::Name;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "arq.toml";

/// The first port handed to services; the gateway listens below it.
pub const FIRST_SERVICE_PORT: u16 = 3001;

/// The platform manifest, as typed values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The platform itself.
    pub platform: PlatformSection,
    /// Where generated crates take the arq crates from.
    #[serde(default)]
    pub arq: ArqSource,
    /// The gateway in front of the services.
    pub gateway: GatewaySection,
    /// The services, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceEntry>,
    /// Queue declarations (`[queues.NAME]`), read by `arq check`; kept opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<toml::Value>,
    /// `arq check` configuration (`[check]`), read by the checker; kept opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<toml::Value>,
}

/// `[platform]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSection {
    /// The platform's name.
    pub name: String,
    /// The version of arq's templates the platform was generated from.
    pub template_version: String,
}

/// `[arq]`: one of a version from crates.io, a path to an arq checkout, or a git URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArqSource {
    /// A crates.io version requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A path to an arq checkout (relative paths are relative to the platform root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A git URL of arq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<String>,
}

impl Default for ArqSource {
    fn default() -> Self {
        Self {
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            path: None,
            git: None,
        }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The gateway's port.
    pub port: u16,
    /// The path prefix every route sits under, e.g. `/api/v1`.
    pub prefix: String,
    /// Paths under the prefix the gateway serves without authentication, e.g. `/auth/login`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public: Vec<String>,
    /// `[gateway.resilience.ROUTE]`: per-route resilience settings, read by the gateway itself
    /// (`arq_core::gateway::GatewayConfig::from_manifest`); kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience: Option<toml::Value>,
}

/// What kind of service a `[services.NAME]` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// An HTTP service behind the gateway.
    Http,
    /// A queue worker (consumes queues, serves only health and metrics).
    Worker,
}

/// `[services.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// HTTP service or worker.
    pub kind: ServiceKind,
    /// The port it listens on locally.
    pub port: u16,
    /// The route prefix under the gateway prefix (HTTP services only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Whether it has a PostgreSQL database.
    #[serde(default = "yes")]
    pub database: bool,
    /// Queues it consumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Manifest {
    /// Parses and validates a manifest; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ManifestError> {
        let manifest: Self = toml::from_str(text).map_err(|e| ManifestError::Syntax {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        let problems = manifest.problems();
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestError::Invalid {
                path: origin.to_path_buf(),
                problems,
            })
        }
    }

    /// Everything wrong with the manifest's values, all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = self.platform.name.parse::<Name>() {
            out.push(format!("platform.name: {e}"));
        }
        let mut ports: BTreeMap<u16, String> = BTreeMap::new();
        ports.insert(self.gateway.port, "the gateway".to_owned());
        if !self.gateway.prefix.starts_with('/') || self.gateway.prefix.ends_with('/') {
            out.push(format!(
                "gateway.prefix {:?} must start with '/' and not end with it, e.g. \"/api/v1\"",
                self.gateway.prefix
            ));
        }
        let mut routes: Vec<(&str, &str)> = Vec::new();
        for (name, svc) in &self.services {
            if let Err(e) = name.parse::<Name>() {
                out.push(format!("services.{name}: {e}"));
            }
            if let Some(other) = ports.insert(svc.port, format!("service {name}")) {
                out.push(format!(
                    "services.{name}.port {} is already used by {other}; every port must be unique",
                    svc.port
                ));
            }
            match (svc.kind, &svc.route) {
                (ServiceKind::Http, None) => out.push(format!(
                    "services.{name}: an HTTP service needs a route, e.g. route = \"/{name}\""
                )),
                (ServiceKind::Worker, Some(_)) => out.push(format!(
                    "services.{name}: a worker has no route; remove `route`"
                )),
                (_, Some(route)) => {
                    if let Err(e) = check_route(route) {
                        out.push(format!("services.{name}.route: {e}"));
                    }
                    routes.push((name, route));
                }
                (ServiceKind::Worker, None) => {}
            }
        }
        for (i, (a, ra)) in routes.iter().enumerate() {
            for (b, rb) in &routes[i + 1..] {
                if routes_overlap(ra, rb) {
                    out.push(format!(
                        "services.{a}.route {ra:?} and services.{b}.route {rb:?} overlap; each service needs its own prefix"
                    ));
                }
            }
        }
        out
    }

    /// The lowest free port from [`FIRST_SERVICE_PORT`] up.
    pub fn next_free_port(&self) -> u16 {
        let used: Vec<u16> = self
            .services
            .values()
            .map(|s| s.port)
            .chain([self.gateway.port])
            .collect();
        (FIRST_SERVICE_PORT..=u16::MAX)
            .find(|p| !used.contains(p))
            .unwrap_or(u16::MAX)
    }
}

/// A route prefix: `/segment[/segment…]` of lowercase letters, digits, `-` and `_`.
pub fn check_route(route: &str) -> Result<(), String> {
    let ok = route.starts_with('/')
        && !route.ends_with('/')
        && route[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{route:?} is not a route prefix; use something like \"/tasks\" (lowercase segments, leading '/', no trailing '/')"
        ))
    }
}

/// Whether one route prefix contains the other (segment-wise).
pub fn routes_overlap(a: &str, b: &str) -> bool {
    let seg = |r: &str| -> Vec<String> { r.split('/').map(str::to_owned).collect() };
    let (sa, sb) = (seg(a), seg(b));
    let n = sa.len().min(sb.len());
    sa[..n] == sb[..n]
}

/// Finds the platform root: the nearest directory at or above `start` holding `arq.toml`.
pub fn find_platform_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join(MANIFEST_FILE).is_file())
        .map(Path::to_path_buf)
}

/// Adds `[services.NAME]` to the manifest document, keeping everything else as it was.
pub fn add_service(
    doc: &mut DocumentMut,
    name: &Name,
    entry: &ServiceEntry,
) -> Result<(), ManifestError> {
    let services = doc
        .entry("services")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| ManifestError::Shape {
            what: "`services` must be a table of [services.NAME] sections".to_owned(),
        })?;
    if services.contains_key(name.as_str()) {
        return Err(ManifestError::Shape {
            what: format!("[services.{name}] already exists"),
        });
    }
    let mut t = Table::new();
    t["kind"] = value(match entry.kind {
        ServiceKind::Http => "http",
        ServiceKind::Worker => "worker",
    });
    t["port"] = value(i64::from(entry.port));
    if let Some(route) = &entry.route {
        t["route"] = value(route.as_str());
    }
    t["database"] = value(entry.database);
    if !entry.queues.is_empty() {
        let mut arr = toml_edit::Array::new();
        for q in &entry.queues {
            arr.push(q.as_str());
        }
        t["queues"] = value(arr);
    }
    services.insert(name.as_str(), Item::Table(t));
    Ok(())
}

/// The prefetch a newly declared queue gets (arq-queue's default).
pub const DEFAULT_PREFETCH: i64 = 10;

/// The dead-letter queue arq-queue gives work queue `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The prefetch `[queues."NAME"]` declares, if the manifest declares the queue with one.
pub fn declared_prefetch(manifest: &Manifest, queue: &str) -> Option<i64> {
    manifest
        .queues
        .as_ref()?
        .get(queue)?
        .get("prefetch")?
        .as_integer()
}

/// Declares `[queues."NAME"]` with its dead-letter queue and a prefetch, unless the manifest
/// already declares it (a declaration the user wrote, or another worker's, is kept as it is).
/// Returns whether it added the declaration.
pub fn declare_queue(doc: &mut DocumentMut, queue: &str) -> Result<bool, ManifestError> {
    let queues = doc
        .entry("queues")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| ManifestError::Shape {
            what: "`queues` must be a table of [queues.\"NAME\"] sections".to_owned(),
        })?;
    if queues.contains_key(queue) {
        return Ok(false);
    }
    let mut t = Table::new();
    t["dead_letter"] = value(dead_letter_queue(queue));
    t["prefetch"] = value(DEFAULT_PREFETCH);
    queues.insert(queue, Item::Table(t));
    Ok(true)
}

/// Errors reading or editing the manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file is not valid TOML or does not have the manifest's shape.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The manifest file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parses but its values are inconsistent.
    #[error("{}: {} problem(s):\n  - {}", path.display(), problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The document is not shaped as arq expects, so a structured edit cannot be made.
    #[error("cannot edit arq.toml: {what}")]
    Shape {
        /// What was wrong.
        what: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"# my platform
[platform]
name = "acme"
template_version = "0.1.0"

[gateway]
port = 3000
prefix = "/api/v1"

[services.tasks]   # the first one
kind = "http"
port = 3001
route = "/tasks"
"#;

    #[test]
    fn parses_and_finds_next_port() {
        let m = Manifest::parse(BASE, Path::new("arq.toml")).unwrap();
        assert_eq!(m.services["tasks"].port, 3001);
        assert!(m.services["tasks"].database);
        assert_eq!(m.next_free_port(), 3002);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = BASE.to_owned()
            + r#"
[services.dup]
kind = "http"
port = 3001
route = "/tasks/sub"

[services.w]
kind = "worker"
port = 3000
route = "/w"
"#;
        let err = Manifest::parse(&text, Path::new("arq.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 problem(s)"), "{err}");
        assert!(err.contains("used by the gateway"));
        assert!(err.contains("port 3001 is already used by service"));
        assert!(err.contains("a worker has no route"));
        assert!(err.contains("overlap"));
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let err = Manifest::parse("[platform\nname=1", Path::new("p/arq.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p/arq.toml:"), "{err}");
        assert!(err.contains("line 1"), "{err}");
        let err = Manifest::parse(
            "[platform]\nname='a'\ntemplate_version='1'\nbogus=1\n",
            Path::new("arq.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn add_service_keeps_comments_and_refuses_duplicates() {
        let mut doc: DocumentMut = BASE.parse().unwrap();
        let name: Name = "mailer".parse().unwrap();
        let entry = ServiceEntry {
            kind: ServiceKind::Worker,
            port: 3002,
            route: None,
            database: false,
            queues: vec!["email.send".into()],
        };
        add_service(&mut doc, &name, &entry).unwrap();
        let text = doc.to_string();
        assert!(text.contains("# my platform"));
        assert!(text.contains("# the first one"));
        let m = Manifest::parse(&text, Path::new("arq.toml")).unwrap();
        assert_eq!(m.services["mailer"], entry);
        assert!(add_service(&mut doc, &name, &entry).is_err());
    }

    #[test]
    fn route_rules() {
        assert!(check_route("/tasks").is_ok());
        assert!(check_route("/a/b-c").is_ok());
        for bad in ["tasks", "/tasks/", "/", "/a//b", "/A", "/a b"] {
            assert!(check_route(bad).is_err(), "{bad}");
        }
        assert!(routes_overlap("/tasks", "/tasks/x"));
        assert!(!routes_overlap("/tasks", "/taskset"));
    }
    #[test]
    fn declare_queue_adds_once_and_keeps_user_declarations() {
        let mut doc: DocumentMut = (BASE.to_owned()
            + "\n[queues.\"email.send\"]  # tuned\ndead_letter = \"email.send.dead\"\nprefetch = 50\n")
            .parse()
            .unwrap();
        assert!(!declare_queue(&mut doc, "email.send").unwrap());
        assert!(declare_queue(&mut doc, "report.generate").unwrap());
        assert!(!declare_queue(&mut doc, "report.generate").unwrap());
        let text = doc.to_string();
        assert!(text.contains("# tuned"), "{text}");
        assert!(
            text.contains("[queues.\"report.generate\"]\ndead_letter = \"report.generate.dead\"\nprefetch = 10\n"),
            "{text}"
        );
        let m = Manifest::parse(&text, Path::new("arq.toml")).unwrap();
        assert_eq!(declared_prefetch(&m, "email.send"), Some(50));
        assert_eq!(declared_prefetch(&m, "nothing"), None);
    }
}
