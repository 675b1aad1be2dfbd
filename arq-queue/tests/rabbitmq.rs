//! The behavioural suite on RabbitMQ, plus RabbitMQ-specific checks.
#![cfg(feature = "rabbitmq")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;

use arq_core::testing::{TestService, require};
use arq_queue::{Queue, RabbitBackend, Topology};

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
