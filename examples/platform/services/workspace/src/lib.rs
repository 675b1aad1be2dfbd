//! The workspace service, shared by `main` and the tests.
//!
//! [`app`] serves an example tenant-scoped resource, items, under `/workspaces/items`:
//! create, read, update, delete and a paginated list, behind bearer-token authentication
//! ([`arq_auth::AuthLayer`]), RBAC permissions from `[rbac]` in the configuration, a CEL policy
//! (`policies/items.yaml`) and a transaction per request scoped to the caller's tenant by
//! PostgreSQL row-level security ([`arq_tenancy`]). `/openapi.json` describes the API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arq_auth::policy::PolicySet;
use arq_auth::{
    AuthLayer, JwksUrl, KeyRing, OidcDiscovery, Rbac, RbacConfig, Verifier, VerifierConfig,
};
use arq_core::config::{ArqConfig, ConfigLoader, Layers};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::with_operational_routes;
use arq_tenancy::{TenantLayer, TenantPool, TenantTxLayer};
use axum::Router;
use axum::http::header;
use axum::routing::{get, post};
use serde::Deserialize;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

pub mod items;

/// The service's name.
pub const NAME: &str = "workspace";

/// The route prefix this service serves under; the gateway forwards
/// `/api/v1/workspaces/**` here.
pub const ROUTE: &str = "/workspaces";

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
}

/// `[database]`. The URL itself (with its password) comes from `DATABASE_URL`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The size of the connection pool.
    pub max_connections: u32,
}

/// `[auth]`: which access tokens the service accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Accepted signature algorithms (asymmetric only).
    pub algorithms: Vec<String>,
    /// The token issuer (`iss`); its OIDC discovery document names the keys.
    pub issuer: String,
    /// This service's audience (`aud`).
    pub audience: String,
    /// Accepted clock skew.
    pub leeway_secs: u64,
    /// The JWKS URL, when the issuer has no discovery document.
    #[serde(default)]
    pub jwks_url: Option<String>,
}

impl AuthSettings {
    /// The verifier configuration these settings describe.
    pub fn verifier_config(&self) -> anyhow::Result<VerifierConfig> {
        let algorithms = self
            .algorithms
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|_| anyhow::anyhow!("[auth] algorithms: unknown algorithm {a:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(VerifierConfig::new(&self.issuer, &self.audience)
            .with_algorithms(algorithms)
            .with_leeway_secs(self.leeway_secs))
    }
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
    })
}

/// The migrations, to run as the owner role: arq-tenancy's support migration
/// (`arq.current_tenant_id()`, `arq.enable_tenant_rls`) first, then `migrations/*.sql`.
pub fn migrator() -> Migrator {
    let mut migrations: Vec<Migration> = arq_tenancy::migrate::migrator().iter().cloned().collect();
    migrations.push(Migration::new(
        20_260_101_000_001,
        "items".into(),
        MigrationType::Simple,
        include_str!("../migrations/0001_items.sql").into_sql_str(),
        false,
    ));
    Migrator::with_migrations(migrations)
}

/// The CEL policies, compiled into the binary so that a deployed service cannot run without them.
pub fn policies() -> anyhow::Result<Arc<PolicySet>> {
    let set = PolicySet::from_yaml(
        "policies/items.yaml",
        include_str!("../policies/items.yaml"),
    )?;
    Ok(Arc::new(set))
}

/// The token verifier for `[auth]`, with keys from the issuer and roles from `[rbac]`.
pub fn verifier(settings: &Settings) -> anyhow::Result<Verifier> {
    let refresh = Duration::from_secs(30);
    let keys = match &settings.auth.jwks_url {
        Some(url) => KeyRing::new(JwksUrl::new(url)?, refresh),
        None => KeyRing::new(OidcDiscovery::new(&settings.auth.issuer)?, refresh),
    };
    let rbac = Rbac::from_config(&settings.rbac)?;
    Ok(Verifier::with_rbac(
        settings.auth.verifier_config()?,
        Arc::new(keys),
        Arc::new(rbac),
    )?)
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The CEL policies.
    pub policies: Arc<PolicySet>,
}

/// The service's routes: the items API behind authentication, tenant resolution and a tenant
/// transaction per request (committed below status 400, rolled back otherwise), and the public
/// `/openapi.json`.
pub fn app(verifier: Verifier, tenants: TenantPool, policies: Arc<PolicySet>) -> Router {
    let items = Router::new()
        .route(
            &format!("{ROUTE}/items"),
            post(items::create).get(items::list),
        )
        .route(
            &format!("{ROUTE}/items/{{id}}"),
            get(items::read).patch(items::update).delete(items::delete),
        )
        .with_state(AppState { policies })
        // The last layer added runs first: authenticate, resolve the tenant, then begin.
        .layer(TenantTxLayer::new(tenants))
        .layer(TenantLayer::new())
        .layer(AuthLayer::new(verifier));
    Router::new()
        .route("/openapi.json", get(openapi))
        .merge(items)
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
