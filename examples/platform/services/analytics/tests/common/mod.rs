//! What the integration tests share: databases of their own on the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test; arq-tenancy's
//! `testing::TestDatabase`) created by the administrator, migrated as `arq_owner`, served as
//! `arq_app` and relayed as `arq_relay`, dropped at the end; the API in-process (arq-core's
//! `TestClient`), with tokens signed by arq-auth's `TestIssuer` with a test-only key
//! (`tests/keys/`); and, for the tests that use RabbitMQ
//! (`ARQ_TEST_AMQP_URL`), settings whose exchange and queue prefix are unique to the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "tests; each test binary uses part of this module"
)]

use std::time::Duration;

use arq_auth::testing::TestIssuer;
use arq_core::TenantId;
use arq_core::testing::{TestClient, TestService, require};
use arq_queue::{Envelope, Payload};
use arq_tenancy::TenantPool;
pub use arq_tenancy::testing::{Role, TestDatabase};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use ::analytics as svc;

pub use svc::ROUTE;

/// A migrated database of its own: arq-tenancy's `TestDatabase` (its methods through `Deref`;
/// dropped with the handle, also when the test fails) and what these tests look at in it.
pub struct TestDb(TestDatabase);

impl std::ops::Deref for TestDb {
    type Target = TestDatabase;

    fn deref(&self) -> &TestDatabase {
        &self.0
    }
}

impl TestDb {
    /// A new database with the relay role, migrated as `arq_owner`.
    pub async fn create() -> Self {
        let db = TestDatabase::create(svc::NAME).await;
        // The relay role, as an administrator creates it: cluster-wide, raced by other test
        // binaries.
        db.cluster_sql_idempotent(arq_queue::outbox::RELAY_ROLE_SQL)
            .await;
        let owner = db.pool(Role::Owner, 1).await;
        arq_queue::outbox::require_relay_role(&owner).await.unwrap();
        owner.close().await;
        db.migrate(&svc::migrator()).await;
        Self(db)
    }

    /// A new database and the runtime pool `main` builds on it (after the same start-up audit).
    pub async fn new() -> (Self, TenantPool) {
        let db = Self::create().await;
        let tenants = db.tenants(None).await;
        (db, tenants)
    }

    /// The runtime pool on this database, reading from `replica` when given.
    pub async fn tenants(&self, replica: Option<String>) -> TenantPool {
        let mut database = svc::DatabaseSettings::new(8);
        // A replica that does not answer is retried on every read: the tests look at each read.
        database.replica_retry_after_ms = 0;
        database.replica_acquire_timeout_ms = 500;
        svc::connect_tenants(self.url(Role::App), replica, &database)
            .await
            .expect("connect as arq_app")
    }

    /// A pool connected as the administrator (a superuser: row-level security does not apply),
    /// to look at every tenant's rows or to write a replica's rows directly.
    pub async fn superuser(&self) -> PgPool {
        self.pool(Role::Admin, 2).await
    }

    /// A pool connected as `arq_relay`, checked as `main` checks it.
    pub async fn relay_pool(&self) -> PgPool {
        arq_queue::outbox::connect_relay_pool(&self.url(Role::Relay))
            .await
            .unwrap()
    }

    /// `(tenant, day, type, count)` of every tenant, ordered.
    pub async fn counts(&self) -> Vec<(uuid::Uuid, chrono::NaiveDate, String, i64)> {
        let pool = self.superuser().await;
        let rows = sqlx::query_as(
            "SELECT tenant_id, day, event_type, count FROM daily_event_counts \
             ORDER BY tenant_id, day, event_type",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows
    }

    /// How many rows `table` has, over every tenant.
    pub async fn rows(&self, table: &str) -> i64 {
        let pool = self.superuser().await;
        let n = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    }
}

/// The API in-process on a database of its own.
pub struct Api {
    pub client: TestClient<Router>,
    pub tenants: TenantPool,
    pub settings: svc::Settings,
    pub issuer: TestIssuer,
    pub db: TestDb,
}

impl Api {
    /// The API with the configured settings.
    pub async fn new() -> Self {
        let db = TestDb::create().await;
        let tenants = db.tenants(None).await;
        Self::on(db, tenants, svc::load_settings().unwrap())
    }

    /// The API with a unique exchange and queue prefix, for tests that use RabbitMQ.
    pub async fn isolated() -> Self {
        let db = TestDb::create().await;
        let tenants = db.tenants(None).await;
        Self::on(db, tenants, isolated_settings())
    }

    /// The API on `db` through `tenants`.
    pub fn on(db: TestDb, tenants: TenantPool, settings: svc::Settings) -> Self {
        let issuer = TestIssuer::for_settings(&settings.auth)
            .with_pem(include_bytes!("../keys/test-signing-key.pem"))
            .unwrap();
        let verifier = issuer.verifier_for(&settings.auth, &settings.rbac).unwrap();
        let app = svc::app(verifier, tenants.clone(), &settings.queue.exchange);
        Self {
            client: TestClient::new(app),
            tenants,
            settings,
            issuer,
            db,
        }
    }

    pub fn token(&self, subject: &str, tenant: TenantId, role: &str) -> String {
        self.issuer.token(subject, tenant, [role])
    }

    pub async fn call_with_headers(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = self.client.request(method, uri).bearer(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.into()
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self.call_with_headers(method, uri, token, body).await;
        (status, value)
    }

    /// Requests a report as `token`; panics unless 202.
    pub async fn request_report(&self, token: &str, from: &str, to: &str) -> Value {
        let (status, body) = self
            .call(
                "POST",
                &reports(),
                Some(token),
                Some(serde_json::json!({ "from": from, "to": to })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// The outbox rows as `(tenant_id, routing_key)`, oldest first, read as the relay role.
    pub async fn outbox(&self) -> Vec<(uuid::Uuid, String)> {
        let pool = self.db.relay_pool().await;
        let rows = sqlx::query_as("SELECT tenant_id, routing_key FROM arq_outbox ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    }
}

/// The configured settings with an exchange and a queue prefix unique to the test, a short
/// relay poll and the broker of `ARQ_TEST_AMQP_URL`.
pub fn isolated_settings() -> svc::Settings {
    let amqp = require(TestService::RabbitMq);
    let unique = format!("analytics-test-{}", uuid::Uuid::new_v4().simple());
    let mut settings = svc::load_settings().unwrap();
    settings.queue.url = amqp.into();
    settings.queue.exchange = unique.clone();
    settings.queue.prefix = format!("{unique}.");
    settings.queue.relay_poll_interval_ms = 20;
    settings
}

pub fn tenant() -> TenantId {
    uuid::Uuid::new_v4().to_string().parse().unwrap()
}

pub fn reports() -> String {
    format!("{ROUTE}/reports")
}

pub fn report(id: &Value) -> String {
    format!("{ROUTE}/reports/{}", id.as_str().unwrap())
}

pub fn daily(from: &str, to: &str) -> String {
    format!("{ROUTE}/daily?from={from}&to={to}")
}

/// Milliseconds since the epoch of `day` at `hh:mm` UTC.
pub fn at(day: &str, hh: u32, mm: u32) -> u64 {
    let day = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    let t = day.and_hms_opt(hh, mm, 0).unwrap().and_utc();
    u64::try_from(t.timestamp_millis()).unwrap()
}

/// An event of `kind` for `tenant`, created at `created_at_ms`, with `payload`.
pub fn event(kind: &str, tenant: Option<TenantId>, created_at_ms: u64, payload: Value) -> Envelope {
    let mut env = Envelope::with_payload(kind.to_owned(), Payload::native(payload));
    if let Some(t) = tenant {
        env = env.with_tenant(t);
    }
    env.created_at_ms = created_at_ms;
    env
}

/// Waits (polling every 20 ms, at most 20 s) until `check` returns `Some`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1000 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 20 s");
}
