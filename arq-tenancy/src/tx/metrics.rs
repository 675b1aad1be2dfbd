//! `db_query_duration_seconds`: how long tenant transactions spend in the database.

use std::sync::OnceLock;
use std::time::Duration;

use arq_core::metrics::prometheus_client::metrics::family::Family;
use arq_core::metrics::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use arq_core::metrics::{MetricsError, MetricsRegistry};

type Labels = [(&'static str, &'static str); 1];

fn histogram() -> Histogram {
    // 0.25 ms .. ~4 s: point queries on a LAN up to the statement timeout.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// Handle to the `db_query_duration_seconds` histogram, labelled by `operation`
/// (`begin`, `commit`, `rollback`, `transaction`).
#[derive(Clone, Debug)]
pub struct DbMetrics {
    family: Family<Labels, Histogram, fn() -> Histogram>,
}

impl DbMetrics {
    /// Registers the histogram in `registry` (once per registry).
    ///
    /// # Example
    /// ```
    /// use arq_core::metrics::MetricsRegistry;
    /// use arq_tenancy::tx::DbMetrics;
    ///
    /// let registry = MetricsRegistry::new();
    /// let m = DbMetrics::register(&registry)?;
    /// m.observe("commit", std::time::Duration::from_millis(2));
    /// assert!(registry.encode().contains("db_query_duration_seconds_count{operation=\"commit\"} 1"));
    /// # Ok::<(), arq_core::metrics::MetricsError>(())
    /// ```
    pub fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let family = Family::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "db_query_duration_seconds",
            "Time spent in the database by tenant transactions, by operation",
            family.clone(),
        )?;
        Ok(Self { family })
    }

    /// The handle registered in [`MetricsRegistry::global`] (registered on first use).
    pub fn global() -> Self {
        static GLOBAL: OnceLock<DbMetrics> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                Self::register(MetricsRegistry::global()).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "db_query_duration_seconds not exported");
                    Self {
                        family: Family::new_with_constructor(histogram as fn() -> Histogram),
                    }
                })
            })
            .clone()
    }

    /// Records one observation.
    pub fn observe(&self, operation: &'static str, elapsed: Duration) {
        self.family
            .get_or_create(&[("operation", operation)])
            .observe(elapsed.as_secs_f64());
    }
}
