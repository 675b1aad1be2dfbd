//! Each test gets its own PostgreSQL database, created here and dropped when the guard drops.

use arq_core::testing::{TestService, require};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub struct TestDb {
    pub pool: PgPool,
    name: String,
    admin: PgConnectOptions,
}

impl TestDb {
    /// A fresh database with arq-auth's migrations applied.
    pub async fn new() -> Self {
        let url = require(TestService::Postgres);
        let admin: PgConnectOptions = url.parse().unwrap();
        let name = format!("arq_auth_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.unwrap();
        // `name` is our own uuid-derived identifier.
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(admin.clone().database(&name))
            .await
            .unwrap();
        arq_auth::migrate(&pool).await.unwrap();
        Self { pool, name, admin }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        // Drop runs inside the test's runtime; do the async cleanup on a thread of its own, with
        // a fresh connection (the pool's sockets belong to the blocked runtime). `with (force)`
        // ends the pool's sessions.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) = admin.connect().await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "drop database if exists {name} with (force)"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}
