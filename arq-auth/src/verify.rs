//! Access-token verification: strict RS256 validation against a [`KeyRing`], with a cache of
//! verified tokens that never outlives them.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use moka::Expiry;

use crate::claims::{AccessClaims, unix_now};
use crate::error::AuthError;
use crate::jwks::KeyRing;
use crate::principal::Principal;
use crate::rbac::Rbac;

/// The largest clock skew [`VerifierConfig`] accepts.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// What a [`Verifier`] accepts.
///
/// Strict by default: `iss`, `aud`, `exp` and `nbf` are required and checked, the only algorithm
/// is RS256, the clock skew is 30 s, tokens over 8 KiB are refused unread.
///
/// # Example
/// ```
/// use arq_auth::VerifierConfig;
///
/// let config = VerifierConfig::new("https://auth.arq.dev", "https://api.arq.dev").with_leeway_secs(10);
/// assert_eq!(config.leeway_secs(), 10);
/// ```
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    leeway_secs: u64,
    max_token_bytes: usize,
    cache_capacity: u64,
}

/// Why a [`VerifierConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An HMAC algorithm was configured: with public keys from a JWKS that would let anyone
    /// holding the public key forge tokens.
    #[error("{0:?} is a shared-secret algorithm and is never accepted; use RS256, PS256 or ES256")]
    SymmetricAlgorithm(Algorithm),
    /// No algorithm was configured.
    #[error("at least one algorithm must be configured (RS256 is the default)")]
    NoAlgorithm,
    /// The skew is above [`MAX_LEEWAY_SECS`].
    #[error("a clock skew of {0} s is too large; at most {MAX_LEEWAY_SECS} s is accepted")]
    LeewayTooLarge(u64),
    /// The issuer or audience is empty.
    #[error("the issuer and the audience must both be set")]
    MissingIssuerOrAudience,
}

impl VerifierConfig {
    /// Accepts RS256 tokens from `issuer` for `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            algorithms: vec![Algorithm::RS256],
            leeway_secs: 30,
            max_token_bytes: 8 * 1024,
            cache_capacity: 100_000,
        }
    }

    /// Sets the accepted algorithms (HS* are refused when the verifier is built).
    pub fn with_algorithms(mut self, algorithms: impl Into<Vec<Algorithm>>) -> Self {
        self.algorithms = algorithms.into();
        self
    }

    /// Sets the allowed clock skew for `exp` and `nbf` (at most [`MAX_LEEWAY_SECS`]).
    pub fn with_leeway_secs(mut self, secs: u64) -> Self {
        self.leeway_secs = secs;
        self
    }

    /// Sets the largest token accepted, in bytes.
    pub fn with_max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// Sets how many verified tokens are cached (0 disables the cache).
    pub fn with_cache_capacity(mut self, entries: u64) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// The allowed clock skew in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    fn validation(&self) -> Result<Validation, ConfigError> {
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err(ConfigError::MissingIssuerOrAudience);
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithm);
        }
        if let Some(alg) = self
            .algorithms
            .iter()
            .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(ConfigError::SymmetricAlgorithm(*alg));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::LeewayTooLarge(self.leeway_secs));
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.algorithms.clone_from(&self.algorithms);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.leeway = self.leeway_secs;
        Ok(v)
    }
}

/// The verified-token cache: keyed by the whole token, hashed with a keyed fast hash.
///
/// A hit must never hand out another token's principal, so the key is the token itself: the
/// hash only picks the bucket and the map compares the full token on a hit (a plain comparison
/// is enough: it runs only against a cached token whose 64-bit keyed hash already matched, and
/// the attacker knows neither the key nor the cached tokens). foldhash is ~10× faster than
/// SHA-256 or SipHash on a ~700-byte token; its seed comes from the OS CSPRNG per verifier, so
/// an attacker cannot aim collisions at one bucket, and a collision would only cost a probe.
type TokenCache = moka::sync::Cache<Arc<str>, Principal, foldhash::fast::SeedableRandomState>;

fn random_hash_state() -> foldhash::fast::SeedableRandomState {
    static SHARED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
    let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(rand::random()));
    foldhash::fast::SeedableRandomState::with_seed(rand::random(), shared)
}

/// A cache entry lives until the token's `exp` (by the wall clock at insertion), never longer.
struct UntilTokenExpiry;

impl Expiry<Arc<str>, Principal> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Principal,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.expires_at().saturating_sub(unix_now()),
        ))
    }
}

/// Verifies access tokens and turns them into [`Principal`]s.
///
/// Clones share the key ring and the cache.
///
/// # Example
/// ```
/// # tokio_test_block_on(async {
/// use std::{sync::Arc, time::Duration};
/// use arq_auth::{AccessClaims, KeyRing, SigningKey, SigningKeyRing, Verifier, VerifierConfig};
///
/// let pem = include_bytes!("../tests/keys/key1.pem");
/// let issuer = SigningKeyRing::new(SigningKey::from_rsa_pem("k1", pem).unwrap());
/// let keys = Arc::new(KeyRing::new(issuer.clone(), Duration::from_secs(30)));
/// let verifier = Verifier::new(VerifierConfig::new("https://auth.arq.dev", "https://api.arq.dev"), keys).unwrap();
///
/// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
/// let token = issuer.sign(&AccessClaims::new("https://auth.arq.dev", "user-1", "https://api.arq.dev", now, 3600)).unwrap();
/// let principal = verifier.verify(&token).await.unwrap();
/// assert_eq!(principal.subject(), "user-1");
/// assert!(verifier.verify("not.a.token").await.is_err());
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    config: VerifierConfig,
    validation: Validation,
    keys: Arc<KeyRing>,
    cache: Option<TokenCache>,
    rbac: Arc<Rbac>,
    max_token_bytes: usize,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.inner.config)
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with arq's standard roles ([`Rbac::standard`]).
    pub fn new(config: VerifierConfig, keys: Arc<KeyRing>) -> Result<Self, ConfigError> {
        Self::with_rbac(config, keys, Arc::new(Rbac::standard()))
    }

    /// A verifier that expands roles into permissions with `rbac`.
    pub fn with_rbac(
        config: VerifierConfig,
        keys: Arc<KeyRing>,
        rbac: Arc<Rbac>,
    ) -> Result<Self, ConfigError> {
        crate::crypto::ensure_provider();
        let validation = config.validation()?;
        let cache = (config.cache_capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache_capacity)
                .expire_after(UntilTokenExpiry)
                .build_with_hasher(random_hash_state())
        });
        if let Some(cache) = &cache {
            // Tokens signed by a key that left the ring must not keep passing from the cache.
            let cache = cache.clone();
            keys.on_keys_removed(move || cache.invalidate_all());
        }
        Ok(Self {
            inner: Arc::new(VerifierInner {
                validation,
                keys,
                cache,
                rbac,
                max_token_bytes: config.max_token_bytes,
                config,
            }),
        })
    }

    /// The key ring.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.inner.keys
    }

    /// The role map used to expand roles into permissions.
    pub fn rbac(&self) -> &Arc<Rbac> {
        &self.inner.rbac
    }

    /// Verifies `token` (the compact JWS, without `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let inner = &*self.inner;
        if token.len() > inner.max_token_bytes {
            return Err(AuthError::TokenTooLarge {
                max: inner.max_token_bytes,
            });
        }
        let Some(cache) = &inner.cache else {
            return self.verify_uncached(token).await;
        };
        if let Some(principal) = cache.get(token) {
            if principal.expires_at() > unix_now().saturating_sub(inner.validation.leeway) {
                return Ok(principal);
            }
            cache.invalidate(token);
        }
        let principal = self.verify_uncached(token).await?;
        cache.insert(Arc::from(token), principal.clone());
        Ok(principal)
    }

    /// Verifies `token` without consulting or filling the cache.
    pub async fn verify_uncached(&self, token: &str) -> Result<Principal, AuthError> {
        let inner = &*self.inner;
        if token.len() > inner.max_token_bytes {
            return Err(AuthError::TokenTooLarge {
                max: inner.max_token_bytes,
            });
        }
        // Only `alg` and `kid` are read here, borrowed, to pick the key; jsonwebtoken then
        // checks the whole header again. `jku`, `x5u`, `jwk` and `x5c` are ignored on purpose:
        // keys come only from the configured key ring, never from the token.
        let mut header_buf = [0u8; 768];
        let Some(header) = peek_header(token, &mut header_buf) else {
            // Let jsonwebtoken say what is wrong, so errors match its checks exactly.
            return Err(match jsonwebtoken::decode_header(token) {
                Err(e) => AuthError::from_jwt(&e),
                Ok(_) => AuthError::Malformed("the token header is not valid".to_owned()),
            });
        };
        if !inner.validation.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let key = match inner.keys.get(kid) {
            Some(key) => key,
            None => inner.keys.resolve(kid).await?,
        };
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &inner.validation)
            .map_err(|e| AuthError::from_jwt(&e))?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::MissingClaim("sub".to_owned()));
        }
        Ok(Principal::from_claims(data.claims, &inner.rbac))
    }

    /// Drops every cached verification (after revoking a token family, for instance).
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate_all();
        }
    }
}

/// The two header fields the verifier needs before the signature check.
#[derive(serde::Deserialize)]
struct HeaderPeek<'a> {
    alg: Algorithm,
    #[serde(borrow, default)]
    kid: Option<std::borrow::Cow<'a, str>>,
}

/// Decodes the header segment (at most 1 KiB) into `alg` and `kid`; `None` when it is not valid.
fn peek_header<'b>(token: &str, buf: &'b mut [u8; 768]) -> Option<HeaderPeek<'b>> {
    let (encoded, _) = token.split_once('.')?;
    if encoded.len() > 1024 {
        return None;
    }
    let n = URL_SAFE_NO_PAD.decode_slice(encoded, buf).ok()?;
    serde_json::from_slice(buf.get(..n)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SigningKey, SigningKeyRing};

    const KEY: &[u8] = include_bytes!("../tests/keys/key1.pem");

    fn setup() -> (SigningKeyRing, Verifier) {
        let ring = SigningKeyRing::new(SigningKey::from_rsa_pem("k1", KEY).unwrap());
        let keys = Arc::new(KeyRing::new(ring.clone(), Duration::ZERO));
        let verifier = Verifier::new(VerifierConfig::new("iss", "aud"), keys).unwrap();
        (ring, verifier)
    }

    #[test]
    fn cache_entries_expire_with_their_token() {
        let rbac = Rbac::standard();
        let now = unix_now();
        let p = Principal::from_claims(AccessClaims::new("iss", "u", "aud", now, 120), &rbac);
        let ttl = UntilTokenExpiry
            .expire_after_create(&Arc::from("t"), &p, std::time::Instant::now())
            .unwrap();
        assert!(ttl <= Duration::from_secs(120) && ttl >= Duration::from_secs(118));
        let past =
            Principal::from_claims(AccessClaims::new("iss", "u", "aud", now - 500, 100), &rbac);
        let ttl = UntilTokenExpiry
            .expire_after_create(&Arc::from("t"), &past, std::time::Instant::now())
            .unwrap();
        assert_eq!(ttl, Duration::ZERO);
    }

    #[tokio::test]
    async fn a_cached_principal_past_its_expiry_is_not_served() {
        let (ring, verifier) = setup();
        let now = unix_now();
        let mut claims = AccessClaims::new("iss", "u", "aud", now - 7200, 3600);
        let token = ring.sign(&claims).unwrap();
        // Plant a cache entry for this (expired) token as if it had been verified earlier.
        claims.exp = now - 3600;
        let stale = Principal::from_claims(claims, &Rbac::standard());
        let cache = verifier.inner.cache.as_ref().unwrap();
        cache.insert(Arc::from(token.as_str()), stale);
        assert!(matches!(
            verifier.verify(&token).await,
            Err(AuthError::Expired)
        ));
        assert_eq!(cache.iter().count(), 0);
    }

    #[tokio::test]
    async fn the_cache_serves_repeat_tokens_and_keys_on_the_whole_token() {
        let (ring, verifier) = setup();
        let token = ring
            .sign(&AccessClaims::new("iss", "u", "aud", unix_now(), 60))
            .unwrap();
        let a = verifier.verify(&token).await.unwrap();
        let b = verifier.verify(&token).await.unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0), "second call served from the cache");
        let cache = verifier.inner.cache.as_ref().unwrap();
        assert!(cache.contains_key(token.as_str()));
    }

    #[tokio::test]
    async fn a_near_copy_of_a_cached_token_is_not_served_from_the_cache() {
        let (ring, verifier) = setup();
        let token = ring
            .sign(&AccessClaims::new("iss", "u", "aud", unix_now(), 60))
            .unwrap();
        verifier.verify(&token).await.unwrap();
        // Same header and payload, one signature character changed: the cache compares whole
        // tokens, so this goes to the signature check and fails there.
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(verifier.verify(&forged).await.is_err());
        let cache = verifier.inner.cache.as_ref().unwrap();
        cache.run_pending_tasks();
        assert!(!cache.contains_key(forged.as_str()));
        assert!(cache.contains_key(token.as_str()));
    }

    #[test]
    fn the_header_peek_reads_alg_and_kid_and_refuses_junk() {
        let mut buf = [0u8; 768];
        let header =
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k\u0031","jku":"https://evil"}"#);
        let peek = peek_header(&format!("{header}.e30.sig"), &mut buf).unwrap();
        assert_eq!(peek.alg, Algorithm::RS256);
        assert_eq!(peek.kid.as_deref(), Some("k1"));
        for junk in [
            "",
            "....",
            "!!!.e30.x",
            &format!("{}.e30.x", "A".repeat(2000)),
        ] {
            assert!(peek_header(junk, &mut buf).is_none(), "{junk}");
        }
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(peek_header(&format!("{none}.e30."), &mut buf).is_none());
    }
}
