//! Every rule both ways: the fixture `tests/fixtures/good` passes every rule (and exercises
//! each artifact), and for each rule a copy with one planted problem reports exactly that rule,
//! its findings snapshot-tested.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::path::Path;

use arq_cli::check::{self, CheckOptions, Report, registry};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn good() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("acme");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/good"),
        &root,
    );
    (tmp, root)
}

/// An edit of the good fixture: replace the first `old` in `path` with `new`; an empty `old`
/// appends `new`.
type Edit = (&'static str, &'static str, &'static str);

fn plant(root: &Path, edits: &[Edit]) {
    for (path, old, new) in edits {
        let p = root.join(path);
        let text = std::fs::read_to_string(&p).unwrap();
        let text = if old.is_empty() {
            format!("{text}{new}")
        } else {
            assert!(text.contains(old), "{path} does not contain {old:?}");
            text.replacen(old, new, 1)
        };
        std::fs::write(&p, text).unwrap();
    }
}

fn render(r: &Report) -> String {
    r.findings
        .iter()
        .map(|f| {
            format!(
                "{}:{} {} [{}] {}\n",
                f.path, f.line, f.severity, f.rule, f.message
            )
        })
        .collect()
}

fn run(root: &Path) -> Report {
    check::run(root, &CheckOptions::default()).unwrap()
}

#[test]
fn the_good_fixture_passes_every_rule() {
    let (_tmp, root) = good();
    let r = run(&root);
    assert!(r.findings.is_empty(), "{}", render(&r));
    assert_eq!(r.suppressed, 0);
}

/// (rule, extra rules the planted problem may also trigger, edits).
const CASES: &[(&str, &[&str], &[Edit])] = &[
    (
        "manifest-valid",
        &[],
        &[("arq.toml", r#"kind = "http""#, r#"kind = "grpc""#)],
    ),
    (
        "manifest-file-parses",
        &[],
        &[("compose.yaml", "name: acme", "name: [acme")],
    ),
    (
        "manifest-ports-unique",
        &[],
        &[
            ("arq.toml", "port = 3001", "port = 3000"),
            (
                "services/tasks/config/default.toml",
                r#"addr = "0.0.0.0:3001""#,
                r#"addr = "0.0.0.0:3000""#,
            ),
        ],
    ),
    (
        "manifest-routes-overlap",
        &[],
        &[
            (
                "arq.toml",
                "\n[queues.",
                "\n[services.board]\nkind = \"http\"\nport = 3002\nroute = \"/tasks/board\"\ndatabase = false\n\n[queues.",
            ),
            (
                "compose.yaml",
                "",
                "  board:\n    image: ghcr.io/acme/board:0.1.0\n",
            ),
            (
                "deploy/k8s/tasks.yaml",
                "",
                "---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: board\n",
            ),
        ],
    ),
    (
        "manifest-workspace-member",
        &[],
        &[(
            "Cargo.toml",
            r#"members = ["gateway", "services/*"]"#,
            r#"members = ["gateway"]"#,
        )],
    ),
    (
        "manifest-compose-service",
        &[],
        &[("compose.yaml", "  tasks:", "  todo:")],
    ),
    (
        "manifest-k8s-service",
        &[],
        &[
            (
                "deploy/k8s/tasks.yaml",
                "  name: tasks\n  labels",
                "  name: tasks-api\n  labels",
            ),
            (
                "deploy/k8s/tasks.yaml",
                "kind: Deployment, name: tasks }",
                "kind: Deployment, name: tasks-api }",
            ),
        ],
    ),
    (
        "config-parses",
        &[],
        &[("services/tasks/config/prod.toml", "", "[broken\n")],
    ),
    (
        "config-server-port",
        &[],
        &[(
            "services/tasks/config/default.toml",
            r#"addr = "0.0.0.0:3001""#,
            r#"addr = "0.0.0.0:3005""#,
        )],
    ),
    (
        "auth-route-permission",
        &[],
        &[(
            "services/tasks/src/routes.rs",
            ".route_layer(RequirePermissionLayer::new(\"write:task\"))",
            ".route_layer(RequirePermissionLayer::new(\"write:task\"))\n        .route(\"/tasks/{id}\", get(list_tasks).delete(create_task))\n        .route(\"/tasks/export\", get(|| async { \"csv\" }))",
        )],
    ),
    (
        "manifest-gateway",
        &[],
        &[
            ("Cargo.toml", r#"members = ["gateway", "#, "members = ["),
            (
                "gateway/config/default.toml",
                "0.0.0.0:3000",
                "0.0.0.0:3010",
            ),
            (
                "arq.toml",
                r#"public = ["/tasks/shared"]"#,
                r#"public = ["/tasks/shared", "/billing/webhook"]"#,
            ),
            ("compose.yaml", "  gateway:\n", "  edge:\n"),
        ],
    ),
    (
        "config-schema",
        &[],
        &[
            // arq-core's own validation: an unknown key and a malformed value, in two files.
            (
                "services/tasks/config/default.toml",
                r#"addr = "0.0.0.0:3001""#,
                "addr = \"0.0.0.0:3001\"\nshutdown_timeout = \"soon\"",
            ),
            (
                "services/tasks/config/prod.toml",
                "",
                "\n[rate_limit]\nper_minit = 100\n",
            ),
            // The service's own schema: pool_size must be an integer of at most 100.
            (
                "services/tasks/config/prod.toml",
                "",
                "\n[database]\npool_size = 500\n",
            ),
        ],
    ),
    (
        "config-inline-secret",
        &[],
        &[
            (
                "services/tasks/config/default.toml",
                r#"password = "${DATABASE_PASSWORD}""#,
                r#"password = "hunter2""#,
            ),
            (
                "services/tasks/config/prod.toml",
                "",
                "[signing]\njwt_secret = \"c2VjcmV0\"\nkey = \"\"\"\n-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n\"\"\"\n",
            ),
        ],
    ),
    (
        "auth-asymmetric-algorithm",
        &[],
        &[(
            "services/tasks/config/default.toml",
            r#"["RS256"]"#,
            r#"["RS256", "HS256"]"#,
        )],
    ),
    (
        "auth-issuer-audience",
        &[],
        &[(
            "services/tasks/config/default.toml",
            "audience = \"tasks\"\n",
            "",
        )],
    ),
    (
        "auth-token-lifetime",
        &[],
        &[(
            "services/tasks/config/default.toml",
            "access_token_ttl_secs = 3600",
            "access_token_ttl_secs = 86400",
        )],
    ),
    (
        "migrations-parses",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "",
            "CREATE TABLEX broken (id int);\n",
        )],
    ),
    (
        "migrations-rls-enabled",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;\n",
            "",
        )],
    ),
    (
        "migrations-rls-forced",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "ALTER TABLE tasks FORCE ROW LEVEL SECURITY;\n",
            "",
        )],
    ),
    (
        "migrations-tenant-policy",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "AS RESTRICTIVE FOR ALL",
            "FOR ALL",
        )],
    ),
    (
        "migrations-tenant-primary-key",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "PRIMARY KEY (tenant_id, id),\n    FOREIGN",
            "PRIMARY KEY (id, tenant_id),\n    FOREIGN",
        )],
    ),
    (
        "migrations-tenant-unique",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "ON tasks (tenant_id, title)",
            "ON tasks (title)",
        )],
    ),
    (
        "migrations-tenant-foreign-key",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)",
            "FOREIGN KEY (project_id) REFERENCES projects (id)",
        )],
    ),
    (
        "migrations-view-security-invoker",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "WITH (security_invoker = true) ",
            "",
        )],
    ),
    (
        "migrations-security-definer",
        &[],
        &[(
            "arq.toml",
            r#"security_definer_allow = ["arq.current_tenant_id"]"#,
            "security_definer_allow = []",
        )],
    ),
    (
        "migrations-session-tenant",
        &[],
        &[
            (
                "services/tasks/migrations/0001_tasks.sql",
                "SET LOCAL app.tenant_id",
                "SET app.tenant_id",
            ),
            ("services/tasks/src/db.rs", "$1, true)", "$1, false)"),
        ],
    ),
    (
        "kubernetes-parses",
        &[],
        &[("deploy/k8s/tasks.yaml", "", "---\nkind: [oops\n")],
    ),
    (
        "kubernetes-run-as-non-root",
        &[],
        &[
            (
                "deploy/k8s/tasks.yaml",
                "      securityContext:\n        runAsNonRoot: true\n",
                "",
            ),
            (
                "deploy/k8s/tasks.yaml",
                "            runAsNonRoot: true\n",
                "",
            ),
        ],
    ),
    (
        "kubernetes-read-only-root-fs",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
        )],
    ),
    (
        "kubernetes-privilege-escalation",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation: true",
        )],
    ),
    (
        "kubernetes-capabilities",
        &[],
        &[("deploy/k8s/tasks.yaml", "drop: [ALL]", "drop: [NET_RAW]")],
    ),
    (
        "kubernetes-resources",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "            limits: { cpu: 500m, memory: 256Mi }\n",
            "",
        )],
    ),
    (
        "kubernetes-probes",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "          livenessProbe:\n            httpGet: { path: /health/live, port: 3001 }\n",
            "",
        )],
    ),
    (
        "kubernetes-image-pinned",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "ghcr.io/acme/tasks:0.1.0",
            "ghcr.io/acme/tasks:latest",
        )],
    ),
    (
        "kubernetes-hpa",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "maxReplicas: 10",
            "maxReplicas: 20",
        )],
    ),
    (
        "kubernetes-pdb",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "minAvailable: 1",
            "minAvailable: 0",
        )],
    ),
    (
        "kubernetes-network-policy",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "matchLabels: { app: tasks }\n  policyTypes",
            "matchLabels: { app: other }\n  policyTypes",
        )],
    ),
    (
        "kubernetes-removed-api",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "apiVersion: networking.k8s.io/v1\n",
            "apiVersion: networking.k8s.io/v1beta1\n",
        )],
    ),
    (
        "kubernetes-service-account-token",
        &[],
        &[(
            "deploy/k8s/tasks.yaml",
            "automountServiceAccountToken: false",
            "automountServiceAccountToken: true",
        )],
    ),
    (
        "docker-non-root-user",
        &[],
        &[(
            "services/tasks/Dockerfile",
            "USER nonroot:nonroot\n",
            "USER root\n",
        )],
    ),
    (
        "docker-base-pinned",
        &[],
        &[(
            "services/tasks/Dockerfile",
            "FROM rust:1.95.0-slim-bookworm",
            "FROM rust:latest",
        )],
    ),
    (
        "docker-secret-in-env",
        &[],
        &[(
            "services/tasks/Dockerfile",
            "ARG GIT_SHA",
            "ARG NPM_TOKEN\nENV DB_PASSWORD=hunter2",
        )],
    ),
    (
        "queues-declared",
        &[],
        &[(
            "arq.toml",
            r#"queues = ["email.send"]"#,
            r#"queues = ["email.send", "push.send"]"#,
        )],
    ),
    (
        "queues-dead-letter",
        &[],
        &[("arq.toml", "dead_letter = \"email.send.dlq\"\n", "")],
    ),
    (
        "queues-prefetch",
        &[],
        &[("arq.toml", "prefetch = 10", "prefetch = 0")],
    ),
    (
        "policy-type-check",
        &[],
        &[(
            "services/tasks/policies/projects.yaml",
            "principal.department == resource.department",
            "principal.department == resource.budget",
        )],
    ),
    (
        "policy-cost-budget",
        &[],
        &[
            (
                "services/tasks/policies/projects.yaml",
                "    department: string\nrules:",
                "    department: string\n    tags: { type: list(string), max_size: 1000 }\nrules:",
            ),
            (
                "services/tasks/policies/projects.yaml",
                "principal.department == resource.department",
                "resource.tags.all(a, resource.tags.all(b, resource.tags.all(c, resource.tags.exists(d, a + b + c + d == principal.department))))",
            ),
        ],
    ),
    (
        "policy-tests",
        &[],
        &[(
            "services/tasks/policies/tests/projects.yaml",
            "department: sales }\n    expect: deny",
            "department: sales }\n    expect: allow",
        )],
    ),
    (
        "check-config",
        &["migrations-security-definer"],
        &[("arq.toml", "[check]\n", "[check]\nbogus = 1\n")],
    ),
    (
        "check-unknown-rule",
        &[],
        &[(
            "arq.toml",
            "",
            "\n[[check.ignore]]\nrule = \"no-such-rule\"\nreason = \"typo\"\n",
        )],
    ),
    (
        "check-suppression-reason",
        &["migrations-rls-forced"],
        &[
            (
                "services/tasks/migrations/0001_tasks.sql",
                "CREATE TABLE tasks",
                "-- arq-check-ignore: migrations-rls-forced\nCREATE TABLE tasks",
            ),
            (
                "services/tasks/migrations/0001_tasks.sql",
                "ALTER TABLE tasks FORCE ROW LEVEL SECURITY;\n",
                "",
            ),
        ],
    ),
    (
        "check-unused-suppression",
        &[],
        &[(
            "services/tasks/migrations/0001_tasks.sql",
            "CREATE TABLE tasks",
            "-- arq-check-ignore: migrations-rls-forced reason: legacy table\nCREATE TABLE tasks",
        )],
    ),
];

#[test]
fn every_rule_fails_on_its_planted_problem() {
    let mut failures = Vec::new();
    for (rule, also, edits) in CASES {
        let (_tmp, root) = good();
        plant(&root, edits);
        let r = run(&root);
        let hits = r.findings.iter().filter(|f| f.rule == *rule).count();
        let others: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.rule != *rule && !also.contains(&f.rule))
            .collect();
        if hits == 0 || !others.is_empty() {
            failures.push(format!(
                "{rule}: expected only {rule}, got:\n{}",
                render(&r)
            ));
            continue;
        }
        insta::assert_snapshot!(format!("rule__{rule}"), render(&r));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_available_rule_has_a_case() {
    let covered: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    let missing: Vec<&str> = registry::all()
        .filter(|r| r.unavailable.is_none())
        .map(|r| r.id)
        // Live rules are tested against PostgreSQL in check_live.rs; drift against a generated
        // platform in check_platform.rs.
        .filter(|id| !id.starts_with("tenancy-") && *id != "manifest-generated-drift")
        .filter(|id| !covered.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "rules without a failing fixture: {missing:?}"
    );
}

#[test]
fn suppressions_in_each_artifacts_syntax() {
    let (_tmp, root) = good();
    plant(
        &root,
        &[
            // SQL comment.
            (
                "services/tasks/migrations/0001_tasks.sql",
                "ALTER TABLE tasks FORCE ROW LEVEL SECURITY;\n",
                "",
            ),
            (
                "services/tasks/migrations/0001_tasks.sql",
                "CREATE TABLE tasks",
                "-- arq-check-ignore: migrations-rls-forced reason: owner is the app during the migration window\nCREATE TABLE tasks",
            ),
            // Kubernetes annotation.
            (
                "deploy/k8s/tasks.yaml",
                "          livenessProbe:\n            httpGet: { path: /health/live, port: 3001 }\n",
                "",
            ),
            (
                "deploy/k8s/tasks.yaml",
                "  labels: { app: tasks }\nspec:",
                "  labels: { app: tasks }\n  annotations:\n    arq.dev/check-ignore.kubernetes-probes: \"readiness is enough for this batch service\"\nspec:",
            ),
            // Dockerfile comment.
            (
                "services/tasks/Dockerfile",
                "FROM rust:1.95.0-slim-bookworm",
                "# arq-check-ignore: docker-base-pinned reason: build stage only\nFROM rust:slim",
            ),
            // Manifest entry.
            (
                "services/tasks/config/prod.toml",
                "",
                "[database]\npassword = \"local-only\"\n",
            ),
            (
                "arq.toml",
                "",
                "\n[[check.ignore]]\nrule = \"config-inline-secret\"\npath = \"services/tasks/config\"\nreason = \"prod password is rotated by the operator\"\n",
            ),
            (
                "services/tasks/src/routes.rs",
                ".route_layer(RequirePermissionLayer::new(\"write:task\"))",
                ".route_layer(RequirePermissionLayer::new(\"write:task\"))\n        // arq-check-ignore: auth-route-permission reason: reachable only inside the cluster\n        .route(\"/internal/reindex\", post(create_task))",
            ),
        ],
    );
    let r = run(&root);
    assert!(r.findings.is_empty(), "{}", render(&r));
    assert_eq!(r.suppressed, 5);
}

#[test]
fn severity_overrides_and_off() {
    let (_tmp, root) = good();
    plant(
        &root,
        &[
            (
                "deploy/k8s/tasks.yaml",
                "          livenessProbe:\n            httpGet: { path: /health/live, port: 3001 }\n",
                "",
            ),
            (
                "deploy/k8s/tasks.yaml",
                "ghcr.io/acme/tasks:0.1.0",
                "ghcr.io/acme/tasks:latest",
            ),
            (
                "arq.toml",
                "",
                "\n[check.severity]\nkubernetes-probes = \"warning\"\nkubernetes-image-pinned = \"off\"\n",
            ),
        ],
    );
    let r = run(&root);
    assert_eq!(r.findings.len(), 1, "{}", render(&r));
    assert_eq!(r.findings[0].rule, "kubernetes-probes");
    assert_eq!(r.findings[0].severity, check::Severity::Warning);
    assert_eq!(r.exit_code(check::Severity::Error), 0);
    assert_eq!(r.exit_code(check::Severity::Warning), 1);
}

#[test]
fn baseline_hides_known_findings_and_shows_new_ones() {
    let (tmp, root) = good();
    plant(
        &root,
        &[("deploy/k8s/tasks.yaml", "drop: [ALL]", "drop: [NET_RAW]")],
    );
    let base = tmp.path().join("baseline.json");
    check::baseline::write(&base, &run(&root).findings).unwrap();
    let opts = CheckOptions {
        baseline: Some(base.clone()),
        ..CheckOptions::default()
    };
    let r = check::run(&root, &opts).unwrap();
    assert!(r.findings.is_empty(), "{}", render(&r));
    assert_eq!(r.baselined, 1);
    // A new problem, and unrelated line shifts do not resurrect the old one.
    plant(
        &root,
        &[
            (
                "deploy/k8s/tasks.yaml",
                "apiVersion: apps/v1\n",
                "# shifted\napiVersion: apps/v1\n",
            ),
            ("services/tasks/Dockerfile", "USER nonroot:nonroot\n", ""),
        ],
    );
    let r = check::run(&root, &opts).unwrap();
    assert_eq!(render(&r).lines().count(), 1, "{}", render(&r));
    assert_eq!(r.findings[0].rule, "docker-non-root-user");
    // A corrupt baseline is a configuration error.
    std::fs::write(&base, "{").unwrap();
    assert!(check::run(&root, &opts).is_err());
}

#[test]
fn sql_outside_migrations_is_not_a_migration() {
    let (_tmp, root) = good();
    std::fs::create_dir_all(root.join("deploy/sql")).unwrap();
    // An operator's role script: a DO block (which the migration parser refuses) and a table
    // with tenant_id but no row level security.
    std::fs::write(
        root.join("deploy/sql/roles.sql"),
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_app') THEN CREATE ROLE arq_app LOGIN; END IF; END $$;\nCREATE TABLE scratch (tenant_id uuid, note text);\n",
    )
    .unwrap();
    let r = run(&root);
    assert!(r.findings.is_empty(), "{}", render(&r));
}

/// Handlers of one name in two modules are judged apart: `invitations::create` (guarded) is not
/// reported because of `signup::create` (unguarded), and `signup::create` still is.
#[test]
fn same_named_handlers_in_two_modules_are_judged_apart() {
    let (_tmp, root) = good();
    let src = root.join("services/tasks/src");
    std::fs::write(
        src.join("invitations.rs"),
        "use arq_auth::RequirePermission;\npub async fn create(RequirePermission(_p, _): RequirePermission<super::routes::ReadTask>) -> &'static str { \"invited\" }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("signup.rs"),
        "pub async fn create() -> &'static str { \"signed up\" }\n",
    )
    .unwrap();
    plant(
        &root,
        &[(
            "services/tasks/src/routes.rs",
            "pub fn router() -> Router {\n    Router::new()",
            "pub fn extra() -> Router {\n    Router::new()\n        .route(\"/invitations\", post(crate::invitations::create))\n        .route(\"/signup\", post(signup::create))\n}\n\npub fn router() -> Router {\n    Router::new()",
        )],
    );
    let r = run(&root);
    let found = render(&r);
    assert!(
        found.contains("route POST /signup (handler `signup::create`)"),
        "{found}"
    );
    assert!(!found.contains("/invitations"), "{found}");
    assert_eq!(r.findings.len(), 1, "{found}");
}
