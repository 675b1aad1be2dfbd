//! Database metrics and the slow-query log: `db_query_duration_seconds` by operation and statement
//! fingerprint, `db_slow_queries_total`, the pool gauges and `db_pool_acquire_seconds`, and the
//! replica fallback counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use arq_core::metrics::prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use arq_core::metrics::prometheus_client::metrics::MetricType;
use arq_core::metrics::prometheus_client::metrics::counter::Counter;
use arq_core::metrics::prometheus_client::metrics::family::Family;
use arq_core::metrics::prometheus_client::metrics::gauge::Gauge;
use arq_core::metrics::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use arq_core::metrics::{MetricsError, MetricsRegistry};
use sqlx::PgPool;

use crate::db::fingerprint;

/// The default slow-query threshold (the seed's 100 ms).
pub const DEFAULT_SLOW_QUERY_THRESHOLD: Duration = Duration::from_millis(100);

/// At most this many distinct statement fingerprints get their own label; later ones are
/// recorded as `statement="other"` so a service that formats values into SQL cannot blow up
/// the metric's cardinality.
pub const MAX_STATEMENT_LABELS: usize = 200;

/// SQL texts remembered (text → fingerprint) so a hot statement is normalised once.
const MAX_CACHED_TEXTS: usize = 1024;

type QueryLabels = [(&'static str, Arc<str>); 2];
type PoolLabels = [(&'static str, &'static str); 1];

fn histogram() -> Histogram {
    // 0.25 ms .. ~4 s: point queries on a LAN up to the statement timeout.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// Handle to the database metrics of tenant transactions. Cheap to clone.
///
/// - `db_query_duration_seconds{operation, statement}`: `operation` is `begin`, `commit`,
///   `rollback`, `transaction` (begin to end) or `query`; for queries `statement` is the
///   statement's [fingerprint](crate::db::fingerprint) (never parameter values; at most
///   [`MAX_STATEMENT_LABELS`] distinct ones, then `other`), otherwise the operation's SQL word.
/// - `db_slow_queries_total{statement}` and a `warn` log (target `arq_tenancy::slow_query`) for
///   each query at or over the slow-query threshold.
/// - `db_pool_connections{pool, state}` (`idle`, `in_use`), `db_pool_size{pool}`,
///   `db_pool_max_connections{pool}`, `db_pool_waiters{pool}` and the
///   `db_pool_acquire_seconds{pool}` histogram, for each pool a [`crate::TenantPool`] uses
///   (`primary`, `replica`).
/// - `db_replica_fallbacks_total`: read-only transactions sent to the primary because the
///   replica was unreachable.
#[derive(Clone, Debug)]
pub struct DbMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    family: Family<QueryLabels, Histogram, fn() -> Histogram>,
    begin: Histogram,
    commit: Histogram,
    rollback: Histogram,
    transaction: Histogram,
    slow: Family<[(&'static str, Arc<str>); 1], Counter>,
    /// Nanoseconds; an atomic because every query reads it.
    slow_threshold_ns: AtomicU64,
    statements: RwLock<Statements>,
    pools: Arc<Mutex<Vec<(&'static str, PgPool)>>>,
    waiters: Family<PoolLabels, Gauge>,
    acquire: Family<PoolLabels, Histogram, fn() -> Histogram>,
    fallbacks: Counter,
}

#[derive(Debug, Default)]
struct Statements {
    by_text: HashMap<Box<str>, (Arc<str>, Histogram)>,
    labels: usize,
}

impl DbMetrics {
    /// Registers the metrics in `registry` (once per registry).
    ///
    /// # Example
    /// ```
    /// use arq_core::metrics::MetricsRegistry;
    /// use arq_tenancy::tx::DbMetrics;
    ///
    /// let registry = MetricsRegistry::new();
    /// let m = DbMetrics::register(&registry)?;
    /// m.observe("commit", std::time::Duration::from_millis(2));
    /// m.observe_query("select * from t where name = 'bob'", std::time::Duration::from_millis(3));
    /// let text = registry.encode();
    /// assert!(text.contains("db_query_duration_seconds_count{operation=\"commit\",statement=\"COMMIT\"} 1"));
    /// assert!(text.contains("statement=\"select * from t where name = ?\"} 1"));
    /// assert!(!text.contains("bob"));
    /// # Ok::<(), arq_core::metrics::MetricsError>(())
    /// ```
    pub fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let metrics = Self::unregistered();
        let i = &metrics.inner;
        registry.register(
            "db_query_duration_seconds",
            "Time spent in the database by tenant transactions, by operation and statement fingerprint",
            i.family.clone(),
        )?;
        registry.register(
            "db_slow_queries",
            "Queries at or over the slow-query threshold, by statement fingerprint",
            i.slow.clone(),
        )?;
        registry.register(
            "db_pool_connections",
            "Open connections of each pool, by state (idle, in_use)",
            PoolGauge {
                pools: i.pools.clone(),
                kind: PoolKind::ByState,
            },
        )?;
        registry.register(
            "db_pool_size",
            "Open connections of each pool",
            PoolGauge {
                pools: i.pools.clone(),
                kind: PoolKind::Size,
            },
        )?;
        registry.register(
            "db_pool_max_connections",
            "Configured maximum connections of each pool",
            PoolGauge {
                pools: i.pools.clone(),
                kind: PoolKind::Max,
            },
        )?;
        registry.register(
            "db_pool_waiters",
            "Tasks waiting to acquire a connection from each pool",
            i.waiters.clone(),
        )?;
        registry.register(
            "db_pool_acquire_seconds",
            "Time to acquire a connection from each pool",
            i.acquire.clone(),
        )?;
        registry.register(
            "db_replica_fallbacks",
            "Read-only transactions run on the primary because the replica was unreachable",
            i.fallbacks.clone(),
        )?;
        Ok(metrics)
    }

    fn unregistered() -> Self {
        let family: Family<QueryLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(histogram as fn() -> Histogram);
        let op = |name: &'static str, sql: &'static str| {
            family
                .get_or_create(&[
                    ("operation", Arc::from(name)),
                    ("statement", Arc::from(sql)),
                ])
                .clone()
        };
        let (begin, commit, rollback, transaction) = (
            op("begin", "BEGIN"),
            op("commit", "COMMIT"),
            op("rollback", "ROLLBACK"),
            op("transaction", "*"),
        );
        Self {
            inner: Arc::new(Inner {
                begin,
                commit,
                rollback,
                transaction,
                family,
                slow: Family::default(),
                slow_threshold_ns: AtomicU64::new(nanos(DEFAULT_SLOW_QUERY_THRESHOLD)),
                statements: RwLock::default(),
                pools: Arc::default(),
                waiters: Family::default(),
                acquire: Family::new_with_constructor(histogram as fn() -> Histogram),
                fallbacks: Counter::default(),
            }),
        }
    }

    /// The handle registered in [`MetricsRegistry::global`] (registered on first use).
    pub fn global() -> Self {
        static GLOBAL: OnceLock<DbMetrics> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                Self::register(MetricsRegistry::global()).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "database metrics not exported");
                    Self::unregistered()
                })
            })
            .clone()
    }

    /// Sets the slow-query threshold (default [`DEFAULT_SLOW_QUERY_THRESHOLD`]).
    pub fn set_slow_query_threshold(&self, threshold: Duration) {
        self.inner
            .slow_threshold_ns
            .store(nanos(threshold), Ordering::Relaxed);
    }

    /// The slow-query threshold.
    pub fn slow_query_threshold(&self) -> Duration {
        Duration::from_nanos(self.inner.slow_threshold_ns.load(Ordering::Relaxed))
    }

    /// Records one transaction operation: `begin`, `commit`, `rollback` or `transaction`
    /// (anything else is recorded as `transaction`).
    pub fn observe(&self, operation: &'static str, elapsed: Duration) {
        let i = &self.inner;
        let h = match operation {
            "begin" => &i.begin,
            "commit" => &i.commit,
            "rollback" => &i.rollback,
            _ => &i.transaction,
        };
        h.observe(elapsed.as_secs_f64());
    }

    /// Records one query by the fingerprint of its SQL text, and logs it when slow. Only the
    /// fingerprint is ever recorded or logged: literals are replaced and bind parameters are
    /// not part of the text.
    pub fn observe_query(&self, sql: &str, elapsed: Duration) {
        let (fp, h) = self.statement(sql);
        h.observe(elapsed.as_secs_f64());
        let threshold = self.slow_query_threshold();
        if elapsed >= threshold {
            self.inner
                .slow
                .get_or_create(&[("statement", fp.clone())])
                .inc();
            tracing::warn!(
                target: "arq_tenancy::slow_query",
                statement = %fp,
                elapsed_ms = elapsed.as_millis() as u64,
                threshold_ms = threshold.as_millis() as u64,
                "slow query"
            );
        }
    }

    fn statement(&self, sql: &str) -> (Arc<str>, Histogram) {
        {
            let s = self
                .inner
                .statements
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((fp, h)) = s.by_text.get(sql) {
                return (fp.clone(), h.clone());
            }
        }
        let mut s = self
            .inner
            .statements
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((fp, h)) = s.by_text.get(sql) {
            return (fp.clone(), h.clone());
        }
        let mut fp: Arc<str> = Arc::from(fingerprint(sql));
        let label_exists = self
            .inner
            .family
            .get(&[("operation", Arc::from("query")), ("statement", fp.clone())])
            .is_some();
        if !label_exists {
            if s.labels >= MAX_STATEMENT_LABELS {
                fp = Arc::from("other");
            } else {
                s.labels += 1;
            }
        }
        let h = self
            .inner
            .family
            .get_or_create(&[("operation", Arc::from("query")), ("statement", fp.clone())])
            .clone();
        if s.by_text.len() < MAX_CACHED_TEXTS {
            s.by_text.insert(sql.into(), (fp.clone(), h.clone()));
        }
        (fp, h)
    }

    /// Reports `pool` as `name` (`primary`, `replica`) in the pool gauges.
    pub fn track_pool(&self, name: &'static str, pool: &PgPool) {
        let mut pools = self
            .inner
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pools.retain(|(n, _)| *n != name);
        pools.push((name, pool.clone()));
    }

    pub(crate) fn waiters(&self, pool: &'static str) -> Gauge {
        self.inner.waiters.get_or_create(&[("pool", pool)]).clone()
    }

    pub(crate) fn acquire_histogram(&self, pool: &'static str) -> Histogram {
        self.inner.acquire.get_or_create(&[("pool", pool)]).clone()
    }

    pub(crate) fn replica_fallback(&self) {
        self.inner.fallbacks.inc();
    }
}

#[derive(Debug, Clone, Copy)]
enum PoolKind {
    ByState,
    Size,
    Max,
}

/// Pool gauges read from the live pools when `/metrics` is rendered, so they are never stale.
#[derive(Debug)]
struct PoolGauge {
    pools: Arc<Mutex<Vec<(&'static str, PgPool)>>>,
    kind: PoolKind,
}

impl EncodeMetric for PoolGauge {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, pool) in pools.iter() {
            let size = i64::from(pool.size());
            let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
            match self.kind {
                PoolKind::ByState => {
                    for (state, v) in [("idle", idle), ("in_use", (size - idle).max(0))] {
                        let labels = [("pool", *name), ("state", state)];
                        encoder.encode_family(&labels)?.encode_gauge(&v)?;
                    }
                }
                PoolKind::Size => {
                    encoder
                        .encode_family(&[("pool", *name)])?
                        .encode_gauge(&size)?;
                }
                PoolKind::Max => {
                    let max = i64::from(pool.options().get_max_connections());
                    encoder
                        .encode_family(&[("pool", *name)])?
                        .encode_gauge(&max)?;
                }
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Counts a task as waiting for a connection until dropped (also when the acquire is
/// cancelled).
pub(crate) struct Waiting(Gauge);

impl Waiting {
    pub(crate) fn start(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_labels_are_bounded() {
        let registry = MetricsRegistry::new();
        let m = DbMetrics::register(&registry).unwrap();
        for i in 0..MAX_STATEMENT_LABELS + 50 {
            // Distinct identifiers: distinct fingerprints.
            m.observe_query(&format!("select c{i} from t"), Duration::from_millis(1));
        }
        // The same statement with different literals is one label.
        for v in 0..10 {
            m.observe_query(
                &format!("select c0 from t where v = {v}"),
                Duration::from_millis(1),
            );
        }
        let text = registry.encode();
        let labels = text
            .lines()
            .filter(|l| l.starts_with("db_query_duration_seconds_count{operation=\"query\""))
            .count();
        assert_eq!(
            labels,
            MAX_STATEMENT_LABELS + 1,
            "{MAX_STATEMENT_LABELS} and other"
        );
        assert!(text.contains(
            "db_query_duration_seconds_count{operation=\"query\",statement=\"other\"} 60"
        ));
    }

    #[test]
    fn slow_queries_are_counted_at_the_threshold() {
        let registry = MetricsRegistry::new();
        let m = DbMetrics::register(&registry).unwrap();
        m.set_slow_query_threshold(Duration::from_millis(100));
        m.observe_query("select 1", Duration::from_millis(99));
        m.observe_query("select 2", Duration::from_millis(100));
        let text = registry.encode();
        assert!(
            text.contains("db_slow_queries_total{statement=\"select ?\"} 1"),
            "{text}"
        );
    }
}
