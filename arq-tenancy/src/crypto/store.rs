//! Where wrapped data keys are kept.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use arq_core::TenantId;

use super::{CryptoError, WrappedKey};
use crate::{TenantPool, TxError};

/// The future returned by [`DataKeyStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CryptoError>> + Send + 'a>>;

/// Storage of wrapped data keys, by tenant and key id (ids start at 1 and only grow).
pub trait DataKeyStore: Send + Sync + 'static {
    /// The wrapped key `key_id` of `tenant`.
    fn load(&self, tenant: TenantId, key_id: u32) -> StoreFuture<'_, Option<WrappedKey>>;
    /// The newest key of `tenant`.
    fn latest(&self, tenant: TenantId) -> StoreFuture<'_, Option<(u32, WrappedKey)>>;
    /// Stores a new key; `false` when `key_id` already exists (another process rotated first).
    fn insert<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        key: &'a WrappedKey,
    ) -> StoreFuture<'a, bool>;
    /// Every key of `tenant`, oldest first.
    fn list(&self, tenant: TenantId) -> StoreFuture<'_, Vec<(u32, WrappedKey)>>;
    /// Replaces key `key_id` by `new` if it is still `old` (compare and swap); `false` otherwise.
    /// Used to rewrap data keys under a new KEK.
    fn replace<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        old: &'a WrappedKey,
        new: &'a WrappedKey,
    ) -> StoreFuture<'a, bool>;
}

/// In-memory store, for tests and for services that keep wrapped keys elsewhere.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    keys: Mutex<BTreeMap<(TenantId, u32), WrappedKey>>,
}

impl MemoryKeyStore {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<(TenantId, u32), WrappedKey>) -> T) -> T {
        f(&mut self.keys.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl DataKeyStore for MemoryKeyStore {
    fn load(&self, tenant: TenantId, key_id: u32) -> StoreFuture<'_, Option<WrappedKey>> {
        let r = self.with(|m| m.get(&(tenant, key_id)).cloned());
        Box::pin(async move { Ok(r) })
    }

    fn latest(&self, tenant: TenantId) -> StoreFuture<'_, Option<(u32, WrappedKey)>> {
        let r = self.with(|m| {
            m.range((tenant, 0)..=(tenant, u32::MAX))
                .next_back()
                .map(|((_, id), k)| (*id, k.clone()))
        });
        Box::pin(async move { Ok(r) })
    }

    fn insert<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        key: &'a WrappedKey,
    ) -> StoreFuture<'a, bool> {
        let r = self.with(|m| match m.entry((tenant, key_id)) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(key.clone());
                true
            }
        });
        Box::pin(async move { Ok(r) })
    }

    fn list(&self, tenant: TenantId) -> StoreFuture<'_, Vec<(u32, WrappedKey)>> {
        let r = self.with(|m| {
            m.range((tenant, 0)..=(tenant, u32::MAX))
                .map(|((_, id), k)| (*id, k.clone()))
                .collect()
        });
        Box::pin(async move { Ok(r) })
    }

    fn replace<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        old: &'a WrappedKey,
        new: &'a WrappedKey,
    ) -> StoreFuture<'a, bool> {
        let r = self.with(|m| match m.get_mut(&(tenant, key_id)) {
            Some(k) if k == old => {
                *k = new.clone();
                true
            }
            _ => false,
        });
        Box::pin(async move { Ok(r) })
    }
}

/// The `arq.tenant_data_keys` table (created by the support migration, row-level secured),
/// read and written through tenant transactions. The runtime role needs `SELECT, INSERT` on it
/// (and `UPDATE` to rewrap keys under a new KEK).
#[derive(Debug, Clone)]
pub struct PgKeyStore {
    pool: TenantPool,
}

impl PgKeyStore {
    /// A store over `pool`.
    pub fn new(pool: TenantPool) -> Self {
        Self { pool }
    }
}

fn key_id_i32(key_id: u32) -> Result<i32, CryptoError> {
    i32::try_from(key_id).map_err(|_| CryptoError::Malformed("key id out of range"))
}

fn wrapped_row(row: (i32, String, Vec<u8>)) -> Option<(u32, WrappedKey)> {
    let (id, kek_id, bytes) = row;
    Some((u32::try_from(id).ok()?, WrappedKey { kek_id, bytes }))
}

impl DataKeyStore for PgKeyStore {
    fn load(&self, tenant: TenantId, key_id: u32) -> StoreFuture<'_, Option<WrappedKey>> {
        Box::pin(async move {
            let id = key_id_i32(key_id)?;
            let mut tx = self.pool.begin(tenant).await?;
            let row: Option<(i32, String, Vec<u8>)> = sqlx::query_as(
                "select key_id, kek_id, wrapped from arq.tenant_data_keys where key_id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(TxError::from)?;
            tx.commit().await?;
            Ok(row.and_then(wrapped_row).map(|(_, k)| k))
        })
    }

    fn latest(&self, tenant: TenantId) -> StoreFuture<'_, Option<(u32, WrappedKey)>> {
        Box::pin(async move {
            let mut tx = self.pool.begin(tenant).await?;
            let row: Option<(i32, String, Vec<u8>)> = sqlx::query_as(
                "select key_id, kek_id, wrapped from arq.tenant_data_keys \
                 order by key_id desc limit 1",
            )
            .fetch_optional(&mut *tx)
            .await
            .map_err(TxError::from)?;
            tx.commit().await?;
            Ok(row.and_then(wrapped_row))
        })
    }

    fn insert<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        key: &'a WrappedKey,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let id = key_id_i32(key_id)?;
            let mut tx = self.pool.begin(tenant).await?;
            let n = sqlx::query(
                "insert into arq.tenant_data_keys (tenant_id, key_id, kek_id, wrapped) \
                 values ($1, $2, $3, $4) on conflict do nothing",
            )
            .bind(tenant.into_uuid())
            .bind(id)
            .bind(&key.kek_id)
            .bind(&key.bytes)
            .execute(&mut *tx)
            .await
            .map_err(TxError::from)?
            .rows_affected();
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    fn list(&self, tenant: TenantId) -> StoreFuture<'_, Vec<(u32, WrappedKey)>> {
        Box::pin(async move {
            let mut tx = self.pool.begin(tenant).await?;
            let rows: Vec<(i32, String, Vec<u8>)> = sqlx::query_as(
                "select key_id, kek_id, wrapped from arq.tenant_data_keys order by key_id",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(TxError::from)?;
            tx.commit().await?;
            Ok(rows.into_iter().filter_map(wrapped_row).collect())
        })
    }

    fn replace<'a>(
        &'a self,
        tenant: TenantId,
        key_id: u32,
        old: &'a WrappedKey,
        new: &'a WrappedKey,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let id = key_id_i32(key_id)?;
            let mut tx = self.pool.begin(tenant).await?;
            let n = sqlx::query(
                "update arq.tenant_data_keys set kek_id = $3, wrapped = $4 \
                 where key_id = $1 and wrapped = $2",
            )
            .bind(id)
            .bind(&old.bytes)
            .bind(&new.kek_id)
            .bind(&new.bytes)
            .execute(&mut *tx)
            .await
            .map_err(TxError::from)?
            .rows_affected();
            tx.commit().await?;
            Ok(n == 1)
        })
    }
}
