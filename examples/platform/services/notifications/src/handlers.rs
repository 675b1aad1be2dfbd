//! One message type and one handler per queue. They are examples: replace the fields and the
//! work with your own, keeping the two kinds of failure apart —
//!
//! - [`HandlerError::permanent`]: the message can never succeed (invalid payload, no tenant);
//!   it goes to the dead-letter queue at once, with the error recorded;
//! - any other error (`?` on an I/O or HTTP error, [`HandlerError::retry`]): the attempt is
//!   retried after the queue's `retry_delay`, up to `max_attempts` deliveries, then
//!   dead-lettered with every failure.
//!
//! Delivery is at least once: a handler may see a message again (same [`Job::id`]) after a
//! crash or a lost acknowledgement, so make its effects idempotent.

use arq_queue::{HandlerError, Job, Message};
use serde::{Deserialize, Serialize};

/// A message on `email.send`, published with routing key `email.send` to the platform's
/// exchange (e.g. through arq-queue's outbox, in the transaction of the write that causes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSend {
    /// What to act on: 1 to 100 characters, not blank.
    pub name: String,
}

impl Message for EmailSend {
    const TYPE: &'static str = "email.send";
}

impl EmailSend {
    /// Why the message can never be handled, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        let len = self.name.chars().count();
        if self.name.trim().is_empty() || len > 100 {
            return Err(format!(
                "name must be 1 to 100 characters and not blank (got {len})"
            ));
        }
        Ok(())
    }
}

/// Handles one `email.send` message for its tenant.
pub async fn email_send(job: Job<EmailSend>) -> Result<(), HandlerError> {
    let tenant = job.tenant.ok_or_else(|| {
        HandlerError::permanent("the message has no tenant; publish it with Envelope::with_tenant")
    })?;
    job.payload.validate().map_err(HandlerError::permanent)?;
    // The work goes here. Errors from `?` are retried; return HandlerError::permanent for
    // those that no retry can fix.
    tracing::info!(%tenant, id = %job.id, attempt = job.attempt, name = %job.payload.name, "handled");
    Ok(())
}

/// A message on `notification.push`, published with routing key `notification.push` to the platform's
/// exchange (e.g. through arq-queue's outbox, in the transaction of the write that causes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationPush {
    /// What to act on: 1 to 100 characters, not blank.
    pub name: String,
}

impl Message for NotificationPush {
    const TYPE: &'static str = "notification.push";
}

impl NotificationPush {
    /// Why the message can never be handled, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        let len = self.name.chars().count();
        if self.name.trim().is_empty() || len > 100 {
            return Err(format!(
                "name must be 1 to 100 characters and not blank (got {len})"
            ));
        }
        Ok(())
    }
}

/// Handles one `notification.push` message for its tenant.
pub async fn notification_push(job: Job<NotificationPush>) -> Result<(), HandlerError> {
    let tenant = job.tenant.ok_or_else(|| {
        HandlerError::permanent("the message has no tenant; publish it with Envelope::with_tenant")
    })?;
    job.payload.validate().map_err(HandlerError::permanent)?;
    // The work goes here. Errors from `?` are retried; return HandlerError::permanent for
    // those that no retry can fix.
    tracing::info!(%tenant, id = %job.id, attempt = job.attempt, name = %job.payload.name, "handled");
    Ok(())
}
