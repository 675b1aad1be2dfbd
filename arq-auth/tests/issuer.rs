//! The token issuer end to end through its router, against the real PostgreSQL: password login,
//! MFA challenge, refresh with rotation and family revocation, logout, client credentials, and
//! RFC 6749 responses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use arq_auth::issuer::{IssuerConfig, TokenIssuer};
use arq_auth::mfa::{TOTP_STEP_SECS, TotpHash, totp_code};
use arq_auth::{KeyRing, Rbac, SigningKeyRing, Verifier, VerifierConfig};
use arq_core::TenantId;
use axum::Router;
use axum::body::Body;
use common::db::TestDb;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

struct Setup {
    _db: TestDb,
    issuer: TokenIssuer,
    app: Router,
    verifier: Verifier,
}

async fn setup() -> Setup {
    let db = TestDb::new().await;
    let ring = SigningKeyRing::new(key("k1", KEY1));
    let mut config = IssuerConfig::new(ISS, AUD);
    // Cheap hashing for tests; production keeps argon2's defaults.
    config.password_params = argon2::Params::new(256, 1, 1, None).unwrap();
    let issuer = TokenIssuer::new(config, ring.clone(), db.pool.clone()).unwrap();
    let keys = Arc::new(KeyRing::new(ring, Duration::ZERO));
    let verifier = Verifier::new(VerifierConfig::new(ISS, AUD), keys).unwrap();
    Setup {
        app: issuer.router(),
        issuer,
        verifier,
        _db: db,
    }
}

async fn post_form(
    app: &Router,
    uri: &str,
    form: &[(&str, &str)],
    auth: Option<&str>,
) -> (StatusCode, http::HeaderMap, Value) {
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut req = Request::post(uri).header("content-type", "application/x-www-form-urlencoded");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, json)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn login(s: &Setup, user: &str, password: &str) -> (StatusCode, http::HeaderMap, Value) {
    post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn password_login_refresh_rotation_and_reuse() {
    let s = setup().await;
    let tenant = TenantId::generate();
    let id = s
        .issuer
        .create_user("ada", "correct horse", Some(tenant), &["member"])
        .await
        .unwrap();

    let (status, headers, body) = login(&s, "ada", "correct horse").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.subject(), id.to_string());
    assert_eq!(who.tenant(), Some(tenant));
    assert!(who.has_permission("write:project"));
    assert_eq!(who.amr(), ["pwd".to_owned()]);
    assert!(!who.has_mfa());

    let r1 = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let r2 = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert!(
        s.verifier
            .verify(body["access_token"].as_str().unwrap())
            .await
            .is_ok()
    );

    // Reusing r1 fails and takes r2 down with it.
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &r1)],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, _, _) = post_form(
        &s.app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &r2)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_get_the_same_answer() {
    let s = setup().await;
    s.issuer
        .create_user("ada", "correct horse", None, &["viewer"])
        .await
        .unwrap();
    let (s1, _, b1) = login(&s, "ada", "wrong").await;
    let (s2, _, b2) = login(&s, "nobody", "wrong").await;
    assert_eq!((s1, s2), (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST));
    assert_eq!(b1, b2);
    assert_eq!(b1["error"], "invalid_grant");
    // The stored hash is argon2id.
    let hash: String = sqlx::query_scalar("select password_hash from arq_auth_users")
        .fetch_one(&s._db.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

#[tokio::test]
async fn mfa_users_get_a_challenge_and_tokens_showing_mfa() {
    let s = setup().await;
    let id = s
        .issuer
        .create_user("root", "pw", None, &["admin"])
        .await
        .unwrap();
    let subject = id.to_string();
    let e = s.issuer.mfa().enroll_totp(&subject, "root").await.unwrap();
    let secret = totp_rs::TOTP::from_url(&e.otpauth_uri).unwrap().secret;
    let t = now();
    s.issuer
        .mfa()
        .confirm_totp(&subject, &totp_code(&secret, TotpHash::Sha1, 6, t))
        .await
        .unwrap();

    let (status, headers, body) = login(&s, "root", "pw").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "mfa_required");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(body.get("access_token").is_none());
    let mfa_token = body["mfa_token"].as_str().unwrap().to_owned();

    // A wrong code burns the challenge.
    let grant = arq_auth::issuer::MFA_GRANT_TYPE;
    let (status, _, _) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", grant),
            ("mfa_token", &mfa_token),
            ("otp", "000000"),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, _, body) = login(&s, "root", "pw").await;
    let mfa_token = body["mfa_token"].as_str().unwrap().to_owned();
    let next = totp_code(&secret, TotpHash::Sha1, 6, t + TOTP_STEP_SECS);
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", grant),
            ("mfa_token", &mfa_token),
            ("otp", &next),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert!(who.has_mfa());
    assert!(Rbac::standard().check(&who, "admin:workspace").is_ok());
    // The refreshed token keeps the MFA methods.
    let r = body["refresh_token"].as_str().unwrap().to_owned();
    let (_, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &r)],
        None,
    )
    .await;
    assert!(
        s.verifier
            .verify(body["access_token"].as_str().unwrap())
            .await
            .unwrap()
            .has_mfa()
    );
    // The mfa_token was single use.
    let (status, _, _) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", grant),
            ("mfa_token", &mfa_token),
            ("otp", &next),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A recovery code also completes the challenge, once.
    let codes = s
        .issuer
        .mfa()
        .generate_recovery_codes(&subject)
        .await
        .unwrap();
    let (_, _, body) = login(&s, "root", "pw").await;
    let mfa_token = body["mfa_token"].as_str().unwrap().to_owned();
    let (status, _, _) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", grant),
            ("mfa_token", &mfa_token),
            ("recovery_code", &codes[0]),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn logout_and_logout_everywhere() {
    let s = setup().await;
    let id = s
        .issuer
        .create_user("ada", "pw", None, &["member"])
        .await
        .unwrap();
    let (_, _, a) = login(&s, "ada", "pw").await;
    let (_, _, b) = login(&s, "ada", "pw").await;
    let (_, _, c) = login(&s, "ada", "pw").await;
    let refresh = |v: &Value| v["refresh_token"].as_str().unwrap().to_owned();
    let (status, _, _) = post_form(&s.app, "/oauth/revoke", &[("token", &refresh(&a))], None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = post_form(&s.app, "/oauth/revoke", &[("token", "unknown")], None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "RFC 7009: unknown tokens are not an error"
    );
    let (status, _, _) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh(&a)),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(s.issuer.logout_everywhere(&id.to_string()).await.unwrap() >= 2);
    for t in [refresh(&b), refresh(&c)] {
        let (status, _, _) = post_form(
            &s.app,
            "/oauth/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &t)],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn client_credentials_for_service_accounts() {
    let s = setup().await;
    let tenant = TenantId::generate();
    let secret = s
        .issuer
        .create_client("billing", Some(tenant), &["read:project", "write:project"])
        .await
        .unwrap();
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("billing:{secret}")
        )
    );
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "read:project"),
        ],
        Some(&basic),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "read:project");
    assert!(body.get("refresh_token").is_none());
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.subject(), "client:billing");
    assert_eq!(who.tenant(), Some(tenant));
    assert!(who.has_permission("read:project") && !who.has_permission("write:project"));

    // client_secret_post, all permissions.
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "billing"),
            ("client_secret", &secret),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["scope"], "read:project write:project");
    // A scope beyond the client's.
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "admin:workspace"),
        ],
        Some(&basic),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    // Wrong secret, unknown client: 401 invalid_client with a challenge.
    for (id, sec) in [("billing", "wrong"), ("ghost", secret.as_str())] {
        let (status, headers, body) = post_form(
            &s.app,
            "/oauth/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", sec),
            ],
            None,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client"))
        );
        assert!(headers.contains_key("www-authenticate"));
    }
}

#[tokio::test]
async fn malformed_requests_get_rfc6749_errors() {
    let s = setup().await;
    for (form, error) in [
        (
            vec![("grant_type", "authorization_code")],
            "unsupported_grant_type",
        ),
        (vec![], "invalid_request"),
        (
            vec![("grant_type", "password"), ("username", "x")],
            "invalid_request",
        ),
        (vec![("grant_type", "refresh_token")], "invalid_request"),
        (vec![("grant_type", "client_credentials")], "invalid_client"),
    ] {
        let (status, headers, body) = post_form(&s.app, "/oauth/token", &form, None).await;
        assert_eq!(body["error"], error, "{form:?}");
        assert!(body["error_description"].is_string());
        assert!(status.is_client_error());
        assert_eq!(headers["cache-control"], "no-store");
    }
    let res = s
        .app
        .clone()
        .oneshot(
            Request::post("/oauth/token")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn discovery_and_jwks_are_served() {
    let s = setup().await;
    let res = s
        .app
        .clone()
        .oneshot(
            Request::get("/.well-known/openid-configuration")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let doc: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(doc["issuer"], ISS);
    assert_eq!(doc["jwks_uri"], format!("{ISS}/.well-known/jwks.json"));
    let res = s
        .app
        .clone()
        .oneshot(
            Request::get("/.well-known/jwks.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.headers()["cache-control"], "public, max-age=300");
    let jwks: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "k1");
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0].get("d").is_none(), "no private parts");
}
