//! The HTTP edge stack every arq service serves through.
//!
//! Order, outermost first (as pinned in the architecture):
//!
//! | # | layer | what it does |
//! |---|---|---|
//! | 1 | catch-panic | a panic in any inner layer or handler becomes a 500 problem |
//! | 2 | request id | accepts a valid `X-Request-ID` or makes one, echoes it, scopes [`RequestId::current`](crate::RequestId::current) so every [`Problem`](crate::Problem) carries it |
//! | 3 | redaction | marks `Authorization`, cookies and API-key headers sensitive (request and response) |
//! | 4 | trace + metrics | one span per request (method, route template, status, latency, request/trace/span ids, tenant), `http_request_duration_seconds`, in-flight gauge; W3C trace context extracted |
//! | 5 | timeout | no response headers within `edge.request_timeout` → 504 (or 408) problem; the body must end within `edge.stream_timeout` |
//! | 6 | CORS | allowlist with wildcard subdomains; preflights answered here, before authentication |
//! | 7 | compression | gzip, br, zstd for bodies ≥ `edge.compression_min_size` that are not already compressed |
//! | 8 | *slot*: per-IP limit | [`EdgeStack::per_ip_limit`], e.g. a [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) keyed by client IP |
//! | 9 | *slot*: authentication | [`EdgeStack::authentication`] (arq-auth) |
//! | 10 | *slot*: tenant resolution | [`EdgeStack::tenant_resolution`] (arq-tenancy) |
//! | 11 | *slot*: per-principal limit | [`EdgeStack::per_principal_limit`] |
//! | 12 | body limit | bodies over `edge.body_limit` → 413 problem |
//! | 13 | routing | your `Router` |
//!
//! Layers 1–5 are one fused service (see `core.rs` for why); 6 and 7 are tower-http's.
//! Every rejection produced here is `application/problem+json`.
//!
//! # Example
//! ```
//! use arq_core::config::ArqConfig;
//! use arq_core::edge::EdgeStack;
//! use arq_core::metrics::MetricsRegistry;
//! use axum::{Router, routing::get};
//! use tower::ServiceExt;
//!
//! # tokio_test();
//! # fn tokio_test() { tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let registry = MetricsRegistry::new();
//! let stack = EdgeStack::from_config(&ArqConfig::default(), &registry).unwrap();
//! let service = stack.wrap(Router::new().route("/hello", get(|| async { "hi" })));
//! let response = service
//!     .oneshot(http::Request::get("/hello").body(axum::body::Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), 200);
//! assert!(response.headers().contains_key("x-request-id"));
//! # }) }
//! ```

mod core;
mod cors;
mod deadline;
mod limit;
mod route;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Request, header};
use pin_project_lite::pin_project;
use tower::util::BoxCloneSyncService;
use tower_http::compression::{Compression, CompressionLayer, Predicate};
use tower_http::cors::{Cors, CorsLayer};
use tower_layer::Layer;
use tower_service::Service;

pub use cors::{InvalidOriginPattern, OriginPattern};
pub use deadline::StreamDeadlineElapsed;

use crate::config::ArqConfig;
use crate::metrics::{MetricsError, MetricsRegistry};
use crate::telemetry::HttpMetrics;

/// The service type a slot layer wraps and returns.
pub type SlotService = BoxCloneSyncService<Request<Body>, Response, Infallible>;

type Slot = Arc<dyn Fn(SlotService) -> SlotService + Send + Sync>;

/// Why the edge stack cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// The HTTP metrics could not be registered (they already are, in this registry).
    #[error("cannot register the HTTP metrics: {0}")]
    Metrics(#[from] MetricsError),
}

/// Builds the edge stack from configuration; see the module docs for the order.
#[derive(Clone)]
pub struct EdgeStack {
    core: Arc<core::CoreSettings>,
    cors: Arc<CorsLayer>,
    compression: CompressionLayer<CompressPredicate>,
    body_limit: u64,
    per_ip_limit: Option<Slot>,
    authentication: Option<Slot>,
    tenant_resolution: Option<Slot>,
    per_principal_limit: Option<Slot>,
}

impl std::fmt::Debug for EdgeStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStack")
            .field("settings", &self.core)
            .field("body_limit", &self.body_limit)
            .field("per_ip_limit", &self.per_ip_limit.is_some())
            .field("authentication", &self.authentication.is_some())
            .field("tenant_resolution", &self.tenant_resolution.is_some())
            .field("per_principal_limit", &self.per_principal_limit.is_some())
            .finish()
    }
}

/// A tower layer that can fill one of the edge stack's slots (per-IP limit, authentication,
/// tenant resolution, per-principal limit): it wraps a [`SlotService`] in a cloneable,
/// thread-safe service that answers every request. Implemented for every such layer.
pub trait SlotLayer:
    Layer<
        SlotService,
        Service: Service<
            Request<Body>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
                     + Send
                     + Sync
                     + 'static,
    > + Send
    + Sync
    + 'static
{
}

impl<L> SlotLayer for L where
    L: Layer<
            SlotService,
            Service: Service<
                Request<Body>,
                Response = Response,
                Error = Infallible,
                Future: Send + 'static,
            > + Clone
                         + Send
                         + Sync
                         + 'static,
        > + Send
        + Sync
        + 'static
{
}

fn slot(layer: impl SlotLayer) -> Slot {
    Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner)))
}

impl EdgeStack {
    /// Builds the stack from validated configuration and registers the HTTP metrics
    /// (`http_request_duration_seconds`, `http_requests_in_flight`) in `registry`.
    pub fn from_config(config: &ArqConfig, registry: &MetricsRegistry) -> Result<Self, EdgeError> {
        let metrics = HttpMetrics::register(registry)?;
        Ok(Self::with_metrics(config, metrics))
    }

    /// Builds the stack with HTTP metric handles registered earlier (several stacks, one registry).
    pub fn with_metrics(config: &ArqConfig, metrics: HttpMetrics) -> Self {
        let edge = &config.edge;
        Self {
            core: Arc::new(core::CoreSettings {
                request_timeout: edge.request_timeout,
                stream_timeout: edge.stream_timeout,
                timeout_status: edge.timeout_status.status(),
                sensitive: edge.sensitive_headers.clone().into(),
                sampling_ratio: config.telemetry.sampling_ratio,
                metrics,
                #[cfg(feature = "otlp")]
                otlp: crate::telemetry::otlp::installed().map(|o| o.tracer().clone()),
            }),
            cors: Arc::new(cors::layer(&config.cors)),
            compression: CompressionLayer::new()
                .gzip(true)
                .br(true)
                .zstd(true)
                .no_deflate()
                .compress_when(CompressPredicate {
                    min_size: u64::from(edge.compression_min_size),
                }),
            body_limit: edge.body_limit,
            per_ip_limit: None,
            authentication: None,
            tenant_resolution: None,
            per_principal_limit: None,
        }
    }

    /// Exports a server span per request through `otlp` (feature `otlp`), instead of the
    /// pipeline [`init_with_otlp`](crate::telemetry::otlp::init_with_otlp) installed, if any.
    #[cfg(feature = "otlp")]
    pub fn otlp(mut self, otlp: &crate::telemetry::otlp::Otlp) -> Self {
        Arc::make_mut(&mut self.core).otlp = Some(otlp.tracer().clone());
        self
    }

    /// The coarse per-IP limit slot (layer 8).
    pub fn per_ip_limit(mut self, layer: impl SlotLayer) -> Self {
        self.per_ip_limit = Some(slot(layer));
        self
    }

    /// The authentication slot (layer 9): inserts the caller's identity (a
    /// [`CallerIdentity`](crate::CallerIdentity)) or rejects with a 401 problem.
    pub fn authentication(mut self, layer: impl SlotLayer) -> Self {
        self.authentication = Some(slot(layer));
        self
    }

    /// The tenant-resolution slot (layer 10): inserts the request's
    /// [`TenantId`](crate::TenantId); call [`crate::telemetry::record_tenant`] to log it.
    pub fn tenant_resolution(mut self, layer: impl SlotLayer) -> Self {
        self.tenant_resolution = Some(slot(layer));
        self
    }

    /// The per-principal limit slot (layer 11).
    pub fn per_principal_limit(mut self, layer: impl SlotLayer) -> Self {
        self.per_principal_limit = Some(slot(layer));
        self
    }

    /// Wraps a router in the stack.
    pub fn wrap(&self, router: Router) -> EdgeService {
        let routed = limit::BodyLimit::new(router.layer(route::RecordRouteLayer), self.body_limit);
        let slots: Vec<&Slot> = [
            &self.per_principal_limit,
            &self.tenant_resolution,
            &self.authentication,
            &self.per_ip_limit,
        ]
        .into_iter()
        .flatten()
        .collect();
        let innermost = if slots.is_empty() {
            Innermost::Plain { svc: routed }
        } else {
            // Innermost slot first, so the per-IP limit ends up outermost.
            let mut svc = BoxCloneSyncService::new(routed);
            for s in slots {
                svc = s(svc);
            }
            Innermost::Slotted { svc }
        };
        let cors = CorsGate {
            layer: Arc::clone(&self.cors),
            inner: CompressionGate {
                layer: self.compression.clone(),
                inner: innermost,
            },
        };
        EdgeService {
            inner: core::Core::new(cors, Arc::clone(&self.core)),
        }
    }
}

/// A router behind the edge stack: a `Clone` tower service from any request body to
/// `Response<axum::body::Body>`, never failing (every error is a response).
#[derive(Clone)]
pub struct EdgeService {
    inner: core::Core<CorsGate<CompressionGate<Innermost>>>,
}

impl std::fmt::Debug for EdgeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeService").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for EdgeService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.inner.call(req)
    }
}

/// The innermost part: the router, with or without slot layers.
#[derive(Clone)]
enum Innermost {
    Plain { svc: limit::BodyLimit<Router> },
    Slotted { svc: SlotService },
}

impl Service<Request<Body>> for Innermost {
    type Response = Response;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        limit::LimitFuture<<Router as Service<Request<Body>>>::Future>,
        <SlotService as Service<Request<Body>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Plain { svc } => svc.poll_ready(cx),
            Self::Slotted { svc } => svc.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self {
            Self::Plain { svc } => futures_util::future::Either::Left(svc.call(req)),
            Self::Slotted { svc } => futures_util::future::Either::Right(svc.call(req)),
        }
    }
}

/// Runs tower-http's CORS only for requests with an `Origin` header. Requests without one
/// (same-origin, service-to-service, health probes) are not CORS requests: they only need
/// `Vary` for caches, which is a static header here instead of one built per request. The
/// layer is shared, not cloned per request (a `Cors` clone copies its header lists).
#[derive(Clone)]
struct CorsGate<S> {
    layer: Arc<CorsLayer>,
    inner: S,
}

const VARY_CORS: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

impl<S, ResB> Service<Request<Body>> for CorsGate<S>
where
    S: Service<Request<Body>, Response = http::Response<ResB>> + Clone,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = CorsGateFuture<tower_http::cors::ResponseFuture<S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if req.headers().contains_key(header::ORIGIN) {
            // Hand the instance that was driven ready to the CORS service.
            let fresh = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, fresh);
            let mut cors: Cors<S> = self.layer.layer(ready);
            CorsGateFuture::Cors {
                fut: cors.call(req),
            }
        } else {
            CorsGateFuture::Plain {
                fut: self.inner.call(req),
            }
        }
    }
}

pin_project! {
    #[project = CorsGateProj]
    enum CorsGateFuture<C, P> {
        Cors { #[pin] fut: C },
        Plain { #[pin] fut: P },
    }
}

impl<C, P, ResB, E> Future for CorsGateFuture<C, P>
where
    C: Future<Output = Result<http::Response<ResB>, E>>,
    P: Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = Result<http::Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CorsGateProj::Cors { fut } => fut.poll(cx),
            CorsGateProj::Plain { fut } => {
                let mut response = std::task::ready!(fut.poll(cx))?;
                response.headers_mut().append(header::VARY, VARY_CORS);
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// Runs tower-http's compression only for requests that accept gzip, br or zstd, and boxes
/// the compressed body at once. Why: `CompressionBody` holds every encoder's state inline (about
/// 6 KB), and each move of a response carrying it is a copy of that size; for requests that
/// cannot be compressed there is nothing to gain from it.
#[derive(Clone)]
struct CompressionGate<S> {
    layer: CompressionLayer<CompressPredicate>,
    inner: S,
}

fn accepts_compression(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let zero_q = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            !zero_q
                && ["gzip", "br", "zstd", "*"]
                    .iter()
                    .any(|c| name.eq_ignore_ascii_case(c))
        })
}

impl<S> Service<Request<Body>> for CompressionGate<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        futures_util::future::MapOk<
            tower_http::compression::ResponseFuture<S::Future, CompressPredicate>,
            fn(http::Response<tower_http::compression::CompressionBody<Body>>) -> Response,
        >,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        use futures_util::TryFutureExt;
        if accepts_compression(req.headers()) {
            let boxed: fn(
                http::Response<tower_http::compression::CompressionBody<Body>>,
            ) -> Response = |r| r.map(Body::new);
            // Hand the instance that was driven ready to the compression service.
            let fresh = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, fresh);
            let mut compression: Compression<S, CompressPredicate> = self.layer.layer(ready);
            futures_util::future::Either::Left(compression.call(req).map_ok(boxed))
        } else {
            futures_util::future::Either::Right(self.inner.call(req))
        }
    }
}

/// Compress bodies of at least `min_size` bytes whose type is not already compressed.
#[derive(Debug, Clone, Copy)]
struct CompressPredicate {
    min_size: u64,
}

/// Content types that are already compressed (or must stream unbuffered) and gain nothing.
const NOT_COMPRESSED: [&str; 16] = [
    "image/",
    "video/",
    "audio/",
    "font/woff",
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/zstd",
    "application/x-bzip2",
    "application/x-xz",
    "application/x-7z-compressed",
    "application/x-rar-compressed",
    "application/pdf",
    "application/grpc",
    "application/wasm",
    "text/event-stream",
];

impl Predicate for CompressPredicate {
    fn should_compress<B>(&self, response: &http::Response<B>) -> bool
    where
        B: http_body::Body,
    {
        let size = http_body::Body::size_hint(response.body())
            .exact()
            .or_else(|| {
                response
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|v| v.parse().ok())
            });
        if size.is_some_and(|n| n < self.min_size) {
            return false;
        }
        let ctype = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ctype.starts_with("image/svg+xml") {
            return true;
        }
        !NOT_COMPRESSED.iter().any(|t| ctype.starts_with(t))
    }
}
