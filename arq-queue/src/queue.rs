//! The publishing and operations API over any backend.

use std::collections::HashMap;
use std::sync::Arc;

use arq_core::metrics::prometheus_client::metrics::counter::Counter;

use crate::backend::{Backend, Outgoing, QueueStats};
use crate::envelope::{Envelope, Message, MessageId};
use crate::error::QueueError;
use crate::metrics::QueueMetrics;
use crate::topology::{QueueConfig, Topology};

/// A queue system: a backend with its topology declared, ready to publish and to run workers.
/// Clones share the backend connection and the metrics.
///
/// # Example
/// ```
/// use arq_queue::{MemoryBackend, Message, Queue, QueueConfig, Topology};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct SendEmail { to: String }
/// impl Message for SendEmail { const TYPE: &'static str = "email.send"; }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let topology = Topology::new(["app"])
///     .queue_config(QueueConfig::new("email").bind("app", "email.*"));
/// let queue = Queue::new(MemoryBackend::new(), topology).await?;
/// queue.publish(SendEmail { to: "a@example.com".into() }).await?;
///
/// let info = queue.list().await?;
/// assert_eq!(info[0].name, "email");
/// assert_eq!(info[0].stats.depth(), 1);
/// # Ok::<(), arq_queue::QueueError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Queue<B> {
    backend: B,
    topology: Arc<Topology>,
    metrics: QueueMetrics,
    published: Arc<HashMap<String, Counter>>,
    default_exchange: Arc<str>,
}

/// A queue's name and depth figures, as [`Queue::list`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The work queue's name.
    pub name: String,
    /// Its depth figures.
    pub stats: QueueStats,
}

impl<B: Backend> Queue<B> {
    /// Validates and declares `topology` on `backend` (idempotently), with metrics registered
    /// nowhere; see [`Queue::with_metrics`].
    pub async fn new(backend: B, topology: Topology) -> Result<Self, QueueError> {
        topology.validate()?;
        backend.declare(&topology).await?;
        let default_exchange: Arc<str> = topology.default_exchange()?.into();
        let metrics = QueueMetrics::unregistered();
        Ok(Self {
            published: Arc::new(published_counters(&metrics, &topology)),
            backend,
            topology: Arc::new(topology),
            metrics,
            default_exchange,
        })
    }

    /// Records into `metrics` (see [`QueueMetrics::register`]).
    #[must_use]
    pub fn with_metrics(mut self, metrics: QueueMetrics) -> Self {
        self.published = Arc::new(published_counters(&metrics, &self.topology));
        self.metrics = metrics;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The declared topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The metric handles.
    pub fn metrics(&self) -> &QueueMetrics {
        &self.metrics
    }

    /// Publishes `message` to the default exchange with its type as the routing key, carrying
    /// the current handler's tenant and trace if there is one. Returns once stored.
    pub async fn publish<T: Message>(&self, message: T) -> Result<MessageId, QueueError> {
        let env = Envelope::new(message);
        let id = env.id;
        let key: Arc<str> = env.message_type.clone();
        self.publish_batch(vec![Outgoing {
            exchange: self.default_exchange.clone(),
            routing_key: key,
            envelope: env,
        }])
        .await?;
        Ok(id)
    }

    /// Publishes one envelope to `exchange` with `routing_key`. Returns once stored.
    pub async fn publish_envelope(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: Envelope,
    ) -> Result<MessageId, QueueError> {
        let id = envelope.id;
        self.publish_batch(vec![Outgoing {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            envelope,
        }])
        .await?;
        Ok(id)
    }

    /// Publishes many envelopes with the backend's pipelining (one round of confirms).
    /// Returns once every one is stored; on error, some may have been stored (at-least-once).
    pub async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<(), QueueError> {
        let counts: Vec<(Arc<str>, u64)> = count_by_exchange(&batch);
        self.backend.publish(batch).await?;
        for (exchange, n) in counts {
            if let Some(c) = self.published.get(&*exchange) {
                c.inc_by(n);
            }
        }
        Ok(())
    }

    /// The envelope builder for `message` (to set a tenant, trace or headers), then
    /// [`Queue::publish_envelope`].
    pub fn default_exchange(&self) -> &str {
        &self.default_exchange
    }

    fn config(&self, queue: &str) -> Result<&QueueConfig, QueueError> {
        self.topology.queue(queue)
    }

    /// Every work queue with its depth figures; also refreshes the depth gauges.
    pub async fn list(&self) -> Result<Vec<QueueInfo>, QueueError> {
        let mut out = Vec::with_capacity(self.topology.queues.len());
        for q in &self.topology.queues {
            let stats = self.backend.stats(q).await?;
            let m = self.metrics.for_queue(&q.name);
            m.depth
                .set(i64::try_from(stats.depth()).unwrap_or(i64::MAX));
            m.dead_depth
                .set(i64::try_from(stats.dead).unwrap_or(i64::MAX));
            out.push(QueueInfo {
                name: q.name.clone(),
                stats,
            });
        }
        Ok(out)
    }

    /// Up to `limit` dead letters of `queue`, oldest first, left in place.
    pub async fn peek_dead(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>, QueueError> {
        self.backend.peek_dead(self.config(queue)?, limit).await
    }

    /// Moves up to `limit` dead letters of `queue` back to it with a fresh attempt count.
    pub async fn requeue_dead(&self, queue: &str, limit: usize) -> Result<usize, QueueError> {
        self.backend.requeue_dead(self.config(queue)?, limit).await
    }

    /// Removes the ready messages of `queue`.
    pub async fn purge(&self, queue: &str) -> Result<u64, QueueError> {
        self.backend.purge(self.config(queue)?).await
    }

    /// Removes the dead letters of `queue`.
    pub async fn purge_dead(&self, queue: &str) -> Result<u64, QueueError> {
        self.backend.purge_dead(self.config(queue)?).await
    }
}

fn published_counters(metrics: &QueueMetrics, topology: &Topology) -> HashMap<String, Counter> {
    topology
        .exchanges
        .iter()
        .map(|e| (e.clone(), metrics.published(e)))
        .collect()
}

fn count_by_exchange(batch: &[Outgoing]) -> Vec<(Arc<str>, u64)> {
    let mut counts: Vec<(Arc<str>, u64)> = Vec::new();
    for o in batch {
        match counts.iter_mut().find(|(e, _)| *e == o.exchange) {
            Some((_, n)) => *n += 1,
            None => counts.push((o.exchange.clone(), 1)),
        }
    }
    counts
}
