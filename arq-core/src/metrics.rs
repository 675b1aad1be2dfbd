//! The metrics registry every arq crate records into, exposed as one `/metrics` document.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client, OpenMetrics text format).
//! A component registers its metric handles once, keeps them, and updates them on its hot path:
//! a handle is an `Arc` around atomics, so recording costs an atomic operation and never takes
//! the registry lock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

pub use prometheus_client;
use prometheus_client::registry::{Metric, Registry};

/// The content type of [`MetricsRegistry::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A cloneable handle to one metrics registry; clones share it.
///
/// Services normally use [`MetricsRegistry::global`]; tests make their own with
/// [`MetricsRegistry::new`] so they can assert on exactly what they recorded.
///
/// # Example
/// ```
/// use arq_core::metrics::MetricsRegistry;
/// use arq_core::metrics::prometheus_client::metrics::counter::Counter;
///
/// let registry = MetricsRegistry::new();
/// let jobs: Counter = Counter::default();
/// registry.register("jobs_processed", "Jobs processed", jobs.clone())?;
/// jobs.inc();
/// assert!(registry.encode().contains("jobs_processed_total 1"));
///
/// // The same name twice is refused: it would make the exposition invalid.
/// assert!(registry.register("jobs_processed", "again", Counter::<u64>::default()).is_err());
/// # Ok::<(), arq_core::metrics::MetricsError>(())
/// ```
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    registry: Registry,
    names: HashSet<String>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide registry that `/metrics` serves by default.
    pub fn global() -> &'static MetricsRegistry {
        static GLOBAL: OnceLock<MetricsRegistry> = OnceLock::new();
        GLOBAL.get_or_init(MetricsRegistry::new)
    }

    /// Registers a metric under `name` (without the `_total` suffix for counters, which the
    /// OpenMetrics encoder adds). Keep a clone of the metric to update it.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl Metric,
    ) -> Result<(), MetricsError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner.names.insert(name.to_owned()) {
            return Err(MetricsError::Duplicate {
                name: name.to_owned(),
            });
        }
        inner.registry.register(name, help, metric);
        Ok(())
    }

    /// Whether a metric is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.names.contains(name)
    }

    /// Renders every registered metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        // Writing into a String cannot fail; the encoder only returns fmt errors.
        let _ = prometheus_client::encoding::text::encode(&mut out, &inner.registry);
        out
    }
}

/// Errors from [`MetricsRegistry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// A metric with this name is already registered in this registry.
    #[error(
        "a metric named {name:?} is already registered; register each metric once and keep its handle"
    )]
    Duplicate {
        /// The metric name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn clones_share_one_registry() {
        let a = MetricsRegistry::new();
        let b = a.clone();
        let g: Gauge = Gauge::default();
        a.register("in_flight", "In flight", g.clone()).unwrap();
        g.set(3);
        assert!(b.contains("in_flight"));
        assert!(b.encode().contains("in_flight 3"));
        assert!(b.encode().ends_with("# EOF\n"));
    }

    #[test]
    fn duplicates_are_refused_with_the_name() {
        let r = MetricsRegistry::new();
        r.register("x", "x", Counter::<u64>::default()).unwrap();
        let err = r.register("x", "x", Counter::<u64>::default()).unwrap_err();
        assert!(err.to_string().contains("\"x\""));
    }
}
