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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arq_core::metrics::MetricsRegistry;
use arq_core::metrics::prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use arq_core::metrics::prometheus_client::metrics::counter::Counter;
use arq_core::metrics::prometheus_client::metrics::family::Family;
use arq_core::metrics::prometheus_client::metrics::gauge::Gauge;
use arq_core::metrics::prometheus_client::metrics::{MetricType, TypedMetric};

use crate::error::QueueError;

type Labels = [(&'static str, String); 1];
type HistogramFamily = Family<Labels, LatencyHistogram>;

/// Finite bucket bounds: 100 µs .. ~ 1.9 h in factor-2 steps, covering in-memory latencies and
/// hour-long retries. A last, unbounded bucket (`+Inf`) follows them.
const BOUNDS: usize = 26;

fn bound(i: usize) -> f64 {
    0.000_1 * f64::from(1u32 << i)
}

/// The bucket `secs` falls in: the first whose bound is at least `secs`; NaN and anything
/// beyond the last bound go to `+Inf`.
fn bucket_of(secs: f64) -> usize {
    // Most observations are small: a scan from the bottom finds them in a few compares.
    (0..BOUNDS).find(|&i| secs <= bound(i)).unwrap_or(BOUNDS)
}

/// Adds `v` to an `f64` kept as bits in an atomic.
fn add_f64(cell: &AtomicU64, v: f64) {
    let mut cur = cell.load(Ordering::Relaxed);
    loop {
        let next = (f64::from_bits(cur) + v).to_bits();
        match cell.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

#[derive(Debug, Default)]
struct HistogramCells {
    buckets: [AtomicU64; BOUNDS + 1],
    sum_bits: AtomicU64,
}

/// A latency histogram (seconds) exposed in the Prometheus histogram format, with the same
/// buckets for every queue.
///
/// Written here rather than using `prometheus_client`'s `Histogram` because the worker records
/// two observations per message: that histogram takes a mutex per observation, which two
/// consumers on two cores contend for, and it cannot take observations in bulk. This one is
/// lock-free, and a consume loop tallies a burst of deliveries locally and adds it in one go (see `docs/bench-queue.md`).
///
/// # Example
/// ```
/// use arq_queue::LatencyHistogram;
///
/// let h = LatencyHistogram::default();
/// h.observe(0.000_05);
/// h.observe(0.3);
/// assert_eq!(h.count(), 2);
/// assert!((h.sum() - 0.300_05).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    cells: Arc<HistogramCells>,
}

impl LatencyHistogram {
    /// Records one observation, in seconds.
    pub fn observe(&self, secs: f64) {
        self.cells.buckets[bucket_of(secs)].fetch_add(1, Ordering::Relaxed);
        add_f64(&self.cells.sum_bits, secs);
    }

    /// Observations recorded so far.
    pub fn count(&self) -> u64 {
        self.cells
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// The sum of the observations, in seconds.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.cells.sum_bits.load(Ordering::Relaxed))
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // The count is the buckets' total, so a scrape racing with observations still shows
        // a count equal to its buckets (the sum may be a few observations apart).
        let buckets: Vec<(f64, u64)> = self
            .cells
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let upper = if i < BOUNDS { bound(i) } else { f64::INFINITY };
                (upper, b.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| *n).fold(0, u64::wrapping_add);
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Observations tallied by one task and added to a [`LatencyHistogram`] in one go.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalHistogram {
    buckets: [u64; BOUNDS + 1],
    sum: f64,
    count: u64,
}

impl LocalHistogram {
    /// Records one observation, in seconds, locally.
    pub(crate) fn observe(&mut self, secs: f64) {
        self.buckets[bucket_of(secs)] += 1;
        self.sum += secs;
        self.count += 1;
    }

    /// Adds what was tallied to `into` and starts over.
    pub(crate) fn flush(&mut self, into: &LatencyHistogram) {
        if self.count == 0 {
            return;
        }
        for (local, shared) in self.buckets.iter_mut().zip(&into.cells.buckets) {
            if *local != 0 {
                shared.fetch_add(*local, Ordering::Relaxed);
                *local = 0;
            }
        }
        add_f64(&into.cells.sum_bits, self.sum);
        self.sum = 0.0;
        self.count = 0;
    }
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
#[derive(Debug, Clone, Default)]
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
    /// Deliveries acknowledged after success (Redis Streams: queued for the batched `XACK`; an
    /// entry whose batch failed is redelivered and counted again).
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
    pub enqueue_to_start: LatencyHistogram,
    /// Seconds a handler ran.
    pub processing: LatencyHistogram,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exposition(registry: &MetricsRegistry, queue: &str) -> Vec<String> {
        registry
            .encode()
            .lines()
            .filter(|l| l.starts_with("arq_queue_processing_seconds") && l.contains(queue))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_histogram_is_exposed_in_the_prometheus_format() {
        let registry = MetricsRegistry::new();
        let metrics = QueueMetrics::register(&registry).unwrap();
        let h = metrics.for_queue("q").processing;
        // 50 µs and exactly 100 µs in the first bucket (le is inclusive), 150 µs in the second,
        // 3 h beyond the last bound, NaN with it.
        for v in [0.000_05, 0.000_1, 0.000_15, 3.0 * 3600.0, f64::NAN] {
            h.observe(v);
        }
        let lines = exposition(&registry, "q");
        let bucket = |le: &str| {
            lines
                .iter()
                .find(|l| l.contains(&format!("le=\"{le}\"")))
                .unwrap_or_else(|| panic!("no le={le} bucket in {lines:#?}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        // Cumulative counts.
        assert_eq!(bucket("0.0001"), "2");
        assert_eq!(bucket("0.0002"), "3");
        assert_eq!(bucket("3355.4432"), "3");
        assert_eq!(bucket("+Inf"), "5");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("arq_queue_processing_seconds_count") && l.ends_with(" 5")),
            "{lines:#?}"
        );
        // 27 bucket lines: 26 bounds and +Inf.
        assert_eq!(lines.iter().filter(|l| l.contains("_bucket{")).count(), 27);
        assert_eq!(h.count(), 5);
        assert!(
            h.sum().is_nan(),
            "a NaN observation makes the sum NaN, as in prometheus_client"
        );
    }

    #[test]
    fn a_flushed_local_tally_equals_the_same_observations_made_directly() {
        let direct = LatencyHistogram::default();
        let batched = LatencyHistogram::default();
        let mut local = LocalHistogram::default();
        let values: Vec<f64> = (0..1_000).map(|i| f64::from(i) * 0.000_37).collect();
        for &v in &values {
            direct.observe(v);
            local.observe(v);
        }
        // Nothing reaches the shared histogram before the flush; a second flush adds nothing.
        assert_eq!(batched.count(), 0);
        local.flush(&batched);
        local.flush(&batched);
        assert_eq!(batched.count(), 1_000);
        for (a, b) in direct.cells.buckets.iter().zip(&batched.cells.buckets) {
            assert_eq!(a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
        }
        assert!((direct.sum() - batched.sum()).abs() < 1e-9);
    }

    #[test]
    fn concurrent_observers_lose_no_observation() {
        let h = LatencyHistogram::default();
        let threads = 4;
        let per_thread = 50_000u32;
        std::thread::scope(|s| {
            for t in 0..threads {
                let h = h.clone();
                s.spawn(move || {
                    let mut local = LocalHistogram::default();
                    for i in 0..per_thread {
                        let v = 0.001;
                        // Half direct, half through tallies flushed every 64.
                        if (i + t) % 2 == 0 {
                            h.observe(v);
                        } else {
                            local.observe(v);
                            if i % 64 == 0 {
                                local.flush(&h);
                            }
                        }
                    }
                    local.flush(&h);
                });
            }
        });
        let n = u64::from(per_thread) * threads as u64;
        assert_eq!(h.count(), n);
        // Every observation went to the 0.0016 bucket, and the sum holds each one.
        assert_eq!(h.cells.buckets[bucket_of(0.001)].load(Ordering::Relaxed), n);
        assert!((h.sum() - n as f64 * 0.001).abs() < 1e-6);
    }
}
