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
use common::{Api, Role, task, tenant};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use ::tasks as svc;

/// The relay of `api`'s database publishing to `exchange` at `url`, until the sender is used.
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
async fn an_assigned_task_sends_email_send_through_rabbitmq() {
    let amqp = require(TestService::RabbitMq);
    let unique = format!("tasks-test-{}", uuid::Uuid::new_v4().simple());
    let mut api = Api::with_exchange(Some(&unique)).await;
    api.settings.queue.prefix = format!("{unique}.");

    // The notifications worker's side: a queue bound to email.send on the exchange.
    let mail = QueueConfig::new(format!("{unique}.email.send")).bind(&unique, "email.send");
    let consumer_side = Topology::new([unique.clone()]).queue_config(mail.clone());
    let backend = RabbitBackend::connect(&amqp).await.unwrap();
    let queue = Queue::new(backend.clone(), consumer_side.clone())
        .await
        .unwrap();
    let mut mails = backend.consume(&mail).await.unwrap();

    let (stop, relay) = spawn_relay(&api, api.relay_pool().await, &amqp);
    let t = tenant();
    let alice = api.token("alice", t, "member");
    let created = api
        .create(
            &alice,
            json!({
                "title": "Review the contract",
                "description": "Clause 7 especially.",
                "assignee": "bob",
                "assignee_email": "bob@example.com",
                "due_at": "2030-03-01T12:00:00Z",
            }),
        )
        .await;

    let envelope = receive(&mut mails, Duration::from_secs(20)).await.unwrap();
    assert_eq!(&*envelope.message_type, "email.send");
    assert_eq!(envelope.tenant, Some(t));
    let payload: Value = envelope.payload.decode().unwrap();
    assert_eq!(payload["to"], "bob@example.com");
    assert_eq!(payload["task_id"], created["id"]);
    assert_eq!(
        payload["subject"],
        "Task assigned to you: Review the contract"
    );
    let body = payload["body"].as_str().unwrap();
    assert!(body.contains("alice assigned you"), "{body}");
    assert!(body.contains("2030-03-01T12:00:00Z"), "{body}");
    assert!(body.contains("Clause 7 especially."), "{body}");

    // task.created went to the service's events queue, with the task.
    let events_queue = api.settings.queue.events_queue_name().unwrap();
    let events = svc::relay::topology(&api.settings.queue).unwrap();
    let mut task_events = backend
        .consume(events.queue(&events_queue).unwrap())
        .await
        .unwrap();
    let envelope = receive(&mut task_events, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(&*envelope.message_type, "task.created");
    assert_eq!(envelope.tenant, Some(t));
    let payload: Value = envelope.payload.decode().unwrap();
    assert_eq!(payload["task"]["id"], created["id"]);

    // Reassigning mails the new assignee; a change that does not reassign does not.
    let (status, _) = api
        .call(
            "PATCH",
            &task(&created["id"]),
            Some(&alice),
            Some(json!({ "title": "Review the contract (v2)" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            "PATCH",
            &task(&created["id"]),
            Some(&alice),
            Some(json!({ "assignee": "carol", "assignee_email": "carol@example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let envelope = receive(&mut mails, Duration::from_secs(20)).await.unwrap();
    let payload: Value = envelope.payload.decode().unwrap();
    assert_eq!(payload["to"], "carol@example.com");
    assert_eq!(
        payload["subject"],
        "Task assigned to you: Review the contract (v2)"
    );

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
    task_events.close().await;
    drop(queue);
    backend.delete(&consumer_side).await.unwrap();
    backend.delete(&events).await.unwrap();
}

#[tokio::test]
async fn requests_succeed_while_rabbitmq_is_unreachable() {
    let api = Api::new().await;
    // Nothing listens on port 1: the relay keeps retrying, requests do not notice.
    let (stop, relay) = spawn_relay(&api, api.relay_pool().await, "amqp://127.0.0.1:1/%2f");
    let t = tenant();
    let alice = api.token("alice", t, "member");
    let created = api
        .create(
            &alice,
            json!({ "title": "offline", "assignee": "bob", "assignee_email": "bob@example.com" }),
        )
        .await;
    let (status, _) = api
        .call(
            "PATCH",
            &task(&created["id"]),
            Some(&alice),
            Some(json!({ "status": "done" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The events wait in the outbox, each with its tenant.
    let rows = api.outbox().await;
    let kinds: Vec<&str> = rows.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "task.created",
            "email.send",
            "task.updated",
            "task.completed"
        ]
    );
    assert!(rows.iter().all(|(tenant, _)| *tenant == t.into_uuid()));
    // The relay stops on request even while it cannot connect.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("the relay did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn only_the_relay_role_reads_the_outbox() {
    let api = Api::new().await;
    let t = tenant();
    let alice = api.token("alice", t, "member");
    api.create(&alice, json!({ "title": "private" })).await;

    // The runtime role inserts events but cannot read them back, not even its own tenant's.
    let mut tx = api.tenants.begin(t).await.unwrap();
    let read = sqlx::query("SELECT * FROM arq_outbox")
        .fetch_all(&mut *tx)
        .await
        .unwrap_err();
    assert!(read.to_string().contains("permission denied"), "{read}");
    drop(tx);
    // Nor can it pose as the relay: the relay's start-up check says what to do.
    let err = svc::relay::connect_pool(&api.db.url(Role::App))
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("arq_relay"), "{message}");
    assert!(message.contains("relay-role.sql"), "{message}");
    // The relay role sees every tenant's rows.
    assert_eq!(api.outbox().await.len(), 1);
}

/// The relay role this service ships for administrators is arq-queue's, word for word.
#[test]
fn shipped_relay_role_sql_is_arq_queues() {
    assert_eq!(
        include_str!("../sql/relay-role.sql"),
        arq_queue::outbox::RELAY_ROLE_SQL
    );
}
