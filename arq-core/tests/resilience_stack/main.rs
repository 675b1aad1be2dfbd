//! The composed stack (retry ⊃ breaker ⊃ bulkhead ⊃ timeout), timeouts and deadlines, the
//! per-dependency registry, errors as problems, and metrics.

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arq_core::IntoProblem;
use arq_core::metrics::MetricsRegistry;
use arq_core::resilience::{
    CircuitState, Deadline, Dependency, DependencyConfig, DependencyKind, HttpClassifier,
    ResilienceError, ResilienceMetrics, ResilienceRegistry, ResilienceSettings, Timeout,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn dep(name: &str, kind: DependencyKind) -> Dependency {
    Dependency::new(
        name,
        DependencyConfig::for_kind(kind),
        &ResilienceMetrics::unregistered(),
    )
    .unwrap()
}

#[test]
fn seed_defaults_per_kind() {
    let secs = |k| DependencyConfig::for_kind(k).timeout.as_secs();
    assert_eq!(secs(DependencyKind::Http), 30);
    assert_eq!(secs(DependencyKind::Database), 5);
    assert_eq!(secs(DependencyKind::External), 10);
    let c = DependencyConfig::for_kind(DependencyKind::Http);
    assert_eq!(c.breaker.failure_rate_threshold, 0.5);
    assert_eq!(c.breaker.half_open_probes, 2);
    assert_eq!(c.breaker.open_duration, Duration::from_secs(30));
    assert_eq!(c.retry.max_attempts, 3);
    assert_eq!(c.retry.backoff.cap, Duration::from_secs(30));
    assert_eq!(
        (c.bulkhead.max_concurrent, c.bulkhead.max_waiting),
        (20, 100)
    );
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_is_the_kinds_default() {
    let db = dep("db", DependencyKind::Database);
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let r = db
        .call(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::io::Error>(())
        })
        .await;
    let Err(ResilienceError::Timeout(t)) = r else {
        panic!("expected a timeout")
    };
    assert_eq!(t.after(), Duration::from_secs(5));
    assert!(!t.is_deadline());
    assert!(
        t.to_string().contains("`db` timed out after 5.000 s"),
        "{t}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "timeouts are retried");
    // Three 5 s attempts plus two backoff sleeps of at most 100 ms and 200 ms.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(15) && took <= Duration::from_millis(15_300),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_are_cut_by_the_overall_deadline_and_retries_respect_it() {
    let api = dep("geo", DependencyKind::External);
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let r = Deadline::after(Duration::from_secs(12))
        .scope(api.call(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::io::Error>(())
        }))
        .await;
    // Attempt 1 gets its full 10 s; attempt 2 only what is left of the 12 s.
    assert!(matches!(&r, Err(ResilienceError::Timeout(t)) if t.is_deadline()));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_secs(12));
}

#[tokio::test(start_paused = true)]
async fn nested_deadlines_keep_the_earlier() {
    let t = Timeout::new("x", Duration::from_secs(30));
    let budget = Deadline::after(Duration::from_secs(2))
        .scope(Deadline::after(Duration::from_secs(20)).scope(async { t.budget() }))
        .await;
    assert_eq!(budget, (Duration::from_secs(2), true));
    assert_eq!(t.budget(), (Duration::from_secs(30), false));
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_is_not_a_breaker_failure_and_is_not_retried() {
    let mut c = DependencyConfig::for_kind(DependencyKind::Database);
    c.bulkhead.max_concurrent = 1;
    c.bulkhead.max_waiting = 0;
    let d = Dependency::new("db", c, &ResilienceMetrics::unregistered()).unwrap();
    let slot = d.bulkhead().acquire().await.unwrap();
    let calls = AtomicU32::new(0);
    for _ in 0..50 {
        let r = d
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            })
            .await;
        assert!(matches!(r, Err(ResilienceError::BulkheadFull(_))));
    }
    drop(slot);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(d.breaker().state(), CircuitState::Closed);
    assert_eq!(d.breaker().snapshot().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_goes_through_the_breaker_and_an_opening_stops_the_retries() {
    let d = dep("users", DependencyKind::Http);
    let calls = AtomicU32::new(0);
    // 6 calls × 3 attempts = 18 failures; the 7th call's 2nd attempt is the 20th: opens.
    for _ in 0..7 {
        let _ = d
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(std::io::Error::other("down"))
            })
            .await;
    }
    assert_eq!(d.breaker().state(), CircuitState::Open);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        20,
        "the 3rd attempt met an open circuit"
    );
}

#[tokio::test(start_paused = true)]
async fn the_dependency_layer_is_the_same_stack_over_tower() {
    let d = dep("users", DependencyKind::Http);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(d.layer_with(HttpClassifier))
        .service(service_fn(move |_: http::Request<String>| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                Ok::<_, std::io::Error>(http::Response::builder().status(500).body(()).unwrap())
            }
        }));
    for _ in 0..7 {
        let mut svc = svc.clone();
        let _ = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::get("/u").body(String::new()).unwrap())
            .await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 20);
    assert_eq!(d.breaker().state(), CircuitState::Open);
    // 404s are answers, not failures: the breaker of another dependency stays closed.
    let d = dep("catalog", DependencyKind::Http);
    let mut svc = ServiceBuilder::new()
        .layer(d.layer_with(HttpClassifier))
        .service(service_fn(|_: http::Request<String>| async {
            Ok::<_, std::io::Error>(http::Response::builder().status(404).body(()).unwrap())
        }));
    for _ in 0..50 {
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::get("/p").body(String::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    assert_eq!(d.breaker().snapshot().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn the_registry_shares_one_stack_per_name_across_clones() {
    let registry = ResilienceRegistry::new(ResilienceMetrics::unregistered());
    let handler_a = registry.clone();
    let handler_b = registry.clone();
    let a = handler_a
        .dependency("db", DependencyKind::Database)
        .unwrap();
    a.breaker().force_open();
    let b = handler_b
        .dependency("db", DependencyKind::Database)
        .unwrap();
    assert_eq!(b.breaker().state(), CircuitState::ForcedOpen);
    assert_eq!(registry.names(), vec!["db".to_owned()]);
    assert!(registry.get("other").is_none());
}

#[test]
fn settings_override_the_kind_defaults_and_bad_ones_fail_at_start_up() {
    let settings: ResilienceSettings = serde_json::from_str(
        r#"{"dependencies": {
            "orders-db": {"kind": "database", "timeout_ms": 1500, "max_concurrent": 5},
            "stripe": {"kind": "external", "max_attempts": 2, "open_duration_ms": 60000}
        }}"#,
    )
    .unwrap();
    let registry =
        ResilienceRegistry::from_settings(&settings, ResilienceMetrics::unregistered()).unwrap();
    let db = registry.get("orders-db").unwrap();
    assert_eq!(db.config().timeout, Duration::from_millis(1500));
    assert_eq!(db.config().bulkhead.max_concurrent, 5);
    assert_eq!(db.config().bulkhead.max_waiting, 100);
    let stripe = registry.dependency("stripe", DependencyKind::Http).unwrap();
    assert_eq!(stripe.config().kind, DependencyKind::External);
    assert_eq!(stripe.config().retry.max_attempts, 2);
    assert_eq!(
        stripe.config().breaker.open_duration,
        Duration::from_secs(60)
    );

    let bad: ResilienceSettings =
        serde_json::from_str(r#"{"dependencies": {"db": {"failure_rate_threshold": 2.0}}}"#)
            .unwrap();
    let e = ResilienceRegistry::from_settings(&bad, ResilienceMetrics::unregistered()).unwrap_err();
    assert!(
        e.to_string().contains("`db`") && e.to_string().contains("failure_rate_threshold"),
        "{e}"
    );
    let unknown =
        serde_json::from_str::<ResilienceSettings>(r#"{"dependencies": {"db": {"timeout": 5}}}"#);
    assert!(unknown.is_err(), "unknown fields are refused");
}

#[tokio::test(start_paused = true)]
async fn errors_become_problems() {
    let d = dep("payments", DependencyKind::External);
    d.breaker().force_open();
    let e = d
        .call(|| async { Ok::<_, std::io::Error>(()) })
        .await
        .unwrap_err();
    let p = e.into_problem();
    assert_eq!(p.status(), 503);
    assert!(p.detail().unwrap().contains("payments"));

    let d = dep("payments2", DependencyKind::External);
    d.breaker().disable();
    let e = Deadline::after(Duration::from_millis(10))
        .scope(d.call(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, std::io::Error>(())
        }))
        .await
        .unwrap_err();
    assert_eq!(e.into_problem().status(), 504);

    let e: ResilienceError<std::io::Error> =
        ResilienceError::Inner(std::io::Error::other("secret connection string"));
    let p = e.into_problem();
    assert_eq!(p.status(), 502);
    assert!(!p.detail().unwrap().contains("secret"));
}

#[tokio::test(start_paused = true)]
async fn metrics_land_in_the_registry_under_one_name_each() {
    let registry = MetricsRegistry::new();
    let metrics = ResilienceMetrics::register(&registry).unwrap();
    assert!(
        ResilienceMetrics::register(&registry).is_err(),
        "registered once per registry"
    );
    let r = ResilienceRegistry::new(metrics);
    let d = r.dependency("db", DependencyKind::Database).unwrap();
    let _ = d
        .call(|| async { Err::<(), _>(std::io::Error::other("x")) })
        .await;
    let _ = d
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>(())
        })
        .await;
    let text = registry.encode();
    for needle in [
        r#"arq_circuit_breaker_state{dependency="db"} 0"#,
        r#"arq_circuit_breaker_calls_total{dependency="db",outcome="failure"} 6"#,
        r#"arq_retry_attempts_total{dependency="db",outcome="retry"} 4"#,
        r#"arq_timeouts_total{dependency="db"} 3"#,
        r#"arq_bulkhead_in_flight{dependency="db"} 0"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
