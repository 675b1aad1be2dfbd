//! The domain events consumer: every platform event routed to `analytics.events` (bound to
//! [`BINDINGS`] on the platform exchange) adds one to `daily_event_counts` for its tenant, its
//! day (the envelope's created-at, in UTC) and its type.
//!
//! # Exactly once, over at-least-once delivery
//! The message id goes into `processed_events` in the same tenant transaction as the count:
//! a redelivered message (same id) finds its id there and changes nothing, and two deliveries
//! racing each other serialize on that row's key, so the second finds the first's id once it
//! commits.
//!
//! # What the consumer needs to know about payloads
//! Nothing, except `workspace.created`'s `name` (top level, or inside a `workspace` object),
//! which it records in `tenants`. Counting needs only the envelope: its type, tenant, id and
//! created-at.
//!
//! # Failures
//! An event that no retry can fix (no tenant, a type that is not a short name, a
//! `workspace.created` without a name) goes to the dead-letter queue at once with the reason;
//! one that fails for a passing reason (the database) is retried through the wait queue after
//! `retry_delay` and dead-lettered after `max_attempts`.
//!
//! Why not arq-queue's [`Worker`](arq_queue::Worker): its typed [`Job`](arq_queue::Job) carries
//! no message type, and counting by type is this consumer's whole job. [`consume`] is the small
//! loop that settles each delivery the way the worker would (ack, retry after a delay, dead
//! letter with the failure), one delivery at a time: counting is one short transaction, and
//! events of one tenant and day would contend for the same counter row anyway.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arq_queue::{Backend, Consumer, Delivery, Envelope, Failure, Queue, QueueConfig, QueueError};
use arq_tenancy::{TenantPool, TxError};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

/// The routing keys the events queue is bound to on the platform exchange.
pub const BINDINGS: [&str; 6] = [
    "task.*",
    "project.*",
    "workspace.*",
    "membership.*",
    "user.*",
    "invitation.*",
];

/// Longest event type, in characters (the table checks it too).
pub const MAX_EVENT_TYPE_CHARS: usize = 100;

/// Longest workspace name recorded, in characters.
pub const MAX_TENANT_NAME_CHARS: usize = 200;

/// What [`record`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted (and, for `workspace.created`, the tenant recorded).
    Counted,
    /// Its message id was counted before: nothing changed.
    Duplicate,
}

/// Why [`record`] did not count an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// No retry can fix it: dead-letter it now, with this reason.
    #[error("{0}")]
    Rejected(String),
    /// The database failed; a later attempt may succeed.
    #[error("counting the event failed: {0}")]
    Database(#[from] TxError),
    /// Counting took longer than the queue's handler timeout; a later attempt may succeed.
    #[error("counting the event took longer than {0:?}")]
    TimedOut(Duration),
}

impl From<sqlx::Error> for EventError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(TxError::Database(e))
    }
}

/// The UTC day of an envelope's created-at.
pub fn day_of(envelope: &Envelope) -> Option<NaiveDate> {
    let ms = i64::try_from(envelope.created_at_ms).ok()?;
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.date_naive())
}

/// `workspace.created`'s name: `name`, or `workspace.name`, trimmed.
fn workspace_name(envelope: &Envelope) -> Result<String, EventError> {
    let reject = |why: &str| {
        EventError::Rejected(format!(
            "workspace.created {} {why}: analytics records the tenant's name from the payload's \
             \"name\" (or \"workspace\": {{\"name\"}}), 1 to {MAX_TENANT_NAME_CHARS} characters",
            envelope.id
        ))
    };
    let payload: Value = envelope
        .payload
        .decode()
        .map_err(|_| reject("has a payload that is not JSON"))?;
    let name = payload
        .get("name")
        .or_else(|| payload.get("workspace").and_then(|w| w.get("name")))
        .and_then(Value::as_str)
        .map(str::trim)
        .ok_or_else(|| reject("has no name"))?;
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_TENANT_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(reject(
            "has a name that is empty, too long or has control characters",
        ));
    }
    Ok(name.to_owned())
}

/// Counts one event in a transaction of its tenant, recording its message id there too
/// (see the module docs).
pub async fn record(tenants: &TenantPool, envelope: &Envelope) -> Result<Recorded, EventError> {
    let kind = envelope.message_type.to_string();
    let Some(tenant) = envelope.tenant else {
        return Err(EventError::Rejected(format!(
            "{kind} {} has no tenant: analytics counts per workspace, so events must carry the \
             workspace id as the envelope's tenant (Envelope::with_tenant)",
            envelope.id
        )));
    };
    if kind.is_empty()
        || kind.chars().count() > MAX_EVENT_TYPE_CHARS
        || kind.chars().any(char::is_control)
    {
        return Err(EventError::Rejected(format!(
            "event {} has a type that is empty, has control characters or is longer than \
             {MAX_EVENT_TYPE_CHARS} characters",
            envelope.id
        )));
    }
    let Some(day) = day_of(envelope) else {
        return Err(EventError::Rejected(format!(
            "{kind} {} has a created-at ({} ms) that is not a date",
            envelope.id, envelope.created_at_ms
        )));
    };
    let workspace = if kind == "workspace.created" {
        let created_at = DateTime::<Utc>::from_timestamp_millis(
            i64::try_from(envelope.created_at_ms).unwrap_or(i64::MAX),
        );
        Some((workspace_name(envelope)?, created_at))
    } else {
        None
    };
    let id = *envelope.id.as_uuid();
    tenants
        .run(tenant, |tx| {
            Box::pin(async move {
                let first = sqlx::query(
                    "INSERT INTO processed_events (tenant_id, message_id, event_type) \
                     VALUES (arq.current_tenant_id(), $1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(&kind)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 1;
                if !first {
                    return Ok(Recorded::Duplicate);
                }
                sqlx::query(
                    "INSERT INTO daily_event_counts (tenant_id, day, event_type, count) \
                     VALUES (arq.current_tenant_id(), $1, $2, 1) \
                     ON CONFLICT (tenant_id, day, event_type) \
                     DO UPDATE SET count = daily_event_counts.count + 1",
                )
                .bind(day)
                .bind(&kind)
                .execute(&mut **tx)
                .await?;
                if let Some((name, created_at)) = workspace {
                    // The first workspace.created of a tenant wins; there should be only one.
                    sqlx::query(
                        "INSERT INTO tenants (tenant_id, name, created_at) \
                         VALUES (arq.current_tenant_id(), $1, $2) \
                         ON CONFLICT (tenant_id) DO NOTHING",
                    )
                    .bind(name)
                    .bind(created_at)
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(Recorded::Counted)
            })
        })
        .await
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Settles one delivery: ack when counted (or a duplicate), dead-letter when rejected, retry
/// after `retry_delay` when the database failed (dead-letter after `max_attempts`).
async fn settle<D: Delivery>(delivery: D, config: &QueueConfig, tenants: &TenantPool) {
    let (id, kind, attempt) = {
        let env = delivery.envelope();
        (env.id, env.message_type.clone(), env.attempt)
    };
    let outcome =
        tokio::time::timeout(config.handler_timeout, record(tenants, delivery.envelope()))
            .await
            .unwrap_or(Err(EventError::TimedOut(config.handler_timeout)));
    let failure = |error: String| Failure {
        attempt,
        at_ms: now_ms(),
        error,
    };
    let settled = match outcome {
        Ok(recorded) => {
            tracing::debug!(%id, %kind, ?recorded, "event counted");
            delivery.ack().await
        }
        Err(EventError::Rejected(reason)) => {
            tracing::warn!(%id, %kind, %reason, "event dead-lettered");
            delivery.dead_letter(failure(reason)).await
        }
        Err(e) if attempt < config.max_attempts => {
            tracing::warn!(%id, %kind, attempt, error = %e, retry_in_ms = u64::try_from(config.retry_delay.as_millis()).unwrap_or(u64::MAX), "event will be retried");
            delivery
                .retry(failure(e.to_string()), config.retry_delay)
                .await
        }
        Err(e) => {
            tracing::error!(%id, %kind, attempt, error = %e, "event dead-lettered after its last attempt");
            delivery.dead_letter(failure(e.to_string())).await
        }
    };
    if let Err(e) = settled {
        // Unsettled, the message comes back; its id makes the second count a no-op.
        tracing::warn!(%id, %kind, error = %e, "settling the event failed; it will be redelivered");
    }
}

/// Consumes `config` (declared in `queue`'s topology) until `shutdown` completes, counting each
/// event ([`record`]) and settling it; the delivery in hand when `shutdown` completes is
/// finished first. Returns how many deliveries were settled, once `shutdown` completed; an
/// error when the consumer could not start or the broker closed it (start it again).
pub async fn consume<B: Backend>(
    queue: &Queue<B>,
    config: &QueueConfig,
    tenants: &TenantPool,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<u64, QueueError> {
    let mut consumer = queue.backend().consume(config).await?;
    tokio::pin!(shutdown);
    let mut settled = 0;
    let mut backoff = Duration::from_millis(50);
    loop {
        let delivery = tokio::select! {
            biased;
            () = &mut shutdown => break,
            next = consumer.next() => match next {
                None => {
                    return Err(QueueError::Connection {
                        backend: queue.backend().name(),
                        reason: format!("the consumer of {} was closed", config.name),
                    });
                }
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::warn!(queue = %config.name, error = %e, "consuming events failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(50);
        settle(delivery, config, tenants).await;
        settled += 1;
    }
    consumer.close().await;
    Ok(settled)
}
