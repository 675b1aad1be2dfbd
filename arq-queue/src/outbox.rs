//! The transactional outbox on PostgreSQL (feature `postgres`).
//!
//! A message is written to the `arq_outbox` table **inside the caller's transaction**, next to
//! the business write it belongs to: both commit or neither does. A [`Relay`] then publishes
//! committed rows to any backend and deletes them.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool, tenant: arq_queue::TenantId) -> Result<(), Box<dyn std::error::Error>> {
//! use arq_queue::{Envelope, outbox};
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct OrderPlaced { id: u64 }
//! # impl arq_queue::Message for OrderPlaced { const TYPE: &'static str = "order.placed"; }
//!
//! let mut tx = pool.begin().await?;
//! // arq-tenancy's tenant transaction hands out the same `&mut PgConnection`.
//! sqlx::query("select set_config('app.tenant_id', $1, true)")
//!     .bind(tenant.to_string())
//!     .execute(&mut *tx)
//!     .await?;
//! sqlx::query("insert into orders (tenant_id, id) values ($1, 42)")
//!     .bind(tenant.into_uuid())
//!     .execute(&mut *tx)
//!     .await?;
//! let env = Envelope::new(OrderPlaced { id: 42 }).with_tenant(tenant);
//! outbox::enqueue(&mut tx, "app", "order.placed", &env).await?;
//! tx.commit().await?; // only now can the relay see the message
//! # Ok(()) }
//! ```
//!
//! # The guarantee, precisely
//! - A rolled-back transaction publishes nothing: the row never becomes visible.
//! - Every committed row is published **at least once**: the relay claims rows with
//!   `SELECT … FOR UPDATE SKIP LOCKED` in its own transaction, publishes them with broker
//!   confirms, then deletes them and commits. Concurrent relays never publish the same row at
//!   the same time (the row lock), and a row is deleted only after the broker confirmed it.
//! - A relay that crashes (or loses the database) **after the broker confirmed but before its
//!   commit** leaves the rows in place, unlocked; the next relay run publishes them again. No
//!   protocol can make "publish to a broker" and "mark in PostgreSQL" one atomic step, so this
//!   window produces a duplicate publication, never a loss.
//! - The duplicate carries the **same envelope id** (the id is assigned at enqueue time and
//!   stored in the row). A consumer with idempotency on (see
//!   [`QueueConfig::idempotent`](crate::QueueConfig::idempotent) and
//!   [`IdempotencyStore`](crate::IdempotencyStore)) therefore handles each committed row
//!   **exactly once**; that is the end-to-end "exactly once per committed row".
//!   For side effects in the consumer's own database, record the message id in the same
//!   transaction as the effect (a unique key) to make that step exactly once as well.
//! - Order: rows are published in commit-independent `seq` order per batch; with several
//!   relays or retries, consumers must not rely on order.
//!
//! # Privileges
//! [`MIGRATION`] alone creates the table without row-level security: give the tenant runtime
//! role `INSERT` (and the sequence's `USAGE`) only, so no tenant can read another's rows, and run
//! the relay as a role that can `SELECT`, `UPDATE` and `DELETE`.
//!
//! In a tenant database (arq-tenancy), run [`TENANT_ISOLATION_MIGRATION`] right after it: the
//! outbox then holds tenant data like any tenant table (`tenant_id` required and first in the
//! key, row-level security forced, the runtime role `arq_app` may only insert its own tenant's
//! rows) and only the relay role [`RELAY_ROLE`] (created once per cluster with
//! [`RELAY_ROLE_SQL`]) reads every tenant's rows. A service then
//! - checks the role exists before migrating ([`require_relay_role`]),
//! - opens the relay's own pool with [`connect_relay_pool`], which refuses a role that could not
//!   relay (e.g. the runtime role, which would see no rows and publish nothing, silently),
//! - and runs [`Relay`] on a queue connected with
//!   [`connect_rabbitmq_retrying`](crate::connect_rabbitmq_retrying) (feature `rabbitmq`), so
//!   that a broker outage delays events without failing a request.

use std::future::Future;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::backend::{Backend, Outgoing};
use crate::envelope::{Envelope, Message, MessageId};
use crate::error::QueueError;
use crate::queue::Queue;

/// The table's DDL (also in `migrations/0001_arq_outbox.sql` for `sqlx migrate`).
pub const MIGRATION: &str = include_str!("../migrations/0001_arq_outbox.sql");

/// Makes the outbox a tenant table (also in `migrations/0002_arq_outbox_tenant_isolation.sql`);
/// run it once, right after [`MIGRATION`], as the owner role, in a database with arq-tenancy's
/// support migration and after [`RELAY_ROLE`] exists. See the module docs.
pub const TENANT_ISOLATION_MIGRATION: &str =
    include_str!("../migrations/0002_arq_outbox_tenant_isolation.sql");

/// The relay's database role, the one [`TENANT_ISOLATION_MIGRATION`] lets read every tenant's
/// outbox rows.
pub const RELAY_ROLE: &str = "arq_relay";

/// Creates [`RELAY_ROLE`] if it does not exist (idempotent); run once per cluster by an
/// administrator, e.g. `psql "$ADMIN_URL" -f relay-role.sql` with this text in the file.
pub const RELAY_ROLE_SQL: &str = include_str!("../migrations/relay-role.sql");

fn db(e: &sqlx::Error) -> QueueError {
    QueueError::Database {
        reason: e.to_string(),
    }
}

/// Creates the outbox table if it does not exist (idempotent).
pub async fn migrate(conn: &mut PgConnection) -> Result<(), QueueError> {
    sqlx::raw_sql(MIGRATION)
        .execute(conn)
        .await
        .map(drop)
        .map_err(|e| db(&e))
}

/// Fails, saying how to create it, when [`RELAY_ROLE`] does not exist: run before
/// [`TENANT_ISOLATION_MIGRATION`], which grants to it (creating a role needs an administrator,
/// which a service's migrating role should not be).
pub async fn require_relay_role(pool: &PgPool) -> Result<(), QueueError> {
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(RELAY_ROLE)
            .fetch_one(pool)
            .await
            .map_err(|e| db(&e))?;
    if exists {
        return Ok(());
    }
    Err(QueueError::OutboxSetup {
        reason: format!(
            "the role {RELAY_ROLE} does not exist; create it once per cluster as an administrator \
             (the SQL is arq_queue::outbox::RELAY_ROLE_SQL, e.g. `psql \"$ADMIN_URL\" -f \
             sql/relay-role.sql`), then migrate again"
        ),
    })
}

/// Opens the relay's own small pool (2 connections) from `url` and checks that its role can do
/// the relay's work on a tenant outbox: read, mark and delete every tenant's rows (the
/// privileges and the `arq_outbox_relay` policy of [`TENANT_ISOLATION_MIGRATION`]). Refuses
/// otherwise, naming the role: the runtime role, say, would see no rows and relay nothing,
/// silently.
pub async fn connect_relay_pool(url: &str) -> Result<PgPool, QueueError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .map_err(|e| QueueError::Connection {
            backend: "PostgreSQL (the outbox relay's URL)",
            reason: e.to_string(),
        })?;
    let (role, privileged, policy): (String, bool, bool) = sqlx::query_as(
        "select current_user::text, \
           has_table_privilege('arq_outbox', 'SELECT') \
             and has_table_privilege('arq_outbox', 'UPDATE') \
             and has_table_privilege('arq_outbox', 'DELETE'), \
           exists (select 1 from pg_policy p join pg_roles r on r.oid = any (p.polroles) \
                   where p.polrelid = 'arq_outbox'::regclass and p.polname = 'arq_outbox_relay' \
                     and r.rolname = current_user)",
    )
    .fetch_one(&pool)
    .await
    .map_err(|e| QueueError::OutboxSetup {
        reason: format!("cannot inspect arq_outbox ({e}); have the outbox migrations run?"),
    })?;
    if !privileged || !policy {
        return Err(QueueError::OutboxSetup {
            reason: format!(
                "the relay connects as {role:?}, which cannot relay the outbox (it needs SELECT, \
                 UPDATE and DELETE on arq_outbox and the arq_outbox_relay policy): connect as \
                 {RELAY_ROLE} (see arq_queue::outbox::RELAY_ROLE_SQL) after the outbox migrations ran"
            ),
        });
    }
    Ok(pool)
}

/// Writes `envelope` to the outbox inside the caller's transaction (pass `&mut *tx` or
/// `&mut tx`). Nothing is published unless and until that transaction commits.
pub async fn enqueue(
    conn: &mut PgConnection,
    exchange: &str,
    routing_key: &str,
    envelope: &Envelope,
) -> Result<MessageId, QueueError> {
    let body = envelope.encode()?;
    sqlx::query(
        "insert into arq_outbox (id, tenant_id, exchange, routing_key, envelope) values ($1, $2, $3, $4, $5)",
    )
    .bind(*envelope.id.as_uuid())
    .bind(envelope.tenant.map(arq_core::TenantId::into_uuid))
    .bind(exchange)
    .bind(routing_key)
    .bind(body)
    .execute(conn)
    .await
    .map_err(|e| db(&e))?;
    Ok(envelope.id)
}

/// [`enqueue`] for a typed message, with its type as the routing key.
pub async fn enqueue_message<T: Message>(
    conn: &mut PgConnection,
    exchange: &str,
    message: T,
) -> Result<MessageId, QueueError> {
    let env = Envelope::new(message);
    enqueue(conn, exchange, T::TYPE, &env).await
}

/// Publishes committed outbox rows to a backend and deletes them.
///
/// # Example
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, queue: arq_queue::Queue<arq_queue::MemoryBackend>) -> Result<(), arq_queue::QueueError> {
/// use arq_queue::outbox::Relay;
/// let relay = Relay::new(pool, queue);
/// let published = relay.run_once().await?; // or relay.run(shutdown).await
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Relay<B> {
    pool: PgPool,
    queue: Queue<B>,
    batch: i64,
    poll_interval: Duration,
    unroutable_retry: Option<Duration>,
    crash_after_publish: bool,
}

/// How a row held back as unroutable is marked (`last_error` starts with it): the one kind of
/// failure that a deployment fixes by itself (the consumer declares its queue later), so
/// [`Relay::run`] puts such rows back in line, unlike rows that can never be published.
const UNROUTABLE_MARK: &str = "unroutable: ";

/// The `last_error` a failed row is marked with.
fn failure_text(e: &QueueError) -> String {
    match e {
        QueueError::Unroutable { .. } => format!("{UNROUTABLE_MARK}{e}"),
        other => other.to_string(),
    }
}

impl<B: Backend> Relay<B> {
    /// A relay publishing through `queue` (whose topology is declared), 500 rows per batch,
    /// polling every 100 ms when idle.
    pub fn new(pool: PgPool, queue: Queue<B>) -> Self {
        Self {
            pool,
            queue,
            batch: 500,
            poll_interval: Duration::from_millis(100),
            unroutable_retry: Some(Duration::from_secs(30)),
            crash_after_publish: false,
        }
    }

    /// How often [`run`](Self::run) puts rows held back as unroutable back in line (default
    /// every 30 s, for rows that failed at least that long ago); `None` leaves them to
    /// [`retry_failed`]. An unroutable event usually means the consuming service has not
    /// declared its queue yet (a deployment order), which fixes itself: without this, those
    /// events would wait for an operator. Rows that can never be published (an undecodable
    /// envelope, an unknown exchange) are never retried automatically.
    #[must_use]
    pub const fn retry_unroutable_every(mut self, interval: Option<Duration>) -> Self {
        self.unroutable_retry = interval;
        self
    }

    /// Puts the rows marked unroutable at least `older_than` ago back in line; returns how many.
    /// [`run`](Self::run) calls it on its own schedule ([`retry_unroutable_every`](Self::retry_unroutable_every)).
    pub async fn requeue_unroutable(&self, older_than: Duration) -> Result<u64, QueueError> {
        let done = sqlx::query(
            "update arq_outbox set failed_at = null, last_error = null \
             where failed_at is not null and failed_at <= now() - make_interval(secs => $1) \
               and starts_with(last_error, $2)",
        )
        .bind(older_than.as_secs_f64())
        .bind(UNROUTABLE_MARK)
        .execute(&self.pool)
        .await
        .map_err(|e| db(&e))?;
        Ok(done.rows_affected())
    }

    /// Rows claimed and published per round (one pipelined round of confirms).
    #[must_use]
    pub fn batch_size(mut self, rows: u16) -> Self {
        self.batch = i64::from(rows.max(1));
        self
    }

    /// How long to wait when the outbox is empty.
    #[must_use]
    pub const fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Fault injection for tests: after the broker confirmed a batch, fail before deleting the
    /// rows — exactly what a crash between publish and mark does.
    #[doc(hidden)]
    #[must_use]
    pub const fn crash_after_publish(mut self, on: bool) -> Self {
        self.crash_after_publish = on;
        self
    }

    /// Claims up to one batch of committed rows, publishes them (confirmed), deletes them and
    /// commits. Returns how many were published. Rows that can never be published (unknown
    /// exchange, unroutable, undecodable) are marked failed with the error and skipped from
    /// then on; connection errors leave every row for the next round.
    pub async fn run_once(&self) -> Result<usize, QueueError> {
        let mut tx = self.pool.begin().await.map_err(|e| db(&e))?;
        let rows = sqlx::query(
            "select seq, exchange, routing_key, envelope from arq_outbox where failed_at is null order by seq limit $1 for update skip locked",
        )
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| db(&e))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut batch = Vec::with_capacity(rows.len());
        let mut failed: Vec<(i64, String)> = Vec::new();
        for row in &rows {
            let seq: i64 = row.try_get(0).map_err(|e| db(&e))?;
            let exchange: String = row.try_get(1).map_err(|e| db(&e))?;
            let routing_key: String = row.try_get(2).map_err(|e| db(&e))?;
            let body: Vec<u8> = row.try_get(3).map_err(|e| db(&e))?;
            match Envelope::decode(&body) {
                Ok(envelope) => {
                    seqs.push(seq);
                    batch.push(Outgoing {
                        exchange: exchange.into(),
                        routing_key: routing_key.into(),
                        envelope,
                    });
                }
                Err(e) => failed.push((seq, failure_text(&e))),
            }
        }
        let mut published = Vec::with_capacity(seqs.len());
        match self.queue.publish_batch(batch.clone()).await {
            Ok(()) => published = seqs,
            Err(QueueError::Connection { .. } | QueueError::Closed) => {
                // Transient: leave everything (the rollback releases the locks).
                return Err(QueueError::Connection {
                    backend: self.queue.backend().name(),
                    reason: "publishing the outbox batch failed; the rows stay for the next round"
                        .to_owned(),
                });
            }
            Err(_) => {
                // Something in the batch can never be published: find it row by row so one
                // poison row does not block the outbox.
                for (seq, o) in seqs.into_iter().zip(batch) {
                    match self.queue.publish_batch(vec![o]).await {
                        Ok(()) => published.push(seq),
                        Err(e @ (QueueError::Connection { .. } | QueueError::Closed)) => {
                            return Err(e);
                        }
                        Err(e) => failed.push((seq, failure_text(&e))),
                    }
                }
            }
        }
        if self.crash_after_publish {
            // Dropping the transaction rolls back: the rows stay, as after a crash.
            drop(tx);
            return Err(QueueError::Closed);
        }
        sqlx::query("delete from arq_outbox where seq = any($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await
            .map_err(|e| db(&e))?;
        for (seq, error) in &failed {
            tracing::warn!(seq, error = %error, "outbox row cannot be published; marking it failed");
            sqlx::query("update arq_outbox set failed_at = now(), last_error = $2 where seq = $1")
                .bind(seq)
                .bind(error)
                .execute(&mut *tx)
                .await
                .map_err(|e| db(&e))?;
        }
        tx.commit().await.map_err(|e| db(&e))?;
        Ok(published.len())
    }

    /// Relays until `shutdown` completes: full batches back to back, then a poll interval of
    /// rest when the outbox is empty; errors are logged and retried with backoff.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<(), QueueError> {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            if let Some(every) = self.unroutable_retry
                && last_sweep.elapsed() >= every
            {
                last_sweep = tokio::time::Instant::now();
                match self.requeue_unroutable(every).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "outbox: unroutable rows put back in line"),
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox: re-queuing unroutable rows failed");
                    }
                }
            }
            let wait = match self.run_once().await {
                Ok(n) if n as i64 >= self.batch => Duration::ZERO,
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.poll_interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay round failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    backoff
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Relays the outbox of `pool` to RabbitMQ at `url` until `shutdown` completes: connects and
/// declares `topology`, retrying while the broker is unreachable
/// ([`connect_rabbitmq_retrying`](crate::connect_rabbitmq_retrying)), then runs a [`Relay`]
/// polling every `poll_interval` when idle, with `metrics` when given. A broker outage never
/// ends it (the outbox is the buffer); an invalid topology or a failing database does.
///
/// The whole relay a service runs beside its API, e.g. as an `arq_core::server::BackgroundTask`:
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), arq_queue::QueueError> {
/// use std::time::Duration;
/// use arq_queue::{QueueConfig, Topology, outbox};
/// let topology = Topology::new(["platform"])
///     .queue_config(QueueConfig::new("orders.events").bind("platform", "order.#"));
/// outbox::run_rabbitmq_relay(
///     pool,
///     "amqp://127.0.0.1:5672/%2f",
///     topology,
///     None,
///     Duration::from_millis(200),
///     std::future::pending(),
/// )
/// .await
/// # }
/// ```
#[cfg(feature = "rabbitmq")]
pub async fn run_rabbitmq_relay(
    pool: PgPool,
    url: &str,
    topology: crate::Topology,
    metrics: Option<crate::QueueMetrics>,
    poll_interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), QueueError> {
    tokio::pin!(shutdown);
    let exchanges = topology.exchanges.join(", ");
    let Some(queue) = crate::connect_rabbitmq_retrying(url, topology, &mut shutdown).await? else {
        return Ok(());
    };
    let queue = match metrics {
        Some(m) => queue.with_metrics(m),
        None => queue,
    };
    tracing::info!(exchanges = %exchanges, "outbox relay connected to RabbitMQ");
    Relay::new(pool, queue)
        .poll_interval(poll_interval)
        .run(shutdown)
        .await
}

/// Puts rows that could not be published back in line for the relay: `only` these message ids,
/// or every failed row with `None`. Returns how many were re-queued.
///
/// An unroutable event is usually a deployment-order problem (the consuming service has not
/// declared its queue yet) rather than a bad event: once the cause is fixed, this publishes
/// what was held back, in its original order. A row that fails again is marked failed again.
pub async fn retry_failed(
    conn: &mut PgConnection,
    only: Option<&[MessageId]>,
) -> Result<u64, QueueError> {
    let done = match only {
        None => sqlx::query(
            "update arq_outbox set failed_at = null, last_error = null where failed_at is not null",
        )
        .execute(conn)
        .await,
        Some(ids) => {
            let ids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
            sqlx::query(
                "update arq_outbox set failed_at = null, last_error = null \
                 where failed_at is not null and id = any($1)",
            )
            .bind(ids)
            .execute(conn)
            .await
        }
    };
    Ok(done.map_err(|e| db(&e))?.rows_affected())
}

/// The outbox rows that could not be published, with their errors, oldest first.
pub async fn failed_rows(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(MessageId, String)>, QueueError> {
    let rows = sqlx::query(
        "select id, coalesce(last_error, '') from arq_outbox where failed_at is not null order by seq limit $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(|e| db(&e))?;
    rows.iter()
        .map(|r| {
            let id: Uuid = r.try_get(0).map_err(|e| db(&e))?;
            let err: String = r.try_get(1).map_err(|e| db(&e))?;
            Ok((MessageId::from_uuid(id), err))
        })
        .collect()
}
