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
use arq_queue::{Backend, Consumer, Queue, QueueConfig, RabbitBackend, Topology};
use axum::http::StatusCode;
use common::{Api, Role, invitations, user};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use ::workspace as svc;

/// The relay of `api`'s database publishing to `url`, until the sender is used.
async fn spawn_relay(
    api: &Api,
    url: &str,
) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let pool = arq_queue::outbox::connect_relay_pool(&api.db.url(Role::Relay))
        .await
        .unwrap();
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
async fn events_reach_rabbitmq_with_the_workspace_as_tenant() {
    let amqp = require(TestService::RabbitMq);
    let unique = format!("workspace-test-{}", uuid::Uuid::new_v4().simple());
    let mut api = Api::with_exchange(Some(&unique)).await;
    api.settings.queue.prefix = format!("{unique}.");

    // The consumers' side: the notifications worker's email.send and the auth service's
    // memberships queue, bound on the test's exchange.
    let mail = QueueConfig::new(format!("{unique}.email.send")).bind(&unique, "email.send");
    let memberships = QueueConfig::new(format!("{unique}.auth.memberships"))
        .bind(&unique, "membership.*")
        .bind(&unique, "workspace.deleted");
    let consumers = Topology::new([unique.clone()])
        .queue_config(mail.clone())
        .queue_config(memberships.clone());
    let backend = RabbitBackend::connect(&amqp).await.unwrap();
    let queue = Queue::new(backend.clone(), consumers.clone())
        .await
        .unwrap();
    let mut mails = backend.consume(&mail).await.unwrap();
    let mut roles = backend.consume(&memberships).await.unwrap();

    let (stop, relay) = spawn_relay(&api, &amqp).await;
    let alice = user();
    let ws = api.create(alice, "Acme").await;
    let id = &ws["id"];
    let tenant: arq_core::TenantId = id.as_str().unwrap().parse().unwrap();

    let added = receive(&mut roles, Duration::from_secs(20)).await.unwrap();
    assert_eq!(&*added.message_type, "membership.added");
    assert_eq!(added.tenant, Some(tenant));
    let payload: Value = added.payload.decode().unwrap();
    assert_eq!(
        payload,
        json!({ "workspace_id": id, "user_id": alice, "role": "admin" })
    );

    let (status, invitation) = api
        .call(
            "POST",
            &invitations(id),
            Some(&api.token(alice, id, "admin")),
            Some(json!({ "email": "bob@example.com", "role": "member" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{invitation}");
    let email = receive(&mut mails, Duration::from_secs(20)).await.unwrap();
    assert_eq!(email.tenant, Some(tenant));
    let payload: Value = email.payload.decode().unwrap();
    assert_eq!(payload["to"], "bob@example.com");
    assert_eq!(payload["subject"], "You are invited to join Acme");
    assert_eq!(payload["invitation_id"], invitation["id"]);
    let body = payload["body"].as_str().unwrap();
    assert!(
        body.lines().any(|l| l.starts_with("Invitation code: ")),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == format!("Workspace: {}", id.as_str().unwrap())),
        "{body}"
    );

    // The events nobody else subscribes to went to the service's own queue.
    let own = svc::relay::topology(&api.settings.queue).unwrap();
    let name = api.settings.queue.events_queue_name().unwrap();
    let mut events = backend.consume(own.queue(&name).unwrap()).await.unwrap();
    let mut kinds = vec![
        receive(&mut events, Duration::from_secs(20))
            .await
            .unwrap()
            .message_type
            .to_string(),
        receive(&mut events, Duration::from_secs(20))
            .await
            .unwrap()
            .message_type
            .to_string(),
    ];
    kinds.sort();
    assert_eq!(kinds, ["invitation.created", "workspace.created"]);

    // Every row was published and deleted.
    let mut rounds = 0;
    while !api.outbox().await.is_empty() {
        rounds += 1;
        assert!(rounds < 500, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    relay.await.unwrap().unwrap();
    mails.close().await;
    roles.close().await;
    events.close().await;
    drop(queue);
    backend.delete(&consumers).await.unwrap();
    backend.delete(&own).await.unwrap();
}

#[tokio::test]
async fn requests_succeed_while_rabbitmq_is_unreachable() {
    let api = Api::new().await;
    // Nothing listens on port 1: the relay keeps retrying, requests do not notice.
    let (stop, relay) = spawn_relay(&api, "amqp://127.0.0.1:1/%2f").await;
    let ws = api.create(user(), "Offline").await;
    let kinds = api.events_of(&ws["id"]).await;
    assert_eq!(kinds, ["workspace.created", "membership.added"]);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("the relay stops on request while it cannot connect")
        .unwrap()
        .unwrap();
}
