//! The workspace service, shared by `main` and the tests.
//!
//! A workspace is the platform's tenant: its id is the tenant id of everything in it, here and
//! in every other service. [`app`] serves, under `/workspaces`:
//!
//! | route | needs | what |
//! |---|---|---|
//! | `POST /workspaces/workspaces` | a signed-in user (no tenant needed) | create a workspace; the caller becomes its `admin` ([`workspaces`]) |
//! | `GET`, `PATCH`, `DELETE /workspaces/workspaces/{id}` | read:workspace / admin:workspace | the workspace of the token's tenant |
//! | `GET /workspaces/workspaces/{id}/members` | read:workspace | its members and their roles ([`members`]) |
//! | `PUT`, `DELETE /workspaces/workspaces/{id}/members/{user_id}` | admin:workspace | change a member's role, remove a member (never the last admin) |
//! | `POST /workspaces/workspaces/{id}/invitations` | admin:workspace | invite by e-mail: a single-use code is mailed ([`invitations`]) |
//! | `POST /workspaces/invitations/accept` | a signed-in user (no tenant needed) | join with the code |
//!
//! The routes on an existing workspace pass bearer-token authentication
//! ([`arq_auth::AuthLayer`]), tenant resolution and RBAC permissions from `[rbac]`, and run in a
//! transaction scoped to the caller's tenant by PostgreSQL row-level security
//! ([`arq_tenancy`]); `{id}` must be that tenant (any other id is 404). The two routes a user
//! without a tenant calls (creating a workspace, accepting an invitation) are authenticated only,
//! and open the tenant transaction themselves, for the new workspace's id or the invitation's.
//! Every change writes its events to the transactional outbox in its transaction ([`events`]);
//! [`relay`] publishes them to RabbitMQ, where the auth service turns the membership events into
//! the roles it signs into tokens. `/openapi.json` describes the API.
#![forbid(unsafe_code)]
// The handlers' small validation helpers return the problem+json response itself, as the
// handlers do; boxing it would only add an allocation to the error path of one request.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
/// `[auth]`: which access tokens the service accepts, arq-auth's settings type (the name this
/// crate's callers know).
pub use arq_auth::AuthSettings;
use arq_auth::{AuthLayer, Permission, Rbac, RbacConfig, Verifier};
use arq_core::config::{ArqConfig, ConfigLoader, Layers};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::with_operational_routes;
use arq_tenancy::{DbConfig, TenantLayer, TenantPool, TenantTxLayer};
use axum::Router;
use axum::http::header;
use axum::routing::{get, post, put};
use serde::Deserialize;
use sqlx::migrate::Migrator;

pub mod events;
pub mod invitations;
pub mod members;
pub mod problems;
pub mod relay;
pub mod workspaces;

/// The service's name.
pub const NAME: &str = "workspace";

/// The route prefix this service serves under; the gateway forwards
/// `/api/v1/workspaces/**` here.
pub const ROUTE: &str = "/workspaces";

/// The role a workspace's creator gets, and the one the last-admin rule protects.
pub const ADMIN_ROLE: &str = "admin";

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
    /// `[rbac]`: roles and their permissions; the role names are also the roles a membership
    /// may have.
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

/// The runtime pool (`url` connects as the runtime role), through arq-tenancy's [`DbConfig`]
/// (acquire and statement timeouts, query metrics, slow-query log). [`DbConfig::connect_checked`]
/// runs the start-up audit on one connection as the same role before the pool is built: the
/// service refuses to start on a database that would not isolate tenants.
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
    let settings = Settings {
        arq,
        database: layers.section("database").context("[database]")?,
        auth: layers.section("auth").context("[auth]")?,
        rbac: layers.section("rbac").context("[rbac]")?,
        queue: layers.section("queue").context("[queue]")?,
    };
    check_rbac(&settings.rbac)?;
    Ok(settings)
}

/// The roles must include `admin` holding `admin:workspace`: a workspace's creator becomes its
/// admin, and the last-admin rule keeps one.
fn check_rbac(config: &RbacConfig) -> anyhow::Result<()> {
    let rbac = Rbac::from_config(config).context("[rbac]")?;
    let holds = rbac
        .role_permissions(ADMIN_ROLE)
        .is_some_and(|p| p.contains(members::AdminWorkspace::NAME));
    if !holds {
        anyhow::bail!(
            "[rbac.roles]: the role {ADMIN_ROLE:?} must exist and hold {:?} (a workspace's creator \
             becomes its admin)",
            members::AdminWorkspace::NAME
        );
    }
    Ok(())
}

/// The migrations, to run as the owner role: arq-tenancy's support migration
/// (`arq.current_tenant_id()`, `arq.enable_tenant_rls`) first, then the workspace tables, then
/// arq-queue's outbox table and its tenant isolation.
pub fn migrator() -> Migrator {
    arq_tenancy::migrate::with(&[
        (
            20_260_101_000_001,
            "workspaces",
            include_str!("../migrations/0001_workspaces.sql"),
        ),
        (
            20_260_101_000_002,
            "arq_outbox",
            arq_queue::outbox::MIGRATION,
        ),
        (
            20_260_101_000_003,
            "outbox tenant isolation",
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
    /// The roles a membership or an invitation may name (`[rbac.roles]`), sorted.
    pub roles: Arc<[String]>,
    /// The pool, for the routes that open their tenant transaction themselves.
    pub tenants: TenantPool,
}

impl AppState {
    /// The state for `exchange`, with the role names of `rbac`.
    pub fn new(tenants: TenantPool, rbac: &RbacConfig, exchange: &str) -> Self {
        Self {
            exchange: exchange.into(),
            roles: rbac.roles.keys().cloned().collect(),
            tenants,
        }
    }
}

/// The service's routes (see the crate docs) and the public `/openapi.json`.
pub fn app(verifier: Verifier, state: AppState) -> Router {
    let tenant_routes = Router::new()
        .route(
            &format!("{ROUTE}/workspaces/{{id}}"),
            get(workspaces::read)
                .patch(workspaces::update)
                .delete(workspaces::delete),
        )
        .route(
            &format!("{ROUTE}/workspaces/{{id}}/members"),
            get(members::list),
        )
        .route(
            &format!("{ROUTE}/workspaces/{{id}}/members/{{user_id}}"),
            put(members::set_role).delete(members::remove),
        )
        .route(
            &format!("{ROUTE}/workspaces/{{id}}/invitations"),
            post(invitations::create),
        )
        .with_state(state.clone())
        // The last layer added runs first: authenticate, resolve the tenant, then begin.
        .layer(TenantTxLayer::new(state.tenants.clone()))
        .layer(TenantLayer::new())
        .layer(AuthLayer::new(verifier.clone()));
    // No tenant resolution here: a user who signed up has no workspace (no `tid`) yet, and
    // someone accepting an invitation is not a member of it yet. Each handler opens the tenant
    // transaction of the workspace it creates or joins.
    let tenantless = Router::new()
        // arq-check-ignore: auth-route-permission reason: any signed-in user may create a workspace
        .route(&format!("{ROUTE}/workspaces"), post(workspaces::create))
        // arq-check-ignore: auth-route-permission reason: the invitation code is the authorization
        .route(
            &format!("{ROUTE}/invitations/accept"),
            post(invitations::accept),
        )
        .with_state(state)
        .layer(AuthLayer::new(verifier));
    Router::new()
        .route("/openapi.json", get(openapi))
        .merge(tenant_routes)
        .merge(tenantless)
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
