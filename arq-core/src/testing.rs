//! Helpers for tests: the real PostgreSQL, Redis or RabbitMQ, and an API called in-process.
//!
//! [`require`] reads a service's URL from an environment variable (with a loopback default),
//! checks that something answers there, and panics with instructions when nothing does: a test
//! that needs a service never passes silently or skips without saying so.
//!
//! [`TestClient`] sends requests to a `tower::Service` (an axum `Router`, the edge stack) with
//! `oneshot`, JSON in and out, an optional bearer token and any extra headers; arq-auth's
//! `testing::TestIssuer` mints the tokens.
#![allow(clippy::panic, reason = "test helpers fail the test with instructions")]

mod http;

pub use http::{TestClient, TestRequest, TestResponse};

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A service that tests can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TestService {
    /// PostgreSQL, URL in `ARQ_TEST_DATABASE_URL`.
    Postgres,
    /// Redis, URL in `ARQ_TEST_REDIS_URL`.
    Redis,
    /// RabbitMQ, URL in `ARQ_TEST_AMQP_URL`.
    RabbitMq,
}

impl TestService {
    /// The environment variable that overrides the URL.
    pub const fn env_var(self) -> &'static str {
        match self {
            Self::Postgres => "ARQ_TEST_DATABASE_URL",
            Self::Redis => "ARQ_TEST_REDIS_URL",
            Self::RabbitMq => "ARQ_TEST_AMQP_URL",
        }
    }

    /// The URL used when the variable is not set.
    pub const fn default_url(self) -> &'static str {
        match self {
            Self::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Self::Redis => "redis://127.0.0.1:6379",
            Self::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Redis => "Redis",
            Self::RabbitMq => "RabbitMQ",
        }
    }

    const fn default_port(self) -> u16 {
        match self {
            Self::Postgres => 5432,
            Self::Redis => 6379,
            Self::RabbitMq => 5672,
        }
    }
}

/// The URL of `service`, after checking that it accepts TCP connections.
///
/// # Panics
/// When nothing listens there, with a message naming the URL and how to start the service.
pub fn require(service: TestService) -> String {
    let url = std::env::var(service.env_var()).unwrap_or_else(|_| service.default_url().to_owned());
    let addr = host_port(&url, service.default_port());
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if !reachable {
        panic!(
            "{name} is not reachable at {addr} ({var}={url}).\n\
             Start the local services with `scripts/services up` from the repository root, \
             or point {var} at a running {name}.",
            name = service.name(),
            var = service.env_var(),
        );
    }
    url
}

/// Extracts `host:port` from a URL of the form `scheme://[user[:pass]@]host[:port][/...]`.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let has_port = match host_port.rfind(']') {
        Some(end) => host_port[end..].contains(':'),
        None => host_port.contains(':'),
    };
    if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/test", 1),
            "127.0.0.1:5432"
        );
        assert_eq!(host_port("redis://localhost", 6379), "localhost:6379");
        assert_eq!(
            host_port("amqp://guest:guest@[::1]:5672/%2f", 1),
            "[::1]:5672"
        );
        assert_eq!(host_port("amqp://u:p@[::1]/%2f", 5672), "[::1]:5672");
    }
}
