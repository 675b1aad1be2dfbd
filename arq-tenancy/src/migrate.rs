//! The SQL a service needs for tenant tables, as sqlx migrations and as text.
//!
//! Run [`migrator`] as the **owner** role before the service's own migrations (or copy
//! `arq-tenancy/migrations/*.sql` into the service's `migrations/`), or build one migrator of
//! both with [`with`]. Then, for every tenant table:
//!
//! ```sql
//! CREATE TABLE tasks (
//!     tenant_id uuid   NOT NULL,
//!     id        bigint GENERATED ALWAYS AS IDENTITY,
//!     title     text   NOT NULL,
//!     PRIMARY KEY (tenant_id, id)            -- tenant_id first in every key
//! );
//! SELECT arq.enable_tenant_rls('tasks', 'arq_app');
//! ```
//!
//! Roles are cluster-wide and created once by an administrator: see [`ROLES_SQL`].

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The support migration: `arq.current_tenant_id()`, `arq.enable_tenant_rls(...)` and the
/// `arq.tenant_data_keys` table.
pub const SUPPORT_SQL: &str = include_str!("../migrations/20250101000000_arq_tenancy_support.sql");

/// The version of [`SUPPORT_SQL`] in the migrations table.
pub const SUPPORT_VERSION: i64 = 20_250_101_000_000;

/// Idempotent creation of the owner (`arq_owner`) and runtime (`arq_app`) roles.
pub const ROLES_SQL: &str = include_str!("../sql/roles.sql");

/// A sqlx migrator holding arq-tenancy's migrations (run it as the owner role).
///
/// # Example
/// ```
/// let m = arq_tenancy::migrate::migrator();
/// assert!(m.version_exists(arq_tenancy::migrate::SUPPORT_VERSION));
/// ```
pub fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        SUPPORT_VERSION,
        Cow::Borrowed("arq tenancy support"),
        MigrationType::Simple,
        SUPPORT_SQL.into_sql_str(),
        false,
    )])
}

/// One of a service's own migrations for [`with`]: `(version, name, sql)`.
pub type ServiceMigration = (i64, &'static str, &'static str);

/// A sqlx migrator running arq-tenancy's support migration ([`SUPPORT_SQL`]) first, then
/// `ours`, each a simple migration in a transaction of its own. Run it as the owner role.
///
/// sqlx applies migrations by ascending version, whatever order they are listed in, and records
/// each version once: give every migration its own version above [`SUPPORT_VERSION`], and never
/// change a version or its SQL once it ran somewhere (sqlx refuses a changed checksum).
///
/// # Example
/// ```
/// use arq_tenancy::migrate;
///
/// let m = migrate::with(&[
///     (20_260_101_000_001, "tasks", "CREATE TABLE tasks (tenant_id uuid NOT NULL)"),
///     (20_260_101_000_002, "outbox", "SELECT 1"),
/// ]);
/// let versions: Vec<i64> = m.iter().map(|m| m.version).collect();
/// assert_eq!(versions, [migrate::SUPPORT_VERSION, 20_260_101_000_001, 20_260_101_000_002]);
/// ```
pub fn with(ours: &[ServiceMigration]) -> Migrator {
    let mut migrations: Vec<Migration> = migrator().iter().cloned().collect();
    migrations.extend(ours.iter().map(|&(version, name, sql)| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    }));
    Migrator::with_migrations(migrations)
}

/// `SELECT arq.enable_tenant_rls(...)` for `table` and `runtime_role`, with both quoted as SQL
/// literals (the function quotes them again as identifiers).
///
/// # Example
/// ```
/// assert_eq!(
///     arq_tenancy::migrate::enable_rls_sql("tasks", "arq_app"),
///     "SELECT arq.enable_tenant_rls('tasks', 'arq_app')"
/// );
/// ```
pub fn enable_rls_sql(table: &str, runtime_role: &str) -> String {
    format!(
        "SELECT arq.enable_tenant_rls({}, {})",
        literal(table),
        literal(runtime_role)
    )
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
