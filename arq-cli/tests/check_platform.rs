//! `arq check` end to end through the binary: a platform made by `arq init` + `arq new
//! service`, a broken copy of it, drift of generated files, every output format with its exit
//! code, and PITFALLS 69 (broken inputs exit 2, findings 1, clean 0).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn arq(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `arq init acme` + `arq new service tasks` + `arq new service billing`.
fn fresh() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        arq(tmp.path(), &["init", "acme", "--arq-version", "0.1.0"])
            .status
            .success()
    );
    let root = tmp.path().join("acme");
    for s in ["tasks", "billing"] {
        let o = arq(&root, &["new", "service", s]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    (tmp, root)
}

/// What the current templates fail: the runtime image `gcr.io/distroless/cc-debian12:nonroot`
/// is a moving tag. The lead owns templates/; when service/Dockerfile.j2 pins it by digest,
/// this list becomes empty.
/// Findings on a freshly generated platform: none.
const TEMPLATE_GAPS: &str = "";

fn brief(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}:{} {}\n",
                f["path"].as_str().unwrap(),
                f["line"],
                f["rule"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_fresh_platform_has_no_findings() {
    let (_tmp, root) = fresh();
    let o = arq(&root, &["check", "--format", "json"]);
    assert_eq!(brief(&stdout(&o)), TEMPLATE_GAPS);
    // A [check] section is the user's: arq check reads it and arq new service keeps working.
    let manifest = root.join("arq.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text + "\n[check]\nmax_access_token_ttl_secs = 3600\n",
    )
    .unwrap();
    let o = arq(&root, &["new", "service", "extra"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = arq(&root, &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("no findings"), "{}", stdout(&o));
}

#[test]
fn a_platform_with_a_worker_has_no_findings() {
    let (_tmp, root) = fresh();
    let o = arq(
        &root,
        &[
            "new",
            "service",
            "mailer",
            "--kind",
            "worker",
            "--queue",
            "email.send",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = arq(&root, &["check", "--format", "json"]);
    assert_eq!(brief(&stdout(&o)), "");
    assert_eq!(o.status.code(), Some(0));
    // The queue declaration arq wrote is what the queue rules check.
    let manifest = root.join("arq.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("prefetch = 10", "prefetch = 0")).unwrap();
    let o = arq(&root, &["check", "--format", "json"]);
    assert!(
        brief(&stdout(&o)).ends_with(" queues-prefetch\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_broken_copy_reports_exactly_the_planted_problems() {
    let (_tmp, root) = fresh();
    let edit = |path: &str, old: &str, new: &str| {
        let p = root.join(path);
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains(old), "{path}: {old}");
        std::fs::write(&p, t.replacen(old, new, 1)).unwrap();
    };
    // 1. billing dropped from the workspace.
    edit("Cargo.toml", "\"services/billing\",", "");
    // 2. an inline password in tasks' config.
    edit(
        "services/tasks/config/default.toml",
        "shutdown_timeout = \"10s\"",
        "shutdown_timeout = \"10s\"\n\n[cache]\npassword = \"hunter2\"",
    );
    // 3. tasks' Dockerfile runs as root (a generated file: also drift).
    edit("services/tasks/Dockerfile", "USER 10001:10001", "USER root");
    // 4. a migration with a tenant table and no row level security.
    std::fs::create_dir_all(root.join("services/billing/migrations")).unwrap();
    std::fs::write(
        root.join("services/billing/migrations/0001_invoices.sql"),
        "CREATE TABLE invoices (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));\n",
    )
    .unwrap();
    let o = arq(&root, &["check", "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let expected = "\
Cargo.toml:4 manifest-workspace-member
services/billing/migrations/0001_invoices.sql:1 migrations-rls-enabled
services/billing/migrations/0001_invoices.sql:1 migrations-rls-forced
services/billing/migrations/0001_invoices.sql:1 migrations-tenant-policy
services/tasks/Dockerfile:1 manifest-generated-drift
services/tasks/Dockerfile:16 docker-non-root-user
services/tasks/config/default.toml:10 config-inline-secret
";
    assert_eq!(brief(&stdout(&o)), expected);
}

#[test]
fn generated_drift_is_reported_and_intent_can_be_recorded() {
    let (_tmp, root) = fresh();
    let compose = root.join("compose.yaml");
    let t = std::fs::read_to_string(&compose).unwrap();
    std::fs::write(&compose, t.replace("RUST_LOG: info", "RUST_LOG: debug")).unwrap();
    std::fs::remove_file(root.join("services/billing/Dockerfile")).unwrap();
    // The API description is the service's own to change, like its code: not drift.
    let openapi = root.join("services/billing/openapi.json");
    let doc = std::fs::read_to_string(&openapi).unwrap();
    std::fs::write(
        &openapi,
        doc.replacen(
            "\"paths\"",
            "\"x-owner\": \"billing team\",\n  \"paths\"",
            1,
        ),
    )
    .unwrap();
    let o = arq(
        &root,
        &["check", "--format", "json", "--fail-on", "warning"],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    let b = brief(&out);
    let drift: Vec<&str> = b
        .lines()
        .filter(|l| l.ends_with("manifest-generated-drift"))
        .collect();
    assert_eq!(drift.len(), 2, "{out}");
    assert!(drift[0].starts_with(".arq/generated.toml:"), "{drift:?}");
    assert!(drift[1].starts_with("compose.yaml:1"), "{drift:?}");
    insta::assert_snapshot!(
        "drift",
        out.lines()
            .filter(|l| l.contains("\"message\"") && l.contains("generated"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Warnings do not fail the default gate.
    std::fs::write(
        root.join("services/billing/Dockerfile"),
        std::fs::read_to_string(root.join("services/tasks/Dockerfile"))
            .unwrap()
            .replace("tasks", "billing")
            .replace("3001", "3002"),
    )
    .unwrap();
    let text = std::fs::read_to_string(root.join("arq.toml")).unwrap();
    std::fs::write(
        root.join("arq.toml"),
        text + "\n[[check.ignore]]\nrule = \"manifest-generated-drift\"\npath = \"compose.yaml\"\nreason = \"debug logging while we chase the billing bug\"",
    )
    .unwrap();
    let o = arq(&root, &["check", "--fail-on", "warning"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

fn broken_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("acme");
    std::fs::create_dir_all(root.join("services/tasks/config")).unwrap();
    std::fs::write(
        root.join("arq.toml"),
        "[platform]\nname = \"acme\"\ntemplate_version = \"0.1.0\"\n\n[gateway]\nport = 3000\nprefix = \"/api/v1\"\n\n[services.tasks]\nkind = \"http\"\nport = 3001\nroute = \"/tasks\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[workspace]\nmembers = [\"gateway\", \"services/tasks\"]\n",
    )
    .unwrap();
    // A platform has a gateway; this one is wired (there is no deploy/k8s to wire it into).
    std::fs::create_dir_all(root.join("gateway")).unwrap();
    std::fs::write(
        root.join("gateway/Cargo.toml"),
        "[package]\nname = \"gateway\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("compose.yaml"),
        "services:\n  gateway:\n    image: y:1.0\n  tasks:\n    image: x:1.0\n",
    )
    .unwrap();
    std::fs::write(
        root.join("services/tasks/config/default.toml"),
        "[server]\naddr = \"0.0.0.0:3001\"\n\n[auth]\nalgorithms = [\"HS256\"]\nissuer = \"https://id\"\naudience = \"tasks\"\njwt_secret = \"s3cret, with \\\"quotes\\\"\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("services/tasks/Dockerfile"),
        "FROM debian:bookworm\nUSER app\n",
    )
    .unwrap();
    (tmp, root)
}

#[test]
fn every_output_format_with_its_exit_code() {
    let (_tmp, root) = broken_fixture();
    for format in ["human", "json", "sarif", "github"] {
        let o = arq(&root, &["check", "--format", format]);
        assert_eq!(o.status.code(), Some(1), "{format}");
        let mut out = stdout(&o);
        if format == "sarif" {
            // The rule table is long and generated from the registry: keep the results.
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            out = serde_json::to_string_pretty(&v["runs"][0]["results"]).unwrap();
        }
        insta::assert_snapshot!(format!("format_{format}"), format!("exit {}\n{out}", 1));
    }
    // --fail-on warning with only warnings: exit 1; default: exit 0.
    let (_tmp2, clean) = broken_fixture();
    std::fs::write(
        clean.join("services/tasks/config/default.toml"),
        "[server]\naddr = \"0.0.0.0:3001\"\n",
    )
    .unwrap();
    std::fs::write(
        clean.join("services/tasks/Dockerfile"),
        "FROM debian:12.8\nUSER app\n",
    )
    .unwrap();
    let o = arq(&clean, &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    std::fs::write(
        clean.join("arq.toml"),
        std::fs::read_to_string(clean.join("arq.toml")).unwrap()
            + "\n[check.severity]\ndocker-non-root-user = \"warning\"\n",
    )
    .unwrap();
    std::fs::write(
        clean.join("services/tasks/Dockerfile"),
        "FROM debian:12.8\n",
    )
    .unwrap();
    assert_eq!(arq(&clean, &["check"]).status.code(), Some(0));
    assert_eq!(
        arq(&clean, &["check", "--fail-on", "warning"])
            .status
            .code(),
        Some(1)
    );
}

/// Escapes the `]` in the SARIF schema's `language` patterns; returns how many it changed.
fn escape_stray_bracket(v: &mut serde_json::Value) -> usize {
    const BUGGY: &str = "^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$";
    match v {
        serde_json::Value::Object(m) => {
            let mut n = 0;
            for (k, v) in m.iter_mut() {
                if k == "pattern" && v == BUGGY {
                    *v = "^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}\\]?$".into();
                    n += 1;
                } else {
                    n += escape_stray_bracket(v);
                }
            }
            n
        }
        serde_json::Value::Array(a) => a.iter_mut().map(escape_stray_bracket).sum(),
        _ => 0,
    }
}

#[test]
fn sarif_has_the_required_structure() {
    let (_tmp, root) = broken_fixture();
    let o = arq(&root, &["check", "--format", "sarif"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // The official OASIS SARIF 2.1.0 schema (Schemata/sarif-schema-2.1.0.json of
    // oasis-tcs/sarif-spec), vendored so the test runs offline.
    let mut schema: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/sarif-schema-2.1.0.json")).unwrap();
    // The schema's `language` patterns have a stray `]` that ECMAScript reads as a literal and
    // Rust's regex refuses; escaping it keeps their meaning and lets the schema compile.
    assert_eq!(escape_stray_bracket(&mut schema), 2);
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "SARIF output violates the schema:\n{}",
        errors.join("\n")
    );
    // The validator is live: a level SARIF does not define is refused.
    let mut broken = v.clone();
    broken["runs"][0]["results"][0]["level"] = "fatal".into();
    assert!(!validator.is_valid(&broken));
    assert_eq!(v["version"], "2.1.0");
    assert!(v["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let run = &v["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert!(!run["tool"]["driver"]["name"].as_str().unwrap().is_empty());
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for r in rules {
        assert!(r["shortDescription"]["text"].is_string());
        if r["properties"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "security")
        {
            let s: f64 = r["properties"]["security-severity"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((0.0..=10.0).contains(&s));
        }
    }
    let results = run["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for r in results {
        let id = r["ruleId"].as_str().unwrap();
        let idx = usize::try_from(r["ruleIndex"].as_u64().unwrap()).unwrap();
        assert_eq!(ids[idx], id);
        assert!(["error", "warning", "note"].contains(&r["level"].as_str().unwrap()));
        assert!(r["message"]["text"].is_string());
        let loc = &r["locations"][0]["physicalLocation"];
        let uri = loc["artifactLocation"]["uri"].as_str().unwrap();
        assert!(!uri.starts_with('/') && !uri.contains('\\'), "{uri}");
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
        assert_eq!(
            r["partialFingerprints"]["arqFindingHash/v1"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
    }
    // The security rule that fired carries a security-severity.
    let alg = rules
        .iter()
        .find(|r| r["id"] == "auth-asymmetric-algorithm")
        .unwrap();
    assert_eq!(alg["properties"]["security-severity"], "8.1");
}

/// PITFALLS 69: broken inputs are reported and exit 2; findings exit 1; clean exits 0.
#[test]
fn pitfall_69_broken_inputs_exit_2() {
    // Bad YAML.
    let (_t, root) = broken_fixture();
    std::fs::create_dir_all(root.join("deploy/k8s")).unwrap();
    std::fs::write(root.join("deploy/k8s/x.yaml"), "kind: [broken\n").unwrap();
    let o = arq(&root, &["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("deploy/k8s/x.yaml:"), "{}", stdout(&o));
    assert!(stdout(&o).contains("kubernetes-parses"));
    // Bad TOML in arq.toml.
    let (_t, root) = broken_fixture();
    std::fs::write(root.join("arq.toml"), "[platform\nname = 1\n").unwrap();
    let o = arq(&root, &["check", "--format", "github"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).starts_with("::error file=arq.toml,line=1,title=manifest-valid::"),
        "{}",
        stdout(&o)
    );
    // Bad TOML in a config file.
    let (_t, root) = broken_fixture();
    std::fs::write(root.join("services/tasks/config/prod.toml"), "x = \n").unwrap();
    assert_eq!(arq(&root, &["check"]).status.code(), Some(2));
    // An unknown rule in a suppression.
    let (_t, root) = broken_fixture();
    std::fs::write(
        root.join("services/tasks/Dockerfile"),
        "# arq-check-ignore: docker-no-such reason: typo\nFROM debian:12.8\nUSER app\n",
    )
    .unwrap();
    std::fs::write(
        root.join("services/tasks/config/default.toml"),
        "[server]\naddr = \"0.0.0.0:3001\"\n",
    )
    .unwrap();
    let o = arq(&root, &["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("check-unknown-rule"));
    // Findings: 1. Fix the suppression: clean, 0.
    std::fs::write(
        root.join("services/tasks/Dockerfile"),
        "FROM debian:bookworm\nUSER app\n",
    )
    .unwrap();
    assert_eq!(arq(&root, &["check"]).status.code(), Some(1));
    std::fs::write(
        root.join("services/tasks/Dockerfile"),
        "FROM debian:12.8\nUSER app\n",
    )
    .unwrap();
    assert_eq!(arq(&root, &["check"]).status.code(), Some(0));
    // Usage errors: not a platform, unknown rule to --explain, --live without a URL.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(arq(empty.path(), &["check"]).status.code(), Some(2));
    assert_eq!(
        arq(&root, &["check", "--explain", "nope"]).status.code(),
        Some(2)
    );
    assert_eq!(arq(&root, &["check", "--live"]).status.code(), Some(2));
    assert_eq!(
        arq(&root, &["check", "--format", "xml"]).status.code(),
        Some(2)
    );
}

#[test]
fn list_rules_and_explain_come_from_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let o = arq(tmp.path(), &["check", "--list-rules"]);
    assert_eq!(o.status.code(), Some(0));
    let list = stdout(&o);
    for r in arq_cli::check::registry::all() {
        assert!(list.contains(r.id), "{}", r.id);
    }
    assert!(list.contains("policy-type-check"));
    insta::assert_snapshot!("list_rules", list);
    let o = arq(tmp.path(), &["check", "--explain", "migrations-rls-forced"]);
    assert_eq!(o.status.code(), Some(0));
    insta::assert_snapshot!("explain", stdout(&o));
}

#[test]
fn write_baseline_then_only_new_findings() {
    let (tmp, root) = broken_fixture();
    let base = tmp.path().join("base.json");
    let b = base.to_str().unwrap();
    let o = arq(&root, &["check", "--write-baseline", b]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("to the baseline"));
    assert_eq!(
        arq(&root, &["check", "--baseline", b]).status.code(),
        Some(0)
    );
    std::fs::write(root.join("services/tasks/Dockerfile"), "FROM debian:12.8\n").unwrap();
    let o = arq(&root, &["check", "--baseline", b, "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        brief(&stdout(&o)),
        "services/tasks/Dockerfile:1 docker-non-root-user\n"
    );
}
