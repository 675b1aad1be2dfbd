//! PITFALLS 34 (rotation) and the key ring's refresh rules: OIDC discovery over real HTTP, old and
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
//! new tokens in flight across a rotation, bounded refresh on unknown kids, background refresh.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arq_auth::{AuthError, KeyRing, OidcDiscovery, SigningKeyRing, Verifier, VerifierConfig};
use axum::Router;
use axum::routing::get;
use common::*;

/// Serves discovery and the ring's JWKS on a loopback port; counts JWKS requests.
async fn serve_issuer(ring: &SigningKeyRing) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let discovery = serde_json::json!({
        "issuer": base,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
    });
    let app: Router = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .merge(ring.jwks_router())
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let counter = counter.clone();
                async move {
                    if req.uri().path().ends_with("jwks.json") {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    next.run(req).await
                }
            },
        ));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hits)
}

fn verifier_for(base: &str, min_refresh: Duration) -> Verifier {
    let keys = Arc::new(KeyRing::new(OidcDiscovery::new(base).unwrap(), min_refresh));
    Verifier::new(VerifierConfig::new(base, AUD), keys).unwrap()
}

#[tokio::test]
async fn rotation_with_old_and_new_tokens_in_flight() {
    let ring = SigningKeyRing::new(key("2026-a", KEY1));
    let (base, hits) = serve_issuer(&ring).await;
    let verifier = verifier_for(&base, Duration::ZERO);
    let claims_for = |sub: &str| arq_auth::AccessClaims::new(&base, sub, AUD, now(), 3600);

    let old = ring.sign(&claims_for("old")).unwrap();
    assert_eq!(verifier.verify(&old).await.unwrap().subject(), "old");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Rotate: key2 signs from now on, key1 is retiring but still published.
    ring.rotate(key("2026-b", KEY2)).unwrap();
    let new = ring.sign(&claims_for("new")).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().kid.unwrap(),
        "2026-b"
    );

    // Both kinds of token in flight verify, concurrently; the unknown kid costs one fetch.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let v = verifier.clone();
        let t = if i % 2 == 0 { old.clone() } else { new.clone() };
        tasks.push(tokio::spawn(async move { v.verify_uncached(&t).await }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Retire key1: after the verifiers refresh, old tokens stop verifying, also from the cache.
    assert!(ring.retire("2026-a"));
    verifier.keys().refresh().await.unwrap();
    assert!(matches!(
        verifier.verify(&old).await,
        Err(AuthError::UnknownKey)
    ));
    assert_eq!(verifier.verify(&new).await.unwrap().subject(), "new");
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let ring = SigningKeyRing::new(key("k1", KEY1));
    let (base, _) = serve_issuer(&ring).await;
    // Same server, but the verifier expects a different issuer string.
    let other = format!("{base}/");
    let keys = KeyRing::new(OidcDiscovery::new(other).unwrap(), Duration::ZERO);
    let err = keys.refresh().await.unwrap_err();
    assert!(
        err.to_string().contains("discovery document names issuer"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_issuer_is_a_server_error_not_a_401() {
    let keys = Arc::new(KeyRing::new(
        OidcDiscovery::new("http://127.0.0.1:1").unwrap(),
        Duration::ZERO,
    ));
    let verifier = Verifier::new(VerifierConfig::new("http://127.0.0.1:1", AUD), keys).unwrap();
    let ring = SigningKeyRing::new(key("k1", KEY1));
    let token = ring
        .sign(&arq_auth::AccessClaims::new(
            "http://127.0.0.1:1",
            "u",
            AUD,
            now(),
            60,
        ))
        .unwrap();
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(err.is_server_error(), "{err:?}");
}

#[tokio::test]
async fn unknown_kids_refresh_at_a_bounded_rate_without_stampede() {
    let ring = SigningKeyRing::new(key("k1", KEY1));
    let (base, hits) = serve_issuer(&ring).await;
    let verifier = verifier_for(&base, Duration::from_secs(3600));
    let forged = |kid: &str| {
        let (h, p, s) = segments(
            &ring
                .sign(&arq_auth::AccessClaims::new(&base, "u", AUD, now(), 60))
                .unwrap(),
        );
        let _ = h;
        format!(
            "{}.{p}.{s}",
            b64(format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#))
        )
    };
    // 200 concurrent requests with 200 different unknown kids: one fetch in total.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let v = verifier.clone();
        let t = forged(&format!("unknown-{i}"));
        tasks.push(tokio::spawn(async move { v.verify(&t).await }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(AuthError::UnknownKey)));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Still inside the interval: a new kid appearing on the issuer is not fetched yet…
    ring.publish(key("k2", KEY2)).unwrap();
    assert!(verifier.verify(&forged("k2")).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_refresh_interval_reopens_after_it_elapses() {
    let ring = SigningKeyRing::new(key("k1", KEY1));
    let source = Counting::new(ring.clone());
    let keys = Arc::new(KeyRing::new(source.clone(), Duration::from_secs(30)));
    assert!(keys.resolve("k1").await.is_ok());
    assert_eq!(source.count(), 1);
    ring.publish(key("k2", KEY2)).unwrap();
    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert!(keys.resolve("k2").await.is_err());
    assert_eq!(source.count(), 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(keys.resolve("k2").await.is_ok());
    assert_eq!(source.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn background_refresh_picks_up_new_keys_and_stops_with_the_ring() {
    let ring = SigningKeyRing::new(key("k1", KEY1));
    let source = Counting::new(ring.clone());
    let keys = Arc::new(KeyRing::new(source.clone(), Duration::from_secs(30)));
    let task = keys.spawn_background_refresh(Duration::from_secs(300));
    tokio::time::sleep(Duration::from_secs(299)).await;
    assert_eq!(source.count(), 0);
    ring.publish(key("k2", KEY2)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(source.count(), 1);
    assert_eq!(keys.kids(), ["k1", "k2"]);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(source.count(), 3);
    drop(keys);
    tokio::time::sleep(Duration::from_secs(301)).await;
    assert!(task.is_finished());
}
