//! `notification.push`: signed webhook deliveries, only to allowed hosts, with a circuit
//! breaker per endpoint.
//!
//! A delivery is `POST <url>` with the message's `data` as the JSON body and these headers:
//!
//! | header | value |
//! |---|---|
//! | `X-Arq-Signature` | `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` |
//! | `X-Arq-Event` | the message's `event` |
//! | `X-Arq-Delivery` | the message id: the same on every retry, so receivers can deduplicate |
//!
//! (arq-core's client also sends `X-Request-ID`, `traceparent` and `X-Tenant-ID`.) Receivers
//! check the signature with [`verify_signature`] (or its few lines in any language), rejecting
//! old timestamps to stop replays.
//!
//! What happens to a delivery:
//!
//! | outcome | result |
//! |---|---|
//! | a 2xx answer | delivered |
//! | 408, 429, 5xx, a timeout or a connection error | transient: retried after the queue's `retry_delay`, up to `max_attempts`, then dead-lettered |
//! | the endpoint's breaker is open | transient, and **no request is sent** |
//! | any other answer (other 4xx, 3xx: redirects are not followed) | permanent: dead-lettered at once |
//! | a host not in `[webhooks] allowed_hosts`, a URL that is not `http(s)://host…` | permanent, no request sent |
//!
//! **SSRF guard.** Only hosts listed in `allowed_hosts` are ever called, compared by name (and
//! port when the entry has one) before any connection; redirects are never followed. The list is
//! matched on the URL's host name, not on the address it resolves to: list names whose DNS you
//! control.
//!
//! **One breaker per endpoint** (scheme, host and port), kept in a shared
//! [`ResilienceRegistry`] under the name `webhook:<scheme>://<host>:<port>`: one receiver that
//! keeps failing is no longer called while its breaker is open, and its failures never slow the
//! deliveries to other receivers. The breakers' state and counts are in `/metrics`
//! (`arq_circuit_breaker_state{dependency="webhook:…"}` and friends).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arq_core::client::{ClientError, HttpClient};
use arq_core::config::Secret;
use arq_core::metrics::MetricsRegistry;
use arq_core::resilience::{
    CircuitBreaker, CircuitBreakerConfig, Classify, ConfigError, DependencyConfig, DependencyKind,
    Outcome, ResilienceError, ResilienceMetrics, ResilienceRegistry, RetryDecision, SlidingWindow,
};
use arq_queue::{HandlerError, Job, Message, MessageId};
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, Uri, header};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-arq-signature";
/// The event header.
pub const EVENT_HEADER: &str = "x-arq-event";
/// The delivery (message id) header.
pub const DELIVERY_HEADER: &str = "x-arq-delivery";

/// The shortest signing secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// A message on `notification.push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushNotification {
    /// The receiver's URL: `http` or `https`, its host in `[webhooks] allowed_hosts`.
    pub url: String,
    /// The event name (`task.completed`): 1–100 letters, digits, `.`, `_`, `-` or `:`.
    pub event: String,
    /// The JSON posted as the body.
    pub data: serde_json::Value,
}

impl Message for PushNotification {
    const TYPE: &'static str = "notification.push";
}

/// `[webhooks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The HMAC key deliveries are signed with. Only from the environment
    /// (`ARQ__WEBHOOKS__SIGNING_SECRET`) or a secret store, never a committed file; the worker
    /// refuses to start without one.
    #[serde(default, deserialize_with = "optional_secret")]
    pub signing_secret: Option<Secret<String>>,
    /// The hosts deliveries may go to: `host` (any port) or `host:port`; IPv6 as `[::1]:8080`.
    /// Empty: every delivery is refused.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// How long one delivery may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Each endpoint's circuit breaker.
    #[serde(default)]
    pub breaker: BreakerSettings,
}

const fn default_timeout_ms() -> u64 {
    10_000
}

fn optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret<String>>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(Secret::new))
}

/// `[webhooks.breaker]`: the circuit breaker every endpoint gets (arq-core's breaker over a
/// count window).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// The last deliveries the failure rate is computed over.
    pub window_size: u32,
    /// Deliveries needed in the window before it may open.
    pub min_calls: u32,
    /// The failure rate that opens it (0 < r ≤ 1).
    pub failure_rate_threshold: f64,
    /// How long it stays open, in milliseconds, before probes are let through.
    pub open_duration_ms: u64,
    /// Probes let through half-open; that many successes close it.
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window_size: 10,
            min_calls: 5,
            failure_rate_threshold: 0.5,
            open_duration_ms: 30_000,
            half_open_probes: 1,
        }
    }
}

impl BreakerSettings {
    /// arq-core's breaker configuration, validated.
    pub fn config(&self) -> Result<CircuitBreakerConfig, ConfigError> {
        let mut c = CircuitBreakerConfig::default();
        c.window = SlidingWindow::Count {
            size: self.window_size,
        };
        c.min_calls = self.min_calls;
        c.failure_rate_threshold = self.failure_rate_threshold;
        c.open_duration = Duration::from_millis(self.open_duration_ms);
        c.half_open_probes = self.half_open_probes;
        c.validate()?;
        Ok(c)
    }
}

/// Where a delivery goes, as far as its breaker is concerned: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// The host, lowercase (IPv6 in brackets).
    pub host: String,
    /// The port, explicit or the scheme's default.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// A URL that can be delivered to: its endpoint and a form safe to log (no query).
#[derive(Debug, Clone)]
pub struct Target {
    /// The parsed URL.
    pub uri: Uri,
    /// Its endpoint.
    pub endpoint: Endpoint,
}

impl Target {
    /// Parses `url`: `http(s)://host[:port]/path?query`, without user information.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`url` is not a URL ({e}): {url:?}"))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_owned(),
            _ => return Err(format!("`url` must be an http or https URL: {url:?}")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`url` has no host: {url:?}"))?;
        if authority.as_str().contains('@') {
            return Err("`url` must not contain user information (user@host)".to_owned());
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("`url` has no host: {url:?}"));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self {
            endpoint: Endpoint { scheme, host, port },
            uri,
        })
    }

    /// The URL without its query (which may carry a token), for logs and dead letters.
    pub fn redacted(&self) -> String {
        format!("{}{}", self.endpoint, self.uri.path())
    }
}

/// One entry of `allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    fn parse(entry: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            Err(format!(
                "[webhooks] allowed_hosts entry {entry:?}: {why} (write `host` or `host:port`)"
            ))
        };
        let entry_l = entry.trim().to_ascii_lowercase();
        if entry_l.is_empty() || entry_l.contains("://") || entry_l.contains(['/', '@', ' ']) {
            return bad("not a host name");
        }
        let (host, port) = match entry_l.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
                match p.parse::<u16>() {
                    Ok(p) => (h.to_owned(), Some(p)),
                    Err(_) => return bad("the port is not a number"),
                }
            }
            _ => (entry_l.clone(), None),
        };
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return bad("write IPv6 addresses in brackets");
        }
        Ok(Self { host, port })
    }

    fn allows(&self, e: &Endpoint) -> bool {
        self.host == e.host && self.port.is_none_or(|p| p == e.port)
    }
}

/// The per-endpoint circuit breakers, in a [`ResilienceRegistry`] shared by every handler.
#[derive(Debug, Clone)]
pub struct Breakers {
    registry: ResilienceRegistry,
    config: DependencyConfig,
}

impl Breakers {
    /// Breakers configured by `settings`, recording into `metrics`.
    pub fn new(
        settings: &BreakerSettings,
        metrics: ResilienceMetrics,
    ) -> Result<Self, ConfigError> {
        let mut config = DependencyConfig::for_kind(DependencyKind::External);
        config.breaker = settings.config()?;
        Ok(Self {
            registry: ResilienceRegistry::new(metrics),
            config,
        })
    }

    /// The breaker of `endpoint`, created on first use; every caller gets the same one.
    pub fn for_endpoint(&self, endpoint: &Endpoint) -> Result<CircuitBreaker, ConfigError> {
        let name = format!("webhook:{endpoint}");
        let dependency = match self.registry.get(&name) {
            Some(d) => d,
            None => self.registry.insert(&name, self.config.clone())?,
        };
        Ok(dependency.breaker().clone())
    }
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<unix seconds>,v1=<hex>`.
    #[error("malformed X-Arq-Signature (expected t=<unix seconds>,v1=<hex>)")]
    Malformed,
    /// The timestamp is further from now than the tolerance (a replay, or a skewed clock).
    #[error(
        "the signature's timestamp is {age_secs} s away from now (tolerance {tolerance_secs} s)"
    )]
    Stale {
        /// How far from now, in seconds.
        age_secs: i64,
        /// The tolerance, in seconds.
        tolerance_secs: i64,
    },
    /// No `v1` value matches the body.
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks an `X-Arq-Signature` header against `body`, as a receiver does: the timestamp within
/// `tolerance_secs` of `now` (unix seconds), and an HMAC comparison in constant time.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => {
                candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let age_secs = (now - timestamp).abs();
    if age_secs > tolerance_secs {
        return Err(SignatureError::Stale {
            age_secs,
            tolerance_secs,
        });
    }
    let expected = mac(secret, timestamp, body);
    if candidates
        .iter()
        .any(|c| expected.clone().verify_slice(c).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// How a delivery went, when it did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The message can never be delivered as it is (bad URL or event).
    #[error("{0}")]
    Invalid(String),
    /// The host is not in `[webhooks] allowed_hosts`: nothing was sent.
    #[error("host {host} is not in [webhooks] allowed_hosts; nothing was sent")]
    NotAllowed {
        /// The refused host.
        host: String,
    },
    /// The endpoint's breaker is open: nothing was sent.
    #[error("the circuit breaker for {endpoint} is open{}; nothing was sent", retry_after.map(|d| format!(" (probes again in {} ms)", d.as_millis())).unwrap_or_default())]
    CircuitOpen {
        /// The endpoint.
        endpoint: Endpoint,
        /// When the breaker lets a probe through.
        retry_after: Option<Duration>,
    },
    /// An answer or failure worth retrying (408, 429, 5xx, timeout, connection error).
    #[error("POST {url}: {reason}")]
    Transient {
        /// The URL without its query.
        url: String,
        /// The status or error.
        reason: String,
    },
    /// An answer no retry can change (another 4xx, a redirect).
    #[error("POST {url}: {reason}")]
    Rejected {
        /// The URL without its query.
        url: String,
        /// The status.
        reason: String,
    },
}

impl DeliveryError {
    /// Whether retrying cannot help.
    pub const fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Invalid(_) | Self::NotAllowed { .. } | Self::Rejected { .. }
        )
    }
}

/// Whether a status is worth retrying: 408, 429 and every 5xx.
pub fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429) || status.is_server_error()
}

/// How the breaker counts a delivery: transport errors and transient statuses are the
/// endpoint's failures; any other answer (even a 4xx) shows the endpoint is up.
#[derive(Debug, Clone, Copy)]
struct WebhookOutcome;

impl Classify<Response<Body>, ClientError> for WebhookOutcome {
    fn outcome(&self, result: Result<&Response<Body>, &ClientError>) -> Outcome {
        match result {
            Ok(r) if !is_transient(r.status()) => Outcome::Success,
            _ => Outcome::Failure,
        }
    }

    fn retry(&self, _: Result<&Response<Body>, &ClientError>) -> RetryDecision {
        // Retries are the queue's (wait queue, then dead letters), never in-process.
        RetryDecision::Never
    }
}

fn valid_event(event: &str) -> bool {
    (1..=100).contains(&event.len())
        && event
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// Delivers webhooks; clones share the HTTP connection pool and the breakers.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    client: HttpClient,
    breakers: Breakers,
    secret: Secret<String>,
    allowed: Vec<AllowedHost>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("allowed", &self.inner.allowed)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Checks `settings` (refusing to start without a signing secret, saying how to set one)
    /// and builds the client and the breakers, registering their metrics in `registry`.
    pub fn new(settings: &WebhookSettings, registry: &MetricsRegistry) -> anyhow::Result<Self> {
        let secret = match &settings.signing_secret {
            Some(s) if s.expose().len() >= MIN_SECRET_LEN => s.clone(),
            Some(_) => anyhow::bail!(
                "[webhooks] signing_secret is shorter than {MIN_SECRET_LEN} bytes: set \
                 ARQ__WEBHOOKS__SIGNING_SECRET to a longer random value (e.g. `openssl rand -hex 32`)"
            ),
            None => anyhow::bail!(
                "[webhooks] signing_secret is not set: set ARQ__WEBHOOKS__SIGNING_SECRET to a random \
                 value of at least {MIN_SECRET_LEN} bytes (e.g. `openssl rand -hex 32`), shared \
                 with the webhook receivers; it never belongs in a config file in the repository"
            ),
        };
        let allowed = settings
            .allowed_hosts
            .iter()
            .map(|h| AllowedHost::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        if settings.timeout_ms == 0 {
            anyhow::bail!("[webhooks] timeout_ms must be more than 0");
        }
        let metrics = ResilienceMetrics::register(registry)
            .context("cannot register the circuit breaker metrics")?;
        let breakers = Breakers::new(&settings.breaker, metrics)
            .map_err(|e| anyhow::anyhow!("[webhooks.breaker] {}: {}", e.what, e.why))?;
        let client = HttpClient::builder("webhooks")
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build(registry)
            .context("cannot build the webhook HTTP client")?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                breakers,
                secret,
                allowed,
            }),
        })
    }

    /// The breakers (to inspect an endpoint's state).
    pub fn breakers(&self) -> &Breakers {
        &self.inner.breakers
    }

    /// Delivers `message` as delivery `id`; see the module docs for the outcomes.
    pub async fn deliver(
        &self,
        id: MessageId,
        message: &PushNotification,
    ) -> Result<StatusCode, DeliveryError> {
        let target = Target::parse(&message.url).map_err(DeliveryError::Invalid)?;
        if !valid_event(&message.event) {
            return Err(DeliveryError::Invalid(format!(
                "`event` must be 1 to 100 letters, digits, '.', '_', '-' or ':' (got {:?})",
                message.event
            )));
        }
        if !self
            .inner
            .allowed
            .iter()
            .any(|a| a.allows(&target.endpoint))
        {
            return Err(DeliveryError::NotAllowed {
                host: target.endpoint.host.clone(),
            });
        }
        let url = target.redacted();
        let body = serde_json::to_vec(&message.data)
            .map_err(|e| DeliveryError::Invalid(format!("`data` cannot be serialized: {e}")))?;
        let signed = signature(
            self.inner.secret.expose().as_bytes(),
            chrono::Utc::now().timestamp(),
            &body,
        );
        let request = Request::post(target.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "arq-notifications/0.1")
            .header(SIGNATURE_HEADER, signed)
            .header(EVENT_HEADER, &message.event)
            .header(DELIVERY_HEADER, id.to_string())
            .body(Body::from(body))
            .map_err(|e| DeliveryError::Invalid(format!("cannot build the request: {e}")))?;
        let breaker = self
            .inner
            .breakers
            .for_endpoint(&target.endpoint)
            .map_err(|e| DeliveryError::Invalid(format!("breaker: {e}")))?;
        let client = &self.inner.client;
        match breaker
            .call_classified(&WebhookOutcome, || client.send(request))
            .await
        {
            Ok(response) => {
                let status = response.status();
                // The body is not read: receivers answer with a status.
                drop(response);
                let reason = format!("answered {status}");
                if status.is_success() {
                    Ok(status)
                } else if is_transient(status) {
                    Err(DeliveryError::Transient { url, reason })
                } else if status.is_redirection() {
                    Err(DeliveryError::Rejected {
                        url,
                        reason: format!("{reason} (redirects are not followed)"),
                    })
                } else {
                    Err(DeliveryError::Rejected { url, reason })
                }
            }
            Err(ResilienceError::CircuitOpen(open)) => Err(DeliveryError::CircuitOpen {
                endpoint: target.endpoint,
                retry_after: open.retry_after(),
            }),
            Err(ResilienceError::Inner(ClientError::InvalidUrl(e))) => {
                Err(DeliveryError::Invalid(format!("`url` cannot be used: {e}")))
            }
            Err(e) => Err(DeliveryError::Transient {
                url,
                reason: e.to_string(),
            }),
        }
    }
}

/// Handles one `notification.push` message: a message without a tenant, or one that can never
/// be delivered, is dead-lettered at once with the reason; a transient failure is retried.
pub async fn handle(webhooks: &Webhooks, job: Job<PushNotification>) -> Result<(), HandlerError> {
    let tenant = job.tenant.ok_or_else(|| {
        HandlerError::permanent("the message has no tenant; publish it with Envelope::with_tenant")
    })?;
    match webhooks.deliver(job.id, &job.payload).await {
        Ok(status) => {
            tracing::info!(%tenant, id = %job.id, attempt = job.attempt, status = status.as_u16(), event = %job.payload.event, "webhook delivered");
            Ok(())
        }
        Err(e) if e.is_permanent() => Err(HandlerError::permanent(e)),
        Err(e) => {
            tracing::warn!(%tenant, id = %job.id, attempt = job.attempt, error = %e, "webhook delivery failed; the queue retries it");
            Err(HandlerError::retry(e))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use arq_core::resilience::CircuitState;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let body = br#"{"task":1}"#;
        let header = signature(secret, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        verify_signature(secret, &header, body, 1_700_000_100, 300).unwrap();
        assert_eq!(
            verify_signature(secret, &header, br#"{"task":2}"#, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(
                b"another secret of enough length!!",
                &header,
                body,
                1_700_000_000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_signature(secret, &header, body, 1_700_001_000, 300),
            Err(SignatureError::Stale { age_secs: 1000, .. })
        ));
        assert_eq!(
            verify_signature(secret, "v1=00", body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
        // The signed string is "<t>.<body>": a known vector computed independently
        // (python3 -c 'import hmac,hashlib; print(hmac.new(b"key", b"1.{}", hashlib.sha256).hexdigest())').
        assert_eq!(
            signature(b"key", 1, b"{}"),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }

    #[test]
    fn targets_and_allowed_hosts() {
        let t = Target::parse("https://Hooks.Example.com/in?token=secret").unwrap();
        assert_eq!(t.endpoint.to_string(), "https://hooks.example.com:443");
        assert_eq!(t.redacted(), "https://hooks.example.com:443/in");
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/x")
                .unwrap()
                .endpoint
                .port,
            8080
        );
        for bad in [
            "ftp://a.example/",
            "/relative",
            "http://user:pw@a.example/",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let any_port = AllowedHost::parse("hooks.example.com").unwrap();
        let one_port = AllowedHost::parse("127.0.0.1:8080").unwrap();
        let v6 = AllowedHost::parse("[::1]:9000").unwrap();
        let ep = |url: &str| Target::parse(url).unwrap().endpoint;
        assert!(any_port.allows(&ep("https://hooks.example.com/a")));
        assert!(any_port.allows(&ep("http://HOOKS.example.com:81/a")));
        assert!(!any_port.allows(&ep("https://hooks.example.com.evil.test/a")));
        assert!(one_port.allows(&ep("http://127.0.0.1:8080/")));
        assert!(!one_port.allows(&ep("http://127.0.0.1:8081/")));
        assert!(v6.allows(&ep("http://[::1]:9000/")));
        for bad in [
            "https://a.example",
            "a.example/x",
            "a.example:port",
            "::1",
            "",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 410, 422] {
            assert!(!is_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    fn answer(status: u16) -> Result<Response<Body>, ClientError> {
        Ok(Response::builder()
            .status(status)
            .body(Body::empty())
            .unwrap())
    }

    /// The breakers in isolation, on tokio's paused clock: keyed per endpoint, opened by that
    /// endpoint's failures only, half-open exactly when `open_duration` has passed.
    #[tokio::test(start_paused = true)]
    async fn one_breaker_per_endpoint_opens_and_recovers_on_time() {
        let settings = BreakerSettings {
            window_size: 4,
            min_calls: 4,
            failure_rate_threshold: 0.5,
            open_duration_ms: 30_000,
            half_open_probes: 1,
        };
        let breakers = Breakers::new(&settings, ResilienceMetrics::unregistered()).unwrap();
        let failing = Target::parse("http://a.example:8080/x").unwrap().endpoint;
        let same = Target::parse("http://A.example:8080/other?q=1")
            .unwrap()
            .endpoint;
        let healthy = Target::parse("http://b.example:8080/x").unwrap().endpoint;
        let other_port = Target::parse("http://a.example:9090/x").unwrap().endpoint;

        let call = |endpoint: &Endpoint, status: u16| {
            let breaker = breakers.for_endpoint(endpoint).unwrap();
            async move {
                breaker
                    .call_classified(&WebhookOutcome, || async { answer(status) })
                    .await
                    .map(|r| r.status().as_u16())
            }
        };
        // A 4xx is the endpoint answering: it never opens the breaker.
        for _ in 0..10 {
            call(&failing, 404).await.unwrap();
        }
        assert_eq!(
            breakers.for_endpoint(&failing).unwrap().state(),
            CircuitState::Closed
        );
        // Two 503s in the last four calls: 50 % opens it.
        call(&failing, 503).await.unwrap();
        call(&failing, 200).await.unwrap();
        assert_eq!(
            breakers.for_endpoint(&failing).unwrap().state(),
            CircuitState::Closed
        );
        call(&failing, 503).await.unwrap();
        assert_eq!(
            breakers.for_endpoint(&same).unwrap().state(),
            CircuitState::Open
        );
        assert!(matches!(
            call(&same, 200).await,
            Err(ResilienceError::CircuitOpen(_))
        ));
        // Other endpoints, including another port of the same host, are not affected.
        assert_eq!(call(&healthy, 200).await.unwrap(), 200);
        assert_eq!(call(&other_port, 200).await.unwrap(), 200);

        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(matches!(
            call(&failing, 200).await,
            Err(ResilienceError::CircuitOpen(_))
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        // The probe fails: open again for another 30 s.
        call(&failing, 500).await.unwrap();
        assert!(matches!(
            call(&failing, 200).await,
            Err(ResilienceError::CircuitOpen(_))
        ));
        tokio::time::advance(Duration::from_secs(30)).await;
        // A successful probe closes it.
        assert_eq!(call(&failing, 200).await.unwrap(), 200);
        assert_eq!(
            breakers.for_endpoint(&failing).unwrap().state(),
            CircuitState::Closed
        );
    }
}
