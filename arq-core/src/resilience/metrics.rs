//! The resilience metric families, registered once per [`MetricsRegistry`].

use std::cell::Cell;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};

use crate::metrics::{MetricsError, MetricsRegistry};

const STRIPES: usize = 16;

/// One cache line per stripe so that two threads counting never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter split into per-thread stripes, summed when scraped.
///
/// Written here rather than using `prometheus_client`'s `Counter` because the breaker's closed
/// path counts every call: one shared atomic would bounce its cache line between cores and
/// double the per-call cost with two threads (see `docs/bench-resilience.md`).
#[derive(Debug, Clone, Default)]
pub(crate) struct StripedCounter {
    stripes: Arc<[Padded; STRIPES]>,
}

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        s.set(v);
        v
    })
}

impl StripedCounter {
    #[inline]
    pub(crate) fn inc(&self) {
        self.stripes[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|p| p.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl TypedMetric for StripedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for StripedCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DepLabels {
    pub(crate) dependency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) dependency: String,
    pub(crate) outcome: &'static str,
}

/// The metric families of every breaker, bulkhead, retry and timeout of one registry.
///
/// Register once per [`MetricsRegistry`] with [`ResilienceMetrics::register`] (or use
/// [`ResilienceMetrics::global`]) and hand it to the dependencies; each dependency takes its
/// labelled handles once, so recording is an atomic add.
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `arq_circuit_breaker_state` | dependency | 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled |
/// | `arq_circuit_breaker_calls_total` | dependency, outcome | completed calls: success, failure, ignored |
/// | `arq_circuit_breaker_rejections_total` | dependency | calls refused by an open circuit |
/// | `arq_circuit_breaker_transitions_total` | dependency, outcome (= new state) | state changes |
/// | `arq_bulkhead_in_flight` | dependency | calls holding a slot |
/// | `arq_bulkhead_waiting` | dependency | calls waiting for a slot |
/// | `arq_bulkhead_rejections_total` | dependency, outcome (`queue_full`, `wait_timeout`) | refused calls |
/// | `arq_retry_attempts_total` | dependency, outcome (`retry`, `budget_exhausted`, `deadline`) | retry decisions |
/// | `arq_timeouts_total` | dependency | attempts that timed out |
#[derive(Debug, Clone, Default)]
pub struct ResilienceMetrics {
    pub(crate) breaker_state: Family<DepLabels, Gauge>,
    pub(crate) breaker_calls: Family<OutcomeLabels, StripedCounter>,
    pub(crate) breaker_rejections: Family<DepLabels, Counter>,
    pub(crate) breaker_transitions: Family<OutcomeLabels, Counter>,
    pub(crate) bulkhead_in_flight: Family<DepLabels, Gauge>,
    pub(crate) bulkhead_waiting: Family<DepLabels, Gauge>,
    pub(crate) bulkhead_rejections: Family<OutcomeLabels, Counter>,
    pub(crate) retry_attempts: Family<OutcomeLabels, Counter>,
    pub(crate) timeouts: Family<DepLabels, Counter>,
}

impl ResilienceMetrics {
    /// Families that are not registered anywhere (what standalone middleware uses until given
    /// registered ones).
    pub fn unregistered() -> Self {
        Self::default()
    }

    /// Registers the families in `registry`. Call once per registry and share the result.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let m = Self::default();
        registry.register(
            "arq_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled",
            m.breaker_state.clone(),
        )?;
        registry.register(
            "arq_circuit_breaker_calls",
            "Calls completed through a circuit breaker, by outcome",
            m.breaker_calls.clone(),
        )?;
        registry.register(
            "arq_circuit_breaker_rejections",
            "Calls refused by an open circuit breaker",
            m.breaker_rejections.clone(),
        )?;
        registry.register(
            "arq_circuit_breaker_transitions",
            "Circuit breaker state transitions, by new state",
            m.breaker_transitions.clone(),
        )?;
        registry.register(
            "arq_bulkhead_in_flight",
            "Calls holding a bulkhead slot",
            m.bulkhead_in_flight.clone(),
        )?;
        registry.register(
            "arq_bulkhead_waiting",
            "Calls waiting for a bulkhead slot",
            m.bulkhead_waiting.clone(),
        )?;
        registry.register(
            "arq_bulkhead_rejections",
            "Calls refused by a bulkhead, by reason",
            m.bulkhead_rejections.clone(),
        )?;
        registry.register(
            "arq_retry_attempts",
            "Retry decisions: retry, budget_exhausted, deadline",
            m.retry_attempts.clone(),
        )?;
        registry.register(
            "arq_timeouts",
            "Attempts that ran past their timeout or deadline",
            m.timeouts.clone(),
        )?;
        Ok(m)
    }

    /// The families registered in [`MetricsRegistry::global`], registered on first use.
    pub fn global() -> &'static ResilienceMetrics {
        static GLOBAL: OnceLock<ResilienceMetrics> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            // Only this function registers these names in the global registry, so the
            // registration cannot collide; fall back to unregistered families if it ever did.
            Self::register(MetricsRegistry::global()).unwrap_or_default()
        })
    }

    pub(crate) fn dep(name: &str) -> DepLabels {
        DepLabels {
            dependency: name.to_owned(),
        }
    }

    pub(crate) fn outcome(name: &str, outcome: &'static str) -> OutcomeLabels {
        OutcomeLabels {
            dependency: name.to_owned(),
            outcome,
        }
    }
}
