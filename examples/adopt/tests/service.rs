//! The adopt example against the real PostgreSQL (`ARQ_TEST_DATABASE_URL`, default
//! postgres://postgres@127.0.0.1:5432/test) and RabbitMQ (`ARQ_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f). Each test creates its own database, migrates it as
//! `arq_owner`, serves it as `arq_app` (the roles of arq-tenancy's `sql/roles.sql`) and drops it
//! at the end; RabbitMQ exchanges and queues get unique names and are deleted at the end.
//! The service runs in-process (arq-core's `TestClient`); tokens are signed by arq-auth's
//! `TestIssuer` with the development key the default configuration trusts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arq_auth::SigningKey;
use arq_auth::testing::TestIssuer;
use arq_core::TenantId;
use arq_core::edge::EdgeService;
use arq_core::metrics::MetricsRegistry;
use arq_core::testing::{TestClient, TestService, require};
use arq_example_adopt::step5_events::{EventSettings, Events};
use arq_example_adopt::{self as adopt, Settings, step2_edge, step3_auth, step4_tenancy};
use arq_queue::RabbitBackend;
use arq_tenancy::TenantPool;
use arq_tenancy::testing::{Role, TestDatabase};
use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;

/// A database of its own (arq-tenancy's `TestDatabase`: dropped with the handle, also when the
/// test fails), migrated as `arq_owner`, with a pool for `arq_app` and one for `arq_owner` (what
/// the relay reads the outbox with).
async fn database() -> (TestDatabase, PgPool, PgPool) {
    let db = TestDatabase::create("adopt").await;
    db.migrate(&step4_tenancy::migrator()).await;
    let owner = db.pool(Role::Owner, 2).await;
    let app = db.pool(Role::App, 4).await;
    (db, app, owner)
}

/// RabbitMQ names of their own, deleted when the test ends (also when it fails).
struct TestTopology {
    url: String,
    events: EventSettings,
}

impl TestTopology {
    fn new() -> Self {
        let url = require(TestService::RabbitMq);
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..12];
        Self {
            url,
            events: EventSettings {
                exchange: format!("adopt-test.{unique}.events"),
                queue: format!("adopt-test.{unique}.activity"),
            },
        }
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        let url = self.url.clone();
        let topology = adopt::step5_events::topology(&self.events);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(backend) = RabbitBackend::connect(&url).await {
                    let _ = backend.delete(&topology).await;
                }
            });
        })
        .join();
    }
}

/// Tokens for `settings`' issuer and audience, signed with the development key (and its key
/// id) that the default configuration's `dev-jwks.json` publishes.
fn dev_issuer(settings: &Settings) -> TestIssuer {
    let pem = include_bytes!("../keys/dev-signing-key.pem");
    TestIssuer::new(&settings.auth.issuer, &settings.auth.audience)
        .with_key(SigningKey::from_rsa_pem("adopt-dev", pem).unwrap())
}

struct Api {
    settings: Settings,
    client: TestClient<EdgeService>,
    registry: MetricsRegistry,
    tenants: TenantPool,
    owner: PgPool,
    issuer: TestIssuer,
    topology: TestTopology,
    _db: TestDatabase,
}

impl Api {
    /// The service as `main` composes it (steps 1–4, behind the edge stack of step 2), with a
    /// metrics registry of its own.
    async fn new() -> Self {
        let (db, app, owner) = database().await;
        let topology = TestTopology::new();
        let mut settings = adopt::load_settings().unwrap();
        settings.events = topology.events.clone();
        // The same start-up audit as `main`.
        let tenants = step4_tenancy::tenant_pool(app).await.unwrap();
        let verifier = step3_auth::verifier(&settings.auth, &settings.rbac, &settings.dir).unwrap();
        let registry = MetricsRegistry::new();
        let health = step2_edge::health(&settings.arq, &tenants, Some(&topology.url));
        let router = adopt::app(verifier, tenants.clone(), &settings.events);
        let service = step2_edge::service(router, &settings.arq, &registry, &health).unwrap();
        Self {
            issuer: dev_issuer(&settings),
            settings,
            client: TestClient::new(service),
            registry,
            tenants,
            owner,
            topology,
            _db: db,
        }
    }

    /// Step 5's relay and worker, running until the returned sender is dropped or fired.
    async fn start_events(
        &self,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let events = Events::start(
            &self.settings.events,
            &self.topology.url,
            self.owner.clone(),
            self.tenants.clone(),
            &self.registry,
        )
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(events.run(async {
            let _ = stopped.await;
        }));
        (stop, task)
    }

    fn token(&self, subject: &str, tenant: TenantId, role: &str) -> String {
        self.issuer.token(subject, tenant, [role])
    }

    /// Sends a request through the edge stack; returns the status, the headers and the body
    /// (JSON when it parses, else a string).
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut request = self.client.request(method, uri).bearer(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.into()
    }

    async fn outbox_rows(&self) -> Vec<(Option<uuid::Uuid>, String)> {
        sqlx::query_as("SELECT tenant_id, routing_key FROM arq_outbox ORDER BY seq")
            .fetch_all(&self.owner)
            .await
            .unwrap()
    }
}

fn tenant() -> TenantId {
    TenantId::generate()
}

fn content_type(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_problems() {
    let api = Api::new().await;
    for token in [None, Some("not-a-token")] {
        let (status, headers, problem) = api.call("GET", "/notes", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
        assert_eq!(content_type(&headers), "application/problem+json");
        assert_eq!(problem["status"], 401);
        if token.is_some() {
            // arq-auth's refusal carries the RFC 6750 challenge. (Without any token the 401
            // comes from tenant resolution, which runs before the handler, and has none.)
            assert_eq!(
                headers[header::WWW_AUTHENTICATE],
                "Bearer error=\"invalid_token\""
            );
        }
    }
    // A token from another audience is refused the same way.
    let foreign = api
        .issuer
        .claims("eve")
        .audience("billing")
        .tenant(tenant())
        .roles(["member"])
        .sign();
    let (status, _, _) = api.call("GET", "/notes", Some(&foreign), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing was written.
    assert!(api.outbox_rows().await.is_empty());
}

#[tokio::test]
async fn a_viewer_may_read_but_not_write() {
    let api = Api::new().await;
    let viewer = api.token("vera", tenant(), "viewer");
    let (status, headers, problem) = api
        .call(
            "POST",
            "/notes",
            Some(&viewer),
            Some(json!({ "body": "hi" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(content_type(&headers), "application/problem+json");
    assert!(
        problem["detail"].as_str().unwrap().contains("write:notes"),
        "{problem}"
    );
    let (status, _, notes) = api.call("GET", "/notes", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(notes, json!([]));
    assert!(api.outbox_rows().await.is_empty());
}

#[tokio::test]
async fn members_create_read_and_list_notes_and_each_note_is_announced() {
    let api = Api::new().await;
    let t = tenant();
    let alice = api.token("alice", t, "member");
    let (status, _, first) = api
        .call(
            "POST",
            "/notes",
            Some(&alice),
            Some(json!({ "body": "  first  " })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["body"], "first");
    assert_eq!(first["author"], "alice");
    let (status, _, second) = api
        .call(
            "POST",
            "/notes",
            Some(&alice),
            Some(json!({ "body": "second" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _, list) = api.call("GET", "/notes", Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([second, first]), "newest first");
    let uri = format!("/notes/{}", first["id"].as_str().unwrap());
    let (status, _, read) = api.call("GET", &uri, Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, first);

    // Invalid input is a 422 problem, and its transaction wrote nothing.
    for body in [
        json!({ "body": "   " }),
        json!({ "body": "x".repeat(2001) }),
    ] {
        let (status, headers, problem) = api.call("POST", "/notes", Some(&alice), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(content_type(&headers), "application/problem+json");
    }
    // One note.created per created note, in the outbox with the tenant (no relay runs here).
    let rows = api.outbox_rows().await;
    assert_eq!(
        rows,
        vec![
            (Some(t.into_uuid()), "note.created".to_owned()),
            (Some(t.into_uuid()), "note.created".to_owned()),
        ]
    );
}

#[tokio::test]
async fn tenants_never_see_each_others_notes() {
    let api = Api::new().await;
    let a = api.token("alice", tenant(), "member");
    let b = api.token("bob", tenant(), "member");
    let (_, _, secret) = api
        .call(
            "POST",
            "/notes",
            Some(&a),
            Some(json!({ "body": "secret" })),
        )
        .await;
    let uri = format!("/notes/{}", secret["id"].as_str().unwrap());

    let (status, _, _) = api.call("GET", &uri, Some(&b), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, list) = api.call("GET", "/notes", Some(&b), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    // Choosing A's tenant with the selector header does not help: B does not belong to it.
    let a_tenant = api.outbox_rows().await[0].0.unwrap().to_string();
    let response = api
        .client
        .request("GET", "/notes")
        .bearer(b.as_str())
        .header("x-tenant-id", &a_tenant)
        .send()
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN, "{}", response.body);
    // A still sees its note.
    let (_, _, list) = api.call("GET", "/notes", Some(&a), None).await;
    assert_eq!(list, json!([secret]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn note_created_travels_through_the_outbox_and_rabbitmq_to_the_worker_in_its_tenant() {
    let api = Api::new().await;
    let (stop, events) = api.start_events().await;
    let a = api.token("alice", tenant(), "member");
    let b = api.token("bob", tenant(), "member");
    let (status, _, note) = api
        .call(
            "POST",
            "/notes",
            Some(&a),
            Some(json!({ "body": "announce me" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // The relay publishes the committed row; the worker records it in tenant A's transaction.
    let deadline = Instant::now() + Duration::from_secs(10);
    let activity = loop {
        let (status, _, activity) = api.call("GET", "/activity", Some(&a), None).await;
        assert_eq!(status, StatusCode::OK);
        if activity.as_array().is_some_and(|a| !a.is_empty()) {
            break activity;
        }
        assert!(
            Instant::now() < deadline,
            "note.created was not consumed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(activity.as_array().unwrap().len(), 1, "{activity}");
    assert_eq!(activity[0]["note_id"], note["id"]);
    assert_eq!(activity[0]["kind"], "note.created");
    // Row-level security let the worker write only in the envelope's tenant: B sees nothing.
    let (_, _, other) = api.call("GET", "/activity", Some(&b), None).await;
    assert_eq!(other, json!([]));
    // The relay deleted what it published.
    assert!(api.outbox_rows().await.is_empty());

    stop.send(()).unwrap();
    events.await.unwrap().unwrap();
    let metrics = api.registry.encode();
    let queue = &api.settings.events.queue;
    assert!(
        metrics.contains(&format!("arq_queue_acked_total{{queue=\"{queue}\"}} 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_metrics_and_unknown_routes_answer_through_the_edge_stack() {
    let api = Api::new().await;
    let (status, headers, live) = api.call("GET", "/health/live", None, None).await;
    assert_eq!(status, StatusCode::OK, "{live}");
    assert!(headers.contains_key("x-request-id"));
    let (status, _, ready) = api.call("GET", "/health/ready", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(
        ready["checks"]["postgres_primary"]["status"], "pass",
        "{ready}"
    );
    assert_eq!(ready["checks"]["rabbitmq"]["status"], "pass", "{ready}");

    let t = api.token("alice", tenant(), "viewer");
    let (status, _, _) = api.call("GET", "/notes", Some(&t), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, problem) = api.call("GET", "/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type(&headers), "application/problem+json");
    assert_eq!(problem["status"], 404);

    let (status, _, metrics) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(
            "http_request_duration_seconds_count{method=\"GET\",route=\"/notes\",status_class=\"2xx\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn the_audit_accepts_the_outbox_only_while_it_is_insert_only() {
    let api = Api::new().await;
    let mut conn = api
        .tenants
        .unscoped("test: audit as the runtime role")
        .acquire()
        .await
        .unwrap();
    let report = arq_tenancy::audit::ensure_safe(&mut conn).await.unwrap();
    assert_eq!(report.insert_only_tables, ["arq_outbox"]);
    // A runtime role that could read the outbox could read every tenant's events.
    sqlx::query("GRANT SELECT ON arq_outbox TO arq_app")
        .execute(&api.owner)
        .await
        .unwrap();
    let refused = arq_tenancy::audit::ensure_safe(&mut conn)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("arq_outbox"), "{refused}");
    assert!(refused.contains("tenancy/rls-not-enabled"), "{refused}");
}

#[test]
fn dev_jwks_is_the_public_half_of_the_dev_key() {
    let settings = adopt::load_settings().unwrap();
    let file = step3_auth::read_jwks_file(&settings.dir.join("dev-jwks.json")).unwrap();
    assert_eq!(
        serde_json::to_value(file).unwrap(),
        serde_json::to_value(dev_issuer(&settings).jwks()).unwrap(),
        "regenerate config/dev-jwks.json with `cargo run -p arq-example-adopt --bin adopt-dev-token -- --jwks`"
    );
}

#[test]
fn missing_environment_is_named_in_the_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_arq-example-adopt"))
        .env_remove("DATABASE_URL")
        .env("ARQ__TELEMETRY__LOG_LEVEL", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set DATABASE_URL"), "{stderr}");
}

/// `main` as a reader runs it: migrate, serve, create a note, see it consumed, SIGTERM, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_migrates_serves_and_stops_cleanly() {
    let (db, app, owner) = database().await;
    // The binary migrates again: migrations already applied are skipped.
    app.close().await;
    owner.close().await;
    let topology = TestTopology::new();
    let vars = [
        ("DATABASE_OWNER_URL", db.url(Role::Owner)),
        ("DATABASE_URL", db.url(Role::App)),
        ("RELAY_DATABASE_URL", db.url(Role::Owner)),
        ("AMQP_URL", topology.url.clone()),
        ("ARQ__SERVER__ADDR", "127.0.0.1:0".to_owned()),
        ("ARQ__TELEMETRY__LOG_LEVEL", "warn".to_owned()),
        ("ARQ__EVENTS__EXCHANGE", topology.events.exchange.clone()),
        ("ARQ__EVENTS__QUEUE", topology.events.queue.clone()),
    ];
    let bin = env!("CARGO_BIN_EXE_arq-example-adopt");
    let migrate = Command::new(bin)
        .arg("migrate")
        .envs(vars.clone())
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let mut child = Command::new(bin)
        .envs(vars)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("the service exited before listening: {stderr}");
        };
        if let Some(rest) = line.unwrap().strip_prefix("adopt listening on http://") {
            break rest.to_owned();
        }
    };
    let base = format!("http://{addr}");
    let token = dev_issuer(&adopt::load_settings().unwrap()).token("alice", tenant(), ["member"]);
    let (status, ready) = http(&base, "GET", "/health/ready", None, None).await;
    assert_eq!(status, 200, "{ready}");
    let (status, note) = http(
        &base,
        "POST",
        "/notes",
        Some(&token),
        Some(r#"{"body":"hello"}"#),
    )
    .await;
    assert_eq!(status, 201, "{note}");
    let note: Value = serde_json::from_str(&note).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, activity) = http(&base, "GET", "/activity", Some(&token), None).await;
        if activity.contains(note["id"].as_str().unwrap()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not consumed within 10 s: {activity}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// One HTTP/1.1 request over a fresh connection; the status and the body.
async fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}
