//! The read replica behind [`TenantPool::begin_read_only`](super::TenantPool::begin_read_only):
//! whether to try it, and the once-per-outage log.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use arq_core::health::{CheckFuture, HealthCheck};
use arq_core::metrics::prometheus_client::metrics::gauge::Gauge;
use arq_core::metrics::prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;

use super::{DbMetrics, TxError};

/// How a [`TenantPool`](super::TenantPool) treats its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaOptions {
    /// After the replica failed, reads go straight to the primary for this long before the
    /// replica is tried again (zero: try it on every read).
    pub retry_after: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        Self {
            retry_after: Duration::from_secs(5),
        }
    }
}

impl ReplicaOptions {
    /// Options with `retry_after`.
    pub fn retry_after(retry_after: Duration) -> Self {
        Self { retry_after }
    }
}

pub(crate) struct Replica {
    pool: PgPool,
    retry_after: Duration,
    state: Mutex<State>,
    waiters: Gauge,
    acquire: Histogram,
}

#[derive(Default)]
struct State {
    /// Set while the replica is considered down: the outage is logged once, when this is set.
    down_since: Option<Instant>,
    retry_at: Option<Instant>,
}

impl Replica {
    pub(crate) fn new(pool: PgPool, options: ReplicaOptions, metrics: &DbMetrics) -> Self {
        Self {
            pool,
            retry_after: options.retry_after,
            state: Mutex::default(),
            waiters: metrics.waiters("replica"),
            acquire: metrics.acquire_histogram("replica"),
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn waiters(&self) -> &Gauge {
        &self.waiters
    }

    pub(crate) fn acquire(&self) -> &Histogram {
        &self.acquire
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn should_try(&self) -> bool {
        self.lock().retry_at.is_none_or(|at| Instant::now() >= at)
    }

    pub(crate) fn mark_up(&self) {
        let mut state = self.lock();
        state.retry_at = None;
        if let Some(since) = state.down_since.take() {
            tracing::info!(
                down_for_ms = since.elapsed().as_millis() as u64,
                "read replica reachable again; read-only tenant transactions use it"
            );
        }
    }

    pub(crate) fn mark_down(&self, error: &TxError) {
        let mut state = self.lock();
        let now = Instant::now();
        state.retry_at = Some(now + self.retry_after);
        if state.down_since.is_none() {
            state.down_since = Some(now);
            tracing::warn!(
                %error,
                "read replica unreachable; read-only tenant transactions use the primary until it answers"
            );
        }
    }
}

/// A readiness check that runs `select 1` through a pool.
#[derive(Debug, Clone)]
pub struct PoolCheck {
    name: String,
    pool: PgPool,
}

impl PoolCheck {
    /// A check named `name` on `pool`.
    pub fn new(name: impl Into<String>, pool: PgPool) -> Self {
        Self {
            name: name.into(),
            pool,
        }
    }
}

impl HealthCheck for PoolCheck {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            sqlx::query("select 1")
                .persistent(false)
                .execute(&self.pool)
                .await
                .map(drop)
                // sqlx errors name the failure, never the connection URL.
                .map_err(|e| e.to_string())
        })
    }
}
