//! Rate limiting: the layer's responses, keys and client IPs, and the Redis limiter against the
//! real Redis (shared by several limiters) and a private Redis that is stopped mid-test
//! (PITFALLS 22–27).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arq_core::config::{ArqConfig, ConfigLoader, RedisFailurePolicy};
use arq_core::rate_limit::{KeyExtractor, Limiter, Quota, RateLimitLayer, RedisLimiter};
use arq_core::testing::{TestService, require};
use arq_core::{CallerIdentity, Identity, TenantId};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http::{Request, StatusCode};
use tower::{Layer, ServiceExt};

fn config(vars: &[(&str, &str)]) -> ArqConfig {
    ArqConfig::load_from(
        &ConfigLoader::new("/nonexistent")
            .environment("test")
            .vars(vars.iter().copied()),
    )
    .unwrap()
    .0
}

fn ok_service()
-> impl tower::Service<Request<Body>, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send {
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    })
}

struct User(String);
impl Identity for User {
    fn subject(&self) -> &str {
        &self.0
    }
    fn home_tenant(&self) -> Option<TenantId> {
        None
    }
    fn roles(&self) -> &[String] {
        &[]
    }
}

fn request(peer: &str, user: Option<&str>, xff: Option<&str>) -> Request<Body> {
    let mut req = Request::get("/").body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    if let Some(u) = user {
        req.extensions_mut()
            .insert(CallerIdentity::new(User(u.to_owned())));
    }
    if let Some(x) = xff {
        req.headers_mut()
            .insert("x-forwarded-for", x.parse().unwrap());
    }
    req
}

fn header(r: &Response, name: &str) -> u64 {
    r.headers()[name].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn refusals_are_429_problems_with_consistent_headers() {
    let cfg = config(&[
        ("ARQ__RATE_LIMIT__PER_MINUTE", "3"),
        ("ARQ__RATE_LIMIT__PER_HOUR", "100"),
    ]);
    let layer = RateLimitLayer::from_config(&cfg.rate_limit).unwrap();
    let svc = layer.layer(ok_service());
    for expected_remaining in [2, 1, 0] {
        let r = svc
            .clone()
            .oneshot(request("1.2.3.4:1", Some("alice"), None))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "ratelimit-remaining"), expected_remaining);
        assert_eq!(header(&r, "ratelimit-limit"), 3);
        assert_eq!(r.headers()["ratelimit-policy"], "3;w=60, 100;w=3600");
    }
    let r = svc
        .clone()
        .oneshot(request("1.2.3.4:1", Some("alice"), None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let retry = header(&r, "retry-after");
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&r, "ratelimit-remaining"), 0);
    assert!(header(&r, "ratelimit-reset") >= retry);
    // Another principal from the same IP has its own budget.
    let r = svc
        .clone()
        .oneshot(request("1.2.3.4:1", Some("bob"), None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn forwarded_for_is_trusted_only_from_configured_proxies() {
    let keys = KeyExtractor::new(
        arq_core::config::RateLimitKey::ClientIp,
        vec!["10.0.0.0/8".parse().unwrap()],
    );
    let spoof = Some("203.0.113.66");
    assert_eq!(
        keys.key_of(&request("198.51.100.1:5", None, spoof)),
        "ip:198.51.100.1"
    );
    assert_eq!(
        keys.key_of(&request("10.1.1.1:5", None, spoof)),
        "ip:203.0.113.66"
    );
    assert_eq!(
        keys.key_of(&request(
            "10.1.1.1:5",
            None,
            Some("1.1.1.1, 203.0.113.7, 10.2.2.2")
        )),
        "ip:203.0.113.7"
    );
    assert_eq!(
        keys.key_of(&request("10.1.1.1:5", None, Some("garbage, 10.2.2.2"))),
        "ip:10.2.2.2"
    );
    // Principal keying falls back to the client IP for anonymous requests.
    let keys = KeyExtractor::new(arq_core::config::RateLimitKey::Principal, vec![]);
    assert_eq!(
        keys.key_of(&request("192.0.2.1:5", Some("carol"), None)),
        "p:carol"
    );
    assert_eq!(
        keys.key_of(&request("192.0.2.1:5", None, spoof)),
        "ip:192.0.2.1"
    );
}

fn unique_prefix() -> String {
    format!("arq-test:rl:{}", uuid::Uuid::new_v4())
}

fn redis_limiter(
    url: &str,
    prefix: &str,
    quotas: Vec<Quota>,
    policy: RedisFailurePolicy,
) -> RedisLimiter {
    RedisLimiter::new(
        url,
        prefix,
        quotas,
        Duration::from_millis(200),
        policy,
        1000,
    )
    .unwrap()
}

async fn cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn replicas_sharing_redis_admit_at_most_the_limit() {
    let url = require(TestService::Redis);
    let prefix = unique_prefix();
    // 40 per hour: one cell every 90 s, so nothing refills during the test.
    let quotas = vec![
        Quota::per_minute(1000).unwrap(),
        Quota::per_hour(40).unwrap(),
    ];
    let replicas: Vec<Arc<RedisLimiter>> = (0..4)
        .map(|_| {
            Arc::new(redis_limiter(
                &url,
                &prefix,
                quotas.clone(),
                RedisFailurePolicy::Closed,
            ))
        })
        .collect();
    let mut tasks = Vec::new();
    for r in &replicas {
        for _ in 0..5 {
            let r = Arc::clone(r);
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..10 {
                    let d = r.check("shared-user").await;
                    assert!(!d.degraded);
                    admitted += u32::from(d.allowed);
                }
                admitted
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(
        total, 40,
        "200 attempts from 4 replicas against a limit of 40"
    );
    cleanup(&url, &prefix).await;
}

#[tokio::test]
async fn redis_refusal_by_one_quota_consumes_none() {
    let url = require(TestService::Redis);
    let prefix = unique_prefix();
    let l = redis_limiter(
        &url,
        &prefix,
        vec![Quota::per_minute(3).unwrap(), Quota::per_hour(5).unwrap()],
        RedisFailurePolicy::Closed,
    );
    for _ in 0..3 {
        assert!(l.check("k").await.allowed);
    }
    let d = l.check("k").await;
    assert!(!d.allowed);
    assert!(d.retry_after > Duration::from_secs(15) && d.retry_after <= Duration::from_secs(20));
    // The refusal consumed no hourly quota.
    assert_eq!(d.quotas[1].remaining, 2);
    let d = l.check("k").await;
    assert_eq!(d.quotas[1].remaining, 2);
    cleanup(&url, &prefix).await;
}

/// A private redis-server on a free loopback port; killed on drop (never the shared one).
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    async fn start_on(port: u16) -> Self {
        let mut child = Command::new("redis-server")
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
            .expect("redis-server must be installed for this test");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self { child, port };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("private redis-server did not start on port {port}");
    }

    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port).await
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn info(&self) -> String {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn calls(info: &str, cmd: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn each_redis_decision_is_one_round_trip() {
    let redis = PrivateRedis::start().await;
    let l = redis_limiter(
        &redis.url(),
        "rt",
        vec![
            Quota::per_minute(600).unwrap(),
            Quota::per_hour(10_000).unwrap(),
        ],
        RedisFailurePolicy::Closed,
    );
    l.check("warm-up").await;
    let before = redis.info().await;
    for i in 0..50 {
        l.check(&format!("user-{}", i % 7)).await;
    }
    let after = redis.info().await;
    let total = |info: &str| {
        info.lines()
            .filter_map(|l| l.split_once(":calls="))
            .filter(|(name, _)| !name.ends_with("_info"))
            .filter_map(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!(calls(&after, "evalsha") - calls(&before, "evalsha"), 50);
    // Nothing else reached the server: one command, one round trip, per decision (the script's
    // own GET/SET/TIME run inside Redis and are not client round trips).
    let script_inner = (calls(&after, "get") - calls(&before, "get"))
        + (calls(&after, "set") - calls(&before, "set"))
        + (calls(&after, "time") - calls(&before, "time"));
    assert_eq!(total(&after) - total(&before) - script_inner, 50);
    assert_eq!(l.redis_decisions(), 51);
}

#[tokio::test]
async fn redis_outage_follows_the_policy_and_recovers() {
    let mut redis = PrivateRedis::start().await;
    let quotas = || vec![Quota::per_minute(2).unwrap(), Quota::per_hour(100).unwrap()];
    let local = redis_limiter(&redis.url(), "o", quotas(), RedisFailurePolicy::Local);
    let open = redis_limiter(&redis.url(), "o2", quotas(), RedisFailurePolicy::Open);
    let closed = redis_limiter(&redis.url(), "o3", quotas(), RedisFailurePolicy::Closed);
    for l in [&local, &open, &closed] {
        let d = l.check("k").await;
        assert!(d.allowed && !d.degraded);
    }

    redis.stop();

    // Local fallback: the same quotas, per replica.
    let d1 = local.check("k").await;
    let d2 = local.check("k").await;
    let d3 = local.check("k").await;
    assert!(d1.degraded && d1.allowed && d2.allowed && !d3.allowed);
    // Open: everything passes. Closed: everything is refused.
    for _ in 0..5 {
        let d = open.check("k").await;
        assert!(d.degraded && d.allowed);
        let d = closed.check("k").await;
        assert!(d.degraded && !d.allowed);
    }
    // Through the layer, fail-closed is a 503 problem with Retry-After.
    let layer = RateLimitLayer::new(
        Arc::new(Limiter::Redis(Box::new(redis_limiter(
            &redis.url(),
            "o4",
            quotas(),
            RedisFailurePolicy::Closed,
        )))),
        KeyExtractor::new(arq_core::config::RateLimitKey::ClientIp, vec![]),
    );
    let r = layer
        .layer(ok_service())
        .oneshot(request("192.0.2.9:1", None, None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(header(&r, "retry-after") >= 1);

    // Redis returns on the same port: decisions are Redis's again after the back-off.
    let _redis = PrivateRedis::start_on(redis.port).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut recovered = false;
    for _ in 0..20 {
        let d = closed.check("k").await;
        if !d.degraded {
            assert!(d.allowed);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "the limiter never went back to Redis");
}
