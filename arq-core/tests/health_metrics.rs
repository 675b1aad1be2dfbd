//! `/health/*` against the real PostgreSQL, Redis and RabbitMQ, and `/metrics` checked by a real
//! OpenMetrics parser (Python's `prometheus_client`, `pip install prometheus_client`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use arq_core::config::{ArqConfig, ConfigLoader, Secret};
use arq_core::edge::EdgeStack;
use arq_core::health::{AmqpCheck, FnCheck, Health, PostgresCheck, RedisCheck};
use arq_core::metrics::MetricsRegistry;
use arq_core::server::with_operational_routes;
use arq_core::testing::{TestService, require};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn config() -> ArqConfig {
    ArqConfig::load_from(
        &ConfigLoader::new("/nonexistent")
            .environment("test")
            .vars(Vec::<(String, String)>::new()),
    )
    .unwrap()
    .0
}

async fn get_json(router: &Router, uri: &str) -> (StatusCode, serde_json::Value) {
    let r = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn readiness_checks_the_real_dependencies() {
    let health = Health::new(Duration::from_secs(2))
        .with_check(PostgresCheck::new(Secret::new(require(
            TestService::Postgres,
        ))))
        .with_check(RedisCheck::new(Secret::new(require(TestService::Redis))))
        .with_check(AmqpCheck::new(Secret::new(require(TestService::RabbitMq))));
    let router = health.router();
    let (status, v) = get_json(&router, "/health/live").await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("pass"))
    );
    let (status, v) = get_json(&router, "/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    for name in ["postgres", "redis", "rabbitmq"] {
        assert_eq!(v["checks"][name]["status"], "pass", "{v}");
    }
    health.set_shutting_down();
    let (status, v) = get_json(&router, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["shutting_down"], true);
}

#[tokio::test]
async fn failing_and_slow_checks_are_reported_each() {
    // A port nothing listens on, a check that hangs, and wrong protocols on real ports.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let redis = require(TestService::Redis);
    let health = Health::new(Duration::from_millis(300))
        .with_check(RedisCheck::new(Secret::new(format!(
            "redis://:sekrit@127.0.0.1:{closed}"
        ))))
        .with_check(PostgresCheck::new(Secret::new(format!(
            "postgres://u:sekrit@{}",
            redis.trim_start_matches("redis://")
        ))))
        .with_check(FnCheck::new("hangs", || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }))
        .with_check(FnCheck::new("fine", || async { Ok(()) }));
    let started = std::time::Instant::now();
    let (ok, v) = health.readiness().await;
    assert!(!ok);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "checks run concurrently"
    );
    assert_eq!(v["checks"]["redis"]["status"], "fail");
    assert_eq!(v["checks"]["postgres"]["status"], "fail", "{v}");
    assert!(
        v["checks"]["hangs"]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 300 ms")
    );
    assert_eq!(v["checks"]["fine"]["status"], "pass");
    assert!(!v.to_string().contains("sekrit"), "{v}");
}

fn parse_with_prometheus_client(text: &str) -> String {
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        print(family.name, family.type, s.name, sorted(s.labels.items()), s.value)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics (is prometheus_client installed? `pip install prometheus_client`):\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn metrics_endpoint_is_valid_openmetrics() {
    let registry = MetricsRegistry::new();
    let health = Health::new(Duration::from_secs(1));
    let stack = EdgeStack::from_config(&config(), &registry).unwrap();
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }));
    let svc = stack.wrap(with_operational_routes(app, &health, &registry));
    for uri in ["/items/1", "/items/2", "/fail", "/nope", "/health/live"] {
        svc.clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
    }
    let r = svc
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let parsed = parse_with_prometheus_client(&text);
    assert!(parsed.contains(
        "http_request_duration_seconds histogram http_request_duration_seconds_count [('method', 'GET'), ('route', '/items/{id}'), ('status_class', '2xx')] 2\n"
    ), "{parsed}");
    assert!(
        parsed.contains("('route', '/fail'), ('status_class', '5xx')"),
        "{parsed}"
    );
    assert!(
        parsed.contains("('route', 'unmatched'), ('status_class', '4xx')"),
        "{parsed}"
    );
    assert!(parsed.contains("('route', '/health/live')"), "{parsed}");
    // The /metrics request itself is in flight while the document is rendered.
    assert!(
        parsed.contains("http_requests_in_flight gauge http_requests_in_flight [] 1\n"),
        "{parsed}"
    );
}
