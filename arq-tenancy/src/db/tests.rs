//! [`DbConfig::connect_checked`] and [`crate::migrate::with`] against the real PostgreSQL
//! (`ARQ_TEST_DATABASE_URL`), each test in a database of its own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::str::FromStr;

use arq_core::testing::{TestService, require};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};

use super::{CheckedConnectError, DbConfig, DbError};
use crate::TenantId;
use crate::audit::Violation;

/// A database made as the administrator and owned by `arq_owner`, dropped (with `FORCE`) when
/// the guard goes, also when the test panics.
pub(crate) struct TempDatabase {
    base: PgConnectOptions,
    name: String,
}

impl TempDatabase {
    pub(crate) async fn new() -> Self {
        let base = PgConnectOptions::from_str(&require(TestService::Postgres)).unwrap();
        let name = format!("arq_tenancy_db_{}", uuid::Uuid::new_v4().simple());
        let mut admin = base.connect().await.unwrap();
        admin
            .execute(AssertSqlSafe(format!(
                "CREATE DATABASE {name} OWNER arq_owner"
            )))
            .await
            .unwrap();
        admin.close().await.unwrap();
        Self { base, name }
    }

    /// The URL of this database as `role` (password = name), or as the administrator.
    pub(crate) fn url(&self, role: Option<&str>) -> String {
        let options = self.base.clone();
        let host = options.get_host();
        let port = options.get_port();
        match role {
            Some(role) => format!("postgres://{role}:{role}@{host}:{port}/{}", self.name),
            None => {
                let user = options.get_username();
                format!("postgres://{user}@{host}:{port}/{}", self.name)
            }
        }
    }

    pub(crate) async fn owner(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url(Some("arq_owner")))
            .await
            .unwrap()
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; drop the database from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut c) = base.connect().await {
                    let _ = c
                        .execute(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

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
    let db = TempDatabase::new().await;
    let owner = db.owner().await;
    crate::migrate::with(&[(20_260_101_000_001, "notes", NOTES)])
        .run(&owner)
        .await
        .unwrap();

    let err = DbConfig::new(db.url(Some("arq_app")))
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
    let err = DbConfig::new(db.url(None))
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
    let db = TempDatabase::new().await;
    let owner = db.owner().await;
    crate::migrate::with(&[(20_260_101_000_001, "notes", NOTES_RLS)])
        .run(&owner)
        .await
        .unwrap();

    let tenants = DbConfig::new(db.url(Some("arq_app")))
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
    let db = TempDatabase::new().await;
    let owner = db.owner().await;
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
    let migrator = crate::migrate::with(&ours);
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
                crate::migrate::SUPPORT_VERSION,
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
    crate::migrate::with(&ours).run(&owner).await.unwrap();
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
