//! `/health/live` and `/health/ready`.
//!
//! Liveness answers 200 while the process serves requests at all. Readiness runs every
//! registered [`HealthCheck`] concurrently, each under its own timeout, and answers 200 only when
//! all pass and the service is not shutting down; the JSON body reports each check:
//!
//! ```json
//! {"status":"fail","checks":{"postgres":{"status":"pass","duration_ms":2},
//!  "redis":{"status":"fail","error":"timed out after 2000 ms","duration_ms":2000}}}
//! ```
//!
//! Built-in checks speak each server's protocol far enough to prove that server answers:
//! [`RedisCheck`] sends `PING`; [`PostgresCheck`] sends the protocol's `SSLRequest` and expects
//! PostgreSQL's one-byte answer; [`AmqpCheck`] sends the AMQP 0-9-1 protocol header and expects
//! `Connection.Start`. They need no database driver in arq-core; a service that has a pool can
//! register a [`FnCheck`] that runs `select 1` on it instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{HealthConfig, Secret};

/// The future a check returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// One dependency check for readiness.
pub trait HealthCheck: Send + Sync + 'static {
    /// The name it is reported under (`postgres`, `redis`, …).
    fn name(&self) -> &str;
    /// Runs the check; `Err` says what failed (never a secret: no URLs with passwords).
    fn check(&self) -> CheckFuture<'_>;
}

/// A check from a closure.
///
/// # Example
/// ```
/// use arq_core::health::{FnCheck, Health};
///
/// let health = Health::new(std::time::Duration::from_secs(1))
///     .with_check(FnCheck::new("cache", || async { Ok(()) }));
/// ```
pub struct FnCheck<F> {
    name: String,
    f: F,
}

impl<F> FnCheck<F> {
    /// A check named `name` that runs `f`.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        Self {
            name: name.into(),
            f,
        }
    }
}

impl<F, Fut> HealthCheck for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin((self.f)())
    }
}

/// Readiness state and checks. Clones share state: the server flips
/// [`Health::set_shutting_down`] and every clone's `/health/ready` starts failing.
#[derive(Clone)]
pub struct Health {
    checks: Arc<Vec<Arc<dyn HealthCheck>>>,
    timeout: Duration,
    shutting_down: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self.checks.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl Health {
    /// No checks yet; each check gets `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            checks: Arc::default(),
            timeout,
            shutting_down: Arc::default(),
        }
    }

    /// The checks `[health]` names: PostgreSQL, Redis and RabbitMQ for each URL set.
    pub fn from_config(config: &HealthConfig) -> Self {
        let mut h = Self::new(config.check_timeout);
        if let Some(url) = &config.postgres_url {
            h = h.with_check(PostgresCheck::new(url.clone()));
        }
        if let Some(url) = &config.redis_url {
            h = h.with_check(RedisCheck::new(url.clone()));
        }
        if let Some(url) = &config.amqp_url {
            h = h.with_check(AmqpCheck::new(url.clone()));
        }
        h
    }

    /// Adds a check.
    pub fn with_check(mut self, check: impl HealthCheck) -> Self {
        let mut checks: Vec<_> = self.checks.iter().cloned().collect();
        checks.push(Arc::new(check));
        self.checks = Arc::new(checks);
        self
    }

    /// Makes readiness fail from now on (the first step of graceful shutdown).
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Runs every check concurrently and reports: `(all passed and not shutting down, body)`.
    pub async fn readiness(&self) -> (bool, Value) {
        let results = futures_util::future::join_all(self.checks.iter().map(|c| {
            let timeout = self.timeout;
            async move {
                let start = Instant::now();
                let outcome = match tokio::time::timeout(timeout, c.check()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
                };
                (c.name().to_owned(), outcome, start.elapsed())
            }
        }))
        .await;
        let mut ok = !self.is_shutting_down();
        let mut checks = Map::new();
        for (name, outcome, elapsed) in results {
            let ms = elapsed.as_millis() as u64;
            let entry = match outcome {
                Ok(()) => json!({"status": "pass", "duration_ms": ms}),
                Err(e) => {
                    ok = false;
                    json!({"status": "fail", "error": e, "duration_ms": ms})
                }
            };
            checks.insert(name, entry);
        }
        let mut body = json!({
            "status": if ok { "pass" } else { "fail" },
            "checks": checks,
        });
        if self.is_shutting_down() {
            body["shutting_down"] = Value::Bool(true);
        }
        (ok, body)
    }

    /// `GET /health/live` and `GET /health/ready`.
    pub fn router(&self) -> Router {
        let ready = self.clone();
        Router::new()
            .route(
                "/health/live",
                get(|| async { Json(json!({"status": "pass"})) }),
            )
            .route(
                "/health/ready",
                get(move || {
                    let health = ready.clone();
                    async move {
                        let (ok, body) = health.readiness().await;
                        let status = if ok {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        let response: Response = (status, Json(body)).into_response();
                        response
                    }
                }),
            )
    }
}

/// `host:port` of a URL like `scheme://user:pass@host:port/path`, without the credentials.
fn host_port(url: &str, default_port: u16) -> Result<String, String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or("the URL has no scheme")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    let has_port = if host.starts_with('[') {
        host.contains("]:")
    } else {
        host.contains(':')
    };
    Ok(if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    })
}

async fn connect(url: &str, default_port: u16) -> Result<tokio::net::TcpStream, String> {
    let addr = host_port(url, default_port)?;
    tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

/// Readiness of a Redis server: `PING`.
pub struct RedisCheck {
    url: Secret,
}

impl RedisCheck {
    /// Checks the Redis at `url`.
    pub fn new(url: Secret) -> Self {
        Self { url }
    }
}

impl HealthCheck for RedisCheck {
    fn name(&self) -> &str {
        "redis"
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let client = redis::Client::open(self.url.expose().as_str())
                .map_err(|e| format!("invalid Redis URL: {}", e.kind_str()))?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("cannot connect: {}", e.kind_str()))?;
            let pong: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("PING failed: {}", e.kind_str()))?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(format!("PING answered {pong:?}"))
            }
        })
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    // Redis errors can echo the URL; report the kind and the server's message only.
    fn kind_str(&self) -> String {
        format!("{:?}: {}", self.kind(), self.detail().unwrap_or(""))
    }
}

/// Readiness of a PostgreSQL server: the protocol's `SSLRequest`, answered `S` or `N` by every
/// PostgreSQL, proves the server (not just a port) answers.
pub struct PostgresCheck {
    url: Secret,
}

impl PostgresCheck {
    /// Checks the PostgreSQL at `url`.
    pub fn new(url: Secret) -> Self {
        Self { url }
    }
}

impl HealthCheck for PostgresCheck {
    fn name(&self) -> &str {
        "postgres"
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let mut s = connect(self.url.expose(), 5432).await?;
            // Length 8, then the SSLRequest code 80877103.
            s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            let mut answer = [0u8; 1];
            s.read_exact(&mut answer)
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            match answer[0] {
                b'S' | b'N' => Ok(()),
                other => Err(format!(
                    "the server answered 0x{other:02x}, not like PostgreSQL"
                )),
            }
        })
    }
}

/// Readiness of a RabbitMQ (AMQP 0-9-1) server: the protocol header, answered by a
/// `Connection.Start` method frame.
pub struct AmqpCheck {
    url: Secret,
}

impl AmqpCheck {
    /// Checks the broker at `url`.
    pub fn new(url: Secret) -> Self {
        Self { url }
    }
}

impl HealthCheck for AmqpCheck {
    fn name(&self) -> &str {
        "rabbitmq"
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            let mut s = connect(self.url.expose(), 5672).await?;
            s.write_all(b"AMQP\x00\x00\x09\x01")
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            // Frame header: type 1 (method), channel 0, size; then class 10 method 10.
            let mut head = [0u8; 11];
            s.read_exact(&mut head)
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            if head[0] == 1 && head[1..3] == [0, 0] && head[7..11] == [0, 10, 0, 10] {
                Ok(())
            } else {
                Err("the server did not answer with AMQP Connection.Start".to_owned())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_strips_credentials() {
        assert_eq!(
            host_port("postgres://u:p@db:6543/x", 5432).unwrap(),
            "db:6543"
        );
        assert_eq!(host_port("amqp://g:g@mq/%2f", 5672).unwrap(), "mq:5672");
        assert_eq!(host_port("redis://[::1]:1/", 6379).unwrap(), "[::1]:1");
        assert!(host_port("nothing", 1).is_err());
    }
}
