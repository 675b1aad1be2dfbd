//! ABAC policy engine: loading and checking (PITFALL 39), cost bounds (40), errors deny (41),
//! decisions, policy tests, hot reload, audit events and the axum guard.

#![allow(clippy::unwrap_used, clippy::result_large_err)] // test helpers

use std::sync::Arc;
use std::time::Duration;

use arq_auth::cel::Value;
use arq_auth::policy::{
    MapAttributes, NoAttributes, PolicyError, PolicyGuardLayer, PolicySet, PolicyStore,
    RbacVerdict, Reason, run_policy_tests, run_policy_tests_in,
};

mod support;
use support::policy::*;

#[test]
fn typical_policy_allows_and_denies_with_rule_ids() {
    let set = Arc::new(set(TYPICAL).unwrap());
    let res = attrs(&[("department", s("eng")), ("costCenter", s("cc5"))]);
    let req = attrs(&[("region", s("eu"))]);
    let d = set.decide(&user(), "write:project", &res, &req);
    assert!(d.allowed(), "{:?}", d.reason());
    assert_eq!(d.reason(), &Reason::AllowedByRule);
    assert_eq!(d.decided_by().collect::<Vec<_>>(), ["project-write"]);

    let other = attrs(&[("department", s("eng")), ("costCenter", s("cc9"))]);
    let d = set.decide(&user(), "write:project", &other, &req);
    assert!(!d.allowed());
    assert_eq!(d.reason(), &Reason::NoAllowRuleMatched);
    assert_eq!(d.decided_by().count(), 0);

    // An action no rule covers: default deny.
    let d = set.decide(&user(), "delete:project", &res, &req);
    assert!(!d.allowed());
}

#[test]
fn deny_overrides_allow_and_wildcards_match() {
    let rules = format!(
        "{TYPICAL}  - id: frozen\n    effect: deny\n    actions: [\"write:*\"]\n    condition: resource.archived\n"
    );
    let set = Arc::new(set(&rules).unwrap());
    let req = attrs(&[("region", s("eu"))]);
    let res = attrs(&[
        ("department", s("eng")),
        ("costCenter", s("cc1")),
        ("archived", Value::Bool(true)),
    ]);
    let d = set.decide(&user(), "write:project", &res, &req);
    assert!(!d.allowed());
    assert_eq!(d.reason(), &Reason::DeniedByRule);
    assert_eq!(d.decided_by().collect::<Vec<_>>(), ["frozen"]);
    // Wildcard on an action no rule names exactly.
    let d = set.decide(&user(), "write:invoice", &res, &req);
    assert_eq!(d.decided_by().collect::<Vec<_>>(), ["frozen"]);
}

#[test]
fn rbac_verdict_combines_in_one_decision() {
    let set = Arc::new(set(TYPICAL).unwrap());
    let res = attrs(&[("department", s("eng")), ("costCenter", s("cc5"))]);
    let req = attrs(&[("region", s("eu"))]);
    let d = set.decide_with_rbac(RbacVerdict::Refused, &user(), "write:project", &res, &req);
    assert!(!d.allowed());
    assert_eq!(d.reason(), &Reason::RbacRefused);
    let d = set.decide_with_rbac(RbacVerdict::Granted, &user(), "write:project", &res, &req);
    assert!(d.allowed());
}

fn rule_error(cond: &str) -> PolicyError {
    set(&format!(
        "  - id: r1\n    effect: allow\n    actions: [a]\n    condition: {cond}\n"
    ))
    .unwrap_err()
}

#[test]
fn undeclared_attribute_is_refused_with_rule_and_position() {
    // PITFALL 39.
    let e = rule_error("principal.department == resource.nope");
    let PolicyError::Rule {
        rule_id,
        line,
        column,
        message,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(rule_id, "r1");
    assert!(
        message.contains("undeclared attribute 'resource.nope'"),
        "{message}"
    );
    // Line of the condition in the file and the column of `resource.nope`.
    let text = format!("{SCHEMA}rules:\n");
    assert_eq!(*line, text.lines().count() + 4);
    assert_eq!(
        *column,
        "    condition: principal.department == resource".len() + 1,
        "{e}"
    );
    assert!(e.to_string().starts_with("test.yaml:"), "{e}");
}

#[test]
fn string_compared_to_int_is_refused() {
    let e = rule_error("principal.department == 5");
    assert!(
        matches!(&e, PolicyError::Rule { message, .. } if message.contains("no matching overload")),
        "{e}"
    );
    let e = rule_error("principal.clearance > 'high'");
    assert!(matches!(&e, PolicyError::Rule { .. }), "{e}");
}

#[test]
fn unknown_function_wrong_arity_and_non_bool_are_refused() {
    let e = rule_error("frobnicate(principal.role)");
    assert!(
        matches!(&e, PolicyError::Rule { message, .. } if message.contains("undeclared reference to 'frobnicate'")),
        "{e}"
    );
    let e = rule_error("principal.role.startsWith('a', 'b')");
    assert!(
        matches!(&e, PolicyError::Rule { message, .. } if message.contains("startsWith")),
        "{e}"
    );
    let e = rule_error("principal.clearance + 1");
    assert!(
        matches!(&e, PolicyError::Rule { message, .. } if message.contains("must be bool")),
        "{e}"
    );
    let e = rule_error("principal.role ==");
    assert!(matches!(&e, PolicyError::Rule { .. }), "{e}");
}

#[test]
fn block_scalar_conditions_locate_errors_on_their_own_line() {
    let text = format!(
        "{SCHEMA}rules:\n  - id: multi\n    effect: allow\n    actions: [a]\n    condition: |\n      principal.role == 'x' &&\n        resource.missing\n"
    );
    let e = PolicySet::from_yaml("t.yaml", &text).unwrap_err();
    let PolicyError::Rule { line, column, .. } = e else {
        panic!("{e:?}")
    };
    let expected_line = text
        .lines()
        .position(|l| l.contains("resource.missing"))
        .unwrap()
        + 1;
    assert_eq!(line, expected_line);
    assert_eq!(column, "        resource".len() + 1);
}

#[test]
fn malformed_files_are_refused_with_a_position() {
    for bad in [
        "rules: [",
        "rules:\n  - id: x\n    effect: maybe\n    actions: [a]\n    condition: 'true'\n",
        "schema:\n  principal:\n    tags: list(string)\nrules: []\n",
        "schema:\n  principal:\n    tags: number\nrules: []\n",
        "unknown_key: 1\n",
    ] {
        let e = PolicySet::from_yaml("bad.yaml", bad).unwrap_err();
        assert!(
            matches!(e, PolicyError::Syntax { .. } | PolicyError::Schema { .. }),
            "{bad}: {e}"
        );
    }
    let dup = format!("{TYPICAL}{TYPICAL}");
    assert!(
        matches!(set(&dup), Err(PolicyError::Rule { message, .. }) if message.contains("duplicate"))
    );
}

#[test]
fn nested_comprehension_bomb_is_refused_at_load() {
    // PITFALL 40: a few hundred bytes that would take seconds to evaluate.
    let range = format!(
        "[{}]",
        (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let cond = format!(
        "{range}.all(a, {range}.all(b, {range}.all(c, {range}.all(d, a + b + c + d >= 0))))"
    );
    assert!(cond.len() < 1000);
    let e = rule_error(&format!("\"{cond}\""));
    assert!(
        matches!(e, PolicyError::Cost { estimate, limit, .. } if estimate > limit),
        "{e}"
    );
    // Over the declared bound of an attribute list too.
    let e = rule_error(
        "principal.tags.all(a, principal.tags.all(b, principal.tags.all(c, a + b + c != '')))",
    );
    assert!(matches!(e, PolicyError::Cost { .. }), "{e}");
}

#[test]
fn runtime_budget_stops_what_the_estimate_lets_through() {
    // The list grows inside the loop, so the static estimate is low; the runtime budget stops it.
    let text = format!(
        "{SCHEMA}limits: {{ max_cost: 100000000, runtime_budget: 20000 }}\nrules:\n  - id: grow\n    effect: allow\n    actions: [a]\n    condition: \"principal.tags.map(x, [1,2,3,4,5,6,7,8,9,10].map(y, [1,2,3,4,5,6,7,8,9,10].map(z, [1,2,3,4,5,6,7,8,9,10].map(w, w)))).size() > 0\"\n"
    );
    let set = Arc::new(PolicySet::from_yaml("t.yaml", &text).unwrap());
    let tags: Vec<&str> = (0..100).map(|_| "t").collect();
    let p = attrs(&[("tags", list(&tags))]);
    let start = std::time::Instant::now();
    let d = set.decide(&p, "a", &NoAttributes, &NoAttributes);
    let took = start.elapsed();
    assert!(!d.allowed());
    assert!(
        matches!(d.reason(), Reason::EvaluationError(e) if e.message().contains("cost budget")),
        "{:?}",
        d.reason()
    );
    eprintln!("stopped after {took:?} (debug build)");
}

#[test]
fn evaluation_errors_deny() {
    // PITFALL 41: missing attribute, overflow, run-time type error, list over its bound.
    let rules = "  - id: maybe\n    effect: allow\n    actions: [a]\n    condition: principal.clearance + 9223372036854775807 > 0 || principal.role == 'admin'\n  - id: list\n    effect: allow\n    actions: [b]\n    condition: resource.costCenter in principal.costCenters\n";
    let set = Arc::new(set(rules).unwrap());
    // Missing attribute: the role alone does not rescue an error? `||` absorbs an error when the
    // other side is true, as CEL specifies.
    let p = attrs(&[("role", s("admin"))]);
    assert!(set.decide(&p, "a", &NoAttributes, &NoAttributes).allowed());
    let p = attrs(&[("role", s("user"))]);
    let d = set.decide(&p, "a", &NoAttributes, &NoAttributes);
    assert!(!d.allowed());
    assert!(matches!(d.reason(), Reason::EvaluationError(_)));
    assert_eq!(d.decided_by().collect::<Vec<_>>(), ["maybe"]);
    // Overflow.
    let p = attrs(&[("role", s("user")), ("clearance", Value::Int(1))]);
    let d = set.decide(&p, "a", &NoAttributes, &NoAttributes);
    assert!(
        matches!(d.reason(), Reason::EvaluationError(e) if e.message().contains("overflow")),
        "{:?}",
        d.reason()
    );
    // A bad type at run time (the source lies about its schema).
    let p = attrs(&[("role", Value::Int(3))]);
    assert!(!set.decide(&p, "a", &NoAttributes, &NoAttributes).allowed());
    // A list over its declared max_size.
    let many: Vec<String> = (0..9).map(|i| format!("cc{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let p = attrs(&[("costCenters", list(&refs))]);
    let r = attrs(&[("costCenter", s("cc1"))]);
    let d = set.decide(&p, "b", &r, &NoAttributes);
    assert!(
        matches!(d.reason(), Reason::EvaluationError(e) if e.message().contains("at most 8")),
        "{:?}",
        d.reason()
    );
}

#[test]
fn deep_nesting_and_huge_literals_are_refused_cleanly() {
    let deep = format!("{}true{}", "(".repeat(5000), ")".repeat(5000));
    let e = rule_error(&format!("\"{deep}\""));
    assert!(
        matches!(&e, PolicyError::Rule { message, .. } if message.contains("nests deeper")),
        "{e}"
    );
    let chain = format!("\"{}true\"", "true && ".repeat(20_000));
    let e = rule_error(&chain);
    assert!(matches!(&e, PolicyError::Rule { .. }), "{e}");
    let huge = format!("\"principal.role == '{}'\"", "x".repeat(200_000));
    let e = rule_error(&huge);
    assert!(
        matches!(&e, PolicyError::Rule { message, .. } if message.contains("limit")),
        "{e}"
    );
    let big_int = rule_error("principal.clearance == 99999999999999999999999");
    assert!(
        matches!(&big_int, PolicyError::Rule { message, .. } if message.contains("out of range")),
        "{big_int}"
    );
}

#[test]
fn policy_test_files_run_through_the_library() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
    let report = run_policy_tests_in(&dir).unwrap();
    assert_eq!(report.total, 4);
    assert!(report.is_success(), "{:?}", report.failures);

    // A wrong expectation is reported with the reason.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("t.yaml"),
        "tests:\n  - name: wrong\n    action: write:project\n    principal: { role: member }\n    expect: allow\n",
    )
    .unwrap();
    let set = Arc::new(PolicySet::from_file(dir.join("abac.yaml")).unwrap());
    let report = run_policy_tests(&set, tmp.path()).unwrap();
    assert_eq!(report.total, 1);
    assert_eq!(report.failures.len(), 1);
    assert!(
        report.failures[0]
            .message
            .contains("expected Allow, got Deny"),
        "{:?}",
        report.failures
    );
}

const GOOD: &str = "schema:\n  principal: { role: string }\nrules:\n  - id: admins\n    effect: allow\n    actions: [a]\n    condition: principal.role == 'admin'\n";
const GOOD2: &str = "schema:\n  principal: { role: string }\nrules:\n  - id: users\n    effect: allow\n    actions: [a]\n    condition: principal.role == 'user'\n";

#[test]
fn hot_reload_swaps_good_files_and_keeps_the_old_set_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let store = PolicyStore::open(&path).unwrap();
    let admin = attrs(&[("role", s("admin"))]);
    let user = attrs(&[("role", s("user"))]);
    assert!(store.authorize(&admin, "a", &NoAttributes).allowed());

    std::fs::write(&path, GOOD.replace("principal.role", "principal.nope")).unwrap();
    let e = store.reload().unwrap_err();
    assert!(e.to_string().contains("rule 'admins'"), "{e}");
    assert_eq!(store.last_error(), Some(e));
    assert!(
        store.authorize(&admin, "a", &NoAttributes).allowed(),
        "old set keeps serving"
    );

    std::fs::write(&path, GOOD2).unwrap();
    store.reload().unwrap();
    assert!(store.last_error().is_none());
    assert!(!store.authorize(&admin, "a", &NoAttributes).allowed());
    assert!(store.authorize(&user, "a", &NoAttributes).allowed());
}

#[test]
fn concurrent_decisions_during_reloads_see_a_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let store = PolicyStore::open(&path).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Per-reader progress, so the reloads keep going until every reader has decided while they
    // happen: on a busy machine a reader thread may not be scheduled before 20 reloads finish.
    let progress: Arc<Vec<std::sync::atomic::AtomicUsize>> = Arc::new(
        (0..4)
            .map(|_| std::sync::atomic::AtomicUsize::new(0))
            .collect(),
    );
    let readers: Vec<_> = (0..4)
        .map(|id| {
            let store = store.clone();
            let stop = stop.clone();
            let progress = progress.clone();
            std::thread::spawn(move || {
                let admin = attrs(&[("role", s("admin"))]);
                let user = attrs(&[("role", s("user"))]);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let set = store.current();
                    let a = set
                        .decide(&admin, "a", &NoAttributes, &NoAttributes)
                        .allowed();
                    let u = set
                        .decide(&user, "a", &NoAttributes, &NoAttributes)
                        .allowed();
                    assert!(a != u, "exactly one of the two sets' rules applies");
                    n += 1;
                    progress[id].store(n, std::sync::atomic::Ordering::Relaxed);
                }
                n
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut i = 0;
    while i < 20
        || progress
            .iter()
            .any(|p| p.load(std::sync::atomic::Ordering::Relaxed) < 2)
    {
        std::fs::write(&path, if i % 2 == 0 { GOOD2 } else { GOOD }).unwrap();
        store.reload().unwrap();
        i += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "reader threads made no progress in 60 s"
        );
        std::thread::yield_now();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

#[tokio::test(start_paused = true)]
async fn watcher_reloads_a_changed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let store = PolicyStore::open(&path).unwrap();
    let watcher = store.watch(Duration::from_secs(5));
    // Make the modification time differ even on coarse-grained file systems.
    std::fs::write(&path, GOOD2).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    drop(f);
    tokio::time::sleep(Duration::from_secs(6)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let user = attrs(&[("role", s("user"))]);
    assert!(store.authorize(&user, "a", &NoAttributes).allowed());
    watcher.abort();
}

#[tokio::test]
async fn axum_guard_answers_401_403_or_runs_the_handler() {
    use axum::{Router, body::Body, routing::get};
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    let set = PolicySet::from_yaml("p.yaml", GOOD).unwrap();
    let store = PolicyStore::from_set("p.yaml", set);
    let guard =
        PolicyGuardLayer::<MapAttributes, _>::new(store, "a", |_: &http::request::Parts| {
            Ok::<_, arq_core::Problem>(NoAttributes)
        });
    let app: Router = Router::new()
        .route("/doc", get(|| async { "doc" }))
        .layer(guard);

    let anon = app
        .clone()
        .oneshot(Request::get("/doc").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);

    let mut req = Request::get("/doc").body(Body::empty()).unwrap();
    req.extensions_mut().insert(attrs(&[("role", s("user"))]));
    let denied = app.clone().oneshot(req).await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let body = http_body_util::BodyExt::collect(denied.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("decision_id"));

    let mut req = Request::get("/doc").body(Body::empty()).unwrap();
    req.extensions_mut().insert(attrs(&[("role", s("admin"))]));
    let ok = app.oneshot(req).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}
