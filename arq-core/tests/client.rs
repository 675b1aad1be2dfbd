//! The outbound client: request id, trace context and tenant propagated from the request being
//! served, metrics recorded, the resilience slot applied, failures typed.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arq_core::client::{ClientError, ClientService, HttpClient};
use arq_core::config::ArqConfig;
use arq_core::edge::EdgeStack;
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::Server;
use arq_core::{TenantId, TraceParent};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::get;
use http::StatusCode;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn serve(router: Router, registry: &MetricsRegistry) -> SocketAddr {
    let mut cfg = ArqConfig::default();
    cfg.server.addr = "127.0.0.1:0".parse().unwrap();
    let svc = EdgeStack::from_config(&cfg, registry).unwrap().wrap(router);
    let server = Server::bind(&cfg.server, Health::new(Duration::from_secs(1)))
        .await
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(svc, std::future::pending()));
    addr
}

fn echo_headers() -> Router {
    Router::new().route(
        "/echo",
        get(|req: Request| async move {
            let h = req.headers();
            let get = |n: &str| {
                h.get(n)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            format!(
                "{}|{}|{}",
                get("x-request-id"),
                get("traceparent"),
                get("x-tenant-id")
            )
        }),
    )
}

#[tokio::test]
async fn propagates_request_id_trace_context_and_tenant() {
    let backend = serve(echo_headers(), &MetricsRegistry::new()).await;
    let registry = MetricsRegistry::new();
    let client = HttpClient::builder("backend").build(&registry).unwrap();
    let tenant: TenantId = "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60".parse().unwrap();
    let frontend = Router::new().route(
        "/call",
        get(move || {
            let client = client.clone();
            async move {
                arq_core::telemetry::record_tenant(&tenant);
                let r = client.get(&format!("http://{backend}/echo")).await.unwrap();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            }
        }),
    );
    let svc = EdgeStack::from_config(&ArqConfig::default(), &MetricsRegistry::new())
        .unwrap()
        .wrap(frontend);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = svc
        .oneshot(
            http::Request::get("/call")
                .header("x-request-id", "rid-outbound")
                .header("traceparent", incoming)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let parts: Vec<&str> = text.split('|').collect();
    assert_eq!(parts[0], "rid-outbound");
    let sent: TraceParent = parts[1].parse().unwrap();
    let incoming: TraceParent = incoming.parse().unwrap();
    assert_eq!(sent.trace_id(), incoming.trace_id(), "same trace");
    assert_ne!(sent.parent_id(), incoming.parent_id(), "a child span");
    assert!(sent.sampled());
    assert_eq!(parts[2], tenant.to_string());
    assert!(registry.encode().contains(
        "http_client_request_duration_seconds_count{dependency=\"backend\",method=\"GET\",status_class=\"2xx\"} 1"
    ));
}

#[tokio::test]
async fn failures_are_typed_and_measured_and_the_resilience_slot_runs() {
    let registry = MetricsRegistry::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&attempts);
    let client = HttpClient::builder("down")
        .timeout(Duration::from_millis(500))
        .resilience(tower::layer::layer_fn(move |inner: ClientService| {
            let counted = Arc::clone(&counted);
            tower::service_fn(move |req| {
                counted.fetch_add(1, Ordering::SeqCst);
                inner.clone().oneshot(req)
            })
        }))
        .build(&registry)
        .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = client.get(&format!("http://{closed}/x")).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert!(registry.encode().contains("status_class=\"error\""));
    assert!(matches!(
        client.get("not a url").await.unwrap_err(),
        ClientError::InvalidUrl(_)
    ));
}

#[tokio::test]
async fn outside_a_request_a_new_trace_is_started() {
    let backend = serve(echo_headers(), &MetricsRegistry::new()).await;
    let client = HttpClient::builder("backend")
        .build(&MetricsRegistry::new())
        .unwrap();
    let r = client.get(&format!("http://{backend}/echo")).await.unwrap();
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let parts: Vec<&str> = text.split('|').collect();
    assert_eq!(parts[0], "", "no request id to propagate");
    assert!(parts[1].parse::<TraceParent>().is_ok());
    assert_eq!(parts[2], "");
}
