//! Sealing and opening fields with per-tenant data keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use arq_core::TenantId;

use super::column::{HEADER_LEN, NONCE_LEN, VERSION};
use super::{CryptoError, DataKey, DataKeyStore, Encrypted, KeyProvider};

/// Where a field value lives: bound into the ciphertext as associated data.
///
/// `row` must identify the row independently of the ciphertext (a primary key value known
/// before the write, such as a client-generated UUID or `tenant_id/id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldContext {
    tenant: TenantId,
    table: String,
    column: String,
    row: String,
}

impl FieldContext {
    /// The context of `table.column` in row `row` of `tenant`.
    pub fn new(tenant: TenantId, table: &str, column: &str, row: impl Into<String>) -> Self {
        Self {
            tenant,
            table: table.to_owned(),
            column: column.to_owned(),
            row: row.into(),
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = b"arq-field-v1\0".to_vec();
        aad.extend_from_slice(header);
        aad.extend_from_slice(self.tenant.as_uuid().as_bytes());
        // Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        for part in [&self.table, &self.column, &self.row] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Encrypts and decrypts fields; caches unwrapped data keys. Share one per process (`Arc`).
pub struct FieldCipher {
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn DataKeyStore>,
    keys: Mutex<HashMap<(TenantId, u32), Arc<Aes256Gcm>>>,
    current: Mutex<HashMap<TenantId, u32>>,
}

impl std::fmt::Debug for FieldCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldCipher").finish_non_exhaustive()
    }
}

impl FieldCipher {
    /// A cipher whose data keys are wrapped by `provider` and kept in `store`.
    pub fn new(provider: Arc<dyn KeyProvider>, store: Arc<dyn DataKeyStore>) -> Self {
        Self {
            provider,
            store,
            keys: Mutex::default(),
            current: Mutex::default(),
        }
    }

    /// Seals `plaintext` for `ctx` under the tenant's newest data key (creating key 1 on first
    /// use).
    pub async fn encrypt(
        &self,
        ctx: &FieldContext,
        plaintext: &[u8],
    ) -> Result<Encrypted, CryptoError> {
        let key_id = self.current_key_id(ctx.tenant).await?;
        let aead = self.key(ctx.tenant, key_id).await?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = ctx.aad(&out[..5]);
        let ct = aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Provider("AES-GCM encryption failed".to_owned()))?;
        out.extend_from_slice(&ct);
        Encrypted::from_bytes(out)
    }

    /// Opens a ciphertext sealed for `ctx` (under any of the tenant's data keys).
    pub async fn decrypt(
        &self,
        ctx: &FieldContext,
        sealed: &Encrypted,
    ) -> Result<Vec<u8>, CryptoError> {
        let aead = self.key(ctx.tenant, sealed.key_id()).await?;
        let bytes = sealed.as_bytes();
        let aad = ctx.aad(&bytes[..5]);
        aead.decrypt(
            Nonce::from_slice(&bytes[5..HEADER_LEN]),
            Payload {
                msg: &bytes[HEADER_LEN..],
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Authentication)
    }

    /// Creates the tenant's next data key and makes it current; returns its id. Ciphertexts under
    /// older keys stay readable.
    pub async fn rotate(&self, tenant: TenantId) -> Result<u32, CryptoError> {
        loop {
            let next = match self.store.latest(tenant).await? {
                Some((id, _)) => id
                    .checked_add(1)
                    .ok_or(CryptoError::Malformed("key id overflow"))?,
                None => 1,
            };
            if self.create(tenant, next).await? {
                return Ok(next);
            }
            // Another process created `next` first: use the newer latest.
        }
    }

    /// Re-seals `sealed` under the tenant's current key; `None` when it already uses it.
    pub async fn reencrypt(
        &self,
        ctx: &FieldContext,
        sealed: &Encrypted,
    ) -> Result<Option<Encrypted>, CryptoError> {
        let current = self.current_key_id(ctx.tenant).await?;
        if sealed.key_id() == current {
            return Ok(None);
        }
        let mut plain = self.decrypt(ctx, sealed).await?;
        let fresh = self.encrypt(ctx, &plain).await;
        zeroize::Zeroize::zeroize(&mut plain);
        fresh.map(Some)
    }

    /// Rewraps every data key of `tenant` under the provider's current KEK (after a KEK
    /// rotation); returns how many keys changed. Ciphertexts are untouched: data keys stay the
    /// same, only their wrapping changes. Once every tenant is rewrapped the old KEK can go.
    pub async fn rewrap_keys(&self, tenant: TenantId) -> Result<usize, CryptoError> {
        let mut changed = 0;
        for (key_id, old) in self.store.list(tenant).await? {
            let key = self.provider.unwrap(tenant, key_id, &old).await?;
            let new = self.provider.wrap(tenant, key_id, &key).await?;
            if new.kek_id != old.kek_id && self.store.replace(tenant, key_id, &old, &new).await? {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Forgets the cached current key id of `tenant` (call after another process rotated).
    pub fn refresh(&self, tenant: TenantId) {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&tenant);
    }

    async fn current_key_id(&self, tenant: TenantId) -> Result<u32, CryptoError> {
        if let Some(id) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
        {
            return Ok(*id);
        }
        let id = match self.store.latest(tenant).await? {
            Some((id, _)) => id,
            None => self.rotate(tenant).await?,
        };
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant, id);
        Ok(id)
    }

    async fn create(&self, tenant: TenantId, key_id: u32) -> Result<bool, CryptoError> {
        let key = DataKey::generate();
        let wrapped = self.provider.wrap(tenant, key_id, &key).await?;
        if !self.store.insert(tenant, key_id, &wrapped).await? {
            return Ok(false);
        }
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (tenant, key_id),
                Arc::new(Aes256Gcm::new(key.expose().into())),
            );
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant, key_id);
        Ok(true)
    }

    async fn key(&self, tenant: TenantId, key_id: u32) -> Result<Arc<Aes256Gcm>, CryptoError> {
        if let Some(k) = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant, key_id))
        {
            return Ok(k.clone());
        }
        let wrapped = self
            .store
            .load(tenant, key_id)
            .await?
            .ok_or(CryptoError::UnknownDataKey { tenant, key_id })?;
        let key = self.provider.unwrap(tenant, key_id, &wrapped).await?;
        let aead = Arc::new(Aes256Gcm::new(key.expose().into()));
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((tenant, key_id), aead.clone());
        Ok(aead)
    }
}
