//! Events through the transactional outbox to the real RabbitMQ (`ARQ_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f): each test publishes to an exchange of its own and
//! deletes its queues at the end; the outbox is written in the request's transaction (a refused
//! request leaves no event) and only the relay role reads it. See `common/mod.rs` for the
//! database each test gets.
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
use common::{Api, Role, project, tenant};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use ::projects as svc;

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
async fn project_events_reach_rabbitmq_in_order_with_their_tenant() {
    let amqp = require(TestService::RabbitMq);
    let unique = format!("projects-test-{}", uuid::Uuid::new_v4().simple());
    let mut api = Api::with_exchange(Some(&unique)).await;
    api.settings.queue.prefix = format!("{unique}.");

    // The relay declares the events queue bound to project.#; consume it.
    let backend = RabbitBackend::connect(&amqp).await.unwrap();
    let topology = svc::relay::topology(&api.settings.queue).unwrap();
    let events_queue = api.settings.queue.events_queue_name().unwrap();
    let (stop, relay) = spawn_relay(&api, api.relay_pool().await, &amqp);

    let t = tenant();
    let alice = api.token("alice", t, "manager");
    let created = api
        .create(
            &alice,
            json!({ "name": "Voyager", "metadata": {"phase": 1} }),
        )
        .await;
    let (status, updated) = api
        .patch(
            &alice,
            &created["id"],
            1,
            json!({ "metadata": {"phase": 2} }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    // A refused write (stale If-Match) publishes nothing.
    let (status, _) = api
        .patch(&alice, &created["id"], 1, json!({ "name": "late" }))
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _) = api.delete(&alice, &project(&created["id"]), 2).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The queue exists once the relay has connected and declared it.
    let mut consumer = None;
    for _ in 0..500 {
        if let Ok(c) = backend
            .consume(topology.queue(&events_queue).unwrap())
            .await
        {
            consumer = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut consumer = consumer.expect("the relay never declared the events queue");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let envelope = receive(&mut consumer, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(envelope.tenant, Some(t));
        let payload: Value = envelope.payload.decode().unwrap();
        seen.push((envelope.message_type.to_string(), payload));
    }
    assert_eq!(seen[0].0, "project.created");
    assert_eq!(seen[0].1, json!({ "project": created, "changed": [] }));
    assert_eq!(seen[1].0, "project.updated");
    assert_eq!(
        seen[1].1,
        json!({ "project": updated, "changed": ["metadata"] })
    );
    assert_eq!(seen[2].0, "project.deleted");
    assert_eq!(seen[2].1, json!({ "project_id": created["id"] }));

    // Every row was published and deleted.
    let mut rounds = 0;
    while !api.outbox().await.is_empty() {
        rounds += 1;
        assert!(rounds < 500, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    relay.await.unwrap().unwrap();
    consumer.close().await;
    backend.delete(&topology).await.unwrap();
}

#[tokio::test]
async fn requests_succeed_while_rabbitmq_is_unreachable() {
    let api = Api::new().await;
    // Nothing listens on port 1: the relay keeps retrying, requests do not notice.
    let (stop, relay) = spawn_relay(&api, api.relay_pool().await, "amqp://127.0.0.1:1/%2f");
    let t = tenant();
    let alice = api.token("alice", t, "member");
    let created = api.create(&alice, json!({ "name": "offline" })).await;
    let (status, _) = api
        .patch(
            &alice,
            &created["id"],
            1,
            json!({ "name": "still offline" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let rows = api.outbox().await;
    let kinds: Vec<&str> = rows.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["project.created", "project.updated"]);
    assert!(rows.iter().all(|(tenant, ..)| *tenant == t.into_uuid()));
    // The relay stops on request even while it cannot connect.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("the relay did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn events_are_written_in_the_transaction_of_the_change() {
    let api = Api::new().await;
    let t = tenant();
    let alice = api.token("alice", t, "member");
    let p = api.create(&alice, json!({ "name": "atomic" })).await;

    // The outbox write is part of the caller's transaction: rolled back, it is gone; committed,
    // it is there (the handlers write their events in the request's transaction).
    let state = svc::AppState {
        exchange: api.settings.queue.exchange.as_str().into(),
    };
    let as_project: svc::projects::Project = serde_json::from_value(p.clone()).unwrap();
    let mut tx = api.tenants.begin(t).await.unwrap();
    svc::events::project_created(&state, &mut tx, &as_project)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(api.outbox().await.len(), 1);
    let mut tx = api.tenants.begin(t).await.unwrap();
    svc::events::project_deleted(&state, &mut tx, as_project.id)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(api.outbox().await.len(), 2);

    // The runtime role inserts events but cannot read them back, not even its own tenant's.
    let mut tx = api.tenants.begin(t).await.unwrap();
    let read = sqlx::query("SELECT * FROM arq_outbox")
        .fetch_all(&mut tx)
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

    // A request refused after its writes began (a move into a cycle, after the row lock) leaves
    // neither a version nor an event.
    let child = api
        .create(&alice, json!({ "name": "child", "parent_id": p["id"] }))
        .await;
    let (status, _) = api
        .patch(
            &alice,
            &p["id"],
            1,
            json!({ "name": "renamed", "parent_id": child["id"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, history) = api
        .call(
            "GET",
            &format!("{}/versions", project(&p["id"])),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
    let kinds: Vec<String> = api.outbox().await.into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(
        kinds,
        ["project.created", "project.deleted", "project.created"]
    );
}

/// The relay role this service ships for administrators is arq-queue's, word for word.
#[test]
fn shipped_relay_role_sql_is_arq_queues() {
    assert_eq!(
        include_str!("../sql/relay-role.sql"),
        arq_queue::outbox::RELAY_ROLE_SQL
    );
}
