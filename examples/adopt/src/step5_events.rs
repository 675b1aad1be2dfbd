//! Step 5: arq-queue — `note.created` through the transactional outbox to RabbitMQ, and a worker
//! that consumes it.
//!
//! - [`note_created`] writes the event to `arq_outbox` **inside the request's tenant
//!   transaction**: the note and its event commit together or not at all.
//! - The [`Relay`] (its own pool, `RELAY_DATABASE_URL`) publishes committed rows to the
//!   `[events] exchange` with publisher confirms, then deletes them: every committed note is
//!   announced at least once, with the same message id if a crash makes it publish twice.
//! - The [`Worker`] consumes `[events] queue` and runs [`record_activity`] with the tenant of the
//!   envelope, in that tenant's transaction; the activity row's key is the message id, so a
//!   redelivery records nothing twice. Failures retry after `RETRY_DELAY`, three attempts in
//!   all, then the message waits in `<queue>.dead`.
//! - [`activity`] (`GET /activity`) shows what the worker recorded for the caller's tenant.
//!
//! The worker runs in the service's process here; moving it into a binary of its own needs only
//! [`Events::start`] and [`Events::run`].

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use arq_auth::RequirePermission;
use arq_core::Problem;
use arq_core::metrics::MetricsRegistry;
use arq_queue::outbox::{self, Relay};
use arq_queue::{
    Envelope, HandlerError, Job, Message, Queue, QueueConfig, QueueMetrics, RabbitBackend,
    Topology, Worker,
};
use arq_tenancy::{TenantPool, TenantTx, TxError};
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::step1_router::Note;
use crate::step3_auth::ReadNotes;

/// How long a failed `note.created` waits before its next attempt.
pub const RETRY_DELAY: Duration = Duration::from_secs(30);

/// `[events]`: where `note.created` goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// The topic exchange the relay publishes to.
    pub exchange: String,
    /// The queue the worker consumes, bound to `note.created`.
    pub queue: String,
}

/// The event: a note was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteCreated {
    /// The new note's id.
    pub note_id: Uuid,
    /// Its author.
    pub author: String,
}

impl Message for NoteCreated {
    const TYPE: &'static str = "note.created";
}

/// The exchange, the queue and its binding (declared idempotently at start).
pub fn topology(settings: &EventSettings) -> Topology {
    Topology::new([settings.exchange.as_str()]).queue_config(
        QueueConfig::new(&settings.queue)
            .bind(&settings.exchange, NoteCreated::TYPE)
            .retry_delay(RETRY_DELAY),
    )
}

/// Writes `note.created` for `note` to the outbox in `tx`, with the transaction's tenant and the
/// request's trace context, so the consumer runs in the same tenant and the same trace.
pub async fn note_created(tx: &mut TenantTx, exchange: &str, note: &Note) -> Result<(), Problem> {
    let mut event = Envelope::new(NoteCreated {
        note_id: note.id,
        author: note.author.clone(),
    })
    .with_tenant(tx.tenant());
    if let Some(trace) = arq_core::telemetry::current_trace() {
        event = event.with_trace(trace);
    }
    outbox::enqueue(tx, exchange, NoteCreated::TYPE, &event)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(())
}

/// The consumer: records the note's creation in its tenant's activity, once per message id.
pub async fn record_activity(
    tenants: TenantPool,
    job: Job<NoteCreated>,
) -> Result<(), HandlerError> {
    // Without a tenant no transaction can hold the row: retrying cannot help.
    let tenant = job
        .tenant
        .ok_or_else(|| HandlerError::permanent("note.created carries no tenant"))?;
    let message_id = *job.id.as_uuid();
    let note_id = job.payload.note_id;
    tenants
        .run(tenant, |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO note_activity (tenant_id, message_id, note_id, kind) \
                     VALUES (arq.current_tenant_id(), $1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(message_id)
                .bind(note_id)
                .bind(NoteCreated::TYPE)
                .execute(&mut **tx)
                .await?;
                Ok::<_, TxError>(())
            })
        })
        .await?;
    Ok(())
}

/// One entry of `GET /activity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// The id of the message that recorded it.
    pub message_id: Uuid,
    /// The note it is about.
    pub note_id: Uuid,
    /// What happened (`note.created`).
    pub kind: String,
}

/// `GET /activity`: what the consumer recorded for the caller's tenant, newest first.
pub async fn activity(
    _: RequirePermission<ReadNotes>,
    mut tx: TenantTx,
) -> Result<Json<Vec<Activity>>, Problem> {
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT message_id, note_id, kind FROM note_activity ORDER BY message_id DESC LIMIT 50",
    )
    .fetch_all(&mut tx)
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(Json(
        rows.into_iter()
            .map(|(message_id, note_id, kind)| Activity {
                message_id,
                note_id,
                kind,
            })
            .collect(),
    ))
}

/// The relay and the worker, connected and with their topology declared.
#[derive(Debug)]
pub struct Events {
    queue: Queue<RabbitBackend>,
    relay: Relay<RabbitBackend>,
    worker: Worker<RabbitBackend>,
}

impl Events {
    /// Connects to RabbitMQ at `amqp_url`, declares [`topology`], and prepares the relay (reading
    /// the outbox through `relay_pool`) and the worker (writing through `tenants`). Queue
    /// metrics go to `registry`.
    pub async fn start(
        settings: &EventSettings,
        amqp_url: &str,
        relay_pool: PgPool,
        tenants: TenantPool,
        registry: &MetricsRegistry,
    ) -> anyhow::Result<Self> {
        // The URL holds a password: name the variable, not the value.
        let backend = RabbitBackend::connect(amqp_url)
            .await
            .context("cannot connect to RabbitMQ at AMQP_URL")?;
        let queue = Queue::new(backend, topology(settings))
            .await
            .context("cannot declare the [events] exchange and queue on RabbitMQ")?
            .with_metrics(QueueMetrics::register(registry)?);
        let relay = Relay::new(relay_pool, queue.clone());
        let worker = Worker::new(queue.clone()).handle(&settings.queue, move |job| {
            record_activity(tenants.clone(), job)
        })?;
        Ok(Self {
            queue,
            relay,
            worker,
        })
    }

    /// The queue (operations: depth, dead letters; tests delete the topology through it).
    pub fn queue(&self) -> &Queue<RabbitBackend> {
        &self.queue
    }

    /// Relays and consumes until `shutdown` completes (then in-flight handlers finish, and rows
    /// not yet relayed wait in the outbox for the next start), or until either part fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let relay = async {
            let result = self.relay.run(stop.cancelled()).await;
            stop.cancel();
            result
        };
        let worker = async {
            let result = self.worker.run(stop.cancelled()).await;
            stop.cancel();
            result
        };
        let signal = async {
            tokio::select! {
                () = shutdown => stop.cancel(),
                () = stop.cancelled() => {}
            }
        };
        let ((), relay, worker) = tokio::join!(signal, relay, worker);
        relay.context("the outbox relay stopped")?;
        let report = worker.context("the note.created worker stopped")?;
        tracing::info!(?report, "events stopped");
        Ok(())
    }
}
