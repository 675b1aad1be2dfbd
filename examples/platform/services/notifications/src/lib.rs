//! The notifications worker, shared by `main` and the tests.
//!
//! It consumes two queues from RabbitMQ with arq-queue's [`Worker`]:
//!
//! - `email.send` ([`email`]): validates the message and delivers it through an
//!   [`EmailTransport`] — the mailbox directory `[email] mailbox_dir`, one `.eml` file per
//!   message, written once per message id;
//! - `notification.push` ([`webhooks`]): a signed `POST` to an allowed host, through a circuit
//!   breaker per endpoint.
//!
//! Each queue is bound to the platform's topic exchange (`[queue] exchange`); failed attempts
//! wait in `<queue>.wait` and are retried after the queue's `retry_delay`; messages that fail
//! every attempt, or fail permanently (an invalid address, a host not allowed, a 4xx answer),
//! go to `<queue>.dead` with their failure history, where `notifications dead-letters QUEUE`
//! ([`ops`]) lists them. Over HTTP it serves only `/health/live`, `/health/ready` (which checks
//! the broker) and `/metrics`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arq_core::config::{ArqConfig, ConfigLoader, Layers, Secret};
use arq_core::edge::{EdgeService, EdgeStack};
use arq_core::health::{FnCheck, Health};
use arq_core::metrics::MetricsRegistry;
use arq_core::server::with_operational_routes;
use arq_queue::{
    Backend, Queue, QueueConfig, QueueError, QueueMetrics, RabbitBackend, Topology, Worker,
};
use axum::Router;
use serde::{Deserialize, Deserializer};

pub mod email;
pub mod ops;
pub mod webhooks;

pub use email::{EmailSettings, EmailTransport, MailboxTransport};
pub use webhooks::{WebhookSettings, Webhooks};

/// The worker's name.
pub const NAME: &str = "notifications";

/// The queues this worker consumes, each with a handler registered in [`worker`].
pub const QUEUES: &[&str] = &["email.send", "notification.push"];

/// Where configuration is read from: `ARQ_CONFIG_DIR`, else this crate's `config/`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("ARQ_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config")))
}

/// Everything the worker reads from its configuration.
#[derive(Debug)]
pub struct Settings {
    /// arq-core's sections: server (health and metrics), telemetry, health.
    pub arq: ArqConfig,
    /// `[queue]`.
    pub queue: QueueSettings,
    /// `[email]`.
    pub email: EmailSettings,
    /// `[webhooks]`.
    pub webhooks: WebhookSettings,
}

/// `[queue]`: the broker, the exchange and each queue's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// The RabbitMQ URL (`ARQ__QUEUE__URL`); kept secret because it may hold a password.
    #[serde(deserialize_with = "secret")]
    pub url: Secret<String>,
    /// The topic exchange the queues are bound to.
    pub exchange: String,
    /// Prepended to every queue name on the broker ([`QUEUES`] are the names without it).
    #[serde(default)]
    pub prefix: String,
    /// `[[queue.queues]]`: settings of [`QueueConfig`] by `name` (one of [`QUEUES`]); a queue
    /// without an entry gets arq-queue's defaults.
    #[serde(default)]
    pub queues: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret<String>, D::Error> {
    String::deserialize(d).map(Secret::new)
}

impl QueueSettings {
    /// The name queue `queue` (one of [`QUEUES`]) has on the broker.
    pub fn queue_name(&self, queue: &str) -> String {
        format!("{}{queue}", self.prefix)
    }
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
        queue: layers.section("queue").context("[queue]")?,
        email: layers.section("email").context("[email]")?,
        webhooks: layers.section("webhooks").context("[webhooks]")?,
    };
    // Fail at start-up, not at the first message, when a queue's settings are wrong.
    topology(&settings.queue)?;
    Ok(settings)
}

/// The topology: the exchange and, for each of [`QUEUES`], a work queue bound to the exchange
/// with its own name and sub-topics (unless its settings give `bindings`), plus the wait and
/// dead-letter queues arq-queue adds to every queue.
pub fn topology(settings: &QueueSettings) -> anyhow::Result<Topology> {
    let mut configured: BTreeMap<&str, &serde_json::Map<String, serde_json::Value>> =
        BTreeMap::new();
    for fields in &settings.queues {
        let name = fields.get("name").and_then(|n| n.as_str()).unwrap_or("");
        if !QUEUES.contains(&name) {
            anyhow::bail!(
                "[[queue.queues]] name = {name:?}: {NAME} has no handler for that queue (it consumes {QUEUES:?}); remove the entry or add the queue to QUEUES"
            );
        }
        if configured.insert(name, fields).is_some() {
            anyhow::bail!("[[queue.queues]] name = {name:?} is configured twice");
        }
    }
    let mut topology = Topology::new([settings.exchange.clone()]);
    for queue in QUEUES {
        let mut fields = configured
            .get(queue)
            .map(|f| (*f).clone())
            .unwrap_or_default();
        fields.insert("name".into(), settings.queue_name(queue).into());
        fields.entry("bindings").or_insert_with(|| {
            serde_json::json!([
                {"exchange": settings.exchange, "routing_key": queue},
                {"exchange": settings.exchange, "routing_key": format!("{queue}.#")},
            ])
        });
        let config: QueueConfig = serde_json::from_value(fields.into())
            .with_context(|| format!("[[queue.queues]] name = {queue:?}"))?;
        topology = topology.queue_config(config);
    }
    topology.validate()?;
    Ok(topology)
}

/// Connects to RabbitMQ, declares the topology (idempotently) and records queue metrics into
/// `registry`.
pub async fn connect(
    settings: &QueueSettings,
    registry: &MetricsRegistry,
) -> anyhow::Result<Queue<RabbitBackend>> {
    let backend = RabbitBackend::connect(settings.url.expose())
        .await
        .context("cannot connect to RabbitMQ ([queue] url, ARQ__QUEUE__URL)")?;
    let queue = Queue::new(backend, topology(settings)?)
        .await
        .context("cannot declare the queues on RabbitMQ")?;
    Ok(queue.with_metrics(QueueMetrics::register(registry)?))
}

/// What the handlers deliver through; built once, shared by every handler.
#[derive(Clone)]
pub struct Handlers {
    /// Delivers `email.send`.
    pub transport: Arc<dyn EmailTransport>,
    /// `[email]`.
    pub email: Arc<EmailSettings>,
    /// Delivers `notification.push`.
    pub webhooks: Webhooks,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("email", &self.email)
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

impl Handlers {
    /// The shipped transports from `settings`: the mailbox directory (created, and proven
    /// writable) and the webhook client. Fails, saying what to set, without a webhook signing
    /// secret; metrics go into `registry`.
    pub fn from_settings(settings: &Settings, registry: &MetricsRegistry) -> anyhow::Result<Self> {
        let webhooks = Webhooks::new(&settings.webhooks, registry)?;
        let transport = MailboxTransport::open(&settings.email.mailbox_dir)?;
        Ok(Self {
            transport: Arc::new(transport),
            email: Arc::new(settings.email.clone()),
            webhooks,
        })
    }
}

/// The worker: every queue's handler registered. In-flight handlers get `[server]
/// shutdown_timeout` to finish after shutdown is signalled.
pub fn worker<B: Backend>(
    queue: Queue<B>,
    settings: &Settings,
    handlers: &Handlers,
) -> Result<Worker<B>, QueueError> {
    let name = |queue: &str| settings.queue.queue_name(queue);
    let mail = handlers.clone();
    let push = handlers.webhooks.clone();
    Ok(Worker::new(queue)
        .handle(&name("email.send"), move |job| {
            let h = mail.clone();
            async move { email::handle(h.transport.as_ref(), &h.email, job).await }
        })?
        .handle(&name("notification.push"), move |job| {
            let w = push.clone();
            async move { webhooks::handle(&w, job).await }
        })?
        .shutdown_deadline(settings.arq.server.shutdown_timeout))
}

/// `[health]`'s checks plus one that proves the broker answers for this worker's queues.
pub fn health<B: Backend>(queue: &Queue<B>, config: &ArqConfig) -> Health {
    let queue = queue.clone();
    Health::from_config(&config.health).with_check(FnCheck::new(
        queue.backend().name(),
        move || {
            let queue = queue.clone();
            async move {
                queue.list().await.map_err(|e| e.to_string())?;
                Ok(())
            }
        },
    ))
}

/// `/health/live`, `/health/ready` and `/metrics` behind arq-core's edge stack.
pub fn service(
    config: &ArqConfig,
    registry: &MetricsRegistry,
    health: &Health,
) -> anyhow::Result<EdgeService> {
    let stack = EdgeStack::from_config(config, registry)?;
    Ok(stack.wrap(with_operational_routes(Router::new(), health, registry)))
}
