//! Events through the transactional outbox to the real RabbitMQ (`ARQ_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f): each test publishes to an exchange of its own and
//! deletes its queues at the end. See `common/mod.rs` for the database each test gets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use arq_core::metrics::MetricsRegistry;
use arq_core::testing::{TestService, require};
use arq_queue::testing::receive;
use arq_queue::{Backend, Consumer, RabbitBackend};
use axum::http::StatusCode;
use common::{Api, Role, me, tenant, user};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use users as svc;

/// The relay of `api`'s database publishing to `url`, until the sender is used.
fn spawn_relay(
    api: &Api,
    pool: sqlx::PgPool,
    url: &str,
) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let mut settings = api.settings.queue.clone();
    settings.url = url.to_owned().into();
    settings.relay_poll_interval_ms = 20;
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(svc::relay::run(
        pool,
        settings,
        MetricsRegistry::new(),
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, relay)
}

#[tokio::test]
async fn profile_events_reach_rabbitmq_without_personal_data() {
    let amqp = require(TestService::RabbitMq);
    let unique = format!("users-test-{}", Uuid::new_v4().simple());
    let mut api = Api::with_exchange(Some(&unique)).await;
    api.settings.queue.prefix = format!("{unique}.");
    let (stop, relay) = spawn_relay(&api, api.relay_pool().await, &amqp);

    let t = tenant();
    let ada = Uuid::new_v4();
    api.put_me(
        &api.token(ada, t, "member"),
        json!({ "display_name": "Ada", "email": "ada@example.com", "phone": "+15550100199" }),
    )
    .await;
    let (status, _) = api
        .call(
            "PUT",
            &format!("{}/tier", user(ada)),
            Some(&api.token(Uuid::new_v4(), t, "admin")),
            Some(json!({"tier": "enterprise"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            "DELETE",
            &user(ada),
            Some(&api.token(ada, t, "member")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The relay declared the events queue (bound to user.#) before publishing.
    let topology = svc::relay::topology(&api.settings.queue).unwrap();
    let name = api.settings.queue.events_queue_name().unwrap();
    let backend = RabbitBackend::connect(&amqp).await.unwrap();
    let mut events = backend
        .consume(topology.queue(&name).unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = receive(&mut events, Duration::from_secs(20)).await.unwrap();
        assert_eq!(e.tenant, Some(t));
        let payload: Value = e.payload.decode().unwrap();
        assert!(!payload.to_string().contains("example.com"), "{payload}");
        got.push((e.message_type.to_string(), payload));
    }
    assert_eq!(got[0].0, "user.profile_updated");
    assert_eq!(got[0].1["user_id"], ada.to_string());
    assert_eq!(
        got[1],
        (
            "user.tier_changed".to_owned(),
            json!({"user_id": ada, "tier": "enterprise", "previous_tier": "free"})
        )
    );
    assert_eq!(got[2], ("user.deleted".to_owned(), json!({"user_id": ada})));

    // Every row was published and deleted.
    let mut rounds = 0;
    while !api.outbox().await.is_empty() {
        rounds += 1;
        assert!(rounds < 500, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    relay.await.unwrap().unwrap();
    events.close().await;
    backend.delete(&topology).await.unwrap();
}

#[tokio::test]
async fn requests_succeed_while_rabbitmq_is_unreachable() {
    let api = Api::new().await;
    // Nothing listens on port 1: the relay keeps retrying, requests do not notice.
    let (stop, relay) = spawn_relay(&api, api.relay_pool().await, "amqp://127.0.0.1:1/%2f");
    let t = tenant();
    let ada = Uuid::new_v4();
    api.put_me(
        &api.token(ada, t, "member"),
        json!({ "display_name": "Ada", "email": "ada@example.com" }),
    )
    .await;
    let (status, _) = api
        .call("GET", &me(), Some(&api.token(ada, t, "viewer")), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.outbox_kinds().await, ["user.profile_updated"]);
    // The relay stops on request even while it cannot connect.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("the relay did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_runtime_role_only_inserts_into_the_outbox() {
    let api = Api::new().await;
    let t = tenant();
    api.put_me(
        &api.token(Uuid::new_v4(), t, "member"),
        json!({ "display_name": "Ada", "email": "ada@example.com" }),
    )
    .await;
    let mut tx = api.tenants.begin(t).await.unwrap();
    let read = sqlx::query("SELECT * FROM arq_outbox")
        .fetch_all(&mut *tx)
        .await
        .unwrap_err();
    assert!(read.to_string().contains("permission denied"), "{read}");
    drop(tx);
    let err = arq_queue::outbox::connect_relay_pool(&api.db.url(Role::App))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("arq_relay"), "{err}");
    assert_eq!(api.outbox().await.len(), 1);
}
