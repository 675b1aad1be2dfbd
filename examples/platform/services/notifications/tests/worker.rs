//! The notifications worker against the real RabbitMQ (`ARQ_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f). Each test declares its own exchange and queues
//! (unique names, so tests and a running worker never share messages) and deletes them when it
//! ends, also when it fails; it fails with a message naming the URL when RabbitMQ is
//! unreachable.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::future::Future;
use std::time::{Duration, Instant};

use arq_core::config::Secret;
use arq_core::metrics::MetricsRegistry;
use arq_core::testing::{TestService, require};
use arq_queue::{Envelope, MessageId, Queue, QueueStats, RabbitBackend, TenantId, WorkerReport};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use notifications as svc;

/// The worker's queues on an exchange of their own, deleted when the test ends.
struct Fixture {
    url: String,
    settings: svc::Settings,
    queue: Queue<RabbitBackend>,
    registry: MetricsRegistry,
}

/// A worker running in the background.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<WorkerReport, arq_queue::QueueError>>,
}

impl Running {
    /// Signals shutdown and waits for the worker to drain.
    async fn stop(self) -> WorkerReport {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap()
    }
}

impl Fixture {
    async fn new() -> Self {
        // Panics with a message naming the URL and how to start RabbitMQ when it is unreachable.
        let url = require(TestService::RabbitMq);
        let unique = format!("{}-test-{}", svc::NAME, MessageId::generate());
        let mut settings = svc::load_settings().unwrap();
        settings.queue.url = Secret::new(url.clone());
        settings.queue.exchange = unique.clone();
        settings.queue.prefix = format!("{unique}.");
        let registry = MetricsRegistry::new();
        let queue = svc::connect(&settings.queue, &registry).await.unwrap();
        Self {
            url,
            settings,
            queue,
            registry,
        }
    }

    /// Starts the worker with every handler registered, as `main` does.
    fn start(&self) -> Running {
        let worker = svc::worker(self.queue.clone(), &self.settings).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Publishes `envelope` to the exchange with routing key `queue`, as a producer would.
    async fn publish(&self, queue: &str, envelope: Envelope) {
        self.queue
            .publish_envelope(&self.settings.queue.exchange, queue, envelope)
            .await
            .unwrap();
    }

    async fn stats(&self, queue: &str) -> QueueStats {
        let name = self.settings.queue.queue_name(queue);
        let all = self.queue.list().await.unwrap();
        all.into_iter().find(|q| q.name == name).unwrap().stats
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let url = self.url.clone();
        let topology = self.queue.topology().clone();
        // Drop runs inside the test's runtime; delete from a thread with a runtime of its own.
        let deleted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let backend = RabbitBackend::connect(&url).await?;
                backend.delete(&topology).await
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("deleting the test's queues failed: {deleted:?}");
        }
    }
}

/// Polls `check` until it holds, for at most 10 s (the broker works at its own pace).
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `email.send` queue and its handler.
mod email_send {
    use super::*;
    use svc::handlers::EmailSend as Msg;

    const QUEUE: &str = "email.send";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn valid_message_is_handled() {
        let f = Fixture::new().await;
        let running = f.start();
        let message = Msg {
            name: "first".into(),
        };
        let envelope = Envelope::new(message).with_tenant(TenantId::generate());
        f.publish(QUEUE, envelope).await;
        let name = f.settings.queue.queue_name(QUEUE);
        let m = f.queue.metrics().for_queue(&name);
        eventually("the message is acknowledged", || async {
            m.acked.get() == 1
        })
        .await;
        let report = running.stop().await;
        assert_eq!(report.abandoned, 0);
        assert_eq!((m.retried.get(), m.dead_lettered.get()), (0, 0));
        let stats = f.stats(QUEUE).await;
        assert_eq!((stats.ready, stats.waiting_retry, stats.dead), (0, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poison_messages_go_to_dead_letters_at_once() {
        let f = Fixture::new().await;
        let running = f.start();
        let name = f.settings.queue.queue_name(QUEUE);
        // A blank name, and a message without a tenant: neither can ever succeed.
        let blank = Msg { name: " ".into() };
        let envelope = Envelope::new(blank).with_tenant(TenantId::generate());
        f.publish(QUEUE, envelope).await;
        let valid = Msg {
            name: "valid".into(),
        };
        f.publish(QUEUE, Envelope::new(valid.clone())).await;
        // One bad message never blocks the others.
        let envelope = Envelope::new(valid).with_tenant(TenantId::generate());
        f.publish(QUEUE, envelope).await;
        let m = f.queue.metrics().for_queue(&name);
        eventually("two dead letters and one success", || async {
            m.dead_lettered.get() == 2 && m.acked.get() == 1
        })
        .await;
        running.stop().await;
        // Permanent failures skip the retries.
        assert_eq!(m.retried.get(), 0);
        assert_eq!(f.stats(QUEUE).await.dead, 2);
        let dead = f.queue.peek_dead(&name, 10).await.unwrap();
        assert_eq!(dead.len(), 2, "{dead:?}");
        let mut errors: Vec<&str> = dead
            .iter()
            .map(|e| {
                assert_eq!(e.failures.len(), 1, "{e:?}");
                assert_eq!(e.failures[0].attempt, 1);
                e.failures[0].error.as_str()
            })
            .collect();
        errors.sort_unstable();
        assert!(errors[0].starts_with("name must be"), "{errors:?}");
        assert!(
            errors[1].starts_with("the message has no tenant"),
            "{errors:?}"
        );
    }
}

/// The `notification.push` queue and its handler.
mod notification_push {
    use super::*;
    use svc::handlers::NotificationPush as Msg;

    const QUEUE: &str = "notification.push";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn valid_message_is_handled() {
        let f = Fixture::new().await;
        let running = f.start();
        let message = Msg {
            name: "first".into(),
        };
        let envelope = Envelope::new(message).with_tenant(TenantId::generate());
        f.publish(QUEUE, envelope).await;
        let name = f.settings.queue.queue_name(QUEUE);
        let m = f.queue.metrics().for_queue(&name);
        eventually("the message is acknowledged", || async {
            m.acked.get() == 1
        })
        .await;
        let report = running.stop().await;
        assert_eq!(report.abandoned, 0);
        assert_eq!((m.retried.get(), m.dead_lettered.get()), (0, 0));
        let stats = f.stats(QUEUE).await;
        assert_eq!((stats.ready, stats.waiting_retry, stats.dead), (0, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poison_messages_go_to_dead_letters_at_once() {
        let f = Fixture::new().await;
        let running = f.start();
        let name = f.settings.queue.queue_name(QUEUE);
        // A blank name, and a message without a tenant: neither can ever succeed.
        let blank = Msg { name: " ".into() };
        let envelope = Envelope::new(blank).with_tenant(TenantId::generate());
        f.publish(QUEUE, envelope).await;
        let valid = Msg {
            name: "valid".into(),
        };
        f.publish(QUEUE, Envelope::new(valid.clone())).await;
        // One bad message never blocks the others.
        let envelope = Envelope::new(valid).with_tenant(TenantId::generate());
        f.publish(QUEUE, envelope).await;
        let m = f.queue.metrics().for_queue(&name);
        eventually("two dead letters and one success", || async {
            m.dead_lettered.get() == 2 && m.acked.get() == 1
        })
        .await;
        running.stop().await;
        // Permanent failures skip the retries.
        assert_eq!(m.retried.get(), 0);
        assert_eq!(f.stats(QUEUE).await.dead, 2);
        let dead = f.queue.peek_dead(&name, 10).await.unwrap();
        assert_eq!(dead.len(), 2, "{dead:?}");
        let mut errors: Vec<&str> = dead
            .iter()
            .map(|e| {
                assert_eq!(e.failures.len(), 1, "{e:?}");
                assert_eq!(e.failures[0].attempt, 1);
                e.failures[0].error.as_str()
            })
            .collect();
        errors.sort_unstable();
        assert!(errors[0].starts_with("name must be"), "{errors:?}");
        assert!(
            errors[1].starts_with("the message has no tenant"),
            "{errors:?}"
        );
    }
}

async fn get(service: &arq_core::edge::EdgeService, uri: &str) -> (StatusCode, String) {
    let response = service
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_the_broker_and_metrics_show_the_queues() {
    let f = Fixture::new().await;
    let health = svc::health(&f.queue, &f.settings.arq);
    let service = svc::service(&f.settings.arq, &f.registry, &health).unwrap();
    assert_eq!(get(&service, "/health/live").await.0, StatusCode::OK);
    let (status, body) = get(&service, "/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["checks"]["rabbitmq"]["status"], "pass", "{body}");
    let (status, metrics) = get(&service, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for queue in svc::QUEUES {
        let name = f.settings.queue.queue_name(queue);
        let line = format!("arq_queue_depth{{queue=\"{name}\"}} 0");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    // Shutting down turns readiness off before anything stops.
    health.set_shutting_down();
    assert_eq!(
        get(&service, "/health/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn queue_settings_are_checked_when_loaded() {
    let settings = svc::load_settings().unwrap().queue;
    let topology = svc::topology(&settings).unwrap();
    assert_eq!(topology.queues.len(), svc::QUEUES.len());
    for (config, queue) in topology.queues.iter().zip(svc::QUEUES) {
        assert_eq!(config.name, *queue);
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.dead_letter_queue(), format!("{queue}.dead"));
        assert_eq!(topology.route(&settings.exchange, queue).unwrap(), [*queue]);
    }

    let entry = |json: Value| json.as_object().unwrap().clone();
    let mut unknown = settings.clone();
    unknown
        .queues
        .push(entry(serde_json::json!({"name": "not.consumed"})));
    let err = format!("{:#}", svc::topology(&unknown).unwrap_err());
    assert!(err.contains("no handler for that queue"), "{err}");

    let mut typo = settings.clone();
    typo.queues = vec![entry(
        serde_json::json!({"name": svc::QUEUES[0], "prefech": 5}),
    )];
    let err = format!("{:#}", svc::topology(&typo).unwrap_err());
    assert!(err.contains("prefech"), "{err}");
}
