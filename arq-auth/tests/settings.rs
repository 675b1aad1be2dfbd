//! `[auth]` settings: they parse as every service's configuration writes them, name a bad
//! algorithm, and build a verifier whose keys come from `jwks_url` when it is set and from the
//! issuer's discovery document otherwise (over real HTTP on a loopback port).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::{Arc, Mutex};

use arq_auth::{AccessClaims, AuthSettings, AuthSettingsError, RbacConfig, SigningKeyRing};
use axum::Router;
use axum::routing::get;
use common::*;

fn settings(issuer: &str) -> AuthSettings {
    AuthSettings {
        algorithms: vec!["RS256".into()],
        issuer: issuer.into(),
        audience: AUD.into(),
        leeway_secs: 30,
        jwks_url: None,
    }
}

#[test]
fn the_auth_section_parses_with_and_without_jwks_url_and_refuses_unknown_keys() {
    let parsed: AuthSettings = serde_json::from_value(serde_json::json!({
        "algorithms": ["RS256", "ES256"],
        "issuer": ISS,
        "audience": AUD,
        "leeway_secs": 10,
    }))
    .unwrap();
    assert_eq!(parsed.jwks_url, None);
    assert_eq!(parsed.verifier_config().unwrap().leeway_secs(), 10);

    let with_url: AuthSettings = serde_json::from_value(serde_json::json!({
        "algorithms": ["RS256"],
        "issuer": ISS,
        "audience": AUD,
        "leeway_secs": 30,
        "jwks_url": "https://auth.arq.dev/jwks",
    }))
    .unwrap();
    assert_eq!(
        with_url.jwks_url.as_deref(),
        Some("https://auth.arq.dev/jwks")
    );

    let err = serde_json::from_value::<AuthSettings>(serde_json::json!({
        "algorithms": ["RS256"],
        "issuer": ISS,
        "audience": AUD,
        "leeway_secs": 30,
        "jwks": "https://auth.arq.dev/jwks",
    }))
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `jwks`"), "{err}");
}

#[test]
fn an_unknown_algorithm_is_named() {
    let bad = AuthSettings {
        algorithms: vec!["RS256".into(), "RS257".into()],
        ..settings(ISS)
    };
    let err = bad.verifier_config().unwrap_err();
    assert!(
        matches!(&err, AuthSettingsError::UnknownAlgorithm(a) if a == "RS257"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        r#"[auth] algorithms: unknown algorithm "RS257""#
    );
    // The verifier is refused for the same reason.
    let err = bad.verifier(&RbacConfig::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"[auth] algorithms: unknown algorithm "RS257""#
    );
}

#[tokio::test]
async fn a_shared_secret_algorithm_and_a_bad_rbac_are_refused_by_the_verifier() {
    let hmac = AuthSettings {
        algorithms: vec!["HS256".into()],
        ..settings(ISS)
    };
    let err = hmac.verifier(&RbacConfig::default()).unwrap_err();
    assert!(matches!(err, AuthSettingsError::Verifier(_)), "{err:?}");
    assert!(err.to_string().contains("shared-secret"), "{err}");

    let rbac: RbacConfig = serde_json::from_value(serde_json::json!({
        "roles": { "member": { "inherits": "viewr", "permissions": ["write:x"] } }
    }))
    .unwrap();
    let err = settings(ISS).verifier(&rbac).unwrap_err();
    assert!(matches!(err, AuthSettingsError::Rbac(_)), "{err:?}");
    assert!(err.to_string().contains("`viewr`"), "{err}");
}

/// Serves a discovery document pointing at `/discovered/jwks.json` (signed by `discovered`)
/// and another JWKS at `/configured/jwks.json` (signed by `configured`); records every path
/// requested.
async fn serve_issuer(
    discovered: &SigningKeyRing,
    configured: &SigningKeyRing,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let discovery = serde_json::json!({
        "issuer": base,
        "jwks_uri": format!("{base}/discovered/jwks.json"),
    });
    let (d, c) = (discovered.jwks(), configured.jwks());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app: Router = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/discovered/jwks.json",
            get(move || async move { axum::Json(d) }),
        )
        .route(
            "/configured/jwks.json",
            get(move || async move { axum::Json(c) }),
        )
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                log.lock().unwrap().push(req.uri().path().to_owned());
                next.run(req)
            },
        ));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

#[tokio::test]
async fn keys_come_from_jwks_url_when_set_and_from_discovery_otherwise() {
    let discovered = SigningKeyRing::new(key("discovered", KEY1));
    let configured = SigningKeyRing::new(key("configured", KEY2));
    let (base, seen) = serve_issuer(&discovered, &configured).await;

    // Without jwks_url: discovery, then the jwks_uri it names.
    let by_discovery = settings(&base);
    let ring = by_discovery.key_ring().unwrap();
    ring.refresh().await.unwrap();
    assert_eq!(ring.kids(), ["discovered"]);
    assert_eq!(
        *seen.lock().unwrap(),
        ["/.well-known/openid-configuration", "/discovered/jwks.json"]
    );
    let verifier = by_discovery.verifier(&RbacConfig::default()).unwrap();
    let token = discovered
        .sign(&AccessClaims::new(&base, "alice", AUD, now(), 3600))
        .unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap().subject(), "alice");

    // With jwks_url: that URL only, discovery never asked.
    seen.lock().unwrap().clear();
    let by_url = AuthSettings {
        jwks_url: Some(format!("{base}/configured/jwks.json")),
        ..settings(&base)
    };
    let verifier = by_url.verifier(&RbacConfig::default()).unwrap();
    let token = configured
        .sign(&AccessClaims::new(&base, "bob", AUD, now(), 3600))
        .unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap().subject(), "bob");
    assert_eq!(*seen.lock().unwrap(), ["/configured/jwks.json"]);
    // A token signed with the discovered key is unknown to this verifier.
    let other = discovered
        .sign(&AccessClaims::new(&base, "carol", AUD, now(), 3600))
        .unwrap();
    assert!(verifier.verify(&other).await.is_err());
}
