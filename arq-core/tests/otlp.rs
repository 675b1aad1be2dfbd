//! OTLP export (feature `otlp`) against a real OTLP/HTTP protobuf receiver: an in-test server
//! that decodes what the exporter sends with `opentelemetry-proto`.
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arq_core::config::ArqConfig;
use arq_core::edge::EdgeStack;
use arq_core::metrics::MetricsRegistry;
use arq_core::telemetry::otlp::Otlp;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::routing::{get, post};
use http::Request;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

/// Exported spans with the service name of their resource.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

async fn receiver() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let store = Arc::clone(&received);
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: http::HeaderMap, body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let mut store = store.lock().unwrap();
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            store.push((service.clone(), span));
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

/// The edge stack around a handler that opens a `tracing` span and answers with the trace
/// context it runs in (`trace id|span id|sampled`).
fn app(otlp: &Otlp) -> arq_core::edge::EdgeService {
    let router = Router::new().route(
        "/users/{id}",
        get(|Path(id): Path<u32>| async move {
            tracing::info_span!("load_user", user = id).in_scope(|| tracing::info!("loading"));
            let t = arq_core::telemetry::current_trace().unwrap();
            format!(
                "{}|{}|{}",
                t.parent.trace_id_hex(),
                t.parent.parent_id_hex(),
                t.parent.sampled()
            )
        }),
    );
    EdgeStack::from_config(&ArqConfig::default(), &MetricsRegistry::new())
        .unwrap()
        .otlp(otlp)
        .wrap(router)
}

async fn call(app: &arq_core::edge::EdgeService, traceparent: Option<&str>) -> Vec<String> {
    let mut req = Request::get("/users/7");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec())
        .unwrap()
        .split('|')
        .map(str::to_owned)
        .collect()
}

async fn flush(otlp: &Otlp) {
    let otlp = otlp.clone();
    tokio::task::spawn_blocking(move || otlp.force_flush())
        .await
        .unwrap()
        .unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

const SAMPLED_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UNSAMPLED_PARENT: &str = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-00";

#[tokio::test]
async fn server_spans_carry_the_incoming_trace_and_the_request_context() {
    let (addr, received) = receiver().await;
    let otlp = Otlp::new(&format!("http://{addr}"), "users-svc", 1.0).unwrap();
    let subscriber = tracing_subscriber::registry().with(otlp.layer());
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = app(&otlp);

    let seen = call(&app, Some(SAMPLED_PARENT)).await;
    flush(&otlp).await;

    assert_eq!(seen[0], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(seen[2], "true");
    let spans = received.lock().unwrap().clone();
    // The server span, the edge stack's `http_request` span (debug level, enabled here) and
    // the handler's span.
    assert_eq!(spans.len(), 3, "{spans:?}");
    let (service, server) = spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(service, "users-svc");
    assert_eq!(server.name, "GET /users/{id}");
    assert_eq!(hex(&server.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    // The exported span is the request's context: what logs show and outbound calls continue.
    assert_eq!(hex(&server.span_id), seen[1]);
    assert_eq!(
        attr(server, "http.route"),
        Some(&Value::StringValue("/users/{id}".into()))
    );
    assert_eq!(
        attr(server, "http.request.method"),
        Some(&Value::StringValue("GET".into()))
    );
    assert_eq!(
        attr(server, "url.path"),
        Some(&Value::StringValue("/users/7".into()))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert_eq!(server.status.as_ref().map_or(0, |s| s.code), 0, "unset");
    // `tracing` spans nest under the server span, in the same trace.
    let (_, edge) = spans
        .iter()
        .find(|(_, s)| s.name == "http_request")
        .unwrap();
    assert_eq!(edge.trace_id, server.trace_id);
    assert_eq!(edge.parent_span_id, server.span_id);
    let (_, child) = spans.iter().find(|(_, s)| s.name == "load_user").unwrap();
    assert_eq!(child.trace_id, server.trace_id);
    assert_eq!(child.parent_span_id, edge.span_id);
    assert_eq!(attr(child, "user"), Some(&Value::StringValue("7".into())));
}

#[tokio::test]
async fn ratio_one_exports_every_new_trace_but_honours_an_unsampled_parent() {
    let (addr, received) = receiver().await;
    let otlp = Otlp::new(&format!("http://{addr}"), "svc", 1.0).unwrap();
    let app = app(&otlp);

    let mut roots = Vec::new();
    for _ in 0..20 {
        let seen = call(&app, None).await;
        assert_eq!(seen[2], "true");
        roots.push(seen[0].clone());
    }
    let unsampled = call(&app, Some(UNSAMPLED_PARENT)).await;
    assert_eq!(unsampled[0], "5bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(unsampled[2], "false", "the caller's decision is propagated");
    flush(&otlp).await;

    let mut exported: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| hex(&s.trace_id))
        .collect();
    exported.sort();
    roots.sort();
    assert_eq!(exported, roots);
}

#[tokio::test]
async fn ratio_zero_exports_no_new_trace_but_honours_a_sampled_parent() {
    let (addr, received) = receiver().await;
    let otlp = Otlp::new(&format!("http://{addr}/v1/traces"), "svc", 0.0).unwrap();
    let app = app(&otlp);

    for _ in 0..20 {
        let seen = call(&app, None).await;
        assert_eq!(seen[2], "false", "downstream services see the decision");
    }
    call(&app, Some(UNSAMPLED_PARENT)).await;
    let sampled = call(&app, Some(SAMPLED_PARENT)).await;
    assert_eq!(sampled[2], "true");
    flush(&otlp).await;

    let spans = received.lock().unwrap().clone();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(
        hex(&spans[0].1.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(hex(&spans[0].1.span_id), sampled[1]);
}

#[tokio::test]
async fn config_builds_the_pipeline_and_refuses_bad_ratios() {
    let mut cfg = ArqConfig::default();
    assert!(Otlp::from_config(&cfg.telemetry).unwrap().is_none());
    cfg.telemetry.otlp_endpoint = Some("http://127.0.0.1:4318".into());
    cfg.telemetry.sampling_ratio = 0.01;
    let otlp = Otlp::from_config(&cfg.telemetry).unwrap().unwrap();
    assert!(format!("{otlp:?}").contains("0.01"));
    for bad in [-0.1, 1.5, f64::NAN] {
        let err = Otlp::new("http://127.0.0.1:4318", "svc", bad).unwrap_err();
        assert!(err.to_string().contains("between 0.0 and 1.0"), "{err}");
    }
}
