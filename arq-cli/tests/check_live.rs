//! `arq check --live` against the real PostgreSQL: arq-tenancy's audit, mapped to rule ids.
//! Each test makes its own database and drops it.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::process::Command;

use arq_core::testing::{TestService, require};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

fn with_db(base: &str, db: &str) -> String {
    match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{db}"),
        None => panic!("bad test URL {base}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_audit_findings_map_to_rule_ids() {
    let admin_url = require(TestService::Postgres);
    let db = format!("arq_check_live_{}", std::process::id());
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = with_db(&admin_url, &db);
    {
        let mut c = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE notes (tenant_id uuid NOT NULL, id uuid NOT NULL, body text, PRIMARY KEY (tenant_id, id));
             CREATE UNIQUE INDEX notes_body ON notes (body);",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("config")).unwrap();
    std::fs::write(
        tmp.path().join("config/default.toml"),
        "[server]\naddr = \"0.0.0.0:3001\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_arq"))
        .args([
            "check",
            "--live",
            "--format",
            "json",
            "--runtime-role",
            "arq_app",
        ])
        .current_dir(tmp.path())
        .env("DATABASE_URL", &url)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut rules: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    rules.sort_unstable();
    assert_eq!(
        rules,
        [
            "tenancy-missing-tenant-policy",
            "tenancy-rls-not-enabled",
            "tenancy-rls-not-forced",
            "tenancy-unique-without-tenant",
        ],
        "{stdout}"
    );
    // Every finding is reported against the pseudo-path `database`, never the URL.
    assert!(!stdout.contains(&url));
    assert!(stdout.contains("\"path\": \"database\""));
}

#[test]
fn an_unreachable_database_is_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("config")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_arq"))
        .args([
            "check",
            "--live",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/x",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("live tenancy audit"));
}
