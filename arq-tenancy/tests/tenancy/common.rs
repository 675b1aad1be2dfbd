//! Per-test databases: created as `postgres`, migrated as `arq_owner`, used as `arq_app`,
//! dropped when the handle goes out of scope (also when the test panics).

use std::str::FromStr;

use arq_core::testing::{TestService, require};
use arq_tenancy::TenantPool;
use arq_tenancy::tx::{BeginMode, DEFAULT_STATEMENT_TIMEOUT, DbMetrics};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, PgConnection};

/// The schema most tests use: two tenant tables with composite keys.
pub const FIXTURE: &str = r#"
CREATE TABLE projects (
    tenant_id uuid   NOT NULL,
    id        bigint GENERATED ALWAYS AS IDENTITY,
    name      text   NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);
CREATE TABLE tasks (
    tenant_id  uuid   NOT NULL,
    id         bigint GENERATED ALWAYS AS IDENTITY,
    project_id bigint,
    title      text   NOT NULL,
    attrs      jsonb  NOT NULL DEFAULT '{}',
    secret     bytea,
    secret_idx bytea,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);
SELECT arq.enable_tenant_rls('projects', 'arq_app');
SELECT arq.enable_tenant_rls('tasks', 'arq_app');
GRANT SELECT, INSERT, UPDATE ON arq.tenant_data_keys TO arq_app;
"#;

pub struct TestDb {
    pub name: String,
    base: PgConnectOptions,
    pub owner: PgPool,
    pub app: PgPool,
}

impl TestDb {
    /// A fresh database with the support migration and [`FIXTURE`], app pool of `max` connections.
    pub async fn new(max: u32) -> Self {
        let db = Self::empty(max).await;
        db.owner.execute(FIXTURE).await.unwrap();
        db
    }

    /// A fresh database with only the support migration.
    pub async fn empty(max: u32) -> Self {
        let url = require(TestService::Postgres);
        let base = PgConnectOptions::from_str(&url).unwrap();
        let name = format!("arq_tenancy_{}", uuid::Uuid::new_v4().simple());
        let mut admin = base.connect().await.unwrap();
        admin
            .execute(AssertSqlSafe(format!(
                "CREATE DATABASE {name} OWNER arq_owner"
            )))
            .await
            .unwrap();
        admin.close().await.unwrap();
        let owner = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(Self::as_role(&base, &name, "arq_owner"))
            .await
            .unwrap();
        arq_tenancy::migrate::migrator().run(&owner).await.unwrap();
        let app = PgPoolOptions::new()
            .max_connections(max)
            .connect_with(Self::as_role(&base, &name, "arq_app"))
            .await
            .unwrap();
        Self {
            name,
            base,
            owner,
            app,
        }
    }

    fn as_role(base: &PgConnectOptions, db: &str, role: &str) -> PgConnectOptions {
        base.clone().username(role).password(role).database(db)
    }

    /// Options to connect to this database as `role` (password = name).
    pub fn options(&self, role: &str) -> PgConnectOptions {
        Self::as_role(&self.base, &self.name, role)
    }

    /// A superuser connection to this database.
    pub async fn superuser(&self) -> PgConnection {
        self.base
            .clone()
            .database(&self.name)
            .connect()
            .await
            .unwrap()
    }

    /// The tenant pool over the app pool, with its own metrics registry.
    pub fn pool(&self, mode: BeginMode) -> TenantPool {
        TenantPool::with_options(
            self.app.clone(),
            mode,
            DEFAULT_STATEMENT_TIMEOUT,
            DbMetrics::register(&arq_core::metrics::MetricsRegistry::new()).unwrap(),
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        // Drop runs inside a tokio runtime; drop the database from a thread with its own.
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

/// A cluster-wide role that is dropped (with whatever it owns in `db`) afterwards.
pub struct TempRole {
    pub name: String,
    base: PgConnectOptions,
}

impl TempRole {
    pub async fn create(db: &TestDb, attributes: &str) -> Self {
        let name = format!("arq_t_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut su = db.superuser().await;
        su.execute(AssertSqlSafe(format!("CREATE ROLE {name} {attributes}")))
            .await
            .unwrap();
        Self {
            name,
            base: db.base.clone().database(&db.name),
        }
    }
}

impl Drop for TempRole {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut c) = base.connect().await {
                    let _ = c
                        .execute(AssertSqlSafe(format!(
                            "DROP OWNED BY {name} CASCADE; DROP ROLE IF EXISTS {name}"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}
