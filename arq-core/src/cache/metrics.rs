//! The cache's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{MetricsError, MetricsRegistry};

type Labels = [(&'static str, &'static str); 2];
type KindLabel = [(&'static str, &'static str); 1];

/// The cache's metric handles. Register them once per registry with
/// [`CacheMetrics::register`] and give clones to every cache that should record into them.
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `cache_requests_total` | `tier` (`l1`, `l2`), `result` (`hit`, `miss`) | lookups per tier |
/// | `cache_loads_total` | | loader runs (after an L1 and L2 miss) |
/// | `cache_load_errors_total` | | loader runs that returned an error (nothing is cached) |
/// | `cache_errors_total` | `kind` (`redis`, `timeout`, `decode`, `type_mismatch`) | cache faults, all survived |
/// | `cache_redis_unavailable_total` | | Redis operations skipped or failed because Redis was unreachable |
/// | `cache_invalidations_received_total` | | L1 entries dropped on another instance's message |
/// | `cache_l1_flushes_total` | | whole-L1 flushes after the invalidation channel reconnected |
/// | `cache_redis_up` | | 1 while the last Redis operation succeeded, else 0 |
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    pub(crate) l1_hit: Counter,
    pub(crate) l1_miss: Counter,
    pub(crate) l2_hit: Counter,
    pub(crate) l2_miss: Counter,
    pub(crate) loads: Counter,
    pub(crate) load_errors: Counter,
    pub(crate) err_redis: Counter,
    pub(crate) err_timeout: Counter,
    pub(crate) err_decode: Counter,
    pub(crate) err_type: Counter,
    pub(crate) redis_unavailable: Counter,
    pub(crate) invalidations_received: Counter,
    pub(crate) l1_flushes: Counter,
    pub(crate) redis_up: Gauge,
    requests: Family<Labels, Counter>,
    errors: Family<KindLabel, Counter>,
}

/// A point-in-time copy of the cache counters, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// L1 hits.
    pub l1_hits: u64,
    /// L1 misses.
    pub l1_misses: u64,
    /// L2 hits.
    pub l2_hits: u64,
    /// L2 misses (including lookups skipped because Redis was unavailable).
    pub l2_misses: u64,
    /// Loader runs.
    pub loads: u64,
    /// Loader errors.
    pub load_errors: u64,
    /// Cache faults of every kind.
    pub errors: u64,
    /// Redis operations that could not use Redis.
    pub redis_unavailable: u64,
    /// L1 entries dropped on another instance's message.
    pub invalidations_received: u64,
    /// Whole-L1 flushes after the invalidation channel reconnected.
    pub l1_flushes: u64,
}

impl Default for CacheMetrics {
    fn default() -> Self {
        Self::unregistered()
    }
}

impl CacheMetrics {
    /// Metric handles that record but are not exposed anywhere.
    pub fn unregistered() -> Self {
        let requests = Family::<Labels, Counter>::default();
        let errors = Family::<KindLabel, Counter>::default();
        let req = |tier, result| {
            requests
                .get_or_create(&[("tier", tier), ("result", result)])
                .clone()
        };
        let err = |kind| errors.get_or_create(&[("kind", kind)]).clone();
        Self {
            l1_hit: req("l1", "hit"),
            l1_miss: req("l1", "miss"),
            l2_hit: req("l2", "hit"),
            l2_miss: req("l2", "miss"),
            err_redis: err("redis"),
            err_timeout: err("timeout"),
            err_decode: err("decode"),
            err_type: err("type_mismatch"),
            loads: Counter::default(),
            load_errors: Counter::default(),
            redis_unavailable: Counter::default(),
            invalidations_received: Counter::default(),
            l1_flushes: Counter::default(),
            redis_up: Gauge::default(),
            requests,
            errors,
        }
    }

    /// Registers the cache metrics in `registry` (once per registry) and returns their handles.
    pub fn register(registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let m = Self::unregistered();
        registry.register(
            "cache_requests",
            "Cache lookups by tier and result",
            m.requests.clone(),
        )?;
        registry.register(
            "cache_loads",
            "Loader runs after a miss in both tiers",
            m.loads.clone(),
        )?;
        registry.register(
            "cache_load_errors",
            "Loader runs that returned an error",
            m.load_errors.clone(),
        )?;
        registry.register(
            "cache_errors",
            "Cache faults by kind; the request was served anyway",
            m.errors.clone(),
        )?;
        registry.register(
            "cache_redis_unavailable",
            "Redis operations skipped or failed because Redis was unreachable",
            m.redis_unavailable.clone(),
        )?;
        registry.register(
            "cache_invalidations_received",
            "L1 entries dropped because another instance changed them",
            m.invalidations_received.clone(),
        )?;
        registry.register(
            "cache_l1_flushes",
            "Whole-L1 flushes after the invalidation channel reconnected",
            m.l1_flushes.clone(),
        )?;
        registry.register(
            "cache_redis_up",
            "1 while the last Redis operation succeeded",
            m.redis_up.clone(),
        )?;
        Ok(m)
    }

    /// The current counter values.
    pub fn snapshot(&self) -> CacheStats {
        CacheStats {
            l1_hits: self.l1_hit.get(),
            l1_misses: self.l1_miss.get(),
            l2_hits: self.l2_hit.get(),
            l2_misses: self.l2_miss.get(),
            loads: self.loads.get(),
            load_errors: self.load_errors.get(),
            errors: self.err_redis.get()
                + self.err_timeout.get()
                + self.err_decode.get()
                + self.err_type.get(),
            redis_unavailable: self.redis_unavailable.get(),
            invalidations_received: self.invalidations_received.get(),
            l1_flushes: self.l1_flushes.get(),
        }
    }
}
