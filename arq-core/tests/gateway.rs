//! The gateway on real loopback sockets, in front of real axum (and WebSocket) upstreams:
//! routing, header hygiene, streaming, the edge (401/403/429/CORS), per-upstream resilience
//! and WebSocket pass-through.
#![cfg(feature = "gateway")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arq_core::config::{ArqConfig, ConfigLoader};
use arq_core::edge::{EdgeStack, SlotService};
use arq_core::gateway::{Gateway, GatewayConfig, GatewayError, RouteConfig};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::rate_limit::RateLimitLayer;
use arq_core::resilience::{CircuitState, DependencySettings};
use arq_core::server::Server;
use arq_core::{CallerIdentity, Identity, Problem, TenantId};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::Layer;

fn config(vars: &[(&str, &str)]) -> ArqConfig {
    ArqConfig::load_from(
        &ConfigLoader::new("/nonexistent")
            .environment("test")
            .vars(vars.iter().copied()),
    )
    .unwrap()
    .0
}

/// What the upstream saw, shared with the test.
#[derive(Default)]
struct Seen {
    attempts: AtomicU64,
    received: AtomicU64,
    sse_next: tokio::sync::Notify,
}

/// The upstream: echoes headers, counts attempts, streams uploads and events.
fn upstream_app(seen: Arc<Seen>) -> Router {
    Router::new()
        .route("/users/echo", any(echo))
        .route("/users", get(|| async { "users root" }))
        .route(
            "/users/hop",
            get(|| async {
                (
                    [
                        ("connection", "x-up-hop"),
                        ("x-up-hop", "1"),
                        ("x-kept", "1"),
                    ],
                    "hop",
                )
            }),
        )
        .route(
            "/users/flaky",
            any(|State(s): State<Arc<Seen>>| async move {
                s.attempts.fetch_add(1, Ordering::SeqCst);
                StatusCode::SERVICE_UNAVAILABLE
            }),
        )
        .route(
            "/users/slow",
            get(|| async {
                std::future::pending::<()>().await;
                "never"
            }),
        )
        .route("/users/upload", post(upload))
        .route("/users/events", get(events))
        .with_state(seen)
}

async fn echo(headers: HeaderMap, uri: http::Uri) -> axum::Json<serde_json::Value> {
    let mut map = serde_json::Map::new();
    for (k, v) in &headers {
        map.insert(k.to_string(), v.to_str().unwrap_or("?").into());
    }
    map.insert(":path".into(), uri.to_string().into());
    axum::Json(serde_json::Value::Object(map))
}

async fn upload(State(s): State<Arc<Seen>>, body: Body) -> String {
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        s.received
            .fetch_add(chunk.unwrap().len() as u64, Ordering::SeqCst);
    }
    s.received.load(Ordering::SeqCst).to_string()
}

async fn events(State(s): State<Arc<Seen>>) -> Response {
    let stream = futures_util::stream::unfold(0u32, move |n| {
        let s = Arc::clone(&s);
        async move {
            if n == 2 {
                return None;
            }
            if n == 1 {
                // The second event waits until the test has read the first through the gateway.
                s.sse_next.notified().await;
            }
            Some((
                Ok::<_, Infallible>(Bytes::from(format!("data: {n}\n\n"))),
                n + 1,
            ))
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn serve_router(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// A WebSocket echo upstream speaking the protocol itself.
async fn ws_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    addr
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A test identity: `Authorization: Bearer <subject>:<tenant uuid>`; `Bearer bad` is refused
/// with 401, as arq-auth's layer refuses invalid credentials.
#[derive(Clone)]
struct TestAuth;

struct Who {
    subject: String,
    tenant: TenantId,
}

impl Identity for Who {
    fn subject(&self) -> &str {
        &self.subject
    }
    fn home_tenant(&self) -> Option<TenantId> {
        Some(self.tenant)
    }
    fn roles(&self) -> &[String] {
        &[]
    }
}

impl Layer<SlotService> for TestAuth {
    type Service = tower::util::BoxCloneSyncService<Request<Body>, Response, Infallible>;
    fn layer(&self, inner: SlotService) -> Self::Service {
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |mut req: Request<Body>| {
            let inner = inner.clone();
            async move {
                let token = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_owned);
                if let Some(token) = token {
                    let Some((subject, tenant)) = token.split_once(':') else {
                        return Ok(Problem::unauthorized("bad token").into_response());
                    };
                    req.extensions_mut().insert(CallerIdentity::new(Who {
                        subject: subject.to_owned(),
                        tenant: tenant.parse().unwrap(),
                    }));
                }
                tower::ServiceExt::oneshot(inner, req).await
            }
        }))
    }
}

struct Harness {
    base: String,
    gateway: Gateway,
    seen: Arc<Seen>,
}

/// Starts an upstream and a gateway in front of it: `/api/v1/users` → the upstream,
/// `/api/v1/down` → a closed port, `/api/v1/ws` → a WebSocket upstream; public paths
/// `/users/echo`, `/users/upload`, `/users/events` and `/ws`.
async fn start(vars: &[(&str, &str)], users: DependencySettings, limit: bool) -> Harness {
    let seen = Arc::new(Seen::default());
    let up = serve_router(upstream_app(Arc::clone(&seen))).await;
    let ws = ws_upstream().await;
    let down = closed_port().await;
    let mut fast = DependencySettings::default();
    fast.max_attempts = Some(1);
    fast.min_calls = Some(2);
    fast.window_size = Some(2);
    fast.open_duration_ms = Some(200);
    fast.half_open_probes = Some(1);
    let gw_config = GatewayConfig::new("/api/v1")
        .route(
            "users",
            RouteConfig::new("/users", format!("http://{up}")).resilience(users),
        )
        .route(
            "down",
            RouteConfig::new("/down", format!("http://{down}")).resilience(fast),
        )
        .route("ws", RouteConfig::new("/ws", format!("http://{ws}")))
        .public("/users/echo")
        .public("/users/upload")
        .public("/users/events")
        .public("/ws");
    let registry = MetricsRegistry::new();
    let gateway = Gateway::builder(gw_config).build(&registry).unwrap();
    let cfg = config(vars);
    let mut edge = EdgeStack::from_config(&cfg, &registry)
        .unwrap()
        .authentication(TestAuth);
    if limit {
        edge = edge.per_principal_limit(RateLimitLayer::from_config(&cfg.rate_limit).unwrap());
    }
    let health = Health::new(Duration::from_secs(1)).with_check(gateway.health_check());
    let app = gateway
        .router()
        .merge(gateway.upstreams_router())
        .merge(health.router());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::from_listener(listener, &cfg.server, health).unwrap();
    let base = format!("http://{}", server.local_addr());
    let svc = edge.wrap(app);
    tokio::spawn(server.serve(svc, std::future::pending()));
    Harness {
        base,
        gateway,
        seen,
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let r = client().request(req).await.unwrap();
    let (parts, body) = r.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn fetch(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Body::empty()).unwrap()).await
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

fn token(subject: &str, tenant: TenantId) -> String {
    format!("Bearer {subject}:{tenant}")
}

#[tokio::test]
async fn routes_on_segment_boundaries_and_strips_the_gateway_prefix() {
    let h = start(&[], DependencySettings::default(), false).await;
    let (status, _, body) = fetch(&format!("{}/api/v1/users/echo?x=1", h.base), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)[":path"], "/users/echo?x=1");
    let me = token("alice", TenantId::generate());
    let (status, _, body) = fetch(
        &format!("{}/api/v1/users", h.base),
        &[("authorization", &me)],
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"users root"[..]));
    for path in [
        "/api/v1/usersx",
        "/api/v1/nothing",
        "/users/echo",
        "/api/v2/users/echo",
    ] {
        let (status, h2, _) = fetch(&format!("{}{path}", h.base), &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        drop(h2);
    }
}

#[test]
fn conflicting_routes_are_a_start_up_error_naming_both() {
    let config = GatewayConfig::new("/api/v1")
        .route("tasks", RouteConfig::new("/tasks", "http://127.0.0.1:3001"))
        .route(
            "admin",
            RouteConfig::new("/tasks/admin", "http://127.0.0.1:3002"),
        );
    let err = Gateway::builder(config)
        .build(&MetricsRegistry::new())
        .unwrap_err();
    assert!(matches!(err, GatewayError::Overlap { .. }));
    let text = err.to_string();
    assert!(
        text.contains("`admin` (/tasks/admin)") && text.contains("`tasks` (/tasks)"),
        "{text}"
    );

    let manifest = r#"
        [gateway]
        port = 3000
        prefix = "/api/v1"
        public = ["/tasks/health"]
        [services.tasks]
        kind = "http"
        port = 3001
        route = "/tasks"
        [gateway.resilience.tasks]
        timeout_ms = 1500
    "#;
    let config = GatewayConfig::from_manifest(manifest, "http://127.0.0.1:{port}").unwrap();
    assert_eq!(config.routes["tasks"].upstream, "http://127.0.0.1:3001");
    assert_eq!(config.routes["tasks"].resilience.timeout_ms, Some(1500));
    let gw = Gateway::builder(config)
        .build(&MetricsRegistry::new())
        .unwrap();
    assert_eq!(
        gw.dependency("tasks")
            .unwrap()
            .timeout()
            .duration()
            .as_millis(),
        1500
    );
}

/// Sends raw HTTP/1.1 so the test controls every header, and reads the whole response.
async fn raw(base: &str, request: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let h = start(&[], DependencySettings::default(), false).await;
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = raw(
        &h.base,
        &format!(
            "GET /api/v1/users/echo HTTP/1.1\r\nHost: shop.example\r\n\
             Connection: close, x-secret\r\nx-secret: 1\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9v\r\n\
             X-Forwarded-For: 203.0.113.9\r\nX-Request-ID: req-abc-123\r\ntraceparent: {trace}\r\n\
             X-Tenant-ID: {}\r\nx-kept: yes\r\n\r\n",
            TenantId::generate()
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-request-id: req-abc-123")
    );
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| {
        // A chunked body: the JSON is the first chunk.
        serde_json::from_str(body.lines().nth(1).unwrap()).unwrap()
    });
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "proxy-authorization",
        "x-tenant-id",
    ] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example");
    assert_eq!(seen["x-request-id"], "req-abc-123");
    let sent = seen["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{sent}"
    );
    assert_ne!(
        sent, trace,
        "the upstream continues the gateway's span, not the client's"
    );

    // Hop-by-hop headers of the upstream's response stop at the gateway too.
    let response = raw(
        &h.base,
        "GET /api/v1/users/hop HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer a:0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("x-kept: 1"));
    assert!(!response.contains("x-up-hop"), "{response}");
}

#[tokio::test]
async fn a_100_mb_upload_streams_through_with_bounded_buffering() {
    let h = start(
        &[("ARQ__EDGE__BODY_LIMIT", "200MiB")],
        DependencySettings::default(),
        false,
    )
    .await;
    const TOTAL: u64 = 100 << 20;
    const CHUNK: usize = 64 << 10;
    // The client never runs more than 8 MiB ahead of what the upstream has received: if the
    // gateway buffered the body, the upstream would see nothing and the client would stall.
    const WINDOW: u64 = 8 << 20;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
    let seen = Arc::clone(&h.seen);
    let producer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        let mut sent = 0u64;
        let mut max_ahead = 0u64;
        while sent < TOTAL {
            loop {
                let ahead = sent - seen.received.load(Ordering::SeqCst);
                max_ahead = max_ahead.max(ahead);
                if ahead < WINDOW {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tx.send(Ok(chunk.clone())).await.unwrap();
            sent += CHUNK as u64;
        }
        max_ahead
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    let req = Request::post(format!("{}/api/v1/users/upload", h.base))
        .body(body)
        .unwrap();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(120), send(req))
        .await
        .expect("the upload stalled: the gateway is buffering the body");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::str::from_utf8(&body).unwrap(), TOTAL.to_string());
    let max_ahead = producer.await.unwrap();
    assert!(max_ahead <= WINDOW + CHUNK as u64, "{max_ahead}");
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn server_sent_events_pass_through_as_they_are_sent() {
    let h = start(&[], DependencySettings::default(), false).await;
    let r = client()
        .request(
            Request::get(format!("{}/api/v1/users/events", h.base))
                .header("accept-encoding", "gzip")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
    let mut body = r.into_body();
    // The first event arrives while the upstream is still holding back the second.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");
    h.seen.sse_next.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: 1\n\n");
}

#[tokio::test]
async fn the_edge_answers_401_403_and_cors_preflights_before_the_upstream() {
    let h = start(
        &[("ARQ__CORS__ALLOWED_ORIGINS", "https://app.example")],
        DependencySettings::default(),
        false,
    )
    .await;
    let url = format!("{}/api/v1/users", h.base);
    // No credentials on a route that is not public.
    let (status, headers, _) = fetch(&url, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    // Invalid credentials: the authentication layer's 401.
    let (status, _, _) = fetch(&url, &[("authorization", "Bearer bad")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let home = TenantId::generate();
    let me = token("alice", home);
    let echo = format!("{}/api/v1/users/echo", h.base);
    // The tenant header comes from the identity…
    let (_, _, body) = fetch(&echo, &[("authorization", &me)]).await;
    assert_eq!(json(&body)["x-tenant-id"], home.to_string());
    let (status, _, _) = fetch(
        &echo,
        &[("authorization", &me), ("x-tenant-id", &home.to_string())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // …and a client-supplied one that disagrees is refused.
    let other = TenantId::generate().to_string();
    let (status, headers, _) =
        fetch(&echo, &[("authorization", &me), ("x-tenant-id", &other)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let (status, _, _) = fetch(&echo, &[("authorization", &me), ("x-tenant-id", "nope")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A CORS preflight is answered by the edge, before authentication.
    let (status, headers, _) = send(
        Request::options(&url)
            .header(header::ORIGIN, "https://app.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
}

#[tokio::test]
async fn per_principal_limits_are_shared_through_redis() {
    let redis = arq_core::testing::require(arq_core::testing::TestService::Redis);
    let prefix = format!("gw-test-{}", TenantId::generate());
    let h = start(
        &[
            ("ARQ__RATE_LIMIT__BACKEND", "redis"),
            ("ARQ__RATE_LIMIT__REDIS_URL", &redis),
            ("ARQ__RATE_LIMIT__KEY", "principal"),
            ("ARQ__RATE_LIMIT__KEY_PREFIX", &prefix),
            ("ARQ__RATE_LIMIT__PER_MINUTE", "2"),
        ],
        DependencySettings::default(),
        true,
    )
    .await;
    let url = format!("{}/api/v1/users", h.base);
    let alice = token("alice", TenantId::generate());
    for _ in 0..2 {
        assert_eq!(
            fetch(&url, &[("authorization", &alice)]).await.0,
            StatusCode::OK
        );
    }
    let (status, headers, _) = fetch(&url, &[("authorization", &alice)]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key(header::RETRY_AFTER));
    // Another principal has its own quota.
    let bob = token("bob", TenantId::generate());
    assert_eq!(
        fetch(&url, &[("authorization", &bob)]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn upstream_down_gives_problems_then_the_breaker_opens_and_recovers() {
    let h = start(&[], DependencySettings::default(), false).await;
    let me = token("alice", TenantId::generate());
    let url = format!("{}/api/v1/down/x", h.base);
    let breaker = h.gateway.dependency("down").unwrap().breaker().clone();
    // Connection refused: 502 problems until the breaker has seen enough failures.
    let mut statuses = Vec::new();
    while breaker.state() != CircuitState::Open {
        let (status, headers, _) = fetch(&url, &[("authorization", &me)]).await;
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        statuses.push(status);
        assert!(statuses.len() <= 2, "{statuses:?}");
    }
    assert!(
        statuses.iter().all(|s| *s == StatusCode::BAD_GATEWAY),
        "{statuses:?}"
    );
    let (status, headers, body) = fetch(&url, &[("authorization", &me)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        headers[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(String::from_utf8_lossy(&body).contains("circuit open"));
    let (status, ready, _) = fetch(&format!("{}/health/upstreams", h.base), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    drop(ready);

    // The upstream comes back on the same port; after the open period a probe closes it.
    let down_addr = h.gateway.upstreams()["down"]["upstream"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let listener = TcpListener::bind(&down_addr).await.unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            Router::new().route("/down/x", get(|| async { "back" })),
        )
        .await
        .unwrap();
    });
    let mut last = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..600 {
        last = fetch(&url, &[("authorization", &me)]).await.0;
        if last == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, StatusCode::OK);
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test]
async fn a_slow_upstream_gives_504() {
    let mut s = DependencySettings::default();
    s.timeout_ms = Some(200);
    s.max_attempts = Some(1);
    let h = start(&[], s, false).await;
    let me = token("alice", TenantId::generate());
    let (status, headers, body) = fetch(
        &format!("{}/api/v1/users/slow", h.base),
        &[("authorization", &me)],
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert!(String::from_utf8_lossy(&body).contains("users"));
}

#[tokio::test]
async fn only_idempotent_requests_without_a_body_are_retried() {
    let mut s = DependencySettings::default();
    s.max_attempts = Some(3);
    s.backoff_base_ms = Some(1);
    s.backoff_cap_ms = Some(2);
    s.min_calls = Some(1000);
    s.window_size = Some(1000);
    let h = start(&[], s, false).await;
    let me = token("alice", TenantId::generate());
    let url = format!("{}/api/v1/users/flaky", h.base);
    let (status, _, _) = send(
        Request::post(&url)
            .header("authorization", &me)
            .body(Body::from("{\"pay\": 1}"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        h.seen.attempts.swap(0, Ordering::SeqCst),
        1,
        "a POST was retried"
    );
    let (status, _, _) = send(
        Request::put(&url)
            .header("authorization", &me)
            .body(Body::from("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        h.seen.attempts.swap(0, Ordering::SeqCst),
        1,
        "a streamed body was sent twice"
    );
    let (status, _, _) = fetch(&url, &[("authorization", &me)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        h.seen.attempts.load(Ordering::SeqCst),
        3,
        "a GET is retried"
    );
}

#[tokio::test]
async fn websockets_pass_through() {
    let h = start(&[], DependencySettings::default(), false).await;
    let url = format!("{}/api/v1/ws/chat", h.base.replace("http://", "ws://"));
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "again"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}
