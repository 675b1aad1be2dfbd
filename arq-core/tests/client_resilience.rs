//! The outbound client's per-dependency resilience, against real local HTTP servers: retries of
//! idempotent requests only (with replayable bodies only), the circuit breaker opening and
//! recovering, the per-attempt timeout, the bulkhead, and their metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arq_core::client::{ClientError, HttpClient};
use arq_core::metrics::MetricsRegistry;
use arq_core::resilience::{
    DependencyKind, Idempotent, ResilienceMetrics, ResilienceRegistry, ResilienceSettings,
};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::any;
use http::{Request, StatusCode};

/// A backend whose `/fail-first/{n}` answers 503 to its first n calls, `/fail` always 503,
/// `/ok` always 200; every route counts its hits and the body bytes it received.
#[derive(Clone, Default)]
struct Backend {
    hits: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Backend {
    async fn serve(&self, router: Router<Backend>) -> SocketAddr {
        let app = router.with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn counting(
    status: impl Fn(usize) -> StatusCode + Clone + Send + Sync + 'static,
) -> Router<Backend> {
    Router::new().route(
        "/",
        any(move |State(b): State<Backend>, body: Bytes| {
            let status = status.clone();
            async move {
                let n = b.hits.fetch_add(1, Ordering::SeqCst);
                b.bytes.fetch_add(body.len(), Ordering::SeqCst);
                status(n)
            }
        }),
    )
}

/// A client for `name` configured the way a service's `[resilience]` section would be.
fn client(name: &str, settings: &str, registry: &MetricsRegistry) -> HttpClient {
    let settings: ResilienceSettings =
        serde_json::from_str(&format!(r#"{{"dependencies": {{"{name}": {settings}}}}}"#)).unwrap();
    let resilience = ResilienceRegistry::from_settings(
        &settings,
        ResilienceMetrics::register(registry).unwrap(),
    )
    .unwrap();
    HttpClient::builder(name)
        .dependency(resilience.dependency(name, DependencyKind::Http).unwrap())
        .retry_body_limit(64)
        .build(registry)
        .unwrap()
}

const FAST_RETRIES: &str =
    r#"{"max_attempts": 3, "backoff_base_ms": 1, "backoff_cap_ms": 2, "timeout_ms": 5000}"#;

#[tokio::test]
async fn idempotent_requests_are_retried_until_they_succeed() {
    let backend = Backend::default();
    let addr = backend
        .serve(counting(|n| {
            if n < 2 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }))
        .await;
    let registry = MetricsRegistry::new();
    let c = client("flaky", FAST_RETRIES, &registry);
    let r = c.get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(backend.hits(), 3);
    let text = registry.encode();
    assert!(text.contains("arq_retry_attempts"), "{text}");
    assert!(text.contains("dependency=\"flaky\""), "{text}");
}

#[tokio::test]
async fn post_is_sent_once_unless_marked_idempotent() {
    let backend = Backend::default();
    let addr = backend
        .serve(counting(|_| StatusCode::SERVICE_UNAVAILABLE))
        .await;
    let c = client("payments", FAST_RETRIES, &MetricsRegistry::new());
    let post = || {
        Request::post(format!("http://{addr}/"))
            .body(Body::from("{\"amount\":1}"))
            .unwrap()
    };
    let r = c.send(post()).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend.hits(), 1, "POST is not retried");

    let mut marked = post();
    marked.extensions_mut().insert(Idempotent);
    c.send(marked).await.unwrap();
    assert_eq!(backend.hits(), 4, "an Idempotent POST is retried");
    assert_eq!(
        backend.bytes.load(Ordering::SeqCst),
        4 * 12,
        "the buffered body is replayed on every attempt"
    );
}

#[tokio::test]
async fn streaming_and_oversized_bodies_are_sent_once() {
    let backend = Backend::default();
    let addr = backend
        .serve(counting(|_| StatusCode::SERVICE_UNAVAILABLE))
        .await;
    let c = client("store", FAST_RETRIES, &MetricsRegistry::new());
    let url = format!("http://{addr}/");

    let small = Request::put(&url).body(Body::from(vec![b'x'; 64])).unwrap();
    c.send(small).await.unwrap();
    assert_eq!(backend.hits(), 3, "a PUT within the limit is retried");

    let large = Request::put(&url).body(Body::from(vec![b'x'; 65])).unwrap();
    c.send(large).await.unwrap();
    assert_eq!(backend.hits(), 4, "a body over the limit is not buffered");

    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"ab"))]);
    let streaming = Request::put(&url).body(Body::from_stream(chunks)).unwrap();
    c.send(streaming).await.unwrap();
    assert_eq!(backend.hits(), 5, "a streaming body is not retried");
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_recovers() {
    let healthy = Arc::new(AtomicUsize::new(0));
    let flag = Arc::clone(&healthy);
    let backend = Backend::default();
    let addr = backend
        .serve(counting(move |_| {
            if flag.load(Ordering::SeqCst) == 1 {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }))
        .await;
    let registry = MetricsRegistry::new();
    let c = client(
        "ledger",
        r#"{"max_attempts": 1, "window_size": 4, "min_calls": 4, "failure_rate_threshold": 0.5,
            "open_duration_ms": 30000, "half_open_probes": 1}"#,
        &registry,
    );
    let url = format!("http://{addr}/");
    for _ in 0..4 {
        let r = c.get(&url).await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let err = c.get(&url).await.unwrap_err();
    assert!(
        matches!(err, ClientError::CircuitOpen { ref dependency, .. } if dependency == "ledger"),
        "{err}"
    );
    assert!(err.to_string().contains("circuit breaker is open"), "{err}");
    assert_eq!(
        backend.hits(),
        4,
        "an open breaker does not call the backend"
    );
    assert!(registry.encode().contains("arq_circuit_breaker_rejections"));

    // The backend recovers; once the open period has passed (on tokio's clock) a probe goes
    // through and its success closes the breaker.
    healthy.store(1, Ordering::SeqCst);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(31)).await;
    tokio::time::resume();
    assert_eq!(c.get(&url).await.unwrap().status(), StatusCode::OK);
    assert_eq!(c.get(&url).await.unwrap().status(), StatusCode::OK);
    assert_eq!(backend.hits(), 6);
}

#[tokio::test]
async fn a_slow_dependency_times_out_with_a_clear_error() {
    let backend = Backend::default();
    let router = Router::new().route(
        "/",
        any(|| async {
            std::future::pending::<()>().await;
        }),
    );
    let addr = backend.serve(router).await;
    let registry = MetricsRegistry::new();
    let c = client(
        "slow",
        r#"{"max_attempts": 1, "timeout_ms": 100}"#,
        &registry,
    );
    let err = c.get(&format!("http://{addr}/")).await.unwrap_err();
    match &err {
        ClientError::Timeout {
            dependency,
            timeout,
        } => {
            assert_eq!(dependency, "slow");
            assert_eq!(*timeout, Duration::from_millis(100));
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(err.to_string().contains("timed out after 100ms"), "{err}");
    let text = registry.encode();
    assert!(text.contains("arq_timeouts"), "{text}");
    assert!(text.contains("status_class=\"error\""), "{text}");
}

#[tokio::test]
async fn a_full_bulkhead_refuses_with_a_clear_error() {
    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let router = Router::new().route(
        "/",
        any(move || {
            let entered = entered_tx.clone();
            let gate = Arc::clone(&gate);
            async move {
                entered.send(()).await.unwrap();
                gate.notified().await;
                "done"
            }
        }),
    );
    let addr = Backend::default().serve(router).await;
    let c = client(
        "narrow",
        r#"{"max_attempts": 1, "max_concurrent": 1, "max_waiting": 0}"#,
        &MetricsRegistry::new(),
    );
    let url = format!("http://{addr}/");
    let first = tokio::spawn({
        let c = c.clone();
        let url = url.clone();
        async move { c.get(&url).await.unwrap().status() }
    });
    entered_rx.recv().await.unwrap();
    let err = c.get(&url).await.unwrap_err();
    assert!(
        matches!(err, ClientError::BulkheadFull { ref dependency } if dependency == "narrow"),
        "{err}"
    );
    assert!(err.to_string().contains("too many calls"), "{err}");
    release.notify_one();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
}
