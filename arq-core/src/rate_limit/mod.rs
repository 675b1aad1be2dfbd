//! Rate limiting: one atomic multi-quota GCRA decision per request (600/min and 10 000/hour by
//! default), keyed by principal, API key, tenant or client IP.
//!
//! - [`LocalLimiter`]: in process, on governor's monotonic clock, bounded memory.
//! - [`RedisLimiter`]: shared by replicas; one Lua script (`EVALSHA`, one round trip) per
//!   decision using Redis's clock; when Redis fails, the configured policy decides: a local
//!   limiter of the same quotas (default), fail open, or fail closed (503).
//! - [`RateLimitLayer`]: the tower layer for the edge stack's limit slots. Admitted responses
//!   carry `RateLimit-Policy`, `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//!   (draft-ietf-httpapi-ratelimit-headers-07, describing the tightest quota); refusals are 429
//!   problems with `Retry-After` (whole seconds, at least 1) and the same headers.
//!
//! The client IP comes from the connection, or from `X-Forwarded-For` only when the connection
//! comes from a configured trusted proxy: the header is read right to left, skipping trusted
//! proxies, and the first untrusted address is the client.

mod gcra;
mod local;
mod redis;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

pub use gcra::{Decision, Quota, QuotaState, QuotaStates};
pub use local::LocalLimiter;
pub use redis::{RedisLimiter, RedisLimiterError};

use crate::config::{RateLimitBackend, RateLimitConfig, RateLimitKey};
use crate::{CallerIdentity, Problem, TenantId};

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit-Limit`.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// A limiter: local or Redis-backed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Limiter {
    /// In process.
    Local(LocalLimiter),
    /// In Redis.
    Redis(Box<RedisLimiter>),
}

impl Limiter {
    /// Builds the limiter `[rate_limit]` describes.
    pub fn from_config(config: &RateLimitConfig) -> Result<Self, RedisLimiterError> {
        let quotas = quotas(config);
        Ok(match (config.backend, &config.redis_url) {
            (RateLimitBackend::Redis, Some(url)) => Self::Redis(Box::new(RedisLimiter::new(
                url.expose(),
                config.key_prefix.clone(),
                quotas,
                config.redis_timeout,
                config.on_redis_error,
                config.max_keys,
            )?)),
            _ => Self::Local(LocalLimiter::new(quotas, config.max_keys)),
        })
    }

    /// Decides one request for `key`.
    pub async fn check(&self, key: &str) -> Decision {
        match self {
            Self::Local(l) => l.check(key),
            Self::Redis(r) => r.check(key).await,
        }
    }

    fn quotas(&self) -> &[Quota] {
        match self {
            Self::Local(l) => l.quotas(),
            Self::Redis(r) => r.quotas(),
        }
    }
}

/// The per-minute and per-hour quotas of `[rate_limit]` (validated to be at least 1).
pub fn quotas(config: &RateLimitConfig) -> Vec<Quota> {
    [
        Quota::per_minute(config.per_minute),
        Quota::per_hour(config.per_hour),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Resolves the client IP: the peer, or — only when the peer is a trusted proxy — the first
/// untrusted address in `X-Forwarded-For`, read right to left.
///
/// # Example
/// ```
/// use arq_core::rate_limit::client_ip;
/// use http::HeaderMap;
///
/// let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
/// let mut h = HeaderMap::new();
/// h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap());
/// // From a trusted proxy: the rightmost untrusted hop.
/// assert_eq!(client_ip("10.0.0.1".parse().unwrap(), &h, &trusted).to_string(), "203.0.113.9");
/// // From anyone else: the header is ignored.
/// assert_eq!(client_ip("198.51.100.7".parse().unwrap(), &h, &trusted).to_string(), "198.51.100.7");
/// ```
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Garbage from beyond the last trusted proxy: the last good hop is the client.
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// Extracts the rate-limit key of a request.
#[derive(Debug, Clone)]
pub struct KeyExtractor {
    key: RateLimitKey,
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl KeyExtractor {
    /// Keys by `key`, trusting `X-Forwarded-For` from `trusted_proxies` only.
    pub fn new(key: RateLimitKey, trusted_proxies: Vec<ipnet::IpNet>) -> Self {
        Self {
            key,
            trusted_proxies: trusted_proxies.into(),
        }
    }

    /// The key of `req` (`p:<subject>`, `k:<sha-256 prefix>`, `t:<tenant>` or `ip:<address>`);
    /// when the configured source is absent, the client IP.
    pub fn key_of<B>(&self, req: &Request<B>) -> String {
        let ext = req.extensions();
        match self.key {
            RateLimitKey::Principal => {
                if let Some(id) = ext.get::<CallerIdentity>() {
                    return format!("p:{}", id.subject());
                }
            }
            RateLimitKey::ApiKey => {
                if let Some(k) = req.headers().get(API_KEY_HEADER) {
                    use sha2::Digest;
                    let digest = sha2::Sha256::digest(k.as_bytes());
                    let mut s = String::from("k:");
                    for b in &digest[..16] {
                        s.push_str(&format!("{b:02x}"));
                    }
                    return s;
                }
            }
            RateLimitKey::Tenant => {
                let tenant = ext
                    .get::<TenantId>()
                    .copied()
                    .or_else(|| ext.get::<CallerIdentity>().and_then(|i| i.home_tenant()));
                if let Some(t) = tenant {
                    return format!("t:{t}");
                }
            }
            RateLimitKey::ClientIp => {}
        }
        let peer = ext
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        format!(
            "ip:{}",
            client_ip(peer, req.headers(), &self.trusted_proxies)
        )
    }
}

/// The rate-limit layer for the edge stack's slots.
///
/// # Example
/// ```
/// use arq_core::config::ArqConfig;
/// use arq_core::edge::EdgeStack;
/// use arq_core::metrics::MetricsRegistry;
/// use arq_core::rate_limit::RateLimitLayer;
///
/// let config = ArqConfig::default();
/// let stack = EdgeStack::from_config(&config, &MetricsRegistry::new())
///     .unwrap()
///     .per_principal_limit(RateLimitLayer::from_config(&config.rate_limit).unwrap());
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
    keys: KeyExtractor,
    policy: HeaderValue,
}

impl RateLimitLayer {
    /// A layer deciding with `limiter`, keyed by `keys`.
    pub fn new(limiter: Arc<Limiter>, keys: KeyExtractor) -> Self {
        let policy = limiter
            .quotas()
            .iter()
            .map(|q| format!("{};w={}", q.limit(), q.period().as_secs()))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            limiter,
            keys,
            policy: HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("")),
        }
    }

    /// The layer `[rate_limit]` describes.
    pub fn from_config(config: &RateLimitConfig) -> Result<Self, RedisLimiterError> {
        Ok(Self::new(
            Arc::new(Limiter::from_config(config)?),
            KeyExtractor::new(config.key, config.trusted_proxies.clone()),
        ))
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The rate-limit service; see [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

fn secs_ceil(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn set_headers(headers: &mut HeaderMap, policy: &HeaderValue, d: &Decision) {
    let Some(q) = d.tightest() else { return };
    headers.insert(RATELIMIT_POLICY, policy.clone());
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(q.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(q.remaining));
    let reset = if d.allowed {
        secs_ceil(q.reset)
    } else {
        // A refused client may retry after Retry-After; never tell it a shorter reset.
        secs_ceil(q.reset).max(secs_ceil(d.retry_after).max(1))
    };
    headers.insert(RATELIMIT_RESET, HeaderValue::from(reset));
}

impl<S> Service<Request<Body>> for RateLimit<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let key = self.layer.keys.key_of(&req);
        let layer = self.layer.clone();
        let mut inner = self.inner.clone();
        std::mem::swap(&mut self.inner, &mut inner);
        Box::pin(async move {
            let decision = layer.limiter.check(&key).await;
            if decision.allowed {
                let mut response = inner.call(req).await?;
                set_headers(response.headers_mut(), &layer.policy, &decision);
                return Ok(response);
            }
            let mut response = if decision.degraded && decision.quotas.is_empty() {
                // Fail-closed while the shared limiter is unreachable.
                Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .with_detail("the rate limiter is unavailable; retry after the time given in Retry-After")
                    .with_retry_after(secs_ceil(decision.retry_after))
                    .into_response()
            } else {
                Problem::too_many_requests(secs_ceil(decision.retry_after)).into_response()
            };
            set_headers(response.headers_mut(), &layer.policy, &decision);
            Ok(response)
        })
    }
}
