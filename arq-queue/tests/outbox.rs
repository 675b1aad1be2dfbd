//! The transactional outbox: the behavioural suite with every publish going through the
//! outbox and a relay (to the in-memory backend), plus PITFALLS 65.
#![cfg(feature = "postgres")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod suite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use arq_core::testing::{TestService, require};
use arq_queue::outbox::{self, Relay};
use arq_queue::{
    Backend, Consumer, Delivery, Envelope, HandlerError, Job, MemoryBackend, MemoryConsumer,
    MemoryIdempotency, Outgoing, Queue, QueueConfig, QueueError, QueueStats, TenantId, Topology,
    Worker,
};
use sqlx::PgPool;
use suite::{Act, Task};
use tokio::task::AbortHandle;

/// A test database of its own, dropped at the end.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
    pool: PgPool,
}

impl TestDb {
    async fn new() -> Self {
        let admin_url = require(TestService::Postgres);
        let name = format!("arq_queue_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let base = admin_url.rsplit_once('/').unwrap().0.to_owned();
        let url = format!("{base}/{name}");
        let pool = PgPool::connect(&url).await.unwrap();
        let mut c = pool.acquire().await.unwrap();
        outbox::migrate(&mut c).await.unwrap();
        // Twice: the migration is idempotent.
        outbox::migrate(&mut c).await.unwrap();
        Self {
            admin_url,
            name,
            url,
            pool,
        }
    }

    async fn drop_db(&self) {
        self.pool.close().await;
        let admin = PgPool::connect(&self.admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database if exists {} with (force)",
            self.name
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
    }

    async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("select count(*) from arq_outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// A backend whose publishes go through the outbox (one transaction per publish) and a relay
/// to the in-memory backend; consuming and operations are the in-memory backend's.
#[derive(Clone)]
struct OutboxBackend {
    inner: MemoryBackend,
    pool: PgPool,
    topology: Arc<RwLock<Option<Topology>>>,
    relays: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Backend for OutboxBackend {
    type Consumer = MemoryConsumer;
    fn name(&self) -> &'static str {
        "outbox"
    }
    async fn declare(&self, topology: &Topology) -> Result<(), QueueError> {
        self.inner.declare(topology).await?;
        *self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(topology.clone());
        let queue = Queue::new(self.inner.clone(), topology.clone()).await?;
        let relay = Relay::new(self.pool.clone(), queue).poll_interval(Duration::from_millis(10));
        let h = tokio::spawn(async move {
            let _ = relay.run(std::future::pending()).await;
        });
        self.relays.lock().unwrap().push(h.abort_handle());
        Ok(())
    }
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<(), QueueError> {
        let topology = self.topology.read().unwrap().clone().unwrap();
        for o in &batch {
            topology.route(&o.exchange, &o.routing_key)?;
        }
        let mut tx = self.pool.begin().await.unwrap();
        for o in &batch {
            outbox::enqueue(&mut tx, &o.exchange, &o.routing_key, &o.envelope).await?;
        }
        tx.commit().await.unwrap();
        Ok(())
    }
    async fn consume(&self, queue: &QueueConfig) -> Result<MemoryConsumer, QueueError> {
        self.inner.consume(queue).await
    }
    async fn stats(&self, queue: &QueueConfig) -> Result<QueueStats, QueueError> {
        self.inner.stats(queue).await
    }
    async fn peek_dead(
        &self,
        queue: &QueueConfig,
        limit: usize,
    ) -> Result<Vec<Envelope>, QueueError> {
        self.inner.peek_dead(queue, limit).await
    }
    async fn requeue_dead(&self, queue: &QueueConfig, limit: usize) -> Result<usize, QueueError> {
        self.inner.requeue_dead(queue, limit).await
    }
    async fn purge(&self, queue: &QueueConfig) -> Result<u64, QueueError> {
        self.inner.purge(queue).await
    }
    async fn purge_dead(&self, queue: &QueueConfig) -> Result<u64, QueueError> {
        self.inner.purge_dead(queue).await
    }
}

struct Outboxed {
    unique: String,
    db: TestDb,
    inner: MemoryBackend,
    relays: Arc<Mutex<Vec<AbortHandle>>>,
}

impl suite::Fixture for Outboxed {
    type B = OutboxBackend;
    async fn backend(&self) -> OutboxBackend {
        OutboxBackend {
            inner: self.inner.clone(),
            pool: self.db.pool.clone(),
            topology: Arc::default(),
            relays: self.relays.clone(),
        }
    }
    fn unique(&self) -> &str {
        &self.unique
    }
    async fn cleanup(&self, _topology: &Topology) {
        for h in self.relays.lock().unwrap().drain(..) {
            h.abort();
        }
        self.db.drop_db().await;
    }
}

async fn fixture() -> Outboxed {
    Outboxed {
        unique: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        db: TestDb::new().await,
        inner: MemoryBackend::new(),
        relays: Arc::default(),
    }
}

behaviour!(fixture());

fn topology() -> Topology {
    Topology::new(["app"]).queue_config(
        QueueConfig::new("work")
            .bind("app", "task.#")
            .idempotent(true),
    )
}

/// Drains the in-memory queue and counts deliveries per message id.
async fn drain_ids(mem: &MemoryBackend, t: &Topology) -> HashMap<arq_queue::MessageId, usize> {
    let mut c = mem.consume(t.queue("work").unwrap()).await.unwrap();
    let mut out = HashMap::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), c.next()).await {
        *out.entry(d.envelope().id).or_default() += 1;
        d.ack().await.unwrap();
    }
    out
}

/// PITFALLS 65 (first half): a rolled-back transaction publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_transaction_publishes_nothing() {
    let db = TestDb::new().await;
    let mem = MemoryBackend::new();
    let q = Queue::new(mem.clone(), topology()).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue_message(&mut tx, "app", Task { n: 1, act: Act::Ok })
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let relay = Relay::new(db.pool.clone(), q.clone());
    assert_eq!(relay.run_once().await.unwrap(), 0);
    assert_eq!(q.list().await.unwrap()[0].stats.depth(), 0);
    assert_eq!(db.outbox_rows().await, 0);
    db.drop_db().await;
}

/// PITFALLS 65 (second half): a committed row is published even though the relay "crashes"
/// between the broker's confirm and its mark; the second publication has the same id, and the
/// idempotent consumer handles the row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_row_is_handled_exactly_once_despite_a_relay_crash() {
    let db = TestDb::new().await;
    let mem = MemoryBackend::new();
    let q = Queue::new(mem.clone(), topology()).await.unwrap();
    let tenant = TenantId::generate();
    let mut tx = db.pool.begin().await.unwrap();
    // The tenant transaction's first statement, as arq-tenancy issues it.
    sqlx::query("select set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let env = Envelope::new(Task { n: 7, act: Act::Ok }).with_tenant(tenant);
    let id = outbox::enqueue(&mut tx, "app", "task.run", &env)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let crashing = Relay::new(db.pool.clone(), q.clone()).crash_after_publish(true);
    assert!(crashing.run_once().await.is_err());
    assert_eq!(db.outbox_rows().await, 1, "the row survives the crash");
    let relay = Relay::new(db.pool.clone(), q.clone());
    assert_eq!(relay.run_once().await.unwrap(), 1);
    assert_eq!(db.outbox_rows().await, 0);
    assert_eq!(relay.run_once().await.unwrap(), 0);
    // The broker holds two copies with the same id...
    assert_eq!(q.list().await.unwrap()[0].stats.ready, 2);

    // ...and the idempotent worker handles it once, with the tenant restored.
    let handled: Arc<Mutex<Vec<(arq_queue::MessageId, Option<TenantId>)>>> = Arc::default();
    let h2 = handled.clone();
    let w = Worker::new(q.clone())
        .idempotency(MemoryIdempotency::new(100))
        .handle("work", move |job: Job<Task>| {
            let h = h2.clone();
            async move {
                h.lock().unwrap().push((job.id, job.tenant));
                Ok::<(), HandlerError>(())
            }
        })
        .unwrap();
    let q2 = q.clone();
    w.run(async move {
        while q2.list().await.unwrap()[0].stats.depth() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(*handled.lock().unwrap(), vec![(id, Some(tenant))]);
    db.drop_db().await;
}

/// Concurrent relays (contention): every committed row is published exactly once when no
/// relay crashes (row locks with SKIP LOCKED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_publish_each_row_once() {
    let db = TestDb::new().await;
    let mem = MemoryBackend::new();
    let t = topology();
    let q = Queue::new(mem.clone(), t.clone()).await.unwrap();
    let n = 2000;
    let mut tx = db.pool.begin().await.unwrap();
    for i in 0..n {
        outbox::enqueue_message(&mut tx, "app", Task { n: i, act: Act::Ok })
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let relays: Vec<_> = (0..3)
        .map(|_| {
            let r = Relay::new(db.pool.clone(), q.clone()).batch_size(50);
            tokio::spawn(async move {
                let mut total = 0;
                loop {
                    let k = r.run_once().await.unwrap();
                    if k == 0 {
                        break total;
                    }
                    total += k;
                }
            })
        })
        .collect();
    let mut per_relay = Vec::new();
    for r in relays {
        per_relay.push(r.await.unwrap());
    }
    assert_eq!(per_relay.iter().sum::<usize>(), n as usize);
    assert!(
        per_relay.iter().filter(|k| **k > 0).count() >= 2,
        "{per_relay:?}"
    );
    let ids = drain_ids(&mem, &t).await;
    assert_eq!(ids.len(), n as usize);
    assert!(ids.values().all(|c| *c == 1));
    db.drop_db().await;
}

/// A row that can never be published (unknown exchange) is marked failed with its error and
/// does not block the rows behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_row_is_marked_and_skipped() {
    let db = TestDb::new().await;
    let mem = MemoryBackend::new();
    let q = Queue::new(mem.clone(), topology()).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue_message(&mut tx, "app", Task { n: 1, act: Act::Ok })
        .await
        .unwrap();
    let bad = outbox::enqueue_message(&mut tx, "no-such-exchange", Task { n: 2, act: Act::Ok })
        .await
        .unwrap();
    let unroutable = outbox::enqueue(
        &mut tx,
        "app",
        "nobody.listens",
        &Envelope::new(Task { n: 3, act: Act::Ok }),
    )
    .await
    .unwrap();
    outbox::enqueue_message(&mut tx, "app", Task { n: 4, act: Act::Ok })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(db.pool.clone(), q.clone());
    assert_eq!(relay.run_once().await.unwrap(), 2);
    assert_eq!(relay.run_once().await.unwrap(), 0);
    let mut c = db.pool.acquire().await.unwrap();
    let failed = outbox::failed_rows(&mut c, 10).await.unwrap();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0].0, bad);
    assert!(failed[0].1.contains("no-such-exchange"), "{failed:?}");
    assert!(failed[1].1.contains("nobody.listens"), "{failed:?}");
    assert_eq!(q.list().await.unwrap()[0].stats.ready, 2);

    // The consumer of `nobody.*` is deployed late: its queue exists now, and the held-back row
    // is re-queued and published; the row for the unknown exchange stays failed.
    let late =
        Topology::new(["app"]).queue_config(QueueConfig::new("late").bind("app", "nobody.#"));
    let _late = Queue::new(mem.clone(), late).await.unwrap();
    assert_eq!(
        outbox::retry_failed(&mut c, Some(&[unroutable]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        outbox::retry_failed(&mut c, Some(&[unroutable]))
            .await
            .unwrap(),
        0
    );
    assert_eq!(relay.run_once().await.unwrap(), 1);
    let failed = outbox::failed_rows(&mut c, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, bad);
    // Retrying everything re-queues it, and the relay marks it failed again.
    assert_eq!(outbox::retry_failed(&mut c, None).await.unwrap(), 1);
    assert_eq!(relay.run_once().await.unwrap(), 0);
    assert_eq!(outbox::failed_rows(&mut c, 10).await.unwrap().len(), 1);
    drop(c);
    db.drop_db().await;
}

/// A running relay puts rows held back as unroutable back in line by itself once their
/// consumer's queue exists (a deployment order fixes itself); a row that can never be published
/// (an unknown exchange) stays failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_relay_retries_unroutable_rows_but_not_poison_ones() {
    let db = TestDb::new().await;
    let mem = MemoryBackend::new();
    let q = Queue::new(mem.clone(), topology()).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let bad = outbox::enqueue_message(&mut tx, "no-such-exchange", Task { n: 1, act: Act::Ok })
        .await
        .unwrap();
    outbox::enqueue(
        &mut tx,
        "app",
        "nobody.listens",
        &Envelope::new(Task { n: 2, act: Act::Ok }),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(db.pool.clone(), q.clone())
        .poll_interval(Duration::from_millis(20))
        .retry_unroutable_every(Some(Duration::from_millis(100)));
    assert_eq!(relay.run_once().await.unwrap(), 0);
    let mut c = db.pool.acquire().await.unwrap();
    assert_eq!(outbox::failed_rows(&mut c, 10).await.unwrap().len(), 2);

    // The consumer of `nobody.*` arrives; the running relay notices without an operator.
    let late =
        Topology::new(["app"]).queue_config(QueueConfig::new("late").bind("app", "nobody.#"));
    let late_q = Queue::new(mem.clone(), late).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let relay = relay.clone();
        tokio::spawn(async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = late_q.list().await.unwrap()[0].stats.ready;
        if ready == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unroutable row was not re-published within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let failed = outbox::failed_rows(&mut c, 10).await.unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, bad);
    drop(c);
    db.drop_db().await;
}

/// The tenant runtime role can enqueue (INSERT only) but cannot read the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_role_can_enqueue_but_not_read() {
    let db = TestDb::new().await;
    sqlx::query("grant insert on arq_outbox to arq_app")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("grant usage on sequence arq_outbox_seq_seq to arq_app")
        .execute(&db.pool)
        .await
        .unwrap();
    let app_url = db
        .url
        .replacen("postgres://postgres@", "postgres://arq_app:arq_app@", 1);
    let app = PgPool::connect(&app_url).await.unwrap();
    let mut tx = app.begin().await.unwrap();
    outbox::enqueue_message(&mut tx, "app", Task { n: 1, act: Act::Ok })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let read = sqlx::query("select * from arq_outbox")
        .fetch_all(&app)
        .await;
    assert!(read.unwrap_err().to_string().contains("permission denied"));
    app.close().await;
    assert_eq!(db.outbox_rows().await, 1);
    db.drop_db().await;
}

/// The tenant outbox (`TENANT_ISOLATION_MIGRATION`): the runtime role inserts its own tenant's
/// rows only and reads none; the relay pool refuses the runtime role and accepts `arq_relay`,
/// which relays every tenant's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_outbox_isolates_tenants_and_only_the_relay_role_relays() {
    let db = TestDb::new().await;
    // Twice: the role SQL is idempotent (and other tests may have created the role already).
    for _ in 0..2 {
        sqlx::raw_sql(outbox::RELAY_ROLE_SQL)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    outbox::require_relay_role(&db.pool).await.unwrap();
    arq_tenancy::migrate::migrator()
        .run(&db.pool)
        .await
        .unwrap();
    sqlx::raw_sql(outbox::TENANT_ISOLATION_MIGRATION)
        .execute(&db.pool)
        .await
        .unwrap();

    let as_role = |role: &str| {
        db.url.replacen(
            "postgres://postgres@",
            &format!("postgres://{role}:{role}@"),
            1,
        )
    };
    // The runtime role cannot relay: it would see no rows and publish nothing, silently.
    let refused = outbox::connect_relay_pool(&as_role("arq_app"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, QueueError::OutboxSetup { reason } if reason.contains("\"arq_app\"")),
        "{refused}"
    );

    let app = PgPool::connect(&as_role("arq_app")).await.unwrap();
    let (a, b) = (TenantId::generate(), TenantId::generate());
    for tenant in [a, b] {
        let mut tx = app.begin().await.unwrap();
        sqlx::query("select set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let env = Envelope::new(Task { n: 1, act: Act::Ok }).with_tenant(tenant);
        outbox::enqueue(&mut tx, "app", "task.created", &env)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    // Writing another tenant's event is refused by the policy's WITH CHECK, and reading back
    // is refused outright.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("select set_config('app.tenant_id', $1, true)")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let env = Envelope::new(Task { n: 2, act: Act::Ok }).with_tenant(b);
    let err = outbox::enqueue(&mut tx, "app", "task.created", &env)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);
    let read = sqlx::query("select * from arq_outbox")
        .fetch_all(&app)
        .await;
    assert!(read.unwrap_err().to_string().contains("permission denied"));
    app.close().await;

    let relay_pool = outbox::connect_relay_pool(&as_role("arq_relay"))
        .await
        .unwrap();
    let mem = MemoryBackend::new();
    let t = topology();
    let queue = Queue::new(mem.clone(), t.clone()).await.unwrap();
    let published = Relay::new(relay_pool.clone(), queue)
        .run_once()
        .await
        .unwrap();
    assert_eq!(published, 2, "both tenants' events are relayed");
    assert_eq!(db.outbox_rows().await, 0);
    // The relay role reads the outbox and nothing else.
    let other = sqlx::query("select * from pg_catalog.pg_authid")
        .fetch_all(&relay_pool)
        .await;
    assert!(other.is_err());
    relay_pool.close().await;
    db.drop_db().await;
}
