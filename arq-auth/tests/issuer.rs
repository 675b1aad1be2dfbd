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
use arq_auth::mfa::{OtpChannel, TOTP_STEP_SECS, TotpHash, totp_code};
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
    db: TestDb,
    issuer: TokenIssuer,
    app: Router,
    verifier: Verifier,
}

async fn setup() -> Setup {
    setup_inner(None).await
}

async fn setup_with_sender(outbox: Outbox) -> Setup {
    setup_inner(Some(outbox)).await
}

async fn setup_inner(sender: Option<Outbox>) -> Setup {
    let db = TestDb::new().await;
    let ring = SigningKeyRing::new(key("k1", KEY1));
    let mut config = IssuerConfig::new(ISS, AUD);
    // Cheap hashing for tests; production keeps argon2's defaults.
    config.password_params = argon2::Params::new(256, 1, 1, None).unwrap();
    let mut issuer = TokenIssuer::new(config, ring.clone(), db.pool.clone()).unwrap();
    if let Some(outbox) = sender {
        issuer = issuer.with_otp_sender(Arc::new(outbox));
    }
    let keys = Arc::new(KeyRing::new(ring, Duration::ZERO));
    let verifier = Verifier::new(VerifierConfig::new(ISS, AUD), keys).unwrap();
    Setup {
        app: issuer.router(),
        issuer,
        verifier,
        db,
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
        .fetch_one(&s.db.pool)
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

    assert_eq!(body["mfa_methods"], serde_json::json!(["otp"]));

    // Wrong codes count against the challenge: the fifth drops it.
    let grant = arq_auth::issuer::MFA_GRANT_TYPE;
    for _ in 0..5 {
        let (status, _, body) = post_form(
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
        assert_eq!(body["error"], "invalid_grant");
    }
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", grant),
            ("mfa_token", &mfa_token),
            ("otp", &totp_code(&secret, TotpHash::Sha1, 6, t)),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "the mfa_token is unknown or expired"
    );
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
    assert_eq!(
        body["mfa_methods"],
        serde_json::json!(["otp", "recovery_code"])
    );
    let mfa_token = body["mfa_token"].as_str().unwrap().to_owned();
    let (status, _, body) = post_form(
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
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.amr(), ["pwd".to_owned(), "mfa".to_owned()]);
    // This issuer has no code sender: asking for a code is refused.
    let (_, _, body) = login(&s, "root", "pw").await;
    let mfa_token = body["mfa_token"].as_str().unwrap().to_owned();
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/mfa/challenge",
        &[("mfa_token", &mfa_token), ("channel", "email")],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
}

/// A user whose second factors are an email address and a phone number, on an issuer with a
/// code sender.
async fn otp_user(s: &Setup, outbox: &Outbox) -> String {
    let id = s
        .issuer
        .create_user("eve", "pw", None, &["admin"])
        .await
        .unwrap();
    let subject = id.to_string();
    let mfa = s.issuer.mfa();
    for (channel, to) in [
        (OtpChannel::Email, "eve@example.com"),
        (OtpChannel::Sms, "+15550100"),
    ] {
        let challenge = mfa
            .enroll_otp_destination(&subject, channel, to, outbox)
            .await
            .unwrap();
        mfa.confirm_otp_destination(challenge, &subject, &outbox.last_code())
            .await
            .unwrap();
    }
    subject
}

async fn mfa_login(s: &Setup) -> String {
    let (status, _, body) = login(s, "eve", "pw").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["mfa_methods"], serde_json::json!(["email", "sms"]));
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn send_code(s: &Setup, mfa_token: &str, channel: &str) -> (StatusCode, Value) {
    let (status, headers, body) = post_form(
        &s.app,
        "/oauth/mfa/challenge",
        &[("mfa_token", mfa_token), ("channel", channel)],
        None,
    )
    .await;
    assert_eq!(headers["cache-control"], "no-store");
    (status, body)
}

async fn otp_grant(s: &Setup, mfa_token: &str, channel: &str, code: &str) -> (StatusCode, Value) {
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", arq_auth::issuer::MFA_GRANT_TYPE),
            ("mfa_token", mfa_token),
            ("channel", channel),
            ("otp", code),
        ],
        None,
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn email_and_sms_codes_complete_the_login_challenge() {
    let outbox = Outbox::default();
    let s = setup_with_sender(outbox.clone()).await;
    let subject = otp_user(&s, &outbox).await;

    // Email: the code goes to the confirmed address, and completes the login once.
    let mfa_token = mfa_login(&s).await;
    let (status, body) = send_code(&s, &mfa_token, "email").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["channel"], "email");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["sent_to"], "e\u{2022}\u{2022}\u{2022}@example.com");
    let (channel, to, code) = outbox.0.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        (channel, to.as_str()),
        (OtpChannel::Email, "eve@example.com")
    );
    // Entered as an SMS code: refused (wrong channel), and the attempt counts.
    let (status, body) = otp_grant(&s, &mfa_token, "sms", &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "no code was sent over that channel for this login"
    );
    let (status, body) = otp_grant(&s, &mfa_token, "email", &code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.subject(), subject);
    assert_eq!(who.amr(), ["pwd", "otp", "mfa"].map(str::to_owned));
    assert!(Rbac::standard().check(&who, "admin:workspace").is_ok());
    // Single use: neither the mfa_token nor the code works again.
    let (status, _) = otp_grant(&s, &mfa_token, "email", &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // SMS: amr says so. A code from an earlier login does not complete a new one.
    let mfa_token = mfa_login(&s).await;
    let (status, _) = otp_grant(&s, &mfa_token, "sms", &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no code was sent yet");
    let (status, _) = send_code(&s, &mfa_token, "sms").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = otp_grant(&s, &mfa_token, "sms", &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the old email code");
    let (status, body) = otp_grant(&s, &mfa_token, "sms", &outbox.last_code()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.amr(), ["pwd", "sms", "mfa"].map(str::to_owned));

    // A channel without a confirmed destination is refused.
    s.issuer
        .mfa()
        .remove_otp_destination(&subject, OtpChannel::Sms)
        .await
        .unwrap();
    let (_, _, body) = login(&s, "eve", "pw").await;
    assert_eq!(body["mfa_methods"], serde_json::json!(["email"]));
    let mfa_token = body["mfa_token"].as_str().unwrap().to_owned();
    let (status, body) = send_code(&s, &mfa_token, "sms").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, _) = send_code(&s, &mfa_token, "fax").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn emailed_codes_expire_and_limit_attempts_and_sends() {
    let outbox = Outbox::default();
    let s = setup_with_sender(outbox.clone()).await;
    otp_user(&s, &outbox).await;

    // Expiry: a code past its lifetime is refused even when right.
    let mfa_token = mfa_login(&s).await;
    send_code(&s, &mfa_token, "email").await;
    let code = outbox.last_code();
    sqlx::query("update arq_auth_otp_codes set expires_at = now() - interval '1 second'")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let (status, body) = otp_grant(&s, &mfa_token, "email", &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "the code has expired; request a new one"
    );
    // A fresh code for the same login works.
    send_code(&s, &mfa_token, "email").await;
    let (status, _) = otp_grant(&s, &mfa_token, "email", &outbox.last_code()).await;
    assert_eq!(status, StatusCode::OK);

    // Attempts: five wrong codes drop the login; the right code comes too late.
    let mfa_token = mfa_login(&s).await;
    send_code(&s, &mfa_token, "email").await;
    let code = outbox.last_code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let (status, body) = otp_grant(&s, &mfa_token, "email", wrong).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error_description"], "the second factor is not valid");
    }
    let (status, body) = otp_grant(&s, &mfa_token, "email", &code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "the mfa_token is unknown or expired"
    );

    // Sends: three codes per login, then refused.
    let mfa_token = mfa_login(&s).await;
    for _ in 0..3 {
        assert_eq!(send_code(&s, &mfa_token, "sms").await.0, StatusCode::OK);
    }
    let (status, body) = send_code(&s, &mfa_token, "sms").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Only the latest code counts.
    let sent = outbox.0.lock().unwrap().clone();
    let first = &sent[sent.len() - 3].2;
    if *first != outbox.last_code() {
        let (status, _) = otp_grant(&s, &mfa_token, "sms", first).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, _) = otp_grant(&s, &mfa_token, "sms", &outbox.last_code()).await;
    assert_eq!(status, StatusCode::OK);
}

async fn login_to(s: &Setup, user: &str, tenant: TenantId) -> (StatusCode, Value) {
    let tenant = tenant.to_string();
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", user),
            ("password", "pw"),
            ("tenant", &tenant),
        ],
        None,
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn tokens_carry_the_selected_tenants_roles_from_the_role_store() {
    let s = setup().await;
    let (acme, globex, other) = (
        TenantId::generate(),
        TenantId::generate(),
        TenantId::generate(),
    );
    let id = s.issuer.create_user("kim", "pw", None, &[]).await.unwrap();
    let subject = id.to_string();
    let roles = s.issuer.roles();
    roles.assign(&subject, acme, "manager").await.unwrap();
    roles.assign(&subject, globex, "viewer").await.unwrap();

    let (status, body) = login_to(&s, "kim", acme).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.tenant(), Some(acme));
    assert_eq!(who.roles(), ["manager".to_owned()]);
    assert!(who.has_permission("manage:members"));
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    let (_, body) = login_to(&s, "kim", globex).await;
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.tenant(), Some(globex));
    assert!(who.has_permission("read:project") && !who.has_permission("write:project"));

    // No role in the tenant: no token for it.
    let (status, body) = login_to(&s, "kim", other).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // Several tenants and none chosen: no tenant, no tenant roles.
    let (_, _, body) = login(&s, "kim", "pw").await;
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.tenant(), None);
    assert!(who.roles().is_empty());
    // Not a tenant id.
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[
            ("grant_type", "password"),
            ("username", "kim"),
            ("password", "pw"),
            ("tenant", "acme"),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    // A changed assignment shows at the next refresh.
    roles.revoke(&subject, acme, "manager").await.unwrap();
    roles.assign(&subject, acme, "member").await.unwrap();
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.tenant(), Some(acme));
    assert!(who.has_permission("write:project") && !who.has_permission("manage:members"));
    // Removed from the tenant: the refresh fails and the session ends.
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(roles.revoke_all_in(&subject, acme).await.unwrap(), 1);
    let (status, _, body) = post_form(
        &s.app,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // One tenant left: it is selected without asking.
    let (_, _, body) = login(&s, "kim", "pw").await;
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.tenant(), Some(globex));

    // An account bound to a tenant signs in to that tenant only, with the assigned roles added.
    let bound = s
        .issuer
        .create_user("lee", "pw", Some(acme), &["viewer"])
        .await
        .unwrap();
    roles
        .assign(&bound.to_string(), acme, "member")
        .await
        .unwrap();
    roles
        .assign(&bound.to_string(), globex, "admin")
        .await
        .unwrap();
    let (status, _) = login_to(&s, "lee", globex).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = login_to(&s, "lee", acme).await;
    assert_eq!(status, StatusCode::OK);
    let who = s
        .verifier
        .verify(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.roles(), ["viewer".to_owned(), "member".to_owned()]);
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

#[tokio::test]
async fn the_role_store_assigns_revokes_and_lists_per_tenant() {
    let s = setup().await;
    let roles = s.issuer.roles();
    let (a, b) = (TenantId::generate(), TenantId::generate());
    assert!(roles.assign("u1", a, "member").await.unwrap());
    assert!(
        !roles.assign("u1", a, "member").await.unwrap(),
        "already held"
    );
    assert!(roles.assign("u1", a, "admin").await.unwrap());
    assert!(roles.assign("u1", b, "viewer").await.unwrap());
    assert!(roles.assign("u2", a, "viewer").await.unwrap());
    assert!(matches!(
        roles.assign("u1", a, "superuser").await,
        Err(arq_auth::RoleError::UnknownRole(r)) if r == "superuser"
    ));

    assert_eq!(roles.roles_in("u1", a).await.unwrap(), ["admin", "member"]);
    assert_eq!(roles.roles_in("u1", b).await.unwrap(), ["viewer"]);
    assert!(roles.roles_in("u3", a).await.unwrap().is_empty());
    let tenants = roles.tenants_of("u1").await.unwrap();
    assert_eq!(tenants.len(), 2);
    assert_eq!(tenants[&b], ["viewer"]);
    let members = roles.members_of(a).await.unwrap();
    assert_eq!(members.keys().collect::<Vec<_>>(), ["u1", "u2"]);

    assert!(roles.revoke("u1", a, "admin").await.unwrap());
    assert!(!roles.revoke("u1", a, "admin").await.unwrap());
    assert_eq!(roles.roles_in("u1", a).await.unwrap(), ["member"]);
    // Revoking in one tenant leaves the others alone.
    assert_eq!(roles.revoke_all_in("u1", a).await.unwrap(), 1);
    assert_eq!(roles.tenants_of("u1").await.unwrap().len(), 1);
    assert_eq!(roles.roles_in("u2", a).await.unwrap(), ["viewer"]);
}
