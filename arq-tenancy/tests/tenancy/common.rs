//! Per-test databases ([`TestDatabase`]: created as the administrator, dropped when the handle
//! goes out of scope, also when the test panics), migrated as `arq_owner`, used as `arq_app`.

use arq_tenancy::TenantPool;
use arq_tenancy::testing::{Role, TestDatabase};
use arq_tenancy::tx::{BeginMode, DEFAULT_STATEMENT_TIMEOUT, DbMetrics};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{AssertSqlSafe, ConnectOptions, Executor, PgConnection};

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

/// A [`TestDatabase`] with the support migration, an `arq_owner` pool and an `arq_app` pool.
pub struct TestDb {
    pub owner: PgPool,
    pub app: PgPool,
    /// Creates, names, connects to and drops the database.
    pub database: TestDatabase,
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
        let database = TestDatabase::create("arq_tenancy").await;
        database.migrate(&arq_tenancy::migrate::migrator()).await;
        let owner = database.pool(Role::Owner, 2).await;
        let app = database.pool(Role::App, max).await;
        Self {
            owner,
            app,
            database,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        self.database.name()
    }

    /// Options to connect to this database as `role`.
    pub fn options(&self, role: Role) -> PgConnectOptions {
        self.database.options(role)
    }

    /// A superuser connection to this database (the administrator, a superuser in development).
    pub async fn superuser(&self) -> PgConnection {
        self.options(Role::Admin).connect().await.unwrap()
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
            base: db.options(Role::Admin),
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
