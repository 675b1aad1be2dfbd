//! The behavioural suite on RabbitMQ, plus RabbitMQ-specific checks.
#![cfg(feature = "rabbitmq")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;

use std::time::Duration;

use arq_core::testing::{TestService, require};
use arq_queue::{Queue, RabbitBackend, Topology};
use suite::Fixture as _;

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
