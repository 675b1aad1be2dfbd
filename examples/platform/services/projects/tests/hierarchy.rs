//! The hierarchy and the history against the real PostgreSQL: moves and cycles (with the
//! concurrent A-under-B / B-under-A race), trees and their depth limit, deleting with children
//! (refused, or recursive), and the version history. See `common/mod.rs` for the database each
//! test gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use axum::http::StatusCode;
use common::{Api, project, projects, tenant};
use serde_json::{Value, json};

fn ids(list: &Value) -> Vec<Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .collect()
}

#[tokio::test]
async fn moves_are_refused_when_they_would_make_a_cycle() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let a = api.create(&t, json!({ "name": "A" })).await;
    let b = api
        .create(&t, json!({ "name": "B", "parent_id": a["id"] }))
        .await;
    let c = api
        .create(&t, json!({ "name": "C", "parent_id": b["id"] }))
        .await;

    // Under itself.
    let (status, problem) = api
        .patch(&t, &a["id"], 1, json!({ "parent_id": a["id"] }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("its own parent"),
        "{problem}"
    );
    // Under a descendant: the problem names the path from the new parent up to the project.
    let (status, problem) = api
        .patch(&t, &a["id"], 1, json!({ "parent_id": c["id"] }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(
        problem["path"],
        json!([c["id"], b["id"], a["id"]]),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("cycle"),
        "{problem}"
    );
    // Under an unknown project: 404 on parent_id.
    let (status, problem) = api
        .patch(
            &t,
            &a["id"],
            1,
            json!({ "parent_id": uuid::Uuid::now_v7() }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["field"], "parent_id");
    // Nothing moved.
    let (_, now) = api.call("GET", &project(&a["id"]), Some(&t), None).await;
    assert_eq!(now, a);

    // Legal moves: C to the top, then A under C.
    let (status, top) = api
        .patch(&t, &c["id"], 1, json!({ "parent_id": null }))
        .await;
    assert_eq!(status, StatusCode::OK, "{top}");
    assert_eq!(top["parent_id"], Value::Null);
    let (status, moved) = api
        .patch(&t, &a["id"], 1, json!({ "parent_id": c["id"] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["parent_id"], c["id"]);
    assert_eq!(moved["version"], 2);
    let events = api.outbox().await;
    let (_, kind, payload) = events.last().unwrap();
    assert_eq!(kind, "project.updated");
    assert_eq!(payload["changed"], json!(["parent_id"]));
    // Creating under a project needs it to exist.
    let (status, problem) = api
        .call(
            "POST",
            &projects(),
            Some(&t),
            Some(json!({ "name": "x", "parent_id": uuid::Uuid::now_v7() })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}

#[tokio::test]
async fn concurrent_opposite_moves_let_exactly_one_win() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let a = api.create(&t, json!({ "name": "A" })).await;
    let b = api.create(&t, json!({ "name": "B" })).await;
    let (mut va, mut vb) = (1, 1);
    for round in 0..10 {
        let (one, two) = tokio::join!(
            api.patch(&t, &a["id"], va, json!({ "parent_id": b["id"] })),
            api.patch(&t, &b["id"], vb, json!({ "parent_id": a["id"] })),
        );
        let mut statuses = [one.0, two.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}: {} / {}",
            one.1,
            two.1
        );
        // Exactly one parent link exists; undo it for the next round.
        let (_, pa) = api.call("GET", &project(&a["id"]), Some(&t), None).await;
        let (_, pb) = api.call("GET", &project(&b["id"]), Some(&t), None).await;
        let links = [pa["parent_id"] == b["id"], pb["parent_id"] == a["id"]];
        assert_eq!(
            links.iter().filter(|l| **l).count(),
            1,
            "round {round}: {pa} {pb}"
        );
        let (moved, version) = if links[0] {
            (&a, pa["version"].as_i64().unwrap())
        } else {
            (&b, pb["version"].as_i64().unwrap())
        };
        let (status, back) = api
            .patch(&t, &moved["id"], version, json!({ "parent_id": null }))
            .await;
        assert_eq!(status, StatusCode::OK, "{back}");
        let (_, pa) = api.call("GET", &project(&a["id"]), Some(&t), None).await;
        let (_, pb) = api.call("GET", &project(&b["id"]), Some(&t), None).await;
        va = pa["version"].as_i64().unwrap();
        vb = pb["version"].as_i64().unwrap();
    }
}

#[tokio::test]
async fn the_tree_nests_descendants_to_the_requested_depth() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let root = api.create(&t, json!({ "name": "root" })).await;
    let a = api
        .create(&t, json!({ "name": "a", "parent_id": root["id"] }))
        .await;
    let b = api
        .create(&t, json!({ "name": "b", "parent_id": root["id"] }))
        .await;
    let a1 = api
        .create(&t, json!({ "name": "a1", "parent_id": a["id"] }))
        .await;
    let a11 = api
        .create(&t, json!({ "name": "a11", "parent_id": a1["id"] }))
        .await;
    let _elsewhere = api.create(&t, json!({ "name": "other" })).await;

    let (status, tree) = api
        .call(
            "GET",
            &format!("{}/tree", project(&root["id"])),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    assert_eq!(tree["id"], root["id"]);
    assert_eq!(tree["name"], "root");
    assert_eq!(tree["version"], 1);
    assert_eq!(ids(&tree["children"]), [a["id"].clone(), b["id"].clone()]);
    let na = &tree["children"][0];
    assert_eq!(ids(&na["children"]), [a1["id"].clone()]);
    assert_eq!(ids(&na["children"][0]["children"]), [a11["id"].clone()]);
    assert_eq!(na["children"][0]["children"][0]["children"], json!([]));
    assert_eq!(tree["children"][1]["children"], json!([]));
    assert_eq!(tree["children_truncated"], false);

    // depth=1: the children only; `a` says that it has more below.
    let (_, shallow) = api
        .call(
            "GET",
            &format!("{}/tree?depth=1", project(&root["id"])),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(
        ids(&shallow["children"]),
        [a["id"].clone(), b["id"].clone()]
    );
    assert_eq!(shallow["children"][0]["children"], json!([]));
    assert_eq!(shallow["children"][0]["children_truncated"], true);
    assert_eq!(shallow["children"][1]["children_truncated"], false);
    // A subtree's tree starts at the project asked for.
    let (_, sub) = api
        .call(
            "GET",
            &format!("{}/tree?depth=0", project(&a1["id"])),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(sub["id"], a1["id"]);
    assert_eq!(sub["children"], json!([]));
    assert_eq!(sub["children_truncated"], true);
    for q in ["depth=11", "depth=-1", "level=2"] {
        let (status, problem) = api
            .call(
                "GET",
                &format!("{}/tree?{q}", project(&root["id"])),
                Some(&t),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {problem}");
    }
    let (status, _) = api
        .call(
            "GET",
            &format!("{}/tree", project(&json!(uuid::Uuid::now_v7().to_string()))),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_project_with_children_is_deleted_only_recursively() {
    let api = Api::new().await;
    let t = api.token("max", tenant(), "manager");
    let root = api.create(&t, json!({ "name": "root" })).await;
    let a = api
        .create(&t, json!({ "name": "a", "parent_id": root["id"] }))
        .await;
    let a1 = api
        .create(&t, json!({ "name": "a1", "parent_id": a["id"] }))
        .await;
    let b = api
        .create(&t, json!({ "name": "b", "parent_id": root["id"] }))
        .await;
    let keep = api.create(&t, json!({ "name": "keep" })).await;

    let (status, problem) = api.delete(&t, &project(&root["id"]), 1).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["children"], 2);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("recursive=true"),
        "{problem}"
    );
    // Stale If-Match on a recursive delete: 412, nothing deleted.
    let (status, _) = api
        .delete(&t, &format!("{}?recursive=true", project(&root["id"])), 2)
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let before = api.outbox().await.len();

    let (status, body) = api
        .delete(&t, &format!("{}?recursive=true", project(&root["id"])), 1)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    for gone in [&root, &a, &a1, &b] {
        let (status, _) = api.call("GET", &project(&gone["id"]), Some(&t), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (_, page) = api.call("GET", &projects(), Some(&t), None).await;
    assert_eq!(ids(&page["items"]), [keep["id"].clone()]);
    // One project.deleted per project, deepest first.
    let events = api.outbox().await;
    let deleted: Vec<Value> = events[before..]
        .iter()
        .map(|(_, k, p)| {
            assert_eq!(k, "project.deleted");
            p["project_id"].clone()
        })
        .collect();
    assert_eq!(deleted.len(), 4);
    assert_eq!(deleted[0], a1["id"]);
    assert_eq!(deleted[3], root["id"]);
    // A leaf is deleted without `recursive`.
    let (status, _) = api.delete(&t, &project(&keep["id"]), 1).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_history_keeps_every_version_newest_first() {
    let api = Api::new().await;
    let t = api.token("alice", tenant(), "member");
    let parent = api.create(&t, json!({ "name": "parent" })).await;
    let p = api
        .create(
            &t,
            json!({ "name": "v1", "description": "first", "metadata": {"k": 1} }),
        )
        .await;
    let (_, _) = api.patch(&t, &p["id"], 1, json!({ "name": "v2" })).await;
    let (_, _) = api
        .patch(
            &t,
            &p["id"],
            2,
            json!({ "parent_id": parent["id"], "metadata": {"k": 3} }),
        )
        .await;
    let (status, v4) = api
        .patch(&t, &p["id"], 3, json!({ "description": null }))
        .await;
    assert_eq!(status, StatusCode::OK, "{v4}");

    let versions = format!("{}/versions", project(&p["id"]));
    let (status, history) = api.call("GET", &versions, Some(&t), None).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let items = history["items"].as_array().unwrap();
    let numbers: Vec<i64> = items
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [4, 3, 2, 1]);
    assert_eq!(history["next"], Value::Null);
    assert_eq!(
        items[3],
        json!({
            "version": 1, "name": "v1", "description": "first", "parent_id": null,
            "metadata": {"k": 1}, "changed_by": "alice", "changed_at": p["created_at"],
        })
    );
    assert_eq!(items[2]["name"], "v2");
    assert_eq!(items[1]["parent_id"], parent["id"]);
    assert_eq!(items[1]["metadata"], json!({"k": 3}));
    assert_eq!(items[0]["description"], Value::Null);
    assert_eq!(items[0]["changed_at"], v4["updated_at"]);

    // Pages of two.
    let (_, first) = api
        .call("GET", &format!("{versions}?limit=2"), Some(&t), None)
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["next"], 3);
    let (_, second) = api
        .call(
            "GET",
            &format!("{versions}?limit=2&before=3"),
            Some(&t),
            None,
        )
        .await;
    let numbers: Vec<i64> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1]);
    assert_eq!(second["next"], Value::Null);

    let (status, one) = api
        .call("GET", &format!("{versions}/2"), Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, items[2]);
    let (status, problem) = api
        .call("GET", &format!("{versions}/9"), Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        problem["detail"].as_str().unwrap().contains("1 to 4"),
        "{problem}"
    );
    let (status, _) = api
        .call("GET", &format!("{versions}/two"), Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call("GET", &format!("{versions}?limit=0"), Some(&t), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_history_is_append_only_for_the_runtime_role() {
    let api = Api::new().await;
    let t = tenant();
    let token = api.token("alice", t, "member");
    let p = api.create(&token, json!({ "name": "fixed" })).await;
    let mut tx = api.tenants.begin(t).await.unwrap();
    let err = sqlx::query("UPDATE project_versions SET name = 'forged'")
        .execute(&mut tx)
        .await
        .expect_err("arq_app must not rewrite history");
    assert!(err.to_string().contains("permission denied"), "{err}");
    drop(tx);
    let mut tx = api.tenants.begin(t).await.unwrap();
    let err = sqlx::query("DELETE FROM project_versions")
        .execute(&mut tx)
        .await
        .expect_err("arq_app must not delete history");
    assert!(err.to_string().contains("permission denied"), "{err}");
    drop(tx);
    let (_, history) = api
        .call(
            "GET",
            &format!("{}/versions", project(&p["id"])),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(history["items"][0]["name"], "fixed");
}
