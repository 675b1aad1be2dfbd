//! A plain axum service that adopts the arq crates one at a time, shared by `main` and the tests.
//!
//! The service keeps tenant-scoped notes. Each step is one module and adds one crate; `main.rs`
//! composes them, and the example's README walks through them in order:
//!
//! | step | module | adds |
//! |---|---|---|
//! | 1 | [`step1_router`] | the plain axum router: routes, JSON types, validation (no arq) |
//! | 2 | [`step2_edge`] | arq-core: layered config, the edge stack (request id, trace context, timeouts, body limit, problem+json), per-IP rate limit, `/metrics`, `/health/*`, graceful shutdown |
//! | 3 | [`step3_auth`] | arq-auth: RS256 tokens checked against a JWKS (URL or local file), the `Principal`, RBAC permissions on every route |
//! | 4 | [`step4_tenancy`] | arq-tenancy: the tenant from the token, a transaction per request under PostgreSQL row-level security, migrations, the start-up audit |
//! | 5 | [`step5_events`] | arq-queue: `note.created` written to the outbox in the request's transaction, relayed to RabbitMQ, consumed by a worker in the same process |
//!
//! [`app`] is the router with steps 1, 3 and 4 applied; [`step2_edge::service`] puts it behind the
//! edge stack.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arq_auth::{AuthLayer, RbacConfig, Verifier};
use arq_core::Problem;
use arq_core::config::{ArqConfig, ConfigLoader, Layers};
use arq_tenancy::{TenantLayer, TenantPool, TenantTxLayer};
use axum::Router;

pub mod step1_router;
pub mod step2_edge;
pub mod step3_auth;
pub mod step4_tenancy;
pub mod step5_events;

/// The service's name, used in log lines and error messages.
pub const NAME: &str = "adopt";

/// Where configuration is read from: `ARQ_CONFIG_DIR`, else this example's `config/`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("ARQ_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config")))
}

/// Everything the service reads from its configuration.
#[derive(Debug)]
pub struct Settings {
    /// Step 2: arq-core's sections (server, edge, CORS, rate limits, telemetry, health).
    pub arq: ArqConfig,
    /// Step 3: `[auth]`.
    pub auth: step3_auth::AuthSettings,
    /// Step 3: `[rbac]`, roles and their permissions.
    pub rbac: RbacConfig,
    /// Step 4: `[database]`.
    pub database: step4_tenancy::DatabaseSettings,
    /// Step 5: `[events]`.
    pub events: step5_events::EventSettings,
    /// The directory the configuration was read from (relative paths in it resolve there).
    pub dir: PathBuf,
}

/// Loads and validates the configuration in [`config_dir`] (files, then `ARQ__*` variables).
pub fn load_settings() -> anyhow::Result<Settings> {
    load_settings_from(&ConfigLoader::new(config_dir()), &config_dir())
}

/// Loads and validates the configuration with `loader`; `dir` is where relative paths resolve.
pub fn load_settings_from(loader: &ConfigLoader, dir: &Path) -> anyhow::Result<Settings> {
    let (arq, layers) = ArqConfig::load_from(loader)?;
    settings_from(arq, &layers, dir)
}

fn settings_from(arq: ArqConfig, layers: &Layers, dir: &Path) -> anyhow::Result<Settings> {
    Ok(Settings {
        arq,
        auth: layers.section("auth").context("[auth]")?,
        rbac: layers.section("rbac").context("[rbac]")?,
        database: layers.section("database").context("[database]")?,
        events: layers.section("events").context("[events]")?,
        dir: dir.to_path_buf(),
    })
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Step 5: the exchange `note.created` is published to.
    pub exchange: Arc<str>,
}

/// The notes API with steps 1, 3 and 4 applied: the routes (step 1) behind authentication
/// (step 3), tenant resolution and a tenant transaction per request (step 4), which commits
/// below status 400 and rolls back otherwise. Unknown paths are a 404 problem.
pub fn app(
    verifier: Verifier,
    tenants: TenantPool,
    events: &step5_events::EventSettings,
) -> Router {
    let state = AppState {
        exchange: events.exchange.as_str().into(),
    };
    step1_router::routes()
        .with_state(state)
        // Step 4. The last layer added runs first: authenticate, resolve the tenant, begin.
        .layer(TenantTxLayer::new(tenants))
        .layer(TenantLayer::new())
        // Step 3.
        .layer(AuthLayer::new(verifier))
        .fallback(|| async { Problem::not_found("no such route") })
}
