//! The one error type of this crate.

/// What went wrong talking to a queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The topology configuration is invalid.
    #[error("invalid queue topology: {reason}")]
    Topology {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A queue or exchange name that the declared topology does not contain.
    #[error("{kind} {name:?} is not declared in the topology; add it to the queue configuration")]
    Unknown {
        /// `"queue"` or `"exchange"`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// No binding matched the routing key: the message would have been dropped.
    #[error(
        "the message to exchange {exchange:?} with routing key {routing_key:?} matches no queue binding and was not stored; bind a queue for it"
    )]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The broker did not confirm that it stored a message (negative confirm).
    #[error("the broker refused to store message {message_id}: {reason}")]
    NotConfirmed {
        /// The message id.
        message_id: String,
        /// Why, as far as the broker said.
        reason: String,
    },
    /// A payload or envelope could not be serialized.
    #[error("could not serialize the message: {reason}")]
    Encode {
        /// The serializer's message.
        reason: String,
    },
    /// A payload or envelope could not be parsed.
    #[error("could not parse the message: {reason}")]
    Decode {
        /// The parser's message.
        reason: String,
    },
    /// The connection to the broker failed or was lost; the operation may be retried.
    #[error("the {backend} connection failed: {reason}; check that the server is reachable")]
    Connection {
        /// Which backend.
        backend: &'static str,
        /// The client's message.
        reason: String,
    },
    /// The backend answered with an error.
    #[error("the {backend} backend refused the operation: {reason}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The server's or client's message.
        reason: String,
    },
    /// A database error from the outbox.
    #[error("the outbox database operation failed: {reason}")]
    Database {
        /// The driver's message.
        reason: String,
    },
    /// The database is not set up for the outbox relay (a missing role, privilege or policy).
    #[error("the outbox relay is not set up: {reason}")]
    OutboxSetup {
        /// What is missing and how to set it up.
        reason: String,
    },
    /// The queue or worker is shutting down.
    #[error("the queue is shutting down")]
    Closed,
    /// A metric could not be registered.
    #[error(transparent)]
    Metrics(#[from] arq_core::metrics::MetricsError),
}
