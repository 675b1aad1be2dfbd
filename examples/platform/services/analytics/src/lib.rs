//! The analytics service, shared by `main` and the tests.
//!
//! It consumes the domain events the other services publish through their transactional outboxes
//! (`task.*`, `project.*`, `workspace.*`, `membership.*`, `user.*`, `invitation.*`) and counts
//! them per tenant, per day and per type ([`events`]: idempotent by message id, a redelivery
//! changes nothing; `workspace.created` also records the tenant). Reports over a range of days
//! are requested through the API and generated asynchronously ([`reports`]): the request writes
//! the report row and a `report.generate` message to the outbox in one transaction, the relay
//! publishes it ([`queue`]), and the `report.generate` consumer (prefetch 5, concurrency 5)
//! computes the result. The raw counts are served by [`daily`].
//!
//! [`app`] serves `/analytics/reports` and `/analytics/daily` behind bearer-token
//! authentication ([`arq_auth::AuthLayer`]), the RBAC permission `read:analytics` from `[rbac]`,
//! and tenant resolution. Writes run in a transaction scoped to the caller's tenant by
//! PostgreSQL row-level security ([`arq_tenancy`]); reads run in a read-only tenant transaction,
//! on the read replica when `DATABASE_REPLICA_URL` is set and it answers
//! ([`TenantPool::begin_read_only`]). `/openapi.json` describes the API.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
/// `[auth]`: which access tokens the service accepts, arq-auth's settings type (the name this
/// crate's callers know).
pub use arq_auth::AuthSettings;
use arq_auth::{AuthLayer, RbacConfig, Verifier};
use arq_core::config::{ArqConfig, ConfigLoader, Layers};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::with_operational_routes;
use arq_tenancy::{DbConfig, TenantLayer, TenantPool, TenantTxLayer};
use axum::Router;
use axum::http::header;
use axum::routing::{get, post};
use serde::Deserialize;
use sqlx::migrate::Migrator;

pub mod daily;
pub mod events;
pub mod queue;
pub mod range;
pub mod reports;

/// The service's name.
pub const NAME: &str = "analytics";

/// The route prefix this service serves under; the gateway forwards
/// `/api/v1/analytics/**` here.
pub const ROUTE: &str = "/analytics";

/// The OpenAPI 3.1 description of the API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Where configuration is read from: `ARQ_CONFIG_DIR`, else this crate's `config/`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("ARQ_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config")))
}

/// Everything the service reads from its configuration.
#[derive(Debug)]
pub struct Settings {
    /// arq-core's sections: server, edge, CORS, rate limits, telemetry, health.
    pub arq: ArqConfig,
    /// `[database]`.
    pub database: DatabaseSettings,
    /// `[auth]`.
    pub auth: AuthSettings,
    /// `[rbac]`: roles and their permissions.
    pub rbac: RbacConfig,
    /// `[queue]`: the broker, the queues this service consumes, the relay.
    pub queue: queue::QueueSettings,
}

/// `[database]`. The URLs themselves (with their passwords) come from `DATABASE_URL` and,
/// optionally, `DATABASE_REPLICA_URL`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The size of the connection pool (and of the replica's pool).
    pub max_connections: u32,
    /// How long a read waits for a replica connection before it runs on the primary, in
    /// milliseconds.
    #[serde(default = "default_replica_acquire_timeout_ms")]
    pub replica_acquire_timeout_ms: u64,
    /// After the replica failed, how long reads go straight to the primary before the replica
    /// is tried again, in milliseconds.
    #[serde(default = "default_replica_retry_after_ms")]
    pub replica_retry_after_ms: u64,
}

const fn default_replica_acquire_timeout_ms() -> u64 {
    1000
}

const fn default_replica_retry_after_ms() -> u64 {
    5000
}

impl DatabaseSettings {
    /// `max_connections` with the replica defaults.
    pub fn new(max_connections: u32) -> Self {
        Self {
            max_connections,
            replica_acquire_timeout_ms: default_replica_acquire_timeout_ms(),
            replica_retry_after_ms: default_replica_retry_after_ms(),
        }
    }
}

/// The runtime pool (`url` connects as the runtime role), through arq-tenancy's [`DbConfig`]:
/// its acquire and statement timeouts, `db_query_duration_seconds` by statement, the slow-query
/// log and the pool gauges. With `replica_url`, read-only tenant transactions
/// ([`TenantPool::begin_read_only`]) run on the replica while it answers and on the primary
/// otherwise; the replica is connected lazily, so an unreachable replica never stops the
/// service. [`DbConfig::connect_checked`] runs the start-up audit on one connection to the
/// primary as the same role before the pool is built: the service refuses to start on a
/// database that would not isolate tenants (a replica is a copy of the primary, roles and
/// policies included).
pub async fn connect_tenants(
    url: String,
    replica_url: Option<String>,
    database: &DatabaseSettings,
) -> anyhow::Result<TenantPool> {
    let mut config = DbConfig::new(url)
        .max_connections(database.max_connections)
        .replica_failover(
            Duration::from_millis(database.replica_acquire_timeout_ms),
            Duration::from_millis(database.replica_retry_after_ms),
        );
    if let Some(replica) = replica_url {
        config = config.replica_url(replica);
    }
    Ok(config.connect_checked().await?)
}

/// Loads and validates the configuration (files, then `ARQ__*` variables), reporting every
/// problem at once.
pub fn load_settings() -> anyhow::Result<Settings> {
    let (arq, layers) = ArqConfig::load_from(&ConfigLoader::new(config_dir()))?;
    settings_from(arq, &layers)
}

fn settings_from(arq: ArqConfig, layers: &Layers) -> anyhow::Result<Settings> {
    Ok(Settings {
        arq,
        database: layers.section("database").context("[database]")?,
        auth: layers.section("auth").context("[auth]")?,
        rbac: layers.section("rbac").context("[rbac]")?,
        queue: layers.section("queue").context("[queue]")?,
    })
}

/// The migrations, to run as the owner role: arq-tenancy's support migration
/// (`arq.current_tenant_id()`, `arq.enable_tenant_rls`) first, then `migrations/0001_analytics.sql`,
/// then arq-queue's outbox table and its tenant isolation (which needs the relay role
/// `arq_relay`; `analytics migrate` checks that it exists first).
pub fn migrator() -> Migrator {
    arq_tenancy::migrate::with(&[
        (
            20_260_101_000_001,
            "analytics",
            include_str!("../migrations/0001_analytics.sql"),
        ),
        (
            20_260_101_000_002,
            "arq_outbox",
            arq_queue::outbox::MIGRATION,
        ),
        (
            20_260_101_000_003,
            "outbox isolation",
            arq_queue::outbox::TENANT_ISOLATION_MIGRATION,
        ),
    ])
}

/// The token verifier for `[auth]`: keys from `jwks_url`, else the issuer's discovery document
/// (refreshed at most every 30 s), roles from `[rbac]`.
pub fn verifier(settings: &Settings) -> anyhow::Result<Verifier> {
    Ok(settings.auth.verifier(&settings.rbac)?)
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The runtime pool: read handlers open their read-only transactions on it (replica first).
    pub tenants: TenantPool,
    /// The exchange `report.generate` messages are published to (`[queue] exchange`).
    pub exchange: Arc<str>,
}

/// The service's routes: the analytics API behind authentication, tenant resolution and a
/// tenant transaction per writing request (committed below status 400, rolled back otherwise;
/// reading handlers open their own read-only transaction instead), and the public
/// `/openapi.json`. Report requests go to the outbox for `exchange`.
pub fn app(verifier: Verifier, tenants: TenantPool, exchange: &str) -> Router {
    let api = Router::new()
        .route(
            &format!("{ROUTE}/reports"),
            post(reports::create).get(reports::list),
        )
        .route(&format!("{ROUTE}/reports/{{id}}"), get(reports::read))
        .route(&format!("{ROUTE}/daily"), get(daily::read))
        .with_state(AppState {
            tenants: tenants.clone(),
            exchange: exchange.into(),
        })
        // The last layer added runs first: authenticate, resolve the tenant, then begin (only
        // when a handler extracts a TenantTx).
        .layer(TenantTxLayer::new(tenants))
        .layer(TenantLayer::new())
        .layer(AuthLayer::new(verifier));
    Router::new()
        .route("/openapi.json", get(openapi))
        .merge(api)
}

async fn openapi() -> impl axum::response::IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// `router` behind arq-core's edge stack (request ids, timeouts, body limit, CORS, metrics,
/// problem responses), with `/metrics`, `/health/live` and `/health/ready`.
pub fn service(
    router: Router,
    config: &ArqConfig,
    registry: &MetricsRegistry,
    health: &Health,
) -> anyhow::Result<EdgeService> {
    let stack = EdgeStack::from_config(config, registry)?;
    Ok(stack.wrap(with_operational_routes(router, health, registry)))
}
