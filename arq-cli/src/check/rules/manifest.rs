//! manifest: `arq.toml` is valid and every service is wired everywhere it must be.

use crate::check::registry::{Rule, Severity};
use crate::check::settings::CheckSettings;
use crate::check::{Ctx, Finding, line_of_offset, line_where};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::plan::{RECORD_FILE, Record, sha256_hex};

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "manifest-valid",
        Severity::Error,
        "arq.toml parses and has the manifest's shape and valid values.",
        "Fix the reported key in arq.toml; `arq init` writes a valid one to compare with.",
    )
    .input(),
    Rule::new(
        "manifest-file-parses",
        Severity::Error,
        "Files the wiring checks read (Cargo.toml, compose.yaml, .arq/generated.toml) parse.",
        "Fix the syntax error at the reported line.",
    )
    .input(),
    Rule::new(
        "manifest-ports-unique",
        Severity::Error,
        "Every service (and the gateway) listens on its own port.",
        "Give the service a free port in arq.toml (arq new service picks the next free one).",
    ),
    Rule::new(
        "manifest-routes-overlap",
        Severity::Error,
        "No service's route prefix contains another's.",
        "Give each service its own prefix, e.g. /tasks and /billing.",
    ),
    Rule::new(
        "manifest-workspace-member",
        Severity::Error,
        "Every service in arq.toml is a member of the Cargo workspace.",
        "Add \"services/<name>\" to [workspace] members in Cargo.toml.",
    ),
    Rule::new(
        "manifest-compose-service",
        Severity::Error,
        "Every service in arq.toml is a service in compose.yaml.",
        "Re-run `arq new service <name>` (it re-renders compose.yaml) or add the service to compose.yaml.",
    ),
    Rule::new(
        "manifest-k8s-service",
        Severity::Error,
        "Where deploy/k8s exists, every service in arq.toml has a Deployment (or StatefulSet) named after it.",
        "Add the service's Deployment under deploy/k8s.",
    ),
    Rule::new(
        "manifest-gateway",
        Severity::Error,
        "A platform's gateway (gateway/) is a workspace member, a compose service and, where deploy/k8s exists, a Deployment; it listens on arq.toml's [gateway] port; every [gateway] public path lies under a service's route.",
        "`arq init` generates the gateway crate and its wiring; restore the missing piece, or fix the port or public path named in the finding.",
    ),
    Rule::new(
        "manifest-generated-drift",
        Severity::Warning,
        "Wiring files arq generated (compose.yaml, Dockerfiles, deploy/**) still have the content arq recorded in .arq/generated.toml.",
        "Regenerate the file (`arq new service <name> --force` shows the diff with --dry-run), or record the intent with a [[check.ignore]] entry and a reason.",
    ),
];

/// Reads `arq.toml` into the context: the typed manifest, `[check]` and the service list.
pub(crate) fn load(ctx: &mut Ctx, out: &mut Vec<Finding>) {
    let Some(text) = ctx.manifest_text.clone() else {
        // A standalone service: the root is the service.
        let name = ctx.root.file_name().map_or_else(
            || "service".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        ctx.services.insert(name, ".".to_owned());
        return;
    };
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let line = e.span().map_or(1, |s| line_of_offset(&text, s.start));
            out.push(Finding::new(
                "manifest-valid",
                MANIFEST_FILE,
                line,
                format!("arq.toml is not valid TOML: {}", e.message()),
            ));
            return;
        }
    };
    if let Some(check) = table.remove("check") {
        let (settings, problems) = CheckSettings::from_value(check);
        ctx.settings = settings;
        let line = line_where(&text, |l| l.trim_start().starts_with("[check"));
        for p in problems {
            out.push(Finding::new("check-config", MANIFEST_FILE, line, p));
        }
    }
    ctx.manifest_table = Some(table.clone());
    // `[queues]` is read by the queue rules; the typed manifest does not know it.
    table.remove("queues");
    let manifest: Manifest = match toml::Value::Table(table).try_into() {
        Ok(m) => m,
        Err(e) => {
            let e: toml::de::Error = e;
            out.push(Finding::new(
                "manifest-valid",
                MANIFEST_FILE,
                1,
                format!("arq.toml: {}", e.message().trim()),
            ));
            return;
        }
    };
    for name in manifest.services.keys() {
        ctx.services
            .insert(name.clone(), format!("services/{name}"));
    }
    for p in manifest.problems() {
        let rule = if p.contains("is already used by") {
            "manifest-ports-unique"
        } else if p.contains("overlap") {
            "manifest-routes-overlap"
        } else {
            "manifest-valid"
        };
        let line = p
            .strip_prefix("services.")
            .and_then(|rest| rest.split(['.', ':', ' ']).next())
            .map_or(1, |svc| {
                line_where(&text, |l| {
                    l.trim() == format!("[services.{svc}]")
                        || l.trim_start().starts_with(&format!("[services.{svc}]"))
                })
            });
        out.push(Finding::new(rule, MANIFEST_FILE, line, p));
    }
    ctx.manifest = Some(manifest);
}

fn service_line(ctx: &Ctx, name: &str) -> u32 {
    ctx.manifest_text.as_deref().map_or(1, |t| {
        line_where(t, |l| {
            l.trim_start().starts_with(&format!("[services.{name}]"))
        })
    })
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    let Some(manifest) = &ctx.manifest else {
        return;
    };
    workspace(ctx, manifest, out);
    compose(ctx, manifest, out);
    k8s(ctx, manifest, out);
    gateway(ctx, manifest, out);
    drift(ctx, out);
}

/// The gateway crate's directory in a platform.
const GATEWAY_DIR: &str = "gateway";

/// `manifest-gateway`: only for platforms (a root Cargo.toml with `[workspace]`); a standalone
/// service has no gateway.
fn gateway(ctx: &Ctx, manifest: &Manifest, out: &mut Vec<Finding>) {
    let Some(cargo) = ctx
        .files
        .get("Cargo.toml")
        .and_then(|f| f.text.parse::<toml::Table>().ok().map(|t| (f, t)))
    else {
        return;
    };
    let (cargo, cargo_table) = cargo;
    let Some(workspace) = cargo_table.get("workspace") else {
        return;
    };
    let gateway_line = ctx.manifest_text.as_deref().map_or(1, |t| {
        line_where(t, |l| l.trim_start().starts_with("[gateway]"))
    });
    let mut finding = |path: &str, line: u32, message: String| {
        out.push(Finding::new("manifest-gateway", path, line, message));
    };
    if !ctx.files.contains_key(&format!("{GATEWAY_DIR}/Cargo.toml")) {
        finding(
            MANIFEST_FILE,
            gateway_line,
            format!("the platform has no gateway crate: {GATEWAY_DIR}/Cargo.toml is missing"),
        );
        return;
    }
    let member = workspace
        .get("members")
        .and_then(toml::Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .filter_map(toml::Value::as_str)
                .any(|m| m.trim_end_matches('/') == GATEWAY_DIR)
        });
    if !member {
        finding(
            "Cargo.toml",
            line_where(&cargo.text, |l| l.trim_start().starts_with("members")),
            format!("the gateway ({GATEWAY_DIR}) is not in [workspace] members"),
        );
    }
    let compose = [
        "compose.yaml",
        "compose.yml",
        "docker-compose.yaml",
        "docker-compose.yml",
    ]
    .iter()
    .find_map(|n| ctx.files.get(*n));
    if let Some(file) = compose
        && let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(&file.text)
        && !doc
            .get("services")
            .and_then(|s| s.as_mapping())
            .is_some_and(|m| m.contains_key("gateway"))
    {
        finding(
            &file.rel,
            line_where(&file.text, |l| l.starts_with("services:")),
            format!("the gateway is not under `services:` in {}", file.rel),
        );
    }
    if ctx.files.keys().any(|p| p.starts_with("deploy/k8s/")) {
        let docs = super::kubernetes::documents(ctx);
        let found = docs
            .iter()
            .any(|d| d.kind() == "Deployment" && d.name() == Some("gateway"));
        if !found {
            finding(
                MANIFEST_FILE,
                gateway_line,
                "the gateway has no Deployment named \"gateway\" under deploy/k8s".to_owned(),
            );
        }
    }
    let config = format!("{GATEWAY_DIR}/config/default.toml");
    if let Some(file) = ctx.files.get(&config)
        && let Ok(t) = file.text.parse::<toml::Table>()
        && let Some(addr) = t
            .get("server")
            .and_then(|s| s.get("addr"))
            .and_then(toml::Value::as_str)
        && let Ok(addr) = addr.parse::<std::net::SocketAddr>()
        && addr.port() != manifest.gateway.port
    {
        finding(
            &config,
            line_where(&file.text, |l| l.trim_start().starts_with("addr")),
            format!(
                "the gateway listens on port {} but arq.toml's [gateway] port is {}",
                addr.port(),
                manifest.gateway.port
            ),
        );
    }
    let routes: Vec<&str> = manifest
        .services
        .values()
        .filter_map(|s| s.route.as_deref())
        .collect();
    for public in &manifest.gateway.public {
        let p = public.trim_end_matches('/');
        let covered = routes.iter().any(|r| {
            let r = r.trim_end_matches('/');
            p == r || p.strip_prefix(r).is_some_and(|rest| rest.starts_with('/'))
        });
        if !covered {
            let line = ctx.manifest_text.as_deref().map_or(1, |t| {
                line_where(t, |l| {
                    l.trim_start().starts_with("public") && l.contains(public.as_str())
                })
            });
            finding(
                MANIFEST_FILE,
                line,
                format!(
                    "[gateway] public path {public:?} lies under no service's route; the gateway refuses to start"
                ),
            );
        }
    }
}

fn workspace(ctx: &Ctx, manifest: &Manifest, out: &mut Vec<Finding>) {
    let Some(cargo) = ctx.files.get("Cargo.toml") else {
        for name in manifest.services.keys() {
            out.push(Finding::new(
                "manifest-workspace-member",
                MANIFEST_FILE,
                service_line(ctx, name),
                format!("service {name} is not in a Cargo workspace: there is no Cargo.toml at the platform root"),
            ));
        }
        return;
    };
    let table: toml::Table = match cargo.text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            out.push(Finding::new(
                "manifest-file-parses",
                "Cargo.toml",
                e.span().map_or(1, |s| line_of_offset(&cargo.text, s.start)),
                format!("Cargo.toml is not valid TOML: {}", e.message()),
            ));
            return;
        }
    };
    let members: Vec<String> = table
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(toml::Value::as_str)
                .map(|s| s.trim_end_matches('/').to_owned())
                .collect()
        })
        .unwrap_or_default();
    let line = line_where(&cargo.text, |l| l.trim_start().starts_with("members"));
    for name in manifest.services.keys() {
        let dir = format!("services/{name}");
        let member = members.iter().any(|m| {
            *m == dir
                || m.strip_suffix("/*")
                    .is_some_and(|parent| dir.rsplit_once('/').is_some_and(|(p, _)| p == parent))
        });
        if !member {
            out.push(Finding::new(
                "manifest-workspace-member",
                "Cargo.toml",
                line,
                format!("service {name} ({dir}) is not in [workspace] members"),
            ));
        }
    }
}

fn compose(ctx: &Ctx, manifest: &Manifest, out: &mut Vec<Finding>) {
    let file = [
        "compose.yaml",
        "compose.yml",
        "docker-compose.yaml",
        "docker-compose.yml",
    ]
    .iter()
    .find_map(|n| ctx.files.get(*n));
    let Some(file) = file else {
        for name in manifest.services.keys() {
            out.push(Finding::new(
                "manifest-compose-service",
                MANIFEST_FILE,
                service_line(ctx, name),
                format!("service {name} is not in a compose file: there is no compose.yaml"),
            ));
        }
        return;
    };
    let doc: serde_norway::Value = match serde_norway::from_str(&file.text) {
        Ok(v) => v,
        Err(e) => {
            out.push(Finding::new(
                "manifest-file-parses",
                &file.rel,
                e.location()
                    .map_or(1, |l| u32::try_from(l.line()).unwrap_or(1)),
                format!("{} is not valid YAML: {e}", file.rel),
            ));
            return;
        }
    };
    let services = doc.get("services").and_then(|s| s.as_mapping());
    for name in manifest.services.keys() {
        let present = services.is_some_and(|m| m.contains_key(name.as_str()));
        if !present {
            out.push(Finding::new(
                "manifest-compose-service",
                &file.rel,
                line_where(&file.text, |l| l.starts_with("services:")),
                format!("service {name} is not under `services:` in {}", file.rel),
            ));
        }
    }
}

fn k8s(ctx: &Ctx, manifest: &Manifest, out: &mut Vec<Finding>) {
    let docs = super::kubernetes::documents(ctx);
    if !ctx.files.keys().any(|p| p.starts_with("deploy/k8s/")) {
        return;
    }
    for name in manifest.services.keys() {
        let found = docs.iter().any(|d| {
            matches!(d.kind(), "Deployment" | "StatefulSet") && d.name() == Some(name.as_str())
        });
        if !found {
            out.push(Finding::new(
                "manifest-k8s-service",
                MANIFEST_FILE,
                service_line(ctx, name),
                format!("service {name} has no Deployment named {name:?} under deploy/k8s"),
            ));
        }
    }
}

/// Files users own after generation: their edits are the point, not drift.
fn user_owned(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == MANIFEST_FILE
        || name == "Cargo.toml"
        || name.ends_with(".md")
        || name.ends_with(".rs")
        // The API description changes with the API the service's own code implements.
        || name == "openapi.json"
        || name.starts_with('.')
        || path.contains("/config/")
        || path.starts_with("config/")
        || path.contains("migrations/")
        || path.contains("policies/")
}

fn drift(ctx: &Ctx, out: &mut Vec<Finding>) {
    let Some(file) = ctx.files.get(RECORD_FILE) else {
        return;
    };
    let record: Record = match toml::from_str(&file.text) {
        Ok(r) => r,
        Err(e) => {
            let e: toml::de::Error = e;
            out.push(Finding::new(
                "manifest-file-parses",
                RECORD_FILE,
                e.span().map_or(1, |s| line_of_offset(&file.text, s.start)),
                format!("the generation record is unreadable: {}", e.message()),
            ));
            return;
        }
    };
    for (path, rec) in &record.files {
        if user_owned(path) {
            continue;
        }
        let current = match ctx.files.get(path) {
            Some(f) => Some(f.text.clone()),
            None => std::fs::read_to_string(ctx.root.join(path)).ok(),
        };
        match current {
            None => out.push(Finding::new(
                "manifest-generated-drift",
                RECORD_FILE,
                line_where(&file.text, |l| l.contains(&format!("\"{path}\""))),
                format!("{path} was generated by arq ({}) but is gone", rec.source),
            )),
            Some(text) if sha256_hex(&text) != rec.sha256 => out.push(Finding::new(
                "manifest-generated-drift",
                path,
                1,
                format!(
                    "{path} differs from what arq generated ({}); the next `arq new service` will refuse to overwrite it",
                    rec.source
                ),
            )),
            Some(_) => {}
        }
    }
}
