//! The membership consumer: keeps the roles this service signs into tokens in step with the
//! workspace service's memberships.
//!
//! The workspace service publishes, on the `platform` exchange, `membership.added`,
//! `membership.changed`, `membership.removed` and `workspace.deleted` (a workspace id is a
//! tenant id). This consumer reads them from its queue `auth.memberships` (`[queue]`) and
//! updates arq-auth's role assignments (`arq_auth_role_assignments`, what the password grant
//! reads for `tenant=`):
//!
//! | event | payload | effect |
//! |---|---|---|
//! | `membership.added`, `membership.changed` | `{workspace_id, user_id, role}` | the user holds exactly `role` in the workspace (other roles there are dropped) |
//! | `membership.removed` | `{workspace_id, user_id}` | the user holds no role there |
//! | `workspace.deleted` | `{workspace_id}` | nobody holds a role there |
//!
//! Each effect is a state, not a step, so a redelivered message changes nothing (delivery is at
//! least once). A message that can never apply (a payload of the wrong shape, a role `[rbac]`
//! does not define, an envelope whose tenant is not the workspace) goes to the dead-letter queue
//! at once ([`HandlerError::permanent`]); a database failure is retried after `retry_delay_ms`,
//! up to `max_attempts` (both in the queue's [`QueueConfig`]).
//!
//! Tokens already issued keep their roles until they expire (at most an hour); a removed
//! member's refresh is refused as soon as the event is applied.
//!
//! The consumer ([`run`]) is an arq-queue [`Worker`] running beside the HTTP server: one handler
//! for every type the queue is bound to, dispatching on [`Job::message_type`], one event at a
//! time, with arq-queue's metrics (`arq_queue_delivered_total{queue="auth.memberships"}` and the
//! rest). It connects with [`connect_rabbitmq_retrying`], so a broker outage delays role changes
//! and never stops the token endpoint.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arq_auth::Rbac;
use arq_core::TenantId;
use arq_core::config::Secret;
use arq_queue::{
    HandlerError, Job, Message, QueueConfig, QueueMetrics, Topology, Worker,
    connect_rabbitmq_retrying,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// `[queue]`: where the membership events come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// The RabbitMQ URL (`ARQ__QUEUE__URL`); kept secret because it may hold a password.
    #[serde(deserialize_with = "secret")]
    pub url: Secret<String>,
    /// The platform's topic exchange the workspace service publishes to.
    pub exchange: String,
    /// Prepended to the queue's name (keeps environments or tests that share a broker apart).
    #[serde(default)]
    pub prefix: String,
    /// The queue this service consumes.
    #[serde(default = "default_queue")]
    pub memberships_queue: String,
    /// How long a failed message waits before its next attempt, in milliseconds.
    #[serde(default = "default_retry_delay_ms")]
    pub retry_delay_ms: u64,
    /// Attempts before a failing message goes to the dead-letter queue.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_queue() -> String {
    "auth.memberships".to_owned()
}

const fn default_retry_delay_ms() -> u64 {
    5_000
}

const fn default_max_attempts() -> u32 {
    5
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret<String>, D::Error> {
    String::deserialize(d).map(Secret::new)
}

/// The routing keys the queue is bound to.
pub const BINDINGS: [&str; 2] = ["membership.*", "workspace.deleted"];

impl QueueSettings {
    /// The queue's name on the broker.
    pub fn queue_name(&self) -> String {
        format!("{}{}", self.prefix, self.memberships_queue)
    }

    /// The queue (with its wait and dead-letter queues, as arq-queue gives every queue), handled
    /// one event at a time.
    pub fn queue_config(&self) -> QueueConfig {
        let mut queue = QueueConfig::new(self.queue_name())
            // One at a time: events about one member must apply in the order they were
            // published (`added`, then `changed`, then `removed`). Two handlers at once could
            // commit a removal before the addition it follows and leave a role behind.
            .concurrency(1)
            .max_attempts(self.max_attempts)
            .retry_delay(Duration::from_millis(self.retry_delay_ms));
        for key in BINDINGS {
            queue = queue.bind(&self.exchange, key);
        }
        queue
    }

    /// What the consumer declares: the exchange and the queue.
    pub fn topology(&self) -> anyhow::Result<Topology> {
        let topology = Topology::new([self.exchange.clone()]).queue_config(self.queue_config());
        topology
            .validate()
            .context("[queue]: the exchange or the memberships queue name is not valid")?;
        Ok(topology)
    }
}

/// Any event of the memberships queue: its payload as JSON, told apart by
/// [`Job::message_type`] (the queue is bound to several types).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct MembershipEvent(Value);

impl Message for MembershipEvent {
    // Only consumed, never published by this type: what identifies an event is its envelope's
    // type, not this name.
    const TYPE: &'static str = "auth.membership-event";
}

#[derive(Debug, Clone, Deserialize)]
struct Membership {
    workspace_id: Uuid,
    user_id: Uuid,
    role: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Removal {
    workspace_id: Uuid,
    user_id: Uuid,
}

#[derive(Debug, Clone, Deserialize)]
struct Deletion {
    workspace_id: Uuid,
}

fn decode<T: serde::de::DeserializeOwned>(job: &Job<MembershipEvent>) -> Result<T, HandlerError> {
    T::deserialize(&job.payload.0).map_err(|e| {
        HandlerError::permanent(format!(
            "the {} payload does not have the expected fields ({e}); see \
             services/auth/src/memberships.rs",
            job.message_type
        ))
    })
}

/// The envelope's tenant, when it has one, must be the workspace the payload names.
fn same_tenant(tenant: Option<TenantId>, workspace: Uuid) -> Result<(), HandlerError> {
    match tenant {
        Some(t) if t.into_uuid() != workspace => Err(HandlerError::permanent(format!(
            "the envelope's tenant {t} is not the workspace {workspace} of its payload"
        ))),
        _ => Ok(()),
    }
}

/// A database failure: worth retrying.
fn storage(e: sqlx::Error) -> HandlerError {
    HandlerError::retry(format!("the role store failed: {e}"))
}

/// Applies one event to the role assignments in `pool` (see the module docs); other event
/// types are acknowledged without effect. `rbac` names the roles that may be assigned.
async fn apply(pool: &PgPool, rbac: &Rbac, job: &Job<MembershipEvent>) -> Result<(), HandlerError> {
    match &*job.message_type {
        "membership.added" | "membership.changed" => {
            let m: Membership = decode(job)?;
            same_tenant(job.tenant, m.workspace_id)?;
            if rbac.role_permissions(&m.role).is_none() {
                return Err(HandlerError::permanent(format!(
                    "the role {:?} is not defined in [rbac.roles]; define it or fix the publisher",
                    m.role
                )));
            }
            // Replace, in one transaction: a sign-in never sees the user with no role or two.
            let mut tx = pool.begin().await.map_err(storage)?;
            sqlx::query(
                "delete from arq_auth_role_assignments \
                  where subject = $1 and bound_tenant_id = $2 and role <> $3",
            )
            .bind(m.user_id.to_string())
            .bind(m.workspace_id)
            .bind(&m.role)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            sqlx::query(
                "insert into arq_auth_role_assignments (subject, bound_tenant_id, role) \
                 values ($1, $2, $3) on conflict do nothing",
            )
            .bind(m.user_id.to_string())
            .bind(m.workspace_id)
            .bind(&m.role)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            tx.commit().await.map_err(storage)?;
            tracing::info!(user_id = %m.user_id, workspace_id = %m.workspace_id, role = %m.role, "role assigned");
        }
        "membership.removed" => {
            let r: Removal = decode(job)?;
            same_tenant(job.tenant, r.workspace_id)?;
            sqlx::query(
                "delete from arq_auth_role_assignments where subject = $1 and bound_tenant_id = $2",
            )
            .bind(r.user_id.to_string())
            .bind(r.workspace_id)
            .execute(pool)
            .await
            .map_err(storage)?;
            tracing::info!(user_id = %r.user_id, workspace_id = %r.workspace_id, "roles revoked");
        }
        "workspace.deleted" => {
            let d: Deletion = decode(job)?;
            same_tenant(job.tenant, d.workspace_id)?;
            sqlx::query("delete from arq_auth_role_assignments where bound_tenant_id = $1")
                .bind(d.workspace_id)
                .execute(pool)
                .await
                .map_err(storage)?;
            tracing::info!(workspace_id = %d.workspace_id, "every role in the workspace revoked");
        }
        other => tracing::debug!(message_type = other, "not a membership event; ignored"),
    }
    Ok(())
}

/// Consumes the memberships queue until `shutdown` completes: connects to RabbitMQ (retrying
/// while it is unreachable), declares the queue, then runs a [`Worker`] that applies each event
/// and settles it (ack, retry later, or dead-letter), recording into `metrics`. Once `shutdown`
/// completes, the event in hand may finish within `drain`; one still running then is left
/// unacknowledged and redelivered to the next start (applying it again is harmless).
pub async fn run(
    pool: PgPool,
    rbac: Arc<Rbac>,
    settings: QueueSettings,
    metrics: QueueMetrics,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let topology = settings.topology()?;
    tokio::pin!(shutdown);
    let Some(queue) =
        connect_rabbitmq_retrying(settings.url.expose(), topology, &mut shutdown).await?
    else {
        return Ok(());
    };
    let name = settings.queue_name();
    let worker = Worker::new(queue.with_metrics(metrics))
        .handle(&name, move |job: Job<MembershipEvent>| {
            let (pool, rbac) = (pool.clone(), rbac.clone());
            async move { apply(&pool, &rbac, &job).await }
        })?
        .shutdown_deadline(drain);
    tracing::info!(queue = %name, "consuming membership events");
    let report = worker.run(shutdown).await?;
    tracing::info!(
        settled = report.settled,
        abandoned = report.abandoned,
        "membership consumer stopped"
    );
    Ok(())
}
