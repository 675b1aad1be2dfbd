//! The profiles API against the real PostgreSQL: create/replace/read/delete, validation, the
//! e-mail and preferences lookups with pagination, tiers, RBAC and the CEL policy, tenant
//! isolation, and the events each change leaves in the outbox. See `common/mod.rs` for the
//! database each test gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use axum::http::StatusCode;
use common::{Api, encode, list, me, tenant, user, users};
use serde_json::{Value, json};
use uuid::Uuid;

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map(|e| e.iter().map(|e| e["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn payload(envelope: &arq_queue::Envelope) -> Value {
    envelope.payload.decode().unwrap()
}

#[tokio::test]
async fn create_replace_read_and_delete_ones_own_profile() {
    let api = Api::new().await;
    let t = tenant();
    let ada = Uuid::new_v4();
    let token = api.token(ada, t, "member");

    let (status, problem) = api.call("GET", &me(), Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("PUT /users/users/me"),
        "{problem}"
    );

    let created = api
        .put_me(
            &token,
            json!({
                "display_name": "  Ada Lovelace ",
                "email": " Ada@Example.com ",
                "phone": "+44 20 7946 0958",
                "preferences": {"theme": "dark", "lang": "en"},
            }),
        )
        .await;
    assert_eq!(created["user_id"], ada.to_string());
    assert_eq!(created["display_name"], "Ada Lovelace");
    assert_eq!(created["email"], "Ada@Example.com");
    assert_eq!(created["phone"], "+442079460958");
    assert_eq!(
        created["preferences"],
        json!({"theme": "dark", "lang": "en"})
    );
    assert_eq!(created["tier"], "free");
    assert_eq!(created["created_at"], created["updated_at"]);

    let (status, read) = api.call("GET", &me(), Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, created);
    let (status, by_id) = api.call("GET", &user(ada), Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id, created);

    // The same body again changes nothing: no event, same updated_at.
    let same = api
        .put_me(
            &token,
            json!({
                "display_name": "Ada Lovelace",
                "email": "Ada@Example.com",
                "phone": "+44 20 7946 0958",
                "preferences": {"lang": "en", "theme": "dark"},
            }),
        )
        .await;
    assert_eq!(same, created);

    // PUT replaces: the absent phone and preferences are cleared.
    let replaced = api
        .put_me(
            &token,
            json!({ "display_name": "Ada King", "email": "ada@example.com" }),
        )
        .await;
    assert_eq!(replaced["display_name"], "Ada King");
    assert_eq!(replaced["email"], "ada@example.com");
    assert_eq!(replaced["phone"], Value::Null);
    assert_eq!(replaced["preferences"], json!({}));
    assert_eq!(replaced["created_at"], created["created_at"]);
    assert_ne!(replaced["updated_at"], created["updated_at"]);

    let (status, _) = api.call("DELETE", &user(ada), Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.call("GET", &me(), Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call("DELETE", &user(ada), Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Exactly the events of the committed changes, with ids and field names only.
    let events = api.outbox().await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "user.profile_updated",
            "user.profile_updated",
            "user.deleted"
        ]
    );
    assert!(
        events
            .iter()
            .all(|(tid, _, e)| *tid == t.into_uuid() && e.tenant == Some(t))
    );
    assert_eq!(
        payload(&events[0].2),
        json!({
            "user_id": ada,
            "created": true,
            "changed": ["display_name", "email", "phone", "preferences"],
        })
    );
    assert_eq!(
        payload(&events[1].2),
        json!({
            "user_id": ada,
            "created": false,
            "changed": ["display_name", "email", "phone", "preferences"],
        })
    );
    assert_eq!(payload(&events[2].2), json!({ "user_id": ada }));
    // No personal data in any event.
    for (_, _, e) in &events {
        let text = payload(e).to_string().to_lowercase();
        assert!(!text.contains("ada@example.com"), "{text}");
        assert!(!text.contains("7946"), "{text}");
    }
}

#[tokio::test]
async fn invalid_input_is_a_422_problem_naming_every_field() {
    let api = Api::new().await;
    let token = api.token(Uuid::new_v4(), tenant(), "member");
    let ok = || json!({ "display_name": "Ada", "email": "ada@example.com" });
    let with = |k: &str, v: Value| {
        let mut b = ok();
        b[k] = v;
        b
    };
    let mut deep = json!(1);
    for _ in 0..9 {
        deep = json!({ "d": deep });
    }
    let cases = [
        (with("email", json!("not-an-address")), vec!["email"]),
        (with("email", json!("a@b")), vec!["email"]),
        (with("display_name", json!("   ")), vec!["display_name"]),
        (
            with("display_name", json!("x".repeat(101))),
            vec!["display_name"],
        ),
        (with("phone", json!("0207 946 0958")), vec!["phone"]),
        (with("preferences", json!(["dark"])), vec!["preferences"]),
        (with("preferences", json!("dark")), vec!["preferences"]),
        (
            with("preferences", json!({ "blob": "x".repeat(9000) })),
            vec!["preferences"],
        ),
        (with("preferences", deep), vec!["preferences"]),
        (
            json!({ "display_name": "", "email": "nope", "phone": "12", "preferences": 1 }),
            vec!["display_name", "email", "phone", "preferences"],
        ),
    ];
    for (body, expected) in cases {
        let (status, problem) = api
            .call("PUT", &me(), Some(&token), Some(body.clone()))
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
    // Bodies of the wrong shape: unknown fields (a tier cannot be set here), missing fields.
    for body in [
        with("tier", json!("enterprise")),
        json!({ "display_name": "Ada" }),
        json!({ "email": "ada@example.com" }),
    ] {
        let (status, problem) = api
            .call("PUT", &me(), Some(&token), Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {problem}"
        );
        assert!(problem["detail"].is_string(), "{problem}");
    }
    for query in [
        "limit=0",
        "limit=101",
        "email=nope",
        "preferences=dark",
        "preferences=%5B1%5D",
        "after=not-a-uuid",
        "colour=blue",
    ] {
        let (status, problem) = api.call("GET", &list(query), Some(&token), None).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query} → {problem}"
        );
        assert!(problem["detail"].is_string(), "{problem}");
    }
    let (status, problem) = api
        .call("GET", &list("preferences=dark"), Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["preferences"], "{problem}");
    let (status, _) = api
        .call(
            "GET",
            &format!("{}/not-a-uuid", users()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing invalid was stored or announced.
    assert!(api.outbox().await.is_empty());
    let (status, _) = api.call("GET", &me(), Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_token_whose_subject_is_not_a_user_id_is_refused() {
    let api = Api::new().await;
    let token = api.token_for("service-account", tenant(), "member");
    let (status, problem) = api
        .call(
            "PUT",
            &me(),
            Some(&token),
            Some(json!({ "display_name": "X", "email": "x@example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        problem["detail"].as_str().unwrap().contains("UUID"),
        "{problem}"
    );
}

#[tokio::test]
async fn lookup_by_email_ignores_case_and_spaces_and_pages() {
    let api = Api::new().await;
    let t = tenant();
    let manager = api.token(Uuid::new_v4(), t, "manager");
    // Three users share a (team) address, one has another.
    let mut shared = Vec::new();
    for i in 0..3 {
        let id = Uuid::new_v4();
        api.put_me(
            &api.token(id, t, "member"),
            json!({ "display_name": format!("Team {i}"), "email": "Team@Example.com" }),
        )
        .await;
        shared.push(id);
    }
    shared.sort();
    let other = Uuid::new_v4();
    api.put_me(
        &api.token(other, t, "member"),
        json!({ "display_name": "Other", "email": "other@example.com" }),
    )
    .await;

    let q = format!("email={}&limit=2", encode("  team@EXAMPLE.com "));
    let (status, page) = api.call("GET", &list(&q), Some(&manager), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [shared[0].to_string(), shared[1].to_string()]);
    // A manager sees contact data.
    assert_eq!(page["items"][0]["email"], "Team@Example.com");
    assert_eq!(page["next"], shared[1].to_string());
    let q2 = format!("{q}&after={}", shared[1]);
    let (_, page2) = api.call("GET", &list(&q2), Some(&manager), None).await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert_eq!(page2["items"][0]["user_id"], shared[2].to_string());
    assert_eq!(page2["next"], Value::Null);

    // A plain member finds the profiles too, but sees contact data only on their own.
    let (_, found) = api
        .call(
            "GET",
            &list("email=other%40example.com"),
            Some(&api.token(shared[0], t, "viewer")),
            None,
        )
        .await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    assert_eq!(found["items"][0]["user_id"], other.to_string());
    assert_eq!(found["items"][0]["email"], Value::Null);
    assert_eq!(found["items"][0]["display_name"], "Other");
    let (_, mine) = api
        .call(
            "GET",
            &list("email=other%40example.com"),
            Some(&api.token(other, t, "viewer")),
            None,
        )
        .await;
    assert_eq!(mine["items"][0]["email"], "other@example.com");

    // Nobody has this one.
    let (_, none) = api
        .call(
            "GET",
            &list("email=nobody%40example.com"),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(none, json!({ "items": [], "next": null }));

    // The whole workspace, paged.
    let (_, all) = api
        .call("GET", &list("limit=3"), Some(&manager), None)
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    let after = all["next"].as_str().unwrap();
    let (_, rest) = api
        .call(
            "GET",
            &list(&format!("limit=3&after={after}")),
            Some(&manager),
            None,
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn lookup_by_preferences_uses_containment() {
    let api = Api::new().await;
    let t = tenant();
    let viewer = api.token(Uuid::new_v4(), t, "viewer");
    let mut dark = Vec::new();
    for (i, prefs) in [
        json!({"theme": "dark", "notifications": {"email": true}}),
        json!({"theme": "dark", "notifications": {"email": false}}),
        json!({"theme": "light", "notifications": {"email": true}}),
        json!({}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = Uuid::new_v4();
        api.put_me(
            &api.token(id, t, "member"),
            json!({ "display_name": format!("U{i}"), "email": format!("u{i}@example.com"), "preferences": prefs }),
        )
        .await;
        if i < 2 {
            dark.push(id.to_string());
        }
    }
    dark.sort();
    let find = |filter: Value| {
        let api = &api;
        let viewer = viewer.clone();
        async move {
            let (status, page) = api
                .call(
                    "GET",
                    &list(&format!("preferences={}", encode(&filter.to_string()))),
                    Some(&viewer),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let mut ids: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["user_id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(find(json!({"theme": "dark"})).await, dark);
    assert_eq!(
        find(json!({"theme": "dark", "notifications": {"email": true}}))
            .await
            .len(),
        1
    );
    assert_eq!(
        find(json!({"notifications": {"email": true}})).await.len(),
        2
    );
    assert_eq!(find(json!({})).await.len(), 4);
    assert!(find(json!({"theme": "solarized"})).await.is_empty());
    // Both filters at once.
    let (_, both) = api
        .call(
            "GET",
            &list(&format!(
                "email=u2%40example.com&preferences={}",
                encode(r#"{"theme":"light"}"#)
            )),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(both["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn only_admins_set_tiers() {
    let api = Api::new().await;
    let t = tenant();
    let ada = Uuid::new_v4();
    api.put_me(
        &api.token(ada, t, "member"),
        json!({ "display_name": "Ada", "email": "ada@example.com" }),
    )
    .await;
    let tier = format!("{}/tier", user(ada));
    for role in ["viewer", "member", "manager"] {
        let (status, problem) = api
            .call(
                "PUT",
                &tier,
                Some(&api.token(Uuid::new_v4(), t, role)),
                Some(json!({"tier": "pro"})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("admin:users"),
            "{problem}"
        );
    }
    // Not even for oneself.
    let (status, _) = api
        .call(
            "PUT",
            &tier,
            Some(&api.token(ada, t, "member")),
            Some(json!({"tier": "enterprise"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // An admin who signed in without a second factor is refused by authentication itself.
    let (status, _) = api
        .call(
            "PUT",
            &tier,
            Some(&api.token_with_amr(&Uuid::new_v4().to_string(), t, "admin", &["pwd"])),
            Some(json!({"tier": "pro"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let admin = api.token(Uuid::new_v4(), t, "admin");
    let (status, profile) = api
        .call("PUT", &tier, Some(&admin), Some(json!({"tier": "pro"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile["tier"], "pro");
    assert_eq!(profile["email"], "ada@example.com");
    // Unchanged: 200, no second event.
    let (status, _) = api
        .call("PUT", &tier, Some(&admin), Some(json!({"tier": "pro"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = api
        .call(
            "PUT",
            &tier,
            Some(&admin),
            Some(json!({"tier": "platinum"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, _) = api
        .call(
            "PUT",
            &format!("{}/tier", user(Uuid::new_v4())),
            Some(&admin),
            Some(json!({"tier": "pro"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, read) = api
        .call("GET", &me(), Some(&api.token(ada, t, "viewer")), None)
        .await;
    assert_eq!(read["tier"], "pro");

    let events = api.outbox().await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["user.profile_updated", "user.tier_changed"]);
    assert_eq!(
        payload(&events[1].2),
        json!({ "user_id": ada, "tier": "pro", "previous_tier": "free" })
    );
}

#[tokio::test]
async fn users_delete_themselves_and_admins_delete_anyone() {
    let api = Api::new().await;
    let t = tenant();
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, name) in [(ada, "ada"), (bob, "bob")] {
        api.put_me(
            &api.token(id, t, "member"),
            json!({ "display_name": name, "email": format!("{name}@example.com") }),
        )
        .await;
    }
    // Another member, a manager: 403 naming who may. A viewer lacks write:users.
    for role in ["member", "manager"] {
        let (status, problem) = api
            .call("DELETE", &user(ada), Some(&api.token(bob, t, role)), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role}");
        assert!(
            problem["detail"].as_str().unwrap().contains("admin:users"),
            "{problem}"
        );
    }
    let (status, _) = api
        .call(
            "DELETE",
            &user(ada),
            Some(&api.token(ada, t, "viewer")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(
            "DELETE",
            &user(ada),
            Some(&api.token(Uuid::new_v4(), t, "admin")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call(
            "DELETE",
            &user(bob),
            Some(&api.token(bob, t, "member")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let kinds = api.outbox_kinds().await;
    assert_eq!(
        kinds,
        [
            "user.profile_updated",
            "user.profile_updated",
            "user.deleted",
            "user.deleted"
        ]
    );
}

#[tokio::test]
async fn another_workspace_never_sees_or_touches_a_profile() {
    let api = Api::new().await;
    let (a, b) = (tenant(), tenant());
    let ada = Uuid::new_v4();
    api.put_me(
        &api.token(ada, a, "member"),
        json!({ "display_name": "Ada", "email": "ada@example.com", "preferences": {"theme": "dark"} }),
    )
    .await;
    let admin_b = api.token(Uuid::new_v4(), b, "admin");
    // Every route answers as if the profile did not exist: 404, never 403.
    for (method, uri, body) in [
        ("GET", user(ada), None),
        ("DELETE", user(ada), None),
        (
            "PUT",
            format!("{}/tier", user(ada)),
            Some(json!({"tier": "pro"})),
        ),
    ] {
        let (status, _) = api.call(method, &uri, Some(&admin_b), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
    }
    // The same user in workspace B has no profile there.
    let ada_in_b = api.token(ada, b, "admin");
    let (status, _) = api.call("GET", &me(), Some(&ada_in_b), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for q in [
        "email=ada%40example.com".to_owned(),
        format!("preferences={}", encode(r#"{"theme":"dark"}"#)),
        String::new(),
    ] {
        let (status, page) = api.call("GET", &list(&q), Some(&admin_b), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["items"], json!([]), "{q}");
    }
    // A profile of their own in B is separate: same user id, other data.
    let in_b = api
        .put_me(
            &ada_in_b,
            json!({ "display_name": "Ada (B)", "email": "ada@example.com" }),
        )
        .await;
    assert_eq!(in_b["display_name"], "Ada (B)");
    let (_, in_a) = api
        .call("GET", &me(), Some(&api.token(ada, a, "viewer")), None)
        .await;
    assert_eq!(in_a["display_name"], "Ada");
    assert_eq!(in_a["tier"], "free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_puts_create_one_profile() {
    let api = std::sync::Arc::new(Api::new().await);
    let t = tenant();
    let ada = Uuid::new_v4();
    let token = api.token(ada, t, "member");
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (api, token) = (api.clone(), token.clone());
        puts.spawn(async move {
            api.call(
                "PUT",
                &me(),
                Some(&token),
                Some(json!({ "display_name": format!("Ada {i}"), "email": "ada@example.com" })),
            )
            .await
        });
    }
    while let Some(done) = puts.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, page) = api
        .call("GET", &list(""), Some(&api.token(ada, t, "viewer")), None)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    // One creation; every later PUT that changed the name replaced it.
    let created = api
        .outbox()
        .await
        .iter()
        .filter(|(_, _, e)| payload(e)["created"] == true)
        .count();
    assert_eq!(created, 1);
}
