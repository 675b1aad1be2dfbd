//! End-to-end queue benchmarks: publish → handler → ack, per backend, each next to a raw-client
//! loop doing the same work in the same run.
//!
//! Run: `cargo bench -p arq-queue --features full --bench throughput`
//! (`ARQ_BENCH_ONLY=memory,redis,rabbitmq,outbox` to pick; `ARQ_BENCH_SCALE=0.5` to shorten;
//! `ARQ_BENCH_REPEAT=n` for the number of raw/arq pairs of the in-memory saturation case).
//!
//! For each case: throughput at saturation (everything published as fast as the backend
//! accepts, with pipelined publishes/confirms and batched acks), and p50/p99 of publish→handler
//! latency both at saturation and at a fixed offered rate. Messages are ~200-byte JSON.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    clippy::large_futures
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arq_core::testing::{TestService, require};
use arq_queue::outbox::{self, Relay};
use arq_queue::{
    Backend, Envelope, HandlerError, Job, MemoryBackend, Message, Outgoing, Queue, QueueConfig,
    RabbitBackend, RedisBackend, Topology, Worker,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Clone, Serialize, Deserialize)]
struct BenchMsg {
    seq: u64,
    sent_ns: u64,
    body: String,
}

impl Message for BenchMsg {
    const TYPE: &'static str = "bench.msg";
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn body() -> String {
    // With seq and sent_ns the JSON is ~200 bytes.
    "x".repeat(150)
}

fn msg(seq: u64, body: &str) -> BenchMsg {
    BenchMsg {
        seq,
        sent_ns: now_ns(),
        body: body.to_owned(),
    }
}

#[derive(Default)]
struct Sink {
    done: AtomicU64,
    lat: Mutex<Vec<u64>>,
    target: AtomicU64,
    all: Notify,
}

impl Sink {
    fn new(n: u64) -> Arc<Self> {
        let s = Self::default();
        s.target.store(n, Ordering::SeqCst);
        *s.lat.lock().unwrap() = Vec::with_capacity(n as usize);
        Arc::new(s)
    }
    fn record(&self, sent_ns: u64) {
        let l = now_ns().saturating_sub(sent_ns);
        self.lat.lock().unwrap().push(l);
        if self.done.fetch_add(1, Ordering::SeqCst) + 1 == self.target.load(Ordering::SeqCst) {
            self.all.notify_one();
        }
    }
    async fn wait(&self) {
        loop {
            let notified = self.all.notified();
            if self.done.load(Ordering::SeqCst) >= self.target.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
    fn percentiles(&self) -> (f64, f64) {
        let mut l = self.lat.lock().unwrap().clone();
        if l.is_empty() {
            return (0.0, 0.0);
        }
        l.sort_unstable();
        let p = |q: f64| l[((l.len() - 1) as f64 * q) as usize] as f64 / 1e6;
        (p(0.50), p(0.99))
    }
}

#[derive(Clone, Copy)]
struct Outcome {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn line(
    rows: &mut Vec<String>,
    backend: &str,
    case: &str,
    mode: &str,
    o: Outcome,
    raw: Option<Outcome>,
) {
    let ratio = raw.map_or(String::from("—"), |r| format!("{:.2}×", o.rate / r.rate));
    let s = format!(
        "| {backend} | {case} | {mode} | {:.0} | {:.2} | {:.2} | {ratio} |",
        o.rate, o.p50_ms, o.p99_ms
    );
    println!("{s}");
    rows.push(s);
}

/// Publishes `n` messages in batches (`inflight` batches at once); at `rate` msg/s if given.
async fn arq_publish<B: Backend>(
    q: &Queue<B>,
    exchange: &str,
    n: u64,
    batch: u64,
    inflight: usize,
    rate: Option<u64>,
) {
    let start = Instant::now();
    let body = body();
    let ex: Arc<str> = exchange.into();
    let key: Arc<str> = BenchMsg::TYPE.into();
    let batches = (0..n.div_ceil(batch)).map(|b| {
        let lo = b * batch;
        let hi = (lo + batch).min(n);
        (lo, hi)
    });
    futures::stream::iter(batches)
        .for_each_concurrent(inflight, |(lo, hi)| {
            let body = &body;
            let ex = ex.clone();
            let key = key.clone();
            async move {
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64(lo as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let out: Vec<Outgoing> = (lo..hi)
                    .map(|i| Outgoing {
                        exchange: ex.clone(),
                        routing_key: key.clone(),
                        envelope: Envelope::new(msg(i, body)),
                    })
                    .collect();
                q.publish_batch(out).await.unwrap();
            }
        })
        .await;
}

async fn arq_case<B: Backend>(
    backend: B,
    queue: QueueConfig,
    n: u64,
    batch: u64,
    inflight: usize,
    rate: Option<u64>,
) -> Outcome {
    let name = queue.name.clone();
    let t = Topology::new(["bench"]).queue_config(queue.bind("bench", "bench.#"));
    let q = Queue::new(backend, t).await.unwrap();
    q.purge(&name).await.unwrap();
    let sink = Sink::new(n);
    let s2 = sink.clone();
    let worker = Worker::new(q.clone())
        .handle(&name, move |job: Job<BenchMsg>| {
            s2.record(job.payload.sent_ns);
            async { Ok::<(), HandlerError>(()) }
        })
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let w = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    arq_publish(&q, "bench", n, batch, inflight, rate).await;
    sink.wait().await;
    let secs = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    w.await.unwrap().unwrap();
    let (p50_ms, p99_ms) = sink.percentiles();
    Outcome {
        rate: n as f64 / secs,
        p50_ms,
        p99_ms,
    }
}

// ----------------------------------------------------------------------------- in-memory ---

async fn raw_memory(n: u64, rate: Option<u64>) -> Outcome {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BenchMsg>();
    let sink = Sink::new(n);
    let s2 = sink.clone();
    let consumer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(256);
        while rx.recv_many(&mut buf, 256).await > 0 {
            for m in buf.drain(..) {
                s2.record(m.sent_ns);
            }
        }
    });
    let start = Instant::now();
    let body = body();
    for i in 0..n {
        if let Some(rate) = rate
            && i % 1000 == 0
        {
            tokio::time::sleep_until(
                (start + Duration::from_secs_f64(i as f64 / rate as f64)).into(),
            )
            .await;
        }
        tx.send(msg(i, &body)).unwrap();
    }
    sink.wait().await;
    let secs = start.elapsed().as_secs_f64();
    drop(tx);
    consumer.await.unwrap();
    let (p50_ms, p99_ms) = sink.percentiles();
    Outcome {
        rate: n as f64 / secs,
        p50_ms,
        p99_ms,
    }
}

async fn bench_memory(rows: &mut Vec<String>, scale: f64) {
    let n = (1_000_000.0 * scale) as u64;
    let cfg = || {
        QueueConfig::new("mem")
            .prefetch(4096)
            .concurrency(1024)
            .consumers(2)
    };
    // `ARQ_BENCH_MEMORY_CASE=raw` or `arq` runs only that side's saturation case (for callgrind).
    match std::env::var("ARQ_BENCH_MEMORY_CASE").as_deref() {
        Ok("raw") => {
            let raw = raw_memory(n, None).await;
            line(rows, "in-memory", "raw tokio mpsc", "saturation", raw, None);
            return;
        }
        Ok("arq") => {
            let arq = arq_case(MemoryBackend::new(), cfg(), n, 1000, 1, None).await;
            line(rows, "in-memory", "arq worker", "saturation", arq, None);
            return;
        }
        _ => {}
    }
    // The raw loop's rate swings by 2× between runs of the same binary (whether its consumer
    // drains the channel and parks, so that each send must wake it, is up to the scheduler):
    // run raw and arq alternately `ARQ_BENCH_REPEAT` times (default 5) and report each pair,
    // then the medians and the median of the per-pair ratios.
    let repeat: usize = std::env::var("ARQ_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let mut pairs = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let raw = raw_memory(n, None).await;
        let arq = arq_case(MemoryBackend::new(), cfg(), n, 1000, 1, None).await;
        line(
            rows,
            "in-memory",
            "raw tokio mpsc (typed, no serde)",
            "saturation",
            raw,
            None,
        );
        line(
            rows,
            "in-memory",
            "arq worker (2 consumers, concurrency 1024)",
            "saturation",
            arq,
            Some(raw),
        );
        pairs.push((raw.rate, arq.rate));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summary = format!(
        "| in-memory | median of {repeat} pairs: raw {:.0}, arq {:.0} msg/s | saturation | {:.0} | — | — | {:.2}× |",
        median(pairs.iter().map(|p| p.0).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
        median(pairs.iter().map(|p| p.1 / p.0).collect()),
    );
    println!("{summary}");
    rows.push(summary);
    let rate = 100_000;
    let nr = (200_000.0 * scale) as u64;
    let raw_r = raw_memory(nr, Some(rate)).await;
    line(
        rows,
        "in-memory",
        "raw tokio mpsc",
        "100 k msg/s offered",
        raw_r,
        None,
    );
    let arq_r = arq_case(MemoryBackend::new(), cfg(), nr, 1000, 1, Some(rate)).await;
    line(
        rows,
        "in-memory",
        "arq worker",
        "100 k msg/s offered",
        arq_r,
        Some(raw_r),
    );
}

// --------------------------------------------------------------------------------- redis ---

async fn raw_redis(url: &str, prefix: &str, n: u64, rate: Option<u64>) -> Outcome {
    let client = redis::Client::open(url).unwrap();
    // arq's connections' response timeout (10 s), so that a slow run (under callgrind) does not
    // time out on the raw side only.
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut pubc = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let mut readc = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let mut ackc = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let key = format!("{prefix}:raw");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut pubc)
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut pubc)
        .await
        .unwrap();
    let sink = Sink::new(n);
    let s2 = sink.clone();
    let k2 = key.clone();
    let consumer = tokio::spawn(async move {
        loop {
            let v: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(500)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS")
                .arg(&k2)
                .arg(">")
                .query_async(&mut readc)
                .await
                .unwrap();
            let mut ids = Vec::new();
            if let redis::Value::Array(streams) = v {
                for s in streams {
                    let redis::Value::Array(pair) = s else {
                        continue;
                    };
                    let Some(redis::Value::Array(entries)) = pair.into_iter().nth(1) else {
                        continue;
                    };
                    for e in entries {
                        let redis::Value::Array(mut idf) = e else {
                            continue;
                        };
                        let fields = idf.pop();
                        let id = idf.pop();
                        if let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(f))) =
                            (id, fields)
                            && let Some(redis::Value::BulkString(b)) = f.get(1)
                        {
                            let m: BenchMsg = serde_json::from_slice(b).unwrap();
                            s2.record(m.sent_ns);
                            ids.push(id);
                        }
                    }
                }
            }
            if !ids.is_empty() {
                let mut p = redis::pipe();
                p.cmd("XACK").arg(&k2).arg("g").arg(&ids).ignore();
                p.cmd("XDEL").arg(&k2).arg(&ids).ignore();
                let _: () = p.query_async(&mut ackc).await.unwrap();
            }
            if s2.done.load(Ordering::SeqCst) >= n {
                break;
            }
        }
    });
    let start = Instant::now();
    let body = body();
    let batch = 500u64;
    let batches = (0..n.div_ceil(batch)).map(|b| (b * batch, ((b + 1) * batch).min(n)));
    futures::stream::iter(batches)
        .for_each_concurrent(4, |(lo, hi)| {
            let mut c = pubc.clone();
            let key = &key;
            let body = &body;
            async move {
                if let Some(rate) = rate {
                    tokio::time::sleep_until(
                        (start + Duration::from_secs_f64(lo as f64 / rate as f64)).into(),
                    )
                    .await;
                }
                let mut p = redis::pipe();
                for i in lo..hi {
                    let json = serde_json::to_vec(&msg(i, body)).unwrap();
                    p.cmd("XADD").arg(key).arg("*").arg("e").arg(json).ignore();
                }
                let _: () = p.query_async(&mut c).await.unwrap();
            }
        })
        .await;
    sink.wait().await;
    let secs = start.elapsed().as_secs_f64();
    consumer.await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut pubc)
        .await
        .unwrap();
    let (p50_ms, p99_ms) = sink.percentiles();
    Outcome {
        rate: n as f64 / secs,
        p50_ms,
        p99_ms,
    }
}

async fn redis_cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
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
}

async fn bench_redis(rows: &mut Vec<String>, scale: f64) {
    let url = require(TestService::Redis);
    let prefix = format!("arqbench-{}", uuid::Uuid::new_v4().simple());
    let n = (200_000.0 * scale) as u64;
    let cfg = || QueueConfig::new("rq").prefetch(1000).concurrency(1000);
    // `ARQ_BENCH_REDIS_CASE=raw` or `arq` runs only that side's saturation case: under callgrind
    // the two sides' instruction counts then come from separate runs.
    match std::env::var("ARQ_BENCH_REDIS_CASE").as_deref() {
        Ok("raw") => {
            let raw = raw_redis(&url, &prefix, n, None).await;
            line(rows, "Redis Streams", "raw redis", "saturation", raw, None);
            redis_cleanup(&url, &prefix).await;
            return;
        }
        Ok("arq") => {
            let backend = RedisBackend::connect(&url, &prefix).await.unwrap();
            let arq = arq_case(backend, cfg(), n, 500, 4, None).await;
            line(rows, "Redis Streams", "arq worker", "saturation", arq, None);
            redis_cleanup(&url, &prefix).await;
            return;
        }
        _ => {}
    }
    let raw = raw_redis(&url, &prefix, n, None).await;
    line(
        rows,
        "Redis Streams",
        "raw redis (pipelined XADD, XREADGROUP 500, batched XACK+XDEL)",
        "saturation",
        raw,
        None,
    );
    let backend = RedisBackend::connect(&url, &prefix).await.unwrap();
    let arq = arq_case(backend, cfg(), n, 500, 4, None).await;
    line(
        rows,
        "Redis Streams",
        "arq worker (prefetch 1000)",
        "saturation",
        arq,
        Some(raw),
    );
    let rate = 20_000;
    let nr = (60_000.0 * scale) as u64;
    let raw_r = raw_redis(&url, &prefix, nr, Some(rate)).await;
    line(
        rows,
        "Redis Streams",
        "raw redis",
        "20 k msg/s offered",
        raw_r,
        None,
    );
    let backend = RedisBackend::connect(&url, &prefix).await.unwrap();
    let arq_r = arq_case(backend, cfg(), nr, 100, 4, Some(rate)).await;
    line(
        rows,
        "Redis Streams",
        "arq worker",
        "20 k msg/s offered",
        arq_r,
        Some(raw_r),
    );
    redis_cleanup(&url, &prefix).await;
}

// ------------------------------------------------------------------------------ rabbitmq ---

async fn raw_rabbit(url: &str, queue: &str, prefetch: u16, n: u64, rate: Option<u64>) -> Outcome {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let pubch = conn.create_channel().await.unwrap();
    pubch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    pubch
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    let conch = conn.create_channel().await.unwrap();
    conch
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = conch
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let sink = Sink::new(n);
    let s2 = sink.clone();
    let c = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let m: BenchMsg = serde_json::from_slice(&d.data).unwrap();
            s2.record(m.sent_ns);
            d.ack(BasicAckOptions::default()).await.unwrap();
            if s2.done.load(Ordering::SeqCst) >= n {
                break;
            }
        }
    });
    let start = Instant::now();
    let body = body();
    let batch = 500u64;
    let batches = (0..n.div_ceil(batch)).map(|b| (b * batch, ((b + 1) * batch).min(n)));
    futures::stream::iter(batches)
        .for_each_concurrent(4, |(lo, hi)| {
            let ch = pubch.clone();
            let body = &body;
            async move {
                if let Some(rate) = rate {
                    tokio::time::sleep_until(
                        (start + Duration::from_secs_f64(lo as f64 / rate as f64)).into(),
                    )
                    .await;
                }
                let mut confirms = Vec::new();
                for i in lo..hi {
                    let json = serde_json::to_vec(&msg(i, body)).unwrap();
                    let c = ch
                        .basic_publish(
                            "".into(),
                            queue.into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &json,
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                        .await
                        .unwrap();
                    confirms.push(c);
                }
                for c in confirms {
                    assert!(c.await.unwrap().is_ack());
                }
            }
        })
        .await;
    sink.wait().await;
    let secs = start.elapsed().as_secs_f64();
    c.await.unwrap();
    let _ = conch.close(200, "OK".into()).await;
    pubch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
    let (p50_ms, p99_ms) = sink.percentiles();
    Outcome {
        rate: n as f64 / secs,
        p50_ms,
        p99_ms,
    }
}

async fn bench_rabbit(rows: &mut Vec<String>, scale: f64) {
    let url = require(TestService::RabbitMq);
    let u = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let n = (60_000.0 * scale) as u64;
    let backend = RabbitBackend::connect(&url).await.unwrap();
    let mut topologies = Vec::new();
    let mut case = |name: String, prefetch: u16| {
        let q = QueueConfig::new(name).prefetch(prefetch);
        topologies.push(Topology::new(["bench"]).queue_config(q.clone().bind("bench", "bench.#")));
        q
    };
    let raw = raw_rabbit(&url, &format!("arqbench.raw.{u}"), 200, n, None).await;
    line(
        rows,
        "RabbitMQ",
        "raw lapin (persistent, pipelined confirms, prefetch 200)",
        "saturation",
        raw,
        None,
    );
    let arq = arq_case(
        backend.clone(),
        case(format!("arqbench.{u}.p200"), 200),
        n,
        500,
        4,
        None,
    )
    .await;
    line(
        rows,
        "RabbitMQ",
        "arq worker (prefetch 200)",
        "saturation",
        arq,
        Some(raw),
    );
    let seed_n = (20_000.0 * scale) as u64;
    for (label, prefetch) in [
        ("email.send", 10u16),
        ("notification.push", 20),
        ("report.generate", 5),
        ("data.sync", 15),
    ] {
        let raw_p = raw_rabbit(
            &url,
            &format!("arqbench.raw.{u}.{prefetch}"),
            prefetch,
            seed_n,
            None,
        )
        .await;
        line(
            rows,
            "RabbitMQ",
            &format!("raw lapin, prefetch {prefetch}"),
            "saturation",
            raw_p,
            None,
        );
        let o = arq_case(
            backend.clone(),
            case(format!("arqbench.{u}.{label}"), prefetch),
            seed_n,
            500,
            4,
            None,
        )
        .await;
        line(
            rows,
            "RabbitMQ",
            &format!("arq, seed prefetch {prefetch} ({label})"),
            "saturation",
            o,
            Some(raw_p),
        );
    }
    let rate = 3_000;
    let nr = (9_000.0 * scale) as u64;
    let raw_r = raw_rabbit(&url, &format!("arqbench.raw.{u}.r"), 200, nr, Some(rate)).await;
    line(
        rows,
        "RabbitMQ",
        "raw lapin (prefetch 200)",
        "3 k msg/s offered",
        raw_r,
        None,
    );
    let arq_r = arq_case(
        backend.clone(),
        case(format!("arqbench.{u}.rate"), 200),
        nr,
        50,
        4,
        Some(rate),
    )
    .await;
    line(
        rows,
        "RabbitMQ",
        "arq worker (prefetch 200)",
        "3 k msg/s offered",
        arq_r,
        Some(raw_r),
    );
    for t in &topologies {
        backend.delete(t).await.unwrap();
    }
}

// -------------------------------------------------------------------------------- outbox ---

async fn bench_outbox(rows: &mut Vec<String>, scale: f64) {
    let admin_url = require(TestService::Postgres);
    let name = format!("arq_queue_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let base = admin_url.rsplit_once('/').unwrap().0.to_owned();
    let pool = sqlx::PgPool::connect(&format!("{base}/{name}"))
        .await
        .unwrap();
    outbox::migrate(&mut pool.acquire().await.unwrap())
        .await
        .unwrap();
    let n = (20_000.0 * scale) as u64;
    let fill = || async {
        let mut tx = pool.begin().await.unwrap();
        let body = body();
        for i in 0..n {
            outbox::enqueue_message(&mut tx, "bench", msg(i, &body))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    };

    // Raw: the same claim / delete / commit loop in plain sqlx, handing rows to a channel.
    fill().await;
    let (tx_raw, mut rx_raw) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let drain = tokio::spawn(async move { while rx_raw.recv().await.is_some() {} });
    let start = Instant::now();
    loop {
        let mut tx = pool.begin().await.unwrap();
        let rows_: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "select seq, envelope from arq_outbox where failed_at is null order by seq limit 500 for update skip locked",
        )
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        if rows_.is_empty() {
            break;
        }
        let seqs: Vec<i64> = rows_.iter().map(|r| r.0).collect();
        for (_, b) in rows_ {
            tx_raw.send(b).unwrap();
        }
        sqlx::query("delete from arq_outbox where seq = any($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let raw = Outcome {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    drop(tx_raw);
    drain.await.unwrap();
    line(
        rows,
        "outbox relay",
        "raw sqlx claim/delete loop (500 rows)",
        "drain 20 k rows",
        raw,
        None,
    );

    // arq: the relay publishing to the in-memory backend.
    fill().await;
    let t = Topology::new(["bench"]).queue_config(QueueConfig::new("ob").bind("bench", "bench.#"));
    let q = Queue::new(MemoryBackend::new(), t).await.unwrap();
    let relay = Relay::new(pool.clone(), q.clone());
    let start = Instant::now();
    while relay.run_once().await.unwrap() > 0 {}
    let arq = Outcome {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    line(
        rows,
        "outbox relay",
        "arq Relay → in-memory (500 rows/batch)",
        "drain 20 k rows",
        arq,
        Some(raw),
    );

    // arq: the relay publishing to Redis Streams.
    fill().await;
    let url = require(TestService::Redis);
    let prefix = format!("arqbench-{}", uuid::Uuid::new_v4().simple());
    let t = Topology::new(["bench"]).queue_config(QueueConfig::new("ob").bind("bench", "bench.#"));
    let q = Queue::new(RedisBackend::connect(&url, &prefix).await.unwrap(), t)
        .await
        .unwrap();
    let relay = Relay::new(pool.clone(), q.clone());
    let start = Instant::now();
    while relay.run_once().await.unwrap() > 0 {}
    let arq = Outcome {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    line(
        rows,
        "outbox relay",
        "arq Relay → Redis Streams (500 rows/batch)",
        "drain 20 k rows",
        arq,
        Some(raw),
    );
    redis_cleanup(&url, &prefix).await;

    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

fn main() {
    let only =
        std::env::var("ARQ_BENCH_ONLY").unwrap_or_else(|_| "memory,redis,rabbitmq,outbox".into());
    let scale: f64 = std::env::var("ARQ_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _ = epoch();
    let mut rows = Vec::new();
    println!("| backend | case | load | msg/s | p50 ms | p99 ms | vs raw |");
    println!("|---|---|---|---:|---:|---:|---:|");
    rt.block_on(async {
        let sel: HashMap<&str, bool> = only.split(',').map(|s| (s.trim(), true)).collect();
        if sel.contains_key("memory") {
            bench_memory(&mut rows, scale).await;
        }
        if sel.contains_key("redis") {
            bench_redis(&mut rows, scale).await;
        }
        if sel.contains_key("rabbitmq") {
            bench_rabbit(&mut rows, scale).await;
        }
        if sel.contains_key("outbox") {
            bench_outbox(&mut rows, scale).await;
        }
    });
    eprintln!("{} rows", rows.len());
}
