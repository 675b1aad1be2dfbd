//! [`DbConfig::connect_checked`] and [`arq_tenancy::migrate::with`] against the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`), each test in a database of its own
//! ([`arq_tenancy::testing::TestDatabase`]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use arq_tenancy::TenantId;
use arq_tenancy::audit::Violation;
use arq_tenancy::db::{CheckedConnectError, DbConfig, DbError};
use arq_tenancy::testing::{Role, TestDatabase};

macro_rules! notes {
    () => {
        "CREATE TABLE notes (
            tenant_id uuid   NOT NULL,
            id        bigint GENERATED ALWAYS AS IDENTITY,
            body      text   NOT NULL,
            PRIMARY KEY (tenant_id, id)
        );
        GRANT SELECT, INSERT ON notes TO arq_app;"
    };
}

/// A tenant table the runtime role can read, without row level security.
const NOTES: &str = notes!();

/// The same table with arq's tenant isolation.
const NOTES_RLS: &str = concat!(
    notes!(),
    "\nSELECT arq.enable_tenant_rls('notes', 'arq_app');"
);

#[tokio::test]
async fn a_database_that_fails_the_audit_is_refused_naming_the_violation() {
    let db = TestDatabase::create("arq_tenancy_db").await;
    let owner = db.pool(Role::Owner, 1).await;
    arq_tenancy::migrate::with(&[(20_260_101_000_001, "notes", NOTES)])
        .run(&owner)
        .await
        .unwrap();

    let err = DbConfig::new(db.url(Role::App))
        .max_connections(2)
        .connect_checked()
        .await
        .expect_err("a table without row level security must be refused");
    let report = &err.unsafe_database().expect("refused by the audit").report;
    assert_eq!(report.role, "arq_app");
    assert!(
        report.violations.contains(&Violation::RlsNotEnabled {
            table: "notes".into()
        }),
        "{report}"
    );
    // What `main` prints (`{e:#}`), unchanged from the services' own start-up code.
    let message = anyhow_like(&err);
    assert!(
        message.starts_with("refusing to start: the database is not safe for tenant data"),
        "{message}"
    );
    assert!(message.contains("notes"), "{message}");

    // The administrator is a superuser: row level security does not apply to it.
    let err = DbConfig::new(db.url(Role::Admin))
        .max_connections(2)
        .connect_checked()
        .await
        .expect_err("a superuser's pool must not serve tenants");
    let message = anyhow_like(&err);
    assert!(message.contains("refusing to start"), "{message}");
    assert!(message.contains("superuser"), "{message}");
}

#[tokio::test]
async fn a_safe_database_gets_a_pool_with_the_configured_statement_timeout() {
    let db = TestDatabase::create("arq_tenancy_db").await;
    let owner = db.pool(Role::Owner, 1).await;
    arq_tenancy::migrate::with(&[(20_260_101_000_001, "notes", NOTES_RLS)])
        .run(&owner)
        .await
        .unwrap();

    let tenants = DbConfig::new(db.url(Role::App))
        .max_connections(2)
        .statement_timeout(std::time::Duration::from_secs(7))
        .connect_checked()
        .await
        .unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(tenants.unscoped("test: read a connection setting"))
        .await
        .unwrap();
    assert_eq!(timeout, "7s");

    // Each tenant sees only its own rows.
    let (a, b) = (TenantId::generate(), TenantId::generate());
    let mut tx = tenants.begin(a).await.unwrap();
    sqlx::query("INSERT INTO notes (tenant_id, body) VALUES (arq.current_tenant_id(), 'a')")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = tenants.begin(b).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(seen, 0);
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_server_says_so() {
    let err = DbConfig::new("postgres://arq_app@127.0.0.1:notaport/app".to_owned())
        .connect_checked()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CheckedConnectError::Config(DbError::Url { which: "primary" })
        ),
        "{err:?}"
    );
    assert_eq!(
        anyhow_like(&err),
        "the primary database URL is not a valid PostgreSQL URL"
    );

    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let err = DbConfig::new("postgres://arq_app:arq_app@127.0.0.1:1/none".to_owned())
        .connect_checked()
        .await
        .unwrap_err();
    assert!(matches!(err, CheckedConnectError::Connect(_)), "{err:?}");
    assert!(
        anyhow_like(&err).starts_with("cannot connect to PostgreSQL: "),
        "{}",
        anyhow_like(&err)
    );
}

#[tokio::test]
async fn the_builder_runs_the_support_migration_then_ours_by_version() {
    let db = TestDatabase::create("arq_tenancy_db").await;
    let owner = db.pool(Role::Owner, 1).await;
    // Listed out of order: the second needs the first's table, the first needs the support
    // migration's function.
    let ours = [
        (
            20_260_101_000_002,
            "second",
            "ALTER TABLE notes ADD COLUMN title text",
        ),
        (
            20_260_101_000_001,
            "first",
            "CREATE TABLE notes (tenant_id uuid NOT NULL, id bigint NOT NULL, \
             PRIMARY KEY (tenant_id, id)); SELECT arq.enable_tenant_rls('notes', 'arq_app');",
        ),
    ];
    let migrator = arq_tenancy::migrate::with(&ours);
    migrator.run(&owner).await.unwrap();
    let applied: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(
        applied,
        [
            (
                arq_tenancy::migrate::SUPPORT_VERSION,
                "arq tenancy support".to_owned()
            ),
            (20_260_101_000_001, "first".to_owned()),
            (20_260_101_000_002, "second".to_owned()),
        ]
    );
    let title: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_name = 'notes' AND column_name = 'title')",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert!(title);
    // Running again applies nothing and fails nothing.
    arq_tenancy::migrate::with(&ours).run(&owner).await.unwrap();
}

/// The error and its sources joined by `": "`, as anyhow's `{:#}` prints them.
fn anyhow_like(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
