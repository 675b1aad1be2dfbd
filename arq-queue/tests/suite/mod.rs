//! The behavioural suite every backend (and the outbox relay) must pass. Each test file
//! implements [`Fixture`] and expands [`behaviour!`].
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arq_core::metrics::MetricsRegistry;
use arq_queue::{
    Backend, Envelope, HandlerError, Job, MemoryIdempotency, Message, MessageScope, Queue,
    QueueConfig, QueueError, QueueMetrics, TenantId, Topology, TraceContext, Worker, WorkerReport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What a test message asks its handler to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    Ok,
    /// Fail this many attempts, then succeed.
    FailTimes(u32),
    /// Fail permanently (dead-letter now).
    Permanent,
    Panic,
    SleepMs(u64),
    Hang,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub n: u64,
    pub act: Act,
}

impl Message for Task {
    const TYPE: &'static str = "task.run";
}

/// A message type whose payload does not decode as `Task`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotATask {
    pub text: String,
}

impl Message for NotATask {
    const TYPE: &'static str = "task.other";
}

pub trait Fixture: Send + Sync + Sized + 'static {
    type B: Backend;
    /// A backend; each call is a new connection to the same isolated namespace.
    fn backend(&self) -> impl Future<Output = Self::B> + Send;
    /// A unique name prefix for exchanges and queues.
    fn unique(&self) -> &str;
    /// Removes what the test declared.
    fn cleanup(&self, topology: &Topology) -> impl Future<Output = ()> + Send;
    /// The retry delay to configure: short, so tests do not wait an hour.
    fn retry_delay(&self) -> Duration {
        Duration::from_millis(300)
    }
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub n: u64,
    pub attempt: u32,
    pub tenant: Option<TenantId>,
    pub trace_id: Option<String>,
    pub at: Instant,
    pub id: arq_queue::MessageId,
}

#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<Seen>>,
    pub done: Mutex<Vec<u64>>,
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub started: AtomicUsize,
}

impl Recorder {
    pub fn done_count(&self) -> usize {
        self.done.lock().unwrap().len()
    }
    pub fn attempts_of(&self, n: u64) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.n == n)
            .cloned()
            .collect()
    }
}

pub fn handler(
    rec: Arc<Recorder>,
) -> impl Fn(Job<Task>) -> std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
+ Send
+ Sync
+ 'static {
    move |job: Job<Task>| {
        let rec = rec.clone();
        Box::pin(async move {
            let scope = MessageScope::current().expect("scope restored around the handler");
            assert_eq!(scope.tenant, job.tenant);
            assert_eq!(scope.message_id, job.id);
            rec.seen.lock().unwrap().push(Seen {
                n: job.payload.n,
                attempt: job.attempt,
                tenant: scope.tenant,
                trace_id: scope.trace.as_ref().map(|t| t.parent.trace_id_hex()),
                at: Instant::now(),
                id: job.id,
            });
            rec.started.fetch_add(1, Ordering::SeqCst);
            let now = rec.running.fetch_add(1, Ordering::SeqCst) + 1;
            rec.max_running.fetch_max(now, Ordering::SeqCst);
            struct Dec<'a>(&'a AtomicUsize);
            impl Drop for Dec<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _dec = Dec(&rec.running);
            match job.payload.act {
                Act::Ok => {}
                Act::FailTimes(k) => {
                    if job.attempt <= k {
                        return Err(HandlerError::retry(format!(
                            "failing attempt {}",
                            job.attempt
                        )));
                    }
                }
                Act::Permanent => return Err(HandlerError::permanent("bad input")),
                Act::Panic => panic!("poison message {}", job.payload.n),
                Act::SleepMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Act::Hang => std::future::pending::<()>().await,
            }
            rec.done.lock().unwrap().push(job.payload.n);
            Ok(())
        })
    }
}

pub fn topology<F: Fixture>(f: &F, tweak: impl FnOnce(QueueConfig) -> QueueConfig) -> Topology {
    let u = f.unique();
    Topology::new([format!("{u}.x")]).queue_config(tweak(
        QueueConfig::new(format!("{u}.work"))
            .bind(format!("{u}.x"), "task.#")
            .retry_delay(f.retry_delay())
            .handler_timeout(Duration::from_secs(5))
            .visibility_timeout(Duration::from_millis(1500))
            .prefetch(10),
    ))
}

pub fn qname<F: Fixture>(f: &F) -> String {
    format!("{}.work", f.unique())
}

pub struct Running {
    pub stop: Option<oneshot::Sender<()>>,
    pub join: JoinHandle<Result<WorkerReport, QueueError>>,
}

impl Running {
    pub async fn stop(mut self) -> WorkerReport {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join.await.unwrap().unwrap()
    }
}

pub fn spawn<B: Backend>(worker: Worker<B>) -> Running {
    let (tx, rx) = oneshot::channel();
    let join = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        join,
    }
}

pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_depth<B: Backend>(
    q: &Queue<B>,
    name: &str,
    f: impl Fn(arq_queue::QueueStats) -> bool,
) {
    let start = Instant::now();
    loop {
        let info = q.list().await.unwrap();
        let s = info.iter().find(|i| i.name == name).unwrap().stats;
        if f(s) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "queue stats never matched: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn exchange<F: Fixture>(f: &F) -> String {
    format!("{}.x", f.unique())
}

pub async fn publish<B: Backend>(q: &Queue<B>, ex: &str, task: Task) -> arq_queue::MessageId {
    q.publish_envelope(ex, "task.run", Envelope::new(task))
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------

/// Typed publish → handler → ack; tenant and trace restored; declare is idempotent; metrics.
pub async fn round_trip<F: Fixture>(f: &F) {
    let t = topology(f, |q| q);
    let backend = f.backend().await;
    // Declaring twice changes nothing.
    backend.declare(&t).await.unwrap();
    let registry = MetricsRegistry::new();
    let q = Queue::new(backend, t.clone())
        .await
        .unwrap()
        .with_metrics(QueueMetrics::register(&registry).unwrap());
    let rec = Arc::new(Recorder::default());
    let tenant = TenantId::generate();
    let trace = TraceContext::new_root(true);
    let ex = exchange(f);
    for n in 0..20 {
        let env = Envelope::new(Task { n, act: Act::Ok })
            .with_tenant(tenant)
            .with_trace(trace.clone())
            .with_header("h", "v");
        q.publish_envelope(&ex, "task.run", env).await.unwrap();
    }
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap(),
    );
    wait_until("20 handled", Duration::from_secs(20), || {
        rec.done_count() == 20
    })
    .await;
    wait_depth(&q, &qname(f), |s| s.depth() == 0).await;
    let report = w.stop().await;
    assert_eq!(report.abandoned, 0);
    let seen = rec.seen.lock().unwrap().clone();
    for s in &seen {
        assert_eq!(s.tenant, Some(tenant));
        assert_eq!(
            s.trace_id.as_deref(),
            Some(trace.parent.trace_id_hex().as_str())
        );
        assert_eq!(s.attempt, 1);
    }
    let mut ns: Vec<u64> = rec.done.lock().unwrap().clone();
    ns.sort_unstable();
    assert_eq!(ns, (0..20).collect::<Vec<_>>());
    let text = registry.encode();
    let qn = qname(f);
    assert!(
        text.contains(&format!("arq_queue_acked_total{{queue=\"{qn}\"}} 20")),
        "{text}"
    );
    assert!(
        text.contains(&format!("arq_queue_delivered_total{{queue=\"{qn}\"}} 20")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "arq_queue_published_total{{exchange=\"{ex}\"}} 20"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("arq_queue_depth{{queue=\"{qn}\"}} 0")),
        "{text}"
    );
    assert!(
        text.contains("arq_queue_processing_seconds_count"),
        "{text}"
    );
    f.cleanup(&t).await;
}

/// PITFALLS 62: an unroutable publish is an error, not a silent drop.
pub async fn unroutable_is_an_error<F: Fixture>(f: &F) {
    let t = topology(f, |q| q);
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let err = q
        .publish_envelope(
            &exchange(f),
            "nobody.listens",
            Envelope::new(Task { n: 1, act: Act::Ok }),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Unroutable { .. }), "{err:?}");
    assert!(err.to_string().contains("nobody.listens"));
    let err = q
        .publish_envelope(
            "no-such-exchange",
            "task.run",
            Envelope::new(Task { n: 1, act: Act::Ok }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::Unknown { .. } | QueueError::Unroutable { .. }
        ),
        "{err:?}"
    );
    wait_depth(&q, &qname(f), |s| s.depth() == 0).await;
    f.cleanup(&t).await;
}

/// PITFALLS 60 + 61: a poison message is retried after the configured delay, dead-lettered
/// after 3 attempts with its history, and never blocks the others. Then peek, requeue, purge.
pub async fn poison_goes_to_dead_letters<F: Fixture>(f: &F) {
    let t = topology(f, |q| q.concurrency(4));
    let registry = MetricsRegistry::new();
    let q = Queue::new(f.backend().await, t.clone())
        .await
        .unwrap()
        .with_metrics(QueueMetrics::register(&registry).unwrap());
    let rec = Arc::new(Recorder::default());
    let ex = exchange(f);
    let poison = publish(
        &q,
        &ex,
        Task {
            n: 666,
            act: Act::FailTimes(99),
        },
    )
    .await;
    let flaky = publish(
        &q,
        &ex,
        Task {
            n: 7,
            act: Act::FailTimes(1),
        },
    )
    .await;
    publish(
        &q,
        &ex,
        Task {
            n: 13,
            act: Act::Panic,
        },
    )
    .await;
    for n in 100..110 {
        publish(&q, &ex, Task { n, act: Act::Ok }).await;
    }
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap(),
    );
    // The good ones are not blocked behind the poison.
    wait_until("the good messages", Duration::from_secs(10), || {
        let done = rec.done.lock().unwrap();
        (100..110).all(|n| done.contains(&n))
    })
    .await;
    wait_until("the flaky retry", Duration::from_secs(20), || {
        rec.done.lock().unwrap().contains(&7)
    })
    .await;
    wait_depth(&q, &qname(f), |s| {
        s.dead == 2 && s.depth() == 0 && s.waiting_retry == 0
    })
    .await;
    w.stop().await;

    // The flaky message: attempt 2 came no sooner than the retry delay after attempt 1.
    let a = rec.attempts_of(7);
    assert_eq!(a.iter().map(|s| s.attempt).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(a[0].id, flaky);
    assert!(
        a[1].at - a[0].at >= f.retry_delay() - Duration::from_millis(50),
        "{:?}",
        a[1].at - a[0].at
    );

    let p = rec.attempts_of(666);
    assert_eq!(
        p.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let dead = q.peek_dead(&qname(f), 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let d = dead
        .iter()
        .find(|e| e.id == poison)
        .expect("the poison message is dead-lettered");
    assert_eq!(
        d.failures.iter().map(|x| x.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(d.last_error(), Some("failing attempt 3"));
    assert_eq!(d.payload.decode::<Task>().unwrap().n, 666);
    let panicked = dead.iter().find(|e| e.id != poison).unwrap();
    assert!(
        panicked.last_error().unwrap().contains("panicked"),
        "{:?}",
        panicked.failures
    );
    // Peeking left them in place.
    assert_eq!(q.peek_dead(&qname(f), 10).await.unwrap().len(), 2);
    let qn = qname(f);
    let text = registry.encode();
    assert!(
        text.contains(&format!(
            "arq_queue_dead_lettered_total{{queue=\"{qn}\"}} 2"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("arq_queue_retried_total{{queue=\"{qn}\"}} 5")),
        "{text}"
    );

    // Requeue one: it comes back with a fresh attempt count and its history.
    assert_eq!(q.requeue_dead(&qn, 1).await.unwrap(), 1);
    wait_depth(&q, &qn, |s| s.dead == 1 && s.ready == 1).await;
    assert_eq!(q.purge_dead(&qn).await.unwrap(), 1);
    assert_eq!(q.purge(&qn).await.unwrap(), 1);
    wait_depth(&q, &qn, |s| s.dead == 0 && s.depth() == 0).await;
    f.cleanup(&t).await;
}

/// Permanent errors and undecodable payloads skip the remaining attempts.
pub async fn permanent_failures_skip_retries<F: Fixture>(f: &F) {
    let t = topology(f, |q| q);
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let ex = exchange(f);
    publish(
        &q,
        &ex,
        Task {
            n: 1,
            act: Act::Permanent,
        },
    )
    .await;
    q.publish_envelope(
        &ex,
        "task.other",
        Envelope::new(NotATask { text: "x".into() }),
    )
    .await
    .unwrap();
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap(),
    );
    wait_depth(&q, &qname(f), |s| s.dead == 2 && s.depth() == 0).await;
    w.stop().await;
    assert_eq!(rec.attempts_of(1).len(), 1);
    let dead = q.peek_dead(&qname(f), 10).await.unwrap();
    assert!(dead.iter().all(|e| e.failures.len() == 1));
    assert!(
        dead.iter()
            .any(|e| e.last_error().unwrap().contains("does not decode"))
    );
    f.cleanup(&t).await;
}

/// A handler past its timeout fails the attempt.
pub async fn handler_timeout_fails_the_attempt<F: Fixture>(f: &F) {
    let t = topology(f, |q| {
        q.handler_timeout(Duration::from_millis(200))
            .max_attempts(1)
    });
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let rec = Arc::new(Recorder::default());
    publish(
        &q,
        &exchange(f),
        Task {
            n: 1,
            act: Act::Hang,
        },
    )
    .await;
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap(),
    );
    wait_depth(&q, &qname(f), |s| s.dead == 1 && s.depth() == 0).await;
    w.stop().await;
    let dead = q.peek_dead(&qname(f), 1).await.unwrap();
    assert!(
        dead[0].last_error().unwrap().contains("timed out"),
        "{:?}",
        dead[0].failures
    );
    f.cleanup(&t).await;
}

/// Concurrency per queue is a hard limit, and is reached (contention).
pub async fn concurrency_is_limited<F: Fixture>(f: &F) {
    let t = topology(f, |q| q.concurrency(3).prefetch(20));
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let rec = Arc::new(Recorder::default());
    for n in 0..15 {
        publish(
            &q,
            &exchange(f),
            Task {
                n,
                act: Act::SleepMs(100),
            },
        )
        .await;
    }
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap(),
    );
    wait_until("15 handled", Duration::from_secs(20), || {
        rec.done_count() == 15
    })
    .await;
    w.stop().await;
    assert_eq!(rec.max_running.load(Ordering::SeqCst), 3);
    f.cleanup(&t).await;
}

/// Idempotency by message id: the same message published twice is handled once.
pub async fn idempotency_by_message_id<F: Fixture>(f: &F) {
    let t = topology(f, |q| q.idempotent(true).concurrency(1));
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let env = Envelope::new(Task { n: 5, act: Act::Ok });
    let ex = exchange(f);
    q.publish_envelope(&ex, "task.run", env.clone())
        .await
        .unwrap();
    q.publish_envelope(&ex, "task.run", env).await.unwrap();
    publish(&q, &ex, Task { n: 6, act: Act::Ok }).await;
    // Without a store the worker refuses to start.
    let no_store = Worker::new(q.clone())
        .handle(&qname(f), handler(rec.clone()))
        .unwrap();
    assert!(no_store.run(async {}).await.is_err());
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap()
            .idempotency(MemoryIdempotency::new(1000)),
    );
    wait_depth(&q, &qname(f), |s| s.depth() == 0).await;
    wait_until("both handled", Duration::from_secs(10), || {
        rec.done_count() == 2
    })
    .await;
    w.stop().await;
    assert_eq!(rec.attempts_of(5).len(), 1);
    f.cleanup(&t).await;
}

/// PITFALLS 63: shutdown drains in-flight handlers within the deadline.
pub async fn shutdown_drains_in_flight<F: Fixture>(f: &F) {
    let t = topology(f, |q| q.concurrency(5));
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let rec = Arc::new(Recorder::default());
    for n in 0..5 {
        publish(
            &q,
            &exchange(f),
            Task {
                n,
                act: Act::SleepMs(400),
            },
        )
        .await;
    }
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap()
            .shutdown_deadline(Duration::from_secs(10)),
    );
    wait_until("5 started", Duration::from_secs(10), || {
        rec.started.load(Ordering::SeqCst) == 5
    })
    .await;
    let report = w.stop().await;
    assert_eq!(report.abandoned, 0);
    assert_eq!(report.settled, 5);
    assert_eq!(rec.done_count(), 5);
    wait_depth(&q, &qname(f), |s| s.depth() == 0).await;
    f.cleanup(&t).await;
}

/// PITFALLS 63 + 58: what is unfinished at the deadline is not acked, and another consumer
/// gets it and processes it.
pub async fn shutdown_deadline_acks_nothing_unfinished<F: Fixture>(f: &F) {
    let t = topology(f, |q| q.concurrency(3));
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let ex = exchange(f);
    for n in 0..3 {
        publish(
            &q,
            &ex,
            Task {
                n,
                act: Act::SleepMs(60_000),
            },
        )
        .await;
    }
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap()
            .shutdown_deadline(Duration::from_millis(200)),
    );
    wait_until("3 started", Duration::from_secs(10), || {
        rec.started.load(Ordering::SeqCst) == 3
    })
    .await;
    let report = w.stop().await;
    assert_eq!(report.abandoned, 3);
    assert_eq!(rec.done_count(), 0);
    // A second worker (on a fresh connection) gets them again; this time they finish quickly.
    let q2 = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let rec2 = Arc::new(Recorder::default());
    let quick = {
        let rec2 = rec2.clone();
        move |job: Job<Task>| {
            let rec2 = rec2.clone();
            async move {
                rec2.done.lock().unwrap().push(job.payload.n);
                Ok::<(), HandlerError>(())
            }
        }
    };
    let w2 = spawn(Worker::new(q2.clone()).handle(&qname(f), quick).unwrap());
    wait_until("redelivered", Duration::from_secs(20), || {
        rec2.done_count() == 3
    })
    .await;
    w2.stop().await;
    wait_depth(&q2, &qname(f), |s| s.depth() == 0).await;
    f.cleanup(&t).await;
}

/// PITFALLS 58: a consumer killed mid-message (its task aborted) — the message is redelivered
/// and processed by another consumer.
pub async fn killed_consumer_message_is_redelivered<F: Fixture>(f: &F) {
    let t = topology(f, |q| q.concurrency(2));
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let ex = exchange(f);
    publish(
        &q,
        &ex,
        Task {
            n: 1,
            act: Act::Hang,
        },
    )
    .await;
    publish(
        &q,
        &ex,
        Task {
            n: 2,
            act: Act::Hang,
        },
    )
    .await;
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), handler(rec.clone()))
            .unwrap(),
    );
    wait_until("2 started", Duration::from_secs(10), || {
        rec.started.load(Ordering::SeqCst) == 2
    })
    .await;
    w.join.abort();
    let _ = w.join.await;
    drop(q);
    let q2 = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let done: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let h = {
        let done = done.clone();
        move |job: Job<Task>| {
            let done = done.clone();
            async move {
                *done.lock().unwrap().entry(job.payload.n).or_default() += 1;
                Ok::<(), HandlerError>(())
            }
        }
    };
    let w2 = spawn(Worker::new(q2.clone()).handle(&qname(f), h).unwrap());
    wait_until("both redelivered", Duration::from_secs(20), || {
        done.lock().unwrap().len() == 2
    })
    .await;
    w2.stop().await;
    wait_depth(&q2, &qname(f), |s| s.depth() == 0).await;
    f.cleanup(&t).await;
}

/// A publish from inside a handler inherits the tenant and the trace.
pub async fn context_flows_into_nested_publishes<F: Fixture>(f: &F) {
    let u = f.unique().to_owned();
    let t = Topology::new([format!("{u}.x")])
        .queue_config(QueueConfig::new(format!("{u}.work")).bind(format!("{u}.x"), "task.#"))
        .queue_config(QueueConfig::new(format!("{u}.next")).bind(format!("{u}.x"), "task.other"));
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let tenant = TenantId::generate();
    let trace = TraceContext::new_root(true);
    let env = Envelope::new(Task { n: 1, act: Act::Ok })
        .with_tenant(tenant)
        .with_trace(trace.clone());
    q.publish_envelope(&format!("{u}.x"), "task.run", env)
        .await
        .unwrap();
    let q_inner = q.clone();
    let ex = format!("{u}.x");
    let first = move |_job: Job<Task>| {
        let q = q_inner.clone();
        let ex = ex.clone();
        async move {
            q.publish_envelope(
                &ex,
                "task.other",
                Envelope::new(NotATask {
                    text: "next".into(),
                }),
            )
            .await
            .map_err(HandlerError::retry)?;
            Ok::<(), HandlerError>(())
        }
    };
    let got: Arc<Mutex<Option<(Option<TenantId>, Option<String>)>>> = Arc::default();
    let got2 = got.clone();
    let second = move |job: Job<NotATask>| {
        let got = got2.clone();
        async move {
            *got.lock().unwrap() = Some((job.tenant, job.trace.map(|t| t.parent.trace_id_hex())));
            Ok::<(), HandlerError>(())
        }
    };
    let w = spawn(
        Worker::new(q.clone())
            .handle(&format!("{u}.work"), first)
            .unwrap()
            .handle(&format!("{u}.next"), second)
            .unwrap(),
    );
    wait_until("nested handled", Duration::from_secs(10), || {
        got.lock().unwrap().is_some()
    })
    .await;
    w.stop().await;
    let (t2, tr) = got.lock().unwrap().clone().unwrap();
    assert_eq!(t2, Some(tenant));
    assert_eq!(tr, Some(trace.parent.trace_id_hex()));
    f.cleanup(&t).await;
}

/// Any event of a queue bound to several types, for a handler that dispatches on the type.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AnyTask(pub serde_json::Value);

impl Message for AnyTask {
    const TYPE: &'static str = "task.any";
}

/// One handler for several message types (`task.#`): each job carries its envelope's type.
pub async fn one_handler_sees_each_message_type<F: Fixture>(f: &F) {
    let t = topology(f, |q| q);
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let ex = exchange(f);
    q.publish_envelope(&ex, "task.run", Envelope::new(Task { n: 1, act: Act::Ok }))
        .await
        .unwrap();
    q.publish_envelope(
        &ex,
        "task.other",
        Envelope::new(NotATask {
            text: "second".into(),
        }),
    )
    .await
    .unwrap();
    let seen: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let record = seen.clone();
    let w = spawn(
        Worker::new(q.clone())
            .handle(&qname(f), move |job: Job<AnyTask>| {
                let record = record.clone();
                async move {
                    record
                        .lock()
                        .unwrap()
                        .push((job.message_type.to_string(), job.payload.0));
                    Ok(())
                }
            })
            .unwrap(),
    );
    wait_until("2 handled", Duration::from_secs(20), || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    w.stop().await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen[0].0, "task.other");
    assert_eq!(seen[0].1["text"], "second");
    assert_eq!(seen[1].0, "task.run");
    assert_eq!(seen[1].1["n"], 1);
    f.cleanup(&t).await;
}

/// Expands the suite into `#[tokio::test]`s for a fixture constructor.
#[macro_export]
macro_rules! behaviour {
    ($make:expr) => {
        $crate::behaviour!(@t $make; round_trip, unroutable_is_an_error, poison_goes_to_dead_letters,
            permanent_failures_skip_retries, handler_timeout_fails_the_attempt, concurrency_is_limited,
            idempotency_by_message_id, shutdown_drains_in_flight, shutdown_deadline_acks_nothing_unfinished,
            killed_consumer_message_is_redelivered, context_flows_into_nested_publishes,
            one_handler_sees_each_message_type);
    };
    (@t $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let f = $make.await;
                suite::$name(&f).await;
            }
        )*
    };
}
