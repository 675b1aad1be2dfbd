//! JSON logs of requests through the edge stack (PITFALL 31). Alone in its binary: tracing
//! caches per-callsite interest process-wide, so a scoped subscriber must not race other tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::sync::{Arc, Mutex};

use arq_core::config::{ArqConfig, ConfigLoader};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::metrics::MetricsRegistry;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn service() -> EdgeService {
    let config = ArqConfig::load_from(
        &ConfigLoader::new("/nonexistent")
            .environment("test")
            .vars(Vec::<(String, String)>::new()),
    )
    .unwrap()
    .0;
    let app = Router::new()
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/tenant",
            get(|| async {
                let t: arq_core::TenantId = "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60".parse().unwrap();
                arq_core::telemetry::record_tenant(&t);
                tracing::info!("tenant work");
                "ok"
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("boom: secret detail");
                }
                "unreachable"
            }),
        );
    EdgeStack::from_config(&config, &MetricsRegistry::new())
        .unwrap()
        .wrap(app)
}

async fn call(svc: &EdgeService, req: Request<Body>) -> (StatusCode, Bytes) {
    let response = svc.clone().oneshot(req).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn json_logs_carry_ids_and_never_bodies_or_credentials() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("debug"))
        .with(arq_core::telemetry::json_layer(move || writer.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let svc = service();
    let req = Request::post("/echo")
        .header(header::AUTHORIZATION, "Bearer top-secret-token")
        .header(header::COOKIE, "session=cookie-secret")
        .header("x-api-key", "api-key-secret")
        .header("x-request-id", "log-rid")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::from("request-body-secret"))
        .unwrap();
    let (status, body) = call(&svc, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "request-body-secret");
    let _ = call(&svc, Request::get("/panic").body(Body::empty()).unwrap()).await;
    let _ = call(&svc, Request::get("/tenant").body(Body::empty()).unwrap()).await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for secret in [
        "request-body-secret",
        "top-secret-token",
        "cookie-secret",
        "api-key-secret",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into logs:\n{logs}");
    }
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let done = lines
        .iter()
        .find(|l| l["message"] == "request completed" && l["span"]["request_id"] == "log-rid")
        .unwrap_or_else(|| panic!("no completion line in {logs}"));
    assert_eq!(done["level"], "DEBUG");
    assert!(done["timestamp"].is_string());
    assert!(done["target"].is_string());
    assert_eq!(done["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(done["span"]["span_id"].as_str().unwrap().len(), 16);
    assert_eq!(done["span"]["method"], "POST");
    assert_eq!(done["request_id"], "log-rid");
    assert_eq!(done["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(done["span"]["route"], "/echo");
    assert_eq!(done["span"]["status"], 200);
    assert!(done["span"]["latency_ms"].is_number());
    let panicked = lines
        .iter()
        .find(|l| l["message"] == "handler panicked" && l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no panic line in {logs}"));
    // Ids come from the task, so they are on every line of the request.
    assert_eq!(panicked["request_id"].as_str().unwrap().len(), 33);
    assert_eq!(panicked["trace_id"].as_str().unwrap().len(), 32);
    // Tenant, once known, is on the request's later lines.
    let tenant_line = lines
        .iter()
        .find(|l| l["message"] == "tenant work")
        .unwrap_or_else(|| panic!("no tenant line in {logs}"));
    assert_eq!(
        tenant_line["tenant"],
        "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60"
    );
    assert_eq!(tenant_line["level"], "INFO");
}
