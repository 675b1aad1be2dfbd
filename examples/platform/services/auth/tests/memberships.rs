//! The membership consumer against the real PostgreSQL and RabbitMQ (`ARQ_TEST_AMQP_URL`,
//! default amqp://guest:guest@127.0.0.1:5672/%2f): the workspace service's events, published on
//! an exchange of this test's own, change what a password login with `tenant=` gets. Each test
//! deletes its queues at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use arq_auth::{JwkSet, Verifier};
use arq_core::TenantId;
use arq_core::metrics::MetricsRegistry;
use arq_core::testing::{TestClient, TestService, require};
use arq_queue::{Envelope, Payload, Queue, QueueMetrics, RabbitBackend};
use arq_tenancy::testing::TestDatabase;
use axum::Router;
use axum::http::StatusCode;
use common::{database, platform_verifier};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use auth as svc;
use svc::ROUTE;

const PASSWORD: &str = "correct horse battery";

struct Platform {
    client: TestClient<Router>,
    issuer: arq_auth::issuer::TokenIssuer,
    pool: PgPool,
    settings: svc::Settings,
    verifier: Verifier,
    _db: TestDatabase,
}

impl Platform {
    async fn new() -> Self {
        let (db, pool) = database().await;
        let mut settings = svc::load_settings().unwrap();
        settings.issuer.signing_key_file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/keys/test-signing-key.pem"
        )
        .into();
        settings.issuer.key_id = "test-key".into();
        let keys = svc::signing_keys(&settings.issuer).unwrap();
        let set: JwkSet =
            serde_json::from_value(serde_json::to_value(keys.jwks()).unwrap()).unwrap();
        let verifier = platform_verifier(&settings, set);
        let issuer = svc::issuer(&settings, keys.clone(), pool.clone()).unwrap();
        let app = svc::app(issuer.clone(), svc::verifier(&settings, &keys).unwrap());
        Self {
            client: TestClient::new(app),
            issuer,
            pool,
            settings,
            verifier,
            _db: db,
        }
    }

    /// `grant_type=password` for `username` in `tenant`: the token's roles, or the refusal.
    async fn login(
        &self,
        username: &str,
        tenant: TenantId,
    ) -> Result<Vec<String>, (StatusCode, Value)> {
        let tenant_id = tenant.to_string();
        let form = [
            ("grant_type", "password"),
            ("username", username),
            ("password", PASSWORD),
            ("tenant", tenant_id.as_str()),
        ];
        let uri = format!("{ROUTE}/oauth/token");
        let (status, body): (StatusCode, Value) = self
            .client
            .request("POST", uri)
            .form(&form)
            .send()
            .await
            .into();
        if status != StatusCode::OK {
            return Err((status, body));
        }
        let principal = self
            .verifier
            .verify(body["access_token"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(principal.tenant(), Some(tenant));
        Ok(principal.roles().to_vec())
    }

    /// Waits (up to 20 s, polling) until a login in `tenant` gives `expected`.
    async fn until(&self, username: &str, tenant: TenantId, expected: Option<&[&str]>) {
        let mut last = None;
        for _ in 0..400 {
            let got = self.login(username, tenant).await;
            let matches = match (&got, expected) {
                (Ok(roles), Some(want)) => {
                    roles.iter().map(String::as_str).eq(want.iter().copied())
                }
                (Err((StatusCode::BAD_REQUEST, body)), None) => body["error"] == "invalid_grant",
                _ => false,
            };
            if matches {
                return;
            }
            last = Some(got);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("a login of {username} in {tenant} never gave {expected:?}; last: {last:?}");
    }
}

fn event(kind: &str, workspace: TenantId, payload: Value) -> Envelope {
    Envelope::with_payload(kind.to_owned(), Payload::native(payload)).with_tenant(workspace)
}

#[tokio::test]
async fn membership_events_decide_the_roles_a_login_gets() {
    let amqp = require(TestService::RabbitMq);
    let unique = format!("auth-test-{}", Uuid::new_v4().simple());
    let platform = Platform::new().await;
    let mut settings = platform.settings.queue.clone();
    settings.url = amqp.clone().into();
    settings.exchange = unique.clone();
    settings.prefix = format!("{unique}.");
    settings.retry_delay_ms = 50;

    // The publisher's side (the workspace service's relay): the exchange, and the consumer's
    // queue declared up front so that nothing published before the consumer starts is lost.
    let topology = settings.topology().unwrap();
    let backend = RabbitBackend::connect(&amqp).await.unwrap();
    let publisher = Queue::new(backend.clone(), topology.clone()).await.unwrap();
    let publish = |kind: &'static str, workspace: TenantId, payload: Value| {
        let publisher = publisher.clone();
        let exchange = unique.clone();
        async move {
            publisher
                .publish_envelope(&exchange, kind, event(kind, workspace, payload))
                .await
                .unwrap();
        }
    };

    let registry = MetricsRegistry::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(svc::memberships::run(
        platform.pool.clone(),
        svc::rbac(&platform.settings).unwrap(),
        settings.clone(),
        QueueMetrics::register(&registry).unwrap(),
        Duration::from_secs(5),
        async move {
            let _ = stopped.await;
        },
    ));

    // `auth create-user alice` (no --tenant, no --role): a user of no workspace yet.
    let alice =
        svc::admin::create_unbound_user(&platform.issuer, &platform.pool, "alice", PASSWORD)
            .await
            .unwrap();
    let bob = svc::admin::create_unbound_user(&platform.issuer, &platform.pool, "bob", PASSWORD)
        .await
        .unwrap();
    let acme = TenantId::generate();
    let (status, refused) = platform.login("alice", acme).await.unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"], "invalid_grant");

    // Alice creates the workspace: she is its admin.
    publish(
        "membership.added",
        acme,
        json!({ "workspace_id": acme, "user_id": alice, "role": "admin" }),
    )
    .await;
    platform.until("alice", acme, Some(&["admin"])).await;

    // A change replaces the role; a redelivered change changes nothing more.
    let changed = json!({ "workspace_id": acme, "user_id": alice, "role": "member", "previous_role": "admin" });
    publish("membership.changed", acme, changed.clone()).await;
    publish("membership.changed", acme, changed).await;
    platform.until("alice", acme, Some(&["member"])).await;

    // A poison message (a role [rbac] does not define) is dead-lettered and blocks nothing.
    publish(
        "membership.added",
        acme,
        json!({ "workspace_id": acme, "user_id": bob, "role": "root" }),
    )
    .await;
    publish(
        "membership.added",
        acme,
        json!({ "workspace_id": acme, "user_id": bob, "role": "viewer" }),
    )
    .await;
    platform.until("bob", acme, Some(&["viewer"])).await;
    let dead = publisher
        .peek_dead(&settings.queue_name(), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].failures[0].error.contains("root"),
        "{:?}",
        dead[0].failures
    );

    // Removed: refused in that workspace, and a second removal is harmless.
    let removed = json!({ "workspace_id": acme, "user_id": alice });
    publish("membership.removed", acme, removed.clone()).await;
    publish("membership.removed", acme, removed).await;
    platform.until("alice", acme, None).await;

    // Roles elsewhere are untouched by a workspace's deletion; everyone there loses theirs.
    let other = TenantId::generate();
    publish(
        "membership.added",
        other,
        json!({ "workspace_id": other, "user_id": bob, "role": "manager" }),
    )
    .await;
    platform.until("bob", other, Some(&["manager"])).await;
    publish("workspace.deleted", acme, json!({ "workspace_id": acme })).await;
    platform.until("bob", acme, None).await;
    assert_eq!(platform.login("bob", other).await.unwrap(), ["manager"]);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("the consumer stops on request")
        .unwrap()
        .unwrap();
    // The worker's metrics (what /metrics shows): nine deliveries, the poison one
    // dead-lettered, the rest acknowledged, none retried.
    let metrics = registry.encode();
    let queue = settings.queue_name();
    for (counter, value) in [
        ("delivered", 9),
        ("acked", 8),
        ("dead_lettered", 1),
        ("retried", 0),
    ] {
        let line = format!("arq_queue_{counter}_total{{queue=\"{queue}\"}} {value}\n");
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    drop(publisher);
    backend.delete(&topology).await.unwrap();
}

#[tokio::test]
async fn the_token_endpoint_works_while_rabbitmq_is_unreachable() {
    let platform = Platform::new().await;
    let mut settings = platform.settings.queue.clone();
    // Nothing listens on port 1: the consumer keeps retrying, sign-in does not notice.
    settings.url = "amqp://127.0.0.1:1/%2f".to_owned().into();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(svc::memberships::run(
        platform.pool.clone(),
        svc::rbac(&platform.settings).unwrap(),
        settings,
        QueueMetrics::unregistered(),
        Duration::from_secs(5),
        async move {
            let _ = stopped.await;
        },
    ));
    let tenant = TenantId::generate();
    let roles: Vec<String> = platform.settings.rbac.roles.keys().cloned().collect();
    svc::admin::create_user(
        &platform.issuer,
        &platform.pool,
        &roles,
        "carol",
        PASSWORD,
        tenant,
        "member",
    )
    .await
    .unwrap();
    assert_eq!(platform.login("carol", tenant).await.unwrap(), ["member"]);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), consumer)
        .await
        .expect("the consumer stops on request while it cannot connect")
        .unwrap()
        .unwrap();
}
