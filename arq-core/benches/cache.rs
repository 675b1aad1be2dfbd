//! Two-tier cache benchmarks: L1 hit vs plain moka, L2 hit vs one raw Redis GET (with the number
//! of Redis commands per L2 hit counted on a private redis-server), and `get_or_load` under
//! contention vs moka's `get_with`. Run with `cargo bench -p arq-core --features cache --bench cache`.
//!
//! For instruction counts (repeatable on a loaded machine): `ARQ_BENCH_CALLGRIND=<case>` skips
//! criterion and makes 1 000 000 L1 reads of one case (`shared`, `cloned`, `moka`, `moka_foldhash`):
//! `ARQ_BENCH_CALLGRIND=shared valgrind --tool=callgrind <bench binary>`, divide by 10⁶.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::zombie_processes,
    missing_docs
)]

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arq_core::TenantId;
use arq_core::cache::{CacheConfig, CacheKey, CacheMetrics, Namespace, TtlClass, TwoTierCache};
use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    roles: Vec<String>,
}

fn user() -> User {
    User {
        id: 42,
        name: "Ada Lovelace".into(),
        roles: vec!["admin".into(), "billing".into()],
    }
}

type Never = std::io::Error;

struct PrivateRedis(Child, u16);

impl PrivateRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self(child, port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server did not start");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn commands_processed(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// moka with the hasher the cache's L1 uses: the floor without the hasher difference.
fn moka_foldhash() -> moka::future::Cache<CacheKey, Arc<User>, foldhash::fast::RandomState> {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .build_with_hasher(foldhash::fast::RandomState::default())
}

/// The fixed-count mode for callgrind (see the module docs).
fn callgrind(case: &str) {
    const N: usize = 1_000_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = CacheKey::tenant(
        TenantId::generate(),
        &Namespace::new("users").unwrap(),
        "42",
    );
    rt.block_on(async {
        let cache = TwoTierCache::new(&CacheConfig::local(), CacheMetrics::unregistered()).unwrap();
        cache.set(&key, TtlClass::Data, user()).await;
        let moka: moka::future::Cache<CacheKey, Arc<User>> = moka::future::Cache::new(10_000);
        moka.insert(key.clone(), Arc::new(user())).await;
        let moka_fold = moka_foldhash();
        moka_fold.insert(key.clone(), Arc::new(user())).await;
        for _ in 0..N {
            match case {
                "shared" => {
                    let v: Option<Arc<User>> = cache
                        .get_or_load_shared(&key, TtlClass::Data, || async { Ok::<_, Never>(None) })
                        .await
                        .unwrap();
                    black_box(v);
                }
                "cloned" => {
                    let v: Option<User> = cache
                        .get_or_load(&key, TtlClass::Data, || async { Ok::<_, Never>(None) })
                        .await
                        .unwrap();
                    black_box(v);
                }
                "moka" => {
                    black_box(moka.get(&key).await);
                }
                "moka_foldhash" => {
                    black_box(moka_fold.get(&key).await);
                }
                other => panic!("unknown ARQ_BENCH_CALLGRIND case {other:?}"),
            }
        }
    });
}

fn benches(c: &mut Criterion) {
    if let Ok(case) = std::env::var("ARQ_BENCH_CALLGRIND") {
        callgrind(&case);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ns = Namespace::new("users").unwrap();
    let key = CacheKey::tenant(TenantId::generate(), &ns, "42");

    // --- L1 hit vs a plain moka get on the same key type.
    let local = rt.block_on(async {
        TwoTierCache::new(&CacheConfig::local(), CacheMetrics::unregistered()).unwrap()
    });
    rt.block_on(local.set(&key, TtlClass::Data, user()));
    let moka: moka::future::Cache<CacheKey, Arc<User>> = moka::future::Cache::new(10_000);
    rt.block_on(moka.insert(key.clone(), Arc::new(user())));
    let mut g = c.benchmark_group("l1_hit");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("two_tier_get_or_load_shared", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let v: Option<Arc<User>> = local
                        .get_or_load_shared(&key, TtlClass::Data, || async { Ok::<_, Never>(None) })
                        .await
                        .unwrap();
                    black_box(v);
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("two_tier_get_or_load", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let v: Option<User> = local
                        .get_or_load(&key, TtlClass::Data, || async { Ok::<_, Never>(None) })
                        .await
                        .unwrap();
                    black_box(v);
                }
                start.elapsed()
            })
        });
    });
    let num_key = CacheKey::tenant(TenantId::generate(), &ns, "n");
    rt.block_on(local.set(&num_key, TtlClass::Data, 7_u64));
    g.bench_function("two_tier_get_or_load_u64_value", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let v: Option<u64> = local
                        .get_or_load(&num_key, TtlClass::Data, || async { Ok::<_, Never>(None) })
                        .await
                        .unwrap();
                    black_box(v);
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("moka_get_baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(moka.get(&key).await);
                }
                start.elapsed()
            })
        });
    });
    let moka_fold = moka_foldhash();
    rt.block_on(moka_fold.insert(key.clone(), Arc::new(user())));
    g.bench_function("moka_foldhash_get_baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(moka_fold.get(&key).await);
                }
                start.elapsed()
            })
        });
    });
    // Not arq's L1: what the same key costs in moka's synchronous cache, and in quick_cache (a
    // cache without moka's TinyLFU read recording), to show where the floor of a moka L1 lies.
    let moka_sync: moka::sync::Cache<CacheKey, Arc<User>, foldhash::fast::RandomState> =
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .build_with_hasher(foldhash::fast::RandomState::default());
    moka_sync.insert(key.clone(), Arc::new(user()));
    g.bench_function("moka_sync_foldhash_get_baseline", |b| {
        b.iter(|| black_box(moka_sync.get(black_box(&key))));
    });
    let quick: quick_cache::sync::Cache<
        CacheKey,
        Arc<User>,
        quick_cache::UnitWeighter,
        foldhash::fast::RandomState,
    > = quick_cache::sync::Cache::with(
        10_000,
        10_000,
        quick_cache::UnitWeighter,
        foldhash::fast::RandomState::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    );
    quick.insert(key.clone(), Arc::new(user()));
    g.bench_function("quick_cache_foldhash_get_baseline", |b| {
        b.iter(|| black_box(quick.get(black_box(&key))));
    });
    g.finish();

    // --- L2 hit (L1 evicted each time) vs one raw GET, on a private redis-server.
    let server = PrivateRedis::start();
    let url = format!("redis://127.0.0.1:{}", server.1);
    let (two_tier, mut raw, mut probe) = rt.block_on(async {
        let mut cfg = CacheConfig::with_redis(&url);
        cfg.key_prefix = "bench".to_owned();
        let cache = TwoTierCache::new(&cfg, CacheMetrics::unregistered()).unwrap();
        cache.wait_listening(Duration::from_secs(5)).await;
        cache.set(&key, TtlClass::Data, user()).await;
        let client = redis::Client::open(url.as_str()).unwrap();
        let raw = client.get_connection_manager().await.unwrap();
        let probe = client.get_multiplexed_async_connection().await.unwrap();
        (cache, raw, probe)
    });
    // Round trips per L2 hit: commands the server processed for N hits, minus the probe's own.
    let per_hit = rt.block_on(async {
        const N: u64 = 1_000;
        let before = commands_processed(&mut probe).await;
        for _ in 0..N {
            two_tier.evict_local(&key).await;
            let v: Option<User> = two_tier
                .get_or_load(&key, TtlClass::Data, || async { Ok::<_, Never>(None) })
                .await
                .unwrap();
            assert!(v.is_some());
        }
        let after = commands_processed(&mut probe).await;
        (after - before - 1) as f64 / N as f64
    });
    println!("L2 hit: {per_hit:.3} Redis commands (round trips) per hit");
    let stored = format!(
        "bench:{}:users:42",
        match key.scope() {
            arq_core::cache::Scope::Tenant(t) => format!("t:{t}"),
            arq_core::cache::Scope::Global => "g".to_owned(),
        }
    );
    let mut g = c.benchmark_group("l2_hit");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("two_tier_get_or_load_l1_evicted", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    two_tier.evict_local(&key).await;
                    let start = Instant::now();
                    let v: Option<User> = two_tier
                        .get_or_load(&key, TtlClass::Data, || async { Ok::<_, Never>(None) })
                        .await
                        .unwrap();
                    spent += start.elapsed();
                    black_box(v);
                }
                spent
            })
        });
    });
    g.bench_function("raw_redis_get_baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let v: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&stored)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                    black_box(v);
                }
                start.elapsed()
            })
        });
    });
    g.finish();

    // --- Contention: 64 tasks read one hot key (hits), and 64 tasks miss one fresh key at once
    // (single-flight), vs moka's get_with doing the same.
    const TASKS: usize = 64;
    let mut g = c.benchmark_group("contention_64_tasks");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("two_tier_get_or_load_shared_hot_key", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let (cache, key) = (local.clone(), key.clone());
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                let v: Option<Arc<User>> = cache
                                    .get_or_load_shared(&key, TtlClass::Data, || async {
                                        Ok::<_, Never>(None)
                                    })
                                    .await
                                    .unwrap();
                                black_box(v);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed() / TASKS as u32
            })
        });
    });
    g.bench_function("moka_get_with_hot_key_baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let (moka, key) = (moka.clone(), key.clone());
                        tokio::spawn(async move {
                            for _ in 0..iters {
                                black_box(
                                    moka.get_with_by_ref(&key, async { Arc::new(user()) }).await,
                                );
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed() / TASKS as u32
            })
        });
    });
    let tenant = TenantId::generate();
    g.bench_function("two_tier_get_or_load_cold_key_burst", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let key = CacheKey::tenant(tenant, &ns, format!("cold{i}"));
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|_| {
                            let (cache, key) = (local.clone(), key.clone());
                            tokio::spawn(async move {
                                let v: Option<User> = cache
                                    .get_or_load(&key, TtlClass::Data, || async {
                                        Ok::<_, Never>(Some(user()))
                                    })
                                    .await
                                    .unwrap();
                                black_box(v);
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("moka_get_with_cold_key_burst_baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let key = CacheKey::tenant(tenant, &ns, format!("cold{i}"));
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|_| {
                            let (moka, key) = (moka.clone(), key.clone());
                            tokio::spawn(async move {
                                black_box(moka.get_with(key, async { Arc::new(user()) }).await);
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                start.elapsed()
            })
        });
    });
    g.finish();
    drop(server);
}

criterion_group!(cache, benches);
criterion_main!(cache);
