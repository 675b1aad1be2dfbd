//! The events the service publishes, written to arq-queue's transactional outbox in the
//! transaction of the change that causes them: they are published (by [`crate::relay`]) if and
//! only if that change commits.
//!
//! | routing key | when | payload |
//! |---|---|---|
//! | `project.created` | a project is created | [`ProjectEvent`] (`changed` empty) |
//! | `project.updated` | a project's name, description, parent or metadata change | [`ProjectEvent`] |
//! | `project.deleted` | a project is deleted (one per project of a recursive delete, deepest first) | [`ProjectDeleted`] |
//!
//! Every envelope carries the tenant (the workspace id) and, inside a traced request, the
//! request's trace. Payloads carry ids and project fields, no personal data beyond the creator's
//! subject.

use arq_core::Problem;
use arq_queue::{Envelope, Message, outbox};
use arq_tenancy::TenantTx;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::projects::Project;

/// `project.created` and `project.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectEvent {
    /// The project after the change.
    pub project: Project,
    /// The fields that changed; empty for `project.created`.
    pub changed: Vec<String>,
}

/// `project.deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectDeleted {
    /// The project that no longer exists.
    pub project_id: Uuid,
}

impl Message for ProjectDeleted {
    const TYPE: &'static str = "project.deleted";
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

async fn project_event(
    state: &AppState,
    tx: &mut TenantTx,
    kind: &'static str,
    project: &Project,
    changed: &[&str],
) -> Result<(), Problem> {
    let event = ProjectEvent {
        project: project.clone(),
        changed: changed.iter().map(|c| (*c).to_owned()).collect(),
    };
    enqueue(
        state,
        tx,
        Envelope::with_payload(kind, arq_queue::Payload::native(event)),
    )
    .await
}

/// `project.created`.
pub async fn project_created(
    state: &AppState,
    tx: &mut TenantTx,
    project: &Project,
) -> Result<(), Problem> {
    project_event(state, tx, "project.created", project, &[]).await
}

/// `project.updated`, naming the changed fields.
pub async fn project_updated(
    state: &AppState,
    tx: &mut TenantTx,
    project: &Project,
    changed: &[&str],
) -> Result<(), Problem> {
    project_event(state, tx, "project.updated", project, changed).await
}

/// `project.deleted`.
pub async fn project_deleted(
    state: &AppState,
    tx: &mut TenantTx,
    project_id: Uuid,
) -> Result<(), Problem> {
    enqueue(state, tx, Envelope::new(ProjectDeleted { project_id })).await
}
