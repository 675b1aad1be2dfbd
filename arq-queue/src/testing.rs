//! For tests of code that publishes: take the next message a consumer receives, with a deadline,
//! so a test that waits for an event fails with a reason instead of hanging.

use std::time::Duration;

use crate::{Consumer, Delivery, Envelope, QueueError};

/// Why [`receive`] returned no envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// Nothing arrived within the deadline.
    #[error("no message arrived within {0:?}")]
    TimedOut(Duration),
    /// The consumer was closed before a message arrived.
    #[error("the consumer closed before a message arrived")]
    Closed,
    /// Consuming failed.
    #[error("consuming failed: {0}")]
    Consume(QueueError),
    /// The message arrived but could not be acknowledged.
    #[error("acknowledging the message failed: {0}")]
    Ack(QueueError),
}

/// Waits up to `within` for `consumer`'s next delivery, acknowledges it and returns its envelope.
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use arq_queue::{Backend, MemoryBackend, Message, Queue, QueueConfig, Topology};
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Ping;
/// impl Message for Ping {
///     const TYPE: &'static str = "ping";
/// }
///
/// let config = QueueConfig::new("pings").bind("events", "ping");
/// let backend = MemoryBackend::new();
/// let queue = Queue::new(backend.clone(), Topology::new(["events"]).queue_config(config.clone())).await?;
/// let mut consumer = backend.consume(&config).await?;
/// queue.publish(Ping).await?;
/// let envelope = arq_queue::testing::receive(&mut consumer, Duration::from_secs(5)).await?;
/// assert_eq!(&*envelope.message_type, "ping");
/// # Ok(()) }
/// ```
pub async fn receive(
    consumer: &mut impl Consumer,
    within: Duration,
) -> Result<Envelope, ReceiveError> {
    let delivery = tokio::time::timeout(within, consumer.next())
        .await
        .map_err(|_| ReceiveError::TimedOut(within))?
        .ok_or(ReceiveError::Closed)?
        .map_err(ReceiveError::Consume)?;
    let envelope = delivery.envelope().clone();
    delivery.ack().await.map_err(ReceiveError::Ack)?;
    Ok(envelope)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Backend, MemoryBackend, QueueConfig, Topology};

    #[tokio::test(start_paused = true)]
    async fn returns_the_acknowledged_envelope_or_says_that_nothing_came() {
        let config = QueueConfig::new("q").bind("x", "#");
        let backend = MemoryBackend::new();
        let queue = crate::Queue::new(
            backend.clone(),
            Topology::new(["x"]).queue_config(config.clone()),
        )
        .await
        .unwrap();
        let mut consumer = backend.consume(&config).await.unwrap();
        let id = queue
            .publish_envelope(
                "x",
                "k",
                Envelope::with_payload("t", crate::Payload::native(1_u8)),
            )
            .await
            .unwrap();
        let got = receive(&mut consumer, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got.id, id);
        // Acknowledged: nothing is left, ready or unacknowledged.
        let stats = backend.stats(&config).await.unwrap();
        assert_eq!((stats.ready, stats.unacked), (0, 0));
        let e = receive(&mut consumer, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReceiveError::TimedOut(d) if d == Duration::from_secs(1)),
            "{e}"
        );
        assert_eq!(e.to_string(), "no message arrived within 1s");
    }
}
