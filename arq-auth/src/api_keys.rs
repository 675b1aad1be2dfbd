//! API keys: `arq_<prefix>_<secret>`, stored hashed, looked up by prefix, compared in constant
//! time, bound to a tenant and to permissions, with expiry, revocation and last-used tracking.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arq_core::TenantId;
use futures::future::BoxFuture;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::claims::unix_now;
use crate::error::AuthError;
use crate::layer::ApiKeyValidator;
use crate::principal::Principal;
use crate::store::{hash_secret, random_secret, storage};

/// The recognizable start of every key.
pub const API_KEY_PREFIX: &str = "arq_";
const LOOKUP_LEN: usize = 12;

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// A human-readable name ("CI deploys").
    pub name: String,
    /// The tenant the key acts in.
    pub tenant: TenantId,
    /// Exactly what the key may do.
    pub permissions: Vec<String>,
    /// Lifetime from now; `None`: until revoked.
    pub expires_in: Option<Duration>,
}

/// A created key. `key` is shown once and never stored.
#[derive(Clone)]
pub struct CreatedApiKey {
    /// The key's id (also the principal's subject).
    pub id: Uuid,
    /// The full key, `arq_<prefix>_<secret>`.
    pub key: String,
    /// The public lookup prefix.
    pub prefix: String,
}

impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What is cached per prefix.
#[derive(Debug)]
struct Record {
    id: Uuid,
    secret_hash: [u8; 32],
    tenant: TenantId,
    permissions: Vec<String>,
    expires_at: Option<u64>,
    revoked: bool,
    /// Unix seconds of the last `last_used_at` write, to write at most once a minute.
    last_used_written: AtomicU64,
}

/// Splits `arq_<12 hex>_<secret>` into (prefix, secret).
fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(API_KEY_PREFIX)?;
    let (prefix, secret) = rest.split_at_checked(LOOKUP_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let ok = prefix
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && (1..=64).contains(&secret.len());
    ok.then_some((prefix, secret))
}

/// API keys in PostgreSQL (tables from [`migrate`](crate::migrate)), with a short-lived cache of
/// key records by prefix. Revoking through this store drops its cache entry at once; other
/// replicas see a revocation within the cache TTL (30 s by default).
///
/// # Example
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), arq_auth::AuthError> {
/// use arq_auth::{ApiKeyStore, NewApiKey};
/// use arq_core::TenantId;
///
/// let store = ApiKeyStore::new(pool);
/// let created = store.create(NewApiKey {
///     name: "ci".into(),
///     tenant: TenantId::generate(),
///     permissions: vec!["write:project".into()],
///     expires_in: None,
/// }).await?;
/// let principal = store.verify(&created.key).await?;
/// assert!(principal.has_permission("write:project"));
/// store.revoke(created.id).await?;
/// assert!(store.verify(&created.key).await.is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ApiKeyStore {
    pool: PgPool,
    cache: moka::sync::Cache<String, Arc<Record>>,
}

impl ApiKeyStore {
    /// A store whose cache keeps records for 30 s.
    pub fn new(pool: PgPool) -> Self {
        Self::with_cache_ttl(pool, Duration::from_secs(30))
    }

    /// A store whose cache keeps records for `ttl` (zero disables caching).
    pub fn with_cache_ttl(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            cache: moka::sync::Cache::builder()
                .max_capacity(if ttl.is_zero() { 0 } else { 100_000 })
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// Creates a key; the returned `key` is the only copy of the secret.
    pub async fn create(&self, new: NewApiKey) -> Result<CreatedApiKey, AuthError> {
        // A prefix collision (48 random bits) is retried with a fresh prefix.
        for _ in 0..3 {
            let mut lookup = [0u8; LOOKUP_LEN / 2];
            rand::fill(&mut lookup);
            let prefix: String = lookup.iter().map(|b| format!("{b:02x}")).collect();
            let secret = random_secret();
            let id = Uuid::now_v7();
            let result = sqlx::query(
                "insert into arq_auth_api_keys
                     (id, prefix, secret_hash, bound_tenant_id, name, permissions, expires_at)
                 values ($1, $2, $3, $4, $5, $6,
                         case when $7::float8 is null then null
                              else now() + make_interval(secs => $7) end)",
            )
            .bind(id)
            .bind(&prefix)
            .bind(&hash_secret(&secret)[..])
            .bind(new.tenant.into_uuid())
            .bind(&new.name)
            .bind(&new.permissions)
            .bind(new.expires_in.map(|d| d.as_secs_f64()))
            .execute(&self.pool)
            .await;
            match result {
                Ok(_) => {
                    return Ok(CreatedApiKey {
                        id,
                        key: format!("{API_KEY_PREFIX}{prefix}_{secret}"),
                        prefix,
                    });
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(storage(&e)),
            }
        }
        Err(AuthError::Storage(
            "could not find a free API key prefix".to_owned(),
        ))
    }

    async fn record(&self, prefix: &str) -> Result<Option<Arc<Record>>, AuthError> {
        if let Some(record) = self.cache.get(prefix) {
            return Ok(Some(record));
        }
        type Row = (
            Uuid,
            Vec<u8>,
            Uuid,
            Vec<String>,
            Option<i64>,
            bool,
            Option<i64>,
        );
        let row: Option<Row> = sqlx::query_as(
            "select id, secret_hash, bound_tenant_id, permissions,
                    extract(epoch from expires_at)::bigint, revoked_at is not null,
                    extract(epoch from last_used_at)::bigint
               from arq_auth_api_keys where prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| storage(&e))?;
        let Some((id, hash, tenant, permissions, expires_at, revoked, last_used)) = row else {
            return Ok(None);
        };
        let (Ok(secret_hash), Ok(tenant)) =
            (<[u8; 32]>::try_from(hash), TenantId::from_uuid(tenant))
        else {
            return Ok(None);
        };
        let record = Arc::new(Record {
            id,
            secret_hash,
            tenant,
            permissions,
            expires_at: expires_at.map(|t| u64::try_from(t).unwrap_or(0)),
            revoked,
            last_used_written: AtomicU64::new(
                last_used.map_or(0, |t| u64::try_from(t).unwrap_or(0)),
            ),
        });
        self.cache.insert(prefix.to_owned(), Arc::clone(&record));
        Ok(Some(record))
    }

    /// Verifies a full key and returns its principal (subject = key id, tenant and permissions
    /// from the key, no roles).
    pub async fn verify(&self, key: &str) -> Result<Principal, AuthError> {
        let (prefix, secret) = parse(key).ok_or(AuthError::InvalidApiKey)?;
        let record = self.record(prefix).await?.ok_or(AuthError::InvalidApiKey)?;
        let presented = hash_secret(secret);
        let matches: bool = presented.ct_eq(&record.secret_hash).into();
        let now = unix_now();
        if !matches || record.revoked || record.expires_at.is_some_and(|t| t <= now) {
            return Err(AuthError::InvalidApiKey);
        }
        // last_used_at is written at most once a minute per key and process.
        let last = record.last_used_written.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60
            && record
                .last_used_written
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            sqlx::query("update arq_auth_api_keys set last_used_at = now() where id = $1")
                .bind(record.id)
                .execute(&self.pool)
                .await
                .map_err(|e| storage(&e))?;
        }
        Ok(Principal::for_api_key(
            record.id.to_string(),
            record.tenant,
            record.permissions.iter().cloned(),
            record.expires_at,
        ))
    }

    /// Revokes a key; this store's cache forgets it at once. Returns whether a key was revoked.
    pub async fn revoke(&self, id: Uuid) -> Result<bool, AuthError> {
        let prefix: Option<(String,)> = sqlx::query_as(
            "update arq_auth_api_keys set revoked_at = now()
              where id = $1 and revoked_at is null returning prefix",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| storage(&e))?;
        if let Some((prefix,)) = &prefix {
            self.cache.invalidate(prefix);
        }
        Ok(prefix.is_some())
    }

    /// When the key was last used (seconds since the epoch), if ever.
    pub async fn last_used(&self, id: Uuid) -> Result<Option<u64>, AuthError> {
        let row: Option<(Option<i64>,)> = sqlx::query_as(
            "select extract(epoch from last_used_at)::bigint from arq_auth_api_keys where id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| storage(&e))?;
        Ok(row
            .and_then(|(t,)| t)
            .map(|t| u64::try_from(t).unwrap_or(0)))
    }
}

impl ApiKeyValidator for ApiKeyStore {
    fn recognizes(&self, key: &str) -> bool {
        key.starts_with(API_KEY_PREFIX)
    }

    fn validate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(self.verify(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_is_strict() {
        let secret = "A".repeat(43);
        let key = format!("arq_0123456789ab_{secret}");
        assert_eq!(parse(&key), Some(("0123456789ab", secret.as_str())));
        for bad in [
            "",
            "arq_",
            "arq_0123456789ab",
            "arq_0123456789ab_",
            "arq_0123456789AB_xyz",
            "arq_0123456789a_xyz",
            "xrq_0123456789ab_xyz",
            "arq_0123456789ab-xyz",
            "arq_ü123456789ab_xyz",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
