//! Tenant transactions: the only way this crate lets a service reach tenant tables.
//!
//! [`TenantPool`] wraps a `sqlx::PgPool` and does not hand it out: every connection it lends is
//! inside a [`TenantTx`] whose first statement scopes it to one tenant,
//!
//! ```sql
//! BEGIN; SET LOCAL app.tenant_id = '<uuid>'; SET LOCAL statement_timeout = 5000
//! ```
//!
//! sent as **one** simple query, so scoping costs no round trip over a plain `BEGIN`. Both settings
//! are transaction-local (`SET LOCAL` is `set_config(..., true)` without the planner, the executor
//! and a result row, which the benchmark shows is measurably cheaper per transaction): they end
//! with the transaction, so a pooled connection (or a PgBouncer server connection) never carries a
//! tenant into the next transaction. Never a session `SET`.
//!
//! ## Why a formatted statement is safe here
//! The simple-query protocol has no parameters, so a `BEGIN; SET LOCAL ...` (or `BEGIN; SELECT
//! set_config(...)`) built from untrusted text would be an injection. The value here is not text:
//! it is a [`TenantId`], a parsed UUID whose `Display` is the canonical 36-character hyphenated
//! form (`[0-9a-f-]` only). [`begin_statement`] still checks every byte before formatting and
//! fails closed, and `arq.current_tenant_id()` casts the setting to `uuid` on every read. [`BeginMode::Parameterized`] is the two-round-trip
//! alternative (`BEGIN`, then `set_config($1)` as a bound parameter); the benchmark in
//! `docs/bench-tenancy.md` measures both.
//!
//! ## Escape hatch
//! Admin and migration work that must see across tenants uses [`TenantPool::unscoped`], which
//! takes a reason and logs it at `warn` on every call. It is deliberately noisy and easy to grep.

mod exec;
mod extract;
mod metrics;
mod replica;

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arq_core::metrics::prometheus_client::metrics::gauge::Gauge;
use arq_core::metrics::prometheus_client::metrics::histogram::Histogram;
use arq_core::{IntoProblem, Problem, TenantId};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::{AssertSqlSafe, SqlSafeStr, Transaction};

pub use extract::{TenantTxLayer, TenantTxService};
pub use metrics::{DEFAULT_SLOW_QUERY_THRESHOLD, DbMetrics, MAX_STATEMENT_LABELS};
pub use replica::{PoolCheck, ReplicaOptions};

/// The default statement timeout inside tenant transactions.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a tenant transaction is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BeginMode {
    /// `BEGIN` and both `SET LOCAL`s in one simple query: one round trip.
    #[default]
    Folded,
    /// `BEGIN`, then `set_config($1, ...)` with bound parameters: two round trips. For
    /// deployments whose policy forbids any formatted SQL; it costs about one extra round trip.
    Parameterized,
}

/// Errors of tenant transactions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// The database failed (connect, begin, a statement, commit or rollback).
    #[error("database error in a tenant transaction: {0}")]
    Database(#[from] sqlx::Error),
    /// The tenant id rendered to something other than a canonical UUID (cannot happen with
    /// arq-core's `TenantId`; checked anyway because the value is formatted into SQL).
    #[error("refusing to scope a transaction to a tenant id that is not a canonical UUID")]
    UnsafeTenantId,
    /// The transaction was already committed or rolled back.
    #[error("the tenant transaction is already finished; begin a new one")]
    Finished,
}

impl IntoProblem for TxError {
    fn into_problem(self) -> Problem {
        if let Self::Database(sqlx::Error::PoolTimedOut) = &self {
            return Problem::service_unavailable(1);
        }
        Problem::internal(&self)
    }
}

impl axum::response::IntoResponse for TxError {
    fn into_response(self) -> axum::response::Response {
        self.into_problem().into_response()
    }
}

/// A pool that only lends tenant-scoped transactions. Cheap to clone.
///
/// # Example
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, tenant: arq_tenancy::TenantId) -> Result<(), arq_tenancy::TxError> {
/// use arq_tenancy::TenantPool;
///
/// let pool = TenantPool::new(pool);
/// let mut tx = pool.begin(tenant).await?;
/// let n: i64 = sqlx::query_scalar("select count(*) from tasks").fetch_one(&mut *tx).await?;
/// tx.commit().await?;
/// # let _ = n; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TenantPool {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    pool: PgPool,
    replica: Option<Arc<replica::Replica>>,
    mode: BeginMode,
    timeout_ms: u128,
    unnamed: bool,
    metrics: DbMetrics,
    waiters: Gauge,
    acquire: Histogram,
}

impl std::fmt::Debug for TenantPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPool")
            .field("mode", &self.inner.mode)
            .field("statement_timeout_ms", &self.inner.timeout_ms)
            .field("replica", &self.inner.replica.is_some())
            .finish_non_exhaustive()
    }
}

impl TenantPool {
    /// Wraps `pool` (connected as the runtime role) with the defaults: folded begin, 5 s
    /// statement timeout, metrics in the global registry.
    pub fn new(pool: PgPool) -> Self {
        Self::with_options(
            pool,
            BeginMode::Folded,
            DEFAULT_STATEMENT_TIMEOUT,
            DbMetrics::global(),
        )
    }

    /// Wraps `pool` with explicit settings.
    ///
    /// `statement_timeout` is set per transaction; `Duration::ZERO` leaves it to the role's
    /// default (for instance `ALTER ROLE arq_app SET statement_timeout = '5s'`, which also holds
    /// behind PgBouncer). A per-transaction timeout costs timer work on the server for every
    /// statement; `docs/bench-tenancy.md` measures it.
    pub fn with_options(
        pool: PgPool,
        mode: BeginMode,
        statement_timeout: Duration,
        metrics: DbMetrics,
    ) -> Self {
        metrics.track_pool("primary", &pool);
        Self {
            inner: Arc::new(Inner {
                pool,
                replica: None,
                mode,
                timeout_ms: statement_timeout.as_millis(),
                unnamed: false,
                waiters: metrics.waiters("primary"),
                acquire: metrics.acquire_histogram("primary"),
                metrics,
            }),
        }
    }

    /// Adds a read replica: [`begin_read_only`](Self::begin_read_only) transactions run there
    /// (with the same tenant setting, so the same row-level security) while it answers, and on
    /// the primary while it does not, counted in `db_replica_fallbacks_total` and logged once
    /// per outage. `replica` should have a short acquire timeout: a read waits that long
    /// before falling back.
    pub fn with_replica(mut self, replica: PgPool, options: ReplicaOptions) -> Self {
        let metrics = self.inner.metrics.clone();
        metrics.track_pool("replica", &replica);
        Arc::make_mut(&mut self.inner).replica =
            Some(Arc::new(replica::Replica::new(replica, options, &metrics)));
        self
    }

    /// Queries run through `&mut tx` use only the unnamed prepared statement (for PgBouncer in
    /// transaction mode before 1.21, where a named statement may be missing on the next
    /// transaction's server connection).
    pub fn unnamed_statements(mut self, yes: bool) -> Self {
        Arc::make_mut(&mut self.inner).unnamed = yes;
        self
    }

    /// The metrics handle this pool records into.
    pub fn metrics(&self) -> &DbMetrics {
        &self.inner.metrics
    }

    /// Audits the database as the pool's role ([`crate::audit::ensure_safe`]) and wraps the pool
    /// only if the audit passes: the start-up path of a service, which refuses to serve tenants
    /// from an unsafe database.
    ///
    /// # Example
    /// ```no_run
    /// # async fn start(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let tenants = arq_tenancy::TenantPool::checked(pool).await?; // error names every violation
    /// # let _ = tenants; Ok(()) }
    /// ```
    pub async fn checked(pool: PgPool) -> Result<Self, crate::audit::AuditError> {
        let mut conn = pool.acquire().await?;
        crate::audit::ensure_safe(&mut conn).await?;
        drop(conn);
        Ok(Self::new(pool))
    }

    /// The begin mode.
    pub fn mode(&self) -> BeginMode {
        self.inner.mode
    }

    /// Begins a transaction scoped to `tenant` on the primary.
    pub async fn begin(&self, tenant: TenantId) -> Result<TenantTx, TxError> {
        let started = Instant::now();
        let conn = acquire(&self.inner.pool, &self.inner.waiters, &self.inner.acquire).await?;
        self.open(conn, tenant, false, false, started).await
    }

    /// Begins a read-only (`BEGIN READ ONLY`) transaction scoped to `tenant`: on the replica
    /// when one is configured and answers, on the primary otherwise (see
    /// [`with_replica`](Self::with_replica)). Writes in it fail on either.
    pub async fn begin_read_only(&self, tenant: TenantId) -> Result<TenantTx, TxError> {
        let started = Instant::now();
        if let Some(replica) = &self.inner.replica {
            if replica.should_try() {
                match acquire(replica.pool(), replica.waiters(), replica.acquire()).await {
                    Ok(conn) => match self.open(conn, tenant, true, true, started).await {
                        Ok(tx) => {
                            replica.mark_up();
                            return Ok(tx);
                        }
                        Err(e) => replica.mark_down(&e),
                    },
                    Err(e) => replica.mark_down(&TxError::Database(e)),
                }
            }
            self.inner.metrics.replica_fallback();
        }
        let conn = acquire(&self.inner.pool, &self.inner.waiters, &self.inner.acquire).await?;
        self.open(conn, tenant, true, false, started).await
    }

    async fn open(
        &self,
        conn: PoolConnection<Postgres>,
        tenant: TenantId,
        read_only: bool,
        on_replica: bool,
        started: Instant,
    ) -> Result<TenantTx, TxError> {
        let inner = &self.inner;
        let begin = if read_only {
            "BEGIN READ ONLY"
        } else {
            "BEGIN"
        };
        let tx = match inner.mode {
            BeginMode::Folded => {
                let sql = begin_statement_with(begin, tenant, inner.timeout_ms)?;
                Transaction::begin(conn, Some(AssertSqlSafe(sql).into_sql_str())).await?
            }
            BeginMode::Parameterized => {
                let mut tx = Transaction::begin(conn, Some(begin.into_sql_str())).await?;
                // An empty timeout leaves the current value (the role's default) unchanged.
                sqlx::query(
                    "select set_config('app.tenant_id', $1, true), \
                     case when $2 = '' then null \
                          else set_config('statement_timeout', $2, true) end",
                )
                .bind(tenant.to_string())
                .bind(if inner.timeout_ms == 0 {
                    String::new()
                } else {
                    inner.timeout_ms.to_string()
                })
                .persistent(false)
                .execute(&mut *tx)
                .await?;
                tx
            }
        };
        inner.metrics.observe("begin", started.elapsed());
        Ok(TenantTx {
            tx: Some(tx),
            tenant,
            started: Instant::now(),
            metrics: inner.metrics.clone(),
            unnamed: inner.unnamed,
            on_replica,
            slot: None,
        })
    }

    /// The readiness checks of this pool's database connections: `postgres_primary` and, with a
    /// replica, `postgres_replica` (each runs `select 1` through its pool).
    pub fn health_checks(&self) -> Vec<PoolCheck> {
        let mut checks = vec![PoolCheck::new("postgres_primary", self.inner.pool.clone())];
        if let Some(r) = &self.inner.replica {
            checks.push(PoolCheck::new("postgres_replica", r.pool().clone()));
        }
        checks
    }

    /// Adds [`health_checks`](Self::health_checks) to `health`. A replica that does not answer
    /// then fails readiness although reads fall back to the primary; a service that would
    /// rather stay ready registers only the first check.
    ///
    /// # Example
    /// ```no_run
    /// # fn demo(pool: arq_tenancy::TenantPool) {
    /// let health = pool.register_health(arq_core::health::Health::new(std::time::Duration::from_secs(2)));
    /// # let _ = health; }
    /// ```
    pub fn register_health(
        &self,
        mut health: arq_core::health::Health,
    ) -> arq_core::health::Health {
        for check in self.health_checks() {
            health = health.with_check(check);
        }
        health
    }

    /// Runs `work` in a transaction scoped to `tenant` (and with `tenant` as the task's current
    /// tenant): commits when it returns `Ok`, rolls back when it returns `Err`. For workers and
    /// other code outside a request.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(pool: arq_tenancy::TenantPool, tenant: arq_tenancy::TenantId) -> Result<(), arq_tenancy::TxError> {
    /// let open: i64 = pool
    ///     .run(tenant, |tx| Box::pin(async move {
    ///         Ok::<_, arq_tenancy::TxError>(
    ///             sqlx::query_scalar("select count(*) from tasks").fetch_one(&mut **tx).await?,
    ///         )
    ///     }))
    ///     .await?;
    /// # let _ = open; Ok(()) }
    /// ```
    pub async fn run<T, E, F>(&self, tenant: TenantId, work: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(
                &'c mut TenantTx,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        E: From<TxError>,
    {
        crate::context::scope(tenant, async move {
            let mut tx = self.begin(tenant).await.map_err(E::from)?;
            match work(&mut tx).await {
                Ok(value) => {
                    tx.commit().await.map_err(E::from)?;
                    Ok(value)
                }
                Err(e) => {
                    if let Err(rollback) = tx.rollback().await {
                        tracing::warn!(error = %rollback, "rollback after a failed tenant transaction failed");
                    }
                    Err(e)
                }
            }
        })
        .await
    }

    /// The bare pool, for deliberate cross-tenant or administrative work. Logged at `warn` with
    /// `reason` every time: tenant tables reached through it are filtered by nothing but the
    /// database role's own rights.
    pub fn unscoped(&self, reason: &str) -> &PgPool {
        tracing::warn!(
            reason,
            "arq-tenancy: using the bare pool outside a tenant transaction"
        );
        &self.inner.pool
    }
}

/// The single simple-query statement that opens a tenant transaction (see the module docs).
/// A `timeout_ms` of 0 leaves the statement timeout alone.
///
/// # Example
/// ```
/// use arq_tenancy::{tx::begin_statement, TenantId};
///
/// let t: TenantId = "0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60".parse().unwrap();
/// assert_eq!(
///     begin_statement(t, 5000).unwrap(),
///     "BEGIN; SET LOCAL app.tenant_id = '0196b5a4-5c8e-7d2e-9f3a-1b2c3d4e5f60'; \
///      SET LOCAL statement_timeout = 5000"
/// );
/// assert!(!begin_statement(t, 0).unwrap().contains("statement_timeout"));
/// ```
pub fn begin_statement(tenant: TenantId, timeout_ms: u128) -> Result<String, TxError> {
    begin_statement_with("BEGIN", tenant, timeout_ms)
}

fn begin_statement_with(
    begin: &'static str,
    tenant: TenantId,
    timeout_ms: u128,
) -> Result<String, TxError> {
    // Built by hand rather than with `format!`: this runs once per tenant transaction, and the
    // formatting machinery cost more client CPU than the rest of `begin` (docs/bench-tenancy.md).
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = tenant.into_uuid().hyphenated().encode_lower(&mut buf);
    // Defence in depth: only the canonical UUID alphabet is ever formatted into SQL.
    if id.len() != 36 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(TxError::UnsafeTenantId);
    }
    const SET_TENANT: &str = "; SET LOCAL app.tenant_id = '";
    const SET_TIMEOUT: &str = "'; SET LOCAL statement_timeout = ";
    let mut sql =
        String::with_capacity(begin.len() + SET_TENANT.len() + 36 + SET_TIMEOUT.len() + 40);
    sql.push_str(begin);
    sql.push_str(SET_TENANT);
    sql.push_str(id);
    if timeout_ms == 0 {
        sql.push('\'');
    } else {
        sql.push_str(SET_TIMEOUT);
        // Writing into a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut sql, format_args!("{timeout_ms}"));
    }
    Ok(sql)
}

/// A transaction scoped to one tenant. Dropped without [`commit`](Self::commit), it rolls back.
///
/// Run queries through `&mut tx` (`.fetch_all(&mut tx)`): `&mut TenantTx` is a sqlx executor
/// that times each query into `db_query_duration_seconds` under its statement fingerprint and
/// logs it when slow (see [`DbMetrics`]). It also dereferences to the bare connection
/// (`&mut *tx`), which runs the same queries untimed.
pub struct TenantTx {
    tx: Option<Transaction<'static, Postgres>>,
    tenant: TenantId,
    started: Instant,
    metrics: DbMetrics,
    unnamed: bool,
    on_replica: bool,
    /// Set when the transaction belongs to a request: on drop it goes back to the request's slot
    /// so [`TenantTxLayer`] can commit or roll back once the response status is known.
    slot: Option<Arc<extract::Slot>>,
}

impl std::fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.tenant)
            .field("open", &self.tx.is_some())
            .field("on_replica", &self.on_replica)
            .finish_non_exhaustive()
    }
}

impl TenantTx {
    /// The tenant this transaction is scoped to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Whether this transaction runs on the read replica.
    pub fn on_replica(&self) -> bool {
        self.on_replica
    }

    /// Commits. Records `db_query_duration_seconds{operation="commit"}` and the whole
    /// transaction's duration.
    pub async fn commit(mut self) -> Result<(), TxError> {
        let tx = self.take()?;
        let started = Instant::now();
        let result = tx.commit().await;
        self.metrics.observe("commit", started.elapsed());
        self.metrics.observe("transaction", self.started.elapsed());
        result.map_err(TxError::from)
    }

    /// Rolls back.
    pub async fn rollback(mut self) -> Result<(), TxError> {
        let tx = self.take()?;
        let started = Instant::now();
        let result = tx.rollback().await;
        self.metrics.observe("rollback", started.elapsed());
        self.metrics.observe("transaction", self.started.elapsed());
        result.map_err(TxError::from)
    }

    fn take(&mut self) -> Result<Transaction<'static, Postgres>, TxError> {
        if let Some(slot) = &self.slot {
            slot.finish();
        }
        self.tx.take().ok_or(TxError::Finished)
    }

    fn conn(&self) -> Option<&PgConnection> {
        self.tx.as_deref()
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;

    #[allow(
        clippy::panic,
        reason = "commit/rollback consume self, so tx is always Some here"
    )]
    fn deref(&self) -> &PgConnection {
        match self.conn() {
            Some(c) => c,
            None => panic!("TenantTx used after commit or rollback"),
        }
    }
}

impl DerefMut for TenantTx {
    #[allow(
        clippy::panic,
        reason = "commit/rollback consume self, so tx is always Some here"
    )]
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self.tx.as_deref_mut() {
            Some(c) => c,
            None => panic!("TenantTx used after commit or rollback"),
        }
    }
}

impl Drop for TenantTx {
    fn drop(&mut self) {
        if let (Some(slot), Some(tx)) = (self.slot.take(), self.tx.take()) {
            slot.park(TenantTx {
                tx: Some(tx),
                tenant: self.tenant,
                started: self.started,
                metrics: self.metrics.clone(),
                unnamed: self.unnamed,
                on_replica: self.on_replica,
                slot: None,
            });
        }
        // Otherwise sqlx's Transaction rolls back on drop.
    }
}

/// Acquires a connection, counting the wait in `db_pool_waiters` and `db_pool_acquire_seconds`.
async fn acquire(
    pool: &PgPool,
    waiters: &Gauge,
    histogram: &Histogram,
) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    let started = Instant::now();
    let waiting = metrics::Waiting::start(waiters.clone());
    let conn = pool.acquire().await;
    drop(waiting);
    histogram.observe(started.elapsed().as_secs_f64());
    conn
}
