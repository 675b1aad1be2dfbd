//! The tasks API against the real PostgreSQL: CRUD, validation, pagination and filters, tenant
//! isolation, RBAC and the CEL policy, dependencies (cycles, blocking, races) and scheduling.
//! See `common/mod.rs` for the database each test gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use ::tasks::dependencies::{self, DependencyError};
use axum::http::StatusCode;
use chrono::{SecondsFormat, Utc};
use common::{Api, ROUTE, Role, deps, task, tasks, tenant};
use serde_json::{Value, json};
use uuid::Uuid;

fn rfc3339(offset: chrono::Duration) -> String {
    (Utc::now() + offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map(|e| e.iter().map(|e| e["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn create_read_update_delete() {
    let api = Api::new().await;
    let t = tenant();
    let alice = api.token("alice", t, "member");
    let created = api
        .create(
            &alice,
            json!({
                "title": "  Write the report  ",
                "description": "Q3 numbers",
                "priority": "high",
                "assignee": "bob",
                "due_at": "2030-01-31T17:00:00Z",
            }),
        )
        .await;
    assert_eq!(created["title"], "Write the report");
    assert_eq!(created["status"], "todo");
    assert_eq!(created["priority"], "high");
    assert_eq!(created["assignee"], "bob");
    assert_eq!(created["assignee_email"], Value::Null);
    assert_eq!(created["created_by"], "alice");
    assert_eq!(created["due_at"], "2030-01-31T17:00:00Z");
    assert_eq!(created["scheduled_for"], Value::Null);
    assert_eq!(created["depends_on"], json!([]));

    let (status, read) = api
        .call("GET", &task(&created["id"]), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, created);

    let (status, updated) = api
        .call(
            "PATCH",
            &task(&created["id"]),
            Some(&alice),
            Some(json!({ "description": "Q3 and Q4", "status": "in_progress", "due_at": null })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["title"], "Write the report");
    assert_eq!(updated["description"], "Q3 and Q4");
    assert_eq!(updated["status"], "in_progress");
    assert_eq!(updated["due_at"], Value::Null);
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_ne!(updated["updated_at"], created["updated_at"]);

    let (status, _) = api
        .call("DELETE", &task(&created["id"]), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem) = api
        .call("GET", &task(&created["id"]), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["status"], 404);
    // The outbox got exactly the events of the committed changes.
    let kinds: Vec<String> = api.outbox().await.into_iter().map(|(_, k)| k).collect();
    assert_eq!(kinds, ["task.created", "task.updated"]);
}

#[tokio::test]
async fn invalid_input_is_a_422_problem_naming_every_field() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let cases = [
        (json!({ "title": "   " }), vec!["title"]),
        (json!({ "title": "x".repeat(201) }), vec!["title"]),
        (
            json!({ "title": "ok", "description": "d".repeat(5001) }),
            vec!["description"],
        ),
        (
            json!({ "title": "ok", "assignee": "bob", "assignee_email": "not-an-address" }),
            vec!["assignee_email"],
        ),
        (
            json!({ "title": "ok", "assignee_email": "bob@example.com" }),
            vec!["assignee_email"],
        ),
        (
            json!({ "title": "ok", "due_at": "2030-01-01T00:00:00Z", "scheduled_for": "2030-02-01T00:00:00Z" }),
            vec!["scheduled_for"],
        ),
        (
            json!({ "title": "", "assignee": "", "description": "d".repeat(5001) }),
            vec!["title", "description", "assignee"],
        ),
    ];
    for (body, expected) in cases {
        let (status, problem) = api
            .call("POST", &tasks(), Some(&t), Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {problem}"
        );
        assert_eq!(problem["status"], 422);
        assert_eq!(fields(&problem), expected, "{problem}");
        for f in expected {
            assert!(problem["detail"].as_str().unwrap().contains(f), "{problem}");
        }
    }
    // Bodies of the wrong shape: unknown fields, unknown enum values, dates that do not parse.
    for body in [
        json!({ "title": "ok", "owner": "me" }),
        json!({ "title": "ok", "priority": "whenever" }),
        json!({ "title": "ok", "due_at": "next tuesday" }),
        json!({ "description": "no title" }),
    ] {
        let (status, problem) = api
            .call("POST", &tasks(), Some(&t), Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {problem}"
        );
        assert!(problem["detail"].is_string(), "{problem}");
    }
    let created = api.create(&t, json!({ "title": "ok" })).await;
    let (status, problem) = api
        .call(
            "PATCH",
            &task(&created["id"]),
            Some(&t),
            Some(json!({ "status": "doing" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    for query in [
        "limit=0",
        "limit=101",
        "status=bogus",
        "due_before=yesterday",
    ] {
        let (status, problem) = api
            .call("GET", &format!("{}?{query}", tasks()), Some(&t), None)
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query} → {problem}"
        );
    }
    let (status, _) = api
        .call("GET", &format!("{}/not-a-uuid", tasks()), Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing invalid reached the outbox.
    assert_eq!(api.outbox().await.len(), 1);
}

#[tokio::test]
async fn the_list_pages_through_every_task_once_and_filters() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let mut ids = Vec::new();
    for i in 0..5 {
        let due = if i < 2 {
            "2030-01-01T00:00:00Z"
        } else {
            "2031-01-01T00:00:00Z"
        };
        let created = api
            .create(
                &t,
                json!({
                    "title": format!("task {i}"),
                    "assignee": if i % 2 == 0 { "bob" } else { "carol" },
                    "due_at": due,
                }),
            )
            .await;
        ids.push(created["id"].clone());
    }
    let (status, _) = api
        .call(
            "PATCH",
            &task(&ids[3]),
            Some(&t),
            Some(json!({ "status": "cancelled" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let mut seen = Vec::new();
    let mut uri = format!("{}?limit=2", tasks());
    loop {
        let (status, page) = api.call("GET", &uri, Some(&t), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|i| i["title"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => uri = format!("{}?limit=2&after={next}", tasks()),
            None => break,
        }
    }
    assert_eq!(seen, ["task 0", "task 1", "task 2", "task 3", "task 4"]);

    let titles = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, page) = api
        .call("GET", &format!("{}?assignee=bob", tasks()), Some(&t), None)
        .await;
    assert_eq!(titles(&page), ["task 0", "task 2", "task 4"]);
    let (_, page) = api
        .call(
            "GET",
            &format!("{}?status=cancelled", tasks()),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(titles(&page), ["task 3"]);
    let (_, page) = api
        .call(
            "GET",
            &format!("{}?due_before=2030-06-01T00:00:00Z&assignee=carol", tasks()),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(titles(&page), ["task 1"]);
    // Filters and pages combine.
    let (_, page) = api
        .call(
            "GET",
            &format!("{}?status=todo&limit=1", tasks()),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(titles(&page), ["task 0"]);
    let next = page["next"].as_str().unwrap();
    let (_, page) = api
        .call(
            "GET",
            &format!("{}?status=todo&limit=10&after={next}", tasks()),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(titles(&page), ["task 1", "task 2", "task 4"]);
    assert_eq!(page["next"], Value::Null);
}

#[tokio::test]
async fn tenants_never_see_or_touch_each_others_tasks() {
    let api = Api::new().await;
    let a = api.token("alice", tenant(), "member");
    let b = api.token("bob", tenant(), "admin");
    let secret = api.create(&a, json!({ "title": "secret" })).await;
    let own = api.create(&b, json!({ "title": "bob's" })).await;

    let (status, _) = api.call("GET", &task(&secret["id"]), Some(&b), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(
            "PATCH",
            &task(&secret["id"]),
            Some(&b),
            Some(json!({ "title": "mine" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call("DELETE", &task(&secret["id"]), Some(&b), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, page) = api.call("GET", &tasks(), Some(&b), None).await;
    assert_eq!(status, StatusCode::OK);
    let titles: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["bob's"]);
    // B cannot make its task depend on A's, nor touch A's dependencies.
    let (status, problem) = api
        .call(
            "POST",
            &deps(&own["id"]),
            Some(&b),
            Some(json!({ "depends_on": secret["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(fields(&problem), ["depends_on"]);
    let (status, _) = api
        .call(
            "POST",
            &deps(&secret["id"]),
            Some(&b),
            Some(json!({ "depends_on": own["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A's task is untouched.
    let (_, read) = api.call("GET", &task(&secret["id"]), Some(&a), None).await;
    assert_eq!(read["title"], "secret");
    assert_eq!(read["depends_on"], json!([]));
}

#[tokio::test]
async fn permissions_and_the_policy_guard_every_route() {
    let api = Api::new().await;
    let t = tenant();
    let alice = api.token("alice", t, "member");
    let bob = api.token("bob", t, "member");
    let carol = api.token("carol", t, "member");
    let viewer = api.token("vera", t, "viewer");
    let manager = api.token("mona", t, "manager");

    let (status, _) = api.call("GET", &tasks(), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .call(
            "POST",
            &tasks(),
            Some(&viewer),
            Some(json!({ "title": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call("GET", &tasks(), Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK);

    let hers = api
        .create(&alice, json!({ "title": "hers", "assignee": "bob" }))
        .await;
    let other = api.create(&alice, json!({ "title": "other" })).await;
    // A viewer reads but changes nothing, whatever the policy would say.
    let (status, _) = api
        .call("GET", &task(&hers["id"]), Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call(
            "PATCH",
            &task(&hers["id"]),
            Some(&viewer),
            Some(json!({ "title": "v" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(
            "POST",
            &deps(&hers["id"]),
            Some(&viewer),
            Some(json!({ "depends_on": other["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another member may read it but not change or delete it (policies/tasks.yaml) ...
    let (status, problem) = api
        .call(
            "PATCH",
            &task(&hers["id"]),
            Some(&carol),
            Some(json!({ "title": "mine" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("update:task"),
        "{problem}"
    );
    let (status, _) = api
        .call("DELETE", &task(&hers["id"]), Some(&carol), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(
            "POST",
            &deps(&hers["id"]),
            Some(&carol),
            Some(json!({ "depends_on": other["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // ... and the refused change was rolled back with its transaction.
    let (_, read) = api
        .call("GET", &task(&hers["id"]), Some(&alice), None)
        .await;
    assert_eq!(read["title"], "hers");
    // The assignee may update it, but not delete it.
    let (status, updated) = api
        .call(
            "PATCH",
            &task(&hers["id"]),
            Some(&bob),
            Some(json!({ "status": "in_progress" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let (status, _) = api
        .call("DELETE", &task(&hers["id"]), Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A manager may do both.
    let (status, _) = api
        .call(
            "PATCH",
            &task(&other["id"]),
            Some(&manager),
            Some(json!({ "priority": "urgent" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call("DELETE", &task(&hers["id"]), Some(&manager), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn dependencies_refuse_self_cycles_and_name_the_cycle() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let a = api.create(&t, json!({ "title": "a" })).await;
    let b = api.create(&t, json!({ "title": "b" })).await;
    let c = api.create(&t, json!({ "title": "c" })).await;

    let (status, problem) = api
        .call(
            "POST",
            &deps(&a["id"]),
            Some(&t),
            Some(json!({ "depends_on": a["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("itself"),
        "{problem}"
    );

    // a → b → c
    let (status, with_dep) = api
        .call(
            "POST",
            &deps(&a["id"]),
            Some(&t),
            Some(json!({ "depends_on": b["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{with_dep}");
    assert_eq!(with_dep["depends_on"], json!([b["id"]]));
    let (status, _) = api
        .call(
            "POST",
            &deps(&b["id"]),
            Some(&t),
            Some(json!({ "depends_on": c["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Adding it again changes nothing.
    let (status, again) = api
        .call(
            "POST",
            &deps(&a["id"]),
            Some(&t),
            Some(json!({ "depends_on": b["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["depends_on"], json!([b["id"]]));

    // c → a would close c → a → b → c.
    let (status, problem) = api
        .call(
            "POST",
            &deps(&c["id"]),
            Some(&t),
            Some(json!({ "depends_on": a["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(
        problem["cycle"],
        json!([c["id"], a["id"], b["id"], c["id"]])
    );
    for id in [&a, &b, &c] {
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(id["id"].as_str().unwrap())
        );
    }
    // So would b → a (the direct case).
    let (status, problem) = api
        .call(
            "POST",
            &deps(&b["id"]),
            Some(&t),
            Some(json!({ "depends_on": a["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["cycle"], json!([b["id"], a["id"], b["id"]]));
    let (_, read) = api.call("GET", &task(&c["id"]), Some(&t), None).await;
    assert_eq!(read["depends_on"], json!([]));

    // Removing a → b lets b → a in.
    let dep = format!("{}/{}", deps(&a["id"]), b["id"].as_str().unwrap());
    let (status, _) = api.call("DELETE", &dep, Some(&t), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.call("DELETE", &dep, Some(&t), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(
            "POST",
            &deps(&b["id"]),
            Some(&t),
            Some(json!({ "depends_on": a["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Deleting a task drops the links to it.
    let (status, _) = api.call("DELETE", &task(&a["id"]), Some(&t), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, read) = api.call("GET", &task(&b["id"]), Some(&t), None).await;
    assert_eq!(read["depends_on"], json!([c["id"]]));
}

#[tokio::test]
async fn a_blocked_task_starts_only_once_its_dependencies_are_done() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let first = api
        .create(&t, json!({ "title": "pour the foundation" }))
        .await;
    let second = api.create(&t, json!({ "title": "build the walls" })).await;
    let (status, _) = api
        .call(
            "POST",
            &deps(&second["id"]),
            Some(&t),
            Some(json!({ "depends_on": first["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    for next in ["in_progress", "done"] {
        let (status, problem) = api
            .call(
                "PATCH",
                &task(&second["id"]),
                Some(&t),
                Some(json!({ "status": next })),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(
            problem["blocked_by"],
            json!([{ "id": first["id"], "title": "pour the foundation", "status": "todo" }])
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("pour the foundation")
        );
    }
    // Cancelling is always possible; other fields change freely while blocked.
    let (status, _) = api
        .call(
            "PATCH",
            &task(&second["id"]),
            Some(&t),
            Some(json!({ "priority": "high" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    for next in ["in_progress", "done"] {
        let (status, body) = api
            .call(
                "PATCH",
                &task(&first["id"]),
                Some(&t),
                Some(json!({ "status": next })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, started) = api
        .call(
            "PATCH",
            &task(&second["id"]),
            Some(&t),
            Some(json!({ "status": "in_progress" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["status"], "in_progress");
    let (status, _) = api
        .call(
            "PATCH",
            &task(&second["id"]),
            Some(&t),
            Some(json!({ "status": "done" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Done is final: no status change, no new dependencies.
    let (status, problem) = api
        .call(
            "PATCH",
            &task(&second["id"]),
            Some(&t),
            Some(json!({ "status": "todo" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        problem["detail"].as_str().unwrap().contains("final"),
        "{problem}"
    );
    let third = api.create(&t, json!({ "title": "paint" })).await;
    let (status, problem) = api
        .call(
            "POST",
            &deps(&second["id"]),
            Some(&t),
            Some(json!({ "depends_on": third["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    // task.completed was published for each task that finished, after its task.updated.
    let kinds: Vec<String> = api.outbox().await.into_iter().map(|(_, k)| k).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "task.completed").count(), 2);
    let done = kinds.iter().position(|k| k == "task.completed").unwrap();
    assert_eq!(kinds[done - 1], "task.updated");
}

#[tokio::test]
async fn a_task_scheduled_in_the_future_cannot_start_before_then() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let later = rfc3339(chrono::Duration::hours(1));
    let created = api
        .create(&t, json!({ "title": "launch", "scheduled_for": later }))
        .await;
    for next in ["in_progress", "done"] {
        let (status, problem) = api
            .call(
                "PATCH",
                &task(&created["id"]),
                Some(&t),
                Some(json!({ "status": next })),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert_eq!(problem["scheduled_for"], later);
        assert!(problem["detail"].as_str().unwrap().contains(&later));
    }
    // Moving the schedule into the past in the same request allows the start.
    let earlier = rfc3339(chrono::Duration::minutes(-1));
    let (status, started) = api
        .call(
            "PATCH",
            &task(&created["id"]),
            Some(&t),
            Some(json!({ "status": "in_progress", "scheduled_for": earlier })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["status"], "in_progress");
}

/// Two transactions add A → B and B → A at the same time: the second waits for the first's
/// graph lock, then sees its edge and refuses. Exactly one wins.
#[tokio::test]
async fn concurrent_opposite_dependencies_let_exactly_one_win() {
    let api = Api::new().await;
    let tenant = tenant();
    let t = api.token("alice", tenant, "member");
    let a = api.create(&t, json!({ "title": "a" })).await;
    let b = api.create(&t, json!({ "title": "b" })).await;
    let a: Uuid = a["id"].as_str().unwrap().parse().unwrap();
    let b: Uuid = b["id"].as_str().unwrap().parse().unwrap();

    let mut first = api.tenants.begin(tenant).await.unwrap();
    assert!(dependencies::add(&mut first, a, b).await.unwrap());
    let pool = api.tenants.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool.begin(tenant).await.unwrap();
        let outcome = dependencies::add(&mut tx, b, a).await;
        tx.commit().await.unwrap();
        outcome
    });
    // Wait (bounded) until the second transaction is blocked on the graph lock.
    let admin = api.db.pool(Role::Admin, 1).await;
    let mut waited = Duration::ZERO;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            !second.is_finished(),
            "the second transaction did not wait for the first"
        );
        assert!(
            waited < Duration::from_secs(10),
            "the second transaction never blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    first.commit().await.unwrap();
    match second.await.unwrap() {
        Err(DependencyError::Cycle(cycle)) => assert_eq!(cycle, [b, a, b]),
        other => panic!("expected the cycle to be refused, got {other:?}"),
    }
    admin.close().await;

    // The same race through the API, many times: always one 201 and one 409.
    for i in 0..10 {
        let x = api.create(&t, json!({ "title": format!("x{i}") })).await;
        let y = api.create(&t, json!({ "title": format!("y{i}") })).await;
        let (x_deps, y_deps) = (deps(&x["id"]), deps(&y["id"]));
        let (one, two) = tokio::join!(
            api.call(
                "POST",
                &x_deps,
                Some(&t),
                Some(json!({ "depends_on": y["id"] }))
            ),
            api.call(
                "POST",
                &y_deps,
                Some(&t),
                Some(json!({ "depends_on": x["id"] }))
            ),
        );
        let mut statuses = [one.0, two.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "{one:?} {two:?}"
        );
    }
}

#[tokio::test]
async fn openapi_describes_the_tasks_routes() {
    let api = Api::new().await;
    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = &doc["paths"];
    assert!(paths[tasks()]["post"].is_object());
    assert!(paths[tasks()]["get"].is_object());
    for method in ["get", "patch", "delete"] {
        assert!(
            paths[format!("{ROUTE}/tasks/{{id}}")][method].is_object(),
            "{method}"
        );
    }
    assert!(paths[format!("{ROUTE}/tasks/{{id}}/dependencies")]["post"].is_object());
    assert!(
        paths[format!("{ROUTE}/tasks/{{id}}/dependencies/{{depends_on}}")]["delete"].is_object()
    );
}
