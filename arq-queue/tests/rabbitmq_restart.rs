//! PITFALLS 59 on RabbitMQ: the broker's app is restarted for real (`rabbitmqctl stop_app` /
//! `start_app`) while messages are being published and consumed. Its own test binary, so it
//! never overlaps the other RabbitMQ tests (cargo runs test binaries one after another).
#![cfg(feature = "rabbitmq")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod suite;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arq_core::testing::{TestService, require};
use arq_queue::{Envelope, HandlerError, Job, MessageId, Queue, RabbitBackend, Topology, Worker};
use suite::{Act, Task};

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

fn rabbitmqctl(arg: &str) {
    let out = Command::new("rabbitmqctl")
        .arg(arg)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes sure the broker is started again even if the test fails half-way.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let f = Rabbit {
        url: require(TestService::RabbitMq),
        unique: format!(
            "arqtest.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
    };
    let t = suite::topology(&f, |q| q.concurrency(8).prefetch(50));
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let seen: Arc<Mutex<HashMap<MessageId, u32>>> = Arc::default();
    let h = {
        let seen = seen.clone();
        move |job: Job<Task>| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap().entry(job.id).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<(), HandlerError>(())
            }
        }
    };
    let w = suite::spawn(Worker::new(q.clone()).handle(&suite::qname(&f), h).unwrap());
    let total = 1500u64;
    let confirmed = Arc::new(AtomicUsize::new(0));
    let ex = format!("{}.x", f.unique);
    let publisher = {
        let q = q.clone();
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut failures = 0u32;
            for n in 0..total {
                let env = Envelope::new(Task { n, act: Act::Ok });
                let id = env.id;
                // A publish without a confirm is not stored as far as we know: publish again
                // (the broker may then hold it twice; the id identifies the duplicate).
                while q
                    .publish_envelope(&ex, "task.run", env.clone())
                    .await
                    .is_err()
                {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                sent.push(id);
                confirmed.fetch_add(1, Ordering::SeqCst);
                if n % 25 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (sent, failures)
        })
    };
    suite::wait_until("some traffic", Duration::from_secs(30), || {
        confirmed.load(Ordering::SeqCst) >= 300
    })
    .await;
    let guard = StartAgain;
    tokio::task::spawn_blocking(|| rabbitmqctl("stop_app"))
        .await
        .unwrap();
    let during = confirmed.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(|| rabbitmqctl("start_app"))
        .await
        .unwrap();
    drop(guard);
    let (sent, failures) = publisher.await.unwrap();
    assert!(failures > 0, "the publisher should have seen the outage");
    assert!(during < total as usize, "the restart happened mid-stream");
    suite::wait_until(
        "every confirmed message processed",
        Duration::from_secs(60),
        || {
            let seen = seen.lock().unwrap();
            sent.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    w.stop().await;
    let (distinct, duplicates) = {
        let seen = seen.lock().unwrap();
        (seen.len(), seen.values().filter(|c| **c > 1).count())
    };
    eprintln!(
        "sent {} processed {distinct} redelivered {duplicates} publish failures {failures}",
        sent.len()
    );
    assert_eq!(distinct, sent.len(), "sent = processed (at-least-once)");
    suite::wait_depth(&q, &suite::qname(&f), |s| s.depth() == 0).await;
    suite::Fixture::cleanup(&f, &t).await;
}
