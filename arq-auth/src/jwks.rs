//! The verifier's key ring: public keys by `kid`, from a local JWKS or fetched from the issuer
//! (OIDC discovery), refreshed on an unknown `kid` at a bounded rate and in the background.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use tokio::time::Instant;

use crate::error::AuthError;

/// Where the key ring gets its keys.
///
/// Implemented by [`StaticJwks`] (keys given in configuration), [`JwksUrl`], [`OidcDiscovery`]
/// and the issuer's [`SigningKeyRing`](crate::SigningKeyRing) (for a service that verifies the
/// tokens it issues itself).
pub trait JwksSource: Send + Sync + 'static {
    /// The current key set.
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, AuthError>>;
}

/// A fixed key set from configuration.
#[derive(Debug, Clone)]
pub struct StaticJwks(pub JwkSet);

impl JwksSource for StaticJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, AuthError>> {
        let set = self.0.clone();
        Box::pin(async move { Ok(set) })
    }
}

fn http_client() -> Result<reqwest::Client, AuthError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| AuthError::KeySource(format!("cannot build the HTTP client: {e}")))
}

/// Largest JWKS or discovery document accepted, so a hostile endpoint cannot exhaust memory.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Result<T, AuthError> {
    let response = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| AuthError::KeySource(format!("GET {url} failed: {e}")))?;
    if !response.status().is_success() {
        return Err(AuthError::KeySource(format!(
            "GET {url} answered {}",
            response.status()
        )));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(AuthError::KeySource(format!(
            "{url} is larger than 256 KiB"
        )));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| AuthError::KeySource(format!("reading {url} failed: {e}")))?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(AuthError::KeySource(format!(
            "{url} is larger than 256 KiB"
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| AuthError::KeySource(format!("{url} is not the expected JSON: {e}")))
}

/// A JWKS fetched from a fixed URL.
#[derive(Debug, Clone)]
pub struct JwksUrl {
    url: String,
    client: reqwest::Client,
}

impl JwksUrl {
    /// Fetches keys from `url`.
    pub fn new(url: impl Into<String>) -> Result<Self, AuthError> {
        Ok(Self {
            url: url.into(),
            client: http_client()?,
        })
    }
}

impl JwksSource for JwksUrl {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, AuthError>> {
        Box::pin(get_json(&self.client, &self.url))
    }
}

/// Keys found through OpenID Connect discovery: `{issuer}/.well-known/openid-configuration`
/// names the `jwks_uri`, which is fetched. The discovery document's `issuer` must equal the
/// configured issuer (OIDC Discovery §4.3), so a misconfigured or spoofed document is refused.
#[derive(Debug)]
pub struct OidcDiscovery {
    issuer: String,
    client: reqwest::Client,
    jwks_uri: tokio::sync::OnceCell<String>,
}

#[derive(serde::Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

impl OidcDiscovery {
    /// Discovers the keys of `issuer` (e.g. `https://auth.arq.dev`).
    pub fn new(issuer: impl Into<String>) -> Result<Self, AuthError> {
        Ok(Self {
            issuer: issuer.into(),
            client: http_client()?,
            jwks_uri: tokio::sync::OnceCell::new(),
        })
    }

    async fn jwks_uri(&self) -> Result<&str, AuthError> {
        self.jwks_uri
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let doc: DiscoveryDocument = get_json(&self.client, &url).await?;
                if doc.issuer != self.issuer {
                    return Err(AuthError::KeySource(format!(
                        "the discovery document names issuer {:?}, expected {:?}",
                        doc.issuer, self.issuer
                    )));
                }
                Ok(doc.jwks_uri)
            })
            .await
            .map(String::as_str)
    }
}

impl JwksSource for OidcDiscovery {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, AuthError>> {
        Box::pin(async move {
            let uri = self.jwks_uri().await?;
            get_json(&self.client, uri).await
        })
    }
}

type Keys = Arc<HashMap<String, Arc<DecodingKey>>>;

/// Whether a `kid` is worth looking up: 1–128 characters from `[A-Za-z0-9._~-]`. Anything else
/// (paths, quotes, SQL, control characters) is refused without a refresh, so hostile `kid`s can
/// neither reach a lookup nor trigger fetches.
pub(crate) fn plausible_kid(kid: &str) -> bool {
    (1..=128).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Public keys by `kid`, from a [`JwksSource`].
///
/// An unknown `kid` triggers a refresh, but at most one per `min_refresh_interval` and never two
/// at once: concurrent callers wait for the refresh in flight instead of starting their own (no
/// stampede), and a flood of made-up `kid`s costs at most one fetch per interval.
pub struct KeyRing {
    source: Box<dyn JwksSource>,
    keys: RwLock<Keys>,
    /// When the last refresh was attempted; the mutex also makes refreshes single-flight.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    min_refresh_interval: Duration,
    /// Called when keys disappear, so caches of tokens signed by them are dropped.
    on_removed: RwLock<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kids", &self.kids())
            .field("min_refresh_interval", &self.min_refresh_interval)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// An empty ring over `source`; call [`refresh`](Self::refresh) (or let the first unknown
    /// `kid` do it) to load keys.
    pub fn new(source: impl JwksSource, min_refresh_interval: Duration) -> Self {
        Self {
            source: Box::new(source),
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_refresh: tokio::sync::Mutex::new(None),
            min_refresh_interval,
            on_removed: RwLock::new(Vec::new()),
        }
    }

    /// The `kid`s currently loaded, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.snapshot().keys().cloned().collect();
        kids.sort();
        kids
    }

    fn snapshot(&self) -> Keys {
        // A poisoned lock only means a panic elsewhere while swapping an Arc; the Arc inside is
        // still whole, so keep serving it.
        match self.keys.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// The key for `kid` if loaded, without refreshing.
    pub fn get(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.snapshot().get(kid).cloned()
    }

    pub(crate) fn on_keys_removed(&self, f: impl Fn() + Send + Sync + 'static) {
        match self.on_removed.write() {
            Ok(mut g) => g.push(Box::new(f)),
            Err(p) => p.into_inner().push(Box::new(f)),
        }
    }

    /// The key for `kid`, refreshing once (rate-limited) if it is not loaded.
    pub async fn resolve(&self, kid: &str) -> Result<Arc<DecodingKey>, AuthError> {
        if let Some(key) = self.get(kid) {
            return Ok(key);
        }
        if !plausible_kid(kid) {
            return Err(AuthError::UnknownKey);
        }
        let mut last = self.last_refresh.lock().await;
        // Someone else may have refreshed while we waited.
        if let Some(key) = self.get(kid) {
            return Ok(key);
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refresh_interval) {
            return Err(AuthError::UnknownKey);
        }
        *last = Some(Instant::now());
        self.load().await?;
        self.get(kid).ok_or(AuthError::UnknownKey)
    }

    /// Fetches the key set now, regardless of the rate limit.
    pub async fn refresh(&self) -> Result<(), AuthError> {
        let mut last = self.last_refresh.lock().await;
        *last = Some(Instant::now());
        self.load().await
    }

    async fn load(&self) -> Result<(), AuthError> {
        let set = self.source.fetch().await?;
        let fresh = Arc::new(keys_from_jwks(&set));
        let old = self.snapshot();
        let removed = old.keys().any(|kid| !fresh.contains_key(kid));
        match self.keys.write() {
            Ok(mut g) => *g = fresh,
            Err(p) => *p.into_inner() = fresh,
        }
        if removed {
            let hooks = match self.on_removed.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for hook in hooks.iter() {
                hook();
            }
        }
        Ok(())
    }

    /// Refreshes every `every` in a background task for as long as the ring is alive. Failures
    /// are logged and the previous keys kept.
    pub fn spawn_background_refresh(
        self: &Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(ring) = weak.upgrade() else { return };
                if let Err(error) = ring.refresh().await {
                    tracing::warn!(%error, "background JWKS refresh failed; keeping the previous keys");
                }
            }
        })
    }
}

/// The signature-verification keys of a JWKS: RSA keys with a `kid`, not marked for
/// encryption only. Others are skipped.
fn keys_from_jwks(set: &JwkSet) -> HashMap<String, Arc<DecodingKey>> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.as_deref() else {
            continue;
        };
        if !plausible_kid(kid)
            || matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
        {
            continue;
        }
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                out.insert(kid.to_owned(), Arc::new(key));
            }
            Err(error) => tracing::warn!(kid, %error, "skipping an unusable JWK"),
        }
    }
    out
}
