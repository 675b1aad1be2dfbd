//! The issuer against the real PostgreSQL (`ARQ_TEST_DATABASE_URL`, default
//! postgres://postgres@127.0.0.1:5432/test): each test creates its own database, migrates it as
//! `arq_owner` with `auth::migrate`, serves it as `arq_app` (the roles of arq-tenancy's
//! `sql/roles.sql`) and drops it at the end. The API runs in-process (arq-core's `TestClient`).
//! Tokens are signed with a test-only key (`tests/keys/`) and verified the way the gateway and
//! the services verify them: with the keys the service publishes at `/.well-known/jwks.json`,
//! the platform's issuer and audience.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use arq_auth::mfa::{TotpHash, totp_code};
use arq_auth::{JwkSet, Principal, Verifier};
use arq_core::TenantId;
use arq_core::testing::TestClient;
use arq_tenancy::testing::TestDatabase;
use axum::Router;
use axum::http::StatusCode;
use common::{database, platform_verifier};
use serde_json::{Value, json};
use sqlx::PgPool;

use auth as svc;
use svc::ROUTE;

struct Api {
    client: TestClient<Router>,
    issuer: arq_auth::issuer::TokenIssuer,
    pool: PgPool,
    settings: svc::Settings,
    _db: TestDatabase,
}

const PASSWORD: &str = "correct horse battery";

impl Api {
    async fn new() -> Self {
        let (db, pool) = database().await;
        let mut settings = svc::load_settings().unwrap();
        settings.issuer.signing_key_file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/keys/test-signing-key.pem"
        )
        .into();
        settings.issuer.key_id = "test-key".into();
        let keys = svc::signing_keys(&settings.issuer).unwrap();
        let verifier = svc::verifier(&settings, &keys).unwrap();
        let issuer = svc::issuer(&settings, keys, pool.clone()).unwrap();
        Self {
            client: TestClient::new(svc::app(issuer.clone(), verifier)),
            issuer,
            pool,
            settings,
            _db: db,
        }
    }

    async fn user(&self, name: &str, tenant: TenantId, role: &str) {
        let roles: Vec<String> = self.settings.rbac.roles.keys().cloned().collect();
        svc::admin::create_user(
            &self.issuer,
            &self.pool,
            &roles,
            name,
            PASSWORD,
            tenant,
            role,
        )
        .await
        .unwrap();
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.client.call("GET", path, None, None).await
    }

    /// `POST /auth/oauth/token` with a form body.
    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let uri = format!("{ROUTE}/oauth/token");
        self.client
            .request("POST", uri)
            .form(form)
            .send()
            .await
            .into()
    }

    async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ])
        .await
    }

    /// `POST path` with a bearer token and a JSON body.
    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.client
            .call("POST", path, Some(token), Some(body))
            .await
    }

    /// A verifier like the gateway's: keys from this service's JWKS endpoint, the platform's
    /// issuer and audience from the configuration.
    async fn platform_verifier(&self) -> Verifier {
        let (status, jwks) = self.get(&format!("{ROUTE}/.well-known/jwks.json")).await;
        assert_eq!(status, StatusCode::OK);
        let set: JwkSet = serde_json::from_value(jwks).unwrap();
        platform_verifier(&self.settings, set)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 4648 base32 (no padding), as the enrolment answer carries the secret.
fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base32") as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

#[tokio::test]
async fn password_grant_issues_tokens_the_platform_verifies() {
    let api = Api::new().await;
    let tenant = TenantId::generate();
    api.user("alice", tenant, "member").await;

    let (status, tokens) = api.login("alice", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert!(tokens["refresh_token"].is_string());

    let who: Principal = api
        .platform_verifier()
        .await
        .verify(tokens["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.tenant(), Some(tenant));
    assert_eq!(who.roles(), ["member"]);
    assert_eq!(who.amr(), ["pwd"]);

    // A wrong password and an unknown user get the same answer.
    let (status, wrong) = api.login("alice", "not the password").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong["error"], "invalid_grant");
    let (status, unknown) = api.login("mallory", PASSWORD).await;
    assert_eq!((status, &unknown), (StatusCode::BAD_REQUEST, &wrong));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_of_an_old_one_revokes_the_family() {
    let api = Api::new().await;
    api.user("bob", TenantId::generate(), "viewer").await;
    let (_, first) = api.login("bob", PASSWORD).await;
    let r1 = first["refresh_token"].as_str().unwrap();

    let (status, second) = api
        .token(&[("grant_type", "refresh_token"), ("refresh_token", r1)])
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2, "every refresh rotates the refresh token");
    assert!(second["access_token"].is_string());

    // The old token again: refused, and the whole family with it (r2 too).
    let (status, reuse) = api
        .token(&[("grant_type", "refresh_token"), ("refresh_token", r1)])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(reuse["error"], "invalid_grant");
    let (status, after) = api
        .token(&[("grant_type", "refresh_token"), ("refresh_token", r2)])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{after}");
    assert_eq!(after["error"], "invalid_grant");
}

#[tokio::test]
async fn client_credentials_grant_tokens_with_the_clients_permissions() {
    let api = Api::new().await;
    let tenant = TenantId::generate();
    let secret = svc::admin::create_client(
        &api.issuer,
        &api.pool,
        "reporter",
        tenant,
        &["read:tasks".into(), "write:tasks".into()],
    )
    .await
    .unwrap();

    let (status, tokens) = api
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "reporter"),
            ("client_secret", &secret),
            ("scope", "read:tasks"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["scope"], "read:tasks");
    assert!(tokens.get("refresh_token").is_none());
    let who = api
        .platform_verifier()
        .await
        .verify(tokens["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(who.subject(), "client:reporter");
    assert_eq!(who.tenant(), Some(tenant));
    assert!(who.has_permission("read:tasks") && !who.has_permission("write:tasks"));

    let (status, wrong) = api
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "reporter"),
            ("client_secret", "guessed"),
        ])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong["error"], "invalid_client");
    let (status, wider) = api
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", "reporter"),
            ("client_secret", &secret),
            ("scope", "manage:tasks"),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(wider["error"], "invalid_scope");

    // A second client with the same id is refused with a message that says so.
    let again = svc::admin::create_client(
        &api.issuer,
        &api.pool,
        "reporter",
        tenant,
        &["read:tasks".into()],
    )
    .await
    .unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
}

#[tokio::test]
async fn totp_enrolment_then_logins_need_the_second_factor() {
    let api = Api::new().await;
    api.user("carol", TenantId::generate(), "manager").await;
    let (_, before) = api.login("carol", PASSWORD).await;
    let pwd_token = before["access_token"].as_str().unwrap().to_owned();

    // Recovery codes need an MFA login.
    let (status, _) = api
        .post(
            &format!("{ROUTE}/mfa/recovery-codes"),
            &pwd_token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, enrolment) = api
        .post(&format!("{ROUTE}/mfa/totp"), &pwd_token, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolment}");
    assert!(
        enrolment["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    assert!(enrolment["qr_svg"].as_str().unwrap().contains("<svg"));
    let secret = base32_decode(enrolment["secret"].as_str().unwrap());
    let code_at = |t: u64| totp_code(&secret, TotpHash::Sha1, 6, t);

    // A wrong code does not confirm; the previous step's code does (±1 step is accepted), which
    // leaves the current step for the login below.
    let t = now();
    let (status, _) = api
        .post(
            &format!("{ROUTE}/mfa/totp/confirm"),
            &pwd_token,
            json!({"code": "000000"}),
        )
        .await;
    assert!(status == StatusCode::UNPROCESSABLE_ENTITY || code_at(t) == "000000");
    let (status, body) = api
        .post(
            &format!("{ROUTE}/mfa/totp/confirm"),
            &pwd_token,
            json!({"code": code_at(t - 30)}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // The password alone no longer gets tokens.
    let (status, challenge) = api.login("carol", PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(challenge["error"], "mfa_required");
    assert!(
        challenge["mfa_methods"]
            .as_array()
            .unwrap()
            .contains(&json!("otp"))
    );
    let mfa_token = challenge["mfa_token"].as_str().unwrap();
    let code = code_at(t);
    let (status, tokens) = api
        .token(&[
            ("grant_type", "urn:arq:params:oauth:grant-type:mfa"),
            ("mfa_token", mfa_token),
            ("otp", &code),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let mfa_access = tokens["access_token"].as_str().unwrap();
    let who = api
        .platform_verifier()
        .await
        .verify(mfa_access)
        .await
        .unwrap();
    assert!(who.has_mfa(), "amr: {:?}", who.amr());

    // The same code in another login is a replay: refused.
    let (_, challenge) = api.login("carol", PASSWORD).await;
    let (status, replay) = api
        .token(&[
            ("grant_type", "urn:arq:params:oauth:grant-type:mfa"),
            ("mfa_token", challenge["mfa_token"].as_str().unwrap()),
            ("otp", &code),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(replay["error"], "invalid_grant");

    // The pre-MFA token cannot replace the authenticator; the MFA one gets recovery codes.
    let (status, _) = api
        .post(&format!("{ROUTE}/mfa/totp"), &pwd_token, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, codes) = api
        .post(
            &format!("{ROUTE}/mfa/recovery-codes"),
            mfa_access,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(codes["codes"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn jwks_and_discovery_are_served_and_name_the_platform_issuer() {
    let api = Api::new().await;
    let (status, jwks) = api.get(&format!("{ROUTE}/.well-known/jwks.json")).await;
    assert_eq!(status, StatusCode::OK);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], "test-key");
    assert_eq!(keys[0]["kty"], "RSA");
    assert!(
        keys[0].get("d").is_none(),
        "the private exponent must not be published"
    );

    let (status, discovery) = api
        .get(&format!("{ROUTE}/.well-known/openid-configuration"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let issuer = api.settings.auth.issuer.trim_end_matches('/');
    assert_eq!(discovery["issuer"], api.settings.auth.issuer);
    assert_eq!(
        discovery["jwks_uri"],
        format!("{issuer}/.well-known/jwks.json")
    );
    assert_eq!(discovery["token_endpoint"], format!("{issuer}/oauth/token"));
    // The gateway publishes this service under /api/v1: the issuer URL must end with the route,
    // or the discovery document would point at paths nobody serves.
    assert!(issuer.ends_with(&format!("/api/v1{ROUTE}")), "{issuer}");
}

#[tokio::test]
async fn create_user_refuses_unknown_roles_and_taken_names() {
    let api = Api::new().await;
    let tenant = TenantId::generate();
    let roles: Vec<String> = api.settings.rbac.roles.keys().cloned().collect();
    let create = |name: &'static str, role: &'static str| {
        svc::admin::create_user(&api.issuer, &api.pool, &roles, name, PASSWORD, tenant, role)
    };
    let e = create("dave", "superuser").await.unwrap_err().to_string();
    assert!(
        e.contains("not a role of this platform") && e.contains("member"),
        "{e}"
    );
    create("dave", "viewer").await.unwrap();
    let e = create("dave", "viewer").await.unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
}

#[tokio::test]
async fn signed_in_routes_need_a_token_and_openapi_describes_the_api() {
    let api = Api::new().await;
    let (status, _) = api
        .client
        .call("POST", &format!("{ROUTE}/mfa/totp"), None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/auth/oauth/token",
        "/auth/oauth/revoke",
        "/auth/.well-known/jwks.json",
        "/auth/.well-known/openid-configuration",
        "/auth/mfa/totp",
        "/auth/mfa/totp/confirm",
        "/auth/mfa/recovery-codes",
    ] {
        assert!(paths.contains(&path), "openapi.json lacks {path}");
    }
}

#[test]
fn a_missing_signing_key_says_how_to_make_one() {
    let settings = svc::IssuerSettings {
        signing_key_file: "/nonexistent/signing-key.pem".into(),
        key_id: "k".into(),
    };
    let e = format!("{:#}", svc::signing_keys(&settings).unwrap_err());
    assert!(
        e.contains("/nonexistent/signing-key.pem") && e.contains("openssl genpkey"),
        "{e}"
    );
}
