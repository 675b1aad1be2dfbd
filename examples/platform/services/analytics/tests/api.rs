//! The analytics API against the real PostgreSQL, without a broker: report requests (the row and
//! its outbox message in one transaction), validation, the newest-first list, the daily counts,
//! RBAC and tenant isolation; and the counting of events ([`events::record`]): per tenant, day
//! and type, idempotent by message id, also under concurrent redeliveries. See `common/mod.rs`
//! for the database each test gets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use ::analytics::events::{self, EventError, Recorded};
use axum::http::{StatusCode, header};
use common::{Api, at, daily, event, report, reports, tenant};
use serde_json::{Value, json};

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map(|e| e.iter().map(|e| e["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_report_request_is_accepted_with_its_job_in_the_same_transaction() {
    let api = Api::new().await;
    let t = tenant();
    let viewer = api.token("vera", t, "viewer");
    let (status, headers, created) = api
        .call_with_headers(
            "POST",
            &reports(),
            Some(&viewer),
            Some(json!({ "from": "2030-01-01", "to": "2030-01-31" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["from"], "2030-01-01");
    assert_eq!(created["to"], "2030-01-31");
    assert_eq!(created["requested_by"], "vera");
    assert!(created["requested_at"].is_string(), "{created}");
    assert_eq!(created["completed_at"], Value::Null);
    assert_eq!(created["result"], Value::Null);
    let id = created["id"].as_str().unwrap();
    // Relative, so it resolves both here and behind the gateway's /api/v1 prefix.
    assert_eq!(
        headers[header::LOCATION].to_str().unwrap(),
        format!("reports/{id}")
    );

    let (status, read) = api
        .call("GET", &report(&created["id"]), Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, created);
    // The job waits in the outbox, with the tenant.
    assert_eq!(
        api.outbox().await,
        [(t.into_uuid(), "report.generate".to_owned())]
    );
}

#[tokio::test]
async fn invalid_ranges_are_400_problems_naming_the_field_and_write_nothing() {
    let api = Api::new().await;
    let t = api.token("vera", tenant(), "viewer");
    let cases = [
        (
            json!({ "from": "2030-02-01", "to": "2030-01-01" }),
            vec!["to"],
        ),
        (
            json!({ "from": "2024-01-01", "to": "2025-01-01" }),
            vec!["to"],
        ),
        (
            json!({ "from": "2030-1-1", "to": "2030-01-05" }),
            vec!["from"],
        ),
        (
            json!({ "from": "2030-02-30", "to": "tomorrow" }),
            vec!["from", "to"],
        ),
        (json!({ "to": "2030-01-05" }), vec!["from"]),
        (json!({}), vec!["from", "to"]),
    ];
    for (body, expected) in cases {
        let (status, problem) = api
            .call("POST", &reports(), Some(&t), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {problem}");
        assert_eq!(problem["status"], 400);
        assert_eq!(fields(&problem), expected, "{problem}");
        for f in expected {
            assert!(problem["detail"].as_str().unwrap().contains(f), "{problem}");
        }
    }
    // Bodies of the wrong shape: an unknown field, a number for a date, not JSON at all.
    for body in [
        json!({ "from": "2030-01-01", "to": "2030-01-02", "format": "pdf" }),
        json!({ "from": 20300101, "to": "2030-01-02" }),
        json!("2030-01-01..2030-01-02"),
    ] {
        let (status, problem) = api
            .call("POST", &reports(), Some(&t), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("YYYY-MM-DD"),
            "{problem}"
        );
    }
    // No JSON content type: 415.
    let (status, _) = api.call("POST", &reports(), Some(&t), None).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The longest range is accepted.
    api.request_report(&t, "2024-01-01", "2024-12-31").await;
    assert_eq!(api.db.rows("reports").await, 1);
    assert_eq!(api.outbox().await.len(), 1);
}

#[tokio::test]
async fn reports_are_listed_newest_first_a_page_at_a_time() {
    let api = Api::new().await;
    let t = api.token("vera", tenant(), "viewer");
    let mut ids = Vec::new();
    for day in 1..=5 {
        let r = api
            .request_report(&t, "2030-01-01", &format!("2030-01-0{day}"))
            .await;
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut uri = format!("{}?limit=2", reports());
    loop {
        let (status, page) = api.call("GET", &uri, Some(&t), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        for item in items {
            assert_eq!(item["status"], "pending");
            assert!(item.get("result").is_none(), "the list leaves results out");
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => uri = format!("{}?limit=2&after={next}", reports()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    for bad in ["?limit=0", "?limit=101", "?after=nope", "?sort=asc"] {
        let (status, problem) = api
            .call("GET", &format!("{}{bad}", reports()), Some(&t), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {problem}");
    }
}

#[tokio::test]
async fn tenants_never_see_each_others_reports_or_counts() {
    let api = Api::new().await;
    let (a, b) = (tenant(), tenant());
    let alice = api.token("alice", a, "member");
    let bob = api.token("bob", b, "admin");
    let day = at("2030-03-03", 12, 0);
    for _ in 0..3 {
        events::record(
            &api.tenants,
            &event("task.created", Some(a), day, json!({})),
        )
        .await
        .unwrap();
    }
    events::record(
        &api.tenants,
        &event("task.created", Some(b), day, json!({})),
    )
    .await
    .unwrap();
    let created = api.request_report(&alice, "2030-03-01", "2030-03-31").await;

    // B cannot tell A's report from one that does not exist.
    let (status, problem) = api
        .call("GET", &report(&created["id"]), Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    let (_, missing) = api
        .call(
            "GET",
            &format!("{}/{}", reports(), uuid::Uuid::now_v7()),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(problem["status"], missing["status"]);
    let (status, page) = api.call("GET", &reports(), Some(&bob), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"], json!([]));

    // Counts are per tenant, exactly.
    let (_, a_daily) = api
        .call(
            "GET",
            &daily("2030-03-01", "2030-03-31"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(a_daily["totals"], json!({ "task.created": 3 }));
    let (_, b_daily) = api
        .call("GET", &daily("2030-03-01", "2030-03-31"), Some(&bob), None)
        .await;
    assert_eq!(b_daily["totals"], json!({ "task.created": 1 }));
    // A path that is not a UUID names no report.
    let (status, _) = api
        .call(
            "GET",
            &format!("{}/not-a-uuid", reports()),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_endpoint_needs_a_token_with_read_analytics() {
    let api = Api::new().await;
    let t = tenant();
    // A role the configuration does not know grants nothing.
    let nobody = api.token("nobody", t, "guest");
    let endpoints = [
        (
            "POST",
            reports(),
            Some(json!({ "from": "2030-01-01", "to": "2030-01-02" })),
        ),
        ("GET", reports(), None),
        (
            "GET",
            format!("{}/{}", reports(), uuid::Uuid::now_v7()),
            None,
        ),
        ("GET", daily("2030-01-01", "2030-01-02"), None),
    ];
    for (method, uri, body) in &endpoints {
        let (status, problem) = api.call(method, uri, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} → {problem}"
        );
        let (status, problem) = api.call(method, uri, Some(&nobody), body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri} → {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("read:analytics"),
            "{problem}"
        );
    }
    // Every platform role inherits read:analytics from viewer.
    for role in ["viewer", "member", "manager", "admin"] {
        let token = api.token("someone", t, role);
        let (status, body) = api
            .call(
                "GET",
                &daily("2030-01-01", "2030-01-02"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{role} → {body}");
    }
    // Nothing was written by the refused requests.
    assert_eq!(api.db.rows("reports").await, 0);
}

#[tokio::test]
async fn daily_counts_group_by_utc_day_and_type_within_the_range() {
    let api = Api::new().await;
    let t = tenant();
    let viewer = api.token("vera", t, "viewer");
    let events = [
        ("task.created", at("2030-05-01", 0, 0)),
        ("task.created", at("2030-05-01", 23, 59)),
        ("project.updated", at("2030-05-01", 8, 0)),
        ("task.created", at("2030-05-02", 0, 0)),
        // Outside the range asked for below.
        ("task.created", at("2030-04-30", 23, 59)),
        ("task.created", at("2030-05-04", 0, 0)),
    ];
    for (kind, when) in events {
        let recorded = events::record(&api.tenants, &event(kind, Some(t), when, json!({})))
            .await
            .unwrap();
        assert_eq!(recorded, Recorded::Counted);
    }
    let (status, body) = api
        .call(
            "GET",
            &daily("2030-05-01", "2030-05-03"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "from": "2030-05-01",
            "to": "2030-05-03",
            "totals": { "project.updated": 1, "task.created": 3 },
            "days": [
                { "day": "2030-05-01", "counts": { "project.updated": 1, "task.created": 2 } },
                { "day": "2030-05-02", "counts": { "task.created": 1 } },
            ],
        })
    );
    for bad in [
        format!("{}/daily?from=2030-05-01", common::ROUTE),
        daily("2030-05-03", "2030-05-01"),
        daily("2030-01-01", "2031-12-31"),
        format!("{}&tenant=other", daily("2030-05-01", "2030-05-03")),
    ] {
        let (status, problem) = api.call("GET", &bad, Some(&viewer), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {problem}");
        assert!(problem["detail"].is_string(), "{problem}");
    }
}

#[tokio::test]
async fn a_redelivered_event_is_counted_once_even_when_deliveries_race() {
    let api = Api::new().await;
    let t = tenant();
    let once = event("task.updated", Some(t), at("2030-06-01", 9, 0), json!({}));
    assert_eq!(
        events::record(&api.tenants, &once).await.unwrap(),
        Recorded::Counted
    );
    assert_eq!(
        events::record(&api.tenants, &once).await.unwrap(),
        Recorded::Duplicate
    );
    // Ten deliveries of one message at once: the message id's key serializes them.
    let racing = event("task.updated", Some(t), at("2030-06-01", 10, 0), json!({}));
    let outcomes = futures_join(
        (0..10)
            .map(|_| {
                let tenants = api.tenants.clone();
                let env = racing.clone();
                tokio::spawn(async move { events::record(&tenants, &env).await.unwrap() })
            })
            .collect(),
    )
    .await;
    assert_eq!(
        outcomes.iter().filter(|o| **o == Recorded::Counted).count(),
        1,
        "{outcomes:?}"
    );
    let counts = api.db.counts().await;
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].3, 2, "{counts:?}");
    assert_eq!(api.db.rows("processed_events").await, 2);
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn workspace_created_records_the_tenant_and_bad_events_are_rejected_with_a_reason() {
    let api = Api::new().await;
    let t = tenant();
    let when = at("2030-07-01", 12, 30);
    events::record(
        &api.tenants,
        &event(
            "workspace.created",
            Some(t),
            when,
            json!({ "id": t.to_string(), "name": " Acme " }),
        ),
    )
    .await
    .unwrap();
    // The nested shape is accepted too, and the first name stays.
    let other = tenant();
    events::record(
        &api.tenants,
        &event(
            "workspace.created",
            Some(other),
            when,
            json!({ "workspace": { "id": other.to_string(), "name": "Globex" } }),
        ),
    )
    .await
    .unwrap();
    let pool = api.db.superuser().await;
    let rows: Vec<(uuid::Uuid, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT tenant_id, name, created_at FROM tenants ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].0, t.into_uuid());
    assert_eq!(rows[0].1, "Acme");
    assert_eq!(u64::try_from(rows[0].2.timestamp_millis()).unwrap(), when);
    assert_eq!(
        (rows[1].0, rows[1].1.as_str()),
        (other.into_uuid(), "Globex")
    );

    // What no retry can fix is rejected with the reason, and nothing is written.
    let rejected = [
        (event("task.created", None, when, json!({})), "no tenant"),
        (
            event(
                "workspace.created",
                Some(tenant()),
                when,
                json!({ "id": "x" }),
            ),
            "has no name",
        ),
        (
            event(
                "workspace.created",
                Some(tenant()),
                when,
                json!({ "name": "" }),
            ),
            "empty",
        ),
        (
            event(&"x".repeat(101), Some(tenant()), when, json!({})),
            "type",
        ),
    ];
    for (env, reason) in rejected {
        match events::record(&api.tenants, &env).await {
            Err(EventError::Rejected(why)) => assert!(why.contains(reason), "{why}"),
            other => panic!("{} was not rejected: {other:?}", env.message_type),
        }
    }
    assert_eq!(api.db.rows("tenants").await, 2);
    assert_eq!(api.db.rows("processed_events").await, 2);
}
