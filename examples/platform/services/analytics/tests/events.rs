//! The domain events consumer against the real RabbitMQ (`ARQ_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f) and PostgreSQL: real envelopes published to the
//! exchange are counted per tenant, day and type, once per message id; `workspace.created`
//! records the tenant; an event without a tenant is dead-lettered with the reason and blocks
//! nothing. Each test has its own exchange and queue prefix, and deletes its queues at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::future::Future;
use std::time::Duration;

use ::analytics::queue;
use arq_core::metrics::MetricsRegistry;
use arq_queue::{Queue, QueueError, QueueMetrics, RabbitBackend};
use chrono::NaiveDate;
use common::{Api, at, event, eventually, tenant};
use serde_json::json;
use tokio::sync::watch;

fn signal(stopped: &watch::Receiver<()>) -> impl Future<Output = ()> + Send + 'static {
    let mut stopped = stopped.clone();
    async move {
        let _ = stopped.changed().await;
    }
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

#[tokio::test]
async fn published_events_are_counted_per_tenant_day_and_type_once_per_message() {
    let api = Api::isolated().await;
    let settings = api.settings.queue.clone();
    let backend = RabbitBackend::connect(settings.url.expose()).await.unwrap();
    // The publishers' side: the platform exchange, with the events queue declared so that
    // nothing published before the consumer starts is unroutable.
    let publisher = Queue::new(backend.clone(), settings.events_topology())
        .await
        .unwrap();
    let registry = MetricsRegistry::new();
    let (stop, stopped) = watch::channel(());
    let consumer = tokio::spawn(queue::run_events(
        settings.clone(),
        api.tenants.clone(),
        QueueMetrics::register(&registry).unwrap(),
        Duration::from_secs(5),
        signal(&stopped),
    ));

    let (a, b) = (tenant(), tenant());
    let creator = uuid::Uuid::new_v4();
    let once = event("task.created", Some(a), at("2030-01-01", 10, 0), json!({}));
    let published = [
        event(
            "workspace.created",
            Some(a),
            at("2030-01-01", 9, 0),
            json!({ "workspace_id": a.to_string(), "name": "Acme", "created_by": creator }),
        ),
        once.clone(),
        // The same message again (a redelivery, or the outbox relay publishing twice).
        once.clone(),
        once,
        event("task.created", Some(a), at("2030-01-01", 23, 59), json!({})),
        event("task.created", Some(a), at("2030-01-02", 0, 0), json!({})),
        event(
            "project.updated",
            Some(a),
            at("2030-01-01", 11, 0),
            json!({ "changed": ["name"] }),
        ),
        event(
            "membership.created",
            Some(a),
            at("2030-01-01", 12, 0),
            json!({}),
        ),
        event("user.updated", Some(b), at("2030-01-01", 12, 0), json!({})),
        event(
            "invitation.created",
            Some(b),
            at("2030-01-01", 13, 0),
            json!({}),
        ),
        event("task.created", Some(b), at("2030-01-01", 14, 0), json!({})),
    ];
    for env in published {
        let key = env.message_type.to_string();
        publisher
            .publish_envelope(&settings.exchange, &key, env)
            .await
            .unwrap();
    }
    // Analytics does not subscribe to what it does not count.
    let unrelated = publisher
        .publish_envelope(
            &settings.exchange,
            "email.send",
            event("email.send", Some(a), at("2030-01-01", 0, 0), json!({})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(unrelated, QueueError::Unroutable { .. }),
        "{unrelated}"
    );

    // Nine distinct messages.
    eventually("every event counted", || async {
        (api.db.rows("processed_events").await == 9).then_some(())
    })
    .await;
    let (ua, ub) = (a.into_uuid(), b.into_uuid());
    let mut expected = vec![
        (ua, day("2030-01-01"), "membership.created".to_owned(), 1),
        (ua, day("2030-01-01"), "project.updated".to_owned(), 1),
        (ua, day("2030-01-01"), "task.created".to_owned(), 2),
        (ua, day("2030-01-01"), "workspace.created".to_owned(), 1),
        (ua, day("2030-01-02"), "task.created".to_owned(), 1),
        (ub, day("2030-01-01"), "invitation.created".to_owned(), 1),
        (ub, day("2030-01-01"), "task.created".to_owned(), 1),
        (ub, day("2030-01-01"), "user.updated".to_owned(), 1),
    ];
    expected.sort();
    assert_eq!(api.db.counts().await, expected);
    // workspace.created created the tenant.
    let pool = api.db.superuser().await;
    let tenants: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT tenant_id, name FROM tenants")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(tenants, [(ua, "Acme".to_owned())]);
    pool.close().await;

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("the consumer did not stop")
        .unwrap()
        .unwrap();
    // Everything was acknowledged: nothing ready, nothing dead.
    let config = settings.events_queue();
    // The worker's metrics (what /metrics shows): eleven deliveries (the duplicates too), each
    // acknowledged, none retried or dead-lettered.
    let metrics = registry.encode();
    for (counter, value) in [
        ("delivered", 11),
        ("acked", 11),
        ("retried", 0),
        ("dead_lettered", 0),
    ] {
        let line = format!(
            "arq_queue_{counter}_total{{queue=\"{}\"}} {value}\n",
            config.name
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    let stats = publisher.list().await.unwrap();
    let events_queue = stats.iter().find(|q| q.name == config.name).unwrap();
    assert_eq!(events_queue.stats.depth(), 0, "{stats:?}");
    assert!(
        publisher
            .peek_dead(&config.name, 10)
            .await
            .unwrap()
            .is_empty()
    );
    backend.delete(&settings.events_topology()).await.unwrap();
}

#[tokio::test]
async fn an_event_without_a_tenant_is_dead_lettered_with_the_reason_and_blocks_nothing() {
    let api = Api::isolated().await;
    let settings = api.settings.queue.clone();
    let backend = RabbitBackend::connect(settings.url.expose()).await.unwrap();
    let publisher = Queue::new(backend.clone(), settings.events_topology())
        .await
        .unwrap();
    let (stop, stopped) = watch::channel(());
    let consumer = tokio::spawn(queue::run_events(
        settings.clone(),
        api.tenants.clone(),
        QueueMetrics::unregistered(),
        Duration::from_secs(5),
        signal(&stopped),
    ));
    let poison = event("task.created", None, at("2030-02-01", 8, 0), json!({}));
    let poison_id = poison.id;
    let t = tenant();
    for env in [
        poison,
        event(
            "workspace.created",
            Some(t),
            at("2030-02-01", 8, 0),
            json!({ "id": "no name" }),
        ),
        event("task.created", Some(t), at("2030-02-01", 9, 0), json!({})),
    ] {
        let key = env.message_type.to_string();
        publisher
            .publish_envelope(&settings.exchange, &key, env)
            .await
            .unwrap();
    }
    let name = settings.events_queue().name;
    let dead = eventually("both bad events dead-lettered", || async {
        let dead = publisher.peek_dead(&name, 10).await.unwrap();
        (dead.len() == 2).then_some(dead)
    })
    .await;
    let poisoned = dead.iter().find(|e| e.id == poison_id).unwrap();
    let reason = poisoned.last_error().unwrap();
    assert!(reason.contains("no tenant"), "{reason}");
    let other = dead.iter().find(|e| e.id != poison_id).unwrap();
    assert!(
        other.last_error().unwrap().contains("has no name"),
        "{other:?}"
    );
    // Dead-lettered at the first attempt: no retry could fix them.
    assert_eq!(poisoned.failures.len(), 1, "{poisoned:?}");
    // The good event behind them was counted.
    eventually("the good event counted", || async {
        (api.db.rows("daily_event_counts").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        api.db.counts().await,
        [(
            t.into_uuid(),
            day("2030-02-01"),
            "task.created".to_owned(),
            1
        )]
    );
    stop.send(()).unwrap();
    consumer.await.unwrap().unwrap();
    backend.delete(&settings.events_topology()).await.unwrap();
}

#[tokio::test]
async fn the_background_tasks_wait_for_the_broker_without_holding_the_api_back() {
    let mut api = Api::isolated().await;
    // Nothing listens on port 1.
    api.settings.queue.url = "amqp://127.0.0.1:1/%2f".to_owned().into();
    let settings = api.settings.queue.clone();
    let (stop, stopped) = watch::channel(());
    let tasks = [
        tokio::spawn(queue::run_events(
            settings.clone(),
            api.tenants.clone(),
            QueueMetrics::unregistered(),
            Duration::from_secs(1),
            signal(&stopped),
        )),
        tokio::spawn(queue::run_reports(
            settings.clone(),
            api.tenants.clone(),
            QueueMetrics::unregistered(),
            Duration::from_secs(1),
            signal(&stopped),
        )),
        tokio::spawn(queue::run_relay(
            api.db.relay_pool().await,
            settings.clone(),
            QueueMetrics::unregistered(),
            signal(&stopped),
        )),
    ];
    // Requests do not notice: the job waits in the outbox.
    let t = tenant();
    let viewer = api.token("vera", t, "viewer");
    let created = api
        .request_report(&viewer, "2030-01-01", "2030-01-31")
        .await;
    let (status, _) = api
        .call("GET", &common::report(&created["id"]), Some(&viewer), None)
        .await;
    assert_eq!(status, axum::http::StatusCode::OK);
    assert_eq!(api.outbox().await.len(), 1);
    // And every task stops on request while it cannot connect.
    stop.send(()).unwrap();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a background task did not stop")
            .unwrap()
            .unwrap();
    }
}
