//! The generated `compose.yaml`: one database per service with a database, created by the
//! idempotent `db-init` job on every `up`; its SQL run against the real PostgreSQL; and, where
//! `docker compose` is installed, the file as Compose itself reads it.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arq_core::testing::{TestService, require};
use serde_norway::Value;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

fn arq(cwd: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_arq"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "arq {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A platform with two database services (`ONE`, `TWO`; TWO's name has a hyphen) and a worker
/// (`WORKER`), made by the binary exactly as a user would.
fn platform(one: &str, two: &str, worker: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    arq(tmp.path(), &["init", "acme", "--arq-version", "0.1.0"]);
    let root = tmp.path().join("acme");
    arq(&root, &["new", "service", one]);
    arq(&root, &["new", "service", two]);
    arq(
        &root,
        &[
            "new",
            "service",
            worker,
            "--kind",
            "worker",
            "--queue",
            "email.send",
        ],
    );
    (tmp, root)
}

fn compose(root: &Path) -> (String, Value) {
    let text = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    let doc = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, doc)
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("no service {name} in compose.yaml"))
}

fn env<'a>(doc: &'a Value, name: &str, key: &str) -> Option<&'a str> {
    service(doc, name).get("environment")?.get(key)?.as_str()
}

/// `depends_on` of `name` as (dependency, condition) pairs.
fn depends_on(doc: &Value, name: &str) -> Vec<(String, String)> {
    let Some(deps) = service(doc, name).get("depends_on") else {
        return Vec::new();
    };
    match deps {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let cond = v.get("condition").and_then(Value::as_str).unwrap_or("");
                (k.as_str().unwrap().to_owned(), cond.to_owned())
            })
            .collect(),
        Value::Sequence(s) => s
            .iter()
            .map(|v| (v.as_str().unwrap().to_owned(), "service_started".to_owned()))
            .collect(),
        other => panic!("depends_on of {name} is {other:?}"),
    }
}

/// The SQL `db-init` runs, as psql receives it: the config's content after Compose's
/// interpolation, where `$$` stands for one `$`.
fn init_sql(doc: &Value) -> String {
    let init = service(doc, "db-init");
    let configs = init.get("configs").and_then(Value::as_sequence).unwrap();
    let source = configs
        .iter()
        .find(|c| c.get("target").and_then(Value::as_str) == Some("/arq-init.sql"))
        .and_then(|c| c.get("source"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("db-init mounts no /arq-init.sql: {init:?}"));
    let content = doc
        .get("configs")
        .and_then(|c| c.get(source))
        .and_then(|c| c.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no configs.{source}.content"));
    content.replace("$$", "$")
}

#[test]
fn every_database_service_has_its_own_database_created_by_db_init() {
    let (_tmp, root) = platform("tasks", "billing-api", "mailer");
    let (text, doc) = compose(&root);

    // Each database service, its migrate job and nothing else use a database named after it.
    for (svc, db) in [("tasks", "tasks"), ("billing-api", "billing_api")] {
        assert_eq!(
            env(&doc, &format!("{svc}-migrate"), "DATABASE_OWNER_URL"),
            Some(format!("postgres://arq_owner:arq_owner@postgres:5432/{db}").as_str()),
            "{text}"
        );
        assert_eq!(
            env(&doc, svc, "DATABASE_URL"),
            Some(format!("postgres://arq_app:arq_app@postgres:5432/{db}").as_str()),
            "{text}"
        );
        // The migrate job waits for db-init to have succeeded; the service for its migrations.
        assert_eq!(
            depends_on(&doc, &format!("{svc}-migrate")),
            [(
                "db-init".to_owned(),
                "service_completed_successfully".to_owned()
            )],
        );
        assert!(
            depends_on(&doc, svc).contains(&(
                format!("{svc}-migrate"),
                "service_completed_successfully".to_owned()
            )),
            "{text}"
        );
    }
    assert!(
        !text.contains("/acme"),
        "no database is named after the platform:\n{text}"
    );
    assert_eq!(env(&doc, "mailer", "DATABASE_URL"), None);
    assert!(!text.contains("mailer-migrate"), "{text}");

    // The init job: psql against the compose PostgreSQL once it is healthy, stopping at the
    // first error so that a failure stops the migrate jobs.
    let init = service(&doc, "db-init");
    assert_eq!(
        init.get("image").and_then(Value::as_str),
        Some("postgres:15.10-bookworm")
    );
    let command: Vec<&str> = init
        .get("command")
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        [
            "psql",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "postgres",
            "-U",
            "postgres",
            "-f",
            "/arq-init.sql"
        ]
    );
    assert_eq!(
        depends_on(&doc, "db-init"),
        [("postgres".to_owned(), "service_healthy".to_owned())]
    );
    // Nothing relies on /docker-entrypoint-initdb.d, which runs only on a new volume.
    let postgres = service(&doc, "postgres");
    assert!(postgres.get("configs").is_none(), "{text}");
    assert!(
        postgres
            .get("environment")
            .unwrap()
            .get("POSTGRES_DB")
            .is_none(),
        "{text}"
    );

    let sql = init_sql(&doc);
    assert!(sql.contains("CREATE ROLE arq_owner") && sql.contains("CREATE ROLE arq_app"));
    for db in ["tasks", "billing_api"] {
        assert!(
            sql.contains(&format!(
                "SELECT 'CREATE DATABASE \"{db}\" OWNER arq_owner'\n\
                 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}')\\gexec"
            )),
            "{sql}"
        );
    }
    assert!(!sql.contains("mailer"), "a worker has no database:\n{sql}");

    // Compose interpolates `$`: every `$` in the file is doubled, so the SQL reaches psql intact.
    for run in text.split(|c| c != '$').filter(|r| !r.is_empty()) {
        assert!(
            run.len() % 2 == 0,
            "an undoubled `$` in compose.yaml:\n{text}"
        );
    }
}

#[test]
fn a_service_added_later_gets_its_database_on_the_next_up() {
    let (_tmp, root) = platform("tasks", "billing-api", "mailer");
    arq(&root, &["new", "service", "reports"]);
    let (text, doc) = compose(&root);
    assert!(
        init_sql(&doc).contains("CREATE DATABASE \"reports\" OWNER arq_owner"),
        "{text}"
    );
    assert_eq!(
        env(&doc, "reports-migrate", "DATABASE_OWNER_URL"),
        Some("postgres://arq_owner:arq_owner@postgres:5432/reports")
    );
    assert_eq!(
        depends_on(&doc, "reports-migrate"),
        [(
            "db-init".to_owned(),
            "service_completed_successfully".to_owned()
        )]
    );
}

fn with_db(base: &str, db: &str) -> String {
    match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{db}"),
        None => panic!("bad test URL {base}"),
    }
}

fn psql(url: &str, file: &Path) -> Output {
    Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-f"])
        .arg(file)
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run psql ({e}): db-init's SQL uses psql's \\gexec, so this test needs the \
                 PostgreSQL client (Debian: apt-get install postgresql-client)"
            )
        })
}

async fn owner(admin: &mut PgConnection, db: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1::text",
    )
    .bind(db)
    .fetch_optional(admin)
    .await
    .unwrap()
}

/// db-init's SQL, as psql runs it in the container, against the real PostgreSQL: it creates
/// each missing database owned by arq_owner, changes nothing when run again, and refuses a
/// database of the same name that belongs to another role (the migrations would fail on it).
#[tokio::test(flavor = "multi_thread")]
async fn init_sql_creates_each_database_once_and_refuses_a_foreign_owner() {
    let admin_url = require(TestService::Postgres);
    // Service names unique to this run: the databases live in the shared test cluster.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = format!("ci{}x{nanos}", std::process::id());
    let (one, two, worker) = (
        format!("{tag}-orders"),
        format!("{tag}-billing-api"),
        format!("{tag}-mailer"),
    );
    let (tmp, root) = platform(&one, &two, &worker);
    let (_, doc) = compose(&root);
    let file = tmp.path().join("arq-init.sql");
    std::fs::write(&file, init_sql(&doc)).unwrap();
    let (db_one, db_two, db_worker) = (
        one.replace('-', "_"),
        two.replace('-', "_"),
        worker.replace('-', "_"),
    );

    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    // A database of that name left by someone else, owned by postgres.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_two}")))
        .execute(&mut admin)
        .await
        .unwrap();

    let refused = psql(&admin_url, &file);
    let refused_err = String::from_utf8_lossy(&refused.stderr).into_owned();
    // Fixed by its owner's change, the next run passes, and so does the one after.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db_two} OWNER TO arq_owner"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let first = psql(&admin_url, &file);
    let first_one_owner = owner(&mut admin, &db_one).await;
    let again = psql(&admin_url, &file);
    let owners = (
        owner(&mut admin, &db_one).await,
        owner(&mut admin, &db_two).await,
        owner(&mut admin, &db_worker).await,
    );
    // The migrate job's URL names a database arq_owner can create tables in.
    let migrate_url = env(&doc, &format!("{one}-migrate"), "DATABASE_OWNER_URL")
        .unwrap()
        .to_owned();
    let as_owner = with_db(&admin_url, &db_one).replacen("postgres@", "arq_owner:arq_owner@", 1);
    let created = match PgConnection::connect(&as_owner).await {
        Ok(mut c) => {
            let r = sqlx::raw_sql("CREATE TABLE probe (id int PRIMARY KEY)")
                .execute(&mut c)
                .await
                .map(|_| ());
            c.close().await.unwrap();
            r.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };

    for db in [&db_one, &db_two, &db_worker] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }

    assert!(
        !refused.status.success(),
        "a database owned by postgres is refused"
    );
    assert!(
        refused_err.contains(&format!("{db_two} (owned by postgres)"))
            && refused_err.contains("must belong to arq_owner")
            && refused_err.contains("ALTER DATABASE"),
        "{refused_err}"
    );
    for (run, out) in [("first", &first), ("second", &again)] {
        assert!(
            out.status.success(),
            "{run} run: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(first_one_owner.as_deref(), Some("arq_owner"));
    assert_eq!(
        owners,
        (Some("arq_owner".into()), Some("arq_owner".into()), None)
    );
    assert!(
        migrate_url.ends_with(&format!("/{db_one}")),
        "{migrate_url}"
    );
    assert_eq!(created, Ok(()), "arq_owner can create tables in {db_one}");
}

/// `docker compose config -q` parses and validates the file the way `docker compose up` will.
/// Where Compose is not installed this test says so on stderr (run with `--nocapture` to see
/// it) and checks nothing more than the tests above.
#[test]
fn docker_compose_accepts_the_generated_file() {
    let available = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .map_err(|e| format!("docker is not installed ({e})"))
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`docker compose version` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        });
    if let Err(why) = available {
        eprintln!(
            "NOT RUN: docker_compose_accepts_the_generated_file cannot validate compose.yaml with \
             `docker compose config -q`: {why}. Install the Docker Compose plugin to run it."
        );
        return;
    }
    let (_tmp, root) = platform("tasks", "billing-api", "mailer");
    let out = Command::new("docker")
        .args(["compose", "-f", "compose.yaml", "config", "-q"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker compose refused the generated file: {}{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(root.join("compose.yaml")).unwrap()
    );
}
