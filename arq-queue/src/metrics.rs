//! Queue metrics, recorded into [`arq_core::metrics::MetricsRegistry`].
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `arq_queue_published_total` | counter | `exchange` |
//! | `arq_queue_delivered_total` | counter | `queue` |
//! | `arq_queue_acked_total` | counter | `queue` |
//! | `arq_queue_retried_total` | counter | `queue` |
//! | `arq_queue_dead_lettered_total` | counter | `queue` |
//! | `arq_queue_depth` | gauge | `queue` — ready + unacked (Redis: lag + pending) |
//! | `arq_queue_dead_letter_depth` | gauge | `queue` |
//! | `arq_queue_enqueue_to_start_seconds` | histogram | `queue` |
//! | `arq_queue_processing_seconds` | histogram | `queue` |
//!
//! `alerts/arq-queue.rules.yml` in this crate alerts on depth > 1 000 and on any dead letter.

use arq_core::metrics::MetricsRegistry;
use arq_core::metrics::prometheus_client::metrics::counter::Counter;
use arq_core::metrics::prometheus_client::metrics::family::Family;
use arq_core::metrics::prometheus_client::metrics::gauge::Gauge;
use arq_core::metrics::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::error::QueueError;

type Labels = [(&'static str, String); 1];
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~ 1.9 h in 24 factor-2 steps: covers in-memory latencies and hour-long retries.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 26))
}

/// The metric handles of one queue system. Create it once per registry (names are unique),
/// clone it freely: clones share the handles.
///
/// # Example
/// ```
/// use arq_core::metrics::MetricsRegistry;
/// use arq_queue::QueueMetrics;
///
/// let registry = MetricsRegistry::new();
/// let metrics = QueueMetrics::register(&registry)?;
/// metrics.for_queue("email.send").acked.inc();
/// assert!(registry.encode().contains(r#"arq_queue_acked_total{queue="email.send"} 1"#));
/// # Ok::<(), arq_queue::QueueError>(())
/// ```
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    published: Family<Labels, Counter>,
    delivered: Family<Labels, Counter>,
    acked: Family<Labels, Counter>,
    retried: Family<Labels, Counter>,
    dead_lettered: Family<Labels, Counter>,
    depth: Family<Labels, Gauge>,
    dead_depth: Family<Labels, Gauge>,
    enqueue_to_start: HistogramFamily,
    processing: HistogramFamily,
}

/// The handles of one queue, looked up once so the hot path only touches atomics.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PerQueue {
    /// Deliveries handed to a handler.
    pub delivered: Counter,
    /// Deliveries acknowledged after success.
    pub acked: Counter,
    /// Failed attempts scheduled for a retry.
    pub retried: Counter,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: Counter,
    /// Ready + unacknowledged.
    pub depth: Gauge,
    /// Dead letters.
    pub dead_depth: Gauge,
    /// Seconds from first publish to handler start.
    pub enqueue_to_start: Histogram,
    /// Seconds a handler ran.
    pub processing: Histogram,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        Self {
            published: Family::default(),
            delivered: Family::default(),
            acked: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            depth: Family::default(),
            dead_depth: Family::default(),
            enqueue_to_start: Family::new_with_constructor(latency_histogram),
            processing: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl QueueMetrics {
    /// Handles registered nowhere (for tests and embedders that do not export metrics).
    pub fn unregistered() -> Self {
        Self::default()
    }

    /// Registers every queue metric in `registry`.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, QueueError> {
        let m = Self::default();
        registry.register(
            "arq_queue_published",
            "Messages published",
            m.published.clone(),
        )?;
        registry.register(
            "arq_queue_delivered",
            "Deliveries handed to a handler",
            m.delivered.clone(),
        )?;
        registry.register(
            "arq_queue_acked",
            "Deliveries acknowledged after success",
            m.acked.clone(),
        )?;
        registry.register(
            "arq_queue_retried",
            "Failed attempts scheduled for a retry",
            m.retried.clone(),
        )?;
        registry.register(
            "arq_queue_dead_lettered",
            "Messages moved to the dead-letter queue",
            m.dead_lettered.clone(),
        )?;
        registry.register(
            "arq_queue_depth",
            "Messages ready plus unacknowledged (Redis Streams: lag plus pending)",
            m.depth.clone(),
        )?;
        registry.register(
            "arq_queue_dead_letter_depth",
            "Messages in the dead-letter queue",
            m.dead_depth.clone(),
        )?;
        registry.register(
            "arq_queue_enqueue_to_start_seconds",
            "Seconds from first publish to handler start",
            m.enqueue_to_start.clone(),
        )?;
        registry.register(
            "arq_queue_processing_seconds",
            "Seconds a handler ran",
            m.processing.clone(),
        )?;
        Ok(m)
    }

    /// The publish counter of `exchange`.
    pub fn published(&self, exchange: &str) -> Counter {
        self.published
            .get_or_create_owned(&[("exchange", exchange.to_owned())])
    }

    /// The handles of `queue`.
    pub fn for_queue(&self, queue: &str) -> PerQueue {
        let l: Labels = [("queue", queue.to_owned())];
        PerQueue {
            delivered: self.delivered.get_or_create_owned(&l),
            acked: self.acked.get_or_create_owned(&l),
            retried: self.retried.get_or_create_owned(&l),
            dead_lettered: self.dead_lettered.get_or_create_owned(&l),
            depth: self.depth.get_or_create_owned(&l),
            dead_depth: self.dead_depth.get_or_create_owned(&l),
            enqueue_to_start: self.enqueue_to_start.get_or_create_owned(&l),
            processing: self.processing.get_or_create_owned(&l),
        }
    }
}
