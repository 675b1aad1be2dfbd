//! The in-memory backend: the embedded default for tests and local runs.
//!
//! Same semantics as the network backends (topic routing with unroutable errors, prefetch,
//! redelivery of unacknowledged messages, retries through a wait stage, dead letters with a
//! TTL) but nothing survives the process. Payloads stay typed: nothing is serialized on the
//! publish → handler → ack path.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{Backend, Consumer, Delivery, Outgoing, QueueStats};
use crate::envelope::{Envelope, Failure};
use crate::error::QueueError;
use crate::topology::{QueueConfig, Topology};

/// The in-memory backend. Clones share the same queues.
///
/// # Example
/// ```
/// use arq_queue::{MemoryBackend, Queue, QueueConfig, Topology};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let topology = Topology::new(["app"]).queue_config(QueueConfig::new("jobs").bind("app", "job.#"));
/// let queue = Queue::new(MemoryBackend::new(), topology).await?;
/// # Ok::<(), arq_queue::QueueError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default, Debug)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Default, Debug)]
struct Inner {
    topology: RwLock<Option<Arc<Topology>>>,
    queues: RwLock<HashMap<String, Arc<MemQueue>>>,
    /// exchange → routing key → target queues; filled on first use of each key.
    routes: RwLock<RouteCache>,
}

type Targets = Arc<[Arc<MemQueue>]>;
type RouteCache = HashMap<Arc<str>, HashMap<Arc<str>, Targets>>;

#[derive(Debug)]
struct MemQueue {
    ready: Mutex<VecDeque<Envelope>>,
    notify: Notify,
    unacked: AtomicU64,
    waiting: AtomicU64,
    dead: Mutex<VecDeque<(Instant, Envelope)>>,
    dead_ttl: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemQueue {
    fn push_back(&self, env: Envelope) {
        lock(&self.ready).push_back(env);
        self.notify.notify_one();
    }

    fn push_front(&self, env: Envelope) {
        lock(&self.ready).push_front(env);
        self.notify.notify_one();
    }

    fn dead(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Envelope)>> {
        let mut dead = lock(&self.dead);
        let now = Instant::now();
        while dead
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.dead_ttl)
        {
            dead.pop_front();
        }
        dead
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, name: &str) -> Result<Arc<MemQueue>, QueueError> {
        self.inner
            .queues
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| QueueError::Unknown {
                kind: "queue",
                name: name.to_owned(),
            })
    }

    fn targets(
        &self,
        exchange: &Arc<str>,
        key: &Arc<str>,
    ) -> Result<Arc<[Arc<MemQueue>]>, QueueError> {
        if let Some(t) = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&**exchange)
            .and_then(|m| m.get(&**key))
        {
            return Ok(t.clone());
        }
        let topology = self
            .inner
            .topology
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| QueueError::Unknown {
                kind: "exchange",
                name: exchange.to_string(),
            })?;
        let names = topology.route(exchange, key)?;
        let targets: Arc<[Arc<MemQueue>]> = names
            .iter()
            .map(|n| self.queue(n))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let mut routes = self
            .inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Bound the cache: routing keys can be unbounded (ids in keys); recomputing is cheap.
        if routes.values().map(HashMap::len).sum::<usize>() > 10_000 {
            routes.clear();
        }
        routes
            .entry(exchange.clone())
            .or_default()
            .insert(key.clone(), targets.clone());
        Ok(targets)
    }
}

impl Backend for MemoryBackend {
    type Consumer = MemoryConsumer;

    fn name(&self) -> &'static str {
        "memory"
    }

    async fn declare(&self, topology: &Topology) -> Result<(), QueueError> {
        topology.validate()?;
        {
            let mut queues = self
                .inner
                .queues
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for q in &topology.queues {
                queues.entry(q.name.clone()).or_insert_with(|| {
                    Arc::new(MemQueue {
                        ready: Mutex::new(VecDeque::new()),
                        notify: Notify::new(),
                        unacked: AtomicU64::new(0),
                        waiting: AtomicU64::new(0),
                        dead: Mutex::new(VecDeque::new()),
                        dead_ttl: q.dead_letter_ttl,
                    })
                });
            }
        }
        *self
            .inner
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(topology.clone()));
        self.inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    async fn publish(&self, batch: Vec<Outgoing>) -> Result<(), QueueError> {
        // Route everything first so an unroutable message fails the batch before any is stored.
        // A batch usually repeats one exchange and key: look each run of them up once, and
        // remember runs rather than a target per message, so the envelopes move only once,
        // from the batch into their queue.
        let mut runs: Vec<(usize, Targets)> = Vec::new();
        let mut last: Option<(&Arc<str>, &Arc<str>)> = None;
        for o in &batch {
            match (last, runs.last_mut()) {
                (Some((e, k)), Some((len, _))) if *e == o.exchange && *k == o.routing_key => {
                    *len += 1;
                }
                _ => {
                    runs.push((1, self.targets(&o.exchange, &o.routing_key)?));
                    last = Some((&o.exchange, &o.routing_key));
                }
            }
        }
        // Each run for a single queue goes in under one lock and one wake-up.
        let mut envelopes = batch.into_iter().map(|o| o.envelope);
        for (len, targets) in runs {
            if let [only] = &*targets {
                lock(&only.ready).extend(envelopes.by_ref().take(len));
                only.notify.notify_one();
            } else {
                for env in envelopes.by_ref().take(len) {
                    for t in targets.iter() {
                        t.push_back(env.clone());
                    }
                }
            }
        }
        Ok(())
    }

    async fn consume(&self, queue: &QueueConfig) -> Result<MemoryConsumer, QueueError> {
        Ok(MemoryConsumer {
            shared: Arc::new(ConsumerShared {
                queue: self.queue(&queue.name)?,
                held: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
            prefetch: usize::from(queue.prefetch).max(1),
            buffer: VecDeque::new(),
        })
    }

    async fn stats(&self, queue: &QueueConfig) -> Result<QueueStats, QueueError> {
        let q = self.queue(&queue.name)?;
        let ready = lock(&q.ready).len() as u64;
        let dead = q.dead().len() as u64;
        Ok(QueueStats {
            ready,
            unacked: q.unacked.load(Ordering::Relaxed),
            waiting_retry: q.waiting.load(Ordering::Relaxed),
            dead,
        })
    }

    async fn peek_dead(
        &self,
        queue: &QueueConfig,
        limit: usize,
    ) -> Result<Vec<Envelope>, QueueError> {
        let q = self.queue(&queue.name)?;
        let dead = q.dead();
        Ok(dead.iter().take(limit).map(|(_, e)| e.clone()).collect())
    }

    async fn requeue_dead(&self, queue: &QueueConfig, limit: usize) -> Result<usize, QueueError> {
        let q = self.queue(&queue.name)?;
        let moved: Vec<Envelope> = {
            let mut dead = q.dead();
            let n = limit.min(dead.len());
            dead.drain(..n).map(|(_, e)| e).collect()
        };
        let n = moved.len();
        for mut env in moved {
            env.attempt = 1;
            q.push_back(env);
        }
        Ok(n)
    }

    async fn purge(&self, queue: &QueueConfig) -> Result<u64, QueueError> {
        let q = self.queue(&queue.name)?;
        let mut ready = lock(&q.ready);
        let n = ready.len() as u64;
        ready.clear();
        Ok(n)
    }

    async fn purge_dead(&self, queue: &QueueConfig) -> Result<u64, QueueError> {
        let q = self.queue(&queue.name)?;
        let mut dead = q.dead();
        let n = dead.len() as u64;
        dead.clear();
        Ok(n)
    }
}

/// A consumer of one in-memory queue. Messages it took but has not handed out go back to
/// the front of the queue when it is dropped.
#[derive(Debug)]
pub struct MemoryConsumer {
    shared: Arc<ConsumerShared>,
    prefetch: usize,
    buffer: VecDeque<Envelope>,
}

/// What a consumer shares with its deliveries: the queue, and how many deliveries are out.
///
/// A counter rather than a semaphore: releasing a semaphore permit takes its waiter lock on
/// every delivery, while here a settled delivery only wakes the consumer when it was waiting
/// at the prefetch limit.
#[derive(Debug)]
struct ConsumerShared {
    queue: Arc<MemQueue>,
    held: AtomicUsize,
    freed: Notify,
}

impl ConsumerShared {
    fn release(&self, prefetch_full: usize) {
        if self.held.fetch_sub(1, Ordering::AcqRel) == prefetch_full {
            self.freed.notify_one();
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let queue = &self.shared.queue;
        let mut ready = lock(&queue.ready);
        while let Some(env) = self.buffer.pop_back() {
            ready.push_front(env);
        }
        drop(ready);
        queue.notify.notify_one();
    }
}

impl MemoryConsumer {
    /// Waits until fewer than `prefetch` deliveries are out, then counts one more.
    async fn reserve(&self) {
        loop {
            let held = self.shared.held.load(Ordering::Acquire);
            if held < self.prefetch {
                if self
                    .shared
                    .held
                    .compare_exchange(held, held + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.shared.held.load(Ordering::Acquire) < self.prefetch {
                continue;
            }
            freed.await;
        }
    }
}

impl Consumer for MemoryConsumer {
    type Delivery = MemoryDelivery;

    // Cancel-safe: a reservation dropped by cancellation is given back, and a wake-up lost to
    // cancellation loses no message.
    async fn next(&mut self) -> Option<Result<MemoryDelivery, QueueError>> {
        // A backlog is always ready: without spending tokio's cooperative budget, a consume
        // loop would keep its thread until the queue is empty.
        tokio::task::coop::consume_budget().await;
        self.reserve().await;
        let mut reservation = Reservation {
            shared: &self.shared,
            prefetch: self.prefetch,
            armed: true,
        };
        let queue = &self.shared.queue;
        loop {
            if let Some(env) = self.buffer.pop_front() {
                reservation.armed = false;
                queue.unacked.fetch_add(1, Ordering::Relaxed);
                return Some(Ok(MemoryDelivery {
                    shared: self.shared.clone(),
                    prefetch: self.prefetch,
                    envelope: Some(env),
                }));
            }
            {
                // Take as many as we may hold (this reservation included), in one lock, to keep
                // lock traffic per message low.
                let room = self
                    .prefetch
                    .saturating_sub(self.shared.held.load(Ordering::Acquire))
                    + 1;
                let mut ready = lock(&queue.ready);
                let n = room.min(ready.len());
                self.buffer.extend(ready.drain(..n));
                let more = !ready.is_empty();
                drop(ready);
                if more {
                    // Pass the wake-up on to another consumer of this queue.
                    queue.notify.notify_one();
                }
            }
            if self.buffer.is_empty() {
                queue.notify.notified().await;
            }
        }
    }
}

/// A reservation not yet turned into a delivery; given back if `next` is cancelled.
struct Reservation<'a> {
    shared: &'a ConsumerShared,
    prefetch: usize,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release(self.prefetch);
        }
    }
}

/// One in-memory delivery. Dropped unsettled, it goes back to the front of its queue.
#[derive(Debug)]
pub struct MemoryDelivery {
    shared: Arc<ConsumerShared>,
    prefetch: usize,
    envelope: Option<Envelope>,
}

impl MemoryDelivery {
    fn queue(&self) -> &Arc<MemQueue> {
        &self.shared.queue
    }

    fn take(mut self) -> Option<Envelope> {
        self.queue().unacked.fetch_sub(1, Ordering::Relaxed);
        self.envelope.take()
    }
}

impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        if let Some(env) = self.envelope.take() {
            self.queue().unacked.fetch_sub(1, Ordering::Relaxed);
            self.queue().push_front(env);
        }
        self.shared.release(self.prefetch);
    }
}

fn record(env: &mut Envelope, failure: Failure) {
    env.failures.push(failure);
    env.attempt = env.attempt.saturating_add(1);
}

impl Delivery for MemoryDelivery {
    fn envelope(&self) -> &Envelope {
        // Present until settled; settling consumes the delivery.
        self.envelope
            .as_ref()
            .unwrap_or_else(|| unreachable_envelope())
    }

    async fn ack(self) -> Result<(), QueueError> {
        let _ = self.take();
        Ok(())
    }

    fn ack_now(&mut self) -> Option<Result<(), QueueError>> {
        if self.envelope.take().is_some() {
            self.queue().unacked.fetch_sub(1, Ordering::Relaxed);
        }
        Some(Ok(()))
    }

    async fn retry(self, failure: Failure, delay: Duration) -> Result<(), QueueError> {
        let queue = self.queue().clone();
        let Some(mut env) = self.take() else {
            return Ok(());
        };
        record(&mut env, failure);
        queue.waiting.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.waiting.fetch_sub(1, Ordering::Relaxed);
            queue.push_back(env);
        });
        Ok(())
    }

    async fn dead_letter(self, failure: Failure) -> Result<(), QueueError> {
        let queue = self.queue().clone();
        let Some(mut env) = self.take() else {
            return Ok(());
        };
        env.failures.push(failure);
        queue.dead().push_back((Instant::now(), env));
        Ok(())
    }
}

#[allow(
    clippy::panic,
    reason = "unreachable: a delivery holds its envelope until consumed"
)]
fn unreachable_envelope() -> &'static Envelope {
    panic!("a settled delivery has no envelope")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::Payload;

    async fn setup(prefetch: u16, n: usize) -> (MemoryBackend, QueueConfig) {
        let config = QueueConfig::new("q").prefetch(prefetch).bind("x", "#");
        let backend = MemoryBackend::new();
        backend
            .declare(&Topology::new(["x"]).queue_config(config.clone()))
            .await
            .unwrap();
        let (ex, key): (Arc<str>, Arc<str>) = ("x".into(), "k".into());
        let batch = (0..n)
            .map(|i| Outgoing {
                exchange: ex.clone(),
                routing_key: key.clone(),
                envelope: Envelope::with_payload("t", Payload::native(i)),
            })
            .collect();
        backend.publish(batch).await.unwrap();
        (backend, config)
    }

    #[tokio::test]
    async fn a_consumer_holds_at_most_prefetch_and_settling_frees_a_credit() {
        let (backend, config) = setup(2, 5).await;
        let mut consumer = backend.consume(&config).await.unwrap();
        let mut a = consumer.next().await.unwrap().unwrap();
        let b = consumer.next().await.unwrap().unwrap();
        // At the limit: the next delivery waits (and cancelling that wait leaks no credit).
        assert!(consumer.next().now_or_never().is_none());
        assert_eq!(backend.stats(&config).await.unwrap().unacked, 2);
        // The synchronous ack settles and frees a credit.
        assert!(matches!(a.ack_now(), Some(Ok(()))));
        drop(a);
        let c = consumer.next().await.unwrap().unwrap();
        assert!(consumer.next().now_or_never().is_none());
        // Dropped unsettled: back to the queue, and the credit is free again.
        let b_id = b.envelope().id;
        drop(b);
        c.ack().await.unwrap();
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.envelope().id, b_id);
        // What the consumer took ahead goes back when it is dropped; `d` is still out.
        drop(consumer);
        let stats = backend.stats(&config).await.unwrap();
        assert_eq!((stats.ready, stats.unacked), (2, 1));
        drop(d);
        assert_eq!(backend.stats(&config).await.unwrap().ready, 3);
    }

    /// The payloads (`usize`) in `queue`, in order, taking them off the queue.
    async fn drain(backend: &MemoryBackend, config: &QueueConfig) -> Vec<usize> {
        let mut consumer = backend.consume(config).await.unwrap();
        let mut out = Vec::new();
        while let Some(Some(Ok(mut d))) = consumer.next().now_or_never() {
            out.push(d.envelope().payload.decode::<usize>().unwrap());
            assert!(matches!(d.ack_now(), Some(Ok(()))));
        }
        out
    }

    #[tokio::test]
    async fn a_mixed_batch_lands_in_order_in_each_bound_queue_and_an_unroutable_one_stores_nothing()
    {
        // `a` takes a.*, `b` takes b.*, both take both.*; `x` and `y` are two exchanges.
        let a = QueueConfig::new("a").bind("x", "a.*").bind("x", "both.*");
        let b = QueueConfig::new("b")
            .bind("x", "b.*")
            .bind("x", "both.*")
            .bind("y", "#");
        let backend = MemoryBackend::new();
        backend
            .declare(
                &Topology::new(["x", "y"])
                    .queue_config(a.clone())
                    .queue_config(b.clone()),
            )
            .await
            .unwrap();
        let out = |i: usize, ex: &str, key: &str| Outgoing {
            exchange: ex.into(),
            routing_key: key.into(),
            envelope: Envelope::with_payload("t", Payload::native(i)),
        };
        // Runs of one key, a key change that routes to the same queue (a.1 → a.2), two
        // queues at once, another exchange, and back.
        let batch = vec![
            out(0, "x", "a.1"),
            out(1, "x", "a.1"),
            out(2, "x", "a.2"),
            out(3, "x", "b.1"),
            out(4, "x", "both.1"),
            out(5, "x", "both.1"),
            out(6, "y", "anything"),
            out(7, "x", "a.1"),
        ];
        backend.publish(batch).await.unwrap();
        assert_eq!(drain(&backend, &a).await, [0, 1, 2, 4, 5, 7]);
        assert_eq!(drain(&backend, &b).await, [3, 4, 5, 6]);

        // One unroutable message anywhere in a batch fails it before anything is stored.
        let batch = vec![
            out(10, "x", "a.1"),
            out(11, "x", "both.1"),
            out(12, "x", "nobody.listens"),
            out(13, "x", "a.1"),
        ];
        let err = backend.publish(batch).await.unwrap_err();
        assert!(matches!(err, QueueError::Unroutable { .. }), "{err:?}");
        assert_eq!(backend.stats(&a).await.unwrap().ready, 0);
        assert_eq!(backend.stats(&b).await.unwrap().ready, 0);
    }
}
