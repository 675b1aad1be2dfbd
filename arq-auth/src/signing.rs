//! The issuer's side: signing keys with `kid`s, the active key, retiring keys still published for
//! verification, `/.well-known/jwks.json`, and rotation without downtime.
//!
//! Rotation: [`SigningKeyRing::rotate`] makes a new key active and keeps the previous one
//! *retiring*: it signs nothing new but stays in the JWKS, so tokens it signed keep verifying
//! until they expire. After at least one access-token lifetime plus the verifiers' JWKS refresh
//! interval, [`SigningKeyRing::retire`] drops it. To avoid even a moment where verifiers see a
//! token whose key they have not fetched, publish the next key first with
//! [`SigningKeyRing::publish`] and activate it later; verifiers also refresh on an unknown `kid`.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::claims::AccessClaims;
use crate::error::AuthError;
use crate::jwks::{JwksSource, plausible_kid};

/// Why a signing key could not be loaded or a token signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The PEM is not an RSA private key.
    #[error("key `{kid}` is not a usable RSA private key in PEM form: {reason}")]
    InvalidKey {
        /// The key id.
        kid: String,
        /// What was wrong.
        reason: String,
    },
    /// The key id has characters outside `[A-Za-z0-9._~-]` or is longer than 128.
    #[error("key id `{0}` must be 1–128 characters from [A-Za-z0-9._~-]")]
    InvalidKid(String),
    /// The key id is already in the ring.
    #[error("key id `{0}` is already in the ring; every key needs its own id")]
    DuplicateKid(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// One RSA signing key and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads an RSA private key (PKCS#1 or PKCS#8 PEM) under `kid`.
    pub fn from_rsa_pem(kid: impl Into<String>, pem: &[u8]) -> Result<Self, SigningError> {
        crate::crypto::ensure_provider();
        let kid = kid.into();
        if !plausible_kid(&kid) {
            return Err(SigningError::InvalidKid(kid));
        }
        let invalid = |e: jsonwebtoken::errors::Error| SigningError::InvalidKey {
            kid: kid.clone(),
            reason: e.to_string(),
        };
        let encoding = EncodingKey::from_rsa_pem(pem).map_err(invalid)?;
        let mut public = Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(invalid)?;
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(KeyAlgorithm::RS256);
        Ok(Self {
            kid,
            encoding,
            public,
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }
}

#[derive(Debug)]
struct RingState {
    active: SigningKey,
    /// Published but not (or no longer) signing: the next key, or keys being retired.
    published: Vec<SigningKey>,
}

/// The issuer's keys: one active key that signs, others published for verification.
///
/// Clones share state, so the JWKS endpoint, the token issuer and an in-process verifier (it is
/// a [`JwksSource`]) all see a rotation at once.
///
/// # Example
/// ```
/// use arq_auth::{AccessClaims, SigningKey, SigningKeyRing};
///
/// let k1 = SigningKey::from_rsa_pem("2026-11-a", include_bytes!("../tests/keys/key1.pem")).unwrap();
/// let k2 = SigningKey::from_rsa_pem("2026-11-b", include_bytes!("../tests/keys/key2.pem")).unwrap();
/// let ring = SigningKeyRing::new(k1);
/// ring.rotate(k2).unwrap();
/// assert_eq!(ring.active_kid(), "2026-11-b");
/// assert_eq!(ring.jwks().keys.len(), 2); // the old key is still published
/// ring.retire("2026-11-a");
/// assert_eq!(ring.jwks().keys.len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct SigningKeyRing {
    state: Arc<RwLock<RingState>>,
}

impl SigningKeyRing {
    /// A ring whose only key is `active`.
    pub fn new(active: SigningKey) -> Self {
        Self {
            state: Arc::new(RwLock::new(RingState {
                active,
                published: Vec::new(),
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RingState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RingState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `kid` of the key that signs.
    pub fn active_kid(&self) -> String {
        self.read().active.kid.clone()
    }

    /// Publishes `key` in the JWKS without signing with it yet.
    pub fn publish(&self, key: SigningKey) -> Result<(), SigningError> {
        let mut state = self.write();
        if state.active.kid == key.kid || state.published.iter().any(|k| k.kid == key.kid) {
            return Err(SigningError::DuplicateKid(key.kid));
        }
        state.published.push(key);
        Ok(())
    }

    /// Makes `key` the active key; the previous active key stays published (retiring).
    /// `key` may already be published.
    pub fn rotate(&self, key: SigningKey) -> Result<(), SigningError> {
        let mut state = self.write();
        if state.active.kid == key.kid {
            return Err(SigningError::DuplicateKid(key.kid));
        }
        state.published.retain(|k| k.kid != key.kid);
        let previous = std::mem::replace(&mut state.active, key);
        state.published.push(previous);
        Ok(())
    }

    /// Removes a published, non-active key: tokens it signed stop verifying once verifiers
    /// refresh. Returns whether a key was removed (the active key is never removed).
    pub fn retire(&self, kid: &str) -> bool {
        let mut state = self.write();
        let before = state.published.len();
        state.published.retain(|k| k.kid != kid);
        state.published.len() != before
    }

    /// The public keys: the active key first, then the published ones.
    pub fn jwks(&self) -> JwkSet {
        let state = self.read();
        let mut keys = vec![state.active.public.clone()];
        keys.extend(state.published.iter().map(|k| k.public.clone()));
        JwkSet { keys }
    }

    /// Signs `claims` with the active key (RS256, `typ: JWT`, `kid` set).
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, SigningError> {
        let (kid, key) = {
            let state = self.read();
            (state.active.kid.clone(), state.active.encoding.clone())
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid);
        jsonwebtoken::encode(&header, claims, &key).map_err(|e| SigningError::Sign(e.to_string()))
    }

    /// A router serving `GET /.well-known/jwks.json` (cacheable for 5 minutes).
    pub fn jwks_router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let ring = self.clone();
        Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let ring = ring.clone();
                async move {
                    (
                        [(http::header::CACHE_CONTROL, "public, max-age=300")],
                        axum::Json(ring.jwks()),
                    )
                        .into_response()
                }
            }),
        )
    }
}

impl JwksSource for SigningKeyRing {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, AuthError>> {
        let set = self.jwks();
        Box::pin(async move { Ok(set) })
    }
}
