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
    ///
    /// Every dead letter is returned, including one the backend cannot decode into an envelope
    /// (a damaged Redis stream entry, a foreign message in a RabbitMQ dead-letter queue): those
    /// are the poison messages an operator most needs to see, so instead of failing the call
    /// each comes back, in its place, as an envelope that says what it is:
    /// - `message_type` is `arq.undecodable`; `id` is the nil UUID (there is no arq id to
    ///   report); no tenant, no trace; `attempt` 1;
    /// - the header `arq-entry-id` holds the backend's own id of the entry where it has one
    ///   (Redis: the dead-letter stream entry id; RabbitMQ: the AMQP `message_id` property);
    /// - its one [`Failure`] says why it cannot be decoded (on Redis also the reason the consumer
    ///   recorded when it dead-lettered the entry, when that differs); its `at_ms` and
    ///   `created_at_ms` are when the backend stored it as far as it knows (Redis: the entry
    ///   id's time; RabbitMQ: the `timestamp` property), else 0;
    /// - the payload is the raw value as a JSON string (decoded as UTF-8, invalid sequences
    ///   replaced by U+FFFD); a Redis entry without an arq field gives an object of its fields
    ///   instead.
    ///
    /// [`Backend::requeue_dead`] moves such an entry back to the work queue as it was (not this
    /// stand-in), where the consumer dead-letters it again.
    fn peek_dead(
        &self,
        queue: &QueueConfig,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Envelope>, QueueError>> + Send;

    /// Moves up to `limit` dead letters back to the work queue with a fresh attempt count
    /// (their failure history is kept); returns how many moved. A dead letter that cannot be
    /// decoded is moved back as it is and counted; the consumer dead-letters it again.
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
    ///
    /// Must be cancel-safe: the worker polls a fresh `next` once whenever it may take another
    /// delivery and drops it if it is pending, many times a second, so dropping a pending
    /// future must lose no message and leave none unacknowledged, and a fresh `next` polled
    /// afterwards must see whatever became ready meanwhile. It should also spend tokio's
    /// cooperative budget (`tokio::task::coop::consume_budget`) so a backlog does not keep a
    /// runtime thread.
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

#[cfg(any(feature = "redis", feature = "rabbitmq"))]
pub(crate) use undecodable::{RawDeadLetter, undecodable_dead_letter};

/// How a network backend reports a dead letter it cannot decode (an in-memory dead letter is
/// always an envelope).
#[cfg(any(feature = "redis", feature = "rabbitmq"))]
mod undecodable {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::Bytes;

    use crate::envelope::{Envelope, Failure, MessageId, Payload};

    /// The message type of the envelope [`peek_dead`](super::Backend::peek_dead) returns for a
    /// dead letter it cannot decode.
    pub(crate) const UNDECODABLE_TYPE: &str = "arq.undecodable";
    /// The header of that envelope naming the backend's own id of the entry.
    pub(crate) const ENTRY_ID_HEADER: &str = "arq-entry-id";

    /// What a dead letter that does not decode holds, as the backend read it.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum RawDeadLetter<'a> {
        /// One value (a Redis field value, an AMQP body).
        Value(&'a [u8]),
        /// Field names and values (a Redis entry with no arq field).
        #[cfg(feature = "redis")]
        Fields(&'a [(&'a [u8], &'a [u8])]),
    }

    /// The stand-in envelope [`peek_dead`](super::Backend::peek_dead) returns for a dead letter
    /// that cannot be decoded (its documentation describes it): one constructor for every
    /// backend, so an operator reads them the same way everywhere. `error` is why it does not
    /// decode now; `recorded` the reason stored with the dead letter when it was dead-lettered
    /// (Redis's `error` field), if any.
    pub(crate) fn undecodable_dead_letter(
        entry_id: Option<&str>,
        at_ms: u64,
        raw: RawDeadLetter<'_>,
        error: &str,
        recorded: Option<&str>,
    ) -> Envelope {
        let text = |b: &[u8]| serde_json::Value::String(String::from_utf8_lossy(b).into_owned());
        let json = match raw {
            RawDeadLetter::Value(v) => text(v),
            #[cfg(feature = "redis")]
            RawDeadLetter::Fields(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), text(v)))
                    .collect(),
            ),
        };
        let error = match recorded {
            Some(r) if r != error => format!("{error} (when it was dead-lettered: {r})"),
            _ => error.to_owned(),
        };
        let mut headers = BTreeMap::new();
        if let Some(id) = entry_id {
            headers.insert(ENTRY_ID_HEADER.to_owned(), id.to_owned());
        }
        // Built field by field rather than with `Envelope::with_payload`: that would give it a
        // fresh id and the tenant and trace of whatever handler happens to be peeking.
        Envelope {
            id: MessageId::from_uuid(uuid::Uuid::nil()),
            message_type: Arc::from(UNDECODABLE_TYPE),
            tenant: None,
            trace: None,
            attempt: 1,
            headers,
            created_at_ms: at_ms,
            failures: vec![Failure {
                attempt: 1,
                at_ms,
                error,
            }],
            payload: Payload::Json(Bytes::from(json.to_string())),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn undecodable_dead_letters_say_so_and_keep_the_raw_value_as_json() {
            let env = undecodable_dead_letter(
                Some("5-0"),
                5,
                RawDeadLetter::Value(b"not \"json\" \xff"),
                "could not parse the message: bad",
                Some("could not parse the message: bad"),
            );
            assert_eq!(&*env.message_type, "arq.undecodable");
            assert!(env.id.as_uuid().is_nil());
            assert_eq!(
                env.headers.get("arq-entry-id").map(String::as_str),
                Some("5-0")
            );
            assert_eq!((env.attempt, env.created_at_ms, env.tenant), (1, 5, None));
            assert_eq!(env.last_error(), Some("could not parse the message: bad"));
            assert_eq!(env.failures.len(), 1);
            let json = env.payload.to_json().unwrap();
            let back: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, serde_json::json!("not \"json\" \u{fffd}"));
        }

        #[cfg(feature = "redis")]
        #[test]
        fn foreign_fields_become_an_object_and_both_reasons_are_kept() {
            let fields: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"b\xfe", b"")];
            let env = undecodable_dead_letter(
                None,
                0,
                RawDeadLetter::Fields(&fields),
                "now",
                Some("then"),
            );
            assert!(env.headers.is_empty());
            assert_eq!(
                env.last_error(),
                Some("now (when it was dead-lettered: then)")
            );
            let json = env.payload.to_json().unwrap();
            let back: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, serde_json::json!({"a": "1", "b\u{fffd}": ""}));
        }
    }
}
