//! A token issuer for an auth service: password login (argon2id), the MFA challenge, refresh,
//! logout, and the OAuth 2.0 client-credentials grant, with RFC 6749 token and error responses.
//!
//! [`TokenIssuer::router`] serves:
//!
//! | route | what |
//! |---|---|
//! | `POST /oauth/token` | grants `password`, `refresh_token`, `client_credentials`, and [`MFA_GRANT_TYPE`] |
//! | `POST /oauth/mfa/challenge` | sends a one-time code by email or SMS for a pending `mfa_token` |
//! | `POST /oauth/revoke` | logout: revokes the refresh token's family (RFC 7009 shape) |
//! | `GET /.well-known/jwks.json` | the signing keys |
//! | `GET /.well-known/openid-configuration` | issuer, `jwks_uri`, `token_endpoint` |
//!
//! A user with a second factor (a confirmed authenticator app, or a confirmed email address or
//! phone number for one-time codes) gets no tokens from the password alone: the answer is the
//! error `mfa_required` with an `mfa_token` and the `mfa_methods` on offer (`otp`, `email`,
//! `sms`, `recovery_code`). The client then either sends a TOTP code (`otp`), or asks
//! `POST /oauth/mfa/challenge` (`mfa_token`, `channel=email|sms`) to send a code and sends it
//! back with `channel` and `otp`, or uses a `recovery_code`, all through [`MFA_GRANT_TYPE`].
//! Tokens from that exchange carry `amr` with `mfa` (`["pwd","otp","mfa"]` for an app or email
//! code, `["pwd","sms","mfa"]` for SMS, `["pwd","mfa"]` for a recovery code), which is what
//! admin permissions require. An `mfa_token` lives 5 minutes, allows 5 wrong codes and 3 sends,
//! and is consumed by the first success.
//!
//! The password grant takes an optional `tenant` (a tenant id): the token's `tid` and `roles`
//! are then that tenant's, from the [`RoleStore`]. Without it, the user's bound tenant is used,
//! or the only tenant the user holds roles in.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as ArgonAlgorithm, Argon2, Params, Version};
use arq_core::TenantId;
use axum::extract::{Form, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::claims::{AccessClaims, unix_now};
use crate::mfa::{MfaError, MfaFactors, MfaStore, OtpChannel, OtpSender};
use crate::refresh::{RefreshError, RefreshTokenStore};
use crate::roles::RoleStore;
use crate::signing::SigningKeyRing;
use crate::store::random_secret;

/// The grant type that completes a login with a second factor (`mfa_token` + `otp` or
/// `recovery_code`).
pub const MFA_GRANT_TYPE: &str = "urn:arq:params:oauth:grant-type:mfa";

/// Wrong second-factor codes one `mfa_token` tolerates before it is dropped.
const MFA_MAX_FAILURES: u32 = 5;
/// Codes one `mfa_token` may have sent by email or SMS.
const MFA_MAX_SENDS: u32 = 3;

/// The second factor that completes an `mfa_required` login.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum MfaFactor<'a> {
    /// A code from the authenticator app.
    Totp(&'a str),
    /// A code sent by [`TokenIssuer::send_mfa_code`] over `channel`.
    Otp {
        /// The channel the user says the code came over; a code sent over the other is refused.
        channel: OtpChannel,
        /// The code.
        code: &'a str,
    },
    /// One of the user's recovery codes.
    RecoveryCode(&'a str),
}

/// The answer to [`TokenIssuer::send_mfa_code`].
#[derive(Debug, Clone, Serialize)]
pub struct MfaCodeSent {
    /// `email` or `sms`.
    pub channel: &'static str,
    /// The destination with most of it hidden (`a•••@example.com`, `•••••0100`).
    pub sent_to: String,
    /// Seconds the code stays valid.
    pub expires_in: u64,
}

/// How the issuer is set up.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The `iss` of issued tokens, e.g. `https://auth.arq.dev`.
    pub issuer: String,
    /// The `aud` of issued tokens, e.g. `https://api.arq.dev`.
    pub audience: String,
    /// Access-token lifetime (1 hour by default).
    pub access_ttl: Duration,
    /// How long an `mfa_token` stays valid (5 minutes by default).
    pub mfa_challenge_ttl: Duration,
    /// argon2id cost for new password hashes (the argon2 crate's defaults: 19 MiB, 2 passes).
    pub password_params: Params,
}

impl IssuerConfig {
    /// arq's defaults for `issuer` and `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            access_ttl: Duration::from_secs(3600),
            mfa_challenge_ttl: Duration::from_secs(300),
            password_params: Params::DEFAULT,
        }
    }
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    error: &'static str,
    description: String,
    mfa_token: Option<String>,
    mfa_methods: Vec<&'static str>,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
            mfa_token: None,
            mfa_methods: Vec::new(),
        }
    }

    fn invalid_grant() -> Self {
        Self::new("invalid_grant", "the credentials or grant are not valid")
    }

    fn server_error(e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "token issuer failure");
        Self::new("server_error", "an internal error occurred")
    }

    /// The `error` code (`invalid_grant`, `invalid_client`, `mfa_required`, …).
    pub fn code(&self) -> &str {
        self.error
    }

    /// The `mfa_token` of an `mfa_required` error.
    pub fn mfa_token(&self) -> Option<&str> {
        self.mfa_token.as_deref()
    }

    /// The second factors an `mfa_required` error offers (`otp`, `email`, `sms`,
    /// `recovery_code`).
    pub fn mfa_methods(&self) -> &[&'static str] {
        &self.mfa_methods
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mfa_token: Option<&'a str>,
    #[serde(skip_serializing_if = "no_methods")]
    mfa_methods: &'a [&'static str],
}

fn no_methods(methods: &&[&'static str]) -> bool {
    methods.is_empty()
}

fn no_store(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = match self.error {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "mfa_required" => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = ErrorBody {
            error: self.error,
            error_description: &self.description,
            mfa_token: self.mfa_token.as_deref(),
            mfa_methods: &self.mfa_methods,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"oauth\""),
            );
        }
        no_store(&mut response);
        response
    }
}

/// An RFC 6749 §5.1 token response.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TokenResponse {
    /// The signed access token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The refresh token (not for client credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The granted scope (client credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl IntoResponse for TokenResponse {
    fn into_response(self) -> Response {
        let mut response = Json(self).into_response();
        no_store(&mut response);
        response
    }
}

#[derive(Debug, Clone)]
struct User {
    id: Uuid,
    /// The tenant the account is bound to, if any.
    tenant: Option<TenantId>,
    /// The account's own roles: in its bound tenant, or tenant-independent when unbound.
    roles: Vec<String>,
    attributes: BTreeMap<String, Value>,
}

/// Who a token is for: the user, the selected tenant and the roles held there.
#[derive(Debug, Clone)]
struct Session {
    user: User,
    tenant: Option<TenantId>,
    roles: Vec<String>,
}

/// A login waiting for its second factor.
#[derive(Debug, Clone)]
struct PendingMfa {
    session: Session,
    factors: MfaFactors,
    expires: std::time::Instant,
    failures: u32,
    sends: u32,
    /// The last code sent for this login: its channel and challenge id.
    sent: Option<(OtpChannel, Uuid)>,
}

/// The issuer. Clones share state.
#[derive(Clone)]
pub struct TokenIssuer {
    inner: Arc<Inner>,
}

struct Inner {
    config: IssuerConfig,
    keys: SigningKeyRing,
    refresh: RefreshTokenStore,
    mfa: MfaStore,
    roles: RoleStore,
    otp_sender: Option<Arc<dyn OtpSender>>,
    pool: PgPool,
    /// Pending second-factor challenges by `mfa_token`.
    challenges: moka::sync::Cache<String, Arc<PendingMfa>>,
    /// Verified against when the user is unknown, so timing does not reveal which usernames exist.
    dummy_hash: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

type UserRow = (Uuid, String, Option<Uuid>, Vec<String>, Value, bool);

impl TokenIssuer {
    /// An issuer signing with `keys` and storing in `pool` (migrated with
    /// [`migrate`](crate::migrate)).
    pub fn new(
        config: IssuerConfig,
        keys: SigningKeyRing,
        pool: PgPool,
    ) -> Result<Self, OAuthError> {
        let dummy_hash = hash_password(&config.password_params, &random_secret())?;
        Ok(Self {
            inner: Arc::new(Inner {
                refresh: RefreshTokenStore::new(pool.clone()),
                mfa: MfaStore::new(pool.clone(), config.issuer.clone()),
                roles: RoleStore::new(pool.clone()),
                otp_sender: None,
                challenges: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(config.mfa_challenge_ttl)
                    .build(),
                config,
                keys,
                pool,
                dummy_hash,
            }),
        })
    }

    /// Sends email and SMS one-time codes through `sender`, offering them as second factors.
    pub fn with_otp_sender(self, sender: Arc<dyn OtpSender>) -> Self {
        self.rebuilt(|inner| inner.otp_sender = Some(sender))
    }

    /// Checks role assignments against `rbac` instead of arq's standard roles.
    pub fn with_rbac(self, rbac: Arc<crate::Rbac>) -> Self {
        self.rebuilt(|inner| inner.roles = RoleStore::with_rbac(inner.pool.clone(), rbac))
    }

    fn rebuilt(self, change: impl FnOnce(&mut Inner)) -> Self {
        let i = &*self.inner;
        // Clones share their state (pool, caches, key ring), so the rebuilt issuer serves the
        // same pending challenges and keys as any clone made before.
        let mut inner = Inner {
            config: i.config.clone(),
            keys: i.keys.clone(),
            refresh: i.refresh.clone(),
            mfa: i.mfa.clone(),
            roles: i.roles.clone(),
            otp_sender: i.otp_sender.clone(),
            pool: i.pool.clone(),
            challenges: i.challenges.clone(),
            dummy_hash: i.dummy_hash.clone(),
        };
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The MFA store (for enrollment endpoints).
    pub fn mfa(&self) -> &MfaStore {
        &self.inner.mfa
    }

    /// The role assignments per tenant that go into tokens.
    pub fn roles(&self) -> &RoleStore {
        &self.inner.roles
    }

    /// The refresh-token store.
    pub fn refresh_tokens(&self) -> &RefreshTokenStore {
        &self.inner.refresh
    }

    /// Creates a user with an argon2id password hash; returns its id (the tokens' subject).
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        tenant: Option<TenantId>,
        roles: &[&str],
    ) -> Result<Uuid, OAuthError> {
        let hash = self.hash(password).await?;
        let id = Uuid::now_v7();
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        sqlx::query(
            "insert into arq_auth_users (id, username, password_hash, bound_tenant_id, roles)
             values ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(username)
        .bind(hash)
        .bind(tenant.map(TenantId::into_uuid))
        .bind(&roles)
        .execute(&self.inner.pool)
        .await
        .map_err(|e| OAuthError::server_error(&e))?;
        Ok(id)
    }

    /// Registers a service account for the client-credentials grant; returns its secret (shown
    /// once, stored as an argon2id hash).
    pub async fn create_client(
        &self,
        client_id: &str,
        tenant: Option<TenantId>,
        permissions: &[&str],
    ) -> Result<String, OAuthError> {
        let secret = random_secret();
        let hash = self.hash(&secret).await?;
        let permissions: Vec<String> = permissions.iter().map(|p| (*p).to_owned()).collect();
        sqlx::query(
            "insert into arq_auth_clients (client_id, secret_hash, bound_tenant_id, permissions)
             values ($1, $2, $3, $4)",
        )
        .bind(client_id)
        .bind(hash)
        .bind(tenant.map(TenantId::into_uuid))
        .bind(&permissions)
        .execute(&self.inner.pool)
        .await
        .map_err(|e| OAuthError::server_error(&e))?;
        Ok(secret)
    }

    async fn hash(&self, password: &str) -> Result<String, OAuthError> {
        let params = self.inner.config.password_params.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_password(&params, &password))
            .await
            .map_err(|e| OAuthError::server_error(&e))?
    }

    async fn verify_password(&self, hash: String, password: &str) -> bool {
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    fn user_from_row(row: UserRow) -> Option<(User, String)> {
        let (id, hash, tenant, roles, attributes, disabled) = row;
        if disabled {
            return None;
        }
        let attributes = match attributes {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        let tenant = tenant.and_then(|t| TenantId::from_uuid(t).ok());
        Some((
            User {
                id,
                tenant,
                roles,
                attributes,
            },
            hash,
        ))
    }

    async fn load_user(
        &self,
        column: &str,
        value: &str,
    ) -> Result<Option<(User, String)>, OAuthError> {
        let sql = if column == "id" {
            "select id, password_hash, bound_tenant_id, roles, attributes, disabled_at is not null
               from arq_auth_users where id::text = $1"
        } else {
            "select id, password_hash, bound_tenant_id, roles, attributes, disabled_at is not null
               from arq_auth_users where username = $1"
        };
        let row: Option<UserRow> = sqlx::query_as(sql)
            .bind(value)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| OAuthError::server_error(&e))?;
        Ok(row.and_then(Self::user_from_row))
    }

    /// The tenant the token is for and the roles there: `requested`, else the bound tenant,
    /// else the only tenant the user holds roles in, else none (the account's own roles).
    async fn session(
        &self,
        user: User,
        requested: Option<TenantId>,
    ) -> Result<Session, OAuthError> {
        let subject = user.id.to_string();
        let no_access = || OAuthError::new("invalid_grant", "the user has no role in that tenant");
        let storage = |e: crate::RoleError| OAuthError::server_error(&e);
        let (tenant, roles) = match (requested, user.tenant) {
            // A bound account signs in to its own tenant only.
            (Some(t), Some(bound)) if t != bound => return Err(no_access()),
            (_, Some(bound)) => {
                let mut roles = user.roles.clone();
                for role in self
                    .inner
                    .roles
                    .roles_in(&subject, bound)
                    .await
                    .map_err(storage)?
                {
                    if !roles.contains(&role) {
                        roles.push(role);
                    }
                }
                (Some(bound), roles)
            }
            (Some(t), None) => {
                let roles = self
                    .inner
                    .roles
                    .roles_in(&subject, t)
                    .await
                    .map_err(storage)?;
                if roles.is_empty() {
                    return Err(no_access());
                }
                (Some(t), roles)
            }
            (None, None) => {
                let mut tenants = self
                    .inner
                    .roles
                    .tenants_of(&subject)
                    .await
                    .map_err(storage)?;
                match (tenants.len(), tenants.pop_first()) {
                    (1, Some((t, roles))) => (Some(t), roles),
                    _ => (None, user.roles.clone()),
                }
            }
        };
        Ok(Session {
            user,
            tenant,
            roles,
        })
    }

    fn access_token(&self, session: &Session, amr: &[String]) -> Result<String, OAuthError> {
        let c = &self.inner.config;
        let user = &session.user;
        let mut claims = AccessClaims::new(
            &c.issuer,
            user.id.to_string(),
            &c.audience,
            unix_now(),
            c.access_ttl.as_secs(),
        )
        .with_roles(session.roles.iter().cloned())
        .with_amr(amr.iter().cloned());
        claims.tid = session.tenant;
        claims.attrs.clone_from(&user.attributes);
        self.inner
            .keys
            .sign(&claims)
            .map_err(|e| OAuthError::server_error(&e))
    }

    async fn tokens_for(
        &self,
        session: &Session,
        amr: Vec<String>,
    ) -> Result<TokenResponse, OAuthError> {
        let access_token = self.access_token(session, &amr)?;
        let refresh = self
            .inner
            .refresh
            .issue(&session.user.id.to_string(), session.tenant, &amr)
            .await
            .map_err(|e| OAuthError::server_error(&e))?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in: self.inner.config.access_ttl.as_secs(),
            refresh_token: Some(refresh.token),
            scope: None,
        })
    }

    /// The `password` grant, for `tenant` if given (see the module docs). A user with a second
    /// factor gets `mfa_required` (with an `mfa_token` and the `mfa_methods`) instead of tokens.
    pub async fn password_login(
        &self,
        username: &str,
        password: &str,
        tenant: Option<TenantId>,
    ) -> Result<TokenResponse, OAuthError> {
        let found = self.load_user("username", username).await?;
        let (user, hash) = match found {
            Some((user, hash)) => (Some(user), hash),
            None => (None, self.inner.dummy_hash.clone()),
        };
        let ok = self.verify_password(hash, password).await;
        let (Some(user), true) = (user, ok) else {
            return Err(OAuthError::invalid_grant());
        };
        let session = self.session(user, tenant).await?;
        let factors = self
            .inner
            .mfa
            .factors(&session.user.id.to_string())
            .await
            .map_err(|e| OAuthError::server_error(&e))?;
        if factors.required() {
            let mut methods = Vec::new();
            if factors.totp {
                methods.push("otp");
            }
            if self.inner.otp_sender.is_some() {
                if factors.email {
                    methods.push("email");
                }
                if factors.sms {
                    methods.push("sms");
                }
            } else if !factors.totp {
                tracing::warn!(
                    "a user's only second factor is email/SMS but the issuer has no OtpSender"
                );
            }
            if factors.recovery_codes > 0 {
                methods.push("recovery_code");
            }
            let mfa_token = random_secret();
            let pending = PendingMfa {
                session,
                factors,
                expires: std::time::Instant::now() + self.inner.config.mfa_challenge_ttl,
                failures: 0,
                sends: 0,
                sent: None,
            };
            self.inner
                .challenges
                .insert(mfa_token.clone(), Arc::new(pending));
            let mut e = OAuthError::new(
                "mfa_required",
                "a second factor is required: use the mfa grant with this mfa_token",
            );
            e.mfa_token = Some(mfa_token);
            e.mfa_methods = methods;
            return Err(e);
        }
        self.tokens_for(&session, vec!["pwd".to_owned()]).await
    }

    /// Takes the pending login out of the map (so two requests cannot both complete it).
    fn take_pending(&self, mfa_token: &str) -> Result<PendingMfa, OAuthError> {
        self.inner
            .challenges
            .remove(mfa_token)
            .filter(|p| p.expires > std::time::Instant::now())
            .map(Arc::unwrap_or_clone)
            .ok_or_else(|| OAuthError::new("invalid_grant", "the mfa_token is unknown or expired"))
    }

    /// Puts a pending login back after a failed attempt, unless it has used up its attempts.
    fn put_back(&self, mfa_token: &str, mut pending: PendingMfa, failed: bool) {
        if failed {
            pending.failures += 1;
        }
        if pending.failures < MFA_MAX_FAILURES {
            self.inner
                .challenges
                .insert(mfa_token.to_owned(), Arc::new(pending));
        }
    }

    /// Sends a one-time code over `channel` to the pending login's confirmed destination.
    pub async fn send_mfa_code(
        &self,
        mfa_token: &str,
        channel: OtpChannel,
    ) -> Result<MfaCodeSent, OAuthError> {
        let mut pending = self.take_pending(mfa_token)?;
        let enrolled = match channel {
            OtpChannel::Email => pending.factors.email,
            OtpChannel::Sms => pending.factors.sms,
        };
        let refuse = |description: &str| OAuthError::new("invalid_request", description);
        let result = match (&self.inner.otp_sender, enrolled) {
            (None, _) => Err(refuse("this issuer does not send codes by email or SMS")),
            (_, false) => Err(refuse(
                "the user has no confirmed destination for that channel",
            )),
            _ if pending.sends >= MFA_MAX_SENDS => Err(refuse(
                "too many codes sent for this mfa_token; sign in again",
            )),
            (Some(sender), true) => self.send_code(&mut pending, channel, sender.as_ref()).await,
        };
        self.put_back(mfa_token, pending, false);
        result
    }

    async fn send_code(
        &self,
        pending: &mut PendingMfa,
        channel: OtpChannel,
        sender: &dyn OtpSender,
    ) -> Result<MfaCodeSent, OAuthError> {
        let mfa = &self.inner.mfa;
        let subject = pending.session.user.id.to_string();
        let destination = mfa
            .otp_destination(&subject, channel)
            .await
            .map_err(|e| OAuthError::server_error(&e))?
            .ok_or_else(|| {
                OAuthError::new(
                    "invalid_request",
                    "the user has no confirmed destination for that channel",
                )
            })?;
        pending.sends += 1;
        let challenge = match mfa.send_otp(&subject, channel, &destination, sender).await {
            Ok(id) => id,
            Err(MfaError::Send(e)) => {
                tracing::warn!(error = %e, channel = channel.as_str(), "one-time code not sent");
                return Err(OAuthError::new(
                    "temporarily_unavailable",
                    "the code could not be sent; try again or use another factor",
                ));
            }
            Err(e) => return Err(OAuthError::server_error(&e)),
        };
        // A new code replaces the previous one for this login.
        pending.sent = Some((channel, challenge));
        Ok(MfaCodeSent {
            channel: channel.as_str(),
            sent_to: mask_destination(&destination),
            expires_in: mfa.otp_ttl().as_secs(),
        })
    }

    /// Completes an `mfa_required` login with a second factor. The `mfa_token` is consumed by
    /// the first success; wrong codes count, and the fifth drops it.
    pub async fn complete_mfa(
        &self,
        mfa_token: &str,
        factor: MfaFactor<'_>,
    ) -> Result<TokenResponse, OAuthError> {
        let pending = self.take_pending(mfa_token)?;
        let subject = pending.session.user.id.to_string();
        let mfa = &self.inner.mfa;
        let (result, amr) = match factor {
            MfaFactor::Totp(code) => (mfa.verify_totp(&subject, code).await, "otp"),
            MfaFactor::RecoveryCode(code) => (mfa.use_recovery_code(&subject, code).await, ""),
            MfaFactor::Otp { channel, code } => match pending.sent {
                Some((sent_over, challenge)) if sent_over == channel => (
                    mfa.verify_otp_on(challenge, &subject, channel, code).await,
                    channel.amr(),
                ),
                // No code went out over this channel for this login.
                _ => (Err(MfaError::WrongChannel), channel.amr()),
            },
        };
        match result {
            Ok(()) => {
                let amr = ["pwd", amr, "mfa"]
                    .into_iter()
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect();
                self.tokens_for(&pending.session, amr).await
            }
            Err(MfaError::Storage(e)) => {
                self.put_back(mfa_token, pending, false);
                Err(OAuthError::server_error(&e))
            }
            Err(e) => {
                self.put_back(mfa_token, pending, true);
                let description = match e {
                    MfaError::WrongChannel => "no code was sent over that channel for this login",
                    MfaError::Expired => "the code has expired; request a new one",
                    MfaError::TooManyAttempts => {
                        "too many attempts on this code; request a new one"
                    }
                    _ => "the second factor is not valid",
                };
                Err(OAuthError::new("invalid_grant", description))
            }
        }
    }

    /// The `refresh_token` grant: rotates the refresh token and issues a fresh access token with
    /// the user's current roles. Reuse of a rotated token revokes the family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, OAuthError> {
        let grant = match self.inner.refresh.rotate(refresh_token).await {
            Ok(grant) => grant,
            Err(RefreshError::Storage(e)) => return Err(OAuthError::server_error(&e)),
            Err(e) => return Err(OAuthError::new("invalid_grant", e.to_string())),
        };
        let Some((user, _)) = self.load_user("id", &grant.subject).await? else {
            // The user was disabled or deleted: end the session.
            let _ = self.inner.refresh.logout(&grant.next.token).await;
            return Err(OAuthError::invalid_grant());
        };
        // Roles are read again, so a revoked assignment ends with the next refresh.
        let session = match grant.tenant {
            None => Ok(Session {
                roles: user.roles.clone(),
                user,
                tenant: None,
            }),
            Some(tenant) => self.session(user, Some(tenant)).await,
        };
        let session = match session {
            Ok(session) => session,
            Err(OAuthError {
                error: "invalid_grant",
                ..
            }) => {
                // No longer a member of the tenant the session was for: end the session.
                let _ = self.inner.refresh.logout(&grant.next.token).await;
                return Err(OAuthError::invalid_grant());
            }
            Err(e) => return Err(e),
        };
        Ok(TokenResponse {
            access_token: self.access_token(&session, &grant.amr)?,
            token_type: "Bearer".to_owned(),
            expires_in: self.inner.config.access_ttl.as_secs(),
            refresh_token: Some(grant.next.token),
            scope: None,
        })
    }

    /// Logout: revokes the refresh token's family.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), OAuthError> {
        self.inner
            .refresh
            .logout(refresh_token)
            .await
            .map(|_| ())
            .map_err(|e| OAuthError::server_error(&e))
    }

    /// Logout everywhere: revokes every refresh token of `subject`.
    pub async fn logout_everywhere(&self, subject: &str) -> Result<u64, OAuthError> {
        self.inner
            .refresh
            .logout_everywhere(subject)
            .await
            .map_err(|e| OAuthError::server_error(&e))
    }

    /// The `client_credentials` grant for service accounts. `scope` (space-separated
    /// permissions) must be a subset of the client's; the token carries the requested scope, or
    /// all the client's permissions when none is asked for. No refresh token.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let row: Option<(String, Option<Uuid>, Vec<String>, bool)> = sqlx::query_as(
            "select secret_hash, bound_tenant_id, permissions, disabled_at is not null
               from arq_auth_clients where client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(|e| OAuthError::server_error(&e))?;
        let (hash, tenant, permissions, disabled) = match row {
            Some(r) => r,
            None => (self.inner.dummy_hash.clone(), None, Vec::new(), true),
        };
        let ok = self.verify_password(hash, client_secret).await;
        if !ok || disabled {
            return Err(OAuthError::new(
                "invalid_client",
                "client authentication failed",
            ));
        }
        let granted: Vec<String> = match scope.map(str::split_whitespace) {
            Some(requested) => {
                let requested: Vec<String> = requested.map(str::to_owned).collect();
                if let Some(extra) = requested.iter().find(|p| !permissions.contains(p)) {
                    return Err(OAuthError::new(
                        "invalid_scope",
                        format!("the client may not request {extra}"),
                    ));
                }
                requested
            }
            None => permissions,
        };
        let c = &self.inner.config;
        let mut claims = AccessClaims::new(
            &c.issuer,
            format!("client:{client_id}"),
            &c.audience,
            unix_now(),
            c.access_ttl.as_secs(),
        )
        .with_permissions(granted.iter().cloned());
        claims.tid = tenant.and_then(|t| TenantId::from_uuid(t).ok());
        let access_token = self
            .inner
            .keys
            .sign(&claims)
            .map_err(|e| OAuthError::server_error(&e))?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in: c.access_ttl.as_secs(),
            refresh_token: None,
            scope: Some(granted.join(" ")),
        })
    }

    /// The issuer's HTTP routes (see the module docs).
    pub fn router(&self) -> Router {
        let discovery = serde_json::json!({
            "issuer": self.inner.config.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.inner.config.issuer.trim_end_matches('/')),
            "token_endpoint": format!("{}/oauth/token", self.inner.config.issuer.trim_end_matches('/')),
            "revocation_endpoint": format!("{}/oauth/revoke", self.inner.config.issuer.trim_end_matches('/')),
            "grant_types_supported": ["password", "refresh_token", "client_credentials", MFA_GRANT_TYPE],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        Router::new()
            .route("/oauth/token", post(token_endpoint))
            .route("/oauth/revoke", post(revoke_endpoint))
            .route("/oauth/mfa/challenge", post(mfa_challenge_endpoint))
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { Json(discovery) }),
            )
            .with_state(self.clone())
            .merge(self.inner.keys.jwks_router())
    }
}

/// Enough of an address or number for the user to recognise, not enough to harvest.
fn mask_destination(destination: &str) -> String {
    let dots = |n: usize| "\u{2022}".repeat(n.clamp(3, 8));
    if let Some((local, domain)) = destination.split_once('@') {
        let first: String = local.chars().take(1).collect();
        format!(
            "{first}{}@{domain}",
            dots(local.chars().count().saturating_sub(1))
        )
    } else {
        let chars: Vec<char> = destination.chars().collect();
        let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
        format!("{}{tail}", dots(chars.len().saturating_sub(4)))
    }
}

fn hash_password(params: &Params, password: &str) -> Result<String, OAuthError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| OAuthError::server_error(&e))?;
    Argon2::new(ArgonAlgorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| OAuthError::server_error(&e))
}

/// Client credentials from `Authorization: Basic` (client_secret_basic) or the form
/// (client_secret_post).
fn client_auth(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(encoded) = value.strip_prefix("Basic ")
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (id, secret) = text.split_once(':')?;
        return Some((id.to_owned(), secret.to_owned()));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

async fn token_endpoint(
    State(issuer): State<TokenIssuer>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return OAuthError::new(
            "invalid_request",
            "send an application/x-www-form-urlencoded body",
        )
        .into_response();
    };
    let param = |name: &str| form.get(name).map(String::as_str);
    let missing = |name: &str| {
        OAuthError::new(
            "invalid_request",
            format!("the parameter {name} is required"),
        )
    };
    let result = match param("grant_type") {
        Some("password") => match (param("username"), param("password")) {
            (Some(u), Some(p)) => match param("tenant").map(parse_tenant) {
                Some(Err(e)) => Err(e),
                Some(Ok(t)) => issuer.password_login(u, p, Some(t)).await,
                None => issuer.password_login(u, p, None).await,
            },
            (None, _) => Err(missing("username")),
            (_, None) => Err(missing("password")),
        },
        Some("refresh_token") => match param("refresh_token") {
            Some(t) => issuer.refresh(t).await,
            None => Err(missing("refresh_token")),
        },
        Some("client_credentials") => match client_auth(&headers, &form) {
            Some((id, secret)) => {
                issuer
                    .client_credentials(&id, &secret, param("scope"))
                    .await
            }
            None => Err(OAuthError::new(
                "invalid_client",
                "client authentication is required",
            )),
        },
        Some(MFA_GRANT_TYPE) => match (param("mfa_token"), mfa_factor(&form)) {
            (Some(t), Ok(factor)) => issuer.complete_mfa(t, factor).await,
            (None, _) => Err(missing("mfa_token")),
            (_, Err(e)) => Err(e),
        },
        Some(_) => Err(OAuthError::new(
            "unsupported_grant_type",
            "supported: password, refresh_token, client_credentials, and the mfa grant",
        )),
        None => Err(missing("grant_type")),
    };
    match result {
        Ok(tokens) => tokens.into_response(),
        Err(e) => e.into_response(),
    }
}

fn parse_tenant(value: &str) -> Result<TenantId, OAuthError> {
    Uuid::parse_str(value)
        .ok()
        .and_then(|u| TenantId::from_uuid(u).ok())
        .ok_or_else(|| OAuthError::new("invalid_request", "tenant must be a tenant id"))
}

fn parse_channel(value: Option<&str>) -> Result<OtpChannel, OAuthError> {
    value
        .and_then(OtpChannel::parse)
        .ok_or_else(|| OAuthError::new("invalid_request", "channel must be email or sms"))
}

/// The factor of an mfa grant: `otp` (with `channel` for an emailed or texted code) or
/// `recovery_code`.
fn mfa_factor(form: &HashMap<String, String>) -> Result<MfaFactor<'_>, OAuthError> {
    let param = |name: &str| form.get(name).map(String::as_str);
    match (param("otp"), param("channel"), param("recovery_code")) {
        (Some(code), None, None) => Ok(MfaFactor::Totp(code)),
        (Some(code), channel @ Some(_), None) => Ok(MfaFactor::Otp {
            channel: parse_channel(channel)?,
            code,
        }),
        (None, None, Some(code)) => Ok(MfaFactor::RecoveryCode(code)),
        _ => Err(OAuthError::new(
            "invalid_request",
            "send otp (with channel for an email or SMS code) or recovery_code with the mfa_token",
        )),
    }
}

async fn mfa_challenge_endpoint(
    State(issuer): State<TokenIssuer>,
    form: Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return OAuthError::new(
            "invalid_request",
            "send an application/x-www-form-urlencoded body",
        )
        .into_response();
    };
    let Some(mfa_token) = form.get("mfa_token") else {
        return OAuthError::new("invalid_request", "the parameter mfa_token is required")
            .into_response();
    };
    let result = match parse_channel(form.get("channel").map(String::as_str)) {
        Ok(channel) => issuer.send_mfa_code(mfa_token, channel).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(sent) => {
            let mut response = Json(sent).into_response();
            no_store(&mut response);
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn revoke_endpoint(
    State(issuer): State<TokenIssuer>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // RFC 7009 §2.2: answer 200 whether or not the token was known.
    match form.get("token") {
        Some(token) => match issuer.logout(token).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => e.into_response(),
        },
        None => {
            OAuthError::new("invalid_request", "the parameter token is required").into_response()
        }
    }
}
