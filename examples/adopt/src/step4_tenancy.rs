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
use serde::Deserialize;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};

/// `[database]`. The URLs themselves (with their passwords) come from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The size of the runtime (`arq_app`) connection pool.
    pub max_connections: u32,
}

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

/// Wraps `pool` (connected as the runtime role) after the start-up audit
/// ([`TenantPool::checked`]): a database that would not isolate tenants is refused with every
/// reason named. The outbox table passes because `arq_app` may only insert into it
/// (`migrations/0002_outbox.sql`): the audit lists it as insert-only, and any read or write
/// right on it would make the audit refuse.
pub async fn tenant_pool(pool: PgPool) -> anyhow::Result<TenantPool> {
    let tenants = TenantPool::checked(pool).await?;
    Ok(tenants)
}
