//! The users service, shared by `main` and the tests.
//!
//! [`app`] serves per-workspace user profiles under `/users/users` ([`profiles`]): the caller's
//! own profile (`/users/users/me`, created or replaced with `PUT`), profiles by user id, a
//! keyset-paginated list filtered by e-mail address or by preferences, the subscription tier
//! (admins) and deletion. E-mail and phone are encrypted at field level with per-tenant data keys
//! and found through a blind index ([`crypto`], over arq-tenancy's `crypto` module); preferences
//! are JSONB found through a GIN index. Requests pass bearer-token authentication
//! ([`arq_auth::AuthLayer`]), RBAC permissions from `[rbac]` (read:users, write:users,
//! manage:users, admin:users), a CEL policy (`policies/users.yaml`: who sees contact data, who
//! may delete a profile), and run in a transaction scoped to the caller's tenant (the workspace)
//! by PostgreSQL row-level security ([`arq_tenancy`]). Each change writes its event to the
//! transactional outbox ([`events`]); [`relay`] publishes them to RabbitMQ. `/openapi.json`
//! describes the API.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
/// `[auth]`: which access tokens the service accepts, arq-auth's settings type (the name this
/// crate's callers know).
pub use arq_auth::AuthSettings;
use arq_auth::policy::PolicySet;
use arq_auth::{AuthLayer, RbacConfig, Verifier};
use arq_core::config::{ArqConfig, ConfigLoader, Layers};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::with_operational_routes;
use arq_tenancy::{DbConfig, TenantLayer, TenantPool, TenantTxLayer};
use axum::Router;
use axum::http::header;
use axum::routing::{get, put};
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub mod crypto;
pub mod events;
pub mod profiles;
pub mod relay;

/// The service's name.
pub const NAME: &str = "users";

/// The route prefix this service serves under; the gateway forwards
/// `/api/v1/users/**` here.
pub const ROUTE: &str = "/users";

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
    /// `[encryption]`: the key files (given at run time) and the KEK id.
    pub encryption: crypto::EncryptionSettings,
}

/// `[database]`. The URL itself (with its password) comes from `DATABASE_URL`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The size of the connection pool.
    pub max_connections: u32,
}

/// The runtime pool (`url` connects as the runtime role), through arq-tenancy's [`DbConfig`]:
/// its acquire and statement timeouts, query metrics and slow-query log.
/// [`DbConfig::connect_checked`] runs the start-up audit on one connection as the same role
/// before the pool is built: the service refuses to start on a database that would not isolate
/// tenants.
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
        encryption: layers.section("encryption").context("[encryption]")?,
    })
}

/// The migrations, to run as the owner role: arq-tenancy's support migration
/// (`arq.current_tenant_id()`, `arq.enable_tenant_rls`, `arq.tenant_data_keys`) first, then
/// `migrations/0001_profiles.sql`, then arq-queue's outbox table and its tenant isolation.
/// Check [`require_search_operator`] and [`arq_queue::outbox::require_relay_role`] first.
pub fn migrator() -> Migrator {
    arq_tenancy::migrate::with(&[
        (
            20_260_101_000_001,
            "profiles",
            include_str!("../migrations/0001_profiles.sql"),
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

/// The administrator's part of the schema, `sql/preferences-search.sql` (the LEAKPROOF jsonb
/// containment operator class the preferences GIN index is built with).
pub const PREFERENCES_SEARCH_SQL: &str = include_str!("../sql/preferences-search.sql");

/// Fails, saying what to run, when the database lacks `sql/preferences-search.sql`'s operator
/// class: `migrations/0001_profiles.sql` builds the preferences index with it, and creating it
/// needs a superuser, which the migrating role should not be.
pub async fn require_search_operator(owner: &PgPool) -> anyhow::Result<()> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace \
         WHERE n.nspname = 'arq_search' AND c.opcname = 'jsonb_path_ops') \
         AND EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gin')",
    )
    .fetch_one(owner)
    .await
    .context("cannot look up the arq_search operator class")?;
    if !exists {
        anyhow::bail!(
            "this database lacks the preferences search operator (schema arq_search, btree_gin): \
             run services/users/sql/preferences-search.sql once in THIS database as a superuser \
             (psql \"postgres://postgres@HOST/DATABASE\" -f services/users/sql/preferences-search.sql), \
             then run `users migrate` again"
        );
    }
    Ok(())
}

/// The CEL policies, compiled into the binary so that a deployed service cannot run without them.
pub fn policies() -> anyhow::Result<Arc<PolicySet>> {
    let set = PolicySet::from_yaml(
        "policies/users.yaml",
        include_str!("../policies/users.yaml"),
    )?;
    Ok(Arc::new(set))
}

/// The token verifier for `[auth]`: keys from `jwks_url`, else the issuer's discovery document
/// (refreshed at most every 30 s), roles from `[rbac]`.
pub fn verifier(settings: &Settings) -> anyhow::Result<Verifier> {
    Ok(settings.auth.verifier(&settings.rbac)?)
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The CEL policies.
    pub policies: Arc<PolicySet>,
    /// The field cipher and blind index.
    pub crypto: Arc<crypto::Crypto>,
    /// The exchange events are published to (`[queue] exchange`).
    pub exchange: Arc<str>,
}

/// The service's routes: the profiles API behind authentication, tenant resolution and a tenant
/// transaction per request (committed below status 400, rolled back otherwise), and the public
/// `/openapi.json`. Events go to the outbox for `exchange`.
pub fn app(
    verifier: Verifier,
    tenants: TenantPool,
    policies: Arc<PolicySet>,
    crypto: Arc<crypto::Crypto>,
    exchange: &str,
) -> Router {
    let api = Router::new()
        .route(&format!("{ROUTE}/users"), get(profiles::list))
        .route(
            &format!("{ROUTE}/users/me"),
            get(profiles::read_me).put(profiles::put_me),
        )
        .route(
            &format!("{ROUTE}/users/{{user_id}}"),
            get(profiles::read).delete(profiles::delete),
        )
        .route(
            &format!("{ROUTE}/users/{{user_id}}/tier"),
            put(profiles::put_tier),
        )
        .with_state(AppState {
            policies,
            crypto,
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
