//! The edge stack through `oneshot`: request ids, panics, redaction, logs, timeouts, CORS,
//! compression, body limit, metrics and the slots (PITFALLS 28–31).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::convert::Infallible;
use std::time::Duration;

use arq_core::config::{ArqConfig, ConfigLoader};
use arq_core::edge::{EdgeService, EdgeStack, SlotService};
use arq_core::metrics::MetricsRegistry;
use arq_core::{Problem, RequestId, TraceContext};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};

fn config(vars: &[(&str, &str)]) -> ArqConfig {
    ArqConfig::load_from(
        &ConfigLoader::new("/nonexistent")
            .environment("test")
            .vars(vars.iter().copied()),
    )
    .unwrap()
    .0
}

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/users/{id}", get(|| async { "user" }))
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("boom: secret detail");
                }
                "unreachable"
            }),
        )
        .route(
            "/problem",
            get(|| async { Problem::bad_request("nope").into_response() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let stream = futures_util::stream::unfold(0u32, |n| async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Some((
                        Ok::<_, Infallible>(Bytes::from(format!("chunk {n}\n"))),
                        n + 1,
                    ))
                });
                Body::from_stream(stream)
            }),
        )
        .route("/big", get(|| async { "x".repeat(4096) }))
        .route("/small", get(|| async { "x".repeat(1000) }))
        .route(
            "/png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], vec![0u8; 4096]) }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/headers",
            get(|req: Request<Body>| async move {
                let auth_sensitive = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .is_some_and(http::HeaderValue::is_sensitive);
                let ctx: Option<TraceContext> = arq_core::telemetry::current_trace();
                let id = RequestId::current()
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                format!(
                    "{auth_sensitive} {} {} {id}",
                    ctx.as_ref()
                        .map(|c| c.parent.trace_id_hex())
                        .unwrap_or_default(),
                    ctx.as_ref()
                        .map(|c| c.parent.parent_id_hex())
                        .unwrap_or_default(),
                )
            }),
        )
}

fn service(vars: &[(&str, &str)]) -> (EdgeService, MetricsRegistry) {
    let registry = MetricsRegistry::new();
    let stack = EdgeStack::from_config(&config(vars), &registry).unwrap();
    (stack.wrap(app()), registry)
}

async fn call(svc: &EdgeService, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap()
}

#[tokio::test]
async fn request_ids_are_generated_accepted_and_echoed() {
    let (svc, _) = service(&[]);
    let (_, h1, _) = call(&svc, get_req("/hello")).await;
    let (_, h2, _) = call(&svc, get_req("/hello")).await;
    let a = h1["x-request-id"].to_str().unwrap();
    let b = h2["x-request-id"].to_str().unwrap();
    assert_ne!(a, b);
    assert!(a.parse::<RequestId>().is_ok());

    let req = Request::get("/problem")
        .header("x-request-id", "caller-id-1")
        .body(Body::empty())
        .unwrap();
    let (status, h, body) = call(&svc, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h["x-request-id"], "caller-id-1");
    // The task-local is scoped, so a Problem built in a handler carries the id.
    assert_eq!(json(&body)["request_id"], "caller-id-1");

    // An invalid id is replaced, never echoed.
    let req = Request::get("/hello")
        .header("x-request-id", "x".repeat(200))
        .body(Body::empty())
        .unwrap();
    let (_, h, _) = call(&svc, req).await;
    assert_ne!(h["x-request-id"].to_str().unwrap(), "x".repeat(200));
}

#[tokio::test]
async fn panics_become_500_problems_without_their_message() {
    let (svc, registry) = service(&[]);
    let req = Request::get("/panic")
        .header("x-request-id", "panicky")
        .body(Body::empty())
        .unwrap();
    let (status, h, body) = call(&svc, req).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(h["x-request-id"], "panicky");
    let v = json(&body);
    assert_eq!(v["request_id"], "panicky");
    assert!(!body.escape_ascii().to_string().contains("secret detail"));
    // The service keeps working and the in-flight gauge is back to zero.
    let (status, _, _) = call(&svc, get_req("/hello")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(registry.encode().contains("http_requests_in_flight 0"));
    assert!(registry.encode().contains("status_class=\"5xx\""));
}

#[tokio::test(start_paused = true)]
async fn request_timeout_is_a_504_problem_or_408_as_configured() {
    let (svc, _) = service(&[("ARQ__EDGE__REQUEST_TIMEOUT", "2s")]);
    let (status, h, body) = call(&svc, get_req("/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");
    assert!(json(&body)["detail"].as_str().unwrap().contains("2000 ms"));

    let (svc, _) = service(&[
        ("ARQ__EDGE__REQUEST_TIMEOUT", "2s"),
        ("ARQ__EDGE__TIMEOUT_STATUS", "408"),
    ]);
    let (status, _, _) = call(&svc, get_req("/slow")).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn streaming_bodies_are_cut_at_the_stream_deadline() {
    let (svc, _) = service(&[
        ("ARQ__EDGE__REQUEST_TIMEOUT", "2s"),
        ("ARQ__EDGE__STREAM_TIMEOUT", "5s"),
    ]);
    let response = svc.clone().oneshot(get_req("/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut chunks = 0;
    let err = loop {
        match body.frame().await {
            Some(Ok(_)) => chunks += 1,
            Some(Err(e)) => break e,
            None => panic!("an endless stream ended"),
        }
    };
    assert!(
        (3..=5).contains(&chunks),
        "{chunks} chunks before the deadline"
    );
    assert!(err.to_string().contains("stream deadline"), "{err}");
}

#[tokio::test]
async fn sensitive_headers_are_marked_and_trace_context_continues() {
    let (svc, _) = service(&[]);
    let req = Request::get("/headers")
        .header(header::AUTHORIZATION, "Bearer secret-token")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "rid-7")
        .body(Body::empty())
        .unwrap();
    let (_, _, body) = call(&svc, req).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts[0], "true", "Authorization must be marked sensitive");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the server span gets its own id"
    );
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "rid-7");
}

fn preflight(origin: &str) -> Request<Body> {
    Request::builder()
        .method("OPTIONS")
        .uri("/hello")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
        .body(Body::empty())
        .unwrap()
}

/// An authentication slot that refuses everything: preflights must never reach it.
#[derive(Clone)]
struct DenyAll;

impl Layer<SlotService> for DenyAll {
    type Service = tower::util::BoxCloneSyncService<Request<Body>, Response, Infallible>;
    fn layer(&self, _inner: SlotService) -> Self::Service {
        tower::util::BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Problem::unauthorized("no credentials").into_response())
        }))
    }
}

#[tokio::test]
async fn cors_preflight_is_answered_before_authentication() {
    let cfg = config(&[
        (
            "ARQ__CORS__ALLOWED_ORIGINS",
            "https://app.arq.dev,https://*.arq.dev",
        ),
        ("ARQ__CORS__ALLOW_CREDENTIALS", "true"),
    ]);
    let svc = EdgeStack::from_config(&cfg, &MetricsRegistry::new())
        .unwrap()
        .authentication(DenyAll)
        .wrap(app());

    let (status, h, _) = call(&svc, preflight("https://eu.app.arq.dev")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://eu.app.arq.dev"
    );
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert!(
        h[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        h.get_all(header::VARY)
            .iter()
            .any(|v| v.to_str().unwrap().contains("origin"))
    );

    let (_, h, _) = call(&svc, preflight("https://evil.dev")).await;
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    let (_, h, _) = call(&svc, preflight("https://arq.dev.evil.com")).await;
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // A real request still meets authentication, with CORS headers on the 401.
    let req = Request::get("/hello")
        .header(header::ORIGIN, "https://app.arq.dev")
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = call(&svc, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.arq.dev"
    );
    assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");

    // Requests without Origin get Vary too (caches must not mix CORS and non-CORS answers).
    let (_, svc_reg) = (0, MetricsRegistry::new());
    let plain = EdgeStack::from_config(&cfg, &svc_reg).unwrap().wrap(app());
    let (_, h, _) = call(&plain, get_req("/hello")).await;
    assert!(h.get(header::VARY).is_some());
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[test]
fn bad_cors_patterns_are_config_errors_not_panics() {
    for bad in [
        "*",
        "https://*",
        "https://*.com",
        "app.arq.dev",
        "https://a.dev/",
    ] {
        let err = ArqConfig::load_from(
            &ConfigLoader::new("/nonexistent")
                .environment("test")
                .vars([("ARQ__CORS__ALLOWED_ORIGINS", bad)]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("ARQ__CORS__ALLOWED_ORIGINS"),
            "{bad}: {err}"
        );
    }
}

async fn encoded(svc: &EdgeService, uri: &str, accept: Option<&str>) -> (Option<String>, usize) {
    let mut req = Request::get(uri);
    if let Some(a) = accept {
        req = req.header(header::ACCEPT_ENCODING, a);
    }
    let (_, h, body) = call(svc, req.body(Body::empty()).unwrap()).await;
    (
        h.get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap().to_owned()),
        body.len(),
    )
}

#[tokio::test]
async fn compression_only_when_large_allowed_and_not_already_compressed() {
    let (svc, _) = service(&[]);
    for enc in ["gzip", "br", "zstd"] {
        let (got, len) = encoded(&svc, "/big", Some(enc)).await;
        assert_eq!(got.as_deref(), Some(enc));
        assert!(len < 4096);
    }
    assert_eq!(encoded(&svc, "/big", None).await, (None, 4096));
    assert_eq!(encoded(&svc, "/big", Some("identity")).await, (None, 4096));
    assert_eq!(encoded(&svc, "/small", Some("gzip")).await, (None, 1000));
    assert_eq!(encoded(&svc, "/png", Some("gzip")).await, (None, 4096));
    // The threshold is configurable and inclusive.
    let (svc, _) = service(&[("ARQ__EDGE__COMPRESSION_MIN_SIZE", "1000")]);
    assert_eq!(
        encoded(&svc, "/small", Some("gzip")).await.0.as_deref(),
        Some("gzip")
    );
}

#[tokio::test]
async fn body_limit_rejections_are_problems() {
    let (svc, _) = service(&[("ARQ__EDGE__BODY_LIMIT", "16")]);
    let ok = Request::post("/echo").body(Body::from("small")).unwrap();
    assert_eq!(call(&svc, ok).await.0, StatusCode::OK);

    let declared = Request::post("/echo")
        .header(header::CONTENT_LENGTH, "100")
        .body(Body::from("x".repeat(100)))
        .unwrap();
    let (status, h, body) = call(&svc, declared).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(json(&body)["limit_bytes"], 16);

    // No Content-Length: the limit applies while streaming.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, Infallible>(Bytes::from_static(b"0123456789"))),
    );
    let streamed = Request::post("/echo")
        .body(Body::from_stream(chunks))
        .unwrap();
    let (status, h, _) = call(&svc, streamed).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h[header::CONTENT_TYPE], "application/problem+json");
}

#[tokio::test]
async fn metrics_use_route_templates_and_status_classes() {
    let (svc, registry) = service(&[]);
    for id in 0..5 {
        call(&svc, get_req(&format!("/users/{id}"))).await;
    }
    call(&svc, get_req("/no/such/path/1")).await;
    call(&svc, get_req("/no/such/path/2")).await;
    let text = registry.encode();
    assert!(text.contains(
        "http_request_duration_seconds_count{method=\"GET\",route=\"/users/{id}\",status_class=\"2xx\"} 5"
    ), "{text}");
    assert!(text.contains(
        "http_request_duration_seconds_count{method=\"GET\",route=\"unmatched\",status_class=\"4xx\"} 2"
    ), "{text}");
    assert!(!text.contains("/users/3"));
    assert!(text.contains("http_requests_in_flight 0"));
}

#[tokio::test]
async fn in_flight_gauge_counts_running_and_dropped_requests() {
    let (svc, registry) = service(&[]);
    let fut = svc.clone().oneshot(get_req("/slow"));
    let handle = tokio::spawn(fut);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(registry.encode().contains("http_requests_in_flight 1"));
    handle.abort();
    let _ = handle.await;
    assert!(registry.encode().contains("http_requests_in_flight 0"));
}
