//! The behavioural suite on the in-memory backend, plus paused-clock tests of its timers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;

use arq_queue::{MemoryBackend, Topology};

struct Mem {
    backend: MemoryBackend,
    unique: String,
}

impl suite::Fixture for Mem {
    type B = MemoryBackend;
    async fn backend(&self) -> MemoryBackend {
        self.backend.clone()
    }
    fn unique(&self) -> &str {
        &self.unique
    }
    async fn cleanup(&self, _topology: &Topology) {}
}

async fn fixture() -> Mem {
    Mem {
        backend: MemoryBackend::new(),
        unique: format!("t{}", uuid::Uuid::new_v4().simple()),
    }
}

behaviour!(fixture());

mod bursts {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use arq_queue::{
        Backend, Envelope, HandlerError, Job, MemoryBackend, Outgoing, Queue, QueueConfig,
        QueueMetrics, QueueStats, Topology, Worker,
    };
    use tokio::sync::Notify;

    use super::suite::{Act, Task};

    /// `fut`, or a test failure after 30 s: a worker that stopped handling must fail the test,
    /// not hang it.
    async fn within<F: Future>(fut: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(30), fut)
            .await
            .expect("the worker stopped handling messages")
    }

    /// Handlers count here; `reached` completes once `at` have run.
    #[derive(Clone)]
    struct Countdown {
        handled: Arc<AtomicU64>,
        done: Arc<Notify>,
        at: u64,
    }

    impl Countdown {
        fn new(at: u64) -> Self {
            Self {
                handled: Arc::default(),
                done: Arc::default(),
                at,
            }
        }

        fn tick(&self) {
            if self.handled.fetch_add(1, Ordering::Relaxed) + 1 == self.at {
                self.done.notify_one();
            }
        }

        fn count(&self) -> u64 {
            self.handled.load(Ordering::Relaxed)
        }

        async fn reached(&self) {
            self.done.notified().await;
        }
    }

    /// A queue `work` on exchange `x` (bound to `task.#`) with its own metrics.
    async fn queue(config: QueueConfig) -> (Queue<MemoryBackend>, QueueMetrics) {
        let metrics = QueueMetrics::unregistered();
        let t = Topology::new(["x"]).queue_config(config.bind("x", "task.#"));
        let q = Queue::new(MemoryBackend::new(), t)
            .await
            .unwrap()
            .with_metrics(metrics.clone());
        (q, metrics)
    }

    /// Tasks `0..n`, published as one batch.
    async fn publish_backlog(q: &Queue<MemoryBackend>, n: u64) {
        let (ex, key): (Arc<str>, Arc<str>) = ("x".into(), "task.run".into());
        let batch = (0..n)
            .map(|n| Outgoing {
                exchange: ex.clone(),
                routing_key: key.clone(),
                envelope: Envelope::new(Task { n, act: Act::Ok }),
            })
            .collect();
        q.publish_batch(batch).await.unwrap();
    }

    /// `n` tasks waiting for two consumers.
    async fn backlog(n: u64) -> (Queue<MemoryBackend>, QueueMetrics) {
        let (q, metrics) = queue(
            QueueConfig::new("work")
                .consumers(2)
                .prefetch(500)
                .concurrency(100),
        )
        .await;
        publish_backlog(&q, n).await;
        (q, metrics)
    }

    async fn stats(q: &Queue<MemoryBackend>) -> QueueStats {
        q.backend()
            .stats(q.topology().queue("work").unwrap())
            .await
            .unwrap()
    }

    /// A backlog many bursts long, on two consumers: each message is handled exactly once,
    /// and the counts the worker tallies per burst add up exactly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_is_handled_once_each_with_exact_metrics() {
        let n = 20_000u64;
        let (q, metrics) = backlog(n).await;
        let seen: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
        let all = Countdown::new(n);
        let (seen2, all2) = (seen.clone(), all.clone());
        let report = Worker::new(q.clone())
            .handle("work", move |job: Job<Task>| {
                seen2[job.payload.n as usize].fetch_add(1, Ordering::Relaxed);
                all2.tick();
                async { Ok::<(), HandlerError>(()) }
            })
            .unwrap()
            .run(async move { within(all.reached()).await })
            .await
            .unwrap();
        assert_eq!(report.settled, n);
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        let m = metrics.for_queue("work");
        assert_eq!(m.delivered.get(), n);
        assert_eq!(m.acked.get(), n);
        assert_eq!(m.processing.count(), n);
        assert_eq!(m.enqueue_to_start.count(), n);
        let stats = stats(&q).await;
        assert_eq!((stats.ready, stats.unacked), (0, 0));
    }

    /// A handler that panics before it returns its future (in the closure's synchronous part)
    /// fails that attempt like any panic: the message is retried, then dead-lettered with the
    /// panic message, and the consumer goes on with the others, its metrics intact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_before_the_handler_future_fails_only_that_message() {
        let (q, metrics) = queue(
            QueueConfig::new("work")
                .max_attempts(2)
                .retry_delay(std::time::Duration::from_millis(10)),
        )
        .await;
        for n in 0..20 {
            q.publish(Task { n, act: Act::Ok }).await.unwrap();
        }
        let done = Countdown::new(19);
        let (done2, done3, q2) = (done.clone(), done.clone(), q.clone());
        let report = Worker::new(q.clone())
            .handle("work", move |job: Job<Task>| {
                assert!(job.payload.n != 10, "no message 10 here");
                done2.tick();
                async { Ok::<(), HandlerError>(()) }
            })
            .unwrap()
            .run(async move {
                within(done3.reached()).await;
                // Both attempts of message 10 have failed once it is dead.
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
                while stats(&q2).await.dead == 0 {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "message 10 never dead-lettered"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap();
        assert_eq!(done.count(), 19);
        let dead = q.peek_dead("work", 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].payload.decode::<Task>().unwrap().n, 10);
        assert_eq!(dead[0].failures.len(), 2);
        assert!(
            dead[0]
                .last_error()
                .unwrap()
                .contains("handler panicked: no message 10 here"),
            "{:?}",
            dead[0].failures
        );
        let m = metrics.for_queue("work");
        assert_eq!(m.acked.get(), 19);
        assert_eq!(m.delivered.get(), 21);
        assert_eq!(m.dead_lettered.get(), 1);
        assert_eq!(report.settled, 21);
    }

    /// Each message's start is its own, even within one burst: twenty handlers that each take
    /// 5 ms, all published at once, waited about 0 + 5 + … + 95 ms between them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enqueue_to_start_is_measured_per_message_within_a_burst() {
        let (q, metrics) = queue(QueueConfig::new("work").concurrency(1)).await;
        publish_backlog(&q, 20).await;
        let done = Countdown::new(20);
        let done2 = done.clone();
        Worker::new(q.clone())
            .handle("work", move |_job: Job<Task>| {
                // Synchronous work, so the whole backlog is one burst.
                std::thread::sleep(std::time::Duration::from_millis(5));
                done2.tick();
                async { Ok::<(), HandlerError>(()) }
            })
            .unwrap()
            .run(async move { within(done.reached()).await })
            .await
            .unwrap();
        let h = metrics.for_queue("work").enqueue_to_start;
        assert_eq!(h.count(), 20);
        // 0.95 s in all if each start is its own (millisecond timestamps: allow 20 ms);
        // about 0 if the burst's first clock reading were used for every message.
        assert!(h.sum() >= 0.93, "enqueue_to_start sum {} s", h.sum());
    }

    /// A backlog does not keep the runtime's only thread: other tasks run while it drains.
    #[test]
    fn a_backlog_leaves_room_for_other_tasks_on_a_single_thread() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let n = 100_000u64;
            let (q, _metrics) = backlog(n).await;
            let all = Countdown::new(n);
            let seen_by_other_task = Arc::new(AtomicU64::new(u64::MAX));
            let (all2, all3, seen2) = (all.clone(), all.clone(), seen_by_other_task.clone());
            let worker = Worker::new(q.clone())
                .handle("work", move |_job: Job<Task>| {
                    all2.tick();
                    async { Ok::<(), HandlerError>(()) }
                })
                .unwrap();
            let run = tokio::spawn(worker.run(async move { all.reached().await }));
            // Give the worker the thread first, then ask for it back.
            tokio::task::yield_now().await;
            tokio::spawn(async move { seen2.store(all3.count(), Ordering::Relaxed) })
                .await
                .unwrap();
            run.await.unwrap().unwrap();
            let seen = seen_by_other_task.load(Ordering::Relaxed);
            assert!(
                seen < n / 2,
                "the other task ran only after {seen} of {n} messages"
            );
        });
    }

    /// Stopping in the middle of a backlog: the worker stops taking deliveries within a burst,
    /// and every message is either handled once or still ready — none lost, none acked twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_in_a_backlog_leaves_the_rest_ready() {
        let n = 50_000u64;
        let (q, metrics) = backlog(n).await;
        let enough = Countdown::new(1_000);
        let enough2 = enough.clone();
        let report = Worker::new(q.clone())
            .handle("work", move |_job: Job<Task>| {
                enough2.tick();
                async { Ok::<(), HandlerError>(()) }
            })
            .unwrap()
            .run({
                let enough = enough.clone();
                async move { within(enough.reached()).await }
            })
            .await
            .unwrap();
        let handled = enough.count();
        assert!(handled >= 1_000 && handled < n, "handled {handled} of {n}");
        assert_eq!(report.settled, handled);
        assert_eq!(report.abandoned, 0);
        assert_eq!(metrics.for_queue("work").acked.get(), handled);
        let stats = stats(&q).await;
        assert_eq!(stats.unacked, 0);
        assert_eq!(stats.ready + handled, n, "lost or duplicated messages");
    }
}

mod paused_clock {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use arq_queue::{
        Envelope, HandlerError, Job, MemoryBackend, Queue, QueueConfig, Topology, Worker,
    };
    use tokio::time::Instant;

    use super::suite::{Act, Task};

    fn topology() -> Topology {
        // Defaults: 3 attempts, 1 h retry delay, dead letters kept 7 days.
        Topology::new(["x"]).queue_config(QueueConfig::new("work").bind("x", "task.#"))
    }

    /// PITFALLS 61: the default retry delay is an hour, and the retry waits for it (on tokio's
    /// paused clock, so the test takes milliseconds).
    #[tokio::test(start_paused = true)]
    async fn retries_wait_the_default_hour() {
        let q = Queue::new(MemoryBackend::new(), topology()).await.unwrap();
        let at: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
        let at2 = at.clone();
        let w = Worker::new(q.clone())
            .handle("work", move |job: Job<Task>| {
                let at = at2.clone();
                async move {
                    at.lock().unwrap().push((job.attempt, Instant::now()));
                    if job.attempt < 3 {
                        return Err(HandlerError::retry("not yet"));
                    }
                    Ok(())
                }
            })
            .unwrap();
        q.publish_envelope("x", "task.run", Envelope::new(Task { n: 1, act: Act::Ok }))
            .await
            .unwrap();
        let at3 = at.clone();
        w.run(async move {
            while at3.lock().unwrap().len() < 3 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
        .await
        .unwrap();
        let at = at.lock().unwrap().clone();
        assert_eq!(at.iter().map(|a| a.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        let gap1 = at[1].1 - at[0].1;
        let gap2 = at[2].1 - at[1].1;
        assert!(
            gap1 >= Duration::from_secs(3600) && gap1 < Duration::from_secs(3602),
            "{gap1:?}"
        );
        assert!(
            gap2 >= Duration::from_secs(3600) && gap2 < Duration::from_secs(3602),
            "{gap2:?}"
        );
        let stats = q.list().await.unwrap()[0].stats;
        assert_eq!((stats.depth(), stats.waiting_retry, stats.dead), (0, 0, 0));
    }

    /// Dead letters are kept 7 days, then expire.
    #[tokio::test(start_paused = true)]
    async fn dead_letters_expire_after_seven_days() {
        let t = Topology::new(["x"])
            .queue_config(QueueConfig::new("work").bind("x", "task.#").max_attempts(1));
        let q = Queue::new(MemoryBackend::new(), t).await.unwrap();
        let w = Worker::new(q.clone())
            .handle("work", |_job: Job<Task>| async {
                Err::<(), _>(HandlerError::retry("always"))
            })
            .unwrap();
        q.publish_envelope("x", "task.run", Envelope::new(Task { n: 1, act: Act::Ok }))
            .await
            .unwrap();
        let q2 = q.clone();
        w.run(async move {
            while q2.list().await.unwrap()[0].stats.dead == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        tokio::time::advance(Duration::from_secs(7 * 24 * 3600 - 60)).await;
        assert_eq!(q.list().await.unwrap()[0].stats.dead, 1);
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(q.list().await.unwrap()[0].stats.dead, 0);
    }
}
