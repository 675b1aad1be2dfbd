//! Point select by id: through a tenant transaction (RLS, folded and parameterized begin) vs the
//! same select in a plain transaction on a table without RLS, and in autocommit, same run.
//!
//! Needs the local PostgreSQL (`ARQ_TEST_DATABASE_URL` or the loopback default); creates and
//! drops its own database. Run: `cargo bench -p arq-tenancy --bench tenant_tx`.
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
use arq_tenancy::tx::{BeginMode, DEFAULT_STATEMENT_TIMEOUT, DbMetrics};
use arq_tenancy::{TenantId, TenantPool};
use criterion::{Criterion, criterion_group};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Executor};

const TENANTS: usize = 10;
const ROWS_PER_TENANT: i64 = 10_000;

struct Setup {
    tenants: Vec<TenantId>,
    folded: TenantPool,
    parameterized: TenantPool,
    plain: PgPool,
    set_config: PgPool,
    no_timeout: TenantPool,
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
        set_config: app().await,
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

/// The alternative folded form, `BEGIN; SELECT set_config(...)`, for comparison with the
/// `SET LOCAL` form the library sends.
async fn set_config_select(pool: &PgPool, t: TenantId, id: i64) -> String {
    let mut tx = pool
        .begin_with(AssertSqlSafe(format!(
            "BEGIN; SELECT set_config('app.tenant_id', '{t}', true), \
             set_config('statement_timeout', '5000', true)"
        )))
        .await
        .unwrap();
    let p: String = sqlx::query_scalar("select payload from items where id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
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

fn bench(c: &mut Criterion) {
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
    let mut g = c.benchmark_group("point_select");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    g.bench_function("tenant_tx_folded", |b| {
        b.iter(|| {
            let (t, id) = next();
            rt.block_on(tenant_select(&s.folded, s.tenants[t], id));
        });
    });
    g.bench_function("tenant_tx_parameterized", |b| {
        b.iter(|| {
            let (t, id) = next();
            rt.block_on(tenant_select(&s.parameterized, s.tenants[t], id));
        });
    });
    g.bench_function("tenant_tx_folded_set_config", |b| {
        b.iter(|| {
            let (t, id) = next();
            rt.block_on(set_config_select(&s.set_config, s.tenants[t], id));
        });
    });
    g.bench_function("plain_tx_no_rls", |b| {
        b.iter(|| {
            let (t, id) = next();
            rt.block_on(plain_select(&s.plain, t as i64 * ROWS_PER_TENANT + id));
        });
    });
    g.bench_function("autocommit_no_rls", |b| {
        b.iter(|| {
            let (t, id) = next();
            rt.block_on(autocommit_select(&s.plain, t as i64 * ROWS_PER_TENANT + id));
        });
    });
    g.finish();

    // Paired, interleaved rounds: every round runs a short burst of each variant (in a rotating
    // order), so a noisy neighbour on the shared machine hits all variants alike; the figures
    // reported are medians over rounds of each variant's throughput and of its per-round ratio
    // to the plain transaction.
    const NAMES: [&str; 6] = [
        "tenant_tx_folded",
        "tenant_tx_parameterized",
        "tenant_tx_folded_set_config",
        "plain_tx_no_rls",
        "autocommit_no_rls",
        "tenant_tx_folded_no_timeout",
    ];
    const PLAIN: usize = 3;
    let rounds = 300;
    let per_round = 50;
    let mut tput: Vec<[f64; 6]> = Vec::with_capacity(rounds);
    let mut lat: [Vec<Duration>; 6] = Default::default();
    for round in 0..rounds {
        let mut this = [0.0; 6];
        for step in 0..NAMES.len() {
            let k = (round + step) % NAMES.len();
            let started = Instant::now();
            for _ in 0..per_round {
                let (t, id) = next();
                let global = t as i64 * ROWS_PER_TENANT + id;
                let op = Instant::now();
                match k {
                    0 => drop(rt.block_on(tenant_select(&s.folded, s.tenants[t], id))),
                    1 => drop(rt.block_on(tenant_select(&s.parameterized, s.tenants[t], id))),
                    2 => drop(rt.block_on(set_config_select(&s.set_config, s.tenants[t], id))),
                    3 => drop(rt.block_on(plain_select(&s.plain, global))),
                    4 => drop(rt.block_on(autocommit_select(&s.plain, global))),
                    _ => drop(rt.block_on(tenant_select(&s.no_timeout, s.tenants[t], id))),
                }
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
        s.folded.unscoped("bench teardown").close().await;
        s.parameterized.unscoped("bench teardown").close().await;
        s.plain.close().await;
        s.set_config.close().await;
        s.no_timeout.unscoped("bench teardown").close().await;
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

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
