//! The worker runtime: consumes queues, runs typed handlers with their tenant and trace
//! restored, retries, dead-letters, and shuts down gracefully.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use arq_core::{TenantId, TraceContext};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{Backend, Consumer, Delivery};
use crate::envelope::{Envelope, Failure, Message, MessageId, now_ms};
use crate::error::QueueError;
use crate::metrics::{LocalHistogram, PerQueue};
use crate::queue::Queue;
use crate::scope::MessageScope;
use crate::topology::QueueConfig;

/// What a typed handler receives: the decoded payload and the envelope's metadata.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Job<T> {
    /// The decoded payload.
    pub payload: T,
    /// The message id (stable across retries; deduplicate by it).
    pub id: MessageId,
    /// The envelope's message type (its routing key when published by type): what a handler
    /// bound to several types (`task.*`) dispatches on.
    pub message_type: Arc<str>,
    /// This delivery's attempt, from 1.
    pub attempt: u32,
    /// The tenant.
    pub tenant: Option<TenantId>,
    /// The handler's trace context (a child of the publisher's).
    pub trace: Option<TraceContext>,
    /// The envelope's headers.
    pub headers: BTreeMap<String, String>,
    /// When the message was first published (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Earlier failures.
    pub failures: Vec<Failure>,
}

/// A handler's failure: retried until the attempts run out, or dead-lettered at once when
/// [`HandlerError::permanent`].
///
/// Any `std::error::Error` converts into it, so `?` works in handlers.
pub struct HandlerError {
    message: String,
    permanent: bool,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retry(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            permanent: false,
        }
    }

    /// A failure no retry can fix (bad input): the message goes to the dead-letter queue now.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            permanent: true,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether it skips the remaining attempts.
    pub const fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .field("permanent", &self.permanent)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::retry(e)
    }
}

/// Remembers which message ids were handled successfully, for queues with
/// [`QueueConfig::idempotent`] set. At-least-once delivery plus this check gives
/// effectively-once handling for sequential redeliveries; a handler whose side effects must be
/// exactly once should also record the id in its own transaction.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Whether `id` was already handled successfully.
    fn seen(&self, id: MessageId) -> BoxFuture<'_, Result<bool, QueueError>>;
    /// Records that `id` was handled successfully.
    fn record(&self, id: MessageId) -> BoxFuture<'_, Result<(), QueueError>>;
}

/// An in-process [`IdempotencyStore`] remembering the last `capacity` ids.
///
/// # Example
/// ```
/// use arq_queue::{IdempotencyStore, MemoryIdempotency, MessageId};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryIdempotency::new(2);
/// let (a, b, c) = (MessageId::generate(), MessageId::generate(), MessageId::generate());
/// store.record(a).await?;
/// assert!(store.seen(a).await?);
/// store.record(b).await?;
/// store.record(c).await?; // evicts a
/// assert!(!store.seen(a).await?);
/// # Ok::<(), arq_queue::QueueError>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryIdempotency {
    capacity: usize,
    inner: Mutex<(HashSet<MessageId>, VecDeque<MessageId>)>,
}

impl MemoryIdempotency {
    /// A store remembering up to `capacity` ids (oldest forgotten first).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }
}

impl IdempotencyStore for MemoryIdempotency {
    fn seen(&self, id: MessageId) -> BoxFuture<'_, Result<bool, QueueError>> {
        let seen = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .contains(&id);
        Box::pin(async move { Ok(seen) })
    }

    fn record(&self, id: MessageId) -> BoxFuture<'_, Result<(), QueueError>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.0.insert(id) {
            inner.1.push_back(id);
            while inner.1.len() > self.capacity {
                if let Some(old) = inner.1.pop_front() {
                    inner.0.remove(&old);
                }
            }
        }
        Box::pin(async { Ok(()) })
    }
}

type ErasedHandler = Arc<
    dyn Fn(&Envelope, Option<TraceContext>) -> BoxFuture<'static, Result<(), HandlerError>>
        + Send
        + Sync,
>;

/// How a worker run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Deliveries settled (acked, retried or dead-lettered).
    pub settled: u64,
    /// Deliveries still running at the shutdown deadline: cancelled and left unacknowledged,
    /// so the backend redelivers them.
    pub abandoned: u64,
}

/// Runs handlers over queues.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use arq_queue::{Job, HandlerError, MemoryBackend, Message, Queue, QueueConfig, Topology, Worker};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct SendEmail { to: String }
/// impl Message for SendEmail { const TYPE: &'static str = "email.send"; }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let topology = Topology::new(["app"]).queue_config(QueueConfig::new("email").bind("app", "email.*"));
/// let queue = Queue::new(MemoryBackend::new(), topology).await?;
/// let (done_tx, done_rx) = tokio::sync::oneshot::channel();
/// let done_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(done_tx)));
///
/// let worker = Worker::new(queue.clone())
///     .handle("email", move |job: Job<SendEmail>| {
///         let done_tx = done_tx.clone();
///         async move {
///             if let Some(tx) = done_tx.lock().unwrap().take() { let _ = tx.send(job.payload.to); }
///             Ok::<(), HandlerError>(())
///         }
///     })?
///     .shutdown_deadline(Duration::from_secs(5));
/// queue.publish(SendEmail { to: "a@example.com".into() }).await?;
/// let report = worker.run(async { let _ = done_rx.await; }).await?;
/// assert_eq!(report.abandoned, 0);
/// # Ok::<(), arq_queue::QueueError>(())
/// # }).unwrap();
/// ```
pub struct Worker<B> {
    queue: Queue<B>,
    handlers: Vec<(QueueConfig, ErasedHandler)>,
    shutdown_deadline: Duration,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    stats_interval: Duration,
}

impl<B> fmt::Debug for Worker<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field(
                "queues",
                &self
                    .handlers
                    .iter()
                    .map(|(q, _)| &q.name)
                    .collect::<Vec<_>>(),
            )
            .field("shutdown_deadline", &self.shutdown_deadline)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Worker<B> {
    /// A worker with no handlers; the shutdown deadline defaults to 30 s.
    pub fn new(queue: Queue<B>) -> Self {
        Self {
            queue,
            handlers: Vec::new(),
            shutdown_deadline: Duration::from_secs(30),
            idempotency: None,
            stats_interval: Duration::from_secs(15),
        }
    }

    /// Handles messages of `queue` (declared in the topology) with `handler`. A payload that
    /// does not decode as `T` is dead-lettered at once (it would fail every attempt).
    ///
    /// A queue bound to several message types (`task.*`) needs a `T` that decodes each of them,
    /// e.g. a newtype over `serde_json::Value`; [`Job::message_type`] tells them apart.
    pub fn handle<T, H, Fut>(mut self, queue: &str, handler: H) -> Result<Self, QueueError>
    where
        T: Message,
        H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let config = self.queue.topology().queue(queue)?.clone();
        let erased: ErasedHandler =
            Arc::new(
                move |env: &Envelope, trace| match env.payload.decode::<T>() {
                    Ok(payload) => handler(Job {
                        payload,
                        id: env.id,
                        message_type: env.message_type.clone(),
                        attempt: env.attempt,
                        tenant: env.tenant,
                        trace,
                        headers: env.headers.clone(),
                        created_at_ms: env.created_at_ms,
                        failures: env.failures.clone(),
                    })
                    .boxed(),
                    Err(e) => futures::future::ready(Err(HandlerError::permanent(e))).boxed(),
                },
            );
        self.handlers.retain(|(q, _)| q.name != queue);
        self.handlers.push((config, erased));
        Ok(self)
    }

    /// How long in-flight handlers may run after shutdown is signalled; what is still running
    /// then is cancelled and left unacknowledged.
    #[must_use]
    pub const fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown_deadline = deadline;
        self
    }

    /// The store that idempotent queues check message ids against.
    #[must_use]
    pub fn idempotency(mut self, store: impl IdempotencyStore) -> Self {
        self.idempotency = Some(Arc::new(store));
        self
    }

    /// How often the depth gauges are refreshed while running (default 15 s).
    #[must_use]
    pub const fn stats_interval(mut self, interval: Duration) -> Self {
        self.stats_interval = interval;
        self
    }

    /// Consumes until `shutdown` completes, then stops taking deliveries, lets in-flight
    /// handlers finish within the deadline, and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerReport, QueueError> {
        if self.handlers.iter().any(|(q, _)| q.idempotent) && self.idempotency.is_none() {
            return Err(QueueError::Topology {
                reason: "a queue is marked idempotent but the worker has no idempotency store; call Worker::idempotency".to_owned(),
            });
        }
        let token = CancellationToken::new();
        let mut loops = JoinSet::new();
        for (config, handler) in &self.handlers {
            let ctx = Arc::new(LoopCtx {
                metrics: self.queue.metrics().for_queue(&config.name),
                config: config.clone(),
                handler: handler.clone(),
                idempotency: self.idempotency.clone(),
                deadline: self.shutdown_deadline,
            });
            for _ in 0..config.consumers {
                let consumer = self.queue.backend().consume(config).await?;
                loops.spawn(consume_loop(consumer, ctx.clone(), token.clone()));
            }
        }
        let stats = {
            let queue = self.queue.clone();
            let token = token.clone();
            let interval = self.stats_interval;
            tokio::spawn(async move {
                loop {
                    if let Err(e) = queue.list().await {
                        tracing::warn!(error = %e, "refreshing queue depth metrics failed");
                    }
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(interval) => {}
                    }
                }
            })
        };
        shutdown.await;
        token.cancel();
        let mut report = WorkerReport::default();
        while let Some(r) = loops.join_next().await {
            match r {
                Ok(r) => {
                    report.settled += r.settled;
                    report.abandoned += r.abandoned;
                }
                // Handler panics are caught; this is a bug in arq or a backend, and it must
                // not pass silently.
                Err(e) => tracing::error!(error = %e, "a consume loop ended abnormally"),
            }
        }
        stats.abort();
        Ok(report)
    }
}

struct LoopCtx {
    config: QueueConfig,
    handler: ErasedHandler,
    metrics: PerQueue,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    deadline: Duration,
}

async fn consume_loop<C: Consumer>(
    mut consumer: C,
    ctx: Arc<LoopCtx>,
    token: CancellationToken,
) -> WorkerReport {
    let concurrency = ctx.config.effective_concurrency();
    let mut inflight = FuturesUnordered::new();
    let mut report = WorkerReport::default();
    let mut backoff = Duration::from_millis(50);
    // Created once: a fresh `cancelled()` future per iteration would register a waiter (a lock)
    // for every message.
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut cancelled => break,
            Some(()) = inflight.next(), if !inflight.is_empty() => {
                report.settled += 1;
                continue;
            }
            next = consumer.next(), if inflight.len() < concurrency => next,
        };
        let error = match next {
            None => break,
            Some(Err(e)) => e,
            Some(Ok(delivery)) => {
                backoff = Duration::from_millis(50);
                // Handle this delivery, then whatever else the consumer has ready, within this
                // one poll (up to `BURST`): a round of the `select!` per message cost more than
                // the message itself (the cancellation check, the set's poll), and a burst's
                // metrics are tallied locally and added once.
                let mut first = Some(delivery);
                let end = std::future::poll_fn(|cx| {
                    let mut tally = Tally::default();
                    if let Some(d) = first.take() {
                        tally.start(d, &ctx, cx, &mut inflight);
                    }
                    let mut end = BurstEnd::Drained;
                    for _ in 1..BURST {
                        // Out of tokio's cooperative budget, handlers started now would see
                        // their own resources report "pending" and wait for no reason.
                        if inflight.len() >= concurrency
                            || token.is_cancelled()
                            || !tokio::task::coop::has_budget_remaining()
                        {
                            break;
                        }
                        // Cancel-safe (the `Consumer` contract): a pending `next` dropped here
                        // loses nothing, and its waker registration is this task's.
                        let next = std::pin::pin!(consumer.next());
                        match next.poll(cx) {
                            Poll::Ready(Some(Ok(d))) => tally.start(d, &ctx, cx, &mut inflight),
                            Poll::Ready(Some(Err(e))) => {
                                end = BurstEnd::Failed(e);
                                break;
                            }
                            Poll::Ready(None) => {
                                end = BurstEnd::Closed;
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    report.settled += tally.flush(&ctx);
                    Poll::Ready(end)
                })
                .await;
                match end {
                    BurstEnd::Drained => continue,
                    BurstEnd::Closed => break,
                    BurstEnd::Failed(e) => e,
                }
            }
        };
        tracing::warn!(queue = %ctx.config.name, error = %error, "consuming failed; retrying");
        tokio::select! {
            () = &mut cancelled => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    // Stop taking deliveries: what the consumer holds but has not handed out goes back.
    // In-flight handlers keep running meanwhile (they are polled by `drain` below).
    let close = consumer.close();
    tokio::pin!(close);
    loop {
        tokio::select! {
            () = &mut close => break,
            Some(()) = inflight.next(), if !inflight.is_empty() => report.settled += 1,
        }
    }
    let drain = async {
        while inflight.next().await.is_some() {
            report.settled += 1;
        }
    };
    if tokio::time::timeout(ctx.deadline, drain).await.is_err() {
        report.abandoned = inflight.len() as u64;
        tracing::warn!(
            queue = %ctx.config.name,
            abandoned = report.abandoned,
            "shutdown deadline passed; cancelling handlers and leaving their messages unacknowledged"
        );
        // Dropping the futures drops their deliveries unsettled: nothing unfinished is acked.
        drop(inflight);
    }
    report
}

/// A delivery's work that could not finish synchronously.
type Rest = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The most deliveries one poll of the consume loop handles before it goes round its
/// `select!` again (cancellation, in-flight handlers).
const BURST: usize = 64;

/// How a burst of deliveries ended.
enum BurstEnd {
    /// The consumer had nothing more ready at once (or the burst was full).
    Drained,
    /// The consumer is closed.
    Closed,
    /// The consumer failed; the loop backs off.
    Failed(QueueError),
}

/// What a burst of deliveries handled in one poll adds to the queue's metrics, added once at
/// its end ([`Tally::flush`]): shared counters and histograms touched per message were the
/// largest cost two consumers on two cores shared.
#[derive(Default)]
struct Tally {
    delivered: u64,
    acked: u64,
    settled: u64,
    enqueue_to_start: LocalHistogram,
    processing: LocalHistogram,
    /// The wall clock and the monotonic clock, read together once per burst; each message's
    /// wall-clock start is derived from its own monotonic reading (which the processing time
    /// needs anyway), so a burst of slow handlers still reports each one's real start.
    clock: Option<(u64, tokio::time::Instant)>,
}

impl Tally {
    /// Starts handling `delivery` within the consume loop's poll: a handler that finishes on
    /// its first poll on a backend that acknowledges without waiting (every in-memory
    /// benchmark) is handled, metered and acknowledged right here, with no per-message future
    /// or task node. Whatever has to wait is boxed into `inflight`.
    fn start<D: Delivery>(
        &mut self,
        mut delivery: D,
        ctx: &Arc<LoopCtx>,
        cx: &mut Context<'_>,
        inflight: &mut FuturesUnordered<Rest>,
    ) {
        if ctx.idempotency.is_some() && ctx.config.idempotent {
            // The idempotency check awaits a store first: the general path.
            inflight.push(Box::pin(process(delivery, ctx.clone())));
            return;
        }
        let env = delivery.envelope();
        let (id, attempt) = (env.id, env.attempt);
        self.delivered += 1;
        let started = tokio::time::Instant::now();
        let (wall0, mono0) = *self.clock.get_or_insert_with(|| (now_ms(), started));
        let elapsed_ms =
            u64::try_from(started.duration_since(mono0).as_millis()).unwrap_or(u64::MAX);
        let now_ms = wall0.saturating_add(elapsed_ms);
        self.enqueue_to_start
            .observe(now_ms.saturating_sub(env.created_at_ms) as f64 / 1000.0);
        let (scope, span, fut) = begin(env, ctx);
        let mut fut = fut;
        let first = {
            let _entered = span.enter();
            scope
                .clone()
                .run_sync(|| std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))))
        };
        let outcome: Outcome = match first {
            Ok(Poll::Pending) => {
                let ctx = ctx.clone();
                inflight.push(Box::pin(async move {
                    complete(delivery, scope, span, fut, started, &ctx).await;
                }));
                return;
            }
            Ok(Poll::Ready(r)) => Ok(Ok(r)),
            Err(panic) => Ok(Err(panic)),
        };
        self.processing.observe(started.elapsed().as_secs_f64());
        if let Ok(Ok(Ok(()))) = &outcome
            && let Some(acked) = delivery.ack_now()
        {
            if let Err(e) = acked {
                tracing::warn!(error = %e, "acknowledging failed; the message will be redelivered");
            } else {
                self.acked += 1;
            }
            self.settled += 1;
            return;
        }
        let ctx = ctx.clone();
        inflight.push(Box::pin(async move {
            finish(delivery, outcome, id, attempt, &ctx).await;
        }));
    }

    /// Adds the tally to the queue's metrics; returns how many deliveries it settled.
    fn flush(&mut self, ctx: &LoopCtx) -> u64 {
        let m = &ctx.metrics;
        if self.delivered > 0 {
            m.delivered.inc_by(self.delivered);
        }
        if self.acked > 0 {
            m.acked.inc_by(self.acked);
        }
        self.enqueue_to_start.flush(&m.enqueue_to_start);
        self.processing.flush(&m.processing);
        let settled = self.settled;
        *self = Self::default();
        settled
    }
}

/// How a handler run ended: `Err(())` timed out; `Ok(Err(_))` panicked; `Ok(Ok(r))` returned.
type Outcome = Result<Result<Result<(), HandlerError>, Box<dyn std::any::Any + Send>>, ()>;

/// Counts a delivery handed to the worker and its time since the first publish.
fn meter(env: &Envelope, ctx: &LoopCtx) {
    let m = &ctx.metrics;
    m.delivered.inc();
    m.enqueue_to_start
        .observe(now_ms().saturating_sub(env.created_at_ms) as f64 / 1000.0);
}

/// Prepares a delivery's handler: the scope and span it runs in, and its future (not yet
/// polled).
fn begin(
    env: &Envelope,
    ctx: &LoopCtx,
) -> (
    MessageScope,
    tracing::Span,
    BoxFuture<'static, Result<(), HandlerError>>,
) {
    let trace = env.trace.as_ref().map(TraceContext::child);
    let scope = MessageScope {
        tenant: env.tenant,
        trace: trace.clone(),
        message_id: env.id,
        attempt: env.attempt,
    };
    let span = tracing::info_span!(
        "arq_queue.handle",
        queue = %ctx.config.name,
        message_type = %env.message_type,
        message_id = %env.id,
        attempt = env.attempt,
        tenant_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(t) = env.tenant {
        span.record("tenant_id", tracing::field::display(t));
    }
    if let Some(t) = &trace {
        span.record("trace_id", t.parent.trace_id_hex());
    }
    // The handler's synchronous part runs here, before any future exists: a panic in it is
    // the handler's failure like a panic in its future (retried, then dead-lettered), not the
    // end of this consume loop.
    let fut = std::panic::catch_unwind(AssertUnwindSafe(|| (ctx.handler)(env, trace)))
        .unwrap_or_else(|panic| {
            let error =
                HandlerError::retry(format!("handler panicked: {}", panic_message(&*panic)));
            futures::future::ready(Err(error)).boxed()
        });
    (scope, span, fut)
}

/// The general path: idempotency check, handler, settlement, all awaited.
async fn process<D: Delivery>(delivery: D, ctx: Arc<LoopCtx>) {
    let env = delivery.envelope();
    let id = env.id;
    meter(env, &ctx);
    if let Some(store) = ctx.idempotency.as_ref().filter(|_| ctx.config.idempotent) {
        match store.seen(id).await {
            Ok(true) => {
                tracing::debug!(message_id = %id, "already handled; acknowledging the duplicate");
                settle_ack(delivery, &ctx).await;
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "idempotency check failed; handling anyway"),
        }
    }
    let (scope, span, fut) = begin(delivery.envelope(), &ctx);
    let started = tokio::time::Instant::now();
    complete(delivery, scope, span, fut, started, &ctx).await;
}

/// Runs a handler's future to its end (in its scope and span, under the handler timeout),
/// records how long the handler ran since `started`, and settles the delivery.
async fn complete<D: Delivery>(
    delivery: D,
    scope: MessageScope,
    span: tracing::Span,
    fut: BoxFuture<'static, Result<(), HandlerError>>,
    started: tokio::time::Instant,
    ctx: &LoopCtx,
) {
    let (id, attempt) = {
        let env = delivery.envelope();
        (env.id, env.attempt)
    };
    let outcome = LazyTimeout {
        fut: AssertUnwindSafe(scope.run(fut)).catch_unwind(),
        sleep: None,
        limit: ctx.config.handler_timeout,
    }
    .instrument(span)
    .await;
    ctx.metrics
        .processing
        .observe(started.elapsed().as_secs_f64());
    finish(delivery, outcome, id, attempt, ctx).await;
}

/// Settles after the handler: ack on success (recording the id for idempotent queues), else
/// retry or dead-letter.
async fn finish<D: Delivery>(
    delivery: D,
    outcome: Outcome,
    id: MessageId,
    attempt: u32,
    ctx: &LoopCtx,
) {
    let m = &ctx.metrics;
    let (error, permanent) = match outcome {
        Ok(Ok(Ok(()))) => {
            if let Some(store) = ctx.idempotency.as_ref().filter(|_| ctx.config.idempotent)
                && let Err(e) = store.record(id).await
            {
                tracing::warn!(error = %e, "recording the handled message id failed");
            }
            settle_ack(delivery, ctx).await;
            return;
        }
        Ok(Ok(Err(e))) => (e.message, e.permanent),
        Ok(Err(panic)) => (
            format!("handler panicked: {}", panic_message(&*panic)),
            false,
        ),
        Err(()) => (
            format!(
                "handler timed out after {} ms",
                ctx.config.handler_timeout.as_millis()
            ),
            false,
        ),
    };
    let failure = Failure {
        attempt,
        at_ms: now_ms(),
        error,
    };
    if permanent || attempt >= ctx.config.max_attempts {
        tracing::warn!(queue = %ctx.config.name, message_id = %id, attempt, error = %failure.error, "dead-lettering");
        match delivery.dead_letter(failure).await {
            Ok(()) => {
                m.dead_lettered.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-lettering failed; the message will be redelivered");
            }
        };
    } else {
        tracing::info!(queue = %ctx.config.name, message_id = %id, attempt, error = %failure.error, "retrying later");
        match delivery.retry(failure, ctx.config.retry_delay).await {
            Ok(()) => {
                m.retried.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduling the retry failed; the message will be redelivered");
            }
        };
    }
}

async fn settle_ack<D: Delivery>(delivery: D, ctx: &LoopCtx) {
    match delivery.ack().await {
        Ok(()) => {
            ctx.metrics.acked.inc();
        }
        Err(e) => {
            tracing::warn!(error = %e, "acknowledging failed; the message will be redelivered");
        }
    }
}

pin_project_lite::pin_project! {
    /// A timeout that arms its timer only if the future does not finish on its first poll:
    /// handlers that complete synchronously (common, and every in-memory benchmark) cost no
    /// timer registration. The limit counts from the first poll that returned pending, which
    /// differs from the start by that poll's own run time only.
    struct LazyTimeout<F> {
        #[pin]
        fut: F,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        limit: Duration,
    }
}

impl<F: Future> Future for LazyTimeout<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let limit = *this.limit;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}
