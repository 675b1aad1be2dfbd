//! What the integration tests share: a database of their own on the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test) created by the
//! administrator, migrated as `arq_owner`, served as `arq_app` and relayed as `arq_relay`,
//! dropped at the end; and the API in-process (`oneshot`), with tokens signed by a test-only
//! key (`tests/keys/`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "tests; each test binary uses part of this module"
)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arq_auth::{AccessClaims, KeyRing, Rbac, SigningKey, SigningKeyRing, StaticJwks, Verifier};
use arq_core::TenantId;
use arq_core::testing::{TestService, require};
use arq_tenancy::TenantPool;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, PgPool};
use tower::ServiceExt;
use uuid::Uuid;

use ::workspace as svc;

pub use svc::ROUTE;

/// A database of its own, dropped when the test ends (also when it fails).
pub struct TestDb {
    pub name: String,
    pub admin: PgConnectOptions,
}

impl TestDb {
    pub async fn new() -> (Self, TenantPool) {
        // Panics with a message naming the URL and how to start PostgreSQL when it is unreachable.
        let url = require(TestService::Postgres);
        let admin = PgConnectOptions::from_str(&url).unwrap();
        let name = format!("{}_test_{}", svc::NAME, Uuid::new_v4().simple());
        let mut conn = admin
            .connect()
            .await
            .expect("connect to PostgreSQL as its administrator");
        // The relay role, as an administrator creates it (idempotent; the DO block may race
        // with another test binary's, which is harmless once the role exists).
        if let Err(e) = sqlx::raw_sql(arq_queue::outbox::RELAY_ROLE_SQL)
            .execute(&mut conn)
            .await
        {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_relay')",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert!(exists, "creating arq_relay failed: {e}");
        }
        conn.execute(AssertSqlSafe(format!(
            "CREATE DATABASE {name} OWNER arq_owner"
        )))
        .await
        .unwrap();
        conn.close().await.unwrap();
        let db = Self { name, admin };
        let owner = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(db.role("arq_owner"))
            .await
            .expect("connect as arq_owner (create the roles with arq-tenancy's sql/roles.sql)");
        arq_queue::outbox::require_relay_role(&owner).await.unwrap();
        svc::migrator().run(&owner).await.unwrap();
        owner.close().await;
        // The pool `main` builds, after the same start-up audit.
        let tenants = svc::connect_tenants(
            db.url("arq_app"),
            &svc::DatabaseSettings { max_connections: 8 },
        )
        .await
        .expect("connect as arq_app");
        (db, tenants)
    }

    /// Connection options for `role` (whose password is its name, as in development).
    pub fn role(&self, role: &str) -> PgConnectOptions {
        self.admin
            .clone()
            .username(role)
            .password(role)
            .database(&self.name)
    }

    /// The URL of this database for `role`.
    pub fn url(&self, role: &str) -> String {
        let o = &self.admin;
        format!(
            "postgres://{role}:{role}@{}:{}/{}",
            o.get_host(),
            o.get_port(),
            self.name
        )
    }

    /// A pool connected as the administrator, for the checks a test makes behind the API.
    pub async fn superuser(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .connect_with(self.admin.clone().database(&self.name))
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; drop the database from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = admin.connect().await {
                    let _ = conn
                        .execute(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

pub struct Api {
    pub app: Router,
    pub tenants: TenantPool,
    pub settings: svc::Settings,
    keys: SigningKeyRing,
    pub db: TestDb,
}

impl Api {
    pub async fn new() -> Self {
        Self::with_exchange(None).await
    }

    /// The API publishing to `exchange` (default: the configured one).
    pub async fn with_exchange(exchange: Option<&str>) -> Self {
        let (db, tenants) = TestDb::new().await;
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
        let pool = arq_queue::outbox::connect_relay_pool(&self.db.url("arq_relay"))
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
