//! Data keys, wrapped keys and key-encryption-key providers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use arq_core::TenantId;
use base64::Engine;
use zeroize::Zeroize;

use super::CryptoError;

/// A 256-bit data key in memory; zeroed when dropped, never printed.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl DataKey {
    /// A fresh random key (from the thread-local CSPRNG, seeded by the OS).
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        Self(k)
    }

    /// Wraps raw key bytes (from a KMS "generate data key" call, for instance).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A data key encrypted under a KEK, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Which KEK wrapped it.
    pub kek_id: String,
    /// The provider-specific wrapped bytes.
    pub bytes: Vec<u8>,
}

/// The future returned by [`KeyProvider`] methods.
pub type KeyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CryptoError>> + Send + 'a>>;

/// Holds key-encryption keys: wraps and unwraps data keys. Implement it for a KMS or Vault
/// transit client; [`LocalKekProvider`] is the configuration-file implementation.
///
/// Implementations must bind the wrapped key to `tenant` and `key_id` (as associated data or
/// an encryption context) so a wrapped key copied to another tenant does not unwrap.
pub trait KeyProvider: Send + Sync + 'static {
    /// Wraps `key` for `tenant`'s data key number `key_id` under the current KEK.
    fn wrap<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        key: &'a DataKey,
    ) -> KeyFuture<'a, WrappedKey>;

    /// Unwraps a data key wrapped by [`wrap`](Self::wrap).
    fn unwrap<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        wrapped: &'a WrappedKey,
    ) -> KeyFuture<'a, DataKey>;
}

/// KEKs from configuration: AES-256-GCM key wrapping, several KEKs by id, one current.
///
/// # Example
/// ```
/// use arq_tenancy::crypto::LocalKekProvider;
///
/// // 32 bytes, base64 — e.g. from an environment variable or a secrets file.
/// let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// let kek = LocalKekProvider::from_base64("kek-2025-11", b64)?;
/// assert!(LocalKekProvider::from_base64("short", "AAEC").is_err());
/// # Ok::<(), arq_tenancy::crypto::CryptoError>(())
/// ```
pub struct LocalKekProvider {
    current: String,
    keks: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for LocalKekProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKekProvider")
            .field("current", &self.current)
            .field("kek_ids", &self.keks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LocalKekProvider {
    /// A provider whose current KEK is `key`, named `kek_id`.
    pub fn new(kek_id: &str, mut key: [u8; 32]) -> Self {
        let mut keks = HashMap::new();
        keks.insert(kek_id.to_owned(), Aes256Gcm::new(&key.into()));
        key.zeroize();
        Self {
            current: kek_id.to_owned(),
            keks,
        }
    }

    /// Like [`new`](Self::new), with the key as standard base64 of 32 bytes.
    pub fn from_base64(kek_id: &str, b64: &str) -> Result<Self, CryptoError> {
        Ok(Self::new(kek_id, decode_key(b64)?))
    }

    /// Keeps an older KEK available for unwrapping keys it wrapped.
    #[must_use]
    pub fn with_previous(mut self, kek_id: &str, mut key: [u8; 32]) -> Self {
        self.keks
            .entry(kek_id.to_owned())
            .or_insert_with(|| Aes256Gcm::new(&key.into()));
        key.zeroize();
        self
    }

    /// The id of the KEK that wraps new data keys.
    pub fn current_kek_id(&self) -> &str {
        &self.current
    }
}

fn decode_key(b64: &str) -> Result<[u8; 32], CryptoError> {
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| CryptoError::InvalidKey(format!("the KEK is not valid base64: {e}")))?;
    let key: Result<[u8; 32], _> = bytes.as_slice().try_into();
    bytes.zeroize();
    key.map_err(|_| CryptoError::InvalidKey("a KEK must be exactly 32 bytes (256 bits)".to_owned()))
}

fn wrap_aad(tenant: TenantId, key_id: u32, kek_id: &str) -> Vec<u8> {
    let mut aad = b"arq-dek-v1\0".to_vec();
    aad.extend_from_slice(tenant.as_uuid().as_bytes());
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad.extend_from_slice(kek_id.as_bytes());
    aad
}

impl KeyProvider for LocalKekProvider {
    fn wrap<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        key: &'a DataKey,
    ) -> KeyFuture<'a, WrappedKey> {
        let result = (|| {
            let kek = self
                .keks
                .get(&self.current)
                .ok_or_else(|| CryptoError::UnknownKek {
                    kek_id: self.current.clone(),
                })?;
            let mut nonce = [0u8; 12];
            rand::fill(&mut nonce);
            let aad = wrap_aad(tenant, key_id, &self.current);
            let ct = kek
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: key.expose(),
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Provider("AES-GCM key wrapping failed".to_owned()))?;
            let mut bytes = nonce.to_vec();
            bytes.extend_from_slice(&ct);
            Ok(WrappedKey {
                kek_id: self.current.clone(),
                bytes,
            })
        })();
        Box::pin(async move { result })
    }

    fn unwrap<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        wrapped: &'a WrappedKey,
    ) -> KeyFuture<'a, DataKey> {
        let result = (|| {
            let kek = self
                .keks
                .get(&wrapped.kek_id)
                .ok_or_else(|| CryptoError::UnknownKek {
                    kek_id: wrapped.kek_id.clone(),
                })?;
            if wrapped.bytes.len() != 12 + 32 + 16 {
                return Err(CryptoError::Malformed(
                    "a wrapped data key has the wrong length",
                ));
            }
            let (nonce, ct) = wrapped.bytes.split_at(12);
            let aad = wrap_aad(tenant, key_id, &wrapped.kek_id);
            let mut plain = kek
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| CryptoError::Authentication)?;
            let key: Result<[u8; 32], _> = plain.as_slice().try_into();
            plain.zeroize();
            key.map(DataKey)
                .map_err(|_| CryptoError::Malformed("an unwrapped data key has the wrong length"))
        })();
        Box::pin(async move { result })
    }
}
