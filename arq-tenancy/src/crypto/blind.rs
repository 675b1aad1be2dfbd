//! Keyed blind indexes: equality lookups on encrypted fields.

use arq_core::TenantId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::CryptoError;

type HmacSha256 = Hmac<Sha256>;

/// Computes `HMAC-SHA-256(k_tenant_table_column, value)`, where the per-column key is itself
/// derived from the index key by HMAC. Equal values in the same tenant and column give equal
/// indexes (so `WHERE email_idx = $1` works); the same value in another tenant or column gives an
/// unrelated index, so indexes cannot be correlated across tenants.
///
/// Normalize values before indexing (e.g. lowercase an email) if lookups should ignore case.
/// Keep the index key separate from the KEK.
///
/// # Example
/// ```
/// use arq_tenancy::crypto::BlindIndex;
/// use arq_tenancy::TenantId;
///
/// let idx = BlindIndex::new([9u8; 32]);
/// let (a, b) = (TenantId::generate(), TenantId::generate());
/// let x = idx.compute(a, "users", "email", b"ada@example.com");
/// assert_eq!(x, idx.compute(a, "users", "email", b"ada@example.com"));
/// assert_ne!(x, idx.compute(b, "users", "email", b"ada@example.com"));
/// assert_ne!(x, idx.compute(a, "users", "phone", b"ada@example.com"));
/// ```
pub struct BlindIndex {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndex(..)")
    }
}

impl BlindIndex {
    /// An indexer with a 256-bit key.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key: Zeroizing::new(key),
        }
    }

    /// An indexer with a standard-base64 key of 32 bytes.
    pub fn from_base64(b64: &str) -> Result<Self, CryptoError> {
        use base64::Engine;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    CryptoError::InvalidKey(format!("the index key is not valid base64: {e}"))
                })?,
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            CryptoError::InvalidKey("an index key must be exactly 32 bytes".to_owned())
        })?;
        Ok(Self::new(key))
    }

    /// The 32-byte index of `value` in `table.column` of `tenant`.
    pub fn compute(&self, tenant: TenantId, table: &str, column: &str, value: &[u8]) -> [u8; 32] {
        let mut derive = mac(self.key.as_slice());
        derive.update(b"arq-blind-index-v1\0");
        derive.update(tenant.as_uuid().as_bytes());
        for part in [table, column] {
            derive.update(&(part.len() as u64).to_be_bytes());
            derive.update(part.as_bytes());
        }
        let column_key = Zeroizing::new(<[u8; 32]>::from(derive.finalize().into_bytes()));
        let mut m = mac(column_key.as_slice());
        m.update(value);
        m.finalize().into_bytes().into()
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail; the fallback keeps it panic-free.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()))
}
