//! The behavioural suite on Redis Streams, plus its fault tests (PITFALLS 59, 64).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod suite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arq_core::testing::{TestService, require};
use arq_queue::{
    Backend, Consumer, Delivery, Envelope, Failure, HandlerError, Job, MessageId, Outgoing,
    Payload, Queue, QueueConfig, RedisBackend, Topology, Worker,
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

/// The stream, retry-set and dead-letter keys of the suite's queue.
fn keys(f: &Redis) -> (String, String, String) {
    let stream = format!("{}:{}", f.prefix, suite::qname(f));
    (
        stream.clone(),
        format!("{stream}.wait"),
        format!("{stream}.dead"),
    )
}

/// A `task.run` entry value in the current wire form, `<n>:<header><payload>`, written by hand
/// (as another writer or a test of the format would), with a fresh id and the given attempt.
fn current_form(attempt: u32, payload: &str) -> String {
    let header = format!(
        r#"{{"id":"{}","type":"task.run","attempt":{attempt},"created_at_ms":1}}"#,
        MessageId::generate()
    );
    format!("{}:{header}{payload}", header.len())
}

/// `XRANGE`'s reply: entries as (id, [(field, value)]).
type Range = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// An entry's fields by name, from `XRANGE key - +`.
async fn entries_of(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<HashMap<String, Vec<u8>>> {
    let v: Range = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .unwrap();
    v.into_iter()
        .map(|(_, fields)| fields.into_iter().collect())
        .collect()
}

/// A rolling upgrade: entries written by the previous wire form (one field `e` holding the
/// whole JSON envelope, which is what `Envelope::encode` still produces) in the stream, the
/// retry set and the dead-letter stream are consumed, retried with their history, promoted,
/// dead-lettered, peeked and requeued by the current code, written with plain Redis commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_wire_form_is_consumed_retried_and_dead_lettered() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let qn = suite::qname(&f);
    let (stream, wait, dead) = keys(&f);
    let mut c = admin(&f.url).await;
    let old = |n: u64, act: Act| Envelope::new(Task { n, act });
    let conn = c.clone();
    let xadd_old = move |key: String, env: Envelope| {
        let mut c = conn.clone();
        async move {
            let _: String = redis::cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("e")
                .arg(env.encode().unwrap())
                .query_async(&mut c)
                .await
                .unwrap();
        }
    };
    // In the stream: one that succeeds, one that fails once, one that always fails.
    xadd_old(stream.clone(), old(1, Act::Ok)).await;
    xadd_old(stream.clone(), old(2, Act::FailTimes(1))).await;
    xadd_old(stream.clone(), old(3, Act::FailTimes(100))).await;
    // In the retry set, due now: a second attempt with the first one's failure.
    let mut retried = old(4, Act::Ok);
    retried.attempt = 2;
    retried.failures.push(Failure {
        attempt: 1,
        at_ms: 1,
        error: "first try".into(),
    });
    let _: u64 = redis::cmd("ZADD")
        .arg(&wait)
        .arg(0)
        .arg(retried.encode().unwrap())
        .query_async(&mut c)
        .await
        .unwrap();
    // In the dead-letter stream: one that ran out of attempts before the upgrade.
    let mut was_dead = old(5, Act::Ok);
    was_dead.attempt = 3;
    was_dead.failures.push(Failure {
        attempt: 3,
        at_ms: 1,
        error: "gave up".into(),
    });
    xadd_old(dead.clone(), was_dead.clone()).await;

    let peeked = q.peek_dead(&qn, 10).await.unwrap();
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].id, was_dead.id);
    assert_eq!(peeked[0].last_error(), Some("gave up"));
    assert_eq!(q.requeue_dead(&qn, 10).await.unwrap(), 1);

    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&qn, suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_until("1, 2, 4 and 5 handled", Duration::from_secs(20), || {
        rec.done_count() == 4
    })
    .await;
    suite::wait_depth(&q, &qn, |s| {
        s.dead == 1 && s.depth() == 0 && s.waiting_retry == 0
    })
    .await;
    w.stop().await;
    let mut done = rec.done.lock().unwrap().clone();
    done.sort_unstable();
    assert_eq!(done, vec![1, 2, 4, 5]);
    let attempts = |n| -> Vec<u32> { rec.attempts_of(n).iter().map(|s| s.attempt).collect() };
    assert_eq!(attempts(1), vec![1]);
    assert_eq!(attempts(2), vec![1, 2]);
    assert_eq!(attempts(3), vec![1, 2, 3]);
    assert_eq!(attempts(4), vec![2]);
    assert_eq!(attempts(5), vec![1], "requeued with a fresh attempt count");

    // The one that always failed is dead-lettered with its whole history, now in the
    // current form.
    let gone = q.peek_dead(&qn, 10).await.unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].payload.decode::<Task>().unwrap().n, 3);
    assert_eq!(
        gone[0]
            .failures
            .iter()
            .map(|x| x.attempt)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(gone[0].last_error(), Some("failing attempt 3"));
    let raw = entries_of(&mut c, &dead).await;
    assert_eq!(raw.len(), 1);
    assert!(raw[0].contains_key("m") && !raw[0].contains_key("e"));
    f.cleanup_now(&t).await;
}

/// The current wire form on Redis: one field `m` = `<n>:<header><payload>`, the header
/// being the envelope without its payload; retries wait in the same form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_header_length_header_payload() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q.retry_delay(Duration::from_secs(600)));
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let (stream, wait, _) = keys(&f);
    let id = suite::publish(
        &q,
        &format!("{}.x", f.unique),
        Task {
            n: 9,
            act: Act::FailTimes(1),
        },
    )
    .await;
    let mut c = admin(&f.url).await;
    let raw = entries_of(&mut c, &stream).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].keys().collect::<Vec<_>>(), vec!["m"]);
    let m = &raw[0]["m"];
    let colon = m.iter().position(|&b| b == b':').unwrap();
    let n: usize = std::str::from_utf8(&m[..colon]).unwrap().parse().unwrap();
    let header: serde_json::Value = serde_json::from_slice(&m[colon + 1..colon + 1 + n]).unwrap();
    assert_eq!(header["id"], id.to_string());
    assert_eq!(header["type"], "task.run");
    assert!(header.get("payload").is_none());
    let payload: Task = serde_json::from_slice(&m[colon + 1 + n..]).unwrap();
    assert_eq!(
        payload,
        Task {
            n: 9,
            act: Act::FailTimes(1)
        }
    );

    // The failed attempt waits in the retry set in the same form.
    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&suite::qname(&f), suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_depth(&q, &suite::qname(&f), |s| {
        s.waiting_retry == 1 && s.depth() == 0
    })
    .await;
    w.stop().await;
    let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
        .arg(&wait)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    let m = &members[0];
    let colon = m.iter().position(|&b| b == b':').unwrap();
    let n: usize = std::str::from_utf8(&m[..colon]).unwrap().parse().unwrap();
    let header: serde_json::Value = serde_json::from_slice(&m[colon + 1..colon + 1 + n]).unwrap();
    assert_eq!(header["attempt"], 2);
    assert_eq!(header["failures"][0]["error"], "failing attempt 1");
    f.cleanup_now(&t).await;
}

/// Entries no handler can run (a damaged current-form value, a whole envelope that is not
/// JSON, foreign fields, a header without its length) are dead-lettered with the fields they
/// had and an `error` field saying why; a payload that is not JSON fails the typed decode and
/// is dead-lettered as a permanent failure. Nothing panics, and the good message behind them
/// is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_with_the_reason() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let qn = suite::qname(&f);
    let (stream, _, dead) = keys(&f);
    let mut c = admin(&f.url).await;
    let bad: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![("m", b"garbage".to_vec())],
        vec![("m", b"99999:{}".to_vec())],
        vec![(
            "m",
            format!("{}:{{not json}}", "{not json}".len()).into_bytes(),
        )],
        vec![("e", b"{\"not\":\"an envelope\"}".to_vec())],
        vec![("foo", b"bar".to_vec()), ("baz", b"qux".to_vec())],
    ];
    for fields in &bad {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        let _: String = cmd.query_async(&mut c).await.unwrap();
    }
    // A good header with a payload that is not JSON: a handler-level failure.
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("m")
        .arg(current_form(1, "not json"))
        .query_async(&mut c)
        .await
        .unwrap();
    suite::publish(&q, &format!("{}.x", f.unique), Task { n: 7, act: Act::Ok }).await;

    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&qn, suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_until("the good one", Duration::from_secs(10), || {
        rec.done_count() == 1
    })
    .await;
    suite::wait_depth(&q, &qn, |s| s.dead == 6 && s.depth() == 0).await;
    w.stop().await;
    assert_eq!(rec.done.lock().unwrap().clone(), vec![7]);

    let raw = entries_of(&mut c, &dead).await;
    assert_eq!(raw.len(), 6);
    for (fields, entry) in bad.iter().zip(&raw) {
        for (k, v) in fields {
            assert_eq!(&entry[*k], v, "{k} kept as it was");
        }
        let error = String::from_utf8(entry["error"].clone()).unwrap();
        assert!(error.contains("not an arq"), "{error}");
    }
    // The undecodable payload went through the handler path: a regular dead letter with the
    // failure recorded, no `error` field.
    let last = &raw[5];
    assert!(!last.contains_key("error"));
    let m = String::from_utf8(last["m"].clone()).unwrap();
    assert!(
        m.ends_with("not json") && m.contains("does not decode"),
        "{m}"
    );
    // Peeking shows all six in order: the five it cannot decode as `arq.undecodable`
    // stand-ins naming their entries, then the regular dead letter.
    let peeked = q.peek_dead(&qn, 10).await.unwrap();
    let types: Vec<&str> = peeked.iter().map(|e| &*e.message_type).collect();
    assert_eq!(
        types,
        [["arq.undecodable"; 5].as_slice(), &["task.run"]].concat()
    );
    for env in &peeked[..5] {
        assert!(env.headers.contains_key("arq-entry-id"), "{env:?}");
        assert!(env.last_error().unwrap().contains("not an arq"), "{env:?}");
    }
    assert!(peeked[5].last_error().unwrap().contains("does not decode"));
    // Requeueing puts them back as they were (without the error), and they end up dead
    // again, not handled and not lost.
    assert_eq!(q.requeue_dead(&qn, 10).await.unwrap(), 6);
    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&qn, suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_depth(&q, &qn, |s| s.dead == 6 && s.depth() == 0).await;
    w.stop().await;
    assert_eq!(rec.done_count(), 0);
    let again = entries_of(&mut c, &dead).await;
    for (fields, entry) in bad.iter().zip(&again) {
        let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        let mut have: Vec<&str> = entry
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "error")
            .collect();
        have.sort_unstable();
        let mut want = names.clone();
        want.sort_unstable();
        assert_eq!(have, want);
    }
    f.cleanup_now(&t).await;
}

/// Mixed versions during a rolling upgrade, and foreign entries too big or too bare to copy as
/// they are: nothing is lost. A previous version's promotion re-adds a current-form retry
/// member under the previous field `e` (it does not look at the form): it is handled. A foreign
/// entry with thousands of fields (more than Lua's `unpack` takes) is dead-lettered with its
/// first fields and a reason naming what was not kept, instead of vanishing in a script that
/// failed after acknowledging it. An entry with nothing but an `error` field keeps it through
/// dead-lettering and requeueing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_versions_and_oversized_foreign_entries_lose_nothing() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let qn = suite::qname(&f);
    let (stream, _, dead) = keys(&f);
    let mut c = admin(&f.url).await;
    // The current form, written under `e` as a previous version's promotion would.
    let payload = serde_json::to_string(&Task {
        n: 11,
        act: Act::Ok,
    })
    .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("e")
        .arg(current_form(2, &payload))
        .query_async(&mut c)
        .await
        .unwrap();
    // 4 500 foreign fields.
    let mut huge = redis::cmd("XADD");
    huge.arg(&stream).arg("*");
    for i in 0..4_500 {
        huge.arg(format!("f{i}")).arg(i);
    }
    let _: String = huge.query_async(&mut c).await.unwrap();
    // Nothing but an error.
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("error")
        .arg("why")
        .query_async(&mut c)
        .await
        .unwrap();

    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&qn, suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_until(
        "the current-form entry under e",
        Duration::from_secs(10),
        || rec.done_count() == 1,
    )
    .await;
    suite::wait_depth(&q, &qn, |s| s.dead == 2 && s.depth() == 0).await;
    w.stop().await;
    assert_eq!(rec.done.lock().unwrap().clone(), vec![11]);

    let raw = entries_of(&mut c, &dead).await;
    assert_eq!(raw.len(), 2);
    let big = &raw[0];
    assert_eq!(big["f0"], b"0");
    assert_eq!(big["f999"], b"999");
    assert!(!big.contains_key("f1000"));
    let error = String::from_utf8(big["error"].clone()).unwrap();
    assert!(error.contains("last 3500 fields were not kept"), "{error}");
    assert!(raw[1].contains_key("error"));
    // Requeueing both does not fail on the field-less copy, and both come back dead.
    assert_eq!(q.requeue_dead(&qn, 10).await.unwrap(), 2);
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&qn, suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_depth(&q, &qn, |s| s.dead == 2 && s.depth() == 0).await;
    w.stop().await;
    assert_eq!(rec.done_count(), 1);
    f.cleanup_now(&t).await;
}

/// `XADD key * field value …` with raw bytes; the new entry's id.
async fn xadd(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    fields: &[(&str, &[u8])],
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(c).await.unwrap()
}

/// The consumer's next delivery, within 10 s.
async fn next<C: Consumer>(consumer: &mut C) -> C::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .unwrap()
        .unwrap()
}

/// What `peek_dead` shows for an entry it cannot decode: the payload's JSON, parsed.
fn peeked_payload(env: &Envelope) -> serde_json::Value {
    serde_json::from_slice(&env.payload.to_json().unwrap()).expect("the payload is valid JSON")
}

/// Bug: one dead letter that does not decode made `peek_dead` fail for all of them. Now it
/// returns every entry up to the limit, in order, those it cannot decode as `arq.undecodable`
/// stand-ins (entry id header, the decode error and the recorded reason, the raw value as a JSON
/// string, lossily decoded). `requeue_dead` moves them back as they were, the consumer
/// dead-letters them again (the well-formed ones are handled), and peeking still shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_dead_shows_undecodable_entries_in_place() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let qn = suite::qname(&f);
    let (_, _, dead) = keys(&f);
    let mut c = admin(&f.url).await;
    let task = |n| serde_json::to_string(&Task { n, act: Act::Ok }).unwrap();
    let good1 = current_form(3, &task(1));
    let good2 = current_form(3, &task(2));
    let not_utf8: &[u8] = b"12:\xff\xfe{\"x\":1}";
    let ids = [
        xadd(&mut c, &dead, &[("m", good1.as_bytes())]).await,
        xadd(
            &mut c,
            &dead,
            &[("m", b"garbage \"quoted\""), ("error", b"recorded reason")],
        )
        .await,
        xadd(&mut c, &dead, &[("m", not_utf8)]).await,
        xadd(&mut c, &dead, &[("foo", b"bar"), ("baz", b"qux")]).await,
        xadd(&mut c, &dead, &[("m", good2.as_bytes())]).await,
    ];

    let peeked = q.peek_dead(&qn, 10).await.unwrap();
    assert_eq!(peeked.len(), 5);
    let types: Vec<&str> = peeked.iter().map(|e| &*e.message_type).collect();
    assert_eq!(
        types,
        [
            "task.run",
            "arq.undecodable",
            "arq.undecodable",
            "arq.undecodable",
            "task.run"
        ]
    );
    assert_eq!(peeked[0].payload.decode::<Task>().unwrap().n, 1);
    assert_eq!(peeked[4].payload.decode::<Task>().unwrap().n, 2);
    for (env, id) in peeked[1..4].iter().zip(&ids[1..4]) {
        assert_eq!(env.headers["arq-entry-id"], *id);
        assert!(env.id.as_uuid().is_nil());
        assert_eq!(env.tenant, None);
        let ms: u64 = id.split('-').next().unwrap().parse().unwrap();
        assert_eq!(env.created_at_ms, ms);
        assert_eq!(env.failures.len(), 1);
        assert!(
            env.last_error()
                .unwrap()
                .contains("not an arq stream entry"),
            "{env:?}"
        );
    }
    assert_eq!(
        peeked_payload(&peeked[1]),
        serde_json::json!("garbage \"quoted\"")
    );
    assert!(
        peeked[1].last_error().unwrap().contains("recorded reason"),
        "{:?}",
        peeked[1].failures
    );
    assert_eq!(
        peeked_payload(&peeked[2]),
        serde_json::json!("12:\u{fffd}\u{fffd}{\"x\":1}")
    );
    assert_eq!(
        peeked_payload(&peeked[3]),
        serde_json::json!({"foo": "bar", "baz": "qux"})
    );
    // The limit counts them like any other entry.
    let two = q.peek_dead(&qn, 2).await.unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(two[1].headers["arq-entry-id"], ids[1]);

    // Requeued as they were; the consumer handles the good ones and dead-letters the others
    // again, in the order it reads them.
    assert_eq!(q.requeue_dead(&qn, 10).await.unwrap(), 5);
    let rec = Arc::new(suite::Recorder::default());
    let w = suite::spawn(
        Worker::new(q.clone())
            .handle(&qn, suite::handler(rec.clone()))
            .unwrap(),
    );
    suite::wait_until("the two good ones", Duration::from_secs(10), || {
        rec.done_count() == 2
    })
    .await;
    suite::wait_depth(&q, &qn, |s| s.dead == 3 && s.depth() == 0).await;
    w.stop().await;
    let raw = entries_of(&mut c, &dead).await;
    assert_eq!(raw.len(), 3);
    assert_eq!(raw[0]["m"], b"garbage \"quoted\"");
    assert_eq!(raw[1]["m"], not_utf8);
    assert_eq!(
        (&raw[2]["foo"][..], &raw[2]["baz"][..]),
        (&b"bar"[..], &b"qux"[..])
    );
    let again = q.peek_dead(&qn, 10).await.unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|e| &*e.message_type == "arq.undecodable"));
    assert_eq!(
        peeked_payload(&again[0]),
        serde_json::json!("garbage \"quoted\"")
    );
    assert!(!again[0].headers["arq-entry-id"].is_empty());
    assert_ne!(again[0].headers["arq-entry-id"], ids[1], "a new entry");
    f.cleanup_now(&t).await;
}

/// Bug: an empty payload came back as `null` once the message was retried, dead-lettered or
/// requeued (the re-encoding wrote `null` for it). It stays empty through all three, and on the
/// wire the value ends with the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_payload_stays_empty_through_retry_dead_letter_and_requeue() {
    let f = fixture().await;
    let t = suite::topology(&f, |q| q);
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let qn = suite::qname(&f);
    let (stream, _, dead) = keys(&f);
    let mut c = admin(&f.url).await;
    let b = q.backend();
    let config = t.queues[0].clone();
    let env = Envelope::with_payload("task.empty", Payload::Json(bytes::Bytes::new()));
    let id = env.id;
    b.publish(vec![Outgoing {
        exchange: format!("{}.x", f.unique).into(),
        routing_key: "task.empty".into(),
        envelope: env,
    }])
    .await
    .unwrap();
    let ends_with_header = |m: &[u8]| {
        let colon = m.iter().position(|&b| b == b':').unwrap();
        let n: usize = std::str::from_utf8(&m[..colon]).unwrap().parse().unwrap();
        colon + 1 + n == m.len()
    };
    assert!(ends_with_header(&entries_of(&mut c, &stream).await[0]["m"]));

    let empty = |e: &Envelope| matches!(&e.payload, Payload::Json(p) if p.is_empty());
    let failure = |attempt| Failure {
        attempt,
        at_ms: 1,
        error: format!("attempt {attempt}"),
    };
    let mut consumer = b.consume(&config).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!((d.envelope().id, d.envelope().attempt), (id, 1));
    assert!(empty(d.envelope()), "{:?}", d.envelope().payload);
    d.retry(failure(1), Duration::ZERO).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!((d.envelope().id, d.envelope().attempt), (id, 2));
    assert!(empty(d.envelope()), "retried: {:?}", d.envelope().payload);
    d.dead_letter(failure(2)).await.unwrap();
    assert!(ends_with_header(&entries_of(&mut c, &dead).await[0]["m"]));
    let peeked = q.peek_dead(&qn, 10).await.unwrap();
    assert_eq!(peeked.len(), 1);
    assert!(empty(&peeked[0]), "dead: {:?}", peeked[0].payload);
    assert_eq!(q.requeue_dead(&qn, 10).await.unwrap(), 1);
    let d = next(&mut consumer).await;
    assert_eq!((d.envelope().id, d.envelope().attempt), (id, 1));
    assert!(empty(d.envelope()), "requeued: {:?}", d.envelope().payload);
    assert_eq!(d.envelope().failures.len(), 2);
    d.ack().await.unwrap();
    consumer.close().await;
    f.cleanup_now(&t).await;
}

/// `next` is cancel-safe: a caller that polls it once and drops it while it is pending (as the
/// worker does when it drains a burst) does not abandon the dead-lettering of an undecodable
/// entry half way. With an empty script cache the dead-lettering takes several round trips
/// (`EVALSHA`, `NOSCRIPT`, load, again); the next call finishes it, so the entries are
/// dead-lettered at once and in order instead of waiting for the reaper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_next_leaves_no_entry_half_dead_lettered() {
    use futures::FutureExt as _;
    let f = fixture().await;
    let t = suite::topology(&f, |q| q.visibility_timeout(Duration::from_secs(600)));
    let q = Queue::new(suite::Fixture::backend(&f).await, t.clone())
        .await
        .unwrap();
    let (stream, _, dead) = keys(&f);
    let mut c = admin(&f.url).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    xadd(&mut c, &stream, &[("m", b"first bad")]).await;
    xadd(&mut c, &stream, &[("m", b"second bad")]).await;
    let id = suite::publish(&q, &format!("{}.x", f.unique), Task { n: 1, act: Act::Ok }).await;

    let mut consumer = q.backend().consume(&t.queues[0]).await.unwrap();
    let started = std::time::Instant::now();
    let d = loop {
        match consumer.next().now_or_never() {
            Some(Some(Ok(d))) => break d,
            Some(other) => panic!("{other:?}"),
            None => {
                assert!(started.elapsed() < Duration::from_secs(10), "no delivery");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    assert_eq!(d.envelope().id, id);
    let raw = entries_of(&mut c, &dead).await;
    let values: Vec<&[u8]> = raw.iter().map(|e| &e["m"][..]).collect();
    assert_eq!(values, [&b"first bad"[..], b"second bad"]);
    d.ack().await.unwrap();
    consumer.close().await;
    suite::wait_depth(&q, &suite::qname(&f), |s| s.depth() == 0 && s.dead == 2).await;
    f.cleanup_now(&t).await;
}
