//! `arq init` and `arq new service`: turn options into a [`Plan`].
//!
//! Files rendered whole from templates are protected by the generation record; the platform's
//! `arq.toml` and `Cargo.toml` are edited as TOML documents, so a user's additions survive;
//! files derived from the manifest (`compose.yaml`) are re-rendered from it on every change.

use std::path::{Path, PathBuf};

use minijinja::Value;
use serde::Serialize;
use toml_edit::DocumentMut;

use crate::manifest::{
    self, ArqSource, MANIFEST_FILE, Manifest, ManifestError, ServiceEntry, ServiceKind,
};
use crate::names::{Name, QueueName, QueueNameError};
use crate::plan::{Plan, PlanError};
use crate::templates::{TEMPLATE_VERSION, TemplateError, Templates, output_path};

/// Options of `arq init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The platform directory to create.
    pub dir: PathBuf,
    /// The platform name (defaults to the directory's name).
    pub name: Option<Name>,
    /// Where generated crates take the arq crates from.
    pub arq: ArqSource,
}

/// Options of `arq new service`.
#[derive(Debug, Clone)]
pub struct NewServiceOptions {
    /// The service name.
    pub name: Name,
    /// HTTP service or worker.
    pub kind: ServiceKind,
    /// The port (default: the next free one from 3001 inside a platform, 3001 outside).
    pub port: Option<u16>,
    /// The route prefix (default `/<name>` for HTTP services).
    pub route: Option<String>,
    /// Queues the service consumes.
    pub queues: Vec<String>,
    /// Whether the service has a database.
    pub database: bool,
    /// For a standalone service: where to take the arq crates from.
    pub arq: ArqSource,
}

/// What the generator planned, and where.
#[derive(Debug)]
pub struct Generated {
    /// The plan.
    pub plan: Plan,
    /// A one-line summary for the user.
    pub summary: String,
}

/// Plans `arq init`.
pub fn plan_init(opts: &InitOptions, templates: &Templates) -> Result<Generated, GenerateError> {
    let dir = &opts.dir;
    // `arq init .` names the platform after the current directory.
    let absolute = if dir.exists() {
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone())
    } else {
        dir.clone()
    };
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => absolute
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| GenerateError::Usage(format!(
                "cannot take a platform name from {}; pass --name",
                dir.display()
            )))?
            .parse::<Name>()
            .map_err(|e| GenerateError::Usage(format!(
                "the directory name is not a valid platform name: {e}; pass --name or choose another directory"
            )))?,
    };
    let existing = load_manifest(dir)?;
    match &existing {
        Some((m, _)) if m.platform.name != name.as_str() => {
            return Err(GenerateError::Usage(format!(
                "{} already holds platform {:?}; arq init with another name would rewrite it",
                dir.display(),
                m.platform.name
            )));
        }
        Some(_) => {}
        None => {
            if dir.exists() && !is_empty_dir(dir)? {
                return Err(GenerateError::Usage(format!(
                    "{} exists and is not empty; arq init creates a new platform in a new or empty directory",
                    dir.display()
                )));
            }
        }
    }
    let manifest = match existing {
        Some((m, _)) => m,
        None => Manifest {
            platform: manifest::PlatformSection {
                name: name.to_string(),
                template_version: TEMPLATE_VERSION.to_owned(),
            },
            arq: opts.arq.clone(),
            gateway: manifest::GatewaySection {
                port: 3000,
                prefix: "/api/v1".to_owned(),
                public: Vec::new(),
                resilience: None,
            },
            services: Default::default(),
            queues: None,
            check: None,
        },
    };
    let mut plan = Plan::new(dir)?;
    let ctx = platform_context(&manifest, None);
    for t in templates.names_under("platform") {
        let out = output_path(&t, "platform");
        // arq.toml, Cargo.toml and the kustomizations belong to the user after init (arq only
        // edits them as documents): only create them.
        if CREATE_ONLY.contains(&out.as_str()) && plan.current(&out)?.is_some() {
            continue;
        }
        plan.render(&out, &t, templates.render(&t, &ctx)?)?;
    }
    Ok(Generated {
        plan: plan.finish(TEMPLATE_VERSION),
        summary: format!("platform {name} in {}", dir.display()),
    })
}

/// Plans `arq new service`, inside the platform at `platform_root` if given, else as a
/// standalone crate in `cwd/<name>`.
pub fn plan_new_service(
    platform_root: Option<&Path>,
    cwd: &Path,
    opts: &NewServiceOptions,
    templates: &Templates,
) -> Result<Generated, GenerateError> {
    let opts = &normalize(opts)?;
    match platform_root {
        Some(root) => plan_in_platform(root, opts, templates),
        None => plan_standalone(cwd, opts, templates),
    }
}

/// Checks the options that depend on the kind and fills in the kind's defaults: an HTTP
/// service has a route and no queues; a worker has no route, consumes at least one queue
/// (`NAME.jobs` when none is given) and is generated without a database.
fn normalize(opts: &NewServiceOptions) -> Result<NewServiceOptions, GenerateError> {
    let mut opts = opts.clone();
    match opts.kind {
        ServiceKind::Http => {
            if let Some(route) = &opts.route {
                manifest::check_route(route).map_err(GenerateError::Usage)?;
            }
            if !opts.queues.is_empty() {
                return Err(GenerateError::Usage(
                    "--queue names the queues a worker consumes; add --kind worker, or drop --queue \
                     (an HTTP service publishes through arq-queue without declaring queues here)"
                        .to_owned(),
                ));
            }
        }
        ServiceKind::Worker => {
            if opts.route.is_some() {
                return Err(GenerateError::Usage(
                    "a worker has no route (it serves only /health and /metrics); drop --route"
                        .to_owned(),
                ));
            }
            if opts.queues.is_empty() {
                opts.queues.push(format!("{}.jobs", opts.name));
            }
            let mut seen: Vec<QueueName> = Vec::new();
            for q in &opts.queues {
                let parsed: QueueName = q
                    .parse()
                    .map_err(|e: QueueNameError| GenerateError::Usage(e.to_string()))?;
                if let Some(other) = seen.iter().find(|o| o.ident() == parsed.ident()) {
                    return Err(GenerateError::Usage(if other == &parsed {
                        format!("--queue {q} is given twice")
                    } else {
                        format!(
                            "queues {other:?} and {q:?} would both name their handler `{}`; rename one",
                            parsed.ident()
                        )
                    }));
                }
                seen.push(parsed);
            }
            // Workers are generated without a database (see docs/generator.md).
            opts.database = false;
        }
    }
    Ok(opts)
}

fn plan_in_platform(
    root: &Path,
    opts: &NewServiceOptions,
    templates: &Templates,
) -> Result<Generated, GenerateError> {
    let (manifest, mut doc) = load_manifest(root)?.ok_or_else(|| {
        GenerateError::Usage(format!("{} has no {MANIFEST_FILE}", root.display()))
    })?;
    let name = &opts.name;
    let rel_dir = format!("services/{name}");
    let route = default_route(opts);
    let entry = match manifest.services.get(name.as_str()) {
        Some(existing) => {
            // Re-running with the same inputs is allowed and changes nothing; different
            // inputs would silently re-plumb a live service, so they are refused.
            let same = existing.kind == opts.kind
                && opts.port.is_none_or(|p| p == existing.port)
                && existing.route == route
                && existing.database == opts.database
                && existing.queues == opts.queues;
            if !same {
                return Err(GenerateError::Usage(format!(
                    "service {name} already exists in {MANIFEST_FILE} with other settings; edit [services.{name}] there instead"
                )));
            }
            existing.clone()
        }
        None => {
            if root.join(&rel_dir).exists() {
                return Err(GenerateError::Usage(format!(
                    "{rel_dir} already exists but is not in {MANIFEST_FILE}; remove it or choose another name"
                )));
            }
            let entry = ServiceEntry {
                kind: opts.kind,
                port: opts.port.unwrap_or_else(|| manifest.next_free_port()),
                route,
                database: opts.database,
                queues: opts.queues.clone(),
            };
            manifest::add_service(&mut doc, name, &entry)?;
            entry
        }
    };
    // `arq check` requires every consumed queue to be declared with its dead-letter queue.
    for q in &entry.queues {
        manifest::declare_queue(&mut doc, q)?;
    }
    let new_manifest_text = doc.to_string();
    let new_manifest = Manifest::parse(&new_manifest_text, &root.join(MANIFEST_FILE))?;

    let mut plan = Plan::new(root)?;
    plan.edit(MANIFEST_FILE, "add service", new_manifest_text)?;
    let cargo = add_workspace_member(root, &rel_dir)?;
    plan.edit("Cargo.toml", "workspace member", cargo)?;

    let ctx = platform_context(&new_manifest, Some((name, &entry)));
    let set = template_set(entry.kind);
    for t in templates.names_under(set) {
        let out = format!("{rel_dir}/{}", output_path(&t, set));
        render_unless_empty(&mut plan, &out, &t, templates.render(&t, &ctx)?)?;
    }
    for t in templates.names_under("service-platform") {
        let out = output_path(&t, "service-platform").replace("__service__", name.as_str());
        render_unless_empty(&mut plan, &out, &t, templates.render(&t, &ctx)?)?;
    }
    wire_kustomizations(&mut plan, name.as_str())?;
    // Files derived from the manifest are re-rendered so they always list every service.
    for t in templates.names_under("platform") {
        let out = output_path(&t, "platform");
        if DERIVED.contains(&out.as_str()) {
            plan.render(&out, &t, templates.render(&t, &ctx)?)?;
        }
    }
    let summary = match &entry.route {
        Some(route) => format!(
            "service {name} in {rel_dir} (port {}, route {}{route})",
            entry.port, new_manifest.gateway.prefix
        ),
        None => format!(
            "worker {name} in {rel_dir} (port {}, queues {})",
            entry.port,
            entry.queues.join(", ")
        ),
    };
    Ok(Generated {
        plan: plan.finish(TEMPLATE_VERSION),
        summary,
    })
}

/// The route a new service gets: the one given, else `/NAME`; a worker has none.
fn default_route(opts: &NewServiceOptions) -> Option<String> {
    match opts.kind {
        ServiceKind::Http => Some(
            opts.route
                .clone()
                .unwrap_or_else(|| format!("/{}", opts.name)),
        ),
        ServiceKind::Worker => None,
    }
}

/// The template folder a kind of service is rendered from (`service/` or `worker/`); both
/// share `service-platform/` for their wiring.
const fn template_set(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Http => "service",
        ServiceKind::Worker => "worker",
    }
}

fn plan_standalone(
    cwd: &Path,
    opts: &NewServiceOptions,
    templates: &Templates,
) -> Result<Generated, GenerateError> {
    let name = &opts.name;
    let root = cwd.join(name.as_str());
    let record = root.join(crate::plan::RECORD_FILE);
    if root.exists() && !record.exists() {
        return Err(GenerateError::Usage(format!(
            "{} already exists and was not generated by arq; choose another name or directory",
            root.display()
        )));
    }
    let entry = ServiceEntry {
        kind: opts.kind,
        port: opts.port.unwrap_or(manifest::FIRST_SERVICE_PORT),
        route: default_route(opts),
        database: opts.database,
        queues: opts.queues.clone(),
    };
    let manifest = Manifest {
        platform: manifest::PlatformSection {
            name: name.to_string(),
            template_version: TEMPLATE_VERSION.to_owned(),
        },
        arq: opts.arq.clone(),
        gateway: manifest::GatewaySection {
            port: 3000,
            prefix: String::new(),
            public: Vec::new(),
            resilience: None,
        },
        services: Default::default(),
        queues: None,
        check: None,
    };
    let mut ctx_struct = context_struct(&manifest, Some((name, &entry)));
    ctx_struct.standalone = true;
    ctx_struct.arq = ArqDeps::new(&manifest.arq, 0);
    let ctx = Value::from(minijinja::value::Serde(&ctx_struct));
    let mut plan = Plan::new(&root)?;
    let set = template_set(entry.kind);
    for t in templates.names_under(set) {
        let out = output_path(&t, set);
        render_unless_empty(&mut plan, &out, &t, templates.render(&t, &ctx)?)?;
    }
    let what = match entry.kind {
        ServiceKind::Http => "service",
        ServiceKind::Worker => "worker",
    };
    Ok(Generated {
        plan: plan.finish(TEMPLATE_VERSION),
        summary: format!("standalone {what} {name} in {}", root.display()),
    })
}

/// Plans `out` from `template`, unless the template rendered nothing: templates that only apply
/// to some kinds of service (a database's migrations, a worker's consumer) render empty for the
/// others.
fn render_unless_empty(
    plan: &mut Plan,
    out: &str,
    template: &str,
    content: String,
) -> Result<(), GenerateError> {
    if content.trim().is_empty() {
        return Ok(());
    }
    plan.render(out, template, content)?;
    Ok(())
}

/// The kustomization arq wires services into, and the overlays.
pub const KUSTOMIZE_BASE: &str = "deploy/k8s/base/kustomization.yaml";
/// The overlays with fixed replica counts: (kustomization, replicas per service).
pub const KUSTOMIZE_FIXED_OVERLAYS: [(&str, u64); 2] = [
    ("deploy/k8s/overlays/dev/kustomization.yaml", 1),
    ("deploy/k8s/overlays/staging/kustomization.yaml", 3),
];
/// The production overlay, which lists each service's HorizontalPodAutoscaler.
pub const KUSTOMIZE_PROD: &str = "deploy/k8s/overlays/prod/kustomization.yaml";

/// Platform files rendered from the manifest, re-rendered whenever a service is added.
const DERIVED: [&str; 4] = [
    "compose.yaml",
    ".github/workflows/ci.yml",
    ".gitlab-ci.yml",
    "deploy/monitoring/alerts.rules.yml",
];

/// Files `arq init` creates but never rewrites: the user owns them, arq edits them as documents.
const CREATE_ONLY: [&str; 6] = [
    MANIFEST_FILE,
    "Cargo.toml",
    KUSTOMIZE_BASE,
    KUSTOMIZE_FIXED_OVERLAYS[0].0,
    KUSTOMIZE_FIXED_OVERLAYS[1].0,
    KUSTOMIZE_PROD,
];

/// Adds service `name` to the base kustomization's `resources`, to the fixed overlays'
/// `replicas` and its autoscaler to the production overlay's `resources`.
fn wire_kustomizations(plan: &mut Plan, name: &str) -> Result<(), GenerateError> {
    edit_kustomization(plan, KUSTOMIZE_BASE, |k| {
        add_to_sequence(k, "resources", serde_norway::Value::String(name.to_owned()))
    })?;
    for (path, count) in KUSTOMIZE_FIXED_OVERLAYS {
        edit_kustomization(plan, path, |k| {
            let mut entry = serde_norway::Mapping::new();
            entry.insert("name".into(), name.into());
            entry.insert("count".into(), count.into());
            add_to_sequence(k, "replicas", serde_norway::Value::Mapping(entry))
        })?;
    }
    edit_kustomization(plan, KUSTOMIZE_PROD, |k| {
        add_to_sequence(
            k,
            "resources",
            serde_norway::Value::String(format!("{name}-hpa.yaml")),
        )
    })
}

/// Appends `item` to the sequence under `key` unless an entry with the same `name` (or the
/// same string) is there. Errors when `key` is missing or not a sequence.
fn add_to_sequence(
    k: &mut serde_norway::Mapping,
    key: &str,
    item: serde_norway::Value,
) -> Result<bool, String> {
    let seq = k
        .get_mut(key)
        .and_then(serde_norway::Value::as_sequence_mut)
        .ok_or_else(|| format!("expected a `{key}:` list"))?;
    let id = |v: &serde_norway::Value| match v {
        serde_norway::Value::Mapping(m) => m.get("name").cloned(),
        other => Some(other.clone()),
    };
    let wanted = id(&item);
    if seq.iter().any(|v| id(v) == wanted) {
        return Ok(false);
    }
    seq.push(item);
    Ok(true)
}

/// Edits the kustomization at `path` as a YAML document, keeping its leading comment. Fails
/// loudly when the file is missing or not the expected document; plans nothing when `edit`
/// changes nothing.
fn edit_kustomization(
    plan: &mut Plan,
    path: &str,
    edit: impl FnOnce(&mut serde_norway::Mapping) -> Result<bool, String>,
) -> Result<(), GenerateError> {
    let text = plan.current(path)?.ok_or_else(|| {
        GenerateError::Usage(format!(
            "{path} is missing; restore it (arq init . recreates the platform's missing files) and re-run"
        ))
    })?;
    let unexpected = |why: String| {
        GenerateError::Usage(format!(
            "{path}: {why}; arq wires services into it as a Kustomization document, so fix the file and re-run"
        ))
    };
    let mut doc: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| unexpected(format!("not YAML ({e})")))?;
    let map = doc
        .as_mapping_mut()
        .filter(|m| m.get("kind").and_then(serde_norway::Value::as_str) == Some("Kustomization"))
        .ok_or_else(|| unexpected("expected a document with `kind: Kustomization`".to_owned()))?;
    if !edit(map).map_err(unexpected)? {
        return Ok(());
    }
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let body = serde_norway::to_string(&doc).map_err(|e| unexpected(e.to_string()))?;
    plan.edit(path, "wire service", format!("{header}{body}"))?;
    Ok(())
}

fn load_manifest(dir: &Path) -> Result<Option<(Manifest, DocumentMut)>, GenerateError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PlanError::Io { path, source }.into()),
    };
    let manifest = Manifest::parse(&text, &path)?;
    let doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ManifestError::Syntax {
                path: path.clone(),
                message: e.to_string(),
            })?;
    Ok(Some((manifest, doc)))
}

/// The platform's Cargo.toml with `member` added to `[workspace] members` (kept sorted and
/// unique). Fails loudly if the document has no such array, rather than doing nothing.
fn add_workspace_member(root: &Path, member: &str) -> Result<String, GenerateError> {
    let path = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| PlanError::Io {
        path: path.clone(),
        source,
    })?;
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        GenerateError::Usage(format!("{}: {e}", path.display()))
    })?;
    let members = doc
        .get_mut("workspace")
        .and_then(|w| w.get_mut("members"))
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| {
            GenerateError::Usage(format!(
                "{}: expected a `[workspace]` table with a `members = [...]` array; add one and re-run",
                path.display()
            ))
        })?;
    if !members.iter().any(|v| v.as_str() == Some(member)) {
        members.push(member);
        let mut all: Vec<String> = members
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        all.sort();
        members.clear();
        for m in all {
            members.push(m);
        }
        members.set_trailing_comma(true);
    }
    Ok(doc.to_string())
}

fn is_empty_dir(dir: &Path) -> Result<bool, GenerateError> {
    let mut it = std::fs::read_dir(dir).map_err(|source| PlanError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(it.next().is_none())
}

#[derive(Debug, Serialize)]
struct Context {
    template_version: &'static str,
    roles_sql: &'static str,
    arq_source_line: String,
    standalone: bool,
    platform: PlatformCtx,
    arq: ArqDeps,
    services: Vec<ServiceCtx>,
    service: Option<ServiceCtx>,
}

#[derive(Debug, Serialize)]
struct PlatformCtx {
    name: String,
    camel: String,
    gateway_port: u16,
    prefix: String,
}

impl ArqDeps {
    fn new(src: &ArqSource, depth: usize) -> Self {
        Self {
            core: arq_dep(src, "arq-core", depth),
            core_gateway: arq_dep_with_features(src, "arq-core", &["gateway"], depth),
            core_testing: arq_dep_with_features(src, "arq-core", &["testing"], depth),
            tenancy_testing: arq_dep_with_features(src, "arq-tenancy", &["testing"], depth),
            auth: arq_dep(src, "arq-auth", depth),
            auth_testing: arq_dep_with_features(src, "arq-auth", &["testing"], depth),
            tenancy: arq_dep(src, "arq-tenancy", depth),
            queue: arq_dep(src, "arq-queue", depth),
            queue_rabbitmq: arq_dep_with_features(src, "arq-queue", &["rabbitmq"], depth),
        }
    }
}

#[derive(Debug, Serialize)]
struct ArqDeps {
    core: String,
    /// arq-core with the `gateway` feature, for the generated gateway crate.
    core_gateway: String,
    /// arq-core with its `testing` feature, for dev-dependencies.
    core_testing: String,
    /// arq-tenancy with its `testing` feature (the per-test database), for dev-dependencies.
    tenancy_testing: String,
    auth: String,
    /// arq-auth with its `testing` feature (the test token issuer), for dev-dependencies.
    auth_testing: String,
    tenancy: String,
    queue: String,
    /// arq-queue with its `rabbitmq` feature, for workers.
    queue_rabbitmq: String,
}

#[derive(Debug, Clone, Serialize)]
struct ServiceCtx {
    name: String,
    ident: String,
    camel: String,
    kind: &'static str,
    port: u16,
    route: String,
    database: bool,
    queues: Vec<QueueCtx>,
}

/// A queue a worker consumes, with the names its generated code uses.
#[derive(Debug, Clone, Serialize)]
struct QueueCtx {
    name: String,
    /// The handler function (`email_send`).
    ident: String,
    /// The message type (`EmailSend`).
    camel: String,
    /// The dead-letter queue arq-queue declares for it.
    dead_letter: String,
    /// Its prefetch: the manifest's declaration, else arq-queue's default.
    prefetch: i64,
}

fn service_ctx(m: &Manifest, name: &str, e: &ServiceEntry) -> ServiceCtx {
    let parsed: Option<Name> = name.parse().ok();
    ServiceCtx {
        name: name.to_owned(),
        ident: parsed
            .as_ref()
            .map_or_else(|| name.replace('-', "_"), Name::ident),
        camel: parsed.as_ref().map_or_else(|| name.to_owned(), Name::camel),
        kind: match e.kind {
            ServiceKind::Http => "http",
            ServiceKind::Worker => "worker",
        },
        port: e.port,
        route: e.route.clone().unwrap_or_default(),
        database: e.database,
        queues: e
            .queues
            .iter()
            .map(|q| {
                let parsed: Option<QueueName> = q.parse().ok();
                QueueCtx {
                    name: q.clone(),
                    ident: parsed
                        .as_ref()
                        .map_or_else(|| q.replace(['.', '-'], "_"), QueueName::ident),
                    camel: parsed.as_ref().map_or_else(|| q.clone(), QueueName::camel),
                    dead_letter: manifest::dead_letter_queue(q),
                    prefetch: manifest::declared_prefetch(m, q)
                        .unwrap_or(manifest::DEFAULT_PREFETCH),
                }
            })
            .collect(),
    }
}

/// `krate` as a dependency of a crate `depth` directories below the platform root: a relative
/// arq path in `arq.toml` is relative to the root.
fn arq_dep(src: &ArqSource, krate: &str, depth: usize) -> String {
    if let Some(path) = &src.path {
        let up = if Path::new(path).is_relative() {
            "../".repeat(depth)
        } else {
            String::new()
        };
        format!(
            "{{ path = {:?} }}",
            format!("{up}{}/{krate}", path.trim_end_matches('/'))
        )
    } else if let Some(git) = &src.git {
        format!("{{ git = {git:?} }}")
    } else {
        format!("{:?}", src.version.as_deref().unwrap_or(TEMPLATE_VERSION))
    }
}

/// Like [`arq_dep`], as an inline table with `features`.
fn arq_dep_with_features(src: &ArqSource, krate: &str, features: &[&str], depth: usize) -> String {
    let features = features
        .iter()
        .map(|f| format!("{f:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let dep = arq_dep(src, krate, depth);
    match dep.strip_prefix("{ ").and_then(|d| d.strip_suffix(" }")) {
        Some(inner) => format!("{{ {inner}, features = [{features}] }}"),
        None => format!("{{ version = {dep}, features = [{features}] }}"),
    }
}

fn arq_source_line(src: &ArqSource) -> String {
    if let Some(path) = &src.path {
        format!("path = {path:?}")
    } else if let Some(git) = &src.git {
        format!("git = {git:?}")
    } else {
        format!(
            "version = {:?}",
            src.version.as_deref().unwrap_or(TEMPLATE_VERSION)
        )
    }
}

fn context_struct(m: &Manifest, service: Option<(&Name, &ServiceEntry)>) -> Context {
    Context {
        template_version: TEMPLATE_VERSION,
        roles_sql: arq_tenancy::migrate::ROLES_SQL,
        arq_source_line: arq_source_line(&m.arq),
        standalone: false,
        platform: PlatformCtx {
            name: m.platform.name.clone(),
            camel: m
                .platform
                .name
                .parse::<Name>()
                .map_or_else(|_| m.platform.name.clone(), |n| n.camel()),
            gateway_port: m.gateway.port,
            prefix: m.gateway.prefix.clone(),
        },
        // The platform's only crate is `gateway/`; a service's is `services/NAME/`.
        arq: ArqDeps::new(&m.arq, if service.is_some() { 2 } else { 1 }),
        services: m
            .services
            .iter()
            .map(|(n, e)| service_ctx(m, n, e))
            .collect(),
        service: service.map(|(n, e)| service_ctx(m, n.as_str(), e)),
    }
}

fn platform_context(m: &Manifest, service: Option<(&Name, &ServiceEntry)>) -> Value {
    Value::from(minijinja::value::Serde(context_struct(m, service)))
}

/// Errors from the generator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The request cannot be carried out as given; the message says what to change.
    #[error("{0}")]
    Usage(String),
    /// The manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Planning or applying failed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A template failed.
    #[error(transparent)]
    Template(#[from] TemplateError),
}
