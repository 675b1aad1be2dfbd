//! PITFALLS 37 against the real PostgreSQL: keys stored hashed, looked up by prefix, compared in
//! constant time, scoped to a tenant and to permissions; expiry, revocation, last-used; and keys
//! through the auth layer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use arq_auth::{
    ApiKeyStore, AuthError, AuthLayer, CredentialKind, NewApiKey, Principal, RequirePermission,
    permission,
};
use arq_core::{Identity, TenantId};
use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use common::db::TestDb;
use http::{Request, StatusCode};
use tower::ServiceExt;

permission!(WriteProject = "write:project");

fn new_key(tenant: TenantId, perms: &[&str]) -> NewApiKey {
    NewApiKey {
        name: "ci".into(),
        tenant,
        permissions: perms.iter().map(|p| (*p).to_owned()).collect(),
        expires_in: None,
    }
}

#[tokio::test]
async fn keys_are_prefixed_stored_hashed_and_scoped() {
    let db = TestDb::new().await;
    let store = ApiKeyStore::new(db.pool.clone());
    let tenant = TenantId::generate();
    let created = store
        .create(new_key(tenant, &["read:project"]))
        .await
        .unwrap();
    assert!(created.key.starts_with(&format!("arq_{}_", created.prefix)));
    let secret = created
        .key
        .rsplit_once('_')
        .map(|(_, s)| s.to_owned())
        .unwrap();
    let dump: String =
        sqlx::query_scalar("select string_agg(k::text, ',') from arq_auth_api_keys k")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(dump.contains(&created.prefix));
    assert!(!dump.contains(&secret), "the secret is not stored");

    let who = store.verify(&created.key).await.unwrap();
    assert_eq!(who.kind(), CredentialKind::ApiKey);
    assert_eq!(who.subject(), created.id.to_string());
    assert_eq!(who.home_tenant(), Some(tenant));
    assert!(!who.is_member_of(TenantId::generate()));
    assert!(who.has_permission("read:project"));
    assert!(!who.has_permission("write:project"));
    assert!(who.roles().is_empty());
}

#[tokio::test]
async fn a_wrong_secret_under_a_real_prefix_is_refused() {
    let db = TestDb::new().await;
    let store = ApiKeyStore::new(db.pool.clone());
    let created = store
        .create(new_key(TenantId::generate(), &[]))
        .await
        .unwrap();
    // Warm the cache, then try near-misses: the comparison is on the full hash.
    store.verify(&created.key).await.unwrap();
    let mut flipped = created.key.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let truncated = &created.key[..created.key.len() - 1];
    let bare = format!("arq_{}_", created.prefix);
    for bad in [
        flipped.as_str(),
        truncated,
        bare.as_str(),
        "arq_000000000000_x",
        "nope",
    ] {
        assert!(
            matches!(store.verify(bad).await, Err(AuthError::InvalidApiKey)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn expired_and_revoked_keys_are_refused_and_revocation_clears_the_cache() {
    let db = TestDb::new().await;
    // A long cache TTL: only invalidation can make the revocation visible.
    let store = ApiKeyStore::with_cache_ttl(db.pool.clone(), Duration::from_secs(3600));
    let tenant = TenantId::generate();
    let k = store.create(new_key(tenant, &[])).await.unwrap();
    store.verify(&k.key).await.unwrap();
    assert!(store.revoke(k.id).await.unwrap());
    assert!(!store.revoke(k.id).await.unwrap(), "already revoked");
    assert!(matches!(
        store.verify(&k.key).await,
        Err(AuthError::InvalidApiKey)
    ));

    let mut short = new_key(tenant, &[]);
    short.expires_in = Some(Duration::from_secs(3600));
    let e = store.create(short).await.unwrap();
    store.verify(&e.key).await.unwrap();
    sqlx::query(
        "update arq_auth_api_keys set expires_at = now() - interval '1 second' where id = $1",
    )
    .bind(e.id)
    .execute(&db.pool)
    .await
    .unwrap();
    // A fresh store (another replica) reads the expiry from the database.
    let other = ApiKeyStore::new(db.pool.clone());
    assert!(matches!(
        other.verify(&e.key).await,
        Err(AuthError::InvalidApiKey)
    ));
}

#[tokio::test]
async fn last_used_is_recorded() {
    let db = TestDb::new().await;
    let store = ApiKeyStore::new(db.pool.clone());
    let k = store
        .create(new_key(TenantId::generate(), &[]))
        .await
        .unwrap();
    assert_eq!(store.last_used(k.id).await.unwrap(), None);
    store.verify(&k.key).await.unwrap();
    let used = store.last_used(k.id).await.unwrap().unwrap();
    assert!(used.abs_diff(common::now()) < 60);
}

#[tokio::test]
async fn keys_work_through_the_auth_layer_with_their_permissions() {
    let db = TestDb::new().await;
    let store = ApiKeyStore::new(db.pool.clone());
    let writer = store
        .create(new_key(TenantId::generate(), &["write:project"]))
        .await
        .unwrap();
    let reader = store
        .create(new_key(TenantId::generate(), &["read:project"]))
        .await
        .unwrap();
    let (_, _, verifier) = common::setup();
    let app = Router::new()
        .route(
            "/me",
            get(|p: Principal| async move { p.subject().to_owned() }),
        )
        .route(
            "/projects",
            post(|_: RequirePermission<WriteProject>| async { "created" }),
        )
        .layer(AuthLayer::new(verifier).with_api_keys(Arc::new(store)));
    let send = |method: &str, uri: &str, header: (&str, String)| {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header.0, header.1)
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(req)
    };
    let r = send("GET", "/me", ("x-api-key", writer.key.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = send(
        "POST",
        "/projects",
        ("authorization", format!("Bearer {}", writer.key)),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = send("POST", "/projects", ("x-api-key", reader.key.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = send("GET", "/me", ("x-api-key", "arq_000000000000_nope".into()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
