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
//! at once; a database failure is retried after `retry_delay_ms`, up to `max_attempts`.
//!
//! Tokens already issued keep their roles until they expire (at most an hour); a removed
//! member's refresh is refused as soon as the event is applied.
//!
//! The consumer runs beside the HTTP server ([`run`]); it connects with
//! [`connect_rabbitmq_retrying`], so a broker outage delays role changes and never stops the
//! token endpoint.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use arq_auth::Rbac;
use arq_core::config::Secret;
use arq_queue::{
    Backend, Consumer, Delivery, Envelope, Failure, QueueConfig, Topology,
    connect_rabbitmq_retrying,
};
use serde::{Deserialize, Deserializer};
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

    /// The queue (with its wait and dead-letter queues, as arq-queue gives every queue).
    pub fn queue_config(&self) -> QueueConfig {
        let mut queue = QueueConfig::new(self.queue_name())
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

/// Why an event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// It can never apply; it goes to the dead-letter queue.
    #[error("{0}")]
    Permanent(String),
    /// The database failed; it is retried.
    #[error("the role store failed: {0}")]
    Storage(#[from] sqlx::Error),
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

fn decode<T: serde::de::DeserializeOwned + Clone + 'static>(
    envelope: &Envelope,
) -> Result<T, ApplyError> {
    envelope.payload.decode::<T>().map_err(|e| {
        ApplyError::Permanent(format!(
            "the {} payload does not have the expected fields ({e}); see \
             services/auth/src/memberships.rs",
            envelope.message_type
        ))
    })
}

/// The envelope's tenant, when it has one, must be the workspace the payload names.
fn same_tenant(envelope: &Envelope, workspace: Uuid) -> Result<(), ApplyError> {
    match envelope.tenant {
        Some(t) if t.into_uuid() != workspace => Err(ApplyError::Permanent(format!(
            "the envelope's tenant {t} is not the workspace {workspace} of its payload"
        ))),
        _ => Ok(()),
    }
}

/// Applies one event to the role assignments in `pool` (see the module docs); other event
/// types are acknowledged without effect. `rbac` names the roles that may be assigned.
pub async fn apply(pool: &PgPool, rbac: &Rbac, envelope: &Envelope) -> Result<(), ApplyError> {
    match &*envelope.message_type {
        "membership.added" | "membership.changed" => {
            let m: Membership = decode(envelope)?;
            same_tenant(envelope, m.workspace_id)?;
            if rbac.role_permissions(&m.role).is_none() {
                return Err(ApplyError::Permanent(format!(
                    "the role {:?} is not defined in [rbac.roles]; define it or fix the publisher",
                    m.role
                )));
            }
            // Replace, in one transaction: a sign-in never sees the user with no role or two.
            let mut tx = pool.begin().await?;
            sqlx::query(
                "delete from arq_auth_role_assignments \
                  where subject = $1 and bound_tenant_id = $2 and role <> $3",
            )
            .bind(m.user_id.to_string())
            .bind(m.workspace_id)
            .bind(&m.role)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "insert into arq_auth_role_assignments (subject, bound_tenant_id, role) \
                 values ($1, $2, $3) on conflict do nothing",
            )
            .bind(m.user_id.to_string())
            .bind(m.workspace_id)
            .bind(&m.role)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(user_id = %m.user_id, workspace_id = %m.workspace_id, role = %m.role, "role assigned");
        }
        "membership.removed" => {
            let r: Removal = decode(envelope)?;
            same_tenant(envelope, r.workspace_id)?;
            sqlx::query(
                "delete from arq_auth_role_assignments where subject = $1 and bound_tenant_id = $2",
            )
            .bind(r.user_id.to_string())
            .bind(r.workspace_id)
            .execute(pool)
            .await?;
            tracing::info!(user_id = %r.user_id, workspace_id = %r.workspace_id, "roles revoked");
        }
        "workspace.deleted" => {
            let d: Deletion = decode(envelope)?;
            same_tenant(envelope, d.workspace_id)?;
            sqlx::query("delete from arq_auth_role_assignments where bound_tenant_id = $1")
                .bind(d.workspace_id)
                .execute(pool)
                .await?;
            tracing::info!(workspace_id = %d.workspace_id, "every role in the workspace revoked");
        }
        other => tracing::debug!(message_type = other, "not a membership event; ignored"),
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Settles one delivery by the outcome of [`apply`].
async fn settle<D: Delivery>(
    delivery: D,
    config: &QueueConfig,
    outcome: Result<(), ApplyError>,
) -> Result<(), arq_queue::QueueError> {
    let attempt = delivery.envelope().attempt;
    let id = delivery.envelope().id;
    match outcome {
        Ok(()) => delivery.ack().await,
        Err(e) => {
            let failure = Failure {
                attempt,
                at_ms: now_ms(),
                error: e.to_string(),
            };
            let last = matches!(e, ApplyError::Permanent(_)) || attempt >= config.max_attempts;
            if last {
                tracing::error!(message_id = %id, error = %e, attempt, "membership event dead-lettered");
                delivery.dead_letter(failure).await
            } else {
                tracing::warn!(message_id = %id, error = %e, attempt, "membership event failed; retrying");
                delivery.retry(failure, config.retry_delay).await
            }
        }
    }
}

/// Consumes the memberships queue until `shutdown` completes: connects to RabbitMQ (retrying
/// while it is unreachable), declares the queue, then applies each event ([`apply`]) and
/// settles it. The message in hand when `shutdown` completes is finished first.
pub async fn run(
    pool: PgPool,
    rbac: Arc<Rbac>,
    settings: QueueSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let topology = settings.topology()?;
    tokio::pin!(shutdown);
    let Some(queue) =
        connect_rabbitmq_retrying(settings.url.expose(), topology, &mut shutdown).await?
    else {
        return Ok(());
    };
    let config = settings.queue_config();
    let mut consumer = queue.backend().consume(&config).await?;
    tracing::info!(queue = %config.name, "consuming membership events");
    loop {
        let next = tokio::select! {
            () = &mut shutdown => break,
            next = consumer.next() => next,
        };
        match next {
            None => break,
            // The backend reconnects by itself; the next call resumes.
            Some(Err(e)) => tracing::warn!(error = %e, "receiving membership events failed"),
            Some(Ok(delivery)) => {
                let outcome = apply(&pool, &rbac, delivery.envelope()).await;
                if let Err(e) = settle(delivery, &config, outcome).await {
                    // Unsettled, the message is redelivered; applying it again is harmless.
                    tracing::warn!(error = %e, "settling a membership event failed");
                }
            }
        }
    }
    consumer.close().await;
    Ok(())
}
