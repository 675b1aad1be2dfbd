//! The auth service: the platform's token issuer (arq-auth's [`TokenIssuer`]), shared by `main`
//! and the tests.
//!
//! [`app`] serves, under [`ROUTE`] (`/auth`, which the gateway publishes as `/api/v1/auth`):
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /auth/oauth/token` | public | grants `password`, `refresh_token` (rotated on every use; reuse revokes the family), `client_credentials`, and the MFA grant |
//! | `POST /auth/oauth/mfa/challenge`, `POST /auth/oauth/revoke` | public | email/SMS codes (no sender is configured here), logout |
//! | `GET /auth/.well-known/jwks.json`, `GET /auth/.well-known/openid-configuration` | public | the verification keys and the discovery document |
//! | `POST /auth/mfa/totp`, `POST /auth/mfa/totp/confirm` | signed in | TOTP enrolment of the caller ([`mfa`]) |
//! | `POST /auth/mfa/recovery-codes` | signed in with MFA | ten fresh single-use recovery codes |
//!
//! Tokens are RS256, signed with the key in `[issuer] signing_key_file` (a PEM file that never
//! lives in the repository), for the platform-wide `[auth] issuer` and `audience` that the gateway
//! and every service verify. Users and service accounts are created with the `auth create-user`
//! and `auth create-client` subcommands ([`admin`]).
//!
//! A user's roles in a workspace (the `tenant=` of the password grant) come from the workspace
//! service: [`memberships`] consumes its `membership.*` and `workspace.deleted` events from
//! RabbitMQ and keeps arq-auth's role assignments in step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arq_auth::issuer::{IssuerConfig, TokenIssuer};
use arq_auth::{AuthLayer, KeyRing, Rbac, RbacConfig, SigningKey, SigningKeyRing, Verifier};
use arq_auth::{AuthSettingsError, KEY_REFRESH_INTERVAL, VerifierConfig};
use arq_core::config::{ArqConfig, ConfigLoader, Layers};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::server::with_operational_routes;
use axum::Router;
use axum::http::header;
use axum::routing::{get, post};
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

pub mod admin;
pub mod memberships;
pub mod mfa;

/// The service's name.
pub const NAME: &str = "auth";

/// The route prefix this service serves under; the gateway forwards
/// `/api/v1/auth/**` here.
pub const ROUTE: &str = "/auth";

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
    /// `[auth]`: the tokens this service issues (and verifies on its own signed-in routes).
    pub auth: AuthSettings,
    /// `[issuer]`: where the signing key is.
    pub issuer: IssuerSettings,
    /// `[rbac]`: the platform's roles, which `create-user --role` must name.
    pub rbac: RbacConfig,
    /// `[queue]`: where the membership events come from ([`memberships`]).
    pub queue: memberships::QueueSettings,
}

/// `[database]`. The URL itself (with its password) comes from `DATABASE_URL`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The size of the connection pool.
    pub max_connections: u32,
}

/// `[auth]`: the platform-wide issuer and audience, the same values the gateway and every
/// service verify.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Accepted signature algorithms (asymmetric only). The issuer signs with RS256.
    pub algorithms: Vec<String>,
    /// The `iss` of issued tokens; `{issuer}/.well-known/openid-configuration` must reach this
    /// service (through the gateway: `http://GATEWAY/api/v1/auth`).
    pub issuer: String,
    /// The `aud` of issued tokens.
    pub audience: String,
    /// Accepted clock skew when this service verifies its own tokens.
    pub leeway_secs: u64,
    /// Access-token lifetime (at most 3600, the platform's policy that `arq check` enforces).
    #[serde(default = "default_access_ttl")]
    pub access_token_ttl_secs: u64,
}

fn default_access_ttl() -> u64 {
    3600
}

impl AuthSettings {
    /// The verifier configuration for this service's own signed-in routes: arq-auth's, from the
    /// same keys (the first unknown algorithm is named).
    pub fn verifier_config(&self) -> Result<VerifierConfig, AuthSettingsError> {
        // No jwks_url: this service verifies with its own signing keys, never fetched.
        arq_auth::AuthSettings {
            algorithms: self.algorithms.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_secs: self.leeway_secs,
            jwks_url: None,
        }
        .verifier_config()
    }

    /// The issuer configuration: `iss`, `aud` and the access-token lifetime.
    pub fn issuer_config(&self) -> IssuerConfig {
        let mut config = IssuerConfig::new(&self.issuer, &self.audience);
        config.access_ttl = Duration::from_secs(self.access_token_ttl_secs);
        config
    }
}

/// `[issuer]`: the signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// Path of the RSA private key (PKCS#8 or PKCS#1 PEM). Keep it out of the repository: mount
    /// it from a secret and point `ARQ__ISSUER__SIGNING_KEY_FILE` at it.
    pub signing_key_file: PathBuf,
    /// The key id (`kid`) tokens name and the JWKS publishes; change it when the key changes.
    pub key_id: String,
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
        issuer: layers.section("issuer").context("[issuer]")?,
        rbac: layers.section("rbac").context("[rbac]")?,
        queue: layers.section("queue").context("[queue]")?,
    };
    if settings.auth.access_token_ttl_secs == 0 || settings.auth.access_token_ttl_secs > 3600 {
        anyhow::bail!(
            "[auth] access_token_ttl_secs = {}: must be between 1 and 3600 seconds",
            settings.auth.access_token_ttl_secs
        );
    }
    Ok(settings)
}

/// The migrations, to run as the owner role after arq-auth's own ([`arq_auth::migrate`], which
/// [`migrate`] runs first): `migrations/*.sql` grants the runtime role what the issuer needs.
pub fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        20_260_101_000_001,
        "runtime grants".into(),
        MigrationType::Simple,
        include_str!("../migrations/0001_runtime_grants.sql").into_sql_str(),
        false,
    )])
}

/// Runs arq-auth's migrations (users, clients, refresh tokens, MFA; recorded in
/// `_arq_auth_migrations`), then [`migrator`]'s, connected as the owner role.
pub async fn migrate(owner: &PgPool) -> anyhow::Result<()> {
    arq_auth::migrate(owner)
        .await
        .context("arq-auth's migrations")?;
    migrator()
        .run(owner)
        .await
        .context("the auth service's migrations")?;
    Ok(())
}

/// Reads the signing key named by `[issuer]`, with an error that says how to provide one.
pub fn signing_keys(settings: &IssuerSettings) -> anyhow::Result<SigningKeyRing> {
    let path = &settings.signing_key_file;
    let pem = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the signing key {} ([issuer] signing_key_file, or \
             ARQ__ISSUER__SIGNING_KEY_FILE); create one with \
             `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out FILE` and keep it \
             out of the repository",
            path.display()
        )
    })?;
    let key = SigningKey::from_rsa_pem(&settings.key_id, &pem)
        .with_context(|| format!("the signing key {}", path.display()))?;
    Ok(SigningKeyRing::new(key))
}

/// The platform's roles from `[rbac]`.
pub fn rbac(settings: &Settings) -> anyhow::Result<Arc<Rbac>> {
    Ok(Arc::new(
        Rbac::from_config(&settings.rbac).context("[rbac]")?,
    ))
}

/// The issuer over `pool` (the runtime role), signing with `keys`.
pub fn issuer(
    settings: &Settings,
    keys: SigningKeyRing,
    pool: PgPool,
) -> anyhow::Result<TokenIssuer> {
    Ok(TokenIssuer::new(settings.auth.issuer_config(), keys, pool)?.with_rbac(rbac(settings)?))
}

/// The verifier for this service's own signed-in routes: the issuer's own key ring is the key
/// source, so no request goes out to fetch the JWKS.
pub fn verifier(settings: &Settings, keys: &SigningKeyRing) -> anyhow::Result<Verifier> {
    let ring = KeyRing::new(keys.clone(), KEY_REFRESH_INTERVAL);
    Ok(Verifier::with_rbac(
        settings.auth.verifier_config()?,
        Arc::new(ring),
        rbac(settings)?,
    )?)
}

/// The service's routes: the issuer's (public), the MFA enrolment routes (signed in), and
/// `/openapi.json`.
pub fn app(issuer: TokenIssuer, verifier: Verifier) -> Router {
    // Each signed-in user manages their own second factors: no permission is needed beyond a
    // verified token (recovery codes also need a token from an MFA login, checked in the handler).
    let enrolment = Router::new()
        // arq-check-ignore: auth-route-permission reason: self-service, the caller's own TOTP
        .route(&format!("{ROUTE}/mfa/totp"), post(mfa::enroll_totp))
        // arq-check-ignore: auth-route-permission reason: self-service, the caller's own TOTP
        .route(
            &format!("{ROUTE}/mfa/totp/confirm"),
            post(mfa::confirm_totp),
        )
        // arq-check-ignore: auth-route-permission reason: self-service, needs an MFA login
        .route(
            &format!("{ROUTE}/mfa/recovery-codes"),
            post(mfa::recovery_codes),
        )
        .with_state(issuer.clone())
        .layer(AuthLayer::new(verifier));
    Router::new()
        .route("/openapi.json", get(openapi))
        .nest(ROUTE, issuer.router())
        .merge(enrolment)
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
