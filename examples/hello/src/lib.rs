//! The smallest arq service, shared by `main` and the tests (as in axum's `examples/testing`).
//!
//! [`app`] is the plain router; [`service`] puts it behind arq-core's edge stack with a
//! per-IP rate limit, `/metrics` and the health endpoints; `main` loads configuration and serves
//! it until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use arq_core::config::{ArqConfig, ConfigError, ConfigLoader};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::rate_limit::RateLimitLayer;
use arq_core::server::with_operational_routes;
use arq_core::{Problem, TenantId};
use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// What `/hello/{tenant}` answers.
#[derive(Debug, Serialize)]
pub struct Greeting {
    /// The greeting text.
    pub message: String,
    /// The tenant it was addressed to, in canonical form.
    pub tenant: TenantId,
}

/// The service's routes.
pub fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello from arq\n" }))
        .route("/hello/{tenant}", get(hello_tenant))
        .fallback(|| async { Problem::not_found("no such route") })
}

async fn hello_tenant(Path(raw): Path<String>) -> Result<Json<Greeting>, Problem> {
    let tenant: TenantId = raw
        .parse()
        .map_err(|e: arq_core::ParseTenantIdError| Problem::bad_request(e.to_string()))?;
    Ok(Json(Greeting {
        message: format!("hello, tenant {tenant}"),
        tenant,
    }))
}

/// Where configuration is read from: `ARQ_CONFIG_DIR`, else this example's `config/`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("ARQ_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config")))
}

/// Loads and validates the configuration (files, then `ARQ__*` variables).
pub fn load_config() -> Result<ArqConfig, ConfigError> {
    ArqConfig::load_from(&ConfigLoader::new(config_dir())).map(|(config, _)| config)
}

/// The app behind the full edge stack, with `/metrics`, `/health/live` and `/health/ready`.
pub fn service(
    config: &ArqConfig,
    registry: &MetricsRegistry,
    health: &Health,
) -> anyhow::Result<EdgeService> {
    let mut stack = EdgeStack::from_config(config, registry)?;
    if config.rate_limit.enabled {
        stack = stack.per_ip_limit(RateLimitLayer::from_config(&config.rate_limit)?);
    }
    Ok(stack.wrap(with_operational_routes(app(), health, registry)))
}
