//! The behavioural suite on Redis Streams, plus its fault tests (PITFALLS 59, 64).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arq_core::testing::{TestService, require};
use arq_queue::{
    Envelope, HandlerError, Job, MessageId, Queue, QueueConfig, RedisBackend, Topology, Worker,
};
use suite::{Act, Task};

struct Redis {
    url: String,
    prefix: String,
    unique: String,
}

impl suite::Fixture for Redis {
    type B = RedisBackend;
    async fn backend(&self) -> RedisBackend {
        RedisBackend::connect(&self.url, &self.prefix)
            .await
            .unwrap()
    }
    fn unique(&self) -> &str {
        &self.unique
    }
    async fn cleanup(&self, _topology: &Topology) {
        cleanup_prefix(&self.url, &self.prefix).await;
    }
}

async fn cleanup_prefix(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

async fn fixture() -> Redis {
    let u = uuid::Uuid::new_v4().simple().to_string();
    Redis {
        url: require(TestService::Redis),
        prefix: format!("arqtest-{u}"),
        unique: format!("t{}", &u[..12]),
    }
}

behaviour!(fixture());

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// PITFALLS 64: a consumer that died leaves pending entries; the reaper of a live consumer
/// reclaims them after the visibility timeout; depth is lag + pending throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaper_reclaims_entries_of_a_dead_consumer() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q.visibility_timeout(Duration::from_millis(800)));
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let ex = format!("{}.x", f.unique);
    for n in 0..5 {
        suite::publish(&q, &ex, Task { n, act: Act::Ok }).await;
    }
    // A consumer reads them and dies without acknowledging.
    let mut c = admin(&f.url).await;
    let stream = format!("{}:{}", f.prefix, suite::qname(&f));
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("arq")
        .arg("dead-consumer")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let stats = q.list().await.unwrap()[0].stats;
    assert_eq!((stats.ready, stats.unacked, stats.depth()), (2, 3, 5));

    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&suite::qname(&f), suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_until("the 2 fresh ones", Duration::from_secs(10), || {
        rec.done_count() >= 2
    })
    .await;
    suite::wait_until("the 3 reclaimed ones", Duration::from_secs(20), || {
        rec.done_count() == 5
    })
    .await;
    w.stop().await;
    suite::wait_depth(&q, &suite::qname(&f), |s| s.depth() == 0).await;
    let mut done = rec.done.lock().unwrap().clone();
    done.sort_unstable();
    assert_eq!(done, vec![0, 1, 2, 3, 4]);
    f.cleanup_now(&t).await;
}

impl Redis {
    async fn cleanup_now(&self, t: &Topology) {
        suite::Fixture::cleanup(self, t).await;
    }
}

async fn kill_own_connections(url: &str, name: &str) -> usize {
    let mut c = admin(url).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.split(' ').any(|kv| kv == format!("name={name}")))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix("id=").map(str::to_owned))
        })
        .collect();
    for id in &ids {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    ids.len()
}

/// PITFALLS 59 for Redis: the client connections are killed mid-stream (CLIENT KILL on this
/// test's own connections only). Publishers see errors and retry, consumers reconnect and the
/// reaper recovers entries whose delivery was lost: every message sent is processed, and
/// duplicates are recognisable by message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_stream_lose_nothing() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| {
        q.visibility_timeout(Duration::from_millis(1000))
            .concurrency(8)
            .prefetch(16)
    });
    let backend = suite::Fixture::backend(&f).await;
    let name = backend.client_name();
    let q = Queue::new(backend, t.clone()).await.unwrap();
    let seen: Arc<Mutex<HashMap<MessageId, u32>>> = Arc::default();
    let h = {
        let seen = seen.clone();
        move |job: Job<Task>| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap().entry(job.id).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<(), HandlerError>(())
            }
        }
    };
    let w = suite::spawn(Worker::new(q.clone()).handle(&suite::qname(&f), h).unwrap());
    let ex = format!("{}.x", f.unique);
    let total = 600u64;
    let publisher = {
        let q = q.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut errors = 0;
            for n in 0..total {
                let env = Envelope::new(Task { n, act: Act::Ok });
                let id = env.id;
                // Retry until stored: a publish whose reply was lost may be stored twice;
                // the id makes the duplicate recognisable.
                loop {
                    match q.publish_envelope(&ex, "task.run", env.clone()).await {
                        Ok(_) => break,
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                sent.push(id);
                if n % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (sent, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let killed = kill_own_connections(&f.url, &name).await;
    assert!(
        killed >= 2,
        "expected the shared and the reader connection, killed {killed}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_own_connections(&f.url, &name).await;
    let (sent, _errors) = publisher.await.unwrap();
    suite::wait_until(
        "every sent message processed",
        Duration::from_secs(30),
        || {
            let seen = seen.lock().unwrap();
            sent.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    w.stop().await;
    let distinct = seen.lock().unwrap().len();
    assert_eq!(distinct, sent.len());
    f.cleanup_now(&t).await;
}

/// Declaring again (another process starting) keeps what is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_is_idempotent_and_keeps_messages() {
    let f = fixture().await;
    let t = Topology::new([format!("{}.x", f.unique)]).queue_config(
        QueueConfig::new(format!("{}.work", f.unique)).bind(format!("{}.x", f.unique), "#"),
    );
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    suite::publish(&q, &format!("{}.x", f.unique), Task { n: 1, act: Act::Ok }).await;
    let q2 = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    assert_eq!(q2.list().await.unwrap()[0].stats.ready, 1);
    f.cleanup_now(&t).await;
}

/// The Redis idempotency store is shared between backends (workers) on the same prefix, and
/// its keys expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_idempotency_is_shared_and_expires() {
    use arq_queue::IdempotencyStore;
    use arq_queue::redis_streams::RedisIdempotency;
    let f = fixture().await;
    let a = RedisIdempotency::new(&suite::Fixture::backend(&f).await, Duration::from_secs(60));
    let b = RedisIdempotency::new(&suite::Fixture::backend(&f).await, Duration::from_secs(60));
    let id = MessageId::generate();
    assert!(!a.seen(id).await.unwrap());
    a.record(id).await.unwrap();
    assert!(b.seen(id).await.unwrap());
    let mut c = admin(&f.url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:idem:{id}", f.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    f.cleanup_now(&Topology::new(["x"])).await;
}
