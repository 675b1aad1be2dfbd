//! The behavioural suite on RabbitMQ, plus RabbitMQ-specific checks.
#![cfg(feature = "rabbitmq")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;

use std::sync::Arc;
use std::time::Duration;

use arq_core::testing::{TestService, require};
use arq_queue::{Envelope, Queue, RabbitBackend, Topology, Worker};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use suite::{Act, Fixture as _, Task};

struct Rabbit {
    url: String,
    unique: String,
}

impl suite::Fixture for Rabbit {
    type B = RabbitBackend;
    async fn backend(&self) -> RabbitBackend {
        RabbitBackend::connect(&self.url).await.unwrap()
    }
    fn unique(&self) -> &str {
        &self.unique
    }
    async fn cleanup(&self, topology: &Topology) {
        self.backend().await.delete(topology).await.unwrap();
    }
}

async fn fixture() -> Rabbit {
    Rabbit {
        url: require(TestService::RabbitMq),
        unique: format!(
            "arqtest.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
    }
}

behaviour!(fixture());

/// Work, wait and dead-letter queues are quorum queues on this server (3.10), with the TTLs
/// and dead-letter routes of the topology.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_quorum_queues_with_ttls() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let _q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "type",
            "arguments",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |suffix: &str| {
        let name = format!("{}{suffix}", suite::qname(&f));
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not listed in {text}"))
            .to_owned()
    };
    let work = line("");
    assert!(work.contains("quorum"), "{work}");
    assert!(work.contains("x-delivery-limit"), "{work}");
    let wait = line(".wait");
    assert!(
        wait.contains("quorum") && wait.contains("x-message-ttl") && wait.contains("300"),
        "{wait}"
    );
    assert!(wait.contains("at-least-once"), "{wait}");
    let dead = line(".dead");
    assert!(dead.contains("604800000"), "{dead}");
    suite::Fixture::cleanup(&f, &t).await;
}

/// `connect_rabbitmq_retrying` keeps trying an unreachable broker (on the paused clock) until
/// shutdown, then answers `None`.
#[tokio::test(start_paused = true)]
async fn connect_retrying_waits_for_an_unreachable_broker_until_shutdown() {
    let t = Topology::new(["arqtest.retrying"]);
    // Port 1 on loopback refuses at once, so only the backoff sleeps pass the (paused) time.
    let mut shutdown = std::pin::pin!(tokio::time::sleep(Duration::from_secs(60)));
    let started = tokio::time::Instant::now();
    let none = arq_queue::connect_rabbitmq_retrying("amqp://127.0.0.1:1/%2f", t, &mut shutdown)
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(started.elapsed() >= Duration::from_secs(60));
}

/// A reachable broker gives a queue with the topology declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retrying_declares_the_topology_of_a_reachable_broker() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let mut never = std::pin::pin!(std::future::pending::<()>());
    let queue = arq_queue::connect_rabbitmq_retrying(&f.url, t.clone(), &mut never)
        .await
        .unwrap()
        .expect("the broker answers");
    let listed = queue.list().await.unwrap();
    assert_eq!(listed.len(), t.queues.len());
    f.backend().await.delete(&t).await.unwrap();
}

/// Publishes `body` with `props` straight to `queue` (default exchange), confirmed, as a
/// foreign publisher would.
async fn publish_raw(url: &str, queue: &str, body: &[u8], props: BasicProperties) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "{confirm:?}");
    let _ = conn.close(200, "OK".into()).await;
}

/// Publishes `Task { n, act: Permanent }` and lets a worker dead-letter it.
async fn dead_letter_task(q: &Queue<RabbitBackend>, f: &Rabbit, n: u64, dead_after: u64) {
    let ex = format!("{}.x", f.unique);
    suite::publish(
        q,
        &ex,
        Task {
            n,
            act: Act::Permanent,
        },
    )
    .await;
    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&suite::qname(f), suite::handler(rec))
            .unwrap(),
    );
    suite::wait_depth(q, &suite::qname(f), |s| {
        s.dead == dead_after && s.depth() == 0
    })
    .await;
    w.stop().await;
}

/// The payload's JSON, parsed (it must be valid JSON).
fn payload_json(env: &Envelope) -> serde_json::Value {
    serde_json::from_slice(&env.payload.to_json().unwrap()).expect("the payload is valid JSON")
}

/// Bug: one message in the dead-letter queue that is not an arq envelope (a foreign
/// publisher's, non-JSON) made `peek_dead` fail for all of them. Now every dead letter is
/// returned, in order, the foreign ones as `arq.undecodable` stand-ins (the AMQP message id in
/// a header when there is one, the decode error, the body as a JSON string, lossily decoded).
/// `requeue_dead` moves them back as they are and the consumer rejects them to the dead-letter
/// queue again: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_dead_shows_foreign_messages_in_place() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let qn = suite::qname(&f);
    let dead = format!("{qn}.dead");
    dead_letter_task(&q, &f, 1, 1).await;
    let foreign: &[u8] = b"<xml>\xff not json</xml>";
    publish_raw(
        &f.url,
        &dead,
        foreign,
        BasicProperties::default()
            .with_message_id("ext-42".into())
            .with_timestamp(1_700_000_000),
    )
    .await;
    publish_raw(&f.url, &dead, b"plain text", BasicProperties::default()).await;
    dead_letter_task(&q, &f, 2, 4).await;

    let peeked = q.peek_dead(&qn, 10).await.unwrap();
    let types: Vec<&str> = peeked.iter().map(|e| &*e.message_type).collect();
    assert_eq!(
        types,
        ["task.run", "arq.undecodable", "arq.undecodable", "task.run"]
    );
    assert_eq!(peeked[0].payload.decode::<Task>().unwrap().n, 1);
    assert_eq!(peeked[3].payload.decode::<Task>().unwrap().n, 2);
    let (a, b) = (&peeked[1], &peeked[2]);
    assert_eq!(
        a.headers.get("arq-entry-id").map(String::as_str),
        Some("ext-42")
    );
    assert!(a.id.as_uuid().is_nil());
    assert_eq!(a.created_at_ms, 1_700_000_000_000);
    assert_eq!(
        payload_json(a),
        serde_json::json!("<xml>\u{fffd} not json</xml>")
    );
    assert!(
        a.last_error().unwrap().contains("not a UUID"),
        "{:?}",
        a.failures
    );
    assert!(
        b.headers.is_empty(),
        "no message id, no header: {:?}",
        b.headers
    );
    assert_eq!(payload_json(b), serde_json::json!("plain text"));
    assert!(
        b.last_error().unwrap().contains("no message_id"),
        "{:?}",
        b.failures
    );
    // The limit counts them like any other; peeking left all four in place.
    assert_eq!(q.peek_dead(&qn, 2).await.unwrap().len(), 2);
    suite::wait_depth(&q, &qn, |s| s.dead == 4).await;

    // Requeued as they are: the arq ones fail permanently again, the foreign ones are rejected
    // by the consumer, and all four are back in the dead-letter queue.
    assert_eq!(q.requeue_dead(&qn, 10).await.unwrap(), 4);
    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&qn, suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_depth(&q, &qn, |s| s.dead == 4 && s.depth() == 0).await;
    w.stop().await;
    let again = q.peek_dead(&qn, 10).await.unwrap();
    let mut bodies: Vec<serde_json::Value> = again
        .iter()
        .filter(|e| &*e.message_type == "arq.undecodable")
        .map(payload_json)
        .collect();
    bodies.sort_by_key(ToString::to_string);
    assert_eq!(
        bodies,
        [
            serde_json::json!("<xml>\u{fffd} not json</xml>"),
            serde_json::json!("plain text")
        ]
    );
    let mut tasks: Vec<u64> = again
        .iter()
        .filter_map(|e| e.payload.decode::<Task>().ok())
        .map(|t| t.n)
        .collect();
    tasks.sort_unstable();
    assert_eq!(tasks, [1, 2]);
    assert!(
        again
            .iter()
            .any(|e| e.headers.get("arq-entry-id").map(String::as_str) == Some("ext-42"))
    );
    f.cleanup(&t).await;
}

/// The worker drops a pending `next` whenever nothing is ready at once (and between bursts):
/// a consumer polled once and dropped over and over still rejects a foreign message to the
/// dead-letter queue and hands out the good one, and nothing stays unacknowledged.
#[tokio::test]
async fn next_dropped_after_every_poll_loses_nothing() {
    use futures::FutureExt;

    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let q = Queue::new(f.backend().await, t.clone()).await.unwrap();
    let qn = suite::qname(&f);
    let config = t.queue(&qn).unwrap().clone();
    publish_raw(&f.url, &qn, b"not an envelope", BasicProperties::default()).await;
    let id = suite::publish(&q, &suite::exchange(&f), Task { n: 7, act: Act::Ok }).await;

    let mut consumer = arq_queue::Backend::consume(q.backend(), &config)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        // One poll, then the future is dropped, as the worker's burst does.
        if let Some(Some(d)) = arq_queue::Consumer::next(&mut consumer).now_or_never() {
            break d.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert_eq!(arq_queue::Delivery::envelope(&delivery).id, id);
    arq_queue::Delivery::ack(delivery).await.unwrap();
    // The foreign message went to the dead-letter queue; nothing is left unacknowledged.
    suite::wait_depth(&q, &qn, |s| s.dead == 1 && s.depth() == 0).await;
    arq_queue::Consumer::close(consumer).await;
    f.cleanup(&t).await;
}
