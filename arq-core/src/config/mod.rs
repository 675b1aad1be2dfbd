//! Typed, layered configuration, validated at start-up.
//!
//! Layers, lowest first: built-in defaults < `config/default.toml` < `config/<env>.toml` (the
//! environment comes from `ARQ_ENV`, default `development`) < environment variables named
//! `ARQ__SECTION__KEY` (`ARQ__RATE_LIMIT__PER_MINUTE=100` sets `[rate_limit] per_minute`).
//!
//! Loading never stops at the first mistake: every problem (a TOML syntax error, a value of the
//! wrong type, an out-of-range number, a bad CORS pattern, an unknown key) is collected and
//! reported together, each with where it came from: the file and key, or the variable. Secrets
//! are [`Secret`]s and never appear in `Debug` output.
//!
//! # Example
//! ```
//! use arq_core::config::{ArqConfig, ConfigLoader};
//!
//! let layers = ConfigLoader::new("/nonexistent")
//!     .vars([
//!         ("ARQ__SERVER__ADDR", "not an address"),
//!         ("ARQ__RATE_LIMIT__PER_MINUTE", "-5"),
//!     ])
//!     .load()
//!     .unwrap();
//! let err = ArqConfig::from_layers(&layers).unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("ARQ__SERVER__ADDR"));
//! assert!(text.contains("ARQ__RATE_LIMIT__PER_MINUTE"));
//! ```

mod secret;
mod source;
mod value;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use secret::Secret;
pub use source::{ConfigLoader, ENVIRONMENT_VAR, Layers, Origin};
use value::{ByteSize, FromValue};

use crate::edge::OriginPattern;

/// One thing wrong with the configuration, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where the offending value came from.
    pub origin: Origin,
    /// The dotted key (`server.addr`), or the variable or file for problems that have no key.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigProblem {
    pub(crate) fn new(origin: Origin, key: &str, message: impl Into<String>) -> Self {
        Self {
            origin,
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Default if !self.key.is_empty() => {
                write!(f, "`{}` ({}): {}", self.key, self.origin, self.message)
            }
            origin => write!(f, "{origin}: {}", self.message),
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// One or more values are missing, malformed or inconsistent; all of them are listed.
    #[error("invalid configuration ({} problem{}):\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, ProblemList(problems))]
    Invalid {
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// The problems found.
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            Self::Invalid { problems } => problems,
        }
    }
}

struct ProblemList<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// Reads typed values, collecting every problem instead of stopping at the first.
struct Reader<'a> {
    layers: &'a Layers,
    problems: Vec<ConfigProblem>,
}

impl Reader<'_> {
    fn origin(&self, key: &str) -> Origin {
        self.layers.origin(key).cloned().unwrap_or(Origin::Default)
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let origin = self.origin(key);
        self.problems.push(ConfigProblem::new(origin, key, message));
    }

    fn opt<T: FromValue>(&mut self, key: &str) -> Option<T> {
        let entry = self.layers.get(key)?;
        match T::from_value(&entry.value) {
            Ok(v) => Some(v),
            Err(message) => {
                let origin = entry.origin.clone();
                self.problems.push(ConfigProblem::new(origin, key, message));
                None
            }
        }
    }

    fn get<T: FromValue>(&mut self, key: &str, default: T) -> T {
        self.opt(key).unwrap_or(default)
    }

    fn parsed<T, E: fmt::Display>(
        &mut self,
        key: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> T {
        match self.opt::<String>(key) {
            None => default,
            Some(s) => match parse(&s) {
                Ok(v) => v,
                Err(e) => {
                    self.problem(key, e.to_string());
                    default
                }
            },
        }
    }

    fn check(&mut self, key: &str, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.problem(key, message());
        }
    }

    fn unknown_keys(&mut self, sections: &[&str]) {
        for section in sections {
            for (key, origin) in self.layers.unread_in(section) {
                self.problems.push(ConfigProblem::new(
                    origin.clone(),
                    key,
                    format!("unknown setting `{key}` in [{section}]; check its spelling"),
                ));
            }
        }
    }
}

/// Everything arq's runtime reads from configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ArqConfig {
    /// `[server]`: listening, TLS and shutdown.
    pub server: ServerConfig,
    /// `[edge]`: timeouts, body limit, compression, redaction.
    pub edge: EdgeConfig,
    /// `[cors]`: the allowed origins.
    pub cors: CorsConfig,
    /// `[rate_limit]`: quotas, keys and the Redis back end.
    pub rate_limit: RateLimitConfig,
    /// `[telemetry]`: logs, metrics and tracing.
    pub telemetry: TelemetryConfig,
    /// `[health]`: dependency checks.
    pub health: HealthConfig,
}

impl Default for ArqConfig {
    fn default() -> Self {
        // The defaults read from empty layers can have no problems.
        let layers = Layers::empty();
        let mut r = Reader {
            layers: &layers,
            problems: Vec::new(),
        };
        Self::read(&mut r)
    }
}

impl ArqConfig {
    /// Loads `config/` with the process environment and validates it: what a service's `main`
    /// calls first.
    pub fn load() -> Result<(Self, Layers), ConfigError> {
        Self::load_from(&ConfigLoader::new("config"))
    }

    /// Loads with `loader` and validates, reporting file, variable and value problems together.
    pub fn load_from(loader: &ConfigLoader) -> Result<(Self, Layers), ConfigError> {
        let (layers, mut problems) = loader.load_collecting();
        match Self::from_layers(&layers) {
            Ok(config) if problems.is_empty() => Ok((config, layers)),
            Ok(_) => Err(ConfigError::Invalid { problems }),
            Err(ConfigError::Invalid { problems: more }) => {
                problems.extend(more);
                Err(ConfigError::Invalid { problems })
            }
        }
    }

    /// Reads and validates arq's sections from loaded layers, reporting every problem at once.
    pub fn from_layers(layers: &Layers) -> Result<Self, ConfigError> {
        let mut r = Reader {
            layers,
            problems: Vec::new(),
        };
        let config = Self::read(&mut r);
        r.unknown_keys(&[
            "server",
            "edge",
            "cors",
            "rate_limit",
            "telemetry",
            "health",
        ]);
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                problems: r.problems,
            })
        }
    }

    fn read(r: &mut Reader<'_>) -> Self {
        Self {
            server: ServerConfig::read(r),
            edge: EdgeConfig::read(r),
            cors: CorsConfig::read(r),
            rate_limit: RateLimitConfig::read(r),
            telemetry: TelemetryConfig::read(r),
            health: HealthConfig::read(r),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// `addr`: where to listen (default `0.0.0.0:8080`).
    pub addr: SocketAddr,
    /// `shutdown_timeout`: how long in-flight requests may take to finish after the shutdown
    /// signal (default `30s`).
    pub shutdown_timeout: Duration,
    /// `readiness_delay`: how long readiness reports failing before the listener closes, so load
    /// balancers stop sending traffic first (default `0s`; `5s` is common on Kubernetes).
    pub readiness_delay: Duration,
    /// `http2`: accept HTTP/2 (h2c prior knowledge in cleartext, ALPN `h2` over TLS) (default true).
    pub http2: bool,
    /// `header_read_timeout`: how long an HTTP/1 client may take to send a request head (the
    /// request line and headers) before its connection is closed without an answer, so slow or
    /// silent clients cannot hold connections open (default `30s`; more than zero and at most
    /// `1h`, there is no way to turn it off).
    ///
    /// The clock also runs while a connection waits for its first bytes (before HTTP/1.1 and
    /// HTTP/2 are told apart, and after a TLS handshake) and while a keep-alive connection waits
    /// for its next request: a keep-alive connection idle this long is closed, as nginx's
    /// `client_header_timeout` and `keepalive_timeout` close theirs. Telling the protocols apart
    /// and reading the head are timed separately, so a connection's first head may take up to
    /// twice this. HTTP/2 connections, once their preface has arrived, are not bound by it.
    pub header_read_timeout: Duration,
    /// `[server.tls]`, when both `cert_file` and `key_file` are set.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: serve HTTPS with rustls.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsConfig {
    /// `cert_file`: PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// `key_file`: PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// `client_ca_file`: when set, clients must present a certificate signed by one of these
    /// PEM CA certificates (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// TLS with the given certificate and key, without client authentication.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
        }
    }

    /// Requires client certificates signed by a CA in `ca_file` (mutual TLS).
    pub fn with_client_ca(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.client_ca_file = Some(ca_file.into());
        self
    }
}

/// The longest `server.header_read_timeout`: longer would let slow clients keep connections
/// for hours, and far longer would overflow the clock arithmetic of hyper's timer.
const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3600);

impl ServerConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let addr = r.get("server.addr", SocketAddr::from(([0, 0, 0, 0], 8080)));
        let shutdown_timeout = r.get("server.shutdown_timeout", Duration::from_secs(30));
        let readiness_delay = r.get("server.readiness_delay", Duration::ZERO);
        let http2 = r.get("server.http2", true);
        let header_read_timeout = r.get("server.header_read_timeout", Duration::from_secs(30));
        r.check(
            "server.header_read_timeout",
            !header_read_timeout.is_zero() && header_read_timeout <= MAX_HEADER_READ_TIMEOUT,
            || {
                format!(
                    "must be more than zero and at most 1h, found {header_read_timeout:?}: it bounds how long a client may take to send a request's headers and cannot be turned off"
                )
            },
        );
        let cert: Option<PathBuf> = r.opt("server.tls.cert_file");
        let key: Option<PathBuf> = r.opt("server.tls.key_file");
        let ca: Option<PathBuf> = r.opt("server.tls.client_ca_file");
        for (k, p) in [
            ("server.tls.cert_file", &cert),
            ("server.tls.key_file", &key),
            ("server.tls.client_ca_file", &ca),
        ] {
            if let Some(p) = p {
                r.check(k, p.is_file(), || {
                    format!("the file {} does not exist or is not a file", p.display())
                });
            }
        }
        let tls = match (cert, key) {
            (Some(cert_file), Some(key_file)) => Some(TlsConfig {
                cert_file,
                key_file,
                client_ca_file: ca,
            }),
            (None, None) => {
                if ca.is_some() {
                    r.problem(
                        "server.tls.client_ca_file",
                        "client certificates need TLS: set server.tls.cert_file and server.tls.key_file too",
                    );
                }
                None
            }
            (Some(_), None) => {
                r.problem(
                    "server.tls.cert_file",
                    "TLS needs both cert_file and key_file; key_file is missing",
                );
                None
            }
            (None, Some(_)) => {
                r.problem(
                    "server.tls.key_file",
                    "TLS needs both cert_file and key_file; cert_file is missing",
                );
                None
            }
        };
        Self {
            addr,
            shutdown_timeout,
            readiness_delay,
            http2,
            header_read_timeout,
            tls,
        }
    }
}

/// What status a request that runs out of time gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutStatus {
    /// 504 Gateway Timeout: the default, for gateways and services that wait on dependencies.
    GatewayTimeout,
    /// 408 Request Timeout.
    RequestTimeout,
}

impl TimeoutStatus {
    /// The HTTP status.
    pub fn status(self) -> http::StatusCode {
        match self {
            Self::GatewayTimeout => http::StatusCode::GATEWAY_TIMEOUT,
            Self::RequestTimeout => http::StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// `[edge]`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EdgeConfig {
    /// `request_timeout`: time for the handler to produce response headers (default `30s`).
    pub request_timeout: Duration,
    /// `stream_timeout`: time for the whole response, body included (default `300s`).
    pub stream_timeout: Duration,
    /// `timeout_status`: 504 (default) or 408.
    pub timeout_status: TimeoutStatus,
    /// `body_limit`: the largest request body accepted (default `2MiB`).
    pub body_limit: u64,
    /// `compression_min_size`: smallest body compressed (default 1024 bytes).
    pub compression_min_size: u16,
    /// `sensitive_headers`: headers marked sensitive so no trace shows them (default:
    /// authorization, proxy-authorization, cookie, set-cookie, x-api-key).
    pub sensitive_headers: Vec<http::HeaderName>,
}

impl EdgeConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let request_timeout = r.get("edge.request_timeout", Duration::from_secs(30));
        let stream_timeout = r.get("edge.stream_timeout", Duration::from_secs(300));
        r.check("edge.request_timeout", !request_timeout.is_zero(), || {
            "the request timeout must be more than zero".to_owned()
        });
        r.check("edge.stream_timeout", stream_timeout >= request_timeout, || {
            format!(
                "the stream timeout ({stream_timeout:?}) must be at least the request timeout ({request_timeout:?})"
            )
        });
        let timeout_status =
            r.parsed(
                "edge.timeout_status",
                TimeoutStatus::GatewayTimeout,
                |s| match s {
                    "504" => Ok(TimeoutStatus::GatewayTimeout),
                    "408" => Ok(TimeoutStatus::RequestTimeout),
                    other => Err(format!("expected \"504\" or \"408\", found {other:?}")),
                },
            );
        let body_limit = r.get("edge.body_limit", ByteSize(2 << 20)).0;
        r.check("edge.body_limit", body_limit > 0, || {
            "the body limit must be more than zero".to_owned()
        });
        let compression_min_size = r.get("edge.compression_min_size", 1024u16);
        let names = r.get(
            "edge.sensitive_headers",
            vec![
                "authorization".to_owned(),
                "proxy-authorization".to_owned(),
                "cookie".to_owned(),
                "set-cookie".to_owned(),
                "x-api-key".to_owned(),
            ],
        );
        let mut sensitive_headers = Vec::new();
        for name in names {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => sensitive_headers.push(h),
                Err(_) => r.problem(
                    "edge.sensitive_headers",
                    format!("{name:?} is not a valid header name"),
                ),
            }
        }
        Self {
            request_timeout,
            stream_timeout,
            timeout_status,
            body_limit,
            compression_min_size,
            sensitive_headers,
        }
    }
}

/// `[cors]`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CorsConfig {
    /// `allowed_origins`: exact origins (`https://app.arq.dev`) or one-level-or-deeper wildcard
    /// subdomains (`https://*.arq.dev`). Empty (the default) disables CORS.
    pub allowed_origins: Vec<OriginPattern>,
    /// `allow_credentials`: send `Access-Control-Allow-Credentials: true` (default false).
    pub allow_credentials: bool,
    /// `allowed_methods` (default GET, POST, PUT, PATCH, DELETE).
    pub allowed_methods: Vec<http::Method>,
    /// `allowed_headers` (default authorization, content-type, x-request-id, x-tenant-id,
    /// x-api-key, traceparent, tracestate).
    pub allowed_headers: Vec<http::HeaderName>,
    /// `max_age`: how long browsers may cache a preflight (default `10m`).
    pub max_age: Duration,
}

impl CorsConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let mut allowed_origins = Vec::new();
        for (i, raw) in r
            .get("cors.allowed_origins", Vec::<String>::new())
            .into_iter()
            .enumerate()
        {
            match OriginPattern::parse(&raw) {
                Ok(p) => allowed_origins.push(p),
                Err(e) => r.problem("cors.allowed_origins", format!("item {i}: {e}")),
            }
        }
        let allow_credentials = r.get("cors.allow_credentials", false);
        let mut allowed_methods = Vec::new();
        for m in r.get(
            "cors.allowed_methods",
            ["GET", "POST", "PUT", "PATCH", "DELETE"]
                .map(str::to_owned)
                .to_vec(),
        ) {
            match http::Method::from_bytes(m.as_bytes()) {
                Ok(method) if m != "*" => allowed_methods.push(method),
                _ => r.problem(
                    "cors.allowed_methods",
                    format!(
                        "{m:?} is not an HTTP method (list methods explicitly; '*' is not allowed)"
                    ),
                ),
            }
        }
        let mut allowed_headers = Vec::new();
        for h in r.get(
            "cors.allowed_headers",
            [
                "authorization",
                "content-type",
                "x-request-id",
                "x-tenant-id",
                "x-api-key",
                "traceparent",
                "tracestate",
            ]
            .map(str::to_owned)
            .to_vec(),
        ) {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => allowed_headers.push(name),
                Err(_) => r.problem(
                    "cors.allowed_headers",
                    format!("{h:?} is not a valid header name (list headers explicitly; '*' is not allowed)"),
                ),
            }
        }
        let max_age = r.get("cors.max_age", Duration::from_secs(600));
        Self {
            allowed_origins,
            allow_credentials,
            allowed_methods,
            allowed_headers,
            max_age,
        }
    }
}

/// What the rate limit is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitKey {
    /// The authenticated principal ([`crate::CallerIdentity`]'s subject), else the client IP.
    Principal,
    /// The API key in `X-API-Key` (hashed), else the client IP.
    ApiKey,
    /// The tenant ([`crate::TenantId`] in the request extensions), else the client IP.
    Tenant,
    /// The client IP (from `X-Forwarded-For` only when the peer is a trusted proxy).
    ClientIp,
}

/// Where rate-limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitBackend {
    /// In this process (governor's monotonic clock): per replica.
    Local,
    /// In Redis, shared by every replica.
    Redis,
}

/// What happens to a decision while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisFailurePolicy {
    /// Decide with a local limiter of the same quotas (per replica) until Redis is back.
    Local,
    /// Let every request through.
    Open,
    /// Refuse every request with 503.
    Closed,
}

/// `[rate_limit]`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// `enabled` (default true).
    pub enabled: bool,
    /// `per_minute` (default 600).
    pub per_minute: u32,
    /// `per_hour` (default 10 000).
    pub per_hour: u32,
    /// `key`: `principal` (default), `api_key`, `tenant` or `client_ip`.
    pub key: RateLimitKey,
    /// `backend`: `local` (default) or `redis`.
    pub backend: RateLimitBackend,
    /// `redis_url`: required for the Redis back end.
    pub redis_url: Option<Secret>,
    /// `redis_timeout`: the longest a decision waits for Redis (default `50ms`).
    pub redis_timeout: Duration,
    /// `on_redis_error`: `local` (default), `open` or `closed`.
    pub on_redis_error: RedisFailurePolicy,
    /// `key_prefix`: prefix of Redis keys (default `arq:rl`).
    pub key_prefix: String,
    /// `max_keys`: most keys a local limiter remembers (default 100 000).
    pub max_keys: usize,
    /// `trusted_proxies`: CIDRs whose `X-Forwarded-For` is believed (default none).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl RateLimitConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let enabled = r.get("rate_limit.enabled", true);
        let per_minute = r.get("rate_limit.per_minute", 600u32);
        let per_hour = r.get("rate_limit.per_hour", 10_000u32);
        r.check("rate_limit.per_minute", per_minute > 0, || {
            "must be at least 1 (set rate_limit.enabled = false to turn limiting off)".to_owned()
        });
        r.check("rate_limit.per_hour", per_hour > 0, || {
            "must be at least 1 (set rate_limit.enabled = false to turn limiting off)".to_owned()
        });
        let key = r.parsed("rate_limit.key", RateLimitKey::Principal, |s| match s {
            "principal" => Ok(RateLimitKey::Principal),
            "api_key" => Ok(RateLimitKey::ApiKey),
            "tenant" => Ok(RateLimitKey::Tenant),
            "client_ip" => Ok(RateLimitKey::ClientIp),
            other => Err(format!(
                "expected principal, api_key, tenant or client_ip, found {other:?}"
            )),
        });
        let backend = r.parsed("rate_limit.backend", RateLimitBackend::Local, |s| match s {
            "local" => Ok(RateLimitBackend::Local),
            "redis" => Ok(RateLimitBackend::Redis),
            other => Err(format!("expected local or redis, found {other:?}")),
        });
        let redis_url: Option<Secret> = r.opt("rate_limit.redis_url");
        if let Some(url) = &redis_url {
            r.check(
                "rate_limit.redis_url",
                url.expose().starts_with("redis://")
                    || url.expose().starts_with("rediss://")
                    || url.expose().starts_with("unix://"),
                || "expected a redis://, rediss:// or unix:// URL (the value is secret and not shown)".to_owned(),
            );
        }
        if backend == RateLimitBackend::Redis && redis_url.is_none() {
            r.problem(
                "rate_limit.backend",
                "the redis back end needs rate_limit.redis_url (or ARQ__RATE_LIMIT__REDIS_URL)",
            );
        }
        let redis_timeout = r.get("rate_limit.redis_timeout", Duration::from_millis(50));
        r.check("rate_limit.redis_timeout", !redis_timeout.is_zero(), || {
            "must be more than zero".to_owned()
        });
        let on_redis_error = r.parsed(
            "rate_limit.on_redis_error",
            RedisFailurePolicy::Local,
            |s| match s {
                "local" => Ok(RedisFailurePolicy::Local),
                "open" => Ok(RedisFailurePolicy::Open),
                "closed" => Ok(RedisFailurePolicy::Closed),
                other => Err(format!("expected local, open or closed, found {other:?}")),
            },
        );
        let key_prefix = r.get("rate_limit.key_prefix", "arq:rl".to_owned());
        let max_keys = r.get("rate_limit.max_keys", 100_000usize);
        r.check("rate_limit.max_keys", max_keys >= 16, || {
            "must be at least 16".to_owned()
        });
        let mut trusted_proxies = Vec::new();
        for p in r.get("rate_limit.trusted_proxies", Vec::<String>::new()) {
            let parsed = p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => r.problem(
                    "rate_limit.trusted_proxies",
                    format!("{p:?} is not an IP address or CIDR (like \"10.0.0.0/8\")"),
                ),
            }
        }
        Self {
            enabled,
            per_minute,
            per_hour,
            key,
            backend,
            redis_url,
            redis_timeout,
            on_redis_error,
            key_prefix,
            max_keys,
            trusted_proxies,
        }
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// One JSON object per line (default).
    Json,
    /// Human-readable text, for local runs.
    Pretty,
}

/// `[telemetry]`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// `service_name` (default `arq-service`).
    pub service_name: String,
    /// `log_level`: a tracing filter like `info` or `info,arq_core=debug` (default `info`).
    pub log_level: String,
    /// `log_format`: `json` (default) or `pretty`.
    pub log_format: LogFormat,
    /// `otlp_endpoint`: the OTLP/HTTP receiver traces go to, like `http://collector:4318` (feature
    /// `otlp`, see `telemetry::otlp`); unset disables export.
    pub otlp_endpoint: Option<String>,
    /// `sampling_ratio`: the share of new traces sampled, 0.0 to 1.0 (default 1.0; 0.01 in
    /// production).
    pub sampling_ratio: f64,
}

impl TelemetryConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let service_name = r.get("telemetry.service_name", "arq-service".to_owned());
        r.check("telemetry.service_name", !service_name.is_empty(), || {
            "must not be empty".to_owned()
        });
        let log_level = r.get("telemetry.log_level", "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&log_level) {
            r.problem(
                "telemetry.log_level",
                format!("{log_level:?} is not a tracing filter ({e}); try \"info\" or \"info,arq_core=debug\""),
            );
        }
        let log_format = r.parsed("telemetry.log_format", LogFormat::Json, |s| match s {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            other => Err(format!("expected json or pretty, found {other:?}")),
        });
        let otlp_endpoint: Option<String> = r.opt("telemetry.otlp_endpoint");
        if let Some(e) = &otlp_endpoint {
            r.check(
                "telemetry.otlp_endpoint",
                e.starts_with("http://") || e.starts_with("https://"),
                || format!("expected an http:// or https:// URL, found {e:?}"),
            );
        }
        let sampling_ratio = r.get("telemetry.sampling_ratio", 1.0f64);
        r.check(
            "telemetry.sampling_ratio",
            (0.0..=1.0).contains(&sampling_ratio),
            || format!("must be between 0.0 and 1.0, found {sampling_ratio}"),
        );
        Self {
            service_name,
            log_level,
            log_format,
            otlp_endpoint,
            sampling_ratio,
        }
    }
}

/// `[health]`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthConfig {
    /// `check_timeout`: the longest one readiness check may take (default `2s`).
    pub check_timeout: Duration,
    /// `postgres_url`: when set, readiness checks PostgreSQL there.
    pub postgres_url: Option<Secret>,
    /// `redis_url`: when set, readiness checks Redis there.
    pub redis_url: Option<Secret>,
    /// `amqp_url`: when set, readiness checks RabbitMQ there.
    pub amqp_url: Option<Secret>,
}

impl HealthConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        let check_timeout = r.get("health.check_timeout", Duration::from_secs(2));
        r.check("health.check_timeout", !check_timeout.is_zero(), || {
            "must be more than zero".to_owned()
        });
        let mut url = |key: &str, schemes: &[&str]| {
            let v: Option<Secret> = r.opt(key);
            if let Some(s) = &v {
                r.check(
                    key,
                    schemes.iter().any(|sc| s.expose().starts_with(sc)),
                    || {
                        format!(
                            "expected a URL starting with {} (the value is secret and not shown)",
                            schemes.join(" or ")
                        )
                    },
                );
            }
            v
        };
        let postgres_url = url("health.postgres_url", &["postgres://", "postgresql://"]);
        let redis_url = url("health.redis_url", &["redis://", "rediss://"]);
        let amqp_url = url("health.amqp_url", &["amqp://", "amqps://"]);
        Self {
            check_timeout,
            postgres_url,
            redis_url,
            amqp_url,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(
            value::parse_duration("250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(value::parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(value::parse_duration("30"), None);
        assert_eq!(value::parse_duration("x"), None);
        assert_eq!(value::parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn defaults_are_valid() {
        let c = ArqConfig::default();
        assert_eq!(c.rate_limit.per_minute, 600);
        assert_eq!(c.rate_limit.per_hour, 10_000);
        assert_eq!(c.edge.compression_min_size, 1024);
        assert_eq!(c.edge.request_timeout, Duration::from_secs(30));
        assert_eq!(c.edge.stream_timeout, Duration::from_secs(300));
    }
}
