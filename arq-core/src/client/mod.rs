//! The outbound HTTP client for service-to-service calls.
//!
//! Every request it sends carries the current request's `X-Request-ID`, a child of its W3C
//! trace context (`traceparent`/`tracestate`; a new root when there is none) and, once known,
//! its tenant (`X-Tenant-ID`) — unless the caller set them. Each call is recorded in
//! `http_client_request_duration_seconds` (labels `dependency`, `method`, `status_class`,
//! where transport failures are `error`).
//!
//! Layers, outermost first: metrics ⊃ context propagation ⊃ the per-dependency resilience
//! slot ([`HttpClientBuilder::resilience`]: retry ⊃ breaker ⊃ bulkhead ⊃ per-attempt timeout) ⊃
//! the per-attempt timeout ⊃ hyper's pooled client (HTTP/1.1 and HTTP/2, TLS through rustls, an
//! optional client certificate for mutual TLS).
//!
//! # Example
//! ```no_run
//! use arq_core::client::HttpClient;
//! use arq_core::metrics::MetricsRegistry;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let billing = HttpClient::builder("billing").build(&MetricsRegistry::new())?;
//! let response = billing.get("http://billing:8080/invoices/7").await?;
//! assert!(response.status().is_success());
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::{MetricsError, MetricsRegistry};
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
    /// A resilience layer refused or failed the call (open breaker, full bulkhead, …).
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

/// Builds an [`HttpClient`] for one dependency.
pub struct HttpClientBuilder {
    dependency: String,
    timeout: Duration,
    tls: Option<rustls::ClientConfig>,
    resilience: Option<Resilience>,
    metrics: Option<ClientMetrics>,
}

impl std::fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClientBuilder")
            .field("dependency", &self.dependency)
            .field("timeout", &self.timeout)
            .field("resilience", &self.resilience.is_some())
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
    /// The per-attempt timeout (default 10 s, the pinned external-call timeout).
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

    /// The per-dependency resilience slot: a tower layer (from the resilience module: retry ⊃
    /// breaker ⊃ bulkhead ⊃ timeout) wrapped around every attempt.
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
        let dependency: Arc<str> = self.dependency.into();
        let timeout = self.timeout;
        let dep = Arc::clone(&dependency);
        let attempt = tower::service_fn(move |req: Request<Body>| {
            let client = hyper_client.clone();
            let dep = Arc::clone(&dep);
            async move {
                match tokio::time::timeout(timeout, client.request(req)).await {
                    Ok(Ok(r)) => Ok(r.map(Body::new)),
                    Ok(Err(e)) => Err(BoxError::from(ClientError::Transport {
                        dependency: dep.to_string(),
                        source: Box::new(e),
                    })),
                    Err(_) => Err(BoxError::from(ClientError::Timeout {
                        dependency: dep.to_string(),
                        timeout,
                    })),
                }
            }
        });
        let mut inner: ClientService = BoxCloneSyncService::new(attempt);
        if let Some(r) = &self.resilience {
            inner = r(inner);
        }
        Ok(HttpClient {
            dependency,
            inner,
            metrics,
        })
    }
}

/// A client for one dependency; clones share the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    dependency: Arc<str>,
    inner: ClientService,
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
            dependency: dependency.into(),
            timeout: Duration::from_secs(10),
            tls: None,
            resilience: None,
            metrics: None,
        }
    }

    /// Sends `req` with the current request's context; see the module docs.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, ClientError> {
        inject_context(req.headers_mut());
        let method = req.method().to_string();
        let start = Instant::now();
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
        result.map_err(|e| match e.downcast::<ClientError>() {
            Ok(c) => *c,
            Err(other) => ClientError::Refused {
                dependency: self.dependency.to_string(),
                source: other,
            },
        })
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
