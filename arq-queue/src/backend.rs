//! The contract every backend fulfils; the worker runtime and [`Queue`](crate::Queue) are
//! written against it once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::{Envelope, Failure};
use crate::error::QueueError;
use crate::topology::{QueueConfig, Topology};

/// One message to publish: where it goes and what it is.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The exchange.
    pub exchange: Arc<str>,
    /// The routing key (by default the message type).
    pub routing_key: Arc<str>,
    /// The envelope.
    pub envelope: Envelope,
}

/// Depth figures of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Messages waiting to be delivered.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged (RabbitMQ unacked; Redis pending).
    pub unacked: u64,
    /// Messages waiting for a retry.
    pub waiting_retry: u64,
    /// Messages in the dead-letter queue.
    pub dead: u64,
}

impl QueueStats {
    /// Depth as alerts see it: ready + unacknowledged (Redis: lag + pending).
    pub const fn depth(&self) -> u64 {
        self.ready + self.unacked
    }
}

/// A queue backend: declares topology, publishes with confirmation, hands out consumers, and
/// answers the operations questions.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The consumer type.
    type Consumer: Consumer;

    /// A short name for logs and errors (`"memory"`, `"redis"`, `"rabbitmq"`).
    fn name(&self) -> &'static str;

    /// Declares the topology; declaring it again changes nothing.
    fn declare(&self, topology: &Topology) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Publishes a batch and returns once the backend has stored every message (confirms).
    /// A message that no queue is bound for is [`QueueError::Unroutable`].
    fn publish(&self, batch: Vec<Outgoing>) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Starts consuming `queue`, holding at most `queue.prefetch` unacknowledged deliveries.
    fn consume(
        &self,
        queue: &QueueConfig,
    ) -> impl Future<Output = Result<Self::Consumer, QueueError>> + Send;

    /// Depth figures of `queue`.
    fn stats(
        &self,
        queue: &QueueConfig,
    ) -> impl Future<Output = Result<QueueStats, QueueError>> + Send;

    /// Up to `limit` dead letters of `queue`, oldest first, without removing them.
    fn peek_dead(
        &self,
        queue: &QueueConfig,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Envelope>, QueueError>> + Send;

    /// Moves up to `limit` dead letters back to the work queue with a fresh attempt count
    /// (their failure history is kept); returns how many moved.
    fn requeue_dead(
        &self,
        queue: &QueueConfig,
        limit: usize,
    ) -> impl Future<Output = Result<usize, QueueError>> + Send;

    /// Removes every ready message of the work queue (not the unacknowledged ones, not dead
    /// letters); returns how many.
    fn purge(&self, queue: &QueueConfig) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Removes every dead letter of `queue`; returns how many.
    fn purge_dead(
        &self,
        queue: &QueueConfig,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send;
}

/// A stream of deliveries from one queue.
pub trait Consumer: Send + 'static {
    /// The delivery type.
    type Delivery: Delivery;

    /// The next delivery; `None` once the consumer is closed. Errors are transient (the
    /// consumer reconnects); the worker logs them and calls again.
    fn next(&mut self) -> impl Future<Output = Option<Result<Self::Delivery, QueueError>>> + Send;

    /// Stops consuming: deliveries taken from the broker but not handed out go back to the
    /// queue, and nothing more is read once this returns. Deliveries already handed out stay
    /// valid and are settled as usual. Dropping a consumer does the same on a best-effort basis.
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async move { drop(self) }
    }
}

/// One delivered message and the means to settle it. Dropping a delivery without settling it
/// leaves it unacknowledged: the backend redelivers it (in-memory at once, RabbitMQ when the
/// channel closes, Redis Streams when the reaper reclaims it).
pub trait Delivery: Send + 'static {
    /// The envelope, with `attempt` set from the backend's delivery history.
    fn envelope(&self) -> &Envelope;

    /// Acknowledges: the message is done.
    fn ack(self) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Acknowledges at once if the backend can do so without waiting, returning the outcome; the
    /// delivery is then settled and dropping it does nothing more. The in-memory backend settles
    /// it on the spot; Redis Streams queues the id for its next batched `XACK`+`XDEL` (a failed
    /// batch is logged and its entries are redelivered by the reaper).
    /// `None` (the default) means "call [`Delivery::ack`]". The worker tries this first so a
    /// handler that finishes on its first poll costs no future at all.
    fn ack_now(&mut self) -> Option<Result<(), QueueError>> {
        None
    }

    /// Schedules the next attempt after `delay` (through the wait queue), recording `failure`.
    fn retry(
        self,
        failure: Failure,
        delay: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Moves the message to the dead-letter queue, recording `failure`.
    fn dead_letter(self, failure: Failure) -> impl Future<Output = Result<(), QueueError>> + Send;
}
