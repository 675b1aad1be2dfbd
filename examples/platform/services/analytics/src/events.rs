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
//! `workspace.created` without a name, a payload that is not JSON) goes to the dead-letter queue
//! at once with the reason ([`arq_queue::HandlerError::permanent`]); one that fails for a passing
//! reason (the database, or counting outlasting the queue's handler timeout) is retried through
//! the wait queue after `retry_delay` and dead-lettered after `max_attempts`.
//!
//! The consumer is an arq-queue [`Worker`](arq_queue::Worker) ([`crate::queue::run_events`])
//! with one handler for every bound type: a [`Job`] of [`AnyEvent`] carries its envelope's type.
//! It handles up to its prefetch at once: each event is its own short transaction, and two
//! events of one tenant and day wait for each other on their counter row only.

use std::sync::Arc;

use arq_core::TenantId;
use arq_queue::{Envelope, Job, Message, MessageId};
use arq_tenancy::{TenantPool, TxError};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
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
}

impl From<sqlx::Error> for EventError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(TxError::Database(e))
    }
}

/// The events queue's message: any JSON payload, whatever the type (the queue is bound to
/// several); [`Job::message_type`] tells the types apart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AnyEvent(pub Value);

impl Message for AnyEvent {
    // Only consumed, never published by this type: what is counted is the envelope's type.
    const TYPE: &'static str = "analytics.any-event";
}

/// What [`record`] reads of an event: its envelope's id, type, tenant and created-at, and its
/// payload (only `workspace.created`'s is looked into).
#[derive(Debug, Clone)]
pub struct Event {
    /// The message id, stable across redeliveries.
    pub id: MessageId,
    /// The event type (the routing key it was published with).
    pub message_type: Arc<str>,
    /// The workspace the event belongs to.
    pub tenant: Option<TenantId>,
    /// When it was first published, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// The payload, or `None` when it is not JSON.
    pub payload: Option<Value>,
}

impl From<&Envelope> for Event {
    fn from(envelope: &Envelope) -> Self {
        Self {
            id: envelope.id,
            message_type: envelope.message_type.clone(),
            tenant: envelope.tenant,
            created_at_ms: envelope.created_at_ms,
            payload: envelope.payload.decode().ok(),
        }
    }
}

impl From<Job<AnyEvent>> for Event {
    fn from(job: Job<AnyEvent>) -> Self {
        Self {
            id: job.id,
            message_type: job.message_type,
            tenant: job.tenant,
            created_at_ms: job.created_at_ms,
            payload: Some(job.payload.0),
        }
    }
}

/// The UTC day of a created-at in ms since the Unix epoch.
pub fn day_of(created_at_ms: u64) -> Option<NaiveDate> {
    let ms = i64::try_from(created_at_ms).ok()?;
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.date_naive())
}

/// `workspace.created`'s name: `name`, or `workspace.name`, trimmed.
fn workspace_name(event: &Event) -> Result<String, EventError> {
    let reject = |why: &str| {
        EventError::Rejected(format!(
            "workspace.created {} {why}: analytics records the tenant's name from the payload's \
             \"name\" (or \"workspace\": {{\"name\"}}), 1 to {MAX_TENANT_NAME_CHARS} characters",
            event.id
        ))
    };
    let payload = event
        .payload
        .as_ref()
        .ok_or_else(|| reject("has a payload that is not JSON"))?;
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
pub async fn record(tenants: &TenantPool, event: impl Into<Event>) -> Result<Recorded, EventError> {
    let event: Event = event.into();
    let kind = event.message_type.to_string();
    let Some(tenant) = event.tenant else {
        return Err(EventError::Rejected(format!(
            "{kind} {} has no tenant: analytics counts per workspace, so events must carry the \
             workspace id as the envelope's tenant (Envelope::with_tenant)",
            event.id
        )));
    };
    if kind.is_empty()
        || kind.chars().count() > MAX_EVENT_TYPE_CHARS
        || kind.chars().any(char::is_control)
    {
        return Err(EventError::Rejected(format!(
            "event {} has a type that is empty, has control characters or is longer than \
             {MAX_EVENT_TYPE_CHARS} characters",
            event.id
        )));
    }
    let Some(day) = day_of(event.created_at_ms) else {
        return Err(EventError::Rejected(format!(
            "{kind} {} has a created-at ({} ms) that is not a date",
            event.id, event.created_at_ms
        )));
    };
    let workspace = if kind == "workspace.created" {
        let created_at = DateTime::<Utc>::from_timestamp_millis(
            i64::try_from(event.created_at_ms).unwrap_or(i64::MAX),
        );
        Some((workspace_name(&event)?, created_at))
    } else {
        None
    };
    let id = *event.id.as_uuid();
    tenants
        .run(tenant, |tx| {
            Box::pin(async move {
                let first = sqlx::query(
                    "INSERT INTO processed_events (tenant_id, message_id, event_type) \
                     VALUES (arq.current_tenant_id(), $1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(&kind)
                .execute(&mut *tx)
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
                .execute(&mut *tx)
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
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(Recorded::Counted)
            })
        })
        .await
}
