//! The API gateway: routes path prefixes to upstream services behind the edge stack.
//!
//! Enabled by the `gateway` feature. A generated platform's `gateway` crate is a thin binary
//! over this module and `arq-auth` (see `docs/gateway.md`).
//!
//! What a request meets, in order:
//!
//! 1. the [edge stack](crate::edge) — request id, trace context, timeouts, CORS (preflights
//!    answered before authentication), compression, and the slots the binary fills: the
//!    authentication layer (`arq-auth`'s, which puts a [`CallerIdentity`](crate::CallerIdentity)
//!    into the request) and the per-principal [rate limit](crate::rate_limit) (Redis-backed, so
//!    shared by every replica);
//! 2. routing: the longest route prefix under the gateway prefix, on segment boundaries
//!    (`/api/v1/users` serves `/api/v1/users/7`, never `/api/v1/usersx`); no route → 404;
//! 3. the route's checks: a route that is not declared [public](GatewayConfig::public) needs a
//!    verified identity (401 otherwise); the `X-Tenant-ID` sent upstream is the identity's
//!    tenant, and a client-supplied one that names another tenant is refused with 403;
//! 4. the upstream's [resilience stack](crate::resilience) (retry ⊃ breaker ⊃ bulkhead ⊃
//!    timeout, one [`Dependency`] per route, named after it): an
//!    open breaker or a full bulkhead answers 503 with `Retry-After`, an upstream that sends no
//!    response headers in time 504, an unreachable one 502 — all problem+json. Only idempotent
//!    requests without a body are retried: a streamed body cannot be sent twice;
//! 5. forwarding over hyper's pooled client (HTTP/1.1, or HTTP/2 per route): hop-by-hop headers
//!    (RFC 9110 §7.6.1, and every header `Connection` names) removed both ways,
//!    `X-Forwarded-For`/`-Proto`/`-Host` set, the request id and a child `traceparent`
//!    forwarded. Bodies stream both ways and are never buffered; WebSocket upgrades are tunnelled
//!    and server-sent events pass through (compression skips `text/event-stream`).
//!
//! Metrics: `arq_gateway_upstream_duration_seconds{route, upstream, status_class}` plus the
//! resilience metrics of each route's dependency (`arq_circuit_breaker_state{dependency}`, …)
//! and the edge stack's `http_request_duration_seconds` labelled by route template.
//! Readiness: [`Gateway::health_check`] fails when no upstream's breaker lets calls through;
//! [`Gateway::upstreams_router`] serves `/health/upstreams` with each upstream's state.
//!
//! # Example
//! ```
//! use arq_core::config::ArqConfig;
//! use arq_core::edge::EdgeStack;
//! use arq_core::gateway::{Gateway, GatewayConfig, RouteConfig};
//! use arq_core::metrics::MetricsRegistry;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = MetricsRegistry::new();
//! let config = GatewayConfig::new("/api/v1")
//!     .route("users", RouteConfig::new("/users", "http://127.0.0.1:3002"))
//!     .public("/users/signup");
//! let gateway = Gateway::builder(config).build(&registry)?;
//! let edge = EdgeStack::from_config(&ArqConfig::default(), &registry)?;
//! // The binary adds `.authentication(arq_auth::AuthLayer::new(verifier))` here.
//! let service = edge.wrap(gateway.router());
//! # drop(service);
//! # Ok(()) }
//! ```

mod config;
mod headers;
mod metrics;
mod proxy;
mod table;

use std::sync::Arc;

use axum::Router;
use serde_json::json;

pub use config::{GatewayConfig, RouteConfig};

use crate::health::{CheckFuture, HealthCheck};
use crate::metrics::{MetricsError, MetricsRegistry};
use crate::resilience::{CircuitState, ConfigError, Dependency, ResilienceMetrics};

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A route prefix (or the gateway prefix, or a public path) is malformed.
    #[error("route `{route}`: prefix {prefix:?} {reason}")]
    InvalidPrefix {
        /// The route (`gateway` for the gateway prefix, `public` for a public path).
        route: String,
        /// The prefix.
        prefix: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An upstream URL is not an absolute `http(s)://` URL.
    #[error("route `{route}`: upstream {upstream:?} {reason}")]
    InvalidUpstream {
        /// The route.
        route: String,
        /// The upstream URL.
        upstream: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two routes have the same prefix, or one's prefix contains the other's.
    #[error(
        "routes `{first}` ({first_prefix}) and `{second}` ({second_prefix}) overlap; each route needs its own prefix"
    )]
    Overlap {
        /// One route.
        first: String,
        /// Its prefix.
        first_prefix: String,
        /// The other route.
        second: String,
        /// Its prefix.
        second_prefix: String,
    },
    /// A public path lies under no route.
    #[error("public path {path:?} lies under no route")]
    PublicWithoutRoute {
        /// The path.
        path: String,
    },
    /// A route's resilience settings are invalid.
    #[error("route `{route}`: {source}")]
    Resilience {
        /// The route.
        route: String,
        /// What is wrong.
        source: ConfigError,
    },
    /// The platform manifest could not be read as gateway configuration.
    #[error("arq.toml: {0}")]
    Manifest(String),
    /// The gateway's metrics could not be registered.
    #[error("cannot register the gateway metrics: {0}")]
    Metrics(#[from] MetricsError),
    /// The upstream client's TLS configuration could not be built.
    #[error("upstream TLS: {0}")]
    Tls(String),
}

/// Builds a [`Gateway`].
#[derive(Debug)]
pub struct GatewayBuilder {
    config: GatewayConfig,
    require_identity: bool,
    forwarded_proto: &'static str,
    resilience_metrics: Option<ResilienceMetrics>,
    tls: Option<rustls::ClientConfig>,
}

impl GatewayBuilder {
    /// Whether routes that are not public need a verified identity (default: yes). Turn it
    /// off only when no authentication layer runs in front (a benchmark of the bare edge, an
    /// internal network that authenticates elsewhere).
    pub fn require_identity(mut self, on: bool) -> Self {
        self.require_identity = on;
        self
    }

    /// Whether clients reach the gateway over TLS (sets `X-Forwarded-Proto: https`; default
    /// `http`). `ArqConfig::server.tls.is_some()` is the usual value.
    pub fn client_tls(mut self, on: bool) -> Self {
        self.forwarded_proto = if on { "https" } else { "http" };
        self
    }

    /// Records the upstreams' breaker, bulkhead and retry metrics into handles registered
    /// earlier (default: registered in the registry passed to [`build`](Self::build)).
    pub fn resilience_metrics(mut self, metrics: ResilienceMetrics) -> Self {
        self.resilience_metrics = Some(metrics);
        self
    }

    /// The TLS configuration for `https://` upstreams (default: the public web roots).
    pub fn upstream_tls(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Validates the routes and builds the gateway, registering its metrics in `registry`.
    pub fn build(self, registry: &MetricsRegistry) -> Result<Gateway, GatewayError> {
        let (entries, public) = table::build(&self.config)?;
        let resilience = match self.resilience_metrics {
            Some(m) => m,
            None => ResilienceMetrics::register(registry)?,
        };
        let metrics = metrics::GatewayMetrics::register(registry)?;
        let tls = match self.tls {
            Some(t) => t,
            None => crate::client::default_tls().map_err(GatewayError::Tls)?,
        };
        let connector = || {
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http)
        };
        let executor = hyper_util::rt::TokioExecutor::new();
        let http1 =
            hyper_util::client::legacy::Client::builder(executor.clone()).build(connector());
        let http2 = hyper_util::client::legacy::Client::builder(executor)
            .http2_only(true)
            .build(connector());
        let shared = Arc::new(proxy::Shared {
            public,
            http1,
            http2,
            proto: self.forwarded_proto,
            require_identity: self.require_identity,
        });
        let mut routes = Vec::with_capacity(entries.len());
        for entry in entries {
            let settings = self.config.routes[&entry.name].resilience_settings();
            let wrap = |source| GatewayError::Resilience {
                route: entry.name.clone(),
                source,
            };
            let dependency = settings
                .resolve()
                .and_then(|c| Dependency::new(&entry.name, c, &resilience))
                .map_err(wrap)?;
            routes.push(Arc::new(proxy::RouteState {
                metrics: metrics.route(&entry.name, &entry.upstream),
                entry,
                dependency,
            }));
        }
        Ok(Gateway {
            inner: Arc::new(Inner { routes, shared }),
        })
    }
}

struct Inner {
    routes: Vec<Arc<proxy::RouteState>>,
    shared: Arc<proxy::Shared>,
}

/// The gateway: a router of validated routes over one pooled upstream client. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "routes",
                &self
                    .inner
                    .routes
                    .iter()
                    .map(|r| (&r.entry.full_prefix, &r.entry.upstream))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A builder for `config`.
    pub fn builder(config: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            config,
            require_identity: true,
            forwarded_proto: "http",
            resilience_metrics: None,
            tls: None,
        }
    }

    /// The routes as an axum router (each prefix registered as `PREFIX` and `PREFIX/{*rest}`,
    /// so the edge stack labels metrics by route); wrap it in the edge stack, and merge the
    /// operational routes into it.
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        for route in &self.inner.routes {
            let svc = proxy::RouteProxy {
                route: Arc::clone(route),
                shared: Arc::clone(&self.inner.shared),
            };
            let prefix = &route.entry.full_prefix;
            router = router
                .route_service(prefix, svc.clone())
                .route_service(&format!("{prefix}/"), svc.clone())
                .route_service(&format!("{prefix}/{{*rest}}"), svc);
        }
        router
    }

    /// The dependency (breaker, bulkhead, retries, timeout) of route `name`.
    pub fn dependency(&self, name: &str) -> Option<&Dependency> {
        self.inner
            .routes
            .iter()
            .find(|r| r.entry.name == name)
            .map(|r| &r.dependency)
    }

    /// Each upstream's name, URL and breaker state, as `/health/upstreams` reports them.
    pub fn upstreams(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for r in &self.inner.routes {
            let state = r.dependency.breaker().state();
            out.insert(
                r.entry.name.clone(),
                json!({
                    "upstream": r.entry.upstream,
                    "prefix": r.entry.full_prefix,
                    "breaker": format!("{state:?}"),
                    "status": if admits(state) { "pass" } else { "fail" },
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    /// `GET /health/upstreams`: [`upstreams`](Self::upstreams) as JSON; 200 when every
    /// upstream admits calls, 503 otherwise.
    pub fn upstreams_router(&self) -> Router {
        let gw = self.clone();
        Router::new().route(
            "/health/upstreams",
            axum::routing::get(move || {
                let gw = gw.clone();
                async move {
                    let all = gw
                        .inner
                        .routes
                        .iter()
                        .all(|r| admits(r.dependency.breaker().state()));
                    let status = if all {
                        http::StatusCode::OK
                    } else {
                        http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(gw.upstreams()))
                }
            }),
        )
    }

    /// A readiness check (`upstreams`) that fails when no upstream admits calls (every breaker
    /// open): one unhealthy service must not take the whole gateway out of its load balancer,
    /// but a gateway that can reach nothing should not receive traffic.
    pub fn health_check(&self) -> impl HealthCheck {
        UpstreamsCheck(self.clone())
    }
}

fn admits(state: CircuitState) -> bool {
    !matches!(state, CircuitState::Open | CircuitState::ForcedOpen)
}

struct UpstreamsCheck(Gateway);

impl HealthCheck for UpstreamsCheck {
    fn name(&self) -> &str {
        "upstreams"
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let routes = &self.0.inner.routes;
            let down: Vec<&str> = routes
                .iter()
                .filter(|r| !admits(r.dependency.breaker().state()))
                .map(|r| r.entry.name.as_str())
                .collect();
            if !routes.is_empty() && down.len() == routes.len() {
                Err(format!(
                    "every upstream's breaker is open: {}",
                    down.join(", ")
                ))
            } else {
                Ok(())
            }
        })
    }
}
