//! What the integration tests share: a database of their own on the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test; arq-tenancy's
//! `testing::TestDatabase`) created by the administrator, migrated as `arq_owner`, served as
//! `arq_app` and relayed as `arq_relay` (the roles of arq-tenancy's `sql/roles.sql` and this
//! service's `sql/relay-role.sql`), dropped at the end; and the API in-process (arq-core's
//! `TestClient`), with tokens signed by arq-auth's `TestIssuer` with a test-only key
//! (`tests/keys/`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "tests; each test binary uses part of this module"
)]

use arq_auth::testing::TestIssuer;
use arq_core::TenantId;
use arq_core::testing::TestClient;
use arq_tenancy::TenantPool;
pub use arq_tenancy::testing::{Role, TestDatabase};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

use ::projects as svc;

pub use svc::ROUTE;

/// A database of its own (arq-tenancy's `TestDatabase`: dropped with the handle, also when the
/// test fails) with the relay role, migrated as `arq_owner`, and the pool `main` builds on it
/// after the same start-up audit (the database must isolate tenants).
pub async fn database() -> (TestDatabase, TenantPool) {
    let db = TestDatabase::create(svc::NAME).await;
    // The relay role, as an administrator creates it: cluster-wide, raced by other test binaries.
    db.cluster_sql_idempotent(include_str!("../../sql/relay-role.sql"))
        .await;
    db.migrate(&svc::migrator()).await;
    let tenants = svc::connect_tenants(
        db.url(Role::App),
        &svc::DatabaseSettings { max_connections: 8 },
    )
    .await
    .expect("connect as arq_app");
    (db, tenants)
}

pub struct Api {
    pub client: TestClient<Router>,
    pub tenants: TenantPool,
    pub settings: svc::Settings,
    pub issuer: TestIssuer,
    pub db: TestDatabase,
}

impl Api {
    pub async fn new() -> Self {
        Self::with_exchange(None).await
    }

    /// The API publishing to `exchange` (default: the configured one).
    pub async fn with_exchange(exchange: Option<&str>) -> Self {
        let (db, tenants) = database().await;
        let mut settings = svc::load_settings().unwrap();
        if let Some(e) = exchange {
            settings.queue.exchange = e.to_owned();
        }
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

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.client.call(method, uri, token, body).await
    }

    /// Sends a request with extra `headers`; returns the status, the response headers and the
    /// body (JSON when it parses, else a string; `Null` when empty).
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = self.client.request(method, uri).bearer(token);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.into()
    }

    /// Creates a project as `token`; panics unless 201.
    pub async fn create(&self, token: &str, body: Value) -> Value {
        let (status, created) = self
            .call("POST", &projects(), Some(token), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    /// PATCHes project `id` with `If-Match: "version"`.
    pub async fn patch(
        &self,
        token: &str,
        id: &Value,
        version: i64,
        body: Value,
    ) -> (StatusCode, Value) {
        let tag = format!("\"{version}\"");
        let (status, _, value) = self
            .send(
                "PATCH",
                &project(id),
                Some(token),
                &[("if-match", &tag)],
                Some(body),
            )
            .await;
        (status, value)
    }

    /// DELETEs `uri` (a project, maybe with `?recursive=true`) with `If-Match: "version"`.
    pub async fn delete(&self, token: &str, uri: &str, version: i64) -> (StatusCode, Value) {
        let tag = format!("\"{version}\"");
        let (status, _, value) = self
            .send("DELETE", uri, Some(token), &[("if-match", &tag)], None)
            .await;
        (status, value)
    }

    /// A pool connected as `arq_relay`, checked as `main` checks it.
    pub async fn relay_pool(&self) -> PgPool {
        svc::relay::connect_pool(&self.db.url(Role::Relay))
            .await
            .unwrap()
    }

    /// The outbox rows as `(tenant_id, routing_key, payload)`, oldest first, read as the relay
    /// role.
    pub async fn outbox(&self) -> Vec<(uuid::Uuid, String, Value)> {
        let pool = self.relay_pool().await;
        let rows: Vec<(uuid::Uuid, String, Vec<u8>)> =
            sqlx::query_as("SELECT tenant_id, routing_key, envelope FROM arq_outbox ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows.into_iter()
            .map(|(t, k, e)| {
                let envelope = arq_queue::Envelope::decode(&e).unwrap();
                assert_eq!(
                    envelope.tenant.map(|x| x.to_string()),
                    Some(t.to_string()),
                    "the envelope names the row's tenant"
                );
                let payload = serde_json::from_slice(&envelope.payload.to_json().unwrap()).unwrap();
                (t, k, payload)
            })
            .collect()
    }
}

pub fn tenant() -> TenantId {
    uuid::Uuid::new_v4().to_string().parse().unwrap()
}

pub fn projects() -> String {
    format!("{ROUTE}/projects")
}

pub fn project(id: &Value) -> String {
    format!("{ROUTE}/projects/{}", id.as_str().unwrap())
}
