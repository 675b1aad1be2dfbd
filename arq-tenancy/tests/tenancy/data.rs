//! Issue 5 items 2 and 3 against the real PostgreSQL: the query histogram by statement
//! fingerprint in `/metrics`, the slow-query log (fires at the threshold, never a parameter
//! value), pool gauges under load, and read-replica routing with fallback and recovery (a second
//! database stands in for the replica).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arq_core::metrics::MetricsRegistry;
use arq_tenancy::testing::Role;
use arq_tenancy::tx::{BeginMode, DEFAULT_STATEMENT_TIMEOUT, DbMetrics, ReplicaOptions};
use arq_tenancy::{TenantId, TenantPool};
use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;

use crate::common::TestDb;

/// Log lines written while the guard lives (this thread only: the tests are current-thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish(),
        )
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pool_with(db: &TestDb, registry: &MetricsRegistry) -> TenantPool {
    TenantPool::with_options(
        db.app.clone(),
        BeginMode::Folded,
        DEFAULT_STATEMENT_TIMEOUT,
        DbMetrics::register(registry).unwrap(),
    )
}

async fn scrape(registry: &MetricsRegistry) -> String {
    let response = arq_core::telemetry::metrics_router(registry.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn query_histogram_is_in_metrics_by_fingerprint_without_values() {
    let db = TestDb::new(2).await;
    let registry = MetricsRegistry::new();
    let pool = pool_with(&db, &registry);
    let tenant = TenantId::generate();
    let mut tx = pool.begin(tenant).await.unwrap();
    for title in ["alpha-literal", "beta-literal"] {
        let sql = format!("select count(*) from tasks where title = '{title}'");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut tx)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    sqlx::query("insert into tasks (tenant_id, title) values ($1, $2)")
        .bind(tenant.into_uuid())
        .bind("gamma-parameter")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let text = scrape(&registry).await;
    assert!(
        text.contains(
            "db_query_duration_seconds_count{operation=\"query\",statement=\"select count(*) from tasks where title = ?\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains(
        "db_query_duration_seconds_count{operation=\"query\",statement=\"insert into tasks (tenant_id, title) values ($1, $2)\"} 1"
    ));
    assert!(
        text.contains(
            "db_query_duration_seconds_count{operation=\"commit\",statement=\"COMMIT\"} 1"
        )
    );
    for value in ["alpha-literal", "beta-literal", "gamma-parameter"] {
        assert!(!text.contains(value), "{value} leaked into /metrics");
    }
}

#[tokio::test]
async fn slow_query_log_fires_at_the_threshold_and_holds_no_parameter_values() {
    let db = TestDb::new(2).await;
    let registry = MetricsRegistry::new();
    let pool = pool_with(&db, &registry);
    pool.metrics()
        .set_slow_query_threshold(Duration::from_millis(50));
    let logs = Logs::default();
    let _guard = logs.capture();

    let mut tx = pool.begin(TenantId::generate()).await.unwrap();
    // Slow: pg_sleep outlasts the threshold however loaded the machine is.
    sqlx::query("select pg_sleep($1), $2::text, 'literal-secret'")
        .bind(0.2_f64)
        .bind("parameter-secret")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let log = logs.text();
    let slow: Vec<&str> = log.lines().filter(|l| l.contains("slow query")).collect();
    assert_eq!(slow.len(), 1, "{log}");
    assert!(
        slow[0].contains("statement=select pg_sleep($1), $2::text, ?"),
        "{log}"
    );
    assert!(slow[0].contains("threshold_ms=50"), "{log}");
    assert!(!log.contains("parameter-secret"), "{log}");
    assert!(!log.contains("literal-secret"), "{log}");
    let text = scrape(&registry).await;
    assert!(
        text.contains("db_slow_queries_total{statement=\"select pg_sleep($1), $2::text, ?\"} 1"),
        "{text}"
    );
    assert!(!text.contains("parameter-secret"));
}

/// The value of the sample line starting with `prefix` in the exposition.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn pool_metrics_follow_the_load() {
    let db = TestDb::new(3).await;
    let registry = MetricsRegistry::new();
    let pool = pool_with(&db, &registry);
    let tenant = TenantId::generate();

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.begin(tenant).await.unwrap());
    }
    let text = scrape(&registry).await;
    assert_eq!(
        sample(
            &text,
            "db_pool_connections{pool=\"primary\",state=\"in_use\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(sample(&text, "db_pool_size{pool=\"primary\"}"), Some(3.0));
    assert_eq!(
        sample(&text, "db_pool_max_connections{pool=\"primary\"}"),
        Some(3.0)
    );

    // A fourth transaction has to wait for a connection.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.begin(tenant).await.unwrap().commit().await.unwrap() }
    });
    eventually(&registry, "db_pool_waiters{pool=\"primary\"}", 1.0).await;

    for tx in held {
        tx.commit().await.unwrap();
    }
    waiter.await.unwrap();
    eventually(&registry, "db_pool_waiters{pool=\"primary\"}", 0.0).await;
    // Connections go back to the pool from a task of their own.
    eventually(
        &registry,
        "db_pool_connections{pool=\"primary\",state=\"in_use\"}",
        0.0,
    )
    .await;
    eventually(
        &registry,
        "db_pool_connections{pool=\"primary\",state=\"idle\"}",
        3.0,
    )
    .await;
    let text = scrape(&registry).await;
    assert_eq!(
        sample(&text, "db_pool_acquire_seconds_count{pool=\"primary\"}"),
        Some(4.0)
    );
}

/// Waits (yielding, bounded) until the sample reads `value`.
async fn eventually(registry: &MetricsRegistry, prefix: &str, value: f64) {
    let mut seen = None;
    for _ in 0..1000 {
        seen = sample(&scrape(registry).await, prefix);
        if seen == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{prefix} stayed at {seen:?}, expected {value}");
}

async fn current_database(tx: &mut arq_tenancy::TenantTx) -> String {
    sqlx::query_scalar("select current_database()::text")
        .fetch_one(tx)
        .await
        .unwrap()
}

#[tokio::test]
async fn read_only_transactions_run_on_the_replica_with_the_same_rls() {
    let primary = TestDb::new(2).await;
    let replica = TestDb::new(2).await;
    let (a, b) = (TenantId::generate(), TenantId::generate());
    // Rows only the replica has, written through its own tenant pool.
    let on_replica = replica.pool(BeginMode::Folded);
    for (t, title) in [(a, "a-on-replica"), (b, "b-on-replica")] {
        let mut tx = on_replica.begin(t).await.unwrap();
        sqlx::query("insert into tasks (tenant_id, title) values ($1, $2)")
            .bind(t.into_uuid())
            .bind(title)
            .execute(&mut tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let registry = MetricsRegistry::new();
    let pool =
        pool_with(&primary, &registry).with_replica(replica.app.clone(), ReplicaOptions::default());

    let mut read = pool.begin_read_only(a).await.unwrap();
    assert!(read.on_replica());
    assert_eq!(current_database(&mut read).await, replica.name());
    let titles: Vec<String> = sqlx::query_scalar("select title from tasks")
        .fetch_all(&mut read)
        .await
        .unwrap();
    assert_eq!(titles, ["a-on-replica"]);
    let write = sqlx::query("insert into tasks (tenant_id, title) values ($1, 'x')")
        .bind(a.into_uuid())
        .execute(&mut read)
        .await
        .unwrap_err();
    assert!(
        write.to_string().contains("read-only transaction"),
        "{write}"
    );
    drop(read);

    let mut write = pool.begin(a).await.unwrap();
    assert!(!write.on_replica());
    assert_eq!(current_database(&mut write).await, primary.name());
    write.rollback().await.unwrap();

    let checks = pool.health_checks();
    let names: Vec<&str> = checks
        .iter()
        .map(arq_core::health::HealthCheck::name)
        .collect();
    assert_eq!(names, ["postgres_primary", "postgres_replica"]);
    for c in &checks {
        arq_core::health::HealthCheck::check(c).await.unwrap();
    }
    let text = scrape(&registry).await;
    assert!(text.contains("db_pool_size{pool=\"replica\"}"), "{text}");
    assert_eq!(sample(&text, "db_replica_fallbacks_total"), Some(0.0));
}

/// Forwards a loopback port to PostgreSQL: the "replica" coming back.
async fn forward(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

#[tokio::test]
async fn unreachable_replica_falls_back_to_the_primary_logs_once_and_recovers() {
    let primary = TestDb::new(2).await;
    let replica = TestDb::new(2).await;
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let replica_pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy_with(replica.options(Role::App).port(port));
    let registry = MetricsRegistry::new();
    let pool = pool_with(&primary, &registry)
        .with_replica(replica_pool, ReplicaOptions::retry_after(Duration::ZERO));
    let logs = Logs::default();
    let _guard = logs.capture();
    let tenant = TenantId::generate();

    for _ in 0..3 {
        let mut tx = pool.begin_read_only(tenant).await.unwrap();
        assert!(!tx.on_replica());
        assert_eq!(current_database(&mut tx).await, primary.name());
        let write = sqlx::query("insert into tasks (tenant_id, title) values ($1, 'x')")
            .bind(tenant.into_uuid())
            .execute(&mut tx)
            .await
            .unwrap_err();
        assert!(
            write.to_string().contains("read-only transaction"),
            "{write}"
        );
    }
    let text = scrape(&registry).await;
    assert_eq!(
        sample(&text, "db_replica_fallbacks_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        logs.text().matches("read replica unreachable").count(),
        1,
        "{}",
        logs.text()
    );
    let checks = pool.health_checks();
    arq_core::health::HealthCheck::check(&checks[0])
        .await
        .unwrap();
    assert!(
        arq_core::health::HealthCheck::check(&checks[1])
            .await
            .is_err()
    );

    // The replica comes back on the same port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let proxy = tokio::spawn(forward(listener));
    let mut tx = pool.begin_read_only(tenant).await.unwrap();
    assert!(tx.on_replica());
    assert_eq!(current_database(&mut tx).await, replica.name());
    drop(tx);
    assert_eq!(
        logs.text().matches("read replica reachable again").count(),
        1
    );
    arq_core::health::HealthCheck::check(&checks[1])
        .await
        .unwrap();
    assert_eq!(
        sample(&scrape(&registry).await, "db_replica_fallbacks_total"),
        Some(3.0)
    );
    proxy.abort();
}

#[tokio::test]
async fn db_config_defaults_match_the_seed_and_connect() {
    let db = TestDb::new(1).await;
    let url = format!(
        "postgres://arq_app:arq_app@127.0.0.1:{}/{}",
        db.options(Role::App).get_port(),
        db.name()
    );
    let config = arq_tenancy::DbConfig::new(url.clone());
    assert_eq!(config.max_connections, 20);
    assert_eq!(config.slow_query_threshold, Duration::from_millis(100));
    assert_eq!(config.statement_timeout, Duration::from_secs(5));
    let pool = config
        .connect_with_metrics(DbMetrics::register(&MetricsRegistry::new()).unwrap())
        .await
        .unwrap();
    let mut tx = pool.begin(TenantId::generate()).await.unwrap();
    // The timeout arrives as a startup parameter, not a statement in every transaction.
    let timeout: String = sqlx::query_scalar("show statement_timeout")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(timeout, "5s");
    tx.commit().await.unwrap();
    assert!(
        pool.unscoped("test").options().get_max_connections() == 20,
        "the seed's 20 connections"
    );
}
