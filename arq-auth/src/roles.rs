//! RBAC role assignment per tenant, in PostgreSQL: which roles a subject holds in which tenant.
//!
//! The token issuer reads it at sign-in and on refresh to put the selected tenant's roles into
//! the access token, so a revocation takes effect at the next refresh (access tokens live an hour).

use std::collections::BTreeMap;
use std::sync::Arc;

use arq_core::TenantId;
use sqlx::PgPool;
use uuid::Uuid;

use crate::rbac::Rbac;

/// Why a role assignment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    /// The role is not defined in the store's [`Rbac`] map.
    #[error("the role `{0}` is not defined; assign one of the configured roles")]
    UnknownRole(String),
    /// The database failed.
    #[error("the role store failed: {0}")]
    Storage(#[from] sqlx::Error),
}

/// Role assignments per tenant (table `arq_auth_role_assignments`, from
/// [`migrate`](crate::migrate)).
///
/// Only roles defined in its [`Rbac`] can be assigned, so a typo cannot create a role that
/// silently grants nothing.
///
/// # Example
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), arq_auth::RoleError> {
/// use arq_auth::RoleStore;
/// use arq_core::TenantId;
///
/// let roles = RoleStore::new(pool);
/// let acme = TenantId::generate();
/// roles.assign("user-1", acme, "manager").await?;
/// assert_eq!(roles.roles_in("user-1", acme).await?, ["manager"]);
/// roles.revoke("user-1", acme, "manager").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RoleStore {
    pool: PgPool,
    rbac: Arc<Rbac>,
}

impl RoleStore {
    /// A store accepting arq's standard roles ([`Rbac::standard`]).
    pub fn new(pool: PgPool) -> Self {
        Self::with_rbac(pool, Arc::new(Rbac::standard()))
    }

    /// A store accepting the roles of `rbac`.
    pub fn with_rbac(pool: PgPool, rbac: Arc<Rbac>) -> Self {
        Self { pool, rbac }
    }

    /// Gives `subject` `role` in `tenant`; `false` if it already had it.
    pub async fn assign(
        &self,
        subject: &str,
        tenant: TenantId,
        role: &str,
    ) -> Result<bool, RoleError> {
        if self.rbac.role_permissions(role).is_none() {
            return Err(RoleError::UnknownRole(role.to_owned()));
        }
        let inserted = sqlx::query(
            "insert into arq_auth_role_assignments (subject, bound_tenant_id, role)
             values ($1, $2, $3) on conflict do nothing",
        )
        .bind(subject)
        .bind(tenant.into_uuid())
        .bind(role)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Takes `role` in `tenant` away from `subject`; `false` if it did not have it.
    pub async fn revoke(
        &self,
        subject: &str,
        tenant: TenantId,
        role: &str,
    ) -> Result<bool, RoleError> {
        let deleted = sqlx::query(
            "delete from arq_auth_role_assignments
              where subject = $1 and bound_tenant_id = $2 and role = $3",
        )
        .bind(subject)
        .bind(tenant.into_uuid())
        .bind(role)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted == 1)
    }

    /// Removes every role `subject` holds in `tenant` (leaving the tenant); returns how many.
    pub async fn revoke_all_in(&self, subject: &str, tenant: TenantId) -> Result<u64, RoleError> {
        Ok(sqlx::query(
            "delete from arq_auth_role_assignments where subject = $1 and bound_tenant_id = $2",
        )
        .bind(subject)
        .bind(tenant.into_uuid())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// The roles `subject` holds in `tenant`, sorted.
    pub async fn roles_in(
        &self,
        subject: &str,
        tenant: TenantId,
    ) -> Result<Vec<String>, RoleError> {
        Ok(sqlx::query_scalar(
            "select role from arq_auth_role_assignments
              where subject = $1 and bound_tenant_id = $2 order by role",
        )
        .bind(subject)
        .bind(tenant.into_uuid())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every tenant `subject` holds a role in, with those roles (sorted).
    pub async fn tenants_of(
        &self,
        subject: &str,
    ) -> Result<BTreeMap<TenantId, Vec<String>>, RoleError> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "select bound_tenant_id, role from arq_auth_role_assignments
              where subject = $1 order by bound_tenant_id, role",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<TenantId, Vec<String>> = BTreeMap::new();
        for (tenant, role) in rows {
            // Ids that are not valid tenant ids cannot have been written by `assign`; skip them.
            if let Ok(tenant) = TenantId::from_uuid(tenant) {
                out.entry(tenant).or_default().push(role);
            }
        }
        Ok(out)
    }

    /// The subjects holding any role in `tenant`, with their roles (sorted).
    pub async fn members_of(
        &self,
        tenant: TenantId,
    ) -> Result<BTreeMap<String, Vec<String>>, RoleError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "select subject, role from arq_auth_role_assignments
              where bound_tenant_id = $1 order by subject, role",
        )
        .bind(tenant.into_uuid())
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (subject, role) in rows {
            out.entry(subject).or_default().push(role);
        }
        Ok(out)
    }
}
