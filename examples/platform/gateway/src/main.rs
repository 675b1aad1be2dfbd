//! The platform API gateway: routes `/api/v1/**` to the HTTP services listed
//! in `arq.toml`, behind arq's edge stack with bearer-token / API-key authentication,
//! per-principal rate limits and a breaker, bulkhead, timeout and retries per upstream.
//!
//! Run from the platform root. Environment:
//! - `ARQ_MANIFEST`: the manifest (default `arq.toml`);
//! - `ARQ_GATEWAY_UPSTREAM`: how a service's URL is made from its name and port (default
//!   `http://127.0.0.1:{port}`; on Kubernetes `http://{name}:{port}`);
//! - `ARQ_GATEWAY_CONFIG`: the configuration directory (default `gateway/config`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arq_auth::{AuthLayer, JwksUrl, KeyRing, Verifier, VerifierConfig};
use arq_core::config::{ArqConfig, ConfigLoader};
use arq_core::edge::EdgeStack;
use arq_core::gateway::{Gateway, GatewayConfig};
use arq_core::health::Health;
use arq_core::metrics::MetricsRegistry;
use arq_core::rate_limit::RateLimitLayer;
use arq_core::server::{Server, shutdown_signal, with_operational_routes};

/// `[auth]` in the gateway's configuration.
#[derive(Debug, serde::Deserialize)]
struct AuthSettings {
    issuer: String,
    audience: String,
    jwks_url: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loader = ConfigLoader::new(env_or("ARQ_GATEWAY_CONFIG", "gateway/config"));
    let (config, layers) = ArqConfig::load_from(&loader).context("gateway configuration")?;
    arq_core::telemetry::init(&config.telemetry).context("telemetry")?;

    let manifest_path = env_or("ARQ_MANIFEST", "arq.toml");
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!("cannot read {manifest_path}; run the gateway from the platform root")
    })?;
    let routes = GatewayConfig::from_manifest(
        &manifest,
        &env_or("ARQ_GATEWAY_UPSTREAM", "http://127.0.0.1:{port}"),
    )?;

    let auth: AuthSettings = layers.section("auth").context("[auth]")?;
    let keys = Arc::new(KeyRing::new(
        JwksUrl::new(auth.jwks_url)?,
        Duration::from_secs(30),
    ));
    let verifier = Verifier::new(VerifierConfig::new(auth.issuer, auth.audience), keys)?;

    let registry = MetricsRegistry::global().clone();
    let gateway = Gateway::builder(routes)
        .client_tls(config.server.tls.is_some())
        .build(&registry)?;
    let mut edge =
        EdgeStack::from_config(&config, &registry)?.authentication(AuthLayer::new(verifier));
    if config.rate_limit.enabled {
        edge = edge.per_principal_limit(RateLimitLayer::from_config(&config.rate_limit)?);
    }
    let health = Health::from_config(&config.health).with_check(gateway.health_check());
    let app = with_operational_routes(
        gateway.router().merge(gateway.upstreams_router()),
        &health,
        &registry,
    );
    let server = Server::bind(&config.server, health).await?;
    println!("gateway listening on http://{}", server.local_addr());
    server.serve(edge.wrap(app), shutdown_signal()).await;
    Ok(())
}
