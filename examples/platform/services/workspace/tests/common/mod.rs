//! What the integration tests share: a database of their own on the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test; arq-tenancy's
//! `testing::TestDatabase`) created by the administrator, migrated as `arq_owner`, served as
//! `arq_app` and relayed as `arq_relay`, dropped at the end; and the API in-process (arq-core's
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
use axum::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use ::workspace as svc;

pub use svc::ROUTE;

/// A database of its own (arq-tenancy's `TestDatabase`: dropped with the handle, also when the
/// test fails) with the relay role, migrated as `arq_owner`, and the pool `main` builds on it
/// after the same start-up audit.
pub async fn database() -> (TestDatabase, TenantPool) {
    let db = TestDatabase::create(svc::NAME).await;
    // The relay role, as an administrator creates it: cluster-wide, raced by other test binaries.
    db.cluster_sql_idempotent(arq_queue::outbox::RELAY_ROLE_SQL)
        .await;
    let owner = db.pool(Role::Owner, 1).await;
    arq_queue::outbox::require_relay_role(&owner).await.unwrap();
    owner.close().await;
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
        let state = svc::AppState::new(tenants.clone(), &settings.rbac, &settings.queue.exchange);
        let app = svc::app(verifier, state);
        Self {
            client: TestClient::new(app),
            tenants,
            settings,
            issuer,
            db,
        }
    }

    /// A token for `user` in `workspace` with `role`, as the auth service signs it.
    pub fn token(&self, user: Uuid, workspace: &Value, role: &str) -> String {
        let tenant: TenantId = workspace.as_str().unwrap().parse().unwrap();
        self.issuer.token(&user.to_string(), tenant, [role])
    }

    /// A token for `user` without a tenant (signed in without choosing a workspace).
    pub fn tenantless(&self, user: Uuid) -> String {
        self.issuer.claims(&user.to_string()).sign()
    }

    /// A token whose subject is not a user id (a service account's).
    pub fn for_subject(&self, subject: &str) -> String {
        self.issuer.claims(subject).sign()
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

    /// Creates a workspace as `user` (without a tenant in the token); panics unless 201.
    pub async fn create(&self, user: Uuid, name: &str) -> Value {
        let (status, created) = self
            .call(
                "POST",
                &format!("{ROUTE}/workspaces"),
                Some(&self.tenantless(user)),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    /// The outbox rows as `(tenant_id, routing_key, payload)`, oldest first, read as the relay
    /// role.
    pub async fn outbox(&self) -> Vec<(Uuid, String, Value)> {
        let pool = arq_queue::outbox::connect_relay_pool(&self.db.url(Role::Relay))
            .await
            .unwrap();
        let rows: Vec<(Uuid, String, Vec<u8>)> =
            sqlx::query_as("SELECT tenant_id, routing_key, envelope FROM arq_outbox ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows.into_iter()
            .map(|(t, k, envelope)| {
                let envelope = arq_queue::Envelope::decode(&envelope).unwrap();
                (t, k, envelope.payload.decode::<Value>().unwrap())
            })
            .collect()
    }

    /// The routing keys of the outbox rows of `workspace`.
    pub async fn events_of(&self, workspace: &Value) -> Vec<String> {
        let id: Uuid = workspace.as_str().unwrap().parse().unwrap();
        self.outbox()
            .await
            .into_iter()
            .filter(|(t, ..)| *t == id)
            .map(|(_, k, _)| k)
            .collect()
    }
}

pub fn user() -> Uuid {
    Uuid::now_v7()
}

pub fn workspace(id: &Value) -> String {
    format!("{ROUTE}/workspaces/{}", id.as_str().unwrap())
}

pub fn members(id: &Value) -> String {
    format!("{ROUTE}/workspaces/{}/members", id.as_str().unwrap())
}

pub fn member(id: &Value, user: Uuid) -> String {
    format!("{ROUTE}/workspaces/{}/members/{user}", id.as_str().unwrap())
}

pub fn invitations(id: &Value) -> String {
    format!("{ROUTE}/workspaces/{}/invitations", id.as_str().unwrap())
}

pub fn accept() -> String {
    format!("{ROUTE}/invitations/accept")
}
