//! The runtime pool `main` builds (`projects::connect_tenants`) against the real PostgreSQL: the
//! start-up audit refuses a database that would not isolate tenants, and accepts the migrated
//! one (every tenant table, the history and the outbox included). See `common/mod.rs` for the
//! database each test gets.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::{Role, database};

use ::projects as svc;

#[tokio::test]
async fn the_runtime_pool_refuses_a_database_that_does_not_isolate_tenants() {
    let (db, _tenants) = database().await;
    // The administrator is a superuser: row level security does not apply to it.
    let admin_url = db.url(Role::Admin);
    let err = svc::connect_tenants(admin_url, &svc::DatabaseSettings { max_connections: 2 })
        .await
        .expect_err("a superuser's pool must not serve tenants");
    let message = format!("{err:#}");
    assert!(message.contains("refusing to start"), "{message}");
}

#[tokio::test]
async fn every_tenant_table_has_forced_row_level_security() {
    let (db, _tenants) = database().await;
    let owner = db.pool(Role::Owner, 1).await;
    let tables: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' \
         WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace ORDER BY 1",
    )
    .fetch_all(&owner)
    .await
    .unwrap();
    let names: Vec<&str> = tables.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(names, ["arq_outbox", "project_versions", "projects"]);
    assert!(
        tables.iter().all(|(_, on, forced)| *on && *forced),
        "{tables:?}"
    );
    owner.close().await;
}
