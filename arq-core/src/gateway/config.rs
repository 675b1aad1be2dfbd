//! The gateway's configuration: its own `[gateway]` section, or the platform manifest.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::resilience::{DependencyKind, DependencySettings};

use super::GatewayError;

/// The gateway's configuration: the path prefix every route sits under, the routes, and the
/// paths served without authentication.
///
/// Read from a `[gateway]` table:
///
/// ```
/// use arq_core::gateway::GatewayConfig;
///
/// let config: GatewayConfig = toml::from_str(r#"
///     prefix = "/api/v1"
///     public = ["/auth/login", "/auth/register"]
///
///     [routes.auth]
///     prefix = "/auth"
///     upstream = "http://auth:3001"
///
///     [routes.users]
///     prefix = "/users"
///     upstream = "http://users:3002"
///     http2 = true
///     resilience = { timeout_ms = 5000, max_attempts = 2 }
/// "#)?;
/// assert_eq!(config.routes.len(), 2);
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The prefix every route sits under (`/api/v1`); empty for none. It is removed before
    /// forwarding: `/api/v1/users/7` reaches the `/users` upstream as `/users/7`.
    #[serde(default)]
    pub prefix: String,
    /// Paths (under the prefix, e.g. `/auth/login`) served without authentication; each
    /// covers itself and everything below it on a segment boundary. Everything else requires
    /// a verified identity.
    #[serde(default)]
    pub public: Vec<String>,
    /// The routes, by name (the name labels metrics and names the upstream's breaker).
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
}

/// One route: a path prefix and the upstream it is forwarded to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The path prefix under the gateway prefix (`/users`), matched on segment boundaries.
    pub prefix: String,
    /// The upstream's base URL (`http://users:3002`, or with a base path `http://h/base`).
    pub upstream: String,
    /// Speak HTTP/2 to the upstream (prior knowledge for `http://`; `https://` negotiates it).
    #[serde(default)]
    pub http2: bool,
    /// The upstream's breaker, bulkhead, timeout and retries; unset values take the defaults
    /// of an HTTP dependency.
    #[serde(default)]
    pub resilience: DependencySettings,
}

impl RouteConfig {
    /// A route from `prefix` to `upstream` with default resilience settings.
    pub fn new(prefix: impl Into<String>, upstream: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            upstream: upstream.into(),
            http2: false,
            resilience: DependencySettings::default(),
        }
    }

    /// Speaks HTTP/2 to the upstream.
    pub fn http2(mut self, on: bool) -> Self {
        self.http2 = on;
        self
    }

    /// The upstream's resilience settings.
    pub fn resilience(mut self, settings: DependencySettings) -> Self {
        self.resilience = settings;
        self
    }

    /// The settings with the gateway's default kind (an HTTP dependency) filled in.
    pub(crate) fn resilience_settings(&self) -> DependencySettings {
        let mut s = self.resilience.clone();
        s.kind.get_or_insert(DependencyKind::Http);
        s
    }
}

impl GatewayConfig {
    /// An empty configuration under `prefix`.
    ///
    /// # Example
    /// ```
    /// use arq_core::gateway::{GatewayConfig, RouteConfig};
    ///
    /// let config = GatewayConfig::new("/api/v1")
    ///     .route("users", RouteConfig::new("/users", "http://127.0.0.1:3002"))
    ///     .public("/users/signup");
    /// assert_eq!(config.public, ["/users/signup"]);
    /// ```
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            public: Vec::new(),
            routes: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the route `name`.
    pub fn route(mut self, name: impl Into<String>, route: RouteConfig) -> Self {
        self.routes.insert(name.into(), route);
        self
    }

    /// Adds a public path.
    pub fn public(mut self, path: impl Into<String>) -> Self {
        self.public.push(path.into());
        self
    }

    /// Reads the routes from the platform manifest (`arq.toml`): `[gateway] prefix` and
    /// `public`, and one route per HTTP service (`[services.NAME]` with `kind = "http"`,
    /// `route` and `port`). Each upstream URL is `upstream_template` with `{name}` and `{port}`
    /// replaced: `http://127.0.0.1:{port}` locally, `http://{name}:{port}` on Kubernetes.
    /// An optional `[gateway.resilience.NAME]` table sets a route's resilience.
    ///
    /// # Example
    /// ```
    /// use arq_core::gateway::GatewayConfig;
    ///
    /// let manifest = r#"
    ///     [platform]
    ///     name = "demo"
    ///     [gateway]
    ///     port = 3000
    ///     prefix = "/api/v1"
    ///     [services.tasks]
    ///     kind = "http"
    ///     port = 3001
    ///     route = "/tasks"
    ///     [services.mailer]
    ///     kind = "worker"
    ///     port = 3002
    /// "#;
    /// let config = GatewayConfig::from_manifest(manifest, "http://{name}:{port}")?;
    /// assert_eq!(config.routes["tasks"].upstream, "http://tasks:3001");
    /// assert_eq!(config.routes.len(), 1);
    /// # Ok::<(), arq_core::gateway::GatewayError>(())
    /// ```
    pub fn from_manifest(text: &str, upstream_template: &str) -> Result<Self, GatewayError> {
        #[derive(Deserialize)]
        struct Manifest {
            gateway: Gateway,
            #[serde(default)]
            services: BTreeMap<String, Service>,
        }
        #[derive(Deserialize)]
        struct Gateway {
            #[serde(default)]
            prefix: String,
            #[serde(default)]
            public: Vec<String>,
            #[serde(default)]
            resilience: BTreeMap<String, DependencySettings>,
        }
        #[derive(Deserialize)]
        struct Service {
            kind: String,
            port: u16,
            route: Option<String>,
        }
        let m: Manifest =
            toml::from_str(text).map_err(|e| GatewayError::Manifest(e.message().to_owned()))?;
        let mut config = Self::new(m.gateway.prefix);
        config.public = m.gateway.public;
        for (name, svc) in m.services {
            if svc.kind != "http" {
                continue;
            }
            let Some(prefix) = svc.route else {
                return Err(GatewayError::Manifest(format!(
                    "services.{name} is an HTTP service without a route"
                )));
            };
            let upstream = upstream_template
                .replace("{name}", &name)
                .replace("{port}", &svc.port.to_string());
            let mut route = RouteConfig::new(prefix, upstream);
            if let Some(r) = m.gateway.resilience.get(&name) {
                route.resilience = r.clone();
            }
            config.routes.insert(name, route);
        }
        if let Some(unknown) = m
            .gateway
            .resilience
            .keys()
            .find(|n| !config.routes.contains_key(*n))
        {
            return Err(GatewayError::Manifest(format!(
                "gateway.resilience.{unknown} names no HTTP service"
            )));
        }
        Ok(config)
    }
}
