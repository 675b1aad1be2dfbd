//! What the integration tests share: a database of their own on the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test; arq-tenancy's
//! `testing::TestDatabase`) created by the administrator, migrated as `arq_owner`, served as
//! `arq_app` and relayed as `arq_relay`, dropped at the end; and the API in-process (`oneshot`),
//! with tokens signed by a test-only key (`tests/keys/`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "tests; each test binary uses part of this module"
)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arq_auth::{AccessClaims, KeyRing, Rbac, SigningKey, SigningKeyRing, StaticJwks, Verifier};
use arq_core::TenantId;
use arq_tenancy::TenantPool;
pub use arq_tenancy::testing::{Role, TestDatabase};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
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
    pub app: Router,
    pub tenants: TenantPool,
    pub settings: svc::Settings,
    keys: SigningKeyRing,
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
        let pem = include_bytes!("../keys/test-signing-key.pem");
        let keys = SigningKeyRing::new(SigningKey::from_rsa_pem("test-key", pem).unwrap());
        let ring = KeyRing::new(StaticJwks(keys.jwks()), std::time::Duration::from_secs(30));
        let verifier = Verifier::with_rbac(
            settings.auth.verifier_config().unwrap(),
            Arc::new(ring),
            Arc::new(Rbac::from_config(&settings.rbac).unwrap()),
        )
        .unwrap();
        let state = svc::AppState::new(tenants.clone(), &settings.rbac, &settings.queue.exchange);
        let app = svc::app(verifier, state);
        Self {
            app,
            tenants,
            settings,
            keys,
            db,
        }
    }

    fn claims(&self, user: &str) -> AccessClaims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        AccessClaims::new(
            &self.settings.auth.issuer,
            user,
            &self.settings.auth.audience,
            now,
            300,
        )
    }

    /// A token for `user` in `workspace` with `role`, as the auth service signs it.
    pub fn token(&self, user: Uuid, workspace: &Value, role: &str) -> String {
        let tenant: TenantId = workspace.as_str().unwrap().parse().unwrap();
        let claims = self
            .claims(&user.to_string())
            .with_tenant(tenant)
            .with_roles([role]);
        self.keys.sign(&claims).unwrap()
    }

    /// A token for `user` without a tenant (signed in without choosing a workspace).
    pub fn tenantless(&self, user: Uuid) -> String {
        self.keys.sign(&self.claims(&user.to_string())).unwrap()
    }

    /// A token whose subject is not a user id (a service account's).
    pub fn for_subject(&self, subject: &str) -> String {
        self.keys.sign(&self.claims(subject)).unwrap()
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
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
