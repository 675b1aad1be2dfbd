//! The auth layer, the `Principal` extractors, RBAC guards and the MFA step-up, through a real
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
//! axum router (`oneshot`, no socket).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arq_auth::{
    AuthLayer, CallerIdentity, Principal, Rbac, RbacConfig, RequirePermission,
    RequirePermissionLayer, SigningKeyRing, permission,
};
use arq_core::TenantId;
use axum::body::Body;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

permission!(WriteProject = "write:project");
permission!(AdminWorkspace = "admin:workspace");

fn app(calls: Arc<AtomicUsize>) -> (Router, SigningKeyRing) {
    let (ring, _, verifier) = setup();
    let c = calls;
    let router = Router::new()
        .route(
            "/me",
            get(move |who: Principal| {
                c.fetch_add(1, Ordering::SeqCst);
                async move { who.subject().to_owned() }
            }),
        )
        .route(
            "/maybe",
            get(|who: Option<Principal>| async move {
                who.map_or("anonymous".to_owned(), |p| p.subject().to_owned())
            }),
        )
        .route(
            "/identity",
            get(|Extension(id): Extension<CallerIdentity>| async move {
                format!("{}:{}", id.subject(), id.home_tenant().unwrap())
            }),
        )
        .route(
            "/projects",
            post(
                |RequirePermission(who, ..): RequirePermission<WriteProject>| async move {
                    who.subject().to_owned()
                },
            ),
        )
        .route(
            "/workspace",
            delete(|_: RequirePermission<AdminWorkspace>| async { "deleted" }),
        )
        .merge(
            Router::new()
                .route("/settings", post(|| async { "saved" }))
                .route_layer(RequirePermissionLayer::new("admin:workspace")),
        )
        .layer(AuthLayer::new(verifier));
    (router, ring)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (status, headers, body)
}

#[tokio::test]
async fn principal_extractor_answers_401_problem_without_credentials() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (app, _) = app(calls.clone());
    let (status, headers, body) = call(&app, "GET", "/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], 401);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The optional variant lets anonymous callers through.
    let (status, _, body) = call(&app, "GET", "/maybe", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler_with_principal_and_caller_identity() {
    let (app, ring) = app(Arc::new(AtomicUsize::new(0)));
    let tenant = TenantId::generate();
    let token = ring.sign(&claims("user-9").with_tenant(tenant)).unwrap();
    let (status, _, body) = call(&app, "GET", "/me", Some(&token)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "user-9"));
    let (_, _, body) = call(&app, "GET", "/maybe", Some(&token)).await;
    assert_eq!(body, "user-9");
    let (_, _, body) = call(&app, "GET", "/identity", Some(&token)).await;
    assert_eq!(body, format!("user-9:{tenant}"));
}

#[tokio::test]
async fn invalid_credentials_are_refused_before_the_handler_with_the_same_answer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (app, ring) = app(calls.clone());
    let mut expired = claims("u");
    expired.exp = now() - 3600;
    let expired = ring.sign(&expired).unwrap();
    let mut bodies = Vec::new();
    for token in ["garbage", expired.as_str(), ""] {
        let (status, _, body) = call(&app, "GET", "/maybe", Some(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
        bodies.push(body);
    }
    // No oracle: every refusal reads the same.
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rbac_guard_names_only_the_missing_permission() {
    let (app, ring) = app(Arc::new(AtomicUsize::new(0)));
    let viewer = ring.sign(&claims("v").with_roles(["viewer"])).unwrap();
    let (status, headers, body) = call(&app, "POST", "/projects", Some(&viewer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["content-type"], "application/problem+json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["permission"], "write:project");
    assert_eq!(v["detail"], "the permission write:project is required");
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["detail", "permission", "status", "title", "type"]);
    assert!(
        !body.contains("viewer"),
        "the caller's roles are not echoed"
    );

    let member = ring.sign(&claims("m").with_roles(["member"])).unwrap();
    let (status, _, body) = call(&app, "POST", "/projects", Some(&member)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "m"));
    // No credentials at all on a guarded route: 401, not 403.
    let (status, _, _) = call(&app, "POST", "/projects", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn admin_permissions_need_mfa_in_amr() {
    let (app, ring) = app(Arc::new(AtomicUsize::new(0)));
    let pwd_only = ring
        .sign(&claims("a").with_roles(["admin"]).with_amr(["pwd"]))
        .unwrap();
    for (method, uri) in [("DELETE", "/workspace"), ("POST", "/settings")] {
        let (status, headers, body) = call(&app, method, uri, Some(&pwd_only)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("insufficient_user_authentication")
        );
        assert!(body.contains("multi-factor"));
    }
    // The same admin still does non-admin work without MFA.
    let (status, _, _) = call(&app, "POST", "/projects", Some(&pwd_only)).await;
    assert_eq!(status, StatusCode::OK);

    let mfa = ring
        .sign(
            &claims("a")
                .with_roles(["admin"])
                .with_amr(["pwd", "otp", "mfa"]),
        )
        .unwrap();
    let (status, _, body) = call(&app, "DELETE", "/workspace", Some(&mfa)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "deleted"));
    let (status, _, _) = call(&app, "POST", "/settings", Some(&mfa)).await;
    assert_eq!(status, StatusCode::OK);
    // A manager with MFA still lacks admin:workspace: 403.
    let manager = ring
        .sign(&claims("m").with_roles(["manager"]).with_amr(["pwd", "otp"]))
        .unwrap();
    let (status, _, _) = call(&app, "DELETE", "/workspace", Some(&manager)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[test]
fn the_hierarchy_is_admin_over_manager_over_member_over_viewer() {
    let rbac = Rbac::standard();
    let perms = |r: &str| rbac.role_permissions(r).unwrap().clone();
    assert!(perms("viewer").is_subset(&perms("member")));
    assert!(perms("member").is_subset(&perms("manager")));
    assert!(perms("manager").is_subset(&perms("admin")));
    assert!(perms("viewer").contains("read:project") && !perms("viewer").contains("write:project"));
    assert!(
        perms("admin").contains("admin:workspace") && !perms("manager").contains("admin:workspace")
    );
    assert!(rbac.requires_mfa("admin:workspace") && !rbac.requires_mfa("write:project"));
}

#[test]
fn broken_role_configurations_are_refused() {
    let parse = |s: &str| Rbac::from_config(&serde_json::from_str::<RbacConfig>(s).unwrap());
    let err = parse(r#"{"roles":{"a":{"inherits":"ghost"}}}"#).unwrap_err();
    assert!(err.to_string().contains("ghost"));
    let err = parse(r#"{"roles":{"a":{"inherits":"b"},"b":{"inherits":"a"}}}"#).unwrap_err();
    assert!(err.to_string().contains("inherits from itself"));
}

#[test]
fn roles_are_assigned_per_tenant() {
    let rbac = Rbac::standard();
    let (home, other, stranger) = (
        TenantId::generate(),
        TenantId::generate(),
        TenantId::generate(),
    );
    let p = Principal::from_claims(
        claims("u")
            .with_tenant(home)
            .with_roles(["member"])
            .with_tenant_roles(other, ["viewer"]),
        &rbac,
    );
    assert!(rbac.check_in(&p, home, "write:project").is_ok());
    assert!(rbac.check_in(&p, other, "read:project").is_ok());
    assert!(rbac.check_in(&p, other, "write:project").is_err());
    assert!(rbac.check_in(&p, stranger, "read:project").is_err());
    assert_eq!(p.tenants().collect::<Vec<_>>().len(), 2);
}
