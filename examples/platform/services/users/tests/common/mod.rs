//! What the integration tests share: a database of their own on the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test; arq-tenancy's
//! `testing::TestDatabase`) created by the administrator (who also runs
//! `sql/preferences-search.sql` in it and creates the relay role), migrated as `arq_owner`,
//! served as `arq_app` and relayed as `arq_relay`, dropped at the end; the encryption keys random
//! per test; and the API in-process (arq-core's `TestClient`), with tokens signed by arq-auth's
//! `TestIssuer` with a test-only key (`tests/keys/`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "tests; each test binary uses part of this module"
)]

use std::sync::Arc;

use arq_auth::testing::TestIssuer;
use arq_core::TenantId;
use arq_core::testing::TestClient;
use arq_queue::Envelope;
use arq_tenancy::TenantPool;
use arq_tenancy::crypto::LocalKekProvider;
pub use arq_tenancy::testing::{Role, TestDatabase};
use axum::Router;
use axum::http::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use users as svc;

pub use svc::ROUTE;

/// A database of its own (arq-tenancy's `TestDatabase`: dropped with the handle, also when the
/// test fails) with the relay role and the administrator's `sql/preferences-search.sql`,
/// migrated as `arq_owner`, and the pool `main` builds on it after the same start-up audit (the
/// database must isolate tenants).
pub async fn database() -> (TestDatabase, TenantPool) {
    let db = TestDatabase::create(svc::NAME).await;
    // The relay role, as an administrator creates it: cluster-wide, raced by other test binaries.
    db.cluster_sql_idempotent(arq_queue::outbox::RELAY_ROLE_SQL)
        .await;
    let owner = db.pool(Role::Owner, 1).await;
    // `users migrate` refuses until the administrator's part is in place, saying what to run.
    let refused = svc::require_search_operator(&owner).await.unwrap_err();
    assert!(
        format!("{refused:#}").contains("sql/preferences-search.sql"),
        "{refused:#}"
    );
    db.admin_sql(svc::PREFERENCES_SEARCH_SQL).await;
    arq_queue::outbox::require_relay_role(&owner).await.unwrap();
    svc::require_search_operator(&owner).await.unwrap();
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

/// Random key material for one test.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    key
}

pub struct Api {
    pub client: TestClient<Router>,
    pub tenants: TenantPool,
    pub settings: svc::Settings,
    pub crypto: Arc<svc::crypto::Crypto>,
    pub kek: [u8; 32],
    pub index_key: [u8; 32],
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
        let (kek, index_key) = (random_key(), random_key());
        let crypto = Arc::new(svc::crypto::Crypto::new(
            LocalKekProvider::new(&settings.encryption.kek_id, kek),
            index_key,
            tenants.clone(),
        ));
        let issuer = TestIssuer::for_settings(&settings.auth)
            .with_pem(include_bytes!("../keys/test-signing-key.pem"))
            .unwrap();
        let verifier = issuer.verifier_for(&settings.auth, &settings.rbac).unwrap();
        let app = svc::app(
            verifier,
            tenants.clone(),
            svc::policies().unwrap(),
            crypto.clone(),
            &settings.queue.exchange,
        );
        Self {
            client: TestClient::new(app),
            tenants,
            settings,
            crypto,
            kek,
            index_key,
            issuer,
            db,
        }
    }

    /// An access token for `subject` in workspace `tenant` with `role`; admins signed in with a
    /// second factor (arq-auth refuses admin tokens without one).
    pub fn token_for(&self, subject: &str, tenant: TenantId, role: &str) -> String {
        let amr: &[&str] = if role == "admin" {
            &["pwd", "otp"]
        } else {
            &["pwd"]
        };
        self.token_with_amr(subject, tenant, role, amr)
    }

    /// An access token naming its authentication methods (`amr`).
    pub fn token_with_amr(
        &self,
        subject: &str,
        tenant: TenantId,
        role: &str,
        amr: &[&str],
    ) -> String {
        self.issuer
            .claims(subject)
            .tenant(tenant)
            .roles([role])
            .amr(amr.iter().copied())
            .sign()
    }

    pub fn token(&self, user: Uuid, tenant: TenantId, role: &str) -> String {
        self.token_for(&user.to_string(), tenant, role)
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

    /// `PUT /users/users/me` as `token`; panics unless 200.
    pub async fn put_me(&self, token: &str, body: Value) -> Value {
        let (status, profile) = self.call("PUT", &me(), Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{profile}");
        profile
    }

    /// A pool connected as `arq_relay`, checked as `main` checks it.
    pub async fn relay_pool(&self) -> PgPool {
        arq_queue::outbox::connect_relay_pool(&self.db.url(Role::Relay))
            .await
            .unwrap()
    }

    /// The outbox rows as `(tenant_id, routing_key, envelope)`, oldest first, read as the relay
    /// role.
    pub async fn outbox(&self) -> Vec<(Uuid, String, Envelope)> {
        let pool = self.relay_pool().await;
        let rows: Vec<(Uuid, String, Vec<u8>)> =
            sqlx::query_as("SELECT tenant_id, routing_key, envelope FROM arq_outbox ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        rows.into_iter()
            .map(|(t, k, e)| (t, k, Envelope::decode(&e).unwrap()))
            .collect()
    }

    /// The routing keys of the outbox rows, oldest first.
    pub async fn outbox_kinds(&self) -> Vec<String> {
        self.outbox().await.into_iter().map(|(_, k, _)| k).collect()
    }
}

pub fn tenant() -> TenantId {
    Uuid::new_v4().to_string().parse().unwrap()
}

pub fn users() -> String {
    format!("{ROUTE}/users")
}

pub fn me() -> String {
    format!("{ROUTE}/users/me")
}

pub fn user(id: Uuid) -> String {
    format!("{ROUTE}/users/{id}")
}

/// `GET /users/users?...` with `query` already encoded.
pub fn list(query: &str) -> String {
    format!("{ROUTE}/users?{query}")
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
