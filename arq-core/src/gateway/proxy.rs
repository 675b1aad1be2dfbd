//! The per-route proxy service: authentication and tenant checks, header hygiene, the
//! upstream's resilience stack, and streaming both ways.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Request, StatusCode, Uri, Version, header};
use http_body::Body as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use super::headers;
use super::metrics::RouteMetrics;
use super::table::{RouteEntry, under};
use crate::client::TENANT_HEADER;
use crate::resilience::{Dependency, HttpClassifier, Idempotency, RetryRequest};
use crate::{CallerIdentity, IntoProblem, Problem, TenantId};

/// The pooled client, shared by every route: hyper keeps one pool per upstream authority.
pub(crate) type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// What every route shares.
pub(crate) struct Shared {
    /// Full public prefixes (gateway prefix included).
    pub(crate) public: Vec<String>,
    /// HTTP/1.1 upstreams (and `https://` upstreams that negotiate HTTP/2 by ALPN).
    pub(crate) http1: UpstreamClient,
    /// `http://` upstreams spoken to in HTTP/2 with prior knowledge.
    pub(crate) http2: UpstreamClient,
    /// `X-Forwarded-Proto`.
    pub(crate) proto: &'static str,
    /// Whether non-public routes need a verified identity (off only for an edge without
    /// authentication, e.g. a benchmark or a trusted internal network).
    pub(crate) require_identity: bool,
}

/// One route's state.
pub(crate) struct RouteState {
    pub(crate) entry: RouteEntry,
    pub(crate) dependency: Dependency,
    pub(crate) metrics: RouteMetrics,
}

/// The service answering one route.
#[derive(Clone)]
pub(crate) struct RouteProxy {
    pub(crate) route: Arc<RouteState>,
    pub(crate) shared: Arc<Shared>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request<Body>> for RouteProxy {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Admission (breaker, bulkhead) is decided per call, where a refusal can be answered.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

/// Why a request's `X-Tenant-ID` is refused.
#[derive(Debug, Clone, Copy)]
enum TenantRefusal {
    /// Not a tenant id: 400.
    Malformed,
    /// A tenant the identity is not a member of: 403.
    NotMember,
}

impl IntoResponse for TenantRefusal {
    fn into_response(self) -> Response {
        match self {
            Self::Malformed => Problem::bad_request("X-Tenant-ID must be a UUID"),
            Self::NotMember => {
                Problem::forbidden("X-Tenant-ID names a tenant the credentials do not belong to")
            }
        }
        .into_response()
    }
}

/// The caller's tenant: the one the verified identity belongs to. A client-supplied
/// `X-Tenant-ID` must name a tenant the identity is a member of (403 otherwise); without an
/// identity the header is dropped, since nothing vouches for it.
fn resolve_tenant(
    headers: &http::HeaderMap,
    identity: Option<&CallerIdentity>,
) -> Result<Option<TenantId>, TenantRefusal> {
    let Some(identity) = identity else {
        return Ok(None);
    };
    match headers.get(&TENANT_HEADER) {
        None => Ok(identity.home_tenant()),
        Some(raw) => {
            let tenant: TenantId = raw
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(TenantRefusal::Malformed)?;
            if identity.is_member_of(tenant) {
                Ok(Some(tenant))
            } else {
                Err(TenantRefusal::NotMember)
            }
        }
    }
}

/// The upstream URI: the route's scheme and authority, the path with the gateway prefix cut
/// and the upstream's base path put in front, and the query. When there is nothing to cut or
/// prepend (no gateway prefix, no base path), the client's path and query are reused as they
/// are, without copying them.
fn upstream_uri(entry: &RouteEntry, uri: &Uri) -> Result<Uri, http::Error> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(entry.scheme.clone());
    parts.authority = Some(entry.authority.clone());
    parts.path_and_query = match uri.path_and_query() {
        Some(pq) if entry.strip == 0 && entry.base_path.is_empty() => Some(pq.clone()),
        _ => {
            let path = uri.path();
            // The route matched on the full prefix, so the gateway prefix is there to cut.
            let rest = path.get(entry.strip..).unwrap_or(path);
            let query = uri.query();
            let mut pq = String::with_capacity(
                entry.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1),
            );
            pq.push_str(&entry.base_path);
            pq.push_str(rest);
            if let Some(q) = query {
                pq.push('?');
                pq.push_str(q);
            }
            Some(http::uri::PathAndQuery::try_from(pq)?)
        }
    };
    Ok(Uri::from_parts(parts)?)
}

/// Hands out a value once per attempt: a copy while more attempts may follow, the value
/// itself on the last one, so a request that cannot be retried is never copied.
struct PerAttempt<T> {
    value: Option<T>,
    left: u32,
}

impl<T: Clone + Default> PerAttempt<T> {
    fn new(value: T, attempts: u32) -> Self {
        Self {
            value: Some(value),
            left: attempts.max(1),
        }
    }

    fn next(&mut self) -> T {
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            self.value.take().unwrap_or_default()
        } else {
            self.value.clone().unwrap_or_default()
        }
    }
}

impl RouteProxy {
    async fn forward(self, mut req: Request<Body>) -> Response {
        let shared = &self.shared;
        let route = &self.route;
        let identity = req.extensions().get::<CallerIdentity>();
        if identity.is_none()
            && shared.require_identity
            && !shared.public.iter().any(|p| under(req.uri().path(), p))
        {
            let mut r = Problem::unauthorized("this route needs a bearer token or an API key")
                .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let tenant = match resolve_tenant(req.headers(), identity) {
            Ok(t) => t,
            Err(refusal) => return refusal.into_response(),
        };
        let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let Ok(uri) = upstream_uri(&route.entry, req.uri()) else {
            return Problem::bad_request("the request path cannot be forwarded").into_response();
        };
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });

        // Decide retries before the body is touched: only an idempotent request without a
        // body can be sent twice; a streamed body is gone once sent.
        let (parts, body) = req.into_parts();
        let probe = Request::from_parts(parts, ());
        let bodyless = body.is_end_stream();
        let idempotency = if bodyless && !upgrade && probe.is_idempotent() {
            Idempotency::Idempotent
        } else {
            Idempotency::NotIdempotent
        };
        let (parts, ()) = probe.into_parts();
        let method = parts.method;
        let mut headers = parts.headers;

        let prior_chain = headers::for_upstream(&mut headers, upgrade, shared.proto, host);
        if let Some(h) = &route.entry.host_header {
            headers.insert(header::HOST, h.clone());
        }
        if let Some(t) = tenant {
            crate::telemetry::record_tenant(&t);
        }

        let (client, version) = if route.entry.http2 {
            (&shared.http2, Version::HTTP_2)
        } else {
            (&shared.http1, Version::HTTP_11)
        };
        let attempts = match idempotency {
            Idempotency::Idempotent => route.dependency.config().retry.max_attempts,
            _ => 1,
        };
        let mut headers = PerAttempt::new(headers, attempts);
        let mut uri = PerAttempt::new(uri, attempts);
        let mut body = Some(body);
        let start = Instant::now();
        let result = route
            .dependency
            .call_with(idempotency, &HttpClassifier, || {
                // Only bodyless requests are ever retried, so a second attempt sends no body.
                let mut r = Request::new(body.take().unwrap_or_default());
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri.next();
                *r.version_mut() = version;
                let h = r.headers_mut();
                *h = headers.next();
                if let Some(v) =
                    peer.and_then(|ip| headers::forwarded_for(prior_chain.as_deref(), ip))
                {
                    h.insert(headers::X_FORWARDED_FOR, v);
                }
                // The request id and trace context are the gateway's (the edge stack made them
                // from the client's when valid): each attempt continues the gateway's span.
                crate::client::inject_context(h);
                client.request(r)
            })
            .await;
        let elapsed = start.elapsed().as_secs_f64();
        match result {
            Ok(mut response) => {
                route.metrics.observe(Some(response.status()), elapsed);
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_upgrade {
                        tunnel(client_side, hyper::upgrade::on(&mut response));
                        let (parts, _) = response.into_parts();
                        return Response::from_parts(parts, Body::empty());
                    }
                    return Problem::new(StatusCode::BAD_GATEWAY)
                        .with_detail("the upstream switched protocols without being asked to")
                        .into_response();
                }
                headers::strip_hop_by_hop(response.headers_mut(), false);
                response.map(Body::new)
            }
            Err(e) => {
                if !e.is_rejection() {
                    route.metrics.observe(None, elapsed);
                }
                e.into_problem().into_response()
            }
        }
    }
}

/// Joins the client's and the upstream's upgraded connections and copies bytes both ways
/// until either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "protocol switch failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
