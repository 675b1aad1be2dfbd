//! PITFALLS 36 against the real PostgreSQL: single use, rotation, family revocation on reuse,
//! 30-day expiry, logout and logout-everywhere. Each test has its own database.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use arq_auth::{REFRESH_TOKEN_TTL, RefreshError, RefreshTokenStore};
use arq_core::TenantId;
use common::db::TestDb;

fn amr() -> Vec<String> {
    vec!["pwd".into(), "otp".into()]
}

#[tokio::test]
async fn tokens_are_opaque_256_bit_and_stored_only_hashed() {
    let db = TestDb::new().await;
    let store = RefreshTokenStore::new(db.pool.clone());
    let issued = store.issue("user-1", None, &amr()).await.unwrap();
    assert!(issued.token.starts_with("rt_"));
    assert_eq!(issued.token.len(), 3 + 43, "32 random bytes, base64url");
    assert_eq!(issued.expires_in, REFRESH_TOKEN_TTL);
    let (hash, days): (Vec<u8>, f64) = sqlx::query_as(
        "select token_hash, (extract(epoch from expires_at - created_at) / 86400)::float8 from arq_auth_refresh_tokens",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(hash.len(), 32);
    assert!((days - 30.0).abs() < 0.01, "{days}");
    let text: String =
        sqlx::query_scalar("select string_agg(t::text, ',') from arq_auth_refresh_tokens t")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        !text.contains(&issued.token[3..]),
        "the token is not stored"
    );
}

#[tokio::test]
async fn each_use_rotates_and_reuse_revokes_the_whole_family() {
    let db = TestDb::new().await;
    let store = RefreshTokenStore::new(db.pool.clone());
    let tenant = TenantId::generate();
    let t1 = store.issue("user-1", Some(tenant), &amr()).await.unwrap();
    let other_session = store.issue("user-1", Some(tenant), &amr()).await.unwrap();

    let g2 = store.rotate(&t1.token).await.unwrap();
    assert_eq!(g2.subject, "user-1");
    assert_eq!(g2.tenant, Some(tenant));
    assert_eq!(g2.amr, amr());
    assert_eq!(g2.next.family_id, t1.family_id);
    assert_ne!(g2.next.token, t1.token);
    let g3 = store.rotate(&g2.next.token).await.unwrap();

    // An attacker replays the first token: refused, and the family is gone…
    assert!(matches!(
        store.rotate(&t1.token).await,
        Err(RefreshError::Reused)
    ));
    // …including the newest token the legitimate client holds.
    assert!(matches!(
        store.rotate(&g3.next.token).await,
        Err(RefreshError::Revoked)
    ));
    // Another sign-in's family is untouched.
    assert!(store.rotate(&other_session.token).await.is_ok());
}

#[tokio::test]
async fn concurrent_use_of_one_token_succeeds_at_most_once() {
    let db = TestDb::new().await;
    let store = RefreshTokenStore::new(db.pool.clone());
    let t = store.issue("user-1", None, &amr()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = store.clone();
        let token = t.token.clone();
        tasks.push(tokio::spawn(async move { s.rotate(&token).await }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(RefreshError::Reused | RefreshError::Revoked) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1, "exactly one rotation wins");
    // The losers were reuses: the family is revoked.
    let live: i64 =
        sqlx::query_scalar("select count(*) from arq_auth_refresh_tokens where revoked_at is null")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(live, 0);
}

#[tokio::test]
async fn expired_unknown_and_malformed_tokens_are_refused() {
    let db = TestDb::new().await;
    let store = RefreshTokenStore::new(db.pool.clone()).with_ttl(Duration::from_secs(3600));
    let t = store.issue("user-1", None, &amr()).await.unwrap();
    sqlx::query("update arq_auth_refresh_tokens set expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(matches!(
        store.rotate(&t.token).await,
        Err(RefreshError::Expired)
    ));
    assert!(matches!(
        store
            .rotate("rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
            .await,
        Err(RefreshError::Invalid)
    ));
    for bad in [
        "",
        "rt_",
        "garbage",
        "'; drop table arq_auth_refresh_tokens; --",
        &"rt_x".repeat(1000),
    ] {
        assert!(
            matches!(store.rotate(bad).await, Err(RefreshError::Invalid)),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn logout_revokes_a_session_and_logout_everywhere_revokes_all() {
    let db = TestDb::new().await;
    let store = RefreshTokenStore::new(db.pool.clone());
    let a = store.issue("user-1", None, &amr()).await.unwrap();
    let a2 = store.rotate(&a.token).await.unwrap().next;
    let b = store.issue("user-1", None, &amr()).await.unwrap();
    let c = store.issue("user-1", None, &amr()).await.unwrap();
    let someone_else = store.issue("user-2", None, &amr()).await.unwrap();

    assert!(store.logout(&a2.token).await.unwrap());
    assert!(!store.logout("rt_unknown").await.unwrap());
    assert!(matches!(
        store.rotate(&a2.token).await,
        Err(RefreshError::Revoked)
    ));
    assert!(store.rotate(&b.token).await.is_ok());

    assert!(store.logout_everywhere("user-1").await.unwrap() >= 2);
    assert!(store.rotate(&c.token).await.is_err());
    assert!(store.rotate(&someone_else.token).await.is_ok());
}
