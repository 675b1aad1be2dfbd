//! The outbound HTTP client for service-to-service calls.
//!
//! Every request it sends carries the current request's `X-Request-ID`, a child of its W3C
//! trace context (`traceparent`/`tracestate`; a new root when there is none) and, once known,
//! its tenant (`X-Tenant-ID`) — unless the caller set them. Each call is recorded in
//! `http_client_request_duration_seconds` (labels `dependency`, `method`, `status_class`,
//! where transport failures are `error`).
//!
//! Layers, outermost first: metrics ⊃ context propagation ⊃ the dependency's resilience stack
//! ([`HttpClientBuilder::dependency`], from [`crate::resilience`]: retry ⊃ circuit breaker ⊃
//! bulkhead ⊃ per-attempt timeout) ⊃ an optional custom layer ([`HttpClientBuilder::resilience`])
//! ⊃ hyper's pooled client (HTTP/1.1 and HTTP/2, TLS through rustls, an optional client
//! certificate for mutual TLS).
//!
//! Retries: only idempotent requests (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or any request
//! carrying [`Idempotent`](crate::resilience::Idempotent)) are sent again, after a transport
//! error, a timeout, or a 5xx other than 501/505; a 429 or 503 with `Retry-After` waits that long
//! (capped by the retry policy). A request body is buffered so it can be replayed only when its
//! length is known and at most [`HttpClientBuilder::retry_body_limit`]; larger bodies and
//! streaming bodies are sent once. Breaker, bulkhead and timeout failures come back as
//! [`ClientError::CircuitOpen`], [`ClientError::BulkheadFull`] and [`ClientError::Timeout`]; the
//! resilience metrics (`arq_circuit_breaker_*`, `arq_bulkhead_*`, `arq_retry_attempts`,
//! `arq_timeouts`) are recorded by the dependency, labelled with its name.
//!
//! # Example
//! ```no_run
//! use arq_core::client::HttpClient;
//! use arq_core::metrics::MetricsRegistry;
//! use arq_core::resilience::{DependencyKind, ResilienceMetrics, ResilienceRegistry, ResilienceSettings};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = MetricsRegistry::new();
//! // Usually `layers.section::<ResilienceSettings>("resilience")?` from the loaded config.
//! let settings: ResilienceSettings =
//!     serde_json::from_str(r#"{"dependencies": {"billing": {"kind": "http", "max_attempts": 2}}}"#)?;
//! let resilience = ResilienceRegistry::from_settings(&settings, ResilienceMetrics::register(&metrics)?)?;
//!
//! let billing = HttpClient::builder("billing")
//!     .dependency(resilience.dependency("billing", DependencyKind::Http)?)
//!     .build(&metrics)?;
//! let response = billing.get("http://billing:8080/invoices/7").await?;
//! assert!(response.status().is_success());
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::{MetricsError, MetricsRegistry};
use crate::resilience::{CloneBody, Dependency, HttpClassifier, ResilienceError, RetryRequest};
use crate::{REQUEST_ID_HEADER, RequestId, TraceContext};

/// The header outbound calls carry the tenant in.
pub const TENANT_HEADER: HeaderName = HeaderName::from_static("x-tenant-id");

/// The service type a resilience layer wraps and returns.
pub type ClientService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// Why an outbound call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL could not be used.
    #[error("invalid request URL: {0}")]
    InvalidUrl(String),
    /// The attempt took longer than the per-attempt timeout.
    #[error("the call to {dependency} timed out after {timeout:?}")]
    Timeout {
        /// The dependency called.
        dependency: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Connecting, TLS, or the HTTP exchange failed.
    #[error("the call to {dependency} failed: {source}")]
    Transport {
        /// The dependency called.
        dependency: String,
        /// The underlying error.
        source: BoxError,
    },
    /// The dependency's circuit breaker is open: the call was not sent.
    #[error("the call to {dependency} was not sent: its circuit breaker is open{}", retry_after.map(|d| format!(" (retry in {} ms)", d.as_millis())).unwrap_or_default())]
    CircuitOpen {
        /// The dependency called.
        dependency: String,
        /// When the breaker lets a probe through, if known.
        retry_after: Option<Duration>,
    },
    /// The dependency's bulkhead is full: too many calls in flight and waiting.
    #[error("the call to {dependency} was not sent: too many calls to it are in flight")]
    BulkheadFull {
        /// The dependency called.
        dependency: String,
    },
    /// The request body could not be read for buffering.
    #[error("the request body for {dependency} could not be read: {source}")]
    Body {
        /// The dependency called.
        dependency: String,
        /// The body's error.
        source: BoxError,
    },
    /// A custom resilience layer refused or failed the call.
    #[error("the call to {dependency} was refused: {source}")]
    Refused {
        /// The dependency called.
        dependency: String,
        /// The layer's error.
        source: BoxError,
    },
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientBuildError {
    /// The client metrics could not be registered.
    #[error("cannot register the client metrics: {0}")]
    Metrics(#[from] MetricsError),
    /// The TLS identity or CA files could not be used.
    #[error("client TLS: {0}")]
    Tls(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    dependency: String,
    method: String,
    status_class: &'static str,
}

/// The client-side metrics, shared by every [`HttpClient`] built with the same registry handle.
#[derive(Clone, Debug)]
pub struct ClientMetrics {
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl ClientMetrics {
    /// Registers `http_client_request_duration_seconds` in `registry`.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let duration: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            });
        registry.register(
            "http_client_request_duration_seconds",
            "Outbound HTTP calls by dependency, method and status class (error: no response)",
            duration.clone(),
        )?;
        Ok(Self { duration })
    }
}

type Resilience = Arc<dyn Fn(ClientService) -> ClientService + Send + Sync>;

/// The largest request body buffered for replay by default: 64 KiB.
pub const DEFAULT_RETRY_BODY_LIMIT: usize = 64 * 1024;

/// A request body as the retry layer sees it: bytes it can send again, or a stream it cannot.
enum ReplayBody {
    Buffered(Bytes),
    Streaming(Body),
}

impl CloneBody for ReplayBody {
    fn try_clone_body(&self) -> Option<Self> {
        match self {
            Self::Buffered(b) => Some(Self::Buffered(b.clone())),
            Self::Streaming(_) => None,
        }
    }
}

impl From<ReplayBody> for Body {
    fn from(b: ReplayBody) -> Self {
        match b {
            ReplayBody::Buffered(b) => Body::from(b),
            ReplayBody::Streaming(b) => b,
        }
    }
}

type AttemptService =
    BoxCloneSyncService<Request<ReplayBody>, Response<Body>, ResilienceError<ClientError>>;

/// Builds an [`HttpClient`] for one dependency.
pub struct HttpClientBuilder {
    name: String,
    timeout: Duration,
    tls: Option<rustls::ClientConfig>,
    resilience: Option<Resilience>,
    dependency: Option<Dependency>,
    retry_body_limit: usize,
    metrics: Option<ClientMetrics>,
}

impl std::fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClientBuilder")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("resilience", &self.resilience.is_some())
            .field("dependency", &self.dependency)
            .field("retry_body_limit", &self.retry_body_limit)
            .finish_non_exhaustive()
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client TLS configuration outbound calls use unless told otherwise: ring, the safe
/// protocol versions and the public web roots.
pub(crate) fn default_tls() -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(|x| x.to_string())?
        .with_root_certificates(rustls::RootCertStore::from_iter(
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
        ))
        .with_no_client_auth())
}

impl HttpClientBuilder {
    /// The per-attempt timeout (default 10 s, the pinned external-call timeout) when no
    /// [`dependency`](Self::dependency) is set; a dependency's own timeout replaces it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Trusts the CA certificates in the PEM file `ca_file` (instead of the public web roots)
    /// and, when `identity` is given as `(cert_file, key_file)`, presents that certificate
    /// (mutual TLS).
    pub fn tls_files(
        mut self,
        ca_file: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, ClientBuildError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let e = |what: &str, p: &std::path::Path, err: &dyn std::fmt::Display| {
            ClientBuildError::Tls(format!("{what} {}: {err}", p.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in
            CertificateDer::pem_file_iter(ca_file).map_err(|x| e("cannot read", ca_file, &x))?
        {
            let ca = ca.map_err(|x| e("bad certificate in", ca_file, &x))?;
            roots
                .add(ca)
                .map_err(|x| e("unusable CA in", ca_file, &x))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .map_err(|x| ClientBuildError::Tls(x.to_string()))?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|x| e("cannot read certificates from", cert, &x))?;
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|x| e("cannot read key", key, &x))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|x| ClientBuildError::Tls(x.to_string()))?
            }
        };
        self.tls = Some(config);
        Ok(self)
    }

    /// Uses a ready rustls client configuration.
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Applies `dependency`'s resilience stack (retry ⊃ breaker ⊃ bulkhead ⊃ timeout) to every
    /// call, classifying responses with [`HttpClassifier`]: 5xx and transport errors are
    /// failures, idempotent requests are retried as the module docs describe.
    pub fn dependency(mut self, dependency: Dependency) -> Self {
        self.dependency = Some(dependency);
        self
    }

    /// The largest request body buffered so an idempotent request can be retried (default
    /// [`DEFAULT_RETRY_BODY_LIMIT`]); bodies of unknown or larger size are sent once.
    pub fn retry_body_limit(mut self, bytes: usize) -> Self {
        self.retry_body_limit = bytes;
        self
    }

    /// A custom tower layer around every attempt, inside the dependency's stack (it sees each
    /// attempt, retries included).
    pub fn resilience<L>(mut self, layer: L) -> Self
    where
        L: Layer<ClientService> + Send + Sync + 'static,
        L::Service:
            Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        self.resilience = Some(Arc::new(move |inner| {
            BoxCloneSyncService::new(tower::ServiceExt::map_err(layer.layer(inner), Into::into))
        }));
        self
    }

    /// Records into metric handles registered earlier (several clients, one registry).
    pub fn metrics(mut self, metrics: ClientMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the client, registering the client metrics in `registry` unless
    /// [`HttpClientBuilder::metrics`] gave handles.
    pub fn build(self, registry: &MetricsRegistry) -> Result<HttpClient, ClientBuildError> {
        let metrics = match self.metrics {
            Some(m) => m,
            None => ClientMetrics::register(registry)?,
        };
        let tls = match self.tls {
            Some(t) => t,
            None => default_tls().map_err(ClientBuildError::Tls)?,
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let hyper_client: hyper_util::client::legacy::Client<_, Body> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let name: Arc<str> = self.name.into();
        // Without a dependency stack the attempt carries the timeout itself.
        let timeout = self.dependency.is_none().then_some(self.timeout);
        let dep = Arc::clone(&name);
        let attempt = tower::service_fn(move |req: Request<Body>| {
            let client = hyper_client.clone();
            let dep = Arc::clone(&dep);
            async move {
                let exchange = client.request(req);
                let result = match timeout {
                    Some(t) => match tokio::time::timeout(t, exchange).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Err(BoxError::from(ClientError::Timeout {
                                dependency: dep.to_string(),
                                timeout: t,
                            }));
                        }
                    },
                    None => exchange.await,
                };
                result.map(|r| r.map(Body::new)).map_err(|e| {
                    BoxError::from(ClientError::Transport {
                        dependency: dep.to_string(),
                        source: Box::new(e),
                    })
                })
            }
        });
        let mut inner: ClientService = BoxCloneSyncService::new(attempt);
        if let Some(r) = &self.resilience {
            inner = r(inner);
        }
        let dep = Arc::clone(&name);
        let inner =
            tower::ServiceExt::map_request(inner, |req: Request<ReplayBody>| req.map(Body::from));
        let inner =
            tower::ServiceExt::map_err(inner, move |e: BoxError| into_client_error(&dep, e));
        let inner: AttemptService = match &self.dependency {
            None => {
                BoxCloneSyncService::new(tower::ServiceExt::map_err(inner, ResilienceError::Inner))
            }
            Some(d) => BoxCloneSyncService::new(Layer::layer(&d.layer_with(HttpClassifier), inner)),
        };
        Ok(HttpClient {
            dependency: name,
            inner,
            retry_body_limit: self.retry_body_limit,
            metrics,
        })
    }
}

fn into_client_error(dependency: &str, e: BoxError) -> ClientError {
    match e.downcast::<ClientError>() {
        Ok(c) => *c,
        Err(other) => ClientError::Refused {
            dependency: dependency.to_owned(),
            source: other,
        },
    }
}

/// A client for one dependency; clones share the connection pool and the resilience state.
#[derive(Clone)]
pub struct HttpClient {
    dependency: Arc<str>,
    inner: AttemptService,
    retry_body_limit: usize,
    metrics: ClientMetrics,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("dependency", &self.dependency)
            .finish_non_exhaustive()
    }
}

/// Adds the current request's id, trace context and tenant to outbound headers, keeping any the
/// caller set. Returns the trace context sent.
pub fn inject_context(headers: &mut http::HeaderMap) -> TraceContext {
    if !headers.contains_key(REQUEST_ID_HEADER)
        && let Some(id) = RequestId::current()
    {
        headers.insert(REQUEST_ID_HEADER, id.header_value().clone());
    }
    let sent = match crate::telemetry::current_trace() {
        Some(ctx) => ctx.child(),
        None => TraceContext::new_root(false),
    };
    if !headers.contains_key(crate::TRACEPARENT_HEADER) {
        sent.inject(headers);
    }
    if !headers.contains_key(TENANT_HEADER)
        && let Some(t) = crate::telemetry::current_tenant()
        && let Ok(v) = HeaderValue::from_str(&t.to_string())
    {
        headers.insert(TENANT_HEADER, v);
    }
    sent
}

impl HttpClient {
    /// A builder for calls to `dependency` (the name in metrics and errors).
    pub fn builder(dependency: impl Into<String>) -> HttpClientBuilder {
        HttpClientBuilder {
            name: dependency.into(),
            timeout: Duration::from_secs(10),
            tls: None,
            resilience: None,
            dependency: None,
            retry_body_limit: DEFAULT_RETRY_BODY_LIMIT,
            metrics: None,
        }
    }

    /// Sends `req` with the current request's context; see the module docs.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, ClientError> {
        inject_context(req.headers_mut());
        let method = req.method().to_string();
        let start = Instant::now();
        let req = self.replayable(req).await?;
        let result = tower::ServiceExt::oneshot(self.inner.clone(), req).await;
        let status_class = match &result {
            Ok(r) => match r.status().as_u16() / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                _ => "5xx",
            },
            Err(_) => "error",
        };
        self.metrics
            .duration
            .get_or_create(&Labels {
                dependency: self.dependency.to_string(),
                method,
                status_class,
            })
            .observe(start.elapsed().as_secs_f64());
        let dependency = || self.dependency.to_string();
        result.map_err(|e| match e {
            ResilienceError::Inner(c) => c,
            ResilienceError::CircuitOpen(open) => ClientError::CircuitOpen {
                dependency: dependency(),
                retry_after: open.retry_after(),
            },
            ResilienceError::BulkheadFull(_) => ClientError::BulkheadFull {
                dependency: dependency(),
            },
            ResilienceError::Timeout(t) => ClientError::Timeout {
                dependency: dependency(),
                timeout: t.after(),
            },
        })
    }

    /// Buffers the body of an idempotent request when its size is known and within the
    /// limit, so the retry layer can send it again; everything else streams, once.
    async fn replayable(&self, req: Request<Body>) -> Result<Request<ReplayBody>, ClientError> {
        use http_body::Body as _;
        let small = req
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= self.retry_body_limit as u64);
        if !(small && req.is_idempotent()) {
            return Ok(req.map(ReplayBody::Streaming));
        }
        let (parts, body) = req.into_parts();
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| ClientError::Body {
                dependency: self.dependency.to_string(),
                source: e.into(),
            })?
            .to_bytes();
        Ok(Request::from_parts(parts, ReplayBody::Buffered(bytes)))
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Response<Body>, ClientError> {
        let req = Request::get(url)
            .body(Body::empty())
            .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
        self.send(req).await
    }
}

impl Service<Request<Body>> for HttpClient {
    type Response = Response<Body>;
    type Error = ClientError;
    type Future = BoxFuture<'static, Result<Response<Body>, ClientError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}
