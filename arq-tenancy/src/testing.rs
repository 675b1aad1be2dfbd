//! A database of its own for each test, on the real PostgreSQL (feature `testing`).
//!
//! [`TestDatabase::create`] connects as the administrator named by `ARQ_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`, checked by
//! [`arq_core::testing::require`]), creates `{prefix}_test_{uuid}` owned by `arq_owner`, and
//! drops it again (`WITH (FORCE)`, so open pools do not keep it alive) when the handle is
//! dropped — also when the test panics. In between it hands out what a service's tests need:
//! the service's migrations run as `arq_owner` ([`TestDatabase::migrate`]), connect options,
//! URLs and pools for each [`Role`] (in development a role's password is its name:
//! `arq-tenancy/sql/roles.sql`), SQL run as the administrator in this database
//! ([`TestDatabase::admin_sql`]) and cluster-wide SQL that another test binary may be running
//! at the same time ([`TestDatabase::cluster_sql_idempotent`], e.g. creating the outbox relay
//! role).
//!
//! # Panics
//!
//! Everything here panics instead of returning errors, with a message that names the URL, the
//! role or the SQL and says what to do (start PostgreSQL with `scripts/services up`, create the
//! roles with `sql/roles.sql`). These are test fixtures: a test that cannot get its database
//! must fail loudly, and a panic with instructions is the most useful way to fail it; a `Result`
//! would only be unwrapped by every caller.
//!
//! # Example
//!
//! ```no_run
//! use arq_tenancy::testing::{Role, TestDatabase};
//!
//! # async fn example() {
//! let db = TestDatabase::create("tasks").await; // tasks_test_0c6f…
//! // The outbox relay role is cluster-wide; another test binary may create it concurrently.
//! db.cluster_sql_idempotent(
//!     "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_relay') \
//!      THEN CREATE ROLE arq_relay LOGIN PASSWORD 'arq_relay'; END IF; END $$",
//! )
//! .await;
//! db.migrate(&arq_tenancy::migrate::migrator()).await; // as arq_owner
//! let app = db.pool(Role::App, 4).await;
//! let tenants = arq_tenancy::TenantPool::checked(app).await.unwrap();
//! // The service under test gets `db.url(Role::App)`; the database is dropped with `db`.
//! # drop(tenants);
//! # }
//! ```
#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "test fixtures fail the test with instructions (see the module documentation)"
)]

use std::fmt;
use std::str::FromStr;

use arq_core::testing::{TestService, require};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, PgConnection, SqlSafeStr};

/// Longest accepted prefix: PostgreSQL truncates identifiers to 63 bytes, and the name adds
/// `_test_` and 32 hex digits.
const MAX_PREFIX: usize = 63 - "_test_".len() - 32;

/// Key of the advisory lock that serializes [`TestDatabase::cluster_sql_idempotent`] across
/// test binaries (advisory locks live in the administrator's database, which they all share).
const CLUSTER_SQL_LOCK: i64 = 0x6172_715f_7465_7374; // "arq_test"

/// A role a test connects as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// The administrator of `ARQ_TEST_DATABASE_URL`, with its credentials (a superuser in
    /// development: row-level security does not apply to it).
    Admin,
    /// `arq_owner`: owns the database and runs the migrations (and, with `FORCE ROW LEVEL
    /// SECURITY`, is still subject to the tenant policies).
    Owner,
    /// `arq_app`: what the service runs as.
    App,
    /// `arq_relay`: what the outbox relay runs as (created by arq-queue's `RELAY_ROLE_SQL`).
    Relay,
}

impl Role {
    /// The development role's name (and password); `None` for [`Role::Admin`], whose
    /// credentials come from `ARQ_TEST_DATABASE_URL`.
    pub const fn development_name(self) -> Option<&'static str> {
        match self {
            Self::Admin => None,
            Self::Owner => Some("arq_owner"),
            Self::App => Some("arq_app"),
            Self::Relay => Some("arq_relay"),
        }
    }

    /// What to do when connecting as this role fails.
    const fn hint(self) -> &'static str {
        match self {
            Self::Admin => {
                "the user of ARQ_TEST_DATABASE_URL must be able to create databases (CREATEDB) \
                 and roles; point the variable at an administrator"
            }
            Self::Owner | Self::App => {
                "create the development roles (password = role name) with arq-tenancy's \
                 sql/roles.sql as the administrator; `scripts/services up` does it"
            }
            Self::Relay => {
                "create arq_relay with arq-queue's RELAY_ROLE_SQL (the service's \
                 sql/relay-role.sql), e.g. through TestDatabase::cluster_sql_idempotent"
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.development_name().unwrap_or("the administrator"))
    }
}

/// A database of its own for one test, dropped with the handle (see the
/// [module documentation](self)).
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    /// `ARQ_TEST_DATABASE_URL` as given: the administrator, in its own database.
    admin_url: String,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// Creates `{prefix}_test_{uuid}`, owned by `arq_owner`, as the administrator.
    ///
    /// # Panics
    ///
    /// When `prefix` is not a lowercase identifier of at most 25 characters (letters, digits,
    /// `_`, starting with a letter), when PostgreSQL is unreachable (the message names the URL
    /// and how to start it) or when the database cannot be created (e.g. `arq_owner` is
    /// missing: the message says how to create the roles).
    pub async fn create(prefix: &str) -> Self {
        if let Err(why) = validate_prefix(prefix) {
            panic!("TestDatabase::create({prefix:?}): the prefix {why}");
        }
        let admin_url = require(TestService::Postgres);
        let admin = PgConnectOptions::from_str(&admin_url).unwrap_or_else(|e| {
            panic!(
                "ARQ_TEST_DATABASE_URL={admin_url} is not a PostgreSQL URL ({e}); \
                 use postgres://USER[:PASSWORD]@HOST:PORT/DATABASE"
            )
        });
        let name = format!("{prefix}_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = connect_admin(&admin, &admin_url).await;
        if let Err(e) = conn
            .execute(AssertSqlSafe(format!(
                "CREATE DATABASE {name} OWNER arq_owner"
            )))
            .await
        {
            panic!(
                "creating the test database {name} as the administrator of {admin_url} failed: \
                 {e}. {}; {}",
                Role::Admin.hint(),
                Role::Owner.hint()
            );
        }
        // The database exists from here on: the handle drops it, even if closing fails.
        let db = Self {
            name,
            admin_url,
            admin,
        };
        let _ = conn.close().await;
        db
    }

    /// The database's name, `{prefix}_test_{uuid}`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection options for `role` in this database.
    pub fn options(&self, role: Role) -> PgConnectOptions {
        let options = self.admin.clone().database(&self.name);
        match role.development_name() {
            Some(name) => options.username(name).password(name),
            None => options,
        }
    }

    /// The URL of this database for `role` (what a service's configuration or binary gets).
    /// Host, port and query parameters are those of `ARQ_TEST_DATABASE_URL`.
    pub fn url(&self, role: Role) -> String {
        let (scheme, rest) = self
            .admin_url
            .split_once("://")
            .unwrap_or(("postgres", self.admin_url.as_str()));
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let authority = before_query.split('/').next().unwrap_or(before_query);
        let authority = match role.development_name() {
            Some(name) => {
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{name}:{name}@{host}")
            }
            None => authority.to_owned(),
        };
        let mut url = format!("{scheme}://{authority}/{}", self.name);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    /// A pool of at most `max_connections` connected as `role` to this database.
    ///
    /// # Panics
    ///
    /// When the role cannot connect, saying how to create it.
    pub async fn pool(&self, role: Role, max_connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options(role))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connecting to the test database {} as {role} failed: {e}. {}",
                    self.name,
                    role.hint()
                )
            })
    }

    /// Runs `migrator` in this database as `arq_owner`, as a service's `migrate` command does.
    ///
    /// # Panics
    ///
    /// When `arq_owner` cannot connect or a migration fails (the message names it).
    pub async fn migrate(&self, migrator: &Migrator) {
        let owner = self.pool(Role::Owner, 1).await;
        let result = migrator.run(&owner).await;
        owner.close().await;
        if let Err(e) = result {
            panic!(
                "migrating the test database {} as arq_owner failed: {e}",
                self.name
            );
        }
    }

    /// Runs `sql` (one or more statements) as the administrator in this database: what a
    /// service's documentation asks a DBA to run there (extensions, operators, grants).
    ///
    /// # Panics
    ///
    /// When the SQL fails, quoting its first line.
    pub async fn admin_sql(&self, sql: impl SqlSafeStr) {
        let sql = sql.into_sql_str();
        let options = self.options(Role::Admin);
        let mut conn = connect_admin(&options, &self.admin_url).await;
        if let Err(e) = conn.execute(sqlx::raw_sql(sql.clone())).await {
            panic!(
                "administrator SQL in the test database {} failed: {e}\n  SQL: {}",
                self.name,
                first_line(sql.as_str())
            );
        }
        let _ = conn.close().await;
    }

    /// Runs cluster-wide `sql` (roles, typically) as the administrator in its own database,
    /// where another test binary may be running the same SQL at the same moment.
    ///
    /// `sql` must be idempotent (`IF NOT EXISTS`, a `DO` block that checks `pg_roles`). Every
    /// caller of this function takes the same advisory lock first, so they run one at a time;
    /// a creator that does not (a DBA, a script) can still race the check and the `CREATE`, so
    /// a failure is retried once, when the `IF NOT EXISTS` sees what the other one created.
    ///
    /// # Panics
    ///
    /// When the SQL fails twice, with both errors.
    pub async fn cluster_sql_idempotent(&self, sql: impl SqlSafeStr) {
        let sql = sql.into_sql_str();
        let mut conn = connect_admin(&self.admin, &self.admin_url).await;
        let locked = sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(CLUSTER_SQL_LOCK)
            .execute(&mut conn)
            .await;
        let first = conn.execute(sqlx::raw_sql(sql.clone())).await.err();
        let second = match &first {
            Some(_) => conn.execute(sqlx::raw_sql(sql.clone())).await.err(),
            None => None,
        };
        if locked.is_ok() {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(CLUSTER_SQL_LOCK)
                .execute(&mut conn)
                .await;
        }
        let _ = conn.close().await;
        if let (Some(first), Some(second)) = (first, second) {
            panic!(
                "cluster-wide administrator SQL failed twice ({first}; then {second}); it must be \
                 idempotent and the user of {} must be allowed to run it\n  SQL: {}",
                self.admin_url,
                first_line(sql.as_str())
            );
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop usually runs inside the test's runtime, where blocking on a future is not
        // allowed (and a current-thread runtime would deadlock): drop the database from a thread
        // with a runtime of its own, and wait for it so the database is gone when `drop` returns.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = admin.connect().await.map_err(|e| e.to_string())?;
                // FORCE ends the sessions of pools the test did not close.
                let result = conn
                    .execute(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string());
                let _ = conn.close().await;
                result
            })
        })
        .join();
        // A panic here while the test is already panicking would abort the process and hide the
        // test's own message; a leftover database is only worth a note on stderr (tests rarely
        // install a tracing subscriber, and the test harness shows stderr with a failure).
        let why = match dropped {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => "the dropping thread panicked".to_owned(),
        };
        #[allow(clippy::print_stderr, reason = "see above")]
        {
            eprintln!(
                "arq_tenancy::testing: could not drop the test database {}: {why}; drop it with \
                 `DROP DATABASE {} WITH (FORCE)`",
                self.name, self.name
            );
        }
    }
}

/// Connects as the administrator described by `options`.
async fn connect_admin(options: &PgConnectOptions, url: &str) -> PgConnection {
    options.connect().await.unwrap_or_else(|e| {
        panic!(
            "connecting to PostgreSQL as the administrator of ARQ_TEST_DATABASE_URL={url} \
             failed: {e}. Start the local services with `scripts/services up` from the \
             repository root, or point ARQ_TEST_DATABASE_URL at a PostgreSQL administrator"
        )
    })
}

/// Why `prefix` cannot start a database name, if it cannot.
fn validate_prefix(prefix: &str) -> Result<(), String> {
    let mut chars = prefix.chars();
    match chars.next() {
        None => return Err("is empty; use the service's name, e.g. \"tasks\"".to_owned()),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err("must start with a lowercase ASCII letter".to_owned());
        }
        Some(_) => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        return Err(format!(
            "may only contain lowercase ASCII letters, digits and '_', not {c:?} \
             (replace '-' with '_')"
        ));
    }
    if prefix.len() > MAX_PREFIX {
        return Err(format!(
            "is {} characters long; at most {MAX_PREFIX} fit in a PostgreSQL identifier with the \
             `_test_{{uuid}}` suffix",
            prefix.len()
        ));
    }
    Ok(())
}

/// The first line of `sql`, for an error message.
fn first_line(sql: &str) -> &str {
    sql.trim_start().lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_lowercase_identifiers_that_fit() {
        assert!(validate_prefix("tasks").is_ok());
        assert!(validate_prefix("arq_tenancy2").is_ok());
        assert!(validate_prefix(&"a".repeat(MAX_PREFIX)).is_ok());
        for bad in ["", "1tasks", "_x", "my-service", "Tasks", "a;drop", "é"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
        let too_long = validate_prefix(&"a".repeat(MAX_PREFIX + 1)).unwrap_err();
        assert!(too_long.contains("at most 25"), "{too_long}");
        assert!(
            validate_prefix("my-service")
                .unwrap_err()
                .contains("replace '-'")
        );
    }

    #[test]
    fn role_names_are_the_development_roles() {
        assert_eq!(Role::Owner.to_string(), "arq_owner");
        assert_eq!(Role::App.to_string(), "arq_app");
        assert_eq!(Role::Relay.to_string(), "arq_relay");
        assert_eq!(Role::Admin.development_name(), None);
    }

    #[test]
    fn first_line_of_sql() {
        assert_eq!(first_line("\n  CREATE ROLE x;\nSELECT 1"), "CREATE ROLE x;");
        assert_eq!(first_line(""), "");
    }
}
