//! The workspace API against the real PostgreSQL, in-process: CRUD, tenant isolation, RBAC,
//! the last-admin rule, invitations (codes that work once, expire and are replaced), the
//! concurrent accept, and events written in the request's transaction. See `common/mod.rs` for
//! the database each test gets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use axum::http::StatusCode;
use common::{Api, ROUTE, Role, accept, invitations, member, members, user, workspace};
use serde_json::{Value, json};
use uuid::Uuid;

/// The code and workspace id of the latest invitation e-mail to `to` in the outbox.
async fn mailed_code(api: &Api, to: &str) -> (String, String) {
    let mail = api
        .outbox()
        .await
        .into_iter()
        .rev()
        .find(|(_, k, p)| k == "email.send" && p["to"] == to)
        .map(|(_, _, p)| p)
        .expect("no email.send to that address in the outbox");
    let body = mail["body"].as_str().unwrap();
    let line = |prefix: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {body}"))
            .to_owned()
    };
    (line("Invitation code: "), line("Workspace: "))
}

/// Invites `email` as `role` into `ws` (as `admin`), and returns the mailed code.
async fn invite(api: &Api, ws: &Value, admin: Uuid, email: &str, role: &str) -> String {
    let (status, body) = api
        .call(
            "POST",
            &invitations(ws),
            Some(&api.token(admin, ws, "admin")),
            Some(json!({ "email": email, "role": role })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    mailed_code(api, email).await.0
}

#[tokio::test]
async fn a_workspace_is_created_read_renamed_and_deleted_with_its_events() {
    let api = Api::new().await;
    let alice = user();
    let ws = api.create(alice, "  Acme  ").await;
    let id = ws["id"].clone();
    assert_eq!(ws["name"], "Acme");
    assert_eq!(ws["created_by"], alice.to_string());
    assert!(ws["created_at"].is_string() && ws["updated_at"].is_string());

    // The creator is its only member, as admin.
    let admin = api.token(alice, &id, "admin");
    let (status, list) = api.call("GET", &members(&id), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["user_id"], alice.to_string());
    assert_eq!(list["items"][0]["role"], "admin");
    assert!(list["items"][0]["joined_at"].is_string());

    let (status, read) = api.call("GET", &workspace(&id), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, ws);

    let (status, renamed) = api
        .call(
            "PATCH",
            &workspace(&id),
            Some(&admin),
            Some(json!({ "name": "Acme Inc" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["name"], "Acme Inc");
    // The same name again changes nothing and emits nothing.
    let (status, _) = api
        .call(
            "PATCH",
            &workspace(&id),
            Some(&admin),
            Some(json!({ "name": "Acme Inc" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = api
        .call("DELETE", &workspace(&id), Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = api.call("GET", &workspace(&id), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call("GET", &members(&id), Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let rows = api.outbox().await;
    let kinds: Vec<&str> = rows.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "workspace.created",
            "membership.added",
            "workspace.updated",
            "workspace.deleted"
        ]
    );
    let uuid: Uuid = id.as_str().unwrap().parse().unwrap();
    assert!(
        rows.iter().all(|(t, ..)| *t == uuid),
        "the tenant is the workspace"
    );
    assert_eq!(
        rows[0].2,
        json!({ "workspace_id": id, "name": "Acme", "created_by": alice })
    );
    assert_eq!(
        rows[1].2,
        json!({ "workspace_id": id, "user_id": alice, "role": "admin" })
    );
    assert_eq!(rows[2].2["name"], "Acme Inc");
    assert_eq!(rows[3].2, json!({ "workspace_id": id }));
}

#[tokio::test]
async fn creating_checks_the_caller_and_the_body() {
    let api = Api::new().await;
    let uri = format!("{ROUTE}/workspaces");
    let (status, _) = api
        .call("POST", &uri, None, Some(json!({"name": "x"})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let token = api.tenantless(user());
    for (body, field) in [
        (json!({ "name": "   " }), "name"),
        (json!({ "name": "a".repeat(101) }), "name"),
        (json!({ "name": "two\nlines" }), "name"),
    ] {
        let (status, problem) = api.call("POST", &uri, Some(&token), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let (status, problem) = api
        .call(
            "POST",
            &uri,
            Some(&token),
            Some(json!({ "name": "x", "owner": "me" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["detail"].as_str().unwrap().contains("owner"),
        "{problem}"
    );
    // A service account is no user: it cannot become a member.
    let (status, problem) = api
        .call(
            "POST",
            &uri,
            Some(&api.for_subject("reporter")),
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not a user id")
    );
    // A user already working in another workspace can create one too (the token's tenant is
    // not used).
    let a = api.create(user(), "A").await;
    let bob = user();
    let (status, _) = api
        .call(
            "POST",
            &uri,
            Some(&api.token(bob, &a["id"], "viewer")),
            Some(json!({ "name": "B" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Nothing of the refused requests reached the outbox.
    assert_eq!(api.outbox().await.len(), 4);
}

#[tokio::test]
async fn another_tenant_gets_404_for_everything_of_a_workspace() {
    let api = Api::new().await;
    let alice = user();
    let bob = user();
    let a = api.create(alice, "A").await;
    let b = api.create(bob, "B").await;
    let a_id = &a["id"];
    let bob_admin = api.token(bob, &b["id"], "admin");
    let before = api.outbox().await.len();

    for (method, uri, body) in [
        ("GET", workspace(a_id), None),
        ("PATCH", workspace(a_id), Some(json!({ "name": "mine" }))),
        ("DELETE", workspace(a_id), None),
        ("GET", members(a_id), None),
        (
            "PUT",
            member(a_id, alice),
            Some(json!({ "role": "viewer" })),
        ),
        ("DELETE", member(a_id, alice), None),
        (
            "POST",
            invitations(a_id),
            Some(json!({ "email": "eve@example.com", "role": "admin" })),
        ),
    ] {
        let (status, problem) = api.call(method, &uri, Some(&bob_admin), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {problem}");
    }
    // A's workspace and membership are untouched, and nothing was emitted.
    let alice_admin = api.token(alice, a_id, "admin");
    let (status, read) = api
        .call("GET", &workspace(a_id), Some(&alice_admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["name"], "A");
    let (_, list) = api
        .call("GET", &members(a_id), Some(&alice_admin), None)
        .await;
    assert_eq!(list["items"][0]["role"], "admin");
    assert_eq!(api.outbox().await.len(), before);

    // B's code does not open A: the invitation is looked up in the named workspace only.
    let code = invite(&api, &b["id"], bob, "carol@example.com", "member").await;
    let carol = api.tenantless(user());
    let (status, _) = api
        .call(
            "POST",
            &accept(),
            Some(&carol),
            Some(json!({ "workspace_id": a_id, "code": code })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn permissions_follow_the_roles() {
    let api = Api::new().await;
    let alice = user();
    let ws = api.create(alice, "Acme").await;
    let id = &ws["id"];
    let code = invite(&api, id, alice, "bob@example.com", "member").await;
    let bob = user();
    let (status, _) = api
        .call(
            "POST",
            &accept(),
            Some(&api.tenantless(bob)),
            Some(json!({ "workspace_id": id, "code": code })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    for role in ["viewer", "member", "manager"] {
        let token = api.token(bob, id, role);
        let (status, _) = api.call("GET", &workspace(id), Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{role} reads");
        let (status, _) = api.call("GET", &members(id), Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{role} lists members");
        for (method, uri, body) in [
            ("PATCH", workspace(id), Some(json!({ "name": "x" }))),
            ("DELETE", workspace(id), None),
            ("PUT", member(id, alice), Some(json!({ "role": "viewer" }))),
            ("DELETE", member(id, alice), None),
            (
                "POST",
                invitations(id),
                Some(json!({ "email": "e@example.com", "role": "viewer" })),
            ),
        ] {
            let (status, problem) = api.call(method, &uri, Some(&token), body).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{role}: {method} {uri}: {problem}"
            );
        }
    }
    // A token without a tenant reaches no workspace route but the two tenantless ones.
    let (status, _) = api
        .call("GET", &workspace(id), Some(&api.tenantless(alice)), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_last_admin_cannot_leave_or_be_demoted() {
    let api = Api::new().await;
    let alice = user();
    let ws = api.create(alice, "Acme").await;
    let id = &ws["id"];
    let admin = api.token(alice, id, "admin");
    let before = api.outbox().await.len();

    let (status, problem) = api
        .call(
            "PUT",
            &member(id, alice),
            Some(&admin),
            Some(json!({ "role": "member" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("last admin"),
        "{problem}"
    );
    let (status, problem) = api
        .call("DELETE", &member(id, alice), Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    // Refused requests leave no event.
    assert_eq!(api.outbox().await.len(), before);

    // Unknown roles are 400, listing the roles; unknown members 404.
    let (status, problem) = api
        .call(
            "PUT",
            &member(id, alice),
            Some(&admin),
            Some(json!({ "role": "owner" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        problem["roles"],
        json!(["admin", "manager", "member", "viewer"])
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("admin, manager, member, viewer")
    );
    let (status, problem) = api
        .call(
            "PUT",
            &member(id, user()),
            Some(&admin),
            Some(json!({ "role": "member" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(problem["detail"].as_str().unwrap().contains("invite them"));
    let (status, _) = api
        .call(
            "PUT",
            &format!("{}/members/not-a-uuid", workspace(id)),
            Some(&admin),
            Some(json!({ "role": "member" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // With a second admin, the first may step down; then the second is the last.
    let code = invite(&api, id, alice, "bob@example.com", "admin").await;
    let bob = user();
    let (status, _) = api
        .call(
            "POST",
            &accept(),
            Some(&api.tenantless(bob)),
            Some(json!({ "workspace_id": id, "code": code })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, changed) = api
        .call(
            "PUT",
            &member(id, alice),
            Some(&admin),
            Some(json!({ "role": "member" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["role"], "member");
    let bob_admin = api.token(bob, id, "admin");
    let (status, _) = api
        .call("DELETE", &member(id, bob), Some(&bob_admin), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = api
        .call("DELETE", &member(id, alice), Some(&bob_admin), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let events: Vec<(String, Value)> = api
        .outbox()
        .await
        .into_iter()
        .skip(before)
        .filter(|(_, k, _)| k.starts_with("membership."))
        .map(|(_, k, p)| (k, p))
        .collect();
    assert_eq!(
        events,
        [
            (
                "membership.added".to_owned(),
                json!({ "workspace_id": id, "user_id": bob, "role": "admin" })
            ),
            (
                "membership.changed".to_owned(),
                json!({ "workspace_id": id, "user_id": alice, "role": "member", "previous_role": "admin" })
            ),
            (
                "membership.removed".to_owned(),
                json!({ "workspace_id": id, "user_id": alice })
            ),
        ]
    );
}

#[tokio::test]
async fn two_admins_demoting_each_other_at_once_leave_one_admin() {
    let api = Api::new().await;
    let alice = user();
    let ws = api.create(alice, "Acme").await;
    let id = &ws["id"];
    let code = invite(&api, id, alice, "bob@example.com", "admin").await;
    let bob = user();
    let (status, _) = api
        .call(
            "POST",
            &accept(),
            Some(&api.tenantless(bob)),
            Some(json!({ "workspace_id": id, "code": code })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for _ in 0..5 {
        let (to_bob, to_alice) = (member(id, bob), member(id, alice));
        let (alice_admin, bob_admin) = (api.token(alice, id, "admin"), api.token(bob, id, "admin"));
        let (a, b) = tokio::join!(
            api.call(
                "PUT",
                &to_bob,
                Some(&alice_admin),
                Some(json!({ "role": "member" }))
            ),
            api.call(
                "PUT",
                &to_alice,
                Some(&bob_admin),
                Some(json!({ "role": "member" }))
            ),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "{a:?} {b:?}"
        );
        let (_, list) = api
            .call(
                "GET",
                &members(id),
                Some(&api.token(alice, id, "viewer")),
                None,
            )
            .await;
        let admins: Vec<&Value> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "admin")
            .collect();
        assert_eq!(admins.len(), 1, "{list}");
        // Promote the demoted one back for the next round.
        let (admin, other) = if admins[0]["user_id"] == alice.to_string() {
            (alice, bob)
        } else {
            (bob, alice)
        };
        let (status, _) = api
            .call(
                "PUT",
                &member(id, other),
                Some(&api.token(admin, id, "admin")),
                Some(json!({ "role": "admin" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn an_invitation_is_mailed_and_accepted_once() {
    let api = Api::new().await;
    let alice = user();
    let ws = api.create(alice, "Acme").await;
    let id = &ws["id"];
    let (status, invitation) = api
        .call(
            "POST",
            &invitations(id),
            Some(&api.token(alice, id, "admin")),
            Some(json!({ "email": " Bob@Example.com ", "role": "manager" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{invitation}");
    assert_eq!(invitation["email"], "Bob@Example.com");
    assert_eq!(invitation["role"], "manager");
    assert!(invitation.get("code").is_none());
    let expires: chrono::DateTime<chrono::Utc> =
        invitation["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours();
    assert!((167..=168).contains(&days), "{expires}");

    // The outbox has invitation.created (no address) and the e-mail with the code.
    let rows = api.outbox().await;
    let created = rows
        .iter()
        .find(|(_, k, _)| k == "invitation.created")
        .unwrap();
    assert_eq!(
        created.2,
        json!({ "workspace_id": id, "invitation_id": invitation["id"], "role": "manager" })
    );
    let mail = &rows.iter().find(|(_, k, _)| k == "email.send").unwrap().2;
    assert_eq!(mail["to"], "Bob@Example.com");
    assert_eq!(mail["subject"], "You are invited to join Acme");
    assert_eq!(mail["invitation_id"], invitation["id"]);
    let (code, workspace_line) = mailed_code(&api, "Bob@Example.com").await;
    assert_eq!(workspace_line, id.as_str().unwrap());
    assert_eq!(code.len(), 64);
    // Only the code's hash is stored.
    let db = api.db.pool(Role::Admin, 1).await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT code_sha256 FROM invitations")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_ne!(stored, code.as_bytes());
    assert_eq!(stored.len(), 32);

    // Bob signed up without a workspace: his token has no tenant.
    let bob = user();
    let bob_token = api.tenantless(bob);
    let body = json!({ "workspace_id": id, "code": code });
    let (status, joined) = api
        .call("POST", &accept(), Some(&bob_token), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{joined}");
    assert_eq!(
        joined,
        json!({ "workspace_id": id, "user_id": bob, "role": "manager" })
    );
    let (_, list) = api
        .call(
            "GET",
            &members(id),
            Some(&api.token(bob, id, "manager")),
            None,
        )
        .await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["user_id"] == bob.to_string() && m["role"] == "manager")
    );
    let last = api.outbox().await.pop().unwrap();
    assert_eq!(last.1, "membership.added");
    assert_eq!(
        last.2,
        json!({ "workspace_id": id, "user_id": bob, "role": "manager" })
    );

    // Used: the same answer as an unknown code, for anyone.
    let (status, used) = api
        .call("POST", &accept(), Some(&api.tenantless(user())), Some(body))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, unknown) = api
        .call(
            "POST",
            &accept(),
            Some(&api.tenantless(user())),
            Some(json!({ "workspace_id": id, "code": "0".repeat(64) })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(used["detail"], unknown["detail"]);
    let (status, _) = api
        .call(
            "POST",
            &accept(),
            Some(&api.tenantless(user())),
            Some(json!({ "workspace_id": Uuid::nil(), "code": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(
            "POST",
            &accept(),
            Some(&api.tenantless(user())),
            Some(json!({ "workspace_id": "acme", "code": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .call(
            "POST",
            &accept(),
            None,
            Some(json!({ "workspace_id": id, "code": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn expired_replaced_and_redundant_invitations_are_refused() {
    let api = Api::new().await;
    let alice = user();
    let ws = api.create(alice, "Acme").await;
    let id = &ws["id"];
    let db = api.db.pool(Role::Admin, 1).await;

    // Expired: moved into the past behind the API's back.
    let code = invite(&api, id, alice, "old@example.com", "member").await;
    sqlx::query("UPDATE invitations SET expires_at = now() - interval '1 second' WHERE email = 'old@example.com'")
        .execute(&db)
        .await
        .unwrap();
    let (status, expired) = api
        .call(
            "POST",
            &accept(),
            Some(&api.tenantless(user())),
            Some(json!({ "workspace_id": id, "code": code })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(expired["detail"].as_str().unwrap().contains("expired"));

    // Inviting the address again (in any case) replaces the code: the old one stops working.
    let first = invite(&api, id, alice, "bob@example.com", "viewer").await;
    let second = invite(&api, id, alice, "BOB@example.com", "member").await;
    assert_ne!(first, second);
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invitations WHERE lower(email) = 'bob@example.com'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(pending, 1);
    let bob = api.tenantless(user());
    let (status, _) = api
        .call(
            "POST",
            &accept(),
            Some(&bob),
            Some(json!({ "workspace_id": id, "code": first })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Already a member: 409, the code is not used up and no event is written.
    let before = api.outbox().await.len();
    let (status, problem) = api
        .call(
            "POST",
            &accept(),
            Some(&api.tenantless(alice)),
            Some(json!({ "workspace_id": id, "code": second })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already a member")
    );
    assert_eq!(api.outbox().await.len(), before);
    let (status, joined) = api
        .call(
            "POST",
            &accept(),
            Some(&bob),
            Some(json!({ "workspace_id": id, "code": second })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{joined}");
    assert_eq!(joined["role"], "member");

    // Bad invitations say what is wrong.
    let admin = api.token(alice, id, "admin");
    let (status, problem) = api
        .call(
            "POST",
            &invitations(id),
            Some(&admin),
            Some(json!({ "email": "nope", "role": "member" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "email");
    let (status, problem) = api
        .call(
            "POST",
            &invitations(id),
            Some(&admin),
            Some(json!({ "email": "c@example.com", "role": "root" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("admin, manager, member, viewer")
    );
}

#[tokio::test]
async fn of_two_concurrent_accepts_of_one_code_exactly_one_wins() {
    let api = Api::new().await;
    let alice = user();
    let ws = api.create(alice, "Acme").await;
    let id = &ws["id"];
    for round in 0..5 {
        let code = invite(
            &api,
            id,
            alice,
            &format!("guest{round}@example.com"),
            "member",
        )
        .await;
        let (x, y) = (user(), user());
        let body = json!({ "workspace_id": id, "code": code });
        let (uri, tx, ty) = (accept(), api.tenantless(x), api.tenantless(y));
        let (a, b) = tokio::join!(
            api.call("POST", &uri, Some(&tx), Some(body.clone())),
            api.call("POST", &uri, Some(&ty), Some(body.clone())),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::NOT_FOUND],
            "{a:?} {b:?}"
        );
    }
    // Alice and one winner per round; one membership.added per winner.
    let (_, list) = api
        .call(
            "GET",
            &members(id),
            Some(&api.token(alice, id, "viewer")),
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 6);
    let added = api
        .events_of(id)
        .await
        .iter()
        .filter(|k| *k == "membership.added")
        .count();
    assert_eq!(added, 6);
}

#[tokio::test]
async fn members_are_listed_a_page_at_a_time() {
    let api = Api::new().await;
    let alice = user();
    let ws = api.create(alice, "Acme").await;
    let id = &ws["id"];
    for i in 0..4 {
        let code = invite(&api, id, alice, &format!("m{i}@example.com"), "viewer").await;
        let (status, _) = api
            .call(
                "POST",
                &accept(),
                Some(&api.tenantless(user())),
                Some(json!({ "workspace_id": id, "code": code })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let token = api.token(alice, id, "viewer");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let uri = match &after {
            Some(a) => format!("{}?limit=2&after={a}", members(id)),
            None => format!("{}?limit=2", members(id)),
        };
        let (status, page) = api.call("GET", &uri, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for m in page["items"].as_array().unwrap() {
            seen.push(m["user_id"].as_str().unwrap().to_owned());
        }
        match page.get("next").and_then(Value::as_str) {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    let (status, problem) = api
        .call(
            "GET",
            &format!("{}?limit=0", members(id)),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "limit");
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let api = Api::new().await;
    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/workspaces/workspaces",
        "/workspaces/workspaces/{id}",
        "/workspaces/workspaces/{id}/members",
        "/workspaces/workspaces/{id}/members/{user_id}",
        "/workspaces/workspaces/{id}/invitations",
        "/workspaces/invitations/accept",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
    assert_eq!(paths.len(), 6);
}
