//! # arq-queue
//!
//! Work that happens later: one envelope, one publishing API and one worker runtime over an
//! in-memory backend, Redis Streams and RabbitMQ, with retries through wait queues, dead
//! letters, metrics and a transactional outbox on PostgreSQL.
//!
//! - [`Envelope`]: id, type, tenant, trace context, attempt, headers, created-at, JSON payload
//!   (kept typed, never serialized, by the in-memory backend).
//! - [`Topology`]: topic exchanges, queues, bindings, wait queues and dead-letter queues from
//!   configuration, declared idempotently by every backend.
//! - [`Queue`]: typed publishing ([`Message`]) with confirms, and the operations API (list with
//!   depth, peek / requeue / purge dead letters, purge).
//! - [`Worker`]: per-queue concurrency, handler timeout, retries after a delay, dead-lettering
//!   after `max_attempts` (3) with the failure history, poison isolation, optional idempotency by
//!   message id, tenant and trace restored around each handler ([`MessageScope`]), graceful
//!   shutdown within a deadline.
//! - [`QueueMetrics`]: counters, depth gauges and latency histograms in arq-core's registry;
//!   `alerts/arq-queue.rules.yml` alerts on depth > 1 000 and on dead letters.
//!
//! Delivery is at least once on every backend: a handler may see a message again after a crash
//! or a lost acknowledgement, with the same [`MessageId`].
//!
//! # Example
//!
//! ```
//! use arq_queue::{Job, HandlerError, MemoryBackend, Message, MessageScope, Queue, QueueConfig, TenantId, Topology, Worker, Envelope};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct SendEmail { to: String }
//! impl Message for SendEmail { const TYPE: &'static str = "email.send"; }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let topology = Topology::new(["app"]).queue_config(QueueConfig::new("email").bind("app", "email.#"));
//! let queue = Queue::new(MemoryBackend::new(), topology).await?;
//!
//! let tenant = TenantId::generate();
//! let env = Envelope::new(SendEmail { to: "a@example.com".into() }).with_tenant(tenant);
//! queue.publish_envelope("app", "email.send", env).await?;
//!
//! let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
//! let worker = Worker::new(queue.clone()).handle("email", move |job: Job<SendEmail>| {
//!     let tx = tx.clone();
//!     async move {
//!         // The tenant is restored around the handler.
//!         let _ = tx.send(MessageScope::current().and_then(|s| s.tenant));
//!         Ok::<(), HandlerError>(())
//!     }
//! })?;
//! let mut rx = rx;
//! let seen = worker.run(async move { rx.recv().await; }).await;
//! assert!(seen.is_ok());
//! # Ok::<(), arq_queue::QueueError>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | (none) | the in-memory backend, the worker runtime, metrics |
//! | `redis` | [`redis_streams`]: Redis Streams backend (redis 1.x) |
//! | `rabbitmq` | [`rabbitmq`]: RabbitMQ backend (lapin 4) |
//! | `postgres` | [`outbox`]: the transactional outbox on PostgreSQL (sqlx) and its relay |
//! | `full` | all of the above |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod envelope;
mod error;
mod memory;
mod metrics;
mod queue;
mod scope;
mod topology;
mod worker;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod outbox;
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_streams;
pub mod testing;

pub use arq_core::{TenantId, TraceContext};
pub use backend::{Backend, Consumer, Delivery, Outgoing, QueueStats};
pub use envelope::{Envelope, Failure, Message, MessageId, NativePayload, Payload};
pub use error::QueueError;
pub use memory::{MemoryBackend, MemoryConsumer, MemoryDelivery};
pub use metrics::{LatencyHistogram, PerQueue, QueueMetrics};
pub use queue::{Queue, QueueInfo};
pub use scope::MessageScope;
pub use topology::{Binding, QueueConfig, Topology, topic_matches};
pub use worker::{HandlerError, IdempotencyStore, Job, MemoryIdempotency, Worker, WorkerReport};

#[cfg(feature = "rabbitmq")]
pub use rabbitmq::{RabbitBackend, connect_rabbitmq_retrying};
#[cfg(feature = "redis")]
pub use redis_streams::RedisBackend;
