//! PgBouncer in transaction mode (Debian's `pgbouncer`): more clients than server connections,
//! tenant transactions stay isolated, and a session-level SET is shown to leak (why arq never
//! uses one).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arq_tenancy::tx::BeginMode;
use arq_tenancy::{TenantId, TenantPool};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::common::TestDb;

const SERVER_POOL: usize = 2;
const CLIENTS: u32 = 10;

/// A private PgBouncer on a free loopback port, killed on drop.
struct Bouncer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Bouncer {
    fn start(db: &str) -> Self {
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("pgbouncer is not installed: apt-get install -y pgbouncer");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("arq-pgbouncer-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = TempDir(dir);
        let userlist = dir.0.join("userlist.txt");
        std::fs::write(
            &userlist,
            "\"arq_app\" \"arq_app\"\n\"arq_owner\" \"arq_owner\"\n",
        )
        .unwrap();
        let ini = dir.0.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 {db} = host=127.0.0.1 port=5432 dbname={db}\n\
                 leaky = host=127.0.0.1 port=5432 dbname={db} pool_size=1\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {userlist}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {SERVER_POOL}\n\
                 max_client_conn = 200\n\
                 ignore_startup_parameters = extra_float_digits\n",
                userlist = userlist.display(),
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root; drop to nobody when we are root (as in CI).
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        if root {
            use std::os::unix::fs::PermissionsExt;
            for p in [&dir.0, &userlist, &ini] {
                let mode = if p.is_dir() { 0o755 } else { 0o644 };
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        let mut cmd = Command::new(binary);
        if root {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut bouncer = Self {
            child,
            port,
            _dir: dir,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                panic!("pgbouncer exited at start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    fn options(&self, db: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username("arq_app")
            .password("arq_app")
            .database(db)
            // PgBouncer < 1.21 cannot track named prepared statements in transaction mode.
            .statement_cache_capacity(0)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn transaction_mode_more_clients_than_servers_stays_isolated() {
    let db = TestDb::new(1).await;
    // Only connections through PgBouncer may be counted below.
    db.app.close().await;
    let bouncer = Bouncer::start(db.name());
    let app = PgPoolOptions::new()
        .max_connections(CLIENTS)
        .min_connections(CLIENTS)
        .connect_with(bouncer.options(db.name()))
        .await
        .unwrap();
    let pool = TenantPool::new(app.clone());
    assert_eq!(pool.mode(), BeginMode::Folded);
    let tenants: Vec<TenantId> = (0..20).map(|_| TenantId::generate()).collect();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS as usize {
        let (pool, tenants) = (pool.clone(), tenants.clone());
        tasks.push(tokio::spawn(async move {
            let mut checked = 0;
            for i in 0..40 {
                let t = tenants[(c * 7 + i) % tenants.len()];
                let mut tx = pool.begin(t).await.unwrap();
                // Unnamed statements (persistent(false)): safe on any PgBouncer version.
                sqlx::query("insert into tasks (tenant_id, title) values ($1, $2)")
                    .bind(t.into_uuid())
                    .bind(t.to_string())
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let seen: Vec<(uuid::Uuid, String)> =
                    sqlx::query_as("select tenant_id, title from tasks")
                        .persistent(false)
                        .fetch_all(&mut *tx)
                        .await
                        .unwrap();
                assert!(
                    seen.iter()
                        .all(|(x, title)| *x == t.into_uuid() && *title == t.to_string())
                );
                checked += seen.len();
                tx.commit().await.unwrap();
            }
            checked
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap() > 0);
    }
    // The server side never had more than the pool size of connections for this database.
    let mut su = db.superuser().await;
    let servers: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = $1 and usename = 'arq_app'",
    )
    .bind(db.name())
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(
        servers as usize <= SERVER_POOL,
        "{servers} server connections"
    );
    // Outside a transaction, on any client and server connection: no tenant, no rows.
    for _ in 0..CLIENTS {
        let n: i64 = sqlx::query_scalar("select count(*) from tasks")
            .persistent(false)
            .fetch_one(&app)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    let total: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(total, i64::from(CLIENTS) * 40);
    app.close().await;
    su.close().await.unwrap();
}

/// Why arq never uses a session-level setting: under transaction pooling it stays on the server
/// connection and the next client that lands there inherits the tenant.
#[tokio::test]
async fn a_session_level_setting_leaks_to_another_client() {
    let db = TestDb::new(1).await;
    let a = TenantId::generate();
    let pool = db.pool(BeginMode::Folded);
    let mut tx = pool.begin(a).await.unwrap();
    sqlx::query("insert into tasks (tenant_id, title) values ($1, 'a')")
        .bind(a.into_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let bouncer = Bouncer::start(db.name());
    let mut x = bouncer.options("leaky").connect().await.unwrap();
    let mut y = bouncer.options("leaky").connect().await.unwrap();
    sqlx::query("select set_config('app.tenant_id', $1, false)")
        .bind(a.to_string())
        .persistent(false)
        .execute(&mut x)
        .await
        .unwrap();
    let leaked: i64 = sqlx::query_scalar("select count(*) from tasks")
        .persistent(false)
        .fetch_one(&mut y)
        .await
        .unwrap();
    assert_eq!(
        leaked, 1,
        "client y sees tenant A's row through x's session setting"
    );
    // The transaction-local form does not leak.
    let mut fix = bouncer.options("leaky").connect().await.unwrap();
    sqlx::query("select set_config('app.tenant_id', '', false)")
        .persistent(false)
        .execute(&mut fix)
        .await
        .unwrap();
    let mut tx = TenantPool::new(
        PgPoolOptions::new()
            .max_connections(1)
            .connect_with(bouncer.options("leaky"))
            .await
            .unwrap(),
    )
    .begin(a)
    .await
    .unwrap();
    let inside: i64 = sqlx::query_scalar("select count(*) from tasks")
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(inside, 1);
    tx.commit().await.unwrap();
    let after: i64 = sqlx::query_scalar("select count(*) from tasks")
        .persistent(false)
        .fetch_one(&mut y)
        .await
        .unwrap();
    assert_eq!(after, 0);
    for c in [x, y, fix] {
        c.close().await.unwrap();
    }
}

/// `DbConfig { pgbouncer: true }`: queries through `&mut tx` are prepared as the unnamed
/// statement even when written as persistent (sqlx's default), so ten clients over two server
/// connections never hit "prepared statement does not exist"; the statement timeout is set in
/// each transaction because PgBouncer does not pass startup parameters on.
#[tokio::test]
async fn db_config_for_pgbouncer_needs_no_persistent_false() {
    let db = TestDb::new(1).await;
    db.app.close().await;
    let bouncer = Bouncer::start(db.name());
    let url = format!(
        "postgres://arq_app:arq_app@127.0.0.1:{}/{}",
        bouncer.port,
        db.name()
    );
    let registry = arq_core::metrics::MetricsRegistry::new();
    let pool = arq_tenancy::DbConfig::new(url)
        .max_connections(CLIENTS)
        .pgbouncer(true)
        .connect_with_metrics(arq_tenancy::tx::DbMetrics::register(&registry).unwrap())
        .await
        .unwrap();
    let tenants: Vec<TenantId> = (0..5).map(|_| TenantId::generate()).collect();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS as usize {
        let (pool, tenants) = (pool.clone(), tenants.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let t = tenants[(c + i) % tenants.len()];
                let mut tx = pool.begin(t).await.unwrap();
                sqlx::query("insert into tasks (tenant_id, title) values ($1, $2)")
                    .bind(t.into_uuid())
                    .bind(t.to_string())
                    .execute(&mut tx)
                    .await
                    .unwrap();
                let seen: Vec<uuid::Uuid> = sqlx::query_scalar("select tenant_id from tasks")
                    .fetch_all(&mut tx)
                    .await
                    .unwrap();
                assert!(seen.iter().all(|x| *x == t.into_uuid()));
                let timeout: String = sqlx::query_scalar("show statement_timeout")
                    .fetch_one(&mut tx)
                    .await
                    .unwrap();
                assert_eq!(timeout, "5s");
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(registry.encode().contains(
        "db_query_duration_seconds_count{operation=\"query\",statement=\"select tenant_id from tasks\"} 200"
    ));
}
