//! Refresh tokens: opaque 256-bit values stored hashed in PostgreSQL, 30-day expiry, rotated on
//! every use, with reuse detection that revokes the whole family.
//!
//! A *family* is every token descending from one login. Each use of a refresh token marks it used
//! and issues its successor. Presenting a token that was already used means two parties hold it
//! (the legitimate client and a thief, in some order), so the whole family is revoked and both
//! must sign in again (OAuth 2.0 Security BCP, §4.14).

use std::time::Duration;

use arq_core::TenantId;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{hash_secret, random_secret};

/// The default lifetime of a refresh token.
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a refresh token was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// No such token.
    #[error("the refresh token is not valid; sign in again")]
    Invalid,
    /// The token expired.
    #[error("the refresh token has expired; sign in again")]
    Expired,
    /// The token's family was revoked (logout, or an earlier reuse).
    #[error("the refresh token was revoked; sign in again")]
    Revoked,
    /// The token had already been used: the whole family is now revoked.
    #[error("the refresh token was already used; every session from that sign-in is revoked")]
    Reused,
    /// The database failed.
    #[error("the refresh-token store failed: {0}")]
    Storage(#[from] sqlx::Error),
}

/// A newly issued refresh token. `token` is the only copy of the secret: hand it to the client.
#[derive(Clone)]
pub struct IssuedRefreshToken {
    /// The opaque token (`rt_` + 43 base64url characters).
    pub token: String,
    /// The family it belongs to.
    pub family_id: Uuid,
    /// Its lifetime from now.
    pub expires_in: Duration,
}

impl std::fmt::Debug for IssuedRefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedRefreshToken")
            .field("family_id", &self.family_id)
            .finish_non_exhaustive()
    }
}

/// What a successful rotation yields: who the token was for, and its successor.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    /// The subject.
    pub subject: String,
    /// The tenant the session is bound to.
    pub tenant: Option<TenantId>,
    /// The authentication methods of the original sign-in.
    pub amr: Vec<String>,
    /// The successor token (same family).
    pub next: IssuedRefreshToken,
}

/// Refresh tokens in PostgreSQL (tables from [`migrate`](crate::migrate)).
///
/// # Example
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), arq_auth::RefreshError> {
/// use arq_auth::RefreshTokenStore;
///
/// let store = RefreshTokenStore::new(pool);
/// let first = store.issue("user-1", None, &["pwd".into()]).await?;
/// let grant = store.rotate(&first.token).await?;        // use it once: a successor
/// assert!(store.rotate(&first.token).await.is_err());   // reuse: the family is revoked
/// assert!(store.rotate(&grant.next.token).await.is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RefreshTokenStore {
    pool: PgPool,
    ttl: Duration,
}

const PREFIX: &str = "rt_";

impl RefreshTokenStore {
    /// A store with the default 30-day lifetime.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            ttl: REFRESH_TOKEN_TTL,
        }
    }

    /// Sets the lifetime of newly issued tokens.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Starts a new family for `subject` (a sign-in).
    pub async fn issue(
        &self,
        subject: &str,
        tenant: Option<TenantId>,
        amr: &[String],
    ) -> Result<IssuedRefreshToken, RefreshError> {
        self.insert(&self.pool, Uuid::new_v4(), subject, tenant, amr)
            .await
    }

    async fn insert<'e, E: sqlx::PgExecutor<'e>>(
        &self,
        executor: E,
        family_id: Uuid,
        subject: &str,
        tenant: Option<TenantId>,
        amr: &[String],
    ) -> Result<IssuedRefreshToken, RefreshError> {
        let token = format!("{PREFIX}{}", random_secret());
        sqlx::query(
            "insert into arq_auth_refresh_tokens
                 (id, family_id, token_hash, subject, bound_tenant_id, amr, expires_at)
             values ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
        )
        .bind(Uuid::now_v7())
        .bind(family_id)
        .bind(&hash_secret(&token)[..])
        .bind(subject)
        .bind(tenant.map(TenantId::into_uuid))
        .bind(amr)
        .bind(self.ttl_secs())
        .execute(executor)
        .await?;
        Ok(IssuedRefreshToken {
            token,
            family_id,
            expires_in: self.ttl,
        })
    }

    /// Uses `token` once: marks it used and returns its successor. Reuse of a used token revokes
    /// its family and fails with [`RefreshError::Reused`].
    pub async fn rotate(&self, token: &str) -> Result<RefreshGrant, RefreshError> {
        if !token.starts_with(PREFIX) || token.len() > 128 {
            return Err(RefreshError::Invalid);
        }
        let hash = hash_secret(token);
        let mut tx = self.pool.begin().await?;
        // One statement claims the token: under concurrent use exactly one caller wins the row.
        let claimed: Option<(Uuid, String, Option<Uuid>, Vec<String>)> = sqlx::query_as(
            "update arq_auth_refresh_tokens set used_at = now()
              where token_hash = $1 and used_at is null and revoked_at is null
                and expires_at > now()
          returning family_id, subject, bound_tenant_id, amr",
        )
        .bind(&hash[..])
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((family_id, subject, tenant, amr)) = claimed {
            let tenant = tenant.and_then(|t| TenantId::from_uuid(t).ok());
            let next = self
                .insert(&mut *tx, family_id, &subject, tenant, &amr)
                .await?;
            tx.commit().await?;
            return Ok(RefreshGrant {
                subject,
                tenant,
                amr,
                next,
            });
        }
        tx.rollback().await?;
        // Why was it refused?
        let row: Option<(Uuid, bool, bool, bool)> = sqlx::query_as(
            "select family_id, used_at is not null, revoked_at is not null, expires_at <= now()
               from arq_auth_refresh_tokens where token_hash = $1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((_, _, true, _)) => Err(RefreshError::Revoked),
            Some((family, true, false, _)) => {
                let revoked = self.revoke_family(family).await?;
                tracing::warn!(%family, revoked, "refresh token reused; family revoked");
                Err(RefreshError::Reused)
            }
            Some((_, false, false, true)) => Err(RefreshError::Expired),
            // Unknown, or claimed by a concurrent rotation a moment ago.
            None | Some(_) => Err(RefreshError::Invalid),
        }
    }

    async fn revoke_family(&self, family: Uuid) -> Result<u64, RefreshError> {
        Ok(sqlx::query(
            "update arq_auth_refresh_tokens set revoked_at = now()
              where family_id = $1 and revoked_at is null",
        )
        .bind(family)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Logs out the session `token` belongs to: revokes its family. Returns whether the token
    /// was known.
    pub async fn logout(&self, token: &str) -> Result<bool, RefreshError> {
        let family: Option<(Uuid,)> =
            sqlx::query_as("select family_id from arq_auth_refresh_tokens where token_hash = $1")
                .bind(&hash_secret(token)[..])
                .fetch_optional(&self.pool)
                .await?;
        match family {
            Some((family,)) => {
                self.revoke_family(family).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Logs `subject` out everywhere: revokes every refresh token it holds. Returns how many
    /// tokens were revoked.
    pub async fn logout_everywhere(&self, subject: &str) -> Result<u64, RefreshError> {
        Ok(sqlx::query(
            "update arq_auth_refresh_tokens set revoked_at = now()
              where subject = $1 and revoked_at is null",
        )
        .bind(subject)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
