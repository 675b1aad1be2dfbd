//! The items API against the real PostgreSQL (`ARQ_TEST_DATABASE_URL`, default
//! postgres://postgres@127.0.0.1:5432/test): each test creates its own database, migrates it as
//! `arq_owner`, serves it as `arq_app` (the roles of arq-tenancy's `sql/roles.sql`) and drops it
//! at the end. Tokens are signed with a test-only key (`tests/keys/`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

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
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};
use tower::ServiceExt;

use projects as svc;

use svc::ROUTE;

/// A database of its own, dropped when the test ends (also when it fails).
struct TestDb {
    name: String,
    admin: PgConnectOptions,
}

impl TestDb {
    async fn new() -> (Self, TenantPool) {
        // Panics with a message naming the URL and how to start PostgreSQL when it is unreachable.
        let url = require(TestService::Postgres);
        let admin = PgConnectOptions::from_str(&url).unwrap();
        let name = format!(
            "{}_test_{}",
            svc::NAME.replace('-', "_"),
            uuid::Uuid::new_v4().simple()
        );
        let mut conn = admin
            .connect()
            .await
            .expect("connect to PostgreSQL as its administrator");
        conn.execute(AssertSqlSafe(format!(
            "CREATE DATABASE {name} OWNER arq_owner"
        )))
        .await
        .unwrap();
        conn.close().await.unwrap();
        let role = |r: &str| admin.clone().username(r).password(r).database(&name);
        let owner = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(role("arq_owner"))
            .await
            .expect("connect as arq_owner (create the roles with arq-tenancy's sql/roles.sql)");
        svc::migrator().run(&owner).await.unwrap();
        owner.close().await;
        let app = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(role("arq_app"))
            .await
            .expect("connect as arq_app");
        // The same start-up audit as `main`: the database must isolate tenants.
        let tenants = TenantPool::checked(app).await.unwrap();
        (Self { name, admin }, tenants)
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

struct Api {
    app: Router,
    keys: SigningKeyRing,
    issuer: String,
    audience: String,
    _db: TestDb,
}

impl Api {
    async fn new() -> Self {
        let (db, tenants) = TestDb::new().await;
        let settings = svc::load_settings().unwrap();
        let pem = include_bytes!("keys/test-signing-key.pem");
        let keys = SigningKeyRing::new(SigningKey::from_rsa_pem("test-key", pem).unwrap());
        let ring = KeyRing::new(StaticJwks(keys.jwks()), std::time::Duration::from_secs(30));
        let verifier = Verifier::with_rbac(
            settings.auth.verifier_config().unwrap(),
            Arc::new(ring),
            Arc::new(Rbac::from_config(&settings.rbac).unwrap()),
        )
        .unwrap();
        let app = svc::app(verifier, tenants, svc::policies().unwrap());
        Self {
            app,
            keys,
            issuer: settings.auth.issuer,
            audience: settings.auth.audience,
            _db: db,
        }
    }

    fn token(&self, subject: &str, tenant: TenantId, role: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = AccessClaims::new(&self.issuer, subject, &self.audience, now, 300)
            .with_tenant(tenant)
            .with_roles([role]);
        self.keys.sign(&claims).unwrap()
    }

    async fn call(
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
}

fn tenant() -> TenantId {
    uuid::Uuid::new_v4().to_string().parse().unwrap()
}

fn items() -> String {
    format!("{ROUTE}/items")
}

fn item(id: &Value) -> String {
    format!("{ROUTE}/items/{}", id.as_str().unwrap())
}

#[tokio::test]
async fn create_read_update_delete() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let (status, created) = api
        .call(
            "POST",
            &items(),
            Some(&t),
            Some(json!({ "name": "  first  ", "description": "one" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "first");
    assert_eq!(created["owner"], "alice");

    let (status, read) = api.call("GET", &item(&created["id"]), Some(&t), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, created);

    let (status, updated) = api
        .call(
            "PATCH",
            &item(&created["id"]),
            Some(&t),
            Some(json!({ "description": "changed" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "first");
    assert_eq!(updated["description"], "changed");

    let (status, _) = api
        .call("DELETE", &item(&created["id"]), Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem) = api.call("GET", &item(&created["id"]), Some(&t), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["status"], 404);
}

#[tokio::test]
async fn invalid_input_is_a_422_problem_and_duplicates_a_409() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    for body in [
        json!({ "name": "   " }),
        json!({ "name": "x".repeat(101) }),
        json!({ "name": "ok", "description": "d".repeat(1001) }),
    ] {
        let (status, problem) = api.call("POST", &items(), Some(&t), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["status"], 422);
    }
    let (status, _) = api
        .call("GET", &format!("{}?limit=0", items()), Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, _) = api
        .call("POST", &items(), Some(&t), Some(json!({ "name": "same" })))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, problem) = api
        .call("POST", &items(), Some(&t), Some(json!({ "name": "same" })))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
}

#[tokio::test]
async fn the_list_pages_through_every_item_once() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    for i in 0..5 {
        let (status, _) = api
            .call(
                "POST",
                &items(),
                Some(&t),
                Some(json!({ "name": format!("item {i}") })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut uri = format!("{}?limit=2", items());
    loop {
        let (status, page) = api.call("GET", &uri, Some(&t), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let names = page["items"].as_array().unwrap();
        assert!(names.len() <= 2);
        seen.extend(names.iter().map(|i| i["name"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => uri = format!("{}?limit=2&after={next}", items()),
            None => break,
        }
    }
    assert_eq!(seen, ["item 0", "item 1", "item 2", "item 3", "item 4"]);
}

#[tokio::test]
async fn tenants_never_see_each_others_items() {
    let api = Api::new().await;
    let a = api.token("alice", tenant(), "member");
    let b = api.token("bob", tenant(), "manager");
    let (_, created) = api
        .call(
            "POST",
            &items(),
            Some(&a),
            Some(json!({ "name": "secret" })),
        )
        .await;

    let (status, _) = api.call("GET", &item(&created["id"]), Some(&b), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call("DELETE", &item(&created["id"]), Some(&b), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = api.call("GET", &items(), Some(&b), None).await;
    assert_eq!(page["items"], json!([]));
    // The same name is free in the other tenant: uniqueness is per tenant.
    let (status, _) = api
        .call(
            "POST",
            &items(),
            Some(&b),
            Some(json!({ "name": "secret" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn permissions_and_the_policy_guard_every_route() {
    let api = Api::new().await;
    let t = tenant();
    let alice = api.token("alice", t, "member");
    let bob = api.token("bob", t, "member");
    let viewer = api.token("vera", t, "viewer");
    let manager = api.token("mona", t, "manager");

    let (status, _) = api.call("GET", &items(), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .call(
            "POST",
            &items(),
            Some(&viewer),
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call("GET", &items(), Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);

    let (_, created) = api
        .call(
            "POST",
            &items(),
            Some(&alice),
            Some(json!({ "name": "hers" })),
        )
        .await;
    // Another member may read it but not change it (policies/items.yaml) ...
    let (status, _) = api
        .call("GET", &item(&created["id"]), Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            "PATCH",
            &item(&created["id"]),
            Some(&bob),
            Some(json!({ "name": "mine" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call("DELETE", &item(&created["id"]), Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // ... and the refused change was rolled back with its transaction.
    let (_, read) = api
        .call("GET", &item(&created["id"]), Some(&alice), None)
        .await;
    assert_eq!(read["name"], "hers");
    // A manager may.
    let (status, _) = api
        .call("DELETE", &item(&created["id"]), Some(&manager), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn openapi_describes_the_items_routes() {
    let api = Api::new().await;
    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"][items()]["post"].is_object());
    assert!(doc["paths"][format!("{ROUTE}/items/{{id}}")]["delete"].is_object());
}
