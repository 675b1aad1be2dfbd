//! Tenancy against the real PostgreSQL: every case of PITFALLS 43–57, the randomized isolation
//! test, the HTTP layers and PgBouncer in transaction mode. Each test has its own database.

#![allow(unreachable_pub, dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

mod common;
mod crypto_pg;
mod data;
mod db;
mod http_api;
mod pgbouncer;
