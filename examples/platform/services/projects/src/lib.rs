//! The projects service, shared by `main` and the tests.
//!
//! [`app`] serves a tenant's projects under `/projects/projects` ([`projects`]): a hierarchy
//! (each project has at most one parent, [`hierarchy`] keeps it acyclic and serves subtrees),
//! free-form `metadata`, and a history of versions ([`versions`]). Every change bumps the
//! project's `version`, which is its strong ETag: updates and deletes must name the version they
//! were made against (`If-Match`, [`etag`]), so a stale write is refused (412) instead of
//! silently overwriting someone else's change. Requests pass bearer-token authentication
//! ([`arq_auth::AuthLayer`]), RBAC permissions from `[rbac]` (read:projects, write:projects,
//! manage:projects), and run in a transaction scoped to the caller's tenant by PostgreSQL
//! row-level security ([`arq_tenancy`]). Each change writes its events to the transactional
//! outbox ([`events`]) in that transaction; [`relay`] publishes them to RabbitMQ.
//! `/openapi.json` describes the API.

#![forbid(unsafe_code)]

use std::path::PathBuf;

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
use std::sync::Arc;

pub mod etag;
pub mod events;
pub mod hierarchy;
pub mod projects;
pub mod relay;
pub mod versions;

/// The service's name.
pub const NAME: &str = "projects";

/// The route prefix this service serves under; the gateway forwards
/// `/api/v1/projects/**` here.
pub const ROUTE: &str = "/projects";

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
    /// `[queue]`: where events are published.
    pub queue: relay::QueueSettings,
}

/// `[database]`. The URL itself (with its password) comes from `DATABASE_URL`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The size of the connection pool.
    pub max_connections: u32,
}

/// The runtime pool (`url` connects as the runtime role), through arq-tenancy's [`DbConfig`]:
/// its acquire and statement timeouts, `db_query_duration_seconds` by statement, the slow-query
/// log and the pool gauges. [`DbConfig::connect_checked`] runs the start-up audit on one
/// connection as the same role before the pool is built: the service refuses to start on a
/// database that would not isolate tenants.
pub async fn connect_tenants(
    url: String,
    database: &DatabaseSettings,
) -> anyhow::Result<TenantPool> {
    Ok(DbConfig::new(url)
        .max_connections(database.max_connections)
        .connect_checked()
        .await?)
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
/// (`arq.current_tenant_id()`, `arq.enable_tenant_rls`) first, then the projects and their
/// history (`migrations/0001_projects.sql`), then arq-queue's outbox table and its tenant
/// isolation (`arq_queue::outbox::TENANT_ISOLATION_MIGRATION`: tenant first in its key, forced
/// row-level security, the runtime role may only insert its own tenant's events, the relay role
/// `arq_relay` reads and deletes every tenant's and nothing else).
pub fn migrator() -> Migrator {
    arq_tenancy::migrate::with(&[
        (
            20_260_101_000_001,
            "projects",
            include_str!("../migrations/0001_projects.sql"),
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
    /// The exchange events are published to (`[queue] exchange`).
    pub exchange: Arc<str>,
}

/// The service's routes: the projects API behind authentication, tenant resolution and a tenant
/// transaction per request (committed below status 400, rolled back otherwise), and the public
/// `/openapi.json`. Events go to the outbox for `exchange`.
pub fn app(verifier: Verifier, tenants: TenantPool, exchange: &str) -> Router {
    let api = Router::new()
        .route(
            &format!("{ROUTE}/projects"),
            post(projects::create).get(projects::list),
        )
        .route(
            &format!("{ROUTE}/projects/{{id}}"),
            get(projects::read)
                .patch(projects::update)
                .delete(projects::delete),
        )
        .route(
            &format!("{ROUTE}/projects/{{id}}/tree"),
            get(hierarchy::tree),
        )
        .route(
            &format!("{ROUTE}/projects/{{id}}/versions"),
            get(versions::list),
        )
        .route(
            &format!("{ROUTE}/projects/{{id}}/versions/{{version}}"),
            get(versions::read),
        )
        .with_state(AppState {
            exchange: exchange.into(),
        })
        // The last layer added runs first: authenticate, resolve the tenant, then begin.
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
