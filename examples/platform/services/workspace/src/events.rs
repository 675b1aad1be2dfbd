//! The events the service publishes, written to arq-queue's transactional outbox in the
//! transaction of the change that causes them: they are published (by [`crate::relay`]) if and
//! only if that change commits. Routing key = event type, on the `[queue] exchange` (`platform`);
//! every envelope's tenant is the workspace.
//!
//! | routing key | when | payload |
//! |---|---|---|
//! | `workspace.created` | a workspace is created | `{workspace_id, name, created_by}` |
//! | `workspace.updated` | its name changes | `{workspace_id, name, changed}` |
//! | `workspace.deleted` | it is deleted (with its members and invitations) | `{workspace_id}` |
//! | `membership.added` | its creator joins as admin; an invitation is accepted | `{workspace_id, user_id, role}` |
//! | `membership.changed` | a member's role changes | `{workspace_id, user_id, role, previous_role}` |
//! | `membership.removed` | a member is removed | `{workspace_id, user_id}` |
//! | `invitation.created` | someone is invited (again) | `{workspace_id, invitation_id, role}` (no address) |
//! | `email.send` | the same invitation | [`SendEmail`]: the notifications worker mails it |
//!
//! The auth service consumes `membership.*` and `workspace.deleted` (queue `auth.memberships`)
//! and keeps the roles it signs into tokens in step.

use arq_core::Problem;
use arq_queue::{Envelope, Payload, outbox};
use arq_tenancy::TenantTx;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::AppState;

/// `email.send`: what the notifications worker mails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmail {
    /// The recipient.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// The invitation it delivers.
    pub invitation_id: Uuid,
}

/// Writes one event to the outbox inside `tx`, routed by its type.
async fn enqueue(
    state: &AppState,
    tx: &mut TenantTx,
    kind: &'static str,
    payload: serde_json::Value,
) -> Result<(), Problem> {
    let mut envelope =
        Envelope::with_payload(kind, Payload::native(payload)).with_tenant(tx.tenant());
    if let Some(trace) = arq_core::telemetry::current_trace() {
        envelope = envelope.with_trace(trace);
    }
    outbox::enqueue(tx, &state.exchange, kind, &envelope)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(())
}

/// `workspace.created`.
pub async fn workspace_created(
    state: &AppState,
    tx: &mut TenantTx,
    workspace_id: Uuid,
    name: &str,
    created_by: Uuid,
) -> Result<(), Problem> {
    let payload = json!({ "workspace_id": workspace_id, "name": name, "created_by": created_by });
    enqueue(state, tx, "workspace.created", payload).await
}

/// `workspace.updated`, naming the changed fields.
pub async fn workspace_updated(
    state: &AppState,
    tx: &mut TenantTx,
    workspace_id: Uuid,
    name: &str,
) -> Result<(), Problem> {
    let payload = json!({ "workspace_id": workspace_id, "name": name, "changed": ["name"] });
    enqueue(state, tx, "workspace.updated", payload).await
}

/// `workspace.deleted`.
pub async fn workspace_deleted(
    state: &AppState,
    tx: &mut TenantTx,
    workspace_id: Uuid,
) -> Result<(), Problem> {
    let payload = json!({ "workspace_id": workspace_id });
    enqueue(state, tx, "workspace.deleted", payload).await
}

/// `membership.added`.
pub async fn membership_added(
    state: &AppState,
    tx: &mut TenantTx,
    workspace_id: Uuid,
    user_id: Uuid,
    role: &str,
) -> Result<(), Problem> {
    let payload = json!({ "workspace_id": workspace_id, "user_id": user_id, "role": role });
    enqueue(state, tx, "membership.added", payload).await
}

/// `membership.changed`.
pub async fn membership_changed(
    state: &AppState,
    tx: &mut TenantTx,
    workspace_id: Uuid,
    user_id: Uuid,
    role: &str,
    previous_role: &str,
) -> Result<(), Problem> {
    let payload = json!({
        "workspace_id": workspace_id,
        "user_id": user_id,
        "role": role,
        "previous_role": previous_role,
    });
    enqueue(state, tx, "membership.changed", payload).await
}

/// `membership.removed`.
pub async fn membership_removed(
    state: &AppState,
    tx: &mut TenantTx,
    workspace_id: Uuid,
    user_id: Uuid,
) -> Result<(), Problem> {
    let payload = json!({ "workspace_id": workspace_id, "user_id": user_id });
    enqueue(state, tx, "membership.removed", payload).await
}

/// `invitation.created` (without the address: only `email.send` carries it, to the mailer).
pub async fn invitation_created(
    state: &AppState,
    tx: &mut TenantTx,
    workspace_id: Uuid,
    invitation_id: Uuid,
    role: &str,
) -> Result<(), Problem> {
    let payload = json!({
        "workspace_id": workspace_id,
        "invitation_id": invitation_id,
        "role": role,
    });
    enqueue(state, tx, "invitation.created", payload).await
}

/// `email.send` with the invitation's code.
pub async fn send_email(
    state: &AppState,
    tx: &mut TenantTx,
    email: SendEmail,
) -> Result<(), Problem> {
    let payload = serde_json::to_value(email).map_err(|e| Problem::internal(&e))?;
    enqueue(state, tx, "email.send", payload).await
}
