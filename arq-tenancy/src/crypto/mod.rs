//! Field-level encryption: envelope encryption with per-tenant data keys.
//!
//! - Each tenant has numbered **data keys** (DEKs, AES-256). The newest one encrypts; every one
//!   decrypts. A DEK is stored only **wrapped** by a key-encryption key (KEK) that a
//!   [`KeyProvider`] holds: [`LocalKekProvider`] takes it from configuration, and a Vault or KMS
//!   client implements the same trait. Wrapped keys live in a [`DataKeyStore`]
//!   ([`PgKeyStore`]: the RLS-protected `arq.tenant_data_keys` table; [`MemoryKeyStore`]).
//! - A field is sealed with AES-256-GCM. The associated data binds the ciphertext to its
//!   **tenant, table, column and row** ([`FieldContext`]) and to its own header, so a ciphertext
//!   copied to another row, column or tenant fails to decrypt instead of revealing anything.
//! - Every ciphertext starts with its format version and **key id** ([`Encrypted`]), so keys
//!   rotate ([`FieldCipher::rotate`]) without a flag day; [`FieldCipher::reencrypt`] moves old
//!   ciphertexts to the newest key, and [`FieldCipher::rewrap_keys`] moves data keys to a new KEK.
//! - [`BlindIndex`] computes keyed HMAC-SHA-256 values for equality lookups on encrypted fields,
//!   separated per tenant, table and column.
//! - [`Encrypted`] is a sqlx type (`bytea`) that checks the format when decoding.
//!
//! Nonces are 96 random bits per encryption; with AES-GCM that is safe for about 2^32
//! encryptions under one key, which is one more reason to rotate data keys periodically.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), arq_tenancy::crypto::CryptoError> {
//! use std::sync::Arc;
//! use arq_tenancy::crypto::{FieldCipher, FieldContext, LocalKekProvider, MemoryKeyStore};
//! use arq_tenancy::TenantId;
//!
//! let kek = LocalKekProvider::new("kek-2025", [7u8; 32]);
//! let cipher = FieldCipher::new(Arc::new(kek), Arc::new(MemoryKeyStore::default()));
//! let tenant = TenantId::generate();
//! let ctx = FieldContext::new(tenant, "patients", "ssn", "patient-42");
//! let sealed = cipher.encrypt(&ctx, b"123-45-6789").await?;
//! assert_eq!(sealed.key_id(), 1);
//! assert_eq!(cipher.decrypt(&ctx, &sealed).await?, b"123-45-6789");
//!
//! // Moved to another row: refused.
//! let other = FieldContext::new(tenant, "patients", "ssn", "patient-43");
//! assert!(cipher.decrypt(&other, &sealed).await.is_err());
//! # Ok(()) }
//! ```

mod blind;
mod cipher;
mod column;
mod keys;
mod store;

pub use blind::BlindIndex;
pub use cipher::{FieldCipher, FieldContext};
pub use column::Encrypted;
pub use keys::{DataKey, KeyFuture, KeyProvider, LocalKekProvider, WrappedKey};
pub use store::{DataKeyStore, MemoryKeyStore, PgKeyStore, StoreFuture};

use arq_core::TenantId;

/// Errors of field encryption.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A ciphertext names a data key the store does not have for this tenant.
    #[error(
        "no data key {key_id} for tenant {tenant}: the ciphertext belongs to another tenant or its key was deleted"
    )]
    UnknownDataKey {
        /// The tenant.
        tenant: TenantId,
        /// The key id in the ciphertext.
        key_id: u32,
    },
    /// A wrapped data key names a KEK the provider does not hold.
    #[error(
        "the key-encryption key {kek_id:?} is not configured; add it (old KEKs stay configured until every data key is rewrapped)"
    )]
    UnknownKek {
        /// The KEK id.
        kek_id: String,
    },
    /// Authentication failed: wrong tenant, table, column or row, wrong key, or tampering.
    #[error(
        "decryption failed: the ciphertext was altered or does not belong to this tenant, table, column and row"
    )]
    Authentication,
    /// The bytes are not an arq ciphertext (or wrapped key) of a known format.
    #[error("malformed ciphertext: {0}")]
    Malformed(&'static str),
    /// Key material from configuration is unusable.
    #[error("invalid key material: {0}")]
    InvalidKey(String),
    /// The key provider (KMS, Vault, ...) failed.
    #[error("the key provider failed: {0}")]
    Provider(String),
    /// The data-key store failed.
    #[error("the data-key store failed: {0}")]
    Store(#[from] crate::TxError),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn cipher_with(kek: LocalKekProvider, store: Arc<MemoryKeyStore>) -> FieldCipher {
        FieldCipher::new(Arc::new(kek), store)
    }

    fn cipher() -> FieldCipher {
        cipher_with(LocalKekProvider::new("k1", [1; 32]), Arc::default())
    }

    #[tokio::test]
    async fn every_part_of_the_context_is_bound() {
        let c = cipher();
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let ctx = FieldContext::new(a, "users", "email", "7");
        let sealed = c.encrypt(&ctx, b"ada@example.com").await.unwrap();
        assert_eq!(c.decrypt(&ctx, &sealed).await.unwrap(), b"ada@example.com");
        for other in [
            FieldContext::new(a, "users", "email", "8"),
            FieldContext::new(a, "users", "phone", "7"),
            FieldContext::new(a, "admins", "email", "7"),
            FieldContext::new(a, "user", "semail", "7"),
        ] {
            assert!(
                matches!(
                    c.decrypt(&other, &sealed).await,
                    Err(CryptoError::Authentication)
                ),
                "{other:?}"
            );
        }
        // Tenant B has no key 1 yet: unknown key. Once it has one, authentication fails.
        let in_b = FieldContext::new(b, "users", "email", "7");
        assert!(matches!(
            c.decrypt(&in_b, &sealed).await,
            Err(CryptoError::UnknownDataKey { .. })
        ));
        c.encrypt(&in_b, b"x").await.unwrap();
        assert!(matches!(
            c.decrypt(&in_b, &sealed).await,
            Err(CryptoError::Authentication)
        ));
    }

    #[tokio::test]
    async fn tampering_with_any_byte_is_detected() {
        let c = cipher();
        let ctx = FieldContext::new(TenantId::generate(), "t", "c", "r");
        let sealed = c.encrypt(&ctx, b"secret").await.unwrap();
        for i in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            match Encrypted::from_bytes(bytes) {
                Ok(t) => assert!(c.decrypt(&ctx, &t).await.is_err(), "byte {i}"),
                Err(_) => assert_eq!(i, 0, "only the version byte fails parsing"),
            }
        }
    }

    #[tokio::test]
    async fn rotation_keeps_old_ciphertexts_readable_and_reencrypt_moves_them() {
        let store = Arc::new(MemoryKeyStore::default());
        let c = cipher_with(LocalKekProvider::new("k1", [1; 32]), store.clone());
        let ctx = FieldContext::new(TenantId::generate(), "t", "c", "r");
        let old = c.encrypt(&ctx, b"v").await.unwrap();
        assert_eq!(c.rotate(ctx.tenant()).await.unwrap(), 2);
        let new = c.encrypt(&ctx, b"v").await.unwrap();
        assert_eq!((old.key_id(), new.key_id()), (1, 2));
        assert_eq!(c.decrypt(&ctx, &old).await.unwrap(), b"v");
        let moved = c.reencrypt(&ctx, &old).await.unwrap().unwrap();
        assert_eq!(moved.key_id(), 2);
        assert!(c.reencrypt(&ctx, &moved).await.unwrap().is_none());
        // A fresh process (empty cache) with the KEK rotated but the old one kept still reads both.
        let c2 = cipher_with(
            LocalKekProvider::new("k2", [2; 32]).with_previous("k1", [1; 32]),
            store.clone(),
        );
        assert_eq!(c2.decrypt(&ctx, &old).await.unwrap(), b"v");
        assert_eq!(c2.rotate(ctx.tenant()).await.unwrap(), 3);
        // Without the old KEK, keys it wrapped are unreadable, with a message that says so.
        let c3 = cipher_with(LocalKekProvider::new("k2", [2; 32]), store.clone());
        let err = c3.decrypt(&ctx, &old).await.unwrap_err();
        assert!(
            matches!(&err, CryptoError::UnknownKek { kek_id } if kek_id == "k1"),
            "{err}"
        );
        assert_eq!(
            c3.decrypt(&ctx, &c2.encrypt(&ctx, b"w").await.unwrap())
                .await
                .unwrap(),
            b"w"
        );
        // Rewrapping under k2 (keys 1 and 2 were wrapped by k1; key 3 already by k2) retires k1.
        assert_eq!(c2.rewrap_keys(ctx.tenant()).await.unwrap(), 2);
        assert_eq!(c2.rewrap_keys(ctx.tenant()).await.unwrap(), 0);
        let c4 = cipher_with(LocalKekProvider::new("k2", [2; 32]), store);
        assert_eq!(c4.decrypt(&ctx, &old).await.unwrap(), b"v");
    }

    #[tokio::test]
    async fn a_wrapped_key_copied_to_another_tenant_does_not_unwrap() {
        let kek = LocalKekProvider::new("k1", [1; 32]);
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let w = kek.wrap(a, 1, &DataKey::generate()).await.unwrap();
        assert!(kek.unwrap(a, 1, &w).await.is_ok());
        assert!(matches!(
            kek.unwrap(b, 1, &w).await,
            Err(CryptoError::Authentication)
        ));
        assert!(matches!(
            kek.unwrap(a, 2, &w).await,
            Err(CryptoError::Authentication)
        ));
    }

    proptest::proptest! {
        #[test]
        fn round_trips_and_never_panics_on_garbage(plain in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
                                                   garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let c = cipher();
            let ctx = FieldContext::new(TenantId::generate(), "t", "c", "r");
            let sealed = rt.block_on(c.encrypt(&ctx, &plain)).unwrap();
            proptest::prop_assert_eq!(rt.block_on(c.decrypt(&ctx, &sealed)).unwrap(), plain);
            if let Ok(g) = Encrypted::from_bytes(garbage) {
                proptest::prop_assert!(rt.block_on(c.decrypt(&ctx, &g)).is_err());
            }
        }
    }
}
