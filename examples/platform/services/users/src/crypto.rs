//! The keys that protect personal data, and the two operations the handlers need: sealing a
//! field (e-mail, phone) and computing the e-mail's blind index.
//!
//! All cryptography is arq-tenancy's ([`arq_tenancy::crypto`]): per-tenant data keys (AES-256)
//! wrapped by the key-encryption key (KEK) and stored in `arq.tenant_data_keys` (row-level
//! secured, [`PgKeyStore`]); AES-256-GCM with associated data binding tenant, table
//! (`profiles`), column and row (the user id); a key id on every ciphertext so data keys rotate;
//! keyed HMAC-SHA-256 blind indexes, separated per tenant and column. This module only loads the
//! keys from files and names the contexts.
//!
//! # Key files
//! `[encryption] kek_file` and `blind_index_key_file` name files holding 64 hexadecimal
//! characters (32 bytes), e.g. made with `openssl rand -hex 32`. They are given at run time
//! (`ARQ__ENCRYPTION__KEK_FILE`, `ARQ__ENCRYPTION__BLIND_INDEX_KEY_FILE`), never in a config
//! file; a missing, unreadable or malformed file stops the service at start-up with a message
//! naming the variable. The two keys must differ: the blind-index key is not a secret of the
//! same kind (anyone holding it can test guesses against the index) and is never rotated
//! casually (rotating it means recomputing every index, see `README.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arq_tenancy::crypto::{
    BlindIndex, CryptoError, Encrypted, FieldCipher, FieldContext, LocalKekProvider, PgKeyStore,
};
use arq_tenancy::{TenantId, TenantPool};
use serde::Deserialize;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The table whose columns are sealed; part of every ciphertext's associated data and of the
/// blind index's key derivation.
pub const TABLE: &str = "profiles";

/// The environment variable that names the KEK file.
pub const KEK_FILE_VAR: &str = "ARQ__ENCRYPTION__KEK_FILE";
/// The environment variable that names the blind-index key file.
pub const BLIND_INDEX_KEY_FILE_VAR: &str = "ARQ__ENCRYPTION__BLIND_INDEX_KEY_FILE";

/// `[encryption]`. The key files themselves come from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSettings {
    /// The id of the current KEK, stored next to every data key it wraps. Change it when you
    /// change the KEK, and keep the old one under `previous_keks` until every data key is
    /// rewrapped (`users rewrap-keys`).
    pub kek_id: String,
    /// The file holding the current KEK (`ARQ__ENCRYPTION__KEK_FILE`).
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// The file holding the blind-index key (`ARQ__ENCRYPTION__BLIND_INDEX_KEY_FILE`).
    #[serde(default)]
    pub blind_index_key_file: Option<PathBuf>,
    /// Older KEKs that still unwrap data keys they wrapped, during a KEK rotation.
    #[serde(default)]
    pub previous_keks: Vec<PreviousKek>,
}

/// One entry of `[[encryption.previous_keks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKek {
    /// The KEK id its data keys were stored with.
    pub id: String,
    /// The file holding it (64 hexadecimal characters).
    pub file: PathBuf,
}

/// A key file that cannot be used; the message names the setting and how to make a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The setting is absent.
    #[error(
        "{setting} is not set: point it at a file holding 64 hexadecimal characters, made with `openssl rand -hex 32 > FILE` (keep the file secret; never put the key in a config file)"
    )]
    Missing {
        /// The environment variable (or config key) to set.
        setting: String,
    },
    /// The file cannot be read.
    #[error(
        "{setting}: cannot read {path}: {source} (make it readable by the service, or create it with `openssl rand -hex 32 > {path}`)"
    )]
    Unreadable {
        /// The environment variable (or config key).
        setting: String,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold 64 hexadecimal characters.
    #[error(
        "{setting}: {path} must hold exactly 64 hexadecimal characters (32 bytes); it holds {found}. Make one with `openssl rand -hex 32 > {path}`"
    )]
    Malformed {
        /// The environment variable (or config key).
        setting: String,
        /// The file.
        path: String,
        /// What it holds instead (a length, never the content).
        found: String,
    },
    /// The KEK and the blind-index key are the same key.
    #[error(
        "{KEK_FILE_VAR} and {BLIND_INDEX_KEY_FILE_VAR} hold the same key: make two (`openssl rand -hex 32` twice)"
    )]
    SameKey,
}

/// Reads a 32-byte key written as 64 hexadecimal characters (surrounding whitespace, such as the
/// newline `openssl` writes, is ignored). `setting` names the variable in errors.
pub fn read_key_file(setting: &str, path: Option<&Path>) -> Result<[u8; 32], KeyFileError> {
    let Some(path) = path else {
        return Err(KeyFileError::Missing {
            setting: setting.to_owned(),
        });
    };
    let shown = path.display().to_string();
    let text = Zeroizing::new(
        std::fs::read(path).map_err(|source| KeyFileError::Unreadable {
            setting: setting.to_owned(),
            path: shown.clone(),
            source,
        })?,
    );
    let malformed = |found: String| KeyFileError::Malformed {
        setting: setting.to_owned(),
        path: shown.clone(),
        found,
    };
    let trimmed = text.trim_ascii();
    if trimmed.len() != 64 {
        return Err(malformed(format!("{} characters", trimmed.len())));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(trimmed, &mut key)
        .map_err(|_| malformed("characters that are not hexadecimal".to_owned()))?;
    Ok(key)
}

/// The field cipher and the blind index, shared by every request (`Arc`).
#[derive(Debug)]
pub struct Crypto {
    cipher: FieldCipher,
    index: BlindIndex,
}

impl Crypto {
    /// Loads the keys `settings` name and keeps wrapped data keys in `tenants`' database.
    pub fn from_settings(
        settings: &EncryptionSettings,
        tenants: TenantPool,
    ) -> Result<Self, KeyFileError> {
        let kek = Zeroizing::new(read_key_file(KEK_FILE_VAR, settings.kek_file.as_deref())?);
        let index = Zeroizing::new(read_key_file(
            BLIND_INDEX_KEY_FILE_VAR,
            settings.blind_index_key_file.as_deref(),
        )?);
        if *kek == *index {
            return Err(KeyFileError::SameKey);
        }
        let mut provider = LocalKekProvider::new(&settings.kek_id, *kek);
        for (i, previous) in settings.previous_keks.iter().enumerate() {
            let key = Zeroizing::new(read_key_file(
                &format!("[encryption] previous_keks[{i}].file"),
                Some(&previous.file),
            )?);
            provider = provider.with_previous(&previous.id, *key);
        }
        Ok(Self::new(provider, *index, tenants))
    }

    /// A cipher over `provider`'s KEKs with data keys in `tenants`' `arq.tenant_data_keys`, and
    /// a blind index keyed by `index_key`.
    pub fn new(provider: LocalKekProvider, index_key: [u8; 32], tenants: TenantPool) -> Self {
        Self {
            cipher: FieldCipher::new(Arc::new(provider), Arc::new(PgKeyStore::new(tenants))),
            index: BlindIndex::new(index_key),
        }
    }

    /// arq-tenancy's cipher, for key rotation (`rotate`, `reencrypt`, `rewrap_keys`).
    pub fn cipher(&self) -> &FieldCipher {
        &self.cipher
    }

    /// The blind index of an e-mail address in `tenant`, over its [`normalize_email`] form, so
    /// lookups ignore case and surrounding whitespace.
    pub fn email_index(&self, tenant: TenantId, email: &str) -> Vec<u8> {
        self.index
            .compute(tenant, TABLE, "email", normalize_email(email).as_bytes())
            .to_vec()
    }

    /// Seals `value` for `column` of `user`'s profile in `tenant`.
    pub async fn seal(
        &self,
        tenant: TenantId,
        column: &str,
        user: Uuid,
        value: &str,
    ) -> Result<Encrypted, CryptoError> {
        self.cipher
            .encrypt(&context(tenant, column, user), value.as_bytes())
            .await
    }

    /// Opens what [`seal`](Self::seal) sealed for the same tenant, column and user.
    pub async fn open(
        &self,
        tenant: TenantId,
        column: &str,
        user: Uuid,
        sealed: &Encrypted,
    ) -> Result<String, CryptoError> {
        let plain = self
            .cipher
            .decrypt(&context(tenant, column, user), sealed)
            .await?;
        String::from_utf8(plain).map_err(|_| CryptoError::Malformed("a sealed text is not UTF-8"))
    }
}

/// The associated data of a profile field: tenant, `profiles`, the column and the user id (the
/// row's key, known before the write).
pub fn context(tenant: TenantId, column: &str, user: Uuid) -> FieldContext {
    FieldContext::new(tenant, TABLE, column, user.to_string())
}

/// What the blind index is computed over: the address without surrounding whitespace, in lower
/// case. (Strictly, the local part of an address is case-sensitive; no mail system in use treats
/// it so, and users type their address in whatever case.)
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn file(content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("users-key-{}", Uuid::new_v4().simple()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn a_key_file_holds_64_hex_characters() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let path = file(hex);
        let key = read_key_file(KEK_FILE_VAR, Some(&path)).unwrap();
        assert_eq!(key[1], 0x11);
        assert_eq!(key[31], 0xff);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unusable_key_files_name_the_variable_and_the_openssl_command() {
        let missing = read_key_file(KEK_FILE_VAR, None).unwrap_err().to_string();
        assert!(missing.contains(KEK_FILE_VAR), "{missing}");
        assert!(missing.contains("openssl rand -hex 32"), "{missing}");

        let nowhere = PathBuf::from("/nonexistent/users/kek");
        let unreadable = read_key_file(BLIND_INDEX_KEY_FILE_VAR, Some(&nowhere))
            .unwrap_err()
            .to_string();
        assert!(
            unreadable.contains(BLIND_INDEX_KEY_FILE_VAR),
            "{unreadable}"
        );
        assert!(
            unreadable.contains("/nonexistent/users/kek"),
            "{unreadable}"
        );

        for bad in ["abcd", &"g".repeat(64), &"a".repeat(65), ""] {
            let path = file(bad);
            let err = read_key_file(KEK_FILE_VAR, Some(&path))
                .unwrap_err()
                .to_string();
            assert!(err.contains(KEK_FILE_VAR), "{err}");
            assert!(err.contains("openssl rand -hex 32"), "{err}");
            // The message never repeats the file's content.
            if bad.len() > 8 {
                assert!(!err.contains(bad), "{err}");
            }
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn emails_are_indexed_trimmed_and_lower_case() {
        assert_eq!(normalize_email("  Ada@Example.COM \n"), "ada@example.com");
    }
}
