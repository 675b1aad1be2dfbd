//! The projects API against the real PostgreSQL: CRUD, validation, pagination, tenant isolation,
//! RBAC, the outbox, and the ETag preconditions (428, 412, 304) with the concurrent race.
//! See `common/mod.rs` for the database each test gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use axum::http::StatusCode;
use axum::http::header::{ETAG, LOCATION};
use common::{Api, project, projects, tenant};
use serde_json::{Value, json};

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map(|e| e.iter().map(|e| e["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn version(p: &Value) -> i64 {
    p["version"].as_i64().unwrap()
}

#[tokio::test]
async fn create_read_update_delete_with_etags() {
    let api = Api::new().await;
    let alice = api.token("alice", tenant(), "manager");
    let (status, headers, created) = api
        .send(
            "POST",
            &projects(),
            Some(&alice),
            &[],
            Some(json!({
                "name": "  Apollo  ",
                "description": "Moon landing",
                "metadata": {"color": "blue", "budget": 100},
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(headers[ETAG], "\"1\"");
    let id = created["id"].as_str().unwrap();
    assert_eq!(headers[LOCATION], format!("projects/{id}"));
    assert_eq!(created["name"], "Apollo");
    assert_eq!(created["description"], "Moon landing");
    assert_eq!(created["parent_id"], Value::Null);
    assert_eq!(created["metadata"], json!({"color": "blue", "budget": 100}));
    assert_eq!(created["version"], 1);
    assert_eq!(created["created_by"], "alice");
    assert_eq!(created["created_at"], created["updated_at"]);
    let keys: Vec<&String> = created.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "created_at",
            "created_by",
            "description",
            "id",
            "metadata",
            "name",
            "parent_id",
            "updated_at",
            "version"
        ]
    );

    let (status, headers, read) = api
        .send("GET", &project(&created["id"]), Some(&alice), &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[ETAG], "\"1\"");
    assert_eq!(read, created);

    let (status, headers, updated) = api
        .send(
            "PATCH",
            &project(&created["id"]),
            Some(&alice),
            &[("if-match", "\"1\"")],
            Some(json!({ "description": null, "metadata": {"color": "red"} })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(headers[ETAG], "\"2\"");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["name"], "Apollo");
    assert_eq!(updated["description"], Value::Null);
    assert_eq!(updated["metadata"], json!({"color": "red"}));
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_ne!(updated["updated_at"], created["updated_at"]);

    // A patch that changes nothing is not a new version.
    let (status, same) = api
        .patch(&alice, &created["id"], 2, json!({ "name": "Apollo" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same, updated);

    let (status, body) = api.delete(&alice, &project(&created["id"]), 2).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(body, Value::Null);
    let (status, problem) = api
        .call("GET", &project(&created["id"]), Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        problem["detail"].as_str().unwrap().contains(id),
        "{problem}"
    );

    // The outbox got exactly the events of the committed changes, with their payloads.
    let events = api.outbox().await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["project.created", "project.updated", "project.deleted"]
    );
    assert_eq!(events[0].2, json!({ "project": created, "changed": [] }));
    assert_eq!(
        events[1].2,
        json!({ "project": updated, "changed": ["description", "metadata"] })
    );
    assert_eq!(events[2].2, json!({ "project_id": id }));
}

#[tokio::test]
async fn preconditions_are_required_and_checked() {
    let api = Api::new().await;
    let alice = api.token("alice", tenant(), "manager");
    let p = api.create(&alice, json!({ "name": "Gemini" })).await;
    let uri = project(&p["id"]);

    // No If-Match: 428, saying what to send, for PATCH and DELETE.
    for method in ["PATCH", "DELETE"] {
        let body = (method == "PATCH").then(|| json!({ "name": "x" }));
        let (status, _, problem) = api.send(method, &uri, Some(&alice), &[], body).await;
        assert_eq!(status, StatusCode::PRECONDITION_REQUIRED, "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("If-Match"), "{detail}");
        assert!(detail.contains("ETag"), "{detail}");
    }
    // Unreadable If-Match: 400 with an example.
    let (status, _, problem) = api
        .send(
            "PATCH",
            &uri,
            Some(&alice),
            &[("if-match", "1")],
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("If-Match: \"3\""),
        "{problem}"
    );

    // A move to version 2.
    let (status, moved) = api
        .patch(&alice, &p["id"], 1, json!({"name": "Gemini 2"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");

    // Stale: 412 naming the current version, with the current ETag; nothing changes.
    for tag in ["\"1\"", "W/\"2\"", "\"7\", \"1\""] {
        let (status, headers, problem) = api
            .send(
                "PATCH",
                &uri,
                Some(&alice),
                &[("if-match", tag)],
                Some(json!({"name": "late"})),
            )
            .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{tag}: {problem}");
        assert_eq!(problem["current_version"], 2, "{problem}");
        assert_eq!(headers[ETAG], "\"2\"");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("If-Match: \"2\""),
            "{problem}"
        );
        let (status, _, problem) = api
            .send("DELETE", &uri, Some(&alice), &[("if-match", tag)], None)
            .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{tag}: {problem}");
    }
    let (_, now) = api.call("GET", &uri, Some(&alice), None).await;
    assert_eq!(now["name"], "Gemini 2");
    assert_eq!(now["version"], 2);

    // If-None-Match: 304 (no body, the ETag) when it matches, weakly; 200 otherwise.
    for tag in ["\"2\"", "W/\"2\"", "\"1\", \"2\"", "*"] {
        let (status, headers, body) = api
            .send("GET", &uri, Some(&alice), &[("if-none-match", tag)], None)
            .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{tag}");
        assert_eq!(headers[ETAG], "\"2\"");
        assert_eq!(body, Value::Null);
    }
    let (status, headers, body) = api
        .send(
            "GET",
            &uri,
            Some(&alice),
            &[("if-none-match", "\"1\"")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[ETAG], "\"2\"");
    assert_eq!(body["version"], 2);

    // `*` matches whatever version exists.
    let (status, _, body) = api
        .send(
            "PATCH",
            &uri,
            Some(&alice),
            &[("if-match", "*")],
            Some(json!({"name": "G3"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 3);
    // Only the committed changes wrote events.
    let kinds: Vec<String> = api.outbox().await.into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(
        kinds,
        ["project.created", "project.updated", "project.updated"]
    );
}

#[tokio::test]
async fn concurrent_patches_with_the_same_if_match_let_exactly_one_win() {
    let api = Api::new().await;
    let alice = api.token("alice", tenant(), "member");
    let p = api.create(&alice, json!({ "name": "race" })).await;
    let mut expected = 1;
    for round in 0..10 {
        let (one, two) = tokio::join!(
            api.patch(
                &alice,
                &p["id"],
                expected,
                json!({"name": format!("one {round}")})
            ),
            api.patch(
                &alice,
                &p["id"],
                expected,
                json!({"name": format!("two {round}")})
            ),
        );
        let mut statuses = [one.0, two.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
            "round {round}: {} / {}",
            one.1,
            two.1
        );
        let (winner, loser) = if one.0 == StatusCode::OK {
            (one.1, two.1)
        } else {
            (two.1, one.1)
        };
        expected += 1;
        assert_eq!(version(&winner), expected);
        assert_eq!(loser["current_version"], expected);
        let (_, now) = api
            .call("GET", &project(&p["id"]), Some(&alice), None)
            .await;
        assert_eq!(now, winner, "the loser changed nothing");
    }
    // One version per winning write, no gaps.
    let (_, history) = api
        .call(
            "GET",
            &format!("{}/versions", project(&p["id"])),
            Some(&alice),
            None,
        )
        .await;
    let versions: Vec<i64> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(version)
        .collect();
    assert_eq!(versions, (1..=11).rev().collect::<Vec<i64>>());
}

#[tokio::test]
async fn invalid_input_is_a_problem_naming_the_field() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "manager");
    let cases = [
        (json!({ "name": "   " }), vec!["name"]),
        (json!({ "name": "x".repeat(201) }), vec!["name"]),
        (json!({ "name": "two\nlines" }), vec!["name"]),
        (
            json!({ "name": "ok", "description": "d".repeat(5001) }),
            vec!["description"],
        ),
        (
            json!({ "name": "ok", "metadata": [1, 2] }),
            vec!["metadata"],
        ),
        (
            json!({ "name": "ok", "metadata": "tags" }),
            vec!["metadata"],
        ),
        (
            json!({ "name": "ok", "metadata": { "blob": "x".repeat(17 * 1024) } }),
            vec!["metadata"],
        ),
        (
            json!({ "name": "", "description": "d".repeat(5001), "metadata": 3 }),
            vec!["name", "description", "metadata"],
        ),
    ];
    for (body, expected) in cases {
        let (status, problem) = api
            .call("POST", &projects(), Some(&t), Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {problem}"
        );
        assert_eq!(fields(&problem), expected, "{problem}");
        for f in expected {
            assert!(problem["detail"].as_str().unwrap().contains(f), "{problem}");
        }
    }
    // Bodies of the wrong shape: unknown fields, ids that are not UUIDs, no name, not JSON.
    for body in [
        json!({ "name": "ok", "owner": "me" }),
        json!({ "name": "ok", "parent_id": "nope" }),
        json!({ "description": "no name" }),
    ] {
        let (status, problem) = api
            .call("POST", &projects(), Some(&t), Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {problem}"
        );
        assert!(problem["detail"].is_string(), "{problem}");
    }
    let (status, _, _) = api
        .send(
            "POST",
            &projects(),
            Some(&t),
            &[("content-type", "application/json")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let created = api.create(&t, json!({ "name": "ok" })).await;
    for body in [
        json!({ "name": "" }),
        json!({ "metadata": null }),
        json!({ "version": 9 }),
    ] {
        let (status, problem) = api.patch(&t, &created["id"], 1, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {problem}"
        );
    }
    for query in [
        "limit=0",
        "limit=101",
        "parent_id=nope",
        "after=3",
        "sort=name",
    ] {
        let (status, problem) = api
            .call("GET", &format!("{}?{query}", projects()), Some(&t), None)
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query} → {problem}"
        );
    }
    let (status, problem) = api
        .call(
            "DELETE",
            &format!("{}?recursive=maybe", project(&created["id"])),
            Some(&t),
            None,
        )
        .await;
    // If-Match is looked at first.
    assert_eq!(status, StatusCode::PRECONDITION_REQUIRED, "{problem}");
    let (status, problem) = api
        .delete(
            &t,
            &format!("{}?recursive=maybe", project(&created["id"])),
            1,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, _) = api
        .call("GET", &format!("{}/not-a-uuid", projects()), Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing invalid reached the outbox.
    assert_eq!(api.outbox().await.len(), 1);
}

#[tokio::test]
async fn the_list_pages_through_every_project_once_and_filters_by_parent() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let root = api.create(&t, json!({ "name": "root" })).await;
    let other = api.create(&t, json!({ "name": "other root" })).await;
    let mut children = Vec::new();
    for i in 0..5 {
        let c = api
            .create(
                &t,
                json!({ "name": format!("child {i}"), "parent_id": root["id"] }),
            )
            .await;
        assert_eq!(c["parent_id"], root["id"]);
        children.push(c["id"].clone());
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let uri = match &after {
            Some(a) => format!("{}?limit=2&after={a}", projects()),
            None => format!("{}?limit=2", projects()),
        };
        let (status, page) = api.call("GET", &uri, Some(&t), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["id"].clone()));
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    let mut all = vec![root["id"].clone(), other["id"].clone()];
    all.extend(children.iter().cloned());
    assert_eq!(seen, all, "every project once, in creation order");

    let (_, page) = api
        .call(
            "GET",
            &format!("{}?parent_id={}", projects(), root["id"].as_str().unwrap()),
            Some(&t),
            None,
        )
        .await;
    let ids: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(ids, children);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = api
        .call(
            "GET",
            &format!("{}?parent_id=root", projects()),
            Some(&t),
            None,
        )
        .await;
    let ids: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(ids, [root["id"].clone(), other["id"].clone()]);
    // An unknown parent is a 404, not an empty page.
    let (status, _) = api
        .call(
            "GET",
            &format!("{}?parent_id={}", projects(), uuid::Uuid::now_v7()),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tenants_never_see_or_touch_each_others_projects() {
    let api = Api::new().await;
    let a = api.token("alice", tenant(), "admin");
    let b = api.token("bob", tenant(), "admin");
    let pa = api.create(&a, json!({ "name": "A's" })).await;
    let child = api
        .create(&a, json!({ "name": "A's child", "parent_id": pa["id"] }))
        .await;
    let pb = api.create(&b, json!({ "name": "B's" })).await;
    let uri = project(&pa["id"]);

    for path in [
        uri.clone(),
        format!("{uri}/versions"),
        format!("{uri}/versions/1"),
        format!("{uri}/tree"),
        format!("{}?parent_id={}", projects(), pa["id"].as_str().unwrap()),
    ] {
        let (status, problem) = api.call("GET", &path, Some(&b), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {problem}");
    }
    let (status, _) = api.patch(&b, &pa["id"], 1, json!({ "name": "mine" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.delete(&b, &uri, 1).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.delete(&b, &format!("{uri}?recursive=true"), 1).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Another tenant's project cannot be a parent, on creation or on a move.
    let (status, problem) = api
        .call(
            "POST",
            &projects(),
            Some(&b),
            Some(json!({ "name": "x", "parent_id": pa["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["field"], "parent_id", "{problem}");
    let (status, problem) = api
        .patch(&b, &pb["id"], 1, json!({ "parent_id": pa["id"] }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["field"], "parent_id", "{problem}");

    // B's list holds only B's project; A's are unchanged.
    let (_, page) = api.call("GET", &projects(), Some(&b), None).await;
    assert_eq!(page["items"], json!([pb]));
    let (_, page) = api.call("GET", &projects(), Some(&a), None).await;
    assert_eq!(page["items"], json!([pa, child]));
    // Each tenant's events carry its own tenant.
    let tenants: Vec<uuid::Uuid> = api.outbox().await.into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(tenants.len(), 3);
    assert_eq!(tenants[0], tenants[1]);
    assert_ne!(tenants[0], tenants[2]);
}

#[tokio::test]
async fn permissions_guard_every_route() {
    let api = Api::new().await;
    let t = tenant();
    let viewer = api.token("vera", t, "viewer");
    let member = api.token("mo", t, "member");
    let manager = api.token("max", t, "manager");
    let p = api.create(&member, json!({ "name": "guarded" })).await;
    let uri = project(&p["id"]);

    // No token: 401.
    let (status, _) = api.call("GET", &projects(), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Viewers read everything and change nothing.
    for path in [
        projects(),
        uri.clone(),
        format!("{uri}/tree"),
        format!("{uri}/versions"),
        format!("{uri}/versions/1"),
    ] {
        let (status, body) = api.call("GET", &path, Some(&viewer), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (status, problem) = api
        .call(
            "POST",
            &projects(),
            Some(&viewer),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("write:projects"),
        "{problem}"
    );
    let (status, _) = api.patch(&viewer, &p["id"], 1, json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Members change any project, but only managers delete.
    let (status, _) = api
        .patch(&member, &p["id"], 1, json!({"name": "renamed"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = api.delete(&member, &uri, 2).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("manage:projects"),
        "{problem}"
    );
    let (status, _) = api.delete(&manager, &uri, 2).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn openapi_describes_the_routes() {
    let api = Api::new().await;
    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/projects/projects",
        "/projects/projects/{id}",
        "/projects/projects/{id}/tree",
        "/projects/projects/{id}/versions",
        "/projects/projects/{id}/versions/{version}",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
    assert!(!paths.contains_key("/projects/items"));
}
