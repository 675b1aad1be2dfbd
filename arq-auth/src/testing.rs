//! Tokens for tests: an issuer that signs access tokens with a test key and builds the
//! [`Verifier`] that accepts them, keys served statically (no network, no JWKS endpoint).
//!
//! A service's in-process tests build their app with [`TestIssuer::verifier_for`] (the
//! service's own `[auth]` and `[rbac]`, so RBAC and the issuer/audience checks are the real
//! ones) and call it with [`TestIssuer::token`] or a [`TestToken`] built by
//! [`TestIssuer::claims`] (no tenant, another expiry, `amr`, foreign audience, permissions, ABAC
//! attributes, ...). Pair it with arq-core's `testing::TestClient` to send the requests.
//!
//! The key is [`TestIssuer::TEST_KEY_PEM`], a 2048-bit RSA key that is public (it is in this
//! crate's source) and so must never be trusted outside tests; or the caller's own key
//! ([`TestIssuer::with_pem`]), such as the `tests/keys/test-signing-key.pem` that `arq new
//! service` generates and that scripts sign tokens with against a running service.
//!
//! These are test helpers: a token that cannot be signed panics with the reason instead of
//! returning an error, since a test can do nothing else with it.
#![allow(clippy::panic, reason = "test helpers fail the test with the reason")]

use std::sync::Arc;
use std::time::Duration;

use arq_core::TenantId;
use serde_json::Value;

use crate::claims::unix_now;
use crate::{
    AccessClaims, AuthSettings, AuthSettingsError, ConfigError, JwkSet, KeyRing, Rbac, RbacConfig,
    SigningError, SigningKey, SigningKeyRing, StaticJwks, Verifier, VerifierConfig,
};

/// The lifetime of the tokens a [`TestIssuer`] signs unless told otherwise: five minutes, like
/// a short-lived access token, long enough for any test.
pub const DEFAULT_TTL_SECS: u64 = 300;

/// How often the verifier's key ring may look at the (static) keys again; nothing changes them.
const REFRESH: Duration = Duration::from_secs(30);

/// Signs access tokens for tests and builds the verifiers that accept them.
///
/// Clones share the signing keys.
///
/// # Example
/// ```
/// use arq_auth::testing::TestIssuer;
/// use arq_auth::{AuthSettings, RbacConfig};
/// use arq_core::TenantId;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // A service's [auth] section, as its config/default.toml has it.
/// let settings = AuthSettings {
///     algorithms: vec!["RS256".into()],
///     issuer: "http://127.0.0.1:3001/auth".into(),
///     audience: "arq-platform".into(),
///     leeway_secs: 30,
///     jwks_url: None,
/// };
/// let issuer = TestIssuer::for_settings(&settings);
/// // The verifier the app under test is built with: keys from the issuer, RBAC from [rbac].
/// let verifier = issuer.verifier_for(&settings, &RbacConfig::default()).unwrap();
///
/// let tenant = TenantId::generate();
/// let principal = verifier.verify(&issuer.token("alice", tenant, ["member"])).await.unwrap();
/// assert_eq!(principal.subject(), "alice");
/// assert_eq!(principal.tenant(), Some(tenant));
///
/// // Anything else through the builder: no tenant, an admin's second factor, an expired token.
/// let tenantless = issuer.claims("bob").sign();
/// assert_eq!(verifier.verify(&tenantless).await.unwrap().tenant(), None);
/// let admin = issuer.claims("carol").tenant(tenant).roles(["admin"]).amr(["pwd", "otp"]).sign();
/// assert!(verifier.verify(&admin).await.is_ok());
/// let expired = issuer.claims("dave").issued_secs_ago(3_600).sign();
/// assert!(verifier.verify(&expired).await.is_err());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct TestIssuer {
    keys: SigningKeyRing,
    issuer: String,
    audience: String,
}

impl TestIssuer {
    /// The built-in test key (PKCS#8 PEM). Public: never trust it outside tests.
    pub const TEST_KEY_PEM: &'static [u8] = include_bytes!("testing/test-signing-key.pem");

    /// The key id tokens carry: `test-key`, for the built-in key and [`with_pem`](Self::with_pem).
    pub const KEY_ID: &'static str = "test-key";

    /// Tokens from `issuer` for `audience`, signed with the built-in test key.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let key = SigningKey::from_rsa_pem(Self::KEY_ID, Self::TEST_KEY_PEM)
            .unwrap_or_else(|e| panic!("the built-in test key does not load: {e}"));
        Self {
            keys: SigningKeyRing::new(key),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// Tokens with the issuer and audience of a service's `[auth]` section.
    pub fn for_settings(settings: &AuthSettings) -> Self {
        Self::new(&settings.issuer, &settings.audience)
    }

    /// Signs with the RSA private key in `pem` (PKCS#1 or PKCS#8) instead, under
    /// [`KEY_ID`](Self::KEY_ID): a service's committed `tests/keys/test-signing-key.pem`.
    pub fn with_pem(self, pem: &[u8]) -> Result<Self, SigningError> {
        Ok(self.with_key(SigningKey::from_rsa_pem(Self::KEY_ID, pem)?))
    }

    /// Signs with `key` instead (its own key id).
    pub fn with_key(self, key: SigningKey) -> Self {
        Self {
            keys: SigningKeyRing::new(key),
            ..self
        }
    }

    /// The `iss` of the tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of the tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The signing keys (to rotate them, or to serve them at a JWKS endpoint).
    pub fn keys(&self) -> &SigningKeyRing {
        &self.keys
    }

    /// The public keys, as a JWKS endpoint would publish them.
    pub fn jwks(&self) -> JwkSet {
        self.keys.jwks()
    }

    /// A key ring holding the public keys as they are now (a later rotation is not seen).
    pub fn key_ring(&self) -> KeyRing {
        KeyRing::new(StaticJwks(self.jwks()), REFRESH)
    }

    /// A verifier with `config` and `rbac` that trusts this issuer's keys.
    pub fn verifier(&self, config: VerifierConfig, rbac: Rbac) -> Result<Verifier, ConfigError> {
        Verifier::with_rbac(config, Arc::new(self.key_ring()), Arc::new(rbac))
    }

    /// The verifier a service builds from its `[auth]` and `[rbac]`
    /// ([`AuthSettings::verifier`]), with this issuer's keys instead of fetched ones.
    pub fn verifier_for(
        &self,
        settings: &AuthSettings,
        rbac: &RbacConfig,
    ) -> Result<Verifier, AuthSettingsError> {
        let rbac = Rbac::from_config(rbac)?;
        Ok(self.verifier(settings.verifier_config()?, rbac)?)
    }

    /// A token for `subject` in `tenant` with `roles`, valid for [`DEFAULT_TTL_SECS`] from now.
    pub fn token<I, S>(&self, subject: &str, tenant: TenantId, roles: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.claims(subject).tenant(tenant).roles(roles).sign()
    }

    /// A token to build for `subject`: no tenant, no roles and valid for [`DEFAULT_TTL_SECS`]
    /// from now until told otherwise.
    pub fn claims(&self, subject: &str) -> TestToken<'_> {
        TestToken {
            issuer: self,
            claims: AccessClaims::new(
                &self.issuer,
                subject,
                &self.audience,
                unix_now(),
                DEFAULT_TTL_SECS,
            ),
        }
    }

    /// Signs `claims` as they are.
    ///
    /// # Panics
    /// When signing fails (it does not with a loaded RSA key).
    pub fn sign(&self, claims: &AccessClaims) -> String {
        self.keys
            .sign(claims)
            .unwrap_or_else(|e| panic!("the test issuer could not sign a token: {e}"))
    }
}

/// One token being built by [`TestIssuer::claims`]; [`sign`](Self::sign) it.
#[derive(Debug, Clone)]
#[must_use = "a token is only made by `sign`"]
pub struct TestToken<'i> {
    issuer: &'i TestIssuer,
    claims: AccessClaims,
}

impl TestToken<'_> {
    /// Sets the home tenant (`tid`): the workspace the user signed in to.
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.claims = self.claims.with_tenant(tenant);
        self
    }

    /// Sets the roles in the home tenant.
    pub fn roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.claims = self.claims.with_roles(roles);
        self
    }

    /// Adds role assignments in another tenant.
    pub fn tenant_roles<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        tenant: TenantId,
        roles: I,
    ) -> Self {
        self.claims = self.claims.with_tenant_roles(tenant, roles);
        self
    }

    /// Sets permissions granted directly, beyond the roles'.
    pub fn permissions<I: IntoIterator<Item = S>, S: Into<String>>(mut self, perms: I) -> Self {
        self.claims = self.claims.with_permissions(perms);
        self
    }

    /// Sets the authentication methods (`amr`): `["pwd", "otp"]` for a second factor, which
    /// arq-auth requires for `admin:*` permissions.
    pub fn amr<I: IntoIterator<Item = S>, S: Into<String>>(mut self, amr: I) -> Self {
        self.claims = self.claims.with_amr(amr);
        self
    }

    /// Sets an ABAC attribute.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.claims = self.claims.with_attribute(name, value);
        self
    }

    /// Sets the audience (`aud`), e.g. another service's, to test that it is refused.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.claims.aud = vec![audience.into()];
        self
    }

    /// Sets the issuer (`iss`).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.claims.iss = issuer.into();
        self
    }

    /// Makes the token valid for `secs` from when it was issued.
    pub fn ttl_secs(mut self, secs: u64) -> Self {
        self.claims.exp = self.claims.iat.saturating_add(secs);
        self
    }

    /// Moves `iat`, `nbf` and `exp` `secs` into the past, keeping the lifetime: with more than
    /// the lifetime plus the verifier's leeway, the token has expired.
    pub fn issued_secs_ago(mut self, secs: u64) -> Self {
        let ttl = self.claims.exp.saturating_sub(self.claims.iat);
        self.claims.iat = self.claims.iat.saturating_sub(secs);
        self.claims.nbf = self.claims.iat;
        self.claims.exp = self.claims.iat.saturating_add(ttl);
        self
    }

    /// Changes anything else in the claims.
    pub fn map(mut self, f: impl FnOnce(AccessClaims) -> AccessClaims) -> Self {
        self.claims = f(self.claims);
        self
    }

    /// The claims as they would be signed.
    pub fn into_claims(self) -> AccessClaims {
        self.claims
    }

    /// The signed token.
    ///
    /// # Panics
    /// When signing fails (see [`TestIssuer::sign`]).
    pub fn sign(self) -> String {
        self.issuer.sign(&self.claims)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::{AuthError, RoleConfig};

    const ISS: &str = "http://127.0.0.1:3001/auth";
    const AUD: &str = "arq-platform";

    fn settings() -> AuthSettings {
        AuthSettings {
            algorithms: vec!["RS256".into()],
            issuer: ISS.into(),
            audience: AUD.into(),
            leeway_secs: 30,
            jwks_url: None,
        }
    }

    /// `[rbac]` as the services write it: viewer ⊂ member, each with its permission.
    fn rbac() -> RbacConfig {
        let role = |inherits: Option<&str>, perm: &str| RoleConfig {
            inherits: inherits.map(str::to_owned),
            permissions: vec![perm.to_owned()],
        };
        RbacConfig {
            roles: BTreeMap::from([
                ("viewer".to_owned(), role(None, "read:items")),
                ("member".to_owned(), role(Some("viewer"), "write:items")),
            ]),
            ..RbacConfig::default()
        }
    }

    #[tokio::test]
    async fn tokens_verify_with_the_services_rbac() {
        let issuer = TestIssuer::for_settings(&settings());
        assert_eq!((issuer.issuer(), issuer.audience()), (ISS, AUD));
        let verifier = issuer.verifier_for(&settings(), &rbac()).unwrap();
        let tenant = TenantId::generate();
        let p = verifier
            .verify(&issuer.token("alice", tenant, ["member"]))
            .await
            .unwrap();
        assert_eq!(p.subject(), "alice");
        assert_eq!(p.tenant(), Some(tenant));
        assert_eq!(p.roles(), ["member"]);
        assert!(p.has_permission("read:items") && p.has_permission("write:items"));
        let expires_in = p.expires_at() - unix_now();
        assert!((DEFAULT_TTL_SECS - 5..=DEFAULT_TTL_SECS).contains(&expires_in));
    }

    #[tokio::test]
    async fn the_builder_sets_every_claim_the_services_need() {
        let issuer = TestIssuer::new(ISS, AUD);
        let verifier = issuer
            .verifier(VerifierConfig::new(ISS, AUD), Rbac::standard())
            .unwrap();
        let (home, other) = (TenantId::generate(), TenantId::generate());

        let p = verifier
            .verify(&issuer.claims("svc-reporter").sign())
            .await
            .unwrap();
        assert_eq!((p.tenant(), p.roles()), (None, &[] as &[String]));

        let token = issuer
            .claims("carol")
            .tenant(home)
            .roles(["admin"])
            .tenant_roles(other, ["viewer"])
            .permissions(["export:reports"])
            .amr(["pwd", "otp"])
            .attribute("region", "eu")
            .ttl_secs(60)
            .sign();
        let p = verifier.verify(&token).await.unwrap();
        assert!(p.has_mfa());
        assert_eq!(p.amr(), ["pwd", "otp"]);
        assert_eq!(p.roles_in(other), ["viewer"]);
        assert!(p.has_permission("export:reports") && p.has_permission("admin:workspace"));
        assert_eq!(p.attribute("region"), Some(&json!("eu")));
        assert!(p.expires_at() <= unix_now() + 60);

        let claims = issuer
            .claims("dave")
            .map(|c| c.with_roles(["x"]))
            .into_claims();
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_slice()),
            (ISS, &[AUD.to_owned()][..])
        );
        assert_eq!(claims.roles, ["x"]);
    }

    #[tokio::test]
    async fn foreign_expired_and_otherwise_signed_tokens_are_refused() {
        let issuer = TestIssuer::new(ISS, AUD);
        let verifier = issuer.verifier_for(&settings(), &rbac()).unwrap();
        let other_key = TestIssuer::new(ISS, AUD)
            .with_pem(include_bytes!("../tests/keys/key1.pem"))
            .unwrap();
        for (token, why) in [
            (
                issuer.claims("eve").audience("billing").sign(),
                AuthError::BadAudience,
            ),
            (
                issuer.claims("eve").issuer("https://evil.example").sign(),
                AuthError::BadIssuer,
            ),
            // Past the lifetime and the 30 s leeway.
            (
                issuer
                    .claims("eve")
                    .issued_secs_ago(DEFAULT_TTL_SECS + 31)
                    .sign(),
                AuthError::Expired,
            ),
            // The same key id, another key.
            (other_key.claims("eve").sign(), AuthError::BadSignature),
        ] {
            let refused = verifier.verify(&token).await.unwrap_err();
            assert_eq!(refused.to_string(), why.to_string());
        }
        // Within the leeway it still passes: issued_secs_ago keeps the lifetime.
        let late = issuer
            .claims("eve")
            .issued_secs_ago(DEFAULT_TTL_SECS + 10)
            .sign();
        assert!(verifier.verify(&late).await.is_ok());
    }

    #[tokio::test]
    async fn a_pem_key_replaces_the_built_in_one() {
        let pem = include_bytes!("../tests/keys/key2.pem");
        let issuer = TestIssuer::new(ISS, AUD).with_pem(pem).unwrap();
        let own = SigningKey::from_rsa_pem(TestIssuer::KEY_ID, pem).unwrap();
        let jwks = issuer.jwks();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(&jwks.keys[0], own.public_jwk());
        assert_eq!(issuer.keys().active_kid(), "test-key");
        let verifier = issuer.verifier_for(&settings(), &rbac()).unwrap();
        let p = verifier
            .verify(&issuer.token("alice", TenantId::generate(), ["viewer"]))
            .await;
        assert!(p.is_ok());

        let other =
            SigningKey::from_rsa_pem("k-2", include_bytes!("../tests/keys/key1.pem")).unwrap();
        assert_eq!(issuer.with_key(other).keys().active_kid(), "k-2");
    }

    #[test]
    fn bad_keys_and_settings_are_errors_that_say_why() {
        let e = TestIssuer::new(ISS, AUD)
            .with_pem(b"not a key")
            .unwrap_err();
        assert!(e.to_string().contains("test-key"), "{e}");
        let issuer = TestIssuer::new(ISS, AUD);
        let bad = AuthSettings {
            algorithms: vec!["RS257".into()],
            ..settings()
        };
        let e = issuer.verifier_for(&bad, &rbac()).unwrap_err();
        assert!(e.to_string().contains("RS257"), "{e}");
        let e = issuer
            .verifier(VerifierConfig::new("", AUD), Rbac::standard())
            .unwrap_err();
        assert_eq!(e, ConfigError::MissingIssuerOrAudience);
    }
}
