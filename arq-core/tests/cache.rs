//! The two-tier cache against the real Redis (and a private one for the outage test).
#![cfg(feature = "cache")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::zombie_processes,
    missing_docs
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arq_core::TenantId;
use arq_core::cache::{CacheConfig, CacheKey, CacheMetrics, Namespace, TtlClass, TwoTierCache};
use arq_core::metrics::MetricsRegistry;
use arq_core::testing::{TestService, require};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

type Never = std::io::Error;

fn unique_prefix() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

fn config(url: &str, prefix: &str) -> CacheConfig {
    let mut c = CacheConfig::with_redis(url);
    c.key_prefix = prefix.to_owned();
    c
}

fn cache(url: &str, prefix: &str) -> TwoTierCache {
    TwoTierCache::new(&config(url, prefix), CacheMetrics::unregistered()).unwrap()
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Deletes every key under `prefix` (each test's own keys only).
async fn cleanup(url: &str, prefix: &str) {
    let mut c = redis(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn keys_of_one_tenant_are_never_read_as_another_tenants() {
    let url = require(TestService::Redis);
    let prefix = unique_prefix();
    let users = Namespace::new("users").unwrap();
    let (a, b) = (TenantId::generate(), TenantId::generate());
    let writer = cache(&url, &prefix);
    writer
        .set(
            &CacheKey::tenant(a, &users, "1"),
            TtlClass::Data,
            User {
                id: 1,
                name: "a's".into(),
            },
        )
        .await;

    // A second instance (empty L1) reads tenant B's key with the same namespace and id: it must
    // go to its loader, never see A's value.
    let reader = cache(&url, &prefix);
    let loads = AtomicUsize::new(0);
    let got: Option<User> = reader
        .get_or_load(
            &CacheKey::tenant(b, &users, "1"),
            TtlClass::Data,
            || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Never>(Some(User {
                    id: 1,
                    name: "b's".into(),
                }))
            },
        )
        .await
        .unwrap();
    assert_eq!(got.unwrap().name, "b's");
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // The global scope is a third, separate entry.
    let global: Option<User> = reader
        .get_or_load(&CacheKey::global(&users, "1"), TtlClass::Data, || async {
            Ok::<_, Never>(None)
        })
        .await
        .unwrap();
    assert_eq!(global, None);
    // Tenant A's value is still A's, read from L2 by the second instance.
    let a_again: Option<User> = reader
        .get_or_load(
            &CacheKey::tenant(a, &users, "1"),
            TtlClass::Data,
            || async { Err::<Option<User>, _>(std::io::Error::other("must not load")) },
        )
        .await
        .unwrap();
    assert_eq!(a_again.unwrap().name, "a's");
    assert_eq!(reader.metrics().snapshot().l2_hits, 1);

    // In Redis, each key carries its tenant.
    let mut c = redis(&url).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    let mut expected = vec![
        format!("{prefix}:t:{a}:users:1"),
        format!("{prefix}:t:{b}:users:1"),
        format!("{prefix}:g:users:1"),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thousand_concurrent_misses_load_once() {
    let url = require(TestService::Redis);
    let prefix = unique_prefix();
    let cache = cache(&url, &prefix);
    let key = CacheKey::tenant(
        TenantId::generate(),
        &Namespace::new("report").unwrap(),
        "q1",
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let (cache, key, loads) = (cache.clone(), key.clone(), Arc::clone(&loads));
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, TtlClass::Computed, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, Never>(Some(42_u64))
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Some(42));
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the loader ran more than once"
    );
    let stats = cache.metrics().snapshot();
    assert_eq!(stats.loads, 1);
    // One L2 read for the whole burst: Redis was not stampeded either.
    assert_eq!(stats.l2_misses + stats.l2_hits, 1);
    cleanup(&url, &prefix).await;
}

#[tokio::test]
async fn negative_entries_and_loader_errors() {
    let url = require(TestService::Redis);
    let prefix = unique_prefix();
    let cache = cache(&url, &prefix);
    let key = CacheKey::tenant(
        TenantId::generate(),
        &Namespace::new("users").unwrap(),
        "404",
    );
    let loads = AtomicUsize::new(0);
    for _ in 0..3 {
        let got: Option<User> = cache
            .get_or_load(&key, TtlClass::Data, || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Never>(None)
            })
            .await
            .unwrap();
        assert_eq!(got, None);
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "a negative result was not cached"
    );
    // Stored in Redis with the short negative TTL, not the class TTL.
    let mut c = redis(&url).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!(
            "{prefix}:t:{}:users:404",
            match key.scope() {
                arq_core::cache::Scope::Tenant(t) => t.to_string(),
                arq_core::cache::Scope::Global => unreachable!(),
            }
        ))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1..=30_000).contains(&pttl), "negative PTTL {pttl}");

    // A loader error is returned and not cached.
    let err_key = CacheKey::tenant(TenantId::generate(), &Namespace::new("users").unwrap(), "e");
    let err = cache
        .get_or_load(&err_key, TtlClass::Data, || async {
            Err::<Option<User>, _>(std::io::Error::other("db down"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "db down");
    let ok: Option<User> = cache
        .get_or_load(&err_key, TtlClass::Data, || async {
            Ok::<_, Never>(Some(User {
                id: 2,
                name: "x".into(),
            }))
        })
        .await
        .unwrap();
    assert_eq!(ok.unwrap().id, 2);
    assert_eq!(cache.metrics().snapshot().load_errors, 1);
    cleanup(&url, &prefix).await;
}

#[tokio::test]
async fn l2_ttls_follow_the_classes() {
    let url = require(TestService::Redis);
    let prefix = unique_prefix();
    let cache = cache(&url, &prefix);
    let tenant = TenantId::generate();
    let ns = Namespace::new("ttl").unwrap();
    let mut c = redis(&url).await;
    for (class, secs) in [
        (TtlClass::Session, 3_600_i64),
        (TtlClass::Data, 86_400),
        (TtlClass::Computed, 3_600),
    ] {
        let id = format!("{class:?}");
        cache
            .set(&CacheKey::tenant(tenant, &ns, id.clone()), class, 1_u8)
            .await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}:t:{tenant}:ttl:{id}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            (secs * 1_000 - 5_000..=secs * 1_000).contains(&pttl),
            "{class:?}: PTTL {pttl}"
        );
    }
    cleanup(&url, &prefix).await;
}

#[tokio::test(start_paused = true)]
async fn l1_ttl_classes_by_the_paused_clock() {
    // L1 only: nothing here waits on the network, so the paused clock is exact.
    let mut config = CacheConfig::local();
    config.ttl.session_secs = 3_600;
    let cache = TwoTierCache::new(&config, CacheMetrics::unregistered()).unwrap();
    let ns = Namespace::new("ttl").unwrap();
    let tenant = TenantId::generate();
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |key: CacheKey, class: TtlClass, value: Option<u32>| {
        let (cache, loads) = (cache.clone(), Arc::clone(&loads));
        async move {
            cache
                .get_or_load(&key, class, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Never>(value)
                })
                .await
                .unwrap()
        }
    };
    for (class, id, ttl, value) in [
        (TtlClass::Session, "s", 3_600, Some(1)),
        (TtlClass::Data, "d", 86_400, Some(2)),
        (TtlClass::Computed, "c", 3_600, Some(3)),
        (TtlClass::Data, "negative", 30, None),
    ] {
        let key = CacheKey::tenant(tenant, &ns, id);
        let before = loads.load(Ordering::SeqCst);
        assert_eq!(load(key.clone(), class, value).await, value);
        tokio::time::advance(Duration::from_secs(ttl - 1)).await;
        assert_eq!(load(key.clone(), class, value).await, value);
        assert_eq!(
            loads.load(Ordering::SeqCst),
            before + 1,
            "{id}: expired early"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(load(key.clone(), class, value).await, value);
        assert_eq!(
            loads.load(Ordering::SeqCst),
            before + 2,
            "{id}: did not expire"
        );
    }
}

#[tokio::test]
async fn invalidation_reaches_a_second_instance() {
    let url = require(TestService::Redis);
    let prefix = unique_prefix();
    let (a, b) = (cache(&url, &prefix), cache(&url, &prefix));
    assert!(a.wait_listening(Duration::from_secs(5)).await);
    assert!(b.wait_listening(Duration::from_secs(5)).await);
    let key = CacheKey::tenant(TenantId::generate(), &Namespace::new("users").unwrap(), "7");
    a.set(
        &key,
        TtlClass::Data,
        User {
            id: 7,
            name: "v1".into(),
        },
    )
    .await;
    let read = |c: TwoTierCache, key: CacheKey| async move {
        c.get_or_load(&key, TtlClass::Data, || async {
            Ok::<_, Never>(Some(User {
                id: 7,
                name: "loaded".into(),
            }))
        })
        .await
        .unwrap()
        .unwrap()
        .name
    };
    assert_eq!(read(b.clone(), key.clone()).await, "v1"); // now in b's L1
    a.set(
        &key,
        TtlClass::Data,
        User {
            id: 7,
            name: "v2".into(),
        },
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.metrics().snapshot().invalidations_received == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no invalidation reached b"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read(b.clone(), key.clone()).await, "v2");

    // A delete elsewhere: b drops its copy and goes to its loader.
    a.invalidate(&key).await;
    while b.metrics().snapshot().invalidations_received < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second invalidation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read(b.clone(), key.clone()).await, "loaded");
    assert_eq!(
        a.metrics().snapshot().invalidations_received,
        0,
        "own messages are ignored"
    );
    cleanup(&url, &prefix).await;
}

/// A private redis-server on a free loopback port, killed on drop.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Self { port, child: None };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian package redis-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server did not start on port {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_survived_counted_and_recovered_from() {
    let mut server = PrivateRedis::start();
    let registry = MetricsRegistry::new();
    let metrics = CacheMetrics::register(&registry).unwrap();
    let mut cfg = config(&server.url(), "outage");
    cfg.redis_timeout_ms = 200;
    cfg.redis_retry_after_ms = 100;
    let cache = TwoTierCache::new(&cfg, metrics).unwrap();
    assert!(cache.wait_listening(Duration::from_secs(5)).await);
    let ns = Namespace::new("users").unwrap();
    let tenant = TenantId::generate();
    let load = |id: &'static str| {
        let cache = cache.clone();
        let key = CacheKey::tenant(tenant, &ns, id);
        async move {
            cache
                .get_or_load(&key, TtlClass::Data, || async move {
                    Ok::<_, Never>(Some(format!("loaded {id}")))
                })
                .await
        }
    };
    assert_eq!(
        load("before").await.unwrap().as_deref(),
        Some("loaded before")
    );
    assert_eq!(cache.metrics().snapshot().redis_unavailable, 0);

    server.kill();
    // L1 still serves what it has, and the loader serves the rest; nothing fails.
    assert_eq!(
        load("before").await.unwrap().as_deref(),
        Some("loaded before")
    );
    for i in 0..5 {
        let id: &'static str = ["d0", "d1", "d2", "d3", "d4"][i];
        assert_eq!(load(id).await.unwrap(), Some(format!("loaded {id}")));
    }
    let stats = cache.metrics().snapshot();
    assert!(stats.redis_unavailable >= 1, "{stats:?}");
    assert_eq!(stats.loads, 6);
    let text = registry.encode();
    assert!(text.contains("cache_redis_up 0"), "{text}");
    assert!(!text.contains("cache_redis_unavailable_total 0"), "{text}");

    // Redis returns (empty, on the same port): writes and reads go through again.
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut direct = redis(&server.url()).await;
    let mut n = 0;
    loop {
        n += 1;
        let id: &'static str = Box::leak(format!("after{n}").into_boxed_str());
        load(id).await.unwrap();
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("outage:t:{tenant}:users:{id}"))
            .query_async(&mut direct)
            .await
            .unwrap();
        if stored.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never used Redis again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(registry.encode().contains("cache_redis_up 1"));
    // The invalidation channel comes back too, flushing L1 for what it may have missed.
    assert!(cache.wait_listening(Duration::from_secs(10)).await);
    assert!(cache.metrics().snapshot().l1_flushes >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_url_finds_the_master() {
    // A private master and a private Sentinel (redis-server in sentinel mode) monitoring it.
    let master = PrivateRedis::start();
    let sentinel_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Sentinel rewrites its config file, so it gets its own.
    let conf = std::env::temp_dir().join(format!(
        "arq-sentinel-{}.conf",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nprotected-mode no\n\
             sentinel monitor arqmaster 127.0.0.1 {} 1\n",
            master.port
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", sentinel_port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(up, "sentinel did not start");

    let mut cfg = CacheConfig::with_redis(format!(
        "redis+sentinel://127.0.0.1:{sentinel_port}/arqmaster"
    ));
    cfg.key_prefix = "sentinel".to_owned();
    let cache = TwoTierCache::new(&cfg, CacheMetrics::unregistered()).unwrap();
    assert!(cache.wait_listening(Duration::from_secs(10)).await);
    let tenant = TenantId::generate();
    let key = CacheKey::tenant(tenant, &Namespace::new("users").unwrap(), "1");
    cache.set(&key, TtlClass::Session, 7_u32).await;
    let mut direct = redis(&master.url()).await;
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("sentinel:t:{tenant}:users:1"))
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(
        stored.is_some(),
        "the value did not reach the master found through Sentinel"
    );
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    let _ = std::fs::remove_file(&conf);
}

#[test]
fn bad_configuration_is_an_error_not_a_panic() {
    let mut cfg = CacheConfig::local();
    cfg.key_prefix = "Not OK".into();
    let err = TwoTierCache::new(&cfg, CacheMetrics::unregistered()).unwrap_err();
    assert!(err.to_string().contains("key_prefix"));
    let mut cfg = CacheConfig::local();
    cfg.l1_max_entries = 0;
    assert!(TwoTierCache::new(&cfg, CacheMetrics::unregistered()).is_err());
    for url in [
        "http://x",
        "redis+sentinel://h:1",
        "redis+sentinel:///m",
        "redis+sentinel://u:p@h:1/m",
    ] {
        let err = TwoTierCache::new(&CacheConfig::with_redis(url), CacheMetrics::unregistered())
            .unwrap_err();
        assert!(err.to_string().contains("redis_url"), "{url}: {err}");
    }
    // Redis configured but no runtime: an error, not a panic.
    let err = TwoTierCache::new(
        &CacheConfig::with_redis("redis://127.0.0.1:6379"),
        CacheMetrics::unregistered(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"));
}

/// `get_or_load_shared` hands out the L1 value itself, keeps tenants apart in L1 exactly like
/// `get_or_load`, and treats a key read as another type as a miss.
#[tokio::test]
async fn shared_reads_are_the_l1_value_and_stay_tenant_scoped() {
    let cache = TwoTierCache::new(&CacheConfig::local(), CacheMetrics::unregistered()).unwrap();
    let users = Namespace::new("users").unwrap();
    let (a, b) = (TenantId::generate(), TenantId::generate());
    let (key_a, key_b) = (
        CacheKey::tenant(a, &users, "1"),
        CacheKey::tenant(b, &users, "1"),
    );
    let user = |name: &str| User {
        id: 1,
        name: name.into(),
    };
    let first: Arc<User> = cache
        .get_or_load_shared(&key_a, TtlClass::Data, || async {
            Ok::<_, Never>(Some(user("a's")))
        })
        .await
        .unwrap()
        .unwrap();
    // A hit is the same allocation, and the cloning API returns an equal value.
    let again = cache
        .get_or_load_shared(&key_a, TtlClass::Data, || async {
            Err::<Option<User>, _>(std::io::Error::other("must not load"))
        })
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let cloned: Option<User> = cache
        .get_or_load(&key_a, TtlClass::Data, || async {
            Err::<Option<User>, _>(std::io::Error::other("must not load"))
        })
        .await
        .unwrap();
    assert_eq!(cloned.as_ref(), Some(&*first));
    // Tenant B's key with the same namespace and id loads its own value.
    let other = cache
        .get_or_load_shared(&key_b, TtlClass::Data, || async {
            Ok::<_, Never>(Some(user("b's")))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.name, "b's");
    assert_eq!(first.name, "a's");
    // Read as another type: counted, reloaded, and the new type is what L1 then holds.
    let as_number: Option<Arc<u64>> = cache
        .get_or_load_shared(&key_a, TtlClass::Data, || async { Ok::<_, Never>(Some(7)) })
        .await
        .unwrap();
    assert_eq!(as_number.as_deref(), Some(&7));
    let stats = cache.metrics().snapshot();
    assert_eq!(stats.errors, 1);
    assert_eq!((stats.l1_hits, stats.loads), (2, 3));
}
