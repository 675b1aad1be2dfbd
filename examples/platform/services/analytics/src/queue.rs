//! RabbitMQ: what the service declares, and the three background tasks `serve` runs beside the
//! HTTP server, each on its own broker connection made with
//! [`arq_queue::connect_rabbitmq_retrying`]:
//!
//! - [`run_events`]: the domain events consumer ([`crate::events`]) on `analytics.events`,
//!   bound to [`events::BINDINGS`], an arq-queue [`Worker`] handling up to its prefetch (10)
//!   at once;
//! - [`run_reports`]: the `report.generate` consumer ([`crate::reports::generate`]), an
//!   arq-queue [`Worker`] with prefetch 5 and concurrency 5;
//! - [`run_relay`]: the outbox relay, which publishes the `report.generate` messages that
//!   `POST /analytics/reports` commits, on its own database role (`arq_relay`).
//!
//! # When RabbitMQ is down
//! Requests never wait for the broker: a report request is a row plus an outbox row in the
//! request's transaction, and reads only read PostgreSQL. Each task keeps trying to connect
//! (backing off up to 10 s, logged) and starts once the broker answers; events wait in their
//! queue, report requests in the outbox. Readiness (`/health/ready`) deliberately does not
//! include the broker: taking the service out of the load balancer would turn a broker outage
//! into an API outage.
//!
//! # Metrics
//! The three tasks record into one [`QueueMetrics`] registered once on the service's registry
//! (`serve` does it), so `/metrics` shows `arq_queue_delivered_total`, `arq_queue_acked_total`,
//! `arq_queue_retried_total`, `arq_queue_dead_lettered_total`, the depth gauges and the handler
//! times per queue, and `arq_queue_published_total` for the relay.

use std::future::Future;
use std::time::Duration;

use arq_core::config::Secret;
use arq_queue::{
    HandlerError, Job, Message, Queue, QueueConfig, QueueError, QueueMetrics, RabbitBackend,
    Topology, Worker, connect_rabbitmq_retrying,
};
use arq_tenancy::TenantPool;
use serde::{Deserialize, Deserializer};
use sqlx::PgPool;

use crate::events::{self, AnyEvent, EventError};
use crate::reports::{self, GenerateReport};

/// The prefetch (and concurrency) of `report.generate`: the platform's number for reports.
pub const REPORTS_PREFETCH: u16 = 5;

/// `[queue]`: the broker, the queues, the relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// The RabbitMQ URL (`ARQ__QUEUE__URL`); kept secret because it may hold a password.
    #[serde(deserialize_with = "secret")]
    pub url: Secret<String>,
    /// The platform's topic exchange.
    pub exchange: String,
    /// Prepended to the names of the queues this service declares.
    #[serde(default)]
    pub prefix: String,
    /// The queue the domain events are routed to.
    #[serde(default = "default_events_queue")]
    pub events_queue: String,
    /// The queue `report.generate` is routed to.
    #[serde(default = "default_reports_queue")]
    pub reports_queue: String,
    /// How long a failed message waits before its next attempt, in seconds (the wait queue's
    /// TTL on the broker: changing it means deleting the `.wait` queues first).
    #[serde(default = "default_retry_delay_secs")]
    pub retry_delay_secs: u64,
    /// Deliveries before a failing message is dead-lettered (counting the first).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long the relay rests when the outbox is empty, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub relay_poll_interval_ms: u64,
}

fn default_events_queue() -> String {
    "analytics.events".to_owned()
}

fn default_reports_queue() -> String {
    "report.generate".to_owned()
}

const fn default_retry_delay_secs() -> u64 {
    60
}

const fn default_max_attempts() -> u32 {
    3
}

const fn default_poll_ms() -> u64 {
    200
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret<String>, D::Error> {
    String::deserialize(d).map(Secret::new)
}

impl QueueSettings {
    /// The events queue, bound to every pattern of [`events::BINDINGS`]; its prefetch (10)
    /// events are counted at once.
    pub fn events_queue(&self) -> QueueConfig {
        let mut config = QueueConfig::new(format!("{}{}", self.prefix, self.events_queue))
            .max_attempts(self.max_attempts)
            .retry_delay(Duration::from_secs(self.retry_delay_secs));
        for pattern in events::BINDINGS {
            config = config.bind(&self.exchange, pattern);
        }
        config
    }

    /// The `report.generate` queue: prefetch 5, concurrency 5.
    pub fn reports_queue(&self) -> QueueConfig {
        QueueConfig::new(format!("{}{}", self.prefix, self.reports_queue))
            .bind(&self.exchange, <GenerateReport as arq_queue::Message>::TYPE)
            .prefetch(REPORTS_PREFETCH)
            .concurrency(usize::from(REPORTS_PREFETCH))
            .max_attempts(self.max_attempts)
            .retry_delay(Duration::from_secs(self.retry_delay_secs))
    }

    /// The events consumer's topology: the exchange and the events queue.
    pub fn events_topology(&self) -> Topology {
        Topology::new([self.exchange.clone()]).queue_config(self.events_queue())
    }

    /// The reports consumer's and the relay's topology: the exchange and the `report.generate`
    /// queue (declared by the relay too, so that a report request is never unroutable, even
    /// before the consumer first started).
    pub fn reports_topology(&self) -> Topology {
        Topology::new([self.exchange.clone()]).queue_config(self.reports_queue())
    }

    /// Checks the names (at start-up, so a bad `[queue]` fails `serve` at once).
    pub fn validate(&self) -> Result<(), QueueError> {
        self.events_topology().validate()?;
        self.reports_topology().validate()
    }
}

/// Connects for `what`, retrying while the broker is down; `None` when `shutdown` completed
/// first.
async fn connect(
    settings: &QueueSettings,
    topology: Topology,
    what: &'static str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Queue<RabbitBackend>>, QueueError> {
    let queue = connect_rabbitmq_retrying(settings.url.expose(), topology, shutdown).await?;
    if queue.is_some() {
        tracing::info!(exchange = %settings.exchange, what, "connected to RabbitMQ");
    }
    Ok(queue)
}

/// Counts domain events until `shutdown` completes (see [`crate::events`]), recording into
/// `metrics`; the events being counted then may finish within `drain` (what is still running
/// is redelivered later, and its id keeps it from being counted twice).
pub async fn run_events(
    settings: QueueSettings,
    tenants: TenantPool,
    metrics: QueueMetrics,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), QueueError> {
    tokio::pin!(shutdown);
    let Some(queue) = connect(
        &settings,
        settings.events_topology(),
        "events consumer",
        &mut shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let handler = move |job: Job<AnyEvent>| {
        let tenants = tenants.clone();
        async move {
            let (id, kind) = (job.id, job.message_type.clone());
            match events::record(&tenants, job).await {
                Ok(recorded) => {
                    tracing::debug!(%id, %kind, ?recorded, "event counted");
                    Ok(())
                }
                Err(EventError::Rejected(reason)) => Err(HandlerError::permanent(reason)),
                Err(e) => Err(HandlerError::retry(e)),
            }
        }
    };
    let config = settings.events_queue();
    run_worker(
        queue.with_metrics(metrics),
        &config,
        handler,
        drain,
        &mut shutdown,
    )
    .await
}

/// Runs a [`Worker`] with `handler` on `config` until `shutdown` completes. A worker that could
/// not start its consumer is started again after a backoff.
async fn run_worker<T, H, Fut>(
    queue: Queue<RabbitBackend>,
    config: &QueueConfig,
    handler: H,
    drain: Duration,
    shutdown: &mut (impl Future<Output = ()> + Send + Unpin),
) -> Result<(), QueueError>
where
    T: Message,
    H: Fn(Job<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let mut backoff = Backoff::default();
    loop {
        let worker = Worker::new(queue.clone())
            .handle(&config.name, handler.clone())?
            .shutdown_deadline(drain);
        // `run` fails only while starting its consumers; it returns Ok once shutdown completed.
        match worker.run(&mut *shutdown).await {
            Ok(report) => {
                tracing::info!(
                    queue = %config.name,
                    settled = report.settled,
                    abandoned = report.abandoned,
                    "consumer stopped"
                );
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, queue = %config.name, "the consumer could not start; retrying");
                if !backoff.wait(shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Exponential backoff (100 ms doubling up to 10 s) that gives up when shutdown completes.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    /// Sleeps the next delay; `false` when `shutdown` completed first.
    async fn wait(&mut self, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> bool {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        tokio::select! {
            () = shutdown => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Generates reports until `shutdown` completes, recording into `metrics`, then lets the
/// reports in progress finish within `drain` (what is still running then is redelivered later).
pub async fn run_reports(
    settings: QueueSettings,
    tenants: TenantPool,
    metrics: QueueMetrics,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), QueueError> {
    tokio::pin!(shutdown);
    let Some(queue) = connect(
        &settings,
        settings.reports_topology(),
        "report.generate consumer",
        &mut shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let config = settings.reports_queue();
    let max_attempts = config.max_attempts;
    let handler = move |job: Job<GenerateReport>| {
        let tenants = tenants.clone();
        async move {
            reports::generate(&tenants, &job, max_attempts).await?;
            Ok::<(), HandlerError>(())
        }
    };
    run_worker(
        queue.with_metrics(metrics),
        &config,
        handler,
        drain,
        &mut shutdown,
    )
    .await
}

/// Publishes the outbox (report requests) until `shutdown` completes, with arq-queue's
/// [`Relay`](arq_queue::outbox::Relay) on `pool` (connected as `arq_relay` with
/// [`arq_queue::outbox::connect_relay_pool`]), recording into `metrics`.
pub async fn run_relay(
    pool: PgPool,
    settings: QueueSettings,
    metrics: QueueMetrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), QueueError> {
    arq_queue::outbox::run_rabbitmq_relay(
        pool,
        settings.url.expose(),
        settings.reports_topology(),
        Some(metrics),
        Duration::from_millis(settings.relay_poll_interval_ms),
        shutdown,
    )
    .await
}
