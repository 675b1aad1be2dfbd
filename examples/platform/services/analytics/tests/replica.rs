//! Reads go to the read replica (`DATABASE_REPLICA_URL`) while it answers, and to the primary
//! when it does not. A second database stands in for the replica; it is migrated like the
//! primary and filled with different rows, so every answer shows which database served it.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use ::analytics::events;
use arq_core::metrics::MetricsRegistry;
use axum::http::StatusCode;
use common::{Api, Role, TestDb, at, daily, event, report, reports, tenant};
use serde_json::json;

#[tokio::test]
async fn reads_run_on_the_replica_and_writes_on_the_primary() {
    let replica = TestDb::create().await;
    let primary = TestDb::create().await;
    let tenants = primary.tenants(Some(replica.url(Role::App))).await;
    let api = Api::on(primary, tenants, analytics::load_settings().unwrap());
    let (a, b) = (tenant(), tenant());
    let alice = api.token("alice", a, "viewer");

    // The primary counts one event; the replica (as if it were behind, or ahead) has seven, and
    // a report the primary does not have.
    events::record(
        &api.tenants,
        &event("task.created", Some(a), at("2030-01-01", 8, 0), json!({})),
    )
    .await
    .unwrap();
    let on_replica = replica.superuser().await;
    sqlx::query(
        "INSERT INTO daily_event_counts (tenant_id, day, event_type, count) \
         VALUES ($1, '2030-01-01', 'task.created', 7)",
    )
    .bind(a.into_uuid())
    .execute(&on_replica)
    .await
    .unwrap();
    let replicated = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO reports (tenant_id, id, status, from_day, to_day, requested_by, \
           completed_at, result) \
         VALUES ($1, $2, 'ready', '2030-01-01', '2030-01-01', 'alice', now(), \
           '{\"totals\": {\"task.created\": 7}, \"days\": []}')",
    )
    .bind(a.into_uuid())
    .bind(replicated)
    .execute(&on_replica)
    .await
    .unwrap();

    let (status, body) = api
        .call(
            "GET",
            &daily("2030-01-01", "2030-01-01"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["totals"],
        json!({ "task.created": 7 }),
        "not read on the replica"
    );
    let (status, body) = api
        .call(
            "GET",
            &format!("{}/{replicated}", reports()),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["totals"], json!({ "task.created": 7 }));
    let (_, page) = api.call("GET", &reports(), Some(&alice), None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");

    // Row-level security holds on the replica too.
    let bob = api.token("bob", b, "viewer");
    let (status, _) = api
        .call(
            "GET",
            &format!("{}/{replicated}", reports()),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A request is written on the primary only...
    let created = api.request_report(&alice, "2030-01-01", "2030-01-31").await;
    let id = uuid::Uuid::parse_str(created["id"].as_str().unwrap()).unwrap();
    let has = |db: sqlx::PgPool| async move {
        let n: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM reports WHERE id = $1)")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
        n
    };
    assert!(has(api.db.superuser().await).await);
    assert!(!has(replica.superuser().await).await);
    // ...and readable at once although the replica does not have it yet: the primary is asked
    // before the answer is 404.
    let (status, body) = api
        .call("GET", &report(&created["id"]), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pending");
    // A report neither has is still 404.
    let (status, _) = api
        .call(
            "GET",
            &format!("{}/{}", reports(), uuid::Uuid::now_v7()),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reads_fall_back_to_the_primary_when_the_replica_does_not_answer() {
    let primary = TestDb::create().await;
    // Nothing listens on port 1.
    let tenants = primary
        .tenants(Some(
            "postgres://arq_app:arq_app@127.0.0.1:1/nowhere".to_owned(),
        ))
        .await;
    let api = Api::on(primary, tenants, analytics::load_settings().unwrap());
    let fallbacks = || {
        MetricsRegistry::global()
            .encode()
            .lines()
            .filter(|l| l.starts_with("db_replica_fallbacks_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = fallbacks();
    let a = tenant();
    let alice = api.token("alice", a, "viewer");
    events::record(
        &api.tenants,
        &event("task.created", Some(a), at("2030-01-01", 8, 0), json!({})),
    )
    .await
    .unwrap();
    let (status, body) = api
        .call(
            "GET",
            &daily("2030-01-01", "2030-01-01"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["totals"], json!({ "task.created": 1 }));
    let created = api.request_report(&alice, "2030-01-01", "2030-01-01").await;
    let (status, body) = api
        .call("GET", &report(&created["id"]), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = api.call("GET", &reports(), Some(&alice), None).await;
    assert_eq!(status, StatusCode::OK);
    // Each of the three reads fell back (and was counted).
    assert!(fallbacks() >= before + 3.0, "{before} → {}", fallbacks());
}
