//! The events the service publishes, written to arq-queue's transactional outbox in the
//! transaction of the change that causes them: they are published (by [`crate::relay`]) if and
//! only if that change commits.
//!
//! | routing key | when | payload |
//! |---|---|---|
//! | `user.profile_updated` | a profile is created, or a `PUT` changes it | [`ProfileUpdated`] |
//! | `user.tier_changed` | an admin changes a profile's tier | [`TierChanged`] |
//! | `user.deleted` | a profile is deleted | [`UserDeleted`] |
//!
//! Payloads carry ids and the names of changed fields, never personal data: a consumer that
//! needs the new e-mail address asks this service (whose policy decides). Every envelope
//! carries the tenant (the workspace) and, inside a traced request, the request's trace.

use arq_core::Problem;
use arq_queue::{Envelope, Message, outbox};
use arq_tenancy::TenantTx;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::profiles::Tier;

/// `user.profile_updated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileUpdated {
    /// Whose profile.
    pub user_id: Uuid,
    /// Whether this change created it.
    pub created: bool,
    /// The fields that changed (`display_name`, `email`, `phone`, `preferences`); every field
    /// that was set when `created`.
    pub changed: Vec<String>,
}

impl Message for ProfileUpdated {
    const TYPE: &'static str = "user.profile_updated";
}

/// `user.tier_changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChanged {
    /// Whose profile.
    pub user_id: Uuid,
    /// The new tier.
    pub tier: Tier,
    /// The tier before the change.
    pub previous_tier: Tier,
}

impl Message for TierChanged {
    const TYPE: &'static str = "user.tier_changed";
}

/// `user.deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeleted {
    /// Whose profile was deleted.
    pub user_id: Uuid,
}

impl Message for UserDeleted {
    const TYPE: &'static str = "user.deleted";
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

/// `user.profile_updated`.
pub async fn profile_updated(
    state: &AppState,
    tx: &mut TenantTx,
    user_id: Uuid,
    created: bool,
    changed: &[&str],
) -> Result<(), Problem> {
    let event = ProfileUpdated {
        user_id,
        created,
        changed: changed.iter().map(|c| (*c).to_owned()).collect(),
    };
    enqueue(state, tx, Envelope::new(event)).await
}

/// `user.tier_changed`.
pub async fn tier_changed(
    state: &AppState,
    tx: &mut TenantTx,
    user_id: Uuid,
    tier: Tier,
    previous_tier: Tier,
) -> Result<(), Problem> {
    let event = TierChanged {
        user_id,
        tier,
        previous_tier,
    };
    enqueue(state, tx, Envelope::new(event)).await
}

/// `user.deleted`.
pub async fn deleted(state: &AppState, tx: &mut TenantTx, user_id: Uuid) -> Result<(), Problem> {
    enqueue(state, tx, Envelope::new(UserDeleted { user_id })).await
}
