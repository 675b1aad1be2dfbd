//! Step 2: arq-core — layered configuration, the edge stack, health, metrics, graceful shutdown.
//!
//! [`crate::load_settings`] reads `config/default.toml`, then `config/<ARQ_ENV>.toml`, then
//! `ARQ__SECTION__KEY` variables, and reports every mistake at once. [`service`] puts the router
//! behind arq-core's edge stack: catch-panic, request id (`X-Request-ID`), header redaction, W3C
//! trace context, a span and `http_request_duration_seconds` per request, the request timeout,
//! CORS, compression, a per-IP rate limit and the body limit, every rejection a problem+json. It
//! also serves `/metrics` (OpenMetrics) and `/health/live` / `/health/ready`. `main` binds an
//! [`arq_core::server::Server`], which stops on SIGTERM or Ctrl-C: readiness fails first, then
//! in-flight requests drain within `server.shutdown_timeout`.

use arq_core::config::{ArqConfig, Secret};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::health::{AmqpCheck, Health};
use arq_core::metrics::MetricsRegistry;
use arq_core::rate_limit::RateLimitLayer;
use arq_core::server::with_operational_routes;
use arq_tenancy::TenantPool;
use axum::Router;

/// Readiness: `[health]`'s checks, the tenant pool's `select 1` (step 4) and the broker (step 5).
pub fn health(config: &ArqConfig, tenants: &TenantPool, amqp_url: Option<&str>) -> Health {
    let mut health = tenants.register_health(Health::from_config(&config.health));
    if let Some(url) = amqp_url {
        health = health.with_check(AmqpCheck::new(Secret::from(url.to_owned())));
    }
    health
}

/// `router` behind the edge stack, with the per-IP limit of `[rate_limit]` when it is enabled,
/// `/metrics` and the health endpoints.
pub fn service(
    router: Router,
    config: &ArqConfig,
    registry: &MetricsRegistry,
    health: &Health,
) -> anyhow::Result<EdgeService> {
    let mut stack = EdgeStack::from_config(config, registry)?;
    if config.rate_limit.enabled {
        stack = stack.per_ip_limit(RateLimitLayer::from_config(&config.rate_limit)?);
    }
    Ok(stack.wrap(with_operational_routes(router, health, registry)))
}
