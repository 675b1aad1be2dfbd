//! The events the service publishes, written to arq-queue's transactional outbox in the
//! transaction of the change that causes them: they are published (by [`crate::relay`]) if and
//! only if that change commits.
//!
//! | routing key | when | payload |
//! |---|---|---|
//! | `task.created` | a task is created | [`TaskEvent`] (`changed` empty) |
//! | `task.updated` | a task's fields or dependencies change | [`TaskEvent`] |
//! | `task.completed` | a task moves to `done` (after its `task.updated`) | [`TaskEvent`] |
//! | `email.send` | a task is created, or reassigned, with an `assignee_email` | [`SendEmail`] |
//!
//! Every envelope carries the tenant and, inside a traced request, the request's trace.

use arq_auth::Principal;
use arq_core::Problem;
use arq_queue::{Envelope, Message, Payload, outbox};
use arq_tenancy::TenantTx;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::tasks::Task;

/// `task.created`, `task.updated` and `task.completed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task after the change.
    pub task: Task,
    /// The fields that changed (`depends_on` for dependency changes); empty for `task.created`.
    pub changed: Vec<String>,
}

/// `email.send`: what the notifications worker mails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmail {
    /// The recipient.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// The task it is about.
    pub task_id: Uuid,
}

impl Message for SendEmail {
    const TYPE: &'static str = "email.send";
}

/// Writes one event to the outbox inside `tx`, routed by its type.
async fn enqueue(state: &AppState, tx: &mut TenantTx, envelope: Envelope) -> Result<(), Problem> {
    let mut envelope = envelope.with_tenant(tx.tenant());
    if let Some(trace) = arq_core::telemetry::current_trace() {
        envelope = envelope.with_trace(trace);
    }
    let key = envelope.message_type.clone();
    outbox::enqueue(tx, &state.exchange, &key, &envelope)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(())
}

async fn task_event(
    state: &AppState,
    tx: &mut TenantTx,
    kind: &'static str,
    task: &Task,
    changed: &[&str],
) -> Result<(), Problem> {
    let event = TaskEvent {
        task: task.clone(),
        changed: changed.iter().map(|c| (*c).to_owned()).collect(),
    };
    enqueue(
        state,
        tx,
        Envelope::with_payload(kind, Payload::native(event)),
    )
    .await
}

/// `task.created`.
pub async fn task_created(state: &AppState, tx: &mut TenantTx, task: &Task) -> Result<(), Problem> {
    task_event(state, tx, "task.created", task, &[]).await
}

/// `task.updated`, naming the changed fields.
pub async fn task_updated(
    state: &AppState,
    tx: &mut TenantTx,
    task: &Task,
    changed: &[&str],
) -> Result<(), Problem> {
    task_event(state, tx, "task.updated", task, changed).await
}

/// `task.completed`.
pub async fn task_completed(
    state: &AppState,
    tx: &mut TenantTx,
    task: &Task,
) -> Result<(), Problem> {
    task_event(state, tx, "task.completed", task, &["status"]).await
}

/// `email.send` to the task's assignee (nothing when it has no address).
pub async fn email_assignee(
    state: &AppState,
    tx: &mut TenantTx,
    task: &Task,
    by: &Principal,
) -> Result<(), Problem> {
    let Some(to) = task.assignee_email.clone() else {
        return Ok(());
    };
    let mut body = format!(
        "{} assigned you the task \"{}\" ({}).\n",
        by.subject(),
        task.title,
        task.id
    );
    if let Some(due) = task.due_at {
        body.push_str(&format!(
            "It is due {}.\n",
            due.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ));
    }
    if let Some(start) = task.scheduled_for {
        body.push_str(&format!(
            "It can start from {}.\n",
            start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ));
    }
    if !task.description.is_empty() {
        body.push('\n');
        body.push_str(&task.description);
        body.push('\n');
    }
    let email = SendEmail {
        to,
        subject: format!("Task assigned to you: {}", task.title),
        body,
        task_id: task.id,
    };
    enqueue(state, tx, Envelope::new(email)).await
}
