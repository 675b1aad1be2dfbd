//! Point select by id: through a tenant transaction (RLS; the statement timeout per transaction
//! or per connection; folded and parameterized begin; with and without the query metrics) vs the
//! same select in a plain transaction on a table without RLS, and in autocommit, in paired,
//! interleaved rounds.
//!
//! Needs the local PostgreSQL (`ARQ_TEST_DATABASE_URL` or the loopback default); creates and
//! drops its own database. Run: `cargo bench -p arq-tenancy --bench tenant_tx`
//! (`ARQ_BENCH_ROUNDS` overrides the 300 rounds; `ARQ_BENCH_ONLY=plain_tx_no_rls,...` runs only the
//! named variants, for counting one variant's client instructions under callgrind).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "benchmark harness"
)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use arq_core::metrics::MetricsRegistry;
use arq_core::testing::{TestService, require};
use arq_tenancy::db::DbConfig;
use arq_tenancy::tx::{BeginMode, DEFAULT_STATEMENT_TIMEOUT, DbMetrics};
use arq_tenancy::{TenantId, TenantPool};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Executor};

const TENANTS: usize = 10;
const ROWS_PER_TENANT: i64 = 10_000;

struct Setup {
    tenants: Vec<TenantId>,
    folded: TenantPool,
    parameterized: TenantPool,
    plain: PgPool,
    no_timeout: TenantPool,
    startup_timeout: TenantPool,
    base: PgConnectOptions,
    name: String,
}

async fn setup() -> Setup {
    let base = PgConnectOptions::from_str(&require(TestService::Postgres)).unwrap();
    let name = format!("arq_tenancy_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = base.connect().await.unwrap();
    admin
        .execute(AssertSqlSafe(format!(
            "CREATE DATABASE {name} OWNER arq_owner"
        )))
        .await
        .unwrap();
    let owner = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            base.clone()
                .username("arq_owner")
                .password("arq_owner")
                .database(&name),
        )
        .await
        .unwrap();
    arq_tenancy::migrate::migrator().run(&owner).await.unwrap();
    owner
        .execute(
            "CREATE TABLE items (tenant_id uuid NOT NULL, id bigint NOT NULL, payload text NOT NULL, \
                                 PRIMARY KEY (tenant_id, id)); \
             SELECT arq.enable_tenant_rls('items', 'arq_app'); \
             ALTER TABLE items NO FORCE ROW LEVEL SECURITY; \
             CREATE TABLE plain_items (id bigint PRIMARY KEY, owner uuid NOT NULL, payload text NOT NULL); \
             GRANT SELECT ON plain_items TO arq_app;",
        )
        .await
        .unwrap();
    let tenants: Vec<TenantId> = (0..TENANTS).map(|_| TenantId::generate()).collect();
    for (i, t) in tenants.iter().enumerate() {
        let offset = i as i64 * ROWS_PER_TENANT;
        sqlx::query("insert into items select $1, g, md5(g::text) from generate_series(1, $2) g")
            .bind(t.into_uuid())
            .bind(ROWS_PER_TENANT)
            .execute(&owner)
            .await
            .unwrap();
        sqlx::query(
            "insert into plain_items select $3 + g, $1, md5(g::text) from generate_series(1, $2) g",
        )
        .bind(t.into_uuid())
        .bind(ROWS_PER_TENANT)
        .bind(offset)
        .execute(&owner)
        .await
        .unwrap();
    }
    owner
        .execute("ALTER TABLE items FORCE ROW LEVEL SECURITY; ANALYZE items; ANALYZE plain_items;")
        .await
        .unwrap();
    owner.close().await;
    // One connection each: the benchmark measures round trips, not parallelism.
    let app = || async {
        PgPoolOptions::new()
            .max_connections(1)
            .connect_with(
                base.clone()
                    .username("arq_app")
                    .password("arq_app")
                    .database(&name),
            )
            .await
            .unwrap()
    };
    let metrics = DbMetrics::register(&MetricsRegistry::new()).unwrap();
    Setup {
        folded: TenantPool::with_options(
            app().await,
            BeginMode::Folded,
            DEFAULT_STATEMENT_TIMEOUT,
            metrics.clone(),
        ),
        parameterized: TenantPool::with_options(
            app().await,
            BeginMode::Parameterized,
            DEFAULT_STATEMENT_TIMEOUT,
            metrics,
        ),
        plain: app().await,
        // What `DbConfig::connect` builds: the timeout a startup parameter of the connection.
        startup_timeout: DbConfig::new(format!(
            "postgres://arq_app:arq_app@{}:{}/{name}",
            base.get_host(),
            base.get_port()
        ))
        .max_connections(1)
        .connect_with_metrics(DbMetrics::register(&MetricsRegistry::new()).unwrap())
        .await
        .unwrap(),
        no_timeout: TenantPool::with_options(
            app().await,
            BeginMode::Folded,
            Duration::ZERO,
            DbMetrics::register(&MetricsRegistry::new()).unwrap(),
        ),
        tenants,
        base,
        name,
    }
}

async fn tenant_select(pool: &TenantPool, t: TenantId, id: i64) -> String {
    let mut tx = pool.begin(t).await.unwrap();
    let p: String = sqlx::query_scalar("select payload from items where id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    p
}

/// The same through `&mut tx`: the query is timed into `db_query_duration_seconds` under its
/// fingerprint and checked against the slow-query threshold.
async fn observed_select(pool: &TenantPool, t: TenantId, id: i64) -> String {
    let mut tx = pool.begin(t).await.unwrap();
    let p: String = sqlx::query_scalar("select payload from items where id = $1")
        .bind(id)
        .fetch_one(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    p
}

async fn plain_select(pool: &PgPool, id: i64) -> String {
    let mut tx = pool.begin().await.unwrap();
    let p: String = sqlx::query_scalar("select payload from plain_items where id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    p
}

async fn autocommit_select(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("select payload from plain_items where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let mut n: u64 = 0;
    let mut next = || {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let t = (n >> 33) as usize % TENANTS;
        let id = 1 + ((n >> 17) as i64).rem_euclid(ROWS_PER_TENANT);
        (t, id)
    };

    // Paired, interleaved rounds: every round runs a short burst of each variant (in a rotating
    // order), so a noisy neighbour on the shared machine hits all variants alike; the figures
    // reported are medians over rounds of each variant's throughput and of its per-round ratio
    // to the plain transaction.
    const NAMES: [&str; 7] = [
        "tenant_tx_folded",
        "tenant_tx_startup_timeout",
        "tenant_tx_observed",
        "tenant_tx_folded_no_timeout",
        "tenant_tx_parameterized",
        "plain_tx_no_rls",
        "autocommit_no_rls",
    ];
    const PLAIN: usize = 5;
    let rounds: usize = std::env::var("ARQ_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let per_round = 50;
    // Warm-up: connections open, statements prepared, plans cached.
    let only = std::env::var("ARQ_BENCH_ONLY").ok();
    let selected = |k: usize| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == NAMES[k]))
    };
    for k in 0..NAMES.len() * 200 {
        let (t, id) = next();
        if selected(k % NAMES.len()) {
            run(&rt, &s, k % NAMES.len(), t, id);
        }
    }
    let mut tput: Vec<[f64; NAMES.len()]> = Vec::with_capacity(rounds);
    let mut lat: [Vec<Duration>; NAMES.len()] = Default::default();
    for round in 0..rounds {
        let mut this = [0.0; NAMES.len()];
        for step in 0..NAMES.len() {
            let k = (round + step) % NAMES.len();
            if !selected(k) {
                continue;
            }
            let started = Instant::now();
            for _ in 0..per_round {
                let (t, id) = next();
                let op = Instant::now();
                run(&rt, &s, k, t, id);
                lat[k].push(op.elapsed());
            }
            this[k] = f64::from(per_round) / started.elapsed().as_secs_f64();
        }
        tput.push(this);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\npaired rounds: {rounds} rounds x {per_round} point selects per variant, one connection each"
    );
    println!(
        "  {:<28} {:>8} {:>10} {:>8} {:>8}",
        "variant", "ops/s", "vs plain", "p50 us", "p99 us"
    );
    for (k, name) in NAMES.iter().enumerate() {
        if !selected(k) {
            continue;
        }
        let ops = median(tput.iter().map(|r| r[k]).collect());
        let ratio = median(tput.iter().map(|r| r[k] / r[PLAIN]).collect());
        let l = &mut lat[k];
        l.sort();
        let p50 = l[l.len() / 2].as_micros();
        let p99 = l[l.len() * 99 / 100].as_micros();
        println!(
            "  {name:<28} {ops:>8.0} {:>9.1}% {p50:>8} {p99:>8}",
            100.0 * ratio
        );
    }

    rt.block_on(async {
        for pool in [
            &s.folded,
            &s.parameterized,
            &s.no_timeout,
            &s.startup_timeout,
        ] {
            pool.unscoped("bench teardown").close().await;
        }
        s.plain.close().await;
        let mut admin = s.base.connect().await.unwrap();
        admin
            .execute(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                s.name
            )))
            .await
            .unwrap();
    });
}

fn run(rt: &tokio::runtime::Runtime, s: &Setup, k: usize, t: usize, id: i64) {
    let global = t as i64 * ROWS_PER_TENANT + id;
    let tenant = s.tenants[t];
    match k {
        0 => drop(rt.block_on(tenant_select(&s.folded, tenant, id))),
        1 => drop(rt.block_on(tenant_select(&s.startup_timeout, tenant, id))),
        2 => drop(rt.block_on(observed_select(&s.startup_timeout, tenant, id))),
        3 => drop(rt.block_on(tenant_select(&s.no_timeout, tenant, id))),
        4 => drop(rt.block_on(tenant_select(&s.parameterized, tenant, id))),
        5 => drop(rt.block_on(plain_select(&s.plain, global))),
        _ => drop(rt.block_on(autocommit_select(&s.plain, global))),
    }
}
