//! The `arq` binary end to end: generation, re-runs, dry runs, edits, bad names, exit codes.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn arq(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = arq(cwd, args);
    assert!(
        out.status.success(),
        "arq {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(cwd: &Path, args: &[&str]) -> String {
    let out = arq(cwd, args);
    assert_eq!(out.status.code(), Some(2), "arq {args:?} should exit 2");
    String::from_utf8(out.stderr).unwrap()
}

/// Every file under `dir` with its content, for before/after comparisons and snapshots.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// The worker the tests generate: two queues, so every per-queue loop renders twice.
const WORKER: &[&str] = &[
    "new",
    "service",
    "mailer",
    "--kind",
    "worker",
    "--queue",
    "email.send",
    "--queue",
    "email.bounce",
];

fn platform() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    ok(tmp.path(), &["init", "acme", "--arq-version", "0.1.0"]);
    let root = tmp.path().join("acme");
    (tmp, root)
}

#[test]
fn generated_files_snapshot() {
    let (_tmp, root) = platform();
    ok(&root, &["new", "service", "tasks"]);
    ok(
        &root,
        &[
            "new", "service", "billing", "--no-db", "--route", "/billing",
        ],
    );
    ok(&root, WORKER);
    for (path, content) in tree(&root) {
        let name = path.to_string_lossy().replace(['/', '.'], "_");
        insta::assert_snapshot!(name, content);
    }
}

#[test]
fn wiring_edits_keep_user_content() {
    let (_tmp, root) = platform();
    let manifest = root.join("arq.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("\n# my own note\n");
    std::fs::write(&manifest, text).unwrap();
    let cargo = root.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&cargo).unwrap();
    text.push_str("\n[workspace.dependencies]\nserde = \"1\"\n");
    std::fs::write(&cargo, text).unwrap();

    ok(&root, &["new", "service", "tasks"]);
    ok(
        &root,
        &["new", "service", "billing", "--route", "/bills", "--no-db"],
    );

    let manifest = std::fs::read_to_string(&manifest).unwrap();
    assert!(manifest.contains("# my own note"));
    assert!(
        manifest.contains("[services.tasks]\nkind = \"http\"\nport = 3001\nroute = \"/tasks\"")
    );
    assert!(manifest.contains(
        "[services.billing]\nkind = \"http\"\nport = 3002\nroute = \"/bills\"\ndatabase = false"
    ));
    let cargo = std::fs::read_to_string(&cargo).unwrap();
    assert!(cargo.contains("serde = \"1\""));
    assert!(cargo.contains("\"services/billing\""));
    assert!(cargo.find("services/billing").unwrap() < cargo.find("services/tasks").unwrap());
    let compose = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    assert!(compose.contains("  billing:\n") && compose.contains("  tasks:\n"));
}

#[test]
fn rerunning_changes_nothing() {
    let (_tmp, root) = platform();
    ok(&root, &["new", "service", "tasks"]);
    let before = tree(&root);
    let out = ok(&root, &["new", "service", "tasks"]);
    assert!(out.contains("up to date"), "{out}");
    let out = ok(&root, &["init", "."]);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(before, tree(&root));
}

#[test]
fn dry_run_writes_nothing_and_prints_a_diff() {
    let (_tmp, root) = platform();
    let before = tree(&root);
    let out = ok(&root, &["new", "service", "tasks", "--dry-run"]);
    assert_eq!(before, tree(&root));
    assert!(out.contains("+++ b/services/tasks/src/main.rs"), "{out}");
    assert!(out.contains("--- a/arq.toml"), "{out}");
    assert!(out.contains("+[services.tasks]"), "{out}");
    assert!(out.contains("nothing written"), "{out}");
}

#[test]
fn edited_files_are_never_overwritten_silently() {
    let (_tmp, root) = platform();
    ok(&root, &["new", "service", "tasks"]);
    let compose = root.join("compose.yaml");
    std::fs::write(&compose, "# mine\n").unwrap();
    let before = tree(&root);
    let err = fails(&root, &["new", "service", "billing"]);
    assert!(
        err.contains("compose.yaml") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        before,
        tree(&root),
        "nothing may be written when a conflict is found"
    );
    ok(&root, &["new", "service", "billing", "--force"]);
    assert!(
        std::fs::read_to_string(&compose)
            .unwrap()
            .contains("billing")
    );
}

#[test]
fn bad_names_are_refused_and_nothing_is_written() {
    let (_tmp, root) = platform();
    let before = tree(&root);
    for (name, needle) in [
        ("../x", "looks like a path"),
        ("Tasks", "lowercase"),
        ("gateway", "reserved"),
        ("match", "Rust keyword"),
        ("", "empty"),
        ("a b", "contains ' '"),
    ] {
        let err = fails(&root, &["new", "service", name]);
        assert!(err.contains(needle), "{name:?}: {err}");
    }
    assert_eq!(before, tree(&root));
}

#[test]
fn existing_directories_and_conflicting_settings_are_refused() {
    let (_tmp, root) = platform();
    std::fs::create_dir_all(root.join("services/tasks")).unwrap();
    let err = fails(&root, &["new", "service", "tasks"]);
    assert!(
        err.contains("already exists but is not in arq.toml"),
        "{err}"
    );
    std::fs::remove_dir_all(root.join("services/tasks")).unwrap();
    ok(&root, &["new", "service", "tasks"]);
    let err = fails(&root, &["new", "service", "tasks", "--port", "3999"]);
    assert!(err.contains("other settings"), "{err}");
    let err = fails(&root, &["new", "service", "other", "--route", "/tasks/sub"]);
    assert!(err.contains("overlap"), "{err}");
    let err = fails(&root, &["new", "service", "other", "--route", "tasks"]);
    assert!(err.contains("route prefix"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("full")).unwrap();
    std::fs::write(tmp.path().join("full/file"), "x").unwrap();
    let err = fails(tmp.path(), &["init", "full"]);
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn broken_manifest_is_reported_with_its_location() {
    let (_tmp, root) = platform();
    std::fs::write(root.join("arq.toml"), "[platform\n").unwrap();
    let err = fails(&root, &["new", "service", "tasks"]);
    assert!(err.contains("arq.toml") && err.contains("line 1"), "{err}");
}

#[test]
fn standalone_service_outside_a_platform() {
    let tmp = tempfile::tempdir().unwrap();
    ok(
        tmp.path(),
        &["new", "service", "solo", "--arq-version", "0.1.0"],
    );
    let cargo = std::fs::read_to_string(tmp.path().join("solo/Cargo.toml")).unwrap();
    assert!(
        cargo.contains("[workspace]"),
        "a standalone service is its own workspace"
    );
    let out = ok(
        tmp.path(),
        &["new", "service", "solo", "--arq-version", "0.1.0"],
    );
    assert!(out.contains("up to date"), "{out}");
}

#[test]
fn generated_rust_is_rustfmt_clean_even_with_long_names() {
    let (_tmp, root) = platform();
    let long = "a-very-long-service-name-of-forty-chars1";
    assert_eq!(long.len(), 40);
    ok(&root, &["new", "service", long]);
    ok(&root, &["new", "service", "t"]);
    let long_worker = "a-very-long-worker-name-of-forty-chars-1";
    assert_eq!(long_worker.len(), 40);
    let long_queue = "a.very.long.queue.name.that.makes.the.generated.code.wrap.it";
    assert_eq!(long_queue.len(), 60);
    ok(
        &root,
        &[
            "new",
            "service",
            long_worker,
            "--kind",
            "worker",
            "--queue",
            long_queue,
            "--queue",
            "q",
            // Either side of the widths where rustfmt breaks a handler's registration (40)
            // and signature (46).
            "--queue",
            "abcdefghij.klmnopqr",
            "--queue",
            "abcdefghij.klmnopqrs",
            "--queue",
            "abcdefghijk.lmnopqrstu",
            "--queue",
            "abcdefghijk.lmnopqrstuv",
        ],
    );
    ok(&root, &["new", "service", "w", "--kind", "worker"]);
    let files: Vec<PathBuf> = tree(&root)
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| root.join(p))
        .collect();
    assert!(files.len() >= 6);
    let out = Command::new("rustfmt")
        .args(["--check", "--edition", "2024"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generated code is not rustfmt-clean:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn help_has_examples_and_completions_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(tmp.path(), &["new", "service", "--help"]);
    assert!(out.contains("Examples:") && out.contains("--dry-run"));
    let out = ok(tmp.path(), &["completions", "bash"]);
    assert!(out.contains("_arq()"));
    let out = arq(tmp.path(), &["bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn template_overrides_are_used_and_reported() {
    let (_tmp, root) = platform();
    let custom = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(custom.path().join("service")).unwrap();
    std::fs::write(
        custom.path().join("service/README.md.j2"),
        "# custom {{ service.name }}\n",
    )
    .unwrap();
    let dir = custom.path().to_str().unwrap();
    let out = ok(&root, &["new", "service", "tasks", "--templates", dir]);
    assert!(out.contains("template service/README.md.j2 from"), "{out}");
    assert_eq!(
        std::fs::read_to_string(root.join("services/tasks/README.md")).unwrap(),
        "# custom tasks\n"
    );
}

#[test]
fn kustomizations_are_wired_as_documents_and_unexpected_ones_refused() {
    let (_tmp, root) = platform();
    ok(&root, &["new", "service", "tasks"]);
    let base = root.join("deploy/k8s/base/kustomization.yaml");
    let mut text = std::fs::read_to_string(&base).unwrap();
    assert!(text.contains("resources:\n- gateway\n- tasks\n"), "{text}");
    // A user's own resource survives the next service's wiring.
    text = text.replace("- tasks\n", "- tasks\n- extra.yaml\n");
    std::fs::write(&base, &text).unwrap();
    ok(&root, &["new", "service", "billing", "--no-db"]);
    let text = std::fs::read_to_string(&base).unwrap();
    assert!(
        text.contains("- tasks\n- extra.yaml\n- billing\n"),
        "{text}"
    );
    let dev =
        std::fs::read_to_string(root.join("deploy/k8s/overlays/dev/kustomization.yaml")).unwrap();
    assert!(
        dev.contains("- name: gateway\n  count: 1\n")
            && dev.contains("- name: billing\n  count: 1\n"),
        "{dev}"
    );
    let prod =
        std::fs::read_to_string(root.join("deploy/k8s/overlays/prod/kustomization.yaml")).unwrap();
    assert!(
        prod.contains("- gateway-hpa.yaml\n") && prod.contains("- billing-hpa.yaml\n"),
        "{prod}"
    );

    // A document without the list arq edits is an error, and nothing is written.
    let staging = root.join("deploy/k8s/overlays/staging/kustomization.yaml");
    std::fs::write(
        &staging,
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n",
    )
    .unwrap();
    let before = tree(&root);
    let err = fails(&root, &["new", "service", "mail", "--no-db"]);
    assert!(
        err.contains("overlays/staging/kustomization.yaml") && err.contains("`replicas:`"),
        "{err}"
    );
    assert_eq!(before, tree(&root));
    std::fs::write(&staging, "- not a kustomization\n").unwrap();
    let err = fails(&root, &["new", "service", "mail", "--no-db"]);
    assert!(err.contains("kind: Kustomization"), "{err}");
}

/// A tool from PATH or pip's user directory, if installed.
fn tool(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    // PyPI's kubernetes-validate bundles the OpenAPI schemas of each Kubernetes release and
    // runs offline: `pip install kubernetes-validate`. scripts/check-generated requires it.
    let Some(validate) = tool("kubernetes-validate") else {
        eprintln!(
            "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate); scripts/check-generated runs this validation"
        );
        return;
    };
    let (_tmp, root) = platform();
    ok(&root, &["new", "service", "tasks"]);
    ok(&root, &["new", "service", "billing", "--no-db"]);
    ok(&root, WORKER);
    let manifests: Vec<PathBuf> = tree(&root)
        .into_keys()
        .filter(|p| p.starts_with("deploy/k8s") && !p.ends_with("kustomization.yaml"))
        .map(|p| root.join(p))
        .collect();
    // Seven resources each for the gateway, the two services and the worker.
    assert_eq!(manifests.len(), 28, "{manifests:?}");
    let out = Command::new(validate)
        .args(["--strict", "--quiet"])
        .args(&manifests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generated manifests do not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool() {
    // Debian's prometheus package ships promtool; scripts/check-generated requires it.
    let Some(promtool) = tool("promtool") else {
        eprintln!(
            "SKIPPED: promtool is not installed (apt-get install prometheus); scripts/check-generated runs this check"
        );
        return;
    };
    let (_tmp, root) = platform();
    ok(&root, &["new", "service", "tasks"]);
    ok(&root, WORKER);
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(root.join("deploy/monitoring/alerts.rules.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool rejects the alert rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/monitoring/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["panels"].as_array().unwrap().len(), 6);
}

#[test]
fn a_worker_is_wired_everywhere_but_the_gateway() {
    let (_tmp, root) = platform();
    ok(&root, &["new", "service", "tasks"]);
    let before = tree(&root);
    let out = ok(&root, &[WORKER, &["--dry-run"]].concat());
    assert_eq!(before, tree(&root), "--dry-run writes nothing");
    assert!(
        out.contains("+++ b/services/mailer/src/handlers.rs"),
        "{out}"
    );
    assert!(out.contains("+[queues.\"email.send\"]"), "{out}");
    let out = ok(&root, WORKER);
    assert!(
        out.contains(
            "worker mailer in services/mailer (port 3002, queues email.send, email.bounce)"
        ),
        "{out}"
    );

    let manifest = std::fs::read_to_string(root.join("arq.toml")).unwrap();
    assert!(
        manifest.contains(
            "[services.mailer]\nkind = \"worker\"\nport = 3002\ndatabase = false\nqueues = [\"email.send\", \"email.bounce\"]\n"
        ),
        "{manifest}"
    );
    for q in ["email.send", "email.bounce"] {
        let declared = format!("[queues.\"{q}\"]\ndead_letter = \"{q}.dead\"\nprefetch = 10\n");
        assert!(manifest.contains(&declared), "{manifest}");
    }
    let files = tree(&root);
    let file = |p: &str| {
        files
            .get(Path::new(p))
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    // No routes, no database: no OpenAPI document, migrations, policies or items.
    let generated: Vec<&Path> = files
        .keys()
        .filter(|p| p.starts_with("services/mailer"))
        .map(PathBuf::as_path)
        .collect();
    assert_eq!(
        generated,
        [
            "services/mailer/Cargo.toml",
            "services/mailer/Dockerfile",
            "services/mailer/README.md",
            "services/mailer/config/default.toml",
            "services/mailer/src/handlers.rs",
            "services/mailer/src/lib.rs",
            "services/mailer/src/main.rs",
            "services/mailer/tests/worker.rs",
        ]
        .map(Path::new)
    );
    assert!(file("Cargo.toml").contains("\"services/mailer\""));
    let compose = file("compose.yaml");
    let gateway = &compose[compose.find("  gateway:").unwrap()..compose.find("  mailer:").unwrap()];
    assert!(
        !gateway.contains("- mailer"),
        "the gateway does not route to a worker:\n{gateway}"
    );
    let mailer = &compose[compose.find("  mailer:").unwrap()..];
    assert!(
        mailer.contains("ARQ__QUEUE__URL: amqp://guest:guest@rabbitmq:5672/%2f"),
        "{mailer}"
    );
    assert!(
        mailer.contains("rabbitmq:\n        condition: service_healthy"),
        "{mailer}"
    );
    assert!(!compose.contains("mailer-migrate"), "{compose}");
    let deployment = file("deploy/k8s/base/mailer/deployment.yaml");
    assert!(!deployment.contains("initContainers"), "{deployment}");
    assert!(deployment.contains("name: ARQ__QUEUE__URL"), "{deployment}");
    let policy = file("deploy/k8s/base/mailer/networkpolicy.yaml");
    assert!(
        policy.contains("app.kubernetes.io/name: prometheus") && !policy.contains("name: gateway")
    );
    assert!(
        policy.contains("port: 5672") && !policy.contains("port: 5432"),
        "{policy}"
    );
    assert!(file("deploy/k8s/overlays/prod/kustomization.yaml").contains("- mailer-hpa.yaml"));
    assert!(file(".github/workflows/ci.yml").contains("ARQ_TEST_AMQP_URL"));
    let alerts = file("deploy/monitoring/alerts.rules.yml");
    assert!(alerts.contains("alert: MailerDeadLetters") && !alerts.contains("MailerHighLatency"));

    let out = ok(&root, WORKER);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(files, tree(&root), "re-running changes nothing");
}

#[test]
fn worker_options_are_checked_and_nothing_is_written() {
    let (_tmp, root) = platform();
    let before = tree(&root);
    fn worker<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        [&["new", "service", "mailer", "--kind", "worker"], extra].concat()
    }
    for (args, needle) in [
        (worker(&["--route", "/mail"]), "a worker has no route"),
        (worker(&["--queue", "email.*"]), "contains '*'"),
        (worker(&["--queue", "Email"]), "contains 'E'"),
        (worker(&["--queue", "type"]), "Rust keyword"),
        (worker(&["--queue", "job"]), "`Job`"),
        (worker(&["--queue", "a.b", "--queue", "a.b"]), "given twice"),
        (
            worker(&["--queue", "a.b", "--queue", "a-b"]),
            "both name their handler `a_b`",
        ),
        (
            vec!["new", "service", "tasks", "--queue", "email.send"],
            "add --kind worker",
        ),
    ] {
        let err = fails(&root, &args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(before, tree(&root));
    // The default queue, and a re-run with other queues is refused.
    ok(&root, &["new", "service", "mailer", "--kind", "worker"]);
    let manifest = std::fs::read_to_string(root.join("arq.toml")).unwrap();
    assert!(
        manifest.contains("queues = [\"mailer.jobs\"]"),
        "{manifest}"
    );
    let err = fails(&root, &worker(&["--queue", "email.send"]));
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn standalone_worker_outside_a_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [WORKER, &["--arq-version", "0.1.0"]].concat();
    let out = ok(tmp.path(), &args);
    assert!(out.contains("standalone worker mailer"), "{out}");
    let files = tree(&tmp.path().join("mailer"));
    assert!(!files.keys().any(|p| p.starts_with("deploy")));
    for file in ["Cargo.toml", "Dockerfile", "config/default.toml"] {
        let name = format!("standalone_worker_{}", file.replace(['/', '.'], "_"));
        insta::assert_snapshot!(name, files[Path::new(file)]);
    }
    let out = ok(tmp.path(), &args);
    assert!(out.contains("up to date"), "{out}");
}

/// A relative `--arq-path` stays relative (to `arq.toml`'s directory, then to each crate's), so a
/// platform committed next to the checkout builds wherever the checkout is cloned.
#[test]
fn relative_arq_path_is_kept_relative_to_each_crate() {
    let tmp = tempfile::tempdir().unwrap();
    let checkout = tmp.path().join("checkout");
    std::fs::create_dir_all(checkout.join("arq-core")).unwrap();
    std::fs::write(checkout.join("arq-core/Cargo.toml"), "").unwrap();
    ok(&checkout, &["init", "examples/acme", "--arq-path", "."]);
    let root = checkout.join("examples/acme");
    ok(&root, &["new", "service", "tasks"]);
    let manifest = std::fs::read_to_string(root.join("arq.toml")).unwrap();
    assert!(manifest.contains("path = \"../..\""), "{manifest}");
    let gateway = std::fs::read_to_string(root.join("gateway/Cargo.toml")).unwrap();
    assert!(
        gateway.contains("path = \"../../../arq-core\""),
        "{gateway}"
    );
    let service = std::fs::read_to_string(root.join("services/tasks/Cargo.toml")).unwrap();
    assert!(
        service.contains("path = \"../../../../arq-tenancy\""),
        "{service}"
    );

    // Standalone: relative to the new crate's own directory.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    ok(
        &elsewhere,
        &["new", "service", "solo", "--arq-path", "../checkout"],
    );
    let solo = std::fs::read_to_string(elsewhere.join("solo/Cargo.toml")).unwrap();
    assert!(
        solo.contains("path = \"../../checkout/arq-core\""),
        "{solo}"
    );
}
