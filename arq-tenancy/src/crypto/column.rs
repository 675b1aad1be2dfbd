//! The stored form of an encrypted field, and its sqlx mapping to `bytea`.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef, Postgres};
use sqlx::{Decode, Encode, Type};

use super::CryptoError;

pub(crate) const VERSION: u8 = 1;
pub(crate) const NONCE_LEN: usize = 12;
/// version (1) + key id (4, big endian) + nonce (12)
pub(crate) const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;

/// A sealed field: `version ‖ key id ‖ nonce ‖ ciphertext ‖ tag`. Stored as `bytea`; decoding
/// from the database checks the format, so a column holding something else is an error rather
/// than garbage handed to the cipher.
///
/// # Example
/// ```
/// use arq_tenancy::crypto::Encrypted;
///
/// assert!(Encrypted::from_bytes(vec![1, 2, 3]).is_err());
/// let mut bytes = vec![1, 0, 0, 0, 9];
/// bytes.extend([0u8; 12 + 16]);
/// assert_eq!(Encrypted::from_bytes(bytes)?.key_id(), 9);
/// # Ok::<(), arq_tenancy::crypto::CryptoError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Encrypted(Vec<u8>);

impl Encrypted {
    /// Checks the format of stored bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, CryptoError> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Malformed("shorter than the header and tag"));
        }
        if bytes[0] != VERSION {
            return Err(CryptoError::Malformed("unknown format version"));
        }
        Ok(Self(bytes))
    }

    /// The id of the data key that sealed it.
    pub fn key_id(&self) -> u32 {
        u32::from_be_bytes([self.0[1], self.0[2], self.0[3], self.0[4]])
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The stored bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Encrypted(key {}, {} bytes)",
            self.key_id(),
            self.0.len()
        )
    }
}

impl Type<Postgres> for Encrypted {
    fn type_info() -> PgTypeInfo {
        <Vec<u8> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <Vec<u8> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Encrypted {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&[u8] as Encode<Postgres>>::encode(self.0.as_slice(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for Encrypted {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let bytes = <Vec<u8> as Decode<Postgres>>::decode(value)?;
        Ok(Self::from_bytes(bytes)?)
    }
}
