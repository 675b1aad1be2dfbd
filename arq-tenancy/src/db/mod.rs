//! Pools for tenant transactions: configuration (the seed's 20 connections, PgBouncer in
//! transaction mode, a read replica) and database observability.
//!
//! [`DbConfig::connect_checked`] builds the [`TenantPool`] a service serves from, after the
//! start-up audit passed ([`DbConfig::connect`] skips the audit). What it observes is described
//! on [`DbMetrics`]: `db_query_duration_seconds` by statement [`fingerprint`] (queries run through
//! `&mut tx`, see [`TenantTx`](crate::TenantTx)), a slow-query log that names the fingerprint and
//! never a parameter value, and the pool gauges.
//!
//! | setting | default | why |
//! |---|---|---|
//! | `max_connections` | 20 | the seed's connections per service |
//! | `acquire_timeout` | 5 s | a request waits this long for a connection, then gets 503 |
//! | `statement_timeout` | 5 s | the tenant transactions' statement timeout |
//! | `slow_query_threshold` | 100 ms | the seed's slow-query log |
//! | `pgbouncer` | false | transaction pooling: no named statements, timeout set per transaction |
//! | `replica_url` | none | read-only transactions go to the replica when set |
//! | `replica_acquire_timeout` | 1 s | how long a read waits for the replica before using the primary |
//! | `replica_retry_after` | 5 s | after a replica failure, reads use the primary this long before trying again |
//!
//! Direct to PostgreSQL, the statement timeout is a startup parameter of each connection
//! (`options=-c statement_timeout=…`), so a tenant transaction opens with one statement less;
//! PgBouncer does not pass startup parameters on, so behind it the timeout is set in every
//! transaction (`SET LOCAL`), as [`TenantPool::with_options`] does.

mod fingerprint;

use std::str::FromStr;
use std::time::Duration;

use arq_core::config::Secret;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

pub use fingerprint::{MAX_FINGERPRINT_LEN, fingerprint};

use crate::tx::{BeginMode, DEFAULT_STATEMENT_TIMEOUT, DbMetrics, ReplicaOptions, TenantPool};

/// The seed's connections per service.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 20;

/// Errors building pools from a [`DbConfig`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A database URL could not be parsed (the URL itself is not repeated: it may hold a password).
    #[error("the {which} database URL is not a valid PostgreSQL URL")]
    Url {
        /// `primary` or `replica`.
        which: &'static str,
    },
    /// Connecting to the primary failed.
    #[error("connecting to the primary database failed: {0}")]
    Connect(#[source] sqlx::Error),
}

/// Errors of [`DbConfig::connect_checked`]. Each names what failed; where a cause is wrapped,
/// it is the [source](std::error::Error::source), so `{:#}` (anyhow) prints
/// `what failed: why`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckedConnectError {
    /// The configuration is unusable (a URL that does not parse).
    #[error(transparent)]
    Config(DbError),
    /// The audit connection could not be opened.
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),
    /// The audit failed, or could not read the catalog: the message names every violation.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The audit connection could not be closed cleanly.
    #[error("closing the audit connection")]
    Close(#[source] sqlx::Error),
    /// The pool could not be built after the audit passed.
    #[error("cannot connect to PostgreSQL")]
    Pool(#[source] DbError),
}

impl CheckedConnectError {
    /// The audit's report when the database was refused as unsafe.
    pub fn unsafe_database(&self) -> Option<&crate::audit::UnsafeDatabase> {
        match self {
            Self::Audit(crate::audit::AuditError::Unsafe(u)) => Some(u),
            _ => None,
        }
    }
}

/// How a service connects to its database. Build with [`DbConfig::new`] and the setters.
///
/// # Example
/// ```no_run
/// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
/// use arq_tenancy::db::DbConfig;
/// use std::time::Duration;
///
/// let pool = DbConfig::new("postgres://arq_app@db/app".to_owned())
///     .replica_url("postgres://arq_app@db-replica/app".to_owned())
///     .slow_query_threshold(Duration::from_millis(250))
///     .connect()
///     .await?;
/// # let _ = pool; Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DbConfig {
    /// The primary's URL, connecting as the runtime role.
    pub url: Secret,
    /// A read replica's URL; read-only tenant transactions run there when set.
    pub replica_url: Option<Secret>,
    /// Connections per pool (default [`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: u32,
    /// Connections kept open when idle (default 0).
    pub min_connections: u32,
    /// How long a transaction waits for a primary connection (default 5 s).
    pub acquire_timeout: Duration,
    /// How long a read waits for a replica connection before falling back (default 1 s).
    pub replica_acquire_timeout: Duration,
    /// After a replica failure, how long reads go straight to the primary (default 5 s).
    pub replica_retry_after: Duration,
    /// The statement timeout in tenant transactions (default 5 s; zero leaves the role's).
    pub statement_timeout: Duration,
    /// Queries at or over this are logged and counted as slow (default 100 ms).
    pub slow_query_threshold: Duration,
    /// The URLs point at PgBouncer in transaction mode (default false).
    pub pgbouncer: bool,
    /// How transactions are opened (default [`BeginMode::Folded`]).
    pub begin_mode: BeginMode,
}

impl DbConfig {
    /// The defaults, connecting to `url`.
    pub fn new(url: impl Into<Secret>) -> Self {
        Self {
            url: url.into(),
            replica_url: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            replica_acquire_timeout: Duration::from_secs(1),
            replica_retry_after: Duration::from_secs(5),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            slow_query_threshold: crate::tx::DEFAULT_SLOW_QUERY_THRESHOLD,
            pgbouncer: false,
            begin_mode: BeginMode::Folded,
        }
    }

    /// Sets the replica URL.
    pub fn replica_url(mut self, url: impl Into<Secret>) -> Self {
        self.replica_url = Some(url.into());
        self
    }

    /// Sets the connections per pool.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the replica's acquire timeout and the time reads stay on the primary after a
    /// replica failure.
    pub fn replica_failover(mut self, acquire_timeout: Duration, retry_after: Duration) -> Self {
        self.replica_acquire_timeout = acquire_timeout;
        self.replica_retry_after = retry_after;
        self
    }

    /// Sets the statement timeout.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets the slow-query threshold.
    pub fn slow_query_threshold(mut self, threshold: Duration) -> Self {
        self.slow_query_threshold = threshold;
        self
    }

    /// Marks the URLs as PgBouncer in transaction mode.
    pub fn pgbouncer(mut self, yes: bool) -> Self {
        self.pgbouncer = yes;
        self
    }

    /// Sets the begin mode.
    pub fn begin_mode(mut self, mode: BeginMode) -> Self {
        self.begin_mode = mode;
        self
    }

    /// The connect options for `url` with this configuration's statement settings: no statement
    /// cache behind PgBouncer, the statement timeout as a startup parameter otherwise.
    ///
    /// # Example
    /// ```
    /// use arq_tenancy::db::DbConfig;
    ///
    /// let config = DbConfig::new("postgres://arq_app@127.0.0.1/app".to_owned()).pgbouncer(true);
    /// let options = config.connect_options(&config.url, "primary")?;
    /// assert_eq!(options.get_database(), Some("app"));
    /// # Ok::<(), arq_tenancy::db::DbError>(())
    /// ```
    pub fn connect_options(
        &self,
        url: &Secret,
        which: &'static str,
    ) -> Result<PgConnectOptions, DbError> {
        let options =
            PgConnectOptions::from_str(url.expose()).map_err(|_| DbError::Url { which })?;
        Ok(if self.pgbouncer {
            // Named prepared statements live on one server connection; PgBouncer < 1.21 hands
            // the next transaction another one. The unnamed statement is always safe.
            options.statement_cache_capacity(0)
        } else if self.statement_timeout.is_zero() {
            options
        } else {
            options.options([(
                "statement_timeout",
                self.statement_timeout.as_millis().to_string(),
            )])
        })
    }

    fn pool_options(&self, acquire_timeout: Duration) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(acquire_timeout)
    }

    /// Connects the primary (failing if it is unreachable: the service should not start) and,
    /// when configured, the replica lazily (an unreachable replica must not stop the service),
    /// recording into [`DbMetrics::global`].
    pub async fn connect(&self) -> Result<TenantPool, DbError> {
        self.connect_with_metrics(DbMetrics::global()).await
    }

    /// The start-up path of a service: runs the tenancy audit ([`crate::audit::ensure_safe`]) on
    /// one connection made like the pool's (same role, same options), then [`connect`]s. A
    /// database that would not isolate tenants is refused before any pool exists, with an error
    /// naming every violation, so the service never starts on it. This is what
    /// [`TenantPool::checked`] does for a pool built elsewhere.
    ///
    /// The replica is not audited: it is a copy of the primary, roles and policies included.
    ///
    /// [`connect`]: Self::connect
    ///
    /// # Example
    /// ```no_run
    /// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
    /// use arq_tenancy::db::DbConfig;
    ///
    /// let tenants = DbConfig::new("postgres://arq_app@db/app".to_owned())
    ///     .max_connections(10)
    ///     .connect_checked()
    ///     .await?; // "refusing to start: the database is not safe for tenant data ..."
    /// # let _ = tenants; Ok(()) }
    /// ```
    pub async fn connect_checked(&self) -> Result<TenantPool, CheckedConnectError> {
        let options = self
            .connect_options(&self.url, "primary")
            .map_err(CheckedConnectError::Config)?;
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(CheckedConnectError::Connect)?;
        crate::audit::ensure_safe(&mut conn).await?;
        conn.close().await.map_err(CheckedConnectError::Close)?;
        self.connect().await.map_err(CheckedConnectError::Pool)
    }

    /// As [`connect`](Self::connect), recording into `metrics`.
    pub async fn connect_with_metrics(&self, metrics: DbMetrics) -> Result<TenantPool, DbError> {
        let primary = self
            .pool_options(self.acquire_timeout)
            .connect_with(self.connect_options(&self.url, "primary")?)
            .await
            .map_err(DbError::Connect)?;
        self.build(primary, metrics)
    }

    /// As [`connect_with_metrics`](Self::connect_with_metrics) without connecting anything yet.
    pub fn connect_lazy_with_metrics(&self, metrics: DbMetrics) -> Result<TenantPool, DbError> {
        let primary = self
            .pool_options(self.acquire_timeout)
            .connect_lazy_with(self.connect_options(&self.url, "primary")?);
        self.build(primary, metrics)
    }

    fn build(&self, primary: sqlx::PgPool, metrics: DbMetrics) -> Result<TenantPool, DbError> {
        metrics.set_slow_query_threshold(self.slow_query_threshold);
        // Direct connections carry the timeout from their startup parameters.
        let per_tx_timeout = if self.pgbouncer {
            self.statement_timeout
        } else {
            Duration::ZERO
        };
        let mut pool = TenantPool::with_options(primary, self.begin_mode, per_tx_timeout, metrics)
            .unnamed_statements(self.pgbouncer);
        if let Some(url) = &self.replica_url {
            let replica = self
                .pool_options(self.replica_acquire_timeout)
                .connect_lazy_with(self.connect_options(url, "replica")?);
            pool = pool.with_replica(
                replica,
                ReplicaOptions {
                    retry_after: self.replica_retry_after,
                },
            );
        }
        Ok(pool)
    }
}
