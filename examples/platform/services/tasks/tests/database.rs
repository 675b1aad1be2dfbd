//! The runtime pool `main` builds (`tasks::connect_tenants`) against the real PostgreSQL: the
//! start-up audit still refuses an unsafe database, connections carry arq-tenancy's statement
//! timeout, and queries run by the handlers are timed by statement in the metrics `/metrics`
//! serves. See `common/mod.rs` for the database each test gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use arq_core::metrics::MetricsRegistry;
use axum::http::StatusCode;
use common::{Api, Role, database, tasks, tenant};
use serde_json::json;

use ::tasks as svc;

#[tokio::test]
async fn the_runtime_pool_refuses_a_database_that_does_not_isolate_tenants() {
    let (db, _tenants) = database().await;
    // The administrator is a superuser: row level security does not apply to it.
    let admin_url = db.url(Role::Admin);
    let err = svc::connect_tenants(admin_url, &svc::DatabaseSettings { max_connections: 2 })
        .await
        .expect_err("a superuser's pool must not serve tenants");
    let message = format!("{err:#}");
    assert!(message.contains("refusing to start"), "{message}");
    assert!(message.contains("superuser"), "{message}");
}

#[tokio::test]
async fn connections_carry_the_statement_timeout_and_queries_are_timed_by_statement() {
    let api = Api::new().await;
    // DbConfig sets the 5 s statement timeout as a start-up parameter of every connection (not
    // only inside tenant transactions).
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(api.tenants.unscoped("test: read a connection setting"))
        .await
        .unwrap();
    assert_eq!(timeout, "5s");

    let t = tenant();
    let alice = api.token("alice", t, "member");
    api.create(&alice, json!({"title": "timed"})).await;
    let (status, _) = api
        .call("GET", &format!("{}?limit=20", tasks()), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // The registry `main` serves at /metrics.
    let text = MetricsRegistry::global().encode();
    let count = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("db_query_duration_seconds_count{") && l.contains(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        count(r#"operation="query",statement="WITH t AS (INSERT INTO tasks"#) >= 1.0,
        "the insert is not timed:\n{text}"
    );
    assert!(
        count(r#"operation="query",statement="SELECT t.id, t.title"#) >= 1.0,
        "the list query is not timed:\n{text}"
    );
    assert!(count(r#"operation="commit""#) >= 2.0, "{text}");
}
