//! The outbox relay: publishes the events committed to `arq_outbox` ([`crate::events`]) to
//! RabbitMQ and deletes them, with arq-queue's [`Relay`](arq_queue::outbox::Relay) (broker confirms; at least once, with
//! the same envelope id on a rare re-publish).
//!
//! It runs in the service's process, beside the HTTP server, on its own database role:
//! `arq_relay` (see arq-queue's `outbox::TENANT_ISOLATION_MIGRATION` and
//! `outbox::RELAY_ROLE_SQL`), the one role that may read every tenant's outbox rows and nothing
//! else. The runtime role only inserts.
//!
//! # When RabbitMQ is down
//! Requests never wait for the broker: an event is a row in the request's transaction, and the
//! outbox is the buffer. [`run`] keeps trying to connect ([`arq_queue::connect_rabbitmq_retrying`],
//! backing off up to 10 s) and, once connected, [`Relay::run`](arq_queue::outbox::Relay::run) retries failed rounds the same way, so events are published when the
//! broker is back. Readiness (`/health/ready`) deliberately does **not** include the broker: a
//! replica that cannot publish still serves every request correctly, and taking it out of the
//! load balancer would turn a broker outage into an API outage. The relay's state shows in the
//! logs (`outbox relay …` warnings) and in `arq_queue_published_total{exchange}` not moving.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use arq_core::config::Secret;
use arq_core::metrics::MetricsRegistry;
use arq_queue::outbox;
use arq_queue::{QueueConfig, QueueMetrics, Topology};
use serde::{Deserialize, Deserializer};
use sqlx::PgPool;

/// `[queue]`: where events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// The RabbitMQ URL (`ARQ__QUEUE__URL`); kept secret because it may hold a password.
    #[serde(deserialize_with = "secret")]
    pub url: Secret<String>,
    /// The platform's topic exchange.
    pub exchange: String,
    /// Prepended to the name of the queue this service declares.
    #[serde(default)]
    pub prefix: String,
    /// The queue `project.#` is bound to (empty: none, and project events nobody else
    /// subscribes to are unroutable and end as failed outbox rows).
    #[serde(default)]
    pub events_queue: String,
    /// How long the relay rests when the outbox is empty, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub relay_poll_interval_ms: u64,
}

const fn default_poll_ms() -> u64 {
    200
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret<String>, D::Error> {
    String::deserialize(d).map(Secret::new)
}

impl QueueSettings {
    /// The events queue's name on the broker, if there is one.
    pub fn events_queue_name(&self) -> Option<String> {
        (!self.events_queue.is_empty()).then(|| format!("{}{}", self.prefix, self.events_queue))
    }
}

/// What the relay declares: the exchange, and the events queue bound to `project.#` (with its
/// wait and dead-letter queues, as arq-queue gives every queue), so that project events are
/// never unroutable while no other service subscribes to them.
pub fn topology(settings: &QueueSettings) -> anyhow::Result<Topology> {
    let mut topology = Topology::new([settings.exchange.clone()]);
    if let Some(name) = settings.events_queue_name() {
        topology =
            topology.queue_config(QueueConfig::new(name).bind(&settings.exchange, "project.#"));
    }
    topology
        .validate()
        .context("[queue]: the exchange or events queue name is not valid")?;
    Ok(topology)
}

/// Fails, saying how to create it, when the relay role `arq_relay` does not exist: the outbox
/// migration grants to it, so `projects migrate` checks this first.
pub async fn require_relay_role(owner: &PgPool) -> anyhow::Result<()> {
    outbox::require_relay_role(owner)
        .await
        .context("services/projects/sql/relay-role.sql, also printed by `projects relay-role-sql`, creates the role")
}

/// Connects the relay's pool (`DATABASE_RELAY_URL`), refusing a role that cannot relay (e.g.
/// the runtime role, which would see no rows at all).
pub async fn connect_pool(url: &str) -> anyhow::Result<PgPool> {
    outbox::connect_relay_pool(url)
        .await
        .context(
            "DATABASE_RELAY_URL must connect as arq_relay (services/projects/sql/relay-role.sql, also printed by `projects relay-role-sql`, creates it)",
        )
}

/// Publishes the outbox until `shutdown` completes: connects to RabbitMQ (retrying with backoff
/// while it is unreachable), declares [`topology`], then runs arq-queue's [`Relay`](arq_queue::outbox::Relay). Never
/// returns an error for a broker outage; see the module docs.
pub async fn run(
    pool: PgPool,
    settings: QueueSettings,
    registry: MetricsRegistry,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // A second registration (a test running the relay twice in one registry) keeps the first.
    let metrics = QueueMetrics::register(&registry).ok();
    outbox::run_rabbitmq_relay(
        pool,
        settings.url.expose(),
        topology(&settings)?,
        metrics,
        Duration::from_millis(settings.relay_poll_interval_ms),
        shutdown,
    )
    .await
    .context("the outbox relay stopped")
}
