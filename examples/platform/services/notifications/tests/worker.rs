//! The notifications worker against the real RabbitMQ (`ARQ_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f), with webhook receivers served by axum on loopback.
//! Each test declares its own exchange and queues (unique names, so tests and a running worker
//! never share messages) and deletes them when it ends, also when it fails; it fails with a
//! message naming the URL when RabbitMQ is unreachable.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arq_core::config::Secret;
use arq_core::metrics::MetricsRegistry;
use arq_core::testing::{TestService, require};
use arq_queue::{Envelope, MessageId, Queue, QueueStats, RabbitBackend, TenantId, WorkerReport};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use notifications as svc;
use svc::email::SendEmail;
use svc::webhooks::{self, PushNotification};

const SECRET: &str = "test-signing-secret-0123456789abcdef";
const EMAIL: &str = "email.send";
const PUSH: &str = "notification.push";

/// The worker's queues on an exchange of their own, deleted when the test ends, and a mailbox
/// directory of its own.
struct Fixture {
    url: String,
    settings: svc::Settings,
    queue: Queue<RabbitBackend>,
    registry: MetricsRegistry,
    handlers: svc::Handlers,
    _mailbox: tempfile::TempDir,
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

/// Sets `key = value` in the `[[queue.queues]]` entry of `queue`.
fn set(settings: &mut svc::Settings, queue: &str, key: &str, value: Value) {
    let entry = settings
        .queue
        .queues
        .iter_mut()
        .find(|q| q.get("name").and_then(Value::as_str) == Some(queue))
        .unwrap();
    entry.insert(key.into(), value);
}

impl Fixture {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A fixture whose settings `tweak` changed before the queues are declared.
    async fn with(tweak: impl FnOnce(&mut svc::Settings)) -> Self {
        // Panics with a message naming the URL and how to start RabbitMQ when it is unreachable.
        let url = require(TestService::RabbitMq);
        let unique = format!("{}-test-{}", svc::NAME, MessageId::generate());
        let mailbox = tempfile::tempdir().unwrap();
        let mut settings = svc::load_settings().unwrap();
        settings.queue.url = Secret::new(url.clone());
        settings.queue.exchange = unique.clone();
        settings.queue.prefix = format!("{unique}.");
        settings.email.mailbox_dir = mailbox.path().join("mail");
        settings.webhooks.signing_secret = Some(Secret::new(SECRET.to_owned()));
        settings.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
        settings.webhooks.timeout_ms = 2_000;
        // Short retries: tests configure them, they never sleep through them.
        for q in svc::QUEUES {
            set(&mut settings, q, "retry_delay", json!("200ms"));
        }
        tweak(&mut settings);
        let registry = MetricsRegistry::new();
        let handlers = svc::Handlers::from_settings(&settings, &registry).unwrap();
        let queue = svc::connect(&settings.queue, &registry).await.unwrap();
        Self {
            url,
            settings,
            queue,
            registry,
            handlers,
            _mailbox: mailbox,
        }
    }

    /// Starts the worker with every handler registered, as `main` does.
    fn start(&self) -> Running {
        let worker = svc::worker(self.queue.clone(), &self.settings, &self.handlers).unwrap();
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

    async fn push(&self, url: &str, event: &str, data: Value) -> MessageId {
        let message = PushNotification {
            url: url.to_owned(),
            event: event.to_owned(),
            data,
        };
        let envelope = Envelope::new(message).with_tenant(TenantId::generate());
        let id = envelope.id;
        self.publish(PUSH, envelope).await;
        id
    }

    async fn stats(&self, queue: &str) -> QueueStats {
        let name = self.settings.queue.queue_name(queue);
        let all = self.queue.list().await.unwrap();
        all.into_iter().find(|q| q.name == name).unwrap().stats
    }

    fn counters(&self, queue: &str) -> arq_queue::PerQueue {
        self.queue
            .metrics()
            .for_queue(&self.settings.queue.queue_name(queue))
    }

    /// The dead letters of `queue` as `notifications dead-letters` prints them.
    async fn dead_letters(&self, queue: &str) -> Vec<Value> {
        svc::ops::dead_letters(&self.queue, &self.settings.queue, queue, 100)
            .await
            .unwrap()
    }

    fn mailbox(&self) -> PathBuf {
        self.settings.email.mailbox_dir.clone()
    }

    /// The `.eml` files in the mailbox, sorted.
    fn mails(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.mailbox())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
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

/// Polls `check` until it holds, for at most 15 s (the broker works at its own pace).
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    signature_ok: bool,
}

/// A webhook receiver on loopback answering the statuses of `script` in turn (the last one
/// from then on), checking each request's signature as a real receiver would.
struct Receiver {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Self {
        let script: Arc<Vec<u16>> = Arc::new(script.to_vec());
        let hits = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (h, r) = (hits.clone(), received.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (script, hits, received) = (script.clone(), h.clone(), r.clone());
                async move {
                    let n = hits.fetch_add(1, Ordering::SeqCst);
                    let signature = headers
                        .get(webhooks::SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let now = chrono_now();
                    let signature_ok =
                        webhooks::verify_signature(SECRET.as_bytes(), signature, &body, now, 300)
                            .is_ok();
                    received.lock().unwrap().push(Received {
                        headers,
                        body,
                        signature_ok,
                    });
                    let status = script[n.min(script.len() - 1)];
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            hits,
            received,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.addr.port())
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn chrono_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn email(to: &str, subject: &str) -> SendEmail {
    SendEmail {
        to: to.into(),
        subject: subject.into(),
        body: "You were assigned a task.\nIt is due tomorrow.".into(),
        task_id: Some(uuid::Uuid::nil()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_is_written_to_the_mailbox_once_even_when_redelivered() {
    let f = Fixture::new().await;
    let running = f.start();
    let tenant = TenantId::generate();
    let envelope = Envelope::new(email("ada@example.com", "Task assigned to you: ship it"))
        .with_tenant(tenant);
    let id = envelope.id;
    // The same message (same id) twice, as a redelivery after a lost acknowledgement would be.
    f.publish(EMAIL, envelope.clone()).await;
    let m = f.counters(EMAIL);
    eventually("the first delivery is acknowledged", || async {
        m.acked.get() == 1
    })
    .await;
    let path = f.mailbox().join(format!("{id}.eml"));
    let first = std::fs::read_to_string(&path).unwrap();
    f.publish(EMAIL, envelope).await;
    eventually("the redelivery is acknowledged", || async {
        m.acked.get() == 2
    })
    .await;
    running.stop().await;
    assert_eq!(f.mails(), [format!("{id}.eml")]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        first,
        "not rewritten"
    );
    assert_eq!((m.retried.get(), m.dead_lettered.get()), (0, 0));
    let (head, body) = first.split_once("\r\n\r\n").unwrap();
    let headers: Vec<&str> = head.split("\r\n").collect();
    for h in [
        "From: Platform <notifications@platform.example>",
        "To: ada@example.com",
        "Subject: Task assigned to you: ship it",
        &format!("Message-ID: <{id}@platform.example>"),
        &format!("X-Arq-Tenant: {tenant}"),
        "X-Arq-Task-Id: 00000000-0000-0000-0000-000000000000",
    ] {
        assert!(headers.contains(&h), "{h} not in {headers:?}");
    }
    assert_eq!(body, "You were assigned a task.\r\nIt is due tomorrow.\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_email_is_dead_lettered_with_its_reason_and_writes_nothing() {
    let f = Fixture::new().await;
    let running = f.start();
    let tenant = TenantId::generate();
    let bad_address = Envelope::new(email("not-an-address", "hello")).with_tenant(tenant);
    let empty_subject = Envelope::new(email("ada@example.com", "  ")).with_tenant(tenant);
    let ids = [bad_address.id, empty_subject.id];
    f.publish(EMAIL, bad_address).await;
    f.publish(EMAIL, empty_subject).await;
    // One bad message never blocks the others.
    let good = Envelope::new(email("ada@example.com", "fine")).with_tenant(tenant);
    let good_id = good.id;
    f.publish(EMAIL, good).await;
    let m = f.counters(EMAIL);
    eventually("two dead letters and one delivery", || async {
        m.dead_lettered.get() == 2 && m.acked.get() == 1
    })
    .await;
    running.stop().await;
    // Permanent: no retries, and only the good message reached the mailbox.
    assert_eq!(m.retried.get(), 0);
    assert_eq!(f.mails(), [format!("{good_id}.eml")]);
    assert_eq!(f.stats(EMAIL).await.dead, 2);
    let mut dead = f.dead_letters(EMAIL).await;
    dead.sort_by_key(|d| d["reason"].as_str().unwrap().to_owned());
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["reason"], "`subject` is empty");
    assert_eq!(dead[0]["id"], ids[1].to_string());
    assert!(
        dead[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("`to` is not an e-mail address: \"not-an-address\""),
        "{dead:?}"
    );
    for d in &dead {
        assert_eq!(d["attempts"], 1, "{d}");
        assert_eq!(d["type"], EMAIL);
        assert_eq!(d["tenant"], tenant.to_string());
        assert_eq!(d["failures"].as_array().unwrap().len(), 1);
    }
    assert_eq!(dead[1]["payload"]["to"], "not-an-address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_subcommand_feeds_the_worker_and_refuses_what_cannot_be_routed() {
    let f = Fixture::new().await;
    let running = f.start();
    let tenant = TenantId::generate();
    let json = r#"{"to": "ops@example.com", "subject": "hi", "body": "b"}"#;
    let line = svc::ops::publish(&f.queue, &f.settings.queue, EMAIL, json, Some(tenant))
        .await
        .unwrap();
    assert_eq!(line["routing_key"], EMAIL);
    assert_eq!(line["tenant"], tenant.to_string());
    let id = line["id"].as_str().unwrap().to_owned();
    let path = f.mailbox().join(format!("{id}.eml"));
    eventually("the published e-mail is in the mailbox", || async {
        path.exists()
    })
    .await;
    running.stop().await;
    let err = svc::ops::publish(&f.queue, &f.settings.queue, "nobody.listens", "{}", None)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("nobody.listens"), "{err:#}");
    let err = svc::ops::publish(&f.queue, &f.settings.queue, EMAIL, "{not json", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the payload is not JSON"), "{err}");
    let err = svc::ops::dead_letters(&f.queue, &f.settings.queue, "other.queue", 10)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not one of this worker's queues"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_delivered_signed() {
    let f = Fixture::new().await;
    let receiver = Receiver::start(&[200]).await;
    let running = f.start();
    let data = json!({"task": {"id": 7, "title": "ship"}});
    let id = f
        .push(&receiver.url(), "task.completed", data.clone())
        .await;
    let m = f.counters(PUSH);
    eventually("the delivery is acknowledged", || async {
        m.acked.get() == 1
    })
    .await;
    running.stop().await;
    assert_eq!(receiver.hits(), 1);
    let got = &receiver.received()[0];
    assert!(got.signature_ok, "the receiver verified the signature");
    assert_eq!(serde_json::from_slice::<Value>(&got.body).unwrap(), data);
    assert_eq!(got.headers["x-arq-event"], "task.completed");
    assert_eq!(got.headers["x-arq-delivery"], id.to_string().as_str());
    assert_eq!(got.headers["content-type"], "application/json");
    // A signature made with another secret would not have verified.
    let forged = webhooks::signature(
        b"another-secret-0123456789abcdef!!",
        chrono_now(),
        &got.body,
    );
    assert!(
        webhooks::verify_signature(SECRET.as_bytes(), &forged, &got.body, chrono_now(), 300)
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_twice_gets_the_delivery_on_the_third_attempt() {
    let f = Fixture::with(|s| set(s, PUSH, "max_attempts", json!(3))).await;
    let receiver = Receiver::start(&[500, 500, 200]).await;
    let running = f.start();
    let id = f
        .push(&receiver.url(), "task.created", json!({"n": 1}))
        .await;
    let m = f.counters(PUSH);
    eventually("the third attempt is acknowledged", || async {
        m.acked.get() == 1
    })
    .await;
    running.stop().await;
    assert_eq!(receiver.hits(), 3);
    assert_eq!(m.retried.get(), 2);
    assert_eq!(m.dead_lettered.get(), 0);
    let received = receiver.received();
    assert!(received.iter().all(|r| r.signature_ok));
    // Every attempt carries the same delivery id, so the receiver can deduplicate.
    assert!(
        received
            .iter()
            .all(|r| r.headers["x-arq-delivery"] == id.to_string().as_str())
    );
    let stats = f.stats(PUSH).await;
    assert_eq!((stats.ready, stats.waiting_retry, stats.dead), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_goes_straight_to_dead_letters() {
    let f = Fixture::new().await;
    let receiver = Receiver::start(&[400]).await;
    let running = f.start();
    f.push(&receiver.url(), "task.created", json!({})).await;
    let m = f.counters(PUSH);
    eventually("the message is dead-lettered", || async {
        m.dead_lettered.get() == 1
    })
    .await;
    running.stop().await;
    assert_eq!(receiver.hits(), 1);
    assert_eq!(m.retried.get(), 0);
    let dead = f.dead_letters(PUSH).await;
    assert_eq!(dead.len(), 1);
    let expected = format!(
        "POST http://127.0.0.1:{}/hook: answered 400 Bad Request",
        receiver.addr.port()
    );
    assert_eq!(dead[0]["reason"], expected.as_str());
    assert_eq!(dead[0]["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_allowed_is_dead_lettered_without_a_request() {
    let f = Fixture::new().await;
    let receiver = Receiver::start(&[200]).await;
    let running = f.start();
    // The same receiver, by a name that is not in allowed_hosts.
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    f.push(&url, "task.created", json!({})).await;
    f.push("ftp://127.0.0.1/hook", "task.created", json!({}))
        .await;
    let m = f.counters(PUSH);
    eventually("both are dead-lettered", || async {
        m.dead_lettered.get() == 2
    })
    .await;
    running.stop().await;
    assert_eq!(receiver.hits(), 0, "no request was sent");
    let mut reasons: Vec<String> = f
        .dead_letters(PUSH)
        .await
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_owned())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "`url` must be an http or https URL: \"ftp://127.0.0.1/hook\"",
            "host localhost is not in [webhooks] allowed_hosts; nothing was sent",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_stops_requests_to_its_endpoint_only() {
    let f = Fixture::with(|s| {
        // One delivery at a time, so the breaker sees the failures in order.
        set(s, PUSH, "prefetch", json!(1));
        set(s, PUSH, "concurrency", json!(1));
        set(s, PUSH, "max_attempts", json!(2));
        set(s, PUSH, "retry_delay", json!("500ms"));
        s.webhooks.breaker.window_size = 3;
        s.webhooks.breaker.min_calls = 3;
        s.webhooks.breaker.open_duration_ms = 60_000;
    })
    .await;
    let broken = Receiver::start(&[500]).await;
    let healthy = Receiver::start(&[200]).await;
    let running = f.start();
    for n in 0..3 {
        f.push(&broken.url(), "task.created", json!({"n": n})).await;
    }
    let endpoint = svc::webhooks::Target::parse(&broken.url())
        .unwrap()
        .endpoint;
    let breaker = f
        .handlers
        .webhooks
        .breakers()
        .for_endpoint(&endpoint)
        .unwrap();
    eventually("the broken endpoint's breaker opens", || async {
        breaker.state() == arq_core::resilience::CircuitState::Open
    })
    .await;
    assert_eq!(broken.hits(), 3);
    // While it is open: more deliveries to it, and deliveries to another endpoint.
    for n in 3..5 {
        f.push(&broken.url(), "task.created", json!({"n": n})).await;
    }
    for n in 0..3 {
        f.push(&healthy.url(), "task.created", json!({"n": n}))
            .await;
    }
    let m = f.counters(PUSH);
    eventually(
        "the broken endpoint's 5 messages are dead and the healthy one has its 3",
        || async { m.dead_lettered.get() == 5 && m.acked.get() == 3 },
    )
    .await;
    running.stop().await;
    assert_eq!(broken.hits(), 3, "no request while the breaker is open");
    assert_eq!(healthy.hits(), 3);
    let dead = f.dead_letters(PUSH).await;
    assert_eq!(dead.len(), 5);
    let open = format!("the circuit breaker for {endpoint} is open");
    for d in &dead {
        assert_eq!(d["attempts"], 2, "{d}");
        assert!(d["reason"].as_str().unwrap().starts_with(&open), "{d}");
    }
    // /metrics shows the breaker's state per endpoint and the dead letters.
    let health = svc::health(&f.queue, &f.settings.arq);
    let service = svc::service(&f.settings.arq, &f.registry, &health).unwrap();
    let (_, metrics) = get(&service, "/metrics").await;
    let state = format!("arq_circuit_breaker_state{{dependency=\"webhook:{endpoint}\"}} 1");
    assert!(metrics.contains(&state), "{state} not in:\n{metrics}");
    let name = f.settings.queue.queue_name(PUSH);
    let dead_total = format!("arq_queue_dead_lettered_total{{queue=\"{name}\"}} 5");
    assert!(
        metrics.contains(&dead_total),
        "{dead_total} not in:\n{metrics}"
    );
}

#[test]
fn it_refuses_to_start_without_a_signing_secret() {
    let mut settings = svc::load_settings().unwrap();
    assert!(
        settings.webhooks.signing_secret.is_none(),
        "no secret in the repository's config"
    );
    let err = svc::Handlers::from_settings(&settings, &MetricsRegistry::new()).unwrap_err();
    assert!(
        err.to_string()
            .contains("set ARQ__WEBHOOKS__SIGNING_SECRET"),
        "{err}"
    );
    settings.webhooks.signing_secret = Some(Secret::new("short".into()));
    let err = svc::Handlers::from_settings(&settings, &MetricsRegistry::new()).unwrap_err();
    assert!(err.to_string().contains("shorter than 32 bytes"), "{err}");
    settings.webhooks.signing_secret = Some(Secret::new(SECRET.into()));
    settings.webhooks.allowed_hosts = vec!["https://a.example".into()];
    let err = svc::Handlers::from_settings(&settings, &MetricsRegistry::new()).unwrap_err();
    assert!(err.to_string().contains("allowed_hosts entry"), "{err}");
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
