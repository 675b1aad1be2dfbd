//! Reports end to end against the real PostgreSQL and RabbitMQ: the request's outbox row, the
//! relay, the `report.generate` queue and its consumer, the report read back `ready` with the
//! right totals; jobs no retry can fix are dead-lettered. Each test has its own exchange and
//! queue prefix, and deletes its queues at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::future::Future;
use std::time::Duration;

use ::analytics::events;
use ::analytics::queue;
use ::analytics::reports::GenerateReport;
use arq_queue::{Envelope, Queue, QueueMetrics, RabbitBackend};
use axum::http::StatusCode;
use common::{Api, at, event, eventually, report, tenant};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn signal(stopped: &watch::Receiver<()>) -> impl Future<Output = ()> + Send + 'static {
    let mut stopped = stopped.clone();
    async move {
        let _ = stopped.changed().await;
    }
}

/// The relay and the report.generate consumer of `api`, as `serve` runs them.
async fn start(
    api: &Api,
) -> (
    watch::Sender<()>,
    Vec<JoinHandle<Result<(), arq_queue::QueueError>>>,
) {
    let (stop, stopped) = watch::channel(());
    let settings = api.settings.queue.clone();
    let tasks = vec![
        tokio::spawn(queue::run_relay(
            api.db.relay_pool().await,
            settings.clone(),
            QueueMetrics::unregistered(),
            signal(&stopped),
        )),
        tokio::spawn(queue::run_reports(
            settings,
            api.tenants.clone(),
            QueueMetrics::unregistered(),
            Duration::from_secs(5),
            signal(&stopped),
        )),
    ];
    (stop, tasks)
}

async fn stop_all(
    stop: watch::Sender<()>,
    tasks: Vec<JoinHandle<Result<(), arq_queue::QueueError>>>,
) {
    stop.send(()).unwrap();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a background task did not stop")
            .unwrap()
            .unwrap();
    }
}

/// Polls the report until it is no longer pending.
async fn settled(api: &Api, token: &str, created: &Value) -> Value {
    eventually("the report settled", || async {
        let (status, body) = api
            .call("GET", &report(&created["id"]), Some(token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["status"] != "pending").then_some(body)
    })
    .await
}

#[tokio::test]
async fn a_requested_report_becomes_ready_through_the_outbox_relay_and_consumer() {
    let api = Api::isolated().await;
    let (a, b) = (tenant(), tenant());
    for (t, kind, when) in [
        (a, "task.created", at("2030-03-01", 8, 0)),
        (a, "task.created", at("2030-03-01", 9, 0)),
        (a, "task.completed", at("2030-03-01", 17, 0)),
        (a, "task.created", at("2030-03-05", 8, 0)),
        (a, "project.created", at("2030-03-31", 23, 59)),
        // Outside the range.
        (a, "task.created", at("2030-02-28", 23, 59)),
        (a, "task.created", at("2030-04-01", 0, 0)),
        // Another tenant's.
        (b, "task.created", at("2030-03-01", 8, 0)),
    ] {
        events::record(&api.tenants, &event(kind, Some(t), when, json!({})))
            .await
            .unwrap();
    }
    let (stop, tasks) = start(&api).await;
    let alice = api.token("alice", a, "member");
    let created = api.request_report(&alice, "2030-03-01", "2030-03-31").await;
    // More reports than the consumer computes at once (5), of both tenants.
    let mut more = Vec::new();
    for i in 1..=6 {
        more.push(
            api.request_report(&alice, "2030-03-01", &format!("2030-03-0{i}"))
                .await,
        );
    }
    let bob = api.token("bob", b, "viewer");
    let bobs = api.request_report(&bob, "2030-03-01", "2030-03-31").await;

    let ready = settled(&api, &alice, &created).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["id"], created["id"]);
    assert_eq!(ready["requested_at"], created["requested_at"]);
    assert!(ready["completed_at"].is_string(), "{ready}");
    assert_eq!(
        ready["result"],
        json!({
            "totals": { "project.created": 1, "task.completed": 1, "task.created": 3 },
            "days": [
                { "day": "2030-03-01", "counts": { "task.completed": 1, "task.created": 2 } },
                { "day": "2030-03-05", "counts": { "task.created": 1 } },
                { "day": "2030-03-31", "counts": { "project.created": 1 } },
            ],
        })
    );
    for (i, r) in more.iter().enumerate() {
        let r = settled(&api, &alice, r).await;
        assert_eq!(r["status"], "ready", "{r}");
        let created = if i + 1 >= 5 { 3 } else { 2 };
        assert_eq!(
            r["result"]["totals"],
            json!({ "task.completed": 1, "task.created": created }),
            "{r}"
        );
    }
    let r = settled(&api, &bob, &bobs).await;
    assert_eq!(r["result"]["totals"], json!({ "task.created": 1 }));

    // Every job was published and deleted from the outbox, and the list shows them ready.
    eventually("the outbox drained", || async {
        api.outbox().await.is_empty().then_some(())
    })
    .await;
    let (_, page) = api
        .call(
            "GET",
            &format!("{}?limit=100", common::reports()),
            Some(&alice),
            None,
        )
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    assert!(items.iter().all(|r| r["status"] == "ready"), "{page}");
    stop_all(stop, tasks).await;
    let backend = RabbitBackend::connect(api.settings.queue.url.expose())
        .await
        .unwrap();
    backend
        .delete(&api.settings.queue.reports_topology())
        .await
        .unwrap();
}

#[tokio::test]
async fn jobs_no_retry_can_fix_are_dead_lettered_with_the_reason() {
    let api = Api::isolated().await;
    let settings = api.settings.queue.clone();
    let (stop, tasks) = start(&api).await;
    let backend = RabbitBackend::connect(settings.url.expose()).await.unwrap();
    let publisher = Queue::new(backend.clone(), settings.reports_topology())
        .await
        .unwrap();
    let missing = uuid::Uuid::now_v7();
    let t = tenant();
    // A report its tenant does not have (e.g. another tenant's id), and a job without a tenant.
    publisher
        .publish_envelope(
            &settings.exchange,
            "report.generate",
            Envelope::new(GenerateReport { report_id: missing }).with_tenant(t),
        )
        .await
        .unwrap();
    publisher
        .publish_envelope(
            &settings.exchange,
            "report.generate",
            Envelope::new(GenerateReport { report_id: missing }),
        )
        .await
        .unwrap();
    // A real request behind them is still computed.
    let viewer = api.token("vera", t, "viewer");
    let created = api
        .request_report(&viewer, "2030-01-01", "2030-01-02")
        .await;
    let r = settled(&api, &viewer, &created).await;
    assert_eq!(r["status"], "ready", "{r}");
    assert_eq!(r["result"], json!({ "totals": {}, "days": [] }));

    let name = settings.reports_queue().name;
    let dead = eventually("both jobs dead-lettered", || async {
        let dead = publisher.peek_dead(&name, 10).await.unwrap();
        (dead.len() == 2).then_some(dead)
    })
    .await;
    let reasons: Vec<&str> = dead.iter().map(|e| e.last_error().unwrap()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("has no tenant")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("no report {missing} in tenant {t}"))),
        "{reasons:?}"
    );
    assert!(dead.iter().all(|e| e.failures.len() == 1), "{dead:?}");
    stop_all(stop, tasks).await;
    backend.delete(&settings.reports_topology()).await.unwrap();
}

#[tokio::test]
async fn a_report_whose_last_attempt_fails_is_marked_failed_and_says_what_to_do() {
    let mut api = Api::isolated().await;
    // One attempt: its failure is the last.
    api.settings.queue.max_attempts = 1;
    // The counts become unreadable: computing any report fails in the database.
    let admin = api.db.superuser().await;
    sqlx::query("ALTER TABLE daily_event_counts RENAME TO daily_event_counts_away")
        .execute(&admin)
        .await
        .unwrap();
    let (stop, tasks) = start(&api).await;
    let t = tenant();
    let viewer = api.token("vera", t, "viewer");
    let created = api
        .request_report(&viewer, "2030-01-01", "2030-01-02")
        .await;
    let r = settled(&api, &viewer, &created).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["result"], Value::Null);
    assert!(r["completed_at"].is_string(), "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("request it again"), "{error}");
    // The database's message stays in the logs and the dead letter, not in the API.
    assert!(!error.contains("daily_event_counts"), "{error}");

    let settings = &api.settings.queue;
    let backend = RabbitBackend::connect(settings.url.expose()).await.unwrap();
    let inspector = Queue::new(backend.clone(), settings.reports_topology())
        .await
        .unwrap();
    let name = settings.reports_queue().name;
    let dead = eventually("the job dead-lettered", || async {
        let dead = inspector.peek_dead(&name, 10).await.unwrap();
        (dead.len() == 1).then_some(dead)
    })
    .await;
    assert!(
        dead[0].last_error().unwrap().contains("daily_event_counts"),
        "{dead:?}"
    );
    stop_all(stop, tasks).await;
    backend.delete(&settings.reports_topology()).await.unwrap();
}
