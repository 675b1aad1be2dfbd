//! `arq_tenancy::testing::TestDatabase` against the real PostgreSQL (`ARQ_TEST_DATABASE_URL`):
//! the database exists, belongs to `arq_owner`, answers to every role by options, URL and pool,
//! is migrated as the owner, runs administrator SQL, and is gone after the drop — also when the
//! test panics, and with two created at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use arq_core::testing::{TestService, require};
use arq_tenancy::testing::{Role, TestDatabase};
use sqlx::{ConnectOptions, Connection, PgPool};

/// Whether a database called `name` exists, asked as the administrator in its own database.
async fn exists(name: &str) -> bool {
    let mut conn = sqlx::PgConnection::connect(&require(TestService::Postgres))
        .await
        .unwrap();
    let found = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    found
}

async fn whoami(pool: &PgPool) -> (String, String) {
    sqlx::query_as("SELECT current_user::text, current_database()::text")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn create_names_the_database_after_the_prefix_and_gives_it_to_arq_owner() {
    let db = TestDatabase::create("arq_testing").await;
    let suffix = db.name().strip_prefix("arq_testing_test_").unwrap();
    assert_eq!(suffix.len(), 32, "{}", db.name());
    assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(exists(db.name()).await);

    let admin = db.pool(Role::Admin, 1).await;
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(owner, "arq_owner");
    admin.close().await;
}

#[tokio::test]
async fn every_role_connects_by_options_url_and_pool() {
    let db = TestDatabase::create("arq_testing").await;
    db.cluster_sql_idempotent(arq_queue_relay_role()).await;
    for (role, user) in [
        (Role::Owner, "arq_owner"),
        (Role::App, "arq_app"),
        (Role::Relay, "arq_relay"),
    ] {
        let pool = db.pool(role, 1).await;
        assert_eq!(whoami(&pool).await, (user.to_owned(), db.name().to_owned()));
        pool.close().await;

        let url = db.url(role);
        assert!(
            url.starts_with(&format!("postgres://{user}:{user}@")),
            "{url}"
        );
        let pool = PgPool::connect(&url).await.unwrap();
        assert_eq!(whoami(&pool).await, (user.to_owned(), db.name().to_owned()));
        pool.close().await;

        let mut conn = db.options(role).connect().await.unwrap();
        let (me,): (String,) = sqlx::query_as("SELECT current_user::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(me, user);
        conn.close().await.unwrap();
    }
    // The administrator keeps the credentials of ARQ_TEST_DATABASE_URL, in this database.
    let admin = PgPool::connect(&db.url(Role::Admin)).await.unwrap();
    let (_, database) = whoami(&admin).await;
    assert_eq!(database, db.name());
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(superuser, "the development administrator is a superuser");
    admin.close().await;
}

/// arq-queue's relay role SQL (arq-tenancy does not depend on arq-queue): idempotent, cluster-wide.
fn arq_queue_relay_role() -> &'static str {
    "DO $$ BEGIN
       IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'arq_relay') THEN
         CREATE ROLE arq_relay LOGIN PASSWORD 'arq_relay';
       END IF;
     END $$;"
}

#[tokio::test]
async fn migrate_runs_as_arq_owner_and_admin_sql_as_the_administrator() {
    let db = TestDatabase::create("arq_testing").await;
    db.migrate(&arq_tenancy::migrate::migrator()).await;
    let owner = db.pool(Role::Owner, 1).await;
    let (schema_owner, migrated_by): (String, String) = sqlx::query_as(
        "SELECT pg_get_userbyid(nspowner)::text, \
                (SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = '_sqlx_migrations') \
         FROM pg_namespace WHERE nspname = 'arq'",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(
        (schema_owner.as_str(), migrated_by.as_str()),
        ("arq_owner", "arq_owner")
    );

    // What only the administrator may do, in this database and not in the one of the URL.
    db.admin_sql(
        "CREATE TABLE made_by_admin (x int); ALTER TABLE made_by_admin OWNER TO arq_owner",
    )
    .await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM made_by_admin")
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(n, 0);
    owner.close().await;
    // The migration's pool is closed again: only the one above was ever open as arq_owner.
    let admin = db.pool(Role::Admin, 1).await;
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = 'arq_owner'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(sessions, 0);
    admin.close().await;
}

#[tokio::test]
#[should_panic(expected = "administrator SQL in the test database")]
async fn failing_admin_sql_panics_naming_the_sql() {
    let db = TestDatabase::create("arq_testing").await;
    db.admin_sql("SELECT * FROM no_such_table").await;
}

#[tokio::test]
#[should_panic(expected = "replace '-' with '_'")]
async fn a_prefix_that_is_no_identifier_is_refused_before_anything_is_created() {
    let _db = TestDatabase::create("my-service").await;
}

#[tokio::test]
async fn drop_drops_the_database_even_with_pools_still_open() {
    let db = TestDatabase::create("arq_testing").await;
    let name = db.name().to_owned();
    let app = db.pool(Role::App, 2).await;
    whoami(&app).await;
    drop(db);
    assert!(!exists(&name).await, "{name} survived its TestDatabase");
    // The pool's sessions were ended by DROP DATABASE ... WITH (FORCE).
    assert!(sqlx::query("SELECT 1").execute(&app).await.is_err());
}

#[tokio::test]
async fn a_panicking_test_still_drops_its_database() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = tokio::spawn(async move {
        let db = TestDatabase::create("arq_testing").await;
        tx.send(db.name().to_owned()).unwrap();
        panic!("the test fails");
    });
    assert!(test.await.unwrap_err().is_panic());
    let name = rx.recv().unwrap();
    assert!(!exists(&name).await, "{name} survived a panicking test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_at_once_get_databases_of_their_own_and_race_safely_for_a_role() {
    // A role of this test's own, created by both at the same moment as two test binaries create
    // arq_relay: without the lock and the retry, one would fail with a duplicate key.
    let role = format!(
        "arq_testing_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let create_role = format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
             CREATE ROLE {role} NOLOGIN;
           END IF;
         END $$;"
    );
    let one = || {
        let sql = create_role.clone();
        tokio::spawn(async move {
            let db = TestDatabase::create("arq_testing").await;
            db.cluster_sql_idempotent(sqlx::AssertSqlSafe(sql)).await;
            db.migrate(&arq_tenancy::migrate::migrator()).await;
            db
        })
    };
    let (a, b) = tokio::join!(one(), one());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.name(), b.name());
    assert!(exists(a.name()).await && exists(b.name()).await);

    let admin = a.pool(Role::Admin, 1).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(&role)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(count, 1);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let names = (a.name().to_owned(), b.name().to_owned());
    drop((a, b));
    assert!(!exists(&names.0).await && !exists(&names.1).await);
}
