//! Step 4: arq-tenancy — one transaction per request, scoped to the caller's tenant by
//! PostgreSQL row-level security.
//!
//! - Two roles (`arq-tenancy/sql/roles.sql`): `arq_owner` runs [`migrator`], `arq_app` serves.
//! - [`migrator`] runs arq-tenancy's support migration (`arq.current_tenant_id()`,
//!   `arq.enable_tenant_rls`), then `migrations/0001_notes.sql`, whose tables call
//!   `arq.enable_tenant_rls` (ENABLE + FORCE RLS, a restrictive tenant policy, grants).
//! - [`tenant_pool`] audits the database as the runtime role and refuses to serve from one that
//!   would not isolate tenants (a superuser, `BYPASSRLS`, a table without its policy, …).
//! - [`crate::app`] installs [`arq_tenancy::TenantLayer`] (the tenant is the token's `tid`;
//!   `X-Tenant-ID` may only select among the caller's own tenants) and
//!   [`arq_tenancy::TenantTxLayer`]; handlers take a [`arq_tenancy::TenantTx`], committed when
//!   the response is below 400 and rolled back otherwise.

use anyhow::Context;
use arq_tenancy::TenantPool;
use arq_tenancy::audit::{self, AuditReport, UnsafeDatabase, Violation};
use serde::Deserialize;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

/// `[database]`. The URLs themselves (with their passwords) come from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The size of the runtime (`arq_app`) connection pool.
    pub max_connections: u32,
}

/// The outbox table of step 5. It has a `tenant_id` column but no row-level security (the
/// relay reads every tenant's rows); see [`tenant_pool`].
pub const OUTBOX_TABLE: &str = "arq_outbox";

/// The migrations, to run as the owner role: arq-tenancy's support migration first, then
/// `migrations/0001_notes.sql`, arq-queue's outbox table and `migrations/0002_outbox.sql`.
pub fn migrator() -> Migrator {
    let mut migrations: Vec<Migration> = arq_tenancy::migrate::migrator().iter().cloned().collect();
    for (version, name, sql) in [
        (
            20_260_101_000_001,
            "notes",
            include_str!("../migrations/0001_notes.sql"),
        ),
        (
            20_260_101_000_002,
            "arq_outbox",
            arq_queue::outbox::MIGRATION,
        ),
        (
            20_260_101_000_003,
            "outbox grants",
            include_str!("../migrations/0002_outbox.sql"),
        ),
    ] {
        migrations.push(Migration::new(
            version,
            name.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        ));
    }
    Migrator::with_migrations(migrations)
}

/// Connects to `url` with at most `max_connections`, naming `what` the URL is for in errors.
pub async fn connect(url: &str, max_connections: u32, what: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL with {what}"))
}

/// Wraps `pool` (connected as the runtime role) after the start-up audit, like
/// [`TenantPool::checked`], with one documented exception: the outbox table.
///
/// The audit treats every table with a `tenant_id` column as tenant data, and `arq_outbox` has
/// one without row-level security, because the relay must read every tenant's rows. What keeps
/// tenants apart there is the grant: the runtime role may only `INSERT` (it can never read a
/// row back), which this function checks. The outbox's violations are forgiven only while that
/// holds; every other violation, and any read or write right on the outbox, refuses to start.
pub async fn tenant_pool(pool: PgPool) -> anyhow::Result<TenantPool> {
    let mut conn = pool.acquire().await.context("cannot reach PostgreSQL")?;
    let report = audit_allowing_outbox(&mut conn).await?;
    drop(conn);
    tracing::info!(
        role = %report.role,
        tables = report.tenant_tables.len(),
        "tenancy audit passed (the outbox is insert-only for the runtime role)"
    );
    Ok(TenantPool::new(pool))
}

/// The audit of [`tenant_pool`] for the connection's role: the report without the outbox's
/// violations when the role may only insert into the outbox, or the refusal naming the rest.
pub async fn audit_allowing_outbox(conn: &mut PgConnection) -> anyhow::Result<AuditReport> {
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await?;
    let mut report = audit::audit(conn, &role)
        .await
        .context("the tenancy audit could not read the database catalog")?;
    let insert_only: bool = sqlx::query_scalar(
        "SELECT to_regclass($2) IS NULL OR NOT ( \
            has_table_privilege($1, $2, 'SELECT') OR has_table_privilege($1, $2, 'UPDATE') \
         OR has_table_privilege($1, $2, 'DELETE') OR has_table_privilege($1, $2, 'TRUNCATE'))",
    )
    .bind(&role)
    .bind(OUTBOX_TABLE)
    .fetch_one(&mut *conn)
    .await?;
    if insert_only {
        report.violations.retain(|v| !about_outbox(v));
    }
    if report.is_clean() {
        Ok(report)
    } else {
        Err(UnsafeDatabase { report }.into())
    }
}

/// Whether `v` is one of the findings the outbox table has by design (no row-level security,
/// a key without `tenant_id`). Ownership of it by the runtime role is not among them.
fn about_outbox(v: &Violation) -> bool {
    match v {
        Violation::RlsNotEnabled { table }
        | Violation::RlsNotForced { table }
        | Violation::MissingTenantPolicy { table }
        | Violation::UniqueIndexWithoutTenant { table, .. } => table == OUTBOX_TABLE,
        _ => false,
    }
}
